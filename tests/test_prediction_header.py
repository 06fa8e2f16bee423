"""Predictions carry the input's spatial header: qform and sform (matrices and codes) and units, nothing else."""

from __future__ import annotations

import dataclasses
import json
import pickle
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
import torch.nn as nn

from longiseg.data.layout import image_filename, prediction_filenames
from longiseg.data.loading import load_case
from longiseg.data.predictions import case_spatial_header, read_prediction, save_prediction
from longiseg.inferers import TriplanarInferer, predict_case, predict_folder
from longiseg.networks.output import LongitudinalOutput
from longiseg.utils.nifti import SpatialHeader, atomic_save_nifti, spatial_header

SHAPE = (7, 8, 6)
MODALITIES = ("flair", "t2")
KIND_DTYPES = {"mask": np.uint8, "prob": np.float32, "entropy": np.float32}


class Voxelwise(nn.Module):
    """2.5D model: baseline logit = 4 * (t0 - 0.5), progression logit = 4 * (t_i - t0) - 1, voxel-wise."""

    def forward(self, x: torch.Tensor) -> LongitudinalOutput:
        return LongitudinalOutput(4 * (x[:, 0, :1] - 0.5), (4 * (x[:, 1:, 0] - x[:, :1, 0]) - 1)[:, :, None])


def _affine() -> np.ndarray:
    """Rotated, anisotropic, shifted voxel-to-world matrix."""
    c, s = np.cos(0.3), np.sin(0.3)
    aff = np.eye(4)
    aff[:3, :3] = np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]]) @ np.diag([0.8, 1.0, 2.5])
    aff[:3, 3] = [-10.0, 5.0, 3.0]
    return aff


def _nudged(aff: np.ndarray, angle: float = 2e-4) -> np.ndarray:
    """``aff`` with its axes rotated by ``angle`` radians about the world z axis around the first voxel: the
    voxels move by less than loading's qform/sform tolerance (0.001 mm)."""
    c, s = np.cos(angle), np.sin(angle)
    out = aff.copy()
    out[:3, :3] = np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]]) @ aff[:3, :3]
    return out


# name: (qform_code, sform_code, qform differs from the sform by a small rotation, xyzt units)
VARIANTS = {
    "scanner": (1, 1, False, ("mm", "sec")),
    "rotated_qform": (1, 1, True, ("mm", "unknown")),
    "qform_only": (1, 0, False, ("mm", "msec")),
    "sform_only_mni": (0, 4, False, ("unknown", "unknown")),
}


def _scanner_image(data: np.ndarray, aff: np.ndarray, qcode: int, scode: int, nudge: bool,
                   units: tuple[str, str]) -> nib.Nifti1Image:
    """An image as a scanner or a converter writes it: its own form codes and units, scaled int16 voxels."""
    img = nib.Nifti1Image(np.round(data * 1000).astype(np.int16), aff)
    hdr = img.header
    hdr.set_sform(aff, code=scode)
    hdr.set_qform(_nudged(aff) if nudge else aff, code=qcode)
    hdr.set_xyzt_units(*units)
    hdr.set_slope_inter(0.001, 0.0)
    hdr["descrip"] = b"scanner T2 FLAIR"
    hdr["cal_min"], hdr["cal_max"] = 0.0, 1000.0
    hdr.set_intent("estimate")
    return img


def _write_case(root: Path, case_id: str, variant: str, t: int = 2) -> Path:
    """A case folder whose every image has the header of ``variant``; returns the baseline flair file."""
    rng = np.random.default_rng(0)
    folder = root / case_id
    folder.mkdir(parents=True)
    for tp in range(t):
        for mod in MODALITIES:
            data = rng.uniform(0.01, 1.0, size=SHAPE)
            nib.save(_scanner_image(data, _affine(), *VARIANTS[variant]), folder / image_filename(tp, mod))
    return folder / image_filename(0, MODALITIES[0])


def _inferer() -> TriplanarInferer:
    return TriplanarInferer(patch_size=4, progress=False)


def _assert_carries(out_file: Path, ref: nib.Nifti1Image, dtype: type) -> None:
    """``out_file`` has ``ref``'s forms (codes and matrices) and units, and ``dtype`` voxels without scaling."""
    out = nib.load(out_file)
    oh, rh = out.header, ref.header
    assert (int(oh["qform_code"]), int(oh["sform_code"])) == (int(rh["qform_code"]), int(rh["sform_code"]))
    assert oh.get_xyzt_units() == rh.get_xyzt_units()
    if int(rh["qform_code"]) > 0:  # the stored numbers are copied: equal by construction
        for field in ("quatern_b", "quatern_c", "quatern_d", "qoffset_x", "qoffset_y", "qoffset_z"):
            assert oh[field] == rh[field], field
        assert np.array_equal(oh["pixdim"][:4], rh["pixdim"][:4])
        assert np.allclose(oh.get_qform(), rh.get_qform(), rtol=0.0, atol=1e-6)
    if int(rh["sform_code"]) > 0:
        assert np.allclose(oh.get_sform(), rh.get_sform(), rtol=0.0, atol=1e-6)
    assert np.allclose(out.affine, ref.affine, rtol=0.0, atol=1e-6)
    # the written array's own data header: not the input's int16, scaling, calibration, description, intent
    assert out.get_data_dtype() == np.dtype(dtype)
    assert oh.get_slope_inter() in ((None, None), (1.0, 0.0))
    assert float(oh["cal_min"]) == 0.0 and float(oh["cal_max"]) == 0.0
    assert oh["descrip"].tobytes().rstrip(b"\0") == b"" and oh.get_intent()[0] == "none"
    assert out.shape == SHAPE


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_predict_folder_writes_the_inputs_spatial_header(tmp_path: Path, variant: str) -> None:
    ref_file = _write_case(tmp_path / "in", "p1", variant)
    ref = nib.load(ref_file)
    if variant == "rotated_qform":  # the input's two forms differ (within tolerance): the qform is copied, not the sform
        assert not np.allclose(ref.header.get_qform(), ref.header.get_sform(), rtol=0.0, atol=1e-4)
    header = case_spatial_header(tmp_path / "in" / "p1")
    assert header is not None and np.allclose(header.affine, ref.affine, rtol=0.0, atol=1e-6)
    paths = predict_folder(Voxelwise(), tmp_path / "in", tmp_path / "out", inferer=_inferer(), progress=False)["p1"]
    assert set(paths) == set(KIND_DTYPES)
    for kind, files in paths.items():
        assert [f.name for f in files] == prediction_filenames(2)[kind]
        for f in files:
            _assert_carries(f, ref, KIND_DTYPES[kind])
    masks, affine, _ = read_prediction(tmp_path / "out", "p1", 2)  # the library reads its outputs back
    assert masks.dtype == np.uint8 and np.allclose(affine, ref.affine, rtol=0.0, atol=1e-6)


def test_the_cli_writes_the_inputs_spatial_header(tmp_path: Path) -> None:
    """``longiseg predict`` with a tiny untrained checkpoint: the masks carry the scanner codes of the input."""
    from longiseg.cli import main
    from longiseg.engine.checkpoint import save_checkpoint
    from longiseg.registry import build_model
    from longiseg.workflows.config import InferenceConfig

    ref = nib.load(_write_case(tmp_path / "in", "p1", "rotated_qform"))
    model = build_model("segmast", in_channels=2, widths=[8, 8, 8, 8], depths=[1, 1, 1, 1], decoder_dim=8,
                        d_state=4)
    model.spec = model.spec.replace(modalities=MODALITIES,
                                    inference=InferenceConfig(patch_size=16, planes=["axial"], batch_size=8).to_dict())
    checkpoint = save_checkpoint(tmp_path / "ck.pt", model=model)
    assert main(["predict", "--checkpoint", str(checkpoint), "--input", str(tmp_path / "in"),
                 "--output", str(tmp_path / "out")]) == 0
    names = prediction_filenames(2)
    for kind in ("mask", "prob"):
        for name in names[kind]:
            _assert_carries(tmp_path / "out" / "p1" / name, ref, KIND_DTYPES[kind])


def test_save_prediction_with_the_header_of_the_loaded_case(tmp_path: Path) -> None:
    ref_file = _write_case(tmp_path / "in", "p1", "scanner", t=3)
    case = load_case(tmp_path / "in" / "p1")
    header = case_spatial_header(tmp_path / "in" / "p1")
    masks = [np.zeros(SHAPE, np.uint8)] * 3
    probs = [np.full(SHAPE, 0.25, np.float32)] * 3
    paths = save_prediction(tmp_path / "out", "p1", case.affine, {"mask": masks, "prob": probs}, header=header)
    for kind, files in paths.items():
        for f in files:
            _assert_carries(f, nib.load(ref_file), KIND_DTYPES[kind])


def test_without_a_header_or_with_neither_form_the_default_is_written(tmp_path: Path) -> None:
    """Codes 0 state no grid: what is written without a header (both forms hold the affine, code 2, mm)."""
    aff = _affine()
    unset = nib.Nifti1Image(np.zeros(SHAPE, np.float32), aff)
    unset.header.set_sform(aff, code=0)
    unset.header.set_qform(aff, code=0)
    assert spatial_header(unset.header) is None and spatial_header(None) is None
    volumes = {"mask": [np.zeros(SHAPE, np.uint8)] * 2}
    for name, header in (("none", None), ("unset", spatial_header(unset.header))):
        path = save_prediction(tmp_path / name, "p1", aff, volumes, header=header)["mask"][0]
        out = nib.load(path)
        assert (int(out.header["qform_code"]), int(out.header["sform_code"])) == (2, 2)
        assert out.header.get_xyzt_units()[0] == "mm"
        assert np.allclose(out.affine, aff, rtol=0.0, atol=1e-6)
        assert np.allclose(out.header.get_qform(), aff, rtol=0.0, atol=1e-5)
    # a raw NIfTI header with neither form set: the same default through atomic_save_nifti
    out = nib.load(atomic_save_nifti(np.zeros(SHAPE, np.uint8), aff, tmp_path / "raw.nii.gz", header=unset.header))
    assert (int(out.header["qform_code"]), int(out.header["sform_code"])) == (2, 2)


def test_spatial_header_is_plain_data() -> None:
    img = _scanner_image(np.zeros(SHAPE), _affine(), *VARIANTS["rotated_qform"])
    header = spatial_header(img.header)
    assert isinstance(header, SpatialHeader) and spatial_header(header) is header
    assert pickle.loads(pickle.dumps(header)) == header
    assert SpatialHeader(**json.loads(json.dumps(dataclasses.asdict(header)))) == header
    assert (header.qform_code, header.sform_code) == (1, 1)
    assert np.allclose(header.qform_affine, img.header.get_qform(), rtol=0.0, atol=1e-6)
    assert np.allclose(header.affine, img.affine, rtol=0.0, atol=1e-6)
    assert header.mismatch(img.affine) is None
    with pytest.raises(ValueError, match="qform_code and sform_code are both 0"):
        dataclasses.replace(header, qform_code=0, sform_code=0)
    with pytest.raises(ValueError, match="sform_code must be an int in 0..5"):
        dataclasses.replace(header, sform_code=7)
    with pytest.raises(ValueError, match="qfac"):
        dataclasses.replace(header, qfac=0.5)
    with pytest.raises(TypeError, match="header must be a NIfTI header"):
        spatial_header(img)  # the image, not its header


def test_a_header_of_another_grid_is_refused_before_anything_is_written(tmp_path: Path) -> None:
    header = spatial_header(_scanner_image(np.zeros(SHAPE), _affine(), *VARIANTS["scanner"]).header)
    assert header is not None
    shifted = _affine()
    shifted[:3, 3] += 1.0
    volumes = {"mask": [np.zeros(SHAPE, np.uint8)] * 2}
    with pytest.raises(ValueError, match=r"header does not describe the grid of affine: its sform \(code 1\)"):
        save_prediction(tmp_path / "out", "p1", shifted, volumes, header=header)
    assert not (tmp_path / "out").exists()
    with pytest.raises(ValueError, match="header does not describe the grid"):
        atomic_save_nifti(np.zeros(SHAPE, np.uint8), shifted, tmp_path / "m.nii.gz", header=header)
    assert not (tmp_path / "m.nii.gz").exists()
    far_qform = dataclasses.replace(header, qoffset=tuple(v + 0.01 for v in header.qoffset))
    with pytest.raises(ValueError, match="its qform places the voxels differently"):
        atomic_save_nifti(np.zeros(SHAPE, np.uint8), _affine(), tmp_path / "m.nii.gz", header=far_qform)
    images = np.random.default_rng(0).uniform(size=(2, 2, *SHAPE)).astype(np.float32)
    with pytest.raises(ValueError, match="header does not describe the grid"):  # before the model runs
        predict_case(nn.Identity(), images, shifted, None, tmp_path / "pred", "p1", inferer=_inferer(),
                     header=header)
    with pytest.raises(TypeError, match="header must be a SpatialHeader"):
        predict_case(nn.Identity(), images, _affine(), None, tmp_path / "pred", "p1", inferer=_inferer(),
                     header={"qform_code": 1})  # type: ignore[arg-type]
    assert not (tmp_path / "pred").exists()
    with pytest.raises(TypeError, match="settings only"):
        predict_folder(Voxelwise(), tmp_path, tmp_path / "pred", header=header)


def test_a_reader_that_changes_the_grid_gets_the_default_header(tmp_path: Path) -> None:
    _write_case(tmp_path / "in", "p1", "scanner")

    def flipped(source):  # a reader whose case lies on another grid than the files
        case = load_case(source)
        aff = case.affine.copy()
        aff[:3, 0] *= -1
        aff[:3, 3] -= aff[:3, 0] * (SHAPE[0] - 1)
        return dataclasses.replace(case, images=case.images[:, :, ::-1].copy(), affine=aff)

    paths = predict_folder(Voxelwise(), tmp_path / "in", tmp_path / "out", inferer=_inferer(), progress=False,
                           reader=flipped)["p1"]
    out = nib.load(paths["mask"][0])
    assert (int(out.header["qform_code"]), int(out.header["sform_code"])) == (2, 2)
