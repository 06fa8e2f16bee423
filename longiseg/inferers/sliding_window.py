"""Sliding-window building blocks and the 3D sliding-window inferer.

The pieces shared by :class:`~longiseg.inferers.triplanar.TriplanarInferer` (2D windows over the slices of
three planes) and :class:`SlidingWindowInferer3D` (3D windows over the volume) live here:

* :func:`window_starts` -- where the windows of one axis start,
* :func:`blend_weights` -- the per-window blending weights (constant or Gaussian),
* :func:`predict_probabilities` -- one batch through a longitudinal model: logits to sigmoid probabilities,
  optional flip test-time augmentation, AMP on CUDA,
* :func:`prepare_case` / :func:`split_probabilities` -- validation of a case ``(T, C, D, H, W)`` and the split
  of the stacked probability channels back into baseline and progression.

Probability channels are stacked as ``(B, K * T, *S)``: the ``K`` baseline channels first, then the ``K``
channels of follow-up 1, follow-up 2, ... (``K`` outputs per head, 1 for binary masks).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn as nn

from longiseg.networks.inputs import check_spatial_size, parameter_dtype
from longiseg.networks.output import LongitudinalOutput
from longiseg.networks.wrappers import eval_mode, unwrap_model
from longiseg.spec import ModelSpec
from longiseg.utils.device import factory_device
from longiseg.utils.device import resolve_device as _resolve_torch_device
from longiseg.utils.validation import (
    check_binary,
    check_bool,
    check_finite,
    check_int_or_sequence,
    check_int_sequence,
    check_ndim,
    check_positive_float,
    check_positive_int,
    check_same_shape,
    check_tensor,
    check_timepoints,
)

__all__ = [
    "BLEND_MODES",
    "window_starts",
    "blend_weights",
    "flip_combinations",
    "predict_probabilities",
    "prepare_case",
    "check_model_fits",
    "split_probabilities",
    "brain_or_foreground",
    "resolve_device",
    "SlidingWindowInferer3D",
]

BLEND_MODES = ("constant", "gaussian")

# Smallest Gaussian blending weight: keeps every voxel of a computed window at a positive weight.
_MIN_GAUSSIAN_WEIGHT = 1e-6


def window_starts(size: int, window: int, overlap: float) -> list[int]:
    """Start offsets of windows of length ``window`` that cover ``[0, size)`` with at least ``overlap``.

    The number of windows is ``ceil((size - window) / step) + 1`` with ``step = max(1, floor(window *
    (1 - overlap)))``, and the starts are spread evenly from ``0`` to ``size - window`` (rounded to the
    nearest integer), so the first window touches the start, the last one the end, and neighbours overlap
    by at least the requested fraction. An axis shorter than the window gets one window at ``0`` (the
    caller pads it).

    Example: ``window_starts(9, 4, 0.5) == [0, 2, 3, 5]``; ``window_starts(193, 128, 0.5) == [0, 33, 65]``.

    Args:
        size: length of the axis.
        window: window length.
        overlap: fraction in ``[0, 1)``.

    Returns:
        Sorted start offsets.
    """
    size, window = check_positive_int("size", size), check_positive_int("window", window)  # (NumPy ints as ints)
    _check_overlap(overlap)
    span = size - window
    if span <= 0:
        return [0]
    # 10 * (1 - 0.8) is 1.9999999999999996 in floating point: floor it as the exact product it stands for
    step = max(1, int(math.floor(window * (1.0 - overlap) + 1e-9)))
    n = math.ceil(span / step) + 1
    # round(i * span / (n - 1)) in exact integer arithmetic (halves round up)
    return [(2 * i * span + (n - 1)) // (2 * (n - 1)) for i in range(n)]


def _check_overlap(overlap: float) -> float:
    if isinstance(overlap, bool) or not isinstance(overlap, (int, float, np.floating)):
        raise TypeError(f"overlap must be a float in [0, 1), got {type(overlap).__name__}")
    if not 0.0 <= float(overlap) < 1.0:
        raise ValueError(f"overlap must lie in [0, 1), got {overlap}")
    return float(overlap)


def _check_blend(blend: str) -> str:
    if blend not in BLEND_MODES:
        raise ValueError(f"blend must be one of {BLEND_MODES}, got {blend!r}")
    return blend


def blend_weights(
    window: Sequence[int],
    blend: str = "constant",
    *,
    sigma_scale: float = 0.125,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Blending weights of one window, shape ``window`` (e.g. ``(h, w)`` or ``(d, h, w)``), float32.

    ``"constant"``: all ones (plain average of overlapping windows). ``"gaussian"``: the separable product of
    1-D Gaussians ``exp(-(i - (n - 1) / 2)^2 / (2 (sigma_scale * n)^2))``, each scaled to a maximum of 1, and
    clamped below at ``1e-6`` so that every voxel of a window keeps a positive weight.

    Raises:
        TypeError: ``window`` is not a sequence of ints, or ``sigma_scale`` not a number.
        ValueError: for an unknown ``blend``, no window size or one below 1, a ``sigma_scale`` that is not finite
            and > 0, or a ``device`` this machine does not have.
    """
    _check_blend(blend)
    sizes = check_int_sequence("window", window, what="window size per spatial axis")
    if not sizes:  # a 0-d weight of 1 would blend nothing
        raise ValueError("window must hold one size per spatial axis, got none")
    device = factory_device(device)
    if blend == "constant":
        return torch.ones(sizes, dtype=torch.float32, device=device)
    sigma_scale = check_positive_float("sigma_scale", sigma_scale)
    out = torch.ones((), dtype=torch.float64)
    for n in sizes:
        i = torch.arange(n, dtype=torch.float64)
        g = torch.exp(-((i - (n - 1) / 2.0) ** 2) / (2.0 * (sigma_scale * n) ** 2))
        out = out[..., None] * (g / g.max())
    return out.clamp_min(_MIN_GAUSSIAN_WEIGHT).to(torch.float32).to(device)


def flip_combinations(dims: Sequence[int]) -> list[tuple[int, ...]]:
    """Every subset of ``dims`` (the identity ``()`` first): the flips of flip test-time augmentation."""
    dims = tuple(dims)
    return [c for r in range(len(dims) + 1) for c in itertools.combinations(dims, r)]


def _stack_output(out: object, batch: int, num_timepoints: int, spatial: tuple[int, ...]) -> torch.Tensor:
    """``LongitudinalOutput`` -> logits ``(B, K * T, *S)`` after checking every shape."""
    if not isinstance(out, LongitudinalOutput):
        raise TypeError(f"the model must return a LongitudinalOutput, got {type(out).__name__}")
    b, k, *sp = out.baseline.shape
    pb, tm1 = out.progression.shape[:2]
    if b != batch or tuple(sp) != spatial or tm1 != num_timepoints - 1:
        raise ValueError(
            f"model output does not match its input: expected baseline (B={batch}, K, *{spatial}) and "
            f"progression (B, T-1={num_timepoints - 1}, K, *{spatial}), got {tuple(out.baseline.shape)} and "
            f"{tuple(out.progression.shape)}"
        )
    prog = out.progression.reshape(b, tm1 * k, *sp)
    return torch.cat([out.baseline, prog], dim=1)


def _check_model(model: object) -> nn.Module:
    """Return ``model`` if it is an ``nn.Module``, else raise ``TypeError`` naming ``model``."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module (a registry model), got {type(model).__name__}")
    return model


def _check_flips(flips: object, spatial_dims: int) -> list[tuple[int, ...]]:
    """``flips`` as a list of tuples after checking that it is a non-empty sequence of tuples of distinct
    negative spatial dims (``-spatial_dims .. -1``); ``()`` is the identity."""
    if isinstance(flips, (str, bytes)) or not isinstance(flips, Sequence) or not flips:
        raise ValueError(
            f"flips must be a non-empty sequence of tuples of negative spatial dims (((),) for no "
            f"flip), got {flips!r}"
        )
    allowed = tuple(range(-spatial_dims, 0))
    out = []
    for dims in flips:
        if isinstance(dims, (str, bytes)) or not isinstance(dims, Sequence):
            raise TypeError(
                f"flips must hold tuples of negative spatial dims, got {type(dims).__name__} {dims!r}"
            )
        bad = [
            d for d in dims if isinstance(d, bool) or not isinstance(d, (int, np.integer)) or d not in allowed
        ]
        if bad or len(set(dims)) != len(dims):
            raise ValueError(
                f"flips must hold tuples of distinct negative spatial dims, each one of {allowed} "
                f"for {spatial_dims} spatial dims (a non-negative dim would flip B, T or C), got "
                f"{tuple(dims)!r}"
            )
        out.append(tuple(int(d) for d in dims))
    return out


def predict_probabilities(
    model: nn.Module, x: torch.Tensor, *, flips: Sequence[tuple[int, ...]] = ((),), amp: bool = False
) -> torch.Tensor:
    """Run ``model`` on one batch and return sigmoid probabilities, averaged over ``flips``.

    Args:
        model: a registry model mapping ``(B, T, C, *S)`` to a ``LongitudinalOutput`` of logits.
        x: input batch ``(B, T, C, *S)`` (``S`` of 2 or 3 sizes) on the model's device.
        flips: a non-empty sequence of tuples of distinct negative spatial dims to flip (``-len(S) .. -1``;
            ``()`` = no flip). The input is flipped, the model run, the output flipped back; the probabilities
            of all flips are averaged.
        amp: run the model under ``torch.autocast`` (float16) -- only used when ``x`` is on CUDA.

    Returns:
        Probabilities ``(B, K * T, *S)`` float32 (baseline channels first, then follow-ups in order).

    Raises:
        TypeError: ``model`` is not an ``nn.Module``, ``x`` not a floating-point tensor or ``amp`` not a bool.
        ValueError: ``x`` is not ``(B, T, C, *S)`` with 2 or 3 spatial dims, or ``flips`` is empty or names a dim
            that is not a negative spatial dim.
    """
    _check_model(model)
    check_tensor("x", x)
    check_ndim("x", x, (5, 6), "(B, T, C, *S)")
    if not x.is_floating_point():  # an int or bool batch was cast silently, a complex one lost its imaginary part
        raise TypeError(f"x must be a floating-point tensor (images), got dtype {x.dtype}")
    flips = _check_flips(flips, x.ndim - 3)
    batch, t = x.shape[:2]
    spatial = tuple(x.shape[3:])
    use_amp = check_bool("amp", amp) and x.device.type == "cuda"
    dtype = parameter_dtype(model)
    if not use_amp and dtype is not None and dtype.is_floating_point and x.dtype != dtype:
        x = x.to(dtype)  # cases arrive as float32; a float64 (or half) model is fed its own dtype
    total: torch.Tensor | None = None
    for dims in flips:
        xi = torch.flip(x, dims) if dims else x
        with torch.autocast(device_type=x.device.type, dtype=torch.float16, enabled=use_amp):
            out = model(xi)
        prob = torch.sigmoid(_stack_output(out, batch, t, spatial).float())
        if dims:
            prob = torch.flip(prob, dims)
        if total is not None:
            _same_channels(prob, total.shape[1])
            prob = total.add_(prob)
        total = prob
    assert total is not None
    if len(flips) > 1:
        total = total.div_(len(flips))
    return total


def _same_channels(prob: torch.Tensor, seen: int | None) -> int:
    """The channel count of a batch of probabilities ``(B, K * T, *S)``, checked against the count ``seen``
    before (``None``: the first batch).

    Raises:
        ValueError: the model returned another number of channels than for an earlier batch (or flip).
    """
    if seen is not None and prob.shape[1] != seen:
        raise ValueError(
            f"the model returned {prob.shape[1]} probability channels for one batch and {seen} for another; "
            "it must return the same number of output channels for every input"
        )
    return int(prob.shape[1])


def _native(arr: np.ndarray) -> np.ndarray:
    """``arr`` C-contiguous in native byte order (NIfTI files may be big-endian; torch refuses those)."""
    return np.ascontiguousarray(arr, dtype=arr.dtype.newbyteorder("="))


def prepare_case(
    images: torch.Tensor | np.ndarray, brain_mask: torch.Tensor | np.ndarray | None = None
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Validate a case and return it as a CPU float32 tensor ``(T, C, D, H, W)`` plus a bool brain mask.

    Args:
        images: ``(T, C, D, H, W)`` array or tensor (``T >= 2`` timepoints, ``C`` modalities).
        brain_mask: optional binary ``(D, H, W)`` mask.

    Raises:
        TypeError: if ``images`` is neither an ndarray nor a tensor, or holds complex (or non-numeric) values.
        ValueError: wrong rank, fewer than 2 timepoints, NaN/inf values, or a brain mask that is not binary
            or does not match the spatial shape.
    """
    if isinstance(images, np.ndarray):
        if images.dtype.kind not in "biuf":
            raise TypeError(f"images must hold real numbers (bool, integer or float dtype), got dtype {images.dtype}")
        images = torch.from_numpy(_native(images))
    if not isinstance(images, torch.Tensor):
        raise TypeError(f"images must be a numpy array or torch.Tensor, got {type(images).__name__}")
    if images.is_complex():
        raise TypeError(f"images must hold real numbers (bool, integer or float dtype), got dtype {images.dtype}")
    check_ndim("images", images, 5, "(T, C, D, H, W)")
    check_timepoints("images.shape[0] (timepoints)", int(images.shape[0]))
    if images.shape[1] < 1 or min(images.shape[2:]) < 1:
        raise ValueError(f"images must have at least one channel and voxel, got shape {tuple(images.shape)}")
    images = images.detach().to("cpu", torch.float32)
    check_finite("images", images)
    mask = None
    if brain_mask is not None:
        if isinstance(brain_mask, np.ndarray):
            brain_mask = torch.from_numpy(_native(brain_mask))
        if not isinstance(brain_mask, torch.Tensor):
            raise TypeError(
                f"brain_mask must be a numpy array or torch.Tensor, got {type(brain_mask).__name__}"
            )
        check_ndim("brain_mask", brain_mask, 3, "(D, H, W)")
        check_same_shape("brain_mask", brain_mask, "images spatial shape (D, H, W)", images[0, 0])
        check_binary("brain_mask", brain_mask)
        mask = brain_mask.detach().to("cpu").bool()
    return images, mask


def brain_or_foreground(images: torch.Tensor, brain_mask: torch.Tensor | None) -> torch.Tensor:
    """The brain mask inference and post-processing use: ``brain_mask`` when given, else the voxels that are
    non-zero in any timepoint or channel of ``images`` ``(T, C, D, H, W)``. Returns a bool ``(D, H, W)`` tensor."""
    if brain_mask is not None:
        return brain_mask.bool()
    return (images != 0).any(dim=1).any(dim=0)


def split_probabilities(prob: torch.Tensor, num_timepoints: int) -> tuple[np.ndarray, np.ndarray]:
    """Split stacked probabilities ``(K * T, *S)`` into baseline and progression numpy arrays.

    Returns:
        ``baseline (*S)`` and ``progression (T-1, *S)`` when ``K == 1``; ``baseline (K, *S)`` and
        ``progression (T-1, K, *S)`` when ``K > 1``. Both float32.

    Raises:
        ValueError: if the channels are not a multiple of ``num_timepoints`` or any value is NaN/inf (one
            check per case: a model fed intensities it was never trained on overflows).
    """
    ch, *spatial = prob.shape
    if ch % num_timepoints:
        raise ValueError(f"{ch} probability channels is not a multiple of T={num_timepoints}")
    bad = int((~torch.isfinite(prob)).sum())
    if bad:
        raise ValueError(
            f"the model produced NaN/inf probabilities at {bad} of {prob.numel()} voxels: the input intensities "
            "are probably far outside the range the model was trained on (normalise them as in training, e.g. "
            "z-score per case, as longiseg predict does)"
        )
    k = ch // num_timepoints
    arr = prob.detach().cpu().numpy().astype(np.float32, copy=False)
    base = arr[:k]
    prog = arr[k:].reshape(num_timepoints - 1, k, *spatial)
    if k == 1:
        return base[0], prog[:, 0]
    return base, prog


def _check_device(device: torch.device | str | None) -> torch.device | None:
    """An inferer's ``device`` argument: ``None`` (the model's device) or the device checked by
    :func:`longiseg.utils.device.resolve_device` (``"auto"``, ``"cpu"``, ``"cuda:N"``, ``"mps"``...).

    Raises:
        TypeError, ValueError: naming ``device``, for a device that is not a string or ``torch.device``, is
            unknown, or that this machine does not have.
    """
    return None if device is None else _resolve_torch_device(device)


def check_model_fits(model: nn.Module, images: torch.Tensor, window: Sequence[int], window_name: str, *,
                     dims: Sequence[str], other: str) -> None:
    """Refuse, before any window runs, a registered model that cannot take this case or window.

    A model that carries a :class:`~longiseg.spec.ModelSpec` (every registry model, also inside DDP or
    ``torch.compile`` wrappers) is checked against the inferer and the case: its ``dim`` (one of ``dims``,
    else the message names ``other``, the inferer for it), its ``in_channels`` and ``num_timepoints``
    against ``images (T, C, D, H, W)``, and ``window`` against its downsampling
    (:func:`~longiseg.networks.inputs.check_spatial_size`, naming ``window_name``). Without these checks
    the model's own input check fails inside the first window batch, naming a patch batch's shape that the
    caller never passed. A model without a spec is left to that check.

    Raises:
        TypeError: ``model`` is not an ``nn.Module``.
        ValueError: naming the model, ``images`` or ``window_name`` and what was expected.
    """
    inner = unwrap_model(_check_model(model))
    spec = getattr(inner, "spec", None)
    if not isinstance(spec, ModelSpec):
        return
    if spec.dim not in dims:
        raise ValueError(f"model {spec.name!r} is a {spec.dim} model; this inferer runs {' or '.join(dims)} "
                         f"models: use {other}")
    t, c = int(images.shape[0]), int(images.shape[1])
    if spec.in_channels is not None and c != spec.in_channels:
        raise ValueError(f"images must have C={spec.in_channels} channels (dim 1 of (T, C, D, H, W): the model "
                         f"{spec.name!r} takes in_channels={spec.in_channels}), got shape {tuple(images.shape)}")
    if spec.num_timepoints is not None and t != spec.num_timepoints:
        raise ValueError(f"images must have T={spec.num_timepoints} timepoints (dim 0 of (T, C, D, H, W): the "
                         f"model {spec.name!r} was built for num_timepoints={spec.num_timepoints}), got shape "
                         f"{tuple(images.shape)}")
    check_spatial_size(inner, tuple(window), window_name)


def resolve_device(model: nn.Module, device: torch.device | str | None) -> torch.device:
    """``device`` if given (checked by :func:`_check_device`; the model is moved there), else the device
    of the model's first parameter.

    Raises:
        TypeError: ``model`` is not an ``nn.Module``; TypeError/ValueError naming ``device`` for a bad device.
    """
    _check_model(model)
    dev = _check_device(device)
    if dev is not None:
        model.to(dev)
        return dev
    for t in itertools.chain(model.parameters(), model.buffers()):
        return t.device
    return torch.device("cpu")


def _normalise_window(name: str, size: int | Sequence[int], ndim: int) -> tuple[int, ...]:
    """One window size per axis from an int or ``ndim`` ints (a list, tuple or 1-D array)."""
    return check_int_or_sequence(name, size, ndim, what="a window size per axis")


class SlidingWindowInferer3D:
    """3D sliding-window inference of a 3D registry model over a case ``(T, C, D, H, W)``.

    Windows of ``roi_size`` with ``overlap`` are blended with MONAI's ``sliding_window_inference`` (MONAI is
    the optional ``baselines`` extra). The predictor returns sigmoid probabilities, so the blended result is
    the (weighted) average of the windows' probabilities, not of their logits. Volumes smaller than the window
    are padded with zeros and cropped back.

    Args:
        roi_size: window ``(d, h, w)`` or one int for all axes.
        overlap: window overlap in ``[0, 1)`` (the paper uses 0.5).
        blend: ``"constant"`` or ``"gaussian"`` (MONAI's blend modes).
        batch_size: windows per forward pass.
        flip_tta: average the probabilities of all 8 flips of the three spatial axes.
        device: device of the model (``None``: the model's current device; else ``"auto"``, ``"cpu"``,
            ``"cuda"``, ``"cuda:N"``, ``"mps"`` or a ``torch.device``, checked here to exist on this machine).
            Outputs are assembled on the CPU.
        amp: float16 autocast, CUDA only.
        progress: show MONAI's tqdm progress bar.

    Raises:
        TypeError, ValueError: naming the argument, for an invalid setting (a ``device`` that is unknown or
            that this machine does not have included).
    """

    def __init__(
        self,
        roi_size: int | Sequence[int] = 128,
        overlap: float = 0.5,
        blend: str = "constant",
        batch_size: int = 1,
        flip_tta: bool = False,
        device: torch.device | str | None = None,
        amp: bool = True,
        progress: bool = True,
    ) -> None:
        self.roi_size = _normalise_window("roi_size", roi_size, 3)
        self.overlap = _check_overlap(overlap)
        self.blend = _check_blend(blend)
        self.batch_size = check_positive_int("batch_size", batch_size)
        self.flip_tta = check_bool("flip_tta", flip_tta)
        self.device = _check_device(device)
        self.amp = check_bool("amp", amp)
        self.progress = check_bool("progress", progress)

    def __call__(
        self,
        model: nn.Module,
        images: torch.Tensor | np.ndarray,
        brain_mask: torch.Tensor | np.ndarray | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Predict one case.

        Args:
            model: 3D model ``(B, T, C, D, H, W) -> LongitudinalOutput`` of logits.
            images: ``(T, C, D, H, W)``.
            brain_mask: accepted for interface parity with the tri-planar inferer and validated, but every
                window is computed (3D windows are not skipped).

        Returns:
            ``baseline_prob (D, H, W)`` and ``progression_prob (T-1, D, H, W)`` float32 (a ``K`` axis after
            the timepoint axis when the model has ``K > 1`` outputs per head).
        """
        try:
            from monai.inferers import sliding_window_inference
        except ImportError as err:  # pragma: no cover - exercised by monkeypatching in the tests
            raise ImportError(
                "SlidingWindowInferer3D needs MONAI; install it with `pip install longiseg[baselines]` "
                "(or `pip install monai`)"
            ) from err
        imgs, _ = prepare_case(images, brain_mask)
        check_model_fits(model, imgs, self.roi_size, "roi_size", dims=("3D",), other="TriplanarInferer")
        t, c = imgs.shape[:2]
        dev = resolve_device(model, self.device)
        flips = flip_combinations((-3, -2, -1)) if self.flip_tta else [()]

        channels: int | None = None  # K * T, of the first window batch

        def predictor(x: torch.Tensor) -> torch.Tensor:
            nonlocal channels
            x = x.reshape(x.shape[0], t, c, *x.shape[2:])
            prob = predict_probabilities(model, x, flips=flips, amp=self.amp)
            channels = _same_channels(prob, channels)
            return prob

        with eval_mode(model), torch.no_grad():
            prob = sliding_window_inference(
                imgs.reshape(1, t * c, *imgs.shape[2:]),
                roi_size=self.roi_size,
                sw_batch_size=self.batch_size,
                predictor=predictor,
                overlap=self.overlap,
                mode=self.blend,
                sw_device=dev,
                device=torch.device("cpu"),
                progress=self.progress,
            )
        prob = torch.as_tensor(prob)[0].float()
        return split_probabilities(prob, t)
