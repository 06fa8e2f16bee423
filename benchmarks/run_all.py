"""Run every benchmark script, each in its own process (clean peak-memory figures, no shared state).

Usage::

    python benchmarks/run_all.py --quick       # CI / ``make bench``: quick mode of every benchmark
    python benchmarks/run_all.py               # full mode (a report run; long on a CPU)
    python benchmarks/run_all.py --only mixers models --device cuda

``--quick`` is passed to every script that has a quick mode; scripts that are not in this checkout are listed as
missing instead of failing. The exit status is non-zero when any benchmark fails.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent

#: name -> (script, takes --device, extra arguments in quick mode, extra arguments in full mode)
BENCHMARKS: dict[str, tuple[str, bool, list[str], list[str]]] = {
    "mixers": ("bench_mixers.py", True, ["--quick"], []),
    "models": ("bench_models.py", True, ["--quick"], []),
    "selective_scan": ("bench_selective_scan.py", True, ["--quick"], []),
    "triplanar": ("bench_triplanar.py", True, ["--quick", "--skip", "on"], []),
    "metrics": ("bench_metrics.py", False, ["--repeats", "1"], []),
    "registration": ("bench_registration.py", False, ["--quick"], []),
}


def _device(text: str) -> str:
    from longiseg_bench import torch_device  # imports torch: here, so that --help stays instant

    return torch_device(text)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="quick mode of every benchmark")
    parser.add_argument("--only", nargs="+", choices=list(BENCHMARKS), default=None, help="run a subset")
    parser.add_argument("--device", type=_device, default=None,
                        help="cpu, cuda or cuda:N: passed to the scripts that take --device")
    args = parser.parse_args(argv)

    names = args.only or list(BENCHMARKS)
    status: dict[str, str] = {}
    for name in names:
        script, takes_device, quick_args, full_args = BENCHMARKS[name]
        path = HERE / script
        if not path.exists():
            status[name] = "missing"
            print(f"== {name}: {script} not found, skipped", flush=True)
            continue
        cmd = [sys.executable, str(path), *(quick_args if args.quick else full_args)]
        if args.device and takes_device:
            cmd += ["--device", args.device]
        print(f"\n== {name}: {' '.join(cmd[1:])}", flush=True)
        t0 = time.perf_counter()
        rc = subprocess.call(cmd)
        status[name] = f"{'ok' if rc == 0 else f'FAILED (exit {rc})'} in {time.perf_counter() - t0:.0f} s"
    print("\n== summary")
    for name, state in status.items():
        print(f"{name}: {state}")
    return 0 if all(s.startswith(("ok", "missing")) for s in status.values()) else 1


if __name__ == "__main__":
    raise SystemExit(main())
