"""Training configurations at their edges: settings `longiseg train` must refuse when the experiment is read
(before a model is built or a run folder written) rather than fail, or silently do nothing, once it runs."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch
from test_data_fixtures import make_case
from torch.utils.data import DataLoader, TensorDataset

from longiseg.data import manifest_from_cases, save_case, write_manifest
from longiseg.engine import Trainer
from longiseg.engine.config import ConfigError, TrainerConfig
from longiseg.workflows.config import ExperimentConfig, LossConfig
from longiseg.workflows.train import run_training


@pytest.mark.parametrize("override", [
    "trainer.lr=inf", "trainer.lr=.nan", "trainer.weight_decay=inf", "trainer.eps=inf",
    "trainer.grad_clip_norm=inf", "trainer.min_delta=inf",
])
def test_non_finite_optimizer_settings_are_refused_when_read(override: str) -> None:
    # lr=inf used to start the run, write experiment.yaml/split.json/metrics.csv and die on a nan loss (exit 1)
    key = override.split("=")[0].split(".")[1]
    with pytest.raises(ConfigError, match=key):
        ExperimentConfig().with_overrides([override])


@pytest.mark.parametrize("override, key", [
    ("loss.empty_ratio=-1", "loss.empty_ratio"), ("loss.empty_ratio=inf", "loss.empty_ratio"),
    ("loss.gamma=-1", "loss.gamma"), ("loss.lambda_dice=-1", "loss.lambda_dice"),
    ("loss.lambda_focal=.nan", "loss.lambda_focal"), ("loss.min_empty=-1", "loss.min_empty"),
])
def test_loss_settings_are_checked_when_the_experiment_is_read(override: str, key: str) -> None:
    # used to be checked only when the loss was built, after the model and the datasets, naming no section
    with pytest.raises(ConfigError, match=key):
        ExperimentConfig().with_overrides([override])


@pytest.mark.parametrize("section", ["data", "inference"])
def test_a_plane_named_twice_is_refused_naming_the_section(section: str) -> None:
    # the tri-planar inferer refused it later without naming inference.planes
    with pytest.raises(ConfigError, match="each plane once"):
        ExperimentConfig().with_overrides([f"{section}.planes=[axial,axial]"])
    assert ExperimentConfig().with_overrides([f"{section}.planes=[sagittal,axial]"])


def test_a_loss_with_both_weights_zero_is_refused() -> None:
    # lambda_dice=0 and lambda_focal=0 used to train a whole run on a loss of 0 (only weight decay moved weights)
    with pytest.raises(ConfigError, match="lambda_dice and lambda_focal are both 0"):
        LossConfig(lambda_dice=0.0, lambda_focal=0.0)
    assert LossConfig(lambda_dice=0.0).lambda_focal == 1.0  # one term alone is a valid loss
    assert LossConfig(lambda_focal=0.0).lambda_dice == 1.0


def test_finite_settings_still_pass() -> None:
    cfg = TrainerConfig(lr=1e-3, weight_decay=0.0, eps=1e-6, grad_clip_norm=None, min_delta=0.0)
    assert cfg.grad_clip_norm is None and cfg.lr == 1e-3


# -- batch layout of `longiseg train` --------------------------------------------------------------------------

@pytest.fixture(scope="module")
def small_cohort(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("cohort")
    cases = [make_case(seed=i, progression=i % 2 == 0, case_id=f"c{i}") for i in range(4)]
    for c in cases:
        save_case(c, root)
    write_manifest(root / "manifest.json", manifest_from_cases(cases))
    return root


TINY = ["model.name=segmast", "model.kwargs={widths: [8, 8, 16, 16], depths: [1, 1, 1, 1], decoder_dim: 8}",
        "trainer.max_epochs=1", "trainer.warmup_epochs=0", "trainer.device=cpu", "trainer.progress_bar=false",
        "trainer.tensorboard=false", "data.crop_size=16", "data.val_fraction=0", "data.planes=[axial]",
        "inference.patch_size=16"]


@pytest.mark.parametrize("overrides, match", [
    # used to fail in the sampler as "batch_size must be >= 2, got 1", after the model was built
    (["trainer.batch_size=1"], r"trainer.batch_size=1 .* gives 1 progressing and 0 stable"),
    (["trainer.batch_size=4", "data.positive_fraction=0.9"], r"gives 4 progressing and 0 stable"),
    # used to say "8 cases give no full batch of 16 x 1 replica(s) with drop_last=True; pass drop_last=False"
    (["trainer.batch_size=16", "data.samples_per_epoch=8"], r"data.samples_per_epoch=8 is smaller than one batch"),
    # used to run 2 steps per epoch, silently, where 5 were asked for
    (["trainer.batch_size=4", "data.samples_per_epoch=8", "trainer.steps_per_epoch=5"],
     r"trainer.steps_per_epoch=5 but an epoch holds 2 batches .* raise data.samples_per_epoch to 20"),
])
def test_batch_settings_the_sampler_cannot_honour_are_refused_before_the_run_folder(
        small_cohort: Path, tmp_path: Path, overrides: list[str], match: str) -> None:
    out = tmp_path / "run"
    cfg = ExperimentConfig().with_overrides([*TINY, *overrides, f"data.root={small_cohort}",
                                             f"trainer.output_dir={out}"])
    with pytest.raises(ValueError, match=match):
        run_training(cfg)
    assert not out.exists() or not any(out.iterdir())


def test_steps_per_epoch_within_the_epoch_is_honoured(small_cohort: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    cfg = ExperimentConfig().with_overrides([*TINY, "trainer.batch_size=2", "data.samples_per_epoch=8",
                                             "trainer.steps_per_epoch=3", f"data.root={small_cohort}",
                                             f"trainer.output_dir={out}"])
    assert run_training(cfg).global_step == 3


def test_the_trainer_warns_when_steps_per_epoch_exceeds_the_loader(caplog: pytest.LogCaptureFixture) -> None:
    model = torch.nn.Conv2d(1, 1, 1)
    loader = DataLoader(TensorDataset(torch.zeros(4, 1)), batch_size=2)
    with caplog.at_level(logging.WARNING, logger="longiseg.engine"):
        trainer = Trainer(model, loader, TrainerConfig(steps_per_epoch=5, device="cpu", output_dir="unused"),
                          loss_fn=lambda *a: torch.zeros(()))
    assert trainer.steps_per_epoch == 2
    assert "steps_per_epoch=5 but the train loader yields 2 batches" in caplog.text
