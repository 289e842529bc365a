"""The held-out cross-identity benchmark on the puppet world, its metrics and its report.

Benchmark (fixed, deterministic)
- Every case is a pair of puppet bodies: the **identity** B (the character image) and the **driver** A (the
  body in the driving video), a motion of A, and the ground truth = B doing A's motion (``render_clip(B,
  motion_A)``, exact: the puppet world's joint angles do not depend on the body). The identity image is B at
  a moment of a different motion of its own (as in training).
- Seeds: every identity and motion of the benchmark is sampled directly from seeds ``>= EVAL_SEED_BASE``
  (10,000,000): case k of the scan uses ``10,000,000 + 10 k + {0: identity, 1: driver, 2: driving motion,
  3: identity's own pose}``. The demo uses ``DEMO_SEED_BASE`` (30,000,000 + ...). Training never samples
  from these seeds by construction of the agreement "training uses seeds < 1,000,000"; note however that the
  puppet training stream (``PuppetDataset``) hashes (run seed, item index) into 32-bit item seeds and hashes
  those again into the identity/motion seeds, so its seeds are spread over the whole 32-bit range. The
  benchmark therefore *checks* disjointness: :func:`training_seed_overlap` regenerates the identity and motion
  seeds of the first ``items`` training items of a run seed (default: run seed 0, 100,000 items — more than any
  stage of the tiny preset draws) and reports any collision in ``metrics.json`` (``heldout_check``).
- Body-shape mismatch between A and B (:func:`body_mismatch`): the mean absolute log-ratio of the bodies'
  scale-free proportions (``PuppetIdentity.proportions()``: height, head, arm, leg, shoulders, hips, limb width,
  each relative to the torso) plus the log-ratio of their torso lengths (overall size; the camera is the same
  for every body). Levels: small < 0.10, medium 0.13-0.20, large >= 0.25 (the gaps keep levels apart; over
  random pairs the median is 0.16). Cases are taken in scan order until each level has ``per_level`` cases;
  driving motions cycle through the motion families.

Metrics (per case, averaged over frames; then averaged over the cases of a level)
- ``psnr`` / ``ssim``: whole frame vs the ground truth (``kornia.metrics.psnr`` per frame, capped at 100 dB for
  identical frames; ``kornia.metrics.ssim`` with an 11x11 window, mean of the map).
- ``psnr_char`` / ``ssim_char``: the character region = the ground-truth silhouette's bounding box in each
  frame, grown by 2 px (PSNR of that crop; the mean of the full-frame SSIM map inside the box).
- ``iou``: silhouette IoU against the ground-truth body. Silhouettes are found by background subtraction: the
  identity's background is known exactly in the puppet world (solid or gradient, optional floor); a pixel is
  foreground when any channel differs from it by more than ``FG_THRESHOLD`` (0.15 in [0, 1]). The result's
  silhouette is compared with the ground-truth frames' silhouette found the same way (so the extractor's own
  errors — anti-aliased edges, skin close to the background — cancel and the ground truth scores exactly 1);
  how well that extractor agrees with the puppet world's true body masks is reported once per run
  (``benchmark.silhouette_check``: ~0.94 mean IoU at 128x128, ~0.90 at 64x64).
- ``kp_err`` / ``kp_err_rel``: keypoints of the result measured with the bundle's own stage-1 pose reader
  (tokenizer -> motion decoder -> joint head heatmaps, peak refined by a 3x3 centroid), mean distance to the
  ground-truth keypoints in pixels and relative to the ground-truth torso length (neck to mid-hip). The
  ``ground_truth`` row gives the reader's own error on the true frames (the floor of this measure).
- Identity leakage (how much of the driver shows up):
  ``leak_bones`` — the result's bone lengths (11 bones: upper arms, forearms, thighs, shins, shoulder and hip
  width, torso; constant per body in the 2D rig; median over frames of the measured keypoints) in log space,
  projected on the driver-minus-identity direction: 0 = the identity's proportions, 1 = the driver's (pooled
  over the cases of a level: sum((r - i).(d - i)) / sum(|d - i|^2)). ``leak_height`` / ``leak_area`` — the same
  coefficient per frame on the log silhouette height and log silhouette area (result vs ground truth vs
  driver, all three silhouettes by the same background subtraction, each against its own known background).
  ``colour_leak`` — colour histograms (8x8x8 RGB bins) of the result inside the ground-truth mask
  vs the identity's and the driver's character pixels, Hellinger distances d_id and d_drv;
  ``d_id / (d_id + d_drv)``: 0 = the identity's colours, 1 = the driver's.

Methods: ``im_animation`` (the model), ``skeleton`` (explicit control: the driver's keypoints drawn as a skeleton
at the driver's proportions, through the same backbone trained with the same stage-3 recipe —
:mod:`imanim_core.baselines`; reported as not trained when its weights are absent), ``identity_still`` (the
identity image held still), and two references: ``vae_upper_bound`` (the ground truth through the VAE: the best
this VAE allows) and ``ground_truth`` (the truth itself: floors of the measures).

Layout: ``cases.py`` (seeds, levels, :func:`benchmark_cases`, :func:`render_case`), ``metrics.py`` (the measures,
:func:`case_metrics`, :func:`aggregate`), ``benchmark.py`` (:func:`run_benchmark`), ``report.py``
(:func:`write_report`); every name is importable from ``imanim_core.evaluation``.
"""
from __future__ import annotations

from . import metrics, report
from .benchmark import MethodFn, run_benchmark
from .cases import (DEMO_SEED_BASE, EVAL_SEED_BASE, LEVELS, MAX_SCAN, SEEDS_PER_CASE, TRAIN_SEED_LIMIT, EvalCase,
                    benchmark_cases, body_mismatch, identity_background, mismatch_level, render_case,
                    training_seed_overlap)
from .metrics import (BBOX_MARGIN, FG_THRESHOLD, HIGHER_IS_BETTER, HIST_BINS, LEAK_BONES, METRICS, POOLED, PSNR_CAP,
                      KeypointReader, aggregate, bone_lengths, case_metrics, colour_histogram, gt_silhouette,
                      hellinger, leak_terms, mask_boxes, mask_iou, psnr_frames, silhouette, square_to_frame,
                      ssim_frames, torso_length)
from .report import DEFINITIONS, markdown_report, write_plots, write_report

_subpixel_peaks = metrics._subpixel_peaks  # the tests use it
_fmt = report._fmt  # the eval command's table uses it

__all__ = ["EVAL_SEED_BASE", "TRAIN_SEED_LIMIT", "DEMO_SEED_BASE", "SEEDS_PER_CASE", "MAX_SCAN", "LEVELS",
           "FG_THRESHOLD", "PSNR_CAP", "BBOX_MARGIN", "HIST_BINS", "LEAK_BONES", "METRICS", "HIGHER_IS_BETTER",
           "POOLED", "DEFINITIONS", "EvalCase", "MethodFn", "body_mismatch", "mismatch_level", "benchmark_cases",
           "render_case", "identity_background", "training_seed_overlap", "psnr_frames", "ssim_frames", "mask_iou",
           "silhouette", "gt_silhouette", "mask_boxes", "colour_histogram", "hellinger", "bone_lengths",
           "torso_length", "leak_terms", "KeypointReader", "square_to_frame", "case_metrics", "aggregate",
           "run_benchmark", "markdown_report", "write_plots", "write_report"]
