"""Selective scan: chunked (and CUDA when present) against the sequential reference, errors, dispatch."""

from __future__ import annotations

import logging
import sys
import types

import pytest
import torch

from longiseg.ssm import (
    cpu_kernel,
    resolve_backend,
    selective_scan,
    selective_scan_chunked,
    selective_scan_reference,
)
from longiseg.ssm import cuda as cuda_bridge
from longiseg.ssm.chunked import default_chunk_size

# mamba-ssm's own float32 tolerances (tests/ops/test_selective_scan.py); we apply them to every gradient too.
RTOL32, ATOL32 = 6e-4, 2e-3
NAMES = ("u", "delta", "A", "B", "C", "D", "z", "delta_bias")


def make_inputs(
    batch: int = 2,
    dim: int = 6,
    seqlen: int = 37,
    dstate: int = 4,
    bc: str = "shared",
    groups: int = 1,
    dtype: torch.dtype = torch.float64,
    delta_scale: float = 0.5,
    delta_offset: float = 0.0,
) -> list[torch.Tensor]:
    """Fresh random inputs ``[u, delta, A, B, C, D, z, delta_bias]`` with ``requires_grad``; raw time steps
    ``delta_offset + delta_scale * N(0, 1)``."""
    shape = {
        "shared": (batch, dstate, seqlen),
        "grouped": (batch, groups, dstate, seqlen),
        "const": (dim, dstate),
    }[bc]
    xs = [
        torch.randn(batch, dim, seqlen, dtype=dtype),
        delta_offset + delta_scale * torch.randn(batch, dim, seqlen, dtype=dtype),
        -(0.1 + torch.rand(dim, dstate, dtype=dtype)),
        torch.randn(*shape, dtype=dtype),
        torch.randn(*shape, dtype=dtype),
        torch.randn(dim, dtype=dtype),
        torch.randn(batch, dim, seqlen, dtype=dtype),
        0.3 * torch.randn(dim, dtype=dtype),
    ]
    return [x.requires_grad_() for x in xs]


def run_with_grads(fn, xs, softplus=True, use_z=True, use_d=True, with_last=True, **kw):
    """Forward with last state, then gradients of a random projection of the outputs w.r.t. every input."""
    u, delta, A, B, C, D, z, bias = xs
    out, last = fn(
        u,
        delta,
        A,
        B,
        C,
        D if use_d else None,
        z if use_z else None,
        bias,
        delta_softplus=softplus,
        return_last_state=True,
        **kw,
    )
    gen = torch.Generator().manual_seed(1)  # float64 weights: the same for float32 and float64 runs
    w = torch.randn(out.shape, generator=gen, dtype=torch.float64).to(out.dtype)
    wl = torch.randn(last.shape, generator=gen, dtype=torch.float64).to(last.dtype)
    used = [x for x, name in zip(xs, NAMES) if (use_z or name != "z") and (use_d or name != "D")]
    loss = (out * w).sum() + ((last * wl).sum() if with_last else 0)
    grads = torch.autograd.grad(loss, used)
    return out, last, dict(zip([n for n in NAMES if (use_z or n != "z") and (use_d or n != "D")], grads))


def assert_close(a, b, rtol, atol, what):
    assert a.shape == b.shape, what
    assert torch.allclose(a, b, rtol=rtol, atol=atol), f"{what}: max abs err {(a - b).abs().max().item():.3e}"


@pytest.mark.parametrize(
    ("bc", "groups", "chunk_size", "block_elems"),
    [
        ("shared", 1, 5, 1 << 22),
        ("shared", 1, 8, 100),  # several channel blocks
        ("shared", 1, 64, 1 << 22),  # one chunk longer than L
        ("shared", 1, 1, 1 << 22),
        ("grouped", 1, 7, 1 << 22),
        ("grouped", 2, 6, 300),  # blocks inside one group
        ("grouped", 3, 16, 1 << 22),
        ("grouped", 6, 4, 500),
        ("const", 1, 9, 300),
    ],
)
def test_chunked_matches_reference_float64(bc, groups, chunk_size, block_elems):
    xs = make_inputs(bc=bc, groups=groups)
    out, last, grads = run_with_grads(
        selective_scan_chunked, xs, chunk_size=chunk_size, block_elems=block_elems
    )
    out_r, last_r, grads_r = run_with_grads(selective_scan_reference, xs)
    assert out.dtype == torch.float64
    assert_close(out, out_r, 1e-10, 1e-12, "out")
    assert_close(last, last_r, 1e-10, 1e-12, "last_state")
    assert grads.keys() == grads_r.keys()
    for name in grads:
        assert_close(grads[name], grads_r[name], 1e-10, 1e-11, f"grad {name}")


@pytest.mark.parametrize(("bc_b", "bc_c"), [("shared", "grouped"), ("grouped", "shared"), ("const", "shared"),
                                             ("shared", "const"), ("grouped", "const"), ("const", "grouped")])
@pytest.mark.parametrize("block_elems", [1 << 22, 16])
def test_chunked_matches_reference_with_b_and_c_in_different_layouts(bc_b, bc_c, block_elems):
    """B and C are separate arguments: one may be shared, one grouped, one input-independent (the channel blocks
    must not slice C by B's groups)."""
    xs = make_inputs(dim=12, seqlen=19, dstate=3, bc="grouped", groups=3)
    layouts = {name: make_inputs(dim=12, seqlen=19, dstate=3, bc=name, groups=3)[3] for name in ("shared", "grouped",
                                                                                                   "const")}
    xs[3], xs[4] = layouts[bc_b], layouts[bc_c].detach().clone().requires_grad_()
    out, last, grads = run_with_grads(selective_scan_chunked, xs, chunk_size=4, block_elems=block_elems)
    out_r, last_r, grads_r = run_with_grads(selective_scan_reference, xs)
    assert_close(out, out_r, 1e-10, 1e-12, "out")
    assert_close(last, last_r, 1e-10, 1e-12, "last_state")
    for name in grads:
        assert_close(grads[name], grads_r[name], 1e-10, 1e-11, f"grad {name}")


@pytest.mark.parametrize("backend", ["chunked", "numba"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_strong_decay_and_steps_above_the_softplus_threshold(backend, dtype):
    """Raw steps around 22: softplus is the identity above 20 (torch, mamba-ssm), so its derivative is exactly 1
    there, and ``exp(delta A)`` reaches e^-24, where the gradient of ``A`` must not come from a difference of two
    nearly equal states."""
    if backend == "numba":
        pytest.importorskip("numba")
    torch.manual_seed(22)
    xs = make_inputs(dim=6, seqlen=40, dstate=4, dtype=dtype, delta_offset=22.0, delta_scale=2.0)
    out, last, grads = run_with_grads(lambda *a, **k: selective_scan(*a, backend=backend, **k), xs)
    xs64 = [x.detach().double().requires_grad_() for x in xs]
    out_r, last_r, grads_r = run_with_grads(selective_scan_reference, xs64)
    tol = 1e-10 if dtype == torch.float64 else 2e-5
    for name, got, want in [("out", out, out_r), ("last", last, last_r),
                            *((f"grad {k}", grads[k], grads_r[k]) for k in grads_r)]:
        err = ((got.double() - want).norm() / want.norm()).item()
        assert err < tol, f"{name}: relative error {err:.2e}"


@pytest.mark.parametrize(
    ("use_z", "use_d", "softplus"), [(True, True, True), (False, False, False), (True, False, False)]
)
def test_chunked_matches_reference_float32(use_z, use_d, softplus):
    xs = make_inputs(dim=8, seqlen=96, dstate=8, dtype=torch.float32)
    if not softplus:
        with torch.no_grad():
            xs[1].abs_()  # raw delta must be a valid (non-negative) step without softplus
    out, last, grads = run_with_grads(selective_scan_chunked, xs, softplus, use_z, use_d, chunk_size=16)
    out_r, last_r, grads_r = run_with_grads(selective_scan_reference, xs, softplus, use_z, use_d)
    assert out.dtype == torch.float32
    assert_close(out, out_r, RTOL32, ATOL32, "out")
    assert_close(last, last_r, RTOL32, ATOL32, "last_state")
    for name in grads:
        assert_close(grads[name], grads_r[name], RTOL32, ATOL32, f"grad {name}")


def test_reference_matches_explicit_formula():
    """The reference itself against a direct evaluation of the closed-form sum (no recurrence)."""
    u, delta, A, B, C, D, z, bias = [x.detach() for x in make_inputs(batch=1, dim=2, seqlen=6, dstate=3)]
    out = selective_scan_reference(u, delta, A, B, C, D, z, bias, delta_softplus=True)
    dt = torch.nn.functional.softplus(delta + bias[:, None])
    expect = torch.zeros_like(u)
    for d in range(2):
        for t in range(6):
            acc = 0.0
            for s in range(t + 1):
                decay = torch.exp(A[d] * dt[0, d, s + 1 : t + 1].sum())
                acc = acc + (C[0, :, t] * decay * B[0, :, s]).sum() * dt[0, d, s] * u[0, d, s]
            expect[0, d, t] = (acc + D[d] * u[0, d, t]) * torch.nn.functional.silu(z[0, d, t])
    assert_close(out, expect, 1e-12, 1e-12, "reference")


def test_grouped_equals_repeated_channels():
    """Grouped B/C: channel d uses group d // (D // G), i.e. the same as per-channel groups with repeats."""
    u, delta, A, B, C, D, z, bias = [x.detach() for x in make_inputs(dim=6, bc="grouped", groups=3)]
    out_g = selective_scan_chunked(u, delta, A, B, C, D, z, bias, delta_softplus=True)
    out_r = selective_scan_chunked(
        u, delta, A, B.repeat_interleave(2, 1), C.repeat_interleave(2, 1), D, z, bias, delta_softplus=True
    )
    assert_close(out_g, out_r, 1e-12, 1e-12, "grouped")


def test_z_gating_multiplies_by_silu():
    u, delta, A, B, C, D, z, bias = [x.detach() for x in make_inputs()]
    plain = selective_scan_chunked(u, delta, A, B, C, D, None, bias, delta_softplus=True)
    gated = selective_scan_chunked(u, delta, A, B, C, D, z, bias, delta_softplus=True)
    assert_close(gated, plain * torch.nn.functional.silu(z), 1e-12, 1e-12, "gate")


@pytest.mark.parametrize("delta_value", [1e3, 1e-6])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_extreme_deltas_stay_finite(delta_value, dtype):
    xs = make_inputs(dim=4, seqlen=150, dtype=dtype)
    with torch.no_grad():
        xs[1].fill_(delta_value)
        xs[7].zero_()
        xs[2].mul_(20.0)  # strongly negative A: exp(delta * A) underflows to 0 for delta = 1e3
    out, last, grads = run_with_grads(selective_scan_chunked, xs, softplus=delta_value > 1, chunk_size=32)
    for name, t in [("out", out), ("last", last), *grads.items()]:
        assert torch.isfinite(t).all(), name
    if dtype == torch.float64:
        out_r, last_r, grads_r = run_with_grads(selective_scan_reference, xs, softplus=delta_value > 1)
        assert_close(out, out_r, 1e-9, 1e-9, "out")
        for name in grads:
            assert_close(grads[name], grads_r[name], 1e-9, 1e-9, f"grad {name}")


def nonfinite_inputs(scenario: str) -> list[torch.Tensor]:
    """Inputs with one NaN step (``"nan_delta"``) or one ``A = -inf`` (``"a_minus_inf"``: that state forgets at once),
    over 5 positions: a partial last chunk or tile for the fast backends."""
    torch.manual_seed(3)
    xs = make_inputs(batch=2, dim=3, seqlen=5, dstate=2)
    with torch.no_grad():
        if scenario == "nan_delta":
            xs[1][0, 1, 2] = float("nan")
        else:
            xs[2][0, 0] = -float("inf")
    return xs


def nan_patterns(fn, xs: list[torch.Tensor], **kwargs) -> dict[str, torch.Tensor]:
    """Where ``out``, the last state and the gradient of every input are NaN (softplus steps)."""
    out, last = fn(*xs, delta_softplus=True, return_last_state=True, **kwargs)
    grads = torch.autograd.grad(out.sum() + last.sum(), xs)
    return {"out": out.isnan(), "last": last.isnan(), **{n: g.isnan() for n, g in zip(NAMES, grads)}}


@pytest.mark.parametrize("scenario", ["nan_delta", "a_minus_inf"])
@pytest.mark.parametrize("backend", ["chunked", "numba"])
def test_non_finite_values_reach_what_the_reference_reaches(scenario, backend):
    """The chunked scan gave NaN for the last state and the gradients where ``A = -inf`` and the sequence did not
    fill its last chunk: padded positions have ``delta = 0``, and ``exp(0 * -inf)`` is NaN, not the 1 that passes the
    state on. (A NaN step is NaN from there on in every backend.)"""
    if backend == "numba":
        pytest.importorskip("numba")
    xs = nonfinite_inputs(scenario)
    want = nan_patterns(selective_scan_reference, xs)
    # A = -inf: out, the last state and u's gradient finite (delta's is NaN: A exp(delta A) = -inf * 0)
    assert (want["out"].any() and want["last"].any()) == (scenario == "nan_delta")
    assert scenario == "nan_delta" or not want["u"].any()
    fn = (lambda *a, **k: selective_scan_chunked(*a, chunk_size=2, **k)) if backend == "chunked" else \
        (lambda *a, **k: selective_scan(*a, backend="numba", **k))
    got = nan_patterns(fn, xs)
    assert all(torch.equal(got[k], want[k]) for k in want), {k: (int(got[k].sum()), int(want[k].sum())) for k in want}


def test_seqlen_one_and_default_chunk():
    xs = make_inputs(seqlen=1)
    out, last, grads = run_with_grads(selective_scan_chunked, xs)
    out_r, last_r, grads_r = run_with_grads(selective_scan_reference, xs)
    assert_close(out, out_r, 1e-12, 1e-12, "out")
    for name in grads:
        assert_close(grads[name], grads_r[name], 1e-12, 1e-12, name)
    assert default_chunk_size(1) == 8 and default_chunk_size(4096) == 64 and default_chunk_size(10**7) == 256


def test_low_precision_output_dtype():
    u, delta, A, B, C, D, z, bias = [x.detach() for x in make_inputs(dtype=torch.float32)]
    out = selective_scan_chunked(
        u.bfloat16(),
        delta.bfloat16(),
        A,
        B.bfloat16(),
        C.bfloat16(),
        D,
        z.bfloat16(),
        bias,
        delta_softplus=True,
    )
    ref = selective_scan_reference(
        u.bfloat16(),
        delta.bfloat16(),
        A,
        B.bfloat16(),
        C.bfloat16(),
        D,
        z.bfloat16(),
        bias,
        delta_softplus=True,
    )
    assert out.dtype == torch.bfloat16
    assert_close(out.float(), ref.float(), 2e-2, 2e-2, "bf16")


# ----------------------------------------------------------------------------------------------------------- errors


def _valid():
    return [x.detach() for x in make_inputs(batch=2, dim=4, seqlen=5, dstate=3)]


@pytest.mark.parametrize(
    ("index", "bad", "exc", "match"),
    [
        (0, torch.randn(2, 4), ValueError, "u must have 3 dims"),
        (0, torch.randn(2, 0, 5), ValueError, "u must have dim >= 1"),
        (2, torch.randn(4, 0), ValueError, "A must have dstate >= 1"),
        (1, torch.randn(2, 4, 6), ValueError, "delta must have the shape of u"),
        (2, torch.randn(4, 3, dtype=torch.complex64), TypeError, "A is complex"),
        (2, torch.randn(5, 3), ValueError, "A must have shape"),
        (3, torch.randn(2, 3, 6), ValueError, "B must have shape"),
        (3, torch.randn(2, 3, 3, 5), ValueError, "B has 3 groups, which must divide dim=4"),
        (4, torch.randn(4, 2), ValueError, "C with 2 dims"),
        (4, torch.randn(3), ValueError, "C must have shape"),
        (5, torch.randn(3), ValueError, "D must have shape"),
        (6, torch.randn(2, 4, 4), ValueError, "z must have the shape of u"),
        (7, torch.randn(2, 4), ValueError, "delta_bias must have shape"),
        (0, torch.ones(2, 4, 5, dtype=torch.long), TypeError, "u must be a floating tensor"),
        (3, [[1.0]], TypeError, "B must be a torch.Tensor"),
    ],
)
@pytest.mark.parametrize("fn", [selective_scan_chunked, selective_scan_reference, selective_scan])
def test_bad_inputs_raise_clear_errors(fn, index, bad, exc, match):
    xs = _valid()
    xs[index] = bad
    with pytest.raises(exc, match=match):
        fn(*xs)


def test_bad_chunk_arguments():
    xs = _valid()
    with pytest.raises(ValueError, match="chunk_size"):
        selective_scan_chunked(*xs, chunk_size=0)
    with pytest.raises(ValueError, match="block_elems"):
        selective_scan_chunked(*xs, block_elems=0)


# --------------------------------------------------------------------------------------------------------- dispatch


@pytest.fixture
def no_mamba(monkeypatch):
    """Pretend mamba-ssm is not installed (whatever the machine has)."""
    monkeypatch.setitem(sys.modules, "mamba_ssm", None)
    monkeypatch.setitem(sys.modules, "mamba_ssm.ops", None)
    monkeypatch.setitem(sys.modules, "mamba_ssm.ops.selective_scan_interface", None)
    cuda_bridge.clear_kernel_cache()
    yield
    cuda_bridge.clear_kernel_cache()


@pytest.fixture
def fake_mamba(monkeypatch):
    """A fake ``mamba_ssm`` whose ``selective_scan_fn`` records its arguments and runs the reference."""
    calls: list[dict] = []

    def selective_scan_fn(
        u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False, return_last_state=False
    ):
        calls.append(
            {"u": u, "delta": delta, "A": A, "B": B, "C": C, "D": D, "z": z, "delta_bias": delta_bias}
        )
        return selective_scan_reference(
            u, delta, A, B, C, D, z, delta_bias, delta_softplus, return_last_state
        )

    pkg = types.ModuleType("mamba_ssm")
    ops = types.ModuleType("mamba_ssm.ops")
    iface = types.ModuleType("mamba_ssm.ops.selective_scan_interface")
    iface.selective_scan_fn = selective_scan_fn
    monkeypatch.setitem(sys.modules, "mamba_ssm", pkg)
    monkeypatch.setitem(sys.modules, "mamba_ssm.ops", ops)
    monkeypatch.setitem(sys.modules, "mamba_ssm.ops.selective_scan_interface", iface)
    cuda_bridge.clear_kernel_cache()
    yield calls
    cuda_bridge.clear_kernel_cache()


def test_backend_by_argument_and_env(monkeypatch, no_mamba):
    cpu = torch.device("cpu")
    monkeypatch.delenv("LONGISEG_SCAN_BACKEND", raising=False)
    cpu_auto = "numba" if cpu_kernel.cpu_kernel_available() else "chunked"
    assert resolve_backend(None, cpu) == cpu_auto
    assert resolve_backend("auto", cpu) == cpu_auto
    assert resolve_backend("reference", cpu) == "reference"
    monkeypatch.setenv("LONGISEG_SCAN_BACKEND", "reference")
    assert resolve_backend(None, cpu) == "reference"
    assert resolve_backend("chunked", cpu) == "chunked"  # the argument wins over the environment
    monkeypatch.setenv("LONGISEG_SCAN_BACKEND", " Fastest")  # quoted as written, not as compared
    with pytest.raises(ValueError, match="backend ' Fastest' from the environment variable LONGISEG_SCAN_BACKEND"):
        resolve_backend(None, cpu)
    with pytest.raises(ValueError, match="unknown selective-scan backend 'tpu'"):
        resolve_backend("tpu", cpu)
    with pytest.raises(TypeError, match="backend must be a backend name"):
        resolve_backend(1, cpu)  # type: ignore[arg-type]


def test_resolve_backend_takes_a_device_string(monkeypatch) -> None:
    monkeypatch.delenv("LONGISEG_SCAN_BACKEND", raising=False)
    assert resolve_backend("auto", "cpu") == resolve_backend("auto", torch.device("cpu"))
    assert resolve_backend("reference", "cpu") == "reference"
    with pytest.raises(ValueError, match="device must be a torch.device or a device string .*got 'gpu'"):
        resolve_backend("auto", "gpu")
    with pytest.raises(TypeError, match="device must be a torch.device or a device string .*got int"):
        resolve_backend("auto", 0)


def test_backend_choice_changes_the_implementation(monkeypatch):
    """The env var really routes the call (the reference path has no custom autograd node)."""
    xs = make_inputs()
    monkeypatch.setenv("LONGISEG_SCAN_BACKEND", "reference")
    out_ref = selective_scan(*xs, delta_softplus=True)
    monkeypatch.setenv("LONGISEG_SCAN_BACKEND", "chunked")
    out_chk = selective_scan(*xs, delta_softplus=True)
    assert "_ChunkedScanFn" in type(out_chk.grad_fn).__name__
    assert "_ChunkedScanFn" not in type(out_ref.grad_fn).__name__
    assert_close(out_chk, out_ref, 1e-12, 1e-12, "dispatch")


def test_forcing_cuda_without_mamba_ssm_raises(monkeypatch, no_mamba):
    monkeypatch.delenv("LONGISEG_SCAN_BACKEND", raising=False)
    with pytest.raises(RuntimeError, match="mamba-ssm is unavailable"):
        selective_scan(*_valid(), backend="cuda")
    monkeypatch.setenv("LONGISEG_SCAN_BACKEND", "cuda")
    with pytest.raises(RuntimeError, match="environment variable"):
        selective_scan(*_valid())
    assert not cuda_bridge.cuda_scan_available()


def test_cuda_dispatch_with_fake_kernel(monkeypatch, fake_mamba):
    monkeypatch.delenv("LONGISEG_SCAN_BACKEND", raising=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert cuda_bridge.cuda_scan_available()
    assert resolve_backend("auto", torch.device("cuda", 0)) == "cuda"
    # auto never sends CPU tensors to CUDA
    assert resolve_backend("auto", torch.device("cpu")) in ("numba", "chunked")
    with pytest.raises(RuntimeError, match="tensors are on cpu"):
        resolve_backend("cuda", torch.device("cpu"))
    # The bridge casts to the kernel's dtypes and forwards every argument.
    monkeypatch.setattr(cuda_bridge, "require_cuda_scan", lambda device, source="": None)
    u, delta, A, B, C, D, z, bias = [x.detach().float() for x in make_inputs()]
    delta = delta.bfloat16()  # cast to u's dtype for the kernel
    out = cuda_bridge.selective_scan_cuda(u, delta, A, B, C, D, z, bias, delta_softplus=True)
    call = fake_mamba[-1]
    assert call["delta"].dtype == torch.float32 and call["A"].dtype == torch.float32
    assert_close(out, selective_scan_reference(u, delta.float(), A, B, C, D, z, bias, True), 1e-6, 1e-6, "bridge")
    # float64 anywhere is refused: a float64 delta or A was cast to float32, where the other backends accumulate
    # in float64
    for name, args in (("u", (u.double(), delta, A, B, C)), ("delta, A", (u, delta.double(), A.double(), B, C))):
        with pytest.raises(TypeError, match=rf"^{name} float64: mamba-ssm's CUDA kernel"):
            cuda_bridge.selective_scan_cuda(*args)


def test_backend_logged_once(caplog, monkeypatch):
    from longiseg.utils import logging as lg

    monkeypatch.setattr(lg, "_SEEN", set())
    with caplog.at_level(logging.INFO, logger="longiseg"):
        selective_scan(*_valid(), backend="reference")
        selective_scan(*_valid(), backend="reference")
    msgs = [r.getMessage() for r in caplog.records if "selective scan backend" in r.getMessage()]
    assert msgs == ["selective scan backend: reference (cpu)"]


# -------------------------------------------------------------------------------------------------------------- GPU


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("backend", ["chunked", "cuda"])
def test_gpu_backends_match_reference(backend):
    if backend == "cuda" and not cuda_bridge.cuda_scan_available():
        pytest.skip("mamba-ssm not installed")
    xs = make_inputs(dim=16, seqlen=300, dstate=8, dtype=torch.float32)
    xs_gpu = [x.detach().cuda().requires_grad_() for x in xs]
    # mamba-ssm's backward ignores the last-state gradient, so the loss only uses ``out``.
    out, last, grads = run_with_grads(
        lambda *a, **k: selective_scan(*a, backend=backend, **k), xs_gpu, with_last=False
    )
    out_r, last_r, grads_r = run_with_grads(selective_scan_reference, xs, with_last=False)
    assert_close(out.cpu(), out_r, RTOL32, ATOL32, "out")
    assert_close(last.cpu(), last_r, RTOL32, ATOL32, "last")
    for name in grads:
        assert_close(grads[name].cpu(), grads_r[name], RTOL32 * 5, ATOL32 * 5, f"grad {name}")
