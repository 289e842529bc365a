"""Sampling defaults and option choices shared by the pipeline, the CLI and the nodes.

A module without imports, so that a command's options can be declared (and its output path refused, see
``io/paths.py``) before torch is imported. ``imanim_core.pipeline`` re-exports every name.
"""

DEFAULT_STEPS = 20
DEFAULT_SHIFT = 5.0  # the Sampler node's default, Wan 2.1 T2V's sample_shift, the training noise shift
DEFAULT_WINDOW = 81  # the node's default (Wan 2.1 is trained on 81 frames)
DEFAULT_OVERLAP = 16
# the tiny model's windows: the embedded tiny DiT was trained on 9-frame clips (3 latent frames) and does best on
# windows of that length. v3 weights: on the demo's 24 frames, windows of 9 overlapping by 4 gave silhouette IoU 0.434
# and PSNR 23.5 dB against 0.336 and 21.3 dB for one 24-frame window; on `eval`'s 17-frame clips (2 cases per level,
# largest mismatch) IoU 0.282 and 22.7 dB against 0.229 and 21.6 dB for one 17-frame window.
TINY_WINDOW = 9
TINY_OVERLAP = 4
TINY_DIT_WIDTH = 512  # a DiT at most this wide is a tiny one (the embedded model is 256 wide)


def default_windows(dit_width=None) -> tuple:
    """``(window, overlap)`` when none is given: the tiny model's (9, 4) for a tiny DiT (``dit_width`` <=
    ``TINY_DIT_WIDTH`` or unknown), else Wan 2.1's (81, 16)."""
    if dit_width is None or int(dit_width) <= TINY_DIT_WIDTH:
        return TINY_WINDOW, TINY_OVERLAP
    return DEFAULT_WINDOW, DEFAULT_OVERLAP


DEFAULT_SEED = 0
FIT_MODES = ("pad", "crop", "stretch")
OUTPUT_MODES = ("crop", "grid", "identity")
