"""Lesion evolution (new/enlarging lesions, merges, volumes, MRI activity) and the ``longiseg lesions`` report."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from longiseg.metrics.evolution import evolution_folder, lesion_evolution

ROOT = Path(__file__).resolve().parents[1]


def _box(shape, lo, hi) -> np.ndarray:  # noqa: ANN001
    m = np.zeros(shape, dtype=np.uint8)
    m[tuple(slice(a, b) for a, b in zip(lo, hi))] = 1
    return m


SHAPE = (20, 20, 20)


def test_new_enlarging_and_stable_lesions() -> None:
    base = _box(SHAPE, (2, 2, 2), (5, 5, 5)) | _box(SHAPE, (12, 12, 12), (14, 14, 14))
    grow = _box(SHAPE, (5, 2, 2), (6, 5, 5))  # a slab on the first lesion
    new = _box(SHAPE, (2, 12, 2), (4, 14, 4))  # far from everything
    ev = lesion_evolution(base, (grow | new)[None], np.eye(4), min_volume_mm3=0)
    fu = ev.followups[0]
    assert (fu.new, fu.enlarging, fu.merged, fu.active) == (1, 1, 0, True)
    by_kind = {c.kind: c for c in fu.changes}
    assert by_kind["new"].added_volume_mm3 == 8 and by_kind["new"].earlier_lesions == ()
    assert by_kind["enlarging"].added_volume_mm3 == 9
    assert by_kind["enlarging"].lesion_volume_mm3 == 27 + 9
    assert ev.baseline_lesions == 2 and ev.baseline_volume_mm3 == 27 + 8
    assert ev.volumes_mm3 == [35, 35 + 17] and fu.volume_change_mm3 == 17
    assert ev.active


def test_predicted_progression_overlapping_the_baseline_counts_only_new_tissue() -> None:
    base = _box(SHAPE, (2, 2, 2), (6, 6, 6))
    prog = _box(SHAPE, (4, 2, 2), (8, 6, 6))  # a prediction that repeats half the baseline lesion and grows it
    ev = lesion_evolution(base, prog[None], np.eye(4), min_volume_mm3=0)
    (change,) = ev.followups[0].changes
    assert change.kind == "enlarging" and change.added_volume_mm3 == 2 * 16
    assert ev.followups[0].lesion_volume_mm3 == 64 + 32
    inside = lesion_evolution(base, base[None], np.eye(4), min_volume_mm3=0)
    assert not inside.followups[0].active  # progression entirely inside the baseline lesion: no change


def test_progression_inside_earlier_lesions_is_said(caplog: pytest.LogCaptureFixture) -> None:
    """A reference whose progression mask repeats an old lesion (a difference mask, as UCSF-ALPTDG's) was reported
    as "no activity" without a word while evaluate scored the case as progressing."""
    base = _box(SHAPE, (2, 2, 2), (6, 6, 6))
    with caplog.at_level("WARNING", logger="longiseg"):
        lesion_evolution(base, np.stack([base, _box(SHAPE, (4, 2, 2), (8, 6, 6))]), np.eye(4), case_id="p1")
    (record,) = [r for r in caplog.records if "p1" in r.getMessage()]
    assert ("case p1: the progression mask marks voxels that were lesion at the previous timepoint (follow-up 1: 64 "
            "voxels, follow-up 2: 32 voxels)") in record.getMessage()
    caplog.clear()
    with caplog.at_level("WARNING", logger="longiseg"):
        lesion_evolution(base, _box(SHAPE, (6, 2, 2), (8, 6, 6))[None], np.eye(4), case_id="p2")
    assert not caplog.records


def test_connectivity_decides_contact() -> None:
    base = _box(SHAPE, (2, 2, 2), (5, 5, 5))
    corner = _box(SHAPE, (5, 5, 5), (7, 7, 7))  # touches the lesion only at a corner
    full = lesion_evolution(base, corner[None], np.eye(4), min_volume_mm3=0, connectivity=26)
    face = lesion_evolution(base, corner[None], np.eye(4), min_volume_mm3=0, connectivity=6)
    assert full.followups[0].changes[0].kind == "enlarging"
    assert face.followups[0].changes[0].kind == "new"


def test_merge_is_reported_and_counted_once() -> None:
    base = _box(SHAPE, (2, 2, 2), (5, 5, 5)) | _box(SHAPE, (8, 2, 2), (11, 5, 5))
    bridge = _box(SHAPE, (5, 3, 3), (8, 4, 4))
    ev = lesion_evolution(base, bridge[None], np.eye(4), min_volume_mm3=0)
    fu = ev.followups[0]
    assert (fu.new, fu.enlarging, fu.merged) == (0, 1, 1)
    change = fu.changes[0]
    assert change.merged and change.earlier_lesions == (1, 2)
    assert "merge" in change.note and "#1, #2" in change.note
    assert fu.lesion_count == 1


def test_growth_in_pieces_is_one_enlarging_lesion() -> None:
    base = _box(SHAPE, (5, 5, 5), (8, 8, 8))
    rim = _box(SHAPE, (4, 5, 5), (5, 8, 8)) | _box(SHAPE, (8, 5, 5), (9, 8, 8))  # two caps, not touching
    ev = lesion_evolution(base, rim[None], np.eye(4), min_volume_mm3=0, connectivity=6)
    (change,) = ev.followups[0].changes
    assert change.kind == "enlarging" and change.components == 2 and "2 separate pieces" in change.note


def test_min_volume_filters_small_lesions_and_growth() -> None:
    base = _box(SHAPE, (2, 2, 2), (5, 5, 5)) | _box(SHAPE, (15, 15, 15), (16, 16, 16))  # 27 + 1 voxel
    prog = _box(SHAPE, (5, 2, 2), (6, 3, 3)) | _box(SHAPE, (10, 10, 10), (11, 11, 12))  # growth 1, speck 2
    ev = lesion_evolution(base, prog[None], np.eye(4), min_volume_mm3=3)
    assert ev.baseline_lesions == 1 and not ev.active
    low = lesion_evolution(base, prog[None], np.eye(4), min_volume_mm3=1)
    assert (low.followups[0].new, low.followups[0].enlarging) == (1, 1)


def test_three_timepoints_use_earlier_followups() -> None:
    base = _box(SHAPE, (2, 2, 2), (4, 4, 4))
    fu1 = _box(SHAPE, (10, 10, 10), (12, 12, 12))  # new at follow-up 1
    fu2 = _box(SHAPE, (12, 10, 10), (13, 12, 12))  # grows from it at follow-up 2
    ev = lesion_evolution(base, np.stack([fu1, fu2]), np.eye(4), min_volume_mm3=0)
    assert [(f.new, f.enlarging) for f in ev.followups] == [(1, 0), (0, 1)]
    assert ev.followups[1].changes[0].earlier_lesions == (2,)  # raster order at timepoint 1


def test_centre_in_scanner_coordinates() -> None:
    affine = np.array([[0, 0, 2.0, -30], [-1.5, 0, 0, 40], [0, 3.0, 0, -10], [0, 0, 0, 1]])
    prog = _box(SHAPE, (10, 4, 6), (12, 6, 8))
    ev = lesion_evolution(np.zeros(SHAPE, np.uint8), prog[None], affine, min_volume_mm3=0)
    (change,) = ev.followups[0].changes
    centre_vox = np.array([10.5, 4.5, 6.5])
    np.testing.assert_allclose(change.centre_mm, affine[:3, :3] @ centre_vox + affine[:3, 3], atol=0.01)
    assert change.added_volume_mm3 == pytest.approx(8 * 2.0 * 1.5 * 3.0)


def test_the_centre_voxel_of_a_rim_of_growth_lies_on_the_new_tissue() -> None:
    # a confluent lesion growing as a shell: the centre of mass of the new tissue is deep inside the old lesion,
    # so the voxel given (and the montage centred there) showed the old lesion's inside and not the change
    base = _box(SHAPE, (6, 6, 6), (14, 14, 14))
    grown = _box(SHAPE, (5, 5, 5), (15, 15, 15))
    affine = np.diag([1.0, 1.0, 2.0, 1.0])
    ev = lesion_evolution(base, (grown & ~base)[None], affine, min_volume_mm3=0)
    (change,) = ev.followups[0].changes
    assert change.kind == "enlarging"
    np.testing.assert_allclose(change.centre_mm, [9.5, 9.5, 19.0], atol=0.01)  # the centre of mass: inside
    assert grown[change.centre_voxel] and not base[change.centre_voxel]  # the voxel shown: on the new tissue


def _blobs(rng: np.random.Generator, shape: tuple[int, ...], n: int) -> np.ndarray:
    m = np.zeros(shape, dtype=bool)
    for _ in range(n):
        lo = [int(rng.integers(0, s - 3)) for s in shape]
        m[tuple(slice(a, a + int(rng.integers(1, 4))) for a in lo)] = True
    return m


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_changes_match_a_whole_volume_reference(seed: int) -> None:
    """Each change's numbers, worked out in its lesion's bounding box, equal those of the whole volume."""
    from scipy import ndimage

    rng = np.random.default_rng(seed)
    shape = (24, 28, 20)
    base = _blobs(rng, shape, 25)
    prog = _blobs(rng, shape, 15) & ~base
    affine = np.diag([0.9, 1.1, 3.0, 1.0])
    affine[:3, 3] = [-5.0, 7.0, 2.0]
    (followup,) = lesion_evolution(base, prog[None], affine, min_volume_mm3=2.0, connectivity=6).followups
    structure = ndimage.generate_binary_structure(3, 1)
    lesions, _ = ndimage.label(base | prog, structure)
    earlier, _ = ndimage.label(base, structure)
    sizes = np.bincount(earlier.ravel())
    pieces, _ = ndimage.label(prog, structure)
    found = []
    for f in range(1, lesions.max() + 1):
        new = prog & (lesions == f)
        if new.sum() * 0.9 * 1.1 * 3.0 < 2.0:
            continue
        old = sorted(int(e) for e in np.unique(earlier[lesions == f]) if e and sizes[e] * 0.9 * 1.1 * 3.0 >= 2.0)
        coords = np.argwhere(new)
        centre = coords.mean(axis=0)
        found.append((int(new.sum()), len(old), int(np.unique(pieces[new]).size), centre, coords))
    assert len(found) == len(followup.changes) > 3
    for change, (voxels, n_old, n_pieces, centre, coords) in zip(followup.changes, found):
        assert change.added_volume_mm3 == pytest.approx(voxels * 0.9 * 1.1 * 3.0)
        assert (len(change.earlier_lesions), change.components) == (n_old, n_pieces)
        np.testing.assert_allclose(change.centre_mm, affine[:3, :3] @ centre + affine[:3, 3], atol=0.006)
        distances = (((coords - centre) * [0.9, 1.1, 3.0]) ** 2).sum(axis=1)
        assert any(tuple(c) == change.centre_voxel for c in coords[distances <= distances.min() * (1 + 1e-9)])


def test_input_errors_name_the_argument() -> None:
    base = np.zeros(SHAPE, np.uint8)
    with pytest.raises(ValueError, match="progression\\[0\\]"):
        lesion_evolution(base, np.zeros((1, 5, 5, 5)), np.eye(4))
    with pytest.raises(ValueError, match="connectivity"):
        lesion_evolution(base, base[None], np.eye(4), connectivity=8)
    with pytest.raises(ValueError, match="binary"):
        lesion_evolution(base + 2, base[None], np.eye(4))
    with pytest.raises(ValueError, match="affine"):
        lesion_evolution(base, base[None], np.zeros((4, 4)))


@pytest.fixture(scope="module")
def demo_refs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[dict]]:
    """Two demo patients with three timepoints (one progressing with growth in two pieces, one stable)."""
    from longiseg.data.demo_cohort import DemoCohortConfig, generate_demo_case
    from longiseg.data.loading import save_case
    from longiseg.data.manifest import manifest_from_cases, write_manifest

    root = tmp_path_factory.mktemp("refs")
    cfg = DemoCohortConfig(num_patients=12, num_timepoints=3, spacing=2)
    cases, stats = [], []
    for i in (6, 0):
        case, st = generate_demo_case(i, cfg)
        save_case(case, root, image_dtype=np.int16)
        cases.append(case)
        stats.append(st)
    write_manifest(root / "manifest.json", manifest_from_cases(cases))
    return root, stats


def test_demo_references_report_the_placed_lesions(demo_refs) -> None:  # noqa: ANN001
    root, stats = demo_refs
    evs = evolution_folder(root, progress=False)
    assert [e.case_id for e in evs] == ["demo-000", "demo-006"]  # case-id order, not the manifest's
    for ev in evs:
        st = next(s for s in stats if s["case_id"] == ev.case_id)
        got = [(f.new, f.enlarging, f.merged) for f in ev.followups]
        assert got == [(fu["new_lesions"], fu["enlarged_lesions"], 0) for fu in st["followups"]]
        assert ev.baseline_lesions == st["baseline_lesions"]
        for f, fu in zip(ev.followups, st["followups"]):
            assert sum(c.added_volume_mm3 for c in f.changes) == pytest.approx(fu["progression_volume_mm3"])
            assert f.lesion_volume_mm3 == pytest.approx(fu["lesion_volume_ml"] * 1000)
    active = next(e for e in evs if e.case_id == "demo-006")
    assert any(c.components > 1 for c in active.changes)  # a rim of growth stays one enlarging lesion


def test_lesions_command_writes_tables_figures_and_html(demo_refs, tmp_path: Path,  # noqa: ANN001
                                                         capsys: pytest.CaptureFixture) -> None:
    from longiseg.cli import main

    root, stats = demo_refs
    out = tmp_path / "report"
    assert main(["lesions", str(root), "--out", str(out), "--min-volume", "3"]) == 0
    doc = json.loads((out / "lesions.json").read_text(encoding="utf-8"))
    assert doc["options"] == {"min_volume_mm3": 3.0, "connectivity": 26}
    n_changes = sum(fu["new_lesions"] + fu["enlarged_lesions"] for s in stats for fu in s["followups"])
    rows = (out / "lesions.csv").read_text(encoding="utf-8").splitlines()
    assert len(rows) == 1 + n_changes
    assert len((out / "followups.csv").read_text(encoding="utf-8").splitlines()) == 1 + 2 * 2
    montages = sorted((out / "figures").glob("demo-006_fu*_lesion*.png"))
    assert len(montages) == n_changes
    html = (out / "report.html").read_text(encoding="utf-8")
    assert html.count("data:image/png;base64,") == n_changes + 2  # montages and two volume plots
    assert "MRI activity" in html and "src=\"http" not in html
    assert main(["lesions", str(root), "--out", str(out)]) == 2  # exists: refused without --overwrite
    capsys.readouterr()
    assert main(["lesions", str(root), "--out", str(out), "--overwrite", "--no-progress"]) == 0
    assert "%|" not in capsys.readouterr().err  # no progress bar, the report's own included


def test_lesions_command_without_images_says_so(demo_refs, tmp_path: Path,  # noqa: ANN001
                                                caplog: pytest.LogCaptureFixture) -> None:
    import shutil

    from longiseg.workflows.lesions import run_lesion_report

    root, _ = demo_refs
    masks = tmp_path / "masks" / "demo-006"
    masks.mkdir(parents=True)
    for f in (root / "demo-006").glob("*_mask.nii.gz"):
        shutil.copy(f, masks / f.name)
    for f in (root / "demo-006").glob("progression_t*.nii.gz"):
        shutil.copy(f, masks / f.name)
    with caplog.at_level("WARNING", logger="longiseg.workflows"):
        _, files = run_lesion_report(tmp_path / "masks", tmp_path / "rep", progress=False)
    assert "No montages" in files["html"].read_text(encoding="utf-8")
    # said on the terminal too (only the report said it)
    assert "holds no images (CASE/t0_*.nii.gz): the report has no montages" in caplog.text


def test_lesions_on_predictions_group_cases_by_the_cohorts_patients(tmp_path: Path) -> None:
    """Predictions carry no manifest: a report on them counted each case as a patient ("3 of 4") where the same
    report on the references grouped two sessions of one patient ("3 of 3 (4 cases)"). With --images, the
    cohort's manifest gives the patient ids."""
    import shutil

    from longiseg.data.demo_cohort import DemoCohortConfig, generate_demo_case
    from longiseg.data.loading import save_case
    from longiseg.data.manifest import manifest_from_cases, write_manifest
    from longiseg.workflows.lesions import run_lesion_report

    cohort, preds = tmp_path / "cohort", tmp_path / "preds"
    cfg = DemoCohortConfig(num_patients=12, num_timepoints=2, spacing=4)
    cases = []
    for i, pid in ((0, "P1"), (6, "P1"), (1, "P2")):
        case, _ = generate_demo_case(i, cfg)
        case.patient_id = pid
        save_case(case, cohort, image_dtype=np.int16)
        cases.append(case)
        (preds / case.case_id).mkdir(parents=True)
        for f in (*(cohort / case.case_id).glob("*_mask.nii.gz"), *(cohort / case.case_id).glob("progression_t*")):
            shutil.copy(f, preds / case.case_id / f.name)
    write_manifest(cohort / "manifest.json", manifest_from_cases(cases))
    evs, _ = run_lesion_report(preds, tmp_path / "rep", images=cohort, figures=False, progress=False)
    assert {e.case_id: e.patient_id for e in evs} == {c.case_id: c.patient_id for c in cases}
    evs, _ = run_lesion_report(preds, tmp_path / "rep2", figures=False, progress=False)  # no cohort: cases
    assert [e.patient_id for e in evs] == [e.case_id for e in evs]


def test_import_longiseg_does_not_import_matplotlib_or_simpleitk() -> None:
    code = ("import sys, longiseg, longiseg.metrics.evolution, longiseg.workflows.lesions, longiseg.cli, "
            "longiseg.registration.cohort, longiseg.registration.native; longiseg.cli.build_parser(); "
            "bad = {'matplotlib', 'SimpleITK'} & set(sys.modules); assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)


@pytest.mark.parametrize("args, match", [
    (["{t}/nope", "--out", "{t}/out"], r"MASKS .*nope is not a folder"),
    (["{root}", "--out", "{t}/out", "--min-volume", "-1"], r"--min-volume must be a volume in mm\^3 >= 0"),
])
def test_lesions_command_rejects_bad_arguments(args: list[str], match: str, demo_refs, tmp_path: Path,  # noqa: ANN001
                                               capsys: pytest.CaptureFixture) -> None:
    import re

    from longiseg.cli import main

    root, _ = demo_refs
    assert main(["lesions"] + [a.format(t=tmp_path, root=root) for a in args]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("longiseg lesions: error: ") and re.search(match, err[0]), err
    assert not (tmp_path / "out").exists()


def _listing(folder: Path) -> list[str]:
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*"))


def test_overwritten_lesion_report_holds_only_this_runs_files(demo_refs, tmp_path: Path) -> None:  # noqa: ANN001
    from longiseg.cli import main

    root, _ = demo_refs
    out = tmp_path / "L1"
    assert main(["lesions", str(root), "--out", str(out)]) == 0
    assert (out / "report.html").is_file() and list((out / "figures").glob("*.png"))
    assert main(["lesions", str(root), "--out", str(out), "--overwrite", "--no-figures"]) == 0
    # no report.html or figures of the earlier run next to the new tables
    assert _listing(out) == ["followups.csv", "lesions.csv", "lesions.json"]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no staging folder left


def test_a_lesion_report_without_matplotlib_is_refused_before_the_cases_are_read(
        demo_refs, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,  # noqa: ANN001
        capsys: pytest.CaptureFixture[str]) -> None:
    """It failed after every case's evolution with "import of matplotlib halted; None in sys.modules"."""
    import sys

    from longiseg.cli import main
    from longiseg.data import cohort

    root, _ = demo_refs
    read: list[object] = []
    real = cohort.find_mask_cases
    monkeypatch.setattr(cohort, "find_mask_cases", lambda *a, **k: read.append(a) or real(*a, **k))
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    assert main(["lesions", str(root), "--out", str(tmp_path / "L"), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == ("longiseg lesions: error: matplotlib is needed for the figures and report.html: pip install "
                   "'longiseg[demo]' (or matplotlib), or pass figures=False (--no-figures) for the tables only"), err
    assert not read and not (tmp_path / "L").exists()
    assert main(["lesions", str(root), "--out", str(tmp_path / "L"), "--no-progress", "--no-figures"]) == 0
    assert read  # the cases were read through the patched lister


def test_lesion_report_in_a_folder_with_other_content_touches_only_report_files(
        demo_refs, tmp_path: Path) -> None:  # noqa: ANN001
    from longiseg.workflows.lesions import run_lesion_report

    root, _ = demo_refs
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="not empty"):
        run_lesion_report(root, out, progress=False)
    _, files = run_lesion_report(root, out, overwrite=True, progress=False)
    assert files["html"] == out / "report.html" and files["html"].is_file()
    figures = [p.relative_to(out).as_posix() for p in (out / "figures").iterdir()]
    (out / "figures" / "mine.png").write_text("mine")
    _, files = run_lesion_report(root, out, overwrite=True, figures=False, progress=False)
    assert set(files) == {"lesions_csv", "followups_csv", "json"} and all(p.parent == out for p in files.values())
    assert _listing(out) == ["figures", "figures/mine.png", "followups.csv", "lesions.csv", "lesions.json",
                             "notes.txt"]
    assert figures and not any((out / f).exists() for f in figures)
    assert (out / "notes.txt").read_text(encoding="utf-8") == "mine"


def test_a_failed_lesion_report_leaves_the_earlier_one(demo_refs, tmp_path: Path,  # noqa: ANN001
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    import longiseg.reports.lesion_report as lr
    from longiseg.workflows.lesions import run_lesion_report

    root, _ = demo_refs
    out = tmp_path / "rep"
    run_lesion_report(root, out, figures=False, progress=False)
    before = {p: (out / p).read_bytes() for p in _listing(out)}

    def broken(*args: object, **kwargs: object) -> None:
        raise ValueError("montage failed")

    monkeypatch.setattr(lr, "write_lesion_report", broken)
    with pytest.raises(ValueError, match="montage failed"):
        run_lesion_report(root, out, min_volume_mm3=100.0, overwrite=True, progress=False)
    assert {p: (out / p).read_bytes() for p in _listing(out)} == before  # no new tables beside the old ones
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_lesions_command_names_an_image_that_is_not_a_volume(demo_refs, tmp_path: Path,  # noqa: ANN001
                                                             capsys: pytest.CaptureFixture) -> None:
    import shutil

    import nibabel as nib

    from longiseg.cli import main

    root, _ = demo_refs
    copy = tmp_path / "refs"
    shutil.copytree(root, copy)
    path = copy / "demo-006" / "t0_flair.nii.gz"
    img = nib.load(path)
    data = np.asarray(img.dataobj)
    path.unlink()
    nib.save(nib.Nifti1Image(np.stack([data, data], axis=-1), img.affine), path)  # (X, Y, Z, 2)
    assert main(["lesions", str(copy), "--out", str(tmp_path / "out"), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert re.search(r"image .*demo-006/t0_flair.nii.gz must be a 3D volume \(D, H, W\), got shape \(\d+, \d+, \d+, 2\)", err)


def test_two_lesion_reports_into_one_new_folder_do_not_replace_each_other(
        demo_refs, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:  # noqa: ANN001
    """Two ``longiseg lesions`` runs into the same new --out, neither with --overwrite: the one that finishes
    second fails, naming the folder and --overwrite, and leaves the other's report as it is."""
    import longiseg.workflows.lesions as wl
    from longiseg.cli import main

    root, _ = demo_refs
    out = tmp_path / "shared"
    tables = wl.write_evolution_tables
    others: list[dict] = []

    def other_finishes_first(*args: object, **kwargs: object) -> dict:
        if not others:  # the other run, started at the same time, writes its whole report while this one writes
            others.append({})
            wl.run_lesion_report(root, out, min_volume_mm3=100.0, figures=False, progress=False)
            others[0] = {p: (out / p).read_bytes() for p in _listing(out)}
        return tables(*args, **kwargs)

    monkeypatch.setattr(wl, "write_evolution_tables", other_finishes_first)
    assert main(["lesions", str(root), "--out", str(out), "--no-figures", "--no-progress"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("longiseg lesions: error: ") and "--overwrite" in err[0]
    assert f"{out} was written by another process" in err[0]
    assert {p: (out / p).read_bytes() for p in _listing(out)} == others[0]  # the other's report, untouched
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]
    monkeypatch.undo()  # with --overwrite a later run replaces the other's report
    assert main(["lesions", str(root), "--out", str(out), "--no-figures", "--no-progress", "--overwrite"]) == 0
    assert {p: (out / p).read_bytes() for p in _listing(out)} != others[0]


def test_report_shows_the_change_of_the_volumes_it_shows(tmp_path: Path) -> None:
    # volumes and change were each rounded on their own: "76 -> 149, change +72" (exact 76.34 -> 148.83)
    from longiseg.reports.lesion_report import write_lesion_report

    base = _box(SHAPE, (2, 2, 2), (5, 5, 5))  # 27 voxels of 0.166375 mm^3: 4.49 mm^3, shown 4
    grow = _box(SHAPE, (5, 2, 2), (6, 5, 5))  # 9 more: 5.99 mm^3, shown 6; exact change 1.50 rounds to 1
    ev = lesion_evolution(base, grow[None], np.diag([0.55, 0.55, 0.55, 1.0]), min_volume_mm3=0.0)
    (f,) = ev.followups
    assert round(f.volume_change_mm3) == 1 and round(f.lesion_volume_mm3) - round(f.previous_volume_mm3) == 2
    html = write_lesion_report([ev], tmp_path, tmp_path / "out", montages=False, progress=False).read_text()
    assert re.search(r"<td>4</td><td>6</td><td>\+2</td>", html), html


def test_lesion_report_counts_patients_and_draws_names_as_written(tmp_path: Path) -> None:
    # "Active patients: 2 of 3" counted cases (two cases of one active patient); a case id holding '$' (which
    # case ids may) was drawn as math and "a$^$b" raised; "1 lesions"
    from longiseg.reports.lesion_report import write_lesion_report

    base = _box(SHAPE, (2, 2, 2), (5, 5, 5))
    new = _box(SHAPE, (12, 12, 12), (15, 15, 15))
    aff = np.eye(4)
    evs = [lesion_evolution(base, new[None], aff, case_id="c1", patient_id="p1"),
           lesion_evolution(base, new[None], aff, case_id="a$^$b", patient_id="p1"),
           lesion_evolution(base, np.zeros_like(new)[None], aff, case_id="c3", patient_id="p2")]
    html = write_lesion_report(evs, tmp_path, tmp_path / "out", montages=False, progress=False).read_text()
    assert "Active patients: 1 of 2 (3 cases)." in html
    assert "Baseline: 1 lesion, 27 mm³." in html and "1 lesions" not in html
    assert (tmp_path / "out" / "figures" / "a$^$b_volume.png").is_file()
    # without overwrite, an existing report is refused before any figure is written (figures went in first)
    before = {f: f.stat().st_mtime_ns for f in (tmp_path / "out").rglob("*") if f.is_file()}
    with pytest.raises(FileExistsError, match="file\\(s\\) of the report exist"):
        write_lesion_report([lesion_evolution(base, new[None], aff, case_id="c9")] + evs, tmp_path,
                            tmp_path / "out", montages=False, progress=False)
    assert {f: f.stat().st_mtime_ns for f in (tmp_path / "out").rglob("*") if f.is_file()} == before


def test_lesion_evolution_checks_its_follow_ups_and_names_like_the_case_evaluation() -> None:
    # progression=None was "'NoneType' object is not iterable"; one (D, H, W) array read as D follow-ups of (H, W)
    # masks; patient_id=3 was stored as an int and "" replaced by the case id
    base = np.zeros((4, 5, 6), bool)
    base[1:3, 1:3, 1:3] = True
    affine = np.eye(4)
    with pytest.raises(TypeError, match="progression must be a sequence of"):
        lesion_evolution(base, None, affine)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="progression must be a sequence of"):
        lesion_evolution(base, (m for m in [base]), affine)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="progression is one array of the baseline's shape"):
        lesion_evolution(base, base, affine)
    with pytest.raises(ValueError, match="progression holds no follow-up"):
        lesion_evolution(base, [], affine)
    with pytest.raises(TypeError, match="case_id must be a str"):
        lesion_evolution(base, [base], affine, case_id=None)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="patient_id must be a str or None"):
        lesion_evolution(base, [base], affine, patient_id=3)  # type: ignore[arg-type]
    assert lesion_evolution(base, base[None], affine, case_id="c").patient_id == "c"


def test_masked_arrays_are_refused_not_scored_by_their_hidden_values() -> None:
    from longiseg.metrics import dice

    ref = np.zeros((1, 10), int)
    ref[0, 2:5] = 1
    pred = np.ma.array(ref.copy(), mask=np.zeros_like(ref))
    pred.data[0, 7] = 1
    pred.mask[0, 7] = True  # hidden: it was counted as foreground (Dice 0.857 instead of 1)
    with pytest.raises(TypeError, match=r"pred must be a plain numpy.ndarray, got a masked array; pass pred.filled\(0\)"):
        dice(pred, ref)
    assert dice(pred.filled(0), ref) == 1.0
