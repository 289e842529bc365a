"""Is bf16 worth it on this machine? One measured answer for inference (``models.tokenizer.auto_dtype``) and for
training's ``--mixed-precision auto``.

Why a probe: on a CPU with native bf16 (AVX-512 BF16 / AMX) oneDNN runs bf16 matmuls and convolutions faster than
fp32 (the embedded model's recipe measured 1.7x faster stage-3 steps), but on an AVX2-only CPU (e.g. an AMD EPYC
without AVX-512, measured 2026-12-06) PyTorch emulates them: a tiny stage-3 step took 17 s under bf16 autocast
against 0.9 s in fp32, and the tiny VAE encoded 8 frames in 170 s against 2 s. So bf16 is used only where a small
probe shaped like the work runs faster here.
"""
from __future__ import annotations

import time
from functools import lru_cache

import torch


def _best_time(fn, repeats: int = 3, inner: int = 3) -> float:
    fn()  # warm-up
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        for _ in range(inner):
            fn()
        best = min(best, time.perf_counter() - t0)
    return best


@lru_cache(maxsize=None)
def cpu_bf16_speedup(kind: str = "matmul", width: int = 256) -> float:
    """fp32 time / bf16 time of a small CPU probe (> 1: bf16 is faster). ``kind``: ``"matmul"`` ([256, width] x
    [width, 4*width]) or ``"conv"`` (a 3x3 conv2d, ``min(width, 64)`` channels at 16x16, batch 2). 0.0 when bf16 fails.
    Cached per process (well under a second where bf16 is native, ~1 s where it is emulated)."""
    w = max(16, min(int(width), 1024))
    if kind == "matmul":
        def make(dt):
            a, b = torch.randn(256, w).to(dt), torch.randn(w, 4 * w).to(dt)
            return lambda: a @ b
    elif kind == "conv":
        def make(dt):
            c = max(8, min(w, 64))
            x, k = torch.randn(2, c, 16, 16).to(dt), torch.randn(c, c, 3, 3).to(dt)
            return lambda: torch.nn.functional.conv2d(x, k, padding=1)
    else:
        raise ValueError(f"cpu_bf16_speedup: kind must be 'matmul' or 'conv', got {kind!r}")
    try:
        with torch.no_grad():
            t32 = _best_time(make(torch.float32))
            t16 = _best_time(make(torch.bfloat16))
    except Exception:  # noqa: BLE001 - bf16 unsupported by this CPU build
        return 0.0
    return t32 / max(t16, 1e-12)


def training_precision(requested: str, device_type: str, ratio_needed: float = 1.1) -> tuple:
    """Resolve ``--mixed-precision`` for a run: ``(value for Accelerate, reason)``. Only ``"auto"`` is decided here:
    bf16 on CUDA; on a CPU bf16 only when both probes (matmul and conv) run at least ``ratio_needed`` x faster than
    fp32, else ``"no"``. Any other value is returned as given."""
    if requested != "auto":
        return requested, "as requested"
    if device_type == "cuda":
        return "bf16", "auto: CUDA"
    if device_type != "cpu":
        return "no", f"auto: no probe for device type {device_type!r}"
    mm, cv = cpu_bf16_speedup("matmul"), cpu_bf16_speedup("conv")
    if min(mm, cv) >= ratio_needed:
        return "bf16", f"auto: bf16 probes ran {mm:.1f}x (matmul) / {cv:.1f}x (conv) as fast as fp32 on this CPU"
    return "no", (f"auto: fp32, bf16 probes ran only {mm:.2f}x (matmul) / {cv:.2f}x (conv) as fast as fp32 on this "
                  f"CPU (no native bf16)")


__all__ = ["cpu_bf16_speedup", "training_precision"]
