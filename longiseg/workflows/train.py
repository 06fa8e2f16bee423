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
import os
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from longiseg.data.case import LongitudinalCase
from longiseg.data.claims import claim_case, claim_holder, release_claim
from longiseg.data.cohort import check_same_timepoints, find_cases
from longiseg.data.dataset import SliceDataset, VolumePatchDataset
from longiseg.data.loading import case_voxel_size, check_case_headers, check_case_voxels, load_case
from longiseg.data.preprocessing import preprocess_case
from longiseg.data.samplers import BalancedBatchSampler, positive_slots
from longiseg.data.sources import CaseSource
from longiseg.data.split import split_by_patient
from longiseg.data.transforms import LongitudinalAugment
from longiseg.engine.checkpoint import load_checkpoint
from longiseg.engine.config import save_config
from longiseg.engine.distributed import init_distributed
from longiseg.engine.seeding import seed_everything
from longiseg.engine.trainer import (
    BEST_CHECKPOINT,
    LAST_CHECKPOINT,
    TENSORBOARD_DIR,
    FitResult,
    Trainer,
    check_fresh_start,
)
from longiseg.inferers.settings import same_window
from longiseg.losses.dice_focal import PerSampleDiceFocalLoss
from longiseg.losses.imbalance import ImbalanceAwareLoss
from longiseg.metrics.voxel import dice
from longiseg.networks.inputs import check_spatial_size
from longiseg.registry import build_model, model_info
from longiseg.ssm import check_scan_backend
from longiseg.utils.io import atomic_write_json, check_input_folder, check_replaceable, check_separate_folders
from longiseg.utils.logging import get_logger
from longiseg.utils.validation import MAX_SEED, check_bool, check_path
from longiseg.workflows.config import ExperimentConfig

__all__ = ["build_loss", "build_datasets", "claim_run_folder", "make_validate_fn", "read_split", "run_training",
           "check_monitor", "VALIDATION_METRICS", "SPLIT_FILE"]

logger = get_logger(__name__)

#: The run folder's record of which cases trained and which validated the model (``longiseg tune`` reads it).
SPLIT_FILE = "split.json"
#: What `longiseg tune` writes into the run folder (a fresh start removes an earlier run's).
TUNING_FILE = "tuning.json"
#: The name of a training run's claim on its folder (the hidden file ``OUTPUT/.run.claim`` while it writes there).
RUN_CLAIM = "run"


def build_loss(cfg: ExperimentConfig) -> ImbalanceAwareLoss:
    """The imbalance-aware Dice-Focal loss of ``cfg.loss``."""
    lc = cfg.loss
    per_sample = PerSampleDiceFocalLoss(lambda_dice=lc.lambda_dice, lambda_focal=lc.lambda_focal, gamma=lc.gamma)
    return ImbalanceAwareLoss(per_sample, strategy=lc.strategy, empty_ratio=lc.empty_ratio,
                              min_empty=lc.min_empty, seed=lc.seed, keep_hard_negatives=lc.keep_hard_negatives,
                              progression_outside_baseline=lc.progression_outside_baseline)


def _preparation(cfg: ExperimentConfig) -> Callable[[LongitudinalCase], LongitudinalCase]:
    """How training prepares a read case (z-scores, the crop to the foreground); a functools.partial, picklable
    for DataLoader workers."""
    return functools.partial(preprocess_case, crop=cfg.data.crop_to_foreground)


def build_datasets(cfg: ExperimentConfig, dim: str, train_cases: Sequence, val_cases: Sequence
                   ) -> tuple[SliceDataset | VolumePatchDataset, SliceDataset | VolumePatchDataset | None]:
    """Training and validation datasets for a 2.5D (slices) or 3D (patches) model.

    Validation samples use no augmentation, no hard-negative share (``data.persisting_share`` applies to the
    training samples only) and a fixed seed, so the same samples are scored every epoch and in every run.
    """
    dc = cfg.data
    common = {"lesion_weight": dc.lesion_weight, "progression_share": dc.progression_share,
              "preprocess": _preparation(cfg),
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
    val_seed = (dc.seed + 1) % (MAX_SEED + 1)  # the next seed (data.seed may be the largest)
    val = make(val_cases, samples_per_epoch=dc.val_samples, transform=None, seed=val_seed) if val_cases else None
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

    The returned function raises ``FloatingPointError`` when the model's outputs are not finite.
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
            if not all(bool(torch.isfinite(t).all()) for t in (out.baseline, out.progression)):
                # NaN > 0 is False: such a model would score as one that predicts nothing, and be kept as best
                raise FloatingPointError("the model's outputs are not finite on the validation samples (the weights "
                                         "are, but the activations overflow): lower trainer.lr")
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


def read_split(path: str | os.PathLike) -> dict:
    """A run's ``split.json`` (:data:`SPLIT_FILE`): ``data_root`` (a folder), ``train`` and ``validation`` (case
    ids, ``[]`` when absent) and an optional ``val_root``; read by ``longiseg tune`` and by a resume.

    Args:
        path: the file (a ``str`` or path).

    Raises:
        FileNotFoundError: the file is missing.
        ValueError: naming the file: not JSON, or not an object of those fields.
    """
    path = check_path("path", path)  # a str path failed with AttributeError
    try:
        split = json.loads(path.read_text(encoding="utf-8"))
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
    if [c.case_id for c in train_cases] != list(recorded["train"]):  # the same cases in another order
        logger.warning("resuming %s: its training cases were listed in another order (%s records them in the "
                       "order of the manifest's rows, as longiseg < 0.3.19 did; cases now follow their ids), so the "
                       "samples of the rest of the run come from other cases than an uninterrupted run's: the "
                       "result will differ from it", split_file.parent, split_file.name)


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"


def _training_voxel_size(cases: Sequence[CaseSource]) -> list[float]:
    """The median voxel size of ``cases`` in mm, each case's sorted (smallest first) so that the array axes'
    orientation does not matter; from the headers of their first images (every file of a case lies on that grid).
    Recorded in the spec for :func:`~longiseg.inferers.settings.voxel_size_mismatch`."""
    sizes = [sorted(case_voxel_size(c)) for c in cases]
    return [round(float(v), 4) for v in np.median(np.asarray(sizes), axis=0)]


def _check_model_fits_cases(model: nn.Module, kwargs: dict, cases: Sequence) -> None:
    """Refuse a model built for another number of modalities ``C`` or timepoints ``T`` than the cases have."""
    spec = model.spec
    c, t = len(cases[0].modalities), cases[0].num_timepoints
    if spec.in_channels is not None and spec.in_channels != c:
        raise ValueError(f"model.kwargs.in_channels={kwargs.get('in_channels')} but the cases have {c} modalities "
                         f"{list(cases[0].modalities)}: leave model.kwargs.in_channels out (it defaults to the "
                         f"number of modalities) or set it to {c}")
    if (spec.num_timepoints is not None and spec.num_timepoints != t) or kwargs.get("num_timepoints", t) != t:
        # also for a model that takes any T: the setting contradicts the data
        raise ValueError(f"model.kwargs.num_timepoints={kwargs.get('num_timepoints')} but the cases have {t} "
                         "timepoints: leave model.kwargs.num_timepoints out (it defaults to the cases' number of "
                         f"timepoints) or set it to {t}")


def _check_training_targets(model: nn.Module, cfg: ExperimentConfig, train_cases: Sequence) -> None:
    """Refuse, before the run's records, what a model trained on its own ``training_targets`` (full lesion masks,
    built from the baseline mask: ``dynunet_cs``) cannot train on (the trainer would refuse it at the first step)."""
    if not hasattr(model, "training_targets"):
        return
    if cfg.loss.progression_outside_baseline:
        raise ValueError(f"loss.progression_outside_baseline=true scores the progression head as a new-lesion map, but "
                         f"{cfg.model.name!r} is trained on full lesion masks per timepoint: set it to false")
    unannotated = [c.case_id for c in train_cases if not c.baseline_annotated]
    if unannotated:
        raise ValueError(f"{cfg.model.name!r} is trained on full lesion masks per timepoint, built from the baseline "
                         f"mask, but {len(unannotated)} training case(s) have no baseline annotation (e.g. "
                         f"{', '.join(unannotated[:3])}): train it on cases with baseline masks")


def _check_both_classes(cfg: ExperimentConfig, train_ds: SliceDataset | VolumePatchDataset,
                        val_ds: SliceDataset | VolumePatchDataset | None) -> None:
    """Refuse a training split without progressing or without stable patients (every balanced batch holds both),
    or samples (``data.samples_per_epoch``) that reach no case of a class, in the cohort's terms."""
    flags = train_ds.case_progression_flags
    val_flags = val_ds.case_progression_flags if val_ds is not None else []
    n_prog, n_val_prog = sum(flags), sum(val_flags)
    counts = {"progressing": (n_prog, n_val_prog), "stable": (len(flags) - n_prog, len(val_flags) - n_val_prog)}
    need = (f"every training batch holds progressing and stable samples (data.positive_fraction="
            f"{cfg.data.positive_fraction} of batch size {cfg.trainer.batch_size} progressing)")
    for kind, (n_train, n_val) in counts.items():
        if n_train:
            continue
        if n_val:
            where = "data.val_root" if cfg.data.val_root else f"the validation split (data.val_fraction={cfg.data.val_fraction})"
            fix = ("move some into data.root" if cfg.data.val_root else
                   "lower data.val_fraction (0 trains on every patient), or change data.seed for another split")
            raise ValueError(f"the training split has no {kind} patient ({_count(len(flags), 'training case')}; {n_val} "
                             f"{kind} case(s) in {where}): {need}; {fix}")
        raise ValueError(f"data.root {cfg.data.root} has no {kind} case ({len(flags)} training, {len(val_flags)} "
                         f"validation cases): {need}; add {kind} patients to the cohort")
    sample_flags = train_ds.progression_flags
    for kind, value in (("progressing", True), ("stable", False)):
        if value not in sample_flags:
            raise ValueError(f"data.samples_per_epoch={train_ds.samples_per_epoch} samples reach no {kind} case "
                             f"(sample i has the class of training case i % {train_ds.num_cases}, and the first "
                             f"{train_ds.samples_per_epoch} are all {'stable' if value else 'progressing'}): {need}; "
                             f"raise data.samples_per_epoch to at least {train_ds.num_cases}")


def _check_batch_settings(cfg: ExperimentConfig, samples_per_epoch: int | None = None, world_size: int = 1) -> None:
    """Refuse, in the experiment's terms, a batch layout the balanced sampler cannot draw or that would silently
    shorten ``trainer.steps_per_epoch``.

    Args:
        cfg: the experiment.
        samples_per_epoch: the training samples per epoch (``data.samples_per_epoch`` or its default); ``None``
            checks the batch size and positive fraction only (before the data are read).
        world_size: processes; each draws ``trainer.batch_size`` samples per step.

    Raises:
        ValueError: a batch without a progressing or a stable slot (``trainer.batch_size < 2``), fewer samples
            per epoch than one batch per process, or ``trainer.steps_per_epoch`` above the batches per epoch.
    """
    tc, dc = cfg.trainer, cfg.data
    num_positive = positive_slots(tc.batch_size, dc.positive_fraction)
    if not 1 <= num_positive <= tc.batch_size - 1:
        raise ValueError(f"trainer.batch_size={tc.batch_size} with data.positive_fraction={dc.positive_fraction} "
                         f"gives {num_positive} progressing and {tc.batch_size - num_positive} stable samples per "
                         "batch: every training batch holds both (the balanced sampler); use trainer.batch_size >= 2 "
                         "and a data.positive_fraction that leaves each class a slot")
    if samples_per_epoch is None:
        return
    per_step = tc.batch_size * world_size
    batches = samples_per_epoch // per_step
    procs = f" x {world_size} processes" if world_size > 1 else ""
    if batches < 1:
        raise ValueError(f"data.samples_per_epoch={samples_per_epoch} is smaller than one batch "
                         f"(trainer.batch_size={tc.batch_size}{procs}): an epoch would hold no batch; raise "
                         f"data.samples_per_epoch to at least {per_step} or lower trainer.batch_size")
    if tc.steps_per_epoch is not None and tc.steps_per_epoch > batches:
        raise ValueError(f"trainer.steps_per_epoch={tc.steps_per_epoch} but an epoch holds {batches} batches "
                         f"(data.samples_per_epoch={samples_per_epoch} // trainer.batch_size={tc.batch_size}{procs}): "
                         f"it would run {batches} steps, not {tc.steps_per_epoch}; for more steps per epoch raise "
                         f"data.samples_per_epoch to {tc.steps_per_epoch * per_step}, or leave trainer.steps_per_epoch "
                         "out (null)")


#: The experiment settings behind the sampler layout a checkpoint records (for resume messages).
_SAMPLER_SETTINGS = {"batch_size": "trainer.batch_size", "num_cases": "data.samples_per_epoch",
                     "num_replicas": "processes (torchrun --nproc_per_node)",
                     "num_positive": "progressing samples per batch (data.positive_fraction)",
                     "num_batches": "batches per epoch", "distinct_repeats": "the sampler's distinct_repeats"}


def _check_resumed_sampler(last: Path, saved: dict | None, sampler: BalancedBatchSampler) -> None:
    """Refuse, naming the settings, to resume with another batch layout than the checkpoint's sampler state."""
    if not isinstance(saved, dict):
        return
    differ = sampler.layout_changes(saved)
    if differ:
        changes = "; ".join(f"{_SAMPLER_SETTINGS.get(k, k)} {then} then, {now} now" for k, (then, now) in differ.items())
        raise ValueError(f"resuming {last.parent} with other batch settings than it was trained with ({changes}): "
                         "resume with the run's trainer.batch_size, data.samples_per_epoch and "
                         "data.positive_fraction, or start afresh with --overwrite")


def _check_resumed_model(last: Path, saved_kwargs: dict | None, kwargs: dict) -> None:
    """Refuse to resume a model built for other data (``in_channels``/``num_timepoints``) than the cases have."""
    saved_kwargs = saved_kwargs or {}
    for key, what in (("in_channels", "modalities"), ("num_timepoints", "timepoints")):
        if key in saved_kwargs and key in kwargs and saved_kwargs[key] != kwargs[key]:
            raise ValueError(f"resuming {last.parent}, whose model was built for {saved_kwargs[key]} {what} "
                             f"(model.kwargs.{key}), with cases of {kwargs[key]}: resume with the run's data "
                             "(data.root, data.modalities) or start afresh with --overwrite")


def _resume_modalities(last: Path, spec: dict | None, configured: list[str] | None) -> list[str] | None:
    """The channel order a resumed run loads: the one its checkpoint was trained on (``spec.modalities``).

    Raises:
        ValueError: ``data.modalities`` is set to another order.
    """
    trained = list((spec or {}).get("modalities") or [])
    if not trained:
        return configured
    if configured is not None and [m.lower() for m in configured] != trained:
        raise ValueError(f"resuming {last.parent}, trained on the modalities {trained} (in this channel order), with "
                         f"data.modalities={list(configured)}: resume with data.modalities={trained} (or leave it "
                         "out) or start afresh with --overwrite")
    return trained


def _warn_changed_settings(recorded: Path, cfg: ExperimentConfig) -> None:
    """Warn about every data and loss setting that differs from the run's ``experiment.yaml`` (the trainer warns
    about its own settings; the split, batch, model and modalities are refused when they change). The folders
    are left out: the split says whether the cases changed."""
    try:
        old = ExperimentConfig.from_file(recorded)
    except (OSError, ValueError) as err:  # an edited or missing record: nothing to compare with
        logger.debug("resuming: %s not compared (%s)", recorded, err)
        return
    for section in ("data", "loss"):
        before, now = getattr(old, section).to_dict(), getattr(cfg, section).to_dict()
        for key in sorted(now):
            # modalities: a resume reads the checkpoint's channel order (a run recorded with none, the manifest's
            # order, has it filled in) and other modalities are refused before this
            same = (same_window(before[key], now[key]) if key == "crop_size"
                    else before.get(key) == now[key])  # crop 32 is crop [32, 32]
            if key not in ("root", "val_root", "modalities") and not same:
                logger.warning("resuming %s with %s.%s=%r (the run had %r): the run will differ from an "
                               "uninterrupted one", recorded.parent, section, key, now[key], before.get(key))


def run_training(cfg: ExperimentConfig, *, resume: bool = False, overwrite: bool = False,
                 progress: bool | None = None) -> FitResult:
    """Train ``cfg.model`` on ``cfg.data`` and write checkpoints, logs and the config to ``cfg.trainer.output_dir``.

    Works unchanged under ``torchrun`` (each rank draws a disjoint share of every epoch's batches; rank 0
    writes files). Python, NumPy and torch are seeded from ``cfg.trainer.seed`` before the model is built,
    so two runs of one config give bit-identical checkpoints on the CPU.

    Every case (training and validation) must have the same modalities in the same channel order and the same
    number of timepoints. The validation cases of ``data.val_root`` are read in the training cases' channel
    order, and a resumed run reads its cases in the order its checkpoint was trained on (``spec.modalities``),
    whatever a manifest says now.

    Args:
        cfg: the experiment configuration.
        resume: continue from ``output_dir/last.pt`` if it exists.
        overwrite: start afresh even if ``output_dir`` already holds a run.
        progress: override ``cfg.trainer.progress_bar``.

    Returns:
        The trainer's :class:`~longiseg.engine.trainer.FitResult`.

    Raises:
        TypeError: ``resume`` or ``overwrite`` is not a bool (``"no"`` would count as true).
        FileNotFoundError: if ``cfg.data.root`` is missing or holds no case.
        FileExistsError: ``output_dir`` holds a run and neither ``resume`` nor ``overwrite`` is set, or
            ``resume`` is set but the run has ``best.pt`` and no ``last.pt``.
        PermissionError: a fresh start (not a resume) in an ``output_dir`` whose ``tensorboard/`` of an earlier
            run cannot be removed (read-only), before any work.
        ValueError: for an unknown model name (naming the closest ones), unknown model keyword arguments, a
            ``trainer.monitor`` no epoch logs, cases with other modalities or timepoints than the others, a model
            built for other ``C``/``T``, a training split without progressing or stable patients, an invalid
            split, or a resume with other data, modalities or batch settings than the run's. All of these before
            any training and before the run folder's records (``experiment.yaml``, ``split.json``,
            ``tuning.json``) are touched.
    """
    resume, overwrite = check_bool("resume", resume), check_bool("overwrite", overwrite)
    if not cfg.data.root:
        raise FileNotFoundError("data.root is empty: set it to a cohort folder in the longiseg layout")
    root = check_input_folder(cfg.data.root, "data.root")
    check_separate_folders(cfg.trainer.output_dir, "trainer.output_dir",
                           {"data.root": root, "data.val_root": cfg.data.val_root or None})
    info = model_info(cfg.model.name)
    out = Path(cfg.trainer.output_dir)
    last = out / LAST_CHECKPOINT
    resuming = resume and last.is_file()
    if not resuming and not overwrite:  # before any work; fit checks again for direct users
        check_fresh_start(out, resume=resume)
    if not resuming:  # an earlier run's events that could not be removed would pass for this run's
        check_replaceable(out / TENSORBOARD_DIR)
    check_monitor(cfg.trainer.monitor)
    _check_batch_settings(cfg)
    if progress is not None:
        cfg = dataclasses.replace(cfg, trainer=dataclasses.replace(cfg.trainer, progress_bar=progress))
    saved = load_checkpoint(last) if resuming else {}  # read once: checked here, restored by the trainer below
    modalities = _resume_modalities(last, saved.get("spec"), cfg.data.modalities) if resuming else cfg.data.modalities
    if modalities != cfg.data.modalities:  # recorded in experiment.yaml as the channel order the run uses
        logger.info("resuming with the modalities %s the checkpoint was trained on", modalities)
        cfg = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, modalities=modalities))
    cases = find_cases(root, modalities=modalities)
    if cfg.data.val_root:  # read in the training cases' channel order, whatever its own manifest says
        val_modalities = modalities if modalities is not None else list(cases[0].modalities)
        train_cases, val_cases = cases, find_cases(Path(cfg.data.val_root), modalities=val_modalities)
        shared = sorted({c.patient_id for c in train_cases} & {c.patient_id for c in val_cases})
        if shared:  # best.pt, early stopping and tune's thresholds would be chosen on training patients
            logger.warning("data.val_root %s holds %d patient(s) of the training cases (e.g. %s): validation scores "
                           "them on what the model was trained on", cfg.data.val_root, len(shared), shared[:3])
    else:
        train_cases, val_cases = split_by_patient(cases, cfg.data.val_fraction, cfg.data.seed)
    if resuming:
        _check_resumed_split(out / SPLIT_FILE, train_cases, val_cases)
    for case in [*train_cases, *val_cases]:  # every file and grid from its header: before the run's records
        check_case_headers(case)
    # a batch stacks samples of one T (modalities agree already: find_cases refuses a cohort whose cases differ,
    # and the validation cases are read in the training cases' channel order)
    check_same_timepoints([*train_cases, *val_cases], remedy="train on cases with one number of timepoints (e.g. a "
                          "cohort folder or a manifest per T)")
    if 0 < len(val_cases) and cfg.data.val_samples < len(val_cases):
        logger.warning("data.val_samples=%d is smaller than the %d validation cases: %d of them are never scored",
                       cfg.data.val_samples, len(val_cases), len(val_cases) - cfg.data.val_samples)
    kwargs = dict(cfg.model.kwargs)
    kwargs.setdefault("in_channels", len(cases[0].modalities))
    kwargs.setdefault("num_timepoints", len(cases[0].image_files))
    if resuming:
        _check_resumed_model(last, saved.get("model_kwargs"), kwargs)
    seed_everything(cfg.trainer.seed)  # the model's initial weights come from this seed
    try:
        model = build_model(cfg.model.name, **kwargs)
    except TypeError as err:
        raise ValueError(f"model.kwargs {kwargs} do not fit {cfg.model.name!r}: {err}") from None
    except ValueError as err:  # a value the model refuses, named as the model's argument ("config key 'depths'")
        named = ValueError(f"model.kwargs of {cfg.model.name!r}: {err}")
        named.__notes__ = list(getattr(err, "__notes__", []))  # build_model's "(raised by the factory ...)"
        raise named from None
    _check_model_fits_cases(model, kwargs, cases)
    _check_training_targets(model, cfg, train_cases)
    # Sizes the model cannot take fail here, before the run's records are written, not at the first step.
    check_spatial_size(model, cfg.data.crop_size, "data.crop_size")
    check_spatial_size(model, cfg.inference.patch_size, "inference.patch_size")
    # What using the model needs travels with it (and with every checkpoint): see longiseg.spec.ModelSpec.
    model.spec = model.spec.replace(
        modalities=tuple(cases[0].modalities), crop_size=cfg.data.crop_size,
        preprocessing={"normalization": "zscore", "crop_to_foreground": cfg.data.crop_to_foreground,
                       "voxel_size_mm": _training_voxel_size(train_cases)},
        inference=cfg.inference.to_dict())
    logger.info("training %s (%s, %.2fM parameters) on %d cases, validating on %d", cfg.model.name, info.dim,
                sum(p.numel() for p in model.parameters()) / 1e6, len(train_cases), len(val_cases))

    ctx = init_distributed(device=cfg.trainer.device)
    check_scan_backend(model, ctx.device)
    # what only the voxels tell (NaN intensities, a mask of 0/255) fails here, after the cheap checks above and
    # before the run's records, not in the middle of epoch 1 (one progress bar under torchrun: rank 0's)
    # (and what only the preparation tells: an all-zero image it cannot normalise, found in epoch 1 before)
    prepare = _preparation(cfg)
    check_case_voxels([*train_cases, *val_cases], progress=cfg.trainer.progress_bar and ctx.is_main,
                      reader=lambda source: prepare(load_case(source)))
    train_ds, val_ds = build_datasets(cfg, info.dim, train_cases, val_cases)
    _check_both_classes(cfg, train_ds, val_ds)
    _check_batch_settings(cfg, train_ds.samples_per_epoch, ctx.world_size)
    # Repeats of an index within an epoch (the minority class) are drawn as virtual indices: fresh crops.
    sampler = BalancedBatchSampler(train_ds.progression_flags, cfg.trainer.batch_size,
                                   positive_fraction=cfg.data.positive_fraction, num_replicas=ctx.world_size,
                                   rank=ctx.rank, seed=cfg.trainer.seed, distinct_repeats=True)
    if resuming:
        _check_resumed_sampler(last, saved.get("sampler"), sampler)
    validate_fn = make_validate_fn(val_ds) if val_ds is not None else None
    tcfg = cfg.trainer
    if validate_fn is None and tcfg.monitor != "train_loss":
        logger.info("no validation cases: monitoring train_loss instead of %s", tcfg.monitor)
        tcfg = dataclasses.replace(tcfg, monitor="train_loss", monitor_mode="min")
    trainer = Trainer(model, train_ds, tcfg, loss_fn=build_loss(cfg), validate_fn=validate_fn,
                      batch_sampler=sampler, model_name=cfg.model.name, model_kwargs=kwargs,
                      dist_context=ctx)
    if resuming:  # restored from the dict read above, before the run's records are rewritten; fit continues
        trainer.load_checkpoint(last, checkpoint=saved)  # weights that do not fit the model are refused here
        restored = getattr(trainer.loss_fn, "seed", cfg.loss.seed)
        if restored is not None and restored != cfg.loss.seed:  # the run goes on with the stream it had (warned)
            cfg = dataclasses.replace(cfg, loss=dataclasses.replace(cfg.loss, seed=restored))
    del saved
    trains = not resuming or not trainer.finished
    if resuming and trains and ctx.is_main:
        _warn_changed_settings(out / "experiment.yaml", cfg)
    claim = claim_run_folder(out) if ctx.is_main else None  # no second train writes into this run meanwhile
    try:
        return _write_records_and_fit(cfg, trainer, ctx.is_main, out, root, train_cases, val_cases, resuming, trains,
                                      resume, overwrite)
    finally:
        if claim is not None:
            release_claim(*claim)


def claim_run_folder(out: Path, command: str = "longiseg train") -> tuple[Path, dict]:
    """Claim the run folder ``out`` for this process (a hidden claim file inside it,
    :func:`~longiseg.data.claims.claim_case`): ``longiseg train`` holds it while it trains, ``longiseg tune``
    while it reads and rewrites a checkpoint, so that neither changes what the other reads. Release it with
    :func:`~longiseg.data.claims.release_claim`.

    Args:
        out: the run folder.
        command: the claiming command (``"longiseg train"`` or ``"longiseg tune"``), named in the other's message.

    Raises:
        FileExistsError: another ``longiseg train`` or ``longiseg tune`` (a live process) holds ``out``, named.
    """
    path, claim = claim_case(out, RUN_CLAIM, command)
    if path is None:
        holder = claim.get("command") or "longiseg train or tune"
        raise FileExistsError(f"{out} is being written by another {holder} ({claim_holder(claim)}); wait for it to "
                              "finish, or choose another run folder")
    return path, claim


def _with_absolute_folders(cfg: ExperimentConfig) -> ExperimentConfig:
    """``cfg`` with its folders (``data.root``, ``data.val_root``, ``trainer.output_dir``) absolute, as
    ``split.json`` records them: ``longiseg train RUN/experiment.yaml`` then repeats the run from any folder
    (relative ones were those of the folder the run was started in)."""
    def absolute(path: str | None) -> str | None:
        return str(Path(path).resolve()) if path else path

    return dataclasses.replace(
        cfg, data=dataclasses.replace(cfg.data, root=absolute(cfg.data.root), val_root=absolute(cfg.data.val_root)),
        trainer=dataclasses.replace(cfg.trainer, output_dir=absolute(cfg.trainer.output_dir)))


def _write_records_and_fit(cfg: ExperimentConfig, trainer: Trainer, is_main: bool, out: Path, root: Path,
                           train_cases: Sequence, val_cases: Sequence, resuming: bool, trains: bool,
                           resume: bool, overwrite: bool) -> FitResult:
    """Write the run's records (``experiment.yaml``, ``split.json``; ``tuning.json`` kept or removed) and train.

    A resume of a finished run trains nothing and keeps its records (settings given now are not used).
    """
    if is_main and trains:
        save_config(_with_absolute_folders(cfg), out / "experiment.yaml")
        atomic_write_json(out / SPLIT_FILE, {
            # absolute: tune and predict may run from another working directory
            "data_root": str(root.resolve()),
            "val_root": str(Path(cfg.data.val_root).resolve()) if cfg.data.val_root else cfg.data.val_root,
            "seed": cfg.data.seed,
            "train": [c.case_id for c in train_cases], "validation": [c.case_id for c in val_cases]})
    tuning = out / TUNING_FILE
    best = out / BEST_CHECKPOINT
    kept = None  # a resume that trains further replaces best.pt only when validation improves
    if is_main and trains and tuning.exists():
        if resuming and _tuned_checkpoint(tuning) == BEST_CHECKPOINT and best.is_file():
            kept = _identity(best)
        else:  # the checkpoint it describes is about to be replaced
            _remove_tuning(tuning)
    try:
        return trainer.fit(resume=resume, overwrite=overwrite)
    finally:  # also when interrupted: a tuning record never outlives the checkpoint it describes
        if kept is not None and _identity(best) != kept and tuning.exists():
            _remove_tuning(tuning)


def _tuned_checkpoint(tuning: Path) -> str | None:
    """The checkpoint file name a ``tuning.json`` describes (``None`` when the record cannot be read)."""
    try:
        record = json.loads(tuning.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    name = record.get("checkpoint") if isinstance(record, dict) else None
    return name if isinstance(name, str) else None


def _identity(path: Path) -> tuple[int, int, int] | None:
    """What changes when a file is replaced (checkpoints are written atomically, so the inode changes)."""
    try:
        st = path.stat()
    except OSError:
        return None
    return st.st_ino, st.st_size, st.st_mtime_ns


def _remove_tuning(tuning: Path) -> None:
    logger.info("removing %s: it describes a checkpoint this run replaces (run longiseg tune again)", tuning)
    tuning.unlink(missing_ok=True)
