"""Learning-rate schedule: linear warm-up, then cosine decay, stepped once per optimizer step.

The schedule is a picklable callable :class:`WarmupCosineSchedule` usable as ``lr_lambda`` of
:class:`torch.optim.lr_scheduler.LambdaLR` (so its state is saved in ``scheduler.state_dict()``).
Warm-up and total lengths are given in epochs and converted to steps with ``steps_per_epoch``.

With ``W`` warm-up steps and ``N`` total steps the multiplier of the base learning rate at step ``s``
(``s = 0`` is the first optimizer step) is::

    s < W:        (s + 1) / W                                   # linear, reaches 1 at s = W - 1
    W <= s < N:   r + (1 - r) * (1 + cos(pi * (s - W) / (N - W))) / 2
    s >= N:       r                                             # r = min_lr / base_lr

so the cosine starts at the peak right after the warm-up and reaches ``min_lr`` at step ``N``
(after the last optimizer step of training).
"""

from __future__ import annotations

import math

import torch
from torch.optim.lr_scheduler import LambdaLR

from longiseg.utils.validation import (
    check_instance,
    check_nonnegative_float,
    check_positive_int,
    check_probability,
)

__all__ = ["WarmupCosineSchedule", "build_warmup_cosine_scheduler"]


class WarmupCosineSchedule:
    """Multiplier of the base learning rate: linear warm-up then cosine decay to ``min_ratio``.

    Args:
        warmup_steps: number of warm-up steps ``W >= 0`` (``0`` starts directly with the cosine).
        total_steps: total number of steps ``N >= 1``; ``W`` is clipped to ``N``.
        min_ratio: final multiplier ``min_lr / base_lr`` in ``[0, 1]``.

    Raises:
        TypeError: a length is not an int or the ratio not a number.
        ValueError: for negative lengths or a ratio outside ``[0, 1]``.
    """

    def __init__(self, warmup_steps: int, total_steps: int, min_ratio: float = 0.0) -> None:
        self.total_steps = check_positive_int("total_steps", total_steps)
        self.warmup_steps = min(check_positive_int("warmup_steps", warmup_steps, minimum=0), self.total_steps)
        self.min_ratio = check_probability("min_ratio", min_ratio)

    def __call__(self, step: int) -> float:
        """Multiplier at optimizer step ``step`` (0-based; an int ``>= 0``, a ``TypeError``/``ValueError``
        otherwise)."""
        step = check_positive_int("step", step, minimum=0)
        if step < self.warmup_steps:
            return (step + 1) / self.warmup_steps
        if step >= self.total_steps:
            return self.min_ratio
        decay_steps = self.total_steps - self.warmup_steps
        progress = (step - self.warmup_steps) / decay_steps
        return self.min_ratio + (1.0 - self.min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))

    def __repr__(self) -> str:
        return (f"WarmupCosineSchedule(warmup_steps={self.warmup_steps}, total_steps={self.total_steps}, "
                f"min_ratio={self.min_ratio})")


def build_warmup_cosine_scheduler(
    optimizer: torch.optim.Optimizer,
    *,
    warmup_epochs: int,
    max_epochs: int,
    steps_per_epoch: int,
    min_lr: float = 0.0,
) -> LambdaLR:
    """A :class:`~torch.optim.lr_scheduler.LambdaLR` with :class:`WarmupCosineSchedule`, one ``step()`` per
    optimizer step.

    Args:
        optimizer: the optimizer; every parameter group's ``lr`` at construction is its peak rate.
        warmup_epochs: warm-up length in epochs (``warmup_epochs * steps_per_epoch`` steps).
        max_epochs: training length in epochs (``max_epochs * steps_per_epoch`` steps).
        steps_per_epoch: optimizer steps per epoch.
        min_lr: absolute learning rate reached at the end; the multiplier is ``min_lr / lr`` of each group.

    Raises:
        TypeError: ``optimizer`` is not an optimizer, a length not an int or ``min_lr`` not a number.
        ValueError: for non-positive lengths or ``min_lr`` above a group's peak rate.
    """
    check_instance("optimizer", optimizer, torch.optim.Optimizer, "a torch.optim.Optimizer")
    steps_per_epoch = check_positive_int("steps_per_epoch", steps_per_epoch)
    max_epochs = check_positive_int("max_epochs", max_epochs)
    warmup_epochs = check_positive_int("warmup_epochs", warmup_epochs, minimum=0)
    min_lr = check_nonnegative_float("min_lr", min_lr)
    lambdas = []
    for i, group in enumerate(optimizer.param_groups):
        peak = float(group.get("initial_lr", group["lr"]))
        if peak <= 0 or min_lr > peak:
            raise ValueError(f"param group {i}: need 0 <= min_lr <= lr, got min_lr={min_lr}, lr={peak}")
        lambdas.append(WarmupCosineSchedule(warmup_epochs * steps_per_epoch, max_epochs * steps_per_epoch,
                                            min_lr / peak))
    return LambdaLR(optimizer, lr_lambda=lambdas)
