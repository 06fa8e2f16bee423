"""MaST: the Mamba Spatio-Temporal mixer of SegMaST (Varma et al., MIDL 2026, section 2).

The mixer takes the (already layer-normalised, see :class:`~longiseg.networks.blocks.st_block.STBlock`)
features of ``T >= 2`` timepoints as a channel-last grid ``(B, T, H, W, C)`` and flattens them into two
complementary token sequences:

* **temporal-first** ``(B, T*H*W, C)``: all ``H*W`` tokens of ``t0`` (row-major), then all of ``t1``, ...
  Token ``(t, h, w)`` sits at index ``t*H*W + h*W + w``. The scan sees a whole image before moving on
  to the next timepoint.
* **spatial-first** ``(B, H*W*T, C)``: for each location (row-major) its ``T`` tokens side by side.
  Token ``(t, h, w)`` sits at index ``(h*W + w)*T + t``. Spatially corresponding tokens of different
  timepoints are neighbours in the scan.

Each sequence is scanned by a Mamba block, mapped back to ``(B, T, H, W, C)`` and the two results are
fused. ``T`` is read from the input at run time.

Options (defaults follow the paper):

* ``share_mamba=False``: one Mamba per ordering (the paper's two scans). ``True`` shares one Mamba
  (half the mixer parameters).
* ``bidirectional=False``: forward scans only (the paper). ``True`` adds, for each ordering, a reverse
  scan with the *same* Mamba weights (``Mamba.forward(..., reverse=True)``) summed with the forward scan,
  in the spirit of Vivim's forward/backward scans; no extra parameters.
* ``fusion="sum"``: the two maps are added. ``"mean"`` averages them; ``"linear"`` concatenates them
  along channels and projects ``2C -> C`` with a linear layer.
* ``difference_weighting=False``: ablation that weights every follow-up's features by their normalised
  difference to the baseline (:class:`~longiseg.networks.blocks.difference_weighting.DifferenceWeighting`,
  one block shared by all follow-ups) before the scans; the baseline features pass unchanged.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn

from longiseg.networks.blocks.difference_weighting import DifferenceWeighting
from longiseg.ssm import Mamba
from longiseg.utils.validation import (
    check_bool,
    check_ndim,
    check_positive_int,
    check_shape,
    check_tensor,
    check_timepoints,
    checks_sizes,
)

__all__ = [
    "FUSIONS",
    "MaSTMixer",
    "spatial_first",
    "spatial_first_inverse",
    "temporal_first",
    "temporal_first_inverse",
]

FUSIONS = ("sum", "mean", "linear")


def _check_grid(x: torch.Tensor) -> None:
    check_tensor("x", x)
    check_ndim("x", x, 5, "(B, T, H, W, C)")
    if checks_sizes() and 0 in x.shape:
        raise ValueError(f"x (B, T, H, W, C) must have no empty dim, got shape {tuple(x.shape)}")


def _check_sequence(seq: torch.Tensor, num_timepoints: int, height: int, width: int) -> None:
    check_tensor("seq", seq)
    check_ndim("seq", seq, 3, "(B, L, C)")
    if not checks_sizes():  # torch.jit.trace records: the sizes are traced tensors
        return
    check_positive_int("num_timepoints", num_timepoints)
    check_positive_int("height", height)
    check_positive_int("width", width)
    if seq.shape[1] != num_timepoints * height * width:
        raise ValueError(
            f"seq length must be num_timepoints*height*width = {num_timepoints}*{height}*{width} = "
            f"{num_timepoints * height * width}, got shape {tuple(seq.shape)}"
        )


def temporal_first(x: torch.Tensor) -> torch.Tensor:
    """Flatten ``(B, T, H, W, C)`` into the temporal-first sequence ``(B, T*H*W, C)``.

    All ``H*W`` tokens of timepoint 0 (row-major), then those of timepoint 1, and so on: token
    ``(t, h, w)`` lands at index ``t*H*W + h*W + w``.
    """
    _check_grid(x)
    b, t, h, w, c = x.shape
    return x.reshape(b, t * h * w, c)


def temporal_first_inverse(seq: torch.Tensor, num_timepoints: int, height: int, width: int) -> torch.Tensor:
    """Inverse of :func:`temporal_first`: ``(B, T*H*W, C) -> (B, T, H, W, C)``."""
    _check_sequence(seq, num_timepoints, height, width)
    return seq.reshape(seq.shape[0], num_timepoints, height, width, seq.shape[-1])


def spatial_first(x: torch.Tensor) -> torch.Tensor:
    """Flatten ``(B, T, H, W, C)`` into the spatial-first sequence ``(B, H*W*T, C)``.

    For each location (row-major) its ``T`` tokens side by side: token ``(t, h, w)`` lands at index
    ``(h*W + w)*T + t``.
    """
    _check_grid(x)
    b, t, h, w, c = x.shape
    return x.permute(0, 2, 3, 1, 4).reshape(b, h * w * t, c)


def spatial_first_inverse(seq: torch.Tensor, num_timepoints: int, height: int, width: int) -> torch.Tensor:
    """Inverse of :func:`spatial_first`: ``(B, H*W*T, C) -> (B, T, H, W, C)``."""
    _check_sequence(seq, num_timepoints, height, width)
    b, c = seq.shape[0], seq.shape[-1]
    return seq.reshape(b, height, width, num_timepoints, c).permute(0, 3, 1, 2, 4)


class MaSTMixer(nn.Module):
    """Two Mamba scans over the temporal-first and spatial-first orderings, mapped back and fused.

    Args:
        dim: token channels ``C``.
        d_state: Mamba state size.
        d_conv: Mamba local convolution width.
        expand: Mamba inner expansion factor.
        share_mamba: one Mamba for both orderings (``True``) or one per ordering (``False``, default).
        bidirectional: add a reverse scan per ordering (same weights), default ``False``.
        fusion: ``"sum"`` (default), ``"mean"`` or ``"linear"`` (concat + ``Linear(2C, C)``).
        difference_weighting: apply Difference Weighting to the follow-ups before the scans (default off).
        mamba_kwargs: extra keyword arguments for every :class:`longiseg.ssm.Mamba` (e.g. the scan backend).

    Shapes:
        input ``(B, T, H, W, C)`` with ``T >= 2`` (normalised features); output: same shape.
    """

    def __init__(
        self,
        dim: int,
        d_state: int = 16,
        d_conv: int = 4,
        expand: int = 2,
        share_mamba: bool = False,
        bidirectional: bool = False,
        fusion: str = "sum",
        difference_weighting: bool = False,
        mamba_kwargs: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        dim = check_positive_int("dim", dim)  # numpy integers become ints (Mamba checks d_state and d_conv)
        if fusion not in FUSIONS:
            raise ValueError(f"fusion must be one of {FUSIONS}, got {fusion!r}")
        self.dim = dim
        self.share_mamba = check_bool("share_mamba", share_mamba)
        self.bidirectional = check_bool("bidirectional", bidirectional)
        difference_weighting = check_bool("difference_weighting", difference_weighting)
        self.fusion = fusion
        kwargs = dict(mamba_kwargs or {})
        self.mamba_temporal = Mamba(dim, d_state=d_state, d_conv=d_conv, expand=expand, **kwargs)
        self.mamba_spatial = (
            None if self.share_mamba else Mamba(dim, d_state=d_state, d_conv=d_conv, expand=expand, **kwargs)
        )
        self.fuse = nn.Linear(2 * dim, dim) if fusion == "linear" else None
        self.difference_weighting = DifferenceWeighting(dim, spatial_dims=2) if difference_weighting else None

    def _scan(self, mamba: nn.Module, seq: torch.Tensor) -> torch.Tensor:
        out = mamba(seq)
        if self.bidirectional:
            out = out + mamba(seq, reverse=True)
        return out

    def _weight_followups(self, x: torch.Tensor) -> torch.Tensor:
        # x: (B, T, H, W, C). Every follow-up is weighted against the baseline t0 by one shared DW block.
        b, t, h, w, c = x.shape
        if checks_sizes() and h * w == 1:
            raise ValueError(
                "difference_weighting needs more than one token per timepoint (its instance norm normalises "
                f"over H*W), got H=W=1 in x {tuple(x.shape)}; with the 4-stage encoder the input must have "
                "H > 32 or W > 32"
            )
        base = x[:, :1]
        prior = base.expand(b, t - 1, h, w, c).reshape(b * (t - 1), h, w, c).permute(0, 3, 1, 2)
        current = x[:, 1:].reshape(b * (t - 1), h, w, c).permute(0, 3, 1, 2)
        weighted = self.difference_weighting(current, prior).permute(0, 2, 3, 1).reshape(b, t - 1, h, w, c)
        return torch.cat([base, weighted], dim=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Mix ``(B, T, H, W, C)`` features across space and time; returns ``(B, T, H, W, C)``."""
        _check_grid(x)
        check_shape("x", x, "(B, T, H, W, C)", floating=True, C=self.dim)
        b, t, h, w, c = x.shape
        if checks_sizes():
            check_timepoints("x.shape[1] (timepoints T)", t)
        if self.difference_weighting is not None:
            x = self._weight_followups(x)
        mamba_spatial = self.mamba_temporal if self.mamba_spatial is None else self.mamba_spatial
        y_temporal = temporal_first_inverse(self._scan(self.mamba_temporal, temporal_first(x)), t, h, w)
        y_spatial = spatial_first_inverse(self._scan(mamba_spatial, spatial_first(x)), t, h, w)
        if self.fusion == "sum":
            return y_temporal + y_spatial
        if self.fusion == "mean":
            return 0.5 * (y_temporal + y_spatial)
        return self.fuse(torch.cat([y_temporal, y_spatial], dim=-1))

    def extra_repr(self) -> str:
        return (
            f"dim={self.dim}, share_mamba={self.share_mamba}, bidirectional={self.bidirectional}, "
            f"fusion={self.fusion!r}, difference_weighting={self.difference_weighting is not None}"
        )
