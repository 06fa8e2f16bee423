"""Predict a folder of cases with a trained checkpoint, applying the training preprocessing."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn as nn

from longiseg.data.case import LongitudinalCase
from longiseg.data.loading import find_cases, load_case
from longiseg.data.preprocessing import preprocess_case
from longiseg.inferers.predict import predict_folder
from longiseg.inferers.sliding_window import SlidingWindowInferer3D
from longiseg.inferers.triplanar import TriplanarInferer
from longiseg.spec import ModelSpec
from longiseg.utils.device import resolve_device
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

    Raises:
        ValueError: if ``cfg`` is ``None`` and the model's spec records none (a model that was never trained
            with ``longiseg train``: pass ``cfg``).
    """
    if cfg is not None:
        return cfg
    spec = model_spec(model)
    if not spec.inference:
        raise ValueError(f"model {spec.name!r} records no inference settings (it was not trained with longiseg "
                         "train); pass an InferenceConfig")
    return InferenceConfig.from_dict(spec.inference)


def model_spec(model: nn.Module) -> ModelSpec:
    """``model.spec`` (every registry model has one).

    Raises:
        TypeError: for a model built without :func:`longiseg.build_model` (give it a ``ModelSpec``).
    """
    spec = getattr(model, "spec", None)
    if not isinstance(spec, ModelSpec):
        raise TypeError(f"model ({type(model).__name__}) has no spec: build it with longiseg.build_model or load it "
                        "with longiseg.load_model, or set model.spec = ModelSpec(name=..., dim=...)")
    return spec


def run_prediction(model: nn.Module, input_dir: str | Path, output_dir: str | Path,
                   cfg: InferenceConfig | None = None, *, modalities: Sequence[str] | None = None,
                   case_ids: Sequence[str] | None = None, overwrite: bool = False, skip_existing: bool = False,
                   device: str | torch.device | None = None, progress: bool = True
                   ) -> dict[str, dict[str, list[Path]]]:
    """Predict every case of ``input_dir`` (library layout, masks optional) into ``output_dir``.

    :func:`~longiseg.inferers.predict.predict_folder` does the work (masks, probabilities and entropy maps with the
    input affine, each case folder written as a whole, never over existing outputs unless ``overwrite``) with a
    reader that loads and checks each case (:func:`~longiseg.data.loading.load_case`) and z-score normalises it
    exactly as in training (:func:`~longiseg.data.preprocessing.preprocess_case`). How to run the model comes from
    ``model.spec`` (:class:`~longiseg.spec.ModelSpec`): its dimensionality picks the inferer, its modality order
    the channels, and its inference settings (with the post-processing ``longiseg tune`` chose) the rest.

    Args:
        model: a registry model (``longiseg.load_model`` gives a trained one).
        input_dir: cohort folder.
        output_dir: prediction root (``OUT/CASE_ID/...``).
        cfg: inference settings replacing the spec's (required for a model whose spec records none).
        modalities: channel order replacing the spec's.
        case_ids: only these cases.
        overwrite: replace existing case folders.
        skip_existing: skip cases whose outputs are complete (incomplete ones are predicted again).
        device: run the model there (default: CUDA if available).
        progress: progress bars.

    Returns:
        ``{case_id: written paths}``.

    Raises:
        TypeError: a model without a spec.
        ValueError: no inference settings, a spec that crops to the foreground, or invalid cases.
        FileNotFoundError: missing input folder or requested cases.
    """
    spec = model_spec(model)
    cfg = inference_settings(model, cfg)
    modalities = list(modalities) if modalities is not None else (list(spec.modalities) if spec.modalities else None)
    if spec.preprocessing.get("crop_to_foreground"):
        raise ValueError("crop_to_foreground prediction is not supported: predict on the full grid "
                         "(normalisation is per case, so models trained on cropped cases apply unchanged)")
    device = resolve_device(device)
    sources = {s.case_id: s for s in find_cases(input_dir, modalities=modalities, require_masks=False)}
    if case_ids is not None:
        missing = set(case_ids) - set(sources)
        if missing:
            raise FileNotFoundError(f"cases not found in {input_dir}: {sorted(missing)}")
    if spec.in_channels is not None and sources:
        found = len(next(iter(sources.values())).modalities)
        if found != spec.in_channels:
            raise ValueError(f"the model takes {spec.in_channels} modalities per timepoint {spec.modalities or ''}, "
                             f"the cases of {input_dir} have {found}")
    logger.info("predicting with %s (%s): modalities %s, window %d, threshold %.3g%s", spec.name, spec.dim,
                modalities, cfg.patch_size, cfg.threshold,
                " (tuned on validation patients)" if spec.tuning else "")

    def read_preprocessed(case_dir: Path, _modalities: Sequence[str] | None) -> LongitudinalCase:
        return preprocess_case(load_case(sources[case_dir.name]))

    model.eval()
    return predict_folder(
        model, input_dir, output_dir, case_ids=list(case_ids) if case_ids is not None else list(sources),
        skip_existing=skip_existing, overwrite=overwrite, progress=progress, reader=read_preprocessed,
        inferer=make_inferer(spec, cfg, device=device, progress=False), threshold=cfg.threshold,
        min_volume_mm3=cfg.min_lesion_mm3, restrict_to_brain=cfg.restrict,
    )
