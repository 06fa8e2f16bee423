"""The header every benchmark prints first: what its numbers depend on (machine, load, versions, threads, backend)."""

from __future__ import annotations

import datetime as _dt
import importlib
import os
import platform
from collections.abc import Mapping

import torch

from longiseg.utils.device import usable_cpu_count

__all__ = ["cpu_model_name", "environment_info", "format_header", "print_header", "select_device"]

_SCAN_BACKEND_LABELS = {
    "chunked": "chunked (pure PyTorch)",
    "reference": "reference (pure PyTorch, sequential)",
    "numba": "numba (compiled CPU kernel)",
    "triton": "triton (Triton GPU kernels)",
    "cuda": "cuda (mamba-ssm kernels)",
}


def cpu_model_name() -> str:
    """The CPU model from ``/proc/cpuinfo`` (Linux), else :func:`platform.processor`, else ``"unknown"``."""
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _scan_backend(device: torch.device) -> str:
    # the package re-exports the function under the submodule's name, so import the module explicitly
    scan_module = importlib.import_module("longiseg.ssm.selective_scan")
    try:
        name = scan_module.resolve_backend(None, device)
    except (ValueError, RuntimeError) as err:  # a bad LONGISEG_SCAN_BACKEND: said, never replaced by another
        return f"not resolved: {err}"
    return _SCAN_BACKEND_LABELS.get(name, name)


def environment_info(device: torch.device | str = "cpu") -> dict[str, str]:
    """What a benchmark result depends on, as printable strings.

    Keys: ``date``, ``machine``, ``cpu``, ``nproc`` (CPUs usable by this process / CPUs of the machine),
    ``load_average`` (1/5/15 min), ``python``, ``torch``, ``threads`` (intra-op / inter-op), ``device``
    (with the GPU name on CUDA) and ``scan_backend`` (the selective-scan backend ``auto`` resolves to on
    ``device``, honouring ``LONGISEG_SCAN_BACKEND``; ``not resolved: ...`` with the reason where that variable
    names no backend that runs here, for the benchmarks that run no scan).
    """
    device = torch.device(device)
    usable = usable_cpu_count() or 0
    try:
        load = " / ".join(f"{v:.2f}" for v in os.getloadavg())
    except OSError:
        load = "n/a"
    dev = str(device)
    if device.type == "cuda":
        dev = f"{device} ({torch.cuda.get_device_name(device)})"
    return {
        "date": _dt.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z"),
        "machine": f"{platform.system()} {platform.machine()}",
        "cpu": cpu_model_name(),
        "nproc": f"{usable} usable / {os.cpu_count()} total",
        "load_average": load,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "threads": f"{torch.get_num_threads()} intra-op / {torch.get_num_interop_threads()} inter-op",
        "device": dev,
        "scan_backend": _scan_backend(device),
    }


def format_header(info: Mapping[str, str]) -> str:
    """One ``key: value`` line per entry of :func:`environment_info` (or any mapping)."""
    return "\n".join(f"{key}: {value}" for key, value in info.items())


def print_header(device: torch.device | str = "cpu", extra: Mapping[str, object] | None = None) -> dict[str, str]:
    """Print :func:`environment_info` (plus ``extra`` entries) and return it as a dict."""
    info = environment_info(device)
    info.update({k: str(v) for k, v in (extra or {}).items()})
    print(format_header(info), flush=True)
    return info


def select_device(device: torch.device | str) -> None:
    """Make a CUDA ``device`` the current one (nothing for the CPU): synchronisation, ``torch.utils.benchmark``'s
    timers and the allocator's statistics called without a device measure the current GPU, ``cuda:0`` unless
    changed, so a benchmark of ``cuda:1`` would time and measure the wrong GPU without this."""
    device = torch.device(device)
    if device.type == "cuda" and device.index is not None:
        torch.cuda.set_device(device)
