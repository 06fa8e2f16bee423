"""Batch samplers: a fixed progression / no-progression mix in every batch (SegMaST, section 2), and epoch-tagged
indices for persistent DataLoader workers.

Each batch holds exactly ``num_positive`` indices of cases with progression and ``batch_size - num_positive``
of stable cases. Every class is drawn from its own stream of reshuffled permutations: without replacement
until the class is used up, then reshuffled and drawn again, so the minority class is repeated across an
epoch (and, if the epoch is long enough, the majority class too) while no index repeats inside one pass over
its class, nor inside one batch when the class (its share on this rank) has at least as many cases as the
batch has places for it: a batch that straddles two passes takes its places from the new pass among the cases
it does not hold yet.

A dataset index repeated inside one epoch names the same sample (datasets seeded by ``(seed, epoch, index)`` give
the same crop and augmentation), so with ``distinct_repeats=True`` the ``r``-th reuse of index ``i`` within an
epoch (``r >= 1``, the ``r``-th reshuffled pass over its class) is emitted as the *virtual index* ``i + r * N``
(``N`` = the number of labels): :class:`~longiseg.data.SliceDataset` and
:class:`~longiseg.data.VolumePatchDataset` read it as another draw from the case of sample ``i`` with its own
randomness. The class of a virtual index is the class of ``i``; no randomness is added, so batches stay a
function of ``(seed, epoch, num_replicas, rank)``.

Under DistributedDataParallel every epoch first splits each class into ``num_replicas`` disjoint shares
(identically on every rank, from ``seed`` and the epoch); rank ``r`` draws only from share ``r``, so the
ranks never see the same case in the same epoch. All ranks yield the same number of batches.

:class:`EpochTaggedBatchSampler` wraps any batch sampler and hands out :class:`EpochIndex` pairs instead of
plain indices. Datasets whose samples are seeded by ``(seed, epoch, index)`` (``longiseg.data.SliceDataset``,
``VolumePatchDataset``) read the epoch from the index, so their DataLoader workers can persist across epochs
(keeping their cache of loaded cases) and still draw each epoch's own samples.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from typing import Any, NamedTuple

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import Sampler

from longiseg.utils.validation import check_bool, check_seed

__all__ = ["BalancedBatchSampler", "EpochIndex", "EpochTaggedBatchSampler", "positive_slots"]


def _as_flags(labels: Sequence[bool | int] | np.ndarray | torch.Tensor) -> np.ndarray:
    if isinstance(labels, torch.Tensor):
        arr = labels.detach().cpu().numpy()
    elif isinstance(labels, (str, bytes)) or not isinstance(labels, (Sequence, np.ndarray)):
        raise TypeError(
            f"labels must be a sequence of bool/int progression flags, got {type(labels).__name__}"
        )
    else:
        arr = np.asarray(labels)
    if arr.ndim != 1:
        raise ValueError(f"labels must be one flag per case, shape (N,), got shape {arr.shape}")
    if arr.dtype != bool:
        if not (np.issubdtype(arr.dtype, np.integer) or np.issubdtype(arr.dtype, np.floating)):
            raise TypeError(f"labels must hold bool or 0/1 int values, got dtype {arr.dtype}")
        if not np.isin(arr, (0, 1)).all():
            bad = np.unique(arr[~np.isin(arr, (0, 1))])[:5].tolist()
            raise ValueError(f"labels must be 0/1 (or bool) progression flags, found values such as {bad}")
    return arr.astype(bool)


def _int_arg(name: str, value: object, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return int(value)


def positive_slots(batch_size: int, positive_fraction: float) -> int:
    """Progression samples in a balanced batch: ``floor(batch_size * positive_fraction + 0.5)`` (the rest are
    stable); :class:`BalancedBatchSampler` needs it in ``[1, batch_size - 1]``."""
    return math.floor(batch_size * positive_fraction + 0.5)


class BalancedBatchSampler(Sampler[list[int]]):
    """Yield index batches with a fixed number of progression and no-progression cases.

    Pass it to ``DataLoader(dataset, batch_sampler=sampler)``. Call :meth:`set_epoch` at the start of
    every epoch (as with ``DistributedSampler``); otherwise every epoch repeats the same batches.

    Args:
        labels: one progression flag per dataset index, shape ``(N,)`` (bool or 0/1), e.g. ``True`` when
            any follow-up of the case has a non-empty progression mask.
        batch_size: indices per batch on each rank, ``>= 2``.
        positive_fraction: share of progression cases per batch; the batch holds
            ``num_positive = floor(batch_size * positive_fraction + 0.5)`` of them, which must lie in
            ``[1, batch_size - 1]``.
        num_replicas: number of DDP processes (default: the world size when ``torch.distributed`` is
            initialised, else 1).
        rank: this process' rank (default: the distributed rank, else 0).
        seed: base seed; batches depend only on ``(seed, epoch, num_replicas, rank)``.
        drop_last: when ``num_batches`` is not given, an epoch has ``floor(N / (batch_size * num_replicas))``
            batches per rank (``True``) or ``ceil(...)`` (``False``). Every batch is full either way.
        num_batches: batches per epoch on each rank; overrides the size derived from ``N``.
        distinct_repeats: emit the ``r``-th reuse of an index within one epoch as ``index + r * N`` (for datasets
            that read such virtual indices as fresh draws, e.g. ``SliceDataset``); ``False`` (default) repeats
            the index itself, for any dataset of length ``N``.

    Raises:
        ValueError: if ``labels`` is not binary, has no case of one of the classes, a class has fewer cases
            than ``num_replicas`` (a rank would get none), ``batch_size < 2``, the fraction leaves a class
            with no slot, ``rank >= num_replicas``, or an epoch would have zero batches.
    """

    def __init__(
        self,
        labels: Sequence[bool | int] | np.ndarray | torch.Tensor,
        batch_size: int,
        positive_fraction: float = 0.5,
        num_replicas: int | None = None,
        rank: int | None = None,
        seed: int = 0,
        drop_last: bool = True,
        num_batches: int | None = None,
        distinct_repeats: bool = False,
    ) -> None:
        flags = _as_flags(labels)
        self.batch_size = _int_arg("batch_size", batch_size, 2)
        if isinstance(positive_fraction, (bool, np.bool_)) or not isinstance(positive_fraction,
                                                                             (int, float, np.integer, np.floating)):
            raise TypeError(
                f"positive_fraction must be a float in (0, 1), got {type(positive_fraction).__name__}"
            )
        if not 0.0 < positive_fraction < 1.0:
            raise ValueError(f"positive_fraction must lie in (0, 1), got {positive_fraction}")
        self.positive_fraction = float(positive_fraction)  # (a NumPy float, as the other probabilities take)
        self.num_positive = positive_slots(self.batch_size, self.positive_fraction)
        if not 1 <= self.num_positive <= self.batch_size - 1:
            raise ValueError(
                f"positive_fraction={positive_fraction} with batch_size={batch_size} gives "
                f"{self.num_positive} progression cases per batch; need between 1 and {self.batch_size - 1} "
                "so that both classes appear in every batch"
            )
        self.num_negative = self.batch_size - self.num_positive

        if num_replicas is None:
            num_replicas = dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1
        if rank is None:
            rank = dist.get_rank() if dist.is_available() and dist.is_initialized() else 0
        self.num_replicas = _int_arg("num_replicas", num_replicas, 1)
        self.rank = _int_arg("rank", rank, 0)
        if self.rank >= self.num_replicas:
            raise ValueError(
                f"rank must be in [0, num_replicas - 1 = {self.num_replicas - 1}], got {self.rank}"
            )

        self._positives = np.flatnonzero(flags)
        self._negatives = np.flatnonzero(~flags)
        for name, pool in (("progression", self._positives), ("no-progression", self._negatives)):
            if len(pool) == 0:
                raise ValueError(
                    f"labels contain no {name} case; a balanced batch needs both classes "
                    "(use a plain sampler for single-class data)"
                )
            if len(pool) < self.num_replicas:
                raise ValueError(
                    f"labels contain {len(pool)} {name} case(s) but num_replicas={self.num_replicas}; every "
                    "rank needs at least one case of each class"
                )

        self.seed = check_seed("seed", seed)
        self.drop_last = check_bool("drop_last", drop_last)
        if num_batches is None:
            per_step = self.batch_size * self.num_replicas
            n = len(flags)
            num_batches = n // per_step if self.drop_last else -(-n // per_step)
            if num_batches == 0:
                raise ValueError(
                    f"{n} cases give no full batch of {self.batch_size} x {self.num_replicas} replica(s) with "
                    "drop_last=True; pass drop_last=False or num_batches"
                )
        self.num_batches = _int_arg("num_batches", num_batches, 1)
        if not isinstance(distinct_repeats, (bool, np.bool_)):
            raise TypeError(f"distinct_repeats must be a bool, got {type(distinct_repeats).__name__}")
        self.distinct_repeats = bool(distinct_repeats)
        self.epoch = 0
        self._position = 0

    #: The settings a saved state must share with the sampler that loads it (:meth:`load_state_dict`). Not the
    #: rank: under DDP rank 0 saves the state and every rank loads it (all ranks are at the same position).
    LAYOUT_KEYS = ("num_batches", "batch_size", "num_positive", "num_replicas", "num_cases", "distinct_repeats")

    @property
    def num_cases(self) -> int:
        """Number of dataset indices ``N``."""
        return len(self._positives) + len(self._negatives)

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch. A different epoch restarts at its first batch; the current one keeps the position."""
        epoch = _int_arg("epoch", epoch, 0)
        if epoch != self.epoch:
            self._position = 0
        self.epoch = epoch

    def __len__(self) -> int:
        """Batches per epoch on this rank (a resumed epoch yields ``len - position`` of them)."""
        return self.num_batches

    def _stream(self, pool: np.ndarray, count: int, slots: int, rng: np.random.Generator) -> np.ndarray:
        """``count`` indices from ``pool`` for batches of ``slots`` places: successive random permutations,
        concatenated; with ``distinct_repeats`` the ``r``-th permutation is shifted by ``r * N`` (virtual indices).

        When a batch straddles two permutations and ``pool`` has at least ``slots`` cases, the new permutation's
        first places hold no case the batch already holds: each such case is swapped with one drawn at random
        from the permutation's later places that holds another case (so a batch never holds one case twice).
        """
        stride = self.num_cases if self.distinct_repeats else 0
        perms: list[np.ndarray] = []
        filled = 0
        while filled < count:
            perm = rng.permutation(pool)
            held = filled % slots  # places of the current batch taken by the previous permutation
            if held and len(pool) >= slots:
                taken = perms[-1][-held:]
                head = slots - held
                clash = np.flatnonzero(np.isin(perm[:head], taken))
                if clash.size:
                    free = head + np.flatnonzero(~np.isin(perm[head:], taken))
                    swap = rng.choice(free, size=clash.size, replace=False)
                    perm[clash], perm[swap] = perm[swap], perm[clash].copy()
            perms.append(perm)
            filled += len(pool)
        return np.concatenate([perm + r * stride for r, perm in enumerate(perms)])[:count]

    def epoch_batches(self, epoch: int | None = None) -> list[list[int]]:
        """All batches of ``epoch`` (default: the current one) for this rank, ignoring the position.

        Indices lie in ``[0, N)``, or in ``[0, N * passes)`` with ``distinct_repeats`` (``passes``: how often the
        rank's share of a class is used up in the epoch).
        """
        epoch = self.epoch if epoch is None else _int_arg("epoch", epoch, 0)
        split_rng = np.random.default_rng([self.seed, epoch, 0])
        pos_share = split_rng.permutation(self._positives)[self.rank :: self.num_replicas]
        neg_share = split_rng.permutation(self._negatives)[self.rank :: self.num_replicas]
        rng = np.random.default_rng([self.seed, epoch, 1, self.rank])
        pos = self._stream(pos_share, self.num_batches * self.num_positive, self.num_positive, rng)
        neg = self._stream(neg_share, self.num_batches * self.num_negative, self.num_negative, rng)
        pos, neg = pos.reshape(self.num_batches, -1), neg.reshape(self.num_batches, -1)
        batches = rng.permuted(np.concatenate([pos, neg], axis=1), axis=1)
        return batches.tolist()

    def __iter__(self) -> Iterator[list[int]]:
        start = self._position if self._position < self.num_batches else 0
        batches = self.epoch_batches()
        for i in range(start, self.num_batches):
            self._position = i + 1
            yield batches[i]

    def state_dict(self, num_consumed: int | None = None) -> dict[str, Any]:
        """Resumable state: ``epoch``, ``seed``, ``position`` plus the settings checked on load.

        Args:
            num_consumed: batches of the current epoch the trainer has finished. Defaults to the number
                this sampler has yielded, which runs ahead of training when a ``DataLoader`` prefetches
                with workers; pass the trainer's step count in the epoch for an exact resume then.
        """
        position = self._position if num_consumed is None else _int_arg("num_consumed", num_consumed, 0)
        if position > self.num_batches:
            raise ValueError(f"num_consumed must be <= num_batches={self.num_batches}, got {position}")
        return {
            "epoch": self.epoch,
            "seed": self.seed,
            "position": position,
            "num_batches": self.num_batches,
            "batch_size": self.batch_size,
            "num_positive": self.num_positive,
            "num_replicas": self.num_replicas,
            "rank": self.rank,
            "num_cases": self.num_cases,
            "distinct_repeats": self.distinct_repeats,
        }

    def layout_changes(self, state: dict[str, Any]) -> dict[str, tuple[Any, Any]]:
        """The batch-layout settings (:attr:`LAYOUT_KEYS`) in which ``state`` differs from this sampler.

        ``num_batches`` and ``num_positive`` follow from ``batch_size``, ``num_cases`` and ``num_replicas``: they
        are named only when none of those differs.

        Args:
            state: a :meth:`state_dict` (keys it lacks are not compared).

        Returns:
            ``{key: (value in state, value now)}``, in the order of :attr:`LAYOUT_KEYS`; empty when the layouts agree.
        """
        if not isinstance(state, dict):
            raise TypeError(f"state must be a dict, got {type(state).__name__}")
        changes = {k: (state[k], getattr(self, k)) for k in self.LAYOUT_KEYS
                   if k in state and state[k] != getattr(self, k)}
        if {"batch_size", "num_cases", "num_replicas"} & set(changes):
            changes = {k: v for k, v in changes.items() if k not in ("num_batches", "num_positive")}
        return changes

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`; the next iteration continues with batch ``position`` of ``epoch``.

        Raises:
            ValueError: if a key is missing or the batch layout (sizes, replicas, number of cases,
                ``distinct_repeats``) differs; the state of another rank is accepted (ranks share the position).
        """
        if not isinstance(state, dict):
            raise TypeError(f"state must be a dict, got {type(state).__name__}")
        missing = {"epoch", "seed", "position"} - set(state)
        if missing:
            raise ValueError(f"sampler state is missing keys {sorted(missing)}")
        changes = self.layout_changes(state)
        if changes:
            saved = ", ".join(f"{key}={then} (now {now})" for key, (then, now) in changes.items())
            raise ValueError(
                f"sampler state was saved with {saved}: resume with the batch size, number of samples per "
                "epoch (labels), positive fraction and number of processes it was saved with"
            )
        position = _int_arg("position", state["position"], 0)
        if position > self.num_batches:
            raise ValueError(f"position must be <= num_batches={self.num_batches}, got {position}")
        self.epoch = _int_arg("epoch", state["epoch"], 0)
        self.seed = check_seed("seed", state["seed"])
        self._position = position


class EpochIndex(NamedTuple):
    """A dataset index together with the epoch whose sample it names.

    Attributes:
        epoch: 0-based epoch.
        index: dataset index in ``[0, len(dataset))``.
    """

    epoch: int
    index: int


class EpochTaggedBatchSampler(Sampler[list[EpochIndex]]):
    """Yield the batches of ``batch_sampler`` with every index tagged by the current epoch.

    A dataset seeded by ``(seed, epoch, index)`` that accepts :class:`EpochIndex` items draws the sample of the
    tagged epoch whatever epoch its own copy was told last, so DataLoader workers may persist
    (``persistent_workers=True``) and keep their loaded cases between epochs. Samples are exactly those of
    ``dataset.set_epoch(epoch); dataset[index]``.

    Args:
        batch_sampler: any iterable of index lists (e.g. :class:`BalancedBatchSampler` or torch's
            ``BatchSampler``).

    :meth:`set_epoch` stores the epoch and forwards it to ``batch_sampler`` (or to its ``sampler``, e.g. a
    ``DistributedSampler``) when that has a ``set_epoch``.
    """

    def __init__(self, batch_sampler: Sampler[list[int]] | Sequence[Sequence[int]]) -> None:
        if not hasattr(batch_sampler, "__iter__"):
            raise TypeError(f"batch_sampler must be an iterable of index lists, got {type(batch_sampler).__name__}")
        self.batch_sampler = batch_sampler
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Tag the following batches with ``epoch`` and forward it to the wrapped sampler."""
        self.epoch = _int_arg("epoch", epoch, 0)
        for target in (self.batch_sampler, getattr(self.batch_sampler, "sampler", None)):
            if callable(getattr(target, "set_epoch", None)):
                target.set_epoch(self.epoch)
                break

    def __len__(self) -> int:
        return len(self.batch_sampler)  # type: ignore[arg-type]

    def __iter__(self) -> Iterator[list[EpochIndex]]:
        epoch = self.epoch
        for batch in self.batch_sampler:
            yield [EpochIndex(epoch, int(i)) for i in batch]
