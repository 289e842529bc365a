"""The puppet renderer: 2D forward kinematics (identity, angles, root -> the 20 joints), the fixed camera per canvas
size, and the anti-aliased drawing of a pose (:func:`render_pose`) or a clip (:func:`render_clip`)."""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from ...config import NUM_JOINTS
from ...errors import InputError
from .body import FOOT_BASE_DEG, NUM_ANGLES, WORLD_EXTENT_H, WORLD_HALF_W, PuppetIdentity
from .motion import PuppetMotion

def _down(theta):
    """Unit vector 'down' rotated by theta (y points down): theta > 0 turns it towards +x."""
    return np.stack([np.sin(theta), np.cos(theta)], axis=-1)


# Extra (non-joint) points of the rig, after the 20 joints.
_EXTRA = ("head_c", "r_hand", "l_hand", "r_sh_top", "l_sh_top", "l_hip_out", "r_hip_out", "neck_top")
_P = {n: NUM_JOINTS + i for i, n in enumerate(_EXTRA)}


def forward_kinematics(identity: PuppetIdentity, angles, root=None) -> dict:
    """World positions (y down, ground at y = 0) for angles [T, 12] (radians) and root [T, 2].

    Returns {"points": [T, 20 + 8, 2] (the 20 joints, then head centre, hand centres, torso corners, neck top),
    "head_angle": [T], "forearm_r"/"forearm_l": [T] world angles}. Feet touch the ground unless jumping.
    """
    idn = identity
    ang = np.asarray(angles, dtype=np.float64).reshape(-1, NUM_ANGLES)
    n = ang.shape[0]
    root = np.zeros((n, 2)) if root is None else np.asarray(root, dtype=np.float64).reshape(n, 2)
    tor, head, rs, re, ls, le, rh, rk, ra, lh, lk, la = ang.T
    P = np.zeros((n, NUM_JOINTS + len(_EXTRA), 2))
    up = -_down(tor)
    right = np.stack([np.cos(tor), -np.sin(tor)], axis=-1)
    pelvis = np.zeros((n, 2))
    P[:, 8] = pelvis + [-idn.hip_hw, 0.0]
    P[:, 11] = pelvis + [idn.hip_hw, 0.0]
    neck = pelvis + up * idn.torso_len
    P[:, 1] = neck
    P[:, 2] = neck - right * idn.shoulder_hw - up * idn.shoulder_drop
    P[:, 5] = neck + right * idn.shoulder_hw - up * idn.shoulder_drop
    # arms (right: abduction turns towards -x)
    ua_r, ua_l = tor - rs, tor + ls
    fa_r, fa_l = ua_r - re, ua_l + le
    P[:, 3] = P[:, 2] + _down(ua_r) * idn.upper_arm
    P[:, 4] = P[:, 3] + _down(fa_r) * idn.forearm
    P[:, 6] = P[:, 5] + _down(ua_l) * idn.upper_arm
    P[:, 7] = P[:, 6] + _down(fa_l) * idn.forearm
    P[:, _P["r_hand"]] = P[:, 4] + _down(fa_r) * idn.hand_r * 0.9
    P[:, _P["l_hand"]] = P[:, 7] + _down(fa_l) * idn.hand_r * 0.9
    # legs
    th_r, th_l = -rh, lh
    sh_r, sh_l = th_r + rk, th_l - lk
    fb = math.radians(FOOT_BASE_DEG)
    ft_r, ft_l = sh_r - (fb + ra), sh_l + (fb + la)
    P[:, 9] = P[:, 8] + _down(th_r) * idn.thigh
    P[:, 10] = P[:, 9] + _down(sh_r) * idn.shin
    P[:, 18] = P[:, 10] + _down(ft_r) * idn.foot_len
    P[:, 12] = P[:, 11] + _down(th_l) * idn.thigh
    P[:, 13] = P[:, 12] + _down(sh_l) * idn.shin
    P[:, 19] = P[:, 13] + _down(ft_l) * idn.foot_len
    # head
    hd = tor + head
    uh = -_down(hd)
    rgt = np.stack([np.cos(hd), -np.sin(hd)], axis=-1)
    R = idn.head_r
    hc = neck + uh * (idn.neck_len + R)
    P[:, _P["head_c"]] = hc
    P[:, _P["neck_top"]] = neck + uh * (idn.neck_len + 0.5 * R)
    P[:, 0] = hc - uh * (0.12 * R)
    P[:, 14] = hc + uh * (0.22 * R) - rgt * (0.38 * R)
    P[:, 15] = hc + uh * (0.22 * R) + rgt * (0.38 * R)
    P[:, 16] = hc + uh * (0.05 * R) - rgt * (1.0 * R)
    P[:, 17] = hc + uh * (0.05 * R) + rgt * (1.0 * R)
    # torso outline
    P[:, _P["r_sh_top"]] = P[:, 2] + up * (idn.upper_arm_w * 0.45) - right * (idn.upper_arm_w * 0.25)
    P[:, _P["l_sh_top"]] = P[:, 5] + up * (idn.upper_arm_w * 0.45) + right * (idn.upper_arm_w * 0.25)
    P[:, _P["r_hip_out"]] = P[:, 8] + [-idn.thigh_w * 0.5, idn.thigh_w * 0.15]
    P[:, _P["l_hip_out"]] = P[:, 11] + [idn.thigh_w * 0.5, idn.thigh_w * 0.15]
    # ground the feet, then root motion in the body's own units
    lowest = np.max(P[:, [10, 18, 13, 19], 1], axis=1) + idn.foot_w / 2
    P[:, :, 1] -= lowest[:, None]
    P[:, :, 0] += root[:, 0:1] * idn.height
    P[:, :, 1] -= root[:, 1:2] * idn.leg_len
    return {"points": P, "head_angle": hd, "forearm_r": fa_r, "forearm_l": fa_l}


@dataclass(frozen=True)
class Camera:
    """World -> pixel: x_px = cx + s * x, y_px = ground + s * y (pixel centres at integers)."""

    s: float
    cx: float
    ground: float

    def apply(self, pts: np.ndarray) -> np.ndarray:
        out = np.empty_like(pts)
        out[..., 0] = self.cx + self.s * pts[..., 0]
        out[..., 1] = self.ground + self.s * pts[..., 1]
        return out


def camera_for(size: Sequence[int]) -> Camera:
    """The fixed camera of a canvas (H, W): same pixels-per-unit for every identity; the ground near the bottom."""
    h, w = int(size[0]), int(size[1])
    if h < 16 or w < 16:
        raise InputError(f"size: the puppet world renders at 16x16 or more, got {h}x{w}")
    m = max(1.0, 0.03 * min(h, w))
    s = min((h - 2 * m) / WORLD_EXTENT_H, (w - 2 * m) / (2 * WORLD_HALF_W))
    return Camera(s=s, cx=(w - 1) / 2.0, ground=h - 1 - m)


def _radii(idn: PuppetIdentity) -> np.ndarray:
    """Drawing radius (world) around each rig point, for the in-frame check."""
    r = np.zeros(NUM_JOINTS + len(_EXTRA))
    r[[2, 3, 5, 6]] = idn.upper_arm_w / 2
    r[[4, 7]] = idn.forearm_w / 2
    r[[8, 9, 11, 12]] = idn.thigh_w / 2
    r[[10, 13]] = idn.shin_w / 2
    r[[18, 19]] = idn.foot_w / 2
    r[_P["head_c"]] = idn.head_r * (1.12 if idn.hair_style != "none" else 1.0)
    r[_P["r_hand"]] = r[_P["l_hand"]] = idn.hand_r
    r[[16, 17]] = idn.head_r * 0.25
    return r


@functools.lru_cache(maxsize=64)
def _background(idn: PuppetIdentity, h: int, w: int) -> np.ndarray:
    c0 = np.array(idn.bg0, dtype=np.float32)
    c1 = np.array(idn.bg1, dtype=np.float32)
    if idn.background == "vgradient":
        a = np.linspace(0, 1, h, dtype=np.float32)[:, None, None]
        bg = np.broadcast_to(c0 * (1 - a) + c1 * a, (h, w, 3))
    elif idn.background == "hgradient":
        a = np.linspace(0, 1, w, dtype=np.float32)[None, :, None]
        bg = np.broadcast_to(c0 * (1 - a) + c1 * a, (h, w, 3))
    else:
        bg = np.broadcast_to(c0, (h, w, 3))
    bg = np.round(bg).astype(np.uint8)
    if idn.floor is not None:
        g = int(round(camera_for((h, w)).ground))
        bg[g:] = idn.floor
    bg.setflags(write=False)
    return bg


def _inset(poly: np.ndarray, d: float) -> np.ndarray:
    """Move every edge of convex polygons [..., N, 2] inwards by d (either winding; degenerate edges tolerated)."""
    v = poly
    prev, nxt = np.roll(v, 1, axis=-2), np.roll(v, -1, axis=-2)
    area2 = np.sum(v[..., 0] * nxt[..., 1] - nxt[..., 0] * v[..., 1], axis=-1)[..., None, None]
    sign = np.where(area2 >= 0, 1.0, -1.0)

    def inward(p0, p1):
        e = p1 - p0
        n = np.stack([-e[..., 1], e[..., 0]], axis=-1) * sign
        return n / np.maximum(np.linalg.norm(n, axis=-1, keepdims=True), 1e-9)

    n1, n2 = inward(prev, v), inward(v, nxt)
    denom = np.maximum(1.0 + np.sum(n1 * n2, axis=-1, keepdims=True), 0.2)
    return v + d * (n1 + n2) / denom


def render_pose(identity: PuppetIdentity, angles, root=None, size: Sequence[int] = (128, 128),
                supersample: int = 1) -> dict:
    """Render identity in the poses ``angles`` [T, 12] (radians) with root [T, 2] on an (H, W) canvas.

    Returns dict(frames uint8 [T,H,W,3], keypoints float32 [T,20,2], visibility bool [T,20],
    masks bool [T,H,W], angles float32 [T,12], root float32 [T,2], fit_scale float, pixels_per_unit float).
    """
    import cv2

    h, w = int(size[0]), int(size[1])
    ss = int(supersample)
    if ss < 1:
        raise InputError(f"supersample: expected an integer >= 1, got {supersample}")
    idn = identity
    ang = np.asarray(angles, dtype=np.float64).reshape(-1, NUM_ANGLES)
    n = ang.shape[0]
    fk = forward_kinematics(idn, ang, root)
    cam = camera_for((h, w))
    px = cam.apply(fk["points"])
    # keep the clip in the frame (a shift first, a shrink only as a last resort)
    rad = _radii(idn) * cam.s
    lo = (px - rad[None, :, None]).min(axis=(0, 1))
    hi = (px + rad[None, :, None]).max(axis=(0, 1))
    fit = 1.0
    box_lo, box_hi = np.array([0.5, 0.5]), np.array([w - 1.5, h - 1.5])
    if np.any(lo < box_lo) or np.any(hi > box_hi):
        span, room = hi - lo, box_hi - box_lo
        fit = float(min(1.0, *(room / np.maximum(span, 1e-6))))
        centre = (lo + hi) / 2
        target = np.clip(centre, box_lo + span * fit / 2, box_hi - span * fit / 2)
        px = (px - centre) * fit + target
        rad = rad * fit
    s = cam.s * fit
    kp = px[:, :NUM_JOINTS].astype(np.float32)

    # fixed-point drawing coordinates (4 fractional bits) at the supersampled size
    SH = 4
    ONE = 1 << SH

    def fixed(p):
        return np.round(((p + 0.5) * ss - 0.5) * ONE).astype(np.int32)

    # OpenCV's anti-aliased fills reach about half a (drawing) pixel beyond the geometric outline: radii and
    # polygons are pulled in by that much so that shapes have their true size at any supersampling.
    aa = 0.5 / ss

    def rad_fixed(x):  # a world length -> radius in fixed point (at least half a pixel)
        return max(ONE // 2, int(round((x * s * ss - 0.5) * ONE)))

    A = 255
    skin, shirt, shirt2, pants, shoes, hair, eyes = ((*c, A) for c in (idn.skin, idn.shirt, idn.shirt2, idn.pants,
                                                                      idn.shoes, idn.hair, idn.eyes))
    lower_leg_col = pants if idn.legwear == "long" else skin
    r_sleeve = shirt
    l_sleeve = shirt2 if idn.pattern == "two_tone" else shirt
    r_fore = r_sleeve if idn.sleeves == "long" else skin
    l_fore = l_sleeve if idn.sleeves == "long" else skin
    head_deg = -np.degrees(fk["head_angle"])
    q = fixed(px)
    prims = []  # the draw list, back to front: (kind, per-frame data, size, colour)

    def circle_at(i, radius_world, col):
        prims.append(("circle", [tuple(v) for v in q[:, i].tolist()], rad_fixed(radius_world), col))

    def capsule(i, j, width_world, col):
        """A limb of exact (sub-pixel) width: a quad between two half-discs."""
        r = width_world / 2
        v = px[:, j] - px[:, i]
        nrm = np.stack([-v[:, 1], v[:, 0]], axis=1) / np.maximum(np.linalg.norm(v, axis=1, keepdims=True), 1e-9)
        off = nrm * max(r * s - aa, 0.25 / ss)
        quad = np.stack([px[:, i] + off, px[:, j] + off, px[:, j] - off, px[:, i] - off], axis=1)
        prims.append(("poly", fixed(quad), 0, col))
        circle_at(i, r, col)
        circle_at(j, r, col)

    # torso pieces: the shirt quad (shoulder tops -> 82 % down) and a belt/pants quad below it
    a, b, c, d = (px[:, _P[k]] for k in ("r_sh_top", "l_sh_top", "l_hip_out", "r_hip_out"))

    def lerp(p0, p1, t):
        return p0 + (p1 - p0) * t

    belt = 0.82
    c_b, d_b = lerp(b, c, belt), lerp(a, d, belt)
    pieces = [(np.stack([d_b, c_b, c, d], axis=1), pants)]  # ([T,4,2] pixel polygons, colour)
    if idn.pattern == "stripes":
        k = idn.stripes * 2 - 1
        for i in range(k):
            t0, t1 = i / k, (i + 1) / k
            poly = np.stack([lerp(a, d_b, t0), lerp(b, c_b, t0), lerp(b, c_b, t1), lerp(a, d_b, t1)], axis=1)
            pieces.append((poly, shirt if i % 2 == 0 else shirt2))
    elif idn.pattern == "two_tone":
        top_m, bot_m = lerp(a, b, 0.5), lerp(d_b, c_b, 0.5)
        pieces.append((np.stack([a, top_m, bot_m, d_b], axis=1), shirt))
        pieces.append((np.stack([top_m, b, c_b, bot_m], axis=1), shirt2))
    else:
        pieces.append((np.stack([a, b, c_b, d_b], axis=1), shirt))

    hc, nt = _P["head_c"], _P["neck_top"]
    if idn.hair_style == "long":  # behind everything: centred half a head radius below the head centre
        r = rad_fixed(idn.head_r)
        prims.append(("ellipse", [tuple(v) for v in q[:, nt].tolist()], (int(r * 1.12), int(r * 1.45)), hair,
                      0, 360))
    for hip, knee, ankle, toe in ((8, 9, 10, 18), (11, 12, 13, 19)):
        capsule(hip, knee, idn.thigh_w, pants)
        capsule(knee, ankle, idn.shin_w, lower_leg_col)
        capsule(ankle, toe, idn.foot_w, shoes)
    for poly, col in pieces:
        prims.append(("poly", fixed(_inset(poly, aa)), 0, col))
    capsule(1, nt, idn.neck_w, skin)
    capsule(2, 3, idn.upper_arm_w, r_sleeve)
    capsule(3, 4, idn.forearm_w, r_fore)
    circle_at(_P["r_hand"], idn.hand_r, skin)
    capsule(5, 6, idn.upper_arm_w, l_sleeve)
    capsule(6, 7, idn.forearm_w, l_fore)
    circle_at(_P["l_hand"], idn.hand_r, skin)
    circle_at(16, idn.head_r * 0.25, skin)
    circle_at(17, idn.head_r * 0.25, skin)
    circle_at(hc, idn.head_r, skin)
    if idn.hair_style != "none":
        r = int(rad_fixed(idn.head_r) * 1.06)
        prims.append(("ellipse", [tuple(v) for v in q[:, hc].tolist()], (r, r), hair, 180, 360))
    circle_at(14, idn.head_r * 0.13, eyes)
    circle_at(15, idn.head_r * 0.13, eyes)

    H, W = h * ss, w * ss
    rgba = np.zeros((n, H, W, 4), dtype=np.uint8)
    LA = cv2.LINE_AA
    circle, ellipse, poly_fill = cv2.circle, cv2.ellipse, cv2.fillConvexPoly
    head_deg = head_deg.tolist()
    for t in range(n):
        img = rgba[t]
        for prim in prims:
            kind = prim[0]
            if kind == "circle":
                circle(img, prim[1][t], prim[2], prim[3], -1, LA, SH)
            elif kind == "poly":
                poly_fill(img, prim[1][t], prim[3], LA, SH)
            else:
                ellipse(img, prim[1][t], prim[2], head_deg[t], prim[4], prim[5], prim[3], -1, LA, SH)

    if ss > 1:
        rgba = np.stack([cv2.resize(f, (w, h), interpolation=cv2.INTER_AREA) for f in rgba])
    # composite the premultiplied drawing over the background (the whole clip at once)
    bg = _background(idn, h, w)
    alpha = rgba[..., 3:4]
    frames = rgba[..., :3] + ((bg[None].astype(np.uint16) * (255 - alpha) + 127) // 255).astype(np.uint8)
    return {
        "frames": frames,
        "keypoints": kp,
        "visibility": np.ones((n, NUM_JOINTS), dtype=bool),
        "masks": alpha[..., 0] >= 128,
        "angles": ang.astype(np.float32),
        "root": (np.zeros((n, 2)) if root is None else np.asarray(root)).astype(np.float32),
        "fit_scale": fit,
        "pixels_per_unit": float(s),
    }


def clip_times(num_frames: int, fps: float, start_time: float = 0.0) -> np.ndarray:
    if int(num_frames) < 1:
        raise InputError(f"num_frames: expected >= 1, got {num_frames}")
    if not fps > 0:
        raise InputError(f"fps: expected > 0, got {fps}")
    return float(start_time) + np.arange(int(num_frames), dtype=np.float64) / float(fps)


def render_clip(identity: PuppetIdentity, motion: PuppetMotion, num_frames: int = 16, fps: float = 16.0,
                size: Sequence[int] = (128, 128), start_time: float = 0.0, supersample: int = 1,
                times=None) -> dict:
    """``identity``'s body doing ``motion`` for num_frames frames at fps from start_time (seconds).

    Returns dict(frames uint8 [T,H,W,3], keypoints float32 [T,20,2] (pixel x, y), visibility bool [T,20],
    masks bool [T,H,W], angles float32 [T,12] (radians), root float32 [T,2], times float64 [T],
    fit_scale, pixels_per_unit). ``render_clip(B, motion_of_A)`` is the exact cross-identity target.
    """
    t = clip_times(num_frames, fps, start_time) if times is None else np.asarray(times, dtype=np.float64).reshape(-1)
    out = render_pose(identity, motion.angles(t), motion.root(t), size=size, supersample=supersample)
    out["times"] = t
    return out
