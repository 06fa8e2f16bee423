"""Experiment configs, the patient split, and the train -> predict -> evaluate workflow through the CLI."""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import re
import signal
import stat
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from process_helpers import running, wait_for
from torch import nn

from longiseg.cli import build_parser, main
from longiseg.data.cohort import find_cases
from longiseg.data.demo_cohort import generate_demo_cohort
from longiseg.data.split import split_by_patient
from longiseg.data.transforms import TimepointVariation
from longiseg.engine.checkpoint import load_model, save_checkpoint, update_spec
from longiseg.engine.config import ConfigError
from longiseg.networks.output import LongitudinalOutput
from longiseg.registry import build_model
from longiseg.ssm import BACKENDS
from longiseg.workflows.config import DataConfig, ExperimentConfig, InferenceConfig, LossConfig
from longiseg.workflows.predict import inference_settings, model_spec, run_prediction
from longiseg.workflows.train import build_datasets, build_loss, make_validate_fn

TINY_SEGMAST = ["model.name=segmast", "model.kwargs={widths: [8, 16, 16, 32], depths: [1, 1, 1, 1], decoder_dim: 16}"]


@pytest.fixture(scope="module")
def cohort(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("cohort") / "cohort"
    return generate_demo_cohort(root, num_patients=6, spacing=4, progress=False)


def test_experiment_config_round_trip_and_overrides(tmp_path: Path) -> None:
    cfg = ExperimentConfig().with_overrides(["trainer.max_epochs=3", "loss.strategy=whole", "data.planes=[axial]"])
    assert cfg.trainer.max_epochs == 3 and cfg.loss.strategy == "whole" and cfg.data.planes == ["axial"]
    path = cfg.save(tmp_path / "exp.yaml")
    again = ExperimentConfig.from_file(path)
    assert again == cfg
    with pytest.raises(ConfigError, match="Unknown config key 'trainer.max_epoch'.*max_epochs"):
        ExperimentConfig().with_overrides(["trainer.max_epoch=3"])
    with pytest.raises(ConfigError, match="Unknown config key 'lr' for ExperimentConfig. Did you mean 'trainer.lr'"):
        ExperimentConfig().with_overrides(["lr=1e-3"])  # a section's key without its section
    with pytest.raises(ConfigError, match="strategy must be one of"):
        LossConfig(strategy="some")
    with pytest.raises(ConfigError, match="planes must be"):
        DataConfig(planes=["oblique"])
    with pytest.raises(ConfigError, match="threshold"):
        InferenceConfig(threshold=1.5)


def test_training_levers_are_off_by_default_and_reach_the_datasets(cohort: Path) -> None:
    cases = find_cases(cohort)
    default = ExperimentConfig()
    train, val = build_datasets(default, "2.5D", cases[:4], cases[4:])
    assert train.sampler.persisting_share == 0.0 and train.transform.timepoint_variation is None
    cfg = default.with_overrides(["data.persisting_share=0.5", "data.augment_independent_timepoints=true"])
    for dim in ("2.5D", "3D"):
        train, val = build_datasets(cfg, dim, cases[:4], cases[4:])
        assert train.sampler.persisting_share == 0.5
        assert isinstance(train.transform.timepoint_variation, TimepointVariation)
        assert val.sampler.persisting_share == 0.0 and val.transform is None  # validation stays comparable
    assert build_loss(default).keep_hard_negatives is False
    assert build_loss(default.with_overrides(["loss.keep_hard_negatives=true"])).keep_hard_negatives is True
    with pytest.raises(ConfigError, match="persisting_share must be in"):
        DataConfig(persisting_share=1.5)
    with pytest.raises(ConfigError, match="augment_independent_timepoints needs augment=true"):
        DataConfig(augment=False, augment_independent_timepoints=True)


class _Silent(nn.Module):
    """Predicts no lesion anywhere: every logit -1."""

    def __init__(self) -> None:
        super().__init__()
        self.bias = nn.Parameter(torch.tensor(-1.0))

    def forward(self, images: torch.Tensor) -> LongitudinalOutput:  # (B, T, C, h, w)
        b, t, _, *spatial = images.shape
        return LongitudinalOutput(self.bias.expand(b, 1, *spatial), self.bias.expand(b, t - 1, 1, *spatial))


def test_validation_scores_the_baseline_only_where_it_is_annotated(cohort: Path) -> None:
    every = find_cases(cohort)
    cases = [next(c for c in every if c.progression_flag()), next(c for c in every if not c.progression_flag())]
    annotated = build_datasets(ExperimentConfig(), "2.5D", cases, cases)[1]
    scores = make_validate_fn(annotated)(_Silent())
    # the silent model scores 1 where the crop holds no baseline lesion, 0 elsewhere
    empty = [not annotated[i]["baseline"].any() for i in range(len(annotated))]
    assert scores["dice_baseline"] == pytest.approx(np.mean(empty)) and not all(empty)
    msseg2 = [dataclasses.replace(c, baseline_annotated=False) for c in cases]
    scores = make_validate_fn(build_datasets(ExperimentConfig(), "2.5D", msseg2, msseg2)[1])(_Silent())
    assert np.isnan(scores["dice_baseline"]) and scores["dice"] == scores["dice_progression"] == 0.0


def test_split_by_patient_is_stratified_and_disjoint(cohort: Path) -> None:
    cases = find_cases(cohort)
    train, val = split_by_patient(cases, 0.34, seed=0)
    assert {c.case_id for c in train}.isdisjoint({c.case_id for c in val})
    assert len(train) + len(val) == len(cases)
    assert any(c.progression_flag() for c in val) and any(not c.progression_flag() for c in val)
    with pytest.raises(ValueError, match="val_fraction"):
        split_by_patient(cases, 1.0)


def test_every_command_has_help(capsys: pytest.CaptureFixture[str]) -> None:
    parser = build_parser()
    for cmd in ("models", "train", "predict", "demo", "bench", "lesions", "register"):
        with pytest.raises(SystemExit) as exc:
            parser.parse_args([cmd, "--help"])
        assert exc.value.code == 0
        assert "usage: longiseg" in capsys.readouterr().out
    with pytest.raises(SystemExit) as exc:
        main(["evaluate", "--help"])
    assert exc.value.code == 0 and "PRED_DIR" in capsys.readouterr().out.upper()


def test_models_command_lists_the_registry(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["models", "segmast*"]) == 0
    out = capsys.readouterr().out
    assert "segmast_ms" in out and "9.32M" in out and "2.5D" in out


def test_models_command_names_the_dim_filter_when_nothing_matches(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["models", "--dim", "2D", "--no-params"]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.strip() == ("longiseg models: error: no 2D model is registered (--dim); dims with models: "
                                    "2.5D, 3D")
    assert main(["models", "segformer*", "--dim", "3D", "--no-params"]) == 2
    assert "longiseg models: error: no 3D model matches 'segformer*' (--dim 3D" in capsys.readouterr().err
    assert main(["models", "zzz*", "--no-params"]) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err.startswith("longiseg models: error: no model matches 'zzz*'")
    assert len(captured.err.splitlines()) == 1


def test_train_takes_no_progress_like_every_other_command(tmp_path: Path, monkeypatch) -> None:
    """train was the only command that runs a model without --no-progress ("unrecognized arguments")."""
    import longiseg.workflows.train as train

    seen = []

    class Done:
        def summary(self) -> str:
            return "done"

    monkeypatch.setattr(train, "run_training", lambda cfg, **kw: seen.append(cfg) or Done())
    for flags, shown in (([], True), (["--no-progress"], False)):
        assert main(["train", "--data", str(tmp_path), "--output", str(tmp_path / "run"), *flags]) == 0
        assert seen[-1].trainer.progress_bar is shown


def test_clear_errors_for_missing_data_unknown_model_and_bad_key(tmp_path: Path,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["train", "--data", str(tmp_path / "nope"), "--set", "trainer.max_epochs=1"]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main(["train", "--data", str(tmp_path), "--set", "model.name=segmastt"]) == 2
    assert "Unknown model name 'segmastt'" in capsys.readouterr().err
    assert main(["train", "--set", "trainer.max_epoch=1"]) == 2
    assert "Unknown config key" in capsys.readouterr().err
    assert main(["train", "--data", str(tmp_path), "--set", "data.crop_size=[16,", "16]"]) == 2  # an unquoted list
    err = capsys.readouterr().err
    assert "override '16]' must look like key=value" in err and "needs quotes" in err and err.count("\n") == 1


def test_sizes_a_model_cannot_take_fail_before_the_run_is_recorded(cohort: Path, tmp_path: Path,
                                                                   capsys: pytest.CaptureFixture[str]) -> None:
    """A crop or window the network's downsampling does not divide is named before any file is written."""
    unet = ["model.name=longi_unet_dw_2d", "model.kwargs={features: [4, 8, 16]}", "trainer.max_epochs=1"]
    run = tmp_path / "run"
    assert main(["train", "--data", str(cohort), "--output", str(run), "--set", *unet, "data.crop_size=18"]) == 2
    err = capsys.readouterr().err
    assert "data.crop_size must be divisible by 4" in err and err.count("\n") == 1
    assert not run.exists()
    assert main(["train", "--data", str(cohort), "--output", str(run), "--set", *unet, "data.crop_size=16",
                 "inference.patch_size=30"]) == 2
    assert "inference.patch_size must be divisible by 4" in capsys.readouterr().err
    assert not run.exists()


def test_anisotropic_3d_patches_train_and_predict(cohort: Path, tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    """``data.crop_size``/``inference.patch_size`` take one size per axis (a thin patch across thick slices); the
    model records them and predicts with them. A count that does not fit the model is named before any file."""
    run, pred = tmp_path / "run", tmp_path / "pred"
    common = ["model.name=longi_unet_dw", "model.kwargs={features: [4, 8, 16]}", "trainer.max_epochs=1",
              "trainer.batch_size=2", "trainer.device=cpu", "trainer.progress_bar=false", "trainer.tensorboard=false",
              "data.samples_per_epoch=4", "data.val_samples=2", "data.val_fraction=0.34"]
    assert main(["train", "--data", str(cohort), "--output", str(run), "--set", *common, "data.crop_size=[16, 16]"]) == 2
    err = capsys.readouterr().err
    assert "data.crop_size must have 3 entries (one per spatial dim), got 2: (16, 16)" in err and err.count("\n") == 1
    assert not run.exists()
    assert main(["train", "--data", str(cohort), "--output", str(run), "--set", *common,
                 "data.crop_size=[8, 24, 16]", "inference.patch_size=[12, 32, 20]"]) == 0
    model = load_model(run / "last.pt")
    assert model.spec.crop_size == (8, 24, 16) and model.spec.inference["patch_size"] == [12, 32, 20]
    # an unquoted list is split by the shell: the stray token is named as typed (it was "inference.32]")
    assert main(["predict", "--checkpoint", str(run / "last.pt"), "--input", str(cohort), "--output", str(pred),
                 "--set", "patch_size=[12,", "32]"]) == 2
    err = capsys.readouterr().err
    assert "--set '32]' must look like key=value (a value with spaces needs quotes" in err and err.count("\n") == 1
    assert main(["predict", "--checkpoint", str(run / "last.pt"), "--input", str(cohort), "--output", str(pred)]) == 0
    assert "window [12, 32, 20]" in capsys.readouterr().out
    case = sorted(p.name for p in cohort.iterdir() if p.is_dir())[0]
    ref = nib.load(cohort / case / "t0_flair.nii.gz")
    assert nib.load(pred / case / "baseline_mask.nii.gz").shape == ref.shape


def test_window_settings_are_checked_and_compared_by_their_edges(tmp_path: Path,
                                                                 caplog: pytest.LogCaptureFixture) -> None:
    """check_window_setting refuses what is not an int or 2-3 ints (called directly it raised a TypeError, or let
    True and 16.5 pass); crop 32 is crop [32, 32] when a run is resumed (it was warned about as a change); a window
    may be a numpy array, as the inferers take it."""
    from longiseg.inferers.settings import check_window_setting, same_window
    from longiseg.workflows.train import _warn_changed_settings

    for bad in ("16", 16.0, None, True, [16, 16.5], [True, 16], [], [16], [16] * 4, [16, 0], 5000):
        with pytest.raises(ConfigError, match="data.crop_size"):
            check_window_setting(bad, "DataConfig", "data.crop_size", minimum=8)
    for good in ([16, 32], (16, 32, 24), np.int64(32), np.array([16, 32])):  # as the datasets and inferers take them
        check_window_setting(good, "DataConfig", "data.crop_size")
    assert same_window(32, [32, 32]) and same_window((8, 16, 16), [8, 16, 16]) and not same_window([32, 48], 32)
    assert same_window(np.int64(32), np.array([32, 32]))
    with pytest.raises(TypeError, match="a must be an int or a sequence of ints"):
        same_window(None, 32)
    assert InferenceConfig(patch_size=np.array([32, 48])).patch_size == [32, 48]
    recorded = tmp_path / "experiment.yaml"
    ExperimentConfig.from_dict({"data": {"crop_size": 32}}).save(recorded)
    with caplog.at_level("WARNING", logger="longiseg"):
        _warn_changed_settings(recorded, ExperimentConfig.from_dict({"data": {"crop_size": [32, 32]}}))
        assert "crop_size" not in caplog.text
        _warn_changed_settings(recorded, ExperimentConfig.from_dict({"data": {"crop_size": [32, 48]}}))
    assert "data.crop_size=[32, 48] (the run had 32)" in caplog.text


def test_train_predict_evaluate_through_the_cli(cohort: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    run = tmp_path / "run"
    overrides = TINY_SEGMAST + [
        "trainer.max_epochs=2", "trainer.batch_size=4", "trainer.warmup_epochs=1", "trainer.device=cpu",
        "trainer.progress_bar=false", "trainer.tensorboard=false", "data.crop_size=32", "data.samples_per_epoch=8",
        "data.val_samples=4", "data.val_fraction=0.34", "inference.patch_size=32", "inference.batch_size=32",
        "inference.planes=[axial]",
    ]
    monkeypatch.chdir(tmp_path)  # folders given relative to it
    assert main(["train", "--data", os.path.relpath(cohort), "--output", "run", "--set", *overrides]) == 0
    assert (run / "last.pt").is_file() and (run / "experiment.yaml").is_file() and (run / "metrics.csv").is_file()
    rows = (run / "metrics.csv").read_text().strip().splitlines()
    assert len(rows) == 3 and "val_dice" in rows[0]
    # the training cases' voxel size travels with the model (predict warns about cases of other voxels)
    assert load_model(run / "last.pt").spec.preprocessing["voxel_size_mm"] == [4.0, 4.0, 4.0]
    # the record repeats the run from any folder: its folders are absolute (they were recorded as typed)
    recorded = ExperimentConfig.from_file(run / "experiment.yaml")
    assert Path(recorded.data.root).is_absolute() and Path(recorded.trainer.output_dir).is_absolute()

    pred = tmp_path / "pred"
    import longiseg.inferers.predict as predict_module

    listings: list[Path] = []
    find_cases = predict_module.find_cases
    monkeypatch.setattr(predict_module, "find_cases", lambda root, **kw: listings.append(root) or find_cases(root, **kw))
    assert main(["predict", "--checkpoint", str(run / "last.pt"), "--input", str(cohort), "--output", str(pred)]) == 0
    assert listings == [cohort]  # the input folder is listed once
    case = sorted(p.name for p in cohort.iterdir() if p.is_dir())[0]
    written = {p.name for p in (pred / case).iterdir()}
    assert {"baseline_mask.nii.gz", "progression_t1.nii.gz", "baseline_prob.nii.gz",
            "progression_t1_entropy.nii.gz"} <= written
    ref = nib.load(cohort / case / "t0_flair.nii.gz")
    out = nib.load(pred / case / "baseline_mask.nii.gz")
    assert out.shape == ref.shape and np.allclose(out.affine, ref.affine)
    # never overwrite silently
    assert main(["predict", "--checkpoint", str(run / "last.pt"), "--input", str(cohort),
                 "--output", str(pred)]) == 2
    assert "exist" in capsys.readouterr().err

    report = tmp_path / "report"
    assert main(["evaluate", str(pred), str(cohort), "--out", str(report), "--no-progress"]) == 0
    summary = json.loads((report / "summary.json").read_text())
    assert summary["models"] and (report / "boxplot.png").stat().st_size > 0
    lesions = tmp_path / "lesions"  # the clinical read-out runs on every predicted patient
    assert main(["lesions", str(pred), "--images", str(cohort), "--out", str(lesions), "--no-figures"]) == 0
    assert len(json.loads((lesions / "lesions.json").read_text())["cases"]) == len(find_cases(cohort))

    # tuning.json describes the run's checkpoints: a resume with nothing left to train keeps it, one that trains
    # further (and so replaces last.pt with an untuned checkpoint) removes it
    (run / "tuning.json").write_text("{}")
    train = ["train", "--data", str(cohort), "--output", str(run), "--resume", "--set", *overrides]
    assert main(train) == 0 and (run / "tuning.json").is_file()
    assert main([*train, "trainer.max_epochs=3"]) == 0 and not (run / "tuning.json").exists()
    assert len((run / "metrics.csv").read_text().strip().splitlines()) == 4


def test_a_second_train_into_a_folder_being_written_and_a_bad_scan_backend_write_nothing(
        cohort: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    # a second `longiseg train` into the same new folder passed the "already holds a run" check before the first
    # had a checkpoint and rewrote experiment.yaml and split.json; LONGISEG_SCAN_BACKEND=bogus failed after them
    import socket

    from longiseg.utils.io import process_start_time

    overrides = [*TINY_SEGMAST, "trainer.max_epochs=1", "trainer.device=cpu", "trainer.progress_bar=false",
                 "trainer.tensorboard=false", "data.crop_size=32", "data.samples_per_epoch=4", "data.val_fraction=0", "trainer.batch_size=4",
                 "inference.patch_size=32"]
    run = tmp_path / "run"
    run.mkdir()
    me = {"host": socket.gethostname(), "pid": os.getpid(), "started": process_start_time(os.getpid()), "token": "t"}
    (run / ".run.claim").write_text(json.dumps(me))  # a live process writes there
    assert main(["train", "--data", str(cohort), "--output", str(run), "--set", *overrides]) == 2
    err = capsys.readouterr().err
    assert "is being written by another longiseg train" in err and f"pid {os.getpid()}" in err
    assert sorted(p.name for p in run.iterdir()) == [".run.claim"]
    monkeypatch.setenv("LONGISEG_SCAN_BACKEND", "bogus")
    assert main(["train", "--data", str(cohort), "--output", str(tmp_path / "bogus"), "--set", *overrides]) == 2
    assert "unknown selective-scan backend 'bogus'" in capsys.readouterr().err
    assert not (tmp_path / "bogus").exists()
    monkeypatch.setenv("LONGISEG_SCAN_BACKEND", "cuda")  # not on this machine: a setting, exit 2, not 1
    assert main(["train", "--data", str(cohort), "--output", str(tmp_path / "cuda"), "--set", *overrides]) == 2
    assert not (tmp_path / "cuda").exists()


def test_a_wrapped_model_predicts_with_the_spec_of_the_model_inside(cohort: Path, tmp_path: Path) -> None:
    model = build_model("segmast", widths=[8, 16, 16, 32], depths=[1, 1, 1, 1], decoder_dim=16, d_state=4)
    cfg = InferenceConfig(patch_size=32, planes=["axial"], batch_size=32)
    model.spec = model.spec.replace(modalities=("flair", "t2"), inference=cfg.to_dict())
    for wrapped in (nn.DataParallel(model), torch.compile(model)):  # compile wraps lazily: nothing is compiled
        assert model_spec(wrapped) is model.spec
        assert inference_settings(wrapped) == cfg
    case = find_cases(cohort)[0].case_id
    written = run_prediction(nn.DataParallel(model), cohort, tmp_path / "pred", case_ids=[case], device="cpu",
                             progress=False)
    assert list(written) == [case] and (tmp_path / "pred" / case / "baseline_mask.nii.gz").is_file()


def test_a_model_trained_on_cropped_cases_predicts_on_the_full_grid(cohort: Path, tmp_path: Path) -> None:
    # longiseg predict refused a checkpoint trained with data.crop_to_foreground=true (which tune accepted), so such
    # a run's models could not be used; cropping does not change the z-scores the model sees
    model = build_model("segmast", widths=[8, 16, 16, 32], depths=[1, 1, 1, 1], decoder_dim=16, d_state=4)
    cfg = InferenceConfig(patch_size=32, planes=["axial"], batch_size=32)
    case = find_cases(cohort)[0].case_id
    maps = {}
    for crop in (False, True):
        model.spec = model.spec.replace(modalities=("flair", "t2"), inference=cfg.to_dict(),
                                        preprocessing={"normalization": "zscore", "crop_to_foreground": crop})
        run_prediction(model, cohort, tmp_path / str(crop), case_ids=[case], device="cpu", progress=False)
        maps[crop] = np.asarray(nib.load(tmp_path / str(crop) / case / "progression_t1_prob.nii.gz").dataobj)
    assert np.array_equal(maps[False], maps[True])


def test_predict_folder_predicts_from_the_model_alone_as_longiseg_predict_does(cohort: Path, tmp_path: Path) -> None:
    # predict_folder took its own defaults (a 128 window, threshold 0.5, no minimum volume, no brain restriction,
    # the folder's modality order) instead of what the model records, so its masks were not longiseg predict's
    from longiseg.inferers import predict_folder

    model = build_model("segmast", widths=[8, 16, 16, 32], depths=[1, 1, 1, 1], decoder_dim=16, d_state=4)
    cfg = InferenceConfig(patch_size=32, planes=["axial"], batch_size=32, progression_threshold=0.3,
                          min_lesion_mm3=200.0, restrict="both")
    model.spec = model.spec.replace(modalities=("t2", "flair"), inference=cfg.to_dict(),
                                    preprocessing={"normalization": "zscore"})
    case = find_cases(cohort)[0].case_id
    run_prediction(model, cohort, tmp_path / "cli", case_ids=[case], device="cpu", progress=False)
    predict_folder(model, cohort, tmp_path / "api", case_ids=[case], progress=False)
    names = sorted(p.name for p in (tmp_path / "cli" / case).iterdir() if p.name.endswith(".nii.gz"))
    assert names == sorted(p.name for p in (tmp_path / "api" / case).iterdir() if p.name.endswith(".nii.gz"))
    for name in names:
        np.testing.assert_array_equal(np.asarray(nib.load(tmp_path / "cli" / case / name).dataobj),
                                      np.asarray(nib.load(tmp_path / "api" / case / name).dataobj), err_msg=name)
    record = json.loads((tmp_path / "api" / case / "prediction.json").read_text())
    assert record["modalities"] == ["t2", "flair"]  # the model's channel order, not the folder's sorted one
    # the same record: each call keeps the other's outputs (the CLI recorded a wrapper of its own as its reader)
    assert json.loads((tmp_path / "cli" / case / "prediction.json").read_text()) == record
    assert record["reader"] == "longiseg.inferers.predict.read_zscored"
    assert predict_folder(model, cohort, tmp_path / "cli", case_ids=[case], progress=False, skip_existing=True) == {}
    assert run_prediction(model, cohort, tmp_path / "api", case_ids=[case], device="cpu", progress=False,
                          skip_existing=True) == {}
    # and those longiseg predict 0.3.9-0.3.19 wrote, whose reader was the same for the same model
    legacy = {**record, "reader": "longiseg.workflows.predict.run_prediction.<locals>.read_preprocessed"}
    (tmp_path / "api" / case / "prediction.json").write_text(json.dumps({**legacy, "longiseg_version": "0.3.10"}))
    assert predict_folder(model, cohort, tmp_path / "api", case_ids=[case], progress=False, skip_existing=True) == {}
    # a model whose spec says "as stored": that command z-scored its cases until 0.3.15, and follows the spec since
    model.spec = model.spec.replace(preprocessing={"normalization": None})
    with pytest.raises(FileExistsError, match=r"reader .*read_preprocessed\" recorded, \"longiseg\.data\.loading\."
                                              r"load_case\" now"):
        predict_folder(model, cohort, tmp_path / "api", case_ids=[case], progress=False, skip_existing=True)
    (tmp_path / "api" / case / "prediction.json").write_text(json.dumps({**legacy, "longiseg_version": "0.3.16"}))
    assert predict_folder(model, cohort, tmp_path / "api", case_ids=[case], progress=False, skip_existing=True) == {}
    model.spec = model.spec.replace(preprocessing={"normalization": "zscore"})
    # ... but not where this call reads them otherwise: the spec records no normalisation, which longiseg predict
    # reads as z-scores (as longiseg train prepares its cases) and predict_folder's default as the images as stored
    zscored = model.spec
    model.spec = model.spec.replace(preprocessing={})
    with pytest.raises(FileExistsError, match=r"reader .*run_prediction.<locals>.read_preprocessed\" recorded, "
                                              r"\"longiseg.data.loading.load_case\" now"):
        predict_folder(model, cohort, tmp_path / "api", case_ids=[case], progress=False, skip_existing=True)
    model.spec = zscored

    # a case of other modalities than the model takes is refused before anything is read or written
    for predict in (lambda: run_prediction(model, cohort, tmp_path / "cli3", case_ids=[case], device="cpu",
                                           progress=False, modalities=["flair"]),
                    lambda: predict_folder(model, cohort, tmp_path / "api3", case_ids=[case], progress=False,
                                           modalities=["flair"])):
        with pytest.raises(ValueError, match=rf"the model takes 2 modalities per timepoint \['t2', 'flair'\], "
                                             rf"case '{case}' of .* has 1 \['flair'\]"):
            predict()
    assert not (tmp_path / "cli3").exists() and not (tmp_path / "api3").exists()

    # a normalisation this version does not apply is refused by both, not silently replaced by z-scores
    model.spec = model.spec.replace(preprocessing={"normalization": "minmax"})
    for predict in (lambda: run_prediction(model, cohort, tmp_path / "cli2", case_ids=[case], device="cpu",
                                           progress=False),
                    lambda: predict_folder(model, cohort, tmp_path / "api2", case_ids=[case], progress=False)):
        with pytest.raises(ValueError, match="normalization 'minmax' is not one this version applies"):
            predict()


def test_a_given_inferer_replaces_the_recorded_one_which_is_then_neither_built_nor_checked(cohort: Path,
                                                                                           tmp_path: Path) -> None:
    # prediction_defaults built the recorded inferer and checked its window even when the caller brought one, so
    # a model recording a window it cannot take could not be predicted with any inferer
    from longiseg.inferers import TriplanarInferer, predict_folder, prediction_defaults

    model = build_model("dynunet_2d", filters=(4, 8, 16))  # windows: multiples of 4, not padded
    recorded = InferenceConfig(patch_size=30, planes=["axial"], threshold=0.3)
    model.spec = model.spec.replace(inference=recorded.to_dict())
    with pytest.raises(ValueError, match="inference.patch_size"):
        prediction_defaults(model)
    defaults = prediction_defaults(model, inferer=False)
    assert "inferer" not in defaults and defaults["threshold"] == 0.3
    with pytest.raises(TypeError, match="inferer must be a bool"):
        prediction_defaults(model, inferer=None)  # type: ignore[arg-type]
    case = find_cases(cohort)[0].case_id
    given = TriplanarInferer(patch_size=32, planes=["axial"], progress=False)
    assert predict_folder(model, cohort, tmp_path / "api", case_ids=[case], inferer=given, progress=False)
    assert json.loads((tmp_path / "api" / case / "prediction.json").read_text())["settings"]["threshold"] == 0.3


def test_tune_refuses_a_write_protected_checkpoint_before_any_work(tmp_path: Path,
                                                                   capsys: pytest.CaptureFixture[str]) -> None:
    run = tmp_path / "run"
    best = save_checkpoint(run / "best.pt", model=nn.Linear(1, 1))  # refused before it is read or split.json is
    best.chmod(0o444)
    assert main(["tune", str(run), "--device", "cpu"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert re.fullmatch(r"longiseg tune: error: checkpoint \S*best.pt is write-protected .*chmod u\+w", err), err
    assert stat.S_IMODE(best.stat().st_mode) == 0o444
    # a write-protected run folder too, also for root (whom os.access lets write anywhere)
    best.chmod(0o644)
    run.chmod(0o555)
    try:
        assert main(["tune", str(run), "--device", "cpu"]) == 2
        err = capsys.readouterr().err
        assert f"run folder {run} is not writable" in err, err
    finally:
        run.chmod(0o755)


def test_tune_refuses_a_run_folder_that_a_train_is_writing(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """A train --resume writing the run while tune ran: tune rewrote best.pt, train's clean-up then removed
    tuning.json (best.pt had changed), and a checkpoint improved meanwhile got a threshold chosen on older weights."""
    import socket

    from longiseg.utils.io import process_start_time
    from longiseg.workflows import tune

    run = tmp_path / "run"
    save_checkpoint(run / "best.pt", model=nn.Linear(1, 1))
    (run / "split.json").write_text(json.dumps({"data_root": str(tmp_path), "val_root": None, "seed": 0,
                                                "train": ["a"], "validation": ["b"]}))
    me = {"host": socket.gethostname(), "pid": os.getpid(), "started": process_start_time(os.getpid()), "token": "t"}
    (run / ".run.claim").write_text(json.dumps(me))  # a live longiseg train holds the run
    loaded: list[object] = []
    monkeypatch.setattr(tune, "load_model", lambda *a, **k: loaded.append(a))
    before = (run / "best.pt").read_bytes()
    assert main(["tune", str(run), "--device", "cpu"]) == 2
    err = capsys.readouterr().err.strip()
    assert re.fullmatch(rf"longiseg tune: error: {re.escape(str(run))} is being written by another longiseg train or "
                        rf"tune \(.*pid {os.getpid()}.*\); wait for it to finish, or choose another run folder", err), err
    assert not loaded and (run / "best.pt").read_bytes() == before
    assert sorted(p.name for p in run.iterdir()) == [".run.claim", "best.pt", "split.json"]


def test_evaluate_names_needs_a_value(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # nargs="*" let `--names` without a value fall back to the folder names silently
    with pytest.raises(SystemExit) as exit_info:  # a usage error: argparse exits with 2
        main(["evaluate", str(tmp_path / "a"), str(tmp_path / "b"), "--out", str(tmp_path / "r"), "--names"])
    assert exit_info.value.code == 2 and "--names" in capsys.readouterr().err


def test_evaluate_names_before_the_folders_is_named(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # `--names A B PRED GT` lets nargs="+" take the folders: say so instead of "give at least one folder"
    for name in ("p1", "p2", "gt"):
        (tmp_path / name).mkdir()
    folders = [str(tmp_path / n) for n in ("p1", "p2", "gt")]
    assert main(["evaluate", "--names", "A", "B", *folders]) == 2
    err = capsys.readouterr().err
    assert "--names took the folders" in err and folders[0] in err and "Traceback" not in err, err
    # ending the list with -- gives the folders back (the reference then fails for want of cases, not of folders)
    assert main(["evaluate", "--names", "A", "B", "--", *folders]) == 2
    assert "no case folders" in capsys.readouterr().err


RESUMABLE = TINY_SEGMAST + [
    "trainer.max_epochs=1", "trainer.batch_size=2", "trainer.warmup_epochs=0", "trainer.device=cpu",
    "trainer.progress_bar=false", "trainer.tensorboard=false", "data.crop_size=32", "data.samples_per_epoch=4",
    "data.val_samples=2", "data.val_fraction=0.34", "inference.patch_size=32",
]


def _records(run: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(run.iterdir()) if p.is_file()}


def _reorder_manifest(cohort: Path, modalities: list[str]) -> None:
    manifest = json.loads((cohort / "manifest.json").read_text())
    (cohort / "manifest.json").write_text(json.dumps({**manifest, "modalities": modalities}))


def test_a_resume_reads_the_channels_its_checkpoint_was_trained_on(cohort: Path, tmp_path: Path,
                                                                  capsys: pytest.CaptureFixture[str],
                                                                  monkeypatch: pytest.MonkeyPatch,
                                                                  caplog: pytest.LogCaptureFixture) -> None:
    """After the manifest's channel order changed, a resume loads the checkpoint's order (spec.modalities);
    other data.modalities, batch settings or a run without last.pt are refused before the records change."""
    import shutil

    import longiseg.workflows.train as train_module

    data = tmp_path / "cohort"
    shutil.copytree(cohort, data)
    run = tmp_path / "run"
    train = ["train", "--data", str(data), "--output", str(run), "--set", *RESUMABLE]
    assert main(train) == 0
    _reorder_manifest(data, ["t2", "flair"])
    (run / "tuning.json").write_text("{}")
    before = _records(run)
    refusals = [
        (["data.modalities=[t2, flair]"], r"trained on the modalities \['flair', 't2'\].*data\.modalities=\['t2', "
                                          r"'flair'\]: resume with data\.modalities=\['flair', 't2'\]"),
        (["trainer.batch_size=4"], r"other batch settings than it was trained with \(trainer\.batch_size 2 then, 4 "
                                   r"now\).*or start afresh with --overwrite"),
        (["data.samples_per_epoch=8"], r"data\.samples_per_epoch 4 then, 8 now"),
    ]
    for extra, match in refusals:
        assert main([*train, *extra, "--resume"]) == 2
        err = capsys.readouterr().err.strip().splitlines()[-1]
        assert err.startswith("longiseg train: error: resuming ") and re.search(match, err), err
        assert _records(run) == before  # experiment.yaml, split.json, tuning.json, checkpoints: untouched

    listed: list[object] = []
    find_cases = train_module.find_cases
    monkeypatch.setattr(train_module, "find_cases", lambda root, **kw: listed.append(kw["modalities"]) or find_cases(root, **kw))
    seed = ExperimentConfig.from_file(run / "experiment.yaml").loss.seed
    weight = ExperimentConfig.from_file(run / "experiment.yaml").data.lesion_weight
    with caplog.at_level(logging.WARNING, logger="longiseg"):
        assert main([*train, "trainer.max_epochs=2", f"loss.seed={seed + 5}", f"data.lesion_weight={weight / 2}",
                     "--resume"]) == 0
    # a changed data (or loss) setting was taken without a word, and recorded as if the run had used it throughout
    assert f"with data.lesion_weight={weight / 2} (the run had {weight}): the run will differ" in caplog.text
    assert listed == [["flair", "t2"]]  # not the manifest's ['t2', 'flair']
    assert load_model(run / "last.pt").spec.modalities == ("flair", "t2")
    record = ExperimentConfig.from_file(run / "experiment.yaml")
    assert record.data.modalities == ["flair", "t2"]
    assert record.loss.seed == seed  # the resumed loss goes on with its restored stream (warned), as recorded
    assert not (run / "tuning.json").exists()  # trained further: its tuning described older checkpoints


@pytest.mark.parametrize("outcome", ["best kept", "best replaced", "interrupted after best replaced"])
def test_a_resume_keeps_the_tuning_of_a_best_checkpoint_it_does_not_replace(
        cohort: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, outcome: str) -> None:
    """tuning.json of best.pt outlives a resume that trains further only while best.pt stays the same file."""
    import longiseg.workflows.train as train_module
    from longiseg.engine.trainer import Trainer

    run = tmp_path / "run"
    train = ["train", "--data", str(cohort), "--output", str(run), "--set", *RESUMABLE]
    assert main(train) == 0
    record = {"checkpoint": "best.pt", "threshold": 0.4}
    (run / "tuning.json").write_text(json.dumps(record))
    fit = Trainer.fit

    def fit_then(self: Trainer, **kwargs: object) -> object:
        result = fit(self, **kwargs)
        if outcome != "best kept":
            save_checkpoint(run / "best.pt", model=self.model, epoch=99)  # as an improving epoch would (atomically)
        if outcome.startswith("interrupted"):
            raise KeyboardInterrupt
        return result

    monkeypatch.setattr(train_module.Trainer, "fit", fit_then)
    code = main([*train, "trainer.max_epochs=2", "--resume"])
    assert code == (130 if outcome.startswith("interrupted") else 0)
    kept = outcome == "best kept"
    assert (run / "tuning.json").is_file() == kept
    if kept:
        assert json.loads((run / "tuning.json").read_text()) == record


def test_a_resume_of_a_run_without_data_modalities_warns_about_nothing(cohort: Path, tmp_path: Path,
                                                                      caplog: pytest.LogCaptureFixture,
                                                                      capsys: pytest.CaptureFixture[str]) -> None:
    # the run records data.modalities null (the manifest's order); the resume fills in the checkpoint's order and
    # warned "resuming with data.modalities=['flair', 't2'] (the run had None): the run will differ"
    run = tmp_path / "run"
    train = ["train", "--data", str(cohort), "--output", str(run), "--set", *RESUMABLE]
    assert main(train) == 0
    assert ExperimentConfig.from_file(run / "experiment.yaml").data.modalities is None
    with caplog.at_level(logging.WARNING, logger="longiseg"):
        assert main([*train, "trainer.max_epochs=2", "--resume"]) == 0
    assert "data." not in caplog.text, caplog.text  # (max_epochs=2 is warned about: it changed)
    # predict's --set adjusts the checkpoint's settings, with or without the section's name
    for i, setting in enumerate(("inference.progression_threshold=0.35", "progression_threshold=0.35")):
        out = tmp_path / f"pred{i}"
        assert main(["predict", "--checkpoint", str(run / "last.pt"), "--input", str(cohort), "--output", str(out),
                     "--device", "cpu", "--set", setting, "inference.batch_size=4"]) == 0
        assert "progression 0.35" in capsys.readouterr().out


def test_validation_cases_are_read_in_the_training_channel_order(cohort: Path, tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch,
                                                                 caplog: pytest.LogCaptureFixture) -> None:
    """data.val_root without a manifest (alphabetical [flair, t2]) next to a training manifest ordering
    [t2, flair]: the validation channels follow the training order."""
    import shutil

    import longiseg.workflows.train as train_module

    shutil.copytree(cohort, tmp_path / "train")
    shutil.copytree(cohort, tmp_path / "val")
    (tmp_path / "val" / "manifest.json").unlink()
    _reorder_manifest(tmp_path / "train", ["t2", "flair"])
    seen: dict[str, list] = {}

    def stop(cfg: ExperimentConfig, dim: str, train_cases: list, val_cases: list) -> None:
        seen.update(train=train_cases, val=val_cases)
        raise KeyboardInterrupt  # enough: the datasets are what training and validation would read

    monkeypatch.setattr(train_module, "build_datasets", stop)
    cfg = ExperimentConfig().with_overrides([*RESUMABLE, f"data.root={tmp_path / 'train'}",
                                             f"data.val_root={tmp_path / 'val'}", f"trainer.output_dir={tmp_path / 'run'}"])
    with pytest.raises(KeyboardInterrupt), caplog.at_level(logging.WARNING, logger="longiseg"):
        train_module.run_training(cfg)
    assert {c.modalities for c in seen["train"] + seen["val"]} == {("t2", "flair")}
    assert all(c.image_files[0][0].name == "t0_t2.nii.gz" for c in seen["val"])
    # the validation folder is a copy of the training cohort: validation would score the training patients
    assert f"holds {len(seen['train'])} patient(s) of the training cases" in caplog.text


def test_an_error_in_a_data_loader_worker_is_its_own_message() -> None:
    """torch re-raises a worker's exception with the worker's whole traceback as message; the command line
    shows the original message (the traceback stays available with --debug)."""
    from torch.utils.data import DataLoader, Dataset

    from longiseg.cli import _one_line

    class Broken(Dataset):
        def __len__(self) -> int:
            return 2

        def __getitem__(self, i: int) -> dict:
            try:
                return {}["images"]
            except KeyError as err:
                raise ValueError("case 'p3': image p3/t0_flair.nii.gz contains NaN\nor infinite values") from err

    class Keyless(Broken):
        def __getitem__(self, i: int) -> dict:
            return {}["images"]

    for data, expected in ((Broken(), "case 'p3': image p3/t0_flair.nii.gz contains NaN or infinite values"),
                           (Keyless(), "KeyError: 'images'")):
        with pytest.raises(Exception) as info:
            next(iter(DataLoader(data, num_workers=1)))
        assert "Original Traceback" in str(info.value)
        assert _one_line(info.value) == expected
    assert _one_line(ValueError("a\n b")) == "a b"


def test_demo_never_deletes_a_folder_it_did_not_write(tmp_path: Path) -> None:
    from longiseg.workflows.demo import DemoConfig, run_demo

    precious = tmp_path / "precious"
    precious.mkdir()
    (precious / "data.txt").write_text("user data")
    for overwrite in (False, True):  # the first said "pass --overwrite", which the second then refused
        with pytest.raises(FileExistsError, match="not empty and was not written by the demo") as err:
            run_demo(DemoConfig(output_dir=str(precious), num_patients=6, num_test=2, overwrite=overwrite))
        assert "overwrite" not in str(err.value)
    assert (precious / "data.txt").read_text() == "user data"


def test_demo_without_matplotlib_is_refused_before_it_writes(tmp_path: Path, monkeypatch, capsys) -> None:
    """The demo wrote its whole cohort, then failed on its first figure with "No module named 'matplotlib'",
    naming no extra, and its half-written folder made the rerun ask for --overwrite."""
    from longiseg.workflows.figures import plot_training_curves

    monkeypatch.setitem(sys.modules, "matplotlib", None)  # not installed
    assert main(["demo", "--quick", "--output", str(tmp_path / "demo"), "--no-progress"]) == 2
    assert capsys.readouterr().err.strip() == (
        "longiseg demo: error: matplotlib is needed for the demo's figures: pip install 'longiseg[demo]' "
        "(or matplotlib)")
    assert not (tmp_path / "demo").exists()
    with pytest.raises(ImportError, match=r"^matplotlib is needed for longiseg's figures: pip install"):
        plot_training_curves({"run": tmp_path}, tmp_path / "curves.png")
    assert list(tmp_path.iterdir()) == []


def _permissions_enforced(tmp: Path) -> bool:
    """Whether this process is refused a folder without write permission (root is not)."""
    probe = tmp / "probe"
    probe.mkdir()
    probe.chmod(0o555)
    try:
        return not os.access(probe, os.W_OK)
    finally:
        probe.chmod(0o755)
        probe.rmdir()


def test_demo_overwrite_empties_its_folder_in_place(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """--overwrite deletes what the demo folder holds, not the folder: a symbolic link to it stays one (rmtree
    refused it), its parent need not be writable (the old demo was deleted, then the folder could not be), and a
    folder in it that cannot be emptied is reported before anything is deleted."""
    from longiseg.workflows import demo

    monkeypatch.setattr(demo, "_run", lambda cfg, out: {"holds": sorted(p.name for p in out.iterdir())})

    def old_demo(folder: Path) -> Path:
        (folder / "runs").mkdir(parents=True)
        (folder / "runs" / "old.txt").write_text("old")
        (folder / ".longiseg-demo").write_text("written by longiseg demo")
        return folder

    def run(folder: Path) -> dict:
        return demo.run_demo(demo.DemoConfig(output_dir=str(folder), num_patients=6, num_test=2, overwrite=True))

    out = old_demo(tmp_path / "demo")
    handle = os.open(out, os.O_RDONLY)
    try:
        assert run(out) == {"holds": [".longiseg-demo"]}
        assert os.fstat(handle).st_nlink > 0  # the folder itself was kept (a deleted one has no links)
    finally:
        os.close(handle)
    link = tmp_path / "link"
    link.symlink_to(old_demo(tmp_path / "target"))
    assert run(link) == {"holds": [".longiseg-demo"]}
    assert link.is_symlink() and not (tmp_path / "target" / "runs").exists()
    with pytest.raises(FileNotFoundError, match="symbolic link to .*missing, which does not exist"):
        (tmp_path / "dangling").symlink_to(tmp_path / "missing")
        run(tmp_path / "dangling")
    if not _permissions_enforced(tmp_path):
        return
    parent = tmp_path / "read-only"
    out = old_demo(parent / "demo")
    parent.chmod(0o555)
    try:
        assert run(out) == {"holds": [".longiseg-demo"]}
    finally:
        parent.chmod(0o755)
    (out / "results.json").write_text("{}")
    (out / "runs").mkdir()
    (out / "runs" / "old.txt").write_text("old")
    (out / "runs").chmod(0o555)
    try:
        with pytest.raises(PermissionError, match="runs is not writable; nothing was deleted"):
            run(out)
        assert sorted(p.name for p in out.iterdir()) == [".longiseg-demo", "results.json", "runs"]
        assert (out / "runs" / "old.txt").is_file()
    finally:
        (out / "runs").chmod(0o755)




_ENDLESS_STAGES = """
import os
import time
from pathlib import Path


def stages(cfg, *args):
    \"\"\"Stages of a demo model that run until they are stopped; the worker's pid in OUT/LABEL.pid.\"\"\"
    out = next(a for a in args if isinstance(a, Path))
    label = args[0] if isinstance(args[0], str) else "untrained"
    (out / f"{label}.tmp").write_text(str(os.getpid()))
    os.replace(out / f"{label}.tmp", out / f"{label}.pid")
    while True:
        time.sleep(0.05)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc; the workers use PR_SET_PDEATHSIG")
@pytest.mark.parametrize(("signum", "code", "line"), [
    (signal.SIGTERM, 143, "longiseg demo: terminated"),  # kill PID, a scheduler's time limit
    (signal.SIGINT, 130, "longiseg demo: interrupted"),  # Ctrl-C: the whole process group
    (signal.SIGKILL, -signal.SIGKILL, None),  # no clean-up at all
])
def test_demo_worker_processes_end_with_the_demo(tmp_path: Path, signum: int, code: int, line: str | None) -> None:
    """Stopped while its workers train, longiseg demo --jobs 2 ends them: SIGTERM left them writing into the
    output for minutes, Ctrl-C waited for them (and printed their tracebacks), and they outlive a killed demo."""
    (tmp_path / "endless.py").write_text(_ENDLESS_STAGES)
    out = tmp_path / "demo"
    # Ctrl-C raises KeyboardInterrupt as in a terminal, also where the test session was started with SIGINT
    # ignored (a shell's background job inherits SIG_IGN, and Python then leaves SIGINT ignored)
    script = ("import signal, sys; signal.signal(signal.SIGINT, signal.default_int_handler); "
              "sys.path.insert(0, sys.argv[1]); import endless; from longiseg import cli; "
              "from longiseg.workflows import demo; demo._model_stages = demo._untrained_stage = endless.stages; "
              "demo._run = demo._run_model_stages; sys.exit(cli.main(['demo', '--output', sys.argv[2], '--jobs', "
              "'2', '--num-patients', '6', '--num-test', '2', '--no-progress']))")
    with open(tmp_path / "stderr.txt", "w") as err:
        proc = subprocess.Popen([sys.executable, "-c", script, str(tmp_path), str(out)], stdout=subprocess.DEVNULL,
                                stderr=err, start_new_session=True)
    workers: list[int] = []
    try:
        pid_files = [out / "SegMaST.pid", out / "SegFormer.pid"]
        wait_for(lambda: all(p.exists() for p in pid_files), 300, "two running workers")
        workers = [int(p.read_text()) for p in pid_files]
        (os.killpg if signum == signal.SIGINT else os.kill)(proc.pid, signum)
        assert proc.wait(timeout=120) == code
        text = (tmp_path / "stderr.txt").read_text()
        assert "Traceback" not in text
        assert line is None or text.splitlines()[-1] == line
        wait_for(lambda: not any(running(w) for w in workers), 60, "end of the worker processes")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        for pid in workers:
            if running(pid):
                os.kill(pid, signal.SIGKILL)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads the tracker's command line from /proc")
def test_the_demo_quiets_the_resource_tracker_without_changing_the_callers_warning_options() -> None:
    # the demo appended its -W option to sys.warnoptions for the rest of the caller's process (and every Python
    # process started from it afterwards); only the resource tracker it starts should take it
    script = ("import sys; from multiprocessing import resource_tracker; "
              "from longiseg.workflows.demo import _start_quiet_resource_tracker as start; "
              "before = list(sys.warnoptions); start(); start(); assert sys.warnoptions == before, sys.warnoptions; "
              "import pathlib, time; cmdline = pathlib.Path(f'/proc/{resource_tracker._resource_tracker._pid}/cmdline'); "
              "[time.sleep(0.05) for _ in range(200) if not cmdline.read_bytes()]; "  # until it has started Python
              "print(cmdline.read_bytes().split(bytes(1)))")
    done = subprocess.run([sys.executable, "-W", "default", "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "b'-Wignore:resource_tracker:UserWarning'" in done.stdout and "b'-Wdefault'" in done.stdout, done.stdout


def test_demo_trains_its_models_in_parallel_with_the_results_of_one_after_another(tmp_path: Path,
                                                                                    monkeypatch) -> None:
    """jobs=2 trains both models (and predicts the untrained reference) in two processes: the same weights,
    probability maps and table as jobs=1."""
    import longiseg.workflows.demo as demo
    from longiseg.workflows.demo import DemoConfig, demo_jobs, run_demo

    small = dict(num_patients=8, num_test=2, spacing=4, epochs=1, steps_per_epoch=2, batch_size=4, crop_size=32,
                 num_workers=0, progress=False)
    ran_in: dict[int, set[int]] = {}  # jobs -> the processes that ran the model stages
    stages = demo._run_model_stages

    def recorded(cfg, out):  # noqa: ANN001, ANN202
        result = stages(cfg, out)
        ran_in[cfg.jobs] = {stage["process"] for stage in result.values()}
        return result

    monkeypatch.setattr(demo, "_run_model_stages", recorded)
    summaries = {jobs: run_demo(DemoConfig(output_dir=str(tmp_path / str(jobs)), jobs=jobs, **small)) for jobs in (1, 2)}
    # one after another here; in parallel in (at most two) worker processes, never here
    assert ran_in[1] == {os.getpid()} and os.getpid() not in ran_in[2] and 1 <= len(ran_in[2]) <= 2, ran_in
    assert summaries[1]["models"] == summaries[2]["models"]
    for label, record in summaries[1]["thresholds"].items():  # the same choice, recorded with each run's data root
        assert {**record, "data_root": None} == {**summaries[2]["thresholds"][label], "data_root": None}
    assert set(summaries[2]["timings_s"]) >= {"train_SegMaST", "predict_SegFormer", "predict_untrained", "total"}
    for label in ("SegMaST", "SegFormer"):
        weights = [load_model(tmp_path / str(jobs) / "runs" / label / "last.pt").state_dict() for jobs in (1, 2)]
        assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])
    for label in ("SegMaST", "SegFormer", "untrained"):
        case = summaries[1]["test_cases"][0]
        maps = [np.asarray(nib.load(tmp_path / str(jobs) / "predictions" / label / case / "progression_t1_prob.nii.gz")
                           .dataobj) for jobs in (1, 2)]
        assert np.array_equal(maps[0], maps[1])
    assert demo_jobs(DemoConfig(jobs=5)) == 2 and demo_jobs(DemoConfig(jobs=1)) == 1
    assert demo_jobs(DemoConfig(models=("SegFormer",))) == 1
    with pytest.raises(ConfigError, match="jobs must be None"):
        DemoConfig(jobs=0)


def test_demo_is_its_public_stages_typed_by_hand(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """The demo composes cohort -> train -> tune -> predict -> evaluate; typing them gives the same table, and
    predict needs nothing but the checkpoint."""
    import csv

    from longiseg.inferers import postprocess
    from longiseg.tuning import DEFAULT_THRESHOLDS
    from longiseg.workflows.demo import DEMO_COHORT_LESIONS, DemoConfig, run_demo

    out = tmp_path / "demo"
    cfg = DemoConfig(output_dir=str(out), num_patients=8, num_test=2, spacing=4, models=("SegFormer",), epochs=1,
                     steps_per_epoch=2, batch_size=4, crop_size=32, num_workers=0, progress=False)
    summary = run_demo(cfg)
    saved = json.loads((out / "results.json").read_text())
    assert saved["test_cases"] == summary["test_cases"] and len(summary["test_cases"]) == 2
    # The threshold was chosen on the trainer's validation patients, never on the test patients.
    sel = saved["thresholds"]["SegFormer"]
    val_ids = set(sel["validation_cases"])
    assert val_ids and not val_ids & set(summary["test_cases"])
    assert val_ids <= {c.case_id for c in find_cases(out / "train")}
    assert sel["threshold"] in DEFAULT_THRESHOLDS and sel["default"] == 0.5 and sel["objective"] == "balanced"
    assert sel["num_progression"] + sel["num_stable"] == len(val_ids)
    assert sel["score"] >= sel["default_score"]
    assert {m["model"] for m in summary["models"]} == {"SegFormer", "SegFormer (untrained)"}
    assert set(summary["timings_s"]) >= {"cohort", "train_SegFormer", "tune_SegFormer", "predict_SegFormer"}
    cohort_cfg = json.loads((out / "cohort" / "demo_cohort.json").read_text())["config"]
    assert cohort_cfg["num_patients"] == 8
    assert all(tuple(cohort_cfg[k]) == tuple(v) for k, v in DEMO_COHORT_LESIONS.items())
    # The test masks are the probability maps post-processed at the tuned threshold, progression outside the
    # baseline mask.
    assert sel["progression_outside_baseline"] is True
    pred = out / "predictions" / "SegFormer"
    case = summary["test_cases"][0]
    prob = np.asarray(nib.load(pred / case / "progression_t1_prob.nii.gz").dataobj, dtype=np.float32)
    base_prob = np.asarray(nib.load(pred / case / "baseline_prob.nii.gz").dataobj, dtype=np.float32)
    brain = np.asarray(nib.load(out / "test" / case / "brain_mask.nii.gz").dataobj) > 0
    base = np.asarray(nib.load(pred / case / "baseline_mask.nii.gz").dataobj) > 0
    mask = np.asarray(nib.load(pred / case / "progression_t1.nii.gz").dataobj) > 0
    # The baseline head keeps its threshold (0.5); the tuned one is the progression masks' alone.
    assert sel["baseline_threshold"] == 0.5
    spec = load_model(out / "runs" / "SegFormer" / "last.pt").spec
    assert spec.inference["threshold"] == 0.5 and spec.inference["progression_threshold"] == sel["threshold"]
    pp = {"min_volume_mm3": 27.0, "spacing": (4.0, 4.0, 4.0)}
    assert np.array_equal(base, postprocess(base_prob, threshold=0.5, **pp))
    assert np.array_equal(mask, postprocess(prob, brain_mask=brain, exclude=base, threshold=sel["threshold"], **pp))

    # The same stages by hand, through the command line.
    hand = tmp_path / "hand"
    run = hand / "runs" / "SegFormer"
    steps = [
        ["cohort", str(hand), "--num-patients", "8", "--num-test", "2", "--spacing", "4", "--no-progress"],
        ["train", str(out / "configs" / "SegFormer.yaml"), "--data", str(hand / "train"), "--output", str(run)],
        ["tune", str(run), "--checkpoint", "last.pt", "--device", "cpu", "--no-progress"],
        ["predict", "--checkpoint", str(run / "last.pt"), "--input", str(hand / "test"), "--output",
         str(hand / "predictions" / "SegFormer"), "--device", "cpu"],
        ["evaluate", str(hand / "predictions" / "SegFormer"), str(hand / "test"), "--out", str(hand / "report"),
         "--no-progress"],
    ]
    for argv in steps:
        assert main(["--threads", "1", *argv]) == 0, (argv, capsys.readouterr().err)
    printed = capsys.readouterr().out
    assert "tuned by longiseg tune" in printed
    # train ends with one line (not every epoch's metrics)
    finished = [line for line in printed.splitlines() if line.startswith("finished: ")]
    assert len(finished) == 1 and "history" not in finished[0], finished
    assert " epochs (" in finished[0] and "; best val_dice " in finished[0] and str(run / "last.pt") in finished[0]
    # A checkpoint tuned by longiseg < 0.3.1 has its tuned value in `threshold` (both heads): tuning it again gives
    # the baseline head back its threshold from before that tuning (the record's `default`).
    ckpt = run / "last.pt"
    spec = load_model(ckpt).spec
    old_inference = {k: v for k, v in spec.inference.items() if k != "progression_threshold"}
    update_spec(ckpt, spec.replace(inference={**old_inference, "threshold": 0.7}, tuning={**spec.tuning, "default": 0.5}))
    capsys.readouterr()
    # the checkpoint as a path inside the run (accepted since 0.3.17) is named as the file it is, not RUN/RUN/last.pt
    with monkeypatch.context() as m:
        m.chdir(run.parent)
        assert main(["--threads", "1", "tune", run.name, "--checkpoint", f"{run.name}/last.pt", "--device", "cpu",
                     "--no-progress"]) == 0
    assert f"recorded in {Path(run.name) / 'last.pt'} and" in capsys.readouterr().out
    retuned = load_model(ckpt).spec.inference
    assert retuned["threshold"] == 0.5 and retuned["progression_threshold"] in DEFAULT_THRESHOLDS

    def rows(report: Path) -> list[dict[str, str]]:
        with open(report / "per_case.csv") as fh:
            return [r for r in csv.DictReader(fh) if r["model"] == "SegFormer"]

    assert rows(hand / "report") == rows(out / "report")

    # predict needs nothing but the checkpoint: without experiment.yaml the output is bit for bit the same.
    (run / "experiment.yaml").unlink()
    again = hand / "again"
    assert main(["--threads", "1", "predict", "--checkpoint", str(run / "last.pt"), "--input", str(hand / "test"),
                 "--output", str(again), "--device", "cpu"]) == 0
    for f in sorted((hand / "predictions" / "SegFormer").rglob("*.nii.gz")):
        other = again / f.relative_to(hand / "predictions" / "SegFormer")
        assert np.array_equal(np.asarray(nib.load(f).dataobj), np.asarray(nib.load(other).dataobj)), f

    # Tuning post-processes as predict will: a spec without min_lesion_mm3 gets predict's default in both.
    import longiseg.workflows.tune as tune_module
    from longiseg.workflows.config import InferenceConfig

    seen: list[float] = []

    def recording(*args: object, **kwargs: object) -> object:
        seen.append(kwargs["min_volume_mm3"])  # type: ignore[arg-type]
        return select_threshold(*args, **kwargs)

    select_threshold = tune_module.select_threshold
    spec = load_model(ckpt).spec
    update_spec(ckpt, spec.replace(inference={k: v for k, v in spec.inference.items() if k != "min_lesion_mm3"}))
    monkeypatch.setattr(tune_module, "select_threshold", recording)
    tune_module.run_tuning(run, checkpoint="last.pt", device="cpu", progress=False)
    assert seen == [InferenceConfig().min_lesion_mm3]


def test_documented_cohort_command_lines_parse() -> None:
    # docs/reproducing.md documented `longiseg cohort demo3 --timepoints 3`, which does not exist
    import re
    import shlex

    root = Path(__file__).resolve().parents[1]
    texts = [(root / f).read_text() for f in ("docs/reproducing.md", "examples/README.md", "examples/three_timepoints.sh")]
    commands = {m.group(1).split("#")[0].strip() for t in texts for m in re.finditer(r"(longiseg cohort [^`\n]*)", t)}
    assert any("num_timepoints=3" in c for c in commands)
    parser = build_parser()
    for command in commands:
        args = parser.parse_args(shlex.split(command)[1:])  # an unknown option exits with a usage error
        assert args.command == "cohort", command
    # an option quoted on its own in the guide is one of longiseg's or of an example script
    known = {o for a in parser._actions for sub in getattr(a, "choices", None) or {} if isinstance(sub, str)
             for b in a.choices[sub]._actions for o in b.option_strings} | {o for a in parser._actions
                                                                            for o in a.option_strings}
    sources = "".join(p.read_text() for p in (root / "examples").glob("*.[ps][yh]"))
    quoted = set(re.findall(r"`(--[a-z][a-z-]*)", (root / "docs/reproducing.md").read_text()))
    unknown = sorted(o for o in quoted if o not in known and f'"{o}"' not in sources)
    assert not unknown, f"docs/reproducing.md quotes options that do not exist: {unknown}"


def test_bad_voxels_fail_train_and_predict_before_anything_is_written(cohort: Path, tmp_path: Path,
                                                                      capsys: pytest.CaptureFixture[str]) -> None:
    """A NaN voxel in the last case failed train in the middle of epoch 1 (the run's records written) and
    predict after the cases before it were written; a reference mask of 0/255 failed predict, which never
    reads it."""
    import shutil

    data = tmp_path / "cohort"
    shutil.copytree(cohort, data)
    first, last = sorted(p for p in data.iterdir() if p.is_dir())[0], sorted(p for p in data.iterdir() if p.is_dir())[-1]
    flair = last / "t1_flair.nii.gz"
    clean = flair.read_bytes()
    img = nib.load(flair)
    arr = np.asarray(img.dataobj, dtype=np.float32)
    arr[0, 0, 0] = np.nan
    header = img.header.copy()
    header.set_data_dtype(np.float32)  # stored as float32: NaN is not cast away
    header.set_slope_inter(1.0, 0.0)
    nib.save(nib.Nifti1Image(arr, img.affine, header), flair)
    mask = nib.load(first / "baseline_mask.nii.gz")
    nib.save(nib.Nifti1Image(np.asarray(mask.dataobj, dtype=np.uint8) * 255, mask.affine, mask.header),
             first / "baseline_mask.nii.gz")

    run = tmp_path / "run"
    overrides = TINY_SEGMAST + ["trainer.max_epochs=1", "trainer.device=cpu", "trainer.progress_bar=false",
                                "trainer.batch_size=4", "data.crop_size=32", "data.samples_per_epoch=4"]
    assert main(["train", "--data", str(data), "--output", str(run), "--set", *overrides]) == 2
    err = capsys.readouterr().err  # train reads the masks: the first case's fails first
    assert "baseline_mask.nii.gz must be binary (values 0/1), found values such as [255]" in err
    assert err.count("\n") == 1 and not run.exists()
    (first / "baseline_mask.nii.gz").write_bytes((cohort / first.name / "baseline_mask.nii.gz").read_bytes())
    assert main(["train", "--data", str(data), "--output", str(run), "--set", *overrides]) == 2
    err = capsys.readouterr().err
    assert f"{flair} contains NaN or infinite values" in err and err.count("\n") == 1 and not run.exists()
    # an all-zero image of a case without a brain mask (no voxel to normalise) failed in epoch 1 as well
    nib.save(nib.Nifti1Image(np.zeros_like(arr), img.affine, header), flair)
    brain = last / "brain_mask.nii.gz"
    kept_brain = brain.read_bytes()
    brain.unlink()
    assert main(["train", "--data", str(data), "--output", str(run), "--set", *overrides, "data.val_fraction=0"]) == 2
    err = capsys.readouterr().err
    assert f"case '{last.name}': image (t=1, flair) has no voxel to normalise" in err and not run.exists()
    brain.write_bytes(kept_brain)
    nib.save(nib.Nifti1Image(arr, img.affine, header), flair)  # the NaN again, for predict below
    nib.save(nib.Nifti1Image(np.asarray(mask.dataobj, dtype=np.uint8) * 255, mask.affine, mask.header),
             first / "baseline_mask.nii.gz")

    kwargs = {"widths": [8, 8, 8, 8], "depths": [1, 1, 1, 1], "num_heads": [1, 1, 1, 1], "decoder_dim": 8,
              "in_channels": 2}
    model = build_model("segformer", **kwargs)
    model.spec = model.spec.replace(modalities=["flair", "t2"], crop_size=32,
                                    inference={**InferenceConfig().to_dict(), "planes": ["axial"]})
    save_checkpoint(tmp_path / "model.pt", model=model, model_name="segformer", model_kwargs=kwargs)
    pred = tmp_path / "pred"
    predict = ["predict", "--checkpoint", str(tmp_path / "model.pt"), "--input", str(data), "--output", str(pred),
               "--device", "cpu", "--no-progress"]
    assert main(predict) == 2
    err = capsys.readouterr().err
    assert f"{flair} contains NaN or infinite values" in err and err.count("\n") == 1 and not pred.exists()
    flair.write_bytes(clean)
    assert main(predict) == 0  # the 0/255 reference mask is evaluate's to refuse, not predict's
    assert (pred / first.name / "baseline_mask.nii.gz").is_file()


def test_training_curves_draw_validated_epochs_only_and_names_as_written(tmp_path: Path) -> None:
    # with trainer.val_every = 2 the other epochs leave val_dice empty: float("") raised; a run label holding
    # '$' was parsed as math; a run without validation warned about an empty legend
    import warnings

    from longiseg.workflows.figures import plot_training_curves

    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.mkdir()
    (a / "metrics.csv").write_text("epoch,train_loss,val_dice\n1,1.0,\n2,0.8,0.3\n3,0.7,\n4,0.6,0.5\n")
    (b / "metrics.csv").write_text("epoch,train_loss\n1,1.0\n2,0.9\n")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = plot_training_curves({"every 2nd $^$": a}, tmp_path / "curves.png")
        assert out.is_file() and out.stat().st_size > 0
        assert plot_training_curves({"no validation": b}, tmp_path / "loss_only.png").is_file()


def test_a_resume_on_a_split_recorded_in_another_order_warns(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Runs of longiseg < 0.3.19 recorded their cases in the manifest's row order; cases now follow their ids, so a
    resume of such a run draws its samples from other cases: said, not refused (the same patients)."""
    from types import SimpleNamespace

    from longiseg.workflows.train import _check_resumed_split

    split = tmp_path / "split.json"
    split.write_text(json.dumps({"data_root": str(tmp_path), "val_root": None, "seed": 0, "train": ["b", "a"],
                                 "validation": ["c"]}))
    cases = [SimpleNamespace(case_id=c) for c in ("a", "b", "c")]
    with caplog.at_level("WARNING", logger="longiseg"):
        _check_resumed_split(split, cases[:2], cases[2:])
    assert "its training cases were listed in another order" in caplog.text
    caplog.clear()
    split.write_text(json.dumps({"data_root": str(tmp_path), "val_root": None, "seed": 0, "train": ["a", "b"],
                                 "validation": ["c"]}))
    with caplog.at_level("WARNING", logger="longiseg"):
        _check_resumed_split(split, cases[:2], cases[2:])
    assert not caplog.text
    with pytest.raises(ValueError, match="on another split than it was trained on"):
        _check_resumed_split(split, cases[:1], cases[1:])


def test_train_folders_keep_characters_outside_the_basic_plane(tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """``--data``/``--output`` reach the config as given: JSON's ``\\ud83d\\ude00`` escapes of an emoji became two
    lone surrogates in YAML, and the run failed with "surrogates not allowed"."""
    import longiseg.workflows.train as train_workflow

    seen: dict[str, str] = {}

    def fake_training(cfg: object, **kwargs: object) -> object:
        seen["root"], seen["out"] = cfg.data.root, cfg.trainer.output_dir  # type: ignore[attr-defined]
        raise ValueError("stop here")

    monkeypatch.setattr(train_workflow, "run_training", fake_training)
    data, out = tmp_path / "données-😀", tmp_path / "run-😀 ü"
    data.mkdir()  # (a missing --data is refused before the config reaches training)
    assert main(["train", "--data", str(data), "--output", str(out)]) == 2
    assert seen == {"root": str(data), "out": str(out)}


def test_threshold_note_says_where_the_progression_threshold_comes_from() -> None:
    """predict said "(tuned by longiseg tune ...)" of a progression threshold given with --set."""
    from longiseg.spec import ModelSpec
    from longiseg.workflows.config import InferenceConfig
    from longiseg.workflows.predict import threshold_note

    recorded = InferenceConfig(progression_threshold=0.5)
    spec = ModelSpec(name="m", dim="2.5D", inference=recorded.to_dict(), tuning={"threshold": 0.5})
    assert threshold_note(spec, recorded) == " (tuned by longiseg tune on validation patients)"
    assert threshold_note(spec, InferenceConfig(progression_threshold=0.9)) == " (given; the checkpoint's is 0.5)"
    assert threshold_note(ModelSpec(name="m", dim="2.5D"), recorded) == ""


@pytest.mark.parametrize("command", [["demo", "--quick", "--output", "{tmp}/demo"],
                                     ["predict", "--checkpoint", "{tmp}/none.pt", "--input", "{tmp}",
                                      "--output", "{tmp}/pred"]])
def test_an_unknown_scan_backend_variable_stops_a_command_before_it_writes(
        command: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    # `longiseg demo` wrote its whole cohort, then failed at the first training step with the same message
    monkeypatch.setenv("LONGISEG_SCAN_BACKEND", " Bogus ")
    assert main([a.format(tmp=tmp_path) for a in command]) == 2
    err = capsys.readouterr().err.strip()
    assert err.endswith(f"error: unknown selective-scan backend ' Bogus ' from the environment variable "
                        f"LONGISEG_SCAN_BACKEND; expected one of {BACKENDS}") and len(err.splitlines()) == 1
    assert list(tmp_path.iterdir()) == []
    monkeypatch.setenv("LONGISEG_SCAN_BACKEND", " Chunked ")  # read as the scan reads it: blanks and case aside
    from longiseg.ssm import environment_backend

    assert environment_backend() == "chunked"


def test_tuning_refuses_cases_a_fixed_t_model_cannot_take_as_predict_does(cohort: Path) -> None:
    """tune reached the inferer and failed with a shape message naming no case; predict named it up front."""
    from longiseg.data.cohort import find_cases
    from longiseg.workflows.tune import validation_probabilities

    model = build_model("segmast", widths=[8, 16, 16, 32], depths=[1, 1, 1, 1], decoder_dim=16, d_state=4,
                        shared_progression_head=False, num_timepoints=3)
    model.spec = model.spec.replace(modalities=("flair", "t2"))
    first = find_cases(cohort)[0].case_id
    with pytest.raises(ValueError, match=rf"^case '{first}' has 2 timepoints but the model was built for 3 "):
        validation_probabilities(model, cohort, [first], progress=False)


def test_predict_folder_checks_a_wrapped_fixed_t_model_and_the_channel_order_before_writing(
        cohort: Path, tmp_path: Path) -> None:
    # a DataParallel model built for one T skipped the up-front timepoint check (cases before the first mismatch
    # were written); modalities=[t2, flair] for a model trained on [flair, t2] silently swapped its channels
    from longiseg.inferers import make_inferer, predict_folder

    model = build_model("segmast", widths=[8, 16, 16, 32], depths=[1, 1, 1, 1], decoder_dim=16, d_state=4,
                        shared_progression_head=False, num_timepoints=3)
    model.spec = model.spec.replace(modalities=("flair", "t2"))
    cfg = InferenceConfig(patch_size=32, planes=["axial"], batch_size=32)
    inferer = make_inferer(model.spec, cfg, device="cpu", progress=False)
    with pytest.raises(ValueError, match="has 2 timepoints but the model was built for 3"):
        predict_folder(nn.DataParallel(model), cohort, tmp_path / "t", inferer=inferer, progress=False)
    with pytest.raises(ValueError, match=r"modalities \['t2', 'flair'\] reorder the model's channels"):
        predict_folder(model, cohort, tmp_path / "m", modalities=["t2", "flair"], inferer=inferer, progress=False)
    assert list(tmp_path.iterdir()) == []


def test_a_model_trained_on_full_lesion_masks_refuses_cases_without_a_baseline_mask(cohort: Path,
                                                                                     tmp_path: Path) -> None:
    """``dynunet_cs`` trains on full lesion masks built from the baseline mask: an MSSEG-2-like cohort (no baseline
    annotation), or a loss scoring new lesions, is refused before the run's folder is written."""
    import shutil

    import longiseg.workflows.train as train_module

    shutil.copytree(cohort, tmp_path / "msseg2")
    manifest = json.loads((tmp_path / "msseg2" / "manifest.json").read_text())
    for entry in manifest["cases"]:
        entry["baseline_annotated"] = False
    (tmp_path / "msseg2" / "manifest.json").write_text(json.dumps(manifest))
    overrides = ["model.name=dynunet_cs", "model.kwargs={filters: [4, 8, 16]}", "data.crop_size=32",  # tiny, should
                 "inference.patch_size=32", "data.samples_per_epoch=4", "data.val_samples=2",  # it ever train
                 "trainer.max_epochs=1", "trainer.batch_size=2", "trainer.device=cpu", "trainer.progress_bar=false",
                 "trainer.tensorboard=false", f"trainer.output_dir={tmp_path / 'run'}"]
    cfg = ExperimentConfig().with_overrides([*overrides, f"data.root={tmp_path / 'msseg2'}"])
    with pytest.raises(ValueError, match=r"'dynunet_cs' is trained on full lesion masks per timepoint, built from the "
                                         r"baseline mask, but \d+ training case\(s\) have no baseline annotation"):
        train_module.run_training(cfg)
    cfg = ExperimentConfig().with_overrides([*overrides, f"data.root={cohort}", "loss.progression_outside_baseline=true"])
    with pytest.raises(ValueError, match="loss.progression_outside_baseline=true scores the progression head as a "
                                         "new-lesion map, but 'dynunet_cs' is trained on full lesion masks"):
        train_module.run_training(cfg)
    assert not (tmp_path / "run").exists()


def test_the_largest_data_seed_is_accepted(cohort: Path) -> None:
    """The validation samples are drawn with the next seed: data.seed=2**63-1 was refused naming 2**63, a value
    never given."""
    from longiseg.utils.validation import MAX_SEED

    cases = find_cases(cohort)[:2]
    train, val = build_datasets(ExperimentConfig().with_overrides([f"data.seed={MAX_SEED}"]), "2.5D", cases, cases)
    assert (train.seed, val.seed) == (MAX_SEED, 0)
    train, val = build_datasets(ExperimentConfig().with_overrides(["data.seed=7"]), "2.5D", cases, cases)
    assert (train.seed, val.seed) == (7, 8)
