"""`python -m imanim_core <command> ...` — each command lives in its own module, imported only when used.

A command module provides ``add_arguments(parser)`` and ``run(args) -> int``. Before ``run``, the command's output
path is checked by :func:`imanim_core.io.paths.preflight` (never onto an input, writable, file vs folder). User
errors (:class:`~imanim_core.errors.IMAnimError`) are printed without a traceback and exit with code 2; a closed
stdout pipe (``inspect FILE | head -1``) ends quietly (exit code 141, as SIGPIPE).
"""
from __future__ import annotations

import argparse
import importlib
import sys

# name -> (module, one-line help)
COMMANDS = {
    "inspect": ("imanim_core.commands.inspect_cmd", "say what a weights file is"),
    "encode-motion": ("imanim_core.commands.encode_motion", "encode a driving video into motion tokens"),
    "bench": ("imanim_core.commands.bench", "measure speed (bench encoder|retargeter|train-cost|real-size)"),
    "train": ("imanim_core.train.cli", "train stage1|stage2|stage3|vae"),
    "baseline": ("imanim_core.commands.baseline", "train|install the explicit skeleton baseline"),
    "demo": ("imanim_core.commands.demo", "animate a puppet with the embedded model"),
    "animate": ("imanim_core.commands.animate", "animate an identity image with a driving video"),
    "eval": ("imanim_core.commands.eval_cmd", "held-out ground-truth benchmark"),
    "make-puppet-data": ("imanim_core.commands.make_puppet_data",
                         "write a puppet-world data set in the video-folder layout"),
}


def _available():
    out = {}
    for name, (mod, help_) in COMMANDS.items():
        if importlib.util.find_spec(mod) is not None:
            out[name] = (mod, help_)
    return out


def main(argv=None) -> int:
    from .errors import IMAnimError

    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(prog="python -m imanim_core", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    cmds = _available()
    chosen = next((a for a in argv if not a.startswith("-")), None)
    for name, (mod, help_) in cmds.items():
        p = sub.add_parser(name, help=help_)
        if name == chosen:  # import only the module of the command being run
            importlib.import_module(mod).add_arguments(p)
            p.set_defaults(_module=mod)
    args = parser.parse_args(argv)
    if not getattr(args, "_module", None):
        parser.print_help()
        return 0 if not argv else 2
    created = None
    try:
        from .io.paths import preflight, remove_empty

        # output paths first: refused in the first second, before torch, models or inputs are loaded
        created = preflight(args.command, args)
        rc = int(importlib.import_module(args._module).run(args) or 0)
        sys.stdout.flush()  # inside the try: a closed pipe (`... | head -1`) is handled below
    except IMAnimError as e:
        print(f"error: {e}", file=sys.stderr)
        rc = 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        rc = 130
    except BrokenPipeError:
        if not _stdout_closed():
            raise  # another pipe (e.g. to ffmpeg) broke: a real error
        _silence_stdout()  # the reader of stdout went away: stop quietly, as a Unix tool killed by SIGPIPE
        rc = 141
    except BaseException:
        if created:
            remove_empty(created)
        raise
    if rc != 0 and created:
        remove_empty(created)  # a failed run leaves no empty run folders behind
    return rc


def _stdout_closed() -> bool:
    """True when stdout is a pipe whose reading end has been closed."""
    import select

    try:
        poller = select.poll()
        poller.register(sys.stdout.fileno(), select.POLLOUT)
        return any(ev & (select.POLLERR | select.POLLHUP) for _, ev in poller.poll(0))
    except (OSError, ValueError, AttributeError):
        return False


def _silence_stdout() -> None:
    """Point stdout at /dev/null so the interpreter's final flush does not print a BrokenPipeError."""
    import os

    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError, AttributeError):
        pass
