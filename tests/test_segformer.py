"""Efficient/global self-attention mixers (against a float64 reference) and the 2.5D SegFormer baseline."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from model_checks import (
    PAPER_PARAM_TARGETS_M,
    SEGFORMER_CANCELLED,
    assert_all_parameters_get_gradients,
    assert_output_shapes,
    assert_params_near,
    assert_training_reduces_loss,
    synthetic_batch,
)

from longiseg import build_model, model_info
from longiseg.networks.blocks.efficient_attention import (
    EfficientSelfAttention,
    GlobalSelfAttention,
    SpatialReductionAttention,
)
from longiseg.networks.blocks.encoder import HierarchicalEncoder
from longiseg.networks.blocks.heads import TimepointHeads
from longiseg.networks.blocks.mlp_decoder import AllMLPDecoder
from longiseg.networks.blocks.segformer_like import LongitudinalSegFormerLike
from longiseg.networks.blocks.st_block import STBlock
from longiseg.networks.nets.segformer import SegFormer
from longiseg.utils.validation import debug_checks

TINY = {"widths": (8, 16, 16, 32), "depths": (1, 1, 1, 1), "num_heads": (1, 2, 2, 4), "decoder_dim": 16,
        "drop_path_rate": 0.0, "decoder_dropout": 0.0}


# ------------------------------------------------------------------------------------- attention mixers


def _reference_attention(mod: SpatialReductionAttention, x: torch.Tensor, joint_time: bool) -> torch.Tensor:
    """Attention written out with explicit matrices, one (sample[, timepoint]) group at a time."""
    b, t, h, w, c = x.shape
    heads, d = mod.num_heads, c // mod.num_heads

    def kv_tokens(grid: torch.Tensor) -> torch.Tensor:  # (H, W, C) -> (L', C)
        r = mod.sr_ratio
        if r == 1 or (h // r) * (w // r) < 2:  # a reduction to a single key is skipped
            return grid.reshape(-1, c)
        patches = grid[: h // r * r, : w // r * r].reshape(h // r, r, w // r, r, c).permute(0, 2, 4, 1, 3)
        reduced = torch.einsum("ijcab,ocab->ijo", patches, mod.sr.weight) + mod.sr.bias
        reduced = reduced.reshape(-1, c)
        mean = reduced.mean(-1, keepdim=True)
        var = reduced.var(-1, unbiased=False, keepdim=True)
        return (reduced - mean) / torch.sqrt(var + mod.norm.eps) * mod.norm.weight + mod.norm.bias

    def attend(queries: torch.Tensor, keys_values: torch.Tensor) -> torch.Tensor:  # (L, C), (L', C)
        q = queries @ mod.q.weight.T + mod.q.bias
        kv = keys_values @ mod.kv.weight.T + mod.kv.bias
        k, v = kv[:, :c], kv[:, c:]
        outs = []
        for i in range(heads):
            sl = slice(i * d, (i + 1) * d)
            scores = q[:, sl] @ k[:, sl].T / math.sqrt(d)
            outs.append(torch.softmax(scores, dim=-1) @ v[:, sl])
        return torch.cat(outs, dim=-1) @ mod.proj.weight.T + mod.proj.bias

    out = torch.empty_like(x)
    for bi in range(b):
        if joint_time:
            kv = torch.cat([kv_tokens(x[bi, ti]) for ti in range(t)])
            out[bi] = attend(x[bi].reshape(-1, c), kv).reshape(t, h, w, c)
        else:
            for ti in range(t):
                out[bi, ti] = attend(x[bi, ti].reshape(-1, c), kv_tokens(x[bi, ti])).reshape(h, w, c)
    return out


@pytest.mark.parametrize("cls, joint", [(EfficientSelfAttention, False), (GlobalSelfAttention, True)])
@pytest.mark.parametrize("sr_ratio", [1, 2, 4, 8])
@pytest.mark.parametrize("grid", [(8, 9), (3, 5)])  # (3, 5): reduced by 2 (1x2 keys), unreduced at 4 and 8
def test_attention_matches_float64_reference(cls: type, joint: bool, sr_ratio: int, grid: tuple[int, int]) -> None:
    mod = cls(12, num_heads=3, sr_ratio=sr_ratio).double()
    x = torch.randn(2, 3, *grid, 12, dtype=torch.float64, requires_grad=True)
    out = mod(x)
    ref = _reference_attention(mod, x, joint)
    assert out.shape == x.shape
    assert ((out - ref).norm() / ref.norm()).item() < 1e-10
    g = torch.randn_like(out)
    params = [p for p in mod.parameters()]
    grads = torch.autograd.grad(out, [x, *params], g, allow_unused=True)
    grads_ref = torch.autograd.grad(ref, [x, *params], g, allow_unused=True)
    for a, r, name in zip(grads, grads_ref, ["x"] + [n for n, _ in mod.named_parameters()]):
        if name.startswith(("sr.", "norm.")) and not mod.reduces(*grid):
            assert r is None and not a.any()  # unused by the function: in the graph with an exact zero (for DDP)
        else:
            assert ((a - r).norm() / r.norm()).item() < 1e-10


def test_efficient_attention_keeps_timepoints_apart_global_mixes_them() -> None:
    x = torch.randn(1, 2, 8, 8, 8)
    x_changed = x.clone()
    x_changed[:, 1] += 1.0 + torch.randn(8, 8, 8)
    eff, glob = EfficientSelfAttention(8, 2, sr_ratio=2), GlobalSelfAttention(8, 2, sr_ratio=2)
    torch.testing.assert_close(eff(x)[:, 0], eff(x_changed)[:, 0])
    assert not torch.allclose(glob(x)[:, 0], glob(x_changed)[:, 0])


def test_attention_errors() -> None:
    with pytest.raises(ValueError, match="divisible by num_heads"):
        EfficientSelfAttention(10, num_heads=3)
    with pytest.raises(ValueError, match="sr_ratio"):
        EfficientSelfAttention(8, sr_ratio=0)
    mod = EfficientSelfAttention(8, sr_ratio=4)
    with pytest.raises(ValueError, match=r"\(B, T, H, W, C\)"):
        mod(torch.randn(2, 8, 8, 8))
    with pytest.raises(ValueError, match="C=8"):
        mod(torch.randn(1, 2, 8, 8, 4))
    with pytest.raises(TypeError, match="torch.Tensor"):
        mod("tokens")


def test_single_key_attention_is_the_value_projection() -> None:
    """One key gets attention weight 1 (softmax of a single score), whatever the query: the output is the
    projected value, and changing the query projection changes nothing. Exact by construction."""
    mod = EfficientSelfAttention(8, num_heads=2).double()
    x = torch.randn(3, 2, 1, 1, 8, dtype=torch.float64)  # a 1x1 grid per timepoint
    v = mod.kv(x)[..., 8:]
    torch.testing.assert_close(mod(x), mod.proj(v))
    with torch.no_grad():
        mod.q.weight.copy_(torch.randn(8, 8))
    torch.testing.assert_close(mod(x), mod.proj(v))


@pytest.mark.parametrize("cls", [EfficientSelfAttention, GlobalSelfAttention])
def test_reduction_never_leaves_a_single_key(cls: type) -> None:
    """A grid whose reduction would leave one key (or none) attends to its own tokens, so the query matters."""
    mod = cls(8, num_heads=2, sr_ratio=8).double()
    assert [mod.reduces(*g) for g in [(8, 8), (15, 15), (4, 30), (16, 8), (8, 16)]] == [False] * 3 + [True] * 2
    grid = torch.randn(2, 8, 8, 8, dtype=torch.float64)
    assert mod.reduce(grid).shape == (2, 64, 8)  # the real tokens, not one reduced token
    assert mod.reduce(torch.randn(2, 16, 8, 8, dtype=torch.float64)).shape == (2, 2, 8)
    x = torch.randn(1, 2, 8, 8, 8, dtype=torch.float64)
    out = mod(x)
    with torch.no_grad():
        mod.q.weight.mul_(-1.0)  # reverses every attention score's query term
    changed = mod(x)
    assert ((out - changed).norm() / out.norm()).item() > 1e-3  # far above float64 rounding
    assert mod(torch.randn(1, 2, 3, 2, 8, dtype=torch.float64)).shape == (1, 2, 3, 2, 8)  # smaller than R: fine


# ------------------------------------------------------------------------------------------- SegFormer


def test_segformer_shares_segmast_building_blocks() -> None:
    model = build_model("segformer", **TINY)
    assert isinstance(model, LongitudinalSegFormerLike)
    assert isinstance(model.encoder, HierarchicalEncoder)
    assert isinstance(model.decoder, AllMLPDecoder) and isinstance(model.heads, TimepointHeads)
    blocks = [blk for stage in model.encoder.stages for blk in stage.blocks]
    # default: MiT spatial-reduction attention over the tokens of all timepoints
    assert blocks and all(isinstance(blk, STBlock) and isinstance(blk.mixer, GlobalSelfAttention)
                          for blk in blocks)
    assert [stage.blocks[0].mixer.sr_ratio for stage in model.encoder.stages] == [8, 4, 2, 1]
    per_tp = build_model("segformer", attention="efficient", **TINY)
    assert all(isinstance(stage.blocks[0].mixer, EfficientSelfAttention) for stage in per_tp.encoder.stages)
    assert sum(p.numel() for p in per_tp.parameters()) == sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize(("attention", "sees_baseline"), [("global", True), ("efficient", False)])
def test_segformer_progression_head_sees_the_baseline(attention: str, sees_baseline: bool) -> None:
    """A longitudinal model's progression output must depend on the baseline image; the per-timepoint
    ablation's cannot."""
    torch.manual_seed(0)
    model = build_model("segformer", in_channels=1, attention=attention, **TINY).eval()
    x = torch.randn(2, 2, 1, 64, 64)
    x2 = x.clone()
    x2[:, 0] = torch.randn(2, 1, 64, 64)  # change only the baseline
    with torch.no_grad():
        p1, p2 = model(x).progression, model(x2).progression
    assert (not torch.allclose(p1, p2, atol=1e-6)) == sees_baseline


@pytest.mark.parametrize("timepoints, size", [(2, (32, 32)), (3, (40, 36))])
def test_segformer_forward_shapes(timepoints: int, size: tuple[int, int]) -> None:
    model = build_model("segformer", in_channels=2, out_channels=2, **TINY)
    assert_output_shapes(model(torch.randn(2, timepoints, 2, *size)), 2, timepoints, 2, size)


def test_segformer_fixed_t_with_per_followup_heads() -> None:
    model = build_model("segformer", in_channels=1, num_timepoints=3, shared_progression_head=False, **TINY)
    assert_output_shapes(model(torch.randn(1, 3, 1, 32, 32)), 1, 3, 1, (32, 32))
    with pytest.raises(ValueError, match="num_timepoints=3"):
        model(torch.randn(1, 2, 1, 32, 32))


@pytest.mark.parametrize("attention", ["efficient", "global"])
def test_segformer_gradients_reach_every_parameter(attention: str) -> None:
    # 64x64: every stage has a 2x2 grid or more per timepoint after its reduction (16x16 / 8, ..., 2x2 / 1),
    # so every query has at least four keys to choose from and every reduction convolution is used
    model = build_model("segformer", in_channels=1, attention=attention, **TINY)
    assert_all_parameters_get_gradients(model, torch.randn(2, 2, 1, 64, 64), cancelled=SEGFORMER_CANCELLED)


def test_a_reduction_small_grids_skip_stays_in_the_graph_with_a_zero_gradient() -> None:
    """At 32x32 stages 0-2 attend without reduction: their reduction's parameters had no gradient at all, which
    DistributedDataParallel without find_unused_parameters rejects; they get an exact zero, and the outputs are
    the same function (the reduction's weights do not change them)."""
    torch.manual_seed(0)
    model = build_model("segformer", in_channels=1, attention="efficient", **TINY)
    x = torch.randn(2, 2, 1, 32, 32)
    out = model(x)
    (out.baseline.sum() + out.progression.sum()).backward()
    unused = {n: p.grad for n, p in model.named_parameters() if ".sr." in n or ".norm." in n and "mixer" in n}
    assert unused and all(g is not None and not g.any() for g in unused.values())
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name in unused:
                p.mul_(3.0)
        again = model(x)
    assert torch.equal(again.baseline, out.baseline.detach()) and torch.equal(again.progression,
                                                                              out.progression.detach())


def test_segformer_training_reduces_loss() -> None:
    model = build_model("segformer", in_channels=1, **TINY)
    images, baseline, progression = synthetic_batch(2, 2, 1, (32, 32))
    assert_training_reduces_loss(model, images, baseline, progression)


@pytest.mark.parametrize(
    "name, target_m",
    [
        ("segformer_b0", 3.8),  # SegFormer-B0 (Xie et al., 2021): 3.4M encoder + 0.4M decoder
        ("segformer_b1", 13.7),  # SegFormer-B1: 13.1M encoder + 0.6M decoder
        ("segformer_ms", PAPER_PARAM_TARGETS_M[("2.5D", "ms")]),
        ("segformer_glioma", PAPER_PARAM_TARGETS_M[("2.5D", "glioma")]),
    ],
)
def test_named_config_parameter_counts(name: str, target_m: float) -> None:
    assert model_info(name).dim == "2.5D"
    assert_params_near(build_model(name), target_m)


def test_segformer_errors() -> None:
    with pytest.raises(ValueError, match="attention"):
        SegFormer(attention="linear")
    with pytest.raises(ValueError, match=r"num_heads must have 4 entries \(attention heads of the 4 stages\)"):
        SegFormer(num_heads=(1, 2, 5))
    with pytest.raises(ValueError, match="divisible by num_heads"):
        SegFormer(widths=(32, 64, 160, 250))
    with pytest.raises(ValueError, match="num_timepoints is required"):
        SegFormer(shared_progression_head=False)
    for name in ("attn_dropout", "decoder_dropout", "drop_path_rate"):  # the decoder's said "dropout"
        with pytest.raises(ValueError, match=rf"^{name} must lie in \[0, 1\], got -1"):
            SegFormer(**{name: -1})
    model = build_model("segformer", in_channels=2, **TINY)
    with pytest.raises(ValueError, match="C=1"):
        model(torch.randn(1, 2, 1, 32, 32))
    with pytest.raises(ValueError, match=r"\(B, T, C, H, W\)"):
        model(torch.randn(1, 2, 2, 32))
    with debug_checks(), pytest.raises(ValueError, match="NaN"):
        model(torch.full((1, 2, 2, 32, 32), float("nan")))


def test_sdpa_matches_manual_softmax_in_float32_too() -> None:
    """The SDPA fast path in float32 agrees with the float64 reference to float32 accuracy."""
    mod = EfficientSelfAttention(16, num_heads=2, sr_ratio=2)
    x = torch.randn(1, 2, 8, 8, 16)
    ref = _reference_attention(mod.double(), x.double(), joint_time=False)
    out = mod.float()(x)
    assert ((out.double() - ref).norm() / ref.norm()).item() < 1e-5
    assert F.mse_loss(out.double(), ref).item() < 1e-10


def test_segformer_argument_types_are_checked() -> None:
    """Strings for bools are refused (``"false"`` would enable the bias), a bare int for a sequence too."""
    with pytest.raises(TypeError, match="qkv_bias must be a bool, got str 'false'"):
        SegFormer(qkv_bias="false")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="shared_progression_head must be a bool, got str 'no'"):
        SegFormer(shared_progression_head="no")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"widths must be a sequence of ints \(channels of the 4 stages\), got int 8"):
        build_model("segformer", widths=8)
    with pytest.raises(ValueError, match="mlp_ratio must be a finite number > 0, got inf"):
        build_model("segformer", mlp_ratio=float("inf"), **TINY)
    model = SegFormer(qkv_bias=False, **TINY)
    assert all(m.q.bias is None for m in model.modules() if hasattr(m, "q"))
