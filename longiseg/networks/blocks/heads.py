"""Dual prediction heads that turn features into a :class:`~longiseg.networks.output.LongitudinalOutput`.

* :class:`TimepointHeads` (SegMaST, SegFormer): features kept per timepoint ``(B, T, C, *S)``. A 1x1
  convolution on ``t0`` gives the baseline logits; a 1x1 progression convolution on every follow-up
  ``t1..t_{T-1}`` gives one progression map per follow-up (``T = 3`` gives B, FU1, FU2 as in the paper's
  section 4.3). By default one progression convolution is shared by all follow-ups, so ``T`` is a property
  of the input; ``shared_progression=False`` gives each follow-up its own convolution and fixes ``T - 1``
  at construction. Logits are upsampled (bilinear/trilinear) to ``output_size``.
* :class:`FusedDualHead` (CNN baselines with timepoints stacked as channels): fused features ``(B, C, *S)``,
  a baseline convolution with ``K`` channels and a progression convolution with ``(T - 1) * K`` channels.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from longiseg.networks.factories import conv_type, linear_interpolation
from longiseg.networks.inputs import feature_layout
from longiseg.networks.inputs import layout as input_layout
from longiseg.networks.output import LongitudinalOutput
from longiseg.utils.validation import (
    check_bool,
    check_int_sequence,
    check_positive_int,
    check_shape,
    check_timepoints,
    checks_sizes,
)

__all__ = ["FusedDualHead", "TimepointHeads"]


def _conv1x1(in_channels: int, out_channels: int, spatial_dims: int) -> nn.Module:
    return conv_type(spatial_dims)(in_channels, out_channels, kernel_size=1)


def _resize(x: torch.Tensor, size: Sequence[int] | None) -> torch.Tensor:
    """Interpolate ``(N, K, *S)`` to ``size`` (bilinear in 2D, trilinear in 3D); no-op when it matches (checked
    unless ``torch.jit.trace`` records, where the sizes are traced tensors: interpolating to the same size is the
    identity)."""
    if size is None or (checks_sizes() and tuple(x.shape[2:]) == tuple(size)):
        return x
    return F.interpolate(x, size=tuple(size), mode=linear_interpolation(x.ndim - 2), align_corners=False)


class TimepointHeads(nn.Module):
    """Baseline head on ``t0`` and progression head(s) on the follow-ups of per-timepoint features.

    Args:
        in_channels: feature channels ``C``.
        out_channels: logits per head ``K`` (1 for binary masks).
        spatial_dims: 2 for ``(B, T, C, H, W)`` features, 3 for ``(B, T, C, D, H, W)``.
        shared_progression: one progression convolution for every follow-up (default) or one each.
        num_followups: number of follow-ups ``T - 1``; required (and enforced) when
            ``shared_progression=False``, otherwise optional and unused.

    Shapes:
        input ``(B, T, C, *S)`` with ``T >= 2``; output ``LongitudinalOutput(baseline (B, K, *S'),
        progression (B, T-1, K, *S'))`` with ``S' = output_size`` (or ``S`` when not given).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int = 1,
        spatial_dims: int = 2,
        shared_progression: bool = True,
        num_followups: int | None = None,
    ) -> None:
        super().__init__()
        check_positive_int("in_channels", in_channels)
        check_positive_int("out_channels", out_channels)
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.spatial_dims = spatial_dims
        self.shared_progression = check_bool("shared_progression", shared_progression)
        self.baseline = _conv1x1(in_channels, out_channels, spatial_dims)
        if self.shared_progression:
            self.num_followups = (
                None if num_followups is None else check_positive_int("num_followups", num_followups)
            )
            self.progression = _conv1x1(in_channels, out_channels, spatial_dims)
        else:
            if num_followups is None:
                raise ValueError("num_followups (T - 1) is required when shared_progression=False")
            self.num_followups = check_positive_int("num_followups", num_followups)
            self.progression = nn.ModuleList(
                _conv1x1(in_channels, out_channels, spatial_dims) for _ in range(self.num_followups)
            )

    def forward(self, features: torch.Tensor, output_size: Sequence[int] | None = None) -> LongitudinalOutput:
        """Predict baseline and progression logits from ``(B, T, C, *S)`` features."""
        check_shape("features", features, input_layout(self.spatial_dims), floating=True, C=self.in_channels)
        sizes = checks_sizes()  # False while torch.jit.trace records: the sizes are traced tensors
        b, t = features.shape[:2]
        if sizes:
            check_timepoints("features.shape[1] (timepoints T)", t)
        if sizes and not self.shared_progression and t - 1 != self.num_followups:
            raise ValueError(
                f"features have {t - 1} follow-ups but these heads were built for num_followups={self.num_followups}"
            )
        if output_size is not None and sizes:  # traced sizes (torch.jit.trace) are tensors: not checked
            output_size = check_int_sequence("output_size", output_size, length=self.spatial_dims,
                                             what="one size per spatial dim")
        spatial = features.shape[3:]
        baseline = _resize(self.baseline(features[:, 0]), output_size)
        followups = features[:, 1:]
        if self.shared_progression:
            prog = self.progression(followups.reshape(b * (t - 1), self.in_channels, *spatial))
        else:
            prog = torch.stack([head(followups[:, i]) for i, head in enumerate(self.progression)], dim=1)
            prog = prog.reshape(b * (t - 1), self.out_channels, *spatial)
        prog = _resize(prog, output_size)
        return LongitudinalOutput(baseline=baseline, progression=prog.reshape(b, t - 1, *prog.shape[1:]))

    def extra_repr(self) -> str:
        return f"shared_progression={self.shared_progression}, num_followups={self.num_followups}"


class FusedDualHead(nn.Module):
    """Baseline and progression 1x1 convolutions on features that already fuse all timepoints.

    Args:
        in_channels: feature channels ``C``.
        num_timepoints: ``T`` (the progression head predicts ``T - 1`` maps).
        out_channels: logits per map ``K``.
        spatial_dims: 2 for ``(B, C, H, W)``, 3 for ``(B, C, D, H, W)``.

    Shapes:
        input ``(B, C, *S)``; output ``LongitudinalOutput(baseline (B, K, *S), progression (B, T-1, K, *S))``.
    """

    def __init__(
        self, in_channels: int, num_timepoints: int, out_channels: int = 1, spatial_dims: int = 3
    ) -> None:
        super().__init__()
        check_positive_int("in_channels", in_channels)
        check_positive_int("out_channels", out_channels)
        self.num_timepoints = check_timepoints("num_timepoints", num_timepoints)
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.spatial_dims = spatial_dims
        self.baseline = _conv1x1(in_channels, out_channels, spatial_dims)
        self.progression = _conv1x1(in_channels, (num_timepoints - 1) * out_channels, spatial_dims)

    def forward(self, features: torch.Tensor) -> LongitudinalOutput:
        """Predict baseline and progression logits from fused ``(B, C, *S)`` features."""
        check_shape("features", features, feature_layout(self.spatial_dims),
                    floating=True, C=self.in_channels)
        b, spatial = features.shape[0], features.shape[2:]
        prog = self.progression(features).reshape(b, self.num_timepoints - 1, self.out_channels, *spatial)
        return LongitudinalOutput(baseline=self.baseline(features), progression=prog)
