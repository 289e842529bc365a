"""Benchmark (prints numbers; not a test): the embedded tiny model's speed inside a real ComfyUI on this machine.

Usage (with ComfyUI's Python, as the tests run it):

    .venv-comfyui/bin/python tests/comfyui/bench_tiny.py [--runs 3] [--skip-workflow]

1. ComfyUI's own VAE object (``comfy.sd.VAE``, what the stock *Load VAE* / *VAE Decode* use) loading the embedded
   ``imanim_tiny_vae.safetensors`` and decoding the latent of 17 frames at 128x128 ([1,16,5,16,16]), frame by frame
   (ComfyUI's default for this layout) and all frames at once (what *Retarget to Identity* switches on for small
   videos, nodes/common.taehv_parallel_decode); the same latent through imanim_core's VAE module (the standalone
   pipeline) for comparison.
2. The whole ``tiny_puppet_demo`` workflow through a headless ComfyUI server (queue -> completion, the sampler's
   seed changed each run so nothing is cached), 128x128, 17 frames, 20 steps, with its three saved videos.

Each line gives min / median / max seconds over ``--runs`` runs.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import harness  # noqa: E402
from launch import declare_torchvision_ops  # noqa: E402
from workflow_api import ui_to_api  # noqa: E402

REPO = harness.REPO


def stats(ts: list) -> str:
    return f"min {min(ts):.2f} s  median {statistics.median(ts):.2f} s  max {max(ts):.2f} s  ({len(ts)} runs)"


def bench_vae(runs: int) -> None:
    import torch

    declare_torchvision_ops()
    comfy = harness.comfy_dir()
    sys.path.insert(0, str(comfy))
    import comfy.options

    comfy.options.enable_args_parsing()
    argv, sys.argv = sys.argv, [sys.argv[0], "--cpu"]  # ComfyUI's own CPU mode, as the tests start it
    import comfy.sd
    sys.argv = argv
    import comfy.utils

    from imanim_core.backbone.wan import load_vae
    from imanim_core.weights import VAE_FILE

    torch.manual_seed(0)
    lat = torch.randn(1, 16, 5, 16, 16) * 0.5  # raw Wan 2.1 latent of 17 frames at 128x128
    vae = comfy.sd.VAE(sd=comfy.utils.load_torch_file(str(VAE_FILE)))
    print(f"ComfyUI VAE: {type(vae.first_stage_model).__name__}, dtype {vae.vae_dtype}, "
          f"torch threads {torch.get_num_threads()}")
    outs = {}
    for parallel in (False, True):  # ComfyUI's default (frame by frame), then what Retarget to Identity sets
        vae.first_stage_model.parallel = parallel
        ts = []
        for _ in range(runs):
            t0 = time.perf_counter()
            outs[parallel] = vae.decode(lat)
            ts.append(time.perf_counter() - t0)
        how = "all frames at once (the pack's setting)" if parallel else "frame by frame (ComfyUI's default)"
        print(f"ComfyUI VAE Decode, 17 frames 128x128 -> {tuple(outs[parallel].shape)}, {how}: {stats(ts)}")
    print(f"  max |difference| between the two: {(outs[True] - outs[False]).abs().max().item():.2e}")
    ours = load_vae(VAE_FILE)
    ts = []
    with torch.no_grad():
        for _ in range(runs):
            t0 = time.perf_counter()
            ours.decode_raw(lat)
            ts.append(time.perf_counter() - t0)
    print(f"imanim_core VAE decode (standalone pipeline), same latent: {stats(ts)}")


def bench_workflow(runs: int) -> None:
    base = Path(tempfile.mkdtemp(prefix="imanim_bench_"))
    (base / "custom_nodes").mkdir()
    os.symlink(REPO, base / "custom_nodes" / "comfyui-im-animation", target_is_directory=True)
    client = harness.start_server(base)
    try:
        wf = json.loads((REPO / "workflows" / "tiny_puppet_demo.json").read_text())
        prompt = ui_to_api(wf, client.object_info)
        sampler = next(k for k, v in prompt.items() if v["class_type"] == "IMAnimationSampler")
        ts = []
        for i in range(runs + 1):  # the first run loads the models: reported apart
            prompt[sampler]["inputs"]["seed"] = 1000 + i
            h, secs = client.run(prompt, timeout=600)
            assert h["status"].get("status_str") == "success", json.dumps(h["status"])[:2000]
            if i == 0:
                print(f"tiny_puppet_demo workflow, first run (loads the models): {secs:.2f} s")
            else:
                ts.append(secs)
        print(f"tiny_puppet_demo workflow (128x128, 17 frames, 20 steps, 3 videos saved): {stats(ts)}")
    finally:
        harness.stop_server(client)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--skip-workflow", action="store_true")
    a = ap.parse_args(argv)
    print(f"machine: {os.cpu_count()} CPU cores")
    bench_vae(a.runs)
    if not a.skip_workflow:
        bench_workflow(a.runs)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
