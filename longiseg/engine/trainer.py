"""The training loop shared by every registry model.

:class:`Trainer` trains any model mapping ``batch["images"]`` ``(B, T, C, H, W)`` (2.5D) or
``(B, T, C, D, H, W)`` (3D) to a :class:`~longiseg.networks.output.LongitudinalOutput` of logits with

* AdamW (no weight decay for norms, biases, a model's ``no_weight_decay()`` names and parameters flagged
  ``_no_weight_decay``, such as Mamba's ``A_log`` and ``D``),
* a per-step linear warm-up then cosine decay (:mod:`longiseg.engine.schedulers`),
* gradient clipping, AMP on CUDA (bf16, or fp16 with a ``GradScaler``),
* any loss the caller passes (the workflows pass :class:`longiseg.losses.ImbalanceAwareLoss`),
* early stopping and ``best.pt`` on a validation metric,
* atomic ``last.pt``/``best.pt`` checkpoints with an exact resume (:mod:`longiseg.engine.checkpoint`),
* a per-epoch CSV log, optional TensorBoard and a tqdm progress bar,
* DistributedDataParallel when launched with ``torchrun`` (rank 0 logs and writes checkpoints).

Determinism contract: at the start of epoch ``e`` the trainer calls ``set_epoch(e)`` on the batch sampler
and on the dataset (when they have one) and reseeds python's ``random``, numpy's global RNG and torch's (CPU and CUDA) RNGs from
``(seed, e, rank)`` (:func:`~longiseg.engine.seeding.seed_epoch`). A run is therefore reproducible and resumable exactly if the data
order depends only on ``(sampler seed, epoch)`` and any other randomness (augmentation, the loss's random
subset) draws from those global RNGs, from DataLoader workers (seeded by torch from the global RNG), or from
generators whose state is saved (e.g. ``ImbalanceAwareLoss(seed=...)``, saved via its ``state_dict``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import inspect
import logging
import math
import os
import shutil
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn
from torch.utils.data import BatchSampler, DataLoader, Dataset, DistributedSampler
from tqdm.auto import tqdm

from longiseg.data.samplers import EpochTaggedBatchSampler
from longiseg.engine.checkpoint import (
    load_checkpoint,
    model_identity,
    restore_rng_state,
    save_checkpoint,
    unwrap_model,
)
from longiseg.engine.config import TrainerConfig
from longiseg.engine.distributed import DistributedContext, all_reduce_mean, barrier, init_distributed
from longiseg.engine.optim import build_optimizer
from longiseg.engine.schedulers import build_warmup_cosine_scheduler
from longiseg.engine.seeding import seed_epoch
from longiseg.networks.output import LongitudinalOutput
from longiseg.networks.wrappers import eval_mode
from longiseg.utils.io import atomic_write, check_replaceable, csv_text, end_with_parent
from longiseg.utils.logging import get_logger, log_once
from longiseg.utils.seeds import generator_seed
from longiseg.utils.validation import (
    DEBUG_CHECKS_ENV,
    check_bool,
    check_callable,
    check_path,
    debug_checks_enabled,
)

__all__ = [
    "Trainer",
    "FitResult",
    "LossFn",
    "ValidateFn",
    "Callback",
    "BATCH_KEYS",
    "SAMPLE_FLAG_KEYS",
    "check_fresh_start",
]

logger = get_logger("longiseg.engine")

LossFn = Callable[[LongitudinalOutput, torch.Tensor, torch.Tensor], Any]
ValidateFn = Callable[[nn.Module], Mapping[str, float]]
Callback = Callable[["Trainer", dict[str, Any]], None]

BATCH_KEYS = ("images", "baseline", "progression")
#: Optional per-sample flags of a batch, passed by keyword to a loss whose signature names them.
SAMPLE_FLAG_KEYS = ("baseline_annotated", "hard_negative")
LAST_CHECKPOINT = "last.pt"
BEST_CHECKPOINT = "best.pt"
METRICS_CSV = "metrics.csv"
CONFIG_FILE = "trainer_config.yaml"
#: TensorBoard event files of the run (removed with the checkpoints when a run starts afresh).
TENSORBOARD_DIR = "tensorboard"


# ----------------------------------------------------------------------------------------------------
# Run folder
# ----------------------------------------------------------------------------------------------------


def check_fresh_start(output_dir: str | Path, *, resume: bool = False) -> None:
    """Refuse a fresh run in ``output_dir`` when it already holds one (``last.pt`` or ``best.pt``).

    Args:
        output_dir: the run folder.
        resume: the caller asked to resume (``fit(resume=True)``, ``longiseg train --resume``) and found no
            ``last.pt``: a ``best.pt`` alone (a run stopped between its first ``best.pt`` and its first
            ``last.pt``) cannot be continued, and the message says so instead of suggesting ``resume``.

    Raises:
        FileExistsError: naming the checkpoints and how to continue (``resume``) or replace (``overwrite``) them.
    """
    out = check_path("output_dir", output_dir)
    existing = [str(out / n) for n in (LAST_CHECKPOINT, BEST_CHECKPOINT) if (out / n).exists()]
    if not existing:
        return
    if resume and not (out / LAST_CHECKPOINT).exists():
        raise FileExistsError(
            f"{out} holds {', '.join(existing)} but no {LAST_CHECKPOINT} to resume from (the run stopped before it "
            f"first wrote {LAST_CHECKPOINT}); nothing was changed: start it afresh with overwrite=True "
            "(longiseg train --overwrite), which replaces that run's checkpoints")
    raise FileExistsError(
        f"{out} already holds a run ({', '.join(existing)}): continue it with resume=True "
        "(longiseg train --resume) or replace it with overwrite=True (longiseg train --overwrite)")


# ----------------------------------------------------------------------------------------------------
# Small helpers
# ----------------------------------------------------------------------------------------------------


def _move_to_device(batch: Any, device: torch.device) -> Any:
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=device.type == "cuda")
    if isinstance(batch, Mapping):
        return {k: _move_to_device(v, device) for k, v in batch.items()}
    if isinstance(batch, (list, tuple)):
        return type(batch)(_move_to_device(v, device) for v in batch)
    return batch


def _end_with_trainer(worker_id: int) -> None:
    """DataLoader ``worker_init_fn``: the worker ends with its parent, the training process (also when that is
    killed or ends without shutting its persistent workers down) or the forkserver that started the worker for it
    (which ends with the training process); nothing random is drawn, so the batches stay the same."""
    parent = os.getppid()
    if parent == 1:  # the training process has ended already
        os._exit(1)
    end_with_parent(parent)


def _unpack_loss(result: Any) -> tuple[torch.Tensor, dict[str, Any]]:
    """``(loss, {name: scalar})`` from a tensor, a mapping with ``"loss"`` or an object with ``.loss``."""
    if isinstance(result, torch.Tensor):
        loss, fields = result, {}
    elif isinstance(result, Mapping):
        if "loss" not in result:
            raise TypeError(f"loss_fn returned a mapping without a 'loss' entry (keys: {sorted(result)})")
        loss, fields = result["loss"], dict(result)
    elif hasattr(result, "loss"):
        loss = result.loss
        if dataclasses.is_dataclass(result):
            fields = {f.name: getattr(result, f.name) for f in dataclasses.fields(result)}
        else:
            fields = dict(vars(result))
    else:
        raise TypeError(f"loss_fn must return a tensor or an object with a .loss tensor, got {type(result).__name__}")
    if not isinstance(loss, torch.Tensor) or loss.numel() != 1:
        raise TypeError(f"loss_fn's loss must be a scalar tensor, got {loss!r:.80}")
    if not loss.requires_grad:
        raise ValueError("loss_fn's loss has no gradient (it does not depend on the model's output, or was detached "
                         "or computed under torch.no_grad); return the loss computed from the output")
    logs: dict[str, Any] = {}
    for k, v in fields.items():
        if k == "loss":
            continue
        if isinstance(v, torch.Tensor) and v.numel() == 1 and v.dtype != torch.bool:
            logs[k] = v.detach().float().reshape(())
        elif isinstance(v, (int, float)) and not isinstance(v, bool):
            logs[k] = float(v)
    return loss.reshape(()), logs


def _check_baselines_annotated(batch: Mapping[str, Any], model_name: str) -> None:
    """Refuse a batch with unannotated baselines for a model trained on ``training_targets`` (built from the baseline
    mask: unknown without it)."""
    annotated = batch.get("baseline_annotated")
    if isinstance(annotated, torch.Tensor) and not bool(annotated.all()):
        raise ValueError(f"{model_name} trains on targets built from the baseline mask (training_targets), "
                         f"but {int((~annotated.bool()).sum())} sample(s) of this batch have no annotated baseline "
                         f"(baseline_annotated=False); leave such cases out of its training data")


def _loss_flag_keys(loss_fn: Callable) -> tuple[str, ...]:
    """The :data:`SAMPLE_FLAG_KEYS` that ``loss_fn`` (its ``forward`` for modules) names as keyword parameters."""
    target = loss_fn.forward if isinstance(loss_fn, nn.Module) else loss_fn
    try:
        params = inspect.signature(target).parameters
    except (TypeError, ValueError):  # a callable without a readable signature gets the three tensors only
        return ()
    by_name = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    return tuple(k for k in SAMPLE_FLAG_KEYS if k in params and params[k].kind in by_name)


def _samplers(loader: DataLoader) -> list[Any]:
    """The loader's batch sampler, the one an :class:`EpochTaggedBatchSampler` wraps, its index sampler and the
    loader's sampler, outermost first (``None`` where absent)."""
    outer = loader.batch_sampler
    inner = outer.batch_sampler if isinstance(outer, EpochTaggedBatchSampler) else None
    return [outer, inner, getattr(inner if inner is not None else outer, "sampler", None), loader.sampler]


def _find_with(loader: DataLoader, *methods: str) -> Any:
    for c in _samplers(loader):
        if c is not None and all(callable(getattr(c, m, None)) for m in methods):
            return c
    return None


class _CsvLog:
    """Per-epoch CSV log; rows are written whole and flushed, the file is rewritten when columns change."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.columns: list[str] = []

    def rewrite(self, history: Sequence[Mapping[str, Any]]) -> None:
        self.columns = []
        for row in history:
            self.columns += [k for k in row if k not in self.columns]
        # time_s last, as documented, also where the val_* columns first appear after epochs without validation
        self.columns.sort(key=lambda k: k == "time_s")
        text = csv_text(history, self.columns) if self.columns else ""
        atomic_write(self.path, lambda fh: fh.write(text))

    def append(self, row: Mapping[str, Any], history: Sequence[Mapping[str, Any]]) -> None:
        if not self.columns or any(k not in self.columns for k in row) or not self.path.exists():
            self.rewrite(history)
            return
        with open(self.path, "a", encoding="utf-8") as fh:  # as atomic_write writes it
            fh.write(csv_text([row], self.columns, header=False))
            fh.flush()
            os.fsync(fh.fileno())


def _make_tensorboard_writer(log_dir: Path) -> Any:
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        log_once(logger, "no-tensorboard", "tensorboard is not installed; logging to CSV only")
        return None
    return SummaryWriter(log_dir=str(log_dir))


def _check_resume(resume: object) -> bool | Path:
    """``resume`` of :meth:`Trainer.fit` as a bool or a path (``None`` is ``False``), else a ``TypeError``."""
    if resume is None:
        return False
    if isinstance(resume, (bool, np.bool_)):
        return bool(resume)
    if isinstance(resume, (str, os.PathLike)):
        return check_path("resume", resume)
    raise TypeError(f"resume must be a bool or the path of a checkpoint, got {type(resume).__name__} {resume!r}")


@dataclasses.dataclass
class FitResult:
    """What :meth:`Trainer.fit` returns.

    Attributes:
        history: one dict per completed epoch (the rows of ``metrics.csv``).
        epochs_completed: number of completed epochs (including those before a resume).
        global_step: number of optimizer steps.
        best_metric: best value of ``config.monitor`` (``None`` if never computed).
        best_epoch: 1-based epoch of ``best_metric``.
        stopped_early: whether early stopping ended the run.
        last_checkpoint: path of ``last.pt`` (the checkpoint resumed from, where a resume of a finished run
            elsewhere trained nothing).
        best_checkpoint: path of ``best.pt`` if one was written.
        monitor: the name of ``best_metric`` (``config.monitor``).
    """

    history: list[dict[str, Any]]
    epochs_completed: int
    global_step: int
    best_metric: float | None
    best_epoch: int | None
    stopped_early: bool
    last_checkpoint: Path
    best_checkpoint: Path | None
    monitor: str = "metric"

    def summary(self) -> str:
        """One line for people: epochs, steps, the best monitored value and where the checkpoints are
        (``repr`` holds every epoch's metrics)."""
        best = ("never computed" if self.best_metric is None
                else f"{self.best_metric:.4g} at epoch {self.best_epoch}")
        files = ", ".join(str(p) for p in (self.last_checkpoint, self.best_checkpoint) if p is not None)
        early = "; stopped early" if self.stopped_early else ""
        return (f"{self.epochs_completed} epochs ({self.global_step} steps){early}; best {self.monitor} {best}; "
                f"checkpoints: {files}")


# ----------------------------------------------------------------------------------------------------
# Trainer
# ----------------------------------------------------------------------------------------------------


class _TrainedPosition:
    """A batch sampler's state as a checkpoint records it: at the batches the trainer trained on. A ``DataLoader``
    with workers fetches batches ahead, so the sampler's own count depended on the number of workers (9 instead of 5
    with two workers), though a resume starts the next epoch either way."""

    def __init__(self, sampler: Any, consumed: int | None) -> None:
        self.sampler, self.consumed = sampler, consumed

    def state_dict(self) -> Any:
        """The sampler's ``state_dict``, given ``num_consumed`` when it takes it and an epoch was trained."""
        state_dict = self.sampler.state_dict
        if self.consumed is not None and "num_consumed" in inspect.signature(state_dict).parameters:
            return state_dict(num_consumed=self.consumed)
        return state_dict()


class Trainer:
    """Train a longitudinal segmentation model (see the module docstring for what it does).

    Batches are dicts with ``images`` ``(B, T, C, *S)``, ``baseline`` ``(B, 1, *S)``, ``progression``
    ``(B, T-1, 1, *S)`` and optionally ``has_progression`` ``(B,)`` (``S`` = ``(H, W)`` or ``(D, H, W)``).
    Batch entries named in :data:`SAMPLE_FLAG_KEYS` (``(B,)`` bool) are also passed to ``loss_fn`` by keyword
    when its signature (read once) has a parameter of that name.

    A model trained on another output than it predicts (the cross-sectional ``dynunet_cs``: full-lesion logits of
    every timepoint, progression by subtraction at inference) has a method ``training_targets(baseline,
    progression) -> (baseline_target, progression_target)``; the trainer then calls ``model(images,
    training_output=True)`` and gives ``loss_fn`` those targets (every sample's baseline must be annotated).

    Args:
        model: module mapping ``images`` to a :class:`LongitudinalOutput` of logits. It is moved to the
            device and wrapped in ``DistributedDataParallel`` under ``torchrun``.
        train_data: a ``DataLoader`` yielding such batches, or a ``Dataset`` of per-sample dicts (the trainer
            then builds the loader from ``batch_sampler`` or a seeded ``DistributedSampler`` that shards the
            data over ranks, with ``config.batch_size`` and ``config.num_workers``).
        config: :class:`TrainerConfig` (defaults follow the paper).
        loss_fn: callable ``(output, baseline_target, progression_target) -> result`` where ``result`` is a
            scalar tensor or has a scalar ``.loss`` (other scalar fields are logged as ``train_<name>``),
            e.g. :class:`longiseg.losses.ImbalanceAwareLoss` (required: the engine chooses no loss).
        validate_fn: callable ``(model) -> {name: float}`` run every ``config.val_every`` epochs with the
            unwrapped model in eval mode under ``torch.no_grad()`` on every rank; results are averaged over
            ranks and logged as ``val_<name>``.
        batch_sampler: batch sampler for a ``Dataset`` ``train_data`` (e.g.
            :class:`longiseg.data.samplers.BalancedBatchSampler` built with ``num_replicas``/``rank``).
        collate_fn: collate function for a ``Dataset`` ``train_data``.
        model_name: registry name stored in checkpoints (enables ``build_model_from_checkpoint``).
        model_kwargs: registry factory kwargs stored in checkpoints.
        callbacks: callables ``(trainer, row)`` run on every rank after each epoch's checkpoint. One may end the
            run by setting ``trainer.stopped_early = True`` (on every rank): ``last.pt``, written before, does not
            record it, so ``fit(resume=True)`` goes on training (an interruption, where early stopping is
            recorded and a resume of an early-stopped run stays stopped).
        dist_context: distributed context; default :func:`init_distributed` (reads the ``torchrun`` env).

    Raises:
        TypeError: for a model that is not an ``nn.Module``, bad ``train_data`` or a non-callable ``loss_fn``.
        ValueError: for an empty loader or a sampler sharded for another world size.

    Example:
        >>> trainer = Trainer(model, loader, TrainerConfig(max_epochs=100, output_dir="runs/segmast"),
        ...                   loss_fn=ImbalanceAwareLoss(), validate_fn=my_validation)  # doctest: +SKIP
        >>> result = trainer.fit(resume=True)                      # doctest: +SKIP
    """

    def __init__(
        self,
        model: nn.Module,
        train_data: DataLoader | Dataset,
        config: TrainerConfig | None = None,
        *,
        loss_fn: LossFn,
        validate_fn: ValidateFn | None = None,
        batch_sampler: Any = None,
        collate_fn: Callable | None = None,
        model_name: str | None = None,
        model_kwargs: Mapping[str, Any] | None = None,
        callbacks: Sequence[Callback] = (),
        dist_context: DistributedContext | None = None,
    ) -> None:
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
        config = config if config is not None else TrainerConfig()
        if not isinstance(config, TrainerConfig):
            raise TypeError(f"config must be a TrainerConfig, got {type(config).__name__}")
        check_callable("validate_fn", validate_fn, optional=True)
        for cb in callbacks:
            check_callable("callbacks", cb, "callables (trainer, row)")
        self.config = config
        self.ctx = dist_context if dist_context is not None else init_distributed(device=config.device)
        self.device = self.ctx.device
        self.is_main = self.ctx.is_main
        # what every checkpoint records, checked now rather than at the first checkpoint, an epoch later
        self.model_name, self.model_kwargs = model_identity(model, model_name, model_kwargs)
        self.validate_fn = validate_fn
        self.callbacks = list(callbacks)
        self.output_dir = Path(config.output_dir)

        if not callable(loss_fn):
            raise TypeError(f"loss_fn must be callable, got {type(loss_fn).__name__}")
        # a model trained on another output than it predicts says so (see the class docstring); read once
        self._training_targets = getattr(unwrap_model(model), "training_targets", None)
        if self._training_targets is not None and getattr(loss_fn, "progression_outside_baseline", False):
            raise ValueError(f"loss_fn has progression_outside_baseline=True, which scores the progression head as a "
                             f"new-lesion map, but {type(unwrap_model(model)).__name__} is trained on full lesion masks "
                             f"per timepoint (training_targets); train it with progression_outside_baseline=False")
        if isinstance(loss_fn, nn.Module):
            loss_fn = loss_fn.to(self.device)
        self.loss_fn = loss_fn
        # Read once: the batch flags this loss takes (custom losses without them get the three tensors).
        self.loss_flag_keys = _loss_flag_keys(loss_fn)

        self.train_loader = self._make_loader(train_data, batch_sampler, collate_fn)
        self._loader_started = False
        self._consumed: int | None = None  # batches of the last epoch trained (the sampler's position to save)
        self.epoch_sampler = _find_with(self.train_loader, "set_epoch")
        dataset = self.train_loader.dataset
        self.epoch_dataset = dataset if callable(getattr(dataset, "set_epoch", None)) else None
        if (self.epoch_dataset is not None and getattr(self.train_loader, "persistent_workers", False)
                and not isinstance(self.train_loader.batch_sampler, EpochTaggedBatchSampler)):
            raise ValueError("the dataset has set_epoch() but the DataLoader uses persistent_workers=True: "
                             "workers would keep the first epoch's copy; use persistent_workers=False, or "
                             "wrap the batch sampler in longiseg.data.samplers.EpochTaggedBatchSampler if the "
                             "dataset accepts EpochIndex items")
        self.stateful_sampler = _find_with(self.train_loader, "state_dict", "load_state_dict")
        self._check_sharding()
        self.steps_per_epoch = self._resolve_steps_per_epoch()

        model = model.to(self.device)
        if self.ctx.is_distributed:
            device_ids = [self.device.index] if self.device.type == "cuda" else None
            model = nn.parallel.DistributedDataParallel(
                model, device_ids=device_ids, find_unused_parameters=config.ddp_find_unused_parameters
            )
        self.model = model
        self.optimizer = build_optimizer(model, config)
        self.scheduler = build_warmup_cosine_scheduler(
            self.optimizer, warmup_epochs=config.warmup_epochs, max_epochs=config.max_epochs,
            steps_per_epoch=self.steps_per_epoch, min_lr=config.min_lr,
        )
        if config.warmup_epochs >= config.max_epochs:
            log_once(logger, f"warmup-{config.warmup_epochs}-{config.max_epochs}",
                     f"warmup_epochs={config.warmup_epochs} >= max_epochs={config.max_epochs}: the whole run is "
                     "warm-up (no cosine decay)")
        self.amp_dtype = self._resolve_amp()
        self.grad_scaler = torch.amp.GradScaler("cuda", enabled=self.amp_dtype == torch.float16)

        self.epoch = 0
        self.global_step = 0
        self._step_lr: float | None = None  # the learning rate of the last optimizer step
        self.best_metric: float | None = None
        self.best_epoch: int | None = None
        self.early_stopping_counter = 0
        self.stopped_early = False
        self._nan_monitor_warned = False  # a NaN monitor value is warned about once per run
        self.history: list[dict[str, Any]] = []
        #: The checkpoint :meth:`load_checkpoint` restored last, until :meth:`fit` starts from it (loaded once).
        self._loaded_from: tuple[Path, Any] | None = None

    # -- setup ----------------------------------------------------------------------------------------

    def _make_loader(self, data: Any, batch_sampler: Any, collate_fn: Callable | None) -> DataLoader:
        if isinstance(data, DataLoader):
            if batch_sampler is not None or collate_fn is not None:
                raise ValueError("batch_sampler/collate_fn are only used when train_data is a Dataset; "
                                 "configure them on your DataLoader instead")
            return data
        if not isinstance(data, Dataset):
            raise TypeError(f"train_data must be a torch DataLoader or Dataset, got {type(data).__name__}")
        if batch_sampler is None:
            sampler = DistributedSampler(data, num_replicas=self.ctx.world_size, rank=self.ctx.rank,
                                         shuffle=True, seed=generator_seed(self.config.seed), drop_last=True)
            batch_sampler = BatchSampler(sampler, self.config.batch_size, drop_last=True)
        # Datasets seeded by (seed, epoch, index) take epoch-tagged indices: their workers then persist across
        # epochs and keep their loaded cases (re-creating them cost 1-2 s per epoch).
        persistent = self.config.num_workers > 0 and bool(getattr(data, "accepts_epoch_index", False))
        if persistent:
            batch_sampler = EpochTaggedBatchSampler(batch_sampler)
        workers = self.config.num_workers
        return DataLoader(data, batch_sampler=batch_sampler, num_workers=workers,
                          collate_fn=collate_fn, pin_memory=self.device.type == "cuda",
                          persistent_workers=persistent,
                          worker_init_fn=_end_with_trainer if workers else None,
                          multiprocessing_context=self.config.worker_start_method if workers else None)

    def _check_sharding(self) -> None:
        if not self.ctx.is_distributed:
            return
        sharded = [c for c in _samplers(self.train_loader) if c is not None and hasattr(c, "num_replicas")]
        if not sharded:
            log_once(logger, "unsharded-sampler",
                     "training under DDP with a sampler that has no num_replicas attribute: make sure every "
                     "rank sees a different part of the data (e.g. BalancedBatchSampler(num_replicas=, rank=))")
            return
        s = sharded[0]
        if s.num_replicas != self.ctx.world_size or getattr(s, "rank", self.ctx.rank) != self.ctx.rank:
            raise ValueError(f"the train sampler is sharded for num_replicas={s.num_replicas}, "
                             f"rank={getattr(s, 'rank', '?')} but this process is rank {self.ctx.rank} of "
                             f"{self.ctx.world_size}")

    def _resolve_steps_per_epoch(self) -> int:
        try:
            n = len(self.train_loader)
        except TypeError:
            n = None
        cfg = self.config.steps_per_epoch
        if n is None and cfg is None:
            raise ValueError("the train loader has no len(); set TrainerConfig.steps_per_epoch")
        steps = min(n, cfg) if (n is not None and cfg is not None) else (cfg if cfg is not None else n)
        if n is not None and cfg is not None and cfg > n:
            logger.warning("steps_per_epoch=%d but the train loader yields %d batches per epoch: each epoch runs "
                           "%d steps (the LR schedule counts them); give the loader more batches for more steps",
                           cfg, n, n)
        if steps < 1:
            raise ValueError("the train loader yields no batch (dataset smaller than the batch size with "
                             "drop_last, or an empty dataset)")
        return int(steps)

    def _resolve_amp(self) -> torch.dtype | None:
        amp = self.config.amp
        if self.device.type != "cuda" or amp == "none":
            if amp in ("bf16", "fp16"):
                log_once(logger, "amp-cpu", f"amp={amp!r} ignored: mixed precision is used on CUDA only")
            return None
        if amp == "bf16" or (amp == "auto" and torch.cuda.is_bf16_supported()):
            return torch.bfloat16
        return torch.float16

    # -- one step / one epoch -------------------------------------------------------------------------

    def _autocast(self) -> contextlib.AbstractContextManager:
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type="cuda", dtype=self.amp_dtype)

    def train_step(self, batch: Mapping[str, Any]) -> dict[str, Any]:
        """Forward, loss, backward, clip, optimizer and scheduler step on one batch.

        Args:
            batch: dict with ``images``, ``baseline`` and ``progression`` tensors (see the class docstring).

        Returns:
            ``{"loss": tensor, "grad_norm": tensor, <scalar loss fields>}`` detached.

        Raises:
            ValueError: if a batch key is missing.
            TypeError: if the model does not return a :class:`LongitudinalOutput`.
            FloatingPointError: on a non-finite loss or gradient norm, before the optimizer step (without an fp16
                GradScaler, which skips such steps).
        """
        if not isinstance(batch, Mapping):
            raise TypeError(f"batches must be dicts with keys {BATCH_KEYS}, got {type(batch).__name__}")
        missing = [k for k in BATCH_KEYS if k not in batch]
        if missing:
            raise ValueError(f"batch lacks {missing}; batches must hold {BATCH_KEYS} (got keys {sorted(batch)})")
        batch = _move_to_device(batch, self.device)
        targets_of = self._training_targets
        with self._autocast():  # through the (DDP) wrapper, which synchronises the gradients of its forward only
            output = self.model(batch["images"], training_output=True) if targets_of else self.model(batch["images"])
        if not isinstance(output, LongitudinalOutput):
            raise TypeError(f"the model must return a LongitudinalOutput, got {type(output).__name__}")
        if self.amp_dtype is not None:
            output = output.map(lambda t: t.float())
        baseline, progression = batch["baseline"], batch["progression"]
        if targets_of is not None:
            _check_baselines_annotated(batch, type(unwrap_model(self.model)).__name__)
            baseline, progression = targets_of(baseline, progression)
        flags = {k: batch[k] for k in self.loss_flag_keys if k in batch}
        loss, logs = _unpack_loss(self.loss_fn(output, baseline, progression, **flags))
        self.optimizer.zero_grad(set_to_none=True)
        self.grad_scaler.scale(loss).backward()
        # the gradients' global norm is logged with clipping off too (it was logged as 0): an infinite bound
        # scales every gradient by exactly 1
        self.grad_scaler.unscale_(self.optimizer)
        clip = self.config.grad_clip_norm
        grad_norm = nn.utils.clip_grad_norm_(self.model.parameters(), math.inf if clip is None else clip)
        # The one value check of a step (one device-to-host sync for the loss and the gradients' norm, before the
        # optimizer writes anything); the others run in debug mode only. An fp16 GradScaler skips such steps.
        if not self.grad_scaler.is_enabled() and not torch.isfinite(torch.stack([loss.detach().float(),
                                                                                grad_norm.detach().float()])).all():
            where = f"at epoch {self.epoch + 1}, step {self.global_step + 1}"
            if not torch.isfinite(loss):
                raise FloatingPointError(f"non-finite loss {loss.item()} {where}; lower the lr or check the data "
                                         f"({DEBUG_CHECKS_ENV}=1 also checks the model input, logits and targets)")
            raise FloatingPointError(f"non-finite gradient norm {grad_norm.item()} {where} (the loss, {loss.item():.6g}, "
                                     "is finite): the loss function's gradient is not (e.g. a log or square root "
                                     "of 0), or the weights overflowed; the step was not taken")
        self.grad_scaler.step(self.optimizer)
        self.grad_scaler.update()
        self._step_lr = float(self.optimizer.param_groups[0]["lr"])  # the rate this step used (metrics.csv)
        self.scheduler.step()
        self.global_step += 1
        return {"loss": loss.detach(), "grad_norm": grad_norm.detach().float(), **logs}

    def train_one_epoch(self, epoch: int) -> dict[str, float]:
        """Run one epoch (``set_epoch`` of sampler and dataset, reseed, ``steps_per_epoch`` steps).

        Args:
            epoch: 0-based epoch index.

        Returns:
            Means over the epoch's steps, averaged over ranks (``loss``, ``grad_norm``, loss fields).
        """
        self.epoch = epoch
        self.model.train()
        if self.epoch_sampler is not None:
            self.epoch_sampler.set_epoch(epoch)
        if self.epoch_dataset is not None:
            self.epoch_dataset.set_epoch(epoch)
        seed_epoch(self.config.seed, epoch, self.ctx.rank)
        sums: dict[str, Any] = {}
        steps = 0
        bar = tqdm(total=self.steps_per_epoch, desc=f"epoch {epoch + 1}/{self.config.max_epochs}",
                   disable=not (self.is_main and self.config.progress_bar), leave=False, dynamic_ncols=True)
        if self._loader_started and self.train_loader.persistent_workers:
            # A fresh loader iterator draws its workers' base seed from torch's global RNG; a persistent one
            # (torch allows it only with workers) only the first time. Draw it anyway, so that every epoch
            # consumes the global RNG alike and the numbers do not depend on the number of workers or on where
            # a run was resumed.
            torch.empty((), dtype=torch.int64).random_()
        iterator = iter(self.train_loader)
        self._loader_started = True
        with bar:
            for _ in range(self.steps_per_epoch):
                try:
                    batch = next(iterator)
                except StopIteration:
                    log_once(logger, "short-loader", f"the train loader ran out after {steps} of "
                             f"{self.steps_per_epoch} steps; the LR schedule assumes {self.steps_per_epoch}",
                             level=logging.WARNING)
                    break
                metrics = self.train_step(batch)
                for k, v in metrics.items():
                    sums[k] = sums.get(k, 0.0) + v
                steps += 1
                bar.update(1)
                if steps % self.config.log_every_n_steps == 0 or steps == self.steps_per_epoch:
                    bar.set_postfix(loss=f"{float(sums['loss']) / steps:.4f}",
                                    lr=f"{self.optimizer.param_groups[0]['lr']:.2e}")
        if not self.train_loader.persistent_workers:
            # the epoch's workers end here, not in the iterator's finalizer, where a Ctrl-C during their shutdown
            # was printed as "Exception ignored" and lost (training went on)
            getattr(iterator, "_shutdown_workers", lambda: None)()
        del iterator
        self._consumed = steps
        means = {k: float(v) / max(steps, 1) for k, v in sums.items()}
        return all_reduce_mean(means)

    def _checked_tensors(self) -> list[tuple[str, torch.Tensor]]:
        """The model's parameters, and its floating-point buffers that are finite now (a buffer that holds
        ``-inf`` on purpose, such as an additive attention mask, is not the optimizer's doing): what
        :meth:`_check_finite_state` checks after every epoch."""
        model = unwrap_model(self.model)
        buffers = [(n, t) for n, t in model.named_buffers() if t.is_floating_point() and bool(torch.isfinite(t).all())]
        return [*model.named_parameters(), *buffers]

    def _check_finite_state(self, tensors: list[tuple[str, torch.Tensor]]) -> None:
        """Raise ``FloatingPointError`` (on every rank alike) when a tensor of ``tensors`` (:meth:`_checked_tensors`
        at the start of :meth:`fit`) is not finite after an epoch: the step checks the loss and the gradients, not
        what the optimizer wrote (a huge lr, a tiny ``eps``), and such a model must never be saved as ``last.pt``
        or ``best.pt``."""
        finite = not tensors or bool(torch.stack([torch.isfinite(t).all() for _, t in tensors]).all())
        if all_reduce_mean({"finite": float(finite)})["finite"] == 1.0:
            return
        bad = [n for n, t in tensors if not bool(torch.isfinite(t).all())] or ["(on another rank)"]
        raise FloatingPointError(
            f"the model's weights are not finite after epoch {self.epoch + 1} ({len(bad)} tensors, e.g. {bad[0]!r}): "
            f"an optimizer step overflowed them (lower trainer.lr, check trainer.eps); nothing of this epoch was "
            "saved")

    def validate(self) -> dict[str, float]:
        """Run ``validate_fn`` on the unwrapped model (eval mode, no grad) and average over ranks.

        Returns:
            ``{"val_<name>": value}`` (names already starting with ``val_`` are kept).

        Raises:
            TypeError: if ``validate_fn`` does not return a mapping of numbers.
            FloatingPointError: ``validate_fn`` raised it (e.g. non-finite outputs), with the epoch named.
        """
        if self.validate_fn is None:
            return {}
        model = unwrap_model(self.model)
        with eval_mode(model), torch.no_grad():
            try:
                metrics = self.validate_fn(model)
            except FloatingPointError as err:  # e.g. logits that overflow (make_validate_fn): name the epoch
                raise FloatingPointError(f"validation after epoch {self.epoch}: {err}; nothing of this epoch was "
                                         "saved") from err
        if not isinstance(metrics, Mapping):
            raise TypeError(f"validate_fn must return a dict of floats, got {type(metrics).__name__}")
        named = {(k if str(k).startswith("val_") else f"val_{k}"): v for k, v in metrics.items()}
        return all_reduce_mean(named)

    # -- bookkeeping ----------------------------------------------------------------------------------

    def _is_improvement(self, value: float) -> bool:
        """Whether ``value`` (a number, never NaN: :meth:`_update_monitor` sets NaN aside) beats the best."""
        if self.best_metric is None:
            return True
        if self.config.monitor_mode == "max":
            return value > self.best_metric + self.config.min_delta
        return value < self.best_metric - self.config.min_delta

    def _update_monitor(self, row: dict[str, Any], validated: bool) -> bool:
        """Update best metric/early-stopping counter from ``row``; return whether it improved."""
        name = self.config.monitor
        if name not in row:
            if validated:
                raise ValueError(f"monitor metric {name!r} is not among the logged metrics "
                                 f"{sorted(k for k in row if k not in ('epoch', 'global_step'))}; "
                                 "set TrainerConfig.monitor")
            if self.validate_fn is None and name.startswith("val_"):
                log_once(logger, "no-validate-fn", f"no validate_fn given: monitor {name!r} is never computed, "
                         "so best.pt and early stopping are disabled")
            return False
        value = float(row[name])
        if math.isnan(value):  # undefined (e.g. a progression Dice without progressing validation cases)
            if not self._nan_monitor_warned and self.is_main:  # once per run
                logger.warning("monitor %r is NaN at epoch %s: such an epoch neither improves best.pt nor counts "
                               "towards early stopping; if it stays NaN, choose another trainer.monitor", name,
                               row["epoch"])
            self._nan_monitor_warned = True
            return False
        if self._is_improvement(value):
            self.best_metric, self.best_epoch = value, int(row["epoch"])
            self.early_stopping_counter = 0
            return True
        self.early_stopping_counter += 1
        if self.config.patience is not None and self.early_stopping_counter >= self.config.patience:
            self.stopped_early = True
        return False

    def _checkpoint_kwargs(self) -> dict[str, Any]:
        return {
            "model": self.model, "optimizer": self.optimizer, "scheduler": self.scheduler,
            "grad_scaler": self.grad_scaler, "loss_fn": self.loss_fn,
            "sampler": None if self.stateful_sampler is None else _TrainedPosition(self.stateful_sampler,
                                                                                    self._consumed),
            "epoch": self.epoch, "global_step": self.global_step, "best_metric": self.best_metric,
            "early_stopping_counter": self.early_stopping_counter, "model_name": self.model_name,
            "model_kwargs": self.model_kwargs, "trainer_config": self.config.to_dict(),
            "history": self.history,
            "extra": {"best_epoch": self.best_epoch, "stopped_early": self.stopped_early,
                      "world_size": self.ctx.world_size, "cpu_threads": torch.get_num_threads()},
        }

    def save_checkpoint(self, path: str | Path) -> Path:
        """Write the full training state to ``path`` atomically (call it on rank 0 only under DDP)."""
        return save_checkpoint(path, **self._checkpoint_kwargs())

    def load_checkpoint(self, path: str | Path, *, checkpoint: dict[str, Any] | None = None) -> dict[str, Any]:
        """Restore the full training state from ``path`` (weights, optimizer state, scheduler position, scaler,
        sampler, RNG, counters and history).

        ``checkpoint``, the dict :func:`~longiseg.engine.checkpoint.load_checkpoint` returned for ``path``, is
        restored without reading the file again.

        The optimizer keeps its moments and step counts, but its hyper-parameters (``lr``, ``weight_decay``,
        ``betas``, ``eps``) and the LR schedule (peak ``lr``, ``min_lr``, warm-up and total lengths) follow the
        current config, so ``max_epochs`` may be raised or ``lr`` changed on resume (a warning names what
        differs from the checkpoint's config). The schedule is defined in epochs: with another number of steps
        per epoch (batch size, loader or number of processes) the restored position moves to the same point of
        the same epoch, with a warning. A following :meth:`fit` from the same file does not load it again.

        Raises:
            FileNotFoundError: if ``path`` does not exist.
            ValueError: if ``path`` is not a longiseg checkpoint.
        """
        fresh = [dict(fn.__dict__) for fn in self.scheduler.lr_lambdas]
        fresh_groups = [{k: v for k, v in g.items() if k != "params"} for g in self.optimizer.param_groups]
        fresh_base_lrs = list(self.scheduler.base_lrs)
        ckpt = load_checkpoint(path, model=self.model, optimizer=self.optimizer, scheduler=self.scheduler,
                               grad_scaler=self.grad_scaler, sampler=self.stateful_sampler, loss_fn=self.loss_fn,
                               restore_rng=True, map_location=self.device, checkpoint=checkpoint)
        self._loaded_from = (Path(path).resolve(), ckpt.get("rng"))
        self.epoch = int(ckpt["epoch"])
        self.global_step = int(ckpt["global_step"])
        self.best_metric = ckpt.get("best_metric")
        self.early_stopping_counter = int(ckpt.get("early_stopping_counter", 0))
        self.history = [dict(r) for r in ckpt.get("history", [])]
        extra = ckpt.get("extra", {})
        self.best_epoch = extra.get("best_epoch")
        self.stopped_early = bool(extra.get("stopped_early", False))
        old = ckpt.get("trainer_config") or {}
        # the checkpoint's schedule (restored with the scheduler) was max_epochs * steps per epoch long
        saved_total, old_epochs = getattr(self.scheduler.lr_lambdas[0], "total_steps", None), old.get("max_epochs")
        old_steps_per_epoch = (saved_total // old_epochs if isinstance(saved_total, int) and isinstance(old_epochs, int)
                               and old_epochs > 0 and saved_total % old_epochs == 0 else None)
        for fn, state in zip(self.scheduler.lr_lambdas, fresh):
            fn.__dict__.update(state)
        if old_steps_per_epoch is not None and old_steps_per_epoch != self.steps_per_epoch and not self.finished:
            # another batch size or number of processes: the schedule is defined in epochs, so the restored
            # position moves to the same point of the same epoch (counted in the steps the schedule now takes)
            moved = round(self.scheduler.last_epoch * self.steps_per_epoch / old_steps_per_epoch)
            logger.warning("resuming %s with %d steps per epoch (checkpoint had %d: another batch size, loader or "
                           "number of processes): the LR schedule continues at the same point, after %d epoch(s): "
                           "step %d (was %d); the run will differ from an uninterrupted one", path,
                           self.steps_per_epoch, old_steps_per_epoch, self.epoch, moved,
                           self.scheduler.last_epoch)
            self.scheduler.last_epoch = moved
        # optimizer/scheduler.load_state_dict bring back the checkpoint's hyper-parameters: the current config's
        # apply, at the restored position of the schedule (the moments and step counts stay the checkpoint's).
        self.scheduler.base_lrs = fresh_base_lrs
        step = self.scheduler.last_epoch
        for group, hyper, base, fn in zip(self.optimizer.param_groups, fresh_groups, fresh_base_lrs,
                                          self.scheduler.lr_lambdas):
            group.update(hyper)
            group["lr"] = base * fn(step)
        self.scheduler._last_lr = [g["lr"] for g in self.optimizer.param_groups]
        now = self.config.to_dict()  # plain data, as the checkpoint stores it (betas a list)
        differ = [k for k in ("steps_per_epoch", "max_epochs", "seed", "lr", "min_lr", "warmup_epochs", "weight_decay",
                              "betas", "eps", "grad_clip_norm", "amp", "patience", "min_delta", "val_every")
                  if k in old and old[k] != now[k]]
        if self.finished:  # nothing will train: no setting changes the run
            logger.info("%s is a finished run (epoch %d of max_epochs=%d%s): nothing to train%s", path, self.epoch,
                        self.config.max_epochs, ", stopped early" if self.stopped_early else "",
                        f"; {', '.join(differ)} given now differ from its own and are not used" if differ else "")
            differ = []
        for key in differ:
            logger.warning("resuming %s with %s=%r (checkpoint had %r): the run will differ from an uninterrupted "
                           "one", path, key, now[key], old[key])
        threads = extra.get("cpu_threads")
        if (self.device.type == "cpu" and not self.finished and isinstance(threads, int)
                and threads != torch.get_num_threads()):  # CPU kernels split their sums by the thread count
            logger.warning("resuming %s with %d CPU threads (the run had %d): float sums are split otherwise, so the "
                           "run will differ in the last bits from an uninterrupted one (--threads %d keeps it exact)",
                           path, torch.get_num_threads(), threads, threads)
        changed = [k for k in ("monitor", "monitor_mode") if k in old and old[k] != now[k]]
        if changed:
            # the restored best value was measured on another metric (or is better the other way round): comparing
            # the new monitor with it would keep best.pt and early stopping on a number of another kind
            self.best_metric, self.best_epoch, self.early_stopping_counter = None, None, 0
            log = logger.info if self.finished else logger.warning  # a finished run trains no further epoch
            log("resuming %s with %s (checkpoint had %s): best.pt and early stopping start afresh (the next epoch that "
                "logs %s becomes best.pt)", path, ", ".join(f"{k}={now[k]!r}" for k in changed),
                ", ".join(f"{k}={old[k]!r}" for k in changed), now["monitor"])
        return ckpt

    @property
    def finished(self) -> bool:
        """Whether :meth:`fit` would train no further epoch: ``config.max_epochs`` reached, or stopped early."""
        return self.epoch >= self.config.max_epochs or self.stopped_early

    def _use_deterministic_kernels(self) -> Callable[[], None]:
        """Switch on ``config.deterministic``'s kernels for :meth:`fit`; return what restores the caller's settings.

        PyTorch's flags (and cuBLAS's workspace setting) are process-wide: left on after training, every later
        ``torch.empty`` of the caller's process was filled with NaN and non-deterministic CUDA ops warned.
        """
        if not self.config.deterministic:
            return lambda: None
        saved = (torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled(),
                 torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic)
        set_cublas = self.device.type == "cuda" and "CUBLAS_WORKSPACE_CONFIG" not in os.environ
        if set_cublas:
            os.environ["CUBLAS_WORKSPACE_CONFIG"] = ":4096:8"
        torch.backends.cudnn.benchmark = False
        torch.backends.cudnn.deterministic = True
        # warnings for ops without a deterministic kernel, unless the caller asked for errors (kept strict)
        torch.use_deterministic_algorithms(True, warn_only=saved[1] if saved[0] else True)

        def restore() -> None:
            torch.use_deterministic_algorithms(saved[0], warn_only=saved[1])
            torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic = saved[2], saved[3]
            if set_cublas:
                os.environ.pop("CUBLAS_WORKSPACE_CONFIG", None)

        return restore

    # -- fit ------------------------------------------------------------------------------------------

    def fit(self, resume: bool | str | Path = False, *, overwrite: bool = False) -> FitResult:
        """Train until ``config.max_epochs`` or early stopping.

        Args:
            resume: ``False`` starts fresh; ``True`` continues from ``output_dir/last.pt`` when it exists (and
                starts fresh otherwise); a path continues from that checkpoint.
            overwrite: allow a fresh start in an ``output_dir`` that already holds a run's checkpoints: the
                earlier ``last.pt``, ``best.pt`` and TensorBoard logs are removed first, so a ``best.pt`` of the
                earlier run never passes for this run's (when this run's monitor never improves, it has none).

        Returns:
            :class:`FitResult`.

        Raises:
            TypeError: ``resume`` is neither a bool nor a path, ``overwrite`` not a bool (``"no"`` would count as
                true and replace the earlier run).
            FileNotFoundError: if ``resume`` is a path that does not exist.
            FileExistsError: a fresh start (``resume=False``, or ``True`` without ``last.pt``) in an
                ``output_dir`` holding ``last.pt`` or ``best.pt`` without ``overwrite=True``, before any work.
            ValueError: a fresh start of a Trainer that holds a trained state (from :meth:`load_checkpoint` or an
                earlier :meth:`fit`): its counters and history would pass for this run's; ``LONGISEG_DEBUG_CHECKS``
                neither on nor off (:func:`~longiseg.utils.validation.env_flag`), before anything is written.
            FloatingPointError: a non-finite loss or gradient norm (:meth:`train_step`), a weight or buffer that is
                not finite after an epoch, or non-finite outputs in validation: the epoch is not saved, so
                ``last.pt`` and ``best.pt`` stay those of the epoch before.
        """
        resume = _check_resume(resume)
        overwrite = check_bool("overwrite", overwrite)
        debug_checks_enabled()  # a bad LONGISEG_DEBUG_CHECKS fails here, not at the first step after files were written
        cfg = self.config
        last_path = self.output_dir / LAST_CHECKPOINT
        best_path = self.output_dir / BEST_CHECKPOINT
        csv_log = _CsvLog(self.output_dir / METRICS_CSV)
        ckpt_path: Path | None = None
        if resume is True:
            ckpt_path = last_path if last_path.is_file() else None
            if ckpt_path is None and self.is_main:
                logger.info("resume=True but %s does not exist: starting a fresh run", last_path)
        elif resume not in (False, None):
            ckpt_path = Path(resume)
            if not ckpt_path.is_file():
                raise FileNotFoundError(f"resume checkpoint not found: {ckpt_path}")
        if ckpt_path is None and (self.epoch or self.global_step):  # a "fresh" run would go on from that state
            if self._loaded_from is not None:
                held = f"the training state of {self._loaded_from[0]} (epoch {self.epoch}, from load_checkpoint)"
                hint = f"continue it with fit(resume={str(self._loaded_from[0])!r})"
            else:
                held = f"the state of an earlier fit (epoch {self.epoch}, step {self.global_step})"
                hint = ("continue it with fit(resume=True)" if last_path.is_file() else
                        "its output_dir holds no last.pt to continue from")
            raise ValueError(f"this Trainer holds {held}, not a fresh start: {hint}, or start afresh with a new "
                             "Trainer and a new model (to start from a checkpoint's weights only, load them into the "
                             "model with load_model_weights)")
        if ckpt_path is None and not overwrite:  # also resume=True without last.pt next to an old best.pt
            check_fresh_start(self.output_dir, resume=resume is True)
        if ckpt_path is not None:
            if self._loaded_from is not None and self._loaded_from[0] == ckpt_path.resolve():
                # load_checkpoint restored it already (longiseg train checks it before writing its records):
                # only the RNG states again, in case anything drew from them since
                if self._loaded_from[1] is not None:
                    restore_rng_state(self._loaded_from[1])
            else:
                self.load_checkpoint(ckpt_path)
            if self.is_main:
                logger.info("resumed from %s at epoch %d (step %d)", ckpt_path, self.epoch, self.global_step)
        self._loaded_from = None
        if self.is_main:
            self.output_dir.mkdir(parents=True, exist_ok=True)
            if ckpt_path is None:  # a fresh start: nothing of an earlier run may pass for this one's
                check_replaceable(self.output_dir / TENSORBOARD_DIR)  # read-only events were silently kept
                stale = [p for p in (last_path, best_path) if p.exists()]
                if stale:
                    logger.warning("starting a fresh run in %s: removing the earlier run's %s", self.output_dir,
                                   ", ".join(p.name for p in stale))
                for p in stale:
                    p.unlink()
                shutil.rmtree(self.output_dir / TENSORBOARD_DIR, ignore_errors=True)
            if not (ckpt_path is not None and self.finished):  # a finished run's record stays that of its training
                cfg.save(self.output_dir / CONFIG_FILE)
            csv_log.rewrite(self.history)
        barrier()
        writer = _make_tensorboard_writer(self.output_dir / TENSORBOARD_DIR) if (
            self.is_main and cfg.tensorboard) else None
        start = self.epoch
        restore_kernels = self._use_deterministic_kernels()
        checked = self._checked_tensors()
        try:
            for epoch in range(start, cfg.max_epochs):
                if self.stopped_early:
                    break
                t0 = time.perf_counter()
                train = self.train_one_epoch(epoch)
                self._check_finite_state(checked)  # before anything of this epoch is validated or saved
                self.epoch = epoch + 1
                # the rate of the epoch's last step (the scheduler has moved on to the next step's)
                lr = self._step_lr if self._step_lr is not None else self.optimizer.param_groups[0]["lr"]
                row: dict[str, Any] = {"epoch": self.epoch, "global_step": self.global_step, "lr": lr}
                row.update({f"train_{k}": v for k, v in train.items()})
                validated = self.validate_fn is not None and (self.epoch % cfg.val_every == 0
                                                              or self.epoch == cfg.max_epochs)
                if validated:
                    row.update(self.validate())
                try:
                    improved = self._update_monitor(row, validated)
                except ValueError:  # the monitor is not among the validated metrics: keep the epoch (and its row,
                    row["time_s"] = round(time.perf_counter() - t0, 3)  # which the resume's metrics.csv is
                    self.history.append(row)  # rewritten from) for a resume with another monitor
                    if self.is_main:
                        self.save_checkpoint(last_path)
                        csv_log.append(row, self.history)
                    raise
                row["time_s"] = round(time.perf_counter() - t0, 3)
                self.history.append(row)
                if self.is_main:
                    if improved:
                        self.save_checkpoint(best_path)
                    self.save_checkpoint(last_path)
                    csv_log.append(row, self.history)
                    if writer is not None:
                        for k, v in row.items():
                            if k not in ("epoch", "global_step"):
                                writer.add_scalar(k, v, self.epoch)
                        writer.flush()
                    logger.info("epoch %d/%d: %s", self.epoch, cfg.max_epochs,
                                ", ".join(f"{k}={v:.4g}" for k, v in row.items()
                                          if k not in ("epoch", "global_step")))
                barrier()
                for cb in self.callbacks:
                    cb(self, row)
                if self.stopped_early and self.is_main:
                    best = "none" if self.best_metric is None else f"{self.best_metric:.4g} at epoch {self.best_epoch}"
                    logger.info("early stopping after epoch %d: %s did not improve for %d validations (best %s)",
                                self.epoch, cfg.monitor, self.early_stopping_counter, best)
        finally:
            restore_kernels()
            if writer is not None:
                writer.close()
        return FitResult(history=list(self.history), epochs_completed=self.epoch, global_step=self.global_step,
                         best_metric=self.best_metric, best_epoch=self.best_epoch,
                         stopped_early=self.stopped_early,
                         last_checkpoint=last_path if last_path.exists() or ckpt_path is None else ckpt_path,
                         best_checkpoint=best_path if best_path.exists() else None,
                         monitor=self.config.monitor)
