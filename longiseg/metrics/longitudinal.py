"""Longitudinal (SegMaST) conventions: B/P/NP Dice, the strict NP rule and Disease Activity Assessment.

A longitudinal case has a baseline lesion mask (B) and one progression mask (new or enlarging lesions) per
follow-up. A follow-up is a *progression* case (P) when its reference progression mask is non-empty and a
*no-progression* case (NP) otherwise. SegMaST scores NP follow-ups strictly: 1 if the predicted progression
mask is empty, else 0. Disease Activity Assessment (DAA) counts a follow-up as correct when progression is
predicted for a P case and none for an NP case, reported as a percentage of follow-up scans.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from longiseg.data.lesions import check_connectivity, check_min_volume, label_mask
from longiseg.metrics.consistency import persisting_lesions
from longiseg.metrics.inputs import (
    MaskLike,
    as_mask,
    as_mask_pair,
    as_spacing,
    check_followup_masks,
    foreground_slices,
)
from longiseg.metrics.lesion import (
    LesionDetection,
    detect_lesions,
)
from longiseg.metrics.protocol import EvaluationProtocol, get_protocol
from longiseg.metrics.voxel import confusion_counts, hausdorff_distance
from longiseg.utils.validation import as_numpy, check_instance

__all__ = [
    "CASE_KINDS",
    "np_score",
    "has_progression",
    "progression_kind",
    "followup_kind",
    "shows_activity",
    "disease_activity_correct",
    "disease_activity_assessment",
    "evaluate_mask_pair",
    "evaluate_longitudinal_case",
]

CASE_KINDS: tuple[str, ...] = ("B", "P", "NP")
SpacingLike = float | Sequence[float] | np.ndarray | None


def np_score(pred_progression: MaskLike) -> float:
    """Strict SegMaST NP score of a predicted progression mask ``(D, H, W)``: 1.0 if empty else 0.0."""
    return 0.0 if as_mask("pred_progression", pred_progression).any() else 1.0


def has_progression(
    mask: MaskLike,
    spacing: SpacingLike = None,
    *,
    min_volume_mm3: float = 0.0,
    connectivity: int | None = None,
) -> bool:
    """Whether a mask ``(D, H, W)`` holds a lesion of volume ``>= min_volume_mm3`` (any voxel if 0).

    Raises:
        TypeError: ``min_volume_mm3`` is not a number.
        ValueError: a non-binary mask, a negative or non-finite ``min_volume_mm3``, bad spacing or connectivity.
    """
    m = as_mask("mask", mask)
    vmin = check_min_volume(min_volume_mm3)
    sp = as_spacing(spacing, m.ndim)
    conn = check_connectivity(connectivity, m.ndim)
    if vmin == 0:
        return bool(m.any())
    sl = foreground_slices(m)  # the lesions' bounding box holds them whole: labelling it is enough
    return sl is not None and label_mask(m[sl], sp, conn, vmin).n > 0


def progression_kind(gt_progression: MaskLike) -> str:
    """``"P"`` if the reference progression mask ``(D, H, W)`` is non-empty, else ``"NP"``."""
    return "P" if as_mask("gt_progression", gt_progression).any() else "NP"


def disease_activity_correct(pred_progression: MaskLike, gt_progression: MaskLike, spacing: SpacingLike = None,
                             protocol: str | EvaluationProtocol = "segmast") -> bool:
    """DAA for one follow-up: whether the predicted activity equals the reference activity, activity as
    ``protocol`` sees it (a non-empty mask; under a protocol that filters voxel metrics, ``tdw``, a lesion that
    survives its size filter), as the ``daa_correct`` column of :func:`evaluate_longitudinal_case`.

    Args:
        pred_progression: predicted binary progression mask ``(D, H, W)`` or ``(H, W)``.
        gt_progression: reference binary progression mask of the same shape.
        spacing: voxel size in mm per axis (used by a protocol with a size filter).
        protocol: protocol name or :class:`EvaluationProtocol`.

    Raises:
        ValueError: masks not binary or of different shapes, a bad spacing or protocol.
    """
    p, g = as_mask_pair(pred_progression, gt_progression, names=("pred_progression", "gt_progression"))
    prot = get_protocol(protocol)
    return (shows_activity(p, spacing, prot, name="pred_progression")
            == shows_activity(g, spacing, prot, name="gt_progression"))


def disease_activity_assessment(correct: Sequence[bool] | np.ndarray) -> float:
    """DAA in percent: share of follow-up scans whose activity was classified correctly.

    Args:
        correct: ``(N,)`` booleans, one per follow-up scan (from :func:`disease_activity_correct`).

    Raises:
        TypeError: ``correct`` is no sequence, array or tensor (a generator or a set: make it a list).
        ValueError: not a non-empty 1D collection of booleans or 0/1.
    """
    arr = as_numpy("correct", correct) if isinstance(correct, torch.Tensor) else np.asarray(correct)
    if arr.ndim == 0:  # a generator, a set or one bool: NumPy made a 0-d array of it
        raise TypeError(f"correct must be a sequence, array or tensor of booleans, got {type(correct).__name__}")
    if arr.ndim != 1 or arr.size == 0:
        raise ValueError(f"correct must be a non-empty 1D sequence of booleans, got shape {arr.shape}")
    if arr.dtype != bool:
        if not np.isin(arr, (0, 1)).all():
            raise ValueError("correct must hold booleans (or 0/1)")
        arr = arr.astype(bool)
    return float(100.0 * arr.mean())


def shows_activity(mask: MaskLike, spacing: SpacingLike = None, protocol: str | EvaluationProtocol = "segmast",
                   *, name: str = "mask") -> bool:
    """Whether a progression mask ``(D, H, W)`` shows activity (new or enlarging lesions) under ``protocol``: any
    voxel, or with a protocol that filters voxel metrics (``tdw``), any lesion that survives its size filter. The
    one rule of P/NP (:func:`followup_kind`), DAA (:func:`disease_activity_correct`, the ``daa_correct`` column)
    and tuning's NP score.

    Args:
        mask: binary progression mask, predicted or reference.
        spacing: voxel size in mm per axis (checked whether or not the protocol needs it).
        protocol: protocol name or :class:`EvaluationProtocol`.
        name: the argument's name in messages.

    Raises:
        ValueError: a non-binary mask, a bad spacing or protocol.
    """
    prot = get_protocol(protocol)
    m = as_mask(name, mask)
    as_spacing(spacing, m.ndim)  # checked whether or not the protocol needs it: a bad one is a caller's error
    if not prot.filter_voxel_metrics:
        return bool(m.any())
    return has_progression(m, spacing, min_volume_mm3=prot.min_lesion_volume_mm3,
                           connectivity=prot.connectivity_for(m.ndim))


def followup_kind(gt_progression: MaskLike, spacing: SpacingLike = None,
                  protocol: str | EvaluationProtocol = "segmast") -> str:
    """``"P"`` or ``"NP"`` of a follow-up under ``protocol``: :func:`progression_kind` of the reference
    ``(D, H, W)`` as the protocol's metrics see it (after its size filter when it filters voxel metrics, so
    a ``tdw`` follow-up whose only new lesion is below 3 mm^3 is NP)."""
    return "P" if shows_activity(gt_progression, spacing, protocol, name="gt_progression") else "NP"


def evaluate_mask_pair(
    pred: MaskLike,
    gt: MaskLike,
    spacing: SpacingLike = None,
    protocol: str | EvaluationProtocol = "segmast",
    *,
    kind: str = "B",
) -> tuple[dict[str, Any], LesionDetection]:
    """All metrics of one predicted/reference mask pair ``(D, H, W)`` under ``protocol``.

    Args:
        pred: predicted binary mask.
        gt: reference binary mask of the same shape.
        spacing: voxel size in mm per axis.
        protocol: protocol name or :class:`EvaluationProtocol`.
        kind: ``"B"``, ``"P"`` or ``"NP"``; for ``"NP"`` with ``protocol.strict_np``, Dice is the
            strict NP score. ``"P"`` needs a non-empty and ``"NP"`` an empty reference (after the protocol's
            size filter when it filters voxel metrics; see :func:`followup_kind`).

    Returns:
        ``(metrics, detection)``: a flat dict (``dice``, ``hd95``, ``voxel_ppv``, ``voxel_sensitivity``,
        ``lesion_f1``, ``lesion_ppv``, ``lesion_recall``, lesion counts, ``gt_volume_mm3`` and
        ``pred_volume_mm3`` of the masks as given, before any size filter) and the
        :class:`~longiseg.metrics.lesion.LesionDetection` with per-lesion records.

    Raises:
        ValueError: an unknown ``kind``, or one the reference contradicts.
    """
    if kind not in CASE_KINDS:
        raise ValueError(f"kind must be one of {CASE_KINDS}, got {kind!r}")
    prot = get_protocol(protocol)
    p, g = as_mask_pair(pred, gt)
    sp = as_spacing(spacing, p.ndim)
    conn = prot.connectivity_for(p.ndim)
    sl = foreground_slices(p, g)
    if sl is not None:  # every metric here is invariant to cropping away common background
        p, g = p[sl], g[sl]
    det, gl, pl = detect_lesions(
        p, g, sp, conn, prot.min_lesion_volume_mm3, prot.matching, prot.iou_threshold
    )
    vp, vg = (pl.labels > 0, gl.labels > 0) if prot.filter_voxel_metrics else (p, g)
    if kind != "B" and (kind == "P") != bool(vg.any()):
        raise ValueError(f"kind={kind!r} but the reference progression mask is "
                         f"{'not ' * bool(vg.any())}empty{' after the protocol size filter' * prot.filter_voxel_metrics}"
                         f"; use kind={'P' if vg.any() else 'NP'!r} (followup_kind gives it)")
    c = confusion_counts(vp, vg)
    if kind == "NP" and prot.strict_np:  # the raw prediction, as documented: any voxel is "progression"
        dice_value = 0.0 if p.any() else 1.0
    else:
        dice_value = c.dice()
    match = det.match
    metrics: dict[str, Any] = {
        "dice": dice_value,
        "hd95": hausdorff_distance(vp, vg, sp, percentile=prot.hd_percentile, one_empty=prot.hd_one_empty),
        "voxel_ppv": c.ppv(),
        "voxel_sensitivity": c.sensitivity(),
        "lesion_f1": det.f1,
        "lesion_ppv": det.precision,
        "lesion_recall": det.recall,
        "n_gt_lesions": gl.n,
        "n_pred_lesions": pl.n,
        "lesion_tp_gt": match.tp_gt,
        "lesion_tp_pred": match.tp_pred,
        "lesion_fp": match.fp,
        "lesion_fn": match.fn,
        "gt_volume_mm3": float(np.count_nonzero(g) * gl.voxel_volume_mm3),
        "pred_volume_mm3": float(np.count_nonzero(p) * gl.voxel_volume_mm3),
    }
    return metrics, det


def evaluate_longitudinal_case(
    pred_baseline: MaskLike,
    gt_baseline: MaskLike,
    pred_progression: Sequence[MaskLike],
    gt_progression: Sequence[MaskLike],
    spacing: SpacingLike = None,
    protocol: str | EvaluationProtocol = "segmast",
    *,
    case_id: str = "case",
    patient_id: str | None = None,
) -> tuple[list[dict[str, Any]], list[LesionDetection]]:
    """Evaluate one longitudinal case: the baseline mask and ``T-1`` follow-up progression masks.

    Args:
        pred_baseline: predicted baseline mask ``(D, H, W)``.
        gt_baseline: reference baseline mask ``(D, H, W)``.
        pred_progression: ``T-1`` predicted progression masks ``(D, H, W)`` (or a ``(T-1, D, H, W)`` array).
        gt_progression: ``T-1`` reference progression masks, same count and shapes.
        spacing: voxel size in mm.
        protocol: protocol name or :class:`EvaluationProtocol`.
        case_id: case identifier written into every row.
        patient_id: patient identifier (defaults to ``case_id``).

    Returns:
        ``(rows, detections)``: one row per target (baseline first, then ``progression_t1`` ...) with keys
        ``case_id``, ``patient_id``, ``target``, ``timepoint``, ``kind`` (B/P/NP, :func:`followup_kind`),
        ``daa_correct`` (None for the baseline; activity as the protocol sees it, so under ``tdw`` only lesions
        that survive its size filter count) and the metrics of :func:`evaluate_mask_pair`; follow-up rows also hold
        ``persisting_lesions``, ``persisting_flagged`` and ``persisting_fp`` (their ratio; NaN without persisting
        lesions) of :func:`~longiseg.metrics.consistency.persisting_lesions` on the reference lesions at ``i - 1``
        (the baseline's and those new at follow-ups ``1 .. i - 1``: a lesion new at t1 is old at t2), with the
        protocol's minimum lesion volume; and the matching lesion detections.

    Raises:
        TypeError: a mask is not an array or tensor, or ``pred_progression``/``gt_progression`` is not a
            sequence of masks or an array.
        ValueError: a non-binary mask, masks of different shapes, no follow-up, a single ``(D, H, W)`` array as
            the follow-ups, or different numbers of follow-ups.
    """
    pred_baseline, gt_baseline = as_mask_pair(pred_baseline, gt_baseline, names=("pred_baseline", "gt_baseline"))
    check_followup_masks("pred_progression", pred_progression, pred_baseline.ndim)
    check_followup_masks("gt_progression", gt_progression, gt_baseline.ndim)
    if len(pred_progression) != len(gt_progression):
        raise ValueError(
            f"pred_progression and gt_progression must have the same number of follow-ups, got "
            f"{len(pred_progression)} and {len(gt_progression)}"
        )
    check_instance("case_id", case_id, str, "a str")  # None or 1 went into every row and broke aggregation
    check_instance("patient_id", patient_id, (str, type(None)), "a str or None")
    pid = case_id if patient_id is None else patient_id
    rows: list[dict[str, Any]] = []
    dets: list[LesionDetection] = []
    m, d = evaluate_mask_pair(pred_baseline, gt_baseline, spacing, protocol, kind="B")
    rows.append(
        {
            "case_id": case_id,
            "patient_id": pid,
            "target": "baseline",
            "timepoint": 0,
            "kind": "B",
            "daa_correct": None,
            **m,
        }
    )
    dets.append(d)
    prot = get_protocol(protocol)
    before = gt_baseline  # the reference lesions at follow-up i - 1: the baseline's and those new since
    for i, (pp, gp) in enumerate(zip(pred_progression, gt_progression), start=1):
        pp, gp = as_mask_pair(pp, gp, names=(f"pred_progression[{i - 1}]", f"gt_progression[{i - 1}]"))
        kind = followup_kind(gp, spacing, prot)
        m, d = evaluate_mask_pair(pp, gp, spacing, prot, kind=kind)
        conn = prot.connectivity_for(np.ndim(gp))  # gp was checked by followup_kind
        persisting = persisting_lesions(pp, before, gp, spacing, min_volume_mm3=prot.min_lesion_volume_mm3,
                                        connectivity=conn)
        before = before | gp.astype(bool)
        # predicted activity as the protocol sees it (shows_activity), read from the mask pair's metrics
        predicted = m["n_pred_lesions"] > 0 if prot.filter_voxel_metrics else m["pred_volume_mm3"] > 0
        rows.append(
            {
                "case_id": case_id,
                "patient_id": pid,
                "target": f"progression_t{i}",
                "timepoint": i,
                "kind": kind,
                "daa_correct": predicted == (kind == "P"),
                **m,
                "persisting_lesions": persisting.num_persisting,
                "persisting_flagged": persisting.num_flagged,
                "persisting_fp": persisting.rate,
            }
        )
        dets.append(d)
    return rows, dets


