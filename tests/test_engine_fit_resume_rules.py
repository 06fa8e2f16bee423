"""What ``Trainer.fit`` and ``run_training`` take as ``resume``/``overwrite``, a fresh start of a Trainer that holds a
trained state, a resume with another number of steps per epoch, and a resume of a finished run.

Before: ``overwrite="no"`` counted as true and removed the earlier run; ``load_checkpoint`` then ``fit()`` trained
nothing and reported a ``last.pt`` that did not exist; a resume with another batch size continued the schedule at the
old step count (ending far above ``min_lr``); a resume of a finished run rewrote its records with settings it never
used; ``run_tuning`` checked its thresholds only after inferring every validation case.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from test_engine_toys import SyntheticLongiData, TinyLongiNet

from longiseg.engine import Trainer, TrainerConfig, load_checkpoint, seed_everything
from longiseg.losses import ImbalanceAwareLoss
from longiseg.utils.config import ConfigError
from longiseg.workflows.config import ExperimentConfig
from longiseg.workflows.train import run_training
from longiseg.workflows.tune import run_tuning


def _trainer(out: Path, **kw) -> Trainer:
    base = dict(max_epochs=4, batch_size=4, lr=1e-2, min_lr=1e-4, warmup_epochs=1, output_dir=str(out),
                progress_bar=False, tensorboard=False, monitor="train_loss", monitor_mode="min", patience=None)
    base.update(kw)
    seed_everything(0)
    return Trainer(TinyLongiNet(), SyntheticLongiData(n=16), TrainerConfig(**base), loss_fn=ImbalanceAwareLoss())


def _stopping_at(out: Path, epoch: int, **kw) -> Trainer:
    trainer = _trainer(out, **kw)
    trainer.callbacks.append(lambda t, row: setattr(t, "stopped_early", row["epoch"] == epoch))
    return trainer


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"overwrite": "no"}, "overwrite must be a bool"),
    ({"overwrite": 1}, "overwrite must be a bool"),
    ({"resume": 1}, "resume must be a bool or the path"),
    ({"resume": 1.0}, "resume must be a bool or the path"),
])
def test_fit_refuses_a_resume_or_overwrite_of_another_type_before_touching_the_run(tmp_path: Path, kwargs: dict,
                                                                                    match: str) -> None:
    _trainer(tmp_path, max_epochs=1).fit()
    before = load_checkpoint(tmp_path / "last.pt")["global_step"], (tmp_path / "last.pt").stat().st_mtime_ns
    with pytest.raises(TypeError, match=match):
        _trainer(tmp_path, max_epochs=1).fit(**kwargs)
    assert (load_checkpoint(tmp_path / "last.pt")["global_step"], (tmp_path / "last.pt").stat().st_mtime_ns) == before
    result = _trainer(tmp_path, max_epochs=2).fit(resume=np.bool_(True))  # NumPy's bool is a bool
    assert result.epochs_completed == 2


def test_run_training_refuses_non_bool_flags() -> None:
    for kwargs in ({"overwrite": "no"}, {"resume": "false"}):
        with pytest.raises(TypeError, match=f"{next(iter(kwargs))} must be a bool"):
            run_training(ExperimentConfig(), **kwargs)


def test_a_fresh_fit_of_a_trainer_holding_a_trained_state_is_refused(tmp_path: Path) -> None:
    _trainer(tmp_path / "a").fit()
    loaded = _trainer(tmp_path / "b")
    loaded.load_checkpoint(tmp_path / "a" / "last.pt")
    with pytest.raises(ValueError, match=r"holds the training state of .*last.pt \(epoch 4, from load_checkpoint\), "
                                         r"not a fresh start: continue it with fit\(resume='.*last.pt'\)"):
        loaded.fit()
    assert not (tmp_path / "b").exists()  # nothing written
    result = loaded.fit(resume=tmp_path / "a" / "last.pt")  # a finished run elsewhere: nothing to train
    assert result.last_checkpoint == tmp_path / "a" / "last.pt" and result.last_checkpoint.is_file()
    again = _trainer(tmp_path / "c", max_epochs=1)
    again.fit()
    with pytest.raises(ValueError, match=r"holds the state of an earlier fit \(epoch 1, step 4\), not a fresh start: "
                                         r"continue it with fit\(resume=True\)"):
        again.fit(overwrite=True)
    assert (tmp_path / "c" / "last.pt").is_file()  # the run it would have removed
    interrupted = _trainer(tmp_path / "d", max_epochs=1)  # interrupted in its first epoch: no last.pt

    interrupted.global_step = 2  # as after two steps of an epoch that did not finish
    with pytest.raises(ValueError, match="output_dir holds no last.pt to continue from, or start afresh with a new "
                                         "Trainer and a new model"):
        interrupted.fit()


def test_a_resume_with_another_batch_size_keeps_the_schedule_in_epochs(tmp_path: Path, caplog) -> None:
    _stopping_at(tmp_path / "run", 2, batch_size=4).fit()  # 4 steps per epoch: stopped at step 8 of 16
    full = _trainer(tmp_path / "full", batch_size=2)
    full.fit()
    resumed = _trainer(tmp_path / "run", batch_size=2)  # 8 steps per epoch
    with caplog.at_level(logging.WARNING, logger="longiseg.engine"):
        resumed.load_checkpoint(tmp_path / "run" / "last.pt")
    assert "with 8 steps per epoch (checkpoint had 4" in caplog.text
    assert resumed.scheduler.last_epoch == 16  # the start of epoch 3 of a 32-step schedule (was left at 8)
    assert resumed.optimizer.param_groups[0]["lr"] == pytest.approx(full.scheduler.lr_lambdas[0](16) * 1e-2)
    resumed.fit(resume=True)
    assert resumed.optimizer.param_groups[0]["lr"] == pytest.approx(1e-4)  # the cosine ends at min_lr
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="longiseg.engine"):  # the same batch size: nothing moves
        same = _trainer(tmp_path / "run", batch_size=2)
        same.load_checkpoint(tmp_path / "run" / "last.pt")
    assert "steps per epoch" not in caplog.text and same.scheduler.last_epoch == 32


def test_a_resume_of_a_finished_run_keeps_its_record_and_warns_of_nothing(tmp_path: Path, caplog) -> None:
    _trainer(tmp_path, max_epochs=2).fit()
    record = (tmp_path / "trainer_config.yaml").read_text()
    weights = load_checkpoint(tmp_path / "last.pt")["model"]
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="longiseg.engine"):
        result = _trainer(tmp_path, max_epochs=2, lr=0.5, min_lr=0.1, batch_size=2).fit(resume=True)
    assert result.epochs_completed == 2
    assert (tmp_path / "trainer_config.yaml").read_text() == record  # lr 0.5 was never used
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING], caplog.text
    assert "is a finished run (epoch 2 of max_epochs=2): nothing to train; lr, min_lr given now differ" in caplog.text
    assert all(torch.equal(v, weights[k]) for k, v in load_checkpoint(tmp_path / "last.pt")["model"].items())


def test_run_tuning_checks_its_thresholds_before_any_work(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"thresholds must lie in \(0, 1\), got 2.0"):
        run_tuning(tmp_path / "no-such-run", thresholds=[2.0])  # before the missing checkpoint is noticed
    with pytest.raises(ValueError, match="thresholds must not be empty"):
        run_tuning(tmp_path / "no-such-run", thresholds=[])


def test_a_yaml_boolean_for_a_string_setting_says_how_yaml_read_it() -> None:
    with pytest.raises(ConfigError, match=r"'amp': expected a string, got the boolean False \(YAML reads unquoted "
                                          r"yes/no/on/off"):
        TrainerConfig.from_dict({"amp": False})
