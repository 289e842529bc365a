"""`python -m imanim_core baseline train [train stage3 options] | install EXPORT_DIR [DEST]`

The explicit skeleton baseline of the benchmark (:mod:`imanim_core.baselines`): ``train`` runs
``train stage3``'s recipe with the skeleton encoder (``train/skeleton.py``); ``install`` copies a finished run's
export folder to ``imanim_core/weights/baselines/skeleton`` (or DEST). Also ``python -m imanim_core.baselines ...``.
"""
from __future__ import annotations

from ..train import cli as train_cli


def add_arguments(parser) -> None:
    parser.description = __doc__.split("\n\n")[1].replace("\n", " ")
    sub = parser.add_subparsers(dest="baseline_command", metavar="train|install", required=True)
    train = sub.add_parser("train", help="train the explicit skeleton baseline with the stage-3 recipe")
    train_cli.add_arguments(train, stage=False)
    train.description = "train the explicit skeleton baseline with the stage-3 recipe"
    install = sub.add_parser("install", help="install a finished baseline run's export folder")
    install.add_argument("export_dir", help="the export folder of a finished baseline run (DIR/export)")
    install.add_argument("dest", nargs="?", default=None,
                         help="where to install (default: imanim_core/weights/baselines/skeleton)")


def run(args) -> int:
    if args.baseline_command == "install":
        from ..baselines import install

        dst = install(args.export_dir, args.dest)
        print(f"installed the skeleton baseline in {dst}")
        return 0
    from ..train.loop import run_training
    from ..train.skeleton import SkeletonStage

    return run_training(train_cli.config_from_args(args), SkeletonStage, resume=args.resume)
