"""Difference Weighting block (Rokuss et al., MICCAI 2024).

Merges the features of a current (follow-up) and a prior (baseline) timepoint as::

    x'_c = x_c * InstanceNorm(x_c - x_p) + x_c

The instance norm of the feature difference acts as a normalised attention map that highlights change;
the residual keeps the current features. With a freshly initialised affine instance norm (weight 1,
bias 0) and identical timepoints the difference is zero, the norm returns its bias (0) and the block is
exactly the identity.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn

from longiseg.networks.factories import norm_type
from longiseg.networks.inputs import feature_layout, parameter_device, parameter_dtype
from longiseg.utils.validation import (
    autocast_reconciles,
    check_bool,
    check_matches_parameters,
    check_nonnegative_float,
    check_positive_int,
    check_same_shape,
    check_shape,
    check_spatial_dims,
    check_tensor,
    checks_sizes,
)

__all__ = ["DifferenceWeighting"]


class DifferenceWeighting(nn.Module):
    """``x_c * InstanceNorm(x_c - x_p) + x_c`` for 2D or 3D feature maps.

    Args:
        channels: number of feature channels ``C``.
        spatial_dims: 2 for ``(B, C, H, W)`` features, 3 for ``(B, C, D, H, W)``.
        affine: learnable per-channel scale and shift of the instance norm (default ``True``, as nnU-Net's
            instance norms; the paper says "Instance Normalization" without naming the affine parameters).
        eps: instance-norm epsilon, a finite number ``>= 0``.

    Shapes:
        ``current`` and ``prior``: ``(B, C, *S)`` with ``len(S) == spatial_dims``; output: same shape.
    """

    def __init__(self, channels: int, spatial_dims: int = 3, affine: bool = True, eps: float = 1e-5) -> None:
        super().__init__()
        check_spatial_dims("spatial_dims", spatial_dims)
        channels = check_positive_int("channels", channels)
        affine = check_bool("affine", affine)
        eps = check_nonnegative_float("eps", eps)
        self.channels = channels
        self.spatial_dims = spatial_dims
        self.norm = norm_type("instance", spatial_dims)(channels, eps=eps, affine=affine)

    def forward(self, current: torch.Tensor, prior: torch.Tensor) -> torch.Tensor:
        """Weight the current features by the normalised difference to the prior features.

        Args:
            current: ``(B, C, *S)`` features of the current timepoint ``x_c``.
            prior: ``(B, C, *S)`` features of the prior timepoint ``x_p``.

        Returns:
            ``(B, C, *S)`` temporally informed features ``x'_c``.

        Raises:
            TypeError: ``current`` is not a floating-point tensor, ``prior`` not a tensor of ``current``'s dtype,
                or the block's parameters have another dtype (outside autocast).
            ValueError: wrong shapes, an empty batch, a single voxel per channel, or the tensors and
                the block on different devices.
        """
        check_shape("current", current, feature_layout(self.spatial_dims),
                    floating=True, C=self.channels)
        check_tensor("prior", prior)
        check_same_shape("current", current, "prior", prior)
        # torch promoted an integer or half prior silently, or failed inside; autocast runs floating ones together
        if prior.dtype != current.dtype and not (prior.is_floating_point() and autocast_reconciles(prior, current.dtype)):
            raise TypeError(f"prior must have current's dtype {current.dtype}, got {prior.dtype}")
        if prior.device != current.device:
            raise ValueError(f"prior must be on current's device {current.device}, got {prior.device}")
        if checks_sizes() and current.shape[0] == 0:
            raise ValueError(f"current has batch size B=0, got shape {tuple(current.shape)}; pass at least one sample")
        if checks_sizes() and math.prod(current.shape[2:]) < 2:
            raise ValueError(f"current has a single voxel per channel, got shape {tuple(current.shape)}: the block "
                             f"instance-normalises x_c - x_p over the spatial dims, which needs at least 2 voxels")
        check_matches_parameters("current", current, dtype=parameter_dtype(self), device=parameter_device(self),
                                 module="block")
        return current * self.norm(current - prior) + current

    def extra_repr(self) -> str:
        return f"channels={self.channels}, spatial_dims={self.spatial_dims}"
