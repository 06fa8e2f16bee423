"""LongiUNet-DW and the early-fusion U-Net: shapes, timepoint pairing, gradients, training, sizes, errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from model_checks import (
    PAPER_PARAM_TARGETS_M,
    UNET_CANCELLED,
    assert_all_parameters_get_gradients,
    assert_output_shapes,
    assert_params_near,
    assert_training_reduces_loss,
    synthetic_batch,
)

from longiseg import build_model, list_models, model_info
from longiseg.networks.nets.longi_unet import LongiUNetConcat, LongiUNetDW, UNetDecoder, UNetEncoder
from longiseg.utils.validation import debug_checks

TINY = (4, 8, 16)  # three stages: spatial sizes must be multiples of 4
DW_NAMES = ["longi_unet_dw", "longi_unet_dw_2d"]
CONCAT_NAMES = ["longi_unet_concat", "longi_unet_concat_2d"]


def _spatial(name: str) -> tuple[int, ...]:
    return (8, 12, 8) if model_info(name).dim == "3D" else (16, 12)


def test_registry_lists_every_variant_with_its_dim() -> None:
    names = list_models("longi_unet*")
    for name in DW_NAMES + CONCAT_NAMES + ["longi_unet_dw_ms", "longi_unet_dw_glioma", "longi_unet_dw_2d_ms",
                                           "longi_unet_dw_2d_glioma", "longi_unet_concat_ms",
                                           "longi_unet_concat_glioma"]:
        assert name in names
    assert model_info("longi_unet_dw").dim == "3D"
    assert model_info("longi_unet_dw_2d").dim == "2.5D"
    assert model_info("longi_unet_concat").dim == "3D"


@pytest.mark.parametrize("name", DW_NAMES)
@pytest.mark.parametrize("timepoints", [2, 3])
def test_dw_forward_shapes_any_t(name: str, timepoints: int) -> None:
    model = build_model(name, in_channels=2, out_channels=2, features=TINY)
    spatial = _spatial(name)
    out = model(torch.randn(2, timepoints, 2, *spatial))
    assert_output_shapes(out, 2, timepoints, 2, spatial)


@pytest.mark.parametrize("name", CONCAT_NAMES)
def test_concat_forward_shapes_and_fixed_t(name: str) -> None:
    spatial = _spatial(name)
    model = build_model(name, in_channels=1, num_timepoints=3, features=TINY)
    assert_output_shapes(model(torch.randn(2, 3, 1, *spatial)), 2, 3, 1, spatial)
    with pytest.raises(ValueError, match="num_timepoints=3"):
        model(torch.randn(2, 2, 1, *spatial))


@pytest.mark.parametrize("name", DW_NAMES + CONCAT_NAMES)
def test_all_parameters_get_gradients(name: str) -> None:
    model = build_model(name, in_channels=2, features=TINY)
    assert_all_parameters_get_gradients(model, torch.randn(2, 2, 2, *_spatial(name)), cancelled=UNET_CANCELLED)


def test_dw_gradients_with_three_timepoints() -> None:
    model = build_model("longi_unet_dw", in_channels=1, features=TINY)
    assert_all_parameters_get_gradients(model, torch.randn(1, 3, 1, 8, 8, 8), cancelled=UNET_CANCELLED)


@pytest.mark.parametrize("name", ["longi_unet_dw", "longi_unet_concat_2d"])
def test_training_reduces_loss(name: str) -> None:
    model = build_model(name, in_channels=1, features=TINY)
    images, baseline, progression = synthetic_batch(2, 2, 1, _spatial(name))
    assert_training_reduces_loss(model, images, baseline, progression)


@pytest.mark.parametrize(
    "name, target",
    [
        ("longi_unet_dw", ("3D", "ms")),
        ("longi_unet_dw_ms", ("3D", "ms")),
        ("longi_unet_dw_glioma", ("3D", "glioma")),
        ("longi_unet_dw_2d", ("2.5D", "ms")),
        ("longi_unet_dw_2d_ms", ("2.5D", "ms")),
        ("longi_unet_dw_2d_glioma", ("2.5D", "glioma")),
        ("longi_unet_concat", ("3D", "ms")),
        ("longi_unet_concat_ms", ("3D", "ms")),
        ("longi_unet_concat_glioma", ("3D", "glioma")),
        ("longi_unet_concat_2d", ("2.5D", "ms")),
    ],
)
def test_named_config_parameter_counts(name: str, target: tuple[str, str]) -> None:
    assert model_info(name).dim == target[0]
    assert_params_near(build_model(name), PAPER_PARAM_TARGETS_M[target])


def test_prior_pairing_previous_vs_baseline() -> None:
    prev = LongiUNetDW(1, features=TINY, spatial_dims=2, prior="previous")
    base = LongiUNetDW(1, features=TINY, spatial_dims=2, prior="baseline")
    assert [prev.prior_index(t) for t in range(4)] == [1, 0, 1, 2]
    assert [base.prior_index(t) for t in range(4)] == [1, 0, 0, 0]
    # with prior="previous" follow-up 2 never sees the baseline; with prior="baseline" it does
    x = torch.randn(1, 3, 1, 8, 8)
    x_changed = x.clone()
    x_changed[:, 0] += torch.randn(8, 8)
    prev.eval(), base.eval()
    with torch.no_grad():
        torch.testing.assert_close(prev(x).progression[:, 1], prev(x_changed).progression[:, 1])
        assert not torch.allclose(base(x).progression[:, 1], base(x_changed).progression[:, 1])
        # the baseline is segmented with the first follow-up as its prior
        x_fu = x.clone()
        x_fu[:, 1] += torch.randn(8, 8)
        assert not torch.allclose(prev(x).baseline, prev(x_fu).baseline)


@pytest.mark.parametrize("prior", ["previous", "baseline"])
def test_followups_weighted_in_one_batch_pair_as_prior_index(prior: str) -> None:
    """The forward pass weights all follow-ups in one batch (so a trace follows T); each follow-up ``t`` against
    timepoint ``prior_index(t)``, as one call per follow-up does (float64)."""
    model = LongiUNetDW(1, features=TINY, spatial_dims=2, prior=prior).double().eval()
    x = torch.randn(2, 4, 1, 8, 8, dtype=torch.float64)
    b, t = x.shape[:2]
    with torch.no_grad():
        for p in [*model.dw_baseline.parameters(), *model.dw_followup.parameters()]:
            p.add_(0.5 * torch.randn_like(p))  # baseline and follow-up blocks differ
        fused = []
        for level, f in enumerate(model.encoder(x.flatten(0, 1))):
            f = f.unflatten(0, (b, t))
            merged = [model.dw_baseline[level](f[:, 0], f[:, 1])]
            merged += [model.dw_followup[level](f[:, i], f[:, model.prior_index(i)]) for i in range(1, t)]
            fused.append(torch.stack(merged, dim=1).flatten(0, 1))
        want, got = model.heads(model.decoder(fused).unflatten(0, (b, t))), model(x)
    torch.testing.assert_close(got.baseline, want.baseline, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(got.progression, want.progression, rtol=1e-12, atol=1e-12)


def test_unet_encoder_decoder_shapes() -> None:
    enc, dec = UNetEncoder(3, (4, 8, 16, 32), spatial_dims=3), UNetDecoder((4, 8, 16, 32), spatial_dims=3)
    feats = enc(torch.randn(2, 3, 16, 8, 8))
    assert [tuple(f.shape) for f in feats] == [(2, 4, 16, 8, 8), (2, 8, 8, 4, 4), (2, 16, 4, 2, 2), (2, 32, 2, 1, 1)]
    assert enc.divisor == 8
    assert tuple(dec(feats).shape) == (2, 4, 16, 8, 8)
    with pytest.raises(ValueError, match="4 feature maps"):
        dec(feats[:3])


def test_input_errors() -> None:
    model = LongiUNetDW(2, features=TINY, spatial_dims=3)
    with pytest.raises(TypeError, match="x must be a torch.Tensor"):
        model([1.0])
    with pytest.raises(ValueError, match=r"\(B, T, C, D, H, W\)"):
        model(torch.randn(1, 2, 2, 8, 8))
    with pytest.raises(ValueError, match="T"):
        model(torch.randn(1, 1, 2, 8, 8, 8))
    with pytest.raises(ValueError, match="C=2"):
        model(torch.randn(1, 2, 3, 8, 8, 8))
    with pytest.raises(ValueError, match="divisible by 4"):
        model(torch.randn(1, 2, 2, 8, 10, 8))
    x = torch.randn(1, 2, 2, 8, 8, 8)
    x[0, 1, 0, 0, 0, 0] = float("nan")
    with debug_checks(), pytest.raises(ValueError, match="NaN"):
        model(x)


def test_constructor_errors() -> None:
    with pytest.raises(ValueError, match="prior"):
        LongiUNetDW(1, features=TINY, prior="next")
    with pytest.raises(ValueError, match="spatial_dims"):
        LongiUNetDW(1, features=TINY, spatial_dims=1)
    with pytest.raises(ValueError, match="at least 2"):
        LongiUNetDW(1, features=(8,))
    with pytest.raises(ValueError, match="num_timepoints"):
        LongiUNetConcat(1, num_timepoints=1, features=TINY)
    with pytest.raises(TypeError, match="out_channels"):
        LongiUNetConcat(1, out_channels=1.5, features=TINY)


def test_builder_argument_errors_name_the_argument() -> None:
    with pytest.raises(TypeError, match=r"features must be a sequence of ints \(channels per stage\), got int 4"):
        build_model("longi_unet_dw_2d", features=4)
    with pytest.raises(TypeError, match=r"spatial_dims is fixed to 2 .*got spatial_dims=3; for 3D inputs use "
                                        r"longi_unet_dw, longi_unet_dw_glioma, longi_unet_dw_ms"):
        build_model("longi_unet_dw_2d", spatial_dims=3)
    with pytest.raises(TypeError, match=r"spatial_dims is fixed to 3 .*use longi_unet_concat_2d"):
        build_model("longi_unet_concat", spatial_dims=2, features=TINY)
    assert build_model("longi_unet_dw_2d", spatial_dims=2, features=TINY).spatial_dims == 2  # the preset's value


def test_dw_spec_records_any_t_whatever_num_timepoints_says() -> None:
    """LongiUNet-DW takes any T: num_timepoints is checked and accepted (train passes it), not recorded."""
    model = build_model("longi_unet_dw", features=TINY, num_timepoints=3)
    assert model.num_timepoints is None and model.spec.num_timepoints is None
    assert_output_shapes(model(torch.randn(1, 2, 2, 8, 8, 8)), 1, 2, 1, (8, 8, 8))
    assert_output_shapes(model(torch.randn(1, 4, 2, 8, 8, 8)), 1, 4, 1, (8, 8, 8))
    assert build_model("longi_unet_concat", features=TINY, num_timepoints=3).spec.num_timepoints == 3
    assert build_model("longi_unet_concat", features=TINY).spec.num_timepoints == 2  # the model's default


def test_numpy_arguments_become_python_ints() -> None:
    model = LongiUNetDW(np.int64(2), features=np.array([4, 8, 16]), spatial_dims=np.int64(3))
    assert type(model.in_channels) is int and type(model.spatial_dims) is int
    assert model.encoder.features == TINY and all(type(f) is int for f in model.encoder.features)
