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
import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

from longiseg._version import __version__
from longiseg.utils.validation import check_int_sequence, check_positive_int, check_timepoints

__all__ = ["ModelSpec", "INPUT_LAYOUTS", "SPEC_FORMAT_VERSION", "plain_data"]

#: Input layout of each dimensionality: batch, timepoints, channels (modalities), then space.
INPUT_LAYOUTS = {"2.5D": "B T C H W", "2D": "B T C H W", "3D": "B T C D H W"}
SPEC_FORMAT_VERSION = 1
_OLD_DEFAULT_LAYOUT = INPUT_LAYOUTS["2.5D"]  # what earlier versions stored when input_layout was left out


def plain_data(value: Any, name: str, *, tensors: bool = False) -> Any:
    """``value`` as built-in Python data that checkpoints store and ``torch.load(weights_only=True)`` reads.

    NumPy scalars become ``bool``/``int``/``float``, 1-D or n-D NumPy arrays (nested) lists; lists, tuples and
    mappings are converted item by item (tuples stay tuples, mappings become ``dict``).

    Args:
        value: e.g. a factory's keyword arguments.
        name: what ``value`` is, for the message (e.g. ``"build_model argument 'features'"``).
        tensors: keep ``torch.Tensor`` items as they are (a checkpoint's free-form entries may hold tensors; a
            factory argument may not).

    Raises:
        TypeError: naming ``name`` and the offending item, for anything else (a tensor unless ``tensors``, a
            class, a function, a path...).
    """
    if value is None or (tensors and isinstance(value, torch.Tensor)):
        return value
    if isinstance(value, (np.generic, np.ndarray)):  # NumPy scalars and arrays: .item() / .tolist() give built-ins
        return plain_data(value.item() if isinstance(value, np.generic) else value.tolist(), name)
    if isinstance(value, str):
        return str.__str__(value)  # a str subclass (an enum member) becomes its plain text
    for kind in (bool, int, float):  # subclasses (IntEnum) become the built-in
        if isinstance(value, kind):
            return kind(value)
    if isinstance(value, (list, tuple)):
        items = [plain_data(v, f"{name}[{i}]", tensors=tensors) for i, v in enumerate(value)]
        return tuple(items) if isinstance(value, tuple) else items
    if isinstance(value, Mapping):
        return {plain_data(k, f"a key of {name}"): plain_data(v, f"{name}[{k!r}]", tensors=tensors)
                for k, v in value.items()}
    hint = " (give a path as a str)" if isinstance(value, os.PathLike) else ""
    raise TypeError(
        f"{name} must be plain data (None, bool, int, float, str, NumPy numbers or lists/tuples/dicts of them"
        f"{', tensors' if tensors else ''}) so that it can be stored in checkpoints, got {type(value).__name__}{hint}"
    )


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    """Everything needed to rebuild a model and apply it to a case.

    Attributes:
        name: registry name.
        kwargs: factory keyword arguments (``build_model(name, **kwargs)`` rebuilds the architecture).
        dim: ``"2.5D"`` (slices; tri-planar inference), ``"3D"`` (volumes; sliding window) or ``"2D"``.
        input_layout: the input tensor layout of ``dim`` (:data:`INPUT_LAYOUTS`, e.g. ``"B T C H W"``); left
            out (``None``) it is filled in from ``dim``, and another layout than ``dim``'s is refused.
        in_channels: modalities per timepoint ``C`` (an int ``>= 1``), or ``None`` when unknown.
        num_timepoints: timepoints ``T`` the model was built for (``>= 2``); ``None`` when it takes any ``T >= 2``.
        modalities: channel order of the training data (a sequence of names such as ``("flair", "t2")``, not a
            single string); ``None`` until trained. With both set, ``in_channels`` must be ``len(modalities)``.
        crop_size: training crop (2.5D) or patch edge (3D) in voxels, an int ``>= 1`` or one per spatial axis
            (``(h, w)`` or ``(d, h, w)``); ``None`` until trained.
        preprocessing: how a case is prepared before inference (e.g. ``{"normalization": "zscore"}``).
        inference: inference and post-processing settings (the fields of
            :class:`~longiseg.workflows.config.InferenceConfig`); ``{}`` until trained.
        tuning: how the post-processing was chosen (``longiseg tune``: objective, score, validation cases);
            ``None`` when untuned.
        version: longiseg version that wrote the spec.
        format_version: :data:`SPEC_FORMAT_VERSION`.

    ``kwargs``, ``preprocessing``, ``inference`` and ``tuning`` hold plain data (:func:`plain_data`: NumPy numbers
    and arrays are converted, anything else that a checkpoint could not store is refused with a ``TypeError``).

    Specs are frozen and compare by value (``==``), but hold dicts (``kwargs``, ``inference``...) and so are
    unhashable, like a dict: ``hash(spec)`` raises ``TypeError`` (not a set member or dict key).
    """

    name: str
    kwargs: dict[str, Any] = dataclasses.field(default_factory=dict)
    dim: str = "2.5D"
    input_layout: str | None = None
    in_channels: int | None = None
    num_timepoints: int | None = None
    modalities: tuple[str, ...] | None = None
    crop_size: int | tuple[int, ...] | None = None
    preprocessing: dict[str, Any] = dataclasses.field(default_factory=dict)
    inference: dict[str, Any] = dataclasses.field(default_factory=dict)
    tuning: dict[str, Any] | None = None
    version: str = __version__
    format_version: int = SPEC_FORMAT_VERSION

    __hash__ = None  # type: ignore[assignment]  # unhashable like the dicts it holds (see the class docstring)

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise ValueError(f"ModelSpec.name must be a registry name, got {self.name!r}")
        if self.dim not in INPUT_LAYOUTS:
            raise ValueError(f"ModelSpec.dim must be one of {tuple(INPUT_LAYOUTS)}, got {self.dim!r}")
        if not isinstance(self.kwargs, Mapping):
            raise TypeError(f"ModelSpec.kwargs must be a mapping, got {type(self.kwargs).__name__}")
        object.__setattr__(self, "kwargs", plain_data(dict(self.kwargs), "ModelSpec.kwargs"))
        for key in ("preprocessing", "inference", "tuning"):  # stored in checkpoints: plain data like kwargs
            value = getattr(self, key)
            if value is None and key == "tuning":
                continue
            if not isinstance(value, Mapping):
                raise TypeError(f"ModelSpec.{key} must be a mapping, got {type(value).__name__}")
            object.__setattr__(self, key, plain_data(dict(value), f"ModelSpec.{key}"))
        layout = INPUT_LAYOUTS[self.dim]
        if self.input_layout is None:
            object.__setattr__(self, "input_layout", layout)
        elif self.input_layout != layout:
            raise ValueError(f"ModelSpec.input_layout must be the layout of dim {self.dim!r}, {layout!r} (or left "
                             f"out), got {self.input_layout!r}")
        # model attributes may be NumPy ints: the checks return built-in ints
        if self.in_channels is not None:
            object.__setattr__(self, "in_channels", check_positive_int("ModelSpec.in_channels", self.in_channels))
        if self.num_timepoints is not None:
            object.__setattr__(self, "num_timepoints",
                               check_timepoints("ModelSpec.num_timepoints", self.num_timepoints))
        if isinstance(self.crop_size, (Sequence, np.ndarray)) and not isinstance(self.crop_size, (str, bytes)):
            object.__setattr__(self, "crop_size", check_int_sequence(
                "ModelSpec.crop_size", self.crop_size, length=3 if self.dim == "3D" else 2,
                what=f"voxels per spatial axis of a {self.dim} crop"))
        elif self.crop_size is not None:
            object.__setattr__(self, "crop_size", check_positive_int("ModelSpec.crop_size", self.crop_size))
        if self.modalities is not None:
            if isinstance(self.modalities, (str, bytes)):
                raise TypeError(f"ModelSpec.modalities must be a sequence of channel names such as ('flair', 't2'), "
                                f"not a single string, got {self.modalities!r}")
            if not isinstance(self.modalities, (Sequence, np.ndarray)) or not all(
                    isinstance(m, str) and m for m in self.modalities):
                raise TypeError(f"ModelSpec.modalities must be a sequence of channel names such as ('flair', 't2'), "
                                f"got {self.modalities!r}")  # [None, 3] became ('None', '3')
            object.__setattr__(self, "modalities", tuple(str.__str__(m) for m in self.modalities))
            if self.in_channels is not None and self.in_channels != len(self.modalities):
                raise ValueError(f"ModelSpec.in_channels ({self.in_channels}) must be the number of modalities per "
                                 f"timepoint, len(modalities) = {len(self.modalities)} {list(self.modalities)}")

    @property
    def trained(self) -> bool:
        """Whether the spec records the data settings of a training run (modalities, crop, inference)."""
        return self.modalities is not None and bool(self.inference)

    def replace(self, **changes: Any) -> ModelSpec:
        """A copy with some fields changed (validated again); a new ``dim`` brings its own ``input_layout``."""
        if "dim" in changes and "input_layout" not in changes:
            changes["input_layout"] = None
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
            TypeError: if ``data`` is not a mapping, or a field is of the wrong type (as :class:`ModelSpec` checks).
            ValueError: for a spec written by a newer longiseg, a ``format_version`` that is not an int ``>= 1``, a
                ``version`` that is not a str, or missing/unknown fields.
        """
        if not isinstance(data, Mapping):
            raise TypeError(f"a model spec must be a mapping, got {type(data).__name__}")
        version = data.get("format_version", SPEC_FORMAT_VERSION)
        if isinstance(version, bool) or not isinstance(version, int) or version < 1:
            raise ValueError(f"the model spec's format_version must be an int >= 1, got {version!r}")
        if version > SPEC_FORMAT_VERSION:
            raise ValueError(f"the model spec has format {version}, newer than this longiseg supports "
                             f"({SPEC_FORMAT_VERSION}); upgrade longiseg")
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise ValueError(f"unknown model spec field(s) {unknown}")
        if "name" not in data:
            raise ValueError("a model spec needs a 'name'")
        if not isinstance(data.get("version", ""), str):
            raise ValueError(f"the model spec's version must be the str of a longiseg version, got "
                             f"{data['version']!r}")
        data = dict(data)
        if data.get("input_layout") == _OLD_DEFAULT_LAYOUT:
            # earlier versions stored this default whatever the dim (ModelSpec(name, dim="3D") had the 2.5D
            # layout): the layout follows from dim, so such a checkpoint loads with its dim's layout
            del data["input_layout"]
        return cls(**data)
