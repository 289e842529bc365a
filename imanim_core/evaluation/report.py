"""The benchmark's report: ``metrics.json``, ``metrics.md`` and the PNG plots."""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import List, Optional

import numpy as np

from .cases import LEVELS
from .metrics import FG_THRESHOLD, HIGHER_IS_BETTER, METRICS

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
