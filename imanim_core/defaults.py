"""Sampling defaults and option choices shared by the pipeline, the CLI and the nodes.

A module without imports, so that a command's options can be declared (and its output path refused, see
``io/paths.py``) before torch is imported. ``imanim_core.pipeline`` re-exports every name.
"""

DEFAULT_STEPS = 20
DEFAULT_SHIFT = 5.0  # the Sampler node's default, Wan 2.1 T2V's sample_shift, the training noise shift
DEFAULT_WINDOW = 81  # the node's default (Wan 2.1 is trained on 81 frames)
DEFAULT_OVERLAP = 16
# the demo's windows: the embedded tiny model was trained on 9-frame clips (3 latent frames); on the demo's 24
# frames, windows of 9 overlapping by 4 gave silhouette IoU 0.434 and PSNR 23.5 dB against 0.336 and 21.3 dB for one
# 24-frame window (v3 weights)
TINY_WINDOW = 9
TINY_OVERLAP = 4
DEFAULT_SEED = 0
FIT_MODES = ("pad", "crop", "stretch")
OUTPUT_MODES = ("crop", "grid", "identity")
