"""Load longitudinal cases from NIfTI files (lazily) and read/write the cohort manifest.

Finding cases (:func:`find_cases`) reads file names and the manifest only; voxels are read when a case is
loaded (:func:`load_case`), which first checks every header (shape, affine) and then every value (finite
intensities, binary masks, a non-empty brain mask, progression flags agreeing with the masks).
:func:`validate_cases` runs the same checks but collects every problem per case instead of raising. Every
file is read with :func:`~longiseg.utils.nifti.load_nifti`. Nothing on disk is ever modified by loading.

A :class:`CaseSource` says where a case's files are and how each mask is derived from them
(:class:`MaskSpec`): the library layout stores binary masks directly, while dataset adapters
(:mod:`longiseg.data.adapters`) derive masks from label maps. Both are plain, picklable records, so lists
of sources travel to DataLoader workers cheaply.
"""

from __future__ import annotations

import csv
import io
import json
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
from tqdm import tqdm

from longiseg.data import layout
from longiseg.data.case import LongitudinalCase, affine_spacing, check_case, check_modalities
from longiseg.utils.io import (
    atomic_directory,
    atomic_write,
    atomic_write_json,
    check_output_folder,
    folder_is_empty,
)
from longiseg.utils.logging import get_logger
from longiseg.utils.nifti import (
    QFORM_SFORM_ATOL,
    SpatialHeader,
    atomic_save_nifti,
    load_nifti,
    spatial_header,
)
from longiseg.utils.validation import check_binary, check_bool, check_timepoints

__all__ = [
    "MaskSpec",
    "CaseSource",
    "ManifestEntry",
    "Manifest",
    "find_cases",
    "find_mask_cases",
    "format_case_ids",
    "load_case",
    "load_cases",
    "validate_cases",
    "check_same_modalities",
    "check_same_timepoints",
    "check_case_headers",
    "modality_mismatches",
    "read_manifest",
    "write_manifest",
    "manifest_from_cases",
    "save_case",
    "read_mask",
    "read_volume",
    "check_same_grid",
    "nifti_spacing",
    "MANIFEST_FIELDS",
    "SPACING_RTOL",
    "PREDICTION_RECORD",
    "prediction_complete",
    "read_prediction",
    "save_prediction",
    "case_spatial_header",
    "check_case_voxels",
]

_LOG = get_logger("longiseg.data")
PathLike = str | os.PathLike

_T = TypeVar("_T")
#: Largest relative difference between a file's header voxel sizes (``pixdim``, nibabel's ``get_zooms``) and
#: its affine's column norms that still counts as agreement (both are stored as float32).
SPACING_RTOL = 1e-3
_MASK_RULES = ("binary", "labels", "growth", "symmetric_difference", "empty")
#: File in a predicted case folder that records what produced the prediction (see :func:`save_prediction`);
#: no reader of masks or maps reads it.
PREDICTION_RECORD = "prediction.json"


@dataclass(frozen=True)
class MaskSpec:
    """How to build one binary mask from files on disk.

    Attributes:
        files: one file (``"binary"``, ``"labels"``) or two label maps (``"growth"``,
            ``"symmetric_difference"``: earlier timepoint first).
        rule: ``"binary"``: the file must hold only 0/1; ``"labels"``: voxels whose label is in ``labels``
            (any non-zero label when ``labels`` is ``None``); ``"empty"``: an all-zero mask shaped like the
            file (for datasets without that annotation); ``"growth"``: labelled in the second file but
            not in the first; ``"symmetric_difference"``: labelled in exactly one of the two files.
        labels: label values that count as foreground for the label rules (``None``: all non-zero).
        allowed: for the label rules, the values the label map(s) may hold besides 0 (a dataset's defined
            labels); a file holding any other value (``9``, ``255``) is not what the reader expects and is
            refused when read, naming the file and the values, rather than built into a mask that silently
            ignores them. ``None``: any integer.
    """

    files: tuple[Path, ...]
    rule: str = "binary"
    labels: tuple[int, ...] | None = None
    allowed: tuple[int, ...] | None = None

    def __post_init__(self) -> None:
        if self.rule not in _MASK_RULES:
            raise ValueError(f"rule must be one of {_MASK_RULES}, got {self.rule!r}")
        want = 2 if self.rule in ("growth", "symmetric_difference") else 1
        if len(self.files) != want:
            raise ValueError(f"mask rule {self.rule!r} needs {want} file(s), got {len(self.files)}")
        object.__setattr__(self, "files", tuple(Path(f) for f in self.files))
        if self.allowed is not None:
            if self.rule in ("binary", "empty"):
                raise ValueError(f"allowed labels apply to the label rules, not to rule {self.rule!r}")
            object.__setattr__(self, "allowed", tuple(int(v) for v in self.allowed))
            outside = sorted(set(self.labels or ()) - set(self.allowed))
            if outside:
                raise ValueError(f"labels {outside} are not among the allowed labels {self.allowed}")


@dataclass(frozen=True)
class CaseSource:
    """Where one case's files are (no voxels read).

    Attributes:
        case_id: unique case identifier.
        patient_id: patient identifier (defaults to ``case_id``).
        modalities: channel names, in channel order.
        image_files: ``T`` tuples of ``C`` image paths (timepoint-major).
        baseline_mask: spec of the baseline mask, or ``None`` for unlabelled cases.
        progression_masks: ``T-1`` specs (one per follow-up), or ``None`` for unlabelled cases.
        brain_mask: optional path of a binary brain mask.
        has_progression: progression flag from a manifest or adapter; ``None`` if unknown (then
            :func:`load_case` or :meth:`progression_flag` computes it).
        baseline_annotated: ``False`` if the dataset has no baseline annotation (MSSEG-2).
        metadata: free-form extras (dataset name, original ids).
    """

    case_id: str
    modalities: tuple[str, ...]
    image_files: tuple[tuple[Path, ...], ...]
    baseline_mask: MaskSpec | None = None
    progression_masks: tuple[MaskSpec, ...] | None = None
    brain_mask: Path | None = None
    patient_id: str = ""
    has_progression: bool | None = None
    baseline_annotated: bool = True
    metadata: dict = field(default_factory=dict, compare=False)

    def __post_init__(self) -> None:
        layout.check_case_id(self.case_id)
        object.__setattr__(self, "modalities", tuple(str(m) for m in self.modalities))
        files = tuple(tuple(Path(p) for p in tp) for tp in self.image_files)
        object.__setattr__(self, "image_files", files)
        if len(files) < 2:
            raise ValueError(
                f"case {self.case_id!r}: needs at least 2 timepoints (a baseline and a follow-up), "
                f"got {len(files)}"
            )
        for t, tp in enumerate(files):
            if len(tp) != len(self.modalities):
                raise ValueError(
                    f"case {self.case_id!r}: timepoint {t} has {len(tp)} image files but "
                    f"{len(self.modalities)} modalities {list(self.modalities)}"
                )
        if (self.baseline_mask is None) != (self.progression_masks is None):
            raise ValueError(f"case {self.case_id!r}: give both baseline and progression masks, or neither")
        if self.progression_masks is not None:
            object.__setattr__(self, "progression_masks", tuple(self.progression_masks))
            if len(self.progression_masks) != len(files) - 1:
                raise ValueError(
                    f"case {self.case_id!r}: needs {len(files) - 1} progression masks (one per follow-up), "
                    f"got {len(self.progression_masks)}"
                )
        if self.brain_mask is not None:
            object.__setattr__(self, "brain_mask", Path(self.brain_mask))
        if not self.patient_id:
            object.__setattr__(self, "patient_id", self.case_id)

    @property
    def num_timepoints(self) -> int:
        """Number of timepoints ``T``."""
        return len(self.image_files)

    @property
    def has_labels(self) -> bool:
        """Whether masks are defined (``False`` for inference-only cases)."""
        return self.baseline_mask is not None

    def all_files(self) -> list[Path]:
        """Every file the case reads, images first."""
        out = [p for tp in self.image_files for p in tp]
        if self.baseline_mask is not None and self.progression_masks is not None:
            for spec in (self.baseline_mask, *self.progression_masks):
                out.extend(f for f in spec.files if f not in out)
        if self.brain_mask is not None:
            out.append(self.brain_mask)
        return out

    def progression_flag(self) -> bool:
        """The case's progression flag: the stored one, else computed by reading only the progression masks."""
        if self.has_progression is not None:
            return bool(self.has_progression)
        if self.progression_masks is None:
            raise ValueError(f"case {self.case_id!r} has no progression masks (unlabelled case)")
        return any(bool(_build_mask(spec, self.case_id).any()) for spec in self.progression_masks)


# --------------------------------------------------------------------------- loading
def _read_label_map(path: Path, case_id: str, allowed: tuple[int, ...] | None) -> np.ndarray:
    """An integer-valued label map, refusing values outside ``0`` and ``allowed`` (see :class:`MaskSpec`)."""
    arr = read_volume(path, what=f"case {case_id!r}: mask")[0]
    bad = None if allowed is None else ~np.isin(arr, np.asarray((0, *allowed)))
    if bad is None and np.issubdtype(arr.dtype, np.floating):
        bad = arr != np.round(arr)
    if bad is not None and bad.any():
        found = [int(v) if float(v).is_integer() else float(v) for v in np.unique(arr[bad])[:10].tolist()]
        may = "only integers" if allowed is None else f"only 0 and {', '.join(map(str, allowed))}"
        n = int(bad.sum())
        raise ValueError(f"case {case_id!r}: label map {path} holds value(s) {found} ({n} voxel{'s' * (n != 1)}); it "
                         f"may hold {may}: fix the file or leave the case out")
    return arr


def _labelled(arr: np.ndarray, labels: tuple[int, ...] | None) -> np.ndarray:
    return arr != 0 if labels is None else np.isin(arr, labels)


def _build_mask(spec: MaskSpec, case_id: str) -> np.ndarray:
    """Read a mask described by ``spec`` as a ``(D, H, W)`` uint8 array."""
    if spec.rule == "empty":
        shape = load_nifti(spec.files[0], what=f"case {case_id!r}: image", header_only=True).shape
        return np.zeros(shape[:3], dtype=np.uint8)
    if spec.rule == "binary":
        return read_mask(spec.files[0], what=f"case {case_id!r}: mask")[0]
    arrays = [_read_label_map(f, case_id, spec.allowed) for f in spec.files]
    if spec.rule == "labels":
        return _labelled(arrays[0], spec.labels).astype(np.uint8)
    a, b = (_labelled(x, spec.labels) for x in arrays)
    if spec.rule == "growth":
        return (b & ~a).astype(np.uint8)
    return (a ^ b).astype(np.uint8)


def _read_image(path: Path, case_id: str) -> np.ndarray:
    """Read one image volume as float32, refusing NaN/inf intensities."""
    return read_volume(path, what=f"case {case_id!r}: image", dtype=np.float32)[0]


def read_volume(path: PathLike, *, what: str = "volume", dtype: Any = None
                ) -> tuple[np.ndarray, np.ndarray, tuple[float, float, float]]:
    """Read one 3D volume: the one reader of a single NIfTI volume (images, masks, predicted maps).

    Args:
        path: the NIfTI file (``(D, H, W)`` or ``(D, H, W, 1)``).
        what: what the file is, for messages (e.g. ``"case 'p0': image"``).
        dtype: the array's dtype (``None``: the stored one, scaling applied by nibabel where the header has it).

    Returns:
        ``(voxels, affine, spacing)``: the ``(D, H, W)`` array in the file's index order, its ``(4, 4)``
        voxel-to-world matrix and its voxel size in mm (:func:`nifti_spacing`).

    Raises:
        FileNotFoundError: the file does not exist.
        ValueError: naming the file: unreadable, not one 3D volume, NaN/inf values, header voxel sizes that
            disagree with the affine.
    """
    img = load_nifti(path, what=what, dtype=dtype)
    arr = np.asanyarray(img.dataobj)
    if arr.ndim == 4 and arr.shape[3] == 1:
        arr = arr[..., 0]
    if arr.ndim != 3:
        raise ValueError(f"{what} {path} must be a 3D volume (D, H, W), got shape {arr.shape}")
    if np.issubdtype(arr.dtype, np.floating) and not np.isfinite(arr).all():
        raise ValueError(f"{what} {path} contains NaN or infinite values")
    return arr, np.asarray(img.affine, dtype=np.float64), nifti_spacing(img, path, what=what)


def nifti_spacing(img: Any, path: PathLike, *, what: str = "NIfTI file", rtol: float = SPACING_RTOL
                  ) -> tuple[float, float, float]:
    """Voxel size in mm of a NIfTI image read by :func:`~longiseg.utils.nifti.load_nifti`: the one owner of it.

    The size is that of the image's affine (:func:`~longiseg.data.case.affine_spacing`, the column norms of
    nibabel's ``img.affine``: the sform when ``sform_code > 0``, else the qform), the matrix every reader
    compares and every output is written with. A file whose header voxel sizes (``pixdim``, which the qform
    uses) disagree with that affine describes two grids; it is refused rather than one of them chosen, and so
    is a file whose qform and sform (both set) differ by more than :data:`~longiseg.utils.nifti.QFORM_SFORM_ATOL`,
    a file with neither (orientation unknown: tools disagree on which side is left) and one measured in other
    units than mm.

    Args:
        img: the nibabel image (a header-only read is enough).
        path: its file, for messages.
        what: what the file is, for messages (e.g. ``"case 'p0': mask"``).
        rtol: largest relative difference of header voxel sizes and affine column norms.

    Returns:
        ``(sx, sy, sz)`` in mm along the array axes.

    Raises:
        ValueError: naming the file and both voxel sizes: header and affine disagree (beyond ``rtol``), or
            the affine is not finite or has an axis of zero length; naming the file: qform and sform
            disagree, neither is set, or the spatial unit is not mm (or unknown).
    """
    hdr = img.header
    qcode, scode = int(hdr["qform_code"]), int(hdr["sform_code"])
    if qcode == 0 and scode == 0:
        raise ValueError(f"{what} {path} has neither a qform nor an sform (both codes 0): its orientation is unknown "
                         "(tools differ on which side is left); rewrite it with the scanner geometry")
    unit = hdr.get_xyzt_units()[0]
    if unit not in ("mm", "unknown"):
        raise ValueError(f"{what} {path} measures space in {unit}; volumes are computed in mm: rewrite its "
                         "header in mm")
    try:
        spacing = affine_spacing(img.affine)
    except ValueError as exc:
        raise ValueError(f"{what} {path}: {exc}") from exc
    zooms = np.asarray(img.header.get_zooms()[:3], dtype=np.float64)
    if zooms.shape != (3,) or not np.allclose(zooms, spacing, rtol=rtol, atol=0.0):
        form = "sform" if int(img.header["sform_code"]) > 0 else "qform"
        raise ValueError(
            f"{what} {path}: the voxel size of its affine ({form}) {_mm(spacing)} disagrees with its header "
            f"voxel size (pixdim, which the qform uses) {_mm(zooms)}; the file describes two grids, so its "
            "volumes would be ambiguous: rewrite it with one geometry (e.g. copy the sform into the qform, or "
            "resample it)"
        )
    if qcode > 0 and scode > 0:
        gap = float(np.abs(hdr.get_qform() - hdr.get_sform()).max())
        if gap > QFORM_SFORM_ATOL:
            raise ValueError(
                f"{what} {path}: its qform and sform place the voxels differently (by up to {gap:.3g} mm or "
                "direction units); the file describes two grids, and tools that read the qform would not "
                "overlay its outputs: rewrite it with one geometry (e.g. copy the sform into the qform)")
    return spacing


def _mm(values: Any) -> str:
    return "x".join(f"{float(v):.4g}" for v in values) + " mm"


def read_mask(path: PathLike, *, what: str = "mask"
              ) -> tuple[np.ndarray, np.ndarray, tuple[float, float, float]]:
    """Read one binary mask volume: a mask of a case, a reference mask or a predicted mask.

    Args:
        path: the NIfTI file.
        what: what the file is, for messages (e.g. ``"case 'p0': mask"``).

    Returns:
        ``(mask, affine, spacing)``: the ``(D, H, W)`` uint8 mask in the file's index order, its ``(4, 4)``
        voxel-to-world matrix and its voxel size in mm (:func:`nifti_spacing`).

    Raises:
        FileNotFoundError: the file does not exist.
        ValueError: naming the file: unreadable, not one 3D volume, NaN/inf values, values other than 0 and 1,
            header voxel sizes that disagree with the affine (:func:`nifti_spacing`).
    """
    arr, affine, spacing = read_volume(path, what=what)
    is_one = arr == 1
    bad = ~(is_one | (arr == 0))
    if bad.any():
        values = np.unique(arr[bad])[:5].tolist()
        raise ValueError(f"{what} {path} must be binary (values 0/1), found values such as {values}")
    return is_one.astype(np.uint8), affine, spacing


Grid = tuple[PathLike, tuple[int, ...], np.ndarray]  # (file, (D, H, W), (4, 4) affine) of one volume


def read_prediction(root: PathLike, case_id: str, num_timepoints: int, kind: str = "mask", *,
                    affine_atol: float = 1e-4, what: str | None = None
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
        (:func:`nifti_spacing`).

    Raises:
        FileNotFoundError: a file is missing.
        ValueError: naming the file: unreadable, not 3D, a mask that is not binary, a probability outside
            ``[0, 1]``, NaN/inf values, header voxel sizes that disagree with the affine, files of different
            shape or affine ("lies on another grid"), a bad ``kind`` or case id.
    """
    names = layout.prediction_filenames(num_timepoints)
    if kind not in names:
        raise ValueError(f"kind must be one of {tuple(names)}, got {kind!r}")
    folder = Path(root) / layout.check_case_id(case_id)
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
            if kind == "prob" and (arr.min() < 0 or arr.max() > 1):
                raise ValueError(f"{what} {path} must hold probabilities in [0, 1], found "
                                 f"[{float(arr.min()):.3g}, {float(arr.max()):.3g}]")
        if first is None:
            first, first_spacing = (path, arr.shape, affine), spacing
        else:
            check_same_grid((path, arr.shape, affine), first, what=what, atol=affine_atol)
        volumes.append(arr)
    assert first is not None
    return np.stack(volumes), first[2], first_spacing


def check_same_grid(
    grid: Grid, reference: Grid, *, what: str = "volume", atol: float = 1e-4,
    hint: str = "all volumes of a case must share one grid",
) -> None:
    """Refuse a volume that does not lie on the grid of another (same shape, affines equal within ``atol``).

    Args:
        grid: ``(path, shape, affine)`` of the volume checked: its file, ``(D, H, W)`` and ``(4, 4)`` affine.
        reference: ``(path, shape, affine)`` of the volume it must share a grid with.
        what: what the files are, for messages.
        atol: absolute tolerance on the affines' entries (mm).
        hint: what the user should do, the end of the message.

    Raises:
        ValueError: naming both files (the reference by its name, or by its path where the names are the same),
            the shapes or the largest affine difference and both voxel sizes.
    """
    (path, shape, affine), (ref_path, ref_shape, ref_affine) = grid, reference
    ref_name = Path(ref_path).name
    where = f"{what} {path} lies on another grid than {ref_path if ref_name == Path(path).name else ref_name}"
    if tuple(shape) != tuple(ref_shape):
        raise ValueError(f"{where} (shape {tuple(shape)} vs {tuple(ref_shape)}); {hint}")
    if not np.allclose(affine, ref_affine, rtol=0.0, atol=atol):
        raise ValueError(
            f"{where} (affines differ by up to {float(np.abs(affine - ref_affine).max()):.3g} mm, tolerance {atol:g} mm; "
            f"voxel size {_mm(affine_spacing(affine))} vs {_mm(affine_spacing(ref_affine))}); {hint}")


def save_prediction(
    root: PathLike, case_id: str, affine: np.ndarray, volumes: Mapping[str, Sequence[np.ndarray]], *,
    overwrite: bool = False, record: Mapping[str, Any] | None = None, header: SpatialHeader | None = None,
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

    Returns:
        ``{kind: written paths}``, baseline first (the record is not listed).

    Raises:
        FileExistsError: ``root/case_id`` exists, is not empty and ``overwrite`` is ``False``.
        ValueError: a bad case id, unknown kinds, fewer than two volumes, volumes of different shapes or
            counts, a mask that is not binary, or a ``header`` of another grid than ``affine``
            (:meth:`~longiseg.utils.nifti.SpatialHeader.check_grid`); all checked before anything is written.
        TypeError: a ``record`` that is not JSON data (nothing is written), a ``header`` of another type.
    """
    folder = Path(root) / layout.check_case_id(case_id)
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
    return {kind: [folder / name for name in names[kind]] for kind in volumes}


def case_spatial_header(source: CaseSource | PathLike) -> SpatialHeader | None:
    """The spatial header of a case's grid, for its predictions (:func:`save_prediction`'s ``header``).

    The grid of a case is that of its first file, the baseline image of the first modality (every other file
    lies on it, :func:`check_case_headers`); its qform and sform (matrices and codes) and units are read from
    its header alone (no voxel is decoded).

    Args:
        source: a :class:`CaseSource`, or a case folder in the library layout.

    Returns:
        Its :class:`~longiseg.utils.nifti.SpatialHeader` (``affine`` equal to the ``affine`` of
        :func:`load_case`), or ``None`` when the file sets neither form (which :func:`load_case` refuses).

    Raises:
        FileNotFoundError: the file is missing.
        ValueError: naming the file: unreadable, truncated or not NIfTI.
    """
    source = _as_source(source)
    path = source.image_files[0][0]
    img = load_nifti(path, what=f"case {source.case_id!r}: image", header_only=True)
    return spatial_header(img.header)


def prediction_complete(root: PathLike, case_id: str, num_timepoints: int,
                        kinds: Sequence[str] = ("mask", "prob", "entropy")) -> bool:
    """Whether ``root/case_id`` holds every file of ``kinds`` that :func:`save_prediction` writes for a case of
    ``num_timepoints`` (a folder an interrupted run of an older version left half written is not complete).

    Raises:
        ValueError: a bad case id or an unknown kind.
    """
    names = layout.prediction_filenames(num_timepoints)
    unknown = sorted(set(kinds) - set(names))
    if unknown:
        raise ValueError(f"kinds must be among {sorted(names)}, got {unknown}")
    folder = Path(root) / layout.check_case_id(case_id)
    return all((folder / name).is_file() for kind in kinds for name in names[kind])


def _unambiguous(path: Path) -> bool:
    """``True``, or ``ValueError`` when ``path`` exists both as ``.nii`` and ``.nii.gz``."""
    layout.find_nifti(path.parent, path.name)
    return True


class _Problems:
    """The problems of one case: raised at the first one (loading) or collected (validation)."""

    def __init__(self, collect: bool) -> None:
        self.collect = collect
        self.messages: list[str] = []

    def add(self, exc: OSError | ValueError) -> None:
        if not self.collect:
            raise exc
        message = f"{type(exc).__name__}: {exc}"
        if message not in self.messages:  # one file read for two masks (a growth rule) is reported once
            self.messages.append(message)

    def attempt(self, fn: Callable[..., _T], *args: Any, **kwargs: Any) -> _T | None:
        """``fn(*args, **kwargs)``; when collecting, an ``OSError``/``ValueError`` is recorded as ``None``."""
        if not self.collect:
            return fn(*args, **kwargs)
        try:
            return fn(*args, **kwargs)
        except (OSError, ValueError) as exc:
            self.add(exc)
            return None


def check_case_headers(source: CaseSource, *, affine_atol: float = 1e-4) -> None:
    """Check a case's files from their headers alone, decoding no voxel: what :func:`load_case` checks first
    (every file present, unambiguous, one readable 3D NIfTI volume with an unambiguous geometry, all on one grid),
    cheap enough to run on a whole cohort before any case is read.

    Args:
        source: the case (from :func:`find_cases`).
        affine_atol: absolute tolerance when comparing the files' affines.

    Raises:
        FileNotFoundError: a file is missing.
        ValueError: naming the case and the file, at the first problem.
    """
    _check_headers(source, affine_atol, _Problems(collect=False))


def check_case_voxels(sources: Sequence[CaseSource], *, progress: bool = True, desc: str = "checking cases") -> None:
    """Read every case once with :func:`load_case` and drop it: what only the voxels tell (NaN or infinite
    intensities, a mask that is not binary, an all-zero brain mask, a progression flag the masks contradict)
    fails here, naming the case and the file, before a command writes anything or runs a model, instead of
    after the cases before it. Run :func:`check_case_headers` first: it is cheap and finds most problems.

    Args:
        sources: the cases (from :func:`find_cases`); masks a command does not use are best left out of them
            (``dataclasses.replace(source, baseline_mask=None, progression_masks=None)``).
        progress: show a progress bar (a cohort of large volumes takes a while to decode).
        desc: the progress bar's label.

    Raises:
        FileNotFoundError, ValueError: as :func:`load_case`, at the first case with a problem.
    """
    for source in tqdm(sources, desc=desc, unit="case", disable=not check_bool("progress", progress)):
        load_case(source)


def _check_headers(source: CaseSource, affine_atol: float, problems: _Problems
                   ) -> tuple[set[Path], tuple[int, ...], np.ndarray, tuple[float, ...]]:
    """Read every header; check that each file is a 3D volume whose header voxel sizes agree with its affine
    (:func:`nifti_spacing`), with the first file's shape and affine.

    Returns:
        The files that passed, and the reference shape, affine and voxel sizes (of the first readable file).
    """
    files = source.all_files()
    roles = {p: "image" for tp in source.image_files for p in tp}
    if source.brain_mask is not None:
        roles.setdefault(source.brain_mask, "brain mask")
    missing = [p for p in files if not p.is_file()]
    if missing:
        names = ", ".join(map(str, missing))
        problems.add(FileNotFoundError(f"case {source.case_id!r}: missing file(s): {names}"))
    good: set[Path] = set()
    ref_path: Path | None = None
    ref_shape: tuple[int, ...] = ()
    ref_affine = np.eye(4)
    spacing: tuple[float, ...] = ()
    for path in files:
        if path in missing or problems.attempt(_unambiguous, path) is None:
            continue
        what = f"case {source.case_id!r}: {roles.get(path, 'mask')}"
        img = problems.attempt(load_nifti, path, what=what, header_only=True)
        if img is None:
            continue
        shape = tuple(int(s) for s in img.shape)
        if len(shape) == 4 and shape[3] == 1:
            shape = shape[:3]
        affine = np.asarray(img.affine, dtype=np.float64)
        if len(shape) != 3:
            problems.add(ValueError(f"case {source.case_id!r}: {path} must be a 3D volume, got {shape}"))
            continue
        file_spacing = problems.attempt(nifti_spacing, img, path, what=what)  # header and affine agree
        if file_spacing is None:
            continue
        if ref_path is None:
            ref_path, ref_shape, ref_affine, spacing = path, shape, affine, file_spacing
        elif shape != ref_shape:
            problems.add(ValueError(
                f"case {source.case_id!r}: all volumes must share one shape (registered and resampled "
                f"beforehand); {ref_path.name} has {ref_shape} but {path.name} has {shape}"
            ))
            continue
        elif not np.allclose(affine, ref_affine, rtol=0.0, atol=affine_atol):
            problems.add(ValueError(
                f"case {source.case_id!r}: all volumes must share one affine (same voxel grid); "
                f"{path.name} differs from {ref_path.name} by up to "
                f"{float(np.abs(affine - ref_affine).max()):.3g} (tolerance {affine_atol})"
            ))
            continue
        good.add(path)
    return good, ref_shape, ref_affine, spacing


def _check_progression_flag(source: CaseSource, progression: np.ndarray, problems: _Problems) -> None:
    """The given progression flag must say whether any progression mask ``(T-1, D, H, W)`` is non-empty."""
    assert source.progression_masks is not None
    names = [spec.files[-1].name for spec in source.progression_masks]
    if source.has_progression and not progression.any():
        problems.add(ValueError(
            f"case {source.case_id!r}: the manifest's progression flag is true but every progression mask "
            f"({', '.join(names)}) is empty"
        ))
    elif source.has_progression is False and progression.any():
        nonempty = [f"{n} ({int(m.sum())} voxels)" for n, m in zip(names, progression) if m.any()]
        problems.add(ValueError(
            f"case {source.case_id!r}: the manifest's progression flag is false but {', '.join(nonempty)} "
            f"{'is' if len(nonempty) == 1 else 'are'} not empty"
        ))


def _read_case(source: CaseSource, affine_atol: float, problems: _Problems) -> LongitudinalCase | None:
    """Read and check every file of ``source``; ``None`` when a problem was collected."""
    cid = source.case_id
    good, shape, affine, spacing = _check_headers(source, affine_atol, problems)
    images = np.zeros((source.num_timepoints, len(source.modalities), *shape), dtype=np.float32)
    for t, tp in enumerate(source.image_files):
        for c, path in enumerate(tp):
            arr = problems.attempt(_read_image, path, cid) if path in good else None
            if arr is not None:
                images[t, c] = arr.reshape(shape)

    def mask(spec: MaskSpec) -> np.ndarray | None:
        if not all(f in good for f in spec.files):
            return None
        arr = problems.attempt(_build_mask, spec, cid)
        return None if arr is None else arr.reshape(shape)

    baseline = progression = None
    if source.baseline_mask is not None and source.progression_masks is not None:
        baseline = mask(source.baseline_mask)
        prog = [mask(s) for s in source.progression_masks]
        if all(m is not None for m in prog):
            progression = np.stack(prog)  # type: ignore[arg-type]
            if source.has_progression is not None:
                _check_progression_flag(source, progression, problems)
    brain = None
    if source.brain_mask is not None:
        brain = mask(MaskSpec((source.brain_mask,), "binary"))
        if brain is not None and not brain.any():
            problems.add(ValueError(
                f"case {cid!r}: brain mask {source.brain_mask} is all zero; fix it or remove the file"
            ))
    if problems.messages:
        return None
    return problems.attempt(
        LongitudinalCase,
        images=images,
        baseline_mask=baseline,
        progression_masks=progression,
        affine=affine,
        spacing=spacing,
        modalities=source.modalities,
        case_id=cid,
        patient_id=source.patient_id,
        brain_mask=brain,
        baseline_annotated=source.baseline_annotated,
        metadata=dict(source.metadata),
    )


def load_case(source: CaseSource | PathLike, *, affine_atol: float = 1e-4) -> LongitudinalCase:
    """Read one case's volumes with nibabel and validate them.

    Every header is checked (shape, affine) before any voxel is decoded, then every value (finite
    intensities, binary masks, a non-empty brain mask, progression flag agreeing with the masks).

    Args:
        source: a :class:`CaseSource`, or a case folder in the library layout.
        affine_atol: absolute tolerance when comparing affines across files.

    Returns:
        A :class:`LongitudinalCase` with ``images (T, C, D, H, W)`` float32.

    Raises:
        FileNotFoundError: a listed file is missing.
        ValueError: naming the file: it is empty, truncated, corrupt or not NIfTI; a ``.nii`` and a
            ``.nii.gz`` of one name both exist; volumes differ in shape or affine; intensities hold NaN/inf;
            a mask is not binary; the brain mask is all zero; the progression flag contradicts the masks;
            there are fewer than two timepoints.
    """
    case = _read_case(_as_source(source), affine_atol, _Problems(collect=False))
    assert case is not None  # problems raise when not collecting
    return case


def _as_source(source: CaseSource | PathLike) -> CaseSource:
    """``source`` itself, or the case of the case folder ``source`` (library layout, masks optional)."""
    if isinstance(source, CaseSource):
        return source
    folder = Path(source)
    if folder.name in ("", ".", ".."):
        folder = folder.resolve()
    return _source_from_folder(folder, modalities=None, require_masks=False)


def load_cases(sources: Sequence[CaseSource], **kwargs: object) -> list[LongitudinalCase]:
    """Load several cases (all in memory; prefer :class:`~longiseg.data.dataset.SliceDataset` for training)."""
    return [load_case(s, **kwargs) for s in sources]  # type: ignore[arg-type]


def validate_cases(
    cases: Sequence[CaseSource] | PathLike,
    *,
    modalities: Sequence[str] | None = None,
    require_masks: bool = True,
    affine_atol: float = 1e-4,
    progress: bool = True,
) -> dict[str, list[str]]:
    """Check every case and collect all problems per case instead of stopping at the first.

    Reports, naming the file: missing files, ambiguous files (``.nii`` and ``.nii.gz`` of one name),
    empty (0-byte), truncated, corrupt or non-NIfTI files, volumes of different shape or affine, NaN/inf
    intensities, non-binary masks, an all-zero brain mask, and a progression flag (from the manifest) that
    contradicts the progression masks. Given a cohort folder it also reports per case what
    :func:`find_cases` would stop at (a case folder lacking images, an invalid case id, a case whose modalities
    differ from the other cases').

    Args:
        cases: case sources (e.g. from :func:`find_cases`), or a cohort folder in the library layout.
        modalities: channel order, when ``cases`` is a folder (as in :func:`find_cases`).
        require_masks: when ``cases`` is a folder, a case without masks is a problem.
        affine_atol: absolute tolerance when comparing affines across files.
        progress: show a progress bar.

    Returns:
        ``{case_id: [problem, ...]}`` for every case with at least one problem, in case order; each problem
        reads ``"ValueError: case 'p0': ..."``. Empty when every case is valid.

    Raises:
        FileNotFoundError: the cohort folder does not exist or holds no case.
        ValueError: its manifest is malformed (invalid JSON, a bad case id, duplicate ids).
    """
    if isinstance(cases, (str, os.PathLike)):
        found = _scan_cohort(Path(cases), modalities, require_masks)
    else:
        found = [(s.case_id, s) for s in cases]
    problems: dict[str, list[str]] = {}
    seen: set[str] = set()
    for case_id, src in tqdm(found, desc="validating cases", unit="case", disable=not progress):
        collected = _Problems(collect=True)
        if case_id in seen:
            collected.add(ValueError(f"case {case_id!r} appears more than once"))
        seen.add(case_id)
        if isinstance(src, CaseSource):
            _read_case(src, affine_atol, collected)
        else:
            collected.add(src)
        if collected.messages:
            problems.setdefault(case_id, []).extend(collected.messages)
    return problems


def save_case(case: LongitudinalCase, root: PathLike, *, overwrite: bool = False,
              image_dtype: np.dtype | type = np.float32) -> Path:
    """Write ``case`` into ``root/<case_id>/`` in the library layout, the case folder as a whole.

    Images ``(T, C, D, H, W)`` are stored as ``image_dtype`` (float32 by default; integer types round), one
    file per timepoint and modality, masks ``(D, H, W)`` as uint8; the case's affine is kept. Every file is
    first written into a temporary folder that replaces ``root/<case_id>`` at the end (as
    :func:`save_prediction` does), so a failure at any point leaves no half-written case folder, and an
    existing one is either kept as it was or replaced as a whole (files of an earlier save that the case no
    longer has, such as a third timepoint, do not stay behind).

    Args:
        case: the case to write.
        root: cohort folder.
        overwrite: replace an existing case folder (and everything in it); otherwise only a missing or
            empty one is written.
        image_dtype: on-disk dtype of the images.

    Returns:
        The case folder.

    Raises:
        TypeError: ``case`` is not a :class:`LongitudinalCase`.
        ValueError: a bad case id, or modalities that the layout cannot store as distinct file names
            (:func:`~longiseg.data.case.check_modalities`), both checked before anything is written.
        FileExistsError: ``root/<case_id>`` exists, is not empty and ``overwrite`` is ``False``.
        NotADirectoryError: ``root/<case_id>`` (or a folder above it) is a file.
    """
    check_case("case", case)
    folder = Path(root) / layout.check_case_id(case.case_id)
    modalities = check_modalities(case.modalities, "case.modalities")
    check_output_folder(folder, "case folder")
    empty = folder.is_dir() and folder_is_empty(folder)
    with atomic_directory(folder, overwrite=overwrite or empty) as tmp:
        for t in range(case.num_timepoints):
            for c, mod in enumerate(modalities):
                img = case.images[t, c]
                if np.issubdtype(np.dtype(image_dtype), np.integer):
                    info = np.iinfo(image_dtype)
                    img = np.clip(np.round(img), info.min, info.max)
                atomic_save_nifti(img, case.affine, tmp / layout.image_filename(t, mod), dtype=image_dtype)
        if case.baseline_mask is not None and case.progression_masks is not None:
            atomic_save_nifti(case.baseline_mask, case.affine, tmp / layout.BASELINE_MASK, dtype=np.uint8)
            for i, m in enumerate(case.progression_masks, start=1):
                atomic_save_nifti(m, case.affine, tmp / layout.progression_filename(i), dtype=np.uint8)
        if case.brain_mask is not None:
            atomic_save_nifti(case.brain_mask, case.affine, tmp / layout.BRAIN_MASK, dtype=np.uint8)
    return folder


# --------------------------------------------------------------------------- folder layout
def _source_from_folder(
    folder: Path,
    modalities: Sequence[str] | None,
    require_masks: bool,
    num_timepoints: int | None = None,
    patient_id: str = "",
    has_progression: bool | None = None,
    baseline_annotated: bool = True,
) -> CaseSource:
    case_id = layout.check_case_id(folder.name, where=f"case folder {folder}")
    if not folder.is_dir():
        raise FileNotFoundError(f"case folder {folder} does not exist")
    found = layout.scan_images(folder)
    if not found:
        raise FileNotFoundError(
            f"case {case_id!r}: no image files named like {layout.image_filename(0, 'flair')} in {folder}"
        )
    if modalities is None:
        modalities = sorted(found.get(0, {}))
        if not modalities:
            raise FileNotFoundError(f"case {case_id!r}: no baseline images (t0_*.nii.gz) in {folder}")
    mods = tuple(m.lower() for m in modalities)
    t_count = num_timepoints if num_timepoints is not None else max(found) + 1
    if max(found) >= t_count:
        raise ValueError(
            f"case {case_id!r}: the manifest gives {t_count} timepoints but {folder} holds images of "
            f"timepoint {max(found)}; correct num_timepoints or remove the extra files"
        )
    if t_count < 2:
        raise ValueError(
            f"case {case_id!r}: needs at least 2 timepoints (a baseline and a follow-up), found {t_count} in {folder}"
        )
    image_files = []
    for t in range(t_count):
        row = []
        for m in mods:
            p = found.get(t, {}).get(m)
            if p is None:
                raise FileNotFoundError(f"case {case_id!r}: missing image {folder / layout.image_filename(t, m)}")
            row.append(p)
        image_files.append(tuple(row))
    mask_names = [layout.BASELINE_MASK] + [layout.progression_filename(i) for i in range(1, t_count)]
    mask_paths = [layout.find_nifti(folder, name) for name in mask_names]
    baseline_spec = prog_specs = None
    if require_masks or any(p is not None for p in mask_paths):
        missing = [str(folder / name) for name, p in zip(mask_names, mask_paths) if p is None]
        if missing:
            raise FileNotFoundError(f"case {case_id!r}: missing file(s): {', '.join(missing)}")
        baseline_spec = MaskSpec((mask_paths[0],), "binary")  # type: ignore[arg-type]
        prog_specs = tuple(MaskSpec((p,), "binary") for p in mask_paths[1:])  # type: ignore[arg-type]
    return CaseSource(
        case_id=case_id,
        patient_id=patient_id,
        modalities=mods,
        image_files=tuple(image_files),
        baseline_mask=baseline_spec,
        progression_masks=prog_specs,
        brain_mask=layout.find_nifti(folder, layout.BRAIN_MASK),
        has_progression=has_progression if baseline_spec is not None else None,
        baseline_annotated=baseline_annotated,
    )


def format_case_ids(ids: Sequence[str], limit: int = 5) -> str:
    """``'a', 'b', 'c' and 4 more``: case ids for a message, at most ``limit`` of them named."""
    shown = ", ".join(repr(i) for i in ids[:limit])
    return shown + (f" and {len(ids) - limit} more" if len(ids) > limit else "")


def modality_mismatches(cases: Sequence[CaseSource | LongitudinalCase]
                        ) -> tuple[tuple[str, ...], list[str], dict[str, str]]:
    """Which cases load other modalities (names or channel order) than most.

    Args:
        cases: case sources or loaded cases.

    Returns:
        ``(common, cases_with_common, {case_id: message})``: the modalities most cases have (ties: those of the
        first case), the ids of the cases that have them, and one message per case that has others, naming its
        modalities, the common ones and the cases with them. Empty messages when all agree.
    """
    groups: dict[tuple[str, ...], list[str]] = {}
    for c in cases:
        groups.setdefault(tuple(c.modalities), []).append(c.case_id)
    if not groups:
        return (), [], {}
    common = max(groups, key=lambda mods: len(groups[mods]))  # max keeps the first of equal counts
    odd = {cid: (f"case {cid!r} has the modalities {list(mods)} but {format_case_ids(groups[common])} "
                 f"{'has' if len(groups[common]) == 1 else 'have'} {list(common)}: all cases must have the same "
                 "modalities in the same channel order (give the channel order as modalities= / data.modalities or "
                 "in a manifest, and give every case those images)")
           for mods, ids in groups.items() if mods != common for cid in ids}
    return common, groups[common], odd


def check_same_modalities(cases: Sequence[CaseSource | LongitudinalCase]) -> tuple[str, ...]:
    """Refuse cases that do not all have the same modalities in the same order (one model input layout).

    Args:
        cases: case sources or loaded cases (e.g. the training and validation cases together).

    Returns:
        The common modalities (``()`` for no case).

    Raises:
        ValueError: naming the cases with other modalities, theirs and the common ones.
    """
    common, _, odd = modality_mismatches(cases)
    if odd:
        first = next(iter(odd.values()))
        more = f" (also {format_case_ids(list(odd)[1:])})" if len(odd) > 1 else ""
        raise ValueError(first + more)
    return common


def check_same_timepoints(cases: Sequence[CaseSource | LongitudinalCase], remedy: str = "make one dataset per T"
                          ) -> int:
    """Refuse cases that do not all have the same number of timepoints ``T`` (a batch stacks samples of one ``T``).

    Args:
        cases: case sources or loaded cases (e.g. the training and validation cases together).
        remedy: what to do instead, ending the message.

    Returns:
        The common ``T`` (``0`` for no case).

    Raises:
        ValueError: naming the cases of each ``T``.
    """
    by_t: dict[int, list[str]] = {}
    for c in cases:
        by_t.setdefault(c.num_timepoints, []).append(c.case_id)
    if len(by_t) > 1:
        counts = "; ".join(f"T={t} for {format_case_ids(sorted(ids))}" for t, ids in sorted(by_t.items()))
        raise ValueError(f"cases must all have the same number of timepoints ({counts}): a batch stacks samples "
                         f"of one T; {remedy}")
    return next(iter(by_t), 0)


def _cohort_manifest(root: Path) -> Manifest | None:
    """The manifest of a cohort folder (``manifest.json``, else ``manifest.csv``), ``None`` without one.

    Raises:
        FileNotFoundError: the manifest lists no case (a folder of no cases is an error, as without a manifest).
    """
    for name in (layout.MANIFEST_JSON, layout.MANIFEST_CSV):
        if (root / name).is_file():
            manifest = read_manifest(root / name)
            if not manifest.cases:
                raise FileNotFoundError(f"{root / name} lists no case")
            return manifest
    return None


def _scan_cohort(
    root: Path, modalities: Sequence[str] | None, require_masks: bool
) -> list[tuple[str, CaseSource | OSError | ValueError]]:
    """Every case of a cohort folder as ``(case_id, source)``, or ``(case_id, error)`` if it cannot be listed.

    Raises:
        FileNotFoundError: ``root`` is missing or holds no case folder (or its manifest lists none).
        ValueError: the manifest is malformed.
    """
    if not root.is_dir():
        raise FileNotFoundError(f"cohort folder {root} does not exist")
    manifest = _cohort_manifest(root)
    found: list[tuple[str, CaseSource | OSError | ValueError]] = []
    if manifest is not None:
        mods = modalities if modalities is not None else (manifest.modalities or None)
        for entry in manifest.cases:
            try:
                found.append((entry.case_id, _source_from_folder(
                    root / entry.case_id, mods, require_masks, num_timepoints=entry.num_timepoints,
                    patient_id=entry.patient_id, has_progression=entry.progression,
                    baseline_annotated=entry.baseline_annotated,
                )))
            except (OSError, ValueError) as exc:
                found.append((entry.case_id, exc))
        return _mark_odd_modalities(found)
    for folder in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        if any(layout.image_timepoint(f.name) == 0 for f in folder.iterdir()):  # a bad modality name: refused below
            try:
                found.append((folder.name, _source_from_folder(folder, modalities, require_masks)))
            except (OSError, ValueError) as exc:
                found.append((folder.name, exc))
    if not found:
        raise FileNotFoundError(f"no case folders with t0_*.nii.gz images found in {root}")
    return _mark_odd_modalities(found)


def _mark_odd_modalities(found: list[tuple[str, CaseSource | OSError | ValueError]]
                         ) -> list[tuple[str, CaseSource | OSError | ValueError]]:
    """``found`` with every case whose modalities differ from most cases' replaced by a ``ValueError`` saying so
    (without a manifest or given modalities each case's channels are its own baseline files, sorted by name)."""
    _, _, odd = modality_mismatches([s for _, s in found if isinstance(s, CaseSource)])
    return [(cid, ValueError(odd[cid]) if isinstance(s, CaseSource) and cid in odd else s) for cid, s in found]


def find_cases(
    root: PathLike,
    *,
    modalities: Sequence[str] | None = None,
    require_masks: bool = True,
) -> list[CaseSource]:
    """List the cases of a folder in the library layout (see :mod:`longiseg.data.layout`) without reading voxels.

    With a manifest (``manifest.json`` or ``manifest.csv``) its case order, modalities, timepoint counts and
    progression flags are used; otherwise every sub-folder holding ``t0_*.nii.gz`` files is a case, the
    number of timepoints is the highest ``t<i>`` found plus one and modalities default to the baseline's
    modalities in alphabetical order, which must be the same for every case. Files may end in ``.nii.gz`` or
    ``.nii``, not both for one name.

    Args:
        root: cohort folder.
        modalities: channel order to load (e.g. ``["flair", "t2"]``); overrides the manifest's.
        require_masks: raise if a case lacks its baseline/progression masks (set ``False`` for inference).

    Returns:
        One :class:`CaseSource` per case.

    Raises:
        FileNotFoundError: ``root`` or a required file is missing.
        ValueError: a case has fewer than two timepoints, the manifest disagrees with the files, cases have
            different modalities (names or order; :func:`check_same_modalities`), a case id
            is not a single folder name (:func:`~longiseg.data.layout.check_case_id`), or a ``.nii`` and a
            ``.nii.gz`` of one name both exist. :func:`validate_cases` reports these per case instead.
    """
    sources = []
    for _, src in _scan_cohort(Path(root), modalities, require_masks):
        if not isinstance(src, CaseSource):
            raise src
        sources.append(src)
    return sources


def find_mask_cases(root: PathLike) -> list[ManifestEntry]:
    """List the cases of a reference folder (masks in the library layout, images optional); no voxels read.

    A case is a sub-folder holding ``baseline_mask.nii.gz`` and ``progression_t1 .. progression_t{T-1}``
    (``.nii`` or ``.nii.gz``). With a manifest (read by :func:`read_manifest`, so exactly the manifests
    :func:`find_cases` accepts) its cases, order and patient ids are used; otherwise every sub-folder
    holding a baseline mask is a case of its own patient. ``T`` is the manifest's ``num_timepoints`` or,
    where it is left out, counted from the files (the highest follow-up of the progression masks and images).

    Args:
        root: reference folder, e.g. a test cohort.

    Returns:
        One :class:`ManifestEntry` per case, ``num_timepoints`` always set.

    Raises:
        FileNotFoundError: ``root`` or a case folder is missing, ``root`` holds no case, or a case lacks a
            mask (naming the files).
        ValueError: a malformed manifest, an invalid case id, files of more timepoints than the manifest
            gives, fewer than two timepoints, or a ``.nii`` and a ``.nii.gz`` of one mask.
    """
    root = Path(root)
    if root.exists() and not root.is_dir():
        raise NotADirectoryError(f"mask folder {root} is a file, not a folder")
    if not root.is_dir():
        raise FileNotFoundError(f"mask folder {root} does not exist")
    manifest = _cohort_manifest(root)
    if manifest is not None:
        rows = list(manifest.cases)
    else:
        folders = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
        rows = [ManifestEntry(p.name, "", None, None)
                for p in folders if layout.find_nifti(p, layout.BASELINE_MASK)]
        if not rows:
            raise FileNotFoundError(f"no case folders with a {layout.BASELINE_MASK} found in {root}")
    return [_mask_case(root, row) for row in rows]


def _mask_case(root: Path, row: ManifestEntry) -> ManifestEntry:
    """``row`` with its number of timepoints resolved, after checking that every mask of the case exists."""
    folder = root / layout.check_case_id(row.case_id, where=f"case folder {root / row.case_id}")
    cid = row.case_id
    if not folder.is_dir():
        raise FileNotFoundError(f"case {cid!r}: case folder {folder} does not exist")
    followups = [layout.parse_progression_filename(f.name) for f in folder.iterdir()]
    on_disk = max([0, *(i for i in followups if i is not None), *layout.scan_images(folder)]) + 1
    t = row.num_timepoints if row.num_timepoints is not None else on_disk
    if on_disk > t:
        raise ValueError(f"case {cid!r}: the manifest gives {t} timepoints but {folder} holds files of "
                         f"timepoint {on_disk - 1}; correct num_timepoints or remove the extra files")
    if t < 2:
        raise ValueError(f"case {cid!r}: needs at least 2 timepoints (a baseline and a follow-up), but "
                         f"{folder} holds no {layout.progression_filename(1)}")
    names = [layout.BASELINE_MASK] + [layout.progression_filename(i) for i in range(1, t)]
    missing = [str(folder / n) for n in names if layout.find_nifti(folder, n) is None]
    if missing:
        raise FileNotFoundError(f"case {cid!r}: missing file(s): {', '.join(missing)}")
    return ManifestEntry(cid, row.patient_id or cid, t, row.progression)


# --------------------------------------------------------------------------- manifest
@dataclass(frozen=True)
class ManifestEntry:
    """One manifest row: ``case_id``, ``patient_id``, ``num_timepoints``, the ``progression`` flag and
    ``baseline_annotated``.

    ``num_timepoints`` and ``progression`` are ``None`` where the manifest leaves them out; the number of
    timepoints is then counted from the case's files. ``baseline_annotated`` is ``False`` for cases without a
    baseline annotation (MSSEG-2), so the flag survives conversion to the library layout; absent: ``True``.
    """

    case_id: str
    patient_id: str
    num_timepoints: int | None
    progression: bool | None
    baseline_annotated: bool = True


@dataclass(frozen=True)
class Manifest:
    """A cohort manifest: the modalities (channel order) and one :class:`ManifestEntry` per case."""

    modalities: tuple[str, ...]
    cases: tuple[ManifestEntry, ...]

    @property
    def progression_flags(self) -> list[bool | None]:
        """Per-case progression flags in manifest order."""
        return [c.progression for c in self.cases]


def _parse_flag(value: object, where: str, name: str = "progression") -> bool | None:
    if value is None or value == "":
        return None
    if isinstance(value, bool):
        return value
    if isinstance(value, (int, float)) and value in (0, 1):
        return bool(value)
    text = str(value).strip().lower()
    if text in ("1", "true", "yes"):
        return True
    if text in ("0", "false", "no"):
        return False
    raise ValueError(f"{where}: {name} must be true/false/1/0 or empty, got {value!r}")


#: The fields of a manifest's case row (a CSV manifest may add the ``modalities`` column).
MANIFEST_FIELDS = ("case_id", "patient_id", "num_timepoints", "progression", "baseline_annotated")


def _entry(row: dict, where: str, extra: tuple[str, ...] = ()) -> ManifestEntry:
    if not isinstance(row, dict) or not row.get("case_id"):
        raise ValueError(f"{where}: every case needs a non-empty 'case_id'")
    unknown = sorted(str(k) for k in row if k not in MANIFEST_FIELDS + extra)
    if unknown:  # a misspelt patient_id would otherwise make every case its own patient
        raise ValueError(f"{where}: unknown field(s) {unknown}; a case has {list(MANIFEST_FIELDS + extra)}")
    patient = row.get("patient_id")
    if isinstance(patient, bool) or not isinstance(patient, (str, int, type(None))):
        raise ValueError(f"{where}: patient_id must be a string or an integer, got {patient!r}")
    if not isinstance(row["case_id"], (str, int)) or isinstance(row["case_id"], bool):
        raise ValueError(f"{where}: case_id must be a string, got {row['case_id']!r}")
    case_id = layout.check_case_id(str(row["case_id"]), where=where)
    raw_t = row.get("num_timepoints")
    t = None
    if raw_t is not None and raw_t != "":
        try:
            if isinstance(raw_t, bool) or (isinstance(raw_t, float) and not raw_t.is_integer()):
                raise TypeError
            t = int(raw_t)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"{where}: num_timepoints must be an integer, got {raw_t!r}") from exc
        if t < 2:
            raise ValueError(f"{where}: num_timepoints must be >= 2 (a baseline and a follow-up), got {t}")
    return ManifestEntry(
        case_id=case_id,
        patient_id=case_id if patient is None or str(patient).strip() == "" else str(patient).strip(),
        num_timepoints=t,
        progression=_parse_flag(row.get("progression"), where),
        baseline_annotated=_parse_flag(row.get("baseline_annotated"), where, "baseline_annotated") is not False,
    )


def read_manifest(path: PathLike) -> Manifest:
    """Read ``manifest.json`` or ``manifest.csv``.

    JSON: ``{"modalities": [...], "cases": [{"case_id", "patient_id", "num_timepoints", "progression"}]}``.
    CSV: columns ``case_id, patient_id, num_timepoints, progression`` and optionally ``modalities``
    (``;``-separated, same on every row). Only ``case_id`` is required: ``patient_id`` defaults to the case
    id, an absent ``num_timepoints`` is counted from the files, an absent ``progression`` from the masks.
    An optional ``baseline_annotated`` (``false`` for cases without baseline labels) defaults to true.

    Raises:
        FileNotFoundError: the file is missing.
        ValueError: malformed content (unknown suffix, not UTF-8, missing ``case_id``, unknown fields, duplicate
            ids, bad flags or patient ids).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"manifest {path} does not exist")
    if path.suffix not in (".json", ".csv"):
        raise ValueError(f"manifest must end in .json or .csv, got {path.name}")
    try:
        text = path.read_text(encoding="utf-8-sig")  # a byte-order mark (spreadsheet exports) is not content
    except UnicodeDecodeError as exc:
        raise ValueError(f"manifest {path} is not UTF-8 text ({exc.reason} at byte {exc.start}); save it as UTF-8") \
            from None
    extra: tuple[str, ...] = ()
    if path.suffix == ".json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ValueError(f"manifest {path} is not valid JSON: {exc}") from exc
        if not isinstance(data, dict) or not isinstance(data.get("cases"), list):
            raise ValueError(f"manifest {path} must be an object with a 'cases' list")
        raw_mods = data.get("modalities")
        if raw_mods is not None and (not isinstance(raw_mods, list) or not all(isinstance(m, str) for m in raw_mods)):
            raise ValueError(f"manifest {path}: modalities must be a list of names, got {raw_mods!r}")
        mods = tuple(m.lower() for m in raw_mods or [])
        rows = data["cases"]
    else:
        reader = csv.DictReader(io.StringIO(text, newline=""))
        # "case_id, patient_id" (a space after the comma) names the column "patient_id", not " patient_id"
        rows = [{(k or "").strip(): v.strip() if isinstance(v, str) else v for k, v in r.items()} for r in reader]
        extra = ("modalities",)
        mod_sets = {r.get("modalities") or "" for r in rows}
        if len(mod_sets) > 1:
            raise ValueError(f"manifest {path}: the 'modalities' column must be the same on every row")
        mods = tuple(m.strip().lower() for m in (mod_sets.pop() if mod_sets else "").split(";") if m.strip())
    entries = tuple(_entry(r, f"manifest {path} row {i}", extra) for i, r in enumerate(rows))
    ids = [e.case_id for e in entries]
    dup = sorted({i for i in ids if ids.count(i) > 1})
    if dup:
        raise ValueError(f"manifest {path}: duplicate case_id(s) {dup}")
    return Manifest(modalities=mods, cases=entries)


def manifest_from_cases(cases: Sequence[CaseSource | LongitudinalCase]) -> Manifest:
    """Build a manifest from sources or loaded cases (progression flags computed where unknown)."""
    if not cases:
        raise ValueError("cases must not be empty")
    mods = tuple(cases[0].modalities)
    entries = []
    for c in cases:
        if tuple(c.modalities) != mods:
            raise ValueError(f"case {c.case_id!r} has modalities {list(c.modalities)}, expected {list(mods)}")
        if isinstance(c, LongitudinalCase):
            flag = c.has_progression if c.has_labels else None
        else:
            flag = c.progression_flag() if c.has_labels else None
        entries.append(ManifestEntry(c.case_id, c.patient_id, c.num_timepoints, flag, c.baseline_annotated))
    return Manifest(modalities=mods, cases=tuple(entries))


def write_manifest(path: PathLike, manifest: Manifest, *, overwrite: bool = True) -> Path:
    """Write ``manifest`` atomically as JSON or CSV (chosen by the suffix of ``path``)."""
    path = Path(path)
    if path.suffix == ".json":
        obj = {
            "modalities": list(manifest.modalities),
            "cases": [
                {"case_id": e.case_id, "patient_id": e.patient_id, "num_timepoints": e.num_timepoints,
                 "progression": e.progression, **({} if e.baseline_annotated else {"baseline_annotated": False})}
                for e in manifest.cases
            ],
        }
        return atomic_write_json(path, obj, overwrite=overwrite)
    if path.suffix == ".csv":
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        annotated_column = not all(e.baseline_annotated for e in manifest.cases)  # only where it says something
        w.writerow(["case_id", "patient_id", "num_timepoints", "progression", "modalities"]
                   + ["baseline_annotated"] * annotated_column)
        for e in manifest.cases:
            flag = "" if e.progression is None else int(e.progression)
            num_t = "" if e.num_timepoints is None else e.num_timepoints
            w.writerow([e.case_id, e.patient_id, num_t, flag, ";".join(manifest.modalities)]
                       + [int(e.baseline_annotated)] * annotated_column)
        text = buf.getvalue()
        return atomic_write(path, lambda fh: fh.write(text), overwrite=overwrite)
    raise ValueError(f"manifest path must end in .json or .csv, got {path.name}")
