"""Predict cases and write masks, probabilities and entropy maps as NIfTI (the ``longiseg predict`` API).

For a case ``CASE_ID`` with ``T`` timepoints the files of
:func:`longiseg.data.layout.prediction_filenames` are written to ``OUT/CASE_ID/``: post-processed binary
masks (uint8), averaged probabilities (float32) and binary entropy maps in nats (float32), each with the input
affine and the spatial header of the case's baseline image (its qform and sform with their codes, and its units:
:func:`~longiseg.data.predictions.case_spatial_header`), atomically, and never over an existing file unless
``overwrite=True``. Cases are found and read by
the data layer (:func:`~longiseg.data.cohort.find_cases`, :func:`~longiseg.data.loading.load_case`), as in
training, and written by :func:`~longiseg.data.predictions.save_prediction`, with a record of what produced
them (:data:`~longiseg.data.predictions.PREDICTION_RECORD`: the model's weights and the settings that change
the outputs) that ``skip_existing`` compares.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import logging
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
import torch.nn as nn
from tqdm.auto import tqdm

from longiseg.data.case import LongitudinalCase, affine_spacing, check_spacing_of_affine
from longiseg.data.claims import (
    check_folder_unclaimed,
    claim_case,
    claim_folder,
    claim_holder,
    release_claim,
)
from longiseg.data.cohort import find_cases
from longiseg.data.layout import BRAIN_MASK, check_case_id, prediction_filenames
from longiseg.data.loading import check_case_headers, check_case_voxels, load_case
from longiseg.data.predictions import (
    PREDICTION_RECORD,
    case_spatial_header,
    prediction_complete,
    save_prediction,
)
from longiseg.data.preprocessing import preprocess_case
from longiseg.data.sources import CaseSource
from longiseg.inferers.postprocessing import RESTRICT_OPTIONS, check_postprocessing, postprocess_heads
from longiseg.inferers.provenance import (
    check_same_producer,
    prediction_record,
    producer_digest,
    qualified_name,
)
from longiseg.inferers.settings import VOXEL_SIZE_RTOL, prediction_defaults, voxel_size_mismatch
from longiseg.inferers.sliding_window import brain_or_foreground, prepare_case
from longiseg.inferers.triplanar import TriplanarInferer
from longiseg.inferers.uncertainty import binary_entropy
from longiseg.networks.wrappers import unwrap_model
from longiseg.spec import ModelSpec
from longiseg.utils.io import (
    atomic_write_json,
    check_replaceable,
    folder_is_empty,
    removed_if_created,
)
from longiseg.utils.logging import get_logger, log_once
from longiseg.utils.nifti import SpatialHeader
from longiseg.utils.validation import (
    check_affine,
    check_bool,
    check_callable,
    check_instance,
    check_path,
    debug_checks_enabled,
)

__all__ = [
    "Inferer",
    "CaseReader",
    "spec_reader",
    "check_case_fits_model",
    "infer_case",
    "RESTRICT_OPTIONS",
    "spacing_from_affine",
    "predict_case",
    "predict_folder",
]

logger = get_logger(__name__)


class Inferer(Protocol):
    """Maps ``(model, images (T, C, D, H, W), brain_mask)`` to baseline and progression probabilities."""

    def __call__(
        self,
        model: nn.Module,
        images: torch.Tensor | np.ndarray,
        brain_mask: torch.Tensor | np.ndarray | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Probabilities of one case.

        Args:
            model: the model (``nn.Module``) in eval mode.
            images: ``(T, C, D, H, W)`` float images of the case.
            brain_mask: optional binary ``(D, H, W)`` mask of the brain.

        Returns:
            ``baseline_prob (D, H, W)`` and ``progression_prob (T-1, D, H, W)``, float32 in ``[0, 1]``.
        """
        ...


def infer_case(inferer: Inferer, model: nn.Module, images: torch.Tensor | np.ndarray,
               brain_mask: torch.Tensor | np.ndarray | None, affine: np.ndarray
               ) -> tuple[np.ndarray, np.ndarray]:
    """Run ``inferer`` on one case: a :class:`TriplanarInferer` slices the anatomical planes the ``affine`` names
    (as training samples them), any other inferer is called as the :class:`Inferer` protocol says.

    Args:
        inferer: the inferer.
        model: the model.
        images: ``(T, C, D, H, W)``.
        brain_mask: optional binary ``(D, H, W)``.
        affine: ``(4, 4)`` voxel-to-world matrix of the volumes.

    Returns:
        ``baseline_prob (D, H, W)`` and ``progression_prob (T-1, D, H, W)``.

    Raises:
        TypeError: ``inferer`` is not callable; what the inferer raises.
    """
    check_callable("inferer", inferer, "an Inferer (TriplanarInferer, SlidingWindowInferer3D or a callable "
                   "(model, images, brain_mask))")
    if isinstance(inferer, TriplanarInferer):
        return inferer(model, images, brain_mask, affine=affine)
    return inferer(model, images, brain_mask)


#: Reads one case for :func:`predict_folder` from the :class:`~longiseg.data.sources.CaseSource` that
#: :func:`~longiseg.data.cohort.find_cases` listed (files and channel order), e.g. load and normalise it.
CaseReader = Callable[[CaseSource], LongitudinalCase]


def spec_reader(model: nn.Module, unrecorded: CaseReader | None = None) -> CaseReader:
    """How to read a case for ``model``: :func:`~longiseg.data.loading.load_case`, then the preprocessing its
    spec records (``model.spec.preprocessing["normalization"] == "zscore"``: per-image z-scores, as
    ``longiseg train`` prepared the training cases).

    Args:
        model: the model (possibly wrapped).
        unrecorded: the reader for a model whose spec records no normalisation (default: ``load_case``, the
            images as stored; ``longiseg predict`` and ``longiseg tune`` pass :func:`read_zscored`).

    Raises:
        ValueError: the spec records a normalisation this version does not know.
    """
    spec = getattr(unwrap_model(model), "spec", None)
    preprocessing = (spec.preprocessing or {}) if isinstance(spec, ModelSpec) else {}
    if "normalization" not in preprocessing:
        return load_case if unrecorded is None else unrecorded
    normalization = preprocessing["normalization"]
    if normalization is None:
        return load_case
    if normalization != "zscore":
        raise ValueError(f"model.spec.preprocessing normalization {normalization!r} is not one this version applies "
                         "('zscore'); pass reader= to prepare the cases yourself")
    return read_zscored


#: The name ``longiseg predict`` 0.3.9-0.3.19 recorded for its reader, a wrapper that z-scored the cases (until
#: 0.3.15 always; from 0.3.16 as ``spec_reader(model, unrecorded=read_zscored)``) behind a check of the number of
#: modalities (now :func:`predict_folder`'s).
_LEGACY_CLI_READER = "longiseg.workflows.predict.run_prediction.<locals>.read_preprocessed"


def _reader_aliases(model: nn.Module, reader: CaseReader) -> dict[str, dict[object, str]] | None:
    """The recorded reader names that mean ``reader`` for ``model``
    (:func:`~longiseg.inferers.provenance.check_same_producer`'s ``aliases``): the earlier command's name for
    records of the versions whose command read the cases as ``reader`` does."""
    if reader is read_zscored:
        return {"reader": {_LEGACY_CLI_READER: "0.3.9"}}
    try:
        cli = spec_reader(model, unrecorded=read_zscored)
    except ValueError:  # a normalisation this version does not apply: a reader of one's own
        return None
    return {"reader": {_LEGACY_CLI_READER: "0.3.16"}} if reader is cli else None


def read_zscored(source: CaseSource) -> LongitudinalCase:
    """:func:`~longiseg.data.loading.load_case`, then per-image z-scores (the preprocessing ``longiseg train``
    records for its models)."""
    return preprocess_case(load_case(source))


#: A prediction's file of a follow-up (mask, probabilities or entropy), e.g. of an earlier prediction of more.
_LATER_FOLLOWUP_RE = re.compile(r"^progression_t[1-9]\d*(?:_prob|_entropy)?\.nii(?:\.gz)?$")


def _foreign_entries(folder: Path, num_timepoints: int) -> list[str]:
    """Names in a case's prediction folder that a prediction does not write (``native/``, the record and the
    hidden temporaries of an interrupted writer are a prediction's)."""
    ours = {n for names in prediction_filenames(num_timepoints).values() for n in names}
    ours |= {n.removesuffix(".gz") for n in ours} | {"native", PREDICTION_RECORD}
    return sorted(e.name for e in folder.iterdir() if e.name not in ours and not e.name.startswith("."))


def _mm(sizes: Sequence[float]) -> str:
    return " x ".join(f"{v:.3g}" for v in sizes)


def spacing_from_affine(affine: np.ndarray) -> tuple[float, float, float]:
    """Voxel size in mm along the three array axes: the column norms of ``affine[:3, :3]``."""
    return affine_spacing(check_affine("affine", affine))


#: The settings of :func:`predict_case` that :func:`_check_options` checks (before any inference).
_OPTIONS = ("threshold", "min_volume_mm3", "restrict_to_brain", "progression_outside_baseline", "save_probabilities",
            "save_entropy", "overwrite", "progression_threshold")


def _check_options(options: dict[str, object]) -> None:
    """Refuse bad :func:`predict_case` settings (``options``: every name of :data:`_OPTIONS`), naming them."""
    if not isinstance(options["restrict_to_brain"], str) or options["restrict_to_brain"] not in RESTRICT_OPTIONS:
        raise ValueError(f"restrict_to_brain must be one of {RESTRICT_OPTIONS}, got {options['restrict_to_brain']!r}")
    for flag in ("save_probabilities", "save_entropy", "overwrite"):
        check_bool(flag, options[flag])
    check_postprocessing(threshold=options["threshold"], min_volume_mm3=options["min_volume_mm3"],  # type: ignore[arg-type]
                         progression_outside_baseline=options["progression_outside_baseline"],  # type: ignore[arg-type]
                         progression_threshold=options["progression_threshold"])  # type: ignore[arg-type]


#: The settings of :data:`_OPTIONS` that change the written masks and maps (the others say which files to write
#: and whether to replace them); recorded, with the inferer's, in :data:`~longiseg.data.predictions.PREDICTION_RECORD`.
_OUTPUT_OPTIONS = tuple(n for n in _OPTIONS if n not in ("save_probabilities", "save_entropy", "overwrite"))


def _record(model: nn.Module, inferer: Inferer, options: Mapping[str, object]) -> dict[str, Any]:
    """:func:`~longiseg.inferers.provenance.prediction_record` of a prediction with ``options`` (every name of
    :data:`_OPTIONS`): those of :data:`_OUTPUT_OPTIONS` are recorded, ``progression_threshold`` as the threshold
    the masks were made with (``threshold`` where it is ``None``), so one prediction records one set of settings."""
    recorded = {n: options[n] for n in _OUTPUT_OPTIONS}
    if recorded["progression_threshold"] is None:
        recorded["progression_threshold"] = recorded["threshold"]
    return prediction_record(model, inferer, recorded)


def check_case_fits_model(model: nn.Module, source: CaseSource, folder: str | Path) -> None:
    """Refuse a case the model cannot take, before any case is run through it: another number of timepoints than
    a model built for a fixed ``T`` (the model inside a DataParallel/DDP wrapper says so; others take any
    ``T >= 2``), or another number of modalities than the model's spec records.

    Args:
        model: the model (any wrapper is looked through).
        source: the case's files (:func:`~longiseg.data.cohort.find_cases`).
        folder: the folder the case is in, for the message.

    Raises:
        ValueError: naming the case, its timepoints or modalities and the model's.
    """
    inner = unwrap_model(model)
    fixed_t = getattr(inner, "num_timepoints", None)
    if isinstance(fixed_t, int) and source.num_timepoints != fixed_t:
        raise ValueError(f"case {source.case_id!r} has {source.num_timepoints} timepoints but the model was built "
                         f"for {fixed_t} (its folder: {folder}); use a model of its number of timepoints")
    spec = getattr(inner, "spec", None)
    if isinstance(spec, ModelSpec) and spec.in_channels is not None and len(source.modalities) != spec.in_channels:
        raise ValueError(f"the model takes {spec.in_channels} modalities per timepoint"
                         f"{f' {list(spec.modalities)}' if spec.modalities else ''}, case {source.case_id!r} of "
                         f"{folder} has {len(source.modalities)} {list(source.modalities)}")


def _warn_missing_brain_masks(sources: Sequence[CaseSource]) -> None:
    """Warn when some of the cases have a brain mask and others not: those without are normalised, cropped and
    restricted with the voxels non-zero in any image instead, which on images with skull is the whole head."""
    without = [s.case_id for s in sources if s.brain_mask is None]
    if without and len(without) < len(sources):
        logger.warning("%d of %d cases have no %s (%s%s): their brain is taken as the voxels non-zero in any image "
                       "(normalisation, crop, restriction), which is the whole head on images that are not "
                       "skull-stripped", len(without), len(sources), BRAIN_MASK,
                       ", ".join(map(repr, without[:3])), ", ..." if len(without) > 3 else "")


def _default_inferer(inferer: Inferer | None, progress: bool = True) -> Inferer:
    """``inferer``, or the default :class:`TriplanarInferer` for ``None`` (with a bar over its windows if
    ``progress``)."""
    return TriplanarInferer(progress=progress) if inferer is None else inferer


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
    progression_outside_baseline: bool = True,
    save_probabilities: bool = True,
    save_entropy: bool = True,
    overwrite: bool = False,
    progression_threshold: float | None = None,
    record: Mapping[str, Any] | None = None,
    header: SpatialHeader | None = None,
    before_publish: Callable[[Path], object] | None = None,
) -> dict[str, list[Path]]:
    """Predict one case and write its NIfTI outputs to ``out_dir/case_id/``.

    Args:
        model: a registry model (2.5D for the default tri-planar inferer).
        images: ``(T, C, D, H, W)`` array/tensor in NIfTI array order.
        affine: ``(4, 4)`` affine of the input images; every output is written with it.
        spacing: voxel size in mm along ``(D, H, W)``; ``None`` derives it from ``affine``, which a given one must
            agree with (the files are written with the affine).
        out_dir: prediction root; files go to ``out_dir/case_id/``.
        case_id: case folder name.
        inferer: a :class:`TriplanarInferer` (default, with its defaults), a
            :class:`~longiseg.inferers.sliding_window.SlidingWindowInferer3D` or any :class:`Inferer`.
        brain_mask: optional binary ``(D, H, W)`` mask (skipping in the inferer, and restriction).
        threshold: probability threshold of the baseline mask (and of the progression masks when
            ``progression_threshold`` is ``None``).
        min_volume_mm3: components below this volume are removed from every mask.
        restrict_to_brain: ``"none"``, ``"progression"`` or ``"both"``: which masks are cut to the brain mask
            (the given one, else the voxels that are nonzero in any timepoint/channel). Probability and
            entropy maps are saved unrestricted.
        progression_outside_baseline: progression where the voxel was not lesion at ``k - 1``: the probability
            of follow-up ``k`` becomes ``p_prog_k (1 - p_base) prod_{j<k} (1 - p_prog_j)`` and its mask is cut to
            the outside of the baseline mask and of the earlier follow-ups' masks before small components are
            removed (see :func:`~longiseg.inferers.postprocessing.postprocess_heads`). The saved progression
            probability and entropy maps are those of that probability then, so that every mask is its
            probability map post-processed.
        save_probabilities: also write the probability maps.
        save_entropy: also write the entropy maps.
        overwrite: replace an existing case folder as a whole; otherwise an existing output (or a non-empty
            case folder) raises before anything is computed.
        progression_threshold: probability threshold of the progression masks (``longiseg tune`` chooses it);
            ``None``: ``threshold``.
        record: what produced the prediction, written as :data:`~longiseg.data.predictions.PREDICTION_RECORD`
            into the case folder (:func:`predict_folder` passes the record of its model, settings, reader and
            the case's modalities); ``None``: the record of ``model``, ``inferer`` and the settings above (a
            digest of the weights, computed here).
        header: the spatial header of the input images, whose grid ``affine`` is
            (:func:`~longiseg.data.predictions.case_spatial_header`; :func:`predict_folder` passes it): every
            output gets its qform and sform (matrices and codes) and units, so that it overlays the input in
            every tool (see :func:`~longiseg.data.predictions.save_prediction`). ``None``: both forms hold
            ``affine`` with code 2 ("aligned"), in mm.
        before_publish: called with the case's temporary folder once its outputs are in it, before it becomes
            ``out_dir/case_id``: what it writes there is published with the case (see
            :func:`~longiseg.data.predictions.save_prediction`).

    Returns:
        ``{"mask": [...], "prob": [...], "entropy": [...]}`` -- the written paths, baseline first.

    Raises:
        FileExistsError: an output exists and ``overwrite`` is ``False``.
        ValueError: invalid inputs, a bad ``restrict_to_brain``, a ``header`` of another grid than ``affine``
            (checked before the model runs), or a model with more than one output channel per head (the file
            layout stores binary maps).
        TypeError: a ``header`` that is not a :class:`~longiseg.utils.nifti.SpatialHeader` or ``None``.
    """
    options = {"threshold": threshold, "min_volume_mm3": min_volume_mm3, "restrict_to_brain": restrict_to_brain,
               "progression_outside_baseline": progression_outside_baseline, "save_probabilities": save_probabilities,
               "save_entropy": save_entropy, "overwrite": overwrite, "progression_threshold": progression_threshold}
    _check_options(options)
    check_case_id(case_id)
    check_callable("before_publish", before_publish, "a callable (folder)", optional=True)
    aff = check_affine("affine", affine)
    if check_instance("header", header, (SpatialHeader, type(None)), "a SpatialHeader (case_spatial_header) or None"):
        header.check_grid(aff, "header")
    # one voxel size: the files are written with the affine's, so the size filter must use it too
    spacing = spacing_from_affine(aff) if spacing is None else check_spacing_of_affine(spacing, aff)
    trained = voxel_size_mismatch(model, spacing)
    if trained is not None:  # predicted as it is (nothing here resamples), but not without a word
        log_once(logger, f"voxel size {case_id}",
                 f"case {case_id!r}: voxel size {_mm(spacing)} mm differs from the {_mm(trained)} mm (sorted) the "
                 f"model was trained on by more than {VOXEL_SIZE_RTOL:.0%}; resample the case (longiseg register "
                 "--spacing) for the accuracy the model was validated with", logging.WARNING)
    _check_binary_heads(model)
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
    if not overwrite and case_out.exists() and (not case_out.is_dir() or not folder_is_empty(case_out)):
        raise FileExistsError(f"{case_out} exists and is not an empty folder; pass overwrite=True to replace it")

    inferer = _default_inferer(inferer)
    if record is None:
        record = _record(model, inferer, options)
    base_prob, prog_prob = infer_case(inferer, model, imgs, brain, aff)
    if base_prob.shape != tuple(imgs.shape[2:]) or prog_prob.shape != (t - 1, *imgs.shape[2:]):
        raise ValueError(
            "predict_case writes binary maps and needs one output channel per head (K = 1); the inferer "
            f"returned baseline {base_prob.shape} and progression {prog_prob.shape}"
        )
    if restrict_to_brain != "none":
        brain = brain_or_foreground(imgs, brain)
    base_mask, prog_mask, prog_prob = postprocess_heads(
        base_prob, prog_prob, threshold=threshold, min_volume_mm3=min_volume_mm3, spacing=spacing,
        brain_mask=None if brain is None else brain.numpy(), restrict=restrict_to_brain,
        progression_outside_baseline=progression_outside_baseline,
        progression_threshold=progression_threshold)  # prog_prob: the maps the masks come from

    volumes = {"mask": [base_mask] + list(prog_mask)}
    if save_probabilities:
        volumes["prob"] = [base_prob] + list(prog_prob)
    if save_entropy:
        volumes["entropy"] = [binary_entropy(base_prob)] + [binary_entropy(p) for p in prog_prob]
    # The case folder appears complete or not at all: an interrupted case leaves only a temporary folder.
    targets = save_prediction(out_dir, case_id, aff, volumes, overwrite=overwrite, record=record, header=header,
                              before_publish=before_publish)
    logger.info("wrote %d files for case %s to %s", sum(len(p) for p in targets.values()) + (record is not None),
                case_id, case_out)  # the record beside the volumes counts
    return targets


def _check_binary_heads(model: nn.Module) -> None:
    """Refuse, before any inference, a model whose spec records more than one output channel per head: the files
    store binary maps (the inferer's output is checked again after inference, for models without a spec)."""
    spec = getattr(unwrap_model(model), "spec", None)
    out_channels = (spec.kwargs or {}).get("out_channels") if isinstance(spec, ModelSpec) else None
    if isinstance(out_channels, int) and not isinstance(out_channels, bool) and out_channels != 1:
        raise ValueError(f"model {spec.name!r} has out_channels={out_channels}: predictions are written as binary "
                         "maps, one output channel per head (K = 1); build the model with out_channels=1")


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
    reader: CaseReader | None = None,
    check_case: Callable[[CaseSource], None] | None = None,
    after_case: Callable[[CaseSource, Path], None] | None = None,
    **predict_kwargs: object,
) -> dict[str, dict[str, list[Path]]]:
    """Predict every case of the cohort folder ``in_dir`` (library layout, masks optional) into ``out_dir``.

    Cases are listed as training lists them (:func:`~longiseg.data.cohort.find_cases` with
    ``require_masks=None``: the manifest's cases, order and modalities when there is one, else every
    sub-folder holding ``t0_*`` images) and read with ``reader`` (:func:`~longiseg.data.loading.load_case`,
    which checks every file first: shape, affine, finite intensities, a binary non-empty brain mask; then the
    model's preprocessing). Every case's headers are checked before any case is predicted, and, unless
    ``skip_existing``, every case is read once by ``reader`` too
    (:func:`~longiseg.data.loading.check_case_voxels`), so that a bad file, or an image the preprocessing
    cannot normalise, fails the run before anything is written. Reference lesion masks are neither read nor
    checked (prediction does not use them).

    Args:
        model: the model passed to :func:`predict_case`.
        in_dir: cohort folder with one folder per case.
        out_dir: prediction root.
        modalities: channel order (default: the order the model was trained with, ``model.spec.modalities``;
            for a model that records none, the manifest's, else each case's timepoint-0 modalities sorted by name).
            The spec's modalities in another order are refused: the model would read each channel as another.
        case_ids: only these cases (default: every case of ``in_dir``).
        skip_existing: skip cases whose outputs are complete instead of raising ``FileExistsError``, when their
            :data:`~longiseg.data.predictions.PREDICTION_RECORD` shows the same model (weights, registry name
            and kwargs), inferer settings, ``predict_case`` settings, reader and modality order; a complete
            case of another model or settings, or without a record, is refused before any case is predicted. A
            case folder left incomplete by an interrupted run is predicted again. Several processes may share
            one ``out_dir`` this way: each claims a case before reading it (a hidden ``OUT/.CASE_ID.claim``
            file, created atomically and removed afterwards; see :func:`claim_case`) and leaves the cases that
            a live process of this model and these settings has claimed to it (one of another model or other
            settings raises ``FileExistsError``); a case that another process completed meanwhile is skipped when
            its record is this run's, refused otherwise. A run without ``skip_existing`` writes the folder alone:
            it holds it (a hidden ``OUT/.longiseg-folder.lock``, :func:`~longiseg.data.claims.claim_folder`)
            from before the cases are read, and refuses a folder that another live run holds.
        overwrite: replace existing outputs.
        progress: tqdm bar over cases.
        reader: a :data:`CaseReader` ``(CaseSource) -> LongitudinalCase``; it receives the listed source, so
            the folder is listed once, and is called twice per case unless ``skip_existing`` (the check, then
            the prediction). ``None``: :func:`spec_reader` of the model, which prepares each case as
            its training did (z-scored when ``model.spec.preprocessing`` says so, as ``longiseg train`` records),
            so the Python call and ``longiseg predict`` give the same masks.
        check_case: called with every listed case's source before any case is predicted; it raises to refuse
            the run (e.g. a case that lacks what ``after_case`` needs).
        after_case: called with a case's source and its complete prediction folder, to write more outputs
            derived from the saved masks there: for a case predicted now, the temporary folder holding its
            outputs, before it becomes ``out_dir/CASE_ID`` (what the call writes there is published with the
            case, so an interruption leaves both or neither; use ``source.case_id``, not the folder's name); for
            a case ``skip_existing`` keeps, ``out_dir/CASE_ID`` itself. Not for a case left to another process
            (which calls its own).
        **predict_kwargs: forwarded to :func:`predict_case` (``inferer``, ``threshold``, ``min_volume_mm3``,
            ``restrict_to_brain``, ...). Those not given are the ones the model records
            (:func:`~longiseg.inferers.settings.prediction_defaults`: the inferer of its dimensionality with its
            window, and its thresholds and post-processing, those ``longiseg tune`` chose included), as
            ``longiseg predict`` uses them; for a model that records none, :func:`predict_case`'s defaults.
            A case's ``brain_mask.nii.gz`` is used as its brain mask, each case folder gets the record of this call (the
            weights' digest is computed once), and each case's outputs the spatial header of its baseline image
            (:func:`~longiseg.data.predictions.case_spatial_header`: qform, sform and their codes, units) when the
            case read lies on that image's grid (a ``reader`` that resamples gets the default header of
            :func:`~longiseg.data.predictions.save_prediction`).

    Returns:
        ``{case_id: paths}`` of the predicted (not skipped) cases.

    Raises:
        FileNotFoundError: ``in_dir`` is missing or holds no case, a requested case does not exist, or a
            case lacks an image (checked for every case before any is predicted).
        FileExistsError: a case folder exists and neither ``overwrite`` nor ``skip_existing`` is set, it holds
            files a prediction does not write, or ``skip_existing`` would keep a case that another model or
            other settings predicted (checked for every case before any is predicted).
        ValueError: a case of another number of timepoints than a model built for one, a case id that is not
            a single folder name (see
            :func:`~longiseg.data.layout.check_case_id`), a malformed manifest, or a case that
            :func:`~longiseg.data.loading.load_case` refuses.
    """
    in_dir = check_path("in_dir", in_dir)
    if not in_dir.is_dir():
        raise FileNotFoundError(f"in_dir {in_dir} is not a folder")
    if "brain_mask" in predict_kwargs:
        raise TypeError("predict_folder reads each case's brain mask from its folder; do not pass brain_mask")
    params = inspect.signature(predict_case).parameters
    unknown = sorted(set(predict_kwargs) - set(params) - {"overwrite"})
    if unknown or {"model", "images", "affine", "spacing", "out_dir", "case_id", "record", "header",
                   "before_publish"} & set(predict_kwargs):
        raise TypeError(f"predict_folder passes predict_case's settings only; got {sorted(predict_kwargs)}")
    for flag, value in (("skip_existing", skip_existing), ("overwrite", overwrite), ("progress", progress)):
        check_bool(flag, value)
    check_callable("check_case", check_case, "a callable (source)", optional=True)
    check_callable("after_case", after_case, "a callable (source, folder)", optional=True)
    # what the model records (window, thresholds, post-processing; longiseg tune's too) unless given here
    predict_kwargs = {**prediction_defaults(model, progress=progress, inferer="inferer" not in predict_kwargs),
                      **predict_kwargs}
    spec = getattr(unwrap_model(model), "spec", None)
    if isinstance(spec, ModelSpec) and spec.modalities:
        if modalities is None:
            modalities = list(spec.modalities)  # the channel order the model was trained with, not the folder's
        elif not isinstance(modalities, str) and list(modalities) != list(spec.modalities) \
                and sorted(map(str, modalities)) == sorted(spec.modalities):
            raise ValueError(f"modalities {list(modalities)} reorder the model's channels: it was trained on "
                             f"{list(spec.modalities)} in that order (leave modalities out to use it)")
    options = {**{n: params[n].default for n in _OPTIONS}, **predict_kwargs, "overwrite": overwrite}
    _check_options(options)
    debug_checks_enabled()  # a bad LONGISEG_DEBUG_CHECKS fails before any case, not inside the first
    # reference lesion masks are not what prediction reads: a problem of theirs is evaluate's to report
    sources = {s.case_id: s for s in find_cases(in_dir, modalities=modalities, require_masks=None)}
    if case_ids is None:
        ids = list(sources)
    else:
        ids = [check_case_id(c) for c in case_ids]
        repeated = sorted({c for c in ids if ids.count(c) > 1})
        if repeated:
            raise ValueError(f"case_ids name case(s) {repeated} more than once")
        missing = [c for c in ids if c not in sources]
        if missing:
            raise FileNotFoundError(f"case folders not found in {in_dir}: {missing}")
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise NotADirectoryError(f"out_dir {out_dir} exists and is not a folder")
    if not overwrite and not skip_existing:
        clash = [c for c in ids if (out_dir / c).exists()]
        if clash:
            raise FileExistsError(f"{len(clash)} case folder(s) already exist in {out_dir}, e.g. "
                                  f"{[str(out_dir / c) for c in clash[:3]]}; pass overwrite=True (--overwrite) to "
                                  "replace them or skip_existing=True (--skip-existing) to keep those of this "
                                  "model and settings")
    _check_binary_heads(model)  # before any case is read
    _warn_missing_brain_masks([sources[cid] for cid in ids])
    read: CaseReader = spec_reader(model) if reader is None else reader
    kinds = ["mask"] + [kind for kind, flag in (("prob", "save_probabilities"), ("entropy", "save_entropy"))
                        if predict_kwargs.get(flag, True)]
    # a bar over each case's windows below the bar over the cases (a case takes minutes on a CPU)
    inferer = _default_inferer(predict_kwargs.get("inferer"), progress=progress)  # type: ignore[arg-type]
    predict_kwargs = {**predict_kwargs, "inferer": inferer}  # one inferer for every case, the one recorded
    produced_by = {**_record(model, inferer, options), "reader": qualified_name(read)}
    producer = producer_digest(produced_by)  # in the claims of workers sharing the folder: the same for each of them
    # longiseg predict 0.3.9-0.3.19 recorded a wrapper of its reader under its own name
    reader_aliases = _reader_aliases(model, read)
    # each case's patient (information only: the report of a predictions folder groups its cases by it)
    records = {cid: {**produced_by, "modalities": list(sources[cid].modalities),
                     "patient_id": sources[cid].patient_id} for cid in ids}
    # models built for one T say so (the model inside a DataParallel/DDP wrapper); others take any T >= 2
    for cid in ids:  # every case before any is predicted
        check_case_headers(sources[cid])  # files and grids from the headers: no case fails after hours of others
        check_case_fits_model(model, sources[cid], in_dir)
        if (overwrite or skip_existing) and (out_dir / cid).is_dir():
            foreign = _foreign_entries(out_dir / cid, sources[cid].num_timepoints)
            later = [n for n in foreign if _LATER_FOLLOWUP_RE.match(n)]  # a prediction of more follow-ups
            if later and not overwrite:
                raise FileExistsError(f"{out_dir / cid} holds a prediction of more follow-ups than case {cid!r} has "
                                      f"({', '.join(later[:3])}): pass --overwrite to replace it")
            foreign = [n for n in foreign if n not in later]  # replaced with the case folder
            if foreign:
                raise FileExistsError(f"{out_dir / cid} holds files that are not predictions of case {cid!r} "
                                      f"({', '.join(foreign[:3])}): not replacing it; move them or choose another "
                                      "output folder")
            if overwrite:  # a read-only case folder fails here, not after the cases before it were replaced
                check_replaceable(out_dir / cid)
        if skip_existing and not overwrite and prediction_complete(out_dir, cid, sources[cid].num_timepoints, kinds):
            # kept only if this model, these settings
            check_same_producer(out_dir / cid, cid, records[cid], aliases=reader_aliases)
        if check_case is not None:
            check_case(sources[cid])
    results: dict[str, dict[str, list[Path]]] = {}
    with removed_if_created(out_dir), contextlib.ExitStack() as held:  # a run that wrote nothing leaves no folder
        if skip_existing:  # shares the folder, case by case, with other such runs: not with one that writes it alone
            check_folder_unclaimed(out_dir)
        else:  # writes it alone: a second such run (another model, other settings) would mix its cases with ours
            held.callback(release_claim, *claim_folder(out_dir, "longiseg predict"))
            # NaN intensities, a brain mask of 0/255 or an image the reader cannot normalise fail here, not after
            # the cases before them were written; workers sharing a cohort (skip_existing) resume by design and
            # would each read all of it first: they read a case when they predict it
            check_case_voxels([sources[cid] for cid in ids], progress=progress, reader=read)
        for cid in tqdm(ids, desc="cases", unit="case", disable=not progress):
            claimed: Path | None = None
            if skip_existing:  # several workers may share the cohort: each case is predicted by one of them
                claimed, claim = claim_case(out_dir, cid, "longiseg predict --skip-existing", producer=producer)
                if claimed is None:
                    other = claim.get("producer")
                    if isinstance(other, str) and other != producer:  # would leave the folder with two models' cases
                        raise FileExistsError(
                            f"case {cid!r} is being predicted into {out_dir} by another model or other settings "
                            f"({claim_holder(claim)}); workers sharing a folder (skip_existing, --skip-existing) must "
                            "run one model with one set of settings: choose another output folder")
                    logger.info("skipping case %s: another process (%s) is predicting it", cid, claim_holder(claim))
                    continue
                try:  # a run that writes the folder alone may have claimed it since the last case
                    check_folder_unclaimed(out_dir)
                except FileExistsError:
                    release_claim(claimed, claim)
                    raise
            try:
                done = _predict_listed_case(model, read, out_dir, sources[cid], kinds, records[cid], skip_existing,
                                            overwrite, predict_kwargs, after_case, reader_aliases)
                if isinstance(done, dict):
                    results[cid] = done
                elif done is True and after_case is not None:  # kept as complete: its folder is published
                    after_case(sources[cid], out_dir / cid)
            finally:
                if claimed is not None:
                    release_claim(claimed, claim)
    return results


def _refresh_patient(folder: Path, record: Mapping[str, Any], patient_id: object) -> None:
    """Record ``patient_id`` in the kept case ``folder``'s ``record`` (as read by ``check_same_producer``) where it
    names another patient (the cohort's manifest regrouped the cases since; the record is information there,
    reports group the cases by it)."""
    path = folder / PREDICTION_RECORD
    try:
        if record.get("patient_id") != patient_id:
            atomic_write_json(path, {**record, "patient_id": patient_id}, overwrite=True)
    except OSError as err:  # kept as it is: the masks are this run's either way
        logger.warning("case %s: could not record its patient %r in %s (%s); reports on the predictions need "
                       "--images to group it", folder.name, patient_id, path, err)


def _predict_listed_case(
    model: nn.Module, read: CaseReader, out_dir: Path, source: CaseSource, kinds: Sequence[str],
    record: Mapping[str, Any], skip_existing: bool, overwrite: bool, predict_kwargs: Mapping[str, object],
    after_case: Callable[[CaseSource, Path], None] | None, aliases: Mapping[str, Mapping[object, str]] | None = None,
) -> dict[str, list[Path]] | bool | None:
    """Predict one case of :func:`predict_folder`: its written paths; ``True`` when ``skip_existing`` keeps its
    complete outputs; ``None`` when another process completed it meanwhile (with the same ``record``, up to
    :func:`~longiseg.inferers.provenance.check_same_producer`'s ``aliases``)."""
    cid = source.case_id
    case_overwrite = overwrite
    if skip_existing and not overwrite and (out_dir / cid).exists():
        if prediction_complete(out_dir, cid, source.num_timepoints, kinds):
            # another process may have written it meanwhile
            stored = check_same_producer(out_dir / cid, cid, record, aliases)
            logger.info("skipping case %s: outputs exist", cid)
            _refresh_patient(out_dir / cid, stored, record["patient_id"])
            return True
        earlier = next((t for t in range(source.num_timepoints - 1, 1, -1)
                        if prediction_complete(out_dir, cid, t, kinds)), None)
        if earlier is not None:  # the case gained follow-ups since it was predicted
            logger.warning("case %s: %s holds a prediction of its first %d follow-up(s), the case now has %d; "
                           "predicting it again", cid, out_dir / cid, earlier - 1, source.num_timepoints - 1)
        else:
            logger.warning("case %s: %s is incomplete (an interrupted run?); predicting it again", cid, out_dir / cid)
        case_overwrite = True
    case = read(source)
    header = case_spatial_header(source)  # the input's forms, codes and units, for the outputs
    if header is not None and header.mismatch(case.affine) is not None:  # a reader that changed the grid
        logger.info("case %s: the case read lies on another grid than %s; its outputs get the default header",
                    cid, source.image_files[0][0])
        header = None
    try:
        return predict_case(
            model, case.images, case.affine, case.spacing, out_dir, cid, brain_mask=case.brain_mask,
            **{**predict_kwargs, "overwrite": case_overwrite, "record": record, "header": header},  # type: ignore[arg-type]
            before_publish=None if after_case is None else functools.partial(after_case, source),
        )
    except FileExistsError:  # another process (one that does not claim cases) wrote it meanwhile
        if not (skip_existing and prediction_complete(out_dir, cid, source.num_timepoints, kinds)):
            raise
        check_same_producer(out_dir / cid, cid, record, aliases)  # kept only if this model, these settings
        logger.info("skipping case %s: another process predicted it meanwhile", cid)
        return None
