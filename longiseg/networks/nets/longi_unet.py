"""Longitudinal U-Nets: LongiUNet-DW (late fusion with Difference Weighting) and the early-fusion ablation.

``LongiUNetDW`` (Rokuss et al., MICCAI 2024) runs one shared U-Net encoder on every timepoint and merges
the timepoints' features with a :class:`~longiseg.networks.blocks.difference_weighting.DifferenceWeighting`
block on every skip connection and on the bottleneck::

    x'_c = x_c * InstanceNorm(x_c - x_p) + x_c

Pairing of current and prior timepoints (``T >= 2``):

* timepoint 0 (baseline) is the *current* image and timepoint 1 its *prior*: as in the paper, the
  baseline is segmented with the first follow-up as additional information;
* follow-up ``t >= 1`` is the *current* image and, with ``prior="previous"`` (default), timepoint ``t-1``
  its prior, so each follow-up is compared with the scan that its new/enlarging lesions are defined
  against; ``prior="baseline"`` compares every follow-up with timepoint 0 instead.

Baseline and follow-ups use separate Difference Weighting blocks (their affine instance-norm parameters
differ); the decoder is shared and decodes every timepoint's fused features, and the dual heads map the
decoded features of timepoint 0 to baseline logits and of timepoints ``1..T-1`` to progression logits.
Any ``T >= 2`` works with the same weights: the ``longi_unet_dw*`` factories accept ``num_timepoints`` (as every
factory does; the training workflow passes it) and check it, but do not enforce it, and the model's spec
records ``num_timepoints=None``.

``LongiUNetConcat`` is the "Longitudinal nnU-Net" early-fusion ablation of the same paper: the
timepoints' images are concatenated as channels, so ``T`` is fixed at construction.

Both come in 3D (``(B, T, C, D, H, W)``) and 2D/2.5D (``(B, T, C, H, W)``) variants; the named
configurations are sized like the baselines of the SegMaST paper (2.5D about 9M (MS) / 16M (glioma)
parameters, 3D about 15M / 25M).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn as nn
from einops import rearrange

from longiseg.networks.blocks.difference_weighting import DifferenceWeighting
from longiseg.networks.blocks.heads import FusedDualHead, TimepointHeads
from longiseg.networks.factories import conv_type, norm_type
from longiseg.networks.inputs import SpatialSizeRule, check_model_input, parameter_device, parameter_dtype
from longiseg.networks.output import LongitudinalOutput
from longiseg.networks.presets import UNET_WIDTHS, pop_any_timepoints, pop_fixed_spatial_dims
from longiseg.registry import register_model
from longiseg.utils.validation import (
    check_keywords,
    check_positive_int,
    check_spatial_dims,
    check_timepoints,
    check_widths,
    keyword_parameters,
)

__all__ = [
    "ConvStage",
    "UNetEncoder",
    "UNetDecoder",
    "LongiUNetDW",
    "LongiUNetConcat",
]


class ConvStage(nn.Module):
    """Two ``3^d`` convolutions, each followed by affine InstanceNorm and LeakyReLU(0.01) (nnU-Net style).

    The first convolution has stride ``stride`` (2 downsamples, 1 keeps the resolution). The convolutions'
    biases are cancelled by the instance norms that follow (zero gradient; kept, as in nnU-Net), and each
    instance norm needs at least 2 voxels per map.

    Args:
        in_channels: input channels.
        out_channels: output channels.
        spatial_dims: 2 or 3.
        stride: stride of the first convolution.

    Shapes:
        ``(N, in_channels, *S)`` -> ``(N, out_channels, *S / stride)``.
    """

    def __init__(self, in_channels: int, out_channels: int, spatial_dims: int, stride: int = 1) -> None:
        super().__init__()
        check_positive_int("in_channels", in_channels)
        check_positive_int("out_channels", out_channels)
        check_positive_int("stride", stride)
        check_spatial_dims("spatial_dims", spatial_dims)
        conv = conv_type(spatial_dims)
        norm = norm_type("instance", spatial_dims)
        self.block = nn.Sequential(
            conv(in_channels, out_channels, 3, stride=stride, padding=1),
            norm(out_channels, affine=True),
            nn.LeakyReLU(0.01, inplace=True),
            conv(out_channels, out_channels, 3, padding=1),
            norm(out_channels, affine=True),
            nn.LeakyReLU(0.01, inplace=True),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(N, in_channels, *S)`` -> ``(N, out_channels, *S / stride)``."""
        return self.block(x)


class UNetEncoder(nn.Module):
    """Plain U-Net encoder: one :class:`ConvStage` per width, stride 2 from the second stage on.

    Args:
        in_channels: image channels.
        features: widths of the stages, from full resolution to the bottleneck.
        spatial_dims: 2 or 3.

    Shapes:
        input ``(N, in_channels, *S)`` with every spatial size divisible by ``2 ** (len(features) - 1)``;
        output: a list of ``len(features)`` maps, entry ``i`` of shape ``(N, features[i], *S / 2**i)``
        (the last one is the bottleneck).
    """

    def __init__(self, in_channels: int, features: Sequence[int], spatial_dims: int) -> None:
        super().__init__()
        check_positive_int("in_channels", in_channels)
        self.features = check_widths("features", features)
        self.spatial_dims = check_spatial_dims("spatial_dims", spatial_dims)
        self.in_channels = in_channels
        widths = (in_channels,) + self.features
        self.stages = nn.ModuleList(
            ConvStage(widths[i], widths[i + 1], spatial_dims, stride=1 if i == 0 else 2)
            for i in range(len(self.features))
        )

    @property
    def divisor(self) -> int:
        """Every spatial size of the input must be a multiple of this."""
        return 2 ** (len(self.features) - 1)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """``(N, C, *S)`` -> skip features and bottleneck ``[(N, features[i], *S / 2**i)]``."""
        out = []
        for stage in self.stages:
            x = stage(x)
            out.append(x)
        return out


class UNetDecoder(nn.Module):
    """Plain U-Net decoder: transposed-conv upsampling, concatenation with the skip, :class:`ConvStage`.

    Args:
        features: the encoder's stage widths (full resolution first, bottleneck last).
        spatial_dims: 2 or 3.

    Shapes:
        input: the encoder's list ``[(N, features[i], *S / 2**i)]``; output ``(N, features[0], *S)``.
    """

    def __init__(self, features: Sequence[int], spatial_dims: int) -> None:
        super().__init__()
        self.features = check_widths("features", features)
        self.spatial_dims = check_spatial_dims("spatial_dims", spatial_dims)
        up = conv_type(spatial_dims, transposed=True)
        levels = range(len(self.features) - 1, 0, -1)  # from the bottleneck up
        self.upsamples = nn.ModuleList(
            up(self.features[i], self.features[i - 1], kernel_size=2, stride=2) for i in levels
        )
        self.stages = nn.ModuleList(
            ConvStage(2 * self.features[i - 1], self.features[i - 1], spatial_dims) for i in levels
        )

    def forward(self, skips: Sequence[torch.Tensor]) -> torch.Tensor:
        """Decode ``[(N, features[i], *S / 2**i)]`` into ``(N, features[0], *S)``."""
        if len(skips) != len(self.features):
            raise ValueError(f"skips must hold {len(self.features)} feature maps, got {len(skips)}")
        x = skips[-1]
        for up, stage, skip in zip(self.upsamples, self.stages, reversed(skips[:-1])):
            x = stage(torch.cat([up(x), skip], dim=1))
        return x


class LongiUNetDW(nn.Module):
    """U-Net with a shared encoder per timepoint and Difference Weighting on every skip and the bottleneck.

    Args:
        in_channels: image channels per timepoint ``C`` (modalities).
        out_channels: output channels per head ``K``.
        features: stage widths, full resolution first; ``len(features) - 1`` downsamplings.
        spatial_dims: 3 for volumes ``(B, T, C, D, H, W)``, 2 for slices ``(B, T, C, H, W)``.
        prior: prior of follow-up ``t``: ``"previous"`` (timepoint ``t-1``) or ``"baseline"`` (timepoint 0).
            The baseline always uses timepoint 1 as its prior.

    Shapes:
        input ``(B, T, C, *S)`` with ``B >= 1``, ``T >= 2`` and every spatial size divisible by
        ``d = 2 ** (len(features) - 1)``, one of them at least ``2 d`` (the bottleneck is instance-normalised
        and needs 2 voxels: e.g. 64x32 for the 2.5D configurations, ``d = 32``); output
        :class:`LongitudinalOutput` with baseline logits ``(B, K, *S)`` and progression logits ``(B, T-1, K, *S)``.
        Inputs are checked by :func:`~longiseg.networks.inputs.check_model_input`.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int = 1,
        features: Sequence[int] = UNET_WIDTHS["3d"]["ms"],
        spatial_dims: int = 3,
        prior: str = "previous",
    ) -> None:
        super().__init__()
        if prior not in ("previous", "baseline"):
            raise ValueError(f"prior must be 'previous' or 'baseline', got {prior!r}")
        self.in_channels = check_positive_int("in_channels", in_channels)
        self.out_channels = check_positive_int("out_channels", out_channels)
        self.num_timepoints = None  # shared weights across timepoints: any T >= 2
        self.spatial_dims = check_spatial_dims("spatial_dims", spatial_dims)
        self.prior = prior
        self.encoder = UNetEncoder(self.in_channels, features, self.spatial_dims)
        # sizes divisible by the encoder's downsampling; its ConvStages instance-normalise the bottleneck
        self.spatial_size_rule = SpatialSizeRule.of(self.spatial_dims, self.encoder.divisor,
                                                    instance_norm_bottleneck=True)
        feats = self.encoder.features
        self.dw_baseline = nn.ModuleList(DifferenceWeighting(f, spatial_dims) for f in feats)
        self.dw_followup = nn.ModuleList(DifferenceWeighting(f, spatial_dims) for f in feats)
        self.decoder = UNetDecoder(feats, spatial_dims)
        self.heads = TimepointHeads(feats[0], out_channels=out_channels, spatial_dims=spatial_dims)

    def prior_index(self, t: int) -> int:
        """Index of the prior timepoint that timepoint ``t`` is compared with."""
        if t == 0:
            return 1
        return t - 1 if self.prior == "previous" else 0

    def forward(self, x: torch.Tensor) -> LongitudinalOutput:
        """Segment ``(B, T, C, *S)`` into baseline ``(B, K, *S)`` and progression ``(B, T-1, K, *S)`` logits."""
        check_model_input(x, self.spatial_dims, self.in_channels, size_rule=self.spatial_size_rule,
                          dtype=parameter_dtype(self),
                          device=parameter_device(self))
        b, t = x.shape[:2]
        feats = self.encoder(x.flatten(0, 1))
        fused = []
        for level, f in enumerate(feats):
            f = f.unflatten(0, (b, t))  # (B, T, C, *S)
            current = f[:, 1:]  # all follow-ups in one batch (the instance norm is per sample): any T traces
            prior = f[:, :-1] if self.prior == "previous" else f[:, :1].expand_as(current)  # see prior_index
            follow = self.dw_followup[level](current.flatten(0, 1), prior.flatten(0, 1)).unflatten(0, (b, t - 1))
            base = self.dw_baseline[level](f[:, 0], f[:, 1])
            fused.append(torch.cat([base[:, None], follow], dim=1).flatten(0, 1))
        decoded = self.decoder(fused).unflatten(0, (b, t))
        return self.heads(decoded).traceable()


class LongiUNetConcat(nn.Module):
    """Early-fusion U-Net ("Longitudinal nnU-Net"): timepoints concatenated as channels, dual heads.

    Args:
        in_channels: image channels per timepoint ``C``.
        num_timepoints: ``T``, fixed at construction (the first convolution sees ``T * C`` channels).
        out_channels: output channels per head ``K``.
        features: stage widths, full resolution first.
        spatial_dims: 3 for ``(B, T, C, D, H, W)``, 2 for ``(B, T, C, H, W)``.

    Shapes:
        input ``(B, T, C, *S)``, sizes as for :class:`LongiUNetDW`; output baseline ``(B, K, *S)``, progression
        ``(B, T-1, K, *S)``.

    Raises:
        ValueError: at forward, if the input has a different number of timepoints than ``num_timepoints``.
    """

    def __init__(
        self,
        in_channels: int,
        num_timepoints: int = 2,
        out_channels: int = 1,
        features: Sequence[int] = UNET_WIDTHS["3d"]["ms"],
        spatial_dims: int = 3,
    ) -> None:
        super().__init__()
        self.in_channels = check_positive_int("in_channels", in_channels)
        self.out_channels = check_positive_int("out_channels", out_channels)
        self.num_timepoints = check_timepoints("num_timepoints", num_timepoints)
        self.spatial_dims = check_spatial_dims("spatial_dims", spatial_dims)
        self.encoder = UNetEncoder(self.in_channels * self.num_timepoints, features, spatial_dims)
        # sizes divisible by the encoder's downsampling; its ConvStages instance-normalise the bottleneck
        self.spatial_size_rule = SpatialSizeRule.of(self.spatial_dims, self.encoder.divisor,
                                                    instance_norm_bottleneck=True)
        self.decoder = UNetDecoder(self.encoder.features, spatial_dims)
        self.heads = FusedDualHead(
            self.encoder.features[0], num_timepoints=self.num_timepoints, out_channels=self.out_channels,
            spatial_dims=spatial_dims,
        )

    def forward(self, x: torch.Tensor) -> LongitudinalOutput:
        """Segment ``(B, T, C, *S)`` into baseline ``(B, K, *S)`` and progression ``(B, T-1, K, *S)`` logits."""
        check_model_input(x, self.spatial_dims, self.in_channels, num_timepoints=self.num_timepoints,
                          size_rule=self.spatial_size_rule, dtype=parameter_dtype(self),
                          device=parameter_device(self))
        fused = rearrange(x, "b t c ... -> b (t c) ...")
        return self.heads(self.decoder(self.encoder(fused))).traceable()


# ----------------------------------------------------------------------------------------- registry


def _features(spatial_dims: int, size: str, kwargs: dict[str, Any], family: str) -> tuple[int, ...]:
    """Pop ``features`` (default: the named size) and a ``spatial_dims`` equal to the one the preset fixes."""
    pop_fixed_spatial_dims(kwargs, spatial_dims, family)
    return check_widths("features", kwargs.pop("features", UNET_WIDTHS[f"{spatial_dims}d"][size]))


def _build_dw(spatial_dims: int, size: str, default_in: int, /, **kwargs: Any) -> LongiUNetDW:
    check_keywords("LongiUNetDW", kwargs, [*keyword_parameters(LongiUNetDW), "num_timepoints"])
    pop_any_timepoints(kwargs)  # any T >= 2 works with the same weights
    features = _features(spatial_dims, size, kwargs, "longi_unet_dw*")
    in_channels = kwargs.pop("in_channels", default_in)
    return LongiUNetDW(in_channels, features=features, spatial_dims=spatial_dims, **kwargs)


def _build_concat(spatial_dims: int, size: str, default_in: int, /, **kwargs: Any) -> LongiUNetConcat:
    check_keywords("LongiUNetConcat", kwargs, keyword_parameters(LongiUNetConcat))
    features = _features(spatial_dims, size, kwargs, "longi_unet_concat*")
    in_channels = kwargs.pop("in_channels", default_in)
    return LongiUNetConcat(in_channels, features=features, spatial_dims=spatial_dims, **kwargs)


@register_model(dim="3D", tags=("cnn", "difference-weighting", "longitudinal"))
def longi_unet_dw(**kwargs: Any) -> LongiUNetDW:
    """3D LongiUNet-DW: shared encoder + Difference Weighting on skips and bottleneck (widths as _ms)."""
    return _build_dw(3, "ms", 2, **kwargs)


@register_model(dim="3D", tags=("cnn", "difference-weighting", "longitudinal"))
def longi_unet_dw_ms(**kwargs: Any) -> LongiUNetDW:
    """3D LongiUNet-DW sized for MS (~15M parameters; FLAIR + T2 input)."""
    return _build_dw(3, "ms", 2, **kwargs)


@register_model(dim="3D", tags=("cnn", "difference-weighting", "longitudinal"))
def longi_unet_dw_glioma(**kwargs: Any) -> LongiUNetDW:
    """3D LongiUNet-DW sized for glioma (~25M parameters; FLAIR, T1, T1-ce, T2 input)."""
    return _build_dw(3, "glioma", 4, **kwargs)


@register_model(dim="2.5D", tags=("cnn", "difference-weighting", "longitudinal"))
def longi_unet_dw_2d(**kwargs: Any) -> LongiUNetDW:
    """2.5D LongiUNet-DW on slices: shared 2D encoder + Difference Weighting (widths as _2d_ms)."""
    return _build_dw(2, "ms", 2, **kwargs)


@register_model(dim="2.5D", tags=("cnn", "difference-weighting", "longitudinal"))
def longi_unet_dw_2d_ms(**kwargs: Any) -> LongiUNetDW:
    """2.5D LongiUNet-DW sized for MS (~9M parameters)."""
    return _build_dw(2, "ms", 2, **kwargs)


@register_model(dim="2.5D", tags=("cnn", "difference-weighting", "longitudinal"))
def longi_unet_dw_2d_glioma(**kwargs: Any) -> LongiUNetDW:
    """2.5D LongiUNet-DW sized for glioma (~16M parameters)."""
    return _build_dw(2, "glioma", 4, **kwargs)


@register_model(dim="3D", tags=("cnn", "early-fusion", "longitudinal"))
def longi_unet_concat(**kwargs: Any) -> LongiUNetConcat:
    """3D early-fusion U-Net ("Longitudinal nnU-Net"): timepoints as channels, dual heads (widths as _ms)."""
    return _build_concat(3, "ms", 2, **kwargs)


@register_model(dim="3D", tags=("cnn", "early-fusion", "longitudinal"))
def longi_unet_concat_ms(**kwargs: Any) -> LongiUNetConcat:
    """3D early-fusion U-Net sized for MS (~15M parameters)."""
    return _build_concat(3, "ms", 2, **kwargs)


@register_model(dim="3D", tags=("cnn", "early-fusion", "longitudinal"))
def longi_unet_concat_glioma(**kwargs: Any) -> LongiUNetConcat:
    """3D early-fusion U-Net sized for glioma (~25M parameters)."""
    return _build_concat(3, "glioma", 4, **kwargs)


@register_model(dim="2.5D", tags=("cnn", "early-fusion", "longitudinal"))
def longi_unet_concat_2d(**kwargs: Any) -> LongiUNetConcat:
    """2.5D early-fusion U-Net on slices: timepoints as channels, dual heads (widths as the 2.5D MS size)."""
    return _build_concat(2, "ms", 2, **kwargs)
