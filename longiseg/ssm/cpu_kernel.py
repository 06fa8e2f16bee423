"""Fused CPU selective scan, forward and backward, compiled with numba (optional: ``pip install longiseg[cpu]``).

The chunked PyTorch scan materialises ``(B, D, L, N)`` tensors and is bound by memory traffic and per-operation
overhead on a CPU. This backend runs the recurrence in compiled loops per job = ``(batch, block of 64
channels)``, parallel over the jobs, keeping the job's ``(N, 64)`` state in L1:

    for t in 0..L-1:   h[d, n] = exp(delta[d, t] A[d, n]) h[d, n] + delta[d, t] u[d, t] B[g(d), n, t]
                       y[d, t] = sum_n C[g(d), n, t] h[d, n] + D[d] u[d, t],   out = y silu(z)

The bias and softplus of ``delta`` and softplus' derivative in the backward pass are vectorised PyTorch
operations around the kernels (numba does not vectorise ``log1p``); everything else (``sigmoid(z)`` and
``silu(z)`` with the exponential below, the skip, the gate, the reductions over channels and time) is fused into
the kernels.

**The exponential.** In float32 the kernels evaluate ``exp(x) = 2^(x log2 e)`` like mamba-ssm's CUDA kernel
(``exp2f``), with a degree-6 polynomial for ``2^f`` on ``(0, 1]`` and the integer power of two built from its
exponent bits (:func:`exp2_nonpositive`, relative error < 2e-7, tested against ``torch.exp``); this lets the
compiler vectorise the state update. Arguments below ``-125`` (``2^-125 = 2.4e-38``) are clamped there: a decay
factor that small is zero for every purpose. Float64 inputs use the exact ``math.exp`` (the path the float64
tests compare with the reference).

**Gradients.** The backward kernel runs the adjoint recurrence ``g_t = C_t gy_t + exp(delta_{t+1} A) g_{t+1}``
(``g_{L-1}`` also receives the last state's gradient). The forward pass keeps the state before every 32nd
position (``1/32`` of the state sequence); the backward pass recomputes one such chunk of a job at a time (its
states and decays, in L2) and sweeps it in reverse, forming every gradient on the way. ``dA``, ``dD`` and
``d(delta_bias)`` and, for shared or grouped ``B``/``C``, ``dB``/``dC`` are sums over jobs: each parallel work
item accumulates into its own partial buffer, summed afterwards, so no element is written by two threads.
Nothing of size ``(B, D, L, N)`` is stored: memory is linear in ``L``.

**Threads.** The kernels use ``torch.get_num_threads()`` numba threads (capped by numba's own limit) on numba's
work-queue threading layer (unless ``NUMBA_THREADING_LAYER`` is set), and launches are serialised by a lock.
The first call in a fresh environment compiles the kernels (tens of seconds, per dtype); numba caches the machine
code next to the module, later processes load it in about a second.
"""

from __future__ import annotations

import functools
import math
import os
import threading
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from longiseg.ssm.inputs import compute_dtype, prepare_scan_inputs

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
#: one such chunk at a time into (chunk + 1, N, block) buffers that stay in L2.
_CHECKPOINT_EVERY = 32


def _exp2_coefficients() -> tuple[float, ...]:
    """Least-squares degree-6 fit of ``2^f`` on ``[0, 1]`` at Chebyshev nodes (max. relative error ~3e-9)."""
    nodes = 0.5 - 0.5 * np.cos(np.pi * (np.arange(400) + 0.5) / 400)
    return tuple(float(c) for c in np.polyfit(nodes, 2.0**nodes, 6)[::-1])


_EXP2_COEF = _exp2_coefficients()


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


#: Serialises kernel launches: numba's work-queue threading layer must not be entered by two threads at once.
_KERNEL_LOCK = threading.Lock()


def cpu_kernel_available() -> bool:
    """Whether numba is importable (the compiled CPU scan can run)."""
    return _load_numba()[0] is not None


def require_cpu_kernel(source: str = "backend argument") -> None:
    """Raise ``RuntimeError`` with the reason when the compiled CPU scan cannot run."""
    numba, why = _load_numba()
    if numba is None:
        raise RuntimeError(
            f"selective-scan backend 'numba' requested by the {source} but it is unavailable: {why}. "
            "Install it with `pip install longiseg[cpu]` or choose backend 'chunked'."
        )


def _nb_decay(x: float) -> float:
    """``exp`` of a decay exponent inside the kernels: for float32 ``2^x`` with ``x = delta A log2(e)`` (the
    polynomial ``exp2``), for float64 ``math.exp(x)`` with ``x = delta A``. Compiled only (an ``overload``)."""
    raise NotImplementedError("only callable from numba-compiled code")


def _nb_sigmoid(x: float) -> float:
    """``sigmoid(x)`` inside the kernels, from ``exp(-|x|)`` (polynomial ``exp2`` in float32, ``math.exp`` in
    float64). Compiled only (an ``overload``)."""
    raise NotImplementedError("only callable from numba-compiled code")


def _define_kernels(numba: Any) -> None:
    """Define the compiled functions as module globals (not closures, so that numba's disk cache can key them).

    Layouts (channel-last, C-contiguous): ``u, dt, out`` and every ``(B, L, D)`` argument; ``a_exp`` = the
    exponent factors ``(D, N)`` (``A log2 e`` for float32, ``A`` for float64, see :func:`_nb_decay`); ``bk, ck``
    = ``B``/``C`` as ``(B or 1, G, L or 1, N)`` (size 1 where the input does not vary, e.g. ``(1, D, 1, N)`` for
    the input-independent form; channel ``d`` uses group ``d // (D // G)``). Optional ``(B, L, D)`` inputs are
    passed as empty ``(0, 0, 0)`` arrays when absent. A job is one batch ``b`` and channels ``d0 .. d0 + nd``
    (``nd <= _CHANNEL_BLOCK``); inside it a state is an ``(N, nd)`` array, so the inner loops run over contiguous
    channels. Their indices are range variables starting at 0 (never sums such as ``n * nd + j``): LLVM then
    sees they are non-negative, drops numba's negative-index wrap-around and vectorises the loops.
    """
    global _nb_exp2_array, _nb_copy_states, _nb_fill_tile, _nb_add_group_sums, _nb_load_steps, _nb_advance
    global _nb_output, _nb_transposed, _nb_forward_job, _nb_forward, _nb_backward_job, _nb_backward
    njit, prange = numba.njit, numba.prange
    c0, c1, c2, c3, c4, c5, c6 = (np.float32(c) for c in _EXP2_COEF)

    @numba.extending.overload(_nb_decay, inline="always", jit_options={"fastmath": True})
    def _decay_impl(x):  # pragma: no cover - compiled
        if x == numba.types.float32:

            def exp2(x):
                # 2^x for x <= 0: polynomial in the fraction times the power of two built from exponent bits
                x = max(x, np.float32(-125.0))
                k = np.int32(-x)  # truncation: k = ceil(-x) - (x integral), x + k in (-1, 0]
                f = x + np.float32(k) + np.float32(1.0)  # in (0, 1]
                mantissa = c0 + f * (c1 + f * (c2 + f * (c3 + f * (c4 + f * (c5 + f * c6)))))
                return mantissa * np.int32((np.int32(126) - k) << 23).view(np.float32)  # times 2^(-k-1)

            return exp2
        return lambda x: math.exp(x)

    @numba.extending.overload(_nb_sigmoid, inline="always", jit_options={"fastmath": True})
    def _sigmoid_impl(x):  # pragma: no cover - compiled
        # e = exp(-|x|) in (0, 1]; sigmoid(x) = 1 / (1 + e) for x >= 0, e / (1 + e) otherwise (no overflow)
        if x == numba.types.float32:

            def sigmoid32(x):
                e = _nb_decay(-abs(x) * np.float32(_LOG2E))
                s = np.float32(1.0) / (np.float32(1.0) + e)
                return s if x >= 0 else e * s

            return sigmoid32

        def sigmoid64(x):
            e = math.exp(-abs(x))
            s = 1.0 / (1.0 + e)
            return s if x >= 0 else e * s

        return sigmoid64

    @njit(fastmath=True, boundscheck=False, cache=True)
    def _nb_exp2_array(v, out):  # pragma: no cover - compiled
        for i in range(v.size):
            out[i] = _nb_decay(v[i])

    @njit(fastmath=True, boundscheck=False, cache=True)
    def _nb_fill_tile(x, heads, b, t, d0, tile):  # pragma: no cover - compiled
        # tile[n, j] = x[b, group(d0 + j), t, n] (b, t ignored where x does not vary over them)
        n_state, nd = tile.shape
        bx = b if x.shape[0] > 1 else 0
        tx = t if x.shape[2] > 1 else 0
        j = 0
        while j < nd:
            g = (d0 + j) // heads
            je = min(nd, (g + 1) * heads - d0)
            for n in range(n_state):
                v = x[bx, g, tx, n]
                seg = tile[n, j:je]
                for jj in range(je - j):
                    seg[jj] = v
            j = je

    @njit(fastmath=True, boundscheck=False, cache=True)
    def _nb_add_group_sums(tile, heads, b, t, d0, acc):  # pragma: no cover - compiled
        # acc[b, g, t, n] += sum of tile[n, j] over the block's channels j of group g (acc laid out as B/C)
        n_state, nd = tile.shape
        bx = b if acc.shape[0] > 1 else 0
        tx = t if acc.shape[2] > 1 else 0
        j = 0
        while j < nd:
            g = (d0 + j) // heads
            je = min(nd, (g + 1) * heads - d0)
            for n in range(n_state):
                seg = tile[n, j:je]
                s = seg[0]
                for jj in range(1, je - j):
                    s += seg[jj]
                acc[bx, g, tx, n] += s
            j = je

    @njit(fastmath=True, boundscheck=False, cache=True)
    def _nb_load_steps(u, dt, b, t, d0, stepv, xv):  # pragma: no cover - compiled
        ub = u[b, t, d0 : d0 + stepv.size]
        db = dt[b, t, d0 : d0 + stepv.size]
        for j in range(stepv.size):
            stepv[j] = db[j]
            xv[j] = db[j] * ub[j]

    @njit(fastmath=True, boundscheck=False, cache=True)
    def _nb_advance(h_prev, h_next, dec, av, stepv, xv, btile):  # pragma: no cover - compiled
        # h_next = exp(step a) h_prev + step u B for one position; dec keeps the decays exp(step a). h_prev and
        # h_next must be different arrays: LLVM's overlap check would send an in-place update to a scalar loop.
        n_state, nd = av.shape
        for n in range(n_state):
            for j in range(nd):
                a = _nb_decay(stepv[j] * av[n, j])
                dec[n, j] = a
                h_next[n, j] = a * h_prev[n, j] + xv[j] * btile[n, j]

    @njit(fastmath=True, boundscheck=False, cache=True)
    def _nb_output(h, ctile, u, dskip, b, t, d0, acc):  # pragma: no cover - compiled
        # acc[j] = sum_n C h + D u (the scan output before the gate)
        n_state, nd = h.shape
        ub = u[b, t, d0 : d0 + nd]
        db = dskip[d0 : d0 + nd]
        for j in range(nd):
            acc[j] = db[j] * ub[j]
        for n in range(n_state):
            for j in range(nd):
                acc[j] += h[n, j] * ctile[n, j]

    @njit(fastmath=True, boundscheck=False, cache=True)
    def _nb_copy_states(h, rows, d0, to_rows):  # pragma: no cover - compiled
        # between a job's states h (N, nd) and the channels d0 .. d0 + nd of rows (N, D); explicit loops, as
        # numba's array assignment would compile its string-formatting error path (seconds of compile time)
        n_state, nd = h.shape
        for n in range(n_state):
            r = rows[n, d0 : d0 + nd]
            if to_rows:
                for j in range(nd):
                    r[j] = h[n, j]
            else:
                for j in range(nd):
                    h[n, j] = r[j]

    @njit(fastmath=True, boundscheck=False, cache=True)
    def _nb_transposed(x, d0, nd):  # pragma: no cover - compiled
        # x[d0 : d0 + nd] of a (D, N) array as a contiguous (N, nd) array
        out = np.empty((x.shape[1], nd), dtype=x.dtype)
        for n in range(x.shape[1]):
            for j in range(nd):
                out[n, j] = x[d0 + j, n]
        return out

    @njit(fastmath=True, boundscheck=False, cache=True)
    def _nb_forward_job(u, dt, a_exp, bk, ck, dskip, z, out, last, ckpt, b, d0, nd):  # pragma: no cover - compiled
        n_state = a_exp.shape[1]
        hb = u.shape[2] // bk.shape[1]
        hc = u.shape[2] // ck.shape[1]
        av = _nb_transposed(a_exp, d0, nd)
        hh = np.zeros((2, n_state, nd), dtype=u.dtype)  # states of even and odd positions (see advance)
        dec = np.empty((n_state, nd), dtype=u.dtype)
        btile = np.empty((n_state, nd), dtype=u.dtype)
        ctile = np.empty((n_state, nd), dtype=u.dtype)
        stepv = np.empty(nd, dtype=u.dtype)
        xv = np.empty(nd, dtype=u.dtype)
        acc = np.empty(nd, dtype=u.dtype)
        for t in range(u.shape[1]):
            if ckpt.shape[0] > 0 and t % _CHECKPOINT_EVERY == 0:
                _nb_copy_states(hh[t % 2], ckpt[b, t // _CHECKPOINT_EVERY], d0, True)
            _nb_load_steps(u, dt, b, t, d0, stepv, xv)
            if t == 0 or bk.shape[2] > 1:
                _nb_fill_tile(bk, hb, b, t, d0, btile)
            if t == 0 or ck.shape[2] > 1:
                _nb_fill_tile(ck, hc, b, t, d0, ctile)
            h = hh[(t + 1) % 2]
            _nb_advance(hh[t % 2], h, dec, av, stepv, xv, btile)
            _nb_output(h, ctile, u, dskip, b, t, d0, acc)
            ob = out[b, t, d0 : d0 + nd]
            if z.shape[0] > 0:
                zb = z[b, t, d0 : d0 + nd]
                for j in range(nd):  # silu(z) = z sigmoid(z)
                    ob[j] = acc[j] * zb[j] * _nb_sigmoid(zb[j])
            else:
                for j in range(nd):
                    ob[j] = acc[j]
        h = hh[u.shape[1] % 2]
        for j in range(nd):
            for n in range(n_state):
                last[b, d0 + j, n] = h[n, j]

    @njit(parallel=True, fastmath=True, boundscheck=False, cache=True)
    def _nb_forward(u, dt, a_exp, bk, ck, dskip, z, out, last, ckpt):  # pragma: no cover - compiled
        # out = (sum_n C h + dskip u) * silu(z) (z empty: no gate); last: (B, D, N); ckpt: empty, or
        # (B, ceil(L / _CHECKPOINT_EVERY), N, D) receiving the state before every _CHECKPOINT_EVERY-th position
        dim = u.shape[2]
        nblk = (dim + _CHANNEL_BLOCK - 1) // _CHANNEL_BLOCK
        for job in prange(u.shape[0] * nblk):
            d0 = (job % nblk) * _CHANNEL_BLOCK
            _nb_forward_job(
                u, dt, a_exp, bk, ck, dskip, z, out, last, ckpt, job // nblk, d0, min(dim, d0 + _CHANNEL_BLOCK) - d0
            )

    @njit(fastmath=True, boundscheck=False, cache=True)
    def _nb_backward_job(  # pragma: no cover - compiled
        u, dt, a_exp, a, bk, ck, dskip, z, dsp, gout, glast, ckpt,
        gu, gdt, gz, ga, gb, gc, gd, gbias, b, d0, nd,
    ):
        # Adjoint recurrence g_t = C_t gy_t + exp(dt_{t+1} a) g_{t+1} (g_{L-1} also gets glast) for one job:
        # chunk by chunk (of _CHECKPOINT_EVERY positions) from the end, the chunk's states and decays are
        # recomputed from the forward pass's checkpoint into (chunk + 1, N, nd) buffers and swept in reverse.
        # ga, gb, gc, gd, gbias are this work item's partial sums (accumulated into).
        seqlen = u.shape[1]
        n_state = a.shape[1]
        nck = (seqlen + _CHECKPOINT_EVERY - 1) // _CHECKPOINT_EVERY
        hb = u.shape[2] // bk.shape[1]
        hc = u.shape[2] // ck.shape[1]
        av = _nb_transposed(a_exp, d0, nd)
        aa = _nb_transposed(a, d0, nd)
        hbuf = np.zeros((_CHECKPOINT_EVERY + 1, n_state, nd), dtype=u.dtype)
        abuf = np.empty((_CHECKPOINT_EVERY, n_state, nd), dtype=u.dtype)
        gyb = np.empty((_CHECKPOINT_EVERY, nd), dtype=u.dtype)
        btile = np.empty((n_state, nd), dtype=u.dtype)
        ctile = np.empty((n_state, nd), dtype=u.dtype)
        gbt = np.empty((n_state, nd), dtype=u.dtype)
        gct = np.empty((n_state, nd), dtype=u.dtype)
        carry = np.zeros((n_state, nd), dtype=u.dtype)
        acca = np.zeros((n_state, nd), dtype=u.dtype)
        stepv = np.empty(nd, dtype=u.dtype)
        xv = np.empty(nd, dtype=u.dtype)
        acc = np.empty(nd, dtype=u.dtype)
        sgb = np.empty(nd, dtype=u.dtype)
        sdt = np.empty(nd, dtype=u.dtype)
        if glast.shape[0] > 0:
            for n in range(n_state):
                for j in range(nd):
                    carry[n, j] = glast[b, d0 + j, n]
        for c in range(nck - 1, -1, -1):
            t0 = c * _CHECKPOINT_EVERY
            steps = min(seqlen, t0 + _CHECKPOINT_EVERY) - t0
            _nb_copy_states(hbuf[0], ckpt[b, c], d0, False)
            for k in range(steps):  # recompute the chunk; gradient of the scan output before the gate
                t = t0 + k
                _nb_load_steps(u, dt, b, t, d0, stepv, xv)
                _nb_fill_tile(bk, hb, b, t, d0, btile)
                _nb_advance(hbuf[k], hbuf[k + 1], abuf[k], av, stepv, xv, btile)
                gy = gyb[k]
                go = gout[b, t, d0 : d0 + nd]
                if z.shape[0] > 0:
                    _nb_fill_tile(ck, hc, b, t, d0, ctile)
                    _nb_output(hbuf[k + 1], ctile, u, dskip, b, t, d0, acc)
                    zb = z[b, t, d0 : d0 + nd]
                    gzb = gz[b, t, d0 : d0 + nd]
                    for j in range(nd):  # silu'(z) = sigmoid(z) + silu(z) (1 - sigmoid(z))
                        zs = _nb_sigmoid(zb[j])
                        sz = zb[j] * zs
                        gzb[j] = go[j] * acc[j] * (zs + sz * (1 - zs))
                        gy[j] = go[j] * sz
                else:
                    for j in range(nd):
                        gy[j] = go[j]
            for k in range(steps - 1, -1, -1):
                t = t0 + k
                h0 = hbuf[k]
                h1 = hbuf[k + 1]
                dk = abuf[k]
                gy = gyb[k]
                _nb_load_steps(u, dt, b, t, d0, stepv, xv)
                _nb_fill_tile(bk, hb, b, t, d0, btile)
                _nb_fill_tile(ck, hc, b, t, d0, ctile)
                sgb[:] = 0
                sdt[:] = 0
                for n in range(n_state):
                    for j in range(nd):
                        gi = ctile[n, j] * gy[j] + carry[n, j]
                        mi = gi * dk[n, j] * h0[n, j]
                        acca[n, j] += mi * stepv[j]
                        sdt[j] += mi * aa[n, j]
                        sgb[j] += gi * btile[n, j]
                        gbt[n, j] = gi * xv[j]
                        gct[n, j] = h1[n, j] * gy[j]
                        carry[n, j] = dk[n, j] * gi
                _nb_add_group_sums(gbt, hb, b, t, d0, gb)
                _nb_add_group_sums(gct, hc, b, t, d0, gc)
                ub = u[b, t, d0 : d0 + nd]
                gub = gu[b, t, d0 : d0 + nd]
                gdb = gdt[b, t, d0 : d0 + nd]
                for j in range(nd):
                    gub[j] = stepv[j] * sgb[j] + dskip[d0 + j] * gy[j]
                    gdb[j] = ub[j] * sgb[j] + sdt[j]
                if dsp.shape[0] > 0:
                    sp = dsp[b, t, d0 : d0 + nd]
                    for j in range(nd):
                        gdb[j] *= sp[j]
                for j in range(nd):
                    gbias[d0 + j] += gdb[j]
                    gd[d0 + j] += gy[j] * ub[j]
        for n in range(n_state):
            for j in range(nd):
                ga[d0 + j, n] += acca[n, j]

    @njit(parallel=True, fastmath=True, boundscheck=False, cache=True)
    def _nb_backward(  # pragma: no cover - compiled
        u, dt, a_exp, a, bk, ck, dskip, z, dsp, gout, glast, ckpt, nparts,
        gu, gdt, gz, ga_p, gb_p, gc_p, gd_p, gbias_p,
    ):
        # Work item p of nparts runs jobs p, p + nparts, ... and accumulates gA, gB, gC, gD, g(delta_bias) into
        # its own slice [p] of the *_p buffers (zeroed by the caller, summed afterwards): no element is written
        # by two threads. z, dsp (= softplus' derivative), glast: empty when absent.
        dim = u.shape[2]
        nblk = (dim + _CHANNEL_BLOCK - 1) // _CHANNEL_BLOCK
        for p in prange(nparts):
            for job in range(p, u.shape[0] * nblk, nparts):
                d0 = (job % nblk) * _CHANNEL_BLOCK
                _nb_backward_job(
                    u, dt, a_exp, a, bk, ck, dskip, z, dsp, gout, glast, ckpt,
                    gu, gdt, gz, ga_p[p], gb_p[p], gc_p[p], gd_p[p], gbias_p[p], job // nblk, d0,
                    min(dim, d0 + _CHANNEL_BLOCK) - d0,
                )


@functools.cache
def _kernels() -> None:
    """Define the compiled kernels once per process (numba compiles them on first use, or loads them from its
    disk cache)."""
    numba, why = _load_numba()
    if numba is None:
        raise RuntimeError(why)
    import numba.extending  # noqa: F401 - for the overload decorator

    _define_kernels(numba)


def exp2_nonpositive(x: torch.Tensor) -> torch.Tensor:
    """``2 ** x`` for float32 ``x <= 0`` with the kernel's polynomial (arguments below -125 give ``2^-125``).

    Exposed so that its accuracy is tested; the kernel calls the same compiled ``exp2_parts``.

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
    _nb_exp2_array(v, out)
    return torch.from_numpy(out).reshape(x.shape)


def _set_threads() -> None:
    numba, _ = _load_numba()
    numba.set_num_threads(max(1, min(torch.get_num_threads(), numba.config.NUMBA_NUM_THREADS)))  # type: ignore[attr-defined]


def _np(x: torch.Tensor | None, ct: torch.dtype) -> np.ndarray:
    """Contiguous ``ct`` numpy view/copy of ``x``; an empty ``(0, 0, 0)`` array stands for ``None``."""
    if x is None:
        return np.empty((0, 0, 0), dtype=np.float32 if ct == torch.float32 else np.float64)
    return x.detach().to(ct).contiguous().numpy()


def _exponent_factors(A: torch.Tensor, ct: torch.dtype) -> np.ndarray:
    """What the kernel multiplies ``delta`` by before exponentiating: ``A log2(e)`` (float32 ``exp2``) or ``A``."""
    if ct == torch.float32:
        return (A.detach().to(torch.float64) * _LOG2E).to(torch.float32).contiguous().numpy()
    return _np(A, ct)


def _skip(D: torch.Tensor | None, dim: int, ct: torch.dtype) -> np.ndarray:
    return _np(D if D is not None else torch.zeros(dim), ct)


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
) -> tuple[torch.Tensor, torch.Tensor, tuple[torch.Tensor | None, ...] | None]:
    """The whole scan (steps, recurrence, skip, gate) without autograd on channel-last CPU tensors.

    Args:
        u, delta, z: ``(B, L, D)`` (any strides).
        A: ``(D, N)``.
        bk, ck: ``B``/``C`` as ``(B or 1, G, L or 1, N)`` (see :func:`_kernel_layout`).
        D, delta_bias: ``(D,)`` or ``None``.
        softplus: apply softplus to ``delta + delta_bias``.
        keep_for_backward: also return what :func:`_scan_backward` needs besides the inputs.

    Returns:
        ``out`` ``(B, L, D)`` and the last state ``(B, D, N)`` in the compute dtype, and (or ``None``) the
        contiguous compute-dtype ``u``, time steps and ``z`` (``(B, L, D)``, ``z`` ``None`` when absent) and the
        checkpoints ``(B, ceil(L / _CHECKPOINT_EVERY), N, D)``.
    """
    ct = compute_dtype(u, delta, A, bk, ck)
    batch, seqlen, dim = u.shape
    with torch.no_grad():
        u_c = u.detach().to(ct).contiguous()
        dt = torch.empty(u.shape, dtype=ct)  # bias and softplus into a contiguous buffer, transposing on the way
        if delta_bias is None:
            dt.copy_(delta)
        else:
            torch.add(delta.detach(), delta_bias.detach(), out=dt)
        if softplus:
            dt = F.softplus(dt)
        z_c = None if z is None else z.detach().to(ct).contiguous()
        out = torch.empty(u.shape, dtype=ct)
        last = torch.empty(batch, dim, A.shape[1], dtype=ct)
        ckpt = torch.empty(
            (batch, -(-seqlen // _CHECKPOINT_EVERY), A.shape[1], dim) if keep_for_backward else (0,) * 4, dtype=ct
        )
        args = (_exponent_factors(A, ct), _np(bk, ct), _np(ck, ct), _skip(D, dim, ct), _np(z_c, ct))
        _kernels()
        with _KERNEL_LOCK:
            _set_threads()
            _nb_forward(u_c.numpy(), dt.numpy(), *args, out.numpy(), last.numpy(), ckpt.numpy())
    return out, last, (u_c, dt, z_c, ckpt) if keep_for_backward else None


def _scan_backward(
    inputs: tuple[torch.Tensor | None, ...],
    kept: tuple[torch.Tensor | None, ...],
    gout: torch.Tensor | None,
    glast: torch.Tensor | None,
    softplus: bool,
) -> tuple[torch.Tensor | None, ...]:
    """Gradients w.r.t. ``inputs = (u, delta, A, bk, ck, D, z, delta_bias)`` (the layouts of
    :func:`_scan_forward`, whose ``kept`` tensors are given) of a loss whose gradients w.r.t. ``out`` and the
    last state are ``gout`` ``(B, L, D)`` and ``glast`` ``(B, D, N)`` (``None`` = zero), by the compiled
    adjoint recurrence."""
    u, delta, A, bk, ck, D, z, delta_bias = inputs
    u_c, dt, z_c, ckpt = kept
    ct = dt.dtype
    numba, _ = _load_numba()
    with torch.no_grad():
        dim, n_state = A.shape
        # softplus'(raw) = sigmoid(raw) = 1 - exp(-softplus(raw))
        dsp = torch.expm1(dt.neg()).neg_() if softplus else None
        kernel_inputs = (
            u_c.numpy(), dt.numpy(), _exponent_factors(A, ct), _np(A, ct), _np(bk, ct), _np(ck, ct),
            _skip(D, dim, ct), _np(z_c, ct), _np(dsp, ct),
            _np(torch.zeros(u.shape, dtype=ct) if gout is None else gout, ct), _np(glast, ct),
        )
        gu, gdt = np.empty(u.shape, dtype=kernel_inputs[0].dtype), np.empty(u.shape, dtype=kernel_inputs[0].dtype)
        gz = np.empty_like(gu) if z is not None else _np(None, ct)
        _kernels()
        with _KERNEL_LOCK:
            _set_threads()
            parts = max(1, min(numba.get_num_threads(), u.shape[0] * -(-dim // _CHANNEL_BLOCK)))  # type: ignore[attr-defined]
            partial = [
                np.zeros((parts, *shape), dtype=gu.dtype)
                for shape in ((dim, n_state), tuple(bk.shape), tuple(ck.shape), (dim,), (dim,))
            ]
            _nb_backward(*kernel_inputs, ckpt.numpy(), parts, gu, gdt, gz, *partial)
    ga, gb, gc, gd, gbias = (torch.from_numpy(x.sum(0)) for x in partial)
    return (
        torch.from_numpy(gu).to(u.dtype),
        torch.from_numpy(gdt).to(delta.dtype),
        ga.to(A.dtype),
        gb.to(bk.dtype),
        gc.to(ck.dtype),
        None if D is None else gd.to(D.dtype),
        None if z is None else torch.from_numpy(gz).to(z.dtype),
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
        out, last, kept = _scan_forward(u, delta, A, bk, ck, D, z, delta_bias, softplus, keep)
        ctx.save_for_backward(u, delta, A, bk, ck, D, z, delta_bias, *(kept or (None,) * 4))
        ctx.softplus = softplus
        return out.to(u.dtype), last

    @staticmethod
    def backward(  # type: ignore[override]
        ctx: torch.autograd.function.FunctionCtx, gout: torch.Tensor | None, glast: torch.Tensor | None
    ) -> tuple[torch.Tensor | None, ...]:
        saved = ctx.saved_tensors
        return (*_scan_backward(saved[:8], saved[8:], gout, glast, ctx.softplus), None)


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
    prepare_scan_inputs(u, delta, A, B, C, D, z, delta_bias)
    _require_cpu({"u": u, "delta": delta, "A": A, "B": B, "C": C, "D": D, "z": z, "delta_bias": delta_bias})
    out, last = _CompiledScanFn.apply(
        u.mT, delta.mT, A, _kernel_layout(B), _kernel_layout(C), D, None if z is None else z.mT, delta_bias,
        bool(delta_softplus),
    )
    return (out.mT, last) if return_last_state else out.mT


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
        None if z is None else z.transpose(1, 2), delta_bias,
    )
    _require_cpu({"u": u, "delta": delta, "A": A, "B": B, "C": C, "D": D, "z": z, "delta_bias": delta_bias})
    out, _ = _CompiledScanFn.apply(
        u, delta, A, _kernel_layout(B, channels_last=True), _kernel_layout(C, channels_last=True), D, z,
        delta_bias, bool(delta_softplus),
    )
    return out
