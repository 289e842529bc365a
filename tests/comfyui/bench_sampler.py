"""Seconds per step: the IM-Animation Sampler vs the stock KSampler on the same Wan MODEL (a benchmark, not a test).

Usage (ComfyUI's Python, e.g. .venv-comfyui/bin/python):
    python tests/comfyui/bench_sampler.py [--comfyui DIR] [--dit FILE --bundle FILE] [--steps N] [--repeat R]

Without --dit/--bundle it makes random tiny weights (make_models.py) in a temp folder. For each case it runs
ComfyUI in-process (no server) with the same MODEL, seed, sampler (euler/simple), shift and cfg 1:
- ksampler:          stock nodes.common_ksampler on the latent, zero text (what the KSampler node does)
- ksampler+ref:      the same with the identity latent appended in time (time_dim_concat), no motion
- imanim:            IMAnimationSampler.execute (object-patched patch embedding + reference + window wrapper)
- imanim windowed:   the same, video longer than the window (windows of 17 frames, overlap 8)
and prints the median seconds per step over R runs after a warm-up (runs interleaved). On a shared CPU set
OMP_NUM_THREADS=1: more threads spin-wait against other jobs and the numbers become noise.
"""
import argparse
import importlib.util
import json
import os
import statistics
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--comfyui", default=os.environ.get("COMFYUI_PATH") or os.path.expanduser("~/comfy/ComfyUI"))
    ap.add_argument("--dit")
    ap.add_argument("--bundle")
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()

    sys.path.insert(0, HERE)
    from launch import declare_torchvision_ops

    declare_torchvision_ops()
    if not (a.dit and a.bundle):
        import make_models

        tmp = tempfile.mkdtemp(prefix="imanim_bench_")
        a.dit, a.bundle = os.path.join(tmp, "dit.safetensors"), os.path.join(tmp, "bundle.safetensors")
        make_models.make_dit(a.dit, 256)
        make_models.make_bundle(a.bundle)
    sys.path.insert(0, a.comfyui)
    sys.argv = [sys.argv[0], "--cpu"]
    import comfy.options

    comfy.options.enable_args_parsing()
    import torch

    import comfy.sd
    import comfy.utils
    import node_helpers
    import nodes as comfy_nodes

    spec = importlib.util.spec_from_file_location("imanim_pack", os.path.join(REPO, "__init__.py"),
                                                  submodule_search_locations=[REPO])
    pack = importlib.util.module_from_spec(spec)
    sys.modules["imanim_pack"] = pack
    spec.loader.exec_module(pack)
    from imanim_pack.nodes.sampler import IMAnimationSampler, apply_shift, zero_conditioning
    from imanim_pack.nodes.types import Retargeted

    from imanim_core.models.bundle import load_bundle

    comfy.utils.PROGRESS_BAR_ENABLED = False  # no tqdm bars in the output
    model = comfy.sd.load_diffusion_model(a.dit)
    bundle = load_bundle(a.bundle)
    dr = bundle.config.injector.in_dim
    shift = 5.0
    shifted = model.clone()
    apply_shift(shifted, shift)

    def per_step(fns):
        """Median seconds per step of each function; runs are interleaved so load changes hit all alike."""
        for fn in fns:
            fn()  # warm-up
        ts = [[] for _ in fns]
        for _ in range(a.repeat):
            for i, fn in enumerate(fns):
                t0 = time.perf_counter()
                fn()
                ts[i].append((time.perf_counter() - t0) / a.steps)
        return [statistics.median(t) for t in ts]

    results = []
    for frames, size, window, overlap in ((17, 64, 81, 16), (33, 128, 81, 16), (41, 64, 17, 8)):
        torch.manual_seed(0)
        h = w = size // 8
        lat_t = (frames - 1) // 4 + 1
        raw_ref = torch.randn(1, 16, 1, h, w)
        r = Retargeted(tokens=torch.randn(1, frames, h // 2, w // 2, dr), identity_latent=raw_ref,
                       frame_count=frames, width=size, height=size, injector=bundle.injector, models_name="bench")
        latent = {"samples": torch.zeros(1, 16, lat_t, h, w)}
        zero = zero_conditioning()
        ref_cond = node_helpers.conditioning_set_values(zero, {"time_dim_concat": raw_ref})

        def stock(cond=zero):
            comfy_nodes.common_ksampler(shifted, 0, a.steps, 1.0, "euler", "simple", cond, cond, latent)

        def imanim():
            IMAnimationSampler.execute(model, r, 0, a.steps, 1.0, "euler", "simple", shift, 1.0, window, overlap)

        t_stock, t_ref, t_imanim = per_step([stock, lambda: stock(ref_cond), imanim])
        row = {"frames": frames, "size": size, "latent": [lat_t, h, w], "window": window, "overlap": overlap,
               "ksampler_s_per_step": t_stock, "ksampler_ref_s_per_step": t_ref, "imanim_s_per_step": t_imanim}
        results.append(row)
        if not a.json:
            print(f"{frames:3d} frames {size}x{size} (latent {lat_t}x{h}x{w}), window {window}/{overlap}: "
                  f"KSampler {row['ksampler_s_per_step'] * 1e3:7.1f} ms/step | KSampler+reference "
                  f"{row['ksampler_ref_s_per_step'] * 1e3:7.1f} ms/step | IM-Animation Sampler "
                  f"{row['imanim_s_per_step'] * 1e3:7.1f} ms/step "
                  f"(x{row['imanim_s_per_step'] / row['ksampler_s_per_step']:.2f} of KSampler)", flush=True)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    if a.json:
        print(json.dumps({"torch_threads": torch.get_num_threads(), "cpu_count": os.cpu_count(), "load_avg_1m": load,
                          "steps": a.steps, "results": results}))
    else:
        print(f"(torch threads {torch.get_num_threads()}, {os.cpu_count()} CPUs, 1-min load average {load})")


if __name__ == "__main__":
    main()
