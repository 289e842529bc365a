"""`python -m imanim_core eval --out DIR [--quick] [options]`

Runs the fixed held-out cross-identity benchmark of :mod:`imanim_core.evaluation` on the puppet world (three
levels of body-shape mismatch between driver and identity, exact ground truth) for IM-Animation and the
baselines — the identity held still and the explicit skeleton baseline (:mod:`imanim_core.baselines`; reported
as not trained when its weights are absent) — plus two references (the ground truth through the VAE, and the
ground truth itself). Writes DIR/metrics.json, DIR/metrics.md and PNG plots (metrics.png, leakage.png,
examples.png). --quick: one case per level, 5 frames, 2 steps (a smoke test, not a result).
"""
from __future__ import annotations

import sys
import time

METHOD_TEXT = {
    "im_animation": "IM-Animation: implicit motion tokens -> retargeter -> injector (this bundle)",
    "skeleton": "explicit control: the driver's skeleton at the driver's proportions -> skeleton encoder -> "
                "injector, same backbone and stage-3 recipe",
    "identity_still": "baseline: the identity image held still",
    "vae_upper_bound": "reference: the ground truth through the VAE (upper bound of this VAE)",
    "ground_truth": "reference: the ground truth itself (floor of each measure)",
}


def add_arguments(parser):
    from .animate import add_common_model_arguments

    parser.description = __doc__.split("\n\n")[1].replace("\n", " ")
    parser.add_argument("--out", required=True, help="output folder for metrics.json, metrics.md and plots")
    parser.add_argument("--quick", action="store_true",
                        help="smoke test: 1 case per level, 5 frames, 2 steps (numbers are not meaningful)")
    add_common_model_arguments(parser)
    parser.add_argument("--skeleton", default=None,
                        help="folder of the trained skeleton baseline (default: imanim_core/weights/baselines/"
                             "skeleton); absent = reported as not trained")
    parser.add_argument("--size", default=None, help="video grid HxW (default: the bundle's training size)")
    parser.add_argument("--per-level", type=int, default=None, help="cases per mismatch level (default 4; quick 1)")
    parser.add_argument("--frames", type=int, default=None, help="frames per case (default 17; quick 5)")
    parser.add_argument("--fps", type=float, default=8.0, help="frame rate of the cases (default 8)")
    parser.add_argument("--steps", type=int, default=None, help="denoising steps (default 20; quick 2)")
    parser.add_argument("--seed", type=int, default=0, help="sampling seed (default 0)")
    parser.add_argument("--shift", type=float, default=None, help="flow shift (default: the pipeline's, 5)")
    parser.add_argument("--window", type=int, default=None,
                        help="window in frames, 4n+1 (default: the pipeline's for this DiT: 9 for a tiny DiT, "
                             "81 for Wan 2.1)")
    parser.add_argument("--overlap", type=int, default=None, help="window overlap in frames")
    parser.add_argument("--train-seed", type=int, default=0,
                        help="run seed of the training to check the held-out seeds against (default 0)")
    parser.add_argument("--check-items", type=int, default=None,
                        help="training items to regenerate for that check (default 100000; quick 20000; 0 = skip)")
    parser.add_argument("--stages", action="store_true",
                        help="also run the per-stage gates (vae, stage 1, stage 2, then stage 3 / end to end from the "
                             "benchmark) on held-out puppet data, each next to its trivial baseline: DIR/gates.md")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    parser.set_defaults(threads=1)  # tiny models: one thread is fastest, and robust on a shared machine


def vae_roundtrip(vae, frames):
    """uint8 [T,H,W,3] -> the same video through the VAE (padded to 4n+1, trimmed back) as uint8."""
    import torch

    from .. import pipeline as P
    from ..backbone.wan import vae_encode
    from ..windows import pad_frames

    t = int(frames.shape[0])
    x = torch.from_numpy(frames).float().div(255.0)
    x = pad_frames(x, dim=0)
    dev = next(vae.parameters()).device
    with torch.no_grad():
        lat = vae_encode(vae, (x.permute(3, 0, 1, 2)[None] * 2.0 - 1.0).to(dev))
    return P.to_uint8(P.decode_frames(vae, lat, t))


def run(args) -> int:
    import numpy as np
    import torch

    from .. import evaluation as E
    from .. import pipeline as P
    from ..baselines import load_skeleton_baseline, skeleton_baseline_status
    from ..errors import InputError
    from ..weights import SKELETON_BASELINE_DIR
    from .animate import apply_threads

    t_start = time.perf_counter()
    apply_threads(args)
    quick = bool(args.quick)
    per_level = args.per_level or (1 if quick else 4)
    frames = args.frames or (5 if quick else 17)
    steps = args.steps or (2 if quick else P.DEFAULT_STEPS)
    shift = args.shift if args.shift is not None else P.DEFAULT_SHIFT
    check_items = args.check_items if args.check_items is not None else (20_000 if quick else 100_000)
    if frames < 1 or per_level < 1 or steps < 1:
        raise InputError("--frames, --per-level and --steps must be positive")
    if not args.fps > 0:
        raise InputError(f"--fps: expected a positive number, got {args.fps}")

    bundle, dit, vae = P.load_models(args.bundle, args.dit, args.vae)
    P.check_models(bundle, dit, vae)
    size = P.parse_size(args.size) or P.default_size(bundle, P.dit_width(dit))
    window, overlap = P.default_windows(P.dit_width(dit))  # the same windows for every method
    window = args.window or window
    overlap = args.overlap if args.overlap is not None else overlap
    cases = E.benchmark_cases(per_level)
    heldout = E.training_seed_overlap(cases, args.train_seed, check_items) if check_items > 0 else None
    try:
        reader = E.KeypointReader(bundle)
    except InputError as e:
        print(f"note: no keypoint measures ({e})", file=sys.stderr)
        reader = None
    sk_dir = args.skeleton or SKELETON_BASELINE_DIR
    sk_status = skeleton_baseline_status(sk_dir)
    sk = load_skeleton_baseline(sk_dir) if sk_status == "ok" else None
    kw = dict(steps=steps, seed=args.seed, shift=shift, window=window, overlap=overlap, progress=False,
              output="grid")

    def im_animation(rc):
        return P.run(rc["identity"], rc["driving"], bundle, dit, vae, size=size, **kw).frames

    def skeleton(rc):
        return sk.animate(rc["identity"], rc["driving_keypoints"], size, **kw).frames

    methods = {
        "im_animation": im_animation,
        "skeleton": skeleton if sk is not None else None,
        "identity_still": lambda rc: np.repeat(rc["identity"][None], rc["gt"].shape[0], axis=0),
        "vae_upper_bound": lambda rc: vae_roundtrip(vae, rc["gt"]),
        "ground_truth": lambda rc: rc["gt"],
    }
    statuses = {m: "ok" for m in methods}
    statuses["skeleton"] = sk_status
    if sk is not None:
        statuses["skeleton"] = f"ok ({sk.folder})"
    stage_gates = []
    if args.stages:
        from .. import stage_gates as G

        t0 = time.perf_counter()
        stage_gates += G.vae_gates(vae, clips=2 if quick else 6, frames=frames)
        stage_gates += G.stage1_gates(bundle, frames=32 if quick else 256)
        if bundle.retargeter is not None:
            stage_gates += G.stage2_gates(bundle, vae, clips=4 if quick else 24)
        print(f"stage gates (vae, stage 1, stage 2) in {time.perf_counter() - t0:.1f} s", file=sys.stderr)

    def stage3(results, cases, frames, size, kw):
        """Gates from the benchmark at the largest mismatch, plus: does another driver change the result?"""
        from .. import stage_gates as G

        big = [c for c in cases if c.level == "large"] or list(cases)
        a, b = E.render_case(big[0], size, frames, args.fps), E.render_case(big[-1 if len(big) > 1 else 0], size,
                                                                            frames, args.fps)
        if len(big) < 2:  # one case only (--quick): the other driver is the same clip reversed
            b = dict(b, driving=b["driving"][::-1].copy())
        run_ = lambda drv, seed: P.run(a["identity"], drv, bundle, dit, vae, size=size,
                                       **dict(kw, seed=seed)).frames.astype(np.float32)
        r0 = run_(a["driving"], args.seed)
        change = float(np.abs(run_(b["driving"], args.seed) - r0).mean())
        floor = float(np.abs(run_(a["driving"], args.seed + 1) - r0).mean())
        return G.stage3_gates({"results": results}, "large", change, floor)

    examples = {}
    torch.manual_seed(0)
    bench = E.run_benchmark(methods, cases, size, frames, args.fps, reader=reader, statuses=statuses,
                            progress=not args.no_progress, examples=examples)
    report = {
        "benchmark": {"seed_base": E.EVAL_SEED_BASE, "train_seed_limit": E.TRAIN_SEED_LIMIT,
                      "levels": {k: list(v) for k, v in E.LEVELS.items()}, "cases_per_level": per_level,
                      "frames": frames, "fps": args.fps, "size": list(size), "steps": steps, "seed": args.seed,
                      "shift": shift, "window": window, "overlap": overlap, "quick": quick,
                      "fg_threshold": E.FG_THRESHOLD, "silhouette_check": bench["silhouette_check"],
                      "cases": [c.to_dict() for c in cases]},
        "models": {"bundle": str(args.bundle or "embedded"), "dit": str(args.dit or "embedded"),
                   "vae": str(args.vae or "embedded"), "skeleton": str(sk_dir)},
        "heldout_check": heldout,
        "methods": {m: {"description": METHOD_TEXT[m], "status": statuses[m]} for m in methods},
        "definitions": E.DEFINITIONS,
        "results": bench["results"],
        "per_case": [{k: v for k, v in c.items() if k != "_pooled"} for c in bench["per_case"]],
        "seconds": {"methods": bench["seconds"], "total": time.perf_counter() - t_start},
    }
    if args.stages:
        report["gates"] = stage_gates + stage3(bench["results"], cases, frames, size, kw)
    files = E.write_report(report, args.out, examples)
    if args.stages:
        from pathlib import Path

        from .. import stage_gates as G
        from ..io.atomic import atomic_output

        md = G.markdown(report["gates"])
        files["gates"] = Path(args.out) / "gates.md"
        with atomic_output(files["gates"]) as tmp:
            tmp.write_text("# Per-stage gates (held-out puppet data)\n\n" + md, encoding="utf-8")
        print(md)
    head = ("psnr", "ssim", "iou", "kp_err_rel", "leak_bones", "colour_leak")
    print(f"{'method':<16}" + "".join(f"{k:>12}" for k in head))
    for m, r in bench["results"].items():
        if "all" not in r:
            print(f"{m:<16}  {r.get('status')}")
            continue
        print(f"{m:<16}" + "".join(f"{E._fmt(r['all'].get(k), k):>12}" for k in head))
    if heldout is not None and not heldout["disjoint"]:
        print(f"warning: {len(heldout['collisions'])} benchmark seed(s) also occur in the training stream "
              f"(see metrics.json heldout_check)", file=sys.stderr)
    print(f"wrote {', '.join(str(p) for p in files.values())} in {time.perf_counter() - t_start:.1f} s")
    return 0
