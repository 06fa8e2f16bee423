"""Validation and canonical layout of selective-scan arguments, shared by every backend.

The selective scan follows mamba-ssm's ``selective_scan_fn`` conventions::

    u, delta : (B, D, L)        input and time step per channel
    A        : (D, N)           real state matrix (diagonal per channel); complex A is not supported
    B, C     : (B, N, L)        input-dependent, shared by all channels
               (B, G, N, L)     grouped: channel d uses group d // (D // G)
               (D, N)           input-independent (constant over batch and time)
    D        : (D,)             skip connection
    z        : (B, D, L)        gate, the output is multiplied by silu(z)
    delta_bias : (D,)           added to delta before the optional softplus
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from longiseg.utils.validation import check_bool, check_tensor

__all__ = ["ScanInputs", "prepare_scan_inputs", "compute_dtype", "bc_grouped", "first_order_gradients"]


@dataclass
class ScanInputs:
    """Validated selective-scan arguments and the problem sizes ``batch, dim, dstate, seqlen``.

    ``B``/``C`` are kept as given; :func:`bc_grouped` views them in the grouped layout.
    """

    u: torch.Tensor
    delta: torch.Tensor
    A: torch.Tensor
    B: torch.Tensor
    C: torch.Tensor
    D: torch.Tensor | None
    z: torch.Tensor | None
    delta_bias: torch.Tensor | None
    batch: int
    dim: int
    dstate: int
    seqlen: int


def compute_dtype(*tensors: torch.Tensor | None) -> torch.dtype:
    """Accumulation dtype: float64 when any argument is float64, else float32 (mamba-ssm's fp32 rule)."""
    return (
        torch.float64 if any(t is not None and t.dtype == torch.float64 for t in tensors) else torch.float32
    )


def bc_grouped(x: torch.Tensor, batch: int, dim: int, seqlen: int) -> torch.Tensor:
    """View ``B``/``C`` in the grouped layout ``(batch, G, N, L)`` without copying.

    ``(B, N, L)`` becomes ``G = 1``; the input-independent ``(D, N)`` form becomes ``G = D`` (an expanded view).
    """
    if x.ndim == 2:
        return x[None, :, :, None].expand(batch, dim, x.shape[1], seqlen)
    if x.ndim == 3:
        return x.unsqueeze(1)
    return x


class _OnceDifferentiable(torch.autograd.Function):
    """Passes gradients through unchanged; differentiating them raises (see :func:`first_order_gradients`)."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: torch.autograd.function.FunctionCtx, what: str, count: int, *tensors: torch.Tensor
    ) -> tuple[torch.Tensor, ...]:
        # tensors = the count gradients, then the inputs they depend on (only to connect this node to them)
        ctx.what = what
        return tuple(g.view_as(g) for g in tensors[:count])

    @staticmethod
    def backward(ctx: torch.autograd.function.FunctionCtx, *_: torch.Tensor) -> None:  # type: ignore[override]
        raise RuntimeError(
            f"{ctx.what} is differentiable once only: its backward pass computes the gradients without "
            "autograd, so they cannot be differentiated again (double backward, e.g. a gradient penalty through "
            "it); use the 'reference' selective-scan backend (backend='reference'), whose backward pass is "
            "autograd's"
        )


def first_order_gradients(
    what: str, grads: tuple[torch.Tensor | None, ...], inputs: tuple[torch.Tensor | None, ...]
) -> tuple[torch.Tensor | None, ...]:
    """The gradients an ``autograd.Function``'s backward pass computed without autograd, as it returns them.

    Under ``create_graph=True`` (grad mode is on in the backward pass) they come out of one more autograd
    node whose backward pass raises a ``RuntimeError`` naming ``what``: differentiating them again is refused
    instead of treating them as constants (silently missing second-order terms). The node takes the forward's
    ``inputs`` as inputs too, so that autograd reaches it (and raises) whenever a derivative w.r.t. one of them,
    or anything they depend on, passes through the gradients, however the incoming gradients were made
    (``torch.autograd.function.once_differentiable`` is skipped by ``torch.autograd.grad(..., inputs)`` and when
    the incoming gradients are constants). Without grad mode the gradients are returned unchanged.

    Args:
        what: the operation, for the message (e.g. ``"the numba selective scan"``).
        grads: the gradients w.r.t. the forward's inputs, ``None`` where there is none.
        inputs: the forward's differentiable inputs (e.g. the saved tensors; ``None`` entries are skipped).

    Returns:
        ``grads``, marked where grad mode is on.
    """
    if not torch.is_grad_enabled():
        return grads
    present = [i for i, g in enumerate(grads) if g is not None]
    anchors = [t for t in inputs if t is not None and t.requires_grad]
    if not present or not anchors:
        return grads
    marked = _OnceDifferentiable.apply(what, len(present), *(grads[i] for i in present), *anchors)
    out = list(grads)
    for i, g in zip(present, marked):
        out[i] = g
    return tuple(out)


def _check_float(name: str, x: torch.Tensor) -> None:
    if x.is_complex():
        raise TypeError(
            f"{name} is complex ({x.dtype}); complex selective scans are not supported by longiseg, "
            "pass a real floating tensor"
        )
    if not x.is_floating_point():
        raise TypeError(f"{name} must be a floating tensor (float16/bfloat16/float32/float64), got {x.dtype}")


def prepare_scan_inputs(
    u: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None = None,
    z: torch.Tensor | None = None,
    delta_bias: torch.Tensor | None = None,
    delta_softplus: object = False,
    return_last_state: object = False,
) -> ScanInputs:
    """Check every selective-scan argument and return them with the problem sizes.

    ``delta_softplus`` and ``return_last_state`` are the backends' flags, checked to be ``bool`` (a string such
    as ``"false"`` would count as ``True``).

    Raises:
        TypeError: an argument is not a tensor, not floating, or complex; a flag is not a ``bool``.
        ValueError: a rank or shape is inconsistent (the message names the argument and the expected layout),
            or the tensors live on different devices.
    """
    check_bool("delta_softplus", delta_softplus)
    check_bool("return_last_state", return_last_state)
    named = {"u": u, "delta": delta, "A": A, "B": B, "C": C, "D": D, "z": z, "delta_bias": delta_bias}
    for name, t in named.items():
        if t is None and name in ("D", "z", "delta_bias"):
            continue
        check_tensor(name, t)
        _check_float(name, t)
    if u.ndim != 3:
        raise ValueError(f"u must have 3 dims (batch, dim, seqlen), got shape {tuple(u.shape)}")
    batch, dim, seqlen = u.shape
    if seqlen < 1 or dim < 1:
        raise ValueError(f"u must have dim >= 1 channels and seqlen >= 1, got shape {tuple(u.shape)}")
    if delta.shape != u.shape:
        raise ValueError(
            f"delta must have the shape of u {tuple(u.shape)} (batch, dim, seqlen), got {tuple(delta.shape)}"
        )
    if A.ndim != 2 or A.shape[0] != dim:
        raise ValueError(f"A must have shape (dim={dim}, dstate), got {tuple(A.shape)}")
    dstate = A.shape[1]
    if dstate < 1:
        raise ValueError(f"A must have dstate >= 1 columns (dim, dstate), got {tuple(A.shape)}")
    for name, x in (("B", B), ("C", C)):
        if x.ndim == 2:
            if tuple(x.shape) != (dim, dstate):
                raise ValueError(
                    f"{name} with 2 dims is the input-independent form and must have shape (dim={dim}, "
                    f"dstate={dstate}), got {tuple(x.shape)}"
                )
        elif x.ndim == 3:
            if tuple(x.shape) != (batch, dstate, seqlen):
                raise ValueError(
                    f"{name} must have shape (batch={batch}, dstate={dstate}, seqlen={seqlen}), got {tuple(x.shape)}"
                )
        elif x.ndim == 4:
            g = x.shape[1]
            if x.shape[0] != batch or x.shape[2] != dstate or x.shape[3] != seqlen or g < 1:
                raise ValueError(
                    f"{name} with 4 dims must have shape (batch={batch}, groups, dstate={dstate}, seqlen={seqlen}), "
                    f"got {tuple(x.shape)}"
                )
            if dim % g != 0:
                raise ValueError(f"{name} has {g} groups, which must divide dim={dim}")
        else:
            raise ValueError(
                f"{name} must have shape (batch, dstate, seqlen), (batch, groups, dstate, seqlen) or (dim, dstate), "
                f"got {tuple(x.shape)}"
            )
    if D is not None and tuple(D.shape) != (dim,):
        raise ValueError(f"D must have shape (dim={dim},), got {tuple(D.shape)}")
    if delta_bias is not None and tuple(delta_bias.shape) != (dim,):
        raise ValueError(f"delta_bias must have shape (dim={dim},), got {tuple(delta_bias.shape)}")
    if z is not None and z.shape != u.shape:
        raise ValueError(f"z must have the shape of u {tuple(u.shape)}, got {tuple(z.shape)}")
    devices = {t.device for t in named.values() if t is not None}
    if len(devices) > 1:
        raise ValueError(
            f"all selective-scan tensors must be on one device, got {sorted(str(d) for d in devices)}"
        )
    return ScanInputs(u, delta, A, B, C, D, z, delta_bias, batch, dim, dstate, seqlen)
