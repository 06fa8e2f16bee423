"""Per-case intensity normalisation and cropping to the brain.

Resampling is left to the user: all timepoints of a case must already be registered to one another and
share one voxel grid (shape and affine), which :func:`~longiseg.data.loading.load_case` checks. Use your
registration tool (ANTs, FSL FLIRT, SimpleITK, ...) to resample follow-ups onto the baseline (or a middle
space, as MSSEG-2 does), with linear/B-spline interpolation for images and nearest neighbour for masks.
A common isotropic spacing (e.g. 1 mm) across cases helps the 2D models but is not required.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import numpy as np

from longiseg.data.case import LongitudinalCase, check_case
from longiseg.utils.logging import get_logger, log_once
from longiseg.utils.validation import (
    check_affine,
    check_bool,
    check_instance,
    check_int_sequence,
    check_positive_int,
)

logger = get_logger(__name__)

__all__ = ["CropBox", "zscore_normalize", "joint_foreground_bbox", "crop_to_foreground", "preprocess_case"]


@dataclass(frozen=True)
class CropBox:
    """A box ``[start, stop)`` in a volume of shape ``full_shape``; crops and pastes back predictions.

    Attributes:
        start: first voxel index along ``(D, H, W)``.
        stop: one past the last voxel index along ``(D, H, W)``.
        full_shape: spatial shape ``(D, H, W)`` of the uncropped volume.

    Each is three ints (a list, tuple or 1-D array; stored as a tuple of ``int``) with
    ``0 <= start < stop <= full_shape`` along every axis, checked when the box is built.

    Raises:
        TypeError: ``start``, ``stop`` or ``full_shape`` is not a sequence of ints (``None``, a float, NaN).
        ValueError: one of them does not hold three entries, a negative ``start``, a ``stop`` not above
            ``start`` or beyond ``full_shape``, or a ``full_shape`` entry below 1.
    """

    start: tuple[int, int, int]
    stop: tuple[int, int, int]
    full_shape: tuple[int, int, int]

    def __post_init__(self) -> None:
        what = "one voxel index per axis (D, H, W)"
        start = check_int_sequence("start", self.start, minimum=0, length=3, what=what)
        stop = check_int_sequence("stop", self.stop, minimum=1, length=3, what=what)
        full = check_int_sequence("full_shape", self.full_shape, minimum=1, length=3,
                                  what="one size per axis (D, H, W)")
        if not all(a < b for a, b in zip(start, stop)):
            raise ValueError(f"stop must be above start along every axis (a non-empty box), got start={start}, "
                             f"stop={stop}")
        if not all(b <= n for b, n in zip(stop, full)):
            raise ValueError(f"stop must be at most full_shape along every axis (the box lies inside the volume), "
                             f"got stop={stop}, full_shape={full}")
        object.__setattr__(self, "start", start)
        object.__setattr__(self, "stop", stop)
        object.__setattr__(self, "full_shape", full)

    @property
    def slices(self) -> tuple[slice, slice, slice]:
        """Index slices of the box along the last three axes."""
        return tuple(slice(a, b) for a, b in zip(self.start, self.stop))  # type: ignore[return-value]

    @property
    def shape(self) -> tuple[int, int, int]:
        """Spatial shape ``(d, h, w)`` of the cropped volume (``stop - start``)."""
        return tuple(b - a for a, b in zip(self.start, self.stop))  # type: ignore[return-value]

    def crop(self, array: np.ndarray) -> np.ndarray:
        """Crop the last three axes of ``array``.

        Args:
            array: numpy array ``(..., D, H, W)`` whose last three axes are ``full_shape``.

        Returns:
            A view ``(..., d, h, w)`` with ``(d, h, w) = shape``.

        Raises:
            TypeError: ``array`` is not a numpy array (``None``, a list, a torch tensor).
            ValueError: ``array`` does not end in ``full_shape``.
        """
        check_instance("array", array, np.ndarray, "a numpy array (..., D, H, W)")
        if tuple(array.shape[-3:]) != self.full_shape:
            raise ValueError(f"array must end in the full shape {self.full_shape}, got {tuple(array.shape)}")
        return array[(..., *self.slices)]

    def paste(self, array: np.ndarray, fill: float = 0.0) -> np.ndarray:
        """Put a cropped array back into an array of the full shape filled with ``fill``.

        Args:
            array: numpy array ``(..., d, h, w)`` whose last three axes are :attr:`shape`.
            fill: value of the voxels outside the box.

        Returns:
            A new array ``(..., D, H, W)`` (``full_shape``) of ``array``'s dtype.

        Raises:
            TypeError: ``array`` is not a numpy array (``None``, a list, a torch tensor), or ``fill`` not a number.
            ValueError: ``array`` does not end in the cropped shape.
        """
        check_instance("array", array, np.ndarray, "a numpy array (..., d, h, w)")
        check_instance("fill", fill, (int, float, np.number, np.bool_), "a number (the value outside the box)")
        if tuple(array.shape[-3:]) != self.shape:
            raise ValueError(f"array must end in the cropped shape {self.shape}, got {tuple(array.shape)}")
        out = np.full((*array.shape[:-3], *self.full_shape), fill, dtype=array.dtype)
        out[(..., *self.slices)] = array
        return out

    def crop_affine(self, affine: np.ndarray) -> np.ndarray:
        """Voxel-to-world matrix of the cropped grid (translated by ``start``).

        Args:
            affine: ``(4, 4)`` voxel-to-world matrix of the full grid (array, tensor or nested sequence).

        Returns:
            The ``(4, 4)`` float64 matrix of the cropped grid.

        Raises:
            TypeError, ValueError: ``affine`` is not a finite, non-singular ``(4, 4)`` matrix
                (:func:`~longiseg.utils.validation.check_affine`).
        """
        shift = np.eye(4)
        shift[:3, 3] = self.start
        return check_affine("affine", affine) @ shift


def zscore_normalize(case: LongitudinalCase, *, background: float = 0.0, eps: float = 1e-6) -> LongitudinalCase:
    """Z-score each image ``(t, c)`` over the brain region; voxels outside it are set to ``background``.

    The region is the case's brain mask if it has one, else the voxels where that image is non-zero
    (skull-stripped data). Each timepoint and modality is normalised on its own, so scanner gain
    differences between visits vanish.

    Args:
        case: case with ``images (T, C, D, H, W)``.
        background: value written outside the region.
        eps: relative floor of the standard deviation: an image whose standard deviation in the region is at
            most ``eps`` times its largest magnitude there counts as constant and becomes all zero (logged
            once). Relative, so the result does not depend on the intensity scale (an absolute floor treated
            an image of values around ``1e-7`` as constant).

    Returns:
        A new case with normalised float32 images (masks shared, not copied).

    Raises:
        TypeError: ``case`` is not a :class:`LongitudinalCase`, or ``background`` or ``eps`` is not a number.
        ValueError: ``eps`` not a positive finite number, ``background`` not finite, or an image has no voxel
            inside the region.
    """
    check_case("case", case)
    for name, value in (("background", background), ("eps", eps)):
        if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
            raise TypeError(f"{name} must be a number, got {type(value).__name__}")
    if not math.isfinite(background):
        raise ValueError(f"background must be finite, got {background}")
    if not (math.isfinite(eps) and eps > 0):
        raise ValueError(f"eps must be a positive finite relative floor of the standard deviation, got {eps}")
    out = np.empty_like(case.images)
    brain = case.brain_mask.astype(bool) if case.brain_mask is not None else None
    for t in range(case.num_timepoints):
        for c in range(case.num_channels):
            img = case.images[t, c]
            region = brain if brain is not None else img != 0
            vals = img[region].astype(np.float64)
            if vals.size == 0:
                what = ("the brain mask is empty" if brain is not None else
                        "it is all zero (without a brain mask its non-zero voxels are the region normalised)")
                raise ValueError(
                    f"case {case.case_id!r}: image (t={t}, {case.modalities[c]}) has no voxel to normalise: {what}"
                )
            mean, std = float(vals.mean()), float(vals.std())
            o = out[t, c]
            o.fill(background)
            # an empty or failed acquisition (e.g. an all-zero channel inside a brain mask): zeros, and say so
            if std <= eps * float(np.abs(vals).max()):
                o[region] = 0.0
                where = "brain mask" if brain is not None else "non-zero voxels"
                log_once(logger, f"constant {case.case_id!r} {t} {case.modalities[c]}",
                         f"case {case.case_id}: image (t={t}, {case.modalities[c]}) is constant ({mean:.6g}) inside "
                         f"its {where}: it carries no information after normalisation; check that file",
                         logging.WARNING)
                continue
            # in float64, from the values read (img[region] - mean would round the mean to float32 first: an
            # image around 1e7 was shifted by up to half a unit before its division by the spread)
            o[region] = ((vals - mean) / std).astype(np.float32)
    return case.with_arrays(images=out)


def joint_foreground_bbox(case: LongitudinalCase, margin: int = 0) -> CropBox:
    """Bounding box of the voxels non-zero in any timepoint or channel, in the brain mask or in a lesion mask,
    plus ``margin``.

    The lesion masks count so that a crop never drops an annotated voxel (a lesion drawn where the images are
    zero, e.g. beyond a skull-stripped image's brain, would otherwise vanish and a progressing case turn stable).

    Args:
        case: the case.
        margin: voxels added on every side (clipped at the volume border).

    Raises:
        TypeError: ``case`` is not a :class:`LongitudinalCase`.
        ValueError: every image is zero.
    """
    check_case("case", case)
    margin = check_positive_int("margin", margin, minimum=0)
    fg = np.any(case.images != 0, axis=(0, 1))
    if case.brain_mask is not None:
        fg |= case.brain_mask.astype(bool)
    if not fg.any():
        raise ValueError(f"case {case.case_id!r}: all images are zero, there is no foreground to crop to")
    if case.baseline_mask is not None:
        fg |= case.baseline_mask.astype(bool)
    if case.progression_masks is not None:
        fg |= np.any(case.progression_masks != 0, axis=0)
    start, stop = [], []
    for axis in range(3):
        other = tuple(a for a in range(3) if a != axis)
        idx = np.flatnonzero(fg.any(axis=other))
        start.append(max(int(idx[0]) - margin, 0))
        stop.append(min(int(idx[-1]) + 1 + margin, fg.shape[axis]))
    return CropBox(tuple(start), tuple(stop), case.shape)  # type: ignore[arg-type]


def crop_to_foreground(case: LongitudinalCase, margin: int = 0) -> tuple[LongitudinalCase, CropBox]:
    """Crop all volumes to the joint foreground box of all timepoints (see :func:`joint_foreground_bbox`).

    Returns:
        ``(cropped_case, box)``; ``box.paste(prediction)`` puts a prediction on the cropped grid back into
        the original grid, and the cropped case's affine is ``box.crop_affine(case.affine)``.
    """
    box = joint_foreground_bbox(case, margin)

    def crop(a: np.ndarray | None) -> np.ndarray | None:
        return None if a is None else np.ascontiguousarray(box.crop(a))

    cropped = case.with_arrays(
        images=crop(case.images),
        baseline_mask=crop(case.baseline_mask),
        progression_masks=crop(case.progression_masks),
        brain_mask=crop(case.brain_mask),
        affine=box.crop_affine(case.affine),
        metadata={**case.metadata, "crop_box": {"start": list(box.start), "stop": list(box.stop),
                                                "full_shape": list(box.full_shape)}},
    )
    return cropped, box


def preprocess_case(
    case: LongitudinalCase, *, normalize: bool = True, crop: bool = False, margin: int = 2
) -> LongitudinalCase:
    """The default preprocessing: optional crop to the joint foreground box, then per-image z-score.

    Args:
        case: case with ``images (T, C, D, H, W)``.
        normalize: z-score each image (:func:`zscore_normalize`).
        crop: crop every volume to the joint foreground box (:func:`crop_to_foreground`).
        margin: voxels kept around the foreground box when cropping.

    Returns:
        The prepared case (``(T, C, d, h, w)`` when cropped); the crop box (if any) is kept in
        ``case.metadata["crop_box"]``.

    Raises:
        TypeError: ``case`` is not a :class:`LongitudinalCase`, or ``normalize``/``crop`` is not a bool.
    """
    check_case("case", case)
    normalize, crop = check_bool("normalize", normalize), check_bool("crop", crop)
    if crop:
        case, _ = crop_to_foreground(case, margin)
    if normalize:
        case = zscore_normalize(case)
    return case
