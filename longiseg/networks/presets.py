"""Named sizes of the paper's convolutional baselines, shared by the LongiUNet and DynUNet families.

Both families are U-Nets sized alike (2.5D about 9M (``"ms"``) / 16M (``"glioma"``) parameters, 3D about
15M / 25M), so their stage widths live here once.
"""

from __future__ import annotations

__all__ = ["UNET_WIDTHS"]

#: Feature widths per resolution stage, full resolution first (``"2d"``/``"3d"`` x ``"ms"``/``"glioma"``).
UNET_WIDTHS: dict[str, dict[str, tuple[int, ...]]] = {
    "2d": {"ms": (32, 64, 128, 256, 288, 288), "glioma": (32, 64, 128, 256, 448, 448)},
    "3d": {"ms": (32, 64, 128, 256, 256), "glioma": (40, 80, 160, 320, 400)},
}
