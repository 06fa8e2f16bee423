"""Mixer-level benchmark: MaST (two Mamba scans) vs global self-attention (SDPA) vs SegFormer's efficient attention.

Same width ``C`` for all mixers, input ``(B, T, S, S, C)`` channels-last with T=2 timepoints; forward (no autograd)
and forward+backward time (medians of interleaved ``torch.utils.benchmark`` rounds) and peak memory as the token
count ``T*S*S`` grows, the token counts where the curves cross, and a PNG plot of time and memory vs tokens.

Usage::

    python benchmarks/bench_mixers.py --quick                    # S = 16, 32, 64 (a minute or two on 2 idle cores)
    python benchmarks/bench_mixers.py --plot docs/img/mixer_scaling.png   # S = 32, 64, 128, 256
    python benchmarks/bench_mixers.py --device cuda --plot docs/img/mixer_scaling_gpu.png

Configurations predicted to take longer than ``--max-call-seconds`` per call (from the previous size and the
mixer's cost exponent) are skipped and listed. ``longiseg_bench.memory`` explains how memory is measured.
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn as nn
from longiseg_bench import (
    check_scan_environment,
    format_bytes,
    format_table,
    output_file,
    peak_memory,
    positive_int,
    print_header,
    select_device,
    time_interleaved,
    torch_device,
)
from tqdm.auto import tqdm

from longiseg.utils.validation import check_positive_int

#: Mixers of the benchmark: name -> (description, cost exponent in the token count used to predict the time of
#: the next size, so that hopeless configurations are skipped instead of run).
MIXERS: dict[str, tuple[str, float]] = {
    "mast": ("MaSTMixer: two Mamba scans (temporal-first + spatial-first), linear in tokens", 1.0),
    "global_attn": ("GlobalSelfAttention: SDPA over all T*H*W tokens, quadratic", 2.0),
    "efficient_attn": ("EfficientSelfAttention (SegFormer, R=8): per timepoint, keys/values reduced", 2.0),
}
MODES = ("forward", "forward+backward")


def build_mixer(name: str, dim: int) -> nn.Module:
    """A token mixer of width ``dim`` mapping ``(B, T, H, W, C)`` to the same shape.

    ``"mast"``: ``MaSTMixer`` (paper defaults: d_state 16, expand 2); ``"global_attn"``: ``GlobalSelfAttention``
    (one head, no reduction); ``"efficient_attn"``: ``EfficientSelfAttention`` (one head, reduction 8, the first
    MiT stage's setting).

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
        times: seconds per call of the timed blocks (empty when skipped).
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
        return statistics.median(self.times) if self.times else None


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


def run_mixer_benchmark(
    quick: bool = False,
    out_png: str | os.PathLike[str] | None = None,
    *,
    sizes: Sequence[int] | None = None,
    dim: int = 32,
    timepoints: int = 2,
    batch: int = 1,
    rounds: int = 3,
    min_run_time: float = 0.2,
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
    of all mixers are timed interleaved (``longiseg_bench.timing``); after all sizes are timed, the peak memory
    of one call each is measured (``longiseg_bench.memory``; on CPU this switches glibc to tracking mode for the
    rest of the process). A configuration whose predicted time (last median scaled by the mixer's cost exponent
    in :data:`MIXERS`) exceeds ``max_call_seconds`` is skipped and reported as such.

    Args:
        quick: sizes 16/32/64 (a minute or two on 2 idle cores); else 32/64/128/256.
        out_png: write the time/memory vs tokens plot here (PNG).
        sizes: feature map sides, overriding the mode's default.
        dim: width ``C`` of every mixer (32: SegMaST's first stage, where the token count is largest).
        timepoints: ``T`` (2: baseline + one follow-up).
        batch: ``B``.
        rounds: interleaved timing rounds.
        min_run_time: seconds of timed calls per configuration and round.
        mixers: subset of :data:`MIXERS`; the first is the reference of the ratio columns.
        device: ``"cpu"`` or a CUDA device.
        threads: ``torch.set_num_threads`` for the run (default: leave as is).
        max_call_seconds: skip configurations predicted slower than this (default 5 s quick, 60 s full;
            ``math.inf`` never skips).
        measure_memory: also measure the peak memory.
        json_path: also write the records (and the environment) as JSON.
        progress: tqdm bar over the sizes.

    Returns:
        The :class:`MixerRecord` list (sizes x mixers x passes).

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
    check_positive_int("rounds", rounds)
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
            "config": f"B={batch}, T={timepoints}, C={dim}, sizes S={list(sizes)}, "
                      f"{rounds} interleaved rounds of >= {min_run_time} s",
            "memory": "peak CUDA allocation" if device.type == "cuda" else "peak resident-set rise (VmHWM)",
        },
    )
    for name in mixers:
        print(f"  {name}: {MIXERS[name][0]} ({params[name] / 1e3:.1f} k parameters)")
    records: list[MixerRecord] = []
    last: dict[tuple[str, str], tuple[int, float]] = {}
    timed_at: dict[int, list[str]] = {}
    # Phase 1: timing with the default allocator, all sizes. Phase 2 (below): peak memory, which switches the
    # allocator to tracking mode for the rest of the process.
    for size in tqdm(sizes, desc="mixer timing", unit="size", disable=not progress):
        tokens = timepoints * size * size
        x = _mixer_input(batch, timepoints, size, dim, device)
        calls: dict[str, Callable[[], None]] = {}
        size_records: dict[str, MixerRecord] = {}
        for name in mixers:
            for mode in MODES:
                rec = MixerRecord(name, size, tokens, mode)
                prev = last.get((name, mode))
                if prev is not None:
                    estimate = prev[1] * (tokens / prev[0]) ** MIXERS[name][1]
                    if estimate > max_call_seconds:
                        rec.skipped = f"predicted {estimate:.0f} s > {max_call_seconds:.0f} s per call"
                if not rec.skipped:
                    calls[f"{name}/{mode}"] = _mixer_call(modules[name], x, mode)
                size_records[f"{name}/{mode}"] = rec
        measured = time_interleaved(calls, rounds, min_run_time, label=f"S={size}") if calls else {}
        for key, m in measured.items():
            rec = size_records[key]
            rec.times = m.times
            last[(rec.mixer, rec.mode)] = (tokens, m.median)
        timed_at[size] = list(measured)
        del x, calls
        records.extend(size_records.values())
    if measure_memory:
        by_key = {(r.size, f"{r.mixer}/{r.mode}"): r for r in records}
        for size in tqdm(sizes, desc="mixer memory", unit="size", disable=not progress):
            x = _mixer_input(batch, timepoints, size, dim, device)
            for key in timed_at[size]:
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
    for mode in MODES:
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


def crossing_summary(records: Sequence[MixerRecord], mixers: Sequence[str]) -> list[str]:
    """Sentences saying where each other mixer's time and memory curves cross the first mixer's."""
    by = _lookup(records)
    sizes = sorted({r.size for r in records})
    ref = mixers[0]
    lines = []
    for name in mixers[1:]:
        for mode in MODES:
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

    from longiseg.utils.io import atomic_save_figure

    mixers = list(dict.fromkeys(r.mixer for r in records))
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    styles = {"forward": "--", "forward+backward": "-"}
    for name in mixers:
        for mode in MODES:
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
    atomic_save_figure(fig, out, dpi=120)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="S = 16, 32, 64")
    parser.add_argument("--sizes", type=positive_int, nargs="+", default=None, help="feature map sides S (override)")
    parser.add_argument("--dim", type=positive_int, default=32, help="mixer width C (default 32, SegMaST's first stage)")
    parser.add_argument("--timepoints", type=positive_int, default=2)
    parser.add_argument("--batch", type=positive_int, default=1)
    parser.add_argument("--rounds", "--repeats", dest="rounds", type=positive_int, default=3,
                        help="interleaved timing rounds (default 3)")
    parser.add_argument("--min-run-time", type=float, default=0.2,
                        help="seconds of timed calls per configuration and round (default 0.2)")
    parser.add_argument("--mixers", nargs="+", default=list(MIXERS), choices=list(MIXERS))
    parser.add_argument("--device", type=torch_device, default="cpu", help="cpu, cuda or cuda:N")
    parser.add_argument("--threads", type=positive_int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--max-call-seconds", type=float, default=None,
                        help="skip configurations predicted slower than this (default 5 quick, 60 full; 0 = never)")
    parser.add_argument("--no-memory", action="store_true", help="skip the peak-memory measurement")
    parser.add_argument("--plot", type=output_file, default=None, help="PNG of time and memory vs tokens")
    parser.add_argument("--json", type=output_file, default=None, help="also write the records as JSON")
    args = parser.parse_args(argv)
    check_scan_environment(parser, args.device, needed="mast" in args.mixers)
    select_device(args.device)
    try:
        run_mixer_benchmark(
            quick=args.quick,
            out_png=args.plot,
            sizes=args.sizes,
            dim=args.dim,
            timepoints=args.timepoints,
            batch=args.batch,
            rounds=args.rounds,
            min_run_time=args.min_run_time,
            mixers=args.mixers,
            device=args.device,
            threads=args.threads,
            max_call_seconds=math.inf if args.max_call_seconds == 0 else args.max_call_seconds,
            measure_memory=not args.no_memory,
            json_path=args.json,
        )
    except KeyboardInterrupt:  # Ctrl-C: no traceback; the exit status says it (longiseg bench prints the line)
        return 130
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
