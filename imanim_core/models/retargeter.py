"""Mask-token retargeter (DESIGN §2 "Retargeting", §3 shapes).

Inputs: the identity latent (normalised Wan 2.1 latent of the character image) ``[B, 16, 1, h, w]`` (or
``[B, 16, h, w]``) and the motion codes of T driving frames ``[B, T, K, d]``. Output: retargeted tokens on the
DiT grid ``[B, T, h/p, w/p, Dr]`` (p = 2), read at the mask-token positions.

Tokens
- identity: patchify p x p -> ``Linear(16 p^2, W)`` + fixed 2D sin-cos position (N = h/p * w/p tokens);
- motion (per frame): ``Linear(d, W)`` + learned per-index embedding (K tokens);
- mask (per frame): one learned vector + the same 2D sin-cos positions, one per output position (N tokens).

Layers (``cfg.layers`` of them), each:
1. identity block — self-attention over the N identity tokens (frame independent: run **once** per sample);
2. spatial block — per frame, queries ``[motion_t | mask_t]`` (S = K + N) attend over keys/values
   ``[identity | motion_t | mask_t]`` (N + S). The identity keys/values are projected **once** per layer and
   shared by every frame; identity tokens are never queries inside the per-frame attention, so nothing about
   them is recomputed per frame (this halves the per-frame attention and removes the per-frame identity
   projections/MLPs of a plain joint transformer). Keeping the identity tokens in their own path also means
   the driving frames cannot write into them;
3. temporal block — per output position, self-attention over the T frames of the mask tokens, with 1D
   sin-cos time positions added to the attention input (any T works, T = 1 included).
Output: mask tokens -> LayerNorm -> ``Linear(W, Dr)``.

Driver-pose path (``cfg.driver_layers > 0``; the embedded tiny model from v3, off in the default config and in
older bundles): an internal :class:`~.motion_decoder.MotionDecoder` (stage 2 starts it from the stage-1 decoder)
turns each frame's codes into the driver's joint tokens on its letterboxed square, resampled to the output grid
(:func:`square_to_grid`). They are added to the mask tokens (``driver_proj``) and are the output's residual base:
``out = proj_out(...) + driver``, with ``proj_out`` starting at zero, so an untrained retargeter outputs the driver's
pose at the driver's proportions and training learns the change to the identity's body. Why: without it the tiny
retargeter (v2) collapsed to one constant pose (its output varied 0.15 % between frames), so stage 3 had no
motion signal to use. Cost: one motion-decoder pass per frame (K + g^2 tokens), small next to the spatial blocks.

Cost (2 FLOPs per multiply-add; B batch, T frames, L layers, W width, N = h w / p^2, K motion tokens,
S = K + N, r = MLP ratio 4):

    attention FLOPs = B L [ 4 W T S (N + S)      (spatial: QK^T and PV, per frame)
                          + 4 W N^2              (identity self-attention, once)
                          + 4 W N T^2 ]          (temporal, per position)
    linear FLOPs    = B L [ (8 + 4r) W^2 (T S + N + T N) + 4 W^2 N ]   (+ small in/out projections)

Default config (W=256, L=4, K=32, p=2), 81 frames of a 480x832 video (latent 60x104, N = 30*52 = 1560,
S = 1592): attention 1.67e12 (spatial) + 1.0e10 (identity) + 4.2e10 (temporal) = **1.72 TFLOP**, linear
**1.62 TFLOP**, total **~3.3 TFLOP** per sample (``Retargeter.cost(cfg, 60, 104, 81)`` computes these; a
plain joint transformer over [identity | motion | mask] per frame would need 3.3 TFLOP of attention alone
and 2.4 TFLOP of linear layers).

Memory: activations of the whole clip are B T S W values (81 x 1592 x 256 fp32 = 132 MB); while a spatial
block runs, each frame in flight also holds its qkv, the [identity | frame] keys/values and the 4x MLP hidden
(~25-40 MB per frame in fp32), and a non-fused attention kernel would add heads * S * (N + S) floats
(4 x 1592 x 3152 x 4 B = 80 MB per frame, 6.5 GB for 81 frames at once). ``frame_chunk=c`` runs the spatial
blocks c frames at a time (and the temporal blocks on about c*N/T positions at a time), so the per-frame part
is paid for c frames only; results are identical. Measured on CPU (fp32, PyTorch's fused CPU SDPA, one
core, ~60-70 GFLOP/s): 81 frames at 480x832 with c=8 peak +0.95 GB, 47-58 s; 5 frames +220 MB unchunked,
+110-125 MB with c=1. Unchunked at 81 frames expect ~3 GB with a fused kernel and ~10 GB with a math kernel.
Chunking is for inference; in training (autograd) every chunk's activations are kept for backward anyway.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..config import MotionDecoderConfig, RetargeterConfig
from ..errors import InputError
from .layers import MLP, Attention, ResidualAttentionBlock, sincos_1d, sincos_2d, trunc_normal_
from .motion_decoder import MotionDecoder


def driver_decoder_config(cfg: RetargeterConfig) -> MotionDecoderConfig:
    """The config of the retargeter's driver-pose decoder (equal to the stage-1 decoder it starts from)."""
    return MotionDecoderConfig(token_dim=cfg.token_dim, num_tokens=cfg.num_motion_tokens, width=cfg.driver_width,
                               layers=cfg.driver_layers, heads=cfg.driver_heads, grid=cfg.driver_grid,
                               joint_dim=cfg.out_dim)


def square_to_grid(x: torch.Tensor, gh: int, gw: int) -> torch.Tensor:
    """Joint tokens on the tokenizer's letterboxed square ``[M, g, g, C]`` -> the output grid ``[M, gh, gw, C]``.

    The square is the driving frame padded to a square (``tokenizer.preprocess_frames``); the part that holds the
    frame is read as if the driving video had the output's aspect ratio, area-resampled (bilinear at the output
    cell centres, which averages 2x2 cells at 16 -> 8)."""
    m, g, _, c = x.shape
    sy, sx = (gh / gw, 1.0) if gw >= gh else (1.0, gw / gh)
    theta = x.new_tensor([[sx, 0.0, 0.0], [0.0, sy, 0.0]]).expand(m, 2, 3)
    grid = F.affine_grid(theta, (m, c, gh, gw), align_corners=False)
    out = F.grid_sample(x.permute(0, 3, 1, 2), grid, mode="bilinear", align_corners=False)
    return out.permute(0, 2, 3, 1)


class SpatialBlock(nn.Module):
    """Pre-norm block whose queries ``x`` [M, S, W] attend over ``[context | x]``; the context keys/values
    (``context_kv``, [M or 1, N, 2W]) are computed once by :meth:`context_kv` and shared by all frames."""

    def __init__(self, width: int, heads: int, mlp_ratio: float = 4.0):
        super().__init__()
        self.heads = heads
        self.ln_1 = nn.LayerNorm(width)
        self.ln_ctx = nn.LayerNorm(width)
        self.attn = Attention(width, heads)
        self.ln_2 = nn.LayerNorm(width)
        self.mlp = MLP(width, int(width * mlp_ratio))

    def context_kv(self, ctx: torch.Tensor) -> torch.Tensor:
        w = ctx.shape[-1]
        return F.linear(self.ln_ctx(ctx), self.attn.in_proj_weight[w:], self.attn.in_proj_bias[w:])

    def forward(self, x: torch.Tensor, ctx_kv: torch.Tensor) -> torch.Tensor:
        m, s, w = x.shape
        hd = w // self.heads
        qkv = F.linear(self.ln_1(x), self.attn.in_proj_weight, self.attn.in_proj_bias)
        kv = torch.cat([ctx_kv.expand(m, -1, -1), qkv[..., w:]], dim=1)  # [M, N+S, 2W]
        q = qkv[..., :w].reshape(m, s, self.heads, hd).transpose(1, 2)
        kv = kv.reshape(m, kv.shape[1], 2, self.heads, hd).permute(2, 0, 3, 1, 4)
        o = F.scaled_dot_product_attention(q, kv[0], kv[1])
        x = x + self.attn.out_proj(o.transpose(1, 2).reshape(m, s, w))
        return x + self.mlp(self.ln_2(x))


class TemporalBlock(ResidualAttentionBlock):
    """Pre-norm self-attention over time; ``pos`` [T, W] is added to the attention input only (it does not
    accumulate in the residual stream over layers)."""

    def forward(self, x, pos=None):  # type: ignore[override]
        h = self.ln_1(x)
        if pos is not None:
            h = h + pos
        x = x + self.attn(h)
        return x + self.mlp(self.ln_2(x))


def _patchify(lat: torch.Tensor, p: int) -> torch.Tensor:
    """[B, C, h, w] -> [B, (h/p)(w/p), C*p*p] (row-major grid; channel-major inside a patch, like a Conv2d)."""
    b, c, h, w = lat.shape
    x = lat.reshape(b, c, h // p, p, w // p, p).permute(0, 2, 4, 1, 3, 5)
    return x.reshape(b, (h // p) * (w // p), c * p * p)


class Retargeter(nn.Module):
    """``Retargeter(cfg)(identity_latent, codes, frame_chunk=None) -> [B, T, h/p, w/p, out_dim]``.

    See the module docstring for the design, its cost and the memory use of ``frame_chunk`` (also settable as
    the attribute ``frame_chunk``; ``None`` = all frames at once). Chunking changes memory, not results.
    """

    def __init__(self, cfg: RetargeterConfig):
        super().__init__()
        self.cfg = cfg
        w, p = cfg.width, cfg.patch_size
        if w % 4:
            raise InputError(f"RetargeterConfig.width: expected a multiple of 4 (2D sin-cos positions), got {w}")
        self.frame_chunk: Optional[int] = None
        self.identity_proj = nn.Linear(cfg.latent_channels * p * p, w)
        self.motion_proj = nn.Linear(cfg.token_dim, w)
        self.motion_pos = nn.Parameter(torch.zeros(cfg.num_motion_tokens, w))
        self.mask_token = nn.Parameter(torch.zeros(w))
        self.identity_blocks = nn.ModuleList([ResidualAttentionBlock(w, cfg.heads) for _ in range(cfg.layers)])
        self.spatial_blocks = nn.ModuleList([SpatialBlock(w, cfg.heads) for _ in range(cfg.layers)])
        self.temporal_blocks = nn.ModuleList([TemporalBlock(w, cfg.heads) for _ in range(cfg.layers)])
        self.ln_post = nn.LayerNorm(w)
        self.proj_out = nn.Linear(w, cfg.out_dim)
        trunc_normal_(self.motion_pos)
        trunc_normal_(self.mask_token)
        if cfg.code_norm:
            self.register_buffer("code_mean", torch.zeros(cfg.num_motion_tokens, cfg.token_dim))
            self.register_buffer("code_std", torch.ones(cfg.num_motion_tokens, cfg.token_dim))
        self.driver: Optional[MotionDecoder] = None
        if cfg.driver_layers > 0:
            # the driver's pose as a residual base: at the start the output *is* the driver's joint tokens at the
            # driver's proportions, and the transformer learns the change to the identity's body (without it the
            # tiny retargeter collapsed to one constant pose whatever the codes)
            self.driver = MotionDecoder(driver_decoder_config(cfg))
            self.driver_proj = nn.Linear(cfg.out_dim, w)
            nn.init.zeros_(self.proj_out.weight)
            nn.init.zeros_(self.proj_out.bias)

    @torch.no_grad()
    def set_code_stats(self, codes: torch.Tensor, min_std: float = 1e-3) -> None:
        """code_norm: the per-token, per-channel mean / std of ``codes`` [..., K, d] (the tokenizer's codes on
        training data) become the standardisation of :meth:`forward`."""
        if not self.cfg.code_norm:
            raise InputError("set_code_stats: this retargeter was built without code_norm")
        c = codes.reshape(-1, *codes.shape[-2:]).float()
        self.code_mean.copy_(c.mean(0))
        self.code_std.copy_(c.std(0).clamp_min(min_std))

    # ----------------------------------------------------------------------------------------------- checks
    def _check(self, identity_latent, codes):
        cfg = self.cfg
        if not torch.is_tensor(identity_latent) or identity_latent.dim() not in (4, 5):
            got = (tuple(identity_latent.shape) if torch.is_tensor(identity_latent)
                   else type(identity_latent).__name__)
            raise InputError(f"identity latent: expected a tensor [B, {cfg.latent_channels}, 1, h, w] or "
                             f"[B, {cfg.latent_channels}, h, w], got {got}")
        if identity_latent.dim() == 5:
            if identity_latent.shape[2] != 1:
                raise InputError(f"identity latent: expected one latent frame [B, {cfg.latent_channels}, 1, h, w], "
                                 f"got {identity_latent.shape[2]} frames (shape {tuple(identity_latent.shape)})")
            identity_latent = identity_latent[:, :, 0]
        b, c, h, w = identity_latent.shape
        if c != cfg.latent_channels:
            raise InputError(f"identity latent: expected {cfg.latent_channels} channels, got {c} "
                             f"(shape {tuple(identity_latent.shape)})")
        p = cfg.patch_size
        if h % p or w % p or h == 0 or w == 0:
            raise InputError(f"identity latent: height and width must be positive multiples of the patch size {p}, "
                             f"got {h}x{w} (image {h * 8}x{w * 8} px; use a size divisible by {8 * p})")
        if not torch.is_tensor(codes) or codes.dim() != 4:
            raise InputError(f"motion codes: expected [B, T, K={cfg.num_motion_tokens}, d={cfg.token_dim}], got "
                             f"{tuple(codes.shape) if torch.is_tensor(codes) else type(codes).__name__}")
        if codes.shape[2] != cfg.num_motion_tokens or codes.shape[3] != cfg.token_dim:
            raise InputError(f"motion codes: expected K={cfg.num_motion_tokens} tokens of d={cfg.token_dim} "
                             f"channels [B, T, K, d], got shape {tuple(codes.shape)} (tokenizer/retargeter mismatch?)")
        if codes.shape[1] < 1:
            raise InputError("motion codes: expected at least one frame, got T=0")
        if codes.shape[0] != b:
            raise InputError(f"batch sizes differ: identity latent has B={b}, motion codes have B={codes.shape[0]}")
        return identity_latent, (h // p, w // p)

    # ---------------------------------------------------------------------------------------------- forward
    def forward(self, identity_latent: torch.Tensor, codes: torch.Tensor,
                frame_chunk: Optional[int] = None, return_identity: bool = False):
        """-> retargeted tokens ``[B, T, h/p, w/p, out_dim]``; with ``return_identity`` also the identity tokens after
        the identity blocks through the same output projection, ``[B, 1, h/p, w/p, out_dim]`` (stage 2's identity-pose
        auxiliary loss reads them with the joint head: the identity's own pose must be readable from its path)."""
        cfg = self.cfg
        lat, (gh, gw) = self._check(identity_latent, codes)
        chunk = frame_chunk if frame_chunk is not None else self.frame_chunk
        if chunk is not None and (not isinstance(chunk, int) or chunk < 1):
            raise InputError(f"frame_chunk: expected a positive integer or None, got {chunk!r}")
        b, t = codes.shape[:2]
        k, n, wd = cfg.num_motion_tokens, gh * gw, cfg.width
        s = k + n
        dtype, dev = self.mask_token.dtype, self.mask_token.device
        lat = lat.to(dev, dtype)
        codes = codes.to(dev, dtype)
        pos2d = sincos_2d(gh, gw, wd, device=dev, dtype=dtype)
        ident = self.identity_proj(_patchify(lat, cfg.patch_size)) + pos2d  # [B, N, W]
        if cfg.code_norm:
            mot = self.motion_proj((codes - self.code_mean.to(dtype)) / self.code_std.to(dtype)) + self.motion_pos
        else:
            mot = self.motion_proj(codes) + self.motion_pos  # [B, T, K, W]
        mask = (self.mask_token + pos2d)[None, None].expand(b, t, n, wd)
        base = None
        if self.driver is not None:
            d = self.driver(codes.reshape(b * t, k, codes.shape[-1]))  # [B*T, g, g, Dr]
            base = square_to_grid(d, gh, gw).reshape(b, t, n, cfg.out_dim)
            mask = mask + self.driver_proj(base)
        x = torch.cat([mot, mask], dim=2)  # [B, T, S, W]
        tpos = sincos_1d(t, wd, device=dev, dtype=dtype)

        fc = t if chunk is None else min(chunk, t)
        pc = b * n if chunk is None else max(1, (chunk * n) // t)
        for ib, sb, tb in zip(self.identity_blocks, self.spatial_blocks, self.temporal_blocks, strict=True):
            ident = ib(ident)
            kv = sb.context_kv(ident)  # [B, N, 2W]: once per layer, shared by every frame
            if fc >= t:
                kvc = kv[:, None].expand(b, t, n, 2 * wd).reshape(b * t, n, 2 * wd) if b > 1 else kv
                x = sb(x.reshape(b * t, s, wd), kvc).reshape(b, t, s, wd)
            else:  # chunks written into one buffer (no list + cat: one clip-sized copy less)
                new = x.new_empty(x.shape)
                for t0 in range(0, t, fc):
                    xc = x[:, t0:t0 + fc]
                    c = xc.shape[1]
                    kvc = kv[:, None].expand(b, c, n, 2 * wd).reshape(b * c, n, 2 * wd) if b > 1 else kv
                    new[:, t0:t0 + c] = sb(xc.reshape(b * c, s, wd), kvc).reshape(b, c, s, wd)
                x = new
            m = x[:, :, k:].permute(0, 2, 1, 3).reshape(b * n, t, wd)  # per position, over time
            if pc >= b * n:
                m = tb(m, tpos)
            else:
                mo = m.new_empty(m.shape)
                for i in range(0, b * n, pc):
                    mo[i:i + pc] = tb(m[i:i + pc], tpos)
                m = mo
            x = torch.cat([x[:, :, :k], m.reshape(b, n, t, wd).permute(0, 2, 1, 3)], dim=2)
        out = self.proj_out(self.ln_post(x[:, :, k:]))
        if base is not None:
            out = out + base
        out = out.reshape(b, t, gh, gw, cfg.out_dim)
        if return_identity:
            return out, self.proj_out(self.ln_post(ident)).reshape(b, 1, gh, gw, cfg.out_dim)
        return out

    # ------------------------------------------------------------------------------------------------- cost
    @staticmethod
    def cost(cfg: RetargeterConfig, h: int, w: int, frames: int, batch: int = 1,
             frame_chunk: Optional[int] = None, bytes_per_value: int = 4, mlp_ratio: float = 4.0) -> dict:
        """Analytic cost of one forward on a latent h x w (the formulas of the module docstring).

        Returns FLOPs (``attention_flops`` with its ``spatial``/``identity``/``temporal`` parts,
        ``linear_flops``, ``total_flops``) and ``attention_matrix_bytes``: the peak size of one spatial chunk's
        attention matrix with a non-fused kernel (fused kernels do not materialise it)."""
        p = cfg.patch_size
        n = (h // p) * (w // p)
        k, wd, L, t, bt = cfg.num_motion_tokens, cfg.width, cfg.layers, frames, batch
        s = k + n
        spatial = bt * L * 4 * wd * t * s * (n + s)
        identity = bt * L * 4 * wd * n * n
        temporal = bt * L * 4 * wd * n * t * t
        per_tok = (8 + 4 * mlp_ratio) * wd * wd
        linear = bt * (L * (per_tok * (t * s + n + t * n) + 4 * wd * wd * n)
                       + 2 * wd * (n * cfg.latent_channels * p * p + t * k * cfg.token_dim + t * n * cfg.out_dim))
        attn = spatial + identity + temporal
        c = t if frame_chunk is None else min(frame_chunk, t)
        return {"positions": n, "attention_flops": attn, "spatial_flops": spatial, "identity_flops": identity,
                "temporal_flops": temporal, "linear_flops": linear, "total_flops": attn + linear,
                "attention_matrix_bytes": bt * c * cfg.heads * s * (n + s) * bytes_per_value}


__all__ = ["Retargeter", "SpatialBlock", "TemporalBlock", "driver_decoder_config", "square_to_grid"]
