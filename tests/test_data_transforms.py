"""Augmentations keep images and masks aligned across timepoints, and are reproducible under a seed."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from longiseg.data import LongitudinalAugment
from longiseg.data.transforms import TimepointVariation, rotation_matrix


def _mask_sample(spatial: tuple[int, ...], t: int = 3, c: int = 2, seed: int = 0) -> dict:
    """A sample whose every image channel equals the baseline mask, and masks with distinct content."""
    g = torch.Generator().manual_seed(seed)
    base = (torch.rand(1, *spatial, generator=g) > 0.7).float()
    prog = (torch.rand(t - 1, 1, *spatial, generator=g) > 0.8).float()
    images = base.expand(t, c, *spatial).clone()
    return {"images": images, "baseline": base, "progression": prog, "plane": "axial",
            "progression_visible": torch.tensor(bool(prog.any()))}


def _reference(sample: dict) -> dict:
    """Same sample with images replaced by (T*C) copies of the progression mask of follow-up 1."""
    out = dict(sample)
    t, c = sample["images"].shape[:2]
    out["images"] = sample["progression"][0].expand(t, c, *sample["images"].shape[2:]).clone()
    return out


@pytest.mark.parametrize("spatial", [(16, 16), (12, 20), (8, 10, 12), (10, 10, 10)])
def test_geometric_transforms_keep_images_and_masks_aligned(spatial: tuple[int, ...]) -> None:
    aug = LongitudinalAugment(flip_prob=0.5, rot90_prob=0.7, rotate_prob=0.7, max_angle=20,
                              image_interpolation="nearest")
    for seed in range(12):
        sample = _mask_sample(spatial, seed=seed)
        out = aug(sample, np.random.default_rng(seed))
        assert out["images"].shape == sample["images"].shape  # never changes the crop shape
        assert out["progression"].shape == sample["progression"].shape
        # every timepoint and channel still equals the (transformed) baseline mask
        torch.testing.assert_close(out["images"], out["baseline"].expand_as(out["images"]))
        # progression masks got exactly the same transform (checked through a second sample)
        ref = aug(_reference(sample), np.random.default_rng(seed))
        torch.testing.assert_close(ref["images"][0, 0], out["progression"][0, 0])
        assert bool(out["progression_visible"]) == bool(out["progression"].any())
        assert out["plane"] == "axial"


def test_bilinear_rotation_stays_aligned_up_to_edges() -> None:
    aug = LongitudinalAugment(flip_prob=0.0, rot90_prob=0.0, rotate_prob=1.0, max_angle=15)
    sample = _mask_sample((32, 32))
    sample["images"] = torch.nn.functional.max_pool2d(sample["images"], 5, 1, 2)  # smooth blobs
    sample["baseline"] = sample["images"][0, :1].clone()
    out = aug(sample, np.random.default_rng(3))
    img = out["images"]
    for t in range(img.shape[0]):  # identical across timepoints and channels
        torch.testing.assert_close(img[t], img[0])
    agree = ((img[0, 0] > 0.5).float() == out["baseline"][0]).float().mean()
    assert agree > 0.95
    assert set(out["baseline"].unique().tolist()) <= {0.0, 1.0}  # masks stay binary


def test_flips_and_rot90_are_exact_on_images() -> None:
    aug = LongitudinalAugment(flip_prob=1.0, rot90_prob=0.0, rotate_prob=0.0)
    sample = _mask_sample((6, 8))
    sample["images"] = torch.arange(3 * 2 * 48, dtype=torch.float32).reshape(3, 2, 6, 8)
    out = aug(sample, np.random.default_rng(0))
    torch.testing.assert_close(out["images"], sample["images"].flip(-1).flip(-2))
    aug90 = LongitudinalAugment(flip_prob=0.0, rot90_prob=1.0, rotate_prob=0.0)
    out = aug90(sample, np.random.default_rng(0))
    torch.testing.assert_close(out["images"], torch.rot90(sample["images"], 2, (2, 3)))  # non-square: 180


def test_intensity_scaling_is_shared_across_timepoints() -> None:
    aug = LongitudinalAugment(flip_prob=0.0, rot90_prob=0.0, rotate_prob=0.0, intensity_prob=1.0,
                              intensity_range=(0.5, 2.0))
    sample = _mask_sample((8, 8))
    sample["images"] = torch.ones(3, 2, 8, 8)
    out = aug(sample, np.random.default_rng(1))
    factors = out["images"][:, :, 0, 0]
    assert torch.allclose(factors, factors[:1].expand_as(factors))  # same for all timepoints
    assert not torch.allclose(factors[:, 0], factors[:, 1])  # one factor per modality
    torch.testing.assert_close(out["baseline"], sample["baseline"])


def test_determinism_under_a_seed() -> None:
    aug = LongitudinalAugment(intensity_prob=0.5)
    sample = _mask_sample((10, 10, 10))
    sample["images"] = torch.randn(3, 2, 10, 10, 10)
    a = aug(sample, np.random.default_rng(42))
    b = aug(sample, np.random.default_rng(42))
    for key in ("images", "baseline", "progression"):
        torch.testing.assert_close(a[key], b[key])
    outs = [aug(sample, np.random.default_rng(s))["images"] for s in range(6)]
    assert any(not torch.equal(outs[0], o) for o in outs[1:])


def _brain_sample(spatial: tuple[int, ...], t: int = 3) -> dict:
    """A sample whose images are a positive 'brain' ball with zero background, identical at every timepoint."""
    grid = torch.stack(torch.meshgrid(*[torch.arange(n, dtype=torch.float32) for n in spatial], indexing="ij"))
    centre = torch.tensor([(n - 1) / 2 for n in spatial]).view(-1, *([1] * len(spatial)))
    r2 = ((grid - centre) ** 2).sum(0)
    brain = (r2 <= (0.4 * min(spatial)) ** 2).float() * (1.0 + torch.exp(-r2 / 8.0))
    sample = _mask_sample(spatial, t=t)
    sample["images"] = brain.expand(t, 2, *spatial).clone()
    return sample


@pytest.mark.parametrize("spatial", [(24, 20), (12, 14, 10)])
def test_independent_timepoints_change_intensities_not_anatomy(spatial: tuple[int, ...]) -> None:
    sample = _brain_sample(spatial)
    variation = TimepointVariation(gain_range=(0.5, 1.5), bias_field_std=0.3, noise_std=0.0, max_shift=0.0,
                                   max_angle=0.0)
    aug = LongitudinalAugment(flip_prob=0.0, rot90_prob=0.0, rotate_prob=0.0, independent_timepoints=variation)
    for seed in range(4):
        out = aug(sample, np.random.default_rng(seed))
        assert torch.equal(out["baseline"], sample["baseline"])
        assert torch.equal(out["progression"], sample["progression"])
        # positive factors only: the brain keeps its voxels and the background stays zero
        assert torch.equal(out["images"] > 0, sample["images"] > 0) and (out["images"] >= 0).all()
        # drawn per timepoint: the timepoints no longer agree
        assert not torch.allclose(out["images"][0], out["images"][1])
    # noise is added inside the brain only
    noisy = LongitudinalAugment(flip_prob=0.0, rot90_prob=0.0, rotate_prob=0.0,
                                independent_timepoints=TimepointVariation(noise_std=0.1, max_shift=0.0,
                                                                          max_angle=0.0))
    out = noisy(sample, np.random.default_rng(0))
    assert (out["images"][sample["images"] == 0] == 0).all()
    assert torch.equal(out["baseline"], sample["baseline"])


@pytest.mark.parametrize("spatial", [(33, 33), (17, 17, 17)])
def test_misregistration_moves_only_the_follow_up_and_stays_sub_voxel(spatial: tuple[int, ...]) -> None:
    k = len(spatial)
    sample = _brain_sample(spatial)
    blob = sample["images"][0, 0] - (sample["images"][0, 0] > 0).float()  # the Gaussian at the centre
    sample["images"] = blob.expand(3, 2, *spatial).clone()
    variation = TimepointVariation(gain_range=(1.0, 1.0), bias_field_std=0.0, noise_std=0.0, max_shift=0.5,
                                   max_angle=2.0)
    coords = torch.stack(torch.meshgrid(*[torch.arange(n, dtype=torch.float64) for n in spatial], indexing="ij"))

    def centroid(img: torch.Tensor) -> torch.Tensor:
        w = img.double()
        return (coords * w).flatten(1).sum(1) / w.sum()

    moves = []
    for seed in range(8):
        out = variation(sample["images"], np.random.default_rng(seed))
        assert torch.equal(out[0], sample["images"][0])  # the baseline is the reference
        for j in (1, 2):
            shift = (centroid(out[j, 0]) - centroid(blob)).norm().item()
            # the blob sits at the rotation centre: only the shift moves it (+ interpolation/border slack)
            assert shift <= 0.5 * k ** 0.5 + 0.05, (seed, j, shift)
            moves.append(shift)
            # both modalities of a follow-up move together
            torch.testing.assert_close(out[j, 0], out[j, 1])
    assert max(moves) > 0.1  # it does move
    assert not torch.equal(variation(sample["images"], np.random.default_rng(0))[1],
                           variation(sample["images"], np.random.default_rng(0))[2])


def test_independent_timepoints_are_seeded_and_off_by_default() -> None:
    sample = _brain_sample((10, 10, 10))
    aug = LongitudinalAugment(intensity_prob=0.5, independent_timepoints=True)
    assert isinstance(aug.timepoint_variation, TimepointVariation)
    a = aug(sample, np.random.default_rng(42))
    b = aug(sample, np.random.default_rng(42))
    for key in ("images", "baseline", "progression"):
        assert torch.equal(a[key], b[key])
    assert not torch.equal(a["images"], aug(sample, np.random.default_rng(43))["images"])
    # off (the default): the same draws as before the option existed, timepoints stay identical
    assert LongitudinalAugment().timepoint_variation is None
    plain = LongitudinalAugment(rotate_prob=0.0)(sample, np.random.default_rng(1))["images"]
    assert torch.equal(plain[0], plain[1])
    with pytest.raises(TypeError, match="independent_timepoints must be a bool or a TimepointVariation"):
        LongitudinalAugment(independent_timepoints="yes")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="max_shift must lie in"):
        TimepointVariation(max_shift=2.0)
    with pytest.raises(ValueError, match="noise_std must be a finite number >= 0"):
        TimepointVariation(noise_std=-1.0)
    with pytest.raises(ValueError, match="gain_range"):
        TimepointVariation(gain_range=(1.2, 1.1))
    with pytest.raises(ValueError, match="images must be a"):
        TimepointVariation()(torch.zeros(8, 8), np.random.default_rng(0))


def test_rotation_matrix_and_errors() -> None:
    np.testing.assert_allclose(rotation_matrix(90, 2), [[0, -1], [1, 0]], atol=1e-12)
    r = rotation_matrix(30, 3, (0, 2))
    np.testing.assert_allclose(r @ r.T, np.eye(3), atol=1e-12)
    with pytest.raises(ValueError, match="ndim must be 2 or 3"):
        rotation_matrix(10, 4)
    with pytest.raises(ValueError, match="flip_prob must lie in"):
        LongitudinalAugment(flip_prob=2.0)
    with pytest.raises(ValueError, match="max_angle must be a finite number >= 0"):
        LongitudinalAugment(max_angle=-1)
    with pytest.raises(ValueError, match="intensity_range"):
        LongitudinalAugment(intensity_range=(0.0, 1.0))
    with pytest.raises(ValueError, match="image_interpolation"):
        LongitudinalAugment(image_interpolation="cubic")
    aug = LongitudinalAugment()
    sample = _mask_sample((8, 8))
    with pytest.raises(TypeError, match=r"sample\['baseline'\] must be a torch.Tensor"):
        aug({**sample, "baseline": np.zeros((1, 8, 8))}, np.random.default_rng(0))
    with pytest.raises(ValueError, match=r"sample\['progression'\] must have shape"):
        aug({**sample, "progression": torch.zeros(1, 1, 8, 8)}, np.random.default_rng(0))
    with pytest.raises(ValueError, match=r"sample\['images'\] must be"):
        aug({**sample, "images": torch.zeros(8, 8)}, np.random.default_rng(0))


def test_rng_must_be_a_numpy_generator() -> None:
    """An int seed failed deep inside with "'int' object has no attribute 'random'"."""
    sample = _mask_sample((8, 8))
    with pytest.raises(TypeError, match="rng must be a numpy.random.Generator"):
        LongitudinalAugment()(sample, 0)
    with pytest.raises(TypeError, match="rng must be a numpy.random.Generator"):
        TimepointVariation()(sample["images"], 0)


def test_a_rotation_that_empties_the_progression_target_makes_the_sample_a_hard_negative() -> None:
    # progression_visible followed the rotated target but hard_negative did not: a crop centred on a persisting
    # lesion whose progression voxels (in its corners) the rotation turned out kept hard_negative=False
    aug = LongitudinalAugment(flip_prob=0.0, rot90_prob=0.0, rotate_prob=1.0, max_angle=45)
    base = torch.zeros(1, 20, 20)
    base[0, 9:11, 9:11] = 1  # the persisting lesion at the centre
    prog = torch.zeros(1, 1, 20, 20)
    prog[0, 0, 0, 0] = prog[0, 0, 0, 19] = prog[0, 0, 19, 0] = prog[0, 0, 19, 19] = 1  # corners only
    sample = {"images": torch.zeros(2, 1, 20, 20), "baseline": base, "progression": prog, "plane": "axial",
              "progression_visible": torch.tensor(True), "hard_negative": torch.tensor(False),
              "on_persisting": torch.tensor(True)}
    flags = set()
    for seed in range(20):
        out = aug(sample, np.random.default_rng(seed))
        visible = bool(out["progression"].any())
        assert bool(out["progression_visible"]) == visible and bool(out["hard_negative"]) == (not visible)
        flags.add(visible)
    assert flags == {True, False}  # both cases met: the corners survive small angles only
    off_lesion = {**sample, "on_persisting": torch.tensor(False)}
    assert not any(bool(aug(off_lesion, np.random.default_rng(s))["hard_negative"]) for s in range(20))
