"""longiseg: longitudinal medical image segmentation in PyTorch.

Top-level API::

    from longiseg import build_model, list_models, load_model, register_model
    model = build_model("segmast_ms")
    model.spec                     # ModelSpec: name, arguments, dimensionality, input layout
    out = model(images)            # images (B, T, C, H, W) -> LongitudinalOutput
    out.baseline                   # (B, K, H, W) logits of the baseline mask (timepoint 0)
    out.progression                # (B, T-1, K, H, W) logits of new/enlarging lesions per follow-up
    model = load_model("runs/segmast/best.pt")   # a trained model and how to use it, from the file alone
"""

# Importing the model files registers the built-in models (the registry itself imports no model).
import longiseg.networks.nets  # noqa: F401
from longiseg._version import __version__
from longiseg.engine.checkpoint import load_model
from longiseg.networks.output import LongitudinalOutput
from longiseg.registry import build_model, is_model, list_models, model_info, register_model
from longiseg.spec import ModelSpec

__all__ = [
    "LongitudinalOutput",
    "ModelSpec",
    "build_model",
    "load_model",
    "is_model",
    "list_models",
    "model_info",
    "register_model",
    "__version__",
]
