"""Difference Weighting block (Rokuss et al., MICCAI 2024).

Merges the features of a current (follow-up) and a prior (baseline) timepoint as::

    x'_c = x_c * InstanceNorm(x_c - x_p) + x_c

The instance norm of the feature difference acts as a normalised attention map that highlights change;
the residual keeps the current features. With a freshly initialised affine instance norm (weight 1,
bias 0) and identical timepoints the difference is zero, the norm returns its bias (0) and the block is
exactly the identity.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from longiseg.networks.inputs import feature_layout
from longiseg.utils.validation import (
    check_bool,
    check_nonnegative_float,
    check_positive_int,
    check_same_shape,
    check_shape,
    check_spatial_dims,
    check_tensor,
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
        norm_cls = nn.InstanceNorm2d if spatial_dims == 2 else nn.InstanceNorm3d
        self.norm = norm_cls(channels, eps=eps, affine=affine)

    def forward(self, current: torch.Tensor, prior: torch.Tensor) -> torch.Tensor:
        """Weight the current features by the normalised difference to the prior features.

        Args:
            current: ``(B, C, *S)`` features of the current timepoint ``x_c``.
            prior: ``(B, C, *S)`` features of the prior timepoint ``x_p``.

        Returns:
            ``(B, C, *S)`` temporally informed features ``x'_c``.
        """
        check_shape("current", current, feature_layout(self.spatial_dims),
                    floating=True, C=self.channels)
        check_tensor("prior", prior)
        check_same_shape("current", current, "prior", prior)
        return current * self.norm(current - prior) + current

    def extra_repr(self) -> str:
        return f"channels={self.channels}, spatial_dims={self.spatial_dims}"
