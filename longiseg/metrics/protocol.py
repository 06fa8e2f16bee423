"""Evaluation protocols: the settings that make numbers comparable with a paper's tables.

``segmast``  SegMaST (MIDL 2026), section 3 "Training and Evaluation": Dice on the raw masks; lesions
             below 11 mm^3 excluded from the lesion metrics only (after Commowick et al. 2018); strict NP
             rule; DAA. The paper does not name its lesion matching rule; the IoU > 0.1 rule is used.
``tdw``      Difference Weighting (MICCAI 2024 workshop), section 3.2: lesions below 3 mm^3 removed from
             reference and prediction before *all* metrics; lesion F1 with IoU > 0.1 matching (LongiSeg).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

from longiseg.data.lesions import check_connectivity
from longiseg.metrics.lesion import MATCHING_RULES
from longiseg.metrics.voxel import check_distance_value
from longiseg.utils.config import ConfigBase, ConfigError, require

__all__ = ["EvaluationProtocol", "PROTOCOLS", "get_protocol"]

_FROM_3D = {6: 4, 18: 8, 26: 8}  # a 3D connectivity's 2D counterpart (face neighbours / all neighbours)
#: Float fields whose default is NaN: ``None`` (JSON ``null``, which ``summary.json`` holds for NaN) reads as NaN.
_NAN_FIELDS = ("hd_one_empty",)


@dataclass(frozen=True)
class EvaluationProtocol(ConfigBase):
    """Settings of an evaluation (a :class:`~longiseg.utils.config.ConfigBase`: ``from_dict``, ``to_dict``,
    ``with_overrides``, files).

    Attributes:
        name: protocol name used in reports.
        min_lesion_volume_mm3: lesions smaller than this are removed before lesion metrics.
        filter_voxel_metrics: also remove them before voxel metrics (Dice, HD95, PPV).
        matching: lesion matching rule (``"iou"``, ``"iou_global"`` or ``"overlap"``).
        iou_threshold: IoU must exceed this for a lesion match.
        connectivity: lesion connectivity: 6, 18 or 26 (read as 4, 8, 8 on 2D masks), 4 or 8 for 2D masks only;
            ``None``: 26 in 3D, 8 in 2D. Used for the lesions and for a lesion "touching" progression.
        strict_np: score no-progression follow-ups 1 if the predicted progression mask is empty else 0.
        hd_percentile: percentile of the Hausdorff distance (95).
        hd_one_empty: Hausdorff distance when exactly one mask is empty: a number ``>= 0``, inf, or NaN
            (default: left out of means); ``None`` (JSON ``null``, as ``summary.json`` writes NaN) is read as NaN.

    Two protocols are equal when their fields are, NaN counting as equal to NaN (the hash agrees).
    """

    name: str = "segmast"
    min_lesion_volume_mm3: float = 11.0
    filter_voxel_metrics: bool = False
    matching: str = "iou"
    iou_threshold: float = 0.1
    connectivity: int | None = 26
    strict_np: bool = True
    hd_percentile: float = 95.0
    hd_one_empty: float | None = float("nan")  # None is stored as NaN (see __post_init__)

    def __post_init__(self) -> None:
        def need(cond: bool, msg: str) -> None:
            require(cond, "EvaluationProtocol", msg)

        self.coerce_fields()  # "no" is False and None no float, as when read from a file
        for name in _NAN_FIELDS:  # null <-> NaN: a protocol read back from summary.json is the one written
            if getattr(self, name) is None:
                object.__setattr__(self, name, float("nan"))
        try:
            check_distance_value("hd_one_empty", self.hd_one_empty)
        except ValueError as err:
            raise ConfigError(f"EvaluationProtocol: {err}") from None
        need(self.matching in MATCHING_RULES, f"matching must be one of {MATCHING_RULES}, got {self.matching!r}")
        need(math.isfinite(self.min_lesion_volume_mm3) and self.min_lesion_volume_mm3 >= 0,
             f"min_lesion_volume_mm3 must be a finite volume >= 0, got {self.min_lesion_volume_mm3}")
        need(0.0 <= self.iou_threshold < 1.0, f"iou_threshold must lie in [0, 1), got {self.iou_threshold}")
        need(0.0 <= self.hd_percentile <= 100.0, f"hd_percentile must lie in [0, 100], got {self.hd_percentile}")
        need(self.connectivity in (None, *_FROM_3D, *_FROM_3D.values()),
             f"connectivity must be None, 6, 18 or 26 (3D; used as 4, 8, 8 on 2D masks) or 4, 8 (2D only), "
             f"got {self.connectivity!r}")

    def _key(self) -> tuple[Any, ...]:
        """The field values, NaN replaced by a marker so that NaN fields compare (and hash) equal."""
        return tuple(
            "<nan>" if isinstance(v, float) and math.isnan(v) else v
            for v in (getattr(self, f.name) for f in dataclasses.fields(self))
        )

    def __eq__(self, other: object) -> bool:
        if other.__class__ is not self.__class__:
            return NotImplemented
        return self._key() == other._key()  # type: ignore[attr-defined]

    def __hash__(self) -> int:
        return hash(self._key())

    def connectivity_for(self, ndim: int) -> int:
        """The lesion connectivity for ``ndim``-D masks: the protocol's, with a 3D value read as its 2D
        counterpart on 2D masks (6 -> 4 face neighbours; 18 and 26 -> 8, all neighbours); ``None``: full.

        Raises:
            ValueError: a 2D value (4, 8) for 3D masks.
        """
        conn = _FROM_3D.get(self.connectivity, self.connectivity) if ndim == 2 else self.connectivity
        return check_connectivity(conn, ndim)  # None: the full connectivity


PROTOCOLS: dict[str, EvaluationProtocol] = {
    "segmast": EvaluationProtocol(name="segmast", min_lesion_volume_mm3=11.0, filter_voxel_metrics=False),
    "tdw": EvaluationProtocol(
        name="tdw", min_lesion_volume_mm3=3.0, filter_voxel_metrics=True, strict_np=False
    ),
}


def get_protocol(protocol: str | EvaluationProtocol) -> EvaluationProtocol:
    """Return a protocol by name (``"segmast"``, ``"tdw"``) or pass an :class:`EvaluationProtocol` through."""
    if isinstance(protocol, EvaluationProtocol):
        return protocol
    if not isinstance(protocol, str):
        raise TypeError(f"protocol must be a name or an EvaluationProtocol, got {type(protocol).__name__}")
    key = protocol.lower()
    if key not in PROTOCOLS:
        raise ValueError(f"unknown protocol {protocol!r}; expected one of {sorted(PROTOCOLS)}")
    return PROTOCOLS[key]
