"""Seeded augmentations applied identically to every timepoint, modality and mask of a sample.

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

Randomness comes only from the ``numpy.random.Generator`` passed in, so a sample is reproducible from
its seed.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from longiseg.utils.validation import check_probability

__all__ = ["LongitudinalAugment", "rotation_matrix"]

_IMAGE_MODES = ("bilinear", "nearest")


def rotation_matrix(angle_deg: float, ndim: int, axes: tuple[int, int] = (0, 1)) -> np.ndarray:
    """``(ndim, ndim)`` rotation by ``angle_deg`` in the plane of array axes ``axes``."""
    if ndim not in (2, 3):
        raise ValueError(f"ndim must be 2 or 3, got {ndim}")
    a, b = axes
    if not (0 <= a < ndim and 0 <= b < ndim and a != b):
        raise ValueError(f"axes must be two different axes < {ndim}, got {axes}")
    th = math.radians(angle_deg)
    rot = np.eye(ndim)
    rot[a, a], rot[a, b], rot[b, a], rot[b, b] = math.cos(th), -math.sin(th), math.sin(th), math.cos(th)
    return rot


def _grid(rot: np.ndarray, spatial: Sequence[int]) -> torch.Tensor:
    """Sampling grid of a rotation about the centre, in voxel units (aspect-correct for non-square crops)."""
    k = len(spatial)
    half = np.asarray(spatial, dtype=np.float64) / 2.0
    theta_idx = np.diag(1.0 / half) @ rot @ np.diag(half)  # normalised coords, array-axis order
    perm = list(range(k))[::-1]  # affine_grid orders coordinates (x=W, y=H, z=D)
    theta = np.zeros((k, k + 1))
    theta[:, :k] = theta_idx[np.ix_(perm, perm)]
    t = torch.as_tensor(theta, dtype=torch.float32).unsqueeze(0)
    return F.affine_grid(t, [1, 1, *spatial], align_corners=False)


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

    Call it as ``augment(sample, rng)`` on a sample dict with ``images (T, C, *S)``, ``baseline (1, *S)``
    and ``progression (T-1, 1, *S)``; other keys pass through. Returns a new dict.
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
    ) -> None:
        self.flip_prob = check_probability("flip_prob", flip_prob)
        self.rot90_prob = check_probability("rot90_prob", rot90_prob)
        self.rotate_prob = check_probability("rotate_prob", rotate_prob)
        self.intensity_prob = check_probability("intensity_prob", intensity_prob)
        if not (0.0 <= float(max_angle) <= 180.0):
            raise ValueError(f"max_angle must lie in [0, 180] degrees, got {max_angle}")
        self.max_angle = float(max_angle)
        lo, hi = (float(v) for v in intensity_range)
        if not (0.0 < lo <= hi):
            raise ValueError(f"intensity_range must be (low, high) with 0 < low <= high, got {intensity_range}")
        self.intensity_range = (lo, hi)
        if image_interpolation not in _IMAGE_MODES:
            raise ValueError(f"image_interpolation must be one of {_IMAGE_MODES}, got {image_interpolation!r}")
        self.image_interpolation = image_interpolation

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(flip_prob={self.flip_prob}, rot90_prob={self.rot90_prob}, "
                f"rotate_prob={self.rotate_prob}, max_angle={self.max_angle}, "
                f"intensity_prob={self.intensity_prob}, intensity_range={self.intensity_range})")

    def __call__(self, sample: dict, rng: np.random.Generator) -> dict:
        """Augment ``sample`` with randomness from ``rng`` (see the class docstring)."""
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
            axes = (0, 1) if k == 2 else [(0, 1), (0, 2), (1, 2)][int(rng.integers(3))]
            grid = _grid(rotation_matrix(angle, k, axes), spatial)
            imgs = F.grid_sample(imgs.unsqueeze(0).float(), grid, mode=self.image_interpolation,
                                 padding_mode="zeros", align_corners=False)[0]
            masks = F.grid_sample(masks.unsqueeze(0).float(), grid, mode="nearest",
                                  padding_mode="zeros", align_corners=False)[0].to(masks.dtype)
        # intensity scaling (one factor per modality, shared across timepoints)
        imgs = imgs.reshape(t, c, *spatial)
        if self.intensity_prob > 0 and rng.random() < self.intensity_prob:
            factors = torch.as_tensor(rng.uniform(*self.intensity_range, size=c), dtype=imgs.dtype)
            imgs = imgs * factors.view(1, c, *([1] * k))
        out = dict(sample)
        out["images"] = imgs.contiguous()
        out["baseline"] = masks[:1].contiguous()
        out["progression"] = masks[1:].reshape(t - 1, 1, *spatial).contiguous()
        if "progression_visible" in sample:
            out["progression_visible"] = torch.tensor(bool(out["progression"].any()))
        return out
