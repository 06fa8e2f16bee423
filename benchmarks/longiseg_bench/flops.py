"""Matrix-product arithmetic of one call, counted by :class:`torch.utils.flop_counter.FlopCounterMode`.

On a machine where matrix products run near the processor's peak, their FLOP count is a floor for a model's step
time: two models whose steps do ``F1`` and ``F2`` matrix FLOPs cannot run at a time ratio much below ``F1 / F2``
whatever their other kernels cost. Only the dense products are counted (``mm``, ``addmm``, ``bmm``, ``baddbmm``):
torch's counter has no formula for CPU flash attention or for selective scans, and its count for the backward pass
of grouped (depthwise) convolutions ignores the groups, so the sum over all operators would mislead. Operators
built *of* matrix products are counted with them: with the ``chunked`` scan backend SegMaST's count includes the
scan's small batched products (``numba``, ``triton`` and ``cuda`` scans are kernels the counter does not see).
"""

from __future__ import annotations

from collections.abc import Callable

from torch.utils.flop_counter import FlopCounterMode

__all__ = ["MATRIX_PRODUCTS", "matrix_product_flops"]

MATRIX_PRODUCTS = ("mm", "addmm", "bmm", "baddbmm")
"""The operators counted (``aten.<name>``)."""


def matrix_product_flops(fn: Callable[[], object]) -> float:
    """FLOPs of the dense matrix products that one call of ``fn`` runs (forward, and backward where ``fn``
    differentiates), counting a multiply-add as two.

    Raises:
        TypeError: ``fn`` is not callable.
    """
    if not callable(fn):
        raise TypeError(f"fn must be callable, got {type(fn).__name__}")
    counter = FlopCounterMode(display=False)
    with counter:
        fn()
    counts = counter.get_flop_counts().get("Global", {})
    return float(sum(n for op, n in counts.items() if str(op).rsplit(".", 1)[-1] in MATRIX_PRODUCTS))
