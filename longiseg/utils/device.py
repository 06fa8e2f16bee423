"""The machine's compute resources: one check of a user-given device string (known type, present on this
machine), and the CPU cores this process may use."""

from __future__ import annotations

import os

import torch

__all__ = ["factory_device", "resolve_device", "usable_cpu_count"]


def usable_cpu_count() -> int | None:
    """CPU cores this process may run on: its affinity mask where the OS has one (Linux), else the machine's CPU
    count (``None`` where the OS does not say)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count()

_KNOWN = ("cpu", "cuda", "mps")


def resolve_device(device: str | torch.device | None = None, *, name: str = "device") -> torch.device:
    """The ``torch.device`` of ``device``, checked to exist here.

    Args:
        device: ``None`` or ``"auto"`` (CUDA when available, else CPU), ``"cpu"``, ``"cuda"``, ``"cuda:N"``,
            ``"mps"`` or a ``torch.device``.
        name: how the caller calls the argument in error messages (e.g. ``"--device"``).

    Returns:
        The device; ``"cuda"`` without an index stays index-less (the current CUDA device).

    Raises:
        TypeError: if ``device`` is neither a string nor a ``torch.device``.
        ValueError: for an unknown device string, or a CUDA/MPS device this machine does not have.
    """
    if device is None or device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if not isinstance(device, (str, torch.device)):
        raise TypeError(f"{name} must be a string such as 'cpu' or 'cuda:0', got {type(device).__name__}")
    try:
        dev = torch.device(device)
    except (RuntimeError, ValueError):
        raise ValueError(f"{name} {device!r} is not a device; use auto, cpu, cuda, cuda:N or mps") from None
    if dev.type not in _KNOWN:
        raise ValueError(f"{name} {device!r} is not supported; use auto, cpu, cuda, cuda:N or mps")
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            use = f"{name} cpu" if name.startswith("-") else f"{name}=cpu"  # an option, or a setting / argument
            raise ValueError(f"{name} {device!r}: CUDA is not available on this machine (torch "
                             f"{torch.__version__}, CUDA build {torch.version.cuda}); use {use}")
        count = torch.cuda.device_count()
        if dev.index is not None and dev.index >= count:
            raise ValueError(f"{name} {device!r}: this machine has {count} CUDA device(s) (0..{count - 1})")
    if dev.type == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise ValueError(f"{name} {device!r}: MPS is not available on this machine")
    return dev


def factory_device(device: str | torch.device | None, *, name: str = "device") -> torch.device | None:
    """A module's or tensor factory's ``device`` argument, checked as :func:`resolve_device` checks it; ``None``
    stays ``None`` (torch's default device) and ``"meta"`` is kept (building a module without memory).

    Raises:
        TypeError, ValueError: as :func:`resolve_device` (``"auto"`` is not a factory device).
    """
    if device is None:
        return None
    if device == "auto":
        raise ValueError(f"{name} 'auto' is not a device here; give cpu, cuda, cuda:N, mps or None")
    if isinstance(device, (str, torch.device)) and str(device) == "meta":
        return torch.device("meta")
    return resolve_device(device, name=name)
