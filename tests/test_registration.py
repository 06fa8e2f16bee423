"""Registration with SimpleITK: grid bridge, round trip on a moved and resliced demo follow-up, QC failures,
predictions back in native space, and the error without the extra."""

from __future__ import annotations

import csv
import io
import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn

from longiseg.data import layout
from longiseg.networks.output import LongitudinalOutput
from longiseg.registration.grid import EXTRA_HINT, Grid, isotropic_grid, require_simpleitk
from longiseg.registration.simulate import rigid_motion, simulate_acquisition
from longiseg.spec import ModelSpec
from longiseg.utils.nifti import atomic_save_nifti
from longiseg.workflows.config import InferenceConfig

sitk = pytest.importorskip("SimpleITK")

LPS = np.diag([-1.0, -1.0, 1.0, 1.0])


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.astype(bool), b.astype(bool)
    return 2.0 * float((a & b).sum()) / max(float(a.sum() + b.sum()), 1.0)


def test_sitk_bridge_keeps_voxels_and_affine(rng: np.random.Generator) -> None:
    from longiseg.registration.grid import from_sitk, to_sitk

    rot = rigid_motion((1.0, 2.0, -0.5), 23.0, (0, 0, 0))[:3, :3]
    affine = np.eye(4)
    affine[:3, :3] = rot @ np.diag([0.9, 1.2, 3.0])
    affine[:3, 3] = (-80.0, 12.0, 40.0)
    arr = rng.standard_normal((7, 5, 4)).astype(np.float32)
    img = to_sitk(arr, affine)
    back, back_aff = from_sitk(img)
    np.testing.assert_array_equal(back, arr)
    np.testing.assert_allclose(back_aff, affine, atol=1e-9)
    # voxel (i, j, k) sits at the same scanner point (LPS in SimpleITK, RAS in nibabel)
    p = np.asarray(img.TransformIndexToPhysicalPoint((3, 2, 1)))
    np.testing.assert_allclose(LPS[:3, :3] @ p, affine[:3, :3] @ (3, 2, 1) + affine[:3, 3], atol=1e-9)


def test_isotropic_grid_keeps_the_field_of_view() -> None:
    affine = np.diag([1.0, 1.0, 3.0, 1.0])
    g = isotropic_grid(Grid((10, 12, 5), affine), 2.0)
    assert g.shape == (5, 6, 8)
    np.testing.assert_allclose(g.spacing, 2.0)
    corner_old = affine[:3, 3] - 0.5 * np.diag(affine)[:3]
    np.testing.assert_allclose(g.affine[:3, 3] - 1.0, corner_old)
    with pytest.raises(ValueError, match="spacing"):
        isotropic_grid(g, 0.0)


def test_missing_simpleitk_names_the_extra(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                           capsys: pytest.CaptureFixture) -> None:
    from longiseg.cli import main

    monkeypatch.setitem(sys.modules, "SimpleITK", None)
    with pytest.raises(ImportError, match=r"longiseg\[register\]"):
        require_simpleitk()
    assert "longiseg[register]" in EXTRA_HINT
    (tmp_path / "raw").mkdir()
    assert main(["register", str(tmp_path / "raw"), str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("longiseg register: error:") and "longiseg[register]" in err[0]


def _save(arr: np.ndarray, affine: np.ndarray, path: Path, dtype: type = np.float32) -> None:
    atomic_save_nifti(arr, affine, path, dtype=dtype)


def _write_raw_case(folder: Path, baseline, followup, motion: np.ndarray, spacing, axes, flips) -> dict:  # noqa: ANN001
    """Baseline as is; follow-up moved by ``motion`` and rescanned on another grid (images and progression)."""
    info = {}
    for c, m in enumerate(baseline.modalities):
        _save(baseline.images[0, c], baseline.affine, folder / layout.image_filename(0, m))
        arr, aff = simulate_acquisition(followup.images[1, c], followup.affine, motion, spacing, axes, flips)
        _save(arr, aff, folder / layout.image_filename(1, m))
        info[m] = (arr.shape, aff)
    _save(baseline.baseline_mask, baseline.affine, folder / layout.BASELINE_MASK, np.uint8)
    _save(baseline.brain_mask, baseline.affine, folder / layout.BRAIN_MASK, np.uint8)
    prog, aff = simulate_acquisition(followup.progression_masks[0], followup.affine, motion, spacing, axes, flips)
    _save(prog >= 0.5, aff, folder / layout.progression_filename(1), np.uint8)
    return info


def _transform_errors(tfm: Path, motion: np.ndarray, affine: np.ndarray, brain: np.ndarray) -> tuple[float, float]:
    """Largest distance (mm) between estimated and true transform over the brain's bounding-box corners,
    and the angle (deg) of the residual rotation."""
    est = sitk.ReadTransform(str(tfm))
    true = LPS @ motion @ LPS  # the motion in SimpleITK's LPS coordinates
    idx = np.argwhere(brain)
    lo, hi = idx.min(axis=0), idx.max(axis=0)
    corners = [affine @ (i, j, k, 1.0) for i in (lo[0], hi[0]) for j in (lo[1], hi[1]) for k in (lo[2], hi[2])]
    dist = max(float(np.linalg.norm(np.asarray(est.TransformPoint([float(v) for v in (LPS @ p)[:3]]))
                                    - (true @ LPS @ p)[:3])) for p in corners)
    rot = np.asarray(sitk.Euler3DTransform(est).GetMatrix()).reshape(3, 3) @ true[:3, :3].T
    angle = math.degrees(math.acos(float(np.clip((np.trace(rot) - 1) / 2, -1, 1))))
    return dist, angle


def _round_trip(tmp_path: Path, spacing_mm: int, raw_spacing, modalities) -> None:  # noqa: ANN001
    import nibabel as nib

    from longiseg.cli import main
    from longiseg.data.cohort import find_cases
    from longiseg.data.demo_cohort import DemoCohortConfig, generate_demo_case
    from longiseg.data.loading import load_case
    from longiseg.registration.grid import from_sitk, to_sitk
    from longiseg.registration.native import mask_to_native, predictions_to_native
    from longiseg.registration.pairwise import resample

    cfg = DemoCohortConfig(num_patients=2, spacing=spacing_mm, modalities=modalities, max_translation=0.0,
                           max_rotation=0.0)  # the demo follow-up is exactly aligned: the truth is `motion`
    case, stats = generate_demo_case(0, cfg, progressing=True, with_lesion_masks=True)
    brain = case.brain_mask.astype(bool)
    centre = case.affine[:3, :3] @ np.argwhere(brain).mean(axis=0) + case.affine[:3, 3]
    motion = rigid_motion((0.3, -0.5, 0.8), 9.0, (11.0, -8.0, 6.0), centre)  # 9 deg, 14.9 mm
    raw, out = tmp_path / "raw", tmp_path / "out"
    axes, flips = (1, 2, 0), (1, -1, 1)  # thick slices along the old first axis, another axis order
    _write_raw_case(raw / "p0", case, case, motion, raw_spacing, axes, flips)
    # N4: the demo's independent +-15 % bias fields bias mutual information by about 0.4 mm without it
    assert main(["register", str(raw), str(out), "--n4"]) == 0

    dist, angle = _transform_errors(out / "p0" / "registration" / "t1.tfm", motion, case.affine, brain)
    assert dist < 0.5 and angle < 0.5, (dist, angle)
    record = json.loads((out / "p0" / "registration" / "registration.json").read_text(encoding="utf-8"))
    (q,) = record["followups"]
    assert q["status"] == "ok" and q["after"]["correlation"] > q["before"]["correlation"]
    assert abs(q["motion"]["rotation_deg"] - 9.0) < 0.5
    assert (out / "p0" / "registration" / "t1_qc.png").stat().st_size > 1000

    # the registered case is in the library layout on the baseline grid and loads
    (src,) = find_cases(out)
    loaded = load_case(src)
    np.testing.assert_allclose(loaded.affine, case.affine, atol=1e-5)
    np.testing.assert_array_equal(loaded.baseline_mask, case.baseline_mask)
    # the follow-up's lesions are recovered: all its lesions (mapped with the saved transform) and the
    # progression mask written by the command
    tfm = sitk.ReadTransform(str(out / "p0" / "registration" / "t1.tfm"))
    lesions = stats["lesion_masks"][1]
    raw_les, raw_aff = simulate_acquisition(lesions, case.affine, motion, raw_spacing, axes, flips)
    raw_img = to_sitk((raw_les >= 0.5).astype(np.float32), raw_aff)
    back = from_sitk(resample(raw_img, Grid(case.shape, case.affine), tfm))[0] >= 0.5
    true = sitk.AffineTransform(3)
    true.SetMatrix([float(v) for v in (LPS @ motion @ LPS)[:3, :3].ravel()])
    true.SetTranslation([float(v) for v in (LPS @ motion @ LPS)[:3, 3]])
    ideal = from_sitk(resample(raw_img, Grid(case.shape, case.affine), true))[0] >= 0.5
    # Dice >= 0.9, or (where the thick slices of the rescan alone lose more) within 0.03 of the true transform
    dice, dice_true = _dice(back, lesions), _dice(ideal, lesions)
    assert dice >= min(0.9, dice_true - 0.03), (dice, dice_true)
    assert _dice(loaded.progression_masks[0], case.progression_masks[0]) >= 0.75

    # predictions back in native space: the registered progression mask lands on the raw follow-up grid
    raw_prog = nib.load(str(raw / "p0" / layout.progression_filename(1)))
    native, native_aff = mask_to_native(loaded.progression_masks[0], case.affine, out / "p0" / "registration", 1)
    np.testing.assert_allclose(native_aff, raw_prog.affine, atol=1e-5)
    assert native.shape == raw_prog.shape
    assert _dice(native, np.asarray(raw_prog.dataobj)) >= 0.7
    pred = tmp_path / "pred" / "p0"
    pred.mkdir(parents=True)
    for name in (layout.BASELINE_MASK, layout.progression_filename(1)):
        (pred / name).write_bytes((out / "p0" / name).read_bytes())
    files = predictions_to_native(tmp_path / "pred", out, tmp_path / "native")
    assert sorted(f.name for f in files) == [layout.BASELINE_MASK, layout.progression_filename(1)]
    base_native = nib.load(str(tmp_path / "native" / "p0" / layout.BASELINE_MASK))
    np.testing.assert_array_equal(np.asarray(base_native.dataobj), case.baseline_mask)


def test_round_trip_recovers_a_known_rigid_motion(tmp_path: Path) -> None:
    """2 mm demo follow-up moved by 9 deg / 15 mm, rescanned at 1x1x3 mm in another orientation."""
    _round_trip(tmp_path, 2, (1.0, 1.0, 3.0), ("flair",))


@pytest.mark.slow
def test_round_trip_full_size(tmp_path: Path) -> None:
    """The same at 1 mm (197x233x189 baseline) with two modalities following the FLAIR transform."""
    _round_trip(tmp_path, 1, (1.0, 1.0, 3.0), ("flair", "t2"))


def _thick_slice_pair(spacing: int = 2) -> tuple:  # noqa: ANN001
    """A demo case (one modality, follow-up aligned) and a 9 deg / 15 mm motion about its brain's centre."""
    from longiseg.data.demo_cohort import DemoCohortConfig, generate_demo_case

    cfg = DemoCohortConfig(num_patients=2, spacing=spacing, modalities=("flair",), max_translation=0.0,
                           max_rotation=0.0)
    case, _ = generate_demo_case(0, cfg, progressing=True)
    centre = case.affine[:3, :3] @ np.argwhere(case.brain_mask).mean(axis=0) + case.affine[:3, 3]
    return case, rigid_motion((0.3, -0.5, 0.8), 9.0, (11.0, -8.0, 6.0), centre), centre


def _sitk_transform(motion: np.ndarray):  # noqa: ANN202
    """A RAS world motion as SimpleITK's baseline -> follow-up transform (LPS)."""
    t = LPS @ motion @ LPS
    tx = sitk.AffineTransform(3)
    tx.SetMatrix([float(v) for v in t[:3, :3].ravel()])
    tx.SetTranslation([float(v) for v in t[:3, 3]])
    return tx


@pytest.mark.parametrize("voxel_mm", [(4.0, 4.0, 10.0), (1.0, 1.0, 7.0)])
def test_similarity_at_common_resolution_scores_alignment_not_slice_thickness(voxel_mm: tuple) -> None:
    """Under the true transform a thick-slice rescan of a 2 mm baseline correlates poorly with it on the baseline's
    grid and well at their common resolution (thin in-plane voxels too: 1x1x7 mm, smaller voxels than the
    baseline's by volume); a pose 6 degrees off stays low on both."""
    from longiseg.registration.grid import from_sitk, to_sitk
    from longiseg.registration.pairwise import (
        common_resolution_grid,
        resample,
        similarity,
        similarity_at_common_resolution,
    )

    case, motion, centre = _thick_slice_pair()
    brain = case.brain_mask.astype(bool)
    fixed = to_sitk(case.images[0, 0], case.affine)
    moving = to_sitk(*simulate_acquisition(case.images[1, 0], case.affine, motion, voxel_mm, (1, 2, 0), (1, -1, 1)))
    scores = {}
    for name, m in (("true", motion), ("off", rigid_motion((1, 0, 0), 6.0, (0, 0, 0), centre) @ motion)):
        tx = _sitk_transform(m)
        moved = from_sitk(resample(moving, fixed, tx))[0]
        scores[name] = (similarity(case.images[0, 0], moved, brain)["correlation"],
                        similarity_at_common_resolution(fixed, moving, tx, brain)["correlation"])
    assert scores["true"][0] < 0.9 < scores["true"][1], scores  # measured 0.68 / 0.99 and 0.83 / 0.97
    assert max(scores["off"]) < 0.65, scores  # measured 0.44 / 0.58 and 0.48 / 0.59
    # the grid: the follow-up's orientation, along each axis the coarser voxel size (2 mm in-plane for 1x1x7)
    spacing = common_resolution_grid(fixed, moving, _sitk_transform(motion)).GetSpacing()
    np.testing.assert_allclose(spacing, np.maximum(voxel_mm, 2.0), rtol=1e-6)
    tx = _sitk_transform(motion)
    for bad, error, match in ((None, TypeError, "mask must be a bool numpy array"),
                              (brain.astype(np.uint8), TypeError, "mask must be a bool array"),
                              (brain[:, :, :-1], ValueError, "mask must have fixed's shape")):
        with pytest.raises(error, match=match):
            similarity_at_common_resolution(fixed, moving, tx, bad)
    with pytest.raises(TypeError, match="transform must be a SimpleITK transform"):
        similarity_at_common_resolution(fixed, moving, None, brain)


def test_coarse_aligned_followup_passes_the_quality_check(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """A 4x4x10 mm follow-up of a 2 mm baseline, registered within a fraction of its slice thickness, passes
    (it failed the 0.7 correlation check against the full-resolution baseline); another patient's does not."""
    from longiseg.cli import main
    from longiseg.data.demo_cohort import DemoCohortConfig, generate_demo_case

    case, motion, _ = _thick_slice_pair()
    other, _ = generate_demo_case(1, DemoCohortConfig(num_patients=2, spacing=2, modalities=("flair",),
                                                      max_translation=0.0, max_rotation=0.0))
    raw, out = tmp_path / "raw", tmp_path / "out"
    _write_raw_case(raw / "p0", case, case, motion, (4.0, 4.0, 10.0), (1, 2, 0), (1, -1, 1))
    _write_raw_case(raw / "other", case, other, motion, (4.0, 4.0, 10.0), (1, 2, 0), (1, -1, 1))
    assert main(["register", str(raw), str(out), "--n4", "--no-qc-figures", "--no-progress"]) == 1
    captured = capsys.readouterr()
    assert "at 4x4x10 mm)" in captured.out and "p0 t1" in captured.out
    assert "case other follow-up 1 failed: correlation after registration" in captured.err  # measured 0.35
    dist, _ = _transform_errors(out / "p0" / "registration" / "t1.tfm", motion, case.affine,
                                case.brain_mask.astype(bool))
    assert dist < 5.0, dist  # measured 2.4 mm: a quarter of a slice
    (q,) = json.loads((out / "p0" / "registration" / "registration.json").read_text(encoding="utf-8"))["followups"]
    assert q["status"] == "ok" and q["after"]["correlation"] < 0.7 < q["checked"]["correlation"]
    assert q["checked_voxel_mm"] == [4.0, 4.0, 10.0]
    rows = {r["case_id"]: r for r in csv.DictReader(io.StringIO((out / "registration.csv").read_text(encoding="utf-8")))}
    assert rows["p0"]["checked_voxel_mm"] == "4x4x10" and float(rows["p0"]["correlation_checked"]) > 0.9


def test_another_patient_as_followup_is_flagged(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from longiseg.cli import main
    from longiseg.data.demo_cohort import DemoCohortConfig, generate_demo_case

    cfg = DemoCohortConfig(num_patients=2, spacing=4, modalities=("flair",), max_translation=0.0, max_rotation=0.0)
    a, _ = generate_demo_case(0, cfg)
    b, _ = generate_demo_case(1, cfg)
    raw, out = tmp_path / "raw", tmp_path / "out"
    still = np.eye(4)
    _write_raw_case(raw / "mixed", a, b, still, (4.0, 4.0, 4.0), (0, 1, 2), (1, 1, 1))
    _write_raw_case(raw / "same", a, a, rigid_motion((0, 0, 1), 4.0, (3.0, 2.0, 0.0)), (4.0, 4.0, 4.0),
                    (0, 1, 2), (1, 1, 1))
    assert main(["register", str(raw), str(out), "--no-qc-figures"]) == 1
    err = capsys.readouterr().err
    assert "case mixed follow-up 1 failed: correlation after registration" in err and "same" not in err
    assert not (out / "mixed" / layout.image_filename(0, "flair")).exists()  # never silently passed on
    assert (out / "same" / layout.image_filename(1, "flair")).is_file()
    manifest = json.loads((out / "manifest.json").read_text(encoding="utf-8"))
    assert [c["case_id"] for c in manifest["cases"]] == ["same"]
    rows = (out / "registration.csv").read_text(encoding="utf-8").splitlines()
    assert any(r.startswith("mixed,1,failed") for r in rows) and any(r.startswith("same,1,ok") for r in rows)
    assert sorted(p.name for p in (out / "mixed").rglob("*")) == ["registration", "registration.json", "t1.tfm"]
    # --keep-failed: the failed case's images too, still reported (case folders written whole either way)
    assert main(["register", str(raw), str(tmp_path / "kept"), "--no-qc-figures", "--keep-failed"]) == 1
    captured = capsys.readouterr()
    assert "case mixed follow-up 1 failed" in captured.err
    # the summary said "written unregistered", but a follow-up that failed the quality check keeps its transform
    assert "unregistered" not in captured.out and "failed the quality check with its transform" in captured.out
    assert (tmp_path / "kept" / "mixed" / layout.image_filename(1, "flair")).is_file()
    kept = json.loads((tmp_path / "kept" / "manifest.json").read_text(encoding="utf-8"))
    assert [c["case_id"] for c in kept["cases"]] == ["mixed", "same"]


def test_implausible_motion_is_flagged(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    from longiseg.data.demo_cohort import DemoCohortConfig, generate_demo_case
    from longiseg.registration.cohort import RegistrationOptions, register_case

    cfg = DemoCohortConfig(num_patients=1, spacing=4, modalities=("flair",), max_translation=0.0, max_rotation=0.0)
    a, _ = generate_demo_case(0, cfg)
    _write_raw_case(tmp_path / "raw" / "c", a, a, rigid_motion((0, 0, 1), 6.0, (12.0, 0.0, 0.0)),
                    (4.0, 4.0, 4.0), (0, 1, 2), (1, 1, 1))
    with caplog.at_level("INFO", logger="longiseg"):
        res = register_case(tmp_path / "raw" / "c", tmp_path / "out",
                            RegistrationOptions(max_translation_mm=5.0, max_rotation_deg=3.0, qc_figures=False))
    assert not res.ok and not res.written
    # a minute per follow-up at clinical sizes under a bar that counts cases: each follow-up is said as it starts
    assert "case c: registering follow-up 1 of 1 to the baseline (flair)" in caplog.text
    reasons = " ".join(res.followups[0]["reasons"])
    assert "mm > 5.0 mm" in reasons and "deg > 3.0 deg" in reasons
    with pytest.raises(ValueError, match="mask_interpolation"):
        RegistrationOptions(mask_interpolation="cubic")


def test_progression_masks_in_baseline_space_are_not_moved(tmp_path: Path) -> None:
    """``--progression-space baseline``: the follow-up images move, its progression mask (drawn in baseline
    space) is written unchanged on the baseline grid; by default the same mask follows the follow-up."""
    from longiseg.cli import main
    from longiseg.data.cohort import find_cases
    from longiseg.data.demo_cohort import DemoCohortConfig, generate_demo_case
    from longiseg.data.loading import load_case

    cfg = DemoCohortConfig(num_patients=2, spacing=4, modalities=("flair",), max_translation=0.0, max_rotation=0.0)
    a, _ = generate_demo_case(0, cfg, progressing=True)
    assert a.progression_masks.any()
    raw = tmp_path / "raw"
    _write_raw_case(raw / "c", a, a, rigid_motion((0, 0, 1), 4.0, (6.0, -4.0, 0.0)), (4.0, 4.0, 4.0),
                    (0, 1, 2), (1, 1, 1))
    atomic_save_nifti(a.progression_masks[0], a.affine, raw / "c" / layout.progression_filename(1),  # baseline space
                      dtype=np.uint8, overwrite=True)
    for space, out in (("baseline", tmp_path / "base"), ("followup", tmp_path / "fu")):
        assert main(["register", str(raw), str(out), "--no-qc-figures", "--progression-space", space]) == 0
    kept = load_case(find_cases(tmp_path / "base")[0])
    np.testing.assert_array_equal(kept.progression_masks[0], a.progression_masks[0])
    np.testing.assert_array_equal(kept.baseline_mask, a.baseline_mask)
    moved = load_case(find_cases(tmp_path / "fu")[0])
    assert _dice(moved.progression_masks[0], a.progression_masks[0]) < 0.9  # the 4 degree / 7 mm motion applied
    with pytest.raises(ValueError, match="progression_space must be 'followup' or 'baseline'"):
        from longiseg.registration.cohort import RegistrationOptions

        RegistrationOptions(progression_space="native")


def test_affine_isotropic_and_modalities_registered_on_their_own(tmp_path: Path) -> None:
    from longiseg.data.cohort import find_cases
    from longiseg.data.demo_cohort import DemoCohortConfig, generate_demo_case
    from longiseg.data.loading import load_case
    from longiseg.registration.cohort import RegistrationOptions, register_folder
    from longiseg.registration.pairwise import PairOptions

    cfg = DemoCohortConfig(num_patients=1, spacing=4, max_translation=0.0, max_rotation=0.0)
    a, _ = generate_demo_case(0, cfg)
    _write_raw_case(tmp_path / "raw" / "c", a, a, rigid_motion((1, 0, 1), 5.0, (4.0, -3.0, 2.0)),
                    (3.0, 3.0, 5.0), (2, 0, 1), (-1, 1, 1))
    opts = RegistrationOptions(pair=PairOptions(transform="affine"), spacing=3.0,
                               register_modalities=True, interpolation="bspline", qc_figures=False)
    (res,) = register_folder(tmp_path / "raw", tmp_path / "out", opts, progress=False)
    assert res.ok and res.written, res.followups
    reg = tmp_path / "out" / "c" / "registration"
    assert (reg / "t1.tfm").is_file() and (reg / "t1_t2.tfm").is_file() and (reg / "t0_t2.tfm").is_file()
    assert sitk.ReadTransform(str(reg / "t1.tfm")).GetName() == "AffineTransform"
    case = load_case(find_cases(tmp_path / "out")[0])
    np.testing.assert_allclose(case.spacing, 3.0)
    assert case.images.min() >= 0.0  # B-spline clamped to the input range


def test_n4_flattens_a_bias_field() -> None:
    from longiseg.registration.grid import from_sitk, to_sitk
    from longiseg.registration.pairwise import n4_correct

    x = np.indices((40, 40, 40), dtype=np.float32)
    head = ((x - 19.5) ** 2).sum(axis=0) < 18.0**2
    bias = np.exp(0.3 * (x[0] - 19.5) / 19.5)  # +-35 % across the head
    img = np.where(head, 100.0 * bias, 0.0).astype(np.float32)
    out = from_sitk(n4_correct(to_sitk(img, np.eye(4))))[0]

    def cv(a: np.ndarray) -> float:
        return float(a[head].std() / a[head].mean())

    assert cv(out) < 0.5 * cv(img)


@pytest.mark.parametrize("args, match", [
    (["{t}/nope", "{t}/out"], r"raw folder .*nope does not exist"),
    (["{t}/raw", "{t}/out", "--spacing", "-1"], r"spacing must be > 0"),
    (["{t}/raw", "{t}/out", "--spacing", "inf"], r"--spacing must be > 0 mm and finite, got inf"),
    (["{t}/raw", "{t}/out", "--spacing", "nan"], r"--spacing must be > 0 mm and finite, got nan"),
    # 4 mm field of view at 0.001 mm: 4000^3 voxels, refused from the header before any case is registered
    (["{t}/raw", "{t}/out", "--spacing", "0.001"], r"case 'c': baseline \S+t0_flair.nii.gz: spacing 0.001 mm gives "
                                                    r"an output grid of 4000 x 4000 x 4000 = 6.4e\+10 voxels .* "
                                                    r"more than the limit of 268435456"),
    # 1e-5 mm: the grid's affine was refused as singular ("affine must be a non-singular (4, 4) matrix")
    (["{t}/raw", "{t}/out", "--spacing", "1e-5"], r"spacing 1e-05 mm gives an output grid of 400000 x 400000 x 400000 "
                                                   r"= 6.4e\+16 voxels .* more than the limit of 268435456"),
    (["{t}/raw", "{t}/out", "--spacing", "1e-308"], r"spacing 1e-308 mm gives an output grid of inf x inf x inf = inf "
                                                     r"voxels"),  # was OverflowError: cannot convert float infinity
    # a spacing not below the 4 mm field of view: 1 x 1 x 1 voxels, every lesion gone, and "status ok"
    (["{t}/raw", "{t}/out", "--spacing", "1e6"], r"case 'c': baseline \S+t0_flair.nii.gz: spacing 1e\+06 mm gives an "
                                                  r"output grid of 1 x 1 x 1 voxels over its 4 x 4 x 4 mm field of "
                                                  r"view: fewer than 2 voxels along axes 0, 1, 2, where the baseline "
                                                  r"has 4, 4, 4 .*; choose a spacing \(--spacing\) below 4 mm"),
    (["{t}/raw", "{t}/out", "--spacing", "4"], r"spacing 4 mm gives an output grid of 1 x 1 x 1 voxels .* below 4 mm"),
    (["{t}/raw", "{t}/out", "--min-correlation", "2"], r"--min-correlation must lie in \[-1, 1\]"),
    (["{t}/raw", "{t}/out", "--max-translation", "0"], r"--max-translation must be > 0, got 0.0"),  # the option
    (["{t}/raw", "{t}/out", "--min-coverage", "-1"], r"--min-coverage must lie in \[0, 1\]"),  # named as typed
    (["{t}/raw", "{t}/busy"], r"busy exists and is not empty"),
    (["{t}/raw", "{t}/file/out"], r"out \S+file/out: \S+file is not a folder"),
    (["{t}/raw", "{t}/file"], r"out \S+file exists and is not a folder"),
    (["{t}/raw", "{t}/raw/out", "--overwrite"], r"out \S+raw/out lies inside the raw folder"),
    (["{t}/raw", "{t}/raw", "--overwrite"], r"out \S+raw is the raw folder"),
])
def test_register_command_rejects_bad_arguments(args: list[str], match: str, tmp_path: Path,
                                                capsys: pytest.CaptureFixture) -> None:
    """Bad options and output locations: one line, exit 2, before any work, nothing written."""
    import re

    from longiseg.cli import main

    (tmp_path / "raw" / "c").mkdir(parents=True)
    _save(np.ones((4, 4, 4), np.float32), np.eye(4), tmp_path / "raw" / "c" / "t0_flair.nii.gz")
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "keep.txt").write_text("x")
    (tmp_path / "file").write_text("x")
    before = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    assert main(["register"] + [a.format(t=tmp_path) for a in args]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("longiseg register: error: ") and re.search(match, err[0]), err
    assert not (tmp_path / "out").exists()
    assert {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()} == before  # nothing written or lost
    assert sorted(p.name for p in tmp_path.rglob("*") if p.is_dir()) == ["busy", "c", "raw"]


def test_register_folder_checks_the_output_location_first(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The library function too: an output under a file, a read-only one, or QC figures without matplotlib are
    refused before any case is read (``register_case`` is never called)."""
    import os

    from longiseg.registration import cohort

    (tmp_path / "raw" / "c").mkdir(parents=True)
    _save(np.ones((4, 4, 4), np.float32), np.eye(4), tmp_path / "raw" / "c" / "t0_flair.nii.gz")
    (tmp_path / "file").write_text("x")

    def never(*args: object, **kwargs: object) -> None:
        raise AssertionError("a case was registered before the output location was checked")

    monkeypatch.setattr(cohort, "register_case", never)
    with pytest.raises(NotADirectoryError, match=r"out \S+file/out: \S+file is not a folder"):
        cohort.register_folder(tmp_path / "raw", tmp_path / "file" / "out", progress=False)
    with pytest.raises(ValueError, match=r"out \S+raw/c/out lies inside the raw folder"):
        cohort.register_folder(tmp_path / "raw", tmp_path / "raw" / "c" / "out", progress=False)
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    with pytest.raises(ImportError, match=r"matplotlib is needed for the registration QC figures.*--no-qc-figures"):
        cohort.register_folder(tmp_path / "raw", tmp_path / "out", progress=False)
    assert not (tmp_path / "out").exists() and not (tmp_path / "raw" / "c" / "out").exists()
    # --overwrite over an earlier case folder that cannot be replaced (read-only): every case failed after its
    # registration with a bare [Errno 13], and the manifest was removed
    (tmp_path / "out" / "c").mkdir(parents=True)
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda path, mode, **kw: not (mode & os.W_OK and Path(path) == tmp_path / "out"
                                                                    / "c") and real_access(path, mode, **kw))
    with pytest.raises(PermissionError, match=r"cannot replace \S+out/c: \S+out/c is not writable; nothing was deleted"):
        cohort.register_folder(tmp_path / "raw", tmp_path / "out", overwrite=True, progress=False)
    monkeypatch.setattr(os, "access", real_access)
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["c"]
    if os.geteuid() != 0:  # root writes anywhere
        (tmp_path / "locked").mkdir(mode=0o555)
        with pytest.raises(PermissionError, match=r"out \S+locked/out: \S+locked is not writable"):
            cohort.register_folder(tmp_path / "raw", tmp_path / "locked" / "out", progress=False)


def test_a_spacing_coarser_than_a_baselines_field_of_view_is_refused_before_any_case(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``--spacing 1e6`` wrote 1 x 1 x 1-voxel cases (status ok). The rule is per axis of more than one voxel, so
    a thin slab (3 slices of 5 mm) takes any spacing below its 15 mm and a single slice stays one voxel thick."""
    import nibabel as nib

    from longiseg.registration import cohort

    raw = tmp_path / "raw"
    slab = np.diag([1.0, 1.0, 5.0, 1.0])
    _save(np.ones((40, 40, 3), np.float32), slab, raw / "slab" / "t0_flair.nii.gz")
    _save(np.ones((40, 40, 1), np.float32), slab, raw / "single" / "t0_flair.nii.gz")
    called: list[str] = []
    monkeypatch.setattr(cohort, "register_case", lambda c, o, *a, **k: called.append(c.name)
                        or cohort.CaseRegistration(c.name))
    for spacing, shapes in ((10.0, {"slab": (4, 4, 2), "single": (4, 4, 1)}), (2.5, {"slab": (16, 16, 6)})):
        opts = cohort.RegistrationOptions(spacing=spacing, qc_figures=False)
        cohort.register_folder(raw, tmp_path / f"out-{spacing:g}", opts, progress=False)
        for name, shape in shapes.items():  # the grids register_case gets
            img = nib.load(raw / name / "t0_flair.nii.gz")
            assert cohort._output_grid(Grid(img.shape, img.affine), spacing, name).shape == shape
    assert called == ["single", "slab"] * 2
    called.clear()
    with pytest.raises(ValueError, match=r"case 'slab': baseline \S+t0_flair.nii.gz: spacing 15 mm gives an output grid "
                                         r"of 3 x 3 x 1 voxels over its 40 x 40 x 15 mm field of view: fewer than 2 "
                                         r"voxels along axis 2, where the baseline has 3 .*; choose a spacing "
                                         r"\(--spacing\) below 15 mm"):
        cohort.register_folder(raw, tmp_path / "out-15", cohort.RegistrationOptions(spacing=15.0, qc_figures=False),
                               progress=False)
    assert called == [] and not (tmp_path / "out-15").exists()


@pytest.mark.parametrize("name", ["bad ", "x" * 160])
def test_a_case_folder_that_is_no_case_id_is_refused_before_any_case(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                     name: str) -> None:
    """A raw case folder named 'bad ' (or of 160 characters) was registered and written with the others, and the
    run failed only at the manifest, leaving a folder that predict refuses and a re-run needs --overwrite for."""
    from longiseg.registration import cohort

    raw = tmp_path / "raw"
    for case in ("ok", name):
        _save(np.ones((8, 8, 8), np.float32), np.eye(4), raw / case / "t0_flair.nii.gz")
    called: list[str] = []
    monkeypatch.setattr(cohort, "register_case", lambda c, o, *a, **k: called.append(c.name)
                        or cohort.CaseRegistration(c.name))
    with pytest.raises(ValueError, match=r"case folder \S+raw/x* ?"):
        cohort.register_folder(raw, tmp_path / "out", cohort.RegistrationOptions(qc_figures=False), progress=False)
    assert called == [] and not (tmp_path / "out").exists()
    # a side folder of such a name without images is not a case: reported as failed, as before
    (raw / name / "t0_flair.nii.gz").rename(raw / name / "notes.nii.gz")
    cohort.register_folder(raw, tmp_path / "out", cohort.RegistrationOptions(qc_figures=False), progress=False)
    assert called == sorted(["ok", name])


def test_register_folder_refuses_a_folder_another_register_writes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                  live_pid: int) -> None:
    """Two register --overwrite runs (3 mm and 5 mm) into one folder both succeeded: one case of each spacing, and
    registration.json recording one of them. The folder is held while a run registers its cases."""
    import json
    import re
    import socket

    from longiseg.data.claims import FOLDER_CLAIM
    from longiseg.registration import cohort

    (tmp_path / "raw" / "c").mkdir(parents=True)
    _save(np.ones((4, 4, 4), np.float32), np.eye(4), tmp_path / "raw" / "c" / "t0_flair.nii.gz")
    out = tmp_path / "out"
    out.mkdir()
    (out / FOLDER_CLAIM).write_text(json.dumps({"host": socket.gethostname(), "pid": live_pid,
                                                "command": "longiseg register"}))

    def never(*args: object, **kwargs: object) -> None:
        raise AssertionError("a case was registered into a folder another run holds")

    monkeypatch.setattr(cohort, "register_case", never)
    with pytest.raises(FileExistsError, match=rf"{re.escape(str(out))} is being written by another longiseg register "
                                              rf"\(pid {live_pid} "):
        cohort.register_folder(tmp_path / "raw", out, cohort.RegistrationOptions(qc_figures=False), overwrite=True,
                               progress=False)
    assert [p.name for p in out.iterdir()] == [FOLDER_CLAIM]
    (out / FOLDER_CLAIM).unlink()
    held = []
    monkeypatch.setattr(cohort, "register_case", lambda c, o, *a, **k: held.append((o / FOLDER_CLAIM).is_file())
                        or cohort.CaseRegistration(c.name))
    cohort.register_folder(tmp_path / "raw", out, cohort.RegistrationOptions(qc_figures=False), overwrite=True,
                               progress=False)
    assert held == [True] and not (out / FOLDER_CLAIM).exists()


def test_register_folder_takes_over_the_claim_of_a_killed_register(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                    live_pid: int) -> None:
    """A register killed (SIGKILL, out of memory) in a new folder left only its claim there: every later register
    without --overwrite was told the folder is not empty and to pass --overwrite. The abandoned claim is taken
    over; a live holder is named instead of the --overwrite advice."""
    import socket
    import subprocess

    from longiseg.data.claims import FOLDER_CLAIM
    from longiseg.registration import cohort

    (tmp_path / "raw" / "c").mkdir(parents=True)
    _save(np.ones((4, 4, 4), np.float32), np.eye(4), tmp_path / "raw" / "c" / "t0_flair.nii.gz")
    out = tmp_path / "out"
    out.mkdir()
    dead = int(subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                              text=True, check=True).stdout)
    (out / "c").mkdir()  # a live register's finished case: it is named, not "pass --overwrite"
    (out / FOLDER_CLAIM).write_text(json.dumps({"host": socket.gethostname(), "pid": live_pid,
                                                "command": "longiseg register"}))
    with pytest.raises(FileExistsError, match=r"being written by another longiseg register \(pid"):
        cohort.register_folder(tmp_path / "raw", out, cohort.RegistrationOptions(qc_figures=False), progress=False)
    (out / "c").rmdir()
    (out / FOLDER_CLAIM).write_text(json.dumps({"host": socket.gethostname(), "pid": dead,
                                                "command": "longiseg register"}))
    registered: list[str] = []
    monkeypatch.setattr(cohort, "register_case", lambda c, o, *a, **k: registered.append(c.name)
                        or cohort.CaseRegistration(c.name))
    cohort.register_folder(tmp_path / "raw", out, cohort.RegistrationOptions(qc_figures=False), progress=False)
    assert registered == ["c"] and not (out / FOLDER_CLAIM).exists()
    # out now holds that run's outputs: a second register without --overwrite is refused
    with pytest.raises(FileExistsError, match="not empty"):
        cohort.register_folder(tmp_path / "raw", out, cohort.RegistrationOptions(qc_figures=False), progress=False)


def test_unreadable_case_is_reported_and_the_others_go_on(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from longiseg.cli import main

    raw = tmp_path / "raw"
    (raw / "only-baseline").mkdir(parents=True)
    _save(np.ones((4, 4, 4), np.float32), np.eye(4), raw / "only-baseline" / "t0_flair.nii.gz")
    (raw / "nan").mkdir()
    for t in (0, 1):
        _save(np.full((4, 4, 4), np.nan, np.float32), np.eye(4), raw / "nan" / f"t{t}_flair.nii.gz")
    assert main(["register", str(raw), str(tmp_path / "out"), "--no-qc-figures"]) == 1
    err = capsys.readouterr().err
    assert "case only-baseline failed: case 'only-baseline': needs images t0_*, t1_*" in err
    assert "case nan failed:" in err and "NaN" in err
    assert not (tmp_path / "out" / "manifest.json").exists()
    assert "failed" in (tmp_path / "out" / "registration.csv").read_text(encoding="utf-8")


def _demo_pair(spacing_mm: int = 4):  # noqa: ANN202
    """A 4 mm demo case (49 x 58 x 47, FLAIR only) and its follow-up moved by 5 degrees / 5 mm and rescanned on
    a 3 x 3 x 5 mm grid in another orientation (the setting of the affine test)."""
    from longiseg.data.demo_cohort import DemoCohortConfig, generate_demo_case

    cfg = DemoCohortConfig(num_patients=1, spacing=spacing_mm, modalities=("flair",), max_translation=0.0,
                           max_rotation=0.0)
    case, _ = generate_demo_case(0, cfg)
    return case, rigid_motion((1, 0, 1), 5.0, (4.0, -3.0, 2.0)), ((3.0, 3.0, 5.0), (2, 0, 1), (-1, 1, 1))


def test_registration_is_reproducible(tmp_path: Path) -> None:
    """Same pair, same seed: the same transform bit for bit, also with 1 or 4 ITK threads (the default seed 0
    reaches SimpleITK as 1, whose 0 would seed from the clock; the metric is summed in one work unit);
    ``register_case`` twice: the same files. (Without the fix, every run differed: clock seeds.)"""
    import nibabel as nib

    from longiseg.registration.cohort import RegistrationOptions, register_case
    from longiseg.registration.grid import to_sitk
    from longiseg.registration.pairwise import MAX_SEED, PairOptions, register_pair

    case, motion, rescan = _demo_pair()
    fixed = to_sitk(case.images[0, 0], case.affine)
    moving = to_sitk(*simulate_acquisition(case.images[1, 0], case.affine, motion, *rescan))
    threads = sitk.ProcessObject.GetGlobalDefaultNumberOfThreads()
    params = []
    try:
        for n in (threads, threads, 1, 4):
            sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(n)
            tx, _ = register_pair(fixed, moving)
            params.append(np.asarray(tx.GetParameters() + tx.GetFixedParameters(), dtype=np.float64))
    finally:
        sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(threads)
    for p in params[1:]:
        assert p.tobytes() == params[0].tobytes(), np.abs(p - params[0]).max()
    other, _ = register_pair(fixed, moving, options=PairOptions(seed=1))
    assert np.asarray(other.GetParameters()).tobytes() != params[0][:6].tobytes()  # the seed is used

    # the public per-case function: identical transforms, QC numbers and images
    raw = tmp_path / "raw" / "c"
    _write_raw_case(raw, case, case, motion, *rescan)
    atomic_save_nifti(case.baseline_mask, case.affine, raw / layout.BASELINE_MASK, dtype=np.float32,
                      overwrite=True)  # a float 0/1 mask is binary too
    opts = RegistrationOptions(qc_figures=False)
    runs = [register_case(raw, tmp_path / out, opts) for out in ("out1", "out2")]
    assert all(r.ok and r.written for r in runs), [r.followups for r in runs]
    reg1, reg2 = (tmp_path / out / "c" for out in ("out1", "out2"))
    assert (reg1 / "registration" / "t1.tfm").read_bytes() == (reg2 / "registration" / "t1.tfm").read_bytes()
    records = [json.loads((d / "registration" / "registration.json").read_text(encoding="utf-8")) for d in (reg1, reg2)]
    for rec in records:
        for q in rec["followups"]:
            q.pop("seconds")
    assert records[0] == records[1]
    names = sorted(f.name for f in reg1.glob("*.nii.gz"))
    assert names == sorted(f.name for f in reg2.glob("*.nii.gz")) and layout.BASELINE_MASK in names
    for name in names:
        a, b = (np.asarray(nib.load(d / name).dataobj) for d in (reg1, reg2))
        assert a.dtype == b.dtype and a.tobytes() == b.tobytes(), name
    np.testing.assert_array_equal(np.asarray(nib.load(reg1 / layout.BASELINE_MASK).dataobj), case.baseline_mask)

    with pytest.raises(ValueError, match=r"seed must be an int in \[0, 4294967294\], got -1"):
        PairOptions(seed=-1)
    with pytest.raises(ValueError, match=rf"seed must be an int in \[0, {MAX_SEED}\]"):
        PairOptions(seed=2**32 - 1)
    with pytest.raises(TypeError, match="seed must be an int, got float"):
        PairOptions(seed=1.5)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="min_samples must be >= 0"):
        PairOptions(min_samples=-1)
    with pytest.raises(TypeError, match="spacing must be a number of mm or None, got str"):
        RegistrationOptions(spacing="2")  # type: ignore[arg-type]


@pytest.mark.parametrize("name, values, dtype, match", [
    # a soft mask is refused, not binarised with > 0 (which turned 123 lesion voxels into 1575)
    (layout.BASELINE_MASK, (0.0, 0.25, 0.75, 1.0), np.float32, r"found values such as \[0.25, 0.75\]"),
    # a label map of changes (-1 gone, 2 new) is not a progression mask
    (layout.progression_filename(1), (-1, 0, 2), np.int16, r"found values such as \[-1, 2\]"),
    (layout.BRAIN_MASK, (0,), np.uint8, r"the brain mask \S+brain_mask.nii.gz covers fewer than 2 voxels"),
])
def test_masks_that_are_not_binary_fail_the_case_before_anything_is_written(
        name: str, values: tuple, dtype: type, match: str, tmp_path: Path, rng: np.random.Generator,
        capsys: pytest.CaptureFixture) -> None:
    import re

    from longiseg.cli import main

    raw, out = tmp_path / "raw", tmp_path / "out"
    for t in (0, 1):
        _save(rng.random((16, 16, 16), dtype=np.float32), np.eye(4), raw / "c" / layout.image_filename(t, "flair"))
    mask = np.asarray(values, dtype=dtype)[rng.integers(0, len(values), (16, 16, 16))]
    _save(mask, np.eye(4), raw / "c" / name, dtype)
    assert main(["register", str(raw), str(out), "--no-qc-figures"]) == 1
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("longiseg")]  # no tqdm
    assert len(err) == 1 and err[0].startswith("longiseg register: case c failed: case 'c': "), err
    if name != layout.BRAIN_MASK:
        assert f"mask {raw / 'c' / name} must be binary (values 0/1)" in err[0], err
    assert re.search(match, err[0]), err
    assert not (out / "c").exists() and not list(out.glob(".c.*"))  # nothing of the case was written
    assert (out / "registration.csv").read_text(encoding="utf-8").splitlines()[1].startswith("c,,failed,")


def test_an_unexpected_error_fails_its_case_without_a_partial_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                     capsys: pytest.CaptureFixture) -> None:
    """An error outside the checked ones (here memory, while case a's images are written after its transform
    and QC record): case a is reported as failed and leaves no folder, not even its temporary; case b goes on."""
    from longiseg.cli import main
    from longiseg.registration import cohort

    case, motion, rescan = _demo_pair()
    raw, out = tmp_path / "raw", tmp_path / "out"
    for c in ("a", "b"):
        _write_raw_case(raw / c, case, case, motion, *rescan)
    save = cohort.atomic_save_nifti

    def out_of_memory(array: np.ndarray, affine: np.ndarray, path: Path, **kwargs: object) -> Path:
        if Path(path).parent.name.startswith(".a.") and Path(path).name == layout.image_filename(1, "flair"):
            assert (Path(path).parent / "registration" / "t1.tfm").is_file()  # half of the case is there
            raise MemoryError("Unable to allocate 1.23 TiB for an array")
        return save(array, affine, path, **kwargs)

    monkeypatch.setattr(cohort, "atomic_save_nifti", out_of_memory)
    assert main(["register", str(raw), str(out), "--no-qc-figures"]) == 1
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("longiseg")]  # no tqdm
    assert err == ["longiseg register: case a failed: error while registering (MemoryError: Unable to allocate "
                   "1.23 TiB for an array); nothing written for this case"], err
    assert sorted(p.name for p in out.iterdir()) == ["b", "manifest.json", "registration.csv", "registration.json"]
    assert (out / "b" / layout.image_filename(1, "flair")).is_file()
    assert [c["case_id"] for c in json.loads((out / "manifest.json").read_text(encoding="utf-8"))["cases"]] == ["b"]
    rows = (out / "registration.csv").read_text(encoding="utf-8").splitlines()
    assert any(r.startswith("a,,failed,error while registering (MemoryError") for r in rows)
    assert any(r.startswith("b,1,ok") for r in rows)


class _Voxelwise(nn.Module):
    """A model without weights for ``run_prediction``: baseline logit ``8 * t0 - 4``, progression ``8 * t1 - 4``."""

    def __init__(self) -> None:
        super().__init__()
        # the lesion is in both scans: keep the progression head's mask (not cut by the baseline) to map it
        self.spec = ModelSpec(name="voxelwise", dim="2.5D", in_channels=1, inference=InferenceConfig(
            patch_size=16, planes=["axial"], min_lesion_mm3=0.0, restrict="none",
            progression_outside_baseline=False).to_dict())

    def forward(self, x: torch.Tensor) -> LongitudinalOutput:
        return LongitudinalOutput(8 * x[:, 0, :1] - 4, (8 * x[:, 1:, 0] - 4)[:, :, None])


def _registered_case(root: Path) -> dict:
    """A registered 12^3 case on a 2 mm grid with a hand-made ``registration/`` record: the baseline's native
    grid is the registered one, follow-up 1 was scanned on a 2 x 2 x 4 mm grid of 12 x 12 x 6 voxels with the
    head 4 mm further along x (so native voxel ``v`` shows registered voxel ``(v0 - 2, v1, 2 v2)``: exact)."""
    case = root / "c"
    reg_affine = np.diag([2.0, 2.0, 2.0, 1.0])
    native_affine = np.diag([2.0, 2.0, 4.0, 1.0])
    img = np.zeros((12, 12, 12), np.float32)
    img[2:10, 2:10, 2:10] = 1.0  # brain
    img[5:8, 4:7, 4:9] = 4.0     # a bright lesion in both scans: both masks find it
    for t in (0, 1):
        _save(img, reg_affine, case / layout.image_filename(t, "flair"))
    grids = {"t0_flair": Grid((12, 12, 12), reg_affine).to_dict(),
             "t1_flair": Grid((12, 12, 6), native_affine).to_dict()}
    record = {"options": {"reference_modality": "flair"}, "native_grids": grids, "followups": []}
    (case / "registration").mkdir()
    (case / "registration" / "registration.json").write_text(json.dumps(record))
    shift = sitk.Euler3DTransform()
    shift.SetTranslation((-4.0, 0.0, 0.0))  # baseline -> follow-up scanner space in LPS: +4 mm along RAS x
    sitk.WriteTransform(shift, str(case / "registration" / "t1.tfm"))
    return {"shape": (12, 12, 6), "affine": native_affine}


def test_predict_writes_masks_on_the_original_grids(tmp_path: Path) -> None:
    import nibabel as nib

    from longiseg.workflows.predict import run_prediction

    native = _registered_case(tmp_path / "registered")
    pred = tmp_path / "pred"
    run_prediction(_Voxelwise(), tmp_path / "registered", pred, device="cpu", progress=False,
                   registered_dir=tmp_path / "registered")
    prog = np.asarray(nib.load(pred / "c" / layout.progression_filename(1)).dataobj)
    assert prog.sum() > 0
    out = nib.load(pred / "c" / "native" / layout.progression_filename(1))
    assert out.shape == native["shape"]
    np.testing.assert_allclose(out.affine, native["affine"], atol=1e-6)
    v = np.indices(native["shape"]).reshape(3, -1)
    src = np.stack([v[0] - 2, v[1], 2 * v[2]])
    inside = (src >= 0).all(axis=0) & (src < 12).all(axis=0)
    expected = np.zeros(v.shape[1], np.uint8)
    expected[inside] = prog[tuple(src[:, inside])]
    np.testing.assert_array_equal(np.asarray(out.dataobj).reshape(-1), expected)
    base = nib.load(pred / "c" / "native" / layout.BASELINE_MASK)  # the baseline: same session, same grid
    np.testing.assert_array_equal(np.asarray(base.dataobj),
                                  np.asarray(nib.load(pred / "c" / layout.BASELINE_MASK).dataobj))
    # --skip-existing fills in a native folder that a run without it did not write
    for f in (pred / "c" / "native").iterdir():
        f.unlink()
    (pred / "c" / "native").rmdir()
    assert run_prediction(_Voxelwise(), tmp_path / "registered", pred, device="cpu", progress=False,
                          skip_existing=True, registered_dir=tmp_path / "registered") == {}
    assert (pred / "c" / "native" / layout.progression_filename(1)).is_file()


def test_predict_native_publishes_the_case_with_its_native_folder(tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    # native/ was added after the case folder was published: an interruption in between left a complete case
    # without it; now it is written into the case's temporary folder, so the case appears with it or not at all
    import longiseg.registration.native as native_module
    from longiseg.workflows.predict import run_prediction

    _registered_case(tmp_path / "registered")
    pred = tmp_path / "pred"
    seen: list[tuple[Path, list[str], object]] = []
    real = native_module.case_to_native

    def interrupted(case_dir: Path, *args: object, **kwargs: object) -> list[Path]:
        seen.append((Path(case_dir), sorted(f.name for f in Path(case_dir).iterdir()), kwargs.get("case_id")))
        raise KeyboardInterrupt

    monkeypatch.setattr(native_module, "case_to_native", interrupted)
    with pytest.raises(KeyboardInterrupt):
        run_prediction(_Voxelwise(), tmp_path / "registered", pred, device="cpu", progress=False,
                       registered_dir=tmp_path / "registered")
    (folder, files, case_id), = seen  # called once, with the case's temporary folder holding its outputs
    assert folder.name != "c" and case_id == "c" and layout.BASELINE_MASK in files
    assert layout.progression_filename(1) in files and not folder.exists()
    assert not (pred / "c").exists() and not pred.exists()  # neither the case nor an empty output folder
    monkeypatch.setattr(native_module, "case_to_native", real)
    run_prediction(_Voxelwise(), tmp_path / "registered", pred, device="cpu", progress=False,
                   registered_dir=tmp_path / "registered")
    assert sorted(f.name for f in (pred / "c" / "native").iterdir()) == [layout.BASELINE_MASK,
                                                                       layout.progression_filename(1)]
    assert not [f for f in pred.iterdir() if f.name != "c"]  # no temporary left beside the case



def test_mapping_back_checks_every_case_and_writes_each_as_a_whole(tmp_path: Path) -> None:
    # another case's record was used without a word, masks on another grid were mapped as if registered, and
    # predictions_to_native wrote case by case file by file: a missing transform of the second case left the
    # first written, a missing mask was skipped, and the output could be the prediction folder itself
    import shutil

    import nibabel as nib

    from longiseg.registration.native import case_to_native, predictions_to_native
    from longiseg.workflows.predict import run_prediction

    _registered_case(tmp_path / "registered")
    record_path = tmp_path / "registered" / "c" / "registration" / "registration.json"
    record = json.loads(record_path.read_text())
    record_path.write_text(json.dumps({**record, "case_id": "c",
                                       "output_grid": Grid((12, 12, 12), np.diag([2.0, 2.0, 2.0, 1.0])).to_dict()}))
    pred = tmp_path / "pred"
    run_prediction(_Voxelwise(), tmp_path / "registered", pred, device="cpu", progress=False)
    shutil.copytree(tmp_path / "registered" / "c", tmp_path / "registered" / "d")  # case d: c's files and record
    shutil.copytree(pred / "c", pred / "d")
    with pytest.raises(ValueError, match="records case 'c', not 'd'"):
        case_to_native(pred / "d", tmp_path / "registered" / "d" / "registration", 2)
    with pytest.raises(ValueError, match="records case 'c', not 'd'"):
        predictions_to_native(pred, tmp_path / "registered", tmp_path / "native")
    assert not (tmp_path / "native").exists()  # nothing of case c written before
    shutil.rmtree(pred / "d")
    shutil.rmtree(tmp_path / "registered" / "d")
    for out in (pred, pred / "native", tmp_path / "registered"):
        with pytest.raises(ValueError, match="out_dir"):
            predictions_to_native(pred, tmp_path / "registered", out, overwrite=True)
    (pred / "c" / layout.progression_filename(1)).rename(tmp_path / "kept.nii.gz")
    with pytest.raises(FileNotFoundError, match="progression_t1"):
        predictions_to_native(pred, tmp_path / "registered", tmp_path / "native")
    (tmp_path / "kept.nii.gz").rename(pred / "c" / layout.progression_filename(1))
    original = (pred / "c" / layout.BASELINE_MASK).read_bytes()
    mask = np.asarray(nib.load(pred / "c" / layout.BASELINE_MASK).dataobj)
    (pred / "c" / layout.BASELINE_MASK).unlink()
    _save(mask, np.diag([4.0, 4.0, 4.0, 1.0]), pred / "c" / layout.BASELINE_MASK, np.uint8)
    with pytest.raises(ValueError, match="lies on another grid"):
        predictions_to_native(pred, tmp_path / "registered", tmp_path / "native")
    (pred / "c" / layout.BASELINE_MASK).write_bytes(original)
    files = predictions_to_native(pred, tmp_path / "registered", tmp_path / "native")
    assert sorted(f.name for f in files) == [layout.BASELINE_MASK, layout.progression_filename(1)]
    with pytest.raises(FileExistsError, match="exists"):
        predictions_to_native(pred, tmp_path / "registered", tmp_path / "native")


def test_predict_native_refuses_a_case_without_its_transform(tmp_path: Path) -> None:
    from longiseg.workflows.predict import run_prediction

    _registered_case(tmp_path / "registered")
    (tmp_path / "registered" / "c" / "registration" / "t1.tfm").unlink()
    with pytest.raises(FileNotFoundError, match=r"t1\.tfm not found \(follow-up 1 was not registered"):
        run_prediction(_Voxelwise(), tmp_path / "registered", tmp_path / "pred", device="cpu", progress=False,
                       registered_dir=tmp_path / "registered")
    assert not (tmp_path / "pred").exists()  # checked before any case is predicted
    (tmp_path / "not-registered").mkdir()  # a folder without the case's registration/ (and apart from pred)
    with pytest.raises(FileNotFoundError, match="no .*registration with the transforms of longiseg register"):
        run_prediction(_Voxelwise(), tmp_path / "registered", tmp_path / "pred", device="cpu", progress=False,
                       registered_dir=tmp_path / "not-registered")
    assert not (tmp_path / "pred").exists()


@pytest.mark.parametrize("damage, error, match", [
    ("tfm", ValueError, r"transform .*t1\.tfm cannot be read or inverted"),
    ("json", ValueError, r"registration\.json is not a JSON record of 'longiseg register'"),
    ("key", ValueError, r"registration\.json lacks what 'longiseg register' records"),
    ("grid", ValueError, r"case 'c': its images lie on another grid \(shape \(12, 12, 12\)\) than the registered"),
])
def test_predict_native_refuses_damaged_registration_outputs_before_predicting(damage: str, error: type, match: str,
                                                                               tmp_path: Path) -> None:
    # an unreadable t1.tfm failed in the middle of the run with ITK's message (object addresses, build paths) and
    # exit 1, after the cases before it were written; a damaged registration.json gave a bare JSON message or a
    # KeyError; images of another register output were predicted and then refused under a temporary path
    from longiseg.workflows.predict import run_prediction

    _registered_case(tmp_path / "registered")
    reg = tmp_path / "registered" / "c" / "registration"
    record = json.loads((reg / "registration.json").read_text())
    if damage == "tfm":
        (reg / "t1.tfm").write_text("#Insight Transform File V1.0\nnot a transform\n")
    elif damage == "json":
        (reg / "registration.json").write_text("{'options': 1}")
    elif damage == "key":
        (reg / "registration.json").write_text(json.dumps({**record, "options": {}}))
    else:
        grid = Grid((12, 12, 12), np.diag([2.0, 2.0, 2.0, 1.0]))
        shifted = grid.to_dict()
        shifted["affine"][0][3] = 10.0  # register wrote another grid than the one the case lies on
        (reg / "registration.json").write_text(json.dumps({**record, "case_id": "c", "output_grid": shifted}))
    with pytest.raises(error, match=match):
        run_prediction(_Voxelwise(), tmp_path / "registered", tmp_path / "pred", device="cpu", progress=False,
                       registered_dir=tmp_path / "registered")
    assert not (tmp_path / "pred").exists()  # refused before any case is predicted


@pytest.mark.parametrize("hide_simpleitk, match", [
    (False, r"--native .*nope is not a folder"),
    (True, r"longiseg\[register\]"),
])
def test_predict_native_command_errors(hide_simpleitk: bool, match: str, tmp_path: Path,
                                       monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    import re

    from longiseg.cli import main

    if hide_simpleitk:
        monkeypatch.setitem(sys.modules, "SimpleITK", None)
    (tmp_path / "in").mkdir()
    (tmp_path / "best.pt").write_bytes(b"")  # never read: the --native checks come first
    assert main(["predict", "--checkpoint", str(tmp_path / "best.pt"), "--input", str(tmp_path / "in"),
                 "--output", str(tmp_path / "out"), "--native", str(tmp_path / "nope")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("longiseg predict: error: ") and re.search(match, err[0]), err
    assert not (tmp_path / "out").exists()


def test_failed_followup_kept_in_scanner_alignment_and_cohort_checks(tmp_path: Path,
                                                                      capsys: pytest.CaptureFixture) -> None:
    """--keep-failed keeps every timepoint of a case whose registration raised (so the cohort loads); one
    stderr line per failure without ITK's object addresses; raw cases of different modality sets are refused
    before anything is written; a folder without t0 images fails as a case instead of vanishing."""
    from longiseg.cli import main
    from longiseg.data.cohort import find_cases
    from longiseg.data.demo_cohort import DemoCohortConfig, generate_demo_case
    from longiseg.data.loading import load_case

    cfg = DemoCohortConfig(num_patients=1, spacing=4, modalities=("flair",), max_translation=0.0, max_rotation=0.0)
    a, _ = generate_demo_case(0, cfg)
    raw = tmp_path / "raw"
    _write_raw_case(raw / "zero", a, a, np.eye(4), (4.0, 4.0, 4.0), (0, 1, 2), (1, 1, 1))
    follow = raw / "zero" / layout.image_filename(1, "flair")
    follow.unlink()
    # registration raises on a follow-up 3 voxels wide (ITK's smoothing needs 4; a blank image is refused earlier)
    _save(np.random.default_rng(0).random((3, 3, 3)).astype(np.float32) + 1.0, a.affine, follow)
    assert main(["register", str(raw), str(tmp_path / "kept"), "--no-qc-figures", "--keep-failed",
                 "--no-progress"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "case zero follow-up 1 failed: registration error" in err[0] and "(0x" not in err[0]
    (source,) = find_cases(tmp_path / "kept")
    assert load_case(source).num_timepoints == 2  # every timepoint written: the kept cohort loads
    assert (tmp_path / "kept" / "zero" / "registration" / "t1.tfm").is_file()

    (raw / "t2case").mkdir()
    for t in (0, 1):
        for m in ("flair", "t2"):
            _save(a.images[0, 0], a.affine, raw / "t2case" / layout.image_filename(t, m))
    assert main(["register", str(raw), str(tmp_path / "mixed"), "--no-qc-figures"]) == 2
    assert "hold different modalities" in capsys.readouterr().err and not (tmp_path / "mixed").exists()

    (raw / "t2case").rename(tmp_path / "t2case")
    (raw / "nobaseline").mkdir()
    _save(a.images[0, 0], a.affine, raw / "nobaseline" / layout.image_filename(1, "flair"))
    assert main(["register", str(raw), str(tmp_path / "out"), "--no-qc-figures"]) == 1
    assert "case nobaseline failed: case 'nobaseline': needs images t0_*" in capsys.readouterr().err


def test_an_already_aligned_followup_passes_the_quality_check(tmp_path: Path) -> None:
    """Without motion on one grid, the similarity before registration has no interpolation and the registered
    one has: a sub-voxel registration that scores a little lower is not "made it worse"."""
    from longiseg.data.demo_cohort import DemoCohortConfig, generate_demo_case
    from longiseg.registration.cohort import RegistrationOptions, register_case

    cfg = DemoCohortConfig(num_patients=3, spacing=4, modalities=("flair",), max_translation=0.0, max_rotation=0.0)
    for index in range(3):
        case, _ = generate_demo_case(index, cfg)
        _write_raw_case(tmp_path / "raw" / f"c{index}", case, case, np.eye(4), (4.0, 4.0, 4.0), (0, 1, 2), (1, 1, 1))
        res = register_case(tmp_path / "raw" / f"c{index}", tmp_path / "out", RegistrationOptions(qc_figures=False))
        (q,) = res.followups
        assert res.ok, q["reasons"]
        assert q["motion"]["max_displacement_mm"] <= 4.0  # within a voxel of the identity


def test_sheared_affines_are_refused_naming_the_file(tmp_path: Path) -> None:
    from longiseg.data.case import affine_spacing
    from longiseg.data.volumes import read_mask

    shear = np.eye(4)
    shear[0, 1] = 0.5
    with pytest.raises(ValueError, match=r"affine has a shear: .*26.57 degrees off"):
        affine_spacing(shear)
    rot = np.eye(4)
    c, s = math.cos(0.3), math.sin(0.3)
    rot[:3, :3] = (np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]]) @ np.diag([1.0, 2.0, 3.0])).astype(np.float32)
    assert affine_spacing(rot) == pytest.approx((1.0, 2.0, 3.0), rel=1e-6)  # oblique but orthogonal: fine
    _save(np.zeros((4, 4, 4), np.float32), shear, tmp_path / "m.nii.gz", np.uint8)
    with pytest.raises(ValueError, match=r"m\.nii\.gz: affine has a shear"):
        read_mask(tmp_path / "m.nii.gz")


def test_figures_show_one_orientation_whatever_the_storage_order() -> None:
    """The same anatomy stored RAS, LPS or transposed gives the same displayed slice."""
    from longiseg.data.case import display_slice, plane_axes

    rng = np.random.default_rng(0)
    vol = rng.normal(size=(5, 6, 7))
    ras = np.diag([1.0, 2.0, 3.0, 1.0])
    lps = ras.copy()
    lps[:2, :2] *= -1  # x and y axes stored reversed
    zyx = np.zeros((4, 4))
    zyx[:3, :3] = np.array([[0, 0, 1.0], [0, 2.0, 0], [3.0, 0, 0]])
    zyx[3, 3] = 1.0
    stored = {"ras": (vol, ras), "lps": (vol[::-1, ::-1], lps), "zyx": (vol.transpose(2, 1, 0), zyx)}
    for plane, index in (("axial", 3), ("coronal", 2), ("sagittal", 1)):
        shown = []
        for arr, aff in stored.values():
            axis = plane_axes(aff)[plane]
            world_index = index if aff is not lps or plane == "axial" else arr.shape[axis] - 1 - index
            idx: list = [slice(None)] * 3
            idx[axis] = world_index
            shown.append(display_slice(arr[tuple(idx)], aff, axis))
        for img, aspect in shown[1:]:
            np.testing.assert_array_equal(img, shown[0][0])
            assert aspect == shown[0][1]


def test_a_grid_record_keeps_the_affine_exactly() -> None:
    # registration.json rounded affines to 6 decimals: masks mapped back carried sforms and pixdims differing
    # from the raw scan's in the 7th digit (2.4999998 for 2.5)
    angle = np.radians(7.3)
    affine = np.eye(4)
    affine[:3, :3] = np.array([[np.cos(angle), -np.sin(angle), 0], [np.sin(angle), np.cos(angle), 0], [0, 0, 1]]) @ \
        np.diag([2.5, 4.0, 6.0]) / 3.0
    affine[:3, 3] = (-91.123456789, 12.3456789, 7.000000123)
    record = json.loads(json.dumps(Grid((5, 6, 7), affine).to_dict()))
    np.testing.assert_array_equal(Grid.from_dict(record).affine, affine)


def test_a_raw_manifest_is_read_as_the_cohort_readers_read_it(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Only the patient ids of a raw manifest were read: a case it does not list was registered as its own patient
    (its other sessions could land in another split), and its channel order was replaced by the sorted one."""
    import logging

    from longiseg.data.cohort import find_cases
    from longiseg.data.demo_cohort import DemoCohortConfig, generate_demo_case
    from longiseg.registration.cohort import register_folder

    cfg = DemoCohortConfig(num_patients=1, spacing=4, modalities=("flair", "t2"), max_translation=0.0,
                           max_rotation=0.0)
    a, _ = generate_demo_case(0, cfg, progressing=True)
    raw = tmp_path / "raw"
    for cid in ("c1", "c2"):
        _write_raw_case(raw / cid, a, a, np.eye(4), (4.0, 4.0, 4.0), (0, 1, 2), (1, 1, 1))
    manifest = {"modalities": ["t2", "flair"], "cases": [{"case_id": "c1", "patient_id": "P1"}]}
    (raw / "manifest.json").write_text(json.dumps(manifest))
    with caplog.at_level(logging.WARNING, logger="longiseg"):
        results = register_folder(raw, tmp_path / "out", progress=False)
    assert [r.case_id for r in results] == ["c1"] and "c2" in caplog.text and "does not list" in caplog.text
    (case,) = find_cases(tmp_path / "out")
    assert case.patient_id == "P1" and case.modalities == ("t2", "flair")
    manifest["modalities"] = ["t2"]  # a subset: its channels, as find_cases reads them
    (raw / "manifest.json").write_text(json.dumps(manifest))
    register_folder(raw, tmp_path / "sub", progress=False)
    assert find_cases(tmp_path / "sub")[0].modalities == ("t2",)
    manifest["modalities"] = ["flair", "pd"]
    (raw / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ValueError, match=r"names the modalities \['flair', 'pd'\], but the baselines hold "
                                         r"\['flair', 't2'\], not \['pd'\]"):
        register_folder(raw, tmp_path / "out2", progress=False)
    manifest["cases"].append({"case_id": "c3"})
    (raw / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(FileNotFoundError, match=r"lists case\(s\) without a folder: \['c3'\]"):
        register_folder(raw, tmp_path / "out3", progress=False)
    assert not (tmp_path / "out2").exists() and not (tmp_path / "out3").exists()
