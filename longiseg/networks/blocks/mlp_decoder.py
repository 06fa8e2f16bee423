"""All-MLP decoder (SegFormer): unify channels per stage, upsample to H/4, concatenate, fuse.

For each of the four encoder stages a linear layer (a 1x1 convolution) maps ``C_i`` channels to a common
width ``E``; the maps are upsampled bilinearly to the resolution of the first stage (``H/4``),
concatenated (``4E`` channels) and fused back to ``E`` channels by a 1x1 convolution + BatchNorm + ReLU.
All timepoints are decoded by the same weights (folded into the batch); the result is reshaped to
``(B, T, E, H/4, W/4)`` so the heads can pick timepoints.

In training mode BatchNorm subtracts each channel's batch mean, so the projection biases (and whatever adds the
same vector to every token of a stage, such as the last encoder stage's LayerNorm bias) have zero gradient
there; they are kept for SegFormer's layout and only shift BatchNorm's running mean.

**Computation.** Projection, upsampling and the fusing convolution are all linear, and a 1x1 convolution commutes
with bilinear upsampling (which mixes pixels, not channels, with weights summing to one). So the forward pass
folds each stage's projection into its block of the fusing weights (``M_i = W_fuse,i P_i``, an ``E x C_i``
matrix), applies it at the stage's own resolution, upsamples the ``E``-channel result and sums:

    fuse(cat_i up(P_i f_i)) = sum_i up(M_i f_i + W_fuse,i b_i)

This is the same function with the same parameters (``state_dict`` unchanged; tested against the concatenating
form in float64) at a fraction of the cost: the ``4E -> E`` convolution at ``H/4`` was the most expensive
layer of SegMaST/SegFormer inference on a CPU (about a third of the forward time at 128x128).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from longiseg.utils.validation import (
    check_int_sequence,
    check_positive_int,
    check_probability,
    check_shape,
    check_timepoints,
    checks_sizes,
)

__all__ = ["AllMLPDecoder"]


class AllMLPDecoder(nn.Module):
    """SegFormer's lightweight decoder on per-timepoint multi-scale features.

    Args:
        in_dims: channels ``C_1..C_n`` of the encoder stages (finest first).
        embed_dim: common width ``E``.
        dropout: dropout on the fused features (SegFormer uses 0.1).

    Shapes:
        input: sequence of ``(B*T, C_i, h_i, w_i)`` maps (finest first) and ``num_timepoints = T``;
        output ``(B, T, E, h_1, w_1)``.
    """

    def __init__(self, in_dims: Sequence[int], embed_dim: int = 256, dropout: float = 0.1) -> None:
        super().__init__()
        in_dims = check_int_sequence("in_dims", in_dims, what="channels per stage")
        if not in_dims:
            raise ValueError("in_dims must list at least one stage width")
        check_positive_int("embed_dim", embed_dim)
        check_probability("dropout", dropout)
        self.in_dims = in_dims
        self.embed_dim = embed_dim
        self.proj = nn.ModuleList(nn.Conv2d(d, embed_dim, 1) for d in in_dims)
        self.fuse = nn.Sequential(
            nn.Conv2d(len(in_dims) * embed_dim, embed_dim, 1, bias=False),
            nn.BatchNorm2d(embed_dim),
            nn.ReLU(inplace=True),
        )
        self.drop = nn.Dropout2d(dropout)

    def _check_inputs(self, features: Sequence[torch.Tensor], num_timepoints: int) -> None:
        """Refuse features that are not one ``(B*T, C_i, h_i, w_i)`` map per stage, or a bad ``num_timepoints``."""
        sizes = checks_sizes()  # False while torch.jit.trace records: sizes are traced tensors
        if sizes:
            check_timepoints("num_timepoints", num_timepoints, minimum=1)
        if len(features) != len(self.in_dims):
            raise ValueError(
                f"features must hold {len(self.in_dims)} maps (one per stage), got {len(features)}"
            )
        for i, (f, d) in enumerate(zip(features, self.in_dims)):
            check_shape(f"features[{i}]", f, "(B*T, C, h, w)", floating=True, C=d)
        n = features[0].shape[0]
        if sizes and n % num_timepoints:
            raise ValueError(f"features batch {n} is not a multiple of num_timepoints={num_timepoints}")

    def forward(self, features: Sequence[torch.Tensor], num_timepoints: int) -> torch.Tensor:
        """Decode ``[(B*T, C_i, h_i, w_i), ...]`` into ``(B, T, E, h_1, w_1)``."""
        self._check_inputs(features, num_timepoints)
        sizes = checks_sizes()  # False while torch.jit.trace records: sizes are traced tensors
        n, _, h, w = features[0].shape
        e = self.embed_dim
        fuse_w = self.fuse[0].weight[:, :, 0, 0]  # (E, n*E); block j multiplies the (n-1-j)-th stage (cat is reversed)
        total = None
        for i, (f, proj) in enumerate(zip(features, self.proj)):
            j = len(features) - 1 - i
            w_i = fuse_w[:, j * e : (j + 1) * e]  # (E, E)
            weight = (w_i @ proj.weight[:, :, 0, 0])[:, :, None, None]  # (E, C_i, 1, 1)
            bias = None if proj.bias is None else w_i @ proj.bias
            # channels-last throughout (the encoder's tokens already are): PyTorch's CPU bilinear upsampling is
            # about ten times faster in that layout, and mixing layouts costs a conversion per addition
            y = F.conv2d(f.contiguous(memory_format=torch.channels_last), weight, bias)
            if i and (not sizes or y.shape[-2:] != (h, w)):  # (traced sizes: resized, the identity if equal)
                y = F.interpolate(y, size=(h, w), mode="bilinear", align_corners=False)
            total = y if total is None else total + y
        fused = self.drop(self.fuse[2](self.fuse[1](total)))
        return fused.reshape(n // num_timepoints, num_timepoints, e, h, w)

    def forward_concat(self, features: Sequence[torch.Tensor], num_timepoints: int) -> torch.Tensor:
        """The textbook form (project, upsample, concatenate, fuse); same function as :meth:`forward`, slower.

        Kept as the reference that :meth:`forward` is tested against. Shapes as :meth:`forward`.
        """
        self._check_inputs(features, num_timepoints)
        n, _, h, w = features[0].shape
        maps = []
        for f, proj in zip(features, self.proj):
            y = proj(f)
            if y.shape[-2:] != (h, w):
                y = F.interpolate(y, size=(h, w), mode="bilinear", align_corners=False)
            maps.append(y)
        fused = self.drop(self.fuse(torch.cat(maps[::-1], dim=1)))
        return fused.reshape(n // num_timepoints, num_timepoints, self.embed_dim, h, w)
