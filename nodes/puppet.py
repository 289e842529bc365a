"""Puppet Example: a built-in identity image and a driving video of a different body (no files needed)."""
from __future__ import annotations

import torch

from comfy_api.latest import io

from imanim_core.images import GRID_PX

from .common import CATEGORY, progress


def _families() -> list:
    try:
        from imanim_core.data.puppet import FAMILIES

        return ["any"] + list(FAMILIES)
    except Exception:  # noqa: BLE001 - keep /object_info working even if the puppet module is broken
        return ["any"]


def _to_image(frames) -> torch.Tensor:
    return torch.from_numpy(frames).float().div_(255.0).contiguous()


class IMAnimationPuppetExample(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="IMAnimationPuppetExample",
            display_name="IM-Animation Puppet Example",
            category=CATEGORY,
            description="Renders a synthetic example from the puppet world: a character (identity image) and a "
                        "driving video of a DIFFERENT body (other proportions and looks), deterministic by seed. "
                        "Also gives the exact ground truth (the character doing the driver's motion), so you can "
                        "try the pack with no files and see how much of the driver's shape leaks.",
            inputs=[
                io.Int.Input("seed", default=0, min=0, max=0xFFFFFFFF, control_after_generate=True,
                             tooltip="Picks the two bodies, their looks and the motion."),
                io.Int.Input("frames", default=17, min=1, max=1024,
                             tooltip="Driving video length in frames (4n+1 needs no padding: 9, 17, 33, 81...)."),
                io.Int.Input("width", default=128, min=GRID_PX, max=2048, step=GRID_PX,
                             tooltip="Frame width in px (a multiple of 16; the embedded tiny model works at 128)."),
                io.Int.Input("height", default=128, min=GRID_PX, max=2048, step=GRID_PX,
                             tooltip="Frame height in px (a multiple of 16; the embedded tiny model works at 128)."),
                io.Combo.Input("motion", options=_families(), default="any",
                               tooltip="Motion family of the driver (any = picked by the seed)."),
                io.Float.Input("fps", default=16.0, min=1.0, max=120.0, step=1.0,
                               tooltip="Frame rate of the driving motion (Wan 2.1 works at 16 fps)."),
            ],
            outputs=[
                io.Image.Output(display_name="identity", tooltip="The character image [1,H,W,3]."),
                io.Image.Output(display_name="driving", tooltip="The driving video [T,H,W,3] (another body)."),
                io.Image.Output(display_name="ground_truth",
                                tooltip="The character doing the driver's motion [T,H,W,3] (exact target)."),
                io.Float.Output(display_name="fps", tooltip="Frame rate of the driving video."),
            ],
        )

    @classmethod
    def execute(cls, seed, frames, width, height, motion, fps) -> io.NodeOutput:
        from imanim_core.data.puppet import sample_pair

        bar, _ = progress(1)
        pair = sample_pair(int(seed), num_frames=int(frames), fps=float(fps), size=(int(height), int(width)),
                           cross_identity=True, family=None if motion == "any" else motion)
        bar.update_absolute(1, 1)
        return io.NodeOutput(_to_image(pair["identity"]["frames"]), _to_image(pair["driving"]["frames"]),
                             _to_image(pair["target"]["frames"]), float(fps))
