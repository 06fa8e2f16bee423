"""Imbalance-aware loss accumulation (SegMaST, section 2 "Imbalance-Aware Loss Accumulation").

Follow-up data are dominated by stable cases whose progression masks are empty. The progression head's
per-sample losses are therefore filtered before averaging:

``L = mean_{i annotated} L_1(i) + mean_{(i, j) kept} L_p(i, j)``

where ``L_1`` is the baseline-head loss of sample ``i`` (samples of datasets without baseline labels,
``baseline_annotated=False`` such as MSSEG-2, are left out) and ``L_p(i, j)`` the progression-head loss of
sample ``i`` at follow-up ``j``. Which ``(i, j)`` pairs are kept depends on the strategy:

* ``"whole"``: every pair.
* ``"none"``: only pairs with a non-empty progression mask.
* ``"partial"`` (the paper's): every non-empty pair plus a random subset of the empty ones, chosen
  independently for each follow-up head ``j``; the subset has ``min(#empty, round(empty_ratio * #non-empty))``
  members (``round`` is half-up), or ``min(#empty, min_empty)`` when the head has no non-empty sample.

With ``keep_hard_negatives`` every empty pair of a sample flagged ``hard_negative`` (a crop centred on a
persisting baseline lesion, see :mod:`longiseg.data.crops`) is kept as well, whatever the strategy, and
the random subset is drawn from the other empty pairs.

See ``docs/losses.md`` for the rationale and the edge cases.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from longiseg.losses.dice_focal import PerSampleDiceFocalLoss, check_real_target
from longiseg.networks.output import LongitudinalOutput
from longiseg.utils.logging import get_logger
from longiseg.utils.seeds import generator_seed
from longiseg.utils.validation import (
    check_binary,
    check_callable,
    check_finite,
    check_ndim,
    check_nonnegative_float,
    check_positive_int,
    check_same_shape,
    check_seed,
    check_tensor,
    debug_checks_enabled,
)

__all__ = [
    "STRATEGIES",
    "ImbalanceAwareLoss",
    "ImbalanceLossOutput",
    "new_lesion_logits",
    "num_empty_to_keep",
    "progression_presence",
    "select_progression_samples",
]

logger = get_logger(__name__)

STRATEGIES: tuple[str, ...] = ("whole", "none", "partial")

PerSampleLoss = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def _check_strategy(strategy: object) -> str:
    if not isinstance(strategy, str) or strategy not in STRATEGIES:
        raise ValueError(f"strategy must be one of {STRATEGIES}, got {strategy!r}")
    return strategy


def _check_generator(generator: object) -> torch.Generator | None:
    if generator is None:
        return None
    if not isinstance(generator, torch.Generator):
        raise TypeError(f"generator must be a torch.Generator or None, got {type(generator).__name__}")
    if generator.device.type != "cpu":
        raise ValueError(f"generator must be a CPU torch.Generator, got one on {generator.device}")
    return generator


def progression_presence(progression_target: torch.Tensor) -> torch.Tensor:
    """Which progression masks are non-empty.

    Args:
        progression_target: ``(B, T-1, K, *S)`` masks (bool, int or float). A mask counts as non-empty if
            any voxel of any channel is non-zero.

    Returns:
        ``(B, T-1)`` bool tensor on the device of ``progression_target``.
    """
    check_tensor("progression_target", progression_target)
    check_real_target("progression_target", progression_target)  # a complex mask counted as non-empty
    if progression_target.ndim < 4:
        raise ValueError(
            "progression_target must have at least 4 dims (B, T-1, K, *spatial), got shape "
            f"{tuple(progression_target.shape)}"
        )
    return progression_target.flatten(2).ne(0).any(-1)


def num_empty_to_keep(
    num_non_empty: int,
    num_empty: int,
    strategy: str = "partial",
    empty_ratio: float = 1.0,
    min_empty: int = 1,
) -> int:
    """How many empty-mask samples of one follow-up head a strategy keeps.

    Args:
        num_non_empty: number of samples with a non-empty progression mask in the batch.
        num_empty: number of samples with an empty progression mask.
        strategy: ``"whole"`` (all), ``"none"`` (zero) or ``"partial"``.
        empty_ratio: ``partial`` only: empty samples kept per non-empty sample.
        min_empty: ``partial`` only: empty samples kept when ``num_non_empty == 0``.

    Returns:
        ``num_empty`` for ``whole``, ``0`` for ``none``; for ``partial``
        ``min(num_empty, floor(empty_ratio * num_non_empty + 0.5))`` if ``num_non_empty > 0`` else
        ``min(num_empty, min_empty)``.
    """
    strategy = _check_strategy(strategy)
    empty_ratio = check_nonnegative_float("empty_ratio", empty_ratio)
    min_empty = check_positive_int("min_empty", min_empty, minimum=0)
    num_non_empty = check_positive_int("num_non_empty", num_non_empty, minimum=0)  # NumPy ints too
    num_empty = check_positive_int("num_empty", num_empty, minimum=0)
    if strategy == "whole":
        return num_empty
    if strategy == "none":
        return 0
    if num_non_empty == 0:
        return min(num_empty, min_empty)
    wanted = empty_ratio * num_non_empty + 0.5  # may overflow to inf for a huge finite ratio: then all are kept
    return num_empty if wanted >= num_empty else math.floor(wanted)


def select_progression_samples(
    non_empty: torch.Tensor,
    strategy: str = "partial",
    empty_ratio: float = 1.0,
    min_empty: int = 1,
    generator: torch.Generator | None = None,
    always_keep: torch.Tensor | None = None,
) -> torch.Tensor:
    """Choose which (sample, follow-up) progression losses enter the progression term.

    Each column (follow-up head) is filtered independently with the counts of :func:`num_empty_to_keep`:
    every non-empty sample is kept for ``whole``/``none``/``partial``; empty ones are kept all
    (``whole``), none (``none``) or as a uniformly random subset (``partial``).

    Args:
        non_empty: ``(B,)`` or ``(B, T-1)`` bool (or 0/1) flags, e.g. from :func:`progression_presence`.
        strategy: ``"whole"``, ``"none"`` or ``"partial"``.
        empty_ratio: ``partial``: empty samples kept per non-empty one (default 1:1).
        min_empty: ``partial``: empty samples kept by a head without any non-empty sample.
        generator: CPU generator for the random subset (global RNG when ``None``). ``partial`` draws one
            ``randperm(B)`` per head and keeps the first ``n`` empty samples in its order, so the generator is
            consumed identically for a given ``(B, T-1)`` regardless of the data (``whole``/``none`` draw nothing).
        always_keep: ``(B,)`` or ``(B, T-1)`` bool (or 0/1) flags of pairs kept whatever the strategy (hard
            negatives); the strategy's subset of empty pairs is then drawn from the unflagged ones, with the
            same count as without flags. ``None`` (default): no pair is forced.

    Returns:
        bool tensor shaped like ``non_empty`` on its device, ``True`` for kept pairs.
    """
    check_tensor("non_empty", non_empty)
    if non_empty.ndim not in (1, 2):
        raise ValueError(f"non_empty must have shape (B,) or (B, T-1), got {tuple(non_empty.shape)}")
    check_binary("non_empty", non_empty)
    strategy = _check_strategy(strategy)
    empty_ratio = check_nonnegative_float("empty_ratio", empty_ratio)
    min_empty = check_positive_int("min_empty", min_empty, minimum=0)
    generator = _check_generator(generator)

    flags = non_empty.detach().to("cpu", torch.bool)
    squeeze = flags.ndim == 1
    if squeeze:
        flags = flags[:, None]
    forced = torch.zeros_like(flags)
    if always_keep is not None:
        check_tensor("always_keep", always_keep)
        check_ndim("always_keep", always_keep, (1, 2), "(B,) or (B, T-1)")
        check_binary("always_keep", always_keep)
        forced = always_keep.detach().to("cpu", torch.bool)
        forced = forced[:, None] if forced.ndim == 1 else forced
        if forced.shape[0] != flags.shape[0] or forced.shape[1] not in (1, flags.shape[1]):
            raise ValueError(f"always_keep must have shape ({flags.shape[0]},) or {tuple(flags.shape)}, "
                             f"got {tuple(always_keep.shape)}")
        forced = forced.expand_as(flags)
    kept = flags | forced
    for j in range(flags.shape[1]):
        free = ~flags[:, j] & ~forced[:, j]  # the empty pairs the strategy chooses among
        n_keep = num_empty_to_keep(int(flags[:, j].sum()), int(free.sum()), strategy, empty_ratio, min_empty)
        if strategy == "partial":  # a permutation of all B samples: the draw does not depend on the flags
            order = torch.randperm(flags.shape[0], generator=generator)
            kept[order[free[order]][:n_keep], j] = True
        elif n_keep:
            kept[free, j] = True
    if squeeze:
        kept = kept[:, 0]
    return kept.to(non_empty.device)


@dataclass
class ImbalanceLossOutput:
    """Result of :class:`ImbalanceAwareLoss`.

    Attributes:
        loss: scalar total, ``baseline_loss + progression_loss`` (call ``.backward()`` on this).
        baseline_loss: scalar mean baseline-head loss over the ``B`` samples.
        progression_loss: scalar mean progression-head loss over the kept ``(sample, follow-up)`` pairs; a
            zero that is still connected to the progression logits when nothing was kept.
        kept: ``(B, T-1)`` bool, CPU: pairs that entered ``progression_loss``.
        non_empty: ``(B, T-1)`` bool, CPU: pairs whose progression mask is non-empty.
        num_kept: number of kept pairs ``B'``.
        num_positive: number of non-empty pairs (all of them are kept).
        num_empty: number of empty pairs.
        num_empty_kept: number of empty pairs kept (hard negatives included).
        num_baseline: number of samples in ``baseline_loss`` (those with a baseline annotation).
    """

    loss: torch.Tensor
    baseline_loss: torch.Tensor
    progression_loss: torch.Tensor
    kept: torch.Tensor
    non_empty: torch.Tensor
    num_kept: int
    num_positive: int
    num_empty: int
    num_empty_kept: int
    num_baseline: int

    def as_log_dict(self, prefix: str = "loss") -> dict[str, float]:
        """Plain floats for a logger, e.g. ``{"loss": .., "loss/baseline": .., "loss/kept": ..}``."""
        return {
            prefix: float(self.loss.detach()),
            f"{prefix}/baseline": float(self.baseline_loss.detach()),
            f"{prefix}/progression": float(self.progression_loss.detach()),
            f"{prefix}/kept": float(self.num_kept),
            f"{prefix}/positive": float(self.num_positive),
            f"{prefix}/empty": float(self.num_empty),
            f"{prefix}/empty_kept": float(self.num_empty_kept),
            f"{prefix}/baseline_samples": float(self.num_baseline),
        }


def new_lesion_logits(baseline_logits: torch.Tensor, progression_logits: torch.Tensor) -> torch.Tensor:
    """Logits of the new-lesion probabilities of
    :func:`~longiseg.inferers.postprocessing.new_lesion_probability`, computed in log space: at follow-up ``k``
    ``p_k = sigmoid(a_k) q_{k-1}`` with ``q_0 = 1 - sigmoid(b)`` the probability that the voxel is not lesion at
    baseline and ``q_k = q_{k-1} (1 - sigmoid(a_k))`` that it is not lesion at ``k`` (``a_k`` the progression,
    ``b`` the baseline logit; the first follow-up: ``sigmoid(a_1) (1 - sigmoid(b))``).

    ``log p_k = logsigmoid(a_k) + log q_{k-1}`` and ``1 - p_k = sigmoid(-a_k) + sigmoid(a_k) (1 - q_{k-1})``, so
    ``log(1 - p_k)`` is the ``logaddexp`` of ``logsigmoid(-a_k)`` and ``logsigmoid(a_k) + log(1 - q_{k-1})``, with
    ``log q_0 = logsigmoid(-b)``, ``log(1 - q_0) = logsigmoid(b)``, ``log q_k = log q_{k-1} + logsigmoid(-a_k)``
    and ``log(1 - q_k) = logaddexp(log(1 - q_{k-1}), log p_k)``: finite, with a gradient, for every finite input
    (a confident ``p`` near 1 included, e.g. ``a = 17, b = -17``: logit about 16.3).

    Args:
        baseline_logits: ``(B, K, *S)``.
        progression_logits: ``(B, T-1, K, *S)``.

    Returns:
        ``(B, T-1, K, *S)`` logits in the dtype both inputs promote to (``torch.promote_types``).

    Raises:
        TypeError: an argument is not a floating-point tensor.
        ValueError: the shapes do not match, or ``T-1`` is 0.
    """
    for name, logits in (("baseline_logits", baseline_logits), ("progression_logits", progression_logits)):
        check_tensor(name, logits)
        if not logits.is_floating_point():
            raise TypeError(f"{name} must be a floating-point tensor of logits, got dtype {logits.dtype}")
    if baseline_logits.ndim + 1 != progression_logits.ndim or \
            baseline_logits.shape[0] != progression_logits.shape[0] or \
            baseline_logits.shape[1:] != progression_logits.shape[2:]:
        raise ValueError(f"baseline_logits (B, K, *S) {tuple(baseline_logits.shape)} does not match "
                         f"progression_logits (B, T-1, K, *S) {tuple(progression_logits.shape)}")
    if progression_logits.shape[1] == 0:
        raise ValueError("progression_logits must hold at least one follow-up (T-1 >= 1), got shape "
                         f"{tuple(progression_logits.shape)}")
    b = baseline_logits.unsqueeze(1)
    not_before, before = F.logsigmoid(-b), F.logsigmoid(b)  # log q_0, log(1 - q_0)
    logits = []
    for k in range(progression_logits.shape[1]):
        a = progression_logits[:, k : k + 1]
        log_p = F.logsigmoid(a) + not_before
        log_not_p = torch.logaddexp(F.logsigmoid(-a), F.logsigmoid(a) + before)
        logits.append(log_p - log_not_p)
        if k + 1 < progression_logits.shape[1]:
            not_before, before = not_before + F.logsigmoid(-a), torch.logaddexp(before, log_p)
    return logits[0] if len(logits) == 1 else torch.cat(logits, dim=1)


def _sample_flags(name: str, flags: torch.Tensor | None, batch: int, default: bool) -> torch.Tensor:
    """``(B,)`` bool CPU flags from ``flags`` (``(B,)`` bool or 0/1), or ``default`` for every sample."""
    if flags is None:
        return torch.full((batch,), default, dtype=torch.bool)
    check_tensor(name, flags)
    if tuple(flags.shape) != (batch,):
        raise ValueError(f"{name} must have shape ({batch},), one flag per sample, got {tuple(flags.shape)}")
    check_binary(name, flags)
    return flags.detach().to("cpu", torch.bool)


def _loss_dtype(output: LongitudinalOutput) -> torch.dtype:
    """``float32`` for half-precision (or float32) logits, ``float64`` for float64 ones."""
    return torch.promote_types(torch.promote_types(output.baseline.dtype, output.progression.dtype), torch.float32)


def _connected_zero(logits: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """A scalar ``0`` of ``dtype`` connected to ``logits`` (zero gradient), finite for any finite half logits.

    ``logits.sum() * 0`` is NaN when the half-precision sum overflows to ``inf``; the product comes first here.
    """
    return (logits * 0).sum(dtype=dtype)


def _without_gradient_from(baseline_logits: torch.Tensor, annotated: torch.Tensor) -> torch.Tensor:
    """``(B, K, *S)`` baseline logits, detached in the rows of samples without a baseline annotation.

    ``annotated``: ``(B,)`` bool (CPU). The progression term scored through :func:`new_lesion_logits` then sends
    no gradient into the baseline logits of unannotated samples, as the baseline term does not.
    """
    if bool(annotated.all()):
        return baseline_logits
    rows = annotated.to(baseline_logits.device).view(-1, *([1] * (baseline_logits.ndim - 1)))
    return torch.where(rows, baseline_logits, baseline_logits.detach())


class ImbalanceAwareLoss(nn.Module):
    """Baseline loss + filtered progression loss for any model returning :class:`LongitudinalOutput`.

    ``total = mean_{i annotated} L(baseline_i, y1_i) + mean_{(i, j) kept} L(progression_ij, yp_ij)`` where
    ``L`` is a per-sample loss and the kept pairs are chosen by :func:`select_progression_samples`. Samples
    passed with ``baseline_annotated=False`` are left out of the baseline term (their baseline logits get no
    gradient); when no sample of the batch is annotated the baseline term is a connected ``0``. For ``T > 2``
    every follow-up head ``j`` is filtered on its own, and the progression term averages over all kept
    ``(sample, follow-up)`` pairs, so every kept pair weighs the same. When no pair is kept the progression
    term is ``0`` (connected to the graph, so DDP sees the head as used).

    Args:
        per_sample_loss: callable ``(logits (N, K, *S), target (N, K, *S)) -> (N,)``; default
            :class:`PerSampleDiceFocalLoss` with MONAI's defaults. Modules are registered as children.
        strategy: ``"partial"`` (default, the paper's), ``"whole"`` or ``"none"``.
        empty_ratio: ``partial``: empty samples kept per non-empty sample of a head (default 1.0 = 1:1).
        min_empty: ``partial``: empty samples kept by a head whose batch has no non-empty sample
            (default 1, so the progression head still learns to stay silent on stable batches; 0 gives
            a zero progression term for such batches, the literal reading of the paper).
        generator: CPU ``torch.Generator`` for the random subsets; the caller keeps ownership.
        seed: alternative to ``generator``: the loss owns a generator seeded with it, whose state is part
            of ``state_dict()`` so a resumed run draws the same subsets. Neither given: global RNG.
        keep_hard_negatives: keep every empty sample flagged ``hard_negative`` in the call (default ``False``,
            the paper's loss: flags are ignored).
        progression_outside_baseline: score the progression head through :func:`new_lesion_logits`, the logit
            of ``p_prog (1 - p_base)`` that inference thresholds (``inference.progression_outside_baseline``),
            so the progression term also reaches the baseline head (default ``False``, the paper's loss);
            not for samples with ``baseline_annotated=False``, whose baseline logits enter it detached.

    The terms are computed in ``float32`` (``float64`` for ``float64`` logits): half-precision logits are
    upcast, and the returned losses are ``float32`` (``float64``) scalars, finite under autocast.

    Example:
        >>> loss_fn = ImbalanceAwareLoss(seed=0)
        >>> out = LongitudinalOutput(torch.randn(4, 1, 8, 8), torch.randn(4, 1, 1, 8, 8))
        >>> res = loss_fn(out, torch.zeros(4, 1, 8, 8), torch.zeros(4, 1, 1, 8, 8))
        >>> res.num_kept   # no progression in the batch -> min_empty = 1 stable sample kept
        1
    """

    def __init__(
        self,
        per_sample_loss: PerSampleLoss | None = None,
        strategy: str = "partial",
        empty_ratio: float = 1.0,
        min_empty: int = 1,
        generator: torch.Generator | None = None,
        seed: int | None = None,
        keep_hard_negatives: bool = False,
        progression_outside_baseline: bool = False,
    ) -> None:
        super().__init__()
        if per_sample_loss is None:
            per_sample_loss = PerSampleDiceFocalLoss()
        check_callable("per_sample_loss", per_sample_loss)
        self.per_sample_loss = per_sample_loss
        self.strategy = _check_strategy(strategy)
        self.empty_ratio = check_nonnegative_float("empty_ratio", empty_ratio)
        self.min_empty = check_positive_int("min_empty", min_empty, minimum=0)
        if generator is not None and seed is not None:
            raise ValueError("pass either generator or seed, not both")
        self._owns_generator = seed is not None
        self._seed = seed  # recorded with the generator state, so a resume can tell a changed seed
        if seed is not None:
            seed = self._seed = check_seed("seed", seed)
            generator = torch.Generator().manual_seed(generator_seed(seed))  # torch keeps 32 bits of a seed
        self.generator = _check_generator(generator)
        if not isinstance(keep_hard_negatives, bool):
            raise TypeError(f"keep_hard_negatives must be a bool, got {type(keep_hard_negatives).__name__}")
        self.keep_hard_negatives = keep_hard_negatives
        if not isinstance(progression_outside_baseline, bool):
            raise TypeError("progression_outside_baseline must be a bool, got "
                            f"{type(progression_outside_baseline).__name__}")
        self.progression_outside_baseline = progression_outside_baseline

    def _per_sample(self, logits: torch.Tensor, target: torch.Tensor, what: str) -> torch.Tensor:
        values = self.per_sample_loss(logits, target)
        if not isinstance(values, torch.Tensor) or tuple(values.shape) != (logits.shape[0],):
            shape = tuple(values.shape) if isinstance(values, torch.Tensor) else type(values).__name__
            raise ValueError(
                f"per_sample_loss must return one value per sample, shape ({logits.shape[0]},), "
                f"for the {what} head; got {shape}"
            )
        return values

    def forward(
        self,
        output: LongitudinalOutput,
        baseline_target: torch.Tensor,
        progression_target: torch.Tensor,
        *,
        baseline_annotated: torch.Tensor | None = None,
        hard_negative: torch.Tensor | None = None,
    ) -> ImbalanceLossOutput:
        """Compute the imbalance-aware loss.

        Args:
            output: model output with ``baseline`` ``(B, K, *S)`` and ``progression`` ``(B, T-1, K, *S)``
                logits.
            baseline_target: ``(B, K, *S)`` binary baseline mask (bool, int or float).
            progression_target: ``(B, T-1, K, *S)`` binary new/enlarging-lesion masks.
            baseline_annotated: ``(B,)`` bool; ``False`` leaves the sample out of the baseline term (datasets
                without baseline labels). ``None``: every sample is annotated.
            hard_negative: ``(B,)`` bool flags of hard-negative samples, kept when ``keep_hard_negatives``
                (ignored otherwise). ``None``: no flag.

        Returns:
            :class:`ImbalanceLossOutput` with the total and its components.

        Types and shapes are always checked; finite logits and binary targets only in debug mode
        (:func:`~longiseg.utils.validation.debug_checks`, ``LONGISEG_DEBUG_CHECKS=1``).
        """
        if not isinstance(output, LongitudinalOutput):
            raise TypeError(f"output must be a LongitudinalOutput, got {type(output).__name__}")
        for name, logits in (("output.baseline", output.baseline), ("output.progression", output.progression)):
            if not logits.is_floating_point():
                raise TypeError(f"{name} must be floating-point logits, got dtype {logits.dtype}")
        for name, target in (("baseline_target", baseline_target), ("progression_target", progression_target)):
            check_tensor(name, target)
            check_real_target(name, target)  # named here (the per-sample loss called either "target")
        check_same_shape("baseline_target", baseline_target, "output.baseline", output.baseline)
        if progression_target.ndim != output.progression.ndim:
            raise ValueError(
                "progression_target must have shape (B, T-1, K, *S) like output.progression "
                f"{tuple(output.progression.shape)}, got {tuple(progression_target.shape)}"
            )
        if progression_target.shape[1] != output.progression.shape[1]:
            raise ValueError(
                f"progression_target has {progression_target.shape[1]} follow-ups (T-1, dim 1) but "
                f"output.progression has {output.progression.shape[1]}: shapes "
                f"{tuple(progression_target.shape)} vs {tuple(output.progression.shape)}"
            )
        check_same_shape("progression_target", progression_target, "output.progression", output.progression)
        if output.baseline.numel() == 0 or output.progression.numel() == 0:
            raise ValueError(
                "output must hold at least one sample and one voxel, got output.baseline "
                f"{tuple(output.baseline.shape)} and output.progression {tuple(output.progression.shape)}"
            )
        if debug_checks_enabled():  # value checks read every voxel: a device-to-host sync each
            check_finite("output.baseline", output.baseline)
            check_finite("output.progression", output.progression)
            check_binary("baseline_target", baseline_target)
            check_binary("progression_target", progression_target)

        batch = output.baseline.shape[0]
        dtype = _loss_dtype(output)
        annotated = _sample_flags("baseline_annotated", baseline_annotated, batch, default=True)
        if bool(annotated.all()):
            baseline_loss = self._per_sample(output.baseline, baseline_target, "baseline").mean()
        elif bool(annotated.any()):
            rows = torch.nonzero(annotated).flatten()
            baseline_loss = self._per_sample(output.baseline[rows.to(output.baseline.device)],
                                             baseline_target[rows.to(baseline_target.device)], "baseline").mean()
        else:
            baseline_loss = _connected_zero(output.baseline, dtype)

        non_empty = progression_presence(progression_target).cpu()
        forced = None
        if self.keep_hard_negatives and hard_negative is not None:
            forced = _sample_flags("hard_negative", hard_negative, batch, default=False)
        kept = select_progression_samples(
            non_empty, self.strategy, self.empty_ratio, self.min_empty, self.generator, always_keep=forced
        )
        num_kept = int(kept.sum())
        progression = output.progression
        if self.progression_outside_baseline:
            progression = new_lesion_logits(_without_gradient_from(output.baseline.to(dtype), annotated),
                                            progression.to(dtype))
        if num_kept:
            pairs = torch.nonzero(kept, as_tuple=True)
            logits = progression[tuple(i.to(progression.device) for i in pairs)]
            target = progression_target[tuple(i.to(progression_target.device) for i in pairs)]
            progression_loss = self._per_sample(logits, target, "progression").mean()
        else:
            progression_loss = _connected_zero(output.progression, dtype)
        baseline_loss, progression_loss = baseline_loss.to(dtype), progression_loss.to(dtype)

        num_positive = int(non_empty.sum())
        num_empty = non_empty.numel() - num_positive
        return ImbalanceLossOutput(
            loss=baseline_loss + progression_loss,
            baseline_loss=baseline_loss,
            progression_loss=progression_loss,
            kept=kept,
            non_empty=non_empty,
            num_kept=num_kept,
            num_positive=num_positive,
            num_empty=num_empty,
            num_empty_kept=num_kept - num_positive,
            num_baseline=int(annotated.sum()),
        )

    @property
    def seed(self) -> int | None:
        """The seed of the random stream the loss draws from (``None``: a caller's generator or the global one);
        after a resume, the seed of the stream restored from the checkpoint."""
        return self._seed

    def get_extra_state(self) -> dict[str, Any]:
        """The state of the generator the loss owns (``seed=...``), so resumed runs draw identically."""
        if self._owns_generator and self.generator is not None:
            return {"generator_state": self.generator.get_state(), "seed": self._seed}
        return {}

    def set_extra_state(self, state: dict[str, Any]) -> None:
        """Restore :meth:`get_extra_state`."""
        if not isinstance(state, dict):
            raise TypeError(f"extra state must be a dict, got {type(state).__name__}")
        if "generator_state" in state:
            if not self._owns_generator or self.generator is None:
                raise ValueError(
                    "state has a generator state but this ImbalanceAwareLoss was built without seed="
                )
            self.generator.set_state(state["generator_state"])
            saved_seed = state.get("seed")  # absent in older checkpoints
            if saved_seed is not None and saved_seed != self._seed:
                # the restored stream is the saved seed's: the new one would otherwise be recorded but never used
                logger.warning("ImbalanceAwareLoss(seed=%s) continues the random stream of the state it restores, "
                               "drawn with seed=%s: the new seed applies to a fresh run only", self._seed, saved_seed)
                self._seed = saved_seed

    def extra_repr(self) -> str:
        return (f"strategy={self.strategy!r}, empty_ratio={self.empty_ratio}, min_empty={self.min_empty}, "
                f"keep_hard_negatives={self.keep_hard_negatives}")
