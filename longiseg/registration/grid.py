"""Voxel grids and the bridge between nibabel arrays (RAS+ affines) and SimpleITK images (LPS).

The library reads and writes NIfTI with nibabel: an array in the file's index order and a voxel-to-world
``affine`` in RAS+ millimetres. SimpleITK describes the same grid by origin, spacing and direction in LPS
millimetres. :func:`to_sitk` and :func:`from_sitk` convert between the two without resampling, so a
volume read by nibabel, passed through SimpleITK and written back keeps its exact voxels and affine.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from longiseg.data.case import affine_spacing
from longiseg.utils.validation import check_affine, check_instance, check_int_sequence, check_positive_float

__all__ = ["EXTRA_HINT", "require_simpleitk", "Grid", "to_sitk", "from_sitk", "isotropic_grid", "isotropic_sizes"]

#: How to install the optional dependency; named in every error about it.
EXTRA_HINT = "registration needs SimpleITK: pip install 'longiseg[register]'"
_LPS = np.diag([-1.0, -1.0, 1.0])


def require_simpleitk() -> Any:
    """Import SimpleITK, or raise ``ImportError`` naming the ``register`` extra."""
    try:
        import SimpleITK as sitk
    except ImportError as err:
        raise ImportError(EXTRA_HINT) from err
    return sitk


@dataclass(frozen=True)
class Grid:
    """A voxel grid: ``shape`` ``(D, H, W)`` and the ``(4, 4)`` RAS+ voxel-to-world ``affine`` (nibabel's)."""

    shape: tuple[int, int, int]
    affine: np.ndarray

    def __post_init__(self) -> None:
        shape = check_int_sequence("shape", self.shape, length=3, what="the sizes (D, H, W)")  # 6.5 was cut to 6
        object.__setattr__(self, "shape", shape)
        object.__setattr__(self, "affine", check_affine("affine", self.affine))

    @property
    def spacing(self) -> np.ndarray:
        """``(3,)`` voxel size in mm along each array axis."""
        return np.asarray(affine_spacing(self.affine))

    def reference(self) -> Any:
        """An empty SimpleITK image on this grid (the target of a resampling)."""
        sitk = require_simpleitk()
        img = sitk.Image([int(s) for s in self.shape], sitk.sitkUInt8)
        _set_geometry(img, self.affine)
        return img

    def to_dict(self) -> dict[str, Any]:
        """JSON-able record."""
        return {"shape": list(self.shape), "affine": self.affine.tolist()}  # full precision: headers copied exactly

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Grid:
        """Inverse of :meth:`to_dict`."""
        check_instance("d", d, Mapping, "a dict with 'shape' and 'affine' (from Grid.to_dict)")
        missing = [k for k in ("shape", "affine") if k not in d]
        if missing:
            raise ValueError(f"d must hold 'shape' and 'affine' (from Grid.to_dict), missing {missing}")
        return cls(d["shape"], d["affine"])  # Grid checks and converts both


def _set_geometry(img: Any, affine: np.ndarray) -> None:
    m = affine[:3, :3]
    spacing = np.asarray(affine_spacing(affine))  # refuses a shear: SimpleITK grids are orthogonal too
    u, _, vt = np.linalg.svd(_LPS @ (m / spacing))  # the nearest rotation: float32 affines are off by ~1e-7
    img.SetSpacing([float(s) for s in spacing])
    img.SetDirection([float(v) for v in (u @ vt).ravel()])
    img.SetOrigin([float(v) for v in _LPS @ affine[:3, 3]])


def to_sitk(array: np.ndarray, affine: np.ndarray) -> Any:
    """SimpleITK image of a nibabel array ``(D, H, W)`` and its RAS+ ``affine`` (no resampling).

    Image index ``(i, j, k)`` holds ``array[i, j, k]``.

    Raises:
        ValueError: ``array`` is not 3D; ``affine`` is not a valid ``(4, 4)`` affine.
        TypeError: ``array`` has a dtype SimpleITK cannot hold (bool, float16, complex: convert it first).
    """
    sitk = require_simpleitk()
    arr = np.asarray(array)
    if arr.ndim != 3:
        raise ValueError(f"array must be a 3D volume (D, H, W), got shape {arr.shape}")
    if arr.dtype == bool or arr.dtype == np.float16 or not (np.issubdtype(arr.dtype, np.integer)
                                                           or np.issubdtype(arr.dtype, np.floating)):
        raise TypeError(f"array has dtype {arr.dtype}, which SimpleITK images cannot hold: convert it (e.g. to "
                        "uint8 or float32) first")
    img = sitk.GetImageFromArray(np.ascontiguousarray(arr.transpose(2, 1, 0)))
    _set_geometry(img, check_affine("affine", affine))
    return img


def from_sitk(image: Any) -> tuple[np.ndarray, np.ndarray]:
    """``(array (D, H, W), RAS+ affine (4, 4))`` of a SimpleITK image; inverse of :func:`to_sitk`."""
    sitk = require_simpleitk()
    check_instance("image", image, sitk.Image, "a SimpleITK Image")
    if image.GetDimension() != 3:
        raise ValueError(f"image must be a 3D SimpleITK Image, got {image.GetDimension()}D")
    arr = sitk.GetArrayFromImage(image).transpose(2, 1, 0)
    direction = np.asarray(image.GetDirection(), dtype=np.float64).reshape(3, 3)
    affine = np.eye(4)
    affine[:3, :3] = _LPS @ direction @ np.diag(image.GetSpacing())
    affine[:3, 3] = _LPS @ np.asarray(image.GetOrigin(), dtype=np.float64)
    return np.ascontiguousarray(arr), affine


def isotropic_sizes(grid: Grid, spacing: float) -> np.ndarray:
    """The voxels per axis of :func:`isotropic_grid` ``(grid, spacing)`` as float64 (``inf`` where they exceed
    floating point), computed without building the grid: a tiny spacing gives one too large to use."""
    check_instance("grid", grid, Grid, "a Grid")
    spacing = check_positive_float("spacing", spacing)  # True is not 1 mm
    with np.errstate(over="ignore"):
        return np.maximum(1.0, np.ceil(np.asarray(grid.shape, np.float64) * grid.spacing / spacing - 1e-6))


def isotropic_grid(grid: Grid, spacing: float) -> Grid:
    """A grid with the orientation and field of view of ``grid`` and voxels of ``spacing`` mm.

    The outer voxel corners stay where they were; the shape is rounded up to cover the field of view
    (:func:`isotropic_sizes`).

    Raises:
        ValueError: more voxels along an axis than floating point holds (a spacing near 1e-308 mm).
    """
    sizes = isotropic_sizes(grid, spacing)
    if not np.isfinite(sizes).all():
        raise ValueError(f"spacing {spacing:g} mm gives more voxels than floating point holds")
    shape = tuple(int(n) for n in sizes)
    old = grid.spacing
    rot = grid.affine[:3, :3] / old
    corner = grid.affine[:3, 3] - 0.5 * grid.affine[:3, :3] @ np.ones(3)
    affine = np.eye(4)
    affine[:3, :3] = rot * spacing
    affine[:3, 3] = corner + 0.5 * affine[:3, :3] @ np.ones(3)
    return Grid(shape, affine)  # type: ignore[arg-type]
