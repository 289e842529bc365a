"""The embedded tiny IM-Animation model (DESIGN §6): where its three files live, and a clear error when they are not
there yet.

Layout (the sub-folders are the ComfyUI model folders the node pack registers, so the same files show up in the
stock *Load Diffusion Model* / *Load VAE* lists and in *Load IM-Animation Models*)::

    imanim_core/weights/diffusion_models/imanim_tiny_dit.safetensors   tiny Wan DiT, original Wan key layout
    imanim_core/weights/vae/imanim_tiny_vae.safetensors                 tiny video VAE, TAEHV layout, fp32 (Wan 2.1 latents)
    imanim_core/weights/im_animation/imanim_tiny.safetensors            IM-Animation bundle (all five parts)

The files are produced by the staged training on the puppet world (``python -m imanim_core train ...``); a
finished stage-3 run's ``export/`` folder is copied in with :func:`install_from_export`.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..errors import CheckpointError

WEIGHTS_DIR = Path(__file__).resolve().parent
DIT_FILE = WEIGHTS_DIR / "diffusion_models" / "imanim_tiny_dit.safetensors"
VAE_FILE = WEIGHTS_DIR / "vae" / "imanim_tiny_vae.safetensors"
BUNDLE_FILE = WEIGHTS_DIR / "im_animation" / "imanim_tiny.safetensors"
# the explicit-control (skeleton) baseline of the benchmark, when trained (see imanim_core.baselines)
SKELETON_BASELINE_DIR = WEIGHTS_DIR / "baselines" / "skeleton"

# How the embedded files are made (shown when they are missing). Training runs on the puppet world on a CPU.
TRAIN_COMMAND = (
    "python -m imanim_core train vae --out runs/vae && "
    "python -m imanim_core train stage1 --out runs/s1 && "
    "python -m imanim_core train stage2 --init runs/s1 --vae runs/vae --out runs/s2 && "
    "python -m imanim_core train stage3 --init runs/s2 --out runs/s3, then "
    "python -c \"from imanim_core.weights import install_from_export; install_from_export('runs/s3/export')\""
)


@dataclass(frozen=True)
class EmbeddedPaths:
    """The three files of the embedded tiny model."""

    dit: Path
    vae: Path
    bundle: Path

    def missing(self) -> list:
        return [p for p in (self.dit, self.vae, self.bundle) if not p.is_file()]

    def as_dict(self) -> dict:
        return {"dit": str(self.dit), "vae": str(self.vae), "bundle": str(self.bundle)}


def embedded_paths(check: bool = True) -> EmbeddedPaths:
    """Paths of the embedded DiT, VAE and bundle. With ``check`` (default) a missing file raises a
    :class:`CheckpointError` that names every missing file and the command that creates them."""
    paths = EmbeddedPaths(dit=DIT_FILE, vae=VAE_FILE, bundle=BUNDLE_FILE)
    if check:
        missing = paths.missing()
        if missing:
            raise CheckpointError(missing_message(missing))
    return paths


def missing_message(missing) -> str:
    names = ", ".join(repr(str(p)) for p in missing)
    return (f"the embedded tiny IM-Animation model is not there: missing {names}. Create it with: {TRAIN_COMMAND} "
            f"(or pass your own files with --bundle, --dit and --vae)")


def embedded_available() -> bool:
    return not embedded_paths(check=False).missing()


def resolve(path, which: str) -> Path:
    """``path`` when given (it must exist), else the embedded file for ``which`` in {'dit', 'vae', 'bundle'}."""
    if path:
        p = Path(path)
        if not p.is_file():
            what = {"dit": "Wan DiT", "vae": "Wan VAE", "bundle": "IM-Animation bundle"}[which]
            if p.is_dir():
                raise CheckpointError(f"--{which}: {str(p)!r} is a folder; expected the {what} file itself "
                                      f"(a .safetensors file)")
            raise CheckpointError(f"--{which}: the {what} file {str(p)!r} does not exist")
        return p
    p = getattr(embedded_paths(check=False), which)
    if not p.is_file():
        raise CheckpointError(missing_message([p]))
    return p


def _same_encoder(new, old) -> Path:
    """``new`` if its encoder tensors equal those of the VAE file ``old``, else a :class:`CheckpointError`."""
    from safetensors import safe_open

    new, old = Path(new), Path(old)
    if not new.is_file():
        raise CheckpointError(f"install_from_export: VAE file {str(new)!r} does not exist")
    with safe_open(str(new), "pt") as a, safe_open(str(old), "pt") as b:
        enc_a = sorted(k for k in a.keys() if k.startswith("encoder."))
        enc_b = sorted(k for k in b.keys() if k.startswith("encoder."))
        same = enc_a == enc_b and bool(enc_a) and all(
            a.get_tensor(k).float().equal(b.get_tensor(k).float()) for k in enc_a)
    if not same:
        raise CheckpointError(f"install_from_export: the encoder of {str(new)!r} differs from the one the DiT was "
                              f"trained with ({str(old)!r}); only a `train vae --decoder-only` run started from "
                              f"that VAE can replace it")
    return new


def install_from_export(export_dir, dest: EmbeddedPaths | None = None, dtype=None, vae=None) -> EmbeddedPaths:
    """Copy a finished stage-3 run's ``export/`` (``dit.safetensors``, ``vae.safetensors``, ``bundle.safetensors``)
    to the embedded locations (or ``dest``). Each file is written to a temp file and renamed into place.

    ``dtype`` (e.g. ``torch.float16``) re-saves the three files with their floating tensors cast — the embedded
    model ships in fp16 to stay small; both hosts load it and compute in fp32. ``vae``: a VAE file (or run
    directory) to install instead of the export's copy — the output of ``train vae --decoder-only`` started from
    that copy. Its encoder must equal the export's exactly (the DiT was trained on that latent space), else
    :class:`CheckpointError`."""
    src = Path(export_dir)
    files = {"dit": src / "dit.safetensors", "vae": src / "vae.safetensors", "bundle": src / "bundle.safetensors"}
    missing = [str(p) for p in files.values() if not p.is_file()]
    if missing:
        raise CheckpointError(f"install_from_export: {str(src)!r} is not a stage-3 export folder (missing "
                              f"{missing})")
    if vae is not None:
        from ..io.paths import run_file

        files["vae"] = _same_encoder(run_file(vae, "vae.safetensors"), files["vae"])
    from ..io.atomic import copy_file

    dest = dest or embedded_paths(check=False)
    if dtype is None:
        for k, p in files.items():
            copy_file(p, getattr(dest, k))
        return dest
    from ..backbone.wan import load_dit, load_vae, save_dit, save_vae
    from ..models.bundle import load_bundle, save_bundle

    for k in ("dit", "vae", "bundle"):
        getattr(dest, k).parent.mkdir(parents=True, exist_ok=True)
    save_dit(load_dit(files["dit"]), dest.dit, dtype=dtype)
    save_vae(load_vae(files["vae"]), dest.vae, dtype=dtype)
    bundle = load_bundle(files["bundle"])
    save_bundle(bundle, dest.bundle, metadata=dict(getattr(bundle, "metadata", None) or {}), dtype=dtype)
    return dest
