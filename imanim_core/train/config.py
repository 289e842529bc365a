"""Training configuration: one dataclass (:class:`TrainConfig`) on the project's config system.

Resolution order (later wins): the stage's preset (``tiny-puppet`` or ``real``) -> a YAML/JSON file
(``--config``) -> command-line flags. The resolved config is written next to the run (``DIR/config.json``) and
into every checkpoint, so a run can always be reproduced and resumed.

Model sizes come from the model-part presets of :mod:`imanim_core.config`; the optional ``tokenizer``,
``motion_decoder``, ``joint_head``, ``retargeter`` and ``injector`` mappings override single fields of those
configs (e.g. ``retargeter: {layers: 2}`` in a YAML file).
"""
from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Optional

from ..config import (NUM_JOINTS, InjectorConfig, JointHeadConfig, MotionDecoderConfig, RetargeterConfig,
                      TokenizerConfig, _Base, load_config_file)
from ..defaults import DEFAULT_SHIFT
from ..errors import IMAnimError

STAGES = ("vae", "stage1", "stage2", "stage3")
PRESETS = ("tiny-puppet", "real")
MIXED_PRECISION = ("no", "bf16", "fp16", "auto")  # auto: bf16 where it is faster here (precision.py)
DIT_TRAINING = ("full", "adapter", "lora")


@dataclass(frozen=True)
class TrainConfig(_Base):
    """Everything a training run needs. Fields a stage does not use are ignored by it."""

    stage: str = "stage1"
    preset: str = "tiny-puppet"
    # where things are
    data: Optional[str] = None  # video folder (data/video_folder.py); None = puppet world (tiny-puppet only)
    out: Optional[str] = None  # run directory (log.csv, checkpoints/, export/)
    init: Optional[str] = None  # previous stage's run dir, a bundle, or (stage 1) the released encoder file
    vae: Optional[str] = None  # Wan 2.1 VAE file, a `train vae` run dir, or "random" (tiny smoke tests)
    dit: Optional[str] = None  # Wan DiT file in the original layout (real: Wan 2.1 1.3B/14B); tiny: random init
    # optimisation
    max_steps: int = 2000
    batch_size: int = 8  # per process, per micro-batch
    grad_accum: int = 1
    lr: float = 3e-4
    weight_decay: float = 0.01
    betas: tuple = (0.9, 0.99)
    warmup_steps: int = 50
    lr_schedule: str = "cosine"  # cosine | constant (after warm-up)
    min_lr_ratio: float = 0.1
    grad_clip: float = 1.0
    mixed_precision: str = "no"
    grad_checkpointing: bool = False
    ema: bool = False
    ema_decay: float = 0.999
    seed: int = 0
    overfit_one_batch: bool = False  # every step sees step 0's batch and noise (a sanity check that loss falls)
    num_workers: int = 0  # data-loading processes per training process
    num_threads: int = 0  # torch intra-op threads per training process (0 = torch's default)
    # bookkeeping
    log_every: int = 10
    ckpt_every: int = 500
    keep_checkpoints: int = 3
    # data
    height: int = 128  # video frames (identity image and target video) for stages 2, 3 and vae
    width: int = 128
    num_frames: int = 9  # driving/target clip length (4n+1 for stage 3 and vae)
    heatmap_sigma: float = 1.5  # in heatmap pixels
    cross_identity_prob: float = 0.5  # puppet world: share of exact cross-identity pairs (stages 2, 3)
    # model parts
    tokenizer_preset: str = "tiny"
    dit_preset: str = "tiny"
    vae_preset: str = "tiny"
    tokenizer: Optional[dict] = None  # field overrides of TokenizerConfig
    motion_decoder: Optional[dict] = None
    joint_head: Optional[dict] = None
    retargeter: Optional[dict] = None
    injector: Optional[dict] = None
    # losses
    heatmap_weight: float = 1.0
    heatmap_fg_weight: float = 10.0  # extra weight on pixels near visible joints (target value * this)
    vq_weight: float = 1.0
    code_restart_every: int = 50  # stage 1: re-seed codes unused for this many steps from encoder outputs (0 = off)
    # stage 1: keep the tokenizer (encoder + codebook) of --init frozen and train only the motion decoder and the
    # joint head (the decoder goes on learning after the codes have settled); vae (tiny video VAE): keep the encoder
    # of --init frozen (the latent space, and so every DiT trained on it, stays valid) and train the decoder
    decoder_only: bool = False
    # vae (tiny video VAE): decode normalised latents + N(0, s^2) noise, s uniform in [0, latent_noise] per sample,
    # so the decoder tolerates the DiT's small latent errors (it amplified them into colour noise)
    latent_noise: float = 0.0
    kl_weight: float = 1e-5  # vae: KL of the *normalised* posterior to N(0, 1) (too strong collapses it)
    vae_fg_weight: float = 4.0  # vae: extra loss weight on character pixels where the data give masks
    vae_loss: str = "l1"  # vae: per-pixel reconstruction loss, "l1" or "mse" (see train/vae.py)
    vae_crop: int = 0  # vae: train on random square crops of this many pixels (0 = whole frames)
    latent_reg_weight: float = 0.01  # vae (tiny video VAE): pull of the normalised latent stats to mean 0 / std 1
    # what trains (stages 2, 3)
    encoder_lr_scale: float = 0.0  # stage 2/3 tokenizer encoder: 0 = frozen (codebook is always frozen)
    joint_head_lr_scale: float = 1.0  # stage 2
    # stage 2: weight of the identity-pose auxiliary loss (the identity's own pose read from the retargeter's
    # identity path with the joint head; 0 = off)
    identity_pose_weight: float = 0.0
    retargeter_lr_scale: float = 0.1  # stage 3: 0 = frozen
    dit_training: str = "full"  # stage 3: full | adapter (injector only) | lora
    lora_rank: int = 0  # stage 3: > 0 switches dit_training to lora
    lora_alpha: Optional[float] = None
    end_to_end: bool = False  # stage 3: also trains retargeter and encoder (at their lr scales, min 0.1)
    text_len: int = 16  # stage 3: length of the (zero) text context
    # stage 3 and the skeleton baseline: the flow-matching noise levels (uniform, then Wan's shift; sample with the
    # same shift) and the extra loss weight on latent cells the character covers (puppet masks; 0 = plain MSE)
    flow_shift: float = DEFAULT_SHIFT
    flow_fg_weight: float = 0.0
    sample_pool: int = 0  # stage 3: cycle through this many samples, caching their frozen VAE latents/codes (0 = off)

    # ------------------------------------------------------------------ derived model configs
    def _part(self, cls, base, overrides, name):
        if overrides:
            if not isinstance(overrides, dict):
                raise IMAnimError(f"train config {name}: expected a mapping of {cls.__name__} fields")
            allowed = {f.name for f in fields(cls)}
            unknown = sorted(set(overrides) - allowed)
            if unknown:
                raise IMAnimError(f"train config {name}: unknown keys {unknown}; allowed: {sorted(allowed)}")
            base = base.replace(**{k: tuple(v) if isinstance(v, list) else v for k, v in overrides.items()})
        return base

    def tokenizer_config(self) -> TokenizerConfig:
        return self._part(TokenizerConfig, TokenizerConfig.preset(self.tokenizer_preset), self.tokenizer, "tokenizer")

    def motion_decoder_config(self) -> MotionDecoderConfig:
        tok = self.tokenizer_config()
        jh = self._part(JointHeadConfig, JointHeadConfig(), self.joint_head, "joint_head")
        # the decoder's heatmaps (grid * up pixels) cover the tokenizer's padded input square
        base = MotionDecoderConfig(token_dim=tok.token_dim, joint_dim=jh.joint_dim)
        if "num_tokens" in {f.name for f in fields(MotionDecoderConfig)}:
            base = base.replace(num_tokens=tok.num_latent_tokens)
        if self.tokenizer_preset == "large":
            base = base.replace(width=512, layers=8, heads=8)
        return self._part(MotionDecoderConfig, base, self.motion_decoder, "motion_decoder")

    def joint_head_config(self) -> JointHeadConfig:
        return self._part(JointHeadConfig, JointHeadConfig(num_joints=NUM_JOINTS), self.joint_head, "joint_head")

    def retargeter_config(self) -> RetargeterConfig:
        tok = self.tokenizer_config()
        jh = self.joint_head_config()
        base = RetargeterConfig(token_dim=tok.token_dim, num_motion_tokens=tok.num_latent_tokens, out_dim=jh.joint_dim)
        if self.preset == "real":
            base = base.replace(width=512, layers=8, heads=8)
        return self._part(RetargeterConfig, base, self.retargeter, "retargeter")

    def injector_config(self, dit_dim: int) -> InjectorConfig:
        base = InjectorConfig(in_dim=self.joint_head_config().joint_dim, dit_dim=int(dit_dim))
        over = dict(self.injector or {})
        over.pop("dit_dim", None)  # always the DiT's width
        return self._part(InjectorConfig, base, over, "injector")

    @property
    def effective_dit_training(self) -> str:
        return "lora" if self.lora_rank > 0 else self.dit_training

    # ------------------------------------------------------------------ checks
    def validate(self) -> "TrainConfig":
        def bad(field, msg):
            raise IMAnimError(f"train option {field}: {msg}")

        if self.stage not in STAGES:
            bad("stage", f"expected one of {list(STAGES)}, got {self.stage!r}")
        if self.preset not in PRESETS:
            bad("--preset", f"expected one of {list(PRESETS)}, got {self.preset!r}")
        if not self.out:
            bad("--out", "a run directory is required")
        for name in ("max_steps", "batch_size", "grad_accum", "log_every", "ckpt_every", "keep_checkpoints",
                     "height", "width", "num_frames"):
            if int(getattr(self, name)) < 1:
                bad("--" + name.replace("_", "-"), f"expected an integer >= 1, got {getattr(self, name)}")
        if self.lr <= 0:
            bad("--lr", f"expected a positive learning rate, got {self.lr}")
        if self.mixed_precision not in MIXED_PRECISION:
            bad("--mixed-precision", f"expected one of {list(MIXED_PRECISION)}, got {self.mixed_precision!r}")
        if self.lr_schedule not in ("cosine", "constant"):
            bad("lr_schedule", f"expected 'cosine' or 'constant', got {self.lr_schedule!r}")
        if not 0.0 < self.ema_decay < 1.0:
            bad("--ema-decay", f"expected a value in (0, 1), got {self.ema_decay}")
        if self.num_workers < 0:
            bad("--num-workers", "expected an integer >= 0")
        if self.sample_pool < 0:
            bad("--sample-pool", "expected an integer >= 0 (0 = every sample new)")
        if self.vae_crop < 0 or self.vae_crop % 8:
            bad("--vae-crop", f"expected 0 (whole frames) or a multiple of 8, got {self.vae_crop}")
        if self.vae_loss not in ("l1", "mse"):
            bad("--vae-loss", f"expected 'l1' or 'mse', got {self.vae_loss!r}")
        if self.vae_fg_weight < 0:
            bad("--vae-fg-weight", "expected a value >= 0 (0 = plain L1)")
        if self.code_restart_every < 0:
            bad("--code-restart-every", "expected an integer >= 0 (0 = off)")
        if self.decoder_only and self.stage not in ("stage1", "vae"):
            bad("--decoder-only", "applies to stage1 and vae only")
        if self.decoder_only and not self.init:
            bad("--decoder-only", "needs --init with the part to keep frozen (an earlier stage-1 or vae run)")
        if not self.flow_shift > 0:
            bad("--flow-shift", f"expected a positive number, got {self.flow_shift}")
        if self.flow_fg_weight < 0:
            bad("--flow-fg-weight", "expected a value >= 0 (0 = plain MSE)")
        if self.latent_noise < 0:
            bad("--latent-noise", "expected a value >= 0 (0 = off)")
        if self.num_threads < 0:
            bad("--threads", "expected an integer >= 0 (0 = torch's default)")
        if self.height % 16 or self.width % 16:
            bad("--height/--width", f"expected multiples of 16 (VAE x8, DiT patch x2), got {self.height}x{self.width}")
        if self.stage in ("stage3", "vae") and (self.num_frames - 1) % 4:
            bad("--num-frames", f"stage {self.stage} needs 4n+1 frames (1, 5, 9, 13, 17, ...), got {self.num_frames}")
        if self.dit_training not in DIT_TRAINING:
            bad("--dit-training", f"expected one of {list(DIT_TRAINING)}, got {self.dit_training!r}")
        if self.lora_rank < 0:
            bad("--lora-rank", "expected an integer >= 0")
        if self.effective_dit_training == "lora" and self.lora_rank < 1:
            bad("--lora-rank", "LoRA training needs --lora-rank >= 1")
        if not 0.0 <= self.cross_identity_prob <= 1.0:
            bad("cross_identity_prob", "expected a probability in [0, 1]")
        for name in ("encoder_lr_scale", "joint_head_lr_scale", "retargeter_lr_scale"):
            if getattr(self, name) < 0:
                bad(name, "expected a value >= 0 (0 = frozen)")
        if self.preset == "real" and not self.data:
            bad("--data", "the 'real' preset trains on a video folder; pass --data DIR")
        if self.stage == "vae" and self.preset != "tiny-puppet":
            bad("--preset", "stage vae trains the tiny VAE only (use the released Wan 2.1 VAE for real runs)")
        from ..backbone.wan import dit_config, vae_config  # JSON presets only; diffusers is not imported

        dit_config(self.dit_preset)
        vae_config(self.vae_preset)
        # the derived configs must build (catches bad override mappings early)
        self.tokenizer_config()
        self.motion_decoder_config()
        self.joint_head_config()
        self.retargeter_config()
        return self


# ---------------------------------------------------------------------- presets
_TINY = {
    # the TAEHV-layout tiny VAE (backbone/taehv.py): bf16 autocast (oneDNN; ~3x fp32 on CPU), 64-px crops
    # (v3: MSE from the colour-path init of TinyVideoVAE.init_for_training; v2 was L1 from a plain init)
    "vae": dict(batch_size=4, num_frames=9, lr=1e-3, warmup_steps=50, max_steps=2000, ckpt_every=250,
                vae_fg_weight=4.0, vae_crop=64, mixed_precision="auto", latent_reg_weight=0.01, vae_loss="mse"),
    "stage1": dict(batch_size=16, lr=5e-4, warmup_steps=100, max_steps=6000, ckpt_every=500),
    # a width-128 retargeter (4x cheaper than the RetargeterConfig default; stage 3 takes it from --init) with the
    # driver-pose path (v3; v2's retargeter without it output one still pose whatever the driver, motion ratio 0.03)
    "stage2": dict(batch_size=4, num_frames=9, lr=3e-4, warmup_steps=100, max_steps=3000, ckpt_every=500,
                   retargeter={"width": 128, "driver_layers": 4}),
    # a pool of 1024 clips whose VAE latents are cached (the VAE is ~3/4 of an uncached step on a CPU)
    # batch 8 with the retargeter frozen (its tokens are cached in the pool with the latents): ~11 samples/s on
    # one core against ~3 with batch 2 and the retargeter training (its backward was 2/3 of a step)
    "stage3": dict(batch_size=8, num_frames=9, lr=3e-4, warmup_steps=100, max_steps=4000, ckpt_every=500,
                   sample_pool=1024, dit_training="full", retargeter_lr_scale=0.0,
                   retargeter={"width": 128},
                   # bf16 autocast where the CPU has native bf16 (1.7x faster steps, same loss, on the CPU that
                   # trained v4); fp32 on an AVX2-only CPU, where bf16 is ~19x slower (precision.py)
                   mixed_precision="auto"),
}
_REAL = {
    "stage1": dict(tokenizer_preset="large", batch_size=32, lr=1e-4, warmup_steps=1000, max_steps=100_000,
                   ckpt_every=2000, log_every=50, mixed_precision="bf16", num_workers=8, height=480, width=832,
                   heatmap_sigma=2.0, code_restart_every=0),  # the released codebook is kept as it is
    "stage2": dict(tokenizer_preset="large", vae_preset="wan2.1", batch_size=4, num_frames=17, lr=1e-4,
                   warmup_steps=1000, max_steps=50_000, ckpt_every=2000, log_every=50, mixed_precision="bf16",
                   num_workers=8, height=480, width=832, grad_checkpointing=True, cross_identity_prob=0.0),
    "stage3": dict(tokenizer_preset="large", dit_preset="wan2.1-t2v-1.3b", vae_preset="wan2.1", batch_size=1,
                   num_frames=81, lr=1e-4, warmup_steps=500, max_steps=30_000, ckpt_every=1000, log_every=20,
                   mixed_precision="bf16", num_workers=8, height=480, width=832, grad_checkpointing=True,
                   dit_training="adapter", retargeter_lr_scale=0.0, ema=True, ema_decay=0.9995,
                   cross_identity_prob=0.0, text_len=512),
}


def preset_config(stage: str, preset: str) -> TrainConfig:
    """The defaults of one stage under one preset."""
    if stage not in STAGES:
        raise IMAnimError(f"train: unknown stage {stage!r}; choose one of {list(STAGES)}")
    if preset not in PRESETS:
        raise IMAnimError(f"train option --preset: expected one of {list(PRESETS)}, got {preset!r}")
    table = _TINY if preset == "tiny-puppet" else _REAL
    if stage not in table:
        raise IMAnimError(f"train {stage}: no {preset!r} preset (stage vae is tiny-only; real runs use the "
                          f"released Wan 2.1 VAE)")
    return TrainConfig(stage=stage, preset=preset, **table[stage])


def resolve_config(stage: str, preset: Optional[str] = None, config_file=None, overrides: Optional[dict] = None
                   ) -> TrainConfig:
    """preset -> config file -> overrides (e.g. parsed CLI flags; None values are ignored)."""
    file_data = {}
    if config_file:
        file_data = dict(load_config_file(config_file))
        file_stage = file_data.pop("stage", None)
        if file_stage is not None and file_stage != stage:
            raise IMAnimError(f"config file {str(config_file)!r} is for stage {file_stage!r}, not {stage!r}")
    overrides = {k: v for k, v in (overrides or {}).items() if v is not None}
    chosen = overrides.pop("preset", None) or preset or file_data.pop("preset", None) or "tiny-puppet"
    file_data.pop("preset", None)
    base = preset_config(stage, chosen).to_dict()
    allowed = set(base)
    for src, d in (("config file", file_data), ("options", overrides)):
        unknown = sorted(set(d) - allowed)
        if unknown:
            raise IMAnimError(f"train {src}: unknown keys {unknown}; allowed: {sorted(allowed)}")
        base.update(d)
    return TrainConfig.from_dict(base, where="train config").validate()


__all__ = ["TrainConfig", "STAGES", "PRESETS", "preset_config", "resolve_config"]
