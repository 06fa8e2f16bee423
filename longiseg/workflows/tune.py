"""``longiseg tune``: choose the post-processing of a trained run on the validation patients it held out.

The way nnU-Net determines its post-processing: the trainer's validation patients (recorded in the run
folder's ``split.json``, never test data) are predicted with the checkpoint, and the progression threshold
that maximises the objective on them (by default their progression lesion F1 together with stable patients
left clear; :func:`~longiseg.tuning.select_threshold`) is written into the
checkpoint's spec (``spec.inference["progression_threshold"]``, with ``spec.tuning`` saying how it was chosen;
the baseline head keeps ``spec.inference["threshold"]``) and into
``RUN/tuning.json``. ``longiseg predict`` then uses it without being told.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from tqdm.auto import tqdm

from longiseg.data.claims import release_claim
from longiseg.data.cohort import find_cases
from longiseg.engine.checkpoint import check_writable, load_model, update_spec
from longiseg.inferers.predict import check_case_fits_model, infer_case, read_zscored, spec_reader
from longiseg.inferers.settings import InferenceConfig, inference_settings, make_inferer, model_spec
from longiseg.inferers.sliding_window import brain_or_foreground, prepare_case
from longiseg.ssm import check_scan_backend
from longiseg.tuning import (
    DEFAULT_OBJECTIVE,
    DEFAULT_THRESHOLDS,
    OBJECTIVES,
    ThresholdSelection,
    check_thresholds,
    select_threshold,
)
from longiseg.utils.device import resolve_device
from longiseg.utils.io import atomic_write_json
from longiseg.utils.logging import get_logger
from longiseg.utils.validation import check_path
from longiseg.workflows.train import SPLIT_FILE, TUNING_FILE, claim_run_folder, read_split

__all__ = ["TUNING_FILE", "UNTUNED_KEY", "ValidationMaps", "run_tuning", "validation_probabilities"]

logger = get_logger(__name__)

#: Key of the tuning record (``spec.tuning``, ``tuning.json``) holding the checkpoint's
#: ``inference["progression_threshold"]`` from before any tuning (``None``: the baseline ``threshold``), the
#: starting point of a later tuning.
UNTUNED_KEY = "untuned_progression_threshold"

# TUNING_FILE (defined with the run folder's other names in longiseg.workflows.train): the run folder's record of
# the last tuning (the selection and the objective of every candidate).


class ValidationMaps(NamedTuple):
    """What selecting a threshold needs, one entry per validation follow-up (see :func:`validation_probabilities`)."""

    probabilities: list[np.ndarray]
    references: list[np.ndarray]
    brain_masks: list[np.ndarray | None]
    spacings: list[tuple[float, ...]]
    baseline_probabilities: list[np.ndarray]
    #: per follow-up, the progression maps of its case's earlier follow-ups (``[]`` for the first); ``None``:
    #: every map is its case's first follow-up
    earlier_probabilities: list[list[np.ndarray]] | None = None


def validation_probabilities(model: torch.nn.Module, root: str | Path, case_ids: Sequence[str], *,
                             device: str | torch.device | None = None, progress: bool = True) -> ValidationMaps:
    """Progression probabilities of the cases ``case_ids`` of ``root``, with what selecting a threshold needs.

    Cases are read, checked and normalised exactly as ``longiseg predict`` does and run through the inferer of
    the model's spec, in memory.

    Returns:
        :class:`ValidationMaps` ``(probabilities, references, brain_masks, spacings, baseline_probabilities,
        earlier_probabilities)``: per follow-up one ``(D, H, W)`` float32 progression map, binary reference and
        brain mask (``None`` when the spec does not restrict progression masks to the brain), its case's voxel
        size in mm (cases need not share one), its case's ``(D, H, W)`` baseline probability map (the same array
        for every follow-up of a case) and the progression maps of its case's earlier follow-ups.

    Raises:
        FileNotFoundError: a case is missing from ``root``.
        ValueError: cases without progression masks (checked before any case is run through the model).
    """
    spec = model_spec(model)
    sources = {s.case_id: s for s in find_cases(root, modalities=list(spec.modalities or []) or None)}
    missing = [c for c in case_ids if c not in sources]
    if missing:
        raise FileNotFoundError(f"validation case(s) {missing} not found in {root}")
    unlabelled = [c for c in case_ids if sources[c].progression_masks is None]
    if unlabelled:
        raise ValueError(f"validation case(s) {unlabelled} of {root} have no progression masks")
    for cid in case_ids:  # as predict checks them: before any case is run through the model
        check_case_fits_model(model, sources[cid], root)
    cfg = inference_settings(model)
    device = resolve_device(device)
    check_scan_backend(model, device)  # a forced backend that cannot run: a setting, said before the first case
    inferer = make_inferer(spec, cfg, device=device, progress=False)
    read = spec_reader(model, unrecorded=read_zscored)  # the cases prepared as the model's training prepared them
    probs: list[np.ndarray] = []
    refs: list[np.ndarray] = []
    brains: list[np.ndarray | None] = []
    baselines: list[np.ndarray] = []
    earlier: list[list[np.ndarray]] = []
    spacings: list[tuple[float, ...]] = []
    model.eval()
    for cid in tqdm(case_ids, desc="tune: validation cases", unit="case", disable=not progress):
        case = read(sources[cid])
        images, brain = prepare_case(case.images, case.brain_mask)
        base, prog = infer_case(inferer, model, images, brain, case.affine)  # the planes predict slices
        restrict = brain_or_foreground(images, brain).numpy() if cfg.restrict != "none" else None
        probs += list(prog)
        refs += [np.asarray(m, dtype=bool) for m in case.progression_masks]
        brains += [restrict] * len(prog)
        spacings += [tuple(float(s) for s in case.spacing)] * len(prog)
        baselines += [np.asarray(base)] * len(prog)
        earlier += [list(prog[:k]) for k in range(len(prog))]
    return ValidationMaps(probs, refs, brains, spacings, baselines, earlier)


def run_tuning(run_dir: str | Path, *, checkpoint: str = "best.pt", data_root: str | Path | None = None,
               objective: str = DEFAULT_OBJECTIVE, thresholds: Sequence[float] = DEFAULT_THRESHOLDS,
               device: str | torch.device | None = None, progress: bool = True) -> ThresholdSelection | None:
    """Choose the progression threshold of ``run_dir/checkpoint`` on the run's validation patients.

    Tuning a tuned checkpoint again starts from its threshold before the first tuning (recorded as
    ``untuned_progression_threshold``), so repeating it records the same choice and the same ``default``.

    Args:
        run_dir: a folder written by ``longiseg train`` (checkpoints and ``split.json``).
        checkpoint: which checkpoint of the run to tune (and update): ``"best.pt"`` or ``"last.pt"`` (also as a path
            to the file in ``run_dir``, e.g. ``"RUN/last.pt"``).
        data_root: where the validation cases are (default: the training data root recorded in the run).
        objective: ``"balanced"`` (default) or ``"lesion_f1"`` (see :mod:`longiseg.tuning`).
        thresholds: candidate thresholds.
        device: run the model there (default: CUDA if available).
        progress: progress bar.

    Returns:
        The selection, or ``None`` when the objective cannot be computed on the validation patients: with
        ``"lesion_f1"``, none has new or enlarging lesions (the threshold is kept; ``spec.tuning`` and
        ``tuning.json`` say so). ``"balanced"`` then selects on the stable patients' NP score alone.

    Raises:
        FileNotFoundError: no such checkpoint, no ``split.json`` or missing validation cases.
        TypeError: ``thresholds`` not a sequence of numbers.
        ValueError: a run without validation patients (``data.val_fraction=0``), an unknown objective, bad
            ``thresholds`` (empty, outside ``(0, 1)``, repeated; before any inference), a
            ``checkpoint`` that is not a file name inside ``run_dir`` or is write-protected (tune rewrites it,
            keeping its file mode), a malformed ``split.json``.
    """
    run = check_path("run_dir", run_dir)
    if objective not in OBJECTIVES:
        raise ValueError(f"objective must be one of {OBJECTIVES}, got {objective!r}")
    thresholds = check_thresholds(thresholds)  # before any inference
    if isinstance(checkpoint, str) and checkpoint and Path(checkpoint).name not in ("", ".", "..") \
            and Path(checkpoint).parent.resolve() == run.resolve():
        checkpoint = Path(checkpoint).name  # RUN/last.pt names the run's own file
    if not isinstance(checkpoint, str) or not checkpoint or Path(checkpoint).name != checkpoint \
            or checkpoint in (".", ".."):
        raise ValueError(f"checkpoint must be the file name of one of the run's checkpoints (best.pt, last.pt): "
                         f"tune rewrites it inside {run}, got {checkpoint!r}")
    ckpt = run / checkpoint
    if not ckpt.is_file():
        raise FileNotFoundError(f"checkpoint {ckpt} does not exist (a run folder of longiseg train holds "
                                "best.pt and last.pt)")
    check_writable(ckpt)  # before any inference: tune rewrites it
    split_file = run / SPLIT_FILE
    if not split_file.is_file():
        raise FileNotFoundError(f"{split_file} does not exist: tune needs the validation patients that "
                                "longiseg train recorded there")
    split = read_split(split_file)
    val_ids = split["validation"]
    if not val_ids:
        raise ValueError(f"the run {run} has no validation patients (data.val_fraction=0): nothing to tune on")
    root = Path(data_root or split.get("val_root") or split["data_root"])
    claim = claim_run_folder(run, "longiseg tune")  # no train rewrites the checkpoint (or tuning.json) while it is read and tuned
    try:
        return _tune_checkpoint(run, checkpoint, root, val_ids, objective=objective, thresholds=thresholds,
                                device=device, progress=progress)
    finally:
        release_claim(*claim)


def _tune_checkpoint(run: Path, checkpoint: str, root: Path, val_ids: list[str], *, objective: str,
                     thresholds: Sequence[float], device: str | torch.device | None,
                     progress: bool) -> ThresholdSelection | None:
    """:func:`run_tuning`'s work once its arguments are checked and the run folder claimed: select the threshold
    on the validation cases ``val_ids`` under ``root`` and record it in ``run/checkpoint`` and ``tuning.json``."""
    ckpt = run / checkpoint
    model = load_model(ckpt)
    spec = model.spec
    inference = dict(spec.inference)
    earlier = dict(spec.tuning or {})
    if earlier and "progression_threshold" not in inference and "default" in earlier:
        # tuned by longiseg < 0.3.1, which wrote its choice into `threshold` (both heads): the baseline head gets
        # back the threshold it had before that tuning
        inference["threshold"] = float(earlier["default"])
    elif earlier and "progression_threshold" in inference:
        # tuned before: start again from the threshold of the training run, so that tuning again chooses (and
        # records, as `default`) what the first tuning did, not a choice relative to the last one
        inference["progression_threshold"] = earlier.get(
            UNTUNED_KEY, earlier.get("default", earlier.get("threshold", inference["progression_threshold"])))
    untuned = inference.get("progression_threshold")
    settings = InferenceConfig.from_dict(inference)  # as predict reads them
    default, outside_baseline = settings.progression_cut, settings.progression_outside_baseline
    maps = validation_probabilities(model, root, val_ids, device=device, progress=progress)
    num_p = sum(bool(r.any()) for r in maps.references)
    selection: ThresholdSelection | None = None
    if objective == "lesion_f1" and num_p == 0:
        logger.warning("no validation patient of %s has new lesions: keeping the progression threshold %.2f",
                       run, default)
        record = {"objective": objective, "threshold": default, "kept": "no validation follow-up with progression"}
    else:
        selection = select_threshold(maps.probabilities, maps.references, maps.spacings, thresholds=thresholds,
                                     min_volume_mm3=settings.min_lesion_mm3,
                                     brain_masks=maps.brain_masks, protocol="segmast", default=default,
                                     objective=objective,
                                     baseline_probabilities=maps.baseline_probabilities if outside_baseline else None,
                                     earlier_probabilities=maps.earlier_probabilities if outside_baseline else None,
                                     baseline_threshold=settings.threshold,
                                     restrict="both" if settings.restrict == "both" else "progression")
        record = selection.to_dict()
        logger.info("%s: progression threshold %.2f chosen on %d validation follow-ups (%s %.3f; %.3f at %.2f)",
                    ckpt, selection.threshold, len(maps.references), objective, selection.score, selection.default_score,
                    default)
    record = {**record, UNTUNED_KEY: untuned, "baseline_threshold": settings.threshold,
              "progression_outside_baseline": outside_baseline, "checkpoint": checkpoint,
              "validation_cases": val_ids, "data_root": str(root)}
    tuned = spec.replace(inference={**inference, "progression_threshold": record["threshold"]}, tuning=record)
    update_spec(ckpt, tuned)
    atomic_write_json(run / TUNING_FILE, record)
    return selection
