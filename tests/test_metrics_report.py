"""Reports and folder evaluation: paper table, CSV/JSON/PNG writers, evaluate_folder and its command line."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from longiseg.cli import main as cli_main
from longiseg.data.cohort import find_mask_cases
from longiseg.data.layout import BASELINE_MASK, MANIFEST_JSON, progression_filename
from longiseg.metrics.aggregate import ResultsTable
from longiseg.metrics.evaluate import evaluate_folder, write_report
from longiseg.metrics.report import box_plot, format_paper_table, paper_table_rows, write_csv, write_json
from longiseg.utils.nifti import atomic_save_nifti

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
    summary = json.loads((out / "summary.json").read_text(encoding="utf-8"))
    assert summary["protocol"]["min_lesion_volume_mm3"] == 11.0 and summary["reference"] == "good"
    assert [m["model"] for m in summary["models"]] == ["good", "bad"]
    with open(out / "per_case.csv") as fh:
        per_case = list(csv.DictReader(fh))
    assert len(per_case) == 14 and per_case[0]["model"] == "good"
    assert not list(out.glob(".*tmp*"))  # atomic writes leave no temporary files
    tdw = evaluate_folder(bad, gt, protocol="tdw", model="bad_tdw", progress=False)
    with pytest.raises(ValueError, match=r"different protocols \('good': 'segmast', 'bad_tdw': 'tdw'\)"):
        write_report([results[0], tdw], tmp_path / "mixed")
    assert not (tmp_path / "mixed").exists()


def test_a_report_without_matplotlib_is_refused_before_the_work_or_written_without_figures(
        folders: tuple[Path, Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    """A core install has no matplotlib: evaluate --out failed after scoring every case ("import of matplotlib
    halted") and wrote no report at all; it is refused up front, naming --no-figures, which writes the tables."""
    import sys

    from longiseg.cli import main

    gt, good, _ = folders
    result = evaluate_folder(good, gt, progress=False)
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    with pytest.raises(ImportError, match=r"matplotlib is needed for the box plot \(boxplot\.png\): pip install "
                                          r"'longiseg\[demo\]'.*figures=False"):
        write_report(result, tmp_path / "r")
    assert not (tmp_path / "r").exists()
    write_report(result, tmp_path / "r", figures=False)
    assert sorted(p.name for p in (tmp_path / "r").iterdir()) == ["per_case.csv", "summary.csv", "summary.json",
                                                                   "table.txt"]
    assert main(["evaluate", str(good), str(gt), "--out", str(tmp_path / "cli"), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("longiseg evaluate: error: matplotlib is needed for the box plot") and "--no-figures" in err, err
    assert not (tmp_path / "cli").exists()
    assert main(["evaluate", str(good), str(gt), "--out", str(tmp_path / "cli"), "--no-progress", "--no-figures"]) == 0
    assert (tmp_path / "cli" / "table.txt").is_file() and not (tmp_path / "cli" / "boxplot.png").exists()


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
    # a column the rows lack is "-" with a NaN p-value, with a reference as without one
    bare = [ResultsTable([{k: v for k, v in r.items() if not k.startswith("lesion_")} for r in t.rows], t.model)
            for t in (a, b)]
    rows = paper_table_rows(bare, reference="A")
    assert np.isnan(rows[1]["lesion_f1/B/mean"]) and np.isnan(rows[1]["lesion_f1/B/p"])
    assert rows[1]["dice/B/p"] < 0.01
    assert "**" in next(ln for ln in format_paper_table(bare, reference="A").splitlines() if ln.startswith("B "))
    with pytest.raises(ValueError, match="reference model"):
        format_paper_table([a, b], reference="C")
    with pytest.raises(ValueError, match="unique"):
        format_paper_table([a, a])
    with pytest.raises(TypeError, match="ResultsTable"):
        format_paper_table([1])


def test_writers(tmp_path: Path) -> None:
    p = write_json(tmp_path / "x.json", {"a": float("nan"), "b": np.float32(1.5), "c": [np.int64(2)],
                                         "d": float("inf"), "e": np.float64(-np.inf)})
    # strict JSON (hd_one_empty=inf wrote Infinity): a parser without Python's extensions reads it
    strict = json.loads(p.read_text(encoding="utf-8"), parse_constant=lambda c: pytest.fail(f"non-JSON {c}"))
    assert strict == {"a": None, "b": 1.5, "c": [2], "d": "inf", "e": "-inf"}
    assert float(strict["d"]) == float("inf")
    write_csv(tmp_path / "x.csv", [{"a": 1, "b": float("nan")}, {"a": 2, "c": "x"}])
    with open(tmp_path / "x.csv") as fh:
        assert list(csv.DictReader(fh)) == [{"a": "1", "b": "", "c": ""}, {"a": "2", "b": "", "c": "x"}]
    with pytest.raises(FileExistsError):
        write_csv(tmp_path / "x.csv", [{"a": 1}], overwrite=False)
    t = ResultsTable([{"case_id": "c", "patient_id": "p", "kind": "B", "dice": 0.5, "lesion_f1": 1.0}], "m")
    assert box_plot(t, tmp_path / "b.png", metrics=[("dice", "B")]).is_file()
    # a model name holding '$' was parsed as math: "m$^$x" raised and the whole report was lost
    odd = ResultsTable([{"case_id": "c", "patient_id": "p", "kind": "B", "dice": 0.5}], "m$^$x")
    assert box_plot(odd, tmp_path / "odd.png", metrics=[("dice", "B")]).is_file()
    with pytest.raises(ValueError, match="at least one"):
        box_plot(t, tmp_path / "c.png", metrics=[])


def test_figures_leave_the_callers_matplotlib_backend_alone(tmp_path: Path) -> None:
    """A notebook's backend stays what it was after the library draws a figure (it used to be switched to Agg
    for the rest of the session); checked in a fresh process whose backend is svg."""
    import subprocess
    import sys

    code = """
import sys, matplotlib
matplotlib.use("svg")
import matplotlib.pyplot as plt
from longiseg.metrics.aggregate import ResultsTable
from longiseg.metrics.report import box_plot
t = ResultsTable([{"case_id": "c", "patient_id": "p", "kind": "B", "dice": 0.5, "lesion_f1": 1.0}], "m")
box_plot(t, sys.argv[1], metrics=[("dice", "B")])
print(matplotlib.get_backend(), len(plt.get_fignums()))
"""
    root = Path(__file__).resolve().parents[1]
    result = subprocess.run([sys.executable, "-c", code, str(tmp_path / "b.png")], capture_output=True, text=True,
                            timeout=300, env={**__import__("os").environ, "PYTHONPATH": str(root)})
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.split() == ["svg", "0"]  # the caller's backend, and no figure left open in pyplot
    assert (tmp_path / "b.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


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
    with pytest.raises(ValueError, match=r"case 'c1': prediction .* another grid .*\(shape \(4, 4, 4\) vs \(12, 12, 12\)\)"):
        evaluate_folder(shape_bad, gt, progress=False)


def test_reference_manifest_is_read_as_training_reads_it(folders: tuple[Path, Path, Path]) -> None:
    """One manifest parser: what train refuses, evaluate refuses; listed cases only; .nii files accepted."""
    gt, good, _ = folders
    manifest = json.loads((gt / MANIFEST_JSON).read_text(encoding="utf-8"))
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
    summary = json.loads((out / "summary.json").read_text(encoding="utf-8"))
    assert summary["protocol"]["name"] == "tdw" and summary["protocol"]["matching"] == "overlap"
    assert cli_main(["evaluate", str(gt)]) == 2  # one folder only: a one-line error, exit code 2
    assert "give at least one prediction folder" in capsys.readouterr().err


# --------------------------------------------------------------------------- report folders, grids, spacing
def _rich(tmp_path: Path) -> tuple[Path, Path]:
    """A reference (and a perfect prediction) with baseline lesions of three sizes: enough for tertiles."""
    ref, pred = tmp_path / "ref0", tmp_path / "pred0"
    base = blob((0, 2, 0, 2, 0, 2), (4, 7, 4, 7, 4, 7), (8, 12, 8, 12, 0, 4))
    for c, new in (("r1", blob((0, 3, 8, 12, 8, 12))), ("r2", blob((9, 12, 0, 3, 8, 12)))):
        write_case(ref, c, base, [new])
        write_case(pred, c, base, [new])
    return ref, pred


def _listing(folder: Path) -> list[str]:
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*"))


def test_overwritten_report_holds_only_this_runs_files(
    folders: tuple[Path, Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    gt, good, _ = folders
    ref0, pred0 = _rich(tmp_path)
    rep = tmp_path / "rep1"
    assert cli_main(["evaluate", str(pred0), str(ref0), "--out", str(rep), "--no-progress"]) == 0
    assert (rep / "stratified.csv").is_file()
    assert cli_main(["evaluate", str(good), str(gt), "--out", str(rep), "--no-progress"]) == 2  # no --overwrite
    assert "already holds a report" in capsys.readouterr().err
    assert cli_main(["evaluate", str(good), str(gt), "--out", str(rep), "--overwrite", "--no-progress"]) == 0
    # the second data set is too small for tertiles: no stratified.csv, and none left from the first run
    assert json.loads((rep / "summary.json").read_text(encoding="utf-8"))["stratified"] == []
    assert _listing(rep) == ["boxplot.png", "per_case.csv", "summary.csv", "summary.json", "table.txt"]
    with open(rep / "per_case.csv") as fh:
        assert {r["case_id"] for r in csv.DictReader(fh)} == {"c1", "c2", "c3"}
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no staging folder left


def test_report_in_a_folder_with_other_content_touches_only_report_files(
    folders: tuple[Path, Path, Path], tmp_path: Path
) -> None:
    gt, good, _ = folders
    ref0, pred0 = _rich(tmp_path)
    out = tmp_path / "mine"
    write_report(evaluate_folder(pred0, ref0, progress=False), out)
    assert (out / "stratified.csv").is_file()
    (out / "notes.txt").write_text("mine")
    (out / "sub").mkdir()
    (out / "sub" / "stratified.csv").write_text("mine too")  # same name, not a report file of ours
    write_report(evaluate_folder(good, gt, progress=False), out)
    assert _listing(out) == ["boxplot.png", "notes.txt", "per_case.csv", "sub", "sub/stratified.csv",
                             "summary.csv", "summary.json", "table.txt"]
    assert (out / "notes.txt").read_text(encoding="utf-8") == "mine" and (out / "sub" / "stratified.csv").read_text(encoding="utf-8") == "mine too"


def test_a_failed_report_leaves_the_earlier_one(
    folders: tuple[Path, Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import longiseg.metrics.evaluate as ev

    gt, good, bad = folders
    out = tmp_path / "rep"
    write_report(evaluate_folder(good, gt, progress=False), out)
    before = {p: (out / p).read_bytes() for p in _listing(out)}

    def broken(*args: object, **kwargs: object) -> None:
        raise RuntimeError("figure failed")

    monkeypatch.setattr(ev, "box_plot", broken)
    with pytest.raises(RuntimeError, match="figure failed"):
        write_report(evaluate_folder(bad, gt, progress=False), out)
    assert {p: (out / p).read_bytes() for p in _listing(out)} == before
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_evaluate_refuses_a_reference_case_on_two_grids(
    folders: tuple[Path, Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The reference masks of a case must share one grid, as longiseg lesions and longiseg predict require."""
    gt, good, _ = folders
    prog = gt / "c1" / progression_filename(1)
    new = np.asarray(nib.load(prog).dataobj)
    atomic_save_nifti(new, np.diag([3.0, 3.0, 3.0, 1.0]), prog, overwrite=True)  # 3 mm next to (1, 1, 2) mm
    match = r"case 'c1': reference mask .*c1/progression_t1.nii.gz lies on another grid than baseline_mask"
    with pytest.raises(ValueError, match=match):
        evaluate_folder(good, gt, progress=False, output_dir=tmp_path / "out")
    assert not (tmp_path / "out").exists()
    assert cli_main(["evaluate", str(good), str(gt), "--out", str(tmp_path / "out"), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("longiseg evaluate: error: ") and "lies on another grid" in err[0]
    assert not (tmp_path / "out").exists()
    # a predicted case whose masks lie on two grids is refused as longiseg lesions refuses it (evaluate read each
    # predicted file on its own: a follow-up 5e-4 mm off its baseline was scored here and refused there)
    atomic_save_nifti(new, np.diag([*SPACING, 1.0]), prog, overwrite=True)
    atomic_save_nifti(new, np.diag([3.0, 3.0, 3.0, 1.0]), good / "c1" / progression_filename(1), overwrite=True)
    with pytest.raises(ValueError, match=r"case 'c1': prediction .*progression_t1.nii.gz lies on another grid than "
                                         r"baseline_mask.nii.gz"):
        evaluate_folder(good, gt, progress=False)
    # a predicted case on one grid, but not the reference's, is refused naming both files
    base = good / "c1" / "baseline_mask.nii.gz"
    atomic_save_nifti(np.asarray(nib.load(base).dataobj), np.diag([3.0, 3.0, 3.0, 1.0]), base, overwrite=True)
    with pytest.raises(ValueError, match=r"case 'c1': prediction .*baseline_mask.nii.gz lies on another grid than "
                                         r"\S*gt\S*baseline_mask.nii.gz .*resample the prediction"):
        evaluate_folder(good, gt, progress=False)


def test_evaluate_and_lesions_agree_on_voxel_volume(folders: tuple[Path, Path, Path], tmp_path: Path) -> None:
    """One spacing rule: the affine's column norms, for evaluate and lesions alike; a file whose header
    voxel sizes disagree with its affine is refused by both, naming it."""
    from longiseg.metrics.evolution import evolution_folder

    gt, good, _ = folders
    # an oblique grid of 1 x 1 x 2 mm voxels: the affine's diagonal is not the voxel size
    rot = np.array([[0.8, -0.6, 0.0], [0.6, 0.8, 0.0], [0.0, 0.0, 1.0]])
    oblique = np.eye(4)
    oblique[:3, :3] = rot @ np.diag(SPACING)
    for folder in (gt, good):
        for f in folder.glob("*/*.nii.gz"):
            atomic_save_nifti(np.asarray(nib.load(f).dataobj), oblique, f, overwrite=True)
    rows = {(r["case_id"], r["target"]): r for r in evaluate_folder(good, gt, progress=False).table.rows}
    evs = {e.case_id: e for e in evolution_folder(gt, progress=False)}
    assert rows[("c1", "baseline")]["gt_volume_mm3"] == pytest.approx(64 * 2.0) == evs["c1"].baseline_volume_mm3
    assert rows[("c1", "progression_t1")]["gt_volume_mm3"] == pytest.approx(27 * 2.0)
    assert sum(c.added_volume_mm3 for c in evs["c1"].changes) == pytest.approx(27 * 2.0)
    # sform 1 x 1 x 2 mm but qform/pixdim 3 mm: ambiguous, refused by both
    bad = gt / "c2" / BASELINE_MASK
    img = nib.Nifti1Image(np.asarray(nib.load(bad).dataobj), oblique)
    img.header.set_qform(np.diag([3.0, 3.0, 3.0, 1.0]), code=1)
    nib.save(img, str(bad))
    match = r"c2/baseline_mask.nii.gz: the voxel size of its affine \(sform\) 1x1x2 mm disagrees .* 3x3x3 mm"
    with pytest.raises(ValueError, match=match):
        evaluate_folder(good, gt, progress=False)
    with pytest.raises(ValueError, match=match):
        evolution_folder(gt, progress=False)


def test_two_evaluations_into_one_new_folder_do_not_replace_each_other(
    folders: tuple[Path, Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """write_report(overwrite=False), as ``longiseg evaluate`` without --overwrite: a report that another run
    writes into the same new folder meanwhile is not replaced."""
    import longiseg.metrics.evaluate as ev

    gt, good, bad = folders
    out = tmp_path / "rep"
    plot = ev.box_plot
    theirs: dict[str, bytes] = {}

    def other_finishes_first(*args: object, **kwargs: object) -> object:
        if not theirs:
            theirs["writing"] = b""
            write_report(evaluate_folder(bad, gt, model="theirs", progress=False), out, overwrite=False)
            theirs.update({p: (out / p).read_bytes() for p in _listing(out)})
            del theirs["writing"]
        return plot(*args, **kwargs)

    monkeypatch.setattr(ev, "box_plot", other_finishes_first)
    with pytest.raises(FileExistsError, match=rf"{out} was written by another process.*\(--overwrite\)"):
        write_report(evaluate_folder(good, gt, model="ours", progress=False), out, overwrite=False)
    assert {p: (out / p).read_bytes() for p in _listing(out)} == theirs and b"\ntheirs," in theirs["summary.csv"]
    with pytest.raises(FileExistsError, match=r"already holds a report .*\(--overwrite\)"):
        write_report(evaluate_folder(good, gt, model="ours", progress=False), out, overwrite=False)
    monkeypatch.undo()
    write_report(evaluate_folder(good, gt, model="ours", progress=False), out)  # overwrite (the default): replaced
    assert b"\ntheirs," not in (out / "summary.csv").read_bytes()


# --- argument checks and protocol round trip (probe findings) ------------------------------------------


@pytest.mark.parametrize("bins", ["x", "Tertiles", (-5, -1), (113, 43), ("a",), None])
def test_write_report_refuses_bad_bins_before_writing(
    folders: tuple[Path, Path, Path], tmp_path: Path, bins: object
) -> None:
    gt, good, _ = folders
    res = evaluate_folder(good, gt, progress=False)
    for arg in ("progression_bins", "baseline_bins"):
        out = tmp_path / arg
        with pytest.raises((TypeError, ValueError), match=arg):
            write_report(res, out, **{arg: bins})
        assert not out.exists()  # refused up front, not logged as "too few lesions" after a partial report


def test_protocol_round_trips_through_summary_json(folders: tuple[Path, Path, Path], tmp_path: Path) -> None:
    from longiseg.metrics.protocol import EvaluationProtocol

    gt, good, _ = folders
    res = evaluate_folder(good, gt, progress=False)
    write_report(res, tmp_path / "r")
    saved = json.loads((tmp_path / "r" / "summary.json").read_text(encoding="utf-8"))["protocol"]
    assert saved["hd_one_empty"] is None  # NaN is written as null
    back = EvaluationProtocol.from_dict(saved)
    assert back == res.protocol and hash(back) == hash(res.protocol)
    assert np.isnan(back.hd_one_empty)
    # two separately built NaN protocols are one protocol: write_report compares them
    a = EvaluationProtocol(hd_one_empty=float("nan"))
    b = EvaluationProtocol(hd_one_empty=float("nan"))
    assert a == b and hash(a) == hash(b) and len({a, b}) == 1
    assert a != EvaluationProtocol(hd_one_empty=100.0)
    other = evaluate_folder(good, gt, progress=False, model="other", protocol=b)
    write_report([evaluate_folder(good, gt, progress=False, protocol=a), other], tmp_path / "two")


@pytest.mark.parametrize("atol", [float("nan"), -1.0, float("inf")])
def test_evaluate_folder_refuses_bad_affine_atol(folders: tuple[Path, Path, Path], atol: float) -> None:
    gt, good, _ = folders
    with pytest.raises(ValueError, match="affine_atol"):
        evaluate_folder(good, gt, progress=False, affine_atol=atol)
    with pytest.raises(TypeError, match="affine_atol"):
        evaluate_folder(good, gt, progress=False, affine_atol="0.001")  # type: ignore[arg-type]


@pytest.mark.parametrize("flag", ["False", float("nan"), 2, None])
def test_daa_refuses_flags_that_are_not_bools(flag: object) -> None:
    rows = [{"case_id": "c1", "patient_id": "p", "kind": "P", "daa_correct": True},
            {"case_id": "c2", "patient_id": "p", "kind": "NP", "daa_correct": flag}]
    if flag is None:  # a baseline row: left out
        assert ResultsTable(rows).daa() == 100.0
        return
    with pytest.raises(ValueError, match=r"row 1 \(case 'c2'\): column 'daa_correct'"):
        ResultsTable(rows).daa()


def test_daa_accepts_numpy_bools_and_0_1() -> None:
    rows = [{"case_id": f"c{i}", "patient_id": "p", "kind": "P", "daa_correct": v}
            for i, v in enumerate([np.bool_(True), 0, 1.0, False])]
    assert ResultsTable(rows).daa() == 50.0
