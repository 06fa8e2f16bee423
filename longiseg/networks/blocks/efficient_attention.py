"""Self-attention token mixers for the ST block: SegFormer's efficient attention and global attention.

Both map layer-normalised channel-last tokens ``(B, T, H, W, C)`` to the same shape (the
:class:`~longiseg.networks.blocks.st_block.STBlock` mixer interface) and run on
``torch.nn.functional.scaled_dot_product_attention`` (flash / memory-efficient kernels where available).

* :class:`EfficientSelfAttention` (SegFormer / MiT): attention *within each timepoint* (``T`` folded into
  the batch) over its ``H*W`` tokens. Keys and values come from a grid spatially reduced by a strided
  ``R x R`` convolution + LayerNorm (reduction ratio ``R``: 8/4/2/1 in the four MiT stages), so the cost
  is ``O((HW)^2 / R^2)`` instead of ``O((HW)^2)``.
* :class:`GlobalSelfAttention`: joint spatio-temporal attention of all ``T*H*W`` tokens of a sample
  (optionally with the same key/value reduction), the attention counterpart of the MaST mixer's scans: the
  default mixer of the SegFormer baseline (with MiT's reductions) and, without reduction, the quadratic-cost
  comparison of the Mamba-vs-attention benchmark.

**Small grids.** A grid is reduced only when its reduced grid ``(H // R) x (W // R)`` keeps at least two
tokens; otherwise its own ``H*W`` tokens are the keys (in the SegFormer/SegMaST encoders, which pad inputs to
a multiple of 32, such a grid is smaller than ``2R x 2R``, so full attention stays cheap). A single key would
give every query the attention weight 1: the output would be the same value vector for all tokens of the
timepoint and the query projection would have no effect and no gradient, in exact arithmetic (a 32x32 input
reduced the first three stages of the per-timepoint SegFormer to one key each). A timepoint
whose grid is a single token (``1 x 1``, the deepest stage at a 32x32 input) still has only itself to attend
to: there :class:`EfficientSelfAttention` is the value projection of the token (the query has no effect),
while :class:`GlobalSelfAttention` attends over the ``T >= 2`` tokens of all timepoints. At a 32x32 input the
first three MiT stages (grids 8x8, 4x4, 2x2 with ``R`` = 8, 4, 2) attend without reduction; their reduction's
parameters stay in the graph with a zero gradient (``+ 0 * sum``, exact), so that ``DistributedDataParallel``
(without ``find_unused_parameters``) sees every parameter used, as the loss does with an empty head (AdamW's
decoupled weight decay then reaches them too; the outputs at such sizes do not depend on them).
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from longiseg.utils.validation import (
    check_bool,
    check_positive_int,
    check_probability,
    check_shape,
)

__all__ = ["SpatialReductionAttention", "EfficientSelfAttention", "GlobalSelfAttention"]


class SpatialReductionAttention(nn.Module):
    """Multi-head attention whose keys/values come from a spatially reduced token grid (shared core).

    Subclasses decide which tokens attend to which (:class:`EfficientSelfAttention`,
    :class:`GlobalSelfAttention`); this class holds the projections and the two steps
    :meth:`reduce` and :meth:`attend`.

    Args:
        dim: token channels ``C``.
        num_heads: attention heads; must divide ``dim``.
        sr_ratio: key/value reduction ratio ``R`` (1: no reduction); a grid is reduced only when the reduced
            grid keeps at least two tokens (:meth:`reduces`), so any grid size works.
        qkv_bias: biases in the query and key/value projections.
        attn_dropout: dropout on the attention weights (training only).
        proj_dropout: dropout after the output projection.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int = 1,
        sr_ratio: int = 1,
        qkv_bias: bool = True,
        attn_dropout: float = 0.0,
        proj_dropout: float = 0.0,
    ) -> None:
        super().__init__()
        check_positive_int("dim", dim)
        check_positive_int("num_heads", num_heads)
        check_positive_int("sr_ratio", sr_ratio)
        check_probability("attn_dropout", attn_dropout)
        check_probability("proj_dropout", proj_dropout)
        qkv_bias = check_bool("qkv_bias", qkv_bias)
        if dim % num_heads:
            raise ValueError(f"dim ({dim}) must be divisible by num_heads ({num_heads})")
        self.dim = dim
        self.num_heads = num_heads
        self.sr_ratio = sr_ratio
        self.attn_dropout = attn_dropout
        self.q = nn.Linear(dim, dim, bias=qkv_bias)
        self.kv = nn.Linear(dim, 2 * dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_dropout)
        if sr_ratio > 1:
            self.sr = nn.Conv2d(dim, dim, kernel_size=sr_ratio, stride=sr_ratio)
            self.norm = nn.LayerNorm(dim)

    def _check(self, x: torch.Tensor) -> None:
        check_shape("x", x, "(B, T, H, W, C)", floating=True, C=self.dim)

    def reduces(self, h: int, w: int) -> bool:
        """Whether an ``h x w`` grid's keys/values are reduced: ``R > 1`` and ``(h // R) * (w // R) >= 2``."""
        r = self.sr_ratio
        return r > 1 and (h // r) * (w // r) >= 2

    def reduce(self, grid: torch.Tensor) -> torch.Tensor:
        """Key/value tokens of a grid ``(N, H, W, C)``: ``(N, (H // R) * (W // R), C)`` when :meth:`reduces`
        (trailing rows/columns beyond a multiple of ``R`` are dropped, as by the strided convolution), else the
        grid's own tokens ``(N, H * W, C)``."""
        if not self.reduces(grid.shape[1], grid.shape[2]):
            tokens = grid.flatten(1, 2)
            if self.sr_ratio > 1 and torch.is_grad_enabled():  # the reduction stays in the graph (see the module)
                tokens = tokens + 0.0 * sum(p.sum() for p in (*self.sr.parameters(), *self.norm.parameters()))
            return tokens
        reduced = self.sr(grid.permute(0, 3, 1, 2)).flatten(2).transpose(1, 2)
        return self.norm(reduced)

    def attend(self, queries: torch.Tensor, keys_values: torch.Tensor) -> torch.Tensor:
        """Multi-head attention of ``(N, L, C)`` query tokens over ``(N, L', C)`` key/value tokens -> ``(N, L, C)``."""
        n, length, c = queries.shape
        heads, head_dim = self.num_heads, c // self.num_heads
        q = self.q(queries).reshape(n, length, heads, head_dim).transpose(1, 2)
        k, v = self.kv(keys_values).reshape(n, -1, 2, heads, head_dim).permute(2, 0, 3, 1, 4).unbind(0)
        out = F.scaled_dot_product_attention(q, k, v, dropout_p=self.attn_dropout if self.training else 0.0)
        return self.proj_drop(self.proj(out.transpose(1, 2).reshape(n, length, c)))

    def extra_repr(self) -> str:
        return f"dim={self.dim}, num_heads={self.num_heads}, sr_ratio={self.sr_ratio}"


class EfficientSelfAttention(SpatialReductionAttention):
    """SegFormer's efficient self-attention, applied to each timepoint separately.

    Args: see :class:`SpatialReductionAttention`.

    Shapes:
        input ``(B, T, H, W, C)`` (layer-normalised tokens); output: same shape. Token ``(t, h, w)`` attends
        to the reduced tokens of timepoint ``t`` only; timepoints never mix (a cross-sectional ablation of the
        SegFormer baseline, which uses :class:`GlobalSelfAttention`).
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Map ``(B, T, H, W, C)`` to ``(B, T, H, W, C)``."""
        self._check(x)
        b, t, h, w, c = x.shape
        grid = x.reshape(b * t, h, w, c)
        out = self.attend(grid.reshape(b * t, h * w, c), self.reduce(grid))
        return out.reshape(b, t, h, w, c)


class GlobalSelfAttention(SpatialReductionAttention):
    """Joint spatio-temporal self-attention over all ``T*H*W`` tokens of each sample.

    Args: see :class:`SpatialReductionAttention` (``sr_ratio`` reduces every timepoint's key/value grid).

    Shapes:
        input ``(B, T, H, W, C)``; output: same shape. Every token attends to the (reduced) tokens of all
        timepoints, at ``O((T*H*W)^2 / R^2)`` cost.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Map ``(B, T, H, W, C)`` to ``(B, T, H, W, C)``."""
        self._check(x)
        b, t, h, w, c = x.shape
        keys_values = self.reduce(x.reshape(b * t, h, w, c)).reshape(b, -1, c)
        out = self.attend(x.reshape(b, t * h * w, c), keys_values)
        return out.reshape(b, t, h, w, c)
