"""Wan 2.1 backbone through diffusers: configs, original <-> diffusers keys, load/save, latents, flow matching.

- ``convert``  — the one place that knows Wan's original key layout (pure-Python tables, no torch/diffusers).
- ``latents``  — the Wan 2.1 latent mean/std (the only copy), ``normalize`` / ``denormalize``.
- ``wan``      — shipped configs, ``build_dit`` / ``build_vae``, ``load_*`` / ``save_*`` (original layout),
  ``vae_encode`` / ``vae_decode``.
- ``flow``     — flow matching (loss, one denoiser call) with a reference frame appended in time and the injector
  attached (the sampler is ``pipeline.sample_latents``).

Names are imported lazily so ``import imanim_core.backbone`` does not import diffusers.
"""
from __future__ import annotations

import importlib

_EXPORTS = {
    "convert": ("dit_original_to_diffusers", "dit_diffusers_to_original", "vae_original_to_diffusers",
                "vae_diffusers_to_original", "detect_wan_kind", "detect_wan_layout", "describe_wan"),
    "latents": ("LATENTS_MEAN", "LATENTS_STD", "normalize", "denormalize"),
    "wan": ("dit_config", "vae_config", "build_dit", "build_vae", "load_dit", "save_dit", "load_vae", "save_vae",
            "vae_encode", "vae_decode", "inspect_wan_file", "DIT_PRESETS", "VAE_PRESETS"),
    "flow": ("flow_matching_loss", "denoise_once", "zero_context", "shift_sigma", "sample_sigmas"),
}
_WHERE = {name: mod for mod, names in _EXPORTS.items() for name in names}

__all__ = sorted(_WHERE)


def __getattr__(name):
    mod = _WHERE.get(name)
    if mod is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{mod}"), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(__all__))
