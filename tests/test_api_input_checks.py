"""Bad arguments to public functions and classes raise a TypeError/ValueError that names the argument.

Each row was found by perturbing one argument of a valid call; before the fix it was accepted silently or
failed deep inside torch/NumPy. All inputs are tiny, so the module runs in about a second.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn

from longiseg.data import LongitudinalAugment, TimepointVariation, build_sampling_index
from longiseg.engine.optim import param_groups_weight_decay
from longiseg.losses import select_progression_samples
from longiseg.metrics import (
    ResultsTable,
    SizeBins,
    evaluate_longitudinal_case,
    hd95,
    label_lesions,
    lesion_overlaps,
    match_lesions,
    paired_ttest,
    significance_stars,
    stratified_lesion_metrics,
    tertile_bins,
    write_csv,
)
from longiseg.networks.blocks import (
    AllMLPDecoder,
    DifferenceWeighting,
    EfficientSelfAttention,
    EncoderStage,
    FusedDualHead,
    GlobalSelfAttention,
    LongitudinalSegFormerLike,
    MixFFN,
    OverlapPatchEmbed,
    STBlock,
    TimepointHeads,
    init_segformer_weights,
)
from longiseg.utils.io import atomic_directory
from longiseg.utils.validation import check_callable, check_instance, check_nonnegative_float


# ------------------------------------------------------------------------------------------- shared helpers
def test_check_instance_names_the_argument() -> None:
    assert check_instance("model", nn.Identity(), nn.Module, "an nn.Module").__class__ is nn.Identity
    with pytest.raises(TypeError, match="model must be an nn.Module, got str"):
        check_instance("model", "x", nn.Module, "an nn.Module")


def test_check_callable_names_the_argument() -> None:
    assert check_callable("fn", len) is len
    assert check_callable("fn", None, optional=True) is None
    with pytest.raises(TypeError, match=r"^fn must be callable, got NoneType$"):
        check_callable("fn", None)
    with pytest.raises(TypeError, match=r"^after_case must be a callable \(source, folder\) or None, got int$"):
        check_callable("after_case", 3, "a callable (source, folder)", optional=True)


def test_prediction_hooks_must_be_callable(tmp_path: Path) -> None:
    from longiseg.data.predictions import save_prediction
    from longiseg.inferers.predict import predict_folder

    masks = [np.zeros((2, 2, 2), np.uint8)] * 2
    with pytest.raises(TypeError, match="before_publish must be a callable"):
        save_prediction(tmp_path / "out", "c", np.eye(4), {"mask": masks}, before_publish="native")
    assert not (tmp_path / "out").exists()
    (tmp_path / "in").mkdir()
    with pytest.raises(TypeError, match="after_case must be a callable"):
        predict_folder(nn.Identity(), tmp_path / "in", tmp_path / "out", after_case=1)
    with pytest.raises(TypeError, match="passes predict_case's settings only"):
        predict_folder(nn.Identity(), tmp_path / "in", tmp_path / "out", before_publish=print)


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


def test_encoder_stage_names_dim_and_blocks() -> None:
    for bad, exc in ((0, ValueError), ("8", TypeError)):
        with pytest.raises(exc, match="^dim must be"):  # was reported as embed_dim (OverlapPatchEmbed's name)
            EncoderStage(2, bad, [], kernel_size=3, stride=2)
    with pytest.raises(TypeError, match="blocks must be a sequence"):  # None was taken as no blocks
        EncoderStage(2, 8, None, kernel_size=3, stride=2)
    with pytest.raises(TypeError, match=r"blocks\[0\] must be an nn.Module, got int"):
        EncoderStage(2, 8, [1], kernel_size=3, stride=2)
    assert len(EncoderStage(2, 8, nn.ModuleList([nn.Identity()]), kernel_size=3, stride=2).blocks) == 1


@pytest.mark.parametrize("block,shape,extra", [
    (OverlapPatchEmbed(2, 8, kernel_size=3, stride=2), (2, 2, 4, 4), ()),
    (EncoderStage(2, 8, [], kernel_size=3, stride=2), (2, 2, 4, 4), (1,)),
    (MixFFN(8), (1, 2, 2, 2, 8), ()),
    (EfficientSelfAttention(8), (1, 2, 2, 2, 8), ()),
    (GlobalSelfAttention(8), (1, 2, 2, 2, 8), ()),
    (STBlock(8, nn.Identity()), (1, 2, 2, 2, 8), ()),
    (TimepointHeads(4, spatial_dims=2), (1, 2, 4, 3, 3), ()),
    (FusedDualHead(4, 2, spatial_dims=2), (1, 4, 3, 3), ()),
    (DifferenceWeighting(4, spatial_dims=2), (1, 4, 3, 3), (torch.zeros(1, 4, 3, 3),)),
], ids=lambda v: type(v).__name__ if isinstance(v, nn.Module) else None)
@pytest.mark.parametrize("dtype", [torch.int64, torch.bool, torch.complex64])
def test_blocks_refuse_non_float_tensors(block: nn.Module, shape: tuple[int, ...], extra: tuple,
                                         dtype: torch.dtype) -> None:
    # was torch's "Input type (long int) and bias type (float) should be the same" from inside the layer
    with pytest.raises(TypeError, match="must be a floating-point tensor, got dtype"):
        block(torch.zeros(shape, dtype=dtype), *extra)
    block(torch.zeros(shape), *extra)  # float tensors pass


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


def test_evaluate_longitudinal_case_names_its_arguments() -> None:
    m = np.zeros((4, 4, 4), dtype=np.uint8)
    with pytest.raises(TypeError, match="pred_baseline must be a numpy.ndarray"):  # was called "pred"
        evaluate_longitudinal_case(None, m, [m], [m])
    with pytest.raises(ValueError, match="pred_baseline and gt_baseline must have the same shape"):
        evaluate_longitudinal_case(m[:3], m, [m], [m])
    with pytest.raises(TypeError, match=r"pred_progression\[0\] must be"):
        evaluate_longitudinal_case(m, m, [None], [m])
    for kwargs in ({"pred_progression": None}, {"gt_progression": 5}):  # len() errors before
        with pytest.raises(TypeError, match=f"{next(iter(kwargs))} must be a sequence of"):
            evaluate_longitudinal_case(**{"pred_baseline": m, "gt_baseline": m, "pred_progression": [m],
                                          "gt_progression": [m], **kwargs})
    rows, _ = evaluate_longitudinal_case(m, m, m[None], [m])
    assert [r["kind"] for r in rows] == ["B", "NP"]
    # no follow-up: the case was scored on its baseline alone and silently left out of the P/NP/DAA averages
    for given in ([], m[:0]):
        with pytest.raises(ValueError, match="pred_progression holds no follow-up"):
            evaluate_longitudinal_case(m, m, given, given)
    # one (D, H, W) array was read as D follow-ups of (H, W) masks
    with pytest.raises(ValueError, match=r"pred_progression is one array of the baseline's shape \(4, 4, 4\)"):
        evaluate_longitudinal_case(m, m, m, m)


def test_tertile_bins_names_nan() -> None:
    with pytest.raises(ValueError, match="volumes_mm3 contains NaN"):  # was "too uniform"
        tertile_bins([1.0, math.nan, 3.0, 4.0])
    for bad in (None, "abc", ["1", "2", "3"], [True, False, True]):
        with pytest.raises(TypeError, match="volumes_mm3 must be an array of lesion volumes"):
            tertile_bins(bad)


def test_size_bins_and_stratified_metrics_check_types() -> None:
    for bad in (None, "12", 5):
        with pytest.raises(TypeError, match="thresholds must be a sequence"):
            SizeBins(bad)
    for bad in (("84", "208"), (True, 2.0)):  # "84" was read as 84 mm^3, True as 1
        with pytest.raises(TypeError, match=r"thresholds\[0\] must be a number"):
            SizeBins(bad)
    with pytest.raises(TypeError, match="names must be a sequence"):  # "abc" gave the bins names "a", "b", "c"
        SizeBins((84.0, 208.0), names="abc")
    with pytest.raises(TypeError, match=r"names\[0\] must be a bin name \(str\), got int"):
        SizeBins((84.0, 208.0), names=(1, 2, 3))
    assert SizeBins([84, 208], names=["s", "m", "l"]).names == ("s", "m", "l")
    with pytest.raises(TypeError, match="detections must be a sequence"):
        stratified_lesion_metrics(None)
    with pytest.raises(TypeError, match=r"detections\[0\] must be a LesionDetection, got int"):
        stratified_lesion_metrics([1], (84.0, 208.0))
    for bad in (None, 5):
        with pytest.raises(TypeError, match="bins must be SizeBins, a threshold sequence or 'tertiles'"):
            stratified_lesion_metrics([], bad)


def test_results_table_and_stars_check_types() -> None:
    for bad in (None, "abc"):
        with pytest.raises(TypeError, match="rows must be a sequence"):
            ResultsTable(bad)
    with pytest.raises(TypeError, match=r"rows\[0\] must be a dict"):
        ResultsTable([1])
    with pytest.raises(TypeError, match="model must be a str, got NoneType"):
        ResultsTable([], model=None)
    assert significance_stars(0.001) == "**" and significance_stars(None) == significance_stars(math.nan) == ""
    for bad in ("0.01", True):
        with pytest.raises(TypeError, match="pvalue must be a float"):
            significance_stars(bad)
    with pytest.raises(TypeError, match="levels must be a mapping"):
        significance_stars(0.01, levels="a")
    with pytest.raises(TypeError, match="levels threshold must be a float, got str"):
        significance_stars(0.01, levels={"x": "*"})
    assert significance_stars(0.001, levels={0.001: "***", 0.01: "**"}) == "**"


# ------------------------------------------------------------------------------------------------ writers
def test_write_csv_checks_rows(tmp_path) -> None:  # noqa: ANN001
    for bad in ("abc", None, {"a": 1}):  # "abc" gave AttributeError 'str' object has no attribute 'items'
        with pytest.raises(TypeError, match="rows must be a sequence"):
            write_csv(tmp_path / "x.csv", bad)
    with pytest.raises(TypeError, match=r"rows\[1\] must be a dict"):
        write_csv(tmp_path / "x.csv", [{"a": 1}, 1])
    assert not any(tmp_path.iterdir())
    write_csv(tmp_path / "x.csv", ({"a": i} for i in range(2)))  # a generator of rows still works
    assert (tmp_path / "x.csv").read_text() == "a\n0\n1\n"



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
def test_all_reduce_mean_checks_mapping() -> None:
    from longiseg.engine.distributed import all_reduce_mean

    for bad in (None, [1.0, 2.0], "ab"):  # were "not iterable", IndexError, "string indices"
        with pytest.raises(TypeError, match="metrics must be a mapping"):
            all_reduce_mean(bad)
    with pytest.raises(TypeError, match="metrics key 1 must be a str"):  # was '<' not supported
        all_reduce_mean({1: 1.0, "a": 2.0})
    assert all_reduce_mean({"b": np.float32(0.5), "a": torch.tensor(2)}) == {"a": 2.0, "b": 0.5}



def test_weight_decay_must_be_finite() -> None:
    for bad in (math.nan, math.inf):
        with pytest.raises(ValueError, match="weight_decay must be a finite number >= 0"):
            param_groups_weight_decay(nn.Linear(2, 2), bad)


# -------------------------------------------------------------------------------------------------- data
def test_sample_center_checks_its_probabilities() -> None:
    from longiseg.data import LongitudinalCase, sample_center

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


def test_sampling_index_and_demo_case_check_types() -> None:
    from longiseg.data import generate_demo_case

    with pytest.raises(TypeError, match="case must be a LongitudinalCase, got NoneType"):
        build_sampling_index(None)
    for bad in ("x", {}):  # "x": AttributeError; {} silently meant the defaults
        with pytest.raises(TypeError, match="config must be a DemoCohortConfig or None"):
            generate_demo_case(0, config=bad)
    for name in ("progressing", "with_lesion_masks"):  # "false" counted as True
        with pytest.raises(TypeError, match=f"{name} must be a bool, got str 'false'"):
            generate_demo_case(0, **{name: "false"})


@pytest.mark.parametrize("build,name,exc", [
    (lambda: LongitudinalAugment(max_angle="10"), "max_angle must be a number", TypeError),
    (lambda: LongitudinalAugment(max_angle=True), "max_angle must be a number", TypeError),
    (lambda: LongitudinalAugment(intensity_range=("0.9", "1.1")), r"intensity_range\[0\] must be a number", TypeError),
    (lambda: LongitudinalAugment(intensity_range=None), "intensity_range must be a", TypeError),
    (lambda: LongitudinalAugment(intensity_range=(0.9,)), "intensity_range must be a", ValueError),
    (lambda: LongitudinalAugment(intensity_range=(0.9, math.inf)), r"intensity_range\[1\] must be a finite", ValueError),
    (lambda: TimepointVariation(gain_range=(True, True)), r"gain_range\[0\] must be a number", TypeError),
    (lambda: TimepointVariation(bias_field_std="0.1"), "bias_field_std must be a number", TypeError),
    (lambda: TimepointVariation(noise_std=False), "noise_std must be a number", TypeError),
    (lambda: TimepointVariation(max_shift=True), "max_shift must be a number", TypeError),
    (lambda: TimepointVariation(max_angle=None), "max_angle must be a number", TypeError),
    (lambda: TimepointVariation(max_angle=math.nan), "max_angle must be a finite number", ValueError),
])
def test_augment_refuses_strings_and_bools_for_numbers(build, name: str, exc: type[Exception]) -> None:  # noqa: ANN001
    # "10" was read as 10 degrees, True as 1, an infinite range accepted
    with pytest.raises(exc, match=name):
        build()


def test_augment_flags() -> None:
    assert LongitudinalAugment(independent_timepoints=np.bool_(False)).timepoint_variation is None
    with pytest.raises(TypeError, match="independent_timepoints must be a bool or a TimepointVariation"):
        LongitudinalAugment(independent_timepoints="false")


# ------------------------------------------------------------------------------------------------ inferers
def test_blend_weights_checks_window_and_sigma() -> None:
    from longiseg.inferers import blend_weights

    for bad in (None, 4, "44"):  # "44" gave a (4, 4) window
        with pytest.raises(TypeError, match="window must be a sequence of ints"):
            blend_weights(bad)
    for bad in ((4.5, 4), (True, 4)):  # 4.5 was truncated to 4, True read as 1
        with pytest.raises(TypeError, match=r"window\[0\] must be an int"):
            blend_weights(bad)
    for bad, exc in ((None, TypeError), ("0.1", TypeError), (math.inf, ValueError), (math.nan, ValueError)):
        with pytest.raises(exc, match="sigma_scale must be a"):
            blend_weights((4, 4), "gaussian", sigma_scale=bad)
    assert blend_weights(np.array([2, 3]), "gaussian").shape == (2, 3)
    for blend in ("constant", "gaussian"):  # torch's own errors came through (a missing driver, an MPS backend)
        with pytest.raises(ValueError, match="device 'cuda:99'"):
            blend_weights((4, 4), blend, device="cuda:99")
        with pytest.raises(ValueError, match="device 'gpu' is not a device"):
            blend_weights((4, 4), blend, device="gpu")


# ------------------------------------------------------------------------------------------------ bridges
def test_nnunet_case_checks_images() -> None:
    from longiseg.bridges import NnUNetCase

    for bad in (None, "ab"):  # None: len() error; "ab": accepted as two channels
        with pytest.raises(TypeError, match="case 'c1' images must be a sequence"):
            NnUNetCase("c1", bad, None)
    for bad in ([None], ["a"]):  # accepted, failed when written
        with pytest.raises(TypeError, match=r"case 'c1' images\[0\] must be a numpy array or torch tensor"):
            NnUNetCase("c1", bad, None)
    with pytest.raises(TypeError, match=r"images\[0\] must have a numeric dtype"):
        NnUNetCase("c1", [np.array([["a"]])], None)
    assert len(NnUNetCase("c1", np.zeros((2, 3, 3, 3), np.float32), None).images) == 2


# ------------------------------------------------------------------------------------- utils, registration, reports
def test_foreground_slices_checks_margin() -> None:
    from longiseg.utils.masks import foreground_slices

    mask = np.zeros((4, 4), bool)
    mask[1, 1] = True
    # 2.5 and nan gave float/NaN slice bounds, True was read as 1, -1 gave an empty box
    for bad, exc in ((2.5, TypeError), (math.nan, TypeError), (True, TypeError), ("1", TypeError), (-1, ValueError)):
        with pytest.raises(exc, match="margin must be"):
            foreground_slices(mask, margin=bad)
    assert foreground_slices(mask, margin=np.int64(1)) == (slice(0, 3), slice(0, 3))


def test_load_nifti_checks_header_only(tmp_path) -> None:  # noqa: ANN001
    from longiseg.utils.nifti import atomic_save_nifti, load_nifti

    path = atomic_save_nifti(np.zeros((2, 2, 2), np.float32), np.eye(4), tmp_path / "a.nii.gz")
    for bad in ("false", None, 1):  # "false" read the voxels header-only, None read them
        with pytest.raises(TypeError, match="header_only must be a bool"):
            load_nifti(path, header_only=bad)


def test_checkerboard_checks_squares() -> None:
    from longiseg.registration.qc_figure import checkerboard

    a, b = np.zeros((4, 4)), np.ones((4, 4))
    for bad, exc in ((2.5, TypeError), (math.nan, TypeError), (True, TypeError), (0, ValueError), (-1, ValueError)):
        with pytest.raises(exc, match="squares must be"):  # all gave a board silently (nan: all b)
            checkerboard(a, b, squares=bad)
    assert checkerboard(a, b, squares=2)[0, 0] == 0 and checkerboard(a, b, squares=2)[0, 2] == 1


@pytest.mark.parametrize("field,bad,exc", [
    ("histogram_bins", math.nan, TypeError), ("histogram_bins", math.inf, TypeError), ("histogram_bins", "32", TypeError),
    ("histogram_bins", 3, ValueError), ("iterations", True, TypeError), ("iterations", 2.5, TypeError),
    ("iterations", 0, ValueError), ("sampling", True, TypeError), ("sampling", "0.1", TypeError),
])
def test_pair_options_check_fields(field: str, bad: object, exc: type[Exception]) -> None:
    from longiseg.registration.pairwise import PairOptions

    with pytest.raises(exc, match=f"{field} must be"):  # nan/inf bins, True/2.5 iterations were accepted
        PairOptions(**{field: bad})


@pytest.mark.parametrize("field,bad,exc", [
    ("register_modalities", "false", TypeError), ("n4", "false", TypeError), ("n4", None, TypeError),
    ("qc_figures", 0, TypeError), ("keep_failed", "no", TypeError), ("pair", None, TypeError),
    ("pair", {}, TypeError), ("reference_modality", None, TypeError),
])
def test_registration_options_check_fields(field: str, bad: object, exc: type[Exception]) -> None:
    from longiseg.registration.cohort import RegistrationOptions

    # "false" counted as True; pair=None failed at registration; reference_modality=None: AttributeError
    with pytest.raises(exc, match=f"{field} must be"):
        RegistrationOptions(**{field: bad})


def test_transform_filename_checks_followup() -> None:
    from longiseg.registration.cohort import transform_filename

    for bad, exc in ((True, TypeError), (1.0, TypeError), (math.nan, TypeError), (None, TypeError), (-1, ValueError)):
        with pytest.raises(exc, match="followup must be"):  # gave 'tTrue.tfm', 't1.0.tfm', 'tnan.tfm'
            transform_filename(bad)
    assert transform_filename(np.int64(2), "t2") == "t2_t2.tfm"


def test_register_case_checks_options_and_overwrite(tmp_path) -> None:  # noqa: ANN001
    pytest.importorskip("SimpleITK")
    from longiseg.registration.cohort import register_case, register_folder

    for kwargs, match in (({"options": "rigid"}, "options must be a RegistrationOptions"),
                          ({"options": {}}, "options must be a RegistrationOptions"),
                          ({"overwrite": "false"}, "overwrite must be a bool")):
        with pytest.raises(TypeError, match=match):  # "rigid": AttributeError; {}: the default options
            register_case(tmp_path / "raw" / "c1", tmp_path / "out", **kwargs)
        with pytest.raises(TypeError, match=match):
            register_folder(tmp_path / "raw", tmp_path / "out", **kwargs)
    with pytest.raises(TypeError, match="progress must be a bool"):
        register_folder(tmp_path / "raw", tmp_path / "out", progress="false")


def test_n4_correct_checks_shrink() -> None:
    sitk = pytest.importorskip("SimpleITK")
    from longiseg.registration.pairwise import n4_correct

    image = sitk.GetImageFromArray(np.ones((4, 4, 4), np.float32))
    for bad, exc in ((2.5, TypeError), (math.nan, TypeError), (True, TypeError), (0, ValueError)):
        with pytest.raises(exc, match="shrink must be"):  # all were accepted (clamped to 1)
            n4_correct(image, shrink=bad)


@pytest.mark.parametrize("flag", ["figures", "overwrite", "progress"])
def test_run_lesion_report_checks_flags(tmp_path, flag: str) -> None:  # noqa: ANN001
    from longiseg.workflows.lesions import run_lesion_report

    (tmp_path / "masks").mkdir()
    with pytest.raises(TypeError, match=f"{flag} must be a bool"):  # "false" counted as True (overwrite: replaced)
        run_lesion_report(tmp_path / "masks", tmp_path / "rep", **{flag: "false"})


@pytest.mark.parametrize("flag", ["montages", "overwrite", "progress"])
def test_write_lesion_report_checks_flags(tmp_path, flag: str) -> None:  # noqa: ANN001
    from longiseg.reports.lesion_report import write_lesion_report

    with pytest.raises(TypeError, match=f"{flag} must be a bool"):
        write_lesion_report([], tmp_path, tmp_path / "rep", **{flag: "false"})


def test_grid_shape_and_isotropic_spacing_are_checked() -> None:
    # Grid((6.5, 6, 6)) was truncated to (6, 6, 6) and (True, 6, 6) became (1, 6, 6); spacing=True was 1 mm
    from longiseg.registration.grid import Grid, isotropic_grid

    grid = Grid(np.array([6, 6, 6]), np.eye(4))
    assert grid.shape == (6, 6, 6) and all(type(s) is int for s in grid.shape)
    for shape in ((6.5, 6, 6), (True, 6, 6)):
        with pytest.raises(TypeError, match=r"shape\[0\] must be an int"):
            Grid(shape, np.eye(4))
    with pytest.raises(ValueError, match="shape must have 3 entries"):
        Grid((6, 6), np.eye(4))
    assert isotropic_grid(grid, np.float32(2.0)).shape == (3, 3, 3)
    with pytest.raises(TypeError, match="spacing must be a number > 0, got bool"):
        isotropic_grid(grid, True)
    with pytest.raises(ValueError, match="spacing must be a finite number > 0, got nan"):
        isotropic_grid(grid, math.nan)
    with pytest.raises(TypeError, match="grid must be a Grid, got NoneType"):
        isotropic_grid(None, 2.0)  # type: ignore[arg-type]


def test_read_split_takes_a_str_path(tmp_path) -> None:  # noqa: ANN001
    # read_split("RUN/split.json") failed with AttributeError: 'str' object has no attribute 'read_text'
    import json

    from longiseg.workflows.train import read_split

    path = tmp_path / "split.json"
    path.write_text(json.dumps({"data_root": "/data", "validation": ["c1"]}), encoding="utf-8")
    assert read_split(str(path)) == {"data_root": "/data", "validation": ["c1"], "train": []}
    with pytest.raises(FileNotFoundError):
        read_split(str(tmp_path / "missing.json"))


# ------------------------------------------------------------------------------------------- the data layer on disk
def _wrong_type_calls() -> list:
    """(function, args, kwargs, message) rows: the data layer, then every other function that takes a path."""
    from longiseg.bridges import (
        check_nnunet_raw_dataset,
        convert_longiseg_dataset,
        import_nnunet_predictions,
        write_nnunet_dataset,
    )
    from longiseg.data import (
        case_spatial_header,
        find_cases,
        find_mask_cases,
        generate_demo_cohort,
        load_case,
        manifest_from_cases,
        prediction_complete,
        read_manifest,
        read_prediction,
        validate_cases,
        write_manifest,
        write_test_split,
    )
    from longiseg.data.claims import claim_case, release_claim
    from longiseg.data.cohort import case_source, scan_cohort
    from longiseg.data.layout import find_nifti, image_timepoint, parse_image_filename, scan_images
    from longiseg.data.loading import check_case_headers, check_case_voxels, load_cases
    from longiseg.data.manifest import ManifestEntry
    from longiseg.data.sources import CaseSource, build_mask
    from longiseg.engine import build_model_from_checkpoint, load_checkpoint, read_config_file, save_config
    from longiseg.engine.checkpoint import check_writable, load_model, update_spec
    from longiseg.engine.trainer import check_fresh_start
    from longiseg.inferers import predict_folder
    from longiseg.inferers.provenance import check_same_producer, prediction_record
    from longiseg.metrics import evaluate_folder
    from longiseg.metrics.evolution import evolution_folder
    from longiseg.registration.native import case_to_native, native_grid, predictions_to_native
    from longiseg.ssm import Mamba
    from longiseg.workflows.demo import DemoConfig, demo_experiment, write_cohort
    from longiseg.workflows.figures import plot_training_curves
    from longiseg.workflows.train import read_split
    from longiseg.workflows.tune import run_tuning

    return [
        (find_cases, (123,), {}, "root must be a path"),
        (find_cases, (".",), {"modalities": "flair"}, "modalities must be a sequence"),  # not five one-letter names
        (find_cases, (".",), {"require_masks": "yes"}, "require_masks must be a bool"),
        (find_mask_cases, (123,), {}, "root must be a path"),
        (scan_cohort, (None,), {}, "root must be a path"),
        (load_case, (123,), {}, "source must be a CaseSource or the path of a case folder"),
        (case_source, (None,), {}, "source must be a CaseSource"),
        (case_spatial_header, (1.5,), {}, "source must be a CaseSource"),
        (check_case_headers, (3,), {}, "source must be a CaseSource"),
        (check_case_voxels, ("p0",), {}, "sources must be a sequence"),
        (check_case_voxels, ([],), {"reader": "load_case"}, "reader must be a callable taking a CaseSource"),
        (load_cases, (5,), {}, "sources must be a sequence"),
        (validate_cases, (123,), {}, "cases must be a cohort folder"),
        (validate_cases, (["p0"],), {}, r"cases\[0\] must be a CaseSource"),
        (read_manifest, (None,), {}, "path must be a path"),
        (write_manifest, ("m.json", {}), {}, "manifest must be a Manifest"),
        (manifest_from_cases, ("abc",), {}, "cases must be a sequence"),
        (read_prediction, (1, "a", 2), {}, "root must be a path"),
        (prediction_complete, (1, "a", 2), {}, "root must be a path"),
        (build_mask, ("x", "p0"), {}, "spec must be a MaskSpec"),
        (claim_case, (None, "a"), {}, "out_dir must be a path"),
        (release_claim, (None, {}), {}, "path must be a path"),
        (prediction_record, ("m", None, {}), {}, "model must be an nn.Module"),
        (prediction_record, (nn.Identity(), None, [1]), {}, "settings must be a mapping"),
        (check_same_producer, (None, "a", {}), {}, "folder must be a path"),
        (check_same_producer, (".", "a", 5), {}, "record must be a mapping"),
        (check_nnunet_raw_dataset, (1,), {}, "folder must be a path"),
        (Mamba, (16,), {"conv_bias": "no"}, "conv_bias must be a bool"),  # "no" built a bias
        (ManifestEntry, ("a", "a", 2, None), {"baseline_annotated": "no"}, "baseline_annotated must be a bool"),
        (ManifestEntry, ("a", None, 2, None), {}, "patient_id must be a str"),
        (ManifestEntry, ("a", "a", None, "yes"), {}, "progression must be a bool"),
        (CaseSource, ("a", ("flair",), (("t0.nii.gz",), ("t1.nii.gz",))), {"baseline_annotated": 0},
         "baseline_annotated must be a bool"),
        (check_nnunet_raw_dataset, (".",), {"check_geometry": "no"}, "check_geometry must be a bool"),
        (generate_demo_cohort, ("cohort",), {"overwrite": "no"}, "overwrite must be a bool"),
        (load_checkpoint, ("last.pt",), {"restore_rng": "yes"}, "restore_rng must be a bool"),
        (convert_longiseg_dataset, (".", 2.5, 1, "Demo"), {}, "out_root must be a path"),
        (import_nnunet_predictions, (1, "out"), {}, "pred_dir must be a path"),
        (write_nnunet_dataset, (1, 1, "Demo", [], ["flair"]), {}, "out_root must be a path"),
        (generate_demo_cohort, (1,), {}, "out_dir must be a path"),
        (write_test_split, (1, "out", 1), {}, "cohort must be a path"),
        (parse_image_filename, (1,), {}, "name must be a path"),
        (image_timepoint, (1,), {}, "name must be a path"),
        (find_nifti, (1, "baseline_mask.nii.gz"), {}, "folder must be a path"),
        (find_nifti, (".", None), {}, "name must be a file name"),
        (scan_images, (1,), {}, "folder must be a path"),
        (load_checkpoint, (1,), {}, "path must be a path"),
        (build_model_from_checkpoint, (1,), {}, "path must be a path"),
        (load_model, (1,), {}, "path must be a path"),
        (update_spec, (1, None), {}, "path must be a path"),
        (check_writable, (1,), {}, "path must be a path"),
        (read_config_file, (1,), {}, "path must be a path"),
        (save_config, ({}, 1), {}, "path must be a path"),
        (check_fresh_start, (1,), {}, "output_dir must be a path"),
        (predict_folder, (nn.Identity(), 1, "out"), {}, "in_dir must be a path"),
        (evaluate_folder, (1, "."), {}, "pred_dir must be a path"),
        (evolution_folder, (1,), {}, "root must be a path"),
        (native_grid, (1, 0), {}, "registration_dir must be a path"),
        (case_to_native, (1, ".", "out"), {}, "case_dir must be a path"),
        (predictions_to_native, (1, ".", "out"), {}, "pred_dir must be a path"),
        (write_cohort, (1, None, 1), {}, "out must be a path"),
        (read_split, (1,), {}, "path must be a path"),
        (run_tuning, (1,), {}, "run_dir must be a path"),
        (demo_experiment, (None, "SegMaST", "train", "run"), {}, "cfg must be a DemoConfig"),
        (demo_experiment, (DemoConfig(), "nope", "train", "run"), {}, "label must be one of"),
        (plot_training_curves, (1, "curves.png"), {}, "runs must be a mapping"),
    ]


@pytest.mark.parametrize("call", range(len(_wrong_type_calls())))
def test_arguments_of_the_wrong_type_are_named(call: int, tmp_path, monkeypatch) -> None:  # noqa: ANN001
    """Found by calling each public function of the data layer, and each that takes a path, with a value of another
    type: before 0.3.13 they failed in pathlib ("expected str, bytes or os.PathLike object") or with an
    AttributeError, and find_cases(modalities="flair") looked for five one-letter modalities."""
    monkeypatch.chdir(tmp_path)  # nothing is written anywhere, and relative paths stay in here
    fn, args, kwargs, message = _wrong_type_calls()[call]
    with pytest.raises((TypeError, ValueError), match=message):
        fn(*args, **kwargs)
    assert list(tmp_path.iterdir()) == []


def _fuzzed_rows() -> list:
    """Rows found by a one-argument-at-a-time fuzz of the public API (0.3.18): each raised something other than
    a TypeError/ValueError naming the argument, or passed silently."""
    from longiseg.inferers import TriplanarInferer
    from longiseg.inferers.predict import infer_case
    from longiseg.inferers.sliding_window import predict_probabilities
    from longiseg.losses import ImbalanceAwareLoss
    from longiseg.losses.imbalance import progression_presence
    from longiseg.metrics import ResultsTable, evaluate_longitudinal_case, format_paper_table, paired_ttest
    from longiseg.networks.output import LongitudinalOutput

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.w = nn.Parameter(torch.ones(()))

        def forward(self, x: torch.Tensor) -> LongitudinalOutput:
            return LongitudinalOutput(x[:, 0, :1] * self.w, x[:, 1:, :1] * self.w)

    x = torch.zeros(1, 2, 1, 4, 4)
    images = np.zeros((2, 1, 4, 4, 4), np.float32)
    table = ResultsTable([{"case_id": "c", "patient_id": "p", "kind": "B", "dice": 0.5}], "m")
    out = LongitudinalOutput(torch.zeros(2, 1, 4, 4), torch.zeros(2, 1, 1, 4, 4))
    m = np.zeros((4, 4, 4), np.uint8)
    return [
        # int / bool batches were cast silently (a complex one lost its imaginary part); "no" was a true amp
        (lambda: predict_probabilities(Net(), x.long()), TypeError, "x must be a floating-point tensor"),
        (lambda: predict_probabilities(Net(), x, amp="no"), TypeError, "amp must be a bool"),
        (lambda: infer_case(None, Net(), images, None, np.eye(4)), TypeError, "inferer must be an Inferer"),
        # a complex brain mask failed inside torch.unique
        (lambda: TriplanarInferer(patch_size=4)(Net(), images, m.astype(np.complex64)), TypeError,
         "brain_mask must be a binary mask of bool, int or float dtype"),
        (lambda: paired_ttest(table, table, "dice", kind=1), TypeError, "kind must be a str"),
        (lambda: format_paper_table(None), TypeError, "tables must be a ResultsTable"),
        (lambda: format_paper_table([table], digits=-1), ValueError, "digits must be >= 0"),
        (lambda: evaluate_longitudinal_case(m, m, [m], [m], case_id=None), TypeError, "case_id must be a str"),
        (lambda: progression_presence(torch.zeros(1, 1, 1, 4, dtype=torch.complex64)), TypeError,
         "progression_target must be a real"),
        (lambda: ImbalanceAwareLoss(seed=0)(out, torch.zeros(2, 1, 4, 4, dtype=torch.complex64),
                                            torch.zeros(2, 1, 1, 4, 4)), TypeError, "baseline_target must be a real"),
    ]


@pytest.mark.parametrize("row", range(10))
def test_fuzzed_arguments_are_named(row: int) -> None:
    call, error, match = _fuzzed_rows()[row]
    with pytest.raises(error, match=match):
        call()


def test_more_fuzzed_arguments_are_named(tmp_path: Path) -> None:
    # strict="no" loaded strictly (a true value); list_models(tag=-1) matched nothing without a word; an inf
    # intensity gave a registration correlation of 0.0; a bool volume reached SimpleITK's own message
    from longiseg import list_models
    from longiseg.engine.checkpoint import load_checkpoint, save_checkpoint
    from longiseg.registration.pairwise import similarity

    save_checkpoint(tmp_path / "x.pt", model=nn.Linear(2, 2))
    with pytest.raises(TypeError, match="strict must be a bool"):
        load_checkpoint(tmp_path / "x.pt", model=nn.Linear(2, 2), strict="no")
    with pytest.raises(TypeError, match="tag must be a str or None"):
        list_models(tag=-1)
    a = np.random.default_rng(0).random((4, 4, 4))
    with pytest.raises(ValueError, match=r"b \(inside mask\) contains NaN or infinite"):
        similarity(a, np.where(a > 0.5, np.inf, a), np.ones(a.shape, bool))
    pytest.importorskip("SimpleITK")
    from longiseg.registration.grid import to_sitk

    with pytest.raises(TypeError, match="array has dtype bool, which SimpleITK images cannot hold"):
        to_sitk(np.zeros((2, 2, 2), bool), np.eye(4))


def test_half_precision_probabilities_are_post_processed_as_float32() -> None:
    # bfloat16 probabilities (a model run under autocast) failed in Tensor.numpy() ("Got unsupported ScalarType
    # BFloat16") in every post-processing function; each value is exact in float32
    from longiseg.inferers.postprocessing import (
        new_lesion_probability,
        postprocess_heads,
        threshold_probabilities,
    )

    g = torch.Generator().manual_seed(0)
    base, prog = torch.rand(6, 7, 5, generator=g), torch.rand(2, 6, 7, 5, generator=g)
    bb, pb = base.bfloat16(), prog.bfloat16()
    assert np.array_equal(threshold_probabilities(bb, 0.5), bb.float().numpy() >= 0.5)
    got = new_lesion_probability(bb, pb)
    assert got.dtype == np.float32
    assert np.array_equal(got, new_lesion_probability(bb.float(), pb.float()))
    heads = postprocess_heads(bb, pb, threshold=0.4, restrict="none")
    ref = postprocess_heads(bb.float(), pb.float(), threshold=0.4, restrict="none")
    assert np.array_equal(heads.baseline, ref.baseline) and np.array_equal(heads.progression, ref.progression)


def test_zero_followups_are_named() -> None:
    # T-1 = 0 reached torch.cat ("expected a non-empty list") and prog[0] (IndexError)
    from longiseg.inferers.postprocessing import new_lesion_probability
    from longiseg.losses import new_lesion_logits

    with pytest.raises(ValueError, match=r"progression_logits must hold at least one follow-up \(T-1 >= 1\)"):
        new_lesion_logits(torch.zeros(1, 1, 4, 4), torch.zeros(1, 0, 1, 4, 4))
    with pytest.raises(ValueError, match=r"progression_prob must hold at least one follow-up \(T-1 >= 1\)"):
        new_lesion_probability(np.zeros((3, 4, 4)), np.zeros((0, 3, 4, 4)))


def test_loss_hyperparameters_take_numpy_numbers() -> None:
    # smooth_dr=np.float32(1e-5) was refused ("must be a float, got float32") though the same module's counts,
    # build_model and the metrics take NumPy numbers; the losses must equal those of the Python numbers
    from longiseg.losses import ImbalanceAwareLoss, PerSampleDiceFocalLoss, num_empty_to_keep

    logits, target = torch.randn(3, 1, 6, 6), torch.rand(3, 1, 6, 6) > 0.7
    numpy_args = dict(lambda_dice=np.float32(1), lambda_focal=np.int64(1), gamma=np.float64(2), alpha=np.float32(0.25),
                      smooth_nr=np.float32(1e-5), smooth_dr=np.float32(1e-5))
    loss = PerSampleDiceFocalLoss(**numpy_args)
    assert all(type(getattr(loss, k)) is float for k in numpy_args)
    assert torch.equal(loss(logits, target), PerSampleDiceFocalLoss(**{k: float(v) for k, v in numpy_args.items()})(
        logits, target))
    imb = ImbalanceAwareLoss(empty_ratio=np.float32(0.5), min_empty=np.int64(1), seed=0)
    assert type(imb.empty_ratio) is float and type(imb.min_empty) is int
    assert num_empty_to_keep(4, 10, empty_ratio=np.float32(0.5)) == 2
    for bad, error, match in ((np.bool_(True), TypeError, "gamma must be a number >= 0, got bool"),
                              (np.float32("nan"), ValueError, "gamma must be a finite number >= 0, got nan")):
        with pytest.raises(error, match=match):
            PerSampleDiceFocalLoss(gamma=bad)
    with pytest.raises(ValueError, match=r"alpha must lie in \[0, 1\], got 1.5"):
        PerSampleDiceFocalLoss(alpha=np.float64(1.5))
    with pytest.raises(TypeError, match="min_empty must be an int, got float"):
        ImbalanceAwareLoss(min_empty=1.0)


def test_difference_weighting_checks_prior_against_current() -> None:
    # a float64 prior failed in torch ("mixed dtype (CPU)"), a bool one in the subtraction, an int or float16
    # prior was promoted silently, an empty batch raised IndexError inside the instance norm
    dw = DifferenceWeighting(4, spatial_dims=2)
    x = torch.randn(2, 4, 5, 5)
    for prior in (x.double(), x.half(), x.int(), x > 0):
        with pytest.raises(TypeError, match=f"prior must have current's dtype torch.float32, got {prior.dtype}"):
            dw(x, prior)
    with pytest.raises(ValueError, match="prior must be on current's device cpu, got meta"):
        dw(x, x.to("meta"))
    with pytest.raises(TypeError, match=r"current has dtype torch.float64 but the block's parameters are "
                                        r"torch.float32: convert the input"):
        dw(x.double(), x.double())
    with pytest.raises(ValueError, match="current has batch size B=0"):
        dw(x[:0], x[:0])
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert dw(x.bfloat16(), x.bfloat16()).shape == x.shape  # autocast casts per operation
        assert dw(x.bfloat16(), x).dtype == torch.float32  # a float32 prior (a cached feature) as before
        with pytest.raises(TypeError, match="prior must have current's dtype torch.bfloat16, got torch.float64"):
            dw(x.bfloat16(), x.double())  # autocast never casts float64
    assert DifferenceWeighting(4, spatial_dims=2, affine=False)(x.double(), x.double()).dtype == torch.float64
