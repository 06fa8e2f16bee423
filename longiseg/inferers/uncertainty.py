"""Voxel-wise predictive uncertainty: binary entropy of the averaged probabilities (the paper's Figure 4)."""

from __future__ import annotations

import math

import numpy as np
import torch

from longiseg.utils.validation import check_probabilities

__all__ = ["MAX_BINARY_ENTROPY", "binary_entropy"]

#: Largest binary entropy, reached at ``p = 0.5``: ``log 2`` nats.
MAX_BINARY_ENTROPY = math.log(2.0)


def binary_entropy(prob: np.ndarray | torch.Tensor | float) -> np.ndarray | torch.Tensor:
    """Binary predictive entropy ``-(p log p + (1 - p) log(1 - p))`` in nats, voxel-wise.

    ``0 log 0`` is taken as 0, so ``binary_entropy(0) == binary_entropy(1) == 0`` and
    ``binary_entropy(0.5) == log 2``. Works element-wise on any shape, e.g. ``(D, H, W)`` or
    ``(T-1, D, H, W)``.

    Args:
        prob: probabilities in ``[0, 1]``: a numpy array, a tensor or one number (a 0-d array comes back);
            integer and bool arrays of 0/1 are certain probabilities, entropy 0.

    Returns:
        Entropy of the same shape and type (float64 for float64 input, else float32).

    Raises:
        TypeError: if ``prob`` is not an array/tensor, or complex.
        ValueError: for NaN/inf values or values outside ``[0, 1]``.
    """
    if isinstance(prob, torch.Tensor):
        check_probabilities("prob", prob)  # before the cast: that of a complex map drops .imag
        p = prob if prob.dtype == torch.float64 else prob.float()
        # ``+ 0.0`` turns the -0.0 of p = 0 and p = 1 into 0.0 (a sign bit that viewers print as -0)
        return -(torch.special.xlogy(p, p) + torch.special.xlogy(1 - p, 1 - p)) + 0.0
    if isinstance(prob, (np.ndarray, float, int, np.floating)) and not isinstance(prob, bool):
        p = np.asarray(prob)
        check_probabilities("prob", p)  # before the cast
        p = p if p.dtype == np.float64 else p.astype(np.float32)
        from scipy.special import xlogy

        return (-(xlogy(p, p) + xlogy(1 - p, 1 - p)) + 0.0).astype(p.dtype, copy=False)
    raise TypeError(f"prob must be a numpy array or torch.Tensor, got {type(prob).__name__}")
