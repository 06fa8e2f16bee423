"""NumPy scalars count as the Python numbers they hold, and size, rank and bound arguments are checked.

Each row failed before its fix:

* NumPy ints and floats were refused where a Python int or float is taken (``Mamba``'s ``layer_idx`` and
  ``dt_init_floor``, ``selective_scan_chunked``'s ``chunk_size`` and ``block_elems``, ``write_test_split``'s
  ``num_test``, ``check_native_ready``'s ``num_timepoints``, ``write_nnunet_dataset``'s label values,
  ``check_ndim``'s ``ndim``, ``check_spatial_size``'s ``size`` and ``SpatialSizeRule.of``'s ``downsampling``);
* ``check_spatial_size`` did not check ``size`` (a float or NumPy int: "object is not iterable"; a string was
  iterated; 0 was reported as a bottleneck of a single voxel);
* ``check_ndim`` iterated a string ``ndim``;
* ``check_positive_int``, ``check_int_sequence`` and ``check_timepoints`` took a NaN or out-of-range ``minimum``
  (every value passed ``value < nan``);
* ``DemoCohortConfig`` took a negative ``min_lesion_voxels`` and ``epoch_seed`` a seed above ``MAX_SEED``.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from longiseg.networks.inputs import SpatialSizeRule, check_spatial_size
from longiseg.utils.validation import (
    MAX_SEED,
    check_int_sequence,
    check_ndim,
    check_positive_int,
    check_timepoints,
)


def _mamba_layer_idx(tmp_path: Path) -> None:
    from longiseg.ssm.mamba import Mamba

    layer_idx = Mamba(8, layer_idx=np.int64(1)).layer_idx
    assert layer_idx == 1 and type(layer_idx) is int


def _mamba_dt_init_floor(tmp_path: Path) -> None:
    from longiseg.ssm.mamba import Mamba

    torch.manual_seed(0)
    block = Mamba(8, dt_init_floor=np.float32(1e-4))
    torch.manual_seed(0)
    assert torch.equal(block.dt_proj.bias, Mamba(8, dt_init_floor=1e-4).dt_proj.bias)


def _scan_inputs() -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    u, delta = torch.randn(1, 4, 6, generator=g), torch.rand(1, 4, 6, generator=g)
    a = -torch.rand(4, 3, generator=g) - 0.5
    return [u, delta, a, torch.randn(1, 3, 6, generator=g), torch.randn(1, 3, 6, generator=g)]


def _chunk_size(tmp_path: Path) -> None:
    from longiseg.ssm.chunked import selective_scan_chunked

    xs = _scan_inputs()
    want = selective_scan_chunked(*xs, chunk_size=2)
    assert torch.equal(selective_scan_chunked(*xs, chunk_size=np.int64(2)), want)


def _block_elems(tmp_path: Path) -> None:
    from longiseg.ssm.chunked import selective_scan_chunked

    xs = _scan_inputs()
    want = selective_scan_chunked(*xs, block_elems=36)
    assert torch.equal(selective_scan_chunked(*xs, block_elems=np.int64(36)), want)


def _write_test_split(tmp_path: Path) -> None:
    from longiseg.data.demo_cohort import generate_demo_cohort
    from longiseg.data.split import write_test_split

    cohort = generate_demo_cohort(tmp_path / "cohort", num_patients=4, spacing=4, modalities=("flair",),
                                  progress=False)
    split = write_test_split(cohort, tmp_path / "out", np.int64(2))
    assert len(split["test"]) == 2 and len(split["train"]) == 2


def _check_native_ready(tmp_path: Path) -> None:
    sitk = pytest.importorskip("SimpleITK")
    from longiseg.registration.grid import Grid
    from longiseg.registration.native import check_native_ready

    reg = tmp_path / "registration"  # a baseline on the registered grid and a follow-up shifted by 4 mm
    reg.mkdir()
    grids = {"t0_flair": Grid((12, 12, 12), np.diag([2.0, 2.0, 2.0, 1.0])).to_dict(),
             "t1_flair": Grid((12, 12, 6), np.diag([2.0, 2.0, 4.0, 1.0])).to_dict()}
    record = {"options": {"reference_modality": "flair"}, "native_grids": grids, "followups": []}
    (reg / "registration.json").write_text(json.dumps(record), encoding="utf-8")
    shift = sitk.Euler3DTransform()
    shift.SetTranslation((-4.0, 0.0, 0.0))
    sitk.WriteTransform(shift, str(reg / "t1.tfm"))
    check_native_ready(reg, np.int64(2))


def _nnunet_labels(tmp_path: Path) -> None:
    from longiseg.bridges.nnunet import NnUNetCase, write_nnunet_dataset

    labels = np.zeros((4, 5, 3), np.uint8)
    labels[1, 2, 1] = 1
    case = NnUNetCase("a", [np.ones((4, 5, 3), np.float32)], labels, np.eye(4))
    folder = write_nnunet_dataset(tmp_path, 7, "N", [case], ["flair"],
                                  labels={"background": np.int64(0), "lesion": np.int32(1)})
    assert json.loads((folder / "dataset.json").read_text(encoding="utf-8"))["labels"] == {"background": 0,
                                                                                           "lesion": 1}


def _check_ndim(tmp_path: Path) -> None:
    check_ndim("x", np.zeros((2, 3)), np.int64(2))
    check_ndim("x", np.zeros((2, 3)), (np.int64(3), np.int64(2)))
    with pytest.raises(ValueError, match=r"x must have 3 dims \(D, H, W\), got shape \(2, 3\)"):
        check_ndim("x", np.zeros((2, 3)), np.int64(3), "(D, H, W)")


def _spatial_size(tmp_path: Path) -> None:
    check_spatial_size(_ruled(), np.int64(64), "data.crop_size")
    check_spatial_size(_ruled(), (np.int64(64), 32), "data.crop_size")


def _downsampling(tmp_path: Path) -> None:
    assert SpatialSizeRule.of(2, np.int64(32)).downsampling == (32, 32)


@pytest.mark.parametrize("accepts", [_mamba_layer_idx, _mamba_dt_init_floor, _chunk_size, _block_elems,
                                     _write_test_split, _check_native_ready, _nnunet_labels, _check_ndim,
                                     _spatial_size, _downsampling], ids=lambda f: f.__name__.strip("_"))
def test_numpy_scalars_count_as_python_numbers(accepts: Callable[[Path], None], tmp_path: Path) -> None:
    accepts(tmp_path)


def _ruled(pads: bool = False) -> nn.Module:
    """A model with the size rule of a 2D network that downsamples 32 times and instance-normalises its
    bottleneck."""
    model = nn.Conv2d(1, 1, 1)
    model.spatial_size_rule = SpatialSizeRule.of(2, 32, pads=pads, instance_norm_bottleneck=True)
    return model


@pytest.mark.parametrize(
    ("call", "error", "match"),
    [
        (lambda: check_spatial_size(_ruled(), 64.0, "data.crop_size"), TypeError,
         r"data.crop_size must be an int or a sequence of ints \(one per spatial dim\), got float 64"),
        (lambda: check_spatial_size(_ruled(), np.float64(64), "data.crop_size"), TypeError,
         r"data.crop_size must be an int or a sequence of ints \(one per spatial dim\), got float64"),
        (lambda: check_spatial_size(_ruled(), "64", "data.crop_size"), TypeError,
         r"data.crop_size must be an int or a sequence of ints \(one per spatial dim\), got str '64'"),
        (lambda: check_spatial_size(_ruled(), True, "data.crop_size"), TypeError,
         r"data.crop_size must be an int or a sequence of ints \(one per spatial dim\), got bool"),
        (lambda: check_spatial_size(_ruled(), 0, "data.crop_size"), ValueError, "data.crop_size must be >= 1, got 0"),
        (lambda: check_spatial_size(_ruled(pads=True), -64, "data.crop_size"), ValueError,
         "data.crop_size must be >= 1, got -64"),
        (lambda: check_spatial_size(_ruled(), (64, 32.0), "inference.patch_size"), TypeError,
         r"inference.patch_size\[1\] must be an int, got float"),
        (lambda: check_spatial_size(_ruled(), (64, 0), "inference.patch_size"), ValueError,
         r"inference.patch_size\[1\] must be >= 1, got 0"),
        (lambda: check_spatial_size(nn.Conv2d(1, 1, 1), "64", "data.crop_size"), TypeError,  # no rule: any size
         r"data.crop_size must be an int or a sequence of ints \(one per spatial dim\), got str '64'"),
        (lambda: SpatialSizeRule.of(2, 32.0), TypeError, r"downsampling must be an int or a sequence of ints \(one per spatial dim\), got float"),
        (lambda: SpatialSizeRule.of(2, 0), ValueError, "downsampling must be >= 1, got 0"),
    ],
    ids=["float", "numpy-float", "str", "bool", "zero", "negative-padded", "float-entry", "zero-entry",
         "str-without-rule", "float-downsampling", "zero-downsampling"],
)
def test_spatial_sizes_are_checked(call: Callable[[], object], error: type[Exception], match: str) -> None:
    with pytest.raises(error, match=match):
        call()


@pytest.mark.parametrize(
    ("call", "error", "match"),
    [
        (lambda: check_ndim("x", np.zeros((2, 3)), "3"), TypeError,
         r"ndim must be an int or a sequence of ints \(accepted ranks\), got str"),
        (lambda: check_ndim("x", np.zeros((2, 3)), 2.0), TypeError,
         r"ndim must be an int or a sequence of ints \(accepted ranks\), got float"),
        (lambda: check_ndim("x", np.zeros((2, 3)), (2, "3")), TypeError, r"ndim\[1\] must be an int, got str"),
        (lambda: check_ndim("x", np.zeros((2, 3)), (2, True)), TypeError, r"ndim\[1\] must be an int, got bool"),
        (lambda: check_ndim("x", np.zeros((2, 3)), -2), ValueError, "ndim must be >= 0, got -2"),
    ],
    ids=["str", "float", "str-entry", "bool-entry", "negative"],
)
def test_ndim_is_checked(call: Callable[[], object], error: type[Exception], match: str) -> None:
    with pytest.raises(error, match=match):
        call()


@pytest.mark.parametrize(
    ("call", "error", "match"),
    [
        (lambda: check_positive_int("n", 5, minimum=math.nan), TypeError, "minimum must be an int, got float nan"),
        (lambda: check_positive_int("n", 5, minimum=1.5), TypeError, "minimum must be an int, got float 1.5"),
        (lambda: check_positive_int("n", 5, minimum=True), TypeError, "minimum must be an int, got bool"),
        (lambda: check_positive_int("n", 5, minimum=-1), ValueError, "minimum must be an int >= 0, got -1"),
        (lambda: check_int_sequence("n", [5], minimum=math.nan), TypeError, "minimum must be an int, got float nan"),
        (lambda: check_timepoints("t", 5, minimum=math.nan), TypeError, "minimum must be an int, got float nan"),
        (lambda: check_timepoints("t", 5, minimum=-1), ValueError, "minimum must be an int >= 1, got -1"),
        (lambda: check_timepoints("t", 5, minimum=0), ValueError, "minimum must be an int >= 1, got 0"),
    ],
    ids=["nan", "float", "bool", "negative", "sequence-nan", "timepoints-nan", "timepoints-negative",
         "timepoints-zero"],
)
def test_a_bad_minimum_is_refused(call: Callable[[], object], error: type[Exception], match: str) -> None:
    with pytest.raises(error, match=match):
        call()


def _demo_config(**kwargs: object) -> object:
    from longiseg.data.demo_cohort import DemoCohortConfig

    return DemoCohortConfig(**kwargs)


def _epoch_seed(*args: object) -> int:
    from longiseg.engine.seeding import epoch_seed

    return epoch_seed(*args)


@pytest.mark.parametrize(
    ("call", "error", "match"),
    [
        (lambda: _demo_config(min_lesion_voxels=-5), ValueError, "min_lesion_voxels must be >= 1, got -5"),
        (lambda: _demo_config(min_lesion_voxels=0), ValueError, "min_lesion_voxels must be >= 1, got 0"),
        (lambda: _epoch_seed(2**200, 1), ValueError, rf"seed must be an int in \[0, {MAX_SEED}\], got {2**200}"),
        (lambda: _epoch_seed(MAX_SEED + 1, 1), ValueError, rf"seed must be an int in \[0, {MAX_SEED}\]"),
        (lambda: _epoch_seed(np.uint64(2**63), 1), ValueError, rf"seed must be an int in \[0, {MAX_SEED}\]"),
    ],
    ids=["negative-min-lesion-voxels", "zero-min-lesion-voxels", "huge-seed", "seed-above-max",
         "numpy-seed-above-max"],
)
def test_out_of_range_settings_are_refused(call: Callable[[], object], error: type[Exception], match: str) -> None:
    with pytest.raises(error, match=match):
        call()


def test_one_reader_takes_a_size_given_once_or_once_per_axis() -> None:
    """Crop, window, kernel and downsampling sizes were read by five copies of this rule, each with its own
    messages and gaps (a 1-D array refused by some, accepted by others)."""
    from longiseg.utils.validation import check_int_or_sequence

    assert check_int_or_sequence("s", np.int64(4), 3) == (4, 4, 4)
    assert check_int_or_sequence("s", 4) == (4,)
    for seq in ([4, 5], (4, 5), np.array([4, 5])):
        assert check_int_or_sequence("s", seq, 2) == (4, 5)
    assert check_int_or_sequence("s", [4, 5, 6]) == (4, 5, 6)
    assert check_int_or_sequence("s", 0, 2, minimum=0) == (0, 0)
    with pytest.raises(ValueError, match=r"^s must have 2 entries \(one per spatial dim\), got 3: \(4, 5, 6\)$"):
        check_int_or_sequence("s", [4, 5, 6], 2)
    with pytest.raises(ValueError, match=r"^s\[1\] must be >= 1, got 0$"):
        check_int_or_sequence("s", [4, 0], 2)
    for bad in (4.0, "4", True, None):
        with pytest.raises(TypeError, match=r"^s must be an int or a sequence of ints \(one per spatial dim\), got "):
            check_int_or_sequence("s", bad, 2)


def test_registration_and_lesion_volumes_take_numpy_numbers() -> None:
    """PairOptions(mask_margin_mm=np.float32(5)) and np.int64(5) were refused as 'not a number of mm'."""
    from longiseg.data.lesions import check_min_volume
    from longiseg.registration.pairwise import PairOptions

    assert PairOptions(mask_margin_mm=np.float32(5)).mask_margin_mm == 5.0
    assert PairOptions(mask_margin_mm=np.int64(5)).mask_margin_mm == 5.0
    assert check_min_volume(np.float32(2.5)) == 2.5
    with pytest.raises(ValueError, match=r"^mask_margin_mm must be a finite number >= 0, got -1.0$"):
        PairOptions(mask_margin_mm=-1.0)
    with pytest.raises(TypeError, match=r"^mask_margin_mm must be a number >= 0, got str '5'$"):
        PairOptions(mask_margin_mm="5")
