"""Stage ``vae`` (tiny preset only): the tiny video VAE (``backbone`` preset 'tiny': the TAEHV-layout
:class:`~imanim_core.backbone.taehv.TinyVideoVAE`, Wan 2.1 latent space) on puppet clips, or on a video folder with
``--data``. ``--vae-preset wan2.1-tiny`` trains a base-dim-16 Wan 2.1 ``AutoencoderKLWan`` instead (the embedded
model's VAE up to v1; it plateaued at ~19 dB on a CPU budget).

Tiny video VAE: loss = character-weighted MSE (``--vae-loss``, tiny preset ``mse``; ``l1`` before v3) +
``latent_reg_weight`` x (mean^2 + log(std / 0.6)^2) of each channel
of the normalised latent (target std 0.6: the decoder soft-clamps raw latents at about +-3 and Wan 2.1 stds reach 3.3,
so std 1 drives it into saturation. The v2 run was colourless at ~18.7 dB with target 1 after 1119 steps and got its
colours within 400 steps of switching to 0.6; a fixed-batch probe learned colour with either target, so the clamp
is the likely cause, not a proven one). Trained on random 64-px crops
(``--vae-crop``) in bf16 autocast. Why MSE (measured): overfitting one fixed batch of 4 images, L1 reached
21.6 dB after 200 steps and MSE 26.8 dB (36 dB after 400 at lr 1e-3); on puppet clips MSE was ~1 dB ahead of
L1 at equal steps early on. PSNR is what the gates measure, and L1 spends its gradient on the many background
pixels that are already almost right. MSE needs the warm-up: at lr 2e-3 without one a fresh VAE diverged.
A fresh tiny VAE starts from :meth:`TinyVideoVAE.init_for_training`, whose colour path makes it an exact
"8x8-block colour" autoencoder before any step (24.3 dB whole frame on the held-out clips at step 0, against
23.9 dB for v2 after 1850 steps; v2 had learned almost no colour: a flat green going 0.2 -> 0.7 decoded as
0.34 -> 0.39). On training crops it passed v2's final 20.1 dB within 125 steps.
The rest of this docstring describes the Wan 2.1 structure.

Clips of ``num_frames`` = 1 + 4n frames (default 5) at ``height x width`` (default 128 x 128), values in [-1, 1].
Loss: ``weighted L1(reconstruction, clip) + kl_weight * KL``, where the KL is taken for the **normalised** posterior
(``(mu - mean_c) / std_c``, ``sigma / std_c`` with the Wan 2.1 channel statistics of ``backbone.latents``) against
N(0, 1). Every host normalises this VAE's latents with the Wan 2.1 statistics, so this term is what keeps the
normalised latents the DiT sees roughly unit-scaled. It must stay weak: at ``kl_weight`` 1e-3 (v0 of the embedded
model) the posterior collapsed (normalised sigma 0.68 against a mean std of 0.4, so the latents were mostly noise
and the decoder learned a grey blur); the tiny preset uses 1e-5. When the data give character masks (the puppet
world does), pixels of the character weigh ``1 + fg_weight`` in the L1 (``--vae-fg-weight``, tiny preset 4): the
character is a small part of the frame and is what the video model must reproduce. Logged: ``l1`` (unweighted),
``kl``, ``psnr`` (dB) and ``latent_std`` (std of the normalised posterior means; ~1 is what the DiT expects).

``--init``: a VAE file or a `train vae` run directory to continue from. Export: ``DIR/export/vae.safetensors``
(original Wan layout, loadable by ``backbone.load_vae`` and ComfyUI's stock VAE loader).
"""
from __future__ import annotations

from pathlib import Path

import torch
import torch.nn as nn

from ..backbone.latents import LATENTS_MEAN, latent_stats
from ..backbone.wan import build_vae, load_vae, save_vae
from ..errors import CheckpointError, IMAnimError
from ..io.paths import run_file
from .data import CLIP_FPS, collate, make_source
from .inputs import write_manifest
from .seeding import mix_seed
from .stage import Stage

INIT_LOGVAR = -6.0
# tiny video VAE: target std of the normalised latent. Its decoder soft-clamps raw latents at about +-3 and
# Wan 2.1 stds reach 3.3, so std 1 saturates it; 0.6 keeps raw values in range (see the module docstring).
LATENT_TARGET_STD = 0.6


def start_sharp(vae) -> None:
    """A fresh VAE starts with a sharp posterior: the log-variance half of ``quant_conv`` gets bias
    ``INIT_LOGVAR`` (sigma ~0.05) and 1/10 of its weights. With diffusers' default init sigma is ~1 against a
    posterior mean of ~0.1, so the decoder sees almost pure noise, learns to ignore z and outputs the mean colour
    (a plateau at ~15 dB that the v0 training never left)."""
    conv = vae.quant_conv
    z = conv.weight.shape[0] // 2
    with torch.no_grad():
        conv.bias[z:].fill_(INIT_LOGVAR)
        conv.weight[z:].mul_(0.1)


class VAEModule(nn.Module):
    def __init__(self, vae, kl_weight: float, fg_weight: float = 0.0, latent_reg_weight: float = 0.0,
                 loss: str = "l1", decoder_only: bool = False):
        super().__init__()
        self.decoder_only = bool(decoder_only)
        if self.decoder_only:
            vae.encoder.requires_grad_(False)
        self.loss = loss
        self.vae = vae
        self.kl_weight = kl_weight
        self.fg_weight = fg_weight
        self.latent_reg_weight = latent_reg_weight

    def _rec_loss(self, rec, x, batch):
        diff = rec.float() - x.float()
        l1 = diff.abs().mean()
        err = diff.pow(2) if self.loss == "mse" else diff.abs()
        rec_loss = err.mean()
        if self.fg_weight > 0 and batch.get("masks") is not None:
            w = 1.0 + self.fg_weight * batch["masks"].to(err.dtype)[:, None]  # [B,1,T,H,W]
            rec_loss = (err * w).mean() / w.mean()
        with torch.no_grad():
            mse = (rec.float() - x.float()).pow(2).mean().clamp_min(1e-10)
            psnr = 10.0 * torch.log10(4.0 / mse)
        return l1, rec_loss, psnr

    def forward(self, batch):
        x = batch["video"]
        mean, std = latent_stats(5, x.device, torch.float32)
        if getattr(self.vae, "is_tiny_video_vae", False):
            # deterministic autoencoder: reconstruction + a weak pull of the normalised latent's per-channel
            # statistics towards mean 0 / std 1 (what the DiT expects; every host normalises with Wan 2.1's stats)
            with torch.set_grad_enabled(torch.is_grad_enabled() and not self.decoder_only):
                z = self.vae.encode_raw(x)
            zn = (z.float() - mean) / std
            if batch.get("latent_noise") is not None:  # in normalised units, what the DiT's errors are measured in
                z = z + (batch["latent_noise"].to(z.device) * std).to(z.dtype)
            rec = self.vae.decode_raw(z)
            l1, rec_loss, psnr = self._rec_loss(rec, x, batch)
            if self.decoder_only:  # the latents are fixed: no statistics term
                return rec_loss, {"l1": l1.detach(), "psnr": psnr, "latent_std": zn.detach().std()}
            m = zn.mean(dim=(0, 2, 3, 4))
            sd = zn.std(dim=(0, 2, 3, 4))
            reg = (m.pow(2) + torch.log(sd.clamp_min(1e-4) / LATENT_TARGET_STD).pow(2)).mean()
            loss = rec_loss + self.latent_reg_weight * reg
            return loss, {"l1": l1.detach(), "latent_reg": reg.detach(), "psnr": psnr,
                          "latent_std": zn.detach().std(), "latent_mean": zn.detach().mean()}
        post = self.vae.encode(x).latent_dist
        z = post.sample()
        rec = self.vae.decode(z).sample
        l1, rec_loss, psnr = self._rec_loss(rec, x, batch)
        mu_n = (post.mean.float() - mean) / std
        var_n = post.var.float() / (std * std)
        kl = 0.5 * (mu_n.pow(2) + var_n - 1.0 - torch.log(var_n.clamp_min(1e-12))).mean()
        loss = rec_loss + self.kl_weight * kl
        return loss, {"l1": l1.detach(), "kl": kl.detach(), "psnr": psnr, "latent_std": mu_n.detach().std()}


class VAEStage(Stage):
    name = "vae"

    def build(self) -> nn.Module:
        cfg = self.cfg
        if cfg.init:
            p = run_file(cfg.init, "vae.safetensors")
            if not p.is_file():
                raise CheckpointError(f"--init {cfg.init!r}: expected a VAE file or a `train vae` run directory")
            vae = build_vae(cfg.vae_preset) if self.dry else load_vae(p)
        else:
            vae = build_vae(cfg.vae_preset)
            if getattr(vae, "is_tiny_video_vae", False):
                vae.init_for_training(LATENTS_MEAN)
            else:
                start_sharp(vae)
        vae.train()
        if not self.dry:
            vae.to(self.device)
            # stage-2 samples: the target clip comes with character masks in the puppet world
            self.source = make_source(cfg, 2, cfg.num_frames, fps=CLIP_FPS)
        if (cfg.decoder_only or cfg.latent_noise > 0) and not getattr(vae, "is_tiny_video_vae", False):
            raise IMAnimError("train vae --decoder-only / --latent-noise: only for the tiny video VAE (vae preset "
                              f"'tiny'), not {cfg.vae_preset!r}")
        return VAEModule(vae, cfg.kl_weight, cfg.vae_fg_weight, cfg.latent_reg_weight, cfg.vae_loss,
                         cfg.decoder_only)

    def param_groups(self) -> list:
        return [{"name": "vae", "params": [p for p in self.module.parameters() if p.requires_grad], "lr_scale": 1.0}]

    def describe(self) -> str:
        c = self.cfg
        if c.vae_preset == "tiny":
            crop = f", {c.vae_crop}-px crops" if c.vae_crop else ""
            noise = f", latent noise up to {c.latent_noise:g}" if c.latent_noise > 0 else ""
            if c.decoder_only:
                return (f"stage vae: trains the tiny video VAE's decoder (encoder of {c.init} frozen) on "
                        f"{c.num_frames}-frame clips at {c.height}x{c.width}{crop}{noise} ({c.vae_loss.upper()} with "
                        f"character pixels x {1 + c.vae_fg_weight:g} where masks exist)")
            return (f"stage vae: trains the tiny video VAE (TAEHV layout){noise} on {c.num_frames}-frame clips at "
                    f"{c.height}x{c.width}{crop} ({c.vae_loss.upper()} with character pixels x {1 + c.vae_fg_weight:g} where masks exist + "
                    f"{c.latent_reg_weight:g} x latent statistics)")
        return (f"stage vae: trains the whole tiny Wan 2.1 VAE on {c.num_frames}-frame clips at {c.height}x{c.width} "
                f"({c.vae_loss.upper()} with character pixels x {1 + c.vae_fg_weight:g} where masks exist + {c.kl_weight:g} x KL of the "
                f"normalised posterior)")

    def load_batch(self, gen, sample_offset):
        samples = self.source.samples(sample_offset, self.cfg.batch_size)
        key = "target" if "target" in samples[0] else "frames"
        with_masks = key == "target" and all("target_masks" in s for s in samples)
        b = collate(samples, [key] + (["target_masks"] if with_masks else []))
        video = b[key].permute(0, 4, 1, 2, 3).contiguous() * 2.0 - 1.0  # [B,3,T,H,W] in [-1,1]
        t = video.shape[2]
        if (t - 1) % 4:
            raise IMAnimError(f"train vae: clips must have 4n+1 frames, the data gave {t}")
        out = {"video": video}
        if with_masks:
            out["masks"] = b["target_masks"]  # [B,T,H,W] bool
        crop = int(self.cfg.vae_crop)
        if 0 < crop < min(video.shape[-2:]):
            # random square crops (the VAE is convolutional): ~4x cheaper steps at 64 of 128 px
            g = torch.Generator().manual_seed(mix_seed(self.cfg.seed, "vae-crop", sample_offset))
            h, w = video.shape[-2:]
            ys = torch.randint(0, (h - crop) // 8 + 1, (video.shape[0],), generator=g) * 8
            xs = torch.randint(0, (w - crop) // 8 + 1, (video.shape[0],), generator=g) * 8
            out["video"] = torch.stack([v[..., y:y + crop, x:x + crop] for v, y, x in zip(video, ys.tolist(), xs.tolist())])
            if with_masks:
                out["masks"] = torch.stack([m[..., y:y + crop, x:x + crop]
                                            for m, y, x in zip(out["masks"], ys.tolist(), xs.tolist())])
        if self.cfg.latent_noise > 0:
            v = out["video"]
            g = torch.Generator().manual_seed(mix_seed(self.cfg.seed, "latent-noise", sample_offset))
            shape = (v.shape[0], 16, (v.shape[2] - 1) // 4 + 1, v.shape[3] // 8, v.shape[4] // 8)
            s = torch.rand(v.shape[0], 1, 1, 1, 1, generator=g) * self.cfg.latent_noise
            out["latent_noise"] = torch.randn(shape, generator=g) * s
        return out

    def export(self, module, export_dir: Path) -> dict:
        path = save_vae(module.vae, Path(export_dir) / "vae.safetensors")
        man = write_manifest(export_dir, {"stage": "vae", "step": self.step, "vae": str(Path(path).resolve())})
        return {"vae": path, "manifest": man}


__all__ = ["VAEStage", "VAEModule", "start_sharp", "INIT_LOGVAR"]
