"""A cohort folder in the library layout: finding its cases (no voxels read) and checking they fit together.

With a manifest (:mod:`longiseg.data.manifest`) its cases, modalities, timepoint counts and progression flags
are used; otherwise every sub-folder holding ``t0_*`` images is a case. Either way the cases are listed in case-id
order (``sorted``), not in the order of the manifest's rows. :func:`find_cases` lists image cases,
:func:`find_mask_cases` reference (mask) cases; :func:`check_same_modalities` and
:func:`check_same_timepoints` refuse cases that cannot share one model input layout.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from longiseg.data import layout
from longiseg.data.case import LongitudinalCase
from longiseg.data.manifest import Manifest, ManifestEntry, read_manifest
from longiseg.data.sources import CaseSource, MaskSpec
from longiseg.utils.io import PathLike, check_input_folder
from longiseg.utils.logging import get_logger
from longiseg.utils.validation import check_bool, check_path, check_sequence

__all__ = [
    "find_cases",
    "find_mask_cases",
    "scan_cohort",
    "case_source",
    "cohort_patient_ids",
    "cohort_manifest",
    "format_case_ids",
    "modality_mismatches",
    "check_same_modalities",
    "check_same_timepoints",
]

_LOG = get_logger(__name__)


def case_source(source: CaseSource | PathLike) -> CaseSource:
    """The case a command was given: a :class:`~longiseg.data.sources.CaseSource` itself, or the case of one
    case folder in the library layout (masks optional, channels the baseline's modalities in alphabetical
    order).

    Args:
        source: a case source, or a case folder in the library layout.

    Returns:
        ``source`` itself, or the case of the folder (no voxel read).

    Raises:
        TypeError: ``source`` is neither a :class:`~longiseg.data.sources.CaseSource` nor a path.
        FileNotFoundError: the folder does not exist or holds no baseline image.
        ValueError: the folder name is not a valid case id, or its files are not a case (see :func:`find_cases`).
    """
    if isinstance(source, CaseSource):
        return source
    if not isinstance(source, (str, os.PathLike)):
        raise TypeError(f"source must be a CaseSource or the path of a case folder, got {type(source).__name__}")
    folder = check_path("source", source)
    if folder.name in ("", ".", ".."):
        folder = folder.resolve()
    return _source_from_folder(folder, modalities=None, require_masks=False)


def _source_from_folder(
    folder: Path,
    modalities: Sequence[str] | None,
    require_masks: bool | None,
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
                present = sorted({name for files in found.values() for name in files})
                hint = "" if m in present else (  # a cohort of other modalities than asked for (e.g. a model's)
                    f"; the case has no {m!r} image at all (it has {present}) but is read with the modalities "
                    f"{list(mods)}")
                raise FileNotFoundError(
                    f"case {case_id!r}: missing image {folder / layout.image_filename(t, m)}{hint}")
            row.append(p)
        image_files.append(tuple(row))
    baseline_spec, prog_specs = (None, None) if require_masks is None else _mask_specs(
        folder, case_id, t_count, require_masks)
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


def _mask_specs(folder: Path, case_id: str, t_count: int, require_masks: bool
                ) -> tuple[MaskSpec | None, tuple[MaskSpec, ...] | None]:
    """The baseline and progression masks of a case folder of ``t_count`` timepoints: both ``None`` when the
    folder holds none of them and they are not required; every one of them otherwise.

    Raises:
        FileNotFoundError: a mask is missing (masks required, or only some present), naming the files.
        ValueError: a progression mask of a follow-up without images, or a mask as ``.nii`` and ``.nii.gz``.
    """
    layout.check_progression_masks_have_images(folder, t_count, f"case {case_id!r}")
    mask_names = [layout.BASELINE_MASK] + [layout.progression_filename(i) for i in range(1, t_count)]
    mask_paths = [layout.find_nifti(folder, name) for name in mask_names]
    if require_masks or any(p is not None for p in mask_paths):
        missing = [str(folder / name) for name, p in zip(mask_names, mask_paths) if p is None]
        if missing:
            raise FileNotFoundError(f"case {case_id!r}: missing file(s): {', '.join(missing)}")
        return (MaskSpec((mask_paths[0],), "binary"),  # type: ignore[arg-type]
                tuple(MaskSpec((p,), "binary") for p in mask_paths[1:]))  # type: ignore[arg-type]
    return None, None


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
    check_sequence("cases", cases, (CaseSource, LongitudinalCase), "a CaseSource or LongitudinalCase")
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
    check_sequence("cases", cases, (CaseSource, LongitudinalCase), "a CaseSource or LongitudinalCase")
    by_t: dict[int, list[str]] = {}
    for c in cases:
        by_t.setdefault(c.num_timepoints, []).append(c.case_id)
    if len(by_t) > 1:
        counts = "; ".join(f"T={t} for {format_case_ids(sorted(ids))}" for t, ids in sorted(by_t.items()))
        raise ValueError(f"cases must all have the same number of timepoints ({counts}): a batch stacks samples "
                         f"of one T; {remedy}")
    return next(iter(by_t), 0)


def cohort_manifest(root: PathLike) -> Manifest | None:
    """The manifest of a cohort folder (``manifest.json``, else ``manifest.csv``), ``None`` without one; its cases
    in case-id order (``sorted``), whatever the order of its rows, as a folder scan lists them: every command sees
    a cohort's cases in one order (training's samples and split, reports' rows), which reordering the manifest's
    rows does not change.

    Raises:
        FileNotFoundError: the manifest lists no case (a folder of no cases is an error, as without a manifest).
        ValueError: a malformed manifest (:func:`~longiseg.data.manifest.read_manifest`).
    """
    root = check_path("root", root)
    for name in (layout.MANIFEST_JSON, layout.MANIFEST_CSV):
        if (root / name).is_file():
            manifest = read_manifest(root / name)
            if not manifest.cases:
                raise FileNotFoundError(f"{root / name} lists no case")
            _warn_unlisted(root, name, {e.case_id for e in manifest.cases})
            return Manifest(manifest.modalities, tuple(sorted(manifest.cases, key=lambda e: e.case_id)))
    return None


def cohort_patient_ids(root: PathLike) -> dict[str, str]:
    """``{case_id: patient_id}`` of the manifest of the cohort folder ``root`` (``manifest.json``, else
    ``manifest.csv``); ``{}`` without one. A case's patient id is its case id where the manifest gives none.

    Raises:
        TypeError: ``root`` is not a path.
        ValueError: the manifest is malformed.
        FileNotFoundError: the manifest lists no case.
    """
    root = check_path("root", root)
    manifest = cohort_manifest(root) if root.is_dir() else None
    return {} if manifest is None else {e.case_id: e.patient_id or e.case_id for e in manifest.cases}


#: ``(root, manifest, unlisted folders)`` already warned of in this process (commands list a cohort several times).
_WARNED: set[tuple[str, ...]] = set()


def _warn_unlisted(root: Path, name: str, listed: set[str]) -> None:
    """Warn, once per process, of case folders with a baseline image or mask that the manifest ``name`` of ``root``
    does not list (they are not used: a case added to the folder but not to the manifest; a folder of masks is a
    case of predictions or references), and of a second manifest beside it (``manifest.json`` wins)."""
    baseline_mask = layout.nifti_stem(layout.BASELINE_MASK)
    unlisted = [f.name for f in _case_folders(root) if f.name not in listed
                and any(layout.image_timepoint(e.name) == 0 or layout.nifti_stem(e.name) == baseline_mask
                        for e in f.iterdir())]
    other = layout.MANIFEST_CSV if name == layout.MANIFEST_JSON and (root / layout.MANIFEST_CSV).is_file() else None
    key = (str(root), name, *unlisted, other or "")
    if (not unlisted and other is None) or key in _WARNED:
        return
    _WARNED.add(key)
    if unlisted:
        _LOG.warning("%s: %d case folder(s) with images or masks that %s does not list are not used: %s (add them "
                     "to the manifest to use them)", root, len(unlisted), name, format_case_ids(unlisted))
    if other is not None:
        _LOG.warning("%s holds both %s and %s: %s is used, %s is ignored", root, name, other, name, other)


def _case_folders(root: Path) -> list[Path]:
    """The sub-folders of ``root`` that may be cases (not hidden), in case-id order (their names, ``sorted``)."""
    return sorted((p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")), key=lambda p: p.name)


def scan_cohort(
    root: PathLike, modalities: Sequence[str] | None = None, require_masks: bool | None = True
) -> list[tuple[str, CaseSource | OSError | ValueError]]:
    """Every case of a cohort folder as ``(case_id, source)``, or ``(case_id, error)`` if it cannot be listed: what
    :func:`find_cases` raises at the first problem, kept per case (for
    :func:`~longiseg.data.loading.validate_cases`).

    Args:
        root: cohort folder.
        modalities: channel order (``None``: the manifest's, else each case's baseline modalities).
        require_masks: as in :func:`find_cases`.

    Raises:
        FileNotFoundError: ``root`` is missing or holds no case folder (or its manifest lists none).
        ValueError: the manifest is malformed.
        TypeError: ``root`` is not a path, ``modalities`` not a list of names, ``require_masks`` not a bool or
            ``None``.
    """
    root = check_path("root", root)
    if modalities is not None:
        check_sequence("modalities", modalities, str, "a modality name (str)")
    if require_masks is not None:
        check_bool("require_masks", require_masks)
    check_input_folder(root, "cohort folder")
    manifest = cohort_manifest(root)
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
    for folder in _case_folders(root):
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
    require_masks: bool | None = True,
) -> list[CaseSource]:
    """List the cases of a folder in the library layout (see :mod:`longiseg.data.layout`) without reading voxels.

    With a manifest (``manifest.json`` or ``manifest.csv``) its cases, modalities, timepoint counts and
    progression flags are used; otherwise every sub-folder holding ``t0_*.nii.gz`` files is a case, the
    number of timepoints is the highest ``t<i>`` found plus one and modalities default to the baseline's
    modalities in alphabetical order, which must be the same for every case. Files may end in ``.nii.gz`` or
    ``.nii``, not both for one name. The cases are listed in case-id order (``sorted``) either way: the order of
    a manifest's rows changes nothing (training's samples and split, the order of reports).

    Args:
        root: cohort folder.
        modalities: channel order to load (e.g. ``["flair", "t2"]``); overrides the manifest's.
        require_masks: ``True``: every case must have its baseline and progression masks. ``False``: masks are
            optional, but a case with some of them must have all (a missing one is named). ``None``: masks are
            not looked for, every case is listed without them (prediction, which reads no reference mask).

    Returns:
        One :class:`~longiseg.data.sources.CaseSource` per case, in case-id order.

    Raises:
        FileNotFoundError: ``root`` or a required file is missing.
        ValueError: a case has fewer than two timepoints, the manifest disagrees with the files, cases have
            different modalities (names or order; :func:`check_same_modalities`), a case id
            is not a single folder name (:func:`~longiseg.data.layout.check_case_id`), or a ``.nii`` and a
            ``.nii.gz`` of one name both exist. :func:`~longiseg.data.loading.validate_cases` reports these
            per case instead.
    """
    sources = []
    for _, src in scan_cohort(root, modalities, require_masks):
        if not isinstance(src, CaseSource):
            raise src
        sources.append(src)
    return sources


def find_mask_cases(root: PathLike) -> list[ManifestEntry]:
    """List the cases of a reference folder (masks in the library layout, images optional); no voxels read.

    A case is a sub-folder holding ``baseline_mask.nii.gz`` and ``progression_t1 .. progression_t{T-1}``
    (``.nii`` or ``.nii.gz``). With a manifest (read by :func:`~longiseg.data.manifest.read_manifest`, so
    exactly the manifests :func:`find_cases` accepts) its cases, patient ids and progression flags are used;
    otherwise every sub-folder holding a baseline mask is a case (one holding progression masks without it is
    refused), of the patient that its prediction record
    (:data:`~longiseg.data.layout.PREDICTION_RECORD`, which ``longiseg predict`` writes from the cohort's
    manifest) names, else of its own patient. The cases are listed in
    case-id order (``sorted``) either way, as :func:`find_cases` lists them. ``T`` is the manifest's
    ``num_timepoints`` or, where it is left out, counted from the files (the highest follow-up of the
    progression masks and images).

    Args:
        root: reference folder, e.g. a test cohort.

    Returns:
        One :class:`~longiseg.data.manifest.ManifestEntry` per case in case-id order, ``num_timepoints`` always
        set.

    Raises:
        FileNotFoundError: ``root`` or a case folder is missing, ``root`` holds no case, or a case lacks a
            mask (naming the files).
        ValueError: a malformed manifest, an invalid case id, files of more timepoints than the manifest
            gives, fewer than two timepoints, a ``progression_t0`` mask, a ``.nii`` and a ``.nii.gz`` of one
            mask, or a layout name with upper-case letters (``BASELINE_MASK.nii.gz``).
    """
    root = check_input_folder(check_path("root", root), "mask folder")
    manifest = cohort_manifest(root)
    if manifest is not None:
        rows = list(manifest.cases)
    else:
        rows = []
        for p in _case_folders(root):
            layout.check_name_cases(p)  # a BASELINE_MASK.nii.gz left its case out of the report without a word
            if layout.find_nifti(p, layout.BASELINE_MASK):
                rows.append(ManifestEntry(layout.check_case_id(p.name, where=f"case folder {p}"),
                                          _recorded_patient(p), None, None))
            elif any(layout.parse_progression_filename(f.name) is not None for f in p.iterdir()):
                raise FileNotFoundError(f"case folder {p} holds progression masks but no {layout.BASELINE_MASK}: "
                                        "add the baseline mask, or move the folder out of the mask folder")
        if not rows:
            raise FileNotFoundError(f"no case folders with a {layout.BASELINE_MASK} found in {root}")
    return [_mask_case(root, row) for row in rows]


def _recorded_patient(folder: Path) -> str:
    """The patient id that the prediction record of the case folder ``folder`` names; ``""`` without a readable
    one (references, predictions of longiseg < 0.3.20)."""
    patient = (layout.read_prediction_record(folder) or {}).get("patient_id")
    return patient if isinstance(patient, str) else ""


def _mask_case(root: Path, row: ManifestEntry) -> ManifestEntry:
    """``row`` with its number of timepoints resolved, after checking that every mask of the case exists
    (its case id is a single folder name: a :class:`~longiseg.data.manifest.ManifestEntry` holds no other)."""
    folder = root / row.case_id
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
    layout.check_progression_masks_have_images(folder, t, f"case {cid!r}")  # a progression_t0 was left out
    names = [layout.BASELINE_MASK] + [layout.progression_filename(i) for i in range(1, t)]
    missing = [str(folder / n) for n in names if layout.find_nifti(folder, n) is None]
    if missing:
        raise FileNotFoundError(f"case {cid!r}: missing file(s): {', '.join(missing)}")
    return ManifestEntry(cid, row.patient_id or cid, t, row.progression)
