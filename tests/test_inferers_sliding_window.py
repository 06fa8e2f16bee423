"""3D sliding-window inference (MONAI) and the shared probability helper."""

from __future__ import annotations

import sys

import numpy as np
import pytest
import torch
import torch.nn as nn
from test_inferers_triplanar import BAD_DEVICES

from longiseg.inferers import SlidingWindowInferer3D, predict_probabilities
from longiseg.inferers.sliding_window import flip_combinations, split_probabilities
from longiseg.networks.output import LongitudinalOutput

pytest.importorskip("monai")


class VoxelwiseModel3D(nn.Module):
    """Logits = 2 * t0 channel 0 (baseline) and t_i - t0 (progression): voxel-wise, so blending is exact."""

    def __init__(self, k: int = 1) -> None:
        super().__init__()
        self.k = k
        self.w = nn.Parameter(torch.ones(()))
        self.shapes: list[tuple[int, ...]] = []

    def forward(self, x: torch.Tensor) -> LongitudinalOutput:
        assert x.ndim == 6
        self.shapes.append(tuple(x.shape))
        base = self.w * 2.0 * x[:, 0, 0]
        prog = x[:, 1:, 0] - x[:, :1, 0]
        return LongitudinalOutput(torch.stack([base] * self.k, 1), torch.stack([prog] * self.k, 2))


def _expected(img: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    x = img.astype(np.float64)
    return 1 / (1 + np.exp(-2 * x[0, 0])), 1 / (1 + np.exp(-(x[1:, 0] - x[:1, 0])))


@pytest.mark.parametrize(("blend", "flip"), [("constant", False), ("gaussian", True)])
def test_voxelwise_model_exact(blend: str, flip: bool) -> None:
    img = np.random.default_rng(0).normal(size=(3, 2, 10, 7, 9)).astype(np.float32)
    model = VoxelwiseModel3D()
    inf = SlidingWindowInferer3D(
        roi_size=(6, 4, 8), overlap=0.5, blend=blend, batch_size=3, flip_tta=flip, progress=False
    )
    base, prog = inf(model, img)
    eb, ep = _expected(img)
    assert base.shape == (10, 7, 9) and prog.shape == (2, 10, 7, 9) and base.dtype == np.float32
    np.testing.assert_allclose(base, eb, atol=1e-6)
    np.testing.assert_allclose(prog, ep, atol=1e-6)
    assert all(s[1:] == (3, 2, 6, 4, 8) for s in model.shapes)  # (B, T, C, *roi)


def test_volume_smaller_than_window_and_k2() -> None:
    img = np.random.default_rng(1).normal(size=(2, 1, 3, 4, 5)).astype(np.float32)
    inf = SlidingWindowInferer3D(roi_size=8, progress=False)
    base, prog = inf(VoxelwiseModel3D(k=2), torch.from_numpy(img))
    eb, ep = _expected(img)
    assert base.shape == (2, 3, 4, 5) and prog.shape == (1, 2, 3, 4, 5)
    np.testing.assert_allclose(base[1], eb, atol=1e-6)
    np.testing.assert_allclose(prog[:, 0], ep, atol=1e-6)


def test_missing_monai_gives_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "monai.inferers", None)
    inf = SlidingWindowInferer3D(roi_size=4, progress=False)
    with pytest.raises(ImportError, match=r"pip install longiseg\[baselines\]"):
        inf(VoxelwiseModel3D(), np.zeros((2, 1, 4, 4, 4), np.float32))


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="roi_size"):
        SlidingWindowInferer3D(roi_size=(4, 4))
    with pytest.raises(ValueError, match="overlap"):
        SlidingWindowInferer3D(overlap=-0.1)
    with pytest.raises(ValueError, match="blend"):
        SlidingWindowInferer3D(blend="box")
    with pytest.raises(ValueError, match="5 dims"):
        SlidingWindowInferer3D(roi_size=4, progress=False)(VoxelwiseModel3D(), np.zeros((2, 4, 4, 4)))


@pytest.mark.parametrize(("device", "err", "match"), BAD_DEVICES)
def test_device_is_checked_at_construction(device, err, match) -> None:
    with pytest.raises(err, match=match):
        SlidingWindowInferer3D(roi_size=4, progress=False, device=device)
    assert SlidingWindowInferer3D(device="cpu").device == torch.device("cpu")
    assert SlidingWindowInferer3D().device is None  # the model's own device


@pytest.mark.parametrize(
    ("model", "x", "flips", "err", "match"),
    [
        (None, np.zeros((1, 2, 1, 4, 4), np.float32), ((),), TypeError, "x must be a torch.Tensor, got ndarray"),
        (None, torch.zeros(2, 1, 4, 4), ((),), ValueError, r"x must have 5 or 6 dims \(B, T, C, \*S\)"),
        (lambda x: x, torch.zeros(1, 2, 1, 4, 4), ((),), TypeError, "model must be a torch.nn.Module"),
        (None, torch.zeros(1, 2, 1, 4, 4), [], ValueError, "flips must be a non-empty sequence"),
        (None, torch.zeros(1, 2, 1, 4, 4), (-1,), TypeError, "flips must hold tuples .*got int -1"),
        (None, torch.zeros(1, 2, 1, 4, 4), ((5,),), ValueError, r"each one of \(-2, -1\) .*got \(5,\)"),
        (None, torch.zeros(1, 2, 1, 4, 4), ((2,),), ValueError, r"would flip B, T or C\), got \(2,\)"),
        (None, torch.zeros(1, 2, 1, 4, 4, 4), ((-4,),), ValueError, r"each one of \(-3, -2, -1\)"),
        (None, torch.zeros(1, 2, 1, 4, 4), ((-1, -1),), ValueError, "distinct"),
    ],
)
def test_predict_probabilities_checks_its_arguments(model, x, flips, err, match) -> None:
    """Flips of B, T or C (non-negative or out-of-range dims) would silently mix channels: refused by name."""
    with pytest.raises(err, match=match):
        predict_probabilities(VoxelwiseModel3D() if model is None else model, x, flips=flips)


def test_predict_probabilities_flip_average_reference() -> None:
    """Flip TTA of a position-dependent 2.5D model equals the float64 average over the four flips."""

    class Ramp(nn.Module):
        def forward(self, x):
            ramp = torch.arange(x.shape[-1], dtype=x.dtype) * 0.5
            return LongitudinalOutput(x[:, 0, :1] + ramp, x[:, 1:, :1] - ramp)

    x = torch.randn(2, 2, 1, 3, 4)
    got = predict_probabilities(Ramp(), x, flips=flip_combinations((-2, -1)))
    xd = x.double().numpy()
    ramp = np.arange(4) * 0.5
    ref = np.zeros((2, 2, 3, 4))
    for dims in [(), (-2,), (-1,), (-2, -1)]:
        xf = np.flip(xd, dims) if dims else xd
        logit = np.concatenate([xf[:, 0, :1] + ramp, xf[:, 1:, 0] - ramp], axis=1)
        pr = 1 / (1 + np.exp(-logit))
        ref += (np.flip(pr, dims) if dims else pr) / 4
    np.testing.assert_allclose(got.numpy(), ref, rtol=1e-6)
    assert flip_combinations((-2, -1)) == [(), (-2,), (-1,), (-2, -1)]


def test_split_probabilities_rejects_bad_channel_count() -> None:
    with pytest.raises(ValueError, match="multiple of T=2"):
        split_probabilities(torch.zeros(3, 2, 2, 2), 2)
