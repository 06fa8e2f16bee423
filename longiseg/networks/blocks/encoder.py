"""Four-stage hierarchical encoder (SegFormer/MiT layout), generic over its blocks.

Stage ``i`` (``i = 0..3``) tokenises its input with an :class:`OverlapPatchEmbed` (7x7 stride 4 for the
first stage, 3x3 stride 2 afterwards), runs ``depths[i]`` blocks on the channel-last token grid
``(B, T, h_i, w_i, C_i)`` and closes with a LayerNorm, giving features at ``H/4, H/8, H/16, H/32``.
Patch embeddings are shared across timepoints (``T`` is folded into the batch); the blocks see all
timepoints at once, so a spatio-temporal mixer can relate them.

The blocks come from ``block_factory(stage, dim, drop_path)``: SegMaST passes ST blocks with a MaST
mixer, a SegFormer passes blocks with per-timepoint efficient self-attention. Stochastic depth rises
linearly from 0 to ``drop_path_rate`` over all blocks of all stages.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn as nn

from longiseg.networks.blocks.patch_embed import OverlapPatchEmbed
from longiseg.networks.inputs import check_model_input, parameter_device, parameter_dtype
from longiseg.utils.validation import (
    check_callable,
    check_int_sequence,
    check_positive_int,
    check_probability,
    check_sequence,
    check_timepoints,
    checks_sizes,
)

__all__ = ["BlockFactory", "EncoderStage", "HierarchicalEncoder"]

BlockFactory = Callable[[int, int, float], nn.Module]
"""``block_factory(stage, dim, drop_path) -> nn.Module`` mapping ``(B, T, h, w, dim)`` to the same shape."""


class EncoderStage(nn.Module):
    """One encoder stage: patch embedding/merging, blocks, LayerNorm.

    Args:
        in_channels: channels of the stage input.
        dim: stage width ``C_i``.
        blocks: the stage's blocks, each mapping ``(B, T, h, w, C_i)`` to the same shape.
        kernel_size: patch-embedding kernel (7 stem, 3 merging).
        stride: patch-embedding stride (4 stem, 2 merging).

    Shapes:
        input ``(B*T, C_in, H, W)`` plus ``num_timepoints``; output ``(B*T, C_i, ceil(H/s), ceil(W/s))``.

    Raises:
        TypeError: ``dim`` is not an int or ``blocks`` is not a sequence of ``nn.Module``.
        ValueError: ``dim`` is below 1 (and see :class:`OverlapPatchEmbed` for the other arguments).
    """

    def __init__(
        self, in_channels: int, dim: int, blocks: Sequence[nn.Module], kernel_size: int, stride: int
    ) -> None:
        super().__init__()
        check_positive_int("dim", dim)  # before OverlapPatchEmbed, which would call it embed_dim
        check_sequence("blocks", list(blocks) if isinstance(blocks, nn.ModuleList) else blocks, nn.Module,
                       "an nn.Module")
        self.patch_embed = OverlapPatchEmbed(in_channels, dim, kernel_size=kernel_size, stride=stride)
        self.blocks = nn.ModuleList(blocks)
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor, num_timepoints: int) -> torch.Tensor:
        """``(B*T, C_in, H, W) -> (B*T, C_i, h, w)``."""
        if checks_sizes():  # a traced T (torch.jit.trace) is a tensor: not checked
            check_timepoints("num_timepoints", num_timepoints, minimum=1)
        tokens = self.patch_embed(x)
        n, h, w, c = tokens.shape
        if checks_sizes() and n % num_timepoints:
            raise ValueError(f"x batch {n} is not a multiple of num_timepoints={num_timepoints}")
        tokens = tokens.reshape(n // num_timepoints, num_timepoints, h, w, c)
        for block in self.blocks:
            tokens = block(tokens)
        return self.norm(tokens).reshape(n, h, w, c).permute(0, 3, 1, 2).contiguous()


class HierarchicalEncoder(nn.Module):
    """Four-stage encoder producing multi-scale features for every timepoint.

    Args:
        in_channels: image channels ``C`` (modalities).
        block_factory: ``(stage, dim, drop_path) -> nn.Module`` building one block of a stage.
        widths: channels ``C_1..C_4`` of the four stages.
        depths: number of blocks per stage (the paper uses ``M = 4``).
        drop_path_rate: stochastic depth of the last block (linear from 0).

    Shapes:
        input ``(B, T, C, H, W)``; output: list of four ``(B*T, C_i, H/2^(i+2), W/2^(i+2))`` tensors (sizes
        rounded up when ``H, W`` are not multiples of 32).
    """

    def __init__(
        self,
        in_channels: int,
        block_factory: BlockFactory,
        widths: Sequence[int] = (32, 64, 160, 256),
        depths: Sequence[int] = (4, 4, 4, 4),
        drop_path_rate: float = 0.0,
    ) -> None:
        super().__init__()
        check_positive_int("in_channels", in_channels)
        widths = check_int_sequence("widths", widths, length=4, what="channels of the 4 stages")
        depths = check_int_sequence("depths", depths, minimum=0, length=4, what="blocks of the 4 stages")
        check_callable("block_factory", block_factory)
        check_probability("drop_path_rate", drop_path_rate)
        self.in_channels = in_channels
        self.widths = widths
        self.depths = depths
        total = sum(depths)
        # on the CPU: under `with torch.device("meta")` (building a model without memory) a default-device
        # linspace has no values to read
        rates = torch.linspace(0, drop_path_rate, total, device="cpu").tolist() if total else []
        stages, start, prev = [], 0, in_channels
        for i, (w, d) in enumerate(zip(widths, depths)):
            blocks = [block_factory(i, w, rates[start + j]) for j in range(d)]
            kernel, stride = (7, 4) if i == 0 else (3, 2)
            stages.append(EncoderStage(prev, w, blocks, kernel_size=kernel, stride=stride))
            start, prev = start + d, w
        self.stages = nn.ModuleList(stages)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Encode ``(B, T, C, H, W)`` into four ``(B*T, C_i, h_i, w_i)`` feature maps."""
        check_model_input(x, 2, self.in_channels, min_timepoints=1, dtype=parameter_dtype(self),
                          device=parameter_device(self))
        b, t, c, h, w = x.shape
        feats, y = [], x.reshape(b * t, c, h, w)
        for stage in self.stages:
            y = stage(y, t)
            feats.append(y)
        return feats
