"""Images on the model grid, shared by both hosts (the standalone pipeline and the ComfyUI nodes).

- :data:`GRID_PX` — the model grid: Wan 2.1's VAE downsamples x8, then the DiT takes 2x2 patches, so a video's
  height and width are multiples of 16 px (the only definition in the project).
- :func:`to_float_image` / :func:`identity_image` — any image (grey / RGB / RGBA, uint8 / uint16 / float, numpy
  or torch) -> float RGB ``[B, H, W, 3]`` in [0, 1] (``io.video.to_rgb`` then ``io.video.to_float``), refused
  when not finite or under :data:`~imanim_core.checks.MIN_IMAGE_SIDE` px.
- :func:`fit_image` — the one image fitter (``'pad'`` / ``'crop'`` / ``'stretch'``, :data:`FIT_MODES`), with the
  :class:`Letterbox` that crops the output back to the identity's aspect.
- :func:`parse_size` / :func:`check_size` — ``'HxW'`` sizes; :func:`default_size` — the grid when no size is given
  (from the bundle's metadata, else the DiT's width); :func:`output_size` — the Retarget node's width/height
  inputs (0 = default / from the aspect) with the same rule.
- :func:`to_uint8` — float frames -> uint8 numpy (round half up).
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F

from .checks import MIN_IMAGE_SIDE, check_finite, check_min_side
from .defaults import FIT_MODES, OUTPUT_MODES, TINY_DIT_WIDTH
from .errors import InputError
from .io.video import to_float, to_rgb

GRID_PX = 16  # Wan 2.1: VAE x8, then 2x2 DiT patches -> one DiT token per 16x16 pixels
TINY_SIZE = (128, 128)  # the embedded tiny model's training size (train stage3 tiny preset)
REAL_AREA = 480 * 832  # Wan 2.1 480p area, used as the default for real-size DiTs

__all__ = ["GRID_PX", "TINY_SIZE", "REAL_AREA", "FIT_MODES", "OUTPUT_MODES", "Letterbox", "to_float_image",
           "identity_image", "fit_image", "prepare_identity", "parse_size", "check_size", "default_size",
           "output_size", "to_uint8"]


@dataclass(frozen=True)
class Letterbox:
    """Where the identity image sits in the model grid: the grid is ``height x width``; the image content fills
    rows ``top:top+content_h`` and columns ``left:left+content_w`` (``'pad'``; the whole grid for ``'crop'`` and
    ``'stretch'``); ``source_hw`` is the identity image's own size."""

    height: int
    width: int
    top: int
    left: int
    content_h: int
    content_w: int
    source_hw: tuple
    mode: str = "pad"

    def restore(self, frames: torch.Tensor, output: str = "crop") -> torch.Tensor:
        """Frames on the grid ``[T, H, W, 3]`` (float) -> ``'grid'`` (as is), ``'crop'`` (the identity's aspect at
        the grid's scale) or ``'identity'`` (cropped, then resized to the identity image's size)."""
        if output not in OUTPUT_MODES:
            raise InputError(f"output: expected one of {OUTPUT_MODES}, got {output!r}")
        if output == "grid":
            return frames
        out = frames[:, self.top:self.top + self.content_h, self.left:self.left + self.content_w]
        if output == "identity" and tuple(out.shape[1:3]) != tuple(self.source_hw):
            x = out.movedim(-1, 1).float()
            x = F.interpolate(x, size=tuple(self.source_hw), mode="bilinear", align_corners=False, antialias=True)
            out = x.movedim(1, -1).clamp(0, 1)
        return out.contiguous()


def to_float_image(image, where: str = "identity") -> torch.Tensor:
    """Any image ``[H, W]`` / ``[H, W, 1|2|3|4]`` (or a batch with a leading dim), uint8/uint16/float numpy or
    torch -> float32 RGB ``[B, H, W, 3]`` in [0, 1] (grey repeated, alpha composited over black)."""
    if isinstance(image, np.ndarray):
        a = image
    elif torch.is_tensor(image):
        a = image.detach().cpu()
    else:
        raise InputError(f"{where}: expected an image array/tensor [H, W, C], got {type(image).__name__}")
    if a.ndim == 4 and a.shape[-1] not in (1, 2, 3, 4):
        raise InputError(f"{where}: expected [H, W, C] with C in (1, 3, 4), got shape {tuple(a.shape)}")
    if a.ndim not in (2, 3, 4):
        raise InputError(f"{where}: expected an image [H, W] or [H, W, C], got shape {tuple(a.shape)}")
    if a.ndim == 3 and a.shape[-1] not in (1, 2, 3, 4):
        a = a[..., None]  # [H, W] grey with an odd width, never a [B, H, W] grey stack here
    t = to_float(to_rgb(a, where=where), where)
    if t.ndim == 3:
        t = t[None]
    if t.shape[1] < 1 or t.shape[2] < 1:
        raise InputError(f"{where}: the image is empty (shape {tuple(a.shape)})")
    check_finite(t, where, "pixel values")
    return t.clamp(0.0, 1.0).contiguous()


def identity_image(identity, where: str = "identity") -> torch.Tensor:
    """The identity as float RGB ``[1, H, W, 3]`` (:func:`to_float_image`), at least
    :data:`~imanim_core.checks.MIN_IMAGE_SIDE` px a side (the node's minimum too)."""
    img = to_float_image(identity, where)[:1]
    check_min_side(img.shape[1], img.shape[2], where, MIN_IMAGE_SIDE)
    return img


def fit_image(image: torch.Tensor, height: int, width: int, mode: str = "pad") -> tuple:
    """``[B, H, W, 3]`` float -> (``[B, height, width, 3]``, :class:`Letterbox`).

    The one implementation, used by ``animate`` and by the Retarget to Identity node: ``'pad'`` scales to fit inside
    (antialiased bilinear), centres, and fills the rest by repeating the edge pixels; ``'crop'`` scales to
    cover and centre-crops; ``'stretch'`` resizes to the grid."""
    if mode not in FIT_MODES:
        raise InputError(f"fit: expected one of {FIT_MODES}, got {mode!r}")
    b, h, w, _ = image.shape
    src = (int(h), int(w))
    full = Letterbox(height, width, 0, 0, height, width, src, mode)
    if (h, w) == (height, width):
        return image, full
    x = image.movedim(-1, 1)
    if mode == "stretch":
        x = F.interpolate(x, size=(height, width), mode="bilinear", align_corners=False, antialias=True)
        box = full
    else:
        s = min(width / w, height / h) if mode == "pad" else max(width / w, height / h)
        nh, nw = max(1, round(h * s)), max(1, round(w * s))
        if (nh, nw) != (h, w):
            x = F.interpolate(x, size=(nh, nw), mode="bilinear", align_corners=False, antialias=True)
        if mode == "pad":
            top, left = (height - nh) // 2, (width - nw) // 2
            pads = (left, width - nw - left, top, height - nh - top)
            if any(pads):
                x = F.pad(x, pads, mode="replicate")
            box = Letterbox(height, width, top, left, nh, nw, src, mode)
        else:
            top, left = (nh - height) // 2, (nw - width) // 2
            x = x[:, :, top:top + height, left:left + width]
            box = full
    return x.movedim(1, -1).clamp(0, 1).contiguous(), box


def prepare_identity(identity, size: tuple, fit: str = "pad") -> tuple:
    """Identity image -> (float ``[1, H, W, 3]`` on the model grid, :class:`Letterbox`)."""
    img = identity_image(identity)
    h, w = check_size(size)
    return fit_image(img, h, w, fit)


# ================================================================================================== sizes
def parse_size(text) -> Optional[tuple]:
    """``'HxW'`` (e.g. ``'128x96'``) or ``'N'`` (square) -> (H, W) multiples of 16; None/'' -> None."""
    if text is None or (isinstance(text, str) and not text.strip()):
        return None
    if isinstance(text, (tuple, list)):
        hw = tuple(int(v) for v in text)
    else:
        parts = str(text).lower().replace("*", "x").split("x")
        try:
            hw = tuple(int(p) for p in parts)
        except ValueError:
            raise InputError(f"size: expected HxW in pixels (e.g. 128x128), got {text!r}") from None
        if len(hw) == 1:
            hw = (hw[0], hw[0])
    if len(hw) != 2:
        raise InputError(f"size: expected HxW in pixels (e.g. 128x128), got {text!r}")
    check_size(hw)
    return hw


def _off_grid(sides: dict):
    """The name of the first side (``{name: px}``) that is not a positive multiple of :data:`GRID_PX`, else None."""
    return next((n for n, v in sides.items() if v < GRID_PX or v % GRID_PX), None)


def check_size(hw) -> tuple:
    h, w = int(hw[0]), int(hw[1])
    n = _off_grid({"height": h, "width": w})
    if n:
        raise InputError(f"size: the video {n} must be a positive multiple of {GRID_PX} px (Wan: VAE x8 then "
                         f"2x2 patches), got {h}x{w} (HxW)")
    return h, w


def _round16(v: float) -> int:
    return max(GRID_PX, int(round(v / GRID_PX)) * GRID_PX)


def default_size(bundle=None, dit_width: Optional[int] = None, identity_hw=None) -> tuple:
    """The model grid (H, W) when no size is given: the bundle's ``video_size`` metadata (``'HxW'`` or
    ``[H, W]``) when present; else 128x128 for a tiny DiT (``dit_width`` <= 512 or unknown: the embedded model's
    training size); else a 480p-area grid (480x832 = 399,360 px) with the identity's aspect."""
    meta = dict(getattr(bundle, "metadata", None) or {})
    vs = meta.get("video_size")
    if vs:
        try:
            val = json.loads(vs) if isinstance(vs, str) and vs.strip().startswith("[") else vs
            return parse_size(val)
        except (InputError, ValueError):
            pass
    if dit_width is None or int(dit_width) <= TINY_DIT_WIDTH:
        return TINY_SIZE
    if identity_hw is None:
        return (480, 832)
    ih, iw = int(identity_hw[0]), int(identity_hw[1])
    a = ih / max(iw, 1)
    h = math.sqrt(REAL_AREA * a)
    return _round16(h), _round16(REAL_AREA / h)


def output_size(width: int, height: int, image_hw: tuple, bundle=None) -> tuple:
    """The Retarget node's output (W, H) in px, multiples of 16. Both 0: :func:`default_size` with the width of
    the DiT the bundle's injector was trained for (so the node and ``animate`` without --size agree). One 0:
    derived from the other and the identity's aspect."""
    ih, iw = int(image_hw[0]), int(image_hw[1])
    w, h = int(width), int(height)
    if not w and not h:
        inj = getattr(bundle, "injector", None)
        h, w = default_size(bundle, int(inj.cfg.dit_dim) if inj is not None else None, (ih, iw))
    elif not w:
        w = _round16(h * iw / ih)
    elif not h:
        h = _round16(w * ih / iw)
    sides = {"width": w, "height": h}
    n = _off_grid(sides)
    if n:
        raise InputError(f"{n}: expected a positive multiple of {GRID_PX} px (Wan: VAE x8 then 2x2 patches), "
                         f"got {sides[n]}")
    return w, h


def to_uint8(frames: torch.Tensor) -> np.ndarray:
    """Float frames in [0, 1] (torch) -> uint8 numpy, rounded half up."""
    return (frames.clamp(0, 1) * 255.0 + 0.5).floor().to(torch.uint8).numpy()
