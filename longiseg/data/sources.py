"""Where a case's files are, and how each of its masks is derived from them (no voxels read until asked).

A :class:`CaseSource` lists a case's image files (timepoint-major, one per modality), its masks as
:class:`MaskSpec` (the library layout stores binary masks directly; dataset adapters
(:mod:`longiseg.data.adapters`) derive masks from label maps) and an optional brain mask. Both are plain,
picklable records, so lists of sources travel to DataLoader workers cheaply. :func:`build_mask` reads one mask.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from longiseg.data import layout
from longiseg.data.volumes import format_label_values, read_label_volume, read_mask
from longiseg.utils.nifti import load_nifti
from longiseg.utils.validation import check_bool, check_instance

__all__ = ["MaskSpec", "CaseSource", "build_mask"]


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
            :func:`~longiseg.data.loading.load_case` or :meth:`progression_flag` computes it).
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
        check_bool("baseline_annotated", self.baseline_annotated)
        if self.has_progression is not None:
            check_bool("has_progression", self.has_progression)
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
        return any(bool(build_mask(spec, self.case_id).any()) for spec in self.progression_masks)



def _read_label_map(path: Path, case_id: str, allowed: tuple[int, ...] | None) -> np.ndarray:
    """An integer-valued label map, refusing values outside ``0`` and ``allowed`` (see :class:`MaskSpec`)."""
    arr, _, _, scaling = read_label_volume(path, what=f"case {case_id!r}: mask")
    bad = None if allowed is None else ~np.isin(arr, np.asarray((0, *allowed)))
    if bad is None and np.issubdtype(arr.dtype, np.floating):
        bad = arr != np.round(arr)
    if bad is not None and bad.any():
        found = format_label_values(np.unique(arr[bad])[:10])
        may = "only integers" if allowed is None else f"only 0 and {', '.join(map(str, allowed))}"
        n = int(bad.sum())
        raise ValueError(f"case {case_id!r}: label map {path} holds value(s) {found} ({n} "
                         f"voxel{'s' * (n != 1)}){scaling}; it may hold {may}: fix the file or leave the case out")
    return arr


def _labelled(arr: np.ndarray, labels: tuple[int, ...] | None) -> np.ndarray:
    return arr != 0 if labels is None else np.isin(arr, labels)


def build_mask(spec: MaskSpec, case_id: str) -> np.ndarray:
    """Read the mask ``spec`` describes.

    Args:
        spec: the files and the rule that derives the mask from them.
        case_id: the case, for messages.

    Returns:
        The ``(D, H, W)`` uint8 mask (0/1) in the files' index order.

    Raises:
        FileNotFoundError: a file is missing.
        ValueError: naming the file: unreadable, not one 3D volume, a binary mask with other values than 0/1, a
            label map with values outside the spec's ``allowed`` labels (or non-integer values).
        TypeError: ``spec`` is not a :class:`MaskSpec`.
    """
    check_instance("spec", spec, MaskSpec, "a MaskSpec")
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
