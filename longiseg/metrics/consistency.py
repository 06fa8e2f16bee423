"""Longitudinal consistency: does a prediction leave unchanged old lesions alone?

A model that has learned "lesion in the follow-up" instead of "lesion that was not there before" outlines
old lesions as new. Lesion F1 of the progression mask hides this when such false lesions are few; this module
counts them directly.

Definitions (all on the *reference* masks, so every model is measured on the same lesions):

* a **baseline lesion** is a connected component (``connectivity``, default 26) of the reference baseline mask
  with a volume of at least ``min_volume_mm3``;
* it **persists unchanged** at follow-up ``k`` when it does not touch the reference progression mask of ``k``:
  no progression voxel lies in the lesion or in its one-voxel neighbourhood (the same connectivity). A lesion
  that enlarges at ``k`` grows new voxels next to itself, so it touches them and is excluded
  (:func:`longiseg.data.lesions.label_persisting_lesions`, the rule's one owner);
* a persisting lesion is **flagged** when the predicted progression mask of ``k`` covers at least
  ``min_coverage`` (default 10 %) of its voxels.

The **persisting-lesion false-progression rate** is flagged / persisting, per follow-up and pooled over all
follow-ups of a set of patients (pooled: the sum of flagged lesions over the sum of persisting lesions, so a
patient with many lesions counts more, as in lesion-wise detection metrics). It is ``nan`` where no lesion
persists.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from longiseg.data.lesions import label_persisting_lesions  # the rule's owner; the name stays public here
from longiseg.metrics.inputs import MaskLike, as_mask

__all__ = ["PersistingLesions", "label_persisting_lesions", "persisting_lesions", "pooled_false_progression_rate"]


@dataclass(frozen=True)
class PersistingLesions:
    """The persisting baseline lesions of one follow-up and whether a prediction flags them as progression.

    Attributes:
        num_persisting: baseline lesions that do not touch the reference progression mask.
        num_flagged: those covered by the predicted progression mask for at least ``min_coverage``.
        coverage: ``(num_persisting,)`` share of each persisting lesion's voxels inside the predicted mask.
        volumes_mm3: ``(num_persisting,)`` volume of each persisting lesion.
    """

    num_persisting: int
    num_flagged: int
    coverage: np.ndarray
    volumes_mm3: np.ndarray

    @property
    def rate(self) -> float:
        """``num_flagged / num_persisting``; ``nan`` when no lesion persists."""
        return self.num_flagged / self.num_persisting if self.num_persisting else float("nan")


def persisting_lesions(
    pred_progression: MaskLike,
    gt_baseline: MaskLike,
    gt_progression: MaskLike,
    spacing: float | Sequence[float] | np.ndarray | None = None,
    *,
    min_coverage: float = 0.1,
    min_volume_mm3: float = 0.0,
    connectivity: int | None = None,
) -> PersistingLesions:
    """Find the baseline lesions that persist unchanged at a follow-up and those a prediction flags as new.

    Args:
        pred_progression: predicted binary progression mask ``(D, H, W)`` (or ``(H, W)``) of the follow-up.
        gt_baseline: reference binary baseline mask, the same shape (same grid, registered).
        gt_progression: reference binary progression mask of the follow-up, the same shape.
        spacing: voxel size in mm per axis (``None``: 1 mm).
        min_coverage: share of a lesion's voxels the prediction must cover to flag it, in ``(0, 1]``.
        min_volume_mm3: baseline lesions below this volume are not counted.
        connectivity: 6, 18 or 26 in 3D, 4 or 8 in 2D (``None``: full), for the lesions and for "touching".

    Returns:
        :class:`PersistingLesions`.

    Raises:
        TypeError: ``min_coverage`` is not a number.
        ValueError: masks of different shapes or not binary, ``min_coverage`` outside ``(0, 1]``, a negative
            ``min_volume_mm3`` or an unknown connectivity.
    """
    pred = as_mask("pred_progression", pred_progression)
    base = as_mask("gt_baseline", gt_baseline)
    if base.shape != pred.shape:
        raise ValueError(f"gt_baseline has shape {base.shape}, pred_progression {pred.shape}")
    if isinstance(min_coverage, bool) or not isinstance(min_coverage, (int, float, np.integer, np.floating)):
        raise TypeError(f"min_coverage must be a number in (0, 1], got {type(min_coverage).__name__}")
    if not 0.0 < float(min_coverage) <= 1.0:
        raise ValueError(f"min_coverage must lie in (0, 1], got {min_coverage}")
    lesions, persisting = label_persisting_lesions(base, gt_progression, spacing, min_volume_mm3=min_volume_mm3,
                                                   connectivity=connectivity)
    if persisting.size == 0:
        return PersistingLesions(0, 0, np.zeros(0), np.zeros(0))
    covered = np.bincount(lesions.labels[pred & (lesions.labels > 0)], minlength=lesions.n + 1)
    voxels = lesions.voxels[persisting - 1]
    coverage = covered[persisting] / voxels
    # compare voxel counts: 3 of 30 voxels is 10 % although 0.1 * 30 is 3.0000000000000004 in floating point
    flagged = int(np.count_nonzero(covered[persisting] >= np.ceil(float(min_coverage) * voxels - 1e-9)))
    return PersistingLesions(int(persisting.size), flagged, coverage.astype(np.float64),
                             voxels * lesions.voxel_volume_mm3)


def pooled_false_progression_rate(results: Sequence[PersistingLesions]) -> float:
    """Flagged over persisting lesions, summed over follow-ups (``nan`` when none persists).

    Raises:
        TypeError: ``results`` is not a sequence of :class:`PersistingLesions` (of :func:`persisting_lesions`).
    """
    if isinstance(results, (str, bytes)) or not isinstance(results, Sequence) \
            or not all(isinstance(r, PersistingLesions) for r in results):
        raise TypeError("results must be a sequence of PersistingLesions (what persisting_lesions returns), got "
                        f"{type(results).__name__}" + (f" of {sorted({type(r).__name__ for r in results})}"
                                                       if isinstance(results, Sequence) else ""))
    persisting = sum(r.num_persisting for r in results)
    return sum(r.num_flagged for r in results) / persisting if persisting else float("nan")
