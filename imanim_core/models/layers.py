"""Transformer building blocks shared by every model part.

Parameter names follow the released motion encoder (``ln_1``, ``attn.in_proj_weight``, ``attn.out_proj``,
``ln_2``, ``mlp.c_fc``, ``mlp.c_proj``) so that a released file loads into our modules without renaming.
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F


class MLP(nn.Module):
    def __init__(self, width: int, hidden: int):
        super().__init__()
        self.c_fc = nn.Linear(width, hidden)
        self.gelu = nn.GELU()
        self.c_proj = nn.Linear(hidden, width)

    def forward(self, x):
        return self.c_proj(self.gelu(self.c_fc(x)))


class Attention(nn.Module):
    """Multi-head self-attention with a packed ``in_proj_weight`` [3W, W] (same layout as nn.MultiheadAttention)
    computed with ``scaled_dot_product_attention`` (no need_weights overhead, any leading batch dims)."""

    def __init__(self, width: int, heads: int):
        super().__init__()
        if width % heads:
            raise ValueError(f"width {width} is not divisible by heads {heads}")
        self.heads = heads
        self.in_proj_weight = nn.Parameter(torch.empty(3 * width, width))
        self.in_proj_bias = nn.Parameter(torch.zeros(3 * width))
        self.out_proj = nn.Linear(width, width)
        nn.init.xavier_uniform_(self.in_proj_weight)

    def forward(self, x, attn_mask=None):
        *lead, n, w = x.shape
        qkv = F.linear(x, self.in_proj_weight, self.in_proj_bias)
        qkv = qkv.reshape(-1, n, 3, self.heads, w // self.heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]
        o = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)
        o = o.transpose(1, 2).reshape(*lead, n, w)
        return self.out_proj(o)


class ResidualAttentionBlock(nn.Module):
    """Pre-norm block: x + attn(ln_1(x)); x + mlp(ln_2(x))."""

    def __init__(self, width: int, heads: int, mlp_ratio: float = 4.0):
        super().__init__()
        self.ln_1 = nn.LayerNorm(width)
        self.attn = Attention(width, heads)
        self.ln_2 = nn.LayerNorm(width)
        self.mlp = MLP(width, int(width * mlp_ratio))

    def forward(self, x, attn_mask=None):
        x = x + self.attn(self.ln_1(x), attn_mask=attn_mask)
        x = x + self.mlp(self.ln_2(x))
        return x


def sincos_2d(h: int, w: int, dim: int, device=None, dtype=torch.float32) -> torch.Tensor:
    """Fixed 2D sine-cosine position embedding [h*w, dim] (works for any grid size, so no interpolation)."""
    if dim % 4:
        raise ValueError(f"sincos_2d needs dim divisible by 4, got {dim}")
    q = dim // 4
    omega = 1.0 / (10000 ** (torch.arange(q, device=device, dtype=torch.float32) / q))
    ys, xs = torch.meshgrid(torch.arange(h, device=device, dtype=torch.float32),
                            torch.arange(w, device=device, dtype=torch.float32), indexing="ij")
    oy = ys.reshape(-1, 1) * omega[None]
    ox = xs.reshape(-1, 1) * omega[None]
    return torch.cat([oy.sin(), oy.cos(), ox.sin(), ox.cos()], dim=1).to(dtype)


def sincos_1d(n: int, dim: int, device=None, dtype=torch.float32) -> torch.Tensor:
    """Fixed 1D sine-cosine position embedding [n, dim]."""
    half = dim // 2
    omega = 1.0 / (10000 ** (torch.arange(half, device=device, dtype=torch.float32) / max(half, 1)))
    pos = torch.arange(n, device=device, dtype=torch.float32)[:, None] * omega[None]
    out = torch.cat([pos.sin(), pos.cos()], dim=1)
    if out.shape[1] < dim:
        out = F.pad(out, (0, dim - out.shape[1]))
    return out.to(dtype)


def trunc_normal_(t: torch.Tensor, std: float = 0.02) -> torch.Tensor:
    return nn.init.trunc_normal_(t, std=std, a=-2 * std, b=2 * std)


__all__ = ["MLP", "Attention", "ResidualAttentionBlock", "sincos_2d", "sincos_1d", "trunc_normal_", "math"]
