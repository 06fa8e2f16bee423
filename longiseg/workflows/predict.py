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
from longiseg.registry import model_info
from longiseg.workflows.config import InferenceConfig

__all__ = ["make_inferer", "run_prediction"]


def make_inferer(dim: str, cfg: InferenceConfig, *, device: str | torch.device | None = None,
                 progress: bool = True) -> TriplanarInferer | SlidingWindowInferer3D:
    """The inferer of a model's dimensionality: tri-planar for ``"2.5D"``/``"2D"``, 3D sliding window for ``"3D"``."""
    if dim == "3D":
        return SlidingWindowInferer3D(roi_size=cfg.patch_size, overlap=cfg.overlap, blend=cfg.blend,
                                      batch_size=max(1, cfg.batch_size // 8), flip_tta=cfg.flip_tta,
                                      device=device, progress=progress)
    return TriplanarInferer(patch_size=cfg.patch_size, overlap=cfg.overlap, blend=cfg.blend, planes=cfg.planes,
                            batch_size=cfg.batch_size, flip_tta=cfg.flip_tta, crop_to_brain=cfg.crop_to_brain,
                            device=device, progress=progress)


def run_prediction(model: nn.Module, model_name: str, input_dir: str | Path, output_dir: str | Path,
                   cfg: InferenceConfig | None = None, *, modalities: Sequence[str] | None = None,
                   crop_to_foreground: bool = False, case_ids: Sequence[str] | None = None,
                   overwrite: bool = False, skip_existing: bool = False, device: str | torch.device | None = None,
                   progress: bool = True) -> dict[str, dict[str, list[Path]]]:
    """Predict every case of ``input_dir`` (library layout, masks optional) into ``output_dir``.

    :func:`~longiseg.inferers.predict.predict_folder` does the work (masks, probabilities and entropy maps with the
    input affine, atomically, never over existing files unless ``overwrite``) with a reader that loads and checks
    each case (:func:`~longiseg.data.loading.load_case`) and z-score normalises it exactly as in training
    (:func:`~longiseg.data.preprocessing.preprocess_case`); the inferer matches the model's dimensionality.

    Args:
        model: a trained registry model.
        model_name: its registry name (selects tri-planar vs 3D inference).
        input_dir: cohort folder.
        output_dir: prediction root (``OUT/CASE_ID/...``).
        cfg: inference settings (default :class:`InferenceConfig`).
        modalities: channel order used in training.
        crop_to_foreground: must match the training setting; predictions are pasted back to the full grid.
        case_ids: only these cases.
        overwrite: replace existing outputs.
        skip_existing: skip cases whose baseline mask exists.
        device: run the model there (default: CUDA if available).
        progress: progress bars.

    Returns:
        ``{case_id: written paths}``.
    """
    cfg = cfg or InferenceConfig()
    if crop_to_foreground:
        raise ValueError("crop_to_foreground prediction is not supported: predict on the full grid "
                         "(normalisation is per case, so models trained on cropped cases apply unchanged)")
    dim = model_info(model_name).dim
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    sources = {s.case_id: s for s in find_cases(input_dir, modalities=modalities, require_masks=False)}
    if case_ids is not None:
        missing = set(case_ids) - set(sources)
        if missing:
            raise FileNotFoundError(f"cases not found in {input_dir}: {sorted(missing)}")

    def read_preprocessed(case_dir: Path, _modalities: Sequence[str] | None) -> LongitudinalCase:
        return preprocess_case(load_case(sources[case_dir.name]))

    model.eval()
    return predict_folder(
        model, input_dir, output_dir, case_ids=list(case_ids) if case_ids is not None else list(sources),
        skip_existing=skip_existing, overwrite=overwrite, progress=progress, reader=read_preprocessed,
        inferer=make_inferer(dim, cfg, device=device, progress=False), threshold=cfg.threshold,
        min_volume_mm3=cfg.min_lesion_mm3, restrict_to_brain=cfg.restrict,
    )
