"""Custom ComfyUI socket types of the pack and the objects that travel on them."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import torch
from comfy_api.latest import io

MotionTokens = io.Custom("MOTION_TOKENS")
"""``{"indices" [T,K] int64, "codes" [T,K,d] float32, "config": TokenizerConfig, "fps": float|None}`` (CPU),
the mapping of ``imanim_core.models.bundle.check_motion_tokens``."""

RetargetedMotion = io.Custom("RETARGETED_MOTION")
"""A :class:`Retargeted`."""

IMAnimationModels = io.Custom("IM_ANIMATION_MODELS")
"""A :class:`LoadedModels`."""


@dataclass
class LoadedModels:
    """An IM-Animation bundle loaded on a device, with a human-readable summary."""

    bundle: object  # imanim_core.models.bundle.IMAnimationBundle
    name: str
    device: torch.device
    dtype: torch.dtype
    info: str = ""

    def part(self, name: str):
        return getattr(self.bundle, name, None)


@dataclass
class Retargeted:
    """What the sampler needs from *Retarget to Identity*.

    tokens: retargeted motion ``[1, T, gh, gw, Dr]`` float32 on the CPU (T = the driving frame count, not
    padded); identity_latent: the raw Wan 2.1 VAE latent of the identity ``[1, 16, 1, h, w]`` (ComfyUI
    normalises it when it enters the model through ``time_dim_concat``); injector: the bundle's MotionInjector.
    """

    tokens: torch.Tensor
    identity_latent: torch.Tensor
    frame_count: int
    width: int
    height: int
    injector: object
    models_name: str = ""
    fps: Optional[float] = None
    extra: dict = field(default_factory=dict)

    @property
    def latent_hw(self) -> tuple:
        return int(self.identity_latent.shape[-2]), int(self.identity_latent.shape[-1])
