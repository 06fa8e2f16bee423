"""Voxel metrics: Dice, PPV, sensitivity, HD95 against hand values, brute force and MONAI."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from longiseg.metrics.inputs import as_mask, as_spacing
from longiseg.metrics.lesion import lesion_detection
from longiseg.metrics.voxel import (
    confusion_counts,
    dice,
    hausdorff_distance,
    hd95,
    mask_surface,
    ppv,
    sensitivity,
    surface_distances,
)


def random_blobs(rng: np.random.Generator, shape: tuple[int, ...], n: int, rmax: float = 4.0) -> np.ndarray:
    """Union of ``n`` random balls (multi-lesion volume)."""
    grids = np.ogrid[tuple(slice(0, s) for s in shape)]
    m = np.zeros(shape, bool)
    for _ in range(n):
        c = rng.uniform(0, shape)
        r = rng.uniform(1.0, rmax)
        m |= sum((g - ci) ** 2 for g, ci in zip(grids, c)) <= r * r
    return m


def brute_surface(m: np.ndarray) -> np.ndarray:
    """Surface voxels by explicit face-neighbour checks (outside the array counts as background)."""
    pad = np.pad(m, 1)
    out = np.zeros_like(m)
    for idx in zip(*np.nonzero(m)):
        for ax, step in itertools.product(range(m.ndim), (-1, 1)):
            nb = [i + 1 for i in idx]
            nb[ax] += step
            if not pad[tuple(nb)]:
                out[idx] = True
                break
    return out


def brute_hd(p: np.ndarray, g: np.ndarray, spacing: np.ndarray, percentile: float | None) -> float:
    """All-pairs distances between surface voxels; float64."""
    cp = np.argwhere(brute_surface(p)) * spacing
    cg = np.argwhere(brute_surface(g)) * spacing
    d = np.sqrt(((cp[:, None, :] - cg[None, :, :]) ** 2).sum(-1))
    a, b = d.min(1), d.min(0)
    if percentile is None:
        return float(max(a.max(), b.max()))
    return float(max(np.percentile(a, percentile), np.percentile(b, percentile)))


# --- hand-computed values and empty conventions ----------------------------------------------------------


def test_dice_ppv_sensitivity_known_values() -> None:
    g = np.zeros((4, 4, 4), bool)
    p = np.zeros_like(g)
    g[0, 0, :4] = True  # 4 voxels
    p[0, 0, 2:4] = True  # 2 TP
    p[3, 3, 3] = True  # 1 FP
    assert confusion_counts(p, g) == (2, 1, 2)
    assert dice(p, g) == pytest.approx(4 / 7)
    assert ppv(p, g) == pytest.approx(2 / 3)
    assert sensitivity(p, g) == pytest.approx(2 / 4)


def test_empty_mask_conventions() -> None:
    z = np.zeros((3, 3, 3), bool)
    one = z.copy()
    one[1, 1, 1] = True
    assert dice(z, z) == 1.0
    assert dice(z, z, empty_value=float("nan")) != dice(z, z, empty_value=float("nan"))  # NaN
    assert dice(one, z) == 0.0 and dice(z, one) == 0.0
    assert ppv(z, one) == 1.0 and ppv(z, one, zero_division=0.0) == 0.0
    assert sensitivity(one, z) == 1.0 and sensitivity(one, z, zero_division=0.0) == 0.0
    assert hd95(z, z) == 0.0
    assert np.isnan(hd95(one, z)) and np.isnan(hd95(z, one))
    assert hd95(one, z, one_empty=373.0) == 373.0
    assert hd95(one, one) == 0.0


def test_torch_and_numpy_inputs_agree() -> None:
    rng = np.random.default_rng(1)
    g = random_blobs(rng, (16, 16, 16), 4)
    p = random_blobs(rng, (16, 16, 16), 4)
    sp = (1.0, 0.8, 2.0)
    assert dice(torch.from_numpy(p).float(), torch.from_numpy(g.astype(np.uint8))) == pytest.approx(
        dice(p, g)
    )
    assert hd95(torch.from_numpy(p), g, torch.tensor(sp)) == pytest.approx(hd95(p, g, sp))


def test_two_dimensional_masks() -> None:
    g = np.zeros((10, 10), bool)
    g[2:5, 2:5] = True
    p = np.roll(g, 3, axis=1)
    assert dice(p, g) == 0.0
    assert hausdorff_distance(p, g, (1.0, 2.0), percentile=None) == pytest.approx(6.0)


# --- HD against brute force and MONAI ----------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("percentile", [95.0, None, 50.0])
def test_hd_matches_brute_force(seed: int, percentile: float | None) -> None:
    rng = np.random.default_rng(seed)
    shape = (9, 10, 8)
    g = rng.random(shape) < 0.25
    p = rng.random(shape) < 0.25
    sp = rng.uniform(0.5, 3.0, 3)
    got = hausdorff_distance(p, g, sp, percentile=percentile)
    assert got == pytest.approx(brute_hd(p, g, sp, percentile), rel=1e-12)


def test_surface_matches_brute_force() -> None:
    rng = np.random.default_rng(3)
    m = rng.random((7, 8, 9)) < 0.5
    np.testing.assert_array_equal(mask_surface(m), brute_surface(m))
    d_pg, d_gp = surface_distances(m, np.roll(m, 1, 0), (1.0, 1.0, 1.0))
    assert d_pg.size == mask_surface(m).sum() and d_gp.size == mask_surface(np.roll(m, 1, 0)).sum()


@pytest.mark.filterwarnings("ignore::FutureWarning")  # MONAI's own deprecation notice in get_mask_edges
@pytest.mark.parametrize("seed", range(4))
def test_agreement_with_monai(seed: int) -> None:
    monai_metrics = pytest.importorskip("monai.metrics")
    rng = np.random.default_rng(seed)
    shape = (24, 28, 20)
    g = random_blobs(rng, shape, 6)
    p = random_blobs(rng, shape, 6) | np.roll(g, 1, axis=2)
    sp = tuple(rng.uniform(0.5, 2.5, 3).tolist())
    yp = torch.from_numpy(p)[None, None].float()
    yg = torch.from_numpy(g)[None, None].float()
    m95 = monai_metrics.compute_hausdorff_distance(yp, yg, include_background=True, percentile=95, spacing=sp)
    mmax = monai_metrics.compute_hausdorff_distance(yp, yg, include_background=True, spacing=sp)
    mdice = monai_metrics.compute_dice(yp, yg, include_background=True)
    # MONAI computes distances in float32.
    assert hd95(p, g, sp) == pytest.approx(float(m95), rel=1e-5, abs=1e-5)
    assert hausdorff_distance(p, g, sp, percentile=None) == pytest.approx(float(mmax), rel=1e-5, abs=1e-5)
    assert dice(p, g) == pytest.approx(float(mdice), rel=1e-6)


def test_mask_touching_the_border_counts_border_as_surface() -> None:
    g = np.ones((2, 3, 3), bool)
    p = g.copy()
    p[0] = False
    # Every voxel of the full block touches the array border, so all are surface.
    assert mask_surface(g).all()
    assert hausdorff_distance(p, g, percentile=None) == pytest.approx(1.0)


# --- input errors ----------------------------------------------------------------------------------------


def test_errors_name_the_argument() -> None:
    g = np.zeros((4, 4, 4), np.uint8)
    with pytest.raises(ValueError, match="pred must be a binary mask"):
        dice(g + 2, g)
    with pytest.raises(ValueError, match="gt contains NaN"):
        dice(g, np.full((4, 4, 4), np.nan))
    with pytest.raises(ValueError, match="same shape"):
        dice(g, np.zeros((4, 4, 5)))
    with pytest.raises(ValueError, match=r"pred must have 2 or 3 dims"):
        dice(np.zeros((1, 4, 4, 4)), np.zeros((1, 4, 4, 4)))
    with pytest.raises(TypeError, match="pred must be a numpy.ndarray or torch.Tensor"):
        dice([[0, 1]], g)
    with pytest.raises(ValueError, match="spacing must have 3 values"):
        hd95(g, g, (1.0, 1.0))
    with pytest.raises(ValueError, match="positive finite"):
        hd95(g, g, (1.0, -1.0, 1.0))
    with pytest.raises(ValueError, match="positive finite"):
        hd95(g, g, (1.0, float("nan"), 1.0))
    with pytest.raises(TypeError, match="spacing"):
        hd95(g, g, "1mm")
    with pytest.raises(ValueError, match="percentile must lie in"):
        hausdorff_distance(g, g, percentile=120)
    with pytest.raises(ValueError, match="non-empty"):
        surface_distances(g, g)


def test_spacing_and_mask_helpers() -> None:
    np.testing.assert_array_equal(as_spacing(None, 3), [1.0, 1.0, 1.0])
    np.testing.assert_array_equal(as_spacing(0.5, 2), [0.5, 0.5])
    assert as_mask("m", np.array([[0.0, 1.0]])).dtype == bool
    for flag in (True, [1.0, True, 1.0], np.ones(3, bool), torch.ones(3, dtype=torch.bool)):
        with pytest.raises(TypeError, match="spacing must hold millimetre values, got a boolean"):
            as_spacing(flag, 3)
    # a thresholded output under autocast (bfloat16: no NumPy dtype) is a mask like any other
    half = torch.zeros(4, 4, 4, dtype=torch.bfloat16)
    half[1:3, 1:3, 1:3] = 1
    assert dice(half, half.float()) == 1.0
    # bool arrays viewed from other bytes hold values > 1 that NumPy reads as True: one lesion, not three
    run = np.array([0, 1, 255, 255, 1, 0], np.uint8).view(bool)[None, None]
    np.testing.assert_array_equal(as_mask("m", run).view(np.uint8), [[[0, 1, 1, 1, 1, 0]]])
    assert lesion_detection(run, run.copy()).n_pred == 1


# --- properties ------------------------------------------------------------------------------------------

_masks = arrays(np.bool_, st.tuples(st.integers(1, 6), st.integers(1, 6), st.integers(1, 6)))


@settings(max_examples=40, deadline=None)
@given(st.data())
def test_dice_symmetric_bounded_and_padding_invariant(data: st.DataObject) -> None:
    g = data.draw(_masks)
    p = data.draw(arrays(np.bool_, g.shape))
    pad = data.draw(st.tuples(*[st.tuples(st.integers(0, 3), st.integers(0, 3)) for _ in range(3)]))
    d = dice(p, g)
    assert d == dice(g, p)
    assert 0.0 <= d <= 1.0
    assert 0.0 <= ppv(p, g) <= 1.0 and 0.0 <= sensitivity(p, g) <= 1.0
    assert dice(np.pad(p, pad), np.pad(g, pad)) == pytest.approx(d)


@settings(max_examples=30, deadline=None)
@given(st.data())
def test_hd_symmetric_and_padding_invariant(data: st.DataObject) -> None:
    g = data.draw(_masks)
    p = data.draw(arrays(np.bool_, g.shape))
    sp = data.draw(st.tuples(*[st.floats(0.5, 3.0) for _ in range(3)]))
    h = hd95(p, g, sp)
    h2 = hd95(g, p, sp)
    assert (np.isnan(h) and np.isnan(h2)) or h == pytest.approx(h2)
    # Padding keeps interior surfaces and adds none, except that a mask touching the array border loses
    # border surface voxels; pad only masks that do not touch the border.
    if not (p | g).any() or np.isnan(h):
        return
    inner = tuple(slice(1, -1) for _ in range(3))
    if all(s > 2 for s in g.shape):
        pi, gi = np.zeros_like(p), np.zeros_like(g)
        pi[inner], gi[inner] = p[inner], g[inner]
        if pi.any() and gi.any():
            hi = hd95(pi, gi, sp)
            assert hd95(np.pad(pi, 2), np.pad(gi, 2), sp) == pytest.approx(hi)


# --- empty-mask convention arguments are checked (probe findings) --------------------------------------


@pytest.mark.parametrize("fn,arg", [(dice, "empty_value"), (ppv, "zero_division"), (sensitivity, "zero_division")])
def test_score_empty_values_are_checked(fn: object, arg: str) -> None:
    z, a = np.zeros((4, 4, 4)), np.zeros((4, 4, 4))
    a[1, 1, 1] = 1
    for bad, err in (("x", TypeError), (None, TypeError), (True, TypeError), (5, ValueError), (-0.5, ValueError)):
        with pytest.raises(err, match=arg):
            fn(a, a, **{arg: bad})  # checked also where the value is not needed
    assert np.isnan(fn(z, z, **{arg: float("nan")}))
    assert fn(z, z, **{arg: np.float32(0.0)}) == 0.0


@pytest.mark.parametrize("arg", ["both_empty", "one_empty"])
def test_hausdorff_empty_values_are_checked(arg: str) -> None:
    z, a = np.zeros((4, 4, 4)), np.zeros((4, 4, 4))
    a[1, 1, 1] = 1
    for bad, err in (("a", TypeError), (None, TypeError), (np.bool_(True), TypeError), (-1, ValueError)):
        with pytest.raises(err, match=arg):
            hd95(a, a, **{arg: bad})
    masks = (z, z) if arg == "both_empty" else (a, z)
    assert hd95(*masks, **{arg: float("inf")}) == float("inf")
    assert np.isnan(hd95(*masks, **{arg: float("nan")}))
    assert hd95(*masks, **{arg: np.int64(7)}) == 7.0


@pytest.mark.parametrize("bad", [np.zeros((0, 3, 3)), np.zeros((4, 0)), np.zeros((3, 3), dtype=complex)],
                         ids=["empty-3d", "empty-2d", "complex"])
def test_the_shared_mask_check_refuses_empty_and_complex_masks(bad: np.ndarray) -> None:
    # a mask of nothing scored 1.0 (two empty masks); a complex mask passed as its real part
    error = TypeError if bad.dtype.kind == "c" else ValueError
    with pytest.raises(error, match="pred"):
        dice(bad, bad)
    with pytest.raises(error, match="gt"):
        lesion_detection(np.zeros((3, 3)), bad)


def test_connectivity_must_be_an_int() -> None:
    with pytest.raises(ValueError, match="connectivity"):
        lesion_detection(np.zeros((3, 3, 3)), np.zeros((3, 3, 3)), connectivity=26.0)
    assert lesion_detection(np.zeros((3, 3, 3)), np.zeros((3, 3, 3)), connectivity=np.int64(26)).f1 == 1.0
