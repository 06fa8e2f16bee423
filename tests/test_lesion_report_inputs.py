"""The lesion read-out's writers and commands on inputs they did not check: tables half-written when one file
existed, a report of cases computed with different options stating the first case's, figures left behind by a
failed report (a rerun then refused), montages drawn from another folder's masks, a case folder name that is not
UTF-8 (refused only when the CSV was written), and a folder of masks left out of a manifest without a word."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from longiseg.data import layout
from longiseg.data.cohort import cohort_manifest
from longiseg.data.manifest import Manifest, ManifestEntry, write_manifest
from longiseg.metrics.evolution import check_evolutions, lesion_evolution, write_evolution_tables
from longiseg.utils.nifti import atomic_save_nifti

SHAPE = (16, 16, 16)


def _box(lo: tuple[int, int, int], hi: tuple[int, int, int]) -> np.ndarray:
    m = np.zeros(SHAPE, dtype=np.uint8)
    m[tuple(slice(a, b) for a, b in zip(lo, hi))] = 1
    return m


BASE, NEW = _box((2, 2, 2), (5, 5, 5)), _box((10, 10, 10), (13, 13, 13))


def _evolution(case_id: str = "c1", affine: np.ndarray | None = None, **kw):  # noqa: ANN202
    return lesion_evolution(BASE, NEW[None], np.eye(4) if affine is None else affine, case_id=case_id, **kw)


def _mask_case(root: Path, case_id: str, affine: np.ndarray, progression: np.ndarray) -> None:
    atomic_save_nifti(BASE, affine, root / case_id / layout.BASELINE_MASK)
    atomic_save_nifti(progression, affine, root / case_id / layout.progression_filename(1))


def test_tables_refuse_an_existing_file_before_writing_any(tmp_path: Path) -> None:
    (tmp_path / "followups.csv").write_text("mine\n")
    with pytest.raises(FileExistsError, match="followups.csv"):
        write_evolution_tables([_evolution()], tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["followups.csv"]  # lesions.csv went in first
    assert (tmp_path / "followups.csv").read_text() == "mine\n"


@pytest.mark.parametrize(("evolutions", "err", "match"), [
    ([1], TypeError, r"evolutions\[0\] must be a CaseEvolution"),
    ((e for e in ()), TypeError, "evolutions must be a sequence"),
    ([], ValueError, "evolutions must not be empty"),
])
def test_tables_name_bad_evolutions(tmp_path: Path, evolutions: object, err: type[Exception], match: str) -> None:
    with pytest.raises(err, match=match):
        write_evolution_tables(evolutions, tmp_path)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="out_dir must be"):
        write_evolution_tables([_evolution()], None)  # type: ignore[arg-type]
    assert list(tmp_path.iterdir()) == []


def test_evolutions_of_different_options_are_refused_not_reported_as_the_first(tmp_path: Path) -> None:
    mixed = [_evolution("a", min_volume_mm3=0.0, connectivity=6), _evolution("b", min_volume_mm3=3.0)]
    with pytest.raises(ValueError, match=r"share one min_volume_mm3 and connectivity .*case 'a' has 0 mm\^3 and 6, "
                                         r"case 'b' 3 mm\^3 and 26"):
        write_evolution_tables(mixed, tmp_path)
    assert check_evolutions([_evolution("a"), _evolution("b")])[1].case_id == "b"


def test_a_failed_report_removes_its_figures_and_a_rerun_is_not_refused(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    from longiseg.reports.lesion_report import write_lesion_report

    masks, out = tmp_path / "masks", tmp_path / "out"
    masks.mkdir()
    with pytest.raises(FileNotFoundError, match="baseline_mask"):  # the case's masks are not in mask_root
        write_lesion_report([_evolution()], masks, out, progress=False)
    assert not [p for p in out.rglob("*") if p.is_file()]  # figures/c1_volume.png stayed, and refused the rerun
    _mask_case(masks, "c1", np.eye(4), NEW)
    assert write_lesion_report([_evolution()], masks, out, progress=False).is_file()


def test_a_missing_image_leaves_out_only_the_montages_that_need_it(tmp_path: Path,
                                                                   caplog: pytest.LogCaptureFixture) -> None:
    """One missing timepoint's image dropped every montage of the case, with a note in report.html only."""
    pytest.importorskip("matplotlib")
    from longiseg.reports.lesion_report import write_lesion_report

    masks, out = tmp_path / "masks", tmp_path / "out"
    later = _box((6, 10, 2), (9, 13, 5))
    progression = np.stack([NEW, later, np.zeros_like(NEW)])  # changes at FU1 and FU2, FU3 stable
    atomic_save_nifti(BASE, np.eye(4), masks / "c1" / layout.BASELINE_MASK)
    for k, prog in enumerate(progression, start=1):
        atomic_save_nifti(prog, np.eye(4), masks / "c1" / layout.progression_filename(k))
        atomic_save_nifti(np.full(SHAPE, float(k), np.float32), np.eye(4), masks / "c1" / layout.image_filename(
            k - 1, "flair"))  # t0..t2: no t3 image
    ev = lesion_evolution(BASE, progression, np.eye(4), case_id="c1")
    with caplog.at_level("WARNING", logger="longiseg"):
        html = write_lesion_report([ev], masks, out, progress=False).read_text(encoding="utf-8")
    montages = sorted(p.name for p in (out / "figures").iterdir() if "lesion" in p.name)
    assert montages == ["c1_fu1_lesion1_new.png", "c1_fu2_lesion1_new.png"]
    assert "No montages" not in html and "t3_flair.nii.gz" not in html  # FU3 has no change to draw

    (masks / "c1" / layout.image_filename(2, "flair")).unlink()  # now FU2's montage lacks its follow-up image
    with caplog.at_level("WARNING", logger="longiseg"):
        html = write_lesion_report([ev], masks, tmp_path / "out2", progress=False).read_text(encoding="utf-8")
    montages = sorted(p.name for p in (tmp_path / "out2" / "figures").iterdir() if "lesion" in p.name)
    assert montages == ["c1_fu1_lesion1_new.png"]
    assert "1 change(s) without a montage: missing image(s)" in html and "t2_flair.nii.gz" in html
    assert "case c1: 1 of 2 change(s) have no montage: missing image(s)" in caplog.text


def test_a_failed_rerun_with_overwrite_keeps_the_figures_it_replaced(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    from longiseg.reports.lesion_report import write_lesion_report

    masks, out = tmp_path / "masks", tmp_path / "out"
    for case in ("c1", "c2"):
        _mask_case(masks, case, np.eye(4), NEW)
    write_lesion_report([_evolution("c1"), _evolution("c2")], masks, out, progress=False)
    figures = sorted(p.name for p in (out / "figures").iterdir())
    (masks / "c2" / layout.BASELINE_MASK).unlink()  # c2 fails after c1's figures were rewritten
    with pytest.raises(FileNotFoundError):
        write_lesion_report([_evolution("c1"), _evolution("c2"), _evolution("c3")], masks, out, overwrite=True,
                            progress=False)
    assert sorted(p.name for p in (out / "figures").iterdir()) == figures  # replaced ones stay, none added


@pytest.mark.parametrize(("affine", "progression", "match"), [
    (np.diag([2.0, 2.0, 2.0, 1.0]), NEW, "lie on another grid than those its evolution was computed from"),
    (np.eye(4), np.zeros(SHAPE, np.uint8), "hold no new tissue at follow-up 1, where its evolution found 1"),
])
def test_montages_refuse_masks_the_evolutions_were_not_computed_from(tmp_path: Path, affine: np.ndarray,
                                                                    progression: np.ndarray, match: str) -> None:
    pytest.importorskip("matplotlib")
    from longiseg.reports.lesion_report import write_lesion_report

    _mask_case(tmp_path / "other", "c1", affine, progression)
    with pytest.raises(ValueError, match=match):
        write_lesion_report([_evolution()], tmp_path / "other", tmp_path / "out", progress=False)
    assert not [p for p in (tmp_path / "out").rglob("*") if p.is_file()]


def test_figure_functions_name_their_arguments() -> None:
    pytest.importorskip("matplotlib")
    from longiseg.reports.lesion_report import change_montage, volume_figure

    ev = _evolution()
    (change,) = ev.changes
    vol = np.ones(SHAPE, np.float32)
    ok = (change, vol, vol, BASE.astype(bool), NEW.astype(bool), np.eye(4))
    for kwargs, err, match in (({"field_mm": math.nan}, ValueError, "field_mm must be a finite number"),
                               ({"field_mm": -5.0}, ValueError, "field_mm must be a finite number > 0"),
                               ({"field_mm": "40"}, TypeError, "field_mm must be a number")):
        with pytest.raises(err, match=match):
            change_montage(*ok, **kwargs)
    with pytest.raises(ValueError, match="must be volumes \\(D, H, W\\) of one shape"):
        change_montage(change, vol[:3], vol, BASE.astype(bool), NEW.astype(bool), np.eye(4))
    with pytest.raises(TypeError, match="evolution must be a CaseEvolution"):
        volume_figure(3)  # type: ignore[arg-type]
    assert change_montage(*ok).startswith(b"\x89PNG")


@pytest.mark.parametrize(("kwargs", "err", "match"), [
    ({"modality": 3}, TypeError, "modality must be a modality name"),
    ({"modality": "fl/air"}, ValueError, "modality: modality must be alphanumeric"),
    ({"images": 3}, TypeError, "images must be"),
])
def test_run_lesion_report_names_bad_arguments(tmp_path: Path, kwargs: dict, err: type[Exception],
                                               match: str) -> None:
    from longiseg.workflows.lesions import run_lesion_report

    _mask_case(tmp_path / "masks", "c1", np.eye(4), NEW)
    with pytest.raises(err, match=match):
        run_lesion_report(tmp_path / "masks", tmp_path / "out", figures=False, progress=False, **kwargs)
    assert not (tmp_path / "out").exists()


def test_the_command_names_the_option_of_a_bad_modality(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from longiseg.cli import main

    _mask_case(tmp_path / "masks", "c1", np.eye(4), NEW)
    assert main(["lesions", str(tmp_path / "masks"), "--out", str(tmp_path / "out"), "--modality", "fl/air"]) == 2
    assert "longiseg lesions: error: --modality: modality must be alphanumeric" in capsys.readouterr().err


def test_a_modality_without_figures_is_refused_not_ignored(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """--modality only chooses the montages' image: with --no-figures it was silently without effect."""
    from longiseg.cli import main
    from longiseg.workflows.lesions import run_lesion_report

    _mask_case(tmp_path / "masks", "c1", np.eye(4), NEW)
    with pytest.raises(ValueError, match=r"^modality='t2' chooses the image of the montages, which figures=False "):
        run_lesion_report(tmp_path / "masks", tmp_path / "out", modality="t2", figures=False, progress=False)
    assert main(["lesions", str(tmp_path / "masks"), "--out", str(tmp_path / "out"), "--modality", "t2",
                 "--no-figures"]) == 2
    assert capsys.readouterr().err == ("longiseg lesions: error: --modality t2 chooses the image of the montages, "
                                       "which --no-figures leaves out: give one of them\n")
    assert not (tmp_path / "out").exists()


def test_a_case_id_that_is_not_utf8_is_refused_up_front() -> None:
    name = b"p\xe4t".decode("utf-8", "surrogateescape")  # a Latin-1 folder name, as os.listdir gives it
    with pytest.raises(ValueError, match="is not UTF-8 text"):
        layout.check_case_id(name)
    assert layout.check_case_id("pät") == "pät"  # non-ASCII UTF-8 is fine


def test_an_unlisted_folder_of_masks_is_warned_of(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    for case in ("c1", "c2"):
        _mask_case(tmp_path, case, np.eye(4), NEW)
    write_manifest(tmp_path / "manifest.json", Manifest((), (ManifestEntry("c1", "c1", 2, True),)))
    with caplog.at_level("WARNING", logger="longiseg.data"):
        cohort_manifest(tmp_path)
    assert "1 case folder(s) with images or masks that manifest.json does not list are not used: 'c2'" in caplog.text


def test_montages_window_each_scan_once_not_once_per_change(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every montage worked out both scans' display windows over the whole volume again: 150 changes of one
    12.6M-voxel case took 229 s (37 s without figures). Now each timepoint's window is computed once, and a
    montage given the windows draws what it draws without them."""
    pytest.importorskip("matplotlib")
    import longiseg.reports.lesion_report as report

    masks = tmp_path / "masks"
    rng = np.random.default_rng(0)
    progression = np.zeros(SHAPE, np.uint8)
    for lo in ((9, 2, 2), (9, 9, 2), (2, 9, 10), (12, 12, 12)):  # four new lesions at FU1
        progression[tuple(slice(a, a + 2) for a in lo)] = 1
    atomic_save_nifti(BASE, np.eye(4), masks / "c1" / layout.BASELINE_MASK)
    atomic_save_nifti(progression, np.eye(4), masks / "c1" / layout.progression_filename(1))
    for t in range(2):
        atomic_save_nifti(rng.random(SHAPE).astype(np.float32) + t, np.eye(4),
                          masks / "c1" / layout.image_filename(t, "flair"))
    ev = lesion_evolution(BASE, progression[None], np.eye(4), case_id="c1")
    assert len(ev.changes) == 4
    calls = []
    window = report.intensity_window
    monkeypatch.setattr(report, "intensity_window", lambda image: calls.append(1) or window(image))
    report.write_lesion_report([ev], masks, tmp_path / "out", progress=False)
    assert len(calls) == 2  # one per timepoint shown
    assert len(list((tmp_path / "out" / "figures").glob("c1_fu1_lesion*_new.png"))) == 4

    change = ev.changes[0]
    scans = [rng.random(SHAPE).astype(np.float32) * (t + 1) for t in range(2)]
    masks_of = (BASE.astype(bool), progression.astype(bool))
    given = report.change_montage(change, *scans, *masks_of, np.eye(4),
                                  windows=[window(scans[0]), window(scans[1])])
    assert given == report.change_montage(change, *scans, *masks_of, np.eye(4))
    with pytest.raises(ValueError, match="windows must be two"):
        report.change_montage(change, *scans, *masks_of, np.eye(4), windows=[(0.0, 1.0)])
    assert window(np.zeros(SHAPE, np.float32)) == (0.0, 1.0)
    # a case id with '$' in the title is drawn as written (the window function was inserted under the decorator
    # that says so, and a montage of case 'a$^$b' failed as mathtext)
    assert report.change_montage(change, *scans, *masks_of, np.eye(4), title="a$^$b").startswith(b"\x89PNG")
