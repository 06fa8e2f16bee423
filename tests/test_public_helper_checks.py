"""Public helpers that take already-converted arrays (label_mask, detect_lesions), the case-level t-test, and the
figure functions: a wrong argument is refused by name, never turned into a silently wrong count or figure."""

from __future__ import annotations

import numpy as np
import pytest

from longiseg.data.case import LongitudinalCase
from longiseg.data.lesions import label_lesions, label_mask
from longiseg.metrics.aggregate import ResultsTable, paired_ttest
from longiseg.metrics.lesion import detect_lesions, lesion_detection


def _two_lesions() -> np.ndarray:
    m = np.zeros((8, 8, 8), bool)
    m[1:3, 1:3, 1:3] = True
    m[5:7, 5:7, 5:7] = True
    return m


def test_label_mask_refuses_a_mask_it_would_reinterpret():
    m, sp = _two_lesions(), np.ones(3)
    lab = label_mask(m, sp, 26, 0.0)
    np.testing.assert_array_equal(lab.labels, label_lesions(m).labels)
    assert lab.n == 2
    for bad in (m.astype(np.float32), m.astype(np.int64), m.astype(np.uint8)):
        with pytest.raises(TypeError, match=rf"mask must be a bool array .*got a {bad.dtype} array"):
            label_mask(bad, sp, 26, 0.0)
    with pytest.raises(TypeError, match="mask must be a bool array .*got list"):
        label_mask(m.tolist(), sp, 26, 0.0)
    with pytest.raises(ValueError, match=r"sp must be a \(3,\) array"):
        label_mask(m, np.ones(2), 26, 0.0)
    with pytest.raises(ValueError, match=r"sp must be a \(3,\) array"):
        label_mask(m, np.array([1.0, 0.0, 1.0]), 26, 0.0)
    with pytest.raises(ValueError, match="min_volume_mm3"):
        label_mask(m, sp, 26, -1.0)
    with pytest.raises(ValueError, match="connectivity"):
        label_mask(m, sp, 8, 0.0)


def test_detect_lesions_names_the_mask_at_fault():
    g = _two_lesions()
    p = g.copy()
    p[5:7, 5:7, 5:7] = False
    det, gl, pl = detect_lesions(p, g, np.ones(3), 26, 5.0, "overlap", 0.0)
    expected = lesion_detection(p, g, min_volume_mm3=5.0)
    assert (gl.n, pl.n, det.f1) == (2, 1, expected.f1)
    with pytest.raises(TypeError, match=r"p \(prediction\) must be a bool array"):
        detect_lesions(p.astype(np.float32), g, np.ones(3), 26, 5.0, "overlap", 0.0)
    with pytest.raises(TypeError, match=r"g \(reference\) must be a bool array"):
        detect_lesions(p, g.astype(np.float32), np.ones(3), 26, 5.0, "overlap", 0.0)
    with pytest.raises(ValueError, match=r"p \(prediction\) and g \(reference\) must have the same shape"):
        detect_lesions(p[:4], g, np.ones(3), 26, 5.0, "overlap", 0.0)


def _table(values, targets, model="m"):
    rows = [{"case_id": f"c{i // 2}", "patient_id": f"c{i // 2}", "kind": "P", "dice": v,
             **({} if t is None else {"target": t})} for i, (v, t) in enumerate(zip(values, targets))]
    return ResultsTable(rows, model)


def test_case_level_ttest_refuses_rows_that_would_replace_each_other():
    va, vb = [0.9, 0.1, 0.8, 0.2, 0.7, 0.4], [0.8, 0.2, 0.6, 0.3, 0.65, 0.3]
    targets = ["t1", "t2"] * 3
    res = paired_ttest(_table(va, targets), _table(vb, targets, "n"), "dice", level="case")
    assert res.n == 6
    assert res.mean_difference == pytest.approx(np.mean(np.subtract(va, vb)), rel=1e-12)
    with pytest.raises(ValueError, match=r"a has more than one row of case 'c0' and target None"):
        paired_ttest(_table(va, [None] * 6), _table(vb, [None] * 6, "n"), "dice", level="case")
    both = ResultsTable.concat([_table(va, targets), _table(va, targets)])
    with pytest.raises(ValueError, match=r"b has more than one row of case 'c0' and target 't1'"):
        paired_ttest(_table(va * 2, [f"t{i}" for i in range(12)]), both, "dice", level="case")


def test_results_table_concat_checks_its_arguments():
    a, b = _table([0.5, 0.6], ["t1", "t2"], "a"), _table([0.7, 0.8], ["t1", "t2"], "b")
    assert len(ResultsTable.concat([a, b]).rows) == 4
    assert ResultsTable.concat([a, b]).model == "a"
    assert ResultsTable.concat([a, b], model="").model == ""  # a name given is kept, even an empty one
    with pytest.raises(TypeError, match=r"tables\[0\] must be a ResultsTable"):
        ResultsTable.concat([1, 2])
    with pytest.raises(ValueError, match="tables must hold at least one"):
        ResultsTable.concat([])
    with pytest.raises(TypeError, match="model must be a str"):
        ResultsTable.concat([a], model=3)


def _case(labelled: bool = True) -> LongitudinalCase:
    rng = np.random.default_rng(0)
    img = rng.random((2, 1, 12, 12, 12)).astype(np.float32) + 0.1
    bm = np.zeros((12, 12, 12), np.uint8)
    bm[3:6, 3:6, 3:6] = 1
    pm = np.zeros((1, 12, 12, 12), np.uint8)
    pm[0, 7:10, 7:10, 7:10] = 1
    return LongitudinalCase(images=img, baseline_mask=bm if labelled else None,
                            progression_masks=pm if labelled else None, affine=np.eye(4), spacing=(1.0, 1.0, 1.0),
                            modalities=("flair",), case_id="c1")


@pytest.mark.parametrize("center, error, match", [
    ((-1, 5, 5), ValueError, "center"),  # a negative index would silently show the far side
    ((5.7, 5, 5), TypeError, "center"),
    ((12, 0, 0), ValueError, r"center must be a voxel inside the case's shape \(12, 12, 12\)"),
    ((5, 5), ValueError, "center"),
])
def test_plot_case_checks_center(tmp_path, center, error, match):
    pytest.importorskip("matplotlib")
    from longiseg.workflows.figures import plot_case

    with pytest.raises(error, match=match):
        plot_case(_case(), tmp_path / "f.png", center=center)
    with pytest.raises(TypeError, match="followup"):
        plot_case(_case(), tmp_path / "f.png", followup=1.0)
    assert not list(tmp_path.iterdir())


def test_plot_prediction_overlay_refuses_what_it_cannot_draw(tmp_path):
    pytest.importorskip("matplotlib")
    from longiseg.workflows.figures import plot_prediction_overlay

    with pytest.raises(ValueError, match="case 'c1' has no masks to plot"):
        plot_prediction_overlay(_case(labelled=False), {"m": tmp_path}, tmp_path / "f.png")
    with pytest.raises(ValueError, match="pred_dirs must name at least one prediction folder"):
        plot_prediction_overlay(_case(), {}, tmp_path / "f.png")
    assert not list(tmp_path.iterdir())
