"""Puppet motions: :class:`PuppetMotion`, a procedural family's joint angles and root motion as functions of time."""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Optional

import numpy as np

from ...errors import InputError
from .body import ANGLE_LIMITS_DEG, FAMILIES, NUM_ANGLES, _rng, _u

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

