"""The 1D motion tokenizer: a TiTok-style ViT encoder and an L2-normalised vector quantiser.

A driving frame (padded to a square, resized to S x S, RGB in [0, 1], no mean/std) is cut into patches; K learned
*latent tokens* are appended to the patch tokens, the sequence goes through a pre-norm transformer, only the latent
tokens are kept and projected to d channels by a 1x1 convolution, and each of the K vectors is snapped to the
nearest entry of an L2-normalised codebook (DESIGN §2).

Parameter names are exactly those of the authors' released motion encoder, so a released file *is* the
state dict of ``MotionTokenizer(TokenizerConfig.preset("large"))`` (see :mod:`imanim_core.models.released`).

Dtypes: the encoder runs in the dtype of its parameters; the quantiser always works in float32 (it is tiny), so
``z`` and ``codes`` are float32 whatever the model dtype.
"""
from __future__ import annotations

from typing import Callable, Optional

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from ..config import TokenizerConfig
from ..errors import InputError
from ..io.video import to_float
from .layers import ResidualAttentionBlock, trunc_normal_

ProgressFn = Callable[[int, int], None]


class StopRequested(KeyboardInterrupt):
    """Raised by :meth:`MotionTokenizer.encode_frames` when its ``should_stop()`` callback returns True.

    A ``KeyboardInterrupt`` so that hosts treat it as a user interruption (the CLI exits with code 130).
    ``done`` frames were encoded before the stop.
    """

    def __init__(self, done: int, total: int):
        super().__init__(f"encoding stopped after {done} of {total} frames")
        self.done = done
        self.total = total


def _pair(v) -> tuple:
    if isinstance(v, (tuple, list)):
        if len(v) != 2:
            raise InputError(f"patch_padding: expected an int or a pair, got {v!r}")
        return (int(v[0]), int(v[1]))
    return (int(v), int(v))


# ---------------------------------------------------------------------------------------------- preprocessing
def _to_float_frames(frames, where: str) -> torch.Tensor:
    """[T,H,W,C] (or one [H,W,C] image) numpy/torch -> float32 torch tensor in [0,1] (``io.video.to_float``),
    shape checked."""
    if not isinstance(frames, (np.ndarray, torch.Tensor)):
        raise InputError(f"{where}: expected a numpy array or a torch tensor [T,H,W,3], got {type(frames).__name__}")
    t = frames[None] if frames.ndim == 3 else frames
    if t.ndim != 4:
        raise InputError(f"{where}: expected frames [T,H,W,3] (ComfyUI IMAGE layout), got shape {tuple(t.shape)}")
    T, H, W, C = t.shape
    if T == 0:
        raise InputError(f"{where}: no frames (shape {tuple(t.shape)}); the video or image batch is empty")
    if C != 3:
        raise InputError(f"{where}: shape {tuple(t.shape)} has {C} channel(s) in the last dim; "
                         f"expected 3 (RGB). Convert to RGB first (e.g. imanim_core.io.video.to_rgb, or ComfyUI's "
                         f"image/mask nodes)")
    if H == 0 or W == 0:
        raise InputError(f"{where}: frames have an empty side, shape {tuple(t.shape)}")
    return to_float(t, where)


def preprocess_frames(frames, image_size: int, chunk: int = 32) -> torch.Tensor:
    """Frames -> tokenizer input ``[T,3,S,S]`` float32 in [0, 1].

    ``frames``: uint8 numpy ``[T,H,W,3]`` (the video reader) or a float tensor ``[T,H,W,3]`` in [0, 1] (ComfyUI
    IMAGE); a single ``[H,W,3]`` image counts as one frame. The shorter side is padded with zeros (black), centred,
    to a square, which is resized to ``image_size`` with antialiased bilinear interpolation (area-averaging when
    shrinking, so no aliasing). No mean/std normalisation. Works in chunks of ``chunk`` frames to bound memory.
    Returned on the device of a tensor input (CPU for numpy).
    """
    S = int(image_size)
    if S <= 0:
        raise InputError(f"image_size must be positive, got {image_size}")
    if isinstance(frames, np.ndarray) or isinstance(frames, torch.Tensor):
        shape = tuple(frames.shape)
    else:
        raise InputError(f"frames: expected a numpy array or a torch tensor [T,H,W,3], got {type(frames).__name__}")
    if len(shape) == 3:
        frames = frames[None]
    n = frames.shape[0] if len(shape) in (3, 4) else 0
    # validate on a cheap view first (shape / channel errors for empty or malformed inputs)
    if len(shape) not in (3, 4) or n == 0:
        _to_float_frames(frames, "frames")
    out = []
    for s in range(0, n, chunk):
        x = _to_float_frames(frames[s:s + chunk], "frames")  # [t,H,W,3]
        t, H, W, _ = x.shape
        x = x.permute(0, 3, 1, 2)  # [t,3,H,W]
        L = max(H, W)
        if H != W:
            top, left = (L - H) // 2, (L - W) // 2
            x = F.pad(x, (left, L - W - left, top, L - H - top), value=0.0)
        if L != S:
            x = F.interpolate(x, size=(S, S), mode="bilinear", align_corners=False, antialias=True)
        out.append(x.clamp(0.0, 1.0).contiguous())  # not in place: x may be a view of the input
    return torch.cat(out, 0) if len(out) > 1 else out[0]


# -------------------------------------------------------------------------------------------------- modules
class VectorQuantizer(nn.Module):
    """Nearest-neighbour quantiser on the unit sphere (L2-normalised inputs and codebook), straight-through.

    ``loss = commitment * mse(zq.detach(), z) + mse(zq, z.detach())`` with z, zq normalised.
    """

    def __init__(self, codebook_size: int, token_dim: int, commitment: float = 0.25):
        super().__init__()
        self.embedding = nn.Embedding(codebook_size, token_dim)
        self.commitment = float(commitment)

    def normalized_codebook(self) -> torch.Tensor:
        return F.normalize(self.embedding.weight.float(), dim=-1)

    def forward(self, z: torch.Tensor):
        """z [..., d] -> (codes [..., d] float32 straight-through, indices [...] int64, loss scalar)."""
        zn = F.normalize(z.float(), dim=-1)
        cb = self.normalized_codebook()
        # on the unit sphere, the nearest code (L2) is the one with the largest dot product
        idx = (zn @ cb.t()).argmax(dim=-1)
        zq = cb[idx]
        loss = self.commitment * F.mse_loss(zq.detach(), zn) + F.mse_loss(zq, zn.detach())
        codes = zn + (zq - zn).detach()
        return codes, idx, loss

    def lookup(self, indices: torch.Tensor) -> torch.Tensor:
        n = self.embedding.num_embeddings
        if indices.dtype.is_floating_point or indices.dtype == torch.bool:
            raise InputError(f"indices: expected an integer tensor, got {indices.dtype}")
        if indices.numel() and (int(indices.min()) < 0 or int(indices.max()) >= n):
            raise InputError(f"indices: values must be in [0, {n - 1}] for a codebook of {n} entries, got range "
                             f"[{int(indices.min())}, {int(indices.max())}]")
        return self.normalized_codebook()[indices.long()]


class MotionEncoder(nn.Module):
    """The TiTok-style ViT (released names under ``encoder.``)."""

    def __init__(self, cfg: TokenizerConfig):
        super().__init__()
        W, p = cfg.width, cfg.patch_size
        gh, gw = cfg.grid_hw
        if gh <= 0 or gw <= 0:
            raise InputError(f"tokenizer config gives an empty patch grid {gh}x{gw} "
                             f"(image_size={cfg.image_size}, patch_size={p}, patch_padding={cfg.patch_padding})")
        self.cfg = cfg
        self.num_patches = gh * gw
        self.patch_embed = nn.Conv2d(3, W, kernel_size=p, stride=p, padding=_pair(cfg.patch_padding), bias=True)
        self.class_embedding = nn.Parameter(torch.empty(1, W))
        self.positional_embedding = nn.Parameter(torch.empty(1 + gh * gw, W))
        self.latent_token_positional_embedding = nn.Parameter(torch.empty(cfg.num_latent_tokens, W))
        self.ln_pre = nn.LayerNorm(W)
        self.transformer = nn.ModuleList(
            [ResidualAttentionBlock(W, cfg.heads, cfg.mlp_ratio) for _ in range(cfg.layers)])
        self.ln_post = nn.LayerNorm(W)
        self.conv_out = nn.Conv2d(W, cfg.token_dim, kernel_size=1, bias=True)

    def forward(self, pixels: torch.Tensor, latent_tokens: torch.Tensor) -> torch.Tensor:
        """pixels [B,3,S,S] -> z [B,K,d] (model dtype)."""
        B = pixels.shape[0]
        W, K, d = self.cfg.width, self.cfg.num_latent_tokens, self.cfg.token_dim
        x = self.patch_embed(pixels)  # [B,W,gh,gw]
        x = x.flatten(2).transpose(1, 2)  # [B,gh*gw,W]
        x = torch.cat([self.class_embedding.to(x.dtype).expand(B, -1, -1), x], dim=1)
        x = x + self.positional_embedding.to(x.dtype)
        lat = (latent_tokens + self.latent_token_positional_embedding).to(x.dtype).expand(B, -1, -1)
        x = torch.cat([x, lat], dim=1)
        x = self.ln_pre(x)
        for blk in self.transformer:
            x = blk(x)
        x = self.ln_post(x[:, 1 + self.num_patches:])  # [B,K,W]
        if self.cfg.legacy_output:
            # the released model reinterprets the memory of [B,K,W] as [B,W,K,1] (a reshape, not a transpose)
            x = x.reshape(B, W, K, 1)
        else:
            x = x.transpose(1, 2).reshape(B, W, K, 1)
        z = self.conv_out(x)  # [B,d,K,1]
        return z.reshape(B, d, K).transpose(1, 2)  # [B,K,d]


class ConvMotionEncoder(nn.Module):
    """The tiny model's motion encoder (``TokenizerConfig.encoder == "conv"``): pixels ``[B,3,S,S]`` -> z ``[B,K,d]``.

    A full-resolution CNN (3x3 convs, dilations 1, 1, 1, 2, 4; ``width`` channels) gives features F; each of the K
    latent tokens is a soft-attention pool over all S*S positions (logits: a 1x1 conv of F, times
    ``ATTN_SCALE``) of [16 value channels of F, the pixel's (x, y) in [-1, 1]], projected to d channels. The first
    ``min(K, J)`` attention maps are also returned as ``joint_logits``: stage 1 supervises them with the joint
    heatmaps (an auxiliary loss, training only), which is what breaks the mean-pose plateau.

    Why not the ViT at this size: measured on the puppet world (64 px input, 300-800 steps), a tiny ViT tokenizer,
    a strided CNN and a CNN with an unanchored attention pool all stayed exactly on the mean pose (keypoint error
    4.0-4.5 heatmap px, outputs independent of the input: the decoder learns the mean pose before the encoder's
    codes vary, and then nothing pulls them); this encoder reached 2.5 px in 300 steps.
    """

    ATTN_SCALE = 30.0
    VALUE_CH = 16

    def __init__(self, cfg: TokenizerConfig):
        super().__init__()
        c = int(cfg.width)
        self.cfg = cfg

        def conv(i, o, dil=1):
            return nn.Conv2d(i, o, 3, padding=dil, dilation=dil)

        self.features = nn.Sequential(conv(3, 32), nn.ReLU(), conv(32, c), nn.ReLU(), conv(c, c), nn.ReLU(),
                                      conv(c, c, 2), nn.ReLU(), conv(c, c, 4), nn.ReLU())
        self.attn = nn.Conv2d(c, cfg.num_latent_tokens, 1)
        self.value = nn.Conv2d(c, self.VALUE_CH, 1)
        self.proj = nn.Linear(self.VALUE_CH + 2, cfg.token_dim)

    def forward(self, pixels: torch.Tensor, latent_tokens=None):
        """pixels [B,3,S,S] -> (z [B,K,d], attention logits [B,K,S,S])."""
        f = self.features(pixels)
        b, _, h, w = f.shape
        logits = self.attn(f)
        a = (logits.flatten(2) * self.ATTN_SCALE).softmax(-1)  # [B,K,HW]
        ys, xs = torch.meshgrid(torch.linspace(-1, 1, h, device=f.device, dtype=f.dtype),
                                torch.linspace(-1, 1, w, device=f.device, dtype=f.dtype), indexing="ij")
        pos = torch.stack([xs, ys], -1).view(1, h * w, 2).expand(b, -1, -1)
        v = torch.cat([self.value(f).flatten(2).transpose(1, 2), pos], -1)  # [B,HW,16+2]
        return self.proj(a @ v), logits


class MotionTokenizer(nn.Module):
    """``MotionTokenizer(cfg)``; state dict keys = the released layout (``latent_tokens``, ``quantize.*``,
    ``encoder.*``)."""

    def __init__(self, cfg: Optional[TokenizerConfig] = None):
        super().__init__()
        cfg = cfg or TokenizerConfig()
        if not isinstance(cfg, TokenizerConfig):
            raise InputError(f"MotionTokenizer expects a TokenizerConfig, got {type(cfg).__name__}")
        self.cfg = cfg
        self.quantize = VectorQuantizer(cfg.codebook_size, cfg.token_dim, cfg.commitment)
        if getattr(cfg, "encoder", "vit") == "conv":
            self.register_parameter("latent_tokens", None)
            self.encoder = ConvMotionEncoder(cfg)  # PyTorch's default init (what was measured)
            with torch.no_grad():
                self.quantize.embedding.weight.normal_(0.0, 1.0)
            return
        if getattr(cfg, "encoder", "vit") != "vit":
            raise InputError(f"TokenizerConfig.encoder: expected 'vit' or 'conv', got {cfg.encoder!r}")
        self.latent_tokens = nn.Parameter(torch.empty(cfg.num_latent_tokens, cfg.width))
        self.encoder = MotionEncoder(cfg)
        self.reset_parameters()

    @property
    def config(self) -> TokenizerConfig:
        return self.cfg

    @torch.no_grad()
    def reset_parameters(self):
        """Training init: trunc-normal(0.02) linear/conv weights, zero biases, unit LayerNorms, embeddings and latent
        tokens ~ N(0, W^-0.5), codebook ~ N(0, 1) (only its direction matters)."""
        if self.latent_tokens.is_meta:
            return
        W = self.cfg.width
        scale = W ** -0.5
        for m in self.modules():
            if isinstance(m, (nn.Linear, nn.Conv2d)):
                trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        for blk in self.encoder.transformer:  # packed qkv: same init as the other linears
            trunc_normal_(blk.attn.in_proj_weight, std=0.02)
            nn.init.zeros_(blk.attn.in_proj_bias)
        for p in (self.latent_tokens, self.encoder.class_embedding, self.encoder.positional_embedding,
                  self.encoder.latent_token_positional_embedding):
            p.normal_(0.0, scale)
        self.quantize.embedding.weight.normal_(0.0, 1.0)

    # ------------------------------------------------------------------------------------------------ API
    def _check_pixels(self, pixels) -> torch.Tensor:
        S = self.cfg.image_size
        if not isinstance(pixels, torch.Tensor):
            raise InputError(f"pixels: expected a torch tensor [B,3,{S},{S}], got {type(pixels).__name__}")
        if pixels.ndim != 4 or pixels.shape[1] != 3 or pixels.shape[2] != S or pixels.shape[3] != S:
            raise InputError(f"pixels: expected [B,3,{S},{S}] in [0, 1] (use preprocess_frames), "
                             f"got shape {tuple(pixels.shape)}")
        if pixels.shape[0] == 0:
            raise InputError("pixels: empty batch")
        if not pixels.is_floating_point():
            raise InputError(f"pixels: expected a float tensor in [0, 1], got {pixels.dtype}")
        w = next(self.encoder.parameters())
        return pixels.to(device=w.device, dtype=w.dtype)

    def encode(self, pixels: torch.Tensor) -> dict:
        """pixels [B,3,S,S] in [0,1] -> {"indices" [B,K] int64, "codes" [B,K,d] float32 (L2-normalised codebook rows,
        straight-through), "z" [B,K,d] float32 (encoder output before normalisation), "loss" (VQ loss)}."""
        out = self.encoder(self._check_pixels(pixels), self.latent_tokens)
        extra = {}
        if isinstance(out, tuple):  # conv encoder: (z, attention logits)
            out, extra["attn_logits"] = out
        z = out.float()
        codes, indices, loss = self.quantize(z)
        return {"indices": indices, "codes": codes, "z": z, "loss": loss, **extra}

    forward = encode

    def lookup(self, indices: torch.Tensor) -> torch.Tensor:
        """indices [...] -> codes [..., d] float32 (normalised codebook rows)."""
        return self.quantize.lookup(indices)

    @torch.no_grad()
    def encode_frames(self, frames, batch_size: int = 16, progress: Optional[ProgressFn] = None,
                      should_stop: Optional[Callable[[], bool]] = None, preprocessed: Optional[bool] = None):
        """Encode a whole video without gradients, ``batch_size`` frames at a time.

        ``frames``: ComfyUI IMAGE ``[T,H,W,3]`` (float tensor in [0,1] or uint8 numpy) — preprocessed here batch by
        batch — or already preprocessed ``[T,3,S,S]`` (auto-detected; force with ``preprocessed``).
        ``progress(done, total)`` is called after each batch; ``should_stop()`` before each batch (return True to
        stop: raises :class:`StopRequested`; it may also raise its own exception, as ComfyUI's interrupt check does).
        Returns ``(indices [T,K] int64, codes [T,K,d] float32)`` on the CPU.
        """
        if batch_size is None or int(batch_size) < 1:
            raise InputError(f"batch_size must be >= 1, got {batch_size}")
        batch_size = int(batch_size)
        S = self.cfg.image_size
        if preprocessed is None:
            preprocessed = (isinstance(frames, torch.Tensor) and frames.ndim == 4 and frames.shape[1] == 3
                            and frames.shape[2] == S and frames.shape[3] == S and frames.shape[-1] != 3)
        if not isinstance(frames, (np.ndarray, torch.Tensor)):
            raise InputError(f"frames: expected a numpy array or a torch tensor, got {type(frames).__name__}")
        total = int(frames.shape[0]) if frames.ndim >= 1 else 0
        if total == 0:
            raise InputError(f"frames: no frames to encode (shape {tuple(frames.shape)})")
        # validate shape/channels once, before any work
        if preprocessed:
            self._check_pixels(frames[:1])
        else:
            preprocess_frames(frames[:1], S)
        was_training = self.training
        self.eval()
        idx_out, code_out = [], []
        try:
            done = 0
            while done < total:
                if should_stop is not None and should_stop():
                    raise StopRequested(done, total)
                chunk = frames[done:done + batch_size]
                pix = chunk if preprocessed else preprocess_frames(chunk, S)
                r = self.encode(pix)
                idx_out.append(r["indices"].cpu())
                code_out.append(r["codes"].cpu())
                done += pix.shape[0]
                if progress is not None:
                    progress(done, total)
        finally:
            self.train(was_training)
        return torch.cat(idx_out, 0), torch.cat(code_out, 0)


# ----------------------------------------------------------------------------------------------- utilities
def encoder_flops_per_frame(cfg: TokenizerConfig) -> dict:
    """Analytic multiply-add FLOPs (2 per MAC) of one frame through the encoder: patch conv, attention
    (qkv, scores, weighted sum, output projection), MLP, conv_out. LayerNorm, softmax, GELU and the quantiser
    are left out (< 1%)."""
    gh, gw = cfg.grid_hw
    W, K, d, p = cfg.width, cfg.num_latent_tokens, cfg.token_dim, cfg.patch_size
    N = 1 + gh * gw + K
    Hm = int(W * cfg.mlp_ratio)
    patch = 2 * gh * gw * W * 3 * p * p
    attn = cfg.layers * (2 * N * W * 3 * W + 2 * 2 * N * N * W + 2 * N * W * W)
    mlp = cfg.layers * (2 * 2 * N * W * Hm)
    out = 2 * K * W * d
    return {"patch_embed": patch, "attention": attn, "mlp": mlp, "conv_out": out,
            "total": patch + attn + mlp + out}


def auto_dtype(device="cpu", width: int = 1024, ratio_needed: float = 1.25) -> tuple:
    """Pick the compute dtype for inference on ``device``: ``(torch.dtype, reason)``.

    CUDA: bf16 where supported, else fp16. CPU: bf16 only where a small matmul probe shaped like the MLP of an
    encoder of this ``width`` ([256, width] x [width, 4*width]) is measured at least ``ratio_needed`` x faster than
    fp32 on this machine, else fp32 (~0.1 s).
    """
    dev = torch.device(device)
    if dev.type == "cuda":
        if torch.cuda.is_bf16_supported():
            return torch.bfloat16, "bf16 (CUDA with bf16 support)"
        return torch.float16, "fp16 (CUDA without bf16 support)"
    if dev.type != "cpu":
        return torch.float32, f"fp32 (no probe for device type {dev.type!r})"

    from ..precision import cpu_bf16_speedup

    ratio = cpu_bf16_speedup("matmul", width)
    if ratio <= 0:
        return torch.float32, "fp32 (the bf16 probe failed on this CPU)"
    if ratio >= ratio_needed:
        return torch.bfloat16, f"bf16 (a matmul probe ran {ratio:.1f}x faster than fp32 on this CPU)"
    return torch.float32, f"fp32 (bf16 was only {ratio:.2f}x as fast as fp32 on this CPU)"


__all__ = ["MotionTokenizer", "MotionEncoder", "VectorQuantizer", "StopRequested", "preprocess_frames",
           "encoder_flops_per_frame", "auto_dtype"]
