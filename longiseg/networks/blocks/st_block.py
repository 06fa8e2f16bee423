"""ST block: pre-norm residual token mixer + pre-norm residual Mix-FFN, with stochastic depth.

::

    x = x + DropPath(mixer(LayerNorm(x)))
    x = x + DropPath(MixFFN(LayerNorm(x)))

The mixer is pluggable: with :class:`~longiseg.networks.blocks.mast.MaSTMixer` this is SegMaST's
spatio-temporal block (the first LayerNorm is the MaST module's layer normalisation); with a
per-timepoint attention mixer it is a SegFormer block. Any ``nn.Module`` mapping ``(B, T, H, W, C)`` to
``(B, T, H, W, C)`` works.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from longiseg.networks.blocks.mix_ffn import MixFFN
from longiseg.utils.validation import (
    check_positive_float,
    check_positive_int,
    check_probability,
    check_shape,
)

__all__ = ["STBlock"]


class STBlock(nn.Module):
    """Pre-norm residual block around a pluggable token mixer and a Mix-FFN.

    Args:
        dim: token channels ``C``.
        mixer: module mapping normalised ``(B, T, H, W, C)`` tokens to ``(B, T, H, W, C)``.
        mlp_ratio: Mix-FFN hidden width as a multiple of ``dim`` (a finite number > 0).
        drop_path: stochastic-depth probability of both residual branches (timm ``DropPath``; a whole
            sample, all timepoints together, is dropped).
        ffn_dropout: dropout inside the Mix-FFN.

    Shapes:
        input ``(B, T, H, W, C)``; output: same shape.
    """

    def __init__(
        self,
        dim: int,
        mixer: nn.Module,
        mlp_ratio: float = 4.0,
        drop_path: float = 0.0,
        ffn_dropout: float = 0.0,
    ) -> None:
        super().__init__()
        check_positive_int("dim", dim)
        if not isinstance(mixer, nn.Module):
            raise TypeError(f"mixer must be an nn.Module, got {type(mixer).__name__}")
        mlp_ratio = check_positive_float("mlp_ratio", mlp_ratio)
        check_probability("drop_path", drop_path)
        check_probability("ffn_dropout", ffn_dropout)
        self.dim = dim
        self.norm1 = nn.LayerNorm(dim)
        self.mixer = mixer
        self.norm2 = nn.LayerNorm(dim)
        self.ffn = MixFFN(dim, hidden_dim=max(1, round(dim * mlp_ratio)), dropout=ffn_dropout)
        if drop_path > 0:
            # timm imports torchvision (seconds): imported when a model is built, not with the package.
            from timm.layers import DropPath

            self.drop_path: nn.Module = DropPath(drop_path)
        else:
            self.drop_path = nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Map ``(B, T, H, W, C)`` to ``(B, T, H, W, C)``."""
        check_shape("x", x, "(B, T, H, W, C)", floating=True, C=self.dim)
        x = x + self.drop_path(self.mixer(self.norm1(x)))
        return x + self.drop_path(self.ffn(self.norm2(x)))
