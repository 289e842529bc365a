"""The loop's plumbing: per-step batches for the DataLoader, Ctrl-C handling, ``log.csv``, the Accelerator."""
from __future__ import annotations

import csv
import signal
import sys
import time
from pathlib import Path

import torch

from .config import TrainConfig
from .seeding import mix_seed, seed_everything


def worker_init(_):
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the main process decides what Ctrl-C does
    torch.set_num_threads(1)


class StepBatches(torch.utils.data.Dataset):
    """Item i = the micro-batches of optimiser step ``start + i`` for this process."""

    def __init__(self, stage, cfg: TrainConfig, start: int, stop: int, rank: int, world: int):
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


def as_is(x):
    return x


def to_device(x, device):
    if torch.is_tensor(x):
        return x.to(device, non_blocking=True)
    if isinstance(x, dict):
        return {k: to_device(v, device) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return type(x)(to_device(v, device) for v in x)
    return x


class StopFlag:
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


class CsvLog:
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


__all__ = ["StepBatches", "StopFlag", "CsvLog", "build_accelerator", "worker_init", "as_is", "to_device"]
