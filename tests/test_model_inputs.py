"""The shared model input check, and every registered model's answer to an empty batch or a too-small input."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from model_checks import assert_output_shapes

from longiseg import build_model, list_models, model_info
from longiseg.networks.inputs import SpatialSizeRule, check_model_input, check_spatial_size, parameter_device
from longiseg.utils.validation import DEBUG_CHECKS_ENV, debug_checks, debug_checks_enabled

SEGFORMER_LIKE = {"widths": (8, 16, 16, 32), "depths": (1, 1, 1, 1), "decoder_dim": 16}


def _tiny(name: str) -> tuple[dict, int, bool]:
    """Tiny build kwargs of a registered model, its total downsampling and whether it pads inputs itself."""
    if name.startswith("segmast"):
        return {**SEGFORMER_LIKE, "d_state": 4}, 32, True
    if name.startswith("segformer"):
        return {**SEGFORMER_LIKE, "num_heads": (1, 2, 2, 4)}, 32, True
    if name.startswith("longi_unet"):
        return {"features": (4, 8, 16)}, 4, False
    if name.startswith("dynunet"):
        return {"filters": (4, 8, 16)}, 4, False
    if name.startswith("swin_unetr"):
        return {"feature_size": 12, "depths": (1, 1, 1, 1), "num_heads": (1, 1, 1, 1)}, 32, False
    raise AssertionError(f"add a tiny configuration of the new model {name!r} to this test")


def _model(name: str) -> tuple[torch.nn.Module, int, int, bool]:
    if model_info(name).tags and "monai" in model_info(name).tags:
        pytest.importorskip("monai", reason="MONAI is an optional extra (pip install longiseg[baselines])")
    kwargs, down, pads = _tiny(name)
    dims = 3 if model_info(name).dim == "3D" else 2
    return build_model(name, in_channels=1, **kwargs).eval(), dims, down, pads


@pytest.mark.parametrize("name", list_models())
def test_every_model_refuses_an_empty_batch(name: str) -> None:
    model, dims, down, _ = _model(name)
    with pytest.raises(ValueError, match=r"x has batch size B=0 \(dim 0 of \(B, T, C,"):
        model(torch.zeros(0, 2, 1, *(2 * down,) * dims))


@pytest.mark.parametrize("name", list_models())
def test_every_model_states_its_smallest_input(name: str) -> None:
    """Too small an input fails before any work, naming x and the smallest sizes; the smallest one runs."""
    model, dims, down, pads = _model(name)
    if model.spatial_size_rule.instance_norm_bottleneck:
        smallest = (2 * down,) + (down,) * (dims - 1)
        with pytest.raises(ValueError, match=rf"x's spatial size .* smallest inputs are \({2 * down}, {down}"):
            model(torch.randn(1, 2, 1, *(down,) * dims))
    else:  # no minimum beyond one voxel: a model that pads takes any size, the others any multiple
        smallest = (1,) * dims if pads else (down,) * dims
    with torch.no_grad():
        assert_output_shapes(model(torch.randn(1, 2, 1, *smallest)), 1, 2, 1, smallest)


def test_check_model_input_rules() -> None:
    ok = torch.zeros(1, 2, 1, 8, 4)
    check_model_input(ok, 2, 1, size_rule=SpatialSizeRule.of(2, 4, instance_norm_bottleneck=True))  # 2x1 bottleneck voxels
    check_model_input(torch.zeros(1, 2, 1, 33, 1), 2, 1, size_rule=SpatialSizeRule.of(2, 32, pads=True, instance_norm_bottleneck=True))
    with pytest.raises(ValueError, match=r"smallest inputs are \(64, 32\) or \(32, 64\)"):
        check_model_input(torch.zeros(1, 2, 1, 32, 17), 2, 1,
                          size_rule=SpatialSizeRule.of(2, 32, pads=True, instance_norm_bottleneck=True))
    with pytest.raises(ValueError, match=r"\(8, 4, 4\) or \(4, 8, 4\) or \(4, 4, 8\)"):
        check_model_input(torch.zeros(1, 2, 1, 4, 4, 4), 3, 1, size_rule=SpatialSizeRule.of(3, 4, instance_norm_bottleneck=True))
    with pytest.raises(ValueError, match="empty spatial dim"):
        check_model_input(torch.zeros(1, 2, 1, 0, 4), 2, 1)
    with pytest.raises(ValueError, match="divisible by 4"):
        check_model_input(torch.zeros(1, 2, 1, 6, 4), 2, 1, size_rule=SpatialSizeRule.of(2, 4))
    with pytest.raises(ValueError, match="T=3 timepoints .* num_timepoints=2"):
        check_model_input(torch.zeros(1, 3, 1, 4, 4), 2, 1, num_timepoints=2)
    with pytest.raises(ValueError, match=r"C=2 channels .* got C=1"):
        check_model_input(ok, 2, 2)
    with pytest.raises(ValueError, match="timepoints T"):
        check_model_input(torch.zeros(1, 1, 1, 4, 4), 2, 1)
    check_model_input(torch.zeros(1, 1, 1, 4, 4), 2, 1, min_timepoints=1)
    with pytest.raises(TypeError, match="floating-point"):
        check_model_input(ok.long(), 2, 1)
    with debug_checks(), pytest.raises(ValueError, match="NaN"):
        check_model_input(torch.full_like(ok, float("inf")), 2, 1)
    with pytest.raises(TypeError, match=r"x has dtype torch.float64 .* torch.float32: convert"):
        check_model_input(ok.double(), 2, 1, dtype=torch.float32)
    check_model_input(ok.double(), 2, 1, dtype=torch.float64)
    with torch.autocast("cpu", dtype=torch.bfloat16):  # autocast casts per operation: any floating dtype
        check_model_input(ok.bfloat16(), 2, 1, dtype=torch.float32)
        check_model_input(ok.half(), 2, 1, dtype=torch.bfloat16)
        # ... but never float64: it failed inside the first convolution ("Input type (double) and bias type
        # (c10::BFloat16) should be the same"), after a message that had suggested autocast
        with pytest.raises(TypeError, match=r"float64 .* torch.float32: convert .*\(autocast never casts float64\)"):
            check_model_input(ok.double(), 2, 1, dtype=torch.float32)
        with pytest.raises(TypeError, match=r"float32 .* torch.float64: convert"):
            check_model_input(ok, 2, 1, dtype=torch.float64)


def test_check_model_input_refuses_an_input_on_another_device() -> None:
    """A meta tensor stands in for a CUDA input to a CPU model (and the reverse): both devices are named."""
    ok = torch.zeros(1, 2, 1, 8, 4)
    check_model_input(ok, 2, 1, device=torch.device("cpu"))
    check_model_input(ok.to("meta"), 2, 1)  # device=None: any device
    with pytest.raises(ValueError, match=r"x is on device meta but the model's parameters are on device cpu"):
        check_model_input(ok.to("meta"), 2, 1, device=torch.device("cpu"))
    with pytest.raises(ValueError, match=r"x is on device cpu but the model's parameters are on device meta"):
        check_model_input(ok, 2, 1, device=torch.device("meta"))
    assert parameter_device(torch.nn.Linear(2, 2)) == torch.device("cpu")
    assert parameter_device(torch.nn.ReLU()) is None


@pytest.mark.parametrize("name", list_models())
def test_models_name_a_device_mismatch(name: str) -> None:
    """An input on another device than the model fails in the input check, not inside the first convolution."""
    model, dims, down, _ = _model(name)
    x = torch.zeros(1, 2, 1, *(2 * down,) * dims)
    with pytest.raises(ValueError, match=r"x is on device meta but the model's parameters are on device cpu"):
        model(x.to("meta"))
    with pytest.raises(ValueError, match=r"x is on device cpu but the model's parameters are on device meta"):
        model.to("meta")(x)


@pytest.mark.parametrize("name", ["segmast", "segformer", "dynunet_2d", "longi_unet_dw_2d"])
def test_models_name_a_dtype_mismatch_and_accept_their_own_dtype(name: str) -> None:
    """A float64 array from numpy fed to a float32 model: a TypeError naming the fix, not a failure inside
    the first convolution; the same input to the model in float64 runs."""
    if "monai" in (model_info(name).tags or ()):
        pytest.importorskip("monai", reason="MONAI is an optional extra (pip install longiseg[baselines])")
    kwargs = {"widths": (8, 16, 16, 32), "depths": (1, 1, 1, 1), "decoder_dim": 16} if name == "segmast" else {}
    model = build_model(name, **kwargs)
    x = torch.randn(1, 2, 2, 64, 64, dtype=torch.float64)
    with pytest.raises(TypeError, match="x has dtype torch.float64 but the model's parameters are torch.float32"):
        model(x)
    with torch.no_grad():
        out = model.double()(x)
    assert out.baseline.dtype == torch.float64


def test_value_checks_only_in_debug_mode(monkeypatch) -> None:
    """Finiteness costs a device-to-host sync: off by default, on with debug_checks() or LONGISEG_DEBUG_CHECKS=1."""
    monkeypatch.delenv(DEBUG_CHECKS_ENV, raising=False)
    nan = torch.full((1, 2, 1, 4, 4), float("nan"))
    assert not debug_checks_enabled()
    check_model_input(nan, 2, 1)  # shapes only
    with debug_checks():
        assert debug_checks_enabled()
        with debug_checks(False):
            check_model_input(nan, 2, 1)
        with pytest.raises(ValueError, match="x contains NaN"):
            check_model_input(nan, 2, 1)
    assert not debug_checks_enabled()
    monkeypatch.setenv(DEBUG_CHECKS_ENV, "1")
    assert debug_checks_enabled()
    with pytest.raises(ValueError, match="x contains NaN"):
        check_model_input(nan, 2, 1)
    with debug_checks(False):
        assert not debug_checks_enabled()


@pytest.mark.parametrize("name", list_models())
def test_every_model_states_the_crop_sizes_it_takes(name: str) -> None:
    """``check_spatial_size`` applies a model's own rule to a setting, naming the setting."""
    model, dims, down, pads = _model(name)
    rule = model.spatial_size_rule
    assert len(rule.downsampling) == dims and rule.pads == pads
    check_spatial_size(model, 2 * down, "data.crop_size")
    if pads:
        check_spatial_size(model, 2 * down + 1, "data.crop_size")
    else:
        with pytest.raises(ValueError, match=rf"every spatial size of data.crop_size must be divisible by {down} "):
            check_spatial_size(model, 2 * down + 1, "data.crop_size")
    if rule.instance_norm_bottleneck:
        with pytest.raises(ValueError, match=r"inference.patch_size's spatial size .* smallest inputs"):
            check_spatial_size(model, down, "inference.patch_size")
    with pytest.raises(ValueError, match=rf"must have {dims} entries \(one per spatial dim\)"):
        check_spatial_size(model, (2 * down,) * (dims + 1), "inference.patch_size")


@pytest.mark.parametrize("name", ["dynunet_2d", "dynunet_3d", "dynunet_cs", "swin_unetr_3d"])
def test_a_batch_normalised_bottleneck_states_its_smallest_input_for_one_sample(name: str) -> None:
    """With ``norm_name="batch"`` the size rule knew instance norms only: a crop leaving one voxel at the bottleneck
    passed every check and failed inside torch's BatchNorm for a batch of one ("Expected more than 1 value per
    channel when training"). Two samples, or evaluation (running statistics), take that size."""
    kwargs, down, _ = _tiny(name)
    model = build_model(name, **kwargs, norm_name="batch").train()
    rule = model.spatial_size_rule
    assert rule.batch_norm_bottleneck and not rule.instance_norm_bottleneck
    one_voxel = (down,) * len(rule.downsampling)
    check_spatial_size(model, down, "data.crop_size")  # the batch size is not known there
    if name == "dynunet_cs":  # its backbone normalises the B * T >= 2 timepoint images together: one sample trains
        assert model(torch.randn(1, 2, 2, *one_voxel)).baseline.shape == (1, 1, *one_voxel)
    else:
        with pytest.raises(ValueError, match=r"x's spatial size .* batch-normalises and so needs at least 2 voxels for "
                                             r"a batch of one sample in training: .* the smallest inputs are"):
            model(torch.randn(1, 2, 2, *one_voxel))
    assert model(torch.randn(2, 2, 2, *one_voxel)).baseline.shape == (2, 1, *one_voxel)
    assert model.eval()(torch.randn(1, 2, 2, *one_voxel)).baseline.shape == (1, 1, *one_voxel)
    sizes = (2 * down,) + (down,) * (len(rule.downsampling) - 1)
    assert model.train()(torch.randn(1, 2, 2, *sizes)).baseline.shape == (1, 1, *sizes)


def test_swin_unetr_refuses_a_patch_size_its_decoder_cannot_undo_and_checks_window_size() -> None:
    """MONAI's ``patch_size`` passed through while the size rule stayed at 32: ``patch_size=4`` failed in MONAI's own
    size check, ``patch_size=1`` with "Sizes of tensors must match" in the decoder; ``window_size=0`` failed with
    "zeros: Dimension size must be non-negative"."""
    kwargs, _, _ = _tiny("swin_unetr_3d")
    for patch in (1, 4):
        with pytest.raises(ValueError, match=f"patch_size must be 2 .*got {patch}"):
            build_model("swin_unetr_3d", **kwargs, patch_size=patch)
    assert build_model("swin_unetr_3d", **kwargs, patch_size=2).spatial_size_rule.downsampling == (32, 32, 32)
    with pytest.raises(ValueError, match="window_size must be >= 1, got 0"):
        build_model("swin_unetr_3d", **kwargs, window_size=0)
    with pytest.raises(ValueError, match=r"window_size must have 3 entries \(one per spatial dim\)"):
        build_model("swin_unetr_3d", **kwargs, window_size=(7, 7))
    with pytest.raises(TypeError, match=r"window_size must be an int or a sequence of ints \(one per spatial dim\), "
                                        r"got str"):
        build_model("swin_unetr_3d", **kwargs, window_size="7")
    for window in ((4, 4, 4), 4, np.array([4, 4, 4])):
        model = build_model("swin_unetr_3d", **kwargs, window_size=window)
        assert model(torch.randn(1, 2, 2, 64, 32, 32)).progression.shape == (1, 1, 1, 64, 32, 32)
