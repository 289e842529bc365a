"""Training stages (imanim_core.train): losses fall on a fixed batch, exact resume, Ctrl-C, two processes, exports.

Everything runs the tiny preset at the smallest sizes (32x32 video, 5-frame clips, batch 1-4) so the whole file
stays well under two minutes on two CPU cores.
"""
from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from imanim_core.errors import IMAnimError
from imanim_core.train.cli import stage_class
from imanim_core.train.checkpoint import list_checkpoints
from imanim_core.train.loop import run_training
from imanim_core.train.config import resolve_config

ROOT = Path(__file__).resolve().parents[1]
SMALL = dict(height=32, width=32, warmup_steps=0, lr_schedule="constant", log_every=1, ckpt_every=1000,
             text_len=4)
STAGE_SMALL = {
    # a fresh tiny VAE starts from its colour-path init (loss ~0.18, not ~1): without a warm-up the first Adam step
    # (every weight moved by ~lr) throws it far off, and the loss only comes back below its start after ~20 steps
    "vae": dict(num_frames=5, batch_size=1, lr=1e-4, warmup_steps=4),
    "stage1": dict(batch_size=4, lr=2e-3),
    "stage2": dict(num_frames=5, batch_size=1, lr=1e-3, vae="random", cross_identity_prob=0.5),
    "stage3": dict(num_frames=5, batch_size=1, lr=1e-3, vae="random"),
}


@pytest.fixture(autouse=True)
def _one_thread():
    """One intra-op thread: on a shared 2-core machine, 2 spinning OpenMP threads per process are 5-10x slower."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _run(stage, out, resume=False, **over):
    opts = dict(SMALL, **STAGE_SMALL[stage])
    opts.update(over)
    cfg = resolve_config(stage, overrides=dict(opts, out=str(out)))
    return run_training(cfg, stage_class(stage), resume=resume)


def _log(out):
    with open(Path(out) / "log.csv", newline="") as f:
        return list(csv.DictReader(f))


def _tensors(path):
    from safetensors.torch import load_file

    return load_file(str(path))


# ------------------------------------------------------------------------------------------------ losses fall
@pytest.mark.parametrize("stage,steps", [("vae", 8), ("stage1", 10), ("stage2", 10), ("stage3", 10)])
def test_loss_falls_on_a_fixed_batch_and_exports_load(stage, steps, tmp_path):
    out = tmp_path / stage
    assert _run(stage, out, max_steps=steps, overfit_one_batch=True) == 0
    losses = [float(r["loss"]) for r in _log(out)]
    assert len(losses) == steps and all(map(torch.isfinite, torch.tensor(losses)))
    last = sum(losses[-3:]) / 3
    assert last < 0.8 * losses[0], f"{stage}: loss did not fall on a fixed batch: {losses}"
    exp = out / "export"
    summary = json.loads((out / "summary.json").read_text())
    assert summary["step"] == steps and summary["processes"] == 1 and not summary["interrupted"]
    assert list_checkpoints(out)[-1][0] == steps

    from imanim_core.backbone.wan import load_dit, load_vae
    from imanim_core.models.bundle import load_bundle

    if stage == "vae":
        vae = load_vae(exp / "vae.safetensors")
        assert vae.config.z_dim == 16
        return
    b = load_bundle(exp / "bundle.safetensors")
    want = {"stage1": ["tokenizer", "motion_decoder", "joint_head"],
            "stage2": ["tokenizer", "motion_decoder", "joint_head", "retargeter"],
            "stage3": ["tokenizer", "motion_decoder", "joint_head", "retargeter", "injector"]}[stage]
    assert b.config.parts == want
    if stage == "stage3":
        dit = load_dit(exp / "dit.safetensors")
        width = dit.config.num_attention_heads * dit.config.attention_head_dim
        assert b.config.injector.dit_dim == width
        assert load_vae(exp / "vae.safetensors").config.z_dim == 16
        # the exported DiT is the trained one (the last checkpoint holds the same weights)
        ck = _tensors(list_checkpoints(out)[-1][1] / "model.safetensors")
        assert torch.equal(dit.state_dict()["proj_out.weight"], ck["dit.proj_out.weight"])
        # the injector learned something (it starts at exactly zero)
        assert b.injector.fc2.weight.abs().sum() > 0


def test_video_folder_data(tmp_path):
    """--data: the on-disk video-folder format (written by the puppet writer) for stages 1 and 2."""
    from imanim_core.data.video_folder import write_puppet_video_folder
    from imanim_core.train.data import make_source

    data = write_puppet_video_folder(tmp_path / "data", num_clips=2, frames=20, size=(32, 32), layout="frames")
    assert _run("stage1", tmp_path / "s1", max_steps=2, data=str(data)) == 0
    assert _run("stage2", tmp_path / "s2", max_steps=2, data=str(data), init=str(tmp_path / "s1")) == 0
    assert len(_log(tmp_path / "s2")) == 2
    cfg = resolve_config("stage2", overrides=dict(SMALL, out="x", data=str(data), num_frames=5))
    src = make_source(cfg, 2, 5)
    idx = src.indices(0, 6)  # every clip once per epoch, new draws each epoch
    assert sorted(i % 2 for i in idx[:2]) == [0, 1] and sorted(i % 2 for i in idx[2:4]) == [0, 1]
    assert len(set(idx)) == 6 and src.indices(2, 3) == idx[2:5]


def test_stage_chain_through_init(tmp_path):
    """vae -> stage1 -> stage2 (--vae) -> stage3 (VAE found through --init) -> the pipeline's loader."""
    from imanim_core.pipeline import load_models
    from imanim_core.weights import EmbeddedPaths, install_from_export

    run = {k: tmp_path / k for k in ("vae", "s1", "s2", "s3")}
    assert _run("vae", run["vae"], max_steps=1) == 0
    assert _run("stage1", run["s1"], max_steps=1) == 0
    assert _run("stage2", run["s2"], max_steps=1, init=str(run["s1"]), vae=str(run["vae"])) == 0
    assert _run("stage3", run["s3"], max_steps=1, init=str(run["s2"]), vae=None) == 0
    exp = run["s3"] / "export"
    assert (exp / "vae.safetensors").read_bytes() == (run["vae"] / "export" / "vae.safetensors").read_bytes()
    man = json.loads((exp / "manifest.json").read_text())
    assert man["stage"] == "stage3" and man["dit_training"] == "full" and man["step"] == 1
    s1 = _tensors(run["s1"] / "export" / "bundle.safetensors")
    s3 = _tensors(exp / "bundle.safetensors")
    # stage 3 keeps the codebook and the joint head of stages 1-2 (frozen)
    assert torch.equal(s1["tokenizer.quantize.embedding.weight"], s3["tokenizer.quantize.embedding.weight"])
    dest = EmbeddedPaths(dit=tmp_path / "w" / "dit.safetensors", vae=tmp_path / "w" / "vae.safetensors",
                         bundle=tmp_path / "w" / "bundle.safetensors")
    install_from_export(exp, dest)
    bundle, dit, vae = load_models(str(dest.bundle), str(dest.dit), str(dest.vae))
    assert bundle.injector is not None and dit.config.num_layers >= 1 and vae.config.z_dim == 16


# ------------------------------------------------------------------------------------------------ resume
@pytest.mark.parametrize("stage,opts", [
    ("stage3", dict(ema=True, ema_decay=0.9, cross_identity_prob=0.5)),  # noise, timesteps, data, EMA
    ("stage1", dict(code_restart_every=3)),  # codebook restarts: hit counts kept in the checkpoint
])
def test_resume_continues_exactly(stage, opts, tmp_path):
    """4 steps straight == 2 steps, then --resume to 4 (weights, optimiser, EMA, logged losses)."""
    a, b = tmp_path / "a", tmp_path / "b"
    assert _run(stage, a, max_steps=4, **opts) == 0
    assert _run(stage, b, max_steps=2, **opts) == 0
    with pytest.raises(IMAnimError, match="already holds a run"):
        _run(stage, b, max_steps=4, **opts)
    assert _run(stage, b, resume=True, max_steps=4, **opts) == 0
    ca, cb = list_checkpoints(a)[-1][1], list_checkpoints(b)[-1][1]
    assert ca.name == cb.name == "step_4"
    for f in ("model.safetensors", "optimizer.safetensors", "ema.safetensors"):
        if not (ca / f).is_file():
            assert not (cb / f).is_file()
            continue
        ta, tb = _tensors(ca / f), _tensors(cb / f)
        assert ta.keys() == tb.keys()
        for k in ta:
            assert torch.equal(ta[k], tb[k]), (f, k)
    la, lb = _log(a), _log(b)
    assert [r["step"] for r in lb] == ["1", "2", "3", "4"]
    assert [r["loss"] for r in la] == [r["loss"] for r in lb]
    assert json.loads((cb / "state.json").read_text())["step"] == 4


def test_ctrl_c_saves_a_checkpoint_and_resume_finishes(tmp_path):
    from imanim_core.train.stage1 import Stage1

    class Interrupted(Stage1):
        def load_batch(self, gen, sample_offset):
            if sample_offset == self.cfg.batch_size:  # the batch of the second step
                os.kill(os.getpid(), signal.SIGINT)
            return super().load_batch(gen, sample_offset)

    out = tmp_path / "s1"
    cfg = resolve_config("stage1", overrides=dict(SMALL, **STAGE_SMALL["stage1"], max_steps=5, out=str(out)))
    # a process started in the background (CI, nohup) begins with SIGINT ignored: start from the default handler
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        assert run_training(cfg, Interrupted) == 130
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # the trainer restored it
    finally:
        signal.signal(signal.SIGINT, previous)
    assert list_checkpoints(out)[-1][0] == 2
    assert json.loads((out / "summary.json").read_text())["interrupted"]
    assert (out / "export" / "bundle.safetensors").is_file()
    assert _run("stage1", out, resume=True, max_steps=5) == 0
    assert [r["step"] for r in _log(out)] == ["1", "2", "3", "4", "5"]


def test_an_error_mid_run_keeps_the_last_completed_step(tmp_path):
    from imanim_core.errors import DataError
    from imanim_core.train.stage1 import Stage1

    class Broken(Stage1):
        def load_batch(self, gen, sample_offset):
            if sample_offset == 2 * self.cfg.batch_size:
                raise DataError("clip_0007/pose/000003.json: unreadable")
            return super().load_batch(gen, sample_offset)

    out = tmp_path / "s1"
    cfg = resolve_config("stage1", overrides=dict(SMALL, **STAGE_SMALL["stage1"], max_steps=5, out=str(out)))
    with pytest.raises(DataError, match="unreadable"):
        run_training(cfg, Broken)
    assert list_checkpoints(out)[-1][0] == 2
    assert _run("stage1", out, resume=True, max_steps=3) == 0


# ------------------------------------------------------------------------------------------------ scale features
def test_bf16_accumulation_ema_and_checkpointing_run(tmp_path):
    out = tmp_path / "s3"
    assert _run("stage3", out, max_steps=2, mixed_precision="bf16", grad_accum=2, ema=True,
                grad_checkpointing=True) == 0
    rows = _log(out)
    assert len(rows) == 2 and all(torch.isfinite(torch.tensor(float(r["flow"]))) for r in rows)
    assert (list_checkpoints(out)[-1][1] / "ema.safetensors").is_file()
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["mixed_precision"] == "bf16" and cfg["grad_accum"] == 2


def test_lora_stage3_exports_merged_dit_and_comfy_lora(tmp_path):
    try:
        import peft  # noqa: F401
    except Exception as e:  # noqa: BLE001
        pytest.skip(f"peft cannot be imported here: {type(e).__name__}: {e}")
    from imanim_core.backbone.wan import load_dit

    out = tmp_path / "lora"
    assert _run("stage3", out, max_steps=2, lora_rank=4, lr=1e-2) == 0
    dit = load_dit(out / "export" / "dit.safetensors")
    lora = _tensors(out / "export" / "lora.safetensors")
    assert "diffusion_model.blocks.0.self_attn.q.lora_A.weight" in lora
    assert "diffusion_model.blocks.0.cross_attn.o.lora_B.weight" in lora
    assert all(not k.endswith("lora_B.weight") or v.abs().sum() > 0 for k, v in lora.items())
    assert dit.config.num_layers >= 1


def test_two_processes_with_gloo(tmp_path):
    """Data-parallel run on two CPU processes with gloo, through `accelerate launch`.

    On a machine without GPUs, `accelerate launch --multi_gpu --num_processes 2` starts the processes (torchrun)
    and the trainer picks DDP over gloo on the CPU; (`--cpu --num_processes 2` would need mpirun; plain
    `torchrun --nproc_per_node 2 -m imanim_core train ...` works too)."""
    out = tmp_path / "ddp"
    env = dict(os.environ, OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="")
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH", "")) if p)
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
           "-m", "imanim_core", "train", "stage1", "--max-steps", "3", "--batch-size", "2", "--height", "32",
           "--width", "32", "--log-every", "1", "--out", str(out)]
    r = subprocess.run(cmd, cwd=str(ROOT), env=env, capture_output=True, text=True, timeout=240)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["processes"] == 2 and summary["step"] == 3 and summary["ranks_in_sync"]
    assert [row["step"] for row in _log(out)] == ["1", "2", "3"]
    from imanim_core.models.bundle import load_bundle

    assert load_bundle(out / "export" / "bundle.safetensors").config.parts == ["tokenizer", "motion_decoder",
                                                                              "joint_head"]


# ------------------------------------------------------------------------------------------------ config / CLI
def test_config_precedence_and_errors(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("lr: 0.01\nbatch_size: 3\nretargeter: {layers: 2}\n")
    cfg = resolve_config("stage2", config_file=f, overrides={"batch_size": 5, "out": "x"})
    assert (cfg.lr, cfg.batch_size, cfg.retargeter_config().layers) == (0.01, 5, 2)
    assert cfg.num_frames == 9 and cfg.preset == "tiny-puppet"
    with pytest.raises(IMAnimError, match="unknown keys"):
        resolve_config("stage1", overrides={"nonsense": 1, "out": "x"})
    with pytest.raises(IMAnimError, match="4n\\+1"):
        resolve_config("stage3", overrides={"num_frames": 8, "out": "x"})
    with pytest.raises(IMAnimError, match="--data"):
        resolve_config("stage1", preset="real", overrides={"out": "x"})
    with pytest.raises(IMAnimError, match="tiny"):
        resolve_config("vae", preset="real", overrides={"out": "x", "data": "d"})
    with pytest.raises(IMAnimError, match="lora-rank"):
        resolve_config("stage3", overrides={"out": "x", "dit_training": "lora"})


def _fake_header_file(path, metadata):
    from safetensors.torch import save_file

    save_file({"x": torch.zeros(1)}, str(path), metadata=metadata)
    return path


def test_real_preset_is_constructible_dry_run(tmp_path, capsys):
    """The 'real' preset: 1.3B DiT + LoRA, 'large' tokenizer; built on the meta device (no weights, no memory)."""
    from imanim_core.backbone.wan import dit_config
    from imanim_core.cli import main
    from imanim_core.config import BundleConfig, TokenizerConfig
    from imanim_core.train.config import TrainConfig

    real = resolve_config("stage2", preset="real", overrides={"out": "x", "data": str(tmp_path)})
    bcfg = BundleConfig(tokenizer=TokenizerConfig.preset("large"), motion_decoder=real.motion_decoder_config(),
                        joint_head=real.joint_head_config(), retargeter=real.retargeter_config())
    bundle = _fake_header_file(tmp_path / "s2.safetensors", {"format": "im-animation-bundle", "format_version": "1",
                                                            "config": json.dumps(bcfg.to_dict())})
    dit = _fake_header_file(tmp_path / "dit.safetensors", {"format": "wan-dit",
                                                          "config": json.dumps(dit_config("wan2.1-t2v-1.3b"))})
    vae = _fake_header_file(tmp_path / "vae.safetensors", {})
    try:
        import peft  # noqa: F401
        lora = ["--lora-rank", "64"]
    except Exception:  # noqa: BLE001
        lora = []
    rc = main(["train", "stage3", "--preset", "real", "--data", str(tmp_path), "--init", str(bundle), "--dit",
               str(dit), "--vae", str(vae), "--out", str(tmp_path.parent / f"{tmp_path.name}_run"), "--dry-run"] + lora)
    assert rc == 0
    rep = json.loads(capsys.readouterr().out)
    assert rep["config"]["num_frames"] == 81 and rep["config"]["height"] == 480
    assert 1.2e9 < rep["parts"]["dit"]["params"] < 1.6e9
    assert rep["parts"]["tokenizer"]["trainable"] == 0
    assert rep["trainable_params"] < 0.2e9  # adapter / LoRA, not the whole DiT
    assert not (tmp_path / "r").exists()  # a dry run writes nothing
    rc = main(["train", "stage1", "--preset", "real", "--data", str(tmp_path), "--out", "unused", "--dry-run"])
    assert rc == 0
    rep = json.loads(capsys.readouterr().out)
    assert 2.9e8 < rep["parts"]["tokenizer"]["params"] < 3.2e8
    assert TrainConfig.from_dict(rep["config"]).tokenizer_preset == "large"


def test_sample_pool_is_a_cache_of_the_frozen_models(tmp_path):
    """--sample-pool N: the first pass gives exactly the losses of a run without the pool; later passes reuse the
    cached VAE latents and codes (frozen_outputs runs once per pooled sample) and still train."""
    from imanim_core.train.stage3 import Stage3

    calls = []

    class Counting(Stage3):
        def frozen_outputs(self, batch):
            calls.append(int(batch["target"].shape[0]))
            return super().frozen_outputs(batch)

    def run(pool, out, cls):
        cfg = resolve_config("stage3", overrides=dict(SMALL, **STAGE_SMALL["stage3"], max_steps=6,
                                                      sample_pool=pool, out=str(tmp_path / out)))
        assert run_training(cfg, cls) == 0
        return [float(r["loss"]) for r in _log(tmp_path / out)]

    plain = run(0, "plain", Stage3)
    pooled = run(2, "pooled", Counting)
    assert pooled[:2] == plain[:2]  # samples 0 and 1, computed the same way
    assert sum(calls) == 2, calls  # 6 steps of batch 1 over a pool of 2: the VAE ran for 2 samples only
    assert all(map(torch.isfinite, torch.tensor(pooled)))
    with pytest.raises(IMAnimError, match="--sample-pool"):
        resolve_config("stage3", overrides=dict(SMALL, out=str(tmp_path / "x"), sample_pool=-1))


def test_a_finished_run_resumed_again_keeps_its_summary(tmp_path):
    """Re-running a finished stage with --resume (what train_tiny_default.sh does) trains nothing and still
    reports the run's losses and its whole training time."""
    out = tmp_path / "s1"
    assert _run("stage1", out, max_steps=3) == 0
    first = json.loads((out / "summary.json").read_text())
    assert _run("stage1", out, resume=True, max_steps=3) == 0
    again = json.loads((out / "summary.json").read_text())
    assert again["steps_this_run"] == 0 and again["step"] == 3 and again["steps_per_s"] is None
    assert again["final_losses"] == first["final_losses"] and again["final_losses"]
    assert again["seconds_total"] >= first["seconds_total"] > 0


def test_vae_stage_init_and_weights_the_character(tmp_path):
    """A fresh tiny video VAE starts with identity memory blocks and the encoder at the Wan 2.1 channel means (the
    colour latents offset so that a mid-grey block sits there);
    puppet batches carry the character masks the weighted L1 uses; a mask-weighted loss differs from the plain
    L1; the Wan 2.1 VAE structure (--vae-preset wan2.1-tiny) still starts with a sharp posterior."""
    from imanim_core.backbone.latents import LATENTS_MEAN
    from imanim_core.backbone.taehv import MemoryBlock
    from imanim_core.train.vae import INIT_LOGVAR, VAEStage

    over = dict(SMALL, **STAGE_SMALL["vae"], out=str(tmp_path / "w"), vae_preset="wan2.1-tiny")
    wan_vae = VAEStage(resolve_config("vae", overrides=over), torch.device("cpu")).build().vae
    z = wan_vae.quant_conv.weight.shape[0] // 2
    assert torch.all(wan_vae.quant_conv.bias[z:] == INIT_LOGVAR)

    cfg = resolve_config("vae", overrides=dict(SMALL, **STAGE_SMALL["vae"], out=str(tmp_path / "v")))
    stage = VAEStage(cfg, torch.device("cpu"))
    module = stage.build()
    assert getattr(module.vae, "is_tiny_video_vae", False)
    blocks = [m for m in module.vae.modules() if isinstance(m, MemoryBlock)]
    assert len(blocks) == 18 and all(float(b.conv[4].weight.abs().sum()) == 0 for b in blocks)
    from imanim_core.backbone.taehv import COLOUR_GAIN, COLOUR_LATENTS

    want = torch.tensor(LATENTS_MEAN)
    want[list(COLOUR_LATENTS)] -= 0.5 * COLOUR_GAIN  # the colour latents: block colour 0.5 sits at the mean
    torch.testing.assert_close(module.vae.encoder[-1].bias, want)
    batch = stage.load_batch(torch.Generator(), 0)
    assert batch["video"].shape[:3] == (1, 3, 5) and batch["masks"].shape == (1, 5, 32, 32)
    assert batch["masks"].any() and not batch["masks"].all()
    assert cfg.vae_loss == "mse"  # the tiny preset (v3; v2 used l1)
    module.loss = "mse"  # --vae-loss mse
    module.fg_weight = 0.0
    torch.manual_seed(0)
    plain, terms = module(batch)
    module.fg_weight = 4.0
    torch.manual_seed(0)
    weighted, _ = module(batch)
    # --vae-loss mse: unweighted, the reconstruction term is the plain MSE (and "l1" is logged beside it)
    rec = module.vae.decode_raw(module.vae.encode_raw(batch["video"]))
    mse = float((rec.float() - batch["video"]).pow(2).mean())
    assert float(plain - cfg.latent_reg_weight * terms["latent_reg"]) == pytest.approx(mse, rel=1e-4)
    assert float(terms["l1"]) == pytest.approx(float((rec.float() - batch["video"]).abs().mean()), rel=1e-4)
    assert float(weighted) != pytest.approx(float(plain), rel=1e-4)
    module.fg_weight, module.loss = 0.0, "l1"  # --vae-loss l1
    plain_l1, terms = module(batch)
    assert float(plain_l1 - cfg.latent_reg_weight * terms["latent_reg"]) == pytest.approx(float(terms["l1"]), rel=1e-4)


def test_stage2_code_norm_sets_the_statistics_from_the_data_and_exports_them(tmp_path):
    from imanim_core.models.bundle import load_bundle

    assert _run("stage2", tmp_path / "s2", max_steps=2, retargeter={"width": 32, "layers": 1, "code_norm": True}) == 0
    ret = load_bundle(tmp_path / "s2" / "export" / "bundle.safetensors").retargeter
    assert ret.cfg.code_norm
    assert float(ret.code_mean.abs().sum()) > 0 and not torch.equal(ret.code_std, torch.ones_like(ret.code_std))


def test_stage2_identity_pose_loss_reads_the_identity_pose_from_its_path(tmp_path):
    """--identity-pose-weight: the identity tokens (after the identity blocks, through the shared output projection)
    are decoded by the joint head against the identity's own pose; the term is logged and trains."""
    from imanim_core.config import RetargeterConfig
    from imanim_core.models.retargeter import Retargeter

    ret = Retargeter(RetargeterConfig(width=32, layers=1, token_dim=12, num_motion_tokens=32, out_dim=64))
    out, ident = ret(torch.randn(2, 16, 1, 4, 4), torch.randn(2, 3, 32, 12), return_identity=True)
    assert out.shape == (2, 3, 2, 2, 64) and ident.shape == (2, 1, 2, 2, 64)
    ret_small = {"width": 32, "layers": 1}
    assert _run("stage2", tmp_path / "aux", max_steps=3, retargeter=ret_small, identity_pose_weight=1.0) == 0
    rows = _log(tmp_path / "aux")
    assert all(float(r["identity_pose"]) > 0 for r in rows)
    assert _run("stage2", tmp_path / "plain", max_steps=3, retargeter=ret_small) == 0
    plain = _log(tmp_path / "plain")
    assert "identity_pose" not in plain[0]
    # the same first batch: the heatmap term is the same, the loss adds the identity term
    assert float(rows[0]["heatmap"]) == pytest.approx(float(plain[0]["heatmap"]), rel=1e-5)
    assert float(rows[0]["loss"]) == pytest.approx(float(plain[0]["loss"]) + float(rows[0]["identity_pose"]), rel=1e-4)


def test_stage3_caches_the_frozen_retargeters_tokens(tmp_path):
    """Retargeter frozen (the tiny preset): frozen_outputs keeps its tokens, not the codes, and they are exactly
    what the retargeter gives; with the retargeter training, the codes are kept and the heatmap term is logged."""
    from imanim_core.train.stage3 import Stage3

    seen = []

    class Watching(Stage3):
        def frozen_outputs(self, batch):
            out = super().frozen_outputs(batch)
            seen.append((self, batch, {k: v.clone() for k, v in out.items()}))
            return out

    cfg = resolve_config("stage3", overrides=dict(SMALL, **STAGE_SMALL["stage3"], max_steps=2, sample_pool=2,
                                                  out=str(tmp_path / "frozen")))
    assert cfg.retargeter_lr_scale == 0
    assert run_training(cfg, Watching) == 0
    stage, batch, out = seen[0]
    assert "tokens" in out and "codes" not in out
    assert "heatmap" not in _log(tmp_path / "frozen")[0]
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=stage.cfg.mixed_precision == "bf16"):
        px = batch["pixels"]
        codes = stage.module.tokenizer.encode(px.flatten(0, 1))["codes"].reshape(*px.shape[:2], 32, 12)
        want = stage.module.retargeter(out["reference"], codes).float()
    assert torch.allclose(out["tokens"], want, atol=1e-2, rtol=1e-2)
    seen.clear()
    cfg = resolve_config("stage3", overrides=dict(SMALL, **STAGE_SMALL["stage3"], max_steps=2, sample_pool=2,
                                                  retargeter_lr_scale=0.1, out=str(tmp_path / "trains")))
    assert run_training(cfg, Watching) == 0
    stage, batch, out = seen[0]
    assert "codes" in out and "tokens" not in out
    assert "heatmap" in _log(tmp_path / "trains")[0]


def test_stage1_decoder_only_keeps_the_tokenizer_and_trains_the_decoder(tmp_path):
    """--decoder-only: the tokenizer of --init (encoder and codebook) comes out bit-identical, the decoder and head
    move, and the loss falls on a fixed batch; without --init it is refused up front."""
    first, second = tmp_path / "s1", tmp_path / "s1b"
    assert _run("stage1", first, max_steps=2) == 0
    assert _run("stage1", second, max_steps=16, init=str(first), decoder_only=True, overfit_one_batch=True,
                lr=5e-4) == 0
    a = _tensors(first / "export" / "bundle.safetensors")
    b = _tensors(second / "export" / "bundle.safetensors")
    tok = [k for k in a if k.startswith("tokenizer.")]
    assert tok and all(torch.equal(a[k], b[k]) for k in tok)
    assert any(not torch.equal(a[k], b[k]) for k in a if k.startswith("motion_decoder."))
    assert any(not torch.equal(a[k], b[k]) for k in a if k.startswith("joint_head."))
    log = _log(second)
    assert "vq" not in log[0] or log[0]["vq"] in ("", None)
    assert float(log[-1]["heatmap"]) < float(log[0]["heatmap"])
    with pytest.raises(IMAnimError, match="--decoder-only"):
        resolve_config("stage1", overrides=dict(SMALL, decoder_only=True, out=str(tmp_path / "x")))


def test_vae_decoder_only_with_latent_noise_keeps_the_latent_space(tmp_path):
    """train vae --decoder-only --latent-noise: the encoder of --init comes out bit-identical (so a DiT trained on its
    latents stays valid), the decoder moves, the batches carry seeded noise in normalised units up to the bound, and
    the options are refused where they make no sense."""
    from imanim_core.train.vae import VAEStage

    first, second = tmp_path / "v", tmp_path / "vd"
    assert _run("vae", first, max_steps=1) == 0
    assert _run("vae", second, max_steps=3, init=str(first), decoder_only=True, latent_noise=0.2) == 0
    a = _tensors(first / "export" / "vae.safetensors")
    b = _tensors(second / "export" / "vae.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a if k.startswith("encoder."))
    assert any(not torch.equal(a[k], b[k]) for k in a if k.startswith("decoder."))
    assert "latent_reg" not in _log(second)[0]
    # install_from_export(vae=...) takes the decoder-only VAE in place of the export's copy, and refuses another
    from imanim_core.errors import CheckpointError
    from imanim_core.weights import EmbeddedPaths, install_from_export

    exp = tmp_path / "s3" / "export"
    exp.mkdir(parents=True)
    for name in ("dit", "bundle"):
        (exp / f"{name}.safetensors").write_bytes(b"stand-in")
    (exp / "vae.safetensors").write_bytes((first / "export" / "vae.safetensors").read_bytes())
    dest = EmbeddedPaths(dit=tmp_path / "w" / "d", vae=tmp_path / "w" / "v", bundle=tmp_path / "w" / "b")
    install_from_export(exp, dest, vae=second)
    assert dest.vae.read_bytes() == (second / "export" / "vae.safetensors").read_bytes()
    assert _run("vae", tmp_path / "other", max_steps=1, seed=1) == 0
    with pytest.raises(CheckpointError, match="encoder"):
        install_from_export(exp, dest, vae=tmp_path / "other")
    cfg = resolve_config("vae", overrides=dict(SMALL, **STAGE_SMALL["vae"], out=str(tmp_path / "n"), latent_noise=0.2))
    stage = VAEStage(cfg, torch.device("cpu"))
    stage.build()
    n1, n2 = stage.load_batch(None, 0)["latent_noise"], stage.load_batch(None, 0)["latent_noise"]
    assert n1.shape == (1, 16, 2, 4, 4) and torch.equal(n1, n2) and 0 < float(n1.std()) < 0.2 * 1.5
    assert not torch.equal(n1, stage.load_batch(None, 1)["latent_noise"])
    with pytest.raises(IMAnimError, match="--latent-noise"):
        resolve_config("vae", overrides=dict(SMALL, latent_noise=-1.0, out=str(tmp_path / "x")))
    with pytest.raises(IMAnimError, match="--decoder-only"):
        resolve_config("stage2", overrides=dict(SMALL, decoder_only=True, init=str(first), out=str(tmp_path / "y")))
    over = dict(SMALL, **STAGE_SMALL["vae"], out=str(tmp_path / "w"), vae_preset="wan2.1-tiny", latent_noise=0.1)
    with pytest.raises(IMAnimError, match="only for the tiny video VAE"):
        VAEStage(resolve_config("vae", overrides=over), torch.device("cpu")).build()


def test_latent_weight_follows_the_vae_frame_groups_and_cells():
    """The flow-loss weight map: latent frame 0 = frame 0, latent frame i = frames 4i-3..4i; a cell counts when
    the character covers any of its 8x8 pixels in any frame of the group, grown by one cell."""
    from imanim_core.train.losses import latent_weight

    m = torch.zeros(1, 9, 64, 64, dtype=torch.bool)
    m[0, 2, 20:22, 41:43] = True  # frame 2 -> latent frame 1, pixel rows 20-21 -> cell 2, cols 41-42 -> cell 5
    w = latent_weight(m, 4.0, grow=0)
    assert w.shape == (1, 1, 3, 8, 8)
    assert w[0, 0, 1, 2, 5] == 5.0 and (w == 5.0).sum() == 1 and w.min() == 1.0
    w = latent_weight(m, 4.0)  # grown by one cell: the 3x3 block around it
    assert (w[0, 0, 1] == 5.0).sum() == 9 and w[0, 0, 1, 1:4, 4:7].eq(5.0).all()
    assert w[0, 0, 0].eq(1.0).all() and w[0, 0, 2].eq(1.0).all()
    m0 = torch.zeros(1, 5, 16, 16, dtype=torch.bool)
    m0[0, 0, 0, 0] = True  # frame 0 is latent frame 0 alone
    assert latent_weight(m0, 1.0, grow=0)[0, 0, :, 0, 0].tolist() == [2.0, 1.0]
    with pytest.raises(IMAnimError, match="masks"):
        latent_weight(torch.zeros(9, 64, 64), 1.0)


def test_flow_shift_and_character_weight_reach_the_loss_and_the_skeleton_baseline_continues(tmp_path):
    """stage 3 with --flow-fg-weight: the pool keeps the weight map made from the target masks and the module
    uses the configured shift; the skeleton baseline takes the same options and --init continues its export."""
    from imanim_core.train.skeleton import SkeletonStage
    from imanim_core.train.stage3 import Stage3

    seen = []

    class Watching(Stage3):
        def frozen_outputs(self, batch):
            out = super().frozen_outputs(batch)
            seen.append((self, batch, out))
            return out

    cfg = resolve_config("stage3", overrides=dict(SMALL, **STAGE_SMALL["stage3"], max_steps=2, sample_pool=2,
                                                  flow_shift=1.5, flow_fg_weight=3.0, out=str(tmp_path / "s3")))
    assert run_training(cfg, Watching) == 0
    stage, batch, out = seen[0]
    assert stage.module.flow_shift == 1.5
    assert out["weight"].shape == (1, 1, 2, 4, 4) and set(out["weight"].unique().tolist()) <= {1.0, 4.0}
    assert out["weight"].max() == 4.0 and "target_masks" not in batch  # the map, not the masks, is kept

    base = dict(out=str(tmp_path / "skel"), vae="random", max_steps=1, batch_size=1, num_frames=5, height=32,
                width=32, log_every=1, flow_shift=2.0, flow_fg_weight=2.0)
    assert run_training(resolve_config("stage3", overrides=base), SkeletonStage) == 0
    first = _tensors(tmp_path / "skel" / "export" / "skeleton_baseline.safetensors")
    cont = dict(base, out=str(tmp_path / "skel2"), init=str(tmp_path / "skel" / "export"), max_steps=1, lr=1e-12)
    assert run_training(resolve_config("stage3", overrides=cont), SkeletonStage) == 0
    again = _tensors(tmp_path / "skel2" / "export" / "skeleton_baseline.safetensors")
    assert first.keys() == again.keys()
    assert all(torch.allclose(first[k], again[k], atol=1e-6) for k in first)  # continued, not a fresh init
    bad = dict(base, out=str(tmp_path / "skel3"), init=str(tmp_path))
    with pytest.raises(IMAnimError, match="skeleton-baseline folder"):
        run_training(resolve_config("stage3", overrides=bad), SkeletonStage)
    with pytest.raises(IMAnimError, match="flow-shift"):
        resolve_config("stage3", overrides=dict(base, flow_shift=0.0)).validate()


def test_mixed_precision_auto_takes_bf16_only_where_it_is_faster(monkeypatch):
    """--mixed-precision auto: bf16 on CUDA; on a CPU only when both probes beat fp32; other values as given."""
    from imanim_core import precision

    assert precision.training_precision("no", "cpu")[0] == "no"
    assert precision.training_precision("bf16", "cpu")[0] == "bf16"
    assert precision.training_precision("auto", "cuda")[0] == "bf16"
    monkeypatch.setattr(precision, "cpu_bf16_speedup", lambda kind="matmul", width=256: 1.7)
    assert precision.training_precision("auto", "cpu")[0] == "bf16"
    monkeypatch.setattr(precision, "cpu_bf16_speedup", lambda kind="matmul", width=256: 1.7 if kind == "matmul" else 0.1)
    mp, why = precision.training_precision("auto", "cpu")
    assert mp == "no" and "0.10x (conv)" in why
    monkeypatch.undo()
    r = precision.cpu_bf16_speedup("matmul", 64)  # the real probe on this machine: a positive ratio
    assert r > 0 and precision.training_precision("auto", "cpu")[0] in ("bf16", "no")
    assert resolve_config("stage3", overrides=dict(out="x")).mixed_precision == "auto"
