"""Motion injection into a Wan DiT (DESIGN §3, §4).

``MotionInjector``: per-frame retargeted tokens ``[B, T, gh, gw, Dr]`` (T = 4n+1) -> per-latent-frame
injection ``[B, dit_dim, T', gh, gw]`` with T' = (T-1)/4 + 1. Frames are grouped the way the Wan VAE groups
them: latent frame 0 <- frame 0 alone (replicated 4x so that one layer serves every latent frame), latent
frame i >= 1 <- frames 4i-3 .. 4i; the 4 frames' channels are concatenated (in time order) ->
``Linear(4 Dr, hidden)`` -> SiLU -> ``Linear(hidden, dit_dim)`` whose weight and bias start at zero, so an
untrained injector changes nothing.

``InjectedPatchEmbedding``: wraps the DiT's own patch-embedding ``Conv3d`` (kernel (1, 2, 2)) and adds the
injection to its output for the first T' latent frames (an appended reference frame is left untouched). The
same wrapper serves both hosts: diffusers (``attach_to`` / ``detach`` swap the ``patch_embedding`` attribute)
and ComfyUI (``model.add_object_patch("diffusion_model.patch_embedding", InjectedPatchEmbedding(conv, inj))``).
The addition itself lives in one function, :func:`apply_injection`.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn as nn

from ..config import InjectorConfig
from ..errors import InputError


def group_frames(tokens: torch.Tensor, stride: int = 4) -> torch.Tensor:
    """[B, T, gh, gw, C] (T = stride*n + 1) -> [B, T', gh, gw, stride*C]: frame 0 replicated ``stride`` times,
    then consecutive groups of ``stride`` frames, channels concatenated in time order."""
    if tokens.dim() != 5:
        raise InputError(f"motion tokens: expected [B, T, gh, gw, C], got shape {tuple(tokens.shape)}")
    b, t, gh, gw, c = tokens.shape
    if t < 1 or (t - 1) % stride:
        lo = (max(t - 1, 0) // stride) * stride + 1
        raise InputError(f"motion tokens: the number of frames must be {stride}n+1 (1, {stride + 1}, "
                         f"{2 * stride + 1}, ...) to match the Wan VAE's latent frames, got T={t} "
                         f"(nearest valid: {lo} or {lo + stride})")
    first = tokens[:, :1].expand(b, stride, gh, gw, c)[:, None]  # [B, 1, s, gh, gw, C]
    rest = tokens[:, 1:].reshape(b, (t - 1) // stride, stride, gh, gw, c)
    g = torch.cat([first, rest], dim=1)  # [B, T', s, gh, gw, C]
    return g.permute(0, 1, 3, 4, 2, 5).reshape(b, g.shape[1], gh, gw, stride * c)


class MotionInjector(nn.Module):
    """``MotionInjector(cfg)(tokens[B, T, gh, gw, Dr]) -> [B, dit_dim, T', gh, gw]`` (zero-initialised output)."""

    def __init__(self, cfg: InjectorConfig):
        super().__init__()
        self.cfg = cfg
        self.fc1 = nn.Linear(cfg.temporal_stride * cfg.in_dim, cfg.hidden)
        self.act = nn.SiLU()
        self.fc2 = nn.Linear(cfg.hidden, cfg.dit_dim)
        nn.init.zeros_(self.fc2.weight)
        nn.init.zeros_(self.fc2.bias)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        cfg = self.cfg
        if tokens.dim() != 5 or tokens.shape[-1] != cfg.in_dim:
            raise InputError(f"retargeted motion tokens: expected [B, T, gh, gw, Dr={cfg.in_dim}], "
                             f"got shape {tuple(tokens.shape)}")
        w = self.fc1.weight
        g = group_frames(tokens.to(w.device, w.dtype), cfg.temporal_stride)
        y = self.fc2(self.act(self.fc1(g)))  # [B, T', gh, gw, dit_dim]
        return y.permute(0, 4, 1, 2, 3)


def apply_injection(y: torch.Tensor, injection: Optional[torch.Tensor]) -> torch.Tensor:
    """Add ``injection`` [Bm, D, T', gh, gw] to the patch-embedding output ``y`` [B, D, F, gh, gw].

    Only latent frames ``[:T']`` get it (frames appended after them — a reference latent — are untouched);
    when B is a multiple of Bm (classifier-free guidance stacks cond/uncond) the injection is repeated; it is
    cast to y's dtype and device. Returns a new tensor (``y`` itself when ``injection`` is None)."""
    if injection is None:
        return y
    if y.dim() != 5 or injection.dim() != 5:
        raise InputError(f"motion injection: expected 5D [B, C, F, gh, gw] tensors, got patch embedding "
                         f"{tuple(y.shape)} and injection {tuple(injection.shape)}")
    b, d, f, gh, gw = y.shape
    bm, dm, tm, mh, mw = injection.shape
    if (mh, mw) != (gh, gw):
        raise InputError(f"motion injection: the motion tokens are on a {mh}x{mw} grid but the DiT's patch grid "
                         f"is {gh}x{gw}; the identity image / latent and the video must have the same size")
    if dm != d:
        raise InputError(f"motion injection: the injector outputs {dm} channels but the DiT width is {d} "
                         "(injector trained for another Wan model?)")
    if tm > f:
        raise InputError(f"motion injection: the motion covers {tm} latent frames but the DiT input has only {f}")
    if b != bm:
        if bm == 0 or b % bm:
            raise InputError(f"motion injection: DiT batch {b} is not a multiple of the motion batch {bm}")
        injection = injection.repeat(b // bm, 1, 1, 1, 1)
    injection = injection.to(device=y.device, dtype=y.dtype)
    if tm == f:
        return y + injection
    return torch.cat([y[:, :, :tm] + injection, y[:, :, tm:]], dim=2)


class InjectedPatchEmbedding(nn.Module):
    """The DiT's patch embedding plus the motion injection.

    ``forward(x)``: ``y = conv(x)`` -> ``apply_injection(y, injector(motion))`` when motion is set.
    ``.weight`` / ``.bias`` (and the conv geometry: ``kernel_size``, ``stride``, ``in_channels``, ...) are the
    wrapped conv's, so host code that reads (or replaces) ``patch_embedding.weight`` keeps working. The injection is
    recomputed at each forward, so the injector trains end to end.
    """

    _DELEGATED = ("weight", "bias")
    # read-only conv geometry forwarded to the conv; deliberately NOT host flags such as ComfyUI's
    # ``comfy_cast_weights`` (the wrapper must not look like a castable weight module itself)
    _CONV_ATTRS = ("in_channels", "out_channels", "kernel_size", "stride", "padding", "dilation", "groups",
                   "padding_mode")

    def __init__(self, conv: nn.Module, injector: MotionInjector):
        super().__init__()
        if isinstance(conv, InjectedPatchEmbedding):
            conv = conv.conv
        self.conv = conv
        self.injector = injector
        self._motion: Optional[torch.Tensor] = None

    @property
    def weight(self):
        return self.conv.weight

    @property
    def bias(self):
        return self.conv.bias

    def __setattr__(self, name, value):
        if name in self._DELEGATED and "conv" in self._modules:
            setattr(self.conv, name, value)  # e.g. ComfyUI patching patch_embedding.weight
            return
        super().__setattr__(name, value)

    def __getattr__(self, name):
        try:
            return super().__getattr__(name)
        except AttributeError:
            mods = self.__dict__.get("_modules", {})
            if "conv" in mods and name in self._CONV_ATTRS:
                return getattr(mods["conv"], name)
            raise

    def set_motion(self, tokens: Optional[torch.Tensor]) -> None:
        """Retargeted tokens [B, T, gh, gw, Dr] (T = 4n+1) to inject from now on, or None to stop injecting."""
        if tokens is not None:
            cfg = self.injector.cfg
            if not torch.is_tensor(tokens) or tokens.dim() != 5 or tokens.shape[-1] != cfg.in_dim:
                raise InputError(f"retargeted motion tokens: expected [B, T, gh, gw, Dr={cfg.in_dim}], got "
                                 f"{tuple(tokens.shape) if torch.is_tensor(tokens) else type(tokens).__name__}")
            t = tokens.shape[1]
            if t < 1 or (t - 1) % cfg.temporal_stride:
                group_frames(tokens, cfg.temporal_stride)  # raises the 4n+1 error
        self._motion = tokens

    @property
    def motion(self) -> Optional[torch.Tensor]:
        return self._motion

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        if self._motion is None:
            return y
        return apply_injection(y, self.injector(self._motion))


def attach_to(module: nn.Module, injector: MotionInjector) -> InjectedPatchEmbedding:
    """Replace ``module.patch_embedding`` (a diffusers ``WanTransformer3DModel`` or ComfyUI ``WanModel``) by an
    :class:`InjectedPatchEmbedding` around it; re-attaching swaps the injector (and clears the motion). The
    injector is moved to the conv's device (its dtype is kept; the injection is cast at the addition).
    Returns the wrapper; call ``wrapper.set_motion(tokens)`` before running the DiT."""
    pe = getattr(module, "patch_embedding", None)
    if not isinstance(pe, nn.Module):
        raise InputError(f"attach_to: {type(module).__name__} has no `patch_embedding` module (not a Wan DiT?)")
    conv = pe.conv if isinstance(pe, InjectedPatchEmbedding) else pe
    w = getattr(conv, "weight", None)
    if torch.is_tensor(w) and w.device.type != "meta":
        injector.to(w.device)
    wrapper = InjectedPatchEmbedding(conv, injector)
    module.patch_embedding = wrapper
    return wrapper


def detach(module: nn.Module) -> Optional[InjectedPatchEmbedding]:
    """Undo :func:`attach_to`: put the original conv back. Returns the removed wrapper (None if none)."""
    pe = getattr(module, "patch_embedding", None)
    if not isinstance(pe, InjectedPatchEmbedding):
        return None
    module.patch_embedding = pe.conv
    return pe


__all__ = ["InjectedPatchEmbedding", "MotionInjector", "apply_injection", "attach_to", "detach", "group_frames"]
