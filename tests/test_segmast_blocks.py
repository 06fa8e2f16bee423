"""Tests of SegMaST's building blocks: orderings, MaST mixer, Mix-FFN, ST block, patch embedding, encoder,
all-MLP decoder and the timepoint heads."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from longiseg.networks.blocks import (
    AllMLPDecoder,
    FusedDualHead,
    HierarchicalEncoder,
    MaSTMixer,
    MixFFN,
    OverlapPatchEmbed,
    STBlock,
    TimepointHeads,
    spatial_first,
    spatial_first_inverse,
    temporal_first,
    temporal_first_inverse,
)
from longiseg.networks.output import LongitudinalOutput
from longiseg.utils.validation import debug_checks


def _coded_grid(b: int, t: int, h: int, w: int) -> torch.Tensor:
    """(B, T, H, W, 4) grid whose channels hold the (b, t, h, w) coordinates of each token."""
    bb, tt, hh, ww = torch.meshgrid(
        torch.arange(b), torch.arange(t), torch.arange(h), torch.arange(w), indexing="ij"
    )
    return torch.stack([bb, tt, hh, ww], dim=-1).float()


# ----------------------------------------------------------------------------------------------- orderings
@pytest.mark.parametrize("t,h,w", [(2, 3, 4), (3, 2, 5), (2, 1, 1)])
def test_temporal_first_places_tokens_time_major(t: int, h: int, w: int) -> None:
    x = _coded_grid(2, t, h, w)
    seq = temporal_first(x)
    assert seq.shape == (2, t * h * w, 4)
    for ti in range(t):
        for hi in range(h):
            for wi in range(w):
                assert seq[1, ti * h * w + hi * w + wi].tolist() == [1, ti, hi, wi]
    # all tokens of t0 come first, then all of t1
    assert (seq[:, : h * w, 1] == 0).all() and (seq[:, h * w : 2 * h * w, 1] == 1).all()
    assert torch.equal(temporal_first_inverse(seq, t, h, w), x)


@pytest.mark.parametrize("t,h,w", [(2, 3, 4), (3, 2, 5), (2, 1, 1)])
def test_spatial_first_places_timepoints_side_by_side(t: int, h: int, w: int) -> None:
    x = _coded_grid(2, t, h, w)
    seq = spatial_first(x)
    assert seq.shape == (2, h * w * t, 4)
    for ti in range(t):
        for hi in range(h):
            for wi in range(w):
                assert seq[0, (hi * w + wi) * t + ti].tolist() == [0, ti, hi, wi]
    # consecutive blocks of T tokens share their location and run through t = 0..T-1
    blocks = seq.reshape(2, h * w, t, 4)
    assert (blocks[..., 2:] == blocks[..., :1, 2:]).all()
    assert (blocks[..., 1] == torch.arange(t).float()).all()
    assert torch.equal(spatial_first_inverse(seq, t, h, w), x)


def test_orderings_round_trip_random_values() -> None:
    x = torch.randn(3, 3, 5, 7, 6)
    assert torch.equal(temporal_first_inverse(temporal_first(x), 3, 5, 7), x)
    assert torch.equal(spatial_first_inverse(spatial_first(x), 3, 5, 7), x)
    # the two orderings are permutations of the same tokens, different ones for T, H*W > 1
    assert not torch.equal(temporal_first(x), spatial_first(x))
    assert torch.equal(temporal_first(x).sort(dim=1).values, spatial_first(x).sort(dim=1).values)


def test_ordering_errors() -> None:
    with pytest.raises(ValueError, match=r"\(B, T, H, W, C\)"):
        temporal_first(torch.zeros(2, 3, 4, 5))
    with pytest.raises(TypeError, match="x must be a torch.Tensor"):
        spatial_first([1, 2, 3])  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="seq length must be"):
        spatial_first_inverse(torch.zeros(1, 10, 4), 2, 2, 3)
    with pytest.raises(ValueError, match=r"\(B, L, C\)"):
        temporal_first_inverse(torch.zeros(12, 4), 2, 2, 3)


# ---------------------------------------------------------------------------------------------- MaST mixer
def _mast_reference(mixer: MaSTMixer, x: torch.Tensor) -> torch.Tensor:
    """Explicit-loop reference of the MaST mixer (default options): build both sequences token by token."""
    b, t, h, w, c = x.shape
    seq_t = torch.stack([x[:, ti, hi, wi] for ti in range(t) for hi in range(h) for wi in range(w)], dim=1)
    seq_s = torch.stack([x[:, ti, hi, wi] for hi in range(h) for wi in range(w) for ti in range(t)], dim=1)
    out_t, out_s = mixer.mamba_temporal(seq_t), mixer.mamba_spatial(seq_s)
    y = torch.zeros_like(x)
    for ti in range(t):
        for hi in range(h):
            for wi in range(w):
                y[:, ti, hi, wi] = out_t[:, ti * h * w + hi * w + wi] + out_s[:, (hi * w + wi) * t + ti]
    return y


@pytest.mark.parametrize("t", [2, 3])
def test_mast_matches_explicit_reference_float64(t: int) -> None:
    mixer = MaSTMixer(8, d_state=4, mamba_kwargs={"backend": "reference"}).double()
    x = torch.randn(2, t, 3, 4, 8, dtype=torch.float64, requires_grad=True)
    x_ref = x.detach().clone().requires_grad_(True)
    y, y_ref = mixer(x), _mast_reference(mixer, x_ref)
    assert y.shape == x.shape
    assert ((y - y_ref).norm() / y_ref.norm()).item() < 1e-12
    g = torch.randn_like(y)
    (gx,) = torch.autograd.grad(y, x, g)
    (gx_ref,) = torch.autograd.grad(y_ref, x_ref, g)
    assert ((gx - gx_ref).norm() / gx_ref.norm()).item() < 1e-12


def test_mast_timepoints_are_a_runtime_property() -> None:
    mixer = MaSTMixer(8, d_state=4)
    for t in (2, 3, 4):
        assert mixer(torch.randn(1, t, 2, 3, 8)).shape == (1, t, 2, 3, 8)


def test_mast_mixes_across_time_and_space() -> None:
    torch.manual_seed(1)
    mixer = MaSTMixer(8, d_state=4)
    x = torch.randn(1, 2, 3, 3, 8)
    y = mixer(x)
    x2 = x.clone()
    x2[0, 1, 0, 0] += 1.0  # perturb the follow-up at the first location
    y2 = mixer(x2)
    # spatial-first: the baseline token of the next location comes after (t1, 0, 0) in the scan
    assert not torch.allclose(y[0, 0, 0, 1], y2[0, 0, 0, 1])
    # forward scans are causal: the very first token (t0, 0, 0) comes first in both orderings
    assert torch.allclose(y[0, 0, 0, 0], y2[0, 0, 0, 0])


def test_mast_bidirectional_sees_the_future() -> None:
    mixer = MaSTMixer(8, d_state=4, bidirectional=True)
    x = torch.randn(1, 2, 3, 3, 8)
    x2 = x.clone()
    x2[0, 1, 2, 2] += 1.0  # the last token of both orderings
    assert not torch.allclose(mixer(x)[0, 0, 0, 0], mixer(x2)[0, 0, 0, 0])
    # the reverse scan reuses the forward weights: no extra parameters
    n_uni = sum(p.numel() for p in MaSTMixer(8, d_state=4).parameters())
    assert sum(p.numel() for p in mixer.parameters()) == n_uni


def test_mast_options_parameter_counts_and_fusions() -> None:
    def n(m: nn.Module) -> int:
        return sum(p.numel() for p in m.parameters())

    separate, shared = MaSTMixer(16), MaSTMixer(16, share_mamba=True)
    assert n(separate) == 2 * n(shared)
    assert shared.mamba_spatial is None
    linear = MaSTMixer(16, fusion="linear")
    assert n(linear) == n(separate) + 2 * 16 * 16 + 16
    x = torch.randn(1, 2, 2, 2, 16)
    mean = MaSTMixer(16, fusion="mean")
    mean.load_state_dict(separate.state_dict())
    assert torch.allclose(mean(x), 0.5 * separate(x), atol=1e-6)
    assert linear(x).shape == x.shape


def test_mast_difference_weighting_option() -> None:
    mixer = MaSTMixer(8, d_state=4, difference_weighting=True)
    assert mixer.difference_weighting is not None
    x = torch.randn(2, 3, 2, 2, 8)
    assert mixer(x).shape == x.shape
    # identical timepoints: the freshly initialised DW block is the identity, so the output equals the plain mixer's
    plain = MaSTMixer(8, d_state=4)
    plain.load_state_dict(mixer.state_dict(), strict=False)
    same = x[:, :1].expand(2, 3, 2, 2, 8).contiguous()
    assert torch.allclose(mixer(same), plain(same), atol=1e-6)
    # different follow-ups: DW changes the result
    assert not torch.allclose(mixer(x), plain(x), atol=1e-4)


def test_mast_errors() -> None:
    mixer = MaSTMixer(8, d_state=4)
    with pytest.raises(ValueError, match="timepoints T"):
        mixer(torch.randn(1, 1, 2, 2, 8))
    with pytest.raises(ValueError, match="C=8"):
        mixer(torch.randn(1, 2, 2, 2, 4))
    with pytest.raises(ValueError, match=r"\(B, T, H, W, C\)"):
        mixer(torch.randn(2, 2, 2, 8))
    with pytest.raises(ValueError, match="fusion must be one of"):
        MaSTMixer(8, fusion="max")


# ------------------------------------------------------------------------------------ Mix-FFN and ST block
def test_mix_ffn_shapes_and_per_timepoint_locality() -> None:
    ffn = MixFFN(8, hidden_dim=16)
    x = torch.randn(2, 3, 4, 5, 8)
    y = ffn(x)
    assert y.shape == x.shape
    x2 = x.clone()
    x2[:, 1] += 1.0
    y2 = ffn(x2)
    torch.testing.assert_close(y2[:, 0], y[:, 0])
    torch.testing.assert_close(y2[:, 2], y[:, 2])
    assert not torch.allclose(y[:, 1], y2[:, 1])
    # the 3x3 depthwise conv mixes neighbours only: a far-away token is untouched
    x3 = x.clone()
    x3[:, :, 0, 0] += 1.0
    y3 = ffn(x3)
    assert torch.allclose(y3[:, :, 3:, 3:], y[:, :, 3:, 3:]) and not torch.allclose(
        y3[:, :, 1, 1], y[:, :, 1, 1]
    )
    assert MixFFN(8).hidden_dim == 32


def test_mix_ffn_errors() -> None:
    with pytest.raises(ValueError, match=r"\(\*, H, W, C\) with C=8"):
        MixFFN(8)(torch.randn(2, 4, 4, 6))
    with pytest.raises(ValueError, match="dropout"):
        MixFFN(8, dropout=1.5)


class _ZeroMixer(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.zeros_like(x)


def test_st_block_is_pre_norm_residual_and_pluggable() -> None:
    block = STBlock(8, _ZeroMixer(), mlp_ratio=2.0)
    nn.init.zeros_(block.ffn.fc2.weight)
    nn.init.zeros_(block.ffn.fc2.bias)
    x = torch.randn(2, 2, 3, 3, 8)
    assert torch.equal(block(x), x)  # both branches exactly zero -> x + 0 + 0 = x, exact by construction
    mast_block = STBlock(8, MaSTMixer(8, d_state=4), drop_path=0.2)
    assert mast_block(x).shape == x.shape
    assert mast_block.ffn.hidden_dim == 32


def test_st_block_drop_path_drops_whole_samples_in_training() -> None:
    torch.manual_seed(3)
    block = STBlock(8, _ZeroMixer(), drop_path=0.5).train()
    x = torch.randn(64, 2, 2, 2, 8)
    delta = (block(x) - x).flatten(1).abs().sum(1)
    # some samples dropped (x + 0 * branch: exactly x), some kept (their branch changes them by order one)
    assert (delta == 0).any() and (delta > 1e-3).any()
    block.eval()
    assert ((block(x) - x).flatten(1).abs().sum(1) > 1e-3).all()


def test_st_block_errors() -> None:
    with pytest.raises(TypeError, match="mixer must be an nn.Module"):
        STBlock(8, lambda x: x)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="drop_path"):
        STBlock(8, _ZeroMixer(), drop_path=2.0)
    with pytest.raises(ValueError, match=r"\(B, T, H, W, C\)"):
        STBlock(8, _ZeroMixer())(torch.randn(2, 3, 3, 8))


# ---------------------------------------------------------------------------------- patch embed, encoder
@pytest.mark.parametrize("size,k,s,out", [(32, 7, 4, 8), (30, 7, 4, 8), (8, 3, 2, 4), (7, 3, 2, 4)])
def test_overlap_patch_embed_shapes(size: int, k: int, s: int, out: int) -> None:
    embed = OverlapPatchEmbed(3, 16, kernel_size=k, stride=s)
    y = embed(torch.randn(4, 3, size, size))
    assert y.shape == (4, out, out, 16)
    # LayerNorm over channels: zero mean per token
    assert torch.allclose(y.mean(-1), torch.zeros(4, out, out), atol=1e-5)


def test_overlap_patch_embed_errors() -> None:
    with pytest.raises(ValueError, match="kernel_size must be odd"):
        OverlapPatchEmbed(3, 16, kernel_size=4, stride=2)
    with pytest.raises(ValueError, match="C_in=3"):
        OverlapPatchEmbed(3, 16)(torch.randn(1, 2, 16, 16))
    with pytest.raises(ValueError, match=r"\(N, C_in, H, W\)"):
        OverlapPatchEmbed(3, 16)(torch.randn(1, 3, 16))


class _LinearMixer(nn.Module):
    """A trivial per-token mixer: shows the encoder is generic over its blocks."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x)


def test_hierarchical_encoder_shapes_and_drop_path_schedule() -> None:
    rates: list[tuple[int, float]] = []

    def factory(stage: int, dim: int, drop_path: float) -> nn.Module:
        rates.append((stage, drop_path))
        return STBlock(dim, _LinearMixer(dim), drop_path=drop_path)

    enc = HierarchicalEncoder(3, factory, widths=(4, 8, 12, 16), depths=(1, 2, 0, 1), drop_path_rate=0.3)
    assert [s for s, _ in rates] == [0, 1, 1, 3]
    assert [r for _, r in rates] == pytest.approx([0.0, 0.1, 0.2, 0.3])
    feats = enc(torch.randn(2, 3, 3, 64, 32))
    assert [tuple(f.shape) for f in feats] == [(6, 4, 16, 8), (6, 8, 8, 4), (6, 12, 4, 2), (6, 16, 2, 1)]


def test_hierarchical_encoder_errors() -> None:
    def factory(stage: int, dim: int, drop_path: float) -> nn.Module:
        return STBlock(dim, _LinearMixer(dim))

    with pytest.raises(ValueError, match="4 entries"):
        HierarchicalEncoder(2, factory, widths=(4, 8, 16), depths=(1, 1, 1))
    enc = HierarchicalEncoder(2, factory, widths=(4, 4, 4, 4), depths=(1, 1, 1, 1))
    with pytest.raises(ValueError, match="2 channels"):
        enc(torch.randn(1, 2, 3, 32, 32))
    with debug_checks(), pytest.raises(ValueError, match="NaN"):
        enc(torch.full((1, 2, 2, 32, 32), float("nan")))


# ------------------------------------------------------------------------------------------------ decoder
def test_all_mlp_decoder_shapes_and_timepoint_separation() -> None:
    dec = AllMLPDecoder((4, 8, 12, 16), embed_dim=10, dropout=0.0).eval()
    b, t = 2, 3
    feats = [torch.randn(b * t, c, 16 // 2**i, 12 // 2**i) for i, c in enumerate((4, 8, 12, 16))]
    y = dec(feats, t)
    assert y.shape == (b, t, 10, 16, 12)
    # timepoint (b=1, t=2) is row 1*3+2 = 5 of the folded batch: changing it changes only that timepoint
    feats2 = [f.clone() for f in feats]
    feats2[2][5] += 1.0
    y2 = dec(feats2, t)
    changed = (y2 - y).flatten(2).abs().sum(-1) > 1e-3  # the changed timepoint moves by order one per value
    assert changed.tolist() == [[False, False, False], [False, False, True]]


@pytest.mark.parametrize("train", [False, True])
def test_all_mlp_decoder_folded_forward_equals_concatenating_form_float64(train: bool) -> None:
    """forward() folds projections into the fusing weights: same values and gradients as project-cat-fuse."""
    torch.manual_seed(11)
    dec = AllMLPDecoder((4, 8, 12, 16), embed_dim=10, dropout=0.0).double()
    with torch.no_grad():  # non-trivial BatchNorm statistics and affine parameters
        bn = dec.fuse[1]
        bn.running_mean.normal_()
        bn.running_var.uniform_(0.5, 2.0)
        bn.weight.normal_()
        bn.bias.normal_()
    dec.train(train)
    feats = [
        torch.randn(6, c, s, s + 1, dtype=torch.float64, requires_grad=True)
        for c, s in zip((4, 8, 12, 16), (16, 8, 4, 2))
    ]
    out = dec(feats, num_timepoints=3)
    ref = dec.forward_concat(feats, num_timepoints=3)
    assert out.shape == ref.shape == (2, 3, 10, 16, 17)
    torch.testing.assert_close(out, ref, rtol=1e-12, atol=1e-12)
    w = torch.randn_like(out)
    params = list(dec.parameters())
    g = torch.autograd.grad((out * w).sum(), feats + params)
    g_ref = torch.autograd.grad((ref * w).sum(), feats + params)
    for a, b in zip(g, g_ref):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-11)


def test_all_mlp_decoder_errors() -> None:
    dec = AllMLPDecoder((4, 8), embed_dim=6)
    with pytest.raises(ValueError, match="must hold 2 maps"):
        dec([torch.randn(2, 4, 8, 8)], 2)
    with pytest.raises(ValueError, match=r"features\[1\] must be"):
        dec([torch.randn(2, 4, 8, 8), torch.randn(2, 5, 4, 4)], 2)
    with pytest.raises(ValueError, match="not a multiple of num_timepoints"):
        dec([torch.randn(3, 4, 8, 8), torch.randn(3, 8, 4, 4)], 2)


# -------------------------------------------------------------------------------------------------- heads
def test_timepoint_heads_pick_timepoints_and_upsample() -> None:
    heads = TimepointHeads(6, out_channels=2)
    f = torch.randn(2, 3, 6, 4, 5)
    out = heads(f, output_size=(16, 20))
    assert isinstance(out, LongitudinalOutput)
    assert out.baseline.shape == (2, 2, 16, 20) and out.progression.shape == (2, 2, 2, 16, 20)
    # baseline depends on t0 only; progression map i on follow-up i+1 only
    f2 = f.clone()
    f2[:, 2] += 1.0
    out2 = heads(f2, output_size=(16, 20))
    torch.testing.assert_close(out2.baseline, out.baseline)
    torch.testing.assert_close(out2.progression[:, 0], out.progression[:, 0])
    assert not torch.allclose(out.progression[:, 1], out2.progression[:, 1])
    # without output_size the logits stay at feature resolution; the shared head handles any T
    assert heads(torch.randn(1, 2, 6, 4, 5)).progression.shape == (1, 1, 2, 4, 5)


def test_timepoint_heads_per_followup_and_3d() -> None:
    heads = TimepointHeads(4, shared_progression=False, num_followups=2)
    assert len(heads.progression) == 2
    f = torch.randn(1, 3, 4, 3, 3)
    out = heads(f)
    manual = heads.progression[1](f[:, 2])
    assert torch.allclose(out.progression[:, 1], manual)
    with pytest.raises(ValueError, match="num_followups=2"):
        heads(torch.randn(1, 2, 4, 3, 3))
    with pytest.raises(ValueError, match="num_followups .* is required"):
        TimepointHeads(4, shared_progression=False)
    heads3d = TimepointHeads(4, spatial_dims=3)
    out3d = heads3d(torch.randn(2, 2, 4, 2, 3, 3), output_size=(4, 6, 6))
    assert out3d.baseline.shape == (2, 1, 4, 6, 6) and out3d.progression.shape == (2, 1, 1, 4, 6, 6)


def test_timepoint_heads_errors() -> None:
    heads = TimepointHeads(4)
    with pytest.raises(ValueError, match=r"\(B, T, C, H, W\) with C=4"):
        heads(torch.randn(1, 2, 3, 4, 4))
    with pytest.raises(ValueError, match="timepoints T"):
        heads(torch.randn(1, 1, 4, 4, 4))
    with pytest.raises(ValueError, match="output_size must have 2"):
        heads(torch.randn(1, 2, 4, 4, 4), output_size=(8, 8, 8))
    with pytest.raises(ValueError, match="spatial_dims must be 2 or 3"):
        TimepointHeads(4, spatial_dims=1)


@pytest.mark.parametrize("spatial", [(8, 6), (4, 6, 5)])
def test_fused_dual_head(spatial: tuple[int, ...]) -> None:
    head = FusedDualHead(5, num_timepoints=3, out_channels=2, spatial_dims=len(spatial))
    f = torch.randn(2, 5, *spatial)
    out = head(f)
    assert out.baseline.shape == (2, 2, *spatial)
    assert out.progression.shape == (2, 2, 2, *spatial)
    # progression channel layout: follow-up major, then K
    raw = head.progression(f)
    torch.testing.assert_close(out.progression[:, 1, 0], raw[:, 2])
    with pytest.raises(ValueError, match="C=5"):
        head(torch.randn(2, 4, *spatial))
    with pytest.raises(ValueError, match="num_timepoints must be >= 2"):
        FusedDualHead(5, num_timepoints=1)


def test_mast_mixer_and_st_block_argument_types() -> None:
    with pytest.raises(TypeError, match="bidirectional must be a bool, got str 'false'"):
        MaSTMixer(8, bidirectional="false")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="difference_weighting must be a bool"):
        MaSTMixer(8, difference_weighting="no")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="mlp_ratio must be a finite number > 0, got inf"):
        STBlock(8, _ZeroMixer(), mlp_ratio=float("inf"))
    with pytest.raises(TypeError, match="mlp_ratio must be a number > 0, got str"):
        STBlock(8, _ZeroMixer(), mlp_ratio="4")  # type: ignore[arg-type]
