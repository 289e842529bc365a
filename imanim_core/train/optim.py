"""What the optimiser step needs besides AdamW: the learning-rate schedule, the EMA, gradient checkpointing."""
from __future__ import annotations

import math
from contextlib import contextmanager
from typing import Iterable

import torch
import torch.nn as nn

from ..errors import CheckpointError
from .config import TrainConfig


class EMA:
    """Exponential moving average of the trainable parameters (float32 shadows), with the usual warm-up
    ``decay_t = min(decay, (1 + n) / (10 + n))``."""

    def __init__(self, named_params: Iterable, decay: float):
        self.decay = float(decay)
        self.num_updates = 0
        self.params = dict(named_params)
        self.shadow = {k: p.detach().float().clone() for k, p in self.params.items()}

    @torch.no_grad()
    def update(self):
        self.num_updates += 1
        d = min(self.decay, (1 + self.num_updates) / (10 + self.num_updates))
        for k, p in self.params.items():
            self.shadow[k].mul_(d).add_(p.detach().float(), alpha=1 - d)

    def state_dict(self) -> dict:
        return dict(self.shadow)

    def load_state_dict(self, tensors: dict, num_updates: int):
        missing = sorted(set(self.shadow) - set(tensors))
        if missing:
            raise CheckpointError(f"EMA checkpoint: missing {len(missing)} tensors (e.g. {missing[:3]})")
        for k in self.shadow:
            self.shadow[k].copy_(tensors[k])
        self.num_updates = int(num_updates)

    @contextmanager
    def swapped_in(self):
        """Temporarily put the EMA weights into the model (for exports)."""
        saved = {k: p.detach().clone() for k, p in self.params.items()}
        with torch.no_grad():
            for k, p in self.params.items():
                p.copy_(self.shadow[k].to(p.dtype))
        try:
            yield
        finally:
            with torch.no_grad():
                for k, p in self.params.items():
                    p.copy_(saved[k])


def enable_grad_checkpointing(module: nn.Module) -> list:
    """Turn on gradient checkpointing wherever a submodule supports it; return the names that did."""
    done = []
    for name, m in module.named_modules():
        if hasattr(m, "enable_gradient_checkpointing") and getattr(m, "_supports_gradient_checkpointing", True):
            try:
                m.enable_gradient_checkpointing()
                done.append(name or type(m).__name__)
            except Exception:  # noqa: BLE001 - a part that cannot checkpoint just runs without it
                pass
        elif isinstance(getattr(m, "gradient_checkpointing", None), bool) and not any(
                name.startswith(d + ".") for d in done if d):
            m.gradient_checkpointing = True
            done.append(name or type(m).__name__)
    return done


def lr_factor(cfg: TrainConfig, step: int) -> float:
    """Learning-rate multiplier at optimiser step ``step`` (0-based): linear warm-up, then constant or cosine
    down to ``min_lr_ratio``. A pure function of the step (nothing to save)."""
    if cfg.warmup_steps > 0 and step < cfg.warmup_steps:
        return (step + 1) / cfg.warmup_steps
    if cfg.lr_schedule == "constant":
        return 1.0
    span = max(1, cfg.max_steps - cfg.warmup_steps)
    p = min(1.0, (step - cfg.warmup_steps) / span)
    return cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * p))


def trainable_named_params(module: nn.Module) -> list:
    return [(n, p) for n, p in module.named_parameters() if p.requires_grad]


__all__ = ["EMA", "lr_factor", "enable_grad_checkpointing", "trainable_named_params"]
