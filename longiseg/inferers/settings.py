"""Inference settings and the model's own record of them: which inferer, window, thresholds and post-processing
run a model, as :class:`InferenceConfig` (the ``inference`` section of an experiment) and as the spec of a trained
model records it (``model.spec.inference``, with the thresholds ``longiseg tune`` chose).

* :class:`InferenceConfig`: the settings, checked when built.
* :func:`make_inferer`: the inferer of a model's dimensionality (the one place where ``spec.dim`` picks it).
* :func:`inference_settings`: the settings a model records (or the ones given), checked against the model.
* :func:`prediction_defaults`: what :func:`~longiseg.inferers.predict.predict_folder` uses unless told otherwise.
* :func:`voxel_size_mismatch`: whether a case's voxels differ from those the model was trained on.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn as nn

from longiseg.data.case import PLANES, check_planes
from longiseg.inferers.postprocessing import RESTRICT_OPTIONS
from longiseg.inferers.sliding_window import BLEND_MODES, SlidingWindowInferer3D
from longiseg.inferers.triplanar import TriplanarInferer
from longiseg.networks.inputs import check_spatial_size
from longiseg.networks.wrappers import unwrap_model
from longiseg.spec import ModelSpec
from longiseg.utils.config import ConfigBase, require
from longiseg.utils.masks import as_spacing
from longiseg.utils.validation import check_bool, check_instance

__all__ = ["MAX_WINDOW", "VOXEL_SIZE_RTOL", "InferenceConfig", "check_planes", "check_window_setting",
           "inference_settings", "make_inferer", "model_spec", "prediction_defaults", "same_window",
           "voxel_size_mismatch"]


#: The largest crop or window edge a configuration takes (voxels); beyond, a window fails in the allocator.
MAX_WINDOW = 4096

#: Largest relative difference between a case's voxel size and the one its model was trained on (along any axis,
#: both sorted) that :func:`voxel_size_mismatch` lets pass: lesions of a case with larger voxels span fewer of
#: them than the model learned, and its windows cover more anatomy.
VOXEL_SIZE_RTOL = 0.25


def _is_int(value: object) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


def _window_sizes(size: object) -> tuple[int, ...] | None:
    """A window setting's sizes (one for an int), or ``None`` where it is neither an int nor a list, tuple or 1-D
    array of ints."""
    if _is_int(size):
        return (int(size),)  # type: ignore[call-overload]
    if isinstance(size, (list, tuple, np.ndarray)) and all(_is_int(s) for s in size):
        return tuple(int(s) for s in size)
    return None


def check_window_setting(size: int | Sequence[int], owner: str, key: str, *, minimum: int = 1) -> None:
    """Refuse a crop or window setting unless it is one edge for every axis (an int) or one per spatial axis
    (2 ints: ``[h, w]`` of a 2.5D slice; 3: ``[d, h, w]`` of a 3D patch), each from ``minimum`` to
    :data:`MAX_WINDOW` voxels: a :class:`~longiseg.utils.config.ConfigError` naming ``owner`` and ``key``.

    Whether the number of sizes fits the model (2 for a 2.5D model, 3 for a 3D one) and its downsampling is
    checked against the model (:func:`~longiseg.networks.inputs.check_spatial_size`), before training or
    prediction starts.

    Raises:
        ConfigError: naming ``owner`` and ``key``: not an int (or NumPy integer) nor a list, tuple or 1-D array
            of 2 or 3 of them, or a size out of range.
    """
    sizes = _window_sizes(size)
    require(sizes is not None and (_is_int(size) or len(sizes) in (2, 3)), owner,
            f"{key} must be one int or one per spatial axis ([h, w] for 2.5D, [d, h, w] for 3D), got {size!r}")
    require(all(minimum <= s <= MAX_WINDOW for s in sizes or ()), owner,
            f"{key} must be between {minimum} and {MAX_WINDOW} voxels{'' if _is_int(size) else ' per axis'}, "
            f"got {size}")


def same_window(a: int | Sequence[int], b: int | Sequence[int]) -> bool:
    """Whether two crop or window settings (one edge, or one per axis) give the same window: ``32`` and
    ``[32, 32]`` do. (How many axes a setting has is checked against the model, not here.)

    Raises:
        TypeError: ``a`` or ``b`` neither an int nor a sequence of ints.
    """
    def edges(name: str, size: int | Sequence[int]) -> tuple[int, ...]:
        sizes = _window_sizes(size)
        if sizes is None:
            raise TypeError(f"{name} must be an int or a sequence of ints (a window), got {size!r}")
        return sizes[:1] if len(set(sizes)) == 1 else sizes

    return edges("a", a) == edges("b", b)


@dataclasses.dataclass
class InferenceConfig(ConfigBase):
    """Tri-planar (2.5D) or sliding-window (3D) inference and post-processing.

    Attributes:
        patch_size: window size, one edge or one per spatial axis (``[h, w]`` of the slices of a 2.5D model,
            ``[d, h, w]`` of a 3D model's windows); the paper uses the training crop size.
        overlap: window overlap (paper: 0.5).
        blend: ``"constant"`` or ``"gaussian"`` window weighting.
        planes: planes averaged by tri-planar inference.
        batch_size: windows per forward pass of a 2.5D/2D model; a 3D model takes ``batch_size // 8`` windows
            per pass (at least 1): its windows are volumes, far larger than a slice's.
        flip_tta: flip test-time augmentation.
        crop_to_brain: lay each slice's windows over its brain bounding box (tri-planar; default) instead of
            the whole slice.
        threshold: probability threshold of the baseline mask (and of the progression masks unless
            ``progression_threshold`` is set).
        progression_threshold: probability threshold of the progression masks; ``None``: ``threshold``.
            ``longiseg tune`` sets it (0.3.1; before, it set ``threshold``, which thresholds both heads).
        min_lesion_mm3: connected components below this volume are removed (paper: 27 MS, 50 glioma).
        restrict: ``"none"``, ``"progression"`` or ``"both"``: masks restricted to the brain mask.
        progression_outside_baseline: progression masks exclude the predicted baseline lesion mask before
            small components are removed (a voxel that is lesion at baseline is not new; see
            :func:`~longiseg.inferers.postprocessing.postprocess_heads`). ``False``: the progression head's
            mask as it is (longiseg 0.2).
    """

    patch_size: int | list[int] = 128
    overlap: float = 0.5
    blend: str = "constant"
    planes: list[str] = dataclasses.field(default_factory=lambda: list(PLANES))
    batch_size: int = 16
    flip_tta: bool = False
    crop_to_brain: bool = True
    threshold: float = 0.5
    progression_threshold: float | None = None
    min_lesion_mm3: float = 27.0
    restrict: str = "progression"
    progression_outside_baseline: bool = True

    @property
    def progression_cut(self) -> float:
        """The threshold the progression masks are made with: ``progression_threshold``, else ``threshold``."""
        return self.threshold if self.progression_threshold is None else self.progression_threshold

    def __post_init__(self) -> None:
        self.coerce_fields()  # built directly, checked as when read from a file
        # checked when the experiment is read, so a run never records settings its checkpoint cannot predict with
        check_window_setting(self.patch_size, "InferenceConfig", "patch_size")
        require(self.batch_size >= 1, "InferenceConfig", f"batch_size must be >= 1, got {self.batch_size}")
        require(self.blend in BLEND_MODES, "InferenceConfig", f"blend must be one of {BLEND_MODES}, got {self.blend!r}")
        require(self.restrict in RESTRICT_OPTIONS, "InferenceConfig",
                f"restrict must be one of {RESTRICT_OPTIONS}, got {self.restrict!r}")
        require(0.0 <= self.overlap < 1.0, "InferenceConfig", f"overlap must be in [0, 1), got {self.overlap}")
        require(0.0 < self.threshold < 1.0, "InferenceConfig", f"threshold must be in (0, 1), got {self.threshold}")
        require(self.progression_threshold is None or 0.0 < self.progression_threshold < 1.0, "InferenceConfig",
                f"progression_threshold must be None or in (0, 1), got {self.progression_threshold}")
        require(0 <= self.min_lesion_mm3 < float("inf"), "InferenceConfig",
                f"min_lesion_mm3 must be a finite volume >= 0, got {self.min_lesion_mm3}")
        check_planes(self.planes, "InferenceConfig")


def make_inferer(spec: ModelSpec, cfg: InferenceConfig, *, device: str | torch.device | None = None,
                 progress: bool = True) -> TriplanarInferer | SlidingWindowInferer3D:
    """The inferer of a model's dimensionality (``spec.dim``): tri-planar for 2.5D/2D, a 3D sliding window for 3D.

    The one place where a model's dimensionality picks its inference.

    Raises:
        TypeError: ``spec`` is not a :class:`~longiseg.spec.ModelSpec` or ``cfg`` not an :class:`InferenceConfig`
            (a dict of settings: ``InferenceConfig.from_dict(d)``).
    """
    check_instance("spec", spec, ModelSpec, "a ModelSpec (model.spec)")
    check_instance("cfg", cfg, InferenceConfig, "an InferenceConfig (from a dict d: InferenceConfig.from_dict(d))")
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
        TypeError: ``model`` is not an ``nn.Module``, ``cfg`` neither ``None`` nor an :class:`InferenceConfig`.
    """
    check_instance("model", model, nn.Module, "an nn.Module")
    if cfg is not None:
        check_instance("cfg", cfg, InferenceConfig, "an InferenceConfig (from a dict d: InferenceConfig.from_dict(d))")
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


def prediction_defaults(model: nn.Module, *, progress: bool = False, inferer: bool = True) -> dict[str, Any]:
    """How ``model`` predicts unless told otherwise: the inferer and the post-processing settings of
    :func:`~longiseg.inferers.predict.predict_case` that its spec records (``inferer``, ``threshold``,
    ``progression_threshold``, ``min_volume_mm3``, ``restrict_to_brain``, ``progression_outside_baseline``), as
    ``longiseg predict`` uses them; ``{}`` for a model that records no inference settings (one not trained with
    ``longiseg train``, or built without :func:`longiseg.build_model`).

    Args:
        model: a model (wrapped or not) whose ``spec`` records inference settings.
        progress: whether the recorded inferer shows a progress bar.
        inferer: ``False`` leaves the inferer out (for a caller who brings its own): then neither is it built
            nor is the recorded window checked against the model.

    Raises:
        ValueError: ``inferer`` is true and the recorded window does not fit the model (:func:`inference_settings`).
    """
    check_instance("model", model, nn.Module, "an nn.Module")
    check_bool("progress", progress)
    check_bool("inferer", inferer)
    spec = getattr(unwrap_model(model), "spec", None)
    if not isinstance(spec, ModelSpec) or not spec.inference:
        return {}
    cfg = inference_settings(model) if inferer else InferenceConfig.from_dict(spec.inference)
    defaults = {"inferer": make_inferer(spec, cfg, progress=progress)} if inferer else {}
    # the recorded progression threshold as recorded: None (untuned) follows a threshold given over these defaults
    return {**defaults, "threshold": cfg.threshold, "progression_threshold": cfg.progression_threshold,
            "min_volume_mm3": cfg.min_lesion_mm3, "restrict_to_brain": cfg.restrict,
            "progression_outside_baseline": cfg.progression_outside_baseline}


def voxel_size_mismatch(model: nn.Module, spacing: Sequence[float]) -> tuple[float, ...] | None:
    """The voxel size ``model`` was trained on, if ``spacing`` differs from it; else ``None``.

    ``longiseg train`` records the median voxel size of its training cases in ``spec.preprocessing
    ["voxel_size_mm"]``, sorted (smallest first), so that the comparison does not depend on the orientation of
    the array axes. The library does not resample (``longiseg register --spacing`` does): a case whose sorted
    voxel size differs by more than :data:`VOXEL_SIZE_RTOL` along some axis is predicted as it is, and
    :func:`~longiseg.inferers.predict.predict_case` warns about it.

    Args:
        model: a model (wrapped or not); one whose spec records no voxel size never mismatches.
        spacing: the case's voxel size in mm, three positive numbers along its array axes.

    Returns:
        The recorded sorted voxel size ``(s0, s1, s2)`` in mm, or ``None`` when ``spacing`` agrees with it or
        nothing is recorded.

    Raises:
        ValueError, TypeError: ``spacing``, or the voxel size the spec records, is not three positive finite
            numbers.
    """
    check_instance("model", model, nn.Module, "an nn.Module")
    case = sorted(as_spacing(spacing, 3).tolist())
    spec = getattr(unwrap_model(model), "spec", None)
    trained = (spec.preprocessing or {}).get("voxel_size_mm") if isinstance(spec, ModelSpec) else None
    if trained is None:
        return None
    trained = tuple(sorted(as_spacing(trained, 3, "model.spec.preprocessing['voxel_size_mm']").tolist()))
    if all(abs(c - t) <= VOXEL_SIZE_RTOL * t for c, t in zip(case, trained)):
        return None
    return trained
