"""The standalone animate pipeline (diffusers host): one character image + a driving video -> a video.

It is the same maths as the ComfyUI node path (Encode Motion Tokens -> Retarget to Identity -> IM-Animation
Sampler with sampler ``euler`` / scheduler ``simple`` -> VAE Decode), so both give the same video for the same
seed (up to the hosts' floating-point differences in the DiT, DESIGN §4):

1. identity image (grey / RGB / RGBA, uint8 or float, >= 16 px a side, finite) -> RGB (alpha over black,
   ``io.video.to_rgb``, as the nodes' ``checks.image_batch``)
   -> fitted to the model grid (H, W multiples of 16) with :func:`imanim_core.images.fit_image` (``'pad'``:
   scaled to fit inside, centred, edge pixels repeated — the node's default ``fit``); the output is cropped back to
   the image's own aspect (:class:`~imanim_core.images.Letterbox`). Size default: ``images.default_size``.
2. identity -> Wan VAE -> **normalised** latent ``[1, 16, 1, h, w]`` (h = H/8) (``steps.encode_identity``).
3. driving frames -> ``tokenizer.encode_frames`` -> codes ``[T, K, d]`` -> ``steps.retarget`` (all T frames at
   once, the Retarget node's function too) -> tokens ``[1, T, h/2, w/2, Dr]``, checked, padded to the next 4n+1
   frames by repeating the last frame and split into windows by ``windows.plan_motion`` (the sampler node's plan
   too); the output is trimmed back to exactly T frames.
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
   - long videos: windows over *latent* frames from :mod:`imanim_core.windows`; at every step
     ``windows.run_windowed`` runs the DiT on each window (that window's slice of the motion, the same reference)
     and blends the **denoised** outputs — the same function the node's model wrapper calls.
   - CFG only with a text context: ``denoised = uncond + (cond - uncond) * guidance`` (ComfyUI's cfg on
     denoised outputs); with no text (the tiny model) the DiT runs once per step on ``flow.zero_context``.
5. latent -> VAE decode -> frames in [0, 1] -> trimmed to T, cropped to the identity's aspect -> uint8.

Progress: tqdm bars (or a ``progress(done, total)`` callable for the denoising steps). Ctrl-C
(``KeyboardInterrupt``) propagates at once; the DiT is restored (injector detached) on the way out.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field, replace
from typing import Callable, Optional, Sequence

import numpy as np
import torch

from . import windows as W
from .backbone import flow
from .backbone.wan import inspect_wan_file, load_dit, load_vae
from .checks import check_finite, check_t2v_channels
from .defaults import (DEFAULT_OVERLAP, DEFAULT_SEED, DEFAULT_SHIFT, DEFAULT_STEPS,  # noqa: F401 (re-exported)
                       DEFAULT_WINDOW, FIT_MODES, OUTPUT_MODES, default_windows)
from .errors import CheckpointError, InputError
from .models.bundle import load_bundle
from .images import (GRID_PX, TINY_SIZE, Letterbox, check_size, default_size, fit_image,  # noqa: F401 (re-exported)
                     identity_image, parse_size, prepare_identity, to_float_image, to_uint8)
from .steps import (check_injector, check_models, decode_frames, dit_width, encode_identity,  # noqa: F401
                    encode_motion, retarget, to_driving_frames)
from .weights import embedded_paths, missing_message, resolve

NUM_TIMESTEPS = 1000  # ComfyUI's ModelSamplingDiscreteFlow table size and timestep multiplier

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
    if not torch.is_tensor(tokens) or tokens.ndim != 5 or tokens.shape[0] != 1:
        raise InputError(f"motion tokens: expected [1, T, gh, gw, Dr], got "
                         f"{tuple(tokens.shape) if torch.is_tensor(tokens) else type(tokens).__name__}")
    if not torch.is_tensor(reference) or reference.ndim != 5 or reference.shape[:3] != (1, 16, 1):
        raise InputError(f"reference: expected the identity latent [1, 16, 1, h, w], got "
                         f"{tuple(reference.shape) if torch.is_tensor(reference) else type(reference).__name__}")
    check_injector(injector, dit)
    plan = W.plan_motion(tokens, reference.shape[3:5], num_frames, window, overlap)
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
    plan = replace(plan, tokens=plan.tokens.to(device))
    noise = comfy_noise((1, 16, plan.latent_frames, *plan.latent_hw), seed)  # on the CPU, as ComfyUI
    if info is not None:
        info.update(frames=plan.frames, padded_frames=plan.padded_frames, latent_frames=plan.latent_frames,
                    windows=list(plan.windows), sigmas=sigmas.tolist(), cfg=cfg)

    n_calls = steps * len(plan.windows)
    step_fn, bar = _Bars(progress).step_fn(steps)
    with flow.motion_attached(dit, None, injector) as injected:
        def denoise(x, sigma):
            ts = flow.sigma_to_timestep(sigma.float())
            sig = sigma.reshape(-1, 1, 1, 1, 1)

            def denoised(c):  # one window: that window's motion on the patch, x - sigma * v
                def call(xw, win, tokens_w):
                    injected.set_motion(tokens_w)
                    return xw - flow.dit_forward(dit, xw, ts, c, reference).float() * sig
                return call

            per_ctx = [W.run_windowed(x, plan, denoised(c)) for c in contexts]
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
        seed: int = DEFAULT_SEED, shift: float = DEFAULT_SHIFT, window: Optional[int] = None,
        overlap: Optional[int] = None, progress=True, fit: str = "pad", output: str = "crop",
        context: Optional[torch.Tensor] = None, negative_context: Optional[torch.Tensor] = None,
        guidance: float = 1.0, motion_tokens: Optional[torch.Tensor] = None, injector=None,
        frame_chunk: int = 16) -> Animation:
    """:func:`animate` with everything it computed (see :class:`Animation`).

    ``motion_tokens`` (``[1, T, h/2, w/2, Dr]``) with ``injector`` replaces the tokenizer + retargeter (used by
    the explicit skeleton baseline, :mod:`imanim_core.baselines`); ``bundle`` may then be None and ``driving``
    is only used for its frame count. ``window``/``overlap`` None: :func:`defaults.default_windows` for this DiT
    (9/4 for a tiny DiT, its training clip length; 81/16 for Wan 2.1).
    """
    if window is None or overlap is None:
        dw, do = default_windows(dit_width(dit) if dit is not None else None)
        window = dw if window is None else window
        overlap = do if overlap is None else overlap
    timings = {}
    t0 = time.perf_counter()
    if motion_tokens is None:
        check_models(bundle, dit, vae)
        injector = bundle.injector
    elif injector is None:
        raise InputError("motion_tokens: an injector must be given with precomputed motion tokens")
    img0 = identity_image(identity)
    if size is None:
        size = default_size(bundle, dit_width(dit) if dit is not None else None, img0.shape[1:3])
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
            seed: int = DEFAULT_SEED, shift: float = DEFAULT_SHIFT, window: Optional[int] = None,
            overlap: Optional[int] = None, progress=True, **kw) -> np.ndarray:
    """Animate ``identity`` (an image ``[H, W, C]``, C in {1, 3, 4}, uint8 or float in [0, 1]) with the motion of
    ``driving`` (uint8 ``[T, H, W, 3]``) -> uint8 ``[T, H', W', 3]`` with exactly T frames.

    ``size`` (H, W): the model grid (multiples of 16); None = :func:`default_size`. The identity is letterboxed
    into the grid and the output cropped back to its aspect (``output='crop'``; ``'grid'`` keeps the grid,
    ``'identity'`` also resizes to the identity's size). ``steps``/``seed``/``shift``: ComfyUI's euler + simple
    sampling (see the module docstring); ``window``/``overlap``: video frames per window (4n+1) and shared
    frames (None: the DiT's default, see :func:`run`). ``progress``: True (tqdm), False, or ``fn(done, total)``
    for the denoising steps. Other keywords go
    to :func:`run` (``fit``, ``output``, ``context``, ``negative_context``, ``guidance``).
    """
    return run(identity, driving, bundle, dit, vae, size=size, steps=steps, seed=seed, shift=shift, window=window,
               overlap=overlap, progress=progress, **kw).frames


# ================================================================================================== loading
def load_models(bundle=None, dit=None, vae=None, device="cpu", dtype: torch.dtype = torch.float32) -> tuple:
    """``(bundle, dit, vae)`` from files (None = the embedded tiny model, :mod:`imanim_core.weights`), in eval
    mode. A missing embedded file raises a :class:`CheckpointError` naming it and the command that makes it."""
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
