"""Losses and monitoring numbers the stages share."""
from __future__ import annotations

import torch

from ..data.heatmaps import heatmap_argmax
from ..errors import IMAnimError


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


__all__ = ["weighted_heatmap_mse", "keypoint_error"]
