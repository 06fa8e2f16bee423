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
   interpolation of the 0/1 mask kept where >= 0.5 (default; ``mask_interpolation="nearest"`` too);
5. quality check per follow-up: normalised mutual information and correlation with the baseline inside
   the brain, before (scanner coordinates) and after registration, how far the transform moves the brain
   centre and rotates it (and scales, for affine), and a checkerboard PNG in three planes.

A follow-up **fails** when registration raises, its correlation after registration is below
``min_correlation``, registration made it worse, or the transform moves the brain more than
``max_translation_mm``/``max_rotation_deg`` (or scales it by more than ``max_scale_change``). A case with a
failed follow-up is reported (``registration.csv``/``.json`` and the command's exit status) and its images
are not written, unless ``keep_failed``; it is never silently passed on.

Written (every file atomically)::

    OUT/manifest.json                       # the cases that passed (and kept failed ones)
    OUT/registration.csv, registration.json # one row per follow-up: status, reasons, QC numbers
    OUT/CASE/t0_flair.nii.gz ...            # library layout on one grid
    OUT/CASE/registration/t1.tfm            # follow-up 1: baseline (output) space -> native space (ITK, LPS)
    OUT/CASE/registration/t1_qc.png         # checkerboard baseline / registered follow-up, three planes
    OUT/CASE/registration/registration.json # options, output grid, native grids, QC of every follow-up
"""

from __future__ import annotations

import csv
import io
import os
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from longiseg.data import layout
from longiseg.data.loading import Manifest, ManifestEntry, read_manifest, read_mask, write_manifest
from longiseg.registration.grid import Grid, from_sitk, isotropic_grid, require_simpleitk, to_sitk
from longiseg.registration.pairwise import (
    PairOptions,
    foreground_mask,
    n4_correct,
    register_pair,
    resample,
    similarity,
    transform_motion,
)
from longiseg.utils.io import atomic_path, atomic_save_nifti, atomic_write, atomic_write_json, load_nifti
from longiseg.utils.logging import get_logger

__all__ = ["RegistrationOptions", "CaseRegistration", "register_case", "register_folder", "transform_filename"]

_LOG = get_logger("longiseg.registration")
PathLike = str | os.PathLike
CASE_RECORD = "registration.json"
QC_DIR = "registration"


def transform_filename(followup: int, modality: str | None = None) -> str:
    """``t1.tfm`` (follow-up 1's reference modality) or ``t1_t2.tfm`` (a modality registered on its own)."""
    if followup < 0:
        raise ValueError(f"followup must be >= 0, got {followup}")
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
        spacing: isotropic output voxel size in mm (``None``: the baseline reference's grid).
        interpolation: ``"linear"`` or ``"bspline"`` for images.
        mask_interpolation: ``"linear"`` (0/1 mask interpolated, kept where >= 0.5) or ``"nearest"``.
        min_correlation: a follow-up whose correlation with the baseline in the brain is lower fails.
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
    max_translation_mm: float = 50.0
    max_rotation_deg: float = 30.0
    max_scale_change: float = 0.15
    qc_figures: bool = True
    keep_failed: bool = False
    progression_space: str = "followup"

    def __post_init__(self) -> None:
        object.__setattr__(self, "reference_modality", self.reference_modality.lower())
        if self.interpolation not in ("linear", "bspline"):
            raise ValueError(f"interpolation must be 'linear' or 'bspline', got {self.interpolation!r}")
        if self.progression_space not in ("followup", "baseline"):
            raise ValueError(f"progression_space must be 'followup' or 'baseline', got {self.progression_space!r}")
        if self.mask_interpolation not in ("linear", "nearest"):
            raise ValueError(f"mask_interpolation must be 'linear' or 'nearest', got {self.mask_interpolation!r}")
        if self.spacing is not None and not self.spacing > 0:
            raise ValueError(f"spacing must be > 0 mm or None, got {self.spacing}")
        for name in ("max_translation_mm", "max_rotation_deg", "max_scale_change"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)}")
        if not -1.0 <= self.min_correlation <= 1.0:
            raise ValueError(f"min_correlation must lie in [-1, 1], got {self.min_correlation}")

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
        error: why the whole case failed before any follow-up was registered (unreadable input...).
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
    """``(array (D, H, W) float32, affine (4, 4))`` of one raw volume."""
    img = load_nifti(path, what="raw volume", dtype=np.float32)
    arr = np.asarray(img.dataobj, dtype=np.float32)
    if arr.ndim == 4 and arr.shape[3] == 1:
        arr = arr[..., 0]
    if arr.ndim != 3:
        raise ValueError(f"raw volume {path} must be a 3D volume, got shape {arr.shape}")
    if not np.isfinite(arr).all():
        raise ValueError(f"raw volume {path} contains NaN or infinite values")
    return arr, np.asarray(img.affine, dtype=np.float64)


def _raw_files(folder: Path) -> dict[int, dict[str, Path]]:
    found = layout.scan_images(folder)
    if 0 not in found or len(found) < 2 or sorted(found) != list(range(len(found))):
        raise ValueError(f"case {folder.name!r}: needs images t0_*, t1_*, ... without gaps, found timepoints "
                         f"{sorted(found)}")
    return found


def _check_motion(q: dict[str, Any], opts: RegistrationOptions) -> list[str]:
    reasons = []
    mo, after, before = q["motion"], q["after"], q["before"]
    if after["correlation"] < opts.min_correlation:
        reasons.append(f"correlation after registration {after['correlation']:.3f} < {opts.min_correlation} "
                       "(another patient, wrong modality or failed registration?)")
    if after["nmi"] < before["nmi"] - 1e-3:
        reasons.append(f"registration lowered the similarity (NMI {before['nmi']:.3f} -> {after['nmi']:.3f})")
    if mo["translation_mm"] > opts.max_translation_mm:
        reasons.append(f"brain centre moved {mo['translation_mm']:.1f} mm > {opts.max_translation_mm} mm")
    if mo["rotation_deg"] > opts.max_rotation_deg:
        reasons.append(f"rotation {mo['rotation_deg']:.1f} deg > {opts.max_rotation_deg} deg")
    if max(abs(s - 1.0) for s in mo["scales"]) > opts.max_scale_change:
        reasons.append(f"scaling {[round(s, 3) for s in mo['scales']]} beyond 1 +- {opts.max_scale_change}")
    return reasons


def _write_tfm(transform: Any, path: Path) -> None:
    sitk = require_simpleitk()
    with atomic_path(path, suffix=".tfm") as tmp:
        sitk.WriteTransform(transform, str(tmp))


def register_case(raw_case: PathLike, out_root: PathLike, options: RegistrationOptions | None = None, *,
                  overwrite: bool = False) -> CaseRegistration:
    """Register one raw case folder and write it into ``out_root/<case>`` (see the module docstring).

    Returns:
        A :class:`CaseRegistration`; problems of the input or of a follow-up are recorded in it, not raised
        (a folder keeps going when one case fails).

    Raises:
        ImportError: SimpleITK is missing (``pip install 'longiseg[register]'``).
    """
    sitk = require_simpleitk()
    opts = options or RegistrationOptions()
    folder = Path(raw_case)
    case_dir = Path(out_root) / folder.name
    qc_dir = case_dir / QC_DIR
    res = CaseRegistration(folder.name)
    try:
        files = _raw_files(folder)
        mods = sorted(files[0])
        ref = opts.reference_modality
        if ref not in mods:
            raise ValueError(f"case {folder.name!r}: reference modality {ref!r} not among {mods}")
        for t, fm in files.items():
            if sorted(fm) != mods:
                raise ValueError(f"case {folder.name!r}: timepoint {t} has modalities {sorted(fm)}, baseline {mods}")
        images = {(t, m): _read(p) for t, fm in files.items() for m, p in fm.items()}
        masks = {}
        for name in [layout.BASELINE_MASK, layout.BRAIN_MASK] + [layout.progression_filename(k) for k in files if k]:
            path = layout.find_nifti(folder, name)
            if path is not None:
                masks[name] = _read(path)
    except (OSError, ValueError) as err:
        res.error = str(err)
        return res

    sitk_images = {key: to_sitk(a, aff) for key, (a, aff) in images.items()}
    base_arr, base_aff = images[(0, ref)]
    base_grid = Grid(base_arr.shape, base_aff)  # type: ignore[arg-type]
    out_grid = isotropic_grid(base_grid, opts.spacing) if opts.spacing else base_grid
    fixed = sitk_images[(0, ref)]
    if layout.BRAIN_MASK in masks:
        brain = resample(to_sitk(*masks[layout.BRAIN_MASK]), fixed, interpolation="nearest")
    else:
        brain = foreground_mask(fixed)
    if opts.n4:
        sitk_images = {key: n4_correct(img) for key, img in sitk_images.items()}
        fixed = sitk_images[(0, ref)]
    brain_np = from_sitk(brain)[0].astype(bool)
    fixed_np = from_sitk(fixed)[0]
    centre_lps = np.asarray(brain.TransformContinuousIndexToPhysicalPoint(
        [float(v) for v in np.argwhere(brain_np).mean(axis=0)]))
    identity = sitk.Transform(3, sitk.sitkIdentity)
    transforms: dict[tuple[int, str], Any] = {}
    record: dict[str, Any] = {"case_id": folder.name, "options": opts.to_dict(), "output_grid": out_grid.to_dict(),
                              "native_grids": {f"t{t}_{m}": Grid(a.shape, aff).to_dict()
                                               for (t, m), (a, aff) in images.items()},
                              "followups": []}
    for t in sorted(files):
        if t == 0:
            transforms[(0, ref)] = identity
        else:
            start = time.perf_counter()
            moving = sitk_images[(t, ref)]
            q: dict[str, Any] = {"followup": t, "status": "ok", "reasons": []}
            try:
                tx, info = register_pair(fixed, moving, fixed_mask=brain, options=opts.pair)
                q["before"] = similarity(fixed_np, from_sitk(resample(moving, fixed))[0], brain_np)
                moved = from_sitk(resample(moving, fixed, tx))[0]
                q["after"] = similarity(fixed_np, moved, brain_np)
                q["motion"] = transform_motion(tx, centre_lps)
                q["optimiser"] = info
                q["reasons"] = _check_motion(q, opts)
                transforms[(t, ref)] = tx
                _write_tfm(tx, qc_dir / transform_filename(t))
                if opts.qc_figures:
                    from longiseg.registration.qc_figure import checkerboard_figure

                    checkerboard_figure(fixed_np, moved, base_aff, qc_dir / f"t{t}_qc.png",
                                        title=f"{folder.name}: baseline / follow-up {t} registered")
            except RuntimeError as err:  # SimpleITK errors (e.g. no overlap left)
                q["reasons"] = [f"registration error: {str(err).strip().splitlines()[-1]}"]
            q["status"] = "failed" if q["reasons"] else "ok"
            q["seconds"] = round(time.perf_counter() - start, 2)
            res.followups.append(q)
            if q["status"] == "failed":
                _LOG.warning("case %s follow-up %d failed registration: %s", folder.name, t, "; ".join(q["reasons"]))
        for m in mods:
            if m == ref or (t, ref) not in transforms:
                continue
            if opts.register_modalities:
                rigid = PairOptions(**{**asdict(opts.pair), "transform": "rigid"})
                tm, _ = register_pair(sitk_images[(t, ref)], sitk_images[(t, m)], options=rigid)
                transforms[(t, m)] = sitk.CompositeTransform([tm, transforms[(t, ref)]])
                _write_tfm(transforms[(t, m)], qc_dir / transform_filename(t, m))
            else:
                transforms[(t, m)] = transforms[(t, ref)]
    record["followups"] = res.followups
    atomic_write_json(qc_dir / CASE_RECORD, record, overwrite=True)
    if not res.ok and not opts.keep_failed:
        return res
    ref_img = out_grid.reference()
    for (t, m), tx in transforms.items():
        if t == 0 and m == ref and opts.spacing is None and not opts.n4:  # already on the output grid
            arr = base_arr
        else:
            arr = from_sitk(resample(sitk_images[(t, m)], ref_img, tx, interpolation=opts.interpolation))[0]
        atomic_save_nifti(arr, out_grid.affine, case_dir / layout.image_filename(t, m), overwrite=overwrite,
                          dtype=np.float32)
    for name, (arr, aff) in masks.items():
        t = int(name[len("progression_t"):].split(".")[0]) if name.startswith("progression_t") else 0
        if (t, ref) not in transforms:  # its follow-up failed (and keep_failed is off for it)
            continue
        tx = transforms[(0 if opts.progression_space == "baseline" else t, ref)]
        src = to_sitk((arr > 0).astype(np.float32), aff)
        if opts.mask_interpolation == "nearest":
            out = from_sitk(resample(src, ref_img, tx, interpolation="nearest"))[0]
        else:
            out = from_sitk(resample(src, ref_img, tx, interpolation="linear"))[0] >= 0.5
        atomic_save_nifti(out, out_grid.affine, case_dir / name, overwrite=overwrite, dtype=np.uint8)
    res.written = True
    return res


def _summary_rows(results: Sequence[CaseRegistration]) -> list[dict[str, Any]]:
    rows = []
    for r in results:
        if r.error:
            rows.append({"case_id": r.case_id, "followup": "", "status": "failed", "reasons": r.error})
        for q in r.followups:
            row = {"case_id": r.case_id, "followup": q["followup"], "status": q["status"],
                   "reasons": "; ".join(q["reasons"])}
            for when in ("before", "after"):
                for k, v in q.get(when, {}).items():
                    row[f"{k}_{when}"] = round(v, 4)
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

    Returns:
        One :class:`CaseRegistration` per case; failed cases are listed in ``out/registration.csv``.

    Raises:
        FileNotFoundError: ``raw`` is missing or holds no case.
        FileExistsError: ``out`` is not empty and ``overwrite`` is off.
        ImportError: SimpleITK is missing (``pip install 'longiseg[register]'``).
    """
    from tqdm.auto import tqdm

    require_simpleitk()
    opts = options or RegistrationOptions()
    raw, out = Path(raw), Path(out)
    if not raw.is_dir():
        raise FileNotFoundError(f"raw folder {raw} does not exist")
    cases = sorted(p for p in raw.iterdir() if p.is_dir() and not p.name.startswith(".")
                   and layout.scan_images(p).get(0))
    if not cases:
        raise FileNotFoundError(f"no case folders with t0_*.nii.gz images in {raw}")
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise FileExistsError(f"{out} exists and is not empty; pass overwrite=True (--overwrite) to replace it")
    results = [register_case(c, out, opts, overwrite=overwrite)
               for c in tqdm(cases, desc="register", unit="case", disable=not progress)]
    rows = _summary_rows(results)
    columns = list(dict.fromkeys(k for r in rows for k in r))
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    atomic_write(out / "registration.csv", lambda fh: fh.write(buf.getvalue()), overwrite=True)
    atomic_write_json(out / "registration.json", {"options": opts.to_dict(), "cases": [
        {"case_id": r.case_id, "ok": r.ok, "written": r.written, "error": r.error, "followups": r.followups}
        for r in results]}, overwrite=True)
    patients: dict[str, str] = {}
    for name in (layout.MANIFEST_JSON, layout.MANIFEST_CSV):  # patient ids of a raw manifest, if any
        if (raw / name).is_file():
            patients = {e.case_id: e.patient_id for e in read_manifest(raw / name).cases}
            break
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
    if entries:
        mods = sorted(p.name[3:].split(".")[0] for p in (out / entries[0].case_id).glob("t0_*.nii.gz"))
        write_manifest(out / layout.MANIFEST_JSON, Manifest(tuple(mods), tuple(entries)), overwrite=True)
    return results

