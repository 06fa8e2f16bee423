"""What a model accepts: the one input check that every registered model runs first.

:func:`check_model_input` validates a longitudinal stack before any work, so a bad input fails with a
``TypeError``/``ValueError`` naming ``x``, its layout and what was expected rather than an error from deep
inside a layer. The rules, in order:

* a floating-point tensor ``(B, T, C, H, W)`` (2D/2.5D) or ``(B, T, C, D, H, W)`` (3D) on the device of the
  model's parameters, for a model that passes it (:func:`parameter_device`; a CUDA input to a CPU model is
  refused naming both devices: a comparison of metadata, no synchronisation), and of the model's parameter
  dtype (any floating dtype under autocast, which casts per operation, except float64, which autocast never
  casts): a float64 array from numpy fed to a float32 model is refused with the fix named, not left to fail
  inside the first convolution, also under autocast;
* at least one sample and one voxel: an empty batch (``B = 0``) or a zero spatial size is refused;
* ``T >= 2`` (or ``T == num_timepoints`` for models built for a fixed ``T``) and ``C == in_channels``;
* spatial sizes that are multiples of the network's total ``downsampling`` (unless the model ``pads``
  them up to one itself);
* for a model that instance-normalises its coarsest feature map, at least 2 voxels there,
  ``prod(ceil(S_i / downsampling_i)) >= 2``: the mean and variance of a single voxel say nothing (PyTorch
  refuses with "Expected more than 1 spatial element"). So one spatial size must be at least twice its
  downsampling, e.g. ``64 x 32`` for a 2D U-Net that downsamples 32 times; the message names the smallest sizes;
* finite values, in debug mode only (:func:`~longiseg.utils.validation.debug_checks`): reading every value
  is a device-to-host synchronisation on a GPU, and a NaN input already shows as a non-finite loss, which
  the trainer checks every step.

While ``torch.jit.trace`` records a call, only the type, rank, dtype and device are checked: the sizes are traced
tensors there (:func:`~longiseg.utils.validation.checks_sizes`).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

import torch
import torch.nn as nn

from longiseg.utils.validation import (
    check_finite,
    check_instance,
    check_int_or_sequence,
    check_matches_parameters,
    check_ndim,
    check_spatial_dims,
    check_tensor,
    check_timepoints,
    checks_sizes,
    debug_checks_enabled,
)

__all__ = ["SpatialSizeRule", "check_model_input", "check_spatial_size", "feature_layout", "layout",
           "normalises_per_batch", "normalises_per_instance", "parameter_device", "parameter_dtype"]


def layout(spatial_dims: int) -> str:
    """The input layout of a model: ``"(B, T, C, H, W)"`` for 2D/2.5D, ``"(B, T, C, D, H, W)"`` for 3D."""
    return "(B, T, C, D, H, W)" if check_spatial_dims("spatial_dims", spatial_dims) == 3 else "(B, T, C, H, W)"


def feature_layout(spatial_dims: int) -> str:
    """The layout of one timepoint's feature map: ``"(B, C, H, W)"`` for 2D/2.5D, ``"(B, C, D, H, W)"`` for 3D."""
    return "(B, C, D, H, W)" if check_spatial_dims("spatial_dims", spatial_dims) == 3 else "(B, C, H, W)"


def normalises_per_instance(module: nn.Module) -> bool:
    """Whether ``module`` contains an instance norm (which needs at least 2 voxels per channel and sample)."""
    return any(isinstance(m, (nn.InstanceNorm1d, nn.InstanceNorm2d, nn.InstanceNorm3d)) for m in module.modules())


def normalises_per_batch(module: nn.Module) -> bool:
    """Whether ``module`` contains a batch norm (which needs more than one value per channel in training: a batch of
    one sample needs at least 2 voxels)."""
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in module.modules())


def parameter_device(module: nn.Module) -> torch.device | None:
    """The device of ``module``'s first parameter (``None`` if it has none)."""
    return next((p.device for p in module.parameters()), None)


def parameter_dtype(module: nn.Module) -> torch.dtype | None:
    """The dtype of ``module``'s first floating-point parameter (``None`` if it has none)."""
    return next((p.dtype for p in module.parameters() if p.is_floating_point()), None)


@dataclasses.dataclass(frozen=True)
class SpatialSizeRule:
    """The spatial sizes a model accepts (``model.spatial_size_rule`` of every registered model).

    Attributes:
        downsampling: the network's total downsampling per spatial dim (``(32, 32)``, ``(16, 16, 16)``, ...).
        pads: the model pads sizes up to a multiple of ``downsampling`` itself, so any size is accepted.
        instance_norm_bottleneck: the model instance-normalises its coarsest feature map, which needs
            ``prod(ceil(S_i / downsampling_i)) >= 2``.
        batch_norm_bottleneck: the model batch-normalises its coarsest feature map, which in training needs
            ``samples * prod(ceil(S_i / downsampling_i)) >= 2`` (checked in a training forward, where the number
            of samples the backbone normalises together is known; evaluation uses the running statistics).
    """

    downsampling: tuple[int, ...]
    pads: bool = False
    instance_norm_bottleneck: bool = False
    batch_norm_bottleneck: bool = False

    @classmethod
    def of(cls, spatial_dims: int, downsampling: int | Sequence[int], *, pads: bool = False,
           instance_norm_bottleneck: bool = False, batch_norm_bottleneck: bool = False) -> SpatialSizeRule:
        """The rule of a ``spatial_dims``-D model whose downsampling is one int ``>= 1`` (NumPy's too) or one per
        spatial dim (``TypeError``/``ValueError`` naming ``downsampling`` otherwise)."""
        down = check_int_or_sequence("downsampling", downsampling, spatial_dims)
        return cls(down, bool(pads), bool(instance_norm_bottleneck), bool(batch_norm_bottleneck))

    @classmethod
    def of_backbone(cls, spatial_dims: int, downsampling: int | Sequence[int], backbone: nn.Module) -> SpatialSizeRule:
        """The rule of a non-padding model whose ``backbone`` may instance- or batch-normalise its bottleneck."""
        return cls.of(spatial_dims, downsampling, instance_norm_bottleneck=normalises_per_instance(backbone),
                      batch_norm_bottleneck=normalises_per_batch(backbone))

    def check(self, sizes: Sequence[int], name: str, *, shown: str | None = None,
              training_samples: int | None = None) -> None:
        """Refuse spatial ``sizes`` (one per spatial dim) the model cannot take.

        Args:
            sizes: the spatial sizes, e.g. ``(H, W)`` or ``(D, H, W)``.
            name: what the sizes are, in the message (``"x"``, ``"inference.patch_size"``, ...).
            shown: how to show the offending value (default: ``sizes``).
            training_samples: in a training forward, how many samples the backbone normalises together (for a
                batch-normalised bottleneck); ``None``: not training, or not known.

        Raises:
            ValueError: naming ``name``: a size not divisible by the downsampling (when the model does not
                pad), or a single voxel left at an instance-normalised bottleneck, or at a batch-normalised one
                for a single training sample (naming the smallest sizes).
        """
        down, sizes = self.downsampling, tuple(int(s) for s in sizes)
        shown = shown or f"{sizes}"
        if len(sizes) != len(down):
            raise ValueError(f"{name} must have {len(down)} spatial sizes, got {shown}")
        if not self.pads and any(s % d for s, d in zip(sizes, down)):
            multiple = down[0] if len(set(down)) == 1 else down
            raise ValueError(f"every spatial size of {name} must be divisible by {multiple} (the network's total "
                             f"downsampling), got {shown}")
        norm = ("which the model instance-normalises and so needs at least 2 voxels" if self.instance_norm_bottleneck
                else "which the model batch-normalises and so needs at least 2 voxels for a batch of one sample in "
                "training" if self.batch_norm_bottleneck and training_samples == 1 else None)
        if norm and math.prod(-(-s // d) for s, d in zip(sizes, down)) < 2:
            smallest = [tuple(2 * d if i == j else d for j, d in enumerate(down)) for i in range(len(down))]
            raise ValueError(
                f"{name}'s spatial size {sizes} leaves a single voxel in the network's coarsest feature map (total "
                f"downsampling {down}), {norm}: make "
                f"one spatial size at least twice its downsampling; the smallest inputs are "
                f"{' or '.join(str(s) for s in smallest)}"
            )


def check_spatial_size(model: nn.Module, size: int | Sequence[int], name: str) -> None:
    """Refuse a crop or window ``size`` that ``model`` cannot take, before any work (training, inference).

    Args:
        model: a registered model (it carries ``spatial_size_rule``; a model without one accepts any positive size).
        size: one edge for every spatial dim (a square/cubic crop) or one per spatial dim: an int ``>= 1`` (NumPy's
            too) or a sequence (or 1-D array) of them.
        name: the setting, named in the message (e.g. ``"data.crop_size"``).

    Raises:
        TypeError: ``model`` is not an ``nn.Module``; ``size`` is neither an int nor a sequence of ints (a float,
            a string, a bool), naming ``name``.
        ValueError: naming ``name``: an edge below 1, or the rule it breaks (see :class:`SpatialSizeRule`).
    """
    check_instance("model", model, nn.Module, "an nn.Module")
    rule = getattr(model, "spatial_size_rule", None)
    sizes = check_int_or_sequence(name, size, None if rule is None else len(rule.downsampling))
    if rule is not None:
        rule.check(sizes, name, shown=f"{size}")


def check_model_input(
    x: torch.Tensor,
    spatial_dims: int,
    in_channels: int,
    *,
    num_timepoints: int | None = None,
    min_timepoints: int = 2,
    size_rule: SpatialSizeRule | None = None,
    dtype: torch.dtype | None = None,
    device: torch.device | None = None,
    training_samples: int | None = None,
) -> None:
    """Validate a model input ``x`` of shape ``(B, T, C, *S)`` (rules: see the module docstring).

    Args:
        x: images ``(B, T, C, H, W)`` (``spatial_dims=2``) or ``(B, T, C, D, H, W)`` (``spatial_dims=3``).
        spatial_dims: 2 or 3.
        in_channels: expected ``C``.
        num_timepoints: expected ``T`` for a model built for a fixed number of timepoints, else ``None``.
        min_timepoints: smallest accepted ``T`` (2 for the models; 1 for per-timepoint blocks).
        size_rule: the spatial sizes the model accepts (its ``spatial_size_rule``); ``None``: any size.
        dtype: the model's parameter dtype (:func:`parameter_dtype`); ``x`` must have it unless autocast is on
            for ``x``'s device and neither is float64 (autocast never casts float64). ``None``: any floating
            dtype.
        device: the device of the model's parameters (:func:`parameter_device`); ``x`` must be on it. ``None``:
            any device.
        training_samples: in a training forward, how many samples the backbone normalises together (``B``, or
            ``B * T`` for a per-timepoint backbone; see :meth:`SpatialSizeRule.check`); ``None``: not training.

    Raises:
        TypeError: if ``x`` is not a floating-point tensor, or not of ``dtype`` outside autocast (or one of the
            two is float64).
        ValueError: if ``x`` is not on ``device`` (naming both devices); on any other mismatch (naming ``x``,
            the layout and what was expected), or NaN/inf values (in debug mode).
    """
    check_tensor("x", x)
    lay = layout(spatial_dims)
    check_ndim("x", x, spatial_dims + 3, lay)
    if not x.is_floating_point():
        raise TypeError(f"x must be a floating-point tensor, got dtype {x.dtype}")
    check_matches_parameters("x", x, dtype=dtype, device=device)
    if not checks_sizes():  # torch.jit.trace records: the sizes are traced tensors (see checks_sizes)
        return
    shape = tuple(x.shape)
    if shape[0] == 0:
        raise ValueError(f"x has batch size B=0 (dim 0 of {lay}), got shape {shape}; pass at least one sample")
    if 0 in shape[3:]:
        raise ValueError(f"x has an empty spatial dim (the dims after C in {lay}), got shape {shape}")
    t, c = shape[1], shape[2]
    check_timepoints("x.shape[1] (timepoints T)", t, minimum=min_timepoints)
    if num_timepoints is not None and t != num_timepoints:
        raise ValueError(
            f"x has T={t} timepoints (dim 1 of {lay}) but the model was built with num_timepoints={num_timepoints}; "
            f"build a new model for this T"
        )
    if c != in_channels:
        raise ValueError(
            f"x must have C={in_channels} channels (dim 2 of {lay}: the model's in_channels={in_channels}), got C={c} in shape {shape}"
        )
    if size_rule is not None:
        size_rule.check(shape[3:], "x", shown=f"shape {shape}", training_samples=training_samples)
    if debug_checks_enabled():
        check_finite("x", x)
