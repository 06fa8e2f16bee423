"""The compiled (numba) CPU selective scan against the float64 reference, its exponential, layout and dispatch."""

from __future__ import annotations

import logging
import sys
import threading

import pytest
import torch
from test_selective_scan import ATOL32, RTOL32, assert_close, make_inputs, run_with_grads

from longiseg.ssm import Mamba, cpu_kernel, resolve_backend, selective_scan, selective_scan_reference

pytest.importorskip("numba")


def _numba(*args, **kwargs):
    return selective_scan(*args, backend="numba", **kwargs)


@pytest.mark.parametrize(
    ("bc", "groups", "dim", "seqlen"),
    [
        ("shared", 1, 6, 37),
        ("shared", 1, 40, 5),  # several 16-channel blocks, one partial
        ("grouped", 2, 6, 23),
        ("grouped", 3, 36, 11),
        ("const", 1, 6, 19),
        ("shared", 1, 3, 1),  # seqlen 1
    ],
)
def test_matches_reference_float64_with_gradients(bc, groups, dim, seqlen):
    torch.manual_seed(dim * 100 + seqlen)
    xs = make_inputs(dim=dim, seqlen=seqlen, bc=bc, groups=groups)
    out, last, grads = run_with_grads(_numba, xs)
    out_r, last_r, grads_r = run_with_grads(selective_scan_reference, xs)
    assert out.dtype == torch.float64
    assert_close(out, out_r, 1e-10, 1e-12, "out")
    assert_close(last, last_r, 1e-10, 1e-12, "last_state")
    for name in grads_r:
        assert_close(grads[name], grads_r[name], 1e-10, 1e-11, f"grad {name}")


@pytest.mark.parametrize(("use_z", "use_d", "softplus"), [(True, True, True), (False, False, False)])
def test_float32_kernel_close_to_float64_reference(use_z, use_d, softplus):
    """The float32 kernel (polynomial exp2) against the float64 reference: mamba-ssm's tolerances and a
    relative error at float32 level."""
    torch.manual_seed(3)
    xs = make_inputs(dim=40, seqlen=300, dstate=16, dtype=torch.float32, delta_scale=2.0)
    if not softplus:
        with torch.no_grad():
            xs[1].abs_()
    out, last, grads = run_with_grads(_numba, xs, softplus, use_z, use_d)
    out_r, last_r, grads_r = run_with_grads(selective_scan_reference, xs, softplus, use_z, use_d)
    assert out.dtype == torch.float32
    assert_close(out, out_r, RTOL32, ATOL32, "out")
    assert_close(last, last_r, RTOL32, ATOL32, "last_state")
    for name in grads_r:
        assert_close(grads[name], grads_r[name], RTOL32, ATOL32, f"grad {name}")
    # relative error of the float32 forward pass against the float64 reference
    xs64 = [x.detach().double() for x in xs]
    u, delta, A, B, C, D, z, bias = xs64
    want = selective_scan_reference(
        u, delta, A, B, C, D if use_d else None, z if use_z else None, bias, delta_softplus=softplus
    )
    rel = ((out.detach().double() - want).norm() / want.norm()).item()
    assert rel < 2e-6, rel


def test_exp2_polynomial_accuracy():
    x = torch.cat([torch.linspace(-140.0, 0.0, 200_001), -torch.rand(100_000) * 5, torch.tensor([0.0, -1.0, -125.0, -125.5, -126.0])])
    got = cpu_kernel.exp2_nonpositive(x).double()
    want = torch.exp2(x.double().clamp_min(-125.0))
    rel = ((got - want).abs() / want).max().item()
    assert rel < 3e-7, rel
    assert cpu_kernel.exp2_nonpositive(torch.tensor([0.0])).item() == pytest.approx(1.0, rel=3e-7)
    assert cpu_kernel.exp2_nonpositive(torch.tensor([-1000.0])).item() == pytest.approx(2.0**-125, rel=3e-7)
    with pytest.raises(ValueError, match="<= 0"):
        cpu_kernel.exp2_nonpositive(torch.tensor([0.5]))
    with pytest.raises(TypeError, match="float32"):
        cpu_kernel.exp2_nonpositive(torch.zeros(3, dtype=torch.float64))


def test_extreme_steps_stay_finite():
    xs = [x.detach() for x in make_inputs(dim=8, seqlen=50, dtype=torch.float32)]
    xs[1] = torch.full_like(xs[1], 80.0)  # softplus(80) * A reaches far below the exp2 clamp
    out = _numba(*xs, delta_softplus=True)
    ref = selective_scan_reference(*[x.double() for x in xs], delta_softplus=True)
    assert torch.isfinite(out).all()
    assert_close(out.double(), ref, RTOL32, ATOL32, "extreme")


def test_channels_last_entry_equals_canonical_layout():
    torch.manual_seed(5)
    u, delta, A, B, C, D, z, bias = make_inputs(dim=20, seqlen=29, dstate=6)
    y_cl = cpu_kernel.selective_scan_cpu_channels_last(
        u.mT, delta.mT, A, B.mT, C.mT, D, z.mT, bias, delta_softplus=True
    )
    y = selective_scan_reference(u, delta, A, B, C, D, z, bias, delta_softplus=True)
    assert_close(y_cl.mT, y, 1e-10, 1e-12, "channels-last out")
    w = torch.randn_like(y)
    g_cl = torch.autograd.grad((y_cl.mT * w).sum(), [u, delta, A, B, C, D, z, bias])
    g = torch.autograd.grad((y * w).sum(), [u, delta, A, B, C, D, z, bias])
    for name, a, b in zip(("u", "delta", "A", "B", "C", "D", "z", "bias"), g_cl, g):
        assert_close(a, b, 1e-10, 1e-11, f"channels-last grad {name}")
    with pytest.raises(ValueError, match=r"\(B, L, D\)"):
        cpu_kernel.selective_scan_cpu_channels_last(u[0], delta, A, B.mT, C.mT)


@pytest.mark.parametrize("reverse", [False, True])
def test_mamba_block_numba_equals_reference(reverse):
    torch.manual_seed(7)
    m = Mamba(24, d_state=8, d_conv=4, expand=2).double()
    x = torch.randn(3, 41, 24, dtype=torch.float64, requires_grad=True)
    results = {}
    for backend in ("reference", "numba"):
        m.backend = backend
        y = m(x, reverse=reverse)
        loss = (y * torch.cos(y)).sum()
        grads = torch.autograd.grad(loss, [x, *m.parameters()])
        results[backend] = (y.detach(), grads)
    y_ref, g_ref = results["reference"]
    y_nb, g_nb = results["numba"]
    assert_close(y_nb, y_ref, 1e-10, 1e-12, "Mamba out")
    for (name, _), a, b in zip([("x", None), *m.named_parameters()], g_nb, g_ref):
        assert_close(a, b, 1e-9, 1e-11, f"Mamba grad {name}")


def test_auto_picks_numba_on_cpu_and_logs_once(caplog, monkeypatch):
    from longiseg.utils import logging as lg

    monkeypatch.delenv("LONGISEG_SCAN_BACKEND", raising=False)
    monkeypatch.setattr(lg, "_SEEN", set())
    assert resolve_backend(None, torch.device("cpu")) == "numba"
    with caplog.at_level(logging.INFO, logger="longiseg"):
        xs = [x.detach() for x in make_inputs()]
        selective_scan(*xs)
        selective_scan(*xs)
    msgs = [r.getMessage() for r in caplog.records if "selective scan backend" in r.getMessage()]
    assert msgs == ["selective scan backend: numba (cpu)"]
    with pytest.raises(RuntimeError, match="runs on the CPU only"):
        resolve_backend("numba", torch.device("cuda", 0))


def test_forced_numba_without_numba_raises(monkeypatch):
    monkeypatch.delenv("LONGISEG_SCAN_BACKEND", raising=False)
    monkeypatch.setitem(sys.modules, "numba", None)
    cpu_kernel._load_numba.cache_clear()
    try:
        assert not cpu_kernel.cpu_kernel_available()
        assert resolve_backend("auto", torch.device("cpu")) == "chunked"
        with pytest.raises(RuntimeError, match=r"pip install longiseg\[cpu\]"):
            selective_scan(*[x.detach() for x in make_inputs()], backend="numba")
        monkeypatch.setenv("LONGISEG_SCAN_BACKEND", "numba")
        with pytest.raises(RuntimeError, match="environment variable"):
            resolve_backend(None, torch.device("cpu"))
    finally:
        monkeypatch.undo()
        cpu_kernel._load_numba.cache_clear()
    assert cpu_kernel.cpu_kernel_available()


def test_concurrent_calls_from_threads_are_correct():
    xs = [x.detach().float() for x in make_inputs(dim=32, seqlen=200, dstate=8)]
    expected = selective_scan_reference(*[x.double() for x in xs], delta_softplus=True)
    results: list[torch.Tensor] = []
    errors: list[BaseException] = []

    def work() -> None:
        try:
            for _ in range(5):
                results.append(_numba(*xs, delta_softplus=True))
        except BaseException as err:  # pragma: no cover - reported below
            errors.append(err)

    threads = [threading.Thread(target=work) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and len(results) == 15
    for out in results:
        assert_close(out.double(), expected, RTOL32, ATOL32, "threaded")


def test_input_checks():
    xs = [x.detach() for x in make_inputs()]
    with pytest.raises(ValueError, match="delta must have the shape of u"):
        selective_scan(xs[0], xs[1][:, :, :-1], *xs[2:5], backend="numba")
    with pytest.raises(TypeError, match="complex"):
        selective_scan(xs[0], xs[1], xs[2].to(torch.complex128), *xs[3:5], backend="numba")
