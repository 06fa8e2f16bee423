"""Registration quality-check figure: a checkerboard of the baseline and the registered follow-up.

Misalignment shows as broken edges where the squares meet (ventricles, cortex, lesions), in the axial,
coronal and sagittal planes through the centre of the brain.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from longiseg.data.case import PLANES, display_slice, plane_axes
from longiseg.utils.io import PathLike, atomic_save_figure
from longiseg.utils.plotting import plain_text
from longiseg.utils.validation import check_positive_int

__all__ = ["checkerboard", "checkerboard_figure"]


def _normalise(img: np.ndarray) -> np.ndarray:
    fg = img[img > 0]
    lo, hi = (np.percentile(fg, [1.0, 99.5]) if fg.size else (0.0, 1.0))
    return np.clip((img - lo) / max(float(hi - lo), 1e-6), 0.0, 1.0)


def checkerboard(a: np.ndarray, b: np.ndarray, squares: int = 8) -> np.ndarray:
    """2D checkerboard ``(H, W)`` of two slices of one shape: ``a`` on even squares, ``b`` on odd ones."""
    squares = check_positive_int("squares", squares)
    if a.shape != b.shape or a.ndim != 2:
        raise ValueError(f"a and b must be 2D slices of one shape, got {a.shape} and {b.shape}")
    rows = (np.arange(a.shape[0]) * squares // a.shape[0])[:, None]
    cols = (np.arange(a.shape[1]) * squares // a.shape[1])[None, :]
    return np.where((rows + cols) % 2 == 0, a, b)


@plain_text()  # names with '$' drawn as written, not as math
def checkerboard_figure(fixed: np.ndarray, moved: np.ndarray, affine: np.ndarray, out_png: PathLike, *,
                        title: str = "", squares: int = 8) -> Path:
    """Write a PNG: for each plane, the baseline, the registered follow-up and their checkerboard.

    Args:
        fixed: baseline image ``(D, H, W)``.
        moved: follow-up resampled onto the baseline grid ``(D, H, W)``.
        affine: ``(4, 4)`` voxel-to-world matrix of that grid (plane orientation and aspect; the panels are
            shown in one anatomical orientation whatever the storage order, see
            :func:`~longiseg.data.case.display_slice`).
        out_png: destination (written atomically).
        title: figure title.
        squares: squares per side of the checkerboard.
    """
    from longiseg.utils.plotting import subplots

    if fixed.shape != moved.shape or fixed.ndim != 3:
        raise ValueError(f"fixed and moved must be 3D volumes of one shape, got {fixed.shape} and {moved.shape}")
    a, b = _normalise(fixed), _normalise(moved)
    fg = np.argwhere(fixed > 0)
    centre = fg.mean(axis=0).round().astype(int) if fg.size else np.array(fixed.shape) // 2
    axes_of = plane_axes(affine)
    fig, grid = subplots(3, 3, figsize=(9, 9), facecolor="black")
    for r, plane in enumerate(PLANES):
        ax_n = axes_of[plane]
        idx: list[slice | int] = [slice(None)] * 3
        idx[ax_n] = int(centre[ax_n])
        (sa, aspect), (sb, _) = (display_slice(v[tuple(idx)], affine, ax_n) for v in (a, b))
        for c, (img, name) in enumerate(((sa, "baseline"), (sb, "follow-up (registered)"),
                                         (checkerboard(sa, sb, squares), "checkerboard"))):
            ax = grid[r, c]
            ax.imshow(img.T, cmap="gray", vmin=0, vmax=1, origin="lower", aspect=aspect, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(name, color="white", fontsize=10)
        grid[r, 0].set_ylabel(plane, color="white", fontsize=10)
    fig.suptitle(title, color="white", fontsize=11)
    fig.tight_layout(rect=(0, 0, 1, 0.96))
    out = Path(out_png)
    atomic_save_figure(fig, out, dpi=80, facecolor=fig.get_facecolor())
    return out
