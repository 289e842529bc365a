"""ComfyUI nodes of IM-Animation (V3 schema). Glue only: the models and maths live in ``imanim_core``."""
from __future__ import annotations

from comfy_api.latest import ComfyExtension, io

from .loader import IMAnimationLoadModels
from .motion import IMAnimationEncodeMotion, IMAnimationLoadMotionTokens, IMAnimationSaveMotionTokens
from .paths import register_model_folders
from .puppet import IMAnimationPuppetExample
from .retarget import IMAnimationRetarget
from .sampler import IMAnimationSampler

NODES = [
    IMAnimationLoadModels,
    IMAnimationEncodeMotion,
    IMAnimationRetarget,
    IMAnimationSampler,
    IMAnimationSaveMotionTokens,
    IMAnimationLoadMotionTokens,
    IMAnimationPuppetExample,
]


class IMAnimationExtension(ComfyExtension):
    async def on_load(self) -> None:
        register_model_folders()

    async def get_node_list(self) -> list[type[io.ComfyNode]]:
        return list(NODES)


__all__ = ["IMAnimationExtension", "NODES"]
