"""Stage-1 motion decoder and the shared joint head (DESIGN §2).

``MotionDecoder``: quantised motion codes ``[B, K, d]`` + learned mask tokens -> ViT -> *joint tokens*
``[B, grid, grid, joint_dim]`` (read at the mask positions).

``JointHead``: the light joint decoder. It maps joint tokens on **any** grid ``[..., gh, gw, C]`` to ``J``
keypoint heatmaps ``[..., J, gh*up, gw*up]``. The same head supervises the stage-1 decoder output and the
retargeter output (``[B, T, h/2, w/2, Dr]`` -> ``[B, T, J, h/2*up, w/2*up]``).

Heatmap output convention (chosen here): the head returns **unbounded linear values** regressed with MSE
directly against ``data.heatmaps.render_heatmaps`` targets (values in ``[0, 1]``, peak 1) — the usual
SimpleBaseline/HRNet recipe; no sigmoid, so the loss has no saturation and background pixels are pushed to
exactly 0. Clamp to ``[0, 1]`` for display (``heatmaps_to_image`` does) and read peaks with
``heatmap_argmax``. :func:`heatmap_loss` is that MSE (optionally weighted per joint, e.g. by visibility).
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..config import JointHeadConfig, MotionDecoderConfig
from ..errors import InputError
from .layers import ResidualAttentionBlock, sincos_2d, trunc_normal_


class MotionDecoder(nn.Module):
    """Quantised motion codes -> joint tokens.

    codes ``[B, K, d]`` -> ``Linear(d, width)`` + learned per-index position embedding; ``grid*grid`` mask
    tokens = one learned vector + fixed 2D sin-cos position; concatenated ``[motion | mask]`` -> ``layers``
    pre-norm ViT blocks -> mask positions -> LayerNorm -> ``Linear(width, joint_dim)`` ->
    ``[B, grid, grid, joint_dim]``.

    K is ``cfg.num_tokens`` (the tokenizer's ``num_latent_tokens``).
    """

    def __init__(self, cfg: MotionDecoderConfig):
        super().__init__()
        self.cfg = cfg
        self.num_tokens = int(cfg.num_tokens)
        w = cfg.width
        self.token_proj = nn.Linear(cfg.token_dim, w)
        self.token_pos = nn.Parameter(torch.zeros(self.num_tokens, w))
        self.mask_token = nn.Parameter(torch.zeros(w))
        self.register_buffer("mask_pos", sincos_2d(cfg.grid, cfg.grid, w), persistent=False)
        self.blocks = nn.ModuleList([ResidualAttentionBlock(w, cfg.heads) for _ in range(cfg.layers)])
        self.ln_post = nn.LayerNorm(w)
        self.proj_out = nn.Linear(w, cfg.joint_dim)
        trunc_normal_(self.token_pos)
        trunc_normal_(self.mask_token)

    def forward(self, codes: torch.Tensor) -> torch.Tensor:
        cfg = self.cfg
        if codes.dim() != 3 or codes.shape[1] != self.num_tokens or codes.shape[2] != cfg.token_dim:
            raise InputError(f"motion codes: expected [B, K={self.num_tokens}, d={cfg.token_dim}], "
                             f"got shape {tuple(codes.shape)}")
        b = codes.shape[0]
        dtype = self.token_proj.weight.dtype
        x = self.token_proj(codes.to(dtype)) + self.token_pos.to(dtype)
        m = (self.mask_token[None] + self.mask_pos.to(self.mask_token.dtype)).to(dtype)
        x = torch.cat([x, m[None].expand(b, -1, -1)], dim=1)
        for blk in self.blocks:
            x = blk(x)
        x = self.proj_out(self.ln_post(x[:, self.num_tokens:]))
        return x.reshape(b, cfg.grid, cfg.grid, cfg.joint_dim)


def _factors(up: int) -> list:
    """Split an upsampling factor into x2 steps plus one remaining factor (e.g. 4 -> [2, 2], 6 -> [2, 3])."""
    out = []
    while up % 2 == 0 and up > 1:
        out.append(2)
        up //= 2
    if up > 1:
        out.append(up)
    return out


class JointHead(nn.Module):
    """Joint tokens on any grid ``[..., gh, gw, C]`` -> heatmaps ``[..., J, gh*up, gw*up]``.

    conv3x3(C->hidden) -> GELU -> conv3x3(hidden->hidden) -> GELU -> per upsampling step f (x2 steps, then the
    rest): conv3x3(hidden -> hidden*f*f) -> PixelShuffle(f) -> GELU -> conv3x3(hidden -> J).
    Fully convolutional (no position parameters), so any grid works. Output: unbounded heatmap values (see the
    module docstring); the last conv starts near zero so an untrained head predicts ~empty maps.
    """

    def __init__(self, cfg: JointHeadConfig):
        super().__init__()
        if cfg.upsample < 1:
            raise InputError(f"JointHeadConfig.upsample: expected an integer >= 1, got {cfg.upsample}")
        self.cfg = cfg
        hd = cfg.hidden
        self.conv_in = nn.Conv2d(cfg.joint_dim, hd, 3, padding=1)
        self.conv_mid = nn.Conv2d(hd, hd, 3, padding=1)
        self.ups = nn.ModuleList()
        for f in _factors(int(cfg.upsample)):
            self.ups.append(nn.Sequential(nn.Conv2d(hd, hd * f * f, 3, padding=1), nn.PixelShuffle(f), nn.GELU()))
        self.conv_out = nn.Conv2d(hd, cfg.num_joints, 3, padding=1)
        nn.init.normal_(self.conv_out.weight, std=1e-3)
        nn.init.zeros_(self.conv_out.bias)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        cfg = self.cfg
        if tokens.dim() < 3 or tokens.shape[-1] != cfg.joint_dim:
            raise InputError(f"joint tokens: expected [..., gh, gw, C={cfg.joint_dim}], "
                             f"got shape {tuple(tokens.shape)}")
        *lead, gh, gw, c = tokens.shape
        x = tokens.reshape(-1, gh, gw, c).permute(0, 3, 1, 2).to(self.conv_in.weight.dtype)
        x = F.gelu(self.conv_in(x))
        x = F.gelu(self.conv_mid(x))
        for up in self.ups:
            x = up(x)
        x = self.conv_out(x)
        return x.reshape(*lead, cfg.num_joints, x.shape[-2], x.shape[-1])


def heatmap_loss(pred: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None = None) -> torch.Tensor:
    """MSE between predicted and target heatmaps ``[..., J, H, W]``; ``weight`` ``[..., J]`` (e.g. visibility)
    weights each joint's map. Returns a scalar (mean over all pixels)."""
    if pred.shape != target.shape:
        raise InputError(f"heatmaps: prediction {tuple(pred.shape)} and target {tuple(target.shape)} differ")
    se = (pred.float() - target.float()) ** 2
    if weight is None:
        return se.mean()
    if weight.shape != pred.shape[:-2]:
        raise InputError(f"heatmap weight: expected shape {tuple(pred.shape[:-2])}, got {tuple(weight.shape)}")
    return (se * weight.to(se.dtype)[..., None, None]).mean()


__all__ = ["JointHead", "MotionDecoder", "heatmap_loss"]
