"""Does a model use the baseline? The baseline-reliance diagnostic.

A longitudinal model should call a lesion "new" only when it was not there at baseline. Replacing the baseline
images by the follow-up's makes every follow-up lesion "old": a model that compares the timepoints must then lower
its progression probability on the truly new lesions; a model that has only learned "lesion in the follow-up"
barely changes. On lesions that persist unchanged the probability should be low either way.

:func:`baseline_reliance` runs the model twice per follow-up ``k``, on the case as it is and with the images of
every earlier timepoint (the baseline, and for ``k >= 2`` the follow-ups before ``k``, against which the reference
marks what is new) replaced by that follow-up's, and reports, per reference lesion, the mean progression
probability inside the lesion in both runs:

* **new lesions**: the components of the reference progression mask; ``drop = p_real - p_swapped`` should be
  large (close to ``p_real``) for a model that uses the earlier scans;
* **persisting lesions**: the reference lesions at ``k - 1`` (the baseline's and those new at follow-ups
  ``1 .. k - 1``) that do not touch the reference progression mask (:mod:`longiseg.metrics.consistency`);
  ``p_real`` should be low.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn as nn

from longiseg.data.case import LongitudinalCase
from longiseg.inferers.predict import infer_case
from longiseg.inferers.settings import InferenceConfig, inference_settings, make_inferer, model_spec
from longiseg.inferers.sliding_window import prepare_case
from longiseg.metrics.consistency import label_persisting_lesions
from longiseg.metrics.lesion import label_lesions

__all__ = ["LesionReliance", "BaselineReliance", "baseline_reliance"]


@dataclass(frozen=True)
class LesionReliance:
    """Mean progression probability inside one reference lesion, with the real and with a swapped baseline.

    Attributes:
        followup: follow-up index (1-based).
        kind: ``"new"`` (a component of the reference progression mask) or ``"persisting"``.
        voxels: lesion size in voxels.
        p_real: mean progression probability inside the lesion on the case as it is.
        p_swapped: the same with the earlier scans (the baseline and the follow-ups before) replaced by the follow-up's.
    """

    followup: int
    kind: str
    voxels: int
    p_real: float
    p_swapped: float

    @property
    def drop(self) -> float:
        """``p_real - p_swapped``: how much the prediction relied on the baseline here."""
        return self.p_real - self.p_swapped


@dataclass(frozen=True)
class BaselineReliance:
    """Per-lesion results of :func:`baseline_reliance` with summaries.

    Attributes:
        case_id: the case.
        lesions: one :class:`LesionReliance` per reference lesion and follow-up.
    """

    case_id: str
    lesions: tuple[LesionReliance, ...]

    def summary(self) -> dict[str, float]:
        """Means over lesions: ``{kind}/p_real``, ``{kind}/p_swapped``, ``{kind}/drop`` and ``{kind}/count`` for
        ``kind`` in ``new`` and ``persisting`` (``nan`` means where a kind has no lesion)."""
        out: dict[str, float] = {}
        for kind in ("new", "persisting"):
            rows = [r for r in self.lesions if r.kind == kind]
            out[f"{kind}/count"] = float(len(rows))
            for key in ("p_real", "p_swapped", "drop"):
                out[f"{kind}/{key}"] = float(np.mean([getattr(r, key) for r in rows])) if rows else float("nan")
        return out


def baseline_reliance(model: nn.Module, case: LongitudinalCase, *, cfg: InferenceConfig | None = None,
                      device: str | torch.device | None = None) -> BaselineReliance:
    """Measure how much ``model``'s progression output depends on the baseline images of ``case``.

    Args:
        model: a registry model (its spec picks the inferer; see :func:`~longiseg.workflows.predict.run_prediction`).
        case: a labelled case ``(T, C, D, H, W)``, preprocessed as the model expects (e.g.
            :func:`~longiseg.data.preprocessing.preprocess_case`).
        cfg: inference settings (default: the model's spec).
        device: where to run the model.

    Returns:
        :class:`BaselineReliance` with one entry per reference new lesion and persisting baseline lesion of every
        follow-up.

    Raises:
        ValueError: a case without masks.
    """
    if not case.has_labels:
        raise ValueError(f"case {case.case_id!r} has no reference masks: baseline reliance is measured on lesions")
    spec = model_spec(model)
    inferer = make_inferer(spec, inference_settings(model, cfg), device=device, progress=False)
    images, brain = prepare_case(case.images, case.brain_mask)
    _, real = infer_case(inferer, model, images, brain, case.affine)
    assert case.baseline_mask is not None and case.progression_masks is not None
    rows: list[LesionReliance] = []
    before = np.asarray(case.baseline_mask, dtype=bool)  # the reference lesions at k - 1
    for k in range(1, images.shape[0]):
        swapped_images = images.clone()
        swapped_images[:k] = images[k]  # every earlier scan: the reference is new since k - 1, not since t0
        _, swapped = infer_case(inferer, model, swapped_images, brain, case.affine)
        p_real, p_swap = real[k - 1], swapped[k - 1]
        prog = np.asarray(case.progression_masks[k - 1], dtype=bool)
        new = label_lesions(prog, case.spacing)
        for i in range(new.n):
            inside = new.labels == i + 1
            rows.append(LesionReliance(k, "new", int(new.voxels[i]), float(p_real[inside].mean()),
                                       float(p_swap[inside].mean())))
        old, persisting = label_persisting_lesions(before, prog, case.spacing)
        for label in persisting:
            inside = old.labels == label
            rows.append(LesionReliance(k, "persisting", int(inside.sum()), float(p_real[inside].mean()),
                                       float(p_swap[inside].mean())))
        before = before | prog
    return BaselineReliance(case.case_id, tuple(rows))
