"""`python -m imanim_core animate --identity IMAGE --driving VIDEO --out OUT.mp4 [options]`

Animates one character image (at least 16 px a side; RGB, RGBA — alpha over black, as the nodes do — or grey)
with the motion of a driving video (at least 16 px a side; a video file or a folder of images) with
imanim_core.pipeline, and writes an H.264 mp4 with exactly as many frames as the driving video. Without
--bundle/--dit/--vae the embedded tiny model is used. Sampling is ComfyUI's euler + simple with the given shift,
so the ComfyUI workflow with the same models, seed, steps, shift, window and overlap gives the same video.
"""
from __future__ import annotations

import sys
import time


def add_common_model_arguments(parser) -> None:
    parser.add_argument("--bundle", default=None, help="IM-Animation bundle (.safetensors); default: the embedded "
                                                       "tiny model")
    parser.add_argument("--dit", default=None, help="Wan DiT file (original layout); default: the embedded one")
    parser.add_argument("--vae", default=None, help="Wan 2.1 VAE file; default: the embedded one")
    parser.add_argument("--threads", type=int, default=None,
                        help="CPU threads for torch (animate: torch's choice by default; demo and eval: 1, the "
                             "fastest for the tiny model, also on a busy machine)")


def apply_threads(args) -> None:
    n = getattr(args, "threads", None)
    if n is not None:
        import torch

        from ..errors import InputError

        if n < 1:
            raise InputError(f"--threads: expected a positive integer, got {n}")
        torch.set_num_threads(int(n))


def add_sampling_arguments(parser, steps_default=None, window_default=None, overlap_default=None) -> None:
    from ..defaults import DEFAULT_OVERLAP, DEFAULT_SEED, DEFAULT_SHIFT, DEFAULT_STEPS, DEFAULT_WINDOW

    parser.add_argument("--size", default=None,
                        help="model grid HxW in pixels, multiples of 16 (e.g. 128x128); default: the bundle's "
                             "training size (128x128 for the tiny model)")
    parser.add_argument("--steps", type=int, default=steps_default or DEFAULT_STEPS,
                        help=f"denoising steps (default {steps_default or DEFAULT_STEPS})")
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED, help=f"noise seed (default {DEFAULT_SEED})")
    parser.add_argument("--shift", type=float, default=DEFAULT_SHIFT,
                        help=f"flow-matching time shift, as ModelSamplingSD3 (default {DEFAULT_SHIFT})")
    from ..defaults import TINY_OVERLAP, TINY_WINDOW

    parser.add_argument("--window", type=int, default=window_default,
                        help="frames per window, 4n+1 (default: "
                             + (f"{window_default}" if window_default else
                                f"{TINY_WINDOW} for a tiny DiT such as the embedded one, its training clip length; "
                                f"{DEFAULT_WINDOW} for Wan 2.1")
                             + "); longer videos are sampled as overlapping windows blended at every step")
    parser.add_argument("--overlap", type=int, default=overlap_default,
                        help="frames shared by consecutive windows, rounded down to a multiple of 4 (default: "
                             + (f"{overlap_default}" if overlap_default is not None else
                                f"{TINY_OVERLAP} for a tiny DiT, {DEFAULT_OVERLAP} for Wan 2.1") + ")")


def add_arguments(parser):
    from ..defaults import FIT_MODES, OUTPUT_MODES

    parser.description = __doc__.split("\n\n")[1].replace("\n", " ")
    parser.add_argument("--identity", required=True, help="character image (png/jpg/webp/...; RGB, RGBA or grey)")
    parser.add_argument("--driving", required=True, help="driving video (mp4/webm/gif/mov/avi/mkv) or image folder")
    parser.add_argument("--out", required=True, help="output video (.mp4, H.264)")
    add_common_model_arguments(parser)
    add_sampling_arguments(parser)
    parser.add_argument("--fps", type=float, default=None, help="output frame rate (default: the driving video's)")
    parser.add_argument("--fit", choices=FIT_MODES, default="pad",
                        help="how the identity is brought to the grid: pad (letterbox, default), crop or stretch")
    parser.add_argument("--output", choices=OUTPUT_MODES, default="crop",
                        help="output frame: crop (the identity's aspect at the grid's scale, default), grid (the "
                             "whole model grid) or identity (also resized to the identity image's size)")
    parser.add_argument("--max-frames", type=int, default=None, help="use only the first N driving frames")
    parser.add_argument("--device", default="cpu", help="cpu (default), cuda, cuda:1, ...")


def run(args) -> int:
    import resource

    import torch

    from .. import pipeline as P
    from ..checks import check_min_side
    from ..errors import InputError
    from ..io.video import read_image, read_video, write_video

    t0 = time.perf_counter()
    apply_threads(args)
    size = P.parse_size(args.size)
    if args.steps < 1:
        raise InputError(f"--steps: expected a positive integer, got {args.steps}")
    if args.fps is not None and not args.fps > 0:
        raise InputError(f"--fps: expected a positive number, got {args.fps}")
    identity = read_image(args.identity)
    check_min_side(identity.shape[0], identity.shape[1], f"identity {str(args.identity)!r}")  # before loading
    driving, fps = read_video(args.driving, max_frames=args.max_frames)
    try:
        torch.empty(0, device=args.device)
    except Exception as e:  # noqa: BLE001
        raise InputError(f"--device {args.device!r} is not usable here: {e}") from None
    bundle, dit, vae = P.load_models(args.bundle, args.dit, args.vae, device=args.device)
    print(f"identity {identity.shape[1]}x{identity.shape[0]}, driving {driving.shape[0]} frames "
          f"{driving.shape[2]}x{driving.shape[1]} at {fps:g} fps", file=sys.stderr)
    res = P.run(identity, driving, bundle, dit, vae, size=size, steps=args.steps, seed=args.seed, shift=args.shift,
                window=args.window, overlap=args.overlap, progress=True, fit=args.fit, output=args.output)
    out_fps = float(args.fps) if args.fps else float(fps)
    path = write_video(args.out, res.frames, out_fps)
    info = res.info
    wins = ", ".join(f"[{w.start},{w.end})" for w in info["windows"])
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    print(f"wrote {path}: {res.frames.shape[0]} frames {res.frames.shape[2]}x{res.frames.shape[1]} at {out_fps:g} "
          f"fps (grid {info['size'][1]}x{info['size'][0]}, {info['latent_frames']} latent frames, windows {wins}, "
          f"{args.steps} steps, seed {args.seed}); {time.perf_counter() - t0:.1f} s, peak memory {peak:.0f} MB")
    return 0
