"""The real-size parts of ``python -m imanim_core bench`` (see :mod:`imanim_core.commands.bench`).

``bench retargeter`` — the retargeter at real size next to one Wan 2.1 1.3B DiT step, 81 frames at 480x832
(latent 21x60x104, DiT grid 30x52):
- FLOPs, analytic (:func:`imanim_core.realsize.retargeter_flops`, :func:`~imanim_core.realsize.dit_step_flops`),
  for the ``real`` preset's retargeter (width 512, 8 layers: what ``train stage2 --preset real`` builds) and the
  default config (width 256, 4 layers);
- measured seconds on this machine in the same dtype (bf16 by default): the retargeter's forward on the whole clip
  (``frame_chunk`` 8, as the nodes run it) and a Wan 1.3B forward with ``--dit-blocks`` of its 30 blocks on the same
  latent (32760 tokens, 512 text tokens), scaled to 30 blocks. The retargeter runs once per video window; the DiT
  once per step (twice with CFG), so the per-step ratio is the most it can cost.

``bench train-cost`` — the analytic FLOPs of one optimiser step of each ``real``-preset stage
(:func:`imanim_core.realsize.training_step_flops`: batch, frames, size and steps of the preset, Wan 2.1 1.3B) and
the GPU-hours they mean at an *assumed* ``--peak-tflops`` (default 400, ~H100 dense bf16 in practice) and model-FLOPs
utilisation ``--mfu`` (default 0.35 and 0.40). Estimates, not measurements.

``bench real-size`` — stage-3 training with the real-size random weights of :mod:`imanim_core.realsize`
(written into ``--weights`` when missing): ``train stage3 --preset real --dit-training adapter`` and ``lora``
(rank ``--lora-rank``) for ``--steps`` steps on a tiny puppet video folder at 128x128, 9 frames, each in its own
process. Reported per run: the seconds of each step (``log.csv``), the process's wall time and its peak resident
memory (``ru_maxrss`` of that child, from ``os.wait4``).
"""
from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

FRAMES, HEIGHT, WIDTH = 81, 480, 832


def add_arguments(parser):
    g = parser.add_argument_group("bench retargeter / real-size")
    g.add_argument("--dtype", default="bf16", help="retargeter: dtype of both timed models, bf16 or fp32 (default bf16)")
    g.add_argument("--dit-blocks", type=int, default=1,
                   help="retargeter: DiT blocks to time (scaled to 30; default 1; 0 = FLOPs only, no timing)")
    g.add_argument("--retargeter-frames", type=int, default=FRAMES,
                   help="retargeter: frames timed (default 81; FLOPs are always for 81)")
    g.add_argument("--weights", help="real-size: folder with diffusion_models/, vae/, im_animation/ (filled when "
                                     "missing; default: a temp folder)")
    g.add_argument("--work", help="real-size: folder for the data and the training runs (default: a temp folder, "
                                  "removed at the end)")
    g.add_argument("--steps", type=int, default=2, help="real-size: training steps per run (default 2)")
    g.add_argument("--modes", default="adapter,lora", help="real-size: --dit-training values (default adapter,lora)")
    g.add_argument("--lora-rank", type=int, default=16, help="real-size: LoRA rank (default 16)")
    g.add_argument("--peak-tflops", type=float, default=400.0, help="train-cost: assumed GPU peak (default 400)")
    g.add_argument("--mfu", default="0.35,0.40", help="train-cost: assumed utilisations (default 0.35,0.40)")


def _log(s):
    print(s, file=sys.stderr, flush=True)


# --------------------------------------------------------------------------------------------- retargeter
def _time(fn, device="cpu"):
    import torch

    if str(device).startswith("cuda"):
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    with torch.no_grad():
        fn()
    if str(device).startswith("cuda"):
        torch.cuda.synchronize()
    return time.perf_counter() - t0


def run_retargeter(args) -> int:
    import torch

    from ..backbone.wan import build_dit, dit_config
    from ..config import RetargeterConfig
    from ..errors import InputError
    from ..models.retargeter import Retargeter
    from ..realsize import dit_step_flops, real_bundle_config, retargeter_flops

    if args.dtype not in ("bf16", "fp32"):
        raise InputError(f"--dtype: expected bf16 or fp32, got {args.dtype!r}")
    if args.dit_blocks < 0 or args.retargeter_frames < 1:
        raise InputError("--dit-blocks must be >= 0 and --retargeter-frames >= 1")
    if args.threads:
        torch.set_num_threads(args.threads)
    dtype = torch.bfloat16 if args.dtype == "bf16" else torch.float32
    dev = args.device
    lh, lw, lt = HEIGHT // 8, WIDTH // 8, (FRAMES - 1) // 4 + 1
    dcfg = dit_config("wan2.1-t2v-1.3b")
    dit = dit_step_flops(dcfg, lt, lh, lw, text_len=512)
    dit_ref = dit_step_flops(dcfg, lt, lh, lw, text_len=512, reference_frames=1)
    rcfgs = {"real": real_bundle_config(1536).retargeter, "default": RetargeterConfig()}
    res = {"video": [FRAMES, HEIGHT, WIDTH], "latent": [lt, lh, lw], "device": dev, "dtype": args.dtype,
           "threads": torch.get_num_threads(),
           "dit": {"tokens": dit["tokens"], "flops_per_step": dit["total"], "flops_per_block": dit["per_block_total"],
                   "flops_per_step_with_reference": dit_ref["total"], "per_block": dit["per_block"]},
           "retargeter": {}}
    for name, rc in rcfgs.items():
        f = retargeter_flops(rc, lh, lw, FRAMES)
        res["retargeter"][name] = {"config": rc.to_dict(), "flops": f, "flops_ratio_to_dit_step": f / dit["total"],
                                   "params": None, "seconds": None}
    # measured: the real preset's retargeter on the clip, then DiT blocks on the same latent
    if args.dit_blocks > 0:
        torch.manual_seed(0)
        rc = rcfgs["real"]
        m = Retargeter(rc).to(dev, dtype).eval()
        t = args.retargeter_frames
        lat = torch.randn(1, 16, 1, lh, lw, device=dev)
        codes = torch.randn(1, t, rc.num_motion_tokens, rc.token_dim, device=dev)
        _log(f"retargeter (real: width {rc.width}, {rc.layers} layers): {t} frames at {HEIGHT}x{WIDTH}, "
             f"{args.dtype}, frame_chunk 8")
        m(lat, codes[:, :1], frame_chunk=8)  # warm-up (one frame)
        s = _time(lambda: m(lat, codes, frame_chunk=8), dev) * FRAMES / t
        r = res["retargeter"]["real"]
        r.update(params=sum(p.numel() for p in m.parameters()), seconds=s, frames_timed=t,
                 tflop_per_s=r["flops"] / s / 1e12)
        del m
        cfg = dict(dcfg, num_layers=args.dit_blocks)
        _log(f"Wan 1.3B with {args.dit_blocks} of 30 blocks: latent {lt}x{lh}x{lw} ({dit['tokens']} tokens), "
             f"512 text tokens, {args.dtype}")
        model = build_dit(cfg).to(dev, dtype).eval()
        x = torch.randn(1, 16, lt, lh, lw, device=dev, dtype=dtype)
        ctx = torch.randn(1, 512, dcfg["text_dim"], device=dev, dtype=dtype)
        ts = torch.tensor([500.0], device=dev)
        small = torch.randn(1, 16, 1, 8, 8, device=dev, dtype=dtype)
        model(small, ts, ctx, return_dict=False)  # warm-up (tiny latent)
        s = _time(lambda: model(x, ts, ctx, return_dict=False), dev)
        res["dit"].update(blocks_timed=args.dit_blocks, seconds_blocks=s,
                          seconds_per_step=s * dcfg["num_layers"] / args.dit_blocks,
                          tflop_per_s=dit["per_block_total"] * args.dit_blocks / s / 1e12)
        r = res["retargeter"]["real"]
        r["time_ratio_to_dit_step"] = r["seconds"] / res["dit"]["seconds_per_step"]
    if args.json:
        print(json.dumps(res, indent=2))
        return 0
    d = res["dit"]
    print(f"81 frames at {HEIGHT}x{WIDTH} (latent {lt}x{lh}x{lw}); Wan 2.1 1.3B: {d['tokens']} tokens, 512 text tokens")
    print(f"  DiT step (one forward): {d['flops_per_step'] / 1e12:.1f} TFLOP ({d['flops_per_block'] / 1e12:.2f} per "
          f"block x 30); with the IM-Animation reference frame appended: {d['flops_per_step_with_reference'] / 1e12:.1f}"
          f" TFLOP; with CFG a sampling step is two forwards")
    for name, r in res["retargeter"].items():
        c = r["config"]
        line = (f"  retargeter {name:<8}(width {c['width']}, {c['layers']} layers): {r['flops'] / 1e12:6.2f} TFLOP = "
                f"{100 * r['flops_ratio_to_dit_step']:.1f} % of a DiT step (FLOPs)")
        print(line)
    if "seconds_per_step" in d:
        r = res["retargeter"]["real"]
        print(f"measured ({dev}, {args.dtype}, {res['threads']} threads): retargeter (real) {r['seconds']:.1f} s for 81 "
              f"frames{' (scaled from ' + str(r['frames_timed']) + ')' if r['frames_timed'] != FRAMES else ''} "
              f"({r['tflop_per_s'] * 1e3:.0f} GFLOP/s); DiT {d['blocks_timed']} block(s) {d['seconds_blocks']:.1f} s "
              f"-> {d['seconds_per_step']:.0f} s per step ({d['tflop_per_s'] * 1e3:.0f} GFLOP/s)")
        print(f"  retargeter / DiT step: {100 * r['time_ratio_to_dit_step']:.1f} % (time), "
              f"{100 * r['flops_ratio_to_dit_step']:.1f} % (FLOPs); goal <= 10 %")
    return 0


# --------------------------------------------------------------------------------------------- train-cost
def run_train_cost(args) -> int:
    from ..errors import InputError
    from ..realsize import gpu_hours, training_step_flops

    try:
        mfus = [float(x) for x in args.mfu.split(",") if x.strip()]
    except ValueError:
        raise InputError(f"--mfu: expected comma-separated numbers, got {args.mfu!r}") from None
    if not mfus or any(not 0 < m <= 1 for m in mfus) or args.peak_tflops <= 0:
        raise InputError("--mfu values must be in (0, 1] and --peak-tflops > 0")
    rows = []
    for st in ("stage1", "stage2", "stage3"):
        r = training_step_flops(st)
        r["gpu_hours"] = {str(m): gpu_hours(r["total"], r["max_steps"], args.peak_tflops * 1e12, m) for m in mfus}
        r["seconds_per_step"] = {str(m): r["total"] / (args.peak_tflops * 1e12 * m) for m in mfus}
        rows.append(r)
    if args.json:
        print(json.dumps({"peak_tflops": args.peak_tflops, "mfu": mfus, "stages": rows}, indent=2))
        return 0
    print(f"real preset, Wan 2.1 1.3B, one process; assumed {args.peak_tflops:.0f} TFLOP/s peak at MFU "
          + " / ".join(f"{m:.2f}" for m in mfus) + " (estimates from analytic FLOPs, not measurements)")
    for r in rows:
        what = (f"batch {r['batch']} frames (256x256 squares)" if r["stage"] == "stage1" else
                f"batch {r['batch']}, {r['frames']} frames, {r['size'][0]}x{r['size'][1]}")
        print(f"{r['stage']}: {what}, "
              f"{r['max_steps']} steps: {r['total'] / 1e12:.1f} TFLOP per step -> "
              + " / ".join(f"{v:.2f}" for v in r["seconds_per_step"].values()) + " s per step, "
              + " / ".join(f"{v:.1f}" for v in r["gpu_hours"].values()) + " GPU-hours")
        for k, v in r["parts"].items():
            print(f"    {k:<34}{v / 1e12:9.2f} TFLOP")
    return 0


# ---------------------------------------------------------------------------------------------- real-size
def _log_steps(log_csv: Path) -> list:
    """Seconds of each step from log.csv's cumulative ``time`` column (log every step)."""
    try:
        with open(log_csv) as f:
            rows = list(csv.DictReader(f))
    except OSError:
        return []
    ts = [float(r["time"]) for r in rows if r.get("time")]
    return [round(b - a, 2) for a, b in zip([0.0] + ts[:-1], ts)]


def _run_child(cmd, cwd=None) -> tuple:
    """(returncode, wall seconds, CPU seconds, peak RSS bytes of the child) — from ``os.wait4``: the rusage of
    exactly that process (and its waited-for children). Its stdout goes to stderr: ``--json`` prints only JSON."""
    t0 = time.perf_counter()
    p = subprocess.Popen(cmd, cwd=cwd, stdout=sys.stderr)
    _, status, ru = os.wait4(p.pid, 0)
    p.returncode = os.waitstatus_to_exitcode(status)
    return p.returncode, time.perf_counter() - t0, ru.ru_utime + ru.ru_stime, ru.ru_maxrss * 1024


def run_real_size(args) -> int:
    import shutil

    from ..data.video_folder import write_puppet_video_folder
    from ..errors import InputError
    from ..realsize import write_random_weights

    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    for m in modes:
        if m not in ("adapter", "lora", "full"):
            raise InputError(f"--modes: unknown {m!r}; choose from adapter, lora, full")
    if args.steps < 1:
        raise InputError(f"--steps must be >= 1, got {args.steps}")
    t_all = time.perf_counter()
    tmp = None
    work = Path(args.work) if args.work else Path(tmp := tempfile.mkdtemp(prefix="imanim_realsize_train_"))
    weights = Path(args.weights) if args.weights else work / "models"
    try:
        _log(f"real-size weights in {weights}")
        t0 = time.perf_counter()
        files = write_random_weights(weights, log=_log)
        t_weights = time.perf_counter() - t0
        data = work / "data"
        write_puppet_video_folder(data, num_clips=2, frames=24, size=(128, 128), seed=0)
        runs = []
        for mode in modes:
            out = work / f"stage3_{mode}"
            if out.exists():
                shutil.rmtree(out)
            cmd = [sys.executable, "-m", "imanim_core", "train", "stage3", "--preset", "real", "--data", str(data),
                   "--out", str(out), "--init", files["bundle"], "--dit", files["dit"], "--vae", files["vae"],
                   "--max-steps", str(args.steps), "--height", "128", "--width", "128", "--num-frames", "9",
                   "--num-workers", "0", "--log-every", "1", "--dit-training", mode]
            if mode == "lora":
                cmd += ["--lora-rank", str(args.lora_rank)]
            if args.threads:
                cmd += ["--threads", str(args.threads)]
            _log("$ " + " ".join(cmd))
            rc, secs, cpu, rss = _run_child(cmd)
            steps = _log_steps(out / "log.csv")
            summary = {}
            if (out / "summary.json").is_file():
                summary = json.loads((out / "summary.json").read_text())
            runs.append({"dit_training": mode, "ok": rc == 0, "returncode": rc, "seconds": secs, "cpu_seconds": cpu,
                         "peak_rss_gb": rss / 2**30, "step_seconds": steps,
                         "train_seconds": summary.get("seconds"), "final_losses": summary.get("final_losses"),
                         "command": " ".join(cmd)})
        res = {"weights": files, "weights_seconds": t_weights, "runs": runs,
               "total_seconds": time.perf_counter() - t_all}
        if args.json:
            print(json.dumps(res, indent=2))
        else:
            print(f"stage 3 --preset real with Wan 2.1 1.3B-sized random weights, 128x128, 9 frames, batch 1, bf16, "
                  f"gradient checkpointing (weights written in {t_weights:.0f} s)")
            for r in runs:
                print(f"  --dit-training {r['dit_training']:<8}{'ok' if r['ok'] else 'FAILED':<7} step seconds "
                      f"{r['step_seconds']}, process {r['seconds']:.0f} s ({r['cpu_seconds']:.0f} CPU s), peak RSS {r['peak_rss_gb']:.2f} GB")
            print(f"  (the first step includes the first batch's VAE/encoder pass and warm-up; total "
                  f"{res['total_seconds']:.0f} s)")
        return 0 if all(r["ok"] for r in runs) else 1
    finally:
        if tmp:
            shutil.rmtree(tmp, ignore_errors=True)


__all__ = ["add_arguments", "run_real_size", "run_retargeter", "run_train_cost"]
