"""Inference: tri-planar 2.5D and 3D sliding windows, post-processing, uncertainty, NIfTI prediction."""

from longiseg.inferers.postprocessing import (
    new_lesion_probability,
    postprocess,
    postprocess_heads,
    remove_small_components,
    restrict_to_mask,
    threshold_probabilities,
)
from longiseg.inferers.predict import (
    CaseReader,
    Inferer,
    infer_case,
    predict_case,
    predict_folder,
    spacing_from_affine,
)
from longiseg.inferers.settings import (
    VOXEL_SIZE_RTOL,
    InferenceConfig,
    inference_settings,
    make_inferer,
    prediction_defaults,
    voxel_size_mismatch,
)
from longiseg.inferers.sliding_window import (
    SlidingWindowInferer3D,
    blend_weights,
    predict_probabilities,
    window_starts,
)
from longiseg.inferers.triplanar import PLANE_AXES, TriplanarInferer, brain_window_starts, plane_axis
from longiseg.inferers.uncertainty import MAX_BINARY_ENTROPY, binary_entropy

__all__ = [
    "InferenceConfig",
    "inference_settings",
    "make_inferer",
    "prediction_defaults",
    "voxel_size_mismatch",
    "VOXEL_SIZE_RTOL",
    "TriplanarInferer",
    "SlidingWindowInferer3D",
    "PLANE_AXES",
    "plane_axis",
    "window_starts",
    "brain_window_starts",
    "blend_weights",
    "predict_probabilities",
    "threshold_probabilities",
    "remove_small_components",
    "restrict_to_mask",
    "postprocess",
    "postprocess_heads",
    "new_lesion_probability",
    "binary_entropy",
    "MAX_BINARY_ENTROPY",
    "Inferer",
    "CaseReader",
    "spacing_from_affine",
    "infer_case",
    "predict_case",
    "predict_folder",
]
