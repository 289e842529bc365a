"""The authors' released motion encoder (``motion_encoder_latest.safetensors``): detection and strict loading.

The layout is described once, by :func:`released_keys` (name -> shape for a :class:`TokenizerConfig`);
``RELEASED_KEYS = released_keys(TokenizerConfig.preset("large"))`` is the released file: 301 tensors, ~303M
parameters, stored in bf16. :class:`~imanim_core.models.tokenizer.MotionTokenizer` uses the same names, so
loading is a strict state-dict load (after our own checks, so a bad file gives a :class:`CheckpointError` that
lists what is wrong, never a torch traceback).

Also home of :func:`read_safetensors_header`, the light reader (no tensor data) used by detection, ``inspect`` and
the bundle loader.
"""
from __future__ import annotations

import json
import os
import struct
from pathlib import Path
from typing import Mapping, Optional

import torch

from ..checks import check_finite_weights
from ..config import TokenizerConfig
from ..errors import CheckpointError
from .tokenizer import MotionTokenizer

# safetensors dtype names -> torch dtypes (float ones are loadable weights)
_ST_DTYPES = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
    "BOOL": torch.bool,
}
_FLOAT_ST = {"F64", "F32", "F16", "BF16"}
_MAX_HEADER = 100 * 1024 * 1024


def released_keys(cfg: Optional[TokenizerConfig] = None) -> dict:
    """Names and shapes of the released layout for ``cfg`` (default: the 'large' preset), in file order."""
    cfg = cfg or TokenizerConfig.preset("large")
    W, K, d, p = cfg.width, cfg.num_latent_tokens, cfg.token_dim, cfg.patch_size
    gh, gw = cfg.grid_hw
    H = int(W * cfg.mlp_ratio)
    keys = {
        "latent_tokens": (K, W),
        "quantize.embedding.weight": (cfg.codebook_size, d),
        "encoder.patch_embed.weight": (W, 3, p, p),
        "encoder.patch_embed.bias": (W,),
        "encoder.class_embedding": (1, W),
        "encoder.positional_embedding": (1 + gh * gw, W),
        "encoder.latent_token_positional_embedding": (K, W),
        "encoder.ln_pre.weight": (W,),
        "encoder.ln_pre.bias": (W,),
    }
    for i in range(cfg.layers):
        b = f"encoder.transformer.{i}."
        keys.update({
            b + "ln_1.weight": (W,), b + "ln_1.bias": (W,),
            b + "attn.in_proj_weight": (3 * W, W), b + "attn.in_proj_bias": (3 * W,),
            b + "attn.out_proj.weight": (W, W), b + "attn.out_proj.bias": (W,),
            b + "ln_2.weight": (W,), b + "ln_2.bias": (W,),
            b + "mlp.c_fc.weight": (H, W), b + "mlp.c_fc.bias": (H,),
            b + "mlp.c_proj.weight": (W, H), b + "mlp.c_proj.bias": (W,),
        })
    keys.update({
        "encoder.ln_post.weight": (W,), "encoder.ln_post.bias": (W,),
        "encoder.conv_out.weight": (d, W, 1, 1), "encoder.conv_out.bias": (d,),
    })
    return keys


RELEASED_KEYS = released_keys(TokenizerConfig.preset("large"))


# ------------------------------------------------------------------------------------------ safetensors header
def read_safetensors_header(path) -> tuple:
    """Read only the header of a safetensors file: ``(metadata: dict[str,str], tensors: {name: (dtype_str, shape)})``.

    Raises :class:`CheckpointError` naming the path when it is missing, a folder, or not a safetensors file.
    """
    p = Path(path)
    if not p.exists():
        raise CheckpointError(f"checkpoint {str(p)!r} does not exist")
    if p.is_dir():
        raise CheckpointError(f"checkpoint {str(p)!r} is a folder; expected a .safetensors file")
    size = p.stat().st_size
    bad = f"{str(p)!r} is not a safetensors file"
    try:
        with open(p, "rb") as f:
            head = f.read(8)
            if len(head) < 8:
                raise CheckpointError(f"{bad} (only {size} bytes)")
            (n,) = struct.unpack("<Q", head)
            if n == 0 or n > _MAX_HEADER or n > size - 8:
                raise CheckpointError(f"{bad} (no valid header: it may be a text file, a pickle .ckpt/.pt/.bin, "
                                      f"or a truncated download)")
            raw = f.read(n)
    except OSError as e:
        raise CheckpointError(f"checkpoint {str(p)!r} could not be read: {e}") from None
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise CheckpointError(f"{bad} (the header is not JSON)") from None
    if not isinstance(header, dict):
        raise CheckpointError(f"{bad} (the header is not a mapping)")
    meta = header.pop("__metadata__", None) or {}
    if not isinstance(meta, dict):
        raise CheckpointError(f"{bad} (__metadata__ is not a mapping)")
    tensors = {}
    end = 0
    for name, info in header.items():
        if not isinstance(info, dict) or "dtype" not in info or "shape" not in info or "data_offsets" not in info:
            raise CheckpointError(f"{bad} (entry {name!r} has no dtype/shape/offsets)")
        try:
            shape = tuple(int(s) for s in info["shape"])
            end = max(end, int(info["data_offsets"][1]))
        except (TypeError, ValueError, IndexError):
            raise CheckpointError(f"{bad} (entry {name!r} is malformed)") from None
        tensors[name] = (str(info["dtype"]), shape)
    if 8 + n + end > size:
        raise CheckpointError(f"checkpoint {str(p)!r} is truncated: the header describes {8 + n + end} bytes, "
                              f"the file has {size} (an interrupted download?)")
    return {str(k): str(v) for k, v in meta.items()}, tensors


def _keys_shapes(keys_or_file) -> dict:
    """Accept a path, a mapping name -> tensor/shape, or an iterable of names -> {name: shape or None}."""
    if isinstance(keys_or_file, (str, os.PathLike)):
        _, tensors = read_safetensors_header(keys_or_file)
        return {k: v[1] for k, v in tensors.items()}
    if isinstance(keys_or_file, Mapping):
        out = {}
        for k, v in keys_or_file.items():
            if isinstance(v, torch.Tensor):
                out[k] = tuple(v.shape)
            elif isinstance(v, (tuple, list)) and len(v) == 2 and isinstance(v[0], str):
                out[k] = tuple(v[1])  # (dtype, shape) as read_safetensors_header gives
            elif isinstance(v, (tuple, list, torch.Size)):
                out[k] = tuple(v)
            else:
                out[k] = None
        return out
    return {k: None for k in keys_or_file}


def _fmt_list(names, n=5) -> str:
    names = list(names)
    head = ", ".join(names[:n])
    return head + (f", ... ({len(names) - n} more)" if len(names) > n else "")


def compare_layout(found: Mapping, expected: Mapping) -> dict:
    """``{"missing": [...], "unexpected": [...], "wrong_shape": [(name, found, expected), ...]}`` (sorted)."""
    missing = [k for k in expected if k not in found]
    unexpected = sorted(k for k in found if k not in expected)
    wrong = [(k, tuple(found[k]), tuple(expected[k])) for k in expected
             if k in found and found[k] is not None and tuple(found[k]) != tuple(expected[k])]
    return {"missing": missing, "unexpected": unexpected, "wrong_shape": wrong}


def layout_problems(report: dict) -> str:
    """Human text for a :func:`compare_layout` report ('' when it matches)."""
    parts = []
    if report["missing"]:
        parts.append(f"{len(report['missing'])} missing key(s): {_fmt_list(report['missing'])}")
    if report["unexpected"]:
        parts.append(f"{len(report['unexpected'])} unexpected key(s): {_fmt_list(report['unexpected'])}")
    if report["wrong_shape"]:
        shown = [f"{k} {list(f)} (expected {list(e)})" for k, f, e in report["wrong_shape"]]
        parts.append(f"{len(shown)} key(s) with the wrong shape: {_fmt_list(shown, 3)}")
    return "; ".join(parts)


def is_released_encoder(keys_or_file, cfg: Optional[TokenizerConfig] = None) -> bool:
    """True when the names (and shapes, where known) are exactly the released layout (for ``cfg``, default large).

    Accepts a path to a safetensors file, a state dict, a mapping name -> shape, or an iterable of names.
    """
    found = _keys_shapes(keys_or_file)
    rep = compare_layout(found, released_keys(cfg))
    return not (rep["missing"] or rep["unexpected"] or rep["wrong_shape"])


def looks_like_released_encoder(keys_or_file, cfg: Optional[TokenizerConfig] = None) -> bool:
    """Looser test used to route a file to the strict loader (so a damaged released file gets a precise error):
    it has the encoder's tell-tale keys, or at least half of the released names."""
    found = _keys_shapes(keys_or_file)
    exp = released_keys(cfg)
    if {"latent_tokens", "encoder.patch_embed.weight", "encoder.conv_out.weight"} <= set(found):
        return True
    return len(set(found) & set(exp)) >= len(exp) // 2


def load_released_encoder(path, dtype: torch.dtype = torch.float32, device="cpu",
                          config: Optional[TokenizerConfig] = None):
    """Strictly load a released motion-encoder file into ``MotionTokenizer(config)`` (default: the 'large' preset).

    Every key must be present with the right shape and no other key may appear; otherwise a
    :class:`CheckpointError` lists the missing / unexpected / wrong-shape keys (first few, with counts).
    Tensors of any float dtype (bf16, fp16, fp32) are converted to ``dtype`` on ``device``. Returns the model in
    eval mode.
    """
    from safetensors import safe_open

    cfg = config or TokenizerConfig.preset("large")
    meta, tensors = read_safetensors_header(path)
    expected = released_keys(cfg)
    rep = compare_layout({k: v[1] for k, v in tensors.items()}, expected)
    problems = layout_problems(rep)
    if problems:
        raise CheckpointError(f"{str(path)!r} does not have the released motion-encoder layout "
                              f"({len(expected)} tensors expected, {len(tensors)} found): {problems}")
    bad_dtypes = sorted({f"{k}: {v[0]}" for k, v in tensors.items() if v[0] not in _FLOAT_ST})
    if bad_dtypes:
        raise CheckpointError(f"{str(path)!r}: expected float tensors (bf16/fp16/fp32), found "
                              f"{_fmt_list(bad_dtypes)}")
    with torch.device("meta"):
        model = MotionTokenizer(cfg)
    sd = {}
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            for k in expected:
                t = f.get_tensor(k)
                check_finite_weights(t, k, path, "released motion encoder")
                sd[k] = t.to(device=device, dtype=dtype)
    except CheckpointError:
        raise
    except Exception as e:  # noqa: BLE001 - corrupt data: report with the path, not a traceback
        raise CheckpointError(f"{str(path)!r} could not be read as safetensors: {e}") from None
    try:
        model.load_state_dict(sd, strict=True, assign=True)
    except RuntimeError as e:  # should not happen after the checks above
        raise CheckpointError(f"{str(path)!r}: {e}") from None
    return model.eval()


__all__ = ["RELEASED_KEYS", "released_keys", "read_safetensors_header", "compare_layout", "layout_problems",
           "is_released_encoder", "looks_like_released_encoder", "load_released_encoder"]
