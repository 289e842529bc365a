"""Stage 2 (DESIGN §2 "Retargeting"): the retargeter, supervised by the joint head with heatmaps.

Sample: an identity image (a frame of the same video at another moment: the temporal bottleneck; on puppet data
also, with probability ``cross_identity_prob``, an exact cross-identity pair: identity B + driving A -> target B
doing A), a driving clip of T frames, and the target pose for every frame **in the identity image's frame**.

- identity image -> frozen VAE (``backbone.vae_encode``, normalised) -> identity latent ``[B,16,1,h,w]``;
- driving clip -> tokenizer (codebook always frozen; encoder frozen, or at ``lr * encoder_lr_scale``) -> codes;
- retargeter(identity latent, codes) -> ``[B,T,h/2,w/2,Dr]`` -> joint head -> heatmaps ``[B,T,J,h/2*up,w/2*up]``;
- loss = ``heatmap_weight * weighted heatmap MSE`` (+ ``vq_weight * commitment`` when the encoder trains).

Trains: retargeter (lr), joint head (``lr * joint_head_lr_scale``, 0 = frozen), encoder (see above).
``--init``: the stage-1 run (tokenizer, motion decoder, joint head; a retargeter too when continuing stage 2).
VAE: ``--vae`` or the one recorded by ``--init``. Export: ``DIR/export/bundle.safetensors`` with tokenizer,
motion_decoder, joint_head and retargeter, and ``manifest.json`` naming the VAE (stage 3 finds it there).
"""
from __future__ import annotations

from pathlib import Path

import torch
import torch.nn as nn

from ..backbone.wan import build_vae, load_vae, vae_encode
from ..config import BundleConfig
from ..errors import IMAnimError
from ..models.bundle import IMAnimationBundle, build_part, save_bundle
from ..models.tokenizer import preprocess_frames
from .data import CLIP_FPS, clip_batch, frame_heatmaps, make_source
from .inputs import copy_weights, find_vae, load_init, write_manifest
from .losses import keypoint_error, weighted_heatmap_mse
from .stage import Stage


def encoder_parameters(tokenizer) -> list:
    """The tokenizer's encoder side (everything but the codebook)."""
    return [p for n, p in tokenizer.named_parameters() if not n.startswith("quantize.")]


class RetargetModule(nn.Module):
    def __init__(self, tokenizer, retargeter, joint_head, encoder_trains: bool, heatmap_weight=1.0,
                 fg_weight=10.0, vq_weight=1.0, identity_pose_weight=0.0):
        super().__init__()
        self.tokenizer, self.retargeter, self.joint_head = tokenizer, retargeter, joint_head
        self.encoder_trains = encoder_trains
        self.heatmap_weight, self.fg_weight, self.vq_weight = heatmap_weight, fg_weight, vq_weight
        self.identity_pose_weight = identity_pose_weight

    def codes(self, pixels: torch.Tensor):
        """pixels [B,T,3,S,S] -> (codes [B,T,K,d], vq loss)."""
        b, t = pixels.shape[:2]
        with torch.set_grad_enabled(self.encoder_trains and torch.is_grad_enabled()):
            enc = self.tokenizer.encode(pixels.flatten(0, 1))
        return enc["codes"].reshape(b, t, *enc["codes"].shape[1:]), enc["loss"]

    def forward(self, batch):
        codes, vq = self.codes(batch["pixels"])
        aux = self.identity_pose_weight > 0
        tokens = self.retargeter(batch["identity_latent"], codes, return_identity=aux)
        if aux:
            tokens, ident = tokens
        hm = self.joint_head(tokens)
        l_hm = weighted_heatmap_mse(hm, batch["heatmaps"], self.fg_weight)
        loss = self.heatmap_weight * l_hm
        terms = {"heatmap": l_hm.detach(), "kp_err": keypoint_error(hm.detach(), batch["heatmaps"])}
        if aux:  # the identity's own pose, read from the identity path (see Retargeter.forward)
            l_id = weighted_heatmap_mse(self.joint_head(ident), batch["identity_heatmaps"], self.fg_weight)
            loss = loss + self.identity_pose_weight * l_id
            terms["identity_pose"] = l_id.detach()
        if self.encoder_trains:
            loss = loss + self.vq_weight * vq
        return loss, terms


def load_frozen_vae(cfg, device, dry: bool):
    """The VAE stages 2 and 3 encode with: frozen, eval, on ``device``; (vae, path or 'random')."""
    path = find_vae(cfg)
    if dry or path == "random":
        vae = build_vae(cfg.vae_preset)
    else:
        dtype = torch.bfloat16 if cfg.mixed_precision == "bf16" and cfg.preset == "real" else torch.float32
        vae = load_vae(path, dtype=dtype)
    vae.requires_grad_(False).eval()
    if not dry:
        vae.to(device)
    return vae, path


def identity_latent(vae, identity: torch.Tensor) -> torch.Tensor:
    """identity images [B,H,W,3] in [0,1] -> normalised latent [B,16,1,h,w]."""
    x = identity.permute(0, 3, 1, 2)[:, :, None] * 2.0 - 1.0
    return vae_encode(vae, x)


class Stage2(Stage):
    name = "stage2"

    def build(self) -> nn.Module:
        cfg = self.cfg
        init_cfg, init = load_init(cfg, self.dry)
        if init_cfg is None:
            if cfg.preset == "real":
                raise IMAnimError("train stage2 --preset real needs --init (the stage-1 run or bundle)")
            self.log("warning: stage 2 without --init: tokenizer, decoder and joint head start untrained")
        elif init_cfg.tokenizer is None:
            raise IMAnimError(f"--init {cfg.init!r} has no tokenizer; stage 2 starts from a stage-1 bundle")
        tok_cfg = init_cfg.tokenizer if init_cfg and init_cfg.tokenizer else cfg.tokenizer_config()
        head_cfg = init_cfg.joint_head if init_cfg and init_cfg.joint_head else cfg.joint_head_config()
        dec_cfg = (init_cfg.motion_decoder if init_cfg and init_cfg.motion_decoder
                   else cfg.motion_decoder_config().replace(token_dim=tok_cfg.token_dim,
                                                            joint_dim=head_cfg.joint_dim))
        ret_cfg = (init_cfg.retargeter if init_cfg and init_cfg.retargeter else
                   cfg.retargeter_config().replace(token_dim=tok_cfg.token_dim,
                                                   num_motion_tokens=tok_cfg.num_latent_tokens,
                                                   out_dim=head_cfg.joint_dim))
        fresh_driver = ret_cfg.driver_layers > 0 and not (init_cfg and init_cfg.retargeter)
        if fresh_driver:  # the driver-pose path is a copy of the stage-1 decoder (same layout, its weights)
            ret_cfg = ret_cfg.replace(driver_layers=dec_cfg.layers, driver_width=dec_cfg.width,
                                      driver_heads=dec_cfg.heads, driver_grid=dec_cfg.grid)
        self.bundle_config = BundleConfig(tokenizer=tok_cfg, motion_decoder=dec_cfg, joint_head=head_cfg,
                                          retargeter=ret_cfg)
        parts = {p: build_part(p, getattr(self.bundle_config, p)) for p in self.bundle_config.parts}
        self.loaded = []
        if init is not None:
            for p, m in parts.items():
                if getattr(init, p, None) is not None:
                    copy_weights(m, getattr(init, p), p)
                    self.loaded.append(p)
            if fresh_driver and getattr(init, "motion_decoder", None) is not None:
                copy_weights(parts["retargeter"].driver, init.motion_decoder, "retargeter.driver")
                self.loaded.append("retargeter.driver (from motion_decoder)")
        tok = parts["tokenizer"]
        tok.requires_grad_(False)
        self.encoder_trains = cfg.encoder_lr_scale > 0
        for p in encoder_parameters(tok):
            p.requires_grad_(self.encoder_trains)
        parts["joint_head"].requires_grad_(cfg.joint_head_lr_scale > 0)
        self.motion_decoder = parts["motion_decoder"].requires_grad_(False)  # exported as is, not trained
        module = RetargetModule(tok, parts["retargeter"], parts["joint_head"], self.encoder_trains,
                                cfg.heatmap_weight, cfg.heatmap_fg_weight, cfg.vq_weight, cfg.identity_pose_weight)
        self.vae, self.vae_path = load_frozen_vae(cfg, self.device, self.dry)
        self.grid = (cfg.height // 16, cfg.width // 16)
        if not self.dry:
            module.to(self.device)
            self.source = make_source(cfg, 2, cfg.num_frames, fps=CLIP_FPS)
            if ret_cfg.code_norm and "retargeter" not in self.loaded:
                self._code_stats(module)
        return module

    def _code_stats(self, module, batches: int = 8) -> None:
        """code_norm: the codes' statistics over a few training batches (far from the samples the run starts on)."""
        codes = []
        with torch.no_grad():
            for i in range(batches):
                b = self.load_batch(torch.Generator().manual_seed(i), 10_000_000 + i * self.cfg.batch_size)
                codes.append(module.codes(b["pixels"].to(self.device))[0].cpu())
        module.retargeter.set_code_stats(torch.cat(codes))
        std = module.retargeter.code_std
        self.log(f"stage 2: code_norm from {sum(c.shape[0] * c.shape[1] for c in codes)} frames: code std per "
                 f"token/channel {float(std.min()):.4f}..{float(std.max()):.4f}")

    def param_groups(self) -> list:
        m, cfg = self.module, self.cfg
        groups = [{"name": "retargeter", "params": list(m.retargeter.parameters()), "lr_scale": 1.0}]
        if cfg.joint_head_lr_scale > 0:
            groups.append({"name": "joint_head", "params": list(m.joint_head.parameters()),
                           "lr_scale": cfg.joint_head_lr_scale})
        if self.encoder_trains:
            groups.append({"name": "encoder", "params": encoder_parameters(m.tokenizer),
                           "lr_scale": cfg.encoder_lr_scale})
        return groups

    def describe(self) -> str:
        c = self.cfg
        enc = f"encoder at lr x {c.encoder_lr_scale:g}" if self.encoder_trains else "encoder frozen"
        head = f"joint_head at lr x {c.joint_head_lr_scale:g}" if c.joint_head_lr_scale > 0 else "joint_head frozen"
        init = f"; from {c.init}: {', '.join(self.loaded) or 'nothing'}" if c.init else ""
        return (f"stage 2: trains retargeter, {head}; {enc}, codebook frozen, VAE frozen ({self.vae_path}){init}; "
                f"clips of {c.num_frames} frames at {c.height}x{c.width}, heatmaps "
                f"{self.grid[0] * self.bundle_config.joint_head.upsample}x"
                f"{self.grid[1] * self.bundle_config.joint_head.upsample}, cross-identity share "
                f"{c.cross_identity_prob if not c.data else 0:g}")

    def load_batch(self, gen, sample_offset):
        cfg = self.cfg
        b = clip_batch(self.source, sample_offset, cfg.batch_size)
        frames = b["frames"]  # [B,T,H,W,3]
        bsz, t, h, w, _ = frames.shape
        if (h, w) != (cfg.height, cfg.width) or tuple(b["identity"].shape[1:3]) != (h, w):
            raise IMAnimError(f"train {cfg.stage}: the data gave {h}x{w} clips and "
                              f"{tuple(b['identity'].shape[1:3])} identity images, expected {cfg.height}x{cfg.width}")
        s = self.bundle_config.tokenizer.image_size
        pixels = preprocess_frames(frames.flatten(0, 1), s).reshape(bsz, t, 3, s, s)
        up = self.bundle_config.joint_head.upsample
        hm = frame_heatmaps(b["target_keypoints"], b["target_visibility"], h, w, self.grid, up, cfg.heatmap_sigma)
        out = {"pixels": pixels, "identity": b["identity"], "heatmaps": hm}
        if cfg.identity_pose_weight > 0:
            if "identity_keypoints" not in b:
                raise IMAnimError("--identity-pose-weight: the data give no keypoints for the identity images")
            out["identity_heatmaps"] = frame_heatmaps(b["identity_keypoints"][:, None], b["identity_visibility"][:, None],
                                                      h, w, self.grid, up, cfg.heatmap_sigma)
        return out

    def prepare(self, batch):
        batch["identity_latent"] = identity_latent(self.vae, batch.pop("identity"))
        return batch

    def export(self, module, export_dir: Path) -> dict:
        b = IMAnimationBundle(config=self.bundle_config, tokenizer=module.tokenizer,
                              motion_decoder=self.motion_decoder, joint_head=module.joint_head,
                              retargeter=module.retargeter)
        path = save_bundle(b, Path(export_dir) / "bundle.safetensors",
                           metadata={"stage": "stage2", "step": str(self.step), "preset": self.cfg.preset})
        vae = None if self.vae_path == "random" else str(Path(self.vae_path).resolve())
        man = write_manifest(export_dir, {"stage": "stage2", "step": self.step, "bundle": str(Path(path).resolve()),
                                          "parts": self.bundle_config.parts, "vae": vae,
                                          "video_size": [self.cfg.height, self.cfg.width]})
        return {"bundle": path, "manifest": man}
