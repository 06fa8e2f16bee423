"""Cross-view slice sampling (plane coverage, shapes, padding) and lesion-weighted crop centres."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
import torch
from test_data_fixtures import make_case

from longiseg.data import (
    PLANES,
    CrossViewSampler,
    SliceDataset,
    VolumePatchDataset,
    VolumePatchSampler,
    build_sampling_index,
    sample_center,
)
from longiseg.data.crops import crop_window
from longiseg.metrics.consistency import label_persisting_lesions


def test_crop_window_pads_at_borders() -> None:
    arr = np.arange(2 * 5 * 6 * 7, dtype=np.float32).reshape(2, 5, 6, 7) + 1
    out = crop_window(arr, (-2, 1, 4), (4, 3, 5))
    assert out.shape == (2, 4, 3, 5)
    np.testing.assert_array_equal(out[:, 2:, :, :3], arr[:, 0:2, 1:4, 4:7])
    assert (out[:, :2] == 0).all() and (out[..., 3:] == 0).all()
    assert (crop_window(arr, (10, 0, 0), (2, 2, 2)) == 0).all()  # entirely outside
    with pytest.raises(ValueError, match="must match the last axes"):
        crop_window(arr, (0, 0), (1, 1, 1))


def test_cross_view_covers_all_planes_with_right_shapes() -> None:
    case = make_case(num_timepoints=3, shape=(20, 24, 16))
    index = build_sampling_index(case)
    sampler = CrossViewSampler(crop_size=(12, 10), lesion_weight=0.5)
    rng = np.random.default_rng(0)
    planes = Counter()
    for _ in range(300):
        s = sampler.sample(case, index, rng, case_index=3)
        planes[s["plane"]] += 1
        assert s["images"].shape == (3, 2, 12, 10) and s["images"].dtype.is_floating_point
        assert s["baseline"].shape == (1, 12, 10)
        assert s["progression"].shape == (2, 1, 12, 10)
        assert bool(s["has_progression"]) and int(s["case_index"]) == 3
        # the slice is the centre voxel's slice in that plane
        axis = index.plane_axes[s["plane"]]
        c = s["center"].tolist()
        assert 0 <= c[axis] < case.shape[axis]
    assert set(planes) == set(PLANES)
    assert all(80 <= n <= 120 for n in planes.values()), planes  # about 1/3 each


def test_slice_content_matches_the_volume() -> None:
    case = make_case(shape=(20, 24, 16))
    index = build_sampling_index(case)
    sampler = CrossViewSampler(crop_size=8, planes=("sagittal",), lesion_weight=1.0, jitter=0.0)
    s = sampler.sample(case, index, np.random.default_rng(1))
    d, h, w = s["center"].tolist()
    expected = case.images[:, :, d, h - 4: h + 4, w - 4: w + 4]
    np.testing.assert_array_equal(s["images"].numpy(), expected)
    np.testing.assert_array_equal(s["baseline"][0].numpy(), case.baseline_mask[d, h - 4: h + 4, w - 4: w + 4])


def test_lesion_weighting_fraction() -> None:
    """Fraction of crops containing lesion = w + (1 - w) * q, q the chance of a random brain crop."""
    case = make_case(shape=(40, 40, 40), progression=False)
    index = build_sampling_index(case)
    n = 800

    def lesion_fraction(w: float, seed: int) -> float:
        sampler = CrossViewSampler(crop_size=6, lesion_weight=w)
        rng = np.random.default_rng(seed)
        return sum(bool(sampler.sample(case, index, rng)["baseline"].any()) for _ in range(n)) / n

    q = lesion_fraction(0.0, 123)
    assert q < 0.05  # a 3x3x3 lesion is rarely hit by chance
    for weight in (0.3, 0.7, 1.0):
        expected = weight + (1 - weight) * q
        got = lesion_fraction(weight, 7)
        assert abs(got - expected) < 4 * np.sqrt(max(expected * (1 - expected), 1e-3) / n) + 0.01, (weight, got)


def test_progression_share_targets_new_lesions() -> None:
    case = make_case(shape=(30, 30, 30))
    index = build_sampling_index(case)
    rng = np.random.default_rng(0)
    prog = set(index.progression.tolist())
    uniform = index.progression.size / index.lesion.size  # share None: uniform over all lesion voxels
    for share, lo, hi in ((1.0, 1.0, 1.0), (0.0, 0.0, 0.0), (0.5, 0.4, 0.6), (None, uniform - 0.1, uniform + 0.1)):
        hits = 0
        for _ in range(400):
            center, on_lesion = sample_center(index, rng, lesion_weight=1.0, progression_share=share)
            assert on_lesion
            hits += np.ravel_multi_index(center, index.shape) in prog
        assert lo <= hits / 400 <= hi
    # lesion-free case: every centre comes from the brain
    empty = make_case(progression=False).with_arrays(baseline_mask=np.zeros((20, 24, 16), np.uint8))
    eidx = build_sampling_index(empty)
    center, on_lesion = sample_center(eidx, rng, lesion_weight=1.0)
    assert not on_lesion and empty.brain_mask[center]


def test_jitter_keeps_the_lesion_voxel_inside() -> None:
    case = make_case(shape=(30, 30, 30), progression=False)
    index = build_sampling_index(case)
    sampler = CrossViewSampler(crop_size=8, lesion_weight=1.0, jitter=1.0)
    rng = np.random.default_rng(0)
    offsets = set()
    for _ in range(200):
        s = sampler.sample(case, index, rng)
        assert s["baseline"].any()
        offsets.add(tuple(np.argwhere(s["baseline"][0].numpy()).mean(0).round(1)))
    assert len(offsets) > 5  # lesions are not always in the middle


def test_volume_patches_and_border_padding() -> None:
    case = make_case(num_timepoints=2, shape=(12, 14, 10))
    index = build_sampling_index(case)
    sampler = VolumePatchSampler(patch_size=(16, 8, 20), lesion_weight=0.5)
    rng = np.random.default_rng(0)
    for _ in range(20):
        s = sampler.sample(case, index, rng)
        assert s["images"].shape == (2, 2, 16, 8, 20)
        assert s["baseline"].shape == (1, 16, 8, 20) and s["progression"].shape == (1, 1, 16, 8, 20)
        assert s["plane"] == "volume"
        filled_cols = (s["images"].abs().sum(dim=(0, 1, 2, 3)) > 0).sum()
        assert 0 < int(filled_cols) <= 10  # W=10 < 20: the rest is zero padding


def _case_with_an_enlarging_lesion() -> tuple:
    """make_case's centred baseline lesion persists; a second baseline lesion touches the new lesion (enlarges)."""
    case = make_case(shape=(30, 30, 30))
    base = case.baseline_mask.copy()
    base[16:18, 10:12, 16:18] = 1  # next to the progression voxels [18:20, 10:12, 16:18]
    case = case.with_arrays(baseline_mask=base)
    central = np.zeros(case.shape, bool)
    central[13:16, 13:16, 13:16] = True
    return case, central


def test_sampling_index_lists_the_persisting_lesions() -> None:
    case, central = _case_with_an_enlarging_lesion()
    index = build_sampling_index(case)
    np.testing.assert_array_equal(index.persisting, np.flatnonzero(central))  # the enlarging lesion is left out
    assert index.is_persisting((14, 14, 14)) and not index.is_persisting((16, 10, 16))
    assert not index.is_persisting((0, 0, 0))
    # the same voxels as labelling the whole volume, also for lesions at the border and progression next to them
    rng = np.random.default_rng(0)
    base = rng.random((12, 14, 10)) < 0.08
    base[0, :2, :2] = base[-1, -2:, -2:] = True
    prog = (rng.random((12, 14, 10)) < 0.02) & ~base
    prog[1, 0, 0] = True
    edge = case.with_arrays(images=np.ones((2, 2, 12, 14, 10), np.float32), brain_mask=None,
                            baseline_mask=base.astype(np.uint8), progression_masks=prog[None].astype(np.uint8))
    labels, persisting = label_persisting_lesions(base, prog)
    np.testing.assert_array_equal(build_sampling_index(edge).persisting,
                                  np.flatnonzero(np.isin(labels.labels, persisting)))
    assert 0 < persisting.size < labels.n
    stable = build_sampling_index(make_case(progression=False))
    assert stable.persisting.size == stable.baseline.size == 27  # without progression every lesion persists


def test_persisting_share_centres_hard_negatives() -> None:
    case, central = _case_with_an_enlarging_lesion()
    index = build_sampling_index(case)
    for share, lo, hi in ((1.0, 1.0, 1.0), (0.5, 0.4, 0.6)):  # the other draws go to the new lesion
        rng = np.random.default_rng(0)
        hits = sum(bool(central[sample_center(index, rng, 1.0, 1.0, persisting_share=share)[0]])
                   for _ in range(400))
        assert lo <= hits / 400 <= hi
    # share 0 draws exactly the centres of the paper's sampling (no extra random number)
    a, b = np.random.default_rng(3), np.random.default_rng(3)
    for _ in range(50):
        assert sample_center(index, a, 0.7, 0.5, persisting_share=0.0) == sample_center(index, b, 0.7, 0.5)
    # hard_negative: centred on a persisting lesion and no progression voxel in the crop
    for sampler in (CrossViewSampler(crop_size=6, lesion_weight=1.0, persisting_share=1.0),
                    VolumePatchSampler(patch_size=6, lesion_weight=1.0, persisting_share=1.0)):
        rng = np.random.default_rng(1)
        flags = []
        for _ in range(60):
            s = sampler.sample(case, index, rng)
            assert central[tuple(s["center"].tolist())]
            assert bool(s["hard_negative"]) == (not s["progression"].any())
            flags.append(bool(s["hard_negative"]))
        assert any(flags)
    # crops centred on new lesions or on the brain are never hard negatives
    rng = np.random.default_rng(2)
    sampler = CrossViewSampler(crop_size=6, lesion_weight=0.5, progression_share=1.0)
    for _ in range(60):
        s = sampler.sample(case, index, rng)
        assert bool(s["hard_negative"]) == (central[tuple(s["center"].tolist())] and not s["progression"].any())


def test_persisting_share_in_the_datasets_is_deterministic() -> None:
    case, central = _case_with_an_enlarging_lesion()
    for make in (lambda: SliceDataset([case], crop_size=6, lesion_weight=1.0, persisting_share=1.0,
                                      samples_per_epoch=6, seed=5),
                 lambda: VolumePatchDataset([case], patch_size=6, lesion_weight=1.0, persisting_share=1.0,
                                            samples_per_epoch=6, seed=5)):
        first, second = make(), make()
        second.set_epoch(0)
        for i in (4, 0, 5):  # any order
            a, b = first[i], second[i]
            assert all(torch.equal(a[k], b[k]) for k in ("images", "baseline", "progression", "hard_negative"))
            assert torch.equal(a["center"], b["center"])
            # preprocessing only z-scores, so the centre is the persisting lesion of the original case
            assert central[tuple(a["center"].tolist())]


def test_sampler_argument_errors() -> None:
    with pytest.raises(ValueError, match="persisting_share must lie in"):
        VolumePatchSampler(persisting_share=-0.1)
    with pytest.raises(ValueError, match="lesion_weight must lie in"):
        CrossViewSampler(lesion_weight=1.5)
    with pytest.raises(ValueError, match="planes must be a non-empty subset"):
        CrossViewSampler(planes=("transverse",))
    with pytest.raises(ValueError, match="plane_weights must be 3"):
        CrossViewSampler(plane_weights=(1.0, -1.0, 1.0))
    with pytest.raises(ValueError, match=r"crop_size must have 2 entries \(one per spatial dim\), got 3"):
        CrossViewSampler(crop_size=(1, 2, 3))
    with pytest.raises(ValueError, match=r"patch_size\[0\] must be >= 1"):
        VolumePatchSampler(patch_size=(0, 4, 4))
    unlabelled = make_case().with_arrays(baseline_mask=None, progression_masks=None)
    with pytest.raises(ValueError, match="has no masks"):
        build_sampling_index(unlabelled)


@pytest.mark.parametrize("weights", [(float("nan"), 1.0, 1.0), (float("inf"), 1.0, 1.0), (0.0, 0.0, 0.0)])
def test_cross_view_sampler_refuses_non_finite_or_zero_plane_weights(weights: tuple[float, ...]) -> None:
    """NaN or infinite weights were accepted and failed at the first sample() inside numpy."""
    with pytest.raises(ValueError, match="plane_weights"):
        CrossViewSampler(plane_weights=weights)
    with pytest.raises(TypeError, match="plane_weights"):
        CrossViewSampler(plane_weights=("1", "1", "1"))


def test_cross_view_sampler_refuses_a_single_plane_string() -> None:
    """``planes="axial"`` was read as its characters; a single plane is passed as a tuple."""
    with pytest.raises(TypeError, match="planes must be a sequence"):
        CrossViewSampler(planes="axial")
    assert CrossViewSampler(planes=["axial"]).planes == ("axial",)
