"""``longiseg register`` on raw scans as a clinic exports them: an analytic head phantom scanned after a known
rigid motion on grids with other voxel sizes, orientations (oblique too), fields of view, header offsets,
int16 with ``scl_slope`` and qform-only headers; the transforms, the resampled images and masks, the masks
mapped back onto the raw grids, blank images, an affine stage that must not scale, and a rerun with
``--overwrite`` in which every case fails."""

from __future__ import annotations

import csv
import gzip
import json
import math
import struct
from pathlib import Path

import numpy as np
import pytest

from longiseg.data import layout
from longiseg.registration.simulate import rigid_motion
from tests.test_registration import LPS, _dice

sitk = pytest.importorskip("SimpleITK")
nib = pytest.importorskip("nibabel")

#: the baseline's lesions (centre RAS mm, radius mm) and the follow-up's new lesion
LESIONS = (((20.0, 15.0, 10.0), 6.0), ((-25.0, -20.0, 5.0), 5.0), ((10.0, -30.0, -15.0), 7.0))
NEW_LESION = ((-15.0, 25.0, 15.0), 7.0)
#: the patient's motion between the sessions: 8 degrees, 12.6 mm at the brain's centre
MOTION = rigid_motion((0.3, -0.5, 0.8), 8.0, (7.0, -9.0, 5.0), (5.0, -3.0, 2.0))
#: corners and centre of the brain, RAS mm: where the transforms are compared
BRAIN_POINTS = np.array([[x, y, z] for x in (-50, 0, 50) for y in (-60, 0, 60) for z in (-40, 0, 40)], float)


def _soft(d: np.ndarray, width: float = 1.5) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(np.clip(d / width, -50, 50)))


def _ellipsoid(p: np.ndarray, centre: tuple, radii: tuple) -> np.ndarray:
    """Approximate signed distance (mm) of points ``p`` ``(..., 3)`` to an ellipsoid's surface."""
    q = (p - np.asarray(centre)) / np.asarray(radii)
    return (np.sqrt((q**2).sum(-1)) - 1.0) * min(radii)


def _lesions(p: np.ndarray, followup: bool) -> list[np.ndarray]:
    """Distance to each lesion's surface (baseline lesions, plus the new one in the follow-up)."""
    return [np.linalg.norm(p - np.asarray(c), axis=-1) - r for c, r in LESIONS + ((NEW_LESION,) if followup else ())]


def _head(p: np.ndarray, modality: str, followup: bool) -> np.ndarray:
    """Intensity of the phantom at patient points ``p`` ``(..., 3)`` (RAS mm): brain, skull, ventricles,
    two asymmetric blobs and the lesions; ``"t2"`` has another contrast."""
    brain = _soft(_ellipsoid(p, (0, 0, 0), (60, 72, 52)))
    skull = _soft(_ellipsoid(p, (0, 0, 0), (66, 78, 58))) - brain
    vent = _soft(_ellipsoid(p, (8, 5, 8), (8, 22, 10))) + _soft(_ellipsoid(p, (-10, 2, 6), (7, 18, 9)))
    blob = _soft(_ellipsoid(p, (25, -30, -20), (14, 10, 12))) + 0.6 * _soft(_ellipsoid(p, (-30, 35, 20), (10, 14, 8)))
    les = sum(_soft(d, 0.7) for d in _lesions(p, followup))
    w = (100, 60, -80, 40, 90) if modality == "flair" else (60, 30, 120, -20, 50)
    return np.maximum(w[0] * brain + w[1] * skull + w[2] * vent + w[3] * blob + w[4] * les, 0).astype(np.float32)


def _grid(spacing: tuple, shape: tuple, storage: str = "RAS", tilt_deg: float = 0.0,
          centre: tuple = (0.0, 0.0, 0.0)) -> np.ndarray:
    """RAS affine of a grid stored in ``storage`` order (e.g. ``"PIR"``: axis 0 points posterior), tilted by
    ``tilt_deg`` about (1, 1, 0), its voxel block centred at ``centre``."""
    towards = {"R": (1, 0, 0), "L": (-1, 0, 0), "A": (0, 1, 0), "P": (0, -1, 0), "S": (0, 0, 1), "I": (0, 0, -1)}
    direction = rigid_motion((1, 1, 0), tilt_deg, (0, 0, 0))[:3, :3] @ np.array([towards[c] for c in storage], float).T
    affine = np.eye(4)
    affine[:3, :3] = direction @ np.diag(spacing)
    affine[:3, 3] = np.asarray(centre) - affine[:3, :3] @ ((np.asarray(shape) - 1) / 2)
    return affine


def _points(affine: np.ndarray, shape: tuple, motion: np.ndarray | None = None) -> np.ndarray:
    """Patient points ``(*shape, 3)`` shown by the voxels of a scan on ``(affine, shape)`` after ``motion``
    (``(4, 4)``; ``None``: the patient as at baseline)."""
    idx = np.indices(shape, dtype=np.float64).reshape(3, -1)
    to_patient = affine if motion is None else np.linalg.inv(motion) @ affine
    return (to_patient[:3, :3] @ idx + to_patient[:3, 3:]).T.reshape(*shape, 3)


def _scan(affine: np.ndarray, shape: tuple, motion: np.ndarray | None = None, modality: str = "flair",
          followup: bool = False) -> np.ndarray:
    return _head(_points(affine, shape, motion), modality, followup)


def _new_lesion(affine: np.ndarray, shape: tuple, motion: np.ndarray | None = None) -> np.ndarray:
    return (_lesions(_points(affine, shape, motion), True)[-1] <= 0).astype(np.uint8)


def _save(arr: np.ndarray, affine: np.ndarray, path: Path, header: str = "") -> None:
    """``header``: ``""`` (float32, sform), ``"int16"`` (int16 voxels with scl_slope 0.05) or ``"qform"``."""
    if header == "int16":  # nibabel picks its own scaling on save: patch scl_slope/scl_inter in the bytes
        img = nib.Nifti1Image(np.round(arr / 0.05).astype(np.int16), affine)
        data = bytearray(img.to_bytes())
        data[112:120] = struct.pack("<ff", 0.05, 0.0)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(gzip.compress(bytes(data)))
        return
    img = nib.Nifti1Image(np.asarray(arr), affine)
    if header == "qform":
        img.set_qform(affine, code=1)
        img.set_sform(None, code=0)
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(img, str(path))


BASE_SHAPE = (38, 44, 33)
BASE_AFFINE = _grid((4.0, 4.0, 4.0), BASE_SHAPE)
#: follow-up FLAIR acquisitions: (spacing, shape, storage, tilt, centre of the field of view, header kind,
#: offset of the scanner coordinates in mm). The follow-up's T2 always lies on a third grid (5 mm, PIR).
ACQUISITIONS = {
    "lps-oblique": ((4.0, 4.0, 4.0), (42, 48, 40), "LPS", 20.0, (0, 0, 0), "", 0.0),
    "pir-thick-int16": ((3.0, 3.0, 9.0), (56, 44, 16), "PIR", 0.0, (10, -15, 8), "int16", 0.0),
    "las-qform-offset": ((4.0, 4.0, 4.0), BASE_SHAPE, "LAS", 0.0, (100, 0, 0), "qform", 100.0),
}


def _write_case(folder: Path, acquisition: tuple) -> np.ndarray:
    """A raw case: the baseline (FLAIR, T2, lesion mask) on the 4 mm RAS grid, the follow-up scanned after
    :data:`MOTION` on the acquisition's grid (T2 on a 5 mm PIR grid), its new lesion in its own space.

    Returns:
        The follow-up's true motion in scanner coordinates (``(4, 4)``, RAS; the header offset included).
    """
    spacing, shape, storage, tilt, centre, header, offset = acquisition
    motion = np.eye(4)
    motion[0, 3] = offset
    motion = motion @ MOTION
    for m in ("flair", "t2"):
        _save(_scan(BASE_AFFINE, BASE_SHAPE, modality=m), BASE_AFFINE, folder / f"t0_{m}.nii.gz", header)
    base_lesions = np.zeros(BASE_SHAPE, bool)
    for d in _lesions(_points(BASE_AFFINE, BASE_SHAPE), False):
        base_lesions |= d <= 0
    _save(base_lesions.astype(np.uint8), BASE_AFFINE, folder / layout.BASELINE_MASK)
    aff = _grid(spacing, shape, storage, tilt, centre)
    _save(_scan(aff, shape, motion, followup=True), aff, folder / "t1_flair.nii.gz", header)
    t2_shape = (36, 32, 36)
    t2_aff = _grid((5.0, 5.0, 5.0), t2_shape, "PIR", 0.0, centre)
    _save(_scan(t2_aff, t2_shape, motion, "t2", followup=True), t2_aff, folder / "t1_t2.nii.gz", header)
    _save(_new_lesion(aff, shape, motion), aff, folder / layout.progression_filename(1))
    return motion


def _transform_error(est: object, motion: np.ndarray) -> float:
    """Largest distance (mm) between a SimpleITK transform (or a saved ``.tfm``) and the true ``motion``
    (``(4, 4)``, RAS) over :data:`BRAIN_POINTS`."""
    est = sitk.ReadTransform(str(est)) if isinstance(est, Path) else est
    true = LPS @ motion @ LPS
    return max(float(np.linalg.norm(np.asarray(est.TransformPoint([float(v) for v in q])) - (true[:3, :3] @ q + true[:3, 3])))
               for q in BRAIN_POINTS @ LPS[:3, :3])


def test_raw_acquisitions_register_resample_and_map_back(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """Oblique LPS, thick-slice PIR int16 with scl_slope and a smaller, shifted field of view, qform-only LAS
    100 mm away in scanner coordinates: each follow-up's transform close to the truth, its T2 (another grid)
    moved with it, its progression mask binary and in place, and the masks back on the raw grids."""
    from longiseg.cli import main
    from longiseg.registration.native import predictions_to_native

    raw, out = tmp_path / "raw", tmp_path / "out"
    motions = {name: _write_case(raw / name, acq) for name, acq in ACQUISITIONS.items()}
    assert main(["register", str(raw), str(out), "--no-qc-figures", "--no-progress", "--max-translation", "150"]) == 0
    capsys.readouterr()
    ideal = {m: _scan(BASE_AFFINE, BASE_SHAPE, modality=m, followup=True) for m in ("flair", "t2")}
    brain = _scan(BASE_AFFINE, BASE_SHAPE) > 50
    new = _new_lesion(BASE_AFFINE, BASE_SHAPE)
    for name, motion in motions.items():
        # within 0.3 of the coarsest voxel edge (measured: 0.76 mm at 4 mm, 2.0 mm with 9 mm slices)
        err = _transform_error(out / name / "registration" / "t1.tfm", motion)
        assert err < 0.3 * max(ACQUISITIONS[name][0]), (name, err)
        for m in ("flair", "t2"):
            img = nib.load(out / name / f"t1_{m}.nii.gz")
            np.testing.assert_allclose(img.affine, BASE_AFFINE, atol=1e-5)
            arr = np.asarray(img.dataobj)
            assert np.corrcoef(arr[brain], ideal[m][brain])[0, 1] > 0.97, (name, m)  # int16: values scaled back
            assert abs(float(arr[brain].mean()) / float(ideal[m][brain].mean()) - 1.0) < 0.05, (name, m)
        prog = nib.load(out / name / layout.progression_filename(1))
        values = np.asarray(prog.dataobj)
        assert values.dtype == np.uint8 and set(np.unique(values)) == {0, 1}
        assert _dice(values, new) > 0.7, name
        volume = float(values.sum()) * 64.0
        # thick slices lose a quarter of a 7 mm lesion (measured 24 % with 9 mm, 6 % with 4 mm voxels)
        assert abs(volume / (4 / 3 * math.pi * NEW_LESION[1] ** 3) - 1.0) < 0.35, (name, volume)

    # the registered masks as a "prediction", back on the raw grids: exact grid, binary, overlapping
    pred = tmp_path / "pred"
    for name in motions:
        for f in (layout.BASELINE_MASK, layout.progression_filename(1)):
            (pred / name).mkdir(parents=True, exist_ok=True)
            (pred / name / f).write_bytes((out / name / f).read_bytes())
    predictions_to_native(pred, out, tmp_path / "native")
    for name in motions:
        for f in (layout.BASELINE_MASK, layout.progression_filename(1)):
            back, ref = nib.load(tmp_path / "native" / name / f), nib.load(raw / name / f)
            assert back.shape == ref.shape
            np.testing.assert_allclose(back.affine, ref.affine, atol=1e-5)
            arr = np.asarray(back.dataobj)
            assert arr.dtype == np.uint8 and set(np.unique(arr)) <= {0, 1}
            assert _dice(arr, np.asarray(ref.dataobj)) > (0.99 if f == layout.BASELINE_MASK else 0.75), (name, f)
            # the scan's header where the voxels lie (a qform-only scan stays qform-only, code 1)
            scan = nib.load(raw / name / ("t0_flair.nii.gz" if f == layout.BASELINE_MASK else "t1_flair.nii.gz"))
            codes = ("qform_code", "sform_code")
            assert [int(back.header[c]) for c in codes] == [int(scan.header[c]) for c in codes], (name, f)
            np.testing.assert_allclose(back.header.get_qform(), scan.header.get_qform(), atol=1e-4)
            assert back.header.get_xyzt_units() == scan.header.get_xyzt_units()


def test_a_large_header_offset_names_the_option_that_accepts_it(tmp_path: Path) -> None:
    """Sessions 100 mm apart in scanner coordinates: registered to within 1 mm, failed by the default
    --max-translation 50 with a reason that says how to accept it."""
    from longiseg.registration.cohort import RegistrationOptions, register_case

    motion = _write_case(tmp_path / "raw" / "c", ACQUISITIONS["las-qform-offset"])
    res = register_case(tmp_path / "raw" / "c", tmp_path / "out", RegistrationOptions(qc_figures=False))
    assert not res.written
    (reason,) = res.followups[0]["reasons"]
    assert "mm > 50.0 mm" in reason and "--max-translation" in reason
    assert _transform_error(tmp_path / "out" / "c" / "registration" / "t1.tfm", motion) < 1.0


def test_affine_registration_does_not_scale_a_rigidly_moved_head() -> None:
    """The affine stage samples a widened mask: with the Otsu mask that ends at the head's edge, mutual
    information recovered this rigid motion with 7.5 % too large scales (4.3 mm at the brain's corners)."""
    from longiseg.registration.grid import to_sitk
    from longiseg.registration.pairwise import PairOptions, foreground_mask, register_pair, transform_motion

    shape = (50, 58, 43)
    base = _grid((3.0, 3.0, 3.0), shape)
    moved = _grid((3.0, 3.0, 3.0), shape, "LPS")
    fixed = to_sitk(_scan(base, shape), base)
    tx, _ = register_pair(fixed, to_sitk(_scan(moved, shape, MOTION, followup=True), moved),
                          fixed_mask=foreground_mask(fixed), options=PairOptions(transform="affine"))
    assert max(abs(s - 1.0) for s in transform_motion(tx, (0.0, 0.0, 0.0))["scales"]) < 0.03
    err = _transform_error(tx, MOTION)
    assert err < 2.0, err
    with pytest.raises(ValueError, match="mask_margin_mm"):
        PairOptions(mask_margin_mm=-1.0)
    with pytest.raises(TypeError, match="mask_margin_mm"):
        PairOptions(mask_margin_mm="5")  # type: ignore[arg-type]


def test_a_follow_up_with_a_smaller_field_of_view_is_scored_where_it_images_the_brain(tmp_path: Path,
                                                                                     capsys: pytest.CaptureFixture) -> None:
    """A follow-up covering the top 45 % of the brain failed its quality check whatever its registration: the
    correlation was computed over the whole baseline brain, half of which the follow-up never imaged (0 after
    resampling). It is scored where it images the brain, and its coverage is checked on its own. (The smooth
    phantom constrains a slab's registration poorly, several mm along the slab: accuracy is not what this test
    measures.)"""
    from longiseg.cli import main

    raw = tmp_path / "raw"
    _write_case(raw / "top", ((4.0, 4.0, 4.0), (42, 48, 10), "RAS", 0.0, (0, 0, 24), "", 0.0))
    args = ["register", str(raw), "--no-qc-figures", "--no-progress"]
    assert main([*args, str(tmp_path / "narrow"), "--min-coverage", "0.3"]) == 0
    capsys.readouterr()
    row = next(csv.DictReader((tmp_path / "narrow" / "registration.csv").open(encoding="utf-8")))
    assert row["status"] == "ok" and float(row["correlation_after"]) > 0.9, row  # 0.31 over the whole brain
    assert 0.3 < float(row["brain_coverage"]) < 0.48, row  # measured 0.45
    assert float(row["correlation_before"]) < 0.5  # where it images the brain, as scanned
    assert main([*args, str(tmp_path / "default")]) == 1  # --min-coverage 0.5
    err = capsys.readouterr().err
    assert "follow-up 1 failed: the registered follow-up images 45% of the baseline's brain (< 50%" in err
    assert "lower --min-coverage" in err

@pytest.mark.parametrize("modality, value", [("t2", 0.0), ("flair", 7.0)])
def test_a_blank_image_fails_its_case_naming_the_file(modality: str, value: float, tmp_path: Path,
                                                       capsys: pytest.CaptureFixture) -> None:
    """An all-zero follow-up T2 (it follows the FLAIR's transform) was written as a blank image and the case
    passed; a constant FLAIR failed with ITK's "Refusing to change spacing from [1, 1] to [2.9, 0]"."""
    from longiseg.cli import main

    raw, out = tmp_path / "raw", tmp_path / "out"
    _write_case(raw / "c", ACQUISITIONS["lps-oblique"])
    blank = raw / "c" / f"t1_{modality}.nii.gz"
    img = nib.load(blank)
    _save(np.full(img.shape, value, np.float32), img.affine, blank)
    assert main(["register", str(raw), str(out), "--no-qc-figures", "--no-progress"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"t1_{modality}.nii.gz is blank: every voxel is {value:g}" in err[0], err
    assert not (out / "c").exists() and not (out / "manifest.json").exists()


def test_a_progression_mask_without_its_follow_up_fails_its_case(tmp_path: Path,
                                                                  capsys: pytest.CaptureFixture) -> None:
    # register wrote the case without the mask and said nothing; find_cases refuses such a folder
    from longiseg.cli import main

    raw, out = tmp_path / "raw", tmp_path / "out"
    _write_case(raw / "c", ACQUISITIONS["lps-oblique"])
    img = nib.load(raw / "c" / "t1_flair.nii.gz")
    _save(np.zeros(img.shape, np.uint8), img.affine, raw / "c" / "progression_t3.nii.gz")
    assert main(["register", str(raw), str(out), "--no-qc-figures", "--no-progress"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "holds progression_t3.nii.gz but the case has 2 timepoints" in err[0], err
    assert not (out / "c").exists()


def test_overwrite_where_every_case_now_fails_leaves_no_manifest_of_the_earlier_run(tmp_path: Path) -> None:
    """A rerun with --overwrite in which the only case fails its quality check replaced the case folder by its
    QC record but kept the earlier manifest.json, which still listed the case for predict and train."""
    from longiseg.cli import main
    from longiseg.data.cohort import find_cases

    raw, out = tmp_path / "raw", tmp_path / "out"
    _write_case(raw / "c", ACQUISITIONS["lps-oblique"])
    args = ["register", str(raw), str(out), "--no-qc-figures", "--no-progress"]
    assert main(args) == 0
    assert [c["case_id"] for c in json.loads((out / "manifest.json").read_text(encoding="utf-8"))["cases"]] == ["c"]
    other = raw / "c" / "t1_flair.nii.gz"  # another patient's scan: noise
    img = nib.load(other)
    _save(np.random.default_rng(0).random(img.shape).astype(np.float32) * 100, img.affine, other)
    assert main([*args, "--overwrite"]) == 1
    assert not (out / "c" / "t1_flair.nii.gz").exists()
    assert not (out / "manifest.json").exists()
    with pytest.raises(FileNotFoundError, match="no case folders"):
        find_cases(out)


def test_a_raw_image_whose_header_describes_two_grids_fails_its_case(tmp_path: Path,
                                                                      capsys: pytest.CaptureFixture) -> None:
    """A raw image whose qform (pixdim) voxels are half its sform's was registered (a mask with that header was
    refused), and `predict --native` failed on its header after writing the case's predictions."""
    from longiseg.cli import main

    raw, out = tmp_path / "raw", tmp_path / "out"
    _write_case(raw / "c", ACQUISITIONS["lps-oblique"])
    path = raw / "c" / "t1_flair.nii.gz"
    img = nib.load(path)
    two = nib.Nifti1Image(np.asarray(img.dataobj), img.affine)
    half = img.affine.copy()
    half[:3, :3] *= 0.5
    two.set_qform(half, code=1)
    two.set_sform(img.affine, code=1)
    nib.save(two, str(path))
    assert main(["register", str(raw), str(out), "--no-qc-figures", "--no-progress"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "t1_flair.nii.gz: the voxel size of its affine (sform)" in err[0], err
    assert not (out / "c").exists()


def test_a_registration_record_of_a_two_grid_header_is_refused_before_mapping_back(tmp_path: Path) -> None:
    """A registration.json written before such files were refused records a header that does not describe its
    grid: mapping predictions back is refused before any file is written, naming the record and the file."""
    from longiseg.cli import main
    from longiseg.registration.native import check_native_ready, predictions_to_native

    raw, out = tmp_path / "raw", tmp_path / "out"
    _write_case(raw / "c", ACQUISITIONS["lps-oblique"])
    assert main(["register", str(raw), str(out), "--no-qc-figures", "--no-progress"]) == 0
    record_path = out / "c" / "registration" / "registration.json"
    record = json.loads(record_path.read_text(encoding="utf-8"))
    header = record["native_grids"]["t1_flair"]["header"]
    header["qform_code"] = 1  # a qform with half the sform's voxel size, as such files carry
    header["zooms"] = [z / 2 for z in header["zooms"]]
    record_path.write_text(json.dumps(record), encoding="utf-8")
    match = r"registration\.json: the original file t1_flair has a header that describes two grids"
    with pytest.raises(ValueError, match=match):
        check_native_ready(out / "c" / "registration", 2)
    pred = tmp_path / "pred"
    (pred / "c").mkdir(parents=True)
    (pred / "c" / layout.BASELINE_MASK).write_bytes((out / "c" / layout.BASELINE_MASK).read_bytes())
    with pytest.raises(ValueError, match=match):
        predictions_to_native(pred, out, tmp_path / "native")
    assert not (tmp_path / "native").exists()


def test_options_the_cases_cannot_honour_are_refused_before_anything_is_written(tmp_path: Path) -> None:
    from longiseg.registration.cohort import RegistrationOptions, register_folder

    _write_case(tmp_path / "raw" / "c", ACQUISITIONS["lps-oblique"])
    with pytest.raises(ValueError, match=r"reference_modality 'pd' \(--reference-modality\) is not among the raw "
                                         r"baselines' modalities \['flair', 't2'\]"):
        register_folder(tmp_path / "raw", tmp_path / "out", RegistrationOptions(reference_modality="pd"),
                        progress=False)
    with pytest.raises(ValueError, match=r"min_coverage must lie in \[0, 1\]"):
        RegistrationOptions(min_coverage=1.5)
    assert not (tmp_path / "out").exists()


def test_a_failed_registration_within_a_session_fails_only_its_follow_up(tmp_path: Path,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """--register-modalities registered a follow-up's T2 to its FLAIR outside the follow-up's error handling: an
    ITK error there failed the whole case, --keep-failed or not. It fails the follow-up, whose T2 then follows
    its FLAIR (kept with --keep-failed)."""
    from longiseg.registration import cohort
    from longiseg.registration.cohort import RegistrationOptions, register_folder

    real = cohort.register_pair

    def within_session_fails(fixed, moving, *, fixed_mask=None, options=None, initial=None):  # noqa: ANN001, ANN202
        if fixed_mask is None and fixed.GetSize() != moving.GetSize():  # a follow-up's T2 to its FLAIR
            raise RuntimeError("ITK ERROR: the images do not sufficiently overlap")
        return real(fixed, moving, fixed_mask=fixed_mask, options=options, initial=initial)

    monkeypatch.setattr(cohort, "register_pair", within_session_fails)
    _write_case(tmp_path / "raw" / "c", ACQUISITIONS["lps-oblique"])
    for keep in (False, True):
        out = tmp_path / f"out-{keep}"
        opts = RegistrationOptions(register_modalities=True, keep_failed=keep, qc_figures=False)
        [res] = register_folder(tmp_path / "raw", out, opts, progress=False)
        assert not res.error and [q["status"] for q in res.followups] == ["failed"]
        assert "registration of t2 to flair within the session: ITK ERROR" in res.followups[0]["reasons"][0]
        assert res.written is keep and (out / "c" / "t1_t2.nii.gz").exists() is keep


def test_a_mask_emptied_by_resampling_fails_its_case(tmp_path: Path, capsys: pytest.CaptureFixture,
                                                     caplog: pytest.LogCaptureFixture) -> None:
    """A one-voxel progression mask resampled from the 4 mm baseline grid onto an 8 mm one (every output voxel
    centre lies half a raw voxel away along each axis: linear weight 1/8, far below 0.5) came out empty and the
    case was written as stable: manifest ``"progression": false``, exit 0, status ok, nothing logged. It fails
    now, with nothing of its images or masks written, --keep-failed or not; without --spacing it passes."""
    import logging

    from longiseg.cli import main
    from longiseg.registration.cohort import RegistrationOptions, register_folder

    raw, out = tmp_path / "raw", tmp_path / "out"
    _write_case(raw / "c", ACQUISITIONS["lps-oblique"])
    block = np.zeros(BASE_SHAPE, np.uint8)
    block[10:22, 12:24, 10:22] = 1  # 48 mm: kept on any grid below that
    _save(block, BASE_AFFINE, raw / "c" / layout.BASELINE_MASK)
    one = np.zeros(BASE_SHAPE, np.uint8)
    one[19, 22, 16] = 1  # drawn on the aligned follow-up: baseline space
    mask_path = raw / "c" / layout.progression_filename(1)
    _save(one, BASE_AFFINE, mask_path)
    args = ["register", str(raw), str(out), "--no-qc-figures", "--no-progress", "--progression-space", "baseline"]
    with caplog.at_level(logging.WARNING, logger="longiseg.registration"):
        assert main([*args, "--spacing", "8"]) == 1
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warned == [f"case 'c': mask {mask_path} has 1 voxel(s) in the raw data but none after resampling onto "
                      "the output grid; the case is not written"], warned
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("longiseg")]
    expected = (f"case 'c': mask {mask_path} (1 voxel in the raw data) is empty after resampling onto the 8x8x8 mm "
                "output grid (linear interpolation kept where >= 0.5); nothing written for this case, which would "
                "lose those lesions (a progressing case would read as stable): register it with "
                "mask_interpolation='nearest' (--mask-interpolation nearest) or a finer spacing than 8 mm (--spacing)")
    assert err == [f"longiseg register: case c failed: {expected}"], err
    with open(out / "registration.csv", encoding="utf-8", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert [(r["followup"], r["status"]) for r in rows] == [("", "failed"), ("1", "ok")]
    assert rows[0]["reasons"] == expected
    assert not (out / "manifest.json").exists()  # not listed, so not predicted or trained on as stable
    assert sorted(p.name for p in (out / "c").iterdir()) == ["registration"]  # the QC record only
    record = json.loads((out / "c" / "registration" / "registration.json").read_text(encoding="utf-8"))
    assert record["error"] == expected
    [res] = register_folder(raw, tmp_path / "kept", RegistrationOptions(spacing=8.0, keep_failed=True,
                                                                        qc_figures=False, progression_space="baseline"),
                            progress=False)
    assert res.error == expected and not res.written and not (tmp_path / "kept" / "c" / "t0_flair.nii.gz").exists()
    # on the baseline's own grid the voxel stays: the case is written as progressing
    assert main([*args, "--overwrite"]) == 0
    manifest = json.loads((out / "manifest.json").read_text(encoding="utf-8"))
    assert [(c["case_id"], c["progression"]) for c in manifest["cases"]] == [("c", True)]
    assert int(np.asarray(nib.load(out / "c" / layout.progression_filename(1)).dataobj).sum()) == 1
    # an emptied baseline mask fails its case too (its lesions would vanish; no progression lost)
    _save(block, BASE_AFFINE, mask_path)
    _save(one, BASE_AFFINE, raw / "c" / layout.BASELINE_MASK)
    opts = RegistrationOptions(spacing=8.0, qc_figures=False, progression_space="baseline")
    [res] = register_folder(raw, tmp_path / "base", opts, progress=False)
    assert res.error.startswith(f"case 'c': mask {raw / 'c' / layout.BASELINE_MASK} (1 voxel in the raw data) is "
                                "empty after resampling"), res.error
    assert "progressing" not in res.error and not res.written
