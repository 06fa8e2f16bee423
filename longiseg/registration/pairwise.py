"""Register one image to another with SimpleITK, resample, and measure the result.

* :func:`register_pair`: rigid (Euler, 6 parameters) or affine (rigid first, then 12 parameters on the
  fixed mask widened by a margin) registration maximising Mattes mutual information, multi-resolution
  (shrink 4-2-1 with smoothing; 5 % of the mask sampled per level, at least 1000 samples), regular-step
  gradient descent with scales from physical shifts, initialised by the images' centres of mass. Random
  metric sampling is seeded and the metric is summed in one work unit, so the same images and options give the
  same transform, bit for bit, with any number of threads (see :class:`PairOptions`).
* :func:`resample`: an image onto a grid through a transform (linear or B-spline for images, nearest
  neighbour for masks).
* :func:`similarity`: normalised mutual information and correlation of two images inside a mask (the QC
  numbers before/after registration), :func:`similarity_at_common_resolution` the same on a grid where
  neither image carries detail the other lacks (:func:`common_resolution_grid`);
  :func:`transform_motion`: how far a transform moves the brain.
* :func:`n4_correct`: N4 bias-field correction.

Transforms follow SimpleITK's convention: the transform of a registration maps points of the fixed
(baseline) physical space to the moving (follow-up) physical space, in LPS millimetres.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from longiseg.registration.grid import Grid, from_sitk, require_simpleitk, to_sitk
from longiseg.utils.validation import (
    check_finite,
    check_instance,
    check_nonnegative_float,
    check_positive_int,
    check_seed,
)

__all__ = [
    "TRANSFORMS",
    "INTERPOLATIONS",
    "MAX_SEED",
    "PairOptions",
    "common_resolution_grid",
    "foreground_mask",
    "n4_correct",
    "register_pair",
    "resample",
    "similarity",
    "similarity_at_common_resolution",
    "transform_motion",
]

TRANSFORMS = ("rigid", "affine")
INTERPOLATIONS = ("linear", "bspline", "nearest")
#: Largest :attr:`PairOptions.seed`: SimpleITK takes ``seed + 1`` as an unsigned 32-bit seed.
MAX_SEED = 2**32 - 2


@dataclass(frozen=True)
class PairOptions:
    """Settings of :func:`register_pair`.

    Attributes:
        transform: ``"rigid"`` or ``"affine"``.
        histogram_bins: Mattes mutual information bins.
        sampling: fraction of the fixed mask's voxels sampled per iteration (random, seeded).
        min_samples: fewest samples per resolution level: where ``sampling`` of the mask's voxels at a level
            (about ``mask voxels / shrink**3``) gives fewer, that level samples a larger fraction, up to all
            of its voxels. On small or coarse images the 4x-shrunk level otherwise holds a few dozen
            samples, and whether registration succeeds depends on the seed (a 4 mm demo pair: 1 seed in 100
            failed with 25 samples, none in 100 with this minimum). ``0``: ``sampling`` everywhere.
        shrink_factors: downsampling of each resolution level (coarse to fine).
        smoothing_sigmas: Gaussian smoothing of each level, in voxels of that level's input.
        iterations: most optimiser iterations per level.
        seed: seed of the metric sampling, an int in ``[0, 2**32 - 2]``. SimpleITK receives ``seed + 1``:
            its seed 0 (``sitkWallClock``) means "seed from the clock", which would make every run differ.
        mask_margin_mm: the affine stage samples the fixed mask dilated by this margin (at least one voxel
            per axis; ``0``: the mask as given). Mutual information restricted to a mask that ends at the
            head's edge rewards scaling: a rigid motion of a synthetic head (2.5 mm voxels) was recovered
            with 5-8 % too large scales and 4.6-7.4 mm errors at the brain's corners; with the 5 mm margin the
            scales are within 1-4 % (0.9-2.5 mm). The rigid stage (and ``"rigid"``) uses the mask as given.

    Reproducibility: the same images and options give the same transform, bit for bit. Besides the seed,
    the Mattes metric is summed in a single work unit (``SetNumberOfWorkUnits(1)``): with several, the
    threads' partial sums are combined in an order that varies from run to run, which changes the last bits
    of the metric and, over a hundred iterations, of the transform (measured: SimpleITK 2.5, 2 and 4
    threads); with one work unit the transform does not depend on the number of threads, and the time is
    the same (the smoothing and the image gradients, which stay multi-threaded, dominate). Resampling
    computes each voxel alone. :func:`n4_correct` repeats bit for bit with the same number of ITK threads,
    but its B-spline fit splits the work by thread, so a machine with another core count (or another
    ``SetGlobalDefaultNumberOfThreads``) gives N4 images that differ in the last bits.
    """

    transform: str = "rigid"
    histogram_bins: int = 32
    sampling: float = 0.05
    min_samples: int = 1000
    shrink_factors: tuple[int, ...] = (4, 2, 1)
    smoothing_sigmas: tuple[float, ...] = (2.0, 1.0, 0.0)
    iterations: int = 100
    seed: int = 0
    mask_margin_mm: float = 5.0

    def __post_init__(self) -> None:
        if self.transform not in TRANSFORMS:
            raise ValueError(f"transform must be one of {TRANSFORMS}, got {self.transform!r}")
        if isinstance(self.sampling, bool) or not isinstance(self.sampling, (int, float, np.integer, np.floating)):
            raise TypeError(f"sampling must be a fraction in (0, 1], got {type(self.sampling).__name__}")
        if not 0.0 < self.sampling <= 1.0:
            raise ValueError(f"sampling must be a fraction in (0, 1], got {self.sampling}")
        if len(self.shrink_factors) != len(self.smoothing_sigmas) or not self.shrink_factors:
            raise ValueError("shrink_factors and smoothing_sigmas must be non-empty and of equal length, got "
                             f"{self.shrink_factors} and {self.smoothing_sigmas}")
        object.__setattr__(self, "seed", check_seed("seed", self.seed, maximum=MAX_SEED))
        object.__setattr__(self, "min_samples", check_positive_int("min_samples", self.min_samples, minimum=0))
        object.__setattr__(self, "mask_margin_mm", check_nonnegative_float("mask_margin_mm", self.mask_margin_mm))
        object.__setattr__(self, "histogram_bins", check_positive_int("histogram_bins", self.histogram_bins, minimum=4))
        object.__setattr__(self, "iterations", check_positive_int("iterations", self.iterations))


def foreground_mask(image: Any) -> Any:
    """Binary (uint8) SimpleITK mask of the voxels above the Otsu threshold of ``image``."""
    sitk = require_simpleitk()
    f = sitk.OtsuThresholdImageFilter()
    f.Execute(sitk.Cast(image, sitk.sitkFloat32))
    return sitk.Cast(sitk.Cast(image, sitk.sitkFloat32) > f.GetThreshold(), sitk.sitkUInt8)


def n4_correct(image: Any, mask: Any | None = None, *, shrink: int = 4) -> Any:
    """N4 bias-field corrected copy of ``image`` (float32), fitted on a ``shrink``-fold smaller image.

    Args:
        image: SimpleITK image with positive intensities in the head.
        mask: where to fit the field (default: :func:`foreground_mask`).
        shrink: downsampling factor of the fit, at most down to 32 voxels per axis (the field is evaluated
            at full resolution).
    """
    sitk = require_simpleitk()
    shrink = check_positive_int("shrink", shrink)
    img = sitk.Cast(image, sitk.sitkFloat32)
    mask = foreground_mask(img) if mask is None else sitk.Cast(mask, sitk.sitkUInt8)
    f = sitk.N4BiasFieldCorrectionImageFilter()
    f.SetMaximumNumberOfIterations([50, 50, 30])
    shrink = max(1, min(shrink, min(img.GetSize()) // 32))  # keep at least 32 voxels per axis for the fit
    f.Execute(sitk.Shrink(img, [shrink] * 3), sitk.Shrink(mask, [shrink] * 3))
    return sitk.Cast(img / sitk.Exp(f.GetLogBiasFieldAsImage(img)), sitk.sitkFloat32)


def _sampling_per_level(opts: PairOptions, count: int) -> list[float]:
    """Fraction sampled at each level: ``sampling``, raised to give about ``min_samples`` of ``count`` voxels."""
    return [min(1.0, max(opts.sampling, opts.min_samples / max(count / s**3, 1.0))) for s in opts.shrink_factors]


def _mask_count(fixed: Any, fixed_mask: Any | None) -> int:
    """Voxels the metric may sample at full resolution: the mask's, or all of ``fixed``'s without one."""
    sitk = require_simpleitk()
    if fixed_mask is None:
        return int(np.prod(fixed.GetSize()))
    return int(np.count_nonzero(sitk.GetArrayViewFromImage(fixed_mask)))


def _method(opts: PairOptions, fixed_mask: Any | None, count: int) -> Any:
    """The registration method of ``opts``; ``count``: voxels of the fixed mask (or image) at full resolution."""
    sitk = require_simpleitk()
    r = sitk.ImageRegistrationMethod()
    r.SetMetricAsMattesMutualInformation(numberOfHistogramBins=opts.histogram_bins)
    r.SetMetricSamplingStrategy(r.RANDOM)
    # seed + 1, never 0: SimpleITK's seed 0 (sitkWallClock) seeds from the clock
    r.SetMetricSamplingPercentagePerLevel(_sampling_per_level(opts, count), opts.seed + 1)
    r.SetNumberOfWorkUnits(1)  # one summation order for the metric: bit-identical with any number of threads
    if fixed_mask is not None:
        r.SetMetricFixedMask(fixed_mask)
    r.SetInterpolator(sitk.sitkLinear)
    r.SetOptimizerAsRegularStepGradientDescent(learningRate=2.0, minStep=1e-4, numberOfIterations=opts.iterations,
                                               relaxationFactor=0.5, gradientMagnitudeTolerance=1e-8)
    r.SetOptimizerScalesFromPhysicalShift()
    r.SetShrinkFactorsPerLevel(list(opts.shrink_factors))
    r.SetSmoothingSigmasPerLevel(list(opts.smoothing_sigmas))
    r.SmoothingSigmasAreSpecifiedInPhysicalUnitsOff()
    return r


def register_pair(fixed: Any, moving: Any, *, fixed_mask: Any | None = None,
                  options: PairOptions | None = None, initial: Any | None = None) -> tuple[Any, dict[str, Any]]:
    """Register ``moving`` to ``fixed`` (SimpleITK images) by maximising Mattes mutual information.

    Args:
        fixed: the reference image (baseline).
        moving: the image to align (follow-up).
        fixed_mask: uint8 mask of the fixed voxels the metric samples (the brain; the affine stage widens it by
            ``options.mask_margin_mm``); ``None`` uses all.
        options: :class:`PairOptions`.
        initial: starting transform (default: centres of mass aligned).

    Returns:
        ``(transform, info)``: the transform mapping fixed physical points to moving physical points
        (``Euler3DTransform`` or ``AffineTransform``) and ``{"metric", "iterations", "stop"}`` of the last stage.
    """
    sitk = require_simpleitk()
    opts = options or PairOptions()
    fixed = sitk.Cast(fixed, sitk.sitkFloat32)
    moving = sitk.Cast(moving, sitk.sitkFloat32)
    if initial is None:
        initial = sitk.CenteredTransformInitializer(fixed, moving, sitk.Euler3DTransform(),
                                                    sitk.CenteredTransformInitializerFilter.MOMENTS)
    rigid = sitk.Euler3DTransform(initial) if initial.GetName() == "Euler3DTransform" else initial
    if fixed_mask is not None:
        fixed_mask = sitk.Cast(fixed_mask, sitk.sitkUInt8)
    r = _method(opts, fixed_mask, _mask_count(fixed, fixed_mask))
    r.SetInitialTransform(rigid, inPlace=True)
    r.Execute(fixed, moving)
    result = rigid
    if opts.transform == "affine":
        affine = sitk.AffineTransform(3)
        affine.SetCenter(rigid.GetCenter())
        affine.SetMatrix(rigid.GetMatrix())
        affine.SetTranslation(rigid.GetTranslation())
        if fixed_mask is not None and opts.mask_margin_mm > 0:  # see PairOptions.mask_margin_mm
            radius = [max(1, round(opts.mask_margin_mm / s)) for s in fixed_mask.GetSpacing()]
            fixed_mask = sitk.BinaryDilate(fixed_mask, radius, sitk.sitkBall, 0.0, 1.0)
        r = _method(opts, fixed_mask, _mask_count(fixed, fixed_mask))
        r.SetInitialTransform(affine, inPlace=True)
        r.Execute(fixed, moving)
        result = affine
    info = {"metric": float(r.GetMetricValue()), "iterations": int(r.GetOptimizerIteration()),
            "stop": r.GetOptimizerStopConditionDescription()}
    return result, info


def resample(image: Any, grid: Grid | Any, transform: Any | None = None, *, interpolation: str = "linear") -> Any:
    """``image`` resampled onto ``grid`` (a :class:`Grid` or a SimpleITK image) through ``transform``.

    ``transform`` maps points of the grid's space to the image's space (identity if ``None``: both in
    scanner coordinates). Voxels outside the image are 0. ``"bspline"`` (cubic) is clamped to the input's
    intensity range (no overshoot below 0); ``"nearest"`` keeps labels (masks, as uint8).
    """
    sitk = require_simpleitk()
    if interpolation not in INTERPOLATIONS:
        raise ValueError(f"interpolation must be one of {INTERPOLATIONS}, got {interpolation!r}")
    ref = grid.reference() if isinstance(grid, Grid) else grid
    tx = transform if transform is not None else sitk.Transform(3, sitk.sitkIdentity)
    if interpolation == "nearest":
        return sitk.Resample(sitk.Cast(image, sitk.sitkUInt8), ref, tx, sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8)
    kind = sitk.sitkLinear if interpolation == "linear" else sitk.sitkBSpline
    out = sitk.Resample(sitk.Cast(image, sitk.sitkFloat32), ref, tx, kind, 0.0, sitk.sitkFloat32)
    if interpolation == "bspline":
        stats = sitk.MinimumMaximumImageFilter()
        stats.Execute(image)
        out = sitk.Clamp(out, sitk.sitkFloat32, stats.GetMinimum(), stats.GetMaximum())
    return out


def common_resolution_grid(fixed: Any, moving: Any, transform: Any) -> Any:
    """The grid on which a registered pair carries the same detail: ``moving``'s orientation and field of view,
    along each of its axes the coarser of the two images' voxel sizes.

    ``fixed``'s voxel size along a moving axis ``u`` (mapped into fixed space by the inverse of ``transform``) is
    ``sqrt(sum_j ((u . e_j) s_j)^2)`` over its axes ``e_j`` of spacing ``s_j``. Where ``moving`` is at least as
    coarse along every axis (a thick-slice follow-up), the grid is ``moving``'s own.

    Args:
        fixed: SimpleITK image (the baseline).
        moving: SimpleITK image (the follow-up), any grid.
        transform: invertible SimpleITK transform from fixed to moving points (rigid or affine).

    Returns:
        An empty SimpleITK image (``UInt8``) on that grid, the target of :func:`resample`.
    """
    sitk = require_simpleitk()
    _check_pair(fixed, moving, transform)
    m_dir = np.asarray(moving.GetDirection(), dtype=np.float64).reshape(3, 3)
    m_sp = np.asarray(moving.GetSpacing(), dtype=np.float64)
    f_axes = np.asarray(fixed.GetDirection(), dtype=np.float64).reshape(3, 3) * np.asarray(fixed.GetSpacing())
    inverse = transform.GetInverse()
    origin = np.asarray(moving.GetOrigin(), dtype=np.float64)
    start = np.asarray(inverse.TransformPoint([float(v) for v in origin]))
    spacing = m_sp.copy()
    for i in range(3):  # moving axis i in fixed space, and fixed's voxel size along it
        u = np.asarray(inverse.TransformPoint([float(v) for v in origin + m_dir[:, i]])) - start
        fixed_mm = float(np.linalg.norm(u @ f_axes / max(float(np.linalg.norm(u)), 1e-12)))
        if fixed_mm > 1.01 * m_sp[i]:
            spacing[i] = fixed_mm
    size = [max(1, math.ceil(n * s / t - 1e-6)) for n, s, t in zip(moving.GetSize(), m_sp, spacing)]
    corner = origin - 0.5 * m_dir @ m_sp
    ref = sitk.Image(size, sitk.sitkUInt8)
    ref.SetSpacing([float(v) for v in spacing])
    ref.SetDirection([float(v) for v in m_dir.ravel()])
    ref.SetOrigin([float(v) for v in corner + 0.5 * m_dir @ spacing])
    return ref


def similarity_at_common_resolution(fixed: Any, moving: Any, transform: Any, mask: np.ndarray, *,
                                    grid: Any | None = None, bins: int = 64) -> dict[str, float]:
    """:func:`similarity` of a registered pair on their :func:`common_resolution_grid`: ``fixed`` and ``mask``
    (nearest neighbour) resampled there through the inverse of ``transform``, ``moving`` directly (its own
    voxels, as acquired, where it is the coarser image along every axis).

    Neither image then carries detail the other lacks, so the correlation measures alignment, not resolution:
    on the demo anatomy an aligned 4 x 4 x 10 mm follow-up correlates 0.65 with a 2 mm baseline on the
    baseline's grid (interpolation across its thick slices mixes tissues) and 0.96-0.99 here.

    Args:
        fixed: SimpleITK image ``(D, H, W)`` (the baseline).
        moving: SimpleITK image on any grid (the follow-up).
        transform: invertible SimpleITK transform from fixed to moving points (rigid or affine, as
            :func:`register_pair` returns it).
        mask: ``(D, H, W)`` bool on ``fixed``'s grid, the voxels compared (the brain).
        grid: the pair's :func:`common_resolution_grid` where the caller has it already (``None``: made here).
        bins: as in :func:`similarity`.

    Returns:
        ``{"nmi", "correlation"}`` as :func:`similarity`.

    Raises:
        TypeError: ``fixed``/``moving`` not SimpleITK images, ``transform`` not a SimpleITK transform, ``mask``
            not a bool array.
        ValueError: ``mask`` not of ``fixed``'s shape, or fewer than two of its voxels on the common grid.
        RuntimeError: a transform SimpleITK cannot invert.
    """
    check_instance("mask", mask, np.ndarray, "a bool numpy array (D, H, W)")
    if mask.dtype != bool:
        raise TypeError(f"mask must be a bool array (the voxels compared), got dtype {mask.dtype}")
    _check_pair(fixed, moving, transform)
    fixed_shape = tuple(fixed.GetSize())  # from_sitk keeps the axis order: (D, H, W) is SimpleITK's size
    if mask.shape != fixed_shape:
        raise ValueError(f"mask must have fixed's shape {fixed_shape} (D, H, W), got {mask.shape}")
    if grid is None:
        grid = common_resolution_grid(fixed, moving, transform)
    inverse = transform.GetInverse()
    mask_img = to_sitk(mask.astype(np.uint8), np.eye(4))
    mask_img.CopyInformation(fixed)
    compared = from_sitk(resample(mask_img, grid, inverse, interpolation="nearest"))[0] > 0
    return similarity(from_sitk(resample(fixed, grid, inverse))[0], from_sitk(resample(moving, grid))[0], compared,
                      bins=bins)


def _check_pair(fixed: Any, moving: Any, transform: Any) -> None:
    sitk = require_simpleitk()
    check_instance("fixed", fixed, sitk.Image, "a SimpleITK image")
    check_instance("moving", moving, sitk.Image, "a SimpleITK image")
    check_instance("transform", transform, sitk.Transform, "a SimpleITK transform")


def similarity(a: np.ndarray, b: np.ndarray, mask: np.ndarray, *, bins: int = 64) -> dict[str, float]:
    """Normalised mutual information and Pearson correlation of two images on one grid inside ``mask``.

    Args:
        a: image ``(D, H, W)``.
        b: image ``(D, H, W)`` on the same grid.
        mask: ``(D, H, W)`` bool, the voxels compared (the brain).
        bins: histogram bins per image (intensities clipped to their 0.5-99.5 percentiles).

    Returns:
        ``{"nmi": (H(a) + H(b)) / H(a, b)`` (1 for independent images, 2 for identical ones),
        ``"correlation"``}.

    Raises:
        TypeError: not numpy arrays, or a mask that is not bool.
        ValueError: other shapes, fewer than two voxels in ``mask``, or NaN/inf values inside it.
    """
    for name, value in (("a", a), ("b", b), ("mask", mask)):
        check_instance(name, value, np.ndarray, "a numpy array (D, H, W)")
    bins = check_positive_int("bins", bins, minimum=2)
    if a.shape != b.shape or a.shape != mask.shape:
        raise ValueError(f"a, b and mask must share one shape, got {a.shape}, {b.shape}, {mask.shape}")
    if mask.dtype != bool:
        raise TypeError(f"mask must be a bool array (the voxels compared), got dtype {mask.dtype}")
    x = a[mask].astype(np.float64)
    y = b[mask].astype(np.float64)
    if x.size < 2:
        raise ValueError("mask must select at least two voxels")
    check_finite("a (inside mask)", x)  # an inf gave a correlation of 0.0 without a word, a NaN numpy's error
    check_finite("b (inside mask)", y)
    edges = [np.percentile(v, [0.5, 99.5]) for v in (x, y)]
    hist, _, _ = np.histogram2d(np.clip(x, *edges[0]), np.clip(y, *edges[1]), bins=bins)
    p = hist / hist.sum()

    def entropy(q: np.ndarray) -> float:
        q = q[q > 0]
        return float(-(q * np.log(q)).sum())

    h_ab = entropy(p)
    nmi = (entropy(p.sum(axis=1)) + entropy(p.sum(axis=0))) / h_ab if h_ab > 0 else 1.0
    sx, sy = x.std(), y.std()
    corr = float(((x - x.mean()) * (y - y.mean())).mean() / (sx * sy)) if sx > 0 and sy > 0 else 0.0
    return {"nmi": float(nmi), "correlation": corr}


def transform_motion(transform: Any, centre_lps: np.ndarray | tuple[float, float, float]) -> dict[str, Any]:
    """How a rigid or affine transform moves a point (the brain's centre) and rotates/scales space.

    Returns:
        ``{"translation_mm": |T(c) - c|, "rotation_deg": angle of the rotation part, "scales": singular
        values of the linear part (1 for rigid)}``.
    """
    sitk = require_simpleitk()
    c = np.asarray(centre_lps, dtype=np.float64)
    moved = np.asarray(transform.TransformPoint([float(v) for v in c]))
    if transform.GetName() in ("Euler3DTransform", "AffineTransform"):
        mat = np.asarray(sitk.AffineTransform(transform).GetMatrix() if transform.GetName() == "AffineTransform"
                         else transform.GetMatrix()).reshape(3, 3)
    else:  # estimate the linear part numerically (composite transforms)
        mat = np.stack([np.asarray(transform.TransformPoint([float(v) for v in c + e])) - moved
                        for e in np.eye(3)], axis=1)
    u, s, vt = np.linalg.svd(mat)
    rot = u @ vt
    angle = math.degrees(math.acos(float(np.clip((np.trace(rot) - 1) / 2, -1.0, 1.0))))
    return {"translation_mm": float(np.linalg.norm(moved - c)), "rotation_deg": angle,
            "scales": [float(v) for v in s]}
