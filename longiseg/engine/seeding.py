"""Seeding: one seed for python's ``random``, numpy's global RNG and torch, and the per-epoch seeds derived from it.

The trainer reseeds every RNG at the start of each epoch from ``(seed, epoch, rank)`` (:func:`epoch_seed`), so a run
is reproducible and resumable exactly (see :mod:`longiseg.engine.trainer`).
"""

from __future__ import annotations

import random

import numpy as np
import torch

from longiseg.utils.seeds import generator_seed
from longiseg.utils.validation import check_seed

__all__ = ["epoch_seed", "seed_everything"]


def epoch_seed(seed: int, epoch: int, rank: int = 0) -> int:
    """A 63-bit seed derived from ``(seed, epoch, rank)`` with numpy's ``SeedSequence`` (well mixed).

    Args:
        seed: the run's seed.
        epoch: the epoch (0-based).
        rank: the process's rank in a distributed run.

    Returns:
        An int in ``[0, 2**63)``: the same for the same three numbers on every machine.

    Raises:
        ValueError: naming the argument that is not an int >= 0.
    """
    for name, v in (("seed", seed), ("epoch", epoch), ("rank", rank)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 0:
            raise ValueError(f"epoch_seed: {name} must be an int >= 0, got {v!r}")
    state = np.random.SeedSequence([seed, epoch, rank]).generate_state(2, dtype=np.uint32)
    return (int(state[0]) << 31) ^ int(state[1])


def seed_everything(seed: int) -> None:
    """Seed python's ``random``, numpy's global RNG and torch (CPU and all CUDA devices).

    The last two keep 32 bits of a seed: they get :func:`~longiseg.utils.seeds.generator_seed` (``seed`` itself below
    ``2**32``, a mix of all its bits above), so seeds that differ by a multiple of ``2**32`` differ.

    Raises:
        TypeError: ``seed`` is not an int.
        ValueError: ``seed`` lies outside ``[0, 2**63 - 1]``.
    """
    seed = check_seed("seed", seed)
    random.seed(seed)
    np.random.seed(generator_seed(seed))
    torch.manual_seed(generator_seed(seed))
