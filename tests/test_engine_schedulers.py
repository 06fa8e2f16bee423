"""Linear warm-up then cosine decay, stepped per optimizer step."""

from __future__ import annotations

import math

import pytest
import torch

from longiseg.engine.schedulers import WarmupCosineSchedule, build_warmup_cosine_scheduler


def _lrs(warmup_epochs: int, max_epochs: int, steps: int, lr: float = 1e-3, min_lr: float = 1e-5) -> list[float]:
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.AdamW([p], lr=lr)
    sched = build_warmup_cosine_scheduler(opt, warmup_epochs=warmup_epochs, max_epochs=max_epochs,
                                          steps_per_epoch=steps, min_lr=min_lr)
    out = []
    for _ in range(max_epochs * steps):
        out.append(opt.param_groups[0]["lr"])  # the lr used by this optimizer step
        opt.step()
        sched.step()
    out.append(opt.param_groups[0]["lr"])  # after the last step
    return out


def test_warmup_is_linear_and_reaches_peak() -> None:
    lrs = _lrs(warmup_epochs=2, max_epochs=10, steps=5)
    warm = lrs[:10]
    expected = [1e-3 * (s + 1) / 10 for s in range(10)]
    assert warm == pytest.approx(expected, rel=1e-12)
    assert max(lrs) == pytest.approx(1e-3)
    assert lrs[10] == pytest.approx(1e-3)  # first cosine step is the peak


def test_cosine_is_monotone_and_ends_at_min_lr() -> None:
    lrs = _lrs(warmup_epochs=2, max_epochs=10, steps=5, min_lr=1e-5)
    decay = lrs[10:]
    assert all(a >= b for a, b in zip(decay, decay[1:]))
    assert lrs[-1] == pytest.approx(1e-5, rel=1e-12)
    # midpoint of the cosine is halfway between peak and min
    mid = 10 + (50 - 10) // 2
    assert lrs[mid] == pytest.approx(1e-5 + (1e-3 - 1e-5) * 0.5, rel=1e-9)


def test_schedule_formula_and_edges() -> None:
    f = WarmupCosineSchedule(warmup_steps=4, total_steps=12, min_ratio=0.1)
    for s in range(4, 12):
        ref = 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * (s - 4) / 8))
        assert f(s) == pytest.approx(ref, rel=1e-12)
    assert f(12) == f(100) == pytest.approx(0.1)
    no_warm = WarmupCosineSchedule(0, 10, 0.0)
    assert no_warm(0) == pytest.approx(1.0, rel=1e-12)
    all_warm = WarmupCosineSchedule(50, 10, 0.0)  # warm-up longer than training is clipped
    assert all_warm.warmup_steps == 10 and all_warm(9) == pytest.approx(1.0, rel=1e-12)


def test_state_dict_round_trip_resumes_schedule() -> None:
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.AdamW([p], lr=1e-3)
    sched = build_warmup_cosine_scheduler(opt, warmup_epochs=1, max_epochs=4, steps_per_epoch=3, min_lr=0.0)
    for _ in range(5):
        opt.step()
        sched.step()
    state_o, state_s = opt.state_dict(), sched.state_dict()
    assert state_s["lr_lambdas"][0]["total_steps"] == 12  # the callable's fields are saved
    p2 = torch.nn.Parameter(torch.zeros(1))
    opt2 = torch.optim.AdamW([p2], lr=1e-3)
    sched2 = build_warmup_cosine_scheduler(opt2, warmup_epochs=1, max_epochs=4, steps_per_epoch=3, min_lr=0.0)
    opt2.load_state_dict(state_o)
    sched2.load_state_dict(state_s)
    for _ in range(3):
        opt.step()
        sched.step()
        opt2.step()
        sched2.step()
        assert opt.param_groups[0]["lr"] == opt2.param_groups[0]["lr"]


def test_errors() -> None:
    with pytest.raises(ValueError, match="total_steps"):
        WarmupCosineSchedule(0, 0)
    with pytest.raises(ValueError, match="warmup_steps"):
        WarmupCosineSchedule(-1, 10)
    with pytest.raises(ValueError, match="min_ratio"):
        WarmupCosineSchedule(1, 10, 1.5)
    with pytest.raises(ValueError, match="step must be"):
        WarmupCosineSchedule(1, 10)(-1)
    opt = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=1e-4)
    with pytest.raises(ValueError, match="min_lr <= lr"):
        build_warmup_cosine_scheduler(opt, warmup_epochs=1, max_epochs=2, steps_per_epoch=1, min_lr=1e-3)
    with pytest.raises(ValueError, match="steps_per_epoch"):
        build_warmup_cosine_scheduler(opt, warmup_epochs=1, max_epochs=2, steps_per_epoch=0)


def test_schedule_lengths_must_be_ints() -> None:
    with pytest.raises(TypeError, match="warmup_steps must be an int"):  # 2.5 was truncated to 2
        WarmupCosineSchedule(2.5, 10)
    with pytest.raises(TypeError, match="total_steps must be an int"):  # True was 1 step
        WarmupCosineSchedule(0, True)
    with pytest.raises(TypeError, match="min_ratio must be a float"):
        WarmupCosineSchedule(0, 10, "0.5")
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
    with pytest.raises(TypeError, match="max_epochs must be an int"):
        build_warmup_cosine_scheduler(opt, warmup_epochs=0, max_epochs=2.5, steps_per_epoch=1)
    with pytest.raises(TypeError, match="warmup_epochs must be an int"):
        build_warmup_cosine_scheduler(opt, warmup_epochs=None, max_epochs=2, steps_per_epoch=1)
    with pytest.raises(TypeError, match="optimizer must be a torch.optim.Optimizer"):
        build_warmup_cosine_scheduler(None, warmup_epochs=0, max_epochs=2, steps_per_epoch=1)
