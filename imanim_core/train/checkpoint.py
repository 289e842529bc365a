"""Training checkpoints ``DIR/checkpoints/step_N/`` (the format; the loop writes and reads them in ``loop.py``).

``model.safetensors`` (trainable parameters), ``optimizer.safetensors``, ``ema.safetensors``,
``rng_rank{r}.safetensors``, ``extra_rank{r}.safetensors`` (a stage's per-process state) and ``state.json`` (step,
config, optimiser metadata, RNG of Python's ``random``); written to a temporary folder and renamed, the last
``keep_checkpoints`` kept. FSDP runs add Accelerate's own state in ``accelerate/``.
"""
from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Optional

import torch
from safetensors.torch import load_file, save_file

from ..errors import CheckpointError
from .config import TrainConfig

CKPT_FORMAT = "imanim-train-checkpoint"
CKPT_VERSION = 1
# options that may differ between a run and its resumption without a warning
RESUME_FREE = {"max_steps", "log_every", "ckpt_every", "keep_checkpoints", "num_workers", "num_threads", "out",
               "data", "init", "vae", "dit"}


def save_tensors(path: Path, tensors: dict, meta: Optional[dict] = None):
    clean = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    save_file(clean, str(path), metadata={k: str(v) for k, v in (meta or {}).items()})


def load_tensors(path: Path) -> dict:
    if not path.is_file():
        raise CheckpointError(f"checkpoint file {str(path)!r} is missing")
    return load_file(str(path))


def optimizer_to_flat(opt: torch.optim.Optimizer) -> tuple:
    """Optimizer state -> (tensors for safetensors, JSON-able metadata)."""
    sd = opt.state_dict()
    tensors, scalars = {}, {}
    for idx, st in sd["state"].items():
        for k, v in st.items():
            if torch.is_tensor(v):
                tensors[f"state.{idx}.{k}"] = v
            else:
                scalars[f"{idx}.{k}"] = v
    return tensors, {"param_groups": sd["param_groups"], "scalars": scalars}


def optimizer_from_flat(opt: torch.optim.Optimizer, tensors: dict, meta: dict):
    state: dict = {}
    for key, v in tensors.items():
        _, idx, k = key.split(".", 2)
        state.setdefault(int(idx), {})[k] = v
    for key, v in meta.get("scalars", {}).items():
        idx, k = key.split(".", 1)
        state.setdefault(int(idx), {})[k] = v
    groups = meta["param_groups"]
    cur = opt.state_dict()["param_groups"]
    if [len(g["params"]) for g in groups] != [len(g["params"]) for g in cur]:
        raise CheckpointError("optimizer checkpoint: the parameter groups do not match this model "
                              "(was the checkpoint written with other options, e.g. --lora-rank/--end-to-end?)")
    opt.load_state_dict({"state": state, "param_groups": groups})


def list_checkpoints(out: Path) -> list:
    """Complete checkpoints of a run, oldest first: [(step, path)]."""
    root = Path(out) / "checkpoints"
    found = []
    if root.is_dir():
        for p in root.iterdir():
            m = re.fullmatch(r"step_(\d+)", p.name)
            if m and p.is_dir() and (p / "state.json").is_file():
                found.append((int(m.group(1)), p))
    return sorted(found)


def read_state(step_dir: Path, cfg: TrainConfig, out: Path, say) -> dict:
    """``state.json`` of the checkpoint a run resumes from, checked against this run (format, stage; a warning
    for changed options)."""
    state = json.loads((step_dir / "state.json").read_text())
    if state.get("format") != CKPT_FORMAT:
        raise CheckpointError(f"{step_dir}: not a training checkpoint of this package")
    if state.get("stage") != cfg.stage:
        raise CheckpointError(f"--resume: {out} holds a {state.get('stage')} run, not {cfg.stage}; pass the "
                              f"previous stage's directory as --init and choose a new --out")
    old = state.get("config", {})
    changed = sorted(k for k, v in cfg.to_dict().items() if k not in RESUME_FREE and old.get(k, v) != v)
    if changed:
        say(f"warning: resuming with options that differ from the checkpoint's: {changed}")
    return state


def load_trainable(step_dir: Path, named_train: list):
    """Copy ``model.safetensors`` into the trainable parameters ``[(name, param)]`` (the names must match)."""
    tensors = load_tensors(step_dir / "model.safetensors")
    names = {n for n, _ in named_train}
    if set(tensors) != names:
        miss, extra = sorted(names - set(tensors)), sorted(set(tensors) - names)
        raise CheckpointError(f"{step_dir}: trainable parameters differ from this model "
                              f"(missing {miss[:3]}, unexpected {extra[:3]}); were other options used?")
    with torch.no_grad():
        for n, p in named_train:
            p.copy_(tensors[n].to(p.dtype))


__all__ = ["CKPT_FORMAT", "CKPT_VERSION", "RESUME_FREE", "save_tensors", "load_tensors", "optimizer_to_flat",
           "optimizer_from_flat", "list_checkpoints", "read_state", "load_trainable"]
