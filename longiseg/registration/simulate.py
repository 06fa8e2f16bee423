"""Simulate another session's acquisition of a registered scan: a known rigid motion and another grid.

For round-trip tests and benchmarks of registration: the patient moves by a rigid ``motion`` (in scanner
coordinates, RAS+ mm) and is scanned on a grid with another voxel size, orientation (axis order and
directions) and field of view. The true registration result is then known exactly.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from scipy import ndimage

from longiseg.utils.masks import as_spacing
from longiseg.utils.validation import (
    check_affine,
    check_array,
    check_finite_float,
    check_instance,
    check_int_sequence,
    check_positive_int,
)

__all__ = ["rigid_motion", "simulate_acquisition"]


def rigid_motion(axis: Sequence[float], angle_deg: float, shift_mm: Sequence[float],
                 centre_mm: Sequence[float] = (0.0, 0.0, 0.0)) -> np.ndarray:
    """``(4, 4)`` rigid motion: rotation by ``angle_deg`` about ``axis`` through ``centre_mm``, then ``shift_mm``."""
    ax = np.asarray(check_array("axis", axis, "(3,)"), dtype=np.float64)
    if not np.linalg.norm(ax) > 0:
        raise ValueError(f"axis must be a non-zero 3-vector, got {axis}")
    ax /= np.linalg.norm(ax)
    th = math.radians(check_finite_float("angle_deg", angle_deg))
    shift = check_array("shift_mm", shift_mm, "(3,)")
    k = np.array([[0, -ax[2], ax[1]], [ax[2], 0, -ax[0]], [-ax[1], ax[0], 0]])
    rot = np.eye(3) + math.sin(th) * k + (1 - math.cos(th)) * (k @ k)
    c = np.asarray(check_array("centre_mm", centre_mm, "(3,)"), dtype=np.float64)
    out = np.eye(4)
    out[:3, :3] = rot
    out[:3, 3] = c - rot @ c + np.asarray(shift, dtype=np.float64)
    return out


def simulate_acquisition(array: np.ndarray, affine: np.ndarray, motion: np.ndarray, spacing: Sequence[float],
                         axes: Sequence[int] = (0, 1, 2), flips: Sequence[int] = (1, 1, 1), *,
                         order: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Scan ``array`` again after the patient moved by ``motion``, on a grid of ``spacing`` mm.

    Args:
        array: volume ``(D, H, W)`` on the grid ``affine``.
        affine: its ``(4, 4)`` RAS+ voxel-to-world matrix.
        motion: ``(4, 4)`` rigid motion of the patient in world coordinates (:func:`rigid_motion`).
        spacing: voxel size of the new grid along its three axes.
        axes: new axis ``i`` runs along old axis ``axes[i]`` (another slice orientation).
        flips: direction ``flips[i]`` (+1 or -1) of new axis ``i`` along that old axis.
        order: spline order of the sampling (1: linear; use 1 and threshold at 0.5 for masks).

    Returns:
        ``(new array, new affine)``: the new grid covers the old field of view; a point ``p`` of the original
        scan appears at ``motion @ p`` in the new scanner coordinates.
    """
    arr = np.asarray(check_array("array", array, "(D, H, W)", bools=True), dtype=np.float32)
    aff = check_affine("affine", affine)
    motion = check_array("motion", motion, "(4, 4)")
    axes = check_int_sequence("axes", axes, minimum=0, length=3, what="the old axis of each new axis")
    flips = check_int_sequence("flips", flips, minimum=-1, length=3, what="+1 or -1 per axis")
    if sorted(axes) != [0, 1, 2] or any(f not in (1, -1) for f in flips):
        raise ValueError(f"axes must be a permutation of (0, 1, 2) and flips +-1, got {axes}, {flips}")
    if check_positive_int("order", order, minimum=0) > 5:
        raise ValueError(f"order must be a spline order from 0 to 5, got {order}")
    sp = as_spacing(check_instance("spacing", spacing, (int, float, np.number, Sequence, np.ndarray),
                                   "a number or a sequence of 3 numbers"), 3)
    direction = (aff[:3, :3] / np.linalg.norm(aff[:3, :3], axis=0))[:, list(axes)] * np.asarray(flips)
    corners = np.array([[i, j, k, 1.0] for i in (-0.5, arr.shape[0] - 0.5) for j in (-0.5, arr.shape[1] - 0.5)
                        for k in (-0.5, arr.shape[2] - 0.5)]) @ aff.T
    proj = corners[:, :3] @ direction
    lo, hi = proj.min(axis=0), proj.max(axis=0)
    shape = tuple(int(v) for v in np.ceil((hi - lo) / sp - 1e-6))
    grid = np.eye(4)
    grid[:3, :3] = direction * sp
    grid[:3, 3] = direction @ (lo + 0.5 * sp)
    to_old = np.linalg.inv(aff) @ grid
    idx = np.indices(shape, dtype=np.float32).reshape(3, -1)
    src = to_old[:3, :3].astype(np.float32) @ idx + to_old[:3, 3:].astype(np.float32)
    out = ndimage.map_coordinates(arr, src, order=order, cval=0.0).reshape(shape)
    return out, np.asarray(motion, dtype=np.float64) @ grid
