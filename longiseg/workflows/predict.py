"""Predict a folder of cases with a trained checkpoint, applying the training preprocessing."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import torch
import torch.nn as nn

from longiseg.data.case import LongitudinalCase
from longiseg.data.layout import prediction_filenames
from longiseg.data.sources import CaseSource
from longiseg.inferers.predict import predict_folder, read_zscored
from longiseg.inferers.sliding_window import SlidingWindowInferer3D
from longiseg.inferers.triplanar import TriplanarInferer
from longiseg.networks.inputs import check_spatial_size
from longiseg.networks.wrappers import unwrap_model
from longiseg.spec import ModelSpec
from longiseg.utils.device import resolve_device
from longiseg.utils.io import check_separate_folders
from longiseg.utils.logging import get_logger
from longiseg.workflows.config import InferenceConfig

__all__ = ["make_inferer", "inference_settings", "model_spec", "run_prediction"]

logger = get_logger(__name__)


def make_inferer(spec: ModelSpec, cfg: InferenceConfig, *, device: str | torch.device | None = None,
                 progress: bool = True) -> TriplanarInferer | SlidingWindowInferer3D:
    """The inferer of a model's dimensionality (``spec.dim``): tri-planar for 2.5D/2D, a 3D sliding window for 3D.

    The one place where a model's dimensionality picks its inference.
    """
    if spec.dim == "3D":
        return SlidingWindowInferer3D(roi_size=cfg.patch_size, overlap=cfg.overlap, blend=cfg.blend,
                                      batch_size=max(1, cfg.batch_size // 8), flip_tta=cfg.flip_tta,
                                      device=device, progress=progress)
    return TriplanarInferer(patch_size=cfg.patch_size, overlap=cfg.overlap, blend=cfg.blend, planes=cfg.planes,
                            batch_size=cfg.batch_size, flip_tta=cfg.flip_tta, crop_to_brain=cfg.crop_to_brain,
                            device=device, progress=progress)


def inference_settings(model: nn.Module, cfg: InferenceConfig | None = None) -> InferenceConfig:
    """The inference settings to use for ``model``: ``cfg`` if given, else those its spec records.

    ``model`` may be wrapped (DataParallel, DistributedDataParallel, ``torch.compile``): the settings and sizes
    are those of the model inside.

    Raises:
        ValueError: if ``cfg`` is ``None`` and the model's spec records none (a model that was never trained
            with ``longiseg train``: pass ``cfg``), or if the model cannot take windows of ``patch_size``
            (:func:`~longiseg.networks.inputs.check_spatial_size`, naming ``inference.patch_size``).
    """
    if cfg is None:
        spec = model_spec(model)
        if not spec.inference:
            raise ValueError(f"model {spec.name!r} records no inference settings (it was not trained with longiseg "
                             "train); pass an InferenceConfig")
        cfg = InferenceConfig.from_dict(spec.inference)
    check_spatial_size(unwrap_model(model), cfg.patch_size, "inference.patch_size")
    return cfg


def model_spec(model: nn.Module) -> ModelSpec:
    """``model.spec`` (every registry model has one), of the model inside DataParallel/DDP/``torch.compile``.

    Raises:
        TypeError: for a model built without :func:`longiseg.build_model` (give it a ``ModelSpec``).
    """
    inner = unwrap_model(model) if isinstance(model, nn.Module) else model
    spec = getattr(inner, "spec", None)
    if not isinstance(spec, ModelSpec):
        raise TypeError(f"model ({type(inner).__name__}) has no spec: build it with longiseg.build_model or load it "
                        "with longiseg.load_model, or set model.spec = ModelSpec(name=..., dim=...)")
    return spec


def run_prediction(model: nn.Module, input_dir: str | Path, output_dir: str | Path,
                   cfg: InferenceConfig | None = None, *, modalities: Sequence[str] | None = None,
                   case_ids: Sequence[str] | None = None, overwrite: bool = False, skip_existing: bool = False,
                   device: str | torch.device | None = None, progress: bool = True,
                   registered_dir: str | Path | None = None) -> dict[str, dict[str, list[Path]]]:
    """Predict every case of ``input_dir`` (library layout, masks optional) into ``output_dir``.

    :func:`~longiseg.inferers.predict.predict_folder` does the work (masks, probabilities and entropy maps
    with the input affine and a record of the model and settings, each case folder written as a whole, never
    over existing outputs unless ``overwrite``) with a reader that loads and checks each case
    (:func:`~longiseg.data.loading.load_case`) and z-score normalises it exactly as in training
    (:func:`~longiseg.data.preprocessing.preprocess_case`). How to run the model comes from ``model.spec``
    (:class:`~longiseg.spec.ModelSpec`): its dimensionality picks the inferer, its modality order the
    channels, and its inference settings (with the post-processing ``longiseg tune`` chose) the rest.

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
        ValueError: no inference settings, a spec that crops to the foreground, invalid cases, or an
            ``output_dir`` that is, lies inside or holds ``input_dir`` or ``registered_dir``.
        FileNotFoundError: missing input folder or requested cases; with ``registered_dir``, a case without
            its registration record or a follow-up's transform.
        ImportError: ``registered_dir`` given without SimpleITK.
    """
    check_separate_folders(output_dir, "output folder", {"input": input_dir, "registered": registered_dir})
    spec = model_spec(model)
    cfg = inference_settings(model, cfg)
    modalities = list(modalities) if modalities is not None else (list(spec.modalities) if spec.modalities else None)
    if spec.preprocessing.get("crop_to_foreground"):
        raise ValueError("crop_to_foreground prediction is not supported: predict on the full grid "
                         "(normalisation is per case, so models trained on cropped cases apply unchanged)")
    device = resolve_device(device)
    logger.info("predicting with %s (%s): modalities %s, window %d, baseline threshold %.3g, progression threshold "
                "%.3g%s, progression %s", spec.name, spec.dim, modalities, cfg.patch_size, cfg.threshold,
                cfg.progression_cut, " (tuned on validation patients)" if spec.tuning else "",
                "outside the baseline lesions" if cfg.progression_outside_baseline else "as the head gives it")

    def read_preprocessed(source: CaseSource) -> LongitudinalCase:
        if spec.in_channels is not None and len(source.modalities) != spec.in_channels:
            raise ValueError(f"the model takes {spec.in_channels} modalities per timepoint {spec.modalities or ''}, "
                             f"case {source.case_id!r} of {input_dir} has {len(source.modalities)}")
        return read_zscored(source)

    check_case = after_case = None
    if registered_dir is not None:
        check_case, after_case = _native_hooks(Path(registered_dir), overwrite)

    # the inferers run the model in eval mode and give every module its own mode back (networks.wrappers.eval_mode)
    return predict_folder(
        model, input_dir, output_dir, modalities=modalities, case_ids=case_ids, skip_existing=skip_existing,
        overwrite=overwrite, progress=progress, reader=read_preprocessed, check_case=check_case, after_case=after_case,
        inferer=make_inferer(spec, cfg, device=device, progress=False), threshold=cfg.threshold,
        progression_threshold=cfg.progression_cut, min_volume_mm3=cfg.min_lesion_mm3,
        restrict_to_brain=cfg.restrict, progression_outside_baseline=cfg.progression_outside_baseline,
    )


def _native_hooks(registered_dir: Path, overwrite: bool
                  ) -> tuple[Callable[[CaseSource], None], Callable[[CaseSource, Path], None]]:
    """``predict_folder`` hooks that check every case's saved transforms first and then write ``CASE/native/``."""
    from longiseg.registration.grid import require_simpleitk
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
        check_native_ready(reg, source.num_timepoints)

    def write(source: CaseSource, case_out: Path) -> None:
        native = case_out / NATIVE_DIR
        names = prediction_filenames(source.num_timepoints)["mask"]
        if not overwrite and all((native / n).is_file() for n in names):
            logger.info("case %s: %s exists", source.case_id, native)
            return
        case_to_native(case_out, registration(source), source.num_timepoints, overwrite=True)
        logger.info("case %s: masks on the original grids written to %s", source.case_id, native)

    return check, write
