"""IM-Animation core: implicit 1D motion tokens, mask-token retargeting and injection into Wan.

Independent of ComfyUI. See docs/ARCHITECTURE.md for the interfaces.
"""
__version__ = "0.1.0"
