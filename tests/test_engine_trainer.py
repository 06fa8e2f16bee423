"""Trainer: learning, optimizer groups, logs, checkpoints, early stopping, exact resume (in-process and
after a real SIGKILL), sampler hooks and clear errors."""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn
from test_engine_toys import SyntheticLongiData, TinyLongiNet
from torch.utils.data import DataLoader, DistributedSampler

from longiseg import build_model
from longiseg.data.samplers import EpochIndex, EpochTaggedBatchSampler
from longiseg.engine import (
    Trainer,
    TrainerConfig,
    epoch_seed,
    load_checkpoint,
    param_groups_weight_decay,
    seed_everything,
)
from longiseg.engine.trainer import _samplers
from longiseg.losses import ImbalanceAwareLoss
from longiseg.networks.output import LongitudinalOutput
from longiseg.utils.config import ConfigError
from longiseg.utils.validation import debug_checks

TOYS = Path(__file__).with_name("test_engine_toys.py")
ROOT = Path(__file__).resolve().parents[1]


def _config(tmp_path: Path, **kw) -> TrainerConfig:
    base = dict(max_epochs=4, batch_size=4, lr=1e-2, min_lr=1e-4, warmup_epochs=1, output_dir=str(tmp_path),
                progress_bar=False, tensorboard=False, monitor="train_loss", monitor_mode="min", patience=None)
    base.update(kw)
    return TrainerConfig(**base)


def _fit(tmp_path: Path, resume=False, init_seed: int = 0, **kw):
    seed_everything(init_seed)
    model = TinyLongiNet()
    trainer = Trainer(model, SyntheticLongiData(n=16), _config(tmp_path, **kw), loss_fn=ImbalanceAwareLoss())
    return model, trainer, trainer.fit(resume=resume)


def _states_equal(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_the_logged_learning_rate_is_the_one_the_epochs_last_step_used(tmp_path) -> None:
    """metrics.csv logged the rate after the scheduler's last step, i.e. the next epoch's: a run that is all
    warm-up showed min_lr in its last row although the rate only ever rose."""
    _, trainer, result = _fit(tmp_path, max_epochs=3, warmup_epochs=3)
    rates = [row["lr"] for row in result.history]
    assert rates == sorted(rates) and len(set(rates)) == 3, rates  # rising throughout the warm-up
    assert all(trainer.config.min_lr < r <= trainer.config.lr for r in rates), rates
    assert rates[-1] != trainer.optimizer.param_groups[0]["lr"]  # not the rate after the run's last step

def test_fit_restores_the_processs_deterministic_settings(tmp_path) -> None:
    """fit switches deterministic kernels on for training only: left on, every later torch.empty of the caller's
    process was NaN-filled (a cost) and non-deterministic CUDA ops warned."""
    def flags():
        return (torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled(),
                torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic)

    seen = []
    before = flags()
    assert before[0] is False  # the suite runs with PyTorch's defaults
    seed_everything(0)
    trainer = Trainer(TinyLongiNet(), SyntheticLongiData(n=8), _config(tmp_path, max_epochs=1),
                      loss_fn=ImbalanceAwareLoss(), callbacks=[lambda t, row: seen.append(flags())])
    trainer.fit()
    assert seen == [(True, True, False, True)]
    assert flags() == before
    torch.backends.cudnn.benchmark = True  # a caller's own choice survives too
    try:
        trainer.config.max_epochs = 2
        trainer.fit(resume=True)
        assert torch.backends.cudnn.benchmark is True and flags()[:2] == before[:2]
        torch.use_deterministic_algorithms(True)  # a caller's strict mode stays strict (fit made it warn-only)
        trainer.config.max_epochs = 3
        trainer.fit(resume=True)
        assert seen[-1][:2] == (True, False) and flags()[:2] == (True, False)
    finally:
        torch.backends.cudnn.benchmark = before[2]
        torch.use_deterministic_algorithms(before[0], warn_only=before[1])


def test_a_bad_debug_checks_variable_fails_before_fit_writes(tmp_path, monkeypatch) -> None:
    seed_everything(0)
    trainer = Trainer(TinyLongiNet(), SyntheticLongiData(n=8), _config(tmp_path / "run", max_epochs=1),
                      loss_fn=ImbalanceAwareLoss())
    monkeypatch.setenv("LONGISEG_DEBUG_CHECKS", "2")
    with pytest.raises(ValueError, match="LONGISEG_DEBUG_CHECKS must be one of"):
        trainer.fit()
    assert not (tmp_path / "run").exists() or not any((tmp_path / "run").iterdir())


def test_loss_decreases_and_logs(tmp_path) -> None:
    _, trainer, result = _fit(tmp_path, max_epochs=5)
    losses = [row["train_loss"] for row in result.history]
    assert losses[-1] < losses[0] * 0.95
    assert isinstance(trainer.loss_fn, ImbalanceAwareLoss)  # the loss it was given
    assert result.epochs_completed == 5 and result.global_step == 5 * 4
    rows = list(csv.DictReader(open(tmp_path / "metrics.csv")))
    assert [int(r["epoch"]) for r in rows] == [1, 2, 3, 4, 5]
    assert {"train_loss", "train_baseline_loss", "train_progression_loss", "train_grad_norm", "lr"} <= set(rows[0])
    last_step = trainer.scheduler.lr_lambdas[0](result.global_step - 1)  # the rate of the run's last step
    assert float(rows[-1]["lr"]) == pytest.approx(1e-2 * last_step) and float(rows[-1]["lr"]) > 1e-4
    assert trainer.optimizer.param_groups[0]["lr"] == pytest.approx(1e-4)  # cosine ends at min_lr
    assert (tmp_path / "last.pt").is_file() and (tmp_path / "best.pt").is_file()
    assert (tmp_path / "trainer_config.yaml").is_file()


def test_training_is_bit_reproducible(tmp_path) -> None:
    m1, _, _ = _fit(tmp_path / "a", max_epochs=2)
    m2, _, _ = _fit(tmp_path / "b", max_epochs=2)
    m3, _, _ = _fit(tmp_path / "c", max_epochs=2, seed=1)
    assert _states_equal(m1.state_dict(), m2.state_dict())
    assert not _states_equal(m1.state_dict(), m3.state_dict())


def test_in_process_resume_matches_uninterrupted(tmp_path) -> None:
    full, _, _ = _fit(tmp_path / "full", max_epochs=4)
    # interrupt a 4-epoch run after epoch 2 (a callback ends it), then resume it in a fresh Trainer
    seed_everything(0)
    model = TinyLongiNet()
    trainer = Trainer(model, SyntheticLongiData(n=16), _config(tmp_path / "stop", max_epochs=4), loss_fn=ImbalanceAwareLoss(),
                      callbacks=[lambda t, row: setattr(t, "stopped_early", row["epoch"] == 2)])
    trainer.fit()
    assert load_checkpoint(tmp_path / "stop" / "last.pt")["epoch"] == 2
    resumed, _, result = _fit(tmp_path / "stop", resume=True, init_seed=123, max_epochs=4)
    assert result.epochs_completed == 4 and [r["epoch"] for r in result.history] == [1, 2, 3, 4]
    assert _states_equal(full.state_dict(), resumed.state_dict())
    rows = list(csv.DictReader(open(tmp_path / "stop" / "metrics.csv")))
    assert [int(r["epoch"]) for r in rows] == [1, 2, 3, 4]


def test_a_resume_with_other_clipping_or_stopping_settings_says_the_run_will_differ(tmp_path, caplog) -> None:
    # grad_clip_norm, amp, patience, min_delta and val_every were taken on resume without a word (the weights
    # then differ from an uninterrupted run's), while lr, seed and the like were warned about
    import logging

    _fit(tmp_path, max_epochs=1)
    with caplog.at_level(logging.WARNING, logger="longiseg"):
        _fit(tmp_path, resume=True, max_epochs=2, grad_clip_norm=0.01, patience=3, val_every=2)
    for key, value in (("grad_clip_norm", 0.01), ("patience", 3), ("val_every", 2)):
        assert f"with {key}={value!r} (checkpoint had" in caplog.text, key


def test_a_resume_with_another_cpu_thread_count_says_the_run_will_differ(tmp_path, caplog) -> None:
    """Every other setting that breaks an exact resume was warned about; the thread count (which splits the CPU
    kernels' float sums) was not recorded."""
    import logging

    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        _fit(tmp_path, max_epochs=1)
        with caplog.at_level(logging.WARNING, logger="longiseg"):
            _fit(tmp_path, resume=True, max_epochs=2)  # the same count: no word
        assert "CPU threads" not in caplog.text
        torch.set_num_threads(2)
        with caplog.at_level(logging.WARNING, logger="longiseg"):
            _fit(tmp_path, resume=True, max_epochs=3)
        assert "with 2 CPU threads (the run had 1)" in caplog.text and "--threads 1 keeps it exact" in caplog.text
    finally:
        torch.set_num_threads(before)


def test_a_loss_monitored_for_its_maximum_is_refused() -> None:
    # trainer.monitor=train_loss kept the default monitor_mode max: best.pt was the epoch of the highest loss
    with pytest.raises(ConfigError, match=r"monitor 'train_loss' is a loss \(lower is better\): set monitor_mode "
                                          r"to 'min'"):
        TrainerConfig(monitor="train_loss")
    assert TrainerConfig(monitor="train_loss", monitor_mode="min").monitor_mode == "min"


class _EpochIndexedData(SyntheticLongiData):
    """Samples seeded by (epoch, index), like SliceDataset: the flip is drawn from the pair, not from torch's
    global RNG (a persistent worker's global RNG is not reseeded per epoch)."""

    accepts_epoch_index = True

    def __init__(self, *a, **kw) -> None:
        super().__init__(*a, augment=False, **kw)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __getitem__(self, i):  # noqa: ANN001, ANN204
        epoch, i = (i.epoch, i.index) if isinstance(i, EpochIndex) else (self.epoch, int(i))
        item = super().__getitem__(i)
        if torch.randint(2, (), generator=torch.Generator().manual_seed(1000 * epoch + i)):
            item = {**item, **{k: item[k].flip(-1) for k in ("images", "baseline", "progression")}}
        return item


def _fit_epoch_indexed(out: Path, workers: int, stop_after: int | None = None, resume: bool = False,
                       start_method: str | None = None):
    seed_everything(0)
    model = TinyLongiNet()
    callbacks = [] if stop_after is None else [lambda t, row: setattr(t, "stopped_early", row["epoch"] == stop_after)]
    config = _config(out, max_epochs=3, num_workers=workers, worker_start_method=start_method)
    trainer = Trainer(model, _EpochIndexedData(n=16), config,
                      loss_fn=ImbalanceAwareLoss(), callbacks=callbacks)
    trainer.fit(resume=resume)
    return model, trainer


def test_workers_persist_for_epoch_indexed_data_and_change_nothing(tmp_path) -> None:
    """A dataset seeded by (epoch, index) keeps its worker across epochs (tagged indices tell it the epoch):
    the weights equal those of the single-process run, and an interrupted run resumes to the same weights."""
    single, _ = _fit_epoch_indexed(tmp_path / "single", workers=0)
    kept, trainer = _fit_epoch_indexed(tmp_path / "kept", workers=1)
    assert trainer.train_loader.persistent_workers
    assert isinstance(trainer.train_loader.batch_sampler, EpochTaggedBatchSampler)
    # the wrapped DistributedSampler is still found (set_epoch, and the DDP sharding check)
    assert isinstance(_samplers(trainer.train_loader)[2], DistributedSampler)
    assert _states_equal(single.state_dict(), kept.state_dict())
    _fit_epoch_indexed(tmp_path / "stop", workers=1, stop_after=2)
    resumed, _ = _fit_epoch_indexed(tmp_path / "stop", workers=1, resume=True)
    assert _states_equal(single.state_dict(), resumed.state_dict())
    # a dataset without epoch-tagged indices keeps the per-epoch workers
    plain = Trainer(TinyLongiNet(), SyntheticLongiData(n=8), _config(tmp_path / "plain", num_workers=1),
                    loss_fn=ImbalanceAwareLoss())
    assert not plain.train_loader.persistent_workers


def test_an_epochs_workers_end_outside_a_finalizer(tmp_path, monkeypatch) -> None:
    """The epoch's DataLoader workers were ended by the iterator's finalizer: a Ctrl-C during their shutdown was
    printed as "Exception ignored" and lost, and training went on. The trainer ends them itself."""
    import inspect

    from torch.utils.data.dataloader import _MultiProcessingDataLoaderIter

    callers: list[str] = []
    shutdown = _MultiProcessingDataLoaderIter._shutdown_workers

    def spy(self) -> None:
        callers.append(inspect.stack()[1].function)
        shutdown(self)

    monkeypatch.setattr(_MultiProcessingDataLoaderIter, "_shutdown_workers", spy)
    seed_everything(0)
    trainer = Trainer(TinyLongiNet(), SyntheticLongiData(n=8), _config(tmp_path, num_workers=1, max_epochs=2),
                      loss_fn=ImbalanceAwareLoss())
    assert not trainer.train_loader.persistent_workers
    trainer.fit()
    # each epoch's workers end in train_one_epoch; the finalizer's call after it finds them ended (a no-op)
    assert callers == ["train_one_epoch", "__del__"] * 2, callers


def test_worker_start_method_is_used_and_changes_no_weight(tmp_path) -> None:
    """``worker_start_method`` reaches the DataLoader (forkserver: no fork of the threaded trainer process) and
    the weights are those of the single-process run."""
    single, _ = _fit_epoch_indexed(tmp_path / "single", workers=0, start_method="forkserver")  # unused: no workers
    served, trainer = _fit_epoch_indexed(tmp_path / "served", workers=1, start_method="forkserver")
    assert trainer.train_loader.multiprocessing_context.get_start_method() == "forkserver"
    assert _states_equal(single.state_dict(), served.state_dict())
    with pytest.raises(ConfigError, match=r"worker_start_method must be None .* or one of .*got 'thread'"):
        _config(tmp_path, worker_start_method="thread")

def _run_toy(out: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(k, None)
    return subprocess.Popen([sys.executable, str(TOYS), "--out", str(out), *args], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def test_resume_after_sigkill_reproduces_uninterrupted_weights(tmp_path) -> None:
    # The uninterrupted run and the run that kills itself after epoch 2's checkpoint run in parallel.
    full = _run_toy(tmp_path / "full", "--epochs", "4")
    killed = _run_toy(tmp_path / "killed", "--epochs", "4", "--kill-after", "2")
    out_killed, _ = killed.communicate(timeout=600)
    assert killed.returncode == -signal.SIGKILL, out_killed
    assert load_checkpoint(tmp_path / "killed" / "last.pt")["epoch"] == 2
    resumed = _run_toy(tmp_path / "killed", "--epochs", "4", "--resume")
    out_resumed, _ = resumed.communicate(timeout=600)
    out_full, _ = full.communicate(timeout=600)
    assert resumed.returncode == 0, out_resumed
    assert full.returncode == 0, out_full
    a = load_checkpoint(tmp_path / "full" / "last.pt")
    b = load_checkpoint(tmp_path / "killed" / "last.pt")
    assert a["epoch"] == b["epoch"] == 4 and a["global_step"] == b["global_step"]
    assert _states_equal(a["model"], b["model"])
    sa, sb = a["optimizer"]["state"], b["optimizer"]["state"]
    assert all(_states_equal(sa[i], sb[i]) for i in sa)
    assert [r["train_loss"] for r in a["history"]] == [r["train_loss"] for r in b["history"]]


def test_early_stopping_and_best_checkpoint(tmp_path) -> None:
    scores = iter([0.5, 0.7, 0.6, 0.65, 0.69, 0.1, 0.1])
    _, _, result = _fit(tmp_path, max_epochs=7, monitor="val_dice", monitor_mode="max", patience=3,
                        warmup_epochs=0)
    assert result.best_metric is None  # no validate_fn: nothing to monitor
    seed_everything(0)
    trainer = Trainer(TinyLongiNet(), SyntheticLongiData(n=8),
                      _config(tmp_path / "es", max_epochs=7, monitor="val_dice", monitor_mode="max", patience=3), loss_fn=ImbalanceAwareLoss(),
                      validate_fn=lambda model: {"dice": next(scores)})
    result = trainer.fit()
    assert result.stopped_early and result.epochs_completed == 5
    assert result.best_metric == 0.7 and result.best_epoch == 2
    assert result.summary() == (f"5 epochs ({result.global_step} steps); stopped early; best val_dice 0.7 at epoch 2; "
                                f"checkpoints: {tmp_path / 'es' / 'last.pt'}, {tmp_path / 'es' / 'best.pt'}")
    best = load_checkpoint(tmp_path / "es" / "best.pt")
    assert best["epoch"] == 2 and best["best_metric"] == 0.7
    last = load_checkpoint(tmp_path / "es" / "last.pt")
    assert last["epoch"] == 5 and last["early_stopping_counter"] == 3
    # resuming an early-stopped run does not train further
    again = Trainer(TinyLongiNet(), SyntheticLongiData(n=8),
                    _config(tmp_path / "es", max_epochs=7, monitor="val_dice", monitor_mode="max", patience=3), loss_fn=ImbalanceAwareLoss(),
                    validate_fn=lambda model: {"dice": 1.0}).fit(resume=True)
    assert again.epochs_completed == 5 and again.stopped_early


def test_a_missing_monitor_keeps_the_epoch_and_its_row_for_the_resume(tmp_path) -> None:
    # last.pt was saved before the epoch's row was appended: the resumed run's history and metrics.csv began at
    # epoch 2, epoch 1's row lost for good
    kw = dict(max_epochs=2, warmup_epochs=0, monitor="val_dice", monitor_mode="max")
    seed_everything(0)
    with pytest.raises(ValueError, match="monitor metric 'val_dice' is not among the logged metrics"):
        Trainer(TinyLongiNet(), SyntheticLongiData(n=8), _config(tmp_path, **kw), loss_fn=ImbalanceAwareLoss(),
                validate_fn=lambda model: {"score": 0.5}).fit()
    assert [r["epoch"] for r in load_checkpoint(tmp_path / "last.pt")["history"]] == [1]
    result = Trainer(TinyLongiNet(), SyntheticLongiData(n=8), _config(tmp_path, **kw), loss_fn=ImbalanceAwareLoss(),
                     validate_fn=lambda model: {"dice": 0.5}).fit(resume=True)
    assert [r["epoch"] for r in result.history] == [1, 2]
    rows = (tmp_path / "metrics.csv").read_text().splitlines()
    assert [r.split(",")[0] for r in rows[1:]] == ["1", "2"]


def test_what_checkpoints_record_is_checked_before_training(tmp_path) -> None:
    # model_kwargs holding a class, or a model_name other than the spec's, failed at the first save_checkpoint,
    # after a whole epoch of training
    cfg = _config(tmp_path, max_epochs=1)
    with pytest.raises(TypeError, match="model_kwargs"):
        Trainer(TinyLongiNet(), SyntheticLongiData(n=4), cfg, loss_fn=ImbalanceAwareLoss(),
                model_kwargs={"act": nn.ReLU})
    with pytest.raises(ValueError, match="model_name 'my_segformer' is not the name in the model's spec"):
        Trainer(build_model("segformer", in_channels=1, widths=(8, 16, 40, 64), depths=(1, 1, 1, 1)),
                SyntheticLongiData(n=4), cfg, loss_fn=ImbalanceAwareLoss(), model_name="my_segformer")
    assert not list(tmp_path.iterdir())
    trainer = Trainer(TinyLongiNet(), SyntheticLongiData(n=4), cfg, loss_fn=ImbalanceAwareLoss(),
                      model_kwargs={"features": np.array([4, 8])})
    assert trainer.model_kwargs == {"features": [4, 8]}  # NumPy given, plain data kept


def test_a_fresh_start_over_a_run_leaves_nothing_of_it_to_pass_for_its_own(tmp_path) -> None:
    """overwrite=True over a run with best.pt: when the new run's monitor never improves (a validation metric
    that is always NaN, as with no progressing validation patient) it has no best.pt, rather than the earlier
    run's; resume=True without last.pt next to an earlier best.pt is refused like a fresh start."""
    seed_everything(0)
    kw = dict(max_epochs=2, monitor="val_dice", monitor_mode="max", warmup_epochs=0)
    Trainer(TinyLongiNet(), SyntheticLongiData(n=8), _config(tmp_path, **kw), loss_fn=ImbalanceAwareLoss(),
            validate_fn=lambda model: {"dice": 0.5}).fit()
    assert (tmp_path / "best.pt").is_file()
    (tmp_path / "last.pt").unlink()
    with pytest.raises(FileExistsError, match=r"best\.pt but no last\.pt to resume from.*overwrite=True"):
        Trainer(TinyLongiNet(), SyntheticLongiData(n=8), _config(tmp_path, **kw),
                loss_fn=ImbalanceAwareLoss()).fit(resume=True)
    result = Trainer(TinyLongiNet(), SyntheticLongiData(n=8), _config(tmp_path, **kw), loss_fn=ImbalanceAwareLoss(),
                     validate_fn=lambda model: {"dice": float("nan")}).fit(overwrite=True)
    assert result.best_checkpoint is None and result.best_metric is None
    assert not (tmp_path / "best.pt").exists() and (tmp_path / "last.pt").is_file()


def test_a_nan_monitor_neither_improves_nor_stops_the_run(tmp_path, caplog) -> None:
    # NaN epochs counted towards patience (a run monitoring a progression Dice without progressing validation
    # cases stopped after `patience` epochs), and the early-stopping message then crashed the log on best=None
    scores = iter([float("nan"), float("nan"), 0.4, float("nan"), 0.3, 0.2])
    seed_everything(0)
    with caplog.at_level("INFO", logger="longiseg"):
        result = Trainer(TinyLongiNet(), SyntheticLongiData(n=8),
                         _config(tmp_path, max_epochs=6, monitor="val_dice", monitor_mode="max", patience=2,
                                 warmup_epochs=0),
                         loss_fn=ImbalanceAwareLoss(), validate_fn=lambda model: {"dice": next(scores)}).fit()
    assert result.stopped_early and result.epochs_completed == 6  # stopped by the two falls after 0.4 only
    assert result.best_metric == 0.4 and result.best_epoch == 3
    assert "monitor 'val_dice' is NaN at epoch 1" in caplog.text and "(best 0.4 at epoch 3)" in caplog.text
    assert "Logging error" not in caplog.text


def test_a_fresh_start_refuses_an_earlier_runs_events_it_cannot_remove(tmp_path, monkeypatch) -> None:
    """overwrite=True over a run whose tensorboard/ is read-only: the removal ignored the error and the earlier
    run's event files stayed in the new run's folder; now refused before anything of the run is touched."""
    kw = dict(max_epochs=1, warmup_epochs=0)
    _fit(tmp_path, **kw)
    (tmp_path / "tensorboard").mkdir()
    (tmp_path / "tensorboard" / "events.out.tfevents.old").write_text("old")
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir() if p.is_file()}
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda path, mode, **k: not (
        mode & os.W_OK and Path(path) == tmp_path / "tensorboard") and real_access(path, mode, **k))  # chmod a-w
    with pytest.raises(PermissionError, match="tensorboard is not writable; nothing was deleted"):
        Trainer(TinyLongiNet(), SyntheticLongiData(n=8), _config(tmp_path, **kw),
                loss_fn=ImbalanceAwareLoss()).fit(overwrite=True)
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir() if p.is_file()} == before
    monkeypatch.setattr(os, "access", real_access)
    Trainer(TinyLongiNet(), SyntheticLongiData(n=8), _config(tmp_path, **kw),
            loss_fn=ImbalanceAwareLoss()).fit(overwrite=True)
    assert not (tmp_path / "tensorboard").exists()


def test_a_resume_follows_the_current_optimizer_settings_and_keeps_the_moments(tmp_path, caplog) -> None:
    """trainer.lr / weight_decay / betas / eps changed on resume apply (the schedule follows the current
    configuration); the Adam moments and step counts are the checkpoint's."""
    _fit(tmp_path, max_epochs=1, warmup_epochs=0)
    saved = load_checkpoint(tmp_path / "last.pt")
    torch.save(saved, tmp_path / "epoch1.pt")
    new = dict(max_epochs=3, warmup_epochs=0, lr=5e-2, min_lr=1e-3, weight_decay=0.0, betas=(0.8, 0.99), eps=1e-6)

    def trainer() -> Trainer:
        return Trainer(TinyLongiNet(), SyntheticLongiData(n=16), _config(tmp_path, **new), loss_fn=ImbalanceAwareLoss())

    fresh = trainer()
    resumed = trainer()
    resumed.load_checkpoint(tmp_path / "epoch1.pt")
    for group, expected in zip(resumed.optimizer.param_groups, fresh.optimizer.param_groups, strict=True):
        assert group["initial_lr"] == 5e-2 and group["betas"] == (0.8, 0.99) and group["eps"] == 1e-6
        assert group["weight_decay"] == expected["weight_decay"] == 0.0  # the checkpoint's decayed group had 0.05
    assert resumed.scheduler.base_lrs == [5e-2] * len(fresh.optimizer.param_groups)
    step = resumed.scheduler.last_epoch
    assert step == saved["global_step"] == 4
    fn = fresh.scheduler.lr_lambdas[0]  # the current schedule, at the restored step
    assert [g["lr"] for g in resumed.optimizer.param_groups] == [5e-2 * fn(step)] * len(fresh.optimizer.param_groups)
    assert resumed.scheduler.get_last_lr() == [g["lr"] for g in resumed.optimizer.param_groups]
    moments = saved["optimizer"]["state"]
    for i, state in resumed.optimizer.state_dict()["state"].items():
        assert torch.equal(state["exp_avg"], moments[i]["exp_avg"]) and torch.equal(state["step"], moments[i]["step"])

    # load_checkpoint then fit(resume=True) from that file (as longiseg train does) restores it once: one warning each
    resumed = trainer()
    caplog.clear()
    with caplog.at_level("WARNING", logger="longiseg.engine"):
        resumed.load_checkpoint(tmp_path / "last.pt")
        result = resumed.fit(resume=True)
    for key in ("lr", "weight_decay", "betas", "eps", "max_epochs", "min_lr"):
        assert sum(f" with {key}=" in r.getMessage() for r in caplog.records) == 1, key
    # the cosine ends at the current min_lr (was 1e-4 * 1e-3/5e-2); the last row logs its last step's rate
    assert resumed.optimizer.param_groups[0]["lr"] == pytest.approx(1e-3)
    assert 1e-3 < result.history[-1]["lr"] < result.history[-2]["lr"]
    assert result.history[1]["lr"] > 1e-2  # the current peak: from the checkpoint's 1e-2 it would stay below
    assert load_checkpoint(tmp_path / "last.pt")["optimizer"]["param_groups"][0]["weight_decay"] == 0.0


def test_a_resume_with_another_monitor_starts_best_and_early_stopping_afresh(tmp_path, caplog) -> None:
    """The checkpoint's best value belongs to its monitor: a train_loss of ~1 (mode min) compared with a best
    train_grad_norm or with a best loss taken the other way round would keep best.pt and early stopping on a
    number of another kind (before: best_metric stayed the old monitor's, and best.pt never followed the new one)."""
    _fit(tmp_path, max_epochs=2, warmup_epochs=0)  # monitor train_loss, mode min
    for change in ({"monitor": "train_grad_norm"}, {"monitor": "train_grad_norm", "monitor_mode": "max"}):
        trainer = Trainer(TinyLongiNet(), SyntheticLongiData(n=16),
                          _config(tmp_path, max_epochs=3, warmup_epochs=0, **change), loss_fn=ImbalanceAwareLoss())
        with caplog.at_level("WARNING", logger="longiseg.engine"):
            trainer.load_checkpoint(tmp_path / "last.pt")
        assert trainer.best_metric is None and trainer.best_epoch is None and trainer.early_stopping_counter == 0
        assert "best.pt and early stopping start afresh" in caplog.text
    unchanged = Trainer(TinyLongiNet(), SyntheticLongiData(n=16), _config(tmp_path, max_epochs=3, warmup_epochs=0),
                        loss_fn=ImbalanceAwareLoss())
    unchanged.load_checkpoint(tmp_path / "last.pt")
    assert unchanged.best_metric == load_checkpoint(tmp_path / "last.pt")["best_metric"] is not None
    result = trainer.fit(resume=True)  # monitor_mode=max: the first resumed epoch is the new best
    assert result.best_epoch == 3 and load_checkpoint(tmp_path / "best.pt")["epoch"] == 3


def test_validate_every_and_monitor_errors(tmp_path) -> None:
    calls = []

    def validate(model: nn.Module) -> dict[str, float]:
        assert not model.training and not torch.is_grad_enabled()
        calls.append(1)
        return {"val_loss": 1.0 / len(calls)}

    seed_everything(0)
    t = Trainer(TinyLongiNet(), SyntheticLongiData(n=8),
                _config(tmp_path, max_epochs=5, val_every=2, monitor="val_loss", monitor_mode="min"), loss_fn=ImbalanceAwareLoss(),
                validate_fn=validate)
    result = t.fit()
    assert len(calls) == 3  # epochs 2, 4 and the last one
    assert [("val_loss" in r) for r in result.history] == [False, True, False, True, True]
    rows = list(csv.DictReader(open(tmp_path / "metrics.csv")))
    assert rows[0]["val_loss"] == "" and float(rows[1]["val_loss"]) == 1.0
    header = (tmp_path / "metrics.csv").read_text().splitlines()[0].split(",")
    assert header[-1] == "time_s" and header.index("val_loss") < header.index("time_s")  # the documented order
    bad = Trainer(TinyLongiNet(), SyntheticLongiData(n=8), _config(tmp_path / "bad", monitor="val_dice"), loss_fn=ImbalanceAwareLoss(),
                  validate_fn=lambda m: {"f1": 0.3})
    with pytest.raises(ValueError, match=r"monitor metric 'val_dice'.*val_f1"):
        bad.fit()
    # the epoch trained before the monitor was found missing is kept for a resume with another monitor
    assert torch.load(tmp_path / "bad" / "last.pt", weights_only=True)["epoch"] == 1


def test_optimizer_is_the_fused_adamw_with_the_loop_s_result(tmp_path) -> None:
    from longiseg.engine.optim import build_optimizer

    torch.manual_seed(0)
    models = [build_model("segmast", widths=[8, 16, 16, 32], depths=[1, 1, 1, 1], decoder_dim=16) for _ in range(2)]
    models[1].load_state_dict(models[0].state_dict())
    fast = build_optimizer(models[0], _config(tmp_path))
    assert fast.defaults["fused"] is True
    groups = param_groups_weight_decay(models[1], 0.05)
    for g in groups:
        g.pop("param_names")
    loop = torch.optim.AdamW(groups, lr=1e-2, foreach=False)
    for _ in range(3):
        for m, opt in zip(models, (fast, loop)):
            for i, p in enumerate(m.parameters()):
                p.grad = torch.randn(p.shape, generator=torch.Generator().manual_seed(i))
            opt.step()
    for a, b in zip(models[0].parameters(), models[1].parameters()):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)


def test_weight_decay_groups() -> None:
    model = TinyLongiNet()
    groups = param_groups_weight_decay(model, 0.05)
    decayed = set(groups[0]["param_names"])
    exempt = set(groups[1]["param_names"])
    assert decayed == {"conv1.weight", "conv2.weight", "temperature"}
    assert exempt == {"conv1.bias", "conv2.bias", "norm.weight", "norm.bias", "gain", "A_log"}
    assert (groups[0]["weight_decay"], groups[1]["weight_decay"]) == (0.05, 0.0)
    frozen = nn.Linear(2, 2).requires_grad_(False)
    with pytest.raises(ValueError, match="no trainable parameters"):
        param_groups_weight_decay(frozen, 0.05)


class _RecordingBatchSampler:
    """A stateful epoch-aware batch sampler: order from (seed, epoch) only, like BalancedBatchSampler."""

    def __init__(self, n: int, batch_size: int, seed: int = 0) -> None:
        self.n, self.batch_size, self.seed, self.epoch = n, batch_size, seed, 0
        self.epochs_seen: list[int] = []
        self.loaded: dict | None = None

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        self.epochs_seen.append(epoch)

    def __iter__(self):
        g = torch.Generator().manual_seed(self.seed * 1000 + self.epoch)
        perm = torch.randperm(self.n, generator=g).tolist()
        for i in range(len(self)):
            yield perm[i * self.batch_size:(i + 1) * self.batch_size]

    def __len__(self) -> int:
        return self.n // self.batch_size

    def state_dict(self) -> dict:
        return {"seed": self.seed, "epoch": self.epoch}

    def load_state_dict(self, state: dict) -> None:
        self.loaded = dict(state)


class _EpochData(SyntheticLongiData):
    def __init__(self, *a, **kw) -> None:
        super().__init__(*a, **kw)
        self.epochs_seen: list[int] = []

    def set_epoch(self, epoch: int) -> None:
        self.epochs_seen.append(epoch)


def test_sampler_set_epoch_and_state_in_checkpoint(tmp_path) -> None:
    sampler = _RecordingBatchSampler(16, 4, seed=5)
    data = _EpochData(n=16)
    trainer = Trainer(TinyLongiNet(), data, _config(tmp_path, max_epochs=3), loss_fn=ImbalanceAwareLoss(), batch_sampler=sampler)
    trainer.fit()
    assert sampler.epochs_seen == [0, 1, 2] and data.epochs_seen == [0, 1, 2]
    with pytest.raises(ValueError, match="persistent_workers"):
        Trainer(TinyLongiNet(), DataLoader(data, num_workers=1, persistent_workers=True), _config(tmp_path), loss_fn=ImbalanceAwareLoss())
    assert load_checkpoint(tmp_path / "last.pt")["sampler"] == {"seed": 5, "epoch": 2}
    sampler2 = _RecordingBatchSampler(16, 4, seed=5)
    loader = DataLoader(SyntheticLongiData(n=16), batch_sampler=sampler2)
    Trainer(TinyLongiNet(), loader, _config(tmp_path, max_epochs=4), loss_fn=ImbalanceAwareLoss()).fit(resume=True)
    assert sampler2.loaded == {"seed": 5, "epoch": 2} and sampler2.epochs_seen == [3]


def test_balanced_batch_sampler_if_available(tmp_path) -> None:
    samplers = pytest.importorskip("longiseg.data.samplers")
    data = SyntheticLongiData(n=16)
    sampler = samplers.BalancedBatchSampler(data.labels(), batch_size=4, num_replicas=1, rank=0, seed=0)
    trainer = Trainer(TinyLongiNet(), data, _config(tmp_path, max_epochs=2), loss_fn=ImbalanceAwareLoss(), batch_sampler=sampler)
    assert trainer.epoch_sampler is sampler
    result = trainer.fit()
    assert result.epochs_completed == 2


def test_the_checkpointed_sampler_position_is_the_trained_batches_whatever_the_workers(tmp_path) -> None:
    """With DataLoader workers fetching ahead, the sampler's own count ran ahead of training: last.pt recorded
    position 9 with two workers and 5 without for 5 steps, so the checkpoint depended on the worker count."""
    samplers = pytest.importorskip("longiseg.data.samplers")
    from longiseg.engine.checkpoint import load_checkpoint

    positions = []
    for workers in (0, 2):
        data = SyntheticLongiData(n=40)
        sampler = samplers.BalancedBatchSampler(data.labels(), batch_size=4, num_replicas=1, rank=0, seed=0)
        out = tmp_path / f"w{workers}"
        trainer = Trainer(TinyLongiNet(), data, _config(out, max_epochs=1, steps_per_epoch=3, num_workers=workers),
                          loss_fn=ImbalanceAwareLoss(), batch_sampler=sampler)
        trainer.fit()
        positions.append(load_checkpoint(out / "last.pt")["sampler"]["position"])
    assert positions == [3, 3]


def test_custom_loss_returning_tensor_and_3d_model(tmp_path) -> None:
    class Toy3D(SyntheticLongiData):
        def __getitem__(self, i):
            item = super().__getitem__(i)
            return {k: (v.unsqueeze(-3).expand(*v.shape[:-2], 2, *v.shape[-2:]).clone() if v.ndim >= 3 else v)
                    for k, v in item.items()}

    def bce(output: LongitudinalOutput, baseline: torch.Tensor, progression: torch.Tensor) -> torch.Tensor:
        f = nn.functional.binary_cross_entropy_with_logits
        return f(output.baseline, baseline) + f(output.progression, progression)

    seed_everything(0)
    trainer = Trainer(TinyLongiNet(spatial_dims=3), Toy3D(n=8, size=12), _config(tmp_path, max_epochs=2),
                      loss_fn=bce)
    result = trainer.fit()
    assert set(result.history[0]) >= {"train_loss", "train_grad_norm"}


def test_the_gradient_norm_is_logged_without_clipping_and_unclipped_training_is_unchanged(tmp_path) -> None:
    # with grad_clip_norm=None the log said train_grad_norm 0.0 every epoch
    _, _, result = _fit(tmp_path / "free", max_epochs=2, grad_clip_norm=None)
    norms = [row["train_grad_norm"] for row in result.history]
    assert all(n > 0 for n in norms), norms
    net = TinyLongiNet()  # the norm is taken with an infinite bound: every gradient is kept bit for bit
    net(torch.randn(2, 2, 1, 8, 8)).baseline.square().sum().backward()
    before = [p.grad.clone() for p in net.parameters()]
    nn.utils.clip_grad_norm_(net.parameters(), float("inf"))
    assert all(torch.equal(a, p.grad) for a, p in zip(before, net.parameters()))
    with pytest.raises(ValueError, match="loss_fn's loss has no gradient"):  # torch said "element 0 of tensors"
        Trainer(TinyLongiNet(), SyntheticLongiData(n=8), _config(tmp_path / "const", max_epochs=1),
                loss_fn=lambda output, baseline, progression: torch.tensor(1.0)).fit()


def test_registry_model_trains_one_epoch(tmp_path) -> None:
    from longiseg.registry import build_model, list_models

    assert "segmast" in list_models()
    model = build_model("segmast", in_channels=1, num_timepoints=2, widths=(8, 16, 16, 16), depths=(1, 1, 1, 1),
                        decoder_dim=16)  # an error here is a failure, not a skip
    trainer = Trainer(model, SyntheticLongiData(n=4, size=32), _config(tmp_path, max_epochs=1, batch_size=2),
                      loss_fn=ImbalanceAwareLoss(), model_name="segmast")
    result = trainer.fit()
    assert result.global_step == 2 and torch.isfinite(torch.tensor(result.history[0]["train_loss"]))
    assert load_checkpoint(tmp_path / "last.pt")["model_name"] == "segmast"
    assert load_checkpoint(tmp_path / "last.pt")["model_kwargs"] == model.spec.kwargs  # from the spec
    # arguments that are not the model's would make the checkpoints rebuild another model (it was recorded so)
    with pytest.raises(ValueError, match=r"model_kwargs \{'in_channels': 2\} contradict the arguments the model was "
                                         r"built with .*leave model_kwargs out"):
        Trainer(model, SyntheticLongiData(n=4, size=32), _config(tmp_path / "b", max_epochs=1, batch_size=2),
                loss_fn=ImbalanceAwareLoss(), model_kwargs={"in_channels": 2})


def test_one_finiteness_check_per_step_unless_debugging(tmp_path, monkeypatch) -> None:
    """A training step reads values back once (the loss and the gradients' norm); model, loss and targets check
    values in debug mode."""
    model = build_model("segmast", in_channels=1, widths=(8, 8, 8, 8), depths=(1, 1, 1, 1), decoder_dim=8)
    trainer = Trainer(model, SyntheticLongiData(n=4, size=32), _config(tmp_path, batch_size=2),
                      loss_fn=ImbalanceAwareLoss(seed=0))
    batch = next(iter(trainer.train_loader))
    calls: list[tuple[int, ...]] = []
    isfinite = torch.isfinite

    def counting(x):
        calls.append(tuple(x.shape))
        return isfinite(x)

    monkeypatch.setattr(torch, "isfinite", counting)
    trainer.train_step(batch)
    assert calls == [(2,)]  # the scalar loss and the gradients' norm, in one call
    calls.clear()
    with debug_checks():
        trainer.train_step(batch)
    assert len(calls) > 1 and (2,) in calls  # model input and logits too


def test_input_errors(tmp_path) -> None:
    cfg = _config(tmp_path, max_epochs=1)
    with pytest.raises(TypeError, match="nn.Module"):
        Trainer("model", SyntheticLongiData(), cfg, loss_fn=ImbalanceAwareLoss())  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="DataLoader or Dataset"):
        Trainer(TinyLongiNet(), [1, 2, 3], cfg, loss_fn=ImbalanceAwareLoss())  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="yields no batch"):
        Trainer(TinyLongiNet(), SyntheticLongiData(n=2), cfg, loss_fn=ImbalanceAwareLoss())
    with pytest.raises(ValueError, match="only used when train_data is a Dataset"):
        Trainer(TinyLongiNet(), DataLoader(SyntheticLongiData()), cfg, loss_fn=ImbalanceAwareLoss(), batch_sampler=[[0]])
    with pytest.raises(FileNotFoundError, match="resume checkpoint not found"):
        Trainer(TinyLongiNet(), SyntheticLongiData(), cfg, loss_fn=ImbalanceAwareLoss()).fit(resume=tmp_path / "nope.pt")

    class NoDict(nn.Module):
        def __init__(self):
            super().__init__()
            self.w = nn.Parameter(torch.ones(1))

        def forward(self, x):
            return x * self.w

    with pytest.raises(TypeError, match="must return a LongitudinalOutput"):
        Trainer(NoDict(), SyntheticLongiData(n=4), cfg, loss_fn=ImbalanceAwareLoss()).fit()
    trainer = Trainer(TinyLongiNet(), SyntheticLongiData(n=4), cfg, loss_fn=ImbalanceAwareLoss())
    with pytest.raises(ValueError, match=r"batch lacks \['progression'\]"):
        trainer.train_step({"images": torch.zeros(1, 2, 1, 8, 8), "baseline": torch.zeros(1, 1, 8, 8)})
    nan_loss = Trainer(TinyLongiNet(), SyntheticLongiData(n=4), cfg,
                       loss_fn=lambda o, b, p: o.baseline.sum() * float("nan"))
    with pytest.raises(FloatingPointError, match="non-finite loss"):
        nan_loss.fit()


def test_a_non_finite_gradient_with_a_finite_loss_stops_before_the_weights_change(tmp_path) -> None:
    # a loss whose gradient is infinite (sqrt at 0) passed the loss check: clipping made the gradients NaN, the
    # optimizer wrote NaN weights, and best.pt / last.pt were saved with them (the error came a step later)
    def sqrt_loss(output, baseline, progression):
        return torch.sqrt((output.baseline - output.baseline.detach()).abs().sum())  # 0, with an infinite gradient

    cfg = _config(tmp_path, max_epochs=2, grad_clip_norm=1.0)
    trainer = Trainer(TinyLongiNet(), SyntheticLongiData(n=4), cfg, loss_fn=sqrt_loss)
    before = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    with pytest.raises(FloatingPointError, match=r"non-finite gradient norm .* \(the loss, 0, is finite\)"):
        trainer.fit()
    after = trainer.model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # the step was not taken
    assert not list(tmp_path.glob("**/*.pt"))  # nothing saved with broken weights


def test_epoch_seed() -> None:
    assert epoch_seed(0, 1, 0) == epoch_seed(0, 1, 0)
    assert len({epoch_seed(0, e, r) for e in range(5) for r in range(3)}) == 15
    assert 0 <= epoch_seed(2**40, 3, 1) < 2**63
    with pytest.raises(ValueError, match="epoch"):
        epoch_seed(0, -1)


def test_amp_is_ignored_on_cpu(tmp_path) -> None:
    trainer = Trainer(TinyLongiNet(), SyntheticLongiData(n=4), _config(tmp_path, max_epochs=1, amp="bf16"), loss_fn=ImbalanceAwareLoss(),
                      dist_context=None)
    assert trainer.amp_dtype is None and not trainer.grad_scaler.is_enabled()


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("amp", ["bf16", "fp16"])
def test_amp_on_cuda(tmp_path, amp) -> None:
    seed_everything(0)
    trainer = Trainer(TinyLongiNet(), SyntheticLongiData(n=8), _config(tmp_path, max_epochs=2, amp=amp,
                                                                         device="cuda"), loss_fn=ImbalanceAwareLoss())
    assert trainer.amp_dtype == (torch.bfloat16 if amp == "bf16" else torch.float16)
    result = trainer.fit()
    assert all(torch.isfinite(torch.tensor(r["train_loss"])) for r in result.history)
    ckpt = load_checkpoint(tmp_path / "last.pt")
    assert (ckpt["grad_scaler"] is not None) == (amp == "fp16")
    resumed = Trainer(TinyLongiNet(), SyntheticLongiData(n=8), _config(tmp_path, max_epochs=3, amp=amp,
                                                                         device="cuda"), loss_fn=ImbalanceAwareLoss()).fit(resume=True)
    assert resumed.epochs_completed == 3


def test_tensorboard_logging_when_installed(tmp_path) -> None:
    pytest.importorskip("torch.utils.tensorboard")
    Trainer(TinyLongiNet(), SyntheticLongiData(n=4), _config(tmp_path, max_epochs=1, tensorboard=True), loss_fn=ImbalanceAwareLoss()).fit()
    events = list((tmp_path / "tensorboard").glob("events.out.tfevents.*"))
    assert len(events) == 1 and events[0].stat().st_size > 0


def test_sample_flags_reach_only_losses_that_name_them(tmp_path) -> None:
    class Flagged(SyntheticLongiData):
        def __getitem__(self, i):
            return {**super().__getitem__(i), "baseline_annotated": torch.tensor(i % 4 != 1),
                    "hard_negative": torch.tensor(i % 4 == 3)}

    seen: list[torch.Tensor] = []

    def annotated_only(output: LongitudinalOutput, baseline: torch.Tensor, progression: torch.Tensor, *,
                       baseline_annotated: torch.Tensor) -> torch.Tensor:
        seen.append(baseline_annotated.cpu())
        f = nn.functional.binary_cross_entropy_with_logits
        return f(output.baseline[baseline_annotated], baseline[baseline_annotated]) + \
            f(output.progression, progression)

    def plain(output: LongitudinalOutput, baseline: torch.Tensor, progression: torch.Tensor,
              **kwargs) -> torch.Tensor:  # no flag named: called with the three tensors only
        assert not kwargs
        return nn.functional.binary_cross_entropy_with_logits(output.progression, progression)

    seed_everything(0)
    trainer = Trainer(TinyLongiNet(), DataLoader(Flagged(n=8), batch_size=4), _config(tmp_path / "a", max_epochs=1),
                      loss_fn=annotated_only)
    assert trainer.loss_flag_keys == ("baseline_annotated",)
    trainer.fit()
    assert torch.equal(torch.cat(seen), torch.tensor([i % 4 != 1 for i in range(8)]))
    trainer = Trainer(TinyLongiNet(), Flagged(n=8), _config(tmp_path / "b", max_epochs=1), loss_fn=plain)
    assert trainer.loss_flag_keys == ()
    trainer.fit()
    loss = ImbalanceAwareLoss(keep_hard_negatives=True)
    assert Trainer(TinyLongiNet(), Flagged(n=8), _config(tmp_path / "c"), loss_fn=loss).loss_flag_keys == (
        "baseline_annotated", "hard_negative")


def test_a_model_trained_on_its_own_targets_gets_them_from_the_trainer(tmp_path) -> None:
    """dynunet_cs was trained on its inference output (progression by subtracting the timepoints' probabilities)
    with the new-lesion targets, whose gradient vanishes wherever the difference is clamped (half the voxels at
    initialisation); the paper trains it per timepoint on full lesion masks, what its ``training_targets`` give."""
    from longiseg.networks.nets.monai_nets import cross_sectional_targets

    class Toy3D(SyntheticLongiData):
        def __getitem__(self, i):
            item = super().__getitem__(i)
            return {k: (v.unsqueeze(-3).expand(*v.shape[:-2], 4, *v.shape[-2:]).clone() if v.ndim >= 3 else v)
                    for k, v in item.items()}

    seen: list[tuple[LongitudinalOutput, torch.Tensor, torch.Tensor]] = []

    def spy(output: LongitudinalOutput, baseline: torch.Tensor, progression: torch.Tensor) -> torch.Tensor:
        seen.append((output, baseline, progression))
        f = nn.functional.binary_cross_entropy_with_logits
        return f(output.baseline, baseline) + f(output.progression, progression)

    seed_everything(0)
    model = build_model("dynunet_cs", in_channels=1, filters=(4, 8, 16))
    batch = next(iter(DataLoader(Toy3D(n=4, size=12, timepoints=3), batch_size=4)))
    assert batch["progression"].sum() > 0
    with torch.no_grad():
        expected = model.timepoint_logits(batch["images"])
    trainer = Trainer(model, Toy3D(n=4, size=12, timepoints=3), _config(tmp_path), loss_fn=spy)
    trainer.train_step(batch)
    output, baseline, progression = seen[0]
    assert output.progression.shape == (4, 2, 1, 4, 12, 12)
    assert torch.allclose(output.baseline, expected[:, 0], rtol=0, atol=1e-6)  # the logits of every timepoint,
    assert torch.allclose(output.progression, expected[:, 1:], rtol=0, atol=1e-6)  # not their differences
    full = cross_sectional_targets(batch["baseline"], batch["progression"])
    assert torch.equal(baseline, full[:, 0]) and torch.equal(progression, full[:, 1:])
    assert torch.equal(progression[:, 0], torch.maximum(batch["baseline"], batch["progression"][:, 0]))
    # the full masks need the baseline mask; and a loss that scores new lesions cannot train on them
    with pytest.raises(ValueError, match=r"CrossSectionalNet trains on targets built from the baseline mask "
                                         r"\(training_targets\), but 1 sample\(s\) of this batch have no annotated"):
        trainer.train_step({**batch, "baseline_annotated": torch.tensor([True, False, True, True])})
    with pytest.raises(ValueError, match="loss_fn has progression_outside_baseline=True, .* CrossSectionalNet is "
                                         "trained on full lesion masks"):
        Trainer(model, Toy3D(n=4, size=12), _config(tmp_path / "b"),
                loss_fn=ImbalanceAwareLoss(progression_outside_baseline=True))
    # inference is unchanged: progression by subtraction
    model.eval()
    with torch.no_grad():
        out, train_out = model(batch["images"]), model(batch["images"], training_output=True)
    assert torch.equal(train_out.progression, model.timepoint_logits(batch["images"])[:, 1:])
    assert not torch.equal(out.progression, train_out.progression)
    with pytest.raises(TypeError, match="training_output must be a bool"):
        model(batch["images"], training_output=1)


def test_weights_that_overflow_in_a_step_stop_the_run_before_anything_of_the_epoch_is_saved(tmp_path) -> None:
    # the step checks the loss and the gradients, not what the optimizer wrote: with a huge lr (or an eps that
    # is 0 in float32) the epoch's last step made the weights inf/NaN and they were saved as last.pt and best.pt
    # (a NaN model predicts nothing, which validation scored well), the run ending "finished"
    cfg = _config(tmp_path / "run", max_epochs=2, lr=1e39, min_lr=0.0, warmup_epochs=0, steps_per_epoch=1)
    trainer = Trainer(TinyLongiNet(), SyntheticLongiData(n=4), cfg, loss_fn=ImbalanceAwareLoss())
    with pytest.raises(FloatingPointError, match=r"weights are not finite after epoch 1 .*nothing of this epoch"):
        trainer.fit()
    assert not list(tmp_path.glob("**/*.pt"))


def test_a_buffer_that_holds_inf_on_purpose_is_not_taken_for_overflowed_weights(tmp_path) -> None:
    # an additive attention mask (-inf above the diagonal) stopped every run after epoch 1, blaming the lr
    model = TinyLongiNet()
    model.register_buffer("attn_mask", torch.full((4, 4), float("-inf")).triu(1))
    cfg = _config(tmp_path, max_epochs=2)
    result = Trainer(model, SyntheticLongiData(n=4), cfg, loss_fn=ImbalanceAwareLoss()).fit()
    assert result.epochs_completed == 2


def test_validation_outputs_that_overflow_stop_the_run_naming_the_epoch(tmp_path) -> None:
    calls = []

    def validate(model):
        calls.append(1)
        if len(calls) == 2:  # as make_validate_fn does on non-finite logits
            raise FloatingPointError("the model's outputs are not finite on the validation samples")
        return {"dice": 0.5}

    cfg = _config(tmp_path, max_epochs=3, monitor="val_dice", monitor_mode="max")
    trainer = Trainer(TinyLongiNet(), SyntheticLongiData(n=4), cfg, loss_fn=ImbalanceAwareLoss(), validate_fn=validate)
    with pytest.raises(FloatingPointError, match=r"^validation after epoch 2: the model's outputs are not finite"):
        trainer.fit()
    assert torch.load(tmp_path / "last.pt", weights_only=False)["epoch"] == 1  # epoch 2 was not saved


def test_make_validate_fn_refuses_non_finite_outputs() -> None:
    from longiseg.workflows.train import make_validate_fn

    data = [{"images": torch.zeros(2, 1, 8, 8), "baseline": torch.zeros(1, 8, 8),
             "progression": torch.zeros(1, 1, 8, 8)}] * 2

    class NaNNet(nn.Module):
        def __init__(self):
            super().__init__()
            self.w = nn.Parameter(torch.ones(1))

        def forward(self, x):
            b = x.shape[0]
            return LongitudinalOutput(baseline=torch.full((b, 1, 8, 8), float("nan")) * self.w,
                                      progression=torch.zeros(b, 1, 1, 8, 8))

    validate = make_validate_fn(data)  # type: ignore[arg-type]
    with pytest.raises(FloatingPointError, match="outputs are not finite"):
        validate(NaNNet())


def test_an_eps_that_is_zero_in_float32_is_refused() -> None:
    with pytest.raises(ConfigError, match=r"eps must be finite and >= 1\.18e-38"):
        TrainerConfig(eps=1e-300)
    assert TrainerConfig(eps=torch.finfo(torch.float32).tiny).eps == torch.finfo(torch.float32).tiny
