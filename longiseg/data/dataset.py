"""PyTorch datasets drawing lesion-weighted 2.5D slices or 3D patches from longitudinal cases.

Both datasets have a fixed length (``samples_per_epoch``); sample ``i`` comes from case ``i % num_cases``
(when ``samples_per_epoch`` is not a multiple of the number of cases, from the case the round robin over the
cases of its class reaches in that epoch, see :meth:`~SliceDataset.case_of`, so every case is drawn) and its
randomness (centre, plane, augmentation) from a generator seeded with ``(seed, epoch, i)``, so an epoch is
reproducible whatever the number of DataLoader workers or the order indices are requested in. An index
``i + r * samples_per_epoch`` (``r >= 1``, a *virtual index* that
:class:`~longiseg.data.samplers.BalancedBatchSampler` emits with ``distinct_repeats=True`` for the ``r``-th
repeat of ``i`` within one epoch) is another draw from the case of sample ``i`` with its own randomness.
Call :meth:`set_epoch` before each epoch, or index with :class:`~longiseg.data.samplers.EpochIndex` pairs
``(epoch, index)`` (what :class:`~longiseg.data.samplers.EpochTaggedBatchSampler` yields): a worker's copy of
the dataset keeps the epoch it was started with, so persistent DataLoader workers need the tagged indices.

Cases are loaded lazily, preprocessed (z-score, optional crop) on first use and kept in a per-process LRU
cache of ``cache_size`` cases, so memory stays bounded at about ``(num_workers + 1) * cache_size`` cases.
``progression_flags`` (one per sample) and ``case_progression_flags`` (one per case) feed the
imbalance-aware batch sampler (``longiseg.data.samplers``) without loading voxels when a manifest holds
the flags.
"""

from __future__ import annotations

import operator
import os
from collections import OrderedDict
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
from torch.utils.data import Dataset

from longiseg.data.case import PLANES, LongitudinalCase
from longiseg.data.cohort import check_same_modalities, check_same_timepoints, find_cases
from longiseg.data.crops import CrossViewSampler, SamplingIndex, VolumePatchSampler, build_sampling_index
from longiseg.data.loading import load_case
from longiseg.data.preprocessing import preprocess_case
from longiseg.data.samplers import EpochIndex
from longiseg.data.sources import CaseSource
from longiseg.data.transforms import LongitudinalAugment
from longiseg.utils.io import PathLike
from longiseg.utils.validation import check_callable, check_positive_int, check_seed

__all__ = ["SliceDataset", "VolumePatchDataset", "CaseCache"]

CaseLike = CaseSource | LongitudinalCase


class CaseCache:
    """A least-recently-used cache of prepared cases ``{case position: (case, sampling index)}``.

    Args:
        maxsize: most cases kept, an int >= 1.

    Raises:
        TypeError: ``maxsize`` is not an int.
        ValueError: ``maxsize`` is below 1.
    """

    def __init__(self, maxsize: int) -> None:
        self.maxsize = check_positive_int("maxsize", maxsize)
        self._items: OrderedDict[int, tuple[LongitudinalCase, SamplingIndex]] = OrderedDict()
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        return len(self._items)

    def get(self, key: int, build: Callable[[], tuple[LongitudinalCase, SamplingIndex]]
            ) -> tuple[LongitudinalCase, SamplingIndex]:
        """Return the cached entry of ``key``, building it with ``build()`` (and possibly evicting the oldest) on a
        miss; a ``TypeError`` if ``build`` is not callable."""
        check_callable("build", build)
        if key in self._items:
            self._items.move_to_end(key)
            self.hits += 1
            return self._items[key]
        self.misses += 1
        value = build()
        self._items[key] = value
        while len(self._items) > self.maxsize:
            self._items.popitem(last=False)
        return value

    def clear(self) -> None:
        """Drop every cached case."""
        self._items.clear()


#: Most samples one epoch may have: the balanced cycle of an epoch is a list of this length (8 bytes an item).
MAX_SAMPLES_PER_EPOCH = 2**27


class _LongitudinalDataset(Dataset):
    """Shared machinery: case list, lazy loading + LRU cache, flags, seeding, augmentation."""

    #: ``__getitem__`` takes :class:`~longiseg.data.samplers.EpochIndex` items (the trainer then keeps workers).
    accepts_epoch_index = True

    def __init__(
        self,
        cases: Sequence[CaseLike] | PathLike,
        sampler: CrossViewSampler | VolumePatchSampler,
        *,
        samples_per_epoch: int | None,
        transform: Callable[[dict, np.random.Generator], dict] | None,
        preprocess: Callable[[LongitudinalCase], LongitudinalCase] | None,
        cache_size: int,
        seed: int,
    ) -> None:
        if isinstance(cases, (str, os.PathLike)):
            cases = find_cases(Path(cases))
        if isinstance(cases, (CaseSource, LongitudinalCase)):  # failed as "object is not iterable"
            raise TypeError(f"cases must be a list of cases or a cohort folder, got one {type(cases).__name__}: "
                            "pass [case]")
        self.cases: list[CaseLike] = list(cases)
        if not self.cases:
            raise ValueError("cases must not be empty")
        for c in self.cases:
            if not isinstance(c, (CaseSource, LongitudinalCase)):
                raise TypeError(f"cases must be CaseSource or LongitudinalCase objects, got {type(c).__name__}")
            if not c.has_labels:
                raise ValueError(f"case {c.case_id!r} has no baseline/progression masks; training needs labels")
        # one case given twice would be drawn twice as often as the others (an id may repeat: in-memory cases,
        # cohorts of two sites); a case is the same object, or a source of the same files
        keys = [id(c) if isinstance(c, LongitudinalCase) else repr(c.image_files) for c in self.cases]
        twice = sorted({c.case_id for c, k in zip(self.cases, keys) if keys.count(k) > 1})
        if twice:
            raise ValueError(f"cases must differ, but case(s) {twice} are given more than once")
        _check_stackable(self.cases)
        self.sampler = sampler
        default_len = 32 * len(self.cases)
        self.samples_per_epoch = check_positive_int(
            "samples_per_epoch", default_len if samples_per_epoch is None else samples_per_epoch
        )
        if self.samples_per_epoch > MAX_SAMPLES_PER_EPOCH:  # an epoch's index lists are built in memory
            raise ValueError(f"samples_per_epoch must be at most {MAX_SAMPLES_PER_EPOCH:,} (an epoch's sample list "
                             f"is held in memory), got {self.samples_per_epoch:,}")
        self.transform = transform
        if preprocess is not None and not callable(preprocess):
            raise TypeError(f"preprocess must be a callable (case -> case) or None, got {type(preprocess).__name__} "
                            f"{preprocess!r}")
        self.preprocess = preprocess
        self.cache = CaseCache(check_positive_int("cache_size", cache_size))  # named as the datasets take it
        self.seed = check_seed("seed", seed)
        self.epoch = 0
        self._case_flags: list[bool] | None = None
        self._cycle: tuple[dict[bool, list[int]], list[int], dict[bool, int]] | None = None

    # ------------------------------------------------------------------ flags and indexing
    @property
    def num_cases(self) -> int:
        """Number of cases."""
        return len(self.cases)

    def case_of(self, index: int, epoch: int | None = None) -> int:
        """Position of the case that sample ``index`` of ``epoch`` (default: the current one) is drawn from.

        Sample ``i`` (a virtual index counts as ``i % samples_per_epoch``) has the class of case ``c = i % N``
        (``N`` cases). When ``samples_per_epoch`` is a multiple of ``N`` it comes from ``c`` itself. Otherwise
        the samples of each class continue, epoch after epoch, a round robin over that class's cases in case
        order: in epoch ``e`` it comes from the class's case ``(k + e * m) % n``, where ``k`` is the place of
        ``c`` among the ``n`` cases of its class and ``m`` the number of samples of that class per epoch. So
        every case is drawn (also when ``samples_per_epoch < N``) and over epochs as often as any other case
        of its class (counts differ by at most one), while each sample keeps its class (``progression_flags``).
        """
        i = int(index) % self.samples_per_epoch
        c = i % self.num_cases
        epoch = self.epoch if epoch is None else int(epoch)
        if self.samples_per_epoch % self.num_cases == 0 or epoch == 0:
            return c
        members, place, per_epoch = self._class_cycle()
        flag = self.case_progression_flags[c]
        cycle = members[flag]
        return cycle[(place[c] + epoch * per_epoch[flag]) % len(cycle)]

    def _class_cycle(self) -> tuple[dict[bool, list[int]], list[int], dict[bool, int]]:
        """``(cases of each class in case order, place of each case in its class, samples of each class per
        epoch)`` for :meth:`case_of`."""
        if self._cycle is None:
            flags = self.case_progression_flags
            members: dict[bool, list[int]] = {True: [], False: []}
            place = []
            for c, f in enumerate(flags):
                place.append(len(members[f]))
                members[f].append(c)
            full, rest = divmod(self.samples_per_epoch, self.num_cases)
            per_epoch = {f: full * len(members[f]) + sum(1 for c in range(rest) if flags[c] == f)
                         for f in (True, False)}
            self._cycle = (members, place, per_epoch)
        return self._cycle

    @property
    def case_progression_flags(self) -> list[bool]:
        """Per-case progression flags (from the manifest/sources when known, else read from the masks once)."""
        if self._case_flags is None:
            self._case_flags = [
                c.has_progression if isinstance(c, LongitudinalCase) else c.progression_flag() for c in self.cases
            ]
        return self._case_flags

    @property
    def progression_flags(self) -> list[bool]:
        """Per-sample progression flags (the flag of case ``i % num_cases``, the class of sample ``i`` in every
        epoch), length ``samples_per_epoch``."""
        flags = self.case_progression_flags
        return [flags[i % self.num_cases] for i in range(self.samples_per_epoch)]

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose samples ``__getitem__`` returns (part of every sample's seed)."""
        self.epoch = check_positive_int("epoch", epoch, minimum=0)

    def __len__(self) -> int:
        return self.samples_per_epoch

    # ------------------------------------------------------------------ loading
    def _prepare(self, position: int) -> tuple[LongitudinalCase, SamplingIndex]:
        item = self.cases[position]
        case = item if isinstance(item, LongitudinalCase) else load_case(item)
        if self.preprocess is not None:
            case = self.preprocess(case)
        return case, build_sampling_index(case)

    def get_case(self, position: int) -> LongitudinalCase:
        """The prepared (loaded and preprocessed) case at ``position``, through the cache."""
        return self.cache.get(position, lambda: self._prepare(position))[0]

    def rng_for(self, index: int, epoch: int | None = None) -> np.random.Generator:
        """The generator of sample ``index`` of ``epoch`` (default: the current one), seeded by
        ``(seed, epoch, index)``."""
        return np.random.default_rng([self.seed, self.epoch if epoch is None else int(epoch), int(index)])

    def __getitem__(self, index: int | EpochIndex) -> dict:
        """Sample ``index`` of the current epoch, or of ``index.epoch`` for an :class:`EpochIndex`.

        ``index >= len(self)`` is a virtual index: another draw from the case of sample
        ``index % len(self)``, seeded by the index itself.

        Raises:
            TypeError: ``index`` is not an integer (``1.5`` is not rounded to a sample).
            IndexError: ``index`` is negative.
        """
        epoch = None
        if isinstance(index, EpochIndex):
            epoch, index = check_positive_int("index.epoch", index.epoch, minimum=0), index.index
        try:
            index = operator.index(index)  # ints, NumPy ints; not 1.5 (no rounding to another sample)
        except TypeError:
            raise TypeError(f"index must be an int or an EpochIndex, got {type(index).__name__} {index!r}") from None
        if index < 0:
            raise IndexError(f"index {index} out of range: samples are numbered from 0 (a dataset of "
                             f"{self.samples_per_epoch} samples; larger indices are repeat draws)")
        position = self.case_of(index, epoch)
        case, sidx = self.cache.get(position, lambda: self._prepare(position))
        rng = self.rng_for(index, epoch)
        sample = self.sampler.sample(case, sidx, rng, case_index=position)
        if self.transform is not None:
            sample = self.transform(sample, rng)
        return sample

    def __getstate__(self) -> dict:
        # Workers start with an empty cache instead of receiving pickled volumes.
        state = self.__dict__.copy()
        state["cache"] = CaseCache(self.cache.maxsize)
        return state


class SliceDataset(_LongitudinalDataset):
    """2.5D cross-view training samples: lesion-weighted slices from all three planes.

    Args:
        cases: :class:`CaseSource` / :class:`LongitudinalCase` objects, or a cohort folder in the library
            layout.
        crop_size: in-plane crop ``(h, w)`` or an int.
        planes: planes to sample (default all three).
        lesion_weight: probability that a crop is centred on a lesion voxel.
        progression_share: share of lesion-centred crops drawn from progression voxels.
        persisting_share: share of lesion-centred crops centred on persisting baseline lesions (hard
            negatives, flagged ``hard_negative`` when their progression target is empty; default 0).
        samples_per_epoch: dataset length (default ``32 * num_cases``).
        transform: augmentation ``(sample, rng) -> sample``; ``"default"`` uses
            :class:`~longiseg.data.transforms.LongitudinalAugment` with its defaults, ``None`` none.
        preprocess: applied once per loaded case (default: z-score, no crop).
        cache_size: cases kept in memory per process.
        seed: base seed of all sampling, an int >= 0 (NumPy ints too).

    Each item is a dict with ``images (T, C, h, w)``, ``baseline (1, h, w)``, ``progression (T-1, 1, h, w)``,
    ``has_progression``, ``progression_visible``, ``hard_negative``, ``baseline_annotated``, ``case_index``,
    ``plane`` and ``center`` (see :mod:`longiseg.data.crops`).

    Raises:
        TypeError: a case is neither a :class:`CaseSource` nor a :class:`LongitudinalCase`; ``seed`` is not an
            int (a bool or float is refused, not truncated); ``preprocess`` is neither a callable nor ``None``.
        ValueError: no cases, a case without masks, or cases that a batch cannot stack: other modalities
            (names, order or number ``C``) or another number of timepoints ``T`` than the others, naming them;
            a negative ``seed``.
    """

    def __init__(
        self,
        cases: Sequence[CaseLike] | PathLike,
        *,
        crop_size: int | Sequence[int] = 128,
        planes: Sequence[str] = PLANES,
        lesion_weight: float = 0.5,
        progression_share: float | None = 0.5,
        persisting_share: float = 0.0,
        samples_per_epoch: int | None = None,
        transform: Callable[[dict, np.random.Generator], dict] | str | None = "default",
        preprocess: Callable[[LongitudinalCase], LongitudinalCase] | None = preprocess_case,
        cache_size: int = 8,
        seed: int = 0,
    ) -> None:
        sampler = CrossViewSampler(crop_size=crop_size, planes=planes, lesion_weight=lesion_weight,
                                   progression_share=progression_share, persisting_share=persisting_share)
        super().__init__(cases, sampler, samples_per_epoch=samples_per_epoch, transform=_transform(transform),
                         preprocess=preprocess, cache_size=cache_size, seed=seed)


class VolumePatchDataset(_LongitudinalDataset):
    """3D training patches ``(T, C, d, h, w)`` with lesion-weighted centres, for 3D models.

    Arguments as for :class:`SliceDataset`, with ``patch_size`` ``(d, h, w)`` (or an int) instead of
    ``crop_size``/``planes``. Items hold ``images (T, C, d, h, w)``, ``baseline (1, d, h, w)`` and
    ``progression (T-1, 1, d, h, w)`` plus the same flags. Raises as :class:`SliceDataset`.
    """

    def __init__(
        self,
        cases: Sequence[CaseLike] | PathLike,
        *,
        patch_size: int | Sequence[int] = 64,
        lesion_weight: float = 0.5,
        progression_share: float | None = 0.5,
        persisting_share: float = 0.0,
        samples_per_epoch: int | None = None,
        transform: Callable[[dict, np.random.Generator], dict] | str | None = "default",
        preprocess: Callable[[LongitudinalCase], LongitudinalCase] | None = preprocess_case,
        cache_size: int = 4,
        seed: int = 0,
    ) -> None:
        sampler = VolumePatchSampler(patch_size=patch_size, lesion_weight=lesion_weight,
                                     progression_share=progression_share, persisting_share=persisting_share)
        super().__init__(cases, sampler, samples_per_epoch=samples_per_epoch, transform=_transform(transform),
                         preprocess=preprocess, cache_size=cache_size, seed=seed)


def _check_stackable(cases: Sequence[CaseLike]) -> None:
    """Refuse cases whose samples a batch cannot stack: other modalities (so another ``C``) or another number of
    timepoints ``T`` than the others, naming the cases (read from the sources: no voxels loaded)."""
    check_same_modalities(cases)
    check_same_timepoints(cases)


def _transform(transform: Callable | str | None) -> Callable | None:
    if isinstance(transform, str):
        if transform != "default":
            raise ValueError(f"transform must be a callable, None or 'default', got {transform!r}")
        return LongitudinalAugment()
    if transform is not None and not callable(transform):
        raise TypeError(f"transform must be a callable, None or 'default', got {type(transform).__name__}")
    return transform
