"""Load longitudinal cases from NIfTI files (lazily) and read/write the cohort manifest.

Finding cases (:func:`find_cases`) reads file names and the manifest only; voxels are read when a case is
loaded (:func:`load_case`), which first checks every header (shape, affine) and then every value (finite
intensities, binary masks). Nothing on disk is ever modified by loading.

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
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from longiseg.data import layout
from longiseg.data.case import LongitudinalCase
from longiseg.utils.io import atomic_save_nifti, atomic_write, atomic_write_json
from longiseg.utils.logging import get_logger

__all__ = [
    "MaskSpec",
    "CaseSource",
    "ManifestEntry",
    "Manifest",
    "find_cases",
    "load_case",
    "load_cases",
    "validate_cases",
    "read_manifest",
    "write_manifest",
    "manifest_from_cases",
    "save_case",
]

_LOG = get_logger("longiseg.data")
PathLike = str | os.PathLike

_MASK_RULES = ("binary", "labels", "growth", "symmetric_difference", "empty")


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
    """

    files: tuple[Path, ...]
    rule: str = "binary"
    labels: tuple[int, ...] | None = None

    def __post_init__(self) -> None:
        if self.rule not in _MASK_RULES:
            raise ValueError(f"rule must be one of {_MASK_RULES}, got {self.rule!r}")
        want = 2 if self.rule in ("growth", "symmetric_difference") else 1
        if len(self.files) != want:
            raise ValueError(f"mask rule {self.rule!r} needs {want} file(s), got {len(self.files)}")
        object.__setattr__(self, "files", tuple(Path(f) for f in self.files))


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
def _check_exists(paths: Iterable[Path], case_id: str) -> None:
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        raise FileNotFoundError(f"case {case_id!r}: missing file(s): {', '.join(missing)}")


def _read_label_map(path: Path, case_id: str) -> np.ndarray:
    import nibabel as nib

    arr = np.asanyarray(nib.load(str(path)).dataobj)
    if np.issubdtype(arr.dtype, np.floating):
        if not np.isfinite(arr).all():
            raise ValueError(f"case {case_id!r}: mask {path} contains NaN or infinite values")
        if not np.array_equal(arr, np.round(arr)):
            raise ValueError(f"case {case_id!r}: label map {path} holds non-integer values")
    return arr


def _labelled(arr: np.ndarray, labels: tuple[int, ...] | None) -> np.ndarray:
    return arr != 0 if labels is None else np.isin(arr, labels)


def _build_mask(spec: MaskSpec, case_id: str) -> np.ndarray:
    """Read a mask described by ``spec`` as a ``(D, H, W)`` uint8 array."""
    if spec.rule == "empty":
        import nibabel as nib

        return np.zeros(nib.load(str(spec.files[0])).shape[:3], dtype=np.uint8)
    arrays = [_read_label_map(f, case_id) for f in spec.files]
    if spec.rule == "binary":
        arr = arrays[0]
        is_one = arr == 1
        bad = ~(is_one | (arr == 0))
        if bad.any():
            raise ValueError(
                f"case {case_id!r}: mask {spec.files[0]} must be binary (values 0/1), "
                f"found values such as {np.unique(arr[bad])[:5].tolist()}"
            )
        return is_one.astype(np.uint8)
    if spec.rule == "labels":
        return _labelled(arrays[0], spec.labels).astype(np.uint8)
    a, b = (_labelled(x, spec.labels) for x in arrays)
    if spec.rule == "growth":
        return (b & ~a).astype(np.uint8)
    return (a ^ b).astype(np.uint8)


def _check_headers(source: CaseSource, affine_atol: float) -> tuple[tuple[int, ...], np.ndarray, tuple]:
    """Check that every file has the same 3D shape and affine; return them and the voxel sizes."""
    import nibabel as nib

    ref_path: Path | None = None
    ref_shape: tuple[int, ...] = ()
    ref_affine = np.eye(4)
    zooms: tuple = ()
    for path in source.all_files():
        img = nib.load(str(path))
        shape = tuple(int(s) for s in img.shape)
        if len(shape) == 4 and shape[3] == 1:
            shape = shape[:3]
        if len(shape) != 3:
            raise ValueError(f"case {source.case_id!r}: {path} must be a 3D volume, got shape {shape}")
        if ref_path is None:
            ref_path, ref_shape, ref_affine = path, shape, np.asarray(img.affine, dtype=np.float64)
            zooms = tuple(float(z) for z in img.header.get_zooms()[:3])
            continue
        if shape != ref_shape:
            raise ValueError(
                f"case {source.case_id!r}: all volumes must share one shape (registered and resampled "
                f"beforehand); {ref_path.name} has {ref_shape} but {path.name} has {shape}"
            )
        if not np.allclose(img.affine, ref_affine, rtol=0.0, atol=affine_atol):
            raise ValueError(
                f"case {source.case_id!r}: all volumes must share one affine (same voxel grid); "
                f"{path.name} differs from {ref_path.name} by up to "
                f"{float(np.abs(img.affine - ref_affine).max()):.3g} (tolerance {affine_atol})"
            )
    return ref_shape, ref_affine, zooms


def load_case(source: CaseSource | PathLike, *, affine_atol: float = 1e-4) -> LongitudinalCase:
    """Read one case's volumes with nibabel and validate them.

    Args:
        source: a :class:`CaseSource`, or a case folder in the library layout.
        affine_atol: absolute tolerance when comparing affines across files.

    Returns:
        A :class:`LongitudinalCase` with ``images (T, C, D, H, W)`` float32.

    Raises:
        FileNotFoundError: a listed file is missing.
        ValueError: volumes differ in shape or affine, intensities hold NaN/inf, a mask is not binary,
            or there are fewer than two timepoints.
    """
    import nibabel as nib

    if not isinstance(source, CaseSource):
        source = _source_from_folder(Path(source), modalities=None, require_masks=False)
    _check_exists(source.all_files(), source.case_id)
    shape, affine, zooms = _check_headers(source, affine_atol)
    images = np.empty((source.num_timepoints, len(source.modalities), *shape), dtype=np.float32)
    for t, tp in enumerate(source.image_files):
        for c, path in enumerate(tp):
            arr = nib.load(str(path)).get_fdata(dtype=np.float32).reshape(shape)
            if not np.isfinite(arr).all():
                raise ValueError(f"case {source.case_id!r}: image {path} contains NaN or infinite values")
            images[t, c] = arr
    baseline = progression = None
    if source.baseline_mask is not None and source.progression_masks is not None:
        baseline = _build_mask(source.baseline_mask, source.case_id).reshape(shape)
        progression = np.stack([_build_mask(s, source.case_id).reshape(shape) for s in source.progression_masks])
    brain = None
    if source.brain_mask is not None:
        brain = _build_mask(MaskSpec((source.brain_mask,), "binary"), source.case_id).reshape(shape)
    return LongitudinalCase(
        images=images,
        baseline_mask=baseline,
        progression_masks=progression,
        affine=affine,
        spacing=zooms,  # type: ignore[arg-type]
        modalities=source.modalities,
        case_id=source.case_id,
        patient_id=source.patient_id,
        brain_mask=brain,
        baseline_annotated=source.baseline_annotated,
        metadata=dict(source.metadata),
    )


def load_cases(sources: Sequence[CaseSource], **kwargs: object) -> list[LongitudinalCase]:
    """Load several cases (all in memory; prefer :class:`~longiseg.data.dataset.SliceDataset` for training)."""
    return [load_case(s, **kwargs) for s in sources]  # type: ignore[arg-type]


def validate_cases(sources: Sequence[CaseSource], **kwargs: object) -> dict[str, str]:
    """Load every case and collect the problems found.

    Returns:
        ``{case_id: error message}`` for every case that fails to load (empty when all are valid).
    """
    problems: dict[str, str] = {}
    for s in sources:
        try:
            load_case(s, **kwargs)  # type: ignore[arg-type]
        except (OSError, ValueError) as exc:
            problems[s.case_id] = f"{type(exc).__name__}: {exc}"
    return problems


def save_case(case: LongitudinalCase, root: PathLike, *, overwrite: bool = False,
              image_dtype: np.dtype | type = np.float32) -> Path:
    """Write ``case`` into ``root/<case_id>/`` in the library layout (every file atomically).

    Images are stored as ``image_dtype`` (float32 by default; integer types round), masks as uint8; the
    case's affine is kept.

    Returns:
        The case folder.

    Raises:
        FileExistsError: a file exists and ``overwrite`` is ``False``.
    """
    folder = Path(root) / case.case_id
    for t in range(case.num_timepoints):
        for c, mod in enumerate(case.modalities):
            img = case.images[t, c]
            if np.issubdtype(np.dtype(image_dtype), np.integer):
                info = np.iinfo(image_dtype)
                img = np.clip(np.round(img), info.min, info.max)
            atomic_save_nifti(img, case.affine, folder / layout.image_filename(t, mod),
                              overwrite=overwrite, dtype=image_dtype)
    if case.baseline_mask is not None and case.progression_masks is not None:
        atomic_save_nifti(case.baseline_mask, case.affine, folder / layout.BASELINE_MASK,
                          overwrite=overwrite, dtype=np.uint8)
        for i, m in enumerate(case.progression_masks, start=1):
            atomic_save_nifti(m, case.affine, folder / layout.progression_filename(i),
                              overwrite=overwrite, dtype=np.uint8)
    if case.brain_mask is not None:
        atomic_save_nifti(case.brain_mask, case.affine, folder / layout.BRAIN_MASK,
                          overwrite=overwrite, dtype=np.uint8)
    return folder


# --------------------------------------------------------------------------- folder layout
def _source_from_folder(
    folder: Path,
    modalities: Sequence[str] | None,
    require_masks: bool,
    num_timepoints: int | None = None,
    patient_id: str = "",
    has_progression: bool | None = None,
) -> CaseSource:
    case_id = folder.name
    if not folder.is_dir():
        raise FileNotFoundError(f"case folder {folder} does not exist")
    found: dict[int, dict[str, Path]] = {}
    for p in folder.iterdir():
        parsed = layout.parse_image_filename(p.name)
        if parsed is not None:
            found.setdefault(parsed[0], {})[parsed[1]] = p
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
    baseline_path = folder / layout.BASELINE_MASK
    prog_paths = [folder / layout.progression_filename(i) for i in range(1, t_count)]
    has_masks = baseline_path.exists() or any(p.exists() for p in prog_paths)
    baseline_spec = prog_specs = None
    if require_masks or has_masks:
        _check_exists([baseline_path, *prog_paths], case_id)
        baseline_spec = MaskSpec((baseline_path,), "binary")
        prog_specs = tuple(MaskSpec((p,), "binary") for p in prog_paths)
    brain = folder / layout.BRAIN_MASK
    return CaseSource(
        case_id=case_id,
        patient_id=patient_id,
        modalities=mods,
        image_files=tuple(image_files),
        baseline_mask=baseline_spec,
        progression_masks=prog_specs,
        brain_mask=brain if brain.exists() else None,
        has_progression=has_progression if baseline_spec is not None else None,
    )


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
    modalities in alphabetical order.

    Args:
        root: cohort folder.
        modalities: channel order to load (e.g. ``["flair", "t2"]``); overrides the manifest's.
        require_masks: raise if a case lacks its baseline/progression masks (set ``False`` for inference).

    Returns:
        One :class:`CaseSource` per case.

    Raises:
        FileNotFoundError: ``root`` or a required file is missing.
        ValueError: a case has fewer than two timepoints, or the manifest disagrees with the files.
    """
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"cohort folder {root} does not exist")
    manifest = None
    for name in (layout.MANIFEST_JSON, layout.MANIFEST_CSV):
        if (root / name).is_file():
            manifest = read_manifest(root / name)
            break
    sources: list[CaseSource] = []
    if manifest is not None:
        mods = modalities if modalities is not None else (manifest.modalities or None)
        for entry in manifest.cases:
            src = _source_from_folder(
                root / entry.case_id,
                mods,
                require_masks,
                num_timepoints=entry.num_timepoints,
                patient_id=entry.patient_id,
                has_progression=entry.progression,
            )
            sources.append(src)
        return sources
    for folder in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        if any((layout.parse_image_filename(f.name) or (-1, ""))[0] == 0 for f in folder.iterdir()):
            sources.append(_source_from_folder(folder, modalities, require_masks))
    if not sources:
        raise FileNotFoundError(f"no case folders with t0_*.nii.gz images found in {root}")
    return sources


# --------------------------------------------------------------------------- manifest
@dataclass(frozen=True)
class ManifestEntry:
    """One manifest row: ``case_id``, ``patient_id``, ``num_timepoints`` and the ``progression`` flag."""

    case_id: str
    patient_id: str
    num_timepoints: int
    progression: bool | None


@dataclass(frozen=True)
class Manifest:
    """A cohort manifest: the modalities (channel order) and one :class:`ManifestEntry` per case."""

    modalities: tuple[str, ...]
    cases: tuple[ManifestEntry, ...]

    @property
    def progression_flags(self) -> list[bool | None]:
        """Per-case progression flags in manifest order."""
        return [c.progression for c in self.cases]


def _parse_flag(value: object, where: str) -> bool | None:
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
    raise ValueError(f"{where}: progression must be true/false/1/0 or empty, got {value!r}")


def _entry(row: dict, where: str) -> ManifestEntry:
    if not row.get("case_id"):
        raise ValueError(f"{where}: every case needs a non-empty 'case_id'")
    try:
        t = int(row.get("num_timepoints", 2) or 2)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{where}: num_timepoints must be an integer, got {row.get('num_timepoints')!r}") from exc
    if t < 2:
        raise ValueError(f"{where}: num_timepoints must be >= 2 (a baseline and a follow-up), got {t}")
    return ManifestEntry(
        case_id=str(row["case_id"]),
        patient_id=str(row.get("patient_id") or row["case_id"]),
        num_timepoints=t,
        progression=_parse_flag(row.get("progression"), where),
    )


def read_manifest(path: PathLike) -> Manifest:
    """Read ``manifest.json`` or ``manifest.csv``.

    JSON: ``{"modalities": [...], "cases": [{"case_id", "patient_id", "num_timepoints", "progression"}]}``.
    CSV: columns ``case_id, patient_id, num_timepoints, progression`` and optionally ``modalities``
    (``;``-separated, same on every row).

    Raises:
        FileNotFoundError: the file is missing.
        ValueError: malformed content (unknown suffix, missing ``case_id``, duplicate ids, bad flags).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"manifest {path} does not exist")
    if path.suffix == ".json":
        try:
            data = json.loads(path.read_text())
        except json.JSONDecodeError as exc:
            raise ValueError(f"manifest {path} is not valid JSON: {exc}") from exc
        if not isinstance(data, dict) or not isinstance(data.get("cases"), list):
            raise ValueError(f"manifest {path} must be an object with a 'cases' list")
        mods = tuple(str(m).lower() for m in data.get("modalities", []))
        rows = data["cases"]
    elif path.suffix == ".csv":
        with open(path, newline="") as fh:
            rows = list(csv.DictReader(fh))
        mod_sets = {r.get("modalities") or "" for r in rows}
        if len(mod_sets) > 1:
            raise ValueError(f"manifest {path}: the 'modalities' column must be the same on every row")
        mods = tuple(m.lower() for m in (mod_sets.pop() if mod_sets else "").split(";") if m)
    else:
        raise ValueError(f"manifest must end in .json or .csv, got {path.name}")
    entries = tuple(_entry(r, f"manifest {path} row {i}") for i, r in enumerate(rows))
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
        entries.append(ManifestEntry(c.case_id, c.patient_id, c.num_timepoints, flag))
    return Manifest(modalities=mods, cases=tuple(entries))


def write_manifest(path: PathLike, manifest: Manifest, *, overwrite: bool = True) -> Path:
    """Write ``manifest`` atomically as JSON or CSV (chosen by the suffix of ``path``)."""
    path = Path(path)
    if path.suffix == ".json":
        obj = {
            "modalities": list(manifest.modalities),
            "cases": [
                {"case_id": e.case_id, "patient_id": e.patient_id, "num_timepoints": e.num_timepoints,
                 "progression": e.progression}
                for e in manifest.cases
            ],
        }
        return atomic_write_json(path, obj, overwrite=overwrite)
    if path.suffix == ".csv":
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        w.writerow(["case_id", "patient_id", "num_timepoints", "progression", "modalities"])
        for e in manifest.cases:
            flag = "" if e.progression is None else int(e.progression)
            w.writerow([e.case_id, e.patient_id, e.num_timepoints, flag, ";".join(manifest.modalities)])
        text = buf.getvalue()
        return atomic_write(path, lambda fh: fh.write(text), overwrite=overwrite)
    raise ValueError(f"manifest path must end in .json or .csv, got {path.name}")
