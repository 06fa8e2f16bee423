"""Read one NIfTI volume of a case (an image, a mask, a predicted map): its voxels, affine and voxel size.

Every reader of a single volume goes through :func:`read_volume`, which refuses what would be read wrongly
rather than guess (NaN/inf intensities, several volumes in one file, two geometries in one header, units other
than mm); :func:`nifti_spacing` owns a file's voxel size and :func:`check_same_grid` the "same grid" rule that
every comparison of two volumes applies. Files are read with :func:`~longiseg.utils.nifti.load_nifti`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from longiseg.data.case import SPACING_RTOL, affine_spacing
from longiseg.utils.io import PathLike
from longiseg.utils.masks import format_spacing
from longiseg.utils.nifti import HEADER_AFFINE_ATOL, QFORM_SFORM_ATOL, load_nifti
from longiseg.utils.validation import beyond, check_instance, check_nonnegative_float

__all__ = ["SPACING_RTOL", "MASK_SCALING_ATOL", "Grid", "read_volume", "read_mask", "read_label_volume",
           "format_label_values", "nifti_spacing",
           "GRID_ATOL", "same_affine", "check_same_grid"]

#: How far from 0 or 1 a mask voxel may lie when its file scales the stored values (``scl_slope``,
#: ``scl_inter``, float32 in the header): a 0/255 mask with slope ``1/255`` reads as 0 and 1.00000006.
MASK_SCALING_ATOL = 1e-6


def read_volume(path: PathLike, *, what: str = "volume", dtype: Any = None
                ) -> tuple[np.ndarray, np.ndarray, tuple[float, float, float]]:
    """Read one 3D volume: the one reader of a single NIfTI volume (images, masks, predicted maps).

    Args:
        path: the NIfTI file (``(D, H, W)`` or ``(D, H, W, 1)``).
        what: what the file is, for messages (e.g. ``"case 'p0': image"``).
        dtype: the array's dtype (``None``: the stored one, scaling applied by nibabel where the header has it).

    Returns:
        ``(voxels, affine, spacing)``: the ``(D, H, W)`` array in the file's index order, its ``(4, 4)``
        voxel-to-world matrix and its voxel size in mm (:func:`nifti_spacing`).

    Raises:
        FileNotFoundError: the file does not exist.
        ValueError: naming the file: unreadable, not one 3D volume, NaN/inf values, header voxel sizes that
            disagree with the affine.
    """
    img = load_nifti(path, what=what, dtype=dtype)
    arr = np.asanyarray(img.dataobj)
    if arr.ndim == 4 and arr.shape[3] == 1:
        arr = arr[..., 0]
    if arr.ndim != 3:
        raise ValueError(f"{what} {path} must be a 3D volume (D, H, W), got shape {arr.shape}")
    if np.issubdtype(arr.dtype, np.floating) and not np.isfinite(arr).all():
        raise ValueError(f"{what} {path} contains NaN or infinite values")
    return arr, np.asarray(img.affine, dtype=np.float64), nifti_spacing(img, path, what=what)


def nifti_spacing(img: Any, path: PathLike, *, what: str = "NIfTI file", rtol: float = SPACING_RTOL
                  ) -> tuple[float, float, float]:
    """Voxel size in mm of a NIfTI image read by :func:`~longiseg.utils.nifti.load_nifti`: the one owner of
    it.

    The size is that of the image's affine (:func:`~longiseg.data.case.affine_spacing`, the column norms of
    nibabel's ``img.affine``: the sform when ``sform_code > 0``, else the qform), the matrix every reader
    compares and every output is written with. A file whose header voxel sizes (``pixdim``, which the qform
    uses) disagree with that affine describes two grids; it is refused rather than one of them chosen, and so
    is a file whose qform and sform (both set) differ by more than
    :data:`~longiseg.utils.nifti.QFORM_SFORM_ATOL`, a file with neither (orientation unknown: tools disagree
    on which side is left) and one measured in other units than mm.

    Args:
        img: the nibabel image (a header-only read is enough).
        path: its file, for messages.
        what: what the file is, for messages (e.g. ``"case 'p0': mask"``).
        rtol: largest relative difference of header voxel sizes and affine column norms.

    Returns:
        ``(sx, sy, sz)`` in mm along the array axes.

    Raises:
        ValueError: naming the file and both voxel sizes: header and affine disagree (beyond ``rtol``), or
            the affine is not finite or has an axis of zero length; naming the file: qform and sform
            disagree, neither is set, or the spatial unit is not mm (an unknown unit, nibabel's default, is
            read as mm).
        TypeError: ``img`` is not a nibabel NIfTI image (a path: read it with
            :func:`~longiseg.utils.nifti.load_nifti` first).
    """
    import nibabel as nib  # here: importing longiseg does not import nibabel

    check_instance("img", img, (nib.Nifti1Image, nib.Nifti2Image),
                   "a nibabel NIfTI image (for a path p: load_nifti(p, header_only=True))")
    hdr = img.header
    qcode, scode = int(hdr["qform_code"]), int(hdr["sform_code"])
    if qcode == 0 and scode == 0:
        raise ValueError(f"{what} {path} has neither a qform nor an sform (both codes 0): its orientation is unknown "
                         "(tools differ on which side is left); rewrite it with the scanner geometry")
    unit = hdr.get_xyzt_units()[0]
    if unit not in ("mm", "unknown"):
        raise ValueError(f"{what} {path} measures space in {unit}; volumes are computed in mm: rewrite its "
                         "header in mm")
    try:
        spacing = affine_spacing(img.affine)
    except ValueError as exc:
        raise ValueError(f"{what} {path}: {exc}") from exc
    zooms = np.asarray(img.header.get_zooms()[:3], dtype=np.float64)
    if zooms.shape != (3,) or not np.allclose(zooms, spacing, rtol=rtol, atol=0.0):
        form = "sform" if int(img.header["sform_code"]) > 0 else "qform"
        raise ValueError(
            f"{what} {path}: the voxel size of its affine ({form}) {_mm(spacing)} disagrees with its header "
            f"voxel size (pixdim, which the qform uses) {_mm(zooms)}; the file describes two grids, so its "
            "volumes would be ambiguous: rewrite it with one geometry (e.g. copy the sform into the qform, or "
            "resample it)"
        )
    if qcode > 0 and scode > 0:
        gap = float(np.abs(hdr.get_qform() - hdr.get_sform()).max())
        if gap > QFORM_SFORM_ATOL:
            raise ValueError(
                f"{what} {path}: its qform and sform place the voxels differently (by up to "
                f"{beyond(gap, QFORM_SFORM_ATOL)} mm or direction units); the file describes two grids, and tools "
                "that read the qform would not overlay its outputs: rewrite it with one geometry (e.g. copy the sform "
                "into the qform)")
    return spacing


def _mm(values: Any) -> str:
    return format_spacing(values) + " mm"


def read_mask(path: PathLike, *, what: str = "mask"
              ) -> tuple[np.ndarray, np.ndarray, tuple[float, float, float]]:
    """Read one binary mask volume: a mask of a case, a reference mask or a predicted mask.

    Args:
        path: the NIfTI file.
        what: what the file is, for messages (e.g. ``"case 'p0': mask"``).

    Returns:
        ``(mask, affine, spacing)``: the ``(D, H, W)`` uint8 mask in the file's index order, its ``(4, 4)``
        voxel-to-world matrix and its voxel size in mm (:func:`nifti_spacing`).

    Raises:
        FileNotFoundError: the file does not exist.
        ValueError: naming the file: unreadable, not one 3D volume, NaN/inf values, values other than 0 and 1,
            header voxel sizes that disagree with the affine (:func:`nifti_spacing`). A file that scales its
            stored values (``scl_slope``/``scl_inter``) may give 0 and 1 to within :data:`MASK_SCALING_ATOL`
            (the header's float32 slope, :func:`read_label_volume`); the message names the scaling when it
            refuses.
    """
    arr, affine, spacing, scaling = read_label_volume(path, what=what)
    is_one = arr == 1
    bad = ~(is_one | (arr == 0))
    if bad.any():
        raise ValueError(f"{what} {path} must be binary (values 0/1), found values such as "
                         f"{format_label_values(np.unique(arr[bad])[:5])}{scaling}")
    return is_one.astype(np.uint8), affine, spacing


def read_label_volume(path: PathLike, *, what: str = "label map"
                      ) -> tuple[np.ndarray, np.ndarray, tuple[float, float, float], str]:
    """Read one label map (:func:`read_volume`), undoing the rounding error of its scaling.

    A file that scales its stored values (``scl_slope``/``scl_inter``, float32 in the header) gives labels off
    the integers by the slope's rounding error (int16 ``0, 3, 6`` with slope ``1/3`` read as ``0,
    1.0000000298, 2.0000000596``): values within :data:`MASK_SCALING_ATOL` of an integer are rounded to it
    (:func:`read_mask` reads binary masks with it). Other values (``1.5``, or any value of an unscaled file)
    are returned as read, for the caller to refuse.

    Args:
        path: the NIfTI file.
        what: what the file is, for messages.

    Returns:
        ``(labels, affine, spacing, scaling)``: the ``(D, H, W)`` array, its ``(4, 4)`` affine, its voxel size in
        mm (:func:`nifti_spacing`), and ``""`` for a file without scaling, else ``" (stored values scaled by
        scl_slope S and scl_inter I)"`` for a message that refuses its values.

    Raises:
        FileNotFoundError: the file does not exist.
        ValueError: naming the file, as :func:`read_volume`.
    """
    arr, affine, spacing = read_volume(path, what=what)
    if not np.issubdtype(arr.dtype, np.floating):
        return arr, affine, spacing, ""
    proxy = load_nifti(path, what=what, header_only=True).dataobj  # nibabel moves the scaling here
    slope, inter = float(getattr(proxy, "slope", 1.0)), float(getattr(proxy, "inter", 0.0))
    if (slope, inter) == (1.0, 0.0):
        return arr, affine, spacing, ""
    rounded = np.round(arr)
    arr = np.where(np.abs(arr - rounded) <= MASK_SCALING_ATOL, rounded, arr)
    return arr, affine, spacing, f" (stored values scaled by scl_slope {slope:g} and scl_inter {inter:g})"


def format_label_values(values: np.ndarray) -> str:
    """``[1.5, 9]`` or ``[1.0000000298023224]``: label values for a message, integers as integers and other values
    with every digit they need in their own dtype (a value read as ``1.0000000298`` is not shown as ``1.0``)."""
    return "[" + ", ".join(str(int(v)) if isinstance(v, np.floating) and float(v).is_integer() else str(v)
                           for v in np.asarray(values).ravel()) + "]"


Grid = tuple[PathLike, tuple[int, ...], np.ndarray]  # (file, (D, H, W), (4, 4) affine) of one volume

#: How far (mm, on every entry) the affines of two volumes on one grid may differ: headers written by different
#: tools round the same grid differently, well below this (the tolerance NIfTI files are written with, too).
GRID_ATOL = HEADER_AFFINE_ATOL


def same_affine(affine: np.ndarray, reference: np.ndarray, atol: float = GRID_ATOL) -> bool:
    """Whether two ``(4, 4)`` affines place voxels at the same points: every entry equal within ``atol`` mm (no
    relative tolerance, which would loosen the check far from the origin). The one rule of "same grid" (with
    equal shapes) of the library; :func:`check_same_grid` raises with its differences."""
    return bool(np.allclose(affine, reference, rtol=0.0, atol=atol))


def check_same_grid(
    grid: Grid, reference: Grid, *, what: str = "volume", atol: float = GRID_ATOL,
    hint: str = "all volumes of a case must share one grid",
) -> None:
    """Refuse a volume that does not lie on the grid of another (same shape, affines equal within ``atol``).

    Args:
        grid: ``(path, shape, affine)`` of the volume checked: its file, ``(D, H, W)`` and ``(4, 4)`` affine.
        reference: ``(path, shape, affine)`` of the volume it must share a grid with.
        what: what the files are, for messages.
        atol: absolute tolerance on the affines' entries (mm).
        hint: what the user should do, the end of the message.

    Raises:
        TypeError: ``atol`` is not a number.
        ValueError: ``atol`` negative, NaN or infinite (no tolerance at all); ``grid`` or ``reference`` not a
            ``(path, shape, affine)`` triple; or naming both files (the reference by its name, or by its path where
            the names are the same), the shapes or the largest affine difference and both voxel sizes.
    """
    atol = check_nonnegative_float("atol", atol)
    for name, g in (("grid", grid), ("reference", reference)):
        if not isinstance(g, tuple) or len(g) != 3:
            raise ValueError(f"{name} must be a (path, shape, affine) triple, got {g!r:.80}")
        if np.shape(g[2]) != (4, 4):
            raise ValueError(f"{name}'s affine must be (4, 4), got shape {np.shape(g[2])}")
    (path, shape, affine), (ref_path, ref_shape, ref_affine) = grid, reference
    ref_name = Path(ref_path).name
    where = f"{what} {path} lies on another grid than {ref_path if ref_name == Path(path).name else ref_name}"
    if tuple(shape) != tuple(ref_shape):
        raise ValueError(f"{where} (shape {tuple(shape)} vs {tuple(ref_shape)}); {hint}")
    if not same_affine(affine, ref_affine, atol):
        raise ValueError(
            f"{where} (affines differ by up to {beyond(float(np.abs(affine - ref_affine).max()), atol)} mm, "
            f"tolerance {atol:g} mm; voxel size {_mm(affine_spacing(affine))} vs {_mm(affine_spacing(ref_affine))}); "
            f"{hint}")
