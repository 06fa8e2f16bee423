"""Bad arguments to public functions and classes raise a TypeError/ValueError that names the argument.

Each row was found by perturbing one argument of a valid call; before the fix it was accepted silently or
failed deep inside torch/NumPy. All inputs are tiny, so the module runs in about a second.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn as nn

from longiseg.engine.trainer import param_groups_weight_decay
from longiseg.losses import select_progression_samples
from longiseg.metrics import (
    ResultsTable,
    hd95,
    label_lesions,
    lesion_overlaps,
    match_lesions,
    paired_ttest,
    write_csv,
)
from longiseg.networks.blocks import (
    AllMLPDecoder,
    DifferenceWeighting,
    EfficientSelfAttention,
    EncoderStage,
    LongitudinalSegFormerLike,
    STBlock,
    TimepointHeads,
    init_segformer_weights,
)
from longiseg.utils.io import atomic_directory
from longiseg.utils.validation import check_instance, check_nonnegative_float


# ------------------------------------------------------------------------------------------- shared helpers
def test_check_instance_names_the_argument() -> None:
    assert check_instance("model", nn.Identity(), nn.Module, "an nn.Module").__class__ is nn.Identity
    with pytest.raises(TypeError, match="model must be an nn.Module, got str"):
        check_instance("model", "x", nn.Module, "an nn.Module")


@pytest.mark.parametrize("value", [0, 0.0, 2, np.float32(0.5)])
def test_check_nonnegative_float_accepts(value: object) -> None:
    assert check_nonnegative_float("eps", value) == float(value)


@pytest.mark.parametrize("value,exc", [(True, TypeError), ("0.1", TypeError), (None, TypeError),
                                       (-1.0, ValueError), (math.nan, ValueError), (math.inf, ValueError)])
def test_check_nonnegative_float_refuses(value: object, exc: type[Exception]) -> None:
    with pytest.raises(exc, match="eps must be"):
        check_nonnegative_float("eps", value)


# ------------------------------------------------------------------------------------------------ blocks
@pytest.mark.parametrize("build", [
    lambda v: TimepointHeads(4, shared_progression=v),
    lambda v: DifferenceWeighting(4, spatial_dims=2, affine=v),
    lambda v: EfficientSelfAttention(8, qkv_bias=v),
], ids=["shared_progression", "affine", "qkv_bias"])
@pytest.mark.parametrize("flag", ["false", None, 1])
def test_block_flags_must_be_bools(build, flag: object) -> None:  # noqa: ANN001
    # "false" used to count as True (TimepointHeads, qkv_bias); None as False
    with pytest.raises(TypeError, match="must be a bool"):
        build(flag)


def test_difference_weighting_checks_channels_and_eps() -> None:
    with pytest.raises(TypeError, match="channels must be an int"):
        DifferenceWeighting(None, spatial_dims=2)
    with pytest.raises(TypeError, match="channels must be an int"):
        DifferenceWeighting(True, spatial_dims=2)
    for eps in (math.nan, -1.0):
        with pytest.raises(ValueError, match="eps must be a finite number >= 0"):
            DifferenceWeighting(4, spatial_dims=2, eps=eps)
    assert DifferenceWeighting(4, spatial_dims=2, eps=0).norm.eps == 0.0


def test_st_block_names_ffn_dropout() -> None:
    with pytest.raises(ValueError, match="ffn_dropout must lie in"):
        STBlock(8, nn.Identity(), ffn_dropout=1.5)


def test_timepoint_heads_check_output_size() -> None:
    heads = TimepointHeads(4, spatial_dims=2)
    features = torch.zeros(1, 2, 4, 3, 3)
    for bad, exc in (((0, 6), ValueError), ((6.0, 6), TypeError), (6, TypeError), ((6, 6, 6), ValueError)):
        with pytest.raises(exc, match="output_size"):
            heads(features, output_size=bad)
    assert heads(features, output_size=(6, 5)).baseline.shape == (1, 1, 6, 5)


def test_encoder_stage_checks_num_timepoints() -> None:
    stage = EncoderStage(2, 8, [], kernel_size=3, stride=2)
    x = torch.zeros(2, 2, 8, 8)
    for bad, exc in ((0, ValueError), (-2, ValueError), (True, TypeError), (None, TypeError)):
        with pytest.raises(exc, match="num_timepoints"):
            stage(x, bad)
    assert stage(x, 2).shape == (2, 8, 4, 4)


def test_mlp_decoder_checks_in_dims() -> None:
    for bad in (None, 8):
        with pytest.raises(TypeError, match="in_dims must be a sequence of ints"):
            AllMLPDecoder(bad, 8)
    with pytest.raises(TypeError, match=r"in_dims\[1\] must be an int"):
        AllMLPDecoder([8, 2.5], 8)


def test_segformer_like_checks_parts_and_flag() -> None:
    heads = TimepointHeads(8, spatial_dims=2)
    enc, dec = nn.Identity(), nn.Identity()
    with pytest.raises(TypeError, match="encoder must be an nn.Module, got NoneType"):
        LongitudinalSegFormerLike(None, dec, heads, in_channels=2)
    with pytest.raises(TypeError, match="heads must be an nn.Module, got str"):
        LongitudinalSegFormerLike(enc, dec, "heads", in_channels=2)
    with pytest.raises(TypeError, match="instance_norm_bottleneck must be a bool"):
        LongitudinalSegFormerLike(enc, dec, heads, in_channels=2, instance_norm_bottleneck="false")


def test_init_segformer_weights_checks_module() -> None:
    with pytest.raises(TypeError, match="module must be an nn.Module, got NoneType"):
        init_segformer_weights(None)


# ------------------------------------------------------------------------------------------------ losses
@pytest.mark.parametrize("always_keep", [torch.tensor(True), torch.zeros(3, 1, 1, dtype=torch.bool)])
def test_select_progression_samples_checks_always_keep_rank(always_keep: torch.Tensor) -> None:
    non_empty = torch.tensor([[True], [False], [False]])
    with pytest.raises(ValueError, match="always_keep must have 1 or 2 dims"):  # was IndexError / RuntimeError
        select_progression_samples(non_empty, always_keep=always_keep)


# ----------------------------------------------------------------------------------------------- metrics
def test_spacing_refuses_strings_inside() -> None:
    mask = np.ones((3, 3, 3), dtype=bool)
    with pytest.raises(TypeError, match="spacing must hold numbers, got a string"):  # "1" was read as 1 mm
        hd95(mask, mask, ("1", 1.0, 1.0))


def test_lesion_matching_checks_labellings() -> None:
    labels = label_lesions(np.ones((3, 3, 3), dtype=bool))
    with pytest.raises(TypeError, match="gt must be a LesionLabels"):
        lesion_overlaps(np.ones((3, 3, 3)), labels)
    with pytest.raises(TypeError, match="pred must be a LesionLabels"):
        match_lesions(labels, None)


def test_paired_ttest_checks_tables() -> None:
    table = ResultsTable([{"case_id": "c0", "patient_id": "p0", "kind": "B", "dice": 0.5}])
    with pytest.raises(TypeError, match="a must be a ResultsTable, got list"):
        paired_ttest([], table, "dice")
    with pytest.raises(TypeError, match="b must be a ResultsTable, got NoneType"):
        paired_ttest(table, None, "dice")


# ------------------------------------------------------------------------------------------------ writers
def test_overwrite_must_be_a_bool(tmp_path) -> None:  # noqa: ANN001
    path = tmp_path / "rows.csv"
    write_csv(path, [{"a": 1}])
    before = path.read_bytes()
    with pytest.raises(TypeError, match="overwrite must be a bool"):  # "false" counted as True: replaced
        write_csv(path, [{"a": 2}], overwrite="false")
    assert path.read_bytes() == before
    with pytest.raises(TypeError, match="overwrite must be a bool"):
        with atomic_directory(tmp_path / "out", overwrite="no"):
            pass


# ------------------------------------------------------------------------------------------------ engine
def test_weight_decay_must_be_finite() -> None:
    for bad in (math.nan, math.inf):
        with pytest.raises(ValueError, match="weight_decay must be a finite number >= 0"):
            param_groups_weight_decay(nn.Linear(2, 2), bad)


# -------------------------------------------------------------------------------------------------- data
def test_sample_center_checks_its_probabilities() -> None:
    from longiseg.data import LongitudinalCase, build_sampling_index, sample_center

    mask = np.zeros((4, 4, 4), dtype=np.uint8)
    mask[1, 1, 1] = 1
    case = LongitudinalCase(images=np.zeros((2, 1, 4, 4, 4), np.float32), baseline_mask=mask,
                            progression_masks=mask[None], affine=np.eye(4), spacing=(1.0, 1.0, 1.0),
                            modalities=("flair",), case_id="c0")
    index = build_sampling_index(case)
    rng = np.random.default_rng(0)
    assert sample_center(index, rng, 0.5)[0] is not None
    for name, kwargs, exc in (("lesion_weight", {"lesion_weight": math.nan}, ValueError),
                              ("progression_share", {"progression_share": "0.5"}, TypeError),
                              ("persisting_share", {"persisting_share": True}, TypeError)):
        with pytest.raises(exc, match=name):
            sample_center(index, rng, **{"lesion_weight": 0.5, **kwargs})
    with pytest.raises(TypeError, match="rng must be a numpy.random.Generator, got int"):
        sample_center(index, 0, 0.5)
