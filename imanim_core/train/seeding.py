"""Seeds and random states of the training loop (ARCHITECTURE ``train/``).

Everything random in a step is seeded from ``(seed, step, micro-batch, rank)`` with :func:`mix_seed`, so the data
position *is* the step counter; :func:`rng_state`/:func:`set_rng_state` save and restore the process RNGs in
checkpoints.
"""
from __future__ import annotations

import hashlib
import random

import numpy as np
import torch

from ..errors import IMAnimError


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


__all__ = ["mix_seed", "seed_everything", "epoch_indices", "rng_state", "set_rng_state"]
