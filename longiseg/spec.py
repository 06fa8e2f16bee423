"""What a model is and how to use it: the :class:`ModelSpec` that travels with the model and its checkpoint.

:func:`longiseg.build_model` attaches a spec to every model it builds (``model.spec``, as timm attaches a
``pretrained_cfg``): the registry name and factory arguments, the dimensionality and input layout. Training adds
what using the model needs (modality order, training crop, preprocessing, inference and post-processing
settings), tuning adds the tuned post-processing, and every checkpoint stores the spec, so
:func:`longiseg.load_model` rebuilds a ready model from the file alone and nothing downstream needs the model's
name to know how to run it.

Example:
    >>> from longiseg import build_model
    >>> model = build_model("segmast_ms")        # doctest: +SKIP
    >>> model.spec.dim, model.spec.input_layout  # doctest: +SKIP
    ('2.5D', 'B T C H W')
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import numpy as np

from longiseg._version import __version__

__all__ = ["ModelSpec", "INPUT_LAYOUTS", "SPEC_FORMAT_VERSION", "plain_data"]

#: Input layout of each dimensionality: batch, timepoints, channels (modalities), then space.
INPUT_LAYOUTS = {"2.5D": "B T C H W", "2D": "B T C H W", "3D": "B T C D H W"}
SPEC_FORMAT_VERSION = 1


def plain_data(value: Any, name: str) -> Any:
    """``value`` as built-in Python data that checkpoints store and ``torch.load(weights_only=True)`` reads.

    NumPy scalars become ``bool``/``int``/``float``, 1-D or n-D NumPy arrays (nested) lists; lists, tuples and
    mappings are converted item by item (tuples stay tuples, mappings become ``dict``).

    Args:
        value: e.g. a factory's keyword arguments.
        name: what ``value`` is, for the message (e.g. ``"build_model argument 'features'"``).

    Raises:
        TypeError: naming ``name`` and the offending item, for anything else (a tensor, a class, a function...).
    """
    if value is None:
        return None
    if isinstance(value, (np.generic, np.ndarray)):  # NumPy scalars and arrays: .item() / .tolist() give built-ins
        return plain_data(value.item() if isinstance(value, np.generic) else value.tolist(), name)
    if isinstance(value, str):
        return str.__str__(value)  # a str subclass (an enum member) becomes its plain text
    for kind in (bool, int, float):  # subclasses (IntEnum) become the built-in
        if isinstance(value, kind):
            return kind(value)
    if isinstance(value, (list, tuple)):
        items = [plain_data(v, f"{name}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if isinstance(value, tuple) else items
    if isinstance(value, Mapping):
        return {plain_data(k, f"a key of {name}"): plain_data(v, f"{name}[{k!r}]") for k, v in value.items()}
    raise TypeError(
        f"{name} must be plain data (None, bool, int, float, str, NumPy numbers or lists/tuples/dicts of them) so "
        f"that it can be stored in checkpoints, got {type(value).__name__}"
    )


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    """Everything needed to rebuild a model and apply it to a case.

    Attributes:
        name: registry name.
        kwargs: factory keyword arguments (``build_model(name, **kwargs)`` rebuilds the architecture).
        dim: ``"2.5D"`` (slices; tri-planar inference), ``"3D"`` (volumes; sliding window) or ``"2D"``.
        input_layout: the input tensor layout, e.g. ``"B T C H W"``.
        in_channels: modalities per timepoint ``C``.
        num_timepoints: timepoints ``T`` the model was built for; ``None`` when it takes any ``T >= 2``.
        modalities: channel order of the training data (e.g. ``("flair", "t2")``); ``None`` until trained.
        crop_size: training crop (2.5D) or patch edge (3D) in voxels; ``None`` until trained.
        preprocessing: how a case is prepared before inference (e.g. ``{"normalization": "zscore"}``).
        inference: inference and post-processing settings (the fields of
            :class:`~longiseg.workflows.config.InferenceConfig`); ``{}`` until trained.
        tuning: how the post-processing was chosen (``longiseg tune``: objective, score, validation cases);
            ``None`` when untuned.
        version: longiseg version that wrote the spec.
        format_version: :data:`SPEC_FORMAT_VERSION`.
    """

    name: str
    kwargs: dict[str, Any] = dataclasses.field(default_factory=dict)
    dim: str = "2.5D"
    input_layout: str = INPUT_LAYOUTS["2.5D"]
    in_channels: int | None = None
    num_timepoints: int | None = None
    modalities: tuple[str, ...] | None = None
    crop_size: int | None = None
    preprocessing: dict[str, Any] = dataclasses.field(default_factory=dict)
    inference: dict[str, Any] = dataclasses.field(default_factory=dict)
    tuning: dict[str, Any] | None = None
    version: str = __version__
    format_version: int = SPEC_FORMAT_VERSION

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise ValueError(f"ModelSpec.name must be a registry name, got {self.name!r}")
        if self.dim not in INPUT_LAYOUTS:
            raise ValueError(f"ModelSpec.dim must be one of {tuple(INPUT_LAYOUTS)}, got {self.dim!r}")
        if not isinstance(self.kwargs, Mapping):
            raise TypeError(f"ModelSpec.kwargs must be a mapping, got {type(self.kwargs).__name__}")
        object.__setattr__(self, "kwargs", plain_data(dict(self.kwargs), "ModelSpec.kwargs"))
        for key in ("in_channels", "num_timepoints"):  # model attributes may be NumPy ints
            object.__setattr__(self, key, plain_data(getattr(self, key), f"ModelSpec.{key}"))
        if self.modalities is not None:
            object.__setattr__(self, "modalities", tuple(str(m) for m in self.modalities))

    @property
    def trained(self) -> bool:
        """Whether the spec records the data settings of a training run (modalities, crop, inference)."""
        return self.modalities is not None and bool(self.inference)

    def replace(self, **changes: Any) -> ModelSpec:
        """A copy with some fields changed (validated again)."""
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        """Plain ``dict`` of built-in types (stored in checkpoints, loadable with ``weights_only=True``)."""
        out = dataclasses.asdict(self)
        out["modalities"] = list(self.modalities) if self.modalities is not None else None
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ModelSpec:
        """Rebuild a spec written by :meth:`to_dict`.

        Raises:
            TypeError: if ``data`` is not a mapping.
            ValueError: for a spec written by a newer longiseg, or missing/unknown fields.
        """
        if not isinstance(data, Mapping):
            raise TypeError(f"a model spec must be a mapping, got {type(data).__name__}")
        version = int(data.get("format_version", SPEC_FORMAT_VERSION))
        if version > SPEC_FORMAT_VERSION:
            raise ValueError(f"the model spec has format {version}, newer than this longiseg supports "
                             f"({SPEC_FORMAT_VERSION}); upgrade longiseg")
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise ValueError(f"unknown model spec field(s) {unknown}")
        if "name" not in data:
            raise ValueError("a model spec needs a 'name'")
        return cls(**dict(data))
