"""Training and evaluation data: the 20-joint skeleton, heatmaps, the synthetic puppet world, real video folders.

- :mod:`.skeleton` — joint order, bones, colours, OpenPose/DWPose JSON readers and writer, ``draw_skeleton``.
- :mod:`.heatmaps` — the one heatmap renderer.
- :mod:`.puppet` — deterministic 2D puppets with exact cross-identity ground truth; ``PuppetDataset``.
- :mod:`.video_folder` — the on-disk layout of real data, its validator and ``VideoFolderDataset``.

The names below are imported lazily (``from imanim_core.data import render_clip`` loads only what it needs).
"""
from __future__ import annotations

from ..lazy import lazy_exports

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
__getattr__, __dir__, __all__ = lazy_exports(__name__, _EXPORTS)
