"""Train any registry model from an :class:`~longiseg.workflows.config.ExperimentConfig`.

The workflow splits the cohort by patient (stratified by progression), draws 2.5D cross-view slices (2.5D
models) or 3D patches (3D models) with lesion-weighted crops, balances every batch with
:class:`~longiseg.data.samplers.BalancedBatchSampler`, optimises the imbalance-aware Dice-Focal objective
with :class:`~longiseg.engine.Trainer` and validates on a fixed set of held-out samples.
"""

from __future__ import annotations

import dataclasses
import functools
import json
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from longiseg.data.dataset import SliceDataset, VolumePatchDataset
from longiseg.data.loading import find_cases
from longiseg.data.preprocessing import preprocess_case
from longiseg.data.samplers import BalancedBatchSampler
from longiseg.data.split import split_by_patient
from longiseg.data.transforms import LongitudinalAugment
from longiseg.engine.config import save_config
from longiseg.engine.distributed import init_distributed
from longiseg.engine.trainer import LAST_CHECKPOINT, FitResult, Trainer, check_fresh_start, seed_everything
from longiseg.losses.dice_focal import PerSampleDiceFocalLoss
from longiseg.losses.imbalance import ImbalanceAwareLoss
from longiseg.metrics.voxel import dice
from longiseg.networks.inputs import check_spatial_size
from longiseg.registry import build_model, model_info
from longiseg.utils.io import atomic_write_json, check_separate_folders
from longiseg.utils.logging import get_logger
from longiseg.workflows.config import ExperimentConfig

__all__ = ["build_loss", "build_datasets", "make_validate_fn", "read_split", "run_training",
           "check_monitor", "VALIDATION_METRICS", "SPLIT_FILE"]

logger = get_logger(__name__)

#: The run folder's record of which cases trained and which validated the model (``longiseg tune`` reads it).
SPLIT_FILE = "split.json"
#: What `longiseg tune` writes into the run folder (a fresh start removes an earlier run's).
TUNING_FILE = "tuning.json"


def build_loss(cfg: ExperimentConfig) -> ImbalanceAwareLoss:
    """The imbalance-aware Dice-Focal loss of ``cfg.loss``."""
    lc = cfg.loss
    per_sample = PerSampleDiceFocalLoss(lambda_dice=lc.lambda_dice, lambda_focal=lc.lambda_focal, gamma=lc.gamma)
    return ImbalanceAwareLoss(per_sample, strategy=lc.strategy, empty_ratio=lc.empty_ratio,
                              min_empty=lc.min_empty, seed=lc.seed, keep_hard_negatives=lc.keep_hard_negatives,
                              progression_outside_baseline=lc.progression_outside_baseline)


def build_datasets(cfg: ExperimentConfig, dim: str, train_cases: Sequence, val_cases: Sequence
                   ) -> tuple[SliceDataset | VolumePatchDataset, SliceDataset | VolumePatchDataset | None]:
    """Training and validation datasets for a 2.5D (slices) or 3D (patches) model.

    Validation samples use no augmentation, no hard-negative share (``data.persisting_share`` applies to the
    training samples only) and a fixed seed, so the same samples are scored every epoch and in every run.
    """
    dc = cfg.data

    # functools.partial keeps the preprocessing picklable for DataLoader workers.
    prep = functools.partial(preprocess_case, crop=dc.crop_to_foreground)
    common = {"lesion_weight": dc.lesion_weight, "progression_share": dc.progression_share, "preprocess": prep,
              "cache_size": dc.cache_size}
    if dim == "3D":
        def make(cases, **kw):  # noqa: ANN001, ANN202
            return VolumePatchDataset(cases, patch_size=dc.crop_size, **common, **kw)
    else:
        def make(cases, **kw):  # noqa: ANN001, ANN202
            return SliceDataset(cases, crop_size=dc.crop_size, planes=dc.planes, **common, **kw)
    augment = LongitudinalAugment(independent_timepoints=dc.augment_independent_timepoints) if dc.augment else None
    train = make(train_cases, samples_per_epoch=dc.samples_per_epoch, transform=augment,
                 persisting_share=dc.persisting_share, seed=dc.seed)
    val = make(val_cases, samples_per_epoch=dc.val_samples, transform=None, seed=dc.seed + 1) if val_cases else None
    return train, val


def _dice_per_sample(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """:func:`longiseg.metrics.voxel.dice` of each sample of binary masks ``(N, ...)``; ``(N,)`` float64."""
    flat = [(p.reshape(1, -1).numpy(), t.reshape(1, -1).numpy()) for p, t in zip(pred.bool(), target.bool())]
    return torch.tensor([dice(p, t) for p, t in flat], dtype=torch.float64)


def make_validate_fn(val_data: SliceDataset | VolumePatchDataset, batch_size: int = 16
                     ) -> Callable[[nn.Module], dict[str, float]]:
    """A ``validate_fn(model) -> metrics`` over a fixed set of validation samples.

    Metrics: ``dice_baseline`` (mean Dice of the baseline head on samples with a baseline annotation; ``nan``
    without any, e.g. MSSEG-2), ``dice_progression`` (mean Dice of the progression head on samples whose
    progression mask is non-empty), ``np_accuracy`` (share of samples with an empty progression mask whose
    prediction is empty too) and ``dice``, the mean of the first two where both exist (the default
    early-stopping metric).
    """
    samples = [val_data[i] for i in range(len(val_data))]
    if not samples:
        raise ValueError("the validation data hold no sample; raise data.val_samples or data.val_fraction")
    keys = ("images", "baseline", "progression")
    batches = [{k: torch.stack([s[k] for s in samples[i:i + batch_size]]) for k in keys}
               for i in range(0, len(samples), batch_size)]
    for i, b in enumerate(batches):
        b["baseline_annotated"] = torch.tensor([bool(s.get("baseline_annotated", True))
                                                for s in samples[i * batch_size:(i + 1) * batch_size]])

    @torch.no_grad()
    def validate(model: nn.Module) -> dict[str, float]:
        device = next(model.parameters()).device
        base_d, prog_d, np_ok = [], [], []
        for b in batches:
            out = model(b["images"].to(device))
            base_pred = (out.baseline[:, :1] > 0).cpu()
            prog_pred = (out.progression[:, :, :1] > 0).cpu().flatten(0, 1)
            prog_true = b["progression"].flatten(0, 1)
            annotated = b["baseline_annotated"]
            if annotated.any():
                base_d.append(_dice_per_sample(base_pred[annotated], b["baseline"][annotated]))
            has = prog_true.flatten(1).any(1)
            if has.any():
                prog_d.append(_dice_per_sample(prog_pred[has], prog_true[has]))
            if (~has).any():
                np_ok.append((~prog_pred[~has].flatten(1).any(1)).float())
        base = torch.cat(base_d).mean().item() if base_d else float("nan")
        prog = torch.cat(prog_d).mean().item() if prog_d else float("nan")
        npa = torch.cat(np_ok).mean().item() if np_ok else float("nan")
        score = float(np.nanmean([base, prog])) if not (np.isnan(base) and np.isnan(prog)) else float("nan")
        return {"dice": score, "dice_baseline": base, "dice_progression": prog, "np_accuracy": npa}

    validate.metric_names = VALIDATION_METRICS  # type: ignore[attr-defined]
    return validate


#: What :func:`make_validate_fn` returns; the trainer logs them as ``val_<name>``.
VALIDATION_METRICS = ("dice", "dice_baseline", "dice_progression", "np_accuracy")


def check_monitor(monitor: str) -> None:
    """Refuse, before any training, a ``trainer.monitor`` that no epoch will log (without validation cases a
    ``val_*`` monitor falls back to ``train_loss``).

    Raises:
        ValueError: naming the metric and the ones that exist.
    """
    known = ["train_loss"] + [f"val_{m}" for m in VALIDATION_METRICS]
    if monitor not in known:
        raise ValueError(f"trainer.monitor={monitor!r} is not a metric this run logs; use one of {known}")


def read_split(path: Path) -> dict:
    """A run's ``split.json`` (:data:`SPLIT_FILE`): ``data_root`` (a folder), ``train`` and ``validation`` (case
    ids, ``[]`` when absent) and an optional ``val_root``; read by ``longiseg tune`` and by a resume.

    Raises:
        ValueError: naming the file: not JSON, or not an object of those fields.
    """
    try:
        split = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{path} is not valid JSON ({err}); longiseg train writes it, train again") from None
    ok = (isinstance(split, dict) and isinstance(split.get("data_root"), str)
          and all(isinstance(split.get(k, []), list) and all(isinstance(c, str) for c in split.get(k, []))
                  for k in ("train", "validation"))
          and isinstance(split.get("val_root") or "", str))
    if not ok:
        raise ValueError(f"{path} must be an object with data_root (a folder) and validation (case ids), as "
                         "longiseg train writes it")
    split.setdefault("train", [])
    split.setdefault("validation", [])
    return split


def _check_resumed_split(split_file: Path, train_cases: Sequence, val_cases: Sequence) -> None:
    """Refuse to resume a run on other training or validation patients than it recorded."""
    if not split_file.is_file():
        return
    recorded = read_split(split_file)
    before = (sorted(recorded["train"]), sorted(recorded["validation"]))
    now = (sorted(c.case_id for c in train_cases), sorted(c.case_id for c in val_cases))
    if now != before:
        raise ValueError(f"resuming {split_file.parent} on another split than it was trained on ({split_file}: "
                         f"validation {before[1]}, now {now[1]}): resume with the run's data settings (data.root, "
                         "data.seed, data.val_fraction) or start afresh with --overwrite")


def run_training(cfg: ExperimentConfig, *, resume: bool = False, overwrite: bool = False,
                 progress: bool | None = None) -> FitResult:
    """Train ``cfg.model`` on ``cfg.data`` and write checkpoints, logs and the config to ``cfg.trainer.output_dir``.

    Works unchanged under ``torchrun`` (each rank draws a disjoint share of every epoch's batches; rank 0
    writes files). Python, NumPy and torch are seeded from ``cfg.trainer.seed`` before the model is built,
    so two runs of one config give bit-identical checkpoints on the CPU.

    Args:
        cfg: the experiment configuration.
        resume: continue from ``output_dir/last.pt`` if it exists.
        overwrite: start afresh even if ``output_dir`` already holds a run.
        progress: override ``cfg.trainer.progress_bar``.

    Returns:
        The trainer's :class:`~longiseg.engine.trainer.FitResult`.

    Raises:
        FileNotFoundError: if ``cfg.data.root`` is missing or holds no case.
        FileExistsError: ``output_dir`` holds a run and neither ``resume`` nor ``overwrite`` is set.
        ValueError: for an unknown model name (naming the closest ones), unknown model keyword arguments, a
            ``trainer.monitor`` no epoch logs, or an invalid split; all before any training.
    """
    if not cfg.data.root:
        raise FileNotFoundError("data.root is empty: set it to a cohort folder in the longiseg layout")
    root = Path(cfg.data.root)
    if not root.is_dir():
        raise FileNotFoundError(f"data.root {root} does not exist")
    check_separate_folders(cfg.trainer.output_dir, "trainer.output_dir",
                           {"data.root": root, "data.val_root": cfg.data.val_root or None})
    info = model_info(cfg.model.name)
    if not resume and not overwrite:
        check_fresh_start(cfg.trainer.output_dir)  # before any work; fit checks again for direct users
    if progress is not None:
        cfg = dataclasses.replace(cfg, trainer=dataclasses.replace(cfg.trainer, progress_bar=progress))
    cases = find_cases(root, modalities=cfg.data.modalities)
    if cfg.data.val_root:
        train_cases, val_cases = cases, find_cases(Path(cfg.data.val_root), modalities=cfg.data.modalities)
    else:
        train_cases, val_cases = split_by_patient(cases, cfg.data.val_fraction, cfg.data.seed)
    check_monitor(cfg.trainer.monitor)
    kwargs = dict(cfg.model.kwargs)
    kwargs.setdefault("in_channels", len(cases[0].modalities))
    kwargs.setdefault("num_timepoints", len(cases[0].image_files))
    seed_everything(cfg.trainer.seed)  # the model's initial weights come from this seed
    try:
        model = build_model(cfg.model.name, **kwargs)
    except TypeError as err:
        raise ValueError(f"model.kwargs {kwargs} do not fit {cfg.model.name!r}: {err}") from None
    # Sizes the model cannot take fail here, before the run's records are written, not at the first step.
    check_spatial_size(model, cfg.data.crop_size, "data.crop_size")
    check_spatial_size(model, cfg.inference.patch_size, "inference.patch_size")
    # What using the model needs travels with it (and with every checkpoint): see longiseg.spec.ModelSpec.
    model.spec = model.spec.replace(
        modalities=tuple(cases[0].modalities), crop_size=cfg.data.crop_size,
        preprocessing={"normalization": "zscore", "crop_to_foreground": cfg.data.crop_to_foreground},
        inference=cfg.inference.to_dict())
    logger.info("training %s (%s, %.2fM parameters) on %d cases, validating on %d", cfg.model.name, info.dim,
                sum(p.numel() for p in model.parameters()) / 1e6, len(train_cases), len(val_cases))

    train_ds, val_ds = build_datasets(cfg, info.dim, train_cases, val_cases)
    ctx = init_distributed(device=cfg.trainer.device)
    sampler = BalancedBatchSampler(train_ds.progression_flags, cfg.trainer.batch_size,
                                   positive_fraction=cfg.data.positive_fraction, num_replicas=ctx.world_size,
                                   rank=ctx.rank, seed=cfg.trainer.seed)
    validate_fn = make_validate_fn(val_ds) if val_ds is not None else None
    tcfg = cfg.trainer
    if validate_fn is None and tcfg.monitor != "train_loss":
        logger.info("no validation cases: monitoring train_loss instead of %s", tcfg.monitor)
        tcfg = dataclasses.replace(tcfg, monitor="train_loss", monitor_mode="min")
    trainer = Trainer(model, train_ds, tcfg, loss_fn=build_loss(cfg), validate_fn=validate_fn,
                      batch_sampler=sampler, model_name=cfg.model.name, model_kwargs=kwargs,
                      dist_context=ctx)
    last = Path(tcfg.output_dir) / LAST_CHECKPOINT
    resuming = resume and last.is_file()
    if resuming:  # checked before the run's records are rewritten
        _check_resumed_split(Path(tcfg.output_dir) / SPLIT_FILE, train_cases, val_cases)
        trainer.load_checkpoint(last)  # weights that do not fit the configured model are refused here
    trains = not resuming or (trainer.epoch < trainer.config.max_epochs and not trainer.stopped_early)
    if ctx.is_main:
        save_config(cfg, Path(tcfg.output_dir) / "experiment.yaml")
        atomic_write_json(Path(tcfg.output_dir) / SPLIT_FILE, {
            # absolute: tune and predict may run from another working directory
            "data_root": str(root.resolve()),
            "val_root": str(Path(cfg.data.val_root).resolve()) if cfg.data.val_root else cfg.data.val_root,
            "seed": cfg.data.seed,
            "train": [c.case_id for c in train_cases], "validation": [c.case_id for c in val_cases]})
        tuning = Path(tcfg.output_dir) / TUNING_FILE
        if trains and tuning.exists():  # the checkpoints it describes are about to be replaced
            logger.info("removing %s: it describes checkpoints this run replaces (run longiseg tune again)", tuning)
            tuning.unlink()
    return trainer.fit(resume=resume, overwrite=overwrite)
