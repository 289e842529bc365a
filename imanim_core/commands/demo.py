"""`python -m imanim_core demo --out DIR [--seconds 3 --fps 8 --seed 0]`

Makes a puppet character (the identity) and a driving video of a *different* body (another build and size),
animates the character with the driver's motion using the embedded tiny model, and writes DIR/result.mp4 and
DIR/side_by_side.mp4 (identity | driving | result | ground truth = the character doing the driver's motion,
rendered exactly by the puppet world), DIR/strip.png (the same four columns at four moments, one row each),
DIR/identity.png and DIR/driving.mp4. Prints the wall time, the peak
memory and how close the result is to the ground truth.
"""
from __future__ import annotations

import sys
import time

DEMO_STEPS = 20


def add_arguments(parser):
    from ..defaults import TINY_OVERLAP, TINY_WINDOW
    from .animate import add_common_model_arguments, add_sampling_arguments

    parser.description = __doc__.split("\n\n")[1].replace("\n", " ")
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--seconds", type=float, default=3.0, help="length of the driving video (default 3)")
    parser.add_argument("--fps", type=float, default=8.0, help="frame rate (default 8)")
    add_common_model_arguments(parser)
    add_sampling_arguments(parser, steps_default=DEMO_STEPS, window_default=TINY_WINDOW, overlap_default=TINY_OVERLAP)
    parser.add_argument("--scale", type=int, default=2, help="pixel scale of side_by_side.mp4 (default 2)")
    parser.set_defaults(threads=1)  # the tiny model: one thread is fastest, and robust on a shared machine


def demo_case(seed: int, size, num_frames: int, fps: float) -> dict:
    """The demo's puppets (held-out seeds from ``evaluation.DEMO_SEED_BASE``): a broad character, a tall thin
    dancer as the driver; returns identity image, driving frames and the ground truth (uint8)."""
    from ..data.puppet import PuppetIdentity, PuppetMotion, render_clip
    from ..evaluation import DEMO_SEED_BASE, body_mismatch

    base = DEMO_SEED_BASE + 10 * int(seed)
    idn = PuppetIdentity.sample(base, body_type="broad" if seed % 2 == 0 else "child")
    drv = PuppetIdentity.sample(base + 1, body_type="tall_thin")
    mot = PuppetMotion.sample(base + 2, "dance")
    pose = PuppetMotion.sample(base + 3, "sway")
    ident = render_clip(idn, pose, 1, fps, size, times=[0.5])
    driving = render_clip(drv, mot, num_frames, fps, size)
    gt = render_clip(idn, mot, num_frames, fps, size)
    return {"identity": ident["frames"][0], "driving": driving["frames"], "gt": gt["frames"],
            "gt_masks": gt["masks"], "identity_body": idn, "driver_body": drv, "mismatch": body_mismatch(idn, drv)}


def _label_strip(labels, tile_w: int, height: int):
    import cv2
    import numpy as np

    strip = np.full((height, tile_w * len(labels), 3), 24, dtype=np.uint8)
    scale = max(0.3, height / 40.0)
    for i, text in enumerate(labels):
        (tw, th), _ = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, 1)
        x = i * tile_w + max(2, (tile_w - tw) // 2)
        y = (height + th) // 2
        cv2.putText(strip, text, (x, y), cv2.FONT_HERSHEY_SIMPLEX, scale, (235, 235, 235), 1, cv2.LINE_AA)
    return strip


def side_by_side(identity, driving, result, gt, scale: int = 2):
    """uint8 [T, S*H + label, S*4W, 3]: identity | driving | result | ground truth, with a label strip."""
    import numpy as np

    t = result.shape[0]
    tiles = [np.repeat(identity[None], t, 0), driving, result, gt]
    h = max(x.shape[1] for x in tiles)
    padded = []
    for x in tiles:
        if x.shape[1] != h:  # result cropped to another aspect: centre it on black
            pad = h - x.shape[1]
            x = np.pad(x, ((0, 0), (pad // 2, pad - pad // 2), (0, 0), (0, 0)))
        padded.append(x)
    w = max(x.shape[2] for x in padded)
    padded = [np.pad(x, ((0, 0), (0, 0), ((w - x.shape[2]) // 2, w - x.shape[2] - (w - x.shape[2]) // 2), (0, 0)))
              for x in padded]
    row = np.concatenate(padded, axis=2)
    if scale > 1:
        row = row.repeat(scale, axis=1).repeat(scale, axis=2)
    strip = _label_strip(["identity", "driving", "result", "ground truth"], w * max(scale, 1),
                         max(14, 10 * max(scale, 1)))
    return np.concatenate([np.repeat(strip[None], t, 0), row], axis=1)


def run(args) -> int:
    import resource
    from pathlib import Path

    import cv2
    import numpy as np

    from .. import evaluation as E
    from .. import pipeline as P
    from ..errors import InputError
    from ..io.video import write_video
    from .animate import apply_threads

    t0 = time.perf_counter()
    apply_threads(args)
    if not args.seconds > 0 or not args.fps > 0:
        raise InputError("--seconds and --fps must be positive")
    num_frames = max(1, int(round(args.seconds * args.fps)))
    bundle, dit, vae = P.load_models(args.bundle, args.dit, args.vae)
    P.check_models(bundle, dit, vae)
    size = P.parse_size(args.size) or P.default_size(bundle, P.dit_width(dit))
    case = demo_case(args.seed, size, num_frames, args.fps)
    print(f"demo: a {case['identity_body'].body_type} character animated by a {case['driver_body'].body_type} "
          f"driver (body mismatch {case['mismatch']:.3f}), {num_frames} frames at {args.fps:g} fps, "
          f"{size[1]}x{size[0]}", file=sys.stderr)
    res = P.run(case["identity"], case["driving"], bundle, dit, vae, size=size, steps=args.steps, seed=args.seed,
                shift=args.shift, window=args.window, overlap=args.overlap, progress=True, output="grid")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    files = [write_video(out / "result.mp4", res.frames, args.fps),
             write_video(out / "side_by_side.mp4",
                         side_by_side(case["identity"], case["driving"], res.frames, case["gt"], args.scale),
                         args.fps),
             write_video(out / "driving.mp4", case["driving"], args.fps)]
    cv2.imwrite(str(out / "identity.png"), case["identity"][..., ::-1])
    files.append(out / "identity.png")
    sbs = side_by_side(case["identity"], case["driving"], res.frames, case["gt"], 1)
    picks = np.linspace(0, len(sbs) - 1, num=min(4, len(sbs))).round().astype(int)
    cv2.imwrite(str(out / "strip.png"), np.concatenate([sbs[i] for i in picks], axis=0)[..., ::-1])
    files.append(out / "strip.png")
    wall = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    psnr = float(np.mean(E.psnr_frames(res.frames, case["gt"])))
    ssim = float(np.mean(E.ssim_frames(res.frames, case["gt"])))
    bg = E.identity_background(case["identity_body"], size)
    iou = float(np.mean(E.mask_iou(E.silhouette(res.frames, bg), case["gt_masks"])))
    tm = res.info["timings"]
    print("wrote " + ", ".join(str(f) for f in files))
    print(f"vs ground truth: PSNR {psnr:.2f} dB, SSIM {ssim:.3f}, silhouette IoU {iou:.3f}")
    print(f"wall time {wall:.1f} s (sampling {tm['sampling']:.1f} s, {res.info['dit_calls']} DiT calls, VAE decode "
          f"{tm['vae_decode']:.1f} s), peak memory {peak:.0f} MB (ru_maxrss)")
    return 0
