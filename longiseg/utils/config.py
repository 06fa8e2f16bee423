"""The one configuration mechanism of longiseg: dataclasses deriving :class:`ConfigBase`, built from
mappings, files and command-line overrides with type conversion and clear errors.

Every configuration class (trainer, experiment, model, demo, demo cohort, evaluation protocol) derives
from :class:`ConfigBase`, so all of them load, save, validate and override the same way:

* :func:`config_from_dict` builds a dataclass from a plain mapping, converting values to the annotated
  field types and raising :class:`ConfigError` for a key that does not exist (naming the key, the closest
  valid key and all valid keys).
* :func:`load_config` / :func:`save_config` read and write ``.yaml``/``.yml`` or ``.json`` files
  (written atomically).
* :func:`apply_overrides` applies dotted ``key=value`` strings as given on a command line, e.g.
  ``["lr=3e-4", "grad_clip_norm=null"]`` or ``["trainer.max_epochs=10"]`` on a nested config.

Example:
    >>> @dataclasses.dataclass
    ... class Schedule(ConfigBase):
    ...     lr: float = 1e-4
    ...     betas: tuple[float, float] = (0.9, 0.999)
    >>> Schedule().with_overrides(["lr=3e-4", "betas=[0.8, 0.9]"])
    Schedule(lr=0.0003, betas=(0.8, 0.9))
"""

from __future__ import annotations

import dataclasses
import datetime
import difflib
import json
import re
import types
import typing
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, TypeVar

import numpy as np
import yaml

from longiseg.utils.io import atomic_write
from longiseg.utils.validation import MAX_SEED, check_path

__all__ = [
    "ConfigError",
    "ConfigBase",
    "require",
    "require_seed",
    "config_from_dict",
    "config_to_dict",
    "load_config",
    "read_config_file",
    "save_config",
    "apply_overrides",
    "parse_override",
]

if TYPE_CHECKING:  # typing.Self is Python >= 3.11
    from typing_extensions import Self

C = TypeVar("C")

_YAML_SUFFIXES = (".yaml", ".yml")
_JSON_SUFFIXES = (".json",)


class ConfigError(ValueError):
    """A configuration key or value is invalid (unknown key, wrong type, out-of-range value)."""


def require(condition: bool, owner: str, message: str) -> None:
    """Raise :class:`ConfigError` ``"{owner}: {message}"`` unless ``condition`` (a configuration's value checks)."""
    if not condition:
        raise ConfigError(f"{owner}: {message}")


def require_seed(value: int, owner: str, key: str) -> None:
    """Raise :class:`ConfigError` unless the (already coerced) int ``value`` is a seed in ``[0, MAX_SEED]``.

    ``key`` names the field as the user wrote it (``"seed (data.seed)"``); the limit is the validators' one
    (:func:`~longiseg.utils.validation.check_seed`), so every configuration refuses the same seeds.
    """
    require(0 <= value <= MAX_SEED, owner, f"{key} must be an int in [0, {MAX_SEED}], got {value}")


# ----------------------------------------------------------------------------------------------------
# Generic dataclass <-> dict conversion with type coercion
# ----------------------------------------------------------------------------------------------------


def _type_hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _field_names(cls: type) -> list[str]:
    return [f.name for f in dataclasses.fields(cls) if f.init]


def _unknown_key_error(key: str, cls: type, prefix: str) -> ConfigError:
    valid = _field_names(cls)
    close = difflib.get_close_matches(key, valid, n=1, cutoff=0.5)
    # a key of a section given without it ("lr" for "trainer.lr")
    hints = _type_hints(cls)
    nested = [f"{name}.{key}" for name in valid
              if dataclasses.is_dataclass(hints.get(name)) and key in _field_names(hints[name])]
    if nested:
        close = nested
    hint = f" Did you mean {prefix + close[0]!r}?" if close else ""
    return ConfigError(
        f"Unknown config key {prefix + key!r} for {cls.__name__}.{hint} "
        f"Valid keys: {', '.join(prefix + v for v in valid)}."
    )


_TRUE = {"true", "yes", "on", "1"}
_FALSE = {"false", "no", "off", "0"}


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Convert ``value`` to the annotated type ``tp`` or raise :class:`ConfigError` naming ``key``."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None or (isinstance(value, str) and value.lower() in ("none", "null")):
            if type(None) in args:
                return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, key)
            except ConfigError as err:
                errors.append(str(err))
        raise ConfigError(f"config key {key!r}: cannot interpret {value!r} as {_type_name(tp)}")
    if origin is Literal:
        if value in args:
            return value
        raise ConfigError(f"config key {key!r}: expected one of {list(args)}, got {value!r}")
    if _is_section(tp):
        if isinstance(value, tp):
            return value
        if isinstance(value, Mapping):
            return _from_dict(tp, value, f"{key}.")
        raise ConfigError(f"config key {key!r}: expected a mapping for {tp.__name__}, got {value!r}")
    if isinstance(value, np.generic) and not isinstance(value, (np.str_, np.bytes_)):
        value = value.item()  # a numpy scalar is read as the Python number it holds
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, int) and value in (0, 1):
            return bool(value)
        if isinstance(value, str) and value.lower() in _TRUE | _FALSE:
            return value.lower() in _TRUE
        raise ConfigError(f"config key {key!r}: expected a bool, got {value!r}")
    if tp is int:
        if isinstance(value, bool):
            raise ConfigError(f"config key {key!r}: expected an int, got bool {value!r}")
        if isinstance(value, int):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str):
            try:
                return int(value)
            except ValueError:
                pass
        raise ConfigError(f"config key {key!r}: expected an int, got {value!r}")
    if tp is float:
        if isinstance(value, bool):
            raise ConfigError(f"config key {key!r}: expected a float, got bool {value!r}")
        if isinstance(value, (int, float)):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
        raise ConfigError(f"config key {key!r}: expected a float, got {value!r}")
    if tp is str:
        if isinstance(value, str):
            return value
        if isinstance(value, Path):
            return str(value)
        if isinstance(value, (datetime.date, int)) and not isinstance(value, bool):
            return value.isoformat() if isinstance(value, datetime.date) else str(value)  # YAML read "2024-01-01"
        if isinstance(value, bool):  # YAML 1.1 reads unquoted yes/no/on/off/true/false as booleans
            raise ConfigError(f"config key {key!r}: expected a string, got the boolean {value!r} (YAML reads unquoted "
                              "yes/no/on/off/true/false as booleans: quote the value, e.g. 'none')")
        raise ConfigError(f"config key {key!r}: expected a string, got {value!r}")
    if origin in (tuple, list):
        if isinstance(value, np.ndarray) and value.ndim == 1:
            value = value.tolist()  # a window as an array, as the datasets and inferers take it
        if isinstance(value, str):
            try:
                value = yaml.load(value if value.strip().startswith("[") else f"[{value}]",  # noqa: S506
                                  Loader=_ConfigLoader)
            except yaml.YAMLError as err:
                raise ConfigError(f"config key {key!r}: {value!r} is not a list such as [a, b] "
                                  f"({' '.join(str(err).split())[:120]})") from None
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"config key {key!r}: expected a sequence, got {value!r}")
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(value) != len(args):
                raise ConfigError(f"config key {key!r}: expected {len(args)} values, got {len(value)}")
            return tuple(_coerce(v, a, key) for v, a in zip(value, args))
        item = args[0] if args else Any
        items = [_coerce(v, item, key) for v in value]
        return tuple(items) if origin is tuple else items
    if origin is dict or tp is dict:
        if not isinstance(value, Mapping):
            raise ConfigError(f"config key {key!r}: expected a mapping, got {value!r}")
        return dict(value)
    return value


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def config_from_dict(cls: type[C], data: Mapping[str, Any]) -> C:
    """Build the dataclass ``cls`` from a mapping, converting values to the annotated field types.

    Args:
        cls: a dataclass type (e.g. :class:`TrainerConfig`).
        data: field values; missing fields keep their defaults. Nested dataclass fields take mappings.

    Returns:
        The dataclass instance (its ``__post_init__`` validation runs).

    Raises:
        ConfigError: naming an unknown key (with the valid keys) or a value of the wrong type.
        TypeError: if ``cls`` is not a dataclass or ``data`` is not a mapping.
    """
    if not (dataclasses.is_dataclass(cls) and isinstance(cls, type)):
        raise TypeError(f"config_from_dict: cls must be a dataclass type, got {cls!r}")
    if not isinstance(data, Mapping):
        raise TypeError(f"config_from_dict: data must be a mapping, got {type(data).__name__}")
    return _from_dict(cls, data, "")


def _from_dict(cls: type[C], data: Mapping[str, Any], _prefix: str) -> C:
    """:func:`config_from_dict` of checked arguments; ``_prefix``: the dotted key of a nested config
    (``"model."``), which messages name."""
    hints = _type_hints(cls)
    names = set(_field_names(cls))
    kwargs: dict[str, Any] = {}
    for key, value in data.items():
        if key not in names:
            raise _unknown_key_error(str(key), cls, _prefix)
        kwargs[key] = _coerce(value, hints[key], _prefix + key)
    try:
        return cls(**kwargs)
    except ConfigError:
        raise
    except (TypeError, ValueError) as err:
        raise ConfigError(f"{cls.__name__}: {err}") from err


def _plain(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value) if f.init}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, Path):
        return str(value)
    return value


def config_to_dict(config: Any) -> dict[str, Any]:
    """Plain ``dict`` of a config dataclass (tuples become lists, nested dataclasses dicts).

    Raises:
        TypeError: if ``config`` is not a dataclass instance.
    """
    if not dataclasses.is_dataclass(config) or isinstance(config, type):
        raise TypeError(f"config_to_dict: expected a dataclass instance, got {type(config).__name__}")
    return _plain(config)


def _suffix_kind(path: Path) -> str:
    suffix = path.suffix.lower()
    if suffix in _YAML_SUFFIXES:
        return "yaml"
    if suffix in _JSON_SUFFIXES:
        return "json"
    raise ConfigError(f"config file {str(path)!r}: unsupported suffix {suffix!r}; use .yaml, .yml or .json")


class _DuplicateKey(Exception):
    pass


class _ConfigLoader(yaml.SafeLoader):
    """YAML's safe loader that reads ``1e-4`` as a float, as YAML 1.2 and JSON do: PyYAML follows YAML 1.1, whose
    floats need a dot (``1.0e-4``), and read ``1e-4`` as text. Typed config fields converted that text, but
    ``model.kwargs`` (any mapping, passed to a model's factory as it is) kept it: ``drop_path_rate: 1e-2`` was
    refused by the factories that check their arguments' types."""


_ConfigLoader.add_implicit_resolver(  # a class of its own: yaml.SafeLoader's resolvers are left as they are
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"),
)


class _UniqueKeyLoader(_ConfigLoader):
    """:class:`_ConfigLoader`, refusing a key given twice in one mapping (PyYAML keeps the last silently)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":  # `<<: *defaults`: merged keys may be given again
                continue
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                line = key_node.start_mark.line + 1
                raise _DuplicateKey(f"key {key!r} is given twice (second time on line {line}); keep one")
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def _unique_json_object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    keys = [k for k, _ in pairs]
    dup = next((k for i, k in enumerate(keys) if k in keys[:i]), None)
    if dup is not None:
        raise _DuplicateKey(f"key {dup!r} is given twice; keep one")
    return dict(pairs)


def read_config_file(path: str | Path) -> dict[str, Any]:
    """Read a YAML or JSON config file into a ``dict`` (an empty file gives ``{}``).

    Raises:
        FileNotFoundError: if ``path`` does not exist.
        IsADirectoryError: if ``path`` is a folder.
        ConfigError: for an unsupported suffix, malformed YAML/JSON, a key given twice or a file whose top
            level is not a mapping.
    """
    path = check_path("path", path)
    kind = _suffix_kind(path)
    if path.is_dir():
        raise IsADirectoryError(f"config file {path} is a folder, not a YAML or JSON file")
    if not path.is_file():
        raise FileNotFoundError(f"config file not found: {path}")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise ConfigError(f"config file {str(path)!r} is not UTF-8 text ({err.reason})") from None
    try:
        if kind == "yaml":
            data = yaml.load(text, Loader=_UniqueKeyLoader)  # noqa: S506 - a SafeLoader subclass
        else:
            data = json.loads(text, object_pairs_hook=_unique_json_object) if text.strip() else None
    except yaml.YAMLError as err:
        raise ConfigError(f"config file {str(path)!r} is not valid YAML: {' '.join(str(err).split())}") from None
    except json.JSONDecodeError as err:
        raise ConfigError(f"config file {str(path)!r} is not valid JSON: {err}") from None
    except _DuplicateKey as err:
        raise ConfigError(f"config file {str(path)!r}: {err}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {str(path)!r}: top level must be a mapping, got {type(data).__name__}")
    return data


def load_config(cls: type[C], path: str | Path, overrides: Iterable[str] = ()) -> C:
    """Load a ``.yaml``/``.yml``/``.json`` file into the dataclass ``cls``, then apply ``overrides``.

    Args:
        cls: the dataclass type.
        path: config file.
        overrides: dotted ``key=value`` strings (see :func:`apply_overrides`).

    Raises:
        FileNotFoundError: if the file does not exist.
        ConfigError: unknown keys, wrong types or an unsupported suffix.
    """
    if isinstance(overrides, str):
        raise TypeError("load_config: overrides must be a sequence of 'key=value' strings, not one string")
    # applied to the file's values before the config is built and checked: an override replaces a value the file
    # holds wrongly (an empty trainer.output_dir given with --output)
    return config_from_dict(cls, _override_dict(cls, _empty_sections(cls, read_config_file(path)), overrides))


def _empty_sections(cls: type, data: dict[str, Any]) -> dict[str, Any]:
    """A file's ``data`` (a config of ``cls``) with sections left empty, which YAML reads as ``null`` (``data:``
    with every key commented out), as empty mappings: the sections' defaults. Only a file's: ``trainer=None``
    given in code or as an override stays an error, not a silent reset of the section."""
    hints = _type_hints(cls) if _is_section(cls) else {}
    out = dict(data)
    for key, value in data.items():
        tp = hints.get(key)
        if tp is not None and _is_section(tp) and (value is None or isinstance(value, dict)):
            out[key] = _empty_sections(tp, value or {})
    return out


def save_config(config: Any, path: str | Path) -> Path:
    """Write a config dataclass to ``.yaml``/``.yml`` or ``.json`` (atomically).

    Raises:
        ConfigError: for an unsupported suffix.
    """
    path = check_path("path", path)
    kind = _suffix_kind(path)
    data = config_to_dict(config)
    if kind == "yaml":
        return atomic_write(path, lambda fh: yaml.safe_dump(data, fh, sort_keys=False))
    return atomic_write(path, lambda fh: json.dump(data, fh, indent=2))


def parse_override(text: str) -> tuple[list[str], Any]:
    """Split ``"a.b=value"`` into ``(["a", "b"], value)``; the value is parsed as YAML (numbers, bools,
    ``null``, lists such as ``[0.9, 0.99]``), anything else stays a string.

    Raises:
        ConfigError: if ``text`` has no ``=`` or an empty key.
    """
    parts, raw = _split_override(text)
    return parts, _parse_value(raw)


def _split_override(text: str) -> tuple[list[str], str]:
    """``"a.b=value"`` as ``(["a", "b"], "value")``, the value's text as given."""
    if not isinstance(text, str) or "=" not in text:
        raise ConfigError(f"override {text!r} must look like key=value (e.g. lr=1e-4 or trainer.max_epochs=10; a "
                          "value with spaces needs quotes on a command line: 'data.crop_size=[32, 48]')")
    key, raw = text.split("=", 1)
    parts = key.strip().split(".")
    if not all(parts):
        raise ConfigError(f"override {text!r}: empty key component in {key!r}")
    return parts, raw


def _parse_value(raw: str) -> Any:
    """An override's value parsed as YAML (numbers, bools, ``null``, lists); text YAML cannot parse stays text."""
    try:
        return yaml.load(raw, Loader=_ConfigLoader) if raw.strip() else ""  # noqa: S506 - a SafeLoader
    except yaml.YAMLError:
        return raw


def _text_value(raw: str, optional: bool) -> Any:
    """The value of an override of a text field: the text as given (``2024-01-01`` is no date, ``yes`` no bool,
    ``runs/exp #2`` holds no comment), unless quoted (YAML then reads the quotes away), or ``null`` (also
    ``none``, ``~``) for an ``optional`` field (``str | None``). A field that must hold text keeps ``none`` as
    the text it is (``loss.strategy=none`` is the strategy "none")."""
    text = raw.strip()
    if len(text) >= 2 and text[0] == text[-1] and text[0] in "'\"":
        return _parse_value(text)
    return None if optional and text.lower() in ("null", "none", "~") else text


def _is_text(tp: Any) -> bool:
    """Whether a field annotated ``tp`` holds text: ``str`` or ``str | None``."""
    if tp is str:
        return True
    args = typing.get_args(tp)
    return typing.get_origin(tp) in (typing.Union, types.UnionType) and str in args and set(args) <= {str, type(None)}


def _is_section(tp: Any) -> bool:
    """Whether ``tp`` is a config section: a dataclass type (not an instance)."""
    return dataclasses.is_dataclass(tp) and isinstance(tp, type)


def _merge_section(cls: type, current: Mapping[str, Any], changes: Mapping[str, Any]) -> dict[str, Any]:
    """``current`` (a config section of ``cls`` as a dict) with ``changes`` applied key by key: a nested section
    given as a mapping is merged the same way (``trainer={"lr": 1e-3}`` changes the learning rate and keeps the
    other trainer settings); anything else, a free-form mapping field included, is replaced."""
    hints = _type_hints(cls)
    merged = dict(current)
    for key, value in changes.items():
        tp = hints.get(key)
        if tp is not None and _is_section(tp) and isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = _merge_section(tp, merged[key], value)
        else:
            merged[key] = value
    return merged


def apply_overrides(config: C, overrides: Iterable[str]) -> C:
    """Return a copy of ``config`` with dotted ``key=value`` overrides applied (nested dataclasses too).

    Values are converted to the annotated field type (``"1e-4"`` becomes a float for a float field,
    ``"null"`` becomes ``None`` for an optional field). Below a free-form mapping field (``dict[str, Any]``,
    e.g. ``model.kwargs``) the dotted rest is a key path into the mapping
    (``model.kwargs.difference_weighting=true``), created where missing. A whole section given as a mapping
    (``trainer={max_epochs: 3}``) changes the keys it names and keeps the others. A text field takes the value's
    text as given (``trainer.output_dir=2024-01-01`` is a folder name, not a date; ``#`` starts no comment),
    unless it is quoted or ``null``.

    Raises:
        ConfigError: naming an unknown key (and the valid ones) or a value of the wrong type.
    """
    if isinstance(overrides, str):
        raise TypeError("apply_overrides: overrides must be a sequence of 'key=value' strings, not one string")
    cls = type(config)
    return config_from_dict(cls, _override_dict(cls, config_to_dict(config), overrides))


def _override_dict(cls: type, data: dict[str, Any], overrides: Iterable[str]) -> dict[str, Any]:
    """``data`` (a config of ``cls`` as a dict: a whole one, or a file's, in which sections and keys may be missing)
    with the dotted ``key=value`` ``overrides`` applied in place (see :func:`apply_overrides`); the values are
    converted and checked when the config is built from it."""
    for text in overrides:
        parts, raw = _split_override(text)
        value = _parse_value(raw)
        node, node_cls, prefix = data, cls, ""
        for i, part in enumerate(parts):
            if isinstance(node, dict) and typing.get_origin(node_cls) in (dict, Mapping):  # free-form mapping
                for key in parts[i:-1]:
                    node = node.setdefault(key, {})
                    if not isinstance(node, dict):
                        raise ConfigError(f"override {text!r}: {key!r} of {prefix[:-1]!r} is not a mapping")
                node[parts[-1]] = value
                break
            if not _is_section(node_cls):
                raise ConfigError(f"override {text!r}: {prefix[:-1]!r} is not a nested config section")
            if part not in _field_names(node_cls):
                raise _unknown_key_error(part, node_cls, prefix)
            if i == len(parts) - 1:
                tp = _type_hints(node_cls)[part]
                if _is_text(tp):
                    value = _text_value(raw, optional=tp is not str)
                node[part] = _merge_section(node_cls, node, {part: value})[part]  # a whole section: its keys given
            else:
                node_cls = _type_hints(node_cls)[part]
                if not (_is_section(node_cls) or typing.get_origin(node_cls) in (dict, Mapping)):
                    raise ConfigError(f"override {text!r}: {prefix + part!r} is not a nested config section")
                if node.get(part) is None:  # a file may leave a section out, or leave it empty ("data:")
                    node[part] = {}
                node = node[part]
                prefix += part + "."
                if not isinstance(node, dict):  # the file's value, not the override, is at fault
                    what = f" for {node_cls.__name__}" if _is_section(node_cls) else ""
                    raise ConfigError(f"config key {prefix[:-1]!r}: expected a mapping{what}, got {node!r} (override "
                                      f"{text!r} sets a key in it)")
    return data


class ConfigBase:
    """Mixin for config dataclasses: ``from_dict``, ``to_dict``, ``from_file``, ``save``, ``with_overrides``."""

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Self:
        """Build from a mapping (see :func:`config_from_dict`)."""
        return config_from_dict(cls, data)

    @classmethod
    def from_file(cls, path: str | Path, overrides: Iterable[str] = ()) -> Self:
        """Load from YAML/JSON and apply ``overrides`` (see :func:`load_config`)."""
        return load_config(cls, path, overrides)

    def to_dict(self) -> dict[str, Any]:
        """Plain dict (see :func:`config_to_dict`)."""
        return config_to_dict(self)

    def coerce_fields(self) -> None:
        """Convert every field to its annotated type in place, as :meth:`from_dict` does (``"false"`` ->
        ``False``, ``"0.1"`` -> ``0.1``), so a config built directly is checked like one read from a file.
        Call it first in ``__post_init__`` (it works on frozen dataclasses too).

        Raises:
            ConfigError: naming the class and the field whose value cannot be read as its type (e.g. ``None``
                for a float, ``2.5`` for an int).
        """
        hints = _type_hints(type(self))
        for f in dataclasses.fields(self):  # type: ignore[arg-type]
            try:
                value = _coerce(getattr(self, f.name), hints[f.name], f.name)
            except ConfigError as err:
                raise ConfigError(f"{type(self).__name__}: {err}") from None
            object.__setattr__(self, f.name, value)

    def save(self, path: str | Path) -> Path:
        """Write to YAML/JSON atomically (see :func:`save_config`)."""
        return save_config(self, path)

    def with_overrides(self, overrides: Iterable[str] = (), **changes: Any) -> Self:
        """Copy with dotted ``key=value`` strings (see :func:`apply_overrides`) and then keyword ``changes``
        applied, both converted and validated as in :meth:`from_dict`, e.g.
        ``cfg.with_overrides(["trainer.lr=3e-4"])`` or ``protocol.with_overrides(iou_threshold=0.3)``. A section
        given as a mapping (``trainer={"lr": 3e-4}``) changes the keys it names and keeps the others; a section
        given as a config object replaces the section.
        """
        config = apply_overrides(self, overrides)
        if not changes:
            return config
        return config_from_dict(type(config), _merge_section(type(config), config_to_dict(config), changes))
