"""Choose the progression threshold on validation cases, as nnU-Net determines its post-processing.

A model trained briefly (or on few examples of the rare class) is often under-confident on new lesions:
their probabilities stay below the default 0.5 although the model has localised them. Lowering the
threshold helps only if it does not also turn the model's false alarms into lesions, so the threshold is
chosen on *validation* cases that the model was not trained on, never on the test cases, and then applied
unchanged to the test cases.

Objectives (``objective=``):

* ``"balanced"`` (default since 0.3.2): the mean of the lesion F1 over the validation follow-ups with
  new/enlarging lesions (P) and of the NP score (1 if the predicted mask shows no activity, else 0: no voxel under
  the ``segmast`` protocol, no lesion above its size filter under ``tdw``) over the follow-ups without (NP), P
  and NP as evaluation counts them (:func:`~longiseg.metrics.longitudinal.followup_kind`), the two progression
  columns of the SegMaST table: a threshold must find new lesions
  *and* leave stable patients clear. The NP score is all-or-nothing per follow-up, so with a handful of
  validation patients one stable patient can tip the choice.
* ``"lesion_f1"`` (the default up to 0.3.1): the P follow-ups' lesion F1 alone; NP follow-ups are ignored, so
  the threshold may fall as long as the P follow-ups gain, whatever it costs the stable ones. Measured over
  three seeds on two synthetic cohorts (chosen on one, confirmed on the other; docs, "Reproducing"),
  ``"balanced"`` cleared more stable test patients (NP 0.80 vs 0.67 and 0.87 vs 0.47 for the paper's recipe)
  at about the same progression lesion F1 (-0.004 and -0.04).

With only one kind of follow-up both objectives are that kind's mean (``lesion_f1`` without any P follow-up
raises). Masks are post-processed exactly as in prediction (threshold, optional brain restriction, with
``baseline_probabilities`` the baseline lesion mask (at ``baseline_threshold``) cut out, removal of components below
``min_volume_mm3``; :func:`~longiseg.inferers.postprocessing.postprocess_heads`) and lesions are counted under the evaluation protocol
(e.g. ``segmast``: lesions below 11 mm^3 ignored).

Example:
    >>> sel = select_threshold(val_probs, val_masks, spacing=(2.0, 2.0, 2.0), min_volume_mm3=27.0)
    >>> sel.threshold, sel.score, sel.default_score  # doctest: +SKIP
    (0.3, 0.62, 0.41)
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from longiseg.data.lesions import check_min_volume
from longiseg.inferers.postprocessing import postprocess, postprocess_heads
from longiseg.metrics.longitudinal import evaluate_mask_pair, followup_kind, shows_activity
from longiseg.metrics.protocol import EvaluationProtocol, get_protocol
from longiseg.utils.masks import as_spacing
from longiseg.utils.validation import as_numpy, check_probabilities

__all__ = ["DEFAULT_OBJECTIVE", "DEFAULT_THRESHOLDS", "OBJECTIVES", "ThresholdSelection", "check_thresholds",
           "progression_score", "select_threshold", "tuning_note"]


def tuning_note(record: Mapping[str, Any] | None) -> str:
    """How a model's progression threshold came about, for messages: ``""`` untuned, else chosen or kept (with
    the reason, e.g. no validation follow-up with progression) by ``longiseg tune``, from its record
    (``model.spec.tuning``)."""
    if not record:
        return ""
    if record.get("kept"):
        return f" (kept by longiseg tune: {record['kept']})"
    return " (tuned by longiseg tune on validation patients)"


#: Objectives of :func:`select_threshold`.
OBJECTIVES: tuple[str, ...] = ("lesion_f1", "balanced")
#: The objective :func:`select_threshold` and ``longiseg tune`` use unless told otherwise.
DEFAULT_OBJECTIVE = "balanced"

#: Candidate thresholds searched by default: 0.1, 0.15, ..., 0.9.
DEFAULT_THRESHOLDS: tuple[float, ...] = tuple(round(0.1 + 0.05 * i, 2) for i in range(17))


@dataclass(frozen=True)
class ThresholdSelection:
    """Result of :func:`select_threshold`.

    Attributes:
        threshold: the chosen threshold (best objective; ties go to the candidate closest to ``default``).
        objective: the objective maximised (see :data:`OBJECTIVES`).
        score: objective at ``threshold``.
        default: the reference threshold (usually the 0.5 used without selection).
        default_score: objective at ``default``.
        scores: objective per candidate threshold, in the order searched.
        num_progression: validation follow-ups whose reference shows activity under the protocol (P).
        num_stable: validation follow-ups whose reference does not (NP; under ``tdw`` also those whose only new
            lesions are below its size filter).
    """

    threshold: float
    objective: str
    score: float
    default: float
    default_score: float
    scores: dict[float, float] = field(default_factory=dict)
    num_progression: int = 0
    num_stable: int = 0

    def to_dict(self) -> dict[str, object]:
        """Plain, JSON-able dict (scores keyed by the threshold as a string)."""
        return {
            "threshold": self.threshold,
            "objective": self.objective,
            "score": self.score,
            "default": self.default,
            "default_score": self.default_score,
            "scores": {f"{t:g}": s for t, s in self.scores.items()},
            "num_progression": self.num_progression,
            "num_stable": self.num_stable,
        }


def _check_probability_map(name: str, prob: object) -> np.ndarray:
    arr = as_numpy(name, prob)
    if arr.ndim != 3:
        raise ValueError(f"{name} must be a (D, H, W) probability map, got shape {arr.shape}")
    check_probabilities(name, arr)
    return arr


def _check_mask(name: str, mask: object, shape: tuple[int, ...]) -> np.ndarray:
    arr = as_numpy(name, mask)
    if arr.shape != shape:
        raise ValueError(f"{name} must have the shape of its probability map {shape}, got {arr.shape}")
    if arr.dtype != bool:
        if not np.isin(arr, (0, 1)).all():
            raise ValueError(f"{name} must be a binary mask (values 0/1 or bool)")
        arr = arr.astype(bool)
    return arr


def check_thresholds(thresholds: Sequence[float]) -> tuple[float, ...]:
    """``thresholds`` as a tuple of distinct floats in ``(0, 1)``: the candidates of :func:`select_threshold`.

    Raises:
        TypeError: not a sequence of numbers (a string, booleans).
        ValueError: empty, a value outside ``(0, 1)``, or a value given twice.
    """
    if isinstance(thresholds, (str, bytes)) or not isinstance(thresholds, Sequence):
        raise TypeError(f"thresholds must be a sequence of floats, got {type(thresholds).__name__}")
    out = []
    for t in thresholds:
        if isinstance(t, bool) or not isinstance(t, (int, float, np.floating)):
            raise TypeError(f"thresholds must hold floats, got {type(t).__name__}")
        if not 0.0 < float(t) < 1.0:
            raise ValueError(f"thresholds must lie in (0, 1), got {t}")
        out.append(float(t))
    if not out:
        raise ValueError("thresholds must not be empty")
    if len(set(out)) != len(out):
        raise ValueError(f"thresholds must be distinct, got {list(out)}")
    return tuple(out)


def progression_score(
    pred: np.ndarray,
    gt: np.ndarray,
    spacing: Sequence[float],
    protocol: str | EvaluationProtocol = "segmast",
) -> float:
    """Score of one predicted progression mask as evaluation reports it: lesion F1 for a P follow-up, its NP score
    (Dice NP) for an NP one, P or NP as :func:`~longiseg.metrics.longitudinal.followup_kind` decides under
    ``protocol`` (after its size filter where it filters voxel metrics: under ``tdw`` a follow-up whose only new
    lesion is below 3 mm^3 is NP).

    Args:
        pred: ``(D, H, W)`` binary predicted (post-processed) progression mask.
        gt: ``(D, H, W)`` binary reference progression mask; empty means no progression (NP).
        spacing: voxel size in mm per axis.
        protocol: evaluation protocol (lesion size cut-off, matching rule).

    Returns:
        For a P follow-up: lesion F1 in ``[0, 1]`` under ``protocol``; for an NP one: 1.0 if ``pred`` shows no
        activity (:func:`~longiseg.metrics.longitudinal.shows_activity`: no voxel under ``segmast``, no lesion
        that survives the size filter under ``tdw``), else 0.0.
    """
    prot = get_protocol(protocol)
    return _score(pred, gt, spacing, prot, followup_kind(gt, spacing, prot))


def _score(pred: np.ndarray, gt: np.ndarray, spacing: Sequence[float], prot: EvaluationProtocol, kind: str) -> float:
    """:func:`progression_score` of a follow-up whose ``kind`` (``"P"``/``"NP"``) is known."""
    if kind == "NP":  # the Dice NP evaluation reports: strict (any voxel), or after the size filter
        return 0.0 if shows_activity(pred, spacing, prot, name="pred") else 1.0
    metrics, _ = evaluate_mask_pair(pred, gt, spacing, prot, kind="P")
    return float(metrics["lesion_f1"])


def _progression_mask(prob: np.ndarray, baseline: np.ndarray | None, brain: np.ndarray | None, threshold: float,
                      min_volume_mm3: float, spacing: Sequence[float], baseline_threshold: float,
                      earlier: Sequence[np.ndarray] = (), restrict: str = "progression") -> np.ndarray:
    """One follow-up's progression mask as prediction writes it (``postprocess_heads`` owns the rule; ``earlier``:
    the case's earlier follow-ups' maps, whose lesions it excludes; ``restrict``: which masks ``brain`` cuts, as
    prediction's ``restrict_to_brain``)."""
    if baseline is None:
        return postprocess(prob, threshold=threshold, min_volume_mm3=min_volume_mm3, spacing=spacing,
                           brain_mask=brain)
    prog = postprocess_heads(baseline, np.stack([*earlier, prob]), threshold=baseline_threshold,
                             progression_threshold=threshold, min_volume_mm3=min_volume_mm3, spacing=spacing,
                             brain_mask=brain, restrict="none" if brain is None else restrict).progression
    return prog[-1]


def _per_map_spacings(spacing: object, count: int) -> list[np.ndarray]:
    """``spacing`` of :func:`select_threshold` as ``count`` ``(3,)`` spacings: one shared, or one per map."""
    if isinstance(spacing, Sequence) and not isinstance(spacing, str) and spacing and all(
            isinstance(s, (Sequence, np.ndarray)) and not isinstance(s, str) for s in spacing):
        if len(spacing) != count:
            raise ValueError(f"spacing must be one (3,) voxel size or one per probability map ({count}), got "
                             f"{len(spacing)} spacings")
        return [as_spacing(s, 3, name=f"spacing[{i}]") for i, s in enumerate(spacing)]
    return [as_spacing(spacing, 3)] * count  # type: ignore[arg-type]


def select_threshold(
    probabilities: Sequence[np.ndarray | torch.Tensor],
    references: Sequence[np.ndarray | torch.Tensor],
    spacing: Sequence[float] | Sequence[Sequence[float]],
    *,
    thresholds: Sequence[float] = DEFAULT_THRESHOLDS,
    min_volume_mm3: float = 0.0,
    brain_masks: Sequence[np.ndarray | torch.Tensor | None] | None = None,
    protocol: str | EvaluationProtocol = "segmast",
    default: float = 0.5,
    objective: str = DEFAULT_OBJECTIVE,
    baseline_probabilities: Sequence[np.ndarray | torch.Tensor] | None = None,
    baseline_threshold: float = 0.5,
    earlier_probabilities: Sequence[Sequence[np.ndarray | torch.Tensor]] | None = None,
    restrict: str = "progression",
) -> ThresholdSelection:
    """Pick the progression probability threshold that maximises the validation objective.

    Args:
        probabilities: one ``(D, H, W)`` progression probability map (values in ``[0, 1]``) per validation
            follow-up.
        references: the matching ``(D, H, W)`` binary reference progression masks (empty for stable
            follow-ups).
        spacing: voxel size in mm along (D, H, W): one ``(3,)`` spacing shared by all maps, or one per map
            (cases of a cohort need not share a voxel size; volumes and distances are each map's own).
        thresholds: candidate thresholds in ``(0, 1)``.
        min_volume_mm3: components below this volume are removed after thresholding, as in prediction.
        brain_masks: optional ``(D, H, W)`` binary masks (or ``None`` entries) the predicted masks are cut
            to before component removal, as prediction's ``restrict_to_brain`` (``restrict``) does.
        protocol: evaluation protocol of the lesion F1 (see :mod:`longiseg.metrics.protocol`).
        default: reference threshold, always evaluated; ties are broken towards it.
        objective: ``"balanced"`` (default: mean of the P follow-ups' lesion F1 and of the NP score of the NP
            follow-ups) or ``"lesion_f1"`` (the P follow-ups' lesion F1 alone); see the module docstring.
        baseline_probabilities: optional ``(D, H, W)`` baseline probability map per progression map (its
            case's, repeated for each follow-up of the case): the progression masks then exclude the baseline
            mask, as prediction does with ``progression_outside_baseline``.
        baseline_threshold: the baseline head's threshold (``inference.threshold``; not searched: the selected
            threshold is the progression masks' alone).
        earlier_probabilities: with ``baseline_probabilities``, per progression map the ``(D, H, W)`` progression
            maps of its case's earlier follow-ups (``[]`` for a first follow-up): the masks of a later follow-up
            then also exclude the lesions new at an earlier one, as prediction does (``None``: every map is a
            first follow-up).
        restrict: where ``brain_masks`` are given, which masks they cut, as prediction's ``restrict_to_brain``:
            ``"progression"`` (default) or ``"both"`` (the baseline mask too, before it is excluded from the
            progression masks: an old lesion crossing the brain mask's edge may then lose its baseline mask).

    Returns:
        :class:`ThresholdSelection` with the chosen threshold, its objective and the objective of every
        candidate.

    Raises:
        TypeError: non-array inputs or non-float thresholds.
        ValueError: empty or mismatched sequences, maps that are not ``(D, H, W)`` probabilities, masks of
            another shape or not binary, thresholds outside ``(0, 1)``, a negative ``min_volume_mm3``, an
            unknown ``objective``, or ``objective="lesion_f1"`` without a non-empty reference.
    """
    if isinstance(probabilities, (np.ndarray, torch.Tensor)) or not isinstance(probabilities, Sequence):
        raise TypeError("probabilities must be a sequence (list) of (D, H, W) maps, one per case")
    if isinstance(references, (np.ndarray, torch.Tensor)) or not isinstance(references, Sequence):
        raise TypeError("references must be a sequence (list) of (D, H, W) masks, one per case")
    if not probabilities:
        raise ValueError("probabilities must hold at least one case")
    if len(references) != len(probabilities):
        raise ValueError(
            f"references must have one mask per probability map: {len(references)} vs {len(probabilities)}"
        )
    if baseline_probabilities is not None and len(baseline_probabilities) != len(probabilities):
        raise ValueError(f"baseline_probabilities must have one map per probability map: "
                         f"{len(baseline_probabilities)} vs {len(probabilities)}")
    if brain_masks is not None and len(brain_masks) != len(probabilities):
        raise ValueError(
            f"brain_masks must have one entry per probability map: {len(brain_masks)} vs {len(probabilities)}"
        )
    min_volume_mm3 = check_min_volume(min_volume_mm3)
    if objective not in OBJECTIVES:
        raise ValueError(f"objective must be one of {OBJECTIVES}, got {objective!r}")
    if restrict not in ("progression", "both"):
        raise ValueError(f"restrict must be 'progression' or 'both' (how brain_masks cut the masks), got {restrict!r}")
    (default,) = check_thresholds([default])
    (baseline_threshold,) = check_thresholds([baseline_threshold])
    candidates = check_thresholds(thresholds)
    if default not in candidates:
        candidates = (*candidates, default)
    prot = get_protocol(protocol)
    spacings = _per_map_spacings(spacing, len(probabilities))

    probs = [_check_probability_map(f"probabilities[{i}]", p) for i, p in enumerate(probabilities)]
    refs = [_check_mask(f"references[{i}]", r, p.shape) for i, (r, p) in enumerate(zip(references, probs))]
    brains: list[np.ndarray | None] = [None] * len(probs)
    if brain_masks is not None:
        brains = [
            None if b is None else _check_mask(f"brain_masks[{i}]", b, p.shape)
            for i, (b, p) in enumerate(zip(brain_masks, probs))
        ]
    bases: list[np.ndarray | None] = [None] * len(probs)
    if baseline_probabilities is not None:
        bases = [_check_probability_map(f"baseline_probabilities[{i}]", b) for i, b in enumerate(baseline_probabilities)]
        for i, (b, p) in enumerate(zip(bases, probs)):
            if b.shape != p.shape:
                raise ValueError(f"baseline_probabilities[{i}] must have the shape {p.shape} of probabilities[{i}], "
                                 f"got {b.shape}")
    earlier: list[list[np.ndarray]] = [[] for _ in probs]
    if earlier_probabilities is not None:
        if bases[0] is None:
            raise ValueError("earlier_probabilities needs baseline_probabilities (the rule that cuts earlier lesions)")
        if len(earlier_probabilities) != len(probs):
            raise ValueError(f"earlier_probabilities must have one sequence per probability map: "
                             f"{len(earlier_probabilities)} vs {len(probs)}")
        earlier = [[_check_probability_map(f"earlier_probabilities[{i}][{j}]", e) for j, e in enumerate(maps)]
                   for i, maps in enumerate(earlier_probabilities)]
        for i, maps in enumerate(earlier):
            if any(e.shape != probs[i].shape for e in maps):
                raise ValueError(f"earlier_probabilities[{i}] must hold maps of the shape {probs[i].shape} of "
                                 f"probabilities[{i}]")
    is_p = [followup_kind(r, spacings[i], prot) == "P" for i, r in enumerate(refs)]  # as evaluation counts them
    if objective == "lesion_f1" and not any(is_p):
        raise ValueError("objective='lesion_f1' needs at least one reference with new/enlarging lesions")

    flags = (True,) if objective == "lesion_f1" else (True, False)
    used = [i for i, k in enumerate(is_p) if k in flags]  # "lesion_f1" never scores the NP follow-ups
    scores: dict[float, float] = {}
    for t in candidates:
        per_case = {
            i: _score(_progression_mask(probs[i], bases[i], brains[i], t, min_volume_mm3, spacings[i],
                                        baseline_threshold, earlier[i], restrict), refs[i], spacings[i], prot,
                      "P" if is_p[i] else "NP")
            for i in used
        }
        groups = [[v for i, v in per_case.items() if is_p[i] == flag] for flag in flags]
        scores[t] = float(np.mean([np.mean(g) for g in groups if g]))
    best = max(scores.values())
    # Ties (within float noise) go to the candidate nearest the default: no change without a gain.
    threshold = min((t for t, s in scores.items() if s >= best - 1e-12), key=lambda t: (abs(t - default), t))
    return ThresholdSelection(
        threshold=threshold,
        objective=objective,
        score=scores[threshold],
        default=default,
        default_score=scores[default],
        scores=scores,
        num_progression=sum(is_p),
        num_stable=len(is_p) - sum(is_p),
    )
