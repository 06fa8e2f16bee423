"""Masks in baseline (registered) space back onto a session's original grid, with the saved transforms.

``longiseg register`` saves, per case, ``registration/t{k}.tfm`` (baseline space -> follow-up ``k``'s native
space) and ``registration/registration.json`` (the native grid and spatial header of every file). A prediction on the
registered grid (``longiseg predict``) is mapped onto the scan the radiologist reads by sampling it at the
inverse transform of every native voxel: each native voxel takes the value of the baseline-space point it
shows. Masks use nearest neighbour (default here: exact labels, the native grid is usually at least as
coarse) or linear interpolation kept where >= 0.5.

``longiseg predict --native`` writes every predicted case's masks this way into ``OUT/CASE/native/``
(:func:`case_to_native`, after checking each case with :func:`check_native_ready` before any is predicted);
:func:`predictions_to_native` does it for a finished prediction folder into another folder. A mapped mask
carries the spatial header of the original scan whose grid it lies on (its qform and sform with their codes,
and its units: :func:`native_header`), so that it overlays that scan in FSL, ITK or 3D Slicer.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from longiseg.data import layout
from longiseg.data.volumes import read_mask
from longiseg.registration.grid import Grid, from_sitk, require_simpleitk, to_sitk
from longiseg.registration.pairwise import resample
from longiseg.utils.io import PathLike, atomic_directory, check_separate_folders
from longiseg.utils.nifti import SpatialHeader, atomic_save_nifti
from longiseg.utils.validation import check_instance, check_path, check_timepoints

__all__ = ["NATIVE_DIR", "native_grid", "native_header", "mask_to_native", "check_native_ready", "case_to_native",
           "predictions_to_native"]


#: Sub-folder of a predicted case (``OUT/CASE/native/``) holding its masks on the original grids.
NATIVE_DIR = "native"


def _record(registration_dir: Path) -> dict:
    """``registration.json`` of a case, with the entries mapping back reads checked (a damaged or hand-edited
    file is named, not a ``KeyError`` or a bare JSON message)."""
    path = registration_dir / "registration.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: map back needs the output of 'longiseg register'")
    try:
        rec = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"{path} is not a JSON record of 'longiseg register' ({err}); register the case again") \
            from None
    options = rec.get("options") if isinstance(rec, dict) else None
    grids = rec.get("native_grids") if isinstance(rec, dict) else None
    if not (isinstance(options, dict) and isinstance(options.get("reference_modality"), str)
            and isinstance(grids, dict) and all(isinstance(g, dict) for g in grids.values())):
        raise ValueError(f"{path} lacks what 'longiseg register' records (options.reference_modality, "
                         "native_grids); register the case again")
    return rec


def _grid_record(registration_dir: PathLike, timepoint: int, modality: str | None = None) -> dict:
    """The ``registration.json`` record of timepoint ``timepoint``'s original grid (its reference modality
    unless ``modality`` is given): ``{"shape", "affine", "header"}``."""
    rec = _record(check_path("registration_dir", registration_dir))
    mod = (modality or rec["options"]["reference_modality"]).lower()
    key = f"t{timepoint}_{mod}"
    if key not in rec["native_grids"]:
        raise ValueError(f"no native grid {key!r} in {registration_dir}; known: {sorted(rec['native_grids'])}")
    return rec["native_grids"][key]


def _inverse_transform(registration_dir: Path, timepoint: int) -> Any:
    """The saved transform of follow-up ``timepoint`` (``t{k}.tfm``), inverted: registered -> original grid."""
    sitk = require_simpleitk()
    tfm = registration_dir / f"t{timepoint}.tfm"
    if not tfm.is_file():
        raise FileNotFoundError(f"transform {tfm} not found (follow-up {timepoint} was not registered by "
                                "'longiseg register', or its registration failed)")
    try:
        transform = sitk.ReadTransform(str(tfm))
        if transform.GetName() == "CompositeTransform":
            transform = sitk.CompositeTransform(transform).GetNthTransform(0)
        return transform.GetInverse()
    except RuntimeError as err:  # ITK's message holds object addresses and build paths: name the file instead
        reason = " ".join(str(err).split())[-160:]
        raise ValueError(f"transform {tfm} cannot be read or inverted as a transform of 'longiseg register' "
                         f"(SimpleITK: ...{reason}); register the case again") from None


def native_grid(registration_dir: PathLike, timepoint: int, modality: str | None = None) -> Grid:
    """Original grid of timepoint ``timepoint`` (its reference modality unless ``modality`` is given)."""
    return Grid.from_dict(_grid_record(registration_dir, timepoint, modality))


def native_header(registration_dir: PathLike, timepoint: int, modality: str | None = None) -> SpatialHeader | None:
    """Spatial header (qform, sform, codes, units) of the original file whose grid :func:`native_grid` gives;
    ``None`` where that file set neither form or ``registration.json`` predates the record (longiseg < 0.3.12)."""
    rec = _grid_record(registration_dir, timepoint, modality).get("header")
    return None if rec is None else SpatialHeader(**rec)


def mask_to_native(mask: np.ndarray, affine: np.ndarray, registration_dir: PathLike, timepoint: int, *,
                   interpolation: str = "nearest") -> tuple[np.ndarray, np.ndarray]:
    """Map a binary mask ``(D, H, W)`` on the registered grid onto timepoint ``timepoint``'s original grid.

    Args:
        mask: binary mask on the registered (output) grid.
        affine: its ``(4, 4)`` RAS+ affine.
        registration_dir: the case's ``registration/`` folder written by ``longiseg register``.
        timepoint: 0 for the baseline (no transform: same session), ``k >= 1`` for follow-up ``k``.
        interpolation: ``"nearest"`` or ``"linear"`` (interpolate the 0/1 mask, keep >= 0.5).

    Returns:
        ``(mask (D', H', W') uint8, native affine (4, 4))``.
    """
    require_simpleitk()
    if interpolation not in ("nearest", "linear"):
        raise ValueError(f"interpolation must be 'nearest' or 'linear', got {interpolation!r}")
    reg = check_path("registration_dir", registration_dir)
    grid = native_grid(reg, timepoint)
    transform = _inverse_transform(reg, timepoint) if timepoint > 0 else None
    src = to_sitk((np.asarray(mask) > 0).astype(np.float32), affine)
    if interpolation == "nearest":
        out = from_sitk(resample(src, grid, transform, interpolation="nearest"))[0]
    else:
        out = (from_sitk(resample(src, grid, transform, interpolation="linear"))[0] >= 0.5).astype(np.uint8)
    return out, grid.affine


def check_native_ready(registration_dir: PathLike, num_timepoints: int, case_id: str | None = None, *,
                       registered_grid: Grid | None = None) -> None:
    """Raise unless ``registration_dir`` holds what mapping a ``num_timepoints`` case's masks back needs.

    Needs SimpleITK, ``registration.json`` (of case ``case_id`` when given) with the native grid of every
    timepoint's reference modality, and the transform ``t{k}.tfm`` of every follow-up ``k``, readable and
    invertible (each is read here, so that ``longiseg predict --native`` refuses a damaged one before any case
    is predicted).

    Args:
        registration_dir: the case's ``registration/`` folder written by ``longiseg register``.
        num_timepoints: the case's ``T``.
        case_id: the case; checked against the one the record names.
        registered_grid: the grid of the case to be predicted (its images'); checked against the registered
            grid the record holds, so that a case of another ``register`` output is refused before it is
            predicted. ``None``: not checked here (:func:`case_to_native` checks the masks' grid).

    Raises:
        ImportError: SimpleITK is missing (names the ``register`` extra).
        FileNotFoundError: no ``registration.json`` or a missing transform.
        TypeError: ``num_timepoints`` is not an int (NumPy's are; bool is not).
        ValueError: the record is another case's, damaged, or of another registered grid than
            ``registered_grid``, a timepoint without a recorded native grid, a recorded header that does not
            describe its grid, an unreadable transform, or ``num_timepoints < 2``.
    """
    require_simpleitk()
    num_timepoints = check_timepoints("num_timepoints", num_timepoints)  # (a NumPy int as an int)
    reg = Path(registration_dir)
    recorded = _record(reg).get("case_id")
    if case_id is not None and recorded is not None and recorded != case_id:
        raise ValueError(f"{reg / 'registration.json'} records case {recorded!r}, not {case_id!r}: its transforms "
                         "would map another patient's scans")
    for t in range(num_timepoints):
        native_grid(reg, t)
        if t > 0:
            _inverse_transform(reg, t)
    _check_native_headers(reg)
    if registered_grid is not None:
        check_instance("registered_grid", registered_grid, Grid, "a Grid or None")
        _check_registered_grid(f"case {case_id or reg.parent.name!r}: its images lie", registered_grid.shape,
                               registered_grid.affine, _registered_grid(reg), reg)


def _check_native_headers(registration_dir: Path) -> None:
    """Refuse a ``registration.json`` that records an original file whose header does not describe its grid
    (``longiseg register`` < 0.3.14 accepted such files): masks could not be written with it."""
    for key, rec in _record(registration_dir)["native_grids"].items():
        if rec.get("header") is None:
            continue
        why = SpatialHeader(**rec["header"]).mismatch(Grid.from_dict(rec).affine)
        if why is not None:
            raise ValueError(f"{registration_dir / 'registration.json'}: the original file {key} has a header that "
                             f"describes two grids ({why}); masks cannot be written on its grid with its header: "
                             "fix the raw file's header and register the case again")


def _registered_grid(registration_dir: Path) -> Grid | None:
    """The registered (output) grid ``registration.json`` records; ``None`` for records of longiseg < 0.3.12."""
    recorded = _record(registration_dir).get("output_grid")
    return None if recorded is None else Grid.from_dict(recorded)


def _check_registered_grid(what: str, shape: tuple[int, ...], affine: np.ndarray, grid: Grid | None,
                           registration_dir: Path) -> None:
    """Refuse a mask (or a case's images) that does not lie on ``grid``, the registered grid its case's
    ``registration.json`` records (it would be mapped back as if it did); ``None`` (records of longiseg < 0.3.12)
    checks nothing. ``what``: the subject and verb of the message (``"case 'c': its images lie"``)."""
    if grid is not None and (tuple(shape) != tuple(grid.shape) or not np.allclose(affine, grid.affine, atol=1e-3)):
        raise ValueError(f"{what} on another grid (shape {tuple(shape)}) than the registered one of "
                         f"{registration_dir / 'registration.json'} (shape {tuple(grid.shape)}, its affine): was "
                         "the case written by that register output?")


def _native_masks(case_dir: Path, registration_dir: Path, case_id: str, num_timepoints: int | None,
                  interpolation: str) -> list[tuple[str, np.ndarray, np.ndarray, SpatialHeader | None]]:
    """``(file name, native mask, native affine, native header)`` of every mask of a predicted case folder.

    ``num_timepoints`` given: exactly the masks of :func:`~longiseg.data.layout.prediction_filenames`;
    ``None``: the mask files the folder holds.
    """
    if num_timepoints is None:
        files = sorted(f for f in case_dir.iterdir() if f.is_file())
    else:
        files = [layout.find_nifti(case_dir, n) or case_dir / n
                 for n in layout.prediction_filenames(num_timepoints)["mask"]]
    registered = _registered_grid(registration_dir)
    out = []
    for f in files:
        t = 0 if layout.nifti_stem(f.name) == layout.nifti_stem(layout.BASELINE_MASK) \
            else layout.parse_progression_filename(f.name)
        if t is None:
            continue  # probabilities, entropy: only masks are mapped
        arr, aff, _ = read_mask(f, what=f"case {case_id!r}: predicted mask")
        _check_registered_grid(f"case {case_id!r}: predicted mask {f.name} lies", arr.shape, aff, registered,
                               registration_dir)
        out.append((f.name, *mask_to_native(arr, aff, registration_dir, t, interpolation=interpolation),
                    native_header(registration_dir, t)))
    return out


def case_to_native(case_dir: PathLike, registration_dir: PathLike, num_timepoints: int, *,
                   interpolation: str = "nearest", overwrite: bool = False, case_id: str | None = None) -> list[Path]:
    """Write one predicted case's masks on their original grids into ``case_dir/native/``.

    ``native/baseline_mask.nii.gz`` lies on the baseline's original grid, ``native/progression_t{k}.nii.gz`` on
    follow-up ``k``'s (so the files of ``native/`` do not share one grid). The folder is written as a whole
    (a temporary folder renamed at the end), like the case folder itself.

    Args:
        case_dir: a case folder written by ``longiseg predict`` (masks ``(D, H, W)`` on the registered grid).
        registration_dir: the case's ``registration/`` folder written by ``longiseg register``.
        num_timepoints: the case's ``T``: the baseline mask and ``T - 1`` progression masks are mapped.
        interpolation: see :func:`mask_to_native`.
        overwrite: replace an existing ``native/`` folder.
        case_id: the case, checked against the one ``registration.json`` records; ``None``: ``case_dir``'s name
            (give it for a case folder still under a temporary name, as ``longiseg predict --native`` does before
            it publishes the case with its ``native/``).

    Returns:
        The files written, baseline first.

    Raises:
        FileExistsError: ``native/`` exists and ``overwrite`` is ``False``.
        FileNotFoundError, ValueError, ImportError: see :func:`check_native_ready`; a missing or malformed mask.
    """
    case_dir, reg = check_path("case_dir", case_dir), check_path("registration_dir", registration_dir)
    case_id = case_dir.name if case_id is None else layout.check_case_id(case_id)
    check_native_ready(reg, num_timepoints, case_id)
    masks = _native_masks(case_dir, reg, case_id, num_timepoints, interpolation)
    target = case_dir / NATIVE_DIR
    with atomic_directory(target, overwrite=overwrite) as tmp:
        for name, arr, aff, header in masks:
            atomic_save_nifti(arr, aff, tmp / name, overwrite=True, dtype=np.uint8, header=header)
    return [target / name for name, *_ in masks]


def predictions_to_native(pred_dir: PathLike, registered_dir: PathLike, out_dir: PathLike, *,
                          interpolation: str = "nearest", overwrite: bool = False) -> list[Path]:
    """Write every case's ``baseline_mask`` and ``progression_t{k}`` predictions on their original grids.

    Every case is checked before any is written (its registration record, transforms and masks: every timepoint
    the record holds), and each case folder is written as a whole (a temporary folder renamed at the end).

    Args:
        pred_dir: predictions on the registered grid (``longiseg predict`` of ``registered_dir``).
        registered_dir: the output of ``longiseg register`` (holds ``CASE/registration/``).
        out_dir: destination, apart from both: ``out_dir/CASE/progression_t1.nii.gz`` lies on follow-up 1's
            original grid, ``baseline_mask.nii.gz`` on the baseline's.
        interpolation: see :func:`mask_to_native`.
        overwrite: replace existing case folders of ``out_dir``.

    Returns:
        The files written.

    Raises:
        ValueError: ``out_dir`` is, lies inside or holds ``pred_dir`` or ``registered_dir``; see
            :func:`check_native_ready` and :func:`case_to_native`.
        FileNotFoundError: no prediction folder, a case without its registration record, transform or mask.
        FileExistsError: a case folder of ``out_dir`` exists and ``overwrite`` is ``False``.
    """
    pred, reg = check_path("pred_dir", pred_dir), check_path("registered_dir", registered_dir)
    out = check_path("out_dir", out_dir)
    if not pred.is_dir():
        raise FileNotFoundError(f"prediction folder {pred} does not exist")
    check_separate_folders(out, "out_dir", {"pred_dir": pred, "registered_dir": reg})
    cases = [(case, reg / case.name / "registration") for case in sorted(p for p in pred.iterdir() if p.is_dir())]
    ready = []
    for case, reg_dir in cases:  # every case checked and mapped before any is written
        if not reg_dir.is_dir():
            raise FileNotFoundError(f"case {case.name!r}: no {reg_dir} (was {reg} written by 'longiseg register'?)")
        record = _record(reg_dir)  # read once: the native grid of each timepoint's reference modality
        reference = record["options"]["reference_modality"].lower()
        num_timepoints = sum(key.endswith("_" + reference) for key in record["native_grids"])
        check_native_ready(reg_dir, num_timepoints, case.name)
        if not overwrite and (out / case.name).exists():
            raise FileExistsError(f"{out / case.name} exists; pass overwrite=True to replace it")
        ready.append((case, _native_masks(case, reg_dir, case.name, num_timepoints, interpolation)))
    written = []
    for case, masks in ready:
        with atomic_directory(out / case.name, overwrite=overwrite) as tmp:
            for name, arr, aff, header in masks:
                atomic_save_nifti(arr, aff, tmp / name, overwrite=True, dtype=np.uint8, header=header)
        written += [out / case.name / name for name, *_ in masks]
    return written
