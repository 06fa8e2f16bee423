"""predict_case / predict_folder: NIfTI files, affine round trip, no-overwrite behaviour."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
import torch.nn as nn

from longiseg.data import CaseSource, LongitudinalCase, find_cases, load_case
from longiseg.data.layout import BRAIN_MASK, MANIFEST_JSON, image_filename, prediction_filenames
from longiseg.data.predictions import PREDICTION_RECORD
from longiseg.inferers import (
    TriplanarInferer,
    binary_entropy,
    new_lesion_probability,
    postprocess,
    predict_case,
    predict_folder,
    spacing_from_affine,
)
from longiseg.networks.output import LongitudinalOutput


class Voxelwise(nn.Module):
    """2.5D model: baseline logit = 4 * (t0 - 0.5), progression logit = 4 * (t_i - t0) - 1, voxel-wise."""

    def __init__(self, k: int = 1) -> None:
        super().__init__()
        self.k = k

    def forward(self, x: torch.Tensor) -> LongitudinalOutput:
        base = 4 * (x[:, 0, :1] - 0.5)
        prog = (4 * (x[:, 1:, 0] - x[:, :1, 0]) - 1)[:, :, None]
        return LongitudinalOutput(base.repeat(1, self.k, 1, 1), prog.repeat(1, 1, self.k, 1, 1))


SHAPE = (7, 8, 6)


def _affine() -> np.ndarray:
    """Rotated, anisotropic, shifted voxel-to-world matrix."""
    c, s = np.cos(0.3), np.sin(0.3)
    rot = np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]])
    aff = np.eye(4)
    aff[:3, :3] = rot @ np.diag([0.8, 1.0, 2.5])
    aff[:3, 3] = [-10.0, 5.0, 3.0]
    return aff


def _images(t: int = 3, c: int = 2) -> np.ndarray:
    rng = np.random.default_rng(0)
    img = rng.uniform(0.01, 1.0, size=(t, c, *SHAPE)).astype(np.float32)
    img[:, :, 0] = 0.0  # an empty border slab
    return img


def _inferer() -> TriplanarInferer:
    return TriplanarInferer(patch_size=4, progress=False)


def test_predict_case_writes_all_files_with_affine(tmp_path: Path) -> None:
    img, aff = _images(), _affine()
    paths = predict_case(
        Voxelwise(), img, aff, None, tmp_path, "case01", inferer=_inferer(), min_volume_mm3=4.0
    )
    names = prediction_filenames(3)
    for kind in ("mask", "prob", "entropy"):
        assert [p.name for p in paths[kind]] == names[kind]
        assert all(p.parent == tmp_path / "case01" and p.exists() for p in paths[kind])
    assert not [p for p in (tmp_path / "case01").iterdir() if p.name.startswith(".")]  # no temp files left

    base_prob, prog_prob = _inferer()(Voxelwise(), img)  # the same computation as predict_case's: exact below
    prog_prob = new_lesion_probability(base_prob, prog_prob)  # what is saved and thresholded
    spacing = spacing_from_affine(aff)
    np.testing.assert_allclose(spacing, (0.8, 1.0, 2.5))
    for i, path in enumerate(paths["prob"]):
        nii = nib.load(path)
        assert nii.shape == SHAPE and nii.get_data_dtype() == np.float32
        np.testing.assert_allclose(nii.affine, aff, atol=1e-5)
        np.testing.assert_array_equal(
            nii.get_fdata(dtype=np.float32), base_prob if i == 0 else prog_prob[i - 1]
        )
    base_mask = postprocess(base_prob, threshold=0.5, min_volume_mm3=4.0, spacing=spacing)
    for i, path in enumerate(paths["mask"]):
        nii = nib.load(path)
        assert nii.get_data_dtype() == np.uint8
        np.testing.assert_allclose(nii.header.get_zooms(), spacing, rtol=1e-5)
        prob = base_prob if i == 0 else prog_prob[i - 1]
        # progression: the baseline mask is cut out before small components are removed (the default)
        expected = postprocess(prob, threshold=0.5, min_volume_mm3=4.0, spacing=spacing,
                               exclude=None if i == 0 else base_mask)
        np.testing.assert_array_equal(np.asarray(nii.dataobj), expected.astype(np.uint8))
        if i:
            assert not (np.asarray(nii.dataobj).astype(bool) & base_mask).any()
    ent = nib.load(paths["entropy"][1]).get_fdata(dtype=np.float32)
    np.testing.assert_allclose(ent, binary_entropy(prog_prob[0]), atol=1e-7)


def test_predict_case_progression_outside_baseline_off_keeps_the_head_mask(tmp_path: Path) -> None:
    img = _images()
    img[1, 0] = np.maximum(img[1, 0], img[0, 0])  # follow-up at least as bright: progression where t0 is lesion too
    img[1, 0, 2:5, 2:6, 1:5] = 1.0
    img[0, 0, 2:5, 2:6, 1:5] = 0.9  # an old lesion that got brighter: both heads fire on it
    on = predict_case(Voxelwise(), img, _affine(), None, tmp_path / "on", "c", inferer=_inferer())
    off = predict_case(Voxelwise(), img, _affine(), None, tmp_path / "off", "c", inferer=_inferer(),
                       progression_outside_baseline=False)
    base_prob, prog_prob = _inferer()(Voxelwise(), img)
    base = np.asarray(nib.load(on["mask"][0]).dataobj).astype(bool)
    prog_on = np.asarray(nib.load(on["mask"][1]).dataobj).astype(bool)
    prog_off = np.asarray(nib.load(off["mask"][1]).dataobj).astype(bool)
    np.testing.assert_array_equal(prog_off, prog_prob[0] >= 0.5)  # the head's map, saved as it is
    np.testing.assert_array_equal(nib.load(off["prob"][1]).get_fdata(dtype=np.float32), prog_prob[0])
    p_new = new_lesion_probability(base_prob, prog_prob)[0]
    np.testing.assert_array_equal(nib.load(on["prob"][1]).get_fdata(dtype=np.float32), p_new)
    np.testing.assert_array_equal(prog_on, (p_new >= 0.5) & ~base)
    assert (prog_off & base).any() and not (prog_on & base).any()


def test_no_overwrite_unless_asked(tmp_path: Path) -> None:
    img, aff = _images(t=2, c=1), _affine()
    predict_case(Voxelwise(), img, aff, None, tmp_path, "c", inferer=_inferer())
    target = tmp_path / "c" / "baseline_prob.nii.gz"
    before = target.read_bytes()

    class Boom(nn.Module):
        def forward(self, x):
            raise AssertionError("inference must not start when outputs exist")

    with pytest.raises(FileExistsError, match="overwrite=True"):
        predict_case(Boom(), img, aff, None, tmp_path, "c", inferer=_inferer())
    assert target.read_bytes() == before
    paths = predict_case(
        Voxelwise(), img * 0.5, aff, None, tmp_path, "c", inferer=_inferer(), overwrite=True
    )
    assert target.read_bytes() != before and len(paths["mask"]) == 2


def test_optional_outputs_and_restriction(tmp_path: Path) -> None:
    img = _images(t=2, c=1)
    img[1, 0, 5:] = 5.0  # strong "new lesion" signal
    img[0, 0, 5:] = 0.1  # where the baseline has no lesion
    brain = np.ones(SHAPE, bool)
    brain[6] = False
    paths = predict_case(
        Voxelwise(),
        img,
        _affine(),
        None,
        tmp_path,
        "r",
        inferer=_inferer(),
        brain_mask=brain,
        restrict_to_brain="progression",
        save_probabilities=False,
        save_entropy=False,
    )
    assert set(paths) == {"mask"}
    assert sorted(p.name for p in (tmp_path / "r").iterdir()) == sorted([*prediction_filenames(2)["mask"],
                                                                        PREDICTION_RECORD])
    prog = np.asarray(nib.load(paths["mask"][1]).dataobj)
    assert prog[5].all() and not prog[6].any()


def test_predict_case_errors(tmp_path: Path) -> None:
    img, aff = _images(t=2, c=1), _affine()
    with pytest.raises(ValueError, match="K = 1"):
        predict_case(Voxelwise(k=2), img, aff, None, tmp_path, "k2", inferer=_inferer())
    assert not (tmp_path / "k2").exists() or not any((tmp_path / "k2").iterdir())
    # a model whose spec records out_channels=2 is refused before inference (and predict_folder before any case)
    from longiseg import build_model

    two = build_model("segformer_b0", in_channels=1, out_channels=2)
    ran: list[int] = []
    two.register_forward_pre_hook(lambda *a: ran.append(1))
    with pytest.raises(ValueError, match=r"out_channels=2: .*\(K = 1\)"):
        predict_case(two, img, aff, None, tmp_path, "k2b", inferer=_inferer())
    _write_case(tmp_path / "in", "a", _images(t=2, c=2), aff)
    with pytest.raises(ValueError, match=r"out_channels=2"):
        predict_folder(two, tmp_path / "in", tmp_path / "out", inferer=_inferer(), progress=False,
                       reader=lambda s: pytest.fail("a case was read"))
    assert not ran and not (tmp_path / "out").exists()
    with pytest.raises(ValueError, match="restrict_to_brain"):
        predict_case(Voxelwise(), img, aff, None, tmp_path, "x", restrict_to_brain="brain")
    for bad_id in ("a/b", "..", ".", "/abs", ""):
        with pytest.raises(ValueError, match="case id"):
            predict_case(Voxelwise(), img, aff, None, tmp_path, bad_id)
    with pytest.raises(ValueError, match="affine"):
        predict_case(Voxelwise(), img, np.eye(3), None, tmp_path, "x")
    with pytest.raises(ValueError, match="5 dims"):
        predict_case(Voxelwise(), img[0], aff, None, tmp_path, "x")


class _Counting(Voxelwise):
    calls = 0

    def forward(self, x: torch.Tensor) -> LongitudinalOutput:
        self.calls += 1
        return super().forward(x)


@pytest.mark.parametrize(("kwargs", "err", "match"), [
    ({"threshold": 1.5}, ValueError, r"threshold must lie in \[0, 1\]"),
    ({"progression_threshold": 2.0}, ValueError, r"progression_threshold must lie in \[0, 1\]"),
    ({"min_volume_mm3": -1}, ValueError, "min_volume_mm3 must be a finite number >= 0"),
    ({"progression_outside_baseline": "yes"}, TypeError, "progression_outside_baseline must be a bool"),
    ({"overwrite": "False"}, TypeError, "overwrite must be a bool"),
    ({"save_entropy": "no"}, TypeError, "save_entropy must be a bool"),
])
def test_predict_case_refuses_bad_settings_before_inference(tmp_path: Path, kwargs: dict, err: type,
                                                            match: str) -> None:
    model = _Counting()
    with pytest.raises(err, match=match):
        predict_case(model, _images(t=2, c=1), _affine(), None, tmp_path, "x", inferer=_inferer(), **kwargs)
    assert model.calls == 0 and not (tmp_path / "x").exists()


def test_predict_case_spacing_one_value_means_isotropic(tmp_path: Path) -> None:
    paths = predict_case(Voxelwise(), _images(t=2, c=1), np.eye(4), 1.0, tmp_path, "x", inferer=_inferer(),
                         min_volume_mm3=2.0)
    assert len(paths["mask"]) == 2
    with pytest.raises(ValueError, match=r"spacing must have 3 values"):
        predict_case(Voxelwise(), _images(t=2, c=1), _affine(), (1.0, 1.0), tmp_path, "y", inferer=_inferer())
    # a spacing that contradicts the affine measured lesions with another voxel size than the files were written
    # with (the size filter dropped a 27 mm3 lesion of 0.5 x 0.5 x 6 mm voxels as 18 mm3)
    model = _Counting()
    with pytest.raises(ValueError, match=r"spacing \[1.0, 1.0, 1.0\] contradicts the affine, whose voxel size .* is "
                                         r"\[0.8, 1.0, 2.5\] mm"):
        predict_case(model, _images(t=2, c=1), _affine(), 1.0, tmp_path, "z", inferer=_inferer(), min_volume_mm3=2.0)
    assert model.calls == 0 and not (tmp_path / "z").exists()


def _write_case(
    root: Path,
    cid: str,
    img: np.ndarray,
    aff: np.ndarray,
    mods=("flair", "t2"),
    brain: np.ndarray | None = None,
) -> None:
    d = root / cid
    d.mkdir(parents=True)
    for t in range(img.shape[0]):
        for c, m in enumerate(mods):
            nib.save(nib.Nifti1Image(img[t, c], aff), d / image_filename(t, m))
    if brain is not None:
        nib.save(nib.Nifti1Image(brain.astype(np.uint8), aff), d / BRAIN_MASK)


def _probabilities(folder: Path) -> list[np.ndarray]:
    return [nib.load(folder / n).get_fdata() for n in prediction_filenames(2)["prob"]]


def test_predict_folder_round_trip(tmp_path: Path) -> None:
    img, aff = _images(t=2, c=2), _affine()
    brain = np.zeros(SHAPE, bool)
    brain[2:5] = True
    _write_case(tmp_path / "in", "p1", img, aff, brain=brain)
    _write_case(tmp_path / "in", "p2", img[:, ::-1].copy(), aff)
    (tmp_path / "in" / "not_a_case").mkdir()

    out = tmp_path / "out"
    res = predict_folder(Voxelwise(), tmp_path / "in", out, inferer=_inferer(), progress=False)
    assert sorted(res) == ["p1", "p2"]
    direct = predict_case(
        Voxelwise(), img, aff, None, tmp_path / "direct", "p1", inferer=_inferer(), brain_mask=brain
    )
    for a, b in zip(res["p1"]["prob"], direct["prob"]):
        np.testing.assert_array_equal(nib.load(a).get_fdata(), nib.load(b).get_fdata())
        np.testing.assert_allclose(nib.load(a).affine, aff, atol=1e-5)

    with pytest.raises(FileExistsError):
        predict_folder(Voxelwise(), tmp_path / "in", out, inferer=_inferer(), progress=False)
    assert (
        predict_folder(
            Voxelwise(), tmp_path / "in", out, inferer=_inferer(), progress=False, skip_existing=True
        )
        == {}
    )
    with pytest.raises(FileNotFoundError, match="nope"):
        predict_folder(Voxelwise(), tmp_path / "in", out, case_ids=["nope"], progress=False)


def test_predict_folder_ignores_reference_masks_even_incomplete_ones(tmp_path: Path) -> None:
    # a case with its baseline mask but not yet its progression mask (or masks as .nii and .nii.gz) stopped
    # prediction with "missing file(s)", though prediction reads no reference mask
    img, aff = _images(t=2, c=2), _affine()
    _write_case(tmp_path / "in", "p1", img, aff)
    nib.save(nib.Nifti1Image(np.zeros(SHAPE, np.uint8), aff), tmp_path / "in" / "p1" / "baseline_mask.nii.gz")
    nib.save(nib.Nifti1Image(np.zeros(SHAPE, np.uint8), aff), tmp_path / "in" / "p1" / "baseline_mask.nii")
    res = predict_folder(Voxelwise(), tmp_path / "in", tmp_path / "out", inferer=_inferer(), progress=False)
    assert list(res) == ["p1"]
    with pytest.raises(ValueError, match="ambiguous files"):
        find_cases(tmp_path / "in", require_masks=False)  # where masks are read, they are still checked
    (tmp_path / "in" / "p1" / "baseline_mask.nii").unlink()
    with pytest.raises(FileNotFoundError, match="missing file.*progression_t1"):
        find_cases(tmp_path / "in", require_masks=False)
    (source,) = find_cases(tmp_path / "in", require_masks=None)
    assert source.baseline_mask is None and source.progression_masks is None and source.has_progression is None


def test_predict_folder_reads_cases_as_training_does(tmp_path: Path) -> None:
    """The data layer lists and reads the cases: the manifest's modality order, a custom reader's case."""
    img, aff = _images(t=2, c=2), _affine()
    _write_case(tmp_path / "in", "p1", img, aff)
    _write_case(tmp_path / "in", "p2", img[:, ::-1].copy(), aff)  # channels swapped: "flair" holds t2
    predict_folder(Voxelwise(), tmp_path / "in", tmp_path / "sorted", case_ids=["p1"], inferer=_inferer(),
                   progress=False)
    predict_folder(Voxelwise(), tmp_path / "in", tmp_path / "given", modalities=["t2", "flair"],
                   case_ids=["p2"], inferer=_inferer(), progress=False)
    manifest = '{"modalities": ["t2", "flair"], "cases": [{"case_id": "p2"}]}'
    (tmp_path / "in" / MANIFEST_JSON).write_text(manifest)
    res = predict_folder(Voxelwise(), tmp_path / "in", tmp_path / "manifest", inferer=_inferer(),
                         progress=False)
    assert list(res) == ["p2"]  # the manifest's cases only
    for folder in ("given", "manifest"):
        for a, b in zip(_probabilities(tmp_path / "sorted" / "p1"), _probabilities(tmp_path / folder / "p2")):
            np.testing.assert_array_equal(a, b)

    seen: list[tuple[str, object]] = []

    def brighter(source: CaseSource) -> LongitudinalCase:  # receives the listed source: one listing
        seen.append((source.case_id, list(source.modalities)))
        case = load_case(source)
        return case.with_arrays(images=case.images * 0.5)

    predict_folder(Voxelwise(), tmp_path / "in", tmp_path / "custom", reader=brighter,
                   modalities=["flair", "t2"], inferer=_inferer(), progress=False)
    assert seen == [("p2", ["flair", "t2"])] * 2  # the voxel check before any case, then the prediction
    predict_case(Voxelwise(), img[:, ::-1] * 0.5, aff, None, tmp_path / "direct", "p2", inferer=_inferer())
    for a, b in zip(_probabilities(tmp_path / "custom" / "p2"), _probabilities(tmp_path / "direct" / "p2")):
        np.testing.assert_array_equal(a, b)


def test_predict_folder_keeps_what_it_did_not_write_and_checks_timepoints_first(tmp_path: Path) -> None:
    """A case folder holding a user's file is not replaced (by --skip-existing, which re-predicts incomplete
    folders, nor by --overwrite); a case of another T than a model built for one T is refused before any case."""
    img, aff = _images(t=2, c=2), _affine()
    _write_case(tmp_path / "in", "a", img, aff)
    _write_case(tmp_path / "in", "b", img, aff)
    out = tmp_path / "out"
    (out / "b").mkdir(parents=True)
    (out / "b" / "my_correction.txt").write_text("keep me")
    for flags in ({"skip_existing": True}, {"overwrite": True}):
        with pytest.raises(FileExistsError, match=r"out/b holds files that are not predictions .*my_correction"):
            predict_folder(Voxelwise(), tmp_path / "in", out, inferer=_inferer(), progress=False, **flags)
    assert sorted(p.name for p in out.iterdir()) == ["b"] and (out / "b" / "my_correction.txt").is_file()
    # an earlier prediction of case a with three timepoints: replaced by --overwrite (its later follow-up's files
    # were called "files that are not predictions"), refused by --skip-existing (they would stay beside the new)
    predict_folder(Voxelwise(), tmp_path / "in", tmp_path / "three", inferer=_inferer(), progress=False)
    for name in ("progression_t2.nii.gz", "progression_t2_prob.nii.gz"):
        (tmp_path / "three" / "a" / name).write_bytes((tmp_path / "three" / "a" / "progression_t1.nii.gz").read_bytes())
    with pytest.raises(FileExistsError, match=r"three/a holds a prediction of more follow-ups than case 'a' has "
                                              r"\(progression_t2\.nii\.gz, progression_t2_prob\.nii\.gz\)"):
        predict_folder(Voxelwise(), tmp_path / "in", tmp_path / "three", inferer=_inferer(), progress=False,
                       skip_existing=True)
    predict_folder(Voxelwise(), tmp_path / "in", tmp_path / "three", inferer=_inferer(), progress=False,
                   overwrite=True)
    assert not list((tmp_path / "three").rglob("progression_t2*"))
    fixed = Voxelwise()
    fixed.num_timepoints = 3
    with pytest.raises(ValueError, match="case 'a' has 2 timepoints but the model was built for 3"):
        predict_folder(fixed, tmp_path / "in", tmp_path / "out3", inferer=_inferer(), progress=False)
    assert not (tmp_path / "out3").exists()


def test_predict_folder_errors_before_any_case(tmp_path: Path) -> None:
    img, aff = _images(t=2, c=2), _affine()
    _write_case(tmp_path / "in", "a", img, aff)
    _write_case(tmp_path / "in", "b", img, aff)
    (tmp_path / "in" / "b" / image_filename(1, "t2")).unlink()
    with pytest.raises(FileNotFoundError, match="case 'b': missing image .*t1_t2"):
        predict_folder(Voxelwise(), tmp_path / "in", tmp_path / "out", inferer=_inferer(), progress=False)
    assert not (tmp_path / "out").exists()  # case "a" was not predicted either
    shutil.rmtree(tmp_path / "in" / "b")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no case folders"):
        predict_folder(Voxelwise(), tmp_path / "empty", tmp_path / "out", progress=False)
    with pytest.raises(FileNotFoundError, match="is not a folder"):
        predict_folder(Voxelwise(), tmp_path / "absent", tmp_path / "out", progress=False)
    with pytest.raises(ValueError, match="case id"):
        predict_folder(Voxelwise(), tmp_path / "in", tmp_path / "out", case_ids=[".."], progress=False)
    with pytest.raises(ValueError, match=r"case_ids name case\(s\) \['a'\] more than once"):
        predict_folder(Voxelwise(), tmp_path / "in", tmp_path / "out", case_ids=["a", "a"], progress=False)
    with pytest.raises(ValueError, match="progression_threshold must lie in"):
        predict_folder(Voxelwise(), tmp_path / "in", tmp_path / "out", progression_threshold=3.0, progress=False)
    with pytest.raises(TypeError, match="skip_existing must be a bool"):
        predict_folder(Voxelwise(), tmp_path / "in", tmp_path / "out", skip_existing="no", progress=False)
    with pytest.raises(TypeError, match="predict_folder passes predict_case's settings only"):
        predict_folder(Voxelwise(), tmp_path / "in", tmp_path / "out", treshold=0.3, progress=False)
    assert not (tmp_path / "out").exists()
    nib.save(nib.Nifti1Image(np.full(SHAPE, 2, np.uint8), aff), tmp_path / "in" / "a" / BRAIN_MASK)
    with pytest.raises(ValueError, match="brain_mask.nii.gz must be binary"):
        predict_folder(Voxelwise(), tmp_path / "in", tmp_path / "out", case_ids=["a"], inferer=_inferer(),
                       progress=False)


def test_a_case_whose_files_lie_on_two_grids_is_refused_before_any_case_is_predicted(tmp_path: Path) -> None:
    """The headers of every case are checked first: a follow-up of the last case on another grid no longer
    fails after the cases before it were predicted (hours, on a large cohort)."""
    img, aff = _images(t=2, c=2), _affine()
    _write_case(tmp_path / "in", "a", img, aff)
    _write_case(tmp_path / "in", "b", img, aff)
    shifted = aff.copy()
    shifted[:3, 3] += 0.5
    nib.save(nib.Nifti1Image(img[1, 1], shifted), tmp_path / "in" / "b" / image_filename(1, "t2"))
    with pytest.raises(ValueError, match=r"case 'b': image .*t1_t2\.nii\.gz lies on another grid .*affines differ by up to 0\.5 mm"):
        predict_folder(Voxelwise(), tmp_path / "in", tmp_path / "out", inferer=_inferer(), progress=False)
    assert not (tmp_path / "out").exists()  # case "a" was not predicted either



def test_an_image_the_reader_cannot_normalise_is_refused_before_any_case_is_predicted(tmp_path: Path) -> None:
    """The voxel check reads every case as prediction will (here with z-scores): an all-zero follow-up image of
    the last case, without a brain mask, fails before the first case is written, naming the case and image."""
    from longiseg.inferers.predict import read_zscored

    img, aff = _images(t=2, c=2), _affine()
    _write_case(tmp_path / "in", "a", img, aff)
    _write_case(tmp_path / "in", "b", img, aff)
    nib.save(nib.Nifti1Image(np.zeros_like(img[1, 1]), aff), tmp_path / "in" / "b" / image_filename(1, "t2"))
    with pytest.raises(ValueError, match=r"case 'b': image \(t=1, t2\) has no voxel to normalise: it is all zero"):
        predict_folder(Voxelwise(), tmp_path / "in", tmp_path / "out", inferer=_inferer(), progress=False,
                       reader=read_zscored)
    assert not (tmp_path / "out").exists()  # case "a" was not predicted either

class _Scaled(Voxelwise):
    """:class:`Voxelwise` with one weight: the logits times ``scale`` (another value: another model)."""

    def __init__(self, scale: float = 1.0) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.tensor([scale]))
        self.calls = 0

    def forward(self, x: torch.Tensor) -> LongitudinalOutput:
        self.calls += 1
        out = super().forward(x)
        return LongitudinalOutput(out.baseline * self.scale, out.progression * self.scale)


def _record(folder: Path) -> dict:
    return json.loads((folder / PREDICTION_RECORD).read_text(encoding="utf-8"))


def _three_cases(root: Path) -> None:
    img, aff = _images(t=2, c=2), _affine()
    for i, cid in enumerate(("a", "b", "c")):
        _write_case(root, cid, img * (0.5 + 0.2 * i), aff)


def test_skip_existing_keeps_only_cases_of_the_same_model_and_settings(tmp_path: Path) -> None:
    """An interrupted --overwrite with model B, resumed with --skip-existing, must not keep model A's cases: each
    case folder records its model and settings, and a case of others is refused before any case is predicted."""
    _three_cases(tmp_path / "in")
    out = tmp_path / "out"
    predict_folder(_Scaled(1.0), tmp_path / "in", out, inferer=_inferer(), progress=False)
    record = _record(out / "a")
    assert record["model"]["class"].endswith("_Scaled") and record["model"]["name"] is None
    assert record["inferer"]["patch_size"] == [4, 4] and "device" not in record["inferer"]
    assert record["settings"]["threshold"] == 0.5 and record["modalities"] == ["flair", "t2"]
    assert record["reader"] == "longiseg.data.loading.load_case" and record["longiseg_version"]
    # the same weights in another instance, wrapped, run elsewhere in other batches: the same model, kept
    same = nn.DataParallel(_Scaled(1.0))
    assert predict_folder(same, tmp_path / "in", out, inferer=TriplanarInferer(patch_size=4, batch_size=3,
                                                                              progress=True),
                          progress=False, skip_existing=True) == {}
    assert same.module.calls == 0
    # model B replaced case "a" only (an --overwrite run interrupted after one case)
    predict_folder(_Scaled(2.0), tmp_path / "in", out, case_ids=["a"], inferer=_inferer(), progress=False,
                   overwrite=True)
    before = {f: f.read_bytes() for f in out.rglob("*") if f.is_file()}
    other = _Scaled(2.0)
    with pytest.raises(FileExistsError, match=r"case 'b' was predicted by another model or other settings "
                                              r"\(model\.weights_sha256 .* recorded, .* now\); pass overwrite=True "
                                              r"\(--overwrite\) to replace it"):
        predict_folder(other, tmp_path / "in", out, inferer=_inferer(), progress=False, skip_existing=True)
    assert other.calls == 0 and {f: f.read_bytes() for f in out.rglob("*") if f.is_file()} == before
    # other settings of the outputs: refused, naming the setting; the case of model B itself is kept
    from longiseg.inferers.predict import read_zscored

    for kwargs, changed in (({"threshold": 0.4}, "settings.threshold 0.5 recorded, 0.4 now"),
                            ({"inferer": TriplanarInferer(patch_size=4, flip_tta=True, progress=False)},
                             "inferer.flip_tta false recorded, true now"),
                            ({"modalities": ["t2", "flair"]}, "modalities"),
                            # names in full (they were cut to "longiseg.dat...", which said nothing)
                            ({"reader": read_zscored}, 'reader "longiseg.data.loading.load_case" recorded, '
                                                       '"longiseg.inferers.predict.read_zscored" now')):
        kwargs = {"inferer": _inferer(), **kwargs}
        with pytest.raises(FileExistsError, match=rf"case 'a' was predicted by another model or other settings "
                                                  rf"\({changed}"):
            predict_folder(_Scaled(2.0), tmp_path / "in", out, case_ids=["a"], progress=False, skip_existing=True,
                           **kwargs)
    assert predict_folder(_Scaled(2.0), tmp_path / "in", out, case_ids=["a"], inferer=_inferer(), progress=False,
                          skip_existing=True) == {}
    # --overwrite replaces the others' cases; then --skip-existing keeps all of them
    assert sorted(predict_folder(_Scaled(2.0), tmp_path / "in", out, inferer=_inferer(), progress=False,
                                 overwrite=True)) == ["a", "b", "c"]
    assert len({_record(out / c)["model"]["weights_sha256"] for c in "abc"}) == 1
    assert _record(out / "a")["model"]["weights_sha256"] != record["model"]["weights_sha256"]
    assert predict_folder(_Scaled(2.0), tmp_path / "in", out, inferer=_inferer(), progress=False,
                          skip_existing=True) == {}


def test_predictions_record_each_cases_patient_for_the_reports_on_them(tmp_path: Path) -> None:
    """A predictions folder has no manifest: the cases' patients (two sessions of one patient here) come from
    the records, so that a report on the predictions counts patients as one on the references does; a manifest
    that regroups the cases changes no voxel, so --skip-existing still keeps them."""
    from longiseg.data import find_mask_cases

    _three_cases(tmp_path / "in")
    (tmp_path / "in" / MANIFEST_JSON).write_text(
        '{"cases": [{"case_id": "a", "patient_id": "P1"}, {"case_id": "b", "patient_id": "P1"}, {"case_id": "c"}]}')
    out = tmp_path / "out"
    predict_folder(Voxelwise(), tmp_path / "in", out, inferer=_inferer(), progress=False)
    assert [_record(out / c)["patient_id"] for c in "abc"] == ["P1", "P1", "c"]
    assert [(e.case_id, e.patient_id) for e in find_mask_cases(out)] == [("a", "P1"), ("b", "P1"), ("c", "c")]
    (tmp_path / "in" / MANIFEST_JSON).write_text(
        '{"cases": [{"case_id": "a", "patient_id": "P1"}, {"case_id": "b", "patient_id": "P2"}, {"case_id": "c"}]}')
    masks = {f: f.read_bytes() for f in out.rglob("*.nii.gz")}
    assert predict_folder(Voxelwise(), tmp_path / "in", out, inferer=_inferer(), progress=False,
                          skip_existing=True) == {}
    # the kept cases' records follow the manifest (it was the stale P1 for "b"); their masks are untouched
    assert [(e.case_id, e.patient_id) for e in find_mask_cases(out)] == [("a", "P1"), ("b", "P2"), ("c", "c")]
    assert {f: f.read_bytes() for f in out.rglob("*.nii.gz")} == masks
    # references (no record) and records of earlier versions (no patient, or unreadable): each case its own patient
    (out / "a" / PREDICTION_RECORD).unlink()
    (out / "b" / PREDICTION_RECORD).write_text("{not json")
    record = _record(out / "c")
    (out / "c" / PREDICTION_RECORD).write_text(json.dumps({k: v for k, v in record.items() if k != "patient_id"}))
    assert [e.patient_id for e in find_mask_cases(out)] == ["a", "b", "c"]


def test_skip_existing_refuses_a_complete_case_without_a_record(tmp_path: Path) -> None:
    """A complete case folder of an earlier version (no record) or with an unreadable record is not kept blindly."""
    _three_cases(tmp_path / "in")
    out = tmp_path / "out"
    predict_folder(Voxelwise(), tmp_path / "in", out, inferer=_inferer(), progress=False)
    (out / "b" / PREDICTION_RECORD).unlink()
    (out / "c" / PREDICTION_RECORD).write_text("{not json")
    for cid in ("b", "c"):
        with pytest.raises(FileExistsError, match=rf"case '{cid}' was predicted without a readable record of its "
                                                  r"model and settings .*; pass overwrite=True \(--overwrite\)"):
            predict_folder(Voxelwise(), tmp_path / "in", out, case_ids=["a", cid], inferer=_inferer(),
                           progress=False, skip_existing=True)
    shutil.rmtree(out / "b")  # a missing case is predicted, with its record
    assert list(predict_folder(Voxelwise(), tmp_path / "in", out, case_ids=["a", "b"], inferer=_inferer(),
                               progress=False, skip_existing=True)) == ["b"]
    assert {**_record(out / "b"), "patient_id": "a"} == _record(out / "a")
    with pytest.raises(TypeError, match="predict_case's settings only"):
        predict_folder(Voxelwise(), tmp_path / "in", out, record={}, progress=False, skip_existing=True)


def test_predict_folder_prepares_cases_as_the_models_training_did(tmp_path: Path) -> None:
    """A model of longiseg train records z-score preprocessing in its spec: predict_folder without a reader
    reads each case that way (the Python call and longiseg predict give the same masks); a model without such a
    record gets the images as stored."""
    from longiseg.inferers.predict import read_zscored, spec_reader
    from longiseg.spec import ModelSpec

    img, aff = _images(t=2, c=2), _affine()
    _write_case(tmp_path / "in", "a", 50.0 + 400.0 * img, aff)  # raw scanner-like intensities
    model = Voxelwise()
    assert spec_reader(model) is load_case
    model.spec = ModelSpec(name="voxelwise", preprocessing={"normalization": "zscore"})
    assert spec_reader(model) is read_zscored
    predict_folder(model, tmp_path / "in", tmp_path / "default", inferer=_inferer(), progress=False)
    predict_folder(model, tmp_path / "in", tmp_path / "zscored", inferer=_inferer(), progress=False,
                   reader=read_zscored)
    predict_folder(model, tmp_path / "in", tmp_path / "raw", inferer=_inferer(), progress=False, reader=load_case)
    name = "baseline_prob.nii.gz"
    default, zscored, raw = (np.asarray(nib.load(tmp_path / d / "a" / name).dataobj)
                             for d in ("default", "zscored", "raw"))
    assert np.array_equal(default, zscored) and not np.array_equal(default, raw)
    model.spec = ModelSpec(name="voxelwise", preprocessing={"normalization": "minmax"})
    with pytest.raises(ValueError, match="normalization 'minmax' is not one this version applies"):
        predict_folder(model, tmp_path / "in", tmp_path / "other", inferer=_inferer(), progress=False)


def test_a_case_of_other_voxels_than_the_training_cases_is_predicted_with_a_warning(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """longiseg train records its cases' median voxel size (sorted: the axes' orientation does not matter);
    nothing resamples, so a case whose voxels are more than 25 % larger or smaller along an axis was predicted
    without a word."""
    import logging

    from longiseg.inferers import VOXEL_SIZE_RTOL, voxel_size_mismatch
    from longiseg.spec import ModelSpec

    model = Voxelwise()
    assert voxel_size_mismatch(model, (1.0, 1.0, 1.0)) is None  # nothing recorded
    model.spec = ModelSpec(name="voxelwise", preprocessing={"voxel_size_mm": [2.5, 0.8, 1.0]})
    assert voxel_size_mismatch(model, (2.5, 1.0, 0.8)) is None  # the case's axes in another order
    assert voxel_size_mismatch(model, (0.8 * (1 + VOXEL_SIZE_RTOL / 2), 1.0, 2.5)) is None
    assert voxel_size_mismatch(model, (0.8, 1.0, 1.0)) == (0.8, 1.0, 2.5)
    assert voxel_size_mismatch(nn.DataParallel(model), (1.0, 1.0, 1.0)) == (0.8, 1.0, 2.5)
    with pytest.raises(ValueError, match="spacing must have 3 values"):
        voxel_size_mismatch(model, (1.0, 1.0))
    broken = Voxelwise()
    broken.spec = ModelSpec(name="voxelwise", preprocessing={"voxel_size_mm": [1.0, -1.0, 2.0]})
    with pytest.raises(ValueError, match=r"model.spec.preprocessing\['voxel_size_mm'\] must hold positive"):
        voxel_size_mismatch(broken, (1.0, 1.0, 1.0))

    with caplog.at_level(logging.WARNING, logger="longiseg"):
        predict_case(model, _images(t=2, c=1), _affine(), None, tmp_path / "same", "same", inferer=_inferer())
        assert not [r for r in caplog.records if "voxel size" in r.getMessage()]  # _affine(): 0.8 x 1 x 2.5 mm
        for out in ("iso", "iso-again"):
            predict_case(model, _images(t=2, c=1), np.eye(4), None, tmp_path / out, "iso", inferer=_inferer())
    warned = [r.getMessage() for r in caplog.records if "voxel size" in r.getMessage()]
    assert warned == ["case 'iso': voxel size 1 x 1 x 1 mm differs from the 0.8 x 1 x 2.5 mm (sorted) the model was "
                      "trained on by more than 25%; resample the case (longiseg register --spacing) for the "
                      "accuracy the model was validated with"]


def test_predict_folder_shows_the_windows_of_each_case_below_the_cases(tmp_path: Path,
                                                                      capsys: pytest.CaptureFixture[str]) -> None:
    # longiseg predict showed only its bar over the cases, which stood at 0/1 for the minutes a case takes on a CPU
    from longiseg.inferers import InferenceConfig
    from longiseg.spec import ModelSpec

    _write_case(tmp_path / "in", "a", _images(t=2, c=2), _affine())
    model = Voxelwise()
    model.spec = ModelSpec(name="voxelwise", dim="2.5D",
                           inference=InferenceConfig(patch_size=4, planes=["axial"]).to_dict())
    predict_folder(model, tmp_path / "in", tmp_path / "quiet", progress=False)
    assert "tri-planar" not in capsys.readouterr().err
    for out, given in (("recorded", {}), ("default", {"inferer": None})):
        predict_folder(model, tmp_path / "in", tmp_path / out, progress=True, **given)
        err = capsys.readouterr().err
        assert "cases" in err and "tri-planar" in err, (out, err)


def _claims(out: Path) -> list[str]:
    return sorted(p.name for p in out.iterdir() if p.name.startswith("."))


def test_skip_existing_workers_split_the_cases_by_claims(tmp_path: Path, caplog: pytest.LogCaptureFixture,
                                                         live_pid: int) -> None:
    """Several --skip-existing workers on one output folder: a case claimed by a live process (here: this test's
    sleeping child, on this host; or a recent claim of another host) is left to it, an abandoned claim (a process
    that no longer runs; another host's claim older than a day) is taken over; a worker holds the claim of the
    case it predicts and removes it afterwards."""
    import os
    import socket
    import subprocess
    import sys
    import time

    _three_cases(tmp_path / "in")
    for cid in ("d", "e"):
        _write_case(tmp_path / "in", cid, _images(t=2, c=2), _affine())
    out = tmp_path / "out"
    out.mkdir()
    host = socket.gethostname()
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True,
                          check=True)
    dead_pid = int(gone.stdout)  # a process that ran on this host and no longer runs
    claims = {"b": {"host": host, "pid": live_pid}, "c": {"host": host, "pid": dead_pid},
              "d": {"host": "another-node", "pid": 1}, "e": {"host": "another-node", "pid": 1}}
    for cid, claim in claims.items():
        (out / f".{cid}.claim").write_text(json.dumps(claim))
    day_ago = time.time() - 25 * 3600
    os.utime(out / ".e.claim", (day_ago, day_ago))
    held: list[tuple[str, dict | None]] = []
    broken: list[str] = []

    def reader(source: CaseSource) -> LongitudinalCase:
        claim = out / f".{source.case_id}.claim"
        held.append((source.case_id, json.loads(claim.read_text()) if claim.exists() else None))
        if broken:
            raise RuntimeError(broken[0])
        return load_case(source)

    with caplog.at_level("INFO", logger="longiseg.inferers"):
        res = predict_folder(Voxelwise(), tmp_path / "in", out, inferer=_inferer(), progress=False, reader=reader,
                             skip_existing=True)
    assert sorted(res) == ["a", "c", "e"]
    assert [cid for cid, _ in held] == ["a", "c", "e"]
    assert all(c is not None and c["host"] == host and c["pid"] == os.getpid() for _, c in held)
    assert _claims(out) == [".b.claim", ".d.claim"]  # the live holders' claims stay, this run's are removed
    assert sorted(p.name for p in out.iterdir() if not p.name.startswith(".")) == ["a", "c", "e"]
    assert f"skipping case b: another process (pid {live_pid} on {host}) is predicting it" in caplog.text
    assert "skipping case d: another process (pid 1 on another-node) is predicting it" in caplog.text
    # the holders finished (their claims gone, their cases complete): a later run keeps them, claims nothing
    for cid in ("b", "d"):
        (out / f".{cid}.claim").unlink()
    predict_folder(Voxelwise(), tmp_path / "in", tmp_path / "ref", case_ids=["b", "d"], inferer=_inferer(),
                   progress=False, reader=reader)
    for cid in ("b", "d"):
        shutil.copytree(tmp_path / "ref" / cid, out / cid)
    assert predict_folder(Voxelwise(), tmp_path / "in", out, inferer=_inferer(), progress=False, reader=reader,
                          skip_existing=True) == {}
    assert _claims(out) == []
    # a failing case releases its claim too
    shutil.rmtree(out / "a")
    broken.append("unreadable")
    with pytest.raises(RuntimeError, match="unreadable"):
        predict_folder(Voxelwise(), tmp_path / "in", out, inferer=_inferer(), progress=False, reader=reader,
                       skip_existing=True)
    assert held[-1][0] == "a" and held[-1][1] is not None and _claims(out) == []


def test_skip_existing_workers_of_two_models_stop_at_the_first_case_both_want(tmp_path: Path, live_pid: int) -> None:
    """Two --skip-existing workers of different checkpoints (or settings) started together on one folder each left
    the other's claimed cases to it and both exited 0, the folder holding cases of two models: a claim records
    a digest of its worker's model and settings, and a worker meeting another's refuses."""
    import socket

    from longiseg.data.claims import claim_case

    _three_cases(tmp_path / "in")
    out = tmp_path / "out"
    out.mkdir()
    seen: list[dict] = []  # the claims of the runs below, as their reader finds them
    folder = [tmp_path / "first"]

    def reader(source: CaseSource) -> LongitudinalCase:
        seen.append(json.loads((folder[0] / f".{source.case_id}.claim").read_text()))
        return load_case(source)

    predict_folder(Voxelwise(), tmp_path / "in", folder[0], case_ids=["a"], inferer=_inferer(), progress=False,
                   skip_existing=True, reader=reader)
    producer = seen[0]["producer"]
    folder[0] = out
    assert isinstance(producer, str) and len(producer) == 64
    live = {"host": socket.gethostname(), "pid": live_pid, "command": "longiseg predict --skip-existing"}
    (out / ".a.claim").write_text(json.dumps({**live, "producer": "0" * 64}))
    with pytest.raises(FileExistsError, match=rf"case 'a' is being predicted into {re.escape(str(out))} by another "
                                              rf"model or other settings \(pid {live_pid} on"):
        predict_folder(Voxelwise(), tmp_path / "in", out, inferer=_inferer(), progress=False, skip_existing=True,
                       reader=reader)
    assert _claims(out) == [".a.claim"] and not [p for p in out.iterdir() if not p.name.startswith(".")]
    # a worker of this model and these settings: its case is left to it, the others predicted
    (out / ".a.claim").write_text(json.dumps({**live, "producer": producer}))
    res = predict_folder(Voxelwise(), tmp_path / "in", out, inferer=_inferer(), progress=False, skip_existing=True,
                         reader=reader)
    assert sorted(res) == ["b", "c"] and [c["producer"] for c in seen[1:]] == [producer] * 2
    (out / ".a.claim").unlink()
    claimed, mine = claim_case(out, "a", producer="1" * 64)
    assert json.loads(claimed.read_text())["producer"] == "1" * 64
    claimed.unlink()
    with pytest.raises(TypeError, match="producer must be a str"):
        claim_case(out, "a", producer=3)


def test_a_run_that_writes_the_folder_alone_claims_it(tmp_path: Path, live_pid: int) -> None:
    """Two predict --overwrite runs of different models into one folder both succeeded, their cases mixed (one
    case of each model): a run without skip_existing holds the folder, a second one (or a --skip-existing worker)
    is refused before any case is read, and one is refused while --skip-existing workers hold cases there."""
    import socket

    from longiseg.data.claims import FOLDER_CLAIM

    _three_cases(tmp_path / "in")
    out = tmp_path / "out"
    out.mkdir()
    read: list[str] = []

    def reader(source: CaseSource) -> LongitudinalCase:
        read.append(source.case_id)
        assert (out / FOLDER_CLAIM).is_file()  # held while the cases are predicted
        return load_case(source)

    # another live process; the message names the holder's command
    live = {"host": socket.gethostname(), "pid": live_pid, "command": "longiseg register"}
    for name, kwargs in ((FOLDER_CLAIM, {}), (FOLDER_CLAIM, {"skip_existing": True}), (".b.claim", {})):
        (out / name).write_text(json.dumps(live))
        with pytest.raises(FileExistsError, match=rf"{re.escape(str(out))} is being written by (another longiseg "
                                                  rf"register \(|processes sharing it \(longiseg register, )"
                                                  rf"pid {live_pid}"):
            predict_folder(Voxelwise(), tmp_path / "in", out, inferer=_inferer(), progress=False, reader=reader,
                           **kwargs)
        assert _claims(out) == [name]  # the holder's claim stays; nothing else was written
        (out / name).unlink()
    assert not read and list(out.iterdir()) == []
    res = predict_folder(Voxelwise(), tmp_path / "in", out, inferer=_inferer(), progress=False, reader=reader,
                         check_case=lambda s: None)
    assert sorted(res) == ["a", "b", "c"] and _claims(out) == []  # released
    res = predict_folder(Voxelwise(), tmp_path / "in", tmp_path / "new", inferer=_inferer(), progress=False)
    assert sorted(p.name for p in (tmp_path / "new").iterdir()) == ["a", "b", "c"]


def test_a_sharing_worker_stops_when_a_run_claims_the_folder_meanwhile(tmp_path: Path, live_pid: int) -> None:
    """A --skip-existing worker checked the folder's claim once, before its first case: a run that claimed the folder
    between two of the worker's cases (it saw no case claim then) had the worker write the rest of the cases into
    it. The worker checks again after claiming each case, releases that case and stops."""
    import socket

    from longiseg.data.claims import FOLDER_CLAIM

    _three_cases(tmp_path / "in")
    out = tmp_path / "out"
    read: list[str] = []

    def reader(source: CaseSource) -> LongitudinalCase:
        read.append(source.case_id)
        if source.case_id == "a":  # another run takes the folder while this worker predicts its first case
            (out / FOLDER_CLAIM).write_text(json.dumps({"host": socket.gethostname(), "pid": live_pid,
                                                        "command": "longiseg predict"}))
        return load_case(source)

    with pytest.raises(FileExistsError, match=r"is being written by another longiseg predict \(pid .*which does not "
                                              r"share it"):
        predict_folder(Voxelwise(), tmp_path / "in", out, inferer=_inferer(), progress=False, reader=reader,
                       skip_existing=True)
    assert read == ["a"]
    assert _claims(out) == [FOLDER_CLAIM]  # the other run's claim stays, this worker's case claim is released
    assert sorted(p.name for p in out.iterdir() if not p.name.startswith(".")) == ["a"]


@pytest.mark.skipif(not Path("/proc/self/stat").is_file(), reason="needs /proc (process start times)")
def test_a_claim_whose_pid_now_names_another_process_is_taken_over(tmp_path: Path, live_pid: int) -> None:
    """A claim records its process' start time: the same pid with another start time is another process (the
    system gave the pid again), so the claim is abandoned; with its own start time the holder is live."""
    import socket

    from longiseg.utils.io import process_start_time

    _three_cases(tmp_path / "in")
    out = tmp_path / "out"
    out.mkdir()
    host, parent = socket.gethostname(), live_pid
    started = process_start_time(parent)
    assert started is not None
    claims = {"a": {"host": host, "pid": parent, "started": started},
              "b": {"host": host, "pid": parent, "started": started + 1}}
    for cid, claim in claims.items():
        (out / f".{cid}.claim").write_text(json.dumps(claim))
    res = predict_folder(Voxelwise(), tmp_path / "in", out, inferer=_inferer(), progress=False, skip_existing=True)
    assert sorted(res) == ["b", "c"]
    assert _claims(out) == [".a.claim"]


def test_skip_existing_keeps_a_case_another_process_completed_meanwhile(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A case that another process (one that does not claim cases) completes while this worker predicts it:
    kept, with an INFO line, when its record is this run's; refused when another model wrote it."""
    _three_cases(tmp_path / "in")
    out = tmp_path / "out"
    meanwhile: dict[str, str | None] = {"ref": None}

    def reader(source: CaseSource) -> LongitudinalCase:
        if source.case_id == "b" and meanwhile["ref"]:  # the other process saves "b" while this one predicts it
            shutil.copytree(tmp_path / meanwhile["ref"] / "b", out / "b")
        return load_case(source)

    for model, ref in ((Voxelwise(), "same"), (_Scaled(2.0), "other")):
        predict_folder(model, tmp_path / "in", tmp_path / ref, case_ids=["b"], inferer=_inferer(), progress=False,
                       reader=reader)
    meanwhile["ref"] = "same"

    with caplog.at_level("INFO", logger="longiseg.inferers"):
        res = predict_folder(Voxelwise(), tmp_path / "in", out, inferer=_inferer(), progress=False, reader=reader,
                             skip_existing=True)
    assert sorted(res) == ["a", "c"]
    assert "skipping case b: another process predicted it meanwhile" in caplog.text
    assert {**_record(out / "b"), "patient_id": "a"} == _record(out / "a") and _claims(out) == []
    shutil.rmtree(out)
    meanwhile["ref"] = "other"
    with pytest.raises(FileExistsError, match=r"case 'b' was predicted by another model or other settings"):
        predict_folder(Voxelwise(), tmp_path / "in", out, inferer=_inferer(), progress=False, reader=reader,
                       skip_existing=True)
    assert _claims(out) == [] and (out / "b" / PREDICTION_RECORD).read_bytes() == (
        tmp_path / "other" / "b" / PREDICTION_RECORD).read_bytes()


def test_cases_without_the_brain_mask_others_have_are_warned_of(tmp_path: Path,
                                                                caplog: pytest.LogCaptureFixture) -> None:
    """A case whose brain mask is missing is normalised, cropped and restricted with its non-zero voxels instead:
    on images with skull a different result, which was silent where the other cases had their masks."""
    img, aff = _images(t=2, c=2), _affine()
    brain = np.ones(SHAPE, bool)
    _write_case(tmp_path / "in", "with", img, aff, brain=brain)
    _write_case(tmp_path / "in", "without", img, aff)
    with caplog.at_level("WARNING", logger="longiseg"):
        predict_folder(Voxelwise(), tmp_path / "in", tmp_path / "out", inferer=_inferer(), progress=False)
    assert "1 of 2 cases have no brain_mask.nii.gz ('without'): their brain is taken as the voxels non-zero" \
        in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING", logger="longiseg"):  # none has one: nothing to compare with
        predict_folder(Voxelwise(), tmp_path / "in", tmp_path / "out2", case_ids=["without"], inferer=_inferer(),
                       progress=False)
    assert "brain_mask" not in caplog.text


def test_a_case_that_gained_a_follow_up_is_predicted_again_saying_so(tmp_path: Path,
                                                                     caplog: pytest.LogCaptureFixture) -> None:
    """--skip-existing predicted such a case again (right) calling its prediction 'incomplete (an interrupted
    run?)' (wrong: it is complete, for the follow-ups the case had)."""
    img, aff = _images(t=3, c=2), _affine()
    _write_case(tmp_path / "in", "c", img, aff)
    predict_folder(Voxelwise(), tmp_path / "in", tmp_path / "out", inferer=_inferer(), progress=False)
    for c, m in enumerate(("flair", "t2")):
        nib.save(nib.Nifti1Image(img[2, c], aff), tmp_path / "in" / "c" / image_filename(3, m))
    with caplog.at_level("WARNING", logger="longiseg"):
        predict_folder(Voxelwise(), tmp_path / "in", tmp_path / "out", inferer=_inferer(), progress=False,
                       skip_existing=True)
    assert "holds a prediction of its first 2 follow-up(s), the case now has 3; predicting it again" in caplog.text
    assert (tmp_path / "out" / "c" / prediction_filenames(4)["mask"][-1]).is_file()
