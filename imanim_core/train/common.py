"""The training API in one import (for code outside ``train/``, e.g. ``stage_gates.py``, and older scripts).

The code lives by concern: ``seeding.py`` (seeds, RNG states), ``losses.py``, ``optim.py`` (EMA, learning-rate
schedule, gradient checkpointing), ``stage.py`` (the ``Stage`` API), ``inputs.py`` (``--init``/``--vae``,
manifests), ``checkpoint.py`` (the checkpoint format), ``runtime.py`` (data loading, Ctrl-C, ``log.csv``,
Accelerator) and ``loop.py`` (``Trainer``, ``run_training``, ``dry_run``).
"""
from __future__ import annotations

from .checkpoint import CKPT_FORMAT, CKPT_VERSION, list_checkpoints
from .inputs import copy_weights, find_vae, load_init, write_manifest
from .loop import EXIT_INTERRUPTED, Trainer, dry_run, run_training
from .losses import keypoint_error, weighted_heatmap_mse
from .optim import EMA, enable_grad_checkpointing, lr_factor
from .runtime import build_accelerator
from .seeding import epoch_indices, mix_seed, seed_everything
from .stage import PooledClipStage, Stage

__all__ = ["Stage", "PooledClipStage", "Trainer", "run_training", "mix_seed", "seed_everything", "epoch_indices",
           "weighted_heatmap_mse", "keypoint_error", "EMA", "lr_factor", "list_checkpoints",
           "enable_grad_checkpointing", "build_accelerator", "dry_run", "copy_weights", "find_vae", "load_init",
           "write_manifest", "CKPT_FORMAT", "CKPT_VERSION", "EXIT_INTERRUPTED"]
