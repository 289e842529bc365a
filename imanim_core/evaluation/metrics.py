"""The benchmark's measures: PSNR/SSIM (frame and character region), silhouette IoU, keypoint error with the
bundle's own pose reader, identity leakage (bones, silhouette height/area, colours); per case and aggregated."""
from __future__ import annotations

import math
from typing import List, Optional

import numpy as np
import torch

from ..errors import InputError
from ..io.video import to_float

PSNR_CAP = 100.0
FG_THRESHOLD = 0.15
BBOX_MARGIN = 2
HIST_BINS = 8

# bones whose pixel length is constant for a body in the 2D rig: (a, b) joint pairs; "torso" = neck to mid-hip
LEAK_BONES = ((2, 3), (5, 6), (3, 4), (6, 7), (8, 9), (11, 12), (9, 10), (12, 13), (2, 5), (8, 11), "torso")

METRICS = ("psnr", "ssim", "psnr_char", "ssim_char", "iou", "kp_err", "kp_err_rel", "leak_bones", "leak_height",
           "leak_area", "colour_leak")
HIGHER_IS_BETTER = {"psnr": True, "ssim": True, "psnr_char": True, "ssim_char": True, "iou": True,
                    "kp_err": False, "kp_err_rel": False, "leak_bones": False, "leak_height": False,
                    "leak_area": False, "colour_leak": False}
POOLED = ("leak_bones", "leak_height", "leak_area")


def _as_float(frames) -> torch.Tensor:
    """uint8/float numpy or torch [T,H,W,3] -> float32 torch [T,H,W,3] in [0, 1] (``io.video.to_float``)."""
    return to_float(frames if isinstance(frames, np.ndarray) else frames.detach().cpu(), "frames").clamp(0, 1)


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


def gt_silhouette(rc: dict) -> np.ndarray:
    """The ground truth's silhouette by the same background subtraction as the results' (cached in ``rc``)."""
    if "gt_silhouette" not in rc:
        rc["gt_silhouette"] = silhouette(rc["gt"], rc["background"])
    return rc["gt_silhouette"]
