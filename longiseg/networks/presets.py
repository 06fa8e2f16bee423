"""Named sizes of the paper's convolutional baselines, shared by the LongiUNet and DynUNet families, and the
argument rules every registered factory shares.

Both families are U-Nets sized alike (2.5D about 9M (``"ms"``) / 16M (``"glioma"``) parameters, 3D about
15M / 25M), so their stage widths live here once, with the checks their registered factories share.
"""

from __future__ import annotations

from typing import Any

from longiseg.registry import list_models, model_info
from longiseg.utils.validation import check_timepoints

__all__ = ["UNET_WIDTHS", "pop_fixed_spatial_dims", "pop_any_timepoints"]

#: Feature widths per resolution stage, full resolution first (``"2d"``/``"3d"`` x ``"ms"``/``"glioma"``).
UNET_WIDTHS: dict[str, dict[str, tuple[int, ...]]] = {
    "2d": {"ms": (32, 64, 128, 256, 288, 288), "glioma": (32, 64, 128, 256, 448, 448)},
    "3d": {"ms": (32, 64, 128, 256, 256), "glioma": (40, 80, 160, 320, 400)},
}


def pop_fixed_spatial_dims(kwargs: dict[str, Any], spatial_dims: int, family: str) -> None:
    """Remove ``spatial_dims`` from a registered factory's ``kwargs`` when it is the value its preset fixes.

    Args:
        kwargs: the factory's keyword arguments (changed in place).
        spatial_dims: the value the preset fixes (2 for 2D/2.5D models, 3 for 3D ones).
        family: shell pattern of the family's registry names (e.g. ``"longi_unet_dw*"``); the message names
            its registered models of the other dimensionality.

    Raises:
        TypeError: ``kwargs`` asks for another ``spatial_dims``.
    """
    if "spatial_dims" not in kwargs:
        return
    value = kwargs.pop("spatial_dims")
    if not isinstance(value, bool) and value == spatial_dims:
        return
    other = "3D" if spatial_dims == 2 else "2D/2.5D"
    names = [n for n in list_models(family) if (model_info(n).dim == "3D") == (spatial_dims == 2)]
    hint = f"use {', '.join(names)}" if names else f"no {other} model of this family is registered"
    raise TypeError(f"spatial_dims is fixed to {spatial_dims} by this registered model, got spatial_dims={value!r}; "
                    f"for {other} inputs {hint}")


def pop_any_timepoints(kwargs: dict[str, Any]) -> None:
    """Check and remove ``num_timepoints`` from the ``kwargs`` of a factory whose model takes any ``T >= 2``.

    Every registered factory accepts ``num_timepoints`` (the training workflow passes the cohort's ``T`` to all
    of them). A model that shares its weights across timepoints does not depend on it: the value is checked,
    not enforced, so the model (and its ``spec.num_timepoints``, ``None``) takes any ``T`` after training too.

    Args:
        kwargs: the factory's keyword arguments (changed in place).

    Raises:
        TypeError, ValueError: ``num_timepoints`` is given and not an int ``>= 2``.
    """
    value = kwargs.pop("num_timepoints", None)
    if value is not None:
        check_timepoints("num_timepoints", value)
