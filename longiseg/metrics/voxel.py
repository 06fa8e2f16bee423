"""Voxel-level metrics: Dice, PPV, sensitivity and the (95th percentile) Hausdorff distance.

All functions take a prediction and a reference binary mask of shape ``(D, H, W)`` (or ``(H, W)``) as NumPy
arrays or torch tensors. Distances are in millimetres, computed with the voxel ``spacing``.

Empty-mask conventions (see ``docs/metrics.md``):

* Dice: both masks empty -> ``empty_value`` (default 1.0); one empty -> 0.0.
* PPV / sensitivity: no predicted / no reference voxels -> ``zero_division`` (default 1.0, as LongiSeg
  counts "nothing predicted" as "nothing wrongly predicted").
* Hausdorff distance: both empty -> ``both_empty`` (default 0.0); exactly one empty -> ``one_empty``
  (default NaN, left out of ``nanmean`` aggregation and counted separately).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import numpy as np
from scipy.spatial import cKDTree

from longiseg.metrics.inputs import MaskLike, as_mask, as_mask_pair, as_spacing
from longiseg.utils.validation import check_score

__all__ = [
    "ConfusionCounts",
    "confusion_counts",
    "dice",
    "ppv",
    "sensitivity",
    "mask_surface",
    "surface_distances",
    "hausdorff_distance",
    "hd95",
    "check_distance_value",
]

SpacingLike = float | Sequence[float] | np.ndarray | None


class ConfusionCounts(NamedTuple):
    """Voxel counts of a prediction against a reference: true positives, false positives, false negatives; the
    one place the voxel scores are computed from them (:func:`dice`, :func:`ppv`, :func:`sensitivity` and the
    metrics of a mask pair count once and ask these)."""

    tp: int
    fp: int
    fn: int

    def dice(self, empty_value: float = 1.0) -> float:
        """``2 TP / (2 TP + FP + FN)``; ``empty_value`` when both masks are empty (not checked here)."""
        return _ratio(2 * self.tp, 2 * self.tp + self.fp + self.fn, empty_value)

    def ppv(self, zero_division: float = 1.0) -> float:
        """``TP / (TP + FP)``; ``zero_division`` when nothing is predicted (not checked here)."""
        return _ratio(self.tp, self.tp + self.fp, zero_division)

    def sensitivity(self, zero_division: float = 1.0) -> float:
        """``TP / (TP + FN)``; ``zero_division`` when the reference is empty (not checked here)."""
        return _ratio(self.tp, self.tp + self.fn, zero_division)


def _counts(p: np.ndarray, g: np.ndarray) -> ConfusionCounts:
    n_p = int(np.count_nonzero(p))
    n_g = int(np.count_nonzero(g))
    tp = int(np.count_nonzero(np.logical_and(p, g))) if n_p and n_g else 0
    return ConfusionCounts(tp, n_p - tp, n_g - tp)


def confusion_counts(pred: MaskLike, gt: MaskLike) -> ConfusionCounts:
    """Voxel TP/FP/FN of ``pred`` against ``gt``, both binary ``(D, H, W)`` or ``(H, W)`` of equal shape."""
    p, g = as_mask_pair(pred, gt)
    return _counts(p, g)


def _ratio(num: int, den: int, zero_division: float) -> float:
    return float(num) / float(den) if den > 0 else float(zero_division)


def dice(pred: MaskLike, gt: MaskLike, *, empty_value: float = 1.0) -> float:
    """Dice coefficient ``2|P∩G| / (|P| + |G|)`` of two binary masks ``(D, H, W)`` or ``(H, W)``.

    Args:
        pred: predicted binary mask.
        gt: reference binary mask of the same shape.
        empty_value: value returned when both masks are empty (default 1.0: a correct "nothing there"), in
            ``[0, 1]`` or NaN (undefined).

    Raises:
        TypeError: ``empty_value`` is not a number.
        ValueError: ``empty_value`` outside ``[0, 1]``; masks not binary or of different shapes.
    """
    empty_value = check_score("empty_value", empty_value)
    p, g = as_mask_pair(pred, gt)
    return _counts(p, g).dice(empty_value)


def ppv(pred: MaskLike, gt: MaskLike, *, zero_division: float = 1.0) -> float:
    """Voxel PPV (precision) ``TP / (TP + FP)`` of two binary masks ``(D, H, W)`` or ``(H, W)``.

    Args:
        pred: predicted binary mask.
        gt: reference binary mask of the same shape.
        zero_division: value returned when nothing is predicted, in ``[0, 1]`` or NaN.

    Raises:
        TypeError: ``zero_division`` is not a number.
        ValueError: ``zero_division`` outside ``[0, 1]``; masks not binary or of different shapes.
    """
    zero_division = check_score("zero_division", zero_division)
    p, g = as_mask_pair(pred, gt)
    return _counts(p, g).ppv(zero_division)


def sensitivity(pred: MaskLike, gt: MaskLike, *, zero_division: float = 1.0) -> float:
    """Voxel sensitivity (recall) ``TP / (TP + FN)`` of two binary masks ``(D, H, W)`` or ``(H, W)``.

    Args:
        pred: predicted binary mask.
        gt: reference binary mask of the same shape.
        zero_division: value returned when the reference is empty, in ``[0, 1]`` or NaN.

    Raises:
        TypeError: ``zero_division`` is not a number.
        ValueError: ``zero_division`` outside ``[0, 1]``; masks not binary or of different shapes.
    """
    zero_division = check_score("zero_division", zero_division)
    p, g = as_mask_pair(pred, gt)
    return _counts(p, g).sensitivity(zero_division)


def check_distance_value(name: str, value: object) -> float:
    """Return ``value`` as a ``float`` if it can stand for a distance in mm: a number ``>= 0`` (``inf``
    included) or NaN (undefined); the check of the empty-mask values of :func:`hausdorff_distance` (and of
    ``EvaluationProtocol.hd_one_empty``).

    Raises:
        TypeError: ``value`` is not a real number (``None``, strings, booleans).
        ValueError: ``value`` is negative.
    """
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise TypeError(f"{name} must be a distance in mm (a number >= 0, inf or NaN), got {type(value).__name__} "
                        f"{value!r}")
    v = float(value)
    if v < 0:
        raise ValueError(f"{name} must be a distance in mm (a number >= 0, inf or NaN), got {v}")
    return v


def _surface_coords(mask: np.ndarray) -> np.ndarray:
    """``(N, ndim)`` indices of the surface voxels of a ``bool`` mask (see :func:`mask_surface`).

    Vectorised over the mask's voxels: each of the ``2 * ndim`` face neighbours is looked up once in the
    flattened array (``np.flatnonzero`` is much faster than ``np.nonzero`` on large 3D arrays).
    """
    m = np.ascontiguousarray(mask)
    flat_mask = m.ravel()
    flat = np.flatnonzero(flat_mask)
    coords = np.unravel_index(flat, m.shape)
    strides = np.cumprod((1,) + m.shape[:0:-1])[::-1]  # element strides of a C-ordered array
    surface = np.zeros(flat.size, dtype=bool)
    for ax in range(m.ndim):
        at_low, at_high = coords[ax] == 0, coords[ax] == m.shape[ax] - 1
        surface |= at_low | at_high
        inner = ~(at_low | at_high)
        st = int(strides[ax])
        surface[inner] |= ~flat_mask[flat[inner] - st] | ~flat_mask[flat[inner] + st]
    return np.stack(coords, axis=1)[surface]


def mask_surface(mask: MaskLike) -> np.ndarray:
    """Surface (edge) voxels of a binary mask ``(D, H, W)`` or ``(H, W)``, as a ``bool`` array.

    A voxel of the mask is on the surface if one of its face neighbours is background; voxels on the array
    border count as surface (outside the array is background). Same set as MONAI's ``get_mask_edges``
    (``binary_erosion(mask) ^ mask``).
    """
    m = as_mask("mask", mask)
    out = np.zeros(m.shape, dtype=bool)
    out[tuple(_surface_coords(m).T)] = True
    return out


def surface_distances(
    pred: MaskLike, gt: MaskLike, spacing: SpacingLike = None
) -> tuple[np.ndarray, np.ndarray]:
    """Distances in mm from each surface voxel of one mask to the nearest surface voxel of the other.

    Args:
        pred: predicted binary mask ``(D, H, W)`` or ``(H, W)``; must be non-empty.
        gt: reference binary mask of the same shape; must be non-empty.
        spacing: voxel size in mm per axis (``None``: 1 mm isotropic).

    Returns:
        ``(pred_to_gt, gt_to_pred)``: float64 arrays of length ``#surface(pred)`` and ``#surface(gt)``.
    """
    p, g = as_mask_pair(pred, gt)
    sp = as_spacing(spacing, p.ndim)
    if not p.any() or not g.any():
        raise ValueError("surface_distances needs non-empty pred and gt masks; got an empty mask")
    return _surface_distances(p, g, sp)


def _surface_distances(p: np.ndarray, g: np.ndarray, sp: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Exact Euclidean nearest-surface distances via KD-trees over the (few) surface voxels."""
    cp = _surface_coords(p) * sp
    cg = _surface_coords(g) * sp
    d_pg = cKDTree(cg).query(cp, k=1)[0]
    d_gp = cKDTree(cp).query(cg, k=1)[0]
    return np.asarray(d_pg, dtype=np.float64), np.asarray(d_gp, dtype=np.float64)


def hausdorff_distance(
    pred: MaskLike,
    gt: MaskLike,
    spacing: SpacingLike = None,
    *,
    percentile: float | None = 95.0,
    both_empty: float = 0.0,
    one_empty: float = float("nan"),
) -> float:
    """Symmetric (percentile) Hausdorff distance in mm between the surfaces of two binary masks.

    ``max(q(d(pred -> gt)), q(d(gt -> pred)))`` where ``q`` is the ``percentile``-th percentile (linear
    interpolation, as ``numpy.percentile`` and MONAI's ``torch.quantile``) or the maximum when
    ``percentile is None``. Surface voxels as in :func:`mask_surface`.

    Args:
        pred: predicted binary mask ``(D, H, W)`` or ``(H, W)``.
        gt: reference binary mask of the same shape.
        spacing: voxel size in mm per axis (``None``: 1 mm isotropic).
        percentile: in ``[0, 100]``; ``None`` for the classic (maximum) Hausdorff distance.
        both_empty: value when both masks are empty (default 0.0: perfect agreement); ``>= 0``, inf or NaN.
        one_empty: value when exactly one mask is empty (default NaN: undefined); ``>= 0``, inf or NaN.

    Raises:
        TypeError: ``percentile``, ``both_empty`` or ``one_empty`` is not a number.
        ValueError: ``percentile`` outside ``[0, 100]``, a negative ``both_empty``/``one_empty``, bad masks or
            spacing.
    """
    both_empty = check_distance_value("both_empty", both_empty)
    one_empty = check_distance_value("one_empty", one_empty)
    p, g = as_mask_pair(pred, gt)
    sp = as_spacing(spacing, p.ndim)
    if percentile is not None:
        if isinstance(percentile, bool) or not isinstance(percentile, (int, float, np.floating, np.integer)):
            raise TypeError(
                f"percentile must be a number in [0, 100] or None, got {type(percentile).__name__}"
            )
        if not 0.0 <= float(percentile) <= 100.0:
            raise ValueError(f"percentile must lie in [0, 100], got {percentile}")
    has_p, has_g = bool(p.any()), bool(g.any())
    if not has_p and not has_g:
        return float(both_empty)
    if not has_p or not has_g:
        return float(one_empty)
    d_pg, d_gp = _surface_distances(p, g, sp)
    if percentile is None:
        return float(max(d_pg.max(), d_gp.max()))
    q = float(percentile)
    return float(max(np.percentile(d_pg, q), np.percentile(d_gp, q)))


def hd95(
    pred: MaskLike,
    gt: MaskLike,
    spacing: SpacingLike = None,
    *,
    both_empty: float = 0.0,
    one_empty: float = float("nan"),
) -> float:
    """95th percentile symmetric Hausdorff distance in mm of two binary masks ``(D, H, W)`` or ``(H, W)`` of one
    shape; :func:`hausdorff_distance` with ``percentile=95`` (its conventions for empty masks and its errors)."""
    return hausdorff_distance(pred, gt, spacing, percentile=95.0, both_empty=both_empty, one_empty=one_empty)
