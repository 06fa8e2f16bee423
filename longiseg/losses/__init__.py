"""Losses: per-sample Dice-Focal and the imbalance-aware loss accumulation."""

from __future__ import annotations

from longiseg.losses.dice_focal import (
    PerSampleDiceFocalLoss,
    check_logits_and_target,
    dice_focal_per_sample,
    dice_loss_per_sample,
    sigmoid_focal_loss_per_sample,
)
from longiseg.losses.imbalance import (
    STRATEGIES,
    ImbalanceAwareLoss,
    ImbalanceLossOutput,
    new_lesion_logits,
    num_empty_to_keep,
    progression_presence,
    select_progression_samples,
)

__all__ = [
    "STRATEGIES",
    "ImbalanceAwareLoss",
    "ImbalanceLossOutput",
    "PerSampleDiceFocalLoss",
    "check_logits_and_target",
    "dice_focal_per_sample",
    "dice_loss_per_sample",
    "new_lesion_logits",
    "num_empty_to_keep",
    "progression_presence",
    "select_progression_samples",
    "sigmoid_focal_loss_per_sample",
]
