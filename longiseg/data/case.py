"""The in-memory model of one longitudinal case: ``T`` registered timepoints of one patient.

A :class:`LongitudinalCase` holds voxel arrays in the index order nibabel loads them (called ``(D, H, W)``
here, i.e. the NIfTI axes ``i, j, k``), the voxel-to-world ``affine`` and the ``spacing`` in mm. Which array
axis is axial, coronal or sagittal is read from the affine (:func:`plane_axes`), so volumes need not be
reoriented to be sampled in the right planes.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace

import numpy as np

from longiseg.data.layout import check_case_id, image_filename
from longiseg.utils.config import require
from longiseg.utils.masks import as_spacing
from longiseg.utils.validation import (
    check_affine,
    check_array,
    check_binary,
    check_bool,
    check_finite,
    check_positive_int,
    check_timepoints,
)

__all__ = ["PLANES", "LongitudinalCase", "plane_axes", "display_slice", "affine_spacing", "check_planes",
           "check_spacing_of_affine", "check_modalities", "check_case"]

#: The three orthogonal anatomical planes, in the order used everywhere in the library.
PLANES: tuple[str, str, str] = ("axial", "coronal", "sagittal")

# World axis (RAS+) that is normal to each plane: sagittal slices stack along x (L-R),
# coronal slices along y (P-A), axial slices along z (I-S).
_PLANE_WORLD_AXIS = {"sagittal": 0, "coronal": 1, "axial": 2}


def plane_axes(affine: np.ndarray) -> dict[str, int]:
    """Map each plane to the array axis normal to it, read from the voxel-to-world ``affine``.

    Args:
        affine: ``(4, 4)`` voxel-to-world matrix of a ``(D, H, W)`` volume.

    Returns:
        ``{"axial": a, "coronal": c, "sagittal": s}`` where slicing the volume at a fixed index along
        array axis ``a`` gives an axial slice, and so on (``{a, c, s} == {0, 1, 2}``).

    Raises:
        ValueError: if ``affine`` is not ``(4, 4)`` or is singular.
    """
    import nibabel as nib

    aff = check_affine("affine", affine)
    ornt = nib.orientations.io_orientation(aff)  # row i: world axis of array axis i
    world_of_array = [int(w) for w in ornt[:, 0]]
    return {plane: world_of_array.index(world) for plane, world in _PLANE_WORLD_AXIS.items()}


def display_slice(plane_image: np.ndarray, affine: np.ndarray, normal_axis: int) -> tuple[np.ndarray, float]:
    """Turn a 2D slice so that every volume is shown the same way, whatever its storage order.

    Args:
        plane_image: ``(n_a, n_b)`` slice of a volume at a fixed index along array axis ``normal_axis``
            (its axes are the two other array axes, in order).
        affine: ``(4, 4)`` voxel-to-world (RAS+) matrix of the volume.
        normal_axis: the array axis normal to the slice (e.g. ``plane_axes(affine)["axial"]``).

    Returns:
        ``(image, aspect)``: the slice with its first axis along the lower-numbered world axis (x for axial
        and coronal slices, y for sagittal ones) and its second along the other, both increasing (towards
        right, anterior, superior), for ``imshow(image.T, origin="lower", aspect=aspect)``; ``aspect`` is the
        vertical over the horizontal voxel size. So anterior and superior are up and the patient's right
        is on the right (neurological convention) for LPS, RAS or transposed storage alike.
    """
    import nibabel as nib

    affine = check_affine("affine", affine)
    if isinstance(normal_axis, bool) or not isinstance(normal_axis, (int, np.integer)) or not 0 <= normal_axis < 3:
        raise ValueError(f"normal_axis must be 0, 1 or 2 (an array axis), got {normal_axis!r}")
    ornt = nib.orientations.io_orientation(np.asarray(affine, dtype=np.float64))
    ip = [a for a in range(3) if a != normal_axis]
    img = np.asarray(plane_image)
    if img.shape != img.shape[:2] or img.ndim != 2:
        raise ValueError(f"plane_image must be a 2D slice, got shape {img.shape}")
    if ornt[ip[0], 0] > ornt[ip[1], 0]:
        img, ip = img.T, ip[::-1]
    for k, a in enumerate(ip):
        if ornt[a, 1] < 0:
            img = np.flip(img, axis=k)
    sp = affine_spacing(affine)
    return img, sp[ip[1]] / sp[ip[0]]


#: Largest cosine between two voxel axes of an affine that still counts as orthogonal (float32 affines of
#: rotated grids reach about 1e-7).
MAX_AXIS_COSINE = 1e-4

#: Largest relative difference between two descriptions of one voxel size that still counts as agreement: a
#: file's header voxel sizes (``pixdim``) and its affine's column norms (both stored as float32), or a case's
#: ``spacing`` and its affine's.
SPACING_RTOL = 1e-3


def check_planes(planes: Sequence[str], owner: str) -> None:
    """Refuse ``planes`` unless it names each of :data:`PLANES` at most once, and at least one (a
    :class:`~longiseg.utils.config.ConfigError`, a ``ValueError``, naming ``owner``: a repeated plane would be drawn
    or averaged more often than the others)."""
    planes = list(planes)
    require(bool(planes) and all(p in PLANES for p in planes) and len(set(planes)) == len(planes), owner,
            f"planes must be a non-empty subset of {PLANES}, each plane once, got {planes}")


def check_spacing_of_affine(spacing: Sequence[float] | np.ndarray, affine: np.ndarray) -> tuple[float, float, float]:
    """``spacing`` (mm along the three array axes) as floats if it agrees with :func:`affine_spacing` ``(affine)``
    within :data:`SPACING_RTOL`.

    Raises:
        ValueError: ``spacing`` contradicts the affine (lesion volumes would use another voxel size than the
            files written with the affine), or either is malformed (a sheared affine included).
    """
    sp = tuple(as_spacing(spacing, 3).tolist())
    of_affine = np.asarray(affine_spacing(affine))  # refuses a sheared affine, as reading a file does
    if not np.allclose(sp, of_affine, rtol=SPACING_RTOL, atol=0.0):
        raise ValueError(f"spacing {list(sp)} contradicts the affine, whose voxel size (its column norms) is "
                         f"{of_affine.tolist()} mm: give spacing=affine_spacing(affine)")
    return sp  # type: ignore[return-value]


def affine_spacing(affine: np.ndarray) -> tuple[float, float, float]:
    """Voxel size in mm along the three array axes of a volume: the column norms of ``affine[:3, :3]``.

    The one rule for the voxel size of a grid: files are read with their affine (nibabel's ``img.affine``,
    the sform when its code is set, else the qform) and every output is written with it, so volumes in mm^3
    use the same matrix. :func:`longiseg.data.volumes.nifti_spacing` applies it to a NIfTI file and refuses a
    file whose header voxel sizes (``pixdim``) disagree with it.

    Args:
        affine: ``(4, 4)`` voxel-to-world matrix.

    The voxel axes must be orthogonal (any rotation, any orientation): with a shear a voxel is a
    parallelepiped whose volume is not the product of its edge lengths, so lesion volumes, distances and
    resampling would all be off (a 26 degree shear: volumes 12 % too large). Such files are refused.

    Raises:
        ValueError: ``affine`` is not a finite ``(4, 4)`` matrix, an axis has zero length, two axes are
            parallel (singular), or the axes are not orthogonal (a cosine above :data:`MAX_AXIS_COSINE` between
            two of them).
    """
    aff = np.asarray(check_array("affine", affine, "(4, 4)"), dtype=np.float64)
    sp = np.linalg.norm(aff[:3, :3], axis=0)
    if not (sp > 0).all():
        raise ValueError(f"affine must give every voxel axis a length > 0 mm, got column norms {sp.tolist()}")
    unit = aff[:3, :3] / sp
    cosine = float(np.abs(unit.T @ unit - np.eye(3)).max())
    if cosine >= 1.0 - 1e-9:  # two axes along one line: no grid at all, not a sheared one
        raise ValueError("affine is singular: two of its voxel axes point along the same line (cosine 1), so the "
                         "voxels span no volume; the file's orientation (qform/sform) is broken")
    if cosine > MAX_AXIS_COSINE:
        raise ValueError(f"affine has a shear: its voxel axes are not orthogonal (cosine {cosine:.3g} between two "
                         f"of them, {math.degrees(math.asin(min(cosine, 1.0))):.2f} degrees off), so voxel sizes "
                         "and volumes are undefined: resample the file onto an orthogonal grid")
    return tuple(float(v) for v in sp)  # type: ignore[return-value]


def check_modalities(modalities: Iterable[str], name: str = "modalities") -> tuple[str, ...]:
    """Return ``modalities`` as a tuple of channel names that the library layout can store, else raise.

    Each name becomes part of a file name (``t0_flair.nii.gz``, :func:`~longiseg.data.layout.image_filename`),
    so it must follow that rule (letters, digits and dashes), and the names must differ from one another
    compared case-insensitively (file names are lower case: ``"FLAIR"`` and ``"flair"`` are one file).

    Args:
        modalities: channel names, e.g. ``("flair", "t2")``.
        name: the argument, named in the messages.

    Raises:
        TypeError: ``modalities`` is a single string or not iterable, or a name is not a string.
        ValueError: a name the layout cannot store, or a name given twice.
    """
    if isinstance(modalities, (str, bytes)) or not isinstance(modalities, Iterable):
        raise TypeError(f"{name} must be a sequence of channel names such as ('flair', 't2'), "
                        f"got {type(modalities).__name__} {modalities!r}")
    mods = tuple(modalities)
    for i, m in enumerate(mods):
        if not isinstance(m, str):
            raise TypeError(f"{name}[{i}] must be a str channel name, got {type(m).__name__} {m!r}")
        try:
            image_filename(0, m)
        except ValueError as err:
            raise ValueError(f"{name}[{i}]: {err}; channel names become file names such as "
                             f"{image_filename(0, 'flair')}") from None
    lower = [m.lower() for m in mods]
    repeated = sorted({m for m, low in zip(mods, lower) if lower.count(low) > 1})
    if repeated:
        raise ValueError(f"{name} must name each channel once (compared case-insensitively: the files are named in "
                         f"lower case), got {list(mods)} repeating {repeated}")
    return tuple(str(m) for m in mods)


def check_case(name: str, case: object) -> LongitudinalCase:
    """Return ``case`` if it is a :class:`LongitudinalCase`, else raise ``TypeError`` naming ``name``."""
    if not isinstance(case, LongitudinalCase):
        raise TypeError(f"{name} must be a LongitudinalCase, got {type(case).__name__}")
    return case


@dataclass
class LongitudinalCase:
    """One patient's registered series of ``T >= 2`` timepoints with its lesion masks.

    Attributes:
        images: ``(T, C, D, H, W)`` float32 intensities; timepoint 0 is the baseline, channels follow
            ``modalities``.
        baseline_mask: ``(D, H, W)`` uint8 binary lesion mask at baseline, or ``None`` for unlabelled cases
            (inference).
        progression_masks: ``(T-1, D, H, W)`` uint8 binary masks of new/enlarging lesions at each follow-up
            (all zero for a stable follow-up), or ``None`` for unlabelled cases.
        affine: ``(4, 4)`` voxel-to-world matrix shared by all volumes.
        spacing: voxel size in mm along ``(D, H, W)``.
        modalities: channel names, e.g. ``("flair", "t2")``: one per channel, each a valid file-name part, no
            name twice (compared case-insensitively; see :func:`check_modalities`).
        case_id: unique case identifier, a single folder name
            (see :func:`~longiseg.data.layout.check_case_id`).
        patient_id: patient identifier (several cases may share one).
        brain_mask: optional ``(D, H, W)`` uint8 brain mask used for normalisation and sampling.
        baseline_annotated: ``False`` when the dataset has no baseline annotation (MSSEG-2): the
            ``baseline_mask`` is then all zero and must not be used as a training target.
        metadata: free-form extras (dataset name, crop box of a cropped case, demo anatomy source).

    Raises:
        TypeError: non-numeric images or masks, or a non-bool ``baseline_annotated``.
        ValueError: shapes that do not fit ``(T, C, D, H, W)``, non-finite images, non-binary masks, an all-zero
            ``brain_mask``, a singular or sheared ``affine``, a ``spacing`` other than the affine's voxel size
            (:func:`affine_spacing`, within :data:`SPACING_RTOL`), modalities that do not name the channels or an
            invalid ``case_id``: what ``load_case`` refuses in a file is refused in memory too, so that
            ``save_case`` never writes a case that cannot be read back.
    """

    images: np.ndarray
    baseline_mask: np.ndarray | None
    progression_masks: np.ndarray | None
    affine: np.ndarray
    spacing: tuple[float, float, float]
    modalities: tuple[str, ...]
    case_id: str
    patient_id: str = ""
    brain_mask: np.ndarray | None = None
    baseline_annotated: bool = True
    metadata: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        check_bool("baseline_annotated", self.baseline_annotated)
        imgs = np.asarray(self.images)
        if imgs.ndim != 5:
            raise ValueError(f"images must have 5 dims (T, C, D, H, W), got shape {tuple(imgs.shape)}")
        if imgs.dtype != bool and not (np.issubdtype(imgs.dtype, np.integer) or np.issubdtype(imgs.dtype, np.floating)):
            raise TypeError(f"images must hold real numbers (bool, int or float), got dtype {imgs.dtype}")
        check_timepoints("images.shape[0] (number of timepoints T)", int(imgs.shape[0]))
        for axis, what in enumerate(("number of channels C", "D", "H", "W"), start=1):
            check_positive_int(f"images.shape[{axis}] ({what})", int(imgs.shape[axis]))
        check_finite("images", imgs)
        with np.errstate(over="ignore"):  # (refused just below, with the range named)
            self.images = np.ascontiguousarray(imgs, dtype=np.float32)
        if self.images.dtype != imgs.dtype and not np.isfinite(self.images).all():  # float64 beyond float32's range
            raise ValueError(f"images hold values beyond the float32 range (magnitude above "
                             f"{float(np.finfo(np.float32).max):.4g}, largest {float(np.abs(imgs).max()):.4g}), which "
                             f"the case stores as float32; rescale the intensities")
        t, c, *spatial = self.images.shape
        spatial_t = tuple(spatial)
        self.modalities = check_modalities(self.modalities)
        if len(self.modalities) != c:
            raise ValueError(f"modalities must name the {c} image channels, got {list(self.modalities)}")
        self.baseline_mask = _as_mask("baseline_mask", self.baseline_mask, spatial_t)
        if self.progression_masks is not None:
            prog = np.asarray(self.progression_masks)
            if prog.ndim != 4 or prog.shape[0] != t - 1:
                raise ValueError(
                    f"progression_masks must have shape (T-1, D, H, W) = {(t - 1, *spatial_t)}, "
                    f"got {tuple(prog.shape)}"
                )
            self.progression_masks = np.stack(
                [_as_mask(f"progression_masks[{i}]", prog[i], spatial_t) for i in range(t - 1)]
            )
        if (self.baseline_mask is None) != (self.progression_masks is None):
            raise ValueError("baseline_mask and progression_masks must both be given or both be None")
        self.brain_mask = _as_mask("brain_mask", self.brain_mask, spatial_t)
        if self.brain_mask is not None and not self.brain_mask.any():  # as load_case refuses the file
            raise ValueError("brain_mask is all zero: it leaves no voxel to normalise or sample; pass None to use "
                             "the images' non-zero voxels")
        self.affine = check_affine("affine", self.affine)
        self.spacing = check_spacing_of_affine(self.spacing, self.affine)  # type: ignore[assignment]
        self.case_id = str(check_case_id(self.case_id))
        self.patient_id = str(self.patient_id) if self.patient_id else self.case_id

    # ------------------------------------------------------------------ properties
    @property
    def num_timepoints(self) -> int:
        """Number of timepoints ``T`` (baseline plus ``T-1`` follow-ups)."""
        return int(self.images.shape[0])

    @property
    def num_channels(self) -> int:
        """Number of modalities ``C``."""
        return int(self.images.shape[1])

    @property
    def shape(self) -> tuple[int, int, int]:
        """Spatial shape ``(D, H, W)``."""
        return tuple(int(s) for s in self.images.shape[2:])  # type: ignore[return-value]

    @property
    def has_labels(self) -> bool:
        """Whether the case carries baseline and progression masks (``False`` for inference-only cases)."""
        return self.baseline_mask is not None

    @property
    def progression_per_followup(self) -> list[bool]:
        """For each follow-up, whether its progression mask is non-empty (length ``T-1``)."""
        if self.progression_masks is None:
            raise ValueError(f"case {self.case_id!r} has no progression masks (unlabelled case)")
        return [bool(m.any()) for m in self.progression_masks]

    @property
    def has_progression(self) -> bool:
        """Whether any follow-up shows new or enlarging lesions."""
        return any(self.progression_per_followup)

    @property
    def plane_axes(self) -> dict[str, int]:
        """Array axis normal to each anatomical plane (see :func:`plane_axes`)."""
        return plane_axes(self.affine)

    def foreground_mask(self) -> np.ndarray:
        """``(D, H, W)`` bool brain region: the brain mask if given, else voxels non-zero in any image."""
        if self.brain_mask is not None:
            return self.brain_mask.astype(bool)
        return np.any(self.images != 0, axis=(0, 1))

    def lesion_mask(self) -> np.ndarray:
        """``(D, H, W)`` bool union of the baseline mask and all progression masks."""
        if not self.has_labels:
            raise ValueError(f"case {self.case_id!r} has no masks (unlabelled case)")
        assert self.baseline_mask is not None and self.progression_masks is not None
        return self.baseline_mask.astype(bool) | self.progression_masks.any(axis=0)

    def with_arrays(self, **changes: object) -> LongitudinalCase:
        """Copy of the case with some fields replaced (validated again), e.g. ``with_arrays(images=x)``."""
        return replace(self, **changes)

    def summary(self) -> dict[str, object]:
        """Small JSON-able description (ids, shape, spacing, modalities, lesion voxel counts)."""
        out: dict[str, object] = {
            "case_id": self.case_id,
            "patient_id": self.patient_id,
            "num_timepoints": self.num_timepoints,
            "modalities": list(self.modalities),
            "shape": list(self.shape),
            "spacing": list(self.spacing),
        }
        if self.has_labels:
            assert self.baseline_mask is not None and self.progression_masks is not None
            out["baseline_voxels"] = int(self.baseline_mask.sum())
            out["progression_voxels"] = [int(m.sum()) for m in self.progression_masks]
            out["progression"] = self.has_progression
        return out


def _as_mask(name: str, mask: object, shape: Sequence[int]) -> np.ndarray | None:
    """Validate a binary ``(D, H, W)`` mask and return it as contiguous uint8 (``None`` passes through)."""
    if mask is None:
        return None
    arr = np.asarray(mask)
    if tuple(arr.shape) != tuple(shape):
        raise ValueError(f"{name} must have the spatial shape {tuple(shape)} of the images, got {arr.shape}")
    check_finite(name, arr)
    check_binary(name, arr)
    return np.ascontiguousarray(arr, dtype=np.uint8)
