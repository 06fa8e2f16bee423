"""MONAI baselines (DynUNet 2D/3D, cross-sectional DynUNet, SwinUNETR) with the dual-head output."""

from __future__ import annotations

import math
import re
import sys

import pytest
import torch
from model_checks import (
    PAPER_PARAM_TARGETS_M,
    assert_all_parameters_get_gradients,
    assert_output_shapes,
    assert_params_near,
    assert_training_reduces_loss,
    synthetic_batch,
)

from longiseg import build_model, list_models, model_info
from longiseg.networks.nets.monai_nets import CrossSectionalNet, cross_sectional_targets

pytest.importorskip("monai", reason="MONAI is an optional extra (pip install longiseg[baselines])")

TINY_DYN = {"filters": (4, 8, 16)}  # three levels: sizes must be multiples of 4
TINY_SWIN = {"feature_size": 12, "depths": (1, 1, 1, 1), "num_heads": (1, 1, 1, 1)}  # sizes: multiples of 32
STACKED = ["dynunet_2d", "dynunet_3d"]


def _spatial(name: str) -> tuple[int, ...]:
    return (8, 12, 8) if model_info(name).dim == "3D" else (16, 12)


def test_registry_dims() -> None:
    assert {"dynunet_2d", "dynunet_3d", "dynunet_cs", "swin_unetr_3d"} <= set(list_models(tag="monai"))
    assert model_info("dynunet_2d").dim == "2.5D"
    assert all(model_info(n).dim == "3D" for n in ("dynunet_3d", "dynunet_cs", "swin_unetr_3d"))


def test_clear_import_error_without_monai(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "monai", None)  # makes `import monai...` fail
    with pytest.raises(ImportError, match=r"pip install longiseg\[baselines\]"):
        build_model("dynunet_3d", **TINY_DYN)


@pytest.mark.parametrize("found", ["1.3.0", "1.4.0rc1", "0.9"])
def test_a_monai_too_old_is_named_with_the_version_needed(monkeypatch: pytest.MonkeyPatch, found: str) -> None:
    """MONAI 1.3/1.4 satisfied the extra's old bound, then refused SwinUNETR without img_size with a message that
    blamed its arguments."""
    import monai

    monkeypatch.setattr(monai, "__version__", found)
    with pytest.raises(ImportError, match=rf"need MONAI >= 1\.5, found {re.escape(found)}: pip install -U"):
        build_model("swin_unetr_3d", **TINY_SWIN)


@pytest.mark.parametrize("found", ["1.5.0", "1.5.2rc1", "1.6.1+12.gabcdef", "2.0"])
def test_supported_monai_versions_are_accepted(monkeypatch: pytest.MonkeyPatch, found: str) -> None:
    import monai

    monkeypatch.setattr(monai, "__version__", found)
    assert build_model("dynunet_3d", **TINY_DYN) is not None


@pytest.mark.parametrize("name", STACKED)
def test_stacked_forward_shapes_and_fixed_t(name: str) -> None:
    spatial = _spatial(name)
    model = build_model(name, in_channels=2, out_channels=2, **TINY_DYN)
    assert_output_shapes(model(torch.randn(2, 2, 2, *spatial)), 2, 2, 2, spatial)
    model3 = build_model(name, in_channels=1, num_timepoints=3, **TINY_DYN)
    assert_output_shapes(model3(torch.randn(1, 3, 1, *spatial)), 1, 3, 1, spatial)
    with pytest.raises(ValueError, match="num_timepoints=3"):
        model3(torch.randn(1, 2, 1, *spatial))


@pytest.mark.parametrize("timepoints", [2, 3])
def test_cross_sectional_forward_any_t(timepoints: int) -> None:
    model = build_model("dynunet_cs", in_channels=1, **TINY_DYN)
    assert isinstance(model, CrossSectionalNet)
    out = model(torch.randn(2, timepoints, 1, 8, 8, 8))
    assert_output_shapes(out, 2, timepoints, 1, (8, 8, 8))


def test_cross_sectional_progression_is_clamped_probability_difference() -> None:
    model = build_model("dynunet_cs", in_channels=1, **TINY_DYN).eval()
    x = torch.randn(1, 3, 1, 8, 8, 8)
    with torch.no_grad():
        logits = model.timepoint_logits(x)
        out = model(x)
    p = torch.sigmoid(logits)
    torch.testing.assert_close(out.baseline, logits[:, 0])
    expected = (p[:, 1:] - p[:, :-1]).clamp(0, 1)
    torch.testing.assert_close(torch.sigmoid(out.progression), expected.clamp(model.eps, 1 - model.eps))
    # identical timepoints: nothing new at follow-up
    same = x[:, :1].expand(1, 3, 1, 8, 8, 8)
    with torch.no_grad():
        assert (torch.sigmoid(model(same).progression) <= 2 * model.eps).all()


def test_cross_sectional_targets() -> None:
    baseline = torch.tensor([[[1.0, 0.0, 0.0]]])  # (B=1, K=1, S=3)
    progression = torch.tensor([[[[0.0, 1.0, 0.0]], [[0.0, 0.0, 1.0]]]])  # (1, T-1=2, 1, 3)
    full = cross_sectional_targets(baseline, progression)
    assert full.tolist() == [[[[1.0, 0.0, 0.0]], [[1.0, 1.0, 0.0]], [[1.0, 1.0, 1.0]]]]
    with pytest.raises(ValueError, match="binary"):
        cross_sectional_targets(baseline * 2, progression)
    with pytest.raises(ValueError, match="must match baseline"):
        cross_sectional_targets(baseline, progression[..., :2])
    with pytest.raises(ValueError, match=r"\(B, T-1, K, \*S\)"):
        cross_sectional_targets(baseline, progression[:, 0])


@pytest.mark.parametrize("name", STACKED + ["dynunet_cs"])
def test_all_parameters_get_gradients(name: str) -> None:
    model = build_model(name, in_channels=2, **TINY_DYN)
    assert_all_parameters_get_gradients(model, torch.randn(2, 2, 2, *_spatial(name)))


@pytest.mark.parametrize("name", STACKED)
def test_training_reduces_loss(name: str) -> None:
    model = build_model(name, in_channels=1, **TINY_DYN)
    images, baseline, progression = synthetic_batch(2, 2, 1, _spatial(name))
    assert_training_reduces_loss(model, images, baseline, progression)


def test_cross_sectional_training_on_full_masks_reduces_loss() -> None:
    """DynUNet (CS) is trained per timepoint on full masks (baseline united with progression)."""
    model = build_model("dynunet_cs", in_channels=1, **TINY_DYN)
    images, baseline, progression = synthetic_batch(2, 2, 1, (8, 8, 8))
    targets = cross_sectional_targets(baseline, progression)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(8):
        opt.zero_grad()
        loss = torch.nn.functional.binary_cross_entropy_with_logits(model.timepoint_logits(images), targets)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.9 * losses[0], losses


def test_swin_unetr_forward_and_gradients() -> None:
    # MONAI's default instance norm needs more than one voxel at the 1/32 bottleneck
    model = build_model("swin_unetr_3d", in_channels=1, **TINY_SWIN).eval()
    with torch.no_grad():
        assert_output_shapes(model(torch.randn(1, 2, 1, 64, 32, 32)), 1, 2, 1, (64, 32, 32))
    with pytest.raises(ValueError, match="divisible by 32"):
        model(torch.randn(1, 2, 1, 32, 32, 16))
    with pytest.raises(ValueError, match="num_timepoints=2"):
        model(torch.randn(1, 3, 1, 32, 32, 32))
    # batch norm lets a cheap 32^3 input (1-voxel bottleneck) train
    model = build_model("swin_unetr_3d", in_channels=1, num_timepoints=3, norm_name="batch", **TINY_SWIN)
    assert_all_parameters_get_gradients(model, torch.randn(2, 3, 1, 32, 32, 32))


@pytest.mark.slow
def test_swin_unetr_training_reduces_loss() -> None:
    model = build_model("swin_unetr_3d", in_channels=1, **TINY_SWIN)
    images, baseline, progression = synthetic_batch(1, 2, 1, (64, 32, 32))
    assert_training_reduces_loss(model, images, baseline, progression)


@pytest.mark.parametrize(
    "name, target",
    [
        ("dynunet_2d", ("2.5D", "ms")),
        ("dynunet_2d_ms", ("2.5D", "ms")),
        ("dynunet_2d_glioma", ("2.5D", "glioma")),
        ("dynunet_3d", ("3D", "ms")),
        ("dynunet_3d_ms", ("3D", "ms")),
        ("dynunet_3d_glioma", ("3D", "glioma")),
        ("dynunet_cs", ("3D", "ms")),
        ("dynunet_cs_ms", ("3D", "ms")),
        ("dynunet_cs_glioma", ("3D", "glioma")),
        ("swin_unetr_3d", ("3D", "ms")),
        ("swin_unetr_3d_ms", ("3D", "ms")),
        ("swin_unetr_3d_glioma", ("3D", "glioma")),
    ],
)
def test_named_config_parameter_counts(name: str, target: tuple[str, str]) -> None:
    assert model_info(name).dim == target[0]
    assert_params_near(build_model(name), PAPER_PARAM_TARGETS_M[target])


def test_input_errors() -> None:
    model = build_model("dynunet_3d", in_channels=2, **TINY_DYN)
    with pytest.raises(ValueError, match=r"\(B, T, C, D, H, W\)"):
        model(torch.randn(1, 2, 2, 8, 8))
    with pytest.raises(ValueError, match="C=2"):
        model(torch.randn(1, 2, 1, 8, 8, 8))
    with pytest.raises(ValueError, match=r"every spatial size of x must be divisible by 4 .*got shape \(1, 2, 2, 8, 6, 8\)"):
        model(torch.randn(1, 2, 2, 8, 6, 8))
    with pytest.raises(ValueError, match="num_timepoints"):
        build_model("dynunet_3d", num_timepoints=1, **TINY_DYN)
    with pytest.raises(ValueError, match="filters"):
        build_model("dynunet_3d", filters=(8,))
    with pytest.raises(ValueError, match="eps"):
        build_model("dynunet_cs", eps=0.7, **TINY_DYN)


def test_cross_sectional_progression_is_finite_under_bf16_autocast() -> None:
    """Confident timepoint logits: in bfloat16 ``1 - eps`` is 1 and the logit of a clamped 1 was infinite."""
    torch.manual_seed(0)
    model = build_model("dynunet_cs", in_channels=2, filters=(4, 8, 8)).eval()
    with torch.no_grad():
        for p in model.backbone.output_block.parameters():
            p.mul_(200.0)  # saturated probabilities, as after confident training
        x = torch.randn(1, 3, 2, 8, 8, 8)
        ref = model(x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = model(x)
    assert out.progression.dtype == out.baseline.dtype  # the backbone's dtype under autocast
    bound = math.log((1 - model.eps) / model.eps)
    assert torch.isfinite(out.progression).all() and out.progression.abs().max() <= bound * 1.01
    saturated = torch.sigmoid(ref.progression) > 0.99  # the voxels where the clamp acts
    assert saturated.any() and (out.progression[saturated] > 0).all()


def test_builder_argument_errors_name_the_argument() -> None:
    with pytest.raises(TypeError, match=r"filters must be a sequence of ints .*got int 4"):
        build_model("dynunet_2d", filters=4)
    with pytest.raises(ValueError, match=r"filters must list at least 3 stage widths .*got 2"):
        build_model("dynunet_2d", filters=(4, 8))
    with pytest.raises(TypeError, match="eps must be a number > 0, got str"):
        build_model("dynunet_cs", eps="1e-6", **TINY_DYN)
    with pytest.raises(TypeError, match=r"spatial_dims is fixed to 3 .*got spatial_dims=2.*no 2D/2.5D model"):
        build_model("swin_unetr_3d", spatial_dims=2, **TINY_SWIN)
    with pytest.raises(TypeError, match=r"spatial_dims is fixed to 2 .*for 3D inputs use dynunet_3d, "):
        build_model("dynunet_2d", spatial_dims=3, **TINY_DYN)
    model = build_model("dynunet_3d", spatial_dims=3, **TINY_DYN)  # the preset's own value is accepted
    assert model.spatial_dims == 3


@pytest.mark.parametrize(
    ("name", "kwargs", "err", "match"),
    [
        ("dynunet_2d", {"strides": [2, 2, 2]}, ValueError, r"strides\[0\] must be 1 .*input's size\), got 2"),
        ("dynunet_cs", {"strides": [(1, 2, 1), 2, 2]}, ValueError, r"strides\[0\] must be 1"),
        ("dynunet_2d", {"deep_supervision": True}, ValueError, "deep_supervision=True is not supported"),
        ("dynunet_3d", {"deep_supervision": "no"}, TypeError, "deep_supervision must be a bool, got str"),
        ("dynunet_2d", {"strides": [1, 2]}, ValueError, r"strides must have 3 entries \(one per level of filters\)"),
        ("dynunet_2d", {"kernel_size": [3, 3, 3, 3]}, ValueError, "kernel_size must have 3 entries"),
        ("dynunet_2d", {"kernel_size": 3}, TypeError, "kernel_size must be a sequence"),
        ("dynunet_2d", {"strides": [1, 2, 0]}, ValueError, r"strides\[2\] must be >= 1, got 0"),
        ("dynunet_2d", {"strides": [1, (2, 2, 2), 2]}, ValueError, r"strides\[1\] must have 2 entries"),
        ("dynunet_2d", {"kernel_size": [3, 2, 3]}, ValueError, r"kernel_size\[1\] must be odd"),
        ("dynunet_2d", {"kernel_size": [1, 1, 1], "strides": [1, 3, 3]}, ValueError,
         r"kernel_size\[1\] must be odd and at least strides\[1\] - 1"),
        ("dynunet_2d", {"upsample_kernel_size": [3, 3]}, ValueError, r"upsample_kernel_size must equal strides\[1:\]"),
        ("swin_unetr_3d", {**TINY_SWIN, "depths": (1, 1, 1)}, ValueError, r"depths must have 4 entries"),
        ("swin_unetr_3d", {**TINY_SWIN, "num_heads": (0, 1, 1, 1)}, ValueError, r"num_heads\[0\] must be >= 1"),
        ("swin_unetr_3d", {**TINY_SWIN, "num_heads": (5, 1, 1, 1)}, ValueError,
         r"num_heads\[0\]=5 must divide the 12 channels of Swin stage 0"),
        ("swin_unetr_3d", {**TINY_SWIN, "depths": 2}, TypeError, "depths must be a sequence of ints"),
        ("swin_unetr_3d", {**TINY_SWIN, "feature_size": 18}, ValueError, "feature_size must be a multiple of 12"),
        ("swin_unetr_3d", {**TINY_SWIN, "feature_size": 12.0}, TypeError, "feature_size must be an int"),
    ],
)
def test_forwarded_monai_arguments_are_checked_at_build(name: str, kwargs: dict, err: type, match: str) -> None:
    """MONAI arguments that would give logits below the input resolution, or fail only at forward (or in
    training mode) inside MONAI/torch, are refused when the model is built, naming the argument."""
    kwargs = {**TINY_DYN, **kwargs} if name.startswith("dynunet") else kwargs
    with pytest.raises(err, match=match):
        build_model(name, **kwargs)


def test_valid_forwarded_strides_keep_the_input_resolution() -> None:
    """Anisotropic and non-power-of-two strides build and give logits at the input size in both modes."""
    model = build_model("dynunet_2d", filters=(4, 8, 8), strides=[1, (2, 1), 3], kernel_size=[3, (3, 1), 3])
    assert model.spatial_size_rule.downsampling == (6, 3)
    for train in (False, True):
        model.train(train)
        assert_output_shapes(model(torch.randn(2, 2, 2, 12, 6)), 2, 2, 1, (12, 6))


def test_cross_sectional_spec_records_any_t() -> None:
    """dynunet_cs takes any T: num_timepoints is checked and accepted (train passes it) but not recorded."""
    model = build_model("dynunet_cs", in_channels=1, num_timepoints=3, **TINY_DYN)
    assert model.num_timepoints is None and model.spec.num_timepoints is None
    assert_output_shapes(model(torch.randn(1, 2, 1, 8, 8, 8)), 1, 2, 1, (8, 8, 8))
    assert build_model("dynunet_3d", num_timepoints=3, **TINY_DYN).spec.num_timepoints == 3
    with pytest.raises(ValueError, match="num_timepoints"):
        build_model("dynunet_cs", num_timepoints=1, **TINY_DYN)


@pytest.mark.parametrize("name, kwargs, error, named", [
    ("dynunet_2d", {"norm_name": "foo"}, ValueError, "norm_name='foo'"),
    ("dynunet_2d", {"act_name": "foo"}, ValueError, "act_name='foo'"),
    ("dynunet_3d", {"norm_name": 5}, TypeError, "norm_name=5"),
    ("swin_unetr_3d", {"drop_rate": 2.0}, ValueError, "drop_rate=2.0"),
])
def test_an_argument_monai_refuses_is_named(name: str, kwargs: dict, error: type, named: str) -> None:
    # MONAI's own messages name the value ("Unsupported option 'FOO'"), not the argument
    with pytest.raises(error, match=f"refused its arguments .*{re.escape(named)}"):
        build_model(name, **kwargs)
