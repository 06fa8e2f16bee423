"""Selective-scan edge cases found by differential probing: double backward and the backends' flag arguments."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from test_selective_scan import NAMES, make_inputs

from longiseg.ssm import Mamba, selective_scan, selective_scan_chunked, selective_scan_reference
from longiseg.ssm.inputs import first_order_gradients

HERE = Path(__file__).resolve().parent

try:
    import numba  # noqa: F401

    _HAVE_NUMBA = True
except ImportError:
    _HAVE_NUMBA = False

needs_numba = pytest.mark.skipif(not _HAVE_NUMBA, reason="numba is not installed")
#: The backends whose backward pass is computed without autograd, runnable on the CPU here.
ONCE_DIFFERENTIABLE = ["chunked", pytest.param("numba", marks=needs_numba)]


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    """``|a - b| / |b|`` (Frobenius norms); ``b`` must not vanish."""
    scale = b.detach().double().norm().item()
    assert scale > 0, "the reference vanishes"
    return (a.detach().double() - b.detach().double()).norm().item() / scale


def _scan(backend: str, xs: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    return selective_scan(*xs, delta_softplus=True, return_last_state=True, backend=backend)


@pytest.mark.parametrize("backend", ONCE_DIFFERENTIABLE)
def test_first_order_gradients_under_create_graph_match_the_reference(backend):
    """``create_graph=True`` (as a gradient penalty elsewhere in a model needs it) gives the right first-order
    gradients; the chunked scan used to fail there with an ``out=`` error of its in-place backward."""
    torch.manual_seed(0)
    xs = make_inputs(batch=2, dim=3, seqlen=9, dstate=2)
    want = torch.autograd.grad(sum(t.sum() for t in _scan("reference", xs)), xs)
    got = torch.autograd.grad(sum(t.sum() for t in _scan(backend, xs)), xs, create_graph=True)
    for name, g, w in zip(NAMES, got, want):
        assert _rel(g, w) < 1e-10, name


@pytest.mark.parametrize("backend", ONCE_DIFFERENTIABLE)
@pytest.mark.parametrize("loss", ["linear", "square"])
def test_double_backward_is_refused_naming_the_backend(backend, loss):
    """Differentiating the gradients again raises instead of treating them as constants (the numba scan's
    second-order gradients were silently missing), also when the loss is linear in the outputs (constant incoming
    gradients, where ``torch.autograd.function.once_differentiable`` would not mark them)."""
    torch.manual_seed(1)
    xs = make_inputs(batch=1, dim=3, seqlen=7, dstate=2)

    def penalty(name: str) -> torch.Tensor:
        out, last = _scan(name, xs)
        value = out.sum() + last.sum() if loss == "linear" else out.square().sum()
        grads = torch.autograd.grad(value, xs, create_graph=True)
        return sum((g * x).sum() for g, x in zip(grads, xs))

    (ref,) = torch.autograd.grad(penalty("reference"), xs[2])  # the reference's backward is autograd's
    assert ref.norm() > 0
    pen = penalty(backend)
    with pytest.raises(RuntimeError, match=f"the {backend} selective scan is differentiable once only"):
        torch.autograd.grad(pen, xs[2])


@needs_numba
def test_numba_mamba_block_and_convolution_refuse_double_backward():
    from longiseg.ssm.causal_conv import causal_conv1d_silu_cpu

    torch.manual_seed(2)
    block = Mamba(4, d_state=2, backend="numba")
    x = torch.randn(2, 5, 4, requires_grad=True)
    (gx,) = torch.autograd.grad(block(x).square().sum(), x, create_graph=True)
    with pytest.raises(RuntimeError, match=r"mamba_inner_cpu\) is differentiable once only"):
        torch.autograd.grad(gx.square().sum(), block.A_log)
    w = torch.randn(4, 3, requires_grad=True)
    (gx,) = torch.autograd.grad(causal_conv1d_silu_cpu(x, w).sum(), x, create_graph=True)
    with pytest.raises(RuntimeError, match="causal convolution is differentiable once only"):
        torch.autograd.grad(gx.sum(), w)


def test_first_order_gradients_marks_only_under_grad_mode():
    x = torch.ones(3, requires_grad=True)
    g = torch.full((3,), 2.0)
    with torch.no_grad():
        assert first_order_gradients("op", (g, None), (x,)) == (g, None)
    marked, kept = first_order_gradients("op", (g, None), (x, None))
    assert kept is None and marked.requires_grad and torch.equal(marked.detach(), g)
    with pytest.raises(RuntimeError, match="op is differentiable once only"):
        torch.autograd.grad(marked.sum(), x)  # reached through the forward's input x, not only by .backward()


@pytest.mark.slow
def test_triton_double_backward_is_refused_in_the_interpreter():
    """The Triton scan (interpreted on the CPU, in a child process: see ``test_triton_scan.py``) refuses too."""
    pytest.importorskip("triton")
    script = (
        "import torch\n"
        "from test_selective_scan import make_inputs\n"
        "from longiseg.ssm import selective_scan\n"
        "xs = make_inputs(batch=1, dim=2, seqlen=4, dstate=2)\n"
        "out = selective_scan(*xs, delta_softplus=True, backend='triton')\n"
        "grads = torch.autograd.grad(out.sum(), xs, create_graph=True)\n"
        "try:\n"
        "    torch.autograd.grad(sum((g * x).sum() for g, x in zip(grads, xs)), xs[2])\n"
        "except RuntimeError as err:\n"
        "    print('REFUSED', err)\n"
    )
    env = dict(os.environ, TRITON_INTERPRET="1")
    env["PYTHONPATH"] = os.pathsep.join([str(HERE.parent), str(HERE), env.get("PYTHONPATH", "")])
    res = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "REFUSED the triton selective scan is differentiable once only" in res.stdout, res.stdout


_FLAG_FNS = [
    selective_scan_reference,
    selective_scan_chunked,
    pytest.param(lambda *a, **k: selective_scan(*a, backend="numba", **k), marks=needs_numba, id="numba"),
]


@pytest.mark.parametrize("fn", _FLAG_FNS)
@pytest.mark.parametrize("flag", ["delta_softplus", "return_last_state"])
@pytest.mark.parametrize("bad", ["false", 1, None])
def test_flags_must_be_bools(fn, flag, bad):
    """A string such as ``"false"`` used to count as ``True`` (softplus applied, a tuple returned)."""
    xs = [x.detach() for x in make_inputs(batch=1, dim=2, seqlen=3, dstate=2)]
    with pytest.raises(TypeError, match=f"{flag} must be a bool"):
        fn(*xs, **{flag: bad})


@needs_numba
def test_channels_last_entry_checks_its_flag():
    from longiseg.ssm.cpu_kernel import selective_scan_cpu_channels_last

    u, delta, A, B, C, D, z, bias = (x.detach() for x in make_inputs(batch=1, dim=2, seqlen=3, dstate=2))
    with pytest.raises(TypeError, match="delta_softplus must be a bool"):
        selective_scan_cpu_channels_last(u.mT, delta.mT, A, B.mT, C.mT, D, z.mT, bias, delta_softplus="no")
