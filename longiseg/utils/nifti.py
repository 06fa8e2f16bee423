"""NIfTI files: the one reader (:func:`load_nifti`: a bad file is a ``ValueError`` naming it), the atomic writer
(:func:`atomic_save_nifti`) and the part of a header that says where the voxels lie (:class:`SpatialHeader`:
qform, sform, their codes and the units), which outputs copy from the image they were computed on.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from longiseg.utils.io import PathLike, atomic_path
from longiseg.utils.validation import beyond, check_affine, check_array, check_bool, check_path

__all__ = ["QFORM_SFORM_ATOL", "HEADER_AFFINE_ATOL", "SpatialHeader", "spatial_header", "atomic_save_nifti",
           "load_nifti"]


#: Largest difference (mm, or direction units) between the qform and the sform of one file: the qform stores
#: its rotation as a float32 quaternion, so matching forms differ by round-off, not by millimetres. Files read
#: (:func:`longiseg.data.volumes.nifti_spacing`) and written (:func:`atomic_save_nifti` with ``header=``) whose
#: two forms differ by more describe two grids.
QFORM_SFORM_ATOL = 1e-3
#: Largest difference (mm) between the affine a file is written with and the form that places the voxels in
#: the ``header`` it is given (the library's tolerance for "one grid", as ``affine_atol`` when cases are loaded).
HEADER_AFFINE_ATOL = 1e-4
_XFORM_CODES = range(6)  # NIfTI: 0 unknown, 1 scanner, 2 aligned, 3 Talairach, 4 MNI, 5 template


@dataclass(frozen=True)
class SpatialHeader:
    """Where a NIfTI file places its voxels, as its header states it: both forms with their codes, and the units.

    The part of an input image's header that a segmentation of it should carry, so that tools which read the
    qform (ITK, 3D Slicer) or compare form codes (FSL) treat the image and the mask as one space: what
    :func:`atomic_save_nifti` (``header=``) copies; :func:`spatial_header` reads it from a header. The values
    are the header's own (float32 numbers as Python floats), so a copy is exact. The value is picklable, and
    ``dataclasses.asdict`` gives JSON data that ``SpatialHeader(**data)`` reads back.

    Attributes:
        qform_code: NIfTI code of the qform (0 unknown: not set, 1 scanner, 2 aligned, 3 Talairach, 4 MNI,
            5 template).
        sform_code: NIfTI code of the sform (same codes). At least one of the two codes is set.
        quatern: the qform's rotation ``(quatern_b, quatern_c, quatern_d)``.
        qoffset: the qform's translation ``(qoffset_x, qoffset_y, qoffset_z)`` in mm.
        qfac: ``pixdim[0]``, ``1.0`` or ``-1.0`` (the qform's handedness).
        zooms: ``pixdim[1:4]``, the voxel size the qform scales by (mm; all > 0 where the qform is set).
        sform: the sform's rows ``(srow_x, srow_y, srow_z)``, ``(3, 4)``.
        xyzt_units: the ``xyzt_units`` byte (spatial and temporal units), 0..255.

    Raises:
        ValueError: naming the field: a code outside 0..5, both codes 0 (no grid is stated: use ``None``), a
            non-finite or wrongly shaped number, ``qfac`` other than ±1, a set qform with a zoom <= 0 or a
            ``quatern`` longer than 1, ``xyzt_units`` outside 0..255.
        TypeError: naming the field: ``quatern``, ``qoffset``, ``zooms`` or ``sform`` not numbers.
    """

    qform_code: int
    sform_code: int
    quatern: tuple[float, float, float]
    qoffset: tuple[float, float, float]
    qfac: float
    zooms: tuple[float, float, float]
    sform: tuple[tuple[float, float, float, float], ...]
    xyzt_units: int

    def __post_init__(self) -> None:
        for name in ("qform_code", "sform_code", "xyzt_units"):
            value = getattr(self, name)
            valid = _XFORM_CODES if name.endswith("code") else range(256)
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or int(value) not in valid:
                raise ValueError(f"{name} must be an int in {valid.start}..{valid.stop - 1}, got {value!r}")
            object.__setattr__(self, name, int(value))
        if self.qform_code == 0 and self.sform_code == 0:
            raise ValueError("qform_code and sform_code are both 0: the header states no grid; pass header=None "
                             "instead (spatial_header returns None for such a header)")
        for name, layout in (("quatern", "(3,)"), ("qoffset", "(3,)"), ("zooms", "(3,)"), ("sform", "(3, 4)")):
            values = check_array(name, getattr(self, name), layout).astype(np.float64).tolist()
            object.__setattr__(self, name, tuple(map(tuple, values)) if name == "sform" else tuple(values))
        if self.qform_code > 0 and min(self.zooms) <= 0:
            raise ValueError(f"zooms must be voxel sizes > 0 where the qform is set, got {self.zooms}")
        if self.qform_code > 0 and sum(q * q for q in self.quatern) > 1.0 + 3 * float(np.finfo(np.float32).eps):
            raise ValueError(f"quatern must be the (b, c, d) of a unit quaternion (b² + c² + d² <= 1), got {self.quatern}")
        if self.qfac not in (1, -1) or isinstance(self.qfac, bool):
            raise ValueError(f"qfac must be 1.0 or -1.0, got {self.qfac!r}")
        object.__setattr__(self, "qfac", float(self.qfac))

    def _write_qform(self, header: Any) -> None:
        """Store the qform (quaternion, offset, handedness, voxel size) and its code in a nibabel header."""
        header["quatern_b"], header["quatern_c"], header["quatern_d"] = self.quatern
        header["qoffset_x"], header["qoffset_y"], header["qoffset_z"] = self.qoffset
        pixdim = np.array(header["pixdim"])
        pixdim[0], pixdim[1:4] = self.qfac, self.zooms
        header["pixdim"] = pixdim
        header["qform_code"] = self.qform_code

    @property
    def qform_affine(self) -> np.ndarray:
        """The ``(4, 4)`` matrix the qform states (whatever its code), as nibabel's ``header.get_qform()``."""
        import nibabel as nib

        header = nib.Nifti1Header()
        self._write_qform(header)
        return np.asarray(header.get_qform(), dtype=np.float64)

    @property
    def affine(self) -> np.ndarray:
        """The ``(4, 4)`` voxel-to-world matrix readers use: the sform when its code is set, else the qform
        (nibabel's ``img.affine``)."""
        if self.sform_code > 0:
            return np.vstack([np.asarray(self.sform, dtype=np.float64), [0.0, 0.0, 0.0, 1.0]])
        return self.qform_affine

    def mismatch(self, affine: np.ndarray) -> str | None:
        """Why a file written with ``affine`` cannot carry this header; ``None`` when it can.

        It can when the form readers use (:attr:`affine`) equals ``affine`` within :data:`HEADER_AFFINE_ATOL`
        and, where both forms are set, the qform within :data:`QFORM_SFORM_ATOL` (what loading accepts).

        Args:
            affine: ``(4, 4)`` voxel-to-world matrix of the volume to write.

        Raises:
            ValueError: ``affine`` is not a finite, non-singular ``(4, 4)`` matrix.
            TypeError: ``affine`` does not hold numbers.
        """
        affine = check_affine("affine", affine)
        form = "sform" if self.sform_code > 0 else "qform"
        gap = float(np.abs(self.affine - affine).max())
        if gap > HEADER_AFFINE_ATOL:
            return (f"its {form} (code {getattr(self, form + '_code')}) lies on another grid than affine (they "
                    f"differ by up to {beyond(gap, HEADER_AFFINE_ATOL)} mm, tolerance {HEADER_AFFINE_ATOL:g} mm)")
        if self.qform_code > 0 and self.sform_code > 0:
            gap = float(np.abs(self.qform_affine - affine).max())
            if gap > QFORM_SFORM_ATOL:
                return (f"its qform places the voxels differently from affine (by up to "
                        f"{beyond(gap, QFORM_SFORM_ATOL)} mm or direction units, tolerance {QFORM_SFORM_ATOL:g}): "
                        "the file would describe two grids")
        return None

    def check_grid(self, affine: np.ndarray, name: str = "header") -> None:
        """Raise unless a file written with ``affine`` can carry this header (:meth:`mismatch`).

        Args:
            affine: ``(4, 4)`` voxel-to-world matrix of the volume to write.
            name: the argument that holds this header, for the message.

        Raises:
            ValueError: naming ``name`` and how the grids differ, or a bad ``affine``.
        """
        why = self.mismatch(affine)
        if why is not None:
            raise ValueError(f"{name} does not describe the grid of affine: {why}; pass the header of the image "
                             "whose grid the volume lies on, or header=None")


def spatial_header(header: Any) -> SpatialHeader | None:
    """The spatial part of a NIfTI header: both forms with their codes, and the units (:class:`SpatialHeader`).

    Args:
        header: a nibabel NIfTI-1 or NIfTI-2 header (``img.header`` of :func:`load_nifti`), a
            :class:`SpatialHeader` (returned as it is) or ``None``.

    Returns:
        The :class:`SpatialHeader`; ``None`` when ``header`` is ``None`` or sets neither form (both codes 0: it
        states no grid, and files written with it get :func:`atomic_save_nifti`'s default forms).

    Raises:
        TypeError: ``header`` is of another type (e.g. an image instead of its ``.header``).
        ValueError: the header's numbers cannot describe a grid (see :class:`SpatialHeader`).
    """
    import nibabel as nib

    if header is None or isinstance(header, SpatialHeader):
        return header
    if not isinstance(header, nib.Nifti1Header):  # NIfTI-2 headers are Nifti1Header subclasses
        raise TypeError(f"header must be a NIfTI header (img.header), a SpatialHeader or None, got "
                        f"{type(header).__name__}")
    qcode, scode = int(header["qform_code"]), int(header["sform_code"])
    if qcode == 0 and scode == 0:
        return None
    pixdim = np.asarray(header["pixdim"], dtype=np.float64)
    return SpatialHeader(
        qform_code=qcode, sform_code=scode,
        quatern=tuple(float(header[f"quatern_{k}"]) for k in "bcd"),  # type: ignore[arg-type]
        qoffset=tuple(float(header[f"qoffset_{k}"]) for k in "xyz"),  # type: ignore[arg-type]
        qfac=-1.0 if pixdim[0] < 0 else 1.0,  # NIfTI: a qfac of 0 counts as 1
        zooms=tuple(pixdim[1:4].tolist()),  # type: ignore[arg-type]
        sform=tuple(tuple(float(v) for v in header[f"srow_{k}"]) for k in "xyz"),
        xyzt_units=int(header["xyzt_units"]),
    )


def atomic_save_nifti(array: np.ndarray, affine: np.ndarray, path: PathLike, *, overwrite: bool = False,
                      dtype: Any = None, header: SpatialHeader | Any = None) -> Path:
    """Save ``array`` (``(D, H, W)`` or with trailing channels) as NIfTI with ``affine``, atomically.

    Args:
        array: voxel data in the volume's index order (as nibabel loads it).
        affine: ``(4, 4)`` voxel-to-world matrix, usually the input image's.
        path: destination ending in ``.nii`` or ``.nii.gz``.
        overwrite: replace an existing file (default ``False``: never lose what is there).
        dtype: on-disk dtype (defaults to ``array.dtype``).
        header: the spatial header of the image whose grid ``array`` lies on (a :class:`SpatialHeader`, or a
            NIfTI header whose spatial part :func:`spatial_header` takes): the file gets its qform (matrix and
            code), its sform code and its units (``xyzt_units``), so that it overlays that image in every tool.
            Nothing else is copied: data type, scaling, ``cal_min/max``, description, intent and dimensions are
            the written array's. ``None``, or a header with neither form set: the default below.

    Without ``header`` the file says what every reader needs to place it: the sform holds ``affine``
    (code 2, "aligned", nibabel's default), the qform holds it too (same code) unless ``affine`` has a shear
    a qform cannot represent (then the qform code is 0, so that no reader sees two disagreeing forms), and
    the spatial unit is mm. With ``header`` the sform holds ``affine`` as well (with the header's code); where
    the header's sform code is 0 its qform places the voxels (``img.affine`` of the file is then that qform,
    which agrees with ``affine`` within :data:`HEADER_AFFINE_ATOL`).

    Raises:
        ValueError: ``affine`` is not a finite, non-singular ``(4, 4)`` matrix; ``header`` lies on another grid
            than ``affine`` (:meth:`SpatialHeader.check_grid`); both checked before anything is written.
        TypeError: ``affine`` does not hold numbers; ``header`` is not a NIfTI header, a :class:`SpatialHeader`
            or ``None``.
    """
    import nibabel as nib

    affine = check_affine("affine", affine)
    spatial = spatial_header(header)
    if spatial is not None:
        spatial.check_grid(affine, "header")
    arr = np.asarray(array)
    if dtype is not None:
        arr = arr.astype(dtype)
    elif arr.dtype == bool:
        arr = arr.astype(np.uint8)
    img = nib.Nifti1Image(arr, affine)
    _set_qform_and_units(img.header, affine, spatial)
    if spatial is not None:  # the image's affine is the one its forms state, so nibabel keeps them on saving
        img = nib.Nifti1Image(arr, img.header.get_best_affine(), header=img.header)
    img.set_data_dtype(arr.dtype)
    name = str(path)
    suffix = ".nii.gz" if name.endswith(".nii.gz") else ".nii"
    with atomic_path(path, overwrite=overwrite, suffix=suffix) as tmp:
        nib.save(img, tmp)
    return Path(path)


def _set_qform_and_units(header: Any, affine: np.ndarray, spatial: SpatialHeader | None = None) -> None:
    """Give a header made from ``affine`` (sform code 2) its forms and units: ``spatial``'s form codes, qform and
    units, the sform keeping ``affine``; without ``spatial``, the sform mirrored into the qform where a qform can
    hold ``affine`` exactly, and mm as the spatial unit."""
    if spatial is not None:
        header.set_sform(affine, code=spatial.sform_code)
        if spatial.qform_code > 0:
            spatial._write_qform(header)
        else:
            header.set_qform(None, code=0)
        header["xyzt_units"] = spatial.xyzt_units
        return
    code = int(header["sform_code"])
    header.set_qform(affine, code=code)
    scale = max(float(np.abs(affine[:3, :4]).max()), 1.0)
    if not np.allclose(header.get_qform(), affine, rtol=0.0, atol=1e-6 * scale):
        header.set_qform(None, code=0)  # a shear: the sform alone carries the affine
    header.set_xyzt_units(xyz="mm")


# --------------------------------------------------------------------------- reading
def _uncompressed_nifti(path: Path) -> bool:
    """Whether ``path`` starts as an uncompressed NIfTI-1/2 file does (its header size, 348 or 540, in either byte
    order, and not gzip's magic bytes)."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(4)
    except OSError:
        return False
    if len(head) < 4 or head[:2] == b"\x1f\x8b":
        return False
    return any(int.from_bytes(head, order) in (348, 540) for order in ("little", "big"))


def _check_stored_voxel_size(path: Path, img: Any, label: str) -> None:
    """Refuse a file without an sform whose header stores a voxel size (``pixdim``) of 0, below 0 or not finite:
    its affine is made of those sizes, and readers repair them differently (nibabel reads 0 as 1 mm and -2 as
    2 mm, with a warning only), so volumes in mm would depend on the reader. With an sform the affine is its own
    and the stored sizes are compared with it where spacings are read (``nifti_spacing``)."""
    import gzip

    if int(img.header["sform_code"]) > 0:
        return
    opener = gzip.open if path.name.endswith(".gz") else open
    with opener(path, "rb") as fh:  # the header as stored: nibabel's reader has repaired the one of img
        stored = type(img.header).from_fileobj(fh, check=False)
    axes = min(3, int(stored["dim"][0]))
    sizes = [float(v) for v in stored["pixdim"][1:1 + axes]]
    if not all(math.isfinite(v) and v > 0 for v in sizes):
        raise ValueError(f"{label} stores the voxel size {sizes} (pixdim) and no sform: a voxel size must be a "
                         "positive number of mm, and readers repair this one differently (nibabel reads 0 as 1 mm); "
                         "write the file again with its voxel size (or an sform)")


def load_nifti(path: PathLike, *, what: str = "NIfTI file", header_only: bool = False,
               dtype: Any = None) -> Any:
    """Read a NIfTI file (``.nii`` or ``.nii.gz``) with nibabel; a bad file is a ``ValueError`` naming it.

    Zero-byte, truncated, corrupt (gzip or header) and non-NIfTI files all raise ``ValueError`` with the
    path and what is wrong, never nibabel's or gzip's bare ``EOFError``/``zlib.error``/``ImageFileError``.
    A truncated ``.nii.gz`` often has a readable header and fails only when its voxels are decompressed,
    so the voxels are decoded here, inside the check, and the whole gzip stream is read so that its
    checksum and length are verified (a flipped byte is an error, not a wrong voxel).

    Args:
        path: the file.
        what: what the file is, for messages (e.g. ``"case 'p0': image"``).
        header_only: read only the header (shape, affine, voxel sizes) and leave the voxels on disk, to
            check many files before decoding any; read the voxels later with a second call.
        dtype: decode the voxels as this dtype (e.g. ``np.float32`` for images; scaling is applied in it);
            default: nibabel's (the on-disk dtype, float64 when the header scales the values).

    Returns:
        The nibabel image (``Nifti1Image`` or ``Nifti2Image``): ``img.shape`` as stored (e.g. ``(D, H, W)``),
        ``img.affine`` ``(4, 4)``, ``img.header.get_zooms()``; unless ``header_only``, ``img.dataobj`` is an
        in-memory array of shape ``img.shape`` in the file's index order (scaled values).

    Raises:
        FileNotFoundError: ``path`` does not exist.
        PermissionError: ``path`` is not readable.
        ValueError: ``path`` is a folder, empty, truncated, corrupt or not a NIfTI file, or its voxels are not
            real numbers (RGB, complex), or it holds no voxel (an axis of length 0).
    """
    import gzip
    import struct
    import zlib

    import nibabel as nib
    from nibabel.filebasedimages import ImageFileError
    from nibabel.spatialimages import HeaderDataError

    header_only = check_bool("header_only", header_only)
    try:
        dtype = None if dtype is None else np.dtype(dtype)
    except TypeError as err:
        raise TypeError(f"dtype must be a NumPy dtype such as numpy.float32, got {dtype!r}") from err
    if dtype is not None and dtype.kind not in "biuf":
        raise TypeError(f"dtype must be a NumPy number dtype such as numpy.float32, got {dtype}")

    path = check_path("path", path)
    label = f"{what} {path}"
    if not path.exists():
        raise FileNotFoundError(f"{label} does not exist")
    if path.is_dir():
        raise ValueError(f"{label} is a folder, not a NIfTI file")
    if path.stat().st_size == 0:
        raise ValueError(f"{label} is empty (0 bytes)")
    try:
        with open(path, "rb"):  # nibabel reports an unreadable file as one of unknown type ("Cannot work out ...")
            pass
        img = nib.load(str(path), mmap=False)
        data = None
        if not header_only and isinstance(img, (nib.Nifti1Image, nib.Nifti2Image)):
            if path.name.endswith(".gz"):
                # decompress the whole stream so gzip checks its CRC and length: a corrupt or truncated
                # file fails here instead of yielding wrong voxels
                img = type(img).from_bytes(gzip.decompress(path.read_bytes()))
            if dtype is None:
                data = np.asanyarray(img.dataobj)
            else:
                with np.errstate(over="ignore", invalid="ignore"):  # an overflow is reported below, by name
                    data = np.asarray(img.dataobj, dtype=dtype)
    except PermissionError as exc:
        raise PermissionError(f"cannot read {label}: permission denied") from exc
    except (ImageFileError, HeaderDataError, EOFError, zlib.error, struct.error, OSError, ValueError) as exc:
        kind = "zlib.error" if isinstance(exc, zlib.error) else type(exc).__name__
        reason = " ".join(str(exc).split())
        if path.name.endswith(".gz") and _uncompressed_nifti(path):  # a tool renamed or forgot to compress it
            raise ValueError(f"{label} is an uncompressed NIfTI file although its name ends in .gz: rename it to "
                             f"{path.name[:-3]} (or compress it with gzip)") from exc
        raise ValueError(f"{label} is truncated, corrupt or not a NIfTI file ({kind}: {reason})") from exc
    if not isinstance(img, (nib.Nifti1Image, nib.Nifti2Image)):
        raise ValueError(f"{label} is not a NIfTI file (nibabel reads it as {type(img).__name__})")
    stored = img.get_data_dtype()
    if stored.kind not in "biuf":  # RGB (structured), complex: not one real number per voxel
        raise ValueError(f"{label} stores voxels of type {stored} ({'complex' if stored.kind == 'c' else 'not numbers'}"
                         "); expected one real number per voxel (an integer or floating-point type)")
    if 0 in img.shape:  # nibabel reads such a volume as an array of shape (0,): name the stored shape
        raise ValueError(f"{label} holds no voxel: shape {tuple(img.shape)} has an axis of length 0")
    _check_stored_voxel_size(path, img, label)
    if data is None:
        return img
    if dtype is not None and dtype.kind == "f" and not np.isfinite(data).all():
        _check_in_range(img, dtype, label)
    return type(img)(data, img.affine, img.header)


def _check_in_range(img: Any, dtype: np.dtype, label: str) -> None:
    """Refuse voxels that are finite as stored but beyond ``dtype``'s range once decoded in it (a float64 image of
    values around 1e300, a large ``scl_slope``): they became infinite, which was reported as "contains NaN or
    infinite values" although the file holds none. Non-finite values in the file itself are left to the
    callers' checks, which name them."""
    native = np.asanyarray(img.dataobj)
    if np.isfinite(native).all():
        top = float(np.abs(native).max())
        raise ValueError(f"{label} holds values up to {top:.3g}, beyond the range of {dtype} (the type images are "
                         f"read in, largest {float(np.finfo(dtype).max):.3g}): rescale the image")
