"""Embedded demo cohort: anatomy without download, lesion statistics, exact progression masks, layout, figure."""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage

from longiseg.data import demo_cohort as dc
from longiseg.data import find_cases, load_case, read_manifest
from longiseg.utils import logging as lslog

CFG = dc.DemoCohortConfig(num_patients=4, spacing=2, progression_fraction=0.5, seed=5)


def _components(mask: np.ndarray) -> tuple[np.ndarray, int]:
    return ndimage.label(mask, structure=np.ones((3, 3, 3)))


def test_mni_anatomy_is_read_from_the_installed_package() -> None:
    pytest.importorskip("nilearn", reason="the MNI152 anatomy comes with the optional demo extra (nilearn)")
    anat = dc.load_anatomy(4, "mni152")
    assert anat.source == "mni152"
    assert anat.gm.shape == (197 // 4, 233 // 4, 189 // 4)
    assert dc._nilearn_data_dir() is not None and (dc._nilearn_data_dir() / dc._MNI_FILES["t1"]).is_file()
    brain = anat.brain
    assert 0.2 < brain.mean() < 0.6 and anat.wm[brain].mean() > 0.2 and anat.gm[brain].mean() > 0.2
    np.testing.assert_allclose(anat.affine[:3, :3], 4 * np.eye(3))


@pytest.fixture(scope="module")
def patients() -> dict[bool, tuple]:
    """One stable and one progressing patient at 2 mm (generated once for the module)."""
    return {p: dc.generate_demo_case(1, CFG, progressing=p, with_lesion_masks=True) for p in (False, True)}


@pytest.mark.parametrize("progressing", [False, True])
def test_patient_lesions_and_exact_progression(patients: dict, progressing: bool) -> None:
    case, st = patients[progressing]
    lesions = st["lesion_masks"].astype(bool)
    assert case.images.shape == (2, 2, 98, 116, 94) and case.modalities == ("flair", "t2")
    assert np.isfinite(case.images).all() and (case.images[0][:, case.brain_mask == 0] == 0).all()
    near_brain = ndimage.binary_dilation(case.brain_mask, iterations=1)  # follow-ups are slightly misaligned
    assert (case.images[1][:, ~near_brain] == 0).all()
    # baseline: counted lesions are separate components in the configured range and plausible MS volumes
    labels, n = _components(lesions[0])
    assert n == st["baseline_lesions"]
    assert CFG.baseline_lesions[0] <= n <= CFG.baseline_lesions[1]
    vols = np.bincount(labels.ravel())[1:] * 8.0  # mm^3 at 2 mm
    assert vols.min() >= CFG.min_lesion_voxels * 8 and vols.max() < 5000
    assert 0.2 <= st["baseline_volume_ml"] <= 30.0
    np.testing.assert_array_equal(case.baseline_mask, lesions[0])
    # progression is exactly the new/enlarged voxels
    np.testing.assert_array_equal(case.progression_masks[0], lesions[1] & ~lesions[0])
    fu = st["followups"][0]
    if not progressing:
        assert not case.progression_masks.any() and not case.has_progression
        np.testing.assert_array_equal(lesions[1], lesions[0])
        assert fu["new_lesions"] == fu["enlarged_lesions"] == 0
    else:
        assert case.has_progression and (lesions[1] >= lesions[0]).all()  # lesions never shrink
        prog_labels, n_prog = _components(case.progression_masks[0].astype(bool))
        grown = np.zeros(n_prog + 1, dtype=bool)
        touching = ndimage.binary_dilation(lesions[0], np.ones((3, 3, 3)))
        grown[np.unique(prog_labels[touching & (prog_labels > 0)])] = True
        assert int((~grown[1:]).sum()) == fu["new_lesions"]  # new lesions are isolated components
        assert 1 <= fu["new_lesions"] + fu["enlarged_lesions"]
        assert fu["progression_volume_mm3"] == pytest.approx(case.progression_masks.sum() * 8.0)
    # residual misregistration of the follow-up is small
    assert fu["rotation_deg"] <= CFG.max_rotation + 1e-9 and max(map(abs, fu["translation_vox"])) <= 0.5


def test_flair_like_contrast(patients: dict) -> None:
    case, _ = patients[False]
    flair, t2 = case.images[0, 0], case.images[0, 1]
    lesion = case.baseline_mask.astype(bool)
    brain = case.brain_mask.astype(bool) & ~ndimage.binary_dilation(lesion, iterations=2)
    # lesions are the brightest FLAIR structures and hyperintense on T2
    assert np.median(flair[lesion]) > np.percentile(flair[brain], 99)
    assert np.median(t2[lesion]) > np.median(t2[brain])
    # CSF (ventricles, from the template's tissue maps) is dark on FLAIR and bright on T2
    anat = dc.load_anatomy(2)
    deep_csf = (anat.csf > 0.9) & (ndimage.distance_transform_edt(anat.brain) > 8)
    deep_csf = ndimage.binary_erosion(deep_csf, iterations=1)
    assert deep_csf.sum() > 20
    assert np.median(flair[deep_csf]) < 0.6 * np.median(flair[brain])
    assert np.median(t2[deep_csf]) > np.median(t2[brain])


def test_t1_contrast_shows_lesions_dark_and_keeps_the_other_channels() -> None:
    """A T1 channel (lesions hypointense against white matter) can be asked for; the channels do not change the
    patient's lesions."""
    cfg = dc.DemoCohortConfig(num_patients=2, spacing=4, modalities=("flair", "t1"), seed=3)
    case, _ = dc.generate_demo_case(0, cfg)
    assert case.modalities == ("flair", "t1") and case.images.shape[:2] == (2, 2)
    anat = dc.load_anatomy(4)
    lesion = case.baseline_mask.astype(bool)
    white = (anat.wm > 0.9) & ~ndimage.binary_dilation(lesion, iterations=2) & case.brain_mask.astype(bool)
    t1 = case.images[0, 1]
    assert lesion.sum() > 0 and np.median(t1[lesion]) < np.median(t1[white])
    flair_only, _ = dc.generate_demo_case(0, dataclasses.replace(cfg, modalities=("flair",)))
    np.testing.assert_array_equal(flair_only.baseline_mask, case.baseline_mask)
    np.testing.assert_array_equal(flair_only.progression_masks, case.progression_masks)


def test_three_timepoints_and_reproducibility() -> None:
    cfg = dc.DemoCohortConfig(num_patients=2, spacing=4, num_timepoints=3, progression_fraction=1.0, seed=2)
    case, st = dc.generate_demo_case(0, cfg, with_lesion_masks=True)
    les = st["lesion_masks"].astype(bool)
    assert case.images.shape[:2] == (3, 2) and case.progression_masks.shape[0] == 2
    for k in (1, 2):
        np.testing.assert_array_equal(case.progression_masks[k - 1], les[k] & ~les[k - 1])
    assert case.has_progression
    again, _ = dc.generate_demo_case(0, cfg)
    np.testing.assert_array_equal(case.images, again.images)
    other, _ = dc.generate_demo_case(1, cfg)
    assert not np.array_equal(case.baseline_mask, other.baseline_mask)


def test_write_cohort_layout_manifest_and_figure(tmp_path: Path) -> None:
    cfg = dc.DemoCohortConfig(num_patients=2, spacing=4, progression_fraction=0.5, seed=1)
    out = dc.generate_demo_cohort(tmp_path / "cohort", cfg, progress=False)
    manifest = read_manifest(out / "manifest.json")
    assert [e.case_id for e in manifest.cases] == ["demo-000", "demo-001"]
    assert sorted(manifest.progression_flags) == [False, True] and manifest.modalities == ("flair", "t2")
    stats = json.loads((out / "demo_cohort.json").read_text(encoding="utf-8"))
    assert stats["config"]["num_patients"] == 2 and len(stats["patients"]) == 2
    sources = find_cases(out)
    case = load_case(sources[0])
    assert case.spacing == (4.0, 4.0, 4.0) and case.brain_mask is not None
    assert not list(tmp_path.glob(".cohort*"))  # no temporary folder left behind
    with pytest.raises(FileExistsError, match="not empty"):
        dc.generate_demo_cohort(out, cfg, progress=False)
    dc.generate_demo_cohort(out, cfg, progress=False, overwrite=True, num_patients=1)
    assert [s.case_id for s in find_cases(out)] == ["demo-000"]
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "keep.txt").write_text("x")
    with pytest.raises(FileExistsError, match="does not look like a cohort"):
        dc.generate_demo_cohort(tmp_path / "other", cfg, progress=False, overwrite=True)
    from longiseg.workflows.figures import plot_case

    png = plot_case(case, tmp_path / "fig.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000


def test_cohort_command_writes_cohort_and_split(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    from longiseg.cli import main

    with caplog.at_level("INFO", logger="longiseg"):
        rc = main(["cohort", str(tmp_path / "c"), "--num-patients", "6", "--num-test", "2", "--spacing", "4",
                   "--no-progress"])
    assert rc == 0 and (tmp_path / "c" / "cohort" / "manifest.json").is_file()
    # the message names the folder the user asked for, not the staging folder it was written into
    wrote = [r.getMessage() for r in caplog.records if r.getMessage().startswith("wrote demo cohort")]
    assert len(wrote) == 1 and wrote[0].endswith(f"to {tmp_path / 'c' / 'cohort'}"), wrote
    test = read_manifest(tmp_path / "c" / "test" / "manifest.json")
    train = read_manifest(tmp_path / "c" / "train" / "manifest.json")
    assert sorted(test.progression_flags) == [False, True] and len(train.cases) == 4
    assert not {e.case_id for e in test.cases} & {e.case_id for e in train.cases}
    assert main(["cohort", str(tmp_path / "c"), "--num-patients", "6", "--num-test", "2", "--spacing", "4"]) == 2


def _contents(folder: Path) -> dict[str, bytes | None]:
    """Every path under ``folder`` (hidden ones too) with the bytes of the files."""
    return {str(p.relative_to(folder)): p.read_bytes() if p.is_file() else None for p in sorted(folder.rglob("*"))}


def test_cohort_overwrite_replaces_cohort_train_and_test_together(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """A failing longiseg cohort --overwrite (here: the split needs more progressing patients than the new cohort
    has) changes nothing (it had replaced cohort/ and kept the train/ and test/ of the old one); a successful one
    writes all three from its cohort."""
    from longiseg.cli import main
    from longiseg.data import demo_cohort

    out = tmp_path / "c"
    argv = ["cohort", str(out), "--num-patients", "6", "--num-test", "2", "--spacing", "4", "--no-progress"]
    assert main(argv) == 0
    before = _contents(out)
    capsys.readouterr()
    calls: list[object] = []
    monkeypatch.setattr(demo_cohort, "generate_demo_case", lambda *a, **k: calls.append(a))
    assert main([*argv, "--overwrite", "--set", "progression_fraction=0.1"]) == 2
    assert _contents(out) == before
    assert capsys.readouterr().err.strip().endswith(f"the new cohort has 1 and 5; {out} is unchanged")
    assert not calls  # refused before a patient is generated (and the log said the cohort was written)
    monkeypatch.undo()
    assert main(["cohort", str(tmp_path / "new" / "c"), *argv[2:], "--set", "progression_fraction=0.1"]) == 2
    assert not (tmp_path / "new").exists()

    assert main([*argv, "--overwrite", "--seed", "3"]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["cohort", "test", "train"]
    record = json.loads((out / "cohort" / "demo_cohort.json").read_text(encoding="utf-8"))
    assert record["config"]["seed"] == 3
    cases = {p.name for side in ("train", "test") for p in (out / side).iterdir() if p.is_dir()}
    assert cases == {e.case_id for e in read_manifest(out / "cohort" / "manifest.json").cases}
    for side in ("train", "test"):
        for case in (out / side).iterdir():
            if case.is_dir():
                assert _contents(case) == _contents(out / "cohort" / case.name)


@pytest.mark.parametrize("interrupted_at", [2, 4, 6])  # after: test/ moved aside, test/ in, train/ in
def test_an_interrupted_cohort_overwrite_keeps_the_old_set(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                         capsys: pytest.CaptureFixture[str], interrupted_at: int) -> None:
    """Ctrl-C while the new cohort/, train/ and test/ replace the old ones: the old three come back (test/ was new
    and train/ old: a test patient of the new split was in the old training set)."""
    from longiseg.cli import main

    out = tmp_path / "c"
    argv = ["cohort", str(out), "--num-patients", "6", "--num-test", "2", "--spacing", "4", "--no-progress"]
    assert main(argv) == 0
    before = _contents(out)
    real, calls = os.replace, []

    def replace(src: object, dst: object) -> None:
        if Path(str(src)).parent == out:  # the publication's renames, not the staging's
            calls.append(dst)
            if len(calls) == interrupted_at:
                raise KeyboardInterrupt
        real(src, dst)  # type: ignore[arg-type]

    monkeypatch.setattr(os, "replace", replace)
    assert main([*argv, "--overwrite", "--seed", "3"]) == 130
    monkeypatch.undo()
    assert capsys.readouterr().err.strip().endswith("interrupted")
    assert _contents(out) == before
    assert sorted(p.name for p in out.iterdir()) == ["cohort", "test", "train"]  # no temporary left


def test_shrinking_lesions_add_no_progression_and_default_cohorts_are_unchanged() -> None:
    cfg = dc.DemoCohortConfig(spacing=4, num_timepoints=3, shrinking_lesions=(2, 2), seed=5)
    for progressing in (False, True):
        case, st = dc.generate_demo_case(0, cfg, progressing=progressing, with_lesion_masks=True)
        lesions = st["lesion_masks"].astype(bool)
        assert [fu["shrunk_lesions"] for fu in st["followups"]] == [2, 2]
        for k in (1, 2):  # the progression reference stays "lesion at k, not at k-1"
            np.testing.assert_array_equal(case.progression_masks[k - 1], lesions[k] & ~lesions[k - 1])
        assert (lesions[0] & ~lesions[2]).any()  # shrunk voxels are lesion before, not after
        if not progressing:
            assert not case.progression_masks.any() and lesions[2].sum() < lesions[0].sum()
    # switched off (the default), the generator draws exactly what it drew before the option existed
    plain = dc.DemoCohortConfig(spacing=4, seed=5)
    a, sa = dc.generate_demo_case(0, plain)
    b, sb = dc.generate_demo_case(0, plain.with_overrides(["shrinking_lesions=[0,0]", "shrink_factor=[0.5,0.7]"]))
    np.testing.assert_array_equal(a.images, b.images)
    assert sa["followups"][0]["shrunk_lesions"] == 0


def test_cohort_command_takes_generator_settings(tmp_path: Path) -> None:
    import json

    from longiseg.cli import main

    rc = main(["cohort", str(tmp_path / "c"), "--num-patients", "6", "--num-test", "2", "--spacing", "4",
               "--no-progress", "--set", "shrinking_lesions=[1,1]", "max_translation=1.0"])
    record = json.loads((tmp_path / "c" / "cohort" / "demo_cohort.json").read_text(encoding="utf-8"))
    assert rc == 0 and record["config"]["shrinking_lesions"] == [1, 1] and record["config"]["max_translation"] == 1.0
    assert all(fu["shrunk_lesions"] == 1 for pt in record["patients"] for fu in pt["followups"])


def test_phantom_fallback_without_nilearn(monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setattr(dc, "_nilearn_data_dir", lambda: None)
    dc.load_anatomy.cache_clear()
    lslog._SEEN.discard(("longiseg.data.demo", "phantom"))
    try:
        with caplog.at_level(logging.WARNING, logger="longiseg"):
            anat = dc.load_anatomy(4, "auto")
        assert anat.source == "phantom" and "phantom" in caplog.text
        with pytest.raises(ImportError, match="needs nilearn"):
            dc.load_anatomy(4, "mni152")
        cfg = dc.DemoCohortConfig(num_patients=1, spacing=4, anatomy="phantom", progression_fraction=1.0)
        case, st = dc.generate_demo_case(0, cfg)
        assert case.metadata["anatomy"] == "phantom" and case.baseline_mask.any() and case.has_progression
    finally:
        dc.load_anatomy.cache_clear()


def test_config_errors() -> None:
    with pytest.raises(ValueError, match="spacing must be an integer number of mm from 1 to 4"):
        dc.DemoCohortConfig(spacing=5)
    with pytest.raises(ValueError, match="modalities must be a non-empty subset"):
        dc.DemoCohortConfig(modalities=("pd",))
    with pytest.raises(ValueError, match="must name each channel once"):
        dc.DemoCohortConfig(modalities=("flair", "FLAIR"))
    with pytest.raises(ValueError, match="num_timepoints must be >= 2"):
        dc.DemoCohortConfig(num_timepoints=1)
    with pytest.raises(ValueError, match="progression_fraction must lie in"):
        dc.DemoCohortConfig(progression_fraction=1.5)
    with pytest.raises(ValueError, match="enlarge_factor must be > 1"):
        dc.DemoCohortConfig(enlarge_factor=(0.9, 1.2))
    with pytest.raises(ValueError, match="anatomy must be"):
        dc.DemoCohortConfig(anatomy="atlas")
    assert dc.DemoCohortConfig(num_patients=12).num_progressing == 6


def test_a_case_figure_centres_on_the_largest_lesion_as_the_library_counts_lesions() -> None:
    """plot_case centred on the largest progression component at scipy's 6-connectivity: a 10-voxel diagonal
    chain (one lesion, 26-connected, everywhere else in the library) fell apart into ten single voxels and the
    figure showed the smaller 8-voxel lesion instead."""
    from longiseg.data.case import LongitudinalCase
    from longiseg.workflows.figures import _best_slices

    shape = (24, 24, 24)
    prog = np.zeros(shape, np.uint8)
    for i in range(10):
        prog[2 + i, 2 + i, 2 + i] = 1
    prog[18:20, 18:20, 18:20] = 1
    case = LongitudinalCase(images=np.ones((2, 1, *shape), np.float32), baseline_mask=np.zeros(shape, np.uint8),
                            progression_masks=prog[None], affine=np.eye(4), spacing=(1.0, 1.0, 1.0),
                            modalities=("flair",), case_id="c")
    centre = _best_slices(case, 1)  # the chain's centre is 6.5 (rounded either way), the block's 18.5
    assert all(6 <= c <= 7 for c in centre), centre
