"""Atomic file output: the one place that writes a file next to its destination and renames it into place, so
a crash or Ctrl-C never leaves a half-written file under the final name."""
from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterator


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_output(path, suffix: str = "") -> Iterator[Path]:
    """Yield a temporary path in ``path``'s folder; on success it replaces ``path`` (with the usual file mode,
    not mkstemp's owner-only one), on any error it is removed. ``suffix`` keeps an extension tools need
    (e.g. ``.mp4`` for ffmpeg)."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{p.name}.", suffix=".tmp" + suffix, dir=str(p.parent))
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, p)
    except BaseException:
        with contextlib.suppress(OSError):
            os.remove(tmp)
        raise


def save_safetensors(tensors: dict, path, metadata: dict | None = None) -> Path:
    """``safetensors.torch.save_file`` through :func:`atomic_output`."""
    from safetensors.torch import save_file

    with atomic_output(path) as tmp:
        save_file(tensors, str(tmp), metadata=metadata)
    return Path(path)


def copy_file(src, dst) -> Path:
    """Copy ``src`` to ``dst`` through :func:`atomic_output`."""
    with atomic_output(dst) as tmp:
        shutil.copyfile(src, tmp)
    return Path(dst)
