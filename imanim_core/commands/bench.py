"""`python -m imanim_core bench encoder|retargeter|real-size [--json]` — speed on this machine.

``retargeter``, ``train-cost`` and ``real-size`` are described in :mod:`imanim_core.commands.bench_real` (the retargeter at 81
frames of 480x832 next to a Wan 2.1 1.3B DiT step; stage-3 training with real-size random weights). ``encoder``:

For the 'large' (released, ~303M parameters) and 'tiny' encoders in fp32 and bf16 (random weights): frames/s
after a warm-up batch, the achieved FLOP/s (FLOPs of one frame counted analytically: patch conv + attention +
MLP + conv_out, see :func:`imanim_core.models.tokenizer.encoder_flops_per_frame`) and that as a fraction of a
plain 2048x2048 bf16 matmul measured in the same run. Progress goes to stderr; ``--json`` prints one JSON object.
"""
from __future__ import annotations

import json
import os
import sys
import time


def add_arguments(parser):
    parser.add_argument("what", choices=["encoder", "retargeter", "train-cost", "real-size"],
                        help="encoder: motion encoder speed; retargeter: its FLOPs and time vs a Wan 1.3B DiT step at "
                             "81x480x832; train-cost: FLOPs and GPU-hours of the real preset's stages; real-size: train stage3 --preset real (adapter, lora) with real-size "
                             "random weights")
    parser.add_argument("--frames", type=int, default=4,
                        help="timed frames per configuration for 'large' (tiny: 16x as many, at least 32; default 4)")
    parser.add_argument("--presets", default="large,tiny", help="comma-separated tokenizer presets (default both)")
    parser.add_argument("--dtypes", default="fp32,bf16", help="comma-separated dtypes: fp32,bf16,fp16")
    parser.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--matmul-size", type=int, default=2048,
                        help="n of the n x n x n matmul that gives the peak rates (default 2048)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    from .bench_real import add_arguments as add_real_arguments

    add_real_arguments(parser)


_DT = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}


def _sync(device):
    import torch

    if str(device).startswith("cuda"):
        torch.cuda.synchronize()


def matmul_rate(dtype, device="cpu", n: int = 2048, reps: int = 5) -> float:
    """Best-of FLOP/s of an n x n x n matmul in ``dtype``."""
    import torch

    a = torch.randn(n, n, device=device).to(dtype)
    b = torch.randn(n, n, device=device).to(dtype)
    a @ b
    _sync(device)
    best = float("inf")
    for _ in range(reps):
        t0 = time.perf_counter()
        a @ b
        _sync(device)
        best = min(best, time.perf_counter() - t0)
    return 2.0 * n ** 3 / best


def build_encoder(preset: str, device="cpu"):
    import torch

    from ..config import TokenizerConfig
    from ..models.tokenizer import MotionTokenizer

    torch.manual_seed(0)
    return MotionTokenizer(TokenizerConfig.preset(preset)).to(device).eval()


def bench_encoder(model, dtype_name: str, frames: int, batch: int, device="cpu", log=None) -> dict:
    """Time ``frames`` random frames through ``model`` (converted in place to the dtype) after one warm-up batch.
    Each batch is timed on its own; the rate uses the median batch (robust on a shared machine) and the best."""
    import statistics

    import torch

    from ..models.tokenizer import encoder_flops_per_frame

    log = log or (lambda s: None)
    cfg = model.cfg
    model.to(dtype=getattr(torch, _DT[dtype_name]))
    batch = max(1, min(batch, frames))
    x = torch.rand(frames, 3, cfg.image_size, cfg.image_size, device=device)
    times = []
    with torch.no_grad():
        log(f"  {dtype_name}: warm-up ({batch} frames)")
        model.encode(x[:batch])
        _sync(device)
        log(f"  {dtype_name}: timing {frames} frames in batches of {batch}")
        for s in range(0, frames, batch):
            t0 = time.perf_counter()
            n = model.encode(x[s:s + batch])["indices"].shape[0]
            _sync(device)
            times.append((time.perf_counter() - t0) / n)
    flops = encoder_flops_per_frame(cfg)["total"]
    med, best = statistics.median(times), min(times)
    return {"dtype": dtype_name, "frames": frames, "batch": batch, "seconds": sum(times) * batch,
            "s_per_frame": med, "frames_per_s": 1.0 / med, "frames_per_s_best": 1.0 / best,
            "gflop_per_frame": flops / 1e9, "gflop_per_s": flops / med / 1e9,
            "params": sum(p.numel() for p in model.parameters())}


def run(args) -> int:
    import torch

    from ..errors import InputError

    if args.what != "encoder":
        from . import bench_real

        return {"retargeter": bench_real.run_retargeter, "train-cost": bench_real.run_train_cost,
                "real-size": bench_real.run_real_size}[args.what](args)
    if args.frames < 1:
        raise InputError(f"--frames must be >= 1, got {args.frames}")
    if args.threads is not None:
        if args.threads < 1:
            raise InputError(f"--threads must be >= 1, got {args.threads}")
        torch.set_num_threads(args.threads)
    presets = [p.strip() for p in args.presets.split(",") if p.strip()]
    dtypes = [d.strip() for d in args.dtypes.split(",") if d.strip()]
    for p in presets:
        if p not in ("large", "tiny"):
            raise InputError(f"--presets: unknown preset {p!r}; choose from large, tiny")
    for d in dtypes:
        if d not in _DT:
            raise InputError(f"--dtypes: unknown dtype {d!r}; choose from {', '.join(_DT)}")

    def log(s):
        print(s, file=sys.stderr, flush=True)

    t_start = time.perf_counter()
    log(f"bench encoder on {args.device} ({torch.get_num_threads()} threads, torch {torch.__version__})")
    n_mm = int(args.matmul_size)
    if n_mm < 16:
        raise InputError(f"--matmul-size must be >= 16, got {n_mm}")
    log(f"  matmul {n_mm}^3 fp32 / bf16")
    mm = {"fp32": matmul_rate(torch.float32, args.device, n=n_mm) / 1e9,
          "bf16": matmul_rate(torch.bfloat16, args.device, n=n_mm) / 1e9}
    rows = []
    for p in presets:
        log(f"building the {p} encoder (random weights)")
        model = build_encoder(p, args.device)
        n = args.frames if p == "large" else max(16 * args.frames, 32)
        batch = 2 if p == "large" else 16
        for d in dtypes:
            log(f"{p}:")
            r = {"preset": p, **bench_encoder(model, d, n, batch, args.device, log)}
            r["fraction_of_bf16_matmul"] = r["gflop_per_s"] / mm["bf16"]
            r["fraction_of_same_dtype_matmul"] = (r["gflop_per_s"] / mm[d]) if d in mm else None
            rows.append(r)
        del model
    load = None
    try:
        load = os.getloadavg()[0]
    except (AttributeError, OSError):
        pass
    result = {"device": args.device, "threads": torch.get_num_threads(), "torch": torch.__version__,
              "load_average_1min": load,
              "matmul_gflop_per_s": mm, "results": rows, "total_seconds": time.perf_counter() - t_start}
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    print(f"matmul 2048x2048x2048: fp32 {mm['fp32']:.0f} GFLOP/s, bf16 {mm['bf16']:.0f} GFLOP/s "
          f"({result['threads']} threads, {args.device})")
    hdr = f"{'encoder':<8}{'dtype':<6}{'params':>9}{'frames':>7}{'batch':>6}{'s/frame':>9}{'frames/s':>10}{'best':>8}" \
          f"{'GFLOP/fr':>10}{'GFLOP/s':>9}{'% bf16 mm':>10}{'% same-dt mm':>13}"
    print(hdr)
    print("-" * len(hdr))
    for r in rows:
        same = r["fraction_of_same_dtype_matmul"]
        print(f"{r['preset']:<8}{r['dtype']:<6}{r['params'] / 1e6:>8.1f}M{r['frames']:>7}{r['batch']:>6}"
              f"{r['s_per_frame']:>9.3f}{r['frames_per_s']:>10.2f}{r['frames_per_s_best']:>8.2f}{r['gflop_per_frame']:>10.2f}"
              f"{r['gflop_per_s']:>9.1f}{100 * r['fraction_of_bf16_matmul']:>9.1f}%"
              f"{(100 * same if same is not None else float('nan')):>12.1f}%")
    print("(s/frame, frames/s, GFLOP/s: median batch; best: fastest batch. FLOPs counted analytically: patch conv +")
    print(f" attention + MLP + conv_out. Total {result['total_seconds']:.0f} s"
          + (f"; 1-min load average {load:.1f} on {os.cpu_count()} CPUs: other work slows these numbers)"
             if load is not None else ")"))
    return 0
