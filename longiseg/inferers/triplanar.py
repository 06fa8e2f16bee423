"""Tri-planar 2.5D inference: every slice of the three orthogonal planes, patch-wise, averaged voxel-wise.

**Axis convention.** A case is ``(T, C, D, H, W)``; the spatial axes ``(D, H, W)`` are the array axes of the
NIfTI volumes as nibabel loads them, i.e. voxel axes ``(i, j, k)`` = ``(x, y, z)``. For volumes stored in the
usual RAS/LAS-like orientation (x: left-right, y: posterior-anterior, z: inferior-superior) the planes are

| plane | slices along axis | in-plane slice axes (rows, cols) |
|---|---|---|
| ``sagittal`` | 0 (``D``, x) | ``(H, W)`` = (y, z) |
| ``coronal`` | 1 (``H``, y) | ``(D, W)`` = (x, z) |
| ``axial`` | 2 (``W``, z) | ``(D, H)`` = (x, y) |

A slice is the volume with the plane's axis removed, remaining axes in their original order; the model sees
``(B, T, C, rows, cols)``. For other orientations the names still denote these array axes.

**Skipping and averaging (exact definition).** Per plane, the patches of one slice start at
:func:`~longiseg.inferers.sliding_window.window_starts` along each in-plane axis; slices smaller than the
patch are zero-padded (the padded part is discarded). With ``skip_empty=True`` a patch is computed only if
its unpadded area holds at least one brain voxel (brain = the given mask, else voxels that are nonzero in any
timepoint or channel). A voxel's prediction in a plane is the blending-weighted average of the sigmoid
probabilities of the computed patches that contain it; it is *covered* in that plane if at least one such
patch exists. The final probability is the mean over the planes that cover the voxel; voxels covered by no
plane get probability 0. Probabilities are not masked to the brain here (see
:mod:`longiseg.inferers.postprocessing`): non-brain voxels inside a computed patch keep their prediction.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn as nn
from tqdm.auto import tqdm

from longiseg.inferers.sliding_window import (
    _check_blend,
    _check_overlap,
    _normalise_window,
    blend_weights,
    flip_combinations,
    predict_probabilities,
    prepare_case,
    resolve_device,
    split_probabilities,
    window_starts,
)
from longiseg.utils.logging import get_logger
from longiseg.utils.validation import check_positive_int

__all__ = ["PLANE_AXES", "plane_axis", "TriplanarInferer"]

logger = get_logger(__name__)

#: Array axis (of ``(D, H, W)``) along which each plane's slices are taken.
PLANE_AXES: dict[str, int] = {"sagittal": 0, "coronal": 1, "axial": 2}


def plane_axis(plane: str) -> int:
    """Spatial axis (0, 1 or 2 of ``(D, H, W)``) whose index enumerates the slices of ``plane``.

    Raises:
        ValueError: for an unknown plane name.
    """
    if plane not in PLANE_AXES:
        raise ValueError(f"unknown plane {plane!r}; expected one of {tuple(PLANE_AXES)}")
    return PLANE_AXES[plane]


class TriplanarInferer:
    """Tri-planar sliding-window inference of a 2.5D longitudinal model (the SegMaST inference of the paper).

    Args:
        patch_size: in-plane patch ``(rows, cols)`` or one int, normally the training patch size.
        overlap: overlap of neighbouring patches in ``[0, 1)`` (the paper uses 0.5).
        blend: ``"constant"`` (plain average of overlapping patches) or ``"gaussian"`` (centre-weighted).
        planes: non-empty subset of ``("axial", "coronal", "sagittal")``; the planes that are averaged.
        batch_size: patches per forward pass.
        flip_tta: also predict the three in-plane flips (rows, cols, both) of every patch and average the
            four probability maps.
        skip_empty: do not compute patches without brain voxels (see the module docstring for the exact rule).
        device: device to run the model on (the model is moved there); ``None`` keeps the model's device.
        amp: float16 autocast when running on CUDA (ignored on CPU).
        progress: show a tqdm bar over patches.

    After a call, :attr:`last_stats` holds the computed and skipped patch counts per plane.
    """

    def __init__(
        self,
        patch_size: int | Sequence[int] = 128,
        overlap: float = 0.5,
        blend: str = "constant",
        planes: Sequence[str] = ("axial", "coronal", "sagittal"),
        batch_size: int = 32,
        flip_tta: bool = False,
        skip_empty: bool = True,
        device: torch.device | str | None = None,
        amp: bool = True,
        progress: bool = True,
    ) -> None:
        self.patch_size = _normalise_window("patch_size", patch_size, 2)
        self.overlap = _check_overlap(overlap)
        self.blend = _check_blend(blend)
        if isinstance(planes, str):
            planes = (planes,)
        planes = tuple(planes)
        if not planes:
            raise ValueError("planes must name at least one of ('axial', 'coronal', 'sagittal')")
        for p in planes:
            plane_axis(p)
        if len(set(planes)) != len(planes):
            raise ValueError(f"planes must not repeat a plane, got {planes}")
        self.planes = planes
        self.batch_size = check_positive_int("batch_size", batch_size)
        self.flip_tta = bool(flip_tta)
        self.skip_empty = bool(skip_empty)
        self.device = device
        self.amp = bool(amp)
        self.progress = bool(progress)
        self.last_stats: dict[str, dict[str, int]] = {}

    def __call__(
        self,
        model: nn.Module,
        images: torch.Tensor | np.ndarray,
        brain_mask: torch.Tensor | np.ndarray | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Predict one case.

        Args:
            model: 2.5D model ``(B, T, C, rows, cols) -> LongitudinalOutput`` of logits.
            images: ``(T, C, D, H, W)`` with ``T >= 2``.
            brain_mask: optional binary ``(D, H, W)`` mask used for skipping (default: nonzero voxels).

        Returns:
            ``baseline_prob (D, H, W)`` and ``progression_prob (T-1, D, H, W)``, float32 numpy arrays (with a
            ``K`` axis after the timepoint axis when the model has ``K > 1`` outputs per head).

        Raises:
            ValueError / TypeError: for invalid inputs or a model whose output does not match its input.
        """
        imgs, mask = prepare_case(images, brain_mask)
        if self.skip_empty and mask is None:
            mask = (imgs != 0).any(dim=1).any(dim=0)
        dev = resolve_device(model, self.device)
        t = imgs.shape[0]
        spatial = tuple(imgs.shape[2:])

        plans = {p: self._plan(plane_axis(p), imgs.shape, mask) for p in self.planes}
        self.last_stats = {
            p: {"computed": int(todo.sum()), "skipped": int(todo.numel() - todo.sum())}
            for p, (todo, _, _) in plans.items()
        }
        total_patches = sum(s["computed"] for s in self.last_stats.values())

        total: torch.Tensor | None = None  # (K*T, D, H, W) float32, sum over planes
        count = torch.zeros(spatial, dtype=torch.uint8)  # planes covering each voxel
        was_training = model.training
        model.eval()
        bar = tqdm(total=total_patches, desc="tri-planar", unit="patch", disable=not self.progress)
        try:
            with torch.no_grad():
                for plane, plan in plans.items():
                    bar.set_postfix_str(plane)
                    total = self._run_plane(model, imgs, plane_axis(plane), plan, dev, total, count, bar)
        finally:
            bar.close()
            model.train(was_training)

        if total is None:  # nothing computed anywhere: the output channel count is unknown; assume K = 1
            logger.warning("tri-planar inference: no patch holds a brain voxel; returning all-zero maps")
            total = torch.zeros((t, *spatial), dtype=torch.float32)
        total.div_(count.clamp_min(1).to(torch.float32))
        return split_probabilities(total, t)

    def _plan(
        self, axis: int, shape: torch.Size, mask: torch.Tensor | None
    ) -> tuple[torch.Tensor, list[int], list[int]]:
        """Which patches of which slices to compute: ``todo (N, n_rows, n_cols)`` bool plus the starts."""
        n = shape[2 + axis]
        rows, cols = (s for i, s in enumerate(shape[2:]) if i != axis)
        ph, pw = self.patch_size
        ys = window_starts(rows, ph, self.overlap)
        xs = window_starts(cols, pw, self.overlap)
        if mask is None:
            return torch.ones(n, len(ys), len(xs), dtype=torch.bool), ys, xs
        m = mask.movedim(axis, 0)  # (N, rows, cols)
        todo = torch.zeros(n, len(ys), len(xs), dtype=torch.bool)
        for iy, y in enumerate(ys):
            for ix, x in enumerate(xs):
                todo[:, iy, ix] = m[:, y : y + ph, x : x + pw].flatten(1).any(dim=1)
        return todo, ys, xs

    def _run_plane(
        self,
        model: nn.Module,
        imgs: torch.Tensor,
        axis: int,
        plan: tuple[torch.Tensor, list[int], list[int]],
        dev: torch.device,
        total: torch.Tensor | None,
        count: torch.Tensor,
        bar: tqdm,
    ) -> torch.Tensor | None:
        """Accumulate one plane's per-voxel probabilities into ``total`` and its coverage into ``count``.

        The plane's patches are streamed in slice order in batches of ``batch_size`` (a batch may span
        several slices). Only the slices of the current batch live on the device (padded images, a float32
        probability accumulator and a weight sum); a slice is added to ``total`` and dropped as soon as its
        last patch is done.
        """
        todo, ys, xs = plan
        jobs = todo.nonzero().tolist()  # [(slice, row window, col window)], sorted by slice
        ph, pw = self.patch_size
        slices = imgs.movedim(2 + axis, 0)  # (N, T, C, rows, cols), a view
        n_slices, _, _, rows, cols = slices.shape
        pad = (0, max(cols, pw) - cols, 0, max(rows, ph) - rows)
        weight = blend_weights((ph, pw), self.blend, device=dev)
        flips = flip_combinations((-2, -1)) if self.flip_tta else [()]
        live: dict[int, list[torch.Tensor]] = {}  # slice -> [padded images, prob sum, weight sum]

        def flush(before: int, total: torch.Tensor | None) -> torch.Tensor | None:
            for s in sorted(k for k in live if k < before):
                _, acc, wsum = live.pop(s)
                acc, wsum = acc[:, :rows, :cols], wsum[:rows, :cols]
                covered = wsum > 0
                plane_prob = torch.where(covered, acc / wsum.clamp_min(1e-12), 0.0).cpu()
                if total is None:
                    total = torch.zeros((plane_prob.shape[0], *imgs.shape[2:]), dtype=torch.float32)
                total.movedim(1 + axis, 0)[s] += plane_prob  # (K*T, rows, cols) view of total
                count.movedim(axis, 0)[s] += covered.cpu().to(torch.uint8)
            return total

        for b0 in range(0, len(jobs), self.batch_size):
            batch_jobs = jobs[b0 : b0 + self.batch_size]
            for s, _, _ in batch_jobs:
                if s not in live:
                    data = torch.nn.functional.pad(slices[s].to(dev, torch.float32), pad)
                    live[s] = [data, None, torch.zeros(data.shape[-2:], dtype=torch.float32, device=dev)]
            patches = torch.stack(
                [live[s][0][..., ys[iy] : ys[iy] + ph, xs[ix] : xs[ix] + pw] for s, iy, ix in batch_jobs]
            )
            prob = predict_probabilities(model, patches, flips=flips, amp=self.amp)  # (B, K*T, ph, pw)
            prob.mul_(weight)
            if total is not None and total.shape[0] != prob.shape[1]:
                raise ValueError(
                    f"the model returned {prob.shape[1]} probability channels for one batch and "
                    f"{total.shape[0]} for another"
                )
            for j, (s, iy, ix) in enumerate(batch_jobs):
                y, x = ys[iy], xs[ix]
                state = live[s]
                if state[1] is None:
                    state[1] = torch.zeros((prob.shape[1], *state[2].shape), dtype=torch.float32, device=dev)
                state[1][:, y : y + ph, x : x + pw] += prob[j]
                state[2][y : y + ph, x : x + pw] += weight
            bar.update(len(batch_jobs))
            next_slice = jobs[b0 + self.batch_size][0] if b0 + self.batch_size < len(jobs) else n_slices
            total = flush(next_slice, total)
        return total
