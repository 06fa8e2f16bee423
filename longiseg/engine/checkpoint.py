"""Atomic training checkpoints with everything needed for an exact resume.

A checkpoint is a ``dict`` written with :func:`longiseg.utils.io.atomic_torch_save` (a crash during the
save leaves the previous file intact) holding:

=========================  ==========================================================================
key                        content
=========================  ==========================================================================
``format_version``         :data:`CHECKPOINT_FORMAT_VERSION`
``model``                  ``state_dict`` of the unwrapped model (no ``module.`` prefix from DDP)
``model_name``             registry name (or ``None``), used by :func:`build_model_from_checkpoint`
``model_module``           module of the model's registered factory (or ``None``): what to import before loading
``model_kwargs``           keyword arguments given to the registry factory
``spec``                   the model's :class:`~longiseg.spec.ModelSpec` as a dict (how to rebuild and use it)
``optimizer``              optimizer ``state_dict``
``scheduler``              LR scheduler ``state_dict``
``grad_scaler``            ``torch.amp.GradScaler`` ``state_dict`` (or ``None``)
``sampler``                batch sampler ``state_dict`` when the sampler has one (or ``None``)
``loss``                   ``state_dict`` of the loss when it is an ``nn.Module`` with state (or ``None``)
``rng``                    python, numpy, torch and CUDA RNG states (see :func:`capture_rng_state`)
``epoch``                  number of completed epochs
``global_step``            number of completed optimizer steps
``best_metric``            best value of the monitored metric so far (or ``None``)
``early_stopping_counter`` validations since the last improvement
``trainer_config``         the :class:`~longiseg.engine.config.TrainerConfig` as a dict
``history``                list of the per-epoch log rows
``extra``                  free-form dict supplied by the caller
=========================  ==========================================================================

Only tensors and plain Python containers are stored, so checkpoints load with ``weights_only=True``: NumPy
numbers and arrays in the free-form entries (``trainer_config``, ``history``, ``extra``) are converted to built-in
numbers and lists (:func:`~longiseg.spec.plain_data`), and anything else is refused when the file is written.

A model registered in one's own module (see the tutorial docs/tutorials/add-model.md) is rebuilt only where that
module is imported: :func:`load_model` of such a checkpoint in a process that did not import it names the model and
the module to import.

A model rebuilt from a checkpoint (:func:`load_model`, :func:`build_model_from_checkpoint`) leaves out the
arguments its registration names as run-time choices (``runtime_kwargs`` of
:func:`~longiseg.registry.register_model`; SegMaST's selective-scan backend ``mamba_backend``, recorded in
``model_kwargs`` and the spec): every backend computes the same function with the same weights, so the machine
that runs the model picks its own
(``LONGISEG_SCAN_BACKEND`` or ``auto`` by device, see :mod:`longiseg.ssm`). A model trained with mamba-ssm's
``cuda`` kernel thus runs on a CPU-only machine.
"""

from __future__ import annotations

import pickle
import random
import re
import stat
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn as nn

from longiseg.networks.wrappers import unwrap_model
from longiseg.spec import ModelSpec, plain_data
from longiseg.ssm.selective_scan import ENV_VAR as SCAN_BACKEND_ENV_VAR
from longiseg.utils.device import resolve_device
from longiseg.utils.io import atomic_torch_save
from longiseg.utils.logging import get_logger
from longiseg.utils.validation import check_bool, check_instance, check_path, check_positive_int

if TYPE_CHECKING:  # (the functions below import the registry where they read it)
    from longiseg.registry import ModelInfo

__all__ = [
    "CHECKPOINT_FORMAT_VERSION",
    "unwrap_model",
    "capture_rng_state",
    "restore_rng_state",
    "save_checkpoint",
    "model_identity",
    "load_checkpoint",
    "build_model_from_checkpoint",
    "load_model",
    "load_model_weights",
    "update_spec",
    "check_spec_describes",
    "check_writable",
]

logger = get_logger(__name__)

CHECKPOINT_FORMAT_VERSION = 1
_REQUIRED_KEYS = ("format_version", "model", "epoch", "global_step")
#: Entries whose type is checked when a checkpoint is read: key, accepted types, what they should be.
_ENTRY_TYPES = (
    ("format_version", int, "an int"),
    ("model", Mapping, "a state_dict (a mapping of parameter names to tensors)"),
    ("model_name", (str, type(None)), "a registry name or None"),
    ("model_module", (str, type(None)), "a module name or None"),
    ("model_kwargs", Mapping, "a mapping of the model's factory arguments"),
    ("spec", (Mapping, type(None)), "a model spec (a mapping) or None"),
)
#: Key prefixes of the wrappers :func:`unwrap_model` removes (DataParallel/DDP, ``torch.compile``).
_WRAPPER_PREFIXES = ("module.", "_orig_mod.")


def capture_rng_state() -> dict[str, Any]:
    """Snapshot the python, numpy, torch CPU and (when initialised) CUDA RNG states.

    Returns:
        ``{"python": ..., "numpy": {...}, "torch": ByteTensor, "cuda": list[ByteTensor] | None}``; only
        tensors and plain containers, so it survives ``torch.load(weights_only=True)``.
    """
    kind, keys, pos, has_gauss, cached = np.random.get_state(legacy=True)
    cuda = None
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        cuda = torch.cuda.get_rng_state_all()
    return {
        "python": random.getstate(),
        "numpy": {
            "kind": str(kind),
            "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached),
        },
        "torch": torch.get_rng_state(),
        "cuda": cuda,
    }


def restore_rng_state(state: Mapping[str, Any]) -> None:
    """Restore RNG states captured by :func:`capture_rng_state`.

    CUDA states are restored only when CUDA is available and the number of devices matches.

    Raises:
        ValueError: if ``state`` lacks the ``python``, ``numpy`` or ``torch`` entries.
    """
    missing = [k for k in ("python", "numpy", "torch") if k not in state]
    if missing:
        raise ValueError(f"restore_rng_state: state lacks {missing}; expected the output of capture_rng_state()")
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    npst = state["numpy"]
    keys = np.asarray(npst["keys"].cpu().numpy() if isinstance(npst["keys"], torch.Tensor) else npst["keys"],
                      dtype=np.uint32)
    np.random.set_state((npst["kind"], keys, int(npst["pos"]), int(npst["has_gauss"]),
                         float(npst["cached_gaussian"])))
    torch.set_rng_state(state["torch"].cpu())
    cuda = state.get("cuda")
    if cuda is not None and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all([s.cpu() for s in cuda])


def _state_or_none(obj: Any) -> Any:
    if obj is None:
        return None
    fn = getattr(obj, "state_dict", None)
    if not callable(fn):
        return None
    state = fn()
    return state if state else None


def save_checkpoint(
    path: str | Path,
    *,
    model: nn.Module,
    optimizer: torch.optim.Optimizer | None = None,
    scheduler: Any = None,
    grad_scaler: Any = None,
    sampler: Any = None,
    loss_fn: Any = None,
    epoch: int = 0,
    global_step: int = 0,
    best_metric: float | None = None,
    early_stopping_counter: int = 0,
    model_name: str | None = None,
    model_kwargs: Mapping[str, Any] | None = None,
    trainer_config: Mapping[str, Any] | None = None,
    history: list[dict[str, Any]] | None = None,
    extra: Mapping[str, Any] | None = None,
    rng_state: Mapping[str, Any] | None = None,
) -> Path:
    """Write a checkpoint atomically (see the module docstring for the keys).

    Args:
        path: destination file (its folder is created).
        model: the model, possibly wrapped in DDP (its unwrapped ``state_dict`` is saved).
        optimizer: optimizer whose ``state_dict()`` is saved (``None`` is stored as ``None``).
        scheduler: learning-rate scheduler, saved likewise.
        grad_scaler: AMP grad scaler, saved likewise.
        sampler: batch sampler, saved when it has a ``state_dict()``.
        loss_fn: loss, saved when it has a ``state_dict()`` (e.g. its RNG state).
        epoch: completed epochs.
        global_step: completed optimizer steps.
        best_metric: best monitored value so far.
        early_stopping_counter: validations since the last improvement.
        model_name: registry name of the model.
        model_kwargs: factory keyword arguments of the model (plain data; NumPy numbers and arrays are converted).
        trainer_config: trainer configuration as a plain dict.
        history: per-epoch log rows.
        extra: any further picklable plain data.
        rng_state: RNG states to store; defaults to :func:`capture_rng_state` now.

    Returns:
        ``path``.

    Raises:
        TypeError: if ``model`` is not an ``nn.Module``, its ``spec`` is not a
            :class:`~longiseg.spec.ModelSpec`, or ``model_kwargs``, ``trainer_config``, ``history`` or
            ``extra`` hold something else than plain data (and tensors, outside ``model_kwargs``).
        ValueError: for a negative ``epoch``, ``global_step`` or ``early_stopping_counter`` (each must be an int,
            else ``TypeError``, as ``best_metric`` a number or ``None``), a ``model_name`` that is not the name in the
            model's spec, or a spec with fields that :class:`~longiseg.spec.ModelSpec` does not have (a
            subclass with extra fields: :func:`load_model` could not read it back; put such data into
            ``extra``).
    """
    # every recorded number and mapping checked by name (None and "abc" failed with a bare '<' message, inf with
    # an OverflowError, and 1.5 was saved as 1)
    epoch, global_step = check_positive_int("epoch", epoch, 0), check_positive_int("global_step", global_step, 0)
    early_stopping_counter = check_positive_int("early_stopping_counter", early_stopping_counter, 0)
    if best_metric is not None and (isinstance(best_metric, (bool, np.bool_)) or not isinstance(
            best_metric, (int, float, np.integer, np.floating))):
        raise TypeError(f"best_metric must be a number or None, got {type(best_metric).__name__} {best_metric!r}")
    for name, value in (("trainer_config", trainer_config), ("extra", extra), ("rng_state", rng_state)):
        check_instance(name, value, (Mapping, type(None)), "a mapping or None")
    spec = getattr(unwrap_model(model), "spec", None)
    spec_dict = None if spec is None else _storable_spec(spec)
    model_name, model_kwargs = model_identity(model, model_name, model_kwargs, where="save_checkpoint: ")
    if spec is not None:  # a spec changed by hand would make an unloadable file (after hours of training)
        _check_spec_of(unwrap_model(model), spec, "save_checkpoint: model.spec: ")
    payload = {
        "format_version": CHECKPOINT_FORMAT_VERSION,
        "model": unwrap_model(model).state_dict(),
        "model_name": model_name,
        "model_module": _registered_module(model_name),
        "model_kwargs": model_kwargs,
        "spec": spec_dict,
        # states as data that torch.load(weights_only=True) reads back: a NumPy learning rate (AdamW(lr=np.float64))
        # or NumPy RNG state was pickled as a NumPy object, and every default loader refused the file
        "optimizer": _free_form(optimizer.state_dict(), "optimizer") if optimizer is not None else None,
        "scheduler": _free_form(scheduler.state_dict(), "scheduler") if scheduler is not None else None,
        "grad_scaler": _free_form(_state_or_none(grad_scaler), "grad_scaler"),
        "sampler": _free_form(_state_or_none(sampler), "sampler"),
        "loss": _free_form(_state_or_none(loss_fn), "loss_fn") if isinstance(loss_fn, nn.Module) else None,
        "rng": _free_form(dict(rng_state), "rng_state") if rng_state is not None else capture_rng_state(),
        "epoch": int(epoch),
        "global_step": int(global_step),
        "best_metric": None if best_metric is None else float(best_metric),
        "early_stopping_counter": int(early_stopping_counter),
        "trainer_config": _free_form(dict(trainer_config), "trainer_config") if trainer_config is not None else None,
        "history": _free_form(list(history), "history") if history is not None else [],
        "extra": _free_form(dict(extra), "extra") if extra is not None else {},
    }
    return atomic_torch_save(payload, path)


def _free_form(value: Any, key: str) -> Any:
    """A free-form checkpoint entry as data ``torch.load(weights_only=True)`` reads back (tensors kept)."""
    return plain_data(value, f"save_checkpoint {key}", tensors=True)


def _storable_spec(spec: Any) -> dict[str, Any]:
    """``spec.to_dict()`` once it is known to load back as a :class:`ModelSpec` (what :func:`load_model` builds)."""
    if not isinstance(spec, ModelSpec):
        raise TypeError(f"save_checkpoint: model.spec must be a ModelSpec (as build_model attaches), got "
                        f"{type(spec).__name__}")
    data = spec.to_dict()
    try:
        ModelSpec.from_dict(data)
    except ValueError as err:
        raise ValueError(f"save_checkpoint: the model's spec ({type(spec).__name__}) would not load back as a "
                         f"ModelSpec: {err}. Checkpoints store ModelSpec fields only; put other data into "
                         "save_checkpoint(extra=...)") from None
    return data


def _check_spec_of(model: nn.Module, spec: ModelSpec, where: str) -> None:
    """:func:`check_spec_describes` of ``model``'s ``spec`` against what ``build_model`` derives from the model
    (nothing to compare for a name the registry does not hold in this process)."""
    from longiseg.registry import built_spec, is_model

    if is_model(spec.name):
        check_spec_describes(spec, built_spec(model, spec.name, spec.kwargs), where)


def _registration(name: str | None) -> ModelInfo | None:
    """What the registry knows about model ``name`` (``None`` for a name it does not hold)."""
    from longiseg.registry import is_model, model_info

    return model_info(name) if name is not None and is_model(name) else None


def _registered_module(name: str | None) -> str | None:
    """The module that registered model ``name`` (``None`` for a name the registry does not hold)."""
    info = _registration(name)
    return None if info is None else info.module


def _runtime_kwargs(name: str | None) -> tuple[str, ...]:
    """The factory arguments of model ``name`` that choose how it runs, not what it computes (its registration's
    ``runtime_kwargs``; none for a name the registry does not hold)."""
    info = _registration(name)
    return () if info is None else info.runtime_kwargs


def model_identity(model: nn.Module, model_name: str | None = None, model_kwargs: Mapping[str, Any] | None = None,
                   *, where: str = "") -> tuple[str | None, dict[str, Any]]:
    """The registry name and factory arguments a checkpoint of ``model`` records: those of its spec (a model from
    :func:`~longiseg.build_model` describes itself) unless given, the arguments as plain data
    (:func:`~longiseg.spec.plain_data`). The ``Trainer`` asks when it is built, :func:`save_checkpoint` at every
    save.

    Raises:
        TypeError: ``model_name`` is not a str or ``None``, ``model_kwargs`` not a mapping or ``None``, or not plain
            data.
        ValueError: ``model_name`` is not the name in the model's spec, or ``model_kwargs`` contradict its
            arguments (a value that differs, or an argument it was not built with; the arguments its
            registration names as run-time choices aside; ``where`` starts the message). Arguments that agree
            with the spec's are fine, and the spec's are recorded (all of them: the model is the one they build).
    """
    check_instance("model_name", model_name, (str, type(None)), "a registry name or None")
    check_instance("model_kwargs", model_kwargs, (Mapping, type(None)), "a mapping or None")
    kwargs = None if model_kwargs is None else plain_data(dict(model_kwargs), "model_kwargs")
    spec = getattr(unwrap_model(model), "spec", None)
    spec_name = getattr(spec, "name", None)
    if spec_name is not None:  # the model describes itself: name and arguments come from its spec
        if model_name is not None and model_name != spec_name:
            raise ValueError(f"{where}model_name {model_name!r} is not the name in the model's spec, {spec_name!r}; "
                             "leave model_name out (the spec names the model)")
        model_name = spec_name
        runtime = _runtime_kwargs(spec_name)
        built = _comparable(spec.kwargs, runtime)
        given = {} if kwargs is None else _comparable(kwargs, runtime)
        contradicting = sorted(k for k in given if k not in built or given[k] != built[k])
        if contradicting:
            raise ValueError(f"{where}model_kwargs {kwargs} contradict the arguments the model was built with "
                             f"({dict(spec.kwargs)}, its spec's) in {contradicting}: a checkpoint of them would "
                             "rebuild another model; leave model_kwargs out (the spec records the arguments)")
        kwargs = plain_data(dict(spec.kwargs), "model_kwargs")
    return model_name, kwargs if kwargs is not None else {}


def _comparable(value: Any, runtime: tuple[str, ...] = ()) -> Any:
    """Plain factory arguments for comparisons: tuples as lists (as a checkpoint may give them back), and a
    mapping without the ``runtime`` arguments (:func:`_runtime_kwargs` of the model)."""
    if isinstance(value, Mapping):
        return {k: _comparable(v) for k, v in value.items() if k not in runtime}
    if isinstance(value, (list, tuple)):
        return [_comparable(v) for v in value]
    return value


def _map_location(map_location: Any) -> Any:
    """``map_location`` as :func:`torch.load` takes it, checked first: a bad device was reported as a corrupt file."""
    if map_location is None or callable(map_location) or isinstance(map_location, Mapping):
        return map_location
    if isinstance(map_location, (str, torch.device)):  # named, and a CUDA device this machine lacks refused
        return resolve_device(map_location, name="map_location")
    raise TypeError(f"map_location must be a device ('cpu', 'cuda:0', a torch.device), a dict or a callable, as "
                    f"torch.load takes it, got {type(map_location).__name__} {map_location!r}")


def _read(path: Path, map_location: Any, weights_only: bool) -> dict[str, Any]:
    map_location = _map_location(map_location)
    if path.is_dir():
        raise IsADirectoryError(f"checkpoint {path} is a folder, not a checkpoint file (e.g. {path / 'best.pt'})")
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    if path.stat().st_size == 0:
        raise ValueError(f"checkpoint {path} is empty (0 bytes): an interrupted copy? use another checkpoint")
    _check_archive(path)
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=weights_only)
    except pickle.UnpicklingError as err:
        if "Unsupported global" in str(err) or "unsupported GLOBAL" in str(err):
            found = re.search(r"(?:Unsupported global: GLOBAL|unsupported GLOBAL) (\S+)", str(err))
            what = f" ({found.group(1)})" if found else ""
            raise ValueError(
                f"checkpoint {path} holds objects{what} that torch.load(weights_only=True) refuses: it was not "
                "written from plain data by save_checkpoint. If you trust the file, read it with "
                "load_checkpoint(path, weights_only=False) and build the model yourself"
            ) from err
        raise ValueError(f"{path} is not a readable checkpoint (corrupt or not written by torch.save)") from err
    except Exception as err:  # noqa: BLE001 - whatever torch's readers raise on a file that is no checkpoint
        # truncated zip archives, text files (KeyError, IndexError from the unpicklers), wrong map_location devices
        if "deserialize object on a CUDA device" in str(err):  # a GPU run's tensors, no map to a device here
            raise ValueError(f"checkpoint {path} holds CUDA tensors and CUDA is not available on this machine: load it "
                             f"with map_location='cpu' (or 'auto'), not {map_location!r}") from None
        reason = " ".join(str(err).split())[:200]
        if not isinstance(err, (RuntimeError, EOFError, OSError, ValueError)):  # a bare key or index: say what
            reason = f"unexpected data ({type(err).__name__}: {reason})"
        raise ValueError(f"{path} is not a readable checkpoint (truncated, corrupt or not written by "
                         f"torch.save): {reason}") from err
    return _checked(ckpt, path)


def _check_archive(path: Path) -> None:
    """Refuse a zip-format checkpoint (what ``torch.save`` writes) with a damaged member: ``torch.load`` does not
    check the archive's CRCs, so flipped bytes in a tensor would load as other weights. Files that are not zip
    archives are left to ``torch.load`` (legacy format, or not a checkpoint)."""
    if not zipfile.is_zipfile(path):
        return
    try:
        with zipfile.ZipFile(path) as archive:
            bad = archive.testzip()
    except (zipfile.BadZipFile, OSError, EOFError, ValueError) as err:  # truncated: torch.load says more
        logger.debug("checkpoint %s: zip check skipped (%s)", path, err)
        return
    if bad is not None:
        raise ValueError(f"checkpoint {path} is corrupt: its member {bad!r} fails its checksum (a damaged copy or "
                         "disk); use another copy of the checkpoint")


def _checked(ckpt: Any, path: Path) -> dict[str, Any]:
    """``ckpt`` if it is a checkpoint this version reads (entries of the right types, one model name)."""
    if not isinstance(ckpt, dict) or any(k not in ckpt for k in _REQUIRED_KEYS):
        if isinstance(ckpt, dict) and ckpt and all(isinstance(v, torch.Tensor) for v in ckpt.values()):
            raise ValueError(
                f"{path} is a plain state_dict (weights alone, as torch.save(model.state_dict()) writes), not a "
                "longiseg checkpoint: it does not say which model the weights belong to. Build the model with "
                "longiseg.build_model(name, **kwargs) and load them with longiseg.engine.checkpoint."
                "load_model_weights(model, torch.load(path)) or model.load_state_dict(torch.load(path)); "
                "save_checkpoint(path, model=model) writes a file that load_model reads")
        raise ValueError(f"{path} is not a longiseg checkpoint (expected a dict with keys {_REQUIRED_KEYS})")
    for key, kinds, what in _ENTRY_TYPES:
        if key in ckpt and (not isinstance(ckpt[key], kinds) or isinstance(ckpt[key], bool)):
            raise ValueError(f"{path}: the checkpoint entry {key!r} must be {what}, got {ckpt[key]!r:.80} "
                             f"({type(ckpt[key]).__name__}): the file was edited or not written by save_checkpoint")
    if ckpt["format_version"] > CHECKPOINT_FORMAT_VERSION:
        raise ValueError(f"{path}: checkpoint format {ckpt['format_version']} is newer than this longiseg "
                         f"supports ({CHECKPOINT_FORMAT_VERSION})")
    name, spec = ckpt.get("model_name"), ckpt.get("spec")
    if name and spec and spec.get("name") != name:
        raise ValueError(f"{path}: the checkpoint holds model {name!r} but its spec names {spec.get('name')!r}: "
                         "the file was edited; make model_name and spec['name'] agree")
    return ckpt


def load_checkpoint(
    path: str | Path,
    *,
    model: nn.Module | None = None,
    optimizer: torch.optim.Optimizer | None = None,
    scheduler: Any = None,
    grad_scaler: Any = None,
    sampler: Any = None,
    loss_fn: Any = None,
    restore_rng: bool = False,
    map_location: Any = "cpu",
    strict: bool = True,
    weights_only: bool = True,
    checkpoint: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Read a checkpoint and load its states into the objects given.

    Args:
        path: a file written by :func:`save_checkpoint`.
        model: model (wrapped or not) to load the weights into.
        optimizer: optimizer to restore when the checkpoint has its state.
        scheduler: scheduler to restore likewise.
        grad_scaler: AMP grad scaler to restore likewise.
        sampler: batch sampler to restore (skipped without ``load_state_dict``).
        loss_fn: loss to restore (skipped without ``load_state_dict``).
        restore_rng: also restore the python/numpy/torch/CUDA RNG states.
        map_location: where tensors are loaded, as :func:`torch.load` takes it (a device such as ``"cpu"`` or
            ``"cuda:0"``, a dict or a callable), or ``"auto"`` (CUDA where available, else the CPU); a device this
            machine lacks, or one that holds no data (``"meta"``), is refused.
        strict: passed to ``model.load_state_dict``.
        weights_only: passed to :func:`torch.load` (checkpoints of this module load with ``True``).
        checkpoint: the dict an earlier call returned for ``path``: its states are loaded without reading the
            file again (``path`` then only names it in messages).

    Returns:
        The checkpoint dict.

    Raises:
        FileNotFoundError: if ``path`` does not exist.
        ValueError: if the file is not a longiseg checkpoint or is newer than supported.
        TypeError: if ``checkpoint`` is not a dict.
    """
    restore_rng = check_bool("restore_rng", restore_rng)
    strict = check_bool("strict", strict)  # "no" was a true value
    if checkpoint is None:
        ckpt = _read(check_path("path", path), map_location, check_bool("weights_only", weights_only))
    elif isinstance(checkpoint, dict):
        ckpt = _checked(checkpoint, check_path("path", path))
    else:
        raise TypeError(f"checkpoint must be the dict load_checkpoint returned, got {type(checkpoint).__name__}")
    if model is not None:
        load_model_weights(unwrap_model(model), ckpt["model"], source=str(path), strict=strict)
    if optimizer is not None and ckpt.get("optimizer") is not None:
        optimizer.load_state_dict(ckpt["optimizer"])
    if scheduler is not None and ckpt.get("scheduler") is not None:
        scheduler.load_state_dict(ckpt["scheduler"])
    if grad_scaler is not None and ckpt.get("grad_scaler") is not None:
        grad_scaler.load_state_dict(ckpt["grad_scaler"])
    for obj, key in ((sampler, "sampler"), (loss_fn, "loss")):
        if obj is not None and ckpt.get(key) is not None and callable(getattr(obj, "load_state_dict", None)):
            obj.load_state_dict(ckpt[key])
    if restore_rng and ckpt.get("rng") is not None:
        restore_rng_state(ckpt["rng"])
    return ckpt


def build_model_from_checkpoint(path: str | Path, *, map_location: Any = "cpu",
                                **override_kwargs: Any) -> nn.Module:
    """Rebuild a registry model from a checkpoint's ``model_name`` and arguments (its spec's, the ones the model was
    built with; ``model_kwargs`` for a checkpoint without a spec) and load its weights.

    Args:
        path: checkpoint file.
        map_location: where tensors are loaded, as :func:`torch.load` takes it (a device such as ``"cpu"`` or
            ``"cuda:0"``, a dict or a callable), or ``"auto"`` (CUDA where available, else the CPU); a device this
            machine lacks, or one that holds no data (``"meta"``), is refused.
        **override_kwargs: factory keyword arguments replacing the stored ones.

    Returns:
        The model in eval mode.

    Raises:
        ValueError: if the checkpoint has no ``model_name`` (train with ``Trainer(model_name=...)``).
    """
    return _model_from(_read(check_path("path", path), map_location, True), str(path), override_kwargs)


def _model_from(ckpt: Mapping[str, Any], source: str, override_kwargs: Mapping[str, Any]) -> nn.Module:
    """The registry model of a read checkpoint with its weights (and spec unless arguments were overridden)."""
    from longiseg.registry import build_model, is_model

    name = ckpt.get("model_name")
    if not name:
        raise ValueError(f"checkpoint {source} has no model_name; build the model yourself and use load_checkpoint")
    if not is_model(name):
        module = ckpt.get("model_module")
        where = (f"it was registered by the module {module!r}: `import {module}` first" if module and
                 module != "__main__" else "import the module that registers it first" + (
                     " (it was registered in a script run as __main__: move the model into a module you can import)"
                     if module == "__main__" else ""))
        raise ValueError(
            f"checkpoint {source} holds the model {name!r}, which is not registered in this process: {where}. On the "
            f"command line: longiseg --import {module if module and module != '__main__' else 'MODULE'} ... (see "
            "docs/tutorials/add-model.md)")
    _warn_other_module(name, ckpt.get("model_module"), source)
    stored_spec = _read_spec(ckpt["spec"], source) if ckpt.get("spec") else None
    runtime = _runtime_kwargs(name)
    recorded = _recorded_arguments(ckpt.get("model_kwargs") or {}, stored_spec, source, runtime)
    for key in runtime:
        if recorded.get(key) is not None and key not in override_kwargs:
            how = (f" (the selective-scan backend: {SCAN_BACKEND_ENV_VAR}, default auto by device)"
                   if key == "mamba_backend" else "")
            logger.info("checkpoint %s records %s=%r of its training, a run-time choice: this machine makes its "
                        "own%s", source, key, recorded[key], how)
    arguments = {**_without(recorded, runtime), **override_kwargs}
    try:
        # the initial weights are replaced below: their draws leave the caller's random stream where it was
        with torch.random.fork_rng(devices=[]):
            model = build_model(name, **arguments)
    except TypeError as err:  # the factory's signature changed since the checkpoint was written
        raise ValueError(
            f"checkpoint {source}: model {name!r} cannot be rebuilt with its recorded arguments {arguments}: {err}. "
            "Did its factory's arguments change since the checkpoint was written? Give a new argument a default, "
            "keep accepting a removed one, or pass replacements with build_model_from_checkpoint(path, **kwargs)"
        ) from err
    load_model_weights(model, ckpt["model"], source=source)
    if stored_spec is not None and not _without(override_kwargs, runtime):  # a run-time choice: the same function
        check_spec_describes(stored_spec, model.spec, f"checkpoint {source}: ")
        model.spec = stored_spec.replace(kwargs={**_without(stored_spec.kwargs, runtime), **override_kwargs})
    return model.eval()


#: The spec fields that rebuild a checkpoint's model (the factory's arguments and the dimensionality).
_REBUILD_FIELDS = ("kwargs", "dim")


def _read_spec(data: Any, source: str) -> ModelSpec:
    """The checkpoint's spec as a :class:`ModelSpec` (errors name the file). The fields that rebuild the model,
    which every spec written by longiseg holds, must be there: without ``kwargs`` the factory's defaults built
    another model than the weights' (same shapes, other activations) without a word."""
    missing = [f for f in _REBUILD_FIELDS if isinstance(data, Mapping) and f not in data]
    if missing:
        raise ValueError(f"checkpoint {source}: its model spec lacks {missing}, which every spec longiseg writes "
                         "holds (was the file edited?); the model cannot be rebuilt as it was built")
    try:
        return ModelSpec.from_dict(data)
    except (TypeError, ValueError) as err:
        raise ValueError(f"checkpoint {source}: its model spec cannot be read: {err}") from None


def _recorded_arguments(model_kwargs: Mapping[str, Any], spec: ModelSpec | None, source: str,
                        runtime: tuple[str, ...] = ()) -> dict[str, Any]:
    """The factory arguments a checkpoint rebuilds its model with: its ``spec``'s (the model's own record of how it
    was built, ``build_model``'s), else ``model_kwargs``. Until 0.3.20 a ``Trainer`` or ``save_checkpoint``
    given ``model_kwargs`` recorded them as given, e.g. a part of the spec's; they are logged when they differ."""
    recorded = dict(model_kwargs)
    if spec is None:
        return recorded
    if _comparable(recorded, runtime) != _comparable(spec.kwargs, runtime):
        logger.info("checkpoint %s records model_kwargs %s and the spec's arguments %s: the model is rebuilt with the "
                    "spec's (those it was built with)", source, recorded, dict(spec.kwargs))
    return dict(spec.kwargs)


#: The fields of a :class:`ModelSpec` that :func:`~longiseg.registry.built_spec` derives from the model (the
#: others describe the training: modalities, crop, preprocessing, inference and tuning).
_BUILT_FIELDS = ("dim", "input_layout", "in_channels", "num_timepoints")


def check_spec_describes(spec: ModelSpec, built: ModelSpec, where: str = "") -> None:
    """Refuse ``spec`` unless it describes the model whose :func:`~longiseg.registry.built_spec` is ``built``:
    the same name, ``dim`` and layout, and ``in_channels`` and ``num_timepoints`` where both give one (``None``
    is "unknown" or "any ``T``").

    Raises:
        ValueError: naming the field that disagrees (``where`` starts the message).
    """
    fields = [("name", spec.name, built.name)] + [(f, getattr(spec, f), getattr(built, f)) for f in _BUILT_FIELDS]
    for field, stated, actual in fields:
        if field in ("in_channels", "num_timepoints") and (stated is None or actual is None):
            continue
        if stated != actual:
            raise ValueError(f"{where}the spec gives {field} {stated!r}, but the model has {actual!r}: it does not "
                             "describe the model (inference takes the window and the inferer from it); a spec may "
                             "change the training's settings only (modalities, crop, preprocessing, inference, "
                             "tuning)")


def _warn_other_module(name: str, recorded: str | None, source: str) -> None:
    """Warn when model ``name`` is registered by another module than the one that registered it for the checkpoint
    (another model of the same name may have been imported; the built-in models may move between modules)."""
    current = _registered_module(name)
    if recorded in (None, "__main__") or current is None or current == recorded:
        return
    if recorded.startswith("longiseg.") and current.startswith("longiseg."):
        return
    logger.warning("checkpoint %s: model %r was registered by the module %r when it was saved, but by %r now: is this "
                   "the same model? (import %s instead to be sure)", source, name, recorded, current, recorded)


def _without(kwargs: Mapping[str, Any], runtime: tuple[str, ...]) -> dict[str, Any]:
    """Recorded factory arguments without the ``runtime`` ones (choices of the machine, :func:`_runtime_kwargs`)."""
    return {k: v for k, v in kwargs.items() if k not in runtime}


def load_model(path: str | Path, *, map_location: Any = "cpu") -> nn.Module:
    """A ready model from a checkpoint alone: architecture, weights and how to use it (``model.spec``).

    Args:
        path: a checkpoint written by ``longiseg train`` (``best.pt``/``last.pt``) or :func:`save_checkpoint`.
        map_location: where tensors are loaded, as :func:`torch.load` takes it (a device such as ``"cpu"`` or
            ``"cuda:0"``, a dict or a callable), or ``"auto"`` (CUDA where available, else the CPU); a device this
            machine lacks, or one that holds no data (``"meta"``), is refused.

    Returns:
        The model in eval mode; ``model.spec`` (:class:`~longiseg.spec.ModelSpec`) holds its modality order,
        crop size, preprocessing, inference and (tuned) post-processing settings.

    Raises:
        FileNotFoundError: if ``path`` does not exist.
        ValueError: for an unreadable file, weights that do not fit, or a checkpoint written before checkpoints
            described themselves (the message says how to supply the settings).
    """
    ckpt = _read(check_path("path", path), map_location, True)
    if not ckpt.get("spec") and not ckpt.get("model_name"):
        raise ValueError(
            f"checkpoint {path} holds a model that was not built with longiseg.build_model (it records neither a "
            "registry name nor a spec): build the model yourself and load the weights with "
            "load_checkpoint(path, model=model), or register it (register_model) and build it with build_model "
            "before saving")
    if not ckpt.get("spec"):
        raise ValueError(
            f"checkpoint {path} was written by an older longiseg and does not record how to use the model "
            "(modality order, window size, post-processing): pass the run's experiment file "
            "(longiseg predict --config RUN/experiment.yaml), or rebuild it with build_model_from_checkpoint() "
            "and set the settings yourself")
    return _model_from(ckpt, str(path), {})  # the file is read once


def check_writable(path: str | Path) -> Path:
    """``path`` if its mode lets its owner write it, as :func:`update_spec` (``longiseg tune``) requires.

    The new file is renamed onto the old one, which a write-protected file (``chmod a-w``) would not prevent,
    so the protection is read from the mode bits (``os.access`` says yes to root whatever they are).

    Raises:
        FileNotFoundError: if ``path`` does not exist.
        ValueError: naming the file, when it is write-protected.
    """
    path = check_path("path", path)
    if path.is_dir():
        raise IsADirectoryError(f"checkpoint {path} is a folder, not a checkpoint file (e.g. {path / 'best.pt'})")
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    mode = path.stat().st_mode
    if not mode & stat.S_IWUSR:
        raise ValueError(f"checkpoint {path} is write-protected (mode {stat.filemode(mode)}) and would be rewritten: "
                         "work on a copy of it, or allow writing with chmod u+w")
    return path


def update_spec(path: str | Path, spec: ModelSpec) -> Path:
    """Rewrite the checkpoint ``path`` with ``spec`` (atomically; weights, training state, file mode and group unchanged).

    Raises:
        FileNotFoundError: if ``path`` does not exist.
        TypeError: ``spec`` is not a :class:`ModelSpec`.
        ValueError: if ``path`` is write-protected (:func:`check_writable`), or ``spec`` names another model than
            the checkpoint or changes the model's own fields (arguments, ``dim``, ``in_channels``,
            ``num_timepoints``; see :func:`check_spec_describes`).
    """
    path = check_path("path", path)
    check_instance("spec", spec, ModelSpec, "a ModelSpec")
    check_writable(path)
    ckpt = _read(path, "cpu", True)
    if ckpt.get("model_name") not in (None, spec.name):
        raise ValueError(f"checkpoint {path} holds {ckpt.get('model_name')!r}, not {spec.name!r}")
    if ckpt.get("spec"):  # the model's own fields stay: the file would rebuild one the spec does not describe
        stored = _read_spec(ckpt["spec"], str(path))
        check_spec_describes(spec, stored, f"update_spec: checkpoint {path}: ")
        runtime = _runtime_kwargs(spec.name)
        if _comparable(spec.kwargs, runtime) != _comparable(stored.kwargs, runtime):
            raise ValueError(f"update_spec: checkpoint {path}: the spec gives kwargs {dict(spec.kwargs)}, but the "
                             f"model was built with {dict(stored.kwargs)}; a spec may change the training's settings "
                             "only")
    ckpt["spec"] = spec.to_dict()
    # the checkpoint's mode and group (e.g. private), set before the new file takes its place
    return atomic_torch_save(ckpt, path, keep_permissions=True)


def load_model_weights(model: nn.Module, state_dict: Mapping[str, torch.Tensor], *, source: str = "state_dict",
                       strict: bool = True) -> None:
    """``model.load_state_dict`` with one readable error when the weights do not fit the model.

    Args:
        model: the (unwrapped) model.
        state_dict: its weights, e.g. a checkpoint's ``"model"`` entry.
        source: where the weights come from, for the message (a file name).
        strict: refuse missing and unexpected keys too (sizes are always checked).

    Keys under the prefixes of the wrappers :func:`unwrap_model` removes (``module.`` of DataParallel/DDP,
    ``_orig_mod.`` of ``torch.compile``), as a wrapped model's ``state_dict()`` has them, load into the unwrapped
    model: when every key the model lacks is one of its own under such prefixes, the prefixes are dropped.

    Raises:
        ValueError: naming ``source``, the first mismatching parameters and their shapes, when the weights
            were saved from a model of another architecture or size (e.g. a changed ``model.kwargs``).
        TypeError: ``model`` is not an ``nn.Module`` or ``state_dict`` not a mapping.
    """
    check_instance("model", model, nn.Module, "an nn.Module")
    check_instance("state_dict", state_dict, Mapping, "a mapping of parameter names to tensors")
    state_dict = _unprefixed(state_dict, model.state_dict())
    try:
        model.load_state_dict(state_dict, strict=strict)
    except RuntimeError as err:
        own = model.state_dict()
        sizes = [f"{k}: saved {tuple(v.shape)} vs model {tuple(own[k].shape)}" for k, v in state_dict.items()
                 if k in own and tuple(v.shape) != tuple(own[k].shape)]
        missing = [k for k in own if k not in state_dict] if strict else []
        extra = [k for k in state_dict if k not in own] if strict else []
        parts = ([f"{len(sizes)} size mismatch(es), e.g. {'; '.join(sizes[:3])}"] if sizes else []) + (
            [f"{len(missing)} missing key(s), e.g. {missing[:3]}"] if missing else []) + (
            [f"{len(extra)} unexpected key(s), e.g. {extra[:3]}"] if extra else [])
        detail = ", ".join(parts) or " ".join(str(err).split())[:300]
        raise ValueError(f"the weights in {source} do not fit the model (another architecture or model.kwargs "
                         f"than the one they were trained with): {detail}") from None


def _unprefixed(state_dict: Mapping[str, torch.Tensor], own: Mapping[str, torch.Tensor]
                ) -> Mapping[str, torch.Tensor]:
    """``state_dict`` with wrapper prefixes dropped from its keys when every key ``own`` lacks is then one of
    ``own``'s that ``state_dict`` lacks (a wrapped model's weights); else ``state_dict`` unchanged."""

    def bare(key: str) -> str:
        while key not in own and key.startswith(_WRAPPER_PREFIXES):
            key = key.split(".", 1)[1]
        return key

    extra = [k for k in state_dict if k not in own]
    found = {bare(k) for k in extra}
    if not extra or len(found) < len(extra) or any(k not in own or k in state_dict for k in found):
        return state_dict
    return {bare(k): v for k, v in state_dict.items()}
