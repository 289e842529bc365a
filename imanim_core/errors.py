"""Errors that reach users. Every message names the input and what was expected.

`IMAnimError` subclasses `ValueError` so callers that only know Python's built-ins still catch it; the
ComfyUI nodes turn it into a node error and the CLI prints it without a traceback (exit code 2).
"""


class IMAnimError(ValueError):
    """A problem with what the user gave us (a file, a video, an option), explained in plain words."""


class CheckpointError(IMAnimError):
    """A weights file that is missing, unreadable, or not what the caller expected."""


class InputError(IMAnimError):
    """Images, videos, tensors or options that do not fit (wrong channels, empty, too small, ...)."""


class DataError(IMAnimError):
    """A training data folder with a problem (which file, what is wrong)."""
