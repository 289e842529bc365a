"""Training and evaluation examples from the puppet world: :func:`sample_pair` (exact cross-identity pairs) and
the map-style :class:`PuppetDataset`."""
from __future__ import annotations

from typing import Optional, Sequence

import numpy as np

from ...errors import InputError
from ...io.video import to_float
from .body import FAMILIES, PuppetIdentity, _rng
from .motion import PuppetMotion
from .render import camera_for, render_clip

def _subseeds(seed: int, n: int) -> list:
    return [int(x) for x in np.random.SeedSequence([int(seed) & 0xFFFFFFFF, 0x5EED]).generate_state(n)]


def sample_pair(seed: int, num_frames: int = 16, fps: float = 16.0, size: Sequence[int] = (128, 128),
                cross_identity: bool = True, family: Optional[str] = None, min_gap: float = 1.0,
                max_start: float = 20.0, supersample: int = 1) -> dict:
    """One training/evaluation example, deterministic by seed.

    cross_identity=True: A (the driver) and B (the character) are different identities. ``identity`` is B at a
    moment of B's own motion, ``driving`` is A doing motion_A, ``target`` is B doing motion_A at the same times.
    cross_identity=False (the temporal bottleneck of stages 2-3): one identity; ``identity`` is a frame of the
    same motion at least ``min_gap`` seconds away from the clip; ``target`` is ``driving``.
    Returns dict(identity: a render dict with T=1 (frames [1,H,W,3], keypoints [1,20,2], ...), driving: render
    dict, target: render dict, identity_A, identity_B, motion_A, motion_B, cross_identity).
    """
    s = _subseeds(seed, 6)
    rng = _rng(s[5])
    ida = PuppetIdentity.sample(s[0])
    mota = PuppetMotion.sample(s[1], family)
    start = float(rng.uniform(0, max_start))
    duration = num_frames / float(fps)
    driving = render_clip(ida, mota, num_frames, fps, size, start_time=start, supersample=supersample)
    if cross_identity:
        idb = PuppetIdentity.sample(s[2])
        motb = PuppetMotion.sample(s[3])
        t_id = float(rng.uniform(0, max_start + duration))
        target = render_clip(idb, mota, num_frames, fps, size, start_time=start, supersample=supersample)
    else:
        idb, motb, target = ida, mota, driving
        gap = min_gap + float(rng.uniform(0, 2.0))
        t_id = start - gap if (rng.random() < 0.5 and start - gap >= 0) else start + duration + gap
    identity = render_clip(idb, motb, 1, fps, size, times=[t_id], supersample=supersample)
    return {"identity": identity, "driving": driving, "target": target, "identity_A": ida, "identity_B": idb,
            "motion_A": mota, "motion_B": motb, "cross_identity": bool(cross_identity), "identity_time": t_id}


def _torch_dataset_base():
    import torch.utils.data

    return torch.utils.data.Dataset


class PuppetDataset(_torch_dataset_base()):
    """Map-style puppet data set: item i is generated from (seed, i), so it is the same every time and in every
    worker. Samples (torch tensors; images float32 in [0, 1], ComfyUI layout):

    - ``frames`` [T,H,W,3] the driving clip; ``keypoints`` [T,20,2] (pixels), ``visibility`` [T,20] bool,
      ``heatmaps`` [T,20,Hh,Wh] of the driving clip (stage-1 targets, via ``render_heatmaps``).
    - stage 2/3 also: ``identity`` [H,W,3] (the character at another moment), ``identity_keypoints`` [20,2],
      ``identity_visibility`` [20], ``target`` [T,H,W,3] (what the model should produce), ``target_keypoints``,
      ``target_visibility``, ``target_heatmaps`` (the retargeting supervision), ``target_masks`` [T,H,W] bool,
      ``cross_identity`` (bool tensor). With probability ``cross_identity_prob`` the pair is cross-identity
      (exact ground truth, see :func:`sample_pair`); otherwise it is the temporal bottleneck of the paper
      (same character; target = driving clip).

    The same keys come out of :class:`imanim_core.data.video_folder.VideoFolderDataset`.
    """

    def __init__(self, length: int = 10000, stage: int = 1, num_frames: int = 8, size: Sequence[int] = (64, 64),
                 fps: float = 16.0, heatmap_size: Optional[Sequence[int]] = (16, 16), sigma: float = 1.0,
                 cross_identity_prob: float = 0.0, families: Optional[Sequence[str]] = None, min_gap: float = 0.5,
                 seed: int = 0, supersample: int = 1):
        if int(stage) not in (1, 2, 3):
            raise InputError(f"stage: expected 1, 2 or 3, got {stage}")
        if int(length) < 1:
            raise InputError(f"length: expected >= 1, got {length}")
        if families is not None:
            bad = [f for f in families if f not in FAMILIES]
            if bad or not families:
                raise InputError(f"families: unknown {bad}; choose from {FAMILIES}")
        if not 0.0 <= float(cross_identity_prob) <= 1.0:
            raise InputError(f"cross_identity_prob: expected a probability in [0, 1], got {cross_identity_prob}")
        self.length, self.stage, self.num_frames = int(length), int(stage), int(num_frames)
        self.size = (int(size[0]), int(size[1]))
        camera_for(self.size)  # validates the size
        self.fps, self.sigma, self.min_gap, self.seed = float(fps), float(sigma), float(min_gap), int(seed)
        self.heatmap_size = None if heatmap_size is None else (int(heatmap_size[0]), int(heatmap_size[1]))
        self.cross_identity_prob = float(cross_identity_prob)
        self.families = tuple(families) if families else None
        self.supersample = int(supersample)

    def __len__(self) -> int:
        return self.length

    def item_seed(self, index: int) -> int:
        ss = np.random.SeedSequence([self.seed & 0xFFFFFFFF, int(index) & 0xFFFFFFFF, 0xDA7A])
        return int(ss.generate_state(1)[0])

    def __getitem__(self, index: int) -> dict:
        import torch

        from ..heatmaps import render_heatmaps

        if not -self.length <= index < self.length:
            raise IndexError(index)
        index %= self.length
        seed = self.item_seed(index)
        rng = _rng(seed, 1)
        fam = str(rng.choice(self.families)) if self.families else None
        cross = self.stage > 1 and bool(rng.random() < self.cross_identity_prob)
        pair = sample_pair(seed, self.num_frames, self.fps, self.size, cross_identity=cross, family=fam,
                           min_gap=self.min_gap, supersample=self.supersample)

        def img(x):
            return to_float(x)

        def heat(kp, vis):
            if self.heatmap_size is None:
                return None
            return render_heatmaps(kp, vis, self.heatmap_size, sigma=self.sigma, image_size=self.size)

        d = pair["driving"]
        out = {"frames": img(d["frames"]), "keypoints": torch.from_numpy(d["keypoints"]),
               "visibility": torch.from_numpy(d["visibility"])}
        hm = heat(out["keypoints"], out["visibility"])
        if hm is not None:
            out["heatmaps"] = hm
        if self.stage > 1:
            tg, idn = pair["target"], pair["identity"]
            out["identity"] = img(idn["frames"][0])
            out["identity_keypoints"] = torch.from_numpy(idn["keypoints"][0])
            out["identity_visibility"] = torch.from_numpy(idn["visibility"][0])
            if cross:
                out["target"] = img(tg["frames"])
                out["target_keypoints"] = torch.from_numpy(tg["keypoints"])
                out["target_visibility"] = torch.from_numpy(tg["visibility"])
                thm = heat(out["target_keypoints"], out["target_visibility"])
            else:
                out["target"], out["target_keypoints"] = out["frames"], out["keypoints"]
                out["target_visibility"], thm = out["visibility"], hm
            if thm is not None:
                out["target_heatmaps"] = thm
            out["target_masks"] = torch.from_numpy(tg["masks"])
            out["cross_identity"] = torch.tensor(cross)
        return out

