"""Puppet-world tools: the rendering benchmark, contact sheets, the world-extent measurement and their command
(``python -m imanim_core.data.puppet --bench | --sheet out.png | --extent``)."""
from __future__ import annotations

import time
from typing import Optional, Sequence

import numpy as np

from .body import BODY_TYPES, FAMILIES, PuppetIdentity
from .motion import PuppetMotion
from .render import _radii, forward_kinematics, render_clip

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
