"""Model-level helpers shared by training and inference: the model inside the wrappers PyTorch puts around a
model (data parallelism, compilation), and running a model in eval mode without losing its submodules' modes."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch.nn as nn

__all__ = ["eval_mode", "unwrap_model"]


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


@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Run a block with ``model`` in eval mode and give every submodule its own mode back afterwards.

    ``model.train(was_training)`` would not do: it sets one mode on every submodule, so a model fine-tuned with
    frozen (eval-mode) BatchNorm or dropout layers would come back with them in train mode. Each module's
    ``training`` flag is recorded and restored, also when the block raises.

    Args:
        model: the module.

    Yields:
        ``model``, in eval mode.

    Raises:
        TypeError: ``model`` is not an ``nn.Module``.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module (a registry model), got {type(model).__name__}")
    modes = [(module, module.training) for module in model.modules()]
    model.eval()
    try:
        yield model
    finally:
        for module, training in modes:
            module.training = training
