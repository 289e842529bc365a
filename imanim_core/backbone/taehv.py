"""The tiny video autoencoder of the embedded model, in the *TAEHV* key layout (Wan 2.1 latent space).

Why: the embedded model needs a VAE that a 2-core CPU can train to a sharp reconstruction in minutes and that
ComfyUI's stock *Load VAE* reads. A Wan 2.1 ``AutoencoderKLWan`` shrunk to base_dim 16 did neither (3D convs fall
to ATen's ``slow_conv3d`` in fp32 on CPU, and it plateaued at ~18 dB). ComfyUI >= 0.8 detects this layout by
``decoder.22.bias`` and, for a float32 file with 16 latent channels, runs it as a Wan 2.1 VAE without any latent
scaling (``latent_format=None``): 8x spatial and 4x temporal compression, ``T -> ceil(T / 4)`` latents when
encoding (the clip is padded with its last frame to a multiple of 4) and ``L -> 4L - 3`` frames when decoding.
**Store it in float32**: ComfyUI takes a float16 file of this layout for HunyuanVideo's scaling.

The architecture (2D convolutions; time is mixed only by ``TimePool`` / ``TimeGrow`` and by the causal
``MemoryBlock``, which sees the previous frame's input) is written here from the public layout; the module
indices of the two ``nn.Sequential`` stacks *are* the key names, so do not reorder them.

Conventions of this module (host-neutral, like ``wan.vae_encode``/``vae_decode`` which call it):
``encode_raw(video)``: ``[B, 3, T, H, W]`` in [-1, 1] -> raw Wan 2.1 latent ``[B, 16, ceil(T/4), H/8, W/8]``;
``decode_raw(latent)``: raw latent ``[B, 16, L, h, w]`` -> ``[B, 3, 4L-3, 8h, 8w]`` in [-1, 1].
The network itself works on [0, 1] images (as ComfyUI feeds it). Time runs batched (all frames at once), which is
the same arithmetic as ComfyUI's frame-by-frame loop.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..errors import InputError

LATENT_CHANNELS = 16
ANCHOR_KEY = "decoder.22.bias"  # what ComfyUI (comfy/sd.py) detects this layout by
ENC_WIDTH = 64
DEC_WIDTHS = (256, 128, 64, 64)
TIME_STRIDE = 4
# the colour path of a fresh VAE (TinyVideoVAE._init_colour_path): latent channels with Wan 2.1 means near 0, gain
COLOUR_LATENTS = (3, 9, 15)
COLOUR_GAIN = 4.0


def _conv(cin: int, cout: int, stride: int = 1, bias: bool = True) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=bias)


class SoftClamp(nn.Module):
    """``3 * tanh(x / 3)``: keeps latents the decoder sees within about +-3."""

    def forward(self, x):
        return torch.tanh(x / 3.0) * 3.0


class MemoryBlock(nn.Module):
    """Residual block that also sees the previous frame's input (zeros for the first frame)."""

    def __init__(self, ch: int):
        super().__init__()
        self.conv = nn.Sequential(_conv(2 * ch, ch), nn.ReLU(), _conv(ch, ch), nn.ReLU(), _conv(ch, ch))
        self.skip = nn.Identity()
        self.act = nn.ReLU()

    def forward(self, x, frames: int):
        bt, c, h, w = x.shape
        v = x.view(bt // frames, frames, c, h, w)
        past = torch.cat([torch.zeros_like(v[:, :1]), v[:, :-1]], dim=1).reshape(bt, c, h, w)
        return self.act(self.conv(torch.cat([x, past], 1)) + self.skip(x))


class TimePool(nn.Module):
    """``stride`` consecutive frames -> one frame (a 1x1 conv over their stacked channels)."""

    def __init__(self, ch: int, stride: int):
        super().__init__()
        self.stride = stride
        self.conv = nn.Conv2d(ch * stride, ch, 1, bias=False)

    def forward(self, x):
        bt, c, h, w = x.shape
        return self.conv(x.reshape(bt // self.stride, self.stride * c, h, w))


class TimeGrow(nn.Module):
    """One frame -> ``stride`` frames (a 1x1 conv to ``stride`` times the channels, split in time)."""

    def __init__(self, ch: int, stride: int):
        super().__init__()
        self.stride = stride
        self.conv = nn.Conv2d(ch, ch * stride, 1, bias=False)

    def forward(self, x):
        bt, c, h, w = x.shape
        return self.conv(x).reshape(bt * self.stride, c, h, w)


def _run(stack: nn.Sequential, x: torch.Tensor) -> torch.Tensor:
    """x [B, T, C, H, W] through a stack whose time length changes at TimePool/TimeGrow -> [B, T', C', H', W']."""
    b, t = x.shape[:2]
    y = x.reshape(b * t, *x.shape[2:])
    for m in stack:
        if isinstance(m, MemoryBlock):
            y = m(y, y.shape[0] // b)
        else:
            y = m(y)
    return y.view(b, y.shape[0] // b, *y.shape[1:])


class TinyVideoVAE(nn.Module):
    """TAEHV-layout autoencoder for the Wan 2.1 latent space (see the module docstring)."""

    is_tiny_video_vae = True

    def __init__(self, latent_channels: int = LATENT_CHANNELS):
        super().__init__()
        if int(latent_channels) != LATENT_CHANNELS:
            raise InputError(f"TinyVideoVAE: only the Wan 2.1 latent space (16 channels) is supported, "
                             f"got {latent_channels}")
        e, (d0, d1, d2, d3) = ENC_WIDTH, DEC_WIDTHS
        zc = LATENT_CHANNELS

        def mem(ch, n=3):
            return [MemoryBlock(ch) for _ in range(n)]

        self.encoder = nn.Sequential(
            _conv(3, e), nn.ReLU(),
            TimePool(e, 2), _conv(e, e, stride=2, bias=False), *mem(e),
            TimePool(e, 2), _conv(e, e, stride=2, bias=False), *mem(e),
            TimePool(e, 1), _conv(e, e, stride=2, bias=False), *mem(e),
            _conv(e, zc),
        )
        self.decoder = nn.Sequential(
            SoftClamp(), _conv(zc, d0), nn.ReLU(),
            *mem(d0), nn.Upsample(scale_factor=2), TimeGrow(d0, 1), _conv(d0, d1, bias=False),
            *mem(d1), nn.Upsample(scale_factor=2), TimeGrow(d1, 2), _conv(d1, d2, bias=False),
            *mem(d2), nn.Upsample(scale_factor=2), TimeGrow(d2, 2), _conv(d2, d3, bias=False),
            nn.ReLU(), _conv(d3, 3),
        )
        self.frames_to_trim = TIME_STRIDE - 1

    @property
    def config(self):
        """A read-only description in the spirit of diffusers' ``model.config`` (``z_dim`` as AutoencoderKLWan)."""
        from types import SimpleNamespace

        return SimpleNamespace(architecture="TinyVideoVAE", latent_channels=LATENT_CHANNELS, z_dim=LATENT_CHANNELS)

    @property
    def dtype(self) -> torch.dtype:
        return self.decoder[1].weight.dtype

    @staticmethod
    def latent_frames(num_frames: int) -> int:
        return -(-int(num_frames) // TIME_STRIDE)

    def encode_raw(self, video: torch.Tensor) -> torch.Tensor:
        """``[B, 3, T, H, W]`` in [-1, 1] (H, W multiples of 8) -> raw latent ``[B, 16, ceil(T/4), H/8, W/8]``."""
        if video.ndim != 5 or video.shape[1] != 3:
            raise InputError(f"video to encode: expected [B, 3, T, H, W], got shape {tuple(video.shape)}")
        x = ((video + 1.0) * 0.5).movedim(2, 1)  # [B, T, 3, H, W] in [0, 1]
        t = x.shape[1]
        if t % TIME_STRIDE:
            x = torch.cat([x, x[:, -1:].expand(-1, TIME_STRIDE - t % TIME_STRIDE, -1, -1, -1)], dim=1)
        return _run(self.encoder, x.to(self.dtype)).movedim(1, 2)

    def decode_raw(self, latent: torch.Tensor) -> torch.Tensor:
        """Raw latent ``[B, 16, L, h, w]`` -> ``[B, 3, 4L-3, 8h, 8w]`` in [-1, 1] (not clamped)."""
        if latent.ndim != 5 or latent.shape[1] != LATENT_CHANNELS:
            raise InputError(f"latent to decode: expected [B, 16, L, h, w], got shape {tuple(latent.shape)}")
        y = _run(self.decoder, latent.movedim(1, 2).to(self.dtype))
        return (y[:, self.frames_to_trim:] * 2.0 - 1.0).movedim(1, 2)

    def init_for_training(self, latents_mean) -> None:
        """Fresh training start that trains fast without normalisation layers (measured: PyTorch's default init
        left this ~40-conv ReLU stack at 18 dB after 475 steps). He-normal convs; every memory block starts as
        the identity (last conv zero); TimePool starts as the average of its frames and TimeGrow as copies; the
        encoder's last conv starts at the Wan 2.1 channel means (the normalised latent starts centred); then the
        block-colour path of :meth:`_init_colour_path`, so a fresh VAE already reconstructs 8x8-block colours."""
        with torch.no_grad():
            for m in self.modules():
                if isinstance(m, nn.Conv2d):
                    nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
                    if m.bias is not None:
                        nn.init.zeros_(m.bias)
            for m in self.modules():
                if isinstance(m, MemoryBlock):
                    nn.init.zeros_(m.conv[4].weight)
                    nn.init.zeros_(m.conv[4].bias)
                elif isinstance(m, TimePool):
                    c = m.conv.weight.shape[0]
                    eye = torch.eye(c).view(c, c, 1, 1) / m.stride
                    m.conv.weight.copy_(eye.repeat(1, m.stride, 1, 1))
                elif isinstance(m, TimeGrow):
                    c = m.conv.weight.shape[1]
                    m.conv.weight.copy_(torch.eye(c).view(c, c, 1, 1).repeat(m.stride, 1, 1, 1))
            last = self.encoder[-1]
            last.weight.mul_(0.1)
            last.bias.copy_(torch.as_tensor(latents_mean, dtype=last.bias.dtype))
            self.decoder[-1].weight.mul_(0.1)
            self._init_colour_path(latents_mean)  # then the block-colour path (v3; see its docstring)

    def _init_colour_path(self, latents_mean) -> None:
        """A colour path by construction: feature channels 0-2 carry the RGB image through the encoder (identity
        taps, 2x2 averages at the strided convs, the frame average of ``TimePool``; the memory blocks start as the
        identity and ReLU keeps the non-negative values), latent channels ``COLOUR_LATENTS`` hold the mean colour
        of each 8x8 block of 4 frames (``COLOUR_GAIN * (colour - 0.5)`` around the Wan 2.1 channel mean), and the
        decoder carries them back to the output the same way (nearest-neighbour upsampling). A fresh VAE thus
        starts as "8x-down, nearest-up" with exact block colours, and training learns the detail on top.

        Why (measured on v2, 1850 steps from the plain init): a flat image whose green goes 0.2 -> 0.7 decoded to
        0.34 -> 0.39; the latent carried almost no colour, and the character's colours came out wrong."""
        enc, dec = self.encoder, self.decoder
        rgb = range(3)

        def identity_taps(conv, scale=1.0, taps=((1, 1),)):
            conv.weight[:3].zero_()
            for c in rgb:
                for ky, kx in taps:
                    conv.weight[c, c, ky, kx] = scale
            if conv.bias is not None:
                conv.bias[:3].zero_()

        identity_taps(enc[0])
        for m in enc:
            if isinstance(m, nn.Conv2d) and m.stride == (2, 2):
                identity_taps(m, 0.25, ((1, 1), (1, 2), (2, 1), (2, 2)))
        last = enc[-1]
        for c, lc in zip(rgb, COLOUR_LATENTS):
            last.weight[lc].zero_()
            last.weight[lc, c, 1, 1] = COLOUR_GAIN
            last.bias[lc] = float(latents_mean[lc]) - 0.5 * COLOUR_GAIN
        first = dec[1]
        first.weight[:3].zero_()
        for c, lc in zip(rgb, COLOUR_LATENTS):
            first.weight[c, lc, 1, 1] = 1.0 / COLOUR_GAIN
            first.bias[c] = 0.5 - float(latents_mean[lc]) / COLOUR_GAIN
        for m in list(dec)[2:-1]:
            if isinstance(m, nn.Conv2d):
                identity_taps(m)
        out = dec[-1]
        out.weight.zero_()
        for c in rgb:
            out.weight[c, c, 1, 1] = 1.0
        out.bias.zero_()


def is_tiny_video_vae_keys(keys) -> bool:
    """Whether a state dict / key list is in the TAEHV layout."""
    ks = set(keys)
    return ANCHOR_KEY in ks and "encoder.0.weight" in ks


__all__ = ["TinyVideoVAE", "ANCHOR_KEY", "is_tiny_video_vae_keys", "LATENT_CHANNELS"]
