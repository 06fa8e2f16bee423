"""Case model, NIfTI layout loader, manifest and every loading error, on real files in tmp_path."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from test_data_fixtures import make_case

from longiseg.data import (
    CaseSource,
    LongitudinalCase,
    Manifest,
    ManifestEntry,
    MaskSpec,
    find_cases,
    find_mask_cases,
    layout,
    load_case,
    manifest_from_cases,
    plane_axes,
    read_manifest,
    read_mask,
    read_prediction,
    save_case,
    save_prediction,
    validate_cases,
    write_manifest,
)
from longiseg.data.cohort import check_same_modalities
from longiseg.utils.nifti import atomic_save_nifti


def _write_cohort(root: Path, n: int = 2, num_timepoints: int = 2) -> list[LongitudinalCase]:
    cases = [make_case(num_timepoints=num_timepoints, seed=i, progression=i % 2 == 0, case_id=f"p{i}")
             for i in range(n)]
    for c in cases:
        save_case(c, root)
    return cases


def _digest(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


# ----------------------------------------------------------------------------- case model
def test_case_model_shapes_and_flags() -> None:
    case = make_case(num_timepoints=3)
    assert case.num_timepoints == 3 and case.num_channels == 2 and case.shape == (20, 24, 16)
    assert case.images.dtype == np.float32
    assert case.progression_masks.shape == (2, 20, 24, 16)
    assert case.lesion_mask().sum() == case.baseline_mask.sum() + case.progression_masks.any(0).sum()
    assert case.summary()["progression"] is True


_CASE_KWARGS = dict(images=np.ones((2, 1, 4, 4, 4)), baseline_mask=np.zeros((4, 4, 4)),
                    progression_masks=np.zeros((1, 4, 4, 4)), affine=np.eye(4), spacing=(1, 1, 1),
                    modalities=("flair",), case_id="x")


@pytest.mark.parametrize(
    ("change", "match"),
    [
        ({"images": np.zeros((2, 1, 4, 4))}, r"images must have 5 dims"),
        ({"images": np.zeros((1, 1, 4, 4, 4))}, r">= 2"),
        ({"images": np.full((2, 1, 4, 4, 4), np.nan)}, r"images contains NaN"),
        ({"baseline_mask": np.full((4, 4, 4), 2)}, r"baseline_mask must be a binary mask"),
        ({"baseline_mask": np.zeros((4, 4, 5))}, r"baseline_mask must have the spatial shape"),
        ({"progression_masks": np.zeros((2, 4, 4, 4))}, r"progression_masks must have shape \(T-1"),
        ({"modalities": ("a", "b")}, r"modalities must name the 1 image channels"),
        ({"affine": np.eye(3)}, r"affine must be an array \(4, 4\), got shape \(3, 3\)"),
        ({"spacing": (1.0, 0.0, 1.0)}, r"spacing must hold positive finite"),
        ({"progression_masks": None}, r"both be given or both be None"),
        ({"images": np.ones((2, 2, 4, 4, 4)), "modalities": ("flair", "flair")}, r"must name each channel once"),
        ({"images": np.ones((2, 2, 4, 4, 4)), "modalities": ("FLAIR", "flair")}, r"compared case-insensitively"),
        ({"modalities": ("t1_ce",)}, r"modalities\[0\]: modality must be alphanumeric"),
        ({"modalities": ("",)}, r"modalities\[0\]: modality must be alphanumeric"),
        ({"modalities": ("a/b",)}, r"modalities\[0\]: modality must be alphanumeric"),
        ({"images": np.ones((2, 1, 4, 0, 4))}, r"images.shape\[3\] \(H\) must be >= 1, got 0"),
        ({"images": np.ones((2, 0, 4, 4, 4)), "modalities": ()}, r"images.shape\[1\] \(number of channels C\) must"),
    ],
)
def test_case_model_errors(change: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        LongitudinalCase(**{**_CASE_KWARGS, **change})


@pytest.mark.parametrize(
    ("change", "match"),
    [
        ({"case_id": None}, r"case id must be a string, got NoneType"),
        ({"images": np.ones((2, 1, 4, 4, 4), dtype=np.complex64)}, r"images must hold real numbers .* complex64"),
        ({"modalities": "flair"}, r"modalities must be a sequence of channel names"),
        ({"modalities": (1,)}, r"modalities\[0\] must be a str"),
    ],
)
def test_case_model_type_errors(change: dict, match: str) -> None:
    with pytest.raises(TypeError, match=match):
        LongitudinalCase(**{**_CASE_KWARGS, **change})


def test_plane_axes_follow_the_affine() -> None:
    assert plane_axes(np.eye(4)) == {"axial": 2, "coronal": 1, "sagittal": 0}
    # array axes stored as (z, x, y): axis 0 is I-S, axis 1 L-R, axis 2 P-A
    perm = np.zeros((4, 4))
    perm[2, 0] = perm[0, 1] = perm[1, 2] = perm[3, 3] = 1
    assert plane_axes(perm) == {"axial": 0, "coronal": 2, "sagittal": 1}
    with pytest.raises(ValueError, match="non-singular"):
        plane_axes(np.diag([1.0, 0.0, 1.0, 1.0]))


# ----------------------------------------------------------------------------- layout round trip
@pytest.mark.parametrize("num_timepoints", [2, 3])
def test_layout_round_trip_without_manifest(tmp_path: Path, num_timepoints: int) -> None:
    cases = _write_cohort(tmp_path, 2, num_timepoints)
    names = sorted(p.name for p in (tmp_path / "p0").iterdir())
    assert layout.image_filename(num_timepoints - 1, "t2") in names and layout.BRAIN_MASK in names
    sources = find_cases(tmp_path, modalities=["flair", "t2"])
    assert [s.case_id for s in sources] == ["p0", "p1"]
    assert sources[0].num_timepoints == num_timepoints and sources[0].has_progression is None
    for src, ref in zip(sources, cases):
        got = load_case(src)
        np.testing.assert_allclose(got.images, ref.images)
        np.testing.assert_array_equal(got.baseline_mask, ref.baseline_mask)
        np.testing.assert_array_equal(got.progression_masks, ref.progression_masks)
        np.testing.assert_array_equal(got.brain_mask, ref.brain_mask)
        assert got.modalities == ("flair", "t2") and got.spacing == (1.0, 1.0, 1.0)
        assert src.progression_flag() == ref.has_progression
    # a case folder path loads directly too; modalities default to alphabetical order
    assert load_case(tmp_path / "p1").modalities == ("flair", "t2")


def test_save_case_checks_the_case_before_writing(tmp_path: Path) -> None:
    """Modalities changed after the case was built (two channels, one file name) are refused, nothing written."""
    case = make_case(case_id="p0")
    case.modalities = ("flair", "FLAIR")
    with pytest.raises(ValueError, match=r"case.modalities must name each channel once"):
        save_case(case, tmp_path / "out")
    case.modalities = ("flair", "t1_ce")
    with pytest.raises(ValueError, match=r"case.modalities\[1\]: modality must be alphanumeric"):
        save_case(case, tmp_path / "out")
    with pytest.raises(TypeError, match="case must be a LongitudinalCase, got NoneType"):
        save_case(None, tmp_path / "out")  # type: ignore[arg-type]
    assert not (tmp_path / "out").exists()


def test_save_case_writes_the_case_folder_as_a_whole(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    save_case(make_case(num_timepoints=3, case_id="p0"), tmp_path)
    before = _digest(tmp_path)
    with pytest.raises(FileExistsError, match="overwrite=True"):
        save_case(make_case(case_id="p0", seed=1), tmp_path)
    calls: list[Path] = []

    def fail_third(array: np.ndarray, affine: np.ndarray, path: Path, **kwargs: object) -> Path:
        calls.append(path)
        if len(calls) == 3:
            raise OSError("disk full")
        return atomic_save_nifti(array, affine, path, **kwargs)

    monkeypatch.setattr("longiseg.data.loading.atomic_save_nifti", fail_third)
    for case_id, overwrite in (("p0", True), ("p1", False)):  # replacing a case, writing a new one
        calls.clear()
        with pytest.raises(OSError, match="disk full"):
            save_case(make_case(case_id=case_id, seed=1), tmp_path, overwrite=overwrite)
    assert _digest(tmp_path) == before and [p.name for p in tmp_path.iterdir()] == ["p0"]  # no half case
    monkeypatch.undo()
    # overwrite replaces the folder as a whole: no file of the 3-timepoint case stays behind
    save_case(make_case(case_id="p0", seed=1), tmp_path, overwrite=True)
    assert load_case(tmp_path / "p0").num_timepoints == 2


@pytest.mark.parametrize("suffix", [".json", ".csv"])
def test_manifest_write_read_and_use(tmp_path: Path, suffix: str) -> None:
    cases = _write_cohort(tmp_path, 3)
    manifest = manifest_from_cases(cases)
    write_manifest(tmp_path / f"manifest{suffix}", manifest)
    back = read_manifest(tmp_path / f"manifest{suffix}")
    assert back == manifest
    assert back.progression_flags == [True, False, True]
    sources = find_cases(tmp_path)
    assert [s.has_progression for s in sources] == [True, False, True]
    assert sources[0].modalities == ("flair", "t2")


@pytest.mark.parametrize("suffix", [".json", ".csv"])
def test_manifest_keeps_the_missing_baseline_annotation(tmp_path: Path, suffix: str) -> None:
    cases = _write_cohort(tmp_path, 2)
    plain = tmp_path / f"plain{suffix}"
    write_manifest(plain, manifest_from_cases(cases))
    assert "baseline_annotated" not in plain.read_text(encoding="utf-8")  # manifests of annotated cohorts are unchanged
    cases[1] = cases[1].with_arrays(baseline_mask=np.zeros_like(cases[1].baseline_mask))
    cases[1].baseline_annotated = False  # an MSSEG-2 case
    manifest = manifest_from_cases(cases)
    assert [e.baseline_annotated for e in manifest.cases] == [True, False]
    write_manifest(tmp_path / f"manifest{suffix}", manifest)
    assert read_manifest(tmp_path / f"manifest{suffix}") == manifest
    sources = find_cases(tmp_path)
    assert [s.baseline_annotated for s in sources] == [True, False]
    assert [load_case(s).baseline_annotated for s in sources] == [True, False]
    with pytest.raises(ValueError, match="baseline_annotated must be true/false"):
        (tmp_path / "bad.json").write_text(json.dumps({"cases": [{"case_id": "p0", "baseline_annotated": "?"}]}))
        read_manifest(tmp_path / "bad.json")


def test_loading_never_modifies_files(tmp_path: Path) -> None:
    _write_cohort(tmp_path, 2)
    write_manifest(tmp_path / layout.MANIFEST_JSON, manifest_from_cases(find_cases(tmp_path)))
    before = _digest(tmp_path)
    for s in find_cases(tmp_path):
        load_case(s)
    assert validate_cases(find_cases(tmp_path), progress=False) == {}
    assert _digest(tmp_path) == before


def test_unlabelled_cases_for_inference(tmp_path: Path) -> None:
    _write_cohort(tmp_path, 1)
    for name in (layout.BASELINE_MASK, layout.progression_filename(1)):
        (tmp_path / "p0" / name).unlink()
    with pytest.raises(FileNotFoundError, match="baseline_mask"):
        find_cases(tmp_path)
    (src,) = find_cases(tmp_path, require_masks=False)
    case = load_case(src)
    assert not case.has_labels and case.images.shape[0] == 2


# ----------------------------------------------------------------------------- error cases
def _resave(path: Path, array: np.ndarray, affine: np.ndarray | None = None) -> None:
    img = nib.load(str(path))
    nib.save(nib.Nifti1Image(array, img.affine if affine is None else affine), str(path))


def test_error_different_shapes(tmp_path: Path) -> None:
    _write_cohort(tmp_path, 1)
    _resave(tmp_path / "p0" / "t1_flair.nii.gz", np.zeros((20, 24, 15), dtype=np.float32))
    with pytest.raises(ValueError, match=r"t1_flair\.nii\.gz lies on another grid than t0_flair\.nii\.gz \(shape \(20, 24, 15\) vs"):
        load_case(find_cases(tmp_path)[0])


def test_error_different_affines(tmp_path: Path) -> None:
    _write_cohort(tmp_path, 1)
    shifted = np.eye(4)
    shifted[0, 3] = 2.0
    _resave(tmp_path / "p0" / "t1_t2.nii.gz", np.zeros((20, 24, 16), dtype=np.float32), shifted)
    with pytest.raises(ValueError, match=r"t1_t2\.nii\.gz lies on another grid .*affines differ by up to 2 mm.*longiseg register"):
        load_case(find_cases(tmp_path)[0])


@pytest.mark.parametrize("name", [layout.BASELINE_MASK, "progression_t1.nii.gz", layout.BRAIN_MASK])
def test_error_non_binary_mask(tmp_path: Path, name: str) -> None:
    _write_cohort(tmp_path, 1)
    arr = np.zeros((20, 24, 16), dtype=np.uint8)
    arr[3, 3, 3] = 2
    _resave(tmp_path / "p0" / name, arr)
    with pytest.raises(ValueError, match=rf"{name} must be binary .*\[2\]"):
        load_case(find_cases(tmp_path)[0])


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_error_non_finite_intensities(tmp_path: Path, bad: float) -> None:
    _write_cohort(tmp_path, 1)
    arr = np.ones((20, 24, 16), dtype=np.float32)
    arr[1, 2, 3] = bad
    _resave(tmp_path / "p0" / "t0_t2.nii.gz", arr)
    with pytest.raises(ValueError, match=r"t0_t2.nii.gz contains NaN or infinite"):
        load_case(find_cases(tmp_path)[0])


@pytest.mark.parametrize("name", ["t1_flair.nii.gz", "progression_t1.nii.gz", "baseline_mask.nii.gz"])
def test_error_missing_file(tmp_path: Path, name: str) -> None:
    _write_cohort(tmp_path, 1)
    (src,) = find_cases(tmp_path, modalities=["flair", "t2"])
    (tmp_path / "p0" / name).unlink()
    with pytest.raises(FileNotFoundError, match=name):
        load_case(src)
    with pytest.raises(FileNotFoundError, match=name):
        find_cases(tmp_path, modalities=["flair", "t2"])


def test_error_too_few_timepoints(tmp_path: Path) -> None:
    _write_cohort(tmp_path, 1)
    for f in (tmp_path / "p0").glob("t1_*"):
        f.unlink()
    with pytest.raises(ValueError, match=r"at least 2 timepoints"):
        find_cases(tmp_path)
    with pytest.raises(ValueError, match=r"at least 2 timepoints"):
        CaseSource("x", ("flair",), ((tmp_path / "a.nii.gz",),))


def test_error_missing_folder_and_empty_cohort(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="does not exist"):
        find_cases(tmp_path / "nope")
    with pytest.raises(FileNotFoundError, match="no case folders"):
        find_cases(tmp_path)


def test_validate_cases_collects_problems(tmp_path: Path) -> None:
    _write_cohort(tmp_path, 2)
    sources = find_cases(tmp_path)
    (tmp_path / "p1" / "t0_flair.nii.gz").unlink()
    problems = validate_cases(sources, progress=False)
    assert list(problems) == ["p1"]
    (message,) = problems["p1"]
    assert message.startswith("FileNotFoundError: case 'p1'") and "t0_flair.nii.gz" in message


@pytest.mark.parametrize(("t2_becomes", "theirs"), [
    ("t1", r"\['flair', 't1'\]"),  # T1 where the others have T2: it would be fed as T2
    (None, r"\['flair'\]"),  # one modality where the others have two
])
def test_cases_with_other_modalities_are_refused_and_reported(tmp_path: Path, t2_becomes: str | None,
                                                              theirs: str) -> None:
    """Without a manifest every case's channels are its own baseline files: cases must agree on them."""
    _write_cohort(tmp_path, 4)
    for f in (tmp_path / "p2").glob("t*_t2.nii.gz"):
        if t2_becomes is None:
            f.unlink()
        else:
            f.rename(f.with_name(f.name.replace("_t2.", f"_{t2_becomes}.")))
    expected = rf"case 'p2' has the modalities {theirs} but 'p0', 'p1', 'p3' have \['flair', 't2'\]"
    with pytest.raises(ValueError, match=expected):
        find_cases(tmp_path)
    problems = validate_cases(tmp_path, progress=False)
    assert list(problems) == ["p2"]
    (message,) = problems["p2"]
    assert message.startswith("ValueError: case 'p2' has the modalities")
    # naming the channels reads them by name: the case lacking T2 is a missing file, the others load
    # (and says that the case has no T2 at all, not only that one file is missing)
    with pytest.raises(FileNotFoundError, match=r"case 'p2': missing image .*p2/t0_t2\.nii\.gz; the case has no "
                                                 rf"'t2' image at all \(it has {theirs}\) but is read with the "
                                                 r"modalities \['flair', 't2'\]"):
        find_cases(tmp_path, modalities=["flair", "t2"])


def test_check_same_modalities_names_the_order(tmp_path: Path) -> None:
    _write_cohort(tmp_path, 2)
    a = find_cases(tmp_path, modalities=["flair", "t2"])
    b = find_cases(tmp_path, modalities=["t2", "flair"])
    assert check_same_modalities(a) == ("flair", "t2")
    with pytest.raises(ValueError, match=r"case 'p0' has the modalities \['t2', 'flair'\] but 'p0', 'p1' have "
                                         r"\['flair', 't2'\].*same channel order"):
        check_same_modalities([*a, b[0]])


def test_manifest_errors(tmp_path: Path) -> None:
    bad = tmp_path / "manifest.json"
    bad.write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        read_manifest(bad)
    bad.write_text(json.dumps({"cases": [{"case_id": "a"}, {"case_id": "a"}]}))
    with pytest.raises(ValueError, match="duplicate case_id"):
        read_manifest(bad)
    bad.write_text(json.dumps({"cases": [{"case_id": "a", "num_timepoints": 1}]}))
    with pytest.raises(ValueError, match="num_timepoints must be >= 2"):
        read_manifest(bad)
    bad.write_text(json.dumps({"cases": [{"case_id": "a", "progression": "maybe"}]}))
    with pytest.raises(ValueError, match="progression must be"):
        read_manifest(bad)
    with pytest.raises(ValueError, match=r"\.json or \.csv"):
        write_manifest(tmp_path / "m.txt", Manifest(("flair",), (ManifestEntry("a", "a", 2, None),)))
    with pytest.raises(FileNotFoundError):
        read_manifest(tmp_path / "absent.json")


def test_a_manifest_of_no_case_is_refused_like_a_folder_of_no_case(tmp_path: Path) -> None:
    """predict would write nothing and say it had, train would blame the validation split."""
    from longiseg.data.cohort import find_mask_cases

    _write_cohort(tmp_path, 1)
    (tmp_path / "manifest.json").write_text(json.dumps({"modalities": ["flair", "t2"], "cases": []}))
    for lister in (find_cases, find_mask_cases):
        with pytest.raises(FileNotFoundError, match="manifest.json lists no case"):
            lister(tmp_path)


def test_manifest_disagreeing_with_files(tmp_path: Path) -> None:
    _write_cohort(tmp_path, 1)
    write_manifest(tmp_path / "manifest.json", Manifest(("flair", "t2"), (ManifestEntry("p0", "p0", 3, True),)))
    with pytest.raises(FileNotFoundError, match="t2_flair"):
        find_cases(tmp_path)


def test_manifest_timepoints_left_out_or_too_few(tmp_path: Path) -> None:
    _write_cohort(tmp_path, 1, num_timepoints=3)
    (tmp_path / "manifest.json").write_text(json.dumps({"cases": [{"case_id": "p0"}]}))
    (entry,) = read_manifest(tmp_path / "manifest.json").cases
    assert entry.num_timepoints is None and entry.patient_id == "p0"
    assert find_cases(tmp_path)[0].num_timepoints == 3  # counted from the files, not a default of 2
    write_manifest(tmp_path / "m.csv", read_manifest(tmp_path / "manifest.json"))
    assert read_manifest(tmp_path / "m.csv").cases == (entry,)
    # a manifest giving fewer timepoints than the folder holds is refused, never silently truncated
    (tmp_path / "manifest.json").write_text(json.dumps({"cases": [{"case_id": "p0", "num_timepoints": 2}]}))
    for call in (find_cases, find_mask_cases):
        with pytest.raises(ValueError, match="manifest gives 2 timepoints.*timepoint 2"):
            call(tmp_path)


def test_find_mask_cases(tmp_path: Path) -> None:
    """A reference folder: full cohort folders or masks only, with or without a manifest."""
    _write_cohort(tmp_path / "full", 2, num_timepoints=3)
    assert [(e.case_id, e.num_timepoints) for e in find_mask_cases(tmp_path / "full")] == [("p0", 3), ("p1", 3)]
    masks = tmp_path / "masks"
    for cid, t in (("a", 2), ("b", 3)):
        (masks / cid).mkdir(parents=True)
        for name in layout.prediction_filenames(t)["mask"]:
            nib.save(nib.Nifti1Image(np.zeros((3, 3, 3), np.uint8), np.eye(4)), masks / cid / name)
    (masks / "not_a_case").mkdir()
    found = find_mask_cases(masks)
    assert [(e.case_id, e.patient_id, e.num_timepoints, e.progression) for e in found] == [
        ("a", "a", 2, None), ("b", "b", 3, None)]
    (masks / "manifest.json").write_text(json.dumps({"cases": [{"case_id": "b", "patient_id": "P"}]}))
    assert [(e.case_id, e.patient_id, e.num_timepoints) for e in find_mask_cases(masks)] == [("b", "P", 3)]
    # the manifest parser is train's: a bad id or a duplicate is refused
    (masks / "manifest.json").write_text(json.dumps({"cases": [{"case_id": "../b"}]}))
    with pytest.raises(ValueError, match="path separator"):
        find_mask_cases(masks)
    (masks / "manifest.json").unlink()
    (masks / "b" / layout.progression_filename(1)).unlink()
    with pytest.raises(FileNotFoundError, match=r"case 'b': missing file\(s\): .*progression_t1"):
        find_mask_cases(masks)
    with pytest.raises(FileNotFoundError, match="no case folders"):
        find_mask_cases(masks / "not_a_case")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        find_mask_cases(tmp_path / "absent")


def test_read_mask_and_prediction(tmp_path: Path) -> None:
    aff = np.diag([0.5, 1.0, 2.0, 1.0])
    case = tmp_path / "c1"
    case.mkdir()
    mask = np.zeros((4, 5, 6), np.uint8)
    mask[1, 2, 3] = 1
    for i, name in enumerate(layout.prediction_filenames(3)["mask"]):
        nib.save(nib.Nifti1Image(np.roll(mask, i, axis=0), aff), case / name)
    for i, name in enumerate(layout.prediction_filenames(3)["prob"]):
        nib.save(nib.Nifti1Image(np.full((4, 5, 6), 0.25 * i, np.float32), aff), case / name)
    arr, affine, spacing = read_mask(case / layout.BASELINE_MASK)
    assert arr.dtype == np.uint8 and np.array_equal(arr, mask) and spacing == (0.5, 1.0, 2.0)
    np.testing.assert_array_equal(affine, aff)
    vols, affine, spacing = read_prediction(tmp_path, "c1", 3)
    assert vols.shape == (3, 4, 5, 6) and vols.dtype == np.uint8 and np.array_equal(vols[2], np.roll(mask, 2, 0))
    probs, _, _ = read_prediction(tmp_path, "c1", 3, "prob")
    assert probs.dtype == np.float32 and probs[:, 0, 0, 0].tolist() == [0.0, 0.25, 0.5]
    with pytest.raises(FileNotFoundError, match="entropy"):
        read_prediction(tmp_path, "c1", 3, "entropy")
    with pytest.raises(ValueError, match="kind must be one of"):
        read_prediction(tmp_path, "c1", 3, "logits")
    with pytest.raises(ValueError, match="case id"):
        read_prediction(tmp_path, "..", 3)
    nib.save(nib.Nifti1Image(np.full((4, 5, 6), 1.5, np.float32), aff), case / "progression_t2_prob.nii.gz")
    with pytest.raises(ValueError, match=r"progression_t2_prob.nii.gz must hold probabilities in \[0, 1\]"):
        read_prediction(tmp_path, "c1", 3, "prob")
    nib.save(nib.Nifti1Image(mask * 2, aff), case / layout.BASELINE_MASK)
    with pytest.raises(ValueError, match=r"baseline_mask.nii.gz must be binary .*\[2\]"):
        read_prediction(tmp_path, "c1", 3)
    nib.save(nib.Nifti1Image(mask[:3], aff), case / layout.BASELINE_MASK)
    with pytest.raises(ValueError, match="progression_t1.nii.gz lies on another grid than baseline_mask"):
        read_prediction(tmp_path, "c1", 3)
    nib.save(nib.Nifti1Image(np.zeros((4, 5, 6, 2), np.uint8), aff), case / layout.BASELINE_MASK)
    with pytest.raises(ValueError, match="3D volume"):
        read_mask(case / layout.BASELINE_MASK)


def test_a_mask_scaled_by_its_header_reads_as_the_zeros_and_ones_it_stores(tmp_path: Path) -> None:
    # a 0/255 mask stored with scl_slope 1/255 (the header's float32 slope makes its ones 1.00000006) was refused
    # as "found values such as [1.0000000591389835]"
    mask = np.zeros((4, 5, 6), np.uint8)
    mask[1, 2, 3] = mask[2, 2, 3] = 1
    img = nib.Nifti1Image(mask * 255, np.eye(4))
    img.header.set_slope_inter(1 / 255, 0)
    nib.save(img, tmp_path / "m.nii.gz")
    arr, _, _ = read_mask(tmp_path / "m.nii.gz")
    assert arr.dtype == np.uint8 and np.array_equal(arr, mask)
    img = nib.Nifti1Image(mask * 255, np.eye(4))
    img.header.set_slope_inter(0.5, 0)  # 127.5: not a mask, and the message says how the values came about
    nib.save(img, tmp_path / "half.nii.gz")
    with pytest.raises(ValueError, match=r"must be binary .*\[127.5\] \(stored values scaled by scl_slope 0.5 and "
                                         r"scl_inter 0\)"):
        read_mask(tmp_path / "half.nii.gz")
    nib.save(nib.Nifti1Image(np.zeros((4, 5, 0), np.uint8), np.eye(4)), tmp_path / "empty.nii.gz")
    with pytest.raises(ValueError, match=r"empty.nii.gz holds no voxel: shape \(4, 5, 0\)"):  # not "shape (0,)"
        read_mask(tmp_path / "empty.nii.gz")


def test_mask_spec_rules(tmp_path: Path) -> None:
    a = np.zeros((4, 4, 4), dtype=np.int16)
    b = np.zeros((4, 4, 4), dtype=np.int16)
    a[0, 0, 0], a[1, 1, 1] = 1, 4
    b[1, 1, 1], b[2, 2, 2], b[3, 3, 3] = 2, 3, 4
    for name, arr in (("a", a), ("b", b)):
        nib.save(nib.Nifti1Image(arr, np.eye(4)), str(tmp_path / f"{name}.nii.gz"))
    img = tmp_path / "img.nii.gz"
    nib.save(nib.Nifti1Image(np.ones((4, 4, 4), dtype=np.float32), np.eye(4)), str(img))
    pa, pb = tmp_path / "a.nii.gz", tmp_path / "b.nii.gz"

    def build(spec: MaskSpec) -> np.ndarray:
        src = CaseSource("m", ("flair",), ((img,), (img,)), baseline_mask=spec, progression_masks=(spec,))
        return load_case(src).baseline_mask

    assert build(MaskSpec((pa,), "labels")).sum() == 2
    assert build(MaskSpec((pa,), "labels", (1, 2, 3))).sum() == 1
    assert build(MaskSpec((pa, pb), "growth")).sum() == 2  # (2,2,2) and (3,3,3)
    assert build(MaskSpec((pa, pb), "symmetric_difference")).sum() == 3
    assert build(MaskSpec((pa, pb), "growth", (1, 2, 3))).sum() == 2  # (1,1,1) becomes 2, (2,2,2)
    assert build(MaskSpec((pa,), "empty")).sum() == 0
    with pytest.raises(ValueError, match="rule must be one of"):
        MaskSpec((pa,), "union")
    with pytest.raises(ValueError, match="needs 2 file"):
        MaskSpec((pa,), "growth")


def test_save_prediction_round_trip(tmp_path: Path) -> None:
    aff = np.diag([0.5, 1.0, 2.0, 1.0])
    rng = np.random.default_rng(0)
    masks = [rng.random((4, 5, 6)) > 0.5 for _ in range(3)]
    probs = [rng.random((4, 5, 6)) for _ in range(3)]
    written = save_prediction(tmp_path, "c1", aff, {"mask": masks, "prob": probs})
    assert [p.name for p in written["prob"]] == layout.prediction_filenames(3)["prob"]
    assert sorted(p.name for p in (tmp_path / "c1").iterdir()) == sorted(
        layout.prediction_filenames(3)["mask"] + layout.prediction_filenames(3)["prob"])
    vols, affine, spacing = read_prediction(tmp_path, "c1", 3)
    assert np.array_equal(vols, np.stack(masks)) and spacing == (0.5, 1.0, 2.0)
    np.testing.assert_array_equal(affine, aff)
    got, _, _ = read_prediction(tmp_path, "c1", 3, "prob")
    np.testing.assert_array_equal(got, np.stack(probs).astype(np.float32))
    with pytest.raises(FileExistsError, match="overwrite=True"):
        save_prediction(tmp_path, "c1", aff, {"mask": masks})
    save_prediction(tmp_path, "c1", aff, {"mask": masks[:2]}, overwrite=True)  # replaces the folder as a whole
    assert sorted(p.name for p in (tmp_path / "c1").iterdir()) == sorted(layout.prediction_filenames(2)["mask"])
    for bad, match in (({"mask": masks[:1]}, ">= 2"), ({"prob": probs}, "must hold 'mask'"),
                       ({"mask": masks, "prob": probs[:2]}, r"volumes\['prob'\] must be 3 volumes"),
                       ({"mask": [m * 2 for m in masks]}, "binary")):
        with pytest.raises(ValueError, match=match):
            save_prediction(tmp_path, "c2", aff, bad)
    assert not (tmp_path / "c2").exists()
    with pytest.raises(ValueError, match="case id"):
        save_prediction(tmp_path, "../c3", aff, {"mask": masks})


# --------------------------------------------------------------------------- voxel spacing: one owner
def _save_two_geometries(path: Path, array: np.ndarray, sform: np.ndarray, zooms: tuple[float, ...]) -> None:
    """A file whose sform (``img.affine``) says one voxel size and whose qform/pixdim (the header zooms)
    another, as some converters write them."""
    img = nib.Nifti1Image(array, sform)
    img.header.set_qform(np.diag([*zooms, 1.0]), code=1)  # sets pixdim to ``zooms``; the sform stays
    nib.save(img, str(path))
    back = nib.load(str(path))
    assert np.allclose(back.affine, sform) and np.allclose(back.header.get_zooms()[:3], zooms)


def test_nifti_spacing_is_the_affine_and_refuses_a_disagreeing_header(tmp_path: Path) -> None:
    from longiseg.data.case import affine_spacing
    from longiseg.data.volumes import nifti_spacing
    from longiseg.utils.nifti import load_nifti

    mask = np.zeros((4, 5, 6), np.uint8)
    mask[1:3, 1:3, 1:3] = 1
    # an oblique, anisotropic grid: the voxel size is the column norms of the affine, not its diagonal
    rot = np.array([[np.cos(0.3), -np.sin(0.3), 0], [np.sin(0.3), np.cos(0.3), 0], [0, 0, 1]])
    oblique = np.eye(4)
    oblique[:3, :3] = rot @ np.diag([0.5, 1.0, 3.0])
    nib.save(nib.Nifti1Image(mask, oblique), str(tmp_path / "ok.nii.gz"))
    assert read_mask(tmp_path / "ok.nii.gz")[2] == pytest.approx((0.5, 1.0, 3.0))
    assert affine_spacing(oblique) == pytest.approx((0.5, 1.0, 3.0))
    img = load_nifti(tmp_path / "ok.nii.gz", header_only=True)
    assert nifti_spacing(img, tmp_path / "ok.nii.gz") == pytest.approx((0.5, 1.0, 3.0))
    # float32 round-off between pixdim and sform is not a disagreement
    _save_two_geometries(tmp_path / "close.nii.gz", mask, np.diag([2.0, 2.0, 2.0, 1.0]), (2.0, 2.0, 2.0001))
    assert read_mask(tmp_path / "close.nii.gz")[2] == (2.0, 2.0, 2.0)
    # sform 2 mm, qform/pixdim 1 mm: ambiguous, refused naming the file and both sizes
    bad = tmp_path / "two.nii.gz"
    _save_two_geometries(bad, mask, np.diag([2.0, 2.0, 2.0, 1.0]), (1.0, 1.0, 1.0))
    msg = r"two.nii.gz: the voxel size of its affine \(sform\) 2x2x2 mm disagrees with its header voxel size .*1x1x1 mm"
    with pytest.raises(ValueError, match=msg):
        read_mask(bad, what="reference")
    with pytest.raises(ValueError, match=msg):
        nifti_spacing(load_nifti(bad, header_only=True), bad)
    with pytest.raises(ValueError, match="finite"):
        affine_spacing(np.full((4, 4), np.nan))
    with pytest.raises(ValueError, match="length > 0"):
        affine_spacing(np.diag([1.0, 0.0, 1.0, 1.0]))


def test_loader_refuses_a_file_whose_header_and_affine_disagree(tmp_path: Path) -> None:
    """load_case (train, predict, tune), validate_cases and read_prediction (lesions, evaluate) all refuse it."""
    cases = _write_cohort(tmp_path, 1)
    case = cases[0]
    assert load_case(find_cases(tmp_path)[0]).spacing == (1.0, 1.0, 1.0)
    # the whole case on a 2 mm sform, but one file's qform/pixdim says 1 mm
    two = np.diag([2.0, 2.0, 2.0, 1.0])
    save_case(case.with_arrays(affine=two, spacing=(2.0, 2.0, 2.0)), tmp_path, overwrite=True)
    assert load_case(find_cases(tmp_path)[0]).spacing == (2.0, 2.0, 2.0)
    assert read_prediction(tmp_path, "p0", 2)[2] == (2.0, 2.0, 2.0)
    bad = tmp_path / "p0" / "progression_t1.nii.gz"
    assert case.progression_masks is not None
    _save_two_geometries(bad, case.progression_masks[0], two, (1.0, 1.0, 1.0))
    with pytest.raises(ValueError, match=r"progression_t1.nii.gz: the voxel size of its affine .*2x2x2 mm.*1x1x1 mm"):
        load_case(find_cases(tmp_path)[0])
    (message,) = validate_cases(tmp_path, progress=False)["p0"]
    assert "progression_t1.nii.gz" in message and "disagrees with its header voxel size" in message
    with pytest.raises(ValueError, match=r"progression_t1.nii.gz: the voxel size of its affine"):
        read_prediction(tmp_path, "p0", 2)


def test_read_prediction_names_the_file_on_another_grid(tmp_path: Path) -> None:
    mask = np.zeros((6, 6, 6), np.uint8)
    case = tmp_path / "c1"
    case.mkdir()
    nib.save(nib.Nifti1Image(mask, np.eye(4)), str(case / layout.BASELINE_MASK))
    nib.save(nib.Nifti1Image(mask, np.diag([3.0, 3.0, 3.0, 1.0])), str(case / "progression_t1.nii.gz"))
    with pytest.raises(ValueError, match=r"case 'c1': reference mask .*c1/progression_t1.nii.gz lies on another "
                                         r"grid than baseline_mask.nii.gz .*voxel size 3x3x3 mm vs 1x1x1 mm"):
        read_prediction(tmp_path, "c1", 2, what="case 'c1': reference mask")


def test_headers_that_leave_the_geometry_or_the_values_ambiguous_are_refused(tmp_path: Path) -> None:
    """Files other tools would place or read differently from nibabel are refused naming the file: neither qform
    nor sform (nibabel's fallback flips left-right), qform and sform that disagree beyond round-off (ITK-based
    tools read the qform), space in other units than mm (volumes), voxels that are not real numbers."""
    mask = np.zeros((4, 5, 6), np.uint8)
    mask[1:3, 1:3, 1:3] = 1
    aff = np.diag([2.0, 2.0, 2.0, 1.0])

    def saved(name: str, change) -> Path:  # noqa: ANN001
        img = nib.Nifti1Image(mask, aff)
        img.set_qform(aff, code=1)
        change(img)
        nib.save(img, str(tmp_path / name))
        return tmp_path / name

    ok = saved("ok.nii.gz", lambda img: None)
    assert read_mask(ok)[2] == (2.0, 2.0, 2.0)

    def no_forms(img) -> None:  # noqa: ANN001
        img.set_qform(None, code=0)
        img.set_sform(None, code=0)

    with pytest.raises(ValueError, match=r"none.nii.gz has neither a qform nor an sform"):
        read_mask(saved("none.nii.gz", no_forms))
    shifted = aff.copy()
    shifted[:3, 3] = 7.0
    with pytest.raises(ValueError, match=r"shift.nii.gz: its qform and sform place the voxels differently \(by up to 7"):
        read_mask(saved("shift.nii.gz", lambda img: img.set_sform(shifted, code=1)))
    with pytest.raises(ValueError, match=r"micron.nii.gz measures space in micron"):
        read_mask(saved("micron.nii.gz", lambda img: img.header.set_xyzt_units("micron")))
    nib.save(nib.Nifti1Image(mask.astype(np.complex64), aff), str(tmp_path / "complex.nii.gz"))
    with pytest.raises(ValueError, match=r"complex.nii.gz stores voxels of type complex64 \(complex\)"):
        read_mask(tmp_path / "complex.nii.gz")
    rgb = np.zeros((4, 5, 6), dtype=[("R", "u1"), ("G", "u1"), ("B", "u1")])
    nib.save(nib.Nifti1Image(rgb, aff), str(tmp_path / "rgb.nii.gz"))
    with pytest.raises(ValueError, match=r"rgb.nii.gz stores voxels of type .*not numbers"):
        read_mask(tmp_path / "rgb.nii.gz")


def test_an_image_whose_modality_name_is_not_allowed_is_refused_not_dropped(tmp_path: Path) -> None:
    """t0_t1_ce.nii.gz (an underscore) was silently left out: a model trained on FLAIR alone, and a case holding
    only such files reported as 'no case folders with t0_* images'."""
    _write_cohort(tmp_path / "c", n=2)
    case = sorted(p for p in (tmp_path / "c").iterdir() if p.is_dir())[0]
    for t in (0, 1):
        (case / f"t{t}_t1_ce.nii.gz").write_bytes((case / f"t{t}_flair.nii.gz").read_bytes())
    msg = r"t0_t1_ce.nii.gz: 't1_ce' is not a modality name \(letters, digits and dashes, e.g. 't1-ce'\)"
    with pytest.raises(ValueError, match=msg):
        find_cases(tmp_path / "c")
    assert any("'t1_ce' is not a modality name" in p for p in validate_cases(tmp_path / "c", progress=False)[case.name])
    only = tmp_path / "only" / "p0"
    only.mkdir(parents=True)
    for t in (0, 1):
        (only / f"t{t}_t1_ce.nii.gz").write_bytes((case / f"t{t}_flair.nii.gz").read_bytes())
    with pytest.raises(ValueError, match=msg.replace("t0_t1_ce", "p0/t0_t1_ce")):
        find_cases(tmp_path / "only", require_masks=False)


@pytest.mark.parametrize(("name", "expected"), [
    ("t2_flair.NII.GZ", "t2_flair.nii.gz"), ("T2_flair.nii.gz", "t2_flair.nii.gz"),
    ("BRAIN_MASK.nii.gz", "brain_mask.nii.gz"), ("Progression_T1.nii", "progression_t1.nii"),
])
def test_a_layout_name_in_upper_case_is_refused_not_dropped(name: str, expected: str, tmp_path: Path) -> None:
    """t2_flair.NII.GZ was left out: the case was read with one timepoint fewer (predict), or refused for a mask
    'without images'; BRAIN_MASK.nii.gz was not used. The modality may be in any case (t0_FLAIR is the FLAIR)."""
    _write_cohort(tmp_path / "c", n=2)
    case = sorted(p for p in (tmp_path / "c").iterdir() if p.is_dir())[0]
    (case / "t0_flair.nii.gz").rename(case / "t0_FLAIR.nii.gz")
    assert find_cases(tmp_path / "c")[0].modalities == ("flair", "t2")
    (case / name).write_bytes((case / "t0_FLAIR.nii.gz").read_bytes())
    with pytest.raises(ValueError, match=rf"{re.escape(name)} is named like the layout's {re.escape(repr(expected))} "
                                         r"but for upper-case letters"):
        find_cases(tmp_path / "c", require_masks=None)


def test_names_moved_out_of_loading_still_import_with_a_warning() -> None:
    """0.3.13 split the old ``loading`` module by concept; code importing the moved names from it keeps working."""
    import importlib

    from longiseg.data import loading

    for name, module in loading._MOVED.items():
        owner = importlib.import_module(f"longiseg.data.{module}")
        assert name in owner.__all__
        with pytest.warns(DeprecationWarning, match=f"longiseg.data.{module}.{name}"):
            assert getattr(loading, name) is getattr(owner, name)
    with pytest.raises(AttributeError, match="no attribute 'no_such_name'"):
        loading.no_such_name  # noqa: B018


@pytest.mark.parametrize("change, match", [
    ({"affine": np.diag([1.0, 1.0, 5.0, 1.0])}, r"spacing \[1.0, 1.0, 1.0\] contradicts the affine.*\[1.0, 1.0, 5.0\]"),
    ({"affine": np.array([[1, 0.5, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1.0]])}, "affine has a shear"),
    ("empty brain", "brain_mask is all zero"),
], ids=["spacing", "shear", "empty-brain-mask"])
def test_a_case_that_loading_would_refuse_is_refused_in_memory(tmp_path: Path, change: object, match: str) -> None:
    # save_case wrote such cases and load_case then refused them; the spacing was kept against the affine
    # (volumes in mm^3 changed on a round trip)
    case = make_case()
    kwargs = {"brain_mask": np.zeros_like(case.brain_mask)} if change == "empty brain" else change
    with pytest.raises(ValueError, match=match):
        dataclasses.replace(case, **kwargs)  # type: ignore[arg-type]
    anisotropic = dataclasses.replace(case, affine=np.diag([1.0, 1.0, 5.0, 1.0]), spacing=(1.0, 1.0, 5.0))
    save_case(anisotropic, tmp_path)
    assert load_case(find_cases(tmp_path)[0]).spacing == anisotropic.spacing


def test_a_mask_of_a_follow_up_without_images_is_refused(tmp_path: Path) -> None:
    # extra images were refused, an extra mask (progression_t3 of a T=3 case) was ignored without a word
    save_case(make_case(num_timepoints=3), tmp_path)
    folder = tmp_path / "case-0"
    (folder / "progression_t2.nii.gz").replace(folder / "progression_t3.nii.gz")
    (folder / "t2_flair.nii.gz").rename(folder / "spare.nii.gz")
    (folder / "t2_t2.nii.gz").rename(folder / "spare_t2.nii.gz")
    for require_masks in (True, False):
        with pytest.raises(ValueError, match=r"holds progression_t3.nii.gz but the case has 2 timepoints \(its last follow-up is t1\)"):
            find_cases(tmp_path, require_masks=require_masks)


def test_case_voxel_size_reads_the_first_files_header(tmp_path: Path) -> None:
    from longiseg.data.loading import case_voxel_size

    aff = np.diag([0.8, 1.0, 3.0, 1.0])[:, [1, 0, 2, 3]]  # axes permuted: the sizes are the array axes'
    case = tmp_path / "p0"
    case.mkdir()
    for t in range(2):
        nib.save(nib.Nifti1Image(np.ones((4, 5, 6), np.float32), aff), case / layout.image_filename(t, "flair"))
    assert case_voxel_size(case) == pytest.approx((1.0, 0.8, 3.0))


def test_csv_manifest_compares_the_modalities_it_names(tmp_path: Path) -> None:
    path = tmp_path / "manifest.csv"
    path.write_text("case_id,modalities\na,flair;t2\nb,flair; t2\nc,FLAIR;T2;\n")  # one list, written three ways
    assert read_manifest(path).modalities == ("flair", "t2")  # was: "must be the same on every row"
    path.write_text("case_id,modalities\na,flair;t2\nb,flair; t2\nc,t2;flair\n")  # another channel order
    with pytest.raises(ValueError, match=r"manifest .*manifest\.csv: the 'modalities' column must name the same "
                                         r"modalities on every row, but line 2 names \['flair', 't2'\] and line 4 "
                                         r"\['t2', 'flair'\]"):
        read_manifest(path)


def test_case_folders_the_manifest_does_not_list_are_named(tmp_path: Path,
                                                           caplog: pytest.LogCaptureFixture) -> None:
    """A case folder added beside the others but not to the manifest was left out without a word (predict wrote no
    output for it); a second manifest was ignored without a word too. Both are warned of, once per process."""
    cases = _write_cohort(tmp_path, 3)
    write_manifest(tmp_path / "manifest.json", manifest_from_cases(cases[:2]))
    (tmp_path / "notes").mkdir()  # a folder without images is no case
    with caplog.at_level("WARNING", logger="longiseg.data"):
        assert [s.case_id for s in find_cases(tmp_path)] == [c.case_id for c in cases[:2]]
        find_cases(tmp_path)
    warnings = [r.getMessage() for r in caplog.records if "does not list" in r.getMessage()]
    assert len(warnings) == 1 and f"1 case folder(s) with images or masks that manifest.json does not list are not used: " \
                                  f"'{cases[2].case_id}'" in warnings[0], warnings
    write_manifest(tmp_path / "manifest.csv", manifest_from_cases(cases))
    caplog.clear()
    with caplog.at_level("WARNING", logger="longiseg.data"):
        find_cases(tmp_path)
    assert "holds both manifest.json and manifest.csv: manifest.json is used" in caplog.text


def test_consecutive_progression_masks_that_overlap_are_warned_of(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                 caplog: pytest.LogCaptureFixture) -> None:
    """Masks drawn against the baseline (progression_t2 repeating t1's new lesion) were loaded, trained on and
    evaluated without a word; only the lesion report noticed. Consecutive masks cannot overlap by definition."""
    import longiseg.utils.logging as lg

    case = make_case(num_timepoints=3, case_id="cum")
    prog = case.progression_masks.copy()
    prog[1] = prog[1] | prog[0]  # t2 drawn against the baseline: t1's new lesion again
    shared = int(np.count_nonzero(prog[1] & prog[0]))
    save_case(dataclasses.replace(case, progression_masks=prog), tmp_path)
    save_case(make_case(num_timepoints=2, case_id="ok"), tmp_path)
    touching = make_case(num_timepoints=3, case_id="touching")  # t2's lesion shares half of t1's voxels (4 of 8)
    assert 2 * int(np.count_nonzero(touching.progression_masks[1] & touching.progression_masks[0])) == int(
        np.count_nonzero(touching.progression_masks[0]))
    save_case(touching, tmp_path)  # as masks resampled one by one touch: not reported
    monkeypatch.setattr(lg, "_SEEN", set())
    with caplog.at_level("WARNING", logger="longiseg.data"):
        load_case(tmp_path / "ok")
        load_case(tmp_path / "touching")
        assert caplog.text == ""
        loaded = load_case(tmp_path / "cum")
        load_case(tmp_path / "cum")  # once per process
    assert np.array_equal(loaded.progression_masks, prog)  # loaded as it is
    assert caplog.text.count(f"case 'cum': progression_t2.nii.gz shares {shared} voxels with progression_t1.nii.gz"
                             ": progression at a follow-up is lesion not present at the previous one") == 1
