"""The one window planner: overlapping latent windows over long videos, and how to blend them.

Wan's VAE turns T = 4n+1 video frames into T' = n+1 latent frames: latent frame 0 holds frame 0 alone, latent
frame k >= 1 holds frames 4k-3 .. 4k. A video longer than the model's window is denoised as overlapping
windows of *latent* frames; at every step each window is run on its own and the results are blended with
weights that ramp linearly across each overlap and sum to 1 on every latent frame. Both hosts use this module:
the ComfyUI sampler (one ``comfy.sample`` call, a model wrapper runs the windows) and the standalone pipeline.

Units and rules (shared by both hosts, so they give the same video):
- ``window`` is counted in video frames and must be 4n+1 (5, 9, ..., 81); it covers ``(window-1)//4 + 1``
  latent frames.
- ``overlap`` is counted in video frames and is used in whole latent frames (4 video frames each): it is
  rounded down to a multiple of 4. It must leave at least one new latent frame per window.
- Windows have the full window length; the last one is aligned to the end of the video (so it may overlap
  its neighbour by more than asked). A video that fits in one window gets exactly one window.
- A frame count that is not 4n+1 is padded up to the next 4n+1 by repeating the last frame
  (:func:`pad_frames`); the padded frames are decoded and then dropped (the output keeps the driving video's
  frame count).
- The motion of the window of latent frames [s, e) is the per-frame motion of video frames 4s .. 4(e-1)
  (:attr:`Window.frames`, 4(e-s-1)+1 frames, i.e. 4n+1): the window's first latent frame is driven by the
  last frame of its group, as if the window were a video of its own (its first latent frame is a single
  frame to the model).

:func:`plan_motion` applies these rules to a clip's retarget motion once (checks, 4n+1 padding, latent count,
windows -> :class:`MotionPlan`) and :func:`run_windowed` is the per-step window loop; both hosts call them (the
node's model wrapper with ComfyUI's model, the pipeline with the diffusers DiT), so the windows and the blend are
the same code.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, List, Optional, Sequence, Tuple

import torch

from .errors import InputError

__all__ = ["TEMPORAL_STRIDE", "Window", "latent_frame_count", "padded_frame_count", "pad_frames",
           "window_latent_count", "overlap_latent_count", "plan_windows", "plan_frame_windows",
           "blend_weights", "blend", "MotionPlan", "plan_motion", "run_windowed"]

TEMPORAL_STRIDE = 4  # Wan 2.1 VAE: frame 0 alone, then groups of 4


@dataclass(frozen=True)
class Window:
    """Latent frames ``[start, end)`` of the whole latent video."""

    start: int
    end: int

    @property
    def length(self) -> int:
        return self.end - self.start

    @property
    def latents(self) -> slice:
        """Slice of the latent frames (apply on the latent time axis)."""
        return slice(self.start, self.end)

    @property
    def frames(self) -> slice:
        """Slice of the (padded, 4n+1) video frames whose motion drives this window: 4*start .. 4*(end-1)."""
        return slice(TEMPORAL_STRIDE * self.start, TEMPORAL_STRIDE * (self.end - 1) + 1)


def padded_frame_count(num_frames: int) -> int:
    """The smallest 4n+1 >= ``num_frames`` (1, 5, 9, ...)."""
    num_frames = int(num_frames)
    if num_frames < 1:
        raise InputError(f"frame count: expected at least 1 frame, got {num_frames}")
    return ((num_frames - 1 + TEMPORAL_STRIDE - 1) // TEMPORAL_STRIDE) * TEMPORAL_STRIDE + 1


def latent_frame_count(num_frames: int) -> int:
    """Latent frames of a video of ``num_frames`` frames after padding to 4n+1: ``(padded-1)//4 + 1``."""
    return (padded_frame_count(num_frames) - 1) // TEMPORAL_STRIDE + 1


def pad_frames(x: torch.Tensor, dim: int = 1, num_frames: int | None = None) -> torch.Tensor:
    """Pad ``x`` along ``dim`` to ``num_frames`` (default: the next 4n+1) by repeating its last frame."""
    t = x.shape[dim]
    target = padded_frame_count(t) if num_frames is None else int(num_frames)
    if target < t:
        raise InputError(f"pad_frames: cannot pad {t} frames down to {target}")
    if target == t:
        return x
    last = x.narrow(dim, t - 1, 1)
    reps = [1] * x.dim()
    reps[dim] = target - t
    return torch.cat([x, last.repeat(*reps)], dim=dim)


def window_latent_count(window_frames: int) -> int:
    """Latent frames of a window of ``window_frames`` (4n+1, at least 5) video frames."""
    w = int(window_frames)
    if w < TEMPORAL_STRIDE + 1 or (w - 1) % TEMPORAL_STRIDE:
        lo = max(((w - 1) // TEMPORAL_STRIDE) * TEMPORAL_STRIDE + 1, TEMPORAL_STRIDE + 1)
        near = f"{lo}" if w <= lo else f"{lo} or {lo + TEMPORAL_STRIDE}"
        raise InputError(f"window: expected a frame count of the form 4n+1 and at least 5 (5, 9, 13, ..., 81), "
                         f"got {w} (nearest valid: {near})")
    return (w - 1) // TEMPORAL_STRIDE + 1


def overlap_latent_count(overlap_frames: int) -> int:
    """Latent frames of an overlap of ``overlap_frames`` video frames (rounded down to a multiple of 4)."""
    o = int(overlap_frames)
    if o < 0:
        raise InputError(f"overlap: expected 0 or more frames, got {o}")
    return o // TEMPORAL_STRIDE


def plan_windows(num_latent: int, window_latent: int, overlap_latent: int) -> List[Window]:
    """Windows of ``window_latent`` latent frames over ``num_latent`` latent frames, consecutive windows
    sharing ``overlap_latent`` frames (the last window is aligned to the end). One window when it all fits."""
    n, w, o = int(num_latent), int(window_latent), int(overlap_latent)
    if n < 1:
        raise InputError(f"latent frames: expected at least 1, got {n}")
    if w < 1:
        raise InputError(f"window: expected at least 1 latent frame, got {w}")
    if n <= w:
        return [Window(0, n)]
    if o < 0 or o >= w:
        raise InputError(f"overlap: must be smaller than the window; got an overlap of {o} latent frames "
                         f"({o * TEMPORAL_STRIDE} video frames) for a window of {w} latent frames "
                         f"({(w - 1) * TEMPORAL_STRIDE + 1} video frames)")
    stride = w - o
    starts = list(range(0, n - w, stride)) + [n - w]
    out: List[Window] = []
    for s in starts:
        if out and out[-1].start == s:
            continue
        out.append(Window(s, s + w))
    return out


def plan_frame_windows(num_frames: int, window_frames: int, overlap_frames: int) -> List[Window]:
    """:func:`plan_windows` in video-frame units: ``num_frames`` (padded to 4n+1), ``window_frames`` (4n+1),
    ``overlap_frames`` (rounded down to a multiple of 4)."""
    return plan_windows(latent_frame_count(num_frames), window_latent_count(window_frames),
                        overlap_latent_count(overlap_frames))


def blend_weights(windows: Sequence[Window], num_latent: int, dtype=torch.float32, device=None) -> torch.Tensor:
    """Weights ``[len(windows), num_latent]``: zero outside a window, ramping linearly across each overlap
    (a window fades out as the next fades in), and summing to 1 on every latent frame."""
    n = int(num_latent)
    if not windows:
        raise InputError("windows: expected at least one window")
    covered = torch.zeros(n, dtype=torch.bool)
    raw = torch.zeros(len(windows), n, dtype=torch.float64)
    for i, win in enumerate(windows):
        if win.start < 0 or win.end > n or win.length < 1:
            raise InputError(f"windows: window {i} [{win.start}, {win.end}) does not fit {n} latent frames")
        left = windows[i - 1].end - win.start if i > 0 else 0
        right = win.end - windows[i + 1].start if i + 1 < len(windows) else 0
        t = torch.arange(win.start, win.end, dtype=torch.float64)
        ramp_in = ((t - win.start + 1) / (max(left, 0) + 1)).clamp(max=1.0)
        ramp_out = ((win.end - t) / (max(right, 0) + 1)).clamp(max=1.0)
        raw[i, win.start:win.end] = torch.minimum(ramp_in, ramp_out)
        covered[win.start:win.end] = True
    if not bool(covered.all()):
        missing = (~covered).nonzero().flatten().tolist()
        raise InputError(f"windows: latent frames {missing[:8]} are not covered by any window")
    w = raw / raw.sum(dim=0, keepdim=True)
    return w.to(dtype=dtype, device=device)


def blend(chunks: Sequence[torch.Tensor], windows: Sequence[Window], num_latent: int, dim: int = 2,
          weights: torch.Tensor | None = None) -> torch.Tensor:
    """Blend per-window results (``chunks[i]`` has ``windows[i].length`` frames on ``dim``) into one tensor of
    ``num_latent`` frames, with :func:`blend_weights` (or the given ``weights`` [n_windows, num_latent])."""
    if len(chunks) != len(windows):
        raise InputError(f"blend: {len(chunks)} results for {len(windows)} windows")
    if len(windows) == 1 and windows[0].start == 0 and windows[0].end == num_latent:
        return chunks[0]
    ref = chunks[0]
    dim = dim % ref.dim()
    if weights is None:
        weights = blend_weights(windows, num_latent, dtype=ref.dtype, device=ref.device)
    shape = list(ref.shape)
    shape[dim] = num_latent
    out = torch.zeros(shape, dtype=ref.dtype, device=ref.device)
    view = [1] * ref.dim()
    for i, (chunk, win) in enumerate(zip(chunks, windows, strict=True)):
        if chunk.shape[dim] != win.length:
            raise InputError(f"blend: result {i} has {chunk.shape[dim]} frames, window [{win.start}, {win.end}) "
                             f"has {win.length}")
        view[dim] = win.length
        wv = weights[i, win.start:win.end].to(device=chunk.device, dtype=chunk.dtype).view(view)
        out.narrow(dim, win.start, win.length).add_(chunk * wv)
    return out


# ============================================================================================ motion plan
@dataclass(frozen=True)
class MotionPlan:
    """A clip's retargeted motion, ready for windowed denoising.

    ``tokens``: ``[1, padded_frames, h/2, w/2, Dr]`` (the last frame repeated up to 4n+1); ``frames``: the driving
    frame count T (the output keeps it); ``latent_hw``: the latent's (h, w); ``windows``: the latent windows."""

    tokens: torch.Tensor
    frames: int
    padded_frames: int
    latent_frames: int
    latent_hw: Tuple[int, int]
    windows: Tuple[Window, ...]

    def info(self) -> dict:
        """The plan in the hosts' words (the pipeline's ``info``, the sampler node's status)."""
        return {"frames": self.frames, "padded_frames": self.padded_frames, "latent_frames": self.latent_frames,
                "windows": list(self.windows), "latent_hw": self.latent_hw}


def _shape(x) -> str:
    return str(tuple(x.shape)) if torch.is_tensor(x) else type(x).__name__


def plan_motion(tokens: torch.Tensor, latent_hw: Sequence[int], num_frames: Optional[int] = None,
                window: int = 81, overlap: int = 16, where: str = "motion tokens") -> MotionPlan:
    """Check per-frame motion ``tokens`` ``[1, T, h/2, w/2, Dr]`` against the identity latent's ``latent_hw``
    (h, w), keep the first ``num_frames`` (default T), pad them to 4n+1 and plan the windows (``window`` /
    ``overlap`` in video frames, :func:`plan_frame_windows`). ``where`` names the input in messages."""
    if not torch.is_tensor(tokens) or tokens.ndim != 5 or tokens.shape[0] != 1:
        raise InputError(f"{where}: expected [1, T, gh, gw, Dr], got {_shape(tokens)}")
    t = int(tokens.shape[1] if num_frames is None else num_frames)
    if t < 1 or t > tokens.shape[1]:
        raise InputError(f"num_frames: expected 1..{tokens.shape[1]} (the motion's frames), got {t}")
    h, w = int(latent_hw[0]), int(latent_hw[1])
    if tuple(tokens.shape[2:4]) != (h // 2, w // 2) or h % 2 or w % 2:
        raise InputError(f"{where}: motion grid {tuple(tokens.shape[2:4])} does not match the identity latent "
                         f"{h}x{w} (expected {(h // 2, w // 2)})")
    padded = padded_frame_count(t)
    tokens = pad_frames(tokens[:, :t], dim=1, num_frames=padded)
    wins = plan_frame_windows(padded, int(window), int(overlap))
    return MotionPlan(tokens, t, padded, latent_frame_count(t), (h, w), tuple(wins))


WindowCall = Callable[[torch.Tensor, Window, torch.Tensor], torch.Tensor]


def run_windowed(x: torch.Tensor, plan: MotionPlan, call: WindowCall, dim: int = 2,
                 where: str = "latent") -> torch.Tensor:
    """One denoising step over the plan's windows: ``call(x_window, window, tokens_window)`` gives the denoised
    window (the host runs its model there with that window's motion set), the results are blended with
    :func:`blend`. One window: ``call(x, window, plan.tokens)`` on the whole latent, nothing blended."""
    n = x.shape[dim]
    if n != plan.latent_frames:
        raise InputError(f"{where}: {n} latent frames, but the retargeted motion covers {plan.latent_frames} "
                         f"(frame_count frames padded to 4n+1)")
    if len(plan.windows) == 1:
        return call(x, plan.windows[0], plan.tokens)
    outs = [call(x.narrow(dim, win.start, win.length), win, plan.tokens[:, win.frames]) for win in plan.windows]
    return blend(outs, plan.windows, n, dim=dim)
