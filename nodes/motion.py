"""Encode Motion Tokens, Save Motion Tokens, Load Motion Tokens."""
from __future__ import annotations

import os
import time

import torch

import folder_paths
from comfy_api.latest import io, ui

from imanim_core.errors import InputError

from .common import CATEGORY, check_image, check_interrupt, overlay, progress
from .paths import MOTION_KEY, MOTION_SUBFOLDER, list_files, register_motion_folders
from .types import IMAnimationModels, MotionTokens


def motion_preview(models, frames: torch.Tensor, codes: torch.Tensor, batch_size: int):
    """Heatmaps of the decoded pose over what the tokenizer saw ([T,S,S,3]), or (no decoder) the tokenizer's
    view of the frames, dimmed, with a message."""
    from imanim_core.data.heatmaps import heatmaps_to_image
    from imanim_core.models.tokenizer import preprocess_frames

    tok = models.bundle.tokenizer
    S = tok.cfg.image_size
    dec, head = models.part("motion_decoder"), models.part("joint_head")
    t = frames.shape[0]
    out = []
    bar, _ = progress(t)
    with torch.no_grad():
        for s in range(0, t, batch_size):
            check_interrupt()
            base = preprocess_frames(frames[s:s + batch_size], S).movedim(1, -1).cpu()
            if dec is None or head is None:
                out.append(base * 0.5)
            else:
                p = next(dec.parameters())
                jt = dec(codes[s:s + batch_size].to(p.device, p.dtype))
                hm = head(jt).float().cpu()
                out.append(overlay(base, heatmaps_to_image(hm)))
            bar.update_absolute(min(s + batch_size, t), t)
    if dec is None or head is None:
        msg = (f"{models.name} has no motion decoder / joint head (e.g. the released motion encoder): the preview "
               f"shows the encoder's input only, no pose heatmaps")
    else:
        msg = ""
    return torch.cat(out, 0).clamp(0, 1), msg


class IMAnimationEncodeMotion(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="IMAnimationEncodeMotion",
            display_name="Encode Motion Tokens",
            category=CATEGORY,
            description="Encodes each driving frame into 32 implicit motion tokens (32x12 numbers, too few to carry "
                        "the driver's looks or body shape). Also previews the decoded pose as joint heatmaps when "
                        "the bundle has a motion decoder and joint head.",
            inputs=[
                IMAnimationModels.Input("models", tooltip="From Load IM-Animation Models; needs a motion tokenizer."),
                io.Image.Input("driving", tooltip="Driving video frames [T,H,W,3] (e.g. from Load Video -> Get Video "
                                                  "Components). Each frame is padded to a square and resized."),
                io.Int.Input("batch_size", default=8, min=1, max=512,
                             tooltip="Frames encoded at once; lower it if you run out of memory."),
            ],
            outputs=[
                MotionTokens.Output(display_name="motion_tokens", tooltip="indices [T,32], codes [T,32,12], config."),
                io.Image.Output(display_name="heatmap_preview",
                                tooltip="Decoded pose heatmaps over the encoder's (square) view of each frame."),
                io.String.Output(display_name="status",
                                 tooltip="What the node did (frames, token shape, seconds); wire it to Preview as "
                                         "Text to read it on the canvas."),
            ],
        )

    @classmethod
    def execute(cls, models, driving, batch_size) -> io.NodeOutput:
        from imanim_core.models.bundle import check_motion_tokens

        tok = models.part("tokenizer")
        if tok is None:
            raise InputError(f"models: {models.name} has no motion tokenizer; load an IM-Animation bundle with one, "
                             f"or the released motion encoder")
        frames = check_image(driving, "driving")
        t = frames.shape[0]
        t0 = time.perf_counter()
        _, update = progress(t)

        def should_stop():
            check_interrupt()
            return False

        with torch.no_grad():
            idx, codes = tok.encode_frames(frames, batch_size=int(batch_size), progress=update,
                                           should_stop=should_stop)
        motion = check_motion_tokens({"indices": idx, "codes": codes, "config": tok.cfg, "fps": None})
        motion["source"] = models.name
        preview, msg = motion_preview(models, frames, motion["codes"], int(batch_size))
        text = (f"{t} frames -> motion tokens {tuple(idx.shape)} ({models.name}), "
                f"{time.perf_counter() - t0:.1f} s" + (f"\n{msg}" if msg else ""))
        return io.NodeOutput(motion, preview, text, ui=ui.PreviewText(text))


class IMAnimationSaveMotionTokens(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="IMAnimationSaveMotionTokens",
            display_name="Save Motion Tokens",
            category=CATEGORY,
            description="Saves motion tokens to a .safetensors file in the output folder (default "
                        "output/im_animation_motion, which Load Motion Tokens lists), so a driving video is encoded "
                        "once and reused.",
            inputs=[
                MotionTokens.Input("motion_tokens", tooltip="From Encode Motion Tokens or Load Motion Tokens."),
                io.String.Input("filename_prefix", default=f"{MOTION_SUBFOLDER}/motion",
                                tooltip="File name prefix, relative to the output folder; a counter and "
                                        ".safetensors are appended."),
            ],
            outputs=[],
            is_output_node=True,
        )

    @classmethod
    def execute(cls, motion_tokens, filename_prefix) -> io.NodeOutput:
        from imanim_core.models.bundle import save_motion_tokens

        out_dir = folder_paths.get_output_directory()
        full_dir, fname, counter, subfolder, _ = folder_paths.get_save_image_path(filename_prefix, out_dir)
        os.makedirs(full_dir, exist_ok=True)
        while True:
            file = f"{fname}_{counter:05}_.safetensors"
            if not os.path.exists(os.path.join(full_dir, file)):
                break
            counter += 1
        meta = {"source": str(motion_tokens.get("source", ""))} if motion_tokens.get("source") else None
        path = save_motion_tokens(os.path.join(full_dir, file), motion_tokens, metadata=meta)
        n = int(motion_tokens["indices"].shape[0])
        rel = os.path.join(subfolder, file) if subfolder else file
        return io.NodeOutput(ui=ui.PreviewText(f"saved {n} frames of motion tokens to output/{rel}\n({path})"))


class IMAnimationLoadMotionTokens(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        register_motion_folders()
        return io.Schema(
            node_id="IMAnimationLoadMotionTokens",
            display_name="Load Motion Tokens",
            category=CATEGORY,
            description="Loads motion tokens saved by Save Motion Tokens or by `python -m imanim_core encode-motion`, "
                        "from input/im_animation_motion or output/im_animation_motion (extra_model_paths.yaml key "
                        "'im_animation_motion').",
            inputs=[
                io.Combo.Input("file", options=list_files(MOTION_KEY),
                               tooltip="A motion-tokens .safetensors file (format im-animation-motion-tokens)."),
            ],
            outputs=[
                MotionTokens.Output(display_name="motion_tokens", tooltip="indices [T,K], codes [T,K,d], config."),
                io.Int.Output(display_name="frame_count", tooltip="Number of driving frames in the file."),
            ],
        )

    @classmethod
    def _path(cls, file):
        register_motion_folders()
        return folder_paths.get_full_path(MOTION_KEY, file) if file else None

    @classmethod
    def validate_inputs(cls, file):
        if cls._path(file) is None:
            return f"file: {file!r} was not found in {folder_paths.get_folder_paths(MOTION_KEY)}"
        return True

    @classmethod
    def fingerprint_inputs(cls, file):
        p = cls._path(file)
        return os.path.getmtime(p) if p and os.path.exists(p) else file

    @classmethod
    def execute(cls, file) -> io.NodeOutput:
        from imanim_core.models.bundle import load_motion_tokens

        path = cls._path(file)
        if path is None:
            raise InputError(f"file: {file!r} was not found in {folder_paths.get_folder_paths(MOTION_KEY)}")
        motion = load_motion_tokens(path)
        motion["source"] = motion.get("metadata", {}).get("source", "") or os.path.basename(path)
        n = int(motion["indices"].shape[0])
        return io.NodeOutput(motion, n, ui=ui.PreviewText(f"{file}: {n} frames"))
