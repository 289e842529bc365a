"""The one IM-Animation weights format: a safetensors "bundle" of model parts, plus the motion-tokens file.

Bundle file: keys ``<part>.<param>`` (parts: tokenizer, motion_decoder, joint_head, retargeter, injector; any
subset), metadata ``format=im-animation-bundle``, ``format_version=1``, ``config=<BundleConfig JSON>`` (the parts
are rebuilt from it), plus free ``str -> str`` entries given to :func:`save_bundle`.

:func:`load_bundle` also accepts the authors' released motion-encoder file (no metadata, released key layout):
it becomes a tokenizer-only bundle with the 'large' preset.

Motion-tokens file (what ``encode-motion`` writes and the ComfyUI Save/Load Motion Tokens nodes use):
``indices [T,K] int64``, ``codes [T,K,d] float32``, metadata ``format=im-animation-motion-tokens``,
``format_version=1``, ``config=<TokenizerConfig JSON>``, ``fps`` (when known).

Every write goes to a temporary file in the target folder first and is renamed into place (``os.replace``), so an
interrupted save never leaves a half-written file under the target name.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Optional

import torch
import torch.nn as nn

from ..checks import check_finite, check_finite_weights
from ..config import BundleConfig, TokenizerConfig
from ..errors import CheckpointError, IMAnimError, InputError
from ..io.atomic import save_safetensors
from .injector import MotionInjector
from .motion_decoder import JointHead, MotionDecoder
from .released import (_fmt_list, compare_layout, layout_problems, load_released_encoder,
                       looks_like_released_encoder, read_safetensors_header)
from .retargeter import Retargeter
from .tokenizer import MotionTokenizer

BUNDLE_FORMAT = "im-animation-bundle"
BUNDLE_FORMAT_VERSION = 1
TOKENS_FORMAT = "im-animation-motion-tokens"
TOKENS_FORMAT_VERSION = 1
_RESERVED_META = ("format", "format_version", "config")


# --------------------------------------------------------------------------------------------------- parts
def part_class(part: str):
    """The module class of a bundle part (each part lives in its own module)."""
    if part == "tokenizer":
        return MotionTokenizer
    if part == "motion_decoder":
        return MotionDecoder
    if part == "joint_head":
        return JointHead
    if part == "retargeter":
        return Retargeter
    if part == "injector":
        return MotionInjector
    raise IMAnimError(f"unknown bundle part {part!r}; parts are {list(BundleConfig.PARTS)}")


def build_part(part: str, cfg, meta: bool = False) -> nn.Module:
    """Build one part from its config (random init). ``meta=True`` builds the tokenizer without allocating
    (used before a full load; other parts may compute buffers at construction, so they are always real)."""
    cls = part_class(part)
    if meta and part == "tokenizer":
        with torch.device("meta"):
            return cls(cfg)
    return cls(cfg)


@dataclass
class IMAnimationBundle:
    """Config + the parts it lists (``None`` for the others). ``metadata`` holds the file's free metadata."""

    config: BundleConfig
    tokenizer: Optional[nn.Module] = None
    motion_decoder: Optional[nn.Module] = None
    joint_head: Optional[nn.Module] = None
    retargeter: Optional[nn.Module] = None
    injector: Optional[nn.Module] = None
    metadata: dict = field(default_factory=dict)
    source: Optional[str] = None  # "bundle" | "released" | None (built in memory)

    @classmethod
    def build(cls, config: BundleConfig, seed: Optional[int] = None) -> "IMAnimationBundle":
        """Build every part listed in ``config`` with fresh (training) initialisation."""
        if seed is not None:
            torch.manual_seed(seed)
        kw = {p: build_part(p, getattr(config, p)) for p in config.parts}
        return cls(config=config, **kw)

    def parts(self) -> dict:
        """``{part: module}`` for the parts that are present, in the canonical order."""
        return {p: getattr(self, p) for p in BundleConfig.PARTS if getattr(self, p) is not None}

    def check(self) -> None:
        """A part is present exactly when the config lists it."""
        for p in BundleConfig.PARTS:
            has_cfg, has_mod = getattr(self.config, p) is not None, getattr(self, p) is not None
            if has_cfg != has_mod:
                raise IMAnimError(f"bundle part {p!r}: the config {'lists' if has_cfg else 'does not list'} it but "
                                  f"the module is {'missing' if has_cfg else 'present'}")

    def to(self, device=None, dtype=None) -> "IMAnimationBundle":
        for m in self.parts().values():
            m.to(device=device, dtype=dtype)
        return self

    def eval(self) -> "IMAnimationBundle":
        for m in self.parts().values():
            m.eval()
        return self

    def train(self, mode: bool = True) -> "IMAnimationBundle":
        for m in self.parts().values():
            m.train(mode)
        return self

    def num_params(self) -> dict:
        return {p: sum(t.numel() for t in m.parameters()) for p, m in self.parts().items()}


# ----------------------------------------------------------------------------------------- atomic writing
def _atomic_save(tensors: dict, path, metadata: dict) -> Path:

    p = Path(path)
    if p.is_dir():
        raise InputError(f"output {str(p)!r} is a folder; expected a file name ending in .safetensors")
    return save_safetensors(tensors, p, metadata)


def _state_tensors(prefix: str, module: nn.Module, dtype=None) -> dict:
    out, seen = {}, set()
    for k, v in module.state_dict().items():
        t = v.detach()
        if dtype is not None and t.is_floating_point():
            t = t.to(dtype)
        t = t.to("cpu").contiguous()
        key = (t.untyped_storage().data_ptr(), t.storage_offset())
        if key in seen:  # tied tensors: safetensors refuses shared storage
            t = t.clone()
        seen.add((t.untyped_storage().data_ptr(), t.storage_offset()))
        out[f"{prefix}.{k}"] = t
    return out


def _user_meta(metadata: Optional[Mapping]) -> dict:
    out = {}
    for k, v in (metadata or {}).items():
        if k in _RESERVED_META:
            raise InputError(f"metadata key {k!r} is reserved by the file format")
        out[str(k)] = v if isinstance(v, str) else json.dumps(v)
    return out


# ------------------------------------------------------------------------------------------------ bundles
def save_bundle(bundle: IMAnimationBundle, path, metadata: Optional[Mapping] = None, dtype=None) -> Path:
    """Write ``bundle`` to ``path`` (safetensors). ``dtype`` optionally casts float tensors (e.g. bf16 to ship)."""
    if not isinstance(bundle, IMAnimationBundle):
        raise InputError(f"save_bundle: expected an IMAnimationBundle, got {type(bundle).__name__}")
    bundle.check()
    if not bundle.parts():
        raise InputError("save_bundle: the bundle has no parts")
    tensors = {}
    for part, mod in bundle.parts().items():
        tensors.update(_state_tensors(part, mod, dtype))
    meta = _user_meta(metadata)
    meta.update({"format": BUNDLE_FORMAT, "format_version": str(BUNDLE_FORMAT_VERSION),
                 "config": json.dumps(bundle.config.to_dict())})
    return _atomic_save(tensors, path, meta)


def _format_version(meta: dict, path, fmt: str, supported: int) -> int:
    raw = meta.get("format_version", "")
    try:
        v = int(raw)
    except ValueError:
        raise CheckpointError(f"{str(path)!r}: {fmt} file with an invalid format_version {raw!r}") from None
    if v > supported:
        raise CheckpointError(f"{str(path)!r} is a {fmt} file of format_version {v}, written by a newer "
                              f"IM-Animation; this version reads format_version <= {supported}. Update the node "
                              f"pack / imanim_core to load it")
    if v < 1:
        raise CheckpointError(f"{str(path)!r}: {fmt} file with an invalid format_version {v}")
    return v


def _bundle_config(meta: dict, path) -> BundleConfig:
    try:
        return BundleConfig.from_dict(json.loads(meta.get("config", "")), where=f"{str(path)!r} config")
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{str(path)!r}: the bundle config metadata is not valid JSON ({e})") from None
    except CheckpointError:
        raise
    except (IMAnimError, TypeError) as e:
        raise CheckpointError(f"{str(path)!r}: the bundle config does not fit this version: {e}") from None


def load_bundle(path, device="cpu", dtype: torch.dtype = torch.float32) -> IMAnimationBundle:
    """Load a bundle (or the released motion-encoder file, as a tokenizer-only bundle) in eval mode.

    Float tensors are converted to ``dtype`` on ``device``. Every part must match its config exactly: missing,
    unexpected or wrong-shape keys give a :class:`CheckpointError` listing them; so does a tensor with NaN or
    infinite values (checked once, tensor by tensor, while loading).
    """
    from safetensors import safe_open

    meta, tensors = read_safetensors_header(path)
    fmt = meta.get("format")
    if fmt != BUNDLE_FORMAT:
        if fmt == TOKENS_FORMAT:
            raise CheckpointError(f"{str(path)!r} is a motion-tokens file (the output of encode-motion), not model "
                                  f"weights; load it with load_motion_tokens / the Load Motion Tokens node")
        if fmt is None and looks_like_released_encoder({k: v for k, v in tensors.items()}):

            tok = load_released_encoder(path, dtype=dtype, device=device)
            b = IMAnimationBundle(config=BundleConfig(tokenizer=tok.cfg), tokenizer=tok, metadata=dict(meta),
                                  source="released")
            return b.eval()
        raise CheckpointError(f"{str(path)!r} is neither an IM-Animation bundle (metadata format="
                              f"{fmt!r}, expected {BUNDLE_FORMAT!r}) nor the released motion encoder; run "
                              f"`python -m imanim_core inspect {path}` to see what it is")
    _format_version(meta, path, "bundle", BUNDLE_FORMAT_VERSION)
    cfg = _bundle_config(meta, path)
    if not cfg.parts:
        raise CheckpointError(f"{str(path)!r}: the bundle config lists no parts")

    # group file keys by part and check them against freshly built parts before loading anything
    by_part = {p: {} for p in cfg.parts}
    stray = []
    for k, (_dt, shape) in tensors.items():
        part, _, rest = k.partition(".")
        if part in by_part and rest:
            by_part[part][rest] = shape
        else:
            stray.append(k)
    if stray:
        raise CheckpointError(f"{str(path)!r}: {len(stray)} tensor(s) belong to no part listed in the bundle "
                              f"config {cfg.parts}: {_fmt_list(sorted(stray))}")
    modules = {}
    for part in cfg.parts:
        try:
            mod = build_part(part, getattr(cfg, part), meta=True)
        except IMAnimError as e:
            raise CheckpointError(f"{str(path)!r}: cannot build part {part!r} from its config: {e}") from None
        own = mod.state_dict()
        expected = {k: tuple(v.shape) for k, v in own.items()}
        problems = layout_problems(compare_layout(by_part[part], expected))
        if problems:
            raise CheckpointError(f"{str(path)!r}: part {part!r} does not match its config: {problems}")
        not_float = [f"{part}.{k} ({tensors[f'{part}.{k}'][0]})" for k, v in own.items()
                     if v.is_floating_point() and tensors[f"{part}.{k}"][0] not in ("F64", "F32", "F16", "BF16")]
        if not_float:
            raise CheckpointError(f"{str(path)!r}: expected float tensors, found {_fmt_list(not_float)}")
        modules[part] = mod

    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            for part, mod in modules.items():
                is_meta = any(t.is_meta for t in mod.state_dict().values())
                sd = {}
                for k in by_part[part]:
                    t = f.get_tensor(f"{part}.{k}")
                    check_finite_weights(t, f"{part}.{k}", path, "IM-Animation bundle")
                    if is_meta:  # assigned as is: convert now (one tensor at a time, low peak memory)
                        t = t.to(device=device, dtype=dtype) if t.is_floating_point() else t.to(device)
                    sd[k] = t
                mod.load_state_dict(sd, strict=True, assign=is_meta)
                if not is_meta:  # copied into the freshly built module, then moved as a whole
                    mod.to(device=device, dtype=dtype)
    except CheckpointError:
        raise
    except Exception as e:  # noqa: BLE001 - corrupt data: name the file
        raise CheckpointError(f"{str(path)!r} could not be loaded: {e}") from None
    user_meta = {k: v for k, v in meta.items() if k not in _RESERVED_META}
    return IMAnimationBundle(config=cfg, metadata=user_meta, source="bundle", **modules).eval()


def describe_bundle(bundle: IMAnimationBundle) -> dict:
    """Summary of an in-memory bundle: parts with parameter counts, config, dtype."""
    parts = {}
    for p, m in bundle.parts().items():
        ps = list(m.parameters())
        parts[p] = {"params": sum(t.numel() for t in ps),
                    "dtype": str(ps[0].dtype).replace("torch.", "") if ps else None}
    return {"parts": parts, "config": bundle.config.to_dict(), "source": bundle.source,
            "metadata": dict(bundle.metadata)}


# ------------------------------------------------------------------------------------------ motion tokens
def _tokens_config(cfg) -> TokenizerConfig:
    if isinstance(cfg, TokenizerConfig):
        return cfg
    if isinstance(cfg, Mapping):
        return TokenizerConfig.from_dict(dict(cfg))
    raise InputError(f"motion tokens: 'config' must be a TokenizerConfig or a dict, got {type(cfg).__name__}")


def check_motion_tokens(tokens: Mapping, where: str = "motion tokens") -> dict:
    """Validate a MOTION_TOKENS mapping ``{"indices" [T,K], "codes" [T,K,d], "config", optional "fps"}`` and return
    a normalised copy (indices int64, codes float32, config a TokenizerConfig). Raises :class:`InputError`."""
    if not isinstance(tokens, Mapping):
        raise InputError(f"{where}: expected a mapping with 'indices', 'codes' and 'config', got "
                         f"{type(tokens).__name__}")
    missing = [k for k in ("indices", "codes", "config") if k not in tokens]
    if missing:
        raise InputError(f"{where}: missing {missing}; expected 'indices' [T,K], 'codes' [T,K,d] and 'config'")
    cfg = _tokens_config(tokens["config"])
    idx, codes = tokens["indices"], tokens["codes"]
    if not isinstance(idx, torch.Tensor) or not isinstance(codes, torch.Tensor):
        raise InputError(f"{where}: 'indices' and 'codes' must be torch tensors")
    K, d = cfg.num_latent_tokens, cfg.token_dim
    if idx.ndim != 2 or idx.shape[1] != K or idx.is_floating_point():
        raise InputError(f"{where}: 'indices' must be an integer tensor [T,{K}], got {tuple(idx.shape)} {idx.dtype}")
    if codes.ndim != 3 or codes.shape[1:] != (K, d) or not codes.is_floating_point():
        raise InputError(f"{where}: 'codes' must be a float tensor [T,{K},{d}], got {tuple(codes.shape)} "
                         f"{codes.dtype}")
    if idx.shape[0] != codes.shape[0]:
        raise InputError(f"{where}: {idx.shape[0]} frames of indices but {codes.shape[0]} frames of codes")
    if idx.shape[0] == 0:
        raise InputError(f"{where}: no frames")
    if int(idx.min()) < 0 or int(idx.max()) >= cfg.codebook_size:
        raise InputError(f"{where}: indices outside [0, {cfg.codebook_size - 1}] (codebook of {cfg.codebook_size})")
    check_finite(codes, f"{where}: 'codes'", "motion-token codes")
    out = {"indices": idx.detach().to("cpu", torch.int64).contiguous(),
           "codes": codes.detach().to("cpu", torch.float32).contiguous(), "config": cfg}
    fps = tokens.get("fps")
    out["fps"] = float(fps) if fps is not None else None
    return out


def save_motion_tokens(path, tokens: Mapping, metadata: Optional[Mapping] = None) -> Path:
    """Write MOTION_TOKENS ``{"indices" [T,K], "codes" [T,K,d], "config", optional "fps"}`` to a safetensors file."""
    t = check_motion_tokens(tokens)
    meta = _user_meta(metadata)
    meta.pop("fps", None)
    meta.update({"format": TOKENS_FORMAT, "format_version": str(TOKENS_FORMAT_VERSION),
                 "config": json.dumps(t["config"].to_dict())})
    if t["fps"] is not None:
        meta["fps"] = repr(float(t["fps"]))
    return _atomic_save({"indices": t["indices"], "codes": t["codes"]}, path, meta)


def load_motion_tokens(path) -> dict:
    """Read a motion-tokens file -> ``{"indices", "codes", "config": TokenizerConfig, "fps", "metadata"}``."""
    from safetensors.torch import load_file

    meta, tensors = read_safetensors_header(path)
    if meta.get("format") != TOKENS_FORMAT:
        hint = " (it is a weights bundle)" if meta.get("format") == BUNDLE_FORMAT else ""
        raise CheckpointError(f"{str(path)!r} is not a motion-tokens file (metadata format={meta.get('format')!r}, "
                              f"expected {TOKENS_FORMAT!r}){hint}")
    _format_version(meta, path, "motion-tokens", TOKENS_FORMAT_VERSION)
    if set(tensors) != {"indices", "codes"}:
        raise CheckpointError(f"{str(path)!r}: expected exactly the tensors 'indices' and 'codes', found "
                              f"{sorted(tensors)}")
    try:
        cfg = TokenizerConfig.from_dict(json.loads(meta.get("config", "")))
    except (json.JSONDecodeError, IMAnimError, TypeError) as e:
        raise CheckpointError(f"{str(path)!r}: the tokenizer config metadata is invalid: {e}") from None
    try:
        data = load_file(str(path))
    except Exception as e:  # noqa: BLE001
        raise CheckpointError(f"{str(path)!r} could not be read: {e}") from None
    fps = meta.get("fps")
    try:
        out = check_motion_tokens({"indices": data["indices"], "codes": data["codes"], "config": cfg,
                                   "fps": float(fps) if fps else None}, where=str(path))
    except InputError as e:
        raise CheckpointError(str(e)) from None
    out["metadata"] = {k: v for k, v in meta.items() if k not in _RESERVED_META + ("fps",)}
    return out


__all__ = ["IMAnimationBundle", "save_bundle", "load_bundle", "describe_bundle", "build_part",
           "part_class", "save_motion_tokens", "load_motion_tokens", "check_motion_tokens", "BUNDLE_FORMAT",
           "BUNDLE_FORMAT_VERSION", "TOKENS_FORMAT", "TOKENS_FORMAT_VERSION"]
