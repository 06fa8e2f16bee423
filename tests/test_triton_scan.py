"""The Triton selective scan against the float64 reference: values and every gradient, dispatch, errors.

Triton's interpreter runs the kernels on CPU tensors only when ``TRITON_INTERPRET=1`` is set *before Triton is
imported* (Triton decides when its own library functions are decorated), and the pytest process may already have
imported Triton without it. So the interpreted checks run in one child process started with the variable set (this
file is its script: ``python tests/test_triton_scan.py CASE...`` prints one JSON line per case), calling the public
``selective_scan(..., backend="triton")`` or, to exercise many tiles and channel blocks at small sizes,
``selective_scan_triton`` with small ``block_t``/``block_d``; the parametrised tests below assert on its results.
The interpreter is slow (a Python step per scanned element), hence the small sizes. CUDA tests run in-process.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from test_selective_scan import NAMES, make_inputs, nan_patterns, nonfinite_inputs

from longiseg.ssm import (
    Mamba,
    resolve_backend,
    selective_scan,
    selective_scan_chunked,
    selective_scan_reference,
    triton_kernel,
)
from longiseg.ssm import cuda as cuda_bridge

HERE = Path(__file__).resolve().parent
needs_triton = pytest.mark.skipif(
    not triton_kernel.triton_scan_available(), reason="triton is not importable"
)
needs_cuda = pytest.mark.skipif(
    not (torch.cuda.is_available() and triton_kernel.triton_scan_available()),
    reason="needs a CUDA GPU and triton",
)

# name: (make_inputs kwargs, call options, which flags: softplus/use_z/use_d, float64?)
CASES: dict[str, dict] = {
    # public dispatcher, one tile longer than L, N padded to a power of two
    "public_shared": {"inputs": {"dim": 4, "seqlen": 19, "dstate": 3}, "public": True},
    # six tiles, the last one partial; last-state gradient through every tile boundary
    "tiles_shared": {"inputs": {"dim": 4, "seqlen": 21, "dstate": 4}, "options": {"block_t": 4}},
    # two channel blocks per group, two groups
    "tiles_grouped": {
        "inputs": {"dim": 4, "seqlen": 13, "dstate": 2, "bc": "grouped", "groups": 2},
        "options": {"block_t": 4, "block_d": 2},
    },
    # input-independent B and C, a partial channel block
    "tiles_const": {
        "inputs": {"dim": 3, "seqlen": 11, "dstate": 2, "bc": "const"},
        "options": {"block_t": 4},
    },
    "seqlen_1": {"inputs": {"dim": 2, "seqlen": 1, "dstate": 2}, "public": True},
    # float32, no gate, no skip, no softplus (non-negative delta)
    "float32_plain": {
        "inputs": {"dim": 4, "seqlen": 24, "dstate": 4, "dtype": "float32"},
        "options": {"block_t": 8},
        "flags": {"softplus": False, "use_z": False, "use_d": False},
    },
    # raw steps around 22: softplus is the identity above 20 (derivative exactly 1) and exp(delta A) reaches e^-24,
    # where the gradient of A must not come from h_t - delta_t B_t u_t (cancellation)
    "strong_decay_float64": {"inputs": {"dim": 4, "seqlen": 20, "dstate": 4, "delta_offset": 22.0}, "public": True},
    "strong_decay_float32": {
        "inputs": {"dim": 4, "seqlen": 20, "dstate": 4, "dtype": "float32", "delta_offset": 22.0},
        "options": {"block_t": 8},
    },
    # autocast's dtypes: bfloat16 activations (u, delta, B, C, z), float32 parameters; accumulation in float32
    "bfloat16_activations": {
        "inputs": {"dim": 4, "seqlen": 20, "dstate": 4},
        "amp": "bfloat16",
        "public": True,
    },
}
MAMBA_CASE = "mamba_block"  # the Mamba block, both scan directions, every parameter gradient
#: one NaN step, and one A = -inf with a partial last tile: where NaN reaches, as in the reference
NONFINITE_CASES = ("nan_delta", "a_minus_inf")
SLOW_CASES: dict[str, dict] = {
    "slow_float32_n16": {
        "inputs": {"dim": 8, "seqlen": 200, "dstate": 16, "dtype": "float32", "delta_scale": 2.0},
        "public": True,
    },
    "slow_grouped3": {
        "inputs": {"dim": 6, "seqlen": 70, "dstate": 4, "bc": "grouped", "groups": 3},
        "options": {"block_t": 16},
    },
}


def _relative_errors(got: dict[str, torch.Tensor], want: dict[str, torch.Tensor]) -> dict[str, float]:
    """``|got - want| / |want|`` (Frobenius norms) per entry; the plain norm where ``want`` is exactly zero."""
    errs = {}
    for name, w in want.items():
        diff = (got[name].detach().double() - w.detach().double()).norm().item()
        ref = w.detach().double().norm().item()
        errs[name] = diff / ref if ref > 0 else diff
    return errs


def outputs_and_grads(
    fn, xs, w, wl, softplus: bool = True, use_z: bool = True, use_d: bool = True
) -> dict[str, torch.Tensor]:
    """``out``, ``last`` and the gradients of ``sum(out * w) + sum(last * wl)`` w.r.t. every used input."""
    u, delta, A, B, C, D, z, bias = xs
    out, last = fn(
        u, delta, A, B, C, D if use_d else None, z if use_z else None, bias,
        delta_softplus=softplus, return_last_state=True,
    )  # fmt: skip
    loss = (out * w.to(out.dtype)).float().sum() + (last * wl.to(last.dtype)).float().sum()
    names = [n for n in NAMES if (use_z or n != "z") and (use_d or n != "D")]
    grads = torch.autograd.grad(loss, [x for x, n in zip(xs, NAMES) if n in names])
    return {"out": out, "last": last, **dict(zip(names, grads))}


def run_case(spec: dict) -> dict:
    """Run one case (in the interpreter child) and return the relative errors against the float64 reference."""
    kw = dict(spec["inputs"])
    kw["dtype"] = getattr(torch, kw.get("dtype", "float64"))
    torch.manual_seed(sum(map(ord, json.dumps(spec, sort_keys=True))))  # fresh inputs per case
    xs = make_inputs(**kw)
    if "amp" in spec:
        low = getattr(torch, spec["amp"])
        xs = [
            x.detach().to(low if i in (0, 1, 3, 4, 6) else torch.float32).requires_grad_()
            for i, x in enumerate(xs)
        ]
    flags = spec.get("flags", {})
    if not flags.get("softplus", True):
        with torch.no_grad():
            xs[1].abs_()
    w = torch.randn(xs[0].shape, dtype=torch.float64)
    wl = torch.randn(*xs[0].shape[:2], xs[2].shape[1], dtype=torch.float64)
    options = spec.get("options", {})
    if spec.get("public"):
        fn = lambda *a, **k: selective_scan(*a, backend="triton", **k)  # noqa: E731
    else:
        fn = lambda *a, **k: triton_kernel.selective_scan_triton(*a, **options, **k)  # noqa: E731
    got = outputs_and_grads(fn, xs, w, wl, **flags)
    xs64 = [x.detach().double().requires_grad_() for x in xs]
    want = outputs_and_grads(selective_scan_reference, xs64, w, wl, **flags)
    # float64 to rounding; float32 to its rounding amplified by the recurrence; bfloat16 inputs to their rounding
    tol = 2e-2 if "amp" in spec else 1e-10 if kw["dtype"] == torch.float64 else 2e-5
    return {
        "errors": _relative_errors(got, want),
        "dtypes": {k: str(v.dtype).removeprefix("torch.") for k, v in got.items()},
        "grad_fn": type(got["out"].grad_fn).__name__,
        "tol": tol,
    }


def run_nonfinite_case(scenario: str) -> dict:
    """The entries whose NaN pattern differs from the reference's (in the interpreter child)."""
    xs = nonfinite_inputs(scenario)
    want = nan_patterns(selective_scan_reference, xs)
    got = nan_patterns(lambda *a, **k: triton_kernel.selective_scan_triton(*a, block_t=4, **k), xs)
    return {"differs": sorted(k for k in want if not torch.equal(got[k], want[k])),
            "nan_in_reference": sorted(k for k in want if want[k].any())}


def run_mamba_case() -> dict:
    """``Mamba(backend="triton")`` against ``Mamba(backend="reference")`` in float64 (in the interpreter child)."""
    torch.manual_seed(5)
    block = Mamba(4, d_state=3, dtype=torch.float64, backend="triton")
    ref = Mamba(4, d_state=3, dtype=torch.float64, backend="reference")
    ref.load_state_dict(block.state_dict())
    x = torch.randn(2, 11, 4, dtype=torch.float64)
    w = torch.randn(2, 11, 4, dtype=torch.float64)
    results = []
    for m in (block, ref):
        y = m(x) + m(x, reverse=True)
        (y * w).sum().backward()
        results.append({"y": y, **{name: p.grad for name, p in m.named_parameters()}})
    return {"errors": _relative_errors(*results), "tol": 1e-10}


#: What the child prints instead of results when this Triton's interpreter cannot run a loop bounded by a scalar
#: argument (Triton before 3.7 with NumPy >= 2.4: its ``__index__`` calls ``int()`` on a one-element array).
UNSUPPORTED = "unsupported-interpreter"


def interpreter_problem() -> str | None:
    """Why this Triton's interpreter cannot run the kernels (in the interpreter child), or ``None`` when it can."""
    import triton
    import triton.language as tl

    @triton.jit
    def count(out_ptr, n):
        total = 0
        for _ in range(0, n):  # the kernels' tile loops are bounded by a scalar argument like this one
            total += 1
        tl.store(out_ptr, total)

    out = torch.zeros(1, dtype=torch.int32)
    try:
        count[(1,)](out, 3)
    except Exception as err:  # the interpreter wraps the TypeError in its own InterpreterError
        if "0-dimensional arrays" not in str(err):
            raise
        return f"triton {triton.__version__}'s interpreter cannot index with a scalar argument here ({err})"
    return None


def _run_child(names: list[str]) -> dict[str, dict]:
    env = dict(os.environ, TRITON_INTERPRET="1")
    env["PYTHONPATH"] = os.pathsep.join([str(HERE.parent), str(HERE), env.get("PYTHONPATH", "")])
    res = subprocess.run(
        [sys.executable, str(Path(__file__).resolve()), *names],
        capture_output=True,
        text=True,
        env=env,
        timeout=900,
    )
    assert res.returncode == 0, res.stderr[-3000:]
    lines = [json.loads(line) for line in res.stdout.splitlines() if line.startswith("{")]
    if lines and lines[0].get("case") == UNSUPPORTED:
        pytest.skip(lines[0]["reason"])  # the kernels themselves are checked where the interpreter works (CI)
    return {r["case"]: r for r in lines}


@pytest.fixture(scope="module")
def interpreted() -> dict[str, dict]:
    return _run_child([*CASES, MAMBA_CASE, *NONFINITE_CASES])


def _check(result: dict) -> None:
    tol = result["tol"]
    bad = {k: v for k, v in result["errors"].items() if not v < tol}
    assert not bad, f"relative errors above {tol}: {bad}"


@needs_triton
@pytest.mark.parametrize("case", list(CASES))
def test_interpreted_kernel_matches_reference(interpreted, case):
    result = interpreted[case]
    assert result["grad_fn"].startswith("_TritonScanFn"), result["grad_fn"]
    assert set(result["errors"]) >= {"out", "last", "u", "delta", "A", "B", "C", "delta_bias"}
    dtypes = result["dtypes"]
    if "amp" in CASES[case]:  # gradients in the inputs' dtypes, the last state in the accumulation dtype
        assert dtypes["out"] == dtypes["u"] == dtypes["B"] == "bfloat16", dtypes
        assert dtypes["A"] == dtypes["D"] == dtypes["last"] == "float32", dtypes
    else:
        assert len(set(dtypes.values())) == 1, dtypes
    _check(result)


@needs_triton
@pytest.mark.parametrize("scenario", NONFINITE_CASES)
def test_interpreted_kernel_propagates_non_finite_values_as_the_reference(interpreted, scenario):
    """Triton took a NaN step as 20 (``tl.minimum`` in its softplus drops NaN: the output finite where every other
    backend's is NaN), and gave NaN where ``A = -inf`` met a partial last tile (``exp(0 * -inf)`` for padding)."""
    result = interpreted[scenario]
    assert result["differs"] == [], result
    assert ("out" in result["nan_in_reference"]) == (scenario == "nan_delta")


@needs_triton
def test_interpreted_mamba_block_matches_reference(interpreted):
    result = interpreted[MAMBA_CASE]
    assert {"y", "A_log", "D", "x_proj.weight", "dt_proj.bias"} <= set(result["errors"])
    _check(result)


@needs_triton
@pytest.mark.slow
def test_interpreted_kernel_matches_reference_larger():
    results = _run_child(list(SLOW_CASES))
    for name in SLOW_CASES:
        _check(results[name])


# ------------------------------------------------------------------------------------------------ dispatch, errors


def _inputs(device: str = "cpu", dtype: torch.dtype = torch.float32, **kw) -> list[torch.Tensor]:
    return [x.detach().to(device).requires_grad_() for x in make_inputs(dtype=dtype, **kw)]


@needs_triton
def _compile_for_gpu(kernel, constexprs: dict, num_warps: int) -> dict:
    """Compile one of the scan kernels for an sm_90 GPU without one (Triton's bundled ptxas): pointers as float32,
    sizes and strides as int32, ``constexprs`` as given. Returns the compiled kernel's assembly by stage."""
    import inspect

    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    params = list(inspect.signature(kernel.fn).parameters)
    signature = {p: "constexpr" if p in constexprs else "*fp32" if p.endswith("_ptr") else "i32" for p in params}
    folded = {(params.index(p),): v for p, v in constexprs.items()}
    compiled = triton.compile(ASTSource(fn=kernel, signature=signature, constexprs=folded),
                              target=GPUTarget("cuda", 90, 32), options={"num_warps": num_warps})
    return compiled.asm


#: What ``_Layout`` launches on a GPU for N = 16: one channel per program, 64 positions per tile, 8 warps.
GPU_TILES = {"BLOCK_D": 1, "BLOCK_N": 16, "BLOCK_T": 64}
FEATURES = {"HAS_D": True, "HAS_Z": True, "HAS_BIAS": True, "SOFTPLUS": True, "B_CONST": False, "C_CONST": False}


def _can_compile_for_gpu() -> bool:
    if not triton_kernel.triton_scan_available():
        return False
    import triton

    return (Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "ptxas").is_file()


needs_ptxas = pytest.mark.skipif(not _can_compile_for_gpu(), reason="needs triton with its CUDA backend (ptxas)")


@needs_ptxas
def test_forward_kernel_compiles_for_a_gpu(tmp_path, monkeypatch):
    """The compiled (not interpreted) forward kernel goes through Triton's whole pipeline to an sm_90 binary,
    so code that only the GPU compiler rejects is caught without a GPU (in a fresh cache: really compiled)."""
    monkeypatch.setenv("TRITON_CACHE_DIR", str(tmp_path))
    fwd, _ = triton_kernel._kernels(False)
    asm = _compile_for_gpu(fwd, {**FEATURES, "STORE_CKPT": True, **GPU_TILES}, num_warps=8)
    assert len(asm["cubin"]) > 1000 and ".entry _scan_fwd_kernel" in asm["ptx"]


@pytest.mark.slow
@needs_ptxas
@pytest.mark.parametrize("const", [False, True])
def test_backward_kernel_compiles_for_a_gpu(const, tmp_path, monkeypatch):
    """The backward kernel (about 30 s to compile), time-varying and input-independent B/C."""
    monkeypatch.setenv("TRITON_CACHE_DIR", str(tmp_path))
    _, bwd = triton_kernel._kernels(False)
    flags = {**FEATURES, "B_CONST": const, "C_CONST": const, "HAS_GLAST": True, **GPU_TILES}
    asm = _compile_for_gpu(bwd, flags, num_warps=8)
    assert len(asm["cubin"]) > 1000 and ".entry _scan_bwd_kernel" in asm["ptx"]


@needs_triton
def test_launch_grid_has_one_axis_for_any_batch():
    """Programs are (sequence, channel block) pairs on the grid's first axis (limit 2^31 - 1): CUDA caps the second
    axis at 65535, so a batch of more sequences (e.g. pixel-wise temporal scans) would not launch there."""
    u, A = torch.zeros(70_000, 3, 2), torch.zeros(3, 2)
    bc = torch.zeros(70_000, 2, 2)
    assert triton_kernel._Layout(u, A, bc, bc, block_d=1, block_t=None).grid == (3 * 70_000,)
    const = torch.zeros(3, 2)  # input-independent B and C allow any channel block: two, the second partial
    assert triton_kernel._Layout(u, A, const, const, block_d=2, block_t=None).grid == (2 * 70_000,)


def test_backend_resolution(monkeypatch):
    cpu, gpu = torch.device("cpu"), torch.device("cuda", 0)
    monkeypatch.delenv("LONGISEG_SCAN_BACKEND", raising=False)
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    with pytest.raises(RuntimeError, match="TRITON_INTERPRET=1"):
        resolve_backend("triton", cpu)
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert resolve_backend("triton", cpu) == "triton"
    monkeypatch.setenv("LONGISEG_SCAN_BACKEND", "triton")
    assert resolve_backend(None, cpu) == "triton"
    monkeypatch.delenv("LONGISEG_SCAN_BACKEND")
    assert resolve_backend("auto", cpu) != "triton"  # auto never interprets
    # auto on CUDA: mamba-ssm first, then Triton
    monkeypatch.setattr(cuda_bridge, "cuda_scan_available", lambda: False)
    assert resolve_backend("auto", gpu) == "triton"
    monkeypatch.setattr(cuda_bridge, "cuda_scan_available", lambda: True)
    assert resolve_backend("auto", gpu) == "cuda"


def test_missing_triton_is_reported(monkeypatch, caplog):
    from longiseg.utils import logging as lg

    monkeypatch.setattr(lg, "_SEEN", set())
    monkeypatch.setattr(triton_kernel, "triton", None)
    monkeypatch.setattr(
        triton_kernel, "_IMPORT_ERROR", "importing triton failed: ModuleNotFoundError: no triton"
    )
    monkeypatch.setattr(cuda_bridge, "cuda_scan_available", lambda: False)
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    with pytest.raises(RuntimeError, match="Triton is unavailable .*no triton"):
        selective_scan(*_inputs(), backend="triton")
    monkeypatch.setenv("LONGISEG_SCAN_BACKEND", "triton")
    with pytest.raises(RuntimeError, match="environment variable LONGISEG_SCAN_BACKEND"):
        resolve_backend(None, torch.device("cuda", 0))
    monkeypatch.delenv("LONGISEG_SCAN_BACKEND")
    with caplog.at_level(logging.INFO, logger="longiseg"):
        assert resolve_backend("auto", torch.device("cuda", 0)) == "chunked"
    assert any("neither mamba-ssm nor Triton" in r.getMessage() for r in caplog.records)


@needs_triton
def test_tile_options_are_validated(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    xs = _inputs(dim=4, seqlen=8, bc="grouped", groups=2)
    with pytest.raises(ValueError, match="block_t must be a power of two"):
        triton_kernel.selective_scan_triton(*xs, block_t=3)
    with pytest.raises(ValueError, match=r"block_d must be a power of two dividing .* \(2 here\)"):
        triton_kernel.selective_scan_triton(*xs, block_d=4)
    with pytest.raises(ValueError, match="B must have shape"):
        triton_kernel.selective_scan_triton(xs[0], xs[1], xs[2], xs[3][:, 0, :, :3], xs[4])


# ---------------------------------------------------------------------------------------------------------- CUDA


def _triton(*args, **kwargs):
    return selective_scan(*args, backend="triton", **kwargs)


def _on_cuda(xs: list[torch.Tensor], dtype: torch.dtype | None = None) -> list[torch.Tensor]:
    return [x.detach().cuda().to(dtype or x.dtype).requires_grad_() for x in xs]


@pytest.mark.cuda
@needs_cuda
@pytest.mark.parametrize(
    ("bc", "groups", "seqlen", "dstate"),
    [("shared", 1, 300, 16), ("grouped", 4, 1000, 16), ("const", 1, 77, 8), ("shared", 1, 4096, 16)],
)
def test_cuda_kernel_matches_float64(bc, groups, seqlen, dstate):
    torch.manual_seed(seqlen + dstate)
    xs = make_inputs(dim=32, seqlen=seqlen, dstate=dstate, bc=bc, groups=groups, dtype=torch.float32)
    w = torch.randn(xs[0].shape, dtype=torch.float64, device="cuda")
    wl = torch.randn(2, 32, dstate, dtype=torch.float64, device="cuda")
    got = outputs_and_grads(_triton, _on_cuda(xs), w, wl)
    # float64 ground truth: the chunked scan (itself checked against the sequential reference), on the GPU
    want = outputs_and_grads(selective_scan_chunked, _on_cuda(xs, torch.float64), w, wl)
    errs = _relative_errors(got, want)
    assert max(errs.values()) < 1e-4, errs


@pytest.mark.cuda
@needs_cuda
def test_cuda_kernel_float64_and_bfloat16():
    xs = make_inputs(dim=8, seqlen=150, dstate=4)  # float64
    w = torch.randn(xs[0].shape, dtype=torch.float64, device="cuda")
    wl = torch.randn(2, 8, 4, dtype=torch.float64, device="cuda")
    want = outputs_and_grads(selective_scan_reference, _on_cuda(xs), w, wl)
    errs = _relative_errors(outputs_and_grads(_triton, _on_cuda(xs), w, wl), want)
    assert max(errs.values()) < 1e-10, errs
    # AMP's dtypes: bfloat16 activations (u, delta, B, C, z), float32 parameters (A, D, delta_bias)
    bf = [
        x.detach().cuda().to(torch.bfloat16 if i in (0, 1, 3, 4, 6) else torch.float32)
        for i, x in enumerate(xs)
    ]
    got = outputs_and_grads(_triton, [x.requires_grad_() for x in bf], w, wl)
    assert (
        got["out"].dtype == torch.bfloat16
        and got["u"].dtype == torch.bfloat16
        and got["A"].dtype == torch.float32
    )
    errs = _relative_errors({k: got[k] for k in ("out", "u", "A", "D")}, want)
    assert max(errs.values()) < 5e-2, errs


@pytest.mark.cuda
@needs_cuda
def test_cuda_kernel_matches_mamba_ssm():
    if not cuda_bridge.cuda_scan_available():
        pytest.skip("mamba-ssm not installed")
    xs = make_inputs(dim=64, seqlen=2048, dstate=16, dtype=torch.float32)
    w = torch.randn(xs[0].shape, device="cuda")
    wl = torch.zeros(2, 64, 16, device="cuda")  # mamba-ssm's backward ignores the last-state gradient
    got = outputs_and_grads(_triton, _on_cuda(xs), w, wl)
    want = outputs_and_grads(lambda *a, **k: selective_scan(*a, backend="cuda", **k), _on_cuda(xs), w, wl)
    errs = _relative_errors(got, want)
    assert max(errs.values()) < 1e-4, errs


@pytest.mark.cuda
@needs_cuda
def test_cuda_mamba_block_amp_bfloat16_training_step():
    torch.manual_seed(0)
    block = Mamba(64, d_state=16, backend="triton").cuda()
    ref = Mamba(64, d_state=16, backend="chunked").cuda()
    ref.load_state_dict(block.state_dict())
    x = torch.randn(2, 1000, 64, device="cuda")
    results = []
    for m in (block, ref):
        with torch.autocast("cuda", dtype=torch.bfloat16):
            y = m(x)
        y.float().square().mean().backward()
        results.append({"y": y, **{name: p.grad for name, p in m.named_parameters()}})
    got, want = results
    assert all(torch.isfinite(t).all() for t in got.values())
    errs = _relative_errors(got, want)
    assert max(errs.values()) < 5e-2, errs


if __name__ == "__main__":  # the interpreter child (see the module docstring)
    sys.path[:0] = [str(HERE.parent), str(HERE)]
    specs = {**CASES, **SLOW_CASES}
    problem = interpreter_problem()
    if problem is not None:
        print(json.dumps({"case": UNSUPPORTED, "reason": problem}), flush=True)
        sys.exit(0)
    for case in sys.argv[1:]:
        result = (run_mamba_case() if case == MAMBA_CASE else run_nonfinite_case(case) if case in NONFINITE_CASES
                  else run_case(specs[case]))
        print(json.dumps({"case": case, **result}), flush=True)
