"""Post-processing of probability maps: threshold, drop small connected components, restrict to the brain,
and keep progression outside the baseline lesions.

The paper removes predicted components smaller than 27 mm3 (MS) or 50 mm3 (glioma). Volumes are given in
mm3 and converted with the voxel spacing, so the same threshold works for anisotropic volumes.

Progression is "lesion now that was not lesion before". :func:`postprocess_heads` turns the two heads'
probabilities into masks under that rule (what ``longiseg predict`` writes and ``longiseg tune`` scores):

1. the probability of a new lesion voxel at follow-up ``k`` is the progression head's times the probability
   that the voxel was not lesion at ``k - 1``: ``p_new_1 = p_prog_1 (1 - p_base)`` and, lesions not shrinking
   (as the lesion report assumes), ``p_new_k = p_prog_k (1 - p_base) prod_{j<k} (1 - p_prog_j)``
   (:func:`new_lesion_probability`): where the baseline head or an earlier follow-up sees a lesion, even below
   the threshold (an old lesion's faint border), the progression output is damped;
2. ``p_new`` is thresholded and the voxels of the lesions at ``k - 1`` are cut out (the baseline mask and the
   progression masks of the earlier follow-ups), so no progression voxel is ever a voxel of an earlier lesion;
3. components below the minimum volume are removed only then, so the thin rims left where the heads disagree
   about a small old lesion's border are dropped instead of being reported as new lesions (a rim is one
   connected shell: around a medium lesion that the progression head outlines a voxel or more wider, with
   confident borders, it can exceed the minimum volume and stays).

The rule follows the references ("lesion at ``k``, not at ``k - 1``"); it also damps a lesion voxel that healed
before ``k - 1`` and came back at ``k``. It relies on the heads: an old lesion the baseline head (or, for a lesion
new at an earlier follow-up, that follow-up's head) misses entirely is not excluded.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import numpy as np
import torch

from longiseg.data.lesions import check_connectivity, check_min_volume, remove_small_lesions
from longiseg.utils.masks import as_mask, as_spacing
from longiseg.utils.validation import (
    as_numpy,
    check_binary,
    check_bool,
    check_ndim,
    check_probabilities,
    check_probability,
    check_same_shape,
)

__all__ = ["threshold_probabilities", "remove_small_components", "restrict_to_mask", "postprocess",
           "new_lesion_probability", "HeadMasks", "check_postprocessing", "postprocess_heads", "RESTRICT_OPTIONS"]

#: Which masks ``restrict`` cuts to the brain: none, the progression masks, or both heads'.
RESTRICT_OPTIONS = ("none", "progression", "both")


def threshold_probabilities(prob: np.ndarray | torch.Tensor, threshold: float = 0.5) -> np.ndarray:
    """Binary mask ``prob >= threshold`` (any shape) as a bool numpy array.

    Raises:
        TypeError: ``threshold`` is not a number, or ``prob`` not an array/tensor.
        ValueError: if ``threshold`` is outside ``[0, 1]`` or ``prob`` holds NaN/inf or values outside
            ``[0, 1]`` (logits instead of probabilities?).
    """
    p = as_numpy("prob", prob)
    threshold = check_probability("threshold", threshold)
    check_probabilities("prob", p)
    return p >= threshold


def remove_small_components(
    mask: np.ndarray | torch.Tensor,
    min_volume_mm3: float,
    spacing: Sequence[float] = (1.0, 1.0, 1.0),
    connectivity: int = 26,
) -> np.ndarray:
    """Remove connected components whose volume is strictly below ``min_volume_mm3``.

    A component of ``n`` voxels has volume ``n * prod(spacing)`` mm3. Components are found with cc3d.

    Args:
        mask: binary ``(D, H, W)`` mask.
        min_volume_mm3: smallest kept component volume in mm3 (``0`` keeps everything).
        spacing: voxel size in mm along ``(D, H, W)``, e.g. from the NIfTI header.
        connectivity: 6, 18 or 26 (face, edge or corner neighbours).

    Returns:
        Bool ``(D, H, W)`` mask without the small components.

    Raises:
        TypeError: ``min_volume_mm3`` is not a number, or ``mask`` not an array/tensor.
        ValueError: wrong rank, non-binary mask, negative or non-finite volume, bad spacing or connectivity.
    """
    m = as_mask("mask", mask, 3)  # a bool array: the lesion layer's own check of it is free
    vmin = check_min_volume(min_volume_mm3)
    conn = check_connectivity(connectivity, 3)
    sp = as_spacing(spacing, 3)
    if vmin == 0 or not m.any():
        return m.copy()  # never a view of the caller's mask or tensor
    # the lesion layer compares voxel counts, so a component of exactly min_volume_mm3 is kept
    return remove_small_lesions(m, sp, min_volume_mm3=vmin, connectivity=conn)


def restrict_to_mask(mask: np.ndarray | torch.Tensor, brain_mask: np.ndarray | torch.Tensor) -> np.ndarray:
    """``mask AND brain_mask``; ``mask`` is ``(..., D, H, W)``, ``brain_mask`` binary ``(D, H, W)``.

    Raises:
        ValueError: if the masks are not binary or the spatial shapes differ.
    """
    m = as_numpy("mask", mask)
    b = as_numpy("brain_mask", brain_mask)
    check_ndim("brain_mask", b, 3, "(D, H, W)")
    if m.ndim < 3:
        raise ValueError(f"mask must have at least 3 dims (..., D, H, W), got shape {m.shape}")
    check_same_shape("mask spatial shape", m[(0,) * (m.ndim - 3)], "brain_mask", b)
    check_binary("mask", m)
    check_binary("brain_mask", b)
    return m.astype(bool) & b.astype(bool)


def postprocess(
    prob: np.ndarray | torch.Tensor,
    *,
    threshold: float = 0.5,
    min_volume_mm3: float = 0.0,
    spacing: Sequence[float] = (1.0, 1.0, 1.0),
    brain_mask: np.ndarray | torch.Tensor | None = None,
    connectivity: int = 26,
    exclude: np.ndarray | torch.Tensor | None = None,
) -> np.ndarray:
    """Threshold, optionally restrict to ``brain_mask`` and cut out ``exclude``, and drop components below
    ``min_volume_mm3``.

    Restriction and exclusion happen before component removal, so a lesion cut by the brain boundary is
    measured by its in-brain part, and what is left of a component after ``exclude`` is removed must itself
    reach ``min_volume_mm3``.

    Args:
        prob: probabilities ``(D, H, W)`` or a stack ``(N, D, H, W)`` (e.g. ``(T-1, D, H, W)``); each volume
            is processed on its own.
        threshold: voxels with ``prob >= threshold`` are foreground.
        min_volume_mm3: see :func:`remove_small_components` (27 for MS, 50 for glioma in the paper).
        spacing: voxel size in mm along ``(D, H, W)``.
        brain_mask: optional binary ``(D, H, W)`` mask; foreground outside it is removed.
        connectivity: 6, 18 or 26.
        exclude: optional binary ``(D, H, W)`` mask of voxels that cannot be foreground (for progression maps:
            the baseline lesion mask, see :func:`postprocess_heads`).

    Returns:
        Bool mask with the shape of ``prob``.
    """
    p = as_numpy("prob", prob)
    check_ndim("prob", p, (3, 4), "(D, H, W) or (N, D, H, W)")
    mask = threshold_probabilities(p, threshold)
    if brain_mask is not None:
        mask = restrict_to_mask(mask, brain_mask)
    if exclude is not None:
        ex = as_numpy("exclude", exclude)
        check_ndim("exclude", ex, 3, "(D, H, W)")
        check_same_shape("prob spatial shape", p[(0,) * (p.ndim - 3)], "exclude", ex)
        check_binary("exclude", ex)
        mask = mask & ~ex.astype(bool)
    if mask.ndim == 3:
        return remove_small_components(mask, min_volume_mm3, spacing, connectivity)
    return np.stack([remove_small_components(m, min_volume_mm3, spacing, connectivity) for m in mask])


def new_lesion_probability(baseline_prob: np.ndarray | torch.Tensor,
                           progression_prob: np.ndarray | torch.Tensor) -> np.ndarray:
    """The probability of a new lesion voxel at each follow-up: ``p_prog_k`` where the voxel was not lesion at
    ``k - 1``, ``p_prog_k (1 - p_base) prod_{j<k} (1 - p_prog_j)`` (``p_prog_1 (1 - p_base)`` for the first).

    Args:
        baseline_prob: ``(D, H, W)`` baseline lesion probabilities in ``[0, 1]``.
        progression_prob: ``(T-1, D, H, W)`` progression probabilities in ``[0, 1]``.

    Returns:
        ``(T-1, D, H, W)`` array in ``[0, 1]``, of the inputs' floating dtype (an integer or bool map, which
        cannot hold the products, takes the other's; float32 when neither is floating).

    Raises:
        ValueError: wrong dims, shapes that do not match, or values outside ``[0, 1]``.
    """
    return _new_lesion_probability(*_head_maps(baseline_prob, progression_prob))


def _head_maps(baseline_prob: np.ndarray | torch.Tensor, progression_prob: np.ndarray | torch.Tensor
               ) -> tuple[np.ndarray, np.ndarray]:
    """The two heads' maps as numpy arrays ``(D, H, W)`` and ``(T-1, D, H, W)``, checked and named as given."""
    base = as_numpy("baseline_prob", baseline_prob)
    prog = as_numpy("progression_prob", progression_prob)
    check_ndim("baseline_prob", base, 3, "(D, H, W)")
    check_ndim("progression_prob", prog, 4, "(T-1, D, H, W)")
    if prog.shape[0] == 0:
        raise ValueError(f"progression_prob must hold at least one follow-up (T-1 >= 1), got shape {prog.shape}")
    check_same_shape("progression_prob spatial shape", prog[0], "baseline_prob", base)
    check_probabilities("baseline_prob", base)
    check_probabilities("progression_prob", prog)
    return base, prog


def _new_lesion_probability(base: np.ndarray, prog: np.ndarray) -> np.ndarray:
    """:func:`new_lesion_probability` of checked maps (:func:`_head_maps`)."""
    # a 0/1 uint8 or bool map gave 1 * 0.7 -> 0: the floating dtype of the inputs (float32 if neither is one)
    floats = [a.dtype for a in (base, prog) if np.issubdtype(a.dtype, np.floating)]
    dtype = np.result_type(*floats) if floats else np.dtype(np.float32)
    base, prog = base.astype(dtype, copy=False), prog.astype(dtype, copy=False)
    out = np.empty_like(prog)
    not_before = 1 - base  # the probability that the voxel is not lesion at k - 1
    for k in range(len(prog)):
        out[k] = prog[k] * not_before
        if k + 1 < len(prog):
            not_before = not_before * (1 - prog[k])
    return out


class HeadMasks(NamedTuple):
    """What :func:`postprocess_heads` returns: the masks and the progression maps they were thresholded from.

    Attributes:
        baseline: bool ``(D, H, W)`` baseline mask.
        progression: bool ``(T-1, D, H, W)`` progression masks.
        progression_prob: ``(T-1, D, H, W)`` the progression probabilities thresholded
            (:func:`new_lesion_probability` with ``progression_outside_baseline``, else the head's maps as given).
    """

    baseline: np.ndarray
    progression: np.ndarray
    progression_prob: np.ndarray


def check_postprocessing(
    *,
    threshold: float = 0.5,
    min_volume_mm3: float = 0.0,
    spacing: Sequence[float] | float = (1.0, 1.0, 1.0),
    restrict: str = "progression",
    progression_outside_baseline: bool = True,
    progression_threshold: float | None = None,
) -> None:
    """Refuse bad :func:`postprocess_heads` settings, naming each, before any inference is spent on them.

    Raises:
        TypeError: a setting of the wrong type (a string for a bool, a number expected).
        ValueError: a threshold outside ``[0, 1]``, a negative or non-finite volume, a bad spacing or an
            unknown ``restrict``.
    """
    if restrict not in RESTRICT_OPTIONS:
        raise ValueError(f"restrict must be one of {RESTRICT_OPTIONS}, got {restrict!r}")
    check_bool("progression_outside_baseline", progression_outside_baseline)
    check_probability("threshold", threshold)
    if progression_threshold is not None:
        check_probability("progression_threshold", progression_threshold)
    check_min_volume(min_volume_mm3)
    as_spacing(spacing, 3)


def postprocess_heads(
    baseline_prob: np.ndarray | torch.Tensor,
    progression_prob: np.ndarray | torch.Tensor,
    *,
    threshold: float = 0.5,
    min_volume_mm3: float = 0.0,
    spacing: Sequence[float] = (1.0, 1.0, 1.0),
    brain_mask: np.ndarray | torch.Tensor | None = None,
    restrict: str = "progression",
    progression_outside_baseline: bool = True,
    progression_threshold: float | None = None,
) -> HeadMasks:
    """The baseline and progression masks of one case from the dual head's probabilities.

    The baseline head is thresholded at ``threshold`` (cut to ``brain_mask`` with ``restrict="both"``, small
    components removed). With ``progression_outside_baseline`` the progression maps become
    :func:`new_lesion_probability`, are thresholded at ``progression_threshold``, cut to the brain (``restrict`` not
    ``"none"``) and to the outside of the lesions at ``k - 1`` (the finished baseline mask and the finished
    progression masks of the earlier follow-ups), and then lose their components below ``min_volume_mm3``; so no
    progression voxel is a voxel of an earlier lesion (see the module docstring).
    Without it, the progression head's maps are post-processed alone.

    Args:
        baseline_prob: ``(D, H, W)`` baseline lesion probabilities.
        progression_prob: ``(T-1, D, H, W)`` progression probabilities, one map per follow-up.
        threshold: probability threshold of the baseline head (and of the progression maps when
            ``progression_threshold`` is ``None``).
        min_volume_mm3: see :func:`remove_small_components`.
        spacing: voxel size in mm along ``(D, H, W)``.
        brain_mask: binary ``(D, H, W)`` mask used by ``restrict`` (required unless ``restrict="none"``, which
            ignores it).
        restrict: ``"none"``, ``"progression"`` or ``"both"``: which masks are cut to ``brain_mask``.
        progression_outside_baseline: cut progression to the outside of the earlier lesions.
        progression_threshold: probability threshold of the progression maps (what ``longiseg tune`` chooses);
            ``None``: ``threshold``.

    Returns:
        :class:`HeadMasks` ``(baseline, progression, progression_prob)``: bool ``(D, H, W)`` and
        ``(T-1, D, H, W)`` masks, and the ``(T-1, D, H, W)`` progression maps the masks come from.

    Raises:
        TypeError / ValueError: a bad setting (:func:`check_postprocessing`), ``brain_mask`` missing while
            ``restrict`` needs it, or shapes that do not match.
    """
    check_postprocessing(threshold=threshold, min_volume_mm3=min_volume_mm3, spacing=spacing, restrict=restrict,
                         progression_outside_baseline=progression_outside_baseline,
                         progression_threshold=progression_threshold)
    if restrict != "none" and brain_mask is None:
        raise ValueError(f"restrict={restrict!r} needs a brain_mask")
    base, prog = _head_maps(baseline_prob, progression_prob)  # named as given (postprocess calls either "prob")
    pp = {"threshold": threshold, "min_volume_mm3": min_volume_mm3, "spacing": spacing}
    base_mask = postprocess(base, brain_mask=brain_mask if restrict == "both" else None, **pp)
    if progression_threshold is not None:
        pp["threshold"] = progression_threshold
    brain = brain_mask if restrict != "none" else None
    if not progression_outside_baseline:
        return HeadMasks(base_mask, postprocess(prog, brain_mask=brain, **pp), prog)
    prog = _new_lesion_probability(base, prog)
    masks, earlier = [], base_mask  # the lesions at k - 1: the baseline's and those new at follow-ups 1 .. k - 1
    for k in range(len(prog)):
        masks.append(postprocess(prog[k], brain_mask=brain, exclude=earlier, **pp))
        earlier = earlier | masks[-1]
    return HeadMasks(base_mask, np.stack(masks), prog)
