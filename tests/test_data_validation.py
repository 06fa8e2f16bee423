"""Bad data on disk: unreadable NIfTI files, unsafe case ids, ambiguous file names, and per-case validation.

Every bad input must give a ValueError/FileNotFoundError naming the file, case id or rule (never a bare
EOFError, zlib.error or ImageFileError), and ``validate_cases`` must collect all of them per case.
Volumes are tiny (4x5x6) so the module runs in seconds.
"""

from __future__ import annotations

import dataclasses
import json
import re
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from longiseg.bridges.nnunet import import_nnunet_predictions
from longiseg.data import (
    CaseSource,
    LongitudinalCase,
    Manifest,
    find_cases,
    layout,
    load_case,
    manifest_from_cases,
    read_manifest,
    save_case,
    validate_cases,
    write_manifest,
)
from longiseg.utils.nifti import load_nifti

SHAPE = (4, 5, 6)


def _case(case_id: str, progression: bool = True, seed: int = 0) -> LongitudinalCase:
    """A 2-timepoint, 2-modality case; random intensities so that gzip cannot shrink the voxel data."""
    rng = np.random.default_rng(seed)
    base = np.zeros(SHAPE, np.uint8)
    base[1, 1, 1] = 1
    prog = np.zeros((1, *SHAPE), np.uint8)
    prog[0, 2, 2, 2] = int(progression)
    return LongitudinalCase(
        images=rng.random((2, 2, *SHAPE)).astype(np.float32) + 0.5, baseline_mask=base,
        progression_masks=prog, affine=np.eye(4), spacing=(1.0, 1.0, 1.0), modalities=("flair", "t2"),
        case_id=case_id, brain_mask=np.ones(SHAPE, np.uint8),
    )


def _cohort(root: Path, ids: tuple[str, ...] = ("p0",), flags: dict[str, bool] | None = None) -> Path:
    """Save cases ``ids`` (even positions progress) with a manifest; ``flags`` overrides manifest flags."""
    cases = [_case(cid, progression=i % 2 == 0, seed=i) for i, cid in enumerate(ids)]
    for c in cases:
        save_case(c, root)
    manifest = manifest_from_cases(cases)
    flags = flags or {}
    entries = tuple(dataclasses.replace(e, progression=flags.get(e.case_id, e.progression))
                    for e in manifest.cases)
    write_manifest(root / layout.MANIFEST_JSON, Manifest(manifest.modalities, entries))
    return root


def _truncate(path: Path, keep: float = 0.6) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


def _corrupt_middle(path: Path) -> None:
    data = bytearray(path.read_bytes())
    for i in range(len(data) // 2, len(data) // 2 + 16):
        data[i] ^= 0xFF
    path.write_bytes(bytes(data))


def _resave(path: Path, array: np.ndarray, affine: np.ndarray | None = None) -> None:
    nib.save(nib.Nifti1Image(array, np.eye(4) if affine is None else affine), str(path))


# ----------------------------------------------------------------------------- load_nifti
@pytest.fixture
def volume(tmp_path: Path) -> Path:
    path = tmp_path / "vol.nii.gz"
    arr = np.random.default_rng(0).random(SHAPE).astype(np.float32)
    nib.save(nib.Nifti1Image(arr, np.diag([2.0, 3.0, 4.0, 1.0])), str(path))
    return path


@pytest.fixture
def large_volume(tmp_path: Path) -> Path:
    """16 KiB of random voxels: large enough that a truncated file still has a readable header."""
    path = tmp_path / "large.nii.gz"
    arr = np.random.default_rng(0).random((16, 16, 16)).astype(np.float32)
    nib.save(nib.Nifti1Image(arr, np.diag([2.0, 3.0, 4.0, 1.0])), str(path))
    return path


def test_load_nifti_reads_voxels_affine_and_zooms(tmp_path: Path, volume: Path) -> None:
    ref = nib.load(str(volume))
    img = load_nifti(volume)
    np.testing.assert_array_equal(np.asanyarray(img.dataobj), ref.get_fdata(dtype=np.float32))
    np.testing.assert_array_equal(img.affine, ref.affine)
    assert img.shape == SHAPE and tuple(img.header.get_zooms()) == (2.0, 3.0, 4.0)
    # scaled integer storage: the returned voxels are the scaled values, not scaled twice
    scaled = tmp_path / "scaled.nii"
    src = nib.Nifti1Image(np.arange(120, dtype=np.float64).reshape(SHAPE) * 0.25 + 3.0, np.eye(4))
    src.set_data_dtype(np.int16)
    nib.save(src, str(scaled))
    want = nib.load(str(scaled)).get_fdata()
    np.testing.assert_array_equal(np.asanyarray(load_nifti(scaled).dataobj), want)
    np.testing.assert_array_equal(load_nifti(scaled).get_fdata(), want)
    assert np.asanyarray(load_nifti(scaled, dtype=np.float32).dataobj).dtype == np.float32


@pytest.mark.parametrize(
    ("damage", "match"),
    [
        (lambda p: p.write_bytes(b""), r"is empty \(0 bytes\)"),
        (lambda p: p.write_text("not an image"), r"truncated, corrupt or not a NIfTI file"),
        (_truncate, r"truncated, corrupt or not a NIfTI file"),
        (_corrupt_middle, r"truncated, corrupt or not a NIfTI file"),
        (lambda p: (p.unlink(), p.mkdir()), r"is a folder, not a NIfTI file"),
    ],
    ids=["zero-bytes", "text", "truncated", "corrupt-gzip", "folder"],
)
def test_load_nifti_bad_files_name_the_file(volume: Path, damage: object, match: str) -> None:
    damage(volume)  # type: ignore[operator]
    with pytest.raises(ValueError, match=match) as err:
        load_nifti(volume, what="case 'p7': image")
    assert str(volume) in str(err.value) and "case 'p7': image" in str(err.value)


def test_load_nifti_truncated_gzip_fails_on_the_voxels_not_the_header(large_volume: Path) -> None:
    _truncate(large_volume)
    assert load_nifti(large_volume, header_only=True).shape == (16, 16, 16)  # a lazy read would not notice
    with pytest.raises(ValueError, match=r"large\.nii\.gz is truncated, corrupt .* \(EOFError"):
        load_nifti(large_volume)


@pytest.mark.parametrize("cut", [4, 8])
def test_load_nifti_checks_the_gzip_trailer(large_volume: Path, cut: int) -> None:
    """Losing only the checksum/length trailer, or a flipped checksum, is caught although voxels decode."""
    data = large_volume.read_bytes()
    large_volume.write_bytes(data[:-cut])
    with pytest.raises(ValueError, match=r"large\.nii\.gz is truncated"):
        load_nifti(large_volume)
    large_volume.write_bytes(data[:-8] + bytes(b ^ 0xFF for b in data[-8:-4]) + data[-4:])
    with pytest.raises(ValueError, match=r"large\.nii\.gz is truncated, corrupt .*CRC"):
        load_nifti(large_volume)


def test_load_nifti_truncated_uncompressed_and_text_nii(tmp_path: Path) -> None:
    plain = tmp_path / "vol.nii"
    nib.save(nib.Nifti1Image(np.ones(SHAPE, np.float32), np.eye(4)), str(plain))
    _truncate(plain, keep=0.9)
    with pytest.raises(ValueError, match=r"vol\.nii is truncated, corrupt"):
        load_nifti(plain)
    plain.write_text("hello " * 100)
    with pytest.raises(ValueError, match=r"vol\.nii is truncated, corrupt or not a NIfTI file"):
        load_nifti(plain)


def test_load_nifti_missing_and_non_nifti(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"NIfTI file .*absent\.nii\.gz does not exist"):
        load_nifti(tmp_path / "absent.nii.gz")
    mgh = tmp_path / "vol.mgz"
    nib.save(nib.MGHImage(np.ones(SHAPE, np.float32), np.eye(4)), str(mgh))
    with pytest.raises(ValueError, match=r"vol\.mgz is not a NIfTI file \(nibabel reads it as MGHImage\)"):
        load_nifti(mgh)


# ----------------------------------------------------------------------------- case ids
def test_check_case_id_refuses_ids_too_long_for_file_names() -> None:
    """A case folder's temporary adds ~35 bytes to the id: a 240-byte id failed with "File name too long" after
    inference; the id is refused up front, counted in UTF-8 bytes as file systems count names."""
    with pytest.raises(ValueError, match=f"is {layout.MAX_CASE_ID_BYTES + 1} bytes long, more than "):
        layout.check_case_id("p" * (layout.MAX_CASE_ID_BYTES + 1))
    with pytest.raises(ValueError, match=f"is {layout.MAX_CASE_ID_BYTES + 1} bytes long"):
        layout.check_case_id("\u00e9" * 75 + "p")  # 75 two-byte characters


@pytest.mark.parametrize(
    ("case_id", "rule"),
    [
        ("", "must not be empty"),
        ("..", "must not be '.' or '..'"),
        (".", "must not be '.' or '..'"),
        ("../../x", "must not contain a path separator"),
        ("a/b", "must not contain a path separator"),
        ("a\\b", "must not contain a path separator"),
        ("/etc", "must not be an absolute path"),
        ("\\\\server\\share", "must not be an absolute path"),
        ("C:evil", "must not start with a drive"),
        ("p\x000", "must not contain control characters"),
        ("p0\n", "must not contain control characters"),
        (" p0", "must not start or end with whitespace"),
        ("p0 ", "must not start or end with whitespace"),
    ],
)
def test_check_case_id_rejects_unsafe_ids(case_id: str, rule: str) -> None:
    with pytest.raises(ValueError, match=re.escape(f"case id {case_id!r} {rule}")):
        layout.check_case_id(case_id)
    with pytest.raises(ValueError, match=re.escape(f"manifest m.json case 2: case id {case_id!r}")):
        layout.check_case_id(case_id, where="manifest m.json case 2")


def test_check_case_id_accepts_plain_names() -> None:
    for case_id in ("p0", "sub-01_ses-02", "013", "case.v2", "Patient 7", "p" * layout.MAX_CASE_ID_BYTES):
        assert layout.check_case_id(case_id) == case_id
    with pytest.raises(TypeError, match="case id must be a string, got int"):
        layout.check_case_id(3)  # type: ignore[arg-type]


@pytest.mark.parametrize("case_id", ["..", "../../x", "/tmp/x", "a/b"])
@pytest.mark.parametrize("suffix", [".json", ".csv"])
def test_manifest_case_ids_never_leave_the_cohort(tmp_path: Path, case_id: str, suffix: str) -> None:
    _cohort(tmp_path / "cohort")
    (tmp_path / "cohort" / layout.MANIFEST_JSON).unlink()
    path = tmp_path / "cohort" / f"manifest{suffix}"
    # the bad id is the second case: named where a reader finds it (rows were counted from 0, the CSV's header
    # not counted, so "row 1" pointed at a valid id)
    if suffix == ".json":
        path.write_text(json.dumps({"modalities": ["flair", "t2"], "cases": [{"case_id": "ok"}, {"case_id": case_id}]}))
        place = "case 2"
    else:
        path.write_text(f"case_id,num_timepoints\nok,2\n{case_id},2\n")
        place = "line 3"
    for call in (read_manifest, find_cases, validate_cases):
        with pytest.raises(ValueError, match=rf"manifest .*{place}: case id {re.escape(repr(case_id))}"):
            call(path if call is read_manifest else path.parent)


def test_case_ids_checked_by_case_records_and_save_case(tmp_path: Path) -> None:
    img = tmp_path / "a.nii.gz"
    with pytest.raises(ValueError, match=r"case id '\.\.' must not be"):
        CaseSource("..", ("flair",), ((img,), (img,)))
    with pytest.raises(ValueError, match=r"case id 'a/b' must not contain a path separator"):
        _case("a/b")
    case = _case("p0")
    case.case_id = "../escaped"
    with pytest.raises(ValueError, match=r"case id '\.\./escaped'"):
        save_case(case, tmp_path / "out")
    assert not (tmp_path / "escaped").exists() and not (tmp_path / "out").exists()


def test_folder_scan_reports_an_unsafe_folder_name(tmp_path: Path) -> None:
    _cohort(tmp_path, ("p0",))
    (tmp_path / layout.MANIFEST_JSON).unlink()
    shutil.copytree(tmp_path / "p0", tmp_path / "p1 ")
    with pytest.raises(ValueError, match=r"case id 'p1 ' must not start or end with whitespace"):
        find_cases(tmp_path)
    problems = validate_cases(tmp_path, progress=False)
    assert list(problems) == ["p1 "] and "must not start or end with whitespace" in problems["p1 "][0]


def test_nnunet_import_refuses_an_unsafe_case_id(tmp_path: Path) -> None:
    preds, out = tmp_path / "preds", tmp_path / "out" / "inner"
    preds.mkdir()
    nib.save(nib.Nifti1Image(np.zeros(SHAPE, np.uint8), np.eye(4)), str(preds / ".._fu1.nii.gz"))
    with pytest.raises(ValueError, match=r"nnU-Net prediction .*: case id '\.\.' must not be"):
        import_nnunet_predictions(preds, out)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["preds"]


# ----------------------------------------------------------------------------- ambiguous file names
@pytest.mark.parametrize("name", ["t1_t2.nii.gz", "t0_flair.nii.gz", layout.BASELINE_MASK,
                                  "progression_t1.nii.gz", layout.BRAIN_MASK])
def test_nii_and_nii_gz_of_one_name_are_ambiguous(tmp_path: Path, name: str) -> None:
    _cohort(tmp_path)
    gz = tmp_path / "p0" / name
    plain = gz.with_name(layout.nifti_stem(name) + ".nii")
    nib.save(nib.load(str(gz)), str(plain))
    both = rf"ambiguous files .*{re.escape(plain.name)} and .*{re.escape(gz.name)}"
    with pytest.raises(ValueError, match=both):
        find_cases(tmp_path)
    with pytest.raises(ValueError, match=both):
        load_case(tmp_path / "p0")
    (problem,) = validate_cases(tmp_path, progress=False)["p0"]
    assert re.search(both, problem)
    gz.unlink()  # the .nii alone is used
    (src,) = find_cases(tmp_path)
    assert plain in src.all_files() and load_case(src).shape == SHAPE


def test_sibling_appearing_after_listing_is_ambiguous_too(tmp_path: Path) -> None:
    _cohort(tmp_path)
    (src,) = find_cases(tmp_path)
    shutil.copy(tmp_path / "p0" / layout.BASELINE_MASK, tmp_path / "p0" / "baseline_mask.nii")
    both = r"ambiguous files .*baseline_mask\.nii and .*baseline_mask\.nii\.gz"
    with pytest.raises(ValueError, match=both):
        load_case(src)


def test_find_nifti(tmp_path: Path) -> None:
    assert layout.find_nifti(tmp_path, layout.BRAIN_MASK) is None
    (tmp_path / "brain_mask.nii").write_bytes(b"x")
    assert layout.find_nifti(tmp_path, layout.BRAIN_MASK) == tmp_path / "brain_mask.nii"
    assert layout.find_nifti(tmp_path, "brain_mask") == tmp_path / "brain_mask.nii"


# ----------------------------------------------------------------------------- loading bad voxels
@pytest.mark.parametrize(
    ("name", "damage", "match"),
    [
        ("t1_flair.nii.gz", lambda p: p.write_bytes(b""), r"image .*t1_flair\.nii\.gz is empty \(0 bytes\)"),
        ("t0_t2.nii.gz", _truncate, r"t0_t2\.nii\.gz is truncated, corrupt or not a NIfTI file"),
        ("progression_t1.nii.gz", _truncate, r"progression_t1\.nii\.gz is truncated"),
        (layout.BASELINE_MASK, lambda p: p.write_text("{}"), r"baseline_mask\.nii\.gz is truncated, corrupt"),
        (layout.BRAIN_MASK, _corrupt_middle, r"brain_mask\.nii\.gz is truncated, corrupt"),
    ],
)
def test_load_case_names_the_unreadable_file(tmp_path: Path, name: str, damage: object, match: str) -> None:
    _cohort(tmp_path)
    (src,) = find_cases(tmp_path)
    damage(tmp_path / "p0" / name)  # type: ignore[operator]
    with pytest.raises(ValueError, match=rf"case 'p0': .*{match}"):
        load_case(src)


def test_load_case_never_skips_a_file_it_cannot_read(tmp_path: Path) -> None:
    _cohort(tmp_path)
    (src,) = find_cases(tmp_path)
    odd = tmp_path / "p0" / "t1_t2.data"
    shutil.copy(tmp_path / "p0" / "t1_t2.nii.gz", odd)
    images = (src.image_files[0], (src.image_files[1][0], odd))
    bad = dataclasses.replace(src, image_files=images)
    with pytest.raises(ValueError, match=r"case 'p0': image .*t1_t2\.data is truncated, corrupt or not"):
        load_case(bad)
    (problem,) = validate_cases([bad], progress=False)["p0"]
    assert "t1_t2.data" in problem


def test_load_case_refuses_an_all_zero_brain_mask(tmp_path: Path) -> None:
    _cohort(tmp_path)
    _resave(tmp_path / "p0" / layout.BRAIN_MASK, np.zeros(SHAPE, np.uint8))
    with pytest.raises(ValueError, match=r"case 'p0': brain mask .*brain_mask\.nii\.gz is all zero"):
        load_case(find_cases(tmp_path)[0])


@pytest.mark.parametrize(("progresses", "flag", "match"), [
    (False, True, r"flag is true but every progression mask \(progression_t1\.nii\.gz\) is empty"),
    (True, False, r"flag is false but progression_t1\.nii\.gz \(1 voxels\) is not empty"),
])
def test_load_case_refuses_a_contradicting_progression_flag(tmp_path: Path, progresses: bool, flag: bool,
                                                            match: str) -> None:
    ids = ("p0",) if progresses else ("x", "p0")  # odd positions are stable
    _cohort(tmp_path, ids, flags={"p0": flag})
    (src,) = [s for s in find_cases(tmp_path) if s.case_id == "p0"]
    assert src.has_progression is flag
    with pytest.raises(ValueError, match=rf"case 'p0': the manifest's progression {match}"):
        load_case(src)


@pytest.mark.parametrize(("progresses", "flag", "match"), [
    (False, True, r"flag is true but every progression mask \(progression_t1\.nii\.gz\) is empty"),
    (True, False, r"flag is false but progression_t1\.nii\.gz \(1 voxels\) is not empty"),
])
def test_evaluate_and_lesions_refuse_a_contradicting_progression_flag_as_training_does(
        tmp_path: Path, progresses: bool, flag: bool, match: str) -> None:
    """The reference side of ``longiseg evaluate`` and ``longiseg lesions`` read a reference case with its
    manifest's flag checked (``read_mask_case``), with the message ``load_case`` gives; they scored it."""
    from longiseg.data import find_mask_cases, read_mask_case
    from longiseg.metrics.evaluate import evaluate_folder
    from longiseg.metrics.evolution import evolution_folder

    ids = ("p0",) if progresses else ("x", "p0")
    ref = _cohort(tmp_path / "ref", ids, flags={"p0": flag})
    pred = tmp_path / "pred"
    shutil.copytree(ref, pred, ignore=shutil.ignore_patterns(layout.MANIFEST_JSON))  # a prediction has no manifest
    message = rf"case 'p0': the manifest's progression {match}"
    (entry,) = [e for e in find_mask_cases(ref) if e.case_id == "p0"]
    for read in (lambda: load_case(next(s for s in find_cases(ref) if s.case_id == "p0")),
                 lambda: read_mask_case(ref, entry),
                 lambda: evaluate_folder(pred, ref, progress=False),
                 lambda: evolution_folder(ref, progress=False)):
        with pytest.raises(ValueError, match=message):
            read()
    assert [e.case_id for e in evolution_folder(pred, progress=False)] == sorted(ids)  # no manifest, no flag


def test_read_mask_case_checks_its_arguments(tmp_path: Path) -> None:
    from longiseg.data import ManifestEntry, read_mask_case

    _cohort(tmp_path)
    with pytest.raises(TypeError, match="entry must be a ManifestEntry"):
        read_mask_case(tmp_path, "p0")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="num_timepoints must be set"):
        read_mask_case(tmp_path, ManifestEntry("p0", "p0", None, None))


# ----------------------------------------------------------------------------- validate_cases
def _damage_cohort(root: Path) -> dict[str, list[str]]:
    """A cohort with one broken case per kind of problem; returns the patterns each case must report."""
    ids = ("ok", "zero", "truncated", "text", "brain0", "flag_true", "flag_false", "shape", "affine",
           "nonbinary", "missing", "ambiguous", "several")
    # even positions progress: flag_true (5) is stable but flagged true, flag_false (6) progresses but not
    _cohort(root, ids, flags={"flag_true": True, "flag_false": False})
    shifted = np.eye(4)
    shifted[0, 3] = 10.0
    (root / "zero" / "t1_flair.nii.gz").write_bytes(b"")
    _truncate(root / "truncated" / "t0_t2.nii.gz")
    (root / "text" / layout.BASELINE_MASK).write_text("not a mask")
    _resave(root / "brain0" / layout.BRAIN_MASK, np.zeros(SHAPE, np.uint8))
    _resave(root / "shape" / "t1_t2.nii.gz", np.zeros((4, 5, 7), np.float32))
    _resave(root / "affine" / "t1_flair.nii.gz", np.ones(SHAPE, np.float32), shifted)
    nonbinary = np.zeros(SHAPE, np.uint8)
    nonbinary[0, 0, 0] = 2
    _resave(root / "nonbinary" / "progression_t1.nii.gz", nonbinary)
    (root / "missing" / "t1_t2.nii.gz").unlink()
    shutil.copy(root / "ambiguous" / "t0_flair.nii.gz", root / "ambiguous" / "t0_flair.nii")
    (root / "several" / "t0_flair.nii.gz").write_bytes(b"")
    _resave(root / "several" / layout.BASELINE_MASK, nonbinary)
    _resave(root / "several" / layout.BRAIN_MASK, np.zeros(SHAPE, np.uint8))
    return {
        "zero": [r"ValueError: case 'zero': image .*t1_flair\.nii\.gz is empty \(0 bytes\)"],
        "truncated": [r"ValueError: case 'truncated': image .*t0_t2\.nii\.gz is truncated"],
        "text": [r"ValueError: case 'text': mask .*baseline_mask\.nii\.gz is truncated, corrupt or not a"],
        "brain0": [r"ValueError: case 'brain0': brain mask .*brain_mask\.nii\.gz is all zero"],
        "flag_true": [r"case 'flag_true': the manifest's progression flag is true but every progression"],
        "flag_false": [r"case 'flag_false': the manifest's progression flag is false but progression_t1"],
        "shape": [r"case 'shape': image .*t1_t2\.nii\.gz lies on another grid than t0_flair\.nii\.gz \(shape \(4, 5, 7\) vs .*must share one grid"],
        "affine": [r"case 'affine': image .*t1_flair\.nii\.gz lies on another grid .*affines differ by up to 10 mm"],
        "nonbinary": [r"case 'nonbinary': mask .*progression_t1\.nii\.gz must be binary .*\[2\]"],
        "missing": [r"FileNotFoundError: case 'missing': missing image .*t1_t2\.nii\.gz"],
        "ambiguous": [r"ValueError: ambiguous files .*t0_flair\.nii and .*t0_flair\.nii\.gz"],
        "several": [r"case 'several': image .*t0_flair\.nii\.gz is empty",
                    r"baseline_mask\.nii\.gz must be binary", r"brain_mask\.nii\.gz is all zero"],
    }


def test_validate_cases_reports_every_problem_per_case(tmp_path: Path) -> None:
    expected = _damage_cohort(tmp_path)
    problems = validate_cases(tmp_path, progress=False)
    assert list(problems) == sorted(expected)  # case-id order, not the manifest's; "ok" has none
    for case_id, patterns in expected.items():
        assert len(problems[case_id]) == len(patterns), (case_id, problems[case_id])
        for pattern, message in zip(patterns, problems[case_id]):
            assert re.search(pattern, message), (case_id, pattern, message)


def test_validate_cases_on_sources_collects_instead_of_raising(tmp_path: Path) -> None:
    _cohort(tmp_path, ("a", "b", "c"))
    sources = find_cases(tmp_path)
    (tmp_path / "a" / "t1_t2.nii.gz").write_bytes(b"")
    (tmp_path / "b" / "t0_flair.nii.gz").unlink()
    shutil.copy(tmp_path / "c" / layout.BRAIN_MASK, tmp_path / "c" / "brain_mask.nii")
    problems = validate_cases(sources, progress=False)
    assert list(problems) == ["a", "b", "c"]
    assert "t1_t2.nii.gz is empty (0 bytes)" in problems["a"][0]
    assert problems["b"][0].startswith("FileNotFoundError: case 'b': missing file(s):")
    assert "ambiguous files" in problems["c"][0] and "brain_mask.nii " in problems["c"][0]
    twice = validate_cases(sources + [sources[0]], progress=False)["a"]
    assert sum(m.endswith("case 'a' appears more than once") for m in twice) == 1


def test_validate_cases_raises_only_for_the_cohort_itself(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="does not exist"):
        validate_cases(tmp_path / "absent", progress=False)
    (tmp_path / layout.MANIFEST_JSON).write_text("{broken")
    with pytest.raises(ValueError, match="not valid JSON"):
        validate_cases(tmp_path, progress=False)
