"""Register raw longitudinal scans into the library layout: ``longiseg register RAW OUT``.

``RAW`` uses the library's file names (``CASE/t{k}_{modality}.nii.gz``; optional ``baseline_mask.nii.gz``
and ``brain_mask.nii.gz`` in baseline space, ``progression_t{k}.nii.gz`` in follow-up ``k``'s space, or in
baseline space with ``progression_space="baseline"`` for annotations drawn after an earlier alignment), but
every file may have its own grid: voxel size, shape and orientation. Per case:

1. optional N4 bias-field correction of every image;
2. each follow-up's reference modality (FLAIR by default) is registered to the baseline's
   (:func:`~longiseg.registration.pairwise.register_pair`: rigid or affine, Mattes mutual information,
   multi-resolution), the metric restricted to the brain mask (or the baseline's Otsu foreground);
3. the other modalities of a session follow their session's transform (the session shares scanner
   coordinates), or are registered rigidly to the session's reference modality (``register_modalities``);
4. everything is resampled onto one grid, the baseline reference's own or an isotropic grid with the same
   orientation and field of view (``spacing``): linear or B-spline for images, and for masks linear
   interpolation of the 0/1 mask kept where >= 0.5 (default; ``mask_interpolation="nearest"`` too); a mask
   with voxels in the raw data and none after resampling (a one-voxel lesion, a coarse ``spacing``) fails its
   case, logged as a warning and in ``registration.csv``, and nothing of the case but its QC record is written:
   written, a progressing case would read as stable;
5. quality check per follow-up: normalised mutual information and correlation with the baseline inside
   the brain, before (scanner coordinates) and after registration on the baseline's grid, and after
   registration at the pair's common resolution (``checked``: on a grid in the follow-up's orientation with,
   along each axis, the coarser of the two voxel sizes, where neither image carries detail the other lacks, so
   an aligned thick-slice follow-up scores as high as a fine one; see
   :func:`~longiseg.registration.pairwise.similarity_at_common_resolution`), how far the transform moves the
   brain centre and rotates it (and scales, for affine), and a checkerboard PNG in three planes.

A follow-up **fails** when registration raises, its correlation after registration at the common resolution
is below ``min_correlation``, registration made it worse (a lower similarity while moving some brain voxel by more than
a voxel), or the transform moves the brain more than
``max_translation_mm``/``max_rotation_deg`` (or scales it by more than ``max_scale_change``). A case with a
failed follow-up is reported (``registration.csv``/``.json`` and the command's exit status) and its images
are not written, unless ``keep_failed`` (a follow-up whose registration raised is then written as the scanner
placed it, with an identity transform); it is never silently passed on. The raw cases must share one
modality set (checked from file names before any case is read).

A case whose input is unusable fails as a whole before anything of it is written: a missing or unreadable
file, NaN/inf intensities, an image whose voxels are all equal (a blank, e.g. all-zero, export: registration
cannot use it, and a modality that follows its session's transform would be written as a blank image), a
mask with values other than 0 and 1 (soft or label masks are refused, not binarised: the message names the
file and the values found), an affine with a shear, an empty brain mask.
Any other error while a case is registered or written (a SimpleITK error outside the follow-ups' pair
registration, memory) is recorded as that case's failure too; the case folder is built in a temporary
folder and renamed when complete, so a failed case never leaves a partial folder, and the other cases go on.
Arguments are checked before any case is read: the options, the output folder (not a file, writable, apart
from ``RAW``), and the output grid that ``spacing`` gives every case (at most :data:`MAX_OUTPUT_VOXELS`
voxels, and at least 2 along every axis the baseline images with more than one voxel).

Reproducible: the same raw scans and options give the same transforms, QC numbers and images, bit for bit
(see :class:`~longiseg.registration.pairwise.PairOptions`; with ``n4``, for the same number of ITK threads).

Written (every file atomically, every case folder as a whole)::

    OUT/manifest.json                       # the cases written by this run: passed (and kept failed) ones
    OUT/registration.csv, registration.json # one row per follow-up: status, reasons, QC numbers
    OUT/CASE/t0_flair.nii.gz ...            # library layout on one grid
    OUT/CASE/registration/t1.tfm            # follow-up 1: baseline (output) space -> native space (ITK, LPS)
    OUT/CASE/registration/t1_qc.png         # checkerboard baseline / registered follow-up, three planes
    OUT/CASE/registration/registration.json # options, output grid, native grids, QC of every follow-up
"""

from __future__ import annotations

import contextlib
import math
import re
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from longiseg.data import layout
from longiseg.data.claims import FOLDER_CLAIM, claim_folder, release_claim
from longiseg.data.cohort import cohort_manifest
from longiseg.data.manifest import Manifest, ManifestEntry, write_manifest
from longiseg.data.volumes import read_mask, read_volume
from longiseg.registration.grid import (
    Grid,
    from_sitk,
    isotropic_grid,
    isotropic_sizes,
    require_simpleitk,
    to_sitk,
)
from longiseg.registration.pairwise import (
    PairOptions,
    common_resolution_grid,
    foreground_mask,
    n4_correct,
    register_pair,
    resample,
    similarity,
    similarity_at_common_resolution,
    transform_motion,
)
from longiseg.utils.io import (
    PathLike,
    atomic_directory,
    atomic_path,
    atomic_write,
    atomic_write_json,
    check_input_folder,
    check_output_folder,
    check_replaceable,
    check_separate_folders,
    csv_text,
    folder_is_empty,
)
from longiseg.utils.logging import get_logger
from longiseg.utils.masks import format_spacing
from longiseg.utils.nifti import atomic_save_nifti, load_nifti, spatial_header
from longiseg.utils.plotting import require_matplotlib
from longiseg.utils.validation import check_bool, check_instance, check_path, check_positive_int

__all__ = ["MAX_OUTPUT_VOXELS", "RegistrationOptions", "CaseRegistration", "register_case", "register_folder",
           "transform_filename"]

_LOG = get_logger("longiseg.registration")
CASE_RECORD = "registration.json"
QC_DIR = "registration"
#: Most voxels of an output grid chosen with ``spacing``: 2**28 (268 million; 1 GiB per float32 volume, a
#: 256 mm field of view at 0.4 mm). A finer spacing is refused before anything is written.
MAX_OUTPUT_VOXELS = 2**28


def transform_filename(followup: int, modality: str | None = None) -> str:
    """``t1.tfm`` (follow-up 1's reference modality) or ``t1_t2.tfm`` (a modality registered on its own)."""
    check_positive_int("followup", followup, minimum=0)
    return f"t{followup}.tfm" if modality is None else f"t{followup}_{modality}.tfm"


@dataclass(frozen=True)
class RegistrationOptions:
    """Settings of :func:`register_case` / :func:`register_folder` (see the module docstring).

    Attributes:
        reference_modality: the modality registered between sessions.
        pair: optimiser settings, including ``transform`` (``"rigid"`` or ``"affine"``).
        register_modalities: register the other modalities to their session's reference (rigid) instead
            of letting them follow its transform.
        n4: N4 bias-field correction before registration (the corrected images are written).
        spacing: isotropic output voxel size in mm (``None``: the baseline reference's grid); a finite
            number > 0 whose grid over the baseline's field of view has at most :data:`MAX_OUTPUT_VOXELS`
            voxels and at least 2 along every axis of more than one baseline voxel (checked per case before
            anything is written; by :func:`register_folder` for every case before the first one is registered).
        interpolation: ``"linear"`` or ``"bspline"`` for images.
        mask_interpolation: ``"linear"`` (0/1 mask interpolated, kept where >= 0.5) or ``"nearest"``. A case
            with a mask that this empties (voxels in the raw data, none on the output grid) fails.
        min_correlation: a follow-up whose correlation with the baseline in the brain after registration, at
            the pair's common resolution, is lower fails (compared where the registered follow-up images the
            brain: a smaller field of view lowers no score, nor do thick slices).
        min_coverage: a registered follow-up that images a smaller share of the baseline's brain fails.
        max_translation_mm, max_rotation_deg: largest plausible motion of the brain centre / rotation.
        max_scale_change: largest plausible scaling of an affine transform (0.15: scales 0.85-1.15).
        qc_figures: write the checkerboard PNGs (needs matplotlib).
        keep_failed: also write the images of failed cases (still reported as failed).
        progression_space: where the raw ``progression_t{k}`` masks lie: ``"followup"`` (default; they
            follow their follow-up's transform) or ``"baseline"`` (already in baseline space, e.g. drawn on
            a follow-up aligned before; resampled like the baseline mask, without a transform).
    """

    reference_modality: str = "flair"
    pair: PairOptions = field(default_factory=PairOptions)
    register_modalities: bool = False
    n4: bool = False
    spacing: float | None = None
    interpolation: str = "linear"
    mask_interpolation: str = "linear"
    min_correlation: float = 0.7
    min_coverage: float = 0.5
    max_translation_mm: float = 50.0
    max_rotation_deg: float = 30.0
    max_scale_change: float = 0.15
    qc_figures: bool = True
    keep_failed: bool = False
    progression_space: str = "followup"

    def __post_init__(self) -> None:
        check_instance("reference_modality", self.reference_modality, str, "a modality name (str)")
        object.__setattr__(self, "reference_modality", self.reference_modality.lower())
        check_instance("pair", self.pair, PairOptions, "a PairOptions")
        for name in ("register_modalities", "n4", "qc_figures", "keep_failed"):
            object.__setattr__(self, name, check_bool(name, getattr(self, name)))
        if self.interpolation not in ("linear", "bspline"):
            raise ValueError(f"interpolation must be 'linear' or 'bspline', got {self.interpolation!r}")
        if self.progression_space not in ("followup", "baseline"):
            raise ValueError(f"progression_space must be 'followup' or 'baseline', got {self.progression_space!r}")
        if self.mask_interpolation not in ("linear", "nearest"):
            raise ValueError(f"mask_interpolation must be 'linear' or 'nearest', got {self.mask_interpolation!r}")
        if self.spacing is not None:
            if isinstance(self.spacing, bool) or not isinstance(self.spacing, (int, float, np.integer, np.floating)):
                raise TypeError(f"spacing must be a number of mm or None, got {type(self.spacing).__name__}")
            if not (math.isfinite(self.spacing) and self.spacing > 0):
                raise ValueError(f"spacing must be > 0 mm and finite, or None, got {self.spacing}")
            object.__setattr__(self, "spacing", float(self.spacing))
        for name in ("max_translation_mm", "max_rotation_deg", "max_scale_change"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)}")
        if not -1.0 <= self.min_correlation <= 1.0:
            raise ValueError(f"min_correlation must lie in [-1, 1], got {self.min_correlation}")
        if not 0.0 <= self.min_coverage <= 1.0:
            raise ValueError(f"min_coverage must lie in [0, 1], got {self.min_coverage}")

    def to_dict(self) -> dict[str, Any]:
        """JSON-able record."""
        return asdict(self)


@dataclass
class CaseRegistration:
    """Outcome of one case.

    Attributes:
        case_id: the case.
        followups: one QC record per follow-up (``status`` ``"ok"``/``"failed"``, ``reasons``, similarity
            before/after, motion, optimiser result, seconds).
        error: why the whole case failed: before any follow-up was registered (unreadable input...), while
            it was registered or written, or because a mask with voxels in the raw data has none on the output
            grid (its images and masks are then not written).
        written: whether its images were written to the output layout.
    """

    case_id: str
    followups: list[dict[str, Any]] = field(default_factory=list)
    error: str = ""
    written: bool = False

    @property
    def ok(self) -> bool:
        """No case error and every follow-up passed."""
        return not self.error and all(f["status"] == "ok" for f in self.followups)


def _read(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """``(array (D, H, W) float32, affine (4, 4))`` of one raw volume (:func:`~longiseg.data.volumes.read_volume`,
    which also checks its geometry: header and affine, qform and sform agree).

    Raises:
        ValueError: naming ``path``: not 3D, NaN/inf voxels, all voxels equal (blank), a sheared affine, a
            header that describes two grids.
    """
    arr, affine, _ = read_volume(path, what="raw volume", dtype=np.float32)
    if arr.size and float(arr.min()) == float(arr.max()):  # exact: a scan's voxels are never all equal
        raise ValueError(f"raw volume {path} is blank: every voxel is {float(arr.flat[0]):g} (an empty or failed "
                         "export); a constant image can be neither registered nor segmented")
    return arr, affine


def _native_grid_record(shape: tuple[int, ...], affine: np.ndarray, path: Path) -> dict[str, Any]:
    """The record of a raw file's grid in ``registration.json``: :meth:`Grid.to_dict` plus its spatial header
    (qform, sform, codes, units; ``None`` where it sets neither form), which masks mapped back onto the grid
    carry (:func:`~longiseg.registration.native.case_to_native`)."""
    header = spatial_header(load_nifti(path, what="raw volume", header_only=True).header)
    return {**Grid(shape, affine).to_dict(), "header": None if header is None else asdict(header)}  # type: ignore[arg-type]


def _raw_files(folder: Path) -> dict[int, dict[str, Path]]:
    found = layout.scan_images(folder)
    if 0 not in found or len(found) < 2 or sorted(found) != list(range(len(found))):
        raise ValueError(f"case {folder.name!r}: needs images t0_*, t1_*, ... without gaps, found timepoints "
                         f"{sorted(found)}")
    return found


def _field_of_view(moving: Any, fixed: Any, transform: Any) -> np.ndarray:
    """``(D, H, W)`` bool on ``fixed``'s grid: the voxels that ``moving`` images once mapped through ``transform``."""
    sitk = require_simpleitk()
    ones = sitk.Image(moving.GetSize(), sitk.sitkUInt8) + 1
    ones.CopyInformation(moving)
    return from_sitk(resample(ones, fixed, transform, interpolation="nearest"))[0] > 0


def _check_motion(q: dict[str, Any], opts: RegistrationOptions, voxel_mm: float) -> list[str]:
    """Why a registered follow-up fails the quality check (``[]``: it passes); ``voxel_mm`` is the
    smallest voxel edge of the baseline grid. Similarities are those of the brain voxels the follow-up images.

    "Registration made it worse" needs more than a lower similarity: when scanner coordinates already align
    the follow-up on the baseline's grid, the similarity before registration is computed without
    interpolation and the registered one with it, so a registration that stays within a voxel of the start
    scores a little lower without being wrong. It fails only when it also moved some brain voxel by more
    than a voxel.
    """
    reasons = []
    mo, after, before = q["motion"], q["after"], q["before"]
    if q["brain_coverage"] < opts.min_coverage:
        reasons.append(f"the registered follow-up images {q['brain_coverage']:.0%} of the baseline's brain "
                       f"(< {opts.min_coverage:.0%}; a failed registration, or a field of view smaller by design: "
                       "then lower --min-coverage)")
    checked = q["checked"]["correlation"]
    if checked < opts.min_correlation:
        reasons.append(f"correlation after registration {checked:.3f} < {opts.min_correlation} (at "
                       f"{format_spacing(q['checked_voxel_mm'])} mm, the pair's common resolution; another patient, "
                       "wrong modality or failed registration?)")
    if after["nmi"] < before["nmi"] - 1e-3 and mo["max_displacement_mm"] > voxel_mm:
        reasons.append(f"registration lowered the similarity (NMI {before['nmi']:.3f} -> {after['nmi']:.3f}) "
                       f"while moving the brain by up to {mo['max_displacement_mm']:.1f} mm")
    if mo["translation_mm"] > opts.max_translation_mm:
        reasons.append(f"brain centre moved {mo['translation_mm']:.1f} mm > {opts.max_translation_mm} mm (if the "
                       "sessions' scanner coordinates differ this much and the QC checkerboard is aligned, raise "
                       "--max-translation)")
    if mo["rotation_deg"] > opts.max_rotation_deg:
        reasons.append(f"rotation {mo['rotation_deg']:.1f} deg > {opts.max_rotation_deg} deg")
    if max(abs(s - 1.0) for s in mo["scales"]) > opts.max_scale_change:
        reasons.append(f"scaling {[round(s, 3) for s in mo['scales']]} beyond 1 +- {opts.max_scale_change}")
    return reasons


def _write_tfm(transform: Any, path: Path) -> None:
    sitk = require_simpleitk()
    with atomic_path(path, suffix=".tfm") as tmp:
        sitk.WriteTransform(transform, str(tmp))


def _itk_message(err: BaseException) -> str:
    """The last line of a SimpleITK error without the object addresses ITK prints
    (``ImageMomentsCalculator(0x555d5a0264c0): ...`` -> ``ImageMomentsCalculator: ...``)."""
    lines = str(err).strip().splitlines()
    return re.sub(r"\(0x[0-9a-fA-F]+\)", "", lines[-1].strip() if lines else str(err))


def _error_text(err: BaseException) -> str:
    """One line for a recorded failure: the last line of a SimpleITK error (the first ones name C++ sources),
    else the message, after the exception's type."""
    text = _itk_message(err) if isinstance(err, RuntimeError) else " ".join(str(err).split())
    name = type(err).__name__.lstrip("_")  # numpy's _ArrayMemoryError
    return f"{name}: {text}" if text else name


def _check_options(options: RegistrationOptions | None) -> RegistrationOptions:
    """``options``, or the default :class:`RegistrationOptions` for ``None``."""
    if options is None:
        return RegistrationOptions()
    return check_instance("options", options, RegistrationOptions, "a RegistrationOptions or None")


def _check_qc_backend(opts: RegistrationOptions) -> None:
    """Refuse ``qc_figures`` without matplotlib before any case is read (not one failure per case)."""
    if opts.qc_figures:
        require_matplotlib("the registration QC figures", "pass qc_figures=False (--no-qc-figures)")


def _output_grid(base: Grid, spacing: float | None, where: str) -> Grid:
    """The output grid of a case whose baseline reference lies on ``base`` (``where`` names it in messages).

    Raises:
        ValueError: ``spacing`` gives more than :data:`MAX_OUTPUT_VOXELS` voxels over the baseline's field of
            view (checked before any volume of that grid is made), or fewer than 2 voxels along an axis that
            the baseline images with more than one (a spacing not below that axis's field of view: every
            lesion would vanish). An axis of one voxel (a single slice) may stay one voxel thick.
    """
    if spacing is None:
        return base
    sizes = isotropic_sizes(base, spacing)  # before the grid: a tiny spacing's affine is refused as singular
    with np.errstate(over="ignore"):
        count = float(np.prod(sizes))
    extent = np.asarray(base.shape, dtype=np.float64) * base.spacing
    if not count <= MAX_OUTPUT_VOXELS:  # inf too
        raise ValueError(f"{where}: spacing {spacing:g} mm gives an output grid of "
                         f"{' x '.join(f'{s:.6g}' for s in sizes)} = {count:.3g} voxels over its "
                         f"{' x '.join(f'{e:.0f}' for e in extent)} mm field of view, more than the limit of "
                         f"{MAX_OUTPUT_VOXELS} (2**28, 1 GiB per float32 volume); choose a larger spacing")
    shape = tuple(int(n) for n in sizes)  # finite: within the limit
    collapsed = [i for i, (n, m) in enumerate(zip(base.shape, shape)) if n > 1 and m < 2]
    if collapsed:
        imaged = min(float(e) for n, e in zip(base.shape, extent) if n > 1)  # the thinnest axis of > 1 voxel
        raise ValueError(f"{where}: spacing {spacing:g} mm gives an output grid of "
                         f"{' x '.join(str(s) for s in shape)} voxels over its "
                         f"{' x '.join(f'{e:g}' for e in np.round(extent, 2))} mm field of view: fewer than 2 "
                         f"voxels along {'axis' if len(collapsed) == 1 else 'axes'} "
                         f"{', '.join(str(i) for i in collapsed)}, where the baseline has "
                         f"{', '.join(str(base.shape[i]) for i in collapsed)} (a spacing coarser than the field of "
                         f"view: its lesions would vanish); choose a spacing (--spacing) below {imaged:g} mm, the "
                         "baseline's smallest extent along an axis of more than one voxel")
    return isotropic_grid(base, spacing)  # shape and affine only: nothing of that size is allocated here


@dataclass
class _CaseInput:
    """A raw case read and checked, nothing written yet: the images and masks (masks binary, uint8) as
    ``(array (D, H, W), RAS+ affine (4, 4))``, the same images as SimpleITK images, the brain mask of the
    metric on the baseline reference's grid and the output grid."""

    name: str
    files: dict[int, dict[str, Path]]
    mods: list[str]
    images: dict[tuple[int, str], tuple[np.ndarray, np.ndarray]]
    masks: dict[str, tuple[np.ndarray, np.ndarray]]
    sitk_images: dict[tuple[int, str], Any]
    brain: Any
    out_grid: Grid
    mask_paths: dict[str, Path] = field(default_factory=dict)


def _read_case(folder: Path, opts: RegistrationOptions) -> _CaseInput:
    """Read and check one raw case (file names, modalities, volumes, binary masks, output grid, brain mask).

    Raises:
        OSError, ValueError: naming the case and the file.
    """
    files = _raw_files(folder)
    mods = sorted(files[0])
    ref = opts.reference_modality
    label = f"case {folder.name!r}"
    if ref not in mods:
        raise ValueError(f"{label}: reference modality {ref!r} not among {mods}")
    for t, fm in files.items():
        if sorted(fm) != mods:
            raise ValueError(f"{label}: timepoint {t} has modalities {sorted(fm)}, baseline {mods}")
    images = {(t, m): _read(p) for t, fm in files.items() for m, p in fm.items()}
    base_arr, base_aff = images[(0, ref)]
    out_grid = _output_grid(Grid(base_arr.shape, base_aff), opts.spacing,  # type: ignore[arg-type]
                            f"{label}: baseline {files[0][ref]}")
    layout.check_progression_masks_have_images(folder, max(files) + 1, label)  # not left behind without a word
    masks: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    mask_paths: dict[str, Path] = {}
    for name in [layout.BASELINE_MASK, layout.BRAIN_MASK] + [layout.progression_filename(k) for k in files if k]:
        path = layout.find_nifti(folder, name)
        if path is not None:  # binary (values 0/1) or refused, naming the file and the values found
            masks[name] = read_mask(path, what=f"{label}: mask")[:2]
            mask_paths[name] = path
    sitk_images = {key: to_sitk(a, aff) for key, (a, aff) in images.items()}
    fixed = sitk_images[(0, ref)]
    if layout.BRAIN_MASK in masks:
        brain = resample(to_sitk(*masks[layout.BRAIN_MASK]), fixed, interpolation="nearest")
        source = f"brain mask {mask_paths[layout.BRAIN_MASK]}"
    else:
        brain = foreground_mask(fixed)
        source = f"foreground (Otsu) of {files[0][ref]}"
    if int(from_sitk(brain)[0].astype(bool).sum()) < 2:
        raise ValueError(f"{label}: the {source} covers fewer than 2 voxels of the baseline {ref!r} image; "
                         "nothing to register")
    return _CaseInput(folder.name, files, mods, images, masks, sitk_images, brain, out_grid, mask_paths)


def register_case(raw_case: PathLike, out_root: PathLike, options: RegistrationOptions | None = None, *,
                  overwrite: bool = False) -> CaseRegistration:
    """Register one raw case folder and write it into ``out_root/<case>`` (see the module docstring).

    The case is read and checked first (nothing written), then its folder is built in a temporary folder
    next to ``out_root/<case>`` and renamed into place when complete: a case that fails on the way, for
    whatever reason, leaves no partial folder (and an older folder of the case stays as it was). A case
    whose follow-up fails the quality check is complete too: its folder holds the QC record (``registration/``)
    and, only with ``keep_failed``, the images.

    Args:
        raw_case: the raw case folder; its name is the case id.
        out_root: output root.
        options: :class:`RegistrationOptions` (default: the defaults).
        overwrite: replace an existing ``out_root/<case>`` folder, as a whole.

    Returns:
        A :class:`CaseRegistration`. Problems of the input (``error``, nothing written), of a follow-up
        (its ``reasons``; the QC record is written, the images only with ``keep_failed``) and any other
        error while the case is registered or written (``error``, nothing written) are recorded in it, not
        raised: a folder keeps going when one case fails.

    Raises:
        ImportError: SimpleITK is missing (``pip install 'longiseg[register]'``), or matplotlib with
            ``qc_figures``.
        FileExistsError: ``out_root/<case>`` exists and ``overwrite`` is off.
        NotADirectoryError: ``out_root/<case>`` exists and is not a folder.
    """
    require_simpleitk()
    opts = _check_options(options)
    overwrite = check_bool("overwrite", overwrite)
    _check_qc_backend(opts)
    folder = check_path("raw_case", raw_case)
    case_dir = check_path("out_root", out_root) / folder.name
    if case_dir.exists() and not case_dir.is_dir():
        raise NotADirectoryError(f"{case_dir} exists and is not a folder")
    if case_dir.exists() and not overwrite:
        raise FileExistsError(f"{case_dir} already exists; pass overwrite=True (--overwrite) to replace it")
    res = CaseRegistration(folder.name)
    try:
        inp = _read_case(folder, opts)
    except (OSError, ValueError) as err:
        res.error = str(err)
        return res
    try:
        with atomic_directory(case_dir, overwrite=overwrite) as tmp:
            written = _register_into(inp, tmp, opts, res)
        res.written = written
    except Exception as err:  # noqa: BLE001 - recorded as this case's failure; its folder was not written
        _LOG.debug("case %s failed", folder.name, exc_info=True)
        res.error = f"error while registering ({_error_text(err)}); nothing written for this case"
        res.written = False
    return res


def _register_into(inp: _CaseInput, case_dir: Path, opts: RegistrationOptions, res: CaseRegistration) -> bool:
    """Register the follow-ups of ``inp``, record their QC in ``res`` and write the case into the (empty,
    temporary) ``case_dir``: QC always, images and masks when every follow-up passed or ``keep_failed``.

    Returns:
        Whether the images were written.
    """
    sitk = require_simpleitk()
    name, files, mods, images = inp.name, inp.files, inp.mods, inp.images
    ref = opts.reference_modality
    qc_dir = case_dir / QC_DIR
    sitk_images = inp.sitk_images
    base_arr, base_aff = images[(0, ref)]
    out_grid, brain = inp.out_grid, inp.brain
    if opts.n4:
        sitk_images = {key: n4_correct(img) for key, img in sitk_images.items()}
    fixed = sitk_images[(0, ref)]
    brain_np = from_sitk(brain)[0].astype(bool)
    fixed_np = from_sitk(fixed)[0]
    voxels = np.argwhere(brain_np)
    centre_lps = np.asarray(brain.TransformContinuousIndexToPhysicalPoint([float(v) for v in voxels.mean(axis=0)]))
    # the corners of the brain's bounding box: an affine map moves no brain voxel further than one of them
    lo, hi = voxels.min(axis=0), voxels.max(axis=0)
    corners_lps = [np.asarray(brain.TransformContinuousIndexToPhysicalPoint([float(v) for v in c]))
                   for c in np.stack(np.meshgrid(*zip(lo, hi), indexing="ij"), -1).reshape(-1, 3)]
    voxel_mm = float(min(fixed.GetSpacing()))
    identity = sitk.Transform(3, sitk.sitkIdentity)
    transforms: dict[tuple[int, str], Any] = {}
    record: dict[str, Any] = {"case_id": name, "options": opts.to_dict(), "output_grid": out_grid.to_dict(),
                              "native_grids": {f"t{t}_{m}": _native_grid_record(a.shape, aff, files[t][m])
                                               for (t, m), (a, aff) in images.items()},
                              "followups": []}
    for t in sorted(files):
        if t == 0:
            transforms[(0, ref)] = identity
        else:
            start = time.perf_counter()
            # a minute or more per follow-up at clinical sizes, under a bar that counts cases: say what runs
            _LOG.info("case %s: registering follow-up %d of %d to the baseline (%s)", name, t, len(files) - 1, ref)
            moving = sitk_images[(t, ref)]
            q: dict[str, Any] = {"followup": t, "status": "ok", "reasons": []}
            try:
                tx, info = register_pair(fixed, moving, fixed_mask=brain, options=opts.pair)
                moved = from_sitk(resample(moving, fixed, tx))[0]
                # compared where the follow-up imaged the brain: a smaller field of view is no misregistration
                imaged = brain_np & _field_of_view(moving, fixed, tx)
                n_imaged = int(imaged.sum())
                q["brain_coverage"] = n_imaged / int(brain_np.sum())
                compared = imaged if n_imaged >= 2 else brain_np
                q["before"] = similarity(fixed_np, from_sitk(resample(moving, fixed))[0], compared)
                q["after"] = similarity(fixed_np, moved, compared)
                # checked where neither image carries detail the other lacks: a thick-slice follow-up compared
                # with the baseline's detail scores low however well it is aligned
                grid = common_resolution_grid(fixed, moving, tx)
                try:
                    q["checked"] = similarity_at_common_resolution(fixed, moving, tx, compared, grid=grid)
                except ValueError:  # < 2 compared voxels at that resolution (a sliver of brain imaged): the baseline's
                    q["checked"], grid = dict(q["after"]), fixed
                q["checked_voxel_mm"] = [round(v, 3) for v in grid.GetSpacing()]
                q["motion"] = transform_motion(tx, centre_lps)
                q["motion"]["max_displacement_mm"] = max(
                    float(np.linalg.norm(np.asarray(tx.TransformPoint([float(v) for v in c])) - c)) for c in corners_lps)
                q["optimiser"] = info
                q["reasons"] = _check_motion(q, opts, voxel_mm)
                transforms[(t, ref)] = tx
                _write_tfm(tx, qc_dir / transform_filename(t))
                if opts.qc_figures:
                    from longiseg.registration.qc_figure import checkerboard_figure

                    checkerboard_figure(fixed_np, moved, base_aff, qc_dir / f"t{t}_qc.png",
                                        title=f"{name}: baseline / follow-up {t} registered")
            except RuntimeError as err:  # SimpleITK errors (e.g. no overlap left)
                q["reasons"] = [f"registration error: {_itk_message(err)}"]
                if opts.keep_failed:  # kept as the scanner placed it, so the kept case has every timepoint
                    transforms[(t, ref)] = identity
                    q["transform"] = "identity (scanner coordinates; registration failed)"
                    _write_tfm(identity, qc_dir / transform_filename(t))
            q["status"] = "failed" if q["reasons"] else "ok"
            q["seconds"] = round(time.perf_counter() - start, 2)
            res.followups.append(q)  # failures are reported once, by the caller (the command: one line each)
        for m in mods:
            if m == ref or (t, ref) not in transforms:
                continue
            transforms[(t, m)] = transforms[(t, ref)]  # follows its session's reference
            if opts.register_modalities:
                rigid = PairOptions(**{**asdict(opts.pair), "transform": "rigid"})
                try:
                    tm, _ = register_pair(sitk_images[(t, ref)], sitk_images[(t, m)], options=rigid)
                    transforms[(t, m)] = sitk.CompositeTransform([tm, transforms[(t, ref)]])
                except RuntimeError as err:  # SimpleITK: this follow-up fails; kept, m follows the reference
                    if t == 0:
                        raise
                    q["reasons"].append(f"registration of {m} to {ref} within the session: {_itk_message(err)}")
                    q["status"] = "failed"
                _write_tfm(transforms[(t, m)], qc_dir / transform_filename(t, m))
    record["followups"] = res.followups
    ref_img = out_grid.reference()
    out_masks: dict[str, np.ndarray] = {}
    if res.ok or opts.keep_failed:  # the masks that would be written: none may lose all its voxels
        out_masks = _resample_masks(inp, opts, transforms, ref_img)
        res.error = _lost_masks_error(inp, opts, out_masks)
        if res.error:
            record["error"] = res.error
    atomic_write_json(qc_dir / CASE_RECORD, record, overwrite=True)
    if res.error or (not res.ok and not opts.keep_failed):
        return False
    for (t, m), tx in transforms.items():
        if t == 0 and m == ref and opts.spacing is None and not opts.n4:  # already on the output grid
            arr = base_arr
        else:
            arr = from_sitk(resample(sitk_images[(t, m)], ref_img, tx, interpolation=opts.interpolation))[0]
        atomic_save_nifti(arr, out_grid.affine, case_dir / layout.image_filename(t, m), dtype=np.float32)
    for mask_name, out in out_masks.items():
        atomic_save_nifti(out, out_grid.affine, case_dir / mask_name, dtype=np.uint8)
    return True


def _resample_masks(inp: _CaseInput, opts: RegistrationOptions, transforms: dict[tuple[int, str], Any],
                    ref_img: Any) -> dict[str, np.ndarray]:
    """The raw masks of ``inp`` on the output grid ``ref_img`` (bool ``(D, H, W)`` by file name), each moved by
    its session's transform (a progression mask by the baseline's with ``progression_space="baseline"``); a
    mask whose follow-up has no transform (it failed, ``keep_failed`` off) is left out."""
    ref = opts.reference_modality
    out_masks: dict[str, np.ndarray] = {}
    for mask_name, (arr, aff) in inp.masks.items():
        t = int(mask_name[len("progression_t"):].split(".")[0]) if mask_name.startswith("progression_t") else 0
        if (t, ref) not in transforms:  # its follow-up failed (and keep_failed is off for it)
            continue
        tx = transforms[(0 if opts.progression_space == "baseline" else t, ref)]
        src = to_sitk(arr.astype(np.float32), aff)  # 0/1: read_mask refused anything else
        if opts.mask_interpolation == "nearest":
            out_masks[mask_name] = from_sitk(resample(src, ref_img, tx, interpolation="nearest"))[0] > 0
        else:
            out_masks[mask_name] = from_sitk(resample(src, ref_img, tx, interpolation="linear"))[0] >= 0.5
    return out_masks


def _lost_masks_error(inp: _CaseInput, opts: RegistrationOptions, out_masks: dict[str, np.ndarray]) -> str:
    """Why the case cannot be written because a mask with voxels in the raw data has none on the output grid
    (``""``: every mask kept some), each such mask logged as a warning.

    Written, such a mask would silently change the case: a progression mask emptied on the way turns a
    progressing case into a stable one (the manifest's ``progression`` flag is read from the written masks,
    and a flag kept true would contradict them: every reader refuses that), and an emptied baseline mask
    drops the baseline lesions. The case fails instead (``registration.csv``, the command's exit status).
    """
    lost: list[tuple[str, str]] = []
    for mask_name, out in out_masks.items():
        raw_count = int(np.count_nonzero(inp.masks[mask_name][0]))
        if raw_count and not out.any():
            path = inp.mask_paths.get(mask_name, mask_name)
            _LOG.warning("case %r: mask %s has %d voxel(s) in the raw data but none after resampling onto the "
                         "output grid; the case is not written", inp.name, path, raw_count)
            lost.append((mask_name, f"{path} ({raw_count} voxel{'s' if raw_count != 1 else ''} in the raw data)"))
    if not lost:
        return ""
    vox = format_spacing(np.round(inp.out_grid.spacing, 3))
    how = ("linear interpolation kept where >= 0.5" if opts.mask_interpolation == "linear"
           else "nearest-neighbour interpolation")
    fixes = (["mask_interpolation='nearest' (--mask-interpolation nearest)"] if opts.mask_interpolation == "linear"
             else [])
    fixes.append(f"a finer spacing than {opts.spacing:g} mm (--spacing)" if opts.spacing is not None
                 else "a spacing (--spacing) finer than the baseline's voxels")
    one = len(lost) == 1
    stable = (" (a progressing case would read as stable)" if any(n.startswith("progression_t") for n, _ in lost)
              else "")
    return (f"case {inp.name!r}: {'mask' if one else 'masks'} {', '.join(t for _, t in lost)} "
            f"{'is' if one else 'are'} empty after resampling onto the {vox} mm output grid ({how}); nothing "
            f"written for this case, which would lose those lesions{stable}: register it with {' or '.join(fixes)}")


def _check_output_grids(cases: Sequence[Path], opts: RegistrationOptions) -> None:
    """Refuse a ``spacing`` that gives any case too large an output grid (headers only, nothing written).

    A baseline reference that is missing or unreadable is skipped here: that case fails on its own later.
    """
    for case in cases:
        path = layout.scan_images(case).get(0, {}).get(opts.reference_modality)
        if path is None:
            continue
        try:
            img = load_nifti(path, what="raw volume", header_only=True)
            base = Grid(tuple(img.shape[:3]), np.asarray(img.affine, dtype=np.float64))  # type: ignore[arg-type]
        except (OSError, ValueError):
            continue
        _output_grid(base, opts.spacing, f"case {case.name!r}: baseline {path}")


def _check_modalities(found: Mapping[str, tuple[str, ...]]) -> tuple[str, ...]:
    """The modalities (sorted) that the baselines of the raw cases share, from ``{case folder name: its baseline's
    modalities, sorted}``; refuse raw cases whose baselines hold different ones: the output is one cohort, whose
    manifest lists one modality order. A case folder without ``t0_*`` images (``()``) is not skipped: it fails as
    a case (reported in ``registration.csv``)."""
    sets = {m for m in found.values() if m}
    if len(sets) > 1:
        groups = {m: [c for c, cm in found.items() if cm == m] for m in sorted(sets)}
        shown = "; ".join(f"{list(m)}: {ids[:3]}{' ...' if len(ids) > 3 else ''}" for m, ids in groups.items())
        raise ValueError(f"the raw cases hold different modalities ({shown}); one output cohort needs one set: "
                         "register each set into its own folder")
    return next(iter(sets), ())


def _summary_rows(results: Sequence[CaseRegistration]) -> list[dict[str, Any]]:
    rows = []
    for r in results:
        if r.error:
            rows.append({"case_id": r.case_id, "followup": "", "status": "failed", "reasons": r.error})
        for q in r.followups:
            row = {"case_id": r.case_id, "followup": q["followup"], "status": q["status"],
                   "reasons": "; ".join(q["reasons"])}
            for when in ("before", "after", "checked"):
                for k, v in q.get(when, {}).items():
                    row[f"{k}_{when}"] = round(v, 4)
            row["checked_voxel_mm"] = format_spacing(q["checked_voxel_mm"]) if "checked_voxel_mm" in q else ""
            if "brain_coverage" in q:
                row["brain_coverage"] = round(q["brain_coverage"], 4)
            mo = q.get("motion", {})
            if mo:
                row["translation_mm"] = round(mo["translation_mm"], 3)
                row["rotation_deg"] = round(mo["rotation_deg"], 3)
            row["seconds"] = q.get("seconds", "")
            rows.append(row)
    return rows


def register_folder(raw: PathLike, out: PathLike, options: RegistrationOptions | None = None, *,
                    overwrite: bool = False, progress: bool = True) -> list[CaseRegistration]:
    """Register every case folder of ``raw`` into ``out`` (library layout) with a summary and a manifest.

    Everything that concerns the whole folder is checked before the first case is read, so a bad argument
    writes nothing: the output location, and the output grid of every case (from the baseline reference's
    header) when ``spacing`` is given. Each case folder is then written as a whole or not at all (see
    :func:`register_case`).

    ``overwrite`` writes into a non-empty ``out``: the folder of every case that is registered (passed or
    failed the quality check) is replaced as a whole, ``registration.csv``/``.json`` and ``manifest.json`` are
    replaced, and anything else is kept (the folder of a case whose input is unusable this time stays as it
    was). ``manifest.json`` lists only the cases written by this run (an earlier one is removed when no case
    was written), so ``longiseg predict``/``train`` do not read a case of an earlier run that failed this time.

    A manifest in ``raw`` (``manifest.json`` or ``manifest.csv``) is read as the cohort readers read one
    (:func:`~longiseg.data.cohort.cohort_manifest`): only its cases are registered (a case folder it does not list
    is warned about), with its patient ids and its modalities (the output manifest lists them in its order;
    every modality is registered).

    Returns:
        One :class:`CaseRegistration` per case; failed cases are listed in ``out/registration.csv``.

    Raises:
        FileNotFoundError: ``raw`` is missing or holds no case, or its manifest lists a case without a folder.
        NotADirectoryError: ``out`` or one of its parents is a file.
        PermissionError: ``out`` cannot be created or written, or (``overwrite``) a case folder it holds cannot
            be replaced (a read-only one): before any case is registered.
        FileExistsError: ``out`` is not empty and ``overwrite`` is off.
        ValueError: ``out`` is ``raw``, lies inside it or holds it; the name of a folder holding baseline images
            is not a valid case id (:func:`~longiseg.data.layout.check_case_id`); the baselines hold different
            modalities, or none named ``reference_modality``; ``spacing`` gives a case an output grid of more than
            :data:`MAX_OUTPUT_VOXELS` voxels, or of fewer than 2 voxels along an axis of more than one baseline
            voxel (a spacing coarser than the field of view); a raw manifest is malformed or names other
            modalities than the baselines hold.
        ImportError: SimpleITK is missing (``pip install 'longiseg[register]'``), or matplotlib with
            ``qc_figures``.
    """
    require_simpleitk()
    opts = _check_options(options)
    overwrite = check_bool("overwrite", overwrite)
    progress = check_bool("progress", progress)
    raw, out = check_path("raw", raw), check_path("out", out)
    check_input_folder(raw, "raw folder")
    cases = sorted(p for p in raw.iterdir() if p.is_dir() and not p.name.startswith("."))
    # a raw manifest is read as find_cases reads a cohort's: its cases only (the others are warned about), their
    # patient ids, its channel order (an unlisted case registered as its own patient could land in another split
    # than its patient's other sessions)
    manifest = cohort_manifest(raw)
    if manifest is not None:
        listed = {e.case_id for e in manifest.cases}
        absent = sorted(listed - {p.name for p in cases})
        if absent:
            raise FileNotFoundError(f"the raw manifest of {raw} lists case(s) without a folder: {absent[:5]}")
        cases = [p for p in cases if p.name in listed]
    baselines = {p.name: tuple(sorted(layout.scan_images(p).get(0, {}))) for p in cases}  # file names only
    with_images = [p for p in cases if baselines[p.name]]  # a side folder is reported as a failed case
    if not with_images:
        raise FileNotFoundError(f"no case folders with t0_*.nii.gz images in {raw}")
    for case in with_images:  # a case becomes a folder of out and a row of its manifest: refused before any is written
        layout.check_case_id(case.name, where=f"case folder {case}")
    modalities = _check_modalities(baselines)
    if modalities and opts.reference_modality not in modalities:
        raise ValueError(f"reference_modality {opts.reference_modality!r} (--reference-modality) is not among the "
                         f"raw baselines' modalities {list(modalities)}: choose one of them")
    if manifest is not None and manifest.modalities and modalities:  # its channels, in its order (as find_cases)
        lacking = [m for m in manifest.modalities if m not in modalities]
        if lacking:
            raise ValueError(f"the raw manifest of {raw} names the modalities {list(manifest.modalities)}, but the "
                             f"baselines hold {list(modalities)}, not {lacking}")
        modalities = tuple(manifest.modalities)  # every modality is registered; the manifest lists its channels
    check_output_folder(out, "out")
    check_separate_folders(out, "out", {"raw": raw})  # --overwrite would replace the raw case folders
    # early, before the grids are read; with a claim in out, the claim below names a live holder (instead of
    # telling the user to pass --overwrite) or takes over a killed one's, and the check follows it
    if out.exists() and not overwrite and not (out / FOLDER_CLAIM).exists() and not folder_is_empty(out):
        raise FileExistsError(f"{out} exists and is not empty; pass overwrite=True (--overwrite) to replace it")
    for case in cases if overwrite else ():  # an earlier case folder that cannot be replaced fails every case here,
        check_replaceable(out / case.name)  # not each one after its registration (and the manifest with them)
    _check_qc_backend(opts)
    if opts.spacing is not None:
        _check_output_grids(cases, opts)
    patients = {e.case_id: e.patient_id for e in manifest.cases} if manifest is not None else {}
    # a second register into out would mix its cases with ours; the claim of a killed one is taken over (it does
    # not make out look used), and a live one is named rather than told to pass --overwrite
    created = not out.exists()
    claim = claim_folder(out, "longiseg register")
    try:
        if not overwrite and not folder_is_empty(out, ignore={FOLDER_CLAIM}):  # written meanwhile
            raise FileExistsError(f"{out} exists and is not empty; pass overwrite=True (--overwrite) to replace it")
        return _register_and_summarise(cases, out, opts, overwrite, patients, modalities, progress)
    finally:
        release_claim(*claim)
        if created:
            with contextlib.suppress(OSError):  # a run that wrote nothing leaves no folder (rmdir: only if empty)
                out.rmdir()


def _register_and_summarise(cases: list[Path], out: Path, opts: RegistrationOptions, overwrite: bool,
                            patients: dict[str, str], modalities: tuple[str, ...], progress: bool
                            ) -> list[CaseRegistration]:
    """:func:`register_folder`'s work once the folders are checked and ``out`` claimed: every case, then
    ``registration.csv``/``.json`` and ``manifest.json``."""
    from tqdm.auto import tqdm

    results = [register_case(c, out, opts, overwrite=overwrite)
               for c in tqdm(cases, desc="register", unit="case", disable=not progress)]
    rows = _summary_rows(results)
    text = csv_text(rows)
    atomic_write(out / "registration.csv", lambda fh: fh.write(text), overwrite=True)
    atomic_write_json(out / "registration.json", {"options": opts.to_dict(), "cases": [
        {"case_id": r.case_id, "ok": r.ok, "written": r.written, "error": r.error, "followups": r.followups}
        for r in results]}, overwrite=True)
    entries = []
    for r in results:
        if not r.written:
            continue
        folder = out / r.case_id
        t_count = 1 + len(r.followups)
        prog = [folder / layout.progression_filename(k) for k in range(1, t_count)]
        flag = None
        if all(p.is_file() for p in prog) and (folder / layout.BASELINE_MASK).is_file():
            flag = any(bool(read_mask(p)[0].any()) for p in prog)
        entries.append(ManifestEntry(r.case_id, patients.get(r.case_id, r.case_id), t_count, flag))
    # the manifest lists this run's cases: one of an earlier run (--overwrite) must not stay when no case was
    # written, listing cases that failed this time (their folders now hold only the QC record)
    if entries:
        write_manifest(out / layout.MANIFEST_JSON, Manifest(modalities, tuple(entries)), overwrite=True)
    else:
        (out / layout.MANIFEST_JSON).unlink(missing_ok=True)
    return results

