"""The library's main job: the whole pipeline on the embedded demo cohort, on a CPU, in minutes.

The demo is nothing but the public stages, one per command, in sequence:

1. ``longiseg cohort OUT`` -- :func:`~longiseg.data.demo_cohort.generate_demo_cohort` (MNI152 anatomy with
   synthetic MS-like lesions, 2 mm) and :func:`~longiseg.data.split.write_test_split` (held-out test patients,
   half progressing);
2. ``longiseg train OUT/configs/MODEL.yaml`` -- :func:`~longiseg.workflows.train.run_training` of SegMaST and
   the SegFormer baseline (the configs are :func:`demo_experiment`, written to ``OUT/configs``);
3. ``longiseg tune OUT/runs/MODEL --checkpoint last.pt`` -- :func:`~longiseg.workflows.tune.run_tuning`: the
   progression threshold chosen on the trainer's *validation* patients, never the test patients, and recorded in
   the checkpoint;
4. ``longiseg predict --checkpoint OUT/runs/MODEL/last.pt --input OUT/test --output OUT/predictions/MODEL`` --
   :func:`~longiseg.workflows.predict.run_prediction` from the checkpoint alone (an *untrained* SegMaST is
   predicted too: the reference that shows what training achieved);
5. ``longiseg evaluate OUT/predictions/* OUT/test --out OUT/report`` -- the paper-style table, CSV/JSON and box
   plots; the demo adds ``results.json`` and figures: ``overlay.png`` (baseline/follow-up slices with true and
   predicted masks and the entropy map), ``training_curves.png`` and ``cohort_patient.png``.

Typing those commands with ``longiseg --threads 1`` gives the same table (``docs/reproducing.md``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import multiprocessing
import os
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from pathlib import Path
from typing import Any

import torch

from longiseg.data.cohort import find_cases
from longiseg.data.demo_cohort import MAX_DEMO_PATIENTS, DemoCohortConfig, generate_demo_cohort
from longiseg.data.layout import MANIFEST_JSON
from longiseg.data.loading import load_case
from longiseg.data.manifest import read_manifest
from longiseg.data.split import check_test_split, write_test_split
from longiseg.engine.checkpoint import load_model
from longiseg.engine.config import TrainerConfig, save_config
from longiseg.metrics.evaluate import evaluate_folder, write_report
from longiseg.registry import build_model
from longiseg.utils.config import ConfigBase, ConfigError, require_seed
from longiseg.utils.device import usable_cpu_count
from longiseg.utils.io import (
    atomic_directories,
    atomic_write_json,
    check_replaceable,
    end_with_parent,
    folder_is_empty,
)
from longiseg.utils.logging import apply_logging_setup, get_logger, logging_setup
from longiseg.utils.plotting import require_matplotlib
from longiseg.utils.seeds import generator_seed
from longiseg.utils.validation import check_instance, check_path
from longiseg.workflows.config import DataConfig, ExperimentConfig, InferenceConfig, LossConfig, ModelConfig
from longiseg.workflows.predict import run_prediction
from longiseg.workflows.train import run_training
from longiseg.workflows.tune import TUNING_FILE, run_tuning

__all__ = [
    "DemoConfig", "DEMO_MODELS", "DEMO_COHORT_LESIONS", "demo_cohort_config", "write_cohort", "demo_experiment",
    "demo_jobs", "run_demo",
]

# Only folders holding this marker are ever deleted by ``overwrite=True``.
_MARKER = ".longiseg-demo"

logger = get_logger(__name__)

#: Small configurations of the two 2.5D models compared by the demo (registry name, factory kwargs).
DEMO_MODELS: dict[str, tuple[str, dict[str, Any]]] = {
    "SegMaST": ("segmast", {"widths": [16, 32, 64, 128], "depths": [1, 1, 1, 1], "decoder_dim": 64,
                            "drop_path_rate": 0.0}),
    "SegFormer": ("segformer", {"widths": [16, 32, 64, 128], "depths": [1, 1, 1, 1], "num_heads": [1, 2, 4, 8],
                                "decoder_dim": 64,
                                "drop_path_rate": 0.0}),
}

#: Lesion activity of the demo cohort (overrides of :class:`~longiseg.data.demo_cohort.DemoCohortConfig`):
#: active follow-ups get 2-5 new lesions of 3-6 mm largest semi-axis and enlarging lesions grow their axes by
#: 40-80 %. At 2 mm voxels smaller new lesions are only a few voxels (below the 27 mm^3 post-processing
#: cut-off) and thinner growth rims break into fragments that no model can detect.
DEMO_COHORT_LESIONS: dict[str, Any] = {
    "new_lesions": (2, 5),
    "new_lesion_radius_mm": (3.0, 6.0),
    "enlarge_factor": (1.4, 1.8),
}


@dataclasses.dataclass
class DemoConfig(ConfigBase):
    """Settings of :func:`run_demo` (defaults: about four and a half minutes on an idle 2-core CPU, the two models
    trained at the same time); a :class:`~longiseg.utils.config.ConfigBase` (``from_dict``, ``to_dict``,
    ``with_overrides``, files).

    Attributes:
        output_dir: everything is written here (cohort, runs, predictions, report, figures).
        num_patients: cohort size (one two-timepoint case per patient).
        num_test: held-out test patients (half progressing).
        spacing: cohort voxel size in mm (2: 98x116x94 voxels).
        models: which of :data:`DEMO_MODELS` to train.
        epochs: training epochs per model.
        steps_per_epoch: optimizer steps per epoch.
        batch_size: slices per batch.
        crop_size: training crop and inference window in voxels.
        lr: peak learning rate (higher than the paper's 1e-4 because the demo trains for minutes, not days).
        lesion_weight: probability that a training crop is centred on a lesion voxel.
        progression_share: share of the lesion-centred crops of a progressing patient centred on its
            new/enlarging lesions (the rest on its baseline lesions).
        tune_threshold: choose each trained model's progression threshold on its validation patients
            (:func:`~longiseg.tuning.select_threshold`); ``False`` keeps 0.5.
        seed: seed of the cohort, the split and training.
        threads: torch intra-op threads (and numba threads of the compiled scan). The default 1 leaves the
            second core of a small machine to the data worker; the small tensors of the demo gain little from
            more threads and lose a lot when the cores are shared.
        num_workers: DataLoader worker processes that sample and augment slices while the model trains.
        jobs: models trained at the same time, each in a process of its own with ``threads`` threads (the stages
            of a model -- train, tune, predict -- run in its process; the untrained reference is predicted by the
            first process to finish). Every process seeds itself as a run of ``longiseg train`` does, so the
            results are those of one model after another, bit for bit. ``None``: one process per model where
            the machine has ``threads`` usable cores for each, else ``1`` (one model after another, in this
            process). The processes are started with ``spawn``: as with DataLoader workers, a script that calls
            :func:`run_demo` needs the ``if __name__ == "__main__":`` guard.
        overwrite: replace an existing demo output folder (only one the demo wrote, recognised by its marker
            file; any other non-empty folder is never deleted).
        progress: progress bars.
    """

    output_dir: str = "demo_output"
    num_patients: int = 32
    num_test: int = 10
    spacing: int = 2
    models: tuple[str, ...] = ("SegMaST", "SegFormer")
    epochs: int = 48
    steps_per_epoch: int = 25
    batch_size: int = 8
    crop_size: int = 64
    lr: float = 2e-3
    lesion_weight: float = 0.8
    progression_share: float = 0.8
    tune_threshold: bool = True
    seed: int = 0
    threads: int = 1
    num_workers: int = 1
    jobs: int | None = None
    overwrite: bool = False
    progress: bool = True

    def __post_init__(self) -> None:
        # Checked before anything is written: the cohort alone takes a minute to make.
        self.coerce_fields()  # built directly, checked as when read from a file
        unknown = [m for m in self.models if m not in DEMO_MODELS]
        if unknown or not self.models:
            raise ConfigError(f"models must be a non-empty subset of {list(DEMO_MODELS)}, got {list(self.models)}")
        for name, low in (("num_patients", 6), ("epochs", 1), ("steps_per_epoch", 1), ("batch_size", 2),
                          ("crop_size", 32), ("threads", 1), ("num_workers", 0), ("spacing", 1)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ConfigError(f"{name} must be an int >= {low}, got {value!r}")
        if self.num_patients > MAX_DEMO_PATIENTS:
            raise ConfigError(f"num_patients must be at most {MAX_DEMO_PATIENTS:,}, got {self.num_patients}")
        require_seed(self.seed, "DemoConfig", "seed")
        if self.jobs is not None and (isinstance(self.jobs, bool) or not isinstance(self.jobs, int) or self.jobs < 1):
            raise ConfigError(f"jobs must be None (automatic) or an int >= 1, got {self.jobs!r}")
        if self.crop_size % 32:
            raise ConfigError(f"crop_size must be a multiple of 32 (the models downsample 32x), got {self.crop_size}")
        if not 2 <= self.num_test < self.num_patients - 2:
            raise ConfigError(f"num_test must be in [2, num_patients - 3] = [2, {self.num_patients - 3}], "
                             f"got {self.num_test}")
        if not self.lr > 0:
            raise ConfigError(f"lr must be > 0, got {self.lr}")
        for name in ("lesion_weight", "progression_share"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ConfigError(f"{name} must be in [0, 1], got {getattr(self, name)}")


def demo_cohort_config(cfg: DemoConfig) -> DemoCohortConfig:
    """The cohort of the demo (also what ``longiseg cohort`` writes with the same settings)."""
    return DemoCohortConfig(num_patients=cfg.num_patients, spacing=cfg.spacing, seed=cfg.seed, **DEMO_COHORT_LESIONS)


def write_cohort(out: str | Path, cohort_cfg: DemoCohortConfig, num_test: int, *, overwrite: bool = False,
                 progress: bool = True) -> dict[str, list[str]]:
    """Write a synthetic cohort and its held-out split as ``out/cohort``, ``out/train`` and ``out/test``
    (what ``longiseg cohort`` writes, and the demo's first stage).

    The three folders are written into temporaries and replace their namesakes only when all three are complete:
    a failure (a split the new cohort cannot give, e.g. too few progressing patients) or an interruption leaves
    ``out`` as it was, and ``cohort/``, ``train/`` and ``test/`` always come from one run.

    Args:
        out: the folder to write into (created if missing).
        cohort_cfg: the cohort (:func:`demo_cohort_config` for the demo's).
        num_test: held-out test patients (:func:`~longiseg.data.split.write_test_split`).
        overwrite: replace existing ``cohort/``, ``train/`` and ``test/`` folders (as a whole).
        progress: show a progress bar while the cohort is generated.

    Returns:
        The split, ``{"train": [...], "test": [...]}`` case ids.

    Raises:
        FileExistsError: one of the three folders exists and ``overwrite`` is off, or ``out/cohort`` exists but is
            not a cohort folder (no manifest).
        ValueError: the split cannot be drawn from the new cohort (``out`` unchanged).
    """
    out = check_path("out", out)
    existing = out / "cohort"
    if existing.is_dir() and not folder_is_empty(existing) and not (existing / MANIFEST_JSON).is_file():
        raise FileExistsError(f"{existing} does not look like a cohort folder (no {MANIFEST_JSON}); not "
                              "replacing it")
    # before a minute of generation (and its "wrote demo cohort" line): the cohort's counts follow from its config
    num_progressing = cohort_cfg.num_progressing
    try:
        check_test_split(num_test, num_progressing, cohort_cfg.num_patients - num_progressing, "the new cohort")
    except ValueError as err:
        raise ValueError(f"{err}; {out} is unchanged") from None
    names = ("cohort", "train", "test")
    # published together: an interruption while they replace the old ones puts the old ones back
    with atomic_directories([out / name for name in names], overwrite=overwrite) as temporaries:
        final = dict(zip(names, temporaries, strict=True))
        stage = Path(tempfile.mkdtemp(dir=final["test"]))  # goes with that temporary if anything fails
        cohort = stage / "cohort"
        generate_demo_cohort(cohort, cohort_cfg, progress=progress, shown_as=str(out / "cohort"))
        try:
            split = write_test_split(cohort, stage, num_test)
        except ValueError as err:
            raise ValueError(f"{str(err).replace(str(cohort), 'the new cohort')}; {out} is unchanged") from None
        for name in names:
            for entry in (stage / name).iterdir():
                os.replace(entry, final[name] / entry.name)
        shutil.rmtree(stage)
    return split


def demo_experiment(cfg: DemoConfig, label: str, train_dir: str | Path, run_dir: str | Path) -> ExperimentConfig:
    """The training configuration of one demo model (``label`` in :data:`DEMO_MODELS`).

    Raises:
        TypeError: ``cfg`` is not a :class:`DemoConfig`.
        ValueError: ``label`` is not a demo model.
    """
    check_instance("cfg", cfg, DemoConfig, "a DemoConfig")
    if label not in DEMO_MODELS:
        raise ValueError(f"label must be one of {sorted(DEMO_MODELS)}, got {label!r}")
    name, kwargs = DEMO_MODELS[label]
    return ExperimentConfig(
        model=ModelConfig(name=name, kwargs=dict(kwargs)),
        data=DataConfig(root=str(train_dir), val_fraction=0.25, crop_size=cfg.crop_size,
                        lesion_weight=cfg.lesion_weight, progression_share=cfg.progression_share,
                        samples_per_epoch=cfg.steps_per_epoch * cfg.batch_size, val_samples=48,
                        cache_size=cfg.num_patients, seed=cfg.seed),
        loss=LossConfig(strategy="partial", seed=cfg.seed),
        trainer=TrainerConfig(max_epochs=cfg.epochs, batch_size=cfg.batch_size, lr=cfg.lr, min_lr=cfg.lr / 20,
                              warmup_epochs=1, patience=None, seed=cfg.seed, output_dir=str(run_dir),
                              tensorboard=False, progress_bar=cfg.progress, device="cpu",
                              num_workers=cfg.num_workers),
        # As in the paper, inference windows have the training crop size: a Mamba scan trained on 64x64 crops
        # does not carry over to the 4x longer token sequences of 128x128 windows.
        inference=InferenceConfig(patch_size=cfg.crop_size, overlap=0.5, batch_size=32, min_lesion_mm3=27.0),
    )


def demo_jobs(cfg: DemoConfig) -> int:
    """How many processes :func:`run_demo` trains the models in.

    Args:
        cfg: the demo's settings; ``cfg.jobs`` if set (capped at the number of models), else one process per model
            where the usable cores (:func:`~longiseg.utils.device.usable_cpu_count`) give each ``cfg.threads``
            of them, else 1.

    Returns:
        The number of processes, ``1 <= n <= len(cfg.models)``; 1 means in this process, one model after another.
    """
    if cfg.jobs is not None:
        return min(cfg.jobs, len(cfg.models))
    cores = usable_cpu_count() or 1
    return max(1, min(len(cfg.models), cores // cfg.threads))


def _run_dir(out: Path, label: str) -> Path:
    """The run folder of demo model ``label`` (``longiseg train --output``)."""
    return out / "runs" / label


def _untrained_label(cfg: DemoConfig) -> str:
    """The untrained reference's label in the demo's table, timings and stage results."""
    return f"{cfg.models[0]} (untrained)"


def _prediction_dir(out: Path, label: str | None) -> Path:
    """Where the test predictions of demo model ``label`` go; ``None``: those of the untrained reference."""
    return out / "predictions" / ("untrained" if label is None else label)


def _model_stages(cfg: DemoConfig, label: str, out: Path, progress: bool, log_level: int | None) -> dict[str, Any]:
    """``longiseg train``, ``tune`` and ``predict`` of one demo model (in this process or a worker); returns
    ``{"timings": {...}, "threshold": tuning record or None, "process": the pid that ran them}``."""
    apply_logging_setup(log_level)
    torch.set_num_threads(cfg.threads)
    run_dir = _run_dir(out, label)
    exp = demo_experiment(dataclasses.replace(cfg, progress=progress), label, out / "train", run_dir)
    timings: dict[str, float] = {}
    t = time.perf_counter()
    run_training(exp)  # longiseg train
    timings[f"train_{label}"] = time.perf_counter() - t
    threshold = None
    if cfg.tune_threshold:
        t = time.perf_counter()
        run_tuning(run_dir, checkpoint="last.pt", device="cpu", progress=progress)  # longiseg tune
        threshold = json.loads((run_dir / TUNING_FILE).read_text(encoding="utf-8"))
        timings[f"tune_{label}"] = time.perf_counter() - t
    t = time.perf_counter()
    run_prediction(load_model(run_dir / "last.pt"), out / "test", _prediction_dir(out, label), device="cpu",
                   progress=progress)  # longiseg predict
    timings[f"predict_{label}"] = time.perf_counter() - t
    return {"timings": timings, "threshold": threshold, "process": os.getpid()}


def _untrained_stage(cfg: DemoConfig, out: Path, progress: bool, log_level: int | None) -> dict[str, Any]:
    """Predict the untrained reference: the first model's architecture and settings, random weights (seeded)."""
    apply_logging_setup(log_level)
    torch.set_num_threads(cfg.threads)
    label0 = cfg.models[0]
    exp0 = demo_experiment(cfg, label0, out / "train", _run_dir(out, label0))
    torch.manual_seed(generator_seed(cfg.seed))
    model = build_model(exp0.model.name, in_channels=2, num_timepoints=2, **exp0.model.kwargs)
    t = time.perf_counter()
    run_prediction(model, out / "test", _prediction_dir(out, None), exp0.inference, device="cpu",
                   progress=progress)
    return {"timings": {"predict_untrained": time.perf_counter() - t}, "threshold": None, "process": os.getpid()}


def _run_model_stages(cfg: DemoConfig, out: Path) -> dict[str, dict[str, Any]]:
    """Every model's stages and the untrained reference, one after another or in :func:`demo_jobs` processes
    (submitted in the order of ``cfg.models``, the untrained reference last; only the first model shows progress
    bars). Keys: the model labels and ``"<first label> (untrained)"``."""
    untrained = _untrained_label(cfg)
    jobs = demo_jobs(cfg)
    if jobs == 1:
        stages = {label: _model_stages(cfg, label, out, cfg.progress, None) for label in cfg.models}
        stages[untrained] = _untrained_stage(cfg, out, cfg.progress, None)
        return stages
    logger.info("training %d models in %d processes of %d thread(s) each", len(cfg.models), jobs, cfg.threads)
    level = logging_setup()
    _start_quiet_resource_tracker()
    # spawn: a forked child of a process whose OpenMP threads have run can hang
    pool = ProcessPoolExecutor(max_workers=jobs, mp_context=multiprocessing.get_context("spawn"),
                               initializer=_init_worker, initargs=(os.getpid(),))
    try:
        with _sigint_blocked():  # the workers start with SIGINT blocked: Ctrl-C is this process's to handle
            futures: dict[str, Future[dict[str, Any]]] = {
                label: pool.submit(_model_stages, cfg, label, out, cfg.progress and i == 0, level)
                for i, label in enumerate(cfg.models)
            }
            futures[untrained] = pool.submit(_untrained_stage, cfg, out, False, level)
        return {label: future.result() for label, future in futures.items()}
    except BaseException:  # an error, Ctrl-C or SIGTERM: stop the other models' work now, not when it is done
        _stop_workers(pool)
        raise
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def _start_quiet_resource_tracker() -> None:
    """Start multiprocessing's resource tracker (once per process) with its warnings about leaked semaphores off.

    The tracker removes the semaphores of workers stopped by an interruption; its warning about them would follow
    the one line "interrupted". It takes this interpreter's ``-W`` options when it starts, so the option is added
    to ``sys.warnoptions`` for that moment only, not for the rest of the caller's process.
    """
    from multiprocessing import resource_tracker

    quiet = "ignore:resource_tracker:UserWarning"
    added = quiet not in sys.warnoptions
    if added:
        sys.warnoptions.append(quiet)
    try:
        resource_tracker.ensure_running()
    finally:
        if added:
            sys.warnoptions.remove(quiet)


def _init_worker(parent: int) -> None:
    """Start of a :func:`_run_model_stages` worker process: Ctrl-C is left to the parent (which stops the workers),
    and the worker ends when the parent does, also when the parent is killed (Linux; elsewhere the parent's
    clean-up stops them)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    end_with_parent(parent)


@contextlib.contextmanager
def _sigint_blocked() -> Iterator[None]:
    """Block SIGINT in this thread (processes started meanwhile inherit the mask); a Ctrl-C arriving meanwhile is
    raised when it is unblocked, not lost."""
    if not hasattr(signal, "pthread_sigmask"):
        yield
        return
    # the resource tracker, started with the first process, unblocks SIGINT after starting itself: start it first
    from multiprocessing import resource_tracker

    resource_tracker.ensure_running()
    before = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, before)


def _stop_workers(pool: ProcessPoolExecutor, timeout_s: float = 30.0) -> None:
    """Cancel what ``pool`` has not started and terminate its worker processes (running tasks included)."""
    processes = list((getattr(pool, "_processes", None) or {}).values())  # before shutdown forgets them
    pool.shutdown(wait=False, cancel_futures=True)
    for process in processes:
        if process.is_alive():
            process.terminate()
    deadline = time.monotonic() + timeout_s
    for process in processes:
        process.join(max(0.0, deadline - time.monotonic()))
        if process.is_alive():
            process.kill()
            process.join(timeout_s)


def run_demo(cfg: DemoConfig | None = None) -> dict[str, Any]:
    """Run the demo end to end and return the results (also written to ``output_dir/results.json``).

    Returns:
        ``{"table": str, "learned": {...}, "models": [...], "test_cases": [...], "thresholds": {...},
        "timings_s": {...}, "files": {...}, "config": {...}}``; ``models`` holds the paper-table rows (mean,
        SD, p-value per column), ``learned`` compares each trained model's held-out baseline Dice and
        progression lesion F1 with the untrained reference's, and ``thresholds`` holds each trained model's
        tuning on its validation patients (``RUN/tuning.json``; empty with ``tune_threshold=False``).
    """
    cfg = cfg or DemoConfig()
    require_matplotlib("the demo's figures")  # before the cohort is written, not after
    out = Path(cfg.output_dir)
    if out.is_symlink() and not out.exists():
        raise FileNotFoundError(f"{out} is a symbolic link to {os.readlink(out)}, which does not exist")
    if out.exists() and not folder_is_empty(out):
        if not (out / _MARKER).is_file():  # never replaced: no advice to pass overwrite
            raise FileExistsError(f"{out} exists, is not empty and was not written by the demo (no {_MARKER}); "
                                  "the demo replaces only its own folders: choose another output folder")
        if not cfg.overwrite:
            raise FileExistsError(f"{out} holds an earlier demo; pass overwrite=True (--overwrite) to replace it")
        _empty_folder(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / _MARKER).write_text("written by longiseg demo; --overwrite may replace this folder\n", encoding="utf-8")
    threads_before = torch.get_num_threads()
    torch.set_num_threads(cfg.threads)
    try:
        return _run(cfg, out)
    finally:
        torch.set_num_threads(threads_before)


def _empty_folder(out: Path) -> None:
    """Delete what the demo folder ``out`` holds but not ``out`` itself, so that neither its parent folder needs to
    be writable nor a symbolic link ``out`` is replaced (its target is emptied). Nothing is deleted unless every
    folder in it can be emptied; the marker goes last, so an interrupted deletion can be repeated."""
    if not out.is_symlink():
        check_replaceable(out)
    else:  # its target is emptied: checked as the folder it is
        check_replaceable(out.resolve())
    for entry in sorted(out.iterdir(), key=lambda p: p.name == _MARKER):
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry)
        else:
            entry.unlink()


def _run(cfg: DemoConfig, out: Path) -> dict[str, Any]:
    from longiseg.workflows.figures import plot_case, plot_prediction_overlay, plot_training_curves

    timings: dict[str, float] = {}
    t = start = time.perf_counter()
    test_ids = write_cohort(out, demo_cohort_config(cfg), cfg.num_test, progress=cfg.progress)["test"]  # longiseg cohort
    test_dir = out / "test"
    # a progressing test patient, so that the figures show new lesions
    shown = next((e.case_id for e in read_manifest(test_dir / MANIFEST_JSON).cases if e.progression), test_ids[0])
    plot_case(test_dir / shown, out / "cohort_patient.png")
    timings["cohort"] = time.perf_counter() - t

    untrained = _untrained_label(cfg)
    runs = {label: _run_dir(out, label) for label in cfg.models}
    pred_dirs = {label: _prediction_dir(out, label) for label in cfg.models}
    pred_dirs[untrained] = _prediction_dir(out, None)
    for label in cfg.models:
        save_config(demo_experiment(cfg, label, out / "train", runs[label]), out / "configs" / f"{label}.yaml")
    stages = _run_model_stages(cfg, out)
    thresholds = {label: stages[label]["threshold"] for label in cfg.models if stages[label]["threshold"]}
    for label in (*cfg.models, untrained):
        timings.update(stages[label]["timings"])

    # longiseg evaluate
    results = [evaluate_folder(pred_dirs[label], test_dir, model=label, progress=False) for label in pred_dirs]
    table = write_report(results, out / "report", reference=cfg.models[0])
    plot_training_curves(runs, out / "training_curves.png")
    prog_case = next(e.case_id for e in read_manifest(test_dir / MANIFEST_JSON).cases if e.progression)
    case = load_case(next(s for s in find_cases(test_dir) if s.case_id == prog_case))
    plot_prediction_overlay(case, pred_dirs, out / "overlay.png")

    rows = {r["model"]: r for r in json.loads((out / "report" / "summary.json").read_text(encoding="utf-8"))["models"]}
    learned = {
        label: {key: {"trained": rows[label][f"{key}/mean"], "untrained": rows[untrained][f"{key}/mean"]}
                for key in ("dice/B", "lesion_f1/P")}
        for label in cfg.models
    }
    summary = {
        "table": table,
        "learned": learned,
        "models": list(rows.values()),
        "test_cases": test_ids,
        "thresholds": thresholds,
        "timings_s": {k: round(v, 1) for k, v in timings.items()},
        "files": {
            "report": str(out / "report"),
            "overlay": str(out / "overlay.png"),
            "boxplot": str(out / "report" / "boxplot.png"),
            "training_curves": str(out / "training_curves.png"),
            "cohort_patient": str(out / "cohort_patient.png"),
            "configs": str(out / "configs"),
        },
        "config": cfg.to_dict(),
    }
    summary["timings_s"]["total"] = round(time.perf_counter() - start, 1)
    atomic_write_json(out / "results.json", summary)
    return summary
