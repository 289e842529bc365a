"""Stage 3 (DESIGN §2, §3): the video model with motion injection and the reference frame, by flow matching.

Per sample: the target video (the identity doing the driving motion: the driving clip itself for temporal pairs,
B doing A for puppet cross-identity pairs) -> frozen VAE -> normalised latents ``x0 [B,16,T',h,w]``; the identity
image -> frozen VAE -> ``[B,16,1,h,w]``, appended **clean** in time (no loss on it); the driving clip ->
tokenizer codes -> retargeter(identity latent, codes) -> tokens ``[B,T,h/2,w/2,Dr]`` -> injector (attached to the
DiT's ``patch_embedding``) -> added to the noisy latent tokens. Loss: Wan flow matching (``backbone.flow``) with a
zero text context; plus ``0.1 * heatmap_weight`` x the heatmap loss on the retargeted tokens whenever the
retargeter trains (keeps its tokens tied to the pose).

What trains (``--dit-training`` / ``--lora-rank`` / ``--end-to-end``):
- ``full`` (tiny preset): the whole DiT + injector; retargeter at ``lr * retargeter_lr_scale`` (0 = frozen, the tiny
  preset: its tokens are then computed once per sample with the frozen VAE latents and cached in the sample pool;
  with batch 8 that is ~3x the samples per second of v2's batch 2 with the retargeter training);
- ``adapter`` (real preset default): the injector only (+ retargeter as above), DiT frozen;
- ``lora``: LoRA (rank ``--lora-rank``, peft) on the DiT's self/cross-attention q, k, v, o + injector;
- ``--end-to-end``: also the retargeter and the tokenizer's encoder (at their lr scales, at least 0.1).
The codebook, the joint head, the motion decoder and the VAE stay frozen.

Inputs: ``--init`` (stage-2 run or bundle; a stage-3 run to continue), ``--dit`` (Wan DiT file, original layout;
tiny default: a fresh tiny DiT, or ``--init``'s exported DiT), ``--vae`` (or found through ``--init``).
Exports (``DIR/export/``): ``bundle.safetensors`` (all five parts, injector ``dit_dim`` = DiT width),
``dit.safetensors`` (original Wan layout; LoRA merged), ``lora.safetensors`` (LoRA only, ComfyUI key format),
``vae.safetensors`` (a copy of the VAE used) and ``manifest.json``.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch
import torch.nn as nn

from ..backbone.convert import dit_config_from_shapes, dit_diffusers_to_original
from ..backbone.flow import flow_matching_loss, zero_context
from ..backbone.wan import build_dit, dit_state_dict, load_dit, save_dit, save_vae, vae_encode
from ..config import BundleConfig
from ..defaults import DEFAULT_SHIFT
from ..errors import CheckpointError, IMAnimError
from ..io.atomic import copy_file, save_safetensors
from ..io.paths import run_file
from ..models.bundle import IMAnimationBundle, build_part, save_bundle
from ..models.injector import attach_to
from ..models.released import read_safetensors_header
from ..models.tokenizer import preprocess_frames
from .data import CLIP_FPS, frame_heatmaps, make_source
from .inputs import copy_weights, load_init, write_manifest
from .losses import latent_weight, weighted_heatmap_mse
from .stage import PooledClipStage
from .stage2 import encoder_parameters, identity_latent, load_frozen_vae

LORA_TARGETS = r".*blocks\.\d+\.attn[12]\.(to_q|to_k|to_v|to_out\.0)"
AUX_HEATMAP_SCALE = 0.1


def flow_weight(cfg, batch: dict) -> dict:
    """``{"weight": [B,1,T',h,w]}`` for the flow loss when ``cfg.flow_fg_weight > 0`` and the data give character
    masks (the puppet world), else ``{}`` (plain MSE)."""
    if cfg.flow_fg_weight <= 0 or "target_masks" not in batch:
        return {}
    return {"weight": latent_weight(batch["target_masks"], cfg.flow_fg_weight)}


class VideoModule(nn.Module):
    """Holds the DiT (with the injector attached to its patch embedding) and the motion path."""

    def __init__(self, dit, injector, retargeter, tokenizer, joint_head, encoder_trains: bool,
                 retargeter_trains: bool, text_len: int, aux_weight: float, fg_weight: float,
                 flow_shift: float = DEFAULT_SHIFT):
        super().__init__()
        self.dit, self.injector, self.retargeter = dit, injector, retargeter
        self.tokenizer, self.joint_head = tokenizer, joint_head
        self.encoder_trains, self.retargeter_trains = encoder_trains, retargeter_trains
        self.text_len, self.aux_weight, self.fg_weight = text_len, aux_weight, fg_weight
        self.flow_shift = flow_shift

    def motion_tokens(self, batch):
        """The retargeted tokens: cached with the batch (frozen encoder and retargeter, ``Stage3.frozen_outputs``),
        or from the cached codes (frozen encoder), or from the pixels."""
        if "tokens" in batch:
            return batch["tokens"].to(batch["latents"].dtype)
        grad = torch.is_grad_enabled()
        if "codes" in batch:
            codes = batch["codes"]
        else:
            pixels = batch["pixels"]
            b, t = pixels.shape[:2]
            with torch.set_grad_enabled(self.encoder_trains and grad):
                codes = self.tokenizer.encode(pixels.flatten(0, 1))["codes"]
            codes = codes.reshape(b, t, *codes.shape[1:])
        with torch.set_grad_enabled(self.retargeter_trains and grad):
            return self.retargeter(batch["reference"], codes)

    def forward(self, batch):
        ref, x0 = batch["reference"], batch["latents"]
        tokens = self.motion_tokens(batch)
        b = x0.shape[0]
        ctx = zero_context(b, self.text_len, self.dit.config.text_dim, device=x0.device)
        fm = flow_matching_loss(self.dit, x0, ctx, reference=ref, motion=tokens, shift=self.flow_shift,
                                weight=batch.get("weight"))
        loss, terms = fm, {"flow": fm.detach()}
        if self.retargeter_trains and self.aux_weight > 0 and "heatmaps" in batch:
            hm = weighted_heatmap_mse(self.joint_head(tokens), batch["heatmaps"], self.fg_weight)
            loss = loss + self.aux_weight * hm
            terms["heatmap"] = hm.detach()
        return loss, terms


def _resolve_dit_file(cfg) -> str | None:
    if cfg.dit:
        p = run_file(cfg.dit, "dit.safetensors")
        if not p.is_file():
            raise CheckpointError(f"--dit {cfg.dit!r} does not exist (expected a Wan DiT file, original layout)")
        return str(p)
    if cfg.init and Path(cfg.init).is_dir() and run_file(cfg.init, "dit.safetensors").is_file():
        return str(run_file(cfg.init, "dit.safetensors"))
    if cfg.preset == "real":
        raise IMAnimError("train stage3 --preset real needs --dit (the Wan 2.1 DiT file to adapt, original layout)")
    return None


def _add_lora(dit, rank: int, alpha: float):
    try:
        from peft import LoraConfig, inject_adapter_in_model
    except Exception as e:  # noqa: BLE001 - environment problem, reported plainly
        raise IMAnimError(f"--lora-rank needs the peft package (pip install 'peft>=0.13'); importing it failed: "
                          f"{type(e).__name__}: {e}") from None
    conf = LoraConfig(r=int(rank), lora_alpha=float(alpha), target_modules=LORA_TARGETS, lora_dropout=0.0,
                      init_lora_weights=True)
    inject_adapter_in_model(conf, dit)
    n = sum(1 for name, _ in dit.named_parameters() if "lora_" in name)
    if n == 0:
        raise IMAnimError("--lora-rank: no attention layer of the DiT matched the LoRA targets")
    return conf


def lora_layers(dit) -> dict:
    """{module name: peft LoRA layer} inside the DiT."""
    try:
        from peft.tuners.lora import LoraLayer
    except Exception:  # noqa: BLE001
        return {}
    return {n: m for n, m in dit.named_modules() if isinstance(m, LoraLayer)}


def merged_dit_state_dict(dit) -> dict:
    """The DiT's weights (diffusers layout, no injector) with any LoRA merged into the base weights."""
    sd = dit_state_dict(dit)
    layers = lora_layers(dit)
    if not layers:
        return sd
    out = {}
    for k, v in sd.items():
        if ".lora_" in k:
            continue
        out[k.replace(".base_layer.", ".")] = v
    with torch.no_grad():
        for name, layer in layers.items():
            key = f"{name}.weight"
            out[key] = out[key] + layer.get_delta_weight("default").to(out[key].dtype)
    return out


def lora_comfy_state_dict(dit, alpha: float) -> dict:
    """LoRA weights in ComfyUI's key format: ``diffusion_model.<original module>.lora_A/lora_B.weight`` + alpha."""
    out = {}
    for name, layer in lora_layers(dit).items():
        orig = next(iter(dit_diffusers_to_original({f"{name}.weight": 0})))[: -len(".weight")]
        out[f"diffusion_model.{orig}.lora_A.weight"] = layer.lora_A["default"].weight.detach()
        out[f"diffusion_model.{orig}.lora_B.weight"] = layer.lora_B["default"].weight.detach()
        out[f"diffusion_model.{orig}.alpha"] = torch.tensor(float(alpha))
    return out


def finish_build(stage: PooledClipStage, module: nn.Module) -> nn.Module:
    """The end of a stage-3-recipe ``build``: the frozen VAE (``stage.vae``, ``stage.vae_path``), then (unless dry)
    the module on the device and the stage-3 clip source (``stage.source``)."""
    cfg = stage.cfg
    stage.vae, stage.vae_path = load_frozen_vae(cfg, stage.device, stage.dry)
    if not stage.dry:
        module.to(stage.device)
        stage.source = make_source(cfg, 3, cfg.num_frames, fps=CLIP_FPS)
    return module


def dit_groups(module: nn.Module, mode: str) -> list:
    """Parameter groups of the injector and of the DiT's trained weights (without the injector's)."""
    injector_ids = {id(p) for p in module.injector.parameters()}
    dit_params = [p for p in module.dit.parameters() if p.requires_grad and id(p) not in injector_ids]
    groups = [{"name": "injector", "params": list(module.injector.parameters()), "lr_scale": 1.0}]
    if dit_params:
        groups.append({"name": f"dit ({mode})", "params": dit_params, "lr_scale": 1.0})
    return groups


class Stage3(PooledClipStage):
    name = "stage3"
    find_unused_parameters = False

    def build(self) -> nn.Module:
        cfg = self.cfg
        mode = cfg.effective_dit_training
        init_cfg, init = load_init(cfg, self.dry)
        if init_cfg is None or init_cfg.retargeter is None or init_cfg.tokenizer is None:
            if cfg.preset == "real" or init_cfg is not None:
                raise IMAnimError("train stage3 needs --init: the stage-2 run or bundle (tokenizer + retargeter)")
            self.log("warning: stage 3 without --init: tokenizer and retargeter start untrained")
        # the DiT
        self.dit_file = _resolve_dit_file(cfg)
        if self.dit_file and not self.dry:
            dit = load_dit(self.dit_file)
        else:
            if self.dit_file:
                meta, tensors = read_safetensors_header(self.dit_file)
                conf = json.loads(meta["config"]) if "config" in meta else dit_config_from_shapes(
                    {k: v[1] for k, v in tensors.items()})
                dit = build_dit(conf)
            else:
                dit = build_dit(cfg.dit_preset)
        if not self.dry and mode != "full" and cfg.mixed_precision == "bf16":
            dit.to(torch.bfloat16)  # frozen base weights: half the memory; trained parts stay float32
        dit_dim = int(dit.config.num_attention_heads * dit.config.attention_head_dim)
        # the IM-Animation parts
        tok_cfg = init_cfg.tokenizer if init_cfg and init_cfg.tokenizer else cfg.tokenizer_config()
        head_cfg = init_cfg.joint_head if init_cfg and init_cfg.joint_head else cfg.joint_head_config()
        dec_cfg = (init_cfg.motion_decoder if init_cfg and init_cfg.motion_decoder else
                   cfg.motion_decoder_config().replace(token_dim=tok_cfg.token_dim, joint_dim=head_cfg.joint_dim))
        ret_cfg = (init_cfg.retargeter if init_cfg and init_cfg.retargeter else
                   cfg.retargeter_config().replace(token_dim=tok_cfg.token_dim,
                                                   num_motion_tokens=tok_cfg.num_latent_tokens,
                                                   out_dim=head_cfg.joint_dim))
        inj_cfg = cfg.injector_config(dit_dim).replace(in_dim=ret_cfg.out_dim)
        if init_cfg and init_cfg.injector is not None:
            if init_cfg.injector.dit_dim != dit_dim:
                self.log(f"note: --init's injector is for a DiT of width {init_cfg.injector.dit_dim}; "
                         f"starting a new injector for width {dit_dim}")
            else:
                inj_cfg = init_cfg.injector
        self.bundle_config = BundleConfig(tokenizer=tok_cfg, motion_decoder=dec_cfg, joint_head=head_cfg,
                                          retargeter=ret_cfg, injector=inj_cfg)
        parts = {p: build_part(p, getattr(self.bundle_config, p)) for p in self.bundle_config.parts}
        self.loaded = []
        if init is not None:
            for p, m in parts.items():
                src = getattr(init, p, None)
                if src is not None and (p != "injector" or init_cfg.injector == inj_cfg):
                    copy_weights(m, src, p)
                    self.loaded.append(p)
        # what trains
        self.encoder_scale = max(cfg.encoder_lr_scale, 0.1) if cfg.end_to_end else cfg.encoder_lr_scale
        self.retargeter_scale = max(cfg.retargeter_lr_scale, 0.1) if cfg.end_to_end else cfg.retargeter_lr_scale
        tok = parts["tokenizer"].requires_grad_(False)
        for p in encoder_parameters(tok):
            p.requires_grad_(self.encoder_scale > 0)
        parts["retargeter"].requires_grad_(self.retargeter_scale > 0)
        if self.retargeter_scale == 0:
            parts["retargeter"].frame_chunk = 8  # frozen: bound its attention memory (same results)
        parts["joint_head"].requires_grad_(False)
        self.motion_decoder = parts["motion_decoder"].requires_grad_(False)
        dit.requires_grad_(mode == "full")
        self.lora_alpha = float(cfg.lora_alpha if cfg.lora_alpha is not None else cfg.lora_rank)
        if mode == "lora":
            _add_lora(dit, cfg.lora_rank, self.lora_alpha)
            for n, p in dit.named_parameters():
                p.requires_grad_("lora_" in n)
                if "lora_" in n and p.dtype != torch.float32:
                    p.data = p.data.float()
        dit.train()
        attach_to(dit, parts["injector"])
        parts["injector"].requires_grad_(True)
        self.mode = mode
        module = VideoModule(dit, parts["injector"], parts["retargeter"], tok, parts["joint_head"],
                             encoder_trains=self.encoder_scale > 0, retargeter_trains=self.retargeter_scale > 0,
                             text_len=cfg.text_len, aux_weight=AUX_HEATMAP_SCALE * cfg.heatmap_weight,
                             fg_weight=cfg.heatmap_fg_weight, flow_shift=cfg.flow_shift)
        self.grid = (cfg.height // 16, cfg.width // 16)
        return finish_build(self, module)

    def param_groups(self) -> list:
        m = self.module
        groups = dit_groups(m, self.mode)
        if self.retargeter_scale > 0:
            groups.append({"name": "retargeter", "params": list(m.retargeter.parameters()),
                           "lr_scale": self.retargeter_scale})
        if self.encoder_scale > 0:
            groups.append({"name": "encoder", "params": encoder_parameters(m.tokenizer),
                           "lr_scale": self.encoder_scale})
        return groups

    def describe(self) -> str:
        c = self.cfg
        what = {"full": "the whole DiT", "adapter": "no DiT weights (adapter only)",
                "lora": f"LoRA rank {c.lora_rank} on the DiT attention"}[self.mode]
        ret = f"retargeter at lr x {self.retargeter_scale:g}" if self.retargeter_scale > 0 else "retargeter frozen"
        enc = f"encoder at lr x {self.encoder_scale:g}" if self.encoder_scale > 0 else "encoder frozen"
        src = self.dit_file or f"a fresh '{c.dit_preset}' DiT"
        init = f"; from {c.init}: {', '.join(self.loaded) or 'nothing'}" if c.init else ""
        return (f"stage 3: trains {what} + injector; {ret}, {enc}; codebook, joint head, VAE frozen; DiT from {src}; "
                f"VAE {self.vae_path}{init}; clips of {c.num_frames} frames at {c.height}x{c.width}; flow shift "
                f"{c.flow_shift:g}, character weight x {1 + c.flow_fg_weight:g}")

    # data: ``clip_inputs`` (CPU) and ``frozen_outputs`` (device) for ``PooledClipStage``'s sample pool
    def clip_inputs(self, b: dict) -> dict:
        cfg = self.cfg
        frames = b["frames"]
        bsz, t, h, w, _ = frames.shape
        if (t - 1) % 4:
            raise IMAnimError(f"train stage3: clips must have 4n+1 frames, the data gave {t}")
        if (h, w) != (cfg.height, cfg.width):
            raise IMAnimError(f"train stage3: the data gave {h}x{w} clips, expected {cfg.height}x{cfg.width}")
        s = self.bundle_config.tokenizer.image_size
        out = {"pixels": preprocess_frames(frames.flatten(0, 1), s).reshape(bsz, t, 3, s, s),
               "identity": b["identity"], "target": b["target"]}
        out.update(flow_weight(cfg, b))
        if self.retargeter_scale > 0:
            out["heatmaps"] = frame_heatmaps(b["target_keypoints"], b["target_visibility"], h, w, self.grid,
                                             self.bundle_config.joint_head.upsample, cfg.heatmap_sigma)
        return out

    def frozen_outputs(self, batch: dict) -> dict:
        out = {k: v for k, v in batch.items() if k in ("pixels", "heatmaps", "weight")}
        out["reference"] = identity_latent(self.vae, batch["identity"])
        video = batch["target"].permute(0, 4, 1, 2, 3) * 2.0 - 1.0  # [B,3,T,H,W]
        out["latents"] = vae_encode(self.vae, video)
        if self.encoder_scale == 0:  # frozen encoder: codes now, not in the trained module
            pixels = out.pop("pixels")
            b, t = pixels.shape[:2]
            codes = self.module.tokenizer.encode(pixels.flatten(0, 1))["codes"]
            out["codes"] = codes.reshape(b, t, *codes.shape[1:])
            if self.retargeter_scale == 0:  # frozen retargeter too: cache its tokens (~2/3 of a step's time)
                out["tokens"] = self.module.retargeter(out["reference"], out.pop("codes")).float()
        return out

    def export(self, module, export_dir: Path) -> dict:
        export_dir = Path(export_dir)
        files = {}
        b = IMAnimationBundle(config=self.bundle_config, tokenizer=module.tokenizer,
                              motion_decoder=self.motion_decoder, joint_head=module.joint_head,
                              retargeter=module.retargeter, injector=module.injector)
        files["bundle"] = save_bundle(b, export_dir / "bundle.safetensors",
                                      metadata={"stage": "stage3", "step": str(self.step), "preset": self.cfg.preset,
                                                "dit_training": self.mode})
        dit = module.dit
        if self.mode == "lora":
            sd = merged_dit_state_dict(dit)
            with torch.device("meta"):
                plain = build_dit(dict(dit.config))
            plain.load_state_dict(sd, strict=True, assign=True)
            files["dit"] = save_dit(plain, export_dir / "dit.safetensors")
            lora = {k: v.contiguous().cpu() for k, v in lora_comfy_state_dict(dit, self.lora_alpha).items()}
            save_safetensors(lora, export_dir / "lora.safetensors",
                             {"format": "lora", "rank": str(self.cfg.lora_rank)})
            files["lora"] = export_dir / "lora.safetensors"
        else:
            files["dit"] = save_dit(dit, export_dir / "dit.safetensors")
        vae_dst = export_dir / "vae.safetensors"
        if self.vae_path == "random":
            files["vae"] = save_vae(self.vae, vae_dst)
        elif Path(self.vae_path).resolve() != vae_dst.resolve():
            files["vae"] = copy_file(self.vae_path, vae_dst)
        else:
            files["vae"] = vae_dst
        files["manifest"] = write_manifest(export_dir, {
            "stage": "stage3", "step": self.step, "dit_training": self.mode,
            "bundle": str(Path(files["bundle"]).resolve()), "dit": str(Path(files["dit"]).resolve()),
            "vae": str(vae_dst.resolve()), "vae_source": self.vae_path, "parts": self.bundle_config.parts,
            "video_size": [self.cfg.height, self.cfg.width], "num_frames": self.cfg.num_frames,
            "text": "zero context (no text)"})
        return files
