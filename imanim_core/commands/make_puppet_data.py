"""`python -m imanim_core make-puppet-data OUT [--clips N] [--frames T] [--size S] ...` — write a puppet data set.

Writes OUT in the video-folder layout of :mod:`imanim_core.data.video_folder` (``OUT/clip_0000/video.mp4`` or
``frames/``, plus ``pose/000000.json`` ...), from the puppet world, then validates it. Clips appear only when
complete, and clips already written with the same settings are kept: run the command again to resume.
"""
from __future__ import annotations

import sys


def add_arguments(parser):
    parser.add_argument("out", help="output folder (created; existing complete clips are kept)")
    parser.add_argument("--clips", type=int, default=16, help="number of clips (default 16)")
    parser.add_argument("--frames", type=int, default=48, help="frames per clip (default 48)")
    parser.add_argument("--size", type=int, nargs="+", default=[128],
                        help="frame size: S (square) or H W (default 128)")
    parser.add_argument("--fps", type=float, default=16.0, help="frames per second (default 16)")
    parser.add_argument("--seed", type=int, default=0, help="data set seed (default 0)")
    parser.add_argument("--layout", choices=["video", "frames"], default="video",
                        help="video.mp4 per clip (H.264) or a frames/ folder of PNGs (lossless; default video)")
    parser.add_argument("--pose-format", choices=["dwpose", "body25", "body18"], default="dwpose",
                        help="pose JSON flavour (default dwpose: BODY_18 + foot_keypoints_2d)")
    parser.add_argument("--families", default=None,
                        help="comma-separated motion families (default all: walk,wave,dance,jump,squat,"
                             "arm_circles,sway,random_smooth)")


def run(args) -> int:
    from ..data.video_folder import validate_video_folder, write_puppet_video_folder
    from ..errors import InputError

    if len(args.size) not in (1, 2):
        raise InputError(f"--size: expected S or H W, got {args.size}")
    size = (args.size[0], args.size[-1])
    families = [f.strip() for f in args.families.split(",") if f.strip()] if args.families else None

    def progress(i, n, name):
        print(f"\r[{i + 1}/{n}] {name}", end="", file=sys.stderr, flush=True)

    root = write_puppet_video_folder(args.out, num_clips=args.clips, frames=args.frames, size=size, seed=args.seed,
                                     fps=args.fps, layout=args.layout, pose_format=args.pose_format,
                                     families=families, progress=progress)
    print("", file=sys.stderr)
    report = validate_video_folder(root)
    print(report.summary())
    return 0
