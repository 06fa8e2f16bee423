"""Fused CPU selective scan, forward and backward, compiled with numba (optional: ``pip install longiseg[cpu]``).

The chunked PyTorch scan materialises ``(B, D, L, N)`` tensors and is bound by memory traffic and per-operation
overhead on a CPU. This backend runs the recurrence in compiled loops per job = ``(batch, block of at most 64
channels that share one group of B and one of C)``, parallel over the jobs, keeping the job's ``(N, 64)`` state in
L1:

    for t in 0..L-1:   h[d, n] = exp(delta[d, t] A[d, n]) h[d, n] + delta[d, t] u[d, t] B[g(d), n, t]
                       y[d, t] = sum_n C[g(d), n, t] h[d, n] + D[d] u[d, t],   out = y silu(z)

Everything is fused into the kernels: the bias and softplus of ``delta`` (and softplus' derivative in the
backward pass), ``sigmoid(z)`` and ``silu(z)``, the skip, the gate and the reductions over channels and time.
The kernels read ``u``, ``delta``, ``z`` and the output gradient and write the output and its gradients in the
caller's layout (channel-first ``(B, D, L)`` or channel-last ``(B, L, D)``, also strided views), one tile of 16
positions (64 in the forward pass where time is the contiguous axis) x 64 channels at a time along the
contiguous axis, prefetching the next tile where that axis is time and then transposing float32 tiles in 8 x 8
blocks in vector registers: no transposed or converted copy of a ``(B, L, D)`` tensor is made (except to change the dtype). The kernels are
compiled with NumPy's error model (a division by zero gives ``inf``, not an exception), without which LLVM does
not vectorise loops that divide.

**The exponential.** In float32 the kernels evaluate ``exp(x) = 2^(x log2 e)`` like mamba-ssm's CUDA kernel
(``exp2f``): ``2^x = 2^r 2^f`` with ``r = rint(x)`` and ``f = x - r`` in ``[-1/2, 1/2]``, a degree-6 polynomial for
``2^f`` (Estrin's scheme: three dependent steps instead of Horner's six) and ``r`` added to its exponent bits
(:func:`exp2_nonpositive`, relative error < 2e-7, tested against ``torch.exp2``); this lets the compiler vectorise
the state update. Arguments below ``-125`` (``2^-125 = 2.4e-38``) are clamped there: a decay factor that small is
zero for every purpose; positive arguments (a positive ``A``) are evaluated the same way and clamped at 128, where
``2^128`` is ``inf``. The coefficients reach the kernels as an argument (``poly``, :data:`_POLY`), not as
constants in the code: LLVM rematerialises constants from memory in every iteration of a vectorised loop, but keeps
values it cannot know in registers (the state update took 1.2-1.3x less time). Float64 inputs use the exact
``math.exp`` (the path the float64 tests compare with the reference).

**Gradients.** The backward kernel runs the adjoint recurrence ``g_t = C_t gy_t + exp(delta_{t+1} A) g_{t+1}``
(``g_{L-1}`` also receives the last state's gradient). The forward pass keeps the state before every 16th
position (``1/16`` of the state sequence); the backward pass recomputes one such chunk of a job at a time (its
states and decays, in L2) and sweeps it in reverse, forming every gradient on the way. ``dA``, ``dD`` and
``d(delta_bias)`` and ``dB``/``dC`` (unless input-independent and per channel) are sums over jobs: each parallel work
item accumulates into its own partial buffer, summed afterwards, so no element is written by two threads. The
partial buffers are float64 (the sums over the sequence gather a chunk in the compute dtype first), so float32
rounding does not grow with ``L``.
Nothing of size ``(B, D, L, N)`` is stored: memory is linear in ``L``.

**Threads.** The kernels use ``torch.get_num_threads()`` numba threads (capped by numba's own limit) on numba's
work-queue threading layer (unless ``NUMBA_THREADING_LAYER`` is set), and launches are serialised by a lock.
The first call in a fresh environment compiles the kernels (tens of seconds, per dtype); numba caches the machine
code next to the module, later processes load it in about a second.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import math
import os
import threading
import types
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch

from longiseg.ssm.inputs import compute_dtype, first_order_gradients, prepare_scan_inputs
from longiseg.utils.logging import get_logger, log_once
from longiseg.utils.tracing import constant_under_compile, outside_compiled_graphs

_LOGGER = get_logger("longiseg.ssm")

__all__ = [
    "cpu_kernel_available",
    "require_cpu_kernel",
    "selective_scan_cpu",
    "selective_scan_cpu_channels_last",
    "exp2_nonpositive",
]

_LOG2E = 1.4426950408889634
#: Channels per job (the state of one job, N x 64 floats, stays in L1; loops over 64 channels vectorise well).
_CHANNEL_BLOCK = 64
#: The forward pass keeps the state before every this many positions for the backward pass, which recomputes
#: one such chunk at a time into (chunk + 1, N, block) buffers that stay in L2; also the tile length in time.
#: Measured at L = 4096 (B = 2, D = 128, N = 16, one thread): 16 is 1.2x faster forward+backward than 32, 8 is
#: not faster than 16.
_CHECKPOINT_EVERY = 16
#: Positions a forward job reads or writes at once where time is the contiguous axis of ``u`` (the canonical
#: ``(B, D, L)`` layout): a tile of 64 channels then is 64 rows of one run each, and four cache lines per row
#: instead of one make the transposed reads cheaper (forward 0.82-0.99x the time with 16, interleaved runs at
#: L = 1k and 4k). A multiple of _CHECKPOINT_EVERY. Channel-contiguous layouts keep tiles of _CHECKPOINT_EVERY
#: positions (their rows are contiguous already), and so does the backward pass, which recomputes and sweeps one
#: chunk at a time: tiles of 32-128 positions made it 1.10-1.13x slower (its buffers no longer stay in L1/L2).
_TIME_TILE = 64
#: Calls with fewer state updates (B * L * D * N) run the serial kernels: a parallel region costs more to start.
_PARALLEL_MIN_WORK = 1 << 18


def _exp2_coefficients() -> tuple[float, ...]:
    """Degree-6 fit of ``2^f`` on ``[-1/2, 1/2]``, least squares of the relative error at Chebyshev nodes (max.
    relative error ~2e-9)."""
    nodes = 0.5 * np.cos(np.pi * (np.arange(400) + 0.5) / 400)
    weight = 2.0**-nodes
    powers = np.vander(nodes, 7, increasing=True) * weight[:, None]
    return tuple(float(c) for c in np.linalg.lstsq(powers, 2.0**nodes * weight, rcond=None)[0])


_EXP2_COEF = _exp2_coefficients()


def _log1p_coefficients() -> tuple[float, ...]:
    """Least-squares degree-8 fit of ``log1p(e) / e`` on ``[0, 1]`` at Chebyshev nodes (max. error 3e-8), so
    that ``log1p(e) = e P(e)`` keeps its relative accuracy for small ``e``."""
    nodes = 0.5 - 0.5 * np.cos(np.pi * (np.arange(400) + 0.5) / 400)
    return tuple(float(c) for c in np.polyfit(nodes, np.log1p(nodes) / nodes, 8)[::-1])


_LOG1P_COEF = _log1p_coefficients()
#: The kernels' ``poly`` argument: the ``2^f`` coefficients, the lowest exponent (``-125``), the ``log1p``
#: coefficients and the highest exponent (``128``; see "The exponential" above for why they are an argument, not
#: constants in the code).
_POLY = np.array([*_EXP2_COEF, -125.0, *_LOG1P_COEF, 128.0])


@functools.cache
def _load_numba() -> tuple[object | None, str]:
    try:
        import numba
    except Exception as err:  # ImportError, or a broken llvmlite raising OSError
        return None, f"importing numba failed: {type(err).__name__}: {err}"
    if not os.environ.get("NUMBA_THREADING_LAYER"):
        # numba's own work queue: an OpenMP layer would spin its threads against PyTorch's OpenMP pool (we saw
        # 4-20x slow-downs of the whole model on 2 cores). The work queue is not thread-safe: see _KERNEL_LOCK.
        numba.config.THREADING_LAYER = "workqueue"
    return numba, ""


#: Seconds an explicitly typed kernel may take to appear before a log record says that it is being compiled.
COMPILE_NOTICE_S = 2.0


def jit(numba: Any, *args: Any, **options: Any) -> Any:
    """``numba.njit(*args, **options)`` with numba's disk cache where numba can write one.

    A read-only installation without a writable user cache folder (``NUMBA_CACHE_DIR``) makes numba's disk
    cache raise when a function is decorated; the kernels are then compiled in memory in each process (the same
    machine code, compiled again), and a warning says so once. With explicit signatures (``args``) numba
    compiles, or loads from its cache, when the function is decorated: where that takes longer than
    :data:`COMPILE_NOTICE_S` (a first run compiles for about a minute in all), an info record says why the
    process pauses, once per process.
    """
    def decorate(fn: Any) -> Any:
        if options.get("parallel"):
            fn = _parallel_twin(fn)
        notice = threading.Timer(COMPILE_NOTICE_S, log_once, (
            _LOGGER, "numba-compiling", "compiling the CPU kernels of the selective scan and the causal convolution "
            "for this machine (numba; once: up to a minute, later runs load them from numba's cache)"))
        notice.daemon = True
        if args:
            notice.start()
        try:
            return numba.njit(*args, cache=True, **options)(fn)
        except RuntimeError as err:
            if "cannot cache" not in str(err):
                raise
            log_once(_LOGGER, "numba-disk-cache", "numba cannot cache the compiled CPU kernels on disk ("
                     f"{' '.join(str(err).split())[:160]}): they are compiled in every process; set NUMBA_CACHE_DIR "
                     "to a writable folder to keep them", logging.WARNING)
            return numba.njit(*args, **options)(fn)
        finally:
            notice.cancel()
    return decorate


def _parallel_twin(fn: Any) -> Any:
    """``fn`` as another function object whose qualified name ends in ``__parallel``.

    numba keys its disk cache by the function's file, qualified name and line (the cache file) and by its
    bytecode and signature (the entry), not by compile options: the serial and the ``parallel=True`` build of
    one entry point would share one entry, and whichever a process wrote last would be loaded for both (a
    parallel call running the serial machine code). The twin gets its own cache file."""
    twin = types.FunctionType(fn.__code__, fn.__globals__, fn.__name__, fn.__defaults__, fn.__closure__)
    twin.__qualname__ = f"{fn.__qualname__}__parallel"
    twin.__module__ = fn.__module__
    twin.__kwdefaults__ = fn.__kwdefaults__
    return twin


#: Serialises kernel launches: numba's work-queue threading layer must not be entered by two threads at once.
_KERNEL_LOCK = threading.Lock()

#: The entry points of the numba kernels (here, in causal_conv and mamba_inner) are decorated with
#: :func:`~longiseg.utils.tracing.outside_compiled_graphs`: dynamo cannot record the kernels, and tracing into their
#: autograd functions is wrong (it inlines the forward pass, runs its NumPy code through its own NumPy emulation,
#: whose arrays come back in other layouts, e.g. the job table Fortran-ordered, which numba's signatures refuse, and
#: then traces numba's dispatcher). ``torch.compile`` breaks the graph at the call and runs the whole differentiable
#: operation (checks, autograd function, kernels) as in eager mode, so the compiled model's forward and backward
#: passes are eager's. Outside compilation it costs one wrapper call (about 0.2 us).


@constant_under_compile  # a constant for torch.compile, which would trace the cached import
def cpu_kernel_available() -> bool:
    """Whether numba is importable (the compiled CPU scan can run)."""
    return _load_numba()[0] is not None


def require_cpu_kernel(source: str = "backend argument") -> None:
    """Raise ``RuntimeError`` with the reason when the compiled CPU scan cannot run."""
    if cpu_kernel_available():  # a constant for torch.compile (which would trace the cached import)
        return
    numba, why = _load_numba()
    if numba is None:
        raise RuntimeError(
            f"selective-scan backend 'numba' requested by the {source} but it is unavailable: {why}. "
            "Install it with `pip install longiseg[cpu]` or choose backend 'chunked'."
        )


def _nb_decay(x: float, q: tuple[float, ...]) -> float:
    """``exp`` of a decay exponent inside the kernels: for float32 ``2^x`` with ``x = delta A log2(e)`` (the
    polynomial ``exp2`` with the coefficients ``q``, see :func:`_nb_coefficients`), for float64 ``math.exp(x)``
    with ``x = delta A``. Compiled only (an ``overload``)."""
    raise NotImplementedError("only callable from numba-compiled code")


def _nb_sigmoid(x: float, q: tuple[float, ...]) -> float:
    """``sigmoid(x)`` inside the kernels, from ``exp(-|x|)`` (polynomial ``exp2`` in float32, ``math.exp`` in
    float64). Compiled only (an ``overload``)."""
    raise NotImplementedError("only callable from numba-compiled code")


def _nb_softplus(x: float, q: tuple[float, ...]) -> tuple[float, float]:
    """``(softplus(x), sigmoid(x))`` inside the kernels, from ``e = exp(-|x|)``: ``max(x, 0) + log1p(e)`` (in
    float32 ``log1p(e) = e P(e)`` with a polynomial ``P``, relative error < 2e-7) and ``1 / (1 + e)`` or
    ``e / (1 + e)``; above ``x = 20`` exactly ``(x, 1)``, as ``torch.nn.functional.softplus`` (the reference) and
    mamba-ssm. Compiled only (an ``overload``)."""
    raise NotImplementedError("only callable from numba-compiled code")


def _define_kernels(numba: Any) -> None:
    """Define the compiled functions as module globals (not closures, so that numba's disk cache can key them).

    Layouts: ``u, draw, z, out, gout, gu, gdt, gz`` are ``(B, L, D)`` arrays with *any* strides (the canonical
    ``(B, D, L)`` tensors are passed as transposed views, ``Mamba``'s channel-last ones as they are): the kernels
    read and write them one tile of ``_CHECKPOINT_EVERY`` positions (``_TIME_TILE`` in the forward pass where time
    is contiguous) x (at most) 64 channels at a time, along whichever axis is contiguous, and compute on contiguous
    ``(positions, channels)`` tiles. ``draw`` holds the raw time steps (before the bias and the optional softplus,
    which the kernels apply). ``a_exp`` = the exponent factors ``(D, N)`` (``A log2 e`` for float32, ``A`` for
    float64, see :func:`_nb_decay`); ``bk, ck`` = ``B``/``C`` as ``(B or 1, G, L or 1, N)`` (size 1 where the
    input does not vary, e.g. ``(1, D, 1, N)`` for the input-independent form; channel ``d`` uses group
    ``d // (D // G)``). An absent ``z`` / ``glast`` is an empty ``(0, 0, 0)`` array. A job is one batch ``b`` and
    channels ``d0 .. d0 + nd`` (``nd <= 64``); inside it a state is an ``(N, nd)`` array, so the inner loops run
    over contiguous channels. Their indices are range variables starting at 0 (never sums such as ``n * nd + j``):
    LLVM then sees they are non-negative, drops numba's negative-index wrap-around and vectorises the loops.
    """
    global _nb_coefficients, _nb_exp2_array, _nb_copy_states, _nb_copy, _nb_tile, _nb_chunk_inputs, _nb_time_steps
    global _nb_advance, _nb_advance_inlined
    global _nb_transposed, _nb_job_constants, _nb_row, _nb_forward_job, _nb_forward_py, _nb_prefetch, _nb_prefetch_rows
    global _nb_pointer, _nb_line, _nb_span, _nb_transpose8
    global _nb_backward_job, _nb_backward_py
    from llvmlite import ir
    from numba.core import cgutils

    njit, prange = functools.partial(jit, numba), numba.prange

    @njit(fastmath=True, boundscheck=False, error_model="numpy")
    def _nb_coefficients(poly):  # pragma: no cover - compiled
        # the polynomial coefficients (_POLY, as poly) as a tuple of scalars that a job reads once and passes down
        return (
            poly[0], poly[1], poly[2], poly[3], poly[4], poly[5], poly[6], poly[7], poly[8], poly[9], poly[10],
            poly[11], poly[12], poly[13], poly[14], poly[15], poly[16], poly[17],
        )

    @numba.extending.overload(_nb_decay, inline="always", jit_options={"fastmath": True, "error_model": "numpy"})
    def _decay_impl(x, q):  # pragma: no cover - compiled
        if x == numba.types.float32:

            def exp2(x, q):
                # 2^x = 2^r 2^f with r = rint(x), f = x - r in [-1/2, 1/2]: a polynomial in f (Estrin's scheme,
                # half the dependent steps of Horner's) whose exponent bits get r added
                x = min(max(x, q[7]), q[17])  # 2^128 = inf: an overflowing growth factor is inf
                r = np.rint(x)
                f = x - r
                f2 = f * f
                p = ((q[0] + q[1] * f) + f2 * (q[2] + q[3] * f)) + (f2 * f2) * ((q[4] + q[5] * f) + f2 * q[6])
                return np.int32(np.float32(p).view(np.int32) + np.int32(np.int32(r) << np.int32(23))).view(np.float32)

            return exp2
        return lambda x, q: math.exp(x)

    @numba.extending.overload(_nb_sigmoid, inline="always", jit_options={"fastmath": True, "error_model": "numpy"})
    def _sigmoid_impl(x, q):  # pragma: no cover - compiled
        # e = exp(-|x|) in (0, 1]; sigmoid(x) = 1 / (1 + e) for x >= 0, e / (1 + e) otherwise (no overflow)
        if x == numba.types.float32:

            def sigmoid32(x, q):
                t = -abs(x) * np.float32(_LOG2E)
                e = _nb_decay(t, q)
                s = np.float32(1.0) / (np.float32(1.0) + e)
                # below the clamp of exp2 (t < -125) e is 2^-125, not exp(x): the sigmoid is 0 there, so that
                # silu(x) = x sigmoid(x) goes to 0 for x -> -inf instead of growing with |x|
                return s if x >= 0 else (e * s if t >= q[7] else np.float32(0.0))

            return sigmoid32

        def sigmoid64(x, q):
            e = math.exp(-abs(x))
            s = 1.0 / (1.0 + e)
            return s if x >= 0 else e * s

        return sigmoid64

    @numba.extending.overload(_nb_softplus, inline="always", jit_options={"fastmath": True, "error_model": "numpy"})
    def _softplus_impl(x, q):  # pragma: no cover - compiled
        if x == numba.types.float32:

            def softplus32(x, q):
                e = _nb_decay(-abs(x) * np.float32(_LOG2E), q)
                log1p_e = e * (q[8] + e * (q[9] + e * (q[10] + e * (q[11] + e * (q[12] + e * (q[13] + e * (q[14] + e * (q[15] + e * q[16]))))))))
                s = np.float32(1.0) / (np.float32(1.0) + e)
                return max(x, np.float32(0.0)) + log1p_e, (s if x >= 0 else e * s)

            return softplus32

        def softplus64(x, q):
            # the identity above 20, as torch's softplus and mamba-ssm's kernels (float32 rounds to it anyway)
            e = math.exp(-abs(x))
            s = 1.0 / (1.0 + e)
            big = x > 20.0
            return (x if big else max(x, 0.0) + math.log1p(e)), (1.0 if big else (s if x >= 0 else e * s))

        return softplus64

    @njit(fastmath=True, boundscheck=False, error_model="numpy")
    def _nb_exp2_array(v, poly, out):  # pragma: no cover - compiled
        q = _nb_coefficients(poly)
        for i in range(v.size):
            out[i] = _nb_decay(v[i], q)

    @numba.extending.intrinsic
    def _nb_prefetch(typingctx, address):  # pragma: no cover - compiled
        # hint the CPU to fetch the cache line at an address (llvm.prefetch: read, high locality, data cache)
        def codegen(context, builder, signature, args):
            i8p, i32 = ir.IntType(8).as_pointer(), ir.IntType(32)
            fn = cgutils.get_or_insert_function(
                builder.module, ir.FunctionType(ir.VoidType(), [i8p, i32, i32, i32]), "llvm.prefetch.p0"
            )
            builder.call(fn, [builder.inttoptr(args[0], i8p), *(ir.Constant(i32, v) for v in (0, 3, 1))])
            return context.get_dummy_value()

        return numba.types.void(numba.types.intp), codegen

    @numba.extending.intrinsic
    def _nb_pointer(typingctx, arr, byte_offset):  # pragma: no cover - compiled
        # pointer to the element byte_offset bytes after arr's data, for numba.carray: a view of unit stride that
        # LLVM can vectorise (an 'A'-layout slice has a run-time stride, so copies through it stay scalar)
        def codegen(context, builder, signature, args):
            data = context.make_array(signature.args[0])(context, builder, args[0]).data
            address = builder.gep(builder.bitcast(data, ir.IntType(8).as_pointer()), [args[1]])
            return builder.bitcast(address, context.get_value_type(signature.return_type))

        return numba.types.CPointer(arr.dtype)(arr, numba.types.intp), codegen

    @numba.extending.intrinsic
    def _nb_transpose8(typingctx, src, src_stride, dst, dst_stride):  # pragma: no cover - compiled
        # 8 x 8 float32 block: row i of dst (at dst + i dst_stride bytes) = column i of src (8 rows of 8 at
        # src + i src_stride). Eight vector loads, 24 shuffles (within 128-bit lanes, between pairs of rows, then
        # across the lanes) and eight vector stores instead of 64 scalar loads and stores.
        def codegen(context, builder, signature, args):
            row_type = ir.VectorType(ir.FloatType(), 8)
            intp = args[1].type

            def at(base, stride, i):
                address = builder.add(base, builder.mul(stride, ir.Constant(intp, i)))
                return builder.inttoptr(address, row_type.as_pointer())

            def shuffle(a, c, mask):
                return builder.shuffle_vector(a, c, ir.Constant(ir.VectorType(ir.IntType(32), 8), mask))

            r = [builder.load(at(args[0], args[1], i), align=4) for i in range(8)]
            # 1. interleave the rows of each pair within 128-bit lanes: t[2i], t[2i + 1] from rows 2i, 2i + 1
            lo, hi = [0, 8, 1, 9, 4, 12, 5, 13], [2, 10, 3, 11, 6, 14, 7, 15]
            t = [shuffle(r[i], r[i + 1], mask) for i in (0, 2, 4, 6) for mask in (lo, hi)]
            # 2. combine pairs of pairs: s[0..3] hold columns (0, 4), (1, 5), (2, 6), (3, 7) of rows 0-3, s[4..7] of 4-7
            first, second = [0, 1, 8, 9, 4, 5, 12, 13], [2, 3, 10, 11, 6, 7, 14, 15]
            s = [shuffle(t[i + j], t[i + j + 2], mask) for i in (0, 4) for j in (0, 1) for mask in (first, second)]
            # 3. across the lanes: column i = low (i < 4) or high halves of s[i % 4] and s[i % 4 + 4]
            low_lanes, high_lanes = [0, 1, 2, 3, 8, 9, 10, 11], [4, 5, 6, 7, 12, 13, 14, 15]
            for i in range(8):
                column = shuffle(s[i % 4], s[i % 4 + 4], high_lanes if i >= 4 else low_lanes)
                builder.store(column, at(args[2], args[3], i), align=4)
            return context.get_dummy_value()

        intp = numba.types.intp
        return numba.types.void(intp, intp, intp, intp), codegen

    @njit(fastmath=True, boundscheck=False, error_model="numpy")
    def _nb_line(x, b, t, d, count):  # pragma: no cover - compiled
        # x[b, t : t + count, d] where time is x's unit-stride axis, else x[b, t, d : d + count], as a C array
        offset = b * x.strides[0] + t * x.strides[1] + d * x.strides[2]
        return numba.carray(_nb_pointer(x, offset), count)

    @njit(fastmath=True, boundscheck=False, error_model="numpy")
    def _nb_prefetch_rows(x, b, tn, d0, nd, span):  # pragma: no cover - compiled
        # when time is x's contiguous axis: prefetch positions tn .. tn + span of channels d0 .. d0 + nd
        # (the next tile a job reads or writes; 64 rows of one short run each, which the hardware prefetchers
        # do not follow). Nothing when tn is outside x or channels are the contiguous axis.
        if x.strides[2] != x.itemsize and 0 <= tn < x.shape[1]:
            base = x.ctypes.data + b * x.strides[0] + tn * x.strides[1]
            reach = (min(x.shape[1], tn + span) - tn - 1) * x.strides[1]
            for j in range(nd):
                row = base + (d0 + j) * x.strides[2]
                for off in range(0, reach + 64, 64):
                    _nb_prefetch(row + min(off, reach))

    @njit(fastmath=True, boundscheck=False, error_model="numpy")
    def _nb_tile(x, b, t0, d0, steps, tile, tn, to_x):  # pragma: no cover - compiled
        # between tile[k, j] and x[b, t0 + k, d0 + j] for k < steps (tile -> x when to_x), along x's unit-stride
        # axis (channels when strides[2] is one element, else time: see _view); prefetches the tile starting at tn
        nd = tile.shape[1]
        _nb_prefetch_rows(x, b, tn, d0, nd, tile.shape[0])
        if x.strides[2] != x.itemsize:
            # float32: 8 x 8 blocks transposed in vector registers; the rest (and float64) element by element
            blocked = x.itemsize == 4
            nd8 = nd - nd % 8 if blocked else 0
            steps8 = steps - steps % 8 if blocked else 0
            for j0 in range(0, nd8, 8):
                for k0 in range(0, steps8, 8):
                    at_x = x.ctypes.data + b * x.strides[0] + (t0 + k0) * x.strides[1] + (d0 + j0) * x.strides[2]
                    at_tile = tile.ctypes.data + k0 * tile.strides[0] + j0 * tile.itemsize
                    if to_x:
                        _nb_transpose8(at_tile, tile.strides[0], at_x, x.strides[2])
                    else:
                        _nb_transpose8(at_x, x.strides[2], at_tile, tile.strides[0])
            for j in range(nd):
                col = _nb_line(x, b, t0, d0 + j, steps)
                if to_x:
                    for k in range(steps8 if j < nd8 else 0, steps):
                        col[k] = tile[k, j]
                else:
                    for k in range(steps8 if j < nd8 else 0, steps):
                        tile[k, j] = col[k]
        else:
            for k in range(steps):
                row = _nb_line(x, b, t0 + k, d0, nd)
                if to_x:
                    _nb_copy(tile[k], row)
                else:
                    _nb_copy(row, tile[k])

    @njit(fastmath=True, boundscheck=False, error_model="numpy")
    def _nb_time_steps(tdt, tsg, txu, tu, bias, softplus, steps, q):  # pragma: no cover - compiled
        # tdt holds the raw steps of a tile and becomes delta' = softplus(raw + bias) (or raw + bias); tsg =
        # d delta' / d raw (sigmoid(raw + bias), or 1); txu = delta' u
        nd = tdt.shape[1]
        for k in range(steps):
            dk = tdt[k]
            sk = tsg[k]
            xk = txu[k]
            uk = tu[k]
            if softplus:
                for j in range(nd):
                    sp, sg = _nb_softplus(dk[j] + bias[j], q)
                    dk[j] = sp
                    sk[j] = sg
            else:
                for j in range(nd):
                    dk[j] = dk[j] + bias[j]
                    sk[j] = 1.0
            for j in range(nd):
                xk[j] = dk[j] * uk[j]

    @njit(fastmath=True, boundscheck=False, error_model="numpy")
    def _nb_chunk_inputs(u, draw, z, bias_j, softplus, b, t0, d0, steps, tn, tiles, q):  # pragma: no cover - compiled
        # a job's inputs at positions t0 .. t0 + steps into tiles (5, >= steps, nd): u, the time steps
        # delta', their derivative w.r.t. the raw steps, delta' u, and z (when given); prefetches the chunk at tn
        _nb_tile(u, b, t0, d0, steps, tiles[0], tn, False)
        _nb_tile(draw, b, t0, d0, steps, tiles[1], tn, False)
        _nb_time_steps(tiles[1], tiles[2], tiles[3], tiles[0], bias_j, softplus, steps, q)
        if z.shape[0] > 0:
            _nb_tile(z, b, t0, d0, steps, tiles[4], tn, False)

    @njit(fastmath=True, boundscheck=False, error_model="numpy")
    def _nb_copy_states(h, rows, d0, to_rows):  # pragma: no cover - compiled
        # between a job's states h (N, nd) and the channels d0 .. d0 + nd of rows (N, D); explicit loops, as
        # numba's array assignment would compile its string-formatting error path (seconds of compile time)
        n_state, nd = h.shape
        for n in range(n_state):
            if to_rows:
                _nb_copy(h[n], rows[n, d0 : d0 + nd])
            else:
                _nb_copy(rows[n, d0 : d0 + nd], h[n])

    @njit(fastmath=True, boundscheck=False, error_model="numpy")
    def _nb_copy(src, dst):  # pragma: no cover - compiled
        # dst[:] = src for 1D arrays of equal length (an explicit loop: see _nb_copy_states)
        for j in range(src.shape[0]):
            dst[j] = src[j]

    @njit(fastmath=True, boundscheck=False, error_model="numpy")
    def _nb_transposed(x, d0, nd):  # pragma: no cover - compiled
        # x[d0 : d0 + nd] of a (D, N) array as a contiguous (N, nd) array
        out = np.empty((x.shape[1], nd), dtype=x.dtype)
        for n in range(x.shape[1]):
            for j in range(nd):
                out[n, j] = x[d0 + j, n]
        return out

    @njit(fastmath=True, boundscheck=False, error_model="numpy")
    def _nb_job_constants(a_exp, bk, ck, bias, dskip, dim, d0, nd):  # pragma: no cover - compiled
        # what a job of channels d0 .. d0 + nd needs besides its tiles: its group of B and of C (of dim // G
        # channels each), its exponent factors as a contiguous (N, nd) array and its slices of bias and skip
        gb = d0 // (dim // bk.shape[1])
        gc = d0 // (dim // ck.shape[1])
        return gb, gc, _nb_transposed(a_exp, d0, nd), bias[d0 : d0 + nd], dskip[d0 : d0 + nd]

    @njit(fastmath=True, boundscheck=False, error_model="numpy")
    def _nb_row(x, b, g, t):  # pragma: no cover - compiled
        # the (N,) row of B or C (or of their gradient buffers) for batch b, group g, position t; the batch
        # and position indices collapse to 0 where x does not vary along them
        return x[b if x.shape[0] > 1 else 0, g, t if x.shape[2] > 1 else 0]

    @njit(fastmath=True, boundscheck=False, error_model="numpy")
    def _nb_span(u):  # pragma: no cover - compiled
        # positions per input/output tile of a forward job: _TIME_TILE where time is u's contiguous axis, else
        # _CHECKPOINT_EVERY
        return _TIME_TILE if u.strides[2] != u.itemsize else _CHECKPOINT_EVERY

    @njit(fastmath=True, boundscheck=False, error_model="numpy")
    def _nb_advance(h_prev, h_next, dec, av, stepv, xv, bv, cv, acc, q):  # pragma: no cover - compiled
        # One position: h_next = exp(step a) h_prev + step u B, acc += sum_n C h_next; dec (when not empty)
        # keeps the decays exp(step a). h_prev and h_next must be different arrays: with one array passed twice
        # LLVM's run-time overlap check sends the loop to its scalar version.
        n_state, nd = av.shape
        keep = dec.shape[0] > 0
        for n in range(n_state):
            bn = bv[n]
            cn = cv[n]
            hp = h_prev[n]
            hn = h_next[n]
            an = av[n]
            if keep:
                dn = dec[n]
                for j in range(nd):
                    a = _nb_decay(stepv[j] * an[j], q)
                    dn[j] = a
                    v = a * hp[j] + xv[j] * bn
                    hn[j] = v
                    acc[j] += v * cn
            else:
                for j in range(nd):
                    v = _nb_decay(stepv[j] * an[j], q) * hp[j] + xv[j] * bn
                    hn[j] = v
                    acc[j] += v * cn

    # The forward job's copy of _nb_advance, inlined into it (numba IR): forward pass 4-12 % faster. Inlined into
    # the backward job (or a per-chunk helper) the same loops took 1.2-1.4x longer, so that one calls it.
    _nb_advance_inlined = njit(fastmath=True, boundscheck=False, error_model="numpy", inline="always")(
        _nb_advance.py_func
    )

    @njit(fastmath=True, boundscheck=False, error_model="numpy")
    def _nb_forward_job(  # pragma: no cover - compiled
        u, draw, bias, softplus, a_exp, poly, bk, ck, dskip, z, out, last, ckpt, b, d0, nd
    ):
        # One job: batch b, channels d0 .. d0 + nd, all in one group of B and one of C (see _job_blocks).
        q = _nb_coefficients(poly)
        seqlen = u.shape[1]
        n_state = a_exp.shape[1]
        gated = z.shape[0] > 0
        gb, gc, av, bias_j, dskip_j = _nb_job_constants(a_exp, bk, ck, bias, dskip, u.shape[2], d0, nd)
        hh = np.zeros((2, n_state, nd), dtype=out.dtype)  # states after even and odd positions (see advance)
        nodec = np.empty((0, 0), dtype=out.dtype)
        span = _nb_span(u)
        tiles = np.empty((5, span, nd), dtype=out.dtype)
        tu, tdt, txu, tz = tiles[0], tiles[1], tiles[3], tiles[4]
        tout = np.empty_like(tu)
        for t0 in range(0, seqlen, span):
            steps = min(seqlen, t0 + span) - t0
            _nb_chunk_inputs(u, draw, z, bias_j, softplus, b, t0, d0, steps, t0 + span, tiles, q)
            for k in range(steps):
                t = t0 + k
                if ckpt.shape[0] > 0 and t % _CHECKPOINT_EVERY == 0:
                    _nb_copy_states(hh[t % 2], ckpt[b, t // _CHECKPOINT_EVERY], d0, True)
                ok = tout[k]
                uk = tu[k]
                for j in range(nd):
                    ok[j] = dskip_j[j] * uk[j]
                bv = _nb_row(bk, b, gb, t)
                cv = _nb_row(ck, b, gc, t)
                _nb_advance_inlined(hh[t % 2], hh[(t + 1) % 2], nodec, av, tdt[k], txu[k], bv, cv, ok, q)
                if gated:
                    zk = tz[k]
                    for j in range(nd):  # silu(z) = z sigmoid(z)
                        ok[j] *= zk[j] * _nb_sigmoid(zk[j], q)
            _nb_tile(out, b, t0, d0, steps, tout, t0 + span, True)
        h = hh[seqlen % 2]
        for j in range(nd):
            for n in range(n_state):
                last[b, d0 + j, n] = h[n, j]

    def _nb_forward_py(u, draw, bias, softplus, a_exp, poly, bk, ck, dskip, z, out, last, ckpt, blocks):  # pragma: no cover
        # out = (sum_n C h + dskip u) * silu(z) (z empty: no gate); last: (B, D, N); ckpt: empty, or
        # (B, ceil(L / _CHECKPOINT_EVERY), N, D) receiving the state before every _CHECKPOINT_EVERY-th position;
        # blocks: (nblk, 2) channel ranges [start, stop) of the jobs
        nblk = blocks.shape[0]
        for job in prange(u.shape[0] * nblk):
            blk = job % nblk
            _nb_forward_job(
                u, draw, bias, softplus, a_exp, poly, bk, ck, dskip, z, out, last, ckpt, job // nblk, blocks[blk, 0],
                blocks[blk, 1] - blocks[blk, 0],
            )

    @njit(fastmath=True, boundscheck=False, error_model="numpy")
    def _nb_backward_job(  # pragma: no cover - compiled
        u, draw, bias, softplus, a_exp, poly, a, bk, ck, dskip, z, gout, glast, ckpt,
        gu, gdt, gz, ga, gbk, gck, gd, gbias, b, d0, nd,
    ):
        # Adjoint recurrence g_t = C_t gy_t + exp(dt_{t+1} a) g_{t+1} (g_{L-1} also gets glast) for one job:
        # chunk by chunk (of _CHECKPOINT_EVERY positions) from the end, the chunk's states and decays are
        # recomputed from the forward pass's checkpoint into (chunk + 1, N, nd) buffers and swept in reverse.
        # ga, gbk, gck, gd, gbias are this work item's partial sums (float64, accumulated into): the sums over
        # the sequence (dA, dD, d delta_bias; dB/dC of input-independent B/C) gather each chunk's in the compute
        # dtype and add it there, so float32 rounding does not grow with L.
        q = _nb_coefficients(poly)
        seqlen = u.shape[1]
        n_state = a.shape[1]
        gated = z.shape[0] > 0
        gb, gc, av, bias_j, dskip_j = _nb_job_constants(a_exp, bk, ck, bias, dskip, u.shape[2], d0, nd)
        aa = _nb_transposed(a, d0, nd)
        gd_j = np.empty(nd, dtype=gu.dtype)  # the chunk's sums, added into gd / gbias after it
        gbias_j = np.empty(nd, dtype=gu.dtype)
        hbuf = np.zeros((_CHECKPOINT_EVERY + 1, n_state, nd), dtype=gu.dtype)
        abuf = np.empty((_CHECKPOINT_EVERY, n_state, nd), dtype=gu.dtype)
        carry = np.zeros((n_state, nd), dtype=gu.dtype)
        acca = np.zeros((n_state, nd), dtype=gu.dtype)
        tiles = np.empty((5, _CHECKPOINT_EVERY, nd), dtype=gu.dtype)
        tu, tdt, tsg, txu, tz = tiles[0], tiles[1], tiles[2], tiles[3], tiles[4]
        tgy = np.empty_like(tu)
        tgz = np.empty_like(tu)
        tgu = np.empty_like(tu)
        tgd = np.empty_like(tu)
        acc = np.empty(nd, dtype=gu.dtype)
        zero = np.zeros(1, dtype=gu.dtype)[0]  # typed like the data (a literal 0 would make float32 sums float64)
        sgb = np.empty(nd, dtype=gu.dtype)
        sdt = np.empty(nd, dtype=gu.dtype)
        if glast.shape[0] > 0:
            for n in range(n_state):
                for j in range(nd):
                    carry[n, j] = glast[b, d0 + j, n]
        for c in range((seqlen + _CHECKPOINT_EVERY - 1) // _CHECKPOINT_EVERY - 1, -1, -1):
            t0 = c * _CHECKPOINT_EVERY
            steps = min(seqlen, t0 + _CHECKPOINT_EVERY) - t0
            _nb_copy_states(hbuf[0], ckpt[b, c], d0, False)
            _nb_chunk_inputs(u, draw, z, bias_j, softplus, b, t0, d0, steps, t0 - _CHECKPOINT_EVERY, tiles, q)
            _nb_tile(gout, b, t0, d0, steps, tgy, t0 - _CHECKPOINT_EVERY, False)
            acca[:] = 0
            gd_j[:] = 0
            gbias_j[:] = 0
            for k in range(steps):  # recompute the chunk; gradient of the scan output before the gate
                t = t0 + k
                uk = tu[k]
                for j in range(nd):
                    acc[j] = dskip_j[j] * uk[j]
                bv = _nb_row(bk, b, gb, t)
                cv = _nb_row(ck, b, gc, t)
                _nb_advance(hbuf[k], hbuf[k + 1], abuf[k], av, tdt[k], txu[k], bv, cv, acc, q)
                if gated:
                    zk = tz[k]
                    gy = tgy[k]
                    gzk = tgz[k]
                    for j in range(nd):  # silu'(z) = sigmoid(z) + silu(z) (1 - sigmoid(z))
                        zs = _nb_sigmoid(zk[j], q)
                        sz = zk[j] * zs
                        gzk[j] = gy[j] * acc[j] * (zs + sz - sz * zs)  # no literal: 1 - x would be float64
                        gy[j] = gy[j] * sz
            for k in range(steps - 1, -1, -1):
                t = t0 + k
                bv = _nb_row(bk, b, gb, t)
                cv = _nb_row(ck, b, gc, t)
                gbv = _nb_row(gbk, b, gb, t)
                gcv = _nb_row(gck, b, gc, t)
                gy = tgy[k]
                stepv = tdt[k]
                xv = txu[k]
                for j in range(nd):
                    sgb[j] = 0
                    sdt[j] = 0
                for n in range(n_state):
                    bn = bv[n]
                    cn = cv[n]
                    h0 = hbuf[k, n]
                    h1 = hbuf[k + 1, n]
                    dn = abuf[k, n]
                    gn = carry[n]
                    an = acca[n]
                    aan = aa[n]
                    sum_b = zero
                    sum_c = zero
                    for j in range(nd):
                        gi = cn * gy[j] + gn[j]
                        mi = gi * dn[j] * h0[j]
                        an[j] += mi * stepv[j]
                        sdt[j] += mi * aan[j]
                        sgb[j] += gi * bn
                        sum_b += gi * xv[j]
                        sum_c += h1[j] * gy[j]
                        gn[j] = dn[j] * gi
                    gbv[n] += sum_b
                    gcv[n] += sum_c
                uk = tu[k]
                sk = tsg[k]
                guk = tgu[k]
                gdk = tgd[k]
                for j in range(nd):
                    guk[j] = stepv[j] * sgb[j] + dskip_j[j] * gy[j]
                    gdk[j] = (uk[j] * sgb[j] + sdt[j]) * sk[j]
                    gbias_j[j] += gdk[j]
                    gd_j[j] += gy[j] * uk[j]
            _nb_tile(gu, b, t0, d0, steps, tgu, t0 - _CHECKPOINT_EVERY, True)
            _nb_tile(gdt, b, t0, d0, steps, tgd, t0 - _CHECKPOINT_EVERY, True)
            if gated:
                _nb_tile(gz, b, t0, d0, steps, tgz, t0 - _CHECKPOINT_EVERY, True)
            for j in range(nd):
                gd[d0 + j] += gd_j[j]
                gbias[d0 + j] += gbias_j[j]
                for n in range(n_state):
                    ga[d0 + j, n] += acca[n, j]

    def _nb_backward_py(  # pragma: no cover - compiled
        u, draw, bias, softplus, a_exp, poly, a, bk, ck, dskip, z, gout, glast, ckpt, blocks, nparts,
        gu, gdt, gz, ga_p, gb_p, gc_p, gd_p, gbias_p,
    ):
        # Work item p of nparts runs jobs p, p + nparts, ... and accumulates gA, gB, gC, gD, g(delta_bias) into
        # its own slice [p] of the *_p buffers (zeroed by the caller, summed afterwards): no element is written
        # by two threads. z, glast: empty when absent; gdt is the gradient w.r.t. the raw time steps.
        nblk = blocks.shape[0]
        for p in prange(nparts):
            for job in range(p, u.shape[0] * nblk, nparts):
                blk = job % nblk
                _nb_backward_job(
                    u, draw, bias, softplus, a_exp, poly, a, bk, ck, dskip, z, gout, glast, ckpt,
                    gu, gdt, gz, ga_p[p], gb_p[p], gc_p[p], gd_p[p], gbias_p[p], job // nblk, blocks[blk, 0],
                    blocks[blk, 1] - blocks[blk, 0],
                )


@functools.cache
def _kernels() -> None:
    """Define the compiled kernels once per process (numba compiles them on first use, or loads them from its
    disk cache)."""
    numba, why = _load_numba()
    if numba is None:
        raise RuntimeError(why)
    import numba.extending  # noqa: F401 - for the overload and intrinsic decorators

    _define_kernels(numba)


def _partial_sum_types(numba: Any) -> tuple[Any, ...]:
    """Numba types of the backward's partial sums ``(gA, gB, gC, gD, g(delta_bias))`` per work item: float64 for
    every compute dtype (:func:`_scan_backward`)."""
    arr, f64 = numba.types.Array, numba.float64  # type: ignore[attr-defined]
    return arr(f64, 3, "C"), arr(f64, 5, "C"), arr(f64, 5, "C"), arr(f64, 2, "C"), arr(f64, 2, "C")


@functools.cache
def _entry(name: str, dtype: torch.dtype, parallel: bool) -> Any:
    """The entry point ``forward`` or ``backward`` compiled for one dtype (float32 or float64), parallel over the
    jobs or serial (one call to a parallel region costs about 65 us on our 2-core machine, more than a small scan).

    The signature is explicit, with every ``(B, L, D)`` argument of any layout (``'A'``) and the small ones
    C-contiguous, so that one machine-code version serves channel-first, channel-last and sliced inputs alike
    (a lazily typed function would compile a new version for every combination of layouts it meets)."""
    numba, _ = _load_numba()
    _kernels()
    f = numba.float32 if dtype == torch.float32 else numba.float64  # type: ignore[attr-defined]
    arr = numba.types.Array  # type: ignore[attr-defined]
    any3, c1, c2, c3, c4 = arr(f, 3, "A"), arr(f, 1, "C"), arr(f, 2, "C"), arr(f, 3, "C"), arr(f, 4, "C")
    flag, count = numba.types.boolean, numba.types.intp  # type: ignore[attr-defined]
    blocks = arr(count, 2, "C")
    if name == "forward":
        sig = numba.void(any3, any3, c1, flag, c2, c1, c4, c4, c1, any3, any3, c3, c4, blocks)  # type: ignore[attr-defined]
        fn = _nb_forward_py
    else:
        sig = numba.void(  # type: ignore[attr-defined]
            any3, any3, c1, flag, c2, c1, c2, c4, c4, c1, any3, any3, c3, c4, blocks, count,
            any3, any3, any3, *_partial_sum_types(numba),
        )
        fn = _nb_backward_py
    return jit(numba, [sig], parallel=parallel, fastmath=True, boundscheck=False, error_model="numpy")(fn)


@contextlib.contextmanager
def _use_threads(jobs: int, work: int) -> Iterator[int]:
    """How many numba threads a call with ``jobs`` jobs and ``work`` = ``B * L * D * N`` state updates gets: one
    (the serial entry point) below ``_PARALLEL_MIN_WORK`` or with a single job, else ``torch.get_num_threads()``
    capped by numba's limit and the job count. The calling thread's numba thread count is set for the call and
    restored afterwards (a user's own parallel numba code keeps its setting)."""
    numba, _ = _load_numba()
    threads = min(torch.get_num_threads(), numba.config.NUMBA_NUM_THREADS, jobs)  # type: ignore[attr-defined]
    if threads < 2 or work < _PARALLEL_MIN_WORK:
        yield 1
        return
    before = numba.get_num_threads()  # type: ignore[attr-defined]
    numba.set_num_threads(threads)  # type: ignore[attr-defined]
    try:
        yield threads
    finally:
        numba.set_num_threads(before)  # type: ignore[attr-defined]


def exp2_nonpositive(x: torch.Tensor) -> torch.Tensor:
    """``2 ** x`` for float32 ``x <= 0`` with the kernel's polynomial (arguments below -125 give ``2^-125``).

    Exposed so that its accuracy is tested; the kernels call the same compiled ``_nb_decay``.

    Args:
        x: float32 tensor of any shape with non-positive entries.

    Returns:
        float32 tensor of ``x``'s shape.
    """
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"x must be a torch.Tensor, got {type(x).__name__}")
    if x.dtype != torch.float32:
        raise TypeError(f"x must be float32, got {x.dtype}")
    if x.numel() and bool((x > 0).any()):
        raise ValueError("x must be <= 0 everywhere (the kernel only exponentiates non-positive numbers)")
    v = x.detach().cpu().contiguous().reshape(-1).numpy()
    out = np.empty_like(v)
    _kernels()
    _nb_exp2_array(v, _polynomials(torch.float32), out)
    return torch.from_numpy(out).reshape(x.shape)


def _np(x: torch.Tensor | None, ct: torch.dtype) -> np.ndarray:
    """Contiguous ``ct`` numpy view/copy of ``x``; an empty ``(0, 0, 0)`` array stands for ``None``."""
    if x is None:
        return np.empty((0, 0, 0), dtype=np.float32 if ct == torch.float32 else np.float64)
    x = x.detach()
    return (x if x.dtype == ct else x.to(ct)).contiguous().numpy()


def _exponent_factors(A: torch.Tensor, ct: torch.dtype) -> np.ndarray:
    """What the kernel multiplies ``delta`` by before exponentiating: ``A log2(e)`` (float32 ``exp2``) or ``A``."""
    if ct == torch.float32:
        return (A.detach().to(torch.float64) * _LOG2E).to(torch.float32).contiguous().numpy()
    return _np(A, ct)


@functools.cache
def _polynomials(ct: torch.dtype) -> np.ndarray:
    """The kernels' ``poly`` argument (:data:`_POLY`) in the compute dtype (the float64 kernels do not use it).
    Cached: callers must not write it."""
    return _POLY.astype(np.float32 if ct == torch.float32 else np.float64)


@functools.lru_cache(maxsize=256)
def _job_blocks(dim: int, groups_b: int, groups_c: int) -> np.ndarray:
    """The channel ranges ``[start, stop)`` of the kernels' jobs, ``(nblk, 2)``: blocks of at most 64 channels,
    cut where the group of ``B`` or of ``C`` changes, so that a job reads one value of ``B`` and one of ``C`` per
    position and state (a scalar in its inner loops over channels). Shared ``B``/``C`` (one group) give blocks
    of 64; input-independent ones (one group per channel) single channels. Cached: callers must not write it."""
    cuts = set(range(0, dim, _CHANNEL_BLOCK)) | set(range(0, dim, dim // groups_b)) | set(range(0, dim, dim // groups_c))
    starts = sorted(cuts)
    return np.array([starts, starts[1:] + [dim]], dtype=np.intp).T.copy()


def _walkable(x: torch.Tensor) -> bool:
    """Whether the kernels can read or write the ``(B, L, D)`` tensor ``x`` in place: they walk channels where
    ``strides[2]`` is one element and time otherwise, so where channels do not have unit stride time must."""
    return x.stride(2) == 1 or x.stride(1) == 1


def _view(x: torch.Tensor, ct: torch.dtype) -> np.ndarray:
    """A ``(B, L, D)`` tensor as the kernels read it: a ``ct`` numpy array sharing ``x``'s memory when
    :func:`_walkable` (a contiguous copy otherwise, or to change the dtype)."""
    x = x.detach()
    x = x if x.dtype == ct else x.to(ct)
    return (x if _walkable(x) else x.contiguous()).numpy()


def _gradient_view(gout: torch.Tensor | None, u: torch.Tensor, ct: torch.dtype) -> np.ndarray:
    """The output gradient ``(B, L, D)`` as the backward kernel reads it: in place where :func:`_walkable`, else
    (``None`` = zeros, or a broadcast such as the gradient of ``out.sum()``) materialised in ``u``'s layout. A
    gradient laid out unlike the other tensors of the call slows the backward kernel (1.2x in the canonical
    layout with a channel-last gradient)."""
    if gout is not None and _walkable(gout):
        return _view(gout, ct)
    full = _empty_like(u, ct)
    return (full.zero_() if gout is None else full.copy_(gout.detach())).numpy()


def _zeros_or(x: torch.Tensor | None, dim: int, ct: torch.dtype) -> np.ndarray:
    """``x`` as a contiguous ``ct`` array, zeros of length ``dim`` where it is ``None``."""
    return _np(x if x is not None else torch.zeros(dim), ct)


def _empty_like(x: torch.Tensor, ct: torch.dtype) -> torch.Tensor:
    """An uninitialised ``ct`` tensor of ``x``'s shape laid out like ``x`` where that layout is dense and
    :func:`_walkable` (so autograd need not copy a gradient to ``x``'s layout), else contiguous."""
    out = torch.empty_like(x, dtype=ct)
    return out if _walkable(out) else torch.empty(x.shape, dtype=ct)


def _scan_forward(
    u: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    bk: torch.Tensor,
    ck: torch.Tensor,
    D: torch.Tensor | None,
    z: torch.Tensor | None,
    delta_bias: torch.Tensor | None,
    softplus: bool,
    keep_for_backward: bool = False,
    a_exp: np.ndarray | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """The whole scan (steps, recurrence, skip, gate) without autograd on channel-last CPU tensors.

    Args:
        u, delta, z: ``(B, L, D)``, any strides (read in place; copied only to change the dtype).
        A: ``(D, N)``.
        bk, ck: ``B``/``C`` as ``(B or 1, G, L or 1, N)`` (see :func:`_kernel_layout`).
        D, delta_bias: ``(D,)`` or ``None``.
        softplus: apply softplus to ``delta + delta_bias`` (inside the kernel).
        keep_for_backward: also return the checkpoints the backward pass needs.
        a_exp: ``_exponent_factors(A, compute dtype)`` when the caller already has them (else computed).

    Returns:
        ``out`` ``(B, L, D)`` (laid out like ``u`` where ``u`` is dense) and the last state ``(B, D, N)`` in the
        compute dtype, and the checkpoints ``(B, ceil(L / _CHECKPOINT_EVERY), N, D)`` or ``None``.
    """
    ct = compute_dtype(u, delta, A, bk, ck)
    batch, seqlen, dim = u.shape
    with torch.no_grad():
        out = _empty_like(u, ct)
        last = torch.empty(batch, dim, A.shape[1], dtype=ct)
        ckpt = torch.empty(
            (batch, -(-seqlen // _CHECKPOINT_EVERY), A.shape[1], dim) if keep_for_backward else (0,) * 4, dtype=ct
        )
        blocks = _job_blocks(dim, bk.shape[1], ck.shape[1])
        with _KERNEL_LOCK, _use_threads(batch * blocks.shape[0], u.numel() * A.shape[1]) as threads:
            _entry("forward", ct, threads > 1)(
                _view(u, ct), _view(delta, ct), _zeros_or(delta_bias, dim, ct), softplus,
                _exponent_factors(A, ct) if a_exp is None else a_exp, _polynomials(ct), _np(bk, ct), _np(ck, ct),
                _zeros_or(D, dim, ct), _np(z, ct) if z is None else _view(z, ct), out.numpy(), last.numpy(), ckpt.numpy(),
                blocks,
            )
    return out, last, ckpt if keep_for_backward else None


def _scan_backward(
    inputs: tuple[torch.Tensor | None, ...],
    ckpt: torch.Tensor,
    gout: torch.Tensor | None,
    glast: torch.Tensor | None,
    softplus: bool,
    a_exp: np.ndarray | None = None,
    gz: torch.Tensor | None = None,
) -> tuple[torch.Tensor | None, ...]:
    """Gradients w.r.t. ``inputs = (u, delta, A, bk, ck, D, z, delta_bias)`` (the layouts of
    :func:`_scan_forward`, whose checkpoints ``ckpt`` are given) of a loss whose gradients w.r.t. ``out`` and the
    last state are ``gout`` ``(B, L, D)`` and ``glast`` ``(B, D, N)`` (``None`` = zero), by the compiled
    adjoint recurrence. The gradients of ``u``, ``delta`` and ``z`` are laid out like those tensors; ``gz``: where
    to write the gradient of ``z`` (a ``(B, L, D)`` compute-dtype tensor the kernels can walk, e.g. a channel
    slice of a larger gradient), else a new tensor. ``a_exp``: as in :func:`_scan_forward`."""
    u, delta, A, bk, ck, D, z, delta_bias = inputs
    ct = ckpt.dtype
    with torch.no_grad():
        dim, n_state = A.shape
        gu, gdt = _empty_like(u, ct), _empty_like(delta, ct)
        if z is None:
            gz = None
        elif gz is None:
            gz = _empty_like(z, ct)
        blocks = _job_blocks(dim, bk.shape[1], ck.shape[1])
        with _KERNEL_LOCK, _use_threads(u.shape[0] * blocks.shape[0], u.numel() * n_state) as parts:
            # float64 partial sums (summed over the work items below): a float32 sum over a long sequence
            # lost digits with L (dA 5.7e-6 relative at L = 32k)
            partial = [
                np.zeros((parts, *shape), dtype=np.float64)
                for shape in ((dim, n_state), tuple(bk.shape), tuple(ck.shape), (dim,), (dim,))
            ]
            _entry("backward", ct, parts > 1)(
                _view(u, ct), _view(delta, ct), _zeros_or(delta_bias, dim, ct), softplus,
                _exponent_factors(A, ct) if a_exp is None else a_exp, _polynomials(ct), _np(A, ct), _np(bk, ct),
                _np(ck, ct), _zeros_or(D, dim, ct), _np(z, ct) if z is None else _view(z, ct),
                _gradient_view(gout, u, ct), _np(glast, ct), ckpt.numpy(),
                blocks, parts, gu.numpy(), gdt.numpy(), _np(None, ct) if gz is None else gz.detach().numpy(), *partial,
            )
    ga, gb, gc, gd, gbias = (torch.from_numpy(x[0] if parts == 1 else x.sum(0)) for x in partial)
    return (
        gu.to(u.dtype),
        gdt.to(delta.dtype),
        ga.to(A.dtype),
        gb.to(bk.dtype),
        gc.to(ck.dtype),
        None if D is None else gd.to(D.dtype),
        None if z is None else gz.to(z.dtype),
        None if delta_bias is None else gbias.to(delta_bias.dtype),
    )


def _require_cpu(named: dict[str, torch.Tensor | None]) -> None:
    for name, t in named.items():
        if t is not None and t.device.type != "cpu":
            raise ValueError(f"{name} must be on the CPU for the 'numba' scan backend, got device {t.device}")


def _kernel_layout(x: torch.Tensor, channels_last: bool = False) -> torch.Tensor:
    """``B``/``C`` as the kernel's ``(B or 1, G, L or 1, N)`` view: ``(B, N, L)`` -> ``(B, 1, L, N)``,
    ``(B, G, N, L)`` -> ``(B, G, L, N)``, ``(D, N)`` -> ``(1, D, 1, N)``; channel-last ``(B, L, N)`` ->
    ``(B, 1, L, N)``."""
    if x.ndim == 2:
        return x[None, :, None, :]
    if channels_last:
        return x.unsqueeze(1)
    return x.mT.unsqueeze(1) if x.ndim == 3 else x.mT


class _CompiledScanFn(torch.autograd.Function):
    """Compiled forward and backward passes on channel-last tensors (layouts of :func:`_scan_forward`)."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: torch.autograd.function.FunctionCtx,
        u: torch.Tensor,
        delta: torch.Tensor,
        A: torch.Tensor,
        bk: torch.Tensor,
        ck: torch.Tensor,
        D: torch.Tensor | None,
        z: torch.Tensor | None,
        delta_bias: torch.Tensor | None,
        softplus: bool,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        ctx.set_materialize_grads(False)
        keep = any(ctx.needs_input_grad)
        a_exp = _exponent_factors(A, compute_dtype(u, delta, A, bk, ck))  # once for both passes
        out, last, ckpt = _scan_forward(u, delta, A, bk, ck, D, z, delta_bias, softplus, keep, a_exp)
        ctx.save_for_backward(u, delta, A, bk, ck, D, z, delta_bias, ckpt)
        ctx.softplus = softplus
        ctx.a_exp = a_exp
        return out.to(u.dtype), last

    @staticmethod
    def backward(  # type: ignore[override]
        ctx: torch.autograd.function.FunctionCtx, gout: torch.Tensor | None, glast: torch.Tensor | None
    ) -> tuple[torch.Tensor | None, ...]:
        saved = ctx.saved_tensors
        grads = _scan_backward(saved[:8], saved[8], gout, glast, ctx.softplus, ctx.a_exp)
        return (*first_order_gradients("the numba selective scan", grads, saved[:8]), None)


@outside_compiled_graphs
def selective_scan_cpu(
    u: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None = None,
    z: torch.Tensor | None = None,
    delta_bias: torch.Tensor | None = None,
    delta_softplus: bool = False,
    return_last_state: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Selective scan with the compiled CPU kernel (semantics and shapes of :func:`longiseg.ssm.selective_scan`).

    Args:
        u: input ``(B, D, L)`` on the CPU.
        delta: time steps ``(B, D, L)``.
        A: ``(D, N)`` real.
        B: input matrix ``(B, N, L)``, ``(B, G, N, L)`` or ``(D, N)``.
        C: output matrix, same layouts as ``B``.
        D: skip connection ``(D,)`` or ``None``.
        z: gate ``(B, D, L)`` or ``None``.
        delta_bias: ``(D,)`` or ``None``.
        delta_softplus: apply softplus to ``delta + delta_bias``.
        return_last_state: also return the final state ``(B, D, N)``.

    Returns:
        ``out`` ``(B, D, L)`` in ``u.dtype``, or ``(out, last_state)``. Differentiable (compiled backward).

    Raises:
        RuntimeError: numba is not installed.
        ValueError: tensors not on the CPU, or invalid shapes (see :func:`longiseg.ssm.selective_scan`).
    """
    require_cpu_kernel()
    prepare_scan_inputs(u, delta, A, B, C, D, z, delta_bias, delta_softplus, return_last_state)
    _require_cpu({"u": u, "delta": delta, "A": A, "B": B, "C": C, "D": D, "z": z, "delta_bias": delta_bias})
    out, last = _CompiledScanFn.apply(
        u.mT, delta.mT, A, _kernel_layout(B), _kernel_layout(C), D, None if z is None else z.mT, delta_bias,
        bool(delta_softplus),
    )
    return (out.mT, last) if return_last_state else out.mT


@outside_compiled_graphs
def selective_scan_cpu_channels_last(
    u: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None = None,
    z: torch.Tensor | None = None,
    delta_bias: torch.Tensor | None = None,
    delta_softplus: bool = False,
) -> torch.Tensor:
    """:func:`selective_scan_cpu` in the channel-last layout that :class:`~longiseg.ssm.Mamba` produces.

    Same function as ``selective_scan(u.mT, delta.mT, A, B.mT, C.mT, D, z.mT, ...).mT``, without the transposes
    and copies (the kernel works channel-last).

    Args:
        u: input ``(B, L, D)`` on the CPU (any strides).
        delta: time steps ``(B, L, D)``.
        A: ``(D, N)`` real.
        B: input matrix ``(B, L, N)`` shared by all channels.
        C: output matrix ``(B, L, N)``.
        D: skip connection ``(D,)`` or ``None``.
        z: gate ``(B, L, D)`` or ``None``.
        delta_bias: ``(D,)`` or ``None``.
        delta_softplus: apply softplus to ``delta + delta_bias``.

    Returns:
        ``out`` ``(B, L, D)`` in ``u.dtype``; differentiable.
    """
    require_cpu_kernel()
    for name, t in (("u", u), ("delta", delta), ("B", B), ("C", C), ("z", z)):
        if t is not None and not isinstance(t, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if u.ndim != 3 or B.ndim != 3:
        raise ValueError(f"u must be (B, L, D) and B (B, L, N), got {tuple(u.shape)} and {tuple(B.shape)}")
    # Validate every argument once with the canonical checks, on transposed views (no copies).
    prepare_scan_inputs(
        u.transpose(1, 2), delta.transpose(1, 2), A, B.transpose(1, 2), C.transpose(1, 2), D,
        None if z is None else z.transpose(1, 2), delta_bias, delta_softplus,
    )
    _require_cpu({"u": u, "delta": delta, "A": A, "B": B, "C": C, "D": D, "z": z, "delta_bias": delta_bias})
    out, _ = _CompiledScanFn.apply(
        u, delta, A, _kernel_layout(B, channels_last=True), _kernel_layout(C, channels_last=True), D, z,
        delta_bias, bool(delta_softplus),
    )
    return out
