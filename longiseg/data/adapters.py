"""Adapters from public longitudinal datasets' folder layouts to :class:`~longiseg.data.sources.CaseSource`.

The file names below are those of the public releases as described in their documentation and in public
code that reads them; nothing is downloaded. Files may end in ``.nii`` or ``.nii.gz``.

MSSEG-2 (MICCAI 2021 new-MS-lesion challenge), training split::

    ROOT/013/flair_time01_on_middle_space.nii.gz    # baseline FLAIR, both timepoints resampled to a
    ROOT/013/flair_time02_on_middle_space.nii.gz    # common "middle" space
    ROOT/013/ground_truth.nii.gz                    # consensus mask of NEW lesions at time 02
    ROOT/013/ground_truth_expert{1..4}.nii.gz       # individual raters (optional)
    ROOT/013/brain_mask.nii.gz                      # optional, written by some preprocessing pipelines

MSSEG-2 annotates only new lesions, so the baseline mask is empty and ``baseline_annotated`` is ``False``
(losses should skip the baseline head for such cases).

UCSF-ALPTDG (UCSF adult longitudinal post-treatment diffuse glioma, "UCSF-ALTPD" in the SegMaST paper;
release folder ``UCSF_POSTOP_GLIOMA_DATASET_FINAL_v1.0``)::

    ROOT/100001/100001_time1_{flair,t1,t1ce,t2}.nii.gz   # first post-treatment scan (our baseline)
    ROOT/100001/100001_time2_{flair,t1,t1ce,t2}.nii.gz   # second scan (our follow-up)
    ROOT/100001/100001_time{1,2}_seg.nii.gz              # labels 1 NETC, 2 SNFH, 3 ET, 4 RC
    ROOT/100001/100001_{flair,t1ce}_subtraction_seg.nii.gz  # change labels 1 increase, 2 decrease

The baseline target is the binary whole-tumour mask of ``time1`` (union of ``tumour_labels``), the
progression target a binary difference mask between the two timepoints (see :func:`ucsf_altpd_cases`).
Labels the release does not define (``UCSF_SEG_LABELS``, ``UCSF_CHANGE_LABELS``) are never counted as
tumour or change: each case's :class:`~longiseg.data.sources.MaskSpec` lists the labels its file may hold
(``allowed``), so :func:`~longiseg.data.load_case` and :func:`~longiseg.data.validate_cases` refuse a label
map holding any other value, naming the file and the values.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Sequence
from numbers import Integral
from pathlib import Path

import numpy as np

from longiseg.data.layout import check_case_id
from longiseg.data.sources import CaseSource, MaskSpec
from longiseg.utils.io import PathLike
from longiseg.utils.logging import get_logger

logger = get_logger(__name__)

__all__ = ["MSSEG2_FILES", "UCSF_MODALITIES", "UCSF_SEG_LABELS", "UCSF_CHANGE_LABELS", "msseg2_cases",
           "ucsf_altpd_cases"]


#: File stems of one MSSEG-2 training case.
MSSEG2_FILES = {
    "baseline": "flair_time01_on_middle_space",
    "followup": "flair_time02_on_middle_space",
    "annotation": "ground_truth",
    "brain_mask": "brain_mask",
}
_MSSEG2_ANNOTATION = re.compile(r"ground_truth(_expert[1-4])?")

#: Modalities of UCSF-ALPTDG, in the channel order used by default.
UCSF_MODALITIES = ("flair", "t1", "t1ce", "t2")
_UCSF_IMAGES = (*UCSF_MODALITIES, "t1ce-t1")  # the release's T1-ce minus T1 image is an image too
#: Labels of UCSF-ALPTDG's tumour label maps (``*_time{1,2}_seg``); 0 is the background.
UCSF_SEG_LABELS = {1: "NETC", 2: "SNFH", 3: "ET", 4: "resection cavity"}
#: Labels of UCSF-ALPTDG's longitudinal change masks (``*_{flair,t1ce}_subtraction_seg``); 0 is no change.
UCSF_CHANGE_LABELS = {1: "increase", 2: "decrease"}
_UCSF_DIFFERENCES = ("symmetric", "growth", "flair_subtraction", "t1ce_subtraction")


def _nifti(folder: Path, stem: str) -> Path:
    """``folder/stem.nii`` if only it exists, else ``folder/stem.nii.gz``.

    When both exist the case is still listed: :func:`~longiseg.data.load_case` refuses it and
    :func:`~longiseg.data.validate_cases` reports it for that case, naming both files, as for a missing file.
    """
    nii = folder / f"{stem}.nii"
    gz = folder / f"{stem}.nii.gz"
    return nii if nii.exists() and not gz.exists() else gz


def _is_nifti(path: Path) -> bool:
    return path.is_file() and path.name.lower().endswith((".nii", ".nii.gz"))


def _case_folders(root: PathLike, marker: str) -> list[Path]:
    if not isinstance(root, (str, os.PathLike)):
        raise TypeError(f"root must be the dataset folder (a path), got {type(root).__name__} {root!r}")
    root = Path(root)
    if root.exists() and not root.is_dir():
        raise NotADirectoryError(f"dataset folder {root} is not a folder")
    if not root.is_dir():
        raise FileNotFoundError(f"dataset folder {root} does not exist")
    # every folder holding NIfTI files is a case: one that lacks the marked file (or whose files carry another
    # id) is listed too, so that loading and validate_cases name what is missing instead of it vanishing
    folders = sorted(
        p for p in root.iterdir()
        if p.is_dir() and not p.name.startswith(".") and any(_is_nifti(f) for f in p.iterdir())
    )
    if not any(f.name.startswith(marker.replace("{id}", p.name)) for p in folders for f in p.iterdir()):
        example = marker.replace("{id}", "ID")
        raise FileNotFoundError(f"no case folders with files named like {example!r}... found in {root}")
    for p in folders:  # the folder name is the case id: rename the folder
        check_case_id(p.name, where=f"case folder {p}")
    return folders


def _describe(labels: dict[int, str]) -> str:
    return ", ".join(f"{k} {v}" for k, v in labels.items())


def _names(name: str, values: object) -> list:
    """``values`` as a list, refusing a string or a non-iterable (a single name or label)."""
    if isinstance(values, (str, bytes)) or not isinstance(values, Iterable):
        raise TypeError(f"{name} must be a list or tuple, got {type(values).__name__} {values!r}")
    return list(values)


def msseg2_cases(
    root: PathLike, *, annotation: str = "ground_truth", use_brain_mask: bool = True
) -> list[CaseSource]:
    """Cases of the MSSEG-2 training layout (two FLAIR timepoints, new-lesion annotation).

    Args:
        root: folder holding one sub-folder per patient (e.g. ``training/``).
        annotation: stem of the annotation file: ``"ground_truth"`` (consensus) or
            ``"ground_truth_expert1"`` ... ``"ground_truth_expert4"``.
        use_brain_mask: use ``brain_mask.nii.gz`` when a case folder has one.

    Returns:
        One :class:`CaseSource` per patient: modalities ``("flair",)``, ``T = 2``, an empty baseline mask
        (``baseline_annotated=False``) and the annotation as progression mask of follow-up 1.

    A case folder with a missing file, or one file both as ``.nii`` and ``.nii.gz``, is still listed;
    :func:`~longiseg.data.validate_cases` reports such problems per case (:func:`~longiseg.data.load_case` raises).

    Raises:
        FileNotFoundError: ``root`` has no MSSEG-2 case folders.
        NotADirectoryError: ``root`` is a file.
        TypeError: ``root`` is not a path, ``annotation`` is not a string or ``use_brain_mask`` not a bool.
        ValueError: ``annotation`` is not one of the ground-truth file stems; a case folder name that is not a
            valid case id (e.g. leading or trailing whitespace), naming the folder.
    """
    if not isinstance(annotation, str):
        raise TypeError(f"annotation must be a string ('ground_truth' or 'ground_truth_expert1' .. "
                        f"'ground_truth_expert4'), got {type(annotation).__name__} {annotation!r}")
    if not _MSSEG2_ANNOTATION.fullmatch(annotation):
        raise ValueError(f"annotation must be 'ground_truth' or 'ground_truth_expert1' .. 'ground_truth_expert4' "
                         f"(a file stem of the case folder), got {annotation!r}")
    if not isinstance(use_brain_mask, (bool, np.bool_)):
        raise TypeError(f"use_brain_mask must be a bool, got {type(use_brain_mask).__name__} {use_brain_mask!r}")
    sources = []
    for folder in _case_folders(root, MSSEG2_FILES["baseline"]):
        gt = _nifti(folder, annotation)
        brain = _nifti(folder, MSSEG2_FILES["brain_mask"])
        sources.append(
            CaseSource(
                case_id=folder.name,
                modalities=("flair",),
                image_files=((_nifti(folder, MSSEG2_FILES["baseline"]),), (_nifti(folder, MSSEG2_FILES["followup"]),)),
                baseline_mask=MaskSpec((gt,), "empty"),
                progression_masks=(MaskSpec((gt,), "binary"),),
                brain_mask=brain if (use_brain_mask and brain.exists()) else None,
                baseline_annotated=False,
                metadata={"dataset": "MSSEG-2", "annotation": annotation},
            )
        )
    return sources


def _ucsf_modalities(modalities: Sequence[str]) -> tuple[str, ...]:
    items = _names("modalities", modalities)
    for i, m in enumerate(items):
        if not isinstance(m, str):
            raise TypeError(f"modalities[{i}] must be a string, got {type(m).__name__} {m!r}")
    mods = tuple(m.lower() for m in items)
    if not mods:
        raise ValueError(f"modalities must name at least one of {_UCSF_IMAGES}")
    unknown = [m for m in mods if m not in _UCSF_IMAGES]
    if unknown:
        hint = " (the *_seg files are label maps, read as the masks, not images)" if "seg" in unknown else ""
        raise ValueError(f"modalities {unknown} are not images of UCSF-ALPTDG{hint}; choose from {_UCSF_IMAGES}")
    dup = sorted({m for m in mods if mods.count(m) > 1})
    if dup:
        raise ValueError(f"modalities name {dup} more than once; each channel must be a different image")
    return mods


def _ucsf_tumour_labels(tumour_labels: Sequence[int] | None) -> tuple[int, ...]:
    if tumour_labels is None:
        return tuple(UCSF_SEG_LABELS)
    items = _names("tumour_labels", tumour_labels)
    for i, x in enumerate(items):
        if isinstance(x, (bool, np.bool_)) or not isinstance(x, Integral):
            raise TypeError(f"tumour_labels[{i}] must be an integer label, got {type(x).__name__} {x!r}")
    labels = tuple(sorted({int(x) for x in items}))
    if not labels:
        raise ValueError(f"tumour_labels must name at least one label ({_describe(UCSF_SEG_LABELS)}), or be None "
                         "for all of them; an empty list would give all-zero masks")
    if 0 in labels:
        raise ValueError(f"tumour_labels must not hold 0: it is the background, not a tumour label "
                         f"({_describe(UCSF_SEG_LABELS)})")
    undefined = [x for x in labels if x not in UCSF_SEG_LABELS]
    if undefined:
        raise ValueError(f"tumour_labels {undefined} are not labels of UCSF-ALPTDG, whose label maps hold "
                         f"{_describe(UCSF_SEG_LABELS)}")
    return labels


def ucsf_altpd_cases(
    root: PathLike,
    *,
    modalities: Sequence[str] = UCSF_MODALITIES,
    tumour_labels: Sequence[int] | None = None,
    difference: str = "symmetric",
) -> list[CaseSource]:
    """Cases of the UCSF-ALPTDG layout (two post-treatment timepoints, tumour label maps).

    Args:
        root: release folder holding one sub-folder per patient id.
        modalities: channels to load, any of ``("flair", "t1", "t1ce", "t2")`` (``"t1ce-t1"`` also works),
            each at most once; a list or tuple, not a single string.
        tumour_labels: labels that form the whole-tumour mask, any of 1 (NETC), 2 (SNFH), 3 (ET) and 4
            (resection cavity); ``None`` (default) takes all four; pass ``(1, 2, 3)`` for the dataset's own WT
            definition without the cavity.
        difference: how the binary progression (difference) mask is built:
            ``"symmetric"`` (default): whole tumour at exactly one of the two timepoints
            (``WT1 xor WT2``: growth and shrinkage);
            ``"growth"``: whole tumour at ``time2`` but not at ``time1``;
            ``"flair_subtraction"`` / ``"t1ce_subtraction"``: any labelled change (1 increase or 2 decrease)
            in the dataset's own longitudinal change mask.

    Returns:
        One :class:`CaseSource` per patient with ``T = 2``. Only the labels named above count; a label map holding a value the
        release does not define is refused when its voxels are read (``MaskSpec.allowed``).

    Raises:
        FileNotFoundError: ``root`` has no UCSF-ALPTDG case folders.
        NotADirectoryError: ``root`` is a file.
        TypeError: ``root`` is not a path; ``modalities`` or ``tumour_labels`` is a single value (a string, a
            number) instead of a list, or holds something other than names / integer labels.
        ValueError: unknown ``difference``; empty, unknown (e.g. ``"seg"``) or repeated ``modalities``; empty
            ``tumour_labels`` or labels the dataset does not define (0 is the background); a case folder name
            that is not a valid case id, naming the folder. Missing or ambiguous (``.nii`` and ``.nii.gz``)
            files are reported per case by :func:`~longiseg.data.validate_cases`, as for MSSEG-2.
    """
    if not isinstance(difference, str) or difference not in _UCSF_DIFFERENCES:
        raise ValueError(f"difference must be one of {_UCSF_DIFFERENCES}, got {difference!r}")
    mods = _ucsf_modalities(modalities)
    labels = _ucsf_tumour_labels(tumour_labels)
    sources = []
    for folder in _case_folders(root, "{id}_time1_"):
        pid = folder.name
        later = sorted(f.name for f in folder.iterdir()
                       if _is_nifti(f) and (m := re.match(rf"{re.escape(pid)}_time(\d+)_", f.name)) and int(m[1]) > 2)
        if later:  # the release holds two scans per patient: more are not read, but not without a word
            logger.warning("case %r: %d file(s) of scans after time2 (%s, ...) are not read: the UCSF-ALPTDG adapter "
                           "reads time1 and time2 (T = 2); give a longer series in the library layout or a manifest",
                           pid, len(later), later[0])
        images = tuple(tuple(_nifti(folder, f"{pid}_time{t}_{m}") for m in mods) for t in (1, 2))
        seg1, seg2 = _nifti(folder, f"{pid}_time1_seg"), _nifti(folder, f"{pid}_time2_seg")
        if difference in ("symmetric", "growth"):
            rule = "symmetric_difference" if difference == "symmetric" else "growth"
            prog = MaskSpec((seg1, seg2), rule, labels, allowed=tuple(UCSF_SEG_LABELS))
        else:
            change = _nifti(folder, f"{pid}_{difference}_seg")
            prog = MaskSpec((change,), "labels", tuple(UCSF_CHANGE_LABELS), allowed=tuple(UCSF_CHANGE_LABELS))
        sources.append(
            CaseSource(
                case_id=pid,
                modalities=mods,
                image_files=images,
                baseline_mask=MaskSpec((seg1,), "labels", labels, allowed=tuple(UCSF_SEG_LABELS)),
                progression_masks=(prog,),
                metadata={"dataset": "UCSF-ALPTDG", "difference": difference, "tumour_labels": labels},
            )
        )
    return sources
