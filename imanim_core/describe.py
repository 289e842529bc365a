"""What a weights file is, from its safetensors header only (``python -m imanim_core inspect``): an IM-Animation
bundle or motion-tokens file (:mod:`imanim_core.models.bundle`), the released motion encoder
(:mod:`imanim_core.models.released`), a Wan DiT / VAE (:mod:`imanim_core.backbone.convert`'s key table).

It sits above ``models`` and ``backbone`` so that neither imports the other for it.
"""
from __future__ import annotations

import json
from pathlib import Path

from .backbone.convert import detect_wan_kind
from .config import BundleConfig
from .errors import CheckpointError
from .models.bundle import (_RESERVED_META, BUNDLE_FORMAT, BUNDLE_FORMAT_VERSION, TOKENS_FORMAT,
                            _format_version)
from .models.released import (compare_layout, is_released_encoder, layout_problems, looks_like_released_encoder,
                              read_safetensors_header, released_keys)

__all__ = ["describe_file"]

_KIND_TEXT = {
    "im-animation-bundle": "IM-Animation bundle",
    "im-animation-motion-tokens": "IM-Animation motion tokens",
    "released-motion-encoder": "released IM-Animation motion encoder (TiTok-style, loads as the 'large' tokenizer)",
    "released-motion-encoder-damaged": "looks like the released motion encoder, but the layout does not match",
    "wan_dit": "Wan DiT (original key layout)",
    "wan_vae": "Wan VAE (original key layout)",
    "unknown": "unknown safetensors file",
}


def describe_file(path) -> dict:
    """What a weights file is, from its header only (no tensor data is read).

    Returns a JSON-able dict: ``path``, ``size_bytes``, ``kind`` (``im-animation-bundle``,
    ``im-animation-motion-tokens``, ``released-motion-encoder``, ``released-motion-encoder-damaged``, ``wan_dit``,
    ``wan_vae`` or ``unknown``), ``description``, ``num_tensors``, ``num_params``, ``dtypes`` (count per dtype),
    ``metadata`` (free entries), and per kind: ``format_version``, ``config``, ``parts`` ({part: {tensors,
    params}}) for bundles; ``frames``/``tokens``/``fps`` for motion tokens; ``problems`` for a damaged released file;
    ``notes``. Raises :class:`CheckpointError` for a missing or unreadable file.
    """
    p = Path(path)
    meta, tensors = read_safetensors_header(p)
    nparams = 0
    dtypes: dict = {}
    for dt, shape in tensors.values():
        n = 1
        for s in shape:
            n *= s
        nparams += n
        dtypes[dt] = dtypes.get(dt, 0) + 1
    info = {"path": str(p), "size_bytes": p.stat().st_size, "kind": "unknown", "num_tensors": len(tensors),
            "num_params": nparams, "dtypes": dtypes, "notes": []}
    fmt = meta.get("format")
    free_meta = {k: v for k, v in meta.items()
                 if k not in _RESERVED_META and not (fmt == TOKENS_FORMAT and k == "fps")}
    if fmt == BUNDLE_FORMAT:
        info["kind"] = "im-animation-bundle"
        info["format_version"] = meta.get("format_version")
        try:
            _format_version(meta, p, "bundle", BUNDLE_FORMAT_VERSION)
        except CheckpointError as e:
            info["notes"].append(str(e))
        try:
            cfg = json.loads(meta.get("config", ""))
            info["config"] = cfg
            names = [k for k in BundleConfig.PARTS if isinstance(cfg, dict) and cfg.get(k) is not None]
        except json.JSONDecodeError:
            info["notes"].append("the config metadata is not valid JSON")
            names = []
        parts = {}
        for k, (_dt, shape) in tensors.items():
            part = k.partition(".")[0]
            d = parts.setdefault(part, {"tensors": 0, "params": 0})
            n = 1
            for s in shape:
                n *= s
            d["tensors"] += 1
            d["params"] += n
        order = list(BundleConfig.PARTS)
        info["parts"] = dict(sorted(parts.items(), key=lambda kv: order.index(kv[0]) if kv[0] in order else 99))
        missing = [n for n in names if n not in parts]
        if missing:
            info["notes"].append(f"config lists part(s) with no tensors: {missing}")
    elif fmt == TOKENS_FORMAT:
        info["kind"] = "im-animation-motion-tokens"
        info["format_version"] = meta.get("format_version")
        if "indices" in tensors:
            shape = tensors["indices"][1]
            info["frames"] = shape[0] if shape else 0
            info["tokens"] = shape[1] if len(shape) > 1 else None
        info["fps"] = float(meta["fps"]) if meta.get("fps") else None
        try:
            info["config"] = json.loads(meta.get("config", ""))
        except json.JSONDecodeError:
            info["notes"].append("the config metadata is not valid JSON")
    else:
        shapes = {k: v[1] for k, v in tensors.items()}
        if is_released_encoder(shapes):
            info["kind"] = "released-motion-encoder"
        elif looks_like_released_encoder(shapes):
            info["kind"] = "released-motion-encoder-damaged"
            info["problems"] = layout_problems(compare_layout(shapes, released_keys()))
        else:
            kind = detect_wan_kind(list(tensors.keys()))
            if kind in ("wan_dit", "wan_vae"):
                info["kind"] = kind
    info["description"] = _KIND_TEXT[info["kind"]]
    info["metadata"] = free_meta
    return info
