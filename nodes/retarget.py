"""Retarget to Identity."""
from __future__ import annotations

import time

import torch

from comfy_api.latest import io, ui

from imanim_core.backbone.latents import normalize
from imanim_core.checks import check_finite
from imanim_core.data.heatmaps import heatmaps_to_image
from imanim_core.errors import InputError
from imanim_core.images import FIT_MODES, GRID_PX, fit_image, output_size
from imanim_core.models.bundle import check_motion_tokens
from imanim_core.steps import retarget
from imanim_core.windows import padded_frame_count

from .common import CATEGORY, check_image, check_interrupt, check_wan_vae, overlay, progress, taehv_parallel_decode
from .types import IMAnimationModels, MotionTokens, Retargeted, RetargetedMotion


def check_motion_fits(models, motion) -> None:
    """Motion tokens must come from the tokenizer the retargeter was trained with."""
    cfg = check_motion_tokens(motion, where="motion_tokens")["config"]
    rcfg = models.bundle.config.retargeter
    if (cfg.num_latent_tokens, cfg.token_dim) != (rcfg.num_motion_tokens, rcfg.token_dim):
        raise InputError(f"motion_tokens: {cfg.num_latent_tokens} tokens of {cfg.token_dim} channels per frame, but "
                         f"the retargeter of {models.name} expects {rcfg.num_motion_tokens} x {rcfg.token_dim}; "
                         f"encode the driving video with the same IM-Animation models")
    tcfg = models.bundle.config.tokenizer
    if tcfg is not None and tcfg != cfg:
        diff = [k for k, v in tcfg.to_dict().items() if cfg.to_dict().get(k) != v]
        raise InputError(f"motion_tokens: encoded with a different motion tokenizer than the one in {models.name} "
                         f"(differs in {diff}); the retargeter only understands its own tokenizer's codes. Encode "
                         f"the driving video with these models (a bundle from another config?)")


class IMAnimationRetarget(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="IMAnimationRetarget",
            display_name="Retarget to Identity",
            category=CATEGORY,
            description="Re-poses the motion tokens onto your character: the identity image goes through the Wan "
                        "VAE, the retargeter turns identity + motion tokens into per-frame motion on the video's "
                        "latent grid. The identity is resized to the output size (a multiple of 16); the video has "
                        "that size. The preview shows the retargeted pose as heatmaps over the identity.",
            inputs=[
                IMAnimationModels.Input("models", tooltip="From Load IM-Animation Models; needs a retargeter and an "
                                                          "injector."),
                io.Image.Input("identity", tooltip="The character image (the first image of the batch is used), at "
                                                  "least 16 px a side. An RGBA IMAGE (e.g. from Join Image with "
                                                  "Alpha) is composited over black, as `animate` does with an RGBA "
                                                  "file."),
                io.Vae.Input("vae", tooltip="The Wan 2.1 VAE (wan_2.1_vae.safetensors, or the embedded tiny one); "
                                            "use the same VAE to decode the video."),
                MotionTokens.Input("motion_tokens", tooltip="From Encode Motion Tokens or Load Motion Tokens."),
                io.Int.Input("width", default=0, min=0, max=8192, step=GRID_PX,
                             tooltip="Output video width in px, a multiple of 16. Width and height 0 = the "
                                     "models' default (the bundle's training size; 128x128 for the tiny model; "
                                     "a 480p-area size with the identity's aspect for Wan 2.1), as the standalone "
                                     "`animate` without --size. Only one 0 = from the other and the identity's "
                                     "aspect."),
                io.Int.Input("height", default=0, min=0, max=8192, step=GRID_PX,
                             tooltip="Output video height in px, a multiple of 16 (0: see width)."),
                io.Combo.Input("fit", options=list(FIT_MODES), default="pad",
                               tooltip="How the identity image is brought to width x height: pad (fit inside, edge "
                                       "pixels repeated), crop (fill, centre crop) or stretch."),
                io.Int.Input("frame_chunk", default=16, min=1, max=1024,
                             tooltip="Frames processed at once inside the retargeter (memory only; the result is "
                                     "the same)."),
            ],
            outputs=[
                RetargetedMotion.Output(display_name="retargeted_motion",
                                        tooltip="Retargeted motion, identity latent, frame count and injector for "
                                                "the IM-Animation Sampler."),
                io.Image.Output(display_name="pose_preview",
                                tooltip="Retargeted pose heatmaps over the identity, one image per frame."),
                io.String.Output(display_name="status",
                                 tooltip="What the node did (frames, size, latent and motion grids, seconds); wire "
                                         "it to Preview as Text to read it on the canvas."),
            ],
        )

    @classmethod
    def execute(cls, models, identity, vae, motion_tokens, width, height, fit, frame_chunk) -> io.NodeOutput:
        bundle = models.bundle
        if bundle.retargeter is None or bundle.injector is None:
            missing = [p for p in ("retargeter", "injector") if getattr(bundle, p) is None]
            raise InputError(f"models: {models.name} has no {' and no '.join(missing)}; retargeting needs a full "
                             f"IM-Animation bundle (the released motion encoder alone only encodes motion)")
        check_motion_fits(models, motion_tokens)
        check_wan_vae(vae, "vae")
        img = check_image(identity, "identity")[:1]
        w, h = output_size(width, height, img.shape[1:3], bundle)
        img, _ = fit_image(img, h, w, fit)  # the standalone pipeline's identity fitting

        codes = motion_tokens["codes"]
        t = int(codes.shape[0])
        t0 = time.perf_counter()
        fast_vae = taehv_parallel_decode(vae, padded_frame_count(t), w, h)
        bar, _ = progress(t + 2)
        check_interrupt()
        raw = vae.encode(img).float().cpu()  # [1,16,1,h/8,w/8] raw Wan 2.1 latent
        if raw.ndim != 5 or raw.shape[1] != 16 or raw.shape[2] != 1:
            raise InputError(f"vae: encoding the identity gave a latent of shape {tuple(raw.shape)}, expected "
                             f"[1,16,1,{h // 8},{w // 8}] (not the Wan 2.1 VAE?)")
        # ComfyUI's stock loader read the VAE file (no weight check there): a damaged VAE shows up here
        check_finite(raw, "vae", "identity latent values", hint="Check the VAE file (damaged weights?)")
        bar.update_absolute(1, t + 2)
        check_interrupt()
        tokens = retarget(bundle, normalize(raw), codes, frame_chunk)  # the CLI's retarget step
        bar.update_absolute(2, t + 2)

        head = bundle.joint_head
        if head is not None:
            hp = next(head.parameters())
            frames = []
            with torch.no_grad():
                for s in range(0, t, int(frame_chunk)):
                    check_interrupt()
                    hm = head(tokens[0, s:s + int(frame_chunk)].to(hp.device, hp.dtype)).float().cpu()
                    frames.append(overlay(img.expand(hm.shape[0], -1, -1, -1), heatmaps_to_image(hm)))
                    bar.update_absolute(2 + min(s + int(frame_chunk), t), t + 2)
            preview = torch.cat(frames, 0)
            note = ""
        else:
            preview = img.expand(t, -1, -1, -1).clone() * 0.5
            note = f"\n{models.name} has no joint head: no pose preview"
        bar.update_absolute(t + 2, t + 2)

        out = Retargeted(tokens=tokens, identity_latent=raw, frame_count=t, width=w, height=h,
                         injector=bundle.injector, models_name=models.name, fps=motion_tokens.get("fps"))
        text = (f"{t} frames retargeted to a {w}x{h} identity (latent {raw.shape[-1]}x{raw.shape[-2]}, motion grid "
                f"{tokens.shape[3]}x{tokens.shape[2]}), {time.perf_counter() - t0:.1f} s"
                + ("; the tiny VAE decodes all frames at once" if fast_vae else "") + note)
        return io.NodeOutput(out, preview, text, ui=ui.PreviewText(text))
