"""Per-sample Dice-Focal loss for sigmoid (multi-label / binary) segmentation heads.

MONAI's :class:`monai.losses.DiceFocalLoss` reduces over the batch, so it cannot tell which sample a loss
value came from; the imbalance-aware accumulation (:mod:`longiseg.losses.imbalance`) needs one value per
sample. The functions here return a ``(B,)`` vector whose entries equal MONAI's per-sample terms:

* Dice: ``1 - (2 * sum(p * y) + smooth_nr) / (sum(p) + sum(y) + smooth_dr)`` with ``p = sigmoid(logits)``,
  sums over the spatial voxels of one sample and channel, then averaged over the ``K`` channels
  (``DiceLoss(sigmoid=True, batch=False)``).
* Focal: ``alpha_t * (1 - p_t) ** gamma * BCE(logits, y)`` per voxel, averaged over the channels and voxels
  of one sample (``FocalLoss(use_softmax=False)``). ``alpha=None`` applies no class weighting; a scalar
  ``alpha`` weights positive voxels by ``alpha`` and negative voxels by ``1 - alpha``.

MONAI is not required; ``tests/test_losses.py`` checks the agreement when it is installed.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from longiseg.utils.validation import (
    check_binary,
    check_finite,
    check_nonnegative_float,
    check_probability,
    check_same_shape,
    check_tensor,
    debug_checks_enabled,
)

__all__ = [
    "PerSampleDiceFocalLoss",
    "check_logits_and_target",
    "check_real_target",
    "dice_focal_per_sample",
    "dice_loss_per_sample",
    "sigmoid_focal_loss_per_sample",
]


def check_real_target(name: str, target: torch.Tensor) -> None:
    """Refuse a complex target mask, naming it: a cast to the logits' dtype would drop the imaginary part."""
    if target.is_complex():
        raise TypeError(f"{name} must be a real (bool, int or float) mask, got dtype {target.dtype}")


def check_logits_and_target(
    logits: torch.Tensor,
    target: torch.Tensor,
    logits_name: str = "logits",
    target_name: str = "target",
) -> None:
    """Validate a logits/target pair of shape ``(B, K, *S)``.

    Types and shapes are always checked; the values (finite logits, binary target) only in debug mode
    (:func:`~longiseg.utils.validation.debug_checks`), as they cost a device-to-host sync on a GPU.

    Raises:
        TypeError: if either is not a tensor or ``logits`` is not floating point.
        ValueError: if ``logits`` has fewer than 3 dims, no element, or the shapes differ; in debug mode also if ``logits``
            holds NaN/inf or ``target`` is not a binary mask (bool, int or float with values in ``{0, 1}``).
    """
    check_tensor(logits_name, logits)
    check_tensor(target_name, target)
    if not logits.is_floating_point():
        raise TypeError(f"{logits_name} must be a floating-point tensor of logits, got dtype {logits.dtype}")
    check_real_target(target_name, target)
    if logits.ndim < 3:
        raise ValueError(
            f"{logits_name} must have at least 3 dims (B, K, *spatial), got shape {tuple(logits.shape)}"
        )
    check_same_shape(logits_name, logits, target_name, target)
    if logits.numel() == 0:
        raise ValueError(
            f"{logits_name} must hold at least one sample and one voxel (B, K, *spatial), got shape "
            f"{tuple(logits.shape)}"
        )
    if debug_checks_enabled():
        check_finite(logits_name, logits)
        check_binary(target_name, target)


def _check_hyperparameters(alpha: float | None = None, **nonnegative: float) -> None:
    """Raise unless every keyword value is a finite float ``>= 0`` and ``alpha`` is ``None`` or in ``[0, 1]``;
    ``smooth_dr`` must be ``> 0`` and ``lambda_dice``/``lambda_focal`` not both 0."""
    for name, value in nonnegative.items():
        check_nonnegative_float(name, value)  # NumPy numbers too; NaN and inf refused
    if nonnegative.get("smooth_dr", 1.0) == 0:  # an empty target and an empty prediction gave 0/0: a NaN loss
        raise ValueError("smooth_dr must be > 0: without it an empty target with an empty prediction (a stable "
                         "follow-up) has the Dice 0/0 and the loss is NaN")
    if nonnegative.get("lambda_dice", 1.0) == 0 and nonnegative.get("lambda_focal", 1.0) == 0:
        raise ValueError("lambda_dice and lambda_focal are both 0: the loss would be 0 whatever the model predicts; "
                         "give one of them a weight > 0")
    if alpha is not None:
        check_probability("alpha", alpha)


def _prepare(logits: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Cast to the compute dtype (at least float32) and flatten to ``(B, K, N)``."""
    dtype = torch.promote_types(logits.dtype, torch.float32)
    x = logits.to(dtype).flatten(2)
    y = target.to(device=logits.device, dtype=dtype).flatten(2)
    return x, y


def _dice(x: torch.Tensor, y: torch.Tensor, smooth_nr: float, smooth_dr: float) -> torch.Tensor:
    """Soft Dice loss of flattened ``(B, K, N)`` logits/targets -> ``(B,)`` (mean over channels)."""
    p = torch.sigmoid(x)
    intersection = (p * y).sum(-1)
    denominator = p.sum(-1) + y.sum(-1)
    per_channel = 1.0 - (2.0 * intersection + smooth_nr) / (denominator + smooth_dr)
    return per_channel.mean(-1)


def _focal(x: torch.Tensor, y: torch.Tensor, gamma: float, alpha: float | None) -> torch.Tensor:
    """Sigmoid focal loss of flattened ``(B, K, N)`` logits/targets -> ``(B,)`` (mean over K and N)."""
    loss = F.binary_cross_entropy_with_logits(x, y, reduction="none")
    if gamma != 0.0:
        # (1 - p_t) = sigmoid(-s * x) with s = +1 for positives and -1 for negatives; the power is taken
        # in log space so that saturated logits neither overflow nor produce 0 ** gamma gradients.
        log_one_minus_pt = F.logsigmoid(-(2.0 * y - 1.0) * x)
        loss = torch.exp(gamma * log_one_minus_pt) * loss
    if alpha is not None:
        loss = (alpha * y + (1.0 - alpha) * (1.0 - y)) * loss
    return loss.flatten(1).mean(-1)


def dice_loss_per_sample(
    logits: torch.Tensor, target: torch.Tensor, smooth_nr: float = 1e-5, smooth_dr: float = 1e-5
) -> torch.Tensor:
    """Sigmoid soft-Dice loss of each sample, averaged over its ``K`` channels.

    Args:
        logits: ``(B, K, *S)`` raw logits (sigmoid is applied here).
        target: ``(B, K, *S)`` binary mask (bool, int or float).
        smooth_nr: constant added to the numerator ``2 * |p * y|``.
        smooth_dr: constant added to the denominator ``|p| + |y|``.

    Returns:
        ``(B,)`` loss per sample, computed in ``float32`` or ``float64`` (the wider of that and
        ``logits.dtype``).
    """
    check_logits_and_target(logits, target)
    _check_hyperparameters(smooth_nr=smooth_nr, smooth_dr=smooth_dr)
    return _dice(*_prepare(logits, target), smooth_nr, smooth_dr)


def sigmoid_focal_loss_per_sample(
    logits: torch.Tensor, target: torch.Tensor, gamma: float = 2.0, alpha: float | None = None
) -> torch.Tensor:
    """Sigmoid focal loss of each sample, averaged over its channels and voxels.

    ``FL = alpha_t * (1 - p_t) ** gamma * BCEWithLogits(logits, target)`` where ``p_t`` is the predicted
    probability of the true class and ``alpha_t = alpha`` for positive, ``1 - alpha`` for negative voxels
    (no weighting when ``alpha`` is ``None``, MONAI's default). ``gamma = 0`` gives plain BCE.

    Args:
        logits: ``(B, K, *S)`` raw logits.
        target: ``(B, K, *S)`` binary mask (bool, int or float).
        gamma: focusing exponent, ``>= 0``.
        alpha: positive-class weight in ``[0, 1]`` or ``None``.

    Returns:
        ``(B,)`` loss per sample.
    """
    check_logits_and_target(logits, target)
    _check_hyperparameters(alpha, gamma=gamma)
    return _focal(*_prepare(logits, target), gamma, alpha)


def dice_focal_per_sample(
    logits: torch.Tensor,
    target: torch.Tensor,
    *,
    lambda_dice: float = 1.0,
    lambda_focal: float = 1.0,
    gamma: float = 2.0,
    alpha: float | None = None,
    smooth_nr: float = 1e-5,
    smooth_dr: float = 1e-5,
) -> torch.Tensor:
    """``lambda_dice * Dice + lambda_focal * Focal`` of each sample.

    Args:
        logits: ``(B, K, *S)`` raw logits.
        target: ``(B, K, *S)`` binary mask (bool, int or float).
        lambda_dice: weight of the Dice term, ``>= 0``.
        lambda_focal: weight of the focal term, ``>= 0``.
        gamma: focal exponent, ``>= 0``.
        alpha: focal positive-class weight in ``[0, 1]`` or ``None`` (no weighting).
        smooth_nr: Dice numerator smoothing.
        smooth_dr: Dice denominator smoothing.

    Returns:
        ``(B,)`` loss per sample; ``.mean()`` equals MONAI's
        ``DiceFocalLoss(sigmoid=True, batch=False, reduction="mean")`` on the same inputs.
    """
    dice, focal = _dice_focal_terms(
        logits, target, lambda_dice, lambda_focal, gamma, alpha, smooth_nr, smooth_dr
    )
    return lambda_dice * dice + lambda_focal * focal


def _dice_focal_terms(
    logits: torch.Tensor,
    target: torch.Tensor,
    lambda_dice: float,
    lambda_focal: float,
    gamma: float,
    alpha: float | None,
    smooth_nr: float,
    smooth_dr: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    check_logits_and_target(logits, target)
    _check_hyperparameters(
        alpha,
        gamma=gamma,
        smooth_nr=smooth_nr,
        smooth_dr=smooth_dr,
        lambda_dice=lambda_dice,
        lambda_focal=lambda_focal,
    )
    x, y = _prepare(logits, target)
    return _dice(x, y, smooth_nr, smooth_dr), _focal(x, y, gamma, alpha)


class PerSampleDiceFocalLoss(nn.Module):
    """Dice + sigmoid focal loss returning one value per sample.

    ``forward(logits (B, K, *S), target (B, K, *S)) -> (B,)``. Works for 2D (``S = (H, W)``) and 3D
    (``S = (D, H, W)``) inputs and any number of sigmoid channels ``K``. Arguments and defaults follow
    :class:`monai.losses.DiceFocalLoss` with ``sigmoid=True``: see :func:`dice_focal_per_sample`.

    Example:
        >>> loss_fn = PerSampleDiceFocalLoss()
        >>> logits, target = torch.randn(4, 1, 8, 8), torch.rand(4, 1, 8, 8) > 0.8
        >>> loss_fn(logits, target).shape
        torch.Size([4])
    """

    def __init__(
        self,
        lambda_dice: float = 1.0,
        lambda_focal: float = 1.0,
        gamma: float = 2.0,
        alpha: float | None = None,
        smooth_nr: float = 1e-5,
        smooth_dr: float = 1e-5,
    ) -> None:
        super().__init__()
        _check_hyperparameters(
            alpha,
            gamma=gamma,
            smooth_nr=smooth_nr,
            smooth_dr=smooth_dr,
            lambda_dice=lambda_dice,
            lambda_focal=lambda_focal,
        )
        self.lambda_dice = float(lambda_dice)
        self.lambda_focal = float(lambda_focal)
        self.gamma = float(gamma)
        self.alpha = None if alpha is None else float(alpha)
        self.smooth_nr = float(smooth_nr)
        self.smooth_dr = float(smooth_dr)

    def components(self, logits: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Unweighted ``(dice, focal)`` terms, each ``(B,)``, for logging."""
        return _dice_focal_terms(
            logits,
            target,
            self.lambda_dice,
            self.lambda_focal,
            self.gamma,
            self.alpha,
            self.smooth_nr,
            self.smooth_dr,
        )

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Return the ``(B,)`` weighted Dice-Focal loss of ``logits`` ``(B, K, *S)`` vs ``target``."""
        dice, focal = self.components(logits, target)
        return self.lambda_dice * dice + self.lambda_focal * focal

    def extra_repr(self) -> str:
        return (
            f"lambda_dice={self.lambda_dice}, lambda_focal={self.lambda_focal}, gamma={self.gamma}, "
            f"alpha={self.alpha}, smooth_nr={self.smooth_nr}, smooth_dr={self.smooth_dr}"
        )
