"""The held-out cross-identity benchmark on the puppet world, its metrics and its report.

Benchmark (fixed, deterministic)
- Every case is a pair of puppet bodies: the **identity** B (the character image) and the **driver** A (the
  body in the driving video), a motion of A, and the ground truth = B doing A's motion (``render_clip(B,
  motion_A)``, exact: the puppet world's joint angles do not depend on the body). The identity image is B at
  a moment of a different motion of its own (as in training).
- Seeds: every identity and motion of the benchmark is sampled directly from seeds ``>= EVAL_SEED_BASE``
  (10,000,000): case k of the scan uses ``10,000,000 + 10 k + {0: identity, 1: driver, 2: driving motion,
  3: identity's own pose}``. The demo uses ``DEMO_SEED_BASE`` (30,000,000 + ...). Training never samples
  from these seeds by construction of the agreement "training uses seeds < 1,000,000"; note however that the
  puppet training stream (``PuppetDataset``) hashes (run seed, item index) into 32-bit item seeds and hashes
  those again into the identity/motion seeds, so its seeds are spread over the whole 32-bit range. The
  benchmark therefore *checks* disjointness: :func:`training_seed_overlap` regenerates the identity and motion
  seeds of the first ``items`` training items of a run seed (default: run seed 0, 100,000 items — more than any
  stage of the tiny preset draws) and reports any collision in ``metrics.json`` (``heldout_check``).
- Body-shape mismatch between A and B (:func:`body_mismatch`): the mean absolute log-ratio of the bodies'
  scale-free proportions (``PuppetIdentity.proportions()``: height, head, arm, leg, shoulders, hips, limb width,
  each relative to the torso) plus the log-ratio of their torso lengths (overall size; the camera is the same
  for every body). Levels: small < 0.10, medium 0.13-0.20, large >= 0.25 (the gaps keep levels apart; over
  random pairs the median is 0.16). Cases are taken in scan order until each level has ``per_level`` cases;
  driving motions cycle through the motion families.

Metrics (per case, averaged over frames; then averaged over the cases of a level)
- ``psnr`` / ``ssim``: whole frame vs the ground truth (``kornia.metrics.psnr`` per frame, capped at 100 dB for
  identical frames; ``kornia.metrics.ssim`` with an 11x11 window, mean of the map).
- ``psnr_char`` / ``ssim_char``: the character region = the ground-truth silhouette's bounding box in each
  frame, grown by 2 px (PSNR of that crop; the mean of the full-frame SSIM map inside the box).
- ``iou``: silhouette IoU against the ground-truth body. Silhouettes are found by background subtraction: the
  identity's background is known exactly in the puppet world (solid or gradient, optional floor); a pixel is
  foreground when any channel differs from it by more than ``FG_THRESHOLD`` (0.15 in [0, 1]). The result's
  silhouette is compared with the ground-truth frames' silhouette found the same way (so the extractor's own
  errors — anti-aliased edges, skin close to the background — cancel and the ground truth scores exactly 1);
  how well that extractor agrees with the puppet world's true body masks is reported once per run
  (``benchmark.silhouette_check``: ~0.94 mean IoU at 128x128, ~0.90 at 64x64).
- ``kp_err`` / ``kp_err_rel``: keypoints of the result measured with the bundle's own stage-1 pose reader
  (tokenizer -> motion decoder -> joint head heatmaps, peak refined by a 3x3 centroid), mean distance to the
  ground-truth keypoints in pixels and relative to the ground-truth torso length (neck to mid-hip). The
  ``ground_truth`` row gives the reader's own error on the true frames (the floor of this measure).
- Identity leakage (how much of the driver shows up):
  ``leak_bones`` — the result's bone lengths (11 bones: upper arms, forearms, thighs, shins, shoulder and hip
  width, torso; constant per body in the 2D rig; median over frames of the measured keypoints) in log space,
  projected on the driver-minus-identity direction: 0 = the identity's proportions, 1 = the driver's (pooled
  over the cases of a level: sum((r - i).(d - i)) / sum(|d - i|^2)). ``leak_height`` / ``leak_area`` — the same
  coefficient per frame on the log silhouette height and log silhouette area (result vs ground truth vs
  driver, all three silhouettes by the same background subtraction, each against its own known background).
  ``colour_leak`` — colour histograms (8x8x8 RGB bins) of the result inside the ground-truth mask
  vs the identity's and the driver's character pixels, Hellinger distances d_id and d_drv;
  ``d_id / (d_id + d_drv)``: 0 = the identity's colours, 1 = the driver's.

Methods: ``im_animation`` (the model), ``skeleton`` (explicit control: the driver's keypoints drawn as a skeleton
at the driver's proportions, through the same backbone trained with the same stage-3 recipe —
:mod:`imanim_core.baselines`; reported as not trained when its weights are absent), ``identity_still`` (the
identity image held still), and two references: ``vae_upper_bound`` (the ground truth through the VAE: the best
this VAE allows) and ``ground_truth`` (the truth itself: floors of the measures).
"""
from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence

import numpy as np
import torch

from .errors import InputError

EVAL_SEED_BASE = 10_000_000
TRAIN_SEED_LIMIT = 1_000_000  # the agreed bound for seeds chosen by hand for training
DEMO_SEED_BASE = 30_000_000
SEEDS_PER_CASE = 10
LEVELS = {"small": (0.0, 0.10), "medium": (0.13, 0.20), "large": (0.25, math.inf)}
PSNR_CAP = 100.0
FG_THRESHOLD = 0.15
BBOX_MARGIN = 2
HIST_BINS = 8
MAX_SCAN = 100_000

# bones whose pixel length is constant for a body in the 2D rig: (a, b) joint pairs; "torso" = neck to mid-hip
LEAK_BONES = ((2, 3), (5, 6), (3, 4), (6, 7), (8, 9), (11, 12), (9, 10), (12, 13), (2, 5), (8, 11), "torso")

METRICS = ("psnr", "ssim", "psnr_char", "ssim_char", "iou", "kp_err", "kp_err_rel", "leak_bones", "leak_height",
           "leak_area", "colour_leak")
HIGHER_IS_BETTER = {"psnr": True, "ssim": True, "psnr_char": True, "ssim_char": True, "iou": True,
                    "kp_err": False, "kp_err_rel": False, "leak_bones": False, "leak_height": False,
                    "leak_area": False, "colour_leak": False}
POOLED = ("leak_bones", "leak_height", "leak_area")


# ============================================================================================= the benchmark
def body_mismatch(a, b) -> float:
    """Body-shape difference of two ``PuppetIdentity``: mean |log ratio| of their proportions and torso lengths."""
    pa, pb = a.proportions(), b.proportions()
    terms = [abs(math.log(pa[k] / pb[k])) for k in pa] + [abs(math.log(a.torso_len / b.torso_len))]
    return float(np.mean(terms))


def mismatch_level(m: float) -> Optional[str]:
    for name, (lo, hi) in LEVELS.items():
        if lo <= m < hi:
            return name
    return None


@dataclass(frozen=True)
class EvalCase:
    level: str
    index: int  # within its level
    scan: int  # k of the scan: seeds EVAL_SEED_BASE + 10 k + ...
    identity_seed: int
    driver_seed: int
    motion_seed: int
    pose_seed: int
    family: str
    mismatch: float
    start_time: float

    def to_dict(self) -> dict:
        return asdict(self)


def benchmark_cases(per_level: int = 4, seed_base: int = EVAL_SEED_BASE) -> List[EvalCase]:
    """The fixed benchmark: ``per_level`` cases for each mismatch level (deterministic scan over held-out seeds)."""
    from .data.puppet import FAMILIES, PuppetIdentity

    if int(per_level) < 1:
        raise InputError(f"per_level: expected at least 1 case per level, got {per_level}")
    per_level = int(per_level)
    got: Dict[str, List[EvalCase]] = {k: [] for k in LEVELS}
    for k in range(MAX_SCAN):
        if all(len(v) >= per_level for v in got.values()):
            break
        base = seed_base + SEEDS_PER_CASE * k
        idn, drv = PuppetIdentity.sample(base), PuppetIdentity.sample(base + 1)
        m = body_mismatch(idn, drv)
        lvl = mismatch_level(m)
        if lvl is None or len(got[lvl]) >= per_level:
            continue
        j = len(got[lvl])
        fam = FAMILIES[(j + list(LEVELS).index(lvl)) % len(FAMILIES)]
        got[lvl].append(EvalCase(level=lvl, index=j, scan=k, identity_seed=base, driver_seed=base + 1,
                                 motion_seed=base + 2, pose_seed=base + 3, family=fam, mismatch=round(m, 6),
                                 start_time=round(0.7 * (k % 5), 3)))
    return [c for lvl in LEVELS for c in got[lvl]]


def identity_background(identity, size) -> np.ndarray:
    """The identity's known background ``uint8 [H, W, 3]`` (the puppet world's own background image)."""
    from .data import puppet

    h, w = int(size[0]), int(size[1])
    fn = getattr(puppet, "background", None)
    if fn is not None:
        return np.asarray(fn(identity, (h, w)))
    return np.asarray(puppet._background(identity, h, w))  # private: until puppet.py has a public accessor


def render_case(case: EvalCase, size=(128, 128), num_frames: int = 17, fps: float = 8.0) -> dict:
    """Everything a case needs, rendered: identity image/mask/keypoints, driving frames/masks/keypoints, ground
    truth frames/masks/keypoints (uint8 / bool / float32 numpy), the identity's background, the bodies."""
    from .data.puppet import PuppetIdentity, PuppetMotion, render_clip

    idn = PuppetIdentity.sample(case.identity_seed)
    drv = PuppetIdentity.sample(case.driver_seed)
    mot = PuppetMotion.sample(case.motion_seed, case.family)
    pose = PuppetMotion.sample(case.pose_seed, "sway")
    size = (int(size[0]), int(size[1]))
    ident = render_clip(idn, pose, 1, fps, size, times=[0.5])
    driving = render_clip(drv, mot, num_frames, fps, size, start_time=case.start_time)
    gt = render_clip(idn, mot, num_frames, fps, size, start_time=case.start_time)
    return {"case": case, "identity": ident["frames"][0], "identity_mask": ident["masks"][0],
            "identity_keypoints": ident["keypoints"][0], "driving": driving["frames"],
            "driving_masks": driving["masks"], "driving_keypoints": driving["keypoints"],
            "gt": gt["frames"], "gt_masks": gt["masks"], "gt_keypoints": gt["keypoints"],
            "background": identity_background(idn, size), "driver_background": identity_background(drv, size),
            "identity_body": idn, "driver_body": drv,
            "fps": float(fps), "size": size}


def gt_silhouette(rc: dict) -> np.ndarray:
    """The ground truth's silhouette by the same background subtraction as the results' (cached in ``rc``)."""
    if "gt_silhouette" not in rc:
        rc["gt_silhouette"] = silhouette(rc["gt"], rc["background"])
    return rc["gt_silhouette"]


def training_seed_overlap(cases: Sequence[EvalCase], train_seed: int = 0, items: int = 100_000) -> dict:
    """Regenerate the identity and motion seeds the puppet training stream uses for items ``0..items-1`` of run
    seed ``train_seed`` (``PuppetDataset.item_seed`` -> ``sample_pair``'s sub-seeds) and report collisions with
    the benchmark's seeds (compared as the puppet world uses them: modulo 2^32)."""
    from .data.puppet import _subseeds  # the exact derivation the training stream uses

    ids, mots = set(), set()
    for i in range(int(items)):
        s = int(np.random.SeedSequence([int(train_seed) & 0xFFFFFFFF, i & 0xFFFFFFFF, 0xDA7A]).generate_state(1)[0])
        sub = _subseeds(s, 6)
        ids.update((sub[0] & 0xFFFFFFFF, sub[2] & 0xFFFFFFFF))
        mots.update((sub[1] & 0xFFFFFFFF, sub[3] & 0xFFFFFFFF))
    hits = []
    for c in cases:
        for name in ("identity_seed", "driver_seed"):
            if getattr(c, name) & 0xFFFFFFFF in ids:
                hits.append({"case": f"{c.level}/{c.index}", "seed": name})
        for name in ("motion_seed", "pose_seed"):
            if getattr(c, name) & 0xFFFFFFFF in mots:
                hits.append({"case": f"{c.level}/{c.index}", "seed": name})
    return {"train_seed": int(train_seed), "items_checked": int(items), "collisions": hits,
            "disjoint": not hits}


# ============================================================================================== measures
def _as_float(frames) -> torch.Tensor:
    """uint8/float numpy or torch [T,H,W,3] -> float32 torch [T,H,W,3] in [0, 1]."""
    if isinstance(frames, np.ndarray):
        a = np.ascontiguousarray(frames)
        t = torch.from_numpy(a if a.flags.writeable else a.copy())
    else:
        t = frames.detach().cpu()
    if t.dtype == torch.uint8:
        return t.float() / 255.0
    return t.float().clamp(0, 1)


def _check_pair(a: torch.Tensor, b: torch.Tensor, what: str):
    if a.shape != b.shape or a.ndim != 4:
        raise InputError(f"{what}: expected two videos of the same shape [T,H,W,3], got {tuple(a.shape)} and "
                         f"{tuple(b.shape)}")


def psnr_frames(result, target, boxes=None, cap: float = PSNR_CAP) -> np.ndarray:
    """Per-frame PSNR (dB, ``kornia.metrics.psnr``, max value 1) of [T,H,W,3] videos, capped at ``cap``; with
    ``boxes`` [T,4] (y0, y1, x0, x1) on the box crop of each frame."""
    import kornia

    a, b = _as_float(result), _as_float(target)
    _check_pair(a, b, "psnr")
    out = []
    for t in range(a.shape[0]):
        x, y = a[t], b[t]
        if boxes is not None:
            y0, y1, x0, x1 = (int(v) for v in boxes[t])
            if y1 <= y0 or x1 <= x0:
                out.append(float("nan"))
                continue
            x, y = x[y0:y1, x0:x1], y[y0:y1, x0:x1]
        v = float(kornia.metrics.psnr(x.permute(2, 0, 1)[None], y.permute(2, 0, 1)[None], 1.0))
        out.append(min(v, cap) if not math.isnan(v) else cap)
    return np.asarray(out, dtype=np.float64)


def ssim_frames(result, target, boxes=None, window_size: int = 11) -> np.ndarray:
    """Per-frame SSIM (``kornia.metrics.ssim``, max value 1): the mean of the SSIM map over the frame, or over each
    frame's box (y0, y1, x0, x1) when ``boxes`` is given."""
    import kornia

    a, b = _as_float(result), _as_float(target)
    _check_pair(a, b, "ssim")
    smap = kornia.metrics.ssim(a.permute(0, 3, 1, 2), b.permute(0, 3, 1, 2), window_size, max_val=1.0)
    smap = smap.mean(dim=1)  # [T,H,W]
    if boxes is None:
        return smap.flatten(1).mean(dim=1).double().numpy()
    out = []
    for t in range(smap.shape[0]):
        y0, y1, x0, x1 = (int(v) for v in boxes[t])
        out.append(float(smap[t, y0:y1, x0:x1].mean()) if y1 > y0 and x1 > x0 else float("nan"))
    return np.asarray(out, dtype=np.float64)


def mask_iou(a, b) -> np.ndarray:
    """Per-frame intersection over union of boolean masks [T,H,W] (1 when both are empty)."""
    a, b = np.asarray(a, dtype=bool), np.asarray(b, dtype=bool)
    if a.shape != b.shape:
        raise InputError(f"iou: masks of different shapes {a.shape} and {b.shape}")
    if a.ndim == 2:
        a, b = a[None], b[None]
    inter = (a & b).reshape(a.shape[0], -1).sum(1)
    union = (a | b).reshape(a.shape[0], -1).sum(1)
    return np.where(union > 0, inter / np.maximum(union, 1), 1.0).astype(np.float64)


def silhouette(frames, background, threshold: float = FG_THRESHOLD) -> np.ndarray:
    """Foreground masks [T,H,W] by background subtraction: any channel differs from the known background by more
    than ``threshold`` (in [0, 1])."""
    f = _as_float(frames)
    bg = _as_float(np.asarray(background)[None] if isinstance(background, np.ndarray) else background[None])
    return ((f - bg).abs().amax(dim=-1) > float(threshold)).numpy()


def mask_boxes(masks, margin: int = BBOX_MARGIN) -> np.ndarray:
    """[T,H,W] masks -> [T,4] boxes (y0, y1, x0, x1), grown by ``margin`` and clipped (empty mask: empty box)."""
    m = np.asarray(masks, dtype=bool)
    t, h, w = m.shape
    out = np.zeros((t, 4), dtype=np.int64)
    for i in range(t):
        ys, xs = np.nonzero(m[i])
        if ys.size == 0:
            continue
        out[i] = (max(0, ys.min() - margin), min(h, ys.max() + 1 + margin), max(0, xs.min() - margin),
                  min(w, xs.max() + 1 + margin))
    return out


def colour_histogram(pixels, bins: int = HIST_BINS) -> np.ndarray:
    """Normalised 3D RGB histogram (``bins``^3) of pixels [N,3] (uint8, or float in [0, 1])."""
    p = np.asarray(pixels)
    if p.dtype != np.uint8:
        p = (np.clip(p, 0, 1) * 255 + 0.5).astype(np.uint8)
    p = p.reshape(-1, 3).astype(np.int64)
    if p.shape[0] == 0:
        return np.full(bins ** 3, 1.0 / bins ** 3)
    q = (p * bins) // 256
    idx = (q[:, 0] * bins + q[:, 1]) * bins + q[:, 2]
    h = np.bincount(idx, minlength=bins ** 3).astype(np.float64)
    return h / h.sum()


def hellinger(p, q) -> float:
    """Hellinger distance of two normalised histograms (0 = the same, 1 = disjoint)."""
    bc = float(np.sum(np.sqrt(np.asarray(p) * np.asarray(q))))
    return float(math.sqrt(max(0.0, 1.0 - bc)))


def bone_lengths(kp) -> np.ndarray:
    """[..., 20, 2] keypoints -> [..., 11] lengths of :data:`LEAK_BONES` (pixels)."""
    k = np.asarray(kp, dtype=np.float64)
    out = []
    for bone in LEAK_BONES:
        if bone == "torso":
            v = k[..., 1, :] - (k[..., 8, :] + k[..., 11, :]) / 2
        else:
            v = k[..., bone[1], :] - k[..., bone[0], :]
        out.append(np.linalg.norm(v, axis=-1))
    return np.stack(out, axis=-1)


def torso_length(kp) -> np.ndarray:
    k = np.asarray(kp, dtype=np.float64)
    return np.linalg.norm(k[..., 1, :] - (k[..., 8, :] + k[..., 11, :]) / 2, axis=-1)


def leak_terms(result, gt, driver) -> tuple:
    """(numerator, denominator) of the pooled leakage coefficient: sum((r - g).(d - g)), sum(|d - g|^2) over
    the rows of [N, k] (or [N]) arrays; rows with a non-finite entry are skipped."""
    def rows(x):
        a = np.atleast_1d(np.asarray(x, dtype=np.float64))
        return a.reshape(a.shape[0], -1)

    r, g, d = rows(result), rows(gt), rows(driver)
    if not (r.shape == g.shape == d.shape):
        raise InputError(f"leak_terms: shapes differ: {r.shape}, {g.shape}, {d.shape}")
    ok = np.isfinite(r).all(1) & np.isfinite(g).all(1) & np.isfinite(d).all(1)
    if not ok.any():
        return 0.0, 0.0
    r, g, d = r[ok], g[ok], d[ok]
    return float(np.sum((r - g) * (d - g))), float(np.sum((d - g) ** 2))


def _subpixel_peaks(hm: torch.Tensor) -> torch.Tensor:
    """[N, J, H, W] heatmaps -> [N, J, 2] (x, y) peaks refined by the 3x3 centroid of the positive values."""
    n, j, h, w = hm.shape
    flat = hm.reshape(n, j, -1)
    idx = flat.argmax(-1)
    py, px = torch.div(idx, w, rounding_mode="floor"), idx % w
    pad = torch.nn.functional.pad(hm.clamp(min=0), (1, 1, 1, 1))
    dy = torch.arange(-1, 2).view(3, 1).expand(3, 3).reshape(-1)
    dx = torch.arange(-1, 2).view(1, 3).expand(3, 3).reshape(-1)
    yy = (py[..., None] + 1 + dy).clamp(0, h + 1)
    xx = (px[..., None] + 1 + dx).clamp(0, w + 1)
    vals = pad.reshape(n, j, -1).gather(-1, yy * (w + 2) + xx)
    s = vals.sum(-1).clamp(min=1e-12)
    ox = (vals * dx.float()).sum(-1) / s
    oy = (vals * dy.float()).sum(-1) / s
    return torch.stack([px.float() + ox, py.float() + oy], dim=-1)


def square_to_frame(xy, heatmap_size: int, frame_hw) -> np.ndarray:
    """Heatmap pixels (x, y) in the tokenizer's centred zero-padded square (stage 1's target frame,
    ``train.data.stage1_targets``) -> pixels of the ``frame_hw`` (H, W) frame."""
    h, w = int(frame_hw[0]), int(frame_hw[1])
    side = max(h, w)
    xy = (np.asarray(xy, dtype=np.float64) + 0.5) * side / int(heatmap_size) - 0.5
    xy[..., 0] -= (side - w) // 2
    xy[..., 1] -= (side - h) // 2
    return xy.astype(np.float32)


class KeypointReader:
    """Keypoints of frames with the bundle's stage-1 path: tokenizer -> motion decoder -> joint head -> peaks,
    mapped back from the tokenizer's padded square to frame pixels."""

    def __init__(self, bundle):
        missing = [p for p in ("tokenizer", "motion_decoder", "joint_head") if getattr(bundle, p, None) is None]
        if missing:
            raise InputError(f"keypoint reader: the bundle has no {', '.join(missing)}")
        self.tok, self.dec, self.head = bundle.tokenizer, bundle.motion_decoder, bundle.joint_head
        self.hm = int(self.dec.cfg.grid * self.head.cfg.upsample)

    @torch.no_grad()
    def __call__(self, frames, batch_size: int = 16) -> np.ndarray:
        f = frames if isinstance(frames, np.ndarray) else _as_float(frames)
        t, h, w = int(f.shape[0]), int(f.shape[1]), int(f.shape[2])
        _, codes = self.tok.encode_frames(f, batch_size=batch_size)
        p = next(self.dec.parameters())
        out = []
        for s in range(0, t, batch_size):
            jt = self.dec(codes[s:s + batch_size].to(p.device, p.dtype))
            hm = self.head(jt).float().cpu()
            out.append(_subpixel_peaks(hm))
        return square_to_frame(torch.cat(out, 0).numpy(), self.hm, (h, w))


# ============================================================================================ per case
def case_metrics(result, rc: dict, reader: Optional[KeypointReader] = None) -> dict:
    """All measures of one method's result (uint8/float [T,H,W,3] at the case's size) on one rendered case.

    Returns per-case values (frame means) and ``_pooled`` numerators/denominators for the leakage coefficients.
    """
    res = _as_float(result)
    gt = rc["gt"]
    if tuple(res.shape) != tuple(gt.shape):
        raise InputError(f"result: expected {tuple(gt.shape)} (the case's frames), got {tuple(res.shape)}")
    boxes = mask_boxes(rc["gt_masks"])
    out = {"psnr": float(np.nanmean(psnr_frames(res, gt))), "ssim": float(np.nanmean(ssim_frames(res, gt))),
           "psnr_char": float(np.nanmean(psnr_frames(res, gt, boxes))),
           "ssim_char": float(np.nanmean(ssim_frames(res, gt, boxes)))}
    sil = silhouette(res, rc["background"])
    out["iou"] = float(np.mean(mask_iou(sil, gt_silhouette(rc))))
    pooled = {}

    def sizes(m):  # log silhouette height and area per frame (NaN for an empty silhouette)
        m = np.asarray(m, dtype=bool)
        bx = mask_boxes(m, margin=0)
        hgt = (bx[:, 1] - bx[:, 0]).astype(np.float64)
        area = m.reshape(m.shape[0], -1).sum(1).astype(np.float64)
        return (np.where(hgt > 0, np.log(np.maximum(hgt, 1)), np.nan),
                np.where(area > 0, np.log(np.maximum(area, 1)), np.nan))

    rh, ra = sizes(sil)
    gh, ga = sizes(gt_silhouette(rc))
    dh, da = sizes(silhouette(rc["driving"], rc["driver_background"]) if "driver_background" in rc
                   else rc["driving_masks"])
    pooled["leak_height"] = leak_terms(rh, gh, dh)
    pooled["leak_area"] = leak_terms(ra, ga, da)
    # colours
    res_u8 = (res.numpy() * 255 + 0.5).astype(np.uint8)
    h_res = colour_histogram(res_u8[np.asarray(rc["gt_masks"], dtype=bool)])
    h_id = colour_histogram(np.asarray(rc["identity"])[np.asarray(rc["identity_mask"], dtype=bool)])
    h_drv = colour_histogram(np.asarray(rc["driving"])[np.asarray(rc["driving_masks"], dtype=bool)])
    d_id, d_drv = hellinger(h_res, h_id), hellinger(h_res, h_drv)
    out["colour_d_identity"], out["colour_d_driver"] = d_id, d_drv
    out["colour_leak"] = d_id / (d_id + d_drv) if d_id + d_drv > 0 else 0.5
    # keypoints
    if reader is not None:
        kp = reader(res_u8)
        gkp = np.asarray(rc["gt_keypoints"], dtype=np.float64)
        err = np.linalg.norm(kp - gkp, axis=-1)  # [T,J]
        out["kp_err"] = float(err.mean())
        out["kp_err_rel"] = float((err.mean(-1) / np.maximum(torso_length(gkp), 1e-6)).mean())
        r = np.log(np.maximum(np.median(bone_lengths(kp), axis=0), 1e-3))
        i = np.log(np.maximum(bone_lengths(rc["gt_keypoints"][0]), 1e-3))
        d = np.log(np.maximum(bone_lengths(rc["driving_keypoints"][0]), 1e-3))
        pooled["leak_bones"] = leak_terms(r[None], i[None], d[None])
        out["bone_dist_identity"] = float(np.mean(np.abs(r - i)))
        out["bone_dist_driver"] = float(np.mean(np.abs(r - d)))
    else:
        out.update(kp_err=None, kp_err_rel=None, bone_dist_identity=None, bone_dist_driver=None)
    for k, (num, den) in pooled.items():
        out[k] = num / den if den > 0 else None
    out["_pooled"] = {k: list(v) for k, v in pooled.items()}
    return out


def aggregate(per_case: List[dict]) -> dict:
    """Mean of each measure over cases; leakage coefficients pooled (sum of numerators / sum of denominators)."""
    out = {"cases": len(per_case)}
    def num(v):
        return isinstance(v, (int, float, np.floating, np.integer)) and not isinstance(v, bool)

    keys = [k for k in per_case[0] if not k.startswith("_") and k not in POOLED
            and k not in ("index", "mismatch")] if per_case else []
    for k in keys:
        if not any(num(c.get(k)) for c in per_case) and not all(c.get(k) is None for c in per_case):
            continue  # a label (method, level, family)
        vals = [float(c[k]) for c in per_case if num(c.get(k)) and np.isfinite(c[k])]
        out[k] = float(np.mean(vals)) if vals else None
    out["mismatch"] = float(np.mean([c["mismatch"] for c in per_case])) if per_case and "mismatch" in per_case[0] \
        else None
    for k in POOLED:
        terms = [c["_pooled"][k] for c in per_case if k in c.get("_pooled", {})]
        num, den = sum(t[0] for t in terms), sum(t[1] for t in terms)
        out[k] = num / den if den > 0 else None
    return out


# ================================================================================================ runs
MethodFn = Callable[[dict], np.ndarray]


def run_benchmark(methods: Dict[str, Optional[MethodFn]], cases: Sequence[EvalCase], size, num_frames: int,
                  fps: float, reader: Optional[KeypointReader] = None, statuses: Optional[dict] = None,
                  progress: bool = True, examples: Optional[dict] = None) -> dict:
    """Run every available method (``None`` = not available, see ``statuses``) on every case and measure it.

    Returns ``{"per_case": [...], "results": {method: {level: aggregate, "all": aggregate}}, "seconds": {...},
    "silhouette_check": mean IoU of the background subtraction on the true frames vs the true masks}``;
    ``examples`` (a dict) receives the middle frame of every method on the first case of each level."""
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(cases), desc="benchmark", unit="case", dynamic_ncols=True)
    per_case, seconds, sil_check = [], {m: 0.0 for m in methods}, []
    try:
        for case in cases:
            rc = render_case(case, size, num_frames, fps)
            sil_check.append(float(np.mean(mask_iou(gt_silhouette(rc), rc["gt_masks"]))))
            mid = num_frames // 2
            if examples is not None and case.index == 0:
                examples[case.level] = {"identity": rc["identity"], "driving": rc["driving"][mid],
                                        "ground truth": rc["gt"][mid]}
            for name, fn in methods.items():
                if fn is None:
                    continue
                t0 = time.perf_counter()
                frames = fn(rc)
                seconds[name] += time.perf_counter() - t0
                m = case_metrics(frames, rc, reader)
                m.update(method=name, level=case.level, index=case.index, mismatch=case.mismatch,
                         family=case.family)
                per_case.append(m)
                if examples is not None and case.index == 0 and name != "ground_truth":
                    f = np.asarray(frames)
                    examples[case.level][name] = (f if f.dtype == np.uint8 else
                                                  (np.clip(f, 0, 1) * 255 + 0.5).astype(np.uint8))[mid]
            if bar is not None:
                bar.update(1)
    finally:
        if bar is not None:
            bar.close()
    results = {}
    for name in methods:
        rows = [c for c in per_case if c["method"] == name]
        if not rows:
            results[name] = {"status": (statuses or {}).get(name, "not run")}
            continue
        res = {lvl: aggregate([c for c in rows if c["level"] == lvl]) for lvl in LEVELS
               if any(c["level"] == lvl for c in rows)}
        res["all"] = aggregate(rows)
        res["status"] = (statuses or {}).get(name, "ok")
        results[name] = res
    return {"per_case": per_case, "results": results, "seconds": seconds,
            "silhouette_check": float(np.mean(sil_check)) if sil_check else None}


# ============================================================================================== report
DEFINITIONS = {
    "psnr": "PSNR (dB) of the whole frame vs the ground truth, kornia, capped at 100",
    "ssim": "SSIM of the whole frame (kornia, 11x11 window)",
    "psnr_char": "PSNR inside the ground-truth silhouette's bounding box (+2 px)",
    "ssim_char": "mean SSIM map inside that box",
    "iou": f"silhouette IoU vs the ground truth's silhouette (both by background subtraction against the "
           f"identity's known background: any channel off by > {FG_THRESHOLD})",
    "kp_err": "mean keypoint distance (px) to the ground truth, keypoints read by the bundle's stage-1 path",
    "kp_err_rel": "kp_err / ground-truth torso length",
    "leak_bones": "driver-proportion leakage of the measured bone lengths (0 = identity's, 1 = driver's)",
    "leak_height": "same coefficient on the silhouette height per frame",
    "leak_area": "same coefficient on the silhouette area per frame",
    "colour_leak": "colour-histogram leakage d_id / (d_id + d_drv) (0 = identity's colours, 1 = driver's)",
}


def _fmt(v, k) -> str:
    if v is None or (isinstance(v, float) and not np.isfinite(v)):
        return "–"
    if k in ("psnr", "psnr_char", "kp_err"):
        return f"{v:.2f}"
    return f"{v:.3f}"


def markdown_report(report: dict) -> str:
    res = report["results"]
    bench = report["benchmark"]
    lines = ["# IM-Animation benchmark (puppet world, held-out seeds)", "",
             f"{bench['cases_per_level']} case(s) per level, {bench['frames']} frames at {bench['fps']:g} fps, "
             f"{bench['size'][0]}x{bench['size'][1]} (HxW), {bench['steps']} steps, seed {bench['seed']}"
             + (" — **quick run**" if bench.get("quick") else "") + ".", ""]
    for name, st in report["methods"].items():
        lines.append(f"- `{name}`: {st['description']} — **{st['status']}**")
    hc = report.get("heldout_check")
    if hc:
        lines += ["", f"Held-out check: {hc['items_checked']} training items of run seed {hc['train_seed']} "
                      f"regenerated; collisions with the benchmark's seeds: {len(hc['collisions'])}."]
    shown = [m for m in METRICS]
    arrows = {k: ("↑" if HIGHER_IS_BETTER[k] else "↓") for k in shown}
    for lvl in list(LEVELS) + ["all"]:
        lo, hi = LEVELS.get(lvl, (None, None))
        title = f"## {lvl}" + (f" mismatch ({lo:g} ≤ m < {hi:g})" if lvl in LEVELS else " levels")
        lines += ["", title, "", "| method | " + " | ".join(f"{k} {arrows[k]}" for k in shown) + " |",
                  "|---|" + "---|" * len(shown)]
        for name, r in res.items():
            if lvl not in r:
                short = str(r.get("status", "not run")).split(" (")[0]
                lines.append(f"| {name} ({short}) | " + " | ".join("–" for _ in shown) + " |")
                continue
            lines.append(f"| {name} | " + " | ".join(_fmt(r[lvl].get(k), k) for k in shown) + " |")
    lines += ["", "## Definitions", ""] + [f"- `{k}`: {v}" for k, v in DEFINITIONS.items()]
    lines += ["", "References: `vae_upper_bound` = the ground truth through the VAE (the best this VAE allows); "
                  "`ground_truth` = the truth itself (the floor of each measure, e.g. the keypoint reader's own "
                  "error)."]
    return "\n".join(lines) + "\n"


def write_plots(report: dict, out_dir: Path, examples: Optional[dict] = None) -> List[Path]:
    """PNG plots (matplotlib, Agg): metrics.png (quality), leakage.png, and examples.png (middle frames)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir = Path(out_dir)
    res = {m: r for m, r in report["results"].items() if any(l in r for l in LEVELS)}
    levels = [l for l in LEVELS if any(l in r for r in res.values())]
    paths = []

    def bars(ax, key):
        n = max(1, len(res))
        width = 0.8 / n
        x = np.arange(len(levels))
        for i, (m, r) in enumerate(res.items()):
            vals = [r.get(l, {}).get(key) for l in levels]
            vals = [v if v is not None and np.isfinite(v) else np.nan for v in vals]
            ax.bar(x + (i - (n - 1) / 2) * width, vals, width, label=m)
        ax.set_xticks(x)
        ax.set_xticklabels(levels)
        ax.set_title(f"{key} ({'higher' if HIGHER_IS_BETTER[key] else 'lower'} is better)", fontsize=9)
        ax.grid(axis="y", alpha=0.3)

    for fname, keys in (("metrics.png", ("psnr", "ssim", "psnr_char", "ssim_char", "iou", "kp_err_rel")),
                        ("leakage.png", ("leak_bones", "leak_height", "leak_area", "colour_leak"))):
        cols = 3 if len(keys) > 4 else len(keys)
        rows = int(math.ceil(len(keys) / cols))
        fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.2 * rows), squeeze=False)
        for ax, k in zip(list(axes.flat)[:len(keys)], keys, strict=True):
            bars(ax, k)
        for ax in list(axes.flat)[len(keys):]:
            ax.axis("off")
        handles, labels = axes.flat[0].get_legend_handles_labels()
        fig.legend(handles, labels, loc="lower center", ncol=max(1, len(labels)), fontsize=8)
        fig.suptitle(f"IM-Animation benchmark: {fname[:-4]} by body-shape mismatch", fontsize=10)
        fig.tight_layout(rect=(0, 0.08, 1, 0.95))
        p = out_dir / fname
        fig.savefig(p, dpi=110)
        plt.close(fig)
        paths.append(p)

    if examples:
        lv = [l for l in LEVELS if l in examples]
        cols = list(examples[lv[0]].keys())
        fig, axes = plt.subplots(len(lv), len(cols), figsize=(1.9 * len(cols), 2.0 * len(lv)), squeeze=False)
        for i, l in enumerate(lv):
            for j, c in enumerate(cols):
                ax = axes[i, j]
                img = examples[l].get(c)
                if img is not None:
                    ax.imshow(img, interpolation="nearest")
                ax.set_xticks([])
                ax.set_yticks([])
                if i == 0:
                    ax.set_title(c, fontsize=8)
                if j == 0:
                    ax.set_ylabel(l, fontsize=9)
        fig.tight_layout()
        p = out_dir / "examples.png"
        fig.savefig(p, dpi=110)
        plt.close(fig)
        paths.append(p)
    return paths


def _json_safe(o):
    if isinstance(o, dict):
        return {str(k): _json_safe(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [_json_safe(v) for v in o]
    if isinstance(o, (np.floating, float)):
        v = float(o)
        return v if math.isfinite(v) else None
    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, np.bool_):
        return bool(o)
    return o


def write_report(report: dict, out_dir, examples: Optional[dict] = None) -> dict:
    """Write ``metrics.json``, ``metrics.md`` and the PNG plots into ``out_dir``; returns {name: path}."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    files = {}
    p = out / "metrics.json"
    tmp = out / ".metrics.json.tmp"
    tmp.write_text(json.dumps(_json_safe(report), indent=2))
    tmp.replace(p)
    files["json"] = p
    p = out / "metrics.md"
    p.write_text(markdown_report(report))
    files["markdown"] = p
    for q in write_plots(report, out, examples):
        files[q.stem] = q
    return files


__all__ = ["EVAL_SEED_BASE", "TRAIN_SEED_LIMIT", "DEMO_SEED_BASE", "LEVELS", "FG_THRESHOLD", "PSNR_CAP",
           "METRICS", "EvalCase", "body_mismatch", "mismatch_level", "benchmark_cases", "render_case",
           "identity_background", "training_seed_overlap", "psnr_frames", "ssim_frames", "mask_iou", "silhouette",
           "mask_boxes", "colour_histogram", "hellinger", "bone_lengths", "torso_length", "leak_terms",
           "KeypointReader", "square_to_frame", "case_metrics", "aggregate", "run_benchmark", "markdown_report", "write_plots",
           "write_report"]
