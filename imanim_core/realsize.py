"""Real-size random weights and the cost model of the real-size path (benchmarks only; never shipped weights).

- :func:`write_random_dit` — a Wan 2.1 T2V DiT with the exact keys and shapes of the released file (original
  layout, bf16; ``wan2.1-t2v-1.3b`` by default), built on the meta device from the shipped config
  (``backbone/configs``) and written through :func:`~imanim_core.backbone.wan.save_dit`, so the one key table of
  ``backbone/convert.py`` decides every name. The values are cheap, not an initialisation: every floating tensor
  is a slice of one pool of N(0, 0.02) numbers (norm weights 1, biases 0), which writes 1.3B parameters in
  seconds instead of the minute a real init takes.
- :func:`write_random_vae` — the Wan 2.1 VAE (``AutoencoderKLWan``, ``vae_wan2.1.json``: base dim 96, the real
  architecture) with diffusers' own random init, original layout (what ComfyUI's *Load VAE* reads), bf16.
- :func:`write_random_bundle` — a bundle whose parts have the sizes of the ``real`` training preset
  (``train/config.py``): the released-layout ``large`` tokenizer (303M), the stage-1 motion decoder, the joint
  head, the retargeter (width 512, 8 layers) and an injector for a DiT of width ``dit_dim`` (1536 for 1.3B),
  its zero-initialised output layer perturbed so the motion changes the result.
- :func:`dit_step_flops`, :func:`retargeter_flops` — analytic FLOPs (2 per multiply-add) of one DiT forward and
  one retargeter forward, used by ``python -m imanim_core bench retargeter`` and ``docs/TRAINING_REAL.md``.

Nothing here imports ComfyUI; ``tests/comfyui/bench_real_size.py`` and ``bench real-size`` call these.
"""
from __future__ import annotations

from pathlib import Path

import torch

POOL_SIZE = 1 << 24  # 16.8M values: larger than any single Wan 1.3B/14B tensor but the 14B FFN (13.8M in 1.3B)


def _pool(seed: int, dtype: torch.dtype, n: int = POOL_SIZE) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(n, generator=g) * 0.02).to(dtype)


def _fill(shape, name: str, pool: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    n = 1
    for s in shape:
        n *= int(s)
    parts = name.split(".")
    leaf, parent = parts[-1], (parts[-2] if len(parts) > 1 else "")
    if leaf == "weight" and ("norm" in parent or parent.startswith("ln")):  # LayerNorm/RMSNorm scales
        return torch.ones(shape, dtype=pool.dtype)
    if leaf == "bias":
        return torch.zeros(shape, dtype=pool.dtype)
    out = torch.empty(n, dtype=pool.dtype)
    done = 0
    while done < n:  # tensors larger than the pool are tiled from it
        k = min(n - done, pool.numel())
        off = int(torch.randint(0, pool.numel() - k + 1, (1,), generator=g))
        out[done:done + k] = pool[off:off + k]
        done += k
    return out.reshape(shape)


def random_dit(preset: str = "wan2.1-t2v-1.3b", dtype: torch.dtype = torch.bfloat16, seed: int = 0):
    """A ``WanTransformer3DModel`` of ``preset`` with pooled random values (see the module docstring)."""
    from .backbone.wan import build_dit

    with torch.device("meta"):
        dit = build_dit(preset)
    pool, g = _pool(seed, dtype), torch.Generator().manual_seed(seed + 1)
    sd = {k: _fill(v.shape, k, pool, g) if v.is_floating_point() else torch.zeros(v.shape, dtype=v.dtype)
          for k, v in dit.state_dict().items()}
    dit.load_state_dict(sd, strict=True, assign=True)
    return dit


def write_random_dit(path, preset: str = "wan2.1-t2v-1.3b", dtype: torch.dtype = torch.bfloat16, seed: int = 0
                     ) -> Path:
    """Write a random Wan DiT of ``preset`` in the original Wan key layout (ComfyUI's stock loader reads it)."""
    from .backbone.wan import save_dit

    dit = random_dit(preset, dtype, seed)
    p = save_dit(dit, path, dtype=dtype)
    del dit
    return Path(p)


def write_random_vae(path, preset: str = "wan2.1", dtype: torch.dtype = torch.bfloat16, seed: int = 0) -> Path:
    """Write a randomly initialised Wan 2.1 VAE (the real architecture) in the original layout."""
    from .backbone.wan import build_vae, save_vae

    torch.manual_seed(seed)
    vae = build_vae(preset)
    return Path(save_vae(vae, path, dtype=dtype))


def real_bundle_config(dit_dim: int = 1536):
    """The part configs of a bundle trained with the ``real`` preset, injector for a DiT of width ``dit_dim``."""
    from .config import BundleConfig
    from .train.config import preset_config

    cfg = preset_config("stage3", "real")
    tok, head = cfg.tokenizer_config(), cfg.joint_head_config()
    return BundleConfig(tokenizer=tok,
                        motion_decoder=cfg.motion_decoder_config(),
                        joint_head=head,
                        retargeter=cfg.retargeter_config(),
                        injector=cfg.injector_config(dit_dim).replace(in_dim=head.joint_dim))


def random_bundle(dit_dim: int = 1536, seed: int = 0):
    """A real-size :class:`IMAnimationBundle` with pooled random values (parts with computed buffers, like the
    motion decoder's positions, get their ordinary init); the injector's output layer is non-zero."""
    from .models.bundle import IMAnimationBundle, build_part

    cfg = real_bundle_config(dit_dim)
    with torch.device("meta"):
        b = IMAnimationBundle.build(cfg)
    pool, g = _pool(seed, torch.float32), torch.Generator().manual_seed(seed + 1)
    torch.manual_seed(seed)
    for name, part in b.parts().items():
        if any(v.is_meta for k, v in part.named_buffers() if k not in part.state_dict()):
            setattr(b, name, build_part(name, getattr(cfg, name)))  # computed (non-persistent) buffers
            continue
        sd = {k: _fill(v.shape, f"{name}.{k}", pool, g) for k, v in part.state_dict().items()}
        part.load_state_dict(sd, strict=True, assign=True)
    with torch.no_grad():
        for p in b.injector.fc2.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.02)
    return b


def write_random_bundle(path, dit_dim: int = 1536, dtype: torch.dtype | None = torch.bfloat16, seed: int = 0
                        ) -> Path:
    """Write a random real-size bundle (see :func:`random_bundle`)."""
    from .models.bundle import save_bundle

    b = random_bundle(dit_dim, seed)
    return Path(save_bundle(b, path, metadata={"note": "random real-size weights (benchmark only)"}, dtype=dtype))


def write_random_weights(out_dir, dit_preset: str = "wan2.1-t2v-1.3b", seed: int = 0, log=None) -> dict:
    """DiT, VAE and bundle in ComfyUI's folder names under ``out_dir``: ``{"dit","vae","bundle"}`` -> paths.
    Files already there are kept (the smoke and ``bench real-size --weights`` share them)."""
    import time

    from .backbone.wan import dit_config

    log = log or (lambda s: None)
    out = Path(out_dir)
    dim = int(dit_config(dit_preset)["num_attention_heads"] * dit_config(dit_preset)["attention_head_dim"])
    files = {"dit": out / "diffusion_models" / f"random_{dit_preset}_bf16.safetensors",
             "vae": out / "vae" / "random_wan2.1_vae_bf16.safetensors",
             "bundle": out / "im_animation" / f"random_real_bundle_dit{dim}.safetensors"}
    makers = {"dit": lambda p: write_random_dit(p, dit_preset, seed=seed),
              "vae": lambda p: write_random_vae(p, seed=seed),
              "bundle": lambda p: write_random_bundle(p, dim, seed=seed)}
    for k, p in files.items():
        if p.is_file():
            log(f"  {k}: kept {p}")
            continue
        p.parent.mkdir(parents=True, exist_ok=True)
        t0 = time.perf_counter()
        makers[k](p)
        log(f"  {k}: {p} ({p.stat().st_size / 2**30:.2f} GiB, {time.perf_counter() - t0:.1f} s)")
    return {k: str(v) for k, v in files.items()}


# ------------------------------------------------------------------------------------------------ FLOPs
def dit_step_flops(cfg: dict, latent_frames: int, h: int, w: int, text_len: int = 512,
                   reference_frames: int = 0) -> dict:
    """FLOPs of one forward of a Wan DiT (``cfg``: its diffusers config) on a latent ``[16, T', h, w]``.

    Per block, with L = (T' + reference) * h/2 * w/2 tokens, D = width, F = ffn width, C = text tokens:
    self-attention projections 8 L D^2, attention (QK^T and PV) 4 L^2 D, cross-attention projections
    4 L D^2 + 4 C D^2, its attention 4 L C D, FFN 4 L D F. Patch embedding, time/text embeddings and the
    head are counted too (small). One sampling step with CFG runs it twice."""
    d = int(cfg["num_attention_heads"] * cfg["attention_head_dim"])
    f, layers = int(cfg["ffn_dim"]), int(cfg["num_layers"])
    pt, ph, pw = cfg["patch_size"]
    tokens = (latent_frames + reference_frames) // pt * (h // ph) * (w // pw)
    c = int(text_len)
    per_block = {"self_proj": 8 * tokens * d * d, "self_attn": 4 * tokens * tokens * d,
                 "cross_proj": 4 * tokens * d * d + 4 * c * d * d, "cross_attn": 4 * tokens * c * d,
                 "ffn": 4 * tokens * d * f}
    patch = 2 * tokens * d * cfg["in_channels"] * pt * ph * pw
    head = 2 * tokens * d * cfg["out_channels"] * pt * ph * pw
    text = 2 * c * (cfg["text_dim"] * d + d * d)
    blocks = layers * sum(per_block.values())
    return {"tokens": tokens, "text_tokens": c, "per_block": per_block, "per_block_total": sum(per_block.values()),
            "blocks": blocks, "total": blocks + patch + head + text}


def retargeter_flops(rcfg, latent_h: int, latent_w: int, frames: int) -> float:
    """Total FLOPs of one retargeter forward (``Retargeter.cost``) plus its driver-pose decoder when it has one."""
    from .models.retargeter import Retargeter

    total = Retargeter.cost(rcfg, latent_h, latent_w, frames)["total_flops"]
    if rcfg.driver_layers > 0:  # the internal motion decoder: K + g^2 tokens per frame, 12 D^2 per token and layer
        s = rcfg.num_motion_tokens + rcfg.driver_grid ** 2
        total += frames * rcfg.driver_layers * (24 * s * rcfg.driver_width ** 2 + 4 * s * s * rcfg.driver_width)
    return float(total)


# Wan 2.1 VAE encoder FLOPs per pixel and frame, counted with torch.utils.flop_counter.FlopCounterMode on the real
# architecture (5x64x64: 5.33e6, 9x64x128: 5.19e6; convolutions dominate, so it scales with pixels x frames; the
# per-frame middle attention adds a little at 480x832)
VAE_ENCODE_FLOPS_PER_PIXEL_FRAME = 5.2e6


def _decoder_flops_per_frame(dcfg) -> float:
    """Motion decoder (a ViT over K codes + grid^2 mask tokens), one frame, forward."""
    s = dcfg.num_tokens + dcfg.grid ** 2
    return float(dcfg.layers * (24 * s * dcfg.width ** 2 + 4 * s * s * dcfg.width))


def training_step_flops(stage: str, dit_preset: str = "wan2.1-t2v-1.3b") -> dict:
    """Analytic FLOPs of one optimiser step of the ``real`` preset (batch, frames and size of the preset, one
    process). A trained part costs 3 forwards (forward + backward), 4 with gradient checkpointing; a frozen part
    that gradients flow through (the DiT in adapter/LoRA mode) 2, 3 with checkpointing (no weight gradients);
    a frozen part without gradients (VAE, tokenizer in stages 2-3, a frozen retargeter) 1."""
    from .backbone.wan import dit_config
    from .models.tokenizer import encoder_flops_per_frame
    from .train.config import preset_config

    cfg = preset_config(stage, "real")
    ck = 1 if cfg.grad_checkpointing else 0
    enc = encoder_flops_per_frame(cfg.tokenizer_config())["total"]
    dec = _decoder_flops_per_frame(cfg.motion_decoder_config())
    b, t, h, w = cfg.batch_size, cfg.num_frames, cfg.height, cfg.width
    parts = {}
    if stage == "stage1":  # batch_size single frames; tokenizer + decoder train
        parts = {"tokenizer (trains)": b * enc * (3 + ck), "motion decoder (trains)": b * dec * (3 + ck)}
    elif stage == "stage2":
        rc = cfg.retargeter_config()
        parts = {"VAE encode, identity frame": b * VAE_ENCODE_FLOPS_PER_PIXEL_FRAME * h * w,
                 "tokenizer, frozen": b * t * enc,
                 "retargeter (trains)": b * retargeter_flops(rc, h // 8, w // 8, t) * (3 + ck)}
    elif stage == "stage3":
        rc = cfg.retargeter_config()
        lt = (t - 1) // 4 + 1
        dit = dit_step_flops(dit_config(dit_preset), lt, h // 8, w // 8, cfg.text_len, reference_frames=1)["total"]
        mult = (3 + ck) if cfg.dit_training == "full" else (2 + ck)
        parts = {"VAE encode, clip + identity": b * VAE_ENCODE_FLOPS_PER_PIXEL_FRAME * h * w * (t + 1),
                 "tokenizer, frozen": b * t * enc,
                 "retargeter, frozen": b * retargeter_flops(rc, h // 8, w // 8, t),
                 f"DiT ({cfg.dit_training}: {mult} forwards)": b * dit * mult}
    else:
        raise ValueError(f"no real-preset estimate for {stage!r}")
    return {"stage": stage, "batch": b, "frames": t, "size": [h, w], "max_steps": cfg.max_steps,
            "grad_checkpointing": bool(ck), "parts": parts, "total": float(sum(parts.values()))}


def gpu_hours(flops_per_step: float, steps: int, peak: float = 400e12, mfu: float = 0.35) -> float:
    """Hours of one GPU of ``peak`` FLOP/s at model-FLOPs utilisation ``mfu`` (an assumption, not a measurement)."""
    return flops_per_step * steps / (peak * mfu) / 3600.0


__all__ = [
    "VAE_ENCODE_FLOPS_PER_PIXEL_FRAME",
    "dit_step_flops",
    "gpu_hours",
    "random_bundle",
    "random_dit",
    "real_bundle_config",
    "retargeter_flops",
    "training_step_flops",
    "write_random_bundle",
    "write_random_dit",
    "write_random_vae",
    "write_random_weights",
]
