"""Predict cases and write masks, probabilities and entropy maps as NIfTI (the ``longiseg predict`` API).

For a case ``CASE_ID`` with ``T`` timepoints the files of
:func:`longiseg.data.layout.prediction_filenames` are written to ``OUT/CASE_ID/``: post-processed binary
masks (uint8), averaged probabilities (float32) and binary entropy maps in nats (float32), each with the input
affine, atomically, and never over an existing file unless ``overwrite=True``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import NamedTuple, Protocol

import numpy as np
import torch
import torch.nn as nn
from tqdm.auto import tqdm

from longiseg.data.layout import (
    BRAIN_MASK,
    check_case_id,
    image_filename,
    parse_image_filename,
    prediction_filenames,
)
from longiseg.inferers.postprocessing import postprocess
from longiseg.inferers.sliding_window import brain_or_foreground, prepare_case
from longiseg.inferers.triplanar import TriplanarInferer
from longiseg.inferers.uncertainty import binary_entropy
from longiseg.utils.io import atomic_directory, atomic_save_nifti
from longiseg.utils.logging import get_logger

__all__ = [
    "Inferer",
    "CaseImages",
    "RESTRICT_OPTIONS",
    "spacing_from_affine",
    "read_case_images",
    "predict_case",
    "predict_folder",
    "case_outputs_complete",
]

logger = get_logger(__name__)

RESTRICT_OPTIONS = ("none", "progression", "both")


class Inferer(Protocol):
    """Maps ``(model, images (T, C, D, H, W), brain_mask)`` to baseline and progression probabilities."""

    def __call__(
        self,
        model: nn.Module,
        images: torch.Tensor | np.ndarray,
        brain_mask: torch.Tensor | np.ndarray | None = None,
    ) -> tuple[np.ndarray, np.ndarray]: ...


class CaseImages(NamedTuple):
    """One case read from disk: ``images (T, C, D, H, W)`` float32, ``affine (4, 4)``, ``spacing`` in mm,
    the optional binary ``brain_mask (D, H, W)`` and the modality order of the channel axis."""

    images: np.ndarray
    affine: np.ndarray
    spacing: tuple[float, float, float]
    brain_mask: np.ndarray | None
    modalities: tuple[str, ...]


def spacing_from_affine(affine: np.ndarray) -> tuple[float, float, float]:
    """Voxel size in mm along the three array axes: the column norms of ``affine[:3, :3]``."""
    a = _check_affine(affine)
    return tuple(float(v) for v in np.linalg.norm(a[:3, :3], axis=0))  # type: ignore[return-value]


def _check_affine(affine: np.ndarray | torch.Tensor) -> np.ndarray:
    if isinstance(affine, torch.Tensor):
        affine = affine.detach().cpu().numpy()
    a = np.asarray(affine, dtype=np.float64)
    if a.shape != (4, 4) or not np.isfinite(a).all():
        raise ValueError(f"affine must be a finite (4, 4) matrix, got shape {a.shape}")
    return a


def read_case_images(case_dir: str | Path, modalities: Sequence[str] | None = None) -> CaseImages:
    """Read one case folder of the library layout (``t{i}_{modality}.nii.gz``, optional brain mask).

    Args:
        case_dir: the case folder.
        modalities: channel order; default: the modalities of timepoint 0, sorted by name.

    Raises:
        FileNotFoundError: no image files, or a timepoint lacks a modality.
        ValueError: timepoints not numbered ``0..T-1``, or files whose shapes/affines disagree.
    """
    import nibabel as nib

    case_dir = Path(case_dir)
    found: dict[tuple[int, str], Path] = {}
    for f in sorted(case_dir.iterdir()):
        parsed = parse_image_filename(f.name)
        if parsed is not None:
            found[parsed] = f
    if not found:
        raise FileNotFoundError(f"no image files t<i>_<modality>.nii.gz in {case_dir}")
    timepoints = sorted({tp for tp, _ in found})
    if timepoints != list(range(len(timepoints))):
        raise ValueError(f"{case_dir}: timepoints must be numbered 0..T-1, found {timepoints}")
    mods = (
        tuple(m.lower() for m in modalities) if modalities else tuple(sorted(m for tp, m in found if tp == 0))
    )
    volumes, affine, shape = [], None, None
    for tp in timepoints:
        for m in mods:
            path = found.get((tp, m))
            if path is None:
                raise FileNotFoundError(f"{case_dir}: missing {image_filename(tp, m)}")
            img = nib.load(path)
            if shape is None:
                affine, shape = img.affine, img.shape
            elif img.shape != shape or not np.allclose(img.affine, affine, atol=1e-4):
                raise ValueError(f"{path} does not share the shape/affine of the case's first image")
            volumes.append(np.asarray(img.dataobj, dtype=np.float32))
    images = np.stack(volumes).reshape(len(timepoints), len(mods), *shape)
    brain = None
    if (case_dir / BRAIN_MASK).exists():
        bimg = nib.load(case_dir / BRAIN_MASK)
        brain = np.asarray(bimg.dataobj) > 0
    spacing = tuple(float(z) for z in nib.load(found[(0, mods[0])]).header.get_zooms()[:3])
    return CaseImages(images, np.asarray(affine), spacing, brain, mods)  # type: ignore[arg-type]


def predict_case(
    model: nn.Module,
    images: np.ndarray | torch.Tensor,
    affine: np.ndarray,
    spacing: Sequence[float] | None,
    out_dir: str | Path,
    case_id: str,
    *,
    inferer: Inferer | None = None,
    brain_mask: np.ndarray | torch.Tensor | None = None,
    threshold: float = 0.5,
    min_volume_mm3: float = 0.0,
    restrict_to_brain: str = "none",
    save_probabilities: bool = True,
    save_entropy: bool = True,
    overwrite: bool = False,
) -> dict[str, list[Path]]:
    """Predict one case and write its NIfTI outputs to ``out_dir/case_id/``.

    Args:
        model: a registry model (2.5D for the default tri-planar inferer).
        images: ``(T, C, D, H, W)`` array/tensor in NIfTI array order.
        affine: ``(4, 4)`` affine of the input images; every output is written with it.
        spacing: voxel size in mm along ``(D, H, W)``; ``None`` derives it from ``affine``.
        out_dir: prediction root; files go to ``out_dir/case_id/``.
        case_id: case folder name.
        inferer: a :class:`TriplanarInferer` (default, with its defaults), a
            :class:`~longiseg.inferers.sliding_window.SlidingWindowInferer3D` or any :class:`Inferer`.
        brain_mask: optional binary ``(D, H, W)`` mask (skipping in the inferer, and restriction).
        threshold: probability threshold of the masks.
        min_volume_mm3: components below this volume are removed from every mask.
        restrict_to_brain: ``"none"``, ``"progression"`` or ``"both"``: which masks are cut to the brain mask
            (the given one, else the voxels that are nonzero in any timepoint/channel). Probability and
            entropy maps are saved unrestricted.
        save_probabilities: also write the probability maps.
        save_entropy: also write the entropy maps.
        overwrite: replace an existing case folder as a whole; otherwise an existing output (or a non-empty
            case folder) raises before anything is computed.

    Returns:
        ``{"mask": [...], "prob": [...], "entropy": [...]}`` -- the written paths, baseline first.

    Raises:
        FileExistsError: an output exists and ``overwrite`` is ``False``.
        ValueError: invalid inputs, a bad ``restrict_to_brain``, or a model with more than one output channel
            per head (the file layout stores binary maps).
    """
    if restrict_to_brain not in RESTRICT_OPTIONS:
        raise ValueError(f"restrict_to_brain must be one of {RESTRICT_OPTIONS}, got {restrict_to_brain!r}")
    check_case_id(case_id)
    aff = _check_affine(affine)
    spacing = spacing_from_affine(aff) if spacing is None else tuple(float(s) for s in spacing)
    imgs, brain = prepare_case(images, brain_mask)
    t = imgs.shape[0]
    names = prediction_filenames(t)
    case_out = Path(out_dir) / case_id
    kinds = ["mask"] + (["prob"] if save_probabilities else []) + (["entropy"] if save_entropy else [])
    targets = {k: [case_out / n for n in names[k]] for k in kinds}
    existing = [str(p) for paths in targets.values() for p in paths if p.exists()]
    if existing and not overwrite:
        raise FileExistsError(
            f"outputs already exist (pass overwrite=True to replace): {', '.join(existing)}"
        )
    if not overwrite and case_out.exists() and (not case_out.is_dir() or any(case_out.iterdir())):
        raise FileExistsError(f"{case_out} exists and is not an empty folder; pass overwrite=True to replace it")

    inferer = TriplanarInferer() if inferer is None else inferer
    base_prob, prog_prob = inferer(model, imgs, brain)
    if base_prob.shape != tuple(imgs.shape[2:]) or prog_prob.shape != (t - 1, *imgs.shape[2:]):
        raise ValueError(
            "predict_case writes binary maps and needs one output channel per head (K = 1); the inferer "
            f"returned baseline {base_prob.shape} and progression {prog_prob.shape}"
        )
    if restrict_to_brain != "none":
        brain = brain_or_foreground(imgs, brain)
    brain_np = None if brain is None else brain.numpy()
    pp = {"threshold": threshold, "min_volume_mm3": min_volume_mm3, "spacing": spacing}
    base_mask = postprocess(base_prob, brain_mask=brain_np if restrict_to_brain == "both" else None, **pp)
    prog_mask = postprocess(prog_prob, brain_mask=brain_np if restrict_to_brain != "none" else None, **pp)

    arrays = {
        "mask": [base_mask.astype(np.uint8)] + [m.astype(np.uint8) for m in prog_mask],
        "prob": [base_prob] + list(prog_prob),
    }
    if save_entropy:
        arrays["entropy"] = [binary_entropy(base_prob)] + [binary_entropy(p) for p in prog_prob]
    # The case folder appears complete or not at all: an interrupted case leaves only a temporary folder.
    empty_folder = case_out.is_dir() and not any(case_out.iterdir())
    with atomic_directory(case_out, overwrite=overwrite or empty_folder) as tmp:
        for kind, paths in targets.items():
            for arr, path in zip(arrays[kind], paths, strict=True):
                atomic_save_nifti(arr, aff, tmp / path.name, overwrite=True)
    logger.info("wrote %d files for case %s to %s", sum(len(p) for p in targets.values()), case_id, case_out)
    return targets


def case_outputs_complete(out_dir: str | Path, case_id: str, num_timepoints: int, *,
                          save_probabilities: bool = True, save_entropy: bool = True) -> bool:
    """Whether ``out_dir/case_id`` holds every file :func:`predict_case` writes for ``num_timepoints``."""
    names = prediction_filenames(num_timepoints)
    kinds = ["mask"] + (["prob"] if save_probabilities else []) + (["entropy"] if save_entropy else [])
    case_out = Path(out_dir) / case_id
    return all((case_out / n).is_file() for k in kinds for n in names[k])


def predict_folder(
    model: nn.Module,
    in_dir: str | Path,
    out_dir: str | Path,
    *,
    modalities: Sequence[str] | None = None,
    case_ids: Iterable[str] | None = None,
    skip_existing: bool = False,
    overwrite: bool = False,
    progress: bool = True,
    reader: Callable[[Path, Sequence[str] | None], CaseImages] = read_case_images,
    **predict_kwargs: object,
) -> dict[str, dict[str, list[Path]]]:
    """Predict every case folder of ``in_dir`` (library layout) into ``out_dir``.

    Args:
        model: the model passed to :func:`predict_case`.
        in_dir: dataset root with one folder per case.
        out_dir: prediction root.
        modalities: channel order (default: each case's timepoint-0 modalities sorted by name).
        case_ids: only these cases (default: every sub-folder holding image files, sorted).
        skip_existing: skip cases whose outputs are complete instead of raising ``FileExistsError``; a case
            folder left incomplete by an interrupted run is predicted again.
        overwrite: replace existing outputs.
        progress: tqdm bar over cases.
        reader: ``(case_dir, modalities) -> CaseImages``; the default reads the files as they are, a custom reader
            can validate and normalise them as in training (``longiseg.workflows.predict.run_prediction`` does).
        **predict_kwargs: forwarded to :func:`predict_case` (``inferer``, ``threshold``, ``min_volume_mm3``,
            ``restrict_to_brain``, ...). A case's ``brain_mask.nii.gz`` is used as its brain mask.

    Returns:
        ``{case_id: paths}`` of the predicted (not skipped) cases.

    Raises:
        FileNotFoundError: ``in_dir`` or a requested case does not exist.
        FileExistsError: a case folder exists and neither ``overwrite`` nor ``skip_existing`` is set (checked
            for every case before any is predicted).
        ValueError: a case id that is not a single folder name (see :func:`~longiseg.data.layout.check_case_id`).
    """
    in_dir = Path(in_dir)
    if not in_dir.is_dir():
        raise FileNotFoundError(f"in_dir {in_dir} is not a folder")
    if "brain_mask" in predict_kwargs:
        raise TypeError("predict_folder reads each case's brain mask from its folder; do not pass brain_mask")
    if case_ids is None:
        ids = [
            d.name
            for d in sorted(in_dir.iterdir())
            if d.is_dir() and any(parse_image_filename(f.name) for f in d.iterdir())
        ]
    else:
        ids = list(case_ids)
        missing = [c for c in ids if not (in_dir / c).is_dir()]
        if missing:
            raise FileNotFoundError(f"case folders not found in {in_dir}: {missing}")
    for cid in ids:
        check_case_id(cid)
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise NotADirectoryError(f"out_dir {out_dir} exists and is not a folder")
    if not overwrite and not skip_existing:
        clash = [c for c in ids if (out_dir / c).exists()]
        if clash:
            raise FileExistsError(f"{len(clash)} case folder(s) already exist in {out_dir}, e.g. "
                                  f"{[str(out_dir / c) for c in clash[:3]]}; pass overwrite=True (--overwrite) to "
                                  "replace them or skip_existing=True (--skip-existing) to keep them")
    results: dict[str, dict[str, list[Path]]] = {}
    saves = {k: bool(predict_kwargs.get(f"save_{k}", True)) for k in ("probabilities", "entropy")}
    for cid in tqdm(ids, desc="cases", unit="case", disable=not progress):
        case = None
        if skip_existing and not overwrite and (out_dir / cid).exists():
            case = reader(in_dir / cid, modalities)
            t = int(np.shape(case.images)[0])
            if case_outputs_complete(out_dir, cid, t, save_probabilities=saves["probabilities"],
                                     save_entropy=saves["entropy"]):
                logger.info("skipping case %s: outputs exist", cid)
                continue
            logger.warning("case %s: %s is incomplete (an interrupted run?); predicting it again", cid,
                           out_dir / cid)
            predict_kwargs_case = {**predict_kwargs, "overwrite": True}
        else:
            predict_kwargs_case = {**predict_kwargs, "overwrite": overwrite}
        if case is None:
            case = reader(in_dir / cid, modalities)
        results[cid] = predict_case(
            model,
            case.images,
            case.affine,
            case.spacing,
            out_dir,
            cid,
            brain_mask=case.brain_mask,
            **predict_kwargs_case,
        )  # type: ignore[arg-type]
    return results
