"""Input checks shared by both hosts (the CLI / standalone pipeline and the ComfyUI nodes), so they accept and
refuse the same inputs with the same words.

- :func:`check_finite` — NaN / Inf in images, frames, motion-token codes or latents (:class:`InputError`).
- :func:`check_finite_weights` — NaN / Inf in a weights file's tensors, one tensor at a time while it is loaded
  (:class:`CheckpointError`; one ``isfinite().all()`` pass per tensor, no copy kept).
- :data:`MIN_IMAGE_SIDE` and :func:`check_min_side` — the smallest identity / driving frame either host takes
  (16 px a side: one cell of the Wan 2.1 model grid, VAE x8 then 2x2 patches).
- :func:`image_batch` — a float IMAGE batch ``[B, H, W, C]`` (C = 3, or 4: RGBA) -> RGB ``[B, H, W, 3]``: alpha
  composited **over black**, exactly as :func:`imanim_core.io.video.read_image` does for files (the tokenizer
  pads with black too), values checked finite.
- :func:`check_t2v_channels` — the one explanation for a Wan DiT that is not text-to-video (input channels != 16).

Light: imports torch / numpy only inside the functions that take tensors.
"""
from __future__ import annotations

from .errors import CheckpointError, InputError

MIN_IMAGE_SIDE = 16
WAN_T2V_IN_CHANNELS = 16


def _count_bad(x):
    """(number of non-finite values, number of values) of a torch tensor or numpy array; (0, n) for integers."""
    import numpy as np

    try:
        import torch
    except ImportError:  # pragma: no cover
        torch = None
    if torch is not None and isinstance(x, torch.Tensor):
        if not (x.is_floating_point() or x.is_complex()) or x.numel() == 0:
            return 0, x.numel()
        if x.element_size() == 1:  # float8: isfinite is not implemented for it everywhere
            x = x.to(torch.float16)
        ok = torch.isfinite(x)
        if bool(ok.all()):
            return 0, x.numel()
        return int(x.numel() - int(ok.sum())), x.numel()
    a = np.asarray(x)
    if not np.issubdtype(a.dtype, np.inexact) or a.size == 0:
        return 0, a.size
    ok = np.isfinite(a)
    if ok.all():
        return 0, a.size
    return int(a.size - int(ok.sum())), a.size


def check_finite(x, where: str, what: str = "values", hint: str = "Check what produced them") -> None:
    """Raise :class:`InputError` when the tensor / array ``x`` holds NaN or infinite values.

    ``where`` names the input (``"driving"``, ``"identity"``, ``"motion_tokens: 'codes'"``, a file path ...);
    ``hint`` ends the message (what to check)."""
    bad, n = _count_bad(x)
    if bad:
        raise InputError(f"{where}: the {what} contain NaN or infinite numbers ({bad} of {n}); they would give a "
                         f"black or NaN video. {hint}")


def check_finite_weights(tensor, name: str, path, what: str = "weights file") -> None:
    """Raise :class:`CheckpointError` when one tensor of a weights file has NaN or infinite values. Called for
    each float tensor while a file is loaded (``load_bundle``, ``load_released_encoder``, ``load_dit`` and
    ``load_vae``), so every load checks once and nothing else pays for it."""
    bad, n = _count_bad(tensor)
    if bad:
        raise CheckpointError(f"{what} {str(path)!r}: tensor {name!r} has NaN or infinite values ({bad} of {n}); "
                              f"the file is damaged or was saved from a diverged training run")


def check_min_side(height: int, width: int, where: str, min_side: int = MIN_IMAGE_SIDE) -> None:
    """The same minimum image size in both hosts: ``min_side`` px on each side."""
    if min(int(height), int(width)) < min_side:
        raise InputError(f"{where}: the image is {int(width)}x{int(height)} px, smaller than the {min_side} px needed "
                         f"on each side (one {min_side}x{min_side} cell of the model grid); use a larger image")


def image_batch(image, where: str, min_side: int = MIN_IMAGE_SIDE):
    """A ComfyUI-style IMAGE ``[B, H, W, 3|4]`` float tensor -> float32 RGB ``[B, H, W, 3]``.

    RGBA is composited over black (``rgb * alpha``), as the CLI does for RGBA files; NaN / Inf and images
    smaller than ``min_side`` px a side are refused with the same messages as the CLI."""
    import torch

    from .io.video import to_float, to_rgb

    if not torch.is_tensor(image) or image.ndim != 4:
        shape = tuple(image.shape) if torch.is_tensor(image) else type(image).__name__
        raise InputError(f"{where}: expected an IMAGE batch [frames, height, width, 3], got {shape}")
    b, h, w, c = image.shape
    if b == 0:
        raise InputError(f"{where}: the image batch is empty")
    if c not in (3, 4):
        raise InputError(f"{where}: expected RGB images (3 channels) or RGBA (4), got {c} channels")
    check_min_side(h, w, where, min_side)
    x = to_float(image, where)
    check_finite(x, where, "pixel values")
    return to_rgb(x, where=where).clamp(0.0, 1.0)


def t2v_channels_problem(in_channels, name: str = "model") -> str | None:
    """The message for a Wan DiT whose patch embedding does not take the 16 latent channels of text-to-video
    (None when it does). Used by ``pipeline.load_models`` and by the nodes' ``check_wan_model``."""
    if in_channels == WAN_T2V_IN_CHANNELS:
        return None
    return (f"{name}: expected a text-to-video Wan 2.1 model ({WAN_T2V_IN_CHANNELS} input channels); this one takes "
            f"{in_channels} (an image-to-video / control variant)")


def check_t2v_channels(in_channels, name: str = "model") -> None:
    msg = t2v_channels_problem(in_channels, name)
    if msg:
        raise InputError(msg)


__all__ = ["MIN_IMAGE_SIDE", "WAN_T2V_IN_CHANNELS", "check_finite", "check_finite_weights", "check_min_side",
           "image_batch", "t2v_channels_problem", "check_t2v_channels"]
