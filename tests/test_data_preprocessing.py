"""Per-case z-score normalisation and cropping to the joint foreground with paste-back."""

from __future__ import annotations

import logging
from collections.abc import Callable

import numpy as np
import pytest
from test_data_fixtures import make_case

from longiseg.data import (
    CropBox,
    crop_to_foreground,
    joint_foreground_bbox,
    preprocess_case,
    zscore_normalize,
)


def test_zscore_over_brain_mask_per_image() -> None:
    case = make_case(num_timepoints=3)
    case.images[1] *= 3.0  # a different scanner gain at follow-up 1
    out = zscore_normalize(case)
    brain = case.brain_mask.astype(bool)
    for t in range(3):
        for c in range(2):
            vals = out.images[t, c][brain].astype(np.float64)
            assert abs(vals.mean()) < 1e-4 and abs(vals.std() - 1.0) < 1e-4
            assert (out.images[t, c][~brain] == 0).all()
    assert out.images.dtype == np.float32
    # the gain difference vanishes: same result as without it
    np.testing.assert_allclose(out.images, zscore_normalize(make_case(num_timepoints=3)).images, atol=1e-4)


def test_zscore_is_computed_in_float64_whatever_the_intensity_offset() -> None:
    """The mean was rounded to float32 before it was subtracted: an image around 1e7 (exactly representable in
    float32) was off a float64 z-score by 3e-4 standard deviations, and its predictions differed from those of the
    same image without the offset."""
    import dataclasses

    case = make_case(num_timepoints=2)
    brain = case.brain_mask.astype(bool)
    rng = np.random.default_rng(0)
    images = np.where(brain, np.round(rng.normal(1e7, 1000.0, case.images.shape)), 0).astype(np.float32)
    out = zscore_normalize(dataclasses.replace(case, images=images))
    for t in range(2):
        for c in range(2):
            vals = images[t, c][brain].astype(np.float64)
            exact = (vals - vals.mean()) / vals.std()
            assert np.abs(out.images[t, c][brain] - exact).max() < 1e-5


def test_zscore_without_brain_mask_uses_non_zero_voxels() -> None:
    case = make_case().with_arrays(brain_mask=None)
    out = zscore_normalize(case, background=-5.0)
    nz = case.images[0, 0] != 0
    assert abs(float(out.images[0, 0][nz].mean())) < 1e-4
    assert (out.images[0, 0][~nz] == -5.0).all()


def test_zscore_error_on_empty_image() -> None:
    case = make_case().with_arrays(brain_mask=None)
    case.images[1, 0] = 0
    with pytest.raises(ValueError, match=r"image \(t=1, flair\) has no voxel"):
        zscore_normalize(case)


def test_zscore_does_not_depend_on_the_intensity_scale(caplog: pytest.LogCaptureFixture) -> None:
    # an absolute floor of 1e-6 on the standard deviation took images of values around 1e-8 for constant (a
    # "constant" warning, and predictions that degraded with the scale until the masks were empty)
    case = make_case(case_id="tiny")
    reference = zscore_normalize(case).images
    for scale in (1e-9, 1e-30, 1e30):
        with caplog.at_level(logging.WARNING, logger="longiseg"):
            scaled = zscore_normalize(case.with_arrays(images=(case.images.astype(np.float64) * scale)
                                                       .astype(np.float32))).images
        np.testing.assert_allclose(scaled, reference, atol=1e-4, err_msg=str(scale))
    assert "is constant" not in caplog.text


def test_zscore_warns_once_about_an_image_constant_inside_the_brain_mask(caplog: pytest.LogCaptureFixture) -> None:
    # with a brain mask an all-zero channel (an empty acquisition) normalised to zeros without a word, while
    # without one it is refused
    case = make_case(case_id="blank-t2")
    case.images[1, 1] = 0
    with caplog.at_level(logging.WARNING, logger="longiseg"):
        out = zscore_normalize(case)
        zscore_normalize(case)  # once per image and process: the dataset normalises a case at every load
    warned = [r.getMessage() for r in caplog.records if "is constant" in r.getMessage()]
    assert warned == ["case blank-t2: image (t=1, t2) is constant (0) inside its brain mask: it carries no "
                      "information after normalisation; check that file"]
    assert (out.images[1, 1] == 0).all()


def test_crop_to_joint_foreground_and_paste_back() -> None:
    case = make_case(shape=(30, 32, 28)).with_arrays(brain_mask=None)
    case.images[1, 1, 1, 2, 3] = 7.0  # an outlier voxel of one timepoint widens the joint box
    cropped, box = crop_to_foreground(case, margin=1)
    nz = np.nonzero(np.any(case.images != 0, axis=(0, 1)))
    assert box.start == tuple(max(int(i.min()) - 1, 0) for i in nz)
    assert box.stop == tuple(min(int(i.max()) + 2, n) for i, n in zip(nz, case.shape))
    assert box.start[0] == 0 and box.start[1] == 1  # set by the outlier of timepoint 1
    assert cropped.shape == box.shape and cropped.images.shape[2:] == box.shape
    # the crop loses no foreground voxel of any timepoint and no lesion
    assert cropped.baseline_mask.sum() == case.baseline_mask.sum()
    assert cropped.progression_masks.sum() == case.progression_masks.sum()
    np.testing.assert_array_equal(box.paste(cropped.images), case.images)
    np.testing.assert_array_equal(box.paste(cropped.baseline_mask), case.baseline_mask)
    # the cropped affine maps cropped voxel (0,0,0) to the original voxel `start`
    np.testing.assert_allclose(cropped.affine[:3, 3], (case.affine @ np.array([*box.start, 1.0]))[:3])
    assert cropped.metadata["crop_box"]["start"] == list(box.start)


def test_crop_box_errors_and_bbox() -> None:
    box = CropBox((1, 2, 3), (4, 6, 8), (10, 10, 10))
    with pytest.raises(ValueError, match="full shape"):
        box.crop(np.zeros((9, 10, 10)))
    with pytest.raises(ValueError, match="cropped shape"):
        box.paste(np.zeros((3, 4, 4)))
    case = make_case()
    case.images[:] = 0
    with pytest.raises(ValueError, match="no foreground"):
        joint_foreground_bbox(case.with_arrays(brain_mask=None))
    with pytest.raises(ValueError, match="margin must be >= 0"):
        joint_foreground_bbox(make_case(), margin=-1)


def test_preprocess_case_crops_then_normalises() -> None:
    case = make_case(shape=(30, 32, 28))
    out = preprocess_case(case, crop=True, margin=0)
    assert out.shape != case.shape and "crop_box" in out.metadata
    brain = out.brain_mask.astype(bool)
    assert abs(float(out.images[0, 0][brain].mean())) < 1e-4


@pytest.mark.parametrize("fn", [preprocess_case, zscore_normalize, joint_foreground_bbox, crop_to_foreground])
def test_preprocessing_refuses_what_is_not_a_case(fn: Callable[..., object]) -> None:
    with pytest.raises(TypeError, match="case must be a LongitudinalCase, got NoneType"):
        fn(None)


def test_preprocess_case_refuses_non_bool_switches() -> None:
    with pytest.raises(TypeError, match="crop must be a bool, got str 'no'"):
        preprocess_case(make_case(), crop="no")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="normalize must be a bool"):
        preprocess_case(make_case(), normalize=None)  # type: ignore[arg-type]


def test_the_crop_keeps_every_lesion_voxel() -> None:
    # the box covered the images' non-zero voxels and the brain mask only: a lesion voxel where the images are
    # zero was cropped away and a progressing case could turn stable without a word
    case = make_case(shape=(30, 32, 28)).with_arrays(brain_mask=None)
    case.images[:] = 0
    case.images[:, :, 10:14, 10:14, 10:14] = 1.0
    case.baseline_mask[:] = 0
    case.progression_masks[:] = 0
    case.baseline_mask[25, 2, 3] = 1
    case.progression_masks[0, 1, 30, 26] = 1
    cropped, box = crop_to_foreground(case)
    assert cropped.baseline_mask.sum() == 1 and cropped.progression_masks.sum() == 1
    assert box.start == (1, 2, 3) and box.stop == (26, 31, 27)
    np.testing.assert_array_equal(box.paste(cropped.progression_masks), case.progression_masks)


@pytest.mark.parametrize("brain", [True, False])
def test_cropping_to_the_foreground_leaves_the_z_scores_as_on_the_full_grid(brain: bool) -> None:
    # what lets a model trained on cropped cases (data.crop_to_foreground) predict on the full grid
    case = make_case()
    for volumes in (case.images[:, :], case.baseline_mask[None, None], case.progression_masks[:, None],
                    case.brain_mask[None, None]):
        volumes[..., :5, :, :] = 0  # a background slab the crop removes
        volumes[..., :, :, -4:] = 0
    if not brain:
        case = case.with_arrays(brain_mask=None)
    full = preprocess_case(case)
    cropped = preprocess_case(case, crop=True)
    box = CropBox(**{k: tuple(v) for k, v in cropped.metadata["crop_box"].items()})
    assert cropped.images.shape[2:] != full.images.shape[2:]  # it did crop
    np.testing.assert_array_equal(box.paste(cropped.images), full.images)
