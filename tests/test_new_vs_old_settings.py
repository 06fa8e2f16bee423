"""The settings that tell new lesions from old ones reach every path alike.

Before: ``predict_folder(model, ..., threshold=X)`` of an untuned checkpoint made the progression masks at the
checkpoint's 0.5 (its defaults filled in the resolved progression threshold, which a given ``threshold`` did not
move), while ``longiseg predict --set inference.threshold=X`` made them at X; and ``longiseg tune`` scored masks
cut to the brain as ``restrict="progression"`` even where prediction uses ``"both"``.
"""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
from test_inferers_predict import Voxelwise, _affine, _images, _inferer, _write_case

from longiseg.data.predictions import PREDICTION_RECORD
from longiseg.inferers import predict_case, predict_folder
from longiseg.inferers.postprocessing import postprocess_heads
from longiseg.inferers.settings import InferenceConfig, prediction_defaults
from longiseg.spec import ModelSpec
from longiseg.tuning import select_threshold


def _untuned(**inference: object) -> Voxelwise:
    model = Voxelwise()
    model.spec = ModelSpec("voxelwise", inference=InferenceConfig(patch_size=4, **inference).to_dict())
    return model


def test_an_untuned_models_progression_threshold_follows_a_given_threshold(tmp_path: Path) -> None:
    assert prediction_defaults(_untuned(), inferer=False)["progression_threshold"] is None  # not 0.5
    assert prediction_defaults(_untuned(progression_threshold=0.4), inferer=False)["progression_threshold"] == 0.4
    img, aff = _images(t=2, c=2), _affine()
    _write_case(tmp_path / "in", "p1", img, aff)
    out = predict_folder(_untuned(), tmp_path / "in", tmp_path / "out", inferer=_inferer(), threshold=0.3,
                         progress=False)
    direct = predict_case(Voxelwise(), img, aff, None, tmp_path / "direct", "p1", inferer=_inferer(), threshold=0.3,
                          progression_threshold=0.3, min_volume_mm3=InferenceConfig().min_lesion_mm3)
    for a, b in zip(out["p1"]["mask"], direct["mask"]):
        np.testing.assert_array_equal(np.asarray(nib.load(a).dataobj), np.asarray(nib.load(b).dataobj))
    record = json.loads((tmp_path / "out" / "p1" / PREDICTION_RECORD).read_text())
    settings = record["settings"] if "settings" in record else record["produced_by"]["settings"]
    assert settings["threshold"] == settings["progression_threshold"] == 0.3


def test_tuning_cuts_to_the_brain_as_prediction_does_with_restrict_both() -> None:
    brain = np.zeros((16, 16, 16), bool)
    brain[:, :, :8] = True
    base = np.zeros(brain.shape, np.float32)
    base[2:6, 2:6, 6:12] = 0.55  # an old lesion crossing the brain mask's edge: 32 of its 96 voxels inside
    prog = np.zeros(brain.shape, np.float32)
    prog[2:7, 2:6, 6:8] = 0.9  # a stable follow-up whose progression head outlines the old lesion again
    written = postprocess_heads(base, prog[None], brain_mask=brain, restrict="both", threshold=0.5,
                                progression_threshold=0.3, min_volume_mm3=40, spacing=(1, 1, 1)).progression
    assert written.any()  # "both" cut the baseline mask below the minimum volume: prediction writes a new lesion
    kwargs = dict(thresholds=[0.3], default=0.3, min_volume_mm3=40, brain_masks=[brain],
                  baseline_probabilities=[base], baseline_threshold=0.5)
    both = select_threshold([prog], [np.zeros(brain.shape, bool)], (1, 1, 1), restrict="both", **kwargs)
    assert both.scores[0.3] == 0.0  # the stable follow-up's NP score of the masks prediction writes (was 1.0)
    only = select_threshold([prog], [np.zeros(brain.shape, bool)], (1, 1, 1), **kwargs)
    assert only.scores[0.3] == 1.0
