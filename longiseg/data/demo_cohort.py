"""Embedded demo cohort: a longitudinal MS-like cohort synthesised on real anatomy, with no download.

Anatomy comes from the MNI152 (ICBM 2009a, 1 mm, 197x233x189) T1 template and its grey/white-matter
probability maps that the ``nilearn`` package ships inside its installation (the files that
``nilearn.datasets.load_mni152_template`` / ``load_mni152_gm_template`` / ``load_mni152_wm_template``
read); they are read directly with nibabel, which avoids importing nilearn. Where nilearn is not installed
a procedural head phantom (ellipsoids for the brain, cortex, white matter, ventricles and deep grey
nuclei) is used instead and a warning is logged.

Per patient (all seeded by ``(seed, patient index)``):

1. anatomical variability: a random affine (scale 0.94-1.06, rotation up to 3 degrees) and a smooth
   displacement field (about 2 mm) warp the tissue maps;
2. baseline: ovoid white-matter lesions (random size, elongation and orientation, mildly irregular
   outline), placed preferentially in periventricular white matter, never touching each other;
3. follow-ups: for "progressing" patients (``progression_fraction`` of the cohort) each follow-up gets new
   lesions and enlarges some existing ones (at least one follow-up is active); stable patients keep their
   lesions unchanged, except that ``shrinking_lesions`` (off by default) lets existing lesions shrink in any
   patient. The progression mask of follow-up ``k`` is exactly the voxels that are lesion at ``k`` but not
   at ``k-1`` (new or enlarged voxels);
4. images: FLAIR-like (lesions bright, grey matter brighter than white matter, CSF dark) and T2-like
   (CSF brightest, lesions bright) contrasts with partial-volume edges and tissue texture; each follow-up
   carries a residual rigid misregistration (below one voxel and one degree by default); every scan gets
   its own smooth multiplicative bias field, scanner gain and Rician noise, and is skull-stripped.

Command line: ``longiseg cohort OUT`` (the demo's cohort and its train/test split); a figure of a patient:
:func:`longiseg.workflows.figures.plot_case`.
"""

from __future__ import annotations

import functools
import importlib.util
import logging
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import ndimage

from longiseg.data import layout
from longiseg.data.case import LongitudinalCase, check_modalities
from longiseg.data.lesions import label_lesions
from longiseg.data.loading import save_case
from longiseg.data.manifest import Manifest, ManifestEntry, write_manifest
from longiseg.utils.config import ConfigBase, ConfigError, require_seed
from longiseg.utils.io import PathLike, atomic_directory, atomic_write_json, folder_is_empty
from longiseg.utils.logging import get_logger, log_once
from longiseg.utils.validation import (
    check_bool,
    check_instance,
    check_path,
    check_positive_int,
    check_probability,
    check_timepoints,
)

__all__ = [
    "DemoCohortConfig",
    "Anatomy",
    "load_anatomy",
    "generate_demo_case",
    "iter_demo_cases",
    "generate_demo_cohort",
]

#: The most patients a demo cohort holds (each is a full volume on disk).
MAX_DEMO_PATIENTS = 100_000

_LOG = get_logger("longiseg.data.demo")

_MNI_FILES = {
    "t1": "mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz",
    "gm": "mni_icbm152_gm_tal_nlin_sym_09a_converted.nii.gz",
    "wm": "mni_icbm152_wm_tal_nlin_sym_09a_converted.nii.gz",
}
_MNI_SHAPE = (197, 233, 189)
_MNI_AFFINE = np.array([[1.0, 0, 0, -98], [0, 1.0, 0, -134], [0, 0, 1.0, -72], [0, 0, 0, 1]])

#: Relative tissue intensities (CSF, GM, WM, lesion) of the synthetic contrasts: FLAIR and T2 show lesions
#: hyperintense, T1 hypointense (dark against white matter, as chronic MS lesions and tumour cores are).
CONTRASTS: dict[str, tuple[float, float, float, float]] = {
    "flair": (0.12, 0.80, 0.58, 1.30),
    "t2": (1.00, 0.55, 0.40, 0.82),
    "t1": (0.25, 0.60, 0.85, 0.55),
}


@dataclass(frozen=True)
class DemoCohortConfig(ConfigBase):
    """Parameters of the demo cohort (lengths in mm, counts per patient); a
    :class:`~longiseg.utils.config.ConfigBase` (``from_dict``, ``to_dict``, ``with_overrides``, files).

    Attributes:
        num_patients: number of patients (one case each).
        num_timepoints: ``T`` (2 or 3 typical; any ``>= 2`` works).
        spacing: isotropic voxel size in mm, an integer downsampling of the 1 mm template
            (2 gives 98x116x94 voxels, the fast CPU variant).
        progression_fraction: fraction of patients with new/enlarging lesions (rounded to a count).
        modalities: any of :data:`CONTRASTS` (``"flair"``, ``"t2"``, ``"t1"``), each once, in channel order.
        baseline_lesions: inclusive range of baseline lesion counts.
        new_lesions: inclusive range of new lesions per active follow-up.
        enlarging_lesions: inclusive range of enlarging lesions per active follow-up.
        lesion_radius_mm: range of the largest semi-axis of baseline lesions (log-uniform).
        new_lesion_radius_mm: range of the largest semi-axis of new lesions.
        enlarge_factor: range of the semi-axis growth factor of enlarging lesions.
        shrinking_lesions: inclusive range of existing lesions that shrink at each follow-up, in every patient
            (stable ones too; shrinking is not progression, so it adds no progression voxels). ``(0, 0)``
            (default) keeps every lesion's size unless it enlarges.
        shrink_factor: range of the semi-axis factor of shrinking lesions (``< 1``).
        min_lesion_voxels: lesions smaller than this (at ``spacing``) are redrawn; at least 1 (a lesion of no
            voxel is no lesion).
        max_translation: largest residual misregistration of a follow-up per axis, in voxels.
        max_rotation: largest residual misregistration rotation, in degrees.
        bias_strength: amplitude of the log bias field (0.15: about +-15 %).
        noise_level: Rician noise sigma relative to white-matter intensity.
        anatomy: ``"auto"`` (MNI152 if nilearn is installed, else phantom), ``"mni152"`` or ``"phantom"``.
        seed: base seed; patient ``i`` uses ``(seed, i)``.
    """

    num_patients: int = 12
    num_timepoints: int = 2
    spacing: int = 2
    progression_fraction: float = 0.5
    modalities: tuple[str, ...] = ("flair", "t2")
    baseline_lesions: tuple[int, int] = (5, 16)
    new_lesions: tuple[int, int] = (1, 4)
    enlarging_lesions: tuple[int, int] = (0, 2)
    lesion_radius_mm: tuple[float, float] = (2.5, 8.0)
    new_lesion_radius_mm: tuple[float, float] = (2.5, 5.0)
    enlarge_factor: tuple[float, float] = (1.25, 1.5)
    shrinking_lesions: tuple[int, int] = (0, 0)
    shrink_factor: tuple[float, float] = (0.6, 0.85)
    min_lesion_voxels: int = 3
    max_translation: float = 0.5
    max_rotation: float = 0.5
    bias_strength: float = 0.15
    noise_level: float = 0.03
    anatomy: str = "auto"
    seed: int = 0

    def __post_init__(self) -> None:
        self.coerce_fields()  # built directly, checked as when read from a file
        check_positive_int("num_patients", self.num_patients)
        if self.num_patients > MAX_DEMO_PATIENTS:  # a larger number failed deep inside NumPy
            raise ConfigError(f"num_patients must be at most {MAX_DEMO_PATIENTS:,}, got {self.num_patients}")
        check_timepoints("num_timepoints", self.num_timepoints)
        check_positive_int("spacing", self.spacing)
        if self.spacing > 4:
            raise ConfigError(f"spacing must be an integer number of mm from 1 to 4, got {self.spacing}")
        check_probability("progression_fraction", self.progression_fraction)
        mods = tuple(m.lower() for m in check_modalities(self.modalities))  # each named once
        if not mods or any(m not in CONTRASTS for m in mods):
            raise ConfigError(f"modalities must be a non-empty subset of {tuple(CONTRASTS)}, got {self.modalities}")
        object.__setattr__(self, "modalities", mods)
        for name in ("baseline_lesions", "new_lesions", "enlarging_lesions", "shrinking_lesions"):
            lo, hi = getattr(self, name)
            if not (0 <= lo <= hi):
                raise ConfigError(f"{name} must be a range (low, high) with 0 <= low <= high, got {(lo, hi)}")
        if self.new_lesions[1] < 1 and self.enlarging_lesions[1] < 1:
            raise ConfigError("new_lesions or enlarging_lesions must allow at least one lesion per active follow-up")
        for name in ("lesion_radius_mm", "new_lesion_radius_mm", "enlarge_factor", "shrink_factor"):
            lo, hi = getattr(self, name)
            if not (0 < lo <= hi):
                raise ConfigError(f"{name} must be a range (low, high) with 0 < low <= high, got {(lo, hi)}")
        if self.enlarge_factor[0] <= 1.0:
            raise ConfigError(f"enlarge_factor must be > 1 (lesions grow), got {self.enlarge_factor}")
        if self.shrink_factor[1] >= 1.0:
            raise ConfigError(f"shrink_factor must be < 1 (lesions shrink), got {self.shrink_factor}")
        check_positive_int("min_lesion_voxels", self.min_lesion_voxels)  # -5 was taken: lesions of no voxel
        for name in ("max_translation", "max_rotation", "bias_strength", "noise_level"):
            if not 0 <= getattr(self, name) < math.inf:  # also NaN
                raise ConfigError(f"{name} must be a finite number >= 0, got {getattr(self, name)}")
        require_seed(self.seed, "DemoCohortConfig", "seed")
        if self.anatomy not in ("auto", "mni152", "phantom"):
            raise ConfigError(f"anatomy must be 'auto', 'mni152' or 'phantom', got {self.anatomy!r}")

    @property
    def num_progressing(self) -> int:
        """Number of progressing patients (``round(progression_fraction * num_patients)``)."""
        return int(round(self.progression_fraction * self.num_patients))


# ============================================================================ anatomy
@dataclass(frozen=True)
class Anatomy:
    """Tissue probability maps on one grid.

    Attributes:
        gm, wm, csf: ``(D, H, W)`` float32 probabilities.
        brain: ``(D, H, W)`` bool brain mask (skull-stripped region).
        lesion_prior: ``(D, H, W)`` float32 relative likelihood of a lesion centre (deep white matter,
            higher near the ventricles).
        affine: ``(4, 4)`` voxel-to-world matrix.
        source: ``"mni152"`` or ``"phantom"``.
    """

    gm: np.ndarray
    wm: np.ndarray
    csf: np.ndarray
    brain: np.ndarray
    lesion_prior: np.ndarray
    affine: np.ndarray
    source: str

    @property
    def spacing(self) -> float:
        """Isotropic voxel size in mm."""
        return float(abs(self.affine[0, 0]))


def _nilearn_data_dir() -> Path | None:
    """The nilearn package's bundled data folder, located without importing nilearn."""
    spec = importlib.util.find_spec("nilearn")
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0]) / "datasets" / "data"


def _read_mni() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray] | None:
    """``(t1, gm, wm, affine)`` at 1 mm rescaled to [0, 1] (as nilearn's loaders do), or ``None``."""
    import nibabel as nib

    data_dir = _nilearn_data_dir()
    if data_dir is None:
        return None
    paths = {k: data_dir / v for k, v in _MNI_FILES.items()}
    if all(p.is_file() for p in paths.values()):
        imgs = {k: nib.load(str(p)) for k, p in paths.items()}
        arrays = {k: np.asarray(im.dataobj, dtype=np.float32) for k, im in imgs.items()}
        affine = np.asarray(imgs["t1"].affine, dtype=np.float64)
    else:  # another nilearn version: its loaders read the files it ships
        from nilearn import datasets

        loaded = {"t1": datasets.load_mni152_template(resolution=1),
                  "gm": datasets.load_mni152_gm_template(resolution=1),
                  "wm": datasets.load_mni152_wm_template(resolution=1)}
        arrays = {k: np.asarray(im.get_fdata(), dtype=np.float32) for k, im in loaded.items()}
        affine = np.asarray(loaded["t1"].affine, dtype=np.float64)
    for v in arrays.values():
        v /= max(float(v.max()), 1e-6)
    return arrays["t1"], arrays["gm"], arrays["wm"], affine


def _soft_inside(rho: np.ndarray, width: float) -> np.ndarray:
    """Smooth indicator of ``rho <= 1`` with a transition of relative ``width``."""
    return np.clip((1.0 + width - rho) / (2 * width), 0.0, 1.0).astype(np.float32)


def _phantom(spacing: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Procedural head phantom on the MNI grid sampled every ``spacing`` mm: ``(t1-like, gm, wm, affine)``.

    Ellipsoids: brain with a cortical grey-matter ribbon and sulcal CSF rim, white matter, two lateral
    ventricles and two deep grey nuclei. The affine is the 1 mm MNI affine (the caller scales it).
    """
    shape = tuple(s // spacing for s in _MNI_SHAPE)
    off = (spacing - 1) / 2.0

    def ell(center: Sequence[float], radii: Sequence[float], width: float) -> np.ndarray:
        grids = np.ogrid[tuple(slice(0, n) for n in shape)]
        r2 = sum(((g * spacing + off - c) / r) ** 2 for g, c, r in zip(grids, center, radii))
        return _soft_inside(np.sqrt(r2).astype(np.float32), width)

    c = np.array([98.0, 120.0, 80.0])
    brain = ell(c, (68, 84, 62), 0.02)
    inner = ell(c, (60, 76, 55), 0.03)  # inside the cortical ribbon
    vent = np.maximum(ell(c + (-8, 2, 12), (5, 24, 9), 0.15), ell(c + (8, 2, 12), (5, 24, 9), 0.15))
    nuclei = np.maximum(ell(c + (-18, 5, 0), (7, 10, 8), 0.1), ell(c + (18, 5, 0), (7, 10, 8), 0.1))
    sulcal_csf = ell(c, (66, 82, 60), 0.02)
    wm = inner * (1 - vent) * (1 - nuclei)
    gm = np.clip(sulcal_csf - inner, 0, 1) + inner * nuclei * (1 - vent)
    t1 = brain * (0.35 + 0.4 * gm + 0.6 * wm)
    return t1.astype(np.float32), gm.astype(np.float32), wm.astype(np.float32), _MNI_AFFINE.copy()


def _block_mean(arr: np.ndarray, factor: int) -> np.ndarray:
    if factor == 1:
        return arr
    shp = [s // factor for s in arr.shape]
    a = arr[: shp[0] * factor, : shp[1] * factor, : shp[2] * factor]
    return a.reshape(shp[0], factor, shp[1], factor, shp[2], factor).mean(axis=(1, 3, 5), dtype=np.float32)


@functools.lru_cache(maxsize=4)
def load_anatomy(spacing: int = 2, source: str = "auto") -> Anatomy:
    """Tissue maps at ``spacing`` mm from the MNI152 template shipped with nilearn (or the phantom).

    Args:
        spacing: integer voxel size in mm (block-averaged from 1 mm; 2 gives 98x116x94).
        source: ``"auto"``, ``"mni152"`` (raise if nilearn is missing) or ``"phantom"``.

    Raises:
        ImportError: ``source="mni152"`` without nilearn installed.
    """
    spacing = check_positive_int("spacing", spacing)
    if source not in ("auto", "mni152", "phantom"):
        raise ValueError(f"source must be 'auto', 'mni152' or 'phantom', got {source!r}")
    mni = None if source == "phantom" else _read_mni()
    if mni is None and source == "mni152":
        raise ImportError("the MNI152 demo anatomy needs nilearn: pip install 'longiseg[demo]'")
    if mni is None:
        if source == "auto":
            log_once(_LOG, "phantom", "nilearn is not installed: the demo cohort uses a procedural head "
                     "phantom instead of the MNI152 anatomy (pip install 'longiseg[demo]')", logging.WARNING)
        t1, gm, wm, affine = _phantom(spacing)  # built directly on the coarse grid
        name, factor = "phantom", 1
    else:
        t1, gm, wm, affine = mni
        name, factor = "mni152", spacing
    brain = _block_mean((t1 > 0.02).astype(np.float32), factor) > 0.5
    gm, wm = _block_mean(gm, factor), _block_mean(wm, factor)
    total = gm + wm
    scale = np.where(total > 1.0, 1.0 / np.maximum(total, 1e-6), 1.0)
    gm, wm = gm * scale * brain, wm * scale * brain
    csf = np.clip(1.0 - gm - wm, 0.0, 1.0) * brain
    if spacing > 1:
        step = np.diag([spacing, spacing, spacing, 1.0]).astype(np.float64)
        step[:3, 3] = (spacing - 1) / 2.0
        affine = affine @ step
    # Lesion prior: deep white matter, more likely near the ventricles (periventricular lesions).
    depth = ndimage.distance_transform_edt(brain) * spacing
    ventricles = (csf > 0.6) & (depth > 15.0)
    if not ventricles.any():
        ventricles = csf > 0.6
    dist_vent = ndimage.distance_transform_edt(~ventricles) * spacing
    deep_wm = np.clip((wm - 0.75) / 0.25, 0.0, 1.0) * (depth > 6.0)
    prior = deep_wm * (0.25 + np.exp(-dist_vent / 12.0))
    return Anatomy(gm=gm.astype(np.float32), wm=wm.astype(np.float32), csf=csf.astype(np.float32),
                   brain=brain, lesion_prior=prior.astype(np.float32), affine=affine, source=name)


# ============================================================================ patients
def _smooth_field(rng: np.random.Generator, shape: Sequence[int], coarse: int = 4) -> np.ndarray:
    """Random smooth field scaled to max |value| 1: random low-frequency cosines (separable, fast).

    ``coarse`` is the number of cosine frequencies per axis (higher: finer detail).
    """
    coef = rng.standard_normal((coarse, coarse, coarse)).astype(np.float32)
    coef /= (1.0 + np.add.outer(np.add.outer(np.arange(coarse), np.arange(coarse)), np.arange(coarse))) ** 1.5
    phase = rng.uniform(0, 2 * np.pi, size=3)
    bases = [
        np.cos(np.pi * np.outer(np.arange(n, dtype=np.float32) / n, np.arange(1, coarse + 1)) + ph).astype(np.float32)
        for n, ph in zip(shape, phase)
    ]
    out = np.einsum("abc,xa->xbc", coef, bases[0])
    out = np.einsum("xbc,yb->xyc", out, bases[1])
    out = np.einsum("xyc,zc->xyz", out, bases[2])
    return (out / max(float(np.abs(out).max()), 1e-6)).astype(np.float32)


def _resample(volumes: np.ndarray, coords: np.ndarray) -> np.ndarray:
    """Trilinear samples of ``volumes (N, D, H, W)`` at voxel coordinates ``coords (3, D, H, W)`` (zero outside)."""
    import torch
    import torch.nn.functional as F

    shape = volumes.shape[1:]
    scale = np.array([2.0 / max(s - 1, 1) for s in shape], dtype=np.float32).reshape(3, 1, 1, 1)
    norm = coords * scale - 1.0
    grid = torch.from_numpy(np.ascontiguousarray(norm[::-1].transpose(1, 2, 3, 0)))[None]
    vol = torch.from_numpy(np.ascontiguousarray(volumes, dtype=np.float32))[None]
    out = F.grid_sample(vol, grid, mode="bilinear", padding_mode="zeros", align_corners=True)
    return out[0].numpy()


def _random_rotation(rng: np.random.Generator, max_deg: float) -> np.ndarray:
    axis = rng.standard_normal(3)
    axis /= np.linalg.norm(axis)
    th = math.radians(rng.uniform(-max_deg, max_deg))
    k = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    return np.eye(3) + math.sin(th) * k + (1 - math.cos(th)) * (k @ k)


def _affine_coords(shape: Sequence[int], mat: np.ndarray, shift: np.ndarray) -> np.ndarray:
    """Voxel coordinates ``mat @ (x - centre) + centre + shift`` of every output voxel, ``(3, D, H, W)``."""
    center = ((np.array(shape) - 1) / 2.0).astype(np.float32).reshape(3, 1, 1, 1)
    coords = np.indices(shape, dtype=np.float32) - center
    out = np.einsum("ij,j...->i...", mat.astype(np.float32), coords)
    return out + center + np.asarray(shift, dtype=np.float32).reshape(3, 1, 1, 1)


def _warp_anatomy(anat: Anatomy, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Per-patient anatomy: random affine plus smooth displacement applied to all tissue maps."""
    shape = anat.gm.shape
    mat = _random_rotation(rng, 3.0) @ np.diag(1.0 / rng.uniform(0.94, 1.06, size=3))
    coords = _affine_coords(shape, mat, np.zeros(3))
    disp_vox = 2.0 / anat.spacing
    for i in range(3):
        coords[i] += disp_vox * _smooth_field(rng, shape)
    stack = np.stack([anat.gm, anat.wm, anat.csf, anat.lesion_prior, anat.brain.astype(np.float32)])
    gm, wm, csf, prior, brain = _resample(stack, coords)
    brain_b = brain > 0.5
    return {"gm": gm * brain_b, "wm": wm * brain_b, "csf": csf * brain_b, "lesion_prior": prior, "brain": brain_b}


@dataclass
class _Lesion:
    center: np.ndarray  # voxel coordinates
    axes_mm: np.ndarray  # semi-axes
    rotation: np.ndarray  # (3, 3)
    wobble: tuple  # (amplitudes, wave vectors, phases) of the outline irregularity
    contrast: float
    scale: float = 1.0  # size factor from ``changed_at`` on (> 1 enlarged, < 1 shrunk)
    appears_at: int = 0
    changed_at: int | None = None  # follow-up at which the lesion enlarged or shrank (once at most)

    def box_and_rho(self, shape: Sequence[int], spacing: float, scale: float) -> tuple[tuple[slice, ...], np.ndarray]:
        """Bounding box (slices) and normalised star radius ``rho`` (lesion where ``rho <= 1``)."""
        reach = float(self.axes_mm.max()) * scale * 1.25 / spacing + 1
        lo = np.maximum(np.floor(self.center - reach).astype(int), 0)
        hi = np.minimum(np.ceil(self.center + reach).astype(int) + 1, shape)
        sl = tuple(slice(int(a), int(b)) for a, b in zip(lo, hi))
        grids = np.meshgrid(*[np.arange(a, b, dtype=np.float32) for a, b in zip(lo, hi)], indexing="ij")
        offs = np.stack([(g - c) * spacing for g, c in zip(grids, self.center)], axis=-1)  # mm
        local = offs @ self.rotation  # coordinates in the lesion frame
        r = np.linalg.norm(local, axis=-1) + 1e-6
        q = np.sqrt(np.sum((local / (self.axes_mm * scale)) ** 2, axis=-1))
        amps, waves, phases = self.wobble
        unit = local / r[..., None]
        wob = 1.0 + sum(a * np.cos(unit @ k + p) for a, k, p in zip(amps, waves, phases))
        return sl, (q / wob).astype(np.float32)


def _draw_lesion(rng: np.random.Generator, anat: dict[str, np.ndarray], cdf: np.ndarray,
                 radius_range: tuple[float, float], appears_at: int) -> _Lesion:
    flat = int(np.searchsorted(cdf, rng.uniform(0, cdf[-1])))
    flat = min(flat, cdf.size - 1)
    center = np.array(np.unravel_index(flat, anat["wm"].shape), dtype=np.float64) + rng.uniform(-0.5, 0.5, 3)
    big = math.exp(rng.uniform(math.log(radius_range[0]), math.log(radius_range[1])))
    axes = np.array([big, big * rng.uniform(0.55, 1.0), big * rng.uniform(0.45, 0.9)])
    wobble = (rng.uniform(0.0, 0.08, 3), rng.standard_normal((3, 3)) * 2.0, rng.uniform(0, 2 * math.pi, 3))
    return _Lesion(center=center, axes_mm=axes, rotation=_random_rotation(rng, 180.0), wobble=wobble,
                   contrast=float(rng.uniform(0.85, 1.1)), appears_at=appears_at)


def _place_lesions(rng: np.random.Generator, anat: dict[str, np.ndarray], cdf: np.ndarray, count: int,
                   radius_range: tuple[float, float], reserved: np.ndarray, cfg: DemoCohortConfig,
                   spacing: float, appears_at: int) -> list[_Lesion]:
    """Place ``count`` lesions in white matter whose grown extent never touches ``reserved`` (updated)."""
    out: list[_Lesion] = []
    grow = cfg.enlarge_factor[1]
    shape = reserved.shape
    struct = ndimage.generate_binary_structure(3, 3)
    for _ in range(count * 60):
        if len(out) == count:
            break
        les = _draw_lesion(rng, anat, cdf, radius_range, appears_at)
        sl, rho = les.box_and_rho(shape, spacing, 1.0)
        inside = rho <= 1.0
        n = int(inside.sum())
        if n < cfg.min_lesion_voxels or float(anat["wm"][sl][inside].mean()) < 0.6:
            continue
        sl_big, rho_big = les.box_and_rho(shape, spacing, grow)
        big = rho_big <= 1.0
        big_d = ndimage.binary_dilation(big, struct)
        if (reserved[sl_big] & big_d).any() or not anat["brain"][sl_big][big].all():
            continue
        reserved[sl_big] |= big_d
        out.append(les)
    return out


def _render_lesions(lesions: Sequence[_Lesion], timepoint: int, shape: Sequence[int], spacing: float
                    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Binary mask, soft (partial-volume) map and contrast map of the lesions present at ``timepoint``."""
    mask = np.zeros(shape, dtype=bool)
    soft = np.zeros(shape, dtype=np.float32)
    contrast = np.ones(shape, dtype=np.float32)
    for les in lesions:
        if les.appears_at > timepoint:
            continue
        scale = les.scale if (les.changed_at is not None and les.changed_at <= timepoint) else 1.0
        sl, rho = les.box_and_rho(shape, spacing, scale)
        width = 0.5 * spacing / float(les.axes_mm.mean() * scale)
        s = _soft_inside(rho, width)
        mask[sl] |= rho <= 1.0
        upd = s > soft[sl]
        soft[sl] = np.where(upd, s, soft[sl])
        contrast[sl] = np.where(upd, les.contrast, contrast[sl])
    return mask, soft, contrast


def _render_image(anat: dict[str, np.ndarray], texture: np.ndarray, soft: np.ndarray, contrast: np.ndarray,
                  modality: str) -> np.ndarray:
    v_csf, v_gm, v_wm, v_les = CONTRASTS[modality]
    tissue = (anat["csf"] * v_csf + anat["gm"] * v_gm + anat["wm"] * v_wm) * texture
    return (tissue * (1.0 - soft) + soft * v_les * contrast).astype(np.float32)


def _acquire(clean: np.ndarray, brain: np.ndarray, rng: np.random.Generator, cfg: DemoCohortConfig,
             bias: np.ndarray) -> np.ndarray:
    """Scanner model: bias field, gain, Rician noise, skull stripping, integer storage range."""
    gain = float(rng.uniform(400.0, 900.0))
    sigma = cfg.noise_level * CONTRASTS["flair"][2] * gain
    signal = clean * bias * gain
    n1 = rng.standard_normal(clean.shape, dtype=np.float32) * sigma
    n2 = rng.standard_normal(clean.shape, dtype=np.float32) * sigma
    out = np.sqrt((signal + n1) ** 2 + n2**2)
    out[~brain] = 0.0
    return np.round(out).astype(np.float32)


def generate_demo_case(index: int, config: DemoCohortConfig | None = None, *, progressing: bool | None = None,
                       with_lesion_masks: bool = False) -> tuple[LongitudinalCase, dict]:
    """Synthesise patient ``index`` of the demo cohort in memory.

    Args:
        index: patient index (seeds the patient with ``(config.seed, index)``).
        config: cohort parameters (defaults if ``None``).
        progressing: force the patient's status; ``None`` uses the cohort assignment (a seeded choice of
            ``config.num_progressing`` patients).
        with_lesion_masks: add ``stats["lesion_masks"]``, the ``(T, D, H, W)`` uint8 lesion mask of every
            timepoint (not JSON-able; for checks).

    Returns:
        ``(case, stats)``: the case (images ``(T, C, D, H, W)`` float32, masks, brain mask, affine) and a
        JSON-able dict of lesion counts/volumes and the misregistration applied.

    Raises:
        TypeError: ``config`` is not a :class:`DemoCohortConfig` (or ``None``), ``index`` not an int, or
            ``progressing``/``with_lesion_masks`` not a bool (``"false"`` would count as ``True``).
        ValueError: a negative ``index``.
    """
    cfg = _config(config)
    index = check_positive_int("index", index, minimum=0)
    with_lesion_masks = check_bool("with_lesion_masks", with_lesion_masks)
    if progressing is None:
        progressing = index in _progressing_set(cfg)
    else:
        progressing = check_bool("progressing", progressing)
    base = load_anatomy(cfg.spacing, cfg.anatomy)
    rng = np.random.default_rng([cfg.seed, index])
    anat = _warp_anatomy(base, rng)
    shape, sp, t_count = anat["wm"].shape, float(cfg.spacing), cfg.num_timepoints
    cdf = np.cumsum(anat["lesion_prior"].ravel().astype(np.float64))
    reserved = np.zeros(shape, dtype=bool)
    n_base = int(rng.integers(cfg.baseline_lesions[0], cfg.baseline_lesions[1] + 1))
    lesions = _place_lesions(rng, anat, cdf, n_base, cfg.lesion_radius_mm, reserved, cfg, sp, 0)
    active = [False] * (t_count - 1)
    if progressing:
        active = [bool(rng.random() < 0.7) for _ in range(t_count - 1)]
        if not any(active):
            active[int(rng.integers(t_count - 1))] = True
    per_fu: list[dict] = []
    for k in range(1, t_count):
        n_new = n_enl = 0
        if active[k - 1]:
            n_new = int(rng.integers(cfg.new_lesions[0], cfg.new_lesions[1] + 1))
            candidates = [les for les in lesions if les.changed_at is None and les.appears_at < k]
            n_enl = min(int(rng.integers(cfg.enlarging_lesions[0], cfg.enlarging_lesions[1] + 1)), len(candidates))
            if n_new == 0 and n_enl == 0:
                n_new = 1
            for j in rng.choice(len(candidates), size=n_enl, replace=False) if n_enl else []:
                candidates[int(j)].changed_at = k
                candidates[int(j)].scale = float(rng.uniform(*cfg.enlarge_factor))
            new = _place_lesions(rng, anat, cdf, n_new, cfg.new_lesion_radius_mm, reserved, cfg, sp, k)
            for les in new:
                les.contrast = float(rng.uniform(1.0, 1.15))  # active lesions are brighter
            lesions.extend(new)
            n_new = len(new)
        n_shrunk = 0
        if cfg.shrinking_lesions[1] > 0:  # drawn only when enabled: default cohorts keep their random stream
            unchanged = [les for les in lesions if les.changed_at is None and les.appears_at < k]
            n_shrunk = min(int(rng.integers(cfg.shrinking_lesions[0], cfg.shrinking_lesions[1] + 1)),
                           len(unchanged))
            for j in rng.choice(len(unchanged), size=n_shrunk, replace=False) if n_shrunk else []:
                unchanged[int(j)].changed_at = k
                unchanged[int(j)].scale = float(rng.uniform(*cfg.shrink_factor))
        per_fu.append({"new_lesions": n_new, "enlarged_lesions": n_enl, "shrunk_lesions": n_shrunk})
    texture = 1.0 + 0.03 * _smooth_field(rng, shape, coarse=12)
    masks, images = [], np.empty((t_count, len(cfg.modalities), *shape), dtype=np.float32)
    misreg = []
    for t in range(t_count):
        mask, soft, contrast = _render_lesions(lesions, t, shape, sp)
        masks.append(mask)
        rot, shift = np.eye(3), np.zeros(3)
        if t > 0:
            rot = _random_rotation(rng, cfg.max_rotation)
            shift = rng.uniform(-cfg.max_translation, cfg.max_translation, 3)
        misreg.append({"rotation_deg": float(math.degrees(math.acos(np.clip((np.trace(rot) - 1) / 2, -1, 1)))),
                       "translation_vox": [float(s) for s in shift]})
        clean = np.stack([_render_image(anat, texture, soft, contrast, m) for m in cfg.modalities]
                         + [anat["brain"].astype(np.float32)])
        if t > 0:  # residual misregistration of the follow-up (rigid, about the volume centre)
            clean = _resample(clean, _affine_coords(shape, rot, shift))
        brain_t = clean[-1] > 0.5
        for c in range(len(cfg.modalities)):
            bias = np.exp(cfg.bias_strength * _smooth_field(rng, shape, coarse=3)).astype(np.float32)
            images[t, c] = _acquire(clean[c], brain_t, rng, cfg, bias)
    progression = np.stack([masks[k] & ~masks[k - 1] for k in range(1, t_count)]).astype(np.uint8)
    case_id = f"demo-{index:03d}"
    case = LongitudinalCase(
        images=images, baseline_mask=masks[0].astype(np.uint8), progression_masks=progression,
        affine=base.affine, spacing=(sp, sp, sp), modalities=cfg.modalities, case_id=case_id,
        patient_id=case_id, brain_mask=anat["brain"].astype(np.uint8), metadata={"anatomy": base.source},
    )
    voxel_ml = sp**3 / 1000.0
    stats = {
        "case_id": case_id,
        "progressing": bool(case.has_progression),
        "baseline_lesions": len([les for les in lesions if les.appears_at == 0]),
        "baseline_volume_ml": round(float(masks[0].sum()) * voxel_ml, 3),
        "lesion_volumes_mm3": sorted(round(float(v), 1) for v in label_lesions(masks[0], (sp,) * 3).volumes_mm3),
        "followups": [
            {**fu, "progression_volume_mm3": round(float(progression[k].sum()) * sp**3, 1),
             "lesion_volume_ml": round(float(masks[k + 1].sum()) * voxel_ml, 3), **misreg[k + 1]}
            for k, fu in enumerate(per_fu)
        ],
    }
    if with_lesion_masks:
        stats["lesion_masks"] = np.stack(masks).astype(np.uint8)
    return case, stats


def _config(config: object) -> DemoCohortConfig:
    """``config``, or the default configuration for ``None``; a ``TypeError`` naming ``config`` otherwise."""
    return DemoCohortConfig() if config is None else check_instance("config", config, DemoCohortConfig,
                                                                    "a DemoCohortConfig or None")


def _progressing_set(cfg: DemoCohortConfig) -> set[int]:
    rng = np.random.default_rng([cfg.seed, 1_000_003])
    return {int(i) for i in rng.permutation(cfg.num_patients)[: cfg.num_progressing]}


def iter_demo_cases(config: DemoCohortConfig | None = None) -> Iterator[tuple[LongitudinalCase, dict]]:
    """Yield ``(case, stats)`` for every patient of the cohort, in memory (nothing written)."""
    cfg = _config(config)
    for i in range(cfg.num_patients):
        yield generate_demo_case(i, cfg)


def generate_demo_cohort(
    out_dir: PathLike,
    config: DemoCohortConfig | None = None,
    *,
    overwrite: bool = False,
    progress: bool = True,
    shown_as: str | None = None,
    **overrides: object,
) -> Path:
    """Write the demo cohort in the library layout (images, masks, brain masks, ``manifest.json``).

    Everything is written into a temporary sibling folder and moved into place at the end, so ``out_dir``
    is either absent or complete. ``demo_cohort.json`` records the configuration and per-patient lesion
    statistics.

    Args:
        out_dir: destination folder (must not exist or be empty, unless ``overwrite``).
        config: cohort parameters; keyword ``overrides`` replace single fields
            (e.g. ``num_patients=4``).
        overwrite: replace an existing cohort folder (only one holding a ``manifest.json``).
        progress: show a tqdm progress bar.
        shown_as: how the log message names the destination (default: ``out_dir``); a caller that writes into
            a staging folder names the folder the user asked for.

    Returns:
        ``out_dir`` as a :class:`~pathlib.Path`.

    Raises:
        FileExistsError: ``out_dir`` exists, is not empty and ``overwrite`` is off (or it is not a cohort).
    """
    from tqdm.auto import tqdm

    cfg = _config(config)
    if overrides:
        cfg = cfg.with_overrides(**overrides)
    out = check_path("out_dir", out_dir)
    overwrite = check_bool("overwrite", overwrite)
    if out.exists() and not folder_is_empty(out):
        if not overwrite:
            raise FileExistsError(f"{out} exists and is not empty; pass overwrite=True to replace it")
        if not (out / layout.MANIFEST_JSON).is_file():
            raise FileExistsError(f"{out} does not look like a cohort folder (no manifest.json); not replacing it")
    with atomic_directory(out, overwrite=out.exists(), follow_link=True) as tmp:
        entries, stats = [], []
        for i in tqdm(range(cfg.num_patients), desc="demo cohort", unit="patient", disable=not progress):
            case, st = generate_demo_case(i, cfg)
            save_case(case, tmp, overwrite=True, image_dtype=np.int16)
            entries.append(ManifestEntry(case.case_id, case.patient_id, case.num_timepoints, case.has_progression))
            stats.append(st)
        write_manifest(tmp / layout.MANIFEST_JSON, Manifest(cfg.modalities, tuple(entries)))
        atomic_write_json(tmp / "demo_cohort.json", {
            "config": cfg.to_dict(), "anatomy": load_anatomy(cfg.spacing, cfg.anatomy).source, "patients": stats,
        })
    _LOG.info("wrote demo cohort of %d patients (%d progressing) to %s", cfg.num_patients,
              sum(s["progressing"] for s in stats), out if shown_as is None else shown_as)
    return out


if __name__ == "__main__":  # the command of longiseg < 0.2: say where it went instead of doing nothing
    raise SystemExit("python -m longiseg.data.demo_cohort was replaced by 'longiseg cohort OUT' "
                     "(see longiseg cohort --help)")
