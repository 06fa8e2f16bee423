"""The compiled causal depthwise convolution + SiLU of Mamba against its float64 F.conv1d reference."""

from __future__ import annotations

import pytest
import torch

from longiseg.ssm import Mamba, cpu_kernel

pytest.importorskip("numba")

from longiseg.ssm.causal_conv import causal_conv1d_silu_cpu, causal_conv1d_silu_reference  # noqa: E402


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    scale = b.double().norm().item()
    assert scale > 0, "the reference vanishes"
    return (a.double() - b.double()).norm().item() / scale


def _check(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, tol: float, threads: int | None = None) -> None:
    """Output and every gradient of the kernel against the reference on float64 copies (relative errors)."""
    leaves = [t.detach().clone().requires_grad_() if t is not None else None for t in (x, weight, bias)]
    gy = torch.randn(x.shape, dtype=torch.float64)
    saved = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        y = causal_conv1d_silu_cpu(*leaves)
        y.backward(gy.to(x.dtype))
    finally:
        torch.set_num_threads(saved)
    refs = [t.detach().double().requires_grad_() if t is not None else None for t in (x, weight, bias)]
    y_ref = causal_conv1d_silu_reference(*refs)
    y_ref.backward(gy)
    assert y.dtype == x.dtype and y.shape == x.shape
    assert _rel(y, y_ref) < tol, "output"
    for name, got, want in zip(("x", "weight", "bias"), leaves, refs):
        if got is not None:
            assert _rel(got.grad, want.grad) < tol, f"grad {name}"


@pytest.mark.parametrize("taps", [1, 2, 4])
@pytest.mark.parametrize("seqlen", [1, 3, 37])
def test_matches_reference_float64(taps: int, seqlen: int) -> None:
    torch.manual_seed(taps * 100 + seqlen)
    x = torch.randn(2, seqlen, 70, dtype=torch.float64)  # 70 channels: a block of 64 and one of 6
    _check(x, torch.randn(70, taps, dtype=torch.float64), torch.randn(70, dtype=torch.float64), 1e-12)


def test_strided_input_without_bias_float32() -> None:
    """x as Mamba passes it: the first half of the input projection (row stride 2 D), no bias; float32."""
    torch.manual_seed(1)
    xz = torch.randn(3, 50, 2 * 40)
    x = xz[..., :40]
    assert not x.is_contiguous() and x.stride(2) == 1
    _check(x, torch.randn(40, 4), None, 2e-6)
    time_major = torch.randn(40, 50, 3).permute(2, 1, 0)  # channels not unit-stride: copied, same result
    _check(time_major, torch.randn(40, 4), torch.randn(40), 2e-6)


def test_parallel_kernels(monkeypatch: pytest.MonkeyPatch) -> None:
    """Two numba threads, each work item with its own partial weight/bias gradients."""
    monkeypatch.setattr(cpu_kernel, "_PARALLEL_MIN_WORK", 0)
    torch.manual_seed(2)
    _check(torch.randn(3, 29, 136, dtype=torch.float64), torch.randn(136, 4, dtype=torch.float64),
           torch.randn(136, dtype=torch.float64), 1e-12, threads=2)


def test_mamba_numba_block_matches_the_canonical_path() -> None:
    """The numba Mamba block (fused convolution) against the same weights on the chunked, canonical path (float64)."""
    torch.manual_seed(3)
    fast = Mamba(12, d_state=4, backend="numba").double()
    slow = Mamba(12, d_state=4, backend="chunked").double()
    slow.load_state_dict(fast.state_dict())
    x = torch.randn(2, 33, 12, dtype=torch.float64)
    xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
    ya, yb = fast(xa), slow(xb)
    gy = torch.randn_like(ya)
    ya.backward(gy)
    yb.backward(gy)
    assert _rel(ya, yb) < 1e-10 and _rel(xa.grad, xb.grad) < 1e-10
    for (name, pa), pb in zip(fast.named_parameters(), slow.parameters()):
        assert _rel(pa.grad, pb.grad) < 1e-10, name


@pytest.mark.parametrize("bad, match", [
    (dict(x=torch.randn(2, 5)), r"x must be \(B, L, D\)"),
    (dict(weight=torch.randn(7, 4)), r"weight must be \(D=6, K >= 1\)"),
    (dict(bias=torch.randn(5)), r"bias must be \(D=6,\)"),
    (dict(weight=torch.randn(6, 4, dtype=torch.float64)), "weight must be float32 or float64 like x"),
    (dict(x=[1.0]), "x must be a torch.Tensor"),
])
def test_bad_arguments(bad: dict, match: str) -> None:
    args = {"x": torch.randn(2, 5, 6), "weight": torch.randn(6, 4), "bias": torch.randn(6), **bad}
    with pytest.raises((TypeError, ValueError), match=match):
        causal_conv1d_silu_cpu(**args)
