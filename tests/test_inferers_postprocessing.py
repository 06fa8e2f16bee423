"""Thresholding, connected-component removal in mm3, brain restriction, and binary entropy."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from longiseg.data.lesions import label_lesions
from longiseg.inferers import (
    MAX_BINARY_ENTROPY,
    binary_entropy,
    new_lesion_probability,
    postprocess,
    postprocess_heads,
    remove_small_components,
    restrict_to_mask,
    threshold_probabilities,
)


def _blob(mask: np.ndarray, corner: tuple[int, int, int], n_voxels: int) -> None:
    """Put a connected blob of exactly ``n_voxels`` voxels at ``corner`` (rows of 10 along the last axis)."""
    d, h, w = corner
    for i in range(n_voxels):
        mask[d + i // 10, h, w + i % 10] = True


def test_component_removal_anisotropic_exact_threshold() -> None:
    spacing = (0.5, 1.0, 3.0)  # 1.5 mm3 per voxel -> 27 mm3 = exactly 18 voxels
    mask = np.zeros((12, 12, 12), bool)
    sizes = {(0, 0, 0): 17, (0, 4, 0): 18, (0, 8, 0): 19, (6, 0, 0): 1, (6, 4, 0): 30, (6, 8, 0): 12}
    for corner, n in sizes.items():
        _blob(mask, corner, n)
    assert mask.sum() == sum(sizes.values())
    out = remove_small_components(mask, 27.0, spacing)
    kept = {c: n for c, n in sizes.items() if n * 1.5 >= 27.0}
    expected = np.zeros_like(mask)
    for corner, n in kept.items():
        _blob(expected, corner, n)
    np.testing.assert_array_equal(out, expected)
    assert set(kept.values()) == {18, 19, 30}
    # the same voxels on an isotropic 1 mm grid: 27 voxels needed -> only the 30-voxel blob stays
    assert remove_small_components(mask, 27.0, (1, 1, 1)).sum() == 30
    assert remove_small_components(mask, 0.0, spacing).sum() == mask.sum()


@pytest.mark.parametrize("voxels", [1, 2, 3, 5, 10, 27, 50])
def test_component_of_exactly_the_minimum_volume_is_kept_like_a_lesion(voxels: int) -> None:
    """0.7 mm voxels: ``voxels * 0.343`` mm3 is not a float that ``n * 0.343 >= it`` reproduces for every n;
    the filter counts voxels, as lesion labelling does, so both keep the component."""
    mask = np.zeros((4, 4, 60), bool)
    mask[1, 1, :voxels] = True
    spacing = (0.7, 0.7, 0.7)
    min_volume = voxels * 0.7 * 0.7 * 0.7
    assert remove_small_components(mask, min_volume, spacing).sum() == voxels
    assert label_lesions(mask, spacing, min_volume_mm3=min_volume).n == 1
    assert remove_small_components(mask, min_volume * 1.01, spacing).sum() == 0


def test_connectivity() -> None:
    mask = np.zeros((4, 4, 4), bool)
    mask[0, 0, 0] = mask[1, 1, 1] = True  # corner neighbours
    assert remove_small_components(mask, 2.0, connectivity=26).sum() == 2
    assert remove_small_components(mask, 2.0, connectivity=6).sum() == 0
    assert remove_small_components(torch.from_numpy(mask), 2.0).dtype == bool


def test_threshold_restrict_and_postprocess_stack() -> None:
    prob = np.zeros((2, 6, 6, 6), np.float32)
    prob[:, 1:4, 1:4, 1:4] = 0.5  # 27 voxels, exactly at the threshold -> foreground
    prob[1, 5, 5, 5] = 0.9  # an isolated voxel
    np.testing.assert_array_equal(threshold_probabilities(prob, 0.5), prob >= 0.5)
    brain = np.ones((6, 6, 6), bool)
    brain[3] = False
    out = postprocess(prob, threshold=0.5, min_volume_mm3=10.0, spacing=(1, 1, 1), brain_mask=brain)
    assert out.shape == prob.shape and out.dtype == bool
    assert out[0].sum() == 18  # 27 - the 9 voxels in slab d=3
    assert out[1].sum() == 18  # isolated voxel removed (1 mm3 < 10)
    assert not out[:, 3].any()
    assert postprocess(prob[1], min_volume_mm3=0.0).sum() == 28
    np.testing.assert_array_equal(restrict_to_mask(prob >= 0.5, brain), (prob >= 0.5) & brain)


def test_postprocessing_errors() -> None:
    m = np.zeros((4, 4, 4), bool)
    with pytest.raises(ValueError, match="mask must have 3 dims"):
        remove_small_components(m[0], 1.0)
    with pytest.raises(ValueError, match="binary"):
        remove_small_components(m.astype(float) + 0.5, 1.0)
    with pytest.raises(ValueError, match="spacing"):
        remove_small_components(m, 1.0, spacing=(1, 0, 1))
    with pytest.raises(ValueError, match="connectivity"):
        remove_small_components(m, 1.0, connectivity=8)
    with pytest.raises(ValueError, match="min_volume_mm3"):
        remove_small_components(m, -1.0)
    with pytest.raises(ValueError, match="threshold"):
        threshold_probabilities(m.astype(float), 1.5)
    with pytest.raises(ValueError, match="NaN"):
        threshold_probabilities(np.full((2, 2, 2), np.nan), 0.5)
    with pytest.raises(ValueError, match="same shape"):
        restrict_to_mask(m, np.ones((4, 4, 3), bool))
    with pytest.raises(TypeError, match="numpy array or torch.Tensor"):
        postprocess([[0.1]])
    with pytest.raises(ValueError, match=r"\(D, H, W\) or \(N, D, H, W\)"):
        postprocess(np.zeros((4, 4)))


def test_entropy_values() -> None:
    got = binary_entropy(np.array([0.0, 0.5, 1.0], np.float32))
    assert got[0] == 0.0 and got[2] == 0.0
    assert got[1] == pytest.approx(math.log(2.0), rel=1e-7)
    assert MAX_BINARY_ENTROPY == pytest.approx(math.log(2.0))
    t = binary_entropy(torch.tensor([0.0, 0.5, 1.0], dtype=torch.float64))
    assert t.tolist() == [0.0, pytest.approx(math.log(2.0), rel=1e-15), 0.0]
    p = np.random.default_rng(0).uniform(size=(3, 4, 5))
    ref = -(p * np.log(p) + (1 - p) * np.log1p(-p))
    np.testing.assert_allclose(binary_entropy(p), ref, rtol=1e-12)
    np.testing.assert_allclose(binary_entropy(p), binary_entropy(1 - p), rtol=1e-12)  # symmetric
    assert binary_entropy(p.astype(np.float32)).dtype == np.float32
    assert (binary_entropy(p) <= math.log(2) + 1e-12).all()


def test_entropy_errors() -> None:
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        binary_entropy(np.array([1.2]))
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        binary_entropy(torch.tensor([-0.1]))
    with pytest.raises(ValueError, match="NaN"):
        binary_entropy(np.array([np.nan]))
    with pytest.raises(TypeError, match="prob"):
        binary_entropy("0.5")


def test_exclude_before_component_removal_drops_rims() -> None:
    """A predicted old lesion slightly larger than the baseline mask leaves a rim: cut out first, it is too small."""
    prob = np.zeros((12, 12, 12), np.float32)
    prob[2:9, 2:9, 2:9] = 0.9  # 343 voxels predicted as progression
    base = np.zeros((12, 12, 12), bool)
    base[3:8, 3:8, 3:8] = True  # the baseline head's lesion: 125 voxels inside it
    prob[10, 10, 0:4] = 0.8  # a small new lesion elsewhere: 4 voxels
    kept = postprocess(prob, min_volume_mm3=3.0, exclude=base)
    assert not (kept & base).any()
    np.testing.assert_array_equal(kept, (prob >= 0.5) & ~base)  # every part >= 3 voxels survives
    rims = postprocess(prob, min_volume_mm3=220.0, exclude=base)  # the 218-voxel rim falls under 220
    assert not rims.any()
    assert postprocess(prob, min_volume_mm3=220.0)[2:9, 2:9, 2:9].all()  # without exclusion: the whole lesion


def test_a_lesion_new_at_the_first_follow_up_is_not_new_again_at_the_second() -> None:
    # the references mark at follow-up k what is lesion at k and not at k - 1, but the masks were only cut to the
    # outside of the baseline lesions: a lesion new at t1 that the head showed again at t2 was written (and
    # scored) as new at t2 as well
    base_prob = np.zeros((8, 8, 8), np.float32)
    prog_prob = np.zeros((3, 8, 8, 8), np.float32)
    first, second = (slice(1, 4),) * 3, (slice(5, 8),) * 3
    prog_prob[0][first] = 0.95
    prog_prob[1][first] = prog_prob[1][second] = 0.95
    prog_prob[2][first] = prog_prob[2][second] = 0.95  # nothing new at t3
    masks = postprocess_heads(base_prob, prog_prob, restrict="none")
    expected = np.zeros((3, 8, 8, 8), bool)
    expected[0][first] = expected[1][second] = True
    np.testing.assert_array_equal(masks.progression, expected)
    assert masks.progression_prob[1][first].max() < 0.1 and masks.progression_prob[2].max() < 0.1  # damped too
    unchained = postprocess_heads(base_prob, prog_prob, restrict="none", progression_outside_baseline=False)
    assert unchained.progression[2][first].all()  # the head's maps as given, without the rule


def test_postprocess_heads_progression_never_overlaps_the_baseline_mask() -> None:
    rng = np.random.default_rng(3)
    base_prob = rng.uniform(0, 1, (10, 11, 12)).astype(np.float32)
    prog_prob = rng.uniform(0, 1, (2, 10, 11, 12)).astype(np.float32)
    brain = np.ones((10, 11, 12), bool)
    brain[0] = False
    base, prog, used = postprocess_heads(base_prob, prog_prob, threshold=0.6, min_volume_mm3=2.0, brain_mask=brain)
    np.testing.assert_array_equal(base, postprocess(base_prob, threshold=0.6, min_volume_mm3=2.0))
    assert prog.shape == (2, 10, 11, 12) and not (prog & base[None]).any() and not prog[:, 0].any()
    assert not (prog[1] & prog[0]).any()  # nor a lesion new at the first follow-up
    p_new = new_lesion_probability(base_prob, prog_prob)
    np.testing.assert_allclose(p_new[0], prog_prob[0] * (1 - base_prob), rtol=1e-6)
    np.testing.assert_allclose(p_new[1], prog_prob[1] * (1 - base_prob) * (1 - prog_prob[0]), rtol=1e-6)
    np.testing.assert_array_equal(used, p_new)  # the maps the masks were thresholded from
    earlier = base
    for k in range(2):  # follow-up k: outside the lesions at k - 1
        np.testing.assert_array_equal(
            prog[k], postprocess(p_new[k], threshold=0.6, min_volume_mm3=2.0, brain_mask=brain, exclude=earlier))
        earlier = earlier | prog[k]
    _, off, raw = postprocess_heads(base_prob, prog_prob, threshold=0.6, restrict="none",
                                   progression_outside_baseline=False)
    np.testing.assert_array_equal(off, prog_prob >= 0.6)
    np.testing.assert_array_equal(raw, prog_prob)
    both = postprocess_heads(base_prob, prog_prob, threshold=0.6, brain_mask=brain, restrict="both").baseline
    assert not both[0].any()
    # A progression threshold of its own leaves the baseline mask as it was.
    sep = postprocess_heads(base_prob, prog_prob, threshold=0.6, progression_threshold=0.3, min_volume_mm3=2.0,
                            brain_mask=brain)
    np.testing.assert_array_equal(sep.baseline, base)
    earlier = base
    for k in range(2):
        np.testing.assert_array_equal(
            sep.progression[k], postprocess(p_new[k], threshold=0.3, min_volume_mm3=2.0, brain_mask=brain,
                                            exclude=earlier))
        earlier = earlier | sep.progression[k]


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"restrict": "all"}, ValueError, "restrict must be one of"),
        ({"brain_mask": None}, ValueError, "needs a brain_mask"),
        ({"progression_outside_baseline": 1}, TypeError, "progression_outside_baseline must be a bool"),
        ({"baseline_prob": np.zeros((4, 4, 5), np.float32)}, ValueError, "baseline_prob"),
        ({"progression_prob": np.zeros((4, 4, 4), np.float32)}, ValueError, r"\(T-1, D, H, W\)"),
    ],
)
def test_postprocess_heads_errors(kwargs: dict, error: type, match: str) -> None:
    args = {"baseline_prob": np.zeros((4, 4, 4), np.float32), "progression_prob": np.zeros((1, 4, 4, 4), np.float32),
            "brain_mask": np.ones((4, 4, 4), bool)}
    args.update(kwargs)
    with pytest.raises(error, match=match):
        postprocess_heads(**args)


def test_exclude_errors() -> None:
    prob = np.zeros((4, 4, 4), np.float32)
    with pytest.raises(ValueError, match="exclude"):
        postprocess(prob, exclude=np.zeros((4, 4, 3), bool))
    with pytest.raises(ValueError, match="exclude"):
        postprocess(prob, exclude=np.full((4, 4, 4), 2))


def test_new_lesion_probability_damps_where_the_baseline_head_sees_a_lesion() -> None:
    base = np.zeros((6, 6, 6), np.float32)
    base[1:3, 1:3, 1:3] = 0.4  # an old lesion's faint border: below a 0.5 threshold
    prog = np.full((1, 6, 6, 6), 0.7, np.float32)
    p_new = new_lesion_probability(torch.from_numpy(base), prog)
    assert p_new.dtype == np.float32 and p_new.shape == (1, 6, 6, 6)
    np.testing.assert_allclose(p_new[0, 1:3, 1:3, 1:3], 0.7 * 0.6, rtol=1e-6)
    np.testing.assert_array_equal(p_new[0, 4:, 4:, 4:], np.float32(0.7))  # no baseline lesion: exact (x * 1)
    mask = postprocess_heads(base, prog, threshold=0.5, restrict="none").progression
    assert not mask[0, 1:3, 1:3, 1:3].any() and mask[0, 4:, 4:, 4:].all()
    with pytest.raises(ValueError, match=r"progression_prob must hold probabilities in \[0, 1\]"):
        new_lesion_probability(base, prog * 2)
    with pytest.raises(ValueError, match="progression_prob spatial shape"):
        new_lesion_probability(base, prog[:, :5])


@pytest.mark.parametrize("dtype", [np.uint8, np.int64, bool])
def test_new_lesion_probability_of_integer_or_bool_maps_is_a_float(dtype: type) -> None:
    # the product was written into an array of the input's dtype: p_prog = 1 (uint8) with p_base = 0.3 gave
    # p_new 0 instead of 0.7 (no progression mask); a bool map gave True where p_new = 0.4 < threshold 0.7
    base = np.array([0.3, 0.6, 0.0, 1.0], np.float32).reshape(1, 1, 4)
    prog = np.array([[1, 1, 0, 1]], dtype).reshape(1, 1, 1, 4)
    p_new = new_lesion_probability(base, prog)
    assert p_new.dtype == np.float32
    np.testing.assert_allclose(p_new.ravel(), [0.7, 0.4, 0.0, 0.0], rtol=1e-6)
    heads = postprocess_heads(base, prog, threshold=0.5, restrict="none")
    assert heads.baseline.ravel().tolist() == [False, True, False, True]
    assert heads.progression.ravel().tolist() == [True, False, False, False]
    assert heads.progression_prob.dtype == np.float32


def test_postprocess_heads_names_the_head_whose_map_is_not_finite() -> None:
    good = np.zeros((2, 2, 2), np.float32)
    with pytest.raises(ValueError, match="^baseline_prob contains NaN"):
        postprocess_heads(np.full_like(good, np.nan), good[None], restrict="none")
    with pytest.raises(ValueError, match="^progression_prob contains NaN"):
        postprocess_heads(good, np.full_like(good, np.nan)[None], restrict="none")
