"""Persisting baseline lesions and the false-progression rate (longiseg.metrics.consistency)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from longiseg.metrics.consistency import persisting_lesions, pooled_false_progression_rate

SHAPE = (20, 20, 20)


def _cube(mask: np.ndarray, lo: tuple[int, int, int], size: int) -> None:
    d, h, w = lo
    mask[d:d + size, h:h + size, w:w + size] = True


def _scene() -> tuple[np.ndarray, np.ndarray]:
    """Three baseline lesions: A persists, B enlarges (progression voxels adjacent), C persists; one new lesion."""
    base = np.zeros(SHAPE, bool)
    _cube(base, (1, 1, 1), 3)     # A: 27 voxels
    _cube(base, (10, 1, 1), 3)    # B: grows at the follow-up
    _cube(base, (1, 12, 12), 2)   # C: 8 voxels
    prog = np.zeros(SHAPE, bool)
    prog[13, 1:4, 1:4] = True     # B's new rim, touching B
    _cube(prog, (14, 14, 14), 3)  # a new lesion far from all
    return base, prog


def test_persisting_lesions_exclude_enlarging_ones_and_count_coverage() -> None:
    base, prog = _scene()
    pred = prog.copy()
    pred[1, 1:4, 1:4] = True      # 9 of A's 27 voxels: 1/3 >= 10 % -> flagged
    pred[1, 12, 12] = True        # 1 of C's 8 voxels: 12.5 % -> flagged
    res = persisting_lesions(pred, base, prog, spacing=(1.0, 2.0, 1.0))
    assert res.num_persisting == 2 and res.num_flagged == 2 and res.rate == 1.0
    np.testing.assert_allclose(sorted(res.coverage), [1 / 8, 1 / 3])
    np.testing.assert_allclose(sorted(res.volumes_mm3), [16.0, 54.0])
    strict = persisting_lesions(pred, base, prog, min_coverage=0.2)
    assert strict.num_flagged == 1 and strict.rate == 0.5
    only_big = persisting_lesions(pred, base, prog, min_volume_mm3=10.0)
    assert only_big.num_persisting == 1


def test_a_perfect_prediction_flags_nothing() -> None:
    base, prog = _scene()
    res = persisting_lesions(prog, base, prog)
    assert res.num_persisting == 2 and res.num_flagged == 0 and res.rate == 0.0


def test_touching_follows_the_connectivity() -> None:
    base = np.zeros(SHAPE, bool)
    _cube(base, (5, 5, 5), 2)
    prog = np.zeros(SHAPE, bool)
    prog[7, 7, 7] = True          # diagonal (corner) neighbour of the lesion's last voxel
    assert persisting_lesions(prog, base, prog, connectivity=26).num_persisting == 0
    assert persisting_lesions(prog, base, prog, connectivity=6).num_persisting == 1


def test_no_lesions_and_pooling() -> None:
    empty = np.zeros(SHAPE, bool)
    none = persisting_lesions(empty, empty, empty)
    assert none.num_persisting == 0 and math.isnan(none.rate)
    base, prog = _scene()
    flagged = persisting_lesions(base | prog, base, prog)
    clean = persisting_lesions(prog, base, prog)
    assert pooled_false_progression_rate([flagged, clean, none]) == 0.5
    assert math.isnan(pooled_false_progression_rate([none]))


def test_bad_input() -> None:
    base, prog = _scene()
    with pytest.raises(ValueError, match="min_coverage"):
        persisting_lesions(prog, base, prog, min_coverage=0.0)
    with pytest.raises(ValueError, match="gt_baseline has shape"):
        persisting_lesions(prog, base[:5], prog)
    with pytest.raises(ValueError, match="connectivity"):
        persisting_lesions(prog, base, prog, connectivity=5)


def test_coverage_of_exactly_min_coverage_flags_the_lesion() -> None:
    """3 of 30 voxels is 10 %, although 0.1 * 30 is 3.0000000000000004 in floating point."""
    base = np.zeros((4, 10, 10), bool)
    base[1, 1:4, 1:9] = True  # 24 voxels
    base[2, 1:4, 1:3] = True  # + 6 = 30
    pred = np.zeros_like(base)
    pred[1, 1, 1:4] = True    # 3 voxels of the lesion
    res = persisting_lesions(pred, base, np.zeros_like(base), min_coverage=0.1)
    assert (res.num_persisting, res.num_flagged) == (1, 1)
    pred[1, 1, 3] = False     # 2 of 30: below 10 %
    assert persisting_lesions(pred, base, np.zeros_like(base), min_coverage=0.1).num_flagged == 0


def test_two_dimensional_masks() -> None:
    base = np.zeros((8, 8), bool)
    base[1:3, 1:3] = True
    prog = np.zeros_like(base)
    prog[3, 3] = True  # diagonal neighbour of the lesion: touching under 8-, not under 4-connectivity
    assert persisting_lesions(base, base, prog).num_persisting == 0
    assert persisting_lesions(base, base, prog, connectivity=4).num_flagged == 1


def test_pooled_rate_names_what_it_takes() -> None:
    # a list of numbers was an AttributeError ("'int' object has no attribute 'num_persisting'")
    from longiseg.metrics import pooled_false_progression_rate

    with pytest.raises(TypeError, match=r"results must be a sequence of PersistingLesions .*got list of \['int'\]"):
        pooled_false_progression_rate([1])  # type: ignore[list-item]
    assert np.isnan(pooled_false_progression_rate([]))
