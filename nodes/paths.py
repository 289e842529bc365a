"""Model folders of the node pack, registered with ComfyUI's ``folder_paths``.

- ``im_animation``: IM-Animation bundles and the released motion encoder. Default ``models/im_animation``;
  ``extra_model_paths.yaml`` entries with the key ``im_animation`` are honoured (ComfyUI loads that file before
  custom nodes, and we only add to what is there).
- ``im_animation_motion``: motion-token files (Save Motion Tokens writes to ``output/im_animation_motion``;
  Load Motion Tokens lists that folder and ``input/im_animation_motion``).
- The embedded tiny model (``imanim_core/weights/{diffusion_models,vae,im_animation}``) is added to the
  ``diffusion_models``, ``vae`` and ``im_animation`` folders, so it appears in the stock *Load Diffusion Model*
  and *Load VAE* lists and in *Load IM-Animation Models* without copying any file.
"""
from __future__ import annotations

import os

import folder_paths

MODELS_KEY = "im_animation"
MOTION_KEY = "im_animation_motion"
MOTION_SUBFOLDER = "im_animation_motion"
_EXTS = {".safetensors"}

EMBEDDED_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "imanim_core", "weights")


def _ensure_folder(key: str, default_path: str, exts=_EXTS) -> None:
    """Register ``key`` with ``default_path`` first, keeping paths added by extra_model_paths.yaml."""
    entry = folder_paths.folder_names_and_paths.get(key)
    if entry is None:
        folder_paths.folder_names_and_paths[key] = ([default_path], set(exts))
        return
    paths, old_exts = entry
    if default_path not in paths:
        paths.insert(0, default_path)
    merged = set(old_exts) | set(exts) if old_exts else set(exts)
    folder_paths.folder_names_and_paths[key] = (paths, merged)


def register_model_folders() -> None:
    """Idempotent: safe to call at import and again before listing files."""
    _ensure_folder(MODELS_KEY, os.path.join(folder_paths.models_dir, "im_animation"))
    for sub, key in (("diffusion_models", "diffusion_models"), ("vae", "vae"), ("im_animation", MODELS_KEY)):
        folder_paths.add_model_folder_path(key, os.path.join(EMBEDDED_DIR, sub))
    register_motion_folders()


def motion_output_dir() -> str:
    return os.path.join(folder_paths.get_output_directory(), MOTION_SUBFOLDER)


def register_motion_folders() -> None:
    """The motion-token folders follow the current input/output directories (they may be set after import)."""
    _ensure_folder(MOTION_KEY, os.path.join(folder_paths.get_input_directory(), MOTION_SUBFOLDER))
    folder_paths.add_model_folder_path(MOTION_KEY, motion_output_dir())


def list_files(key: str) -> list:
    register_model_folders()
    try:
        return folder_paths.get_filename_list(key)
    except Exception:  # noqa: BLE001 - an unreadable folder must not break /object_info
        return []
