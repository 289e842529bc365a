"""Sampling defaults and option choices shared by the pipeline, the CLI and the nodes.

A module without imports, so that a command's options can be declared (and its output path refused, see
``io/paths.py``) before torch is imported. ``imanim_core.pipeline`` re-exports every name.
"""

DEFAULT_STEPS = 20
DEFAULT_SHIFT = 5.0  # the Sampler node's default, Wan 2.1 T2V's sample_shift, the training noise shift
DEFAULT_WINDOW = 81  # the node's default (Wan 2.1 is trained on 81 frames)
DEFAULT_OVERLAP = 16
DEFAULT_SEED = 0
FIT_MODES = ("pad", "crop", "stretch")
OUTPUT_MODES = ("crop", "grid", "identity")
