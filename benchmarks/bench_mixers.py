"""Mixer-level benchmark: MaST (two Mamba scans) vs global self-attention (SDPA) vs SegFormer's efficient attention.

Same width ``C`` for all mixers, input ``(B, T, S, S, C)`` channels-last with T=2 timepoints; forward (no autograd)
and forward+backward time (medians of interleaved repeats) and peak memory as the token count ``T*S*S`` grows, the
token counts where the curves cross, and a PNG plot of time and memory vs tokens.

Usage::

    python benchmarks/bench_mixers.py --quick                    # S = 16, 32, 64 (about a minute on 2 idle cores)
    python benchmarks/bench_mixers.py --plot docs/img/mixer_scaling.png   # S = 32, 64, 128, 256
    python benchmarks/bench_mixers.py --device cuda --plot docs/img/mixer_scaling_gpu.png

Configurations predicted to take longer than ``--max-call-seconds`` per call (from the previous size and the
mixer's cost exponent) are skipped and listed. See ``longiseg.benchmarking`` for how memory is measured.
"""

from __future__ import annotations

import argparse
import math

from longiseg.benchmarking import MIXERS, run_mixer_benchmark


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="S = 16, 32, 64 and 3 repeats")
    parser.add_argument("--sizes", type=int, nargs="+", default=None, help="feature map sides S (override)")
    parser.add_argument("--dim", type=int, default=32, help="mixer width C (default 32, SegMaST's first stage)")
    parser.add_argument("--timepoints", type=int, default=2)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--mixers", nargs="+", default=list(MIXERS), choices=list(MIXERS))
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--max-call-seconds", type=float, default=None,
                        help="skip configurations predicted slower than this (default 5 quick, 60 full; 0 = never)")
    parser.add_argument("--no-memory", action="store_true", help="skip the peak-memory measurement")
    parser.add_argument("--plot", default=None, help="PNG of time and memory vs tokens")
    parser.add_argument("--json", default=None, help="also write the records as JSON")
    args = parser.parse_args(argv)
    run_mixer_benchmark(
        quick=args.quick,
        out_png=args.plot,
        sizes=args.sizes,
        dim=args.dim,
        timepoints=args.timepoints,
        batch=args.batch,
        repeats=args.repeats,
        mixers=args.mixers,
        device=args.device,
        threads=args.threads,
        max_call_seconds=math.inf if args.max_call_seconds == 0 else args.max_call_seconds,
        measure_memory=not args.no_memory,
        json_path=args.json,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
