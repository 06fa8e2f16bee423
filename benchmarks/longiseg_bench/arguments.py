"""argparse types of the benchmark scripts: a bad value is a one-line usage error naming the option
(``bench_x.py: error: argument --sizes: expected an int >= 1, got '0'``), not a traceback later."""

from __future__ import annotations

import argparse
import os
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path

__all__ = ["positive_int", "nonnegative_int", "int_list", "output_file", "torch_device", "check_scan_environment",
           "uses_selective_scan"]


def _int_at_least(low: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = None
        if value is None or value < low:
            raise argparse.ArgumentTypeError(f"expected an int >= {low}, got {text!r}")
        return value

    parse.__name__ = f"int >= {low}"
    return parse


#: An int >= 1 (sizes, repeats, threads).
positive_int = _int_at_least(1)
#: An int >= 0 (seeds; 0 = off).
nonnegative_int = _int_at_least(0)


def int_list(text: str) -> tuple[int, ...]:
    """Comma-separated ints >= 1, e.g. ``1024,4096``."""
    items = [t.strip() for t in text.split(",")]
    if not all(items):
        raise argparse.ArgumentTypeError(f"expected comma-separated ints >= 1, got {text!r}")
    try:
        return tuple(positive_int(t) for t in items)
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(f"expected comma-separated ints >= 1, got {text!r}") from None


def output_file(text: str) -> str:
    """A file to write after the benchmark: refused now (not after minutes of timing) when it is a folder or its
    nearest existing folder is not writable; missing parent folders are made when it is written."""
    path = Path(text).expanduser()
    if path.is_dir():
        raise argparse.ArgumentTypeError(f"{text!r} is a folder, not a file")
    parent = path.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir() or not os.access(parent, os.W_OK | os.X_OK):
        raise argparse.ArgumentTypeError(f"cannot write {text!r}: {parent} is not a writable folder")
    if parent == path.parent:  # it exists: a nameless file there says whether files can be made (also for root)
        try:
            with tempfile.TemporaryFile(dir=parent):
                pass
        except OSError as err:
            raise argparse.ArgumentTypeError(f"cannot write {text!r}: {err.strerror or err}") from None
    return str(path)


def torch_device(text: str) -> str:
    """A device this machine has, ``cpu`` or ``cuda[:N]``, as torch spells it (``cuda`` stays ``cuda``; every CPU
    device, ``cpu:0`` too, is ``cpu``): refused now (``no CUDA device``), not as a traceback once the first model
    or tensor is moved there."""
    import torch  # here: this module alone imports no torch (the package's environment module does)

    try:
        device = torch.device(text)
    except (RuntimeError, ValueError):
        device = None
    if device is None or device.type not in ("cpu", "cuda"):
        raise argparse.ArgumentTypeError(f"expected cpu, cuda or cuda:N, got {text!r}")
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise argparse.ArgumentTypeError(f"{text!r} is not available on this machine (no CUDA device)")
        count = torch.cuda.device_count()
        if device.index is not None and device.index >= count:
            raise argparse.ArgumentTypeError(f"{text!r} is not available: this machine has {count} CUDA device(s)")
    return "cpu" if device.type == "cpu" else str(device)


def uses_selective_scan(models: Iterable[str]) -> bool:
    """Whether any of the registry ``models`` runs a selective scan (a Mamba mixer: its ``"mamba"`` tag), so that
    the benchmark depends on the scan backend (see :func:`check_scan_environment`)."""
    from longiseg import model_info

    return any("mamba" in model_info(name).tags for name in models)


def check_scan_environment(parser: argparse.ArgumentParser, device: str, needed: bool = True) -> None:
    """Refuse, as a usage error, a ``LONGISEG_SCAN_BACKEND`` that does not run on ``device`` (unknown, or e.g.
    ``triton`` on a CPU) where the benchmark runs a selective scan (``needed``): every Mamba model of it would
    fail with it, after the header. A benchmark of attention or CNN models alone is not concerned."""
    if not needed:
        return
    from longiseg.ssm import resolve_backend

    try:
        resolve_backend(None, device)
    except (ValueError, RuntimeError) as err:  # the message names the variable
        parser.error(str(err))
