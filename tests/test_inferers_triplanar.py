"""Tri-planar inference against a float64 reference with a model whose logits are a known function."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn as nn

from longiseg.inferers import (
    PLANE_AXES,
    TriplanarInferer,
    blend_weights,
    brain_window_starts,
    plane_axis,
    window_starts,
)
from longiseg.networks.output import LongitudinalOutput

PATCH = (4, 7)


def _bias(ph: int, pw: int) -> np.ndarray:
    """A patch-position-dependent logit offset: makes the model neither translation- nor flip-equivariant."""
    r, c = np.meshgrid(np.arange(ph), np.arange(pw), indexing="ij")
    return 0.3 * r - 0.2 * c + 0.05 * r * c


def _logits_np(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Reference logits of :class:`PatchBiasModel` for one patch ``(T, C, ph, pw)`` in float64."""
    bias = _bias(*x.shape[-2:])
    base = 2.0 * x[0, 0] - x[0, -1] + bias
    prog = 3.0 * (x[1:, 0] - x[:1, 0]) - bias
    return base, prog


class PatchBiasModel(nn.Module):
    """Logits = fixed function of the input pixels plus a fixed function of the position in the patch."""

    def __init__(self, k: int = 1) -> None:
        super().__init__()
        self.k = k
        self.scale = nn.Parameter(torch.ones(()))  # gives the model a device and a training flag
        self.calls = 0

    def forward(self, x: torch.Tensor) -> LongitudinalOutput:
        self.calls += 1
        assert x.ndim == 5
        bias = torch.as_tensor(_bias(*x.shape[-2:]), dtype=x.dtype, device=x.device)
        base = self.scale * (2.0 * x[:, 0, 0] - x[:, 0, -1]) + bias
        prog = 3.0 * (x[:, 1:, 0] - x[:, :1, 0]) - bias
        base = torch.stack([base * (j + 1) for j in range(self.k)], dim=1)
        prog = torch.stack([prog * (j + 1) for j in range(self.k)], dim=2)
        return LongitudinalOutput(base, prog)


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-z))


def _ref_weights(ph: int, pw: int, blend: str) -> np.ndarray:
    if blend == "constant":
        return np.ones((ph, pw))
    gy = np.exp(-((np.arange(ph) - (ph - 1) / 2) ** 2) / (2 * (ph / 8) ** 2))
    gx = np.exp(-((np.arange(pw) - (pw - 1) / 2) ** 2) / (2 * (pw / 8) ** 2))
    return np.outer(gy / gy.max(), gx / gx.max())


def _ref_starts(size: int, window: int, overlap: float, brain_1d: np.ndarray, crop: bool) -> list[int]:
    if not crop:
        return window_starts(size, window, overlap)
    idx = np.flatnonzero(brain_1d)
    return [] if idx.size == 0 else brain_window_starts(size, window, overlap, int(idx[0]), int(idx[-1]))


def reference_triplanar(
    images: np.ndarray,
    planes,
    blend="constant",
    overlap=0.5,
    skip_empty=True,
    brain=None,
    flip_tta=False,
    crop_to_brain=False,
):
    """Straightforward float64 tri-planar inference, patch by patch."""
    img = images.astype(np.float64)
    t = img.shape[0]
    if brain is None:
        brain = (img != 0).any(axis=(0, 1))
    ph, pw = PATCH
    wgt = _ref_weights(ph, pw, blend)
    flips = [(), (-2,), (-1,), (-2, -1)] if flip_tta else [()]
    total = np.zeros((t, *img.shape[2:]))
    count = np.zeros(img.shape[2:])
    computed = {}
    for plane in planes:
        a = plane_axis(plane)
        vol = np.moveaxis(img, 2 + a, 0)  # (N, T, C, rows, cols)
        bm = np.moveaxis(brain, a, 0)
        n, _, _, rows, cols = vol.shape
        acc = np.zeros((n, t, rows, cols))
        wsum = np.zeros((n, rows, cols))
        computed[plane] = 0
        for s in range(n):
            padded = np.zeros((*vol.shape[1:3], max(rows, ph), max(cols, pw)))
            padded[..., :rows, :cols] = vol[s]
            for y in _ref_starts(rows, ph, overlap, bm[s].any(axis=1), crop_to_brain):
                for x in _ref_starts(cols, pw, overlap, bm[s].any(axis=0), crop_to_brain):
                    if skip_empty and not bm[s, y : y + ph, x : x + pw].any():
                        continue
                    computed[plane] += 1
                    patch = padded[..., y : y + ph, x : x + pw]
                    prob = np.zeros((t, ph, pw))
                    for dims in flips:
                        b, p = _logits_np(np.flip(patch, dims) if dims else patch)
                        pr = _sigmoid(np.concatenate([b[None], p]))
                        prob += np.flip(pr, dims) if dims else pr
                    prob /= len(flips)
                    hh, ww = min(ph, rows - y), min(pw, cols - x)
                    acc[s, :, y : y + hh, x : x + ww] += (prob * wgt)[:, :hh, :ww]
                    wsum[s, y : y + hh, x : x + ww] += wgt[:hh, :ww]
        cov = wsum > 0
        plane_prob = np.where(cov[:, None], acc / np.where(cov, wsum, 1)[:, None], 0.0)
        total += np.moveaxis(plane_prob, 0, 1 + a)
        count += np.moveaxis(cov, 0, a)
    out = np.where(count > 0, total / np.maximum(count, 1), 0.0)
    return out[0], out[1:], computed, count


def _case(t: int = 2, c: int = 2, shape=(9, 11, 6), seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    img = rng.normal(size=(t, c, *shape)).astype(np.float32)
    # brain only in a corner box: whole slices and patches of every plane are empty
    img[:, :, 5:] = 0
    img[:, :, :, 6:] = 0
    img[:, :, :, :, 4:] = 0
    return img


def _run(img, **kw):
    model = PatchBiasModel()
    kw.setdefault("crop_to_brain", False)
    brain = kw.pop("brain_mask", None)
    inf = TriplanarInferer(
        patch_size=PATCH,
        batch_size=kw.pop("batch_size", 5),
        progress=False,
        **kw,
    )
    base, prog = inf(model, img, brain)
    return base, prog, inf


@pytest.mark.parametrize("blend", ["constant", "gaussian"])
def test_matches_reference_exactly_with_skipping(blend: str) -> None:
    img = _case()
    base, prog, inf = _run(img, blend=blend)
    rb, rp, computed, count = reference_triplanar(img, ("axial", "coronal", "sagittal"), blend=blend)
    assert base.shape == (9, 11, 6) and prog.shape == (1, 9, 11, 6)
    assert base.dtype == np.float32 and prog.dtype == np.float32
    np.testing.assert_allclose(base, rb, rtol=0, atol=2e-7)
    np.testing.assert_allclose(prog, rp, rtol=0, atol=2e-7)
    # the corner far from the brain is covered by no plane -> exactly 0; some voxels by 1 or 2 planes only
    assert (count == 0).any() and (count == 1).any() and (count == 2).any() and (count == 3).any()
    assert np.all(base[count == 0] == 0) and np.all(prog[:, count == 0] == 0)
    for plane, n in computed.items():
        assert inf.last_stats[plane]["computed"] == n
        assert inf.last_stats[plane]["skipped"] > 0


def test_hand_computed_overlap_average() -> None:
    """One voxel by hand: axial plane only, constant blending, rows covered by two overlapping patches."""
    img = np.zeros((2, 1, 6, 7, 1), np.float32)
    img[0, 0] = 1.0
    base, _, _ = _run(img, planes=("axial",))
    # axial slices are (D, H) = (6, 7); row starts [0, 2] (patch 4), col starts [0] (patch 7 == 7 cols)
    assert window_starts(6, 4, 0.5) == [0, 2] and window_starts(7, 7, 0.5) == [0]
    bias = _bias(4, 7)
    # voxel (d=3, h=2): local rows 3 (start 0) and 1 (start 2), column 2; logit 2 * 1 - 1 + bias
    expected = 0.5 * (_sigmoid(1 + bias[3, 2]) + _sigmoid(1 + bias[1, 2]))
    assert base[3, 2, 0] == pytest.approx(expected, abs=1e-7)
    # voxel (d=0, h=0): only the first patch
    assert base[0, 0, 0] == pytest.approx(_sigmoid(1 + bias[0, 0]), abs=1e-7)


def test_no_skipping_and_explicit_brain_mask() -> None:
    img = _case(shape=(7, 6, 9), seed=1)
    base, prog, inf = _run(img, skip_empty=False)
    rb, rp, _, count = reference_triplanar(img, ("axial", "coronal", "sagittal"), skip_empty=False)
    assert np.all(count == 3) and all(s["skipped"] == 0 for s in inf.last_stats.values())
    np.testing.assert_allclose(base, rb, atol=2e-7)
    np.testing.assert_allclose(prog, rp, atol=2e-7)

    brain = np.zeros(img.shape[2:], bool)
    brain[2:4, 1:3, 5:8] = True
    base, prog, _ = _run(img, brain_mask=brain)
    rb, rp, _, _ = reference_triplanar(img, ("axial", "coronal", "sagittal"), brain=brain)
    np.testing.assert_allclose(base, rb, atol=2e-7)
    np.testing.assert_allclose(prog, rp, atol=2e-7)


@pytest.mark.parametrize("batch_size", [1, 7, 10_000])
def test_batching_across_slices_does_not_change_the_result(batch_size: int) -> None:
    img = _case(shape=(6, 9, 7), seed=4)
    base, prog, _ = _run(img, batch_size=batch_size)
    rb, rp, _, _ = reference_triplanar(img, ("axial", "coronal", "sagittal"))
    np.testing.assert_allclose(base, rb, atol=2e-7)
    np.testing.assert_allclose(prog, rp, atol=2e-7)


@pytest.mark.parametrize("planes", [("axial",), ("coronal",), ("sagittal",), ("sagittal", "axial")])
def test_plane_switches(planes) -> None:
    img = _case(t=3, c=1, shape=(8, 5, 10), seed=2)
    base, prog, inf = _run(img, planes=planes, overlap=0.25)
    rb, rp, _, _ = reference_triplanar(img, planes, overlap=0.25)
    assert prog.shape == (2, 8, 5, 10)
    assert set(inf.last_stats) == set(planes)
    np.testing.assert_allclose(base, rb, atol=2e-7)
    np.testing.assert_allclose(prog, rp, atol=2e-7)


def test_flip_tta() -> None:
    img = _case(shape=(6, 8, 5), seed=3)
    base, prog, _ = _run(img, flip_tta=True, blend="gaussian")
    rb, rp, _, _ = reference_triplanar(img, ("axial", "coronal", "sagittal"), blend="gaussian", flip_tta=True)
    np.testing.assert_allclose(base, rb, atol=2e-7)
    np.testing.assert_allclose(prog, rp, atol=2e-7)
    no_tta, _, _ = _run(img, blend="gaussian")
    assert np.abs(no_tta - base).max() > 1e-3  # the model is not flip-equivariant, so TTA changes the result


def test_plane_axes_convention_and_torch_input() -> None:
    assert PLANE_AXES == {"sagittal": 0, "coronal": 1, "axial": 2}
    img = torch.from_numpy(_case(shape=(5, 6, 7)))
    model = PatchBiasModel(k=2)
    model.train()
    inf = TriplanarInferer(patch_size=4, progress=False, planes="axial")
    base, prog = inf(model, img)
    assert base.shape == (2, 5, 6, 7) and prog.shape == (1, 2, 5, 6, 7)
    assert model.training  # mode restored


def test_window_starts_and_weights() -> None:
    assert window_starts(10, 4, 0.5) == [0, 2, 4, 6]
    assert window_starts(9, 4, 0.5) == [0, 2, 3, 5]
    assert window_starts(193, 128, 0.5) == [0, 33, 65]
    assert window_starts(229, 128, 0.5) == [0, 51, 101]  # 50.5 rounds up
    assert window_starts(3, 8, 0.5) == [0]
    assert window_starts(8, 4, 0.0) == [0, 4]
    w = blend_weights((5, 6), "gaussian").numpy()
    np.testing.assert_allclose(w, _ref_weights(5, 6, "gaussian"), rtol=1e-6)
    assert w.max() == pytest.approx(1.0) and w.min() > 0  # exact: blend_weights clamps at 1e-6
    assert blend_weights((128, 128), "gaussian").min() > 0


def test_all_empty_case_returns_zeros() -> None:
    img = np.zeros((2, 1, 4, 5, 6), np.float32)
    model = PatchBiasModel()
    base, prog = TriplanarInferer(patch_size=4, progress=False)(model, img)
    # one all-zero patch, only to learn the model's output channels
    assert model.calls == 1 and not base.any() and not prog.any() and prog.shape == (1, 4, 5, 6)
    base, prog = TriplanarInferer(patch_size=4, progress=False)(PatchBiasModel(k=2), img)
    assert base.shape == (2, 4, 5, 6) and prog.shape == (1, 2, 4, 5, 6)  # K kept, as for a non-empty case


def test_window_grid_follows_the_documented_step_despite_round_off() -> None:
    """step = floor(p (1 - overlap)): 10 * (1 - 0.8) is 1.9999999999999996 in floating point, yet step 2."""
    assert window_starts(20, 10, 0.8) == [0, 2, 4, 6, 8, 10]
    assert len(window_starts(100, 20, 0.9)) == 41 and len(window_starts(416, 160, 0.8)) == 9


def test_flags_and_planes_are_checked() -> None:
    for flag in ("flip_tta", "skip_empty", "crop_to_brain", "amp", "progress"):
        with pytest.raises(TypeError, match=f"{flag} must be a bool, got str 'no'"):
            TriplanarInferer(**{flag: "no"})
    with pytest.raises(TypeError, match="planes must be a plane name or a sequence"):
        TriplanarInferer(planes=None)  # type: ignore[arg-type]


def test_model_dtype_and_big_endian_inputs() -> None:
    """A float64 model gets float64 windows; big-endian arrays (as nibabel may return) are accepted."""
    img = np.random.default_rng(0).normal(size=(2, 1, 5, 6, 7))
    ref = TriplanarInferer(patch_size=4, progress=False, crop_to_brain=False)(PatchBiasModel(), img)
    model64 = PatchBiasModel().double()
    seen: list[torch.dtype] = []
    model64.register_forward_pre_hook(lambda _m, args: seen.append(args[0].dtype))
    out = TriplanarInferer(patch_size=4, progress=False, crop_to_brain=False)(model64, img.astype(">f8"))
    assert set(seen) == {torch.float64}
    for a, b in zip(ref, out):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    ("kwargs", "call", "err", "match"),
    [
        ({"planes": ("axial", "transverse")}, None, ValueError, "unknown plane"),
        ({"planes": ()}, None, ValueError, "at least one"),
        ({"planes": ("axial", "axial")}, None, ValueError, "repeat"),
        ({"overlap": 1.0}, None, ValueError, "overlap"),
        ({"blend": "linear"}, None, ValueError, "blend"),
        ({"patch_size": (4, 4, 4)}, None, ValueError, "patch_size"),
        ({"patch_size": 0}, None, ValueError, "patch_size"),
        ({"batch_size": 0}, None, ValueError, "batch_size"),
        ({}, "rank", ValueError, r"images must have 5 dims \(T, C, D, H, W\)"),
        ({}, "nan", ValueError, "NaN"),
        ({}, "one_timepoint", ValueError, "timepoints"),
        ({}, "mask_shape", ValueError, "brain_mask and images spatial shape"),
        ({}, "mask_values", ValueError, "binary"),
        ({}, "list", TypeError, "images must be a numpy array or torch.Tensor"),
    ],
)
def test_errors(kwargs, call, err, match) -> None:
    img = _case(shape=(5, 5, 5))
    if call is None:
        with pytest.raises(err, match=match):
            TriplanarInferer(progress=False, **kwargs)
        return
    inf = TriplanarInferer(patch_size=4, progress=False)
    mask = None
    if call == "rank":
        img = img[0]
    elif call == "nan":
        img[1, 0, 2, 2, 2] = math.nan
    elif call == "one_timepoint":
        img = img[:1]
    elif call == "mask_shape":
        mask = np.ones((5, 5, 4), bool)
    elif call == "mask_values":
        mask = np.full((5, 5, 5), 2, np.uint8)
    elif call == "list":
        img = img.tolist()
    with pytest.raises(err, match=match):
        inf(PatchBiasModel(), img, mask)


#: Devices an inferer must refuse when it is built (shared with the 3D inferer's tests): (device, error, message).
BAD_DEVICES = [
    ("gpu", ValueError, "device 'gpu' is not a device"),
    (5, TypeError, "device must be a string such as 'cpu' or 'cuda:0', got int"),
    pytest.param("cuda", ValueError, "device 'cuda': CUDA is not available",
                 marks=pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")),
]


@pytest.mark.parametrize(("device", "err", "match"), BAD_DEVICES)
def test_device_is_checked_at_construction(device, err, match) -> None:
    """An unknown or absent device is refused when the inferer is built, not by torch in the first patch."""
    with pytest.raises(err, match=match):
        TriplanarInferer(patch_size=4, progress=False, device=device)


def test_device_is_resolved_and_a_non_module_model_refused() -> None:
    assert TriplanarInferer(device="cpu").device == torch.device("cpu")
    assert TriplanarInferer(device=None).device is None  # the model's own device
    inf = TriplanarInferer(patch_size=4, progress=False)
    with pytest.raises(TypeError, match="model must be a torch.nn.Module .*got function"):
        inf(lambda x: x, _case(shape=(5, 5, 5)))


def test_bad_model_output() -> None:
    class Tensors(nn.Module):
        def forward(self, x):
            return x[:, 0]

    class WrongShape(nn.Module):
        def forward(self, x):
            return LongitudinalOutput(x[:, 0, :1, :2], x[:, 1:, :1, :2])

    inf = TriplanarInferer(patch_size=4, progress=False)
    img = _case(shape=(5, 5, 5))
    with pytest.raises(TypeError, match="LongitudinalOutput"):
        inf(Tensors(), img)
    with pytest.raises(ValueError, match="does not match its input"):
        inf(WrongShape(), img)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_amp_matches_cpu() -> None:
    img = _case(shape=(9, 11, 6))
    cpu_base, cpu_prog, _ = _run(img)
    model = PatchBiasModel()
    inf = TriplanarInferer(patch_size=PATCH, progress=False, device="cuda", amp=True)
    base, prog = inf(model, img)
    assert base.dtype == np.float32 and next(model.parameters()).is_cuda
    np.testing.assert_allclose(base, cpu_base, atol=2e-3)  # float16 autocast
    np.testing.assert_allclose(prog, cpu_prog, atol=2e-3)


def _lesion_case(shape=(14, 17, 12), seed: int = 5) -> np.ndarray:
    """An ellipsoidal 'brain' in a larger box: per-slice brain boxes are narrower than the slices."""
    rng = np.random.default_rng(seed)
    grids = np.meshgrid(*[np.linspace(-1, 1, n) for n in shape], indexing="ij")
    inside = sum((g / r) ** 2 for g, r in zip(grids, (0.8, 0.7, 0.9))) <= 1
    img = rng.normal(size=(2, 2, *shape)).astype(np.float32)
    return img * inside


@pytest.mark.parametrize(
    "kw",
    [
        {},
        {"blend": "gaussian"},
        {"skip_empty": False},
        {"overlap": 0.25, "planes": ("coronal", "axial")},
        {"flip_tta": True},
    ],
)
def test_crop_to_brain_matches_reference(kw) -> None:
    img = _lesion_case()
    kw = dict(kw)
    base, prog, inf = _run(img, crop_to_brain=True, batch_size=6, **kw)
    ref_kw = {k: v for k, v in kw.items() if k != "planes"}
    planes = kw.get("planes", ("axial", "coronal", "sagittal"))
    rb, rp, computed, _ = reference_triplanar(img, planes, crop_to_brain=True, **ref_kw)
    np.testing.assert_allclose(base, rb, rtol=0, atol=2e-7)
    np.testing.assert_allclose(prog, rp, rtol=0, atol=2e-7)
    _, _, plain, _ = reference_triplanar(img, planes, crop_to_brain=False, **ref_kw)
    for plane, n in computed.items():
        assert inf.last_stats[plane]["computed"] == n
        assert n < plain[plane]  # fewer windows than the whole-slice grid
    # every brain voxel is covered by every plane; the result differs from the whole-slice grid
    brain = (img != 0).any(axis=(0, 1))
    assert np.all(base[brain] > 0)
    rb_plain, _, _, _ = reference_triplanar(img, planes, crop_to_brain=False, **ref_kw)
    assert not np.allclose(base, rb_plain)


def test_crop_to_brain_with_explicit_mask_and_empty_case() -> None:
    img = _lesion_case(seed=6)
    brain = np.zeros(img.shape[2:], bool)
    brain[3:9, 4:15, 2:7] = True
    base, prog, _ = _run(img, crop_to_brain=True, brain_mask=brain)
    rb, rp, _, count = reference_triplanar(
        img, ("axial", "coronal", "sagittal"), brain=brain, crop_to_brain=True
    )
    np.testing.assert_allclose(base, rb, atol=2e-7)
    np.testing.assert_allclose(prog, rp, atol=2e-7)
    assert np.all(count[brain] == 3)
    zeros, _, inf = _run(np.zeros_like(img), crop_to_brain=True)
    assert not zeros.any() and all(s["computed"] == 0 for s in inf.last_stats.values())


def test_brain_window_starts() -> None:
    assert brain_window_starts(229, 128, 0.5, 20, 200) == [20, 73]
    assert brain_window_starts(229, 128, 0.5, 0, 228) == window_starts(229, 128, 0.5)
    assert brain_window_starts(10, 4, 0.5, 3, 4) == [2]  # short box: one centred window
    assert brain_window_starts(10, 4, 0.5, 0, 0) == [0]  # clipped at the start
    assert brain_window_starts(10, 4, 0.5, 9, 9) == [6]  # clipped at the end
    assert brain_window_starts(3, 8, 0.5, 1, 2) == [0]  # axis shorter than the window (padded)
    rng = np.random.default_rng(0)
    for _ in range(300):
        size, window = int(rng.integers(1, 60)), int(rng.integers(1, 30))
        lo = int(rng.integers(0, size))
        hi = int(rng.integers(lo, size))
        overlap = float(rng.choice([0.0, 0.25, 0.5, 0.75]))
        starts = brain_window_starts(size, window, overlap, lo, hi)
        covered = np.zeros(size, bool)
        for st in starts:
            assert st >= 0 and (size < window or st + window <= size)
            covered[st : st + window] = True
        assert covered[lo : hi + 1].all()
        assert starts == sorted(starts)
    with pytest.raises(ValueError, match="lo <= hi"):
        brain_window_starts(10, 4, 0.5, 5, 3)
    with pytest.raises(ValueError, match="hi < size"):
        brain_window_starts(10, 4, 0.5, 2, 10)
    with pytest.raises(TypeError, match="lo must be an int"):
        brain_window_starts(10, 4, 0.5, 1.5, 3)


def test_crop_to_brain_is_the_default() -> None:
    assert TriplanarInferer().crop_to_brain is True
    assert TriplanarInferer(crop_to_brain=False).crop_to_brain is False


class _SliceRecorder(nn.Module):
    """Zero logits; remembers the slices it was given."""

    def __init__(self) -> None:
        super().__init__()
        self.anchor = nn.Parameter(torch.zeros(()))
        self.seen: list[torch.Tensor] = []

    def forward(self, x: torch.Tensor) -> LongitudinalOutput:
        self.seen.append(x.detach().clone())
        b, t, _, h, w = x.shape
        return LongitudinalOutput(baseline=torch.zeros(b, 1, h, w) + self.anchor,
                                  progression=torch.zeros(b, t - 1, 1, h, w) + self.anchor)


def test_planes_are_the_anatomical_ones_the_affine_names() -> None:
    """Training samples "axial" slices normal to world z whatever the storage order (data.case.plane_axes); with
    the case's affine, inference does too. Stored as PIR (array axes: y, z, x), "axial" is array axis 1."""
    shape = (6, 5, 7)  # PIR: i runs posterior (world y), j inferior (world z), k right (world x)
    affine = np.array([[0, 0, 1, 0], [-1, 0, 0, 0], [0, -1, 0, 0], [0, 0, 0, 1]], dtype=float)
    world_z = np.broadcast_to((-np.arange(shape[1], dtype=np.float32))[None, :, None], shape)
    img = np.stack([np.stack([world_z + 10])] * 2)  # (T=2, C=1, D, H, W): each axial slice holds one value
    model = _SliceRecorder()
    TriplanarInferer(patch_size=4, progress=False, planes="axial", skip_empty=False, crop_to_brain=False)(
        model, img, affine=affine)
    assert model.seen and all(torch.unique(x[i, 0, 0]).numel() == 1 for x in model.seen for i in range(len(x)))
    model.seen.clear()  # without the affine, "axial" is array axis 2: its slices cut across world z
    TriplanarInferer(patch_size=4, progress=False, planes="axial", skip_empty=False, crop_to_brain=False)(model, img)
    assert any(torch.unique(x[i, 0, 0]).numel() > 1 for x in model.seen for i in range(len(x)))
