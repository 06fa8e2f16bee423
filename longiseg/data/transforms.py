"""Seeded augmentations applied identically to every timepoint, modality and mask of a sample (optionally
with scan-to-scan differences added per timepoint).

A longitudinal sample must stay aligned across time: a flip or rotation that moved the follow-up but not
the baseline would fabricate change. :class:`LongitudinalAugment` therefore draws one geometric transform
per sample and applies it to the images ``(T, C, *S)``, the baseline mask ``(1, *S)`` and the progression
masks ``(T-1, 1, *S)`` together (``S`` = ``(h, w)`` for 2.5D slices or ``(d, h, w)`` for 3D patches):

* random flips along each spatial axis;
* random 90-degree rotations (in a random pair of axes for 3D; only 180 degrees when the two axes
  differ in size, so the crop shape never changes);
* small-angle rotations about the crop centre (bilinear for images, nearest neighbour for masks, zero
  padding), about a random axis for 3D;
* optional intensity scaling: one factor per modality, shared by all timepoints (scanner gain), so
  intensity differences between timepoints are not fabricated either.

Real scans of one patient do differ where the anatomy does not: gain, bias field and noise change from session
to session, and registration leaves a sub-voxel misalignment. A model trained only on pairs without such
differences can use "the follow-up looks different here" as a cue for change. With
``independent_timepoints`` (off by default, the paper's recipe) :class:`TimepointVariation` adds these
differences after the shared transforms, drawn independently for every timepoint (misalignment: for every
follow-up relative to the baseline), while the masks stay untouched.

Randomness comes only from the ``numpy.random.Generator`` passed in, so a sample is reproducible from
its seed.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from longiseg.utils.validation import (
    check_finite_float,
    check_instance,
    check_nonnegative_float,
    check_positive_float,
    check_probability,
    check_tensor,
)

__all__ = ["LongitudinalAugment", "TimepointVariation", "rotation_matrix"]

_IMAGE_MODES = ("bilinear", "nearest")


def rotation_matrix(angle_deg: float, ndim: int, axes: tuple[int, int] = (0, 1)) -> np.ndarray:
    """``(ndim, ndim)`` rotation by ``angle_deg`` in the plane of array axes ``axes``."""
    if ndim not in (2, 3):
        raise ValueError(f"ndim must be 2 or 3, got {ndim}")
    a, b = axes
    if not (0 <= a < ndim and 0 <= b < ndim and a != b):
        raise ValueError(f"axes must be two different axes < {ndim}, got {axes}")
    th = math.radians(check_finite_float("angle_deg", angle_deg))
    rot = np.eye(ndim)
    rot[a, a], rot[a, b], rot[b, a], rot[b, b] = math.cos(th), -math.sin(th), math.sin(th), math.cos(th)
    return rot


def _grid(rot: np.ndarray, spatial: Sequence[int], shift: Sequence[float] | None = None) -> torch.Tensor:
    """Sampling grid of a rotation about the centre followed by a shift of ``shift`` voxels per array axis
    (aspect-correct for non-square crops)."""
    k = len(spatial)
    half = np.asarray(spatial, dtype=np.float64) / 2.0
    theta_idx = np.diag(1.0 / half) @ rot @ np.diag(half)  # normalised coords, array-axis order
    perm = list(range(k))[::-1]  # affine_grid orders coordinates (x=W, y=H, z=D)
    theta = np.zeros((k, k + 1))
    theta[:, :k] = theta_idx[np.ix_(perm, perm)]
    if shift is not None:  # output voxel x samples input x - shift: the content moves by +shift
        theta[:, k] = (-np.asarray(shift, dtype=np.float64) / half)[perm]
    t = torch.as_tensor(theta, dtype=torch.float32).unsqueeze(0)
    return F.affine_grid(t, [1, 1, *spatial], align_corners=False)


def _check_range(name: str, value: object) -> tuple[float, float]:
    """``value`` as a ``(low, high)`` pair of finite numbers with ``0 < low <= high``; raise naming ``name``."""
    if isinstance(value, (str, bytes)) or not isinstance(value, (Sequence, np.ndarray)):
        raise TypeError(f"{name} must be a (low, high) pair of numbers, got {type(value).__name__} {value!r}")
    if len(value) != 2:
        raise ValueError(f"{name} must be a (low, high) pair of numbers, got {len(value)} values: {value!r}")
    lo, hi = (check_positive_float(f"{name}[{i}]", v) for i, v in enumerate(value))
    if lo > hi:
        raise ValueError(f"{name} must be (low, high) with 0 < low <= high, got {value}")
    return lo, hi


def _rotation_axes(k: int, rng: np.random.Generator) -> tuple[int, int]:
    """The plane of a random rotation: the only one in 2D, one of the three in 3D."""
    return (0, 1) if k == 2 else [(0, 1), (0, 2), (1, 2)][int(rng.integers(3))]


class TimepointVariation:
    """Scan-to-scan differences drawn independently per timepoint: gain, bias field, noise, misregistration.

    Applied to images ``(T, C, *S)`` (``S`` = ``(h, w)`` or ``(d, h, w)``, z-scored with zero background):

    * **gain**: every timepoint and modality is multiplied by its own factor from ``gain_range``;
    * **bias field**: and by its own smooth field ``exp(b)``, ``b`` interpolated (linearly, corner-aligned)
      from a grid of ``3`` control points per axis drawn from ``N(0, bias_field_std)``;
    * **noise**: Gaussian noise of ``noise_std`` is added inside the non-zero voxels (the background stays 0);
    * **misregistration**: every follow-up (not the baseline) is moved by a rigid transform, a rotation of at
      most ``max_angle`` degrees about the crop centre and a shift of at most ``max_shift`` voxels along every
      axis (bilinear, border padding), so no voxel moves by more than
      ``max_shift * sqrt(len(S)) + radians(max_angle) * r`` with ``r`` its distance from the centre
      (with the defaults at most 1.10 voxels at the corners of a 128x128 crop, 1.35 in a 128^3 patch; below
      one voxel along each axis).

    Gain, bias field and noise leave every zero voxel zero and change no mask. A part whose magnitude is zero
    (``gain_range=(1, 1)``, ``bias_field_std=0``, ``noise_std=0``, ``max_shift=max_angle=0``) is skipped and
    draws no random number.

    Args:
        gain_range: ``(low, high)`` range of the per-timepoint, per-modality factor, ``0 < low <= high``.
        bias_field_std: standard deviation of the log bias field at the control points (>= 0).
        noise_std: standard deviation of the added noise (>= 0), in the units of the z-scored images.
        max_shift: largest follow-up shift per axis in voxels, in ``[0, 1]``.
        max_angle: largest follow-up rotation in degrees, in ``[0, 5]``.

    Call it as ``variation(images, rng)``; returns a new float tensor of the same shape.

    Raises:
        TypeError: an argument is not a number (a string or a bool is refused), or ``gain_range`` not a pair.
        ValueError: a value outside its range, NaN or infinite.
    """

    def __init__(
        self,
        gain_range: tuple[float, float] = (0.9, 1.1),
        bias_field_std: float = 0.1,
        noise_std: float = 0.05,
        max_shift: float = 0.5,
        max_angle: float = 0.25,
    ) -> None:
        self.gain_range = _check_range("gain_range", gain_range)
        self.bias_field_std = check_nonnegative_float("bias_field_std", bias_field_std)
        self.noise_std = check_nonnegative_float("noise_std", noise_std)
        self.max_shift = check_nonnegative_float("max_shift", max_shift)
        if self.max_shift > 1.0:
            raise ValueError(f"max_shift must lie in [0, 1] voxels (sub-voxel misregistration), got {max_shift}")
        self.max_angle = check_nonnegative_float("max_angle", max_angle)
        if self.max_angle > 5.0:
            raise ValueError(f"max_angle must lie in [0, 5] degrees, got {max_angle}")

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(gain_range={self.gain_range}, bias_field_std={self.bias_field_std}, "
                f"noise_std={self.noise_std}, max_shift={self.max_shift}, max_angle={self.max_angle})")

    def __call__(self, images: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
        """Vary ``images`` ``(T, C, *S)`` with randomness from ``rng`` (see the class docstring).

        Args:
            images: floating-point tensor ``(T, C, h, w)`` or ``(T, C, d, h, w)``, ``T >= 2`` timepoints (the
                baseline first).
            rng: random generator.

        Returns:
            A new float32 tensor of the same shape.

        Raises:
            ValueError: ``images`` is not ``(T, C, h, w)`` or ``(T, C, d, h, w)`` with ``T >= 2``
                (a batch ``(1, T, C, h, w)`` of a 2.5D sample reads as ``T = 1``).
            TypeError: ``images`` is not a floating-point ``torch.Tensor`` (integer, bool or complex dtypes are
                refused: a complex tensor would lose its imaginary part), or ``rng`` is not a
                ``numpy.random.Generator`` (e.g. an int seed).
        """
        check_instance("rng", rng, np.random.Generator, "a numpy.random.Generator (np.random.default_rng(seed))")
        check_tensor("images", images)
        if images.ndim not in (4, 5) or images.shape[0] < 2:
            raise ValueError("images must be a (T, C, h, w) or (T, C, d, h, w) tensor with T >= 2 timepoints, got "
                             f"shape {tuple(images.shape)}")
        if not images.is_floating_point():
            raise TypeError(f"images must be a floating-point tensor (T, C, *S), got dtype {images.dtype}")
        t, c, *spatial = images.shape
        k = len(spatial)
        out = images.float().clone()
        if self.max_shift > 0 or self.max_angle > 0:
            for j in range(1, t):
                angle = float(rng.uniform(-self.max_angle, self.max_angle))
                rot = rotation_matrix(angle, k, _rotation_axes(k, rng))
                grid = _grid(rot, spatial, rng.uniform(-self.max_shift, self.max_shift, size=k))
                out[j] = F.grid_sample(out[j].unsqueeze(0), grid, mode="bilinear", padding_mode="border",
                                       align_corners=False)[0]
        scale = torch.ones(t, c, *([1] * k))
        if self.gain_range != (1.0, 1.0):
            scale = scale * torch.as_tensor(rng.uniform(*self.gain_range, size=(t, c)),
                                            dtype=torch.float32).view(t, c, *([1] * k))
        if self.bias_field_std > 0:
            control = torch.as_tensor(rng.normal(0.0, self.bias_field_std, size=(t * c, 1, *([3] * k))),
                                      dtype=torch.float32)
            mode = "bilinear" if k == 2 else "trilinear"
            field = F.interpolate(control, size=tuple(spatial), mode=mode, align_corners=True)
            scale = scale * torch.exp(field).view(t, c, *spatial)
        out = out * scale
        if self.noise_std > 0:
            noise = torch.as_tensor(rng.normal(0.0, self.noise_std, size=out.shape), dtype=torch.float32)
            out = out + noise * (out != 0)
        return out


class LongitudinalAugment:
    """Random flips, 90-degree and small-angle rotations and intensity scaling, identical across timepoints.

    Args:
        flip_prob: probability of flipping along each spatial axis (independently).
        rot90_prob: probability of a 90/180/270-degree rotation.
        rotate_prob: probability of a small-angle rotation.
        max_angle: largest small-angle rotation in degrees.
        intensity_prob: probability of scaling intensities.
        intensity_range: ``(low, high)`` range of the per-modality intensity factor.
        image_interpolation: ``"bilinear"`` (default) or ``"nearest"`` for images in small-angle rotations
            (masks always use nearest).
        independent_timepoints: ``True`` (default :class:`TimepointVariation`) or a
            :class:`TimepointVariation` adds scan-to-scan differences to the images, independently per
            timepoint, after the shared transforms; ``False`` (default) adds none.

    Call it as ``augment(sample, rng)`` on a sample dict with ``images (T, C, *S)``, ``baseline (1, *S)``
    and ``progression (T-1, 1, *S)``; other keys pass through. Returns a new dict.

    Raises:
        TypeError: a number argument is not a number (a string or a bool is refused), ``intensity_range`` not
            a pair, or ``independent_timepoints`` neither a bool nor a :class:`TimepointVariation`.
        ValueError: a value outside its range, NaN or infinite, or an unknown ``image_interpolation``.
    """

    def __init__(
        self,
        flip_prob: float = 0.5,
        rot90_prob: float = 0.5,
        rotate_prob: float = 0.3,
        max_angle: float = 15.0,
        intensity_prob: float = 0.0,
        intensity_range: tuple[float, float] = (0.9, 1.1),
        image_interpolation: str = "bilinear",
        independent_timepoints: bool | TimepointVariation = False,
    ) -> None:
        self.flip_prob = check_probability("flip_prob", flip_prob)
        self.rot90_prob = check_probability("rot90_prob", rot90_prob)
        self.rotate_prob = check_probability("rotate_prob", rotate_prob)
        self.intensity_prob = check_probability("intensity_prob", intensity_prob)
        self.max_angle = check_nonnegative_float("max_angle", max_angle)
        if self.max_angle > 180.0:
            raise ValueError(f"max_angle must lie in [0, 180] degrees, got {max_angle}")
        self.intensity_range = _check_range("intensity_range", intensity_range)
        if image_interpolation not in _IMAGE_MODES:
            raise ValueError(f"image_interpolation must be one of {_IMAGE_MODES}, got {image_interpolation!r}")
        self.image_interpolation = image_interpolation
        if isinstance(independent_timepoints, (bool, np.bool_)):
            independent_timepoints = TimepointVariation() if independent_timepoints else None
        elif not isinstance(independent_timepoints, TimepointVariation):
            raise TypeError("independent_timepoints must be a bool or a TimepointVariation, got "
                            f"{type(independent_timepoints).__name__}")
        self.timepoint_variation: TimepointVariation | None = independent_timepoints

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(flip_prob={self.flip_prob}, rot90_prob={self.rot90_prob}, "
                f"rotate_prob={self.rotate_prob}, max_angle={self.max_angle}, "
                f"intensity_prob={self.intensity_prob}, intensity_range={self.intensity_range}, "
                f"independent_timepoints={self.timepoint_variation})")

    def __call__(self, sample: dict, rng: np.random.Generator) -> dict:
        """Augment ``sample`` with randomness from ``rng`` (see the class docstring).

        Raises:
            TypeError: ``sample`` is not a dict, ``rng`` is not a ``numpy.random.Generator`` (e.g. an int seed),
                or ``sample`` lacks a tensor ``images``, ``baseline`` or ``progression``.
            ValueError: the three tensors do not have the shapes above.
        """
        check_instance("sample", sample, Mapping, "a dict with tensors 'images', 'baseline' and 'progression'")
        check_instance("rng", rng, np.random.Generator, "a numpy.random.Generator (np.random.default_rng(seed))")
        for key in ("images", "baseline", "progression"):
            if key not in sample or not isinstance(sample[key], torch.Tensor):
                raise TypeError(f"sample[{key!r}] must be a torch.Tensor")
        images, base, prog = sample["images"], sample["baseline"], sample["progression"]
        if images.ndim not in (4, 5):
            raise ValueError(f"sample['images'] must be (T, C, h, w) or (T, C, d, h, w), got {tuple(images.shape)}")
        t, c, *spatial = images.shape
        k = len(spatial)
        if tuple(base.shape) != (1, *spatial):
            raise ValueError(f"sample['baseline'] must have shape {(1, *spatial)}, got {tuple(base.shape)}")
        if tuple(prog.shape) != (t - 1, 1, *spatial):
            raise ValueError(f"sample['progression'] must have shape {(t - 1, 1, *spatial)}, got {tuple(prog.shape)}")
        imgs = images.reshape(t * c, *spatial)
        masks = torch.cat([base, prog.reshape(t - 1, *spatial)], dim=0)

        # flips
        dims = [d for d in range(k) if rng.random() < self.flip_prob]
        if dims:
            imgs = torch.flip(imgs, [1 + d for d in dims])
            masks = torch.flip(masks, [1 + d for d in dims])
        # 90-degree rotations
        if rng.random() < self.rot90_prob:
            pairs = [(a, b) for a in range(k) for b in range(a + 1, k)]
            a, b = pairs[int(rng.integers(len(pairs)))]
            turns = int(rng.integers(1, 4)) if spatial[a] == spatial[b] else 2
            imgs = torch.rot90(imgs, turns, (1 + a, 1 + b))
            masks = torch.rot90(masks, turns, (1 + a, 1 + b))
        # small-angle rotation
        if rng.random() < self.rotate_prob and self.max_angle > 0:
            angle = float(rng.uniform(-self.max_angle, self.max_angle))
            grid = _grid(rotation_matrix(angle, k, _rotation_axes(k, rng)), spatial)
            imgs = F.grid_sample(imgs.unsqueeze(0).float(), grid, mode=self.image_interpolation,
                                 padding_mode="zeros", align_corners=False)[0]
            masks = F.grid_sample(masks.unsqueeze(0).float(), grid, mode="nearest",
                                  padding_mode="zeros", align_corners=False)[0].to(masks.dtype)
        # intensity scaling (one factor per modality, shared across timepoints)
        imgs = imgs.reshape(t, c, *spatial)
        if self.intensity_prob > 0 and rng.random() < self.intensity_prob:
            factors = torch.as_tensor(rng.uniform(*self.intensity_range, size=c), dtype=imgs.dtype)
            imgs = imgs * factors.view(1, c, *([1] * k))
        if self.timepoint_variation is not None:
            imgs = self.timepoint_variation(imgs, rng)
        out = dict(sample)
        out["images"] = imgs.contiguous()
        out["baseline"] = masks[:1].contiguous()
        out["progression"] = masks[1:].reshape(t - 1, 1, *spatial).contiguous()
        visible = bool(out["progression"].any())  # a rotation can turn progression voxels out of the crop
        if "progression_visible" in sample:
            out["progression_visible"] = torch.tensor(visible)
        if "hard_negative" in sample and "on_persisting" in sample:  # the flag follows the target it describes
            out["hard_negative"] = torch.tensor(bool(sample["on_persisting"]) and not visible)
        return out
