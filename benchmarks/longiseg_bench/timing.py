"""Interleaved timing of compared variants with :class:`torch.utils.benchmark.Timer`.

Each variant gets one ``Timer`` (with the process's torch thread count, not ``Timer``'s default of one thread;
``Timer``'s clock synchronises CUDA). The variants are measured round-robin (``A B C A B C ...``), one
:meth:`~torch.utils.benchmark.Timer.blocked_autorange` per variant and round, and each variant's rounds are
merged into one :class:`~torch.utils.benchmark.Measurement`, whose ``median`` the tables quote. On a shared,
noisy machine interleaving exposes all variants to the same load, so their *ratios* stay meaningful even when
the absolute times drift.

Cost: ``blocked_autorange`` first runs the statement untimed to choose how many calls one timed block holds
(this is the warm-up). A call longer than ``min_run_time`` therefore runs twice per round, once untimed and once
timed; shorter calls are repeated in blocks until ``min_run_time`` has passed.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping

import torch
from tqdm.auto import tqdm

from longiseg.utils.validation import check_positive_int

# torch.utils.benchmark imports torch.utils.cpp_extension, which warns "No CUDA runtime is found" on every CPU
# machine at import; these benchmarks compile no extension, so the warning says nothing here.
logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)
from torch.utils.benchmark import Measurement, Timer  # noqa: E402

__all__ = ["time_interleaved"]


def time_interleaved(
    fns: Mapping[str, Callable[[], object]],
    rounds: int = 3,
    min_run_time: float = 0.2,
    *,
    label: str = "",
    progress: bool = False,
) -> dict[str, Measurement]:
    """Time several zero-argument callables round-robin; one merged ``Measurement`` per callable.

    Args:
        fns: name -> zero-argument callable (one forward pass, one training step, ...).
        rounds: interleaved rounds (>= 1); every callable gets one ``blocked_autorange`` per round.
        min_run_time: seconds of timed calls per callable and round (>= 0; 0 = one timed block).
        label: ``Timer`` label (shown when a ``Measurement`` is printed).
        progress: tqdm bar over the rounds.

    Returns:
        name -> :class:`torch.utils.benchmark.Measurement` in seconds per call (``.median``, ``.iqr``,
        ``.times``), in the order of ``fns``.

    Raises:
        ValueError: for no callables, ``rounds < 1`` or a negative ``min_run_time``.
        TypeError: when a value of ``fns`` is not callable.
    """
    if not fns:
        raise ValueError("time_interleaved: fns must hold at least one callable")
    for name, fn in fns.items():
        if not callable(fn):
            raise TypeError(f"time_interleaved: fns[{name!r}] must be callable, got {type(fn).__name__}")
    check_positive_int("rounds", rounds)
    if not min_run_time >= 0:
        raise ValueError(f"min_run_time must be >= 0 seconds, got {min_run_time}")
    threads = torch.get_num_threads()
    timers = {name: Timer("fn()", globals={"fn": fn}, label=label, description=name, num_threads=threads)
              for name, fn in fns.items()}
    runs: dict[str, list[Measurement]] = {name: [] for name in fns}
    for _ in tqdm(range(rounds), desc="timing", unit="round", disable=not progress, leave=False):
        for name, timer in timers.items():
            runs[name].append(timer.blocked_autorange(min_run_time=min_run_time))
    return {name: Measurement.merge(ms)[0] for name, ms in runs.items()}
