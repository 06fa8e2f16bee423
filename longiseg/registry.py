"""A timm-style model registry.

Models are registered with :func:`register_model` on a factory function that takes ``**kwargs`` and
returns an ``nn.Module``. :func:`build_model` looks a name up and calls the factory; :func:`list_models`
lists names with optional shell-style wildcards.

The registry knows nothing about the models: as in timm, importing the model files fills it, and
``import longiseg`` imports them (:mod:`longiseg.networks.nets`), so the built-in models are always listed.

Example:
    >>> from longiseg import build_model, list_models
    >>> list_models("segmast*")            # doctest: +SKIP
    ['segmast', 'segmast_glioma', 'segmast_ms']
    >>> model = build_model("segmast_ms")  # doctest: +SKIP
"""

from __future__ import annotations

import difflib
import fnmatch
import functools
import inspect
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

import torch.nn as nn

from longiseg.spec import INPUT_LAYOUTS, ModelSpec, plain_data

__all__ = [
    "DEFAULT_RUNTIME_KWARGS",
    "ModelInfo",
    "register_model",
    "build_model",
    "built_spec",
    "list_models",
    "model_info",
    "is_model",
    "unregister_model",
]

F = TypeVar("F", bound=Callable[..., nn.Module])

_VALID_DIMS = ("2.5D", "3D", "2D")
#: What a registry name may hold: letters, digits, ``_``, ``.`` and ``-`` (no wildcard characters, so that
#: ``list_models(name)`` finds it, and no spaces or slashes, so that ``--set model.name=NAME`` can give it).
_NAME_PATTERN = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.\-]*")


#: The run-time arguments of a registration that names none: ``mamba_backend``, the selective-scan backend of
#: SegMaST and of models registered on top of it (a ``functools.partial`` of ``segmast``, a factory calling it).
DEFAULT_RUNTIME_KWARGS: tuple[str, ...] = ("mamba_backend",)


@dataclass(frozen=True)
class ModelInfo:
    """What the registry knows about one model.

    Attributes:
        name: registry name.
        factory: callable ``(**kwargs) -> nn.Module``.
        dim: ``"2.5D"`` (slice model, tri-planar inference), ``"3D"`` (volume model) or ``"2D"``.
        description: one line shown by ``longiseg models``.
        tags: free-form tags (e.g. ``"mamba"``, ``"attention"``, ``"cnn"``, ``"monai"``).
        runtime_kwargs: factory arguments that choose how the model runs on a machine, not what it computes: a
            checkpoint records them but rebuilds the model without them, so that each machine chooses its own.
            :data:`DEFAULT_RUNTIME_KWARGS` (the selective-scan backend of the library's Mamba models, which
            variants built on them take too) unless the registration names others.
    """

    name: str
    factory: Callable[..., nn.Module]
    dim: str = "2.5D"
    description: str = ""
    tags: tuple[str, ...] = field(default_factory=tuple)
    runtime_kwargs: tuple[str, ...] = DEFAULT_RUNTIME_KWARGS

    @property
    def module(self) -> str | None:
        """The module that defines the factory (of the function a ``functools.partial`` wraps): what to import
        to register the model again; ``None`` where the factory names none."""
        module = getattr(_unpartial(self.factory), "__module__", None)
        return module if isinstance(module, str) else None

    @property
    def origin(self) -> str:
        """``module.qualname`` of the factory, for messages."""
        source = _unpartial(self.factory)
        return f"{self.module or '?'}.{getattr(source, '__qualname__', type(source).__name__)}"


def _unpartial(factory: Callable[..., Any]) -> Callable[..., Any]:
    """The function a ``functools.partial`` wraps, else ``factory``."""
    return factory.func if isinstance(factory, functools.partial) else factory


_REGISTRY: dict[str, ModelInfo] = {}


def register_model(
    fn: F | None = None,
    *,
    name: str | None = None,
    dim: str = "2.5D",
    description: str | None = None,
    tags: Iterable[str] = (),
    runtime_kwargs: Iterable[str] | None = None,
) -> Any:
    """Register a model factory; usable as ``@register_model`` or ``@register_model(dim="3D")``.

    Args:
        fn: the factory ``(**kwargs) -> nn.Module``; its ``__name__`` is the registry name unless
            ``name`` is given (required for callables without one, such as a ``functools.partial``).
        name: registry name overriding ``fn.__name__``.
        dim: ``"2.5D"``, ``"3D"`` or ``"2D"``.
        description: one-line description; defaults to the first non-empty line of the factory's docstring
            (``""`` without one).
        tags: free-form tags (a single string is one tag).
        runtime_kwargs: names of factory arguments that choose how the model runs on a machine (a kernel
            backend), not what it computes: checkpoints rebuild the model without them (see
            :attr:`ModelInfo.runtime_kwargs`); ``None``: :data:`DEFAULT_RUNTIME_KWARGS`; ``()``: none (a model
            whose own argument is called ``mamba_backend`` keeps it).

    Returns:
        The factory unchanged (so the decorated function stays callable).

    Raises:
        ValueError: if the name is already registered (the message names the module that registered it; call
            :func:`unregister_model` first to replace it, e.g. when a notebook cell runs again), empty, or holds
            other characters than letters, digits, ``_``, ``.`` and ``-``; or if ``dim`` is unknown.
        TypeError: if ``fn`` is not callable, has no ``__name__`` and no ``name`` is given, or ``description``,
            a tag or a runtime argument name is not a str.
    """
    if dim not in _VALID_DIMS:
        raise ValueError(f"register_model: dim must be one of {_VALID_DIMS}, got {dim!r}")
    if name is not None and not isinstance(name, str):
        raise TypeError(f"register_model: name must be a str, got {type(name).__name__}")
    if name is not None and not name.strip():
        raise ValueError(f"register_model: name must be a non-empty str, got {name!r}")
    if description is not None and not isinstance(description, str):
        raise TypeError(f"register_model: description must be a str, got {type(description).__name__}")
    tags = (tags,) if isinstance(tags, str) else tuple(tags)
    if not all(isinstance(t, str) for t in tags):
        raise TypeError(f"register_model: tags must be strings, got {tags!r}")
    if runtime_kwargs is None:
        runtime_kwargs = DEFAULT_RUNTIME_KWARGS
    elif isinstance(runtime_kwargs, str):
        runtime_kwargs = (runtime_kwargs,)
    elif isinstance(runtime_kwargs, Iterable):
        runtime_kwargs = tuple(runtime_kwargs)
    else:
        raise TypeError(f"register_model: runtime_kwargs must be argument names (a sequence of str) or None, got "
                        f"{type(runtime_kwargs).__name__}")
    if not all(isinstance(k, str) for k in runtime_kwargs):
        raise TypeError(f"register_model: runtime_kwargs must be argument names (strings), got {runtime_kwargs!r}")
    if not all(k for k in runtime_kwargs):
        raise ValueError(f"register_model: runtime_kwargs must be non-empty argument names, got {runtime_kwargs!r}")

    def decorator(f: F) -> F:
        if not callable(f):
            raise TypeError(f"register_model: expected a callable factory, got {type(f).__name__}")
        key = name if name is not None else getattr(f, "__name__", None)
        if not isinstance(key, str):
            raise TypeError(f"register_model: {type(f).__name__} {f!r} has no __name__ to register it under; "
                            "pass name=..., e.g. register_model(factory, name='my_model')")
        if not _NAME_PATTERN.fullmatch(key):
            raise ValueError(f"register_model: model name {key!r} must start with a letter, digit or '_' and "
                             "hold only letters, digits, '_', '.' and '-' (no spaces, slashes or wildcards *?[]); pass name=..., e.g. name='my_model'")
        if key in _REGISTRY:
            raise ValueError(f"register_model: a model named {key!r} is already registered (by "
                             f"{_REGISTRY[key].origin}); pick another name, or call "
                             f"unregister_model({key!r}) first to replace it (e.g. when a notebook cell runs again)")
        doc = description
        if doc is None:  # a partial describes itself by the function it wraps
            lines = (getattr(_unpartial(f), "__doc__", None) or "").strip().splitlines()
            doc = lines[0].strip() if lines else ""
        _REGISTRY[key] = ModelInfo(name=key, factory=f, dim=dim, description=doc, tags=tags,
                                   runtime_kwargs=runtime_kwargs)
        return f

    if fn is not None:
        return decorator(fn)
    return decorator


def unregister_model(name: str) -> None:
    """Remove ``name`` from the registry (mainly for tests and plugins)."""
    if name not in _REGISTRY:
        raise KeyError(_unknown_message(name, how_to_register=False))
    del _REGISTRY[name]


def _unknown_message(name: str, how_to_register: bool = True) -> str:
    close = difflib.get_close_matches(name, list(_REGISTRY), n=3, cutoff=0.4)
    hint = f" Did you mean: {', '.join(close)}?" if close else ""
    if how_to_register:
        hint += (" A model defined in your own module is registered when that module is imported: import it first "
                 "(for the command line, with `longiseg --import MODULE ...`; see docs/tutorials/add-model.md).")
    return f"Unknown model name {name!r}.{hint} Known models: {', '.join(sorted(_REGISTRY))}."


def is_model(name: str) -> bool:
    """Whether ``name`` is a registered model (``False`` for anything but a registered name)."""
    return isinstance(name, str) and name in _REGISTRY


def model_info(name: str) -> ModelInfo:
    """Return the :class:`ModelInfo` of a registered model.

    Raises:
        TypeError: if ``name`` is not a str.
        ValueError: naming the unknown model and the closest known names.
    """
    if not isinstance(name, str):
        raise TypeError(f"model name must be a str, got {type(name).__name__}")
    if name not in _REGISTRY:
        raise ValueError(_unknown_message(name))
    return _REGISTRY[name]


def list_models(pattern: str | Iterable[str] = "", *, dim: str | None = None, tag: str | None = None) -> list[str]:
    """List registered model names, sorted.

    Args:
        pattern: shell-style wildcard(s) such as ``"segmast*"``; empty matches everything.
        dim: keep only models of this dimensionality (``"2.5D"``, ``"3D"``, ``"2D"``).
        tag: keep only models with this tag.

    Returns:
        Sorted list of names.

    Raises:
        TypeError: if ``pattern`` is not a str or an iterable of str.
        ValueError: if ``dim`` is not one of ``"2.5D"``, ``"3D"``, ``"2D"``.
    """
    patterns = [pattern] if isinstance(pattern, str) else list(pattern) if isinstance(pattern, Iterable) else None
    if patterns is None or not all(isinstance(p, str) for p in patterns):
        raise TypeError(f"list_models: pattern must be a str or strings such as 'segmast*', got {pattern!r}")
    if dim is not None and dim not in _VALID_DIMS:
        raise ValueError(f"list_models: dim must be one of {_VALID_DIMS}, got {dim!r}")
    if tag is not None and not isinstance(tag, str):  # -1 or NaN matched nothing without a word
        raise TypeError(f"list_models: tag must be a str or None, got {type(tag).__name__} {tag!r}")
    names = sorted(_REGISTRY)
    if any(patterns):
        names = [n for n in names if any(fnmatch.fnmatchcase(n, p) for p in patterns if p)]
    if dim is not None:
        names = [n for n in names if _REGISTRY[n].dim == dim]
    if tag is not None:
        names = [n for n in names if tag in _REGISTRY[n].tags]
    return names


def _check_arguments(info: ModelInfo, kwargs: dict[str, Any]) -> None:
    """Refuse ``kwargs`` that ``info.factory``'s signature cannot take (nothing to check with ``**kwargs``)."""
    try:
        signature = inspect.signature(info.factory)
    except (TypeError, ValueError):  # builtins and some callables have none
        return
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in signature.parameters.values()):
        return
    try:
        signature.bind(**kwargs)
    except TypeError as err:
        raise TypeError(f"build_model({info.name!r}): {err} (the factory {info.origin} takes "
                        f"{list(signature.parameters)})") from None


def build_model(name: str, /, **kwargs: Any) -> nn.Module:
    """Build a registered model.

    Args:
        name: registry name (see :func:`list_models`); positional, so that a factory may take a ``name`` argument.
        **kwargs: forwarded to the model's factory (e.g. ``in_channels``, ``num_timepoints``) as plain Python data:
            NumPy numbers and arrays are converted to ``int``/``float``/``bool`` and lists first (see
            :func:`~longiseg.spec.plain_data`), so that the arguments stored in the spec load back.

    Returns:
        The model. Every registered model maps images ``(B, T, C, H, W)`` (2.5D) or
        ``(B, T, C, D, H, W)`` (3D) to a :class:`~longiseg.networks.output.LongitudinalOutput`.

    The model carries a :class:`~longiseg.spec.ModelSpec` as ``model.spec`` (name, arguments,
    dimensionality, input layout), which checkpoints store so that :func:`longiseg.load_model` can rebuild it.
    ``spec.in_channels`` and ``spec.num_timepoints`` are the model's own attributes: ``num_timepoints`` is
    ``None`` for a model that takes any ``T`` (or has no such attribute), whatever ``num_timepoints`` was passed.

    Raises:
        ValueError: if ``name`` is unknown (the message names the closest known models).
        TypeError: ``name`` is not a str; keyword arguments the factory does not take or required ones left out
            (naming the model and the factory's arguments), values that are not plain data (a tensor, a class, a
            function: they could not be stored in a checkpoint), or a factory that returns something else than an
            ``nn.Module``.

    An error the factory raises itself propagates unchanged, with a note naming the model (Python >= 3.11).
    """
    info = model_info(name)
    kwargs = {key: plain_data(value, f"build_model argument {key!r}") for key, value in kwargs.items()}
    _check_arguments(info, kwargs)
    try:
        model = info.factory(**kwargs)
    except Exception as err:
        if hasattr(err, "add_note"):  # Python >= 3.11
            err.add_note(f"(raised by the factory {info.origin} of model {name!r}, arguments {kwargs})")
        raise
    if not isinstance(model, nn.Module):
        raise TypeError(f"build_model: the factory {info.origin} of model {name!r} returned "
                        f"{type(model).__name__}, not an nn.Module; a factory returns the network")
    model.spec = built_spec(model, name, kwargs)
    return model


def built_spec(model: nn.Module, name: str, kwargs: Mapping[str, Any]) -> ModelSpec:
    """The spec :func:`build_model` attaches to ``model``, built by the registered model ``name`` with
    ``kwargs``: the registration's ``dim`` and the model's own ``in_channels`` (else ``kwargs``') and
    ``num_timepoints`` (``None`` without such an attribute). Checkpoints compare a stored spec with it.

    Raises:
        ValueError: ``name`` is not registered.
    """
    info = model_info(name)
    return ModelSpec(
        name=name, kwargs=dict(kwargs), dim=info.dim, input_layout=INPUT_LAYOUTS[info.dim],
        in_channels=getattr(model, "in_channels", kwargs.get("in_channels")),
        num_timepoints=getattr(model, "num_timepoints", None),
    )
