"""Losses and monitoring numbers the stages share."""
from __future__ import annotations

import torch

from ..data.heatmaps import heatmap_argmax
from ..errors import IMAnimError
from ..models.injector import group_frames


def weighted_heatmap_mse(pred: torch.Tensor, target: torch.Tensor, fg_weight: float = 10.0) -> torch.Tensor:
    """Heatmap MSE in which visible joints matter: each pixel's squared error is weighted by
    ``1 + fg_weight * target`` and the sum is normalised by the total weight. Gaussian targets are ~0 almost
    everywhere, so a plain mean is won by predicting empty maps; this weighting keeps the peaks in charge.
    Invisible joints (all-zero targets, see ``render_heatmaps``) are still pushed to empty maps with weight 1.
    ``pred``/``target``: ``[..., J, H, W]``."""
    if pred.shape != target.shape:
        raise IMAnimError(f"heatmaps: prediction {tuple(pred.shape)} and target {tuple(target.shape)} differ")
    t = target.float()
    w = 1.0 + fg_weight * t
    se = (pred.float() - t) ** 2
    return (se * w).sum() / w.sum()


def keypoint_error(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean distance (heatmap pixels) between the peaks of predicted and target maps ``[..., J, H, W]``, over
    the joints that have a target (a monitoring number, no gradient)."""
    with torch.no_grad():
        pk, _ = heatmap_argmax(pred.float())
        tk, tpeak = heatmap_argmax(target.float())
        m = (tpeak > 0.5).float()
        d = (pk - tk).norm(dim=-1)
        return (d * m).sum() / m.sum().clamp_min(1.0)


def latent_weight(masks: torch.Tensor, fg_weight: float, scale: int = 8, stride: int = 4,
                  grow: int = 1) -> torch.Tensor:
    """Per-cell flow-loss weights ``[B, 1, T', H/scale, W/scale]`` from character masks ``[B, T, H, W]``
    (T = stride*n + 1): 1 everywhere, ``1 + fg_weight`` on the latent cells the character covers in any frame
    of the cell's group (the Wan VAE's grouping: frame 0 alone, then groups of ``stride``), grown by ``grow``
    cells (the decoder reads a cell's neighbours too). The character is a small part of the frame and is what
    the video model must get right; the static background otherwise dominates a plain mean."""
    import torch.nn.functional as F

    if masks.dim() != 4:
        raise IMAnimError(f"masks: expected [B, T, H, W], got shape {tuple(masks.shape)}")
    b, t, h, w = masks.shape
    m = F.max_pool2d(masks.float().flatten(0, 1)[:, None], scale)  # [B*T, 1, h, w]
    if grow > 0:
        m = F.max_pool2d(m, 2 * grow + 1, stride=1, padding=grow)
    m = group_frames(m.reshape(b, t, h // scale, w // scale, 1), stride).amax(-1)  # [B, T', h, w]
    return (1.0 + fg_weight * m)[:, None]


__all__ = ["weighted_heatmap_mse", "keypoint_error", "latent_weight"]
