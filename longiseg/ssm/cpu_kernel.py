"""Fused CPU selective scan compiled with numba (optional: ``pip install longiseg[cpu]``).

The chunked PyTorch scan materialises ``(B, D, L, N)`` tensors and is bound by memory traffic and per-operation
overhead on a CPU. This backend runs the recurrence in one compiled loop per ``(batch, block of channels)``,
parallel over those blocks, keeping the ``(block, N)`` state in registers/L1:

    for t in 0..L-1:   h[d, n] = exp(delta[d, t] A[d, n]) h[d, n] + delta[d, t] u[d, t] B[g(d), n, t]
                       y[d, t] = sum_n C[g(d), n, t] h[d, n]

The skip term ``D u``, the gate ``silu(z)``, the bias and the softplus of ``delta`` are applied with PyTorch
around the kernel, exactly as in the other backends.

**The exponential.** In float32 the kernel evaluates ``exp(x) = 2^(x log2 e)`` like mamba-ssm's CUDA kernel
(``exp2f``), with a degree-6 polynomial for ``2^f`` on ``(0, 1]`` and the integer power of two built from its
exponent bits (:func:`exp2_nonpositive`, relative error < 2e-7, tested against ``torch.exp``); this lets the
compiler vectorise the state update, which makes it about three times faster than scalar ``exp`` calls.
Arguments below ``-125`` (``2^-125 = 2.4e-38``) are clamped there: a decay factor that small is zero for every
purpose. Float64 inputs use the exact ``math.exp`` (the path the float64 tests compare with the reference).

**Gradients.** Only the forward pass is compiled. :class:`~torch.autograd.Function` ``_CompiledScanFn`` reuses the
chunked scan's backward (which recomputes the states from the saved inputs), so training gets the faster forward
pass and the same gradients as ``backend="chunked"``.

**Threads.** The kernel uses ``torch.get_num_threads()`` numba threads (capped by numba's own limit) on numba's
work-queue threading layer (unless ``NUMBA_THREADING_LAYER`` is set), and launches are serialised by a lock.
"""

from __future__ import annotations

import functools
import math
import os
import threading
from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F

from longiseg.ssm.chunked import (
    DEFAULT_BLOCK_ELEMS,
    _chunked_backward,
    _ChunkedScanFn,
    _process_delta,
    _save_inputs,
    default_chunk_size,
)
from longiseg.ssm.inputs import bc_grouped, compute_dtype, prepare_scan_inputs

__all__ = [
    "cpu_kernel_available",
    "require_cpu_kernel",
    "selective_scan_cpu",
    "selective_scan_cpu_channels_last",
    "exp2_nonpositive",
]

_LOG2E = 1.4426950408889634
#: Channels per work item of the kernel (the state of one item, 16 x N floats, stays in L1).
_CHANNEL_BLOCK = 16


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


@functools.cache
def _kernels() -> tuple[Callable[..., None], Callable[..., None], Callable[..., None]]:
    """Compile (once per process; numba caches the machine code on disk when it can) the three kernels."""
    numba, why = _load_numba()
    if numba is None:
        raise RuntimeError(why)
    njit, prange = numba.njit, numba.prange
    c0, c1, c2, c3, c4, c5, c6 = (np.float32(c) for c in _EXP2_COEF)
    block = _CHANNEL_BLOCK

    @njit(fastmath=True, boundscheck=False, cache=True)
    def exp2_parts(v, mantissa, bits):  # pragma: no cover - compiled
        # 2^v = mantissa * bits.view(float32) for float32 v <= 0, as two vectorisable element-wise loops' worth
        for i in range(v.size):
            x = max(v[i], np.float32(-125.0))
            k = np.int32(-x)  # truncation: k = ceil(-x) - (x integral), x + k in (-1, 0]
            f = x + np.float32(k) + np.float32(1.0)  # in (0, 1]
            mantissa[i] = c0 + f * (c1 + f * (c2 + f * (c3 + f * (c4 + f * (c5 + f * c6)))))
            bits[i] = (np.int32(126) - k) << 23  # the float32 bits of 2^(-k-1)

    @njit(fastmath=True, boundscheck=False, cache=True)
    def exp2_np(v: np.ndarray, out: np.ndarray, bits: np.ndarray) -> None:  # pragma: no cover - compiled
        exp2_parts(v, out, bits)
        scale = bits.view(np.float32)
        for i in range(v.size):
            out[i] *= scale[i]

    @njit(parallel=True, fastmath=True, boundscheck=False, cache=True)
    def scan_f32(u, dt, a2, bt, ct, heads, out, last):  # pragma: no cover - compiled
        # u, dt, out: (B, L, D); a2 = A log2(e): (D, N); bt, ct: (B, G, L, N); last: (B, D, N)
        nb, seqlen, dim = u.shape
        n_state = a2.shape[1]
        nblk = (dim + block - 1) // block
        for job in prange(nb * nblk):
            b = job // nblk
            d0 = (job % nblk) * block
            nd = min(dim, d0 + block) - d0
            size = nd * n_state
            h = np.zeros(size, dtype=np.float32)
            decay = np.empty(size, dtype=np.float32)
            bits = np.empty(size, dtype=np.int32)
            scale = bits.view(np.float32)
            drive = np.empty(size, dtype=np.float32)
            expo = np.empty(size, dtype=np.float32)
            av = np.empty(size, dtype=np.float32)
            for j in range(nd):
                for n in range(n_state):
                    av[j * n_state + n] = a2[d0 + j, n]
            for t in range(seqlen):
                for j in range(nd):
                    d = d0 + j
                    g = d // heads
                    step = dt[b, t, d]
                    x = step * u[b, t, d]
                    for n in range(n_state):
                        expo[j * n_state + n] = step * av[j * n_state + n]
                        drive[j * n_state + n] = x * bt[b, g, t, n]
                exp2_parts(expo, decay, bits)
                for i in range(size):
                    h[i] = decay[i] * scale[i] * h[i] + drive[i]
                for j in range(nd):
                    g = (d0 + j) // heads
                    acc = np.float32(0.0)
                    for n in range(n_state):
                        acc += h[j * n_state + n] * ct[b, g, t, n]
                    out[b, t, d0 + j] = acc
            for j in range(nd):
                for n in range(n_state):
                    last[b, d0 + j, n] = h[j * n_state + n]

    @njit(parallel=True, boundscheck=False, cache=True)
    def scan_exact(u, dt, a, bt, ct, heads, out, last):  # pragma: no cover - compiled
        # Same layout as scan_f32 with the exact exponential (any float dtype; used for float64).
        nb, seqlen, dim = u.shape
        n_state = a.shape[1]
        for job in prange(nb * dim):
            b = job // dim
            d = job % dim
            g = d // heads
            h = np.zeros(n_state, dtype=u.dtype)
            for t in range(seqlen):
                step = dt[b, t, d]
                x = step * u[b, t, d]
                acc = 0.0
                for n in range(n_state):
                    hn = math.exp(step * a[d, n]) * h[n] + x * bt[b, g, t, n]
                    h[n] = hn
                    acc += hn * ct[b, g, t, n]
                out[b, t, d] = acc
            for n in range(n_state):
                last[b, d, n] = h[n]

    return exp2_np, scan_f32, scan_exact


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
    _kernels()[0](v, out, np.empty(v.shape, dtype=np.int32))
    return torch.from_numpy(out).reshape(x.shape)


def _set_threads() -> None:
    numba, _ = _load_numba()
    numba.set_num_threads(max(1, min(torch.get_num_threads(), numba.config.NUMBA_NUM_THREADS)))  # type: ignore[attr-defined]


def _run_kernel(
    u: torch.Tensor,
    dt: torch.Tensor,
    A: torch.Tensor,
    bt: torch.Tensor,
    c_t: torch.Tensor,
    ct: torch.dtype,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The bare recurrence on channel-last CPU tensors.

    Args:
        u, dt: ``(B, L, D)`` input and processed (biased, softplus-ed) time steps.
        A: ``(D, N)``.
        bt, c_t: ``(B, G, L, N)``.
        ct: compute dtype (float32 or float64).

    Returns:
        ``y = sum_n C h`` ``(B, L, D)`` and the last state ``(B, D, N)``, both in ``ct``.
    """
    u_np = u.to(ct).contiguous().numpy()
    dt_np = dt.to(ct).contiguous().numpy()
    b_np = bt.to(ct).contiguous().numpy()
    c_np = c_t.to(ct).contiguous().numpy()
    out = np.empty_like(u_np)
    last = np.empty((u_np.shape[0], u_np.shape[2], A.shape[1]), dtype=u_np.dtype)
    heads = u_np.shape[2] // b_np.shape[1]
    _, scan_f32, scan_exact = _kernels()
    with _KERNEL_LOCK:
        _set_threads()
        if ct == torch.float32:
            a2 = (A.detach().to(torch.float64) * _LOG2E).to(torch.float32).contiguous().numpy()
            scan_f32(u_np, dt_np, a2, b_np, c_np, heads, out, last)
        else:
            scan_exact(u_np, dt_np, A.detach().to(ct).contiguous().numpy(), b_np, c_np, heads, out, last)
    return torch.from_numpy(out), torch.from_numpy(last)


def _forward_channels_last(
    u: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    Bg: torch.Tensor,
    Cg: torch.Tensor,
    D: torch.Tensor | None,
    z: torch.Tensor | None,
    delta_bias: torch.Tensor | None,
    softplus: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The whole scan (steps, kernel, skip, gate) without autograd on channel-last CPU tensors.

    ``u``, ``delta``, ``z``: ``(B, L, D)``; ``Bg``, ``Cg``: ``(B, G, L, N)``. Returns ``out (B, L, D)`` in the
    compute dtype and the last state ``(B, D, N)``.
    """
    ct = compute_dtype(u, delta, A, Bg, Cg)
    with torch.no_grad():
        _, dt = _process_delta(delta, delta_bias, softplus, ct, channels_last=True)
        y, last = _run_kernel(u, dt, A, Bg, Cg, ct)
        if D is not None:
            y = y + u.to(ct) * D.to(ct)
        if z is not None:
            y = y * F.silu(z.to(ct))
    return y, last


def _require_cpu(named: dict[str, torch.Tensor | None]) -> None:
    for name, t in named.items():
        if t is not None and t.device.type != "cpu":
            raise ValueError(f"{name} must be on the CPU for the 'numba' scan backend, got device {t.device}")


class _CompiledScanFn(_ChunkedScanFn):
    """Compiled forward pass; backward inherited from the chunked scan (recomputes the states)."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: torch.autograd.function.FunctionCtx,
        u: torch.Tensor,
        delta: torch.Tensor,
        A: torch.Tensor,
        Bg: torch.Tensor,
        Cg: torch.Tensor,
        D: torch.Tensor | None,
        z: torch.Tensor | None,
        delta_bias: torch.Tensor | None,
        softplus: bool,
        chunk_size: int,
        block_elems: int,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        y, last = _forward_channels_last(
            u.mT, delta.mT, A, Bg.mT, Cg.mT, D, None if z is None else z.mT, delta_bias, softplus
        )
        _save_inputs(ctx, (u, delta, A, Bg, Cg, D, z, delta_bias), softplus, chunk_size, block_elems)
        return y.mT.to(u.dtype), last


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
        ``out`` ``(B, D, L)`` in ``u.dtype``, or ``(out, last_state)``. Differentiable (backward of the chunked
        scan).

    Raises:
        RuntimeError: numba is not installed.
        ValueError: tensors not on the CPU, or invalid shapes (see :func:`longiseg.ssm.selective_scan`).
    """
    require_cpu_kernel()
    s = prepare_scan_inputs(u, delta, A, B, C, D, z, delta_bias)
    _require_cpu({"u": u, "delta": delta, "A": A, "B": B, "C": C, "D": D, "z": z, "delta_bias": delta_bias})
    Bg = bc_grouped(B, s.batch, s.dim, s.seqlen)
    Cg = bc_grouped(C, s.batch, s.dim, s.seqlen)
    out, last = _CompiledScanFn.apply(
        u, delta, A, Bg, Cg, D, z, delta_bias, bool(delta_softplus), default_chunk_size(s.seqlen),
        DEFAULT_BLOCK_ELEMS,
    )
    return (out, last) if return_last_state else out


class _ChannelsLastScanFn(torch.autograd.Function):
    """Channel-last compiled forward; backward = the chunked scan's backward on transposed views."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: torch.autograd.function.FunctionCtx,
        u: torch.Tensor,
        delta: torch.Tensor,
        A: torch.Tensor,
        B: torch.Tensor,
        C: torch.Tensor,
        D: torch.Tensor | None,
        z: torch.Tensor | None,
        delta_bias: torch.Tensor | None,
        softplus: bool,
    ) -> torch.Tensor:
        y, _ = _forward_channels_last(u, delta, A, B.unsqueeze(1), C.unsqueeze(1), D, z, delta_bias, softplus)
        ctx.save_for_backward(u, delta, A, B, C, D, z, delta_bias)
        ctx.softplus = softplus
        return y.to(u.dtype)

    @staticmethod
    def backward(  # type: ignore[override]
        ctx: torch.autograd.function.FunctionCtx, gout: torch.Tensor
    ) -> tuple[torch.Tensor | None, ...]:
        u, delta, A, B, C, D, z, delta_bias = ctx.saved_tensors
        canonical = (u.mT, delta.mT, A, B.mT.unsqueeze(1), C.mT.unsqueeze(1), D, None if z is None else z.mT, delta_bias)
        gu, gdelta, gA, gB, gC, gD, gz, gbias = _chunked_backward(
            canonical, gout.mT, None, ctx.softplus, default_chunk_size(u.shape[1]), DEFAULT_BLOCK_ELEMS
        )
        return (
            gu.mT,
            gdelta.mT,
            gA,
            gB.squeeze(1).mT,
            gC.squeeze(1).mT,
            gD,
            None if gz is None else gz.mT,
            gbias,
            None,
        )


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
    return _ChannelsLastScanFn.apply(u, delta, A, B, C, D, z, delta_bias, bool(delta_softplus))
