"""Flow matching as in Wan, with the identity latent appended in time and the motion injector attached.

Conventions (the same in both hosts, DESIGN §4):

- ``sigma`` in [0, 1]; ``x_t = (1 - sigma) * x0 + sigma * eps``; the DiT predicts ``v = eps - x0``;
  the DiT's timestep input is ``1000 * sigma`` (a float, also at sampling time).
- Wan's shift maps a uniform ``s`` to ``shift * s / (1 + (shift - 1) * s)`` (more time at high noise).
- Latents are **normalised** Wan 2.1 latents ``[B, 16, T', h, w]`` (``latents.normalize``).
- The identity/reference latent ``[B, 16, 1, h, w]`` is appended as a **clean** extra frame at the end in time
  (``torch.cat(dim=2)``, ComfyUI's ``time_dim_concat``); the DiT runs on ``T' + 1`` frames with one timestep,
  and only the first ``T'`` output frames are used (no loss on the reference, dropped from samples).
- Motion goes in through ``imanim_core.models.injector`` (an ``InjectedPatchEmbedding`` around
  ``dit.patch_embedding`` that adds the injection to the first ``T'`` frames only); this module only attaches
  it and sets the tokens.
- Text: ``context`` ``[B, L, 4096]`` (umT5 features); :func:`zero_context` is "no text" (what the tiny model uses).

ComfyUI parity: :func:`denoise_once` returns the raw model prediction ``v``; ComfyUI's denoiser output for the
same weights is ``denoised = x_t - sigma * v`` (its flow ``CONST`` model sampling with multiplier 1000).

Sampling is not here: the one sampler is :func:`imanim_core.pipeline.sample_latents` (ComfyUI's euler / simple,
windows from :mod:`imanim_core.windows`); ``tests/test_flow.py`` keeps a diffusers-scheduler sampler as an oracle.
"""
from __future__ import annotations

import contextlib
from typing import Optional

import torch
import torch.nn.functional as F

from ..defaults import DEFAULT_SHIFT  # Wan 2.1 T2V's own sample_shift (ComfyUI's WAN21 default sampling uses 8)
from ..errors import InputError
from ..models import injector as inj

__all__ = [
    "NUM_TRAIN_TIMESTEPS", "DEFAULT_SHIFT", "TEXT_DIM",
    "shift_sigma", "sample_sigmas", "sigma_to_timestep", "add_noise", "flow_target", "zero_context",
    "motion_attached", "dit_forward", "denoise_once", "flow_matching_loss",
]

NUM_TRAIN_TIMESTEPS = 1000
TEXT_DIM = 4096


# ---------------------------------------------------------------------------------------------- noise maths
def shift_sigma(sigma, shift: float = DEFAULT_SHIFT):
    """Wan's timestep shift: ``shift * s / (1 + (shift - 1) * s)`` (works on floats, arrays and tensors)."""
    if shift <= 0:
        raise InputError(f"shift: expected a positive number, got {shift}")
    return shift * sigma / (1 + (shift - 1) * sigma)


def sample_sigmas(batch: int, shift: float = DEFAULT_SHIFT, generator: Optional[torch.Generator] = None,
                  device=None) -> torch.Tensor:
    """Training noise levels ``[batch]``: uniform in [0, 1), then Wan's shift (float32)."""
    gen_device = generator.device if generator is not None else "cpu"
    u = torch.rand(batch, generator=generator, device=gen_device, dtype=torch.float32)
    return shift_sigma(u, shift).to(device if device is not None else u.device)


def sigma_to_timestep(sigma: torch.Tensor) -> torch.Tensor:
    """The DiT's timestep input: ``1000 * sigma``."""
    return sigma * NUM_TRAIN_TIMESTEPS


def _bcast(sigma: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return sigma.to(x.device, x.dtype).reshape(-1, *([1] * (x.ndim - 1)))


def add_noise(x0: torch.Tensor, noise: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """``x_t = (1 - sigma) * x0 + sigma * noise`` with ``sigma`` ``[B]``."""
    s = _bcast(sigma, x0)
    return (1 - s) * x0 + s * noise


def flow_target(x0: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """The velocity the DiT learns: ``noise - x0``."""
    return noise - x0


def zero_context(batch: int, length: int = 1, dim: int = TEXT_DIM, device=None,
                 dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """"No text": zeros ``[batch, length, dim]`` as the text context (the tiny model is trained with it)."""
    return torch.zeros(batch, length, dim, device=device, dtype=dtype)


# ---------------------------------------------------------------------------------------------- checks
def _shape(x) -> str:
    return str(tuple(x.shape)) if isinstance(x, torch.Tensor) else type(x).__name__


def _check_latent(dit, x: torch.Tensor, name: str) -> None:
    cfg = dit.config
    if not isinstance(x, torch.Tensor) or x.ndim != 5 or x.shape[1] != cfg.in_channels:
        raise InputError(f"{name}: expected a latent [B, {cfg.in_channels}, T', h, w], got {_shape(x)}")
    _, ph, pw = cfg.patch_size
    if x.shape[3] % ph or x.shape[4] % pw or x.shape[2] < 1:
        raise InputError(f"{name}: latent height/width must be multiples of the DiT patch ({ph}x{pw}), "
                         f"got {x.shape[3]}x{x.shape[4]} (video size a multiple of {8 * ph}x{8 * pw})")


def _prep_context(dit, context: torch.Tensor, batch: int, name: str = "context") -> torch.Tensor:
    text_dim = dit.config.text_dim
    if not isinstance(context, torch.Tensor) or context.ndim != 3 or context.shape[2] != text_dim:
        raise InputError(f"{name}: expected text features [B, L, {text_dim}] (use zero_context(B) for no text), "
                         f"got {_shape(context)}")
    if context.shape[0] == 1 and batch > 1:
        context = context.expand(batch, -1, -1)
    if context.shape[0] != batch:
        raise InputError(f"{name}: batch {context.shape[0]} does not match the latent batch {batch}")
    return context


def _prep_reference(reference: Optional[torch.Tensor], x: torch.Tensor) -> Optional[torch.Tensor]:
    if reference is None:
        return None
    b, c, _, h, w = x.shape
    if (not isinstance(reference, torch.Tensor) or reference.ndim != 5 or reference.shape[1] != c
            or tuple(reference.shape[3:]) != (h, w)):
        raise InputError(f"reference: expected the identity latent [B, {c}, 1, {h}, {w}] (normalised Wan 2.1 "
                         f"latent of the character image, same size as the video latent), got {_shape(reference)}")
    if reference.shape[0] == 1 and b > 1:
        reference = reference.expand(b, -1, -1, -1, -1)
    if reference.shape[0] != b:
        raise InputError(f"reference: batch {reference.shape[0]} does not match the latent batch {b}")
    return reference


def _timesteps(sigma, batch: int, device) -> torch.Tensor:
    s = torch.as_tensor(sigma, dtype=torch.float32, device=device)
    if s.ndim == 0:
        s = s.expand(batch)
    if s.shape != (batch,):
        raise InputError(f"sigma: expected a number or a tensor [{batch}], got shape {tuple(s.shape)}")
    return s


# ---------------------------------------------------------------------------------------------- motion
@contextlib.contextmanager
def motion_attached(dit, motion=None, injector=None):
    """Within the block, ``dit.patch_embedding`` adds ``injector(motion)`` to the first T' latent frames.

    - ``injector`` given: attached with ``imanim_core.models.injector.attach_to`` unless that injector is already
      attached, and detached again on exit if attached here.
    - only ``motion`` given: the DiT must already carry an ``InjectedPatchEmbedding``.
    - neither: nothing happens.
    The motion tokens are cleared (``set_motion(None)``) on exit.
    """
    if motion is None and injector is None:
        yield
        return
    pe = dit.patch_embedding
    attached_here = False
    if injector is not None:
        if isinstance(pe, inj.InjectedPatchEmbedding):
            if getattr(pe, "injector", None) is not injector:
                raise InputError("injector: the DiT already carries a different motion injector; detach it first")
        else:
            inj.attach_to(dit, injector)
            attached_here = True
    elif not isinstance(pe, inj.InjectedPatchEmbedding):
        raise InputError("motion: motion tokens were given but no injector (pass injector=, or attach one first)")
    wrapper = dit.patch_embedding
    wrapper.set_motion(motion)
    try:
        yield wrapper
    finally:
        wrapper.set_motion(None)
        if attached_here:
            inj.detach(dit)


# ---------------------------------------------------------------------------------------------- model calls
def _weight_dtype(dit) -> torch.dtype:
    pe = dit.patch_embedding
    w = getattr(pe, "weight", None)
    return w.dtype if isinstance(w, torch.Tensor) else next(dit.parameters()).dtype


def dit_forward(dit, x_t: torch.Tensor, timestep: torch.Tensor, context: torch.Tensor,
                reference: Optional[torch.Tensor] = None) -> torch.Tensor:
    """One DiT call on ``x_t`` (+ the clean reference frame(s) appended in time); returns the output for the first
    ``T'`` frames in ``x_t``'s dtype. ``timestep`` ``[B]`` is fed as is (``1000 * sigma``). No checks, no motion:
    see :func:`denoise_once` / :func:`flow_matching_loss`."""
    t_frames = x_t.shape[2]
    x = x_t if reference is None else torch.cat([x_t, reference.to(x_t.dtype)], dim=2)
    wd = _weight_dtype(dit)
    out = dit(hidden_states=x.to(wd), timestep=timestep, encoder_hidden_states=context.to(wd),
              return_dict=False)[0]
    return out[:, :, :t_frames].to(x_t.dtype)


def denoise_once(dit, x_t: torch.Tensor, sigma, context: torch.Tensor, reference: Optional[torch.Tensor] = None,
                 motion=None, injector=None) -> torch.Tensor:
    """The raw model prediction ``v`` (≈ ``eps - x0``) for the first ``T'`` frames of ``x_t`` ``[B,16,T',h,w]``.

    ``sigma``: a number or ``[B]``; the DiT's timestep is ``1000 * sigma``. With ``reference`` ``[B,16,1,h,w]`` the
    DiT sees ``T' + 1`` frames and the reference output is dropped. ComfyUI's denoiser output for the same
    weights and inputs is ``x_t - sigma * v``. Runs in the caller's grad mode.
    """
    _check_latent(dit, x_t, "x_t")
    b = x_t.shape[0]
    context = _prep_context(dit, context, b)
    reference = _prep_reference(reference, x_t)
    ts = sigma_to_timestep(_timesteps(sigma, b, x_t.device))
    with motion_attached(dit, motion, injector):
        return dit_forward(dit, x_t, ts, context, reference)


def flow_matching_loss(dit, x0: torch.Tensor, context: torch.Tensor, reference: Optional[torch.Tensor] = None,
                       motion=None, injector=None, *, shift: float = DEFAULT_SHIFT,
                       sigma: Optional[torch.Tensor] = None, noise: Optional[torch.Tensor] = None,
                       generator: Optional[torch.Generator] = None, weight: Optional[torch.Tensor] = None,
                       return_details: bool = False):
    """Wan flow-matching loss on clean normalised latents ``x0`` ``[B, 16, T', h, w]``.

    ``sigma`` ``[B]`` defaults to :func:`sample_sigmas` (uniform + ``shift``), ``noise`` to a standard normal
    (both from ``generator`` when given). The reference frame (clean, appended at the end in time) gets no loss.
    Returns the mean squared error (float32 scalar), or ``(loss, details)`` with ``return_details`` where details
    holds ``sigma``, ``noise``, ``x_t``, ``pred`` and ``target``. ``weight`` (broadcastable to ``x0``, e.g.
    ``[B, 1, T', h, w]``, non-negative) makes it a weighted mean: sum(weight * se) / sum(weight) over the elements.
    """
    _check_latent(dit, x0, "x0")
    b = x0.shape[0]
    context = _prep_context(dit, context, b)
    reference = _prep_reference(reference, x0)
    if sigma is None:
        sigma = sample_sigmas(b, shift, generator, x0.device)
    sigma = _timesteps(sigma, b, x0.device)
    if noise is None:
        gen_device = generator.device if generator is not None else x0.device
        noise = torch.randn(x0.shape, generator=generator, device=gen_device, dtype=x0.dtype).to(x0.device)
    elif noise.shape != x0.shape:
        raise InputError(f"noise: expected the shape of x0 {tuple(x0.shape)}, got {tuple(noise.shape)}")
    x_t = add_noise(x0, noise, sigma)
    target = flow_target(x0, noise)
    with motion_attached(dit, motion, injector):
        pred = dit_forward(dit, x_t, sigma_to_timestep(sigma), context, reference)
    if weight is None:
        loss = F.mse_loss(pred.float(), target.float())
    else:
        w = weight.to(pred.device, torch.float32).expand(pred.shape)
        loss = (w * (pred.float() - target.float()) ** 2).sum() / w.sum().clamp_min(1e-12)
    if return_details:
        return loss, {"sigma": sigma, "noise": noise, "x_t": x_t, "pred": pred, "target": target}
    return loss
