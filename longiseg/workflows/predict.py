"""Predict a folder of cases with a trained checkpoint, applying the training preprocessing."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import torch
import torch.nn as nn

from longiseg.data.layout import prediction_filenames
from longiseg.data.loading import case_grid
from longiseg.data.sources import CaseSource
from longiseg.inferers.predict import predict_folder, read_zscored, spec_reader
from longiseg.inferers.settings import InferenceConfig, inference_settings, make_inferer, model_spec
from longiseg.spec import ModelSpec
from longiseg.ssm import check_scan_backend
from longiseg.tuning import tuning_note
from longiseg.utils.device import resolve_device
from longiseg.utils.io import check_separate_folders
from longiseg.utils.logging import get_logger

__all__ = ["make_inferer", "inference_settings", "model_spec", "run_prediction", "threshold_note"]

logger = get_logger(__name__)


def run_prediction(model: nn.Module, input_dir: str | Path, output_dir: str | Path,
                   cfg: InferenceConfig | None = None, *, modalities: Sequence[str] | None = None,
                   case_ids: Sequence[str] | None = None, overwrite: bool = False, skip_existing: bool = False,
                   device: str | torch.device | None = None, progress: bool = True,
                   registered_dir: str | Path | None = None) -> dict[str, dict[str, list[Path]]]:
    """Predict every case of ``input_dir`` (library layout, masks optional) into ``output_dir``.

    :func:`~longiseg.inferers.predict.predict_folder` does the work (masks, probabilities and entropy maps
    with the input affine and a record of the model and settings, each case folder written as a whole, never
    over existing outputs unless ``overwrite``) with a reader that loads and checks each case
    (:func:`~longiseg.data.loading.load_case`) and prepares it as its training did, as the spec records it
    (:func:`~longiseg.inferers.predict.spec_reader`: per-image z-scores for the models of ``longiseg train``).
    How to run the model comes from ``model.spec`` (:class:`~longiseg.spec.ModelSpec`): its dimensionality picks the
    inferer, its modality order the channels, and its inference settings (with the post-processing ``longiseg tune``
    chose) the rest.

    Args:
        model: a registry model (``longiseg.load_model`` gives a trained one), possibly wrapped in DataParallel,
            DistributedDataParallel or ``torch.compile`` (the wrapper runs it).
        input_dir: cohort folder.
        output_dir: prediction root (``OUT/CASE_ID/...``).
        cfg: inference settings replacing the spec's (required for a model whose spec records none).
        modalities: channel order replacing the spec's.
        case_ids: only these cases.
        overwrite: replace existing case folders.
        skip_existing: skip cases whose outputs are complete and were predicted by this model (the same weights)
            with the same settings, as their record says; a complete case of another checkpoint or other settings
            (or of an earlier version, without a record) is refused before any case is predicted, incomplete
            ones are predicted again.
        device: run the model there (default: CUDA if available).
        progress: progress bars.
        registered_dir: also write each case's masks on the original grids of its raw scans, into
            ``output_dir/CASE_ID/native/`` (:func:`~longiseg.registration.native.case_to_native`), with the
            transforms ``longiseg register`` saved in ``registered_dir/CASE_ID/registration/``; usually
            ``input_dir`` itself. Every case is checked for them before any is predicted; cases skipped by
            ``skip_existing`` get the folder too when they lack it. Needs SimpleITK (``longiseg[register]``).

    Returns:
        ``{case_id: written paths}`` (the predicted cases' files; ``native/`` files not included).

    Raises:
        TypeError: a model without a spec.
        ValueError: no inference settings, invalid cases, or an
            ``output_dir`` that is, lies inside or holds ``input_dir`` or ``registered_dir``.
        FileNotFoundError: missing input folder or requested cases; with ``registered_dir``, a case without
            its registration record or a follow-up's transform.
        ImportError: ``registered_dir`` given without SimpleITK.
    """
    check_separate_folders(output_dir, "output folder", {"input": input_dir, "registered": registered_dir})
    spec = model_spec(model)
    cfg = inference_settings(model, cfg)
    modalities = list(modalities) if modalities is not None else (list(spec.modalities) if spec.modalities else None)
    if spec.preprocessing.get("crop_to_foreground"):  # it was refused, leaving such a run's checkpoints unusable
        logger.info("the model was trained on cases cropped to their foreground; predicting on the full grid (the "
                    "z-scores are taken over the same voxels, and the voxels outside the crop are background)")
    device = resolve_device(device)
    check_scan_backend(model, device)  # a forced backend that cannot run: said now, not at the first case
    logger.info("predicting with %s (%s): modalities %s, window %s, baseline threshold %.3g, progression threshold "
                "%.3g%s, progression %s", spec.name, spec.dim, modalities, cfg.patch_size, cfg.threshold,
                cfg.progression_cut, threshold_note(spec, cfg),
                "outside the baseline lesions" if cfg.progression_outside_baseline else "as the head gives it")

    # the normalisation the spec records (refused if this version does not know it); z-scores, as longiseg train
    # prepares its cases, for a model whose spec records none (built with build_model and trained elsewhere)
    read_prepared = spec_reader(model, unrecorded=read_zscored)

    check_case = after_case = None
    if registered_dir is not None:
        check_case, after_case = _native_hooks(Path(registered_dir), overwrite)

    # the inferers run the model in eval mode and give every module its own mode back (networks.wrappers.eval_mode)
    return predict_folder(
        model, input_dir, output_dir, modalities=modalities, case_ids=case_ids, skip_existing=skip_existing,
        overwrite=overwrite, progress=progress, reader=read_prepared, check_case=check_case, after_case=after_case,
        inferer=make_inferer(spec, cfg, device=device, progress=progress), threshold=cfg.threshold,
        progression_threshold=cfg.progression_cut, min_volume_mm3=cfg.min_lesion_mm3,
        restrict_to_brain=cfg.restrict, progression_outside_baseline=cfg.progression_outside_baseline,
    )


def threshold_note(spec: ModelSpec, cfg: InferenceConfig) -> str:
    """Where ``cfg``'s progression threshold comes from, for messages: the tuning note of the checkpoint
    (:func:`~longiseg.tuning.tuning_note`) when it is the one the spec records, else that it was given (a
    ``--set`` or another config), with the recorded one."""
    if not spec.inference:
        return ""
    recorded = InferenceConfig.from_dict(spec.inference).progression_cut
    if recorded == cfg.progression_cut:
        return tuning_note(spec.tuning)
    return f" (given; the checkpoint's is {recorded:.3g})"


def _native_hooks(registered_dir: Path, overwrite: bool
                  ) -> tuple[Callable[[CaseSource], None], Callable[[CaseSource, Path], None]]:
    """``predict_folder`` hooks that check every case's saved transforms first and then write ``CASE/native/``."""
    from longiseg.registration.grid import Grid, require_simpleitk
    from longiseg.registration.native import NATIVE_DIR, case_to_native, check_native_ready

    require_simpleitk()  # before any case is read
    if not registered_dir.is_dir():
        raise FileNotFoundError(f"registered_dir {registered_dir} is not a folder (the output of longiseg register)")

    def registration(source: CaseSource) -> Path:
        return registered_dir / source.case_id / "registration"

    def check(source: CaseSource) -> None:
        reg = registration(source)
        if not reg.is_dir():
            raise FileNotFoundError(f"case {source.case_id!r}: no {reg} with the transforms of longiseg register; "
                                    f"was {registered_dir} written by longiseg register?")
        # the images (whose headers predict_folder checked) must lie on the grid that register wrote
        check_native_ready(reg, source.num_timepoints, source.case_id, registered_grid=Grid(*case_grid(source)))

    def write(source: CaseSource, case_out: Path) -> None:
        # case_out: the case's temporary folder, published with native/ in it, or a kept case's folder
        native = case_out / NATIVE_DIR
        names = prediction_filenames(source.num_timepoints)["mask"]
        if not overwrite and all((native / n).is_file() for n in names):
            logger.info("case %s: %s/ exists", source.case_id, NATIVE_DIR)
            return
        case_to_native(case_out, registration(source), source.num_timepoints, overwrite=True,
                       case_id=source.case_id)
        logger.info("case %s: masks on the original grids written to %s/", source.case_id, NATIVE_DIR)

    return check, write
