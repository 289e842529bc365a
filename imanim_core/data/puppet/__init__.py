"""The puppet world: 2D articulated characters, deterministic by seed, with exact cross-identity ground truth.

An **identity** (:class:`PuppetIdentity`) is a body — limb lengths, torso/limb widths, head size, overall size
(child-like, average, tall and thin, broad) — plus its look (skin, hair, clothes with a solid / striped /
two-tone shirt, a solid or gradient background with an optional floor). A **motion** (:class:`PuppetMotion`)
is a continuous function of time giving 12 joint angles and a root motion, from one of the procedural
families :data:`FAMILIES`. A 2D forward-kinematics rig turns (identity, angles, root) into the 20 joints of
:mod:`imanim_core.data.skeleton`, and the renderer draws the character with anti-aliased capsules, polygons
and ellipses (OpenCV, sub-pixel coordinates).

Because angles are independent of the body, ``render_clip(identity_B, motion_A)`` is the exact target of
cross-identity reenactment: B's body (B's bone lengths, B's look) doing A's joint angles. Feet are kept on the
ground (the pelvis height follows from the legs), and root motion is measured in the body's own units (sideways
drift in body heights, jumps in leg lengths), so B's jump is as high *for B* as A's was for A.

Conventions
- World units: an average adult is about 1.0 tall; world y points down and the ground is y = 0.
- Camera: one fixed camera per canvas size (:func:`camera_for`): the same number of pixels per world unit for
  every identity, so a child looks smaller than a tall adult, and all clips of one identity (its identity
  image, its own clips, the cross-identity targets) show it at the same size. The camera is sized so that every
  identity in every motion family stays inside the frame; a clip that would still leave it is shifted (and in
  the last resort shrunk; ``fit_scale < 1`` in the output says so — it does not happen with the built-in
  families).
- Angles (radians, :data:`ANGLE_NAMES`): torso lean and head tilt (+ = towards the image right); shoulder and
  hip *abduction* (+ = outwards, mirrored between the sides, 0 = limb hanging straight down); elbow (+ = the
  forearm keeps turning the way the upper arm is raised); knee (+ = the shin turns back towards the body's
  midline); ankle (+ = the toe turns further outwards). Right is the puppet's right = the image's left.
- Keypoints are pixels (x, y), pixel centres at integers, all 20 joints visible.

Entry points: :meth:`PuppetIdentity.sample`, :meth:`PuppetMotion.sample`, :func:`render_clip`,
:func:`render_pose`, :func:`sample_pair`, :class:`PuppetDataset`, :func:`bench_puppet`
(``python -m imanim_core.data.puppet --bench``), and ``--sheet out.png`` for a contact sheet to look at.

Layout: ``body.py`` (constants, :class:`PuppetIdentity`), ``motion.py`` (:class:`PuppetMotion`), ``render.py``
(forward kinematics, camera, :func:`render_pose`, :func:`render_clip`), ``dataset.py`` (:func:`sample_pair`,
:class:`PuppetDataset`), ``tools.py`` (bench, contact sheet, the command); every name is importable from here.
"""
from __future__ import annotations

from .body import (ANGLE_LIMITS_DEG, ANGLE_NAMES, BACKGROUNDS, BODY_TYPES, FAMILIES, FOOT_BASE_DEG, NUM_ANGLES,
                   PATTERNS, WORLD_EXTENT_H, WORLD_HALF_W, PuppetIdentity)
from .dataset import PuppetDataset, sample_pair
from .motion import PuppetMotion
from .render import Camera, camera_for, clip_times, forward_kinematics, render_clip, render_pose
from .tools import bench_puppet, contact_sheet, main

__all__ = ["FAMILIES", "ANGLE_NAMES", "NUM_ANGLES", "BODY_TYPES", "PATTERNS", "BACKGROUNDS", "ANGLE_LIMITS_DEG",
           "FOOT_BASE_DEG", "WORLD_EXTENT_H", "WORLD_HALF_W", "PuppetIdentity", "PuppetMotion", "Camera",
           "camera_for", "clip_times", "forward_kinematics", "render_pose", "render_clip", "sample_pair",
           "PuppetDataset", "bench_puppet", "contact_sheet", "main"]
