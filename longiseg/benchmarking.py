"""Benchmark helpers: environment header, interleaved median timer, peak memory, the mixer and model benchmarks.

Used by the scripts in ``benchmarks/`` and by ``longiseg bench``. Everything prints plain markdown tables so
that the output can be pasted into ``docs/benchmarks.md``.

**Timing.** :func:`time_interleaved` runs the compared variants round-robin (``A B C A B C ...``) after
untimed warm-up rounds and returns every wall-clock time; tables quote medians. On a shared, noisy machine
interleaving exposes all variants to the same load, so their *ratios* stay meaningful even when the absolute
times drift.

**Peak memory** (:func:`peak_memory`):

* CUDA: ``torch.cuda.max_memory_allocated()`` during the call minus the memory allocated before it (tensors
  only, not the caching allocator's reserve).
* CPU (Linux with glibc): the rise of the process's peak resident set size during the call. Before the first
  measurement :func:`enable_cpu_memory_tracking` pins glibc's ``mmap`` threshold at 64 KiB and trims the heap,
  so every tensor buffer is an ``mmap`` that goes back to the OS when freed and the resident size follows the
  live tensors. The peak (``VmHWM``) is reset through ``/proc/self/clear_refs`` right before the call and read
  from ``/proc/self/status`` after it; the result is ``VmHWM - VmRSS(before)``: activations, gradients, optimizer
  state created by the call and temporary workspaces, excluding whatever was already resident (weights,
  inputs). Elsewhere the CPU measurement is unavailable and reported as ``None``.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import datetime as _dt
import gc
import math
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
from tqdm.auto import tqdm

from longiseg.utils.logging import get_logger, log_once
from longiseg.utils.validation import check_positive_int

__all__ = [
    "MIXERS",
    "MixerRecord",
    "ModelRecord",
    "cpu_model_name",
    "environment_info",
    "format_header",
    "print_header",
    "format_table",
    "format_bytes",
    "synchronize",
    "time_interleaved",
    "median",
    "enable_cpu_memory_tracking",
    "peak_memory",
    "find_crossing",
    "crossing_summary",
    "build_mixer",
    "run_mixer_benchmark",
    "plot_mixer_scaling",
    "model_batch",
    "run_model_benchmark",
    "run_inference_benchmark",
]

_LOGGER = get_logger("longiseg.benchmarking")

#: Mixers of the mixer benchmark: name -> (description, cost exponent in the token count used to predict the
#: time of the next size, so that hopeless configurations are skipped instead of run).
MIXERS: dict[str, tuple[str, float]] = {
    "mast": ("MaSTMixer: two Mamba scans (temporal-first + spatial-first), linear in tokens", 1.0),
    "global_attn": ("GlobalSelfAttention: SDPA over all T*H*W tokens, quadratic", 2.0),
    "efficient_attn": ("EfficientSelfAttention (SegFormer, R=8): per timepoint, keys/values reduced", 2.0),
}


# ----------------------------------------------------------------------------------------------- environment


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
    import importlib

    # the package re-exports the function under the submodule's name, so import the module explicitly
    scan_module = importlib.import_module("longiseg.ssm.selective_scan")
    name = scan_module.resolve_backend(None, device)
    labels = {
        "chunked": "chunked (pure PyTorch)",
        "reference": "reference (pure PyTorch, sequential)",
        "numba": "numba (compiled CPU kernel)",
        "cuda": "cuda (mamba-ssm kernels)",
    }
    return labels.get(name, name)


def environment_info(device: torch.device | str = "cpu") -> dict[str, str]:
    """What a benchmark result depends on, as printable strings.

    Keys: ``date``, ``machine``, ``cpu``, ``nproc`` (CPUs usable by this process / CPUs of the machine),
    ``load_average`` (1/5/15 min), ``python``, ``torch``, ``threads`` (intra-op / inter-op), ``device``
    (with the GPU name on CUDA) and ``scan_backend`` (the selective-scan backend ``auto`` resolves to on
    ``device``, honouring ``LONGISEG_SCAN_BACKEND``).
    """
    device = torch.device(device)
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        usable = os.cpu_count() or 0
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


def format_table(columns: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A markdown (pipe) table; floats get 3 significant digits, ``None`` prints as ``-``.

    Raises:
        ValueError: when a row does not have ``len(columns)`` cells.
    """
    def cell(v: object) -> str:
        if v is None:
            return "-"
        if isinstance(v, float):
            return "nan" if math.isnan(v) else f"{v:.3g}"
        return str(v)

    body = [[cell(v) for v in row] for row in rows]
    for i, row in enumerate(body):
        if len(row) != len(columns):
            raise ValueError(f"rows[{i}] has {len(row)} cells, expected {len(columns)} (one per column)")
    widths = [max([len(c)] + [len(r[j]) for r in body]) for j, c in enumerate(columns)]
    lines = ["| " + " | ".join(c.ljust(w) for c, w in zip(columns, widths)) + " |"]
    lines.append("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    lines += ["| " + " | ".join(v.rjust(w) for v, w in zip(r, widths)) + " |" for r in body]
    return "\n".join(lines)


def format_bytes(n: float | None) -> str:
    """Bytes as MiB with 3 significant digits (``"-"`` for ``None``)."""
    return "-" if n is None else f"{n / 2**20:.3g}"


# ----------------------------------------------------------------------------------------------------- timing


def synchronize(device: torch.device | str) -> None:
    """Wait for queued CUDA work on ``device`` (no-op on CPU)."""
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def median(values: Sequence[float]) -> float:
    """Median of a non-empty sequence.

    Raises:
        ValueError: for an empty sequence.
    """
    if len(values) == 0:
        raise ValueError("median: values must not be empty")
    return float(statistics.median(values))


def time_interleaved(
    fns: Mapping[str, Callable[[], object]],
    repeats: int = 3,
    warmup: int = 1,
    device: torch.device | str = "cpu",
    progress: bool = False,
) -> dict[str, list[float]]:
    """Wall-clock times of several callables measured round-robin.

    ``warmup`` untimed rounds, then ``repeats`` rounds in which every callable runs once, in the given order;
    CUDA work is synchronised around each call.

    Args:
        fns: name -> zero-argument callable (one forward pass, one training step, ...).
        repeats: timed rounds (>= 1).
        warmup: untimed rounds first (>= 0).
        device: device whose queue is synchronised.
        progress: tqdm bar over the calls.

    Returns:
        name -> list of ``repeats`` times in seconds (take :func:`median`).

    Raises:
        ValueError: for no callables, ``repeats < 1`` or ``warmup < 0``.
        TypeError: when a value of ``fns`` is not callable.
    """
    if not fns:
        raise ValueError("time_interleaved: fns must hold at least one callable")
    for name, fn in fns.items():
        if not callable(fn):
            raise TypeError(f"time_interleaved: fns[{name!r}] must be callable, got {type(fn).__name__}")
    check_positive_int("repeats", repeats)
    check_positive_int("warmup", warmup, minimum=0)
    times: dict[str, list[float]] = {name: [] for name in fns}
    bar = tqdm(total=(warmup + repeats) * len(fns), desc="timing", unit="call", disable=not progress, leave=False)
    try:
        for round_ in range(warmup + repeats):
            for name, fn in fns.items():
                synchronize(device)
                t0 = time.perf_counter()
                fn()
                synchronize(device)
                if round_ >= warmup:
                    times[name].append(time.perf_counter() - t0)
                bar.update()
    finally:
        bar.close()
    return times


# ----------------------------------------------------------------------------------------------------- memory

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


def enable_cpu_memory_tracking() -> bool:
    """Make the resident set size follow the live tensors so that :func:`peak_memory` works on CPU.

    Pins glibc's ``mmap`` threshold at 64 KiB (buffers above it are ``mmap``-ed and returned to the OS when
    freed; this disables glibc's dynamic threshold for the rest of the process) and checks that the peak
    resident size can be reset through ``/proc/self/clear_refs``. Idempotent.

    Returns:
        ``True`` when CPU peak memory can be measured (Linux with glibc), else ``False``.
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
                with open("/proc/self/clear_refs", "w") as fh:
                    fh.write("5")
                _proc_status_kib("VmHWM")
                _libc = libc
        except (OSError, AttributeError):
            ok = False
    if not ok:
        log_once(_LOGGER, "cpu-peak-memory", "CPU peak memory is not measurable here (needs Linux + glibc)")
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
    with open("/proc/self/clear_refs", "w") as fh:
        fh.write("5")
    base = _proc_status_kib("VmRSS")
    fn()
    peak = _proc_status_kib("VmHWM")
    return max(0, peak - base) * 1024


# ------------------------------------------------------------------------------------------ crossing points


def find_crossing(tokens: Sequence[float], a: Sequence[float | None], b: Sequence[float | None]) -> float | None:
    """Token count where curve ``a`` overtakes curve ``b`` (first sign change of ``a - b``), log-log interpolated.

    Args:
        tokens: increasing x values.
        a: y values of the first curve at ``tokens`` (``None``/NaN = not measured; such points are ignored).
        b: y values of the second curve, same convention.

    Returns:
        The interpolated crossing, or ``None`` when ``a - b`` does not change sign over the measured points.

    Raises:
        ValueError: when the three sequences differ in length.
    """
    if not (len(tokens) == len(a) == len(b)):
        raise ValueError(f"tokens, a and b must have the same length, got {len(tokens)}, {len(a)}, {len(b)}")
    pts = [
        (math.log(x), math.log(ya) - math.log(yb))
        for x, ya, yb in zip(tokens, a, b)
        if ya is not None and yb is not None and ya > 0 and yb > 0 and not (math.isnan(ya) or math.isnan(yb))
    ]
    for (x0, d0), (x1, d1) in zip(pts, pts[1:]):
        if d0 == 0:
            return math.exp(x0)
        if d0 * d1 < 0 or d1 == 0:
            return math.exp(x0 + (x1 - x0) * (-d0) / (d1 - d0))
    return None


# ------------------------------------------------------------------------------------------ mixer benchmark


def build_mixer(name: str, dim: int) -> nn.Module:
    """A token mixer of width ``dim`` mapping ``(B, T, H, W, C)`` to the same shape.

    ``"mast"``: :class:`~longiseg.networks.blocks.mast.MaSTMixer` (paper defaults: d_state 16, expand 2);
    ``"global_attn"``: :class:`~longiseg.networks.blocks.efficient_attention.GlobalSelfAttention` (one head,
    no reduction); ``"efficient_attn"``:
    :class:`~longiseg.networks.blocks.efficient_attention.EfficientSelfAttention` (one head, reduction 8, the
    first MiT stage's setting).

    Raises:
        ValueError: unknown name or non-positive ``dim``.
    """
    from longiseg.networks.blocks.efficient_attention import EfficientSelfAttention, GlobalSelfAttention
    from longiseg.networks.blocks.mast import MaSTMixer

    check_positive_int("dim", dim)
    if name == "mast":
        return MaSTMixer(dim)
    if name == "global_attn":
        return GlobalSelfAttention(dim, num_heads=1, sr_ratio=1)
    if name == "efficient_attn":
        return EfficientSelfAttention(dim, num_heads=1, sr_ratio=8)
    raise ValueError(f"unknown mixer {name!r}; expected one of {tuple(MIXERS)}")


@dataclass
class MixerRecord:
    """One (mixer, feature-map size, pass) measurement.

    Attributes:
        mixer: name in :data:`MIXERS`.
        size: feature map side ``H = W``.
        tokens: ``T * H * W``.
        mode: ``"forward"`` (inference, no autograd graph) or ``"forward+backward"``.
        times: wall-clock seconds of the timed repeats (empty when skipped).
        peak_bytes: peak memory of one call (``None``: not measured).
        skipped: reason when the configuration was not run.
    """

    mixer: str
    size: int
    tokens: int
    mode: str
    times: list[float] = field(default_factory=list)
    peak_bytes: int | None = None
    skipped: str = ""

    @property
    def median(self) -> float | None:
        """Median time in seconds, ``None`` when skipped."""
        return median(self.times) if self.times else None


def _mixer_input(batch: int, timepoints: int, size: int, dim: int, device: torch.device) -> torch.Tensor:
    gen = torch.Generator().manual_seed(size)
    return torch.randn(batch, timepoints, size, size, dim, generator=gen).to(device).requires_grad_()


def _mixer_call(mixer: nn.Module, x: torch.Tensor, mode: str) -> Callable[[], None]:
    if mode == "forward":
        def call() -> None:
            with torch.no_grad():
                mixer(x)
    else:
        def call() -> None:
            mixer.zero_grad(set_to_none=True)
            x.grad = None
            mixer(x).sum().backward()
    return call


_MODES = ("forward", "forward+backward")


def run_mixer_benchmark(
    quick: bool = False,
    out_png: str | os.PathLike[str] | None = None,
    *,
    sizes: Sequence[int] | None = None,
    dim: int = 32,
    timepoints: int = 2,
    batch: int = 1,
    repeats: int | None = None,
    mixers: Sequence[str] = tuple(MIXERS),
    device: torch.device | str = "cpu",
    threads: int | None = None,
    max_call_seconds: float | None = None,
    measure_memory: bool = True,
    json_path: str | os.PathLike[str] | None = None,
    progress: bool = True,
) -> list[MixerRecord]:
    """Time and peak memory of the token mixers vs the token count; prints the tables and the crossings.

    For every feature-map size ``S`` the input is ``(batch, timepoints, S, S, dim)`` (channels last), i.e.
    ``timepoints * S * S`` tokens per sample. Per size, the forward (no autograd) and forward+backward passes
    of all mixers are timed interleaved (medians of ``repeats``); after all sizes are timed, the peak memory of
    one call each is measured (:func:`peak_memory`; on CPU this switches glibc to tracking mode for the rest
    of the process, so run further timings in a fresh process). A configuration whose predicted time (last median scaled by the mixer's
    cost exponent in :data:`MIXERS`) exceeds ``max_call_seconds`` is skipped and reported as such.

    Args:
        quick: sizes 16/32/64 and 3 repeats (about a minute on 2 idle cores); else 32/64/128/256.
        out_png: write the time/memory vs tokens plot here (PNG).
        sizes: feature map sides, overriding the mode's default.
        dim: width ``C`` of every mixer (32: SegMaST's first stage, where the token count is largest).
        timepoints: ``T`` (2: baseline + one follow-up).
        batch: ``B``.
        repeats: timed rounds (default 3).
        mixers: subset of :data:`MIXERS`; the first is the reference of the ratio columns.
        device: ``"cpu"`` or a CUDA device.
        threads: ``torch.set_num_threads`` for the run (default: leave as is).
        max_call_seconds: skip configurations predicted slower than this (default 5 s quick, 60 s full;
            ``math.inf`` never skips).
        measure_memory: also measure the peak memory.
        json_path: also write the records (and the environment) as JSON.
        progress: tqdm bar over the sizes.

    Returns:
        The :class:`MixerRecord` list (mixers x sizes x passes).

    Raises:
        ValueError: for unknown mixers, non-positive sizes or bad counts.
    """
    if not mixers:
        raise ValueError("mixers must name at least one of " + str(tuple(MIXERS)))
    for name in mixers:
        if name not in MIXERS:
            raise ValueError(f"unknown mixer {name!r}; expected one of {tuple(MIXERS)}")
    sizes = tuple(sizes) if sizes is not None else ((16, 32, 64) if quick else (32, 64, 128, 256))
    if not sizes:
        raise ValueError("sizes must hold at least one feature-map side")
    for s in sizes:
        check_positive_int("sizes[i]", s)
    sizes = tuple(sorted(sizes))
    check_positive_int("dim", dim)
    check_positive_int("timepoints", timepoints)
    check_positive_int("batch", batch)
    repeats = check_positive_int("repeats", 3 if repeats is None else repeats)
    if max_call_seconds is None:
        max_call_seconds = 5.0 if quick else 60.0
    device = torch.device(device)
    if threads is not None:
        torch.set_num_threads(check_positive_int("threads", threads))

    modules = {name: build_mixer(name, dim).to(device) for name in mixers}
    params = {name: sum(p.numel() for p in m.parameters()) for name, m in modules.items()}
    info = print_header(
        device,
        {
            "benchmark": "token mixers, (B, T, S, S, C) channels-last",
            "config": f"B={batch}, T={timepoints}, C={dim}, sizes S={list(sizes)}, repeats={repeats}",
            "memory": "peak CUDA allocation" if device.type == "cuda" else "peak resident-set rise (VmHWM)",
        },
    )
    for name in mixers:
        print(f"  {name}: {MIXERS[name][0]} ({params[name] / 1e3:.1f} k parameters)")
    records: list[MixerRecord] = []
    last: dict[tuple[str, str], tuple[int, float]] = {}
    calls_at: dict[int, list[str]] = {}
    # Phase 1: timing with the default allocator, all sizes. Phase 2 (below): peak memory, which switches the
    # allocator to tracking mode for the rest of the process.
    for size in tqdm(sizes, desc="mixer timing", unit="size", disable=not progress):
        tokens = timepoints * size * size
        x = _mixer_input(batch, timepoints, size, dim, device)
        calls: dict[str, Callable[[], None]] = {}
        size_records: dict[str, MixerRecord] = {}
        for name in mixers:
            for mode in _MODES:
                rec = MixerRecord(name, size, tokens, mode)
                prev = last.get((name, mode))
                if prev is not None:
                    estimate = prev[1] * (tokens / prev[0]) ** MIXERS[name][1]
                    if estimate > max_call_seconds:
                        rec.skipped = f"predicted {estimate:.0f} s > {max_call_seconds:.0f} s per call"
                if not rec.skipped:
                    calls[f"{name}/{mode}"] = _mixer_call(modules[name], x, mode)
                size_records[f"{name}/{mode}"] = rec
        # one untimed warm-up round unless the calls are long (then first-call effects are small in comparison)
        slow = any(v[1] > 2.0 for v in last.values())
        times = time_interleaved(calls, repeats=repeats, warmup=0 if slow else 1, device=device) if calls else {}
        for key, ts in times.items():
            rec = size_records[key]
            rec.times = ts
            last[(rec.mixer, rec.mode)] = (tokens, median(ts))
        calls_at[size] = list(times)
        del x, calls
        records.extend(size_records.values())
    if measure_memory:
        by_key = {(r.size, f"{r.mixer}/{r.mode}"): r for r in records}
        for size in tqdm(sizes, desc="mixer memory", unit="size", disable=not progress):
            x = _mixer_input(batch, timepoints, size, dim, device)
            for key in calls_at[size]:
                name, mode = key.split("/", 1)
                by_key[(size, key)].peak_bytes = peak_memory(_mixer_call(modules[name], x, mode), device)
                modules[name].zero_grad(set_to_none=True)
            del x

    _print_mixer_tables(records, mixers, sizes)
    if out_png is not None:
        plot_mixer_scaling(records, out_png, title=f"token mixers, C={dim}, T={timepoints}, {info['device']}")
        print(f"plot: {out_png}")
    if json_path is not None:
        from longiseg.utils.io import atomic_write_json

        atomic_write_json(json_path, {"environment": info, "records": [asdict(r) for r in records]})
    return records


def _lookup(records: Sequence[MixerRecord]) -> dict[tuple[str, int, str], MixerRecord]:
    return {(r.mixer, r.size, r.mode): r for r in records}


def _print_mixer_tables(records: Sequence[MixerRecord], mixers: Sequence[str], sizes: Sequence[int]) -> None:
    by = _lookup(records)
    ref = mixers[0]
    for mode in _MODES:
        columns = ["S", "tokens"]
        for name in mixers:
            columns += [f"{name} s", f"{name} MiB"]
        columns += [f"{name}/{ref}" for name in mixers[1:]]
        rows = []
        for s in sizes:
            recs = [by[(name, s, mode)] for name in mixers]
            row: list[object] = [f"{s}x{s}", recs[0].tokens]
            for r in recs:
                row += [r.median if r.median is not None else "skipped", format_bytes(r.peak_bytes)]
            for r in recs[1:]:
                row.append(r.median / recs[0].median if r.median and recs[0].median else None)
            rows.append(row)
        print(f"\n{mode} (median seconds per call; peak MiB of one call)")
        print(format_table(columns, rows))
    print()
    for line in crossing_summary(records, mixers):
        print(line)
    for r in records:
        if r.skipped:
            print(f"skipped: {r.mixer} {r.mode} at {r.size}x{r.size}: {r.skipped}")


def crossing_summary(records: Sequence[MixerRecord], mixers: Sequence[str]) -> list[str]:
    """Sentences saying where each attention mixer's time and memory curves cross the first mixer's."""
    by = _lookup(records)
    sizes = sorted({r.size for r in records})
    ref = mixers[0]
    lines = []
    for name in mixers[1:]:
        for mode in _MODES:
            tokens = [by[(ref, s, mode)].tokens for s in sizes]
            for what, get in (("time", lambda r: r.median), ("memory", lambda r: r.peak_bytes)):
                a = [get(by[(name, s, mode)]) for s in sizes]
                b = [get(by[(ref, s, mode)]) for s in sizes]
                pairs = [(t, x, y) for t, x, y in zip(tokens, a, b) if x and y]
                if not pairs:
                    continue
                cross = find_crossing(tokens, a, b)
                if cross is not None:
                    after = "more" if pairs[-1][1] > pairs[-1][2] else "less"
                    lines.append(
                        f"{mode} {what}: {name} crosses {ref} at ~{cross:,.0f} tokens "
                        f"(~{math.sqrt(cross / (tokens[0] / sizes[0] ** 2)):.0f}^2 per timepoint); "
                        f"above it {name} needs {after}"
                    )
                else:
                    rel = "more" if pairs[0][1] > pairs[0][2] else "less"
                    lines.append(
                        f"{mode} {what}: no crossing between {pairs[0][0]:,} and {pairs[-1][0]:,} tokens; "
                        f"{name} needs {rel} than {ref} throughout"
                    )
    return lines


def plot_mixer_scaling(
    records: Sequence[MixerRecord], out_png: str | os.PathLike[str], title: str = "token mixers"
) -> Path:
    """Plot median time and peak memory vs token count (log-log), forward and forward+backward; PNG.

    Args:
        records: output of :func:`run_mixer_benchmark`.
        out_png: destination, written atomically.
        title: figure title.

    Returns:
        The path written.

    Raises:
        ValueError: when ``records`` is empty.
    """
    if not records:
        raise ValueError("plot_mixer_scaling: records must not be empty")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from longiseg.utils.io import atomic_path

    mixers = list(dict.fromkeys(r.mixer for r in records))
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    styles = {"forward": "--", "forward+backward": "-"}
    for name in mixers:
        for mode in _MODES:
            recs = sorted((r for r in records if r.mixer == name and r.mode == mode), key=lambda r: r.tokens)
            t = [(r.tokens, r.median) for r in recs if r.median is not None]
            m = [(r.tokens, r.peak_bytes / 2**20) for r in recs if r.peak_bytes]
            label = f"{name} ({mode})"
            if t:
                axes[0].plot(*zip(*t), styles[mode], marker="o", label=label)
            if m:
                axes[1].plot(*zip(*m), styles[mode], marker="o", label=label)
    for ax, ylabel in zip(axes, ("median time per call [s]", "peak memory of one call [MiB]")):
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("tokens per sample (T*H*W)")
        ax.set_ylabel(ylabel)
        ax.grid(True, which="both", alpha=0.3)
    axes[0].legend(fontsize=7)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    out = Path(out_png)
    with atomic_path(out, suffix=".png") as tmp:
        fig.savefig(tmp, dpi=120, format="png")
    plt.close(fig)
    return out


# ------------------------------------------------------------------------------------------ model benchmark


@dataclass
class ModelRecord:
    """Training-step measurement of one model.

    Attributes:
        model: registry name.
        dim: ``"2.5D"`` or ``"3D"``.
        input_shape: ``(B, T, C, *S)`` of one step.
        params: parameter count.
        times: seconds per training step (timed repeats).
        peak_bytes: peak memory of one step (``None``: not measured).
        error: set when the model failed to build or run.
    """

    model: str
    dim: str
    input_shape: tuple[int, ...]
    params: int = 0
    times: list[float] = field(default_factory=list)
    peak_bytes: int | None = None
    error: str = ""

    @property
    def samples_per_second(self) -> float | None:
        """Batch size / median step time."""
        return self.input_shape[0] / median(self.times) if self.times else None

    @property
    def voxels_per_second(self) -> float | None:
        """Input voxels per second (batch * prod(S) * T / median step time), comparable across 2.5D and 3D."""
        if not self.times:
            return None
        return math.prod(self.input_shape[:2]) * math.prod(self.input_shape[3:]) / median(self.times)


def model_batch(
    model: nn.Module, batch: int, patch: Sequence[int], timepoints: int = 2, device: torch.device | str = "cpu",
    seed: int = 0,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A random training batch for ``model``: images ``(B, T, C, *S)`` and binary targets.

    ``C`` is ``model.in_channels`` (1 if absent); the baseline target is ``(B, 1, *S)`` and the progression
    target ``(B, T-1, 1, *S)``, about 5 % foreground each; the first half of the batch has empty progression
    targets, as in the balanced sampling of the paper.

    Raises:
        ValueError: for a bad batch, patch or timepoint count.
    """
    check_positive_int("batch", batch)
    check_positive_int("timepoints", timepoints, minimum=2)
    if len(patch) not in (2, 3):
        raise ValueError(f"patch must be (H, W) or (D, H, W), got {tuple(patch)}")
    for p in patch:
        check_positive_int("patch[i]", p)
    channels = int(getattr(model, "in_channels", 1))
    gen = torch.Generator().manual_seed(seed)
    images = torch.randn(batch, timepoints, channels, *patch, generator=gen)
    base = (torch.rand(batch, 1, *patch, generator=gen) < 0.05).float()
    prog = (torch.rand(batch, timepoints - 1, 1, *patch, generator=gen) < 0.05).float()
    prog[: batch // 2] = 0
    return images.to(device), base.to(device), prog.to(device)


def _training_step(model: nn.Module, batch: tuple[torch.Tensor, ...], device: torch.device) -> Callable[[], None]:
    from longiseg.losses import ImbalanceAwareLoss

    loss_fn = ImbalanceAwareLoss(seed=0)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.05)
    images, base, prog = batch
    use_amp = device.type == "cuda"

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=use_amp):
            out = model(images)
        loss = loss_fn(out.map(lambda t: t.float()), base, prog).loss
        loss.backward()
        optimizer.step()

    return step


def run_model_benchmark(
    models: Sequence[str],
    patch_2d: int,
    batch_2d: int,
    patch_3d: int,
    batch_3d: int,
    *,
    timepoints: int = 2,
    repeats: int = 3,
    warmup: int = 1,
    reference: str = "segmast_ms",
    device: torch.device | str = "cpu",
    measure_memory: bool = True,
    progress: bool = True,
) -> list[ModelRecord]:
    """Training-step throughput and peak memory of registry models, interleaved; prints the table.

    One step = forward, :class:`~longiseg.losses.ImbalanceAwareLoss` (the paper's loss), backward, AdamW
    (lr 1e-4, weight decay 0.05). 2.5D models get ``(batch_2d, T, C, patch_2d, patch_2d)``, 3D models
    ``(batch_3d, T, C, patch_3d, patch_3d, patch_3d)``. CUDA steps run under bfloat16 autocast.

    Args:
        models: registry names.
        patch_2d: slice patch side of the 2.5D models.
        batch_2d: batch of the 2.5D models.
        patch_3d: cube side of the 3D models.
        batch_3d: batch of the 3D models.
        timepoints: ``T``.
        repeats: timed steps per model (median quoted).
        warmup: untimed steps per model first (creates the optimizer state).
        reference: model the ratio column is normalised to (time per sample of model / of reference, the
            paper's "training ratio" at the step level); must be in ``models``.
        device: ``"cpu"`` or a CUDA device.
        measure_memory: also measure the peak memory of one step.
        progress: tqdm bars.

    Returns:
        One :class:`ModelRecord` per model, in the order given.

    Raises:
        ValueError: empty ``models``, ``reference`` not among them, or unknown names.
    """
    from longiseg.registry import build_model, list_models, model_info

    if not models:
        raise ValueError("models must name at least one registry model")
    known = set(list_models())
    for name in models:
        if name not in known:
            raise ValueError(f"unknown model {name!r}; see longiseg.list_models()")
    if reference not in models:
        raise ValueError(f"reference {reference!r} must be one of the benchmarked models {list(models)}")
    device = torch.device(device)
    print_header(
        device,
        {
            "benchmark": "training step = forward + ImbalanceAwareLoss + backward + AdamW",
            "config": f"2.5D: batch {batch_2d} x {patch_2d}^2 | 3D: batch {batch_3d} x {patch_3d}^3 | "
            f"T={timepoints} | repeats={repeats}, warm-up {warmup}",
        },
    )
    records: list[ModelRecord] = []
    steps: dict[str, Callable[[], None]] = {}
    for name in models:
        dim = model_info(name).dim
        patch = (patch_3d,) * 3 if dim == "3D" else (patch_2d,) * 2
        bsz = batch_3d if dim == "3D" else batch_2d
        channels = 0
        rec = ModelRecord(name, dim, ())
        try:
            model = build_model(name).to(device).train()
            channels = int(getattr(model, "in_channels", 1))
            rec.params = sum(p.numel() for p in model.parameters())
            rec.input_shape = (bsz, timepoints, channels, *patch)
            step = _training_step(model, model_batch(model, bsz, patch, timepoints, device), device)
            if warmup:
                step()  # first warm-up step here, so that a model failing at this size is reported, not fatal
            steps[name] = step
        except Exception as err:  # report and go on: one broken model must not hide the others
            rec.error = f"{type(err).__name__}: {err}"
        records.append(rec)
    times = time_interleaved(steps, repeats=repeats, warmup=max(0, warmup - 1), device=device, progress=progress)
    by_name = {r.model: r for r in records}
    for name, ts in times.items():
        by_name[name].times = ts
        if measure_memory:
            by_name[name].peak_bytes = peak_memory(steps[name], device)
    _print_model_table(records, reference)
    return records


def _print_model_table(records: Sequence[ModelRecord], reference: str) -> None:
    ref = next(r for r in records if r.model == reference)
    ref_per_sample = median(ref.times) / ref.input_shape[0] if ref.times else None
    rows = []
    for r in records:
        if r.error:
            rows.append([r.model, r.dim, "-", "-", "error", "-", "-", "-", "-"])
            continue
        per_sample = median(r.times) / r.input_shape[0]
        rows.append([
            r.model, r.dim, "x".join(map(str, r.input_shape)), f"{r.params / 1e6:.2f}", median(r.times),
            r.samples_per_second, r.voxels_per_second / 1e6 if r.voxels_per_second else None,
            per_sample / ref_per_sample if ref_per_sample else None, format_bytes(r.peak_bytes),
        ])
    columns = ["model", "dim", "input (B,T,C,*S)", "params M", "step s", "samples/s", "Mvox/s",
               f"time/sample vs {reference}", "peak MiB"]
    print("\ntraining step (median of the timed steps)")
    print(format_table(columns, rows))
    for r in records:
        if r.error:
            print(f"error: {r.model}: {r.error}")


def run_inference_benchmark(
    models: Sequence[str],
    spacing: int,
    patch_2d: int,
    patch_3d: int,
    *,
    batch_2d: int = 32,
    repeats: int = 1,
    device: torch.device | str = "cpu",
    progress: bool = False,
) -> list[dict[str, Any]]:
    """Inference time of one synthetic demo case per model; prints the table.

    The case is :func:`~longiseg.data.demo_cohort.generate_demo_case` ``(0)`` at ``spacing`` mm (2: 98x116x94
    voxels, 4: 49x58x47; T=2, FLAIR + T2). 2.5D models run :class:`~longiseg.inferers.TriplanarInferer` (all
    three planes, 50 % overlap, empty patches skipped, ``batch_2d`` patches per pass); 3D models
    :class:`~longiseg.inferers.SlidingWindowInferer3D` (50 % overlap, one window per pass). Models are untrained;
    only time matters.

    Returns:
        One dict per model: ``model``, ``dim``, ``times`` (seconds), ``patches`` (tri-planar patches computed),
        ``shape`` of the case.

    Raises:
        ValueError: unknown model names or bad sizes.
    """
    from longiseg.data.demo_cohort import DemoCohortConfig, generate_demo_case
    from longiseg.inferers import SlidingWindowInferer3D, TriplanarInferer
    from longiseg.registry import build_model, list_models, model_info

    check_positive_int("spacing", spacing)
    check_positive_int("patch_2d", patch_2d)
    check_positive_int("patch_3d", patch_3d)
    check_positive_int("repeats", repeats)
    known = set(list_models())
    for name in models:
        if name not in known:
            raise ValueError(f"unknown model {name!r}; see longiseg.list_models()")
    device = torch.device(device)
    case, _ = generate_demo_case(0, DemoCohortConfig(spacing=spacing))
    images = torch.as_tensor(case.images)
    shape = tuple(images.shape)
    print(f"\ninference of one case {'x'.join(map(str, shape))} (T, C, D, H, W) at {spacing} mm, overlap 0.5")
    results = []
    for name in tqdm(models, desc="inference", unit="model", disable=not progress):
        dim = model_info(name).dim
        model = build_model(name).to(device).eval()
        if dim == "3D":
            inferer: Any = SlidingWindowInferer3D(roi_size=patch_3d, overlap=0.5, batch_size=1, device=device,
                                                  progress=False)
            patch = f"{patch_3d}^3"
        else:
            inferer = TriplanarInferer(patch_size=patch_2d, overlap=0.5, batch_size=batch_2d, device=device,
                                       progress=False)
            patch = f"{patch_2d}^2"
        times = []
        for _ in range(repeats):
            synchronize(device)
            t0 = time.perf_counter()
            inferer(model, images, case.brain_mask)
            synchronize(device)
            times.append(time.perf_counter() - t0)
        patches = sum(s["computed"] for s in getattr(inferer, "last_stats", {}).values()) or None
        results.append({"model": name, "dim": dim, "patch": patch, "times": times, "patches": patches,
                        "shape": shape})
    rows = [[r["model"], r["dim"], r["patch"], r["patches"], median(r["times"])] for r in results]
    print(format_table(["model", "dim", "patch", "2.5D patches run", "case s (median)"], rows))
    return results
