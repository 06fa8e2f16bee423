"""Checks shared by the model test files: output shapes, gradient reach, a short overfitting run, sizes."""

from __future__ import annotations

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


def assert_all_parameters_get_gradients(model: nn.Module, x: torch.Tensor) -> None:
    """Backpropagate a random linear function of both heads and check every parameter got a non-zero grad."""
    model.train()
    model.zero_grad(set_to_none=True)
    out = model(x)
    loss = (out.baseline * torch.randn_like(out.baseline)).sum()
    loss = loss + (out.progression * torch.randn_like(out.progression)).sum()
    loss.backward()
    missing = [n for n, p in model.named_parameters() if p.requires_grad and (p.grad is None or not p.grad.any())]
    assert not missing, f"parameters without gradient: {missing}"


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
