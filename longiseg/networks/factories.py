"""Layer types by spatial dimensionality: the one place that maps ``spatial_dims`` (2 for slices, 3 for volumes)
to torch's 2D/3D classes, so that a block is written once for both (as MONAI's layer factories do, for the layers
our blocks build: convolutions, instance and batch norms, linear interpolation).

    >>> conv_type(3)
    <class 'torch.nn.modules.conv.Conv3d'>
    >>> norm_type("instance", 2)
    <class 'torch.nn.modules.instancenorm.InstanceNorm2d'>
"""

from __future__ import annotations

import torch.nn as nn

from longiseg.utils.validation import check_bool, check_spatial_dims

__all__ = ["NORMS", "conv_type", "norm_type", "linear_interpolation"]

_CONV: dict[tuple[int, bool], type[nn.Module]] = {
    (2, False): nn.Conv2d,
    (3, False): nn.Conv3d,
    (2, True): nn.ConvTranspose2d,
    (3, True): nn.ConvTranspose3d,
}
_NORM: dict[tuple[str, int], type[nn.Module]] = {
    ("instance", 2): nn.InstanceNorm2d,
    ("instance", 3): nn.InstanceNorm3d,
    ("batch", 2): nn.BatchNorm2d,
    ("batch", 3): nn.BatchNorm3d,
}
#: The normalisations :func:`norm_type` knows.
NORMS = ("instance", "batch")


def conv_type(spatial_dims: int, *, transposed: bool = False) -> type[nn.Module]:
    """The convolution class for ``spatial_dims``: ``nn.Conv2d``/``nn.Conv3d``, or with ``transposed=True``
    ``nn.ConvTranspose2d``/``nn.ConvTranspose3d``; it maps ``(N, C, *S)`` with ``len(S) == spatial_dims``."""
    return _CONV[check_spatial_dims("spatial_dims", spatial_dims), check_bool("transposed", transposed)]


def norm_type(kind: str, spatial_dims: int) -> type[nn.Module]:
    """The normalisation class ``kind`` (one of :data:`NORMS`) for ``(N, C, *S)`` maps with
    ``len(S) == spatial_dims``: e.g. ``norm_type("instance", 3)`` is ``nn.InstanceNorm3d``."""
    if not isinstance(kind, str) or kind not in NORMS:
        raise ValueError(f"kind must be one of {NORMS}, got {kind!r}")
    return _NORM[kind, check_spatial_dims("spatial_dims", spatial_dims)]


def linear_interpolation(spatial_dims: int) -> str:
    """The ``mode`` of ``torch.nn.functional.interpolate`` that interpolates linearly along every spatial axis of
    ``(N, C, *S)`` with ``len(S) == spatial_dims``: ``"bilinear"`` or ``"trilinear"``."""
    return "bilinear" if check_spatial_dims("spatial_dims", spatial_dims) == 2 else "trilinear"
