"""The training loop every stage shares (DESIGN §2 stages; ARCHITECTURE ``train/``).

A stage (``stage1.py``, ``stage2.py``, ``stage3.py``, ``vae.py``) is a :class:`~.stage.Stage`: it builds one
``nn.Module`` whose ``forward(batch) -> (loss, {term: value})`` computes the loss (this module is what
Accelerate wraps in DDP/FSDP), says which parameters train at which learning-rate scale, produces batches, runs
the frozen models on them (``Stage.prepare``, e.g. the VAE), and writes its exports. :class:`Trainer`
(``resume``, ``step``, ``save``, ``export``, ``fit``; :func:`run_training` = ``Trainer(...).fit()``) does the rest:

- Accelerate (``accelerate launch``: DDP on several processes, or FSDP with ``accelerate/fsdp_14b.yaml``),
  mixed precision through ``Accelerator(mixed_precision=...)``, gradient accumulation (``no_sync`` on all but
  the last micro-batch), gradient clipping, warm-up + cosine learning rate, EMA, gradient checkpointing.
- **Determinism / exact resume.** Everything random in a step (which samples, augmentation, noise, timesteps,
  dropout) is seeded from ``(seed, step, micro-batch, rank)`` (``seeding.py``), so the data position *is* the
  step counter and a resumed run computes the same steps as an uninterrupted one. The process RNG states are
  saved as well.
- Checkpoints ``DIR/checkpoints/step_N/`` (format: ``checkpoint.py``).
- ``DIR/log.csv`` (step, loss, per-term losses, grad_norm, lr, time, steps_per_s), a tqdm bar, a summary at the
  end (also ``DIR/summary.json``). Ctrl-C (or SIGTERM) finishes the current step, saves a checkpoint, exports
  and exits with code 130; a second Ctrl-C a few seconds later stops at once.
"""
from __future__ import annotations

import json
import math
import os
import shutil
import sys
import time
from contextlib import nullcontext
from pathlib import Path

import torch
from tqdm.auto import tqdm

from ..errors import IMAnimError
from .checkpoint import (CKPT_FORMAT, CKPT_VERSION, list_checkpoints, load_tensors, load_trainable,
                         optimizer_from_flat, optimizer_to_flat, read_state, save_tensors)
from .config import TrainConfig
from .optim import EMA, enable_grad_checkpointing, lr_factor, trainable_named_params
from ..precision import training_precision
from .runtime import CsvLog, StepBatches, StopFlag, as_is, build_accelerator, to_device, worker_init
from .seeding import mix_seed, rng_state, seed_everything, set_rng_state

EXIT_INTERRUPTED = 130


class Trainer:
    """One stage's run: built by the constructor (run folder, stage, optimiser), then :meth:`resume` (the latest
    checkpoint, when resuming) and :meth:`fit` (the loop of :meth:`step`, :meth:`save` every ``ckpt_every``
    steps, :meth:`export` at the end)."""

    def __init__(self, cfg: TrainConfig, stage_cls, resume: bool = False, accelerator=None):
        from accelerate.utils import DistributedType

        cfg = self.cfg = cfg.validate()
        out = self.out = Path(cfg.out)
        if cfg.num_threads:
            torch.set_num_threads(cfg.num_threads)
        # --mixed-precision auto: bf16 only where it is faster on this machine (see imanim_core/precision.py)
        mp, self.precision_note = training_precision(cfg.mixed_precision,
                                                     "cuda" if torch.cuda.is_available() else "cpu")
        if mp != cfg.mixed_precision:
            cfg = self.cfg = cfg.replace(mixed_precision=mp)
        acc = self.acc = accelerator or build_accelerator(cfg, stage_cls.find_unused_parameters)
        self.main = acc.is_main_process
        self.rank, self.world = acc.process_index, acc.num_processes
        self.is_fsdp = acc.distributed_type == DistributedType.FSDP

        # ---- run directory and what to resume
        existing = list_checkpoints(out)
        if existing and not resume:
            raise IMAnimError(f"--out {str(out)!r} already holds a run (checkpoints up to step {existing[-1][0]}); "
                              f"pass --resume to continue it or choose another --out")
        if resume and not existing:
            self.say(f"--resume: no checkpoint in {out / 'checkpoints'} yet, starting from step 0")
        self.resume_dir = existing[-1][1] if existing and resume else None
        if self.main:
            (out / "checkpoints").mkdir(parents=True, exist_ok=True)
            (out / "export").mkdir(parents=True, exist_ok=True)
        acc.wait_for_everyone()

        seed_everything(mix_seed(cfg.seed, "build"))  # identical initial weights on every process
        stage = self.stage = stage_cls(cfg, acc.device, log=self.say)
        module = self.module = stage.build()
        stage.module = module
        if cfg.grad_checkpointing:
            done = enable_grad_checkpointing(module)
            self.say(f"gradient checkpointing: {', '.join(done) if done else 'no part of this model supports it'}")
        groups = self.groups = stage.param_groups()
        self.group_scales = [float(g.get("lr_scale", 1.0)) for g in groups]
        self.n_train = sum(p.numel() for g in groups for p in g["params"])
        if self.n_train == 0:
            raise IMAnimError(f"train {cfg.stage}: nothing to train with these options (every part is frozen)")
        self.named_train = trainable_named_params(module)
        self.opt = torch.optim.AdamW([{"params": g["params"], "lr": cfg.lr * s}
                                      for g, s in zip(groups, self.group_scales)],
                                     lr=cfg.lr, betas=tuple(cfg.betas), weight_decay=cfg.weight_decay)
        if cfg.ema and self.is_fsdp:
            raise IMAnimError("--ema is not supported with FSDP (the weights are sharded); train without --ema")
        self.model = None  # the prepared (wrapped) module, set by resume()
        self.ema = None
        self.start_step, self.elapsed_before = 0, 0.0
        self.resumed_terms: dict = {}  # the last logged losses of the checkpoint a resumed run starts from

    def say(self, msg):
        if self.acc.is_main_process:
            tqdm.write(str(msg))

    # ------------------------------------------------------------------------------------------------ resume
    def resume(self):
        """Load the checkpoint to resume from (weights, optimiser, EMA, RNG, the stage's extra state) and let
        Accelerate wrap the module and optimiser; without one, only the wrapping."""
        cfg, step_dir = self.cfg, self.resume_dir
        if step_dir is not None:
            state = read_state(step_dir, cfg, self.out, self.say)
            load_trainable(step_dir, self.named_train)
            if not self.is_fsdp:
                optimizer_from_flat(self.opt, load_tensors(step_dir / "optimizer.safetensors"), state["optimizer"])
            if cfg.ema:
                self.ema = EMA(self.named_train, cfg.ema_decay)
                if not (step_dir / "ema.safetensors").is_file():
                    self.say("warning: the checkpoint has no EMA; starting the EMA from the current weights")
                else:
                    self.ema.load_state_dict(load_tensors(step_dir / "ema.safetensors"), state.get("ema_updates", 0))
            self.start_step = int(state["step"])
            self.stage.step = self.start_step
            self.elapsed_before = float(state.get("elapsed", 0.0))
            self.resumed_terms = dict(state.get("last_losses") or {})
            self.say(f"resumed from {step_dir} (step {self.start_step})")

        if cfg.ema and self.ema is None:
            self.ema = EMA(self.named_train, cfg.ema_decay)
        self.model, self.opt = self.acc.prepare(self.module, self.opt)
        if step_dir is not None:
            if self.is_fsdp and (step_dir / "accelerate").is_dir():
                self.acc.load_state(str(step_dir / "accelerate"))
            rng_file = step_dir / f"rng_rank{self.rank}.safetensors"
            rng_meta = json.loads((step_dir / "state.json").read_text()).get("rng", {}).get(str(self.rank))
            if rng_file.is_file() and rng_meta:
                set_rng_state(load_tensors(rng_file), rng_meta)
            extra_file = step_dir / f"extra_rank{self.rank}.safetensors"
            if extra_file.is_file():
                self.stage.load_extra_state(load_tensors(extra_file))
        return self

    # ------------------------------------------------------------------------------------------------ save
    def save(self, step: int, elapsed: float, last_terms: dict) -> Path:
        """Write checkpoint ``step_N`` (every process takes part; the main process writes the shared files)."""
        cfg, acc, out, rank, world, ema = self.cfg, self.acc, self.out, self.rank, self.world, self.ema
        root = out / "checkpoints"
        tmp = root / f"step_{step}.tmp"
        final = root / f"step_{step}"
        if self.main:
            if tmp.exists():
                shutil.rmtree(tmp)
            tmp.mkdir(parents=True)
        acc.wait_for_everyone()
        rt, rmeta = rng_state()
        save_tensors(tmp / f"rng_rank{rank}.safetensors", rt)
        extra = self.stage.extra_state()
        if extra:
            save_tensors(tmp / f"extra_rank{rank}.safetensors", extra)
        metas = [None] * world
        if world > 1:
            import torch.distributed as dist

            dist.all_gather_object(metas, rmeta)
        else:
            metas = [rmeta]
        full = None
        if self.is_fsdp:  # collectives: every process takes part
            acc.save_state(str(tmp / "accelerate"))
            full = acc.get_state_dict(self.model)
        if self.main:
            unwrapped = acc.unwrap_model(self.model)
            if self.is_fsdp:
                names = {n for n, _ in self.named_train}
                tensors = {n: v for n, v in full.items() if n in names}
                opt_meta = {}
            else:
                tensors = {n: p for n, p in trainable_named_params(unwrapped)}
                opt = self.opt
                ot, opt_meta = optimizer_to_flat(opt.optimizer if hasattr(opt, "optimizer") else opt)
                save_tensors(tmp / "optimizer.safetensors", ot)
            save_tensors(tmp / "model.safetensors", tensors, {"format": CKPT_FORMAT, "step": step})
            if ema is not None:
                save_tensors(tmp / "ema.safetensors", ema.state_dict())
            state = {"format": CKPT_FORMAT, "version": CKPT_VERSION, "stage": cfg.stage, "step": step,
                     "samples_seen": step * cfg.batch_size * cfg.grad_accum * world, "world_size": world,
                     "elapsed": elapsed, "config": cfg.to_dict(), "optimizer": opt_meta,
                     "ema_updates": ema.num_updates if ema is not None else 0,
                     "rng": {str(r): m for r, m in enumerate(metas)}, "last_losses": last_terms,
                     "saved_at": time.strftime("%Y-%m-%dT%H:%M:%S")}
            (tmp / "state.json").write_text(json.dumps(state))
            if final.exists():
                shutil.rmtree(final)
            os.replace(tmp, final)
            for _, old_dir in list_checkpoints(out)[:-cfg.keep_checkpoints]:
                shutil.rmtree(old_dir, ignore_errors=True)
        acc.wait_for_everyone()
        return final

    def export(self) -> dict:
        """The stage's exports, from the EMA weights when there is an EMA."""
        acc, model = self.acc, self.model
        unwrapped = acc.unwrap_model(model)
        ctx = self.ema.swapped_in() if self.ema is not None else nullcontext()
        if self.is_fsdp:
            from torch.distributed.fsdp import FullyShardedDataParallel as FSDP

            ctx = FSDP.summon_full_params(model, writeback=False, rank0_only=True, offload_to_cpu=True)
        files = {}
        with ctx:
            if self.main:
                files = self.stage.export(unwrapped, self.out / "export")
        acc.wait_for_everyone()
        return files

    # ------------------------------------------------------------------------------------------------ step
    def step(self, micro_batches: list) -> tuple:
        """One optimiser step (``self.at`` counts the steps done) on this process's micro-batches: (per-term means,
        grad norm, lr factor). A non-finite gradient skips the update (ten in a row are an error)."""
        cfg, acc, model, opt, step = self.cfg, self.acc, self.model, self.opt, self.at
        fac = lr_factor(cfg, step)
        for g, s in zip(opt.param_groups, self.group_scales):
            g["lr"] = cfg.lr * s * fac
        terms_sum: dict = {}
        key_step = 0 if cfg.overfit_one_batch else step
        for m, batch in enumerate(micro_batches):
            seed_everything(mix_seed(cfg.seed, "step", key_step, m, self.rank))
            batch = to_device(batch, acc.device)
            with torch.no_grad(), acc.autocast():
                batch = self.stage.prepare(batch)
            sync_ctx = acc.no_sync(model) if m < len(micro_batches) - 1 else nullcontext()
            with sync_ctx:
                loss, terms = model(batch)
                acc.backward(loss / len(micro_batches))
            terms = {"loss": loss, **terms}
            for k, v in terms.items():
                terms_sum[k] = terms_sum.get(k, 0.0) + float(v.detach().float()) / len(micro_batches)
        gn = acc.clip_grad_norm_(self.params_for_clip, cfg.grad_clip if cfg.grad_clip > 0 else float("inf"))
        gn = float(gn) if gn is not None else float("nan")
        if math.isfinite(gn):
            opt.step()
            self.skipped = 0
        else:
            self.skipped += 1
            self.say(f"warning: step {step + 1}: non-finite gradients, update skipped")
            if self.skipped >= 10:
                raise IMAnimError(f"train {cfg.stage}: 10 steps in a row had non-finite gradients; "
                                  f"lower --lr or use --mixed-precision no")
        opt.zero_grad(set_to_none=True)
        step = self.at = step + 1
        self.stage.step = step
        terms_sum.update(self.stage.after_step(acc.unwrap_model(model), step, acc, self.ema) or {})
        if self.ema is not None and math.isfinite(gn):
            self.ema.update()
        return terms_sum, gn, fac

    def _log_row(self, window: dict, step: int, fac: float, now: float, t_window: float) -> dict:
        """The mean of the logging window over every process -> a ``log.csv`` row."""
        keys = sorted(k for k in window if k != "n")
        vec = torch.tensor([window[k] / window["n"] for k in keys], device=self.acc.device, dtype=torch.float64)
        if self.world > 1:
            vec = self.acc.reduce(vec, reduction="mean")
        avg = dict(zip(keys, vec.tolist()))
        row = {"step": step, "loss": avg.pop("loss")}
        gnorm = avg.pop("grad_norm")
        row.update(avg)
        row.update({"grad_norm": gnorm, "lr": self.cfg.lr * fac, "time": self.elapsed_before + now - self.t0,
                    "steps_per_s": window["n"] / max(1e-9, now - t_window)})
        return row

    def _stop_wanted(self, stop: StopFlag) -> bool:
        """A stop request on any process stops all of them at the same step."""
        want_stop = stop.requested
        if self.world > 1:
            flag = torch.tensor([1.0 if want_stop else 0.0], device=self.acc.device)
            want_stop = bool(self.acc.reduce(flag, reduction="sum").item() > 0)
        return want_stop

    # ------------------------------------------------------------------------------------------------ fit
    def _announce(self):
        cfg = self.cfg
        if self.main:
            (self.out / "config.json").write_text(json.dumps(cfg.to_dict(), indent=2))
            desc = self.stage.describe()
            if desc:
                self.say(desc)
            self.say(f"train {cfg.stage} ({cfg.preset}): {self.n_train / 1e6:.2f}M trainable parameters, "
                     f"{self.world} process(es), batch {cfg.batch_size} x accum {cfg.grad_accum} x {self.world}, "
                     f"mixed precision {cfg.mixed_precision} ({self.precision_note}), steps {self.start_step} -> {cfg.max_steps}, "
                     f"out {self.out}")

    def fit(self) -> int:
        """Train to ``cfg.max_steps``. Returns 0 when done, 130 when stopped by Ctrl-C/SIGTERM."""
        if self.model is None:
            self.resume()
        cfg, acc, out, world = self.cfg, self.acc, self.out, self.world
        start_step = self.start_step
        self._announce()
        log = CsvLog(out / "log.csv", start_step) if self.main else None
        ds = StepBatches(self.stage, cfg, start_step, cfg.max_steps, self.rank, world)
        loader = torch.utils.data.DataLoader(ds, batch_size=None, shuffle=False, num_workers=cfg.num_workers,
                                             worker_init_fn=worker_init if cfg.num_workers else None,
                                             collate_fn=as_is, prefetch_factor=2 if cfg.num_workers else None,
                                             persistent_workers=False)
        stop = StopFlag()
        stop.install()
        # FSDP clips through the wrapped model (Accelerate needs all of its parameters for that)
        self.params_for_clip = (list(self.model.parameters()) if self.is_fsdp
                                else [p for g in self.groups for p in g["params"]])
        self.t0 = t0 = time.time()
        self.skipped = 0
        window = {"n": 0}
        last_terms: dict = {}
        self.at = start_step
        steps_this_run = 0
        interrupted = False
        bar = tqdm(total=cfg.max_steps, initial=start_step, disable=not self.main, desc=f"train {cfg.stage}",
                   dynamic_ncols=True, smoothing=0.1)
        last_ckpt_step = start_step if self.resume_dir is not None else -1
        t_window = time.time()
        try:
            self.model.train()
            for micro_batches in loader:
                terms_sum, gn, fac = self.step(micro_batches)
                step = self.at
                steps_this_run += 1
                terms_sum["grad_norm"] = gn
                for k, v in terms_sum.items():
                    window[k] = window.get(k, 0.0) + v
                window["n"] += 1
                bar.update(1)
                if self.main:
                    bar.set_postfix(loss=f"{terms_sum['loss']:.4g}", refresh=False)
                want_stop = self._stop_wanted(stop)
                if step % cfg.log_every == 0 or step == cfg.max_steps or want_stop:
                    now = time.time()
                    row = self._log_row(window, step, fac, now, t_window)
                    last_terms = {k: v for k, v in row.items() if k not in ("step", "time", "lr", "steps_per_s")}
                    if self.main:
                        log.write(row)
                    window = {"n": 0}
                    t_window = now
                if want_stop:
                    interrupted = True
                    break
                if step % cfg.ckpt_every == 0 and step < cfg.max_steps:
                    self.save(step, self.elapsed_before + time.time() - t0, last_terms)
                    last_ckpt_step = step
                if step >= cfg.max_steps:
                    break
        except Exception:
            # keep what was learned up to the last completed step (single process only: the others may be fine
            # and would not join the collectives of a checkpoint)
            bar.close()
            step = self.at
            if world == 1 and steps_this_run > 0 and step != last_ckpt_step:
                try:
                    ck = self.save(step, self.elapsed_before + time.time() - t0, last_terms)
                    print(f"error at step {step + 1}; the state after step {step} is saved in {ck} "
                          f"(fix the problem and continue with --resume)", file=sys.stderr, flush=True)
                except Exception:  # noqa: BLE001 - the original error matters more
                    pass
            raise
        finally:
            bar.close()
            stop.uninstall()

        step = self.at
        elapsed = time.time() - t0
        in_sync = self._ranks_in_sync()
        if step != last_ckpt_step:
            ck = self.save(step, self.elapsed_before + elapsed, last_terms)
        else:
            ck = list_checkpoints(out)[-1][1] if list_checkpoints(out) else None
        files = self.export()
        self.stage.close()
        self._summary(step, steps_this_run, elapsed, last_terms, in_sync, interrupted, ck, files)
        acc.wait_for_everyone()
        return EXIT_INTERRUPTED if interrupted else 0

    def _ranks_in_sync(self) -> bool:
        """Every process must hold the same weights (DDP, codebook restarts, ...); warns when they do not."""
        if self.world == 1 or self.is_fsdp:
            return True
        acc = self.acc
        with torch.no_grad():
            ps = [p.detach().double() for _, p in trainable_named_params(acc.unwrap_model(self.model))]
            fp = torch.stack([sum(p.sum() for p in ps), sum((p * p).sum() for p in ps)]).to(acc.device)
        allfp = acc.gather(fp[None]).reshape(self.world, 2)
        in_sync = bool(torch.allclose(allfp, allfp[:1].expand_as(allfp), rtol=1e-12, atol=0.0))
        if not in_sync:
            self.say("warning: the processes ended with different weights (please report this); rank 0's are saved")
        return in_sync

    def _summary(self, step, steps_this_run, elapsed, last_terms, in_sync, interrupted, ck, files):
        cfg, out, world = self.cfg, self.out, self.world
        summary = {"stage": cfg.stage, "preset": cfg.preset, "step": step, "max_steps": cfg.max_steps,
                   "steps_this_run": steps_this_run, "seconds": round(elapsed, 2),
                   "steps_per_s": round(steps_this_run / elapsed, 4) if elapsed > 0 and steps_this_run else None,
                   # the whole run, over every resume (checkpoints carry the elapsed training time)
                   "seconds_total": round(self.elapsed_before + elapsed, 2),
                   "final_losses": last_terms or self.resumed_terms, "processes": world, "ranks_in_sync": in_sync,
                   "interrupted": interrupted,
                   "log": str(out / "log.csv"), "checkpoint": str(ck) if ck else None,
                   "exports": {k: str(v) for k, v in files.items()}}
        if not self.main:
            return
        (out / "summary.json").write_text(json.dumps(summary, indent=2))
        lines = [f"{'stopped' if interrupted else 'finished'} train {cfg.stage}: step {step}/{cfg.max_steps} "
                 f"({steps_this_run} steps in {elapsed:.1f} s, {summary['steps_per_s']} steps/s, "
                 f"{world} process(es))",
                 "final losses: " + ", ".join(f"{k}={v:.4g}" for k, v in summary["final_losses"].items()),
                 f"log:        {out / 'log.csv'}",
                 f"checkpoint: {ck}"]
        lines += [f"export:     {v}  ({k})" for k, v in files.items()]
        if interrupted:
            lines.append(f"resume with the same command and --resume (continues from step {step})")
        print("\n".join(lines), flush=True)


def run_training(cfg: TrainConfig, stage_cls, resume: bool = False, accelerator=None) -> int:
    """Train one stage to ``cfg.max_steps``. Returns 0 when done, 130 when stopped by Ctrl-C/SIGTERM."""
    return Trainer(cfg, stage_cls, resume=resume, accelerator=accelerator).resume().fit()


def dry_run(cfg: TrainConfig, stage_cls) -> dict:
    """Check a configuration without training: the options, the files it names, and the model sizes (built on
    the meta device, so even the 14B DiT costs no memory)."""
    cfg = cfg.validate()
    stage = stage_cls(cfg, torch.device("cpu"), log=lambda *_: None)
    stage.dry = True
    with torch.device("meta"):
        module = stage.build()
    stage.module = module
    groups = stage.param_groups()
    parts = {}
    for name, child in module.named_children():
        ps = list(child.parameters())
        parts[name] = {"params": sum(p.numel() for p in ps),
                       "trainable": sum(p.numel() for p in ps if p.requires_grad)}
    return {"stage": cfg.stage, "preset": cfg.preset, "config": cfg.to_dict(), "parts": parts,
            "param_groups": [{"name": g.get("name"), "lr": cfg.lr * float(g.get("lr_scale", 1.0)),
                              "params": sum(p.numel() for p in g["params"])} for g in groups],
            "trainable_params": sum(p.numel() for g in groups for p in g["params"]),
            "plan": stage.describe()}


__all__ = ["Trainer", "run_training", "dry_run", "EXIT_INTERRUPTED"]
