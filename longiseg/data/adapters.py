"""Adapters from public longitudinal datasets' folder layouts to :class:`~longiseg.data.loading.CaseSource`.

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
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from longiseg.data.layout import find_nifti
from longiseg.data.loading import CaseSource, MaskSpec

__all__ = ["MSSEG2_FILES", "UCSF_MODALITIES", "msseg2_cases", "ucsf_altpd_cases"]

PathLike = str | os.PathLike

#: File stems of one MSSEG-2 training case.
MSSEG2_FILES = {
    "baseline": "flair_time01_on_middle_space",
    "followup": "flair_time02_on_middle_space",
    "annotation": "ground_truth",
    "brain_mask": "brain_mask",
}

#: Modalities of UCSF-ALPTDG, in the channel order used by default.
UCSF_MODALITIES = ("flair", "t1", "t1ce", "t2")
_UCSF_DIFFERENCES = ("symmetric", "growth", "flair_subtraction", "t1ce_subtraction")


def _nifti(folder: Path, stem: str) -> Path:
    """``folder/stem.nii.gz`` or ``folder/stem.nii``, whichever exists (the former if neither does).

    Raises:
        ValueError: both exist (see :func:`~longiseg.data.layout.find_nifti`).
    """
    return find_nifti(folder, stem) or folder / f"{stem}.nii.gz"


def _case_folders(root: PathLike, marker: str) -> list[Path]:
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"dataset folder {root} does not exist")
    folders = sorted(
        p for p in root.iterdir()
        if p.is_dir() and any(f.name.startswith(marker.replace("{id}", p.name)) for f in p.iterdir())
    )
    if not folders:
        raise FileNotFoundError(f"no case folders with files named like {marker!r} found in {root}")
    return folders


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

    Raises:
        FileNotFoundError: ``root`` has no MSSEG-2 case folders.
        ValueError: ``annotation`` is not a ground-truth file stem.
    """
    if not annotation.startswith("ground_truth"):
        raise ValueError(f"annotation must be 'ground_truth' or 'ground_truth_expertN', got {annotation!r}")
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
        modalities: channels to load, any of ``("flair", "t1", "t1ce", "t2")`` (``"t1ce-t1"`` also works).
        tumour_labels: labels that form the whole-tumour mask; ``None`` (default) takes the union of all
            labels (NETC, SNFH, ET and resection cavity); pass ``(1, 2, 3)`` for the dataset's own WT
            definition without the cavity.
        difference: how the binary progression (difference) mask is built:
            ``"symmetric"`` (default): whole tumour at exactly one of the two timepoints
            (``WT1 xor WT2``: growth and shrinkage);
            ``"growth"``: whole tumour at ``time2`` but not at ``time1``;
            ``"flair_subtraction"`` / ``"t1ce_subtraction"``: any labelled change (increase or decrease)
            in the dataset's own longitudinal change mask.

    Returns:
        One :class:`CaseSource` per patient with ``T = 2``.

    Raises:
        FileNotFoundError: ``root`` has no UCSF-ALPTDG case folders.
        ValueError: unknown ``difference`` or empty ``modalities``.
    """
    if difference not in _UCSF_DIFFERENCES:
        raise ValueError(f"difference must be one of {_UCSF_DIFFERENCES}, got {difference!r}")
    mods = tuple(m.lower() for m in modalities)
    if not mods:
        raise ValueError("modalities must name at least one of ('flair', 't1', 't1ce', 't2')")
    labels = None if tumour_labels is None else tuple(int(x) for x in tumour_labels)
    sources = []
    for folder in _case_folders(root, "{id}_time1_"):
        pid = folder.name
        images = tuple(tuple(_nifti(folder, f"{pid}_time{t}_{m}") for m in mods) for t in (1, 2))
        seg1, seg2 = _nifti(folder, f"{pid}_time1_seg"), _nifti(folder, f"{pid}_time2_seg")
        if difference == "symmetric":
            prog = MaskSpec((seg1, seg2), "symmetric_difference", labels)
        elif difference == "growth":
            prog = MaskSpec((seg1, seg2), "growth", labels)
        else:
            prog = MaskSpec((_nifti(folder, f"{pid}_{difference}_seg"),), "labels", None)
        sources.append(
            CaseSource(
                case_id=pid,
                modalities=mods,
                image_files=images,
                baseline_mask=MaskSpec((seg1,), "labels", labels),
                progression_masks=(prog,),
                metadata={"dataset": "UCSF-ALPTDG", "difference": difference},
            )
        )
    return sources
