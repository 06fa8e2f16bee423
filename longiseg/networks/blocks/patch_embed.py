"""Overlapped patch embedding / merging (SegFormer's tokeniser), shared across timepoints.

A strided convolution whose kernel is larger than its stride, so neighbouring patches overlap and local
continuity is kept, followed by a LayerNorm over channels. The first stage uses a 7x7 kernel with stride 4
(``H -> H/4``); later stages "merge" patches with a 3x3 kernel and stride 2 (``H/2^(i+1) -> H/2^(i+2)``).
The same module is applied to every timepoint by folding ``T`` into the batch, so all timepoints are
tokenised with identical weights.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from longiseg.utils.validation import check_positive_int, check_shape

__all__ = ["OverlapPatchEmbed"]


class OverlapPatchEmbed(nn.Module):
    """Strided ``kernel_size x kernel_size`` convolution (padding ``kernel_size // 2``) + LayerNorm.

    Args:
        in_channels: input channels ``C_in``.
        embed_dim: output channels ``C``.
        kernel_size: convolution kernel (7 for the stem, 3 for merging); must be odd and ``> stride``.
        stride: downsampling factor (4 for the stem, 2 for merging).

    Shapes:
        input ``(N, C_in, H, W)`` (``N = B*T``: timepoints folded into the batch);
        output channel-last tokens ``(N, ceil(H/stride), ceil(W/stride), C)``.
    """

    def __init__(self, in_channels: int, embed_dim: int, kernel_size: int = 7, stride: int = 4) -> None:
        super().__init__()
        check_positive_int("in_channels", in_channels)
        check_positive_int("embed_dim", embed_dim)
        check_positive_int("kernel_size", kernel_size)
        check_positive_int("stride", stride)
        if kernel_size % 2 == 0 or kernel_size <= stride:
            raise ValueError(
                f"kernel_size must be odd and larger than stride for overlapping patches, "
                f"got kernel_size={kernel_size}, stride={stride}"
            )
        self.in_channels = in_channels
        self.embed_dim = embed_dim
        self.proj = nn.Conv2d(in_channels, embed_dim, kernel_size, stride=stride, padding=kernel_size // 2)
        self.norm = nn.LayerNorm(embed_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Tokenise ``(N, C_in, H, W)`` into normalised channel-last tokens ``(N, h, w, C)``."""
        check_shape("x", x, "(N, C_in, H, W)", floating=True, C_in=self.in_channels)
        return self.norm(self.proj(x).permute(0, 2, 3, 1))
