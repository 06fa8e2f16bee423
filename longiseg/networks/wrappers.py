"""The model inside the wrappers PyTorch puts around a model (data parallelism, compilation)."""

from __future__ import annotations

import torch.nn as nn

__all__ = ["unwrap_model"]


def unwrap_model(model: nn.Module) -> nn.Module:
    """Return the module inside ``DistributedDataParallel``/``DataParallel``/``torch.compile`` wrappers.

    Raises:
        TypeError: ``model`` is not an ``nn.Module``.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"unwrap_model: expected an nn.Module, got {type(model).__name__}")
    while True:
        if isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
            model = model.module
        elif hasattr(model, "_orig_mod") and isinstance(model._orig_mod, nn.Module):
            model = model._orig_mod
        else:
            return model
