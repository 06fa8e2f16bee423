"""Sequential reference selective scan: a plain loop over time, differentiable by autograd.

Slow (one step per position) and memory-hungry (it materialises ``(B, D, L, N)`` tensors), but simple enough to
be obviously right; every fast path is tested against it, in float64 when the inputs are float64.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from longiseg.ssm.inputs import bc_grouped, compute_dtype, prepare_scan_inputs

__all__ = ["selective_scan_reference", "scan_epilogue"]


def scan_epilogue(
    y: torch.Tensor, u: torch.Tensor, D: torch.Tensor | None, z: torch.Tensor | None
) -> torch.Tensor:
    """Add the skip term and apply the gate: ``(y + D * u) * silu(z)``, all ``(B, D, L)`` in ``y``'s dtype."""
    if D is not None:
        y = y + u.to(y.dtype) * D.to(y.dtype)[:, None]
    if z is not None:
        y = y * F.silu(z.to(y.dtype))
    return y


def selective_scan_reference(
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
    """Selective scan by a sequential loop (see :func:`longiseg.ssm.selective_scan` for the semantics).

    ``h_t = exp(delta_t A) * h_{t-1} + delta_t B_t u_t``, ``y_t = C_t . h_t + D u_t``, ``out = y * silu(z)``.

    Args:
        u: input ``(B, D, L)``.
        delta: time steps ``(B, D, L)``.
        A: ``(D, N)`` real.
        B: input matrix ``(B, N, L)``, ``(B, G, N, L)`` or ``(D, N)``.
        C: output matrix, same layouts as ``B``.
        D: skip connection ``(D,)`` or ``None``.
        delta_bias: ``(D,)`` or ``None``.
        z: ``(B, D, L)`` or ``None``.
        delta_softplus: apply ``softplus`` to ``delta + delta_bias``.
        return_last_state: also return ``h_{L-1}`` of shape ``(B, D, N)``.

    Returns:
        ``out`` of shape ``(B, D, L)`` in ``u.dtype`` (and the last state in the accumulation dtype).
    """
    s = prepare_scan_inputs(u, delta, A, B, C, D, z, delta_bias, delta_softplus, return_last_state)
    ct = compute_dtype(u, delta, A, B, C)
    dt = delta.to(ct)
    if delta_bias is not None:
        dt = dt + delta_bias.to(ct)[:, None]
    if delta_softplus:
        dt = F.softplus(dt)
    Bg = bc_grouped(B.to(ct), s.batch, s.dim, s.seqlen)
    Cg = bc_grouped(C.to(ct), s.batch, s.dim, s.seqlen)
    Bd = Bg.repeat_interleave(s.dim // Bg.shape[1], dim=1)  # (B, D, N, L)
    Cd = Cg.repeat_interleave(s.dim // Cg.shape[1], dim=1)
    uc = u.to(ct)
    a = A.to(ct)
    dA = torch.exp(dt[..., None] * a[:, None, :])  # (B, D, L, N)
    dBu = (dt * uc)[..., None] * Bd.transpose(-1, -2)  # (B, D, L, N)
    h = uc.new_zeros(s.batch, s.dim, s.dstate)
    ys = []
    # unbind (not indexing) keeps the backward linear in L: indexing would scatter into a full-size zero tensor.
    for dA_t, dBu_t, C_t in zip(dA.unbind(2), dBu.unbind(2), Cd.unbind(3)):
        h = dA_t * h + dBu_t
        ys.append((h * C_t).sum(-1))
    y = scan_epilogue(torch.stack(ys, dim=-1), uc, D, z)
    out = y.to(u.dtype)
    return (out, h) if return_last_state else out
