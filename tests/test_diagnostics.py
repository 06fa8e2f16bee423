"""The baseline-reliance diagnostic tells a model that compares timepoints from one that ignores the baseline."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn as nn

from longiseg.data.case import LongitudinalCase
from longiseg.networks.output import LongitudinalOutput
from longiseg.spec import ModelSpec
from longiseg.workflows.config import InferenceConfig
from longiseg.workflows.diagnostics import baseline_reliance

SHAPE = (6, 16, 16)


class _Voxelwise(nn.Module):
    """Progression logit 8 * (t1 - t0) - 4 (compares) or 8 * t1 - 4 (ignores the baseline), voxel-wise."""

    def __init__(self, compares: bool) -> None:
        super().__init__()
        self.compares = compares
        self.spec = ModelSpec(name="voxelwise", dim="2.5D", in_channels=1,
                              inference=InferenceConfig(patch_size=16, planes=["axial"]).to_dict())

    def forward(self, x: torch.Tensor) -> LongitudinalOutput:
        t0, t1 = x[:, 0, :1], x[:, 1:, 0]
        prog = 8 * (t1 - t0) - 4 if self.compares else 8 * t1 - 4
        return LongitudinalOutput(8 * t0 - 4, prog[:, :, None])


def _case() -> LongitudinalCase:
    base = np.zeros(SHAPE, bool)
    base[1:3, 2:5, 2:5] = True      # an old lesion, unchanged
    prog = np.zeros(SHAPE, bool)
    prog[3:5, 10:13, 10:13] = True  # a new lesion
    images = np.zeros((2, 1, *SHAPE), np.float32)
    images[0, 0][base] = 1.0
    images[1, 0][base | prog] = 1.0
    return LongitudinalCase(images=images, baseline_mask=base.astype(np.uint8),
                            progression_masks=prog[None].astype(np.uint8), affine=np.eye(4),
                            spacing=(1.0, 1.0, 1.0), modalities=("flair",), case_id="c")


@pytest.mark.parametrize("compares", [True, False])
def test_baseline_reliance_separates_the_two_models(compares: bool) -> None:
    res = baseline_reliance(_Voxelwise(compares), _case(), device="cpu")
    s = res.summary()
    assert s["new/count"] == 1 and s["persisting/count"] == 1
    sig = lambda v: 1 / (1 + math.exp(-v))  # noqa: E731
    assert s["new/p_real"] == pytest.approx(sig(4), rel=1e-5)
    if compares:  # the new lesion becomes "old" when the follow-up is the baseline
        assert s["new/p_swapped"] == pytest.approx(sig(-4), rel=1e-5)
        assert s["persisting/p_real"] == pytest.approx(sig(-4), rel=1e-5)
    else:
        assert s["new/drop"] == pytest.approx(0.0, abs=1e-6)
        assert s["persisting/p_real"] == pytest.approx(sig(4), rel=1e-5)


def test_baseline_reliance_needs_masks() -> None:
    case = _case()
    unlabelled = LongitudinalCase(images=case.images, baseline_mask=None, progression_masks=None,
                                  affine=case.affine, spacing=case.spacing, modalities=("flair",), case_id="u")
    with pytest.raises(ValueError, match="no reference masks"):
        baseline_reliance(_Voxelwise(True), unlabelled)


class _ComparesWithThePreviousScan(nn.Module):
    """Progression logit 8 * (t_k - t_{k-1}) - 4 for every follow-up, voxel-wise."""

    def __init__(self) -> None:
        super().__init__()
        self.spec = ModelSpec(name="previous", dim="2.5D", in_channels=1,
                              inference=InferenceConfig(patch_size=16, planes=["axial"]).to_dict())

    def forward(self, x: torch.Tensor) -> LongitudinalOutput:
        prog = 8 * (x[:, 1:, 0] - x[:, :-1, 0]) - 4
        return LongitudinalOutput(8 * x[:, 0, :1] - 4, prog[:, :, None])


def test_baseline_reliance_at_a_later_follow_up_swaps_every_earlier_scan() -> None:
    # for follow-up 2 only t0 was swapped, so a model comparing t2 with t1 (against which the reference marks
    # what is new) showed no reliance, and the lesion new at t1 was not among the old lesions of t2
    old, first, second = (np.zeros(SHAPE, bool) for _ in range(3))
    old[1:3, 2:5, 2:5] = True
    first[3:5, 10:13, 10:13] = True
    second[1:3, 10:13, 2:5] = True
    images = np.zeros((3, 1, *SHAPE), np.float32)
    images[0, 0][old] = images[1, 0][old | first] = images[2, 0][old | first | second] = 1.0
    case = LongitudinalCase(images=images, baseline_mask=old.astype(np.uint8),
                            progression_masks=np.stack([first, second]).astype(np.uint8), affine=np.eye(4),
                            spacing=(1.0, 1.0, 1.0), modalities=("flair",), case_id="c3")
    rows = baseline_reliance(_ComparesWithThePreviousScan(), case, device="cpu").lesions
    sig = lambda v: 1 / (1 + math.exp(-v))  # noqa: E731
    new = [r for r in rows if r.kind == "new"]
    assert [r.followup for r in new] == [1, 2]
    for r in new:
        assert r.p_real == pytest.approx(sig(4), rel=1e-5) and r.p_swapped == pytest.approx(sig(-4), rel=1e-5)
    assert [r.followup for r in rows if r.kind == "persisting"] == [1, 2, 2]  # at t2: the old and the t1 lesion
