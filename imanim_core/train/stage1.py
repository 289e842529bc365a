"""Stage 1 (DESIGN §2): the motion tokenizer with the motion decoder and the joint head.

Trains everything: tokenizer (encoder + codebook), motion decoder, joint head. Input: single driving frames,
padded to a square and resized to the tokenizer's size (``preprocess_frames``); target: keypoint heatmaps in
that padded square at the joint head's output size (decoder grid x upsample). Loss:
``heatmap_weight * weighted heatmap MSE + vq_weight * VQ loss`` (commitment 0.25 inside the tokenizer).

``--init``: a bundle (e.g. an earlier stage-1 run, to continue with new data) or, for the real preset, the
released motion encoder file (its tokenizer config — 'large' — is then used). Parts present in the init file
bring their own config. ``--decoder-only`` keeps the tokenizer of ``--init`` frozen (encoder and codebook, no code
restarts, no VQ or anchor loss) and trains the motion decoder and joint head alone: the tiny recipe's second
phase (measured on the v3 stage-1 parts: the joint run's decoder read held-out frames at 3.64 heatmap px while
the encoder's own anchor maps already found the joints at 1.26 px). Export: ``DIR/export/bundle.safetensors`` (tokenizer, motion_decoder, joint_head).
"""
from __future__ import annotations

from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..config import BundleConfig
from ..errors import IMAnimError
from ..models.bundle import IMAnimationBundle, build_part, save_bundle
from .data import (STAGE1_FPS, STAGE1_FRAME_STRIDE, STAGE1_FRAMES_PER_CLIP, make_source, stage1_batch,
                   stage1_targets)
from .inputs import copy_weights, load_init, write_manifest
from .losses import keypoint_error, weighted_heatmap_mse
from .seeding import mix_seed
from .stage import Stage


class Stage1Module(nn.Module):
    def __init__(self, tokenizer, motion_decoder, joint_head, heatmap_weight=1.0, fg_weight=10.0, vq_weight=1.0,
                 decoder_only=False):
        super().__init__()
        self.decoder_only = bool(decoder_only)
        if self.decoder_only:
            tokenizer.requires_grad_(False)
        self.tokenizer = tokenizer
        self.motion_decoder = motion_decoder
        self.joint_head = joint_head
        self.heatmap_weight, self.fg_weight, self.vq_weight = heatmap_weight, fg_weight, vq_weight

    hits = None  # codebook hits since the last restart (a plain tensor: per process, not synchronised by DDP)
    last_z = None  # normalised encoder outputs of the last batch [N, d] (restart candidates)

    def train(self, mode: bool = True):
        super().train(mode)
        if self.decoder_only:
            self.tokenizer.eval()
        return self

    def forward(self, batch):
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.decoder_only):
            enc = self.tokenizer.encode(batch["pixels"])
        hm = self.joint_head(self.motion_decoder(enc["codes"]))
        l_hm = weighted_heatmap_mse(hm, batch["heatmaps"], self.fg_weight)
        kp_err = keypoint_error(hm.detach(), batch["heatmaps"])
        if self.decoder_only:  # frozen tokenizer: no VQ or anchor term, no codebook bookkeeping
            return self.heatmap_weight * l_hm, {"heatmap": l_hm.detach(), "kp_err": kp_err}
        if self.training:
            with torch.no_grad():
                n = self.tokenizer.cfg.codebook_size
                counts = torch.bincount(enc["indices"].reshape(-1), minlength=n).float()
                if self.hits is None or self.hits.device != counts.device:
                    self.hits = torch.zeros_like(counts)
                self.hits += counts
                self.last_z = F.normalize(enc["z"].detach().float().reshape(-1, enc["z"].shape[-1]), dim=-1)
        loss = self.heatmap_weight * l_hm + self.vq_weight * enc["loss"]
        extra = {}
        if "attn_logits" in enc:  # conv tokenizer: its first J attention maps learn the joints (auxiliary)
            target = batch["heatmaps"]
            logits = enc["attn_logits"][:, :target.shape[1]]
            if logits.shape[-2:] != target.shape[-2:]:
                logits = F.interpolate(logits, size=target.shape[-2:], mode="bilinear", align_corners=False)
            l_aux = weighted_heatmap_mse(logits, target[:, :logits.shape[1]], self.fg_weight)
            loss = loss + self.heatmap_weight * l_aux
            extra["anchor"] = l_aux.detach()
        with torch.no_grad():
            used = torch.unique(enc["indices"]).numel() / float(self.tokenizer.cfg.codebook_size)
        return loss, {"heatmap": l_hm.detach(), "vq": enc["loss"].detach(), "code_usage": torch.tensor(used),
                      "kp_err": kp_err, **extra}


class Stage1(Stage):
    name = "stage1"

    def build(self) -> nn.Module:
        cfg = self.cfg
        init_cfg, init = load_init(cfg, self.dry)
        tok_cfg = (init_cfg.tokenizer if init_cfg and init_cfg.tokenizer else cfg.tokenizer_config())
        dec_cfg = cfg.motion_decoder_config()
        if init_cfg and init_cfg.motion_decoder:
            dec_cfg = init_cfg.motion_decoder
        else:
            dec_cfg = dec_cfg.replace(token_dim=tok_cfg.token_dim)
            if hasattr(dec_cfg, "num_tokens"):
                dec_cfg = dec_cfg.replace(num_tokens=tok_cfg.num_latent_tokens)
        head_cfg = init_cfg.joint_head if init_cfg and init_cfg.joint_head else cfg.joint_head_config()
        if head_cfg.joint_dim != dec_cfg.joint_dim:
            dec_cfg = dec_cfg.replace(joint_dim=head_cfg.joint_dim)
        self.bundle_config = BundleConfig(tokenizer=tok_cfg, motion_decoder=dec_cfg, joint_head=head_cfg)
        parts = {p: build_part(p, getattr(self.bundle_config, p)) for p in ("tokenizer", "motion_decoder",
                                                                             "joint_head")}
        self.loaded = []
        if init is not None:
            for p, m in parts.items():
                src = getattr(init, p, None)
                if src is not None:
                    copy_weights(m, src, p)
                    self.loaded.append(p)
        module = Stage1Module(parts["tokenizer"], parts["motion_decoder"], parts["joint_head"],
                              cfg.heatmap_weight, cfg.heatmap_fg_weight, cfg.vq_weight, cfg.decoder_only)
        if cfg.decoder_only and "tokenizer" not in self.loaded and not self.dry:
            raise IMAnimError(f"train stage1 --decoder-only: --init {cfg.init} holds no tokenizer to keep frozen")
        if not self.dry:
            module.to(self.device)
            # real videos are letterboxed straight to the tokenizer's square (= pad to square + resize)
            size = (tok_cfg.image_size, tok_cfg.image_size) if cfg.data else None
            self.source = make_source(cfg, 1, STAGE1_FRAMES_PER_CLIP, fps=STAGE1_FPS, size=size,
                                      frame_stride=STAGE1_FRAME_STRIDE)
        self.image_size = tok_cfg.image_size
        self.heatmap_size = dec_cfg.grid * head_cfg.upsample
        return module

    def param_groups(self) -> list:
        return [{"name": "all", "params": [p for p in self.module.parameters() if p.requires_grad], "lr_scale": 1.0}]

    def describe(self) -> str:
        init = f" (from {self.cfg.init}: {', '.join(self.loaded) or 'nothing'})" if self.cfg.init else ""
        what = ("motion_decoder, joint_head (tokenizer frozen)" if self.cfg.decoder_only
                else "tokenizer (encoder + codebook), motion_decoder, joint_head")
        return (f"stage 1: trains {what}{init}; "
                f"frames -> {self.image_size}px padded squares, heatmaps {self.heatmap_size}x{self.heatmap_size}")

    def load_batch(self, gen, sample_offset):
        cfg = self.cfg
        raw = stage1_batch(self.source, sample_offset, cfg.batch_size, STAGE1_FRAMES_PER_CLIP)
        pixels, hm = stage1_targets(raw["frames"], raw["keypoints"], raw["visibility"], self.image_size,
                                    self.heatmap_size, cfg.heatmap_sigma)
        return {"pixels": pixels, "heatmaps": hm}

    # ------------------------------------------------------------------ codebook restarts
    def after_step(self, module, step, accelerator, ema) -> dict:
        """Dead-code restart: at step 1 (a data-driven codebook init) and every ``code_restart_every`` steps,
        codebook entries no frame has used since the last restart (summed over all processes) are re-seeded
        with encoder outputs of the current batch (exact copies). Without it the tiny tokenizer collapses to
        one code per token position (the codes then carry no motion). Process 0 draws, the others copy."""
        every = 0 if self.cfg.decoder_only else self.cfg.code_restart_every
        if every <= 0 or not (step == 1 or step % every == 0) or module.hits is None:
            return {"codes_restarted": 0.0}
        hits = module.hits.clone()
        world = accelerator.num_processes
        if world > 1:
            hits = accelerator.reduce(hits, reduction="sum")
        dead = torch.nonzero(hits == 0).flatten()
        emb = module.tokenizer.quantize.embedding.weight
        if len(dead):
            if accelerator.is_main_process:
                z = module.last_z.cpu()
                g = torch.Generator().manual_seed(mix_seed(self.cfg.seed, "restart", step))
                pick = torch.randint(len(z), (len(dead),), generator=g)
                new = z[pick].clone()  # exact encoder outputs: they differ by image content only
                with torch.no_grad():
                    emb[dead.to(emb.device)] = new.to(emb.device, emb.dtype)
            if world > 1:
                import torch.distributed as dist

                dist.broadcast(emb.data, src=0)
            if ema is not None:
                for name, shadow in ema.shadow.items():
                    if name.endswith("tokenizer.quantize.embedding.weight"):
                        shadow[dead.to(shadow.device)] = emb.detach()[dead.to(emb.device)].float().to(shadow.device)
        module.hits.zero_()
        return {"codes_restarted": float(len(dead))}

    def extra_state(self) -> dict:
        m = self.module
        return {"code_hits": m.hits} if m is not None and m.hits is not None else {}

    def load_extra_state(self, tensors: dict) -> None:
        if "code_hits" in tensors:
            self.module.hits = tensors["code_hits"].to(self.device)

    def export(self, module, export_dir: Path) -> dict:
        b = IMAnimationBundle(config=self.bundle_config, tokenizer=module.tokenizer,
                              motion_decoder=module.motion_decoder, joint_head=module.joint_head)
        path = save_bundle(b, Path(export_dir) / "bundle.safetensors",
                           metadata={"stage": "stage1", "step": str(self.step), "preset": self.cfg.preset})
        man = write_manifest(export_dir, {"stage": "stage1", "step": self.step, "bundle": str(Path(path).resolve()),
                                          "parts": self.bundle_config.parts})
        return {"bundle": path, "manifest": man}
