"""Figures of the demo and of a case: a patient in three planes, training curves, predictions over references.

Plotting is tooling: matplotlib is imported inside each function, so importing longiseg never imports it.
"""

from __future__ import annotations

import csv
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from scipy import ndimage

from longiseg.data.case import LongitudinalCase, check_case
from longiseg.data.lesions import label_lesions
from longiseg.utils.io import PathLike, atomic_save_figure
from longiseg.utils.plotting import plain_text
from longiseg.utils.validation import check_instance, check_int_or_sequence, check_positive_int

__all__ = ["plot_case", "plot_training_curves", "plot_prediction_overlay"]


def _best_slices(case: LongitudinalCase, followup: int) -> tuple[int, int, int]:
    """Centre voxel of the largest progression lesion (else of the baseline lesions, else the brain), lesions as
    the library labels them (:func:`~longiseg.data.lesions.label_lesions`, 26-connected)."""
    assert case.baseline_mask is not None and case.progression_masks is not None
    for mask in (case.progression_masks[followup - 1], case.baseline_mask, case.foreground_mask()):
        if mask.any():
            lesions = label_lesions(mask.astype(bool), case.spacing)
            biggest = int(np.argmax(lesions.voxels)) + 1
            com = ndimage.center_of_mass(lesions.labels == biggest)
            return tuple(int(round(c)) for c in com)  # type: ignore[return-value]
    return tuple(s // 2 for s in case.shape)  # type: ignore[return-value]


def _check_center(center: Sequence[int], shape: Sequence[int]) -> tuple[int, int, int]:
    """``center`` as a voxel ``(d, h, w)`` inside ``shape`` (a negative index would wrap to the far side)."""
    ctr = check_int_or_sequence("center", center, 3, minimum=0, what="a voxel index (d, h, w)")
    if any(c >= s for c, s in zip(ctr, shape)):
        raise ValueError(f"center must be a voxel inside the case's shape {tuple(shape)}, got {ctr}")
    return ctr  # type: ignore[return-value]


@plain_text()  # names with '$' drawn as written, not as math
def plot_case(case: LongitudinalCase | PathLike, out_png: PathLike, *, followup: int = 1,
              modality: str | None = None, center: Sequence[int] | None = None) -> Path:
    """Figure of one patient: baseline and follow-up slices in all three planes with their masks.

    Rows are the axial, coronal and sagittal planes through ``center`` (default: the largest new/enlarging
    lesion). Columns: baseline image, baseline with its lesion mask (green), follow-up image, follow-up
    with baseline lesions (green outline) and the progression mask (red), and the follow-up minus baseline
    difference.

    Args:
        case: a labelled case or its folder in the library layout.
        out_png: destination PNG (written atomically).
        followup: which follow-up (1-based) to show.
        modality: channel to show (default: ``"flair"`` if present, else the first).
        center: voxel ``(d, h, w)`` the slices pass through.
    """
    from longiseg.data.case import PLANES
    from longiseg.data.loading import load_case
    from longiseg.utils.plotting import subplots

    if not isinstance(case, LongitudinalCase):
        case = load_case(case)
    if not case.has_labels:
        raise ValueError(f"case {case.case_id!r} has no masks to plot")
    followup = check_positive_int("followup", followup)
    if followup >= case.num_timepoints:
        raise ValueError(f"followup must be in [1, {case.num_timepoints - 1}], got {followup}")
    mod = modality or ("flair" if "flair" in case.modalities else case.modalities[0])
    if mod not in case.modalities:
        raise ValueError(f"modality must be one of {list(case.modalities)}, got {mod!r}")
    c = case.modalities.index(mod)
    ctr = _best_slices(case, followup) if center is None else _check_center(center, case.shape)
    assert case.baseline_mask is not None and case.progression_masks is not None

    from matplotlib.colors import ListedColormap

    def norm(img: np.ndarray) -> np.ndarray:
        fg = img[img != 0]
        lo, hi = (float(v) for v in np.percentile(fg, [0.5, 99.0])) if fg.size else (0.0, 1.0)
        return np.where(img != 0, np.clip((img - lo) / max(hi - lo, 1e-6), 0, 1), 0.0)

    base_img, fu_img = norm(case.images[0, c]), norm(case.images[followup, c])
    brain = case.foreground_mask()
    diff = np.ma.masked_where(~brain, fu_img - base_img)
    green, red = ListedColormap(["#00e060"]), ListedColormap(["#ff2020"])
    axes = case.plane_axes
    cols = ["baseline", "baseline + lesions", f"follow-up {followup}", "follow-up + new/enlarging", "difference"]
    fig, grid = subplots(3, 5, figsize=(15, 9.5), facecolor="black")
    for r, plane in enumerate(PLANES):
        ax_n = axes[plane]
        idx = [slice(None)] * 3
        idx[ax_n] = ctr[ax_n]
        sl = tuple(idx)
        in_plane = [a for a in range(3) if a != ax_n]
        sp = [case.spacing[a] for a in in_plane]

        def show(ax, img, cmap="gray", vmin=0.0, vmax=1.0, sl=sl, sp=sp):
            ax.set_facecolor("black")
            ax.imshow(img[sl].T, cmap=cmap, vmin=vmin, vmax=vmax, origin="lower",
                      aspect=sp[1] / sp[0], interpolation="nearest")

        bmask = case.baseline_mask[sl].T.astype(float)
        pmask = case.progression_masks[followup - 1][sl].T.astype(float)
        show(grid[r, 0], base_img)
        show(grid[r, 1], base_img)
        grid[r, 1].imshow(np.ma.masked_where(bmask == 0, bmask), cmap=green, alpha=0.7, origin="lower",
                          aspect=sp[1] / sp[0], interpolation="nearest")
        show(grid[r, 2], fu_img)
        show(grid[r, 3], fu_img)
        if bmask.any():
            grid[r, 3].contour(bmask, levels=[0.5], colors="#00e060", linewidths=0.9)
        grid[r, 3].imshow(np.ma.masked_where(pmask == 0, pmask), cmap=red, alpha=0.8, origin="lower",
                          aspect=sp[1] / sp[0], interpolation="nearest")
        show(grid[r, 4], diff, cmap="RdBu_r", vmin=-0.6, vmax=0.6)
        grid[r, 0].set_ylabel(f"{plane} ({ctr[ax_n]})", color="white", fontsize=11)
        for j in range(5):
            grid[r, j].set_xticks([])
            grid[r, j].set_yticks([])
            if r == 0:
                grid[r, j].set_title(cols[j], color="white", fontsize=11)
    status = "progressing" if case.progression_masks[followup - 1].any() else "stable"
    fig.suptitle(f"{case.case_id} ({mod}, {status}): baseline lesions (green) {int(case.baseline_mask.sum())} "
                 f"voxels, new/enlarging (red) {int(case.progression_masks[followup - 1].sum())} voxels",
                 color="white", fontsize=13)
    fig.tight_layout(rect=(0, 0, 1, 0.96))
    out = Path(out_png)
    atomic_save_figure(fig, out, dpi=90, facecolor=fig.get_facecolor())
    return out


@plain_text()  # names with '$' drawn as written, not as math
def plot_training_curves(runs: Mapping[str, Path], path: PathLike) -> Path:
    """Training loss and validation Dice per epoch of each run folder (its ``metrics.csv``), one line per run."""
    from longiseg.utils.plotting import subplots

    fig, axes = subplots(1, 2, figsize=(9, 3.6))
    for label, run in check_instance("runs", runs, Mapping, "a mapping of labels to run folders").items():
        with open(run / "metrics.csv", encoding="utf-8", newline="") as fh:
            rows = list(csv.DictReader(fh))
        ep = [int(r["epoch"]) for r in rows]
        axes[0].plot(ep, [float(r["train_loss"]) for r in rows], marker="o", label=label)
        # validated epochs only: with trainer.val_every > 1 the others leave val_dice empty (float("") raised)
        val = [(e, float(r["val_dice"])) for e, r in zip(ep, rows) if (r.get("val_dice") or "").strip()]
        if val:
            axes[1].plot(*zip(*val), marker="o", label=label)
    axes[0].set(title="training loss", xlabel="epoch")
    axes[1].set(title="validation Dice (mean of B and P heads)", xlabel="epoch")
    for ax in axes:
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:  # a run without validation draws nothing there
            ax.legend()
    fig.tight_layout()
    atomic_save_figure(fig, path, dpi=120)
    return Path(path)


@plain_text()  # names with '$' drawn as written, not as math
def plot_prediction_overlay(case: LongitudinalCase, pred_dirs: Mapping[str, Path], path: PathLike) -> Path:
    """Axial slice of ``case`` through new lesions and unchanged old ones: images with true (green) and
    predicted (red) masks of each model (``pred_dirs``: label -> prediction folder) and the progression
    entropy. On the follow-up panel the baseline lesions that persist unchanged are outlined in cyan: a model
    that tells new from old leaves them without red.

    The slice is the one with the most new/enlarging plus persisting-lesion voxels among the slices that cut
    both (else the one with the most new/enlarging voxels).
    """
    from longiseg.data.lesions import label_persisting_lesions
    from longiseg.data.predictions import read_prediction
    from longiseg.utils.plotting import subplots

    check_case("case", case)
    if not case.has_labels:
        raise ValueError(f"case {case.case_id!r} has no masks to plot")
    check_instance("pred_dirs", pred_dirs, Mapping, "a mapping of labels to prediction folders")
    if not pred_dirs:
        raise ValueError("pred_dirs must name at least one prediction folder")
    case_id = case.case_id
    prog = case.progression_masks[0]
    lesions, keep = label_persisting_lesions(case.baseline_mask, prog, case.spacing)
    persisting = np.isin(lesions.labels, keep) if keep.size else np.zeros(prog.shape, bool)
    new_area = prog.sum(axis=(0, 1)).astype(np.int64)
    old_area = persisting.sum(axis=(0, 1)).astype(np.int64)
    both = np.where((new_area > 0) & (old_area > 0), new_area + old_area, -1)
    z = int(np.argmax(both)) if both.max() > 0 else int(np.argmax(new_area)) if prog.any() else case.shape[2] // 2
    rot = lambda a: np.rot90(a[:, :, z])  # noqa: E731 - display in radiological orientation
    t0, t1 = case.images[0, 0], case.images[1, 0]
    n = len(pred_dirs)
    fig, axes = subplots(n, 3, figsize=(10, 3.4 * n), squeeze=False)
    for row, (label, pdir) in enumerate(pred_dirs.items()):
        masks, _, _ = read_prediction(pdir, case_id, case.num_timepoints, "mask")
        entropy, _, _ = read_prediction(pdir, case_id, case.num_timepoints, "entropy")
        panels = [
            (t0, case.baseline_mask, masks[0], f"{label}: baseline (t0)"),
            (t1, prog, masks[1], f"{label}: new/enlarging (t1)"),
        ]
        for col, (img, gt, pr, title) in enumerate(panels):
            ax = axes[row, col]
            ax.imshow(rot(img), cmap="gray")
            if gt.any():
                ax.contour(rot(gt), levels=[0.5], colors="lime", linewidths=1.0)
            if col == 1 and persisting[:, :, z].any():
                ax.contour(rot(persisting), levels=[0.5], colors="cyan", linewidths=0.8, linestyles="dashed")
            if pr.any():
                ax.contour(rot(pr), levels=[0.5], colors="red", linewidths=1.0)
            ax.set_title(title, fontsize=9)
            ax.axis("off")
        ent = entropy[1]
        ax = axes[row, 2]
        im = ax.imshow(rot(ent), cmap="magma", vmin=0, vmax=float(np.log(2)))
        if prog.any():
            ax.contour(rot(prog), levels=[0.5], colors="lime", linewidths=0.8)
        ax.set_title(f"{label}: progression entropy (nats)", fontsize=9)
        ax.axis("off")
        fig.colorbar(im, ax=ax, fraction=0.046)
    fig.suptitle(f"{case_id}, axial slice {z}: ground truth green, prediction red, unchanged old lesions cyan "
                 "(dashed; should stay free of red on the t1 panel)", fontsize=9)
    fig.tight_layout()
    atomic_save_figure(fig, path, dpi=110)
    return Path(path)
