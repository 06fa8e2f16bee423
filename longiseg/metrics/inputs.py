"""Input conversion shared by all metrics: binary masks and voxel spacings.

Owned by :mod:`longiseg.utils.masks` (the lesion labelling of the data layer uses it too); the names stay
importable from here.
"""

from __future__ import annotations

from longiseg.utils.masks import (
    MaskLike,
    as_mask,
    as_mask_pair,
    as_spacing,
    check_followup_masks,
    foreground_slices,
)

__all__ = ["MaskLike", "as_mask", "as_mask_pair", "as_spacing", "foreground_slices", "check_followup_masks"]
