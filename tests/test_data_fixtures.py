"""Tiny synthetic longitudinal cases shared by the ``test_data_*`` files (plus a check of the builder)."""

from __future__ import annotations

import numpy as np

from longiseg.data import LongitudinalCase


def make_case(
    shape: tuple[int, int, int] = (20, 24, 16),
    num_timepoints: int = 2,
    channels: int = 2,
    *,
    seed: int = 0,
    progression: bool = True,
    case_id: str = "case-0",
    affine: np.ndarray | None = None,
) -> LongitudinalCase:
    """Ellipsoid 'brain' with noise, one baseline lesion and (optionally) one new lesion per follow-up."""
    rng = np.random.default_rng(seed)
    grid = np.indices(shape).astype(np.float32)
    c = (np.array(shape) - 1) / 2.0
    r = np.sqrt(sum(((grid[i] - c[i]) / (0.45 * shape[i])) ** 2 for i in range(3)))
    brain = r <= 1.0
    images = rng.normal(100.0, 10.0, size=(num_timepoints, channels, *shape)).astype(np.float32) * brain
    baseline = np.zeros(shape, dtype=np.uint8)
    b0 = tuple(int(v) for v in c)
    baseline[b0[0] - 1: b0[0] + 2, b0[1] - 1: b0[1] + 2, b0[2] - 1: b0[2] + 2] = 1
    prog = np.zeros((num_timepoints - 1, *shape), dtype=np.uint8)
    if progression:
        for k in range(num_timepoints - 1):
            p = (b0[0] + 4 + k, b0[1] - 4, b0[2] + 2)
            prog[k, p[0]: p[0] + 2, p[1]: p[1] + 2, p[2]: p[2] + 2] = 1
    images += 50.0 * baseline
    return LongitudinalCase(
        images=images,
        baseline_mask=baseline,
        progression_masks=prog,
        affine=np.eye(4) if affine is None else affine,
        spacing=(1.0, 1.0, 1.0),
        modalities=("flair", "t2")[:channels] if channels <= 2 else tuple(f"m{i}" for i in range(channels)),
        case_id=case_id,
        brain_mask=brain.astype(np.uint8),
    )


def test_make_case_builds_a_valid_labelled_case() -> None:
    case = make_case(num_timepoints=3)
    assert case.images.shape == (3, 2, 20, 24, 16)
    assert case.has_progression and case.progression_per_followup == [True, True]
    assert not make_case(progression=False).has_progression
    assert not (case.baseline_mask.astype(bool) & case.progression_masks.any(0)).any()
