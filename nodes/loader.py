"""Load IM-Animation Models."""
from __future__ import annotations

import os

import folder_paths
from comfy_api.latest import io, ui

from imanim_core.errors import CheckpointError
from imanim_core.weights import BUNDLE_FILE

from .common import CATEGORY, DEVICES, DTYPES, dtype_name, resolve_device, resolve_dtype
from .paths import MODELS_KEY, list_files
from .types import IMAnimationModels, LoadedModels

_PART_TEXT = {
    "tokenizer": "motion tokenizer",
    "motion_decoder": "motion decoder (heatmap preview of the driving pose)",
    "joint_head": "joint head (heatmap previews)",
    "retargeter": "retargeter",
    "injector": "injector",
}


def default_bundle(files: list):
    """The bundle dropdown's default: the embedded tiny model when listed (it always is, unless removed), else the
    first file."""
    return BUNDLE_FILE.name if BUNDLE_FILE.name in files else (files[0] if files else None)


def _config_line(part: str, cfg) -> str:
    c = cfg.to_dict()
    keys = {
        "tokenizer": ("image_size", "width", "layers", "num_latent_tokens", "token_dim", "codebook_size"),
        "motion_decoder": ("width", "layers", "grid", "joint_dim"),
        "joint_head": ("num_joints", "upsample"),
        "retargeter": ("width", "layers", "token_dim", "out_dim"),
        "injector": ("in_dim", "dit_dim"),
    }[part]
    return ", ".join(f"{k}={c[k]}" for k in keys if k in c)


def describe(name: str, bundle, device, dtype) -> str:
    from imanim_core.models.bundle import describe_bundle

    d = describe_bundle(bundle)
    src = {"released": "released IM-Animation motion encoder", "bundle": "IM-Animation bundle"}.get(
        d.get("source"), str(d.get("source")))
    lines = [f"{name}: {src} on {device} ({dtype_name(dtype)})"]
    for part, meta in d["parts"].items():
        lines.append(f"- {_PART_TEXT.get(part, part)}: {meta['params'] / 1e6:.2f}M params; "
                     f"{_config_line(part, getattr(bundle.config, part))}")
    can = ["Encode Motion Tokens"] if bundle.tokenizer is not None else []
    if bundle.retargeter is not None:
        can.append("Retarget to Identity")
    if bundle.injector is not None:
        can.append(f"IM-Animation Sampler (Wan DiT width {bundle.config.injector.dit_dim})")
    lines.append("usable for: " + (", ".join(can) if can else "nothing (no usable part)"))
    if bundle.retargeter is None or bundle.injector is None:
        lines.append("note: animating needs a bundle with a retargeter and an injector (trained with the stage "
                     "2/3 scripts); this file alone can only encode motion tokens")
    return "\n".join(lines)


class IMAnimationLoadModels(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        files = list_files(MODELS_KEY)
        return io.Schema(
            node_id="IMAnimationLoadModels",
            display_name="Load IM-Animation Models",
            category=CATEGORY,
            description="Loads an IM-Animation bundle (motion tokenizer, motion decoder, retargeter, injector) or the "
                        "released motion encoder from models/im_animation (extra_model_paths.yaml key "
                        "'im_animation'). The info output and the node text say which parts and configs were "
                        "loaded. The embedded tiny model is listed too.",
            inputs=[
                io.Combo.Input("bundle", options=files, default=default_bundle(files),
                               tooltip="Weights file in models/im_animation: an IM-Animation bundle (.safetensors) or "
                                       "the released motion_encoder_latest.safetensors (encoder only)."),
                io.Combo.Input("dtype", options=DTYPES, default="auto",
                               tooltip="Compute precision. auto = fp32 on the CPU, bf16 (or fp16) on a GPU."),
                io.Combo.Input("device", options=DEVICES, default="auto",
                               tooltip="Where the IM-Animation parts run. auto = ComfyUI's device (the GPU if any)."),
            ],
            outputs=[
                IMAnimationModels.Output(display_name="models", tooltip="The loaded IM-Animation parts."),
                io.String.Output(display_name="info", tooltip="What was loaded: parts, parameter counts, configs."),
            ],
        )

    @classmethod
    def validate_inputs(cls, bundle):
        if not bundle:
            return "bundle: no file selected; put an IM-Animation .safetensors file in models/im_animation"
        if folder_paths.get_full_path(MODELS_KEY, bundle) is None:
            return (f"bundle: {bundle!r} is not in the im_animation model folders "
                    f"{folder_paths.get_folder_paths(MODELS_KEY)}")
        return True

    @classmethod
    def fingerprint_inputs(cls, bundle, dtype, device):
        path = folder_paths.get_full_path(MODELS_KEY, bundle) if bundle else None
        return (bundle, dtype, device, os.path.getmtime(path) if path and os.path.exists(path) else None)

    @classmethod
    def execute(cls, bundle, dtype, device) -> io.NodeOutput:
        from imanim_core.models.bundle import load_bundle

        path = folder_paths.get_full_path(MODELS_KEY, bundle)
        if path is None or not os.path.isfile(path):
            raise CheckpointError(f"bundle: {bundle!r} was not found in the im_animation model folders "
                                  f"{folder_paths.get_folder_paths(MODELS_KEY)}")
        dev = resolve_device(device)
        dt = resolve_dtype(dtype, dev)
        b = load_bundle(path, device=dev, dtype=dt)
        info = describe(bundle, b, dev, dt)
        return io.NodeOutput(LoadedModels(bundle=b, name=bundle, device=dev, dtype=dt, info=info), info,
                             ui=ui.PreviewText(info))
