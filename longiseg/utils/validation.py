"""Input checks shared by the whole library, and the switch for the costly ones.

Each helper raises a ``TypeError`` or ``ValueError`` that names the argument and what was expected, so
public functions can validate their inputs in one line.

Validate once: configurations are checked when they are built and shapes at every public entry point
(cheap: no data is read). Checks that read every value (:func:`check_finite`, :func:`check_binary`) cost a
device-to-host synchronisation on a GPU, so inside a training step they run only in debug mode; the
trainer keeps one cheap check per step (the loss is finite), and data are checked once when loaded and
when inference starts. Debug mode is on inside :func:`debug_checks` or with the environment variable
``LONGISEG_DEBUG_CHECKS=1``.
"""

from __future__ import annotations

import contextlib
import contextvars
import inspect
import math
import os
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

__all__ = [
    "DEBUG_CHECKS_ENV",
    "env_flag",
    "debug_checks",
    "debug_checks_enabled",
    "check_tensor",
    "as_numpy",
    "autocast_reconciles",
    "check_matches_parameters",
    "check_instance",
    "check_callable",
    "check_sequence",
    "check_ndim",
    "check_finite",
    "check_binary",
    "check_probabilities",
    "check_same_shape",
    "check_shape",
    "check_array",
    "check_affine",
    "check_path",
    "check_bool",
    "check_positive_int",
    "check_positive_float",
    "check_nonnegative_float",
    "check_finite_float",
    "check_keywords",
    "keyword_parameters",
    "check_probability",
    "check_score",
    "check_seed",
    "MAX_SEED",
    "check_timepoints",
    "check_spatial_dims",
    "check_int_sequence",
    "check_int_or_sequence",
    "check_widths",
    "checks_sizes",
]

ArrayLike = torch.Tensor | np.ndarray

#: Environment variable that turns debug mode on (``1``, ``true``, ``yes`` or ``on``).
DEBUG_CHECKS_ENV = "LONGISEG_DEBUG_CHECKS"
_DEBUG_OVERRIDE: contextvars.ContextVar[bool | None] = contextvars.ContextVar("longiseg_debug_checks", default=None)


_TRUE_WORDS, _FALSE_WORDS = ("1", "true", "yes", "on"), ("", "0", "false", "no", "off")


def env_flag(name: str) -> bool:
    """The on/off environment variable ``name``: ``1``, ``true``, ``yes`` or ``on`` (any case) is on; unset, empty,
    ``0``, ``false``, ``no`` or ``off`` is off. The one reader of longiseg's switches such as ``LONGISEG_DEBUG``.

    Raises:
        ValueError: any other value, naming the variable (``2`` or ``enabled`` silently meant off).
    """
    check_instance("name", name, str, "a str")
    value = os.environ.get(name, "")
    word = value.strip().lower()
    if word in _TRUE_WORDS:
        return True
    if word in _FALSE_WORDS:
        return False
    raise ValueError(f"the environment variable {name} must be one of {'/'.join(_TRUE_WORDS)} (on) or "
                     f"{'/'.join(_FALSE_WORDS[1:])} (off), got {value!r}")


def debug_checks_enabled() -> bool:
    """Whether the value checks inside a training step run (NaN/inf model inputs and logits, binary targets).

    ``True`` inside ``with debug_checks():``, else as :func:`env_flag` reads ``LONGISEG_DEBUG_CHECKS``.

    Raises:
        ValueError: ``LONGISEG_DEBUG_CHECKS`` is neither on nor off (see :func:`env_flag`).
    """
    override = _DEBUG_OVERRIDE.get()
    if override is not None:
        return override
    return env_flag(DEBUG_CHECKS_ENV)


@contextlib.contextmanager
def debug_checks(enabled: bool = True) -> Iterator[None]:
    """Turn the value checks of the hot paths on (or off) for the ``with`` block, in this thread/context.

    Example:
        >>> with debug_checks():                  # doctest: +SKIP
        ...     trainer.train_step(batch)         # model inputs, logits and targets checked too
    """
    token = _DEBUG_OVERRIDE.set(bool(enabled))
    try:
        yield
    finally:
        _DEBUG_OVERRIDE.reset(token)


def checks_sizes() -> bool:
    """Whether shape checks compare tensor sizes: always, except while ``torch.jit.trace`` records a call.

    While it records, the entries of ``x.shape`` are traced 0-dim tensors, so that the graph follows the sizes of
    the input it is run on; comparing them in Python would freeze the example's sizes into the graph (with a
    ``TracerWarning``), and the recorded graph runs no Python check anyway. The checks of sizes are skipped
    there (those of types, ranks, dtypes and devices still run); the eager call runs them all. ``torch.compile``
    and ``torch.export`` give sizes as ints or ``torch.SymInt``, which the checks compare (recorded as guards).
    """
    return not torch.jit.is_tracing()


def check_tensor(name: str, x: object) -> torch.Tensor:
    """Return ``x`` if it is a ``torch.Tensor``, else raise ``TypeError`` naming ``name``."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    return x


def as_numpy(name: str, x: object) -> np.ndarray:
    """``x`` as a NumPy array: a tensor is detached and copied to the CPU, an array is returned as it is.

    Floating dtypes NumPy lacks (bfloat16, float8: the outputs of a model run under autocast) become float32,
    which holds each of their values exactly. ``name`` names the argument in the ``TypeError`` raised for
    anything else (lists included: a nested list is no shape-checked array).
    """
    if isinstance(x, torch.Tensor):
        if x.layout != torch.strided or x.is_meta:
            what = "a meta tensor (it holds no data)" if x.is_meta else f"a {x.layout} tensor"
            raise TypeError(f"{name} must be a dense tensor with data, got {what}")
        t = x.detach().cpu()
        if t.is_floating_point() and t.dtype not in (torch.float16, torch.float32, torch.float64):
            t = t.float()
        return t.numpy()
    if isinstance(x, np.ndarray):
        return x
    raise TypeError(f"{name} must be a numpy array or torch.Tensor, got {type(x).__name__}")


def autocast_reconciles(x: torch.Tensor, dtype: torch.dtype) -> bool:
    """Whether autocast, on for ``x``'s device, runs ``x`` with parameters of another ``dtype``: it casts float32,
    float16 and bfloat16 per operation, but never float64 (neither an input nor a parameter)."""
    return torch.float64 not in (x.dtype, dtype) and torch.is_autocast_enabled(x.device.type)


def check_matches_parameters(name: str, x: torch.Tensor, *, dtype: torch.dtype | None = None,
                             device: torch.device | None = None, module: str = "model") -> None:
    """Refuse a module input ``x`` on another device than the module's parameters, or of another dtype.

    Args:
        name: the argument, in the message (``"x"``, ``"hidden_states"``, ...).
        x: the input tensor.
        dtype: the parameters' dtype; ``x`` must have it unless autocast is on for ``x``'s device and neither
            is float64 (:func:`autocast_reconciles`). ``None``: any dtype.
        device: the parameters' device. ``None``: any device.
        module: what the module is, in the message (``"model"``, ``"block"``).

    Raises:
        ValueError: ``x`` is on another device (naming both).
        TypeError: ``x`` has another dtype that autocast does not reconcile.
    """
    if device is not None and x.device != device:
        raise ValueError(f"{name} is on device {x.device} but the {module}'s parameters are on device {device}: "
                         f"move the input ({name}.to('{device}')) or the {module} ({module}.to('{x.device}'))")
    if dtype is not None and x.dtype != dtype and not autocast_reconciles(x, dtype):
        double = torch.float64 in (x.dtype, dtype)
        raise TypeError(
            f"{name} has dtype {x.dtype} but the {module}'s parameters are {dtype}: convert the input "
            f"({name}.to({dtype})) or the {module} ({module}.to({x.dtype}))"
            + (" (autocast never casts float64)" if double and torch.is_autocast_enabled(x.device.type)
               else "" if double else ", or run under torch.autocast")
        )


def check_instance(name: str, x: object, types: type | tuple[type, ...], what: str) -> Any:
    """Return ``x`` if it is an instance of ``types``, else raise ``TypeError`` naming ``name``.

    Args:
        name: argument name used in the message.
        x: the value to check.
        types: accepted type(s).
        what: what was expected, for the message (e.g. ``"an nn.Module"``).
    """
    if not isinstance(x, types):
        raise TypeError(f"{name} must be {what}, got {type(x).__name__}")
    return x


def check_callable(name: str, fn: object, what: str = "callable", *, optional: bool = False) -> Any:
    """Return ``fn`` if it is callable (or ``None`` when ``optional``), else raise ``TypeError`` naming ``name``.

    Args:
        name: argument name used in the message.
        fn: the value to check.
        what: what was expected, for the message (e.g. ``"a callable (trainer, row)"``).
        optional: accept ``None`` too.
    """
    if not (callable(fn) or (optional and fn is None)):
        raise TypeError(f"{name} must be {what}{' or None' if optional else ''}, got {type(fn).__name__}")
    return fn


def check_sequence(name: str, values: object, types: type | tuple[type, ...], what: str) -> Sequence[Any]:
    """Return ``values`` if it is a sequence (list, tuple, ...; not a string) of instances of ``types``.

    Args:
        name: argument name used in the messages (an entry is named ``name[i]``).
        values: the value to check.
        types: accepted type(s) of the entries.
        what: what an entry must be, for the messages (e.g. ``"an nn.Module"``).

    Raises:
        TypeError: ``values`` is not a sequence, or an entry is not an instance of ``types``.
    """
    if isinstance(values, (str, bytes)) or not isinstance(values, Sequence):
        raise TypeError(f"{name} must be a sequence (list or tuple) whose entries are each {what}, "
                        f"got {type(values).__name__}")
    for i, v in enumerate(values):
        check_instance(f"{name}[{i}]", v, types, what)
    return values


def check_ndim(name: str, x: ArrayLike, ndim: int | Sequence[int], layout: str = "") -> None:
    """Raise ``ValueError`` unless ``x.ndim`` is ``ndim`` (or one of them).

    Args:
        name: argument name used in the message.
        x: tensor or array.
        ndim: accepted rank(s): an int ``>= 0`` (NumPy's too) or a sequence of them.
        layout: human-readable expected layout such as ``"(B, T, C, H, W)"``.

    Raises:
        TypeError: ``x`` is no tensor or array, or ``ndim`` is neither an int nor a sequence of ints.
        ValueError: ``x`` has another rank, or ``ndim`` holds a negative rank.
    """
    _check_array_like(name, x)
    allowed = check_int_or_sequence("ndim", ndim, minimum=0, what="accepted ranks")
    if x.ndim not in allowed:
        want = " or ".join(str(a) for a in allowed)
        lay = f" {layout}" if layout else ""
        raise ValueError(f"{name} must have {want} dims{lay}, got shape {tuple(x.shape)}")


def _check_array_like(name: str, x: object) -> None:
    """Refuse what is neither a tensor nor a NumPy array (the checks below read its shape and values)."""
    if not isinstance(x, (torch.Tensor, np.ndarray)):
        raise TypeError(f"{name} must be a torch.Tensor or a numpy array, got {type(x).__name__}")


def check_finite(name: str, x: ArrayLike) -> None:
    """Raise ``ValueError`` if ``x`` holds NaN or infinite values (``TypeError`` if it is no tensor or array)."""
    _check_array_like(name, x)
    if isinstance(x, torch.Tensor):
        if x.is_floating_point() or x.is_complex():
            if not bool(torch.isfinite(x).all()):
                raise ValueError(f"{name} contains NaN or infinite values")
    else:
        arr = np.asarray(x)
        if np.issubdtype(arr.dtype, np.floating) and not np.isfinite(arr).all():
            raise ValueError(f"{name} contains NaN or infinite values")


def check_binary(name: str, x: ArrayLike) -> None:
    """Raise ``ValueError`` unless every value of ``x`` is 0 or 1 (bool, int or float dtypes; ``TypeError`` if it
    is no tensor or array, or of a complex or non-numeric dtype)."""
    _check_array_like(name, x)
    if isinstance(x, torch.Tensor):
        dtype, numeric = x.dtype, not x.is_complex()
    else:
        dtype = np.asarray(x).dtype
        numeric = any(np.issubdtype(dtype, kind) for kind in (np.bool_, np.integer, np.floating))
    if not numeric:  # a complex mask failed inside torch.unique ("not implemented for 'ComplexFloat'")
        raise TypeError(f"{name} must be a binary mask of bool, int or float dtype, got dtype {dtype}")
    if isinstance(x, torch.Tensor):
        if x.dtype == torch.bool:
            return
        ok = bool(((x == 0) | (x == 1)).all())
        bad = None if ok else torch.unique(x[(x != 0) & (x != 1)])[:5].tolist()
    else:
        arr = np.asarray(x)
        if arr.dtype == bool:
            return
        ok = bool(np.isin(arr, (0, 1)).all())
        bad = None if ok else np.unique(arr[(arr != 0) & (arr != 1)])[:5].tolist()
    if not ok:
        raise ValueError(f"{name} must be a binary mask with values in {{0, 1}}, found values such as {bad}")


def check_probabilities(name: str, x: ArrayLike) -> None:
    """Refuse ``x`` (a tensor or array of any shape) unless it holds probabilities: a real dtype (floating; an
    integer or bool map of 0 and 1 is a hard one), finite values in ``[0, 1]``. The one check of a probability map.

    Raises:
        TypeError: ``x`` is no tensor or array, or of a complex or non-numeric dtype.
        ValueError: NaN or infinite values, or values outside ``[0, 1]`` (naming their range: logits?).
    """
    _check_array_like(name, x)
    if isinstance(x, torch.Tensor):
        real = not x.is_complex()
    else:
        real = any(np.issubdtype(x.dtype, kind) for kind in (np.bool_, np.integer, np.floating))
    if not real:  # a complex map: casts drop the imaginary part
        raise TypeError(f"{name} must hold real probabilities, got dtype {x.dtype}")
    check_finite(name, x)
    if x.numel() if isinstance(x, torch.Tensor) else x.size:
        low, high = float(x.min()), float(x.max())
        if low < 0 or high > 1:
            raise ValueError(f"{name} must hold probabilities in [0, 1], got values in [{low:.4g}, {high:.4g}]; "
                             "apply a sigmoid to logits first")


def check_same_shape(name_a: str, a: ArrayLike, name_b: str, b: ArrayLike) -> None:
    """Raise ``ValueError`` unless ``a`` and ``b`` have the same shape (not checked while ``torch.jit.trace``
    records, see :func:`checks_sizes`)."""
    _check_array_like(name_a, a)
    _check_array_like(name_b, b)
    if checks_sizes() and tuple(a.shape) != tuple(b.shape):
        raise ValueError(
            f"{name_a} and {name_b} must have the same shape, got {tuple(a.shape)} and {tuple(b.shape)}"
        )


def check_shape(name: str, x: object, layout: str, *, floating: bool = False, **sizes: int) -> torch.Tensor:
    """Return ``x`` if it is a tensor with the dims of ``layout`` and the given ``sizes``; raise otherwise.

    Example: ``check_shape("x", x, "(B, T, H, W, C)", C=64)`` accepts any 5-D tensor whose last dim is 64.

    Args:
        name: argument name used in the messages.
        x: the value to check.
        layout: the dims, such as ``"(B, T, H, W, C)"``; a leading ``*`` stands for any number (zero or more)
            of leading dims, as in ``"(*, H, W, C)"``.
        floating: also require a floating-point dtype (the input of a layer with float weights; checked from
            the dtype alone, no value is read).
        **sizes: the sizes some dims must have, by their name in ``layout`` (``C=64``). They are not compared
            while ``torch.jit.trace`` records (:func:`checks_sizes`); the type and the number of dims always are.

    Raises:
        TypeError: ``x`` is not a ``torch.Tensor``, or not floating-point with ``floating=True``.
        ValueError: ``x`` has another number of dims or another size where ``sizes`` names one.
    """
    dims = [d.strip() for d in layout.strip().strip("()").split(",")]
    unknown = sorted(set(sizes) - set(dims))
    if unknown:  # a mistake of the caller, not of the user: name it plainly
        raise ValueError(f"check_shape: sizes {unknown} are not dims of layout {layout!r}")
    check_tensor(name, x)
    starred = dims[0] == "*"
    rank_ok = x.ndim >= len(dims) - 1 if starred else x.ndim == len(dims)
    size_ok = rank_ok and (
        not checks_sizes()
        or all(x.shape[dims.index(k) - len(dims)] == v for k, v in sizes.items())  # indexed from the end
    )
    if not size_ok:
        given = ", ".join(f"{k}={v}" for k, v in sizes.items())
        with_sizes = f" with {given}" if given else ""
        wanted = f"at least {len(dims) - 1}" if starred else f"{len(dims)}"
        rank = "" if rank_ok else f" ({x.ndim} dims, not {wanted})"
        raise ValueError(f"{name} must be {layout}{with_sizes}, got shape {tuple(x.shape)}{rank}")
    if floating and not x.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got dtype {x.dtype}")
    return x


def check_array(name: str, value: object, layout: str, *, positive: bool = False, bools: bool = False
                ) -> np.ndarray:
    """Return ``np.asarray(value)`` if it holds finite real numbers with the dims of ``layout``; raise otherwise.

    Example: ``check_array("affine", affine, "(4, 4)")``; ``check_array("array", a, "(D, H, W)")`` accepts any
    3-D array (a dim named by a number must have that size, one named by a letter any size).

    Args:
        name: argument name used in the messages.
        value: an array, or a (nested) list or tuple of numbers.
        layout: the dims, such as ``"(4, 4)"``, ``"(3,)"`` or ``"(D, H, W)"``.
        positive: also require every entry ``> 0``.
        bools: accept a boolean array (a mask) too; by default ``True`` is not a number.

    Raises:
        TypeError: ``value`` does not hold real numbers (``None``, strings, objects; booleans unless ``bools``).
        ValueError: another number of dims or size, a ragged nesting, NaN or infinite entries, or (with
            ``positive``) an entry ``<= 0``.
    """
    try:
        arr = np.asarray(value)
    except ValueError as err:  # a ragged nesting of lists
        raise ValueError(f"{name} must be an array {layout}, got a ragged sequence {value!r}") from err
    mixed = (not bools and not isinstance(value, (np.ndarray, torch.Tensor)) and arr.dtype.kind in "iuf"
             and any(isinstance(v, (bool, np.bool_)) for v in np.asarray(value, dtype=object).ravel()))  # (True, 2)
    if mixed or arr.dtype.kind not in ("biuf" if bools else "iuf"):
        raise TypeError(f"{name} must be an array {layout} of {'booleans or ' if bools else ''}real numbers, "
                        f"got {type(value).__name__} {value!r}"[:300])
    dims = [d.strip() for d in layout.strip().strip("()").split(",") if d.strip()]
    if arr.ndim != len(dims) or any(d.isdigit() and n != int(d) for n, d in zip(arr.shape, dims)):
        raise ValueError(f"{name} must be an array {layout}, got shape {arr.shape}")
    check_finite(name, arr)
    if positive and not bool((arr > 0).all()):
        raise ValueError(f"{name} must hold positive values, got {arr.tolist()}"[:300])
    return arr


def check_affine(name: str, affine: object) -> np.ndarray:
    """Return a voxel-to-world matrix as a float64 ``(4, 4)`` array: finite real numbers whose ``3x3`` part is
    non-singular (the voxel axes map to three world axes). The one check of every ``affine`` argument.

    Args:
        name: argument name used in the messages.
        affine: a ``(4, 4)`` array, tensor or nested sequence of numbers.

    Raises:
        TypeError: ``affine`` does not hold real numbers (``None``, strings, booleans).
        ValueError: another shape, NaN or infinite entries, or a singular ``3x3`` part.
    """
    if isinstance(affine, torch.Tensor):
        affine = affine.detach().cpu().numpy()
    aff = np.asarray(check_array(name, affine, "(4, 4)"), dtype=np.float64)
    if abs(np.linalg.det(aff[:3, :3])) < 1e-12:
        raise ValueError(f"{name} must be a non-singular (4, 4) matrix (voxel axes mapping to three world axes), "
                         f"got {aff.tolist()}")
    return aff


#: What the int checks accept: Python and numpy ints, and the symbolic sizes of ``torch.export`` (``torch.SymInt``).
_INTS = (int, np.integer, torch.SymInt)


def _as_int(value: int | np.integer | torch.SymInt) -> int:
    """``int(value)``; a ``torch.SymInt`` as is (``int()`` would fix an exported dynamic size to its example)."""
    return value if isinstance(value, torch.SymInt) else int(value)


def _check_int(name: str, value: object, minimum: int) -> int:
    """``value`` as an ``int`` if it is one (NumPy's too, not bool; a ``torch.SymInt`` as is) ``>= minimum``, which
    the caller has checked."""
    if isinstance(value, bool) or not isinstance(value, _INTS):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return _as_int(value)


def _check_minimum(minimum: object, lowest: int | None) -> int:
    """The ``minimum`` a caller passed to an int check, as an ``int``: an int ``>= lowest`` (any int for ``None``).

    A float, NaN or bool there is a mistake of the caller (``value < nan`` is always false: every value passed).
    """
    if isinstance(minimum, bool) or not isinstance(minimum, (int, np.integer)):
        raise TypeError(f"minimum must be an int, got {type(minimum).__name__} {minimum!r}")
    if lowest is not None and minimum < lowest:
        raise ValueError(f"minimum must be an int >= {lowest}, got {minimum}")
    return int(minimum)


def check_positive_int(name: str, value: object, minimum: int = 1) -> int:
    """Return ``value`` as an ``int`` if it is an int (NumPy's too, not bool) ``>= minimum``; raise
    ``TypeError``/``ValueError`` otherwise.

    A symbolic size (``torch.SymInt``, from ``torch.export`` with a dynamic dim) is checked and returned as is.

    Args:
        name: argument name used in the messages.
        value: the value to check.
        minimum: the smallest accepted value, an int ``>= 0`` (1: positive, 0: non-negative).

    Raises:
        TypeError: ``value`` is not an int, or ``minimum`` is not an int (a mistake of the caller).
        ValueError: ``value < minimum``, or ``minimum < 0`` (a mistake of the caller).
    """
    return _check_int(name, value, _check_minimum(minimum, 0))


#: The largest seed accepted anywhere: torch's generators take seeds below ``2**64``, and samplers add the epoch.
MAX_SEED = 2**63 - 1


def check_seed(name: str, value: object, maximum: int = MAX_SEED) -> int:
    """Return ``value`` as an ``int`` if it is a seed: an int (NumPy's too, not bool) in ``[0, maximum]``.

    Raises:
        TypeError: ``value`` is not an int.
        ValueError: ``value`` lies outside ``[0, maximum]``; without this check a seed of ``2**70`` failed deep
            inside torch ("Overflow when unpacking long long") at the first batch.
    """
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be an int, got {type(value).__name__} {value!r}")
    if not 0 <= value <= maximum:
        raise ValueError(f"{name} must be an int in [0, {maximum}], got {value}")
    return int(value)


def check_bool(name: str, value: object) -> bool:
    """Return ``value`` as a ``bool`` if it is one (``numpy.bool_`` too), else raise ``TypeError`` naming ``name``.

    Strings such as ``"false"`` are refused: they would count as ``True``. Configuration files convert them
    before (:func:`~longiseg.utils.config.config_from_dict`).
    """
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be a bool, got {type(value).__name__} {value!r}")
    return bool(value)


def check_positive_float(name: str, value: object) -> float:
    """Return ``value`` as a ``float`` if it is a finite number ``> 0``; raise ``TypeError``/``ValueError`` otherwise."""
    return _finite_number(name, value, lower="> 0")


def check_nonnegative_float(name: str, value: object) -> float:
    """Return ``value`` as a ``float`` if it is a finite number ``>= 0``; raise ``TypeError``/``ValueError`` otherwise."""
    return _finite_number(name, value, lower=">= 0")


def check_finite_float(name: str, value: object) -> float:
    """Return ``value`` as a ``float`` if it is a finite number (any sign); raise ``TypeError``/``ValueError`` otherwise."""
    return _finite_number(name, value, lower=None)


def _finite_number(name: str, value: object, *, lower: str | None) -> float:
    """``value`` as a float if it is a finite number, above 0 (``lower="> 0"``), at least 0 (``">= 0"``) or of
    any sign (``None``); NaN is refused."""
    bound = f" {lower}" if lower else ""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise TypeError(f"{name} must be a {f'number {lower}' if lower else 'finite number'}, got "
                        f"{type(value).__name__} {value!r}")
    v = float(value)
    above = {None: True, "> 0": 0.0 < v, ">= 0": 0.0 <= v}[lower]
    if not (above and math.isfinite(v)):
        raise ValueError(f"{name} must be a finite number{bound}, got {v}")
    return v


def keyword_parameters(fn: Callable[..., object]) -> list[str]:
    """The names ``fn`` (a class: its ``__init__``) takes as keyword arguments, in signature order."""
    params = inspect.signature(fn).parameters.values()
    return [p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]


def check_keywords(owner: str, kwargs: Mapping[str, object], valid: Iterable[str]) -> None:
    """Refuse keyword arguments that ``owner`` does not take, naming them and every valid one.

    Args:
        owner: what takes the arguments, for the message (e.g. ``"SegFormer"``).
        kwargs: the keyword arguments given.
        valid: the valid names (e.g. :func:`keyword_parameters` of a class).

    Raises:
        TypeError: ``kwargs`` holds a name outside ``valid``.
    """
    known = set(valid)
    unknown = sorted(set(kwargs) - known)
    if unknown:
        raise TypeError(f"unknown {owner} argument(s) {unknown}; valid arguments: {sorted(known)}")


def check_probability(name: str, value: float, *, include_one: bool = True) -> float:
    """Return ``value`` as a ``float`` if it lies in ``[0, 1]`` (``[0, 1)`` with ``include_one=False``).

    Raises:
        TypeError: ``value`` is not a real number (``None``, strings, booleans).
        ValueError: ``value`` lies outside the interval (NaN included).
    """
    if isinstance(value, bool) or not isinstance(value, (int, float, np.floating, np.integer)):
        raise TypeError(f"{name} must be a float, got {type(value).__name__}")
    v = float(value)
    ok = 0.0 <= v <= 1.0 if include_one else 0.0 <= v < 1.0
    if not ok:
        rng = "[0, 1]" if include_one else "[0, 1)"
        raise ValueError(f"{name} must lie in {rng}, got {v}")
    return v


def check_score(name: str, value: object) -> float:
    """Return ``value`` as a ``float`` if it is a score in ``[0, 1]`` or NaN (an undefined score): the value a
    metric returns where it is undefined (``empty_value``, ``zero_division``).

    Raises:
        TypeError: ``value`` is not a real number (``None``, strings, booleans).
        ValueError: ``value`` lies outside ``[0, 1]``.
    """
    if isinstance(value, (float, np.floating)) and math.isnan(value):
        return float("nan")
    return check_probability(name, value)


def check_timepoints(name: str, num_timepoints: int, minimum: int = 2) -> int:
    """Validate a number of timepoints ``T`` (at least ``minimum``, default 2) and return it as an ``int``.

    A symbolic size (``torch.SymInt``, from ``torch.export`` with a dynamic ``T``) is checked and returned as is.

    Raises:
        TypeError: ``num_timepoints`` is not an int (NumPy's are; bool is not), or ``minimum`` is not an int (a
            mistake of the caller).
        ValueError: ``num_timepoints < minimum``, or ``minimum < 1`` (a mistake of the caller).
    """
    minimum = _check_minimum(minimum, 1)
    if isinstance(num_timepoints, bool) or not isinstance(num_timepoints, _INTS):
        raise TypeError(f"{name} must be an int number of timepoints, got {type(num_timepoints).__name__}")
    if num_timepoints < minimum:
        why = " (a baseline and at least one follow-up)" if minimum == 2 else ""
        raise ValueError(f"{name} must be >= {minimum}{why}, got {num_timepoints}")
    return _as_int(num_timepoints)


def check_spatial_dims(name: str, value: object) -> int:
    """Return ``value`` if it is 2 (slices, 2D/2.5D) or 3 (volumes), else raise ``TypeError``/``ValueError``."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value not in (2, 3):
        raise ValueError(f"{name} must be 2 or 3, got {value!r}")
    return int(value)


def check_int_sequence(
    name: str, values: Sequence[int], *, minimum: int = 1, length: int | None = None, what: str = "one per stage"
) -> tuple[int, ...]:
    """Return ``values`` (a list, tuple or 1-D array of ints ``>= minimum``) as a tuple of ``int``.

    Args:
        name: argument name used in the messages.
        values: the sequence.
        minimum: smallest allowed entry (an int of any sign).
        length: required number of entries, or ``None`` for any.
        what: what the entries are, for the messages (e.g. ``"channels per stage"``).

    Raises:
        TypeError: ``values`` is not a sequence (e.g. a single int) or an entry is not an int; ``minimum`` is not
            an int (a mistake of the caller).
        ValueError: an entry is below ``minimum`` or the length differs from ``length``.
    """
    minimum = _check_minimum(minimum, None)
    if isinstance(values, np.ndarray) and values.ndim == 1:
        values = values.tolist()
    if isinstance(values, (str, bytes)) or not isinstance(values, Sequence):
        raise TypeError(f"{name} must be a sequence of ints ({what}), got {type(values).__name__} {values!r}")
    out = tuple(_check_int(f"{name}[{i}]", v, minimum) for i, v in enumerate(values))
    if length is not None and len(out) != length:
        raise ValueError(f"{name} must have {length} entries ({what}), got {len(out)}: {out}")
    return out


def check_int_or_sequence(
    name: str, value: int | Sequence[int], length: int | None = None, *, minimum: int = 1,
    what: str = "one per spatial dim"
) -> tuple[int, ...]:
    """Return ``value`` as a tuple of ``int``: one int (NumPy's too, not bool) for every entry, repeated ``length``
    times (once for ``None``), or a list, tuple or 1-D array of them (``length`` entries where given). The one
    reader of settings such as a crop, window or kernel size given once for every axis or once per axis.

    Args:
        name: argument name used in the messages.
        value: the int or the sequence.
        length: the number of entries (an int is repeated this often), or ``None`` for a sequence of any length.
        minimum: smallest allowed entry.
        what: what the entries are, for the messages (e.g. ``"a window size per axis"``).

    Raises:
        TypeError: ``value`` is neither an int nor a sequence of ints (a float, a string, a bool).
        ValueError: an entry below ``minimum``, or a sequence of another length than ``length``.
    """
    if length is not None:
        length = check_positive_int("length", length, minimum=0)
    if isinstance(value, (Sequence, np.ndarray)) and not isinstance(value, (str, bytes)):
        return check_int_sequence(name, value, minimum=minimum, length=length, what=what)
    if isinstance(value, bool) or not isinstance(value, _INTS):
        raise TypeError(f"{name} must be an int or a sequence of ints ({what}), got {type(value).__name__} {value!r}")
    return (_check_int(name, value, _check_minimum(minimum, None)),) * (1 if length is None else length)


def check_widths(name: str, widths: Sequence[int], minimum_len: int = 2) -> tuple[int, ...]:
    """Return ``widths`` as a tuple of positive ints (channels per network stage), at least ``minimum_len`` long."""
    out = check_int_sequence(name, widths, what="channels per stage")
    if len(out) < minimum_len:
        raise ValueError(f"{name} must list at least {minimum_len} stage widths (one per resolution level), "
                         f"got {len(out)}: {out}")
    return out


def beyond(value: float, limit: float) -> str:
    """``value`` for a message that says it exceeds ``limit``: 3 significant digits, more where 3 would print
    the limit itself (``beyond(1.00002e-4, 1e-4)`` is ``"0.000100002"``, not ``"0.0001"``)."""
    for digits in (3, 6, 9, 12, 17):
        text = f"{value:.{digits}g}"
        if float(text) != limit:
            break
    return text


def check_path(name: str, value: object) -> Path:
    """Return ``value`` as a :class:`~pathlib.Path` if it is a non-empty ``str`` or ``os.PathLike``.

    ``None``, numbers and other objects raise ``TypeError`` naming ``name``; the empty string raises ``ValueError``
    (``Path("")`` is the working directory, which a writer would replace).
    """
    if not isinstance(value, (str, os.PathLike)):
        raise TypeError(f"{name} must be a path (str or os.PathLike), got {type(value).__name__} {value!r}")
    if isinstance(value, str) and not value:
        raise ValueError(f"{name} must be a non-empty path, got ''")
    return Path(value)
