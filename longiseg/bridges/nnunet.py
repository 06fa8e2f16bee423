"""Bridge to nnU-Net v2: the paper's 4-class formulation and nnU-Net's raw dataset layout.

nnU-Net predicts one label map, not two heads, so the SegMaST paper trains it on a multi-class
formulation of a baseline/progression mask pair:

====  ================  ==========================================
0     ``background``    in neither mask
1     ``baseline_only`` baseline lesion, not in the progression mask
2     ``followup_only`` progression (new/enlarging) lesion only
3     ``overlap``       in both masks
====  ================  ==========================================

:func:`masks_to_four_class` and :func:`four_class_to_masks` are exact inverses for any pair of binary
masks (``baseline = label in {1, 3}``, ``progression = label in {2, 3}``).

:func:`write_nnunet_dataset` writes ``DatasetXXX_Name/`` with ``imagesTr/{case}_{XXXX}.nii.gz`` (one file
per input channel), ``labelsTr/{case}.nii.gz`` and ``dataset.json`` (``channel_names``, ``labels``,
``numTraining``, ``file_ending``), the raw format that ``nnUNetv2_plan_and_preprocess`` reads, and optionally
``imagesTs/{case}_{XXXX}.nii.gz`` (test cases, images only: the input folder of ``nnUNetv2_predict``).
:func:`convert_longiseg_dataset` builds it from a dataset in longiseg's folder layout (one nnU-Net case
per successive timepoint pair; ``test_root`` adds a test cohort as ``imagesTs``),
:func:`import_nnunet_predictions` turns nnU-Net's predicted label maps back into longiseg's prediction
layout, and :func:`check_nnunet_raw_dataset` checks the structure.

Nothing is half-written: the dataset folder is built in a temporary folder and renamed into place as a
whole (``overwrite=True`` replaces the old one entirely, a failure leaves it as it was), and predictions are
all checked (names, grids, label values) before the first case folder is written.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from longiseg.data.cohort import find_cases, format_case_ids
from longiseg.data.layout import check_case_id
from longiseg.data.loading import case_grid, load_case
from longiseg.data.predictions import case_spatial_header, save_prediction
from longiseg.data.volumes import (
    check_same_grid,
    format_label_values,
    nifti_spacing,
    read_label_volume,
    same_affine,
)
from longiseg.utils.io import (
    atomic_directory,
    atomic_write_json,
    check_input_folder,
    check_output_folder,
    check_separate_folders,
    folder_is_empty,
)
from longiseg.utils.logging import get_logger
from longiseg.utils.nifti import SpatialHeader, atomic_save_nifti, load_nifti
from longiseg.utils.validation import (
    check_binary,
    check_bool,
    check_finite,
    check_path,
    check_positive_int,
    check_same_shape,
    check_sequence,
)

__all__ = [
    "FOUR_CLASS_LABELS",
    "NnUNetCase",
    "masks_to_four_class",
    "four_class_to_masks",
    "nnunet_dataset_name",
    "write_nnunet_dataset",
    "convert_longiseg_dataset",
    "import_nnunet_predictions",
    "check_nnunet_raw_dataset",
]

#: Label names and values of the 4-class formulation, in nnU-Net's ``dataset.json`` "labels" format.
FOUR_CLASS_LABELS: dict[str, int] = {"background": 0, "baseline_only": 1, "followup_only": 2, "overlap": 3}

FILE_ENDING = ".nii.gz"
#: ``dataset.json`` keys that the writer sets itself (``extra_json`` may not replace them).
_REQUIRED_KEYS = ("channel_names", "labels", "numTraining", "file_ending")
_PREDICTION = "nnU-Net prediction"
#: What to do when a prediction lies on another grid than its reference case (``{path}``: the case's first image).
_REFERENCE_GRID_HINT = ("the reference case's grid is that of {path}, and nnU-Net predicts on the grid of its input "
                        "images: pass as reference the cohort whose images were exported and predicted "
                        "(convert_longiseg_dataset's test_root)")
_CASE_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_\-]*$")
_DATASET_DIR_RE = re.compile(r"^Dataset(\d{3})_(\S+)$")
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_\-]*$")
#: Image files an nnU-Net prediction folder may hold (NIfTI in any capitalisation, and nnU-Net's other formats).
_IMAGE_RE = re.compile(r"\.(nii|nii\.gz|nrrd|mha|mhd|png|bmp|tif|tiff)$", re.IGNORECASE)

Mask = np.ndarray | torch.Tensor

logger = get_logger(__name__)


def masks_to_four_class(baseline: Mask, progression: Mask) -> Mask:
    """Encode a binary mask pair as the 4-class label map (see the module table).

    Args:
        baseline: binary baseline mask, any shape ``S`` (e.g. ``(D, H, W)``), numpy or torch.
        progression: binary progression mask of the same shape and type.

    Returns:
        ``uint8`` labels of shape ``S`` (numpy array or torch tensor, like the inputs):
        ``baseline + 2 * progression``.

    Raises:
        TypeError: if the inputs are not both numpy arrays or both tensors.
        ValueError: if shapes differ or a mask is not binary.
    """
    if isinstance(baseline, torch.Tensor) and isinstance(progression, torch.Tensor):
        check_same_shape("baseline", baseline, "progression", progression)
        check_binary("baseline", baseline)
        check_binary("progression", progression)
        return baseline.to(torch.uint8) + 2 * progression.to(torch.uint8)
    if isinstance(baseline, np.ndarray) and isinstance(progression, np.ndarray):
        check_same_shape("baseline", baseline, "progression", progression)
        check_binary("baseline", baseline)
        check_binary("progression", progression)
        return (baseline.astype(np.uint8) + 2 * progression.astype(np.uint8)).astype(np.uint8)
    raise TypeError(
        "baseline and progression must both be numpy arrays or both torch tensors, got "
        f"{type(baseline).__name__} and {type(progression).__name__}"
    )


def four_class_to_masks(labels: Mask) -> tuple[Mask, Mask]:
    """Decode a 4-class label map into the binary ``(baseline, progression)`` pair.

    Args:
        labels: integer labels in ``{0, 1, 2, 3}`` of any shape ``S`` (numpy or torch).

    Returns:
        ``(baseline, progression)`` boolean masks of shape ``S``: ``labels in {1, 3}`` and ``labels in {2, 3}``.

    Raises:
        TypeError: if ``labels`` is not an integer array/tensor.
        ValueError: if a value lies outside ``{0, 1, 2, 3}``.
    """
    if isinstance(labels, torch.Tensor):
        if labels.is_floating_point() or labels.is_complex() or labels.dtype == torch.bool:
            raise TypeError(f"labels must be an integer tensor, got dtype {labels.dtype}")
        bad = labels[(labels < 0) | (labels > 3)]
        if bad.numel():
            raise ValueError(f"labels must lie in {{0, 1, 2, 3}}, found values such as {bad.unique()[:5].tolist()}")
        return (labels & 1).bool(), (labels >= 2)
    if isinstance(labels, np.ndarray):
        if not np.issubdtype(labels.dtype, np.integer):
            raise TypeError(f"labels must be an integer array, got dtype {labels.dtype}")
        bad = labels[(labels < 0) | (labels > 3)]
        if bad.size:
            raise ValueError(f"labels must lie in {{0, 1, 2, 3}}, found values such as {np.unique(bad)[:5].tolist()}")
        return (labels & 1).astype(bool), labels >= 2
    raise TypeError(f"labels must be a numpy array or torch tensor, got {type(labels).__name__}")


@dataclass
class NnUNetCase:
    """One nnU-Net case: a training case (with labels) or a test case (``labels=None``, images only).

    Attributes:
        case_id: identifier (letters, digits, ``_`` and ``-``), unique in the dataset.
        images: one ``(D, H, W)`` (or ``(H, W)``) array per input channel, in ``channel_names`` order.
        labels: integer label map of the same shape (e.g. from :func:`masks_to_four_class`); ``None`` for a
            test case (written to ``imagesTs`` by :func:`write_nnunet_dataset`'s ``test_cases``).
        affine: ``(4, 4)`` voxel-to-world matrix shared by images and labels.

    Raises:
        TypeError: ``images`` is not a sequence of numeric arrays, or ``labels`` is not an integer array.
        ValueError: a bad ``case_id``, no images, images of another shape than the labels (or than
            ``images[0]``), NaN or infinite values, or an ``affine`` that is not a finite ``(4, 4)`` matrix.
    """

    case_id: str
    images: Sequence[np.ndarray]
    labels: np.ndarray | None
    affine: np.ndarray = field(default_factory=lambda: np.eye(4))

    def __post_init__(self) -> None:
        _check_nnunet_case_id(self.case_id)
        if not (isinstance(self.images, np.ndarray) and self.images.ndim):  # (C, D, H, W): channels too
            check_sequence(f"case {self.case_id!r} images", self.images, (np.ndarray, torch.Tensor),
                           "a numpy array or torch tensor (one channel)")
        for i, img in enumerate(self.images):  # torch dtypes are all numeric
            if isinstance(img, np.ndarray) and not (img.dtype == bool or np.issubdtype(img.dtype, np.number)):
                raise TypeError(f"case {self.case_id!r} images[{i}] must have a numeric dtype, got {img.dtype}")
        if len(self.images) == 0:
            raise ValueError(f"case {self.case_id!r}: images must hold at least one channel")
        if self.labels is None:
            reference, reference_name = np.asarray(self.images[0]), "images[0]"
        else:
            reference, reference_name = np.asarray(self.labels), "labels"
            if not np.issubdtype(reference.dtype, np.integer):
                raise TypeError(f"case {self.case_id!r}: labels must be an integer array, got dtype {reference.dtype}")
        for i, img in enumerate(self.images):
            img = np.asarray(img)
            check_same_shape(f"case {self.case_id!r} images[{i}]", img, reference_name, reference)
            check_finite(f"case {self.case_id!r} images[{i}]", img)
        if np.asarray(self.affine).shape != (4, 4):
            raise ValueError(f"case {self.case_id!r}: affine must be (4, 4), got {np.asarray(self.affine).shape}")
        check_finite(f"case {self.case_id!r} affine", np.asarray(self.affine, dtype=np.float64))


def _check_nnunet_case_id(case_id: object, where: str = "") -> str:
    """``case_id`` if nnU-Net accepts it as a case identifier (file names ``{case}_{XXXX}.nii.gz``)."""
    if not isinstance(case_id, str) or not _CASE_ID_RE.match(case_id):
        prefix = f"{where}: " if where else ""
        raise ValueError(
            f"{prefix}case_id must start with a letter or digit and hold only letters, digits, '_' and '-' "
            f"(nnU-Net's case identifiers), got {case_id!r}"
        )
    return case_id


def nnunet_dataset_name(dataset_id: int, name: str) -> str:
    """``DatasetXXX_Name``: nnU-Net's folder name for dataset ``dataset_id`` (1..999)."""
    if isinstance(dataset_id, (bool, np.bool_)) or not isinstance(dataset_id, (int, np.integer)):  # (NumPy's too)
        raise TypeError(f"dataset_id must be an int in 1..999 (three digits), got {type(dataset_id).__name__} "
                        f"{dataset_id!r}")
    if not 1 <= dataset_id <= 999:
        raise ValueError(f"dataset_id must be an int in 1..999 (three digits), got {int(dataset_id)}")
    dataset_id = int(dataset_id)
    if not isinstance(name, str) or not _NAME_RE.match(name):
        raise ValueError(f"name must hold only letters, digits, '_' and '-', got {name!r}")
    return f"Dataset{dataset_id:03d}_{name}"


def write_nnunet_dataset(
    out_root: str | Path,
    dataset_id: int,
    name: str,
    cases: Iterable[NnUNetCase],
    channel_names: Sequence[str],
    labels: dict[str, int] | None = None,
    *,
    overwrite: bool = False,
    extra_json: dict[str, Any] | None = None,
    test_cases: Iterable[NnUNetCase] | None = None,
    progress: bool = True,
) -> Path:
    """Write an nnU-Net v2 raw dataset ``out_root/DatasetXXX_Name`` as a whole.

    The folder is built in a temporary folder next to it and renamed into place at the end, so readers see
    the complete dataset or none: ``overwrite=True`` replaces an existing dataset folder entirely (no stale
    cases of an earlier export remain), and on any error the destination is left as it was. The arguments,
    the destination and, when ``cases`` is a sequence (list, tuple), every case are checked before anything
    is written; cases from an iterator (e.g. a generator loading them one at a time) are checked as they
    come, and an error in one still leaves nothing behind.

    Args:
        out_root: the ``nnUNet_raw`` folder (created if missing).
        dataset_id: three-digit dataset id (1..999).
        name: dataset name.
        cases: training cases; each must have ``len(channel_names)`` images.
        channel_names: name of each input channel (``dataset.json`` "channel_names"; names other than
            ``"CT"`` make nnU-Net z-score each channel).
        labels: ``dataset.json`` "labels" (name -> consecutive int from 0, NumPy ints too); default
            :data:`FOUR_CLASS_LABELS`.
        overwrite: replace an existing dataset folder as a whole (otherwise only a missing or empty one is
            written).
        extra_json: further ``dataset.json`` entries (e.g. ``{"description": ...}``); it may not replace
            ``channel_names``, ``labels``, ``numTraining`` or ``file_ending``.
        test_cases: optional test cases (``labels=None``; labels given are not written), written as
            ``imagesTs/{case}_{XXXX}.nii.gz``: the folder to pass to ``nnUNetv2_predict -i``. Their ids must
            differ from the training cases'.
        progress: show a progress bar over the cases written.

    Returns:
        The dataset folder.

    Raises:
        FileExistsError: the dataset folder exists, is not empty and ``overwrite`` is ``False``.
        NotADirectoryError: ``out_root`` or the dataset folder is a file.
        TypeError: ``cases`` or ``test_cases`` holds something other than :class:`NnUNetCase`; a ``labels`` value
            is not an int.
        ValueError: on a bad id/name, duplicate case ids (also between training and test cases), a wrong
            number of images, no cases (or an empty ``test_cases``), a training case without labels, labels
            outside the declared ones, or ``extra_json`` replacing a required key.
    """
    progress = check_bool("progress", progress)
    labels = _check_label_dict(dict(FOUR_CLASS_LABELS if labels is None else labels))
    channel_names = list(channel_names)
    if not channel_names or not all(isinstance(c, str) and c for c in channel_names):
        raise ValueError(f"channel_names must be a non-empty list of non-empty strings, got {channel_names!r}")
    if extra_json is not None and not isinstance(extra_json, dict):
        raise TypeError(f"extra_json must be a dict or None, got {type(extra_json).__name__}")
    clash = sorted(set(extra_json or {}) & set(_REQUIRED_KEYS))
    if clash:
        raise ValueError(f"extra_json must not set {clash}: the writer sets them from the cases and arguments")
    folder = check_path("out_root", out_root) / nnunet_dataset_name(dataset_id, name)
    replace = _check_destination(folder, overwrite)
    seen: set[str] = set()  # case ids of training and test cases together
    checked: Iterable[NnUNetCase] = _checked_cases(cases, channel_names, labels, seen)
    if isinstance(cases, Sequence):  # already in memory: check every case before creating anything
        checked = list(checked)
    checked_test: Iterable[NnUNetCase] = ()
    if test_cases is not None:
        checked_test = _checked_cases(test_cases, channel_names, labels, seen, test=True)
        if isinstance(cases, Sequence) and isinstance(test_cases, Sequence):
            checked_test = list(checked_test)
    label_dtype = np.min_scalar_type(len(labels) - 1)  # uint8 for up to 256 labels: never wraps
    with atomic_directory(folder, overwrite=replace) as tmp:
        images_dir, labels_dir = tmp / "imagesTr", tmp / "labelsTr"
        images_dir.mkdir()
        labels_dir.mkdir()
        num_cases = 0
        for case in tqdm(checked, desc=f"writing {folder.name}", unit="case", disable=not progress):
            _write_images(case, images_dir)
            atomic_save_nifti(np.asarray(case.labels).astype(label_dtype), case.affine,
                              labels_dir / f"{case.case_id}{FILE_ENDING}")
            num_cases += 1
        if test_cases is not None:
            test_dir = tmp / "imagesTs"
            test_dir.mkdir()
            for case in tqdm(checked_test, desc=f"writing {folder.name} test images", unit="case",
                             disable=not progress):
                _write_images(case, test_dir)
        meta: dict[str, Any] = {
            "channel_names": {str(i): c for i, c in enumerate(channel_names)},
            "labels": labels,
            "numTraining": num_cases,
            "file_ending": FILE_ENDING,
            "name": name,
        }
        meta.update(extra_json or {})
        atomic_write_json(tmp / "dataset.json", meta)
    return folder


def _write_images(case: NnUNetCase, folder: Path) -> None:
    """Write ``case``'s channels as ``folder/{case}_{XXXX}.nii.gz`` (float32, the case's affine)."""
    for ch, img in enumerate(case.images):
        atomic_save_nifti(np.asarray(img, dtype=np.float32), case.affine, folder / f"{case.case_id}_{ch:04d}{FILE_ENDING}")


def _checked_cases(cases: Iterable[NnUNetCase], channel_names: list[str], labels: dict[str, int], seen: set[str],
                   *, test: bool = False) -> Iterator[NnUNetCase]:
    """Yield ``cases`` one by one after checking each (type, id unique in ``seen``, channels, label values).

    ``seen`` collects the ids (shared by the training and test cases of one dataset); test cases
    (``test=True``) need no labels and their labels are not checked (they are not written).
    """
    what = "test_cases" if test else "cases"
    allowed = np.array(sorted(labels.values()))
    count = 0
    for case in cases:
        if not isinstance(case, NnUNetCase):
            raise TypeError(f"{what} must hold NnUNetCase objects, got {type(case).__name__}")
        if case.case_id in seen:
            raise ValueError(f"duplicate case_id {case.case_id!r}" + (" (a test case named like a training case "
                             "or another test case)" if test else ""))
        if len(case.images) != len(channel_names):
            raise ValueError(
                f"case {case.case_id!r} has {len(case.images)} images but channel_names has {len(channel_names)}"
            )
        seen.add(case.case_id)
        count += 1
        if test:
            yield case
            continue
        if case.labels is None:
            raise ValueError(f"training case {case.case_id!r} has labels=None; only test_cases may lack labels")
        lab = np.asarray(case.labels)
        if not np.issubdtype(lab.dtype, np.integer):
            raise TypeError(f"case {case.case_id!r}: labels must be an integer array, got dtype {lab.dtype}")
        if not np.isin(lab, allowed).all():
            raise ValueError(
                f"case {case.case_id!r}: labels hold values {np.setdiff1d(np.unique(lab), allowed)[:5].tolist()} "
                f"not declared in labels {labels}"
            )
        yield case
    if not count:
        raise ValueError("test_cases is empty: pass None for no imagesTs" if test else
                         "cases is empty: an nnU-Net dataset needs at least one training case")


def _check_destination(folder: Path, overwrite: bool) -> bool:
    """Refuse ``folder`` as an output before any work; ``True`` when it may be replaced (``overwrite`` or empty)."""
    check_output_folder(folder.parent, "out_root")
    check_output_folder(folder, "dataset folder")
    prefix = folder.name.split("_", 1)[0] + "_"  # "Dataset001_": nnU-Net finds a dataset by its id alone
    if folder.parent.is_dir():
        clash = sorted(p.name for p in folder.parent.iterdir() if p.name.startswith(prefix) and p.name != folder.name
                       and p.is_dir())
        if clash:
            raise ValueError(f"{folder.parent} already holds {clash[0]} with the id of {folder.name}; nnU-Net finds "
                             "a dataset by its id and refuses two: choose another dataset_id or remove it")
    empty = folder.is_dir() and folder_is_empty(folder)
    if folder.exists() and not (overwrite or empty):
        raise FileExistsError(f"{folder} already exists; pass overwrite=True to replace it as a whole")
    return overwrite or empty


def _check_label_dict(labels: dict[str, Any]) -> dict[str, int]:
    """``labels`` with Python ints (NumPy's converted: ``dataset.json`` could not hold them) if it maps
    ``'background'`` to 0 and its names to the consecutive ints 0, 1, 2, ..."""
    if not isinstance(labels, dict) or not labels:
        raise ValueError(f"labels must be a non-empty dict name -> int, got {labels!r}")
    checked: dict[str, int] = {}
    for key, value in labels.items():
        try:
            checked[key] = check_positive_int(f"labels[{key!r}]", value, minimum=0)
        except TypeError as err:
            raise TypeError(f"{err}: labels map each name to one int (region-based labels are not supported "
                            f"here), got {labels}") from None
    labels, values = checked, list(checked.values())
    if labels.get("background") != 0:
        raise ValueError(f"labels must map 'background' to 0, got {labels}")
    if sorted(values) != list(range(len(values))):
        raise ValueError(f"label values must be consecutive integers 0, 1, 2, ..., got {sorted(values)}")
    return labels


# ----------------------------------------------------------------------- longiseg layout <-> nnU-Net


def _load(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """``(voxels, (4, 4) affine)`` of a NIfTI file; a missing or unreadable file names itself."""
    img = load_nifti(path)
    return np.asarray(img.dataobj), img.affine


def convert_longiseg_dataset(
    root: str | Path,
    out_root: str | Path,
    dataset_id: int,
    name: str,
    modalities: Sequence[str] | None = None,
    *,
    overwrite: bool = False,
    test_root: str | Path | None = None,
    progress: bool = True,
) -> Path:
    """Write a longiseg-layout dataset as an nnU-Net raw dataset with the 4-class labels.

    Cases are listed and read by the data layer exactly as for training
    (:func:`~longiseg.data.cohort.find_cases` with masks required, :func:`~longiseg.data.loading.load_case`):
    the manifest's cases and modalities when there is one, every file checked. Each case ``CASE`` with ``T``
    timepoints gives ``T - 1`` nnU-Net cases ``CASE_fu{t}``, one per successive pair ``(t-1, t)``: channels
    are the prior's modalities then the current's (``prior_flair, prior_t2, current_flair, current_t2``), the
    prior mask is the lesion mask at ``t-1`` (``baseline_mask`` united with ``progression_t1 ..
    progression_t{t-1}``) and the progression mask is ``progression_t{t}``. For two-timepoint data this is
    exactly the paper's baseline/follow-up pair.

    With ``test_root`` the test cohort's pairs are written the same way (same names, same channel order, masks
    not needed) to ``imagesTs/``, the input folder of ``nnUNetv2_predict``; its predictions
    ``CASE_fu{t}.nii.gz`` are what :func:`import_nnunet_predictions` reads back.

    Args:
        root: cohort folder in longiseg's layout (see :mod:`longiseg.data.layout`), masks required.
        out_root: the ``nnUNet_raw`` folder.
        dataset_id: three-digit nnU-Net dataset id.
        name: nnU-Net dataset name.
        modalities: modalities to use, in order; default: the manifest's, else each case's baseline
            modalities sorted (all cases must then have the same).
        overwrite: replace an existing dataset folder as a whole.
        test_root: optional test cohort folder in longiseg's layout (masks not read), written to ``imagesTs``
            with the training cohort's modalities; its case ids must differ from the training cases'.
        progress: show a progress bar over the cases written.

    Returns:
        The written ``DatasetXXX_Name`` folder (written as a whole by :func:`write_nnunet_dataset`: on an
        error nothing is written and an existing folder is left as it was).

    Raises:
        FileNotFoundError: if ``root`` holds no case folder, or a case lacks an image or mask.
        FileExistsError: the dataset folder exists, is not empty and ``overwrite`` is ``False``.
        ValueError: on inconsistent modalities or shapes, non-binary masks, ambiguous (``.nii`` and
            ``.nii.gz``) or unreadable files, a case id that nnU-Net does not accept (e.g. ``b.1``: checked
            for every case before any is read), a test case id that is also a training case id, or a dataset
            folder that is, lies inside or holds ``root`` or ``test_root``.
    """
    progress = check_bool("progress", progress)
    folder = check_path("out_root", out_root) / nnunet_dataset_name(dataset_id, name)
    check_separate_folders(folder, "dataset folder", {"root": root, "test_root": test_root})
    sources = find_cases(root, modalities=modalities, require_masks=True)  # every file name checked first
    modalities = list(sources[0].modalities)
    test_sources = ([] if test_root is None else
                    find_cases(test_root, modalities=modalities, require_masks=False))
    for where, source in [(root, s) for s in sources] + [(test_root, s) for s in test_sources]:
        if list(source.modalities) != modalities:
            raise ValueError(f"case {source.case_id!r} of {where} has modalities {list(source.modalities)} but "
                             f"case {sources[0].case_id!r} has {modalities}; pass modalities=[...] to choose")
        for t in range(1, source.num_timepoints):  # every nnU-Net name checked before any case is read
            _check_nnunet_case_id(f"{source.case_id}_fu{t}", where=f"case {source.case_id!r} of {where} "
                                  "cannot be named in nnU-Net (rename the case)")
    shared = sorted({s.case_id for s in sources} & {s.case_id for s in test_sources})
    if shared:
        raise ValueError(f"test_root {test_root} holds case(s) {shared[:5]} of root {root} too: a test case must "
                         "not be a training case (nnU-Net's imagesTs and imagesTr would share names)")

    unannotated = [s.case_id for s in sources if not s.baseline_annotated]
    if unannotated:  # e.g. MSSEG-2: new lesions annotated, old ones not
        logger.warning("%d training case(s) have no baseline annotation (e.g. %s): their labels mark no old lesion "
                       "(class 1 is empty, old lesions are background, as a new-lesion task wants); the baseline "
                       "masks nnU-Net predicts for such cases mean nothing, as do baseline scores against their "
                       "empty masks",
                       len(unannotated), unannotated[0])

    def cases() -> Iterable[NnUNetCase]:
        for source in sources:
            case = load_case(source)
            assert case.baseline_mask is not None and case.progression_masks is not None  # require_masks
            prior_mask = case.baseline_mask.astype(bool)
            for t in range(1, case.num_timepoints):
                prog = case.progression_masks[t - 1].astype(bool)
                vols = [case.images[tp, c] for tp in (t - 1, t) for c in range(case.num_channels)]
                labels = masks_to_four_class(prior_mask, prog)
                yield NnUNetCase(f"{case.case_id}_fu{t}", vols, labels, case.affine)
                prior_mask = prior_mask | prog

    def test_cases() -> Iterable[NnUNetCase]:
        for source in test_sources:
            case = load_case(source)
            for t in range(1, case.num_timepoints):
                vols = [case.images[tp, c] for tp in (t - 1, t) for c in range(case.num_channels)]
                yield NnUNetCase(f"{case.case_id}_fu{t}", vols, None, case.affine)

    channel_names = [f"prior_{m}" for m in modalities] + [f"current_{m}" for m in modalities]
    return write_nnunet_dataset(
        out_root, dataset_id, name, cases(), channel_names, overwrite=overwrite,
        extra_json={"description": "longiseg successive timepoint pairs, 4-class baseline/progression labels"},
        test_cases=None if test_root is None else test_cases(), progress=progress,
    )


def import_nnunet_predictions(pred_dir: str | Path, out_root: str | Path, *, overwrite: bool = False,
                              reference: str | Path | None = None, progress: bool = True) -> list[Path]:
    """Turn nnU-Net's predicted 4-class maps ``CASE_fu{t}.nii.gz`` into longiseg's prediction layout.

    Writes ``out_root/CASE/baseline_mask.nii.gz`` (from the pair ``CASE_fu1``) and
    ``out_root/CASE/progression_t{t}.nii.gz`` for every predicted pair with
    :func:`~longiseg.data.predictions.save_prediction`, so ``longiseg evaluate`` can score nnU-Net like any
    other model.

    Everything is checked before the first file is written: the names (every image file named
    ``CASE_fu{t}.nii.gz``, ``CASE`` a single folder name, pairs ``fu1 .. fu<n>`` without gaps; nnU-Net's other
    files such as ``plans.json`` or ``.npz`` probabilities are ignored), the destination (no existing case
    folder unless ``overwrite``), every file's grid (one 3D volume; all pairs of a case on the grid of
    ``CASE_fu1``, or with ``reference`` on its reference case's grid: same shape and affine) and every label
    value (integers in ``{0, 1, 2, 3}``; a float map holding ``2.7`` or an ``int32`` holding ``65537`` is
    refused, never rounded or wrapped; only a file that scales its stored values has values within
    :data:`~longiseg.data.volumes.MASK_SCALING_ATOL` of an integer rounded to it,
    :func:`~longiseg.data.volumes.read_label_volume`). Then each case folder is written as a whole (readers
    see the complete case or none); other folders in ``out_root`` are left alone.

    Args:
        pred_dir: folder with nnU-Net's predicted label maps.
        out_root: destination folder (not ``pred_dir``, not inside it, not holding it).
        overwrite: replace existing case folders as a whole.
        reference: the cohort folder the predicted cases come from (library layout, e.g. the test folder that
            :func:`convert_longiseg_dataset` exported): every predicted case must be one of its cases with all
            its follow-ups, every one of its cases must be predicted, and every prediction must lie on its
            case's grid (that of the case's first image); the masks are written with that case's spatial header
            (:func:`~longiseg.data.predictions.case_spatial_header`: qform, sform and their codes), as
            ``longiseg predict`` writes its outputs. Without it a case whose last pair nnU-Net did not predict
            passes as a case of fewer timepoints, and the masks get :func:`~longiseg.data.predictions.save_prediction`'s
            default header.
        progress: show progress bars over the cases checked and imported.

    Returns:
        The written files.

    Raises:
        FileNotFoundError: if ``pred_dir`` does not exist or holds no ``*_fu{t}.nii.gz`` file.
        FileExistsError: a case folder exists, is not empty and ``overwrite`` is ``False``.
        NotADirectoryError: ``pred_dir``, ``out_root`` or a case folder's path is a file.
        ValueError: naming the file(s): an image file is not named ``CASE_fu{t}.nii.gz`` (a prediction of
            another dataset, nnU-Net's input channel files ``CASE_XXXX``, ``.nii``), a ``CASE`` is not a
            single folder name (e.g. ``..``), its pairs are
            not ``fu1 .. fu<n>`` without gaps, a prediction is unreadable or not one 3D volume, has header
            voxel sizes that disagree with its affine (:func:`~longiseg.data.volumes.nifti_spacing`), holds
            values other than the integer labels 0..3, or lies on another grid than its case's ``CASE_fu1``;
            or ``out_root`` overlaps ``pred_dir``; with ``reference``, a case that is not one of its cases or
            has another number of follow-ups, a reference case without any prediction, or a prediction on
            another grid (shape or affine) than its reference case.
    """
    progress = check_bool("progress", progress)
    pred_dir, out_root = check_path("pred_dir", pred_dir), check_path("out_root", out_root)
    if not pred_dir.exists():
        raise FileNotFoundError(f"pred_dir {pred_dir} does not exist")
    if not pred_dir.is_dir():
        raise NotADirectoryError(f"pred_dir {pred_dir} is not a folder")
    check_output_folder(out_root, "out_root")
    check_separate_folders(out_root, "out_root", {"pred_dir": pred_dir})
    pattern = re.compile(r"^(.+)_fu(\d+)" + re.escape(FILE_ENDING) + "$")
    found = sorted((m.group(1), int(m.group(2)), p) for p in pred_dir.glob(f"*{FILE_ENDING}")
                   if (m := pattern.match(p.name)))
    # nnUNetv2_predict writes one CASE{file_ending} per input case (and .json/.npz/.pkl files): any other image
    # is a prediction this export did not ask for (another dataset's, an input channel file, another format)
    foreign = sorted(p.name for p in pred_dir.iterdir() if _IMAGE_RE.search(p.name) and not pattern.match(p.name))
    if foreign:
        hint = (" (these are nnU-Net input channel files CASE_XXXX: pass the folder nnUNetv2_predict wrote with -o)"
                if all(re.search(r"_\d{4}\.nii(\.gz)?$", n, re.IGNORECASE) for n in foreign) else "")
        raise ValueError(f"{pred_dir} holds {len(foreign)} image file(s) not named CASE_fu<t>{FILE_ENDING} as the "
                         f"exported pairs are, e.g. {foreign[:5]}{hint}; they are not predictions of a dataset "
                         "written by convert_longiseg_dataset: move them away")
    if not found:
        raise FileNotFoundError(f"no predictions named CASE_fu<t>{FILE_ENDING} in {pred_dir}")
    pairs: dict[str, list[tuple[int, Path]]] = {}
    for case, t, path in found:
        check_case_id(case, where=f"{_PREDICTION} {path}")
        pairs.setdefault(case, []).append((t, path))
    for case, case_pairs in pairs.items():
        followups = [t for t, _ in case_pairs]
        twice = sorted({t for t in followups if followups.count(t) > 1})
        if twice:  # "fu1" and "fu01" name one follow-up
            names = [p.name for t, p in case_pairs if t in twice]
            raise ValueError(f"nnU-Net predictions of case {case!r} name follow-up(s) {twice} twice ({names}) in "
                             f"{pred_dir}: keep one file per follow-up")
        if followups != list(range(1, len(followups) + 1)):
            raise ValueError(f"nnU-Net predictions of case {case!r} must be the pairs {case}_fu1 .. "
                             f"{case}_fu<n> without gaps, found follow-ups {followups} in {pred_dir}")
    ref_grids: dict[str, tuple[Path, tuple[int, ...], np.ndarray]] = {}
    ref_headers: dict[str, SpatialHeader | None] = {}
    if reference is not None:  # every case with all its follow-ups, before anything is read or written
        sources = {s.case_id: s for s in find_cases(check_input_folder(reference, "reference"), require_masks=None)}
        for case, case_pairs in pairs.items():
            if case not in sources:
                raise ValueError(f"nnU-Net predictions of case {case!r} in {pred_dir}: no such case in the reference "
                                 f"cohort {reference}")
            expected = sources[case].num_timepoints - 1
            if len(case_pairs) != expected:
                missing = [f"{case}_fu{t}" for t in range(len(case_pairs) + 1, expected + 1)]
                raise ValueError(f"nnU-Net predictions of case {case!r} hold follow-ups 1 .. {len(case_pairs)} in "
                                 f"{pred_dir}, but the case has {expected} in {reference}" +
                                 (f": predict the missing pair(s) {missing}" if missing else ""))
        unpredicted = sorted(set(sources) - set(pairs))
        if unpredicted:
            raise ValueError(f"the reference cohort {reference} holds {len(unpredicted)} case(s) without any nnU-Net "
                             f"prediction in {pred_dir}: {format_case_ids(unpredicted)}; predict their pairs (e.g. "
                             f"{unpredicted[0]}_fu1) or pass a reference of the predicted cases only")
        for case in pairs:  # the grid and spatial header of each case, for the check and the written masks
            ref_grids[case] = (sources[case].image_files[0][0], *case_grid(sources[case]))
            ref_headers[case] = case_spatial_header(sources[case])
    for case in pairs:  # the destination: refuse an existing case folder before reading any voxel
        dest = out_root / case
        if dest.exists() and not dest.is_dir():
            raise NotADirectoryError(f"{dest} (output folder of case {case!r}) exists and is not a folder")
        if not overwrite and dest.is_dir() and not folder_is_empty(dest):
            raise FileExistsError(f"{dest} (output folder of case {case!r}) already exists; pass overwrite=True "
                                  "to replace it as a whole")
    for case, case_pairs in pairs.items():  # every header: one 3D volume per file, one grid per case
        first: tuple[Path, tuple[int, ...], np.ndarray] | None = ref_grids.get(case)  # the reference's, if given
        hint = (_REFERENCE_GRID_HINT.format(path=first[0]) if first is not None else
                "all pairs of a case must share one grid")
        for _, path in case_pairs:
            img = load_nifti(path, what=_PREDICTION, header_only=True)
            shape = _volume_shape(img.shape, path)
            nifti_spacing(img, path, what=_PREDICTION)
            grid = (path, shape, np.asarray(img.affine, dtype=np.float64))
            if first is None:
                first = grid
            else:
                check_same_grid(grid, first, what=_PREDICTION, hint=hint)
    for case_pairs in tqdm(list(pairs.values()), desc="checking nnU-Net predictions", unit="case",
                           disable=not progress):
        for _, path in case_pairs:  # every label value, before anything is written
            _read_four_class(path)
    written: list[Path] = []
    for case, case_pairs in tqdm(pairs.items(), desc="importing nnU-Net predictions", unit="case",
                                 disable=not progress):
        masks, affine = [], np.eye(4)
        for t, path in case_pairs:
            labels, pair_affine = _read_four_class(path)
            baseline, progression = four_class_to_masks(labels)
            if t == 1:
                masks.append(baseline)
                affine = pair_affine
            masks.append(progression)
        if case in ref_grids:  # the reference case's own grid and header (forms and codes), as predict writes
            affine = ref_grids[case][2]
        written += save_prediction(out_root, case, affine, {"mask": masks}, overwrite=overwrite,
                                   header=ref_headers.get(case))["mask"]
    return written


def _volume_shape(shape: tuple[int, ...], path: Path) -> tuple[int, ...]:
    """The ``(D, H, W)`` shape of a stored label map (``(D, H, W, 1)`` counts as 3D), else ``ValueError``."""
    if len(shape) == 4 and shape[3] == 1:
        shape = shape[:3]
    if len(shape) != 3:
        raise ValueError(f"{_PREDICTION} {path} must be one 3D label map (D, H, W), got shape {tuple(shape)}")
    return tuple(shape)


def _read_four_class(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """``(uint8 labels (D, H, W), affine)`` of a predicted 4-class map, its values checked before any cast (a
    scaled file's rounding error undone first, :func:`~longiseg.data.volumes.read_label_volume`)."""
    arr, affine, _, scaling = read_label_volume(path, what=_PREDICTION)
    bad = ~np.isin(arr, list(FOUR_CLASS_LABELS.values()))
    if bad.any():
        raise ValueError(f"{_PREDICTION} {path} must hold the integer labels {{0, 1, 2, 3}} "
                         f"({', '.join(FOUR_CLASS_LABELS)}), found values such as "
                         f"{format_label_values(np.unique(arr[bad])[:5])}{scaling}")
    return arr.astype(np.uint8), affine


# ----------------------------------------------------------------------------------- structural check


def check_nnunet_raw_dataset(folder: str | Path, *, check_geometry: bool = True) -> dict[str, Any]:
    """Check that ``folder`` follows nnU-Net v2's raw dataset format.

    Checks the folder name ``DatasetXXX_Name``; ``dataset.json`` with ``channel_names`` (keys ``"0".."n-1"``),
    ``labels`` (``background`` 0; each label an int or a list of ints, all of them ``0, 1, 2, ...`` without
    gaps; a region of several labels only with ``regions_class_order``, one label per region, as nnU-Net
    requires), ``numTraining`` (an int) and ``file_ending``; ``imagesTr/`` and ``labelsTr/``; one label per
    case and ``{case}_{XXXX}{file_ending}`` for every channel of every case, nothing else; ``numTraining``
    equal to the number of cases; the optional ``imagesTs/`` (test images) likewise: every file
    ``{case}_{XXXX}{file_ending}``, every channel of every test case, no test case named like a training case.
    With ``check_geometry`` (NIfTI only) every image has its label's (a test image: its case's first
    channel's) shape and affine, and every label file holds declared integer labels only, compared as stored
    (a ``1.5`` is refused, naming the file and the values, not truncated to ``1``).

    Args:
        folder: the ``DatasetXXX_Name`` folder.
        check_geometry: also load the volumes and compare shapes, affines and label values.

    Returns:
        ``{"dataset_id", "name", "num_cases", "num_channels", "cases", "test_cases"}`` (``test_cases``: the
        case ids in ``imagesTs``, ``[]`` without it).

    Raises:
        ValueError: listing every problem found.
    """
    folder = check_path("folder", folder)
    check_geometry = check_bool("check_geometry", check_geometry)
    problems: list[str] = []
    m = _DATASET_DIR_RE.match(folder.name)
    if m is None:
        problems.append(f"folder name {folder.name!r} does not match DatasetXXX_Name (three-digit id)")
    meta_path = folder / "dataset.json"
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ValueError(f"{folder}: dataset.json is missing") from None
    except json.JSONDecodeError as err:
        raise ValueError(f"{meta_path}: not valid JSON ({err})") from None
    for key in ("channel_names", "labels", "numTraining", "file_ending"):
        if key not in meta:
            problems.append(f"dataset.json lacks the required key {key!r}")
    if problems:
        raise ValueError(f"{folder} is not a valid nnU-Net raw dataset:\n- " + "\n- ".join(problems))

    channels = meta["channel_names"]
    if not isinstance(channels, dict) or sorted(channels, key=str) != sorted(str(i) for i in range(len(channels))):
        problems.append(f"channel_names keys must be '0'..'n-1', got {channels!r}")
    ending = meta["file_ending"]
    if not isinstance(ending, str) or not ending.startswith("."):
        problems.append(f"file_ending must be a string starting with '.', got {ending!r}")
        ending = FILE_ENDING
    allowed = _check_labels_json(meta, problems)
    n_train = meta["numTraining"]
    if isinstance(n_train, bool) or not isinstance(n_train, int):
        problems.append(f"numTraining must be an int (the number of training cases), got {n_train!r} "
                        f"({type(n_train).__name__})")
    n_channels = len(channels) if isinstance(channels, dict) else 0

    images_dir, labels_dir = folder / "imagesTr", folder / "labelsTr"
    for d in (images_dir, labels_dir):
        if not d.is_dir():
            problems.append(f"{d.name}/ is missing")
    cases: list[str] = []
    if not problems:
        label_files = sorted(p.name for p in labels_dir.iterdir() if not p.name.startswith("."))
        for name in label_files:
            if not name.endswith(ending):
                problems.append(f"labelsTr/{name} does not end with file_ending {ending!r}")
        cases = [n[: -len(ending)] for n in label_files if n.endswith(ending)]
        expected = {f"{c}_{ch:04d}{ending}" for c in cases for ch in range(n_channels)}
        present = {p.name for p in images_dir.iterdir() if not p.name.startswith(".")}
        for name in sorted(expected - present):
            problems.append(f"imagesTr/{name} is missing")
        for name in sorted(present - expected):
            problems.append(f"imagesTr/{name} has no matching label file or channel")
        if isinstance(n_train, int) and n_train != len(cases):
            problems.append(f"numTraining is {n_train!r} but labelsTr holds {len(cases)} cases")
        if check_geometry and not problems and ending in (".nii.gz", ".nii"):
            for c in cases:
                lab, affine = _load(labels_dir / f"{c}{ending}")
                values = np.unique(lab)  # as stored (scaling applied): nnU-Net compares these, never truncated
                fractional = values[values != np.round(values)]
                if fractional.size:
                    problems.append(f"labelsTr/{c}{ending} holds non-integer label values "
                                    f"{format_label_values(fractional[:5])}; labels must be integers")
                elif allowed is not None and not np.isin(values, sorted(allowed)).all():
                    problems.append(f"labelsTr/{c}{ending} holds undeclared label values "
                                    f"{format_label_values(np.setdiff1d(values, sorted(allowed))[:5])}")
                for ch in range(n_channels):
                    img, img_affine = _load(images_dir / f"{c}_{ch:04d}{ending}")
                    if img.shape != lab.shape or not same_affine(img_affine, affine):
                        problems.append(f"imagesTr/{c}_{ch:04d}{ending}: shape/affine differ from its label")
    test_cases = _check_test_images(folder / "imagesTs", ending, n_channels, set(cases), problems,
                                    check_geometry and ending in (".nii.gz", ".nii"))
    if problems:
        raise ValueError(f"{folder} is not a valid nnU-Net raw dataset:\n- " + "\n- ".join(problems))
    return {
        "dataset_id": int(m.group(1)) if m else None,
        "name": m.group(2) if m else None,
        "num_cases": len(cases),
        "num_channels": n_channels,
        "cases": cases,
        "test_cases": test_cases,
    }


def _check_labels_json(meta: dict[str, Any], problems: list[str]) -> set[int] | None:
    """The label values a label file of ``dataset.json`` ``meta`` may hold (``None`` when its ``labels`` are
    unusable); what nnU-Net v2 refuses in ``labels`` and ``regions_class_order`` is appended to ``problems``.

    Each label is an int or, region-based, a list of ints (a region that unites labels); together they must be
    ``0, 1, 2, ...`` without gaps, ``background`` being ``0``. A region of more than one label makes the dataset
    region-based, which nnU-Net trains only with ``regions_class_order``: one label per region, the order in
    which predicted regions are painted into the label map.
    """
    labels = meta["labels"]
    if not isinstance(labels, dict) or labels.get("background") != 0 or isinstance(labels.get("background"), bool):
        problems.append(f"labels must be a dict with 'background': 0, got {labels!r}")
        return None

    def is_int(v: object) -> bool:
        return isinstance(v, int) and not isinstance(v, bool)

    bad = {k: v for k, v in labels.items()
           if not (is_int(v) or (isinstance(v, list) and v and all(is_int(x) for x in v)))}
    if bad:
        problems.append(f"labels must map each name to an int or a non-empty list of ints (a region), got {bad}")
        return None
    values = {x for v in labels.values() for x in (v if isinstance(v, list) else [v])}
    if sorted(values) != list(range(len(values))):
        problems.append(f"label values must be consecutive 0, 1, 2, ..., got {sorted(values)}")
    regions = [k for k, v in labels.items() if isinstance(v, list) and len(v) > 1]
    if regions:
        order = meta.get("regions_class_order")
        n_regions = sum(1 for k, v in labels.items() if k != "ignore" and set(v if isinstance(v, list) else [v]) != {0})
        if order is None:
            problems.append(f"labels {regions} are regions (lists of labels), which nnU-Net trains only with "
                            "'regions_class_order' in dataset.json (one label per region, in the order the regions "
                            "are painted into the label map): add it")
        elif not (isinstance(order, list) and all(is_int(x) for x in order) and len(order) == n_regions):
            problems.append(f"regions_class_order must be a list of {n_regions} ints (one per region of labels), got "
                            f"{order!r}")
    return values


def _check_test_images(test_dir: Path, ending: str, n_channels: int, training: set[str], problems: list[str],
                       check_geometry: bool) -> list[str]:
    """The case ids of the optional ``imagesTs/``; its naming and geometry problems are appended to ``problems``."""
    if not test_dir.exists():
        return []
    if not test_dir.is_dir():
        problems.append("imagesTs is not a folder")
        return []
    pattern = re.compile(r"^(.+)_(\d{4})" + re.escape(ending) + "$")
    channels: dict[str, set[int]] = {}
    for name in sorted(p.name for p in test_dir.iterdir() if not p.name.startswith(".")):
        m = pattern.match(name)
        if m is None:
            problems.append(f"imagesTs/{name} is not named CASE_XXXX{ending}")
        else:
            channels.setdefault(m.group(1), set()).add(int(m.group(2)))
    for case, found in channels.items():
        for ch in sorted(set(range(n_channels)) - found):
            problems.append(f"imagesTs/{case}_{ch:04d}{ending} is missing")
        for ch in sorted(found - set(range(n_channels))):
            problems.append(f"imagesTs/{case}_{ch:04d}{ending} is a channel that channel_names does not declare")
        if case in training:
            problems.append(f"imagesTs case {case!r} is also a training case")
        if check_geometry and found == set(range(n_channels)):
            first, first_affine = _load(test_dir / f"{case}_0000{ending}")
            for ch in range(1, n_channels):
                img, img_affine = _load(test_dir / f"{case}_{ch:04d}{ending}")
                if img.shape != first.shape or not same_affine(img_affine, first_affine):
                    problems.append(f"imagesTs/{case}_{ch:04d}{ending}: shape/affine differ from channel 0000")
    return sorted(channels)
