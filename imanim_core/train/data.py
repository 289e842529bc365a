"""Training data for the stages: the puppet world (tiny preset) or a video folder (``--data``), and the
targets built from them (tokenizer inputs, heatmaps in the right frame).

Both data sets give the same sample keys (``data/puppet/`` ``PuppetDataset``): ``frames`` [T,H,W,3] float in
[0, 1] (the driving clip), ``keypoints`` [T,20,2] pixels, ``visibility`` [T,20]; stages 2-3 also ``identity``
[H,W,3], ``target`` [T,H,W,3], ``target_keypoints``, ``target_visibility``. Heatmaps are rendered here (not by
the data sets) so that their frame is always the one the model sees:

- stage 1: in the **padded square** the tokenizer sees (``preprocess_frames``: shorter side padded, centred),
  at the joint head's output size (decoder grid x upsample);
- stages 2-3: in the **identity image's frame** (= the target video's frame), on the retargeter grid
  (latent h/2 x w/2 = H/16 x W/16) x upsample.

Which samples a batch holds is a pure function of the run's sample counter (see ``seeding.epoch_indices``),
so the data position is restored exactly on resume.
"""
from __future__ import annotations

import math
from typing import Optional

import torch

from ..data.heatmaps import render_heatmaps
from ..data.puppet import PuppetDataset
from ..data.video_folder import VideoFolderDataset
from ..errors import DataError, IMAnimError
from ..models.tokenizer import preprocess_frames
from .config import TrainConfig
from .seeding import epoch_indices

PUPPET_LENGTH = 2 ** 31 - 1  # the puppet world is endless: item i is generated from (seed, i)
STAGE1_FRAMES_PER_CLIP = 4  # stage 1 draws this many frames from each clip ...
STAGE1_FPS = 4.0  # ... a quarter of a second apart (different poses) in the puppet world,
STAGE1_FRAME_STRIDE = 6  # ... every 6th frame of a real video
CLIP_FPS = 16.0  # stages 2-3 and vae: Wan's frame rate


class Source:
    """A data set plus how to pick items for a sample counter.

    Puppet world: item = the counter (every sample is new). Video folder: the counter walks through seeded
    permutations of the clips, one per epoch; the item index ``epoch * num_clips + clip`` selects that clip
    (``VideoFolderDataset`` uses clip ``index % num_clips``) with new random times and augmentation each epoch.
    """

    def __init__(self, dataset, num_clips: Optional[int], seed: int, what: str):
        self.dataset, self.num_clips, self.seed, self.what = dataset, num_clips, seed, what

    def indices(self, offset: int, count: int) -> list:
        if self.num_clips is None:
            return [(offset + i) % PUPPET_LENGTH for i in range(count)]
        n = self.num_clips
        clips = epoch_indices(n, offset, count, self.seed)
        return [(((offset + i) // n) * n + c) % (PUPPET_LENGTH - PUPPET_LENGTH % n) for i, c in enumerate(clips)]

    def samples(self, offset: int, count: int) -> list:
        return [self.dataset[i] for i in self.indices(offset, count)]


def make_source(cfg: TrainConfig, stage: int, num_frames: int, fps: float = CLIP_FPS, size=None,
                frame_stride: int = 1) -> Source:
    """Puppet world without ``--data`` (tiny preset), else the video folder at ``--data`` (validated up front,
    letterboxed to ``size``, kornia-style augmentation). ``fps`` is the puppet world's, ``frame_stride`` the
    video folder's way of spacing frames out."""
    size = tuple(size) if size is not None else (cfg.height, cfg.width)
    if cfg.data:
        ds = VideoFolderDataset(cfg.data, num_frames=num_frames, size=size, heatmap_size=None, stage=stage,
                                frame_stride=frame_stride, samples_per_epoch=PUPPET_LENGTH, seed=cfg.seed)
        if ds.skipped:
            print(f"note: {len(ds.skipped)} clip(s) of {cfg.data} are too short for {num_frames} frames and are "
                  f"skipped (e.g. {ds.skipped[:3]})")
        return Source(ds, num_clips=len(ds.clips), seed=cfg.seed, what=str(cfg.data))
    if cfg.preset != "tiny-puppet":
        raise IMAnimError("--data: the 'real' preset needs a video folder")
    ds = PuppetDataset(length=PUPPET_LENGTH, stage=stage, num_frames=num_frames, size=size, fps=fps,
                       heatmap_size=None, cross_identity_prob=cfg.cross_identity_prob if stage > 1 else 0.0,
                       seed=cfg.seed)
    return Source(ds, num_clips=None, seed=cfg.seed, what="puppet world")


def collate(samples: list, keys) -> dict:
    out = {}
    for k in keys:
        try:
            out[k] = torch.stack([torch.as_tensor(s[k]) for s in samples])
        except KeyError:
            raise DataError(f"training sample without {k!r} (keys: {sorted(samples[0])})") from None
    return out


# ------------------------------------------------------------------------------------------------ geometry
def square_keypoints(kp: torch.Tensor, height: int, width: int) -> tuple:
    """Keypoints in an H x W frame -> the same points in the centred zero-padded L x L square
    (``preprocess_frames``' padding); returns (keypoints, L)."""
    side = max(height, width)
    off = torch.tensor([(side - width) // 2, (side - height) // 2], dtype=kp.dtype, device=kp.device)
    return kp + off, side


def stage1_targets(frames: torch.Tensor, keypoints: torch.Tensor, visibility: torch.Tensor, image_size: int,
                   heatmap_size: int, sigma: float) -> tuple:
    """frames [N,H,W,3] -> (tokenizer pixels [N,3,S,S], heatmaps [N,J,hm,hm] in the padded square)."""
    h, w = frames.shape[1:3]
    pixels = preprocess_frames(frames, image_size)
    kp, side = square_keypoints(keypoints.float(), h, w)
    hm = render_heatmaps(kp, visibility, (heatmap_size, heatmap_size), sigma=sigma, image_size=(side, side))
    return pixels, hm


def frame_heatmaps(keypoints: torch.Tensor, visibility: torch.Tensor, height: int, width: int, grid_hw: tuple,
                   upsample: int, sigma: float) -> torch.Tensor:
    """Target heatmaps in the H x W frame on ``grid * upsample`` pixels: [..., J, gh*up, gw*up]."""
    size = (grid_hw[0] * upsample, grid_hw[1] * upsample)
    return render_heatmaps(keypoints.float(), visibility, size, sigma=sigma, image_size=(height, width))


def clip_batch(source: Source, offset: int, batch_size: int) -> dict:
    """Stage 2/3 (and vae) samples stacked: frames, identity, target (+ keypoints, visibility)."""
    return collate_clips(source.samples(offset, batch_size))


def collate_clips(samples: list) -> dict:
    """Clip samples (see :func:`clip_batch`) stacked into a batch."""
    keys = ["frames", "keypoints", "visibility"]
    if "identity" in samples[0]:
        keys += ["identity", "target", "target_keypoints", "target_visibility"]
        if all("identity_keypoints" in s for s in samples):
            keys += ["identity_keypoints", "identity_visibility"]
        if all("target_masks" in s for s in samples):  # puppet world: the character's pixels (flow loss weight)
            keys += ["target_masks"]
    return collate(samples, keys)


def stage1_batch(source: Source, offset: int, batch_size: int, frames_per_clip: int) -> dict:
    """``batch_size`` single frames drawn from ``ceil(batch_size / frames_per_clip)`` clips."""
    n_clips = math.ceil(batch_size / frames_per_clip)
    first = (offset // batch_size) * n_clips  # unique clips for every batch of the run
    samples = source.samples(first, n_clips)
    frames = torch.cat([torch.as_tensor(s["frames"]) for s in samples])[:batch_size]
    kp = torch.cat([torch.as_tensor(s["keypoints"]) for s in samples])[:batch_size]
    vis = torch.cat([torch.as_tensor(s["visibility"]) for s in samples])[:batch_size]
    return {"frames": frames, "keypoints": kp, "visibility": vis}


__all__ = ["Source", "make_source", "collate", "square_keypoints", "stage1_targets", "frame_heatmaps",
           "clip_batch", "collate_clips", "stage1_batch", "STAGE1_FRAMES_PER_CLIP", "STAGE1_FPS", "CLIP_FPS"]
