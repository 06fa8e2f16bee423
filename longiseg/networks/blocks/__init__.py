"""Reusable network blocks (MaST, Difference Weighting, patch embedding, decoders, heads)."""

from longiseg.networks.blocks.encoder import EncoderStage, HierarchicalEncoder
from longiseg.networks.blocks.heads import FusedDualHead, TimepointHeads
from longiseg.networks.blocks.mast import (
    MaSTMixer,
    spatial_first,
    spatial_first_inverse,
    temporal_first,
    temporal_first_inverse,
)
from longiseg.networks.blocks.mix_ffn import MixFFN
from longiseg.networks.blocks.mlp_decoder import AllMLPDecoder
from longiseg.networks.blocks.patch_embed import OverlapPatchEmbed
from longiseg.networks.blocks.st_block import STBlock

__all__ = [
    "AllMLPDecoder",
    "EncoderStage",
    "FusedDualHead",
    "HierarchicalEncoder",
    "MaSTMixer",
    "MixFFN",
    "OverlapPatchEmbed",
    "STBlock",
    "TimepointHeads",
    "spatial_first",
    "spatial_first_inverse",
    "temporal_first",
    "temporal_first_inverse",
]

# Baseline blocks: Difference Weighting and the self-attention mixers of the SegFormer baseline.
from longiseg.networks.blocks.difference_weighting import DifferenceWeighting  # noqa: E402
from longiseg.networks.blocks.efficient_attention import (  # noqa: E402
    EfficientSelfAttention,
    GlobalSelfAttention,
    SpatialReductionAttention,
)

__all__ += ["DifferenceWeighting", "EfficientSelfAttention", "GlobalSelfAttention", "SpatialReductionAttention"]

# The pipeline SegMaST and the SegFormer baseline share (base class and initialisation).
from longiseg.networks.blocks.segformer_like import LongitudinalSegFormerLike, init_segformer_weights  # noqa: E402

__all__ += ["LongitudinalSegFormerLike", "init_segformer_weights"]
