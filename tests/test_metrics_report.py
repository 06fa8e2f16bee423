"""Reports and folder evaluation: paper table, CSV/JSON/PNG writers, evaluate_folder and its command line."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from longiseg.cli import main as cli_main
from longiseg.data.layout import BASELINE_MASK, MANIFEST_JSON, progression_filename
from longiseg.data.loading import find_mask_cases
from longiseg.metrics.aggregate import ResultsTable
from longiseg.metrics.evaluate import evaluate_folder, write_report
from longiseg.metrics.report import box_plot, format_paper_table, paper_table_rows, write_csv, write_json
from longiseg.utils.io import atomic_save_nifti

SHAPE = (12, 12, 12)
SPACING = (1.0, 1.0, 2.0)


def blob(*boxes: tuple[int, int, int, int, int, int]) -> np.ndarray:
    m = np.zeros(SHAPE, np.uint8)
    for z0, z1, y0, y1, x0, x1 in boxes:
        m[z0:z1, y0:y1, x0:x1] = 1
    return m


def save(path: Path, arr: np.ndarray) -> None:
    atomic_save_nifti(arr, np.diag([*SPACING, 1.0]), path)


def write_case(root: Path, case: str, baseline: np.ndarray, progression: list[np.ndarray]) -> None:
    save(root / case / BASELINE_MASK, baseline)
    for i, p in enumerate(progression, start=1):
        save(root / case / progression_filename(i), p)


@pytest.fixture
def folders(tmp_path: Path) -> tuple[Path, Path, Path]:
    """Reference folder with 3 cases of 2 patients, a perfect and an imperfect prediction folder."""
    gt, good, bad = tmp_path / "gt", tmp_path / "good", tmp_path / "bad"
    les = blob((1, 5, 1, 5, 1, 5))
    new = blob((7, 10, 7, 10, 7, 10))
    empty = np.zeros(SHAPE, np.uint8)
    cases = {"c1": (les, [new]), "c2": (les | new, [empty]), "c3": (les, [new, empty])}
    for c, (b, ps) in cases.items():
        write_case(gt, c, b, ps)
        write_case(good, c, b, ps)
    write_case(bad, "c1", blob((1, 5, 1, 5, 1, 3)), [empty])  # misses the new lesion
    write_case(bad, "c2", les, [new])  # false progression
    write_case(bad, "c3", les, [new, empty])
    manifest = {
        "modalities": ["flair"],
        "cases": [
            {"case_id": "c1", "patient_id": "P1"},
            {"case_id": "c2", "patient_id": "P1"},
            {"case_id": "c3", "patient_id": "P2"},
        ],
    }
    (gt / MANIFEST_JSON).write_text(json.dumps(manifest))
    return gt, good, bad


def test_evaluate_folder_rows_and_patients(folders: tuple[Path, Path, Path]) -> None:
    gt, good, bad = folders
    # the manifest gives patient ids and leaves out num_timepoints: c3's three are counted from its files
    assert [(e.case_id, e.patient_id, e.num_timepoints) for e in find_mask_cases(gt)] == [
        ("c1", "P1", 2), ("c2", "P1", 2), ("c3", "P2", 3)]
    res = evaluate_folder(good, gt, progress=False)
    t = res.table
    assert len(t) == 7 and t.model == "good"
    assert {r["patient_id"] for r in t.rows} == {"P1", "P2"}
    assert np.all(t.values("dice") == 1.0) and t.daa() == 100.0
    assert [r["kind"] for r in t.rows if r["case_id"] == "c3"] == ["B", "P", "NP"]
    res_bad = evaluate_folder(bad, gt, progress=False, model="bad")
    rows = {(r["case_id"], r["target"]): r for r in res_bad.table.rows}
    assert rows[("c1", "baseline")]["dice"] == pytest.approx(2 * 32 / (64 + 32))
    assert rows[("c1", "progression_t1")]["dice"] == 0.0 and rows[("c2", "progression_t1")]["dice"] == 0.0
    assert res_bad.table.daa() == pytest.approx(100 * 2 / 4)
    # HD95 uses the header spacing (x axis 2 mm): the half-width baseline lesion is 2 voxels = 4 mm short.
    assert rows[("c1", "baseline")]["hd95"] == pytest.approx(4.0)
    # Per patient: P1 averages c1 (2/3) and c2 (64 of 64 + 27 reference voxels); P2 (c3) has 1.0.
    p1 = (2 / 3 + 2 * 64 / (64 + 91)) / 2
    s = res_bad.table.summary("dice", "B")
    assert (s.mean, s.sd) == pytest.approx((np.mean([p1, 1.0]), np.std([p1, 1.0])))


def test_write_report_files(folders: tuple[Path, Path, Path], tmp_path: Path) -> None:
    gt, good, bad = folders
    results = [evaluate_folder(good, gt, progress=False), evaluate_folder(bad, gt, progress=False)]
    out = tmp_path / "report"
    text = write_report(results, out)
    for name in ("per_case.csv", "summary.csv", "summary.json", "table.txt", "boxplot.png"):
        assert (out / name).is_file(), name
    assert (out / "boxplot.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "good" in text and "bad" in text and "Dice B" in text and "DAA" in text
    summary = json.loads((out / "summary.json").read_text())
    assert summary["protocol"]["min_lesion_volume_mm3"] == 11.0 and summary["reference"] == "good"
    assert [m["model"] for m in summary["models"]] == ["good", "bad"]
    with open(out / "per_case.csv") as fh:
        per_case = list(csv.DictReader(fh))
    assert len(per_case) == 14 and per_case[0]["model"] == "good"
    assert not list(out.glob(".*tmp*"))  # atomic writes leave no temporary files


def test_paper_table_format_and_stars() -> None:
    rng = np.random.default_rng(0)
    rows_a, rows_b = [], []
    for i in range(10):
        base = {
            "case_id": f"c{i}",
            "patient_id": f"p{i}",
            "target": "baseline",
            "kind": "B",
            "daa_correct": None,
            "lesion_f1": 0.5,
            "lesion_ppv": 0.5,
        }
        rows_a.append({**base, "dice": 0.8 + 0.01 * rng.random()})
        rows_b.append({**base, "dice": 0.5 + 0.01 * rng.random()})
    a, b = ResultsTable(rows_a, "A"), ResultsTable(rows_b, "B")
    text = format_paper_table([a, b], reference="A")
    line_b = next(ln for ln in text.splitlines() if ln.startswith("B "))
    assert "**" in line_b and "(0.00" in line_b
    assert "p < 0.05" in text
    rows = paper_table_rows({"A": a, "B": b}, reference="A")
    assert np.isnan(rows[0]["dice/B/p"]) and rows[1]["dice/B/p"] < 0.01
    assert rows[0]["dice/P/n_patients"] == 0  # no P rows: undefined, shown as "-"
    with pytest.raises(ValueError, match="reference model"):
        format_paper_table([a, b], reference="C")
    with pytest.raises(ValueError, match="unique"):
        format_paper_table([a, a])
    with pytest.raises(TypeError, match="ResultsTable"):
        format_paper_table([1])


def test_writers(tmp_path: Path) -> None:
    p = write_json(tmp_path / "x.json", {"a": float("nan"), "b": np.float32(1.5), "c": [np.int64(2)]})
    assert json.loads(p.read_text()) == {"a": None, "b": 1.5, "c": [2]}
    write_csv(tmp_path / "x.csv", [{"a": 1, "b": float("nan")}, {"a": 2, "c": "x"}])
    with open(tmp_path / "x.csv") as fh:
        assert list(csv.DictReader(fh)) == [{"a": "1", "b": "", "c": ""}, {"a": "2", "b": "", "c": "x"}]
    with pytest.raises(FileExistsError):
        write_csv(tmp_path / "x.csv", [{"a": 1}], overwrite=False)
    t = ResultsTable([{"case_id": "c", "patient_id": "p", "kind": "B", "dice": 0.5, "lesion_f1": 1.0}], "m")
    assert box_plot(t, tmp_path / "b.png", metrics=[("dice", "B")]).is_file()
    with pytest.raises(ValueError, match="at least one"):
        box_plot(t, tmp_path / "c.png", metrics=[])


def test_evaluate_errors(folders: tuple[Path, Path, Path], tmp_path: Path) -> None:
    gt, good, _ = folders
    (good / "c3" / progression_filename(2)).unlink()
    with pytest.raises(ValueError, match="lacks 1 prediction file"):
        evaluate_folder(good, gt, progress=False)
    with pytest.raises(ValueError, match="is not a folder"):
        evaluate_folder(tmp_path / "nope", gt, progress=False)
    with pytest.raises(FileNotFoundError, match="no case folders with a baseline_mask"):
        evaluate_folder(good, tmp_path / "gt" / "c1", progress=False)
    shape_bad = tmp_path / "shape_bad"
    for e in find_mask_cases(gt):
        save(shape_bad / e.case_id / BASELINE_MASK, np.zeros((4, 4, 4), np.uint8))
        for i in range(1, e.num_timepoints):
            save(shape_bad / e.case_id / progression_filename(i), np.zeros((4, 4, 4), np.uint8))
    with pytest.raises(ValueError, match=r"case c1: prediction .* has shape \(4, 4, 4\)"):
        evaluate_folder(shape_bad, gt, progress=False)


def test_reference_manifest_is_read_as_training_reads_it(folders: tuple[Path, Path, Path]) -> None:
    """One manifest parser: what train refuses, evaluate refuses; listed cases only; .nii files accepted."""
    gt, good, _ = folders
    manifest = json.loads((gt / MANIFEST_JSON).read_text())
    (gt / MANIFEST_JSON).write_text(json.dumps({"cases": [{"case_id": "c3", "patient_id": "P2"}]}))
    res = evaluate_folder(good, gt, progress=False)
    assert {r["case_id"] for r in res.table.rows} == {"c3"}
    for bad_rows, match in (([{"case_id": "../c1"}], "path separator"), ([{"case_id": "c1"}] * 2, "duplicate"),
                            ([{"case_id": "c1", "progression": "maybe"}], "progression must be")):
        (gt / MANIFEST_JSON).write_text(json.dumps({"cases": bad_rows}))
        with pytest.raises(ValueError, match=match):
            evaluate_folder(good, gt, progress=False)
    (gt / MANIFEST_JSON).write_text(json.dumps(manifest))
    src = good / "c1" / BASELINE_MASK
    nib.save(nib.load(src), good / "c1" / "baseline_mask.nii")
    src.unlink()
    assert len(evaluate_folder(good, gt, progress=False).table) == 7


def test_command_line(
    folders: tuple[Path, Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    gt, good, bad = folders
    out = tmp_path / "cli"
    assert (
        cli_main(
            [
                "evaluate",
                str(good),
                str(bad),
                str(gt),
                "--out",
                str(out),
                "--protocol",
                "tdw",
                "--matching",
                "overlap",
                "--no-progress",
            ]
        )
        == 0
    )
    printed = capsys.readouterr().out
    assert "good" in printed and "bad" in printed
    summary = json.loads((out / "summary.json").read_text())
    assert summary["protocol"]["name"] == "tdw" and summary["protocol"]["matching"] == "overlap"
    assert cli_main(["evaluate", str(gt)]) == 2  # one folder only: a one-line error, exit code 2
    assert "give at least one prediction folder" in capsys.readouterr().err
