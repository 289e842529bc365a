"""Wan 2.1 DiT and VAE through diffusers: shipped configs, build, load/save in the original layout, VAE helpers.

- Configs ship in ``backbone/configs/*.json`` (diffusers config dicts, no hub): DiT presets
  ``wan2.1-t2v-1.3b``, ``wan2.1-t2v-14b``, ``tiny``; VAE presets ``wan2.1``, ``tiny``.
- Files are written in the **original** Wan key layout (what ComfyUI's stock loaders and diffusers'
  ``from_single_file`` read), with safetensors metadata ``format`` (``wan-dit`` / ``wan-vae``),
  ``layout=original`` and ``config`` (the diffusers config JSON). Loading accepts any original-layout Wan file
  (config from the metadata if present, otherwise inferred from tensor shapes the way ComfyUI does) and also a
  diffusers-layout file.
- Video tensors for the VAE helpers are ``[B, 3, T, H, W]`` in [-1, 1] with ``T = 4n + 1`` and ``H, W``
  multiples of 8; latents are **normalised** (``latents.normalize``) ``[B, 16, n + 1, H/8, W/8]``.

diffusers is imported lazily (on first build/load) so importing this module stays cheap.
"""
from __future__ import annotations

import contextlib
import inspect
import json
from pathlib import Path
from typing import Mapping, Optional, Union

import torch

from ..checks import check_finite_weights
from ..errors import CheckpointError, IMAnimError, InputError
from ..io.atomic import save_safetensors
from . import latents as _latents
from .taehv import TinyVideoVAE
from .convert import (
    DIT_ANCHOR,
    DIT_PREFIXES,
    HEAD_DIM,
    VAE_ANCHOR,
    VAE_PREFIXES,
    describe_wan,
    detect_wan_kind,
    detect_wan_layout,
    dit_config_from_shapes,
    dit_diffusers_to_original,
    dit_original_to_diffusers,
    find_prefix,
    vae_config_from_shapes,
    vae_diffusers_to_original,
    vae_original_to_diffusers,
)

__all__ = [
    "CONFIG_DIR", "DIT_PRESETS", "VAE_PRESETS", "dit_config", "vae_config", "build_dit", "build_vae",
    "load_dit", "save_dit", "load_vae", "save_vae", "vae_encode", "vae_decode", "inspect_wan_file",
    "dit_state_dict", "detect_wan_kind", "describe_wan",
]

CONFIG_DIR = Path(__file__).resolve().parent / "configs"
DIT_PRESETS = {
    "wan2.1-t2v-1.3b": "dit_wan2.1_t2v_1.3b.json",
    "wan2.1-t2v-14b": "dit_wan2.1_t2v_14b.json",
    "tiny": "dit_tiny.json",
}
VAE_PRESETS = {"wan2.1": "vae_wan2.1.json", "tiny": "vae_tiny.json",
               "wan2.1-tiny": "vae_wan2.1_tiny.json"}  # the last: a base_dim-16 Wan 2.1 VAE (tests, probes)
_DIT_ALIASES = {"1.3b": "wan2.1-t2v-1.3b", "14b": "wan2.1-t2v-14b", "t2v-1.3b": "wan2.1-t2v-1.3b",
                "t2v-14b": "wan2.1-t2v-14b"}
_VAE_ALIASES = {"wan2.1-vae": "wan2.1", "wan-2.1": "wan2.1", "wan21": "wan2.1"}

FORMAT_DIT = "wan-dit"
FORMAT_VAE = "wan-vae"
TINY_VAE_CLASS = "TinyVideoVAE"  # vae_tiny.json: the TAEHV-layout tiny VAE (backbone/taehv.py)


# ---------------------------------------------------------------------------------------------- configs
def _preset_key(name: str, presets: dict, aliases: dict, what: str) -> str:
    key = name.strip().lower().replace("_", "-")
    key = aliases.get(key, key)
    if key not in presets:
        raise IMAnimError(f"unknown {what} preset {name!r}; choose one of {sorted(presets)}")
    return key


def _model_classes():
    try:
        from diffusers import AutoencoderKLWan, WanTransformer3DModel
    except Exception as e:  # noqa: BLE001 - an environment problem, reported plainly
        raise IMAnimError(f"diffusers could not provide the Wan models (WanTransformer3DModel, AutoencoderKLWan): "
                          f"{type(e).__name__}: {e}") from e
    return WanTransformer3DModel, AutoencoderKLWan


def _clean_config(cfg: Mapping, cls, what: str) -> dict:
    if not isinstance(cfg, Mapping):
        raise IMAnimError(f"{what} config: expected a preset name or a mapping, got {type(cfg).__name__}")
    out = {k: (list(v) if isinstance(v, tuple) else v) for k, v in cfg.items() if not str(k).startswith("_")}
    allowed = set(inspect.signature(cls.__init__).parameters) - {"self"}
    unknown = sorted(set(out) - allowed)
    if unknown:
        raise IMAnimError(f"{what} config: unknown keys {unknown}; allowed: {sorted(allowed)}")
    return out


def _read_preset(fname: str) -> dict:
    with open(CONFIG_DIR / fname, encoding="utf-8") as f:
        return {k: v for k, v in json.load(f).items() if not k.startswith("_")}


def dit_config(name_or_config: Union[str, Mapping] = "tiny") -> dict:
    """A ``WanTransformer3DModel`` config dict (a fresh copy) from a preset name or a config mapping."""
    if isinstance(name_or_config, str):
        return _read_preset(DIT_PRESETS[_preset_key(name_or_config, DIT_PRESETS, _DIT_ALIASES, "Wan DiT")])
    return _clean_config(name_or_config, _model_classes()[0], "Wan DiT")


def vae_config(name_or_config: Union[str, Mapping] = "tiny") -> dict:
    """An ``AutoencoderKLWan`` config dict (a fresh copy) from a preset name or a config mapping.

    ``latents_mean`` / ``latents_std`` are always those of :mod:`.latents` unless the mapping sets them.
    """
    if isinstance(name_or_config, str):
        cfg = _read_preset(VAE_PRESETS[_preset_key(name_or_config, VAE_PRESETS, _VAE_ALIASES, "Wan VAE")])
        if _is_tiny_vae_config(cfg):
            return cfg
    elif _is_tiny_vae_config(name_or_config):
        return dict(name_or_config)
    else:
        cfg = _clean_config(name_or_config, _model_classes()[1], "Wan VAE")
    cfg.setdefault("latents_mean", list(_latents.LATENTS_MEAN))
    cfg.setdefault("latents_std", list(_latents.LATENTS_STD))
    return cfg


def build_dit(name_or_config_dict: Union[str, Mapping] = "tiny", dtype: Optional[torch.dtype] = None,
              device=None):
    """A randomly initialised ``WanTransformer3DModel`` from a preset (``"tiny"``, ``"wan2.1-t2v-1.3b"``,
    ``"wan2.1-t2v-14b"``) or a config dict. Build inside ``torch.device("meta")`` for a weightless skeleton."""
    cls = _model_classes()[0]
    model = cls.from_config(dit_config(name_or_config_dict))
    if dtype is not None or device is not None:
        model = model.to(device=device, dtype=dtype)
    return model


def _is_tiny_vae_config(cfg: Mapping) -> bool:
    return cfg.get("architecture") == TINY_VAE_CLASS


def build_vae(name_or_config_dict: Union[str, Mapping] = "tiny", dtype: Optional[torch.dtype] = None,
              device=None):
    """A randomly initialised VAE from a preset or a config dict: ``"wan2.1"`` is an ``AutoencoderKLWan``;
    ``"tiny"`` is the TAEHV-layout :class:`~imanim_core.backbone.taehv.TinyVideoVAE` (same Wan 2.1 latent space)."""
    cfg = vae_config(name_or_config_dict)
    if _is_tiny_vae_config(cfg):

        model = TinyVideoVAE(cfg.get("latent_channels", 16))
    else:
        model = _model_classes()[1].from_config(cfg)
    if dtype is not None or device is not None:
        model = model.to(device=device, dtype=dtype)
    return model


# ---------------------------------------------------------------------------------------------- file I/O
def _read_safetensors_header(path: Path, what: str):
    if path.is_dir():
        raise CheckpointError(f"{what} file {str(path)!r} is a folder; expected a .safetensors file")
    if not path.is_file():
        raise CheckpointError(f"{what} file {str(path)!r} does not exist")
    try:
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            meta = dict(f.metadata() or {})
            shapes = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
            dtypes = {f.get_slice(k).get_dtype() for k in list(f.keys())[:64]}
    except Exception as e:  # noqa: BLE001
        raise CheckpointError(f"{what} file {str(path)!r} is not a readable safetensors file: {e}") from None
    return meta, shapes, dtypes


def _looks_like(kind: Optional[str], shapes: Mapping) -> str:
    if kind == "wan_dit":
        return "a Wan DiT"
    if kind == "wan_vae":
        return "a Wan 2.1 VAE"
    keys = sorted(shapes)[:4]
    return f"not a Wan 2.1 file (first keys: {keys})" if keys else "an empty file"


def inspect_wan_file(path) -> dict:
    """Describe a Wan safetensors file from its header only (no tensors are read)."""
    p = Path(path)
    meta, shapes, dtypes = _read_safetensors_header(p, "Wan")
    info = describe_wan(shapes)
    info.update(path=str(p), size_bytes=p.stat().st_size, dtypes=sorted(dtypes),
                metadata={k: v for k, v in meta.items() if k != "config"})
    return info


def _config_from_metadata(meta: Mapping, fmt: str) -> Optional[dict]:
    if meta.get("format") != fmt or "config" not in meta:
        return None
    try:
        cfg = json.loads(meta["config"])
    except ValueError:
        return None
    return cfg if isinstance(cfg, dict) else None


@contextlib.contextmanager
def _empty_weights():
    """Parameters on the meta device while a model is constructed (buffers stay real), when accelerate is there."""
    try:
        from accelerate import init_empty_weights
    except Exception:  # noqa: BLE001 - accelerate is optional; build normally then
        yield
        return
    with init_empty_weights(include_buffers=False):
        yield


def _keep_fp32(name: str, patterns) -> bool:
    parts = name.split(".")
    return any(p in parts for p in patterns)


def _load_into(cls, cfg: dict, sd: dict, dtype: torch.dtype, device, path: Path, what: str):
    with _empty_weights():
        model = cls.from_config(cfg)
    try:
        model.load_state_dict(sd, strict=True, assign=True)
    except RuntimeError as e:
        msg = str(e).splitlines()
        raise CheckpointError(f"{what} file {str(path)!r} does not match its config {cfg}: "
                              f"{' '.join(m.strip() for m in msg[:4])}") from None
    return model.to(device=device).eval()


def _read_tensors(path: Path, what: str, prefix: str = "") -> dict:
    """The tensors under ``prefix`` (stripped); other parts of a whole-checkpoint file are not read."""
    from safetensors import safe_open

    n = len(prefix)
    try:
        with safe_open(str(path), framework="pt") as f:
            return {k[n:]: f.get_tensor(k) for k in f.keys() if k.startswith(prefix)}
    except Exception as e:  # noqa: BLE001
        raise CheckpointError(f"{what} file {str(path)!r} could not be read: {e}") from None


def _fresh_copies(sd: dict, dtype: torch.dtype, cls) -> dict:
    """Each tensor copied into a fresh allocation in its load dtype (diffusers-layout names), one at a time.

    The copy matters: tensors handed out by safetensors can sit at unaligned addresses, and CPU kernels then take
    other SIMD paths, so outputs would differ in the last bits from the model that was saved. Replacing tensor by
    tensor keeps the peak memory at the model plus one tensor. As diffusers' ``from_pretrained`` does, the
    modules listed in ``_keep_in_fp32_modules`` stay float32 when loading in float16/bfloat16.
    """
    keep = tuple(getattr(cls, "_keep_in_fp32_modules", None) or ()) if dtype in (torch.float16, torch.bfloat16) else ()
    for k in list(sd):
        v = sd[k]
        want = (torch.float32 if _keep_fp32(k, keep) else dtype) if v.is_floating_point() else v.dtype
        sd[k] = v.to(want, copy=True)
        del v
    return sd


def _load(path, kind_wanted: str, fmt: str, dtype, device):
    p = Path(path)
    what = "Wan DiT" if kind_wanted == "wan_dit" else "Wan VAE"
    meta, all_shapes, _ = _read_safetensors_header(p, what)
    if kind_wanted == "wan_dit":
        prefix = find_prefix(all_shapes, DIT_PREFIXES, DIT_ANCHOR)
    else:
        prefix = find_prefix(all_shapes, VAE_PREFIXES, VAE_ANCHOR)
    # a whole-checkpoint file can hold several parts: look only at the part asked for
    shapes = {k[len(prefix):]: v for k, v in all_shapes.items() if k.startswith(prefix)}
    kind, layout = detect_wan_layout(shapes)
    if kind != kind_wanted:
        raise CheckpointError(f"{str(p)!r} is {_looks_like(kind, shapes)}, expected {what} "
                              f"(original Wan 2.1 layout, as ComfyUI loads it)")
    sd = _read_tensors(p, what, prefix)

    for k, v in sd.items():  # once per load, tensor by tensor (a NaN weight gives a NaN or black video)
        check_finite_weights(v, prefix + k, p, what + " file")
    if layout == "taehv":

        model = TinyVideoVAE()
        try:
            model.load_state_dict(sd, strict=True)
        except RuntimeError as e:
            msg = " ".join(m.strip() for m in str(e).splitlines()[:4])
            raise CheckpointError(f"{what} file {str(p)!r} has the TAEHV key layout but does not match the tiny "
                                  f"video VAE (16 latent channels): {msg}") from None
        return model.to(device=device, dtype=dtype).eval()
    if kind == "wan_dit":
        orig_shapes = shapes if layout == "original" else dit_diffusers_to_original(shapes)
        sd = dit_original_to_diffusers(sd) if layout == "original" else sd
        cfg = _config_from_metadata(meta, fmt) or dit_config_from_shapes(orig_shapes)
        cfg = dit_config(cfg)
    else:
        orig_shapes = shapes if layout == "original" else vae_diffusers_to_original(shapes)
        sd = vae_original_to_diffusers(sd) if layout == "original" else sd
        cfg = _config_from_metadata(meta, fmt) or vae_config_from_shapes(orig_shapes)
        cfg = vae_config(cfg)
    cls = _model_classes()[0 if kind == "wan_dit" else 1]
    return _load_into(cls, cfg, _fresh_copies(sd, dtype, cls), dtype, device, p, what)


def load_dit(path, dtype: torch.dtype = torch.float32, device="cpu"):
    """Load a Wan DiT safetensors file (original layout, optionally under ``model.diffusion_model.``; a
    diffusers-layout file works too) into a ``WanTransformer3DModel`` in eval mode.

    The config comes from our metadata when present, else from tensor shapes (heads = dim / 128, as ComfyUI).
    Raises :class:`CheckpointError` for a missing/unreadable file, one that is not a Wan DiT, or one with NaN or
    infinite weights.
    """
    return _load(path, "wan_dit", FORMAT_DIT, dtype, device)


def load_vae(path, dtype: torch.dtype = torch.float32, device="cpu"):
    """Load a Wan 2.1 VAE safetensors file (original layout; diffusers layout accepted) into ``AutoencoderKLWan``
    (or the TAEHV-layout tiny VAE). The same errors as :func:`load_dit`, NaN / infinite weights included."""
    return _load(path, "wan_vae", FORMAT_VAE, dtype, device)


def dit_state_dict(model) -> dict:
    """The DiT's own weights in diffusers layout, without any attached motion injector.

    With an ``InjectedPatchEmbedding`` in place of ``patch_embedding`` (``imanim_core.models.injector``) only the
    wrapped Conv3d's weight/bias are kept: the injector is saved in the IM-Animation bundle, not in the Wan file.
    """
    sd = model.state_dict()
    pe = getattr(model, "patch_embedding", None)
    if pe is not None and not isinstance(pe, torch.nn.Conv3d):
        conv = getattr(pe, "conv", None)
        if not isinstance(conv, torch.nn.Conv3d):
            raise IMAnimError("the DiT's patch_embedding is wrapped by something that is not an "
                              "InjectedPatchEmbedding (no .conv Conv3d); detach it before saving")
        sd = {k: v for k, v in sd.items() if not k.startswith("patch_embedding.")}
        sd["patch_embedding.weight"] = conv.weight
        if conv.bias is not None:
            sd["patch_embedding.bias"] = conv.bias
    return sd


def _atomic_save(tensors: dict, path, metadata: dict) -> Path:

    return save_safetensors(tensors, path, metadata)


def _prepare(sd: Mapping, dtype: Optional[torch.dtype]) -> dict:
    out = {}
    for k, v in sd.items():
        v = v.detach()
        if dtype is not None and v.is_floating_point():
            v = v.to(dtype)
        out[k] = v.to("cpu").contiguous()
    return out


def _public_config(model) -> dict:
    return {k: (list(v) if isinstance(v, tuple) else v) for k, v in dict(model.config).items()
            if not str(k).startswith("_")}


def save_dit(model, path, dtype: Optional[torch.dtype] = None) -> Path:
    """Write a ``WanTransformer3DModel`` as an original-layout Wan safetensors file (ComfyUI loads it as is).

    ``dtype`` (e.g. ``torch.bfloat16``) casts floating tensors; None keeps the model's. Metadata: ``format=wan-dit``,
    ``layout=original``, ``config`` (diffusers config JSON). Written to a temp file and renamed.
    """
    cfg = _public_config(model)
    if cfg.get("attention_head_dim", HEAD_DIM) != HEAD_DIM:
        raise InputError(f"Wan DiT to save: head width {cfg.get('attention_head_dim')} is not {HEAD_DIM}; "
                         f"Wan files are read assuming {HEAD_DIM} (ComfyUI sets heads = dim / {HEAD_DIM})")
    tensors = _prepare(dit_diffusers_to_original(dit_state_dict(model)), dtype)
    meta = {"format": FORMAT_DIT, "layout": "original", "config": json.dumps(cfg), "writer": "imanim_core"}
    return _atomic_save(tensors, path, meta)


def save_vae(vae, path, dtype: Optional[torch.dtype] = None) -> Path:
    """Write an ``AutoencoderKLWan`` (Wan 2.1 structure) as an original-layout safetensors file, or a
    :class:`~imanim_core.backbone.taehv.TinyVideoVAE` in its TAEHV layout with ``decoder.1.weight`` always in
    float32 (ComfyUI reads a file of that layout whose ``decoder.1.weight`` is float16 as HunyuanVideo's tiny VAE)."""
    if getattr(vae, "is_tiny_video_vae", False):
        # ComfyUI decides "HunyuanVideo scaling" from the dtype of decoder.1.weight alone (float16 = HunyuanVideo):
        # that tensor always stays float32, the rest may be stored smaller (the embedded file: float16, 22.6 MB)
        tensors = _prepare(vae.state_dict(), dtype)
        tensors["decoder.1.weight"] = tensors["decoder.1.weight"].float()
        meta = {"format": FORMAT_VAE, "layout": "taehv", "config": json.dumps({"architecture": TINY_VAE_CLASS,
                                                                               "latent_channels": 16}),
                "writer": "imanim_core"}
        return _atomic_save(tensors, path, meta)
    cfg = _public_config(vae)
    if cfg.get("is_residual"):
        raise InputError("Wan VAE to save: a Wan 2.2 (residual) VAE has no Wan 2.1 original layout")
    tensors = _prepare(vae_diffusers_to_original(vae.state_dict()), dtype)
    meta = {"format": FORMAT_VAE, "layout": "original", "config": json.dumps(cfg), "writer": "imanim_core"}
    return _atomic_save(tensors, path, meta)


# ---------------------------------------------------------------------------------------------- VAE helpers
def _vae_dtype(vae) -> torch.dtype:
    return next(vae.parameters()).dtype


def vae_encode(vae, video: torch.Tensor) -> torch.Tensor:
    """Video ``[B, 3, 4n+1, H, W]`` in [-1, 1] -> **normalised** latent ``[B, 16, n+1, H/8, W/8]`` (float32).

    Uses the posterior mean (as ComfyUI does), then :func:`latents.normalize`.
    """
    if not isinstance(video, torch.Tensor) or video.ndim != 5 or video.shape[1] != 3:
        shape = tuple(video.shape) if isinstance(video, torch.Tensor) else type(video).__name__
        raise InputError(f"video to encode: expected a tensor [B, 3, T, H, W], got {shape}")
    b, _, t, h, w = video.shape
    if (t - 1) % 4 or t < 1:
        raise InputError(f"video to encode: the Wan VAE needs 4n+1 frames (1, 5, 9, ...), got {t}")
    if h % 8 or w % 8 or h == 0 or w == 0:
        raise InputError(f"video to encode: height and width must be multiples of 8, got {h}x{w}")
    if video.numel() and (float(video.amax()) > 1.5 or float(video.amin()) < -1.5):
        raise InputError(f"video to encode: expected values in [-1, 1], got [{float(video.amin()):.3g}, "
                         f"{float(video.amax()):.3g}] (convert [0, 1] images with x * 2 - 1)")
    if getattr(vae, "is_tiny_video_vae", False):
        z = vae.encode_raw(video)
    else:
        z = vae.encode(video.to(_vae_dtype(vae))).latent_dist.mode()
    return _latents.normalize(z.float())


def vae_decode(vae, latent: torch.Tensor) -> torch.Tensor:
    """**Normalised** latent ``[B, 16, n+1, h, w]`` -> video ``[B, 3, 4n+1, 8h, 8w]`` in [-1, 1] (float32)."""
    if not isinstance(latent, torch.Tensor) or latent.ndim != 5 or latent.shape[1] != _latents.LATENT_CHANNELS:
        shape = tuple(latent.shape) if isinstance(latent, torch.Tensor) else type(latent).__name__
        raise InputError(f"latent to decode: expected a tensor [B, 16, T, h, w], got {shape}")
    z = _latents.denormalize(latent.float()).to(_vae_dtype(vae))
    if getattr(vae, "is_tiny_video_vae", False):
        x = vae.decode_raw(z)
    else:
        x = vae.decode(z, return_dict=False)[0]
    return x.float().clamp(-1.0, 1.0)
