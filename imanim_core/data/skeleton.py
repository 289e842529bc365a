"""The 20-joint skeleton used everywhere (puppet world, real data, heatmaps, the explicit skeleton baseline).

Joint order = OpenPose BODY_18 (COCO-18) + the two big toes::

     0 nose        1 neck
     2 r_shoulder  3 r_elbow   4 r_wrist
     5 l_shoulder  6 l_elbow   7 l_wrist
     8 r_hip       9 r_knee   10 r_ankle
    11 l_hip      12 l_knee   13 l_ankle
    14 r_eye      15 l_eye    16 r_ear     17 l_ear
    18 r_big_toe  19 l_big_toe

Why the big toes: they are the only foot keypoints that every whole-body detector gives (OpenPose BODY_25
joints 22/19, DWPose / COCO-WholeBody foot points 3/0) and, with the ankle, they give the foot's direction —
the one body part BODY_18 cannot orient. Heels and small toes are dropped.

"right"/"left" are the person's own sides (OpenPose convention): a person facing the camera has the right side
on the image's left. Keypoints are pixel coordinates (x, y) with pixel centres at integers (what
:func:`imanim_core.data.heatmaps.render_heatmaps` and OpenCV use).

Also here: the bone tree (:data:`BONES`, rooted at the neck), drawing colours, the left/right flip permutation,
readers for OpenPose BODY_18 / BODY_25 / COCO-17 / DWPose JSON (``people[i].pose_keypoints_2d`` flat
``x, y, c`` lists, plus DWPose's ``foot_keypoints_2d`` when present), a writer of the same JSON, and
:func:`draw_skeleton`.
"""
from __future__ import annotations

from typing import Optional, Sequence

import numpy as np

from ..config import NUM_JOINTS
from ..errors import InputError

JOINT_NAMES = (
    "nose", "neck",
    "r_shoulder", "r_elbow", "r_wrist",
    "l_shoulder", "l_elbow", "l_wrist",
    "r_hip", "r_knee", "r_ankle",
    "l_hip", "l_knee", "l_ankle",
    "r_eye", "l_eye", "r_ear", "l_ear",
    "r_big_toe", "l_big_toe",
)
assert len(JOINT_NAMES) == NUM_JOINTS
JOINT_INDEX = {n: i for i, n in enumerate(JOINT_NAMES)}

# (parent, child): a tree over all 20 joints rooted at the neck (19 bones).
BONES = (
    (1, 0), (0, 14), (14, 16), (0, 15), (15, 17),  # head
    (1, 2), (2, 3), (3, 4),  # right arm
    (1, 5), (5, 6), (6, 7),  # left arm
    (1, 8), (8, 9), (9, 10), (10, 18),  # right leg
    (1, 11), (11, 12), (12, 13), (13, 19),  # left leg
)
_parent = [-1] * NUM_JOINTS
for _p, _c in BONES:
    _parent[_c] = _p
PARENT = tuple(_parent)
del _parent, _p, _c

# The limb bones: their directions are set by joint angles alone (no per-body offsets), so they are the ones to
# compare when checking that a retargeted pose keeps the driver's angles.
LIMB_BONES = ((2, 3), (3, 4), (5, 6), (6, 7), (8, 9), (9, 10), (10, 18), (11, 12), (12, 13), (13, 19))



def _mirror_name(n: str) -> str:
    return "l_" + n[2:] if n.startswith("r_") else "r_" + n[2:] if n.startswith("l_") else n


# Index permutation for a horizontal flip: after mirroring an image, joint i is found at old joint
# FLIP_PERMUTATION[i] (right and left swapped). It is its own inverse.
FLIP_PERMUTATION = tuple(JOINT_INDEX[_mirror_name(n)] for n in JOINT_NAMES)


def _rainbow(n: int, offset: float = 0.0) -> tuple:
    out = []
    for i in range(n):
        h = (offset + i / n) % 1.0
        k = [(5 + h * 6) % 6, (3 + h * 6) % 6, (1 + h * 6) % 6]
        out.append(tuple(int(round(255 * (1 - max(0.0, min(1.0, min(v, 4 - v)))))) for v in k))
    return tuple(out)


# RGB colours (uint8 triples), one per joint and one per bone (OpenPose-like rainbow: red at the head,
# through yellow/green on the right side, to blue/purple on the left side).
JOINT_COLORS = _rainbow(NUM_JOINTS)
BONE_COLORS = tuple(JOINT_COLORS[c] for _, c in BONES)

# ---------------------------------------------------------------------------------------------------------
# Source formats -> our 20 joints. Each table lists, for our joint i, the index in the source list (or None).
_BODY18_TO_OURS = tuple(list(range(18)) + [None, None])
_BODY25_TO_OURS = (0, 1, 2, 3, 4, 5, 6, 7, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 22, 19)
# COCO-17: nose, l_eye, r_eye, l_ear, r_ear, l_sh, r_sh, l_el, r_el, l_wr, r_wr, l_hip, r_hip, l_kn, r_kn, l_an, r_an
_COCO17_TO_OURS = (0, None, 6, 8, 10, 5, 7, 9, 12, 14, 16, 11, 13, 15, 2, 1, 4, 3, None, None)
# COCO-WholeBody / DWPose foot points: l_big_toe, l_small_toe, l_heel, r_big_toe, r_small_toe, r_heel
_FOOT6_R_BIG_TOE, _FOOT6_L_BIG_TOE = 3, 0

POSE_FORMATS = ("body18", "body25", "coco17", "dwpose")


def _flat_to_array(values, where: str) -> np.ndarray:
    try:
        a = np.asarray(values, dtype=np.float64).reshape(-1)
    except (TypeError, ValueError):
        raise InputError(f"{where}: expected a flat list of numbers (x, y, c, x, y, c, ...)") from None
    if a.size % 3:
        raise InputError(f"{where}: expected a multiple of 3 numbers (x, y, c triples), got {a.size}")
    if not np.all(np.isfinite(a)):
        raise InputError(f"{where}: contains NaN or infinite values")
    return a.reshape(-1, 3)


def _take(src: np.ndarray, table) -> np.ndarray:
    out = np.zeros((NUM_JOINTS, 3), dtype=np.float64)
    for i, s in enumerate(table):
        if s is not None:
            out[i] = src[s]
    return out


def convert_keypoints(points: np.ndarray, foot: Optional[np.ndarray] = None) -> np.ndarray:
    """Map an ``[N, 3]`` (x, y, c) array in a known layout to our ``[20, 3]``.

    The layout is told by N: 18 = OpenPose BODY_18 / DWPose body, 25 = OpenPose BODY_25, 17 = COCO-17 (the neck
    becomes the shoulders' midpoint, with the lower of their confidences), 24 or 134 = DWPose whole body with
    the neck inserted (18 body + 6 foot + ...), 133 = COCO-WholeBody (17 body + 6 foot + ...).
    ``foot``: an optional ``[6, 3]`` COCO-WholeBody foot list (DWPose's ``foot_keypoints_2d``) giving the toes.
    """
    n = points.shape[0]
    if n == 18:
        out = _take(points, _BODY18_TO_OURS)
    elif n == 25:
        out = _take(points, _BODY25_TO_OURS)
    elif n in (17, 133):
        out = _take(points, _COCO17_TO_OURS)
        rs, ls = points[6], points[5]
        out[1] = [(rs[0] + ls[0]) / 2, (rs[1] + ls[1]) / 2, min(rs[2], ls[2])]
        if n == 133 and foot is None:
            foot = points[17:23]
    elif n in (24, 134):
        out = _take(points, _BODY18_TO_OURS)
        if foot is None:
            foot = points[18:24]
    else:
        raise InputError(f"pose keypoints: {n} points is not a known layout; expected 18 (OpenPose BODY_18/"
                         f"DWPose), 25 (BODY_25), 17 (COCO), 24/134 (DWPose whole body) or 133 (COCO-WholeBody)")
    if foot is not None and len(foot) >= 4:
        out[18] = foot[_FOOT6_R_BIG_TOE]
        out[19] = foot[_FOOT6_L_BIG_TOE]
    return out


def keypoints_from_openpose(data: dict, frame_size: Optional[Sequence[int]] = None, threshold: float = 0.3,
                            person: int = 0, normalized: Optional[bool] = None, where: str = "pose JSON"):
    """Our 20 joints from one OpenPose/DWPose JSON frame (the parsed dict).

    data: ``{"people": [{"pose_keypoints_2d": [x, y, c, ...], "foot_keypoints_2d": [...]?}, ...],
        "canvas_width"?, "canvas_height"?}``; ``people[person]`` is used.
    frame_size: (H, W) of the frame the keypoints belong to. Coordinates written for another canvas size
        (``canvas_width/height``) are scaled to it.
    normalized: coordinates in [0, 1] (DWPose in ComfyUI writes those). None = detect: every confident point
        lies in [0, 1]. Normalised points are multiplied by the frame size (or the canvas size).
    threshold: a joint is visible when its confidence is > threshold.
    Returns (keypoints float32 [20, 2] in pixels, visibility bool [20]); invisible joints get (0, 0).
    Raises InputError (naming ``where``) for no people or a malformed list.
    """
    if not isinstance(data, dict):
        raise InputError(f"{where}: expected a JSON object with a 'people' list")
    people = data.get("people")
    if not isinstance(people, list):
        raise InputError(f"{where}: no 'people' list")
    if len(people) <= person:
        raise InputError(f"{where}: no people (expected at least {person + 1} in 'people')")
    p = people[person]
    if not isinstance(p, dict) or not p.get("pose_keypoints_2d"):
        raise InputError(f"{where}: people[{person}] has no 'pose_keypoints_2d'")
    pts = _flat_to_array(p["pose_keypoints_2d"], f"{where}: people[{person}].pose_keypoints_2d")
    foot = None
    if p.get("foot_keypoints_2d"):
        foot = _flat_to_array(p["foot_keypoints_2d"], f"{where}: people[{person}].foot_keypoints_2d")
    out = convert_keypoints(pts, foot)
    vis = out[:, 2] > threshold
    xy = out[:, :2].copy()
    cw, ch = data.get("canvas_width"), data.get("canvas_height")
    canvas = None
    if isinstance(cw, (int, float)) and isinstance(ch, (int, float)) and cw > 0 and ch > 0:
        canvas = (float(ch), float(cw))
    if normalized is None:
        normalized = bool(vis.any()) and bool(np.all((xy[vis] >= -1e-3) & (xy[vis] <= 1.0 + 1e-3)))
    if normalized:
        ref = frame_size if frame_size is not None else canvas
        if ref is None:
            raise InputError(f"{where}: coordinates are normalised to [0, 1] but neither a frame size nor "
                             f"canvas_width/canvas_height is known")
        xy[:, 0] *= float(ref[1])
        xy[:, 1] *= float(ref[0])
    elif canvas is not None and frame_size is not None and canvas != (float(frame_size[0]), float(frame_size[1])):
        xy[:, 0] *= float(frame_size[1]) / canvas[1]
        xy[:, 1] *= float(frame_size[0]) / canvas[0]
    xy[~vis] = 0.0
    return xy.astype(np.float32), vis


def keypoints_to_openpose(keypoints, visibility, size: Sequence[int], fmt: str = "dwpose",
                          confidence: float = 1.0) -> dict:
    """One OpenPose-style JSON frame (a dict) from our 20 joints; the inverse of :func:`keypoints_from_openpose`.

    size: (H, W) written as canvas_height/canvas_width. fmt: "dwpose" (BODY_18 + ``foot_keypoints_2d`` in
    COCO-WholeBody order), "body25" (OpenPose BODY_25; mid-hip = mean of the hips) or "body18" (no toes).
    Coordinates are pixels; invisible joints are written as (0, 0, 0).
    """
    kp = np.asarray(keypoints, dtype=np.float64).reshape(NUM_JOINTS, 2)
    vis = np.asarray(visibility, dtype=bool).reshape(NUM_JOINTS)
    ours = np.concatenate([kp, np.where(vis, confidence, 0.0)[:, None]], axis=1)
    ours[~vis, :2] = 0.0

    def flat(a):
        return [round(float(v), 3) for v in a.reshape(-1)]

    if fmt in ("dwpose", "body18"):
        person = {"pose_keypoints_2d": flat(ours[:18])}
        if fmt == "dwpose":
            foot = np.zeros((6, 3))
            foot[_FOOT6_R_BIG_TOE] = ours[18]
            foot[_FOOT6_L_BIG_TOE] = ours[19]
            person["foot_keypoints_2d"] = flat(foot)
    elif fmt == "body25":
        b = np.zeros((25, 3))
        for i, s in enumerate(_BODY25_TO_OURS):
            b[s] = ours[i]
        if vis[8] and vis[11]:
            b[8] = [(kp[8, 0] + kp[11, 0]) / 2, (kp[8, 1] + kp[11, 1]) / 2, confidence]
        person = {"pose_keypoints_2d": flat(b)}
    else:
        raise InputError(f"pose format {fmt!r}: expected one of 'dwpose', 'body25', 'body18'")
    return {"version": 1.3, "people": [person], "canvas_height": int(size[0]), "canvas_width": int(size[1])}


# ---------------------------------------------------------------------------------------------------------
def flip_keypoints(keypoints, visibility, width: int):
    """Mirror keypoints of an image ``width`` pixels wide: x -> (W - 1) - x, left/right joints swapped.

    Works on numpy arrays or torch tensors ``[..., 20, 2]`` / ``[..., 20]``.
    """
    perm = list(FLIP_PERMUTATION)
    kp = keypoints[..., perm, :]
    if hasattr(kp, "clone"):
        kp = kp.clone()
    else:
        kp = kp.copy()
    kp[..., 0] = (width - 1) - kp[..., 0]
    vis = visibility[..., perm] if visibility is not None else None
    return kp, vis


def bone_vectors(keypoints, bones=BONES):
    """``[..., len(bones), 2]`` child minus parent (numpy)."""
    kp = np.asarray(keypoints, dtype=np.float64)
    p = np.array([b[0] for b in bones])
    c = np.array([b[1] for b in bones])
    return kp[..., c, :] - kp[..., p, :]


def bone_lengths(keypoints, bones=BONES) -> np.ndarray:
    """Length of each bone ``[..., len(bones)]`` in pixels."""
    return np.linalg.norm(bone_vectors(keypoints, bones), axis=-1)


def bone_angles(keypoints, bones=LIMB_BONES) -> np.ndarray:
    """Image-plane direction of each bone in radians ``[..., len(bones)]`` (atan2(dy, dx))."""
    v = bone_vectors(keypoints, bones)
    return np.arctan2(v[..., 1], v[..., 0])


def angle_difference(a, b) -> np.ndarray:
    """Smallest signed difference a - b of angles in radians, in (-pi, pi]."""
    d = np.asarray(a) - np.asarray(b)
    return (d + np.pi) % (2 * np.pi) - np.pi


# ---------------------------------------------------------------------------------------------------------
def draw_skeleton(keypoints, visibility=None, size: Sequence[int] = (256, 256), thickness: Optional[int] = None,
                  radius: Optional[int] = None, background=None, image_size: Optional[Sequence[int]] = None):
    """Draw the 20-joint skeleton as OpenPose-style coloured sticks on black (or on ``background``).

    keypoints: ``[20, 2]`` or ``[T, 20, 2]`` pixel (x, y), numpy or torch. visibility: same leading shape
        ``[..., 20]`` or None (all visible). A bone is drawn when both ends are visible.
    size: (H, W) of the output. image_size: (H, W) the keypoints refer to, when not ``size`` (they are scaled,
        pixel centres aligned as in ``render_heatmaps``).
    thickness / radius: stick width and joint dot radius in pixels (default: scaled with the image size).
    background: optional uint8 ``[H, W, 3]`` (or ``[T, H, W, 3]``) image to draw on.
    Returns uint8 RGB ``[H, W, 3]`` (or ``[T, H, W, 3]``).
    """
    import cv2

    kp = keypoints.detach().cpu().numpy() if hasattr(keypoints, "detach") else np.asarray(keypoints)
    kp = kp.astype(np.float64)
    if kp.shape[-2:] != (NUM_JOINTS, 2):
        raise InputError(f"keypoints: expected [{NUM_JOINTS}, 2] or [T, {NUM_JOINTS}, 2], got {tuple(kp.shape)}")
    single = kp.ndim == 2
    kp = kp.reshape(-1, NUM_JOINTS, 2)
    if visibility is None:
        vis = np.ones(kp.shape[:2], dtype=bool)
    else:
        vis = visibility.detach().cpu().numpy() if hasattr(visibility, "detach") else np.asarray(visibility)
        vis = vis.astype(bool).reshape(-1, NUM_JOINTS)
        if vis.shape[0] != kp.shape[0]:
            raise InputError(f"visibility: expected shape {kp.shape[:2]}, got {vis.shape}")
    h, w = int(size[0]), int(size[1])
    if image_size is not None:
        ih, iw = float(image_size[0]), float(image_size[1])
        kp = np.stack([(kp[..., 0] + 0.5) * w / iw - 0.5, (kp[..., 1] + 0.5) * h / ih - 0.5], axis=-1)
    s = min(h, w)
    th = thickness if thickness is not None else max(1, int(round(s / 64)))
    rad = radius if radius is not None else max(1, int(round(s / 96)))
    if background is not None:
        bg = np.asarray(background, dtype=np.uint8)
        bg = np.broadcast_to(bg, (kp.shape[0], h, w, 3)) if bg.ndim == 3 else bg
        if bg.shape != (kp.shape[0], h, w, 3):
            raise InputError(f"background: expected [{h}, {w}, 3] or [T, {h}, {w}, 3], got {tuple(bg.shape)}")
        out = np.ascontiguousarray(bg.copy())
    else:
        out = np.zeros((kp.shape[0], h, w, 3), dtype=np.uint8)
    shift = 4
    fk = np.round(kp * (1 << shift)).astype(np.int64)
    for t in range(kp.shape[0]):
        img = out[t]
        for (a, b), col in zip(BONES, BONE_COLORS, strict=True):
            if vis[t, a] and vis[t, b]:
                cv2.line(img, (int(fk[t, a, 0]), int(fk[t, a, 1])), (int(fk[t, b, 0]), int(fk[t, b, 1])),
                         tuple(int(c * 0.8) for c in col), th, cv2.LINE_AA, shift)
        for j in range(NUM_JOINTS):
            if vis[t, j]:
                cv2.circle(img, (int(fk[t, j, 0]), int(fk[t, j, 1])), rad << shift, JOINT_COLORS[j], -1,
                           cv2.LINE_AA, shift)
    return out[0] if single else out


__all__ = [
    "JOINT_NAMES", "JOINT_INDEX", "BONES", "PARENT", "LIMB_BONES", "FLIP_PERMUTATION", "JOINT_COLORS",
    "BONE_COLORS", "POSE_FORMATS", "convert_keypoints", "keypoints_from_openpose", "keypoints_to_openpose",
    "flip_keypoints", "bone_vectors", "bone_lengths", "bone_angles", "angle_difference", "draw_skeleton",
]
