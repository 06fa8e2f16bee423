"""The read-out commands used as a clinician or researcher would: ``longiseg evaluate``, ``lesions`` and ``tune``
on inputs written by other tools, reruns and bad options (one line ``longiseg CMD: error: ...``, exit 2)."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from longiseg.cli import main
from longiseg.data import save_prediction
from longiseg.engine.checkpoint import load_model, save_checkpoint
from longiseg.registry import build_model
from longiseg.workflows import tune as tune_module
from longiseg.workflows.config import InferenceConfig

AFFINE = np.diag([1.0, 1.0, 1.0, 1.0])


def _blob(shape: tuple[int, int, int], corner: tuple[int, int, int], size: int = 4) -> np.ndarray:
    m = np.zeros(shape, np.uint8)
    m[tuple(slice(c, c + size) for c in corner)] = 1
    return m


# --------------------------------------------------------------------------- tune
def _tiny_run(run: Path) -> Path:
    """A run folder with a tiny trained-looking checkpoint and one validation patient."""
    kwargs = {"widths": [8, 8, 8, 8], "depths": [1, 1, 1, 1], "num_heads": [1, 1, 1, 1], "decoder_dim": 8,
              "in_channels": 1}  # one channel per timepoint: the flair its spec records
    model = build_model("segformer", **kwargs)
    model.spec = model.spec.replace(modalities=["flair"], crop_size=32, inference=InferenceConfig().to_dict())
    run.mkdir()
    save_checkpoint(run / "best.pt", model=model, model_name="segformer", model_kwargs=kwargs)
    (run / "split.json").write_text(json.dumps({"data_root": str(run), "val_root": None, "seed": 0,
                                                "train": ["a"], "validation": ["v"]}))
    return run / "best.pt"


def _fake_maps(*args: object, **kwargs: object) -> tune_module.ValidationMaps:
    """One progressing follow-up: its lesion has probability 0.35, a false alarm 0.2 (best: 0.25..0.35)."""
    shape = (16, 16, 16)
    ref = _blob(shape, (2, 2, 2)).astype(bool)
    prob = np.where(ref, 0.35, 0.0) + 0.2 * _blob(shape, (10, 10, 10))
    return tune_module.ValidationMaps([prob.astype(np.float32)], [ref], [None], [(1.0, 1.0, 1.0)],
                                      [np.zeros(shape, np.float32)])


def test_tune_again_is_idempotent(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # tuning a tuned checkpoint again started from the tuned threshold: the record's `default` (and the
    # tie-break towards it) became the earlier choice instead of the run's own threshold
    ckpt = _tiny_run(tmp_path / "run")
    monkeypatch.setattr(tune_module, "validation_probabilities", _fake_maps)
    argv = ["--threads", "1", "tune", str(ckpt.parent), "--device", "cpu", "--no-progress", "--objective",
            "lesion_f1"]
    assert main(argv) == 0
    first = load_model(ckpt).spec
    record = json.loads((ckpt.parent / tune_module.TUNING_FILE).read_text())
    assert first.inference["progression_threshold"] == 0.35 and record["default"] == 0.5
    assert main(argv) == 0
    second = load_model(ckpt).spec
    assert second.tuning == first.tuning and second.inference == first.inference
    assert json.loads((ckpt.parent / tune_module.TUNING_FILE).read_text()) == record
    assert record["untuned_progression_threshold"] is None  # the checkpoint followed `threshold`


# --------------------------------------------------------------------------- evaluate
def _folders(root: Path) -> tuple[Path, Path]:
    """A reference of two cases (T = 2 and 3, one id with a space and a non-ASCII letter) and a perfect
    prediction folder, with a case and a follow-up the reference lacks."""
    shape = (12, 12, 12)
    cases = {"pätient 1": 2, "b": 3}
    for cid, t in cases.items():
        masks = [_blob(shape, (1, 1, 1))] + [_blob(shape, (6, 6, 6)) for _ in range(t - 1)]
        save_prediction(root / "ref", cid, AFFINE, {"mask": masks})
        save_prediction(root / "pred", cid, AFFINE, {"mask": masks + ([masks[-1]] if cid == "b" else [])})
    save_prediction(root / "pred", "only-in-pred", AFFINE, {"mask": [_blob(shape, (1, 1, 1))] * 2})
    return root / "pred", root / "ref"


def test_evaluate_warns_about_what_it_leaves_out(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    # predicted cases (and follow-ups) that the reference lacks were skipped without a word, and a
    # prediction folder that is the reference itself scored 1.0 everywhere without a word
    from longiseg.metrics.evaluate import evaluate_folder

    pred, ref = _folders(tmp_path)
    with caplog.at_level(logging.WARNING, logger="longiseg"):
        result = evaluate_folder(pred, ref, progress=False)
    assert sorted({r["case_id"] for r in result.table.rows}) == ["b", "pätient 1"]
    text = caplog.text
    assert "only-in-pred" in text and "not evaluated" in text and "more follow-ups" in text and "b" in text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="longiseg"):
        evaluate_folder(ref, ref, progress=False)
    assert "is the reference folder itself" in caplog.text


# --------------------------------------------------------------------------- lesions
def _cli(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    code = main(["--threads", "1", *argv])
    return code, capsys.readouterr().err


@pytest.mark.parametrize("case", ["images", "empty-images", "modality", "grid", "out"])
def test_lesions_refuses_what_it_cannot_honour(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                               case: str) -> None:
    # --images naming no folder and a --modality that the images lack gave a report without montages (exit 0);
    # an --out with files said "pass overwrite=True", the API's argument, not the option; images on a shifted grid
    # were reported as "shape (12, 12, 12) vs (12, 12, 12)"
    pred, _ = _folders(tmp_path)
    images = tmp_path / "images"
    for cid in ("pätient 1", "b", "only-in-pred"):  # flair images on the masks' grid
        (images / cid).mkdir(parents=True)
        for k in range(3 if cid == "b" else 2):
            affine = AFFINE + np.eye(4, k=3) * (case == "grid" and k == 1)  # 1 mm off along x
            nib.save(nib.Nifti1Image(np.ones((12, 12, 12), np.float32), affine), images / cid / f"t{k}_flair.nii.gz")
    out = tmp_path / "report"
    (tmp_path / "empty").mkdir()  # a folder of no case's images: the montages asked for were left out silently
    options = {"images": ["--images", str(tmp_path / "nope")], "empty-images": ["--images", str(tmp_path / "empty")],
               "modality": ["--images", str(images), "--modality", "pd"], "grid": ["--images", str(images)],
               "out": []}[case]
    if case == "out":
        out.mkdir()
        (out / "mine.txt").write_text("x")
    code, err = _cli(["lesions", str(pred), "--out", str(out), "--no-progress", *options], capsys)
    assert code == 2 and err.startswith("longiseg lesions: error: ") and err.count("\n") == 1, err
    assert {"images": "--images", "empty-images": "holds the images (CASE/t0_*.nii.gz) of none", "modality": "--modality", "grid": "affines differ by up to 1 mm",
            "out": "pass --overwrite"}[case] in err
    assert sorted(p.name for p in out.iterdir()) == ["mine.txt"] if case == "out" else not out.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporaries beside --out


def test_lesions_refuses_a_missing_modality_also_without_changes_to_draw(tmp_path: Path,
                                                                         capsys: pytest.CaptureFixture[str]) -> None:
    # --modality was checked only where a montage was drawn: a cohort without new or enlarging lesions got its
    # report (exit 0) although the images lack the modality asked for
    stable = [_blob((12, 12, 12), (1, 1, 1)), np.zeros((12, 12, 12), np.uint8)]
    save_prediction(tmp_path / "pred", "stable", AFFINE, {"mask": stable})
    for k in range(2):
        nib.save(nib.Nifti1Image(np.ones((12, 12, 12), np.float32), AFFINE),
                 tmp_path / "pred" / "stable" / f"t{k}_flair.nii.gz")
    out = tmp_path / "report"
    code, err = _cli(["lesions", str(tmp_path / "pred"), "--out", str(out), "--no-progress", "--modality", "pd"],
                     capsys)
    assert code == 2 and err.startswith("longiseg lesions: error: modality 'pd' (--modality)"), err
    assert not out.exists()

def test_lesions_overwrite_refuses_a_read_only_figures_folder_before_writing(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    # a report whose figures/ was made read-only (chmod) got the new tables, then failed removing the old figures
    # with a bare "[Errno 13] Permission denied": half a new report, half the old one
    import os

    pred, _ = _folders(tmp_path)
    out = tmp_path / "report"
    assert _cli(["lesions", str(pred), "--out", str(out), "--no-progress", "--no-figures"], capsys)[0] == 0
    (out / "figures").mkdir()
    (out / "figures" / "b_volume.png").write_bytes(b"old figure")
    (out / "mine.txt").write_text("the user's")  # a report merged into a folder with other content
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda path, mode, **kw: not (mode & os.W_OK and Path(path) == out / "figures")
                        and real_access(path, mode, **kw))  # as chmod a-w does for any user but root
    code, err = _cli(["lesions", str(pred), "--out", str(out), "--no-progress", "--no-figures", "--min-volume", "9",
                      "--overwrite"], capsys)
    assert code == 2 and err.count("\n") == 1, err
    assert err.startswith(f"longiseg lesions: error: cannot write the report into {out}: {out / 'figures'} is not "
                          "writable"), err
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporaries beside --out


def test_lesions_overwrite_leaves_a_read_only_folder_of_other_content_alone(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    """Merged into a folder with other content, the report checks only the folders it writes into: a read-only
    folder of the user's own files does not stop it (and is not touched)."""
    import os

    pred, _ = _folders(tmp_path)
    out = tmp_path / "report"
    (out / "mine").mkdir(parents=True)
    (out / "mine" / "notes.txt").write_text("the user's")
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda path, mode, **kw: not (mode & os.W_OK and Path(path) == out / "mine")
                        and real_access(path, mode, **kw))
    for _ in range(2):  # a first report into the folder, then one replacing it
        assert _cli(["lesions", str(pred), "--out", str(out), "--no-progress", "--no-figures", "--overwrite"],
                    capsys)[0] == 0
    assert (out / "mine" / "notes.txt").read_text() == "the user's" and (out / "lesions.json").is_file()


def test_validation_cases_of_different_voxel_sizes_are_tuned_each_with_its_own(tmp_path: Path) -> None:
    """tune refused a cohort whose validation cases had different voxel sizes (train and predict take it)."""
    from longiseg.data import save_case
    from longiseg.data.demo_cohort import DemoCohortConfig, generate_demo_case

    for i, spacing in enumerate((4, 3)):
        case, _ = generate_demo_case(i, DemoCohortConfig(num_patients=2, spacing=spacing), progressing=True)
        case.case_id = case.patient_id = f"v{i}"
        save_case(case, tmp_path / "cohort")
    kwargs = {"widths": [8, 8, 8, 8], "depths": [1, 1, 1, 1], "num_heads": [1, 1, 1, 1], "decoder_dim": 8,
              "in_channels": 2}
    model = build_model("segformer", **kwargs)
    model.spec = model.spec.replace(modalities=["flair", "t2"], crop_size=32, inference=InferenceConfig().to_dict())
    maps = tune_module.validation_probabilities(model, tmp_path / "cohort", ["v0", "v1"], device="cpu", progress=False)
    assert maps.spacings == [(4.0, 4.0, 4.0), (3.0, 3.0, 3.0)]
    assert [p.shape for p in maps.probabilities] == [r.shape for r in maps.references]
    assert maps.probabilities[0].shape != maps.probabilities[1].shape


@pytest.mark.parametrize("case", ["upper-case", "no-baseline", "t0", "dangling-out"])
def test_mask_folders_refuse_what_they_would_leave_out(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                       case: str) -> None:
    # a case whose baseline mask was named BASELINE_MASK.nii.gz, or that had progression masks but no baseline
    # mask, was left out of `lesions` and `evaluate` (exit 0; evaluate said the prediction's case was "not in the
    # reference"); a progression_t0.nii.gz was ignored; an --out that is a dangling link failed after the work
    # with a bare "[Errno 17] File exists"
    pred, ref = _folders(tmp_path)
    out = tmp_path / "report"
    b = ref / "b"
    if case == "upper-case":
        (b / "baseline_mask.nii.gz").rename(b / "BASELINE_MASK.nii.gz")
    elif case == "no-baseline":
        (b / "baseline_mask.nii.gz").unlink()
    elif case == "t0":
        (b / "progression_t0.nii.gz").write_bytes((b / "progression_t1.nii.gz").read_bytes())
    else:
        out.symlink_to(tmp_path / "nowhere")
    expected = {"upper-case": "BASELINE_MASK.nii.gz is named like the layout's 'baseline_mask.nii.gz' but for "
                              "upper-case letters",
                "no-baseline": "holds progression masks but no baseline_mask.nii.gz",
                "t0": "holds progression_t0.nii.gz, but timepoint 0 is the baseline",
                "dangling-out": "is a symbolic link to"}[case]
    for argv in (["lesions", str(ref)], ["evaluate", str(pred), str(ref)]):
        code, err = _cli([*argv, "--out", str(out), "--no-progress"], capsys)
        assert code == 2 and err.startswith(f"longiseg {argv[0]}: error: ") and err.count("\n") == 1, err
        assert expected in err, err
        assert out.is_symlink() if case == "dangling-out" else not out.exists()
    assert not (tmp_path / "nowhere").exists()


def test_evaluate_folder_keeps_its_report_apart_from_its_inputs(tmp_path: Path) -> None:
    # the CLI refused --out inside an input folder, evaluate_folder(output_dir=...) wrote the report into the
    # reference (read back as a case the next time) or into a predicted case folder; progress="no" passed as true
    from longiseg.metrics.evaluate import evaluate_folder
    from longiseg.metrics.evolution import evolution_folder

    pred, ref = _folders(tmp_path)
    before = {p: sorted(q.name for q in p.rglob("*")) for p in (pred, ref)}
    for out, how in ((ref, "is"), (pred / "b", "lies inside"), (tmp_path, "holds")):
        with pytest.raises(ValueError, match=f"output_dir {out} {how}"):
            evaluate_folder(pred, ref, output_dir=out, progress=False)
    assert {p: sorted(q.name for q in p.rglob("*")) for p in (pred, ref)} == before
    with pytest.raises(TypeError, match="progress must be a bool, got str 'no'"):
        evaluate_folder(pred, ref, progress="no")
    with pytest.raises(TypeError, match="progress must be a bool, got str 'no'"):
        evolution_folder(ref, progress="no")
