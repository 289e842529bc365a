"""IM-Animation Sampler: ComfyUI's own Wan MODEL + the motion injection + the identity reference frame.

Integration (DESIGN §4): the MODEL is cloned; its ``diffusion_model.patch_embedding`` is replaced (object patch)
by ``InjectedPatchEmbedding(original_conv, injector)``; the raw identity latent enters through the
``time_dim_concat`` conditioning key (ComfyUI normalises it and appends it as a clean extra latent frame); one
``comfy.sample.sample`` call runs the user's sampler/scheduler. Long videos: a model-function wrapper splits the
latent into the windows planned by ``imanim_core.windows``, sets each window's motion on the injected patch,
runs the model on each and blends the results, so every sampler and scheduler works unchanged.

Frame counts: Wan's VAE decodes L latent frames into 4L-3 frames. A driving clip of T frames with T not of
the form 4n+1 has its motion padded (last frame repeated) to the next 4n+1; ``frame_count`` = T, so the stock
*VAE Decode* followed by *ImageFromBatch* (batch_index 0, length = frame_count) gives exactly T frames.
"""
from __future__ import annotations

import copy
import time
from dataclasses import replace

import torch

import comfy.model_management as mm
import comfy.sample
import comfy.samplers
import comfy.utils
import node_helpers
from comfy_api.latest import io, ui

from imanim_core.checks import check_finite
from imanim_core.errors import InputError
from imanim_core.models.injector import InjectedPatchEmbedding
from imanim_core.windows import MotionPlan, plan_motion, run_windowed

from .common import CATEGORY, check_interrupt, check_wan_model
from .types import RetargetedMotion

ZERO_TEXT_TOKENS = 1  # zero text embeddings: every token is identical, so cross-attention does not depend on count


def zero_conditioning(text_dim: int = 4096, tokens: int = ZERO_TEXT_TOKENS):
    """CONDITIONING of all-zero text embeddings (the tiny model is trained without text)."""
    return [[torch.zeros(1, tokens, text_dim), {}]]


def check_conditioning(cond, name: str, text_dim: int):
    if cond is None:
        return zero_conditioning(text_dim)
    if not isinstance(cond, list) or not cond:
        raise InputError(f"{name}: expected a CONDITIONING (from CLIP Text Encode), got {type(cond).__name__}")
    for c in cond:
        t = c[0] if isinstance(c, (list, tuple)) and c else None
        if not torch.is_tensor(t) or t.ndim != 3 or t.shape[-1] != text_dim:
            shape = tuple(t.shape) if torch.is_tensor(t) else type(t).__name__
            raise InputError(f"{name}: text embeddings of shape {shape}; this Wan model expects [1, tokens, {text_dim}] "
                             f"(the umt5-xxl text encoder, e.g. umt5_xxl_fp8_e4m3fn_scaled.safetensors with "
                             f"CLIPLoader type 'wan')")
    return cond


def apply_shift(model, shift: float):
    """Flow-matching time shift on the clone, as ModelSamplingSD3 does (multiplier 1000)."""
    import comfy.model_sampling

    class _ModelSampling(comfy.model_sampling.ModelSamplingDiscreteFlow, comfy.model_sampling.CONST):
        pass

    ms = _ModelSampling(model.model.model_config)
    ms.set_parameters(shift=float(shift), multiplier=1000)
    model.add_object_patch("model_sampling", ms)


class WindowedMotion:
    """The model-function wrapper: ``imanim_core.windows.run_windowed`` with ComfyUI's model call per window (that
    window's motion set on the injected patch, its slice of any per-frame conditioning)."""

    def __init__(self, injected, plan: MotionPlan, previous=None):
        self.injected = injected
        self.plan = plan
        self.previous = previous  # a model_function_wrapper already on the MODEL: called inside ours

    def _run(self, apply_model, x, t, c, args):
        if self.previous is None:
            return apply_model(x, t, **c)
        return self.previous(apply_model, dict(args, input=x, timestep=t, c=c))

    def __deepcopy__(self, memo):  # model_options are deep-copied by ModelPatcher.clone(); share the wrapper
        return self

    def __call__(self, apply_model, args):
        x, t, c = args["input"], args["timestep"], args["c"]
        n = x.shape[2]
        several = len(self.plan.windows) > 1

        def call(xw, win, tokens_w):
            if several:
                check_interrupt()
            self.injected.set_motion(tokens_w)
            cw = c if not several else {
                k: (v[:, :, win.latents] if (k != "time_dim_concat" and torch.is_tensor(v) and v.ndim == 5
                                             and v.shape[2] == n) else v) for k, v in c.items()}
            return self._run(apply_model, xw, t, cw, args)

        return run_windowed(x, self.plan, call)


def patch_model(model, retargeted, shift: float, window: int, overlap: int):
    """Clone ``model`` and add the motion injection, the window wrapper and the shift.

    Returns ``(patched_model, injected_patch, wrapper, info)``; ``info`` has the frame/latent counts and windows
    (``imanim_core.windows.plan_motion``, the standalone pipeline's plan) and the model's text width.
    """
    spec = check_wan_model(model, "model")
    inj = retargeted.injector
    if inj.cfg.dit_dim != spec["dim"]:
        raise InputError(f"model: this Wan DiT is {spec['dim']} wide but the injector of {retargeted.models_name} "
                         f"was trained for a {inj.cfg.dit_dim}-wide DiT (Wan 2.1 1.3B = 1536, 14B = 5120, tiny = "
                         f"256); use the Wan model the IM-Animation bundle was trained with")
    plan = plan_motion(retargeted.tokens, retargeted.latent_hw, int(retargeted.frame_count), window, overlap,
                       where="retargeted_motion")

    m = model.clone()
    if shift > 0:
        apply_shift(m, shift)
    conv = m.get_model_object("diffusion_model.patch_embedding")
    injector = copy.deepcopy(inj).float().to(m.load_device).eval()
    injected = InjectedPatchEmbedding(conv, injector)
    m.add_object_patch("diffusion_model.patch_embedding", injected)
    plan = replace(plan, tokens=plan.tokens.to(m.load_device))
    wrapper = WindowedMotion(injected, plan, previous=m.model_options.get("model_function_wrapper"))
    m.set_model_unet_function_wrapper(wrapper)
    info = dict(plan.info(), text_dim=spec["text_dim"])
    return m, injected, wrapper, info


def reference_conditioning(cond, identity_latent: torch.Tensor):
    return node_helpers.conditioning_set_values(cond, {"time_dim_concat": identity_latent})


class IMAnimationSampler(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="IMAnimationSampler",
            display_name="IM-Animation Sampler",
            category=CATEGORY,
            description="Samples the animation with your Wan 2.1 MODEL: the retargeted motion is added to the DiT's "
                        "patch embedding, the identity latent is appended as a clean reference frame. Long videos "
                        "run as overlapping windows blended at every step. Decode the LATENT with the stock VAE "
                        "Decode, then ImageFromBatch (batch_index 0, length = frame_count) to get exactly as many "
                        "frames as the driving video (the motion is padded to 4n+1 frames for Wan's VAE).",
            inputs=[
                io.Model.Input("model", tooltip="A Wan 2.1 text-to-video MODEL (Load Diffusion Model; GGUF/fp8/LoRA "
                                                "loaders work) whose width matches the bundle's injector."),
                RetargetedMotion.Input("retargeted_motion", tooltip="From Retarget to Identity."),
                io.Int.Input("seed", default=0, min=0, max=0xFFFFFFFFFFFFFFFF, control_after_generate=True,
                             tooltip="Random seed of the initial noise."),
                io.Int.Input("steps", default=20, min=1, max=10000, tooltip="Denoising steps."),
                io.Float.Input("cfg", default=1.0, min=0.0, max=100.0, step=0.1, round=0.01,
                               tooltip="Classifier-free guidance scale. 1.0 = off (fastest; right for the embedded "
                                       "tiny model and for zero text). With text prompts on Wan 2.1, ~5."),
                io.Combo.Input("sampler_name", options=comfy.samplers.KSampler.SAMPLERS, default="euler",
                               tooltip="Sampling algorithm (any ComfyUI sampler)."),
                io.Combo.Input("scheduler", options=comfy.samplers.KSampler.SCHEDULERS, default="simple",
                               tooltip="Noise schedule (any ComfyUI scheduler)."),
                io.Float.Input("shift", default=5.0, min=0.0, max=100.0, step=0.01,
                               tooltip="Flow-matching time shift applied to the model like ModelSamplingSD3 "
                                       "(Wan 2.1: 5 at 720p, 3-8 at 480p). 0 = keep the MODEL's own sampling "
                                       "(e.g. set with a ModelSamplingSD3 node)."),
                io.Float.Input("denoise", default=1.0, min=0.0, max=1.0, step=0.01,
                               tooltip="Amount of denoising; below 1 only makes sense with an input latent."),
                io.Int.Input("window", default=81, min=5, max=1025, step=4, extra_dict={"round": 1},
                             tooltip="Frames per window, 4n+1 (Wan 2.1 is trained on 81; the embedded tiny model on 9, "
                                     "and does best at window 9, overlap 4, the CLI's default for it). Longer "
                                     "videos are sampled as overlapping windows blended at every step."),
                io.Int.Input("overlap", default=16, min=0, max=1024, step=4,
                             tooltip="Frames shared by consecutive windows; used in whole latent frames (rounded "
                                     "down to a multiple of 4). Must be smaller than the window."),
                io.Conditioning.Input("positive", optional=True,
                                      tooltip="Optional text conditioning (CLIP Text Encode with the umt5 text "
                                              "encoder). Absent = zero text embeddings (the tiny model has no text)."),
                io.Conditioning.Input("negative", optional=True,
                                      tooltip="Optional negative text conditioning. Absent = zero text embeddings."),
                io.Latent.Input("latent", optional=True,
                                tooltip="Optional starting LATENT [1,16,T',h,w] (use with denoise < 1); absent = "
                                        "an empty latent of the right size."),
            ],
            outputs=[
                io.Latent.Output(display_name="LATENT", tooltip="The video latent [1,16,T',h,w]; decode with the "
                                                                "same Wan VAE."),
                io.Int.Output(display_name="frame_count",
                              tooltip="Frames of the driving video: use as ImageFromBatch length after VAE Decode."),
                io.String.Output(display_name="status",
                                 tooltip="What the sampler did (frames, padding, latent frames, windows, steps, "
                                         "seconds); wire it to Preview as Text to read it on the canvas."),
            ],
        )

    @classmethod
    def execute(cls, model, retargeted_motion, seed, steps, cfg, sampler_name, scheduler, shift, denoise, window,
                overlap, positive=None, negative=None, latent=None) -> io.NodeOutput:
        import latent_preview

        r = retargeted_motion
        if not hasattr(r, "tokens") or not hasattr(r, "injector"):
            raise InputError("retargeted_motion: expected the output of Retarget to Identity")
        m, injected, wrapper, info = patch_model(model, r, shift, window, overlap)
        positive = reference_conditioning(check_conditioning(positive, "positive", info["text_dim"]),
                                          r.identity_latent)
        negative = reference_conditioning(check_conditioning(negative, "negative", info["text_dim"]),
                                          r.identity_latent)
        h, w = info["latent_hw"]
        shape = (1, 16, info["latent_frames"], h, w)
        if latent is not None:
            start = latent["samples"]
            if tuple(start.shape) != shape:
                raise InputError(f"latent: expected shape {list(shape)} for {info['frames']} frames at "
                                 f"{w * 8}x{h * 8}, got {list(start.shape)}")
        else:
            start = torch.zeros(shape, device=mm.intermediate_device())
        start = comfy.sample.fix_empty_latent_channels(m, start)
        noise = comfy.sample.prepare_noise(start, seed)
        callback = latent_preview.prepare_callback(m, steps)
        t0 = time.perf_counter()
        try:
            samples = comfy.sample.sample(m, noise, steps, cfg, sampler_name, scheduler, positive, negative, start,
                                          denoise=denoise, callback=callback,
                                          disable_pbar=not comfy.utils.PROGRESS_BAR_ENABLED, seed=seed)
        finally:
            injected.set_motion(None)
        # ComfyUI's stock loader read the DiT (no weight check there): NaN weights, a bad LoRA or an fp16
        # overflow show up here, as in the standalone pipeline, instead of as a black video
        check_finite(samples, "model", "sampled latent values",
                     hint="The Wan MODEL produced them: check its weights, a LoRA, or its dtype (fp16 overflow?)")
        wins = info["windows"]
        text = (f"{info['frames']} frames (motion padded to {info['padded_frames']}), {info['latent_frames']} latent "
                f"frames, {len(wins)} window(s): " + ", ".join(f"[{x.start},{x.end})" for x in wins)
                + f"; {steps} steps in {time.perf_counter() - t0:.1f} s")
        return io.NodeOutput({"samples": samples}, info["frames"], text, ui=ui.PreviewText(text))
