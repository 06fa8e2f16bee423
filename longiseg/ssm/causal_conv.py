"""Mamba's causal depthwise convolution with SiLU, fused and compiled for channel-last CPU tensors (numba).

For ``x`` ``(B, L, D)``, weights ``w`` ``(D, K)`` and an optional bias ``(D,)``::

    y[b, t, d] = silu(bias[d] + sum_k w[d, k] x[b, t + k - (K - 1), d])      (x = 0 before t = 0)

which is ``silu(conv1d(x.mT, w[:, None], bias, padding=K - 1, groups=D)[..., :L]).mT``, the convolution of
:class:`~longiseg.ssm.Mamba` (:func:`causal_conv1d_silu_reference`). In PyTorch that is a padded copy, ``K``
multiply-adds and the SiLU, each a pass over ``(B, L, D)`` in both directions of autograd, with zero-filled gradient
buffers for the slices of the padded copy: a quarter of a Mamba block's time on a CPU. The compiled version reads
``x`` where it lies (any layout whose channels have unit stride, such as the half of Mamba's input projection),
writes ``y`` in one pass and keeps nothing but ``x`` for the backward pass, which recomputes the pre-activation and
forms the gradients in two sweeps over time (the pre-activation gradient is kept in the rows of ``dx``, which the
second sweep turns into ``dx`` in place). Jobs are ``(batch, block of at most 64 channels)``, parallel when the call
is large enough (as in :mod:`longiseg.ssm.cpu_kernel`, whose compiled ``sigmoid`` it uses; float32 sums in the order
``bias, k = 0 .. K - 1``, float64 tested against the reference at 1e-12).
"""

from __future__ import annotations

import functools
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from longiseg.ssm.cpu_kernel import (
    _KERNEL_LOCK,
    _job_blocks,
    _load_numba,
    _np,
    _polynomials,
    _use_threads,
    _zeros_or,
    jit,
    require_cpu_kernel,
)
from longiseg.ssm.cpu_kernel import _kernels as _scan_kernels
from longiseg.ssm.inputs import first_order_gradients
from longiseg.utils.tracing import outside_compiled_graphs

__all__ = ["causal_conv1d_silu_cpu", "causal_conv1d_silu_reference"]


def causal_conv1d_silu_reference(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """``silu(causal depthwise conv1d(x))`` with ``F.conv1d`` (what the compiled kernel computes).

    Args:
        x: ``(B, L, D)``.
        weight: ``(D, K)``.
        bias: ``(D,)`` or ``None``.

    Returns:
        ``(B, L, D)``.
    """
    k = weight.shape[1]
    conv = F.conv1d(x.transpose(1, 2), weight[:, None, :], bias, padding=k - 1, groups=weight.shape[0])
    return F.silu(conv[..., : x.shape[1]]).transpose(1, 2)


def _define_kernels(numba: Any) -> None:
    """Define the compiled functions as module globals (so that numba's disk cache can key them)."""
    global _nb_conv_forward_job, _nb_conv_forward_py, _nb_conv_backward_job, _nb_conv_backward_py
    # defined by the scan's _kernels(), which _kernels() below runs first
    from longiseg.ssm.cpu_kernel import _nb_coefficients, _nb_line, _nb_sigmoid, _nb_transposed

    njit, prange = functools.partial(jit, numba), numba.prange

    @njit(fastmath=True, boundscheck=False, error_model="numpy")
    def _nb_preactivation(x, wt, bias_j, b, t, d0, acc):  # pragma: no cover - compiled
        # acc = bias + sum_k w[:, k] x[b, t + k - (K - 1)] for channels d0 .. d0 + nd. (The weight gradient's
        # loop in the backward job walks the same taps; one helper with a flag for both measured 7-15% slower.)
        taps, nd = wt.shape
        for j in range(nd):
            acc[j] = bias_j[j]
        for k in range(taps):
            s = t + k - (taps - 1)
            if s >= 0:
                row = _nb_line(x, b, s, d0, nd)
                wk = wt[k]
                for j in range(nd):
                    acc[j] += wk[j] * row[j]

    @njit(fastmath=True, boundscheck=False, error_model="numpy")
    def _nb_conv_forward_job(x, w, bias, poly, y, b, d0, nd):  # pragma: no cover - compiled
        q = _nb_coefficients(poly)
        wt = _nb_transposed(w, d0, nd)  # (K, nd)
        bias_j = bias[d0 : d0 + nd]
        acc = np.empty(nd, dtype=y.dtype)
        for t in range(x.shape[1]):
            _nb_preactivation(x, wt, bias_j, b, t, d0, acc)
            out = _nb_line(y, b, t, d0, nd)
            for j in range(nd):
                out[j] = acc[j] * _nb_sigmoid(acc[j], q)

    def _nb_conv_forward_py(x, w, bias, poly, y, blocks):  # pragma: no cover - compiled
        nblk = blocks.shape[0]
        for job in prange(x.shape[0] * nblk):
            blk = job % nblk
            _nb_conv_forward_job(x, w, bias, poly, y, job // nblk, blocks[blk, 0], blocks[blk, 1] - blocks[blk, 0])

    @njit(fastmath=True, boundscheck=False, error_model="numpy")
    def _nb_conv_backward_job(x, w, bias, poly, gy, gx, gw, gbias, b, d0, nd):  # pragma: no cover - compiled
        # Two sweeps over time. First the pre-activation gradient ga[t] = gy[t] silu'(acc[t]) (acc recomputed)
        # goes into gx's row t, with the sums of gbias and gw; then, in place and ascending,
        # gx[t] = sum_k w[:, k] ga[t + K - 1 - k]: row t still holds ga[t] and the rows after it are untouched.
        # gw (D, K) and gbias (D,) are this work item's partial sums (accumulated into).
        q = _nb_coefficients(poly)
        seqlen = x.shape[1]
        taps = w.shape[1]
        wt = _nb_transposed(w, d0, nd)
        bias_j = bias[d0 : d0 + nd]
        acc = np.empty(nd, dtype=gx.dtype)
        gwt = np.zeros((taps, nd), dtype=gx.dtype)
        gb = np.zeros(nd, dtype=gx.dtype)
        for t in range(seqlen):
            _nb_preactivation(x, wt, bias_j, b, t, d0, acc)
            g = _nb_line(gy, b, t, d0, nd)
            for j in range(nd):  # silu'(a) = sigmoid(a) + silu(a) (1 - sigmoid(a)), into acc
                sg = _nb_sigmoid(acc[j], q)
                sa = acc[j] * sg
                acc[j] = g[j] * (sg + sa - sa * sg)
            ga = _nb_line(gx, b, t, d0, nd)
            for j in range(nd):
                ga[j] = acc[j]
            for j in range(nd):
                gb[j] += acc[j]
            for k in range(taps):
                s = t + k - (taps - 1)
                if s >= 0:
                    row = _nb_line(x, b, s, d0, nd)
                    gk = gwt[k]
                    for j in range(nd):
                        gk[j] += acc[j] * row[j]
        for t in range(seqlen):
            out = _nb_line(gx, b, t, d0, nd)
            wl = wt[taps - 1]
            for j in range(nd):
                acc[j] = wl[j] * out[j]
            for k in range(taps - 1):
                tt = t + taps - 1 - k
                if tt < seqlen:
                    src = _nb_line(gx, b, tt, d0, nd)
                    wk = wt[k]
                    for j in range(nd):
                        acc[j] += wk[j] * src[j]
            for j in range(nd):
                out[j] = acc[j]
        for j in range(nd):
            gbias[d0 + j] += gb[j]
            for k in range(taps):
                gw[d0 + j, k] += gwt[k, j]

    def _nb_conv_backward_py(x, w, bias, poly, gy, gx, gw_p, gbias_p, blocks, nparts):  # pragma: no cover - compiled
        nblk = blocks.shape[0]
        for p in prange(nparts):
            for job in range(p, x.shape[0] * nblk, nparts):
                blk = job % nblk
                _nb_conv_backward_job(x, w, bias, poly, gy, gx, gw_p[p], gbias_p[p], job // nblk, blocks[blk, 0],
                                      blocks[blk, 1] - blocks[blk, 0])


@functools.cache
def _kernels() -> None:
    """Define the convolution kernels once per process, after the scan's (whose helpers they call; that step
    also raises when numba is missing)."""
    _scan_kernels()
    _define_kernels(_load_numba()[0])


@functools.cache
def _entry(name: str, dtype: torch.dtype, parallel: bool) -> Any:
    """``forward`` or ``backward`` compiled for one dtype, parallel or serial; every ``(B, L, D)`` argument of
    any layout (``'A'``: the kernels need unit-stride channels, see :func:`_channel_rows`)."""
    numba, _ = _load_numba()
    _kernels()
    f = numba.float32 if dtype == torch.float32 else numba.float64  # type: ignore[attr-defined]
    arr = numba.types.Array  # type: ignore[attr-defined]
    any3, c1, c2 = arr(f, 3, "A"), arr(f, 1, "C"), arr(f, 2, "C")
    blocks = arr(numba.types.intp, 2, "C")  # type: ignore[attr-defined]
    if name == "forward":
        sig = numba.void(any3, c2, c1, c1, any3, blocks)  # type: ignore[attr-defined]
        fn = _nb_conv_forward_py
    else:
        sig = numba.void(any3, c2, c1, c1, any3, any3, arr(f, 3, "C"), c2, blocks, numba.types.intp)  # type: ignore[attr-defined]
        fn = _nb_conv_backward_py
    return jit(numba, [sig], parallel=parallel, fastmath=True, boundscheck=False, error_model="numpy")(fn)


def _channel_rows(x: torch.Tensor, ct: torch.dtype) -> np.ndarray:
    """``x`` ``(B, L, D)`` as a ``ct`` array whose channels have unit stride (shared memory where they do)."""
    x = x.detach()
    x = x if x.dtype == ct else x.to(ct)
    return (x if x.stride(2) == 1 else x.contiguous()).numpy()


def check_kernel_tensors(named: dict[str, Any], optional: tuple[str, ...] = ()) -> None:
    """The argument check of the compiled CPU operations: every entry of ``named`` (those in ``optional`` may be
    ``None``) is a CPU tensor of the first entry's dtype, float32 or float64.

    Raises:
        TypeError: not a tensor, or another dtype (the message names the argument and the first one).
        ValueError: a tensor off the CPU.
    """
    first, like = next(iter(named.items()))
    for name, t in named.items():
        if t is None and name in optional:
            continue
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
        if t.device.type != "cpu":
            raise ValueError(f"{name} must be on the CPU, got device {t.device}")
        if t.dtype != like.dtype or t.dtype not in (torch.float32, torch.float64):
            raise TypeError(f"{name} must be float32 or float64 like {first}, got {t.dtype} ({first}: {like.dtype})")


def conv_forward(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """The compiled forward pass without autograd: ``(B, L, D)`` (channels of unit stride, not copied) -> a new
    contiguous ``(B, L, D)`` in ``x.dtype`` (float32 or float64, like ``weight`` and ``bias``; not checked)."""
    ct = x.dtype
    batch, _, dim = x.shape
    y = torch.empty(x.shape, dtype=ct)
    blocks = _job_blocks(dim, 1, 1)  # the scan's jobs: blocks of 64 channels
    # work: multiply-adds
    with torch.no_grad(), _KERNEL_LOCK, _use_threads(batch * blocks.shape[0], x.numel() * weight.shape[1]) as threads:
        _entry("forward", ct, threads > 1)(
            _channel_rows(x, ct), _np(weight, ct), _zeros_or(bias, dim, ct), _polynomials(ct), y.numpy(), blocks,
        )
    return y


def conv_backward(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    gy: torch.Tensor,
    gx: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """The compiled backward pass without autograd: the gradients w.r.t. ``x`` ``(B, L, D)``, ``weight`` ``(D, K)``
    and ``bias`` ``(D,)`` (``None`` without bias) of a loss whose gradient w.r.t. the output is ``gy``
    ``(B, L, D)``. ``gx``: where to write the input gradient (a ``(B, L, D)`` tensor whose channels have unit
    stride, e.g. a channel slice of a larger gradient), else a new contiguous one."""
    ct = x.dtype
    batch, _, dim = x.shape
    gx = torch.empty(x.shape, dtype=ct) if gx is None else gx
    blocks = _job_blocks(dim, 1, 1)  # the scan's jobs: blocks of 64 channels
    with torch.no_grad(), _KERNEL_LOCK, _use_threads(batch * blocks.shape[0], x.numel() * weight.shape[1]) as parts:
        gx_np = gx.detach().numpy()
        gw = np.zeros((parts, *weight.shape), dtype=gx_np.dtype)
        gb = np.zeros((parts, dim), dtype=gx_np.dtype)
        _entry("backward", ct, parts > 1)(
            _channel_rows(x, ct), _np(weight, ct), _zeros_or(bias, dim, ct), _polynomials(ct), _channel_rows(gy, ct),
            gx_np, gw, gb, blocks, parts,
        )
    gweight = torch.from_numpy(gw[0] if parts == 1 else gw.sum(0)).to(weight.dtype)
    gbias = None if bias is None else torch.from_numpy(gb[0] if parts == 1 else gb.sum(0)).to(bias.dtype)
    return gx, gweight, gbias


class _CausalConvSiluFn(torch.autograd.Function):
    @staticmethod
    def forward(  # type: ignore[override]
        ctx: torch.autograd.function.FunctionCtx, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None
    ) -> torch.Tensor:
        ctx.save_for_backward(x, weight, bias)
        return conv_forward(x, weight, bias)

    @staticmethod
    def backward(  # type: ignore[override]
        ctx: torch.autograd.function.FunctionCtx, gy: torch.Tensor
    ) -> tuple[torch.Tensor | None, ...]:
        x, weight, bias = ctx.saved_tensors
        grads = conv_backward(x, weight, bias, gy)
        return first_order_gradients("the numba causal convolution", grads, (x, weight, bias))


@outside_compiled_graphs  # see longiseg.ssm.cpu_kernel
def causal_conv1d_silu_cpu(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """``silu(causal depthwise conv1d(x))`` on channel-last CPU tensors with the compiled kernels; differentiable.

    The same function as :func:`causal_conv1d_silu_reference` (float32 results differ by rounding only).

    Args:
        x: ``(B, L, D)`` float32 or float64 on the CPU, any strides (read in place when channels have unit
            stride, as in a channel slice of Mamba's input projection).
        weight: ``(D, K)`` (``Mamba.conv1d.weight[:, 0]``), same dtype as ``x``.
        bias: ``(D,)`` or ``None``.

    Returns:
        ``(B, L, D)``, contiguous, ``x.dtype``.

    Raises:
        RuntimeError: numba is not installed.
        TypeError: non-tensors or a dtype other than float32/float64, or mixed dtypes.
        ValueError: tensors off the CPU or shapes that do not fit together.
    """
    require_cpu_kernel()
    check_kernel_tensors({"x": x, "weight": weight, "bias": bias}, optional=("bias",))
    if x.ndim != 3 or 0 in x.shape:
        raise ValueError(f"x must be (B, L, D) with B, L, D >= 1, got shape {tuple(x.shape)}")
    if weight.ndim != 2 or weight.shape[0] != x.shape[2] or weight.shape[1] < 1:
        raise ValueError(f"weight must be (D={x.shape[2]}, K >= 1), got shape {tuple(weight.shape)}")
    if bias is not None and tuple(bias.shape) != (x.shape[2],):
        raise ValueError(f"bias must be (D={x.shape[2]},), got shape {tuple(bias.shape)}")
    return _CausalConvSiluFn.apply(x, weight, bias)
