"""Puppet bodies: the world's constants and :class:`PuppetIdentity` (a body and its look), sampled by seed."""
from __future__ import annotations

import colorsys
import dataclasses
import math
from dataclasses import dataclass
from typing import Optional

import numpy as np

from ...errors import InputError

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

