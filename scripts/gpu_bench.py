"""GPU benchmark at full size (prints numbers; needs CUDA): Wan 2.1 T2V 1.3B, 81 frames at 480x832.

NOT RUN YET: it was written on a CPU-only machine (the session that wrote it had no GPU lent), so it has never
executed on a GPU and has no numbers; expect to fix small things on the first run. Without CUDA it exits at once
with code 2 and says so.

Usage (a Python with the project's requirements and a CUDA torch; ComfyUI's requirements too for part 1):

    python scripts/gpu_bench.py [--comfyui DIR] [--work DIR] [--steps 3] [--skip-comfy] [--skip-train] [--json F]

Random real-size weights (``imanim_core/realsize.py``: the 1.3B DiT in the original layout, bf16; the Wan 2.1 VAE;
a real-preset bundle with an injector for width 1536) and a 2-clip puppet video folder at 480x832 are written into
``--work`` (default: a temp folder, removed at the end). Then, each part in its own process (so each peak is its own):

1. ``comfy`` (ComfyUI in-process, no server; ``--comfyui`` or ``$COMFYUI_PATH`` or ``~/comfy/ComfyUI``): the DiT
   through ComfyUI's stock loader (``comfy.sd.load_diffusion_model``, default weight dtype), then with the same MODEL,
   seed, euler/simple, shift 5, cfg 1 (one forward per step), after a one-step warm-up each:
   - stock KSampler (``nodes.common_ksampler``) on the 81-frame latent [1,16,21,60,104], zero text;
   - the IM-Animation Sampler (``IMAnimationSampler.execute``: reference frame appended, motion injected), with
     motion tokens from the real-size retargeter run on the GPU (its seconds for 81 frames are reported too);
   seconds per step and ``torch.cuda.max_memory_allocated`` of each.
2. ``train`` (``--dit-training adapter`` and ``lora``): ``train stage3 --preset real`` in-process (``run_training``):
   batch 1, 81 frames, 480x832, bf16, gradient checkpointing, EMA, 512 zero text tokens (the preset), ``--steps``
   steps; seconds of each step (``log.csv``; the first one includes the first VAE/encoder pass) and the peak GPU
   memory (allocated and reserved).

Budget: written to finish in under 8 minutes on one H100 (weights ~20 s, data ~1 min, part 1 ~1-2 min, part 2
~1.5 min per mode, most of it loading and exporting the 2.6 GB DiT).
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
FRAMES, HEIGHT, WIDTH = 81, 480, 832


def log(s):
    print(s, file=sys.stderr, flush=True)


def need_cuda():
    import torch

    if not torch.cuda.is_available():
        print("gpu_bench: needs a CUDA GPU; torch.cuda.is_available() is False on this machine "
              f"(torch {torch.__version__}). Nothing was measured. For the CPU-side numbers run "
              "`python -m imanim_core bench retargeter` and tests/comfyui/bench_real_size.py.", file=sys.stderr)
        raise SystemExit(2)
    return torch


def gb(x):
    return round(x / 2**30, 2)


# ------------------------------------------------------------------------------------------------ part 1
def part_comfy(a) -> dict:
    torch = need_cuda()
    sys.path.insert(0, a.comfyui)
    sys.argv = [sys.argv[0]]
    import comfy.options

    comfy.options.enable_args_parsing()
    import importlib.util

    import comfy.sd
    import comfy.utils

    import nodes as comfy_nodes

    spec = importlib.util.spec_from_file_location("imanim_pack", str(REPO / "__init__.py"),
                                                  submodule_search_locations=[str(REPO)])
    pack = importlib.util.module_from_spec(spec)
    sys.modules["imanim_pack"] = pack
    spec.loader.exec_module(pack)
    from imanim_pack.nodes.sampler import (
        IMAnimationSampler,
        apply_shift,
        zero_conditioning,
    )
    from imanim_pack.nodes.types import Retargeted

    from imanim_core.models.bundle import load_bundle

    comfy.utils.PROGRESS_BAR_ENABLED = False
    files = json.loads(a.files)
    dev = torch.device("cuda")
    t0 = time.perf_counter()
    model = comfy.sd.load_diffusion_model(files["dit"])
    t_load = time.perf_counter() - t0
    bundle = load_bundle(files["bundle"])
    lh, lw, lt = HEIGHT // 8, WIDTH // 8, (FRAMES - 1) // 4 + 1
    torch.manual_seed(0)
    raw_ref = torch.randn(1, 16, 1, lh, lw)
    codes = torch.randn(1, FRAMES, bundle.config.tokenizer.num_latent_tokens, bundle.config.tokenizer.token_dim)
    # the real-size retargeter on the GPU, bf16, as the nodes would run it
    ret = bundle.retargeter.to(dev, torch.bfloat16).eval()
    with torch.no_grad():
        ret(raw_ref.to(dev), codes[:, :1].to(dev), frame_chunk=8)
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        t0 = time.perf_counter()
        tokens = ret(raw_ref.to(dev), codes.to(dev), frame_chunk=8)
        torch.cuda.synchronize()
        t_ret = time.perf_counter() - t0
    mem_ret = torch.cuda.max_memory_allocated()
    tokens = tokens.float().cpu()
    ret.cpu()
    torch.cuda.empty_cache()
    r = Retargeted(tokens=tokens, identity_latent=raw_ref, frame_count=FRAMES, width=WIDTH, height=HEIGHT,
                   injector=bundle.injector, models_name="gpu_bench")
    latent = {"samples": torch.zeros(1, 16, lt, lh, lw)}
    zero = zero_conditioning()
    shifted = model.clone()
    apply_shift(shifted, 5.0)

    def stock(steps):
        comfy_nodes.common_ksampler(shifted, 0, steps, 1.0, "euler", "simple", zero, zero, latent)

    def imanim(steps):
        IMAnimationSampler.execute(model, r, 0, steps, 1.0, "euler", "simple", 5.0, 1.0, 81, 16)

    out = {"dit_load_seconds": t_load, "retargeter_seconds_81_frames": t_ret, "retargeter_peak_gb": gb(mem_ret)}
    for name, fn in (("ksampler", stock), ("imanim_sampler", imanim)):
        log(f"comfy: {name}: warm-up (1 step), then {a.steps} steps")
        fn(1)
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        t0 = time.perf_counter()
        fn(a.steps)
        torch.cuda.synchronize()
        out[name] = {"seconds_per_step": (time.perf_counter() - t0) / a.steps,
                     "peak_allocated_gb": gb(torch.cuda.max_memory_allocated()),
                     "peak_reserved_gb": gb(torch.cuda.max_memory_reserved())}
    out["imanim_over_ksampler"] = out["imanim_sampler"]["seconds_per_step"] / out["ksampler"]["seconds_per_step"]
    out["gpu"] = torch.cuda.get_device_name(0)
    return out


# ------------------------------------------------------------------------------------------------ part 2
def part_train(a) -> dict:
    torch = need_cuda()
    from imanim_core.train.cli import stage_class
    from imanim_core.train.config import resolve_config
    from imanim_core.train.loop import run_training

    files = json.loads(a.files)
    out = Path(a.work) / f"stage3_{a.mode}"
    if out.exists():
        shutil.rmtree(out)
    over = {"data": str(Path(a.work) / "data"), "out": str(out), "init": files["bundle"], "dit": files["dit"],
            "vae": files["vae"], "max_steps": a.steps, "log_every": 1, "num_workers": 2, "dit_training": a.mode}
    if a.mode == "lora":
        over["lora_rank"] = a.lora_rank
    cfg = resolve_config("stage3", "real", overrides=over)
    torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    rc = run_training(cfg, stage_class("stage3"))
    wall = time.perf_counter() - t0
    with open(out / "log.csv") as f:
        rows = list(csv.DictReader(f))
    ts = [float(x["time"]) for x in rows]
    steps = [round(b - c, 3) for c, b in zip([0.0] + ts[:-1], ts)]
    return {"dit_training": a.mode, "returncode": rc, "seconds": wall, "step_seconds": steps,
            "steady_step_seconds": (sum(steps[1:]) / len(steps[1:])) if len(steps) > 1 else None,
            "peak_allocated_gb": gb(torch.cuda.max_memory_allocated()),
            "peak_reserved_gb": gb(torch.cuda.max_memory_reserved()),
            "settings": {"frames": cfg.num_frames, "size": [cfg.height, cfg.width], "batch": cfg.batch_size,
                         "mixed_precision": cfg.mixed_precision, "grad_checkpointing": cfg.grad_checkpointing,
                         "text_len": cfg.text_len, "lora_rank": cfg.lora_rank}, "gpu": torch.cuda.get_device_name(0)}


# ------------------------------------------------------------------------------------------------ driver
def child(a, part: str, **kw) -> dict:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--part", part, "--work", a.work, "--files", a.files,
           "--steps", str(a.steps), "--comfyui", a.comfyui, "--lora-rank", str(a.lora_rank)]
    for k, v in kw.items():
        cmd += [f"--{k}", str(v)]
    log("$ " + " ".join(cmd))
    r = subprocess.run(cmd, stdout=subprocess.PIPE, text=True, cwd=str(REPO), check=False)
    try:
        return json.loads(r.stdout.strip().splitlines()[-1])
    except (json.JSONDecodeError, IndexError):
        return {"part": part, "failed": True, "returncode": r.returncode, "stdout": r.stdout[-2000:]}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--comfyui", default=os.environ.get("COMFYUI_PATH") or os.path.expanduser("~/comfy/ComfyUI"))
    ap.add_argument("--work", help="folder for weights, data and runs (default: a temp folder, removed)")
    ap.add_argument("--steps", type=int, default=3, help="timed sampler steps / training steps (default 3)")
    ap.add_argument("--lora-rank", type=int, default=16)
    ap.add_argument("--skip-comfy", action="store_true")
    ap.add_argument("--skip-train", action="store_true")
    ap.add_argument("--json", help="also write the results here")
    ap.add_argument("--part", choices=["comfy", "train"], help=argparse.SUPPRESS)
    ap.add_argument("--mode", default="adapter", help=argparse.SUPPRESS)
    ap.add_argument("--files", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.part:
        res = part_comfy(a) if a.part == "comfy" else part_train(a)
        print(json.dumps(res))
        return 0
    torch = need_cuda()
    t_all = time.perf_counter()
    tmp = None
    if not a.work:
        a.work = tmp = tempfile.mkdtemp(prefix="imanim_gpu_bench_")
    try:
        from imanim_core.data.video_folder import write_puppet_video_folder
        from imanim_core.realsize import write_random_weights

        log(f"gpu_bench on {torch.cuda.get_device_name(0)}; work folder {a.work}")
        files = write_random_weights(Path(a.work) / "models", log=log)
        a.files = json.dumps(files)
        res = {"gpu": torch.cuda.get_device_name(0), "video": [FRAMES, HEIGHT, WIDTH], "steps": a.steps}
        if not a.skip_comfy:
            if not (Path(a.comfyui) / "main.py").is_file():
                res["comfy"] = {"skipped": f"no ComfyUI at {a.comfyui}"}
            else:
                res["comfy"] = child(a, "comfy")
        if not a.skip_train:
            t0 = time.perf_counter()
            write_puppet_video_folder(Path(a.work) / "data", num_clips=2, frames=FRAMES + 8, size=(HEIGHT, WIDTH))
            res["data_seconds"] = time.perf_counter() - t0
            res["train"] = [child(a, "train", mode=m) for m in ("adapter", "lora")]
        res["total_seconds"] = time.perf_counter() - t_all
        print(json.dumps(res, indent=2))
        if a.json:
            Path(a.json).write_text(json.dumps(res, indent=2))
        failed = [k for k, v in res.items() if isinstance(v, dict) and v.get("failed")]
        failed += [t["dit_training"] for t in res.get("train", []) if t.get("failed") or t.get("returncode")]
        return 1 if failed else 0
    finally:
        if tmp:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
