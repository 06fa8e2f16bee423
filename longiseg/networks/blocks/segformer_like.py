"""The SegFormer-like longitudinal model shared by SegMaST and the SegFormer baseline, and its initialisation.

:class:`LongitudinalSegFormerLike` is the pipeline both 2.5D transformers share (only their encoder blocks
differ)::

    (B, T, C, H, W) -> pad to a multiple of pad_multiple -> encoder -> decoder -> heads -> crop
      -> LongitudinalOutput(baseline (B, K, H, W), progression (B, T-1, K, H, W))

:func:`init_segformer_weights` initialises such a model like SegFormer/timm.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from longiseg.networks.inputs import SpatialSizeRule, check_model_input, parameter_device, parameter_dtype
from longiseg.networks.output import LongitudinalOutput
from longiseg.utils.validation import (
    check_bool,
    check_instance,
    check_positive_int,
    check_timepoints,
    checks_sizes,
)

__all__ = ["LongitudinalSegFormerLike", "init_segformer_weights"]


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
    check_instance("module", module, nn.Module, "an nn.Module")
    # timm imports torchvision (seconds): imported when a model is initialised, not with the package.
    from timm.layers import trunc_normal_

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
        self.encoder = check_instance("encoder", encoder, nn.Module, "an nn.Module")
        self.decoder = check_instance("decoder", decoder, nn.Module, "an nn.Module")
        self.heads = check_instance("heads", heads, nn.Module, "an nn.Module")
        self.in_channels = check_positive_int("in_channels", in_channels)
        self.num_timepoints = (
            None if num_timepoints is None else check_timepoints("num_timepoints", num_timepoints)
        )
        self.pad_multiple = check_positive_int("pad_multiple", pad_multiple)
        self.spatial_size_rule = SpatialSizeRule.of(2, self.pad_multiple, pads=True,
                                                    instance_norm_bottleneck=check_bool(
                                                        "instance_norm_bottleneck", instance_norm_bottleneck))

    def forward(self, x: torch.Tensor) -> LongitudinalOutput:
        """Segment a longitudinal stack ``(B, T, C, H, W)``; returns baseline and progression logits."""
        check_model_input(x, 2, self.in_channels, num_timepoints=self.num_timepoints,
                          size_rule=self.spatial_size_rule, dtype=parameter_dtype(self),
                          device=parameter_device(self))
        h, w = x.shape[-2:]
        m = self.pad_multiple
        pad_h, pad_w = (-h) % m, (-w) % m
        padded = not checks_sizes() or pad_h or pad_w  # traced sizes (torch.jit.trace): pad and crop, maybe by 0
        if padded:
            x = F.pad(x, (0, pad_w, 0, pad_h))
        feats = self.encoder(x)
        decoded = self.decoder(feats, x.shape[1])
        out = self.heads(decoded, output_size=x.shape[-2:])
        if padded:
            out = out.map(lambda y: y[..., :h, :w])
        return out.traceable()
