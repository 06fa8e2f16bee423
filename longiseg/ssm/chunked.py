"""Chunked selective scan in pure PyTorch (CPU and GPU) with a recomputing backward.

Algorithm (per block of channels; the recurrence is independent per channel, so blocks bound the memory):

1. Split the (zero-padded) sequence into ``nC`` chunks of ``T`` positions and lay tensors out as
   ``(T, B, nC, d, N)`` so that one time step of *all* chunks is one contiguous slice.
2. Local scan: a Python loop over the ``T`` positions, vectorised over batch, chunks, channels and states,
   computes every chunk's states from a zero state, ``h[t] += dA[t] * h[t-1]``, and the running decay
   ``P[t] = P[t-1] * dA[t]`` (product of ``dA`` since the chunk start).
3. Carry scan: a loop over the ``nC`` chunks propagates the true state at each chunk end.
4. Correction: ``h += P * carry``.

``dA = exp(delta * A)`` with ``delta >= 0`` (softplus output or user-given non-negative steps) and ``A <= 0`` lies
in ``[0, 1]``, and so does every product of such factors: nothing overflows, whatever the chunk length and however
large ``delta`` grows; there is no division and no ``exp(-A S)`` term as in cumulative-sum formulations. (Outside
that domain, with growing factors, the within-chunk products can overflow to ``inf`` and give ``NaN`` where the
sequential state is finite: see the selective scan's documentation, "Decaying factors".) Padded
positions have ``delta = 0`` and ``dA = 1`` exactly (set, as ``exp(0 A)`` is NaN for ``A = -inf``) and no input, so
they leave the state unchanged. The backward pass
recomputes the states of one channel block at a time and runs the adjoint recurrence
``g_t = C_t gy_t + exp(delta_{t+1} A) g_{t+1}`` with the same chunked scheme in reverse, so no ``(B, D, L, N)``
tensor is stored between forward and backward.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from longiseg.ssm.inputs import bc_grouped, compute_dtype, first_order_gradients, prepare_scan_inputs
from longiseg.utils.tracing import is_compiling, is_exporting, outside_compiled_graphs
from longiseg.utils.validation import check_positive_int

__all__ = ["selective_scan_chunked", "default_chunk_size", "DEFAULT_BLOCK_ELEMS"]

#: Upper bound on the number of elements of one ``(T, B, nC, d, N)`` working buffer (4M = 16 MB in float32).
DEFAULT_BLOCK_ELEMS = 1 << 22


def default_chunk_size(seqlen: int) -> int:
    """Chunk length ~ sqrt(L) (a power of two in [8, 256]) balancing the local and the carry loop."""
    return int(min(256, max(8, 2 ** round(math.log2(max(1.0, math.sqrt(seqlen)))))))


def _channel_block(dim: int, group_size: int, per_channel: int, block_elems: int) -> int:
    """Channels per block: fits ``block_elems`` and either holds whole groups or lies inside one group."""
    d = max(1, min(dim, block_elems // max(1, per_channel)))
    if d >= group_size:
        return (d // group_size) * group_size
    while group_size % d:
        d -= 1
    return d


def _to_chunks(x: torch.Tensor, T: int, nC: int) -> torch.Tensor:
    """``(B, d, L)`` -> contiguous ``(T, B, nC, d)``, zero-padded to ``T * nC`` positions."""
    L = x.shape[-1]
    if T * nC != L:
        x = F.pad(x, (0, T * nC - L))
    return x.reshape(*x.shape[:2], nC, T).permute(3, 0, 2, 1).contiguous()


def _pass_padding(dA: torch.Tensor, L: int) -> torch.Tensor:
    """Set ``dA`` ``(T, B, nC, d, N)`` to exactly 1 at the padded positions (those after ``L`` in the last chunk), so
    they pass the state unchanged also where ``A = -inf`` (``exp(0 A)`` is NaN there); returns ``dA``."""
    T, nC = dA.shape[0], dA.shape[2]
    start = L - (nC - 1) * T
    if start < T:
        dA[start:, :, nC - 1] = 1.0
    return dA


def _from_chunks(x: torch.Tensor, L: int) -> torch.Tensor:
    """``(T, B, nC, d)`` -> ``(B, d, L)``."""
    T, b, nC, d = x.shape
    return x.permute(1, 3, 2, 0).reshape(b, d, nC * T)[..., :L]


def _bc_to_chunks(x: torch.Tensor, T: int, nC: int) -> torch.Tensor:
    """``(B, g, N, L)`` -> contiguous ``(T, B, nC, g, N)``, zero-padded."""
    L = x.shape[-1]
    if T * nC != L:
        x = F.pad(x, (0, T * nC - L))
    return x.reshape(*x.shape[:3], nC, T).permute(4, 0, 3, 1, 2).contiguous()


def _bc_from_chunks(x: torch.Tensor, L: int) -> torch.Tensor:
    """``(T, B, nC, g, N)`` -> ``(B, g, N, L)``."""
    T, b, nC, g, n = x.shape
    return x.permute(1, 3, 4, 2, 0).reshape(b, g, n, nC * T)[..., :L]


def _scale_bc(s: torch.Tensor, v: torch.Tensor, out: torch.Tensor | None) -> torch.Tensor:
    """``out[..., d, n] = s[..., d] * v[..., group(d), n]``: ``(T, B, nC, d)`` x ``(T, B, nC, g, N)`` ->
    ``(T, B, nC, d, N)``, written into ``out`` (a new tensor where ``out`` is ``None``)."""
    *lead, d = s.shape
    g, n = v.shape[-2:]
    if out is None:
        return torch.mul(s.reshape(*lead, g, d // g, 1), v.unsqueeze(-2)).reshape(*lead, d, n)
    torch.mul(s.reshape(*lead, g, d // g, 1), v.unsqueeze(-2), out=out.view(*lead, g, d // g, n))
    return out


def _regroup(x: torch.Tensor, groups: int) -> torch.Tensor:
    """``(B, g, N, L)`` -> ``(B, groups, N, L)`` for a multiple ``groups`` of ``g``: each group repeated for the
    ``groups // g`` finer groups it covers (differentiable: the gradient sums over the repeats)."""
    b, g, n, length = x.shape
    return x[:, :, None].expand(b, g, groups // g, n, length).reshape(b, groups, n, length)


class _Workspace:
    """Named flat buffers reused across channel blocks.

    Fresh multi-megabyte CPU allocations are served by ``mmap`` and page-fault on first touch, which costs several
    times the arithmetic done on them; handing out views of a few buffers allocated once per call avoids that.
    """

    def __init__(self, dtype: torch.dtype, device: torch.device) -> None:
        self.dtype, self.device = dtype, device
        self._bufs: dict[str, torch.Tensor] = {}

    def get(self, name: str, shape: tuple[int, ...]) -> torch.Tensor:
        """Uninitialised contiguous tensor of ``shape`` backed by buffer ``name``."""
        numel = math.prod(shape)
        buf = self._bufs.get(name)
        if buf is None or buf.numel() < numel:
            buf = torch.empty(numel, dtype=self.dtype, device=self.device)
            self._bufs[name] = buf
        return buf[:numel].view(shape)


def _dot_bc(x: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """``sum_n x[..., d, n] * v[..., group(d), n]``: state shape x ``(T, B, nC, g, N)`` -> ``(T, B, nC, d)``."""
    *lead, d, n = x.shape
    g = v.shape[-2]
    out = torch.matmul(x.reshape(*lead, g, d // g, n), v.unsqueeze(-1))  # (..., g, H, 1)
    return out.reshape(*lead, d)


def _group_outer(x: torch.Tensor, s: torch.Tensor, groups: int) -> torch.Tensor:
    """``sum_{d in group} x[..., d, n] * s[..., d]``: state shape x ``(T, B, nC, d)`` -> ``(T, B, nC, g, N)``."""
    *lead, d, n = x.shape
    out = torch.matmul(s.reshape(*lead, groups, 1, d // groups), x.reshape(*lead, groups, d // groups, n))
    return out.reshape(*lead, groups, n)


def _forward_states(
    dA: torch.Tensor, h: torch.Tensor, p_buf: torch.Tensor | None = None, without_out: bool = False
) -> torch.Tensor:
    """Turn ``h`` (holding ``delta*B*u``) into the true states, in place; return the last state ``(B, d, N)``.

    Local pass (per chunk, from a zero state) ``h[t] += dA[t] * h[t-1]`` together with the running decay
    ``P[t] = P[t-1] * dA[t]`` (product of ``dA`` since the chunk start, in ``(0, 1]``); then the carry pass over
    chunks and the correction ``h += P * carry``.

    Args:
        dA: ``exp(delta * A)`` ``(T, B, nC, d, N)``; overwritten by ``P`` unless ``p_buf`` is given.
        h: ``(T, B, nC, d, N)``.
        p_buf: buffer of ``dA``'s shape for ``P``, to leave ``dA`` intact (the backward pass needs it).
        without_out: write ``P`` by assignment instead of ``out=`` (same values; for an exported program, see
            :func:`longiseg.utils.tracing.is_exporting`).
    """
    T, nC = h.shape[0], h.shape[2]
    need_p = nC > 1
    P = (dA if p_buf is None else p_buf) if need_p else None
    if P is not None and p_buf is not None:
        P[0] = dA[0]
    for t in range(1, T):
        h[t].addcmul_(dA[t], h[t - 1])
        if P is not None and without_out:
            P[t] = P[t - 1] * dA[t]
        elif P is not None:
            torch.mul(P[t - 1], dA[t], out=P[t])
    if P is not None:
        carry = torch.zeros_like(h[0])  # (B, nC, d, N): true state entering each chunk
        state = carry[:, 0]
        for c in range(1, nC):
            state = torch.addcmul(h[T - 1, :, c - 1], P[T - 1, :, c - 1], state)
            carry[:, c] = state
        h.addcmul_(P, carry.unsqueeze(0))
    return h[T - 1, :, nC - 1].clone()


def _adjoint_states(
    dA: torch.Tensor, g: torch.Tensor, g_last: torch.Tensor | None, r_buf: torch.Tensor
) -> None:
    """Turn ``g`` (holding ``gy * C``) into the adjoint states ``dL/dh_t`` in place.

    ``g_t += dA_{t+1} g_{t+1}`` run from the end, with ``g_last`` (gradient of the returned last state,
    ``(B, d, N)``) entering after the final position. Same chunked scheme as :func:`_forward_states` in
    reverse, with the suffix decay ``R[t] = prod_{t < s < T} dA[s]`` kept in ``r_buf`` (``g``'s shape).
    """
    T, nC = g.shape[0], g.shape[2]
    need_r = nC > 1 or g_last is not None
    R = r_buf if need_r else None
    if R is not None:
        R[T - 1] = 1
    for t in range(T - 2, -1, -1):
        g[t].addcmul_(dA[t + 1], g[t + 1])
        if R is not None:
            torch.mul(R[t + 1], dA[t + 1], out=R[t])
    if R is not None:
        carry = torch.zeros_like(g[0])  # (B, nC, d, N): dA at the next chunk start times the adjoint there
        k = g_last if g_last is not None else carry[:, 0]
        for c in range(nC - 1, -1, -1):
            carry[:, c] = k
            if c > 0:
                k = dA[0, :, c] * torch.addcmul(g[0, :, c], R[0, :, c], k)
        g.addcmul_(R, carry.unsqueeze(0))


class _Problem:
    """Sizes and per-block views shared by the forward and backward passes."""

    def __init__(self, u: torch.Tensor, A: torch.Tensor, Bg: torch.Tensor, chunk_size: int, block_elems: int):
        self.batch, self.dim, self.L = u.shape
        self.N = A.shape[1]
        self.G = Bg.shape[1]
        self.H = self.dim // self.G
        self.T = max(1, min(chunk_size, self.L))
        self.nC = -(-self.L // self.T)
        per_channel = self.batch * self.T * self.nC * self.N
        self.dblk = _channel_block(self.dim, self.H, per_channel, block_elems)

    def blocks(self) -> list[tuple[int, int, int, int]]:
        """``(d0, d1, g0, g1)``: channel range and the group range it uses."""
        out = []
        for d0 in range(0, self.dim, self.dblk):
            d1 = min(self.dim, d0 + self.dblk)
            out.append((d0, d1, d0 // self.H, (d1 - 1) // self.H + 1))
        return out

    def bc_block(self, x: torch.Tensor, g0: int, g1: int, ct: torch.dtype) -> torch.Tensor:
        """Chunked ``B``/``C`` groups of a block: ``(T, B, nC, g1 - g0, N)``."""
        return _bc_to_chunks(x[:, g0:g1].to(ct), self.T, self.nC)


def _process_delta(
    delta: torch.Tensor,
    delta_bias: torch.Tensor | None,
    softplus: bool,
    ct: torch.dtype,
    channels_last: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Return ``(raw, processed)`` time steps in ``ct`` for ``(B, d, L)`` (or ``(B, L, d)`` if ``channels_last``)."""
    raw = delta.to(ct)
    if delta_bias is not None:
        bias = delta_bias.to(ct)
        raw = raw + (bias if channels_last else bias[:, None])
    return raw, (F.softplus(raw) if softplus else raw)


def _save_inputs(
    ctx: torch.autograd.function.FunctionCtx,
    inputs: tuple[torch.Tensor | None, ...],
    softplus: bool,
    chunk_size: int,
    block_elems: int,
) -> None:
    """Keep what :func:`_chunked_backward` needs: the canonical-layout inputs and the scan settings."""
    ctx.save_for_backward(*inputs)
    ctx.softplus = softplus
    ctx.chunk_size = chunk_size
    ctx.block_elems = block_elems


class _ChunkedScanFn(torch.autograd.Function):
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
        ct = compute_dtype(u, delta, A, Bg, Cg)
        p = _Problem(u, A, Bg, chunk_size, block_elems)
        out = torch.empty(u.shape, dtype=ct, device=u.device)
        last = torch.empty(p.batch, p.dim, p.N, dtype=ct, device=u.device)
        a = A.to(ct)
        ws = _Workspace(ct, u.device)
        # an out= operation in an exported program raises when the program runs with gradients enabled (the way
        # users call a model for inference): the forward pass then writes into fresh tensors and by assignment
        traced = is_exporting()
        for d0, d1, g0, g1 in p.blocks():
            _, dt = _process_delta(
                delta[:, d0:d1], None if delta_bias is None else delta_bias[d0:d1], softplus, ct
            )
            dtc = _to_chunks(dt, p.T, p.nC)
            uc = _to_chunks(u[:, d0:d1].to(ct), p.T, p.nC)
            shape = (p.T, p.batch, p.nC, d1 - d0, p.N)
            dA = _pass_padding(torch.mul(dtc.unsqueeze(-1), a[d0:d1], out=None if traced else ws.get("dA", shape)).exp_(),
                               p.L)
            h = _scale_bc(dtc * uc, p.bc_block(Bg, g0, g1, ct), None if traced else ws.get("h", shape))
            last[:, d0:d1] = _forward_states(dA, h, without_out=traced)
            del dA
            out[:, d0:d1] = _from_chunks(_dot_bc(h, p.bc_block(Cg, g0, g1, ct)), p.L)
        y_pre = out if D is None else out + u.to(ct) * D.to(ct)[:, None]
        result = y_pre if z is None else y_pre * F.silu(z.to(ct))
        _save_inputs(ctx, (u, delta, A, Bg, Cg, D, z, delta_bias), softplus, chunk_size, block_elems)
        return result.to(u.dtype), last

    @staticmethod
    def backward(  # type: ignore[override]
        ctx: torch.autograd.function.FunctionCtx, gout: torch.Tensor | None, glast: torch.Tensor | None
    ) -> tuple[torch.Tensor | None, ...]:
        saved = ctx.saved_tensors
        with torch.no_grad():  # in-place and out= operations, also under create_graph=True
            grads = _chunked_backward(saved, gout, glast, ctx.softplus, ctx.chunk_size, ctx.block_elems)
        return (*first_order_gradients("the chunked selective scan", grads, saved), None, None, None)


def _chunked_backward(
    saved: tuple[torch.Tensor | None, ...],
    gout: torch.Tensor | None,
    glast: torch.Tensor | None,
    softplus: bool,
    chunk_size: int,
    block_elems: int,
) -> tuple[torch.Tensor | None, ...]:
    """Gradients of the scan w.r.t. ``(u, delta, A, B, C, D, z, delta_bias)`` (canonical layout, ``B``/``C``
    grouped), recomputing the states per channel block; shared by every backend whose backward is this one."""
    u, delta, A, Bg, Cg, D, z, delta_bias = saved
    ct = compute_dtype(u, delta, A, Bg, Cg)
    p = _Problem(u, A, Bg, chunk_size, block_elems)
    a = A.to(ct)
    if gout is None:
        gout = torch.zeros(u.shape, dtype=ct, device=u.device)
    gout = gout.to(ct)
    gu = torch.empty(u.shape, dtype=ct, device=u.device)
    gdelta = torch.empty(u.shape, dtype=ct, device=u.device)
    gz = None if z is None else torch.empty(u.shape, dtype=ct, device=u.device)
    gA = torch.empty(A.shape, dtype=ct, device=u.device)
    gB = torch.zeros(Bg.shape, dtype=ct, device=u.device)
    gC = torch.zeros(Cg.shape, dtype=ct, device=u.device)
    gD = None if D is None else torch.empty(D.shape, dtype=ct, device=u.device)
    T = p.T
    ws = _Workspace(ct, u.device)
    for d0, d1, g0, g1 in p.blocks():
        ab = a[d0:d1]
        raw, dt = _process_delta(
            delta[:, d0:d1], None if delta_bias is None else delta_bias[d0:d1], softplus, ct
        )
        ub = u[:, d0:d1].to(ct)
        dtc = _to_chunks(dt, T, p.nC)
        dtu = dtc * _to_chunks(ub, T, p.nC)
        Bc = p.bc_block(Bg, g0, g1, ct)
        Cc = p.bc_block(Cg, g0, g1, ct)
        shape = (T, p.batch, p.nC, d1 - d0, p.N)
        dA = _pass_padding(torch.mul(dtc.unsqueeze(-1), ab, out=ws.get("dA", shape)).exp_(), p.L)
        h = _scale_bc(dtu, Bc, ws.get("h", shape))
        _forward_states(dA, h, p_buf=ws.get("decay", shape))
        # Gate and skip.
        gy = gout[:, d0:d1]
        if z is not None:
            y_pre = _from_chunks(_dot_bc(h, Cc), p.L)
            if D is not None:
                y_pre = y_pre + ub * D[d0:d1].to(ct)[:, None]
            zb = z[:, d0:d1].to(ct)
            sig = torch.sigmoid(zb)
            assert gz is not None
            gz[:, d0:d1] = gy * y_pre * sig * (1 + zb * (1 - sig))
            gy = gy * zb * sig
        if D is not None:
            assert gD is not None
            gD[d0:d1] = (gy * ub).sum((0, 2))
        gyc = _to_chunks(gy, T, p.nC)
        gC[:, g0:g1] += _bc_from_chunks(_group_outer(h, gyc, g1 - g0), p.L)
        # Adjoint states g_t = dL/dh_t.
        g = _scale_bc(gyc, Cc, ws.get("g", shape))
        del Cc
        _adjoint_states(dA, g, None if glast is None else glast[:, d0:d1].to(ct), ws.get("decay", shape))
        # M_t = g_t * dA_t * h_{t-1}  (= dL/d(dA_t) * dA_t), built in dA's buffer.
        dA.mul_(g)
        dA[1:].mul_(h[:-1])
        dA[0, :, 1:].mul_(h[T - 1, :, :-1])
        dA[0, :, 0].zero_()
        gbu = _dot_bc(g, Bc)  # sum_n g * B
        tmp = torch.mul(dA, ab, out=h)  # h is no longer needed: reuse its buffer
        gdt = gbu * _to_chunks(ub, T, p.nC) + tmp.sum(-1)
        gA[d0:d1] = torch.mul(dA, dtc.unsqueeze(-1), out=tmp).sum((0, 1, 2))
        del dA, h, tmp
        gB[:, g0:g1] += _bc_from_chunks(_group_outer(g, dtu, g1 - g0), p.L)
        del g
        gu_b = _from_chunks(gbu * dtc, p.L)
        if D is not None:
            gu_b = gu_b + gy * D[d0:d1].to(ct)[:, None]
        gu[:, d0:d1] = gu_b
        gdt_b = _from_chunks(gdt, p.L)
        if softplus:  # softplus' derivative; 1 above 20, where F.softplus (the forward) is the identity
            gdt_b = gdt_b * torch.sigmoid(raw).masked_fill_(raw > 20.0, 1.0)
        gdelta[:, d0:d1] = gdt_b
    gbias = None if delta_bias is None else gdelta.sum((0, 2)).to(delta_bias.dtype)
    return (
        gu.to(u.dtype),
        gdelta.to(delta.dtype),
        gA.to(A.dtype),
        gB.to(Bg.dtype),
        gC.to(Cg.dtype),
        None if gD is None or D is None else gD.to(D.dtype),
        None if gz is None or z is None else gz.to(z.dtype),
        gbias,
    )


def selective_scan_chunked(
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
    chunk_size: int | None = None,
    block_elems: int = DEFAULT_BLOCK_ELEMS,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Chunked selective scan (semantics and shapes of :func:`longiseg.ssm.selective_scan`).

    Args:
        u: input ``(B, D, L)``.
        delta: time steps ``(B, D, L)``.
        A: ``(D, N)`` real.
        B: input matrix ``(B, N, L)``, ``(B, G, N, L)`` or ``(D, N)``.
        C: output matrix, same layouts as ``B``.
        D: skip connection ``(D,)`` or ``None``.
        delta_bias: ``(D,)`` or ``None``.
        z: ``(B, D, L)`` or ``None``.
        delta_softplus: apply softplus to ``delta + delta_bias``.
        return_last_state: also return the final state ``(B, D, N)``.
        chunk_size: positions per chunk (default ~ ``sqrt(L)``); any int >= 1 (NumPy's too), need not divide ``L``.
        block_elems: cap on the elements of one ``(B, d, L, N)`` working buffer, an int >= 1; sets the channel
            block size and hence the peak memory (several such buffers are alive at once).

    Returns:
        ``out`` ``(B, D, L)`` in ``u.dtype``, or ``(out, last_state)``.

    Under ``torch.compile`` the scan runs outside the graph (a graph break, as eager; see :func:`_outside_graph`);
    ``torch.export`` records it.
    """
    if is_compiling() and not is_exporting():
        # (inside, dynamo does not trace: is_compiling() is False there and the scan below runs eagerly)
        return _outside_graph(u, delta, A, B, C, D, z, delta_bias, delta_softplus, return_last_state, chunk_size,
                              block_elems)
    s = prepare_scan_inputs(u, delta, A, B, C, D, z, delta_bias, delta_softplus, return_last_state)
    if chunk_size is None:
        chunk_size = default_chunk_size(s.seqlen)
    chunk_size = check_positive_int("chunk_size", chunk_size)  # (a NumPy int as an int)
    block_elems = check_positive_int("block_elems", block_elems)
    Bg = bc_grouped(B, s.batch, s.dim, s.seqlen)
    Cg = bc_grouped(C, s.batch, s.dim, s.seqlen)
    if Bg.shape[1] != Cg.shape[1]:  # the blocks below slice B and C by one group range
        groups = math.lcm(Bg.shape[1], Cg.shape[1])  # divides dim, as both counts do
        Bg, Cg = _regroup(Bg, groups), _regroup(Cg, groups)
    out, last = _ChunkedScanFn.apply(
        u, delta, A, Bg, Cg, D, z, delta_bias, bool(delta_softplus), chunk_size, block_elems
    )
    return (out, last) if return_last_state else out


#: :func:`selective_scan_chunked` where ``torch.compile`` would trace it: dynamo unrolled its Python loops over the chunk positions
#: (minutes of compilation for SegMaST), and with dynamic shapes (the default's recompilation at a second sequence
#: length) it stalled for more than ten minutes simplifying the chunk reshapes' symbolic sizes. Run eagerly, the scan
#: computes what it computes outside compilation, its backward included.
_outside_graph = outside_compiled_graphs(selective_scan_chunked)
