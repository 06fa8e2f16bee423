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
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch.nn as nn

from longiseg.networks.blocks.encoder import HierarchicalEncoder
from longiseg.networks.blocks.heads import TimepointHeads
from longiseg.networks.blocks.mast import FUSIONS, MaSTMixer
from longiseg.networks.blocks.mlp_decoder import AllMLPDecoder
from longiseg.networks.blocks.segformer_like import LongitudinalSegFormerLike, init_segformer_weights
from longiseg.networks.blocks.st_block import STBlock
from longiseg.registry import register_model
from longiseg.spec import ModelSpec
from longiseg.ssm import Mamba
from longiseg.ssm.selective_scan import check_backend
from longiseg.utils.config import ConfigBase
from longiseg.utils.validation import (
    check_int_sequence,
    check_keywords,
    check_positive_float,
    check_positive_int,
    check_probability,
    check_timepoints,
)

__all__ = [
    "SEGMAST_PRESETS",
    "SegMaST",
    "SegMaSTConfig",
    "segmast",
    "segmast_glioma",
    "segmast_ms",
]


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
        mamba_backend: selective-scan backend of every Mamba (``None``: environment variable / auto; one of
            :data:`longiseg.ssm.BACKENDS`, e.g. ``"reference"``, ``"chunked"``, ``"cuda"``). Not part of the
            weights: a state_dict loads across backends.

    Built directly or with :meth:`from_dict`, values are converted to the field types the same way
    (``bidirectional="false"`` is ``False``); a value that cannot be raises
    :class:`~longiseg.utils.config.ConfigError` naming the field, an out-of-range one ``ValueError``.
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
        # A config built directly is converted as from_dict converts (the string "false" becomes False, a list a
        # tuple; a value that is not of its field's type raises ConfigError naming the field), then checked.
        self.coerce_fields()
        check_int_sequence("widths", self.widths, length=4, what="channels of the 4 stages")
        check_int_sequence("depths", self.depths, minimum=0, length=4, what="blocks of the 4 stages")
        for name in ("in_channels", "out_channels", "decoder_dim", "d_state", "d_conv", "expand"):
            check_positive_int(name, getattr(self, name))
        if self.num_timepoints is not None:
            check_timepoints("num_timepoints", self.num_timepoints)
        check_positive_float("mlp_ratio", self.mlp_ratio)
        check_probability("decoder_dropout", self.decoder_dropout)
        check_probability("drop_path_rate", self.drop_path_rate)
        check_backend("mamba_backend", self.mamba_backend)
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
        """Switch the selective-scan backend of every Mamba (weights unchanged).

        The model's spec, when it has one (:func:`longiseg.build_model`), records it too
        (``model.spec.kwargs["mamba_backend"]``), so that ``build_model(spec.name, **spec.kwargs)`` builds the
        model as it now runs. A checkpoint keeps the entry but :func:`longiseg.load_model` leaves it out: the
        machine that loads the model chooses its own backend.

        Raises:
            ValueError: ``backend`` is not ``None`` or one of :data:`longiseg.ssm.BACKENDS` (checked as
                ``SegMaSTConfig(mamba_backend=...)`` checks it, before anything changes).
        """
        config = self.config.replace(mamba_backend=backend)
        for mod in self.modules():
            if isinstance(mod, Mamba):
                mod.backend = config.mamba_backend
        self.config = config
        spec = getattr(self, "spec", None)
        if isinstance(spec, ModelSpec):
            self.spec = spec.replace(kwargs={**spec.kwargs, "mamba_backend": backend})


def _build(base: SegMaSTConfig, kwargs: dict[str, Any]) -> SegMaST:
    check_keywords("SegMaST", kwargs, [f.name for f in dataclasses.fields(SegMaSTConfig)])
    config = base.replace(**kwargs)  # checks num_timepoints too
    if config.shared_progression_head:  # one head for every follow-up: any T >= 2, as for the other shared models
        config = config.replace(num_timepoints=None)  # (see presets.pop_any_timepoints; SegMaSTConfig may fix T)
    return SegMaST(config)


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
