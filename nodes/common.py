"""Glue shared by the nodes: devices and dtypes, input checks with clear messages, progress, previews."""
from __future__ import annotations

import torch
import torch.nn.functional as F

import comfy.model_management as mm
import comfy.utils

from imanim_core.checks import MIN_IMAGE_SIDE, image_batch, t2v_channels_problem
from imanim_core.errors import InputError

CATEGORY = "IM-Animation"

DTYPES = ["auto", "fp32", "bf16", "fp16"]
DEVICES = ["auto", "cpu", "gpu"]


# --------------------------------------------------------------------------------------- device / dtype
def resolve_device(choice: str) -> torch.device:
    if choice == "cpu":
        return torch.device("cpu")
    dev = mm.get_torch_device()
    if choice == "gpu" and dev.type == "cpu":
        raise InputError("device: 'gpu' was chosen but ComfyUI runs on the CPU (started with --cpu, or no GPU was "
                         "found); choose 'auto' or 'cpu'")
    return dev


def resolve_dtype(choice: str, device: torch.device) -> torch.dtype:
    if choice == "fp32":
        return torch.float32
    if choice == "bf16":
        return torch.bfloat16
    if choice == "fp16":
        return torch.float16
    if choice != "auto":
        raise InputError(f"dtype: expected one of {DTYPES}, got {choice!r}")
    if device.type == "cpu":
        return torch.float32
    return torch.bfloat16 if mm.should_use_bf16(device) else torch.float16


def dtype_name(dt: torch.dtype) -> str:
    return str(dt).replace("torch.", "")


def check_interrupt() -> None:
    mm.throw_exception_if_processing_interrupted()


def progress(total: int):
    """A ComfyUI progress bar plus an ``update(done)`` function for imanim_core's ``progress(done, total)``."""
    bar = comfy.utils.ProgressBar(max(1, int(total)))

    def update(done, tot=None):
        bar.update_absolute(int(done), int(tot if tot is not None else total))

    return bar, update


# -------------------------------------------------------------------------------------------- images
def check_image(image, name: str, min_side: int = MIN_IMAGE_SIDE) -> torch.Tensor:
    """A ComfyUI IMAGE [B,H,W,3|4] -> float RGB [B,H,W,3]: RGBA composited over black (as the CLI does for an
    RGBA file), NaN / Inf and images under ``min_side`` px refused; messages name ``name``
    (``imanim_core.checks.image_batch``, shared with the CLI)."""
    return image_batch(image, name, min_side)


def overlay(base: torch.Tensor, heat: torch.Tensor, alpha: float = 0.5) -> torch.Tensor:
    """Heatmap colours [B,h,w,3] (resized to base) over images [B,H,W,3], for previews."""
    if heat.shape[1:3] != base.shape[1:3]:
        heat = F.interpolate(heat.movedim(-1, 1), size=tuple(base.shape[1:3]), mode="bilinear",
                             align_corners=False).movedim(1, -1)
    return (base * alpha + heat.clamp(0, 1)).clamp(0, 1)


# --------------------------------------------------------------------------------------- Wan checks
def check_wan_vae(vae, name: str = "vae") -> None:
    """A VAE of the Wan 2.1 latent space (16 channels, 4x temporal / 8x spatial): the Wan 2.1 VAE, or a float32
    TAEHV-layout one with no latent scaling (the embedded tiny VAE, lighttaew2_1)."""
    import comfy.ldm.wan.vae as wan_vae

    fsm = getattr(vae, "first_stage_model", None)
    ch = getattr(vae, "latent_channels", None)
    if fsm is not None and type(fsm).__name__ == "TAEHV" and ch == 16:
        if getattr(fsm, "latent_format", None) is not None:
            raise InputError(f"{name}: this TAEHV-layout VAE was stored in float16, so ComfyUI reads it as "
                             f"HunyuanVideo's tiny VAE; store it in float32 (the embedded imanim_tiny_vae is)")
        return
    if fsm is None or not isinstance(fsm, wan_vae.WanVAE) or ch != 16 or getattr(vae, "latent_dim", None) != 3:
        kind = type(fsm).__name__ if fsm is not None else type(vae).__name__
        raise InputError(f"{name}: expected a VAE of the Wan 2.1 latent space (wan_2.1_vae.safetensors, or the "
                         f"embedded imanim_tiny_vae); got a {kind} VAE with {ch} latent channels (Wan 2.2 and "
                         f"HunyuanVideo VAEs have another latent space)")


# TAEHV (the embedded tiny VAE's layout) runs frame by frame in ComfyUI (`parallel=False`); batching all frames is
# ~4x faster on a CPU with the same output (tests/comfyui/bench_tiny.py). It keeps every frame's activations at
# once, so it is only switched on for videos whose widest decoder activation stays under this many bytes.
TAEHV_PARALLEL_MAX_BYTES = 1 << 30


def taehv_parallel_decode(vae, frames: int, width: int, height: int) -> bool:
    """Let a TAEHV-layout Wan VAE decode all frames at once when the video is small (see above); leave it frame by
    frame otherwise. Any other VAE is left alone. Returns whether the VAE now decodes in parallel. The flag sits
    on the VAE object the stock loader shares, so the next VAE Decode with this VAE uses it."""
    fsm = getattr(vae, "first_stage_model", None)
    if fsm is None or type(fsm).__name__ != "TAEHV" or not hasattr(fsm, "parallel"):
        return False
    # the decoder's full-resolution blocks are 64 channels wide; x3: a block's input, memory and output
    peak = frames * width * height * 64 * 4 * 3
    fsm.parallel = peak <= TAEHV_PARALLEL_MAX_BYTES
    return fsm.parallel


def check_wan_model(model, name: str = "model") -> dict:
    """A Wan 2.1 text-to-video MODEL (16-channel latent input). Returns {'dim', 'text_dim', 'patch_size'}."""
    import comfy.model_base

    base = getattr(model, "model", None)
    if base is None or not isinstance(base, comfy.model_base.WAN21):
        raise InputError(f"{name}: expected a Wan 2.1 MODEL (e.g. wan2.1_t2v_1.3B loaded with Load Diffusion Model); "
                         f"got {type(base).__name__ if base is not None else type(model).__name__}")
    lf = getattr(base, "latent_format", None)
    if getattr(lf, "latent_channels", None) != 16:
        raise InputError(f"{name}: expected a Wan 2.1 model working on 16-channel latents; this one uses "
                         f"{getattr(lf, 'latent_channels', '?')} channels (Wan 2.2 5B?)")
    dm = model.get_model_object("diffusion_model")
    pe = model.get_model_object("diffusion_model.patch_embedding")
    w = getattr(pe, "weight", None)
    in_ch = int(w.shape[1]) if torch.is_tensor(w) else None
    problem = t2v_channels_problem(in_ch, name)  # the CLI's words for the same DiT (pipeline.load_models)
    if problem:
        raise InputError(problem)
    return {"dim": int(dm.dim), "text_dim": int(getattr(dm, "text_dim", 4096)),
            "patch_size": tuple(getattr(dm, "patch_size", (1, 2, 2)))}
