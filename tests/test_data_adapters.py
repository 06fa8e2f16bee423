"""MSSEG-2 and UCSF-ALPTDG adapters on fake files written in each dataset's own layout."""

from __future__ import annotations

import logging
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from longiseg.data import load_case, msseg2_cases, ucsf_altpd_cases, validate_cases
from longiseg.data.sources import MaskSpec

SHAPE = (12, 14, 10)


def _save(path: Path, arr: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(arr, np.diag([1.0, 1.0, 1.2, 1.0])), str(path))


def _write_msseg2(root: Path, ids: list[str], gz: bool = True) -> None:
    rng = np.random.default_rng(0)
    ext = ".nii.gz" if gz else ".nii"
    for i, pid in enumerate(ids):
        for t in (1, 2):
            _save(root / pid / f"flair_time0{t}_on_middle_space{ext}", rng.random(SHAPE).astype(np.float32))
        gt = np.zeros(SHAPE, dtype=np.uint8)
        if i == 0:
            gt[4:6, 4:6, 4:6] = 1
        _save(root / pid / f"ground_truth{ext}", gt)
        _save(root / pid / f"ground_truth_expert1{ext}", gt)


def test_msseg2_layout(tmp_path: Path) -> None:
    _write_msseg2(tmp_path, ["013", "015"])
    _write_msseg2(tmp_path, ["016"], gz=False)  # uncompressed files are found as well
    (tmp_path / "notes").mkdir()  # unrelated folders are ignored
    sources = msseg2_cases(tmp_path)
    assert [s.case_id for s in sources] == ["013", "015", "016"]
    case = load_case(sources[0])
    assert case.images.shape == (2, 1, *SHAPE) and case.modalities == ("flair",)
    assert case.baseline_mask.sum() == 0 and not case.baseline_annotated
    assert case.progression_masks.sum() == 8 and case.has_progression
    assert case.spacing == pytest.approx((1.0, 1.0, 1.2))
    assert not load_case(sources[1]).has_progression
    assert sources[2].image_files[0][0].name == "flair_time01_on_middle_space.nii"
    expert = msseg2_cases(tmp_path, annotation="ground_truth_expert1")
    assert expert[0].progression_masks[0].files[0].name == "ground_truth_expert1.nii.gz"


def test_msseg2_errors(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="no case folders"):
        msseg2_cases(tmp_path)
    with pytest.raises(ValueError, match="annotation must be"):
        msseg2_cases(tmp_path, annotation="labels")
    _write_msseg2(tmp_path, ["013"])
    (tmp_path / "013" / "ground_truth.nii.gz").unlink()
    with pytest.raises(FileNotFoundError, match="ground_truth.nii.gz"):
        load_case(msseg2_cases(tmp_path)[0])
    # a file named but for upper- and lower-case letters: reported as missing with no hint before
    (tmp_path / "013" / "flair_time02_on_middle_space.nii.gz").rename(
        tmp_path / "013" / "FLAIR_time02_on_middle_space.nii.gz")
    with pytest.raises(FileNotFoundError, match=r"flair_time02_on_middle_space.nii.gz \(there is "
                                                r"FLAIR_time02_on_middle_space.nii.gz: file names are case-sensitive; "
                                                r"rename it\), .*ground_truth.nii.gz$"):
        load_case(msseg2_cases(tmp_path)[0])


def _write_ucsf(root: Path, pid: str) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(1)
    for t in (1, 2):
        for m in ("flair", "t1", "t1ce", "t2", "t1ce-t1"):
            _save(root / pid / f"{pid}_time{t}_{m}.nii.gz", rng.random(SHAPE).astype(np.float32))
    seg1 = np.zeros(SHAPE, dtype=np.float32)  # the release stores labels as float
    seg2 = np.zeros(SHAPE, dtype=np.float32)
    seg1[2:4, 2:4, 2:4] = 2  # SNFH
    seg1[3, 3, 3] = 3  # ET
    seg1[8, 8, 8] = 4  # resection cavity
    seg2[2:5, 2:4, 2:4] = 2  # SNFH grows by 4 voxels
    seg2[8, 8, 8] = 4
    _save(root / pid / f"{pid}_time1_seg.nii.gz", seg1)
    _save(root / pid / f"{pid}_time2_seg.nii.gz", seg2)
    change = np.zeros(SHAPE, dtype=np.float32)
    change[4, 2:4, 2:4] = 1
    change[0, 0, 0] = 2
    _save(root / pid / f"{pid}_flair_subtraction_seg.nii.gz", change)
    _save(root / pid / f"{pid}_t1ce_subtraction_seg.nii.gz", np.zeros(SHAPE, dtype=np.float32))
    return seg1, seg2


def test_ucsf_layout_whole_tumour_and_difference(tmp_path: Path) -> None:
    seg1, seg2 = _write_ucsf(tmp_path, "100001")
    (src,) = ucsf_altpd_cases(tmp_path)
    case = load_case(src)
    assert case.images.shape == (2, 4, *SHAPE) and case.modalities == ("flair", "t1", "t1ce", "t2")
    np.testing.assert_array_equal(case.baseline_mask, (seg1 > 0).astype(np.uint8))  # union of labels
    np.testing.assert_array_equal(case.progression_masks[0], ((seg1 > 0) ^ (seg2 > 0)).astype(np.uint8))
    assert case.progression_masks.sum() == 4 and case.has_progression

    wt = load_case(ucsf_altpd_cases(tmp_path, tumour_labels=(1, 2, 3))[0])
    assert wt.baseline_mask.sum() == 8  # cavity excluded
    growth = load_case(ucsf_altpd_cases(tmp_path, difference="growth")[0])
    assert growth.progression_masks.sum() == 4
    sub = load_case(ucsf_altpd_cases(tmp_path, difference="flair_subtraction", modalities=("flair",))[0])
    assert sub.progression_masks.sum() == 5 and sub.images.shape[1] == 1  # increase and decrease
    stable = load_case(ucsf_altpd_cases(tmp_path, difference="t1ce_subtraction")[0])
    assert not stable.has_progression


def test_ucsf_scans_after_time2_are_named_not_dropped_silently(tmp_path: Path,
                                                              caplog: pytest.LogCaptureFixture) -> None:
    # a folder also holding *_time3_* files was read as T = 2 without a word
    _write_ucsf(tmp_path, "100001")
    _write_ucsf(tmp_path, "100002")
    for m in ("flair", "seg"):
        _save(tmp_path / "100002" / f"100002_time3_{m}.nii.gz", np.zeros(SHAPE, dtype=np.float32))
    with caplog.at_level(logging.WARNING, logger="longiseg.data.adapters"):
        sources = ucsf_altpd_cases(tmp_path)
    assert [s.num_timepoints for s in sources] == [2, 2]
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warned) == 1 and "case '100002': 2 file(s) of scans after time2 (100002_time3_flair" in warned[0]


def test_ucsf_errors(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="no case folders"):
        ucsf_altpd_cases(tmp_path)
    _write_ucsf(tmp_path, "100002")
    with pytest.raises(ValueError, match="difference must be one of"):
        ucsf_altpd_cases(tmp_path, difference="xor")
    with pytest.raises(ValueError, match="modalities must name"):
        ucsf_altpd_cases(tmp_path, modalities=())
    (tmp_path / "100002" / "100002_time2_seg.nii.gz").unlink()
    with pytest.raises(FileNotFoundError, match="100002_time2_seg"):
        load_case(ucsf_altpd_cases(tmp_path)[0])
    seg = np.zeros(SHAPE, dtype=np.float32)
    seg[1, 1, 1] = 1.5
    _save(tmp_path / "100002" / "100002_time2_seg.nii.gz", seg)
    with pytest.raises(ValueError, match=r"100002_time2_seg.nii.gz holds value\(s\) \[1.5\] \(1 voxel\); it may "
                                         "hold only 0 and 1, 2, 3, 4"):
        load_case(ucsf_altpd_cases(tmp_path)[0])


# --------------------------------------------------------------------------- refused adapter arguments
def test_msseg2_annotation_refused(tmp_path: Path) -> None:
    _write_msseg2(tmp_path, ["013"])
    with pytest.raises(TypeError, match="annotation must be a string"):
        msseg2_cases(tmp_path, annotation=None)
    for bad in ("ground_truth/../x", "ground_truth_expert5", "ground_truth.nii.gz", "ground_truth_x"):
        with pytest.raises(ValueError, match="annotation must be 'ground_truth'") as err:
            msseg2_cases(tmp_path, annotation=bad)
        assert repr(bad) in str(err.value)
    with pytest.raises(TypeError, match="use_brain_mask"):
        msseg2_cases(tmp_path, use_brain_mask="no")
    assert msseg2_cases(tmp_path, annotation="ground_truth_expert4")[0].metadata["annotation"] == "ground_truth_expert4"


@pytest.mark.parametrize(("labels", "exc", "match"), [
    ((0,), ValueError, "tumour_labels must not hold 0: it is the background"),
    ((0, 1), ValueError, "tumour_labels must not hold 0"),
    ((), ValueError, "tumour_labels must name at least one label"),
    ((7,), ValueError, r"tumour_labels \[7\] are not labels of UCSF-ALPTDG"),
    ((1, 9), ValueError, r"tumour_labels \[9\]"),
    ((1.5,), TypeError, r"tumour_labels\[0\] must be an integer label, got float 1.5"),
    ((2.0,), TypeError, r"tumour_labels\[0\] must be an integer"),
    ((True,), TypeError, r"tumour_labels\[0\] must be an integer"),
    (3, TypeError, "tumour_labels must be a list or tuple, got int"),
    ("123", TypeError, "tumour_labels must be a list or tuple, got str"),
])
def test_ucsf_tumour_labels_refused(tmp_path: Path, labels: object, exc: type, match: str) -> None:
    _write_ucsf(tmp_path, "100001")
    with pytest.raises(exc, match=match):
        ucsf_altpd_cases(tmp_path, tumour_labels=labels)


@pytest.mark.parametrize(("modalities", "exc", "match"), [
    ("flair", TypeError, "modalities must be a list or tuple, got str 'flair'"),
    (("seg", "flair"), ValueError, r"modalities \['seg'\] are not images of UCSF-ALPTDG \(the \*_seg files"),
    (("flair", "pd"), ValueError, r"modalities \['pd'\]"),
    (("flair", "FLAIR"), ValueError, r"modalities name \['flair'\] more than once"),
    ((1,), TypeError, r"modalities\[0\] must be a string"),
    ((), ValueError, "modalities must name at least one"),
])
def test_ucsf_modalities_refused(tmp_path: Path, modalities: object, exc: type, match: str) -> None:
    _write_ucsf(tmp_path, "100001")
    with pytest.raises(exc, match=match):
        ucsf_altpd_cases(tmp_path, modalities=modalities)


def test_ucsf_label_arguments_accepted(tmp_path: Path) -> None:
    seg1, _ = _write_ucsf(tmp_path, "100001")
    (src,) = ucsf_altpd_cases(tmp_path, tumour_labels=np.array([3, 2, 2]), modalities=["FLAIR", "t1ce-t1"])
    assert src.baseline_mask.labels == (2, 3) and src.modalities == ("flair", "t1ce-t1")
    np.testing.assert_array_equal(load_case(src).baseline_mask, np.isin(seg1, (2, 3)).astype(np.uint8))
    (default,) = ucsf_altpd_cases(tmp_path)
    assert default.baseline_mask.labels == (1, 2, 3, 4)  # every defined label, never "any non-zero value"


def test_ucsf_undefined_labels_never_counted_and_refused(tmp_path: Path) -> None:
    """A label the release does not define is refused when the map is read, wherever it is read."""
    seg1, seg2 = _write_ucsf(tmp_path, "100001")
    load_case(ucsf_altpd_cases(tmp_path)[0])  # the release's labels pass
    bad = seg1.copy()
    bad[0, 0, 0], bad[0, 0, 1] = 9, 255
    _save(tmp_path / "100001" / "100001_time1_seg.nii.gz", bad)
    change = np.zeros(SHAPE, dtype=np.float32)
    change[4, 2:4, 2:4] = 1
    change[0, 1, 0] = 7
    _save(tmp_path / "100001" / "100001_flair_subtraction_seg.nii.gz", change)
    (src,) = ucsf_altpd_cases(tmp_path)
    with pytest.raises(ValueError, match=r"100001_time1_seg.nii.gz holds value\(s\) \[9, 255\] \(2 voxels\); it "
                                         "may hold only 0 and 1, 2, 3, 4: fix the file or leave the case out"):
        load_case(src)
    (problems,) = validate_cases([src], progress=False).values()  # seg1 feeds two masks: reported once
    assert len(problems) == 1 and "[9, 255]" in problems[0]
    _save(tmp_path / "100001" / "100001_time1_seg.nii.gz", seg1)
    (sub,) = ucsf_altpd_cases(tmp_path, difference="flair_subtraction")
    with pytest.raises(ValueError, match=r"100001_flair_subtraction_seg.nii.gz holds value\(s\) \[7\] .* only 0 and "
                                         "1, 2"):
        load_case(sub)
    change[0, 1, 0] = 2  # "decrease": defined, and a labelled change like "increase" (as documented)
    _save(tmp_path / "100001" / "100001_flair_subtraction_seg.nii.gz", change)
    assert load_case(sub).progression_masks.sum() == 5
    with pytest.raises(ValueError, match=r"labels \[5\] are not among the allowed labels \(1, 2\)"):
        MaskSpec((tmp_path / "m.nii.gz",), "labels", (5,), allowed=(1, 2))
    with pytest.raises(ValueError, match="not to rule 'binary'"):
        MaskSpec((tmp_path / "m.nii.gz",), "binary", allowed=(1,))


# --------------------------------------------------------------------------- examples/convert_datasets.py
def _convert_module():  # noqa: ANN202
    import importlib.util

    path = Path(__file__).resolve().parents[1] / "examples" / "convert_datasets.py"
    spec = importlib.util.spec_from_file_location("examples_convert_datasets_adapters", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _msseg2_raw(root: Path, n: int = 5) -> Path:
    """``n`` MSSEG-2 cases, every other one with new lesions, each with a brain mask."""
    rng = np.random.default_rng(2)
    for i in range(n):
        folder = root / f"{i + 1:03d}"
        gt = np.zeros(SHAPE, dtype=np.uint8)
        if i % 2 == 0:
            gt[2:4, 3:5, 4:6] = 1
        for t in (1, 2):
            _save(folder / f"flair_time0{t}_on_middle_space.nii.gz", rng.normal(100, 5, SHAPE).astype(np.float32))
        _save(folder / "ground_truth.nii.gz", gt)
        _save(folder / "brain_mask.nii.gz", np.ones(SHAPE, dtype=np.uint8))
    return root


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _split_ids(out: Path) -> dict[str, set[str]]:
    from longiseg.data import read_manifest

    ids = {}
    for name in ("train", "test"):
        if (out / name).is_dir():
            ids[name] = {e.case_id for e in read_manifest(out / name / "manifest.json").cases}
            assert ids[name] == {p.name for p in (out / name).iterdir() if p.is_dir()}  # no stale case folders
    return ids


def test_convert_refuses_output_over_source(tmp_path: Path) -> None:
    convert = _convert_module()
    raw = _msseg2_raw(tmp_path / "raw")
    cohort = tmp_path / "cohA"
    assert convert.main(["msseg2", str(raw), str(cohort), "--test-fraction", "0.4"]) == 0
    before = _files(cohort)
    src = str(cohort / "train")
    for out, how in ((cohort, "holds"), (cohort / "train", "is"), (cohort / "train" / "sub", "lies inside")):
        with pytest.raises(ValueError, match=f"OUT .* {how} the SOURCE folder"):
            convert.main(["layout", src, str(out), "--overwrite"])
    with pytest.raises(ValueError, match="OUT .* holds the case '001' folder"):
        convert.convert(msseg2_cases(raw), tmp_path, overwrite=True)  # the library function checks as well
    assert _files(cohort) == before  # the input's manifest and cases untouched
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cohA", "raw"]


def test_convert_invalid_cases_write_nothing(tmp_path: Path) -> None:
    convert = _convert_module()
    raw = _msseg2_raw(tmp_path / "raw")
    path = raw / "003" / "flair_time02_on_middle_space.nii.gz"
    img = nib.load(str(path))
    shifted = img.affine.copy()
    shifted[0, 3] += 0.5
    nib.save(nib.Nifti1Image(np.asanyarray(img.dataobj), shifted), str(path))
    gt = np.zeros(SHAPE, dtype=np.uint8)
    gt[1, 1, 1] = 2
    _save(raw / "005" / "ground_truth.nii.gz", gt)
    out = tmp_path / "out"
    with pytest.raises(ValueError, match="2 of 5 cases are invalid; nothing was written") as err:
        convert.main(["msseg2", str(raw), str(out)])
    assert "003: ValueError: case '003': image" in str(err.value) and "lies on another grid" in str(err.value)
    assert "005: ValueError: case '005': mask" in str(err.value) and "must be binary" in str(err.value)
    assert not out.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["raw"]  # no temporaries either

    nib.save(img, str(path))
    _save(raw / "005" / "ground_truth.nii.gz", np.zeros(SHAPE, dtype=np.uint8))
    assert convert.main(["msseg2", str(raw), str(out)]) == 0  # a rerun needs no --overwrite
    assert set().union(*_split_ids(out).values()) == {"001", "002", "003", "004", "005"}


def test_convert_failure_keeps_the_previous_output(tmp_path: Path) -> None:
    convert = _convert_module()
    raw = _msseg2_raw(tmp_path / "raw")
    out = tmp_path / "out"
    assert convert.main(["msseg2", str(raw), str(out)]) == 0
    before = _files(out)
    (raw / "002" / "ground_truth.nii.gz").write_bytes(b"not a nifti")
    with pytest.raises(ValueError, match="002: ValueError: .*ground_truth.nii.gz is truncated, corrupt"):
        convert.main(["msseg2", str(raw), str(out), "--overwrite"])
    assert _files(out) == before
    with pytest.raises(FileExistsError, match="pass --overwrite"):
        convert.main(["msseg2", str(raw), str(out)])
    assert _files(out) == before


def test_convert_overwrite_replaces_the_whole_output(tmp_path: Path) -> None:
    convert = _convert_module()
    raw = _msseg2_raw(tmp_path / "raw")
    out = tmp_path / "out"
    assert convert.main(["msseg2", str(raw), str(out), "--test-fraction", "0.4", "--seed", "0"]) == 0
    assert len(list(out.rglob("brain_mask.nii.gz"))) == 5
    first = _split_ids(out)
    for folder in raw.iterdir():
        (folder / "brain_mask.nii.gz").unlink()
    seed = next(s for s in range(1, 50) if convert.split_cases(
        msseg2_cases(raw), test_fraction=0.4, seed=s)[1] != convert.split_cases(
        msseg2_cases(raw), test_fraction=0.4, seed=0)[1])
    assert convert.main(["msseg2", str(raw), str(out), "--test-fraction", "0.4", "--seed", str(seed),
                         "--overwrite"]) == 0
    assert not list(out.rglob("brain_mask.nii.gz"))  # the deleted brain masks do not survive
    second = _split_ids(out)
    assert second != first and not second["train"] & second["test"]
    assert second["train"] | second["test"] == {"001", "002", "003", "004", "005"}
    assert convert.main(["msseg2", str(raw), str(out), "--test-fraction", "0", "--overwrite"]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["train"]  # no stale test split
    (out / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match=r"holds \['notes.txt'\], which a conversion does not write"):
        convert.main(["msseg2", str(raw), str(out), "--overwrite"])
    assert (out / "notes.txt").read_text(encoding="utf-8") == "mine" and (out / "train" / "manifest.json").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "raw"]


@pytest.mark.parametrize(("args", "match"), [
    (["--test-fraction", "1.0"], r"test_fraction \(--test-fraction\) must be in \[0, 1\)"),
    (["--test-fraction", "-0.1"], r"--test-fraction\) must be in \[0, 1\)"),
    (["--test-fraction", "nan"], r"--test-fraction\) must be in \[0, 1\)"),
    (["--test-fraction", "0.9"], r"--test-fraction\) 0.9 puts all 5 patients .* lower --test-fraction"),
    (["--test-ids", "001", "002", "003", "004", "005"], r"--test-ids\) .* hold every patient"),
    (["--test-ids", "009"], r"--test-ids\): case\(s\) \['009'\] not found"),
    (["--max-cases", "0"], r"max_cases \(--max-cases\) must be an integer >= 1"),
    (["--seed", "-1"], r"seed \(--seed\) must be an integer >= 0"),
])
def test_convert_split_options_named(tmp_path: Path, args: list[str], match: str) -> None:
    convert = _convert_module()
    raw = _msseg2_raw(tmp_path / "raw")
    with pytest.raises(ValueError, match=match):
        convert.main(["msseg2", str(raw), str(tmp_path / "out"), *args])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["raw"]


def test_convert_test_ids_keep_patients_together(tmp_path: Path) -> None:
    from longiseg.data import (
        LongitudinalCase,
        Manifest,
        ManifestEntry,
        read_manifest,
        save_case,
        write_manifest,
    )

    convert = _convert_module()
    src = tmp_path / "src"
    rng = np.random.default_rng(0)
    patients = {"a1": "A", "a2": "A", "b1": "B", "c1": "C"}
    for i, cid in enumerate(patients):
        prog = np.zeros((1, *SHAPE), np.uint8)
        prog[0, 2:4, 2:4, 2:4] = i % 2
        save_case(LongitudinalCase(images=rng.normal(size=(2, 1, *SHAPE)).astype(np.float32),
                                   baseline_mask=np.zeros(SHAPE, np.uint8), progression_masks=prog,
                                   affine=np.eye(4), spacing=(1.0, 1.0, 1.0), modalities=("flair",),
                                   case_id=cid, patient_id=patients[cid]), src)
    write_manifest(src / "manifest.json", Manifest(("flair",), tuple(
        ManifestEntry(cid, pid, 2, None) for cid, pid in patients.items())))
    out = tmp_path / "out"
    assert convert.main(["layout", str(src), str(out), "--test-ids", "a2"]) == 0
    assert _split_ids(out) == {"train": {"b1", "c1"}, "test": {"a1", "a2"}}  # patient A on one side only
    assert {e.patient_id for e in read_manifest(out / "test" / "manifest.json").cases} == {"A"}
    with pytest.raises(ValueError, match=r"--test-ids\) \['a1', 'b1', 'c1'\] hold every patient"):
        convert.split_cases(convert.select_cases(
            convert.find_cases(src), None, 0), test_fraction=0.2, seed=0, test_ids=["a1", "b1", "c1"])
    with pytest.raises(TypeError, match="list of case ids"):
        convert.split_cases(convert.find_cases(src), test_fraction=0.2, seed=0, test_ids="a1")


def test_convert_ucsf_refuses_bad_labels_and_modalities(tmp_path: Path) -> None:
    convert = _convert_module()
    raw = tmp_path / "raw"
    for pid in ("100001", "100002", "100003"):
        seg1, _ = _write_ucsf(raw, pid)
    bad = seg1.copy()
    bad[0, 0, 0] = 9
    _save(raw / "100002" / "100002_time1_seg.nii.gz", bad)
    out = tmp_path / "out"
    with pytest.raises(ValueError, match=r"1 of 3 cases are invalid; nothing was written(.|\n)*100002: ValueError: "
                                         r"case '100002': label map .*100002_time1_seg.nii.gz holds value\(s\) \[9\] "
                                         r"\(1 voxel\); it may hold only 0 and 1, 2, 3, 4: fix the file or leave the case out$"):
        convert.main(["ucsf", str(raw), str(out)])
    for args, exc, match in ((["--tumour-labels", "0"], ValueError, "tumour_labels must not hold 0"),
                             (["--tumour-labels", "7"], ValueError, r"tumour_labels \[7\]"),
                             (["--modalities", "seg", "flair"], ValueError, r"modalities \['seg'\]")):
        with pytest.raises(exc, match=match):
            convert.main(["ucsf", str(raw), str(out), *args])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["raw"]
    _save(raw / "100002" / "100002_time1_seg.nii.gz", seg1)
    assert convert.main(["ucsf", str(raw), str(out), "--tumour-labels", "1", "2", "3", "--test-fraction", "0"]) == 0
    assert _split_ids(out) == {"train": {"100001", "100002", "100003"}}


def test_adapter_root_refused(tmp_path: Path) -> None:
    (tmp_path / "file.txt").write_text("x")
    for adapter in (msseg2_cases, ucsf_altpd_cases):
        with pytest.raises(TypeError, match="root must be the dataset folder"):
            adapter(None)
        with pytest.raises(NotADirectoryError, match="is not a folder"):
            adapter(tmp_path / "file.txt")
        with pytest.raises(FileNotFoundError, match="does not exist"):
            adapter(tmp_path / "missing")


def test_msseg2_ambiguous_files_are_reported_per_case(tmp_path: Path) -> None:
    """A case holding one file as both .nii and .nii.gz stopped the whole listing; validate_cases reports it for
    that case, as it does a missing file, and the other cases stay listed."""
    _write_msseg2(tmp_path, ["013", "015"])
    _save(tmp_path / "015" / "flair_time01_on_middle_space.nii", np.ones(SHAPE, dtype=np.float32))
    sources = msseg2_cases(tmp_path)
    assert [s.case_id for s in sources] == ["013", "015"]
    problems = validate_cases(sources, progress=False)
    assert list(problems) == ["015"] and "ambiguous files" in problems["015"][0]
    with pytest.raises(ValueError, match="ambiguous files"):
        load_case(sources[1])


def test_a_case_folder_lacking_the_file_the_listing_looked_for_is_listed_and_reported(tmp_path: Path) -> None:
    # a case without its baseline FLAIR (MSSEG-2) or time1 files (UCSF) vanished from the listing without a word
    _write_msseg2(tmp_path / "ms", ["013", "015"])
    (tmp_path / "ms" / "015" / "flair_time01_on_middle_space.nii.gz").unlink()
    (tmp_path / "ms" / "notes").mkdir()  # a folder without NIfTI files is no case
    sources = msseg2_cases(tmp_path / "ms")
    assert [s.case_id for s in sources] == ["013", "015"]
    problems = validate_cases(sources, progress=False)
    assert list(problems) == ["015"] and "flair_time01_on_middle_space" in " ".join(problems["015"])
    for pid in ("100001", "100002"):
        _write_ucsf(tmp_path / "uc", pid)
    for f in (tmp_path / "uc" / "100002").glob("100002_time1_*"):
        f.rename(f.with_name(f.name.replace("time1", "timeX")))
    assert [s.case_id for s in ucsf_altpd_cases(tmp_path / "uc")] == ["100001", "100002"]


def test_a_case_folder_name_that_is_no_case_id_is_named(tmp_path: Path) -> None:
    _write_msseg2(tmp_path, ["013", "bad id "])
    with pytest.raises(ValueError, match=r"case folder .*bad id : case id 'bad id ' must not start or end"):
        msseg2_cases(tmp_path)


def test_label_map_scaled_by_its_header_reads_as_its_labels(tmp_path: Path) -> None:
    # int16 0/3/6 with scl_slope 1/3 (float32 in the header) reads as 0, 1.0000000298, 2.0000000596: it was
    # refused as "holds value(s) [1.0000000298023224, 2.0000000596046448]"
    seg1, seg2 = _write_ucsf(tmp_path, "100001")
    for t, seg in ((1, seg1), (2, seg2)):
        img = nib.Nifti1Image((seg * 3).astype(np.int16), np.diag([1.0, 1.0, 1.2, 1.0]))
        img.header.set_slope_inter(1 / 3, 0.0)
        nib.save(img, str(tmp_path / "100001" / f"100001_time{t}_seg.nii.gz"))
    scaled = np.asarray(nib.load(tmp_path / "100001" / "100001_time1_seg.nii.gz").dataobj)
    assert not np.isin(scaled, (0, 1, 2, 3, 4)).all()  # the stored values do read off the labels
    (src,) = ucsf_altpd_cases(tmp_path, difference="growth")
    case = load_case(src)
    assert np.array_equal(case.baseline_mask, (seg1 > 0).astype(np.uint8))
    assert np.array_equal(case.progression_masks[0], ((seg2 > 0) & ~(seg1 > 0)).astype(np.uint8))
    bad = (seg1 * 3).astype(np.int16)
    bad[0, 0, 0] = 1  # 1/3: no label, and the message shows its digits and the scaling
    img = nib.Nifti1Image(bad, np.diag([1.0, 1.0, 1.2, 1.0]))
    img.header.set_slope_inter(1 / 3, 0.0)
    nib.save(img, str(tmp_path / "100001" / "100001_time1_seg.nii.gz"))
    with pytest.raises(ValueError, match=r"100001_time1_seg\.nii\.gz holds value\(s\) \[0\.3333333432674408\] \(1 "
                                         r"voxel\) \(stored values scaled by scl_slope 0\.333333 and "
                                         r"scl_inter 0\); it may hold only 0 and 1, 2, 3, 4"):
        load_case(src)


def test_convert_words_a_test_split_without_a_stratum_for_the_test_split(tmp_path: Path,
                                                                        caplog: pytest.LogCaptureFixture) -> None:
    convert = _convert_module()
    raw = _msseg2_raw(tmp_path / "raw", n=3)  # 001 and 003 with new lesions, 002 the only stable patient
    with caplog.at_level("WARNING"):
        assert convert.main(["msseg2", str(raw), str(tmp_path / "out"), "--test-fraction", "0.34"]) == 0
    assert "validation" not in caplog.text and "val_fraction" not in caplog.text  # was the library's wording
    assert ("--test-fraction=0.34 gives no patient of a stratum of one to the test split: the only stable patient "
            "'002' stays in training; the test set has no patient of that stratum") in caplog.text
    assert _split_ids(tmp_path / "out")["test"] <= {"001", "003"}
