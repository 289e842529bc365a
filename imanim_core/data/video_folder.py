"""Real training data: a folder of clips, each a video (or a folder of frames) with per-frame pose JSON.

On-disk layout (one layout; :func:`write_puppet_video_folder` writes exactly this)::

    root/
      <clip>/                    one folder per clip, any name (sorted by name; names starting with "." or "_"
                                 are ignored)
        video.mp4                the frames: a file named video.<ext> (mp4, webm, mov, mkv, m4v, avi, gif) ...
        frames/000000.png ...    ... OR a frames/ folder of images (png, jpg, webp, bmp, tif), natural order;
                                 exactly one of the two
        pose/000000.json ...     one OpenPose / DWPose JSON per frame. The frame number is the last run of
                                 digits in the file name, so 000012.json and OpenPose's own
                                 clip_000000000012_keypoints.json both work. Frames are numbered 0..T-1 and
                                 every frame has exactly one pose file.
        (anything else, e.g. the puppet.json written by the puppet writer, is ignored)

Pose JSON: ``{"people": [{"pose_keypoints_2d": [x, y, c, ...], "foot_keypoints_2d": [...]?}],
"canvas_width"?: W, "canvas_height"?: H}`` — OpenPose BODY_18 / BODY_25, COCO-17 or DWPose (see
:func:`imanim_core.data.skeleton.keypoints_from_openpose`: coordinates in pixels or normalised to [0, 1],
scaled from the canvas size to the frame size; a joint is visible when its confidence > ``threshold``).
``people[0]`` is used: one person per clip.

:func:`validate_video_folder` checks everything up front (every pose file is parsed, every video decoded once;
of a ``frames/`` folder the images are counted and the first decoded — a later unreadable or differently sized
image raises a DataError naming it when it is read) and raises one
:class:`~imanim_core.errors.DataError` listing every problem with its file (missing pose for frame N, frame count
mismatch, unreadable JSON, no people, empty folder, ...). It returns a :class:`VideoFolderReport` holding all the
keypoints, so the data set never re-reads JSON.

:class:`VideoFolderDataset` yields training samples with the same keys as
:class:`imanim_core.data.puppet.PuppetDataset`: a driving clip of T frames and an identity frame from the same
video at least ``min_gap`` frames away (the temporal bottleneck), keypoints, visibility and heatmaps, with
kornia augmentation (random affine / scale / flip / colour jitter) applied identically to every frame and to
the keypoints (a flip also swaps left and right joints). Videos are decoded whole (a small per-worker cache
keeps the last few); for long videos prefer the ``frames/`` layout, which is read frame by frame.
"""
from __future__ import annotations

import json
import math
import os
import re
import shutil
import tempfile
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np

from ..config import NUM_JOINTS
from ..errors import DataError, IMAnimError, InputError
from ..io.video import list_image_files, read_image, read_video, to_float, write_video
from .puppet import FAMILIES, PuppetIdentity, PuppetMotion, render_clip
from .skeleton import FLIP_PERMUTATION, keypoints_from_openpose, keypoints_to_openpose

VIDEO_NAMES = tuple(f"video{e}" for e in (".mp4", ".webm", ".mov", ".mkv", ".m4v", ".avi", ".gif"))
FRAMES_DIR = "frames"
POSE_DIR = "pose"
_MAX_LISTED = 25


@dataclass
class ClipInfo:
    name: str
    path: Path
    kind: str  # "video" | "frames"
    source: Path  # the video file or the frames folder
    num_frames: int
    size: tuple  # (H, W)
    fps: float
    keypoints: np.ndarray  # float32 [T, 20, 2] pixels
    visibility: np.ndarray  # bool [T, 20]
    frame_files: Optional[list] = None  # frames layout: the image files in order


@dataclass
class VideoFolderReport:
    root: Path
    clips: list = field(default_factory=list)

    @property
    def num_frames(self) -> int:
        return sum(c.num_frames for c in self.clips)

    def summary(self) -> str:
        sizes = sorted({c.size for c in self.clips})
        vis = float(np.mean([c.visibility.mean() for c in self.clips])) if self.clips else 0.0
        return (f"{self.root}: {len(self.clips)} clips, {self.num_frames} frames, sizes {sizes}, "
                f"{100 * vis:.0f}% of joints visible")


def _frame_number(name: str) -> Optional[int]:
    m = re.findall(r"\d+", Path(name).stem)
    return int(m[-1]) if m else None


def _clip_dirs(root: Path) -> list:
    return sorted(d for d in root.iterdir() if d.is_dir() and not d.name.startswith((".", "_")))


def _check_clip(d: Path, threshold: float, allow_empty_frames: bool, problems: list) -> Optional[ClipInfo]:
    n0 = len(problems)
    videos = [d / v for v in VIDEO_NAMES if (d / v).is_file()]
    fdir = d / FRAMES_DIR
    has_frames = fdir.is_dir()
    if len(videos) + int(has_frames) == 0:
        problems.append(f"{d}: no frames: expected a video file ({', '.join(VIDEO_NAMES)}) or a "
                        f"'{FRAMES_DIR}/' folder of images")
        return None
    if len(videos) + int(has_frames) > 1:
        found = [v.name for v in videos] + ([FRAMES_DIR + "/"] if has_frames else [])
        problems.append(f"{d}: more than one frame source ({', '.join(found)}); keep exactly one")
        return None
    frame_files = None
    fps = 25.0
    try:
        if videos:
            kind, source = "video", videos[0]
            frames, fps = read_video(source)
            n, size = int(frames.shape[0]), (int(frames.shape[1]), int(frames.shape[2]))
            del frames
        else:
            kind, source = "frames", fdir
            frame_files = list_image_files(fdir)
            if not frame_files:
                problems.append(f"{fdir}: empty frames folder (no images)")
                return None
            n = len(frame_files)
            first = read_image(frame_files[0])
            size = (int(first.shape[0]), int(first.shape[1]))
    except IMAnimError as e:
        problems.append(f"{d}: {e}")
        return None
    pdir = d / POSE_DIR
    if not pdir.is_dir():
        problems.append(f"{pdir}: missing pose folder (expected one OpenPose/DWPose JSON per frame)")
        return None
    by_frame = {}
    for f in sorted(pdir.iterdir()):
        if f.name.startswith(".") or not f.is_file() or f.suffix.lower() != ".json":
            continue
        k = _frame_number(f.name)
        if k is None:
            problems.append(f"{f}: no frame number in the file name (expected e.g. 000012.json)")
        elif k in by_frame:
            problems.append(f"{f}: frame {k} already has a pose file ({by_frame[k].name})")
        else:
            by_frame[k] = f
    if not by_frame:
        problems.append(f"{pdir}: no pose JSON files (expected {n}, one per frame)")
        return None
    if len(by_frame) != n or max(by_frame) != n - 1:
        extra = sorted(k for k in by_frame if k >= n)
        msg = f"{d}: frame count mismatch: {n} frames in {source.name} but {len(by_frame)} pose files"
        if extra:
            msg += f" (pose for frame(s) {extra[:5]}{' ...' if len(extra) > 5 else ''} beyond the last frame {n - 1})"
        problems.append(msg)
    missing = [k for k in range(n) if k not in by_frame]
    for k in missing[:5]:
        problems.append(f"{pdir}: missing pose for frame {k} (expected {k:06d}.json)")
    if len(missing) > 5:
        problems.append(f"{pdir}: ... and {len(missing) - 5} more frames without a pose file")
    kps = np.zeros((n, NUM_JOINTS, 2), dtype=np.float32)
    vis = np.zeros((n, NUM_JOINTS), dtype=bool)
    for k in range(n):
        f = by_frame.get(k)
        if f is None:
            continue
        try:
            with open(f, "r", encoding="utf-8") as fh:
                data = json.load(fh)
        except json.JSONDecodeError as e:
            problems.append(f"{f}: unreadable JSON ({e.msg} at line {e.lineno}, column {e.colno})")
            continue
        except (OSError, UnicodeDecodeError) as e:
            problems.append(f"{f}: could not be read ({e})")
            continue
        if allow_empty_frames and isinstance(data, dict) and data.get("people") == []:
            continue
        try:
            kps[k], vis[k] = keypoints_from_openpose(data, frame_size=size, threshold=threshold, where=str(f))
        except IMAnimError as e:
            problems.append(str(e))
    if len(problems) > n0:
        return None
    return ClipInfo(name=d.name, path=d, kind=kind, source=source, num_frames=n, size=size, fps=float(fps),
                    keypoints=kps, visibility=vis, frame_files=frame_files)


def validate_video_folder(root, threshold: float = 0.3, allow_empty_frames: bool = False,
                          progress: Optional[Callable[[int, int, str], None]] = None) -> VideoFolderReport:
    """Check every clip of ``root`` (layout in the module docstring); read all pose files.

    allow_empty_frames: a frame whose JSON has ``"people": []`` counts as all joints invisible instead of an
    error. progress(i, n, clip_name) is called before each clip.
    Raises DataError listing every problem (file and what is wrong). Returns a :class:`VideoFolderReport`.
    """
    r = Path(root)
    if not r.exists():
        raise DataError(f"video folder {str(r)!r} does not exist")
    if not r.is_dir():
        raise DataError(f"video folder {str(r)!r} is not a folder")
    dirs = _clip_dirs(r)
    if not dirs:
        raise DataError(f"video folder {str(r)!r} is empty: expected one sub-folder per clip holding video.mp4 "
                        f"(or frames/) and pose/000000.json ...")
    problems: list = []
    clips = []
    for i, d in enumerate(dirs):
        if progress is not None:
            progress(i, len(dirs), d.name)
        c = _check_clip(d, threshold, allow_empty_frames, problems)
        if c is not None:
            clips.append(c)
    if problems:
        shown = "\n  - ".join(problems[:_MAX_LISTED])
        more = f"\n  ... and {len(problems) - _MAX_LISTED} more" if len(problems) > _MAX_LISTED else ""
        raise DataError(f"video folder {str(r)!r}: {len(problems)} problem(s):\n  - {shown}{more}")
    return VideoFolderReport(root=r, clips=clips)


# ---------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Augment:
    """Random augmentation, one draw per sample, applied to every frame and the keypoints alike."""

    flip_p: float = 0.5
    degrees: float = 10.0  # rotation in [-degrees, degrees]
    scale: tuple = (0.85, 1.15)
    translate: float = 0.06  # fraction of the image side, each axis
    brightness: float = 0.15  # additive, in [-b, b]
    contrast: float = 0.15  # factor in [1-c, 1+c]
    saturation: float = 0.2  # factor in [1-s, 1+s]
    hue: float = 0.03  # fraction of a full turn, in [-h, h]

    @staticmethod
    def none() -> "Augment":
        return Augment(0.0, 0.0, (1.0, 1.0), 0.0, 0.0, 0.0, 0.0, 0.0)


def affine_matrix(size: Sequence[int], angle_deg: float = 0.0, scale: float = 1.0, translate=(0.0, 0.0),
                  flip: bool = False) -> np.ndarray:
    """2x3 matrix in pixel coordinates (centres at integers) of: optional horizontal flip, then rotation by
    angle_deg (counter-clockwise on screen) and scaling about the image centre, then a translation (pixels)."""
    h, w = int(size[0]), int(size[1])
    cx, cy = (w - 1) / 2.0, (h - 1) / 2.0
    a = math.radians(angle_deg)
    ca, sa = math.cos(a) * scale, math.sin(a) * scale
    R = np.array([[ca, sa, 0.0], [-sa, ca, 0.0], [0.0, 0.0, 1.0]])  # y points down: CCW on screen
    C = np.array([[1.0, 0, -cx], [0, 1.0, -cy], [0, 0, 1.0]])
    Ci = np.array([[1.0, 0, cx + translate[0]], [0, 1.0, cy + translate[1]], [0, 0, 1.0]])
    F = np.array([[-1.0, 0, w - 1.0], [0, 1.0, 0], [0, 0, 1.0]]) if flip else np.eye(3)
    return (Ci @ R @ C @ F)[:2]


def apply_affine(frames, keypoints, visibility, M: np.ndarray, flip: bool):
    """Warp frames (torch float [N,3,H,W]) with kornia and move keypoints ([..., 20, 2]) with the same matrix.

    ``flip`` must say whether M contains a horizontal flip: left/right joints are then swapped. Joints that
    leave the image become invisible (and (0, 0)). Returns (frames, keypoints, visibility) as torch tensors.
    """
    import torch
    from kornia.geometry.transform import warp_affine

    n, _, h, w = frames.shape
    Mt = torch.as_tensor(M, dtype=frames.dtype)
    out = warp_affine(frames, Mt[None].expand(n, 2, 3), dsize=(h, w), mode="bilinear", padding_mode="zeros",
                      align_corners=True)
    kp = torch.as_tensor(keypoints, dtype=torch.float32)
    vis = torch.as_tensor(visibility, dtype=torch.bool)
    Mf = torch.as_tensor(M, dtype=torch.float32)
    kp = kp @ Mf[:, :2].T + Mf[:, 2]
    if flip:
        perm = list(FLIP_PERMUTATION)
        kp, vis = kp[..., perm, :], vis[..., perm]
    inside = (kp[..., 0] >= -0.5) & (kp[..., 0] <= w - 0.5) & (kp[..., 1] >= -0.5) & (kp[..., 1] <= h - 0.5)
    vis = vis & inside
    kp = torch.where(vis[..., None], kp, torch.zeros_like(kp))
    return out, kp, vis


def color_jitter(frames, brightness: float, contrast: float, saturation: float, hue: float):
    """The same colour change for all frames (torch float [N,3,H,W] in [0, 1]) with kornia.enhance."""
    from kornia.enhance import adjust_brightness, adjust_contrast, adjust_hue, adjust_saturation

    x = frames
    if brightness:
        x = adjust_brightness(x, float(brightness))
    if contrast != 1.0:
        x = adjust_contrast(x, float(contrast))
    if saturation != 1.0:
        x = adjust_saturation(x, float(saturation))
    if hue:
        x = adjust_hue(x, float(hue) * 2 * math.pi)
    return x.clamp(0.0, 1.0)


def letterbox(frame: np.ndarray, size: Sequence[int]):
    """Resize keeping the aspect ratio and pad centred with zeros to (H, W). Returns (image, scale, (px, py)):
    a pixel x maps to (x + 0.5) * scale - 0.5 + px (same for y)."""
    import cv2

    h0, w0 = frame.shape[:2]
    h, w = int(size[0]), int(size[1])
    s = min(h / h0, w / w0)
    nh, nw = max(1, int(round(h0 * s))), max(1, int(round(w0 * s)))
    if (nh, nw) != (h0, w0):
        frame = cv2.resize(frame, (nw, nh), interpolation=cv2.INTER_AREA if s < 1 else cv2.INTER_LINEAR)
    py, px = (h - nh) // 2, (w - nw) // 2
    if (nh, nw) == (h, w):
        return frame, (nw / w0, nh / h0), (0, 0)
    out = np.zeros((h, w, 3), dtype=frame.dtype)
    out[py:py + nh, px:px + nw] = frame
    return out, (nw / w0, nh / h0), (px, py)


class _ClipCache:
    def __init__(self, capacity: int):
        self.capacity = max(0, int(capacity))
        self.items: OrderedDict = OrderedDict()

    def get(self, key, load):
        if key in self.items:
            self.items.move_to_end(key)
            return self.items[key]
        v = load()
        if self.capacity:
            self.items[key] = v
            while len(self.items) > self.capacity:
                self.items.popitem(last=False)
        return v


def _torch_dataset_base():
    import torch.utils.data

    return torch.utils.data.Dataset


class VideoFolderDataset(_torch_dataset_base()):
    """Training samples from a validated video folder (layout in the module docstring).

    Item i uses clip ``i % num_clips`` and random times from (seed, epoch, i) — deterministic; call
    :meth:`set_epoch` for new draws. Keys (torch; images float32 [0, 1], ``[T,H,W,3]``):
    ``frames``, ``keypoints`` [T,20,2] (pixels of the output size), ``visibility`` [T,20], ``heatmaps``
    [T,20,Hh,Wh] (via ``render_heatmaps``), ``clip`` (index), ``frame_indices`` [T]; for stage 2/3 also
    ``identity`` [H,W,3], ``identity_keypoints`` [20,2], ``identity_visibility`` [20], ``identity_index``,
    ``target`` (= ``frames``: the same video), ``target_keypoints``, ``target_visibility``, ``target_heatmaps``
    and ``cross_identity`` (False).

    size: (H, W) output; frames are letterboxed (aspect kept, centred zero padding). None keeps the native size
    (all clips must then share one size to be batched). frame_stride: take every k-th frame. min_gap: the
    identity frame is at least this many frames away from every driving frame (0 allows one of them).
    augment: an :class:`Augment`, True (defaults) or False/None.
    """

    def __init__(self, root, num_frames: int = 8, size: Optional[Sequence[int]] = (64, 64),
                 heatmap_size: Optional[Sequence[int]] = (16, 16), sigma: float = 1.0, stage: int = 2,
                 frame_stride: int = 1, min_gap: int = 8, augment=True, samples_per_epoch: Optional[int] = None,
                 seed: int = 0, threshold: float = 0.3, allow_empty_frames: bool = False, cache_clips: int = 2,
                 report: Optional[VideoFolderReport] = None):
        if int(stage) not in (1, 2, 3):
            raise InputError(f"stage: expected 1, 2 or 3, got {stage}")
        if int(num_frames) < 1 or int(frame_stride) < 1 or int(min_gap) < 0:
            raise InputError(f"num_frames and frame_stride must be >= 1 and min_gap >= 0, got {num_frames}, "
                             f"{frame_stride}, {min_gap}")
        self.report = report if report is not None else validate_video_folder(root, threshold, allow_empty_frames)
        self.stage, self.num_frames = int(stage), int(num_frames)
        self.stride, self.min_gap = int(frame_stride), int(min_gap)
        self.size = None if size is None else (int(size[0]), int(size[1]))
        self.heatmap_size = None if heatmap_size is None else (int(heatmap_size[0]), int(heatmap_size[1]))
        self.sigma, self.seed, self.epoch = float(sigma), int(seed), 0
        self.augment = Augment() if augment is True else (augment or None)
        span = (self.num_frames - 1) * self.stride + 1
        need = span + (self.min_gap if self.stage > 1 else 0)
        self.span = span
        self.clips = [c for c in self.report.clips if c.num_frames >= need]
        self.skipped = [c.name for c in self.report.clips if c.num_frames < need]
        if not self.clips:
            gap = f" plus an identity frame {self.min_gap} frames away" if self.stage > 1 else ""
            raise DataError(f"video folder {str(self.report.root)!r}: no clip is long enough: {self.num_frames} "
                            f"frames at stride {self.stride}{gap} need {need} frames; the longest clip has "
                            f"{max(c.num_frames for c in self.report.clips)}")
        if self.size is None and len({c.size for c in self.clips}) > 1:
            raise DataError(f"video folder {str(self.report.root)!r}: clips have different sizes "
                            f"{sorted({c.size for c in self.clips})}; pass size=(H, W)")
        self.length = int(samples_per_epoch) if samples_per_epoch else len(self.clips)
        self._cache = _ClipCache(cache_clips)

    def __len__(self) -> int:
        return self.length

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    # -- sampling ------------------------------------------------------------------------------------------
    def _times(self, clip: ClipInfo, rng: np.random.Generator):
        n, span, gap = clip.num_frames, self.span, self.min_gap
        starts = np.arange(0, n - span + 1)
        if self.stage == 1:
            return int(rng.choice(starts)), None
        last = starts + span - 1
        ok = (starts - gap >= 0) | (last + gap <= n - 1)
        start = int(rng.choice(starts[ok]))
        before = np.arange(0, max(0, start - gap + 1))
        after = np.arange(start + span - 1 + gap, n)
        cand = np.concatenate([before, after])
        return start, int(rng.choice(cand))

    def _read_frames(self, clip: ClipInfo, idx: list) -> np.ndarray:
        try:
            if clip.kind == "video":
                frames = self._cache.get(str(clip.source), lambda: read_video(clip.source)[0])
                if frames.shape[0] != clip.num_frames:
                    raise DataError(f"{clip.source}: has {frames.shape[0]} frames now, {clip.num_frames} when "
                                    f"validated")
                return frames[idx]
            out = []
            for i in idx:
                img = read_image(clip.frame_files[i])
                if img.shape[:2] != tuple(clip.size):
                    raise DataError(f"{clip.frame_files[i]}: is {img.shape[1]}x{img.shape[0]}, the clip's first frame "
                                    f"is {clip.size[1]}x{clip.size[0]}; all frames of a clip must have one size")
                out.append(img)
            return np.stack(out)
        except DataError:
            raise
        except IMAnimError as e:
            raise DataError(f"clip {clip.name!r}: {e}") from None

    def __getitem__(self, index: int) -> dict:
        import torch

        from .heatmaps import render_heatmaps

        if not -self.length <= index < self.length:
            raise IndexError(index)
        index %= self.length
        rng = np.random.default_rng(np.random.SeedSequence([self.seed & 0xFFFFFFFF, self.epoch, index, 0xF01D]))
        ci = index % len(self.clips)
        clip = self.clips[ci]
        start, id_idx = self._times(clip, rng)
        idx = [start + k * self.stride for k in range(self.num_frames)]
        all_idx = idx + ([id_idx] if id_idx is not None else [])
        raw = self._read_frames(clip, all_idx)
        kp = clip.keypoints[all_idx].astype(np.float64)
        vis = clip.visibility[all_idx].copy()
        if self.size is not None:
            boxed = []
            for f in raw:
                b, (sx, sy), (px, py) = letterbox(f, self.size)
                boxed.append(b)
            raw = np.stack(boxed)
            kp[..., 0] = (kp[..., 0] + 0.5) * sx - 0.5 + px
            kp[..., 1] = (kp[..., 1] + 0.5) * sy - 0.5 + py
        h, w = raw.shape[1:3]
        x = to_float(raw).permute(0, 3, 1, 2)
        kpt = torch.from_numpy(kp.astype(np.float32))
        vist = torch.from_numpy(vis)
        a = self.augment
        if a is not None:
            flip = bool(rng.random() < a.flip_p)
            M = affine_matrix((h, w), angle_deg=rng.uniform(-a.degrees, a.degrees), scale=rng.uniform(*a.scale),
                              translate=(rng.uniform(-a.translate, a.translate) * w,
                                         rng.uniform(-a.translate, a.translate) * h), flip=flip)
            x, kpt, vist = apply_affine(x, kpt, vist, M, flip)
            x = color_jitter(x, rng.uniform(-a.brightness, a.brightness), rng.uniform(1 - a.contrast, 1 + a.contrast),
                             rng.uniform(1 - a.saturation, 1 + a.saturation), rng.uniform(-a.hue, a.hue))
        kpt = torch.where(vist[..., None], kpt, torch.zeros_like(kpt))
        imgs = x.permute(0, 2, 3, 1).contiguous()
        T = self.num_frames
        out = {"frames": imgs[:T], "keypoints": kpt[:T], "visibility": vist[:T], "clip": torch.tensor(ci),
               "frame_indices": torch.tensor(idx)}
        if self.heatmap_size is not None:
            out["heatmaps"] = render_heatmaps(out["keypoints"], out["visibility"], self.heatmap_size,
                                              sigma=self.sigma, image_size=(h, w))
        if self.stage > 1:
            out.update(identity=imgs[T], identity_keypoints=kpt[T], identity_visibility=vist[T],
                       identity_index=torch.tensor(id_idx), target=out["frames"], target_keypoints=out["keypoints"],
                       target_visibility=out["visibility"], cross_identity=torch.tensor(False))
            if "heatmaps" in out:
                out["target_heatmaps"] = out["heatmaps"]
        return out


# ---------------------------------------------------------------------------------------------------------
def _clip_complete(d: Path, meta: dict) -> bool:
    try:
        with open(d / "puppet.json", "r", encoding="utf-8") as fh:
            old = json.load(fh)
    except (OSError, ValueError):
        return False
    if old != meta:
        return False
    n = meta["frames"]
    poses = list((d / POSE_DIR).glob("*.json")) if (d / POSE_DIR).is_dir() else []
    if len(poses) != n:
        return False
    if meta["layout"] == "frames":
        return (d / FRAMES_DIR).is_dir() and len(list((d / FRAMES_DIR).glob("*.png"))) == n
    return (d / "video.mp4").is_file()


def write_puppet_video_folder(root, num_clips: int = 4, frames: int = 24, size: Sequence[int] = (64, 64),
                              seed: int = 0, fps: float = 16.0, layout: str = "video", pose_format: str = "dwpose",
                              families: Optional[Sequence[str]] = None,
                              progress: Optional[Callable[[int, int, str], None]] = None) -> Path:
    """Write a puppet-world data set in exactly the layout of this module and return ``root``.

    Clip i is ``clip_{i:04d}``: identity and motion drawn from (seed, i); motion families cycle through
    ``families`` (default: all of :data:`~imanim_core.data.puppet.FAMILIES`). layout: "video" (video.mp4, H.264)
    or "frames" (frames/000000.png ...). pose_format: "dwpose" (BODY_18 + foot_keypoints_2d), "body25" or
    "body18". Each clip is written to a temporary folder and renamed into place; clips already complete with the
    same settings are kept, so an interrupted run resumes. A ``puppet.json`` per clip records the seeds.
    """
    if layout not in ("video", "frames"):
        raise InputError(f"layout {layout!r}: expected 'video' or 'frames'")
    if pose_format not in ("dwpose", "body25", "body18"):
        raise InputError(f"pose_format {pose_format!r}: expected 'dwpose', 'body25' or 'body18'")
    if int(num_clips) < 1 or int(frames) < 1:
        raise InputError(f"num_clips and frames must be >= 1, got {num_clips}, {frames}")
    fams = tuple(families) if families else FAMILIES
    bad = [f for f in fams if f not in FAMILIES]
    if bad:
        raise InputError(f"families: unknown {bad}; choose from {FAMILIES}")
    h, w = int(size[0]), int(size[1])
    # H.264 needs even sizes: the video writer pads odd ones, so the stored frames (and canvas) are even
    stored = (h + h % 2, w + w % 2) if layout == "video" else (h, w)
    out = Path(root)
    out.mkdir(parents=True, exist_ok=True)
    for i in range(int(num_clips)):
        name = f"clip_{i:04d}"
        d = out / name
        ss = np.random.SeedSequence([int(seed) & 0xFFFFFFFF, i, 0xC11B])
        id_seed, mo_seed = (int(x) for x in ss.generate_state(2))
        fam = fams[i % len(fams)]
        meta = {"identity_seed": id_seed, "motion_seed": mo_seed, "family": fam, "fps": float(fps),
                "frames": int(frames), "size": [h, w], "layout": layout, "pose_format": pose_format}
        if progress is not None:
            progress(i, int(num_clips), name)
        if d.is_dir() and _clip_complete(d, meta):
            continue
        if d.exists() and not (d / "puppet.json").is_file():
            raise DataError(f"{d} exists and was not written by the puppet writer (no puppet.json); "
                            f"choose another output folder")
        r = render_clip(PuppetIdentity.sample(id_seed), PuppetMotion.sample(mo_seed, fam), int(frames), fps, (h, w))
        tmp = Path(tempfile.mkdtemp(prefix=f".{name}.", dir=str(out)))
        try:
            if layout == "video":
                write_video(tmp / "video.mp4", r["frames"], fps)
            else:
                import cv2

                (tmp / FRAMES_DIR).mkdir()
                for t, f in enumerate(r["frames"]):
                    if not cv2.imwrite(str(tmp / FRAMES_DIR / f"{t:06d}.png"), np.ascontiguousarray(f[..., ::-1])):
                        raise DataError(f"could not write {tmp / FRAMES_DIR / f'{t:06d}.png'}")
            (tmp / POSE_DIR).mkdir()
            for t in range(int(frames)):
                js = keypoints_to_openpose(r["keypoints"][t], r["visibility"][t], stored, fmt=pose_format)
                with open(tmp / POSE_DIR / f"{t:06d}.json", "w", encoding="utf-8") as fh:
                    json.dump(js, fh)
            with open(tmp / "puppet.json", "w", encoding="utf-8") as fh:
                json.dump(meta, fh, indent=1)
            if d.exists():
                shutil.rmtree(d)
            os.replace(tmp, d)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    return out


__all__ = ["ClipInfo", "VideoFolderReport", "validate_video_folder", "Augment", "affine_matrix", "apply_affine",
           "color_jitter", "letterbox", "VideoFolderDataset", "write_puppet_video_folder", "VIDEO_NAMES",
           "FRAMES_DIR", "POSE_DIR"]
