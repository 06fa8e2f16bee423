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

**Window placement, skipping and averaging (exact definition).** Brain = the given mask, else the voxels
that are nonzero in any timepoint or channel. Per plane and slice, the windows along each in-plane axis start at

* ``crop_to_brain=False``: :func:`~longiseg.inferers.sliding_window.window_starts` over the whole axis;
* ``crop_to_brain=True`` (default): :func:`brain_window_starts` over the extent of the slice's brain voxels
  along that axis (the slice's bounding box, nnU-Net's crop to the nonzero region done per slice): the same
  50 %-overlap grid laid over ``[lo, hi]`` instead of ``[0, size)``, or one window centred on the box (clipped
  to the slice) when the box is shorter than the window. A slice without brain voxels has no window.

Slices smaller than the patch are zero-padded (the padded part is discarded). With ``skip_empty=True`` a
window is computed only if its unpadded area holds at least one brain voxel. A voxel's prediction in a
plane is the blending-weighted average of the sigmoid
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

from longiseg.data.case import plane_axes
from longiseg.inferers.sliding_window import (
    _check_blend,
    _check_device,
    _check_overlap,
    _normalise_window,
    _same_channels,
    blend_weights,
    brain_or_foreground,
    check_model_fits,
    flip_combinations,
    predict_probabilities,
    prepare_case,
    resolve_device,
    split_probabilities,
    window_starts,
)
from longiseg.networks.wrappers import eval_mode
from longiseg.utils.logging import get_logger
from longiseg.utils.validation import check_bool, check_positive_int

__all__ = ["PLANE_AXES", "plane_axis", "brain_window_starts", "TriplanarInferer"]

logger = get_logger(__name__)

#: Array axis (of ``(D, H, W)``) along which each plane's slices are taken when no affine says which axis is
#: which (RAS/LAS-like storage); with the case's affine the planes are read from it (``data.case.plane_axes``).
PLANE_AXES: dict[str, int] = {"sagittal": 0, "coronal": 1, "axial": 2}


def plane_axis(plane: str) -> int:
    """Spatial axis (0, 1 or 2 of ``(D, H, W)``) whose index enumerates the slices of ``plane``.

    Raises:
        ValueError: for an unknown plane name.
    """
    if plane not in PLANE_AXES:
        raise ValueError(f"unknown plane {plane!r}; expected one of {tuple(PLANE_AXES)}")
    return PLANE_AXES[plane]


def brain_window_starts(size: int, window: int, overlap: float, lo: int, hi: int) -> list[int]:
    """Window starts along one axis of length ``size`` that cover the brain extent ``[lo, hi]`` (inclusive).

    If the extent ``e = hi - lo + 1`` is at least ``window``, the windows of
    :func:`~longiseg.inferers.sliding_window.window_starts` ``(e, window, overlap)`` shifted by ``lo``; else one
    window centred on the extent, ``lo - (window - e) // 2``, clipped to ``[0, max(0, size - window)]``.
    Every returned window lies inside ``[0, size)`` when ``size >= window`` and covers ``[lo, hi]``.

    Example: ``brain_window_starts(229, 128, 0.5, 20, 200) == [20, 73]`` (the whole-axis grid has three
    windows, ``[0, 51, 101]``).

    Args:
        size: length of the axis.
        window: window length.
        overlap: fraction in ``[0, 1)``.
        lo: first brain index along the axis, ``0 <= lo <= hi < size``.
        hi: last brain index.

    Returns:
        Sorted start offsets.
    """
    check_positive_int("size", size)
    check_positive_int("window", window)
    for name, val in (("lo", lo), ("hi", hi)):
        if isinstance(val, bool) or not isinstance(val, (int, np.integer)):
            raise TypeError(f"{name} must be an int, got {type(val).__name__}")
    if not 0 <= lo <= hi < size:
        raise ValueError(f"need 0 <= lo <= hi < size, got lo={lo}, hi={hi}, size={size}")
    extent = int(hi) - int(lo) + 1
    if extent >= window:
        return [int(lo) + s for s in window_starts(extent, window, overlap)]
    start = int(lo) - (window - extent) // 2
    return [min(max(0, start), max(0, size - window))]


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
            ``False`` computes every window of the grid ``crop_to_brain`` chooses: with ``crop_to_brain=True``
            voxels outside every slice's brain box stay uncomputed (probability 0) either way.
        crop_to_brain: lay each slice's windows over the bounding box of its brain voxels instead of the whole
            slice (default; the module docstring gives the rule). On a 193x229x193 case at patch 128 this cuts
            the windows from 3,288 to 1,211 (MNI152 brain mask); ``False`` gives the plain whole-slice grid.
        device: device to run the model on (the model is moved there): ``"auto"``, ``"cpu"``, ``"cuda"``,
            ``"cuda:N"``, ``"mps"`` or a ``torch.device``, checked here to exist on this machine; ``None`` keeps
            the model's device.
        amp: float16 autocast when running on CUDA (ignored on CPU).
        progress: show a tqdm bar over patches.

    Raises:
        TypeError, ValueError: naming the argument, for an invalid setting (a ``device`` that is unknown or
            that this machine does not have included).

    After a call, :attr:`last_stats` holds per plane the computed patch count and the ``skipped`` count: the
    windows of the plain whole-slice grid of every slice minus the computed ones (the work avoided).
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
        crop_to_brain: bool = True,
        device: torch.device | str | None = None,
        amp: bool = True,
        progress: bool = True,
    ) -> None:
        self.patch_size = _normalise_window("patch_size", patch_size, 2)
        self.overlap = _check_overlap(overlap)
        self.blend = _check_blend(blend)
        if isinstance(planes, str):
            planes = (planes,)
        if not isinstance(planes, Sequence):
            raise TypeError(f"planes must be a plane name or a sequence of them, got {type(planes).__name__}")
        planes = tuple(planes)
        if not planes:
            raise ValueError("planes must name at least one of ('axial', 'coronal', 'sagittal')")
        for p in planes:
            plane_axis(p)
        if len(set(planes)) != len(planes):
            raise ValueError(f"planes must not repeat a plane, got {planes}")
        self.planes = planes
        self.batch_size = check_positive_int("batch_size", batch_size)
        self.flip_tta = check_bool("flip_tta", flip_tta)
        self.skip_empty = check_bool("skip_empty", skip_empty)
        self.crop_to_brain = check_bool("crop_to_brain", crop_to_brain)
        self.device = _check_device(device)
        self.amp = check_bool("amp", amp)
        self.progress = check_bool("progress", progress)
        self.last_stats: dict[str, dict[str, int]] = {}

    def __call__(
        self,
        model: nn.Module,
        images: torch.Tensor | np.ndarray,
        brain_mask: torch.Tensor | np.ndarray | None = None,
        *,
        affine: np.ndarray | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Predict one case.

        Args:
            model: 2.5D model ``(B, T, C, rows, cols) -> LongitudinalOutput`` of logits.
            images: ``(T, C, D, H, W)`` with ``T >= 2``.
            brain_mask: optional binary ``(D, H, W)`` mask used for skipping (default: nonzero voxels).
            affine: ``(4, 4)`` voxel-to-world matrix of the volumes: each plane is then the anatomical one
                (:func:`~longiseg.data.case.plane_axes`), as training samples it, whatever the storage order.
                ``None``: the array axes of :data:`PLANE_AXES` (right for RAS/LAS-like storage only).

        Returns:
            ``baseline_prob (D, H, W)`` and ``progression_prob (T-1, D, H, W)``, float32 numpy arrays (with a
            ``K`` axis after the timepoint axis when the model has ``K > 1`` outputs per head).

        Raises:
            ValueError / TypeError: for invalid inputs (an ``affine`` that is not a finite, non-singular ``(4, 4)``
                matrix included) or a model whose output does not match its input.
        """
        imgs, mask = prepare_case(images, brain_mask)
        check_model_fits(model, imgs, self.patch_size, "patch_size", dims=("2.5D", "2D"),
                         other="SlidingWindowInferer3D")
        if self.skip_empty or self.crop_to_brain:
            mask = brain_or_foreground(imgs, mask)
        dev = resolve_device(model, self.device)
        t = imgs.shape[0]
        spatial = tuple(imgs.shape[2:])

        axes = PLANE_AXES if affine is None else plane_axes(affine)
        plans = {p: self._plan(axes[p], imgs.shape, mask) for p in self.planes}
        self.last_stats = {p: {"computed": len(jobs), "skipped": grid - len(jobs)} for p, (jobs, grid) in plans.items()}
        total_patches = sum(s["computed"] for s in self.last_stats.values())

        total: torch.Tensor | None = None  # (K*T, D, H, W) float32, sum over planes
        count = torch.zeros(spatial, dtype=torch.uint8)  # planes covering each voxel
        # leave=None: kept on its own, cleared when nested below another bar (longiseg predict's cases)
        bar = tqdm(total=total_patches, desc="tri-planar", unit="patch", disable=not self.progress, leave=None)
        try:
            with eval_mode(model), torch.no_grad():
                for plane, plan in plans.items():
                    bar.set_postfix_str(plane)
                    total = self._run_plane(model, imgs, axes[plane], plan[0], dev, total, count, bar)
                if total is None:  # nothing computed: one all-zero patch tells the model's channels (K * T)
                    logger.warning("tri-planar inference: no patch holds a brain voxel; returning all-zero maps")
                    probe = torch.zeros((1, *imgs.shape[:2], *self.patch_size), device=dev)
                    total = torch.zeros((predict_probabilities(model, probe).shape[1], *spatial))
        finally:
            bar.close()

        total.div_(count.clamp_min(1).to(torch.float32))
        return split_probabilities(total, t)

    def _plan(
        self, axis: int, shape: torch.Size, mask: torch.Tensor | None
    ) -> tuple[list[tuple[int, int, int]], int]:
        """The windows to compute, ``[(slice, row start, col start)]`` in slice order, and the size of the plain grid."""
        n = shape[2 + axis]
        rows, cols = (s for i, s in enumerate(shape[2:]) if i != axis)
        ph, pw = self.patch_size
        ys = window_starts(rows, ph, self.overlap)
        xs = window_starts(cols, pw, self.overlap)
        grid = n * len(ys) * len(xs)
        if mask is None:
            return [(s, y, x) for s in range(n) for y in ys for x in xs], grid
        m = mask.movedim(axis, 0)  # (N, rows, cols)
        row_any = m.any(dim=2).numpy()  # (N, rows)
        col_any = m.any(dim=1).numpy()  # (N, cols)
        # integral image of the mask per slice: the brain-voxel count of any window in O(1)
        integral = torch.nn.functional.pad(m.to(torch.int32).cumsum(1).cumsum(2), (1, 0, 1, 0)).numpy()
        jobs = []
        for s in range(n):
            if self.crop_to_brain:
                r_idx, c_idx = np.flatnonzero(row_any[s]), np.flatnonzero(col_any[s])
                if r_idx.size == 0:
                    continue
                sy = brain_window_starts(rows, ph, self.overlap, int(r_idx[0]), int(r_idx[-1]))
                sx = brain_window_starts(cols, pw, self.overlap, int(c_idx[0]), int(c_idx[-1]))
            else:
                sy, sx = ys, xs
            ii = integral[s]
            for y in sy:
                y1 = min(y + ph, rows)
                for x in sx:
                    x1 = min(x + pw, cols)
                    if self.skip_empty and ii[y1, x1] - ii[y, x1] - ii[y1, x] + ii[y, x] == 0:
                        continue
                    jobs.append((s, y, x))
        return jobs, grid

    def _run_plane(
        self,
        model: nn.Module,
        imgs: torch.Tensor,
        axis: int,
        jobs: list[tuple[int, int, int]],
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
        ph, pw = self.patch_size
        slices = imgs.movedim(2 + axis, 0)  # (N, T, C, rows, cols), a view
        n_slices, _, _, rows, cols = slices.shape
        pad = (0, max(cols, pw) - cols, 0, max(rows, ph) - rows)
        weight = blend_weights((ph, pw), self.blend, device=dev)
        flips = flip_combinations((-2, -1)) if self.flip_tta else [()]
        live: dict[int, list[torch.Tensor]] = {}  # slice -> [padded images, prob sum, weight sum]
        channels = None if total is None else total.shape[0]  # K * T, of the first batch of every plane

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
                [live[s][0][..., y : y + ph, x : x + pw] for s, y, x in batch_jobs]
            )
            prob = predict_probabilities(model, patches, flips=flips, amp=self.amp)  # (B, K*T, ph, pw)
            prob.mul_(weight)
            channels = _same_channels(prob, channels)
            for j, (s, y, x) in enumerate(batch_jobs):
                state = live[s]
                if state[1] is None:
                    state[1] = torch.zeros((prob.shape[1], *state[2].shape), dtype=torch.float32, device=dev)
                state[1][:, y : y + ph, x : x + pw] += prob[j]
                state[2][y : y + ph, x : x + pw] += weight
            bar.update(len(batch_jobs))
            next_slice = jobs[b0 + self.batch_size][0] if b0 + self.batch_size < len(jobs) else n_slices
            total = flush(next_slice, total)
        return total
