"""nnU-Net bridge against nnU-Net v2's conventions: imagesTs for nnUNetv2_predict, foreign files in a prediction folder."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from longiseg.bridges import (
    NnUNetCase,
    check_nnunet_raw_dataset,
    convert_longiseg_dataset,
    import_nnunet_predictions,
    masks_to_four_class,
    write_nnunet_dataset,
)
from longiseg.data.layout import BASELINE_MASK, image_filename, progression_filename

SHAPE = (4, 5, 3)
AFFINE = np.diag([1.0, 1.0, 2.0, 1.0])


def _cohort(root: Path, cases: dict[str, int], rng: np.random.Generator, masks: bool = True) -> None:
    """Cases in longiseg's layout: ``{case_id: T}``, modalities flair and t2."""
    for case, n in cases.items():
        (root / case).mkdir(parents=True)
        for t in range(n):
            for mod in ("flair", "t2"):
                nib.save(nib.Nifti1Image(rng.normal(size=SHAPE).astype(np.float32), AFFINE),
                         root / case / image_filename(t, mod))
            if masks:
                name = BASELINE_MASK if t == 0 else progression_filename(t)
                nib.save(nib.Nifti1Image((rng.random(SHAPE) > 0.8).astype(np.uint8), AFFINE), root / case / name)


def test_convert_writes_the_test_cohort_as_imagests(tmp_path: Path, rng: np.random.Generator) -> None:
    _cohort(tmp_path / "train", {"a": 2, "b": 3}, rng)
    _cohort(tmp_path / "test", {"c": 3}, rng, masks=False)  # test cases need no masks
    folder = convert_longiseg_dataset(tmp_path / "train", tmp_path / "raw", 510, "Ts", test_root=tmp_path / "test")
    info = check_nnunet_raw_dataset(folder)
    assert info["cases"] == ["a_fu1", "b_fu1", "b_fu2"] and info["test_cases"] == ["c_fu1", "c_fu2"]
    assert sorted(p.name for p in (folder / "imagesTs").iterdir()) == [
        f"c_fu{t}_{ch:04d}.nii.gz" for t in (1, 2) for ch in range(4)]
    # channel order as in imagesTr: prior flair, prior t2, current flair, current t2
    img = nib.load(folder / "imagesTs" / "c_fu2_0003.nii.gz")
    src = nib.load(tmp_path / "test" / "c" / image_filename(2, "t2"))
    assert np.array_equal(np.asarray(img.dataobj), np.asarray(src.dataobj)) and np.allclose(img.affine, AFFINE)
    # what nnUNetv2_predict -i imagesTs writes comes back under the test case names
    pred = tmp_path / "pred"
    pred.mkdir()
    for t in (1, 2):
        nib.save(nib.Nifti1Image(np.full(SHAPE, t, np.uint8), AFFINE), pred / f"c_fu{t}.nii.gz")
    written = import_nnunet_predictions(pred, tmp_path / "out")
    assert sorted(p.name for p in written) == [BASELINE_MASK, progression_filename(1), progression_filename(2)]


def test_convert_refuses_a_test_case_that_is_a_training_case(tmp_path: Path, rng: np.random.Generator) -> None:
    _cohort(tmp_path / "train", {"a": 2}, rng)
    _cohort(tmp_path / "test", {"a": 2}, rng)
    with pytest.raises(ValueError, match=r"holds case\(s\) \['a'\] of root"):
        convert_longiseg_dataset(tmp_path / "train", tmp_path / "raw", 511, "Ts", test_root=tmp_path / "test")
    assert not (tmp_path / "raw" / "Dataset511_Ts").exists()


def test_write_test_cases_checks(tmp_path: Path) -> None:
    images = [np.zeros(SHAPE, np.float32)]
    train = [NnUNetCase("a", images, np.zeros(SHAPE, np.uint8))]
    with pytest.raises(ValueError, match="duplicate case_id 'a'"):
        write_nnunet_dataset(tmp_path, 512, "X", train, ["ch"], test_cases=[NnUNetCase("a", images, None)])
    with pytest.raises(ValueError, match="labels=None"):
        write_nnunet_dataset(tmp_path, 512, "X", [NnUNetCase("a", images, None)], ["ch"])
    with pytest.raises(ValueError, match="test_cases is empty"):
        write_nnunet_dataset(tmp_path, 512, "X", train, ["ch"], test_cases=[])
    with pytest.raises(ValueError, match="images\\[1\\]"):
        NnUNetCase("t", [np.zeros(SHAPE), np.zeros((2, 2, 2))], None)
    assert not any(tmp_path.iterdir())


def test_structural_check_reads_imagests(tmp_path: Path) -> None:
    images = [np.zeros(SHAPE, np.float32)] * 2
    folder = write_nnunet_dataset(tmp_path, 513, "X", [NnUNetCase("a", images, np.zeros(SHAPE, np.uint8))],
                                  ["c0", "c1"], test_cases=[NnUNetCase("t", images, None)])
    assert check_nnunet_raw_dataset(folder)["test_cases"] == ["t"]
    (folder / "imagesTs" / "t_0001.nii.gz").unlink()
    (folder / "imagesTs" / "a_0000.nii.gz").write_bytes(b"")
    (folder / "imagesTs" / "notes.txt").write_text("x")
    with pytest.raises(ValueError) as err:
        check_nnunet_raw_dataset(folder, check_geometry=False)
    msg = str(err.value)
    assert "imagesTs/t_0001.nii.gz is missing" in msg and "imagesTs case 'a' is also a training case" in msg
    assert "imagesTs/notes.txt is not named CASE_XXXX.nii.gz" in msg


@pytest.mark.parametrize("stray", ["BRATS_001.nii.gz", "c_fu1_0000.nii.gz", "c_fu2.nii", "c_fu2.NII.GZ"])
def test_import_refuses_images_not_named_as_exported_pairs(tmp_path: Path, stray: str) -> None:
    pred = tmp_path / "pred"
    pred.mkdir()
    nib.save(nib.Nifti1Image(np.zeros(SHAPE, np.uint8), AFFINE), pred / "c_fu1.nii.gz")
    for extra in ("plans.json", "dataset.json", "predict_from_raw_data_args.json", "c_fu1.npz", "c_fu1.pkl"):
        (pred / extra).write_bytes(b"{}")  # what nnUNetv2_predict writes besides the label maps: ignored
    assert len(import_nnunet_predictions(pred, tmp_path / "ok")) == 2
    nib.save(nib.Nifti1Image(np.zeros(SHAPE, np.uint8), AFFINE), pred / stray)
    with pytest.raises(ValueError, match=rf"not named CASE_fu<t>\.nii\.gz .*{stray.replace('.', '[.]')}"):
        import_nnunet_predictions(pred, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_import_names_input_channel_files(tmp_path: Path) -> None:
    pred = tmp_path / "imagesTs"
    pred.mkdir()
    nib.save(nib.Nifti1Image(np.zeros(SHAPE, np.float32), AFFINE), pred / "c_fu1_0000.nii.gz")
    with pytest.raises(ValueError, match="input channel files CASE_XXXX"):
        import_nnunet_predictions(pred, tmp_path / "out")


def test_import_names_a_follow_up_given_twice(tmp_path: Path) -> None:
    """"c_fu1" and "c_fu01" are one follow-up: refused as named twice, not as a gap ("found follow-ups [1, 1]")."""
    pred = tmp_path / "pred"
    pred.mkdir()
    for name in ("c_fu1.nii.gz", "c_fu01.nii.gz"):
        nib.save(nib.Nifti1Image(np.zeros(SHAPE, np.uint8), AFFINE), pred / name)
    with pytest.raises(ValueError, match=r"case 'c' name follow-up\(s\) \[1\] twice \(\['c_fu01\.nii\.gz', "
                                         r"'c_fu1\.nii\.gz'\]\)"):
        import_nnunet_predictions(pred, tmp_path / "out")
    assert not (tmp_path / "out").exists()

def test_four_class_labels_of_a_test_export_decode_like_training(tmp_path: Path) -> None:
    """A test case and a training case with the same arrays give the same images (only labels differ)."""
    base = np.zeros(SHAPE, bool)
    base[0] = True
    prog = np.zeros(SHAPE, bool)
    prog[1] = True
    images = [np.arange(np.prod(SHAPE), dtype=np.float32).reshape(SHAPE)]
    folder = write_nnunet_dataset(tmp_path, 514, "X", [NnUNetCase("a", images, masks_to_four_class(base, prog))],
                                  ["c0"], test_cases=[NnUNetCase("t", images, None)])
    tr = np.asarray(nib.load(folder / "imagesTr" / "a_0000.nii.gz").dataobj)
    ts = np.asarray(nib.load(folder / "imagesTs" / "t_0000.nii.gz").dataobj)
    assert np.array_equal(tr, ts) and not (folder / "labelsTs").exists()
