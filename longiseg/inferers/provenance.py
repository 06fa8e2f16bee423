"""What produced a prediction: the record written beside each predicted case, and the check that keeps a case only
when the same model and settings would write it again (``longiseg predict --skip-existing``).

The record (:data:`~longiseg.data.predictions.PREDICTION_RECORD`) holds the model's class, registry name and
kwargs, a digest of its weights, the inferer's class and the settings that change its probabilities, and the
prediction's own output settings; the longiseg version (and the case's patient) are recorded but never compared,
and where it runs and in which batches are not recorded. Inferer settings are recorded as given: ``"amp": true``
says mixed precision was asked for, which takes effect on CUDA only (a CPU prediction runs in float32).
"""

from __future__ import annotations

import hashlib
import inspect
import json
from collections.abc import Callable, Mapping
from typing import Any

import torch
import torch.nn as nn

from longiseg._version import __version__
from longiseg.data.layout import read_prediction_record
from longiseg.data.predictions import PREDICTION_RECORD
from longiseg.networks.wrappers import unwrap_model
from longiseg.spec import ModelSpec, plain_data
from longiseg.utils.io import PathLike
from longiseg.utils.validation import check_instance, check_path

__all__ = ["prediction_record", "check_same_producer", "producer_digest", "qualified_name"]


#: Inferer settings that do not change its probabilities (where it runs, in which batches, progress bars).
_RUN_ONLY = ("device", "batch_size", "progress")
#: Record fields that describe a prediction without deciding whether it may be kept (not compared): the version,
#: and the case's patient (``predict_folder`` adds it; a manifest may regroup the cases without changing a voxel).
_INFORMATION_ONLY = ("longiseg_version", "patient_id")



def qualified_name(obj: object) -> str:
    """``module.QualifiedName`` of a function, or of the class of any other object."""
    named = obj if inspect.isroutine(obj) else type(obj)
    return f"{getattr(named, '__module__', None)}.{getattr(named, '__qualname__', type(obj).__qualname__)}"


def _weights_sha256(model: nn.Module) -> str:
    """sha256 over the state dict of the model inside any wrapper: each entry's name, dtype, shape and bytes, in
    the state dict's order (the same weights give the same digest on any device)."""
    digest = hashlib.sha256()
    for key, value in unwrap_model(model).state_dict().items():
        digest.update(key.encode())
        if isinstance(value, torch.Tensor):
            tensor = value.detach().cpu().contiguous()
            digest.update(f"{tensor.dtype}{tuple(tensor.shape)}".encode())
            digest.update(tensor.reshape(-1).view(torch.uint8).numpy())
        else:  # a module's extra state
            digest.update(repr(value).encode())
    return digest.hexdigest()


def _inferer_settings(inferer: Callable[..., Any]) -> dict[str, Any]:
    """The inferer's class and settings: the arguments of its constructor that it keeps as attributes of the same
    name and that are plain data, except :data:`_RUN_ONLY` (a function inferer: its name alone)."""
    settings: dict[str, Any] = {"class": qualified_name(inferer)}
    names = () if inspect.isroutine(inferer) else inspect.signature(type(inferer)).parameters
    for name in names:
        if name in _RUN_ONLY or not hasattr(inferer, name):
            continue
        try:
            settings[name] = plain_data(getattr(inferer, name), name)
        except TypeError:  # not plain data: its text may hold a memory address, so it is left out
            continue
    return settings


def prediction_record(model: nn.Module, inferer: Callable[..., Any], settings: Mapping[str, object]) -> dict[str, Any]:
    """What produced a prediction, as JSON data.

    Args:
        model: the model (any wrapper is looked through).
        inferer: the inferer that ran it (an object whose constructor arguments it keeps as attributes, or a function).
        settings: the prediction's settings that change its outputs (threshold, post-processing), as plain data.

    Returns:
        ``{"model": {"class", "name", "kwargs", "weights_sha256"}, "inferer": {"class", ...settings},
        "settings": {...}, "longiseg_version": ...}``: the model's registry name and kwargs where ``model.spec``
        gives them, a digest of its weights, the inferer's class and the settings that change its probabilities.

    Raises:
        TypeError: ``model`` is not an ``nn.Module``, ``settings`` not a mapping, a setting not plain data (naming it).
    """
    check_instance("model", model, nn.Module, "an nn.Module")
    check_instance("settings", settings, Mapping, "a mapping of setting names to values")
    inner = unwrap_model(model)
    spec = getattr(inner, "spec", None)
    spec = spec if isinstance(spec, ModelSpec) else None
    return {
        "model": {"class": qualified_name(inner), "name": None if spec is None else spec.name,
                  "kwargs": None if spec is None else plain_data(spec.kwargs, "model.spec.kwargs"),
                  "weights_sha256": _weights_sha256(inner)},
        "inferer": _inferer_settings(inferer),
        "settings": {name: plain_data(value, name) for name, value in settings.items()},
        "longiseg_version": __version__,
    }


def _flat(record: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}} -> {"a.b": 1}`` (empty mappings and other values are leaves)."""
    flat: dict[str, Any] = {}
    for key, value in record.items():
        if isinstance(value, Mapping) and value:
            flat.update(_flat(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def producer_digest(record: Mapping[str, Any]) -> str:
    """A digest of what :func:`check_same_producer` compares in ``record`` (a :func:`prediction_record`, with what
    the caller adds): equal for one model and one set of settings, whichever longiseg version made it. Workers
    sharing a folder put it in their case claims, so that one meets another model's run at the first case both
    want, not only at cases that are finished.
    """
    check_instance("record", record, Mapping, "a mapping (a prediction record)")
    flat = _flat(json.loads(json.dumps(record)))
    kept = {k: v for k, v in sorted(flat.items()) if k.split(".")[0] not in _INFORMATION_ONLY}
    return hashlib.sha256(json.dumps(kept, sort_keys=True).encode()).hexdigest()


def _brief(value: object) -> str:
    """``value`` as JSON text for a message: a digest or a long list cut short; names (a reader's qualified name,
    a class) in full, up to 120 characters, so that the message says which is which."""
    if isinstance(value, str) and len(value) > 16 and all(c in "0123456789abcdef" for c in value):
        value = f"{value[:12]}..."
    text = json.dumps(value)
    limit = 120 if isinstance(value, str) else 40
    return text if len(text) <= limit else f"{text[:limit - 4]}..."


def _version(text: object) -> tuple[int, ...] | None:
    """``"0.3.16"`` (or ``"0.3.16.dev1"``) as ``(0, 3, 16)``; ``None`` for anything else."""
    if not isinstance(text, str):
        return None
    parts = []
    for part in text.split("."):
        if not part.isdigit():
            break
        parts.append(int(part))
    return tuple(parts) or None


def _alias(value: object, since_by_value: Mapping[object, str], recorded_by: object) -> bool:
    """Whether the recorded ``value`` is an alias, recorded by a version (``recorded_by``) from its ``since``."""
    for alias, since in since_by_value.items():
        if value == alias:
            version, first = _version(recorded_by), _version(since)
            return version is not None and first is not None and version >= first
    return False


def check_same_producer(folder: PathLike, case_id: str, record: Mapping[str, Any],
                        aliases: Mapping[str, Mapping[object, str]] | None = None) -> dict[str, Any]:
    """Refuse to keep the complete prediction ``folder`` of ``case_id`` unless its
    :data:`~longiseg.data.predictions.PREDICTION_RECORD` equals ``record`` (the version aside).

    Args:
        folder: the case's prediction folder.
        case_id: the case, for messages.
        record: this run's :func:`prediction_record` (with what the caller adds, e.g. the reader).
        aliases: ``{key: {recorded value: since}}``: a value recorded for the top-level ``key`` by longiseg
            ``since`` or later (the record's ``longiseg_version``) that means the same as ``record``'s, e.g. an
            earlier version's name of the same reader.

    Returns:
        The folder's record as read (what a caller keeping the case may bring up to date).

    Raises:
        FileExistsError: the folder holds no readable record, or one of another model or other settings (naming up
            to three differences); the message says how to replace it.
        TypeError: ``folder`` is not a path or ``record`` not a mapping.
    """
    folder = check_path("folder", folder)
    check_instance("record", record, Mapping, "a mapping (a prediction record)")
    if aliases is not None:
        check_instance("aliases", aliases, Mapping, "a mapping of record keys to {value: since version}")
    stored = read_prediction_record(folder)
    if stored is None:
        raise FileExistsError(
            f"case {case_id!r} was predicted without a readable record of its model and settings ({folder} holds no "
            f"valid {PREDICTION_RECORD}: an earlier version of longiseg or an import wrote it), so it cannot be "
            "kept; pass overwrite=True (--overwrite) to replace it")
    now = _flat(json.loads(json.dumps(record)))  # as stored: tuples become lists
    before = _flat(stored)
    differ = [f"{key} {_brief(before.get(key))} recorded, {_brief(now.get(key))} now"
              for key in [*now, *(k for k in before if k not in now)]
              if key.split(".")[0] not in _INFORMATION_ONLY and before.get(key) != now.get(key)
              and not _alias(before.get(key), (aliases or {}).get(key, {}), stored.get("longiseg_version"))]
    if differ:
        raise FileExistsError(f"case {case_id!r} was predicted by another model or other settings "
                              f"({'; '.join(differ[:3])}{'; ...' if len(differ) > 3 else ''}); pass "
                              "overwrite=True (--overwrite) to replace it")
    return stored
