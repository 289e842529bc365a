"""`python -m imanim_core encode-motion --checkpoint CKPT --driving VIDEO --out TOKENS.safetensors`

Streams the driving video (file or image folder) in chunks, encodes every frame into K motion tokens with the tokenizer of
CKPT (an IM-Animation bundle or the released motion encoder), and writes ``indices [T,K]`` and ``codes [T,K,d]``
with :func:`imanim_core.models.bundle.save_motion_tokens` (what the ComfyUI Load Motion Tokens node reads).

Stop with Ctrl-C at any time: the frames done so far are kept in ``TOKENS.safetensors.partial`` and the same
command resumes from there (``--fresh`` starts over).
"""
from __future__ import annotations

import os
import sys
import time
from pathlib import Path

_DTYPES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}


def add_arguments(parser):
    parser.add_argument("--checkpoint", required=True, help="IM-Animation bundle or released motion encoder")
    parser.add_argument("--driving", required=True, help="driving video (mp4/webm/gif/mov/avi/mkv) or image folder")
    parser.add_argument("--out", required=True, help="output motion-tokens .safetensors file")
    parser.add_argument("--batch-size", type=int, default=8, help="frames per forward pass (default 8)")
    parser.add_argument("--dtype", choices=["auto", "fp32", "bf16", "fp16"], default="auto",
                        help="compute dtype; auto = bf16 on CUDA, and on CPU only where measured faster here")
    parser.add_argument("--device", default="auto", help="cpu, cuda, cuda:1, ... (auto: cuda when available)")
    parser.add_argument("--max-frames", type=int, default=None, help="encode only the first N frames")
    parser.add_argument("--fresh", action="store_true", help="ignore a partial result from an interrupted run")


def _partial_path(out: Path) -> Path:
    return out.with_name(out.name + ".partial")


def _fingerprint(args, dtype_name: str) -> dict:
    def stat(p):
        p = Path(p)
        if p.is_dir():
            return f"dir:{len(list(p.iterdir()))}:{int(p.stat().st_mtime)}"
        s = p.stat()
        return f"{s.st_size}:{int(s.st_mtime)}"

    return {"resume_driving": f"{os.path.abspath(args.driving)}|{stat(args.driving)}",
            "resume_checkpoint": f"{os.path.abspath(args.checkpoint)}|{stat(args.checkpoint)}",
            "resume_dtype": dtype_name, "resume_max_frames": str(args.max_frames)}


def run(args) -> int:
    import torch
    from tqdm import tqdm

    from ..checks import check_min_side
    from ..errors import CheckpointError, InputError
    from ..io.video import iter_video, video_info
    from ..models.bundle import load_bundle, load_motion_tokens, save_motion_tokens
    from ..models.released import read_safetensors_header
    from ..models.tokenizer import auto_dtype

    out = Path(args.out)
    if out.is_dir():
        raise InputError(f"--out {str(out)!r} is a folder; expected a file name such as tokens.safetensors")
    if args.batch_size < 1:
        raise InputError(f"--batch-size must be >= 1, got {args.batch_size}")
    _, header = read_safetensors_header(args.checkpoint)  # fail fast on a bad checkpoint, before the video
    if args.device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    else:
        device = args.device
    try:
        torch.empty(0, device=device)
    except Exception as e:  # noqa: BLE001
        raise InputError(f"--device {device!r} is not usable here: {e}") from None
    if args.dtype == "auto":
        lt = header.get("latent_tokens") or header.get("tokenizer.latent_tokens")
        width = lt[1][1] if lt and len(lt[1]) == 2 else 1024
        dtype, reason = auto_dtype(device, width=width)
        print(f"dtype auto -> {reason}", file=sys.stderr)
    else:
        dtype = getattr(torch, _DTYPES[args.dtype])
    dtype_name = str(dtype).replace("torch.", "")

    info = video_info(args.driving)  # fails before the checkpoint is loaded for a missing/unreadable video
    if info["width"] and info["height"]:
        check_min_side(info["height"], info["width"], f"driving video {str(args.driving)!r}")
    fps = info["fps"]
    bundle = load_bundle(args.checkpoint, device=device, dtype=dtype)
    tok = bundle.tokenizer
    if tok is None:
        raise CheckpointError(f"{args.checkpoint!r} has no tokenizer part (parts: {bundle.config.parts}); "
                              f"use a bundle with a tokenizer or the released motion encoder")
    total = info["frames"]
    if total is not None and args.max_frames is not None:
        total = min(total, args.max_frames)

    # resume from an interrupted run of the same command
    fp = _fingerprint(args, dtype_name)
    part_path = _partial_path(out)
    idx_parts, code_parts = [], []
    if part_path.exists() and not args.fresh:
        try:
            prev = load_motion_tokens(part_path)
            if all(prev["metadata"].get(k) == v for k, v in fp.items()) and prev["config"] == tok.cfg:
                idx_parts, code_parts = [prev["indices"]], [prev["codes"]]
                print(f"resuming: {prev['indices'].shape[0]} of {total or '?'} frames already encoded in "
                      f"{part_path}", file=sys.stderr)
            else:
                print(f"ignoring {part_path}: it is from a different video/checkpoint/dtype", file=sys.stderr)
        except CheckpointError as e:
            print(f"ignoring unreadable partial result {part_path}: {e}", file=sys.stderr)
    start = idx_parts[0].shape[0] if idx_parts else 0

    print(f"encoding {total or 'all'} frames ({info['width']}x{info['height']}, {fps:g} fps) with the "
          f"{'released' if bundle.source == 'released' else 'bundle'} tokenizer on {device} in {dtype_name}",
          file=sys.stderr)
    bar = tqdm(total=total, initial=start, unit="frame", desc="encode-motion", file=sys.stderr)
    seen = 0  # frames read from the video so far
    encoded = 0  # frames encoded in this run
    t0 = time.perf_counter()
    try:
        # decode and encode chunk by chunk: a long video never sits in memory, and an interruption keeps every
        # finished chunk
        for chunk in iter_video(args.driving, chunk=max(args.batch_size, 1) * 4, max_frames=args.max_frames):
            n = chunk.shape[0]
            skip = min(max(start - seen, 0), n)
            seen += n
            if skip == n:
                continue
            base = bar.n
            i, c = tok.encode_frames(chunk[skip:], batch_size=args.batch_size,
                                     progress=lambda d, _t, base=base: bar.update(base + d - bar.n))
            idx_parts.append(i)
            code_parts.append(c)
            encoded += i.shape[0]
    except KeyboardInterrupt:
        bar.close()
        if idx_parts:
            n = sum(x.shape[0] for x in idx_parts)
            save_motion_tokens(part_path, {"indices": torch.cat(idx_parts), "codes": torch.cat(code_parts),
                                           "config": tok.cfg, "fps": fps}, metadata=fp)
            print(f"interrupted: {n} of {total or '?'} frames kept in {part_path}; run the same command to resume",
                  file=sys.stderr)
        raise
    bar.close()
    if seen < start:
        raise InputError(f"{args.driving!r} has {seen} frames but the partial result {part_path} has {start}; "
                         f"run again with --fresh")
    dt = time.perf_counter() - t0
    indices = torch.cat(idx_parts)
    codes = torch.cat(code_parts)
    meta = {"source": os.path.basename(str(args.driving)), "checkpoint": os.path.basename(str(args.checkpoint)),
            "dtype": dtype_name}
    save_motion_tokens(out, {"indices": indices, "codes": codes, "config": tok.cfg, "fps": fps}, metadata=meta)
    if part_path.exists():
        part_path.unlink()
    rate = encoded / dt if dt > 0 and encoded else float("nan")
    print(f"wrote {out}: indices {list(indices.shape)}, codes {list(codes.shape)} ({rate:.2f} frames/s)")
    return 0
