"""``torch.compile`` of the numba CPU kernels and of SegMaST on them.

Dynamo breaks the graph at the kernels' entry points (``causal_conv1d_silu_cpu``, ``selective_scan_cpu``,
``selective_scan_cpu_channels_last``, ``mamba_inner_cpu``) and runs each as in eager mode, autograd function
included, so compiled forward and backward passes are eager's up to the rounding of the compiled pieces between
them. Without that, dynamo traced into the autograd functions, ran their NumPy code through its NumPy emulation
and handed numba a Fortran-ordered job table (``TypeError: No matching definition for argument type(s) ...``).
The model-level checks compile with ``dynamic=False``, as docs/inference.md tells SegMaST users to.
"""

from __future__ import annotations

import copy
from collections.abc import Callable

import pytest
import torch

from longiseg import build_model
from longiseg.ssm import Mamba
from longiseg.ssm.causal_conv import causal_conv1d_silu_cpu
from longiseg.ssm.cpu_kernel import cpu_kernel_available, selective_scan_cpu, selective_scan_cpu_channels_last
from longiseg.ssm.mamba_inner import mamba_inner_cpu

pytestmark = pytest.mark.skipif(not cpu_kernel_available(), reason="numba is not installed")

#: A small SegMaST (one Mamba stage; 80 inner channels, more than one kernel job of 64 channels, which is what
#: dynamo's NumPy emulation got wrong): compiles in ~25 s on one CPU thread with a cold inductor cache.
SEG_SMALL = {"widths": (40, 16, 16, 32), "depths": (1, 0, 0, 0), "decoder_dim": 16, "drop_path_rate": 0.0,
             "decoder_dropout": 0.0, "d_state": 4}

#: Channels of the kernel-level cases: two kernel jobs (64 + 16 channels).
CHANNELS = 80


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    """``max |a - b| / max |b|`` (``b`` must not vanish)."""
    scale = b.double().abs().max().item()
    assert scale > 0, "the reference vanishes"
    return (a.double() - b.double()).abs().max().item() / scale


def _forward_backward(
    fn: Callable[..., torch.Tensor], args: list[torch.Tensor | None]
) -> tuple[torch.Tensor, list[torch.Tensor | None]]:
    """``fn(*args)`` and the gradients w.r.t. ``args`` (fresh leaves) of a fixed random weighting of the output."""
    leaves = [None if a is None else a.detach().clone().requires_grad_() for a in args]
    y = fn(*leaves)
    weights = torch.randn(y.shape, generator=torch.Generator().manual_seed(1), dtype=y.dtype)
    (y * weights).sum().backward()
    return y.detach(), [None if a is None else a.grad for a in leaves]


def _randn(*shape: int, seed: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def _conv() -> tuple[Callable[..., torch.Tensor], list[torch.Tensor | None]]:
    """The causal convolution on a channel slice of an input projection ``(B, L, 2 D)`` (not contiguous)."""
    def fn(xz: torch.Tensor, w: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        return causal_conv1d_silu_cpu(xz[..., :80], w, bias)

    return fn, [_randn(2, 9, 160, seed=0), _randn(80, 4, seed=1) * 0.5, _randn(80, seed=2)]


def _scan() -> tuple[Callable[..., torch.Tensor], list[torch.Tensor | None]]:
    """The channel-first scan ``(B, D, L)`` with gate, skip and softplus."""
    def fn(u: torch.Tensor, delta: torch.Tensor, A: torch.Tensor, B: torch.Tensor, C: torch.Tensor,
           D: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        out = selective_scan_cpu(u, delta, A, B, C, D, z, delta_softplus=True)
        assert isinstance(out, torch.Tensor)
        return out

    b, d, n, length = 2, CHANNELS, 4, 9
    return fn, [_randn(b, d, length, seed=0), _randn(b, d, length, seed=1) - 1.0, -_randn(d, n, seed=2).abs(),
                _randn(b, n, length, seed=3), _randn(b, n, length, seed=4), _randn(d, seed=5),
                _randn(b, d, length, seed=6)]


def _scan_channels_last() -> tuple[Callable[..., torch.Tensor], list[torch.Tensor | None]]:
    """The channel-last scan ``(B, L, D)`` (Mamba's layout)."""
    b, d, n, length = 2, CHANNELS, 4, 9
    return selective_scan_cpu_channels_last, [
        _randn(b, length, d, seed=0), _randn(b, length, d, seed=1) - 1.0, -_randn(d, n, seed=2).abs(),
        _randn(b, length, n, seed=3), _randn(b, length, n, seed=4), _randn(d, seed=5), _randn(b, length, d, seed=6)]


def _inner() -> tuple[Callable[..., torch.Tensor], list[torch.Tensor | None]]:
    """The fused Mamba block inside (convolution, projections, scan)."""
    b, length, d, rank, n, taps = 2, 9, CHANNELS, 2, 4, 4
    return mamba_inner_cpu, [
        _randn(b, length, 2 * d, seed=0), _randn(d, taps, seed=1) * 0.5, _randn(d, seed=2),
        _randn(rank + 2 * n, d, seed=3) * d**-0.5, _randn(d, rank, seed=4) * rank**-0.5, _randn(d, seed=5) - 3.0,
        _randn(d, n, seed=6) * 0.5, _randn(d, seed=7)]


@pytest.mark.parametrize("case", [_conv, _scan, _scan_channels_last, _inner],
                         ids=["causal_conv", "scan", "scan_channels_last", "mamba_inner"])
def test_kernel_entry_points_compile(case: Callable[[], tuple[Callable[..., torch.Tensor], list]]) -> None:
    """Each entry point under ``torch.compile`` (inductor, with compiled operations around it): forward and
    backward equal eager's (the kernels run eagerly in both)."""
    fn, args = case()

    def around(*a: torch.Tensor | None) -> torch.Tensor:  # compiled pieces before and after the kernels
        return torch.tanh(fn(*[None if t is None else t * 1.0 for t in a])) * 2.0

    want, want_grads = _forward_backward(around, args)
    got, got_grads = _forward_backward(torch.compile(around, dynamic=False), args)
    assert _rel(got, want) < 1e-5
    for i, (g, w) in enumerate(zip(got_grads, want_grads)):
        assert (g is None) == (w is None), i
        if w is not None:
            assert _rel(g, w) < 1e-5, f"gradient of argument {i}: {_rel(g, w):.2e}"


def test_compiled_mamba_block_float64_matches_the_reference_scan() -> None:
    """A float64 Mamba block on the numba kernels, compiled, against the same block with the reference scan
    (plain PyTorch, eager): output and every parameter's gradient."""
    torch.manual_seed(0)
    block = Mamba(40, d_state=4, backend="numba").double()  # 80 inner channels
    reference = copy.deepcopy(block)
    reference.backend = "reference"
    x = _randn(2, 11, 40, seed=3, dtype=torch.float64)
    weights = _randn(2, 11, 40, seed=4, dtype=torch.float64)
    got, want = torch.compile(block, dynamic=False)(x), reference(x)
    (got * weights).sum().backward()
    (want * weights).sum().backward()
    assert _rel(got.detach(), want.detach()) < 1e-10
    for (name, p), q in zip(block.named_parameters(), reference.parameters()):
        assert p.grad is not None and q.grad is not None, name
        assert _rel(p.grad, q.grad) < 1e-10, f"{name}: {_rel(p.grad, q.grad):.2e}"


def test_compiled_mamba_block_on_the_chunked_scan_takes_a_second_sequence_length() -> None:
    """With the default dynamic shapes, the recompilation at a second sequence length stalled for more than ten
    minutes in dynamo's symbolic simplification of the chunked scan's reshapes; the scan now runs outside the graph
    (as the numba kernels do): both lengths compile in seconds and match eager, forward and backward."""
    torch.manual_seed(0)
    block = Mamba(8, d_state=4, backend="chunked").double()
    compiled = torch.compile(block)
    for length in (7, 11):
        x = _randn(2, length, 8, seed=length, dtype=torch.float64).requires_grad_()
        got = compiled(x)
        (g,) = torch.autograd.grad(got.square().sum(), x)
        want = block(x)
        (w,) = torch.autograd.grad(want.square().sum(), x)
        assert _rel(got.detach(), want.detach()) < 1e-10 and _rel(g, w) < 1e-10


def _segmast_forward_backward(
    model: torch.nn.Module, parameters: dict[str, torch.nn.Parameter], x: torch.Tensor
) -> tuple[list[torch.Tensor], dict[str, torch.Tensor]]:
    """The two output maps and the gradients of ``parameters`` of a fixed random weighting of them."""
    for p in parameters.values():
        p.grad = None
    outputs = model(x)
    generator = torch.Generator().manual_seed(1)
    sum((o * torch.randn(o.shape, generator=generator)).sum() for o in outputs).backward()
    grads = {name: p.grad.clone() for name, p in parameters.items() if p.grad is not None}
    return [o.detach() for o in outputs], grads


def _check_compiled_segmast(model: torch.nn.Module, x: torch.Tensor) -> None:
    """``torch.compile(model, dynamic=False)``: outputs and all parameter gradients within 1e-4 of eager."""
    parameters = dict(model.named_parameters())
    want, want_grads = _segmast_forward_backward(model, parameters, x)
    got, got_grads = _segmast_forward_backward(torch.compile(model, dynamic=False), parameters, x)
    for g, w in zip(got, want, strict=True):
        assert _rel(g, w) < 1e-4
    assert got_grads.keys() == want_grads.keys() == parameters.keys()
    errors = {name: _rel(got_grads[name], w) for name, w in want_grads.items() if w.abs().max() > 0}
    worst = max(errors, key=errors.__getitem__)
    assert errors[worst] < 1e-4, f"{worst}: {errors[worst]:.2e}"


def test_compiled_segmast_matches_eager() -> None:
    """SegMaST compiled as docs/inference.md says (numba kernels, ``dynamic=False``), forward and backward."""
    torch.manual_seed(0)
    model = build_model("segmast", in_channels=2, **SEG_SMALL).eval()
    _check_compiled_segmast(model, torch.randn(1, 2, 2, 32, 32))


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["numba", "chunked"])
def test_compiled_segmast_all_stages_matches_eager(backend: str) -> None:
    """Every stage with Mamba blocks, on the numba kernels and on the chunked scan (both run outside the graph)."""
    torch.manual_seed(0)
    model = build_model("segmast", in_channels=2, **{**SEG_SMALL, "depths": (1, 1, 1, 1)}).eval()
    model.set_scan_backend(backend)
    _check_compiled_segmast(model, torch.randn(1, 2, 2, 32, 32))
