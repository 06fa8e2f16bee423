"""longiseg: longitudinal medical image segmentation in PyTorch.

Top-level API::

    from longiseg import build_model, list_models, register_model
    model = build_model("segmast_ms")
    out = model(images)            # images (B, T, C, H, W) -> LongitudinalOutput
    out.baseline                   # (B, K, H, W) logits of the baseline mask (timepoint 0)
    out.progression                # (B, T-1, K, H, W) logits of new/enlarging lesions per follow-up
"""

from longiseg.networks.output import LongitudinalOutput
from longiseg.registry import build_model, is_model, list_models, model_info, register_model

__version__ = "0.1.0"

__all__ = [
    "LongitudinalOutput",
    "build_model",
    "is_model",
    "list_models",
    "model_info",
    "register_model",
    "__version__",
]
