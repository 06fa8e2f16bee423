"""Arguments that an audit of the public API found unchecked: each row was accepted silently (an infinite
tolerance switching a grid check off, a NaN volume binned as the largest lesion, ``True`` selecting timepoint 1, a
manifest of five one-letter modalities) or failed deep inside NumPy/torch with an AttributeError or
ZeroDivisionError. Each now raises a TypeError/ValueError naming the argument; all inputs are tiny.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from longiseg import build_model
from longiseg.data.dataset import CaseCache
from longiseg.data.loading import check_progression_flag, read_mask_case
from longiseg.data.manifest import Manifest, ManifestEntry, read_manifest, write_manifest
from longiseg.data.predictions import read_prediction
from longiseg.data.preprocessing import CropBox
from longiseg.data.volumes import check_same_grid, nifti_spacing
from longiseg.engine.checkpoint import load_model_weights
from longiseg.engine.config import TrainerConfig
from longiseg.engine.distributed import init_distributed
from longiseg.engine.optim import build_optimizer
from longiseg.engine.schedulers import WarmupCosineSchedule
from longiseg.inferers.settings import InferenceConfig, inference_settings, make_inferer
from longiseg.metrics import ResultsTable, SizeBins
from longiseg.networks.blocks.mlp_decoder import AllMLPDecoder
from longiseg.spec import ModelSpec

EYE = np.eye(4)
ENTRY = ManifestEntry("a", "a", 2, None)


@pytest.fixture(scope="module")
def model() -> torch.nn.Module:
    return build_model("dynunet_2d_ms")


def _rows() -> list[tuple[str, object, type[Exception], str]]:
    table = ResultsTable([{"case_id": "c", "patient_id": "p", "target": "progression_t1", "timepoint": 1,
                           "kind": "P", "dice": 0.5}], "m")
    return [
        ("grid inf", lambda m, t: check_same_grid(("a", (2, 2, 2), EYE), ("b", (2, 2, 2), 2 * EYE), atol=math.inf),
         ValueError, "atol must be a finite number >= 0"),
        ("grid str", lambda m, t: check_same_grid(("a", (2, 2, 2), EYE), ("b", (2, 2, 2), EYE), atol="0.1"),
         TypeError, "atol must be a number"),
        ("grid pair", lambda m, t: check_same_grid(("a", (2, 2, 2)), ("b", (2, 2, 2), EYE)),
         ValueError, r"grid must be a \(path, shape, affine\) triple"),
        ("prediction inf", lambda m, t: read_prediction(t, "a", 2, affine_atol=math.inf),
         ValueError, "affine_atol must be a finite number >= 0"),
        ("mask case bool", lambda m, t: read_mask_case(t, ENTRY, affine_atol=True),
         TypeError, "affine_atol must be a number"),
        ("manifest str", lambda m, t: Manifest("flair", ()), TypeError, "modalities must be a sequence"),
        ("manifest ints", lambda m, t: Manifest((3,), ()), TypeError, "modalities must be a sequence of channel"),
        ("manifest empty name", lambda m, t: Manifest(("",), ()), TypeError, "modalities must be a sequence of"),
        ("manifest cases", lambda m, t: Manifest(("flair",), (3,)), TypeError, r"cases\[0\] must be a ManifestEntry"),
        ("manifest case twice", lambda m, t: Manifest(("flair",), (ENTRY, ENTRY)), ValueError,
         r"duplicate case_id\(s\) \['a'\]"),
        ("spec channels", lambda m, t: ModelSpec("segmast_ms", in_channels=2, modalities=("flair",)), ValueError,
         r"in_channels \(2\) must be the number of modalities"),
        ("bins nan", lambda m, t: SizeBins((10.0, 20.0)).assign([math.nan, 5.0]), ValueError, "volumes_mm3"),
        ("bins negative", lambda m, t: SizeBins((10.0, 20.0)).assign([-5.0]), ValueError, "volumes_mm3 must hold"),
        ("select bool", lambda m, t: table.select(timepoint=True), TypeError, "timepoint must be an int"),
        ("select str", lambda m, t: table.select(timepoint="1"), TypeError, "timepoint must be an int"),
        ("select target", lambda m, t: table.select(target=1), TypeError, "target must be a str"),
        ("schedule nan", lambda m, t: WarmupCosineSchedule(2, 10)(math.nan), TypeError, "step must be an int"),
        ("schedule bool", lambda m, t: WarmupCosineSchedule(2, 10)(True), TypeError, "step must be an int"),
        ("inferer dict", lambda m, t: make_inferer(m.spec, {}), TypeError, "cfg must be an InferenceConfig"),
        ("inferer spec", lambda m, t: make_inferer("segmast", InferenceConfig()), TypeError,
         "spec must be a ModelSpec"),
        ("settings dict", lambda m, t: inference_settings(m, {}), TypeError, "cfg must be an InferenceConfig"),
        ("optimizer dict", lambda m, t: build_optimizer(m, {}), TypeError, "config must be a TrainerConfig"),
        ("optimizer model", lambda m, t: build_optimizer("m", TrainerConfig()), TypeError, "model must be an nn"),
        ("weights model", lambda m, t: load_model_weights("model", {}), TypeError, "model must be an nn.Module"),
        ("weights list", lambda m, t: load_model_weights(m, []), TypeError, "state_dict must be a mapping"),
        ("spacing path", lambda m, t: nifti_spacing(str(t / "x.nii.gz"), "x"), TypeError,
         "img must be a nibabel NIfTI image"),
        ("flag yes", lambda m, t: check_progression_flag("a", "yes", np.zeros((1, 2, 2, 2)), ["p"]), TypeError,
         "flag must be a bool"),
        ("flag list", lambda m, t: check_progression_flag("a", True, [[0]], ["p"]), TypeError,
         "progression must be a numpy array"),
        ("decoder zero", lambda m, t: AllMLPDecoder((4,), 8).forward_concat([torch.zeros(2, 4, 4, 4)], 0),
         ValueError, "num_timepoints"),
        ("decoder batch", lambda m, t: AllMLPDecoder((4,), 8).forward_concat([torch.zeros(3, 4, 4, 4)], 2),
         ValueError, "not a multiple of num_timepoints"),
        ("timeout zero", lambda m, t: init_distributed(timeout_s=0), ValueError, "timeout_s must be"),
        ("timeout str", lambda m, t: init_distributed(timeout_s="30"), TypeError, "timeout_s must be"),
        ("cache build", lambda m, t: CaseCache(2).get(0, 5), TypeError, "build must be callable"),
        ("paste fill", lambda m, t: CropBox((0, 0, 0), (1, 1, 1), (2, 2, 2)).paste(np.zeros((1, 1, 1)), fill="x"),
         TypeError, "fill must be a number"),
    ]


@pytest.mark.parametrize(("call", "err", "match"), [r[1:] for r in _rows()], ids=[r[0] for r in _rows()])
def test_bad_argument_is_named(call, err: type[Exception], match: str, model: torch.nn.Module,  # noqa: ANN001
                               tmp_path: Path) -> None:
    with pytest.raises(err, match=match):
        call(model, tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_valid_arguments_still_pass(tmp_path: Path) -> None:
    check_same_grid(("a", (2, 2, 2), EYE), ("b", (2, 2, 2), EYE + 1e-6), atol=np.float32(1e-4))
    assert SizeBins((10.0, 20.0)).assign(np.array([0, 15, 25])).tolist() == [0, 1, 2]
    table = ResultsTable([{"case_id": "c", "patient_id": "p", "target": "t", "timepoint": 1, "kind": "P"}], "m")
    assert len(table.select(timepoint=np.int64(1))) == 1 and len(table.select(timepoint=0)) == 0
    assert WarmupCosineSchedule(2, 10)(np.int64(1)) == 1.0
    assert CropBox((0, 0, 0), (1, 1, 1), (2, 2, 2)).paste(np.ones((1, 1, 1), bool), fill=np.bool_(False)).sum() == 1
    assert Manifest(["flair", "t2"], [ENTRY]).modalities == ("flair", "t2")  # lists become tuples
    # names no image file could carry are checked where images are read: a folder of masks never uses them
    assert Manifest(("flair", "t1_gd"), [ENTRY]).modalities == ("flair", "t1_gd")


def test_a_manifest_file_with_a_case_twice_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "manifest.csv"
    path.write_text("case_id\na\na\n")
    with pytest.raises(ValueError, match=rf"manifest {path}: duplicate case_id\(s\) \['a'\]"):
        read_manifest(path)
    with pytest.raises(TypeError, match="modalities must be a sequence"):
        write_manifest(tmp_path / "m.json", Manifest("flair", ()))
    assert not (tmp_path / "m.json").exists()


def test_window_helpers_return_python_ints_and_refuse_an_empty_window() -> None:
    import json

    from longiseg.inferers.sliding_window import blend_weights, window_starts

    starts = window_starts(np.int64(9), np.int64(4), 0.5)
    assert starts == [0, 2, 3, 5] and all(type(s) is int for s in starts)
    json.dumps(starts)  # NumPy ints were kept: "not JSON serializable"
    for blend in ("constant", "gaussian"):
        with pytest.raises(ValueError, match="window must hold one size per spatial axis"):
            blend_weights([], blend)  # a 0-d weight of 1


def test_messages_stay_short_and_name_the_cause(tmp_path: Path) -> None:
    from longiseg.inferers import predict_case
    from longiseg.utils.masks import as_spacing

    with pytest.raises(ValueError, match=r"got an array of shape \(49, 58, 47\)") as err:
        as_spacing(np.zeros((49, 58, 47)), 3)  # a brain mask passed as the spacing printed 133,574 voxels
    assert len(str(err.value)) < 200
    with pytest.raises(TypeError) as err:
        as_spacing([[1.0, "a"]] * 10_000, 3)
    assert len(str(err.value)) < 300
    with pytest.raises(ValueError, match="restrict_to_brain must be one of"):  # numpy's "truth value is ambiguous"
        predict_case(torch.nn.Identity(), np.zeros((2, 1, 4, 4, 4), np.float32), EYE, None, tmp_path, "c",
                     restrict_to_brain=np.zeros(3))


def test_a_cuda_checkpoint_without_a_cpu_map_is_not_called_corrupt(tmp_path: Path, model: torch.nn.Module,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    from longiseg.engine import checkpoint as ckpt_module

    path = tmp_path / "gpu.pt"
    torch.save({"model": {}}, path)

    def load(*args: object, **kwargs: object) -> None:  # what torch.load raises for CUDA storages on a CPU machine
        raise RuntimeError("Attempting to deserialize object on a CUDA device but torch.cuda.is_available() is False.")

    monkeypatch.setattr(ckpt_module.torch, "load", load)
    with pytest.raises(ValueError, match="holds CUDA tensors and CUDA is not available on this machine: load it with "
                                         "map_location='cpu'"):
        ckpt_module.load_checkpoint(path, map_location=None)
