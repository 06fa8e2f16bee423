"""The output structure that every longitudinal model in the registry returns.

:class:`LongitudinalOutput` is a registered pytree node, so ``torch.export`` and ``torch.compile`` flatten it into
its two tensors and build it back. ``torch.jit.trace`` records tensors and tuples only: while it records, the
models return the :class:`TracedOutput` pair instead (:meth:`LongitudinalOutput.traceable`), the pair that
unpacking a :class:`LongitudinalOutput` gives, and the recorded module returns it as the tuple
``(baseline, progression)``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NamedTuple

import torch
import torch.utils._pytree as pytree

from longiseg.utils.validation import checks_sizes

__all__ = ["LongitudinalOutput", "TracedOutput"]


class TracedOutput(NamedTuple):
    """``(baseline, progression)`` logits, what a model returns while ``torch.jit.trace`` records it."""

    baseline: torch.Tensor
    progression: torch.Tensor


@dataclass(frozen=True, eq=False)
class LongitudinalOutput:
    """Logits of the two heads of a longitudinal segmentation model.

    Attributes:
        baseline: baseline-lesion logits at timepoint 0, ``(B, K, *spatial)`` (from its features, which a
            longitudinal model computes with the follow-ups in view).
        progression: new/enlarging-lesion logits, one map per follow-up, ``(B, T-1, K, *spatial)``.

    ``spatial`` is ``(H, W)`` for 2.5D/2D models and ``(D, H, W)`` for 3D models; ``K`` is the number
    of output channels per head (1 for binary masks). The tensors are logits, apply ``sigmoid`` for
    probabilities.

    The fields are fixed once checked (a frozen dataclass: build a new output, e.g. with :meth:`map`), and ``==``
    compares identity (element-wise tensor comparison has no single truth value: compare the fields with
    ``torch.equal``).
    """

    baseline: torch.Tensor
    progression: torch.Tensor

    def __post_init__(self) -> None:
        if not isinstance(self.baseline, torch.Tensor) or not isinstance(self.progression, torch.Tensor):
            raise TypeError("LongitudinalOutput: baseline and progression must be tensors")
        if self.baseline.is_complex() or self.progression.is_complex():
            raise TypeError(f"LongitudinalOutput: baseline and progression must be real tensors, got dtypes "
                            f"{self.baseline.dtype} and {self.progression.dtype}")
        if self.progression.ndim != self.baseline.ndim + 1:
            raise ValueError(
                "LongitudinalOutput: progression must have one more dim (T-1) than baseline; got "
                f"baseline {tuple(self.baseline.shape)} and progression {tuple(self.progression.shape)}"
            )
        if self.baseline.ndim < 2:
            raise ValueError(f"LongitudinalOutput: baseline must be (B, K, *S), got shape {tuple(self.baseline.shape)}")
        b, k, *sp = self.baseline.shape
        pb, followups, pk, *psp = self.progression.shape
        if checks_sizes() and (pb, pk, psp) != (b, k, sp):
            raise ValueError(
                "LongitudinalOutput: baseline (B, K, *S) and progression (B, T-1, K, *S) disagree: "
                f"{tuple(self.baseline.shape)} vs {tuple(self.progression.shape)}"
            )
        if checks_sizes() and (followups < 1 or k < 1):  # no follow-up, or no output channel: nothing to segment
            raise ValueError(
                "LongitudinalOutput: progression (B, T-1, K, *S) needs T-1 >= 1 follow-ups and K >= 1 channels, got "
                f"baseline {tuple(self.baseline.shape)} and progression {tuple(self.progression.shape)}"
            )

    @property
    def num_followups(self) -> int:
        """Number of follow-up timepoints ``T-1``."""
        return self.progression.shape[1]

    def to_dict(self) -> dict[str, torch.Tensor]:
        """``{"baseline": ..., "progression": ...}``."""
        return {"baseline": self.baseline, "progression": self.progression}

    def map(self, fn: Callable[[torch.Tensor], torch.Tensor]) -> LongitudinalOutput:
        """Apply ``fn`` to both tensors (e.g. ``torch.sigmoid``) and return a new output (shapes as ``fn`` makes
        them: ``(B, K, *S)`` and ``(B, T-1, K, *S)`` for an element-wise ``fn``)."""
        return LongitudinalOutput(baseline=fn(self.baseline), progression=fn(self.progression))

    def __iter__(self):
        yield self.baseline
        yield self.progression

    def traceable(self) -> LongitudinalOutput | TracedOutput:
        """``self``, or while ``torch.jit.trace`` records, the pair :class:`TracedOutput` (the tracer cannot record
        a dataclass; ``baseline, progression = model(x)`` and attribute access work with both)."""
        return TracedOutput(self.baseline, self.progression) if torch.jit.is_tracing() else self


def _unflatten(tensors: Any, context: Any) -> LongitudinalOutput:
    # Built back from the leaves of a flattened output: not checked again (torch may pass placeholders).
    out = object.__new__(LongitudinalOutput)
    object.__setattr__(out, "baseline", tensors[0])
    object.__setattr__(out, "progression", tensors[1])
    return out


# public since torch 2.2; on older releases (no torch.export either) the output stays a leaf
_register = getattr(pytree, "register_pytree_node", None)
if _register is not None:
    _register(
        LongitudinalOutput,
        lambda out: ([out.baseline, out.progression], None),
        _unflatten,
        serialized_type_name=f"{__name__}.LongitudinalOutput",
    )
