"""The compiled (numba) CPU selective scan against the float64 reference, its exponential, layout and dispatch."""

from __future__ import annotations

import logging
import sys
import threading

import pytest
import torch
from test_selective_scan import ATOL32, RTOL32, assert_close, make_inputs

from longiseg.ssm import Mamba, cpu_kernel, resolve_backend, selective_scan, selective_scan_reference

pytest.importorskip("numba")


def _numba(*args, **kwargs):
    return selective_scan(*args, backend="numba", **kwargs)


def assert_rel(a: torch.Tensor, b: torch.Tensor, tol: float, what: str) -> None:
    """Relative error ``|a - b| / |b|`` (Frobenius norms) below ``tol``; ``b`` must not vanish."""
    assert a.shape == b.shape, what
    scale = b.double().norm().item()
    assert scale > 0, f"{what}: the reference vanishes, a relative error is meaningless"
    rel = (a.double() - b.double()).norm().item() / scale
    assert rel < tol, f"{what}: relative error {rel:.3e} >= {tol:.0e}"


def _grouped_bc(shape_b: str, shape_c: str, batch: int, dim: int, seqlen: int, dstate: int, dtype) -> list:
    """Fresh ``B``, ``C`` in the given layouts: 'shared', 'gG' (G groups) or 'const'."""

    def one(kind: str) -> torch.Tensor:
        if kind == "shared":
            return torch.randn(batch, dstate, seqlen, dtype=dtype)
        if kind == "const":
            return torch.randn(dim, dstate, dtype=dtype)
        return torch.randn(batch, int(kind[1:]), dstate, seqlen, dtype=dtype)

    return [one(shape_b), one(shape_c)]


def _scan_and_grads(fn, xs: dict, softplus: bool, loss_terms: str, seed: int = 1):
    """Forward (with last state), then the gradients of a random projection of ``out`` and/or the last state
    (``loss_terms``: 'out', 'last' or 'both') w.r.t. every tensor given."""
    out, last = fn(
        xs["u"], xs["delta"], xs["A"], xs["B"], xs["C"], xs.get("D"), xs.get("z"), xs.get("delta_bias"),
        delta_softplus=softplus, return_last_state=True,
    )
    gen = torch.Generator().manual_seed(seed)  # float64 weights: the same for float32 and float64 runs
    w = torch.randn(out.shape, generator=gen, dtype=torch.float64).to(out.dtype)
    wl = torch.randn(last.shape, generator=gen, dtype=torch.float64).to(last.dtype)
    loss = 0
    if loss_terms in ("out", "both"):
        loss = loss + (out * w).sum()
    if loss_terms in ("last", "both"):
        loss = loss + (last * wl).sum()
    names = [k for k, v in xs.items() if v is not None]
    grads = torch.autograd.grad(loss, [xs[k] for k in names], allow_unused=True)  # C, D, z: unused by 'last'
    return out, last, {k: torch.zeros_like(xs[k]) if g is None else g for k, g in zip(names, grads)}


def _fresh_inputs(dim, seqlen, bc_b, bc_c, features, dtype=torch.float64, batch=2, dstate=4):
    """Random inputs; ``features`` names the optional ones present ('D', 'z', 'bias')."""
    xs = {
        "u": torch.randn(batch, dim, seqlen, dtype=dtype),
        "delta": 0.5 * torch.randn(batch, dim, seqlen, dtype=dtype),
        "A": -(0.1 + torch.rand(dim, dstate, dtype=dtype)),
    }
    xs["B"], xs["C"] = _grouped_bc(bc_b, bc_c, batch, dim, seqlen, dstate, dtype)
    xs["D"] = torch.randn(dim, dtype=dtype) if "D" in features else None
    xs["z"] = torch.randn(batch, dim, seqlen, dtype=dtype) if "z" in features else None
    xs["delta_bias"] = 0.3 * torch.randn(dim, dtype=dtype) if "bias" in features else None
    if "softplus" not in features:
        xs["delta"] = xs["delta"].abs()  # raw steps must be non-negative without the softplus
    for v in xs.values():
        if v is not None:
            v.requires_grad_()
    return xs


def _compare_with_float64_reference(xs: dict, softplus: bool, tol_values: float, tol_grads: float, threads=None):
    """Run the numba scan on ``xs`` (with ``threads`` torch/numba threads if given) and the reference on float64
    copies; the output and last state agree to ``tol_values``, every gradient to ``tol_grads`` (relative).
    Returns the numba output."""
    saved = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        out, last, grads = _scan_and_grads(_numba, xs, softplus, "both")
    finally:
        torch.set_num_threads(saved)
    xs64 = {k: None if v is None else v.detach().double().requires_grad_() for k, v in xs.items()}
    out_r, last_r, grads_r = _scan_and_grads(selective_scan_reference, xs64, softplus, "both")
    assert_rel(out, out_r, tol_values, "out")
    assert_rel(last, last_r, tol_values, "last_state")
    for name, g in grads_r.items():
        assert_rel(grads[name], g, tol_grads, f"grad {name}")
    return out


# (B layout, C layout, dim, seqlen, features, loss terms). dim 70 = a full 64-channel block and a partial one;
# 4 groups of 18 channels straddle the block boundary; seqlen > 32 spans several checkpoints of the backward.
_CASES = [
    ("shared", "shared", 6, 37, "softplus D z bias", "both"),
    ("shared", "shared", 70, 45, "", "out"),
    ("g2", "g2", 6, 23, "softplus z", "both"),
    ("g3", "g3", 36, 11, "D bias", "both"),
    ("g4", "g4", 72, 70, "softplus D z bias", "both"),
    ("const", "const", 6, 19, "softplus D z bias", "both"),
    ("const", "shared", 10, 40, "softplus z", "out"),
    ("g2", "const", 8, 33, "softplus D bias", "both"),
    ("shared", "shared", 5, 66, "softplus D z bias", "last"),  # gradient of the last state only
    ("shared", "shared", 3, 1, "softplus D z bias", "both"),  # seqlen 1
]


@pytest.mark.parametrize(("bc_b", "bc_c", "dim", "seqlen", "features", "loss_terms"), _CASES)
def test_matches_reference_float64_with_gradients(bc_b, bc_c, dim, seqlen, features, loss_terms):
    torch.manual_seed(dim * 100 + seqlen)
    xs = _fresh_inputs(dim, seqlen, bc_b, bc_c, features)
    softplus = "softplus" in features
    out, last, grads = _scan_and_grads(_numba, xs, softplus, loss_terms)
    out_r, last_r, grads_r = _scan_and_grads(selective_scan_reference, xs, softplus, loss_terms)
    assert out.dtype == torch.float64
    assert_rel(out, out_r, 1e-10, "out")
    assert_rel(last, last_r, 1e-10, "last_state")
    for name, g in grads_r.items():
        if (name == "A" and seqlen == 1) or (loss_terms == "last" and name in ("C", "D", "z")):
            # dL/dA = sum_t g_t dt_t exp(dt_t A) h_{t-1} vanishes with h_{-1} = 0; the last state needs no C, D, z
            assert_close(grads[name], g, 0.0, 1e-12, f"grad {name}")
            continue
        assert_rel(grads[name], g, 1e-10, f"grad {name}")


def test_backward_keeps_no_per_position_states():
    """Between forward and backward the kernel keeps the inputs and one state per 16 positions: no copy of a
    ``(B, L, D)`` tensor and nothing of the size of the full ``(B, D, L, N)`` state sequence."""
    batch, dim, seqlen, dstate = 2, 20, 640, 16
    xs = _fresh_inputs(dim, seqlen, "shared", "shared", "softplus D z bias", dtype=torch.float32, dstate=dstate)
    out = cpu_kernel.selective_scan_cpu_channels_last(
        xs["u"].mT, xs["delta"].mT, xs["A"], xs["B"].mT, xs["C"].mT, xs["D"], xs["z"].mT, xs["delta_bias"], True
    )
    extra = sum(t.numel() for t in out.grad_fn.saved_tensors if t is not None)
    extra -= sum(v.numel() for v in xs.values() if v is not None)  # the inputs themselves
    assert extra == batch * dim * dstate * -(-seqlen // cpu_kernel._CHECKPOINT_EVERY)  # the checkpoints only
    assert extra < batch * dim * seqlen * dstate / 8


def test_strided_inputs_read_in_place_and_gradients_keep_their_layout():
    """Sliced, transposed and expanded inputs give the reference's values and gradients (float64, 1e-10), and the
    gradients of dense inputs come back in the inputs' own layout (nothing for autograd to copy)."""
    torch.manual_seed(21)
    batch, dim, seqlen, dstate = 2, 70, 41, 5
    xz = torch.randn(batch, seqlen, 2 * dim, dtype=torch.float64, requires_grad=True)  # Mamba's in_proj output
    u, z = xz[..., :dim].mT, xz[..., dim:].mT  # (B, D, L) views with strides (2DL... , 1, 2D)
    delta_cl = (0.5 * torch.randn(batch, seqlen, dim, dtype=torch.float64)).requires_grad_()
    delta = delta_cl.mT  # channel-last memory seen as (B, D, L)
    A = -(0.1 + torch.rand(dim, dstate, dtype=torch.float64)).requires_grad_()
    B = torch.randn(batch, dstate, seqlen, dtype=torch.float64, requires_grad=True)
    C = torch.randn(1, dstate, 1, dtype=torch.float64).expand(batch, dstate, seqlen)  # stride-0 view
    D = torch.randn(dim, dtype=torch.float64, requires_grad=True)
    bias = torch.randn(dim, dtype=torch.float64, requires_grad=True)
    args = (u, delta, A, B, C, D, z, bias)
    w = torch.randn(batch, dim, seqlen, dtype=torch.float64)
    inputs = [xz, delta_cl, A, B, D, bias]
    got = torch.autograd.grad((_numba(*args, delta_softplus=True) * w).sum(), inputs)
    ref = torch.autograd.grad((selective_scan_reference(*args, delta_softplus=True) * w).sum(), inputs)
    for name, a, b in zip(("xz", "delta", "A", "B", "D", "delta_bias"), got, ref):
        assert_rel(a, b, 1e-10, f"grad {name}")
    plain = {k: v.detach().clone().requires_grad_() for k, v in (("u", u.mT.contiguous().mT), ("d", delta))}
    out = _numba(plain["u"], plain["d"], A, B, C, D, z, bias, delta_softplus=True)
    gu, gd = torch.autograd.grad(out.sum(), [plain["u"], plain["d"]])
    assert gu.stride() == plain["u"].stride() and gd.stride() == plain["d"].stride()
    assert out.stride() == plain["u"].stride()
    # no unit-stride axis among the last two (a permuted dense tensor, every other element): read through copies
    perm = torch.randn(dim, seqlen, batch, dtype=torch.float64).permute(2, 0, 1).requires_grad_()
    sparse = torch.randn(batch, dim, 2 * seqlen, dtype=torch.float64)[..., ::2].requires_grad_()
    for odd in (perm, sparse):
        args = (odd, delta.detach(), A, B, C, D, odd.detach() * 0.5, bias)
        got = torch.autograd.grad((_numba(*args, delta_softplus=True) * w).sum(), [odd])[0]
        ref = torch.autograd.grad((selective_scan_reference(*args, delta_softplus=True) * w).sum(), [odd])[0]
        assert_rel(got, ref, 1e-10, f"grad of a tensor with strides {odd.stride()}")


def test_softplus_in_the_float32_kernel_over_its_range():
    """The kernels' own softplus (polynomial log1p) and its derivative, raw steps from -40 to 40, against the
    float64 reference: output and every gradient at float32 accuracy."""
    torch.manual_seed(4)
    dim, seqlen = 16, 161
    xs = _fresh_inputs(dim, seqlen, "shared", "shared", "softplus D z bias", torch.float32, dstate=8)
    with torch.no_grad():
        xs["delta"].copy_(torch.linspace(-40, 40, dim * seqlen).reshape(1, dim, seqlen).expand_as(xs["delta"]))
        xs["delta_bias"].zero_()
    _compare_with_float64_reference(xs, True, 2e-6, 2e-5)


@pytest.mark.parametrize("features", ["softplus D z bias", "", "softplus z"])
def test_float32_kernels_close_to_float64_reference(features):
    """The float32 kernels (polynomial exp2, float32 accumulation) against the float64 reference on the same
    inputs: relative errors at float32 level for the output, the last state and every gradient."""
    torch.manual_seed(len(features) + 3)
    xs = _fresh_inputs(72, 300, "shared", "g4" if "D" in features else "shared", features, torch.float32, dstate=16)
    with torch.no_grad():
        xs["delta"].mul_(4.0)  # steps over a wide range: decays from about 1 down to far below 2^-125
    out = _compare_with_float64_reference(xs, "softplus" in features, 2e-6, 2e-5)
    assert out.dtype == torch.float32


@pytest.mark.parametrize("bc", ["shared", "g4"])
def test_parallel_kernels_match_reference(bc, monkeypatch):
    """The parallel entry points (two numba threads, each work item with its own partial sums) at a small size,
    forced by lowering the work threshold below which the serial kernels run."""
    monkeypatch.setattr(cpu_kernel, "_PARALLEL_MIN_WORK", 0)
    torch.manual_seed(13)
    xs = _fresh_inputs(136, 50, bc, bc, "softplus D z bias", batch=3)
    _compare_with_float64_reference(xs, True, 1e-10, 1e-10, threads=2)


@pytest.mark.slow
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_long_sequence_many_blocks_matches_reference(dtype):
    """Longer sequences (many checkpoints), several blocks and batches, two numba threads."""
    torch.manual_seed(11)
    xs = _fresh_inputs(150, 2000, "shared", "shared", "softplus D z bias", dtype=dtype, batch=3, dstate=16)
    tol = 1e-10 if dtype == torch.float64 else 5e-5
    _compare_with_float64_reference(xs, True, tol, tol, threads=2)


def test_float32_parameter_gradients_do_not_lose_digits_with_the_sequence_length():
    # dA, dD, d(delta_bias) and an input-independent dB are sums over the whole sequence: summed in float32 one
    # position after another they were 2-3e-6 from float64 at L = 32k (and growing with L); per-chunk sums added
    # in float64 keep them at about 3e-7, like the per-position gradients
    gen = torch.Generator().manual_seed(0)
    b, d, n, seqlen = 1, 8, 4, 32768
    x = {"u": torch.randn(b, d, seqlen, generator=gen), "delta": torch.randn(b, d, seqlen, generator=gen) - 2,
         "A": -torch.rand(d, n, generator=gen) - 0.1, "B": torch.randn(d, n, generator=gen),
         "C": torch.randn(b, n, seqlen, generator=gen), "D": torch.randn(d, generator=gen),
         "delta_bias": 0.1 * torch.randn(d, generator=gen)}
    weights = torch.randn(b, d, seqlen, generator=gen, dtype=torch.float64)
    grads = {}
    for backend, dtype in (("chunked", torch.float64), ("numba", torch.float32)):
        xs = {k: v.to(dtype).requires_grad_() for k, v in x.items()}
        out = selective_scan(xs["u"], xs["delta"], xs["A"], xs["B"], xs["C"], D=xs["D"], delta_bias=xs["delta_bias"],
                             delta_softplus=True, backend=backend)
        grads[backend] = dict(zip(xs, torch.autograd.grad((out.double() * weights).sum(), list(xs.values()))))
    for name in ("A", "B", "D", "delta_bias", "u"):
        ref = grads["chunked"][name]
        error = float((grads["numba"][name].double() - ref).norm() / ref.norm())
        assert error < 1e-6, (name, error)


def test_exp2_polynomial_accuracy():
    x = torch.cat([torch.linspace(-140.0, 0.0, 200_001), -torch.rand(100_000) * 5, torch.tensor([0.0, -1.0, -125.0, -125.5, -126.0])])
    got = cpu_kernel.exp2_nonpositive(x).double()
    want = torch.exp2(x.double().clamp_min(-125.0))
    rel = ((got - want).abs() / want).max().item()
    assert rel < 2e-7, rel
    assert cpu_kernel.exp2_nonpositive(torch.tensor([0.0])).item() == pytest.approx(1.0, rel=2e-7)
    assert cpu_kernel.exp2_nonpositive(torch.tensor([-1000.0])).item() == pytest.approx(2.0**-125, rel=2e-7)
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


def test_the_gate_vanishes_for_very_negative_z():
    # silu(z) = z sigmoid(z): below the exp2 clamp (z < -86.6) the float32 sigmoid was 2^-125, not 0, so the
    # gate grew with |z| (z = -3e38 gave -35 instead of 0)
    xs = [x.detach() for x in make_inputs(dim=8, seqlen=20, dtype=torch.float32)]
    xs[6] = -torch.logspace(1, 38, 8 * 20, dtype=torch.float64).reshape(1, 8, 20).expand(2, 8, 20).float()
    xs = [x.clone().requires_grad_(True) for x in xs]
    out = _numba(*xs, delta_softplus=True)
    out.sum().backward()
    ref_xs = [x.detach().double().requires_grad_(True) for x in xs]
    ref = selective_scan_reference(*ref_xs, delta_softplus=True)
    ref.sum().backward()
    scale = ref.detach().abs().max().item() + 1.0
    assert (out.detach().double() - ref.detach()).abs().max().item() <= 1e-6 * scale
    assert (xs[6].grad.double() - ref_xs[6].grad).abs().max().item() <= 1e-6 * scale


def test_positive_a_grows_like_the_reference():
    # A > 0 is legal input (a growing state): the float32 exponential must follow exp for positive arguments too
    xs = [x.detach() for x in make_inputs(dim=8, seqlen=40, dtype=torch.float32)]
    xs[2] = 0.5 * torch.rand_like(xs[2])  # A in [0, 0.5)
    out = _numba(*xs, delta_softplus=True)
    ref = selective_scan_reference(*[x.double() for x in xs], delta_softplus=True)
    assert_close(out.double(), ref, RTOL32, ATOL32, "positive A")


@pytest.mark.parametrize("dim, seqlen", [(20, 29), (128, 100)])
def test_float32_layouts_give_identical_bits(dim, seqlen):
    # The canonical layout's tiles are transposed (8 x 8 blocks in vector registers, the rest element by element);
    # the arithmetic is the channel-last one, so values and gradients are equal bit for bit.
    torch.manual_seed(3)
    u, delta, A, B, C, D, z, bias = make_inputs(dim=dim, seqlen=seqlen, dstate=16, dtype=torch.float32)
    leaves = [u, delta, A, B, C, D, z, bias]
    y = _numba(u, delta, A, B, C, D, z, bias, delta_softplus=True)
    y_cl = cpu_kernel.selective_scan_cpu_channels_last(
        u.mT, delta.mT, A, B.mT, C.mT, D, z.mT, bias, delta_softplus=True
    ).mT
    assert torch.equal(y, y_cl)
    w = torch.randn_like(y)
    for a, b in zip(torch.autograd.grad((y * w).sum(), leaves), torch.autograd.grad((y_cl * w).sum(), leaves)):
        assert torch.equal(a, b)


def test_channels_last_entry_equals_canonical_layout():
    torch.manual_seed(5)
    u, delta, A, B, C, D, z, bias = make_inputs(dim=20, seqlen=29, dstate=6)
    y_cl = cpu_kernel.selective_scan_cpu_channels_last(
        u.mT, delta.mT, A, B.mT, C.mT, D, z.mT, bias, delta_softplus=True
    )
    y = selective_scan_reference(u, delta, A, B, C, D, z, bias, delta_softplus=True)
    assert_rel(y_cl.mT, y, 1e-10, "channels-last out")
    w = torch.randn_like(y)
    g_cl = torch.autograd.grad((y_cl.mT * w).sum(), [u, delta, A, B, C, D, z, bias])
    g = torch.autograd.grad((y * w).sum(), [u, delta, A, B, C, D, z, bias])
    for name, a, b in zip(("u", "delta", "A", "B", "C", "D", "z", "bias"), g_cl, g):
        assert_rel(a, b, 1e-10, f"channels-last grad {name}")
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
    assert_rel(y_nb, y_ref, 1e-10, "Mamba out")
    for (name, _), a, b in zip([("x", None), *m.named_parameters()], g_nb, g_ref):
        assert_rel(a, b, 1e-10, f"Mamba grad {name}")


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
    """Forward and backward launches from several Python threads (the launches are serialised by a lock)."""
    xs = [x.detach().float() for x in make_inputs(dim=32, seqlen=200, dstate=8)]
    expected = selective_scan_reference(*[x.double() for x in xs], delta_softplus=True)
    u_ref = xs[0].double().requires_grad_()
    y_ref = selective_scan_reference(u_ref, *[x.double() for x in xs[1:]], delta_softplus=True)
    (gu_expected,) = torch.autograd.grad(y_ref.sum(), [u_ref])
    results: list[torch.Tensor] = []
    grads: list[torch.Tensor] = []
    errors: list[BaseException] = []

    def work() -> None:
        try:
            for _ in range(5):
                results.append(_numba(*xs, delta_softplus=True))
                u = xs[0].clone().requires_grad_()
                grads.append(torch.autograd.grad(_numba(u, *xs[1:], delta_softplus=True).sum(), [u])[0])
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
    assert len(grads) == 15
    for g in grads:
        assert_rel(g, gu_expected, 2e-5, "threaded grad u")


def test_input_checks():
    xs = [x.detach() for x in make_inputs()]
    with pytest.raises(ValueError, match="delta must have the shape of u"):
        selective_scan(xs[0], xs[1][:, :, :-1], *xs[2:5], backend="numba")
    with pytest.raises(TypeError, match="complex"):
        selective_scan(xs[0], xs[1], xs[2].to(torch.complex128), *xs[3:5], backend="numba")


def test_kernels_compile_without_a_writable_disk_cache(tmp_path) -> None:
    """A read-only installation without a writable user cache: numba refuses ``cache=True`` when a function is
    decorated ("cannot cache function ..."). The kernels then compile in memory (same results), with one warning.
    Simulated in a fresh process by a numba.njit that refuses to cache, as numba does there."""
    import subprocess
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    code = """
import logging, numba, torch
real = numba.njit
def refusing(*args, **kw):
    if kw.get("cache"):
        def deco(fn):
            raise RuntimeError("cannot cache function %r: no locator available for file 'x.py'" % fn.__name__)
        return deco
    return real(*args, **kw)
numba.njit = refusing
logging.basicConfig(level=logging.WARNING)
from longiseg.ssm import selective_scan, selective_scan_reference
from longiseg.ssm.causal_conv import causal_conv1d_silu_cpu, causal_conv1d_silu_reference
g = torch.Generator().manual_seed(0)
u, dt = torch.randn(1, 8, 40, generator=g, dtype=torch.float64), torch.randn(1, 8, 40, generator=g, dtype=torch.float64)
A, B, C = -torch.rand(8, 4, generator=g, dtype=torch.float64), torch.randn(1, 4, 40, generator=g, dtype=torch.float64), torch.randn(1, 4, 40, generator=g, dtype=torch.float64)
out = selective_scan(u, dt, A, B, C, delta_softplus=True, backend="numba")
ref = selective_scan_reference(u, dt, A, B, C, delta_softplus=True)
x, w, b = torch.randn(2, 30, 8, generator=g, dtype=torch.float64), torch.randn(8, 4, generator=g, dtype=torch.float64), torch.randn(8, generator=g, dtype=torch.float64)
conv_err = (causal_conv1d_silu_cpu(x, w, b) - causal_conv1d_silu_reference(x, w, b)).abs().max().item()
print("scan", ((out - ref).norm() / ref.norm()).item(), "conv", conv_err)
"""
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600,
                            env={**__import__("os").environ, "PYTHONPATH": str(root)})
    assert result.returncode == 0, result.stderr[-2000:]
    scan_err, conv_err = (float(v) for v in result.stdout.split()[1::2])
    assert scan_err < 1e-10 and conv_err < 1e-10
    assert result.stderr.count("numba cannot cache the compiled CPU kernels on disk") == 1, result.stderr[-2000:]


class _SlowNumba:
    """Stands for numba in ``cpu_kernel.jit``: an explicitly typed "compilation" that lasts until the compile
    notice has been logged (or 60 s), so that the test does not depend on how fast this machine is."""

    def __init__(self, logged: threading.Event) -> None:
        self.logged = logged

    def njit(self, *args, **options):
        def compile_(fn):
            if args:
                self.logged.wait(60)
            return fn
        return compile_


def test_a_slow_kernel_compilation_is_announced_once(monkeypatch) -> None:
    """A first run compiles the kernels for about a minute with no output: an info record now says why."""
    from longiseg.utils import logging as lg

    monkeypatch.setattr(lg, "_SEEN", set())
    logged = threading.Event()
    records: list[str] = []

    class Handler(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record.getMessage())
            logged.set()

    handler = Handler(logging.INFO)
    logger = logging.getLogger("longiseg.ssm")
    logger.addHandler(handler)
    old_level = logger.level
    logger.setLevel(logging.INFO)
    try:
        monkeypatch.setattr(cpu_kernel, "COMPILE_NOTICE_S", 0.01)
        slow = _SlowNumba(logged)
        for _ in range(2):  # typed: compiled when decorated, announced once per process
            assert cpu_kernel.jit(slow, ["sig"])(len) is len
        monkeypatch.setattr(cpu_kernel, "COMPILE_NOTICE_S", 60.0)
        monkeypatch.setattr(lg, "_SEEN", set())
        assert cpu_kernel.jit(slow, ["sig"])(abs) is abs  # "compiled" at once (the event is set): no notice
        assert cpu_kernel.jit(_SlowNumba(threading.Event()))(min) is min  # lazily typed: nothing compiles yet
    finally:
        logger.removeHandler(handler)
        logger.setLevel(old_level)
    assert len(records) == 1 and records[0].startswith("compiling the CPU kernels"), records


def test_the_parallel_build_of_an_entry_point_has_its_own_disk_cache_entry() -> None:
    # numba keys its cache by file, qualified name, bytecode and signature, not by compile options: the serial
    # and parallel builds of one entry point shared an entry, and a parallel call could run serial machine code
    seen = []

    class FakeNumba:
        @staticmethod
        def njit(*args, **options):
            return lambda fn: seen.append((fn, options.get("parallel"))) or fn

    def entry(x, y=2):
        return x + y

    serial = cpu_kernel.jit(FakeNumba, parallel=False)(entry)
    parallel = cpu_kernel.jit(FakeNumba, parallel=True)(entry)
    assert serial is entry and serial.__qualname__ == entry.__qualname__
    assert parallel.__qualname__ == entry.__qualname__ + "__parallel" and parallel.__code__ is entry.__code__
    assert parallel(1) == 3 and [p for _, p in seen] == [False, True]


def test_the_kernels_restore_the_callers_numba_thread_count(monkeypatch: pytest.MonkeyPatch) -> None:
    """The parallel kernels set numba's thread count and left it set: a user's own parallel numba code ran with
    the scan's count afterwards."""
    import numba

    monkeypatch.setattr(cpu_kernel, "_PARALLEL_MIN_WORK", 1)  # the parallel entry points at a small size
    before_torch, before_numba = torch.get_num_threads(), numba.get_num_threads()
    torch.set_num_threads(2)
    numba.set_num_threads(1)
    try:
        if numba.config.NUMBA_NUM_THREADS < 2:
            pytest.skip("numba may use one thread here")
        inputs = make_inputs(batch=2, dim=8, seqlen=16, dstate=4, dtype=torch.float32)
        out = _numba(*inputs)
        out.sum().backward()
        assert numba.get_num_threads() == 1
    finally:
        numba.set_num_threads(before_numba)
        torch.set_num_threads(before_torch)
