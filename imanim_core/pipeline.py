"""The standalone animate pipeline (diffusers host): one character image + a driving video -> a video.

It is the same maths as the ComfyUI node path (Encode Motion Tokens -> Retarget to Identity -> IM-Animation
Sampler with sampler ``euler`` / scheduler ``simple`` -> VAE Decode), so both give the same video for the same
seed (up to the hosts' floating-point differences in the DiT, DESIGN §4):

1. identity image (grey / RGB / RGBA, uint8 or float, >= 16 px a side, finite) -> RGB (alpha over black,
   ``io.video.to_rgb``, as the nodes' ``checks.image_batch``)
   -> fitted to the model grid (H, W multiples of 16) with :func:`fit_image` (``'pad'``: scaled to fit inside,
   centred, edge pixels repeated — the node's default ``fit``); the output is cropped back to the image's own
   aspect (:class:`Letterbox`).
2. identity -> Wan VAE -> **normalised** latent ``[1, 16, 1, h, w]`` (h = H/8).
3. driving frames -> ``tokenizer.encode_frames`` -> codes ``[T, K, d]`` -> ``retargeter`` (all T frames at once)
   -> tokens ``[1, T, h/2, w/2, Dr]``, padded to the next 4n+1 frames by repeating the last frame
   (``windows.pad_frames``); the output is trimmed back to exactly T frames.
4. sampling, exactly as ComfyUI does it (without importing ComfyUI):
   - noise ``torch.randn([1, 16, T', h, w], generator=torch.manual_seed(seed))`` on the CPU in float32
     (``comfy.sample.prepare_noise``), :func:`comfy_noise`;
   - sigmas of the ``simple`` scheduler on ComfyUI's discrete-flow model sampling (``ModelSamplingSD3`` shift):
     table ``sigma_i = shift t / (1 + (shift - 1) t)``, ``t = i / 1000``, ``i = 1..1000`` (float32, computed in
     ComfyUI's operation order), ``sigs[x] = table[-(1 + int(x * 1000 / steps))]`` for ``x < steps``, then 0
     (:func:`simple_sigmas`);
   - ``x = sigma_0 * noise + (1 - sigma_0) * 0`` (the empty latent); Euler (:func:`euler_sample`):
     ``denoised = x - sigma * v`` (v = the DiT's raw output, ``flow.dit_forward`` at timestep ``1000 sigma``,
     the reference latent appended in time, the injector attached), ``d = (x - denoised) / sigma``,
     ``x = x + d (sigma_next - sigma)``.
   - long videos: windows over *latent* frames from :mod:`imanim_core.windows`; at every step the DiT runs on
     each window (that window's slice of the motion, the same reference) and the **denoised** outputs are
     blended with ``windows.blend`` — what the node's model wrapper does.
   - CFG only with a text context: ``denoised = uncond + (cond - uncond) * guidance`` (ComfyUI's cfg on
     denoised outputs); with no text (the tiny model) the DiT runs once per step on ``flow.zero_context``.
5. latent -> VAE decode -> frames in [0, 1] -> trimmed to T, cropped to the identity's aspect -> uint8.

Progress: tqdm bars (or a ``progress(done, total)`` callable for the denoising steps). Ctrl-C
(``KeyboardInterrupt``) propagates at once; the DiT is restored (injector detached) on the way out.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Callable, Optional, Sequence, Union

import numpy as np
import torch
import torch.nn.functional as F

from . import windows as W
from .defaults import (DEFAULT_OVERLAP, DEFAULT_SEED, DEFAULT_SHIFT, DEFAULT_STEPS,  # noqa: F401 (re-exported)
                       DEFAULT_WINDOW, FIT_MODES, OUTPUT_MODES)
from .checks import MIN_IMAGE_SIDE, check_finite, check_min_side, check_t2v_channels
from .errors import CheckpointError, InputError

GRID_PX = 16  # Wan 2.1: VAE x8, then 2x2 DiT patches
NUM_TIMESTEPS = 1000  # ComfyUI's ModelSamplingDiscreteFlow table size and timestep multiplier
TINY_SIZE = (128, 128)  # the embedded tiny model's training size (train stage3 tiny preset)
REAL_AREA = 480 * 832  # Wan 2.1 480p area, used as the default for real-size DiTs

ProgressFn = Callable[[int, int], None]


# ============================================================================================== sampling maths
def comfy_sigma_table(shift: float, timesteps: int = NUM_TIMESTEPS, multiplier: float = NUM_TIMESTEPS
                      ) -> torch.Tensor:
    """ComfyUI's ``ModelSamplingDiscreteFlow.sigmas`` for ``shift`` (float32 ``[timesteps]``, increasing).

    ``sigma(t) = shift * t / (1 + (shift - 1) * t)`` at ``t = i / timesteps``, ``i = 1..timesteps``, computed in
    the same float32 operation order as ComfyUI (``arange / timesteps * multiplier``, then ``/ multiplier``)."""
    shift = float(shift)
    if not shift > 0 or not math.isfinite(shift):
        raise InputError(f"shift: expected a positive number, got {shift}")
    ts = (torch.arange(1, timesteps + 1, 1) / timesteps) * multiplier
    t = ts / multiplier
    if shift == 1.0:
        return t
    return shift * t / (1 + (shift - 1) * t)


def simple_sigmas(steps: int, shift: float = DEFAULT_SHIFT) -> torch.Tensor:
    """ComfyUI's ``simple`` scheduler on the shifted discrete-flow table: ``[steps + 1]`` float32, last = 0."""
    if not isinstance(steps, (int, np.integer)) or isinstance(steps, bool) or int(steps) < 1:
        raise InputError(f"steps: expected a positive integer, got {steps!r}")
    steps = int(steps)
    table = comfy_sigma_table(shift)
    ss = len(table) / steps
    sigs = [float(table[-(1 + int(x * ss))]) for x in range(steps)]
    sigs += [0.0]
    return torch.FloatTensor(sigs)


def comfy_noise(shape: Sequence[int], seed: int) -> torch.Tensor:
    """The initial noise exactly as ``comfy.sample.prepare_noise``: ``torch.randn(shape)`` in float32 on the CPU
    from a generator seeded with ``seed`` (a fresh generator: the same stream as ``torch.manual_seed(seed)``,
    without touching the global RNG)."""
    seed = int(seed)
    if seed < 0 or seed > 0xFFFFFFFFFFFFFFFF:
        raise InputError(f"seed: expected an integer in [0, 2^64 - 1], got {seed}")
    g = torch.Generator(device="cpu")
    g.manual_seed(seed)
    return torch.randn(tuple(int(s) for s in shape), dtype=torch.float32, generator=g, device="cpu")


def euler_sample(denoise: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], noise: torch.Tensor,
                 sigmas: torch.Tensor, progress: Optional[ProgressFn] = None,
                 latent_image: Optional[torch.Tensor] = None) -> torch.Tensor:
    """ComfyUI's ``euler`` sampler (``s_churn = 0``) on a flow (``CONST``) model.

    ``denoise(x, sigma[B]) -> denoised`` (``x - sigma * v`` for a flow DiT). The start is ComfyUI's
    ``noise_scaling``: ``sigma_0 * noise + (1 - sigma_0) * latent_image`` (an empty latent = zeros)."""
    sigmas = sigmas.to(noise.device)
    if latent_image is None:
        latent_image = torch.zeros_like(noise)
    s0 = sigmas[0]
    x = s0 * noise + (1.0 - s0) * latent_image
    s_in = x.new_ones([x.shape[0]])
    n = len(sigmas) - 1
    for i in range(n):
        sigma_hat = sigmas[i]
        denoised = denoise(x, sigma_hat * s_in)
        d = (x - denoised) / sigma_hat.reshape((1,) * x.ndim)
        dt = sigmas[i + 1] - sigma_hat
        x = x + d * dt
        if progress is not None:
            progress(i + 1, n)
    return x


# ================================================================================================= images
@dataclass(frozen=True)
class Letterbox:
    """Where the identity image sits in the model grid: the grid is ``height x width``; the image content fills
    rows ``top:top+content_h`` and columns ``left:left+content_w`` (``'pad'``; the whole grid for ``'crop'`` and
    ``'stretch'``); ``source_hw`` is the identity image's own size."""

    height: int
    width: int
    top: int
    left: int
    content_h: int
    content_w: int
    source_hw: tuple
    mode: str = "pad"

    def restore(self, frames: torch.Tensor, output: str = "crop") -> torch.Tensor:
        """Frames on the grid ``[T, H, W, 3]`` (float) -> ``'grid'`` (as is), ``'crop'`` (the identity's aspect at
        the grid's scale) or ``'identity'`` (cropped, then resized to the identity image's size)."""
        if output not in OUTPUT_MODES:
            raise InputError(f"output: expected one of {OUTPUT_MODES}, got {output!r}")
        if output == "grid":
            return frames
        out = frames[:, self.top:self.top + self.content_h, self.left:self.left + self.content_w]
        if output == "identity" and tuple(out.shape[1:3]) != tuple(self.source_hw):
            x = out.movedim(-1, 1).float()
            x = F.interpolate(x, size=tuple(self.source_hw), mode="bilinear", align_corners=False, antialias=True)
            out = x.movedim(1, -1).clamp(0, 1)
        return out.contiguous()


def to_float_image(image, where: str = "identity") -> torch.Tensor:
    """Any image ``[H, W]`` / ``[H, W, 1|2|3|4]`` (or a batch with a leading dim), uint8/uint16/float numpy or
    torch -> float32 RGB ``[B, H, W, 3]`` in [0, 1] (grey repeated, alpha composited over black)."""
    from .io.video import to_rgb

    if isinstance(image, np.ndarray):
        a = image
    elif torch.is_tensor(image):
        a = image.detach().cpu()
    else:
        raise InputError(f"{where}: expected an image array/tensor [H, W, C], got {type(image).__name__}")
    if a.ndim == 4 and a.shape[-1] not in (1, 2, 3, 4):
        raise InputError(f"{where}: expected [H, W, C] with C in (1, 3, 4), got shape {tuple(a.shape)}")
    if a.ndim not in (2, 3, 4):
        raise InputError(f"{where}: expected an image [H, W] or [H, W, C], got shape {tuple(a.shape)}")
    if a.ndim == 3 and a.shape[-1] not in (1, 2, 3, 4):
        a = a[..., None]  # [H, W] grey with an odd width, never a [B, H, W] grey stack here
    rgb = to_rgb(a, where=where)
    if isinstance(rgb, np.ndarray):
        if rgb.dtype == np.uint8:
            t = torch.from_numpy(np.ascontiguousarray(rgb)).float().div_(255.0)
        elif np.issubdtype(rgb.dtype, np.floating):
            t = torch.from_numpy(np.ascontiguousarray(rgb, dtype=np.float32))
        else:
            raise InputError(f"{where}: unsupported pixel type {rgb.dtype}; expected uint8 or float in [0, 1]")
    else:
        t = rgb.float().div_(255.0) if rgb.dtype == torch.uint8 else rgb.float()
    if t.ndim == 3:
        t = t[None]
    if t.shape[1] < 1 or t.shape[2] < 1:
        raise InputError(f"{where}: the image is empty (shape {tuple(a.shape)})")
    check_finite(t, where, "pixel values")
    return t.clamp(0.0, 1.0).contiguous()


def fit_image(image: torch.Tensor, height: int, width: int, mode: str = "pad") -> tuple:
    """``[B, H, W, 3]`` float -> (``[B, height, width, 3]``, :class:`Letterbox`).

    The one implementation, used by ``animate`` and by the Retarget to Identity node: ``'pad'`` scales to fit inside
    (antialiased bilinear), centres, and fills the rest by repeating the edge pixels; ``'crop'`` scales to
    cover and centre-crops; ``'stretch'`` resizes to the grid."""
    if mode not in FIT_MODES:
        raise InputError(f"fit: expected one of {FIT_MODES}, got {mode!r}")
    b, h, w, _ = image.shape
    src = (int(h), int(w))
    full = Letterbox(height, width, 0, 0, height, width, src, mode)
    if (h, w) == (height, width):
        return image, full
    x = image.movedim(-1, 1)
    if mode == "stretch":
        x = F.interpolate(x, size=(height, width), mode="bilinear", align_corners=False, antialias=True)
        box = full
    else:
        s = min(width / w, height / h) if mode == "pad" else max(width / w, height / h)
        nh, nw = max(1, round(h * s)), max(1, round(w * s))
        if (nh, nw) != (h, w):
            x = F.interpolate(x, size=(nh, nw), mode="bilinear", align_corners=False, antialias=True)
        if mode == "pad":
            top, left = (height - nh) // 2, (width - nw) // 2
            pads = (left, width - nw - left, top, height - nh - top)
            if any(pads):
                x = F.pad(x, pads, mode="replicate")
            box = Letterbox(height, width, top, left, nh, nw, src, mode)
        else:
            top, left = (nh - height) // 2, (nw - width) // 2
            x = x[:, :, top:top + height, left:left + width]
            box = full
    return x.movedim(1, -1).clamp(0, 1).contiguous(), box


def parse_size(text) -> Optional[tuple]:
    """``'HxW'`` (e.g. ``'128x96'``) or ``'N'`` (square) -> (H, W) multiples of 16; None/'' -> None."""
    if text is None or (isinstance(text, str) and not text.strip()):
        return None
    if isinstance(text, (tuple, list)):
        hw = tuple(int(v) for v in text)
    else:
        parts = str(text).lower().replace("*", "x").split("x")
        try:
            hw = tuple(int(p) for p in parts)
        except ValueError:
            raise InputError(f"size: expected HxW in pixels (e.g. 128x128), got {text!r}") from None
        if len(hw) == 1:
            hw = (hw[0], hw[0])
    if len(hw) != 2:
        raise InputError(f"size: expected HxW in pixels (e.g. 128x128), got {text!r}")
    check_size(hw)
    return hw


def check_size(hw) -> tuple:
    h, w = int(hw[0]), int(hw[1])
    for v, n in ((h, "height"), (w, "width")):
        if v < GRID_PX or v % GRID_PX:
            raise InputError(f"size: the video {n} must be a positive multiple of {GRID_PX} px (Wan: VAE x8 then "
                             f"2x2 patches), got {h}x{w} (HxW)")
    return h, w


def _round16(v: float) -> int:
    return max(GRID_PX, int(round(v / GRID_PX)) * GRID_PX)


def dit_width(dit) -> int:
    c = dit.config
    return int(c.num_attention_heads * c.attention_head_dim)


def default_size(bundle=None, dit=None, identity_hw=None) -> tuple:
    """The model grid when no size is given: the bundle's ``video_size`` metadata (``'HxW'`` or ``[H, W]``) when
    present; else 128x128 for a tiny DiT (width <= 512, the embedded model's training size); else a 480p-area
    grid (480x832 = 399,360 px) with the identity's aspect."""
    meta = dict(getattr(bundle, "metadata", None) or {})
    vs = meta.get("video_size")
    if vs:
        try:
            import json

            val = json.loads(vs) if isinstance(vs, str) and vs.strip().startswith("[") else vs
            return parse_size(val)
        except (InputError, ValueError):
            pass
    if dit is None or dit_width(dit) <= 512:
        return TINY_SIZE
    if identity_hw is None:
        return (480, 832)
    ih, iw = int(identity_hw[0]), int(identity_hw[1])
    a = ih / max(iw, 1)
    h = math.sqrt(REAL_AREA * a)
    return _round16(h), _round16(REAL_AREA / h)


def identity_image(identity, where: str = "identity") -> torch.Tensor:
    """The identity as float RGB ``[1, H, W, 3]`` (:func:`to_float_image`), at least
    :data:`~imanim_core.checks.MIN_IMAGE_SIDE` px a side (the node's minimum too)."""
    img = to_float_image(identity, where)[:1]
    check_min_side(img.shape[1], img.shape[2], where, MIN_IMAGE_SIDE)
    return img


def prepare_identity(identity, size: tuple, fit: str = "pad") -> tuple:
    """Identity image -> (float ``[1, H, W, 3]`` on the model grid, :class:`Letterbox`)."""
    img = identity_image(identity)
    h, w = check_size(size)
    return fit_image(img, h, w, fit)


# ================================================================================================ model parts
def check_models(bundle, dit, vae=None) -> None:
    """The bundle can animate with this DiT: tokenizer, retargeter and injector present and compatible."""
    if bundle is None:
        raise InputError("bundle: an IM-Animation bundle is required")
    missing = [p for p in ("tokenizer", "retargeter", "injector") if getattr(bundle, p, None) is None]
    if missing:
        src = "the released motion encoder" if getattr(bundle, "source", None) == "released" else "this bundle"
        raise CheckpointError(f"bundle: {src} has no {', '.join(missing)}; animating needs a full IM-Animation "
                              f"bundle (tokenizer + retargeter + injector, trained with the stage 2/3 scripts)")
    check_injector(bundle.injector, dit)
    check_t2v_channels(getattr(getattr(dit, "config", None), "in_channels", 16), "dit")
    rc, ic = bundle.retargeter.cfg, bundle.injector.cfg
    if rc.out_dim != ic.in_dim:
        raise CheckpointError(f"bundle: the retargeter outputs {rc.out_dim} channels but the injector takes "
                              f"{ic.in_dim}")


def check_injector(injector, dit) -> None:
    if dit is None:
        raise InputError("dit: a Wan DiT is required")
    d = dit_width(dit)
    if injector.cfg.dit_dim != d:
        raise CheckpointError(f"dit: this Wan DiT is {d} wide but the injector was trained for a "
                              f"{injector.cfg.dit_dim}-wide DiT (Wan 2.1 1.3B = 1536, 14B = 5120, tiny = 256); use "
                              f"the DiT the IM-Animation bundle was trained with")


def _module_device_dtype(m) -> tuple:
    p = next(m.parameters())
    return p.device, p.dtype


@torch.no_grad()
def encode_identity(vae, image: torch.Tensor) -> torch.Tensor:
    """Float ``[1, H, W, 3]`` in [0, 1] -> normalised Wan latent ``[1, 16, 1, H/8, W/8]`` (float32)."""
    from .backbone.wan import vae_encode

    dev, _ = _module_device_dtype(vae)
    x = image.to(dev).permute(0, 3, 1, 2)[:, :, None] * 2.0 - 1.0
    return vae_encode(vae, x)


def to_driving_frames(driving, where: str = "driving") -> Union[np.ndarray, torch.Tensor]:
    """Driving frames ``[T, H, W, 3]`` (uint8 numpy as ``io.read_video`` gives, or float in [0, 1]); grey or RGBA
    frames ``[T, H, W, 1|4]`` are converted."""
    from .io.video import to_rgb

    if not isinstance(driving, (np.ndarray, torch.Tensor)):
        raise InputError(f"{where}: expected frames [T, H, W, 3] (numpy or torch), got {type(driving).__name__}")
    if driving.ndim == 3 and driving.shape[-1] in (3, 4):
        driving = driving[None]
    if driving.ndim != 4 or driving.shape[0] < 1 or driving.shape[-1] not in (1, 2, 3, 4):
        raise InputError(f"{where}: expected frames [T, H, W, 3] with T >= 1, got shape {tuple(driving.shape)}")
    if driving.shape[-1] != 3:
        driving = to_rgb(driving, where=where)
    check_min_side(driving.shape[1], driving.shape[2], where, MIN_IMAGE_SIDE)
    check_finite(driving, where, "pixel values")
    return driving


@torch.no_grad()
def encode_motion(bundle, driving, batch_size: int = 16, progress: Optional[ProgressFn] = None) -> torch.Tensor:
    """Driving frames -> motion codes ``[T, K, d]`` (float32, CPU) with the bundle's tokenizer."""
    frames = to_driving_frames(driving)
    _, codes = bundle.tokenizer.encode_frames(frames, batch_size=batch_size, progress=progress)
    return codes


@torch.no_grad()
def retarget(bundle, identity_latent: torch.Tensor, codes: torch.Tensor, frame_chunk: int = 16) -> torch.Tensor:
    """Identity latent ``[1, 16, 1, h, w]`` + codes ``[T, K, d]`` -> retargeted tokens ``[1, T, h/2, w/2, Dr]``
    (float32, CPU), all T frames at once (as the Retarget node)."""
    ret = bundle.retargeter
    dev, dt = _module_device_dtype(ret)
    tokens = ret(identity_latent.to(dev, dt), codes[None].to(dev, dt), frame_chunk=int(frame_chunk))
    return tokens.float().cpu()


@torch.no_grad()
def decode_frames(vae, latent: torch.Tensor, num_frames: Optional[int] = None) -> torch.Tensor:
    """Normalised latent ``[1, 16, L, h, w]`` -> float frames ``[T, H, W, 3]`` in [0, 1] (CPU), trimmed to
    ``num_frames`` (the VAE gives 4L-3)."""
    from .backbone.wan import vae_decode

    dev, _ = _module_device_dtype(vae)
    video = vae_decode(vae, latent.to(dev))  # [1, 3, 4L-3, H, W] in [-1, 1]
    frames = ((video[0].permute(1, 2, 3, 0).float() + 1.0) / 2.0).clamp(0.0, 1.0).cpu()
    if num_frames is not None:
        if num_frames > frames.shape[0]:
            raise InputError(f"decode: asked for {num_frames} frames, the latent gives {frames.shape[0]}")
        frames = frames[:num_frames]
    return frames


def to_uint8(frames: torch.Tensor) -> np.ndarray:
    return (frames.clamp(0, 1) * 255.0 + 0.5).floor().to(torch.uint8).numpy()


# ================================================================================================== sampling
class _Bars:
    """tqdm bars when ``progress`` is True, a callable for the denoising steps, or nothing."""

    def __init__(self, progress):
        self.progress = progress

    def bar(self, total: int, desc: str, unit: str):
        if self.progress is True:
            from tqdm.auto import tqdm

            return tqdm(total=total, desc=desc, unit=unit, dynamic_ncols=True, leave=False)
        return None

    def step_fn(self, total: int, desc: str = "denoising", unit: str = "step"):
        if callable(self.progress):
            return self.progress, None
        bar = self.bar(total, desc, unit)
        if bar is None:
            return None, None
        state = {"done": 0}

        def fn(done, tot=None):
            bar.update(max(0, int(done) - state["done"]))
            state["done"] = int(done)

        return fn, bar


@torch.no_grad()
def sample_latents(dit, injector, tokens: torch.Tensor, reference: torch.Tensor, num_frames: Optional[int] = None,
                   steps: int = DEFAULT_STEPS, seed: int = DEFAULT_SEED, shift: float = DEFAULT_SHIFT,
                   window: int = DEFAULT_WINDOW, overlap: int = DEFAULT_OVERLAP,
                   context: Optional[torch.Tensor] = None, negative_context: Optional[torch.Tensor] = None,
                   guidance: float = 1.0, progress=None, info: Optional[dict] = None) -> torch.Tensor:
    """Sample the normalised video latent ``[1, 16, L, h, w]`` (float32, on the DiT's device).

    ``tokens``: per-frame motion ``[1, T, h/2, w/2, Dr]`` for the ``num_frames`` (default T) driving frames; padded
    here to the next 4n+1 by repeating the last frame. ``reference``: the identity latent ``[1, 16, 1, h, w]``.
    ``context`` ``[1, L, text_dim]``: text features; None = no text (``flow.zero_context``; no CFG).
    ``guidance`` != 1 with a context runs the DiT a second time on ``negative_context`` (default zeros) and
    combines the denoised outputs as ComfyUI's cfg does. ``info`` (a dict) receives the plan (windows, sigmas).
    """
    from .backbone import flow

    if not torch.is_tensor(tokens) or tokens.ndim != 5 or tokens.shape[0] != 1:
        raise InputError(f"motion tokens: expected [1, T, gh, gw, Dr], got "
                         f"{tuple(tokens.shape) if torch.is_tensor(tokens) else type(tokens).__name__}")
    if not torch.is_tensor(reference) or reference.ndim != 5 or reference.shape[:3] != (1, 16, 1):
        raise InputError(f"reference: expected the identity latent [1, 16, 1, h, w], got "
                         f"{tuple(reference.shape) if torch.is_tensor(reference) else type(reference).__name__}")
    check_injector(injector, dit)
    t = int(tokens.shape[1] if num_frames is None else num_frames)
    if t < 1 or t > tokens.shape[1]:
        raise InputError(f"num_frames: expected 1..{tokens.shape[1]} (the motion's frames), got {t}")
    h, w = int(reference.shape[3]), int(reference.shape[4])
    if tuple(tokens.shape[2:4]) != (h // 2, w // 2) or h % 2 or w % 2:
        raise InputError(f"motion tokens: grid {tuple(tokens.shape[2:4])} does not match the identity latent {h}x{w} "
                         f"(expected {(h // 2, w // 2)})")
    padded = W.padded_frame_count(t)
    tokens = W.pad_frames(tokens[:, :t], dim=1, num_frames=padded)
    num_latent = W.latent_frame_count(t)
    wins = W.plan_frame_windows(padded, int(window), int(overlap))
    sigmas = simple_sigmas(steps, shift)

    device = next(dit.parameters()).device
    text_dim = int(dit.config.text_dim)
    use_text = context is not None
    cfg = use_text and float(guidance) != 1.0
    if use_text:
        if not torch.is_tensor(context) or context.ndim != 3 or context.shape[0] != 1 or context.shape[2] != text_dim:
            raise InputError(f"context: expected text features [1, L, {text_dim}], got "
                             f"{tuple(context.shape) if torch.is_tensor(context) else type(context).__name__}")
        ctx = context.to(device, torch.float32)
    else:
        ctx = flow.zero_context(1, 1, text_dim, device=device)
    contexts = [ctx]
    if cfg:
        neg = negative_context if negative_context is not None else flow.zero_context(1, 1, text_dim, device=device)
        if not torch.is_tensor(neg) or neg.ndim != 3 or neg.shape[2] != text_dim:
            raise InputError(f"negative_context: expected text features [1, L, {text_dim}]")
        contexts.append(neg.to(device, torch.float32))
    reference = reference.to(device, torch.float32)
    tokens = tokens.to(device)
    noise = comfy_noise((1, 16, num_latent, h, w), seed)  # on the CPU, as ComfyUI
    if info is not None:
        info.update(frames=t, padded_frames=padded, latent_frames=num_latent, windows=list(wins),
                    sigmas=sigmas.tolist(), cfg=cfg)

    n_calls = steps * len(wins)
    step_fn, bar = _Bars(progress).step_fn(steps)
    with flow.motion_attached(dit, None, injector) as injected:
        def denoise(x, sigma):
            ts = flow.sigma_to_timestep(sigma.float())
            sig = sigma.reshape(-1, 1, 1, 1, 1)
            per_ctx = []
            for c in contexts:
                outs = []
                for win in wins:
                    if len(wins) == 1:
                        injected.set_motion(tokens)
                        xw = x
                    else:
                        injected.set_motion(tokens[:, win.frames])
                        xw = x[:, :, win.latents]
                    v = flow.dit_forward(dit, xw, ts, c, reference).float()
                    outs.append(xw - v * sig)
                per_ctx.append(W.blend(outs, wins, num_latent, dim=2))
            if not cfg:
                return per_ctx[0]
            cond, uncond = per_ctx
            return uncond + (cond - uncond) * float(guidance)

        try:
            x = euler_sample(denoise, noise.to(device), sigmas, progress=step_fn)
        finally:
            if bar is not None:
                bar.close()
    if info is not None:
        info["dit_calls"] = n_calls * len(contexts)
    check_finite(x, "sampling", "denoised latent values",
                 hint="The DiT produced them: check its weights, a LoRA, or a float16 overflow (try fp32/bf16)")
    return x


# ================================================================================================== animate
@dataclass
class Animation:
    """Everything :func:`run` produced: ``frames`` uint8 ``[T, H', W', 3]`` (restored to the identity's aspect),
    ``grid_frames`` float ``[T, H, W, 3]`` on the model grid, the latent, the motion tokens, the plan, timings."""

    frames: np.ndarray
    grid_frames: torch.Tensor
    latent: torch.Tensor
    tokens: torch.Tensor
    letterbox: Letterbox
    info: dict = field(default_factory=dict)


def run(identity, driving, bundle, dit, vae, size: Optional[tuple] = None, steps: int = DEFAULT_STEPS,
        seed: int = DEFAULT_SEED, shift: float = DEFAULT_SHIFT, window: int = DEFAULT_WINDOW,
        overlap: int = DEFAULT_OVERLAP, progress=True, fit: str = "pad", output: str = "crop",
        context: Optional[torch.Tensor] = None, negative_context: Optional[torch.Tensor] = None,
        guidance: float = 1.0, motion_tokens: Optional[torch.Tensor] = None, injector=None,
        frame_chunk: int = 16) -> Animation:
    """:func:`animate` with everything it computed (see :class:`Animation`).

    ``motion_tokens`` (``[1, T, h/2, w/2, Dr]``) with ``injector`` replaces the tokenizer + retargeter (used by
    the explicit skeleton baseline, :mod:`imanim_core.baselines`); ``bundle`` may then be None and ``driving``
    is only used for its frame count.
    """
    timings = {}
    t0 = time.perf_counter()
    if motion_tokens is None:
        check_models(bundle, dit, vae)
        injector = bundle.injector
    elif injector is None:
        raise InputError("motion_tokens: an injector must be given with precomputed motion tokens")
    img0 = identity_image(identity)
    if size is None:
        size = default_size(bundle, dit, img0.shape[1:3])
    image, box = prepare_identity(img0, size, fit)
    if motion_tokens is None:
        frames = to_driving_frames(driving)
        t = int(frames.shape[0])
    else:
        t = int(motion_tokens.shape[1])
    bars = _Bars(progress)

    ref = encode_identity(vae, image)
    timings["identity_vae"] = time.perf_counter() - t0
    if motion_tokens is None:
        t1 = time.perf_counter()
        fn, bar = bars.step_fn(t, "motion tokens", "frame")
        try:
            codes = encode_motion(bundle, frames, progress=fn)
        finally:
            if bar is not None:
                bar.close()
        timings["motion_tokens"] = time.perf_counter() - t1
        t1 = time.perf_counter()
        tokens = retarget(bundle, ref, codes, frame_chunk=frame_chunk)
        timings["retarget"] = time.perf_counter() - t1
    else:
        tokens = motion_tokens.float()
    info: dict = {}
    t1 = time.perf_counter()
    latent = sample_latents(dit, injector, tokens, ref, t, steps=steps, seed=seed, shift=shift, window=window,
                            overlap=overlap, context=context, negative_context=negative_context,
                            guidance=guidance, progress=progress, info=info)
    timings["sampling"] = time.perf_counter() - t1
    t1 = time.perf_counter()
    grid = decode_frames(vae, latent, t)
    timings["vae_decode"] = time.perf_counter() - t1
    out = box.restore(grid, output)
    timings["total"] = time.perf_counter() - t0
    info.update(size=tuple(size), timings=timings)
    return Animation(frames=to_uint8(out), grid_frames=grid, latent=latent.cpu(), tokens=tokens, letterbox=box,
                     info=info)


def animate(identity, driving, bundle, dit, vae, size: Optional[tuple] = None, steps: int = DEFAULT_STEPS,
            seed: int = DEFAULT_SEED, shift: float = DEFAULT_SHIFT, window: int = DEFAULT_WINDOW,
            overlap: int = DEFAULT_OVERLAP, progress=True, **kw) -> np.ndarray:
    """Animate ``identity`` (an image ``[H, W, C]``, C in {1, 3, 4}, uint8 or float in [0, 1]) with the motion of
    ``driving`` (uint8 ``[T, H, W, 3]``) -> uint8 ``[T, H', W', 3]`` with exactly T frames.

    ``size`` (H, W): the model grid (multiples of 16); None = :func:`default_size`. The identity is letterboxed
    into the grid and the output cropped back to its aspect (``output='crop'``; ``'grid'`` keeps the grid,
    ``'identity'`` also resizes to the identity's size). ``steps``/``seed``/``shift``: ComfyUI's euler + simple
    sampling (see the module docstring); ``window``/``overlap``: video frames per window (4n+1) and shared
    frames. ``progress``: True (tqdm), False, or ``fn(done, total)`` for the denoising steps. Other keywords go
    to :func:`run` (``fit``, ``output``, ``context``, ``negative_context``, ``guidance``).
    """
    return run(identity, driving, bundle, dit, vae, size=size, steps=steps, seed=seed, shift=shift, window=window,
               overlap=overlap, progress=progress, **kw).frames


# ================================================================================================== loading
def load_models(bundle=None, dit=None, vae=None, device="cpu", dtype: torch.dtype = torch.float32) -> tuple:
    """``(bundle, dit, vae)`` from files (None = the embedded tiny model, :mod:`imanim_core.weights`), in eval
    mode. A missing embedded file raises a :class:`CheckpointError` naming it and the command that makes it."""
    from .backbone.wan import inspect_wan_file, load_dit, load_vae
    from .models.bundle import load_bundle
    from .weights import embedded_paths, missing_message, resolve

    given = {"bundle": bundle, "dit": dit, "vae": vae}
    emb = embedded_paths(check=False)
    missing = [getattr(emb, k) for k, v in given.items() if not v and not getattr(emb, k).is_file()]
    if missing:  # name every missing embedded file at once
        raise CheckpointError(missing_message(missing))
    paths = {k: resolve(v, k) for k, v in given.items()}
    info = inspect_wan_file(paths["dit"])  # header only: an image-to-video DiT is refused before any loading
    if info.get("kind") == "wan_dit" and "in_channels" in info:
        check_t2v_channels(info["in_channels"], f"dit {str(paths['dit'])!r}")
    b = load_bundle(paths["bundle"], device=device, dtype=dtype)
    d = load_dit(paths["dit"], dtype=dtype, device=device).eval()
    v = load_vae(paths["vae"], dtype=dtype, device=device).eval()
    return b, d, v


__all__ = ["DEFAULT_STEPS", "DEFAULT_SHIFT", "DEFAULT_WINDOW", "DEFAULT_OVERLAP", "DEFAULT_SEED", "TINY_SIZE",
           "FIT_MODES", "OUTPUT_MODES", "Letterbox", "Animation", "comfy_sigma_table", "simple_sigmas",
           "comfy_noise", "euler_sample", "to_float_image", "fit_image", "parse_size", "check_size",
           "default_size", "identity_image", "prepare_identity", "check_models", "encode_identity",
           "encode_motion", "retarget", "sample_latents", "decode_frames", "to_uint8", "run", "animate",
           "load_models", "dit_width"]
