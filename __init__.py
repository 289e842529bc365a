"""ComfyUI entry point for the IM-Animation node pack (V3 schema).

Importing this file without ComfyUI (pytest, plain Python) is safe: the node classes are only built when
ComfyUI calls :func:`comfy_entrypoint`.
"""
try:  # ComfyUI present
    from comfy_api.latest import ComfyExtension  # noqa: F401
    _HAVE_COMFY = True
except Exception:  # noqa: BLE001 - any import problem means "not inside ComfyUI"
    _HAVE_COMFY = False

if _HAVE_COMFY:
    async def comfy_entrypoint():
        from .nodes import IMAnimationExtension

        return IMAnimationExtension()

WEB_DIRECTORY = None
