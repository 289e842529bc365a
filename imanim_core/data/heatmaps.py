"""Gaussian keypoint heatmaps: the one place they are rendered (training targets, previews, metrics)."""
from __future__ import annotations

import torch

from ..errors import InputError


def render_heatmaps(keypoints: torch.Tensor, visibility: torch.Tensor | None, size: tuple,
                    sigma: float = 1.5, image_size: tuple | None = None) -> torch.Tensor:
    """Render one Gaussian per joint.

    keypoints: [..., J, 2] as (x, y). In heatmap pixels, or in image pixels when ``image_size=(H, W)`` is
        given (then scaled to the heatmap; pixel centres are aligned, i.e. x_hm = (x + 0.5) * Wh / W - 0.5).
    visibility: [..., J] (bool or 0/1) or None; invisible joints give an all-zero map.
    size: (Hh, Wh) of the heatmap. sigma: standard deviation in heatmap pixels.
    Returns [..., J, Hh, Wh] in [0, 1], peak 1 at the keypoint, float32.
    """
    if keypoints.shape[-1] != 2:
        raise InputError(f"keypoints: expected [..., J, 2] (x, y), got shape {tuple(keypoints.shape)}")
    hh, wh = int(size[0]), int(size[1])
    kp = keypoints.float()
    if image_size is not None:
        ih, iw = float(image_size[0]), float(image_size[1])
        kp = torch.stack([(kp[..., 0] + 0.5) * wh / iw - 0.5, (kp[..., 1] + 0.5) * hh / ih - 0.5], dim=-1)
    ys = torch.arange(hh, dtype=torch.float32, device=kp.device).view(hh, 1)
    xs = torch.arange(wh, dtype=torch.float32, device=kp.device).view(1, wh)
    dx2 = (xs - kp[..., 0, None, None]) ** 2  # [..., J, 1, Wh]
    dy2 = (ys - kp[..., 1, None, None]) ** 2  # [..., J, Hh, 1]
    hm = torch.exp(-(dx2 + dy2) / (2.0 * sigma * sigma))
    if visibility is not None:
        if visibility.shape != keypoints.shape[:-1]:
            raise InputError(f"visibility: expected shape {tuple(keypoints.shape[:-1])}, got {tuple(visibility.shape)}")
        hm = hm * visibility.to(hm.dtype)[..., None, None]
    return hm


def heatmap_argmax(heatmaps: torch.Tensor) -> tuple:
    """Keypoints (x, y) in heatmap pixels and peak values from [..., J, Hh, Wh] maps (soft-argmax refined)."""
    *lead, j, hh, wh = heatmaps.shape
    flat = heatmaps.reshape(*lead, j, hh * wh)
    peak, idx = flat.max(dim=-1)
    x = (idx % wh).float()
    y = torch.div(idx, wh, rounding_mode="floor").float()
    return torch.stack([x, y], dim=-1), peak


def heatmaps_to_image(heatmaps: torch.Tensor) -> torch.Tensor:
    """[..., J, Hh, Wh] -> a colour preview [..., Hh, Wh, 3] in [0, 1] (one hue per joint, max over joints)."""
    j = heatmaps.shape[-3]
    hues = torch.linspace(0, 1, j + 1, device=heatmaps.device)[:j]
    # HSV (h, 1, 1) -> RGB, vectorised
    k = (torch.tensor([5.0, 3.0, 1.0], device=heatmaps.device)[None, :] + hues[:, None] * 6) % 6
    rgb = 1 - torch.clamp(torch.minimum(k, 4 - k), 0, 1)  # [J, 3]
    hm = heatmaps.clamp(0, 1)
    img = (hm[..., None] * rgb[:, None, None, :]).amax(dim=-4)
    return img
