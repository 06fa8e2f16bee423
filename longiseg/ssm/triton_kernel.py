"""Selective scan as Triton kernels (forward and backward), for CUDA GPUs without a mamba-ssm build.

Triton ships with PyTorch's Linux CUDA wheels, so this backend needs no compiled extension. With
``TRITON_INTERPRET=1`` in the environment it also accepts CPU tensors and runs the same kernels in Triton's
interpreter (slow; for tests and debugging).

**Forward.** One program per ``(block of channels, batch)`` walks the sequence in tiles of ``BLOCK_T``
positions, keeping the ``(BLOCK_D, N)`` state in registers. Inside a tile the recurrence
``h_t = exp(delta_t A) h_{t-1} + delta_t B_t u_t`` is one ``tl.associative_scan`` over the affine maps
``h -> a h + b`` along the tile (the entering state is folded into the first map), so every position of the tile
is computed in parallel; the tiles follow each other sequentially. Bias, softplus, the ``D`` skip and the
``silu(z)`` gate are fused. When a gradient is needed, the state entering each tile is stored: a
``(B, D, L / BLOCK_T, N)`` checkpoint, ``N / BLOCK_T`` of the size of ``u`` (never ``(B, D, L, N)``).

**Backward.** The same programs walk the tiles in reverse. Per tile they recompute the states ``h_t`` from the
tile's checkpoint together with the states before each position ``h_{t-1}`` (one scan of pairs of maps; mamba-ssm's
backward takes ``exp(delta_t A) h_{t-1} = h_t - delta_t B_t u_t`` instead, which loses the gradient of ``A`` to
cancellation once ``exp(delta_t A)`` is small), run the adjoint recurrence
``g_t = C_t gy_t + exp(delta_{t+1} A) g_{t+1}`` as a reverse associative scan seeded with the adjoint leaving
the tile (the gradient of the returned last state enters at the end), and form every gradient from ``g``, the
states and ``exp(delta_t A) h_{t-1}``. ``dA``, ``dD`` and ``d(delta_bias)`` are summed in registers and added
atomically once per program; the input-dependent ``dB``/``dC`` are summed over the program's channels (all in
one group) and added atomically per tile, as mamba-ssm's CUDA kernel does; input-independent ``(D, N)``
``dB``/``dC`` are summed in registers. Atomic float additions make gradients reproducible only up to rounding.

As in every backend, ``dA = exp(delta A)`` lies in ``[0, 1]`` for ``delta >= 0`` and ``A <= 0``: no cumulative
sums, no division, nothing overflows for any tile length.
"""

from __future__ import annotations

import contextlib
import functools
import math
import os
from typing import Any

import torch

from longiseg.ssm.inputs import compute_dtype, first_order_gradients, prepare_scan_inputs

try:  # optional: Triton ships with torch's Linux CUDA wheels, not with CPU or macOS builds
    import triton
    import triton.language as tl

    _IMPORT_ERROR = ""
except Exception as _err:  # ImportError, or a broken installation raising at import time
    triton = tl = None  # type: ignore[assignment]
    _IMPORT_ERROR = f"importing triton failed: {type(_err).__name__}: {_err}"

__all__ = [
    "triton_scan_available",
    "triton_unavailable_reason",
    "interpreter_enabled",
    "require_triton_scan",
    "selective_scan_triton",
]

INTERPRET_VAR = "TRITON_INTERPRET"


def triton_scan_available() -> bool:
    """Whether Triton is importable (the kernels can be compiled for CUDA or interpreted)."""
    return triton is not None


def triton_unavailable_reason() -> str:
    """Why Triton is not importable (empty string when it is)."""
    return _IMPORT_ERROR


def interpreter_enabled() -> bool:
    """Whether ``TRITON_INTERPRET`` asks for Triton's CPU interpreter (read at every call)."""
    return os.environ.get(INTERPRET_VAR, "0").strip().lower() in ("1", "true", "yes", "on")


def require_triton_scan(device: torch.device, source: str = "backend argument") -> None:
    """Raise ``RuntimeError`` explaining why the ``triton`` backend cannot run tensors on ``device``."""
    if triton is None:
        raise RuntimeError(
            f"selective-scan backend 'triton' was requested by the {source} but Triton is unavailable "
            f"({_IMPORT_ERROR}); install a torch build that ships Triton (Linux CUDA wheels) or `pip install "
            "triton`, or choose backend 'chunked'"
        )
    if device.type == "cuda" or (device.type == "cpu" and interpreter_enabled()):
        return
    raise RuntimeError(
        f"selective-scan backend 'triton' was requested by the {source} but the tensors are on {device}; it "
        f"runs CUDA tensors, or CPU tensors under Triton's interpreter ({INTERPRET_VAR}=1, slow); move them "
        "to a CUDA device or choose backend 'chunked'"
    )


# ------------------------------------------------------------------------------------------------------- kernels
# The kernels are plain functions compiled on first use (``_kernels``): Triton decides between compiling and
# interpreting when a function is decorated, so deferring the decoration makes ``TRITON_INTERPRET`` count whenever
# it is set before ``triton`` itself is imported (which decorates Triton's own library functions), however early
# this module was imported. The first CUDA call per configuration compiles (seconds; Triton caches on disk).


def _affine_combine_fn(a1, b1, a2, b2):  # type: ignore[no-untyped-def]
    # Compose h -> a1 h + b1 (earlier in scan order) with h -> a2 h + b2 (later). With reverse=True the scan order
    # runs from the end, so the same function gives g_t = b_t + a_t g_{t+1} (Triton's own tests check this linear
    # recurrence in both directions, compiled and interpreted).
    return a1 * a2, a2 * b1 + b2


def _affine_prev_combine_fn(a1, b1, p1, q1, a2, b2, p2, q2):  # type: ignore[no-untyped-def]
    # As _affine_combine_fn, with a second map (p, q): the segment's map without its last element (the identity
    # (1, 0) for one element). Composing keeps "all but the last" = the later part's (p2, q2) after the earlier
    # segment's whole map, so an inclusive scan gives h_t in b and h_{t-1} in q at once: exclusive states with no
    # shift of registers, and no h_t - delta_t B_t u_t, which cancels to noise once exp(delta_t A) is small.
    return a1 * a2, a2 * b1 + b2, a1 * p2, p2 * b1 + q2


# A compiled-mode function object: the compiler calls it, the interpreter calls its ``.fn``; so it serves both.
_affine_combine = triton.JITFunction(_affine_combine_fn) if triton is not None else None
_affine_prev_combine = triton.JITFunction(_affine_prev_combine_fn) if triton is not None else None


#: Set by :func:`_kernels` (decorated there, like the kernels that call them).
_program_channels: Any = None
_softplus: Any = None


def _program_channels_fn(dim, dstate, BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr):  # type: ignore[no-untyped-def]
    # This program's channel block and sequence, its channels (BLOCK_D from block * BLOCK_D) and states, with
    # their masks. One program per (sequence, channel block), numbered b * blocks + block on the grid's first
    # axis: CUDA caps the second axis at 65535 programs, fewer than the sequences a batch can hold.
    blocks = tl.cdiv(dim, BLOCK_D)
    pid = tl.program_id(0)
    pid_d = pid % blocks
    b = pid // blocks
    offs_d = pid_d * BLOCK_D + tl.arange(0, BLOCK_D)
    offs_n = tl.arange(0, BLOCK_N)
    mask_d = offs_d < dim
    mask_n = offs_n < dstate
    return pid_d, b, offs_d, offs_n, mask_d, mask_n, mask_d[:, None] & mask_n[None, :]


def _softplus_fn(x):  # type: ignore[no-untyped-def]
    # log1p(exp(x)) as log(w) * e / (w - 1), w = 1 + e (exact to a few ulp; no log1p in tl); x itself above 20.
    # The clamp keeps NaN (tl.minimum would give 20 for it: a NaN step taken as 20, the output finite).
    e = tl.exp(tl.where(x > 20.0, 20.0, x))
    w = 1.0 + e
    return tl.where(x > 20.0, x, tl.where(w == 1.0, e, tl.log(w) * e / (w - 1.0)))


def _scan_fwd_kernel(
    u_ptr, delta_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, bias_ptr,
    out_ptr, last_ptr, ckpt_ptr,
    dim, seqlen, dstate, n_tiles, b_group, c_group,
    s_ub, s_ud, s_ul, s_db, s_dd, s_dl, s_zb, s_zd, s_zl,
    s_Bb, s_Bg, s_Bn, s_Bl, s_Cb, s_Cg, s_Cn, s_Cl,
    HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr,
    B_CONST: tl.constexpr, C_CONST: tl.constexpr, STORE_CKPT: tl.constexpr,
    BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_T: tl.constexpr,
):  # fmt: skip
    pid_d, b, offs_d, offs_n, mask_d, mask_n, mask_dn = _program_channels(dim, dstate, BLOCK_D, BLOCK_N)
    offs_t = tl.arange(0, BLOCK_T)
    d3 = offs_d[:, None, None]
    n3 = offs_n[None, :, None]
    first3 = offs_t[None, None, :] == 0
    last3 = offs_t[None, None, :] == BLOCK_T - 1
    # A arrives in the accumulation dtype, which every loaded value is cast to.
    a = tl.load(A_ptr + offs_d[:, None] * dstate + offs_n[None, :], mask=mask_dn, other=0.0)
    a3 = a[:, :, None]
    if HAS_D:
        skip = tl.load(D_ptr + offs_d, mask=mask_d, other=0.0).to(a.dtype)
    if HAS_BIAS:
        bias = tl.load(bias_ptr + offs_d, mask=mask_d, other=0.0).to(a.dtype)
    g_b = (pid_d * BLOCK_D) // b_group  # the program's channels lie in one group of B (and of C)
    g_c = (pid_d * BLOCK_D) // c_group
    mask_dn3 = mask_dn[:, :, None]
    if B_CONST:
        b_in = tl.load(B_ptr + d3 * s_Bg + n3 * s_Bn, mask=mask_dn3, other=0.0).to(a.dtype)
    if C_CONST:
        c_out = tl.load(C_ptr + d3 * s_Cg + n3 * s_Cn, mask=mask_dn3, other=0.0).to(a.dtype)
    h = tl.zeros((BLOCK_D, BLOCK_N), dtype=a.dtype)
    for k in range(0, n_tiles):
        t = k * BLOCK_T + offs_t
        mask_t = t < seqlen
        m2 = mask_d[:, None] & mask_t[None, :]
        u = tl.load(u_ptr + b * s_ub + offs_d[:, None] * s_ud + t[None, :] * s_ul, mask=m2, other=0.0)
        u = u.to(a.dtype)
        dt = tl.load(delta_ptr + b * s_db + offs_d[:, None] * s_dd + t[None, :] * s_dl, mask=m2, other=0.0)
        dt = dt.to(a.dtype)
        if HAS_BIAS:
            dt = dt + bias[:, None]
        if SOFTPLUS:
            dt = _softplus(dt)
        dt = tl.where(m2, dt, 0.0)  # padding: exp(0 A) = 1 and no input, the state passes unchanged
        if STORE_CKPT:
            ck = ckpt_ptr + ((b * dim + offs_d[:, None]) * n_tiles + k) * dstate + offs_n[None, :]
            tl.store(ck, h, mask=mask_dn)
        # padding passes the state exactly: exp(0 A) is NaN for A = -inf
        dA = tl.where(mask_t[None, None, :], tl.exp(dt[:, None, :] * a3), 1.0)
        tile3 = n3 < dstate
        tile3 = tile3 & (t[None, None, :] < seqlen)
        if not B_CONST:
            b_in = tl.load(
                B_ptr + b * s_Bb + g_b * s_Bg + n3 * s_Bn + t[None, None, :] * s_Bl, mask=tile3, other=0.0
            )
            b_in = b_in.to(a.dtype)
        x = (dt * u)[:, None, :] * b_in + tl.where(first3, dA * h[:, :, None], 0.0)
        _, hs = tl.associative_scan((dA, x), 2, _affine_combine)
        if not C_CONST:
            c_out = tl.load(
                C_ptr + b * s_Cb + g_c * s_Cg + n3 * s_Cn + t[None, None, :] * s_Cl, mask=tile3, other=0.0
            )
            c_out = c_out.to(a.dtype)
        y = tl.sum(c_out * hs, axis=1)
        if HAS_D:
            y = y + skip[:, None] * u
        if HAS_Z:
            zt = tl.load(z_ptr + b * s_zb + offs_d[:, None] * s_zd + t[None, :] * s_zl, mask=m2, other=0.0)
            zt = zt.to(a.dtype)
            y = y * zt * tl.sigmoid(zt)
        o_ptr = out_ptr + (b * dim + offs_d[:, None]) * seqlen + t[None, :]
        tl.store(o_ptr, y.to(out_ptr.dtype.element_ty), mask=m2)
        h = tl.sum(tl.where(last3, hs, 0.0), axis=2)
    tl.store(last_ptr + (b * dim + offs_d[:, None]) * dstate + offs_n[None, :], h, mask=mask_dn)


def _scan_bwd_kernel(
    u_ptr, delta_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, bias_ptr,
    gout_ptr, glast_ptr, ckpt_ptr,
    gu_ptr, gdelta_ptr, gz_ptr, gA_ptr, gB_ptr, gC_ptr, gD_ptr, gbias_ptr,
    dim, seqlen, dstate, n_tiles, b_group, c_group,
    s_ub, s_ud, s_ul, s_db, s_dd, s_dl, s_zb, s_zd, s_zl,
    s_Bb, s_Bg, s_Bn, s_Bl, s_Cb, s_Cg, s_Cn, s_Cl,
    s_gBb, s_gBg, s_gCb, s_gCg,
    HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr,
    B_CONST: tl.constexpr, C_CONST: tl.constexpr, HAS_GLAST: tl.constexpr,
    BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_T: tl.constexpr,
):  # fmt: skip
    # gout, gu, gdelta, gz: contiguous (B, D, L); gA, gD, gbias and (D, N) gB/gC: accumulators, added atomically;
    # grouped gB/gC: (B, G, N, L) accumulators with N and L contiguous.
    pid_d, b, offs_d, offs_n, mask_d, mask_n, mask_dn = _program_channels(dim, dstate, BLOCK_D, BLOCK_N)
    offs_t = tl.arange(0, BLOCK_T)
    d3 = offs_d[:, None, None]
    n3 = offs_n[None, :, None]
    first3 = offs_t[None, None, :] == 0
    last3 = offs_t[None, None, :] == BLOCK_T - 1
    a = tl.load(A_ptr + offs_d[:, None] * dstate + offs_n[None, :], mask=mask_dn, other=0.0)
    a3 = a[:, :, None]
    if HAS_D:
        skip = tl.load(D_ptr + offs_d, mask=mask_d, other=0.0).to(a.dtype)
        gD_acc = tl.zeros((BLOCK_D,), dtype=a.dtype)
    if HAS_BIAS:
        bias = tl.load(bias_ptr + offs_d, mask=mask_d, other=0.0).to(a.dtype)
        gbias_acc = tl.zeros((BLOCK_D,), dtype=a.dtype)
    g_b = (pid_d * BLOCK_D) // b_group
    g_c = (pid_d * BLOCK_D) // c_group
    mask_dn3 = mask_dn[:, :, None]
    if B_CONST:
        b_in = tl.load(B_ptr + d3 * s_Bg + n3 * s_Bn, mask=mask_dn3, other=0.0).to(a.dtype)
        gB_acc = tl.zeros((BLOCK_D, BLOCK_N), dtype=a.dtype)
    if C_CONST:
        c_out = tl.load(C_ptr + d3 * s_Cg + n3 * s_Cn, mask=mask_dn3, other=0.0).to(a.dtype)
        gC_acc = tl.zeros((BLOCK_D, BLOCK_N), dtype=a.dtype)
    gA_acc = tl.zeros((BLOCK_D, BLOCK_N), dtype=a.dtype)
    row = b * dim + offs_d[:, None]  # (BLOCK_D, 1) row of the contiguous (B, D, L) gradients
    shift = tl.arange(0, 2)
    row_cur = shift[None, :, None] == 0
    if HAS_GLAST:
        g_next = tl.load(glast_ptr + row * dstate + offs_n[None, :], mask=mask_dn, other=0.0).to(a.dtype)
    else:
        g_next = tl.zeros((BLOCK_D, BLOCK_N), dtype=a.dtype)
    for kk in range(0, n_tiles):
        k = n_tiles - 1 - kk
        t = k * BLOCK_T + offs_t
        mask_t = t < seqlen
        m2 = mask_d[:, None] & mask_t[None, :]
        # delta at t and t + 1 (up to the sequence end) as the two rows of one (BLOCK_D, 2, BLOCK_T) load
        ts = t[None, :] + shift[:, None]
        m3 = mask_d[:, None, None] & (ts < seqlen)[None, :, :]
        raw = tl.load(delta_ptr + b * s_db + d3 * s_dd + ts[None, :, :] * s_dl, mask=m3, other=0.0)
        raw = raw.to(a.dtype)
        if HAS_BIAS:
            raw = raw + bias[:, None, None]
        dt2 = raw
        if SOFTPLUS:
            dt2 = _softplus(raw)
        dt2 = tl.where(m3, dt2, 0.0)
        dt = tl.sum(tl.where(row_cur, dt2, 0.0), axis=1)
        dt_next = tl.sum(tl.where(row_cur, 0.0, dt2), axis=1)
        raw_cur = tl.sum(tl.where(row_cur, raw, 0.0), axis=1)
        u = tl.load(u_ptr + b * s_ub + offs_d[:, None] * s_ud + t[None, :] * s_ul, mask=m2, other=0.0)
        u = u.to(a.dtype)
        tile3 = (n3 < dstate) & (t[None, None, :] < seqlen)
        if not B_CONST:
            b_ptrs = B_ptr + b * s_Bb + g_b * s_Bg + n3 * s_Bn + t[None, None, :] * s_Bl
            b_in = tl.load(b_ptrs, mask=tile3, other=0.0).to(a.dtype)
        if not C_CONST:
            c_ptrs = C_ptr + b * s_Cb + g_c * s_Cg + n3 * s_Cn + t[None, None, :] * s_Cl
            c_out = tl.load(c_ptrs, mask=tile3, other=0.0).to(a.dtype)
        # States h_t and h_{t-1} from the checkpointed state entering the tile, in one scan (h_in is folded into
        # the first map, so h_prev there is 0 and the first position takes h_in itself).
        ck = ckpt_ptr + (row * n_tiles + k) * dstate + offs_n[None, :]
        h_in = tl.load(ck, mask=mask_dn, other=0.0)
        dA = tl.where(mask_t[None, None, :], tl.exp(dt[:, None, :] * a3), 1.0)  # padding: exactly 1 (see forward)
        dtu = dt * u
        x = dtu[:, None, :] * b_in
        first_in = tl.where(first3, dA * h_in[:, :, None], 0.0)
        _, h, _, h_prev = tl.associative_scan(
            (dA, x + first_in, tl.full(dA.shape, 1.0, dA.dtype), tl.zeros(dA.shape, dA.dtype)), 2,
            _affine_prev_combine,
        )
        decayed = dA * h_prev + first_in  # dA_t h_{t-1}
        # Gate and skip.
        gy = tl.load(gout_ptr + row * seqlen + t[None, :], mask=m2, other=0.0).to(a.dtype)
        if HAS_Z:
            y = tl.sum(c_out * h, axis=1)
            if HAS_D:
                y = y + skip[:, None] * u
            zt = tl.load(z_ptr + b * s_zb + offs_d[:, None] * s_zd + t[None, :] * s_zl, mask=m2, other=0.0)
            zt = zt.to(a.dtype)
            sig = tl.sigmoid(zt)
            gz = gy * y * sig * (1.0 + zt * (1.0 - sig))
            tl.store(gz_ptr + row * seqlen + t[None, :], gz.to(gz_ptr.dtype.element_ty), mask=m2)
            gy = gy * zt * sig
        # Adjoint g_t = C_t gy_t + exp(delta_{t+1} A) g_{t+1}, seeded with the adjoint after the tile.
        dA_next = tl.where((t + 1 < seqlen)[None, None, :], tl.exp(dt_next[:, None, :] * a3), 1.0)
        rhs = c_out * gy[:, None, :] + tl.where(last3, dA_next * g_next[:, :, None], 0.0)
        _, g = tl.associative_scan((dA_next, rhs), 2, _affine_combine, reverse=True)
        g_next = tl.sum(tl.where(first3, g, 0.0), axis=2)
        m = g * decayed  # dL/d(dA_t) * dA_t
        gbu = tl.sum(g * b_in, axis=1)
        gdt = gbu * u + tl.sum(m * a3, axis=1)
        gu = gbu * dt
        if HAS_D:
            gu = gu + gy * skip[:, None]
            gD_acc += tl.sum(gy * u, axis=1)
        gA_acc += tl.sum(m * dt[:, None, :], axis=2)
        if SOFTPLUS:  # softplus' derivative; 1 above 20, where _softplus is the identity
            gdt = gdt * tl.where(raw_cur > 20.0, 1.0, tl.sigmoid(raw_cur))
        gdt = tl.where(m2, gdt, 0.0)
        if HAS_BIAS:
            gbias_acc += tl.sum(gdt, axis=1)
        tl.store(gu_ptr + row * seqlen + t[None, :], gu.to(gu_ptr.dtype.element_ty), mask=m2)
        tl.store(gdelta_ptr + row * seqlen + t[None, :], gdt.to(gdelta_ptr.dtype.element_ty), mask=m2)
        gb_full = g * dtu[:, None, :]
        gc_full = gy[:, None, :] * h
        if B_CONST:
            gB_acc += tl.sum(gb_full, axis=2)
        else:
            gb_tile = tl.sum(gb_full, axis=0)  # (BLOCK_N, BLOCK_T): this program's channels, one group
            gb_ptrs = gB_ptr + b * s_gBb + g_b * s_gBg + offs_n[:, None] * seqlen + t[None, :]
            tl.atomic_add(gb_ptrs, gb_tile, mask=mask_n[:, None] & mask_t[None, :])
        if C_CONST:
            gC_acc += tl.sum(gc_full, axis=2)
        else:
            gc_tile = tl.sum(gc_full, axis=0)
            gc_ptrs = gC_ptr + b * s_gCb + g_c * s_gCg + offs_n[:, None] * seqlen + t[None, :]
            tl.atomic_add(gc_ptrs, gc_tile, mask=mask_n[:, None] & mask_t[None, :])
    dn_off = offs_d[:, None] * dstate + offs_n[None, :]
    tl.atomic_add(gA_ptr + dn_off, gA_acc, mask=mask_dn)
    if B_CONST:
        tl.atomic_add(gB_ptr + dn_off, gB_acc, mask=mask_dn)
    if C_CONST:
        tl.atomic_add(gC_ptr + dn_off, gC_acc, mask=mask_dn)
    if HAS_D:
        tl.atomic_add(gD_ptr + offs_d, gD_acc, mask=mask_d)
    if HAS_BIAS:
        tl.atomic_add(gbias_ptr + offs_d, gbias_acc, mask=mask_d)


@functools.cache
def _kernels(interpret: bool) -> tuple[Any, Any]:
    """The forward and backward kernels, compiled for the GPU or wrapped for the interpreter (``interpret``)."""
    del interpret  # the cache key; ``triton.jit`` reads the same environment variable now
    global _program_channels, _softplus
    # The helpers the kernels call are decorated here too: an interpreted kernel can only call interpreted helpers
    # (a JITFunction made at import time raises there), and the compiler resolves these globals when it compiles.
    _program_channels, _softplus = triton.jit(_program_channels_fn), triton.jit(_softplus_fn)
    return triton.jit(_scan_fwd_kernel), triton.jit(_scan_bwd_kernel)


# ---------------------------------------------------------------------------------------------------------- host


class _Layout:
    """Sizes, tile shapes and the strided views of ``B``/``C`` shared by the forward and backward launches."""

    def __init__(
        self, u: torch.Tensor, A: torch.Tensor, B: torch.Tensor, C: torch.Tensor, block_d: int | None,
        block_t: int | None,
    ) -> None:  # fmt: skip
        self.batch, self.dim, self.seqlen = u.shape
        self.dstate = A.shape[1]
        self.b_const, self.c_const = B.ndim == 2, C.ndim == 2
        self.b_group = self._group_size(
            B
        )  # the kernels find a program's group as (first channel) // group size
        self.c_group = self._group_size(C)
        # Channels per program: a power of two inside one group of every input-dependent B/C (input-independent
        # (D, N) ones allow any block; partial blocks at the end are masked).
        common = math.gcd(*[self._group_size(x) for x in (B, C) if x.ndim != 2], 0)
        limit = common & -common if common else 1 << 30  # largest power of two dividing the group sizes
        interp = u.device.type != "cuda"
        if block_d is None:
            # GPU: one channel per program (most parallelism, as mamba-ssm's kernel); interpreter: big blocks.
            block_d = min(limit, 16 if interp else 1, triton.next_power_of_2(self.dim))
        if block_d < 1 or block_d & (block_d - 1) or block_d > limit:
            raise ValueError(
                f"block_d must be a power of two dividing the channels per group of B and C ({limit} here), "
                f"got {block_d}"
            )
        self.block_d = block_d
        self.block_n = triton.next_power_of_2(self.dstate)
        if block_t is None:
            target = 64 if interp else max(16, min(256, 1024 // (self.block_n * block_d)))
            block_t = min(target, triton.next_power_of_2(self.seqlen))
        if block_t < 1 or block_t & (block_t - 1):
            raise ValueError(f"block_t must be a power of two, got {block_t}")
        self.block_t = block_t
        # About 4 tile elements per thread: ptxas gives the backward kernel 128 registers (two 256-thread
        # programs per SM) and no spills at N = 16, BLOCK_T = 64, 8 warps (sm_90, float32); 4 warps need 185.
        self.num_warps = max(1, min(8, block_d * self.block_n * block_t // 128))
        self.n_tiles = -(-self.seqlen // block_t)
        self.grid = (-(-self.dim // block_d) * self.batch,)  # (sequence, channel block) pairs: _program_channels

    def _group_size(self, x: torch.Tensor) -> int:
        """Channels per group of ``B``/``C`` (the input-independent form: every channel is its own group)."""
        if x.ndim == 2:
            return 1
        return self.dim // (1 if x.ndim == 3 else x.shape[1])

    @staticmethod
    def strides(x: torch.Tensor) -> tuple[int, int, int, int]:
        """``(batch, group, state, time)`` strides of ``B``/``C`` in any of its three layouts."""
        if x.ndim == 2:
            return 0, x.stride(0), x.stride(1), 0
        if x.ndim == 3:
            return x.stride(0), 0, x.stride(1), x.stride(2)
        return x.stride(0), x.stride(1), x.stride(2), x.stride(3)


def _on_device(x: torch.Tensor) -> contextlib.AbstractContextManager:
    """Make ``x``'s GPU the current one: Triton launches on the current device, not on the tensors'."""
    return torch.cuda.device(x.device) if x.is_cuda else contextlib.nullcontext()


class _TritonScanFn(torch.autograd.Function):
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
        block_d: int | None,
        block_t: int | None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        ct = compute_dtype(u, delta, A, B, C)
        lay = _Layout(u, A, B, C, block_d, block_t)
        # the kernels index (D,) vectors with unit stride; the inputs themselves are saved (first_order_gradients)
        skip = D.contiguous() if D is not None else None
        bias = delta_bias.contiguous() if delta_bias is not None else None
        a = A.to(ct).contiguous()
        out = torch.empty(u.shape, dtype=u.dtype, device=u.device)
        last = torch.empty(lay.batch, lay.dim, lay.dstate, dtype=ct, device=u.device)
        store_ckpt = any(ctx.needs_input_grad[:8])  # type: ignore[attr-defined]
        shape = (lay.batch, lay.dim, lay.n_tiles, lay.dstate) if store_ckpt else (1,)
        ckpt = torch.empty(shape, dtype=ct, device=u.device)
        fwd, _ = _kernels(interpreter_enabled())
        zz = z if z is not None else u
        with _on_device(u):
            fwd[lay.grid](
                u, delta, a, B, C,
                skip if skip is not None else a, zz, bias if bias is not None else a,
                out, last, ckpt,
                lay.dim, lay.seqlen, lay.dstate, lay.n_tiles, lay.b_group, lay.c_group,
                *u.stride(), *delta.stride(), *zz.stride(), *_Layout.strides(B), *_Layout.strides(C),
                HAS_D=D is not None, HAS_Z=z is not None, HAS_BIAS=delta_bias is not None, SOFTPLUS=softplus,
                B_CONST=lay.b_const, C_CONST=lay.c_const, STORE_CKPT=store_ckpt,
                BLOCK_D=lay.block_d, BLOCK_N=lay.block_n, BLOCK_T=lay.block_t, num_warps=lay.num_warps,
            )  # fmt: skip
        ctx.save_for_backward(u, delta, A, B, C, D, z, delta_bias, ckpt)
        ctx.softplus = softplus
        ctx.layout = lay
        ctx.a_dtype = A.dtype
        return out, last

    @staticmethod
    def backward(  # type: ignore[override]
        ctx: torch.autograd.function.FunctionCtx, gout: torch.Tensor | None, glast: torch.Tensor | None
    ) -> tuple[torch.Tensor | None, ...]:
        saved = ctx.saved_tensors  # type: ignore[attr-defined]
        u, delta, A, B, C, D, z, delta_bias, ckpt = saved
        lay: _Layout = ctx.layout  # type: ignore[attr-defined]
        ct = ckpt.dtype
        a = A.to(ct).contiguous()
        skip = D.contiguous() if D is not None else None
        bias = delta_bias.contiguous() if delta_bias is not None else None
        dev = u.device
        gout = torch.zeros_like(u) if gout is None else gout.contiguous()
        gu = torch.empty(u.shape, dtype=u.dtype, device=dev)
        gdelta = torch.empty(delta.shape, dtype=delta.dtype, device=dev)
        gz = torch.empty(z.shape, dtype=z.dtype, device=dev) if z is not None else None
        gA = torch.zeros(a.shape, dtype=ct, device=dev)
        # input-dependent gradients in the grouped layout (B, G, N, L); (B, N, L) is G = 1
        gB = torch.zeros(B.shape if B.ndim != 3 else (lay.batch, 1, *B.shape[1:]), dtype=ct, device=dev)
        gC = torch.zeros(C.shape if C.ndim != 3 else (lay.batch, 1, *C.shape[1:]), dtype=ct, device=dev)
        gD = torch.zeros(D.shape, dtype=ct, device=dev) if D is not None else None
        gbias = torch.zeros(delta_bias.shape, dtype=ct, device=dev) if delta_bias is not None else None
        _, bwd = _kernels(interpreter_enabled())
        zz = z if z is not None else u
        with _on_device(u):
            bwd[lay.grid](
                u, delta, a, B, C,
                skip if skip is not None else a, zz, bias if bias is not None else a,
                gout, glast.contiguous() if glast is not None else a, ckpt,
                gu, gdelta, gz if gz is not None else gu, gA, gB, gC,
                gD if gD is not None else gA, gbias if gbias is not None else gA,
                lay.dim, lay.seqlen, lay.dstate, lay.n_tiles, lay.b_group, lay.c_group,
                *u.stride(), *delta.stride(), *zz.stride(), *_Layout.strides(B), *_Layout.strides(C),
                gB.stride(0) if gB.ndim == 4 else 0, gB.stride(1) if gB.ndim == 4 else 0,
                gC.stride(0) if gC.ndim == 4 else 0, gC.stride(1) if gC.ndim == 4 else 0,
                HAS_D=D is not None, HAS_Z=z is not None, HAS_BIAS=delta_bias is not None,
                SOFTPLUS=ctx.softplus, B_CONST=lay.b_const, C_CONST=lay.c_const, HAS_GLAST=glast is not None,  # type: ignore[attr-defined]
                BLOCK_D=lay.block_d, BLOCK_N=lay.block_n, BLOCK_T=lay.block_t, num_warps=lay.num_warps,
            )  # fmt: skip
        grads = (
            gu,
            gdelta,
            gA.to(ctx.a_dtype),  # type: ignore[attr-defined]
            gB.reshape(B.shape).to(B.dtype),
            gC.reshape(C.shape).to(C.dtype),
            None if gD is None or D is None else gD.to(D.dtype),
            gz,
            None if gbias is None or delta_bias is None else gbias.to(delta_bias.dtype),
        )
        return (*first_order_gradients("the triton selective scan", grads, saved[:8]), None, None, None)


def selective_scan_triton(
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
    block_d: int | None = None,
    block_t: int | None = None,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Selective scan with the Triton kernels (semantics and shapes of :func:`longiseg.ssm.selective_scan`).

    Args:
        u: input ``(B, D, L)`` on CUDA (or on the CPU with ``TRITON_INTERPRET=1``).
        delta: time steps ``(B, D, L)``.
        A: ``(D, N)`` real.
        B: input matrix ``(B, N, L)``, ``(B, G, N, L)`` or ``(D, N)``.
        C: output matrix, same layouts as ``B``.
        D: skip connection ``(D,)`` or ``None``.
        z: gate ``(B, D, L)`` or ``None``.
        delta_bias: ``(D,)`` or ``None``.
        delta_softplus: apply softplus to ``delta + delta_bias``.
        return_last_state: also return the final state ``(B, D, N)``.
        block_d: channels per program, a power of two dividing the channels per group of input-dependent
            ``B``/``C`` (default: 1 on CUDA, up to 16 in the interpreter).
        block_t: positions per tile, a power of two (default: ``1024 / (block_d * N)`` clamped to [16, 256] on
            CUDA, 64 in the interpreter, at most ``L`` rounded up to a power of two).

    Returns:
        ``out`` ``(B, D, L)`` in ``u.dtype``, or ``(out, last_state)`` with ``last_state`` ``(B, D, N)`` in the
        accumulation dtype (float32, or float64 for float64 inputs). Differentiable in every input, including
        through ``last_state``.

    Raises:
        RuntimeError: Triton is not importable, or the tensors are on the CPU without ``TRITON_INTERPRET=1``.
        ValueError: invalid shapes (see :func:`longiseg.ssm.selective_scan`) or ``block_d``/``block_t``, or
            tensors too large for the kernels' 32-bit offsets.
    """
    prepare_scan_inputs(u, delta, A, B, C, D, z, delta_bias, delta_softplus, return_last_state)
    require_triton_scan(u.device)
    # offsets are 32-bit: every tensor, and the checkpoints (u's size x N / 16 with the default tiles), < 2^31
    if max(u.numel(), B.numel(), C.numel(), u.numel() // 16 * A.shape[1]) >= 2**31:
        raise ValueError(
            f"the triton backend indexes with 32-bit integers and u {tuple(u.shape)} with N={A.shape[1]} is too "
            "large; split the batch or choose backend 'chunked'"
        )
    out, last = _TritonScanFn.apply(
        u, delta, A, B, C, D, z, delta_bias, bool(delta_softplus), block_d, block_t
    )
    return (out, last) if return_last_state else out
