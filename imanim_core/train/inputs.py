"""What a stage starts from: ``--init`` (a previous run or bundle), ``--vae``, and the export manifest."""
from __future__ import annotations

import json
from pathlib import Path

import torch.nn as nn

from ..config import BundleConfig, TokenizerConfig
from ..errors import CheckpointError, IMAnimError
from ..io.atomic import atomic_output
from ..io.paths import run_file
from ..models.bundle import BUNDLE_FORMAT, load_bundle
from ..models.released import looks_like_released_encoder, read_safetensors_header
from .config import TrainConfig


def init_bundle_path(init) -> Path:
    """``--init``: a previous run's directory (its ``export/bundle.safetensors``) or a bundle / released file."""
    p = Path(init)
    if p.is_dir():
        f = run_file(p, "bundle.safetensors")
        if f.is_file():
            return f
        raise CheckpointError(f"--init {str(p)!r}: a folder without export/bundle.safetensors "
                              f"(did that training run finish or get stopped before its first export?)")
    if not p.is_file():
        raise CheckpointError(f"--init {str(p)!r} does not exist")
    return p


def bundle_config_of(path):
    """The parts' configs of a bundle or released encoder file, from its header only."""
    meta, tensors = read_safetensors_header(path)
    if meta.get("format") == BUNDLE_FORMAT:
        return BundleConfig.from_dict(json.loads(meta.get("config", "{}")), where=f"{str(path)!r} config")
    if looks_like_released_encoder({k: v[1] for k, v in tensors.items()}):
        return BundleConfig(tokenizer=TokenizerConfig.preset("large"))
    raise CheckpointError(f"--init {str(path)!r} is neither an IM-Animation bundle nor the released motion encoder")


def load_init(cfg: TrainConfig, dry: bool = False):
    """(BundleConfig, IMAnimationBundle or None) of ``--init`` (None, None without --init; no weights when dry)."""
    if not cfg.init:
        return None, None
    path = init_bundle_path(cfg.init)
    bcfg = bundle_config_of(path)
    if dry:
        return bcfg, None
    return bcfg, load_bundle(path)


def copy_weights(dst: nn.Module, src: nn.Module, what: str):
    try:
        dst.load_state_dict(src.state_dict(), strict=True)
    except RuntimeError as e:
        raise CheckpointError(f"--init: part {what!r} does not fit the model being trained: "
                              f"{str(e).splitlines()[0]}") from None


def find_vae(cfg: TrainConfig) -> str:
    """The VAE file to use: ``--vae`` (a file, or a `train vae` run dir), else the one recorded by the ``--init``
    run (its ``export/manifest.json`` or ``export/vae.safetensors``); ``"random"`` (tiny preset only)."""
    if cfg.vae == "random":
        if cfg.preset != "tiny-puppet":
            raise IMAnimError("--vae random (an untrained VAE) is only allowed with the tiny-puppet preset")
        return "random"
    if cfg.vae:
        p = Path(cfg.vae)
        if p.is_dir():
            f = run_file(p, "vae.safetensors")
            if f.is_file():
                return str(f)
            raise CheckpointError(f"--vae {str(p)!r}: a folder without export/vae.safetensors")
        if not p.is_file():
            raise CheckpointError(f"--vae {str(p)!r} does not exist")
        return str(p)
    if cfg.init and Path(cfg.init).is_dir():
        exp = Path(cfg.init) / "export"
        man = exp / "manifest.json"
        if man.is_file():
            v = json.loads(man.read_text()).get("vae")
            if v and Path(v).is_file():
                return str(v)
        f = run_file(cfg.init, "vae.safetensors")
        if f.is_file():
            return str(f)
    raise IMAnimError(f"train {cfg.stage} needs the Wan 2.1 VAE: pass --vae FILE (or a `train vae` run directory)"
                      f"{'; --vae random for a smoke test' if cfg.preset == 'tiny-puppet' else ''}")


def write_manifest(export_dir: Path, info: dict) -> Path:
    p = Path(export_dir) / "manifest.json"
    with atomic_output(p) as tmp:
        tmp.write_text(json.dumps(info, indent=2))
    return p


__all__ = ["init_bundle_path", "run_file", "bundle_config_of", "load_init", "copy_weights", "find_vae", "write_manifest"]
