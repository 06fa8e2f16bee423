"""The inside of a Mamba block as one autograd node (compiled CPU kernels) against the same operations in PyTorch."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from longiseg.ssm import Mamba, selective_scan_reference
from longiseg.ssm.causal_conv import causal_conv1d_silu_reference

pytest.importorskip("numba")

from longiseg.ssm.mamba_inner import mamba_inner_cpu  # noqa: E402

NAMES = ("xz", "conv_weight", "conv_bias", "x_proj_weight", "dt_proj_weight", "dt_proj_bias", "A_log", "D")


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    scale = b.double().norm().item()
    assert scale > 0, "the reference vanishes"
    return (a.double() - b.double()).norm().item() / scale


def _reference(xz, conv_weight, conv_bias, x_proj_weight, dt_proj_weight, dt_proj_bias, A_log, D):
    """The block's inside as separate PyTorch operations with the float64 reference scan."""
    d_inner, rank, n_state = conv_weight.shape[0], dt_proj_weight.shape[1], A_log.shape[1]
    x, z = xz[..., :d_inner], xz[..., d_inner:]
    u = causal_conv1d_silu_reference(x, conv_weight, conv_bias)
    dt, B, C = torch.split(F.linear(u, x_proj_weight), [rank, n_state, n_state], dim=-1)
    delta = F.linear(dt, dt_proj_weight)
    y = selective_scan_reference(u.mT, delta.mT, -torch.exp(A_log), B.mT, C.mT, D, z.mT, dt_proj_bias, True)
    return y.mT


def _inputs(batch, seqlen, d_inner, rank, n_state, taps, dtype, absent=()):
    g = torch.Generator().manual_seed(batch * 1000 + seqlen * 10 + d_inner)
    shapes = {
        "xz": (batch, seqlen, 2 * d_inner), "conv_weight": (d_inner, taps), "conv_bias": (d_inner,),
        "x_proj_weight": (rank + 2 * n_state, d_inner), "dt_proj_weight": (d_inner, rank), "dt_proj_bias": (d_inner,),
        "A_log": (d_inner, n_state), "D": (d_inner,),
    }
    scale = {"x_proj_weight": d_inner**-0.5, "dt_proj_weight": rank**-0.5, "conv_weight": 0.5, "A_log": 0.5}
    out = {}
    for name, shape in shapes.items():
        out[name] = None if name in absent else torch.randn(shape, generator=g, dtype=dtype) * scale.get(name, 1.0)
    out["dt_proj_bias"] = None if "dt_proj_bias" in absent else out["dt_proj_bias"] - 3.0  # softplus ~ 0.05
    return [out[n] for n in NAMES]


def _grads(fn, args, gy):
    leaves = [None if a is None else a.detach().clone().requires_grad_() for a in args]
    y = fn(*leaves)
    y.backward(gy)
    return y.detach(), [None if a is None else a.grad for a in leaves]


@pytest.mark.parametrize(
    "batch, seqlen, d_inner, rank, n_state, taps, absent",
    [
        (2, 37, 24, 2, 8, 4, ()),  # several checkpoint chunks, one channel block
        (1, 1, 16, 1, 4, 4, ()),  # one position
        (3, 21, 80, 5, 3, 2, ()),  # two channel blocks (64 + 16)
        (2, 17, 12, 3, 4, 3, ("conv_bias", "dt_proj_bias", "D")),  # optional terms absent
    ],
)
def test_matches_the_separate_operations_float64(batch, seqlen, d_inner, rank, n_state, taps, absent):
    args = _inputs(batch, seqlen, d_inner, rank, n_state, taps, torch.float64, absent)
    gy = torch.randn(batch, seqlen, d_inner, dtype=torch.float64)
    y, grads = _grads(mamba_inner_cpu, args, gy)
    y_ref, grads_ref = _grads(_reference, args, gy)
    assert y.shape == (batch, seqlen, d_inner) and y.dtype == torch.float64
    assert _rel(y, y_ref) < 1e-10, "output"
    for name, got, want in zip(NAMES, grads, grads_ref):
        assert (got is None) == (want is None), name
        if got is not None and want.norm() == 0:  # A at one position: the state starts at exactly zero
            assert got.abs().max() == 0, f"grad {name}"
        elif got is not None:
            assert _rel(got, want) < 1e-10, f"grad {name}"


def _graph_nodes(t: torch.Tensor) -> set[str]:
    seen, stack, names = set(), [t.grad_fn], set()
    while stack:
        node = stack.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        names.add(node.name())
        stack.extend(n for n, _ in node.next_functions)
    return names


def test_empty_batch():
    args = [a.requires_grad_() for a in _inputs(0, 7, 8, 1, 4, 4, torch.float64)]
    y = mamba_inner_cpu(*args)
    assert y.shape == (0, 7, 8)
    y.sum().backward()
    assert args[0].grad.shape == (0, 7, 16)
    assert all(a.grad.abs().max() == 0 for a in args[1:])  # nothing to sum over: exactly zero


def test_float32_close_to_float64():
    args = _inputs(2, 45, 40, 3, 16, 4, torch.float32)
    gy = torch.randn(2, 45, 40)
    y, grads = _grads(mamba_inner_cpu, args, gy)
    y_ref, grads_ref = _grads(_reference, [a.double() for a in args], gy.double())
    assert y.dtype == torch.float32
    assert _rel(y, y_ref) < 1e-5, "output"
    for name, got, want in zip(NAMES, grads, grads_ref):
        assert got.dtype == torch.float32
        assert _rel(got, want) < 1e-4, f"grad {name}"


def test_strided_input_projection_and_gradient_layout():
    """A non-contiguous ``xz`` (a slice of a wider tensor) is read where it lies; its gradient has xz's shape."""
    args = _inputs(2, 19, 16, 1, 4, 4, torch.float64)
    wide = torch.randn(2, 19, 40, dtype=torch.float64)
    wide[..., 3:35] = args[0]
    args_strided = [wide[..., 3:35], *args[1:]]
    gy = torch.randn(2, 19, 16, dtype=torch.float64)
    y, grads = _grads(mamba_inner_cpu, args_strided, gy)
    y_ref, grads_ref = _grads(_reference, args, gy)
    assert _rel(y, y_ref) < 1e-10 and _rel(grads[0], grads_ref[0]) < 1e-10


def test_mamba_uses_it_for_float_blocks_and_separate_operations_for_bfloat16():
    torch.manual_seed(0)
    fast = Mamba(16, d_state=4, backend="numba")
    slow = Mamba(16, d_state=4, backend="chunked")
    slow.load_state_dict(fast.state_dict())
    x = torch.randn(2, 23, 16)
    y = fast(x)
    assert "_MambaInnerFnBackward" in _graph_nodes(y)
    assert _rel(y, slow(x)) < 1e-5
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y16, y16_ref = fast(x), slow(x)
    assert y16.dtype == torch.bfloat16 and torch.isfinite(y16.float()).all()
    assert "_MambaInnerFnBackward" not in _graph_nodes(y16)
    assert _rel(y16, y16_ref) < 5e-2
    y16.float().sum().backward()
    assert all(torch.isfinite(p.grad).all() for p in fast.parameters())


@pytest.mark.parametrize(
    "change, error, match",
    [
        (dict(xz=torch.randn(2, 5, 7)), ValueError, r"xz must be \(B, L >= 1, 2 d_inner\)"),
        (dict(xz=torch.randn(2, 0, 8)), ValueError, r"xz must be \(B, L >= 1, 2 d_inner\)"),
        (dict(conv_weight=torch.randn(5, 4)), ValueError, r"conv_weight must be \(d_inner=4, K >= 1\)"),
        (dict(A_log=torch.randn(4)), ValueError, r"A_log must be \(d_inner=4, N >= 1\)"),
        (dict(dt_proj_weight=torch.randn(3, 1)), ValueError, r"dt_proj_weight must be \(d_inner=4, dt_rank >= 1\)"),
        (dict(x_proj_weight=torch.randn(6, 4)), ValueError, r"x_proj_weight must be \(dt_rank \+ 2 N = 5, d_inner=4\)"),
        (dict(D=torch.randn(3)), ValueError, r"D must be \(d_inner=4,\)"),
        (dict(conv_bias=torch.randn(4, dtype=torch.float64)), TypeError, "conv_bias must be float32 or float64 like xz"),
        (dict(xz=torch.randn(2, 5, 8).bfloat16()), TypeError, "xz must be float32 or float64 like xz"),
        (dict(A_log=[0.0]), TypeError, "A_log must be a torch.Tensor"),
    ],
)
def test_bad_arguments(change, error, match):
    args = dict(zip(NAMES, _inputs(2, 5, 4, 1, 2, 4, torch.float32)))
    args.update(change)
    with pytest.raises(error, match=match):
        mamba_inner_cpu(**args)
