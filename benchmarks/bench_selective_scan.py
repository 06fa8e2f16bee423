r"""Selective-scan benchmark: forward+backward time and peak memory of the scan backends vs mambapy and SDPA.

Usage::

    python benchmarks/bench_selective_scan.py            # full table (L = 1k, 4k, 16k; memory at L=16k, D=256)
    python benchmarks/bench_selective_scan.py --quick    # < 60 s: L = 1k, 4k, 1 rep; memory at L=4k, D=256
    python benchmarks/bench_selective_scan.py --quick --forward   # forward only, no autograd (inference)
    python benchmarks/bench_selective_scan.py --device cuda --lengths 1024,4096,16384,65536 \
        --methods triton,cuda,chunked                              # GPU: Triton vs mamba-ssm vs chunked
    python benchmarks/bench_selective_scan.py --interleaved 15 --threads 1 --lengths 4096 \
        --methods chunked,numba,numba_cl                           # ratios from one process, round-robin

Every configuration runs in its own subprocess so that peak memory is measured cleanly: on CPU as the rise of
the process's peak resident set size (``ru_maxrss``) over its resident size just before the first timed call,
on CUDA with ``torch.cuda.max_memory_allocated``. Times are medians of wall-clock forward+backward; the CPU time
of the process is shown too because it is less sensitive to other load on a shared machine. On a machine whose
speed drifts between runs (a shared VM), ``--interleaved ROUNDS`` times the methods in one process instead, one call
of each in turn for ROUNDS rounds (medians; no memory column), so that every method meets the same load and the
ratios to the chunked scan stay comparable.

Methods (all compute the same selective scan: softplus(delta + bias), D skip, z gate; B=2, N=16):
  chunked    longiseg's chunked scan with the recomputing backward
  numba      longiseg's compiled CPU kernels (forward and backward), when numba is installed, on the canonical
             (B, D, L) inputs of selective_scan (time contiguous: the kernels transpose tiles of 16 x 64)
  numba_cl   the same kernels on channel-last (B, L, D) inputs (selective_scan_cpu_channels_last), the layout
             Mamba's numba path runs in (channels contiguous)
  triton     longiseg's Triton kernels (forward and backward), CUDA only
  cuda       mamba-ssm's CUDA kernel (selective_scan_fn), CUDA only, when mamba-ssm is installed
  reference  longiseg's sequential reference (autograd); at long L it is extrapolated linearly from a shorter run
  mambapy    mambapy's parallel scan (pscan) on (B, L, D, N) tensors built as mambapy's selective_scan does
  sdpa       torch scaled_dot_product_attention, one head of width D, causal, as a width-matched attention cost
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from longiseg_bench import (
    int_list,
    nonnegative_int,
    positive_int,
    print_header,
    select_device,
    time_interleaved,
    torch_device,
)

METHODS = ("chunked", "numba", "numba_cl", "triton", "cuda", "reference", "mambapy", "sdpa")
CPU_ONLY, CUDA_ONLY = ("numba", "numba_cl"), ("triton", "cuda")
#: Optional backends (numba, triton, mamba-ssm, mambapy): when not named in --methods, their failure (not
#: installed) is reported but does not fail the run; every other failed measurement does (exit status 1).
OPTIONAL = ("numba", "numba_cl", "triton", "cuda", "mambapy")
_FORWARD_ENV = "LONGISEG_BENCH_FORWARD_ONLY"


def _rss_bytes() -> int:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _inputs(batch: int, dim: int, seqlen: int, dstate: int, device: str) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    xs = [
        torch.randn(batch, dim, seqlen, generator=g),
        torch.randn(batch, dim, seqlen, generator=g) - 2.0,
        -(0.5 + torch.rand(dim, dstate, generator=g)),
        torch.randn(batch, dstate, seqlen, generator=g),
        torch.randn(batch, dstate, seqlen, generator=g),
        torch.randn(dim, generator=g),
        torch.randn(batch, dim, seqlen, generator=g),
        torch.randn(dim, generator=g),
    ]
    return [x.to(device).requires_grad_() for x in xs]


def _mambapy_scan(u, delta, A, B, C, D, z, delta_bias):  # noqa: N803 - math names
    from mambapy.pscan import pscan

    dt = F.softplus(delta + delta_bias[:, None]).transpose(1, 2)  # (B, L, D)
    dA = torch.exp(dt.unsqueeze(-1) * A)  # (B, L, D, N)
    bx = (dt * u.transpose(1, 2)).unsqueeze(-1) * B.transpose(1, 2).unsqueeze(2)  # (B, L, D, N)
    hs = pscan(dA, bx)
    y = (hs @ C.transpose(1, 2).unsqueeze(-1)).squeeze(3).transpose(1, 2)  # (B, D, L)
    return (y + D[:, None] * u) * F.silu(z)


def _step(method: str, xs: list[torch.Tensor]) -> None:
    from longiseg.ssm import selective_scan

    forward_only = os.environ.get(_FORWARD_ENV) == "1"
    with torch.no_grad() if forward_only else torch.enable_grad():
        if method == "sdpa":
            q, k, v = xs
            out = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        elif method == "mambapy":
            out = _mambapy_scan(*xs)
        elif method == "numba_cl":
            from longiseg.ssm.cpu_kernel import selective_scan_cpu_channels_last

            u, delta, A, B, C, D, z, delta_bias = xs
            out = selective_scan_cpu_channels_last(u, delta, A, B, C, D, z=z, delta_bias=delta_bias,
                                                   delta_softplus=True)
        else:
            out = selective_scan(*xs, delta_softplus=True, backend=method)
    if not forward_only:
        out.sum().backward()


def _method_inputs(method: str, seqlen: int, dim: int, device: str) -> list[torch.Tensor]:
    """The inputs of one method's call (B = 2, N = 16), leaf tensors that require gradients."""
    batch, dstate = 2, 16
    if method == "sdpa":
        g = torch.Generator().manual_seed(0)
        return [torch.randn(batch, 1, seqlen, dim, generator=g).to(device).requires_grad_() for _ in range(3)]
    xs = _inputs(batch, dim, seqlen, dstate, device)
    if method == "numba_cl":  # the same values channel-last: u, delta, z (B, L, D); B, C (B, L, N)
        xs = [x.detach().mT.contiguous().requires_grad_() if i in (0, 1, 3, 4, 6) else x for i, x in enumerate(xs)]
    return xs


def worker(method: str, seqlen: int, dim: int, reps: int, device: str, threads: int) -> dict:
    """Run one configuration in this process and return times (s) and the peak memory rise (bytes)."""
    torch.set_num_threads(threads)
    select_device(device)  # the synchronisation and memory statistics below measure this GPU
    xs = _method_inputs(method, seqlen, dim, device)
    on_cuda = device.startswith("cuda")
    sync = torch.cuda.synchronize if on_cuda else (lambda: None)
    if on_cuda:
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    else:
        base = _rss_bytes()
    if method != "reference":  # one untimed warm-up call (allocator, page faults, lazy imports)
        _step(method, xs)
    walls, cpus = [], []
    for _ in range(reps):
        for x in xs:
            x.grad = None
        sync()
        w0, c0 = time.perf_counter(), time.process_time()
        _step(method, xs)
        sync()
        walls.append(time.perf_counter() - w0)
        cpus.append(time.process_time() - c0)
    if on_cuda:
        peak = torch.cuda.max_memory_allocated() - base
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - base
    return {"wall": statistics.median(walls), "cpu": statistics.median(cpus), "peak": max(0, peak)}


def _run(method: str, seqlen: int, dim: int, reps: int, device: str, threads: int) -> dict:
    cmd = [
        sys.executable,
        __file__,
        "--worker",
        method,
        str(seqlen),
        str(dim),
        str(reps),
        device,
        str(threads),
    ]
    env = dict(
        os.environ,
        PYTHONPATH=os.pathsep.join(
            [os.path.dirname(os.path.dirname(os.path.abspath(__file__))), os.environ.get("PYTHONPATH", "")]
        ),
    )
    res = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    if res.returncode != 0:
        return {"error": (res.stderr.strip().splitlines() or ["failed"])[-1]}
    return json.loads(res.stdout.strip().splitlines()[-1])


def interleaved(methods: list[str], seqlen: int, dim: int, rounds: int, device: str) -> dict[str, float]:
    """Median seconds per call of every method, timed round-robin in this process (``rounds`` rounds)."""
    def call(method: str) -> Callable[[], None]:
        xs = _method_inputs(method, seqlen, dim, device)

        def run() -> None:
            for x in xs:
                x.grad = None
            _step(method, xs)

        return run

    fns = {m: call(m) for m in methods}
    for fn in fns.values():  # warm-up: compilation, allocator, lazy imports
        fn()
    return {m: r.median for m, r in time_interleaved(fns, rounds=rounds, min_run_time=0.0, progress=True).items()}


def _fmt_mem(b: float) -> str:
    return f"{b / 2**20:8.0f}"


def failure_label(method: str, error: str, required: set[str]) -> str:
    """How a failed measurement is shown: ``error`` where it fails the run (a ``required`` method); for an
    optional backend that is not installed or does not run on this device, ``not available``; any other failure
    of an optional one, ``error (optional, not counted)``."""
    if method in required:
        return "error"
    unavailable = error.startswith(("ModuleNotFoundError", "ImportError")) or any(
        phrase in error for phrase in ("unavailable", "not importable", "not installed", "the tensors are on", "CPU only"))
    return "not available" if unavailable else "error (optional, not counted)"


def failed_measurements(results: list[tuple[str, int, dict]], required: set[str]) -> list[str]:
    """``"METHOD at L=N: ERROR"`` of every failed measurement that fails the run: one of a ``required`` method,
    or every failure when nothing was measured at all."""
    failed = [(m, n, r["error"]) for m, n, r in results if "error" in r]
    if len(failed) < len(results):
        failed = [f for f in failed if f[0] in required]
    return [f"{m} at L={n}: {err}" for m, n, err in failed]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--quick", action="store_true", help="short run (< 60 s idle): L = 1k, 4k, one repetition"
    )
    ap.add_argument("--device", type=torch_device, default="cuda" if torch.cuda.is_available() else "cpu",
                    help="cpu, cuda or cuda:N (default: cuda where there is one)")
    ap.add_argument("--threads", type=positive_int, default=torch.get_num_threads())
    ap.add_argument("--reps", type=positive_int, default=None, help="timed repetitions per configuration")
    ap.add_argument("--forward", action="store_true", help="time the forward pass only, without autograd")
    ap.add_argument("--lengths", type=int_list, default=None,
                    help="comma-separated sequence lengths (default: 1024,4096,16384)")
    ap.add_argument("--methods", default=None, help=f"comma-separated subset of {','.join(METHODS)}")
    ap.add_argument(
        "--interleaved", type=nonnegative_int, default=0, metavar="ROUNDS",
        help="time the methods round-robin in one process for ROUNDS rounds (ratios on a noisy machine; no memory)",
    )
    ap.add_argument(
        "--worker", nargs=6, metavar=("METHOD", "L", "D", "REPS", "DEVICE", "THREADS"), help=argparse.SUPPRESS
    )
    args = ap.parse_args(argv)
    if args.worker:
        m, seqlen, dim, reps, device, threads = args.worker
        print(json.dumps(worker(m, int(seqlen), int(dim), int(reps), device, int(threads))))
        return 0

    if args.forward:
        os.environ[_FORWARD_ENV] = "1"  # inherited by the worker subprocesses
    lengths = (1024, 4096) if args.quick else (1024, 4096, 16384)
    if args.lengths:
        lengths = args.lengths
    reps = args.interleaved or args.reps or (1 if args.quick else 3)
    ref_max = 256 if args.quick else 4096  # longest L the sequential reference really runs
    dim = 128
    methods = [m for m in METHODS if m not in (CUDA_ONLY if args.device == "cpu" else CPU_ONLY)]
    if args.methods:
        unknown = set(args.methods.split(",")) - set(METHODS)
        if unknown:
            ap.error(f"--methods: unknown {sorted(unknown)}; expected a subset of {','.join(METHODS)}")
        methods = [m for m in METHODS if m in args.methods.split(",")]
    required = set(args.methods.split(",")) if args.methods else {m for m in methods if m not in OPTIONAL}
    if "chunked" not in methods:
        methods.insert(0, "chunked")  # the speedup column's baseline
    print_header(args.device, {
        "benchmark": f"selective scan {'forward only' if args.forward else 'forward+backward'}, B=2 D={dim} N=16",
        "threads": f"{args.threads} (each measurement's process)",
        "repetitions": reps,
    })
    if args.interleaved:
        torch.set_num_threads(args.threads)
        select_device(args.device)
        timed = [m for m in methods if m not in ("reference", "mambapy")]  # too slow / optional: not interleaved
        print(f"{'L':>6} {'method':>10}  {'wall s':>8}")
        for seqlen in lengths:
            try:
                medians = interleaved(timed, seqlen, dim, args.interleaved, args.device)
            except Exception as err:  # noqa: BLE001 - one failed measurement: say which, exit 1
                print(f"{ap.prog}: error: interleaved timing of {','.join(timed)} at L={seqlen} failed: "
                      f"{' '.join(str(err).split()) or type(err).__name__}", file=sys.stderr)
                return 1
            for method in timed:
                ratio = "" if method == "chunked" else f"{medians['chunked'] / medians[method]:.1f}x faster"
                print(f"{seqlen:>6} {method:>10}  {medians[method]:8.4f} s (median of {args.interleaved}, interleaved)  "
                      f"{ratio}")
        return 0
    results: list[tuple[str, int, dict]] = []  # (method, L, measurement or {"error": ...}) of every call
    print(f"{'L':>6} {'method':>10} {'wall s':>9} {'cpu s':>9} {'peak MiB':>9} {'time vs chunked':>16}")
    for seqlen in lengths:
        rows: dict[str, dict] = {}
        for method in methods:
            if method == "reference" and seqlen > ref_max:
                r = _run(method, ref_max, dim, 1, args.device, args.threads)
                results.append((method, ref_max, r))
                scale = seqlen / ref_max
                rows[method] = r if "error" in r else {k: v * scale for k, v in r.items()} | {"extrapolated": True}
                continue
            rows[method] = _run(
                method, seqlen, dim, 1 if method == "reference" else reps, args.device, args.threads
            )
            results.append((method, seqlen, rows[method]))
        for method in methods:
            r = rows[method]
            if "error" in r:  # an optional backend not asked for (not installed) does not fail the run
                print(f"{seqlen:>6} {method:>10}  {failure_label(method, r['error'], required)}: {r['error']}")
                continue
            tag = "~" if r.get("extrapolated") else " "
            ch = rows["chunked"]
            speed = (
                ""
                if method == "chunked" or "error" in ch
                else f"{r['wall'] / ch['wall']:.3g}x (cpu {r['cpu'] / ch['cpu']:.3g}x)"  # < 1: faster than chunked
            )
            print(
                f"{seqlen:>6} {method:>10} {tag}{r['wall']:8.3f} {r['cpu']:9.3f} {_fmt_mem(r['peak'])} {speed:>16}"
            )
        for fast in ("numba", "numba_cl"):
            if fast in rows and "error" not in rows[fast] and "error" not in rows["chunked"]:
                nb, ch = rows[fast], rows["chunked"]
                print(
                    f"{seqlen:>6} {fast} is {ch['wall'] / nb['wall']:.1f}x faster than chunked "
                    f"(cpu time {ch['cpu'] / nb['cpu']:.1f}x)"
                )
        tri, cu = rows.get("triton", {}), rows.get("cuda", {})
        if "wall" in tri and "wall" in cu:
            print(f"{seqlen:>6} triton / mamba-ssm cuda: {tri['wall'] / cu['wall']:.2f}x")
    mem_len = 4096 if args.quick else 16384
    print(f"# peak memory, L={mem_len}, D=256 ({'forward' if args.forward else 'fwd+bwd'}, one call)")
    mem_methods = ("chunked", "numba") if args.quick else ("chunked", "numba", "triton", "cuda", "mambapy")
    for method in [m for m in mem_methods if m in methods]:
        r = _run(method, mem_len, 256, 1, args.device, args.threads)
        results.append((method, mem_len, r))
        print(
            f"{mem_len:>6} {method:>10} "
            + (
                f"peak {_fmt_mem(r['peak']).strip()} MiB, wall {r['wall']:.3f} s"
                if "error" not in r
                else f"{failure_label(method, r['error'], required)}: {r['error']}"
            )
        )
    print(f"# '~' = extrapolated linearly from the reference at L={ref_max}")
    failed = failed_measurements(results, required)
    if failed:
        print(f"{ap.prog}: error: {len(failed)} measurement(s) failed: {'; '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
