"""`python -m imanim_core inspect PATH [--json]` — say what a weights file is (from its header only).

Recognises an IM-Animation bundle (parts, config, parameters), an IM-Animation motion-tokens file, the authors'
released motion encoder (or a damaged copy of it, with what is wrong), a Wan DiT / Wan VAE in the original key
layout, or says "unknown". An unreadable or missing file is an error (exit code 2).
"""
from __future__ import annotations

import json


def add_arguments(parser):
    parser.add_argument("path", help="a .safetensors file")
    parser.add_argument("--json", action="store_true", help="print one JSON object (for scripts)")


def _human_bytes(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024.0
    return f"{n} B"  # pragma: no cover


def _human_count(n: int) -> str:
    if n >= 1e9:
        return f"{n / 1e9:.2f}B"
    if n >= 1e6:
        return f"{n / 1e6:.1f}M"
    if n >= 1e3:
        return f"{n / 1e3:.1f}K"
    return str(n)


def format_info(info: dict) -> str:
    lines = [f"{info['path']}: {info['description']}",
             f"  size {_human_bytes(info['size_bytes'])}, {info['num_tensors']} tensors, "
             f"{_human_count(info['num_params'])} "
             f"{'values' if info['kind'] == 'im-animation-motion-tokens' else 'parameters'}, dtypes "
             + ", ".join(f"{k} x{v}" for k, v in sorted(info["dtypes"].items()))]
    kind = info["kind"]
    if kind == "im-animation-bundle":
        lines.append(f"  format_version {info.get('format_version')}")
        for part, d in info.get("parts", {}).items():
            lines.append(f"  part {part:<15} {d['tensors']:>5} tensors {_human_count(d['params']):>8} params")
        cfg = info.get("config") or {}
        for part, c in cfg.items():
            if c is not None:
                lines.append(f"  config {part}: " + json.dumps(c, separators=(",", ":")))
    elif kind == "im-animation-motion-tokens":
        lines.append(f"  {info.get('frames')} frames x {info.get('tokens')} tokens, fps {info.get('fps')}")
        if info.get("config"):
            lines.append("  tokenizer config: " + json.dumps(info["config"], separators=(",", ":")))
    elif kind == "released-motion-encoder-damaged":
        lines.append(f"  problems: {info.get('problems')}")
    for k, v in (info.get("metadata") or {}).items():
        v = v if len(v) <= 120 else v[:117] + "..."
        lines.append(f"  metadata {k}: {v}")
    for n in info.get("notes", []):
        lines.append(f"  note: {n}")
    return "\n".join(lines)


def run(args) -> int:
    from ..describe import describe_file

    info = describe_file(args.path)
    if args.json:
        print(json.dumps(info, indent=2))
    else:
        print(format_info(info))
    return 0
