"""Tests for the balanced progression / no-progression batch sampler."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from longiseg.data.samplers import BalancedBatchSampler, EpochIndex, EpochTaggedBatchSampler


def _labels(num_pos: int, num_neg: int, seed: int = 0) -> list[bool]:
    flags = np.array([True] * num_pos + [False] * num_neg)
    np.random.default_rng(seed).shuffle(flags)
    return flags.tolist()


@pytest.mark.parametrize(("fraction", "num_pos"), [(0.5, 4), (0.25, 2), (0.3, 2), (0.75, 6)])
def test_fixed_ratio_in_every_batch(fraction, num_pos):
    labels = _labels(30, 170)
    sampler = BalancedBatchSampler(labels, batch_size=8, positive_fraction=fraction, seed=3)
    assert sampler.num_positive == num_pos
    batches = list(sampler)
    assert len(batches) == len(sampler) == 200 // 8
    for batch in batches:
        assert len(batch) == 8
        assert sum(labels[i] for i in batch) == num_pos
        assert all(isinstance(i, int) for i in batch)


def test_minority_repeated_evenly_majority_without_replacement():
    labels = _labels(5, 95)
    batches = list(BalancedBatchSampler(labels, batch_size=10, seed=0))  # 10 batches x 5 positives
    counts = Counter(i for b in batches for i in b)
    positives = [i for i, f in enumerate(labels) if f]
    assert all(counts[i] == 10 for i in positives)  # 50 draws over 5 cases, one permutation at a time
    negatives_drawn = [i for b in batches for i in b if not labels[i]]
    assert len(negatives_drawn) == len(set(negatives_drawn)) == 50
    # positions inside a batch are shuffled: positives are not always first
    assert any(not labels[b[0]] for b in batches)


@pytest.mark.parametrize("distinct_repeats", [False, True])
@pytest.mark.parametrize(("num_pos", "num_neg", "batch_size", "num_replicas"), [(3, 13, 4, 1), (5, 7, 6, 1),
                                                                             (9, 20, 8, 2)])
def test_no_case_twice_in_a_batch_that_straddles_two_passes(num_pos, num_neg, batch_size, num_replicas,
                                                            distinct_repeats):
    # a batch cut across two permutations of a class held one case twice (3 progression cases for 2 places:
    # 32 of 400 batches, e.g. [4, 1, 10, 1]) although the class (its share on the rank) had enough cases
    labels = _labels(num_pos, num_neg)
    n = len(labels)
    for rank in range(num_replicas):
        sampler = BalancedBatchSampler(labels, batch_size=batch_size, num_batches=15, seed=rank, rank=rank,
                                       num_replicas=num_replicas, distinct_repeats=distinct_repeats)
        for epoch in range(8):
            sampler.set_epoch(epoch)
            counts = {True: Counter(), False: Counter()}
            for batch in sampler:
                cases = [i % n for i in batch]
                assert len(set(cases)) == len(cases), batch
                for i in cases:
                    counts[labels[i]][i] += 1
            for flag, drawn in counts.items():  # still whole passes over the rank's share: k or k + 1 draws each
                share = sum(1 for f in labels if f == flag) // num_replicas
                assert len(drawn) >= share and max(drawn.values()) - min(drawn.values()) <= 1, (flag, drawn)


def test_ddp_ranks_get_disjoint_shares():
    labels = _labels(64, 64)
    ranks = [BalancedBatchSampler(labels, batch_size=8, num_replicas=2, rank=r, seed=1) for r in range(2)]
    for epoch in (0, 1):
        seen = []
        for s in ranks:
            s.set_epoch(epoch)
            seen.append([i for b in s for i in b])
        assert len(seen[0]) == len(seen[1]) == 8 * 8
        assert set(seen[0]).isdisjoint(seen[1])
        assert set(seen[0]) | set(seen[1]) == set(range(128))  # one pass over the data in total
    # imbalanced: the minority repeats inside a rank but never across ranks
    labels = _labels(6, 90)
    ranks = [BalancedBatchSampler(labels, batch_size=4, num_replicas=2, rank=r, seed=2) for r in range(2)]
    shares = [{i for b in s for i in b} for s in ranks]
    assert shares[0].isdisjoint(shares[1])
    assert len(ranks[0]) == len(ranks[1]) == 96 // 8
    for s in ranks:
        assert all(sum(labels[i] for i in b) == 2 for b in s)


def test_defaults_from_torch_distributed(monkeypatch):
    import torch.distributed as dist

    monkeypatch.setattr(dist, "is_available", lambda: True)
    monkeypatch.setattr(dist, "is_initialized", lambda: True)
    monkeypatch.setattr(dist, "get_world_size", lambda: 2)
    monkeypatch.setattr(dist, "get_rank", lambda: 1)
    s = BalancedBatchSampler(_labels(20, 20), batch_size=4)
    assert (s.num_replicas, s.rank) == (2, 1)
    explicit = BalancedBatchSampler(_labels(20, 20), batch_size=4, num_replicas=2, rank=1)
    assert list(s) == list(explicit)


def test_determinism_and_epochs():
    labels = _labels(20, 80)
    a = BalancedBatchSampler(labels, batch_size=6, seed=5)
    b = BalancedBatchSampler(labels, batch_size=6, seed=5)
    assert list(a) == list(b)
    assert list(a) == list(a)  # without set_epoch an epoch repeats (DistributedSampler convention)
    epoch0 = list(a)
    a.set_epoch(1)
    assert list(a) != epoch0
    assert list(BalancedBatchSampler(labels, batch_size=6, seed=6)) != epoch0


def test_resume_from_state_dict_mid_epoch():
    labels = _labels(15, 85)
    sampler = BalancedBatchSampler(labels, batch_size=4, seed=9)
    sampler.set_epoch(2)
    full = sampler.epoch_batches()
    it = iter(sampler)
    consumed = [next(it) for _ in range(7)]
    assert consumed == full[:7]
    state = sampler.state_dict()
    assert (state["epoch"], state["position"]) == (2, 7)

    resumed = BalancedBatchSampler(labels, batch_size=4, seed=0)
    resumed.load_state_dict(state)
    resumed.set_epoch(2)  # a trainer re-entering the same epoch keeps the position
    assert len(resumed) == len(sampler)
    assert list(resumed) == full[7:]
    assert list(resumed) == full  # the next pass starts the epoch from the beginning
    resumed.set_epoch(3)
    assert list(resumed) == sampler.epoch_batches(3)

    # a DataLoader with workers prefetches: the trainer passes the batches it really finished
    state = sampler.state_dict(num_consumed=5)
    again = BalancedBatchSampler(labels, batch_size=4, seed=9)
    again.load_state_dict(state)
    assert list(again) == full[5:]


def test_state_dict_rejects_other_layout():
    labels = _labels(10, 30)
    state = BalancedBatchSampler(labels, batch_size=4).state_dict()
    with pytest.raises(ValueError, match=r"batch_size=4 \(now 8\)"):
        BalancedBatchSampler(labels, batch_size=8, num_batches=10).load_state_dict(state)
    with pytest.raises(ValueError, match="missing keys"):
        BalancedBatchSampler(labels, batch_size=4).load_state_dict({"epoch": 0})
    with pytest.raises(ValueError, match="num_consumed"):
        BalancedBatchSampler(labels, batch_size=4).state_dict(num_consumed=99)


def test_layout_changes_name_the_settings_and_leave_out_what_follows_from_them():
    labels = _labels(10, 30)
    state = BalancedBatchSampler(labels, batch_size=4).state_dict()
    assert BalancedBatchSampler(labels, batch_size=4).layout_changes(state) == {}
    # the batch size changes num_batches and num_positive too: only the setting itself is named
    assert BalancedBatchSampler(labels, batch_size=8).layout_changes(state) == {"batch_size": (4, 8)}
    # a derived setting alone is named
    changed = BalancedBatchSampler(labels, batch_size=4, num_batches=3).layout_changes(state)
    assert set(changed) == {"num_batches"} and changed["num_batches"][1] == 3
    with pytest.raises(TypeError, match="state must be a dict"):
        BalancedBatchSampler(labels, batch_size=4).layout_changes([1])


def test_distinct_repeats_name_each_reuse_of_an_index_by_a_virtual_index():
    """The minority class is used up several times an epoch: its r-th pass is shifted by r * N, so a dataset
    seeded by (seed, epoch, index) draws new crops; the batches are otherwise those of distinct_repeats=False."""
    labels = _labels(5, 95)
    plain = BalancedBatchSampler(labels, batch_size=10, seed=0)
    distinct = BalancedBatchSampler(labels, batch_size=10, seed=0, distinct_repeats=True)
    for epoch in (0, 3):
        batches = distinct.epoch_batches(epoch)
        assert [[i % 100 for i in b] for b in batches] == plain.epoch_batches(epoch)
        positives = [i for b in batches for i in b if labels[i % 100]]
        assert len(positives) == len(set(positives)) == 50  # was: 5 indices, each 10 times
        assert sorted({i // 100 for i in positives}) == list(range(10))  # passes 0..9 over the 5 cases
        negatives = [i for b in batches for i in b if not labels[i % 100]]
        assert max(negatives) < 100  # the majority is used up at most once: plain indices
    # resumable: the flag is part of the layout a state must match
    distinct.set_epoch(2)
    it = iter(distinct)
    next(it)
    state = distinct.state_dict()
    again = BalancedBatchSampler(labels, batch_size=10, seed=0, distinct_repeats=True)
    again.load_state_dict(state)
    assert list(again) == distinct.epoch_batches(2)[1:]
    with pytest.raises(ValueError, match=r"distinct_repeats=True \(now False\)"):
        BalancedBatchSampler(labels, batch_size=10, seed=0).load_state_dict(state)


def test_every_rank_loads_the_state_rank_0_saved():
    """Under DDP rank 0 writes the checkpoint and every rank resumes from it (all share the position)."""
    labels = _labels(16, 16)
    ranks = [BalancedBatchSampler(labels, batch_size=4, num_replicas=2, rank=r, seed=1) for r in range(2)]
    ranks[0].set_epoch(1)
    next(iter(ranks[0]))
    ranks[1].load_state_dict(ranks[0].state_dict())
    assert list(ranks[1]) == ranks[1].epoch_batches(1)[1:]


def test_num_batches_and_drop_last():
    labels = _labels(10, 31)
    assert len(BalancedBatchSampler(labels, batch_size=4)) == 10
    assert len(BalancedBatchSampler(labels, batch_size=4, drop_last=False)) == 11
    assert len(BalancedBatchSampler(labels, batch_size=4, num_batches=3)) == 3
    assert len(list(BalancedBatchSampler(labels, batch_size=4, drop_last=False))) == 11
    assert len(BalancedBatchSampler(labels, batch_size=4, num_replicas=2, rank=0, drop_last=False)) == 6


def test_with_dataloader_and_tensor_labels():
    labels = torch.tensor(_labels(12, 36), dtype=torch.int64)
    ds = TensorDataset(torch.arange(48), labels)
    sampler = BalancedBatchSampler(labels, batch_size=6, positive_fraction=1 / 3, seed=0)
    loader = DataLoader(ds, batch_sampler=sampler)
    n = 0
    for idx, lab in loader:
        assert idx.shape == (6,) and int(lab.sum()) == 2
        n += 1
    assert n == len(loader) == 8


@pytest.mark.parametrize(
    ("labels", "kwargs", "match", "exc"),
    [
        ([1, 0, 1, 0], {"batch_size": 1}, "batch_size must be >= 2", ValueError),
        ([0, 0, 0, 0], {"batch_size": 2}, "no progression case", ValueError),
        ([1, 1, 1, 1], {"batch_size": 2}, "no no-progression case", ValueError),
        ([1, 0, 2, 0], {"batch_size": 2}, "0/1", ValueError),
        ([[1, 0]], {"batch_size": 2}, "shape", ValueError),
        ("1010", {"batch_size": 2}, "sequence", TypeError),
        ([1, 0] * 10, {"batch_size": 4, "positive_fraction": 0.1}, "between 1 and 3", ValueError),
        ([1, 0] * 10, {"batch_size": 4, "positive_fraction": 1.0}, r"\(0, 1\)", ValueError),
        ([1, 0] * 10, {"batch_size": 4, "num_replicas": 2, "rank": 2}, "rank must be in", ValueError),
        ([1, 0, 0, 0], {"batch_size": 2, "num_replicas": 2, "rank": 0}, "every rank needs", ValueError),
        ([1, 0] * 3, {"batch_size": 8}, "no full batch", ValueError),
        ([1, 0] * 10, {"batch_size": 4, "num_batches": 0}, "num_batches must be >= 1", ValueError),
        ([1, 0] * 10, {"batch_size": 4.0}, "batch_size must be an int", TypeError),
    ],
)
def test_bad_arguments(labels, kwargs, match, exc):
    with pytest.raises(exc, match=match):
        BalancedBatchSampler(labels, **kwargs)


def test_epoch_tagged_batches_carry_the_epoch_and_forward_it() -> None:
    inner = BalancedBatchSampler([1, 0, 1, 0, 1, 0], batch_size=2, seed=3)
    tagged = EpochTaggedBatchSampler(inner)
    tagged.set_epoch(4)
    assert inner.epoch == 4 and len(tagged) == len(inner)
    batches = list(tagged)
    assert batches == [[EpochIndex(4, i) for i in b] for b in inner.epoch_batches(4)]
    # torch's BatchSampler has no set_epoch: the epoch reaches its index sampler (e.g. a DistributedSampler)
    dist_sampler = torch.utils.data.DistributedSampler(TensorDataset(torch.zeros(6)), num_replicas=1, rank=0)
    tagged = EpochTaggedBatchSampler(torch.utils.data.BatchSampler(dist_sampler, 3, drop_last=True))
    tagged.set_epoch(2)
    assert dist_sampler.epoch == 2 and all(ix.epoch == 2 for b in tagged for ix in b)
    with pytest.raises(TypeError, match="epoch"):
        tagged.set_epoch(1.5)
    with pytest.raises(ValueError, match="epoch"):
        tagged.set_epoch(-1)
    with pytest.raises(TypeError, match="batch_sampler"):
        EpochTaggedBatchSampler(3)
