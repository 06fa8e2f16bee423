"""Difference Weighting block: formula, identity at zero difference, shapes, gradients and errors."""

from __future__ import annotations

import pytest
import torch

from longiseg.networks.blocks.difference_weighting import DifferenceWeighting


def _reference(current: torch.Tensor, prior: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor,
               eps: float) -> torch.Tensor:
    """``x_c * InstNorm(x_c - x_p) + x_c`` written out by hand (biased variance per sample and channel)."""
    diff = current - prior
    dims = tuple(range(2, diff.ndim))
    mean = diff.mean(dim=dims, keepdim=True)
    var = ((diff - mean) ** 2).mean(dim=dims, keepdim=True)
    shape = (1, -1) + (1,) * (diff.ndim - 2)
    normed = (diff - mean) / torch.sqrt(var + eps) * weight.view(shape) + bias.view(shape)
    return current * normed + current


@pytest.mark.parametrize("spatial_dims, spatial", [(2, (7, 5)), (3, (4, 5, 3))])
def test_matches_hand_computed_formula(spatial_dims: int, spatial: tuple[int, ...]) -> None:
    channels = 3
    block = DifferenceWeighting(channels, spatial_dims=spatial_dims).double()
    with torch.no_grad():  # non-trivial affine parameters
        block.norm.weight.copy_(torch.tensor([0.5, -1.5, 2.0]))
        block.norm.bias.copy_(torch.tensor([0.1, 0.0, -0.3]))
    current = torch.randn(2, channels, *spatial, dtype=torch.float64, requires_grad=True)
    prior = torch.randn(2, channels, *spatial, dtype=torch.float64, requires_grad=True)
    out = block(current, prior)
    ref = _reference(current, prior, block.norm.weight, block.norm.bias, block.norm.eps)
    assert out.shape == current.shape
    rel = (out - ref).norm() / ref.norm()
    assert rel < 1e-12
    # gradients of the block and of the reference agree for both inputs
    g = torch.randn_like(out)
    grads = torch.autograd.grad(out, (current, prior), g)
    grads_ref = torch.autograd.grad(ref, (current, prior), g)
    for a, b in zip(grads, grads_ref):
        assert (a - b).norm() / b.norm() < 1e-10


def test_single_value_by_hand() -> None:
    """One channel, two voxels: difference (2, 0) has mean 1, variance 1, so the norm is (1, -1)."""
    block = DifferenceWeighting(1, spatial_dims=2, eps=0.0).double()
    current = torch.tensor([[[[3.0, 5.0]]]], dtype=torch.float64)
    prior = torch.tensor([[[[1.0, 5.0]]]], dtype=torch.float64)
    out = block(current, prior)
    # 3 * 1 + 3 = 6 and 5 * (-1) + 5 = 0
    torch.testing.assert_close(out, torch.tensor([[[[6.0, 0.0]]]], dtype=torch.float64), rtol=0, atol=1e-12)


@pytest.mark.parametrize("spatial_dims, spatial", [(2, (8, 6)), (3, (4, 6, 5))])
def test_identity_when_timepoints_equal(spatial_dims: int, spatial: tuple[int, ...]) -> None:
    block = DifferenceWeighting(4, spatial_dims=spatial_dims)
    x = torch.randn(2, 4, *spatial)
    # exact by construction: x - x is exactly 0, its instance norm is 0 * w + b with b = 0 at init, so x * 0 + x = x
    assert torch.equal(block(x, x.clone()), x)


def test_not_identity_when_timepoints_differ() -> None:
    block = DifferenceWeighting(2, spatial_dims=2)
    x = torch.randn(1, 2, 6, 6)
    assert not torch.allclose(block(x, x + torch.randn_like(x)), x)


def test_parameters_receive_gradients() -> None:
    block = DifferenceWeighting(3, spatial_dims=3).double()
    current, prior = torch.randn(2, 3, 4, 4, 4, dtype=torch.float64), torch.randn(2, 3, 4, 4, 4, dtype=torch.float64)
    block(current, prior).pow(2).sum().backward()
    for name, p in block.named_parameters():  # gradients of order 10; float64 rounding is ~1e-15
        assert p.grad is not None and p.grad.norm() > 1e-6, name


def test_constructor_errors() -> None:
    with pytest.raises(ValueError, match="spatial_dims"):
        DifferenceWeighting(4, spatial_dims=1)
    with pytest.raises(ValueError, match="channels"):
        DifferenceWeighting(0)


def test_forward_errors() -> None:
    block = DifferenceWeighting(4, spatial_dims=3)
    x = torch.randn(1, 4, 3, 3, 3)
    with pytest.raises(TypeError, match="prior"):
        block(x, x.numpy())
    with pytest.raises(TypeError, match="current"):
        block([1.0], x)
    with pytest.raises(ValueError, match="same shape"):
        block(x, torch.randn(1, 4, 3, 3, 2))
    with pytest.raises(ValueError, match=r"current must be \(B, C, D, H, W\) with C=4"):
        block(torch.randn(1, 4, 3, 3), torch.randn(1, 4, 3, 3))
    with pytest.raises(ValueError, match=r"with C=4, got shape \(1, 5, 3, 3, 3\)"):
        block(torch.randn(1, 5, 3, 3, 3), torch.randn(1, 5, 3, 3, 3))
    with pytest.raises(ValueError, match=r"with C=4, got shape \(1, 4, 3, 3\) \(4 dims, not 5\)$"):
        block(torch.randn(1, 4, 3, 3), torch.randn(1, 4, 3, 3))


@pytest.mark.parametrize("train", [True, False])
def test_a_single_voxel_per_channel_is_refused_by_the_block(train: bool) -> None:
    """torch's instance norm refused it (in training and evaluation) with a message naming neither the block nor
    ``current``."""
    block = DifferenceWeighting(4, spatial_dims=2).train(train)
    with pytest.raises(ValueError, match=r"current has a single voxel per channel, got shape \(2, 4, 1, 1\): the block "
                                         r"instance-normalises x_c - x_p over the spatial dims"):
        block(torch.randn(2, 4, 1, 1), torch.randn(2, 4, 1, 1))
    assert block(torch.randn(2, 4, 1, 2), torch.randn(2, 4, 1, 2)).shape == (2, 4, 1, 2)
