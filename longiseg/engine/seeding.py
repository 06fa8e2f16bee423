"""Seeding: one seed for python's ``random``, numpy's global RNG and torch, and the per-epoch seeds derived from it.

The trainer reseeds every RNG at the start of each epoch from ``(seed, epoch, rank)`` (:func:`seed_epoch`), so a run
is reproducible and resumable exactly (see :mod:`longiseg.engine.trainer`).
"""

from __future__ import annotations

import random

import numpy as np
import torch

from longiseg.utils.seeds import generator_seed
from longiseg.utils.validation import check_positive_int, check_seed

__all__ = ["epoch_seed", "seed_epoch", "seed_everything"]


def epoch_seed(seed: int, epoch: int, rank: int = 0) -> int:
    """A 63-bit seed derived from ``(seed, epoch, rank)`` with numpy's ``SeedSequence`` (well mixed).

    Args:
        seed: the run's seed, an int in ``[0, 2**63 - 1]`` (:data:`~longiseg.utils.validation.MAX_SEED`, as
            :func:`seed_everything` takes it).
        epoch: the epoch (0-based).
        rank: the process's rank in a distributed run.

    Returns:
        An int in ``[0, 2**63)``: the same for the same three numbers on every machine.

    Raises:
        TypeError: naming the argument that is not an int (NumPy's are; bool is not).
        ValueError: ``seed`` lies outside ``[0, 2**63 - 1]``, or ``epoch`` or ``rank`` is negative.
    """
    seed = check_seed("seed", seed)  # (NumPy ints as ints)
    epoch, rank = check_positive_int("epoch", epoch, minimum=0), check_positive_int("rank", rank, minimum=0)
    state = np.random.SeedSequence([seed, epoch, rank]).generate_state(2, dtype=np.uint32)
    return (int(state[0]) << 31) ^ int(state[1])


def seed_everything(seed: int) -> None:
    """Seed python's ``random``, numpy's global RNG and torch (CPU and all CUDA devices) with a user's seed.

    Torch's CPU generator and numpy's keep 32 bits of a seed: they get :func:`~longiseg.utils.seeds.generator_seed`
    (``seed`` itself below ``2**32``, a mix of all its bits above), so seeds that differ by a multiple of ``2**32``
    draw different numbers.

    Raises:
        TypeError: ``seed`` is not an int.
        ValueError: ``seed`` lies outside ``[0, 2**63 - 1]``.
    """
    seed = check_seed("seed", seed)
    _seed_generators(seed, generator_seed(seed))


def seed_epoch(seed: int, epoch: int, rank: int = 0) -> None:
    """Seed every RNG for ``epoch`` of a run seeded with ``seed`` (what the trainer does at the start of each epoch):
    python's ``random`` and torch's CUDA generators with :func:`epoch_seed`, torch's CPU generator and numpy's with
    its low 32 bits (well mixed already).

    Raises:
        TypeError: naming the argument that is not an int.
        ValueError: naming the argument that is negative, or ``seed`` above ``2**63 - 1``.
    """
    mixed = epoch_seed(seed, epoch, rank)  # (it checks seed as seed_everything does)
    _seed_generators(mixed, mixed)


def _seed_generators(seed: int, seed32: int) -> None:
    """``random.seed(seed)``; numpy's global RNG and torch's generators from ``seed32`` (torch's CPU generator and
    numpy's use its low 32 bits, torch's CUDA generators all 64)."""
    random.seed(seed)
    np.random.seed(seed32 % 2**32)
    torch.manual_seed(seed32)
