"""Tooling shared by the benchmark scripts of ``benchmarks/`` (not part of the installed ``longiseg`` package).

The scripts put this folder on ``sys.path`` simply by being run (``python benchmarks/bench_mixers.py``), so they
import ``longiseg_bench`` like any package. One concept per module:

* :mod:`longiseg_bench.environment`: the header every benchmark prints (machine, CPU, threads, scan backend).
* :mod:`longiseg_bench.timing`: interleaved medians with :class:`torch.utils.benchmark.Timer`.
* :mod:`longiseg_bench.memory`: peak memory of one call (CUDA allocator; on CPU the resident-set rise).
* :mod:`longiseg_bench.tables`: markdown tables for ``docs/benchmarks.md``.
* :mod:`longiseg_bench.flops`: the matrix-product FLOPs of one call (a floor for step-time ratios).
* :mod:`longiseg_bench.arguments`: argparse types (positive ints, lists of them, output files, devices) for one-line usage
  errors.
"""

from longiseg_bench.arguments import (
    check_scan_environment,
    int_list,
    nonnegative_int,
    output_file,
    positive_int,
    torch_device,
    uses_selective_scan,
)
from longiseg_bench.environment import environment_info, format_header, print_header, select_device
from longiseg_bench.flops import matrix_product_flops
from longiseg_bench.memory import enable_cpu_memory_tracking, peak_memory
from longiseg_bench.tables import format_bytes, format_table
from longiseg_bench.timing import time_interleaved

__all__ = [
    "check_scan_environment",
    "int_list",
    "nonnegative_int",
    "output_file",
    "positive_int",
    "torch_device",
    "uses_selective_scan",
    "environment_info",
    "format_header",
    "print_header",
    "select_device",
    "enable_cpu_memory_tracking",
    "peak_memory",
    "format_bytes",
    "format_table",
    "matrix_product_flops",
    "time_interleaved",
]
