"""2.5D SegFormer baseline: the attention counterpart of SegMaST.

Same pipeline as :class:`~longiseg.networks.nets.segmast.SegMaST` (shared code, not a copy): overlapped
patch embedding, four-stage :class:`~longiseg.networks.blocks.encoder.HierarchicalEncoder` of
:class:`~longiseg.networks.blocks.st_block.STBlock` (pre-norm mixer + Mix-FFN), all-MLP decoder and
:class:`~longiseg.networks.blocks.heads.TimepointHeads`; only the token mixer differs. SegFormer uses
:class:`~longiseg.networks.blocks.efficient_attention.GlobalSelfAttention`: MiT's spatial-reduction attention
(key/value reduction ratios 8/4/2/1) over the tokens of *all* timepoints, so every follow-up token sees the
baseline, as the MaST mixer's scans do. Without that the model is not longitudinal: the heads are 1x1
convolutions on each timepoint's own features, so a per-timepoint encoder gives the progression head no way to
tell a new lesion from an old one. ``attention="efficient"`` is that per-timepoint (cross-sectional) MiT
attention, kept as an ablation. Same parameters either way.

Registered: ``segformer`` (generic, MiT-b0 layout by default), ``segformer_b0`` / ``segformer_b1`` (MiT
widths, depths and heads), ``segformer_ms`` (~9M parameters) and ``segformer_glioma`` (~16M), sized like
the paper's 2.5D models.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch.nn as nn

from longiseg.networks.blocks.efficient_attention import EfficientSelfAttention, GlobalSelfAttention
from longiseg.networks.blocks.encoder import HierarchicalEncoder
from longiseg.networks.blocks.heads import TimepointHeads
from longiseg.networks.blocks.mlp_decoder import AllMLPDecoder
from longiseg.networks.blocks.segformer_like import LongitudinalSegFormerLike, init_segformer_weights
from longiseg.networks.blocks.st_block import STBlock
from longiseg.networks.presets import pop_any_timepoints
from longiseg.registry import register_model
from longiseg.utils.validation import (
    check_bool,
    check_int_sequence,
    check_keywords,
    check_probability,
    check_timepoints,
    keyword_parameters,
)

__all__ = ["SegFormer", "SEGFORMER_PRESETS", "ATTENTIONS"]

ATTENTIONS: dict[str, type[nn.Module]] = {"efficient": EfficientSelfAttention, "global": GlobalSelfAttention}

#: Encoder layouts: MiT-b0 / MiT-b1 (Xie et al., 2021) and the paper-sized 2.5D configurations.
SEGFORMER_PRESETS: dict[str, dict[str, Any]] = {
    "b0": {"widths": (32, 64, 160, 256), "depths": (2, 2, 2, 2), "num_heads": (1, 2, 5, 8), "decoder_dim": 256},
    "b1": {"widths": (64, 128, 320, 512), "depths": (2, 2, 2, 2), "num_heads": (1, 2, 5, 8), "decoder_dim": 256},
    "ms": {"widths": (48, 96, 192, 320), "depths": (3, 4, 4, 3), "num_heads": (1, 2, 6, 10),
           "decoder_dim": 256, "in_channels": 2},
    "glioma": {"widths": (64, 128, 320, 512), "depths": (3, 3, 3, 2), "num_heads": (1, 2, 5, 8),
               "decoder_dim": 256, "in_channels": 4},
}


class SegFormer(LongitudinalSegFormerLike):
    """Longitudinal 2.5D SegFormer: MiT encoder per timepoint, all-MLP decoder, baseline/progression heads.

    Args:
        in_channels: image channels per timepoint ``C``.
        out_channels: logits per head ``K``.
        num_timepoints: fixed ``T`` to enforce, or ``None`` for any ``T >= 2``.
        widths: channels of the four stages.
        depths: blocks per stage.
        num_heads: attention heads per stage (each must divide its width).
        sr_ratios: key/value spatial-reduction ratios per stage (MiT: 8, 4, 2, 1); a stage whose reduced grid
            would hold a single token attends to its unreduced tokens instead (see
            :class:`~longiseg.networks.blocks.efficient_attention.SpatialReductionAttention`).
        mlp_ratio: Mix-FFN expansion (a finite number > 0).
        qkv_bias: biases in the attention projections (a ``bool``: ``"false"`` is refused, not taken as true).
        attention: ``"global"`` (default: spatial-reduction attention over all ``T*H*W`` tokens) or
            ``"efficient"`` (per-timepoint MiT attention; the timepoints never meet, a cross-sectional ablation).
        attn_dropout: dropout on attention weights.
        decoder_dim: all-MLP decoder width ``E``.
        decoder_dropout: dropout on the fused decoder features.
        drop_path_rate: stochastic depth of the deepest block (linear from 0).
        shared_progression_head: one progression 1x1 conv for all follow-ups (default) or one each
            (then ``num_timepoints`` is required).

    Shapes:
        input ``(B, T, C, H, W)`` (any ``H, W``: padded to a multiple of 32 and cropped back); output
        ``LongitudinalOutput(baseline (B, K, H, W), progression (B, T-1, K, H, W))`` logits.
    """

    def __init__(
        self,
        in_channels: int = 2,
        out_channels: int = 1,
        num_timepoints: int | None = None,
        widths: Sequence[int] = (32, 64, 160, 256),
        depths: Sequence[int] = (2, 2, 2, 2),
        num_heads: Sequence[int] = (1, 2, 5, 8),
        sr_ratios: Sequence[int] = (8, 4, 2, 1),
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        attention: str = "global",
        attn_dropout: float = 0.0,
        decoder_dim: int = 256,
        decoder_dropout: float = 0.1,
        drop_path_rate: float = 0.1,
        shared_progression_head: bool = True,
    ) -> None:
        if num_timepoints is not None:
            num_timepoints = check_timepoints("num_timepoints", num_timepoints)
        widths = check_int_sequence("widths", widths, length=4, what="channels of the 4 stages")
        num_heads = check_int_sequence("num_heads", num_heads, length=4, what="attention heads of the 4 stages")
        sr_ratios = check_int_sequence("sr_ratios", sr_ratios, length=4, what="reduction ratios of the 4 stages")
        qkv_bias = check_bool("qkv_bias", qkv_bias)
        for name, rate in (("attn_dropout", attn_dropout), ("decoder_dropout", decoder_dropout),
                           ("drop_path_rate", drop_path_rate)):  # named here: the layers would name their own
            check_probability(name, rate)
        shared_progression_head = check_bool("shared_progression_head", shared_progression_head)
        for i, (w, nh) in enumerate(zip(widths, num_heads)):
            if w % nh:
                raise ValueError(f"widths[{i}]={w} must be divisible by num_heads[{i}]={nh}")
        if attention not in ATTENTIONS:
            raise ValueError(f"attention must be one of {sorted(ATTENTIONS)}, got {attention!r}")
        if not shared_progression_head and num_timepoints is None:
            raise ValueError("num_timepoints is required when shared_progression_head=False")
        mixer_cls = ATTENTIONS[attention]

        def block_factory(stage: int, dim: int, drop_path: float) -> nn.Module:
            mixer = mixer_cls(dim, num_heads[stage], sr_ratio=sr_ratios[stage], qkv_bias=qkv_bias,
                              attn_dropout=attn_dropout)
            return STBlock(dim, mixer, mlp_ratio=mlp_ratio, drop_path=drop_path)

        encoder = HierarchicalEncoder(in_channels, block_factory, widths, depths, drop_path_rate=drop_path_rate)
        decoder = AllMLPDecoder(widths, embed_dim=decoder_dim, dropout=decoder_dropout)
        heads = TimepointHeads(
            decoder_dim, out_channels, spatial_dims=2, shared_progression=shared_progression_head,
            num_followups=None if num_timepoints is None else num_timepoints - 1,
        )
        super().__init__(encoder, decoder, heads, in_channels, num_timepoints, pad_multiple=32)
        self.attention = attention
        init_segformer_weights(self)


def _build(preset: str | None, kwargs: dict[str, Any]) -> SegFormer:
    check_keywords("SegFormer", kwargs, keyword_parameters(SegFormer))
    settings = dict(SEGFORMER_PRESETS[preset]) if preset else {}
    settings.update(kwargs)
    if check_bool("shared_progression_head", settings.get("shared_progression_head", True)):
        pop_any_timepoints(settings)  # one head for every follow-up: any T >= 2 (the class may still fix it)
    return SegFormer(**settings)


@register_model(dim="2.5D", tags=("attention", "transformer"))
def segformer(**kwargs: Any) -> SegFormer:
    """2.5D SegFormer (MiT spatial-reduction attention over all timepoints, all-MLP decoder); kwargs are SegFormer args."""
    return _build(None, kwargs)


@register_model(dim="2.5D", tags=("attention", "transformer"))
def segformer_b0(**kwargs: Any) -> SegFormer:
    """2.5D SegFormer with the MiT-b0 encoder (widths 32-64-160-256, depths 2-2-2-2; ~3.7M parameters)."""
    return _build("b0", kwargs)


@register_model(dim="2.5D", tags=("attention", "transformer"))
def segformer_b1(**kwargs: Any) -> SegFormer:
    """2.5D SegFormer with the MiT-b1 encoder (widths 64-128-320-512, depths 2-2-2-2; ~13.7M parameters)."""
    return _build("b1", kwargs)


@register_model(dim="2.5D", tags=("attention", "transformer"))
def segformer_ms(**kwargs: Any) -> SegFormer:
    """2.5D SegFormer sized for MS like the paper's 2.5D models (~9M parameters; FLAIR + T2)."""
    return _build("ms", kwargs)


@register_model(dim="2.5D", tags=("attention", "transformer"))
def segformer_glioma(**kwargs: Any) -> SegFormer:
    """2.5D SegFormer sized for glioma like the paper's 2.5D models (~16M parameters; 4 modalities)."""
    return _build("glioma", kwargs)
