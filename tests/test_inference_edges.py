"""Edge cases of inference found by probing: module modes, input dtypes, affines, entropy signs."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
import torch.nn as nn

from longiseg.data.layout import image_filename
from longiseg.inferers import SlidingWindowInferer3D, TriplanarInferer, binary_entropy, predict_case
from longiseg.networks.output import LongitudinalOutput
from longiseg.networks.wrappers import eval_mode


class Pointwise(nn.Module):
    """Voxel-wise logits (any number of spatial dims) with a frozen-able BatchNorm submodule that is never used."""

    def __init__(self, fail: bool = False) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.ones(()))
        self.bn = nn.BatchNorm1d(1)
        self.fail = fail
        self.seen: set[tuple[bool, bool]] = set()

    def forward(self, x: torch.Tensor) -> LongitudinalOutput:
        self.seen |= {(m.training, torch.is_grad_enabled()) for m in self.modules()}
        if self.fail:
            raise RuntimeError("model failure")
        base = self.scale * x[:, 0, 0:1]
        prog = (x[:, 1:, 0] - x[:, :1, 0]).unsqueeze(2)
        return LongitudinalOutput(base, prog)


def _case(shape=(5, 4, 6), t: int = 2, c: int = 1) -> np.ndarray:
    return np.random.default_rng(0).normal(size=(t, c, *shape)).astype(np.float32)


def _inferers() -> list:
    out: list = [TriplanarInferer(patch_size=4, progress=False)]
    try:
        import monai  # noqa: F401
    except ImportError:  # pragma: no cover - the 3D inferer needs MONAI
        return out
    return [*out, SlidingWindowInferer3D(roi_size=4, progress=False)]


@pytest.mark.parametrize("inferer", _inferers(), ids=lambda i: type(i).__name__)
@pytest.mark.parametrize("model_training, bn_training", [(True, False), (False, True)])
def test_inferers_give_every_submodule_its_own_mode_back(inferer, model_training: bool, bn_training: bool) -> None:
    model = Pointwise()
    model.train(model_training)
    model.bn.train(bn_training)  # e.g. fine-tuning with frozen BatchNorm statistics
    before = {k: v.clone() for k, v in model.state_dict().items()}
    base, _ = inferer(model, _case())
    assert model.seen == {(False, False)}  # every module in eval mode, no autograd, during the forward passes
    assert (model.training, model.bn.training) == (model_training, bn_training)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert torch.is_grad_enabled()
    assert base.shape == (5, 4, 6)


@pytest.mark.parametrize("inferer", _inferers(), ids=lambda i: type(i).__name__)
def test_modes_are_restored_when_the_model_raises(inferer) -> None:
    model = Pointwise(fail=True)
    model.train()
    model.bn.eval()
    with pytest.raises(RuntimeError, match="model failure"):
        inferer(model, _case())
    assert model.training and not model.bn.training


def test_eval_mode_checks_its_argument() -> None:
    with pytest.raises(TypeError, match="model"):
        with eval_mode("not a module"):  # type: ignore[arg-type]
            pass


def test_run_prediction_leaves_the_models_modes_as_they_were(tmp_path: Path) -> None:
    from longiseg import build_model
    from longiseg.workflows.config import InferenceConfig
    from longiseg.workflows.predict import run_prediction

    torch.manual_seed(0)
    model = build_model("segformer", in_channels=1, widths=(8, 16, 16, 32), depths=(1, 1, 1, 1), decoder_dim=16,
                        num_heads=(1, 2, 2, 4))
    model.train()
    frozen = next(m for m in model.modules() if m is not model and list(m.children()) == [])
    frozen.eval()
    case_dir = tmp_path / "in" / "case01"
    case_dir.mkdir(parents=True)
    img = _case(shape=(6, 5, 4))
    for t in range(2):
        nib.save(nib.Nifti1Image(img[t, 0], np.eye(4)), case_dir / image_filename(t, "flair"))
    cfg = InferenceConfig(patch_size=8, batch_size=64, min_lesion_mm3=0.0, planes=["axial"])
    run_prediction(model, tmp_path / "in", tmp_path / "out", cfg, modalities=["flair"], device="cpu", progress=False)
    assert (tmp_path / "out" / "case01").is_dir()
    assert model.training and not frozen.training


@pytest.mark.parametrize("inferer", _inferers(), ids=lambda i: type(i).__name__)
@pytest.mark.parametrize("dtype", [np.complex64, object])
def test_complex_or_non_numeric_images_are_refused(inferer, dtype) -> None:
    with pytest.raises(TypeError, match="images must hold real numbers"):
        inferer(Pointwise(), _case().astype(dtype))


def test_complex_tensor_images_are_refused() -> None:
    with pytest.raises(TypeError, match="images must hold real numbers"):
        TriplanarInferer(patch_size=4, progress=False)(Pointwise(), torch.from_numpy(_case()).to(torch.complex64))


@pytest.mark.parametrize("dtype", [np.float64, np.int16, np.uint8, bool])
def test_real_image_dtypes_are_accepted(dtype) -> None:
    img = (np.abs(_case()) * 3).astype(dtype)
    base, prog = TriplanarInferer(patch_size=4, progress=False)(Pointwise(), img)
    ref = 1 / (1 + np.exp(-img[0, 0].astype(np.float64)))
    np.testing.assert_allclose(base, ref, atol=1e-6)


@pytest.mark.parametrize(
    "affine, match",
    [
        (np.full((4, 4), np.nan), "finite"),
        (np.diag([1.0, np.inf, 1.0, 1.0]), "finite"),
        (np.eye(3), r"shape \(3, 3\)"),
        (np.diag([1.0, 0.0, 1.0, 1.0]), "non-singular"),
    ],
)
def test_triplanar_names_a_bad_affine(affine, match: str) -> None:
    with pytest.raises(TypeError, match="affine must be an array"):
        TriplanarInferer(patch_size=4, progress=False)(Pointwise(), _case(), affine=[["a"] * 4] * 4)
    with pytest.raises(ValueError, match=match):
        TriplanarInferer(patch_size=4, progress=False)(Pointwise(), _case(), affine=affine)


def test_triplanar_accepts_an_affine_as_tensor_or_list() -> None:
    aff = np.array([[0, 0, 2.0, 1], [1.0, 0, 0, 2], [0, 1.5, 0, 3], [0, 0, 0, 1]])
    inf = TriplanarInferer(patch_size=4, progress=False)
    ref = inf(Pointwise(), _case(), affine=aff)
    for a in (torch.from_numpy(aff), aff.tolist()):
        got = inf(Pointwise(), _case(), affine=a)
        np.testing.assert_array_equal(got[0], ref[0])


def test_predict_case_refuses_a_non_finite_affine_before_writing(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="affine contains NaN"):
        predict_case(Pointwise(), _case(), np.full((4, 4), np.nan), None, tmp_path, "c",
                     inferer=TriplanarInferer(patch_size=4, progress=False))
    assert not (tmp_path / "c").exists()


@pytest.mark.parametrize("as_tensor", [False, True])
def test_entropy_is_never_negative_zero(as_tensor: bool) -> None:
    p = np.array([0.0, 1.0, 0.5], dtype=np.float32)
    h = binary_entropy(torch.from_numpy(p) if as_tensor else p)
    h = h.numpy() if as_tensor else h
    assert not np.signbit(h).any()
    assert h[0] == 0.0 and h[1] == 0.0
    assert h[2] == pytest.approx(np.log(2.0), rel=1e-6)


class ChangingChannels(nn.Module):
    """A model whose number of outputs per head is 1 on its first call and 2 afterwards."""

    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    def forward(self, x: torch.Tensor) -> LongitudinalOutput:
        self.calls += 1
        k = 1 if self.calls == 1 else 2
        b, t, spatial = x.shape[0], x.shape[1], x.shape[3:]
        return LongitudinalOutput(torch.zeros(b, k, *spatial), torch.zeros(b, t - 1, k, *spatial))


@pytest.mark.parametrize("inferer", [
    TriplanarInferer(4, batch_size=1, progress=False),  # K changes between batches of one slice
    TriplanarInferer(4, batch_size=100, progress=False),  # ... between planes
    TriplanarInferer(4, batch_size=100, flip_tta=True, progress=False),  # ... between flips of one batch
    "sliding-3d",
], ids=["triplanar-batches", "triplanar-planes", "triplanar-flips", "sliding-3d"])
def test_a_model_changing_its_number_of_outputs_is_named(inferer) -> None:
    if inferer == "sliding-3d":
        pytest.importorskip("monai")
        inferer = SlidingWindowInferer3D(4, batch_size=1, progress=False)
    with pytest.raises(ValueError, match=r"returned 6 probability channels for one batch and 3 for another"):
        inferer(ChangingChannels(), torch.rand(3, 1, 5, 6, 7))


def _tiny(name: str) -> nn.Module:
    from longiseg import build_model

    return build_model(name, features=(4, 8, 16)).eval()


_CASE = np.random.default_rng(0).normal(size=(2, 2, 9, 12, 7)).astype(np.float32)


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda: TriplanarInferer(patch_size=10, progress=False)(_tiny("longi_unet_dw_2d"), _CASE),
         r"patch_size must be divisible by 4"),
        (lambda: SlidingWindowInferer3D(roi_size=6, progress=False)(_tiny("longi_unet_dw"), _CASE),
         r"roi_size must be divisible by 4"),
        (lambda: TriplanarInferer(patch_size=16, progress=False)(_tiny("longi_unet_dw_2d"), _CASE[:, :1]),
         r"images must have C=2 channels .*got shape \(2, 1, 9, 12, 7\)"),
        (lambda: TriplanarInferer(patch_size=16, progress=False)(_tiny("longi_unet_concat_2d"),
                                                                np.concatenate([_CASE, _CASE[:1]])),
         r"images must have T=2 timepoints"),
        (lambda: TriplanarInferer(patch_size=16, progress=False)(_tiny("longi_unet_dw"), _CASE),
         r"'longi_unet_dw' is a 3D model.*use SlidingWindowInferer3D"),
        (lambda: SlidingWindowInferer3D(roi_size=16, progress=False)(_tiny("longi_unet_dw_2d"), _CASE),
         r"'longi_unet_dw_2d' is a 2.5D model.*use TriplanarInferer"),
    ],
    ids=["patch", "roi", "channels", "timepoints", "3d-model-tri-planar", "2.5d-model-sliding"],
)
def test_a_model_that_cannot_take_the_case_or_window_is_named_up_front(call, match: str) -> None:
    # these failed inside the first window batch, naming a patch batch's shape the caller never passed
    # (e.g. "every spatial size of x must be divisible by 4 ..., got shape (14, 2, 2, 10, 10)")
    with pytest.raises(ValueError, match=match):
        call()


def test_window_sizes_given_as_arrays_are_accepted_and_bad_ones_named() -> None:
    # np.array([4, 4]) was refused as "must be an int or a sequence of 2 ints" (an array is not a Sequence)
    assert TriplanarInferer(patch_size=np.array([8, 4])).patch_size == (8, 4)
    assert SlidingWindowInferer3D(roi_size=np.array([4, 8, 4], np.int64)).roi_size == (4, 8, 4)
    with pytest.raises(ValueError, match=r"patch_size must have 2 entries \(a window size per axis\), got 3"):
        TriplanarInferer(patch_size=(8, 8, 8))
    with pytest.raises(TypeError, match=r"roi_size\[1\] must be an int"):
        SlidingWindowInferer3D(roi_size=(4, 4.5, 4))
