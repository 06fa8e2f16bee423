"""The inside of a Mamba block as one autograd function on the compiled CPU kernels (mamba-ssm's ``mamba_inner_fn``).

Between its input and output projections, :class:`~longiseg.ssm.Mamba` computes from ``xz = in_proj(x)``
``(B, L, 2 d_inner)``::

    x, z  = xz[..., :d_inner], xz[..., d_inner:]
    u     = silu(causal depthwise conv(x))                    (B, L, d_inner)
    x_dbl = u x_proj.weight^T = [dt | B | C]                  (B, L, dt_rank + 2 N)
    delta = dt dt_proj.weight^T                               (B, L, d_inner), raw: bias and softplus in the scan
    y     = selective_scan(u, delta, -exp(A_log), B, C, D, z, dt_proj.bias, softplus)    (B, L, d_inner)

As separate operations that is about a dozen autograd nodes (slices, the convolution, two products, a contiguous
copy, the exponential of ``A``, the scan), each with its own bookkeeping, plus the concatenation of the gradients
of ``x`` and ``z`` in the backward pass. At the token counts of SegMaST's deeper stages (a few dozen tokens per
scan) that bookkeeping, not arithmetic, is most of a block's time. :func:`mamba_inner_cpu` is the same function as
one node: the forward pass runs the two compiled kernels (:mod:`~longiseg.ssm.causal_conv`,
:mod:`~longiseg.ssm.cpu_kernel`) and the two products without autograd; the backward pass runs their backward
passes and the products' gradients by hand and writes the gradients of ``x`` and ``z`` into the two halves of one
``(B, L, 2 d_inner)`` gradient. It keeps what the separate operations keep: ``u``, the raw ``dt`` and ``delta``,
``B``, ``C`` and the scan's checkpoints (memory linear in ``L``). Float32 and float64, CPU only; tested against the
same block on the chunked and reference scans (float64, every gradient).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from longiseg.ssm.causal_conv import check_kernel_tensors, conv_backward, conv_forward
from longiseg.ssm.cpu_kernel import (
    _exponent_factors,
    _scan_backward,
    _scan_forward,
    require_cpu_kernel,
)
from longiseg.ssm.inputs import first_order_gradients
from longiseg.utils.tracing import outside_compiled_graphs

__all__ = ["mamba_inner_cpu"]


class _MambaInnerFn(torch.autograd.Function):
    """Forward and backward of :func:`mamba_inner_cpu` (arguments checked there)."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: torch.autograd.function.FunctionCtx, *inputs: torch.Tensor | None
    ) -> torch.Tensor:
        # the arguments of mamba_inner_cpu, in its order
        xz, conv_weight, conv_bias, x_proj_weight, dt_proj_weight, dt_proj_bias, A_log, D = inputs
        d_inner, rank, n_state = conv_weight.shape[0], dt_proj_weight.shape[1], A_log.shape[1]
        x, z = xz[..., :d_inner], xz[..., d_inner:]
        u = conv_forward(x, conv_weight, conv_bias)
        x_dbl = F.linear(u, x_proj_weight)
        # contiguous: the weight gradient of a rank-column strided slice runs 10x slower in MKL (see Mamba)
        dt = x_dbl[..., :rank].contiguous()
        delta = F.linear(dt, dt_proj_weight)
        bk = x_dbl[..., rank : rank + n_state].contiguous().unsqueeze(1)  # the kernels' (B, 1, L, N)
        ck = x_dbl[..., rank + n_state :].contiguous().unsqueeze(1)
        A = -torch.exp(A_log)
        a_exp = _exponent_factors(A, xz.dtype)
        keep = any(ctx.needs_input_grad)
        y, _, ckpt = _scan_forward(u, delta, A, bk, ck, D, z, dt_proj_bias, True, keep, a_exp)
        ctx.save_for_backward(
            xz, conv_weight, conv_bias, x_proj_weight, dt_proj_weight, dt_proj_bias, A_log, D, A, u, dt, delta, bk, ck,
            ckpt,
        )
        ctx.a_exp = a_exp
        return y

    @staticmethod
    def backward(  # type: ignore[override]
        ctx: torch.autograd.function.FunctionCtx, gy: torch.Tensor
    ) -> tuple[torch.Tensor | None, ...]:
        saved = ctx.saved_tensors
        xz, conv_weight, conv_bias, x_proj_weight, dt_proj_weight, dt_proj_bias = saved[:6]
        D, A, u, dt, delta, bk, ck, ckpt = saved[7:]  # saved[6]: A_log, for first_order_gradients
        with torch.no_grad():  # by hand, also under create_graph=True (see first_order_gradients)
            d_inner, rank, n_state = conv_weight.shape[0], dt_proj_weight.shape[1], A.shape[1]
            tokens = u.shape[0] * u.shape[1]
            gxz = torch.empty(xz.shape, dtype=xz.dtype)
            gu, gdelta, gA, gbk, gck, gD, _, gbias = _scan_backward(
                (u, delta, A, bk, ck, D, xz[..., d_inner:], dt_proj_bias), ckpt, gy, None, True, ctx.a_exp,
                gz=gxz[..., d_inner:],
            )
            gdelta2 = gdelta.reshape(tokens, d_inner)
            g_dbl = torch.cat(
                [gdelta2 @ dt_proj_weight, gbk.reshape(tokens, n_state), gck.reshape(tokens, n_state)], dim=1
            )
            g_dt_proj = gdelta2.t() @ dt.reshape(tokens, rank)
            g_x_proj = g_dbl.t() @ u.reshape(tokens, d_inner)
            gu.reshape(tokens, d_inner).addmm_(g_dbl, x_proj_weight)  # + the gradient through x_proj
            _, g_conv_weight, g_conv_bias = conv_backward(
                xz[..., :d_inner], conv_weight, conv_bias, gu, gx=gxz[..., :d_inner]
            )
            grads = (gxz, g_conv_weight, g_conv_bias, g_x_proj, g_dt_proj, gbias, gA * A, gD)  # dA/dA_log = A
        return first_order_gradients("the numba Mamba block (mamba_inner_cpu)", grads, saved[:8])


@outside_compiled_graphs  # see longiseg.ssm.cpu_kernel
def mamba_inner_cpu(
    xz: torch.Tensor,
    conv_weight: torch.Tensor,
    conv_bias: torch.Tensor | None,
    x_proj_weight: torch.Tensor,
    dt_proj_weight: torch.Tensor,
    dt_proj_bias: torch.Tensor | None,
    A_log: torch.Tensor,
    D: torch.Tensor | None,
) -> torch.Tensor:
    """A Mamba block between its projections, as one differentiable operation on the compiled CPU kernels.

    The same function as :class:`~longiseg.ssm.Mamba`'s convolution, ``x_proj``, ``dt_proj`` and selective scan
    with softplus (see the module docstring); with ``d_inner`` channels, ``dt_rank`` = ``dt_proj_weight.shape[1]``
    and ``N`` = ``A_log.shape[1]``.

    Args:
        xz: the input projection ``(B, L, 2 d_inner)``: ``x``, then the gate ``z`` (channels of unit stride).
        conv_weight: depthwise convolution weights ``(d_inner, K)`` (``Mamba.conv1d.weight[:, 0]``).
        conv_bias: ``(d_inner,)`` or ``None``.
        x_proj_weight: ``(dt_rank + 2 N, d_inner)``.
        dt_proj_weight: ``(d_inner, dt_rank)``.
        dt_proj_bias: ``(d_inner,)`` (added to the time steps before the softplus) or ``None``.
        A_log: ``(d_inner, N)``; the state matrix is ``-exp(A_log)``.
        D: skip connection ``(d_inner,)`` or ``None``.

    Returns:
        The gated scan output ``(B, L, d_inner)`` (the input of ``out_proj``), ``xz.dtype``.

    Raises:
        RuntimeError: numba is not installed.
        TypeError: an argument is not a tensor, or the tensors are not all float32 or all float64.
        ValueError: tensors not on the CPU, or shapes that do not fit together.
    """
    require_cpu_kernel()
    named = {
        "xz": xz, "conv_weight": conv_weight, "conv_bias": conv_bias, "x_proj_weight": x_proj_weight,
        "dt_proj_weight": dt_proj_weight, "dt_proj_bias": dt_proj_bias, "A_log": A_log, "D": D,
    }
    check_kernel_tensors(named, optional=("conv_bias", "dt_proj_bias", "D"))
    if xz.ndim != 3 or xz.shape[1] < 1 or xz.shape[2] % 2:
        raise ValueError(f"xz must be (B, L >= 1, 2 d_inner), got shape {tuple(xz.shape)}")
    d_inner = xz.shape[2] // 2
    if conv_weight.ndim != 2 or conv_weight.shape[0] != d_inner or conv_weight.shape[1] < 1:
        raise ValueError(f"conv_weight must be (d_inner={d_inner}, K >= 1), got shape {tuple(conv_weight.shape)}")
    if A_log.ndim != 2 or A_log.shape[0] != d_inner or A_log.shape[1] < 1:
        raise ValueError(f"A_log must be (d_inner={d_inner}, N >= 1), got shape {tuple(A_log.shape)}")
    if dt_proj_weight.ndim != 2 or dt_proj_weight.shape[0] != d_inner or dt_proj_weight.shape[1] < 1:
        raise ValueError(
            f"dt_proj_weight must be (d_inner={d_inner}, dt_rank >= 1), got shape {tuple(dt_proj_weight.shape)}"
        )
    rows = dt_proj_weight.shape[1] + 2 * A_log.shape[1]
    if tuple(x_proj_weight.shape) != (rows, d_inner):
        raise ValueError(
            f"x_proj_weight must be (dt_rank + 2 N = {rows}, d_inner={d_inner}), got shape {tuple(x_proj_weight.shape)}"
        )
    for name in ("conv_bias", "dt_proj_bias", "D"):
        t = named[name]
        if t is not None and tuple(t.shape) != (d_inner,):
            raise ValueError(f"{name} must be (d_inner={d_inner},), got shape {tuple(t.shape)}")
    return _MambaInnerFn.apply(xz, conv_weight, conv_bias, x_proj_weight, dt_proj_weight, dt_proj_bias, A_log, D)
