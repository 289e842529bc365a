"""Training and evaluation data: the 20-joint skeleton, heatmaps, the synthetic puppet world, real video folders.

- :mod:`.skeleton` — joint order, bones, colours, OpenPose/DWPose JSON readers and writer, ``draw_skeleton``.
- :mod:`.heatmaps` — the one heatmap renderer.
- :mod:`.puppet` — deterministic 2D puppets with exact cross-identity ground truth; ``PuppetDataset``.
- :mod:`.video_folder` — the on-disk layout of real data, its validator and ``VideoFolderDataset``.

The names below are imported lazily (``from imanim_core.data import render_clip`` loads only what it needs).
"""
from __future__ import annotations

import importlib

_EXPORTS = {
    "heatmaps": ("render_heatmaps", "heatmap_argmax", "heatmaps_to_image"),
    "skeleton": ("JOINT_NAMES", "JOINT_INDEX", "BONES", "LIMB_BONES", "FLIP_PERMUTATION", "JOINT_COLORS",
                 "BONE_COLORS", "keypoints_from_openpose", "keypoints_to_openpose", "convert_keypoints",
                 "flip_keypoints", "bone_lengths", "bone_angles", "angle_difference", "draw_skeleton"),
    "puppet": ("ANGLE_NAMES", "FAMILIES", "BODY_TYPES", "PuppetIdentity", "PuppetMotion", "PuppetDataset",
               "render_clip", "render_pose", "forward_kinematics", "camera_for", "sample_pair", "bench_puppet"),
    "video_folder": ("Augment", "VideoFolderDataset", "VideoFolderReport", "ClipInfo", "validate_video_folder",
                     "write_puppet_video_folder"),
}
_WHERE = {name: mod for mod, names in _EXPORTS.items() for name in names}
__all__ = sorted(_WHERE)


def __getattr__(name: str):
    mod = _WHERE.get(name)
    if mod is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{mod}"), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(__all__))
