"""Validation-based selection of the progression threshold (longiseg.tuning)."""

from __future__ import annotations

import argparse

import numpy as np
import pytest
import torch

from longiseg.tuning import (
    DEFAULT_OBJECTIVE,
    DEFAULT_THRESHOLDS,
    OBJECTIVES,
    ThresholdSelection,
    progression_score,
    select_threshold,
)

SP = (1.0, 1.0, 1.0)


def _blob(shape: tuple[int, int, int], center: tuple[int, int, int], r: int = 2) -> np.ndarray:
    z, y, x = np.ogrid[tuple(slice(0, n) for n in shape)]
    c = center
    return ((z - c[0]) ** 2 + (y - c[1]) ** 2 + (x - c[2]) ** 2) <= r * r


def _progressing_case(prob_inside: float) -> tuple[np.ndarray, np.ndarray]:
    """Two true new lesions whose probabilities reach only ``prob_inside``."""
    shape = (20, 20, 20)
    gt = _blob(shape, (5, 5, 5)) | _blob(shape, (14, 14, 14))
    prob = np.where(gt, prob_inside, 0.02).astype(np.float32)
    return prob, gt


def _stable_case(false_alarm: float) -> tuple[np.ndarray, np.ndarray]:
    """No reference lesion; one false alarm of probability ``false_alarm``."""
    shape = (20, 20, 20)
    prob = np.where(_blob(shape, (10, 10, 10)), false_alarm, 0.01).astype(np.float32)
    return prob, np.zeros(shape, dtype=bool)


def test_default_grid() -> None:
    assert DEFAULT_THRESHOLDS[0] == 0.1 and DEFAULT_THRESHOLDS[-1] == 0.9 and 0.5 in DEFAULT_THRESHOLDS
    assert len(DEFAULT_THRESHOLDS) == 17


def test_progression_score_p_and_np() -> None:
    prob, gt = _progressing_case(0.9)
    assert progression_score(prob > 0.5, gt, SP) == 1.0
    # One of the two lesions found, nothing false: F1 = 2 * 1 * 0.5 / 1.5.
    half = prob > 0.5
    half[10:] = False
    assert progression_score(half, gt, SP) == pytest.approx(2 / 3)
    empty = np.zeros_like(gt)
    assert progression_score(empty, empty, SP) == 1.0  # NP follow-up, nothing predicted
    assert progression_score(half, empty, SP) == 0.0  # NP follow-up, a false new lesion


def test_under_confident_model_gets_a_lower_threshold() -> None:
    # probabilities between grid thresholds (0.05 apart), so no comparison is an exact tie
    probs, refs = zip(*[_progressing_case(0.37), _progressing_case(0.42), _stable_case(0.22)])
    sel = select_threshold(list(probs), list(refs), SP, objective="balanced")
    assert isinstance(sel, ThresholdSelection)
    # Above 0.35 a lesion is missed; at or below 0.2 the stable case's false alarm appears.
    assert 0.2 < sel.threshold <= 0.35
    assert sel.score == 1.0
    assert sel.default == 0.5
    assert sel.default_score == pytest.approx(0.5)  # P F1 0 (both missed), NP 1
    assert sel.num_progression == 2 and sel.num_stable == 1
    assert sel.scores[sel.threshold] == sel.score and set(DEFAULT_THRESHOLDS) <= set(sel.scores)
    assert sel.objective == "balanced"
    # lesion F1 alone ignores the stable case: any threshold up to 0.35 finds both lesions; ties go towards 0.5.
    f1 = select_threshold(list(probs), list(refs), SP, objective="lesion_f1")
    assert (
        f1.objective == "lesion_f1" and f1.threshold == 0.35 and f1.score == 1.0 and f1.default_score == 0.0
    )
    assert select_threshold(list(probs), list(refs), SP).objective == DEFAULT_OBJECTIVE == "balanced"


def test_ties_keep_the_default() -> None:
    probs, refs = zip(*[_progressing_case(0.95), _stable_case(0.05)])
    sel = select_threshold(list(probs), list(refs), SP, objective="balanced")
    assert sel.threshold == 0.5 and sel.score == sel.default_score == 1.0
    # A default outside the grid is evaluated too and wins ties.
    sel = select_threshold(list(probs), list(refs), SP, thresholds=(0.3, 0.6), default=0.45)
    assert sel.threshold == 0.45 and set(sel.scores) == {0.3, 0.6, 0.45}


def test_objective_balances_p_and_np() -> None:
    # One P case with a lesion at 0.3, three stable cases with false alarms at 0.3: lowering the threshold
    # to find the lesion costs every stable case, so the balanced objective keeps 0.5 (NP 1.0 vs P 1.0 / NP 0).
    cases = [_progressing_case(0.3)] + [_stable_case(0.3)] * 3
    probs, refs = zip(*cases)
    sel = select_threshold(list(probs), list(refs), SP, thresholds=(0.25, 0.5), objective="balanced")
    assert sel.scores[0.25] == pytest.approx(0.5) and sel.scores[0.5] == pytest.approx(0.5)
    assert sel.threshold == 0.5
    # Lesion F1 alone lowers the threshold to find the lesion, whatever the stable cases show.
    f1 = select_threshold(list(probs), list(refs), SP, thresholds=(0.25, 0.5), objective="lesion_f1")
    assert f1.threshold == 0.25 and f1.scores == {0.25: 1.0, 0.5: 0.0}


def test_baseline_threshold_is_not_searched() -> None:
    """The candidates threshold the progression maps only; the baseline mask cut out under the rule is the baseline
    head's at ``baseline_threshold``: a new lesion where the baseline head says 0.4 survives at 0.5, not at 0.3."""
    prob, gt = _progressing_case(0.9)
    base = np.where(gt, 0.4, 0.0).astype(np.float32)  # p_new = 0.9 * 0.6 = 0.54 inside the lesions
    kept = select_threshold([prob], [gt], SP, thresholds=(0.5,), baseline_probabilities=[base])
    cut = select_threshold([prob], [gt], SP, thresholds=(0.5,), baseline_probabilities=[base], baseline_threshold=0.3)
    assert kept.scores[0.5] == 1.0 and cut.scores[0.5] == 0.0
    with pytest.raises(ValueError, match="thresholds must lie in"):
        select_threshold([prob], [gt], SP, baseline_probabilities=[base], baseline_threshold=1.0)


def test_min_volume_and_brain_mask_as_in_prediction() -> None:
    prob, gt = _progressing_case(0.3)
    # A false alarm of 12 voxels (counted by the 11 mm^3 protocol cut-off): removed by a 20 mm^3 minimum volume.
    prob[0, 19, 0:12] = 0.9
    sel_small = select_threshold([prob], [gt], SP, thresholds=(0.25,), min_volume_mm3=0.0)
    sel_min = select_threshold([prob], [gt], SP, thresholds=(0.25,), min_volume_mm3=20.0)
    assert sel_small.scores[0.25] < 1.0 and sel_min.scores[0.25] == 1.0
    brain = np.ones_like(gt)
    brain[0, 19, :] = False  # the false alarm lies outside the brain
    sel_brain = select_threshold([prob], [gt], SP, thresholds=(0.25,), brain_masks=[brain])
    assert sel_brain.scores[0.25] == 1.0


def test_baseline_probabilities_exclude_old_lesions_as_prediction_does() -> None:
    prob, gt = _progressing_case(0.3)
    old = _blob(gt.shape, (10, 3, 15))  # an old lesion the progression head also fires on (0.4)
    prob[old] = 0.4
    base = np.where(old, 0.9, 0.01).astype(np.float32)
    without = select_threshold([prob], [gt], SP, thresholds=(0.25,))
    with_base = select_threshold([prob], [gt], SP, thresholds=(0.25,), baseline_probabilities=[base])
    assert without.scores[0.25] < 1.0 and with_base.scores[0.25] == 1.0
    # below the threshold the baseline head still damps: p_new = p_prog (1 - p_base)
    faint = np.where(old, 0.45, 0.01).astype(np.float32)
    prob[old] = 0.6  # 0.6 * 0.55 = 0.33 < 0.5
    assert select_threshold([prob], [gt], SP, thresholds=(0.5,)).scores[0.5] == 0.0  # real lesions at 0.3 < 0.5
    prob = np.where(gt, 0.9, prob).astype(np.float32)
    assert select_threshold([prob], [gt], SP, thresholds=(0.5,)).scores[0.5] < 1.0
    assert select_threshold([prob], [gt], SP, thresholds=(0.5,), baseline_probabilities=[faint]).scores[0.5] == 1.0


def test_earlier_follow_ups_lesions_are_excluded_as_prediction_excludes_them() -> None:
    # a second follow-up re-showing the lesion new at the first is stable (its reference is empty): tune scored it
    # as a false new lesion, where prediction now cuts it out
    prob1, gt1 = _progressing_case(0.9)
    prob2 = prob1.copy()  # the head shows the t1 lesion again at t2
    gt2 = np.zeros_like(gt1)
    base = np.full(gt1.shape, 0.01, np.float32)
    probs, refs, bases = [prob1, prob2], [gt1, gt2], [base, base]
    alone = select_threshold(probs, refs, SP, thresholds=(0.5,), baseline_probabilities=bases)
    chained = select_threshold(probs, refs, SP, thresholds=(0.5,), baseline_probabilities=bases,
                               earlier_probabilities=[[], [prob1]])
    assert alone.scores[0.5] == 0.5 and chained.scores[0.5] == 1.0  # mean of the P F1 (1) and the NP score
    with pytest.raises(ValueError, match="earlier_probabilities needs baseline_probabilities"):
        select_threshold(probs, refs, SP, earlier_probabilities=[[], [prob1]])
    with pytest.raises(ValueError, match="one sequence per probability map: 1 vs 2"):
        select_threshold(probs, refs, SP, baseline_probabilities=bases, earlier_probabilities=[[]])
    with pytest.raises(ValueError, match=r"earlier_probabilities\[1\] must hold maps of the shape"):
        select_threshold(probs, refs, SP, baseline_probabilities=bases, earlier_probabilities=[[], [prob1[:-1]]])


def test_protocol_lesion_cut_off() -> None:
    # The reference holds a 5 mm^3 fragment that the segmast protocol (11 mm^3) ignores and tdw (3 mm^3) counts.
    prob, gt = _progressing_case(0.9)
    gt[0, 0, 15:20] = True
    assert select_threshold([prob], [gt], SP, thresholds=(0.5,)).score == 1.0
    assert select_threshold([prob], [gt], SP, thresholds=(0.5,), protocol="tdw").score < 1.0


def test_a_follow_up_is_p_or_np_for_tuning_as_for_evaluation() -> None:
    """Under tdw a reference whose only new lesion is below its 3 mm^3 is NP (followup_kind, evaluation);
    tuning called it P by its raw voxels and raised 'kind='P' but the reference progression mask is empty'."""
    from longiseg.metrics.longitudinal import evaluate_longitudinal_case

    gt = np.zeros((16, 16, 16), bool)
    gt[5, 5, 5:7] = True  # 2 mm^3
    small = np.zeros_like(gt)
    small[9, 9, 9:11] = True  # a 2 mm^3 false alarm, also below the size filter
    big = np.zeros_like(gt)
    big[9:12, 9:12, 9:12] = True
    for pred in (np.zeros_like(gt), small, big):
        rows, _ = evaluate_longitudinal_case(np.zeros_like(gt), np.zeros_like(gt), [pred], [gt], SP, "tdw")
        assert rows[1]["kind"] == "NP"
        assert progression_score(pred, gt, SP, protocol="tdw") == rows[1]["dice"]
    assert [progression_score(p, gt, SP, protocol="tdw") for p in (small, big)] == [1.0, 0.0]
    prob = np.where(big, 0.9, 0.01).astype(np.float32)
    chosen = select_threshold([prob], [gt], SP, thresholds=(0.5, 0.95), protocol="tdw")
    assert (chosen.num_progression, chosen.num_stable) == (0, 1) and chosen.threshold == 0.95
    with pytest.raises(ValueError, match="objective='lesion_f1' needs at least one reference"):
        select_threshold([prob], [gt], SP, protocol="tdw", objective="lesion_f1")


def test_tuning_takes_the_maps_and_volumes_postprocess_takes() -> None:
    """A 0/1 integer map (a hard prediction) and NumPy scalars were taken by postprocess and refused by tuning."""
    prob, gt = _progressing_case(1.0)
    hard = select_threshold([prob.astype(np.uint8)], [gt], SP, min_volume_mm3=np.float32(2.0))
    soft = select_threshold([prob], [gt], SP, min_volume_mm3=2.0)
    assert hard.scores == soft.scores


def test_accepts_tensors_and_to_dict() -> None:
    prob, gt = _progressing_case(0.8)
    sel = select_threshold([torch.from_numpy(prob)], [torch.from_numpy(gt.astype(np.uint8))], SP)
    d = sel.to_dict()
    assert d["threshold"] == sel.threshold and d["scores"]["0.5"] == sel.scores[0.5]
    assert d["objective"] == "balanced"
    assert d["num_progression"] == 1 and d["num_stable"] == 0


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"probabilities": []}, ValueError, "at least one case"),
        ({"probabilities": np.zeros((4, 4, 4), np.float32)}, TypeError, "sequence"),
        ({"references": []}, ValueError, "one mask per probability map"),
        ({"probabilities": [np.zeros((4, 4), np.float32)]}, ValueError, r"\(D, H, W\)"),
        ({"probabilities": [np.full((4, 4, 4), 1.5, np.float32)]}, ValueError, r"\[0, 1\]"),
        ({"probabilities": [np.zeros((4, 4, 4), np.complex64)]}, TypeError, "real probabilities"),
        ({"probabilities": [[0.1]]}, TypeError, "numpy array"),
        ({"references": [np.zeros((4, 4, 5), bool)]}, ValueError, "shape of its probability map"),
        ({"references": [np.full((4, 4, 4), 2)]}, ValueError, "binary"),
        ({"thresholds": ()}, ValueError, "must not be empty"),
        ({"thresholds": (0.0, 0.5)}, ValueError, r"\(0, 1\)"),
        ({"thresholds": (0.3, 0.3)}, ValueError, "distinct"),
        ({"thresholds": ("a",)}, TypeError, "floats"),
        ({"thresholds": 0.5}, TypeError, "sequence"),
        ({"default": 1.0}, ValueError, r"\(0, 1\)"),
        ({"min_volume_mm3": -1.0}, ValueError, "min_volume_mm3"),
        ({"brain_masks": []}, ValueError, "brain_masks"),
        ({"objective": "dice"}, ValueError, "objective must be one of"),
        ({"objective": "lesion_f1"}, ValueError, "at least one reference"),
        ({"brain_masks": [np.ones((4, 4, 3), bool)]}, ValueError, "brain_masks"),
        ({"baseline_probabilities": []}, ValueError, "baseline_probabilities must have one map"),
        ({"baseline_probabilities": [np.zeros((4, 4, 3), np.float32)]}, ValueError, "baseline_probabilities"),
        ({"baseline_probabilities": [np.full((4, 4, 4), 2.0, np.float32)]}, ValueError, r"\[0, 1\]"),
    ],
)
def test_input_validation(kwargs: dict, error: type, match: str) -> None:
    args = {
        "probabilities": [np.zeros((4, 4, 4), np.float32)],
        "references": [np.zeros((4, 4, 4), bool)],
        "spacing": SP,
    }
    args.update(kwargs)
    with pytest.raises(error, match=match):
        select_threshold(**args)


def test_tune_command_offers_the_library_objectives() -> None:
    """The CLI lists the objectives itself (it does not import the tuning module to start); they must match."""
    from longiseg.cli import build_parser

    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    action = next(a for a in sub.choices["tune"]._actions if a.dest == "objective")
    assert sorted(action.choices) == sorted(OBJECTIVES) and action.default is None  # None: the library default


def test_each_map_may_have_its_own_voxel_size() -> None:
    """Cases of one cohort need not share a voxel size: a 12-voxel false alarm is 12 mm^3 at 1 mm (removed by a
    20 mm^3 minimum) but 96 mm^3 at 2 mm (kept), as prediction post-processes each case with its own spacing."""
    p_prob, p_gt = _progressing_case(0.9)
    s_prob, s_gt = _stable_case(0.01)
    s_prob[0, 19, 0:12] = 0.9
    probs, refs = [p_prob, s_prob], [p_gt, s_gt]
    shared = select_threshold(probs, refs, SP, thresholds=(0.5,), min_volume_mm3=20.0)
    same = select_threshold(probs, refs, [SP, SP], thresholds=(0.5,), min_volume_mm3=20.0)
    coarse = select_threshold(probs, refs, [SP, (2.0, 2.0, 2.0)], thresholds=(0.5,), min_volume_mm3=20.0)
    assert shared.scores == same.scores and shared.scores[0.5] == 1.0
    assert coarse.scores[0.5] < 1.0  # the stable case's false alarm survives at 2 mm
    with pytest.raises(ValueError, match=r"spacing must be one \(3,\) voxel size or one per probability map \(2\)"):
        select_threshold(probs, refs, [SP], thresholds=(0.5,))
    with pytest.raises(ValueError, match=r"spacing\[1\] must have 3 values"):
        select_threshold(probs, refs, [SP, (1.0, 1.0)], thresholds=(0.5,))


def test_a_threshold_tune_kept_is_not_reported_as_tuned() -> None:
    # a tune without progressing validation patients keeps the threshold; predict said "tuned" all the same
    from longiseg.tuning import tuning_note

    assert tuning_note(None) == tuning_note({}) == ""
    assert tuning_note({"threshold": 0.3}) == " (tuned by longiseg tune on validation patients)"
    kept = {"threshold": 0.5, "kept": "no validation follow-up with progression"}
    assert tuning_note(kept) == " (kept by longiseg tune: no validation follow-up with progression)"
