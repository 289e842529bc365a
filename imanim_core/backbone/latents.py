"""Wan 2.1 latent statistics: the only copy of these numbers in the project.

The Wan 2.1 VAE's raw latent ``z`` (posterior mean, 16 channels) is normalised per channel before it reaches
the DiT: ``(z - mean) / std``. The values are those of the Wan 2.1 release, identical to diffusers'
``AutoencoderKLWan`` config (``latents_mean`` / ``latents_std``) and ComfyUI's ``latent_formats.Wan21``
(``process_in`` / ``process_out`` with ``scale_factor`` 1.0). Note the hosts differ in *where* this happens:
a ComfyUI ``LATENT`` holds the raw latent and ComfyUI normalises it (``process_latent_in``, also for a
``time_dim_concat`` reference) just before the DiT; ``imanim_core`` keeps latents normalised throughout
(``wan.vae_encode`` returns them normalised). Either way the DiT sees the same numbers.

The channel axis is dim 1 (``[B, 16, T, h, w]`` or ``[B, 16, h, w]``).
"""
from __future__ import annotations

import torch

from ..errors import InputError

LATENT_CHANNELS = 16

LATENTS_MEAN = (
    -0.7571, -0.7089, -0.9113, 0.1075, -0.1745, 0.9653, -0.1517, 1.5508,
    0.4134, -0.0715, 0.5517, -0.3632, -0.1922, -0.9497, 0.2503, -0.2921,
)
LATENTS_STD = (
    2.8184, 1.4541, 2.3275, 2.6558, 1.2196, 1.7708, 2.6052, 2.0743,
    3.2687, 2.1526, 2.8652, 1.5579, 1.6382, 1.1253, 2.8251, 1.9160,
)

__all__ = ["LATENT_CHANNELS", "LATENTS_MEAN", "LATENTS_STD", "latent_stats", "normalize", "denormalize"]


def _check(z: torch.Tensor, name: str) -> None:
    if not isinstance(z, torch.Tensor):
        raise InputError(f"{name}: expected a torch.Tensor, got {type(z).__name__}")
    if z.ndim < 2 or z.shape[1] != LATENT_CHANNELS:
        raise InputError(
            f"{name}: expected a Wan 2.1 latent with {LATENT_CHANNELS} channels on dim 1 "
            f"([B,16,T,h,w] or [B,16,h,w]), got shape {tuple(z.shape)}")


def latent_stats(ndim: int = 5, device=None, dtype=torch.float32):
    """``(mean, std)`` shaped to broadcast over a latent of ``ndim`` dims (channel axis 1)."""
    shape = (1, LATENT_CHANNELS) + (1,) * (ndim - 2)
    mean = torch.tensor(LATENTS_MEAN, device=device, dtype=dtype).view(shape)
    std = torch.tensor(LATENTS_STD, device=device, dtype=dtype).view(shape)
    return mean, std


def normalize(z: torch.Tensor) -> torch.Tensor:
    """Raw VAE latent -> normalised latent the DiT works on: ``(z - mean) / std``."""
    _check(z, "latent to normalize")
    mean, std = latent_stats(z.ndim, z.device, z.dtype)
    return (z - mean) / std


def denormalize(z: torch.Tensor) -> torch.Tensor:
    """Normalised latent -> raw VAE latent: ``z * std + mean`` (inverse of :func:`normalize`)."""
    _check(z, "latent to denormalize")
    mean, std = latent_stats(z.ndim, z.device, z.dtype)
    return z * std + mean
