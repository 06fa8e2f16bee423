"""SegMaST: Mamba-based spatio-temporal longitudinal segmentation (Varma et al., MIDL 2026).

A 2.5D SegFormer-like network whose encoder blocks are ST blocks with the MaST mixer::

    (B, T, C, H, W) -> pad to a multiple of 32 -> HierarchicalEncoder (4 stages, ST blocks)
      -> AllMLPDecoder -> (B, T, E, H/4, W/4) -> TimepointHeads -> crop
      -> LongitudinalOutput(baseline (B, K, H, W), progression (B, T-1, K, H, W))

The configuration is a plain dataclass, :class:`SegMaSTConfig`, a :class:`~longiseg.utils.config.ConfigBase`
like every config of the library: printable and serialisable with :meth:`SegMaSTConfig.to_dict` /
:meth:`SegMaSTConfig.from_dict` so it can be stored next to a checkpoint and the model rebuilt from it
(:meth:`SegMaST.from_config`).

Registered models: ``segmast`` (the generic factory, keyword arguments are config fields), ``segmast_ms``
(~9M parameters, FLAIR + T2 input) and ``segmast_glioma`` (~16M parameters, 4 modalities).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import trunc_normal_

from longiseg.networks.blocks.encoder import HierarchicalEncoder
from longiseg.networks.blocks.heads import TimepointHeads
from longiseg.networks.blocks.mast import FUSIONS, MaSTMixer
from longiseg.networks.blocks.mlp_decoder import AllMLPDecoder
from longiseg.networks.blocks.st_block import STBlock
from longiseg.networks.inputs import check_model_input
from longiseg.networks.output import LongitudinalOutput
from longiseg.registry import register_model
from longiseg.ssm import Mamba
from longiseg.utils.config import ConfigBase
from longiseg.utils.validation import check_positive_int, check_probability, check_timepoints

__all__ = [
    "LongitudinalSegFormerLike",
    "SEGMAST_PRESETS",
    "SegMaST",
    "SegMaSTConfig",
    "init_segformer_weights",
    "segmast",
    "segmast_glioma",
    "segmast_ms",
]


def init_segformer_weights(module: nn.Module, skip: tuple[type[nn.Module], ...] = ()) -> None:
    """Initialise like SegFormer/timm, in place.

    ``Linear``: truncated normal (std 0.02), zero bias; ``LayerNorm``/``BatchNorm``: weight 1, bias 0;
    convolutions: normal with std ``sqrt(2 / fan_out)`` (fan-out = ``k^d * out / groups``) and a small random
    bias (std 0.02) instead of SegFormer's zero bias.

    The bias matters for medical images: after z-score normalisation the background is exactly zero, so a
    zero-bias patch embedding maps it to all-zero tokens, every LayerNorm then sees a constant vector and
    multiplies the gradient by ``1 / sqrt(eps)``; through a few blocks the gradients reach 1e18. A random
    bias makes background tokens non-degenerate (tested in ``tests/test_segmast.py``).
    Submodules that are instances of a type in ``skip`` (e.g. Mamba, which has its own SSM-specific
    init) are left untouched, together with everything inside them.
    """
    skipped: set[int] = set()
    for mod in module.modules():
        if id(mod) in skipped:
            continue
        if skip and isinstance(mod, skip):
            skipped.update(id(m) for m in mod.modules())
            continue
        if isinstance(mod, nn.Linear):
            trunc_normal_(mod.weight, std=0.02)
            if mod.bias is not None:
                nn.init.zeros_(mod.bias)
        elif isinstance(mod, (nn.LayerNorm, nn.BatchNorm2d, nn.BatchNorm3d)):
            if mod.weight is not None:
                nn.init.ones_(mod.weight)
            if mod.bias is not None:
                nn.init.zeros_(mod.bias)
        elif isinstance(mod, (nn.Conv1d, nn.Conv2d, nn.Conv3d)):
            fan_out = math.prod(mod.kernel_size) * mod.out_channels // mod.groups
            nn.init.normal_(mod.weight, 0.0, math.sqrt(2.0 / fan_out))
            if mod.bias is not None:
                nn.init.normal_(mod.bias, 0.0, 0.02)


class LongitudinalSegFormerLike(nn.Module):
    """Encoder -> all-MLP decoder -> timepoint heads, with input checks and pad/crop to the encoder stride.

    Shared by SegMaST and the 2.5D SegFormer baseline: only the encoder blocks differ.

    Args:
        encoder: maps ``(B, T, C, H, W)`` to four ``(B*T, C_i, h_i, w_i)`` maps.
        decoder: maps those maps and ``T`` to ``(B, T, E, H/4, W/4)``.
        heads: maps ``(B, T, E, H/4, W/4)`` and an output size to a :class:`LongitudinalOutput`.
        in_channels: image channels ``C`` (checked on input).
        num_timepoints: if given, inputs must have exactly this ``T``; ``None`` accepts any ``T >= 2``.
        pad_multiple: inputs whose ``H``/``W`` are not multiples of this are zero-padded at the bottom/right
            and the logits cropped back, so any size works.
        instance_norm_bottleneck: the encoder instance-normalises its deepest stage (SegMaST with Difference
            Weighting), which then needs 2 tokens per timepoint: ``H`` or ``W`` above ``pad_multiple``.

    Shapes:
        input ``(B, T, C, H, W)`` with ``B >= 1``, checked by
        :func:`~longiseg.networks.inputs.check_model_input`; output ``LongitudinalOutput(baseline (B, K, H, W),
        progression (B, T-1, K, H, W))`` (logits).
    """

    def __init__(
        self,
        encoder: nn.Module,
        decoder: nn.Module,
        heads: nn.Module,
        in_channels: int,
        num_timepoints: int | None = None,
        pad_multiple: int = 32,
        instance_norm_bottleneck: bool = False,
    ) -> None:
        super().__init__()
        self.encoder = encoder
        self.decoder = decoder
        self.heads = heads
        self.in_channels = check_positive_int("in_channels", in_channels)
        self.num_timepoints = (
            None if num_timepoints is None else check_timepoints("num_timepoints", num_timepoints)
        )
        self.pad_multiple = check_positive_int("pad_multiple", pad_multiple)
        self.instance_norm_bottleneck = bool(instance_norm_bottleneck)

    def forward(self, x: torch.Tensor) -> LongitudinalOutput:
        """Segment a longitudinal stack ``(B, T, C, H, W)``; returns baseline and progression logits."""
        check_model_input(x, 2, self.in_channels, num_timepoints=self.num_timepoints, downsampling=self.pad_multiple,
                          pads=True, instance_norm_bottleneck=self.instance_norm_bottleneck)
        h, w = x.shape[-2:]
        m = self.pad_multiple
        pad_h, pad_w = (-h) % m, (-w) % m
        if pad_h or pad_w:
            x = F.pad(x, (0, pad_w, 0, pad_h))
        feats = self.encoder(x)
        decoded = self.decoder(feats, x.shape[1])
        out = self.heads(decoded, output_size=x.shape[-2:])
        if pad_h or pad_w:
            out = out.map(lambda y: y[..., :h, :w])
        return out


@dataclass(frozen=True)
class SegMaSTConfig(ConfigBase):
    """Hyper-parameters of :class:`SegMaST` (frozen plain data: print it, save it, rebuild from it).

    Attributes:
        in_channels: image channels per timepoint (modalities), e.g. 2 for FLAIR + T2.
        out_channels: logits per head ``K`` (1 for binary baseline and progression masks).
        num_timepoints: fixed ``T`` to enforce, or ``None`` for any ``T >= 2`` at run time. Required when
            ``shared_progression_head`` is ``False``.
        widths: channels of the four encoder stages.
        depths: ST blocks per stage (the paper's ``M = 4``).
        mlp_ratio: Mix-FFN expansion.
        decoder_dim: common width ``E`` of the all-MLP decoder.
        decoder_dropout: dropout on the fused decoder features.
        drop_path_rate: stochastic depth of the deepest block (linear schedule from 0).
        d_state, d_conv, expand: Mamba state size, conv width and inner expansion.
        share_mamba: one Mamba for both orderings instead of one each (default: separate, as in the paper).
        bidirectional: add reverse scans (same weights) to both orderings (default off, as in the paper).
        fusion: how the two scans are fused: ``"sum"`` (default), ``"mean"`` or ``"linear"``.
        difference_weighting: Difference Weighting of follow-ups before every MaST mixer (ablation, off).
        shared_progression_head: one progression 1x1 conv for all follow-ups (default) or one each.
        mamba_backend: selective-scan backend of every Mamba (``None``: environment variable / auto;
            ``"reference"``, ``"chunked"``, ``"cuda"``). Not part of the weights: a state_dict loads across
            backends.
    """

    in_channels: int = 2
    out_channels: int = 1
    num_timepoints: int | None = None
    widths: tuple[int, ...] = (32, 64, 160, 256)
    depths: tuple[int, ...] = (4, 4, 4, 4)
    mlp_ratio: float = 4.0
    decoder_dim: int = 256
    decoder_dropout: float = 0.1
    drop_path_rate: float = 0.1
    d_state: int = 16
    d_conv: int = 4
    expand: int = 2
    share_mamba: bool = False
    bidirectional: bool = False
    fusion: str = "sum"
    difference_weighting: bool = False
    shared_progression_head: bool = True
    mamba_backend: str | None = None

    def __post_init__(self) -> None:
        for name in ("widths", "depths"):
            if not isinstance(getattr(self, name), (tuple, list)):
                raise TypeError(f"{name} must be a tuple/list of 4 ints, got {getattr(self, name)!r}")
        # frozen dataclass: normalise list inputs (e.g. from JSON) to tuples
        object.__setattr__(self, "widths", tuple(self.widths))
        object.__setattr__(self, "depths", tuple(self.depths))
        check_positive_int("in_channels", self.in_channels)
        check_positive_int("out_channels", self.out_channels)
        if self.num_timepoints is not None:
            check_timepoints("num_timepoints", self.num_timepoints)
        if len(self.widths) != 4 or len(self.depths) != 4:
            raise ValueError(f"widths and depths need 4 entries each, got {self.widths} and {self.depths}")
        for i, (w, d) in enumerate(zip(self.widths, self.depths)):
            check_positive_int(f"widths[{i}]", w)
            check_positive_int(f"depths[{i}]", d, minimum=0)
        if not self.mlp_ratio > 0:
            raise ValueError(f"mlp_ratio must be > 0, got {self.mlp_ratio}")
        check_positive_int("decoder_dim", self.decoder_dim)
        check_probability("decoder_dropout", self.decoder_dropout)
        check_probability("drop_path_rate", self.drop_path_rate)
        check_positive_int("d_state", self.d_state)
        check_positive_int("d_conv", self.d_conv)
        check_positive_int("expand", self.expand)
        if self.fusion not in FUSIONS:
            raise ValueError(f"fusion must be one of {FUSIONS}, got {self.fusion!r}")
        if not self.shared_progression_head and self.num_timepoints is None:
            raise ValueError("num_timepoints is required when shared_progression_head=False")

    def replace(self, **changes: Any) -> SegMaSTConfig:
        """A copy with some fields changed (converted and validated again, see
        :meth:`~longiseg.utils.config.ConfigBase.with_overrides`)."""
        return self.with_overrides(**changes)


SEGMAST_PRESETS: dict[str, SegMaSTConfig] = {
    # ~9.3M parameters: the paper's MS setting (FLAIR + T2), MiT-B0-like widths with M = 4 blocks/stage.
    "segmast_ms": SegMaSTConfig(in_channels=2, widths=(32, 64, 160, 256)),
    # ~16.4M parameters: the paper's glioma setting (4 modalities).
    "segmast_glioma": SegMaSTConfig(in_channels=4, widths=(64, 128, 224, 320)),
}
"""Named configurations (copy with :meth:`SegMaSTConfig.replace` before changing them)."""


class SegMaST(LongitudinalSegFormerLike):
    """SegMaST: hierarchical encoder of ST blocks with MaST mixers, all-MLP decoder, timepoint heads.

    Args:
        config: the hyper-parameters (default :class:`SegMaSTConfig()`).

    Shapes:
        input ``(B, T, C, H, W)`` with ``T >= 2`` (any ``H, W``: padded to a multiple of 32 and cropped
        back); output ``LongitudinalOutput(baseline (B, K, H, W), progression (B, T-1, K, H, W))`` logits.

    Example:
        >>> model = SegMaST(SegMaSTConfig(widths=(8, 16, 16, 32), depths=(1, 1, 1, 1), decoder_dim=16))
        >>> out = model(torch.randn(1, 2, 2, 32, 32))
        >>> tuple(out.baseline.shape), tuple(out.progression.shape)
        ((1, 1, 32, 32), (1, 1, 1, 32, 32))
    """

    def __init__(self, config: SegMaSTConfig | None = None) -> None:
        config = SegMaSTConfig() if config is None else config
        if not isinstance(config, SegMaSTConfig):
            raise TypeError(f"config must be a SegMaSTConfig, got {type(config).__name__}")
        mamba_kwargs = {} if config.mamba_backend is None else {"backend": config.mamba_backend}

        def block_factory(stage: int, dim: int, drop_path: float) -> nn.Module:
            mixer = MaSTMixer(
                dim,
                d_state=config.d_state,
                d_conv=config.d_conv,
                expand=config.expand,
                share_mamba=config.share_mamba,
                bidirectional=config.bidirectional,
                fusion=config.fusion,
                difference_weighting=config.difference_weighting,
                mamba_kwargs=mamba_kwargs,
            )
            return STBlock(dim, mixer, mlp_ratio=config.mlp_ratio, drop_path=drop_path)

        encoder = HierarchicalEncoder(
            config.in_channels,
            block_factory,
            config.widths,
            config.depths,
            drop_path_rate=config.drop_path_rate,
        )
        decoder = AllMLPDecoder(config.widths, embed_dim=config.decoder_dim, dropout=config.decoder_dropout)
        heads = TimepointHeads(
            config.decoder_dim,
            config.out_channels,
            spatial_dims=2,
            shared_progression=config.shared_progression_head,
            num_followups=None if config.num_timepoints is None else config.num_timepoints - 1,
        )
        super().__init__(encoder, decoder, heads, config.in_channels, config.num_timepoints, pad_multiple=32,
                         instance_norm_bottleneck=config.difference_weighting)
        self.config = config
        init_segformer_weights(self, skip=(Mamba,))

    @classmethod
    def from_config(cls, config: SegMaSTConfig | Mapping[str, Any]) -> SegMaST:
        """Build from a :class:`SegMaSTConfig` or its :meth:`~SegMaSTConfig.to_dict` form."""
        if not isinstance(config, SegMaSTConfig):
            config = SegMaSTConfig.from_dict(config)
        return cls(config)

    def set_scan_backend(self, backend: str | None) -> None:
        """Switch the selective-scan backend of every Mamba (weights unchanged)."""
        for mod in self.modules():
            if isinstance(mod, Mamba):
                mod.backend = backend
        self.config = self.config.replace(mamba_backend=backend)


def _build(base: SegMaSTConfig, kwargs: dict[str, Any]) -> SegMaST:
    known = {f.name for f in dataclasses.fields(SegMaSTConfig)}
    unknown = sorted(set(kwargs) - known)
    if unknown:
        raise TypeError(f"unknown SegMaST argument(s) {unknown}; valid arguments: {sorted(known)}")
    return SegMaST(base.replace(**kwargs))


@register_model(dim="2.5D", tags=("mamba",))
def segmast(**kwargs: Any) -> SegMaST:
    """SegMaST (Mamba spatio-temporal SegFormer-like model); keyword arguments are SegMaSTConfig fields."""
    return _build(SegMaSTConfig(), kwargs)


@register_model(dim="2.5D", tags=("mamba",))
def segmast_ms(**kwargs: Any) -> SegMaST:
    """SegMaST for MS (~9M parameters, FLAIR + T2 input, widths 32-64-160-256, 4 ST blocks per stage)."""
    return _build(SEGMAST_PRESETS["segmast_ms"], kwargs)


@register_model(dim="2.5D", tags=("mamba",))
def segmast_glioma(**kwargs: Any) -> SegMaST:
    """SegMaST for glioma (~16M parameters, 4 modalities, widths 64-128-224-320, 4 ST blocks per stage)."""
    return _build(SEGMAST_PRESETS["segmast_glioma"], kwargs)
