"""Crops: where a training sample is cut from a case (lesion-weighted crop centres, 2.5D cross-view slices and 3D
patches). Which cases make up a batch is :mod:`longiseg.data.samplers`.

Crop centres follow the weighted patch sampling of Zhang et al. (2022, QSMRim-Net), as used in SegMaST's
training: with probability ``lesion_weight`` the centre is a voxel drawn uniformly from the lesions
(baseline or progression; with probability ``progression_share`` from the progression voxels when a case
has any, so rare new lesions are not drowned by the baseline lesion load), otherwise a voxel drawn
uniformly from the brain (foreground). With ``persisting_share > 0`` that share of the lesion-centred crops is
centred on a *persisting* baseline lesion instead (one that does not touch the progression mask of any
follow-up, :func:`longiseg.data.lesions.label_persisting_lesions`): such a crop shows an old lesion in
both timepoints and, unless a new lesion lies nearby, an empty progression target, the hard negative a model
needs to learn "lesion that was not there before" rather than "lesion in the follow-up". Lesion-centred crops are shifted by a random offset of at most
``jitter * size // 2`` in-plane, so lesions do not always sit in the middle but always stay inside the
crop. Crops reaching past the volume border are zero padded (images are z-scored with zero background).

2.5D cross-view sampling picks a plane (axial, coronal or sagittal, read from the affine) and cuts the slice
through the centre voxel in that plane; the in-plane axes keep the array's index order. A sample is::

    images       (T, C, h, w)      float32
    baseline     (1, h, w)         float32 binary
    progression  (T-1, 1, h, w)    float32 binary
    has_progression  bool tensor   the case's progression flag (any follow-up active)
    progression_visible bool tensor  whether this crop holds any progression voxel
    hard_negative bool tensor     centred on a persisting baseline lesion with an empty progression target
    on_persisting bool tensor     centred on a persisting baseline lesion (augmentation recomputes
                                  hard_negative from it when a rotation moves progression out of the crop)
    baseline_annotated bool tensor   False for datasets without baseline labels (MSSEG-2)
    case_index   int64 tensor      position of the case in the dataset
    plane        str               "axial" | "coronal" | "sagittal" ("volume" for 3D patches)
    center       (3,) int64        the centre voxel (D, H, W index)

3D patches (:class:`VolumePatchSampler`) have the same keys with an extra depth axis ``d``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from longiseg.data.case import PLANES, LongitudinalCase, check_case, check_planes
from longiseg.data.lesions import label_persisting_lesions
from longiseg.utils.validation import (
    check_array,
    check_instance,
    check_int_or_sequence,
    check_positive_int,
    check_probability,
    check_sequence,
)

__all__ = [
    "SamplingIndex",
    "build_sampling_index",
    "sample_center",
    "crop_window",
    "CrossViewSampler",
    "VolumePatchSampler",
]


@dataclass(frozen=True)
class SamplingIndex:
    """Flat voxel indices of one case used to draw crop centres.

    Attributes:
        shape: spatial shape ``(D, H, W)``.
        foreground: indices of brain voxels (all voxels if the case has no non-zero voxel).
        baseline: indices of baseline lesion voxels.
        progression: indices of progression voxels (union over follow-ups).
        lesion: indices of all lesion voxels (baseline or progression).
        plane_axes: array axis normal to each plane.
        persisting: sorted indices of the voxels of persisting baseline lesions (26-connected baseline lesions
            that touch the progression mask of no follow-up).
    """

    shape: tuple[int, int, int]
    foreground: np.ndarray
    baseline: np.ndarray
    progression: np.ndarray
    lesion: np.ndarray
    plane_axes: dict[str, int]
    persisting: np.ndarray

    @property
    def nbytes(self) -> int:
        """Memory held by the index arrays."""
        arrays = (self.foreground, self.baseline, self.progression, self.lesion, self.persisting)
        return int(sum(a.nbytes for a in arrays))

    def is_persisting(self, center: Sequence[int]) -> bool:
        """Whether voxel ``center`` ``(d, h, w)`` lies in a persisting baseline lesion."""
        flat = int(np.ravel_multi_index(tuple(int(c) for c in center), self.shape))
        pos = int(np.searchsorted(self.persisting, flat))
        return pos < self.persisting.size and int(self.persisting[pos]) == flat


def _flat(mask: np.ndarray) -> np.ndarray:
    idx = np.flatnonzero(mask)
    return idx.astype(np.int32) if mask.size < 2**31 else idx


def build_sampling_index(case: LongitudinalCase) -> SamplingIndex:
    """Precompute the voxel lists of ``case`` (labelled) for :func:`sample_center`.

    Called once per case and cached with it (:class:`~longiseg.data.dataset.CaseCache`): one connected-component
    labelling of the baseline mask finds the persisting lesions.

    Raises:
        TypeError: ``case`` is not a :class:`~longiseg.data.case.LongitudinalCase`.
        ValueError: the case has no masks.
    """
    check_instance("case", case, LongitudinalCase, "a LongitudinalCase")
    if not case.has_labels:
        raise ValueError(f"case {case.case_id!r} has no masks; sampling needs a labelled case")
    assert case.baseline_mask is not None and case.progression_masks is not None
    fg = case.foreground_mask()
    if not fg.any():
        fg = np.ones(case.shape, dtype=bool)
    prog = case.progression_masks.any(axis=0)
    return SamplingIndex(
        shape=case.shape,
        foreground=_flat(fg),
        baseline=_flat(case.baseline_mask),
        progression=_flat(prog),
        lesion=_flat(prog | case.baseline_mask.astype(bool)),
        plane_axes=case.plane_axes,
        persisting=_flat(_persisting_mask(case.baseline_mask.astype(bool), prog, case.spacing)),
    )


def _persisting_mask(baseline: np.ndarray, progression: np.ndarray, spacing: Sequence[float]) -> np.ndarray:
    """``(D, H, W)`` bool: voxels of the baseline lesions that touch no progression voxel.

    Labelled inside the baseline's bounding box grown by one voxel, which holds every lesion and every
    progression voxel that can touch one, so a full-size volume costs little more than its lesions.
    """
    out = np.zeros(baseline.shape, dtype=bool)
    if not baseline.any():
        return out
    nz = np.nonzero(baseline)
    box = tuple(slice(max(int(i.min()) - 1, 0), int(i.max()) + 2) for i in nz)
    lesions, persisting = label_persisting_lesions(baseline[box], progression[box], spacing)
    out[box] = np.isin(lesions.labels, persisting)
    return out


def sample_center(
    index: SamplingIndex,
    rng: np.random.Generator,
    lesion_weight: float,
    progression_share: float | None = 0.5,
    persisting_share: float = 0.0,
) -> tuple[tuple[int, int, int], bool]:
    """Draw one crop centre.

    Args:
        index: the case's :class:`SamplingIndex`.
        rng: random generator.
        lesion_weight: probability of centring on a lesion voxel (ignored for lesion-free cases).
        progression_share: probability that a lesion-centred draw uses the progression voxels (when the
            case has both kinds); ``None`` draws uniformly from the union of all lesion voxels.
        persisting_share: probability that a lesion-centred draw uses the persisting baseline lesion voxels
            (when the case has any) before ``progression_share`` is applied; ``0`` (default) draws no extra
            random number, so the centres are those of earlier versions.

    Returns:
        ``((d, h, w), on_lesion)``: the centre voxel and whether it was drawn from the lesions.
    """
    check_instance("index", index, SamplingIndex, "a SamplingIndex (from build_sampling_index)")
    check_instance("rng", rng, np.random.Generator, "a numpy.random.Generator")
    check_probability("lesion_weight", lesion_weight)  # NaN would silently never centre on a lesion
    if progression_share is not None:
        check_probability("progression_share", progression_share)
    check_probability("persisting_share", persisting_share)
    flat: int
    on_lesion = bool(index.lesion.size) and rng.random() < lesion_weight
    if on_lesion:
        pool = index.lesion
        if persisting_share > 0 and index.persisting.size and rng.random() < persisting_share:
            pool = index.persisting
        elif progression_share is not None and index.baseline.size and index.progression.size:
            pool = index.progression if rng.random() < progression_share else index.baseline
        flat = int(pool[rng.integers(pool.size)])
    else:
        flat = int(index.foreground[rng.integers(index.foreground.size)])
    center = tuple(int(i) for i in np.unravel_index(flat, index.shape))
    return center, on_lesion  # type: ignore[return-value]


def crop_window(array: np.ndarray, start: Sequence[int], size: Sequence[int], fill: float = 0.0) -> np.ndarray:
    """Crop the last ``len(size)`` axes of ``array`` at ``start`` with padding where the window leaves it.

    Args:
        array: numpy array ``(..., D, H, W)`` (or any trailing spatial rank ``k = len(size)``).
        start: first index of the window per spatial axis, ``k`` ints (may be negative).
        size: window size per spatial axis, ``k`` ints ``>= 0``.
        fill: padding value.

    Returns:
        A new ``(..., *size)`` array of ``array``'s dtype: ``array``'s leading axes, the window in the last ``k``.
    """
    check_instance("array", array, np.ndarray, "a numpy array")
    for name, values in (("start", start), ("size", size)):  # a float start failed in NumPy's slicing
        if isinstance(values, (str, bytes)) or not isinstance(values, (Sequence, np.ndarray)) or not all(
                isinstance(v, (int, np.integer)) and not isinstance(v, (bool, np.bool_)) for v in values):
            raise TypeError(f"{name} must be a sequence of ints (one per spatial axis), got {values!r}")
    k = len(size)
    if any(int(s) < 0 for s in size):
        raise ValueError(f"size must be >= 0 per axis, got {tuple(size)}")
    if len(start) != k or array.ndim < k:
        raise ValueError(f"start {tuple(start)} and size {tuple(size)} must match the last axes of {array.shape}")
    spatial = array.shape[-k:]
    out = np.full((*array.shape[:-k], *size), fill, dtype=array.dtype)
    src, dst = [], []
    for s, n, dim in zip(start, size, spatial):
        lo, hi = max(s, 0), min(s + n, dim)
        if hi <= lo:
            return out
        src.append(slice(lo, hi))
        dst.append(slice(lo - s, hi - s))
    out[(..., *dst)] = array[(..., *src)]
    return out


def _jittered_start(center: Sequence[int], size: Sequence[int], jitter: float, rng: np.random.Generator,
                    axes: Sequence[int]) -> list[int]:
    """Window starts centring ``center``, shifted along ``axes`` by at most ``jitter * size // 2``."""
    start = [c - n // 2 for c, n in zip(center, size)]
    for a in axes:
        m = min(int(jitter * (size[a] // 2)), (size[a] - 1) // 2)
        if m > 0:
            start[a] -= int(rng.integers(-m, m + 1))
    return start


def _to_sample(case: LongitudinalCase, case_index: int, window: tuple, plane: str,
               center: Sequence[int], squeeze_axis: int | None, on_persisting: bool) -> dict[str, object]:
    """Crop images and masks with ``window = (start, size)`` over (D, H, W) and build the sample dict."""
    assert case.baseline_mask is not None and case.progression_masks is not None
    start, size = window
    imgs = crop_window(case.images, start, size)
    base = crop_window(case.baseline_mask, start, size)
    prog = crop_window(case.progression_masks, start, size)
    if squeeze_axis is not None:
        imgs = imgs.squeeze(2 + squeeze_axis)
        base = base.squeeze(squeeze_axis)
        prog = prog.squeeze(1 + squeeze_axis)
    prog_t = torch.from_numpy(prog.astype(np.float32)).unsqueeze(1)
    return {
        "images": torch.from_numpy(np.ascontiguousarray(imgs)),
        "baseline": torch.from_numpy(base.astype(np.float32)).unsqueeze(0),
        "progression": prog_t,
        "has_progression": torch.tensor(bool(case.progression_masks.any())),
        "baseline_annotated": torch.tensor(bool(case.baseline_annotated)),
        "progression_visible": torch.tensor(bool(prog.any())),
        "hard_negative": torch.tensor(on_persisting and not prog.any()),
        "on_persisting": torch.tensor(on_persisting),
        "case_index": torch.tensor(case_index, dtype=torch.int64),
        "plane": plane,
        "center": torch.tensor(list(center), dtype=torch.int64),
    }


def _check_sample_args(case: LongitudinalCase, index: SamplingIndex, case_index: object) -> int:
    """Check the arguments of ``sample`` (``rng`` is checked by :func:`sample_center`): a labelled
    :class:`LongitudinalCase` on the grid of ``index``, and ``case_index`` an int ``>= 0``; return ``case_index`` as
    an ``int``."""
    check_case("case", case)
    check_instance("index", index, SamplingIndex, "a SamplingIndex (from build_sampling_index)")
    if not case.has_labels:
        raise ValueError(f"case {case.case_id!r} has no masks; sampling needs a labelled case")
    if tuple(case.shape) != tuple(index.shape):
        raise ValueError(f"index must be the SamplingIndex of case {case.case_id!r}: it is of a grid "
                         f"{tuple(index.shape)}, the case's is {tuple(case.shape)}")
    return check_positive_int("case_index", case_index, minimum=0)


class _CenterSampling:
    """Shared parameters of lesion-weighted centre sampling."""

    def __init__(self, lesion_weight: float, progression_share: float | None, jitter: float,
                 persisting_share: float) -> None:
        self.lesion_weight = check_probability("lesion_weight", lesion_weight)
        self.progression_share = (
            None if progression_share is None else check_probability("progression_share", progression_share)
        )
        self.jitter = check_probability("jitter", jitter)
        self.persisting_share = check_probability("persisting_share", persisting_share)

    def _center(self, index: SamplingIndex, rng: np.random.Generator) -> tuple[tuple[int, int, int], bool]:
        return sample_center(index, rng, self.lesion_weight, self.progression_share, self.persisting_share)


class CrossViewSampler(_CenterSampling):
    """2.5D cross-view sampling: lesion-weighted slices from the axial, coronal and sagittal planes.

    Args:
        crop_size: in-plane crop ``(h, w)`` (an int for square crops), e.g. 128 (in-house MS), 80 (MSSEG-2)
            or 160 (UCSF-ALPTDG) at 1 mm.
        planes: planes to sample from (any of ``PLANES``).
        plane_weights: relative probability of each plane (uniform by default).
        lesion_weight: probability that a crop is centred on a lesion voxel.
        progression_share: share of lesion-centred crops drawn from progression voxels (see
            :func:`sample_center`).
        jitter: in-plane shift of lesion-centred crops, as a fraction of half the crop size.
        persisting_share: share of lesion-centred crops centred on persisting baseline lesions (hard
            negatives; default 0, the paper's sampling).

    Raises:
        TypeError: ``planes`` is not a list or tuple of names (a single string such as ``"axial"`` is refused:
            pass ``("axial",)``), or ``plane_weights`` does not hold real numbers.
        ValueError: an unknown or no plane; ``plane_weights`` not one finite, non-negative number per plane
            with a positive sum; a probability outside ``[0, 1]``; a crop size below 1.

    Example:
        >>> sampler = CrossViewSampler(crop_size=64, lesion_weight=0.5)
        >>> sample = sampler.sample(case, index, rng, case_index=0)  # doctest: +SKIP
        >>> sample["images"].shape  # (T, C, 64, 64)  # doctest: +SKIP
    """

    def __init__(
        self,
        crop_size: int | Sequence[int] = 128,
        planes: Sequence[str] = PLANES,
        plane_weights: Sequence[float] | None = None,
        lesion_weight: float = 0.5,
        progression_share: float | None = 0.5,
        jitter: float = 0.25,
        persisting_share: float = 0.0,
    ) -> None:
        super().__init__(lesion_weight, progression_share, jitter, persisting_share)
        self.crop_size = check_int_or_sequence("crop_size", crop_size, 2)
        planes = tuple(check_sequence("planes", planes, str, f"a plane name (one of {PLANES})"))
        check_planes(planes, "CrossViewSampler")  # as the configuration checks them
        self.planes = planes
        if plane_weights is None:
            weights = np.ones(len(planes))
        else:
            weights = np.asarray(check_array("plane_weights", plane_weights, f"({len(planes)},)"), dtype=np.float64)
            if (weights < 0).any() or weights.sum() <= 0:
                raise ValueError(
                    f"plane_weights must be {len(planes)} non-negative numbers with a positive sum, "
                    f"got {plane_weights}"
                )
        self.plane_probs = weights / weights.sum()

    def sample(self, case: LongitudinalCase, index: SamplingIndex, rng: np.random.Generator,
               case_index: int = 0) -> dict[str, object]:
        """Draw one slice crop of ``case`` (see the module docstring for the sample's keys and shapes).

        Args:
            case: a labelled case, ``images (T, C, D, H, W)``.
            index: its :class:`SamplingIndex` (:func:`build_sampling_index`).
            rng: random generator.
            case_index: position of the case in the dataset, an int ``>= 0`` (NumPy ints too), stored in the
                sample.

        Returns:
            ``images (T, C, h, w)``, ``baseline (1, h, w)``, ``progression (T-1, 1, h, w)`` and the flags.

        Raises:
            TypeError: ``case`` is not a :class:`LongitudinalCase`, ``index`` not a :class:`SamplingIndex`,
                ``rng`` not a ``numpy.random.Generator``, or ``case_index`` not an int (``1.5`` is not rounded).
            ValueError: ``case`` has no masks or another grid than ``index``, or ``case_index`` is negative.
        """
        case_index = _check_sample_args(case, index, case_index)
        center, on_lesion = self._center(index, rng)
        plane = self.planes[int(rng.choice(len(self.planes), p=self.plane_probs))]
        axis = index.plane_axes[plane]
        in_plane = [a for a in range(3) if a != axis]
        size = [1, 1, 1]
        for a, s in zip(in_plane, self.crop_size):
            size[a] = s
        start = _jittered_start(center, size, self.jitter if on_lesion else 0.0, rng, in_plane)
        start[axis] = center[axis]
        return _to_sample(case, case_index, (start, size), plane, center, squeeze_axis=axis,
                          on_persisting=index.is_persisting(center))


class VolumePatchSampler(_CenterSampling):
    """Lesion-weighted 3D patches ``(T, C, d, h, w)`` for 3D models.

    Args:
        patch_size: ``(d, h, w)`` (an int for cubes).
        lesion_weight: probability that a patch is centred on a lesion voxel.
        progression_share: share of lesion-centred patches drawn from progression voxels.
        jitter: shift of lesion-centred patches along every axis, as a fraction of half the patch size.
        persisting_share: share of lesion-centred patches centred on persisting baseline lesions.
    """

    def __init__(
        self,
        patch_size: int | Sequence[int] = 64,
        lesion_weight: float = 0.5,
        progression_share: float | None = 0.5,
        jitter: float = 0.25,
        persisting_share: float = 0.0,
    ) -> None:
        super().__init__(lesion_weight, progression_share, jitter, persisting_share)
        self.patch_size = check_int_or_sequence("patch_size", patch_size, 3)

    def sample(self, case: LongitudinalCase, index: SamplingIndex, rng: np.random.Generator,
               case_index: int = 0) -> dict[str, object]:
        """Draw one 3D patch of ``case`` (keys as for 2.5D samples, ``plane == "volume"``).

        Args and errors as for :meth:`CrossViewSampler.sample`; the sample holds ``images (T, C, d, h, w)``,
        ``baseline (1, d, h, w)`` and ``progression (T-1, 1, d, h, w)``.
        """
        case_index = _check_sample_args(case, index, case_index)
        center, on_lesion = self._center(index, rng)
        start = _jittered_start(center, self.patch_size, self.jitter if on_lesion else 0.0, rng, (0, 1, 2))
        return _to_sample(case, case_index, (start, list(self.patch_size)), "volume", center, squeeze_axis=None,
                          on_persisting=index.is_persisting(center))
