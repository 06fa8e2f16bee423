"""Mix-FFN (SegFormer): ``Linear -> 3x3 depthwise conv -> GELU -> Linear``.

The depthwise convolution leaks local position information into the tokens, which is why SegFormer-style
encoders need no positional encoding.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from longiseg.utils.validation import check_positive_int, check_probability, check_shape

__all__ = ["MixFFN"]


class MixFFN(nn.Module):
    """Position-mixing feed-forward network on a channel-last token grid.

    Args:
        dim: token channels ``C``.
        hidden_dim: hidden channels (default ``4 * dim``).
        dropout: dropout after the activation and after the output projection.

    Shapes:
        input ``(*, H, W, C)`` (any leading dims, e.g. ``(B, T, H, W, C)``); output: same shape.
        The depthwise conv runs on each ``(H, W)`` slice independently, so timepoints never mix here.
    """

    def __init__(self, dim: int, hidden_dim: int | None = None, dropout: float = 0.0) -> None:
        super().__init__()
        check_positive_int("dim", dim)
        hidden_dim = 4 * dim if hidden_dim is None else check_positive_int("hidden_dim", hidden_dim)
        check_probability("dropout", dropout)
        self.dim = dim
        self.hidden_dim = hidden_dim
        self.fc1 = nn.Linear(dim, hidden_dim)
        self.dwconv = nn.Conv2d(hidden_dim, hidden_dim, 3, padding=1, groups=hidden_dim)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden_dim, dim)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Map ``(*, H, W, C)`` to ``(*, H, W, C)``."""
        check_shape("x", x, "(*, H, W, C)", floating=True, C=self.dim)
        lead, (h, w) = x.shape[:-3], x.shape[-3:-1]
        y = self.fc1(x).reshape(-1, h, w, self.hidden_dim).permute(0, 3, 1, 2)
        y = self.dwconv(y).permute(0, 2, 3, 1)
        y = self.drop(self.act(y))
        y = self.drop(self.fc2(y))
        return y.reshape(*lead, h, w, self.dim)
