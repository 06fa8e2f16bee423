"""Argument checks of the data API found by a fuzzing audit: each bad argument raises a ``TypeError`` or
``ValueError`` naming it, instead of an ``AttributeError``/``RuntimeError`` from deep inside or a silent wrong
result (a crop of the wrong shape, a truncated ``case_index``, a complex image losing its imaginary part, a grid
check switched off by ``affine_atol=inf``)."""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from test_data_fixtures import make_case

from longiseg.data import (
    CaseCache,
    CropBox,
    CrossViewSampler,
    LongitudinalAugment,
    SliceDataset,
    TimepointVariation,
    VolumePatchSampler,
    build_sampling_index,
    load_case,
    save_case,
)
from longiseg.data.loading import check_case_headers, validate_cases

FULL = (10, 12, 14)
BOX = CropBox((1, 2, 3), (5, 8, 10), FULL)  # cropped shape (4, 6, 7)


# ---------------------------------------------------------------------------------------------- CropBox fields
@pytest.mark.parametrize(("kwargs", "exc", "match"), [
    (dict(start=None), TypeError, "start must be a sequence of ints"),
    (dict(stop=None), TypeError, "stop must be a sequence of ints"),
    (dict(full_shape=None), TypeError, "full_shape must be a sequence of ints"),
    (dict(start=-1), TypeError, "start must be a sequence of ints"),
    (dict(start=(-10, -10, 0)), ValueError, r"start\[0\] must be >= 0"),  # cropped to a wrong shape silently
    (dict(start=(1, 2)), ValueError, "start must have 3 entries"),
    (dict(stop=(5, 8, 10, 1)), ValueError, "stop must have 3 entries"),
    (dict(full_shape=(10, 12)), ValueError, "full_shape must have 3 entries"),
    (dict(start=(1.0, 2, 3)), TypeError, r"start\[0\] must be an int"),
    (dict(stop=(math.nan, 8, 10)), TypeError, r"stop\[0\] must be an int"),
    (dict(full_shape=(10, 12, True)), TypeError, r"full_shape\[2\] must be an int"),
    (dict(full_shape=(0, 12, 14), stop=(0, 8, 10), start=(0, 0, 0)), ValueError, r"stop\[0\] must be >= 1"),
    (dict(start=(5, 2, 3)), ValueError, "stop must be above start"),  # an empty box
    (dict(stop=(200, 8, 10)), ValueError, "stop must be at most full_shape"),
    (dict(start="abc"), TypeError, "start must be a sequence of ints"),
])
def test_crop_box_refuses_bad_fields(kwargs: dict, exc: type[Exception], match: str) -> None:
    fields = dict(start=(1, 2, 3), stop=(5, 8, 10), full_shape=FULL) | kwargs
    with pytest.raises(exc, match=match):
        CropBox(**fields)


def test_crop_box_keeps_valid_boxes_and_stores_int_tuples() -> None:
    box = CropBox([1, 2, 3], np.array([5, 8, 10]), (np.int64(10), 12, 14))
    assert box == BOX and box.start == (1, 2, 3) and type(box.full_shape[0]) is int
    assert CropBox((0, 0, 0), FULL, FULL).shape == FULL  # the whole volume is a box
    arr = np.arange(2 * np.prod(FULL), dtype=np.float32).reshape(2, *FULL)
    np.testing.assert_array_equal(BOX.crop(arr), arr[:, 1:5, 2:8, 3:10])
    np.testing.assert_array_equal(BOX.paste(BOX.crop(arr))[:, 1:5, 2:8, 3:10], arr[:, 1:5, 2:8, 3:10])
    aff = np.diag([2.0, 2.0, 2.0, 1.0])
    np.testing.assert_array_equal(BOX.crop_affine(aff)[:3, 3], [2.0, 4.0, 6.0])
    np.testing.assert_array_equal(BOX.crop_affine(torch.as_tensor(aff)), BOX.crop_affine(aff))


# ------------------------------------------------------------------------------------- CropBox methods
@pytest.mark.parametrize(("call", "exc", "match"), [
    (lambda: BOX.crop(None), TypeError, "array must be a numpy array"),
    (lambda: BOX.crop("abc"), TypeError, "array must be a numpy array"),
    (lambda: BOX.crop(torch.zeros(FULL)), TypeError, "array must be a numpy array"),
    (lambda: BOX.crop(np.zeros((12, 14))), ValueError, "array must end in the full shape"),
    (lambda: BOX.paste(None), TypeError, "array must be a numpy array"),
    (lambda: BOX.paste(torch.zeros(4, 6, 7, dtype=torch.uint8)), TypeError, "array must be a numpy array"),
    (lambda: BOX.paste([[[0.0]]]), TypeError, "array must be a numpy array"),
    (lambda: BOX.crop_affine(None), TypeError, "affine must be an array"),
    (lambda: BOX.crop_affine("abc"), TypeError, "affine must be an array"),
    (lambda: BOX.crop_affine(np.eye(3)), ValueError, "affine must be an array"),
    (lambda: BOX.crop_affine(np.full((4, 4), np.nan)), ValueError, "affine contains NaN"),  # NaN came back
])
def test_crop_box_methods_refuse_bad_arguments(call: Callable[[], object], exc: type[Exception], match: str) -> None:
    with pytest.raises(exc, match=match):
        call()


# ------------------------------------------------------------------------------------------------ samplers
@pytest.fixture(scope="module")
def labelled() -> tuple:
    case = make_case(num_timepoints=3, shape=(20, 24, 16))
    return case, build_sampling_index(case)


SAMPLERS = [CrossViewSampler(crop_size=8), VolumePatchSampler(patch_size=6)]


@pytest.mark.parametrize("sampler", SAMPLERS, ids=lambda s: type(s).__name__)
@pytest.mark.parametrize(("what", "value", "exc", "match"), [
    ("case", None, TypeError, "case must be a LongitudinalCase"),
    ("case", "p0", TypeError, "case must be a LongitudinalCase"),
    ("case", 3, TypeError, "case must be a LongitudinalCase"),
    ("case", "unlabelled", ValueError, "has no masks"),
    ("case", "other grid", ValueError, "index must be the SamplingIndex"),
    ("case_index", math.nan, TypeError, "case_index must be an int"),  # RuntimeError from torch
    ("case_index", math.inf, TypeError, "case_index must be an int"),
    ("case_index", None, TypeError, "case_index must be an int"),
    ("case_index", "1", TypeError, "case_index must be an int"),
    ("case_index", 1.5, TypeError, "case_index must be an int"),  # silently became 1
    ("case_index", True, TypeError, "case_index must be an int"),
    ("case_index", -1, ValueError, "case_index must be >= 0"),  # accepted
])
def test_samplers_refuse_bad_case_and_case_index(labelled: tuple, sampler: object, what: str, value: object,
                                                 exc: type[Exception], match: str) -> None:
    case, index = labelled
    kwargs: dict = dict(case=case, index=index, rng=np.random.default_rng(0), case_index=0)
    if value == "unlabelled":
        value = case.with_arrays(baseline_mask=None, progression_masks=None)
    elif value == "other grid":
        value = make_case(num_timepoints=3, shape=(20, 24, 18))
    kwargs[what] = value
    with pytest.raises(exc, match=match):
        sampler.sample(**kwargs)  # type: ignore[attr-defined]


@pytest.mark.parametrize("sampler", SAMPLERS, ids=lambda s: type(s).__name__)
def test_samplers_keep_valid_case_indices(labelled: tuple, sampler: object) -> None:
    case, index = labelled
    a = sampler.sample(case, index, np.random.default_rng(3), case_index=np.int64(4))  # type: ignore[attr-defined]
    b = sampler.sample(case, index, np.random.default_rng(3), case_index=4)  # type: ignore[attr-defined]
    assert int(a["case_index"]) == 4 and a["case_index"].dtype == torch.int64
    for key in ("images", "baseline", "progression", "center"):
        assert torch.equal(a[key], b[key])


# ----------------------------------------------------------------------------------------------- transforms
def _sample(t: int = 3, spatial: tuple[int, ...] = (8, 8)) -> dict:
    return {"images": torch.rand(t, 2, *spatial), "baseline": torch.zeros(1, *spatial),
            "progression": torch.zeros(t - 1, 1, *spatial)}


@pytest.mark.parametrize("sample", [None, 3, "images", [("images", 1)]])
def test_augment_refuses_a_sample_that_is_not_a_dict(sample: object) -> None:
    with pytest.raises(TypeError, match="sample must be a dict"):  # "argument of type 'NoneType' is not iterable"
        LongitudinalAugment()(sample, np.random.default_rng(0))  # type: ignore[arg-type]


@pytest.mark.parametrize(("images", "exc", "match"), [
    (_sample()["images"].to(torch.complex64) * (1 + 1j), TypeError, "images must be a floating-point tensor"),
    (_sample()["images"].long(), TypeError, "images must be a floating-point tensor"),
    (_sample()["images"] > 0.5, TypeError, "images must be a floating-point tensor"),
    (_sample()["images"][None], ValueError, r"images must be a \(T, C, h, w\) or \(T, C, d, h, w\) tensor with T >= 2"),
    (_sample()["images"][0], ValueError, r"images must be a \(T, C, h, w\)"),
    (torch.rand(2, 2, 2, 2, 4, 4), ValueError, r"images must be a \(T, C, h, w\)"),
    (np.zeros((3, 2, 8, 8), np.float32), TypeError, "images must be a torch.Tensor"),
    (None, TypeError, "images must be a torch.Tensor"),
])
def test_timepoint_variation_refuses_bad_images(images: object, exc: type[Exception], match: str) -> None:
    with pytest.raises(exc, match=match):
        TimepointVariation()(images, np.random.default_rng(0))  # type: ignore[arg-type]


def test_timepoint_variation_keeps_float_images() -> None:
    images = _sample(spatial=(6, 6, 6))["images"]
    out = TimepointVariation()(images.double(), np.random.default_rng(0))
    assert out.dtype == torch.float32 and out.shape == images.shape
    assert torch.equal(out, TimepointVariation()(images.double(), np.random.default_rng(0)))


# ------------------------------------------------------------------------------------------ loading / saving
@pytest.fixture(scope="module")
def saved(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_case(make_case(), tmp_path_factory.mktemp("cohort"))


ATOLS = [
    (None, TypeError, "affine_atol must be a number"),  # numpy "ufunc 'isfinite' not supported"
    ("abc", TypeError, "affine_atol must be a number"),
    (True, TypeError, "affine_atol must be a number"),
    (math.inf, ValueError, "affine_atol must be a finite number >= 0"),  # switched the grid check off
    (math.nan, ValueError, "affine_atol must be a finite number >= 0"),
    (-1.0, ValueError, "affine_atol must be a finite number >= 0"),
]


@pytest.mark.parametrize("reader", [load_case, check_case_headers, lambda s, **kw: validate_cases(
    s.parent, progress=False, require_masks=None, **kw)], ids=["load_case", "check_case_headers", "validate_cases"])
@pytest.mark.parametrize(("atol", "exc", "match"), ATOLS)
def test_affine_atol_must_be_a_finite_number_at_least_zero(saved: Path, reader: Callable, atol: object,
                                                           exc: type[Exception], match: str) -> None:
    with pytest.raises(exc, match=match):
        reader(saved, affine_atol=atol)


def test_valid_affine_atol_is_kept(saved: Path) -> None:
    assert load_case(saved, affine_atol=0).shape == load_case(saved).shape == (20, 24, 16)
    assert load_case(saved, affine_atol=np.float32(1e-3)).case_id == "case-0"


@pytest.mark.parametrize(("dtype", "exc", "match"), [
    ("abc", TypeError, "image_dtype must be a numpy dtype"),  # numpy "data type 'abc' not understood"
    (-1, TypeError, "image_dtype must be a numpy dtype"),
    (0, TypeError, "image_dtype must be a numpy dtype"),
    (None, TypeError, "image_dtype must be a numpy dtype"),
    (True, TypeError, "image_dtype must be a numpy dtype"),
    (np.float16, ValueError, "image_dtype must be one of float32, float64"),  # nibabel HeaderDataError
    (np.int64, ValueError, "image_dtype must be one of"),  # nibabel refuses int64 data without a header
    (np.complex64, ValueError, "image_dtype must be one of"),
    (bool, ValueError, "image_dtype must be one of"),
    ("U5", ValueError, "image_dtype must be one of"),
])
def test_save_case_refuses_bad_image_dtype(tmp_path: Path, dtype: object, exc: type[Exception], match: str) -> None:
    with pytest.raises(exc, match=match):
        save_case(make_case(), tmp_path, image_dtype=dtype)  # type: ignore[arg-type]
    assert not (tmp_path / "case-0").exists()  # checked before anything is written


@pytest.mark.parametrize("dtype", [np.int16, "float64", np.dtype(">f4"), np.uint8])
def test_save_case_keeps_valid_image_dtypes(tmp_path: Path, dtype: object) -> None:
    case = make_case()
    want = case.images
    if np.dtype(dtype).kind in "iu":  # integer types round and clip
        info = np.iinfo(np.dtype(dtype))
        want = np.clip(np.round(want), info.min, info.max)
    loaded = load_case(save_case(case, tmp_path, image_dtype=dtype))  # type: ignore[arg-type]
    np.testing.assert_array_equal(loaded.images, want.astype(np.dtype(dtype)).astype(np.float32))


# ------------------------------------------------------------------------------------------------ CaseCache
@pytest.mark.parametrize(("maxsize", "exc", "match"), [
    (0, ValueError, "maxsize must be >= 1"),
    (None, TypeError, "maxsize must be an int"),
    (1.5, TypeError, "maxsize must be an int"),
])
def test_case_cache_names_maxsize(maxsize: object, exc: type[Exception], match: str) -> None:
    with pytest.raises(exc, match=match):  # said "cache_size must be ..."
        CaseCache(maxsize)  # type: ignore[arg-type]


def test_datasets_still_name_cache_size() -> None:
    with pytest.raises(ValueError, match="cache_size must be >= 1"):
        SliceDataset([make_case()], crop_size=8, cache_size=0)


def test_sampling_arguments_found_by_the_pipeline_probe() -> None:
    """A repeated plane was drawn more often (the config and the inferer refuse it); a float window start failed in
    NumPy's slicing; a NumPy positive_fraction was refused as "got float32"; one case passed as ``cases`` failed as
    "object is not iterable"; a case given twice weighed double."""
    from longiseg.data import BalancedBatchSampler
    from longiseg.data.crops import crop_window

    with pytest.raises(ValueError, match=r"planes must be a non-empty subset of .*, each plane once, got "
                                         r"\['axial', 'axial', 'coronal'\]"):
        CrossViewSampler(planes=("axial", "axial", "coronal"))
    with pytest.raises(TypeError, match=r"start must be a sequence of ints \(one per spatial axis\), got \(0.5, 0\)"):
        crop_window(np.zeros((4, 4)), (0.5, 0), (2, 2))
    assert crop_window(np.arange(16).reshape(4, 4), np.array([1, -1]), (2, 2)).tolist() == [[0, 4], [0, 8]]
    sampler = BalancedBatchSampler([True, False] * 4, 4, positive_fraction=np.float32(0.5))
    assert sampler.positive_fraction == 0.5 and sampler.num_positive == 2
    case = make_case((8, 8, 8))
    with pytest.raises(TypeError, match=r"cases must be a list of cases or a cohort folder, got one LongitudinalCase: "
                                        r"pass \[case\]"):
        SliceDataset(case, crop_size=8)
    with pytest.raises(ValueError, match=r"case\(s\) \['case-0'\] are given more than once"):
        SliceDataset([case, case], crop_size=8)
    assert len(SliceDataset([case, make_case((8, 8, 8), seed=1)], crop_size=8).cases) == 2  # one id, two cases


def test_images_beyond_the_float32_range_are_named_as_such() -> None:
    """A float64 image with 1e39 passed the finiteness check, became inf as float32, and failed later as "contains
    NaN or infinite values", which it did not."""
    from longiseg.data import LongitudinalCase

    case = make_case((4, 4, 4))
    images = case.images.astype(np.float64)
    images[0, 0, 0, 0, 0] = 1e39
    with pytest.raises(ValueError, match=r"images hold values beyond the float32 range \(magnitude above 3.403e\+38, "
                                         r"largest 1e\+39\)"):
        LongitudinalCase(images=images, baseline_mask=case.baseline_mask, progression_masks=case.progression_masks,
                         affine=case.affine, spacing=case.spacing, modalities=case.modalities, case_id="big")
