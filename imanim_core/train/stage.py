"""The stage API (DESIGN §2 stages): what a stage module (``stage1.py`` ... ``vae.py``) implements for the loop."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import torch
import torch.nn as nn

from .config import TrainConfig
from .data import clip_batch, collate_clips
from .optim import EMA


class Stage:
    """One training stage. Subclasses set ``name`` and implement the methods below."""

    name = "stage"
    find_unused_parameters = False

    def __init__(self, cfg: TrainConfig, device: torch.device, log=print):
        self.cfg = cfg
        self.device = device
        self.log = log
        self.module: Optional[nn.Module] = None  # the trained module: forward(batch) -> (loss, terms)
        self.dry = False  # dry run: build on the meta device, check that files exist but load nothing
        self.step = 0  # optimiser steps done (kept up to date by run_training; exports record it)

    # building
    def build(self) -> nn.Module:
        """Build (and initialise from ``--init`` etc.) the trained module and any frozen helpers."""
        raise NotImplementedError

    def param_groups(self) -> list:
        """``[{"name": str, "params": [...], "lr_scale": float}, ...]`` of the parameters that train."""
        raise NotImplementedError

    def describe(self) -> str:
        """One line per part: what trains, what is frozen."""
        return ""

    # data
    def load_batch(self, gen: torch.Generator, sample_offset: int) -> dict:
        """A CPU batch of ``cfg.batch_size`` samples; ``sample_offset`` counts samples over the whole run and all
        processes (use it with :func:`epoch_indices` for finite data sets); ``gen`` is seeded per micro-batch."""
        raise NotImplementedError

    def prepare(self, batch: dict) -> dict:
        """Run frozen models on a device batch (called under ``torch.no_grad()`` and autocast)."""
        return batch

    def after_step(self, module: nn.Module, step: int, accelerator, ema: Optional[EMA]) -> dict:
        """Called on every process after each optimiser step (``step`` = steps done); may change weights, as
        long as every process ends up with the same ones. Returns extra numbers to log (or {})."""
        return {}

    def extra_state(self) -> dict:
        """Per-process tensors to keep in checkpoints (restored with :meth:`load_extra_state`)."""
        return {}

    def load_extra_state(self, tensors: dict) -> None:
        pass

    # results
    def export(self, module: nn.Module, export_dir: Path) -> dict:
        """Write the stage's exports; return ``{what: path}``."""
        raise NotImplementedError

    def close(self):
        pass


class PooledClipStage(Stage):
    """A stage on clip samples (``train.data.clip_batch``) whose frozen models (VAE, frozen encoder) are costly,
    with the optional **sample pool** (``--sample-pool N``; stage 3 and the skeleton baseline).

    Subclasses set ``self.source`` in ``build`` and implement :meth:`clip_inputs` (CPU: stacked samples -> model
    inputs) and :meth:`frozen_outputs` (device, no grad: inputs -> what the trained module reads).

    With ``sample_pool = N > 0`` the run cycles through N distinct samples (sample counter mod N) and keeps, per
    sample, what :meth:`frozen_outputs` made of it in the main process's memory. Those are pure functions of the
    sample (the models are frozen), so the pool is only a cache: the first pass costs what it always did, later
    passes skip the frozen models (the VAE is about 3/4 of a tiny stage-3 step on a CPU). A resumed run rebuilds
    it as it goes. With N = 0 every sample is new and nothing is kept.
    """

    memo: Optional[dict] = None

    def clip_inputs(self, batch: dict) -> dict:
        raise NotImplementedError

    def frozen_outputs(self, batch: dict) -> dict:
        raise NotImplementedError

    def load_batch(self, gen, sample_offset):
        n = int(self.cfg.sample_pool)
        if n <= 0:
            return self.clip_inputs(clip_batch(self.source, sample_offset, self.cfg.batch_size))
        if self.memo is None:
            self.memo = {}
        ids = [(sample_offset + i) % n for i in range(self.cfg.batch_size)]
        if all(i in self.memo for i in ids):
            return {"sample_ids": torch.tensor(ids)}
        out = self.clip_inputs(collate_clips([self.source.samples(i, 1)[0] for i in ids]))
        out["sample_ids"] = torch.tensor(ids)
        return out

    def prepare(self, batch):
        ids = batch.pop("sample_ids", None)
        if ids is None:
            return self.frozen_outputs(batch)
        if self.memo is None:
            self.memo = {}
        ids = [int(i) for i in ids]
        missing = [j for j, i in enumerate(ids) if i not in self.memo]
        if missing:
            fresh = self.frozen_outputs({k: v[missing] for k, v in batch.items()})
            for n, j in enumerate(missing):
                self.memo[ids[j]] = {k: v[n].detach().clone() for k, v in fresh.items()}
        return {k: torch.stack([self.memo[i][k] for i in ids]) for k in self.memo[ids[0]]}


__all__ = ["Stage", "PooledClipStage"]
