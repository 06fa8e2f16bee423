"""Lesion-level detection: connected components, size filtering, lesion matching, lesion F1/PPV/recall.

Lesions are connected components (``cc3d``; 26-connectivity by default in 3D, 8 in 2D) of a binary mask
``(D, H, W)`` (or ``(H, W)``), labelled by :mod:`longiseg.data.lesions` (``label_lesions``, ``LesionLabels``). Components smaller than ``min_volume_mm3`` are removed from both the reference
and the prediction before matching (SegMaST: 11 mm^3, TDW: 3 mm^3). Matching rules (``rule=``):

``"iou"`` (default; TDW / LongiSeg ``detection_metrics.py`` convention)
    Two separate greedy passes. Recall: every reference lesion, in label order, takes the still unclaimed
    predicted lesion with the highest IoU; it is detected (TP) if that IoU is ``> iou_threshold`` (0.1),
    else missed (FN). Precision: the same with the roles swapped, so every predicted lesion is a TP or FP.
    A claimed lesion cannot be used twice within a pass, so a reference lesion split into two predictions
    gives one TP and one FP, and two reference lesions merged into one prediction give one TP and one FN.
``"iou_global"`` (panoptica ``NaiveThresholdMatching``, strict threshold)
    One-to-one greedy matching of all overlapping pairs in order of decreasing IoU, pairs with
    IoU ``> iou_threshold`` only; matched pairs are TPs on both sides.
``"overlap"``
    A reference lesion is detected if any predicted voxel touches it; a predicted lesion is a TP if it
    touches any reference voxel (many-to-many: split and merged lesions are all TPs).

Ties (equal IoU) go to the lower label: lesions are labelled in raster order of their first voxel; ``"iou"``
takes the candidate of lower label, ``"iou_global"`` takes pairs in order of reference, then predicted label.

Scores: recall ``TP_gt / #gt``, precision (lesion PPV) ``TP_pred / #pred``, F1 their harmonic mean; with no
reference lesions recall is ``zero_division`` (1.0), with no predicted lesions precision is ``zero_division``
(1.0); F1 is 0 when precision + recall is 0.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from longiseg.data.lesions import (  # the labelling's owner; its names stay public here
    LesionLabels,
    SpacingLike,
    check_connectivity,
    check_min_volume,
    default_connectivity,
    label_lesions,
    label_mask,
    remove_small_lesions,
)
from longiseg.metrics.inputs import MaskLike, as_mask_pair, as_spacing, foreground_slices
from longiseg.utils.validation import check_instance, check_positive_int, check_probability, check_score

__all__ = [
    "MATCHING_RULES",
    "LesionLabels",
    "LesionOverlaps",
    "LesionMatch",
    "LesionDetection",
    "default_connectivity",
    "label_lesions",
    "remove_small_lesions",
    "lesion_overlaps",
    "match_lesions",
    "detection_scores",
    "detect_lesions",
    "lesion_detection",
    "lesion_f1",
    "lesion_ppv",
    "lesion_recall",
]

MATCHING_RULES: tuple[str, ...] = ("iou", "iou_global", "overlap")


@dataclass(frozen=True)
class LesionOverlaps:
    """All overlapping (reference, prediction) lesion pairs.

    Attributes:
        gt_index: ``(k,)`` 0-based reference lesion index of each pair.
        pred_index: ``(k,)`` 0-based predicted lesion index.
        intersection: ``(k,)`` shared voxels.
        iou: ``(k,)`` intersection over union of the two lesions.
    """

    gt_index: np.ndarray
    pred_index: np.ndarray
    intersection: np.ndarray
    iou: np.ndarray


def lesion_overlaps(gt: LesionLabels, pred: LesionLabels) -> LesionOverlaps:
    """Overlapping lesion pairs of two labellings of the same shape (vectorised with ``np.unique``)."""
    check_instance("gt", gt, LesionLabels, "a LesionLabels (from label_lesions)")
    check_instance("pred", pred, LesionLabels, "a LesionLabels (from label_lesions)")
    if gt.labels.shape != pred.labels.shape:
        raise ValueError(
            f"gt and pred labellings must have the same shape, got {gt.labels.shape} and {pred.labels.shape}"
        )
    both = (gt.labels > 0) & (pred.labels > 0)
    g = gt.labels[both].astype(np.int64) - 1
    p = pred.labels[both].astype(np.int64) - 1
    keys, inter = np.unique(g * max(pred.n, 1) + p, return_counts=True)
    gi, pi = np.divmod(keys, max(pred.n, 1))
    inter = inter.astype(np.int64)
    union = gt.voxels[gi] + pred.voxels[pi] - inter
    iou = inter / np.maximum(union, 1)
    return LesionOverlaps(gi, pi, inter, iou.astype(np.float64))


@dataclass(frozen=True)
class LesionMatch:
    """Outcome of a matching rule: which lesions count as true positives.

    Attributes:
        gt_detected: ``(n_gt,)`` bool, reference lesion counted as detected (TP for recall).
        pred_matched: ``(n_pred,)`` bool, predicted lesion counted as correct (TP for precision).
    """

    gt_detected: np.ndarray
    pred_matched: np.ndarray

    @property
    def tp_gt(self) -> int:
        """Detected reference lesions."""
        return int(self.gt_detected.sum())

    @property
    def tp_pred(self) -> int:
        """Correct predicted lesions."""
        return int(self.pred_matched.sum())

    @property
    def fn(self) -> int:
        """Missed reference lesions."""
        return int(self.gt_detected.size - self.gt_detected.sum())

    @property
    def fp(self) -> int:
        """Predicted lesions without a reference counterpart."""
        return int(self.pred_matched.size - self.pred_matched.sum())


def _greedy_one_side(
    owner: np.ndarray, other: np.ndarray, iou: np.ndarray, n_owner: int, n_other: int, threshold: float
) -> tuple[np.ndarray, np.ndarray]:
    """Each ``owner`` lesion in index order claims the unclaimed ``other`` lesion with the highest IoU."""
    hit = np.zeros(n_owner, dtype=bool)
    claimed = np.zeros(n_other, dtype=bool)
    order = np.lexsort((other, -iou, owner))  # by owner, then IoU descending, then lowest other index
    owner_s, other_s, iou_s = owner[order], other[order], iou[order]
    starts = np.flatnonzero(np.r_[True, owner_s[1:] != owner_s[:-1]]) if owner_s.size else np.empty(0, int)
    ends = np.r_[starts[1:], owner_s.size]
    for s, e in zip(starts.tolist(), ends.tolist()):  # loop over lesions, not voxels
        for k in range(s, e):
            if iou_s[k] <= threshold:
                break
            o = other_s[k]
            if not claimed[o]:
                claimed[o] = True
                hit[owner_s[s]] = True
                break
    return hit, claimed


def _check_matching(rule: str, iou_threshold: float) -> float:
    """Check a matching ``rule`` (one of :data:`MATCHING_RULES`) and return ``iou_threshold`` as a float in
    ``[0, 1)`` (any real number type: Python or NumPy int or float, not bool)."""
    if not isinstance(rule, str) or rule not in MATCHING_RULES:
        raise ValueError(f"rule must be one of {MATCHING_RULES}, got {rule!r}")
    return check_probability("iou_threshold", iou_threshold, include_one=False)


def match_lesions(
    gt: LesionLabels,
    pred: LesionLabels,
    *,
    rule: str = "iou",
    iou_threshold: float = 0.1,
    overlaps: LesionOverlaps | None = None,
) -> LesionMatch:
    """Match reference and predicted lesions with a rule from :data:`MATCHING_RULES` (see module docstring).

    Args:
        gt: reference labelling.
        pred: predicted labelling of the same shape.
        rule: ``"iou"``, ``"iou_global"`` or ``"overlap"``.
        iou_threshold: a pair matches only if IoU ``> iou_threshold`` (IoU rules only), in ``[0, 1)``.
        overlaps: precomputed :func:`lesion_overlaps` (computed if ``None``).
    """
    check_instance("gt", gt, LesionLabels, "a LesionLabels (from label_lesions)")
    check_instance("pred", pred, LesionLabels, "a LesionLabels (from label_lesions)")
    thr = _check_matching(rule, iou_threshold)
    ov = lesion_overlaps(gt, pred) if overlaps is None else overlaps
    if rule == "overlap":
        det = np.zeros(gt.n, dtype=bool)
        mat = np.zeros(pred.n, dtype=bool)
        det[ov.gt_index] = True
        mat[ov.pred_index] = True
        return LesionMatch(det, mat)
    if rule == "iou":
        det, _ = _greedy_one_side(ov.gt_index, ov.pred_index, ov.iou, gt.n, pred.n, thr)
        mat, _ = _greedy_one_side(ov.pred_index, ov.gt_index, ov.iou, pred.n, gt.n, thr)
        return LesionMatch(det, mat)
    # iou_global: one-to-one, pairs in order of decreasing IoU.
    det = np.zeros(gt.n, dtype=bool)
    mat = np.zeros(pred.n, dtype=bool)
    order = np.lexsort((ov.pred_index, ov.gt_index, -ov.iou))
    for k in order.tolist():
        if ov.iou[k] <= thr:
            break
        g, p = ov.gt_index[k], ov.pred_index[k]
        if not det[g] and not mat[p]:
            det[g] = True
            mat[p] = True
    return LesionMatch(det, mat)


@dataclass(frozen=True)
class LesionDetection:
    """Lesion-level result of one case: per-lesion records and the detection scores.

    Attributes:
        gt_voxels: ``(n_gt,)`` voxel counts of the (size-filtered) reference lesions.
        pred_voxels: ``(n_pred,)`` voxel counts of the (size-filtered) predicted lesions.
        voxel_volume_mm3: volume of one voxel.
        overlaps: overlapping lesion pairs (:class:`LesionOverlaps`).
        match: :class:`LesionMatch` of the chosen rule.
        recall: ``TP_gt / n_gt`` (``zero_division`` if no reference lesion).
        precision: lesion PPV, ``TP_pred / n_pred`` (``zero_division`` if no predicted lesion).
        f1: harmonic mean of precision and recall (0 if both are 0).
    """

    gt_voxels: np.ndarray
    pred_voxels: np.ndarray
    voxel_volume_mm3: float
    overlaps: LesionOverlaps
    match: LesionMatch
    recall: float
    precision: float
    f1: float

    @property
    def n_gt(self) -> int:
        """Reference lesions after size filtering."""
        return int(self.gt_voxels.size)

    @property
    def n_pred(self) -> int:
        """Predicted lesions after size filtering."""
        return int(self.pred_voxels.size)

    @property
    def gt_volumes_mm3(self) -> np.ndarray:
        """``(n_gt,)`` reference lesion volumes in mm^3."""
        return self.gt_voxels * self.voxel_volume_mm3

    @property
    def pred_volumes_mm3(self) -> np.ndarray:
        """``(n_pred,)`` predicted lesion volumes in mm^3."""
        return self.pred_voxels * self.voxel_volume_mm3

    def counts(self) -> dict[str, int]:
        """``n_gt``, ``n_pred``, ``tp_gt``, ``tp_pred``, ``fp``, ``fn`` as a dict."""
        m = self.match
        return {
            "n_gt": self.n_gt,
            "n_pred": self.n_pred,
            "tp_gt": m.tp_gt,
            "tp_pred": m.tp_pred,
            "fp": m.fp,
            "fn": m.fn,
        }


def detection_scores(
    tp_gt: int, n_gt: int, tp_pred: int, n_pred: int, zero_division: float = 1.0
) -> tuple[float, float, float]:
    """``(recall, precision, f1)`` from lesion counts with the empty conventions of this module.

    Args:
        tp_gt: reference lesions that are detected, ``0 <= tp_gt <= n_gt``.
        n_gt: reference lesions.
        tp_pred: predicted lesions that are true positives, ``0 <= tp_pred <= n_pred``.
        n_pred: predicted lesions.
        zero_division: recall without reference lesions / precision without predicted lesions, in ``[0, 1]``
            or NaN.

    Raises:
        TypeError: a count is not an int, or ``zero_division`` not a number.
        ValueError: a count is negative, a true-positive count exceeds the count it is a part of, or
            ``zero_division`` lies outside ``[0, 1]``.
    """
    zero_division = check_score("zero_division", zero_division)
    tp_gt, n_gt, tp_pred, n_pred = (
        check_positive_int(name, v, minimum=0)
        for name, v in (("tp_gt", tp_gt), ("n_gt", n_gt), ("tp_pred", tp_pred), ("n_pred", n_pred))
    )
    for tp_name, tp, n_name, n in (("tp_gt", tp_gt, "n_gt", n_gt), ("tp_pred", tp_pred, "n_pred", n_pred)):
        if tp > n:
            raise ValueError(
                f"{tp_name} must be at most {n_name} (it counts a part of those lesions), got "
                f"{tp_name}={tp} and {n_name}={n}"
            )
    recall = tp_gt / n_gt if n_gt > 0 else float(zero_division)
    precision = tp_pred / n_pred if n_pred > 0 else float(zero_division)
    if math.isnan(recall) or math.isnan(precision):  # zero_division=NaN: an undefined score leaves F1 undefined
        f1 = float("nan")
    else:
        f1 = 2 * recall * precision / (recall + precision) if recall + precision > 0 else 0.0
    return float(recall), float(precision), float(f1)


def lesion_detection(
    pred: MaskLike,
    gt: MaskLike,
    spacing: SpacingLike = None,
    *,
    min_volume_mm3: float = 0.0,
    connectivity: int | None = None,
    rule: str = "iou",
    iou_threshold: float = 0.1,
    zero_division: float = 1.0,
) -> LesionDetection:
    """Lesion detection of a predicted against a reference binary mask ``(D, H, W)`` or ``(H, W)``.

    Args:
        pred: predicted binary mask.
        gt: reference binary mask of the same shape.
        spacing: voxel size in mm per axis (``None``: 1 mm isotropic).
        min_volume_mm3: lesions smaller than this are removed from both masks first.
        connectivity: component connectivity (``None``: 26 in 3D, 8 in 2D).
        rule: matching rule, one of :data:`MATCHING_RULES`.
        iou_threshold: IoU must exceed this for a match (IoU rules).
        zero_division: recall without reference lesions / precision without predicted lesions, in ``[0, 1]``
            or NaN.

    Raises:
        TypeError: a mask, the spacing, ``min_volume_mm3``, ``iou_threshold`` or ``zero_division`` of the wrong
            type.
        ValueError: bad masks or spacing, an unknown ``rule`` or ``connectivity``, a negative
            ``min_volume_mm3``, ``iou_threshold`` outside ``[0, 1)`` or ``zero_division`` outside ``[0, 1]``.
    """
    p, g = as_mask_pair(pred, gt)
    sp = as_spacing(spacing, p.ndim)
    conn = check_connectivity(connectivity, p.ndim)
    vmin = check_min_volume(min_volume_mm3)
    iou_threshold = _check_matching(rule, iou_threshold)
    zero_division = check_score("zero_division", zero_division)
    sl = foreground_slices(p, g)
    if sl is not None:  # lesions are translation invariant: work on the bounding box of both masks
        p, g = p[sl], g[sl]
    return detect_lesions(p, g, sp, conn, vmin, rule, iou_threshold, zero_division)[0]


def detect_lesions(
    p: np.ndarray,
    g: np.ndarray,
    sp: np.ndarray,
    connectivity: int,
    min_volume_mm3: float,
    rule: str,
    iou_threshold: float,
    zero_division: float = 1.0,
) -> tuple[LesionDetection, LesionLabels, LesionLabels]:
    """:func:`lesion_detection` without its conversions, also returning both labellings.

    Args:
        p: predicted ``bool`` mask ``(D, H, W)`` or ``(H, W)``.
        g: reference ``bool`` mask of the same shape.
        sp: voxel size in mm per axis, ``(ndim,)`` float array.
        connectivity: 6, 18 or 26 in 3D; 4 or 8 in 2D.
        min_volume_mm3: lesions smaller than this are left out of both labellings.
        rule: the matching rule (:data:`MATCHING_RULES`).
        iou_threshold: as in :func:`lesion_detection`.
        zero_division: as in :func:`lesion_detection`.

    Returns:
        ``(detection, reference labels, predicted labels)``.

    Raises:
        TypeError: ``p`` or ``g`` is not a ``bool`` array.
        ValueError: ``p`` and ``g`` differ in shape, or a bad spacing or option (see
            :func:`~longiseg.data.lesions.label_mask`).
    """
    if np.shape(p) != np.shape(g):
        raise ValueError(f"p (prediction) and g (reference) must have the same shape, got {np.shape(p)} and "
                         f"{np.shape(g)}")
    gl = label_mask(g, sp, connectivity, min_volume_mm3, name="g (reference)")
    pl = label_mask(p, sp, connectivity, min_volume_mm3, name="p (prediction)")
    ov = lesion_overlaps(gl, pl)
    m = match_lesions(gl, pl, rule=rule, iou_threshold=iou_threshold, overlaps=ov)
    r, pr, f1 = detection_scores(m.tp_gt, gl.n, m.tp_pred, pl.n, zero_division)
    return LesionDetection(gl.voxels, pl.voxels, gl.voxel_volume_mm3, ov, m, r, pr, f1), gl, pl


def lesion_f1(pred: MaskLike, gt: MaskLike, spacing: SpacingLike = None, **kwargs: object) -> float:
    """Lesion-wise F1 score of two binary masks ``(D, H, W)`` or ``(H, W)``.

    ``spacing`` (mm per axis) and the keyword arguments are those of :func:`lesion_detection`, which raises the
    ``TypeError``/``ValueError`` for bad masks, spacing or options.
    """
    return lesion_detection(pred, gt, spacing, **kwargs).f1  # type: ignore[arg-type]


def lesion_ppv(pred: MaskLike, gt: MaskLike, spacing: SpacingLike = None, **kwargs: object) -> float:
    """Lesion-wise PPV (precision over predicted lesions) of two binary masks ``(D, H, W)`` or ``(H, W)``.

    ``spacing`` (mm per axis) and the keyword arguments are those of :func:`lesion_detection`, which raises the
    ``TypeError``/``ValueError`` for bad masks, spacing or options.
    """
    return lesion_detection(pred, gt, spacing, **kwargs).precision  # type: ignore[arg-type]


def lesion_recall(pred: MaskLike, gt: MaskLike, spacing: SpacingLike = None, **kwargs: object) -> float:
    """Lesion-wise recall (over reference lesions) of two binary masks ``(D, H, W)`` or ``(H, W)``.

    ``spacing`` (mm per axis) and the keyword arguments are those of :func:`lesion_detection`, which raises the
    ``TypeError``/``ValueError`` for bad masks, spacing or options.
    """
    return lesion_detection(pred, gt, spacing, **kwargs).recall  # type: ignore[arg-type]
