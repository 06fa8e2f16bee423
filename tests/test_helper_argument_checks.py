"""Bad arguments to the helper-level public functions (registration grids and simulation, masks, logging,
plotting, atomic file writing) raise a TypeError/ValueError that names the argument.

Each row was found by perturbing one argument of a valid call; before the fix it was accepted silently, cut
(2.5 to 2, ``True`` to 1), or failed deep inside NumPy/matplotlib/SimpleITK with an AttributeError,
IndexError or a message that did not name the argument. Every row raises before any file is written.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from longiseg.registration.grid import Grid, from_sitk, isotropic_grid, to_sitk
from longiseg.registration.simulate import rigid_motion, simulate_acquisition
from longiseg.utils import io, nifti
from longiseg.utils.logging import apply_logging_setup, get_logger, log_once, show_log_records
from longiseg.utils.masks import as_mask, as_mask_pair, as_spacing, foreground_slices
from longiseg.utils.validation import check_array, check_finite_float, check_path

NAN, INF = math.nan, math.inf
EYE = np.eye(4)
VOL = np.zeros((4, 4, 4), np.float32)
M2 = np.zeros((3, 3), bool)
GRID = Grid((4, 4, 4), EYE)
LOG = get_logger("longiseg.test_helper_argument_checks")

Call = Callable[[Path], Any]


def _sim(**kw: Any) -> Any:
    args: dict[str, Any] = dict(array=VOL, affine=EYE, motion=EYE, spacing=(2.0, 2.0, 2.0))
    return simulate_acquisition(**{**args, **kw})


def _rigid(**kw: Any) -> Any:
    args: dict[str, Any] = dict(axis=(0, 0, 1), angle_deg=10.0, shift_mm=(1.0, 2.0, 3.0))
    return rigid_motion(**{**args, **kw})


# (call taking tmp_path, exception, regex the message must match: it names the argument)
REGISTRATION: list[tuple[Call, type[Exception], str]] = [
    (lambda t: Grid((6.5, 6, 6), EYE), TypeError, r"shape\[0\] must be an int"),
    (lambda t: Grid((4, 4, 4), None), TypeError, "affine must be an array"),
    (lambda t: Grid((4, 4, 4), "false"), TypeError, "affine must be an array"),
    (lambda t: Grid((4, 4, 4), np.eye(4, dtype=bool)), TypeError, "affine must be an array"),
    (lambda t: Grid((4, 4, 4), np.eye(3)), ValueError, r"affine must be an array \(4, 4\)"),
    (lambda t: Grid((4, 4, 4), [[1, 0], [0, 1, 0]]), ValueError, "affine must be an array"),
    (lambda t: Grid((4, 4, 4), np.full((4, 4), NAN)), ValueError, "affine contains NaN"),
    (lambda t: Grid((4, 4, 4), np.where(EYE > 0, INF, 0.0)), ValueError, "affine contains NaN or infinite"),
    (lambda t: Grid((4, 4, 4), np.zeros((4, 4))), ValueError, "affine must be a non-singular"),
    (lambda t: Grid.from_dict(None), TypeError, "d must be a dict"),
    (lambda t: Grid.from_dict({"shape": [4, 4, 4]}), ValueError, r"d must hold .*missing \['affine'\]"),
    (lambda t: Grid.from_dict({"shape": [4, 4, 4], "affine": None}), TypeError, "affine must be an array"),
    (lambda t: isotropic_grid(GRID, "1"), TypeError, "spacing must be a number"),
    (lambda t: isotropic_grid(GRID, NAN), ValueError, "spacing must be a finite number"),
    (lambda t: _rigid(axis="false"), TypeError, "axis must be an array"),
    (lambda t: _rigid(axis=(0, 0)), ValueError, r"axis must be an array \(3,\)"),
    (lambda t: _rigid(axis=(0, 0, 0)), ValueError, "axis must be a non-zero 3-vector"),
    (lambda t: _rigid(angle_deg=None), TypeError, "angle_deg must be a finite number"),
    (lambda t: _rigid(angle_deg="3"), TypeError, "angle_deg must be a finite number"),
    (lambda t: _rigid(angle_deg=True), TypeError, "angle_deg must be a finite number"),
    (lambda t: _rigid(angle_deg=NAN), ValueError, "angle_deg must be a finite number"),
    (lambda t: _rigid(angle_deg=INF), ValueError, "angle_deg must be a finite number"),
    (lambda t: _rigid(shift_mm=None), TypeError, "shift_mm must be an array"),
    (lambda t: _rigid(shift_mm="3"), TypeError, "shift_mm must be an array"),
    (lambda t: _rigid(shift_mm=(1.0, 2.0)), ValueError, r"shift_mm must be an array \(3,\)"),
    (lambda t: _rigid(shift_mm=(NAN, 0.0, 0.0)), ValueError, "shift_mm contains NaN"),
    (lambda t: _rigid(shift_mm=(True, False, True)), TypeError, "shift_mm must be an array"),
    (lambda t: _rigid(centre_mm=2.5), ValueError, r"centre_mm must be an array \(3,\)"),
    (lambda t: _rigid(centre_mm=None), TypeError, "centre_mm must be an array"),
    (lambda t: _sim(array=None), TypeError, "array must be an array"),
    (lambda t: _sim(array=np.zeros((4, 4))), ValueError, r"array must be an array \(D, H, W\)"),
    (lambda t: _sim(array=np.full((2, 2, 2), NAN)), ValueError, "array contains NaN"),
    (lambda t: _sim(affine=None), TypeError, "affine must be an array"),
    (lambda t: _sim(affine=np.eye(3)), ValueError, r"affine must be an array \(4, 4\)"),
    (lambda t: _sim(affine=np.zeros((4, 4))), ValueError, "affine must be a non-singular"),
    (lambda t: _sim(motion=None), TypeError, "motion must be an array"),
    (lambda t: _sim(motion=np.eye(3)), ValueError, r"motion must be an array \(4, 4\)"),
    (lambda t: _sim(spacing=None), TypeError, "spacing must be a number or a sequence"),
    (lambda t: _sim(spacing="1"), TypeError, "spacing must be a number or a sequence"),
    (lambda t: _sim(spacing=("1", "1", "1")), TypeError, "spacing must hold numbers"),
    (lambda t: _sim(spacing=True), TypeError, "spacing must hold millimetre values"),
    (lambda t: _sim(spacing=NAN), ValueError, "spacing must hold positive finite"),
    (lambda t: _sim(spacing=INF), ValueError, "spacing must hold positive finite"),
    (lambda t: _sim(spacing=(1.0, -1.0, 1.0)), ValueError, "spacing must hold positive finite"),
    (lambda t: _sim(spacing=(1.0, 1.0)), ValueError, r"spacing must have 3 values"),
    (lambda t: _sim(axes=None), TypeError, "axes must be a sequence of ints"),
    (lambda t: _sim(axes=(0, 1, 2.0)), TypeError, r"axes\[2\] must be an int"),
    (lambda t: _sim(axes=(0, 1)), ValueError, "axes must have 3 entries"),
    (lambda t: _sim(axes=(0, 1, 1)), ValueError, r"axes must be a permutation of \(0, 1, 2\)"),
    (lambda t: _sim(flips=None), TypeError, "flips must be a sequence of ints"),
    (lambda t: _sim(flips=(1.0, 1, 1)), TypeError, r"flips\[0\] must be an int"),
    (lambda t: _sim(flips=(1, 1, 0)), ValueError, "flips"),
    (lambda t: _sim(flips=(1, 1, -2)), ValueError, r"flips\[2\] must be >= -1"),
    (lambda t: _sim(order=2.5), TypeError, "order must be an int"),
    (lambda t: _sim(order=True), TypeError, "order must be an int"),
    (lambda t: _sim(order=None), TypeError, "order must be an int"),
    (lambda t: _sim(order=-1), ValueError, "order must be >= 0"),
    (lambda t: _sim(order=6), ValueError, "order must be a spline order from 0 to 5"),
]

MASKS: list[tuple[Call, type[Exception], str]] = [
    (lambda t: as_mask("x", M2, ndim=None), ValueError, "ndim must be 2 or 3"),
    (lambda t: as_mask("x", M2, ndim="3"), ValueError, "ndim must be 2 or 3"),
    (lambda t: as_mask("x", M2, ndim=True), ValueError, "ndim must be 2 or 3"),
    (lambda t: as_mask("x", M2, ndim=2.5), ValueError, "ndim must be 2 or 3"),
    (lambda t: as_mask("x", M2, ndim=4), ValueError, "ndim must be 2 or 3"),
    (lambda t: as_mask("x", M2, ndim=()), ValueError, "ndim must be 2, 3 or a sequence of them"),
    (lambda t: as_mask_pair(M2, M2, names=None), TypeError, "names must be a sequence"),
    (lambda t: as_mask_pair(M2, M2, names="ab"), TypeError, "names must be a sequence"),
    (lambda t: as_mask_pair(M2, M2, names=("a",)), ValueError, "names must be two"),
    (lambda t: as_mask_pair(M2, M2, names=(1, 2)), TypeError, r"names\[0\] must be a str"),
    (lambda t: as_spacing((1.0, 1.0), None), TypeError, "ndim must be an int"),
    (lambda t: as_spacing((1.0, 1.0), 2.5), TypeError, "ndim must be an int"),
    (lambda t: as_spacing((1.0, 1.0), True), TypeError, "ndim must be an int"),
    (lambda t: as_spacing((1.0, 1.0), "2"), TypeError, "ndim must be an int"),
    (lambda t: as_spacing(None, 0), ValueError, "ndim must be >= 1"),
    (lambda t: as_spacing((1.0, None, 1.0), 3), TypeError, "spacing must hold numbers, got None"),  # not NaN
    (lambda t: as_mask("x", torch.zeros(2, 2).to_sparse()), TypeError, "x must be a dense tensor.*sparse"),
    (lambda t: as_mask("x", torch.zeros(2, 2, device="meta")), TypeError, "x must be a dense tensor.*meta"),
    (lambda t: foreground_slices(), ValueError, "masks must hold at least one mask"),
    (lambda t: foreground_slices([[0, 1]]), TypeError, r"masks\[0\] must be a numpy.ndarray"),
    (lambda t: foreground_slices("3"), TypeError, r"masks\[0\] must be a numpy.ndarray"),
    (lambda t: foreground_slices(M2, np.zeros((2, 2), bool)), ValueError,
     r"masks\[0\] and masks\[1\] must have the same shape"),
    (lambda t: foreground_slices(M2, margin=1.5), TypeError, "margin must be an int"),
]

LOGGING: list[tuple[Call, type[Exception], str]] = [
    (lambda t: get_logger(None), TypeError, "name must be a str"),
    (lambda t: get_logger(3), TypeError, "name must be a str"),
    (lambda t: log_once(None, "k", "m"), TypeError, "logger must be a logging.Logger"),
    (lambda t: log_once("longiseg", "k", "m"), TypeError, "logger must be a logging.Logger"),
    (lambda t: log_once(LOG, None, "m"), TypeError, "key must be a str"),
    (lambda t: log_once(LOG, "bad-level", "m", level="3"), TypeError, "level must be an int"),
    (lambda t: log_once(LOG, "bad-level", "m", level=2.5), TypeError, "level must be an int"),
    (lambda t: log_once(LOG, "bad-level", "m", level=True), TypeError, "level must be an int"),
    (lambda t: log_once(LOG, "bad-level", "m", level=-1), ValueError, "level must be >= 0"),
    (lambda t: show_log_records(None), TypeError, "level must be an int"),
    (lambda t: show_log_records(2.5), TypeError, "level must be an int"),
    (lambda t: apply_logging_setup("false"), TypeError, "level must be an int"),
]


def _json(t: Path, **kw: Any) -> Any:
    return io.atomic_write_json(t / "a.json", {"a": 1}, **kw)


IO: list[tuple[Call, type[Exception], str]] = [
    (lambda t: check_path("path", ""), ValueError, "path must be a non-empty path"),
    (lambda t: io.check_output_folder(None, "--output"), TypeError, "--output must be a path"),
    (lambda t: io.check_replaceable(3), TypeError, "path must be a path"),
    (lambda t: io.check_separate_folders(None, "--output", {}), TypeError, "output must be a path"),
    (lambda t: io.check_separate_folders(t, "--output", None), TypeError, "inputs must be a dict"),
    (lambda t: io.check_separate_folders(t, "--output", {"--input": 3}), TypeError,
     "--input must be a path"),
    (lambda t: io.apply_umask(None), TypeError, "path must be a path"),
    (lambda t: io.temporary_prefix(2.5), TypeError, "path must be a path"),
    (lambda t: io.folder_is_empty(None), TypeError, "path must be a path"),
    (lambda t: io.remove_stale_temporaries(()), TypeError, "path must be a path"),
    (lambda t: io.removed_if_created(None).__enter__(), TypeError, "folder must be a path"),
    (lambda t: io.atomic_path(None).__enter__(), TypeError, "path must be a path"),
    (lambda t: io.atomic_path("").__enter__(), ValueError, "path must be a non-empty path"),
    (lambda t: io.atomic_path(t / "a.txt", suffix=2.5).__enter__(), TypeError, "suffix must be a str"),
    (lambda t: io.atomic_directory(None).__enter__(), TypeError, "path must be a path"),
    (lambda t: io.atomic_write(None, lambda fh: None), TypeError, "path must be a path"),
    (lambda t: io.atomic_write(t / "a.txt", None), TypeError, "writer must be a callable"),
    (lambda t: io.atomic_write(t / "a.txt", "x"), TypeError, "writer must be a callable"),
    (lambda t: io.atomic_write(t / "a.txt", lambda fh: None, mode=None), TypeError, "mode must be a str"),
    (lambda t: io.atomic_write(t / "a.txt", lambda fh: None, mode="r"), ValueError, "mode must be 'w'"),
    (lambda t: _json(t, indent=2.5), TypeError, "indent must be an int"),
    (lambda t: _json(t, indent="  "), TypeError, "indent must be an int"),
    (lambda t: _json(t, indent=True), TypeError, "indent must be an int"),
    (lambda t: _json(t, indent=-1), ValueError, "indent must be >= 0"),
    (lambda t: io.atomic_torch_save({"a": 1}, None), TypeError, "path must be a path"),
    (lambda t: io.process_start_time("3"), TypeError, "pid must be an int"),
    (lambda t: io.process_start_time(2.5), TypeError, "pid must be an int"),
    (lambda t: io.process_start_time(True), TypeError, "pid must be an int"),
    (lambda t: io.process_start_time(INF), TypeError, "pid must be an int"),
    (lambda t: io.process_start_time(-1), ValueError, "pid must be >= 0"),
    (lambda t: io.writer_ended(t, "3", None), TypeError, "pid must be an int"),
    (lambda t: io.writer_ended(t, True, None), TypeError, "pid must be an int"),
    (lambda t: io.writer_ended(None, 1, None), TypeError, "mark must be a path"),
    (lambda t: io.writer_ended(t, 1, 2.5), TypeError, "host must be a str"),
    (lambda t: io.writer_ended(t, 1, None, 2.5), TypeError, "started must be an int"),
    (lambda t: nifti.load_nifti(None), TypeError, "path must be a path"),
    (lambda t: nifti.load_nifti(t / "a.nii.gz", dtype="false"), TypeError, "dtype must be a NumPy dtype"),
    (lambda t: nifti.load_nifti(t / "a.nii.gz", dtype=2.5), TypeError, "dtype must be a NumPy dtype"),
    (lambda t: nifti.load_nifti(t / "a.nii.gz", dtype="U5"), TypeError, "dtype must be a NumPy number dtype"),
]

VALIDATION: list[tuple[Call, type[Exception], str]] = [
    (lambda t: check_finite_float("v", None), TypeError, "v must be a finite number"),
    (lambda t: check_finite_float("v", np.bool_(True)), TypeError, "v must be a finite number"),
    (lambda t: check_finite_float("v", -INF), ValueError, "v must be a finite number"),
    (lambda t: check_array("v", [1, "2"], "(2,)"), TypeError, "v must be an array"),
    (lambda t: check_array("v", [1.0, 0.0], "(2,)", positive=True), ValueError, "v must hold positive"),
    (lambda t: check_array("v", np.zeros((2, 3)), "(2, 2)"), ValueError, r"v must be an array \(2, 2\)"),
]


def _ids(rows: list[tuple[Call, type[Exception], str]]) -> list[str]:
    return [f"{i}-{match[:40]}" for i, (_, _, match) in enumerate(rows)]


@pytest.mark.parametrize(("call", "err", "match"), REGISTRATION + MASKS + LOGGING + IO + VALIDATION,
                         ids=_ids(REGISTRATION + MASKS + LOGGING + IO + VALIDATION))
def test_bad_argument_is_named(call: Call, err: type[Exception], match: str, tmp_path: Path) -> None:
    before = sorted(tmp_path.iterdir())
    with pytest.raises(err, match=match):
        call(tmp_path)
    assert sorted(tmp_path.iterdir()) == before  # refused before anything was written


SITK: list[tuple[Callable[[Any], Any], type[Exception], str]] = [
    (lambda sitk: to_sitk(VOL, None), TypeError, "affine must be an array"),
    (lambda sitk: to_sitk(VOL, "false"), TypeError, "affine must be an array"),
    (lambda sitk: to_sitk(VOL, np.eye(3)), ValueError, r"affine must be an array \(4, 4\)"),
    (lambda sitk: to_sitk(VOL, np.full((4, 4), NAN)), ValueError, "affine contains NaN"),
    (lambda sitk: to_sitk(VOL, np.zeros((4, 4))), ValueError, "affine must be a non-singular"),
    (lambda sitk: from_sitk(None), TypeError, "image must be a SimpleITK Image"),
    (lambda sitk: from_sitk(VOL), TypeError, "image must be a SimpleITK Image"),
    (lambda sitk: from_sitk(sitk.Image([4, 4], sitk.sitkUInt8)), ValueError, "image must be a 3D SimpleITK"),
]


@pytest.mark.parametrize(("call", "err", "match"), SITK, ids=_ids(SITK))
def test_bad_simpleitk_argument_is_named(call: Callable[[Any], Any], err: type[Exception], match: str
                                         ) -> None:
    sitk = pytest.importorskip("SimpleITK")
    with pytest.raises(err, match=match):
        call(sitk)


FIGURES: list[tuple[Call, type[Exception], str]] = [
    (lambda t: _subplots(nrows=2.5), TypeError, "nrows must be an int"),
    (lambda t: _subplots(nrows=0), ValueError, "nrows must be >= 1"),
    (lambda t: _subplots(nrows=None), TypeError, "nrows must be an int"),
    (lambda t: _subplots(ncols="2"), TypeError, "ncols must be an int"),
    (lambda t: _subplots(ncols=True), TypeError, "ncols must be an int"),
    (lambda t: _subplots(figsize=(NAN, 2.0)), ValueError, "figsize contains NaN"),
    (lambda t: _subplots(figsize=(-1.0, 2.0)), ValueError, "figsize must hold positive values"),
    (lambda t: _subplots(figsize=(1.0, 2.0, 3.0)), ValueError, r"figsize must be an array \(2,\)"),
    (lambda t: _subplots(figsize=2.0), ValueError, r"figsize must be an array \(2,\)"),
    (lambda t: _subplots(figsize=("3", "2")), TypeError, "figsize must be an array"),
    (lambda t: _subplots(figsize=(True, 2)), TypeError, "figsize must be an array"),
    (lambda t: _subplots(squeeze="false"), TypeError, "squeeze must be a bool"),
    (lambda t: _subplots(facecolor="not-a-colour"), ValueError, "facecolor must be a matplotlib colour"),
    (lambda t: io.atomic_save_figure(None, t / "a.png"), TypeError, "fig must be a matplotlib.figure.Figure"),
    (lambda t: io.atomic_save_figure(_subplots()[0], t / "a.png", dpi=2.5), TypeError, "dpi must be an int"),
    (lambda t: io.atomic_save_figure(_subplots()[0], t / "a.png", dpi=True), TypeError, "dpi must be an int"),
    (lambda t: io.atomic_save_figure(_subplots()[0], t / "a.png", dpi=0), ValueError, "dpi must be >= 1"),
    (lambda t: io.atomic_save_figure(_subplots()[0], None), TypeError, "path must be a path"),
]


def _subplots(**kw: Any) -> Any:
    from longiseg.utils.plotting import subplots

    return subplots(**kw)


@pytest.mark.parametrize(("call", "err", "match"), FIGURES, ids=_ids(FIGURES))
def test_bad_figure_argument_is_named(call: Call, err: type[Exception], match: str, tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    with pytest.raises(err, match=match):
        call(tmp_path)
    assert not any(tmp_path.iterdir())


def test_valid_arguments_still_work(tmp_path: Path) -> None:
    """NumPy scalars and arrays are still accepted where numbers and sequences are wanted."""
    motion = rigid_motion(np.array([0, 0, 1]), np.float32(90), np.zeros(3), centre_mm=[0, 0, 0])
    assert motion.shape == (4, 4) and motion[2, 2] == 1.0
    assert rigid_motion((0, 0, 1), 0, (1, 2, 3))[:3, 3].tolist() == [1.0, 2.0, 3.0]
    out, aff = simulate_acquisition(VOL > 0, EYE.tolist(), np.eye(4, dtype=np.float32), np.float64(2.0),
                                    np.array([2, 0, 1]), np.array([1, -1, 1]), order=np.int64(0))
    assert out.shape == (2, 2, 2) and aff.shape == (4, 4)
    back = Grid.from_dict(GRID.to_dict())
    assert back.shape == GRID.shape and np.array_equal(back.affine, GRID.affine)
    assert Grid(np.array([4, 4, 4]), np.eye(4, dtype=np.float32)).shape == (4, 4, 4)
    assert as_mask("x", M2, ndim=np.int64(2)).shape == (3, 3)
    assert as_mask("x", M2, ndim=[2, 3]).dtype == bool
    assert as_mask_pair(M2, M2, names=["p", "g"])[0].shape == (3, 3)
    assert as_spacing(np.float32(2.0), np.int64(3)).tolist() == [2.0, 2.0, 2.0]
    assert foreground_slices(M2, M2, margin=np.int64(1)) is None
    key = f"adapter-key-{os.getpid()}-{id(tmp_path)}"  # new in this process: logged once, then not again
    assert log_once(logging.LoggerAdapter(LOG, {}), key, "m", level=logging.DEBUG) is True
    assert log_once(logging.LoggerAdapter(LOG, {}), key, "m", level=logging.DEBUG) is False
    assert io.process_start_time(np.int64(os.getpid())) is not None or os.name == "nt"
    assert io.writer_ended(tmp_path, np.int64(os.getpid()), None, None) is False
    written = io.atomic_write_json(tmp_path / "a.json", {"a": 1}, indent=np.int64(1))
    assert written.read_text() == '{\n "a": 1\n}'
    assert io.atomic_write(tmp_path / "b.bin", lambda fh: fh.write(b"x"), mode="wb").read_bytes() == b"x"
    nifti.atomic_save_nifti(VOL, EYE, tmp_path / "v.nii.gz")
    assert np.asarray(nifti.load_nifti(tmp_path / "v.nii.gz", dtype=np.float32).dataobj).dtype == np.float32
    assert nifti.load_nifti(str(tmp_path / "v.nii.gz"), dtype="float32").shape == (4, 4, 4)
    io.check_separate_folders(tmp_path / "out", "--output", {"--input": tmp_path / "in", "--masks": None})


def test_valid_figure_arguments_still_work(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    fig, axes = _subplots(nrows=np.int64(2), ncols=1, figsize=(np.float64(2), 3), facecolor="black")
    assert tuple(fig.get_size_inches()) == (2.0, 3.0) and len(axes) == 2
    assert io.atomic_save_figure(fig, tmp_path / "f.png", dpi=np.int64(20)).stat().st_size > 0


def test_helpers_found_by_a_fuzzer_name_their_bad_arguments() -> None:
    # each of these failed deep inside (KeyError '3', ZeroDivisionError, OverflowError, AttributeError of None)
    # or returned a wrong value ('tnan_flair.nii.gz', 'progression_t1None.nii.gz', connectivity 8 for ndim None)
    import numpy as np
    import torch

    from longiseg.data.layout import image_filename, prediction_filenames, progression_filename
    from longiseg.data.lesions import check_connectivity, default_connectivity, min_voxel_count
    from longiseg.utils.validation import check_binary, check_finite, check_ndim, check_same_shape

    cases = [
        (lambda: check_connectivity(26, "3"), ValueError, "ndim must be 2 or 3"),
        (lambda: default_connectivity(None), ValueError, "ndim must be 2 or 3"),
        (lambda: min_voxel_count(10.0, 0.0), ValueError, "voxel_volume_mm3 must be a finite number > 0"),
        (lambda: min_voxel_count(float("inf"), 1.0), ValueError, "min_volume_mm3 must be a finite number"),
        (lambda: image_filename(float("nan"), "flair"), TypeError, "timepoint must be an int"),
        (lambda: image_filename(1, None), TypeError, "modality must be"),
        (lambda: progression_filename(1, suffix=None), TypeError, "suffix must be a str"),
        (lambda: progression_filename(True), TypeError, "followup must be an int"),
        (lambda: prediction_filenames(2.5), TypeError, "num_timepoints"),
        (lambda: check_ndim("x", None, 3), TypeError, "x must be a torch.Tensor or a numpy array, got NoneType"),
        (lambda: check_same_shape("a", torch.zeros(2), "b", [0, 0]), TypeError, "b must be a torch.Tensor"),
        (lambda: check_finite("x", None), TypeError, "x must be a torch.Tensor or a numpy array"),
        (lambda: check_binary("x", []), TypeError, "x must be a torch.Tensor or a numpy array"),
    ]
    for call, error, match in cases:
        with pytest.raises(error, match=match):
            call()
    assert min_voxel_count(11.0, 0.11) == 100 and default_connectivity(2) == 8
    check_finite("x", np.ones(3))
    check_binary("x", torch.tensor([0, 1]))


def test_more_helpers_found_by_a_fuzzer_name_their_bad_arguments() -> None:
    # each of these returned a wrong value without a word: a NaN rotation, the 2D layout for spatial_dims=7,
    # no size check for model=None, no defaults for model=None, drop_last='yes', 'P' for spacing NaN
    import numpy as np

    from longiseg.data.samplers import BalancedBatchSampler
    from longiseg.data.transforms import rotation_matrix
    from longiseg.inferers import prediction_defaults
    from longiseg.metrics.longitudinal import followup_kind
    from longiseg.networks.inputs import check_spatial_size, feature_layout, layout

    mask = np.zeros((4, 4, 4), bool)
    mask[1, 1, 1] = True
    cases = [
        (lambda: rotation_matrix(float("nan"), 3), ValueError, "angle_deg must be a finite number"),
        (lambda: layout(7), ValueError, "spatial_dims must be 2 or 3"),
        (lambda: feature_layout(None), ValueError, "spatial_dims must be 2 or 3"),
        (lambda: check_spatial_size(None, 64, "patch_size"), TypeError, "model must be an nn.Module"),
        (lambda: prediction_defaults(None), TypeError, "model must be an nn.Module"),
        (lambda: BalancedBatchSampler([True, False, True, False], 2, drop_last="yes"), TypeError, "drop_last"),
        (lambda: followup_kind(mask, spacing=float("nan")), ValueError, "spacing"),
    ]
    for call, error, match in cases:
        with pytest.raises(error, match=match):
            call()
    assert layout(3) == "(B, T, C, D, H, W)" and followup_kind(mask) == "P"


def test_complex_probabilities_are_refused_not_cut_to_their_real_part() -> None:
    import numpy as np
    import torch

    from longiseg.inferers import binary_entropy, threshold_probabilities

    for call in (lambda: threshold_probabilities(np.full((4, 4), 0.7 + 0.9j)),
                 lambda: binary_entropy(np.full((2, 2), 0.5 + 1j)),
                 lambda: binary_entropy(torch.full((2, 2), 0.5 + 1j))):
        with pytest.raises(TypeError, match="prob must hold real probabilities"):
            call()


def test_complex_targets_and_logits_and_cases_of_another_type_are_refused() -> None:
    # a complex target's imaginary part was dropped (a finite loss came back); complex logits made an output;
    # check_same_timepoints(['a']) raised AttributeError
    import torch

    from longiseg.data.cohort import check_same_timepoints
    from longiseg.losses import dice_focal_per_sample
    from longiseg.networks.output import LongitudinalOutput

    with pytest.raises(TypeError, match="target must be a real"):
        dice_focal_per_sample(torch.rand(2, 1, 8, 8), torch.full((2, 1, 8, 8), 1 + 1j))
    with pytest.raises(TypeError, match="must be real tensors"):
        LongitudinalOutput(torch.zeros(1, 1, 4, 4, dtype=torch.complex64), torch.zeros(1, 1, 1, 4, 4))
    with pytest.raises(TypeError, match=r"cases\[0\] must be a CaseSource or LongitudinalCase"):
        check_same_timepoints(["a"])


def test_internal_helpers_of_the_public_api_name_bad_arguments() -> None:
    # AttributeError (None, a tensor), IndexError (a float mask, a None affine) or numpy's own errors before
    import numpy as np
    import torch

    from longiseg.data.case import display_slice
    from longiseg.data.crops import crop_window
    from longiseg.registration.pairwise import similarity

    image = np.random.default_rng(0).random((8, 8, 8))
    brain = np.ones((8, 8, 8), bool)
    cases = [
        (lambda: crop_window(None, (0, 0, 0), (4, 4, 4)), TypeError, "array must be a numpy array"),
        (lambda: crop_window(image, (0, 0, 0), (-1, -1, -1)), ValueError, "size must be >= 0"),
        (lambda: similarity(torch.from_numpy(image), image, brain), TypeError, "a must be a numpy array"),
        (lambda: similarity(image, image, brain.astype(float)), TypeError, "mask must be a bool array"),
        (lambda: similarity(image, image, brain, bins=0), ValueError, "bins must be >= 2"),
        (lambda: display_slice(np.zeros((8, 8)), None, 0), TypeError, "affine must be an array"),
        (lambda: display_slice(np.zeros((8, 8)), np.eye(4), 2.5), ValueError, "normal_axis must be 0, 1 or 2"),
    ]
    for call, error, match in cases:
        with pytest.raises(error, match=match):
            call()
    assert similarity(image, image, brain)["correlation"] == pytest.approx(1.0)
