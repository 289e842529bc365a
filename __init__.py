"""ComfyUI entry point for the IM-Animation node pack (V3 schema).

Importing this file without ComfyUI (pytest, plain Python) is safe: the node classes are only built when
ComfyUI calls :func:`comfy_entrypoint`. Inside ComfyUI, importing it registers the model folders
(``models/im_animation`` and the embedded tiny model's folders) with ``folder_paths``.
"""
import importlib.util
import logging
import os
import sys

_HERE = os.path.dirname(os.path.realpath(__file__))

try:  # ComfyUI present
    from comfy_api.latest import ComfyExtension  # noqa: F401
    import folder_paths  # noqa: F401
    _HAVE_COMFY = True
except Exception:  # noqa: BLE001 - any import problem means "not inside ComfyUI"
    _HAVE_COMFY = False


def _ensure_imanim_core() -> None:
    """Make ``imanim_core`` (shipped next to this file) importable when the pack was not pip-installed.

    Appended (not prepended) to sys.path so this folder's ``nodes`` package never shadows ComfyUI's ``nodes``.
    """
    try:
        spec = importlib.util.find_spec("imanim_core")
    except (ImportError, ValueError):
        spec = None
    if spec is None:
        sys.path.append(_HERE)
    elif spec.origin and os.path.dirname(os.path.dirname(os.path.realpath(spec.origin))) != _HERE:
        logging.warning("IM-Animation: using imanim_core from %s, not the copy next to the node pack (%s)",
                        os.path.dirname(spec.origin), _HERE)


if _HAVE_COMFY:
    _ensure_imanim_core()
    from .nodes.paths import register_model_folders as _register

    _register()

    async def comfy_entrypoint():
        from .nodes import IMAnimationExtension

        return IMAnimationExtension()

WEB_DIRECTORY = None
