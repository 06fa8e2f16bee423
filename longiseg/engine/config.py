"""Configuration dataclasses for training and the helpers that load, save and override them.

Every configuration in longiseg is a dataclass deriving from :class:`ConfigBase`. The helpers in this
module are generic, so model, data and trainer configs (and a top-level config nesting them) share one
implementation:

* :func:`config_from_dict` builds a dataclass from a plain mapping, converting values to the annotated
  field types and raising :class:`ConfigError` for a key that does not exist (naming the key, the closest
  valid key and all valid keys).
* :func:`load_config` / :func:`save_config` read and write ``.yaml``/``.yml`` or ``.json`` files
  (written atomically).
* :func:`apply_overrides` applies dotted ``key=value`` strings as given on a command line, e.g.
  ``["lr=3e-4", "grad_clip_norm=null"]`` or ``["trainer.max_epochs=10"]`` on a nested config.

Example:
    >>> cfg = TrainerConfig(max_epochs=10)
    >>> cfg = apply_overrides(cfg, ["lr=3e-4", "amp=none"])
    >>> cfg.lr
    0.0003
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import types
import typing
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, Literal, TypeVar

import yaml

from longiseg.utils.io import atomic_write

__all__ = [
    "ConfigError",
    "ConfigBase",
    "TrainerConfig",
    "AMP_CHOICES",
    "config_from_dict",
    "config_to_dict",
    "load_config",
    "read_config_file",
    "save_config",
    "apply_overrides",
    "parse_override",
]

C = TypeVar("C")

AMP_CHOICES = ("auto", "bf16", "fp16", "none")
_YAML_SUFFIXES = (".yaml", ".yml")
_JSON_SUFFIXES = (".json",)


class ConfigError(ValueError):
    """A configuration key or value is invalid (unknown key, wrong type, out-of-range value)."""


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
    if dataclasses.is_dataclass(tp) and isinstance(tp, type):
        if isinstance(value, tp):
            return value
        if isinstance(value, Mapping):
            return config_from_dict(tp, value, _prefix=f"{key}.")
        raise ConfigError(f"config key {key!r}: expected a mapping for {tp.__name__}, got {value!r}")
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
        raise ConfigError(f"config key {key!r}: expected a string, got {value!r}")
    if origin in (tuple, list):
        if isinstance(value, str):
            value = yaml.safe_load(value if value.strip().startswith("[") else f"[{value}]")
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


def config_from_dict(cls: type[C], data: Mapping[str, Any], *, _prefix: str = "") -> C:
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


class _UniqueKeyLoader(yaml.SafeLoader):
    """YAML's safe loader, refusing a key given twice in one mapping (PyYAML keeps the last silently)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
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
        ConfigError: for an unsupported suffix, malformed YAML/JSON, a key given twice or a file whose top
            level is not a mapping.
    """
    path = Path(path)
    kind = _suffix_kind(path)
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
    cfg = config_from_dict(cls, read_config_file(path))
    return apply_overrides(cfg, overrides)


def save_config(config: Any, path: str | Path) -> Path:
    """Write a config dataclass to ``.yaml``/``.yml`` or ``.json`` (atomically).

    Raises:
        ConfigError: for an unsupported suffix.
    """
    path = Path(path)
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
    if not isinstance(text, str) or "=" not in text:
        raise ConfigError(f"override {text!r} must look like key=value (e.g. lr=1e-4 or trainer.max_epochs=10)")
    key, raw = text.split("=", 1)
    parts = key.strip().split(".")
    if not all(parts):
        raise ConfigError(f"override {text!r}: empty key component in {key!r}")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return parts, value


def apply_overrides(config: C, overrides: Iterable[str]) -> C:
    """Return a copy of ``config`` with dotted ``key=value`` overrides applied (nested dataclasses too).

    Values are converted to the annotated field type (``"1e-4"`` becomes a float for a float field,
    ``"null"`` becomes ``None`` for an optional field).

    Raises:
        ConfigError: naming an unknown key (and the valid ones) or a value of the wrong type.
    """
    if isinstance(overrides, str):
        raise TypeError("apply_overrides: overrides must be a sequence of 'key=value' strings, not one string")
    data = config_to_dict(config)
    cls = type(config)
    for text in overrides:
        parts, value = parse_override(text)
        node, node_cls, prefix = data, cls, ""
        for i, part in enumerate(parts):
            if not (dataclasses.is_dataclass(node_cls) and isinstance(node_cls, type)):
                raise ConfigError(f"override {text!r}: {prefix[:-1]!r} is not a nested config section")
            if part not in _field_names(node_cls):
                raise _unknown_key_error(part, node_cls, prefix)
            if i == len(parts) - 1:
                node[part] = value
            else:
                node_cls = _type_hints(node_cls)[part]
                node = node[part]
                prefix += part + "."
                if not isinstance(node, dict):
                    raise ConfigError(f"override {text!r}: {prefix[:-1]!r} is not a nested config section")
    return config_from_dict(cls, data)


class ConfigBase:
    """Mixin for config dataclasses: ``from_dict``, ``to_dict``, ``from_file``, ``save``, ``with_overrides``."""

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]):  # noqa: ANN206
        """Build from a mapping (see :func:`config_from_dict`)."""
        return config_from_dict(cls, data)

    @classmethod
    def from_file(cls, path: str | Path, overrides: Iterable[str] = ()):  # noqa: ANN206
        """Load from YAML/JSON and apply ``overrides`` (see :func:`load_config`)."""
        return load_config(cls, path, overrides)

    def to_dict(self) -> dict[str, Any]:
        """Plain dict (see :func:`config_to_dict`)."""
        return config_to_dict(self)

    def save(self, path: str | Path) -> Path:
        """Write to YAML/JSON atomically (see :func:`save_config`)."""
        return save_config(self, path)

    def with_overrides(self, overrides: Iterable[str]):  # noqa: ANN201
        """Copy with dotted ``key=value`` overrides applied (see :func:`apply_overrides`)."""
        return apply_overrides(self, overrides)


# ----------------------------------------------------------------------------------------------------
# Trainer configuration
# ----------------------------------------------------------------------------------------------------


@dataclasses.dataclass
class TrainerConfig(ConfigBase):
    """Hyper-parameters of :class:`longiseg.engine.Trainer` (defaults follow the SegMaST paper).

    Attributes:
        max_epochs: number of epochs (the cosine schedule ends after the last one).
        batch_size: batch size per process, used only when the trainer builds the DataLoader itself.
        steps_per_epoch: optimizer steps per epoch; ``None`` uses ``len(train_loader)``; when set, each
            epoch stops after this many batches (needed for loaders without ``len``).
        lr: peak learning rate of AdamW.
        min_lr: learning rate reached at the end of the cosine decay.
        weight_decay: AdamW weight decay (not applied to norms, biases and ``no_weight_decay`` params).
        betas: AdamW betas.
        eps: AdamW epsilon.
        warmup_epochs: epochs of linear warm-up (per-step) before the cosine decay.
        grad_clip_norm: max global L2 norm of the gradients; ``None`` disables clipping.
        amp: mixed precision on CUDA: ``"auto"`` (bf16 if supported, else fp16), ``"bf16"``, ``"fp16"``
            (with a GradScaler) or ``"none"``. AMP is never used on CPU.
        seed: base seed; the trainer reseeds python/numpy/torch at each epoch from ``(seed, epoch, rank)``.
        deterministic: request deterministic kernels (``torch.use_deterministic_algorithms``, no cuDNN
            benchmarking).
        monitor: metric used for ``best.pt`` and early stopping; validation metrics are prefixed ``val_``
            (``validate_fn`` returning ``{"dice": ...}`` gives ``val_dice``), training ones ``train_``.
        monitor_mode: ``"max"`` or ``"min"``.
        patience: validations without improvement before stopping; ``None`` disables early stopping.
        min_delta: minimum change that counts as an improvement.
        val_every: validate every this many epochs.
        output_dir: folder for ``last.pt``, ``best.pt``, ``metrics.csv``, ``config.yaml`` and TensorBoard.
        num_workers: DataLoader workers, used only when the trainer builds the DataLoader itself.
        progress_bar: show a tqdm progress bar (main process only).
        tensorboard: also log to TensorBoard when ``torch.utils.tensorboard`` can be imported.
        log_every_n_steps: refresh interval of the progress-bar loss.
        ddp_find_unused_parameters: passed to ``DistributedDataParallel``.
        device: ``"auto"`` (CUDA if available, the local rank's GPU under DDP), or e.g. ``"cpu"``, ``"cuda:1"``.
    """

    max_epochs: int = 500
    batch_size: int = 32
    steps_per_epoch: int | None = None
    lr: float = 1e-4
    min_lr: float = 1e-6
    weight_decay: float = 0.05
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    warmup_epochs: int = 40
    grad_clip_norm: float | None = 1.0
    amp: str = "auto"
    seed: int = 0
    deterministic: bool = True
    monitor: str = "val_dice"
    monitor_mode: str = "max"
    patience: int | None = 50
    min_delta: float = 0.0
    val_every: int = 1
    output_dir: str = "runs/train"
    num_workers: int = 0
    progress_bar: bool = True
    tensorboard: bool = True
    log_every_n_steps: int = 10
    ddp_find_unused_parameters: bool = False
    device: str = "auto"

    def __post_init__(self) -> None:
        def need(cond: bool, msg: str) -> None:
            if not cond:
                raise ConfigError(f"TrainerConfig: {msg}")

        need(self.max_epochs >= 1, f"max_epochs must be >= 1, got {self.max_epochs}")
        need(self.batch_size >= 1, f"batch_size must be >= 1, got {self.batch_size}")
        need(self.steps_per_epoch is None or self.steps_per_epoch >= 1,
             f"steps_per_epoch must be >= 1 or None, got {self.steps_per_epoch}")
        need(self.lr > 0, f"lr must be > 0, got {self.lr}")
        need(0 <= self.min_lr <= self.lr, f"min_lr must be in [0, lr={self.lr}], got {self.min_lr}")
        need(self.weight_decay >= 0, f"weight_decay must be >= 0, got {self.weight_decay}")
        need(len(self.betas) == 2 and all(0 <= b < 1 for b in self.betas),
             f"betas must be two values in [0, 1), got {self.betas}")
        need(self.eps > 0, f"eps must be > 0, got {self.eps}")
        need(self.warmup_epochs >= 0, f"warmup_epochs must be >= 0, got {self.warmup_epochs}")
        need(self.grad_clip_norm is None or self.grad_clip_norm > 0,
             f"grad_clip_norm must be > 0 or None, got {self.grad_clip_norm}")
        need(self.amp in AMP_CHOICES, f"amp must be one of {AMP_CHOICES}, got {self.amp!r}")
        need(self.monitor_mode in ("max", "min"), f"monitor_mode must be 'max' or 'min', got {self.monitor_mode!r}")
        need(bool(self.monitor), "monitor must be a non-empty metric name")
        need(self.patience is None or self.patience >= 1, f"patience must be >= 1 or None, got {self.patience}")
        need(self.min_delta >= 0, f"min_delta must be >= 0, got {self.min_delta}")
        need(self.val_every >= 1, f"val_every must be >= 1, got {self.val_every}")
        need(self.num_workers >= 0, f"num_workers must be >= 0, got {self.num_workers}")
        need(self.log_every_n_steps >= 1, f"log_every_n_steps must be >= 1, got {self.log_every_n_steps}")
        need(bool(self.output_dir), "output_dir must be a non-empty path")
        self.betas = tuple(float(b) for b in self.betas)  # type: ignore[assignment]
