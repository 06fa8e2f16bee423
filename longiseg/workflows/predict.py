"""Predict a folder of cases with a trained checkpoint, applying the training preprocessing."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn as nn
from tqdm.auto import tqdm

from longiseg.data.layout import BASELINE_MASK
from longiseg.data.loading import find_cases, load_case
from longiseg.data.preprocessing import preprocess_case
from longiseg.inferers.predict import predict_case
from longiseg.inferers.sliding_window import SlidingWindowInferer3D
from longiseg.inferers.triplanar import TriplanarInferer
from longiseg.registry import model_info
from longiseg.utils.logging import get_logger
from longiseg.workflows.config import InferenceConfig

__all__ = ["make_inferer", "run_prediction"]

logger = get_logger(__name__)


def make_inferer(dim: str, cfg: InferenceConfig, *, device: str | torch.device | None = None,
                 progress: bool = True) -> TriplanarInferer | SlidingWindowInferer3D:
    """The inferer of a model's dimensionality: tri-planar for ``"2.5D"``/``"2D"``, 3D sliding window for ``"3D"``."""
    if dim == "3D":
        return SlidingWindowInferer3D(roi_size=cfg.patch_size, overlap=cfg.overlap, blend=cfg.blend,
                                      batch_size=max(1, cfg.batch_size // 8), flip_tta=cfg.flip_tta,
                                      device=device, progress=progress)
    return TriplanarInferer(patch_size=cfg.patch_size, overlap=cfg.overlap, blend=cfg.blend, planes=cfg.planes,
                            batch_size=cfg.batch_size, flip_tta=cfg.flip_tta, device=device, progress=progress)


def run_prediction(model: nn.Module, model_name: str, input_dir: str | Path, output_dir: str | Path,
                   cfg: InferenceConfig | None = None, *, modalities: Sequence[str] | None = None,
                   crop_to_foreground: bool = False, case_ids: Sequence[str] | None = None,
                   overwrite: bool = False, skip_existing: bool = False, device: str | torch.device | None = None,
                   progress: bool = True) -> dict[str, dict[str, list[Path]]]:
    """Predict every case of ``input_dir`` (library layout, masks optional) into ``output_dir``.

    Each case is loaded and checked (:func:`~longiseg.data.loading.load_case`), z-score normalised exactly as in
    training (:func:`~longiseg.data.preprocessing.preprocess_case`), predicted with the inferer of the model's
    dimensionality and written by :func:`~longiseg.inferers.predict.predict_case` (masks, probabilities and
    entropy maps with the input affine, atomically, never over existing files unless ``overwrite``).

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
    inferer = make_inferer(dim, cfg, device=device, progress=False)
    sources = find_cases(input_dir, modalities=modalities, require_masks=False)
    if case_ids is not None:
        wanted = set(case_ids)
        sources = [s for s in sources if s.case_id in wanted]
        missing = wanted - {s.case_id for s in sources}
        if missing:
            raise FileNotFoundError(f"cases not found in {input_dir}: {sorted(missing)}")
    model.eval()
    results: dict[str, dict[str, list[Path]]] = {}
    for src in tqdm(sources, desc="predict", unit="case", disable=not progress):
        if skip_existing and not overwrite and (Path(output_dir) / src.case_id / BASELINE_MASK).exists():
            logger.info("skipping %s: outputs exist", src.case_id)
            continue
        case = preprocess_case(load_case(src))
        results[src.case_id] = predict_case(
            model, case.images, case.affine, case.spacing, output_dir, src.case_id, inferer=inferer,
            brain_mask=case.brain_mask, threshold=cfg.threshold, min_volume_mm3=cfg.min_lesion_mm3,
            restrict_to_brain=cfg.restrict, overwrite=overwrite,
        )
    return results
