"""Tests for the per-sample Dice-Focal loss and the imbalance-aware loss accumulation."""

from __future__ import annotations

import math

import pytest
import torch

from longiseg.losses import (
    ImbalanceAwareLoss,
    PerSampleDiceFocalLoss,
    dice_focal_per_sample,
    dice_loss_per_sample,
    new_lesion_logits,
    num_empty_to_keep,
    progression_presence,
    select_progression_samples,
    sigmoid_focal_loss_per_sample,
)
from longiseg.networks.output import LongitudinalOutput
from longiseg.utils.validation import debug_checks

# ----------------------------------------------------------------------------------------------------------
# helpers


def _rand_case(b: int, k: int, spatial: tuple[int, ...], p: float = 0.3, dtype=torch.float64):
    logits = 2.0 * torch.randn(b, k, *spatial, dtype=dtype)
    target = torch.rand(b, k, *spatial) < p
    return logits, target


def _progression_target(
    flags: list[list[int]], k: int = 1, spatial: tuple[int, ...] = (4, 4)
) -> torch.Tensor:
    """``(B, T-1, K, *S)`` masks: a non-empty mask (one voxel) where ``flags[b][j]`` is 1."""
    f = torch.tensor(flags, dtype=torch.bool)
    target = torch.zeros(*f.shape, k, *spatial)
    target.flatten(2)[..., 0] = f.float()
    return target


def _mse(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return (logits - target.to(logits.dtype)).pow(2).flatten(1).mean(1)


# ----------------------------------------------------------------------------------------------------------
# per-sample Dice-Focal: hand-computed values and numerics


def test_dice_focal_hand_computed():
    # logits (0, ln 3) -> p = (0.5, 0.75); target (1, 0)
    logits = torch.tensor([[[0.0, math.log(3.0)]]], dtype=torch.float64)
    target = torch.tensor([[[1, 0]]])
    dice = 1.0 - (2 * 0.5 + 1e-5) / (1.25 + 1.0 + 1e-5)
    # voxel 1: p_t = 0.5, bce = ln 2; voxel 2: p_t = 0.25, bce = ln 4
    focal_g2 = (0.5**2 * math.log(2) + 0.75**2 * math.log(4)) / 2
    focal_g2_a = (0.25 * 0.5**2 * math.log(2) + 0.75 * 0.75**2 * math.log(4)) / 2
    assert dice_loss_per_sample(logits, target).item() == pytest.approx(dice, rel=1e-12)
    assert sigmoid_focal_loss_per_sample(logits, target).item() == pytest.approx(focal_g2, rel=1e-12)
    assert sigmoid_focal_loss_per_sample(logits, target, alpha=0.25).item() == pytest.approx(
        focal_g2_a, rel=1e-12
    )
    loss = PerSampleDiceFocalLoss(lambda_dice=0.7, lambda_focal=2.0, alpha=0.25)(logits, target)
    assert loss.shape == (1,)
    assert loss.item() == pytest.approx(0.7 * dice + 2.0 * focal_g2_a, rel=1e-12)


def test_focal_gamma_zero_is_bce():
    logits, target = _rand_case(3, 2, (5, 4))
    bce = torch.nn.functional.binary_cross_entropy_with_logits(logits, target.double(), reduction="none")
    got = sigmoid_focal_loss_per_sample(logits, target, gamma=0.0)
    torch.testing.assert_close(got, bce.flatten(1).mean(1), rtol=1e-12, atol=0)


def test_dice_focal_matches_naive_reference_float64_with_grad():
    logits, target = _rand_case(3, 2, (4, 3, 5))
    gamma, alpha = 1.5, 0.3
    x = logits.clone().requires_grad_(True)
    got = dice_focal_per_sample(x, target, gamma=gamma, alpha=alpha, lambda_dice=0.5)
    xr = logits.clone().requires_grad_(True)
    p, y = torch.sigmoid(xr), target.double()
    dims = tuple(range(2, y.ndim))
    dice = 1 - (2 * (p * y).sum(dims) + 1e-5) / (p.sum(dims) + y.sum(dims) + 1e-5)
    pt = torch.where(y > 0, p, 1 - p)
    at = torch.where(y > 0, torch.full_like(p, alpha), torch.full_like(p, 1 - alpha))
    focal = -at * (1 - pt) ** gamma * torch.log(pt)
    ref = 0.5 * dice.mean(1) + focal.flatten(1).mean(1)
    torch.testing.assert_close(got, ref, rtol=1e-10, atol=1e-12)
    w = torch.rand(3, dtype=torch.float64)
    (got * w).sum().backward()
    (ref * w).sum().backward()
    torch.testing.assert_close(x.grad, xr.grad, rtol=1e-8, atol=1e-12)


def test_dice_focal_saturated_logits_finite_and_half_upcast():
    logits = torch.tensor([[[100.0, -100.0, 100.0, -100.0]]], requires_grad=True)
    target = torch.tensor([[[1, 0, 0, 1]]])
    loss = dice_focal_per_sample(logits, target)
    loss.sum().backward()
    assert torch.isfinite(loss).all() and torch.isfinite(logits.grad).all()
    half = torch.randn(2, 1, 4, 4).half()
    out = dice_focal_per_sample(half, torch.zeros(2, 1, 4, 4))
    assert out.dtype == torch.float32 and out.shape == (2,)


def test_dice_focal_accepts_bool_int_float_targets():
    logits, target = _rand_case(2, 1, (6, 6))
    ref = dice_focal_per_sample(logits, target)
    for t in (target.int(), target.long(), target.float(), target.double(), target.to(torch.uint8)):
        torch.testing.assert_close(dice_focal_per_sample(logits, t), ref, rtol=0, atol=0)


@pytest.mark.parametrize(
    ("call", "match", "exc"),
    [
        (
            lambda: dice_focal_per_sample(torch.randn(2, 1, 4, 4), torch.zeros(2, 1, 4, 5)),
            "same shape",
            ValueError,
        ),
        (
            lambda: dice_focal_per_sample(torch.randn(2, 1, 4), torch.full((2, 1, 4), 0.5)),
            "binary",
            ValueError,
        ),
        (
            lambda: dice_focal_per_sample(torch.tensor([[[float("nan"), 0.0]]]), torch.zeros(1, 1, 2)),
            "NaN",
            ValueError,
        ),
        (
            lambda: dice_focal_per_sample(torch.zeros(2, 1, 4, dtype=torch.long), torch.zeros(2, 1, 4)),
            "floating",
            TypeError,
        ),
        (lambda: dice_focal_per_sample(torch.randn(2, 4), torch.zeros(2, 4)), "at least 3 dims", ValueError),
        (
            lambda: dice_focal_per_sample(torch.randn(2, 1, 4).numpy(), torch.zeros(2, 1, 4)),
            "logits must be",
            TypeError,
        ),
        (lambda: PerSampleDiceFocalLoss(gamma=-1.0), "gamma", ValueError),
        (lambda: PerSampleDiceFocalLoss(alpha=1.5), "alpha", ValueError),
        (lambda: PerSampleDiceFocalLoss(lambda_dice=-0.1), "lambda_dice", ValueError),
        (lambda: PerSampleDiceFocalLoss(smooth_dr="1e-5"), "smooth_dr", TypeError),
    ],
)
def test_dice_focal_bad_input(call, match, exc):
    with debug_checks(), pytest.raises(exc, match=match):  # debug mode: values (NaN, binary) checked too
        call()


def test_dice_focal_checks_values_only_in_debug_mode():
    logits, target = torch.tensor([[[float("nan"), 0.0]]]), torch.full((1, 1, 2), 0.5)
    assert torch.isnan(dice_focal_per_sample(logits, target)).all()  # no sync in the training step
    with debug_checks(), pytest.raises(ValueError, match="NaN"):
        dice_focal_per_sample(logits, target)


# ----------------------------------------------------------------------------------------------------------
# agreement with MONAI


@pytest.mark.parametrize("spatial", [(5, 6), (3, 4, 5)])
@pytest.mark.parametrize(("gamma", "alpha"), [(2.0, None), (0.0, None), (1.5, 0.25), (2.0, 0.8)])
def test_terms_match_monai(spatial, gamma, alpha):
    monai_losses = pytest.importorskip("monai.losses")
    logits, target = _rand_case(3, 2, spatial)
    target[0] = False  # one sample with empty masks
    y = target.double()
    dice_ref = monai_losses.DiceLoss(sigmoid=True, reduction="none")(logits, y).flatten(1).mean(1)
    focal_ref = (
        monai_losses.FocalLoss(gamma=gamma, alpha=alpha, reduction="none")(logits, y).flatten(1).mean(1)
    )
    # MONAI computes the focal term in float32
    torch.testing.assert_close(dice_loss_per_sample(logits, target), dice_ref, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(
        sigmoid_focal_loss_per_sample(logits, target, gamma=gamma, alpha=alpha),
        focal_ref.double(),
        rtol=1e-5,
        atol=1e-7,
    )
    ours = PerSampleDiceFocalLoss(gamma=gamma, alpha=alpha, lambda_dice=0.6, lambda_focal=1.3)
    monai_dfl = monai_losses.DiceFocalLoss(
        sigmoid=True, batch=False, gamma=gamma, alpha=alpha, lambda_dice=0.6, lambda_focal=1.3
    )
    per_sample = ours(logits, target)
    for i in range(logits.shape[0]):
        ref = monai_dfl(logits[i : i + 1], y[i : i + 1])
        assert per_sample[i].item() == pytest.approx(ref.item(), rel=1e-5, abs=1e-7)
    # batch mean equals MONAI's default "mean" reduction
    assert per_sample.mean().item() == pytest.approx(monai_dfl(logits, y).item(), rel=1e-5, abs=1e-7)


def test_gradients_match_monai():
    monai_losses = pytest.importorskip("monai.losses")
    logits, target = _rand_case(2, 1, (4, 5, 6), dtype=torch.float32)
    a = logits.clone().requires_grad_(True)
    b = logits.clone().requires_grad_(True)
    PerSampleDiceFocalLoss(alpha=0.25)(a, target).mean().backward()
    monai_losses.DiceFocalLoss(sigmoid=True, alpha=0.25)(b, target.float()).backward()
    torch.testing.assert_close(a.grad, b.grad, rtol=1e-4, atol=1e-7)


# ----------------------------------------------------------------------------------------------------------
# selection counts


@pytest.mark.parametrize(
    ("num_pos", "num_empty", "strategy", "ratio", "min_empty", "expected"),
    [
        (2, 6, "whole", 1.0, 1, 6),
        (2, 6, "none", 1.0, 1, 0),
        (2, 6, "partial", 1.0, 1, 2),
        (2, 6, "partial", 0.5, 1, 1),
        (3, 6, "partial", 0.5, 1, 2),  # 1.5 rounds half-up
        (2, 6, "partial", 2.0, 1, 4),
        (2, 6, "partial", 10.0, 1, 6),  # capped at the available empties
        (2, 6, "partial", 1e308, 1, 6),  # ratio * count overflows to inf: all kept, no OverflowError
        (1, 6, "partial", 1.7976931348623157e308, 1, 6),
        (2, 6, "partial", 0.0, 1, 0),
        (0, 6, "partial", 1.0, 1, 1),  # no progression: min_empty
        (0, 6, "partial", 1.0, 0, 0),
        (0, 6, "partial", 1.0, 3, 3),
        (0, 6, "none", 1.0, 1, 0),
        (0, 6, "whole", 1.0, 1, 6),
        (4, 0, "partial", 1.0, 1, 0),  # no stable sample
        (0, 0, "partial", 1.0, 1, 0),
    ],
)
def test_num_empty_to_keep(num_pos, num_empty, strategy, ratio, min_empty, expected):
    assert num_empty_to_keep(num_pos, num_empty, strategy, ratio, min_empty) == expected


@pytest.mark.parametrize(
    ("strategy", "ratio", "expected_kept"),
    [("whole", 1.0, 8), ("none", 1.0, 2), ("partial", 1.0, 4), ("partial", 2.0, 6)],
)
def test_select_counts_and_membership(strategy, ratio, expected_kept):
    flags = torch.tensor([0, 1, 0, 0, 1, 0, 0, 0], dtype=torch.bool)
    for seed in range(5):
        kept = select_progression_samples(
            flags, strategy, ratio, generator=torch.Generator().manual_seed(seed)
        )
        assert kept.dtype == torch.bool and kept.shape == flags.shape
        assert int(kept.sum()) == expected_kept
        assert kept[flags].all()  # every non-empty sample is kept


def test_select_per_head_independent():
    # (B=6, T-1=3): head 0 has 1 positive, head 1 none, head 2 all positive
    flags = torch.tensor([[1, 0, 1], [0, 0, 1], [0, 0, 1], [0, 0, 1], [0, 0, 1], [0, 0, 1]], dtype=torch.bool)
    kept = select_progression_samples(
        flags, "partial", 1.0, min_empty=1, generator=torch.Generator().manual_seed(0)
    )
    assert kept.sum(0).tolist() == [2, 1, 6]
    assert kept[flags].all()


def test_select_partial_is_deterministic_and_uniform():
    flags = torch.zeros(10, dtype=torch.bool)
    flags[0] = True
    draws = [select_progression_samples(flags, generator=torch.Generator().manual_seed(7)) for _ in range(2)]
    assert torch.equal(draws[0], draws[1])
    gen = torch.Generator().manual_seed(0)
    counts = torch.stack([select_progression_samples(flags, generator=gen) for _ in range(900)]).sum(0)
    assert counts[0] == 900
    # each of the 9 empty samples is kept with probability 1/9 -> 100 expected, sd ~ 9.4
    assert ((counts[1:] > 60) & (counts[1:] < 140)).all(), counts


def test_progression_presence_any_channel():
    t = torch.zeros(3, 2, 2, 4, 4)
    t[0, 1, 1, 2, 3] = 1
    t[2, 0, 0, 0, 0] = 1
    assert progression_presence(t).tolist() == [[False, True], [False, False], [True, False]]
    with pytest.raises(ValueError, match="at least 4 dims"):
        progression_presence(torch.zeros(2, 1, 4))


@pytest.mark.parametrize(
    ("kwargs", "match", "exc"),
    [
        ({"strategy": "half"}, "strategy must be one of", ValueError),
        ({"empty_ratio": -1.0}, "empty_ratio", ValueError),
        ({"empty_ratio": float("nan")}, "empty_ratio", ValueError),
        ({"min_empty": -1}, "min_empty", ValueError),
        ({"min_empty": 1.5}, "min_empty", TypeError),
        ({"generator": 3}, "generator", TypeError),
    ],
)
def test_select_bad_arguments(kwargs, match, exc):
    with pytest.raises(exc, match=match):
        select_progression_samples(torch.tensor([True, False]), **kwargs)
    with pytest.raises(ValueError, match="binary"):
        select_progression_samples(torch.tensor([2, 0]))


# ----------------------------------------------------------------------------------------------------------
# ImbalanceAwareLoss


def _output(b: int, t1: int, k: int = 1, spatial=(4, 4), dtype=torch.float64) -> LongitudinalOutput:
    return LongitudinalOutput(
        baseline=torch.randn(b, k, *spatial, dtype=dtype, requires_grad=True),
        progression=torch.randn(b, t1, k, *spatial, dtype=dtype, requires_grad=True),
    )


def test_loss_hand_computed_tiny_example():
    # per-sample MSE on 1-voxel maps so every term can be written down
    base = torch.tensor([[[1.0]], [[2.0]], [[0.0]], [[-1.0]]])  # (B=4, K=1, 1)
    prog = torch.tensor([[[[0.5]]], [[[3.0]]], [[[-2.0]]], [[[1.0]]]])  # (B, T-1=1, K=1, 1)
    y1 = torch.tensor([[[1.0]], [[0.0]], [[0.0]], [[1.0]]])
    yp = torch.tensor([[[[1.0]]], [[[0.0]]], [[[0.0]]], [[[0.0]]]])  # only sample 0 progresses
    out = LongitudinalOutput(base, prog)
    baseline_expected = (0.0 + 4.0 + 0.0 + 4.0) / 4
    prog_losses = [0.25, 9.0, 4.0, 1.0]

    whole = ImbalanceAwareLoss(_mse, strategy="whole")(out, y1, yp)
    assert whole.baseline_loss.item() == pytest.approx(baseline_expected)
    assert whole.progression_loss.item() == pytest.approx(sum(prog_losses) / 4)
    assert whole.loss.item() == pytest.approx(baseline_expected + sum(prog_losses) / 4)

    none = ImbalanceAwareLoss(_mse, strategy="none")(out, y1, yp)
    assert none.loss.item() == pytest.approx(baseline_expected + 0.25)

    partial = ImbalanceAwareLoss(_mse, strategy="partial", seed=0)(out, y1, yp)
    (empty_kept,) = torch.nonzero(partial.kept[:, 0] & ~partial.non_empty[:, 0]).flatten().tolist()
    assert partial.loss.item() == pytest.approx(baseline_expected + (0.25 + prog_losses[empty_kept]) / 2)
    assert (partial.num_kept, partial.num_positive, partial.num_empty, partial.num_empty_kept) == (2, 1, 3, 1)


def test_default_loss_equals_manual_dice_focal_sum():
    out = _output(5, 2)
    y1 = torch.rand(5, 1, 4, 4) < 0.3
    yp = _progression_target([[1, 0], [0, 0], [0, 1], [0, 0], [1, 1]])
    res = ImbalanceAwareLoss(seed=1)(out, y1, yp)
    expected_base = dice_focal_per_sample(out.baseline, y1).mean()
    pairs = torch.nonzero(res.kept).tolist()
    expected_prog = torch.stack(
        [dice_focal_per_sample(out.progression[b, j][None], yp[b, j][None])[0] for b, j in pairs]
    ).mean()
    torch.testing.assert_close(res.baseline_loss, expected_base, rtol=1e-12, atol=0)
    torch.testing.assert_close(res.progression_loss, expected_prog, rtol=1e-12, atol=0)
    # per head: head 0 has 2 positives, head 1 has 2 positives -> 2 empties kept each
    assert res.kept.sum(0).tolist() == [4, 4]
    assert res.num_kept == 8 and res.num_positive == 4 and res.num_empty_kept == 4


def test_fast_path_matches_loop_reference_with_gradients():
    flags = [[1, 0, 0], [0, 0, 1], [0, 1, 0], [0, 0, 0], [1, 1, 0], [0, 0, 0]]
    yp = _progression_target(flags, k=2, spatial=(3, 4, 3))
    y1 = torch.rand(6, 2, 3, 4, 3) < 0.2
    out = _output(6, 3, k=2, spatial=(3, 4, 3))
    res = ImbalanceAwareLoss(strategy="partial", empty_ratio=1.0, seed=4)(out, y1, yp)
    res.loss.backward()
    g_base, g_prog = out.baseline.grad.clone(), out.progression.grad.clone()

    base = out.baseline.detach().clone().requires_grad_(True)
    prog = out.progression.detach().clone().requires_grad_(True)
    terms = [dice_focal_per_sample(base[i : i + 1], y1[i : i + 1])[0] for i in range(6)]
    kept = [
        dice_focal_per_sample(prog[b, j][None], yp[b, j][None])[0]
        for b, j in torch.nonzero(res.kept).tolist()
    ]
    ref = torch.stack(terms).mean() + torch.stack(kept).mean()
    ref.backward()
    assert abs(res.loss.item() - ref.item()) <= 1e-12 * abs(ref.item())
    torch.testing.assert_close(g_base, base.grad, rtol=1e-10, atol=1e-14)
    torch.testing.assert_close(g_prog, prog.grad, rtol=1e-10, atol=1e-14)


@pytest.mark.parametrize("strategy", ["whole", "none", "partial"])
def test_gradient_only_through_kept_samples(strategy):
    flags = [[1, 0], [0, 0], [0, 1], [0, 0], [0, 0], [1, 0]]
    out = _output(6, 2)
    res = ImbalanceAwareLoss(strategy=strategy, seed=0)(
        out, torch.zeros(6, 1, 4, 4), _progression_target(flags)
    )
    res.loss.backward()
    per_pair = out.progression.grad.flatten(2).abs().sum(-1)  # (B, T-1)
    assert (per_pair[~res.kept] == 0).all()  # exact: a dropped pair is not in the loss at all
    assert (per_pair[res.kept] > 1e-3 * per_pair.max()).all()
    base_per_sample = out.baseline.grad.flatten(1).abs().sum(-1)
    assert (base_per_sample > 1e-3 * base_per_sample.max()).all()
    expected = {"whole": 12, "none": 3, "partial": 6}[strategy]
    assert res.num_kept == expected


def test_edge_case_no_progression_in_batch():
    out = _output(4, 1)
    y1, yp = torch.zeros(4, 1, 4, 4), torch.zeros(4, 1, 1, 4, 4)
    res = ImbalanceAwareLoss(seed=0)(out, y1, yp)  # min_empty=1 keeps one stable sample
    assert (res.num_kept, res.num_positive, res.num_empty, res.num_empty_kept) == (1, 0, 4, 1)
    res0 = ImbalanceAwareLoss(min_empty=0)(out, y1, yp)
    assert res0.num_kept == 0 and res0.progression_loss.item() == 0.0  # exact: a sum over no pairs, times 0
    res0.loss.backward()  # the zero term is connected: the head gets a (zero) gradient, DDP sees it used
    assert out.progression.grad is not None and (out.progression.grad == 0).all()
    assert res0.loss.item() == pytest.approx(res0.baseline_loss.item())
    none = ImbalanceAwareLoss(strategy="none")(out, y1, yp)
    assert none.num_kept == 0 and torch.isfinite(none.loss)


def test_edge_case_no_stable_sample_and_batch_of_one():
    out = _output(3, 1)
    yp = _progression_target([[1], [1], [1]])
    for strategy in ("whole", "none", "partial"):
        res = ImbalanceAwareLoss(strategy=strategy, seed=0)(out, torch.zeros(3, 1, 4, 4), yp)
        assert (res.num_kept, res.num_empty, res.num_empty_kept) == (3, 0, 0)
    one = _output(1, 1)
    pos = ImbalanceAwareLoss(strategy="partial", seed=0)(
        one, torch.zeros(1, 1, 4, 4), _progression_target([[1]])
    )
    assert pos.num_kept == 1 and torch.isfinite(pos.loss)
    empty_target = _progression_target([[0]])
    assert ImbalanceAwareLoss(seed=0)(one, torch.zeros(1, 1, 4, 4), empty_target).num_kept == 1
    assert ImbalanceAwareLoss(strategy="none")(one, torch.zeros(1, 1, 4, 4), empty_target).num_kept == 0


def test_mask_dtypes_give_same_loss():
    out = _output(4, 2)
    y1 = torch.rand(4, 1, 4, 4) < 0.5
    yp = _progression_target([[1, 0], [0, 0], [0, 1], [0, 0]]).bool()
    losses = [
        ImbalanceAwareLoss(seed=3)(out, y1.to(dt), yp.to(dt)).loss.item()
        for dt in (torch.bool, torch.int64, torch.int32, torch.float32, torch.float64)
    ]
    assert max(losses) - min(losses) <= 1e-6 * abs(max(losses))


def test_seeded_loss_is_deterministic_and_resumable():
    out = _output(8, 1)
    y1 = torch.zeros(8, 1, 4, 4)
    yp = _progression_target([[1], [0], [0], [0], [0], [0], [0], [1]])
    a, b = ImbalanceAwareLoss(seed=11), ImbalanceAwareLoss(seed=11)
    kept_a = [a(out, y1, yp).kept for _ in range(5)]
    kept_b = [b(out, y1, yp).kept for _ in range(5)]
    assert all(torch.equal(x, y) for x, y in zip(kept_a, kept_b))
    assert len({tuple(k.flatten().tolist()) for k in kept_a}) > 1  # fresh subsets across steps

    state = a.state_dict()
    resumed = ImbalanceAwareLoss(seed=0)
    resumed.load_state_dict(state)
    assert all(torch.equal(a(out, y1, yp).kept, resumed(out, y1, yp).kept) for _ in range(3))

    gen = torch.Generator().manual_seed(5)
    shared = ImbalanceAwareLoss(generator=gen)
    first = shared(out, y1, yp).kept
    gen.manual_seed(5)
    assert torch.equal(shared(out, y1, yp).kept, first)


def test_works_with_a_model_and_optimizer_step():
    class TinyLongitudinal(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.base = torch.nn.Conv2d(2, 1, 3, padding=1)
            self.prog = torch.nn.Conv2d(2, 1, 3, padding=1)

        def forward(self, x: torch.Tensor) -> LongitudinalOutput:  # x (B, T, C, H, W)
            pairs = torch.cat(
                [x[:, :1].expand(-1, x.shape[1] - 1, -1, -1, -1), x[:, 1:]], 2
            )  # (B, T-1, 2C, H, W)
            b, t1 = pairs.shape[:2]
            prog = self.prog(pairs.flatten(0, 1)).unflatten(0, (b, t1))
            return LongitudinalOutput(self.base(torch.cat([x[:, 0], x[:, 0]], 1)), prog)

    model = TinyLongitudinal()
    loss_fn = ImbalanceAwareLoss(seed=0)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    x = torch.randn(4, 3, 1, 8, 8)
    y1 = torch.rand(4, 1, 8, 8) < 0.3
    yp = torch.zeros(4, 2, 1, 8, 8)
    yp[1, 0, 0, 2:4, 2:4] = 1
    res = loss_fn(model(x), y1, yp)
    res.loss.backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())
    opt.step()
    log = res.as_log_dict()
    assert set(log) >= {"loss", "loss/baseline", "loss/progression", "loss/kept", "loss/empty_kept"}
    assert log["loss/kept"] == 3.0  # head 0: 1 positive + 1 empty; head 1: min_empty = 1


def test_imbalance_loss_bad_input():
    loss = ImbalanceAwareLoss(seed=0)
    out = _output(2, 2)
    y1, yp = torch.zeros(2, 1, 4, 4), torch.zeros(2, 2, 1, 4, 4)
    with pytest.raises(TypeError, match="LongitudinalOutput"):
        loss((out.baseline, out.progression), y1, yp)
    with pytest.raises(ValueError, match="baseline_target and output.baseline"):
        loss(out, torch.zeros(2, 1, 4, 5), yp)
    with pytest.raises(ValueError, match=r"3 follow-ups \(T-1, dim 1\) but output.progression has 2"):
        loss(out, y1, torch.zeros(2, 3, 1, 4, 4))
    with pytest.raises(ValueError, match="progression_target must have shape"):
        loss(out, y1, torch.zeros(2, 1, 4, 4))
    with pytest.raises(ValueError, match="progression_target and output.progression"):
        loss(out, y1, torch.zeros(2, 2, 1, 4, 3))
    with debug_checks(), pytest.raises(ValueError, match="progression_target must be a binary mask"):
        loss(out, y1, torch.full((2, 2, 1, 4, 4), 0.5))
    with debug_checks(), pytest.raises(ValueError, match="baseline_target must be a binary mask"):
        loss(out, torch.full((2, 1, 4, 4), 2.0), yp)
    bad = LongitudinalOutput(out.baseline.detach(), out.progression.detach().clone())
    bad.progression[1, 1, 0, 0, 0] = float("nan")
    with debug_checks(), pytest.raises(ValueError, match="output.progression contains NaN"):
        loss(bad, y1, yp)
    with pytest.raises(ValueError, match="one value per sample"):
        ImbalanceAwareLoss(lambda a, b: (a - b).pow(2).mean())(out, y1, yp)
    with pytest.raises(ValueError, match="either generator or seed"):
        ImbalanceAwareLoss(generator=torch.Generator(), seed=1)
    with pytest.raises(TypeError, match="per_sample_loss must be callable"):
        ImbalanceAwareLoss(per_sample_loss="dicefocal")
    with pytest.raises(ValueError, match="strategy must be one of"):
        ImbalanceAwareLoss(strategy="some")


# ----------------------------------------------------------------------------------------------------------
# hard negatives and samples without baseline labels


@pytest.mark.parametrize("strategy", ["whole", "none", "partial"])
def test_select_always_keeps_forced_pairs_and_draws_the_rest_as_before(strategy):
    non_empty = torch.tensor([[1, 0], [0, 0], [0, 0], [0, 1], [0, 0], [0, 0], [0, 0], [0, 0]], dtype=torch.bool)
    hard = torch.tensor([0, 1, 0, 1, 0, 0, 1, 0], dtype=torch.bool)
    g_plain, g_hard = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    plain = select_progression_samples(non_empty, strategy, generator=g_plain)
    kept = select_progression_samples(non_empty, strategy, generator=g_hard, always_keep=hard)
    assert torch.equal(g_plain.get_state(), g_hard.get_state())  # the same draws from the generator
    assert kept[non_empty].all() and kept[hard].all()  # progression and every hard-negative pair
    for j in range(2):  # the strategy's count of other empty pairs is unchanged
        free = ~non_empty[:, j] & ~hard
        assert int((kept[:, j] & free).sum()) == num_empty_to_keep(1, int(free.sum()), strategy)
    assert torch.equal(select_progression_samples(non_empty, strategy, generator=torch.Generator().manual_seed(3),
                                                  always_keep=torch.zeros(8, dtype=torch.bool)), plain)
    with pytest.raises(ValueError, match="always_keep must have shape"):
        select_progression_samples(non_empty, strategy, always_keep=torch.zeros(3, dtype=torch.bool))


def test_loss_keeps_hard_negatives_only_when_asked():
    flags = [[1], [0], [0], [0], [0], [0]]
    hard = torch.tensor([False, True, True, False, False, False])
    out, y1, yp = _output(6, 1), torch.zeros(6, 1, 4, 4), _progression_target(flags)
    paper = ImbalanceAwareLoss(seed=0)(out, y1, yp, hard_negative=hard)
    assert torch.equal(paper.kept, ImbalanceAwareLoss(seed=0)(out, y1, yp).kept)  # flags ignored by default
    assert paper.num_kept == 2
    res = ImbalanceAwareLoss(seed=0, keep_hard_negatives=True)(out, y1, yp, hard_negative=hard)
    assert res.kept[hard].all() and res.num_kept == 4 and res.num_empty_kept == 3
    res.loss.backward()
    per_sample = out.progression.grad.flatten(1).abs().sum(-1)
    assert (per_sample[hard] > 0).all() and int((per_sample == 0).sum()) == 2  # exact: dropped pairs
    assert "keep_hard_negatives=True" in repr(ImbalanceAwareLoss(keep_hard_negatives=True))
    with pytest.raises(TypeError, match="keep_hard_negatives must be a bool"):
        ImbalanceAwareLoss(keep_hard_negatives=1)
    with pytest.raises(ValueError, match=r"hard_negative must have shape \(6,\)"):
        ImbalanceAwareLoss(keep_hard_negatives=True)(out, y1, yp, hard_negative=torch.zeros(6, 1))


class _TwoHeads(torch.nn.Module):
    """A shared 1x1 conv, then a baseline head on timepoint 0 and a progression head on timepoint 1."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.trunk = torch.nn.Conv2d(1, 4, 1).double()
        self.baseline_head = torch.nn.Conv2d(4, 1, 1).double()
        self.progression_head = torch.nn.Conv2d(4, 1, 1).double()

    def forward(self, images: torch.Tensor) -> LongitudinalOutput:  # (B, 2, 1, H, W)
        return LongitudinalOutput(self.baseline_head(self.trunk(images[:, 0])),
                                  self.progression_head(self.trunk(images[:, 1]))[:, None])


def _baseline_head_grad(model, images, y1, yp, annotated):
    model.zero_grad()
    out = model(images)
    out.baseline.retain_grad()
    res = ImbalanceAwareLoss(strategy="whole")(out, y1, yp, baseline_annotated=annotated)
    res.loss.backward()
    return model.baseline_head.weight.grad.clone(), out.baseline.grad, res


def test_unannotated_samples_give_the_baseline_head_no_gradient():
    g = torch.Generator().manual_seed(1)
    images = torch.randn(2, 2, 1, 6, 6, generator=g, dtype=torch.float64)
    y1 = (torch.rand(2, 1, 6, 6, generator=g) < 0.3).float()
    y1[1] = 0.0  # an MSSEG-2 case: the baseline is not annotated, its mask is empty
    yp = (torch.rand(2, 1, 1, 6, 6, generator=g) < 0.2).float()
    model = _TwoHeads()
    with_x, grad_logits, res = _baseline_head_grad(model, images, y1, yp, torch.tensor([True, False]))
    alone, _, alone_res = _baseline_head_grad(model, images[:1], y1[:1], yp[:1], None)
    assert (grad_logits[1] == 0).all()  # exact by construction: sample 1 is not in the baseline term
    assert res.num_baseline == 1 and alone_res.num_baseline == 1 and res.num_kept == 2
    torch.testing.assert_close(res.baseline_loss, alone_res.baseline_loss)
    torch.testing.assert_close(with_x, alone)  # the baseline head learns only from the annotated sample
    unflagged, _, _ = _baseline_head_grad(model, images, y1, yp, None)  # the old behaviour: "no lesions"
    assert not torch.allclose(unflagged, alone)
    # no annotated sample: a connected zero baseline term, the progression term still trains
    grad, grad_logits, res = _baseline_head_grad(model, images, y1, yp, torch.tensor([False, False]))
    assert res.baseline_loss.item() == 0.0 and (grad == 0).all() and res.num_baseline == 0
    assert model.progression_head.weight.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="baseline_annotated must be a binary mask"):
        ImbalanceAwareLoss()(model(images), y1, yp, baseline_annotated=torch.tensor([2, 0]))


def test_new_lesion_logits_match_the_float64_product_with_gradients() -> None:
    gen = torch.Generator().manual_seed(5)
    base = (torch.randn(3, 1, 6, 5, generator=gen, dtype=torch.float64) * 5).requires_grad_()
    prog = (torch.randn(3, 3, 1, 6, 5, generator=gen, dtype=torch.float64) * 5).requires_grad_()
    p_new = torch.sigmoid(new_lesion_logits(base, prog))
    # follow-up k: new where the voxel was not lesion at k - 1 (not at baseline, not new at an earlier follow-up)
    not_base, p_prog = 1 - torch.sigmoid(base), torch.sigmoid(prog)
    ref = torch.stack([p_prog[:, 0] * not_base, p_prog[:, 1] * not_base * (1 - p_prog[:, 0]),
                       p_prog[:, 2] * not_base * (1 - p_prog[:, 0]) * (1 - p_prog[:, 1])], dim=1)
    assert ((p_new - ref).abs() / ref).max() < 1e-10
    weights = torch.randn(ref.shape, generator=gen, dtype=torch.float64)
    g_new = torch.autograd.grad((p_new * weights).sum(), (base, prog))
    g_ref = torch.autograd.grad((ref * weights).sum(), (base, prog))
    for a, b in zip(g_new, g_ref):
        assert ((a - b).norm() / b.norm()) < 1e-10
    # saturated logits stay finite in float32 and keep following their inputs (a clamp of log p below 0
    # gave every p above 1 - 1e-7 the same logit, about 16.1, and no gradient: a confidently wrong new
    # lesion could not be trained away)
    for size in (17.0, 40.0, 1e4):
        base = torch.full((1, 1, 2, 2), -size, requires_grad=True)
        prog = torch.full((1, 1, 1, 2, 2), size, requires_grad=True)
        big = new_lesion_logits(base, prog)
        assert torch.isfinite(big).all() and (big > size - 1).all()
        g_base, g_prog = torch.autograd.grad(big.sum(), (base, prog))
        assert (g_prog > 0.25).all() and (g_base < -0.25).all()  # d logit / d a and / d b: +-1/2 in the limit
    with pytest.raises(ValueError, match="does not match"):
        new_lesion_logits(torch.zeros(2, 1, 4, 4), torch.zeros(2, 1, 1, 4, 5))


def test_new_lesion_logits_refuse_integer_tensors() -> None:
    base, prog = torch.zeros(1, 1, 4, 4), torch.zeros(1, 1, 1, 4, 4)
    with pytest.raises(TypeError, match="baseline_logits must be a floating-point tensor .*got dtype torch.int64"):
        new_lesion_logits(base.long(), prog.long())
    with pytest.raises(TypeError, match="progression_logits must be a floating-point tensor .*got dtype torch.bool"):
        new_lesion_logits(base, prog.bool())


def test_progression_outside_baseline_loss_reaches_the_baseline_head_only_when_asked() -> None:
    torch.manual_seed(0)
    base_t, prog_t = torch.zeros(4, 1, 8, 8), torch.zeros(4, 1, 1, 8, 8)
    prog_t[:2, :, :, 2:5, 2:5] = 1
    for joint in (False, True):
        out = LongitudinalOutput(torch.randn(4, 1, 8, 8, requires_grad=True), torch.randn(4, 1, 1, 8, 8, requires_grad=True))
        res = ImbalanceAwareLoss(seed=0, progression_outside_baseline=joint)(out, base_t, prog_t)
        res.progression_loss.backward()
        assert (out.baseline.grad is not None and out.baseline.grad.abs().sum() > 0) == joint
        assert out.progression.grad.abs().sum() > 0
    with pytest.raises(TypeError, match="progression_outside_baseline must be a bool"):
        ImbalanceAwareLoss(progression_outside_baseline=1)


def test_loss_config_builds_the_joint_loss() -> None:
    from longiseg.workflows.config import ExperimentConfig
    from longiseg.workflows.train import build_loss

    assert not build_loss(ExperimentConfig()).progression_outside_baseline  # the paper's loss by default
    cfg = ExperimentConfig().with_overrides(["loss.progression_outside_baseline=true"])
    assert build_loss(cfg).progression_outside_baseline


# ----------------------------------------------------------------------------------------------------------
# half precision, generator consumption, unannotated samples with progression_outside_baseline


def test_half_precision_logits_give_a_finite_float32_loss_and_connected_zeros() -> None:
    """float16 logits whose float16 sum overflows: the connected zeros stay 0 and the loss is float32."""
    gen = torch.Generator().manual_seed(0)
    # 4 * 128 * 128 logits near -12: their float16 sum (about -8e5) is beyond float16's 65504
    base = (torch.randn(4, 1, 128, 128, generator=gen) - 12).half().requires_grad_()
    prog = (torch.randn(4, 1, 1, 128, 128, generator=gen) - 12).half().requires_grad_()
    assert torch.isinf(base.sum()) and torch.isinf(prog.sum())  # the case of the fix
    out = LongitudinalOutput(base, prog)
    y1, yp = torch.zeros(4, 1, 128, 128), torch.zeros(4, 1, 1, 128, 128)
    yp[0, 0, 0, :8, :8] = 1
    unannotated = ImbalanceAwareLoss(seed=0)(out, y1, yp, baseline_annotated=torch.zeros(4, dtype=torch.bool))
    nothing_kept = ImbalanceAwareLoss(strategy="none")(out, y1, torch.zeros_like(yp))
    for res, zero in ((unannotated, unannotated.baseline_loss), (nothing_kept, nothing_kept.progression_loss)):
        assert zero.item() == 0.0 and zero.requires_grad  # exact: a sum of finite * 0
        for value in (res.loss, res.baseline_loss, res.progression_loss):
            assert value.dtype == torch.float32 and torch.isfinite(value)
    (unannotated.loss + nothing_kept.loss).backward()
    assert torch.isfinite(base.grad).all() and torch.isfinite(prog.grad).all()
    assert prog.grad.abs().sum() > 0


def test_partial_selection_consumes_the_generator_by_shape_only() -> None:
    """The same generator state after the call for every flag pattern of one (B, T-1), hard negatives too."""
    patterns = [torch.zeros(6, 2), torch.ones(6, 2), torch.eye(6)[:, :2], 1 - torch.eye(6)[:, :2]]
    states, draws = [], []
    for flags in patterns:
        for hard in (None, torch.tensor([1, 0, 0, 1, 1, 0])):
            gen = torch.Generator().manual_seed(11)
            kept = select_progression_samples(flags.bool(), "partial", generator=gen, always_keep=hard)
            states.append(gen.get_state())
            draws.append(torch.rand(1, generator=gen))
            for j in range(2):  # the documented selection: every non-empty pair and the strategy's count
                non_empty = flags[:, j].bool()
                forced = torch.zeros(6, dtype=torch.bool) if hard is None else hard.bool()
                free = ~non_empty & ~forced
                assert kept[non_empty | forced, j].all()
                assert int((kept[:, j] & free).sum()) == num_empty_to_keep(int(non_empty.sum()), int(free.sum()))
    assert all(torch.equal(s, states[0]) for s in states)
    assert all(torch.equal(d, draws[0]) for d in draws)


def test_progression_outside_baseline_gives_unannotated_baselines_no_gradient() -> None:
    torch.manual_seed(0)
    base = torch.randn(3, 1, 8, 8, requires_grad=True)
    prog = torch.randn(3, 1, 1, 8, 8, requires_grad=True)
    y1, yp = torch.zeros(3, 1, 8, 8), torch.zeros(3, 1, 1, 8, 8)
    yp[..., :2, :2] = 1  # every pair non-empty: all kept, all in the progression term
    annotated = torch.tensor([True, False, True])
    res = ImbalanceAwareLoss(seed=0, progression_outside_baseline=True)(
        LongitudinalOutput(base, prog), y1, yp, baseline_annotated=annotated)
    res.progression_loss.backward()  # the progression term alone: the baseline term cannot explain a gradient
    per_sample = base.grad.flatten(1).abs().sum(-1)
    assert per_sample[1] == 0  # exact by construction: detached in the progression term
    assert (per_sample[annotated] > 0).all()
    assert (prog.grad.flatten(1).abs().sum(-1) > 0).all()  # the unannotated sample's progression still trains


def test_a_restored_loss_state_keeps_its_seed_and_warns_of_a_new_one(caplog: pytest.LogCaptureFixture) -> None:
    """A resume restores the generator of the loss's saved seed: a changed ``seed`` (``loss.seed`` in the
    experiment) cannot apply and is named in a warning (before: accepted and recorded, silently unused)."""
    from longiseg.losses import ImbalanceAwareLoss

    saved = ImbalanceAwareLoss(seed=0).state_dict()
    same = ImbalanceAwareLoss(seed=0)
    with caplog.at_level("WARNING", logger="longiseg.losses"):
        same.load_state_dict(saved)
    assert "continues the random stream" not in caplog.text
    other = ImbalanceAwareLoss(seed=5)
    with caplog.at_level("WARNING", logger="longiseg.losses"):
        other.load_state_dict(saved)
    assert "ImbalanceAwareLoss(seed=5) continues the random stream of the state it restores, drawn with seed=0" \
        in caplog.text
    assert torch.equal(other.generator.get_state(), ImbalanceAwareLoss(seed=0).generator.get_state())
    assert other.get_extra_state()["seed"] == 0  # the checkpoint it writes next records the stream's seed


def test_integer_logits_are_named_as_the_output_field() -> None:
    # the message named "logits", an argument the caller never passed
    loss = ImbalanceAwareLoss()
    y1, yp = torch.zeros(2, 1, 4, 4), torch.zeros(2, 1, 1, 4, 4)
    with pytest.raises(TypeError, match="output.baseline must be floating-point logits, got dtype torch.int64"):
        loss(LongitudinalOutput(torch.zeros(2, 1, 4, 4, dtype=torch.long), torch.zeros(2, 1, 1, 4, 4)), y1, yp)
    with pytest.raises(TypeError, match="output.progression must be floating-point logits"):
        loss(LongitudinalOutput(torch.zeros(2, 1, 4, 4), torch.zeros(2, 1, 1, 4, 4, dtype=torch.bool)), y1, yp)


def test_a_loss_that_is_nan_or_always_zero_is_refused() -> None:
    """``smooth_dr=0`` made a stable follow-up's loss 0/0 (NaN: an empty target with a confident empty prediction),
    and both weights 0 a loss of 0 whatever the model predicts; both were accepted."""
    from longiseg.losses import dice_loss_per_sample

    empty, confident = torch.zeros(1, 1, 4, 4), torch.full((1, 1, 4, 4), -100.0)
    with pytest.raises(ValueError, match="smooth_dr must be > 0"):
        dice_loss_per_sample(confident, empty, smooth_nr=0, smooth_dr=0)
    with pytest.raises(ValueError, match="smooth_dr must be > 0"):
        PerSampleDiceFocalLoss(smooth_dr=0.0)
    with pytest.raises(ValueError, match="lambda_dice and lambda_focal are both 0"):
        PerSampleDiceFocalLoss(lambda_dice=0, lambda_focal=0)
    assert torch.isfinite(dice_loss_per_sample(confident, empty, smooth_nr=0, smooth_dr=1e-5)).all()
    PerSampleDiceFocalLoss(lambda_dice=0)  # one term alone is a valid loss
