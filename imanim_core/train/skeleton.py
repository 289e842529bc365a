"""The training stage of the explicit skeleton baseline (the model and its files: :mod:`imanim_core.baselines`).

``train stage3``'s tiny recipe with the skeleton encoder in place of tokenizer + retargeter: the same frozen VAE,
the same flow-matching loss with a zero text context, a fresh tiny DiT trained in full + injector; trained by
``python -m imanim_core baseline train`` (``commands/baseline.py``).
"""
from __future__ import annotations

from pathlib import Path

import torch
import torch.nn as nn

from ..backbone.flow import flow_matching_loss, zero_context
from ..backbone.wan import build_dit, load_dit, save_dit, save_vae, vae_encode
from ..baselines import (BASELINE_FILE, SkeletonEncoder, SkeletonEncoderConfig, load_skeleton_parts,
                         save_skeleton_baseline, skeleton_frames)
from ..defaults import DEFAULT_SHIFT
from ..errors import IMAnimError
from ..io.atomic import copy_file
from ..models.injector import MotionInjector, attach_to
from .inputs import write_manifest
from .stage import PooledClipStage
from .stage2 import identity_latent
from .stage3 import dit_groups, finish_build, flow_weight


class SkeletonModule(nn.Module):
    def __init__(self, dit, injector, encoder, text_len: int, flow_shift: float = DEFAULT_SHIFT):
        super().__init__()
        self.dit, self.injector, self.encoder = dit, injector, encoder
        self.text_len, self.flow_shift = text_len, flow_shift

    def forward(self, batch):
        ref, x0 = batch["reference"], batch["latents"]
        tokens = self.encoder(batch["skeleton"])
        ctx = zero_context(x0.shape[0], self.text_len, self.dit.config.text_dim, device=x0.device)
        fm = flow_matching_loss(self.dit, x0, ctx, reference=ref, motion=tokens, shift=self.flow_shift,
                                weight=batch.get("weight"))
        return fm, {"flow": fm.detach()}


class SkeletonStage(PooledClipStage):
    """``train stage3``'s recipe with the skeleton encoder in place of tokenizer + retargeter."""

    name = "skeleton-baseline"
    find_unused_parameters = False

    def build(self) -> nn.Module:
        cfg = self.cfg
        if cfg.effective_dit_training != "full":
            raise IMAnimError("the skeleton baseline follows the tiny stage-3 recipe: --dit-training full only")
        init = Path(cfg.init) if cfg.init else None
        if init is not None and not (init / BASELINE_FILE).is_file():
            raise IMAnimError(f"baseline train --init {cfg.init!r}: expected a skeleton-baseline folder (an export or "
                              f"an installed one) with {BASELINE_FILE} and dit.safetensors")
        dit_file = cfg.dit or (str(init / "dit.safetensors") if init is not None else None)
        if dit_file and not self.dry:
            dit = load_dit(dit_file)
        else:
            dit = build_dit(cfg.dit_preset)
        dit_dim = int(dit.config.num_attention_heads * dit.config.attention_head_dim)
        if init is not None:  # continue a trained baseline: its encoder and injector (and its DiT, above)
            encoder, injector, _ = load_skeleton_parts(init / BASELINE_FILE)
            enc_cfg, inj_cfg = encoder.cfg, injector.cfg
            encoder.float().train()
            injector.float().train()
        else:
            enc_cfg = SkeletonEncoderConfig(out_dim=cfg.joint_head_config().joint_dim)
            inj_cfg = cfg.injector_config(dit_dim).replace(in_dim=enc_cfg.out_dim)
            encoder = SkeletonEncoder(enc_cfg)
            injector = MotionInjector(inj_cfg)
        dit.requires_grad_(True).train()
        attach_to(dit, injector)
        self.enc_cfg, self.inj_cfg = enc_cfg, inj_cfg
        return finish_build(self, SkeletonModule(dit, injector, encoder, cfg.text_len, cfg.flow_shift))

    def param_groups(self) -> list:
        m = self.module  # the whole DiT trains (see build)
        return dit_groups(m, "full") + [{"name": "skeleton encoder", "params": list(m.encoder.parameters()),
                                         "lr_scale": 1.0}]

    def describe(self) -> str:
        c = self.cfg
        return (f"skeleton baseline: trains the whole DiT + injector + skeleton encoder (stage-3 tiny recipe); VAE "
                f"{self.vae_path}; clips of {c.num_frames} frames at {c.height}x{c.width}; flow shift {c.flow_shift:g}, "
                f"character weight x {1 + c.flow_fg_weight:g}" + (f"; continues {c.init}" if c.init else ""))

    def clip_inputs(self, b):
        frames = b["frames"]
        bsz, t, h, w, _ = frames.shape
        if (t - 1) % 4:
            raise IMAnimError(f"skeleton baseline: clips must have 4n+1 frames, the data gave {t}")
        sk = torch.stack([skeleton_frames(b["keypoints"][i], (h, w), visibility=b["visibility"][i])
                          for i in range(bsz)])
        return {"skeleton": sk, "identity": b["identity"], "target": b["target"], **flow_weight(self.cfg, b)}

    def frozen_outputs(self, batch):
        video = batch["target"].permute(0, 4, 1, 2, 3) * 2.0 - 1.0
        out = {"skeleton": batch["skeleton"], "reference": identity_latent(self.vae, batch["identity"]),
               "latents": vae_encode(self.vae, video)}
        if "weight" in batch:
            out["weight"] = batch["weight"]
        return out

    def export(self, module, export_dir: Path) -> dict:
        export_dir = Path(export_dir)
        files = {"baseline": save_skeleton_baseline(export_dir / BASELINE_FILE, module.encoder, module.injector,
                                                    {"step": self.step, "preset": self.cfg.preset}),
                 "dit": save_dit(module.dit, export_dir / "dit.safetensors")}
        vae_dst = export_dir / "vae.safetensors"
        if self.vae_path == "random":
            files["vae"] = save_vae(self.vae, vae_dst)
        else:
            files["vae"] = copy_file(self.vae_path, vae_dst)
        files["manifest"] = write_manifest(export_dir, {
            "stage": "skeleton-baseline", "step": self.step, "recipe": "train stage3 (tiny-puppet)",
            "video_size": [self.cfg.height, self.cfg.width], "num_frames": self.cfg.num_frames,
            "vae_source": self.vae_path})
        return files


__all__ = ["SkeletonModule", "SkeletonStage"]
