"""Mamba module: mamba-ssm parameter layout and init, state_dict compatibility, backends, reverse scan."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from longiseg.ssm import Mamba, selective_scan_reference


def mamba_ssm_keys(d_model: int, d_state: int, d_conv: int, expand: int, bias: bool, conv_bias: bool) -> dict:
    """Key -> shape of ``mamba_ssm.modules.mamba_simple.Mamba``'s state_dict, written out from its source."""
    d_inner = expand * d_model
    dt_rank = math.ceil(d_model / 16)
    keys = {
        "in_proj.weight": (2 * d_inner, d_model),
        "conv1d.weight": (d_inner, 1, d_conv),
        "x_proj.weight": (dt_rank + 2 * d_state, d_inner),
        "dt_proj.weight": (d_inner, dt_rank),
        "dt_proj.bias": (d_inner,),
        "A_log": (d_inner, d_state),
        "D": (d_inner,),
        "out_proj.weight": (d_model, d_inner),
    }
    if conv_bias:
        keys["conv1d.bias"] = (d_inner,)
    if bias:
        keys["in_proj.bias"] = (2 * d_inner,)
        keys["out_proj.bias"] = (d_model,)
    return keys


def mamba_ssm_forward(sd: dict, x: torch.Tensor, d_state: int, d_conv: int) -> torch.Tensor:
    """mamba-ssm's non-fused ``Mamba.forward`` (no inference cache) written from its source, on a state_dict."""
    batch, seqlen, _ = x.shape
    d_inner = sd["D"].shape[0]
    dt_rank = sd["dt_proj.weight"].shape[1]
    xz = (sd["in_proj.weight"] @ x.reshape(-1, x.shape[-1]).t()).reshape(-1, batch, seqlen).permute(1, 0, 2)
    if "in_proj.bias" in sd:
        xz = xz + sd["in_proj.bias"][:, None]
    A = -torch.exp(sd["A_log"].float())
    xs, z = xz.chunk(2, dim=1)
    xs = F.silu(
        F.conv1d(xs, sd["conv1d.weight"], sd.get("conv1d.bias"), padding=d_conv - 1, groups=d_inner)[
            ..., :seqlen
        ]
    )
    x_dbl = xs.permute(0, 2, 1).reshape(batch * seqlen, d_inner) @ sd["x_proj.weight"].t()
    dt, B, C = torch.split(x_dbl, [dt_rank, d_state, d_state], dim=-1)
    dt = (sd["dt_proj.weight"] @ dt.t()).reshape(d_inner, batch, seqlen).permute(1, 0, 2)
    B = B.reshape(batch, seqlen, d_state).permute(0, 2, 1)
    C = C.reshape(batch, seqlen, d_state).permute(0, 2, 1)
    y = selective_scan_reference(
        xs, dt, A, B, C, sd["D"].float(), z=z, delta_bias=sd["dt_proj.bias"].float(), delta_softplus=True
    )
    out = y.permute(0, 2, 1) @ sd["out_proj.weight"].t()
    if "out_proj.bias" in sd:
        out = out + sd["out_proj.bias"]
    return out


@pytest.mark.parametrize(("bias", "conv_bias"), [(False, True), (True, False)])
def test_parameter_names_and_shapes_match_mamba_ssm(bias, conv_bias):
    m = Mamba(40, d_state=8, d_conv=3, expand=2, bias=bias, conv_bias=conv_bias)
    got = {k: tuple(v.shape) for k, v in m.state_dict().items()}
    assert got == mamba_ssm_keys(40, 8, 3, 2, bias, conv_bias)
    assert m.dt_rank == 3 and m.d_inner == 80


def test_mamba_ssm_constructor_calls_run_unchanged():
    # mamba-ssm's Mamba(d_model, ..., use_fast_path=True, layer_idx=i) was refused for use_fast_path
    kwargs = dict(d_state=8, d_conv=4, expand=2, dt_rank="auto", dt_min=0.001, dt_max=0.1, dt_init="random",
                  dt_scale=1.0, dt_init_floor=1e-4, conv_bias=True, bias=False, layer_idx=0, device="cpu",
                  dtype=torch.float32)
    for fast in (True, False):
        assert Mamba(16, use_fast_path=fast, **kwargs).state_dict().keys() == Mamba(16).state_dict().keys()
    with pytest.raises(TypeError, match="use_fast_path must be a bool"):
        Mamba(16, use_fast_path="yes")


def test_mamba_ssm_state_dict_loads_and_gives_same_outputs():
    torch.manual_seed(3)
    sd = {k: 0.3 * torch.randn(shape) for k, shape in mamba_ssm_keys(16, 4, 4, 2, True, True).items()}
    sd["A_log"] = torch.log(torch.rand(32, 4) + 0.5)
    m = Mamba(16, d_state=4, d_conv=4, bias=True)
    m.load_state_dict(sd, strict=True)
    x = torch.randn(2, 21, 16)
    for backend in ("chunked", "reference"):
        m.backend = backend
        assert torch.allclose(m(x), mamba_ssm_forward(sd, x, 4, 4), rtol=1e-5, atol=1e-6), backend


def test_init_matches_mamba_ssm():
    m = Mamba(32, d_state=6, dt_min=0.01, dt_max=0.05)
    # log of one value may round differently in vectorised and scalar code paths: compare to float32 precision
    torch.testing.assert_close(m.A_log, torch.log(torch.arange(1, 7, dtype=torch.float32)).repeat(64, 1),
                               rtol=1e-6, atol=0.0)
    assert torch.equal(m.D, torch.ones(64))  # exact: filled with ones
    assert m.A_log.dtype == torch.float32 and m.D.dtype == torch.float32
    dt = F.softplus(m.dt_proj.bias)
    assert (dt >= 0.01 - 1e-6).all() and (dt <= 0.05 + 1e-6).all()
    std = m.dt_rank**-0.5
    assert m.dt_proj.weight.abs().max() <= std
    assert m.A_log._no_weight_decay and m.D._no_weight_decay and m.dt_proj.bias._no_reinit
    const = Mamba(32, dt_init="constant", dt_scale=2.0)
    assert torch.allclose(const.dt_proj.weight, torch.full_like(const.dt_proj.weight, 2.0 * std))


def test_state_dict_round_trip_between_backends():
    a = Mamba(24, d_state=8, backend="chunked", dtype=torch.float64)
    b = Mamba(24, d_state=8, backend="reference", dtype=torch.float64)
    b.load_state_dict(a.state_dict())
    x = torch.randn(2, 33, 24, dtype=torch.float64)
    ya, yb = a(x), b(x)
    assert torch.allclose(ya, yb, rtol=1e-11, atol=1e-12)
    ga = torch.autograd.grad(ya.square().sum(), list(a.parameters()))
    gb = torch.autograd.grad(yb.square().sum(), list(b.parameters()))
    for (name, _), g1, g2 in zip(a.named_parameters(), ga, gb):
        assert torch.allclose(g1, g2, rtol=1e-9, atol=1e-11), name


def test_reverse_equals_flipped_forward_and_causality():
    m = Mamba(16, d_state=4)
    x = torch.randn(2, 19, 16)
    assert torch.allclose(m(x, reverse=True), m(x.flip(1)).flip(1), atol=1e-6)
    x2 = x.clone()
    x2[:, 10:] += 1.0
    y, y2 = m(x), m(x2)
    assert torch.allclose(y[:, :10], y2[:, :10], atol=1e-6) and not torch.allclose(y[:, 10:], y2[:, 10:])
    x3 = x.clone()
    x3[:, :9] += 1.0  # reverse scan: outputs after the change do not see it
    assert torch.allclose(m(x, reverse=True)[:, 9:], m(x3, reverse=True)[:, 9:], atol=1e-6)


def test_forward_backward_shapes_and_length_one():
    m = Mamba(8, d_state=4, d_conv=2, expand=1)
    for seqlen in (1, 7):
        x = torch.randn(3, seqlen, 8, requires_grad=True)
        y = m(x)
        assert y.shape == x.shape
        y.sum().backward()
        assert x.grad is not None and torch.isfinite(x.grad).all()
    assert all(p.grad is not None for p in m.parameters())


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"d_model": 0}, "d_model must be >= 1"),
        ({"d_model": 8, "d_state": 2.5}, "d_state must be an int"),
        ({"d_model": 8, "dt_rank": 0}, r"dt_rank \(or 'auto'\) must be >= 1"),
        ({"d_model": 8, "dt_init": "xavier"}, "dt_init must be"),
        ({"d_model": 8, "dt_min": 0.2, "dt_max": 0.1}, "dt_min <= dt_max"),
        ({"d_model": 8, "expand": 0}, "expand must be a finite number > 0"),
        ({"d_model": 8, "expand": 0.1}, r"expand \* d_model must be at least 1 inner channel"),
        ({"d_model": 8, "expand": "2"}, "expand must be a number > 0"),
        ({"d_model": 8, "expand": True}, "expand must be a number > 0"),
        ({"d_model": 8, "dt_max": math.inf}, "dt_max must be a finite number > 0"),  # every output was NaN
        ({"d_model": 8, "dt_scale": -1.0}, "dt_scale must be a finite number > 0"),
        # these reached torch's factories: a raw driver error, or "Only Tensors of floating point ... gradients"
        ({"d_model": 8, "device": "gpu"}, "device 'gpu' is not a device"),
        ({"d_model": 8, "device": "cuda:99"}, "device 'cuda:99'"),
        ({"d_model": 8, "dtype": torch.int64}, "dtype must be None or a floating torch.dtype"),
        ({"d_model": 8, "dtype": "float32"}, "dtype must be None or a floating torch.dtype"),
        ({"d_model": 8, "layer_idx": -1}, r"layer_idx must be None or an int >= 0"),
    ],
)
def test_bad_constructor_arguments(kwargs, match):
    with pytest.raises((ValueError, TypeError), match=match):
        Mamba(**kwargs)


def test_numpy_sizes_are_ints_and_forward_flags_are_checked():
    import numpy as np

    from longiseg.networks.blocks import MaSTMixer

    assert Mamba(np.int64(8), dt_rank=np.int64(2)).dt_rank == 2
    assert MaSTMixer(np.int64(8), d_state=np.int64(4)).mamba_temporal.d_model == 8
    m = Mamba(8)
    with pytest.raises(TypeError, match="reverse must be a bool, got str 'false'"):
        m(torch.randn(1, 5, 8), reverse="false")  # a string would have scanned right-to-left
    with pytest.raises(TypeError, match="hidden_states has dtype torch.float64 but the block's parameters are"):
        m(torch.randn(1, 5, 8, dtype=torch.float64))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert m(torch.randn(1, 5, 8)).dtype == torch.bfloat16  # autocast casts per operation
        with pytest.raises(TypeError, match=r"float64 .*float32: convert .*\(autocast never casts float64\)$"):  # but never float64:
            m(torch.randn(1, 5, 8, dtype=torch.float64))  # it failed inside the input projection
    # called as mamba-ssm's block is: forward(hidden_states, inference_params=None); reverse is keyword-only
    x = torch.randn(1, 5, 8)
    assert torch.equal(m(x, None), m(x)) and torch.equal(m(x, inference_params=None), m(x))
    with pytest.raises(NotImplementedError, match="inference_params: step-by-step decoding"):
        m(x, object())
    with pytest.raises(TypeError):
        m(x, None, True)  # type: ignore[misc]
    with pytest.raises(ValueError, match=r"x \(B, T, H, W, C\) must have no empty dim"):
        MaSTMixer(8)(torch.randn(1, 2, 0, 3, 8))


def test_bad_forward_inputs():
    m = Mamba(8)
    with pytest.raises(ValueError, match=r"hidden_states must have shape \(batch, seqlen, d_model=8\)"):
        m(torch.randn(2, 5, 7))
    with pytest.raises(ValueError, match="hidden_states must have shape"):
        m(torch.randn(5, 8))
    with pytest.raises(TypeError, match="hidden_states must be a torch.Tensor"):
        m([[0.0] * 8])
    with pytest.raises(ValueError, match="backend must be None or one of"):
        Mamba(8, backend="fast")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_gpu_module_matches_cpu():
    m = Mamba(32, d_state=8)
    x = torch.randn(2, 64, 32)
    y_cpu = m(x)
    y_gpu = m.cuda()(x.cuda())
    assert torch.allclose(y_gpu.cpu(), y_cpu, rtol=1e-3, atol=1e-3)


def test_a_mamba_block_builds_on_the_meta_device() -> None:
    """The device check keeps ``device="meta"`` (a module built without memory, e.g. to count parameters)."""
    m = Mamba(8, device="meta")
    assert all(p.device.type == "meta" for p in m.parameters())


@pytest.mark.parametrize("backend", ["reference", "chunked", "numba"])
def test_every_backend_reads_x_proj_as_weights_so_a_hook_there_changes_nothing(backend: str) -> None:
    # the reference and chunked paths called x_proj, the numba path (the CPU default) read its weight: a hook or
    # an adapter on x_proj changed the output on one backend and was silently ignored on the other
    if backend == "numba":
        pytest.importorskip("numba")
    torch.manual_seed(0)
    block = Mamba(16, d_state=4, backend=backend)
    x = torch.randn(2, 20, 16)
    with torch.no_grad():
        before = block(x)
        for name in ("in_proj", "conv1d", "x_proj", "dt_proj"):
            getattr(block, name).register_forward_hook(lambda module, args, out: out * 2)
        assert torch.equal(block(x), before)
        block.out_proj.register_forward_hook(lambda module, args, out: out * 2)  # the one module called
        assert torch.equal(block(x), before * 2)


def test_a_replaced_weight_holder_is_refused_by_name() -> None:
    class Adapter(torch.nn.Module):  # e.g. a LoRA wrapper around the projection
        def __init__(self, inner: torch.nn.Linear) -> None:
            super().__init__()
            self.inner = inner

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.inner(x)

    block = Mamba(16, d_state=4, backend="reference")
    block.x_proj = Adapter(block.x_proj)
    with pytest.raises(TypeError, match=r"Mamba\.x_proj must be a torch\.nn\.Linear, got .*Adapter: the block reads"):
        block(torch.randn(1, 5, 16))


def test_a_segmast_is_built_on_the_meta_device() -> None:
    # the encoder's drop-path rates were read from a linspace on the default device: under torch.device("meta")
    # "Cannot copy out of meta tensor"
    from longiseg import build_model

    kw = {"widths": (8, 16, 16, 32), "depths": (1, 1, 1, 1), "decoder_dim": 16, "drop_path_rate": 0.1}
    with torch.device("meta"):
        model = build_model("segmast", **kw)
    assert all(p.is_meta for p in model.parameters())
    torch.manual_seed(0)
    reference = build_model("segmast", **kw)
    model = model.to_empty(device="cpu")
    model.load_state_dict(reference.state_dict())
    x = torch.randn(1, 2, 2, 32, 32)
    with torch.no_grad():
        assert torch.equal(model.eval()(x).baseline, reference.eval()(x).baseline)


def test_a_forced_backend_that_cannot_run_is_a_setting_error_before_any_work(tmp_path, monkeypatch) -> None:
    # train refused it as a setting (exit 2), predict and tune failed at the first case (exit 1, "--debug")
    from longiseg import build_model
    from longiseg.inferers.settings import InferenceConfig
    from longiseg.ssm import check_scan_backend
    from longiseg.workflows.predict import run_prediction

    segmast = build_model("segmast", widths=(8, 16, 16, 32), depths=(1, 1, 1, 1), decoder_dim=16)
    monkeypatch.delenv("LONGISEG_SCAN_BACKEND", raising=False)
    check_scan_backend(segmast, "cpu")  # unset: any backend may run
    monkeypatch.setenv("LONGISEG_SCAN_BACKEND", "cuda")  # mamba-ssm's kernels: not on a CPU
    with pytest.raises(ValueError, match="cuda"):
        check_scan_backend(segmast, "cpu")
    check_scan_backend(build_model("segformer", widths=(8, 16, 16, 32), depths=(1, 1, 1, 1), decoder_dim=16,
                                   num_heads=(1, 1, 1, 2)), "cpu")  # no scan to run
    (tmp_path / "cases").mkdir()
    with pytest.raises(ValueError, match="cuda"):
        run_prediction(segmast, tmp_path / "cases", tmp_path / "out", InferenceConfig(), device="cpu",
                       progress=False)
    assert not (tmp_path / "out").exists()


def test_weight_holders_of_another_form_are_refused_and_parametrized_ones_read() -> None:
    class EightBit(torch.nn.Linear):  # a subclass keeping its weight in another form (as 8-bit layers do)
        pass

    block = Mamba(16, d_state=4, backend="reference")
    x = torch.randn(1, 5, 16)
    old = block.in_proj
    block.in_proj = EightBit(16, old.out_features, bias=False)
    with pytest.raises(TypeError, match=r"Mamba\.in_proj must be a torch\.nn\.Linear, got .*EightBit"):
        block(x)
    block.in_proj = old
    block.x_proj = torch.nn.Linear(block.x_proj.in_features, block.x_proj.out_features, bias=True)
    with pytest.raises(TypeError, match="x_proj must have no bias"):
        block(x)
    # a weight computed by torch.nn.utils.parametrize is what .weight reads: accepted, and used
    import copy

    block = Mamba(16, d_state=4, backend="reference")
    doubled = copy.deepcopy(block)
    with torch.no_grad():
        doubled.x_proj.weight.mul_(2)
        torch.nn.utils.parametrize.register_parametrization(block.x_proj, "weight", _Twice())
        assert torch.allclose(block(x), doubled(x), rtol=1e-5, atol=1e-6)


class _Twice(torch.nn.Module):
    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        return 2 * weight
