"""SegMaST conventions (B/P/NP, strict NP rule, DAA), aggregation over patients, t-tests and size bins."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from scipy import stats

from longiseg.metrics.aggregate import ResultsTable, paired_ttest, significance_stars
from longiseg.metrics.lesion import lesion_detection
from longiseg.metrics.longitudinal import (
    disease_activity_assessment,
    disease_activity_correct,
    evaluate_longitudinal_case,
    evaluate_mask_pair,
    has_progression,
    np_score,
    progression_kind,
)
from longiseg.metrics.protocol import EvaluationProtocol, get_protocol
from longiseg.metrics.stratified import SizeBins, stratified_lesion_metrics, tertile_bins
from longiseg.utils.config import ConfigError


def box(shape: tuple[int, int, int], *boxes: tuple[int, int, int, int, int, int]) -> np.ndarray:
    m = np.zeros(shape, bool)
    for z0, z1, y0, y1, x0, x1 in boxes:
        m[z0:z1, y0:y1, x0:x1] = True
    return m


S = (10, 10, 10)


def test_np_rule_and_daa_on_constructed_cases() -> None:
    empty = np.zeros(S, bool)
    tiny = box(S, (0, 1, 0, 1, 0, 1))  # one voxel: still "predicted progression" under the strict rule
    lesion = box(S, (2, 5, 2, 5, 2, 5))
    assert np_score(empty) == 1.0 and np_score(tiny) == 0.0
    assert progression_kind(empty) == "NP" and progression_kind(lesion) == "P"
    # DAA: (pred, gt) -> correct?
    cases = [
        (empty, empty, True),
        (tiny, empty, False),
        (lesion, lesion, True),
        (empty, lesion, False),
        (tiny, lesion, True),
    ]
    flags = [disease_activity_correct(p, g) for p, g, _ in cases]
    assert flags == [c for *_, c in cases]
    # under tdw a one-voxel lesion is no activity, as in evaluate_longitudinal_case's daa_correct column (the
    # function answered with the raw voxels and disagreed with that column)
    for p, g, _ in cases:
        rows, _ = evaluate_longitudinal_case(empty, empty, [p], [g], 1.0, "tdw")
        assert disease_activity_correct(p, g, 1.0, "tdw") == rows[1]["daa_correct"]
    assert disease_activity_correct(tiny, empty, 1.0, "tdw") and not disease_activity_correct(tiny, empty)
    assert disease_activity_assessment(flags) == pytest.approx(60.0)
    assert has_progression(tiny) and not has_progression(tiny, min_volume_mm3=11)
    with pytest.raises(ValueError, match="non-empty 1D"):
        disease_activity_assessment([])
    with pytest.raises(ValueError, match="booleans"):
        disease_activity_assessment([0, 2])
    # a generator (as a 0-d object array) was refused with "got shape ()"; a tensor of flags is taken
    with pytest.raises(TypeError, match="correct must be a sequence, array or tensor of booleans, got generator"):
        disease_activity_assessment(f for f in flags)
    assert disease_activity_assessment(torch.tensor(flags)) == pytest.approx(60.0)


def test_strict_np_dice_ignores_the_size_filter() -> None:
    empty = np.zeros(S, bool)
    tiny = box(S, (0, 1, 0, 1, 0, 2))  # 2 mm^3: below both size thresholds
    seg, _ = evaluate_mask_pair(tiny, empty, 1.0, "segmast", kind="NP")
    assert seg["dice"] == 0.0 and seg["lesion_f1"] == 1.0  # F1 sees no lesion after the 11 mm^3 filter
    tdw, _ = evaluate_mask_pair(tiny, empty, 1.0, "tdw", kind="NP")
    assert tdw["dice"] == 1.0  # TDW removes the 2 mm^3 lesion before every metric
    strict_tdw = get_protocol("tdw").with_overrides(strict_np=True)
    assert evaluate_mask_pair(tiny, empty, 1.0, strict_tdw, kind="NP")[0]["dice"] == 0.0
    assert evaluate_mask_pair(empty, empty, 1.0, "segmast", kind="NP")[0]["dice"] == 1.0


def test_longitudinal_case_rows() -> None:
    gb = box(S, (0, 4, 0, 4, 0, 4), (6, 9, 6, 9, 6, 9))
    pb = box(S, (0, 4, 0, 4, 0, 3))
    gp = [box(S, (6, 9, 0, 3, 0, 3)), np.zeros(S, bool)]
    pp = [box(S, (6, 9, 0, 3, 0, 3)), box(S, (0, 3, 6, 9, 0, 3))]
    rows, dets = evaluate_longitudinal_case(pb, gb, pp, gp, (1.0, 1.0, 1.0), case_id="c1", patient_id="p1")
    assert [r["kind"] for r in rows] == ["B", "P", "NP"]
    assert [r["target"] for r in rows] == ["baseline", "progression_t1", "progression_t2"]
    assert rows[0]["daa_correct"] is None and rows[1]["daa_correct"] and not rows[2]["daa_correct"]
    assert rows[0]["dice"] == pytest.approx(2 * 48 / (64 + 27 + 48))
    assert rows[0]["n_gt_lesions"] == 2 and rows[0]["lesion_tp_gt"] == 1 and rows[0]["lesion_fn"] == 1
    assert rows[1]["dice"] == 1.0 and rows[1]["hd95"] == 0.0 and rows[2]["dice"] == 0.0
    assert np.isnan(rows[2]["hd95"])  # one empty mask: undefined by default
    assert len(dets) == 3 and dets[0].n_gt == 2
    with pytest.raises(ValueError, match="same number of follow-ups"):
        evaluate_longitudinal_case(pb, gb, pp[:1], gp, 1.0)


def test_protocol_validation() -> None:
    assert get_protocol("SegMaST").min_lesion_volume_mm3 == 11.0
    assert get_protocol("tdw").min_lesion_volume_mm3 == 3.0 and get_protocol("tdw").filter_voxel_metrics
    with pytest.raises(ValueError, match="unknown protocol"):
        get_protocol("brats")
    with pytest.raises(ValueError, match="matching must be one of"):
        EvaluationProtocol(matching="hungarian")
    with pytest.raises(ConfigError, match=r"'threshold' for EvaluationProtocol\. Did you mean 'iou_threshold'"):
        get_protocol("tdw").with_overrides(threshold=0.2)
    with pytest.raises(ValueError, match="kind must be one of"):
        evaluate_mask_pair(np.zeros(S, bool), np.zeros(S, bool), kind="FU")


# --- aggregation -----------------------------------------------------------------------------------------


def make_table(values: dict[tuple[str, str, str], float], model: str = "m") -> ResultsTable:
    """Rows from {(patient, case, kind): dice}."""
    rows = [
        {
            "case_id": c,
            "patient_id": p,
            "target": "baseline" if k == "B" else "progression_t1",
            "kind": k,
            "dice": v,
            "daa_correct": None if k == "B" else v > 0.5,
        }
        for (p, c, k), v in values.items()
    ]
    return ResultsTable(rows, model)


def test_patient_then_mean_sd_over_patients() -> None:
    t = make_table(
        {
            ("p1", "a", "B"): 0.2,
            ("p1", "b", "B"): 0.4,
            ("p2", "c", "B"): 0.9,
            ("p1", "a", "NP"): 1.0,
            ("p2", "c", "P"): 0.1,
            ("p3", "d", "B"): float("nan"),
        }
    )
    s = t.summary("dice", "B")
    per_patient = np.array([0.3, 0.9])  # p1 averaged over its two cases first; p3 is NaN -> left out
    assert s.mean == pytest.approx(per_patient.mean()) and s.sd == pytest.approx(per_patient.std(ddof=0))
    assert (s.n_patients, s.n_cases, s.n_nan) == (2, 4, 1)
    assert t.summary("dice", "NP").mean == 1.0
    assert t.daa() == pytest.approx(50.0)  # two follow-ups, one flagged correct
    summ = t.paper_summary()
    assert set(summ) >= {"dice/B", "dice/P", "dice/NP", "daa/all"}
    with pytest.raises(ValueError, match="unknown metric"):
        t.values("hd1000")
    with pytest.raises(ValueError, match="lacks the columns"):
        ResultsTable([{"case_id": "a"}])


def test_segmast_table_sd_convention() -> None:
    # 25 NP patients, 15 scored 1: SegMaST reports 0.600 (0.490), i.e. the ddof=0 SD.
    t = make_table({(f"p{i}", f"c{i}", "NP"): float(i < 15) for i in range(25)})
    s = t.summary("dice", "NP")
    assert (round(s.mean, 3), round(s.sd, 3)) == (0.6, 0.49)


def test_paired_ttest_matches_scipy() -> None:
    rng = np.random.default_rng(0)
    a_vals, b_vals = rng.random(8), rng.random(8)
    a = make_table({(f"p{i}", f"c{i}", "B"): float(v) for i, v in enumerate(a_vals)}, "A")
    b = make_table({(f"p{i}", f"c{i}", "B"): float(v) for i, v in enumerate(b_vals)}, "B")
    res = paired_ttest(a, b, "dice", kind="B")
    ref = stats.ttest_rel(a_vals, b_vals)
    assert res.pvalue == pytest.approx(ref.pvalue) and res.statistic == pytest.approx(ref.statistic)
    assert res.n == 8 and res.mean_difference == pytest.approx(np.mean(a_vals - b_vals))
    assert paired_ttest(a, b, "dice", level="case").pvalue == pytest.approx(ref.pvalue)
    assert np.isnan(paired_ttest(a, a, "dice").pvalue)
    # a constant shift (differences equal up to rounding): undefined, NaN without scipy's precision warning
    shifted = make_table({(f"p{i}", f"c{i}", "B"): float(v) + 0.1 for i, v in enumerate(a_vals)}, "S")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        res = paired_ttest(shifted, a, "dice")
    assert np.isnan(res.pvalue) and np.isnan(res.statistic) and res.mean_difference == pytest.approx(0.1)
    c = make_table({("q0", "c0", "B"): 0.5}, "C")
    with pytest.raises(ValueError, match="same patients"):
        paired_ttest(a, c, "dice")
    with pytest.raises(ValueError, match="level must be"):
        paired_ttest(a, b, "dice", level="voxel")
    assert significance_stars(0.003) == "**" and significance_stars(0.03) == "*"
    assert significance_stars(0.2) == "" and significance_stars(float("nan")) == ""


# --- size-stratified analysis ----------------------------------------------------------------------------


def test_stratified_counts_with_given_thresholds() -> None:
    shape = (6, 40, 40)
    # Reference lesions of 8, 64 and 216 voxels (1 mm^3 each): small, medium, large at thresholds (10, 100).
    g = box(shape, (0, 2, 0, 2, 0, 2), (0, 4, 10, 14, 0, 4), (0, 6, 20, 26, 20, 26))
    # Prediction: misses the small one, hits the medium exactly, half of the large, plus a small FP.
    p = box(shape, (0, 4, 10, 14, 0, 4), (0, 3, 20, 26, 20, 26), (5, 6, 0, 2, 30, 32))
    det = lesion_detection(p, g)
    rows = stratified_lesion_metrics([det], SizeBins((10.0, 100.0)))
    by = {r["bin"]: r for r in rows}
    assert [r["range_mm3"] for r in rows] == ["<= 10", "10-100", "> 100"]
    assert (by["small"]["n_gt"], by["small"]["tp_gt"], by["small"]["n_pred"], by["small"]["tp_pred"]) == (
        1,
        0,
        1,
        0,
    )
    assert by["small"]["lesion_f1"] == 0.0 and by["small"]["dice"] == 0.0
    assert by["medium"]["lesion_f1"] == 1.0 and by["medium"]["dice"] == 1.0
    # The 108-voxel prediction overlaps the large lesion, so it belongs to the large bin.
    assert by["large"]["n_pred"] == 1 and by["large"]["lesion_f1"] == 1.0
    assert by["large"]["dice"] == pytest.approx(2 * 108 / (216 + 108))
    # Pooled over cases: the same case twice doubles the counts, scores unchanged.
    rows2 = stratified_lesion_metrics([det, det], (10.0, 100.0))
    assert rows2[2]["n_gt"] == 2 and rows2[2]["dice"] == pytest.approx(by["large"]["dice"])


def test_tertile_bins() -> None:
    b = tertile_bins(np.arange(1, 10, dtype=float))
    assert b.thresholds == pytest.approx(
        (np.quantile(np.arange(1, 10), 1 / 3), np.quantile(np.arange(1, 10), 2 / 3))
    )
    np.testing.assert_array_equal(b.assign(np.array([1.0, 5.0, 9.0])), [0, 1, 2])
    with pytest.raises(ValueError, match="at least 3"):
        tertile_bins([1.0, 2.0])
    with pytest.raises(ValueError, match="too uniform"):
        tertile_bins([5.0] * 6)
    # eight lesions of one voxel count, read through a rotated affine: equal up to a few parts in 1e8 (a relative
    # spread of 1e-7, well inside VOLUME_RTOL = 1e-6, and well outside float64's rounding of the quantiles)
    with pytest.raises(ValueError, match="too uniform"):
        tertile_bins(96.0 * (1.0 + 1e-7 * np.linspace(-1.0, 1.0, 8)))
    with pytest.raises(ValueError, match="strictly ascending"):
        SizeBins((5.0, 1.0))
    with pytest.raises(ValueError, match="'tertiles'"):
        stratified_lesion_metrics([], "quartiles")


# --- protocol settings reach every metric (probe findings of 0.3.8) ------------------------------------


def test_protocol_connectivity_reaches_the_persisting_lesion_count() -> None:
    gb = box((12, 12, 12), (1, 4, 1, 4, 1, 4))
    gp = box((12, 12, 12), (4, 7, 4, 7, 4, 7))  # touches the baseline lesion at one corner only
    c6 = EvaluationProtocol(name="c6", connectivity=6, min_lesion_volume_mm3=0)
    rows, _ = evaluate_longitudinal_case(gb, gb, [gb], [gp], 1.0, c6)
    assert (rows[1]["persisting_lesions"], rows[1]["persisting_flagged"]) == (1, 1)  # face-apart: not touching
    rows26, _ = evaluate_longitudinal_case(gb, gb, [gb], [gp], 1.0, c6.with_overrides(connectivity=26))
    assert rows26[1]["persisting_lesions"] == 0  # corner neighbours touch under 26-connectivity


def test_a_lesion_new_at_t1_and_flagged_again_at_t2_counts_as_an_old_lesion_called_new() -> None:
    # Old-as-new looked only at the baseline lesions: a lesion new at t1 re-outlined at t2 (whose reference is
    # empty) was invisible to it, the main confusion of a later follow-up
    shape = (12, 12, 12)
    old, new = box(shape, (1, 4, 1, 4, 1, 4)), box(shape, (7, 10, 7, 10, 7, 10))
    empty = np.zeros(shape, bool)
    protocol = EvaluationProtocol(name="p", min_lesion_volume_mm3=0)
    rows, _ = evaluate_longitudinal_case(old, old, [new, new], [new, empty], 1.0, protocol)
    assert (rows[1]["persisting_lesions"], rows[1]["persisting_flagged"]) == (1, 0)  # t1: the baseline lesion
    assert (rows[2]["persisting_lesions"], rows[2]["persisting_flagged"]) == (2, 1)  # t2: and the one new at t1
    assert rows[2]["persisting_fp"] == 0.5 and rows[2]["daa_correct"] is False


def test_tdw_classes_a_followup_by_its_filtered_reference() -> None:
    gb = box(S, (1, 4, 1, 4, 1, 4))
    gp = box(S, (7, 8, 7, 8, 7, 9))  # a 2 mm^3 new lesion, below tdw's 3 mm^3
    empty = np.zeros(S, bool)
    rows, _ = evaluate_longitudinal_case(gb, gb, [empty], [gp], 1.0, "tdw")
    assert rows[1]["kind"] == "NP" and rows[1]["daa_correct"] is True
    rows, _ = evaluate_longitudinal_case(gb, gb, [empty], [gp], 1.0, "segmast")
    assert rows[1]["kind"] == "P" and rows[1]["daa_correct"] is False and rows[1]["dice"] == 0.0
    with pytest.raises(ValueError, match=r"kind='P' but the reference progression mask is empty after the protocol"):
        evaluate_mask_pair(empty, gp, 1.0, "tdw", kind="P")
    with pytest.raises(ValueError, match=r"kind='NP' but the reference progression mask is not empty"):
        evaluate_mask_pair(gp, gp, 1.0, "segmast", kind="NP")


def test_protocol_connectivity_in_2d_and_protocol_field_types() -> None:
    a = np.zeros((5, 5), bool)
    a[1, 1] = a[2, 2] = True  # diagonal neighbours: one lesion with 8-, two with 4-connectivity
    for conn, n in ((4, 2), (8, 1), (6, 2), (26, 1), (None, 1)):
        prot = EvaluationProtocol(name="x", connectivity=conn, min_lesion_volume_mm3=0)
        assert evaluate_mask_pair(a, a, None, prot)[0]["n_gt_lesions"] == n
    rows, _ = evaluate_longitudinal_case(a, a, [a], [a], 1.0, EvaluationProtocol(min_lesion_volume_mm3=0))
    assert rows[1]["kind"] == "P" and rows[1]["dice"] == 1.0  # 2D cases evaluate end to end
    with pytest.raises(ValueError, match="connectivity must be one of"):
        evaluate_mask_pair(box(S), box(S), None, EvaluationProtocol(connectivity=8))
    with pytest.raises(ConfigError, match="connectivity must be None, 6, 18 or 26"):
        EvaluationProtocol(connectivity=5)
    assert EvaluationProtocol(strict_np="no").strict_np is False
    assert EvaluationProtocol(iou_threshold="0.3").iou_threshold == pytest.approx(0.3)
    with pytest.raises(ConfigError, match="'hd_percentile': expected a float, got None"):
        EvaluationProtocol(hd_percentile=None)


def test_size_bins_include_their_upper_edge_despite_round_off() -> None:
    g = np.ones((1, 25, 13), bool)  # 325 voxels of 0.64 mm^3 = 208 mm^3 (208.00000000000003 in floating point)
    rows = stratified_lesion_metrics([lesion_detection(g, g, (1.0, 0.8, 0.8))], SizeBins((84, 208)))
    assert [r["n_gt"] for r in rows] == [0, 1, 0]


def test_kinds_are_checked_when_selecting_rows() -> None:
    table = make_table({("p1", "c1", "NP"): 1.0})
    assert table.summary("dice", kind="NP").n_cases == 1
    with pytest.raises(ValueError, match=r"kind must be among \('B', 'P', 'NP'\), got \['np'\]"):
        table.summary("dice", kind="np")
    with pytest.raises(ValueError, match="kind must be among"):
        paired_ttest(table, table, "dice", kind="np")


# --- size bins and protocol values (probe findings) ----------------------------------------------------


def test_tertile_rule_is_the_documented_one() -> None:
    with pytest.raises(ValueError, match="too uniform"):
        tertile_bins([1.0, 1.0, 1.0, 5.0])  # two sizes, but both tertiles are 1
    assert tertile_bins([1.0, 1.0, 5.0, 5.0]).thresholds == (1.0, 5.0)
    with pytest.raises(ValueError, match="volumes_mm3"):
        tertile_bins([-1.0, 2.0, 3.0, 5.0])


def test_size_bins_refuse_negative_thresholds() -> None:
    for t in ((-5, -1), (-1, 4)):
        with pytest.raises(ValueError, match=">= 0"):
            SizeBins(t)
    assert SizeBins((0, 4)).thresholds == (0.0, 4.0)
    with pytest.raises(ValueError, match="bins must be"):
        stratified_lesion_metrics([], "Tertiles")


def test_protocol_hd_one_empty_null_nan_and_checks() -> None:
    assert np.isnan(EvaluationProtocol(hd_one_empty=None).hd_one_empty)  # JSON null reads as NaN
    assert np.isnan(EvaluationProtocol.from_dict({"hd_one_empty": None}).hd_one_empty)
    assert np.isnan(get_protocol("tdw").with_overrides(["hd_one_empty=null"]).hd_one_empty)
    assert EvaluationProtocol(hd_one_empty=float("inf")).hd_one_empty == float("inf")
    with pytest.raises(ConfigError, match="hd_one_empty"):
        EvaluationProtocol(hd_one_empty=-1.0)
    assert EvaluationProtocol() == get_protocol("segmast") != get_protocol("tdw")
