"""Running the benchmark: every method on every case, measured and aggregated per level."""
from __future__ import annotations

import time
from typing import Callable, Dict, Optional, Sequence

import numpy as np
from tqdm.auto import tqdm

from .cases import LEVELS, EvalCase, render_case
from .metrics import KeypointReader, aggregate, case_metrics, gt_silhouette, mask_iou

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
