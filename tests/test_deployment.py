"""Deploying the registered models: ``torch.jit.trace`` and ``torch.export`` record them as they run eagerly, for
other batch sizes and (models that take any ``T``) other numbers of timepoints; ``torch.compile`` keeps the scan's
logging out of its graph."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest
import torch
import torch.utils._pytree as pytree

import longiseg
from longiseg import build_model
from longiseg.networks.output import LongitudinalOutput, TracedOutput
from longiseg.ssm import Mamba
from longiseg.ssm.cpu_kernel import cpu_kernel_available
from longiseg.ssm.selective_scan import log_backend
from longiseg.utils.validation import check_positive_int, check_timepoints

SEG_TINY = {"widths": (8, 16, 16, 32), "depths": (1, 1, 1, 1), "decoder_dim": 16, "drop_path_rate": 0.0,
            "decoder_dropout": 0.0}
UNET_TINY = {"features": (4, 8, 16)}

#: name -> (kwargs, input (B, T, C, *S), takes any T). 2D/2.5D models, one per family with its own forward.
MODELS = {
    "segmast": ({**SEG_TINY, "d_state": 4}, (1, 2, 2, 32, 32), True),
    "segformer": ({**SEG_TINY, "num_heads": (1, 2, 2, 4)}, (1, 2, 2, 32, 32), True),
    "longi_unet_dw_2d": (UNET_TINY, (1, 2, 2, 16, 8), True),
    "longi_unet_concat_2d": (UNET_TINY, (1, 2, 2, 16, 8), False),
    "dynunet_2d": ({"filters": (4, 8, 16)}, (1, 2, 2, 16, 8), False),
}
LIBRARY = str(Path(longiseg.__file__).parent)


def _model(name: str, **changes: object) -> tuple[torch.nn.Module, torch.Tensor, bool]:
    if name.startswith("dynunet"):
        pytest.importorskip("monai")
    kwargs, shape, any_t = MODELS[name]
    return build_model(name, in_channels=2, **{**kwargs, **changes}).eval(), torch.randn(*shape), any_t


def _close(got: tuple[torch.Tensor, ...], want: LongitudinalOutput) -> None:
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name", sorted(MODELS))
def test_trace_follows_batch_and_timepoints(name: str) -> None:
    """The shape checks read sizes only when not tracing: the trace records the model's arithmetic on the sizes,
    without a TracerWarning from longiseg's networks, and runs on another batch size and T."""
    model, x, any_t = _model(name)
    with warnings.catch_warnings(record=True) as caught, torch.no_grad():
        warnings.simplefilter("always")
        traced = torch.jit.trace(model, x, check_trace=False)
    # Not counted: SegMaST's numba kernels (Python calls in the trace) and SegFormer's choice of reducing the keys,
    # which depends on the grid size (a true specialisation of the trace to the example's spatial size).
    ours = [f"{w.filename}:{w.lineno}" for w in caught
            if type(w.message).__name__ == "TracerWarning" and w.filename.startswith(LIBRARY)
            and "/ssm/" not in w.filename and not w.filename.endswith("efficient_attention.py")]
    assert not ours, ours
    other = torch.randn(2, 3 if any_t else 2, *x.shape[2:])
    with torch.no_grad():
        got, want = traced(other), model(other)
    assert isinstance(got, tuple) and len(got) == 2  # TracedOutput recorded as the pair (baseline, progression)
    _close(got, want)


def test_traced_segmast_pads_other_spatial_sizes() -> None:
    """While tracing, SegFormer-like models always pad to the stride and crop (by 0 when the sizes fit), so the
    trace follows spatial sizes that need padding."""
    model, x, _ = _model("segmast")
    with torch.no_grad():
        traced = torch.jit.trace(model, x, check_trace=False)
        other = torch.randn(1, 2, 2, 40, 56)
        _close(traced(other), model(other))


def test_traceable_output_is_a_pair_only_while_tracing() -> None:
    out = LongitudinalOutput(torch.zeros(1, 1, 4, 4), torch.zeros(1, 1, 1, 4, 4))
    assert out.traceable() is out
    pair = torch.jit.trace(lambda x: LongitudinalOutput(x[:, :1], x[:, None, 1:]).traceable(),
                           torch.randn(1, 2, 4, 4))(torch.randn(1, 2, 4, 4))
    assert isinstance(pair, tuple) and [t.shape[1] for t in pair] == [1, 1]
    assert TracedOutput(*out).baseline is out.baseline


def test_longitudinal_output_is_a_pytree() -> None:
    out = LongitudinalOutput(torch.zeros(1, 1, 4, 4), torch.ones(1, 2, 1, 4, 4))
    leaves, spec = pytree.tree_flatten(out)
    assert [t.shape[1] for t in leaves] == [1, 2]
    back = pytree.tree_unflatten([t + 1 for t in leaves], spec)
    assert isinstance(back, LongitudinalOutput) and torch.equal(back.progression, out.progression + 1)


@pytest.mark.parametrize(("name", "changes"), [("segmast", {"depths": (1, 0, 0, 0)}), ("longi_unet_dw_2d", {})])
def test_export_matches_eager(name: str, changes: dict[str, object]) -> None:
    """Exported models return a LongitudinalOutput; SegMaST's scans export with the chunked backend (``auto``
    picks it while torch.export traces: the numba kernels cannot run on its fake tensors)."""
    model, x, _ = _model(name, **changes)
    exported = torch.export.export(model, (x,))
    with torch.no_grad():
        got, want = exported.module()(x), model(x)
    assert isinstance(got, LongitudinalOutput)
    _close(tuple(got), want)


def test_exported_segmast_runs_with_gradients_enabled() -> None:
    """An exported SegMaST runs for inference as users call it, with or without ``torch.no_grad``: its graph
    holds no ``out=`` operation (which raises when its inputs require grad). Its backward pass is not supported
    (the chunked scan's forward works in place) and says so instead of returning wrong gradients."""
    model, x, _ = _model("segmast", depths=(1, 0, 0, 0))
    exported = torch.export.export(model, (x,))
    out_ops = [str(n.target) for n in exported.graph.nodes if n.op == "call_function" and ".out" in str(n.target)]
    assert not out_ops, out_ops
    program = exported.module()
    got = program(x)  # gradients enabled, as in a plain script
    with torch.no_grad():
        want = model(x)
    _close(tuple(t.detach() for t in got), want)
    with torch.inference_mode():
        _close(tuple(program(x)), want)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        sum(t.sum() for t in got).backward()


def test_export_with_dynamic_timepoints() -> None:
    """The checks take torch.export's symbolic sizes (SymInt) of a dynamic T and batch."""
    model, _, _ = _model("longi_unet_dw_2d")
    batch, t = torch.export.Dim("B", min=1, max=8), torch.export.Dim("T", min=3, max=8)  # T - 1 = 1: specialised
    exported = torch.export.export(model, (torch.randn(2, 3, 2, 16, 8),), dynamic_shapes=({0: batch, 1: t},))
    other = torch.randn(3, 5, 2, 16, 8)
    with torch.no_grad():
        _close(tuple(exported.module()(other)), model(other))


@pytest.mark.skipif(not cpu_kernel_available(), reason="numba is not installed")
def test_export_with_numba_forced_names_the_backend() -> None:
    with pytest.raises(RuntimeError, match="'numba'.*cannot be exported.*'chunked'"):
        torch.export.export(Mamba(8, d_state=2, backend="numba"), (torch.randn(1, 5, 8),))


def test_symbolic_sizes_pass_the_int_checks() -> None:
    """Eager messages unchanged; a SymInt is checked and kept symbolic (int() would specialise it)."""
    with pytest.raises(TypeError, match="num_timepoints must be an int"):
        check_timepoints("num_timepoints", 2.0)
    with pytest.raises(ValueError, match="n must be >= 1"):
        check_positive_int("n", 0)

    class Sizes(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            t = check_timepoints("t", x.shape[1])
            assert isinstance(t, torch.SymInt) and isinstance(check_positive_int("n", x.shape[0]), torch.SymInt)
            return x.new_zeros(t)

    exported = torch.export.export(Sizes(), (torch.randn(2, 3),), dynamic_shapes=({0: torch.export.Dim("n"),
                                                                                    1: torch.export.Dim("t")},))
    assert exported.module()(torch.randn(4, 5)).shape == (5,)


def test_backend_logging_does_not_break_a_compiled_graph() -> None:
    def f(x: torch.Tensor) -> torch.Tensor:
        log_backend("reference", x.device)
        return x + 1

    torch.compile(f, backend="eager", fullgraph=True)(torch.zeros(2))  # a graph break would raise
