"""Lesions of a binary mask: connected components with a size filter, and the baseline lesions that persist.

The one owner of lesion labelling, used by the data layer (hard-negative crops of
:mod:`longiseg.data.crops`) and, above it, by the metrics (lesion detection, longitudinal consistency,
lesion evolution), which keep these names importable from their own modules.

* **Lesions** are connected components (``cc3d``; 26-connectivity by default in 3D, 8 in 2D) of a binary
  mask ``(D, H, W)`` (or ``(H, W)``); components with a volume below ``min_volume_mm3`` are dropped.
* A baseline lesion **persists** at a follow-up when it does not touch that follow-up's progression mask: no
  progression voxel lies in the lesion or in its one-voxel neighbourhood (the same connectivity). A lesion
  that enlarges grows new voxels next to itself, so it touches them and does not persist.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from longiseg.utils.masks import MaskLike, as_mask, as_spacing, foreground_slices
from longiseg.utils.validation import check_nonnegative_float, check_positive_float, check_spatial_dims

__all__ = [
    "LesionLabels",
    "VOLUME_RTOL",
    "min_voxel_count",
    "default_connectivity",
    "check_connectivity",
    "check_min_volume",
    "label_mask",
    "label_lesions",
    "remove_small_lesions",
    "label_persisting_lesions",
]

#: Relative tolerance of a volume against a volume threshold (size filter, size bins). Voxel sizes come from
#: NIfTI affines stored in float32 (relative precision about 6e-8 per axis, about 2e-7 for a voxel volume):
#: 100 voxels of 0.5 x 0.5 x 0.44 mm read from a file are 10.99999994 mm^3, not 11; within 1e-6 they count as
#: 11. Two volumes on one grid differ by at least a voxel, far more than 1e-6 below a million voxels.
VOLUME_RTOL = 1e-6

_STRUCTURES = {6: 1, 18: 2, 26: 3, 4: 1, 8: 2}  # connectivity -> rank of scipy's binary structure
_CONNECTIVITY = {2: (4, 8), 3: (6, 18, 26)}

#: A voxel size in mm: one value per axis, one value for isotropic voxels, or ``None`` (1 mm).
SpacingLike = float | Sequence[float] | np.ndarray | None


def default_connectivity(ndim: int) -> int:
    """Full connectivity of a ``ndim``-D grid: 26 in 3D, 8 in 2D (``ValueError`` for another ``ndim``)."""
    return 26 if check_spatial_dims("ndim", ndim) == 3 else 8


def check_connectivity(connectivity: int | None, ndim: int) -> int:
    """``connectivity`` (6, 18, 26 in 3D; 4, 8 in 2D), or the full one for ``None``; ``ValueError`` otherwise."""
    ndim = check_spatial_dims("ndim", ndim)
    if connectivity is None:
        return default_connectivity(ndim)
    if not isinstance(connectivity, (int, np.integer)) or isinstance(connectivity, bool) \
            or connectivity not in _CONNECTIVITY[ndim]:  # 26.0 too: a count of neighbours is an int
        raise ValueError(
            f"connectivity must be one of {_CONNECTIVITY[ndim]} for {ndim}D masks, got {connectivity!r}"
        )
    return int(connectivity)


def check_min_volume(min_volume_mm3: float) -> float:
    """``min_volume_mm3`` as a float; ``TypeError`` for a non-number (NumPy's are numbers), ``ValueError`` if
    negative or not finite. The one check of a smallest lesion volume."""
    return check_nonnegative_float("min_volume_mm3", min_volume_mm3)


@dataclass(frozen=True)
class LesionLabels:
    """Connected-component labelling of a mask after size filtering.

    Attributes:
        labels: ``int32`` array of the mask's shape; 0 is background, lesions are ``1..n`` in raster order
            of their first voxel (cc3d order, kept by the size filter).
        voxels: ``(n,)`` voxel count of each lesion (index ``i`` is label ``i + 1``).
        voxel_volume_mm3: volume of one voxel in mm^3 (area in mm^2 for 2D masks).
    """

    labels: np.ndarray
    voxels: np.ndarray
    voxel_volume_mm3: float

    @property
    def n(self) -> int:
        """Number of lesions."""
        return int(self.voxels.shape[0])

    @property
    def volumes_mm3(self) -> np.ndarray:
        """``(n,)`` lesion volumes in mm^3."""
        return self.voxels * self.voxel_volume_mm3


def min_voxel_count(min_volume_mm3: float, voxel_volume_mm3: float) -> int:
    """The fewest voxels of ``voxel_volume_mm3`` that make at least ``min_volume_mm3`` (within :data:`VOLUME_RTOL`).

    Size filters compare voxel counts with this number, so a lesion exactly at the threshold is kept whatever
    float32 round-off its file's voxel size carries (11 mm^3 as 100 voxels of 0.11 mm^3 is 100, not 101).

    Raises:
        TypeError, ValueError: ``min_volume_mm3`` is not a finite number >= 0 or ``voxel_volume_mm3`` not a finite
            number > 0.
    """
    min_volume_mm3 = check_min_volume(min_volume_mm3)
    voxel_volume_mm3 = check_positive_float("voxel_volume_mm3", voxel_volume_mm3)
    return math.ceil(min_volume_mm3 / voxel_volume_mm3 * (1.0 - VOLUME_RTOL))


def label_mask(mask: np.ndarray, sp: np.ndarray, connectivity: int, min_volume_mm3: float, *, name: str = "mask"
               ) -> LesionLabels:
    """:func:`label_lesions` without its conversions, for callers that hold the arrays it would make: no copy of
    the mask, no crop to its bounding box (the labels are those of the whole array).

    Args:
        mask: ``bool`` array ``(D, H, W)`` or ``(H, W)``.
        sp: voxel size in mm per axis, ``(mask.ndim,)`` float array (see
            :func:`~longiseg.utils.masks.as_spacing`).
        connectivity: 6, 18 or 26 in 3D; 4 or 8 in 2D.
        min_volume_mm3: lesions with volume ``< min_volume_mm3`` are removed (0 keeps all).
        name: what ``mask`` is, for the messages.

    Raises:
        TypeError: ``mask`` is not a ``bool`` array (:func:`label_lesions` takes any binary mask).
        ValueError: ``sp`` has not one positive size per axis, or a bad ``connectivity`` or ``min_volume_mm3``.
    """
    import cc3d  # here, not at the top: `import longiseg` (models, scans, training) needs no lesion labelling

    if not isinstance(mask, np.ndarray) or mask.dtype != np.bool_:
        got = f"a {mask.dtype} array" if isinstance(mask, np.ndarray) else type(mask).__name__
        raise TypeError(f"{name} must be a bool array (label_lesions converts any binary mask), got {got}")
    connectivity = check_connectivity(connectivity, mask.ndim)
    if not isinstance(sp, np.ndarray) or sp.shape != (mask.ndim,) or not np.all(sp > 0):
        raise ValueError(f"sp must be a ({mask.ndim},) array of positive voxel sizes in mm, got {sp!r}")
    min_volume_mm3 = check_min_volume(min_volume_mm3)
    voxel_volume = float(np.prod(sp))
    # cc3d (4.1) labels non-contiguous views wrongly (e.g. a cropped slice): always pass a C-contiguous array.
    labels, n = cc3d.connected_components(
        np.ascontiguousarray(mask).view(np.uint8),
        connectivity=connectivity,
        return_N=True,
        out_dtype=np.uint32,
    )
    counts = np.bincount(labels.ravel(), minlength=n + 1)[1:].astype(np.int64)
    if min_volume_mm3 > 0 and n > 0:
        # Keep lesions with volume >= min_volume_mm3 (compare voxel counts to avoid float round-off).
        min_voxels = min_voxel_count(min_volume_mm3, voxel_volume)
        keep = counts >= min_voxels
        if not keep.all():
            lut = np.zeros(n + 1, dtype=np.int32)
            lut[1:][keep] = np.arange(1, int(keep.sum()) + 1, dtype=np.int32)
            labels = lut[labels]
            counts = counts[keep]
    return LesionLabels(labels.astype(np.int32, copy=False), counts, voxel_volume)


def label_lesions(
    mask: MaskLike,
    spacing: SpacingLike = None,
    *,
    connectivity: int | None = None,
    min_volume_mm3: float = 0.0,
) -> LesionLabels:
    """Label the lesions of a binary mask ``(D, H, W)`` or ``(H, W)`` and drop those below a volume.

    Args:
        mask: binary mask.
        spacing: voxel size in mm per axis (``None``: 1 mm isotropic).
        connectivity: 6, 18 or 26 in 3D; 4 or 8 in 2D; ``None`` = 26 (3D) / 8 (2D).
        min_volume_mm3: lesions with volume ``< min_volume_mm3`` are removed (0 keeps all).
    """
    m = as_mask("mask", mask)
    sp = as_spacing(spacing, m.ndim)
    conn, vmin = check_connectivity(connectivity, m.ndim), check_min_volume(min_volume_mm3)
    sl = foreground_slices(m)
    if sl is None:
        return LesionLabels(np.zeros(m.shape, np.int32), np.zeros(0, np.int64), float(np.prod(sp)))
    crop = label_mask(m[sl], sp, conn, vmin)  # labelling the bounding box keeps the raster order of lesions
    labels = np.zeros(m.shape, np.int32)
    labels[sl] = crop.labels
    return LesionLabels(labels, crop.voxels, crop.voxel_volume_mm3)


def remove_small_lesions(
    mask: MaskLike, spacing: SpacingLike = None, *, min_volume_mm3: float, connectivity: int | None = None
) -> np.ndarray:
    """Binary mask ``(D, H, W)`` or ``(H, W)`` without lesions of volume ``< min_volume_mm3`` (``bool``)."""
    lab = label_lesions(mask, spacing, connectivity=connectivity, min_volume_mm3=min_volume_mm3)
    return lab.labels > 0



def label_persisting_lesions(
    gt_baseline: MaskLike,
    gt_progression: MaskLike,
    spacing: float | Sequence[float] | np.ndarray | None = None,
    *,
    min_volume_mm3: float = 0.0,
    connectivity: int | None = None,
) -> tuple[LesionLabels, np.ndarray]:
    """Label the baseline lesions and find those that persist unchanged (do not touch the progression mask).

    Args:
        gt_baseline: reference binary baseline mask ``(D, H, W)`` (or ``(H, W)``).
        gt_progression: reference binary progression mask of the follow-up, the same shape.
        spacing: voxel size in mm per axis (``None``: 1 mm).
        min_volume_mm3: baseline lesions below this volume are not counted.
        connectivity: 6, 18 or 26 in 3D, 4 or 8 in 2D (``None``: full), for the lesions and for "touching".

    Returns:
        The baseline lesion labels (:class:`LesionLabels`) and the sorted ``int`` array
        of the labels that persist.
    """
    base = as_mask("gt_baseline", gt_baseline)
    prog = as_mask("gt_progression", gt_progression)
    if prog.shape != base.shape:
        raise ValueError(f"gt_progression has shape {prog.shape}, gt_baseline {base.shape}")
    conn = check_connectivity(connectivity, base.ndim)
    lesions = label_lesions(base, as_spacing(spacing, base.ndim), connectivity=conn,
                            min_volume_mm3=check_min_volume(min_volume_mm3))
    if lesions.n == 0:
        return lesions, np.zeros(0, dtype=np.int64)
    # Lesions touching progression: labels found in the progression mask grown by one voxel.
    grown = ndimage.binary_dilation(prog, structure=ndimage.generate_binary_structure(base.ndim, _STRUCTURES[conn]))
    touching = np.unique(lesions.labels[grown & (lesions.labels > 0)])
    return lesions, np.setdiff1d(np.arange(1, lesions.n + 1), touching)
