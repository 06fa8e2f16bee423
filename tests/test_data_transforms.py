"""Augmentations keep images and masks aligned across timepoints, and are reproducible under a seed."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from longiseg.data import LongitudinalAugment
from longiseg.data.transforms import rotation_matrix


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


def test_rotation_matrix_and_errors() -> None:
    np.testing.assert_allclose(rotation_matrix(90, 2), [[0, -1], [1, 0]], atol=1e-12)
    r = rotation_matrix(30, 3, (0, 2))
    np.testing.assert_allclose(r @ r.T, np.eye(3), atol=1e-12)
    with pytest.raises(ValueError, match="ndim must be 2 or 3"):
        rotation_matrix(10, 4)
    with pytest.raises(ValueError, match="flip_prob must lie in"):
        LongitudinalAugment(flip_prob=2.0)
    with pytest.raises(ValueError, match="max_angle must lie in"):
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
