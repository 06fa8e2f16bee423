"""Input conversion of binary masks and voxel spacings, shared by the metrics and the lesion labelling.

Every metric (and :mod:`longiseg.data.lesions`) accepts NumPy arrays or torch tensors holding a binary mask of shape ``(D, H, W)`` (or
``(H, W)`` where a 2D version makes sense) and a spacing in millimetres, one value per axis. These helpers
turn them into ``bool`` arrays and a ``float64`` spacing vector, raising a clear ``TypeError``/``ValueError``
that names the offending argument.
"""

from __future__ import annotations

import reprlib
from collections.abc import Sequence

import numpy as np
import torch

from longiseg.utils.validation import (
    as_numpy,
    check_binary,
    check_finite,
    check_ndim,
    check_positive_int,
    check_same_shape,
    check_sequence,
    check_spatial_dims,
)

__all__ = ["MaskLike", "as_mask", "as_mask_pair", "as_spacing", "foreground_slices", "check_followup_masks",
           "format_spacing"]

MaskLike = np.ndarray | torch.Tensor


def as_mask(name: str, x: MaskLike, ndim: int | Sequence[int] = (2, 3)) -> np.ndarray:
    """Return ``x`` as a ``bool`` NumPy array after checking type, rank, finiteness and binarity.

    Args:
        name: argument name used in error messages.
        x: binary mask, shape ``(D, H, W)`` or ``(H, W)``; dtype bool, integer or float with values in {0, 1}.
        ndim: accepted rank(s).

    Returns:
        ``bool`` array of the same shape (a view where possible, never a copy of a bool array).

    Raises:
        TypeError: ``x`` is not an array or tensor (a NumPy masked array neither: its masked voxels would count
            as their stored values), or its dtype is not bool, integer or real floating.
        ValueError: another rank than ``ndim``, an empty dimension, NaN/inf, or values other than 0 and 1.
    """
    if isinstance(x, torch.Tensor):
        arr = as_numpy(name, x)  # bfloat16/float8 (a thresholded output under autocast) as float32: exact
    elif isinstance(x, np.ma.MaskedArray):  # its hidden entries count as their stored values in every score
        raise TypeError(f"{name} must be a plain numpy.ndarray, got a masked array; pass {name}.filled(0) (masked "
                        "voxels as background) or its data")
    elif isinstance(x, np.ndarray):
        arr = x
    else:
        raise TypeError(f"{name} must be a numpy.ndarray or torch.Tensor binary mask, got {type(x).__name__}")
    ndim = _ranks(ndim)
    if arr.dtype == object or not (arr.dtype == bool or np.issubdtype(arr.dtype, np.integer)
                                   or np.issubdtype(arr.dtype, np.floating)):
        raise TypeError(f"{name} must have a boolean, integer or real floating dtype, got {arr.dtype}")
    layout = "(D, H, W)" if ndim == (3,) else "(D, H, W) or (H, W)"
    check_ndim(name, arr, ndim, layout)
    if not arr.size:  # a mask of nothing: every score of it would be a convention, not a measurement
        raise ValueError(f"{name} must have no empty dimension, got shape {tuple(arr.shape)}")
    if arr.dtype == bool:
        # a bool array viewed from other bytes (u8.view(bool)) may hold bytes > 1, which NumPy reads as True
        # but byte-level code (cc3d) as distinct labels: normalise those (one pass; no copy when clean)
        return arr if arr.view(np.uint8).max() <= 1 else arr.view(np.uint8) != 0
    if not _is_binary(arr):
        check_finite(name, arr)
        check_binary(name, arr)  # raises with a message that shows offending values
    return arr != 0


def _ranks(ndim: int | Sequence[int]) -> tuple[int, ...]:
    """``ndim`` of :func:`as_mask` as a non-empty tuple of ranks, each 2 or 3."""
    ranks = ndim if isinstance(ndim, Sequence) and not isinstance(ndim, str) else (ndim,)
    if not ranks:
        raise ValueError("ndim must be 2, 3 or a sequence of them, got an empty sequence")
    return tuple(check_spatial_dims("ndim", r) for r in ranks)


def _is_binary(arr: np.ndarray) -> bool:
    """Fast {0, 1} check: min/max for integers, equality tests for floats (NaN fails both)."""
    if np.issubdtype(arr.dtype, np.integer):
        return bool(arr.max() <= 1) and (np.issubdtype(arr.dtype, np.unsignedinteger) or bool(arr.min() >= 0))
    return bool(np.all((arr == 0) | (arr == 1)))


def as_mask_pair(
    pred: MaskLike, gt: MaskLike, ndim: int | Sequence[int] = (2, 3), names: tuple[str, str] = ("pred", "gt")
) -> tuple[np.ndarray, np.ndarray]:
    """Convert a prediction and a reference mask with :func:`as_mask` and check they share a shape."""
    if len(check_sequence("names", names, str, "a str")) != 2:
        raise ValueError(f"names must be two argument names (pred, gt), got {names!r}")
    p = as_mask(names[0], pred, ndim)
    g = as_mask(names[1], gt, ndim)
    check_same_shape(names[0], p, names[1], g)
    return p, g


def format_spacing(spacing: Sequence[float] | np.ndarray) -> str:
    """A voxel size for messages and tables: ``(4.0, 4.0, 10.0)`` as ``"4x4x10"`` (4 significant digits)."""
    return "x".join(f"{float(v):.4g}" for v in spacing)


def as_spacing(
    spacing: float | Sequence[float] | np.ndarray | None, ndim: int, name: str = "spacing"
) -> np.ndarray:
    """Return the voxel spacing in mm as a ``(ndim,)`` float64 array.

    Args:
        spacing: one positive finite value per axis (same order as the array axes), a single value for
            isotropic voxels, or ``None`` for 1 mm isotropic.
        ndim: number of spatial axes of the masks.
        name: argument name used in error messages.
    """
    ndim = check_positive_int("ndim", ndim)
    if spacing is None:
        return np.ones(ndim, dtype=np.float64)
    if isinstance(spacing, torch.Tensor):
        spacing = spacing.detach().cpu().numpy()
    if isinstance(spacing, (str, bytes)):
        raise TypeError(f"{name} must be a number or a sequence of numbers, got {type(spacing).__name__}")
    try:
        values = np.asarray(spacing, dtype=object).ravel()
        sp = np.asarray(spacing, dtype=np.float64)
    except (TypeError, ValueError) as err:
        raise TypeError(f"{name} must be a number or a sequence of {ndim} numbers, got "
                        f"{reprlib.repr(spacing)}") from err
    if any(isinstance(v, (bool, np.bool_)) for v in values):  # True is not "1 mm"
        raise TypeError(f"{name} must hold millimetre values, got a boolean in {reprlib.repr(spacing)}")
    if any(isinstance(v, (str, bytes, np.str_, np.bytes_)) for v in values):  # NumPy would parse "1" as 1.0
        raise TypeError(f"{name} must hold numbers, got a string in {reprlib.repr(spacing)}")
    if any(v is None for v in values):  # NumPy would read None as NaN
        raise TypeError(f"{name} must hold numbers, got None in {reprlib.repr(spacing)}")
    if sp.ndim == 0:
        sp = np.full(ndim, float(sp))
    if sp.shape != (ndim,):
        raise ValueError(
            f"{name} must have {ndim} values (one per axis), got "
            f"{tuple(np.atleast_1d(sp).tolist()) if sp.size <= 8 else f'an array of shape {sp.shape}'}"
        )
    if not np.all(np.isfinite(sp)) or np.any(sp <= 0):
        raise ValueError(f"{name} must hold positive finite millimetre values, got {tuple(sp.tolist())}")
    return sp


def foreground_slices(*masks: np.ndarray, margin: int = 0) -> tuple[slice, ...] | None:
    """Bounding box of the union of same-shape ``bool`` masks, grown by ``margin`` and clipped to the array.

    Returns ``None`` when all masks are empty. Cropping to it is exact for connected components (``margin=0``)
    and for surface distances (``margin=1`` keeps the background around every surface voxel).
    """
    margin = check_positive_int("margin", margin, minimum=0)
    if not masks:
        raise ValueError("masks must hold at least one mask, got none")
    for i, m in enumerate(check_sequence("masks", masks, np.ndarray, "a numpy.ndarray mask")):
        check_same_shape("masks[0]", masks[0], f"masks[{i}]", m)
    union = masks[0] if len(masks) == 1 else np.logical_or.reduce(masks)
    flat = np.flatnonzero(union)
    if flat.size == 0:
        return None
    shape = union.shape
    coords = np.unravel_index(flat, shape)
    lo = [int(c.min()) for c in coords]
    hi = [int(c.max()) + 1 for c in coords]
    return tuple(slice(max(a - margin, 0), min(b + margin, n)) for a, b, n in zip(lo, hi, shape))


def check_followup_masks(name: str, masks: object, baseline_ndim: int | None = None) -> None:
    """Raise unless ``masks`` holds follow-up masks: a non-empty sequence of masks or an array/tensor
    ``(T-1, D, H, W)`` (each mask is checked by :func:`as_mask` where it is read).

    Args:
        name: argument name for the messages.
        masks: the follow-up masks.
        baseline_ndim: rank of the baseline mask, if known: an array of that rank is one mask, which would be
            read as ``D`` follow-ups of ``(H, W)`` masks.

    Raises:
        TypeError: ``masks`` is neither a sequence nor an array/tensor (``None``, a generator, a string).
        ValueError: no follow-up, a 0-dim array, or one array of the baseline's rank.
    """
    is_array = isinstance(masks, (np.ndarray, torch.Tensor))
    if is_array and masks.ndim == 0:
        raise ValueError(f"{name} must be a (T-1, D, H, W) array or a sequence of masks, got a 0-dim array")
    if not is_array and (isinstance(masks, (str, bytes)) or not isinstance(masks, Sequence)):
        raise TypeError(f"{name} must be a sequence of (D, H, W) masks or a (T-1, D, H, W) array, "
                        f"got {type(masks).__name__}")
    if len(masks) == 0:  # the case was scored on its baseline alone and left out of every P/NP/DAA average
        raise ValueError(f"{name} holds no follow-up: a longitudinal case has T >= 2 timepoints, one progression "
                         "mask per follow-up")
    if is_array and baseline_ndim is not None and masks.ndim == baseline_ndim:
        raise ValueError(f"{name} is one array of the baseline's shape {tuple(masks.shape)}: give a sequence of "
                         f"(D, H, W) masks or a (T-1, D, H, W) array (e.g. [mask] for one follow-up)")
