"""Every bad input we know of, through the command line and the API.

Each command-line row asserts: the exit code, a one-line message on stderr that names the file or argument,
no traceback, no file created outside the row's output folder and no existing file changed. Each API row
asserts the exception type and message. Volumes are tiny (a 6-patient demo cohort at 4 mm), so the module
runs in well under a minute.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import shutil
import struct
import subprocess
import sys
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from longiseg import cli
from longiseg.cli import main
from longiseg.data.demo_cohort import generate_demo_cohort
from longiseg.engine.checkpoint import save_checkpoint
from longiseg.registry import build_model
from longiseg.workflows.config import ExperimentConfig

TINY = {"widths": [8, 16, 16, 32], "depths": [1, 1, 1, 1], "decoder_dim": 16}
RUN_SETTINGS = [
    "model.name=segmast", "model.kwargs={widths: [8, 16, 16, 32], depths: [1, 1, 1, 1], decoder_dim: 16}",
    "trainer.max_epochs=1", "trainer.batch_size=2", "trainer.warmup_epochs=0", "trainer.device=cpu",
    "trainer.progress_bar=false", "trainer.tensorboard=false", "data.crop_size=32", "data.samples_per_epoch=4",
    "data.val_samples=2", "data.val_fraction=0.34", "inference.patch_size=32", "inference.planes=[axial]",
]


@pytest.fixture(scope="module")
def ws(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A workspace: ``cohort/`` (6 patients), ``run/`` (a checkpoint of a tiny SegMaST with its experiment
    file), ``preds/`` (reference masks copied as predictions) and ``exp.yaml``."""
    root = tmp_path_factory.mktemp("ws")
    cohort = generate_demo_cohort(root / "cohort", num_patients=6, spacing=4, progress=False)
    cfg = ExperimentConfig().with_overrides(RUN_SETTINGS)
    cfg.save(root / "exp.yaml")
    torch.manual_seed(0)
    model = build_model("segmast", in_channels=2, num_timepoints=2, **TINY)
    save_checkpoint(root / "untrained.pt", model=model)  # a spec without training settings
    model.spec = model.spec.replace(modalities=("flair", "t2"), crop_size=32, inference=cfg.inference.to_dict(),
                                    preprocessing={"normalization": "zscore"})  # as longiseg train records
    save_checkpoint(root / "run" / "last.pt", model=model)
    cfg.save(root / "run" / "experiment.yaml")
    preds = root / "preds"
    for case in sorted(p for p in cohort.iterdir() if p.is_dir()):
        (preds / case.name).mkdir(parents=True)
        for f in case.glob("*mask*.nii.gz"):
            shutil.copy(f, preds / case.name / f.name)
        for f in case.glob("progression_t*.nii.gz"):
            shutil.copy(f, preds / case.name / f.name)
    return root


def _snapshot(*roots: Path) -> dict[str, tuple[int, str]]:
    snap: dict[str, tuple[int, str]] = {}
    for root in roots:
        for dirpath, dirnames, filenames in os.walk(root):
            for name in filenames + dirnames:
                path = Path(dirpath) / name
                if path.is_file():
                    snap[str(path)] = (path.stat().st_size, hashlib.sha1(path.read_bytes()).hexdigest())
                else:
                    snap[str(path)] = (-1, "")
    return snap


def _copy_cohort(ws: Path, dest: Path, cases: int = 2) -> Path:
    """A small copy of the cohort (the first ``cases`` cases with their manifest)."""
    src = ws / "cohort"
    ids = sorted(p.name for p in src.iterdir() if p.is_dir())[:cases]
    for cid in ids:
        shutil.copytree(src / cid, dest / cid)
    manifest = json.loads((src / "manifest.json").read_text(encoding="utf-8"))
    manifest["cases"] = [c for c in manifest["cases"] if c["case_id"] in ids]
    (dest / "manifest.json").write_text(json.dumps(manifest))
    return dest


def _flags(ws: Path) -> dict[str, bool]:
    return {c["case_id"]: c["progression"] for c in json.loads((ws / "cohort" / "manifest.json").read_text(encoding="utf-8"))["cases"]}


def _cohort_of(ws: Path, dest: Path, ids: list[str], manifest: bool = True) -> Path:
    """A copy of the cohort's cases ``ids`` (with their manifest rows, or without a manifest)."""
    for cid in ids:
        shutil.copytree(ws / "cohort" / cid, dest / cid)
    if manifest:
        data = json.loads((ws / "cohort" / "manifest.json").read_text(encoding="utf-8"))
        data["cases"] = [c for c in data["cases"] if c["case_id"] in ids]
        (dest / "manifest.json").write_text(json.dumps(data))
    return dest


def _only_stable(ws: Path, dest: Path) -> Path:
    return _cohort_of(ws, dest, [c for c, f in _flags(ws).items() if not f])


def _two_progressing(ws: Path, dest: Path) -> Path:
    """Two progressing and three stable patients: data.val_fraction=0.75 validates on both progressing ones."""
    flags = _flags(ws)
    return _cohort_of(ws, dest, [c for c, f in flags.items() if f][:2] + [c for c, f in flags.items() if not f])


def _mixed_modalities(ws: Path, dest: Path) -> Path:
    """No manifest; the last case has T1 images where the others have T2."""
    cohort = _cohort_of(ws, dest, sorted(_flags(ws))[:4], manifest=False)
    for f in (cohort / "demo-003").glob("t*_t2.nii.gz"):
        f.rename(f.with_name(f.name.replace("_t2.", "_t1.")))
    return cohort


def _mixed_timepoints(ws: Path, dest: Path) -> Path:
    """No manifest; one case has a second follow-up (T=3), the others T=2."""
    cohort = _cohort_of(ws, dest, sorted(_flags(ws))[:4], manifest=False)
    case = cohort / "demo-001"
    for name in ("flair", "t2"):
        shutil.copy(case / f"t1_{name}.nii.gz", case / f"t2_{name}.nii.gz")
    shutil.copy(case / "progression_t1.nii.gz", case / "progression_t2.nii.gz")
    return cohort


def _shifted_followup(ws: Path, dest: Path) -> Path:
    """One case's follow-up lies 0.5 mm off its baseline's grid (found from the headers, before any training)."""
    import nibabel as nib

    cohort = _cohort_of(ws, dest, sorted(_flags(ws))[:4], manifest=False)
    path = cohort / "demo-003" / "t1_t2.nii.gz"
    img = nib.load(path)
    affine = img.affine.copy()
    affine[:3, 3] += 0.5
    nib.save(nib.Nifti1Image(np.asarray(img.dataobj), affine), path)
    return cohort


def _resumable_without_last(ws: Path, dest: Path) -> Path:
    """A run folder that stopped between its first best.pt and its first last.pt, with records and a tuning."""
    dest.mkdir()
    shutil.copy(ws / "run" / "last.pt", dest / "best.pt")
    shutil.copy(ws / "run" / "experiment.yaml", dest / "experiment.yaml")
    (dest / "split.json").write_text(json.dumps({"data_root": str(ws / "cohort"), "train": [], "validation": []}))
    (dest / "tuning.json").write_text("{}")
    return dest


def _write_yaml(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def _edit_first_prediction(ws: Path, dest: Path, edit: Callable[[np.ndarray, np.ndarray], tuple]) -> Path:
    """A copy of the predictions whose first case's baseline mask is replaced by ``edit(voxels, affine)``."""
    shutil.copytree(ws / "preds", dest)
    f = sorted(p for p in dest.iterdir())[0] / "baseline_mask.nii.gz"
    img = nib.load(f)
    data, aff = edit(np.asarray(img.dataobj), img.affine.copy())
    nib.save(nib.Nifti1Image(data, aff), f)
    return dest


def _shift_affine(ws: Path, dest: Path) -> Path:
    def shift(data: np.ndarray, aff: np.ndarray) -> tuple:
        aff[0, 3] += 10.0  # 10 mm
        return data, aff

    return _edit_first_prediction(ws, dest, shift)


def _non_binary(ws: Path, dest: Path) -> Path:
    return _edit_first_prediction(ws, dest, lambda d, a: (d.astype(np.float32) * 0.5 + 0.25, a))


def _wrong_shape(ws: Path, dest: Path) -> Path:
    return _edit_first_prediction(ws, dest, lambda d, a: (np.zeros((5, 5, 5), np.uint8), a))


def _missing_case(ws: Path, dest: Path) -> Path:
    shutil.copytree(ws / "preds", dest)
    shutil.rmtree(sorted(p for p in dest.iterdir())[0])
    return dest


def _corrupt_image(ws: Path, dest: Path, how: str) -> Path:
    cohort = _copy_cohort(ws, dest)
    f = sorted(p for p in cohort.iterdir() if p.is_dir())[0] / "t1_flair.nii.gz"
    data = f.read_bytes()
    if how == "empty":
        f.write_bytes(b"")
    elif how == "truncated":
        f.write_bytes(data[: len(data) // 2])
    else:
        f.write_bytes(gzip.compress(b"this is not a NIfTI file"))
    return cohort


def _ambiguous(ws: Path, dest: Path) -> Path:
    cohort = _copy_cohort(ws, dest)
    case = sorted(p for p in cohort.iterdir() if p.is_dir())[0]
    img = nib.load(case / "t1_t2.nii.gz")
    nib.save(img, case / "t1_t2.nii")
    return cohort


def _bad_case_id(ws: Path, dest: Path, case_id: str) -> Path:
    cohort = _copy_cohort(ws, dest)
    manifest = json.loads((cohort / "manifest.json").read_text(encoding="utf-8"))
    manifest["cases"][0]["case_id"] = case_id
    (cohort / "manifest.json").write_text(json.dumps(manifest))
    return cohort


def _other_run(ws: Path, dest: Path) -> Path:
    """A run folder whose checkpoint holds a model of another width (as after changing model.kwargs)."""
    model = build_model("segmast", in_channels=2, num_timepoints=2, **{**TINY, "widths": [8, 16, 32, 32]})
    payload = torch.load(save_checkpoint(dest / "last.pt", model=model), weights_only=True)
    kwargs = {"in_channels": 2, "num_timepoints": 2, **TINY}  # save_checkpoint refuses them: the file is edited
    torch.save({**payload, "model_kwargs": kwargs, "spec": {**payload["spec"], "kwargs": kwargs}}, dest / "last.pt")
    return dest


def _checkpoint(ws: Path, dest: Path, how: str) -> Path:
    dest.mkdir(parents=True, exist_ok=True)
    shutil.copy(ws / "run" / "experiment.yaml", dest / "experiment.yaml")
    ckpt = dest / "last.pt"
    data = (ws / "run" / "last.pt").read_bytes()
    if how == "empty":
        ckpt.write_bytes(b"")
    elif how == "text":
        ckpt.write_text("not a checkpoint\n")
    elif how == "truncated":
        ckpt.write_bytes(data[: len(data) // 3])
    elif how == "corrupt":  # bytes of the largest tensor flipped: torch.load does not check the zip CRCs
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            member = max(archive.infolist(), key=lambda i: i.file_size)
        name_len, extra_len = struct.unpack("<HH", data[member.header_offset + 26: member.header_offset + 30])
        start = member.header_offset + 30 + name_len + extra_len  # the member's stored bytes
        damaged = bytearray(data)
        damaged[start: start + 16] = bytes(b ^ 0xFF for b in damaged[start: start + 16])
        ckpt.write_bytes(bytes(damaged))
    elif how == "no-config":  # written by build_model + save_checkpoint: a spec without training settings
        ckpt.write_bytes((ws / "untrained.pt").read_bytes())
        (dest / "experiment.yaml").unlink()
    elif how == "old-format":  # written before checkpoints described themselves
        payload = torch.load(ws / "run" / "last.pt", weights_only=True)
        del payload["spec"]
        torch.save(payload, ckpt)
        (dest / "experiment.yaml").unlink()
    elif how == "mismatch":
        _other_run(ws, dest)
    return ckpt


@dataclass(frozen=True)
class Row:
    """One bad command line: ``make(ws, tmp) -> argv`` prepares the inputs in ``tmp`` (the row's own folder)
    and returns the arguments; ``out`` is the output folder relative to ``tmp`` where files may appear."""

    id: str
    make: Callable[[Path, Path], list[str]]
    match: str
    code: int = 2
    out: str = "out"


def _train(ws: Path, tmp: Path, *extra: str, config: str | None = None, data: str | None = None,
           output: str | None = None) -> list[str]:
    return ["train", config or str(ws / "exp.yaml"), "--data", data or str(ws / "cohort"),
            "--output", output or str(tmp / "out"), *extra]


def _predict(ws: Path, tmp: Path, *extra: str, ckpt: str | None = None, inp: str | None = None) -> list[str]:
    return ["predict", "--checkpoint", ckpt or str(ws / "run" / "last.pt"), "--input", inp or str(ws / "cohort"),
            "--output", str(tmp / "out"), *extra]


def _evaluate(ws: Path, tmp: Path, pred: Path | None = None, *extra: str) -> list[str]:
    return ["evaluate", str(pred or ws / "preds"), str(ws / "cohort"), "--out", str(tmp / "out"), "--no-progress",
            *extra]


def _file(tmp: Path, name: str = "out") -> Path:
    (tmp / name).write_text("a file, not a folder\n")
    return tmp / name


ROWS = [
    # --- train
    Row("train-missing-config", lambda ws, t: _train(ws, t, config=str(t / "nope.yaml")), "nope.yaml"),
    Row("train-malformed-yaml", lambda ws, t: _train(ws, t, config=str(_write_yaml(t / "bad.yaml", "model: [a\n"))),
        r"bad\.yaml.*not valid YAML"),
    Row("train-duplicate-key", lambda ws, t: _train(
        ws, t, config=str(_write_yaml(t / "dup.yaml", "trainer:\n  max_epochs: 1\n  max_epochs: 2\n"))),
        r"dup\.yaml.*'max_epochs' is given twice"),
    Row("train-unknown-key", lambda ws, t: _train(ws, t, "--set", "trainer.max_epoch=1"),
        "Unknown config key 'trainer.max_epoch'"),
    Row("train-monitor-bogus", lambda ws, t: _train(ws, t, "--set", "trainer.monitor=bogus"),
        r"trainer\.monitor='bogus'"),
    Row("train-unknown-model-kwarg", lambda ws, t: _train(
        ws, t, "--set", "model.kwargs={widths: [8, 16, 16, 32], bogus: 1}"), r"model\.kwargs.*bogus"),
    # named 'depths' alone, not the setting the user wrote
    Row("train-model-kwarg-wrong-value", lambda ws, t: _train(ws, t, "--set", "model.kwargs.depths=[1, 1, 1, 1.5]"),
        r"model\.kwargs of 'segmast': config key 'depths': expected an int, got 1\.5"),
    Row("train-unknown-model", lambda ws, t: _train(ws, t, "--set", "model.name=segmastt"),
        "Unknown model name 'segmastt'"),
    Row("train-missing-data", lambda ws, t: _train(ws, t, data=str(t / "nodata")), r"--data .*nodata does not exist"),
    Row("train-output-is-file", lambda ws, t: _train(ws, t, output=str(_file(t))), "--output"),
    Row("train-existing-run", lambda ws, t: _train(ws, t, output=str(ws / "run")), r"already holds a run.*--resume"),
    Row("train-resume-changed-model", lambda ws, t: _train(ws, t, "--resume", output=str(_other_run(ws, t / "out"))),
        r"last\.pt do not fit the model.*size mismatch"),
    # a resume on other patients would validate on the checkpoint's training patients (and tune on them)
    Row("train-resume-other-split", lambda ws, t: (
        (t / "run").mkdir(), shutil.copy(ws / "run" / "last.pt", t / "run" / "last.pt"),
        (t / "run" / "split.json").write_text(json.dumps({"data_root": str(ws / "cohort"), "train": ["demo-000"],
                                                          "validation": ["demo-001"]})),
        _train(ws, t, "--resume", output=str(t / "run")))[-1], r"on another split than it was trained on",
        out="none"),
    Row("train-resume-and-overwrite", lambda ws, t: _train(ws, t, "--resume", "--overwrite"), "--resume and --overwrite"),
    Row("train-device-bogus", lambda ws, t: _train(ws, t, "--set", "trainer.device=gpu7"), r"trainer\.device 'gpu7'"),
    Row("train-output-is-data", lambda ws, t: _train(ws, t, "--overwrite", output=str(ws / "cohort")),
        r"trainer\.output_dir .*cohort is the data\.root folder"),
    Row("train-output-inside-data", lambda ws, t: _train(ws, t, output=str(ws / "cohort" / "run")),
        r"trainer\.output_dir .*lies inside the data\.root folder"),
    Row("train-negative-data-seed", lambda ws, t: _train(ws, t, "--set", "data.seed=-1"),
        r"data\.seed.* must be an int in \[0, 9223372036854775807\], got -1"),
    Row("train-negative-trainer-seed", lambda ws, t: _train(ws, t, "--set", "trainer.seed=-1"),
        r"trainer\.seed.* must be an int in \[0, 9223372036854775807\], got -1"),
    # channels are stacked in each case's own modality order: a case with T1 where the others have T2 is refused
    Row("train-mixed-modalities", lambda ws, t: _train(ws, t, data=str(_mixed_modalities(ws, t / "in"))),
        r"case 'demo-003' has the modalities \['flair', 't1'\] but 'demo-000', 'demo-001', 'demo-002' have "
        r"\['flair', 't2'\]"),
    Row("train-mixed-timepoints", lambda ws, t: _train(ws, t, data=str(_mixed_timepoints(ws, t / "in"))),
        r"same number of timepoints \(T=2 for 'demo-000', 'demo-002', 'demo-003'; T=3 for 'demo-001'\)"),
    Row("train-case-on-two-grids", lambda ws, t: _train(ws, t, data=str(_shifted_followup(ws, t / "in"))),
        r"case 'demo-003': image .* lies on another grid .*affines differ by up to"),
    Row("train-model-timepoints", lambda ws, t: _train(
        ws, t, "--set", "model.kwargs={widths: [8, 16, 16, 32], depths: [1, 1, 1, 1], decoder_dim: 16, "
        "num_timepoints: 3}"), r"model\.kwargs\.num_timepoints=3 but the cases have 2 timepoints"),
    Row("train-model-channels", lambda ws, t: _train(
        ws, t, "--set", "model.kwargs={widths: [8, 16, 16, 32], depths: [1, 1, 1, 1], decoder_dim: 16, "
        "in_channels: 3}"), r"model\.kwargs\.in_channels=3 but the cases have 2 modalities \['flair', 't2'\]"),
    # a balanced batch needs both classes: said in the cohort's terms, naming the split and the setting
    Row("train-no-progressing-case", lambda ws, t: _train(ws, t, "--set", "data.val_fraction=0",
                                                          data=str(_only_stable(ws, t / "in"))),
        r"data\.root .*in has no progressing case \(3 training, 0 validation cases\).*data\.positive_fraction"),
    Row("train-progressing-all-in-validation", lambda ws, t: _train(ws, t, "--set", "data.val_fraction=0.75",
                                                                    data=str(_two_progressing(ws, t / "in"))),
        r"training split has no progressing patient \(1 training case; 2 progressing case\(s\) in the validation "
        r"split \(data\.val_fraction=0\.75\)\).*lower data\.val_fraction"),
    # --resume of a run without last.pt (stopped before it first wrote it) changes nothing and says what to do
    Row("train-resume-without-last", lambda ws, t: _train(ws, t, "--resume", output=str(_resumable_without_last(
        ws, t / "run"))), r"best\.pt but no last\.pt to resume from.*nothing was changed.*--overwrite", out="none"),
    Row("train-inference-patch-size", lambda ws, t: _train(ws, t, "--set", "inference.patch_size=-5"),
        r"patch_size must be between 1 and 4096 voxels, got -5"),
    Row("train-inference-min-volume-inf", lambda ws, t: _train(ws, t, "--set", "inference.min_lesion_mm3=inf"),
        r"min_lesion_mm3 must be a finite volume"),
    Row("train-inference-batch-size", lambda ws, t: _train(ws, t, "--set", "inference.batch_size=0"),
        r"batch_size must be >= 1, got 0"),
    # --- predict
    Row("predict-missing-checkpoint", lambda ws, t: _predict(ws, t, ckpt=str(t / "none.pt")), "none.pt"),
    Row("predict-empty-checkpoint", lambda ws, t: _predict(ws, t, ckpt=str(_checkpoint(ws, t / "c", "empty"))),
        r"last\.pt is empty"),
    Row("predict-text-checkpoint", lambda ws, t: _predict(ws, t, ckpt=str(_checkpoint(ws, t / "c", "text"))),
        r"last\.pt is not a readable checkpoint"),
    Row("predict-truncated-checkpoint", lambda ws, t: _predict(
        ws, t, ckpt=str(_checkpoint(ws, t / "c", "truncated"))), r"last\.pt is not a readable checkpoint"),
    Row("predict-corrupt-checkpoint", lambda ws, t: _predict(
        ws, t, ckpt=str(_checkpoint(ws, t / "c", "corrupt"))), r"last\.pt is corrupt: its member .* fails its checksum"),
    Row("predict-untrained-checkpoint", lambda ws, t: _predict(
        ws, t, ckpt=str(_checkpoint(ws, t / "c", "no-config"))), r"does not record how to use the model.*--config"),
    Row("predict-old-checkpoint", lambda ws, t: _predict(
        ws, t, ckpt=str(_checkpoint(ws, t / "c", "old-format"))), r"older longiseg.*--config .*experiment\.yaml"),
    Row("predict-config-missing", lambda ws, t: _predict(ws, t, "--config", str(t / "nope.yaml")),
        r"--config .*nope\.yaml"),
    Row("predict-config-model-setting", lambda ws, t: _predict(
        ws, t, "--config", str(ws / "run" / "experiment.yaml"), "--set", "model.kwargs.mamba_backend=chunked"),
        r"--set model\.kwargs\.mamba_backend=chunked: predict builds the model from --checkpoint"),
    Row("predict-huge-window", lambda ws, t: _predict(ws, t, "--set", "patch_size=100000"),  # the allocator failed
        r"patch_size must be between 1 and 4096 voxels, got 100000"),
    Row("predict-model-setting", lambda ws, t: _predict(ws, t, "--set", "model.name=segformer"),  # no --config:
        r"--set model\.name=segformer: predict builds the model from --checkpoint"),  # named "inference.model" before
    Row("predict-weights-mismatch", lambda ws, t: _predict(ws, t, ckpt=str(_checkpoint(ws, t / "c", "mismatch"))),
        r"do not fit the model"),
    Row("predict-device-bogus", lambda ws, t: _predict(ws, t, "--device", "tpu"), r"--device 'tpu'"),
    Row("predict-inference-key-typo", lambda ws, t: _predict(ws, t, "--set", "inference.pach_size=16"),
        r"Unknown config key 'inference.pach_size'.*Did you mean 'inference.patch_size'"),
    Row("predict-empty-modalities", lambda ws, t: _train(ws, t, "--set", "data.modalities=[]"),
        r"modalities \(data.modalities\) must name at least one channel"),
    Row("predict-missing-input", lambda ws, t: _predict(ws, t, inp=str(t / "noinput")), "--input .*noinput"),
    Row("predict-output-is-file", lambda ws, t: [*_predict(ws, t)[:-2], "--output", str(_file(t))], "--output"),
    Row("predict-case-id-dotdot", lambda ws, t: _predict(ws, t, inp=str(_bad_case_id(ws, t / "in", ".."))),
        "case id '..'"),
    Row("predict-case-id-traversal", lambda ws, t: _predict(ws, t, inp=str(_bad_case_id(ws, t / "in", "../../x"))),
        r"case id '\.\./\.\./x'"),
    Row("predict-case-id-absolute", lambda ws, t: _predict(ws, t, inp=str(_bad_case_id(ws, t / "in", "/etc"))),
        "case id '/etc'"),
    Row("predict-empty-nifti", lambda ws, t: _predict(ws, t, inp=str(_corrupt_image(ws, t / "in", "empty"))),
        r"t1_flair\.nii\.gz is empty"),
    Row("predict-truncated-nifti", lambda ws, t: _predict(ws, t, inp=str(_corrupt_image(ws, t / "in", "truncated"))),
        r"t1_flair\.nii\.gz is truncated, corrupt"),
    Row("predict-not-nifti", lambda ws, t: _predict(ws, t, inp=str(_corrupt_image(ws, t / "in", "text"))),
        r"t1_flair\.nii\.gz is truncated, corrupt or not a NIfTI"),
    Row("predict-ambiguous-files", lambda ws, t: _predict(ws, t, inp=str(_ambiguous(ws, t / "in"))),
        r"t1_t2\.nii.*t1_t2\.nii\.gz|t1_t2\.nii\.gz.*t1_t2\.nii"),
    Row("predict-existing-outputs", lambda ws, t: (
        (t / "out" / "demo-000").mkdir(parents=True), (t / "out" / "demo-000" / "keep.txt").write_text("x"),
        _predict(ws, t))[-1], r"already exist.*--overwrite"),
    Row("predict-skip-existing-foreign-file", lambda ws, t: (
        (t / "out" / "demo-000").mkdir(parents=True), (t / "out" / "demo-000" / "notes.txt").write_text("x"),
        _predict(ws, t, "--skip-existing"))[-1], r"holds files that are not predictions .*notes\.txt", out="none"),
    # read as inference.trainer.max_epochs, the message named a key the user never gave
    Row("predict-set-other-section", lambda ws, t: _predict(ws, t, "--set", "trainer.max_epochs=10"),
        r"--set trainer\.max_epochs=10: predict takes inference settings"),
    # named as "inference.=5", a key never given
    Row("predict-set-empty-key", lambda ws, t: _predict(ws, t, "--set", "=5"), r"--set '=5': empty key component in ''"),
    # an earlier prediction of a case with more follow-ups: its later files were called "not predictions"
    Row("predict-skip-existing-later-followups", lambda ws, t: (
        (t / "out" / "demo-000").mkdir(parents=True), (t / "out" / "demo-000" / "progression_t2.nii.gz").write_text("x"),
        _predict(ws, t, "--skip-existing"))[-1],
        r"holds a prediction of more follow-ups than case 'demo-000' has \(progression_t2\.nii\.gz\): pass "
        r"--overwrite", out="none"),
    Row("predict-overwrite-and-skip", lambda ws, t: _predict(ws, t, "--overwrite", "--skip-existing"),
        "--overwrite and --skip-existing"),
    # predictions written over the input cases would replace their scans and reference masks
    Row("predict-output-is-input", lambda ws, t: _predict(ws, t, "--skip-existing", "--output", str(ws / "cohort")),
        r"output folder .*cohort is the input folder"),
    Row("predict-output-is-input-overwrite", lambda ws, t: _predict(ws, t, "--overwrite", "--output",
                                                                    str(ws / "cohort")), r"is the input folder"),
    Row("predict-output-inside-input", lambda ws, t: _predict(ws, t, "--output", str(ws / "cohort" / "preds")),
        r"lies inside the input folder"),
    Row("predict-output-holds-input", lambda ws, t: _predict(ws, t, "--overwrite", "--output", str(ws)),
        r"holds the input folder"),
    # refused before the checkpoint loads (seconds): a file that is no checkpoint would fail there instead
    Row("predict-output-inside-input-first", lambda ws, t: _predict(ws, t, "--output", str(ws / "cohort" / "preds"),
                                                                    ckpt=str(_file(t, "bogus.pt"))),
        r"lies inside the input folder"),
    # --- evaluate
    Row("evaluate-missing-case", lambda ws, t: _evaluate(ws, t, _missing_case(ws, t / "p")), r"lacks 2 prediction file.*demo-000"),
    Row("evaluate-blank-name", lambda ws, t: _evaluate(ws, t, None, "--names", " "),
        r"--names ' ': a model name must not be empty"),
    Row("evaluate-non-binary", lambda ws, t: _evaluate(ws, t, _non_binary(ws, t / "p")), r"binary"),
    Row("evaluate-shape-mismatch", lambda ws, t: _evaluate(ws, t, _wrong_shape(ws, t / "p")),
        r"case 'demo-000': prediction .*\.nii\.gz lies on another grid .*\(shape .*\(5, 5, 5\)"),
    Row("evaluate-affine-shift", lambda ws, t: _evaluate(ws, t, _shift_affine(ws, t / "p")),
        r"case 'demo-000': .*another grid.*10 mm"),
    Row("evaluate-bad-min-volume", lambda ws, t: _evaluate(ws, t, None, "--min-lesion-volume", "-1"),
        "--min-lesion-volume"),
    Row("evaluate-infinite-min-volume", lambda ws, t: _evaluate(ws, t, None, "--min-lesion-volume", "inf"),
        r"--min-lesion-volume must be a finite volume in mm\^3 >= 0, got inf"),  # named a protocol field
    Row("evaluate-bad-iou", lambda ws, t: _evaluate(ws, t, None, "--iou-threshold", "2"), "--iou-threshold"),
    Row("evaluate-missing-folder", lambda ws, t: _evaluate(ws, t, t / "nopred"), r"nopred is not a folder"),
    Row("evaluate-existing-report", lambda ws, t: (
        (t / "out").mkdir(), (t / "out" / "summary.json").write_text("{}"), _evaluate(ws, t))[-1],
        r"already holds a report.*--overwrite"),
    Row("evaluate-out-is-prediction", lambda ws, t: _evaluate(ws, t, None, "--overwrite", "--out", str(ws / "preds")),
        r"--out .*preds is the prediction folder"),
    Row("evaluate-out-is-reference", lambda ws, t: _evaluate(ws, t, None, "--out", str(ws / "cohort")),
        r"--out .*cohort is the reference folder"),
    Row("evaluate-one-folder", lambda ws, t: ["evaluate", str(ws / "cohort")], "give at least one prediction folder"),
    # --- lesions
    Row("lesions-out-is-masks", lambda ws, t: ["lesions", str(ws / "preds"), "--out", str(ws / "preds"), "--overwrite",
                                               "--no-figures", "--no-progress"], r"--out .*preds is the MASKS folder"),
    Row("lesions-bad-min-volume", lambda ws, t: ["lesions", str(ws / "preds"), "--out", str(t / "r"), "--min-volume",
                                                 "-1"], r"--min-volume must be a volume in mm\^3 >= 0, got -1"),
    Row("lesions-masks-is-a-file", lambda ws, t: ((t / "f").write_text("x"), ["lesions", str(t / "f"), "--out",
                                                                           str(t / "r")])[-1],
        r"MASKS .*f is not a folder"),
    Row("lesions-out-inside-images", lambda ws, t: ["lesions", str(ws / "preds"), "--images", str(ws / "cohort"),
                                                    "--out", str(ws / "cohort" / "report")],
        r"--out .*report lies inside the --images folder"),
    # --- tune
    Row("tune-missing-run", lambda ws, t: ["tune", str(t / "norun")], r"run folder .*norun does not exist"),
    Row("tune-run-is-file", lambda ws, t: ["tune", str(_file(t))], r"run folder .*out is a file, not a folder"),
    Row("tune-missing-checkpoint", lambda ws, t: ["tune", str(ws / "run"), "--checkpoint", "best.pt"],
        r"checkpoint .*best\.pt does not exist"),
    Row("tune-without-split", lambda ws, t: ["tune", str(ws / "run"), "--checkpoint", "last.pt"],
        r"split\.json does not exist"),
    Row("tune-checkpoint-as-a-path-in-the-run", lambda ws, t: ["tune", str(ws / "run"), "--checkpoint",
                                                                str(ws / "run" / "last.pt")],
        r"split\.json does not exist"),  # RUN/last.pt is the run's last.pt (it was refused as a path)
    Row("tune-checkpoint-outside-run", lambda ws, t: ["tune", str(ws / "run"), "--checkpoint", "../run/last.pt"],
        r"checkpoint must be the file name of one of the run's checkpoints"),
    Row("tune-malformed-split", lambda ws, t: (
        (t / "run").mkdir(), (t / "run" / "best.pt").write_bytes(b"x"), (t / "run" / "split.json").write_text("{"),
        ["tune", str(t / "run")])[-1], r"split\.json is not valid JSON", out="run"),
    Row("tune-split-not-an-object", lambda ws, t: (
        (t / "run").mkdir(), (t / "run" / "best.pt").write_bytes(b"x"),
        (t / "run" / "split.json").write_text("[1, 2]"), ["tune", str(t / "run")])[-1],
        r"split\.json must be an object with data_root", out="run"),
    Row("tune-device-bogus", lambda ws, t: ["tune", str(ws / "run"), "--device", "gpu"], r"--device 'gpu'"),
    # --- cohort
    Row("cohort-too-few-patients", lambda ws, t: ["cohort", str(t / "out"), "--num-patients", "3"], "--num-patients must be"),
    Row("cohort-num-test", lambda ws, t: ["cohort", str(t / "out"), "--num-patients", "8", "--num-test", "1"],
        "--num-test must be"),
    Row("cohort-huge-num-patients", lambda ws, t: ["cohort", str(t / "out"), "--num-patients", "9" * 20],
        "--num-patients must be at most 100,000"),
    Row("cohort-default-num-test-too-large", lambda ws, t: ["cohort", str(t / "out"), "--num-patients", "6"],
        r"got 10: the default --num-test is the demo's; pass a smaller --num-test for 6 patients"),
    Row("cohort-negative-seed", lambda ws, t: ["cohort", str(t / "out"), "--seed", "-1"], "--seed must be an int in \\[0, "),
    Row("cohort-noise-nan", lambda ws, t: ["cohort", str(t / "out"), "--set", "noise_level=nan"],
        "noise_level must be a finite number"),
    Row("cohort-output-is-file", lambda ws, t: ["cohort", str(_file(t))], "OUT"),
    Row("cohort-set-unknown-key", lambda ws, t: ["cohort", str(t / "out"), "--set", "lesion_count=3"], "lesion_count"),
    Row("cohort-set-seed", lambda ws, t: ["cohort", str(t / "out"), "--set", "seed=3"], "use --num-patients, --spacing, --seed"),
    Row("cohort-set-bad-shrink", lambda ws, t: ["cohort", str(t / "out"), "--set", "shrink_factor=[0.8,1.2]"],
        "shrink_factor must be < 1"),
    # --- demo (all refused before the cohort is written)
    Row("demo-negative-epochs", lambda ws, t: ["demo", "--output", str(t / "out"), "--epochs", "-1"], "--epochs must be"),
    Row("demo-zero-steps", lambda ws, t: ["demo", "--output", str(t / "out"), "--steps-per-epoch", "0"],
        "--steps-per-epoch must be"),
    Row("demo-zero-patients", lambda ws, t: ["demo", "--output", str(t / "out"), "--num-patients", "0"],
        "--num-patients must be"),
    Row("demo-output-is-file", lambda ws, t: ["demo", "--output", str(_file(t))], "--output"),
    # --- bench (refused before the benchmark's minutes, not with a traceback after them)
    Row("bench-plot-unwritable", lambda ws, t: ["bench", "--quick", "--plot", str(_file(t) / "mix.png")],
        r"^longiseg bench: error: --plot .*mix\.png cannot be written"),
    Row("bench-plot-is-folder", lambda ws, t: ["bench", "--quick", "--plot", str(t)], "--plot .* is a folder"),
    # "" was taken as no plot: the whole benchmark ran and wrote nothing (exit 0)
    Row("bench-plot-empty", lambda ws, t: ["bench", "--quick", "--plot", ""], "--plot must be a file name, got ''"),
]
if not torch.cuda.is_available():
    ROWS += [
        Row("train-device-cuda", lambda ws, t: _train(ws, t, "--set", "trainer.device=cuda"), "CUDA is not available"),
        Row("predict-device-cuda", lambda ws, t: _predict(ws, t, "--device", "cuda"), "CUDA is not available"),
    ]


@pytest.mark.parametrize("row", ROWS, ids=[r.id for r in ROWS])
def test_command_line_rejects_bad_input(row: Row, ws: Path, tmp_path: Path,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    argv = row.make(ws, tmp_path)
    capsys.readouterr()
    before = _snapshot(ws, tmp_path)
    code = main(argv)
    captured = capsys.readouterr()
    err = captured.err.strip().splitlines()
    assert code == row.code, (code, captured.err)
    assert err, "no message on stderr"
    message = err[-1]
    cmd = argv[0]
    assert message.startswith(f"longiseg {cmd}: error: "), captured.err
    assert __import__("re").search(row.match, message), message
    assert "Traceback" not in captured.err
    after = _snapshot(ws, tmp_path)
    out = str(tmp_path / row.out)
    created = [p for p in after if p not in before and not p.startswith(out + os.sep) and p != out]
    changed = [p for p in before if p in after and after[p] != before[p]]
    removed = [p for p in before if p not in after]
    assert not created, f"files created outside the output folder: {created}"
    assert not changed and not removed, (changed, removed)


@pytest.mark.parametrize(("argv", "message"), [
    (["demo", "--bogus"], "longiseg demo: error: unrecognized arguments: --bogus (see longiseg demo --help)"),
    (["models", "a", "b"], "longiseg models: error: unrecognized arguments: b (see longiseg models --help)"),
    (["--bogus", "models"], "longiseg: error: unrecognized arguments: --bogus (see longiseg --help)"),
])
def test_unknown_arguments_name_the_command_they_were_given_to(argv: list[str], message: str,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2 and capsys.readouterr().err.strip() == message


def test_usage_errors_and_debug_flag_through_a_real_process(tmp_path: Path) -> None:
    """The console script: exit 2 with one line; ``--debug`` shows the traceback."""
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    env.pop("LONGISEG_DEBUG", None)
    cmd = [sys.executable, "-m", "longiseg", "evaluate", str(tmp_path / "a"), str(tmp_path / "b")]
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines()[-1].startswith("longiseg evaluate: error: ")
    assert "Traceback" not in done.stderr
    debug = subprocess.run([*cmd, "--debug"], capture_output=True, text=True, env=env, timeout=120)
    assert debug.returncode != 0 and "Traceback" in debug.stderr
    usage = subprocess.run([sys.executable, "-m", "longiseg", "predict", "--input", str(tmp_path)],
                           capture_output=True, text=True, env=env, timeout=120)
    assert usage.returncode == 2
    assert usage.stderr.strip().splitlines() == [
        "longiseg predict: error: the following arguments are required: --checkpoint, --output "
        "(see longiseg predict --help)"]


def test_version_option_prints_the_versions(capsys: pytest.CaptureFixture[str]) -> None:
    import platform

    import torch

    from longiseg import __version__

    with pytest.raises(SystemExit) as exc:
        main(["--version"])
    assert exc.value.code == 0
    assert capsys.readouterr().out.strip() == (f"longiseg {__version__} (torch {torch.__version__}, Python "
                                               f"{platform.python_version()})")


@pytest.mark.parametrize(("stop", "code", "line"), [
    ("KeyboardInterrupt", 130, "interrupted"),  # Ctrl-C
    ("Terminated", 143, "terminated"),  # what SIGTERM raises
])
def test_ctrl_c_or_sigterm_while_the_parser_is_built_is_one_line(stop: str, code: int, line: str,
                                                                monkeypatch: pytest.MonkeyPatch,
                                                                capsys: pytest.CaptureFixture[str]) -> None:
    """build_parser imports the workflow modules (seconds on a busy machine): Ctrl-C or SIGTERM then is the one
    line of every other moment, not a traceback."""
    def interrupted() -> None:
        raise getattr(cli, stop, KeyboardInterrupt)

    monkeypatch.setattr(cli, "build_parser", interrupted)
    try:
        rc = main(["models"])
    except KeyboardInterrupt:  # (left to itself it would end the test session)
        pytest.fail("the interruption escaped main as a traceback")
    assert rc == code
    assert capsys.readouterr().err == f"longiseg: {line}\n"


def test_sigterm_is_a_keyboard_interrupt_only_while_main_runs(monkeypatch: pytest.MonkeyPatch,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    """While a command runs, SIGTERM raises cli.Terminated (so Ctrl-C's clean-up runs): exit 143, one line;
    afterwards SIGTERM is what it was."""
    import signal

    seen = []

    def command(args: object) -> int:
        seen.append(signal.getsignal(signal.SIGTERM))
        if callable(seen[0]):  # (without a handler SIGTERM would end pytest)
            signal.raise_signal(signal.SIGTERM)  # handled in this thread before raise_signal returns
        return 0

    monkeypatch.setattr(cli, "_cmd_models", command)
    before = signal.getsignal(signal.SIGTERM)
    assert before == signal.SIG_DFL  # otherwise main leaves SIGTERM alone
    assert main(["models"]) == cli.EXIT_TERMINATED == 143
    assert capsys.readouterr().err == "longiseg models: terminated\n"
    assert signal.getsignal(signal.SIGTERM) == before


class _Finalizer:
    """What a DataLoader iterator does when it is collected while a signal arrives: its ``__del__`` raises."""

    def __init__(self, error: BaseException) -> None:
        self.error, self.cycle = error, self  # (a reference cycle: collected by gc, not on the last reference)

    def __del__(self) -> None:
        raise self.error


def test_an_interrupt_in_a_finalizer_is_reported_not_lost(monkeypatch: pytest.MonkeyPatch,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    """Ctrl-C during a DataLoader's worker shutdown (a finalizer) printed "Exception ignored in ..." with a traceback
    and was lost (exit 0); SIGTERM to the process group added the workers' "killed by signal" traceback after the
    command's "terminated" line."""
    import gc
    import sys

    def interrupted_in_finalizer(args: object) -> int:
        _Finalizer(KeyboardInterrupt())
        gc.collect()  # e.g. the end of training: a DataLoader iterator shuts its persistent workers down
        return 0

    hook = sys.unraisablehook
    monkeypatch.setattr(cli, "_cmd_models", interrupted_in_finalizer)
    assert main(["models"]) == cli.EXIT_INTERRUPTED
    assert capsys.readouterr().err == "longiseg models: interrupted\n"

    pending: list[BaseException] = []

    def failing_after_the_interrupt(args: object) -> int:
        _Finalizer(cli.Terminated("terminated by signal 15"))
        gc.collect()
        _Finalizer(RuntimeError("DataLoader worker (pid 12345) is killed by signal: Terminated. "))  # ends later
        raise pending[0]  # (reached when the signal is ignored: no handler to raise it)

    monkeypatch.setattr(cli, "_cmd_models", failing_after_the_interrupt)
    for error in (OSError("a clean-up that failed"), ValueError("bad"), PermissionError("denied")):
        pending[:] = [error]
        assert main(["models"]) == cli.EXIT_TERMINATED
        assert capsys.readouterr().err == "longiseg models: terminated\n"  # (no echo of the workers' end)

    def installing_its_own_hook(args: object) -> int:
        sys.unraisablehook = own_hook
        return 0

    def own_hook(unraisable: object) -> None:
        pass

    monkeypatch.setattr(cli, "_cmd_models", installing_its_own_hook)
    monkeypatch.setattr(sys, "unraisablehook", hook)
    assert main(["models"]) == 0
    assert sys.unraisablehook is own_hook  # not replaced by the hook main found
    seen = []

    def chaining(args: object) -> int:
        found = sys.unraisablehook
        sys.unraisablehook = lambda unraisable: (seen.append("mine"), found(unraisable))
        return 0

    monkeypatch.setattr(cli, "_cmd_models", chaining)
    monkeypatch.setattr(sys, "unraisablehook", lambda unraisable: seen.append(type(unraisable.exc_value).__name__))
    assert main(["models"]) == 0
    _Finalizer(KeyboardInterrupt())
    gc.collect()  # after main: the hook the command chained to main's passes it on, not swallows it
    assert seen == ["mine", "KeyboardInterrupt"]
    monkeypatch.setattr(sys, "unraisablehook", hook)

    def terminated_with_workers(args: object) -> int:
        workers = _Finalizer(RuntimeError("DataLoader worker (pid 12345) is killed by signal: Terminated. "))  # noqa: F841
        raise cli.Terminated("terminated by signal 15")

    monkeypatch.setattr(cli, "_cmd_models", terminated_with_workers)
    assert main(["models"]) == cli.EXIT_TERMINATED
    assert capsys.readouterr().err == "longiseg models: terminated\n"
    assert sys.unraisablehook is hook

    def other_finalizer_error(args: object) -> int:
        _Finalizer(RuntimeError("DataLoader worker (pid 12345) is killed by signal: Killed. "))
        return 0

    monkeypatch.setattr(cli, "_cmd_models", other_finalizer_error)
    seen = []
    monkeypatch.setattr(sys, "unraisablehook", seen.append)
    assert main(["models"]) == 0  # not ending on an interrupt: shown as Python shows it
    assert len(seen) == 1 and "killed by signal: Killed" in str(seen[0].exc_value)


# ---------------------------------------------------------------------------------------------- API rows

def _api_rows() -> list[tuple[str, Callable[[Path], object], type[BaseException], str]]:
    from longiseg.data import CrossViewSampler, LongitudinalCase, VolumePatchSampler
    from longiseg.data.preprocessing import zscore_normalize
    from longiseg.engine.config import read_config_file
    from longiseg.inferers import remove_small_components, threshold_probabilities
    from longiseg.inferers.postprocessing import postprocess
    from longiseg.losses import ImbalanceAwareLoss, PerSampleDiceFocalLoss, new_lesion_logits
    from longiseg.metrics import has_progression
    from longiseg.metrics.consistency import persisting_lesions
    from longiseg.networks.output import LongitudinalOutput
    from longiseg.utils.device import resolve_device

    def dup_yaml(tmp: Path) -> object:
        return read_config_file(_write_yaml(tmp / "d.yaml", "a: 1\nb: 2\na: 3\n"))

    def case(spacing: object = (1.0, 1.0, 1.0), affine: object = None, value: float = 1.0) -> LongitudinalCase:
        return LongitudinalCase(
            images=np.full((2, 1, 4, 4, 4), value, np.float32), baseline_mask=np.zeros((4, 4, 4)),
            progression_masks=np.zeros((1, 4, 4, 4)), affine=np.eye(4) if affine is None else affine,
            spacing=spacing, modalities=("m",), case_id="c1")

    def float64_input(tmp: Path) -> object:
        return build_model("segmast", **TINY)(torch.zeros(1, 2, 2, 32, 32, dtype=torch.float64))

    def cuda_without_cuda(tmp_path: object) -> object:
        from unittest import mock

        with mock.patch.object(torch.cuda, "is_available", return_value=False):  # also on a machine with a GPU
            return resolve_device("cuda:0", name="trainer.device")

    mask = np.zeros((4, 4, 4), bool)
    mask[1, 1, 1] = True
    empty_out = LongitudinalOutput(torch.zeros(0, 1, 4, 4), torch.zeros(0, 1, 1, 4, 4))
    return [
        ("postprocess-probability-above-1", lambda t: postprocess(np.full((2, 2, 2), 1.5, np.float32)), ValueError,
         r"probabilities in \[0, 1\].*1\.5"),
        ("postprocess-negative-probability", lambda t: postprocess(np.full((2, 2, 2), -0.1, np.float32)),
         ValueError, "probabilities"),
        ("config-duplicate-key", dup_yaml, ValueError, "'a' is given twice"),
        ("device-unknown", lambda t: resolve_device("gpu"), ValueError, "'gpu' is not a device"),
        ("device-type", lambda t: resolve_device(3), TypeError, "device must be a string"),
        # the fix named for a missing CUDA was "--device cpu" also for a config's trainer.device (no such flag)
        ("device-cuda-setting", cuda_without_cuda, ValueError, r"CUDA is not available .*; use trainer\.device=cpu$"),
        ("sampler-crop-size-string", lambda t: CrossViewSampler(crop_size="64"), TypeError, "crop_size must be an int"),
        ("sampler-crop-size-fraction", lambda t: CrossViewSampler(crop_size=(64.7, 64)), TypeError,
         r"crop_size\[0\] must be an int"),
        ("sampler-patch-size-float", lambda t: VolumePatchSampler(patch_size=32.0), TypeError,
         "patch_size must be an int"),
        ("model-input-float64", float64_input, TypeError, "x has dtype torch.float64 but the model's parameters"),
        ("model-segformer-timepoints-str", lambda t: build_model("segformer", num_timepoints="3"), TypeError,
         "num_timepoints must be an int"),
        ("model-longi-unet-dw-one-timepoint", lambda t: build_model("longi_unet_dw", num_timepoints=1), ValueError,
         "num_timepoints must be >= 2"),
        ("case-spacing-nan", lambda t: case(spacing=(1.0, 1.0, float("nan"))), ValueError, "spacing must hold positive"),
        ("case-affine-inf", lambda t: case(affine=np.diag([1.0, 1.0, np.inf, 1.0])), ValueError, "affine"),
        ("zscore-eps-zero", lambda t: zscore_normalize(case(), eps=0), ValueError, "eps must be a positive"),
        ("loss-empty-batch", lambda t: ImbalanceAwareLoss(seed=0)(empty_out, torch.zeros(0, 1, 4, 4),
                                                                  torch.zeros(0, 1, 1, 4, 4)),
         ValueError, "at least one sample and one voxel"),
        ("loss-empty-voxels", lambda t: PerSampleDiceFocalLoss()(torch.ones(1, 1, 0, 8), torch.ones(1, 1, 0, 8)),
         ValueError, "logits must hold at least one sample"),
        ("loss-infinite-gamma", lambda t: PerSampleDiceFocalLoss(gamma=float("inf")), ValueError,
         "gamma must be a finite number >= 0"),
        ("new-lesion-logits-list", lambda t: new_lesion_logits([[0.0]], torch.zeros(1, 1, 1)), TypeError,
         "baseline_logits must be a torch.Tensor"),
        ("has-progression-nan-volume", lambda t: has_progression(mask, min_volume_mm3=float("nan")), ValueError,
         "min_volume_mm3 must be a finite number"),
        ("remove-components-none-volume", lambda t: remove_small_components(mask, None), TypeError,
         "min_volume_mm3 must be a number"),
        ("remove-components-string-volume", lambda t: remove_small_components(mask, "27"), TypeError,
         "min_volume_mm3 must be a number"),
        ("threshold-string", lambda t: threshold_probabilities(np.zeros((2, 2, 2)), "a"), TypeError,
         "threshold must be a float"),
        ("persisting-coverage-string", lambda t: persisting_lesions(mask, mask, mask, min_coverage="a"), TypeError,
         "min_coverage must be a number"),
    ]


API_ROWS = _api_rows()


@pytest.mark.parametrize("row", API_ROWS, ids=[r[0] for r in API_ROWS])
def test_api_rejects_bad_input(row: tuple, tmp_path: Path) -> None:
    _, call, exc, match = row
    with pytest.raises(exc, match=match):
        call(tmp_path)


class _Overflowing(torch.nn.Module):
    """A 2.5D model whose float32 logits overflow to inf - inf = NaN for inputs beyond about 1e19, as a
    network's normalisation layers do when fed intensities it was never trained on."""

    def forward(self, x: torch.Tensor):  # noqa: ANN201
        from longiseg.networks.output import LongitudinalOutput

        square = x[:, :, :1] * x[:, :, :1]
        logits = square - square
        return LongitudinalOutput(logits[:, 0], logits[:, 1:])


def test_inferer_reports_non_finite_outputs() -> None:
    """Intensities of 1e20 overflow a model trained on z-scored input: a clear error, not NaN maps."""
    from longiseg.inferers.triplanar import TriplanarInferer

    inferer = TriplanarInferer(patch_size=8, planes=("axial",), progress=False)
    ok = inferer(_Overflowing(), torch.full((2, 1, 4, 8, 8), 3.0))
    assert all(np.isfinite(a).all() for a in ok)
    with pytest.raises(ValueError, match="NaN/inf probabilities.*normalise"):
        inferer(_Overflowing(), torch.full((2, 1, 4, 8, 8), 1e20))


def test_trainer_refuses_to_replace_a_run(tmp_path: Path) -> None:
    from test_engine_toys import SyntheticLongiData, TinyLongiNet

    from longiseg.engine.config import TrainerConfig
    from longiseg.engine.trainer import Trainer
    from longiseg.losses import ImbalanceAwareLoss

    (tmp_path / "last.pt").write_bytes(b"old")
    cfg = TrainerConfig(max_epochs=1, output_dir=str(tmp_path), device="cpu", progress_bar=False,
                        tensorboard=False, batch_size=2, warmup_epochs=0)
    with pytest.raises(FileExistsError, match="already holds a run.*resume=True.*overwrite=True"):
        Trainer(TinyLongiNet(), SyntheticLongiData(n=4), cfg, loss_fn=ImbalanceAwareLoss()).fit()
    assert (tmp_path / "last.pt").read_bytes() == b"old"


def test_a_thread_count_torch_cannot_take_is_refused_in_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    # 10**20 threads overflowed inside torch ("Overflow when unpacking long long"), 100000 ran out of memory
    from longiseg.cli import main

    for n in ("0", "100000", "9" * 20):
        assert main(["--threads", n, "models", "--no-params"]) == 2
        err = capsys.readouterr().err.strip()
        assert err == f"longiseg models: error: --threads must be between 1 and 1024, got {n}", err


def test_a_torchrun_worker_ends_at_once_on_sigterm_with_one_line(tmp_path: Path) -> None:
    # torchrun ends every rank when one fails; raised as an exception, SIGTERM landed inside a callback of the
    # distributed C++ code (a "[rank0]: Traceback"), and the rank then failed in a collective (exit 1)
    import subprocess
    import sys

    script = ("import signal, sys; from longiseg import cli\n"
              "def command(args):\n    signal.raise_signal(signal.SIGTERM)\n    return 0\n"
              "cli._cmd_models = command\nsys.exit(cli.main(['models']))")
    env = {**os.environ, "WORLD_SIZE": "2", "RANK": "0", "TORCHELASTIC_RUN_ID": "test"}
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120,
                          cwd=tmp_path)
    assert done.returncode == 143, done.stderr
    assert done.stderr.strip().splitlines()[-1].startswith("longiseg: terminated (signal 15"), done.stderr
    assert "Traceback" not in done.stderr


@pytest.mark.parametrize(("argv", "line"), [
    (["demo", "--seed", "-1"], "longiseg demo: error: --seed must be an int in [0, "),
    (["cohort", "OUT", "--seed", "-1"], "longiseg cohort: error: --seed must be an int in [0, "),
    (["demo", "--jobs", "0"], "longiseg demo: error: --jobs must be None (automatic) or an int >= 1, got 0"),
    (["demo", "--steps-per-epoch", "0"], "longiseg demo: error: --steps-per-epoch must be an int >= 1, got 0"),
])
def test_demo_and_cohort_errors_name_the_option_typed(argv: list[str], line: str, tmp_path,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    # they named the config field behind it ("DemoConfig: seed must be ...", "steps_per_epoch must be ...")
    argv = [str(tmp_path / "out") if a == "OUT" else a for a in argv]
    assert main(argv) == 2
    assert capsys.readouterr().err.startswith(line)
    assert not (tmp_path / "out").exists()
