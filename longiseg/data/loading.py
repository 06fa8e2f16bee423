"""Load and check longitudinal cases: the one reader of a whole case on disk.

:func:`load_case` first checks every header (:func:`check_case_headers`: files present, one 3D volume each, one
grid) and then every value (finite intensities, binary masks, a non-empty brain mask, progression flags agreeing
with the masks). :func:`validate_cases` runs the same checks but collects every problem per case instead of
raising; :func:`save_case` writes a case in the library layout. Nothing on disk is ever modified by loading.

Where the files are is a :class:`~longiseg.data.sources.CaseSource` (from
:func:`~longiseg.data.cohort.find_cases` or a dataset adapter); single volumes are read by
:mod:`longiseg.data.volumes`.
"""

from __future__ import annotations

import contextlib
import logging
import os
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
from tqdm import tqdm

from longiseg.data import layout, manifest, predictions, volumes
from longiseg.data.case import LongitudinalCase, check_case, check_modalities
from longiseg.data.cohort import case_source, scan_cohort
from longiseg.data.sources import CaseSource, MaskSpec, build_mask
from longiseg.utils.io import PathLike, atomic_directory, check_output_folder, folder_is_empty
from longiseg.utils.logging import get_logger, log_once
from longiseg.utils.nifti import atomic_save_nifti, load_nifti
from longiseg.utils.validation import (
    check_bool,
    check_instance,
    check_nonnegative_float,
    check_path,
    check_sequence,
)

__all__ = [
    "load_case",
    "load_cases",
    "validate_cases",
    "check_case_headers",
    "check_case_voxels",
    "check_progression_flag",
    "read_mask_case",
    "case_voxel_size",
    "case_grid",
    "save_case",
]

_LOG = get_logger(__name__)

_T = TypeVar("_T")


def _read_image(path: Path, case_id: str) -> np.ndarray:
    """Read one image volume as float32, refusing NaN/inf intensities."""
    return volumes.read_volume(path, what=f"case {case_id!r}: image", dtype=np.float32)[0]


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

    def passes(self, check: Callable[..., object], *args: Any, **kwargs: Any) -> bool:
        """Whether ``check(*args, **kwargs)`` raised no ``OSError``/``ValueError`` (recorded when collecting)."""
        try:
            check(*args, **kwargs)
        except (OSError, ValueError) as exc:
            self.add(exc)
            return False
        return True


_ONE_GRID_HINT = ("all volumes of a case must share one grid: register the follow-ups to the baseline and resample "
                  "every volume onto its grid beforehand (longiseg register)")


def check_case_headers(source: CaseSource | PathLike, *, affine_atol: float = volumes.GRID_ATOL) -> None:
    """Check a case's files from their headers alone, decoding no voxel: what :func:`load_case` checks first
    (every file present, unambiguous, one readable 3D NIfTI volume with an unambiguous geometry, all on one grid),
    cheap enough to run on a whole cohort before any case is read.

    Args:
        source: the case (from :func:`~longiseg.data.cohort.find_cases`), or a case folder in the library
            layout.
        affine_atol: absolute tolerance when comparing the files' affines, a finite number ``>= 0`` (mm).

    Raises:
        FileNotFoundError: a file is missing.
        TypeError: ``affine_atol`` is not a number.
        ValueError: ``affine_atol`` negative, NaN or infinite; or naming the case and the file, at the first
            problem.
    """
    affine_atol = check_nonnegative_float("affine_atol", affine_atol)
    _check_headers(case_source(source), affine_atol, _Problems(collect=False))


def _first_image_header(source: CaseSource | PathLike) -> tuple[Path, Any, str]:
    """``(path, header-only image, what)`` of a case's first file, the baseline image of the first modality: the
    case's grid (every other file lies on it, :func:`check_case_headers`)."""
    source = case_source(source)
    path, what = source.image_files[0][0], f"case {source.case_id!r}: image"
    return path, load_nifti(path, what=what, header_only=True), what


def case_voxel_size(source: CaseSource | PathLike) -> tuple[float, float, float]:
    """The voxel size in mm of a case's grid along its array axes, from the header of its first file (the baseline
    image of the first modality; every other file lies on that grid, :func:`check_case_headers`), decoding no
    voxel (:func:`~longiseg.data.volumes.nifti_spacing`).

    Raises:
        FileNotFoundError: the file is missing.
        ValueError: naming the file: unreadable, or its header voxel sizes disagree with its affine.
    """
    path, img, what = _first_image_header(source)
    return volumes.nifti_spacing(img, path, what=what)


def case_grid(source: CaseSource | PathLike) -> tuple[tuple[int, int, int], np.ndarray]:
    """A case's grid from the header of its first file, decoding no voxel: the shape ``(D, H, W)`` and the
    ``(4, 4)`` affine of the arrays :func:`load_case` reads (a file ``(D, H, W, 1)`` counts as ``(D, H, W)``).

    Raises:
        FileNotFoundError: the file is missing.
        ValueError: naming the file: unreadable.
    """
    _, img, _ = _first_image_header(source)
    return tuple(int(n) for n in img.shape[:3]), np.asarray(img.affine, dtype=np.float64)  # type: ignore[return-value]


def check_case_voxels(sources: Sequence[CaseSource], *, progress: bool = True, desc: str = "checking cases",
                      reader: Callable[[CaseSource], object] | None = None) -> None:
    """Read every case once and drop it: what only the voxels tell (NaN or infinite intensities, a mask that is
    not binary, an all-zero brain mask, a progression flag the masks contradict, and whatever ``reader`` refuses,
    e.g. an all-zero image it cannot normalise) fails here, naming the case, before a command writes anything or
    runs a model, instead of after the cases before it. Run :func:`check_case_headers` first: it is cheap and
    finds most problems.

    Args:
        sources: the cases (from :func:`~longiseg.data.cohort.find_cases`); masks a command does not use are
            best left out of them (``dataclasses.replace(source, baseline_mask=None,
            progression_masks=None)``).
        progress: show a progress bar (a cohort of large volumes takes a while to decode).
        desc: the progress bar's label.
        reader: how the command reads a case (e.g. :func:`load_case` then its preprocessing); ``None``:
            :func:`load_case`.

    Raises:
        FileNotFoundError, ValueError: as :func:`load_case` (or ``reader``), at the first case with a problem.
    """
    check_sequence("sources", sources, (CaseSource, str, os.PathLike), "a CaseSource or a case folder path")
    if reader is not None and not callable(reader):
        raise TypeError(f"reader must be a callable taking a CaseSource, or None, got {type(reader).__name__}")
    read = load_case if reader is None else reader
    for source in tqdm(sources, desc=desc, unit="case", disable=not check_bool("progress", progress)):
        read(case_source(source))


def _check_headers(source: CaseSource, affine_atol: float, problems: _Problems
                   ) -> tuple[set[Path], tuple[int, ...], np.ndarray, tuple[float, ...]]:
    """Read every header; check that each file is a 3D volume whose header voxel sizes agree with its affine
    (:func:`~longiseg.data.volumes.nifti_spacing`), with the first file's shape and affine.

    Returns:
        The files that passed, and the reference shape, affine and voxel sizes (of the first readable file).
    """
    files = source.all_files()
    roles = {p: "image" for tp in source.image_files for p in tp}
    if source.brain_mask is not None:
        roles.setdefault(source.brain_mask, "brain mask")
    missing = [p for p in files if not p.is_file()]
    if missing:
        names = ", ".join(_with_case_hint(p) for p in missing)
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
        file_spacing = problems.attempt(volumes.nifti_spacing, img, path, what=what)  # header and affine agree
        if file_spacing is None:
            continue
        if ref_path is None:
            ref_path, ref_shape, ref_affine, spacing = path, shape, affine, file_spacing
        elif not problems.passes(volumes.check_same_grid, (path, shape, affine), (ref_path, ref_shape, ref_affine),
                                 what=what, atol=affine_atol, hint=_ONE_GRID_HINT):
            continue
        good.add(path)
    return good, ref_shape, ref_affine, spacing


def check_progression_flag(case_id: str, flag: bool | None, progression: np.ndarray, names: Sequence[str]) -> None:
    """Refuse a manifest progression flag that the progression masks contradict: the one check of it, for every
    reader of labelled cases (:func:`load_case`, :func:`validate_cases`, :func:`read_mask_case`).

    Args:
        case_id: the case, for the message.
        flag: the manifest's (or adapter's) progression flag; ``None`` (not given) passes.
        progression: the case's progression masks ``(T-1, D, H, W)``.
        names: the file name of each progression mask (``T-1`` names), for the message.

    Raises:
        ValueError: naming the case, and the non-empty masks with their voxel counts when the flag is false or
            every mask when it is true.
        TypeError: ``flag`` is neither ``None`` nor a bool (``"no"`` would count as true), ``progression`` not an
            array.
    """
    if flag is not None:
        flag = check_bool("flag", flag)
    check_instance("progression", progression, np.ndarray, "a numpy array (T-1, D, H, W)")
    if flag and not progression.any():
        raise ValueError(
            f"case {case_id!r}: the manifest's progression flag is true but every progression mask "
            f"({', '.join(names)}) is empty"
        )
    if flag is False and progression.any():
        nonempty = [f"{n} ({int(m.sum())} voxels)" for n, m in zip(names, progression) if m.any()]
        raise ValueError(
            f"case {case_id!r}: the manifest's progression flag is false but {', '.join(nonempty)} "
            f"{'is' if len(nonempty) == 1 else 'are'} not empty"
        )


def _warn_cumulative_progression(case_id: str, progression: np.ndarray, names: Sequence[str]) -> None:
    """Warn (once per process) when a progression mask repeats most of the previous one: progression at follow-up
    k is lesion at k that was not lesion at k-1, so ``progression_t{k}`` cannot overlap ``progression_t{k-1}``;
    masks holding more than half of the previous one's voxels were most likely drawn against the baseline (each
    repeating the earlier follow-ups' new lesions), which training and evaluation would take as new lesions
    again. A few shared voxels are not reported: masks resampled one by one (``longiseg register`` moves each
    follow-up's with its own transform) touch at their borders."""
    shared = []
    for k in range(1, len(progression)):
        both = int(np.count_nonzero(progression[k] & progression[k - 1]))
        before = int(np.count_nonzero(progression[k - 1]))
        if 2 * both > before:  # integers: exact
            shared.append((names[k - 1], names[k], both))
    if shared:
        log_once(_LOG, "cumulative-progression", (
            f"case {case_id!r}: {', '.join(f'{b} shares {n} voxels with {a}' for a, b, n in shared)}: progression at "
            "a follow-up is lesion not present at the previous one, so consecutive masks cannot overlap; were they "
            "drawn against the baseline? (training and evaluation take their voxels as new again; later cases are "
            "not reported)"), logging.WARNING)


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
        arr = problems.attempt(build_mask, spec, cid)
        return None if arr is None else arr.reshape(shape)

    baseline = progression = None
    if source.baseline_mask is not None and source.progression_masks is not None:
        baseline = mask(source.baseline_mask)
        prog = [mask(s) for s in source.progression_masks]
        if all(m is not None for m in prog):
            progression = np.stack(prog)  # type: ignore[arg-type]
            names = [spec.files[-1].name for spec in source.progression_masks]  # type: ignore[union-attr]
            problems.passes(check_progression_flag, cid, source.has_progression, progression, names)
            _warn_cumulative_progression(cid, progression, names)
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


def _with_case_hint(path: Path) -> str:
    """``path``, and the file of its folder named like it but for upper- and lower-case letters, if there is one
    (``FLAIR_time01.nii.gz`` for ``flair_time01.nii.gz``: reported as missing, with no hint)."""
    with contextlib.suppress(OSError):
        for other in path.parent.iterdir():
            if other.name.lower() == path.name.lower() and other.is_file():
                return f"{path} (there is {other.name}: file names are case-sensitive; rename it)"
    return str(path)


def load_case(source: CaseSource | PathLike, *, affine_atol: float = volumes.GRID_ATOL) -> LongitudinalCase:
    """Read one case's volumes with nibabel and validate them.

    Every header is checked (shape, affine) before any voxel is decoded, then every value (finite
    intensities, binary masks, a non-empty brain mask, progression flag agreeing with the masks).

    Args:
        source: a :class:`~longiseg.data.sources.CaseSource`, or a case folder in the library layout.
        affine_atol: absolute tolerance when comparing affines across files, a finite number ``>= 0`` (mm;
            an infinite one would switch the one-grid check off).

    Returns:
        A :class:`~longiseg.data.case.LongitudinalCase` with ``images (T, C, D, H, W)`` float32.

    Raises:
        FileNotFoundError: a listed file is missing.
        TypeError: ``affine_atol`` is not a number (``None``, a string, a bool).
        ValueError: ``affine_atol`` negative, NaN or infinite; or naming the file: it is empty, truncated,
            corrupt or not NIfTI; a ``.nii`` and a ``.nii.gz`` of one name both exist; volumes differ in shape or
            affine; intensities hold NaN/inf; a mask is not binary; the brain mask is all zero; the progression
            flag contradicts the masks; there are fewer than two timepoints.
    """
    affine_atol = check_nonnegative_float("affine_atol", affine_atol)
    case = _read_case(case_source(source), affine_atol, _Problems(collect=False))
    assert case is not None  # problems raise when not collecting
    return case


def read_mask_case(root: PathLike, entry: manifest.ManifestEntry, *, affine_atol: float = volumes.GRID_ATOL,
                   what: str | None = None) -> tuple[np.ndarray, np.ndarray, tuple[float, float, float]]:
    """Read the masks of one case of a mask folder (a reference folder, or predictions) and check them as
    :func:`load_case` checks a case's masks: every file binary and on one grid
    (:func:`~longiseg.data.predictions.read_prediction`), and the progression flag that the folder's manifest
    gives, if any, agreeing with the progression masks (:func:`check_progression_flag`, the message
    :func:`load_case` gives). ``longiseg evaluate`` (the reference side) and ``longiseg lesions`` read cases so.

    Args:
        root: the folder (``root/CASE/baseline_mask.nii.gz``, ``root/CASE/progression_t{i}.nii.gz``).
        entry: the case, as :func:`~longiseg.data.cohort.find_mask_cases` lists it (``num_timepoints`` set;
            ``progression`` is the manifest's flag, ``None`` without one).
        affine_atol: absolute tolerance when comparing the files' affines (mm).
        what: what the files are, for messages (default ``"case 'ID': mask"``).

    Returns:
        ``(masks, affine, spacing)``: uint8 ``(T, D, H, W)`` masks, the baseline first, then the progression
        masks of follow-ups ``1 .. T-1``; the shared ``(4, 4)`` affine and the voxel size in mm.

    Raises:
        TypeError: ``entry`` is not a :class:`~longiseg.data.manifest.ManifestEntry`.
        FileNotFoundError: a mask is missing.
        ValueError: ``entry.num_timepoints`` not set; naming the file as
            :func:`~longiseg.data.predictions.read_prediction` does; or the manifest's progression flag
            contradicts the progression masks; ``affine_atol`` negative, NaN or infinite (a ``TypeError`` if not a
            number).
    """
    affine_atol = check_nonnegative_float("affine_atol", affine_atol)
    check_instance("entry", entry, manifest.ManifestEntry, "a ManifestEntry (from find_mask_cases)")
    if entry.num_timepoints is None:
        raise ValueError(f"case {entry.case_id!r}: entry.num_timepoints must be set (find_mask_cases sets it)")
    root = check_path("root", root)
    masks, affine, spacing = predictions.read_prediction(
        root, entry.case_id, entry.num_timepoints, "mask", affine_atol=affine_atol,
        what=what or f"case {entry.case_id!r}: mask")
    folder = root / entry.case_id
    names = [(layout.find_nifti(folder, n) or folder / n).name
             for n in layout.prediction_filenames(entry.num_timepoints)["mask"][1:]]
    check_progression_flag(entry.case_id, entry.progression, masks[1:], names)
    return masks, affine, spacing


def load_cases(sources: Sequence[CaseSource], **kwargs: object) -> list[LongitudinalCase]:
    """Load several cases (all in memory; prefer :class:`~longiseg.data.dataset.SliceDataset` for
    training)."""
    check_sequence("sources", sources, (CaseSource, str, os.PathLike), "a CaseSource or a case folder path")
    return [load_case(s, **kwargs) for s in sources]  # type: ignore[arg-type]


def validate_cases(
    cases: Sequence[CaseSource] | PathLike,
    *,
    modalities: Sequence[str] | None = None,
    require_masks: bool | None = True,
    affine_atol: float = volumes.GRID_ATOL,
    progress: bool = True,
) -> dict[str, list[str]]:
    """Check every case and collect all problems per case instead of stopping at the first.

    Reports, naming the file: missing files, ambiguous files (``.nii`` and ``.nii.gz`` of one name),
    empty (0-byte), truncated, corrupt or non-NIfTI files, volumes of different shape or affine, NaN/inf
    intensities, non-binary masks, an all-zero brain mask, and a progression flag (from the manifest) that
    contradicts the progression masks. Given a cohort folder it also reports per case what
    :func:`~longiseg.data.cohort.find_cases` would stop at (a case folder lacking images, an invalid case id,
    a case whose modalities differ from the other cases').

    Args:
        cases: case sources (e.g. from :func:`~longiseg.data.cohort.find_cases`), or a cohort folder in the
            library layout.
        modalities: channel order, when ``cases`` is a folder (as in
            :func:`~longiseg.data.cohort.find_cases`).
        require_masks: when ``cases`` is a folder, whether masks are required (as in
            :func:`~longiseg.data.cohort.find_cases`).
        affine_atol: absolute tolerance when comparing affines across files, a finite number ``>= 0`` (mm).
        progress: show a progress bar.

    Returns:
        ``{case_id: [problem, ...]}`` for every case with at least one problem, in case order; each problem
        reads ``"ValueError: case 'p0': ..."``. Empty when every case is valid.

    Raises:
        FileNotFoundError: the cohort folder does not exist or holds no case.
        TypeError: ``affine_atol`` is not a number.
        ValueError: ``affine_atol`` negative, NaN or infinite; the cohort's manifest is malformed (invalid JSON,
            a bad case id, duplicate ids).
    """
    affine_atol = check_nonnegative_float("affine_atol", affine_atol)
    if isinstance(cases, (str, os.PathLike)):
        found = scan_cohort(cases, modalities, require_masks)
    else:
        if isinstance(cases, bytes) or not isinstance(cases, Sequence):  # a str is a folder, above
            raise TypeError(f"cases must be a cohort folder (a path) or a list of CaseSource, got {type(cases).__name__}")
        found = [(s.case_id, s) for s in check_sequence("cases", cases, CaseSource, "a CaseSource")]
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


#: The on-disk image dtypes ``save_case`` writes: the real NIfTI-1 types that nibabel stores without an explicit
#: header (float16, bool and complex are no NIfTI-1 image types; nibabel refuses int64/uint64 data without one).
_SAVE_IMAGE_DTYPES = tuple(np.dtype(d) for d in (np.float32, np.float64, np.int8, np.uint8, np.int16, np.uint16,
                                                  np.int32, np.uint32))


def _check_image_dtype(value: object) -> np.dtype:
    """``value`` as a ``numpy.dtype`` if it is one of ``_SAVE_IMAGE_DTYPES`` (any byte order) or names one; raise
    naming ``image_dtype`` otherwise."""
    accepted = ", ".join(d.name for d in _SAVE_IMAGE_DTYPES)
    dtype = None
    if value is not None and not isinstance(value, (bool, int, float)):  # np.dtype(None) would be float64
        try:
            dtype = np.dtype(value)  # type: ignore[call-overload]
        except (TypeError, ValueError):  # "data type 'abc' not understood", "Cannot interpret '-1' as a data type"
            pass
    if dtype is None:
        raise TypeError(f"image_dtype must be a numpy dtype (or its name), one of {accepted}, got "
                        f"{type(value).__name__} {value!r}")
    if dtype.newbyteorder("=") not in _SAVE_IMAGE_DTYPES:
        raise ValueError(f"image_dtype must be one of {accepted}, got {dtype}")
    return dtype


def save_case(case: LongitudinalCase, root: PathLike, *, overwrite: bool = False,
              image_dtype: np.dtype | type = np.float32) -> Path:
    """Write ``case`` into ``root/<case_id>/`` in the library layout, the case folder as a whole.

    Images ``(T, C, D, H, W)`` are stored as ``image_dtype`` (float32 by default; integer types round), one
    file per timepoint and modality, masks ``(D, H, W)`` as uint8; the case's affine is kept. Every file is
    first written into a temporary folder that replaces ``root/<case_id>`` at the end (as
    :func:`~longiseg.data.predictions.save_prediction` does), so a failure at any point leaves no half-written
    case folder, and an existing one is either kept as it was or replaced as a whole (files of an earlier save
    that the case no longer has, such as a third timepoint, do not stay behind).

    Args:
        case: the case to write.
        root: cohort folder.
        overwrite: replace an existing case folder (and everything in it); otherwise only a missing or
            empty one is written.
        image_dtype: on-disk dtype of the images (a ``numpy.dtype``, a NumPy type or its name): one of
            float32, float64, int8, uint8, int16, uint16, int32 or uint32.

    Returns:
        The case folder.

    Raises:
        TypeError: ``case`` is not a :class:`~longiseg.data.case.LongitudinalCase`, or ``image_dtype`` is not a
            dtype.
        ValueError: a bad case id, modalities that the layout cannot store as distinct file names
            (:func:`~longiseg.data.case.check_modalities`), or another ``image_dtype`` (float16, int64, bool,
            complex, ...), all checked before anything is written.
        FileExistsError: ``root/<case_id>`` exists, is not empty and ``overwrite`` is ``False``.
        NotADirectoryError: ``root/<case_id>`` (or a folder above it) is a file.
    """
    check_case("case", case)
    _check_image_dtype(image_dtype)
    folder = check_path("root", root) / layout.check_case_id(case.case_id)
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


#: Names this module held until 0.3.12, and the module that owns each now.
_MOVED = {
    "SPACING_RTOL": "volumes",
    "read_volume": "volumes",
    "read_mask": "volumes",
    "nifti_spacing": "volumes",
    "check_same_grid": "volumes",
    "PREDICTION_RECORD": "predictions",
    "read_prediction": "predictions",
    "save_prediction": "predictions",
    "case_spatial_header": "predictions",
    "prediction_complete": "predictions",
    "find_cases": "cohort",
    "find_mask_cases": "cohort",
    "format_case_ids": "cohort",
    "modality_mismatches": "cohort",
    "check_same_modalities": "cohort",
    "check_same_timepoints": "cohort",
    "MANIFEST_FIELDS": "manifest",
    "ManifestEntry": "manifest",
    "Manifest": "manifest",
    "read_manifest": "manifest",
    "write_manifest": "manifest",
    "manifest_from_cases": "manifest",
}


def __getattr__(name: str) -> Any:
    """The names of :data:`_MOVED`, with a ``DeprecationWarning`` naming their module."""
    if name in _MOVED:
        module = f"longiseg.data.{_MOVED[name]}"
        warnings.warn(f"longiseg.data.loading.{name} moved to {module}.{name} (0.3.13)", DeprecationWarning,
                      stacklevel=2)
        import importlib

        return getattr(importlib.import_module(module), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
