"""The steps of an animation on the model parts, one function each: the standalone pipeline runs them in order
(:func:`imanim_core.pipeline.run`), the ComfyUI nodes call the same :func:`retarget` (*Retarget to Identity*).

identity image -> :func:`encode_identity` (Wan VAE, normalised latent) ; driving frames -> :func:`encode_motion`
(tokenizer codes) -> :func:`retarget` (retargeter, per-frame motion on the latent grid) ; sampled latent ->
:func:`decode_frames`. :func:`check_models` / :func:`check_injector` say whether a bundle can drive a DiT.
"""
from __future__ import annotations

from typing import Callable, Optional, Union

import numpy as np
import torch

from .backbone.wan import vae_decode, vae_encode
from .checks import MIN_IMAGE_SIDE, check_finite, check_min_side, check_t2v_channels
from .errors import CheckpointError, InputError
from .io.video import to_rgb

ProgressFn = Callable[[int, int], None]

__all__ = ["dit_width", "check_models", "check_injector", "encode_identity", "to_driving_frames", "encode_motion",
           "retarget", "decode_frames"]


def dit_width(dit) -> int:
    """The hidden width of a diffusers Wan DiT (heads x head dim: 1536 for Wan 2.1 1.3B, 256 for the tiny one)."""
    c = dit.config
    return int(c.num_attention_heads * c.attention_head_dim)


def check_models(bundle, dit, vae=None) -> None:
    """The bundle can animate with this DiT: tokenizer, retargeter and injector present and compatible."""
    if bundle is None:
        raise InputError("bundle: an IM-Animation bundle is required")
    missing = [p for p in ("tokenizer", "retargeter", "injector") if getattr(bundle, p, None) is None]
    if missing:
        src = "the released motion encoder" if getattr(bundle, "source", None) == "released" else "this bundle"
        raise CheckpointError(f"bundle: {src} has no {', '.join(missing)}; animating needs a full IM-Animation "
                              f"bundle (tokenizer + retargeter + injector, trained with the stage 2/3 scripts)")
    check_injector(bundle.injector, dit)
    check_t2v_channels(getattr(getattr(dit, "config", None), "in_channels", 16), "dit")
    rc, ic = bundle.retargeter.cfg, bundle.injector.cfg
    if rc.out_dim != ic.in_dim:
        raise CheckpointError(f"bundle: the retargeter outputs {rc.out_dim} channels but the injector takes "
                              f"{ic.in_dim}")


def check_injector(injector, dit) -> None:
    if dit is None:
        raise InputError("dit: a Wan DiT is required")
    d = dit_width(dit)
    if injector.cfg.dit_dim != d:
        raise CheckpointError(f"dit: this Wan DiT is {d} wide but the injector was trained for a "
                              f"{injector.cfg.dit_dim}-wide DiT (Wan 2.1 1.3B = 1536, 14B = 5120, tiny = 256); use "
                              f"the DiT the IM-Animation bundle was trained with")


def _module_device_dtype(m) -> tuple:
    p = next(m.parameters())
    return p.device, p.dtype


@torch.no_grad()
def encode_identity(vae, image: torch.Tensor) -> torch.Tensor:
    """Float ``[1, H, W, 3]`` in [0, 1] -> normalised Wan latent ``[1, 16, 1, H/8, W/8]`` (float32)."""
    dev, _ = _module_device_dtype(vae)
    x = image.to(dev).permute(0, 3, 1, 2)[:, :, None] * 2.0 - 1.0
    return vae_encode(vae, x)


def to_driving_frames(driving, where: str = "driving") -> Union[np.ndarray, torch.Tensor]:
    """Driving frames ``[T, H, W, 3]`` (uint8 numpy as ``io.read_video`` gives, or float in [0, 1]); grey or RGBA
    frames ``[T, H, W, 1|4]`` are converted."""
    if not isinstance(driving, (np.ndarray, torch.Tensor)):
        raise InputError(f"{where}: expected frames [T, H, W, 3] (numpy or torch), got {type(driving).__name__}")
    if driving.ndim == 3 and driving.shape[-1] in (3, 4):
        driving = driving[None]
    if driving.ndim != 4 or driving.shape[0] < 1 or driving.shape[-1] not in (1, 2, 3, 4):
        raise InputError(f"{where}: expected frames [T, H, W, 3] with T >= 1, got shape {tuple(driving.shape)}")
    if driving.shape[-1] != 3:
        driving = to_rgb(driving, where=where)
    check_min_side(driving.shape[1], driving.shape[2], where, MIN_IMAGE_SIDE)
    check_finite(driving, where, "pixel values")
    return driving


@torch.no_grad()
def encode_motion(bundle, driving, batch_size: int = 16, progress: Optional[ProgressFn] = None) -> torch.Tensor:
    """Driving frames -> motion codes ``[T, K, d]`` (float32, CPU) with the bundle's tokenizer."""
    frames = to_driving_frames(driving)
    _, codes = bundle.tokenizer.encode_frames(frames, batch_size=batch_size, progress=progress)
    return codes


@torch.no_grad()
def retarget(bundle, identity_latent: torch.Tensor, codes: torch.Tensor, frame_chunk: int = 16) -> torch.Tensor:
    """Normalised identity latent ``[1, 16, 1, h, w]`` + codes ``[T, K, d]`` -> retargeted tokens
    ``[1, T, h/2, w/2, Dr]`` (float32, CPU), all T frames at once, ``frame_chunk`` frames at a time inside the
    retargeter (memory only). The CLI's ``animate`` and the Retarget to Identity node both call this."""
    ret = bundle.retargeter
    dev, dt = _module_device_dtype(ret)
    tokens = ret(identity_latent.to(dev, dt), codes[None].to(dev, dt), frame_chunk=int(frame_chunk))
    return tokens.float().cpu()


@torch.no_grad()
def decode_frames(vae, latent: torch.Tensor, num_frames: Optional[int] = None) -> torch.Tensor:
    """Normalised latent ``[1, 16, L, h, w]`` -> float frames ``[T, H, W, 3]`` in [0, 1] (CPU), trimmed to
    ``num_frames`` (the VAE gives 4L-3)."""
    dev, _ = _module_device_dtype(vae)
    video = vae_decode(vae, latent.to(dev))  # [1, 3, 4L-3, H, W] in [-1, 1]
    frames = ((video[0].permute(1, 2, 3, 0).float() + 1.0) / 2.0).clamp(0.0, 1.0).cpu()
    if num_frames is not None:
        if num_frames > frames.shape[0]:
            raise InputError(f"decode: asked for {num_frames} frames, the latent gives {frames.shape[0]}")
        frames = frames[:num_frames]
    return frames
