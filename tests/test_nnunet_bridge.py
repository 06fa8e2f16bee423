"""nnU-Net bridge: exact 4-class round trip, raw dataset writing, structural check, prediction import."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from longiseg.bridges import (
    FOUR_CLASS_LABELS,
    NnUNetCase,
    check_nnunet_raw_dataset,
    convert_longiseg_dataset,
    four_class_to_masks,
    import_nnunet_predictions,
    masks_to_four_class,
    nnunet_dataset_name,
    write_nnunet_dataset,
)
from longiseg.data.layout import BASELINE_MASK, image_filename, progression_filename
from longiseg.data.volumes import GRID_ATOL, same_affine

SHAPE = (4, 5, 3)


def test_four_class_table() -> None:
    baseline = np.array([0, 1, 0, 1], dtype=bool)
    progression = np.array([0, 0, 1, 1], dtype=bool)
    labels = masks_to_four_class(baseline, progression)
    assert labels.dtype == np.uint8
    assert labels.tolist() == [
        FOUR_CLASS_LABELS["background"],
        FOUR_CLASS_LABELS["baseline_only"],
        FOUR_CLASS_LABELS["followup_only"],
        FOUR_CLASS_LABELS["overlap"],
    ]


@settings(max_examples=50, deadline=None)
@given(pair=arrays(np.uint8, (2, 3, 4, 5), elements=st.integers(0, 1)))
def test_round_trip_is_exact_numpy(pair: np.ndarray) -> None:
    labels = masks_to_four_class(pair[0], pair[1])
    baseline, progression = four_class_to_masks(labels)
    assert np.array_equal(baseline, pair[0].astype(bool))
    assert np.array_equal(progression, pair[1].astype(bool))
    # and label map -> masks -> label map
    assert np.array_equal(masks_to_four_class(baseline, progression), labels)


def test_round_trip_is_exact_torch() -> None:
    baseline = torch.rand(2, 6, 7, 5) > 0.5
    progression = torch.rand(2, 6, 7, 5) > 0.7
    labels = masks_to_four_class(baseline, progression)
    assert labels.dtype == torch.uint8
    b, p = four_class_to_masks(labels)
    assert torch.equal(b, baseline) and torch.equal(p, progression)
    b, p = four_class_to_masks(labels.long())
    assert torch.equal(b, baseline) and torch.equal(p, progression)


def test_conversion_errors() -> None:
    with pytest.raises(ValueError, match="binary"):
        masks_to_four_class(np.array([0, 2]), np.array([0, 1]))
    with pytest.raises(ValueError, match="same shape"):
        masks_to_four_class(np.zeros(3), np.zeros(4))
    with pytest.raises(TypeError, match="numpy arrays or both torch tensors"):
        masks_to_four_class(np.zeros(3), torch.zeros(3))
    with pytest.raises(ValueError, match=r"\{0, 1, 2, 3\}"):
        four_class_to_masks(np.array([0, 4]))
    with pytest.raises(ValueError, match=r"\{0, 1, 2, 3\}"):
        four_class_to_masks(torch.tensor([-1, 0]))
    with pytest.raises(TypeError, match="integer"):
        four_class_to_masks(np.array([0.0, 1.0]))
    with pytest.raises(TypeError, match="integer tensor"):
        four_class_to_masks(torch.tensor([0.0]))
    with pytest.raises(TypeError, match="numpy array or torch tensor"):
        four_class_to_masks([0, 1])


def _case(case_id: str, rng: np.random.Generator, channels: int = 2) -> NnUNetCase:
    baseline, progression = rng.random(SHAPE) > 0.7, rng.random(SHAPE) > 0.8
    images = [rng.normal(size=SHAPE).astype(np.float32) for _ in range(channels)]
    return NnUNetCase(case_id, images, masks_to_four_class(baseline, progression), np.diag([1.0, 1.0, 2.0, 1.0]))


def test_write_dataset_passes_structural_check(tmp_path: Path, rng: np.random.Generator) -> None:
    cases = [_case("p1_fu1", rng), _case("p2_fu1", rng)]
    folder = write_nnunet_dataset(tmp_path, 501, "LongiMS", cases, ["prior_flair", "current_flair"])
    assert folder.name == "Dataset501_LongiMS"
    meta = json.loads((folder / "dataset.json").read_text(encoding="utf-8"))
    assert meta["channel_names"] == {"0": "prior_flair", "1": "current_flair"}
    assert meta["labels"] == FOUR_CLASS_LABELS
    assert meta["numTraining"] == 2 and meta["file_ending"] == ".nii.gz"
    assert sorted(p.name for p in (folder / "imagesTr").iterdir()) == [
        "p1_fu1_0000.nii.gz", "p1_fu1_0001.nii.gz", "p2_fu1_0000.nii.gz", "p2_fu1_0001.nii.gz"
    ]
    summary = check_nnunet_raw_dataset(folder)
    assert summary == {"dataset_id": 501, "name": "LongiMS", "num_cases": 2, "num_channels": 2,
                       "cases": ["p1_fu1", "p2_fu1"], "test_cases": []}
    # the label file holds exactly the 4-class map, the images their arrays
    lab = np.asarray(nib.load(folder / "labelsTr" / "p1_fu1.nii.gz").dataobj)
    assert np.array_equal(lab, cases[0].labels)
    img = nib.load(folder / "imagesTr" / "p1_fu1_0001.nii.gz")
    assert np.allclose(img.get_fdata(), cases[0].images[1]) and np.allclose(img.affine, cases[0].affine)
    with pytest.raises(FileExistsError):
        write_nnunet_dataset(tmp_path, 501, "LongiMS", [_case("p1_fu1", rng)], ["a", "b"])


def test_structural_check_finds_problems(tmp_path: Path, rng: np.random.Generator) -> None:
    folder = write_nnunet_dataset(tmp_path, 7, "X", [_case("a", rng), _case("b", rng)], ["c0", "c1"])
    (folder / "imagesTr" / "b_0001.nii.gz").unlink()
    (folder / "imagesTr" / "stray_0000.nii.gz").write_bytes(b"")
    meta = json.loads((folder / "dataset.json").read_text(encoding="utf-8"))
    meta["numTraining"] = 5
    (folder / "dataset.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError) as err:
        check_nnunet_raw_dataset(folder)
    msg = str(err.value)
    assert "b_0001.nii.gz is missing" in msg and "stray_0000.nii.gz" in msg and "numTraining is 5" in msg


def test_the_geometry_check_uses_the_librarys_one_grid_rule(tmp_path: Path, rng: np.random.Generator) -> None:
    """The bridge compared affines with a relative tolerance too (np.allclose's default): an image 5e-4 mm off its
    label at a 100 mm origin passed it, and the cases then failed to load as longiseg cases (atol 1e-4 mm)."""
    case = _case("a", rng)
    affine = case.affine.copy()
    affine[:3, 3] = 100.0
    folder = write_nnunet_dataset(tmp_path, 9, "Z", [dataclasses.replace(case, affine=affine)], ["c0", "c1"])
    assert check_nnunet_raw_dataset(folder)["num_cases"] == 1
    shifted = affine.copy()
    shifted[0, 3] += 5e-4  # within 1e-5 relative of 100 mm, beyond 1e-4 mm
    nib.save(nib.Nifti1Image(case.images[0], shifted), folder / "imagesTr" / "a_0000.nii.gz")
    with pytest.raises(ValueError, match=r"imagesTr/a_0000\.nii\.gz: shape/affine differ from its label"):
        check_nnunet_raw_dataset(folder)
    assert same_affine(affine, affine + 0.9 * GRID_ATOL) and not same_affine(affine, affine + 1.1 * GRID_ATOL)


def test_structural_check_json_and_geometry(tmp_path: Path, rng: np.random.Generator) -> None:
    folder = write_nnunet_dataset(tmp_path, 8, "Y", [_case("a", rng)], ["c0", "c1"])
    meta = json.loads((folder / "dataset.json").read_text(encoding="utf-8"))
    bad = dict(meta, labels={"background": 0, "x": 2})
    (folder / "dataset.json").write_text(json.dumps(bad))
    with pytest.raises(ValueError, match="consecutive"):
        check_nnunet_raw_dataset(folder)
    del bad["file_ending"]
    (folder / "dataset.json").write_text(json.dumps(bad))
    with pytest.raises(ValueError, match="file_ending"):
        check_nnunet_raw_dataset(folder)
    (folder / "dataset.json").write_text(json.dumps(meta))
    nib.save(nib.Nifti1Image(np.zeros((2, 2, 2), np.float32), np.eye(4)), folder / "imagesTr" / "a_0000.nii.gz")
    with pytest.raises(ValueError, match="shape/affine"):
        check_nnunet_raw_dataset(folder)
    assert check_nnunet_raw_dataset(folder, check_geometry=False)["num_cases"] == 1
    renamed = folder.rename(tmp_path / "Dataset8_Y")
    with pytest.raises(ValueError, match="DatasetXXX_Name"):
        check_nnunet_raw_dataset(renamed)
    with pytest.raises(ValueError, match="dataset.json is missing"):
        check_nnunet_raw_dataset(tmp_path / "Dataset009_Missing")


def test_writer_errors(tmp_path: Path, rng: np.random.Generator) -> None:
    with pytest.raises(ValueError, match="1..999"):
        nnunet_dataset_name(1000, "A")
    assert nnunet_dataset_name(np.int64(501), "A") == "Dataset501_A"  # refused as "must be an int ... got 501"
    with pytest.raises(TypeError, match=r"dataset_id must be an int in 1..999 \(three digits\), got str '501'"):
        nnunet_dataset_name("501", "A")
    with pytest.raises(ValueError, match="name"):
        nnunet_dataset_name(1, "bad name")
    with pytest.raises(ValueError, match="case_id"):
        NnUNetCase("bad id", [np.zeros(SHAPE)], np.zeros(SHAPE, np.uint8))
    with pytest.raises(ValueError, match="same shape"):
        NnUNetCase("a", [np.zeros((2, 2, 2))], np.zeros(SHAPE, np.uint8))
    with pytest.raises(ValueError, match="NaN"):
        NnUNetCase("a", [np.full(SHAPE, np.nan)], np.zeros(SHAPE, np.uint8))
    with pytest.raises(ValueError, match="duplicate"):
        write_nnunet_dataset(tmp_path, 1, "A", [_case("a", rng), _case("a", rng)], ["x", "y"])
    with pytest.raises(ValueError, match="channel_names has 3"):
        write_nnunet_dataset(tmp_path, 2, "B", [_case("a", rng)], ["x", "y", "z"])
    with pytest.raises(ValueError, match="not declared"):
        write_nnunet_dataset(tmp_path, 3, "C", [_case("a", rng)], ["x", "y"], labels={"background": 0, "les": 1})
    with pytest.raises(ValueError, match="empty"):
        write_nnunet_dataset(tmp_path, 4, "D", [], ["x"])
    write_nnunet_dataset(tmp_path, 5, "E", [_case("a", rng)], ["x", "y"])
    with pytest.raises(ValueError, match=r"already holds Dataset005_E with the id of Dataset005_F; nnU-Net finds"):
        write_nnunet_dataset(tmp_path, 5, "F", [_case("a", rng)], ["x", "y"])
    assert not (tmp_path / "Dataset005_F").exists()
    write_nnunet_dataset(tmp_path, 5, "E", [_case("b", rng)], ["x", "y"], overwrite=True)  # its own id: fine


def _write_longiseg_case(root: Path, case: str, masks: list[np.ndarray], rng: np.random.Generator) -> None:
    """Write a longiseg-layout case: masks[0] baseline, masks[t] progression of follow-up t."""
    affine = np.eye(4)
    for t in range(len(masks)):
        for mod in ("flair", "t2"):
            nib.save(nib.Nifti1Image(rng.normal(size=SHAPE).astype(np.float32), affine),
                     root / case / image_filename(t, mod))
    for t, mask in enumerate(masks):
        name = BASELINE_MASK if t == 0 else progression_filename(t)
        nib.save(nib.Nifti1Image(mask.astype(np.uint8), affine), root / case / name)


def test_convert_longiseg_dataset_and_import_predictions(tmp_path: Path, rng: np.random.Generator) -> None:
    root = tmp_path / "data"
    masks = [rng.random(SHAPE) > 0.7, rng.random(SHAPE) > 0.9, rng.random(SHAPE) > 0.9]
    for case, n in (("p1", 3), ("p2", 2)):
        (root / case).mkdir(parents=True)
        _write_longiseg_case(root, case, masks[:n], rng)
    folder = convert_longiseg_dataset(root, tmp_path / "raw", 502, "Longi")
    summary = check_nnunet_raw_dataset(folder)
    assert summary["cases"] == ["p1_fu1", "p1_fu2", "p2_fu1"]
    meta = json.loads((folder / "dataset.json").read_text(encoding="utf-8"))
    assert meta["channel_names"] == {"0": "prior_flair", "1": "prior_t2", "2": "current_flair", "3": "current_t2"}
    # pair (1, 2): the prior mask is baseline | progression_t1, the progression is progression_t2
    lab = np.asarray(nib.load(folder / "labelsTr" / "p1_fu2.nii.gz").dataobj).astype(np.int64)
    prior, prog = four_class_to_masks(lab)
    assert np.array_equal(prior, masks[0] | masks[1]) and np.array_equal(prog, masks[2])
    # images of the pair: prior timepoint 1 and current timepoint 2, in modality order
    src = nib.load(root / "p1" / image_filename(1, "t2")).get_fdata()
    assert np.allclose(nib.load(folder / "imagesTr" / "p1_fu2_0001.nii.gz").get_fdata(), src)

    # nnU-Net's predictions (here: the training labels) come back as longiseg prediction files
    written = import_nnunet_predictions(folder / "labelsTr", tmp_path / "pred")
    assert len(written) == 5  # p1: baseline + 2 progressions, p2: baseline + 1 progression
    out = tmp_path / "pred" / "p1"
    assert np.array_equal(np.asarray(nib.load(out / BASELINE_MASK).dataobj).astype(bool), masks[0])
    assert np.array_equal(np.asarray(nib.load(out / progression_filename(2)).dataobj).astype(bool), masks[2])
    with pytest.raises(FileExistsError, match="overwrite=True"):
        import_nnunet_predictions(folder / "labelsTr", tmp_path / "pred")
    assert len(import_nnunet_predictions(folder / "labelsTr", tmp_path / "pred", overwrite=True)) == 5
    # a missing last pair passed as a case of fewer timepoints; with the reference cohort it is named
    assert len(import_nnunet_predictions(folder / "labelsTr", tmp_path / "ref", reference=root)) == 5
    (folder / "labelsTr" / "p1_fu2.nii.gz").rename(tmp_path / "p1_fu2.nii.gz")
    assert len(import_nnunet_predictions(folder / "labelsTr", tmp_path / "short")) == 4  # p1 as two timepoints
    with pytest.raises(ValueError, match=r"case 'p1' hold follow-ups 1 .. 1 .*but the case has 2 in .*: predict "
                                         r"the missing pair\(s\) \['p1_fu2'\]"):
        import_nnunet_predictions(folder / "labelsTr", tmp_path / "short2", reference=root)
    import shutil

    shutil.copytree(root / "p2", tmp_path / "only_p2" / "p2")
    with pytest.raises(ValueError, match=r"case 'p1' .*no such case in the reference cohort"):
        import_nnunet_predictions(folder / "labelsTr", tmp_path / "short3", reference=tmp_path / "only_p2")
    assert not (tmp_path / "short2").exists() and not (tmp_path / "short3").exists()
    (tmp_path / "p1_fu2.nii.gz").rename(folder / "labelsTr" / "p1_fu2.nii.gz")
    (folder / "labelsTr" / "p1_fu1.nii.gz").unlink()  # p1 now starts at its second pair
    with pytest.raises(ValueError, match=r"case 'p1' must be the pairs p1_fu1 .*found follow-ups \[2\]"):
        import_nnunet_predictions(folder / "labelsTr", tmp_path / "pred2")
    assert not (tmp_path / "pred2").exists()  # refused before anything is written


def test_convert_errors(tmp_path: Path, rng: np.random.Generator) -> None:
    root = tmp_path / "data"
    root.mkdir()
    with pytest.raises(FileNotFoundError, match="no case folders"):
        convert_longiseg_dataset(root, tmp_path / "raw", 1, "A")
    with pytest.raises(FileNotFoundError, match="no predictions"):
        import_nnunet_predictions(root, tmp_path / "pred")
    (root / "p1").mkdir()
    _write_longiseg_case(root, "p1", [rng.random(SHAPE) > 0.5, rng.random(SHAPE) > 0.5], rng)
    (root / "p1" / image_filename(1, "t2")).unlink()
    with pytest.raises(FileNotFoundError, match="case .p1.: missing image .*t1_t2"):
        convert_longiseg_dataset(root, tmp_path / "raw", 1, "A", modalities=["flair", "t2"])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data"]  # nothing written


def test_convert_reads_cases_as_training_does(tmp_path: Path, rng: np.random.Generator) -> None:
    """The data layer lists and reads the cases: the manifest's cases and channel order, binary masks only."""
    root = tmp_path / "data"
    masks = [rng.random(SHAPE) > 0.7, rng.random(SHAPE) > 0.9]
    for case in ("p1", "p2"):
        (root / case).mkdir(parents=True)
        _write_longiseg_case(root, case, masks, rng)
    manifest = {"modalities": ["t2", "flair"], "cases": [{"case_id": "p2"}]}
    (root / "manifest.json").write_text(json.dumps(manifest))
    folder = convert_longiseg_dataset(root, tmp_path / "raw", 503, "Manifest")
    meta = json.loads((folder / "dataset.json").read_text(encoding="utf-8"))
    assert check_nnunet_raw_dataset(folder)["cases"] == ["p2_fu1"]
    assert list(meta["channel_names"].values()) == ["prior_t2", "prior_flair", "current_t2", "current_flair"]
    src = nib.load(root / "p2" / image_filename(0, "t2")).get_fdata()
    assert np.allclose(nib.load(folder / "imagesTr" / "p2_fu1_0000.nii.gz").get_fdata(), src)
    # a label value 2 in a binary mask is an error naming the file, not silently read as lesion
    nib.save(nib.Nifti1Image(masks[0].astype(np.uint8) * 2, np.eye(4)), root / "p2" / BASELINE_MASK)
    with pytest.raises(ValueError, match=r"p2/baseline_mask.nii.gz must be binary"):
        convert_longiseg_dataset(root, tmp_path / "raw", 504, "Bad")


# ------------------------------------------------------------------ nothing half-written, nothing misread


def _tree(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` (relative path -> bytes), to show that a folder was left as it was."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _save(arr: np.ndarray, path: Path, affine: np.ndarray | None = None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(arr, np.eye(4) if affine is None else affine), str(path))


def _four_class(rng: np.random.Generator) -> np.ndarray:
    return rng.integers(0, 4, size=SHAPE).astype(np.uint8)


@pytest.mark.parametrize(("dtype", "bad_values", "shown"), [
    (np.float32, (2.7, 0.6), r"\[0\.6, 2\.7\]"),  # was rounded down to 2 and 0
    (np.int32, (65537,), r"\[65537\]"),  # was wrapped to 1 by an int16 cast
    (np.uint8, (4, 9), r"\[4, 9\]"),
    (np.int16, (-1,), r"\[-1\]"),
])
def test_import_refuses_bad_label_values_naming_the_file(tmp_path: Path, rng: np.random.Generator, dtype: type,
                                                         bad_values: tuple[float, ...], shown: str) -> None:
    labels = _four_class(rng).astype(dtype)
    labels.flat[: len(bad_values)] = bad_values
    pred, out = tmp_path / "nnunet", tmp_path / "out"
    _save(_four_class(rng), pred / "a_fu1.nii.gz")
    _save(labels, pred / "b_fu1.nii.gz")
    with pytest.raises(ValueError, match=r"nnU-Net prediction .*b_fu1\.nii\.gz must hold the integer labels "
                                         r"\{0, 1, 2, 3\}.*found values such as " + shown):
        import_nnunet_predictions(pred, out)
    assert not out.exists()  # case 'a' (valid, checked first) was not written either


def test_import_accepts_integer_valued_floats_and_a_trailing_channel(tmp_path: Path, rng: np.random.Generator
                                                                      ) -> None:
    labels = _four_class(rng)
    _save(labels.astype(np.float32)[..., None], tmp_path / "pred" / "a_fu1.nii.gz")  # (D, H, W, 1), 0.0 .. 3.0
    import_nnunet_predictions(tmp_path / "pred", tmp_path / "out")
    baseline, progression = four_class_to_masks(labels)
    out = tmp_path / "out" / "a"
    assert np.array_equal(np.asarray(nib.load(out / BASELINE_MASK).dataobj), baseline)
    assert np.array_equal(np.asarray(nib.load(out / progression_filename(1)).dataobj), progression)


def test_import_refuses_pairs_on_different_grids_naming_both_files(tmp_path: Path, rng: np.random.Generator
                                                                   ) -> None:
    pred, out = tmp_path / "nnunet", tmp_path / "out"
    shifted = np.eye(4)
    shifted[0, 3] = 5.0
    _save(_four_class(rng), pred / "a_fu1.nii.gz")
    _save(_four_class(rng), pred / "x_fu1.nii.gz")
    _save(_four_class(rng), pred / "x_fu2.nii.gz", shifted)  # was written with x_fu1's affine, silently
    with pytest.raises(ValueError, match=r"x_fu2\.nii\.gz lies on another grid than .*x_fu1\.nii\.gz "
                                         r"\(affines differ by up to 5"):
        import_nnunet_predictions(pred, out)
    assert not out.exists()
    _save(np.zeros((4, 5, 7), np.uint8), pred / "x_fu2.nii.gz")
    with pytest.raises(ValueError, match=r"x_fu2\.nii\.gz lies on another grid than x_fu1\.nii\.gz \(shape "
                                         r"\(4, 5, 7\) vs \(4, 5, 3\)\)"):
        import_nnunet_predictions(pred, out)
    _save(np.zeros((*SHAPE, 2), np.uint8), pred / "x_fu2.nii.gz")
    with pytest.raises(ValueError, match=r"x_fu2\.nii\.gz must be one 3D label map"):
        import_nnunet_predictions(pred, out)
    assert not out.exists()


def test_import_checks_every_case_before_writing_any(tmp_path: Path, rng: np.random.Generator) -> None:
    pred, out = tmp_path / "nnunet", tmp_path / "out"
    for case in "abc":
        _save(_four_class(rng), pred / f"{case}_fu1.nii.gz")
    bad = _four_class(rng)
    bad[0, 0, 0] = 9
    _save(bad, pred / "c_fu1.nii.gz")
    out.mkdir()
    _save(np.ones(SHAPE, np.uint8), out / "keep" / BASELINE_MASK)  # another case already in out_root
    before = _tree(out)
    with pytest.raises(ValueError, match=r"c_fu1\.nii\.gz must hold .*\[9\]"):
        import_nnunet_predictions(pred, out)
    assert _tree(out) == before  # 'a' and 'b' were not written before 'c' failed
    _save(_four_class(rng), pred / "c_fu1.nii.gz")
    _save(np.ones(SHAPE, np.uint8), out / "b" / "notes.nii.gz")  # an existing case folder: refused up front
    before = _tree(out)
    with pytest.raises(FileExistsError, match=r"out/b \(output folder of case 'b'\) already exists"):
        import_nnunet_predictions(pred, out)
    assert _tree(out) == before
    written = import_nnunet_predictions(pred, out, overwrite=True)  # b replaced as a whole, 'keep' untouched
    assert len(written) == 6 and sorted(p.name for p in (out / "b").iterdir()) == [BASELINE_MASK,
                                                                                   progression_filename(1)]
    assert (out / "keep" / BASELINE_MASK).read_bytes() == before[f"keep/{BASELINE_MASK}"]


def test_import_refuses_an_out_root_overlapping_pred_dir(tmp_path: Path, rng: np.random.Generator) -> None:
    pred = tmp_path / "nnunet"
    _save(_four_class(rng), pred / "a_fu1.nii.gz")
    for out, how in ((pred, "is"), (pred / "sub", "lies inside"), (tmp_path, "holds")):
        with pytest.raises(ValueError, match=f"out_root .* {how} the pred_dir folder"):
            import_nnunet_predictions(pred, out)
    assert sorted(p.name for p in pred.iterdir()) == ["a_fu1.nii.gz"]
    with pytest.raises(FileNotFoundError, match="pred_dir .*missing does not exist"):
        import_nnunet_predictions(tmp_path / "missing", tmp_path / "out")


def test_write_overwrite_replaces_the_whole_dataset(tmp_path: Path, rng: np.random.Generator) -> None:
    folder = write_nnunet_dataset(tmp_path, 11, "Re", [_case("a", rng), _case("b", rng), _case("c", rng)],
                                  ["x", "y"])
    (folder / "notes.txt").write_text("stale")
    with pytest.raises(FileExistsError, match="overwrite=True"):
        write_nnunet_dataset(tmp_path, 11, "Re", [_case("a", rng)], ["x", "y"])
    one = _case("z", rng)
    write_nnunet_dataset(tmp_path, 11, "Re", [one], ["x", "y"], overwrite=True)
    assert sorted(p.name for p in (folder / "labelsTr").iterdir()) == ["z.nii.gz"]
    assert sorted(p.name for p in (folder / "imagesTr").iterdir()) == ["z_0000.nii.gz", "z_0001.nii.gz"]
    assert not (folder / "notes.txt").exists()
    assert check_nnunet_raw_dataset(folder)["cases"] == ["z"]
    assert np.array_equal(np.asarray(nib.load(folder / "labelsTr" / "z.nii.gz").dataobj), one.labels)
    assert sorted(p.name for p in tmp_path.iterdir()) == [folder.name]  # no temporary left behind
    empty = tmp_path / "Dataset012_Empty"
    empty.mkdir()  # an existing empty folder is written without overwrite
    assert check_nnunet_raw_dataset(write_nnunet_dataset(tmp_path, 12, "Empty", [_case("a", rng)], ["x", "y"]))


def test_write_failure_leaves_the_destination_as_it_was(tmp_path: Path, rng: np.random.Generator) -> None:
    folder = write_nnunet_dataset(tmp_path / "raw", 13, "Keep", [_case("a", rng), _case("b", rng)], ["x", "y"])
    before = _tree(folder)

    def cases():  # an iterator: checked as they come, the bad one after a good one was written
        yield _case("p", rng)
        yield _case("p", rng)

    with pytest.raises(ValueError, match="duplicate case_id 'p'"):
        write_nnunet_dataset(tmp_path / "raw", 13, "Keep", cases(), ["x", "y"], overwrite=True)
    assert _tree(folder) == before
    assert sorted(p.name for p in (tmp_path / "raw").iterdir()) == [folder.name]
    with pytest.raises(ValueError, match="case .b. has 3 images"):  # a list: every case checked before writing
        write_nnunet_dataset(tmp_path / "new" / "raw", 14, "New", [_case("a", rng), _case("b", rng, 3)],
                             ["x", "y"])
    with pytest.raises(ValueError, match="duplicate"):
        write_nnunet_dataset(tmp_path / "new" / "raw", 14, "New", cases(), ["x", "y"])
    assert not (tmp_path / "new").exists()  # not even out_root is left behind
    with pytest.raises(ValueError, match=r"extra_json must not set \['numTraining'\]"):
        write_nnunet_dataset(tmp_path / "raw", 15, "J", [_case("a", rng)], ["x", "y"], extra_json={"numTraining": 9})
    (tmp_path / "file").write_text("")
    with pytest.raises(NotADirectoryError, match="out_root"):
        write_nnunet_dataset(tmp_path / "file", 16, "F", [_case("a", rng)], ["x", "y"])


def test_write_many_labels_are_not_wrapped(tmp_path: Path, rng: np.random.Generator) -> None:
    labels = {"background": 0, **{f"l{i}": i for i in range(1, 300)}}
    lab = np.zeros(SHAPE, np.int64)
    lab[0, 0, 0] = 299
    folder = write_nnunet_dataset(tmp_path, 17, "Many", [NnUNetCase("a", [np.zeros(SHAPE)], lab)], ["x"], labels)
    assert np.asarray(nib.load(folder / "labelsTr" / "a.nii.gz").dataobj)[0, 0, 0] == 299
    assert check_nnunet_raw_dataset(folder)["num_cases"] == 1


def _cohort(root: Path, cases: dict[str, int], rng: np.random.Generator) -> dict[str, list[np.ndarray]]:
    masks = {}
    for case, n in cases.items():
        (root / case).mkdir(parents=True)
        masks[case] = [rng.random(SHAPE) > 0.7 for _ in range(n)]
        _write_longiseg_case(root, case, masks[case], rng)
    return masks


def test_convert_overwrite_leaves_no_stale_cases_and_round_trips(tmp_path: Path, rng: np.random.Generator) -> None:
    raw = tmp_path / "raw"
    _cohort(tmp_path / "two", {"p1": 2, "p2": 2}, rng)
    folder = convert_longiseg_dataset(tmp_path / "two", raw, 520, "Re")
    masks = _cohort(tmp_path / "one", {"q1": 3}, rng)
    assert convert_longiseg_dataset(tmp_path / "one", raw, 520, "Re", overwrite=True) == folder
    summary = check_nnunet_raw_dataset(folder)  # was: numTraining 1 but labelsTr holds 3 cases
    assert summary["cases"] == ["q1_fu1", "q1_fu2"]
    assert json.loads((folder / "dataset.json").read_text(encoding="utf-8"))["numTraining"] == 2
    import_nnunet_predictions(folder / "labelsTr", tmp_path / "pred")
    out = tmp_path / "pred" / "q1"
    assert np.array_equal(np.asarray(nib.load(out / BASELINE_MASK).dataobj).astype(bool), masks["q1"][0])
    for t in (1, 2):
        got = np.asarray(nib.load(out / progression_filename(t)).dataobj).astype(bool)
        assert np.array_equal(got, masks["q1"][t])


def test_convert_refuses_an_nnunet_case_id_before_writing(tmp_path: Path, rng: np.random.Generator) -> None:
    root, raw = tmp_path / "data", tmp_path / "raw"
    _cohort(root, {"a1": 2, "b.1": 2}, rng)  # a valid longiseg id that nnU-Net refuses
    with pytest.raises(ValueError, match=r"case 'b\.1' of .*data cannot be named in nnU-Net .*'b\.1_fu1'"):
        convert_longiseg_dataset(root, raw, 521, "Ids")
    assert not raw.exists()
    (root / "b.1").rename(root / "b1")
    folder = convert_longiseg_dataset(root, raw, 521, "Ids")  # the rerun is not blocked by leftovers
    assert check_nnunet_raw_dataset(folder)["cases"] == ["a1_fu1", "b1_fu1"]


def test_convert_failure_keeps_the_old_dataset(tmp_path: Path, rng: np.random.Generator) -> None:
    root, raw = tmp_path / "data", tmp_path / "raw"
    masks = _cohort(root, {"p1": 2, "p2": 2}, rng)
    folder = convert_longiseg_dataset(root, raw, 522, "Keep")
    before = _tree(folder)
    nib.save(nib.Nifti1Image(masks["p2"][0].astype(np.uint8) * 2, np.eye(4)), root / "p2" / BASELINE_MASK)
    with pytest.raises(ValueError, match=r"p2/baseline_mask\.nii\.gz must be binary"):
        convert_longiseg_dataset(root, raw, 522, "Keep", overwrite=True)  # fails after p1 was converted
    assert _tree(folder) == before
    assert sorted(p.name for p in raw.iterdir()) == [folder.name]
    inside = tmp_path / "raw" / "Dataset523_In" / "cohort"
    _cohort(inside, {"p1": 2}, rng)
    with pytest.raises(ValueError, match="dataset folder .* holds the root folder"):
        convert_longiseg_dataset(inside, raw, 523, "In", overwrite=True)  # would delete its own input
    assert (inside / "p1" / BASELINE_MASK).is_file()


# --------------------------------------------------------------------- what nnU-Net v2 refuses, found by the check
def _set_json(folder: Path, **entries: object) -> None:
    meta = json.loads((folder / "dataset.json").read_text(encoding="utf-8"))
    meta.update(entries)
    (folder / "dataset.json").write_text(json.dumps(meta), encoding="utf-8")


def test_structural_check_refuses_regions_without_regions_class_order(tmp_path: Path,
                                                                      rng: np.random.Generator) -> None:
    folder = write_nnunet_dataset(tmp_path, 21, "R", [_case("a", rng)], ["x", "y"])
    regions = {"background": 0, "lesion": [1, 2, 3], "progression": [2, 3], "overlap": 3}
    _set_json(folder, labels=regions)  # nnU-Net: "if region-based training is requested then you need to define
    with pytest.raises(ValueError, match=r"labels \['lesion', 'progression'\] are regions .*'regions_class_order'"):
        check_nnunet_raw_dataset(folder)  # regions_class_order!" (it passed)
    _set_json(folder, labels=regions, regions_class_order=[1, 2])  # one per region: three regions
    with pytest.raises(ValueError, match=r"regions_class_order must be a list of 3 ints .*got \[1, 2\]"):
        check_nnunet_raw_dataset(folder)
    _set_json(folder, labels=regions, regions_class_order=[1, 2, 3])
    assert check_nnunet_raw_dataset(folder)["cases"] == ["a"]  # region labels 0..3, as the label file holds
    _set_json(folder, labels={"background": 0, "lesion": [1, 5]}, regions_class_order=[1])
    with pytest.raises(ValueError, match=r"consecutive 0, 1, 2, \.\.\., got \[0, 1, 5\]"):
        check_nnunet_raw_dataset(folder)
    _set_json(folder, labels={"background": 0, "lesion": "1"})
    with pytest.raises(ValueError, match=r"an int or a non-empty list of ints .*\{'lesion': '1'\}"):
        check_nnunet_raw_dataset(folder)


def test_structural_check_compares_raw_label_values(tmp_path: Path, rng: np.random.Generator) -> None:
    folder = write_nnunet_dataset(tmp_path, 22, "V", [_case("a", rng), _case("b", rng)], ["x", "y"])
    affine = nib.load(folder / "labelsTr" / "b.nii.gz").affine
    labels = np.asarray(nib.load(folder / "labelsTr" / "b.nii.gz").dataobj).astype(np.float32)
    labels.flat[:2] = (1.5, 2.25)  # truncated to 1 and 2 by astype(int), a declared label: it passed
    _save(labels, folder / "labelsTr" / "b.nii.gz", affine)
    with pytest.raises(ValueError) as err:
        check_nnunet_raw_dataset(folder)
    assert "labelsTr/b.nii.gz holds non-integer label values [1.5, 2.25]" in str(err.value)
    assert "a.nii.gz" not in str(err.value)  # an integer map is fine
    labels.flat[:2] = (3.0, 5.0)
    _save(labels, folder / "labelsTr" / "b.nii.gz", affine)
    with pytest.raises(ValueError, match=r"labelsTr/b\.nii\.gz holds undeclared label values \[5\]"):
        check_nnunet_raw_dataset(folder)


def test_structural_check_says_numtraining_must_be_an_int(tmp_path: Path, rng: np.random.Generator) -> None:
    folder = write_nnunet_dataset(tmp_path, 23, "N", [_case("a", rng), _case("b", rng)], ["x", "y"])
    _set_json(folder, numTraining="2")  # was: "numTraining is '2' but labelsTr holds 2 cases"
    with pytest.raises(ValueError) as err:
        check_nnunet_raw_dataset(folder)
    assert "numTraining must be an int (the number of training cases), got '2' (str)" in str(err.value)
    assert "labelsTr holds" not in str(err.value)
    _set_json(folder, numTraining=True)
    with pytest.raises(ValueError, match=r"numTraining must be an int .*got True \(bool\)"):
        check_nnunet_raw_dataset(folder)


# ------------------------------------------------------------------------- import with the reference cohort
def _reference_cohort(root: Path, rng: np.random.Generator, cases: tuple[str, ...] = ("p1", "p2")) -> np.ndarray:
    """Two-timepoint cases on one grid, written with qform and sform code 1 (scanner); returns their affine."""
    affine = np.diag([1.0, 1.0, 2.0, 1.0])
    affine[:3, 3] = (-10.5, 3.25, 7.0)
    for case in cases:
        names = [image_filename(t, "flair") for t in (0, 1)] + [BASELINE_MASK, progression_filename(1)]
        for name in names:
            arr = rng.normal(size=SHAPE).astype(np.float32) if "flair" in name else np.zeros(SHAPE, np.uint8)
            img = nib.Nifti1Image(arr, affine)
            img.set_qform(affine, code=1)
            img.set_sform(affine, code=1)
            (root / case).mkdir(parents=True, exist_ok=True)
            nib.save(img, root / case / name)
    return affine


def test_import_with_reference_refuses_an_unpredicted_case(tmp_path: Path, rng: np.random.Generator) -> None:
    affine = _reference_cohort(tmp_path / "ref", rng, ("p1", "p2", "p3"))
    pred, out = tmp_path / "nnunet", tmp_path / "out"
    _save(_four_class(rng), pred / "p1_fu1.nii.gz", affine)  # p2 and p3 not predicted at all: they passed
    with pytest.raises(ValueError, match=r"the reference cohort .*ref holds 2 case\(s\) without any nnU-Net "
                                         r"prediction in .*nnunet: 'p2', 'p3'; predict their pairs"):
        import_nnunet_predictions(pred, out, reference=tmp_path / "ref")
    assert not out.exists()
    assert len(import_nnunet_predictions(pred, out)) == 2  # without a reference: the predicted cases


def test_import_with_reference_refuses_another_grid(tmp_path: Path, rng: np.random.Generator) -> None:
    affine = _reference_cohort(tmp_path / "ref", rng)
    pred, out = tmp_path / "nnunet", tmp_path / "out"
    _save(_four_class(rng), pred / "p1_fu1.nii.gz", affine)
    _save(np.zeros((4, 5, 7), np.uint8), pred / "p2_fu1.nii.gz", affine)  # was imported
    with pytest.raises(ValueError, match=r"p2_fu1\.nii\.gz lies on another grid than t0_flair\.nii\.gz \(shape "
                                         r"\(4, 5, 7\) vs \(4, 5, 3\)\); the reference case's grid is that of "
                                         r".*ref/p2/t0_flair\.nii\.gz"):
        import_nnunet_predictions(pred, out, reference=tmp_path / "ref")
    shifted = affine.copy()
    shifted[0, 3] += 2.0
    _save(_four_class(rng), pred / "p2_fu1.nii.gz", shifted)  # its shape, another place
    with pytest.raises(ValueError, match=r"p2_fu1\.nii\.gz lies on another grid .*affines differ by up to 2"):
        import_nnunet_predictions(pred, out, reference=tmp_path / "ref")
    assert not out.exists()


def test_import_with_reference_writes_the_reference_header(tmp_path: Path, rng: np.random.Generator) -> None:
    affine = _reference_cohort(tmp_path / "ref", rng)
    pred, out = tmp_path / "nnunet", tmp_path / "out"
    labels = _four_class(rng)
    for case in ("p1", "p2"):
        _save(labels, pred / f"{case}_fu1.nii.gz", affine)  # nibabel's default codes: sform 2, qform 0
    import_nnunet_predictions(pred, out, reference=tmp_path / "ref")
    ref = nib.load(tmp_path / "ref" / "p1" / image_filename(0, "flair")).header
    for name in (BASELINE_MASK, progression_filename(1)):
        hdr = nib.load(out / "p1" / name).header
        assert (int(hdr["qform_code"]), int(hdr["sform_code"])) == (int(ref["qform_code"]), int(ref["sform_code"])) \
            == (1, 1)  # were (2, 2): tools comparing form codes did not overlay them on the reference
        assert np.array_equal(hdr.get_sform(), ref.get_sform()) and np.array_equal(hdr.get_qform(), ref.get_qform())
    progression = four_class_to_masks(labels)[1]
    assert np.array_equal(np.asarray(nib.load(out / "p2" / progression_filename(1)).dataobj), progression)
    import_nnunet_predictions(pred, tmp_path / "plain")  # without a reference: the default header
    assert int(nib.load(tmp_path / "plain" / "p1" / BASELINE_MASK).header["sform_code"]) == 2


# ------------------------------------------------------------------------- label maps scaled by their header
def _scaled(stored: np.ndarray, slope: float, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    img = nib.Nifti1Image(stored.astype(np.int16), np.eye(4))
    img.header.set_slope_inter(slope, 0.0)
    nib.save(img, path)


def test_import_reads_a_scaled_four_class_map(tmp_path: Path, rng: np.random.Generator) -> None:
    labels = _four_class(rng)
    _scaled(labels * 3, 1 / 3, tmp_path / "pred" / "a_fu1.nii.gz")  # reads as 1.0000000298, 2.0000000596, ...
    assert np.asarray(nib.load(tmp_path / "pred" / "a_fu1.nii.gz").dataobj).max() != 3  # the values are off
    import_nnunet_predictions(tmp_path / "pred", tmp_path / "out")  # was: "found values such as [1.0, 2.0]"
    baseline, progression = four_class_to_masks(labels)
    assert np.array_equal(np.asarray(nib.load(tmp_path / "out" / "a" / BASELINE_MASK).dataobj), baseline)
    assert np.array_equal(np.asarray(nib.load(tmp_path / "out" / "a" / progression_filename(1)).dataobj),
                          progression)
    _scaled(labels * 2 + 1, 0.5, tmp_path / "half" / "a_fu1.nii.gz")  # 0.5, 1.5, ...: not labels
    with pytest.raises(ValueError, match=r"found values such as \[0\.5, 1\.5, 2\.5, 3\.5\] \(stored values scaled "
                                         r"by scl_slope 0\.5 and scl_inter 0\)"):
        import_nnunet_predictions(tmp_path / "half", tmp_path / "out2")


def test_the_bridge_shows_progress_only_when_asked(tmp_path: Path, rng: np.random.Generator,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    # every other long-running function has `progress`; the bridge's bars could not be turned off
    root = tmp_path / "data"
    (root / "p1").mkdir(parents=True)
    _write_longiseg_case(root, "p1", [rng.random(SHAPE) > 0.7, rng.random(SHAPE) > 0.9], rng)
    capsys.readouterr()
    folder = convert_longiseg_dataset(root, tmp_path / "raw", 503, "Quiet", progress=False)
    import_nnunet_predictions(folder / "labelsTr", tmp_path / "pred", progress=False)
    assert capsys.readouterr().err == ""
    import_nnunet_predictions(folder / "labelsTr", tmp_path / "pred2")
    assert "importing nnU-Net predictions" in capsys.readouterr().err
    for call in (lambda: convert_longiseg_dataset(root, tmp_path / "raw2", 504, "X", progress="no"),
                 lambda: import_nnunet_predictions(folder / "labelsTr", tmp_path / "p3", progress=1)):
        with pytest.raises(TypeError, match="progress must be a bool"):
            call()
