"""Checks shared by the model test files: output shapes, gradient reach, a short overfitting run, sizes."""

from __future__ import annotations

import re
from collections.abc import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from longiseg.networks.output import LongitudinalOutput

#: Parameter-count targets of the SegMaST paper's baselines, in millions: (dimensionality, dataset).
PAPER_PARAM_TARGETS_M: dict[tuple[str, str], float] = {
    ("2.5D", "ms"): 9.0,
    ("2.5D", "glioma"): 16.0,
    ("3D", "ms"): 15.0,
    ("3D", "glioma"): 25.0,
}


def count_parameters(model: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def assert_params_near(model: nn.Module, target_millions: float, rel_tol: float = 0.15) -> float:
    """Assert the trainable parameter count lies within ``rel_tol`` of ``target_millions``; return it (M)."""
    n = count_parameters(model) / 1e6
    assert abs(n - target_millions) <= rel_tol * target_millions, f"{n:.2f}M parameters, target {target_millions}M"
    return n


def assert_output_shapes(out: object, batch: int, timepoints: int, k: int, spatial: Sequence[int]) -> None:
    """Assert ``out`` is a LongitudinalOutput with baseline ``(B, K, *S)`` and progression ``(B, T-1, K, *S)``."""
    assert isinstance(out, LongitudinalOutput)
    assert tuple(out.baseline.shape) == (batch, k, *spatial)
    assert tuple(out.progression.shape) == (batch, timepoints - 1, k, *spatial)
    assert torch.isfinite(out.baseline).all() and torch.isfinite(out.progression).all()


#: Relative gradient norm (to the largest one) separating "gets a gradient" from "zero up to rounding" in
#: float64: rounding leaves ~1e-16, the smallest genuine gradients of the test models are ~1e-7.
GRADIENT_FLOOR = 1e-11

#: Parameters whose gradient is zero in exact arithmetic in training mode, by construction: a per-channel
#: constant added right before a normalisation that subtracts the per-channel mean. SegFormer-like models: the
#: all-MLP decoder's projection biases (BatchNorm follows) and the last encoder stage's LayerNorm bias (it only
#: feeds those projections). U-Nets: each convolution's bias before its InstanceNorm.
SEGFORMER_CANCELLED = (r"decoder\.proj\.\d+\.bias", r"encoder\.stages\.3\.norm\.bias")
UNET_CANCELLED = (r"(encoder|decoder)\.stages\.\d+\.block\.[03]\.bias",)


def assert_all_parameters_get_gradients(
    model: nn.Module, x: torch.Tensor, cancelled: Sequence[str] = ()
) -> None:
    """Backpropagate a random linear function of both heads and check which parameters get a gradient.

    Runs in float64 (the model is converted in place), so rounding noise lies far below
    :data:`GRADIENT_FLOOR` and the check does not depend on it: every parameter's gradient norm must exceed
    ``GRADIENT_FLOOR`` times the largest one, except those whose names match a regular expression in
    ``cancelled`` (zero in exact arithmetic by construction), which must lie below it.
    """
    model.double().train()
    model.zero_grad(set_to_none=True)
    out = model(x.double())
    loss = (out.baseline * torch.randn_like(out.baseline)).sum()
    loss = loss + (out.progression * torch.randn_like(out.progression)).sum()
    loss.backward()
    norms = {n: 0.0 if p.grad is None else p.grad.norm().item() for n, p in model.named_parameters() if p.requires_grad}
    floor = GRADIENT_FLOOR * max(norms.values())
    is_cancelled = {n: any(re.fullmatch(c, n) for c in cancelled) for n in norms}
    missing = [n for n, v in norms.items() if not is_cancelled[n] and not v > floor]
    assert not missing, f"parameters without gradient: {missing}"
    leaking = [n for n, v in norms.items() if is_cancelled[n] and v > floor]
    assert not leaking, f"parameters expected to be cancelled by a normalisation got gradients: {leaking}"
    assert any(is_cancelled.values()) or not cancelled, f"no parameter matches {cancelled}"


def synthetic_batch(
    batch: int, timepoints: int, channels: int, spatial: Sequence[int], k: int = 1
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Images whose bright voxels are the lesions: ``(B, T, C, *S)``, baseline ``(B, K, *S)`` and
    progression ``(B, T-1, K, *S)`` float targets (new lesions appear at follow-up ``t``)."""
    lesions = torch.rand(batch, timepoints, 1, *spatial) > 0.8
    lesions = torch.cummax(lesions.to(torch.uint8), dim=1).values.bool()  # lesions persist over time
    images = torch.randn(batch, timepoints, channels, *spatial) * 0.3 + 2.0 * lesions
    baseline = lesions[:, 0].expand(batch, k, *spatial).float()
    progression = (lesions[:, 1:] & ~lesions[:, :-1]).expand(batch, timepoints - 1, k, *spatial).float()
    return images, baseline, progression


def dual_bce(out: LongitudinalOutput, baseline: torch.Tensor, progression: torch.Tensor) -> torch.Tensor:
    """Sum of the mean binary cross-entropies of the two heads."""
    return F.binary_cross_entropy_with_logits(out.baseline, baseline) + F.binary_cross_entropy_with_logits(
        out.progression, progression
    )


def assert_training_reduces_loss(
    model: nn.Module, images: torch.Tensor, baseline: torch.Tensor, progression: torch.Tensor,
    steps: int = 8, lr: float = 1e-2,
) -> tuple[float, float]:
    """Fit one fixed batch for a few Adam steps; assert the loss went down. Returns (first, last) loss."""
    model.train()
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    losses = []
    for _ in range(steps):
        opt.zero_grad(set_to_none=True)
        loss = dual_bce(model(images), baseline, progression)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    with torch.no_grad():
        final = dual_bce(model(images), baseline, progression).item()
    assert final < 0.9 * losses[0], f"loss did not decrease: {losses} -> {final}"
    return losses[0], final
