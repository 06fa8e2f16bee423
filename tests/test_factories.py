"""``longiseg.networks.factories``: the one map from ``spatial_dims`` to torch's 2D/3D layer classes."""

from __future__ import annotations

import doctest
import re
from pathlib import Path

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from longiseg.networks import factories
from longiseg.networks.factories import NORMS, conv_type, linear_interpolation, norm_type

NETWORKS = Path(factories.__file__).resolve().parent


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_conv_and_norm_types_map_maps_of_that_dimensionality(spatial_dims: int) -> None:
    x = torch.randn(2, 3, *([6] * spatial_dims))
    conv = conv_type(spatial_dims)(3, 4, kernel_size=3, padding=1)
    assert conv(x).shape == (2, 4, *([6] * spatial_dims))
    up = conv_type(spatial_dims, transposed=True)(3, 4, kernel_size=2, stride=2)
    assert up(x).shape == (2, 4, *([12] * spatial_dims))
    for kind in NORMS:
        norm = norm_type(kind, spatial_dims)(3)
        assert norm(x).shape == x.shape
    assert conv_type(spatial_dims).__name__ == f"Conv{spatial_dims}d"
    assert norm_type("instance", spatial_dims).__name__ == f"InstanceNorm{spatial_dims}d"


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_linear_interpolation_interpolates_every_spatial_axis(spatial_dims: int) -> None:
    assert linear_interpolation(spatial_dims) == ("bilinear", "trilinear")[spatial_dims - 2]
    x = torch.zeros(1, 1, *([2] * spatial_dims))
    x[(0, 0, *([1] * spatial_dims))] = 1.0  # one corner at 1: linear along each axis gives products of thirds
    y = F.interpolate(x, size=[4] * spatial_dims, mode=linear_interpolation(spatial_dims), align_corners=True)
    assert y.shape == (1, 1, *([4] * spatial_dims))
    assert y[(0, 0, *([1] * spatial_dims))].item() == pytest.approx((1 / 3) ** spatial_dims, rel=1e-6)
    assert y[(0, 0, *([2] * spatial_dims))].item() == pytest.approx((2 / 3) ** spatial_dims, rel=1e-6)


@pytest.mark.parametrize("bad", [1, 4, 2.0, True, "2", None])
def test_bad_spatial_dims_are_named(bad: object) -> None:
    for call in (lambda: conv_type(bad), lambda: norm_type("instance", bad),  # type: ignore[arg-type]
                 lambda: linear_interpolation(bad)):  # type: ignore[arg-type]
        with pytest.raises(ValueError, match="spatial_dims must be 2 or 3"):
            call()


def test_bad_kind_and_transposed_are_named() -> None:
    with pytest.raises(ValueError, match="kind must be one of"):
        norm_type("group", 2)
    with pytest.raises(ValueError, match="kind must be one of"):
        norm_type(["instance"], 2)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="transposed"):
        conv_type(2, transposed="yes")  # type: ignore[arg-type]


def test_docstring_examples_hold() -> None:
    assert doctest.testmod(factories).failed == 0


def test_networks_pick_layer_classes_through_the_factories() -> None:
    """No network chooses between torch's 2D and 3D classes itself (``nn.Conv3d if spatial_dims == 3 else ...``)."""
    branch = re.compile(r"nn\.\w+[23]d\s+if\b|else\s+nn\.\w+[23]d\b")
    found = [f"{p.relative_to(NETWORKS)}:{i}" for p in sorted(NETWORKS.rglob("*.py")) if p != Path(factories.__file__)
             for i, line in enumerate(p.read_text().splitlines(), 1) if branch.search(line)]
    assert not found, found


def test_models_build_the_same_layers_as_before() -> None:
    """The 3D LongiUNet's stages are 3D convolutions and instance norms; its decoder upsamples transposed."""
    from longiseg import build_model

    model = build_model("longi_unet_dw", features=(4, 8))
    kinds = {type(m) for m in model.modules()}
    assert {nn.Conv3d, nn.InstanceNorm3d, nn.ConvTranspose3d} <= kinds
    assert not kinds & {nn.Conv2d, nn.InstanceNorm2d, nn.ConvTranspose2d}
