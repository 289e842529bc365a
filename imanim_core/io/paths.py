"""Output paths of the CLI, checked before any work: the one place that decides where a command may write.

Rules (docs/BAD_INPUTS.md lists what the tests hold them to):

- **No input is ever overwritten.** An output that resolves (``..``, symlinks and hard links included) to an
  input file (``--driving``, ``--identity``, ``--checkpoint``, ``--bundle``, ``--dit``, ``--vae``; for ``train``
  also ``--init``, ``--config`` and ``--data``) is refused. For a folder output (``demo``, ``train``) every file
  the command writes inside it counts (``result.mp4`` …, ``export/bundle.safetensors`` …).
- **Output paths are checked first.** A file output that is a folder, a folder output that is a file, a parent
  that is a file, a folder that cannot be written: one line naming the path, before any model is loaded (the
  CLI checks in :func:`preflight` before the command module imports torch), and nothing is created.
- ``train``: a ``--data`` folder that does not exist is refused here too, an ``--out`` inside ``--data`` as well
  (``--dry-run`` writes nothing but runs the same checks), and the run folders a failed run created but left empty
  are removed again (:func:`new_dirs` / :func:`remove_empty`, called by ``cli.main``).

Everything raises :class:`~imanim_core.errors.InputError` (exit code 2). No torch import.

:func:`run_file` is the one resolver of a training run's folder to the file it exported (``--init``, ``--vae``,
``--dit`` given as a run folder), used here and by ``train``.
"""
from __future__ import annotations

import errno
import os
from pathlib import Path
from typing import Iterable, Mapping, Optional

from ..errors import InputError

# command -> how its output (args.out) is checked. kind: "file" or "dir"; inputs: the options naming inputs;
# files: what a folder output will hold (relative paths); example: a good file name for the message; extra: side
# files written next to a file output; label: how the message names the output (default --out). A command that
# writes files adds its row here. (train resolves its inputs and --out through its config: _train_plan.)
DEMO_FILES = ("result.mp4", "side_by_side.mp4", "driving.mp4", "identity.png", "strip.png")
TRAIN_FILES = ("log.csv", "summary.json", "export/bundle.safetensors", "export/dit.safetensors",
               "export/vae.safetensors", "export/manifest.json")
TRAIN_DIRS = ("checkpoints", "export")  # created by a training run before its first step
SPECS = {
    "animate": dict(kind="file", inputs=("identity", "driving", "bundle", "dit", "vae"), example="out.mp4"),
    "encode-motion": dict(kind="file", inputs=("checkpoint", "driving"), example="tokens.safetensors",
                          extra=(".partial",)),
    "demo": dict(kind="dir", inputs=("bundle", "dit", "vae"), files=DEMO_FILES),
    "train": dict(kind="dir", inputs=("data", "init", "vae", "dit", "config"), files=TRAIN_FILES),
    "eval": dict(kind="dir", inputs=("bundle", "dit", "vae", "skeleton"),
                 files=("metrics.json", "metrics.md", "gates.md", "metrics.png", "leakage.png", "examples.png")),
    "make-puppet-data": dict(kind="dir", inputs=(), files=(), label="OUT"),
}


def run_file(path, name: str) -> Path:
    """The file ``name`` a path stands for: ``path`` itself when it is not a folder; in a folder (a training run's
    or its export folder) ``path/export/<name>``, else ``path/<name>``, the first that exists
    (``path/export/<name>`` when neither does, for the caller's message)."""
    p = Path(path)
    if not p.is_dir():
        return p
    for cand in (p / "export" / name, p / name):
        if cand.is_file():
            return cand
    return p / "export" / name


def _abs(p) -> str:
    return os.path.abspath(os.path.expanduser(str(p)))


def resolved(p) -> str:
    """``p`` with ``~``, ``..`` and every symlink resolved (the path need not exist)."""
    return os.path.realpath(_abs(p))


def same_file(a, b) -> bool:
    """``a`` and ``b`` name the same file or folder: same resolved path, or (hard links) the same inode."""
    if resolved(a) == resolved(b):
        return True
    try:
        return os.path.samefile(_abs(a), _abs(b))
    except OSError:
        return False


def _inside(child, parent) -> bool:
    c, p = resolved(child), resolved(parent)
    return c == p or c.startswith(p.rstrip(os.sep) + os.sep)


def input_conflict(out, inputs: Mapping[str, object]) -> Optional[str]:
    """The first input that ``out`` would overwrite, described (``"the --identity input 'a.png'"``), or None.
    ``inputs``: {option: path or None}."""
    for flag, inp in inputs.items():
        if inp is None or str(inp) == "":
            continue
        if same_file(out, inp):
            if _abs(out) == _abs(inp):
                how = ""
            elif resolved(out) == resolved(inp):
                how = f" (both resolve to {resolved(inp)!r})"
            else:
                how = " (hard links to one file)"
            return f"the {flag} input {str(inp)!r}{how}"
    return None


def refuse_inputs(out, inputs: Mapping[str, object], label: str = "--out") -> None:
    """Raise when the output ``out`` is one of ``inputs`` ({option: path or None})."""
    hit = input_conflict(out, inputs)
    if hit:
        raise InputError(f"{label} {str(out)!r} is {hit}; writing there would destroy it. Choose another output name")


def _nearest_existing(p: Path) -> Path:
    q = Path(_abs(p))
    while not os.path.lexists(q) and q != q.parent:
        q = q.parent
    return q


def check_writable_folder(folder, label: str, out) -> None:
    """``folder`` (existing or to be created) can take new files: its nearest existing ancestor is a folder we
    may write in. Probes with one empty file that is removed at once."""
    anc = _nearest_existing(Path(folder))
    if not anc.is_dir():
        raise InputError(f"{label} {str(out)!r}: {str(anc)!r} is a file, not a folder; choose another output path")
    if not os.access(anc, os.W_OK | os.X_OK):
        raise InputError(f"{label} {str(out)!r}: cannot write in the folder {str(anc)!r} (permission denied)")
    probe = anc / f".imanim-write-probe-{os.getpid()}"
    try:
        fd = os.open(probe, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
    except FileExistsError:
        return
    except OSError as e:
        reason = os.strerror(e.errno) if e.errno else str(e)
        if e.errno == errno.EROFS:
            reason = "read-only file system"
        raise InputError(f"{label} {str(out)!r}: cannot write in the folder {str(anc)!r} ({reason})") from None
    os.close(fd)
    try:
        os.unlink(probe)
    except OSError:
        pass


def check_output_file(out, label: str = "--out", inputs: Optional[Mapping[str, object]] = None,
                      example: str = "out.mp4", extra: Iterable[str] = ()) -> Path:
    """A file the command will write: not a folder, not an input, in a folder that exists (or can be created)
    and is writable. ``extra``: suffixes of side files written next to it (``.partial``)."""
    if out is None or str(out).strip() == "":
        raise InputError(f"{label}: expected a file name such as {example}")
    s = str(out)
    p = Path(os.path.expanduser(s))
    if p.is_dir() or s.endswith(("/", os.sep)):
        raise InputError(f"{label} {s!r} is a folder; expected a file name such as {example}")
    refuse_inputs(s, inputs or {}, label)
    for suf in extra:
        hit = input_conflict(s + suf, inputs or {})
        if hit:
            raise InputError(f"{label} {s!r}: its side file {s + suf!r} is {hit}; choose another output name")
    check_writable_folder(p.parent, label, s)
    return p


def check_output_dir(out, label: str = "--out", inputs: Optional[Mapping[str, object]] = None,
                     files: Iterable[str] = (), data_inputs: Iterable[str] = ()) -> Path:
    """A folder the command will fill with ``files``: not an existing file, not an input, none of its ``files``
    an input, not inside a ``data_inputs`` folder, writable."""
    if out is None or str(out).strip() == "":
        raise InputError(f"{label}: expected a folder name")
    s = str(out)
    p = Path(os.path.expanduser(s))
    inputs = dict(inputs or {})
    for flag in data_inputs:
        d = inputs.get(flag)
        if d and _inside(p, d):
            raise InputError(f"{label} {s!r} is inside the {flag} folder {str(d)!r}; the run's files would mix with "
                             f"the data. Choose an output folder outside it")
    refuse_inputs(s, inputs, label)
    if os.path.lexists(p) and not p.is_dir():
        listed = f" (it will hold {', '.join(list(files)[:3])}, ...)" if files else ""
        raise InputError(f"{label} {s!r} is a file; expected a folder{listed}")
    for f in files:
        hit = input_conflict(p / f, inputs)
        if hit:
            raise InputError(f"{label} {s!r}: writing {f} there would destroy {hit}; choose another output "
                             f"folder")
    check_writable_folder(p, label, s)
    return p


def _train_plan(args) -> tuple:
    """(out, {option: input path}) of a ``train`` command, with the config resolved as the command resolves it
    (preset -> --config -> flags)."""
    from ..train.cli import config_from_args

    cfg = config_from_args(args)
    inputs = {"--data": cfg.data, "--init": cfg.init, "--dit": cfg.dit, "--config": getattr(args, "config", None)}
    if cfg.vae and cfg.vae != "random":
        inputs["--vae"] = cfg.vae
    # a run folder given as --init / --vae stands for the files in it that the run reads
    for flag in ("--init", "--vae"):
        d = inputs.get(flag)
        if d and Path(d).is_dir():
            f = run_file(d, "bundle.safetensors" if flag == "--init" else "vae.safetensors")
            if f.is_file():
                inputs[f"{flag} file"] = str(f)
    return cfg.out, inputs


def preflight(command: str, args) -> Optional[list]:
    """Check the output of ``command`` before it runs (called by ``imanim_core.cli.main``). Returns the run
    folders a ``train`` command is about to create (for :func:`remove_empty` if it fails), else None."""
    spec = SPECS.get(command)
    if spec is None:
        return None
    if command == "train":
        out, inputs = _train_plan(args)
        data = inputs.get("--data")
        if data and not os.path.isdir(os.path.expanduser(str(data))):
            what = "is not a folder" if os.path.lexists(os.path.expanduser(str(data))) else "does not exist"
            raise InputError(f"--data {str(data)!r} {what}; expected a video folder (root/<clip>/video.mp4 or "
                             f"frames/, plus pose/)")
        if not out:
            return None
        p = check_output_dir(out, "--out", inputs, spec["files"], data_inputs=("--data",))
        # a dry run writes nothing, but says now what the real run would refuse
        return None if getattr(args, "dry_run", False) else new_dirs(p, TRAIN_DIRS)
    inputs = {f"--{k}": getattr(args, k, None) for k in spec["inputs"]}
    label = spec.get("label", "--out")
    if spec["kind"] == "file":
        check_output_file(getattr(args, "out", None), label, inputs, spec["example"], spec.get("extra", ()))
        return None
    check_output_dir(getattr(args, "out", None), label, inputs, spec["files"])
    return None


def new_dirs(root, subdirs: Iterable[str] = ()) -> list:
    """The folders among ``root`` and ``root/<subdir>`` that do not exist yet (deepest first)."""
    root = Path(os.path.expanduser(str(root)))
    cands = [root / s for s in subdirs] + [root]
    missing_parents = []
    q = root.parent
    while not os.path.lexists(q) and q != q.parent:  # parents a run would create as well
        missing_parents.append(q)
        q = q.parent
    return [c for c in cands if not os.path.lexists(c)] + missing_parents


def remove_empty(dirs: Iterable) -> None:
    """Remove those of ``dirs`` that exist and are empty (in order: give the deepest first)."""
    for d in dirs or ():
        try:
            os.rmdir(d)
        except OSError:
            pass


__all__ = ["SPECS", "run_file", "resolved", "same_file", "input_conflict", "refuse_inputs", "check_writable_folder",
           "check_output_file", "check_output_dir", "preflight", "new_dirs", "remove_empty"]
