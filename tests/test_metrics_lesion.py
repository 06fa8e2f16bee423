"""Lesion detection: labelling, size filtering, matching rules (split/merged lesions), panoptica agreement."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from longiseg.metrics.lesion import (
    MATCHING_RULES,
    LesionLabels,
    detection_scores,
    label_lesions,
    lesion_detection,
    lesion_f1,
    lesion_overlaps,
    lesion_ppv,
    lesion_recall,
    match_lesions,
    remove_small_lesions,
)


def cube(m: np.ndarray, z: int, y: int, x: int, size: tuple[int, int, int]) -> None:
    m[z : z + size[0], y : y + size[1], x : x + size[2]] = True


def random_blobs(
    rng: np.random.Generator, shape: tuple[int, int, int], n: int, rmax: float = 4.0
) -> np.ndarray:
    z, y, x = np.ogrid[: shape[0], : shape[1], : shape[2]]
    m = np.zeros(shape, bool)
    for _ in range(n):
        c = rng.uniform(0, shape)
        r = rng.uniform(1.0, rmax)
        m |= (z - c[0]) ** 2 + (y - c[1]) ** 2 + (x - c[2]) ** 2 <= r * r
    return m


def labels_from(arr: np.ndarray) -> LesionLabels:
    """A labelling given directly (labels 1..n)."""
    arr = np.asarray(arr, dtype=np.int32)
    n = int(arr.max())
    return LesionLabels(arr, np.bincount(arr.ravel(), minlength=n + 1)[1:].astype(np.int64), 1.0)


def reference_iou_rule(gt: np.ndarray, pred: np.ndarray, thr: float = 0.1) -> tuple[int, int, int, int]:
    """Plain re-statement of the LongiSeg per-side greedy rule on a dense IoU matrix (float64)."""
    import cc3d

    gl, m = cc3d.connected_components(gt.astype(np.uint8), connectivity=26, return_N=True)
    pl, n = cc3d.connected_components(pred.astype(np.uint8), connectivity=26, return_N=True)
    iou = np.zeros((m, n))
    for i in range(m):
        for j in range(n):
            a, b = gl == i + 1, pl == j + 1
            inter = np.logical_and(a, b).sum()
            iou[i, j] = inter / np.logical_or(a, b).sum() if inter else 0.0
    tp_gt = 0
    work = iou.copy()
    for i in range(m):
        if n and work[i].max() > thr:
            j = int(np.argmax(work[i]))
            tp_gt += 1
            work[:, j] = 0
    tp_pred = 0
    work = iou.copy()
    for j in range(n):
        if m and work[:, j].max() > thr:
            i = int(np.argmax(work[:, j]))
            tp_pred += 1
            work[i, :] = 0
    return tp_gt, m - tp_gt, tp_pred, n - tp_pred


# --- labelling and size filtering --------------------------------------------------------------------------


def test_connectivity_parameter() -> None:
    m = np.zeros((3, 3, 3), bool)
    m[0, 0, 0] = m[1, 1, 1] = True  # corner-touching voxels
    assert label_lesions(m).n == 1  # 26-connectivity default
    assert label_lesions(m, connectivity=18).n == 2
    assert label_lesions(m, connectivity=6).n == 2
    m2 = np.zeros((3, 3), bool)
    m2[0, 0] = m2[1, 1] = True
    assert label_lesions(m2).n == 1 and label_lesions(m2, connectivity=4).n == 2
    with pytest.raises(ValueError, match="connectivity must be one of"):
        label_lesions(m, connectivity=8)


def test_size_filter_with_anisotropic_spacing() -> None:
    sp = (3.0, 0.5, 0.5)  # 0.75 mm^3 voxels
    m = np.zeros((4, 10, 10), bool)
    m[0, 0, 0:4] = True  # 4 voxels = 3.00 mm^3: kept at 3 mm^3 (TDW keeps >= 3)
    m[0, 5, 0:3] = True  # 3 voxels = 2.25 mm^3: removed
    m[2, 8, 0:8] = True  # 8 voxels = 6.00 mm^3
    lab = label_lesions(m, sp, min_volume_mm3=3.0)
    assert lab.n == 2
    np.testing.assert_allclose(lab.volumes_mm3, [3.0, 6.0])
    assert set(np.unique(lab.labels)) == {0, 1, 2}  # relabelled 1..n, raster order kept
    assert lab.labels[0, 0, 0] == 1 and lab.labels[2, 8, 0] == 2
    kept = remove_small_lesions(m, sp, min_volume_mm3=3.0)
    assert kept.sum() == 12 and not kept[0, 5].any()
    # SegMaST threshold 11 mm^3 at 1 mm isotropic: an 11-voxel lesion is kept, a 10-voxel one is not.
    m = np.zeros((1, 4, 30), bool)
    m[0, 0, :11] = True
    m[0, 3, :10] = True
    assert label_lesions(m, min_volume_mm3=11).n == 1


def test_size_filter_applies_to_both_masks_before_matching() -> None:
    g = np.zeros((8, 8, 8), bool)
    p = np.zeros_like(g)
    cube(g, 0, 0, 0, (3, 3, 3))
    g[7, 7, 7] = True  # tiny reference lesion: removed, so not a FN
    cube(p, 0, 0, 0, (3, 3, 3))
    p[7, 0, 7] = True  # tiny prediction: removed, so not a FP
    d = lesion_detection(p, g, min_volume_mm3=3)
    assert d.counts() == {"n_gt": 1, "n_pred": 1, "tp_gt": 1, "tp_pred": 1, "fp": 0, "fn": 0}
    assert lesion_detection(p, g).counts()["fp"] == 1


# --- matching rules on hand-built volumes ------------------------------------------------------------------


def build_scene() -> tuple[np.ndarray, np.ndarray]:
    """GT: A (exact hit), B (split in two), C and D (merged by one prediction), E (missed), plus a FP."""
    g = np.zeros((12, 30, 30), bool)
    p = np.zeros_like(g)
    cube(g, 0, 0, 0, (4, 4, 4))  # A
    cube(p, 0, 0, 0, (4, 4, 4))
    cube(g, 0, 10, 0, (4, 4, 8))  # B, split into two halves with a gap column
    cube(p, 0, 10, 0, (4, 4, 3))
    cube(p, 0, 10, 5, (4, 4, 3))
    cube(g, 0, 20, 0, (4, 4, 4))  # C
    cube(g, 0, 20, 6, (4, 4, 4))  # D
    cube(p, 0, 20, 0, (4, 4, 10))  # one prediction covering C, D and the gap
    cube(g, 8, 0, 20, (3, 3, 3))  # E, missed
    cube(p, 8, 20, 20, (3, 3, 3))  # FP
    return p, g


@pytest.mark.parametrize(
    ("rule", "expected"),
    [
        # per-side greedy: B's second half is a FP, D is a FN (its only candidate is claimed by C)
        ("iou", {"n_gt": 5, "n_pred": 5, "tp_gt": 3, "tp_pred": 3, "fp": 2, "fn": 2}),
        ("iou_global", {"n_gt": 5, "n_pred": 5, "tp_gt": 3, "tp_pred": 3, "fp": 2, "fn": 2}),
        # any overlap: both halves and both merged lesions count
        ("overlap", {"n_gt": 5, "n_pred": 5, "tp_gt": 4, "tp_pred": 4, "fp": 1, "fn": 1}),
    ],
)
def test_exact_counts_with_split_and_merged_lesions(rule: str, expected: dict[str, int]) -> None:
    p, g = build_scene()
    d = lesion_detection(p, g, rule=rule)
    assert d.counts() == expected
    r, pr, f1 = expected["tp_gt"] / 5, expected["tp_pred"] / 5, None
    f1 = 2 * r * pr / (r + pr)
    assert (d.recall, d.precision) == pytest.approx((r, pr))
    assert d.f1 == pytest.approx(f1)
    assert lesion_f1(p, g, rule=rule) == pytest.approx(f1)
    assert lesion_ppv(p, g, rule=rule) == pytest.approx(pr)
    assert lesion_recall(p, g, rule=rule) == pytest.approx(r)


def test_iou_threshold_is_strict() -> None:
    g = np.zeros((1, 1, 20), bool)
    g[0, 0, :10] = True
    p = np.zeros_like(g)
    p[0, 0, 9:10] = True  # IoU = 1/10 exactly
    assert lesion_detection(p, g).counts()["tp_gt"] == 0
    assert lesion_detection(p, g, rule="overlap").counts()["tp_gt"] == 1
    p[0, 0, 8:10] = True  # IoU = 2/10
    assert lesion_detection(p, g).counts()["tp_gt"] == 1
    assert lesion_detection(p, g, iou_threshold=0.25).counts()["tp_gt"] == 0


def test_per_side_and_global_greedy_differ_as_documented() -> None:
    # GT: A = [0, 10), B = [10, 20) (given as labels). Pred: q = [0, 2), p = [6, 18).
    # IoU(A,p) = 4/18, IoU(B,p) = 8/14, IoU(A,q) = 2/10.
    gt = np.zeros((1, 1, 20), np.int32)
    gt[0, 0, :10], gt[0, 0, 10:] = 1, 2
    pr = np.zeros_like(gt)
    pr[0, 0, 0:2], pr[0, 0, 6:18] = 1, 2
    g, p = labels_from(gt), labels_from(pr)
    ov = lesion_overlaps(g, p)
    np.testing.assert_allclose(sorted(ov.iou), sorted([4 / 18, 8 / 14, 2 / 10]))
    per_side = match_lesions(g, p, rule="iou")
    # Recall pass: A (first) claims p, its best; B's only candidate p is gone -> FN.
    np.testing.assert_array_equal(per_side.gt_detected, [True, False])
    # Precision pass: q claims A, p claims B -> both correct.
    np.testing.assert_array_equal(per_side.pred_matched, [True, True])
    glob = match_lesions(g, p, rule="iou_global")  # (B,p) first, then (A,q)
    np.testing.assert_array_equal(glob.gt_detected, [True, True])
    np.testing.assert_array_equal(glob.pred_matched, [True, True])


@pytest.mark.parametrize("seed", range(5))
def test_iou_rule_matches_plain_reference(seed: int) -> None:
    rng = np.random.default_rng(seed)
    g = random_blobs(rng, (20, 20, 20), 8)
    p = np.roll(g, tuple(rng.integers(-2, 3, 3)), axis=(0, 1, 2)) ^ random_blobs(rng, (20, 20, 20), 3, 2.5)
    d = lesion_detection(p, g)
    # exact: IoUs are ratios of voxel counts, each one correctly rounded division here and in the library
    tp_gt, fn, tp_pred, fp = reference_iou_rule(g, p)
    assert (d.match.tp_gt, d.match.fn, d.match.tp_pred, d.match.fp) == (tp_gt, fn, tp_pred, fp)


def test_empty_conventions() -> None:
    z = np.zeros((5, 5, 5), bool)
    one = z.copy()
    one[2, 2, 2] = True
    both = lesion_detection(z, z)
    assert (both.recall, both.precision, both.f1) == (1.0, 1.0, 1.0)
    fp_only = lesion_detection(one, z)
    assert (fp_only.recall, fp_only.precision, fp_only.f1) == (1.0, 0.0, 0.0)
    fn_only = lesion_detection(z, one)
    assert (fn_only.recall, fn_only.precision, fn_only.f1) == (0.0, 1.0, 0.0)
    assert detection_scores(0, 3, 0, 2) == (0.0, 0.0, 0.0)  # LongiSeg would give F1 = 1 here
    assert lesion_detection(z, one, zero_division=0.0).precision == 0.0


def test_detection_scores_refuse_impossible_counts() -> None:
    assert detection_scores(np.int64(1), 2, 2, 2)[:2] == (0.5, 1.0)
    with pytest.raises(ValueError, match="tp_gt must be at most n_gt .*got tp_gt=3 and n_gt=2"):
        detection_scores(3, 2, 1, 2)
    with pytest.raises(ValueError, match="tp_pred must be at most n_pred .*got tp_pred=3 and n_pred=2"):
        detection_scores(1, 2, 3, 2)
    with pytest.raises(ValueError, match="tp_gt must be >= 0, got -1"):
        detection_scores(-1, 2, 1, 2)
    with pytest.raises(ValueError, match="n_pred must be >= 0, got -2"):
        detection_scores(0, 0, 0, -2)
    with pytest.raises(TypeError, match="n_gt must be an int, got float"):
        detection_scores(1, 2.0, 1, 2)
    with pytest.raises(TypeError, match="tp_pred must be an int, got bool"):
        detection_scores(1, 2, True, 2)


def test_errors() -> None:
    m = np.zeros((4, 4, 4), bool)
    with pytest.raises(ValueError, match="rule must be one of"):
        lesion_detection(m, m, rule="dice")
    with pytest.raises(ValueError, match="iou_threshold must lie in"):
        lesion_detection(m, m, iou_threshold=1.0)
    with pytest.raises(ValueError, match="min_volume_mm3 must be a finite number >= 0"):
        lesion_detection(m, m, min_volume_mm3=-1)
    with pytest.raises(TypeError, match="min_volume_mm3 must be a number"):
        label_lesions(m, min_volume_mm3="3")
    with pytest.raises(ValueError, match="same shape"):
        lesion_detection(m, np.zeros((4, 4, 5), bool))
    with pytest.raises(ValueError, match="gt must be a binary mask"):
        lesion_detection(m, m.astype(int) + 3)
    with pytest.raises(ValueError, match="same shape"):
        lesion_overlaps(labels_from(np.zeros((2, 2, 2))), labels_from(np.zeros((2, 2, 3))))
    assert MATCHING_RULES == ("iou", "iou_global", "overlap")


# --- properties ------------------------------------------------------------------------------------------


@settings(max_examples=30, deadline=None)
@given(st.data())
def test_lesion_scores_bounded_and_padding_invariant(data: st.DataObject) -> None:
    shape = data.draw(st.tuples(st.integers(1, 7), st.integers(1, 7), st.integers(1, 7)))
    g = data.draw(arrays(np.bool_, shape))
    p = data.draw(arrays(np.bool_, shape))
    rule = data.draw(st.sampled_from(MATCHING_RULES))
    d = lesion_detection(p, g, rule=rule)
    assert 0.0 <= d.f1 <= 1.0 and 0.0 <= d.precision <= 1.0 and 0.0 <= d.recall <= 1.0
    assert d.match.tp_gt + d.match.fn == d.n_gt and d.match.tp_pred + d.match.fp == d.n_pred
    dp = lesion_detection(np.pad(p, 2), np.pad(g, 2), rule=rule)
    assert dp.counts() == d.counts()
    # Swapping prediction and reference swaps recall and precision (one-to-one and overlap rules).
    if rule != "iou":
        ds = lesion_detection(g, p, rule=rule)
        assert (ds.recall, ds.precision) == pytest.approx((d.precision, d.recall))


# --- independent implementation -----------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(4))
def test_agreement_with_panoptica(seed: int) -> None:
    pan = pytest.importorskip("panoptica")
    from panoptica.utils.citation_reminder import disable_citation_reminder

    disable_citation_reminder()
    rng = np.random.default_rng(100 + seed)
    shape = (28, 28, 28)
    g = random_blobs(rng, shape, 12)
    p = np.roll(g, tuple(rng.integers(-2, 3, 3)), axis=(0, 1, 2)) ^ random_blobs(rng, shape, 4, 2.0)
    ev = pan.Panoptica_Evaluator(
        expected_input=pan.InputType.SEMANTIC,
        instance_approximator=pan.ConnectedComponentsInstanceApproximator(),
        instance_matcher=pan.NaiveThresholdMatching(pan.Metric.IOU, 0.1, strict_threshold=True),
        verbose=False,
    )
    res = next(iter(ev.evaluate(p.astype(np.uint8), g.astype(np.uint8), verbose=False).values()))
    d = lesion_detection(p, g, rule="iou_global")
    assert (d.n_gt, d.n_pred, d.match.tp_gt) == (res.n_ref_instances, res.n_pred_instances, res.tp)
    assert d.f1 == pytest.approx(res.rq)  # panoptica's recognition quality is the F1 of one-to-one matching


def test_non_contiguous_inputs_are_labelled_correctly() -> None:
    # Regression: cc3d mislabels non-contiguous views, which cropping and user slicing both produce.
    rng = np.random.default_rng(7)
    big = random_blobs(rng, (20, 24, 22), 10)
    views = [big[2:15, 3:20, 1:18], big[:, ::2], big.transpose(2, 0, 1)]
    for v in views:
        assert not v.flags["C_CONTIGUOUS"]
        assert label_lesions(v).n == label_lesions(np.ascontiguousarray(v)).n
        other = np.ascontiguousarray(np.roll(v, 1, axis=0))
        assert (
            lesion_detection(v, other).counts() == lesion_detection(np.ascontiguousarray(v), other).counts()
        )


# --- argument checks (probe findings) ------------------------------------------------------------------


def test_lesion_zero_division_is_checked() -> None:
    z, a = np.zeros((4, 4, 4)), np.zeros((4, 4, 4))
    a[1, 1, 1] = 1
    for bad, err in (("a", TypeError), (None, TypeError), (5, ValueError), (-1, ValueError)):
        with pytest.raises(err, match="zero_division"):
            lesion_detection(a, a, zero_division=bad)
        with pytest.raises(err, match="zero_division"):
            detection_scores(0, 0, 0, 0, zero_division=bad)
    with pytest.raises(ValueError, match="zero_division"):
        detection_scores(0, 0, 0, 0, zero_division=2)
    # NaN: undefined recall and precision leave F1 undefined, not 0
    d = lesion_detection(z, z, zero_division=float("nan"))
    assert np.isnan(d.recall) and np.isnan(d.precision) and np.isnan(d.f1)
    assert np.isnan(detection_scores(1, 1, 0, 0, zero_division=float("nan"))[2])
    assert detection_scores(1, 1, 0, 0, zero_division=0.0) == (1.0, 0.0, 0.0)


@pytest.mark.parametrize("thr", [0, 0.0, np.int64(0), np.int32(0), np.float32(0.1), np.float64(0.1)])
def test_iou_threshold_accepts_every_real_number_type(thr: object) -> None:
    a = np.zeros((4, 4, 4), bool)
    a[1, 1, 1] = True
    assert lesion_detection(a, a, iou_threshold=thr).f1 == 1.0
    assert match_lesions(label_lesions(a), label_lesions(a), iou_threshold=thr).tp_gt == 1


def test_iou_threshold_and_rule_are_checked_at_entry() -> None:
    a = np.zeros((4, 4, 4), bool)
    a[1, 1, 1] = True
    for bad, err in ((True, TypeError), (np.bool_(False), TypeError), ("0.1", TypeError), (np.int64(1), ValueError),
                     (float("nan"), ValueError), (-0.1, ValueError)):
        with pytest.raises(err, match="iou_threshold"):
            lesion_detection(a, a, iou_threshold=bad)
    with pytest.raises(ValueError, match="rule"):
        lesion_detection(a, a, rule=["iou"])  # type: ignore[arg-type]
