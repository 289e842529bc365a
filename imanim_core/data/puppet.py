"""The puppet world: 2D articulated characters, deterministic by seed, with exact cross-identity ground truth.

An **identity** (:class:`PuppetIdentity`) is a body — limb lengths, torso/limb widths, head size, overall size
(child-like, average, tall and thin, broad) — plus its look (skin, hair, clothes with a solid / striped /
two-tone shirt, a solid or gradient background with an optional floor). A **motion** (:class:`PuppetMotion`)
is a continuous function of time giving 12 joint angles and a root motion, from one of the procedural
families :data:`FAMILIES`. A 2D forward-kinematics rig turns (identity, angles, root) into the 20 joints of
:mod:`imanim_core.data.skeleton`, and the renderer draws the character with anti-aliased capsules, polygons
and ellipses (OpenCV, sub-pixel coordinates).

Because angles are independent of the body, ``render_clip(identity_B, motion_A)`` is the exact target of
cross-identity reenactment: B's body (B's bone lengths, B's look) doing A's joint angles. Feet are kept on the
ground (the pelvis height follows from the legs), and root motion is measured in the body's own units (sideways
drift in body heights, jumps in leg lengths), so B's jump is as high *for B* as A's was for A.

Conventions
- World units: an average adult is about 1.0 tall; world y points down and the ground is y = 0.
- Camera: one fixed camera per canvas size (:func:`camera_for`): the same number of pixels per world unit for
  every identity, so a child looks smaller than a tall adult, and all clips of one identity (its identity
  image, its own clips, the cross-identity targets) show it at the same size. The camera is sized so that every
  identity in every motion family stays inside the frame; a clip that would still leave it is shifted (and in
  the last resort shrunk; ``fit_scale < 1`` in the output says so — it does not happen with the built-in
  families).
- Angles (radians, :data:`ANGLE_NAMES`): torso lean and head tilt (+ = towards the image right); shoulder and
  hip *abduction* (+ = outwards, mirrored between the sides, 0 = limb hanging straight down); elbow (+ = the
  forearm keeps turning the way the upper arm is raised); knee (+ = the shin turns back towards the body's
  midline); ankle (+ = the toe turns further outwards). Right is the puppet's right = the image's left.
- Keypoints are pixels (x, y), pixel centres at integers, all 20 joints visible.

Entry points: :meth:`PuppetIdentity.sample`, :meth:`PuppetMotion.sample`, :func:`render_clip`,
:func:`render_pose`, :func:`sample_pair`, :class:`PuppetDataset`, :func:`bench_puppet`
(``python -m imanim_core.data.puppet --bench``), and ``--sheet out.png`` for a contact sheet to look at.
"""
from __future__ import annotations

import colorsys
import dataclasses
import functools
import math
import time
from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np

from ..config import NUM_JOINTS
from ..errors import InputError

FAMILIES = ("walk", "wave", "dance", "jump", "squat", "arm_circles", "sway", "random_smooth")
ANGLE_NAMES = ("torso", "head", "r_shoulder", "r_elbow", "l_shoulder", "l_elbow",
               "r_hip", "r_knee", "r_ankle", "l_hip", "l_knee", "l_ankle")
NUM_ANGLES = len(ANGLE_NAMES)
BODY_TYPES = ("average", "child", "tall_thin", "broad")
PATTERNS = ("solid", "stripes", "two_tone")
BACKGROUNDS = ("solid", "vgradient", "hgradient")

# Joint limits in degrees (used by random_smooth and to clamp the other families' sampled parameters).
ANGLE_LIMITS_DEG = np.array([
    (-20, 20), (-25, 25),  # torso, head
    (-15, 170), (-10, 140), (-15, 170), (-10, 140),  # r_shoulder, r_elbow, l_shoulder, l_elbow
    (-10, 65), (-5, 100), (-25, 25), (-10, 65), (-5, 100), (-25, 25),  # r_hip, r_knee, r_ankle, l_...
], dtype=np.float64)
FOOT_BASE_DEG = 75.0  # a foot at ankle angle 0 points this far outwards from the shin (cartoon "duck" stance)

# World extent that any identity in any built-in family stays within (measured with
# `_measure_world_extent()` over thousands of identities and clips, plus a safety margin): height above the
# ground and half width about the centre line.
WORLD_EXTENT_H = 1.52
WORLD_HALF_W = 0.72


def _rng(*seed) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([int(s) & 0xFFFFFFFF for s in seed]))


def _u(rng, lo, hi) -> float:
    return float(rng.uniform(lo, hi))


def _hsv(h, s, v) -> tuple:
    r, g, b = colorsys.hsv_to_rgb(h % 1.0, min(max(s, 0.0), 1.0), min(max(v, 0.0), 1.0))
    return (int(round(r * 255)), int(round(g * 255)), int(round(b * 255)))


def _dist(a, b) -> float:
    return float(np.linalg.norm(np.subtract(a, b, dtype=np.float64)))


# ---------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class PuppetIdentity:
    """A puppet's body (world units, an average adult ~1.0 tall) and look (RGB uint8 triples)."""

    seed: int
    body_type: str
    # lengths
    head_r: float
    neck_len: float
    torso_len: float
    shoulder_hw: float  # half distance between the shoulders
    shoulder_drop: float  # shoulders sit this far below the neck joint
    hip_hw: float
    upper_arm: float
    forearm: float
    hand_r: float
    thigh: float
    shin: float
    foot_len: float
    # widths (full thickness)
    neck_w: float
    upper_arm_w: float
    forearm_w: float
    thigh_w: float
    shin_w: float
    foot_w: float
    # look
    skin: tuple
    hair: tuple
    hair_style: str  # "none" | "short" | "long"
    eyes: tuple
    shirt: tuple
    shirt2: tuple
    pattern: str  # "solid" | "stripes" | "two_tone"
    stripes: int
    sleeves: str  # "short" | "long"
    pants: tuple
    legwear: str  # "shorts" | "long"
    shoes: tuple
    background: str  # "solid" | "vgradient" | "hgradient"
    bg0: tuple
    bg1: tuple
    floor: Optional[tuple]

    @staticmethod
    def sample(seed: int, body_type: Optional[str] = None) -> "PuppetIdentity":
        """A random identity, the same for the same seed (and body_type, when given)."""
        rng = _rng(seed, 0x1D)
        bt = body_type if body_type is not None else str(rng.choice(BODY_TYPES, p=[0.34, 0.22, 0.22, 0.22]))
        if bt not in BODY_TYPES:
            raise InputError(f"body_type {bt!r}: expected one of {BODY_TYPES}")
        # archetype factor ranges: overall scale, head, limb length, torso length, widths, shoulders
        ranges = {
            "average": ((.9, 1.0), (.95, 1.05), (.95, 1.05), (.95, 1.05), (.9, 1.1), (.95, 1.05)),
            "child": ((.68, .8), (1.35, 1.6), (.8, .9), (.9, 1.0), (1.0, 1.15), (.85, .95)),
            "tall_thin": ((1.0, 1.1), (.85, .95), (1.08, 1.2), (1.0, 1.1), (.6, .75), (.85, .95)),
            "broad": ((.92, 1.02), (.95, 1.05), (.88, .98), (.95, 1.05), (1.35, 1.6), (1.2, 1.35)),
        }[bt]
        sc, hd, limb, tor, wid, sh = (_u(rng, lo, hi) for lo, hi in ranges)

        def j(x):  # per-segment jitter
            return x * _u(rng, 0.94, 1.06)

        arm = limb * _u(rng, 0.95, 1.05)
        leg = limb * _u(rng, 0.95, 1.05)
        body = dict(
            head_r=j(0.066 * hd) * sc, neck_len=j(0.05) * sc, torso_len=j(0.30 * tor) * sc,
            shoulder_hw=j(0.105 * sh * (0.8 + 0.2 * wid)) * sc, shoulder_drop=j(0.022) * sc,
            hip_hw=j(0.062 * (0.75 + 0.25 * wid)) * sc,
            upper_arm=j(0.165 * arm) * sc, forearm=j(0.15 * arm) * sc, hand_r=j(0.028 * (0.8 + 0.2 * wid)) * sc,
            thigh=j(0.235 * leg) * sc, shin=j(0.225 * leg) * sc, foot_len=j(0.07 * leg) * sc,
            neck_w=j(0.045 * wid) * sc, upper_arm_w=j(0.052 * wid) * sc, forearm_w=j(0.042 * wid) * sc,
            thigh_w=j(0.07 * wid) * sc, shin_w=j(0.055 * wid) * sc, foot_w=j(0.04 * (0.8 + 0.2 * wid)) * sc,
        )
        # look
        skins = [(255, 224, 196), (241, 194, 154), (224, 172, 128), (198, 134, 90), (141, 85, 54), (92, 58, 40),
                 (255, 205, 178), (176, 222, 140), (150, 190, 255)]  # last two: cartoon green / blue
        skin = tuple(int(np.clip(c + rng.integers(-12, 13), 0, 255)) for c in skins[int(rng.integers(len(skins)))])
        hair = _hsv(_u(rng, 0.0, 0.12) if rng.random() < 0.7 else rng.random(), _u(rng, .3, .9), _u(rng, .1, .85))
        hair_style = str(rng.choice(["none", "short", "long"], p=[0.15, 0.5, 0.35]))
        eyes = _hsv(rng.random(), _u(rng, 0, .5), _u(rng, .05, .25))
        bg_h = rng.random()
        background = str(rng.choice(BACKGROUNDS, p=[0.4, 0.35, 0.25]))
        bg0 = _hsv(bg_h, _u(rng, 0, .45), _u(rng, .35, .98))
        bg1 = _hsv(bg_h + _u(rng, -.15, .15), _u(rng, 0, .5), _u(rng, .3, .95)) if background != "solid" else bg0
        floor = _hsv(rng.random(), _u(rng, 0, .4), _u(rng, .25, .7)) if rng.random() < 0.6 else None

        def contrasting(min_d=90.0):
            for _ in range(50):
                c = _hsv(rng.random(), _u(rng, .35, 1.0), _u(rng, .3, 1.0))
                if min(_dist(c, bg0), _dist(c, bg1), _dist(c, skin)) >= min_d:
                    return c
            return c

        shirt = contrasting()
        shirt2 = contrasting(60.0)
        pants = contrasting(70.0)
        shoes = _hsv(rng.random(), _u(rng, 0, .8), _u(rng, .1, .6))
        pattern = str(rng.choice(PATTERNS, p=[0.4, 0.35, 0.25]))
        return PuppetIdentity(
            seed=int(seed), body_type=bt, **body, skin=skin, hair=hair, hair_style=hair_style, eyes=eyes,
            shirt=shirt, shirt2=shirt2, pattern=pattern, stripes=int(rng.integers(3, 7)),
            sleeves=str(rng.choice(["short", "long"])), pants=pants,
            legwear=str(rng.choice(["shorts", "long"], p=[.3, .7])),
            shoes=shoes, background=background, bg0=bg0, bg1=bg1, floor=floor)

    # -- measurements --------------------------------------------------------------------------------------
    @property
    def leg_len(self) -> float:
        return self.thigh + self.shin

    @property
    def arm_len(self) -> float:
        return self.upper_arm + self.forearm

    @property
    def height(self) -> float:
        """Standing height (ground to the top of the head) in world units."""
        ankle_h = self.foot_w / 2 + max(0.0, math.cos(math.radians(FOOT_BASE_DEG)) * self.foot_len)
        return ankle_h + self.leg_len + self.torso_len + self.neck_len + 2 * self.head_r

    def proportions(self) -> dict:
        """Scale-free ratios (to the torso length) that tell bodies apart."""
        t = self.torso_len
        return {"height": self.height / t, "head": self.head_r / t, "arm": self.arm_len / t, "leg": self.leg_len / t,
                "shoulders": self.shoulder_hw / t, "hips": self.hip_hw / t, "width": self.thigh_w / t}

    def to_dict(self) -> dict:
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in dataclasses.asdict(self).items()}


# ---------------------------------------------------------------------------------------------------------
def _soft_clip(x, lo, hi):
    mid, half = (lo + hi) / 2, (hi - lo) / 2
    return mid + half * np.tanh((x - mid) / half)


@dataclass
class PuppetMotion:
    """A procedural motion: ``angles(t)`` [T, 12] radians and ``root(t)`` [T, 2] for times t in seconds.

    root[:, 0] is a sideways offset in body heights, root[:, 1] a jump height in leg lengths (>= 0).
    """

    seed: int
    family: str
    params: dict = dataclasses.field(repr=False)

    @staticmethod
    def sample(seed: int, family: Optional[str] = None) -> "PuppetMotion":
        rng = _rng(seed, 0x40)
        fam = family if family is not None else str(rng.choice(FAMILIES))
        if fam not in FAMILIES:
            raise InputError(f"motion family {fam!r}: expected one of {FAMILIES}")
        p = {"phase": _u(rng, 0, 2 * math.pi), "drift_amp": _u(rng, 0, 0.05), "drift_f": _u(rng, 0.05, 0.25),
             "drift_phase": _u(rng, 0, 2 * math.pi)}
        if fam == "walk":
            p.update(f=_u(rng, .8, 1.3), hip=_u(rng, 10, 25), knee=_u(rng, 35, 70), arm0=_u(rng, 5, 15),
                     arm=_u(rng, 15, 35), elbow0=_u(rng, 5, 25), elbow=_u(rng, 10, 35), lean=_u(rng, 0, 4))
        elif fam == "wave":
            p.update(side=str(rng.choice(["r", "l", "both"], p=[.45, .35, .2])), f=_u(rng, 1.2, 2.5),
                     sh=_u(rng, 100, 150), elbow0=_u(rng, 20, 60), elbow=_u(rng, 20, 40), other_sh=_u(rng, 5, 20),
                     other_el=_u(rng, 5, 25), hip_r=_u(rng, 3, 10), hip_l=_u(rng, 3, 10), knee=_u(rng, 0, 8),
                     torso0=_u(rng, -5, 5), head0=_u(rng, -10, 10))
        elif fam == "dance":
            p.update(f=_u(rng, .8, 1.6), sh_c=rng.uniform(30, 90, 2), sh_a=rng.uniform(30, 70, 2),
                     el_c=rng.uniform(20, 60, 2), el_a=rng.uniform(20, 50, 2), ph=rng.uniform(0, 2 * math.pi, 8),
                     torso=_u(rng, 5, 15), head=_u(rng, 5, 15), hip_c=_u(rng, 5, 15), hip_a=_u(rng, 5, 15),
                     knee=_u(rng, 10, 35), root=_u(rng, 0.02, 0.06))
        elif fam == "jump":
            p.update(period=_u(rng, .9, 1.5), knee=_u(rng, 50, 90), arms=_u(rng, 80, 130), hop=_u(rng, .12, .28),
                     torso=_u(rng, -4, 4))
        elif fam == "squat":
            p.update(period=_u(rng, 1.6, 3.0), depth=_u(rng, .6, 1.0), arms=_u(rng, 40, 75), torso=_u(rng, 0, 4))
        elif fam == "arm_circles":
            p.update(f=_u(rng, .4, 1.0) * (1 if rng.random() < .5 else -1), mirror=bool(rng.random() < .7),
                     el=rng.uniform(0, 15, 2), hip=_u(rng, 5, 12))
        elif fam == "sway":
            p.update(f=_u(rng, .25, .7), torso=_u(rng, 5, 14), head=_u(rng, 0, 6), sh0=_u(rng, 5, 20),
                     sh=_u(rng, 3, 10), el=_u(rng, 5, 20), hip0=_u(rng, 4, 10), root=_u(rng, .02, .06))
        else:  # random_smooth
            lo, hi = ANGLE_LIMITS_DEG[:, 0], ANGLE_LIMITS_DEG[:, 1]
            p.update(center=rng.uniform(lo + .25 * (hi - lo), hi - .45 * (hi - lo)),
                     amp=rng.uniform(0, .45, (NUM_ANGLES, 3)) * (hi - lo)[:, None] / 2,
                     freq=rng.uniform(.1, 1.0, (NUM_ANGLES, 3)), ph=rng.uniform(0, 2 * math.pi, (NUM_ANGLES, 3)))
        return PuppetMotion(seed=int(seed), family=fam, params=p)

    # -- evaluation ----------------------------------------------------------------------------------------
    def angles(self, t) -> np.ndarray:
        """Joint angles [T, 12] in radians (order :data:`ANGLE_NAMES`) at times t (seconds)."""
        return np.radians(self._angles_deg(np.asarray(t, dtype=np.float64).reshape(-1)))

    def root(self, t) -> np.ndarray:
        """[T, 2]: sideways offset (body heights), jump height (leg lengths)."""
        t = np.asarray(t, dtype=np.float64).reshape(-1)
        p = self.params
        x = p["drift_amp"] * np.sin(2 * math.pi * p["drift_f"] * t + p["drift_phase"])
        hop = np.zeros_like(t)
        if self.family == "dance":
            x = x + p["root"] * np.sin(math.pi * p["f"] * t + p["ph"][7])
        elif self.family == "sway":
            x = x + p["root"] * np.sin(2 * math.pi * p["f"] * t + p["phase"])
        elif self.family == "jump":
            ph = (t / p["period"] + p["phase"] / (2 * math.pi)) % 1.0
            air = (ph > 0.3) & (ph < 0.7)
            hop = np.where(air, p["hop"] * np.sin(math.pi * (ph - 0.3) / 0.4), 0.0)
        return np.stack([x, hop], axis=1)

    def _angles_deg(self, t: np.ndarray) -> np.ndarray:
        p, fam = self.params, self.family
        a = np.zeros((t.size, NUM_ANGLES))
        T, H, RS, RE, LS, LE, RH, RK, RA, LH, LK, LA = range(NUM_ANGLES)
        ph = p["phase"]
        if fam == "walk":
            s = np.sin(2 * math.pi * p["f"] * t + ph)
            up_r, up_l = np.maximum(s, 0) ** 1.3, np.maximum(-s, 0) ** 1.3
            a[:, RH], a[:, RK], a[:, RA] = 4 + p["hip"] * up_r, p["knee"] * up_r, 10 * up_r
            a[:, LH], a[:, LK], a[:, LA] = 4 + p["hip"] * up_l, p["knee"] * up_l, 10 * up_l
            a[:, RS] = p["arm0"] + p["arm"] * (0.5 - 0.5 * s)
            a[:, LS] = p["arm0"] + p["arm"] * (0.5 + 0.5 * s)
            a[:, RE] = p["elbow0"] + p["elbow"] * (0.5 - 0.5 * s)
            a[:, LE] = p["elbow0"] + p["elbow"] * (0.5 + 0.5 * s)
            a[:, T] = p["lean"] * s
            a[:, H] = -0.5 * a[:, T] + 3 * np.sin(4 * math.pi * p["f"] * t + ph)
        elif fam == "wave":
            w = np.sin(2 * math.pi * p["f"] * t + ph)
            raised_sh = p["sh"] + 8 * np.sin(2 * math.pi * p["f"] * t + ph + 0.7)
            raised_el = p["elbow0"] + p["elbow"] * w
            rest_sh = p["other_sh"] + 3 * np.sin(math.pi * p["f"] * t + ph)
            r_up, l_up = p["side"] in ("r", "both"), p["side"] in ("l", "both")
            a[:, RS], a[:, RE] = (raised_sh, raised_el) if r_up else (rest_sh, p["other_el"])
            a[:, LS], a[:, LE] = (raised_sh, raised_el) if l_up else (rest_sh, p["other_el"])
            a[:, RH], a[:, LH], a[:, RK], a[:, LK] = p["hip_r"], p["hip_l"], p["knee"], p["knee"]
            a[:, T] = p["torso0"] + 3 * np.sin(math.pi * p["f"] * t + ph)
            a[:, H] = p["head0"] + 5 * np.sin(2 * math.pi * p["f"] * t + ph + 1.3)
        elif fam == "dance":
            w = 2 * math.pi * p["f"] * t
            q = p["ph"]
            a[:, RS] = p["sh_c"][0] + p["sh_a"][0] * np.sin(w + q[0])
            a[:, LS] = p["sh_c"][1] + p["sh_a"][1] * np.sin(w + q[1])
            a[:, RE] = p["el_c"][0] + p["el_a"][0] * np.sin(w + q[2])
            a[:, LE] = p["el_c"][1] + p["el_a"][1] * np.sin(w + q[3])
            a[:, T] = p["torso"] * np.sin(w / 2 + q[4])
            a[:, H] = p["head"] * np.sin(w + q[5])
            a[:, RH] = p["hip_c"] + p["hip_a"] * np.sin(w + q[6])
            a[:, LH] = p["hip_c"] - p["hip_a"] * np.sin(w + q[6])
            bounce = p["knee"] * (0.5 - 0.5 * np.cos(2 * w))
            a[:, RK], a[:, LK] = bounce, bounce
        elif fam == "jump":
            phs = (t / p["period"] + ph / (2 * math.pi)) % 1.0
            crouch = 0.5 + 0.5 * np.cos(2 * math.pi * phs)
            a[:, RK] = a[:, LK] = p["knee"] * crouch
            a[:, RH] = a[:, LH] = 6 + 0.5 * p["knee"] * crouch
            a[:, RA] = a[:, LA] = -10 * crouch
            a[:, RS] = a[:, LS] = 15 + p["arms"] * (1 - crouch)
            a[:, RE] = a[:, LE] = 10 + 20 * crouch
            a[:, T] = p["torso"] * crouch
        elif fam == "squat":
            d = p["depth"] * (0.5 - 0.5 * np.cos(2 * math.pi * t / p["period"] + ph))
            a[:, RH] = a[:, LH] = 8 + 55 * d
            a[:, RK] = a[:, LK] = 100 * d
            a[:, RA] = a[:, LA] = -10 * d
            a[:, RS] = a[:, LS] = 15 + p["arms"] * d
            a[:, RE] = a[:, LE] = 10 + 20 * d
            a[:, T] = p["torso"] * np.sin(math.pi * t / p["period"] + ph)
        elif fam == "arm_circles":
            ang = np.degrees(2 * math.pi * p["f"] * t + ph)
            a[:, RS] = 80 + ang
            a[:, LS] = 80 + (ang if p["mirror"] else ang + 180)
            a[:, RE], a[:, LE] = p["el"][0], p["el"][1]
            a[:, RH] = a[:, LH] = p["hip"]
            a[:, H] = 4 * np.sin(2 * math.pi * p["f"] * t + ph)
        elif fam == "sway":
            w = 2 * math.pi * p["f"] * t + ph
            a[:, T] = p["torso"] * np.sin(w)
            a[:, H] = -0.6 * a[:, T] + p["head"] * np.sin(2 * w)
            a[:, RS] = p["sh0"] + p["sh"] * np.sin(w + math.pi / 2)
            a[:, LS] = p["sh0"] - p["sh"] * np.sin(w + math.pi / 2)
            a[:, RE] = a[:, LE] = p["el"]
            a[:, RH] = p["hip0"] + 5 * np.sin(w)
            a[:, LH] = p["hip0"] - 5 * np.sin(w)
            a[:, RK] = 6 * np.maximum(np.sin(w), 0)
            a[:, LK] = 6 * np.maximum(-np.sin(w), 0)
        else:  # random_smooth
            x = p["center"][None, :] + np.sum(
                p["amp"][None] * np.sin(2 * math.pi * p["freq"][None] * t[:, None, None] + p["ph"][None]), axis=-1)
            a = _soft_clip(x, ANGLE_LIMITS_DEG[:, 0], ANGLE_LIMITS_DEG[:, 1])
        return a


# ---------------------------------------------------------------------------------------------------------
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


# ---------------------------------------------------------------------------------------------------------
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


# ---------------------------------------------------------------------------------------------------------
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

        from .heatmaps import render_heatmaps

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
            return torch.from_numpy(x).float().div_(255.0)

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


# ---------------------------------------------------------------------------------------------------------
def bench_puppet(size: Sequence[int] = (128, 128), num_frames: int = 64, clips: int = 8, seed: int = 0,
                 supersample: int = 1, verbose: bool = True) -> float:
    """Measure rendering speed over ``clips`` clips on one thread; prints it and returns frames per CPU second
    (the wall-clock rate is printed too; it is lower when other processes share the cores)."""
    import cv2

    threads = cv2.getNumThreads()
    cv2.setNumThreads(1)
    try:
        jobs = [(PuppetIdentity.sample(seed + i), PuppetMotion.sample(seed + 1000 + i)) for i in range(clips)]
        render_clip(*jobs[0], num_frames=2, size=size)  # warm-up (imports, caches)
        t0, c0 = time.perf_counter(), time.thread_time()
        for idn, mot in jobs:
            render_clip(idn, mot, num_frames=num_frames, size=size, supersample=supersample)
        dt, dc = time.perf_counter() - t0, time.thread_time() - c0
    finally:
        cv2.setNumThreads(threads)
    n = clips * num_frames
    fps = n / max(dc, 1e-9)
    if verbose:
        print(f"puppet world: {fps:.0f} frames/s of CPU time ({n / dt:.0f} frames/s wall clock) at "
              f"{size[0]}x{size[1]}, supersample {supersample}, {clips} clips x {num_frames} frames, one thread")
    return fps


def contact_sheet(seeds: Sequence[int] = tuple(range(8)), num_frames: int = 6, size: Sequence[int] = (128, 128),
                  fps: float = 4.0, cross_identity_driver: Optional[int] = None) -> np.ndarray:
    """uint8 [rows*H, num_frames*W, 3]: one row per seed (identity seed, motion seed+1000, families cycled).

    With cross_identity_driver=k every row does the motion of seed k (the cross-identity target of each body).
    """
    rows = []
    for i, sd in enumerate(seeds):
        idn = PuppetIdentity.sample(sd)
        drv = cross_identity_driver
        mot = PuppetMotion.sample((drv if drv is not None else sd) + 1000,
                                  FAMILIES[(drv if drv is not None else i) % len(FAMILIES)])
        r = render_clip(idn, mot, num_frames, fps, size)
        rows.append(np.concatenate(list(r["frames"]), axis=1))
    return np.concatenate(rows, axis=0)


def _measure_world_extent(n_ids: int = 400, seconds: float = 12.0, fps: float = 10.0) -> tuple:
    """Max height above ground and max half width (world units, incl. drawing radii) over identities x families.

    Development helper used to set WORLD_EXTENT_H / WORLD_HALF_W (keep both above what this prints).
    """
    t = np.arange(0, seconds, 1 / fps)
    hmax = wmax = 0.0
    for i in range(n_ids):
        idn = PuppetIdentity.sample(i, BODY_TYPES[i % len(BODY_TYPES)] if i % 2 else None)
        rad = _radii(idn)
        for f in FAMILIES:
            mot = PuppetMotion.sample(i * 31 + 7, f)
            P = forward_kinematics(idn, mot.angles(t), mot.root(t))["points"]
            hmax = max(hmax, float(np.max(-(P[..., 1] - rad))))
            wmax = max(wmax, float(np.max(np.abs(P[..., 0]) + rad)))
    return hmax, wmax


def main(argv=None) -> int:
    import argparse

    ap = argparse.ArgumentParser(prog="python -m imanim_core.data.puppet", description="puppet world tools")
    ap.add_argument("--bench", action="store_true", help="print rendering frames/s")
    ap.add_argument("--size", type=int, default=128, help="square canvas side (default 128)")
    ap.add_argument("--frames", type=int, default=64, help="frames per clip for --bench")
    ap.add_argument("--supersample", type=int, default=1)
    ap.add_argument("--sheet", help="write a contact sheet PNG here")
    ap.add_argument("--cross", type=int, default=None, help="with --sheet: every row does this seed's motion")
    ap.add_argument("--extent", action="store_true", help="measure the world extent (development)")
    a = ap.parse_args(argv)
    if a.bench:
        bench_puppet((a.size, a.size), a.frames, supersample=a.supersample)
    if a.sheet:
        import cv2

        sheet = contact_sheet(size=(a.size, a.size), cross_identity_driver=a.cross)
        cv2.imwrite(a.sheet, sheet[..., ::-1])
        print(f"wrote {a.sheet}")
    if a.extent:
        print("height %.3f half width %.3f" % _measure_world_extent())
    if not (a.bench or a.sheet or a.extent):
        ap.print_help()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
