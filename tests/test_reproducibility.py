"""Same seed, same result: ``longiseg train`` twice with one seed gives bit-identical checkpoints on the CPU,
and another seed gives other weights."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from longiseg.cli import main
from longiseg.data.demo_cohort import generate_demo_cohort

SETTINGS = [
    "model.name=segmast", "model.kwargs={widths: [8, 16, 16, 32], depths: [1, 1, 1, 1], decoder_dim: 16}",
    "trainer.max_epochs=2", "trainer.batch_size=2", "trainer.steps_per_epoch=2", "trainer.warmup_epochs=1",
    "trainer.device=cpu", "trainer.progress_bar=false", "trainer.tensorboard=false", "trainer.num_workers=1",
    "data.crop_size=32", "data.samples_per_epoch=4", "data.val_samples=2", "data.val_fraction=0.34",
]


@pytest.fixture(scope="module")
def cohort(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return generate_demo_cohort(tmp_path_factory.mktemp("repro") / "cohort", num_patients=6, spacing=4,
                                progress=False)


def _train(cohort: Path, out: Path, seed: int, *extra: str) -> dict:
    flags = [e for e in extra if e.startswith("--")]
    overrides = [e for e in extra if not e.startswith("--")]
    assert main(["train", "--data", str(cohort), "--output", str(out), *flags, "--set", *SETTINGS,
                 f"trainer.seed={seed}", *overrides]) == 0
    return torch.load(out / "last.pt", map_location="cpu", weights_only=True)


def test_training_is_bit_identical_for_one_seed_and_differs_for_another(cohort: Path, tmp_path: Path) -> None:
    a = _train(cohort, tmp_path / "a", seed=3)
    b = _train(cohort, tmp_path / "b", seed=3)
    c = _train(cohort, tmp_path / "c", seed=4)
    assert a["model"].keys() == b["model"].keys() == c["model"].keys()
    for name, value in a["model"].items():
        assert torch.equal(value, b["model"][name]), f"{name} differs between two runs with one seed"
    assert [row["train_loss"] for row in a["history"]] == [row["train_loss"] for row in b["history"]]
    # Another seed draws other initial weights: a float32 tensor of thousands of independent draws cannot
    # coincide, so "some parameter differs" is exact here, not a rounding question.
    assert any(not torch.equal(v, c["model"][k]) for k, v in a["model"].items())


def test_a_resumed_run_draws_the_samples_of_an_uninterrupted_one(cohort: Path, tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """Stopped after its first epoch and resumed, a run reaches the uninterrupted run's weights, also when the
    cases rotate over the epochs (samples_per_epoch not a multiple of the training cases) and the minority class
    is repeated within an epoch (fresh crops through the sampler's virtual indices)."""
    from longiseg.engine.trainer import Trainer

    settings = ["trainer.steps_per_epoch=null", "data.samples_per_epoch=10", "trainer.batch_size=4",
                "data.positive_fraction=0.75"]
    a = _train(cohort, tmp_path / "a", 3, *settings)
    fit = Trainer.fit

    def fit_one_epoch(self: Trainer, *args: object, **kwargs: object) -> object:
        # runs after the epoch's checkpoint was written: that checkpoint does not record the stop
        self.callbacks.append(lambda trainer, row: setattr(trainer, "stopped_early", True))
        return fit(self, *args, **kwargs)

    monkeypatch.setattr(Trainer, "fit", fit_one_epoch)
    first = _train(cohort, tmp_path / "b", 3, *settings)
    assert first["epoch"] == 1
    monkeypatch.setattr(Trainer, "fit", fit)
    b = _train(cohort, tmp_path / "b", 3, *settings, "--resume")
    assert b["epoch"] == 2 and b["sampler"]["distinct_repeats"]
    assert a["model"].keys() == b["model"].keys()
    for name, value in a["model"].items():
        assert torch.equal(value, b["model"][name]), f"{name} differs between the resumed and the whole run"
