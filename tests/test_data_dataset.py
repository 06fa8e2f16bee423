"""SliceDataset / VolumePatchDataset: laziness, bounded cache, flags, determinism, DataLoader workers."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from test_data_fixtures import make_case
from torch.utils.data import DataLoader

from longiseg.data import (
    SliceDataset,
    VolumePatchDataset,
    find_cases,
    manifest_from_cases,
    save_case,
    write_manifest,
)
from longiseg.data.samplers import BalancedBatchSampler, EpochIndex, EpochTaggedBatchSampler


@pytest.fixture
def cohort(tmp_path: Path) -> Path:
    cases = [make_case(seed=i, progression=i in (0, 3), case_id=f"c{i}") for i in range(4)]
    for c in cases:
        save_case(c, tmp_path)
    write_manifest(tmp_path / "manifest.json", manifest_from_cases(cases))
    return tmp_path


def _equal(a: dict, b: dict) -> bool:
    return all(torch.equal(a[k], b[k]) for k in ("images", "baseline", "progression", "center")) and \
        a["plane"] == b["plane"]


def test_flags_come_from_the_manifest_without_loading(cohort: Path) -> None:
    ds = SliceDataset(cohort, crop_size=8, samples_per_epoch=10)
    assert ds.case_progression_flags == [True, False, False, True]
    assert ds.progression_flags == [True, False, False, True] * 2 + [True, False]
    assert len(ds.cache) == 0 and ds.cache.misses == 0  # nothing loaded yet
    assert [ds.case_of(i) for i in (0, 5, 7)] == [0, 1, 3]


def test_items_shapes_and_case_assignment(cohort: Path) -> None:
    ds = SliceDataset(cohort, crop_size=(8, 6), samples_per_epoch=8, transform=None)
    s = ds[5]
    assert s["images"].shape == (2, 2, 8, 6) and s["baseline"].shape == (1, 8, 6)
    assert s["progression"].shape == (1, 1, 8, 6)
    assert int(s["case_index"]) == 1 and not bool(s["has_progression"])
    assert bool(ds[3]["has_progression"])
    with pytest.raises(IndexError, match="out of range"):
        ds[-1]


def test_cache_is_bounded_and_lru(cohort: Path) -> None:
    ds = SliceDataset(cohort, crop_size=8, samples_per_epoch=12, cache_size=2)
    for i in range(12):
        ds[i]
        assert len(ds.cache) <= 2
    assert ds.cache.misses == 12  # round-robin over 4 cases with room for 2: every access misses
    ds.cache.clear()
    for i in (0, 4, 8):  # the same case: one miss, then hits
        ds[i]
    assert ds.cache.misses == 13 and ds.cache.hits == 2
    state = pickle.loads(pickle.dumps(ds))
    assert len(state.cache) == 0  # workers start empty


def test_determinism_per_seed_epoch_index(cohort: Path) -> None:
    a = SliceDataset(cohort, crop_size=8, samples_per_epoch=8, seed=3)
    b = SliceDataset(find_cases(cohort), crop_size=8, samples_per_epoch=8, seed=3, cache_size=1)
    order = [7, 2, 5, 0]
    got_b = {i: b[i] for i in order}  # different access order and cache size
    for i in order:
        assert _equal(a[i], got_b[i])
    a.set_epoch(1)
    assert not all(_equal(a[i], got_b[i]) for i in order)  # a new epoch draws new samples
    c = SliceDataset(cohort, crop_size=8, samples_per_epoch=8, seed=4)
    assert not all(_equal(c[i], got_b[i]) for i in order)


# two workers on purpose, also on a one-core machine (where torch warns about more workers than cores)
@pytest.mark.filterwarnings("ignore:This DataLoader will create 2 worker processes")
def test_dataloader_with_two_workers_matches_single_process(cohort: Path) -> None:
    ds = SliceDataset(cohort, crop_size=8, samples_per_epoch=12, seed=0, cache_size=2)
    ds.set_epoch(2)
    loader = DataLoader(ds, batch_size=4, num_workers=2, shuffle=False)
    batches = list(loader)
    assert len(batches) == 3
    assert batches[0]["images"].shape == (4, 2, 2, 8, 8) and len(batches[0]["plane"]) == 4
    for b, batch in enumerate(batches):
        for j in range(4):
            ref = ds[4 * b + j]
            torch.testing.assert_close(batch["images"][j], ref["images"])
            torch.testing.assert_close(batch["progression"][j], ref["progression"])


def test_persistent_worker_serves_each_epoch_through_tagged_indices(cohort: Path) -> None:
    """One persistent worker (its copy of the dataset never sees set_epoch) gives exactly the samples of
    ``set_epoch(e); ds[i]`` for every epoch, because the epoch travels with the index."""
    ds = SliceDataset(cohort, crop_size=8, samples_per_epoch=8, seed=0, cache_size=2)
    tagged = EpochTaggedBatchSampler([[0, 1, 2, 3], [4, 5, 6, 7]])
    loader = DataLoader(ds, batch_sampler=tagged, num_workers=1, persistent_workers=True)
    for epoch in range(3):
        tagged.set_epoch(epoch)
        batches = list(loader)
        ds.set_epoch(epoch)
        for b, batch in enumerate(batches):
            for j in range(4):
                torch.testing.assert_close(batch["images"][j], ds[4 * b + j]["images"], rtol=0, atol=0)
    ds.set_epoch(0)
    torch.testing.assert_close(ds[EpochIndex(2, 5)]["images"], batches[1]["images"][1], rtol=0, atol=0)
    with pytest.raises(ValueError, match="index.epoch"):
        ds[EpochIndex(-1, 0)]
    with pytest.raises(IndexError):
        ds[EpochIndex(0, -1)]


def test_works_with_the_balanced_batch_sampler(cohort: Path) -> None:
    ds = SliceDataset(cohort, crop_size=8, samples_per_epoch=16, transform=None)
    sampler = BalancedBatchSampler(ds.progression_flags, batch_size=4)
    batch = next(iter(sampler))
    flags = [ds.progression_flags[i] for i in batch]
    assert 0 < sum(flags) < len(flags)
    assert all(bool(ds[i]["has_progression"]) == f for i, f in zip(batch, flags))


def test_every_case_is_drawn_when_samples_per_epoch_is_not_a_multiple(cohort: Path) -> None:
    """Fewer samples than cases (or a remainder): each class's samples go round its cases from epoch to epoch,
    so no case is left out and none is favoured, while every sample keeps its class."""
    ds = SliceDataset(cohort, crop_size=8, samples_per_epoch=3, transform=None)  # classes [T, F, F, T]
    assert ds.progression_flags == [True, False, False]  # cases 0, 1, 2 in epoch 0, as before
    drawn = [[ds.case_of(i, epoch) for i in range(3)] for epoch in range(4)]
    assert drawn == [[0, 1, 2], [3, 1, 2], [0, 1, 2], [3, 1, 2]]  # case 3 (never drawn before) every other epoch
    for epoch in range(4):
        ds.set_epoch(epoch)
        assert [int(ds[i]["case_index"]) for i in range(3)] == drawn[epoch]
        assert [bool(ds[i]["has_progression"]) for i in range(3)] == ds.progression_flags
    # a remainder favoured the first cases in every epoch; over epochs the counts now differ by one at most
    ds = SliceDataset(cohort, crop_size=8, samples_per_epoch=6, transform=None)
    counts = np.bincount([ds.case_of(i, e) for e in range(10) for i in range(6)], minlength=4)
    assert counts.tolist() == [15, 15, 15, 15]  # before: 20, 20, 10, 10
    # a multiple of the number of cases: sample i is case i % 4 in every epoch, as it always was
    ds = SliceDataset(cohort, crop_size=8, samples_per_epoch=8, transform=None)
    assert all(ds.case_of(i, e) == i % 4 for e in range(3) for i in range(8))


def test_a_repeat_index_is_a_fresh_draw_from_the_same_case(cohort: Path) -> None:
    """The balanced sampler's virtual index i + r * len draws case_of(i) again with its own randomness."""
    ds = SliceDataset(cohort, crop_size=8, samples_per_epoch=8, seed=0)
    for i in range(8):
        first, again = ds[i], ds[i + 8]
        assert int(again["case_index"]) == int(first["case_index"]) == ds.case_of(i + 16)
        assert not _equal(first, again)
        assert _equal(again, ds[i + 8])  # seeded by (seed, epoch, index): deterministic
    assert _equal(ds[EpochIndex(0, 13)], ds[13])
    # 4 batches of 2 + 2 from 4 progressing and 4 stable samples: every sample twice, as i and i + 8
    sampler = BalancedBatchSampler(ds.progression_flags, batch_size=4, seed=0, num_batches=4, distinct_repeats=True)
    draws = sorted(i for b in sampler for i in b)
    assert draws == list(range(16))
    assert all(bool(ds[i]["has_progression"]) == ds.progression_flags[i % 8] for i in draws)


def test_volume_patch_dataset(cohort: Path) -> None:
    ds = VolumePatchDataset(cohort, patch_size=(8, 8, 6), samples_per_epoch=4, lesion_weight=1.0)
    s = ds[0]
    assert s["images"].shape == (2, 2, 8, 8, 6) and s["progression"].shape == (1, 1, 8, 8, 6)
    assert s["plane"] == "volume"
    assert s["baseline"].any() or s["progression"].any()
    assert ds.progression_flags == [True, False, False, True]


def test_in_memory_cases_and_errors() -> None:
    cases = [make_case(seed=1), make_case(seed=2, progression=False)]
    ds = SliceDataset(cases, crop_size=8, samples_per_epoch=4, preprocess=None, transform=None)
    assert ds.case_progression_flags == [True, False]
    np.testing.assert_array_equal(ds.get_case(0).images, cases[0].images)  # no preprocessing
    with pytest.raises(ValueError, match="cases must not be empty"):
        SliceDataset([])
    with pytest.raises(TypeError, match="cases must be CaseSource or LongitudinalCase"):
        SliceDataset(["x"])  # type: ignore[list-item]
    with pytest.raises(ValueError, match="has no baseline/progression masks"):
        SliceDataset([cases[0].with_arrays(baseline_mask=None, progression_masks=None)])
    with pytest.raises(ValueError, match="samples_per_epoch must be >= 1"):
        SliceDataset(cases, samples_per_epoch=0)
    with pytest.raises(ValueError, match="transform must be a callable"):
        SliceDataset(cases, transform="flips")
    with pytest.raises(ValueError, match="epoch must be >= 0"):
        ds.set_epoch(-1)


def test_cases_a_batch_cannot_stack_are_refused_when_built() -> None:
    """Other C or T than the other cases would fail later, inside the DataLoader's collate."""
    case = make_case(seed=1, case_id="c0")
    one_channel = make_case(seed=2, channels=1, case_id="c1")
    with pytest.raises(ValueError, match=r"case 'c1' has the modalities \['flair'\] but 'c0' has \['flair', 't2'\]"):
        SliceDataset([case, one_channel], crop_size=8)
    with pytest.raises(ValueError, match=r"same number of timepoints \(T=2 for 'c0'; T=3 for 'c2'\)"):
        VolumePatchDataset([case, make_case(seed=3, num_timepoints=3, case_id="c2")], patch_size=8)


def test_indices_must_be_integers(cohort: Path) -> None:
    ds = SliceDataset(cohort, crop_size=8, samples_per_epoch=4, transform=None)
    assert _equal(ds[np.int64(1)], ds[1]) and _equal(ds[EpochIndex(0, np.int32(1))], ds[1])
    for bad in (1.5, 1.0, "1", None):
        with pytest.raises(TypeError, match="index must be an int or an EpochIndex"):
            ds[bad]  # type: ignore[index]


@pytest.mark.parametrize("cls", [SliceDataset, VolumePatchDataset])
def test_seed_and_preprocess_are_checked_when_built(cls: type) -> None:
    """A negative, string or float seed and a non-callable preprocess failed only at the first item (a float
    seed was truncated)."""
    cases = [make_case(seed=0, progression=True, case_id="a"), make_case(seed=1, case_id="b")]
    for seed, err in ((-1, ValueError), ("x", TypeError), (1.7, TypeError), (True, TypeError)):
        with pytest.raises(err, match="seed"):
            cls(cases, seed=seed)
    with pytest.raises(TypeError, match="preprocess must be a callable"):
        cls(cases, preprocess=5)
    assert cls(cases, seed=np.int64(3), preprocess=None).seed == 3
