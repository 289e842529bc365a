"""The one config system of imanim_core: plain dataclasses, presets, JSON/YAML files.

Every model part has a config dataclass here; a bundle stores ``BundleConfig.to_dict()`` as JSON in its
safetensors metadata and rebuilds the parts from it. Training configs (``imanim_core.train``) are dataclasses
too and load through :func:`load_config_file`.

Presets:
- ``TokenizerConfig.preset("large")`` is exactly the authors' released motion encoder (DESIGN §2).
- ``"tiny"`` is small enough to train on a CPU (the embedded default).
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Optional, Type, TypeVar

from .errors import IMAnimError

T = TypeVar("T")

NUM_JOINTS = 20  # the authors' run and our puppet skeleton


def _from_dict(cls: Type[T], d: dict, where: str) -> T:
    if not isinstance(d, dict):
        raise IMAnimError(f"{where}: expected a mapping, got {type(d).__name__}")
    names = {f.name: f for f in fields(cls)}
    unknown = sorted(set(d) - set(names))
    if unknown:
        raise IMAnimError(f"{where}: unknown keys {unknown}; allowed: {sorted(names)}")
    kwargs = {}
    for k, v in d.items():
        if isinstance(v, list):
            v = tuple(v)
        kwargs[k] = v
    return cls(**kwargs)


class _Base:
    def to_dict(self) -> dict:
        out = dataclasses.asdict(self)  # type: ignore[arg-type]
        return {k: list(v) if isinstance(v, tuple) else v for k, v in out.items()}

    @classmethod
    def from_dict(cls, d: dict, where: Optional[str] = None):
        return _from_dict(cls, d, where or cls.__name__)

    def replace(self, **kw):
        return dataclasses.replace(self, **kw)  # type: ignore[type-var]


@dataclass(frozen=True)
class TokenizerConfig(_Base):
    """TiTok-style 1D motion tokenizer (encoder + L2-normalised VQ)."""

    image_size: int = 256
    patch_size: int = 16
    width: int = 1024
    layers: int = 24
    heads: int = 16
    mlp_ratio: float = 4.0
    num_latent_tokens: int = 32  # K
    token_dim: int = 12  # d
    codebook_size: int = 4096
    commitment: float = 0.25
    patch_padding: tuple = (4, 2)  # conv padding of patch_embed (released model: (4, 2))
    legacy_output: bool = True  # released model reshapes [B,K,W]->[B,W,K,1] instead of transposing
    # "vit": the TiTok-style ViT (the released layout). "conv": the tiny model's encoder (models/tokenizer.py,
    # ConvMotionEncoder): a full-resolution CNN whose K latent tokens are soft-attention pools of its features and
    # of the pixel coordinates; `width` is its channel count, `layers`/`heads`/`patch_*` are unused.
    encoder: str = "vit"

    @property
    def grid(self) -> int:
        """Patch-grid side length (the released model: (256 + 2*4 - 16)//16 + 1 = 16 rows)."""
        return (self.image_size + 2 * self.patch_padding[0] - self.patch_size) // self.patch_size + 1

    @property
    def grid_hw(self) -> tuple:
        p = self.patch_padding
        h = (self.image_size + 2 * p[0] - self.patch_size) // self.patch_size + 1
        w = (self.image_size + 2 * p[1] - self.patch_size) // self.patch_size + 1
        return (h, w)

    @staticmethod
    def preset(name: str) -> "TokenizerConfig":
        if name == "large":
            return TokenizerConfig()
        if name == "tiny":
            return TokenizerConfig(image_size=64, patch_size=8, width=64, layers=4, heads=4,
                                   num_latent_tokens=32, token_dim=12, codebook_size=1024,
                                   patch_padding=(0, 0), legacy_output=False, encoder="conv")
        if name == "tiny-vit":  # the ViT tokenizer at the tiny size (the embedded model before v2; tests)
            return TokenizerConfig(image_size=64, patch_size=8, width=128, layers=4, heads=4,
                                   num_latent_tokens=32, token_dim=12, codebook_size=1024,
                                   patch_padding=(0, 0), legacy_output=False)
        raise IMAnimError(f"unknown tokenizer preset {name!r}; choose 'large', 'tiny' or 'tiny-vit'")


@dataclass(frozen=True)
class MotionDecoderConfig(_Base):
    """Stage-1 decoder: quantised tokens + mask tokens -> ViT -> joint tokens (grid x grid x joint_dim)."""

    token_dim: int = 12
    num_tokens: int = 32  # K motion tokens per frame (== TokenizerConfig.num_latent_tokens)
    width: int = 128
    layers: int = 4
    heads: int = 4
    grid: int = 16  # mask tokens: grid x grid positions
    joint_dim: int = 64  # channels of the joint tokens (shared with the retargeter's output)


@dataclass(frozen=True)
class JointHeadConfig(_Base):
    """Light joint decoder: joint tokens on any grid -> J heatmaps at `upsample` x the grid resolution."""

    joint_dim: int = 64
    num_joints: int = NUM_JOINTS
    hidden: int = 64
    upsample: int = 4


@dataclass(frozen=True)
class RetargeterConfig(_Base):
    """Identity tokens + motion tokens + mask tokens -> retargeted tokens on the DiT grid (latent h/2 x w/2)."""

    latent_channels: int = 16
    patch_size: int = 2
    token_dim: int = 12  # d of the motion codes
    num_motion_tokens: int = 32  # K
    width: int = 256
    layers: int = 4  # each layer = spatial block + temporal block (factorised)
    heads: int = 4
    out_dim: int = 64  # Dr == JointHeadConfig.joint_dim
    # driver-pose path (0 = off, the layout of bundles before v3): an internal motion decoder (MotionDecoderConfig
    # with these width/layers/heads/grid) turns the codes into the driver's joint tokens; they are added to the
    # mask tokens and, resampled to the output grid, are the output's residual base (proj_out starts at zero).
    driver_layers: int = 0
    # code standardisation (False = the layout before it): each motion code is standardised per token index and
    # channel with the mean / std of the codes the tokenizer gives on training data (buffers code_mean / code_std
    # [K, d], set once when stage 2 starts) before motion_proj; the motion between frames is ~2 % of the code scale
    code_norm: bool = False
    driver_width: int = 128
    driver_heads: int = 4
    driver_grid: int = 16


@dataclass(frozen=True)
class InjectorConfig(_Base):
    """Retargeted tokens (per frame) -> DiT width per latent frame; zero-initialised output layer."""

    in_dim: int = 64  # Dr
    dit_dim: int = 1536
    hidden: int = 256
    temporal_stride: int = 4  # Wan VAE: frame 0 alone, then groups of 4


@dataclass(frozen=True)
class BundleConfig(_Base):
    """Which parts a bundle holds, with their configs. Missing parts are None."""

    tokenizer: Optional[TokenizerConfig] = None
    motion_decoder: Optional[MotionDecoderConfig] = None
    joint_head: Optional[JointHeadConfig] = None
    retargeter: Optional[RetargeterConfig] = None
    injector: Optional[InjectorConfig] = None

    PARTS = ("tokenizer", "motion_decoder", "joint_head", "retargeter", "injector")

    def to_dict(self) -> dict:
        return {p: (getattr(self, p).to_dict() if getattr(self, p) is not None else None) for p in self.PARTS}

    @classmethod
    def from_dict(cls, d: dict, where: Optional[str] = None) -> "BundleConfig":
        where = where or "bundle config"
        if not isinstance(d, dict):
            raise IMAnimError(f"{where}: expected a mapping")
        unknown = sorted(set(d) - set(cls.PARTS))
        if unknown:
            raise IMAnimError(f"{where}: unknown parts {unknown}; allowed: {list(cls.PARTS)}")
        types = {"tokenizer": TokenizerConfig, "motion_decoder": MotionDecoderConfig,
                 "joint_head": JointHeadConfig, "retargeter": RetargeterConfig, "injector": InjectorConfig}
        kw = {p: (types[p].from_dict(d[p], f"{where}.{p}") if d.get(p) is not None else None) for p in cls.PARTS}
        return cls(**kw)

    @property
    def parts(self) -> list:
        return [p for p in self.PARTS if getattr(self, p) is not None]


def load_config_file(path) -> dict:
    """Read a JSON or YAML file into a dict, with a clear error for a missing or malformed file."""
    p = Path(path)
    if not p.is_file():
        raise IMAnimError(f"config file {str(p)!r} does not exist")
    text = p.read_text(encoding="utf-8")
    try:
        if p.suffix.lower() in (".yaml", ".yml"):
            import yaml

            data = yaml.safe_load(text)
        else:
            data = json.loads(text)
    except Exception as e:  # noqa: BLE001 - reported with the file name
        raise IMAnimError(f"config file {str(p)!r} could not be parsed: {e}") from None
    if not isinstance(data, dict):
        raise IMAnimError(f"config file {str(p)!r}: expected a mapping at the top level")
    return data
