"""The explicit-control baseline of the benchmark: the driver's skeleton instead of implicit motion tokens.

What it is. Skeleton-driven animation (DWPose/ViTPose + a pose guider, as in Animate Anyone, UniAnimate,
Wan-Animate) draws the *driver's* keypoints — at the driver's proportions — and conditions the video model on
that drawing. Here: the driver's 20 keypoints are drawn with ``data.skeleton.draw_skeleton`` on the video grid
(:func:`skeleton_frames`); a small convolutional **skeleton encoder** (:class:`SkeletonEncoder`, stride 16 =
VAE x8 * DiT patch x2) maps each drawing to tokens ``[B, T, H/16, W/16, Dr]`` — the same shape as the
retargeter's output — which go through the **same** ``MotionInjector`` into the same Wan DiT, with the identity
latent appended in time, sampled by the same pipeline (:func:`imanim_core.pipeline.run` with
``motion_tokens=``). So the only difference to IM-Animation is the motion representation: the skeleton
encoder replaces tokenizer + retargeter.

Training (same budget as the model's stage 3). ``train.skeleton.SkeletonStage`` is a training stage for the
shared loop (``train.loop.run_training``) that follows ``train stage3``'s tiny recipe: the stage-3 preset and
options (steps, batch, lr, clip length, size, data: puppet world with the same cross-identity share, fresh tiny
DiT trained in full + injector), the same frozen VAE and the same flow-matching loss with a zero text context;
the skeleton encoder trains from scratch at the base learning rate. Command (``commands/baseline.py``; also as
``python -m imanim_core.baselines train|install ...``)::

    python -m imanim_core baseline train --vae runs/vae --out runs/skeleton [any `train stage3` option]
    python -m imanim_core baseline install runs/skeleton/export     # -> imanim_core/weights/baselines/skeleton

Files (``DIR/export/``, and the installed folder): ``skeleton_baseline.safetensors`` (``skeleton_encoder.*`` and
``injector.*``, metadata ``format=im-animation-skeleton-baseline``, ``config`` JSON), ``dit.safetensors``
(original Wan layout), ``vae.safetensors``, ``manifest.json``. :func:`load_skeleton_baseline` reads a folder;
``python -m imanim_core eval`` uses it when present and reports ``not trained`` otherwise.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch
import torch.nn as nn
from safetensors import safe_open

from . import pipeline as P
from .backbone.wan import load_dit, load_vae, save_dit
from .config import InjectorConfig, _Base
from .data.skeleton import draw_skeleton
from .errors import CheckpointError, IMAnimError, InputError
from .io.atomic import copy_file, save_safetensors
from .io.video import to_float
from .models.injector import MotionInjector
from .weights import SKELETON_BASELINE_DIR, VAE_FILE

BASELINE_FORMAT = "im-animation-skeleton-baseline"
BASELINE_FORMAT_VERSION = 1
BASELINE_FILE = "skeleton_baseline.safetensors"


@dataclass(frozen=True)
class SkeletonEncoderConfig(_Base):
    """Skeleton drawing [B, T, H, W, 3] -> tokens [B, T, H/16, W/16, out_dim] (4 stride-2 convolutions)."""

    width: int = 64
    out_dim: int = 64  # Dr (= the injector's in_dim)
    stride: int = 16  # fixed: one token per 16x16 px (Wan VAE x8, DiT patch x2)


class SkeletonEncoder(nn.Module):
    """A pose guider: conv(3->w/4, s2) -> conv(->w/2, s2) -> conv(->w, s2) -> conv(->w, s2) -> 1x1 conv(->Dr),
    SiLU between; frames are encoded independently."""

    def __init__(self, cfg: SkeletonEncoderConfig = SkeletonEncoderConfig()):
        super().__init__()
        if cfg.stride != 16:
            raise InputError(f"SkeletonEncoderConfig.stride: only 16 is supported, got {cfg.stride}")
        self.cfg = cfg
        w = int(cfg.width)
        chans = [3, max(8, w // 4), max(8, w // 2), w, w]
        layers = []
        for a, b in zip(chans[:-1], chans[1:], strict=True):
            layers += [nn.Conv2d(a, b, 4, stride=2, padding=1), nn.SiLU()]
        self.net = nn.Sequential(*layers)
        self.proj = nn.Conv2d(w, cfg.out_dim, 1)

    def forward(self, skeleton: torch.Tensor) -> torch.Tensor:
        if skeleton.ndim != 5 or skeleton.shape[-1] != 3:
            raise InputError(f"skeleton frames: expected [B, T, H, W, 3], got {tuple(skeleton.shape)}")
        b, t, h, w, _ = skeleton.shape
        if h % 16 or w % 16:
            raise InputError(f"skeleton frames: height and width must be multiples of 16, got {h}x{w}")
        x = skeleton.reshape(b * t, h, w, 3).permute(0, 3, 1, 2).to(self.proj.weight.dtype)
        y = self.proj(self.net(x))  # [BT, Dr, H/16, W/16]
        return y.permute(0, 2, 3, 1).reshape(b, t, h // 16, w // 16, self.cfg.out_dim)


def skeleton_frames(keypoints, size: Sequence[int], source_hw: Optional[Sequence[int]] = None,
                    visibility=None) -> torch.Tensor:
    """The driver's keypoints ``[T, 20, 2]`` (pixels of a ``source_hw`` frame; default: ``size``) drawn as coloured
    sticks on black at the grid ``size`` (H, W) -> float ``[T, H, W, 3]`` in [0, 1]. A source frame of another
    aspect is letterboxed (scaled to fit inside, centred), like the identity image."""
    kp = np.asarray(keypoints.detach().cpu() if torch.is_tensor(keypoints) else keypoints, dtype=np.float64)
    h, w = int(size[0]), int(size[1])
    if source_hw is not None and tuple(int(v) for v in source_hw) != (h, w):
        sh, sw = int(source_hw[0]), int(source_hw[1])
        s = min(w / sw, h / sh)
        nh, nw = max(1, round(sh * s)), max(1, round(sw * s))
        top, left = (h - nh) // 2, (w - nw) // 2
        kp = np.stack([(kp[..., 0] + 0.5) * nw / sw - 0.5 + left, (kp[..., 1] + 0.5) * nh / sh - 0.5 + top], -1)
    img = draw_skeleton(kp, visibility, size=(h, w))
    if img.ndim == 3:
        img = img[None]
    return to_float(img, "skeleton")


# ============================================================================================== files
def save_skeleton_baseline(path, encoder: SkeletonEncoder, injector, metadata: Optional[dict] = None) -> Path:
    tensors = {}
    for prefix, mod in (("skeleton_encoder", encoder), ("injector", injector)):
        for k, v in mod.state_dict().items():
            tensors[f"{prefix}.{k}"] = v.detach().float().cpu().contiguous()
    meta = {str(k): str(v) for k, v in (metadata or {}).items()}
    meta.update(format=BASELINE_FORMAT, format_version=str(BASELINE_FORMAT_VERSION),
                config=json.dumps({"skeleton_encoder": encoder.cfg.to_dict(), "injector": injector.cfg.to_dict()}))
    return save_safetensors(tensors, path, meta)


def load_skeleton_parts(path, device="cpu") -> tuple:
    """(SkeletonEncoder, MotionInjector, metadata) from a ``skeleton_baseline.safetensors`` file."""
    p = Path(path)
    if not p.is_file():
        raise CheckpointError(f"skeleton baseline file {str(p)!r} does not exist")
    try:
        with safe_open(str(p), framework="pt") as f:
            meta = dict(f.metadata() or {})
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as e:  # noqa: BLE001
        raise CheckpointError(f"skeleton baseline file {str(p)!r} could not be read: {e}") from None
    if meta.get("format") != BASELINE_FORMAT:
        raise CheckpointError(f"{str(p)!r} is not a skeleton-baseline file (format={meta.get('format')!r})")
    try:
        cfg = json.loads(meta["config"])
        enc = SkeletonEncoder(SkeletonEncoderConfig.from_dict(cfg["skeleton_encoder"]))
        inj = MotionInjector(InjectorConfig.from_dict(cfg["injector"]))
        for prefix, mod in (("skeleton_encoder", enc), ("injector", inj)):
            sd = {k[len(prefix) + 1:]: v for k, v in tensors.items() if k.startswith(prefix + ".")}
            mod.load_state_dict(sd, strict=True)
    except (KeyError, ValueError, RuntimeError, IMAnimError) as e:
        raise CheckpointError(f"skeleton baseline file {str(p)!r} does not match its config: {e}") from None
    return enc.to(device).eval(), inj.to(device).eval(), meta


@dataclass
class SkeletonBaseline:
    encoder: SkeletonEncoder
    injector: nn.Module
    dit: nn.Module
    vae: nn.Module
    folder: Path

    @torch.no_grad()
    def tokens(self, keypoints, size, source_hw=None) -> torch.Tensor:
        sk = skeleton_frames(keypoints, size, source_hw)
        p = self.encoder.proj.weight
        return self.encoder(sk[None].to(p.device, p.dtype)).float().cpu()

    def animate(self, identity, keypoints, size, source_hw=None, **kw):
        """Like :func:`imanim_core.pipeline.run`, driven by the driver's keypoints ``[T, 20, 2]``."""
        size = P.check_size(size)
        return P.run(identity, None, None, self.dit, self.vae, size=size,
                     motion_tokens=self.tokens(keypoints, size, source_hw), injector=self.injector, **kw)


def baseline_files(folder) -> dict:
    """The baseline's files. Its VAE is the one the IM-Animation model uses (both are trained on the same VAE run):
    ``folder/vae.safetensors`` when present (a training export), else the embedded VAE (the installed baseline)."""
    d = Path(folder)
    vae = d / "vae.safetensors"
    return {"baseline": d / BASELINE_FILE, "dit": d / "dit.safetensors", "vae": vae if vae.is_file() else VAE_FILE}


def skeleton_baseline_status(folder) -> str:
    missing = [str(p) for p in baseline_files(folder).values() if not p.is_file()]
    if missing:
        return (f"not trained (no weights: missing {', '.join(missing)}; train with `python -m imanim_core baseline "
                f"train --vae runs/vae --out runs/skeleton` then `python -m imanim_core baseline install "
                f"runs/skeleton/export`)")
    return "ok"


def load_skeleton_baseline(folder, device="cpu") -> SkeletonBaseline:
    files = baseline_files(folder)
    status = skeleton_baseline_status(folder)
    if status != "ok":
        raise CheckpointError(f"skeleton baseline: {status}")
    enc, inj, _ = load_skeleton_parts(files["baseline"], device)
    return SkeletonBaseline(enc, inj, load_dit(files["dit"], device=device).eval(),
                            load_vae(files["vae"], device=device).eval(), Path(folder))


def install(export_dir, dest=None) -> Path:
    """Copy a finished baseline run's export folder to ``dest`` (default ``weights/baselines/skeleton``)."""
    src = Path(export_dir)
    if skeleton_baseline_status(src) != "ok":
        raise CheckpointError(f"install: {str(src)!r} is not a skeleton-baseline export folder "
                              f"({skeleton_baseline_status(src)})")
    dst = Path(dest) if dest else SKELETON_BASELINE_DIR
    files = baseline_files(src)
    copy_file(files["baseline"], dst / files["baseline"].name)
    # the DiT ships in fp16 like the embedded model; the VAE is shared with it (see baseline_files), so it is
    # copied only when installing somewhere else than the embedded weights folder
    save_dit(load_dit(files["dit"]), dst / "dit.safetensors", dtype=torch.float16)
    if dest:
        copy_file(files["vae"], dst / "vae.safetensors")
    return dst


__all__ = ["SkeletonEncoderConfig", "SkeletonEncoder", "SkeletonBaseline", "skeleton_frames", "save_skeleton_baseline",
           "load_skeleton_parts", "load_skeleton_baseline", "skeleton_baseline_status", "baseline_files", "install",
           "BASELINE_FILE", "BASELINE_FORMAT"]


if __name__ == "__main__":  # the older spelling of `python -m imanim_core baseline ...`
    import sys

    from .cli import main

    raise SystemExit(main(["baseline", *sys.argv[1:]]))
