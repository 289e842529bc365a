"""The training loop every stage shares (DESIGN §2 stages; ARCHITECTURE ``train/``).

A stage (``stage1.py``, ``stage2.py``, ``stage3.py``, ``vae.py``) is a :class:`Stage`: it builds one
``nn.Module`` whose ``forward(batch) -> (loss, {term: value})`` computes the loss (this module is what
Accelerate wraps in DDP/FSDP), says which parameters train at which learning-rate scale, produces batches, runs
the frozen models on them (:meth:`Stage.prepare`, e.g. the VAE), and writes its exports.
:func:`run_training` does the rest:

- Accelerate (``accelerate launch``: DDP on several processes, or FSDP with ``accelerate/fsdp_14b.yaml``),
  mixed precision through ``Accelerator(mixed_precision=...)``, gradient accumulation (``no_sync`` on all but
  the last micro-batch), gradient clipping, warm-up + cosine learning rate, EMA, gradient checkpointing.
- **Determinism / exact resume.** Everything random in a step (which samples, augmentation, noise, timesteps,
  dropout) is seeded from ``(seed, step, micro-batch, rank)``, so the data position *is* the step counter and
  a resumed run computes the same steps as an uninterrupted one. The process RNG states are saved as well.
- Checkpoints ``DIR/checkpoints/step_N/``: ``model.safetensors`` (trainable parameters), ``optimizer.safetensors``,
  ``ema.safetensors``, ``rng_rank{r}.safetensors`` and ``state.json`` (step, config, optimiser metadata, RNG of
  Python's ``random``); written to a temporary folder and renamed, the last ``keep_checkpoints`` kept.
- ``DIR/log.csv`` (step, loss, per-term losses, grad_norm, lr, time, steps_per_s), a tqdm bar, a summary at the
  end (also ``DIR/summary.json``). Ctrl-C (or SIGTERM) finishes the current step, saves a checkpoint, exports
  and exits with code 130; a second Ctrl-C a few seconds later stops at once.
"""
from __future__ import annotations

import csv
import hashlib
import json
import math
import os
import random
import re
import shutil
import signal
import sys
import time
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Iterable, Optional

import numpy as np
import torch
import torch.nn as nn

from ..errors import CheckpointError, IMAnimError
from .config import TrainConfig

CKPT_FORMAT = "imanim-train-checkpoint"
CKPT_VERSION = 1
EXIT_INTERRUPTED = 130
# options that may differ between a run and its resumption without a warning
_RESUME_FREE = {"max_steps", "log_every", "ckpt_every", "keep_checkpoints", "num_workers", "num_threads", "out",
                "data", "init", "vae", "dit"}


# ---------------------------------------------------------------------------------------------------- seeds
def mix_seed(*parts) -> int:
    """A stable 63-bit seed from any printable parts (same on every machine and Python run)."""
    h = hashlib.blake2b(repr(parts).encode(), digest_size=8).digest()
    return int.from_bytes(h, "little") & ((1 << 63) - 1)


def seed_everything(seed: int) -> torch.Generator:
    """Seed Python, NumPy and torch (all devices); return a CPU generator with the same seed."""
    random.seed(seed)
    np.random.seed(seed % (2 ** 32))
    torch.manual_seed(seed)
    g = torch.Generator()
    g.manual_seed(seed)
    return g


def epoch_indices(n: int, first: int, count: int, seed: int) -> list:
    """Items ``first .. first+count-1`` of an endless stream of seeded permutations of ``range(n)``
    (one new permutation per epoch). The data position of a run is just ``first``."""
    if n < 1:
        raise IMAnimError("the training data set is empty")
    out = []
    cache = {}
    for k in range(first, first + count):
        ep, pos = divmod(k, n)
        if ep not in cache:
            g = torch.Generator().manual_seed(mix_seed(seed, "epoch", ep))
            cache[ep] = torch.randperm(n, generator=g).tolist()
        out.append(cache[ep][pos])
    return out


# ---------------------------------------------------------------------------------------------------- losses
def weighted_heatmap_mse(pred: torch.Tensor, target: torch.Tensor, fg_weight: float = 10.0) -> torch.Tensor:
    """Heatmap MSE in which visible joints matter: each pixel's squared error is weighted by
    ``1 + fg_weight * target`` and the sum is normalised by the total weight. Gaussian targets are ~0 almost
    everywhere, so a plain mean is won by predicting empty maps; this weighting keeps the peaks in charge.
    Invisible joints (all-zero targets, see ``render_heatmaps``) are still pushed to empty maps with weight 1.
    ``pred``/``target``: ``[..., J, H, W]``."""
    if pred.shape != target.shape:
        raise IMAnimError(f"heatmaps: prediction {tuple(pred.shape)} and target {tuple(target.shape)} differ")
    t = target.float()
    w = 1.0 + fg_weight * t
    se = (pred.float() - t) ** 2
    return (se * w).sum() / w.sum()


def keypoint_error(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean distance (heatmap pixels) between the peaks of predicted and target maps ``[..., J, H, W]``, over
    the joints that have a target (a monitoring number, no gradient)."""
    from ..data.heatmaps import heatmap_argmax

    with torch.no_grad():
        pk, _ = heatmap_argmax(pred.float())
        tk, tpeak = heatmap_argmax(target.float())
        m = (tpeak > 0.5).float()
        d = (pk - tk).norm(dim=-1)
        return (d * m).sum() / m.sum().clamp_min(1.0)


# ---------------------------------------------------------------------------------------------------- EMA
class EMA:
    """Exponential moving average of the trainable parameters (float32 shadows), with the usual warm-up
    ``decay_t = min(decay, (1 + n) / (10 + n))``."""

    def __init__(self, named_params: Iterable, decay: float):
        self.decay = float(decay)
        self.num_updates = 0
        self.params = dict(named_params)
        self.shadow = {k: p.detach().float().clone() for k, p in self.params.items()}

    @torch.no_grad()
    def update(self):
        self.num_updates += 1
        d = min(self.decay, (1 + self.num_updates) / (10 + self.num_updates))
        for k, p in self.params.items():
            self.shadow[k].mul_(d).add_(p.detach().float(), alpha=1 - d)

    def state_dict(self) -> dict:
        return dict(self.shadow)

    def load_state_dict(self, tensors: dict, num_updates: int):
        missing = sorted(set(self.shadow) - set(tensors))
        if missing:
            raise CheckpointError(f"EMA checkpoint: missing {len(missing)} tensors (e.g. {missing[:3]})")
        for k in self.shadow:
            self.shadow[k].copy_(tensors[k])
        self.num_updates = int(num_updates)

    @contextmanager
    def swapped_in(self):
        """Temporarily put the EMA weights into the model (for exports)."""
        saved = {k: p.detach().clone() for k, p in self.params.items()}
        with torch.no_grad():
            for k, p in self.params.items():
                p.copy_(self.shadow[k].to(p.dtype))
        try:
            yield
        finally:
            with torch.no_grad():
                for k, p in self.params.items():
                    p.copy_(saved[k])


# ---------------------------------------------------------------------------------------------------- stage API
class Stage:
    """One training stage. Subclasses set ``name`` and implement the methods below."""

    name = "stage"
    find_unused_parameters = False

    def __init__(self, cfg: TrainConfig, device: torch.device, log=print):
        self.cfg = cfg
        self.device = device
        self.log = log
        self.module: Optional[nn.Module] = None  # the trained module: forward(batch) -> (loss, terms)
        self.dry = False  # dry run: build on the meta device, check that files exist but load nothing
        self.step = 0  # optimiser steps done (kept up to date by run_training; exports record it)

    # building
    def build(self) -> nn.Module:
        """Build (and initialise from ``--init`` etc.) the trained module and any frozen helpers."""
        raise NotImplementedError

    def param_groups(self) -> list:
        """``[{"name": str, "params": [...], "lr_scale": float}, ...]`` of the parameters that train."""
        raise NotImplementedError

    def describe(self) -> str:
        """One line per part: what trains, what is frozen."""
        return ""

    # data
    def load_batch(self, gen: torch.Generator, sample_offset: int) -> dict:
        """A CPU batch of ``cfg.batch_size`` samples; ``sample_offset`` counts samples over the whole run and all
        processes (use it with :func:`epoch_indices` for finite data sets); ``gen`` is seeded per micro-batch."""
        raise NotImplementedError

    def prepare(self, batch: dict) -> dict:
        """Run frozen models on a device batch (called under ``torch.no_grad()`` and autocast)."""
        return batch

    def after_step(self, module: nn.Module, step: int, accelerator, ema: Optional["EMA"]) -> dict:
        """Called on every process after each optimiser step (``step`` = steps done); may change weights, as
        long as every process ends up with the same ones. Returns extra numbers to log (or {})."""
        return {}

    def extra_state(self) -> dict:
        """Per-process tensors to keep in checkpoints (restored with :meth:`load_extra_state`)."""
        return {}

    def load_extra_state(self, tensors: dict) -> None:
        pass

    # results
    def export(self, module: nn.Module, export_dir: Path) -> dict:
        """Write the stage's exports; return ``{what: path}``."""
        raise NotImplementedError

    def close(self):
        pass


class PooledClipStage(Stage):
    """A stage on clip samples (``train.data.clip_batch``) whose frozen models (VAE, frozen encoder) are costly,
    with the optional **sample pool** (``--sample-pool N``; stage 3 and the skeleton baseline).

    Subclasses set ``self.source`` in ``build`` and implement :meth:`clip_inputs` (CPU: stacked samples -> model
    inputs) and :meth:`frozen_outputs` (device, no grad: inputs -> what the trained module reads).

    With ``sample_pool = N > 0`` the run cycles through N distinct samples (sample counter mod N) and keeps, per
    sample, what :meth:`frozen_outputs` made of it in the main process's memory. Those are pure functions of the
    sample (the models are frozen), so the pool is only a cache: the first pass costs what it always did, later
    passes skip the frozen models (the VAE is about 3/4 of a tiny stage-3 step on a CPU). A resumed run rebuilds
    it as it goes. With N = 0 every sample is new and nothing is kept.
    """

    memo: Optional[dict] = None

    def clip_inputs(self, batch: dict) -> dict:
        raise NotImplementedError

    def frozen_outputs(self, batch: dict) -> dict:
        raise NotImplementedError

    def load_batch(self, gen, sample_offset):
        from .data import clip_batch, collate_clips

        n = int(self.cfg.sample_pool)
        if n <= 0:
            return self.clip_inputs(clip_batch(self.source, sample_offset, self.cfg.batch_size))
        if self.memo is None:
            self.memo = {}
        ids = [(sample_offset + i) % n for i in range(self.cfg.batch_size)]
        if all(i in self.memo for i in ids):
            return {"sample_ids": torch.tensor(ids)}
        out = self.clip_inputs(collate_clips([self.source.samples(i, 1)[0] for i in ids]))
        out["sample_ids"] = torch.tensor(ids)
        return out

    def prepare(self, batch):
        ids = batch.pop("sample_ids", None)
        if ids is None:
            return self.frozen_outputs(batch)
        if self.memo is None:
            self.memo = {}
        ids = [int(i) for i in ids]
        missing = [j for j, i in enumerate(ids) if i not in self.memo]
        if missing:
            fresh = self.frozen_outputs({k: v[missing] for k, v in batch.items()})
            for n, j in enumerate(missing):
                self.memo[ids[j]] = {k: v[n].detach().clone() for k, v in fresh.items()}
        return {k: torch.stack([self.memo[i][k] for i in ids]) for k in self.memo[ids[0]]}


def enable_grad_checkpointing(module: nn.Module) -> list:
    """Turn on gradient checkpointing wherever a submodule supports it; return the names that did."""
    done = []
    for name, m in module.named_modules():
        if hasattr(m, "enable_gradient_checkpointing") and getattr(m, "_supports_gradient_checkpointing", True):
            try:
                m.enable_gradient_checkpointing()
                done.append(name or type(m).__name__)
            except Exception:  # noqa: BLE001 - a part that cannot checkpoint just runs without it
                pass
        elif isinstance(getattr(m, "gradient_checkpointing", None), bool) and not any(
                name.startswith(d + ".") for d in done if d):
            m.gradient_checkpointing = True
            done.append(name or type(m).__name__)
    return done


def lr_factor(cfg: TrainConfig, step: int) -> float:
    """Learning-rate multiplier at optimiser step ``step`` (0-based): linear warm-up, then constant or cosine
    down to ``min_lr_ratio``. A pure function of the step (nothing to save)."""
    if cfg.warmup_steps > 0 and step < cfg.warmup_steps:
        return (step + 1) / cfg.warmup_steps
    if cfg.lr_schedule == "constant":
        return 1.0
    span = max(1, cfg.max_steps - cfg.warmup_steps)
    p = min(1.0, (step - cfg.warmup_steps) / span)
    return cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * p))


# ---------------------------------------------------------------------------------------------------- state I/O
def _save_tensors(path: Path, tensors: dict, meta: Optional[dict] = None):
    from safetensors.torch import save_file

    clean = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    save_file(clean, str(path), metadata={k: str(v) for k, v in (meta or {}).items()})


def _load_tensors(path: Path) -> dict:
    from safetensors.torch import load_file

    if not path.is_file():
        raise CheckpointError(f"checkpoint file {str(path)!r} is missing")
    return load_file(str(path))


def optimizer_to_flat(opt: torch.optim.Optimizer) -> tuple:
    """Optimizer state -> (tensors for safetensors, JSON-able metadata)."""
    sd = opt.state_dict()
    tensors, scalars = {}, {}
    for idx, st in sd["state"].items():
        for k, v in st.items():
            if torch.is_tensor(v):
                tensors[f"state.{idx}.{k}"] = v
            else:
                scalars[f"{idx}.{k}"] = v
    return tensors, {"param_groups": sd["param_groups"], "scalars": scalars}


def optimizer_from_flat(opt: torch.optim.Optimizer, tensors: dict, meta: dict):
    state: dict = {}
    for key, v in tensors.items():
        _, idx, k = key.split(".", 2)
        state.setdefault(int(idx), {})[k] = v
    for key, v in meta.get("scalars", {}).items():
        idx, k = key.split(".", 1)
        state.setdefault(int(idx), {})[k] = v
    groups = meta["param_groups"]
    cur = opt.state_dict()["param_groups"]
    if [len(g["params"]) for g in groups] != [len(g["params"]) for g in cur]:
        raise CheckpointError("optimizer checkpoint: the parameter groups do not match this model "
                              "(was the checkpoint written with other options, e.g. --lora-rank/--end-to-end?)")
    opt.load_state_dict({"state": state, "param_groups": groups})


def rng_state() -> tuple:
    tensors = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"cuda.{i}"] = s
    np_state = np.random.get_state()
    tensors["numpy"] = torch.from_numpy(np.asarray(np_state[1], dtype=np.int64))
    py = random.getstate()
    meta = {"python": [py[0], list(py[1]), py[2]], "numpy_pos": int(np_state[2]),
            "numpy_has_gauss": int(np_state[3]), "numpy_gauss": float(np_state[4])}
    return tensors, meta


def set_rng_state(tensors: dict, meta: dict):
    torch.set_rng_state(tensors["torch"])
    if torch.cuda.is_available():
        states = [tensors[k] for k in sorted((k for k in tensors if k.startswith("cuda.")),
                                             key=lambda s: int(s.split(".")[1]))]
        if len(states) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(states)
    np.random.set_state(("MT19937", tensors["numpy"].numpy().astype(np.uint32), meta["numpy_pos"],
                         meta["numpy_has_gauss"], meta["numpy_gauss"]))
    py = meta["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))


def list_checkpoints(out: Path) -> list:
    """Complete checkpoints of a run, oldest first: [(step, path)]."""
    root = Path(out) / "checkpoints"
    found = []
    if root.is_dir():
        for p in root.iterdir():
            m = re.fullmatch(r"step_(\d+)", p.name)
            if m and p.is_dir() and (p / "state.json").is_file():
                found.append((int(m.group(1)), p))
    return sorted(found)


def trainable_named_params(module: nn.Module) -> list:
    return [(n, p) for n, p in module.named_parameters() if p.requires_grad]


# ---------------------------------------------------------------------------------------------------- inputs
def init_bundle_path(init) -> Path:
    """``--init``: a previous run's directory (its ``export/bundle.safetensors``) or a bundle / released file."""
    p = Path(init)
    if p.is_dir():
        for cand in (p / "export" / "bundle.safetensors", p / "bundle.safetensors"):
            if cand.is_file():
                return cand
        raise CheckpointError(f"--init {str(p)!r}: a folder without export/bundle.safetensors "
                              f"(did that training run finish or get stopped before its first export?)")
    if not p.is_file():
        raise CheckpointError(f"--init {str(p)!r} does not exist")
    return p


def bundle_config_of(path):
    """The parts' configs of a bundle or released encoder file, from its header only."""
    from ..config import BundleConfig, TokenizerConfig
    from ..models.bundle import BUNDLE_FORMAT
    from ..models.released import looks_like_released_encoder, read_safetensors_header

    meta, tensors = read_safetensors_header(path)
    if meta.get("format") == BUNDLE_FORMAT:
        return BundleConfig.from_dict(json.loads(meta.get("config", "{}")), where=f"{str(path)!r} config")
    if looks_like_released_encoder({k: v[1] for k, v in tensors.items()}):
        return BundleConfig(tokenizer=TokenizerConfig.preset("large"))
    raise CheckpointError(f"--init {str(path)!r} is neither an IM-Animation bundle nor the released motion encoder")


def load_init(cfg: TrainConfig, dry: bool = False):
    """(BundleConfig, IMAnimationBundle or None) of ``--init`` (None, None without --init; no weights when dry)."""
    if not cfg.init:
        return None, None
    path = init_bundle_path(cfg.init)
    bcfg = bundle_config_of(path)
    if dry:
        return bcfg, None
    from ..models.bundle import load_bundle

    return bcfg, load_bundle(path)


def copy_weights(dst: nn.Module, src: nn.Module, what: str):
    try:
        dst.load_state_dict(src.state_dict(), strict=True)
    except RuntimeError as e:
        raise CheckpointError(f"--init: part {what!r} does not fit the model being trained: "
                              f"{str(e).splitlines()[0]}") from None


def find_vae(cfg: TrainConfig) -> str:
    """The VAE file to use: ``--vae`` (a file, or a `train vae` run dir), else the one recorded by the ``--init``
    run (its ``export/manifest.json`` or ``export/vae.safetensors``); ``"random"`` (tiny preset only)."""
    if cfg.vae == "random":
        if cfg.preset != "tiny-puppet":
            raise IMAnimError("--vae random (an untrained VAE) is only allowed with the tiny-puppet preset")
        return "random"
    if cfg.vae:
        p = Path(cfg.vae)
        if p.is_dir():
            for cand in (p / "export" / "vae.safetensors", p / "vae.safetensors"):
                if cand.is_file():
                    return str(cand)
            raise CheckpointError(f"--vae {str(p)!r}: a folder without export/vae.safetensors")
        if not p.is_file():
            raise CheckpointError(f"--vae {str(p)!r} does not exist")
        return str(p)
    if cfg.init and Path(cfg.init).is_dir():
        exp = Path(cfg.init) / "export"
        man = exp / "manifest.json"
        if man.is_file():
            v = json.loads(man.read_text()).get("vae")
            if v and Path(v).is_file():
                return str(v)
        if (exp / "vae.safetensors").is_file():
            return str(exp / "vae.safetensors")
    raise IMAnimError(f"train {cfg.stage} needs the Wan 2.1 VAE: pass --vae FILE (or a `train vae` run directory)"
                      f"{'; --vae random for a smoke test' if cfg.preset == 'tiny-puppet' else ''}")


def write_manifest(export_dir: Path, info: dict) -> Path:
    from ..io.atomic import atomic_output

    p = Path(export_dir) / "manifest.json"
    with atomic_output(p) as tmp:
        tmp.write_text(json.dumps(info, indent=2))
    return p


# ---------------------------------------------------------------------------------------------------- data loading
def _worker_init(_):
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the main process decides what Ctrl-C does
    torch.set_num_threads(1)


class _StepBatches(torch.utils.data.Dataset):
    """Item i = the micro-batches of optimiser step ``start + i`` for this process."""

    def __init__(self, stage: Stage, cfg: TrainConfig, start: int, stop: int, rank: int, world: int):
        self.stage, self.cfg, self.start, self.stop, self.rank, self.world = stage, cfg, start, stop, rank, world

    def __len__(self):
        return max(0, self.stop - self.start)

    def __getitem__(self, i):
        cfg = self.cfg
        step = 0 if cfg.overfit_one_batch else self.start + i
        out = []
        for micro in range(cfg.grad_accum):
            gen = seed_everything(mix_seed(cfg.seed, "data", step, micro, self.rank))
            offset = ((step * cfg.grad_accum + micro) * self.world + self.rank) * cfg.batch_size
            out.append(self.stage.load_batch(gen, offset))
        return out


def _as_is(x):
    return x


def _to_device(x, device):
    if torch.is_tensor(x):
        return x.to(device, non_blocking=True)
    if isinstance(x, dict):
        return {k: _to_device(v, device) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return type(x)(_to_device(v, device) for v in x)
    return x


# ---------------------------------------------------------------------------------------------------- Ctrl-C
class _StopFlag:
    def __init__(self):
        self.requested = False
        self.first_at = None
        self._old = {}

    def _handler(self, signum, frame):
        now = time.monotonic()
        if self.requested and self.first_at is not None and now - self.first_at > 5.0 and signum == signal.SIGINT:
            raise KeyboardInterrupt
        if not self.requested:
            self.requested = True
            self.first_at = now
            print("\nstopping: finishing the current step, then saving a checkpoint "
                  "(press Ctrl-C again in a few seconds to stop at once)", file=sys.stderr, flush=True)

    def install(self):
        for s in (signal.SIGINT, signal.SIGTERM):
            try:
                self._old[s] = signal.signal(s, self._handler)
            except ValueError:  # not in the main thread
                pass

    def uninstall(self):
        for s, h in self._old.items():
            signal.signal(s, h)
        self._old = {}


# ---------------------------------------------------------------------------------------------------- the loop
class _CsvLog:
    def __init__(self, path: Path, resume_step: int):
        self.path = path
        self.header = None
        if path.is_file():
            with path.open(newline="") as f:
                rows = list(csv.reader(f))
            if rows:
                self.header = rows[0]
                keep = [r for r in rows[1:] if r and r[0].isdigit() and int(r[0]) <= resume_step]
                with path.open("w", newline="") as f:  # drop rows past the checkpoint we resume from
                    w = csv.writer(f)
                    w.writerow(self.header)
                    w.writerows(keep)

    def write(self, row: dict):
        if self.header is None:
            self.header = list(row)
            with self.path.open("w", newline="") as f:
                csv.writer(f).writerow(self.header)
        with self.path.open("a", newline="") as f:
            csv.writer(f).writerow([_fmt(row.get(k, "")) for k in self.header])


def _fmt(v):
    if isinstance(v, float):
        return f"{v:.6g}"
    return v


def build_accelerator(cfg: TrainConfig, find_unused: bool):
    from accelerate import Accelerator
    from accelerate.utils import DistributedDataParallelKwargs

    kwargs = [DistributedDataParallelKwargs(find_unused_parameters=find_unused)]
    # without a GPU, a multi-process launch (torchrun, accelerate launch with mpirun) runs on CPUs with gloo;
    # Accelerate only picks that when told it is on the CPU
    from accelerate.state import AcceleratorState, PartialState

    if AcceleratorState._shared_state and PartialState().num_processes == 1:
        # a second run in the same single process (scripts, tests) may use other options
        AcceleratorState._reset_state(reset_partial_state=False)
    has_xpu = hasattr(torch, "xpu") and torch.xpu.is_available()
    cpu = not torch.cuda.is_available() and not has_xpu
    return Accelerator(mixed_precision=cfg.mixed_precision, kwargs_handlers=kwargs, cpu=cpu,
                       step_scheduler_with_optimizer=False)


def run_training(cfg: TrainConfig, stage_cls, resume: bool = False, accelerator=None) -> int:
    """Train one stage to ``cfg.max_steps``. Returns 0 when done, 130 when stopped by Ctrl-C/SIGTERM."""
    from accelerate.utils import DistributedType
    from tqdm.auto import tqdm

    cfg = cfg.validate()
    out = Path(cfg.out)
    if cfg.num_threads:
        torch.set_num_threads(cfg.num_threads)
    acc = accelerator or build_accelerator(cfg, stage_cls.find_unused_parameters)
    main = acc.is_main_process
    rank, world = acc.process_index, acc.num_processes
    is_fsdp = acc.distributed_type == DistributedType.FSDP

    def say(msg):
        if main:
            tqdm.write(str(msg))

    # ---- run directory and what to resume
    existing = list_checkpoints(out)
    if existing and not resume:
        raise IMAnimError(f"--out {str(out)!r} already holds a run (checkpoints up to step {existing[-1][0]}); "
                          f"pass --resume to continue it or choose another --out")
    if resume and not existing:
        say(f"--resume: no checkpoint in {out / 'checkpoints'} yet, starting from step 0")
    if main:
        (out / "checkpoints").mkdir(parents=True, exist_ok=True)
        (out / "export").mkdir(parents=True, exist_ok=True)
    acc.wait_for_everyone()

    seed_everything(mix_seed(cfg.seed, "build"))  # identical initial weights on every process
    stage = stage_cls(cfg, acc.device, log=say)
    module = stage.build()
    stage.module = module
    if cfg.grad_checkpointing:
        done = enable_grad_checkpointing(module)
        say(f"gradient checkpointing: {', '.join(done) if done else 'no part of this model supports it'}")
    groups = stage.param_groups()
    group_scales = [float(g.get("lr_scale", 1.0)) for g in groups]
    n_train = sum(p.numel() for g in groups for p in g["params"])
    if n_train == 0:
        raise IMAnimError(f"train {cfg.stage}: nothing to train with these options (every part is frozen)")
    named_train = trainable_named_params(module)
    opt = torch.optim.AdamW([{"params": g["params"], "lr": cfg.lr * s} for g, s in zip(groups, group_scales)],
                            lr=cfg.lr, betas=tuple(cfg.betas), weight_decay=cfg.weight_decay)
    if cfg.ema and is_fsdp:
        raise IMAnimError("--ema is not supported with FSDP (the weights are sharded); train without --ema")

    start_step, elapsed_before = 0, 0.0
    resumed_terms: dict = {}  # the last logged losses of the checkpoint a resumed run starts from
    ema = None
    if existing and resume:
        step_dir = existing[-1][1]
        state = json.loads((step_dir / "state.json").read_text())
        if state.get("format") != CKPT_FORMAT:
            raise CheckpointError(f"{step_dir}: not a training checkpoint of this package")
        if state.get("stage") != cfg.stage:
            raise CheckpointError(f"--resume: {out} holds a {state.get('stage')} run, not {cfg.stage}; pass the "
                                  f"previous stage's directory as --init and choose a new --out")
        old = state.get("config", {})
        changed = sorted(k for k, v in cfg.to_dict().items() if k not in _RESUME_FREE and old.get(k, v) != v)
        if changed:
            say(f"warning: resuming with options that differ from the checkpoint's: {changed}")
        tensors = _load_tensors(step_dir / "model.safetensors")
        names = {n for n, _ in named_train}
        if set(tensors) != names:
            miss, extra = sorted(names - set(tensors)), sorted(set(tensors) - names)
            raise CheckpointError(f"{step_dir}: trainable parameters differ from this model "
                                  f"(missing {miss[:3]}, unexpected {extra[:3]}); were other options used?")
        with torch.no_grad():
            for n, p in named_train:
                p.copy_(tensors[n].to(p.dtype))
        if not is_fsdp:
            optimizer_from_flat(opt, _load_tensors(step_dir / "optimizer.safetensors"), state["optimizer"])
        if cfg.ema:
            ema = EMA(named_train, cfg.ema_decay)
            if not (step_dir / "ema.safetensors").is_file():
                say("warning: the checkpoint has no EMA; starting the EMA from the current weights")
            else:
                ema.load_state_dict(_load_tensors(step_dir / "ema.safetensors"), state.get("ema_updates", 0))
        start_step = int(state["step"])
        stage.step = start_step
        elapsed_before = float(state.get("elapsed", 0.0))
        resumed_terms = dict(state.get("last_losses") or {})
        say(f"resumed from {step_dir} (step {start_step})")

    if cfg.ema and ema is None:
        ema = EMA(named_train, cfg.ema_decay)
    model, opt = acc.prepare(module, opt)
    if existing and resume:
        step_dir = existing[-1][1]
        if is_fsdp and (step_dir / "accelerate").is_dir():
            acc.load_state(str(step_dir / "accelerate"))
        rng_file = step_dir / f"rng_rank{rank}.safetensors"
        rng_meta = json.loads((step_dir / "state.json").read_text()).get("rng", {}).get(str(rank))
        if rng_file.is_file() and rng_meta:
            set_rng_state(_load_tensors(rng_file), rng_meta)
        extra_file = step_dir / f"extra_rank{rank}.safetensors"
        if extra_file.is_file():
            stage.load_extra_state(_load_tensors(extra_file))

    if main:
        (out / "config.json").write_text(json.dumps(cfg.to_dict(), indent=2))
        desc = stage.describe()
        if desc:
            say(desc)
        say(f"train {cfg.stage} ({cfg.preset}): {n_train / 1e6:.2f}M trainable parameters, {world} process(es), "
            f"batch {cfg.batch_size} x accum {cfg.grad_accum} x {world}, mixed precision {cfg.mixed_precision}, "
            f"steps {start_step} -> {cfg.max_steps}, out {out}")
    log = _CsvLog(out / "log.csv", start_step) if main else None

    # ---- data
    ds = _StepBatches(stage, cfg, start_step, cfg.max_steps, rank, world)
    loader = torch.utils.data.DataLoader(ds, batch_size=None, shuffle=False, num_workers=cfg.num_workers,
                                         worker_init_fn=_worker_init if cfg.num_workers else None,
                                         collate_fn=_as_is, prefetch_factor=2 if cfg.num_workers else None,
                                         persistent_workers=False)

    def save_checkpoint(step: int, elapsed: float, last_terms: dict):
        root = out / "checkpoints"
        tmp = root / f"step_{step}.tmp"
        final = root / f"step_{step}"
        if main:
            if tmp.exists():
                shutil.rmtree(tmp)
            tmp.mkdir(parents=True)
        acc.wait_for_everyone()
        rt, rmeta = rng_state()
        _save_tensors(tmp / f"rng_rank{rank}.safetensors", rt)
        extra = stage.extra_state()
        if extra:
            _save_tensors(tmp / f"extra_rank{rank}.safetensors", extra)
        metas = [None] * world
        if world > 1:
            import torch.distributed as dist

            dist.all_gather_object(metas, rmeta)
        else:
            metas = [rmeta]
        full = None
        if is_fsdp:  # collectives: every process takes part
            acc.save_state(str(tmp / "accelerate"))
            full = acc.get_state_dict(model)
        if main:
            unwrapped = acc.unwrap_model(model)
            if is_fsdp:
                names = {n for n, _ in named_train}
                tensors = {n: v for n, v in full.items() if n in names}
                opt_meta = {}
            else:
                tensors = {n: p for n, p in trainable_named_params(unwrapped)}
                ot, opt_meta = optimizer_to_flat(opt.optimizer if hasattr(opt, "optimizer") else opt)
                _save_tensors(tmp / "optimizer.safetensors", ot)
            _save_tensors(tmp / "model.safetensors", tensors, {"format": CKPT_FORMAT, "step": step})
            if ema is not None:
                _save_tensors(tmp / "ema.safetensors", ema.state_dict())
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

    def do_export():
        unwrapped = acc.unwrap_model(model)
        ctx = ema.swapped_in() if ema is not None else nullcontext()
        if is_fsdp:
            from torch.distributed.fsdp import FullyShardedDataParallel as FSDP

            ctx = FSDP.summon_full_params(model, writeback=False, rank0_only=True, offload_to_cpu=True)
        files = {}
        with ctx:
            if main:
                files = stage.export(unwrapped, out / "export")
        acc.wait_for_everyone()
        return files

    # ---- loop
    stop = _StopFlag()
    stop.install()
    # FSDP clips through the wrapped model (Accelerate needs all of its parameters for that)
    params_for_clip = list(model.parameters()) if is_fsdp else [p for g in groups for p in g["params"]]
    t0 = time.time()
    window = {"n": 0}
    last_terms: dict = {}
    step = start_step
    steps_this_run = 0
    interrupted = False
    skipped = 0
    bar = tqdm(total=cfg.max_steps, initial=start_step, disable=not main, desc=f"train {cfg.stage}",
               dynamic_ncols=True, smoothing=0.1)
    last_ckpt_step = start_step if existing and resume else -1
    t_window = time.time()
    try:
        model.train()
        for micro_batches in loader:
            fac = lr_factor(cfg, step)
            for g, s in zip(opt.param_groups, group_scales):
                g["lr"] = cfg.lr * s * fac
            terms_sum: dict = {}
            key_step = 0 if cfg.overfit_one_batch else step
            for m, batch in enumerate(micro_batches):
                seed_everything(mix_seed(cfg.seed, "step", key_step, m, rank))
                batch = _to_device(batch, acc.device)
                with torch.no_grad(), acc.autocast():
                    batch = stage.prepare(batch)
                sync_ctx = acc.no_sync(model) if m < len(micro_batches) - 1 else nullcontext()
                with sync_ctx:
                    loss, terms = model(batch)
                    acc.backward(loss / len(micro_batches))
                terms = {"loss": loss, **terms}
                for k, v in terms.items():
                    terms_sum[k] = terms_sum.get(k, 0.0) + float(v.detach().float()) / len(micro_batches)
            gn = acc.clip_grad_norm_(params_for_clip, cfg.grad_clip if cfg.grad_clip > 0 else float("inf"))
            gn = float(gn) if gn is not None else float("nan")
            if math.isfinite(gn):
                opt.step()
                skipped = 0
            else:
                skipped += 1
                say(f"warning: step {step + 1}: non-finite gradients, update skipped")
                if skipped >= 10:
                    raise IMAnimError(f"train {cfg.stage}: 10 steps in a row had non-finite gradients; "
                                      f"lower --lr or use --mixed-precision no")
            opt.zero_grad(set_to_none=True)
            step += 1
            stage.step = step
            terms_sum.update(stage.after_step(acc.unwrap_model(model), step, acc, ema) or {})
            if ema is not None and math.isfinite(gn):
                ema.update()
            steps_this_run += 1
            terms_sum["grad_norm"] = gn
            for k, v in terms_sum.items():
                window[k] = window.get(k, 0.0) + v
            window["n"] += 1
            bar.update(1)
            if main:
                bar.set_postfix(loss=f"{terms_sum['loss']:.4g}", refresh=False)

            # a stop request on any process stops all of them at the same step
            want_stop = stop.requested
            if world > 1:
                flag = torch.tensor([1.0 if want_stop else 0.0], device=acc.device)
                want_stop = bool(acc.reduce(flag, reduction="sum").item() > 0)
            if step % cfg.log_every == 0 or step == cfg.max_steps or want_stop:
                keys = sorted(k for k in window if k != "n")
                vec = torch.tensor([window[k] / window["n"] for k in keys], device=acc.device, dtype=torch.float64)
                if world > 1:
                    vec = acc.reduce(vec, reduction="mean")
                avg = dict(zip(keys, vec.tolist()))
                now = time.time()
                row = {"step": step, "loss": avg.pop("loss")}
                gnorm = avg.pop("grad_norm")
                row.update(avg)
                row.update({"grad_norm": gnorm, "lr": cfg.lr * fac, "time": elapsed_before + now - t0,
                            "steps_per_s": window["n"] / max(1e-9, now - t_window)})
                last_terms = {k: v for k, v in row.items() if k not in ("step", "time", "lr", "steps_per_s")}
                if main:
                    log.write(row)
                window = {"n": 0}
                t_window = now
            if want_stop:
                interrupted = True
                break
            if step % cfg.ckpt_every == 0 and step < cfg.max_steps:
                save_checkpoint(step, elapsed_before + time.time() - t0, last_terms)
                last_ckpt_step = step
            if step >= cfg.max_steps:
                break
    except Exception:
        # keep what was learned up to the last completed step (single process only: the others may be fine and
        # would not join the collectives of a checkpoint)
        bar.close()
        if world == 1 and steps_this_run > 0 and step != last_ckpt_step:
            try:
                ck = save_checkpoint(step, elapsed_before + time.time() - t0, last_terms)
                print(f"error at step {step + 1}; the state after step {step} is saved in {ck} "
                      f"(fix the problem and continue with --resume)", file=sys.stderr, flush=True)
            except Exception:  # noqa: BLE001 - the original error matters more
                pass
        raise
    finally:
        bar.close()
        stop.uninstall()

    elapsed = time.time() - t0
    in_sync = True
    if world > 1 and not is_fsdp:  # every process must hold the same weights (DDP, codebook restarts, ...)
        with torch.no_grad():
            ps = [p.detach().double() for _, p in trainable_named_params(acc.unwrap_model(model))]
            fp = torch.stack([sum(p.sum() for p in ps), sum((p * p).sum() for p in ps)]).to(acc.device)
        allfp = acc.gather(fp[None]).reshape(world, 2)
        in_sync = bool(torch.allclose(allfp, allfp[:1].expand_as(allfp), rtol=1e-12, atol=0.0))
        if not in_sync:
            say("warning: the processes ended with different weights (please report this); rank 0's are saved")
    if step != last_ckpt_step:
        ck = save_checkpoint(step, elapsed_before + elapsed, last_terms)
    else:
        ck = list_checkpoints(out)[-1][1] if list_checkpoints(out) else None
    files = do_export()
    stage.close()
    summary = {"stage": cfg.stage, "preset": cfg.preset, "step": step, "max_steps": cfg.max_steps,
               "steps_this_run": steps_this_run, "seconds": round(elapsed, 2),
               "steps_per_s": round(steps_this_run / elapsed, 4) if elapsed > 0 and steps_this_run else None,
               # the whole run, over every resume (checkpoints carry the elapsed training time)
               "seconds_total": round(elapsed_before + elapsed, 2),
               "final_losses": last_terms or resumed_terms, "processes": world, "ranks_in_sync": in_sync,
               "interrupted": interrupted,
               "log": str(out / "log.csv"), "checkpoint": str(ck) if ck else None,
               "exports": {k: str(v) for k, v in files.items()}}
    if main:
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
    acc.wait_for_everyone()
    return EXIT_INTERRUPTED if interrupted else 0


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


__all__ = ["Stage", "run_training", "mix_seed", "seed_everything", "epoch_indices", "weighted_heatmap_mse",
           "EMA", "lr_factor", "list_checkpoints", "enable_grad_checkpointing", "build_accelerator", "dry_run"]
