"""`python -m imanim_core train stage1|stage2|stage3|vae [options]` (also under `accelerate launch -m imanim_core`).

Options override the config file (``--config``), which overrides the preset (``--preset``). Examples::

    python -m imanim_core train vae    --out runs/vae
    python -m imanim_core train stage1 --out runs/s1
    python -m imanim_core train stage2 --init runs/s1 --vae runs/vae --out runs/s2
    python -m imanim_core train stage3 --init runs/s2 --out runs/s3          # VAE found through runs/s2
    accelerate launch --config_file imanim_core/train/accelerate/ddp.yaml -m imanim_core \\
        train stage3 --preset real --data /videos --init runs/s2 --dit wan2.1_t2v_1.3B.safetensors \\
        --vae wan_2.1_vae.safetensors --lora-rank 64 --out runs/s3_real

Every run writes DIR/log.csv, DIR/checkpoints/step_N/ and DIR/export/; ``--resume`` continues DIR's latest
checkpoint; Ctrl-C saves a checkpoint and exits (code 130).
"""
from __future__ import annotations

import argparse
import importlib
import json

from .config import PRESETS, STAGES, resolve_config

# flag -> (TrainConfig field, type, help); None type = store_true-like optional boolean
_FLAGS = [
    ("--data", "data", str, "video folder to train on (default for tiny-puppet: the synthetic puppet world)"),
    ("--out", "out", str, "run directory: log.csv, checkpoints/, export/"),
    ("--init", "init", str, "initialise from a previous stage's run directory or a bundle file "
                            "(stage 1 'real': the released motion encoder file)"),
    ("--vae", "vae", str, "Wan 2.1 VAE file or `train vae` run directory (stages 2, 3; default: found through "
                          "--init); 'random' = an untrained tiny VAE (smoke tests only)"),
    ("--dit", "dit", str, "stage 3: Wan DiT file in the original layout to start from (real: Wan 2.1 1.3B/14B; "
                          "tiny default: a fresh tiny DiT, or the one in --init's export)"),
    ("--max-steps", "max_steps", int, "optimiser steps to train to (total, counting resumed steps)"),
    ("--batch-size", "batch_size", int, "samples per process and micro-batch"),
    ("--grad-accum", "grad_accum", int, "micro-batches per optimiser step"),
    ("--lr", "lr", float, "peak learning rate"),
    ("--warmup-steps", "warmup_steps", int, "linear warm-up steps"),
    ("--lr-schedule", "lr_schedule", str, "cosine | constant (after warm-up)"),
    ("--weight-decay", "weight_decay", float, "AdamW weight decay"),
    ("--grad-clip", "grad_clip", float, "clip the gradient norm to this (0 = off)"),
    ("--seed", "seed", int, "random seed (data, noise and initialisation)"),
    ("--mixed-precision", "mixed_precision", str, "no | bf16 | fp16 | auto (autocast through Accelerate; auto = bf16 on CUDA, "
                                                        "and on a CPU only where a probe runs bf16 faster; tiny: auto)"),
    ("--grad-checkpointing", "grad_checkpointing", None, "gradient checkpointing where a model supports it"),
    ("--ema", "ema", None, "keep an EMA of the trained weights (exports use it)"),
    ("--ema-decay", "ema_decay", float, "EMA decay"),
    ("--log-every", "log_every", int, "write a log.csv row every N steps"),
    ("--ckpt-every", "ckpt_every", int, "save a checkpoint every N steps"),
    ("--keep-checkpoints", "keep_checkpoints", int, "how many checkpoints to keep"),
    ("--overfit-one-batch", "overfit_one_batch", None, "train on one fixed batch (sanity check: loss must fall)"),
    ("--num-workers", "num_workers", int, "data-loading processes per training process"),
    ("--threads", "num_threads", int, "torch CPU threads per training process (0 = default; 1 is fastest on a "
                                      "busy shared machine)"),
    ("--num-frames", "num_frames", int, "frames per clip (stage 3 and vae: 4n+1)"),
    ("--height", "height", int, "video height in pixels (multiple of 16)"),
    ("--width", "width", int, "video width in pixels (multiple of 16)"),
    ("--tokenizer-preset", "tokenizer_preset", str, "tiny (conv encoder) | tiny-vit | large (the released ViT)"),
    ("--vae-preset", "vae_preset", str, "tiny (TAEHV-layout tiny VAE) | wan2.1-tiny | wan2.1"),
    ("--dit-preset", "dit_preset", str, "stage 3: tiny | wan2.1-t2v-1.3b | wan2.1-t2v-14b (when --dit is not given)"),
    ("--cross-identity-prob", "cross_identity_prob", float, "puppet world: share of exact cross-identity pairs"),
    ("--encoder-lr-scale", "encoder_lr_scale", float, "stages 2/3: tokenizer encoder lr = lr * this (0 = frozen)"),
    ("--joint-head-lr-scale", "joint_head_lr_scale", float, "stage 2: joint head lr = lr * this (0 = frozen)"),
    ("--identity-pose-weight", "identity_pose_weight", float, "stage 2: weight of the identity-pose auxiliary loss "
                                                               "(the identity's own pose read from its path; 0 = off)"),
    ("--retargeter-lr-scale", "retargeter_lr_scale", float, "stage 3: retargeter lr = lr * this (0 = frozen; "
                                                             "tiny: 0, its tokens are then cached in the pool)"),
    ("--dit-training", "dit_training", str, "stage 3: full | adapter (injector only) | lora"),
    ("--lora-rank", "lora_rank", int, "stage 3: LoRA rank on the DiT attention (> 0 turns LoRA on; needs peft)"),
    ("--lora-alpha", "lora_alpha", float, "stage 3: LoRA alpha (default = rank)"),
    ("--end-to-end", "end_to_end", None, "stage 3: also train the retargeter and the motion encoder"),
    ("--sample-pool", "sample_pool", int, "stage3: cycle through N samples and cache their VAE latents and codes "
                                         "(0 = every sample new; tiny preset: 1024)"),
    ("--flow-shift", "flow_shift", float, "stage 3 / skeleton baseline: training noise shift (Wan's; sample with the "
                                          "same --shift; default 5)"),
    ("--flow-fg-weight", "flow_fg_weight", float, "stage 3 / skeleton baseline: extra flow-loss weight on latent "
                                                  "cells the character covers (puppet masks; 0 = plain MSE)"),
    ("--kl-weight", "kl_weight", float, "vae: weight of the KL term of the normalised posterior (tiny: 1e-5)"),
    ("--vae-fg-weight", "vae_fg_weight", float, "vae: extra loss weight on character pixels (masks; tiny: 4)"),
    ("--vae-loss", "vae_loss", str, "vae: reconstruction loss, l1 or mse (tiny: mse)"),
    ("--vae-crop", "vae_crop", int, "vae: train on random square crops of N px (multiple of 8; tiny: 64; 0 = whole)"),
    ("--latent-reg-weight", "latent_reg_weight", float, "vae: pull of the normalised latent stats to N(0,1) (0.01)"),
    ("--code-restart-every", "code_restart_every", int, "stage 1: re-seed codebook entries unused for this many "
                                                        "steps from encoder outputs (0 = off)"),
    ("--decoder-only", "decoder_only", None, "stage 1: keep the tokenizer of --init frozen (no code restarts) and "
                                             "train only the motion decoder and the joint head; vae: keep the "
                                             "encoder of --init frozen and train the decoder"),
    ("--latent-noise", "latent_noise", float, "vae: decode normalised latents + N(0, s^2), s uniform in [0, this] "
                                              "per clip (0 = off)"),
]


def add_arguments(parser: argparse.ArgumentParser, stage: bool = True) -> None:
    """The ``train`` options; ``stage=False``: without the stage argument (``baseline train``: stage-3 options)."""
    parser.description = __doc__.split("\n\n")[0]
    if stage:
        parser.add_argument("stage", choices=STAGES, help="what to train")
    else:
        parser.set_defaults(stage="stage3")
    parser.add_argument("--preset", choices=PRESETS, default=None,
                        help="tiny-puppet (CPU-sized, puppet world; default) or real (Wan 2.1 1.3B-sized)")
    parser.add_argument("--config", default=None, help="YAML/JSON file with TrainConfig fields (flags override it)")
    parser.add_argument("--resume", action="store_true", help="continue from --out's latest checkpoint")
    parser.add_argument("--dry-run", action="store_true",
                        help="check the options and files, print the resolved config and the model sizes "
                             "(built without weights), then exit")
    for flag, field, typ, help_ in _FLAGS:
        if typ is None:
            parser.add_argument(flag, dest=field, action=argparse.BooleanOptionalAction, default=None, help=help_)
        else:
            parser.add_argument(flag, dest=field, type=typ, default=None, help=help_)


def config_from_args(args):
    overrides = {field: getattr(args, field, None) for _, field, _, _ in _FLAGS}
    return resolve_config(args.stage, preset=args.preset, config_file=args.config, overrides=overrides)


# stage -> (module, class), imported only when that stage runs
STAGE_CLASSES = {"stage1": ("stage1", "Stage1"), "stage2": ("stage2", "Stage2"), "stage3": ("stage3", "Stage3"),
                 "vae": ("vae", "VAEStage")}


def stage_class(stage: str):
    mod, name = STAGE_CLASSES.get(stage, STAGE_CLASSES["vae"])
    return getattr(importlib.import_module(f"{__package__}.{mod}"), name)


def run(args) -> int:
    cfg = config_from_args(args)
    cls = stage_class(cfg.stage)
    if args.dry_run:
        from .loop import dry_run

        report = dry_run(cfg, cls)
        print(json.dumps(report, indent=2))
        return 0
    from .loop import run_training

    return run_training(cfg, cls, resume=args.resume)
