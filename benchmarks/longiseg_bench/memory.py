"""Peak memory of one call: the part of a benchmark that ``torch.utils.benchmark`` and pytest-benchmark do not give.

* CUDA: ``torch.cuda.max_memory_allocated()`` during the call minus the memory allocated before it (tensors
  only, not the caching allocator's reserve).
* CPU (Linux with glibc): the rise of the process's peak resident set size during the call. Before the first
  measurement :func:`enable_cpu_memory_tracking` pins glibc's ``mmap`` threshold at 64 KiB and trims the heap,
  so every tensor buffer is an ``mmap`` that goes back to the OS when freed and the resident size follows the
  live tensors. The peak (``VmHWM``) is reset through ``/proc/self/clear_refs`` right before the call and read
  from ``/proc/self/status`` after it; the result is ``VmHWM - VmRSS(before)``: activations, gradients, optimizer
  state created by the call and temporary workspaces, excluding whatever was already resident (weights,
  inputs). Elsewhere the CPU measurement is unavailable and reported as ``None``.

Switching glibc's threshold changes the allocator for the rest of the process, so a benchmark measures memory
after all its timings, and ``run_all.py`` starts every script in a fresh process.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import logging
import sys
from collections.abc import Callable
from typing import Any

import torch

__all__ = ["enable_cpu_memory_tracking", "peak_memory"]

_LOGGER = logging.getLogger(__name__)
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_MMAP_THRESHOLD_BYTES = 64 * 1024
_libc: Any = None
_cpu_tracking: bool | None = None


def _proc_status_kib(key: str) -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    raise OSError(f"{key} not found in /proc/self/status")


def _reset_resident_peak() -> None:
    with open("/proc/self/clear_refs", "w") as fh:
        fh.write("5")


def enable_cpu_memory_tracking() -> bool:
    """Make the resident set size follow the live tensors so that :func:`peak_memory` works on CPU.

    Pins glibc's ``mmap`` threshold at 64 KiB (buffers above it are ``mmap``-ed and returned to the OS when
    freed; this disables glibc's dynamic threshold for the rest of the process) and checks that the peak
    resident size can be reset through ``/proc/self/clear_refs``. Idempotent.

    Returns:
        ``True`` when CPU peak memory can be measured (Linux with glibc), else ``False`` (logged once).
    """
    global _libc, _cpu_tracking
    if _cpu_tracking is not None:
        return _cpu_tracking
    ok = False
    if sys.platform.startswith("linux"):
        try:
            libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
            ok = bool(libc.mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD_BYTES)) and bool(
                libc.mallopt(_M_TRIM_THRESHOLD, _MMAP_THRESHOLD_BYTES)
            )
            if ok:
                libc.malloc_trim(0)
                _reset_resident_peak()
                _proc_status_kib("VmHWM")
                _libc = libc
        except (OSError, AttributeError):
            ok = False
    if not ok:
        _LOGGER.warning("CPU peak memory is not measurable here (needs Linux + glibc); reported as None")
    _cpu_tracking = ok
    return ok


def peak_memory(fn: Callable[[], object], device: torch.device | str = "cpu") -> int | None:
    """Run ``fn()`` once and return the peak memory it added, in bytes (see the module docstring).

    Args:
        fn: zero-argument callable; its return value is dropped before the peak is read.
        device: ``"cpu"`` (resident set rise) or a CUDA device (``max_memory_allocated`` rise).

    Returns:
        Bytes (``>= 0``), or ``None`` when CPU tracking is unavailable (:func:`enable_cpu_memory_tracking`).

    Raises:
        TypeError: when ``fn`` is not callable.
    """
    if not callable(fn):
        raise TypeError(f"peak_memory: fn must be callable, got {type(fn).__name__}")
    device = torch.device(device)
    gc.collect()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        fn()
        torch.cuda.synchronize(device)
        return max(0, torch.cuda.max_memory_allocated(device) - base)
    if not enable_cpu_memory_tracking():
        fn()
        return None
    _libc.malloc_trim(0)
    _reset_resident_peak()
    base = _proc_status_kib("VmRSS")
    fn()
    peak = _proc_status_kib("VmHWM")
    return max(0, peak - base) * 1024
