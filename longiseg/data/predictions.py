"""A predicted case on disk: ``PRED/CASE/`` with masks, probability and entropy maps per timepoint.

:func:`save_prediction` writes a case folder as a whole (with the input's grid and spatial header,
:func:`case_spatial_header`, and a record of what produced it, :data:`PREDICTION_RECORD`);
:func:`read_prediction` reads one kind of volume back (reference masks in the library layout have the same
names); :func:`prediction_complete` says whether a folder holds every file. File names are
:func:`~longiseg.data.layout.prediction_filenames`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from longiseg.data import layout
from longiseg.data.cohort import case_source
from longiseg.data.sources import CaseSource
from longiseg.data.volumes import GRID_ATOL, Grid, check_same_grid, read_mask, read_volume
from longiseg.utils.io import PathLike, atomic_directory, atomic_write_json, folder_is_empty
from longiseg.utils.nifti import SpatialHeader, atomic_save_nifti, load_nifti, spatial_header
from longiseg.utils.validation import (
    check_binary,
    check_callable,
    check_nonnegative_float,
    check_path,
    check_probabilities,
    check_timepoints,
)

__all__ = ["PREDICTION_RECORD", "read_prediction", "save_prediction", "case_spatial_header", "prediction_complete"]


PREDICTION_RECORD = layout.PREDICTION_RECORD  # the name that predictions have always imported


def read_prediction(root: PathLike, case_id: str, num_timepoints: int, kind: str = "mask", *,
                    affine_atol: float = GRID_ATOL, what: str | None = None
                    ) -> tuple[np.ndarray, np.ndarray, tuple[float, float, float]]:
    """Read one kind of volume of a predicted case ``root/case_id/`` (as written by ``longiseg predict``).

    Reference masks in the library layout (``baseline_mask``, ``progression_t{i}``) have the same names, so
    ``kind="mask"`` also reads a reference case's masks (``longiseg lesions``, ``longiseg evaluate``).

    Args:
        root: prediction folder.
        case_id: the case (a single folder name).
        num_timepoints: the case's ``T``.
        kind: ``"mask"`` (binary masks), ``"prob"`` (probabilities) or ``"entropy"`` (entropy maps); the
            file names are :func:`~longiseg.data.layout.prediction_filenames` (``.nii.gz`` or ``.nii``).
        affine_atol: absolute tolerance when comparing the files' affines.
        what: what the files are, for messages (default ``"case 'ID': predicted KIND"``).

    Returns:
        ``(volumes, affine, spacing)``: ``(T, D, H, W)`` volumes, the baseline first and then follow-ups
        ``1 .. T-1`` (uint8 masks, float32 maps), the shared ``(4, 4)`` affine and voxel size in mm
        (:func:`~longiseg.data.volumes.nifti_spacing`).

    Raises:
        FileNotFoundError: a file is missing.
        ValueError: naming the file: unreadable, not 3D, a mask that is not binary, a probability outside
            ``[0, 1]``, NaN/inf values, header voxel sizes that disagree with the affine, files of different
            shape or affine ("lies on another grid"), a bad ``kind`` or case id; ``affine_atol`` negative, NaN
            or infinite (a ``TypeError`` if not a number).
    """
    affine_atol = check_nonnegative_float("affine_atol", affine_atol)
    names = layout.prediction_filenames(num_timepoints)
    if kind not in names:
        raise ValueError(f"kind must be one of {tuple(names)}, got {kind!r}")
    folder = check_path("root", root) / layout.check_case_id(case_id)
    what = what or f"case {case_id!r}: predicted {kind}"
    volumes: list[np.ndarray] = []
    first: Grid | None = None
    first_spacing = (1.0, 1.0, 1.0)
    for name in names[kind]:
        path = layout.find_nifti(folder, name) or folder / name
        if kind == "mask":
            arr, affine, spacing = read_mask(path, what=what)
        else:
            arr, affine, spacing = read_volume(path, what=what, dtype=np.float32)
            if kind == "prob":
                check_probabilities(f"{what} {path}", arr)
        if first is None:
            first, first_spacing = (path, arr.shape, affine), spacing
        else:
            check_same_grid((path, arr.shape, affine), first, what=what, atol=affine_atol)
        volumes.append(arr)
    assert first is not None
    return np.stack(volumes), first[2], first_spacing


def save_prediction(
    root: PathLike, case_id: str, affine: np.ndarray, volumes: Mapping[str, Sequence[np.ndarray]], *,
    overwrite: bool = False, record: Mapping[str, Any] | None = None, header: SpatialHeader | None = None,
    before_publish: Callable[[Path], object] | None = None,
) -> dict[str, list[Path]]:
    """Write one predicted case to ``root/case_id/`` in the layout (what :func:`read_prediction` reads).

    The case folder is written as a whole, into a temporary folder that replaces ``root/case_id`` at the
    end: readers (and ``longiseg predict --skip-existing``) see the complete case or none, never half of it.

    Args:
        root: prediction folder.
        case_id: the case (a single folder name).
        affine: ``(4, 4)`` voxel-to-world matrix of the input images; every file is written with it.
        volumes: ``{"mask": [...], "prob": [...], "entropy": [...]}``: for each kind to write, ``T`` volumes
            ``(D, H, W)``, the baseline first; ``"mask"`` is required. Masks (binary) are stored as uint8,
            probability and entropy maps as float32, under :func:`~longiseg.data.layout.prediction_filenames`.
        overwrite: replace an existing case folder as a whole; otherwise only a missing or empty one is
            written.
        record: what produced the prediction (JSON data), written as :data:`PREDICTION_RECORD` into the case
            folder with the volumes (``longiseg predict`` records its model and settings there, so that
            ``--skip-existing`` keeps only cases of the same model and settings); ``None``: no record.
        header: the spatial header of the input images (:func:`case_spatial_header`: the baseline image of the
            first modality, whose grid is ``affine``): every file gets its qform (matrix and code), sform code
            and units, as the input has them, so that tools which read the qform or compare form codes (ITK,
            3D Slicer, FSL) overlay the prediction on the input; data type (uint8 masks, float32 maps), scaling
            and the rest of the header are the written volume's. ``None``: both forms hold ``affine`` with code 2
            ("aligned"), in mm (see :func:`~longiseg.utils.nifti.atomic_save_nifti`).
        before_publish: called with the temporary case folder once every file above is in it, before it
            replaces ``root/case_id``: what it writes there is published with the case, so that an interruption
            leaves both or neither (``longiseg predict --native`` writes ``native/`` this way); an exception
            leaves nothing. Its return value is ignored.

    Returns:
        ``{kind: written paths}``, baseline first (the record and what ``before_publish`` writes are not listed).

    Raises:
        FileExistsError: ``root/case_id`` exists, is not empty and ``overwrite`` is ``False``.
        ValueError: a bad case id, unknown kinds, fewer than two volumes, volumes of different shapes or
            counts, a mask that is not binary, or a ``header`` of another grid than ``affine``
            (:meth:`~longiseg.utils.nifti.SpatialHeader.check_grid`); all checked before anything is written.
        TypeError: a ``record`` that is not JSON data (nothing is written), a ``header`` of another type, a
            ``before_publish`` that is not callable.
    """
    folder = check_path("root", root) / layout.check_case_id(case_id)
    check_callable("before_publish", before_publish, "a callable (folder)", optional=True)
    header = spatial_header(header)
    if header is not None:
        header.check_grid(affine, "header")
    if "mask" not in volumes or set(volumes) - {"mask", "prob", "entropy"}:
        raise ValueError(f"volumes must hold 'mask' and optionally 'prob', 'entropy'; got {sorted(volumes)}")
    t = check_timepoints("len(volumes['mask']) (number of timepoints T)", len(volumes["mask"]))
    shape = np.shape(volumes["mask"][0])
    for kind, vols in volumes.items():
        shapes = [np.shape(v) for v in vols]
        if len(vols) != t or len(shape) != 3 or any(sh != shape for sh in shapes):
            raise ValueError(f"volumes[{kind!r}] must be {t} volumes (D, H, W) shaped {shape}, got {shapes}")
    for i, mask in enumerate(volumes["mask"]):
        check_binary(f"volumes['mask'][{i}]", mask)
    names = layout.prediction_filenames(t)
    empty = folder.is_dir() and folder_is_empty(folder)
    with atomic_directory(folder, overwrite=overwrite or empty) as tmp:
        if record is not None:  # first: a record that is not JSON data fails before any volume is written
            atomic_write_json(tmp / PREDICTION_RECORD, record)
        for kind, vols in volumes.items():
            dtype = np.uint8 if kind == "mask" else np.float32
            for arr, name in zip(vols, names[kind], strict=True):
                atomic_save_nifti(arr, affine, tmp / name, overwrite=True, dtype=dtype, header=header)
        if before_publish is not None:
            before_publish(tmp)
    return {kind: [folder / name for name in names[kind]] for kind in volumes}


def case_spatial_header(source: CaseSource | PathLike) -> SpatialHeader | None:
    """The spatial header of a case's grid, for its predictions (:func:`save_prediction`'s ``header``).

    The grid of a case is that of its first file, the baseline image of the first modality (every other file
    lies on it, :func:`~longiseg.data.loading.check_case_headers`); its qform and sform (matrices and codes)
    and units are read from its header alone (no voxel is decoded).

    Args:
        source: a :class:`~longiseg.data.sources.CaseSource`, or a case folder in the library layout.

    Returns:
        Its :class:`~longiseg.utils.nifti.SpatialHeader` (``affine`` equal to the ``affine`` of
        :func:`~longiseg.data.loading.load_case`), or ``None`` when the file sets neither form (which
        :func:`~longiseg.data.loading.load_case` refuses).

    Raises:
        FileNotFoundError: the file is missing.
        ValueError: naming the file: unreadable, truncated or not NIfTI.
    """
    source = case_source(source)
    path = source.image_files[0][0]
    img = load_nifti(path, what=f"case {source.case_id!r}: image", header_only=True)
    return spatial_header(img.header)


def prediction_complete(root: PathLike, case_id: str, num_timepoints: int,
                        kinds: Sequence[str] = ("mask", "prob", "entropy")) -> bool:
    """Whether ``root/case_id`` holds every file of ``kinds`` that :func:`save_prediction` writes for a case of
    ``num_timepoints``, each with a readable NIfTI header (a folder an interrupted run of an older version left half
    written, or a file damaged since, is not complete; the voxels are not decoded, so a file whose header survived
    is taken as it is).

    Raises:
        ValueError: a bad case id or an unknown kind.
    """
    names = layout.prediction_filenames(num_timepoints)
    unknown = sorted(set(kinds) - set(names))
    if unknown:
        raise ValueError(f"kinds must be among {sorted(names)}, got {unknown}")
    folder = check_path("root", root) / layout.check_case_id(case_id)
    files = [folder / name for kind in kinds for name in names[kind]]
    return all(f.is_file() for f in files) and all(_readable_header(f) for f in files)


def _readable_header(path: Path) -> bool:
    """Whether ``path`` holds a NIfTI header :func:`~longiseg.utils.nifti.load_nifti` reads (voxels left on disk)."""
    try:
        load_nifti(path, header_only=True)
    except (OSError, ValueError):
        return False
    return True
