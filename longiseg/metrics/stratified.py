"""Size-stratified lesion analysis (SegMaST Table 4): lesion F1 and Dice per lesion-volume bin.

Bins are given by ascending volume thresholds ``t_1 < ... < t_k`` in mm^3: bin 0 is ``v <= t_1``, bin ``j``
is ``t_j < v <= t_{j+1}``, the last bin ``v > t_k`` (SegMaST: Small ``<= 84``, Medium ``84-208``, Large
``> 208`` for baseline lesions, tertiles of all reference lesion volumes of the dataset). Counts are pooled
over all cases (Table 4 reports one value per bin and the number ``N`` of reference lesions in it):

* reference lesions fall in the bin of their own volume; recall = detected / reference lesions of the bin;
* a predicted lesion belongs to the bin of the reference lesion it overlaps most, or to the bin of its
  own volume if it overlaps none; precision = correct / predicted lesions of the bin; F1 = harmonic mean;
* Dice of a bin = ``2 |G_b ∩ P_b| / (|G_b| + |P_b|)`` (mm^3) with ``G_b`` the union of the bin's
  reference lesions and ``P_b`` the union of the bin's predicted lesions.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from longiseg.data.lesions import VOLUME_RTOL
from longiseg.metrics.lesion import LesionDetection, detection_scores
from longiseg.utils.validation import check_finite, check_sequence

__all__ = [
    "SizeBins",
    "check_bins",
    "tertile_bins",
    "reference_volumes",
    "assign_predicted_bins",
    "stratified_lesion_metrics",
]


@dataclass(frozen=True)
class SizeBins:
    """Lesion-volume bins from ascending thresholds in mm^3.

    Attributes:
        thresholds: ``k`` strictly ascending upper bin edges (inclusive); gives ``k + 1`` bins.
        names: ``k + 1`` bin names (default ``small/medium/large`` for two thresholds, else ``bin0..``).

    Raises:
        TypeError: ``thresholds`` is not a sequence of numbers or ``names`` not a sequence of strings.
        ValueError: the thresholds are empty, negative, not finite or not strictly ascending, or ``names`` has
            not ``k + 1`` entries.
    """

    thresholds: tuple[float, ...]
    names: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if isinstance(self.thresholds, (str, bytes)) or not isinstance(self.thresholds, (Sequence, np.ndarray)):
            raise TypeError(f"thresholds must be a sequence of volumes in mm^3, got {type(self.thresholds).__name__}")
        for i, x in enumerate(np.asarray(self.thresholds, dtype=object).ravel()):
            if isinstance(x, (bool, np.bool_)) or not isinstance(x, (int, float, np.integer, np.floating)):
                raise TypeError(f"thresholds[{i}] must be a number (mm^3), got {type(x).__name__} {x!r}")
        t = np.asarray(self.thresholds, dtype=np.float64)
        if (t.ndim != 1 or t.size == 0 or not np.all(np.isfinite(t)) or np.any(np.diff(t) <= 0)
                or np.any(t < 0)):
            raise ValueError(
                f"thresholds must be a non-empty strictly ascending sequence of finite volumes >= 0 (mm^3), "
                f"got {self.thresholds!r}"
            )
        object.__setattr__(self, "thresholds", tuple(float(x) for x in t))
        if not self.names:
            names = (
                ("small", "medium", "large") if t.size == 2 else tuple(f"bin{i}" for i in range(t.size + 1))
            )
            object.__setattr__(self, "names", names)
        object.__setattr__(self, "names", tuple(check_sequence("names", self.names, str, "a bin name (str)")))
        if len(self.names) != t.size + 1:
            raise ValueError(
                f"names must have {t.size + 1} entries for {t.size} thresholds, got {self.names!r}"
            )

    @property
    def n_bins(self) -> int:
        """Number of bins."""
        return len(self.names)

    def assign(self, volumes_mm3: np.ndarray) -> np.ndarray:
        """Bin index ``(N,)`` of each volume ``(N,)``.

        A volume within a relative :data:`~longiseg.data.lesions.VOLUME_RTOL` (``1e-6``) of a threshold counts as equal to it (bins
        include their upper edge): 325 voxels of 0.64 mm^3 are 208 mm^3, computed as 208.00000000000003, or
        as 208.0000062 with the float32 voxel size ``0.800000011920929`` of a NIfTI file, and belong below 208.

        Raises:
            TypeError: ``volumes_mm3`` does not hold numbers.
            ValueError: a volume is NaN, infinite or negative (NaN would land in the largest bin).
        """
        v = _check_volumes(volumes_mm3)
        edges = np.asarray(self.thresholds, dtype=np.float64) * (1.0 + VOLUME_RTOL)
        return np.digitize(v, edges, right=True)

    def ranges(self) -> list[str]:
        """Human-readable range of each bin, e.g. ``"<= 84"``, ``"84-208"``, ``"> 208"``."""
        t = [f"{x:g}" for x in self.thresholds]
        return [f"<= {t[0]}"] + [f"{a}-{b}" for a, b in zip(t[:-1], t[1:])] + [f"> {t[-1]}"]


def _check_volumes(volumes_mm3: object) -> np.ndarray:
    """``volumes_mm3`` as a float64 array of lesion volumes: numbers (no booleans), finite and ``>= 0``."""
    v = np.asarray(volumes_mm3)
    if v.dtype == bool or not (np.issubdtype(v.dtype, np.integer) or np.issubdtype(v.dtype, np.floating)):
        raise TypeError(f"volumes_mm3 must be an array of lesion volumes (numbers), got {type(volumes_mm3).__name__} "
                        f"of dtype {v.dtype}")
    v = v.astype(np.float64)
    check_finite("volumes_mm3", v)
    if np.any(v < 0):
        raise ValueError(f"volumes_mm3 must hold volumes >= 0 (mm^3), got e.g. {v[v < 0][:3].tolist()}")
    return v


def check_bins(name: str, bins: object) -> SizeBins | str:
    """Return size bins given as :class:`SizeBins`, a threshold sequence (as :class:`SizeBins`) or
    ``"tertiles"`` (returned as is: computed from the data later); raise naming ``name`` otherwise.

    Raises:
        TypeError: ``bins`` is none of these kinds (e.g. ``None``), or a threshold is not a number.
        ValueError: another string than ``"tertiles"`` (``"Tertiles"`` too), or bad thresholds.
    """
    if isinstance(bins, str):
        if bins != "tertiles":
            raise ValueError(f"{name} must be SizeBins, a threshold sequence or 'tertiles', got {bins!r}")
        return bins
    if isinstance(bins, SizeBins):
        return bins
    if isinstance(bins, (Sequence, np.ndarray)):
        try:
            return SizeBins(tuple(bins))
        except (TypeError, ValueError) as err:
            raise type(err)(f"{name}: {err}") from None
    raise TypeError(f"{name} must be SizeBins, a threshold sequence or 'tertiles', got {type(bins).__name__}")


def reference_volumes(detections: Sequence[LesionDetection]) -> np.ndarray:
    """All (size-filtered) reference lesion volumes in mm^3 of the given cases, concatenated ``(N,)``."""
    if not detections:
        return np.empty(0, dtype=np.float64)
    return np.concatenate([d.gt_volumes_mm3 for d in detections]).astype(np.float64)


def tertile_bins(volumes_mm3: np.ndarray | Sequence[float]) -> SizeBins:
    """Small/medium/large bins at the 1/3 and 2/3 quantiles of reference lesion volumes ``(N,)``.

    The quantiles are ``numpy.quantile``'s (linear interpolation); they must differ by more than a relative
    :data:`~longiseg.data.lesions.VOLUME_RTOL` (the tolerance :meth:`SizeBins.assign` compares with), which needs
    at least 3 volumes and more than one distinct value among the middle ones: ``[1, 1, 1, 5]`` has both tertiles
    at 1 and is refused, ``[1, 1, 5, 5]`` (tertiles 1 and 5) is split.

    Raises:
        TypeError: ``volumes_mm3`` does not hold numbers.
        ValueError: fewer than 3 volumes, not 1D, NaN, infinite or negative volumes, or volumes too uniform to
            split (equal 1/3 and 2/3 quantiles).
    """
    v = _check_volumes(volumes_mm3)
    if v.ndim != 1 or v.size < 3:
        raise ValueError(f"tertile_bins needs a 1D array of at least 3 lesion volumes, got shape {v.shape}")
    t1, t2 = np.quantile(v, [1.0 / 3.0, 2.0 / 3.0])
    # equal within VOLUME_RTOL, as SizeBins.assign compares: volumes of one voxel count read through a rotated
    # affine differ in their last digits and gave bins "<= 96", "96-96" and "> 96" with every lesion in the first
    if not t2 > t1 * (1.0 + VOLUME_RTOL):
        raise ValueError(f"lesion volumes are too uniform for tertile bins (both tertiles are {t1:g} mm^3)")
    return SizeBins((float(t1), float(t2)))


def assign_predicted_bins(
    det: LesionDetection, bins: SizeBins, gt_bins: np.ndarray | None = None
) -> np.ndarray:
    """Bin ``(n_pred,)`` of each predicted lesion: its most-overlapped reference lesion's, else its own."""
    gb = bins.assign(det.gt_volumes_mm3) if gt_bins is None else gt_bins
    pb = bins.assign(det.pred_volumes_mm3)
    ov = det.overlaps
    if ov.gt_index.size:
        # For each predicted lesion, the overlapping reference lesion with the largest intersection.
        order = np.lexsort((ov.gt_index, -ov.intersection, ov.pred_index))
        p_sorted = ov.pred_index[order]
        first = np.r_[True, p_sorted[1:] != p_sorted[:-1]]
        pb[p_sorted[first]] = gb[ov.gt_index[order][first]]
    return pb


def stratified_lesion_metrics(
    detections: Sequence[LesionDetection], bins: SizeBins | Sequence[float] | str = "tertiles"
) -> list[dict[str, Any]]:
    """Pooled lesion recall/precision/F1 and Dice per size bin over a set of cases.

    Args:
        detections: per-case :class:`~longiseg.metrics.lesion.LesionDetection` results.
        bins: :class:`SizeBins`, ascending thresholds in mm^3, or ``"tertiles"`` of the reference volumes.

    Returns:
        One dict per bin: ``bin``, ``range_mm3``, ``n_gt``, ``n_pred``, ``tp_gt``, ``tp_pred``, ``recall``,
        ``precision``, ``lesion_f1``, ``dice`` (NaN where a bin holds neither reference nor predicted
        lesions).

    Raises:
        TypeError: ``detections`` is not a sequence of ``LesionDetection`` or ``bins`` of none of the kinds above.
        ValueError: bad thresholds or another string than ``"tertiles"`` (see :func:`check_bins`), or too few
            or too uniform reference lesions for ``"tertiles"`` (see :func:`tertile_bins`).
    """
    check_sequence("detections", detections, LesionDetection, "a LesionDetection")
    checked = check_bins("bins", bins)
    sb = tertile_bins(reference_volumes(detections)) if isinstance(checked, str) else checked
    k = sb.n_bins
    n_gt = np.zeros(k, np.int64)
    n_pred = np.zeros(k, np.int64)
    tp_gt = np.zeros(k, np.int64)
    tp_pred = np.zeros(k, np.int64)
    inter = np.zeros(k)
    gt_vol = np.zeros(k)
    pred_vol = np.zeros(k)
    for det in detections:
        gb = sb.assign(det.gt_volumes_mm3)
        pb = assign_predicted_bins(det, sb, gb)
        n_gt += np.bincount(gb, minlength=k)
        n_pred += np.bincount(pb, minlength=k)
        tp_gt += np.bincount(gb, weights=det.match.gt_detected, minlength=k).astype(np.int64)
        tp_pred += np.bincount(pb, weights=det.match.pred_matched, minlength=k).astype(np.int64)
        gt_vol += np.bincount(gb, weights=det.gt_volumes_mm3, minlength=k)
        pred_vol += np.bincount(pb, weights=det.pred_volumes_mm3, minlength=k)
        ov = det.overlaps
        if ov.gt_index.size:
            same = gb[ov.gt_index] == pb[ov.pred_index]
            inter += np.bincount(
                gb[ov.gt_index][same], weights=ov.intersection[same] * det.voxel_volume_mm3, minlength=k
            )
    rows = []
    for b, (name, rng) in enumerate(zip(sb.names, sb.ranges())):
        empty = n_gt[b] == 0 and n_pred[b] == 0
        recall, precision, f1 = detection_scores(int(tp_gt[b]), int(n_gt[b]), int(tp_pred[b]), int(n_pred[b]))
        denom = gt_vol[b] + pred_vol[b]
        rows.append(
            {
                "bin": name,
                "range_mm3": rng,
                "n_gt": int(n_gt[b]),
                "n_pred": int(n_pred[b]),
                "tp_gt": int(tp_gt[b]),
                "tp_pred": int(tp_pred[b]),
                "recall": float("nan") if empty else recall,
                "precision": float("nan") if empty else precision,
                "lesion_f1": float("nan") if empty else f1,
                "dice": float(2 * inter[b] / denom) if denom > 0 else float("nan"),
            }
        )
    return rows
