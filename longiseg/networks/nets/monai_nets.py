"""MONAI baselines of the SegMaST paper with the library's dual-head output.

MONAI is an optional extra (``pip install longiseg[baselines]``); it is imported only when one of these
models is built, so the rest of the library works without it.

* ``dynunet_2d`` (2.5D) / ``dynunet_3d`` (3D): MONAI's DynUNet (its nnU-Net re-implementation) with the
  timepoints stacked as input channels (``T * C``), its 1x1 output block removed, and
  :class:`~longiseg.networks.blocks.heads.FusedDualHead` (baseline and progression 1x1 convolutions) on the
  last decoder features. ``T`` is fixed at construction.
* ``swin_unetr_3d`` (3D): MONAI's SwinUNETR, likewise with stacked timepoints and dual heads.
* ``dynunet_cs`` (3D): *cross-sectional* DynUNet (the paper's "DynUNet (CS)"): one shared DynUNet segments
  the full lesion mask of every timepoint separately; progression of follow-up ``t`` is derived by
  subtraction of probabilities, ``clamp(sigmoid(l_t) - sigmoid(l_{t-1}), 0, 1)``, and returned as logits
  (``torch.logit`` with ``eps``), so the output has the same structure as every other model. Train it
  per timepoint with :meth:`CrossSectionalNet.timepoint_logits` against
  :func:`cross_sectional_targets` (full mask of timepoint ``t`` = baseline mask united with the
  progression masks of follow-ups ``1..t``); any ``T`` works (``num_timepoints`` is accepted, as by every
  factory, and checked, but not enforced: the spec records ``None``).

Named configurations follow the paper's sizes: 2.5D about 9M (``_ms``) / 16M (``_glioma``) parameters,
3D about 15M / 25M.
"""

from __future__ import annotations

import contextlib
import math
import re
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn as nn
from einops import rearrange

from longiseg.networks.blocks.heads import FusedDualHead
from longiseg.networks.inputs import (
    SpatialSizeRule,
    check_model_input,
    parameter_device,
    parameter_dtype,
)
from longiseg.networks.output import LongitudinalOutput
from longiseg.networks.presets import UNET_WIDTHS, pop_fixed_spatial_dims
from longiseg.registry import register_model
from longiseg.utils.validation import (
    check_binary,
    check_bool,
    check_int_or_sequence,
    check_int_sequence,
    check_keywords,
    check_ndim,
    check_positive_float,
    check_positive_int,
    check_spatial_dims,
    check_tensor,
    check_timepoints,
    check_widths,
    keyword_parameters,
)

__all__ = [
    "ChannelStackedNet",
    "CrossSectionalNet",
    "cross_sectional_targets",
    "DYNUNET_MIN_LEVELS",
    "make_dynunet",
    "make_swin_unetr",
    "SWIN_UNETR_CONFIGS",
]

_INSTALL_HINT = "pip install longiseg[baselines]"
#: DynUNet needs at least 3 levels (MONAI: "length of kernel_size and strides ... no less than 3").
DYNUNET_MIN_LEVELS = 3
#: SwinUNETR has 4 Swin stages: ``depths`` and ``num_heads`` have one entry per stage.
_SWIN_STAGES = 4

#: SwinUNETR settings of the named configurations. ``feature_size`` must be a multiple of 12 and the
#: convolutional decoder dominates the size (24 -> ~15.7M, 36 -> ~35M parameters), so the glioma size keeps
#: 24 and adds SwinUNETR-v2's residual stage blocks and a deeper last Swin stage (~24M).
SWIN_UNETR_CONFIGS: dict[str, dict[str, Any]] = {
    "ms": {"feature_size": 24, "depths": (2, 2, 2, 2), "num_heads": (3, 6, 12, 24)},
    "glioma": {"feature_size": 24, "depths": (2, 2, 6, 12), "num_heads": (3, 6, 12, 24), "use_v2": True},
}


#: The oldest MONAI the baselines build with (the pyproject's ``baselines`` extra says the same).
MIN_MONAI = (1, 5)


def _monai_nets() -> Any:
    """Import ``monai.networks.nets`` or raise an ``ImportError`` naming the extra to install."""
    try:
        import monai
        import monai.networks.nets as nets
    except ImportError as err:
        raise ImportError(
            f"the MONAI baselines (dynunet_*, swin_unetr_*) need MONAI, an optional extra: {_INSTALL_HINT}"
        ) from err
    found = str(getattr(monai, "__version__", "0"))
    if _release(found) < MIN_MONAI:  # older SwinUNETRs require img_size, which no other model needs
        raise ImportError(f"the MONAI baselines need MONAI >= {'.'.join(map(str, MIN_MONAI))}, found {found}: "
                          f"pip install -U 'monai>={'.'.join(map(str, MIN_MONAI))}'")
    return nets


def _release(version: str) -> tuple[int, ...]:
    """The leading release numbers of a version string: ``"1.5.2rc1"`` -> ``(1, 5, 2)``."""
    parts = []
    for piece in version.split("."):
        digits = re.match(r"\d+", piece)
        if digits is None:
            break
        parts.append(int(digits.group()))
        if digits.end() < len(piece):
            break
    return tuple(parts)


def _strip_output_block(net: nn.Module, attr: str) -> nn.Module:
    """Replace MONAI's final 1x1 output convolution ``net.<attr>`` by the identity (features come out)."""
    if not isinstance(getattr(net, attr, None), nn.Module):
        raise RuntimeError(
            f"{type(net).__name__} has no output block {attr!r}; this MONAI version is not supported "
            f"(install a supported one with {_INSTALL_HINT})"
        )
    setattr(net, attr, nn.Identity())
    return net


def _per_level(
    name: str, values: object, levels: int, spatial_dims: int, what: str = "one per level of filters"
) -> list[tuple[int, ...]]:
    """Check a DynUNet per-level setting (``kernel_size``, ``strides``...) and give one tuple per level.

    Args:
        name: the argument, named in the messages.
        values: one entry per level, each a positive int or a sequence of ``spatial_dims`` positive ints.
        levels: the required number of entries.
        spatial_dims: 2 or 3.
        what: what the entries are, for the messages.

    Returns:
        ``levels`` tuples of ``spatial_dims`` ints.

    Raises:
        TypeError: ``values`` is not a sequence, or an entry is neither an int nor a sequence of ints.
        ValueError: an entry is below 1 or has another length than ``spatial_dims``, or ``values`` does not have
            ``levels`` entries.
    """
    if isinstance(values, (str, bytes)) or not isinstance(values, Sequence):
        raise TypeError(f"{name} must be a sequence with one int or {spatial_dims} ints per level, "
                        f"got {type(values).__name__} {values!r}")
    if len(values) != levels:
        raise ValueError(f"{name} must have {levels} entries ({what}), got {len(values)}: "
                         f"{list(values)}")
    return [check_int_or_sequence(f"{name}[{i}]", v, spatial_dims) for i, v in enumerate(values)]


def make_dynunet(
    spatial_dims: int, in_channels: int, out_channels: int, filters: Sequence[int], **kwargs: Any
) -> tuple[nn.Module, tuple[int, ...]]:
    """Build MONAI's DynUNet with 3^d kernels, stride 1 then 2 per level (unless given in ``kwargs``).

    Args:
        spatial_dims: 2 or 3.
        in_channels: input channels.
        out_channels: output channels of DynUNet's 1x1 output block.
        filters: channels per level, full resolution first; at least :data:`DYNUNET_MIN_LEVELS` levels.
        **kwargs: further DynUNet arguments (``kernel_size``, ``strides``, ``res_block``, ``dropout``...).
            ``kernel_size`` and ``strides`` have one entry per level of ``filters`` (an int or one int per
            spatial dim); the first stride is 1, so the output has the input's size; kernel sizes are odd and at
            least the level's stride minus 1 (MONAI pads ``(kernel - stride + 1) // 2``);
            ``upsample_kernel_size``, if given, equals ``strides[1:]``. ``deep_supervision`` is refused: the
            dual heads read the last decoder features only.

    Returns:
        ``(net, divisor)``: the network ``(N, in_channels, *S) -> (N, out_channels, *S)`` and, per spatial
        dim, the multiple every input size must be.

    Raises:
        TypeError, ValueError: ``filters`` is not a sequence of at least 3 positive ints, ``spatial_dims``
            is not 2 or 3, or ``kernel_size``, ``strides``, ``upsample_kernel_size`` or ``deep_supervision``
            breaks the rules above (naming the argument).
    """
    nets = _monai_nets()
    check_spatial_dims("spatial_dims", spatial_dims)
    filters = check_widths("filters", filters, minimum_len=DYNUNET_MIN_LEVELS)
    n = len(filters)
    if check_bool("deep_supervision", kwargs.pop("deep_supervision", False)):
        raise ValueError("deep_supervision=True is not supported: in training MONAI's DynUNet then returns the "
                         "stacked outputs of several decoder levels, but the dual heads read the last decoder "
                         "features only; leave deep_supervision False")
    kernel_size = kwargs.pop("kernel_size", [3] * n)
    strides = kwargs.pop("strides", [1] + [2] * (n - 1))
    kernels = _per_level("kernel_size", kernel_size, n, spatial_dims)
    per_dim = _per_level("strides", strides, n, spatial_dims)
    if any(s != 1 for s in per_dim[0]):
        raise ValueError(f"strides[0] must be 1 (the first level runs at full resolution, so the logits have the "
                         f"input's size), got {strides[0]!r}")
    for i, (kernel, stride) in enumerate(zip(kernels, per_dim)):
        if any(k % 2 == 0 or k < s - 1 for k, s in zip(kernel, stride)):
            raise ValueError(f"kernel_size[{i}] must be odd and at least strides[{i}] - 1 in every dim (else the "
                             f"convolutions change the feature size), got kernel_size[{i}]={kernel_size[i]!r} "
                             f"and strides[{i}]={strides[i]!r}")
    upsample = kwargs.pop("upsample_kernel_size", strides[1:])
    if _per_level("upsample_kernel_size", upsample, n - 1, spatial_dims, "one per upsampling") != per_dim[1:]:
        raise ValueError(f"upsample_kernel_size must equal strides[1:] (each transposed convolution undoes one "
                         f"downsampling), got {upsample!r} for strides {strides!r}")
    net = _construct(nets.DynUNet, kwargs, spatial_dims, in_channels, out_channels, kernel_size=kernel_size,
                     strides=strides, upsample_kernel_size=upsample, filters=list(filters))
    divisor = tuple(math.prod(level[d] for level in per_dim) for d in range(spatial_dims))
    return net, divisor


def make_swin_unetr(in_channels: int, out_channels: int, spatial_dims: int = 3, **kwargs: Any) -> nn.Module:
    """Build MONAI's SwinUNETR ``(N, in_channels, *S) -> (N, out_channels, *S)``; sizes divisible by 32.

    Args:
        in_channels: input channels.
        out_channels: output channels of SwinUNETR's 1x1 output block.
        spatial_dims: 2 or 3.
        **kwargs: further SwinUNETR arguments. ``feature_size`` (default 24) is a positive multiple of 12;
            ``depths`` and ``num_heads`` (if given) have 4 positive ints, one per Swin stage, and stage ``i``'s
            ``feature_size * 2**i`` channels are divisible by ``num_heads[i]``. ``window_size`` (default 7) is a
            positive int or one per spatial dim. ``patch_size``, if given, is 2: MONAI's decoder undoes a
            stride-2 patch embedding (another one makes its skip connections disagree in size).

    Raises:
        TypeError, ValueError: ``feature_size``, ``depths``, ``num_heads``, ``window_size`` or ``patch_size``
            breaks the rules above (naming the argument).
    """
    if "patch_size" in kwargs and check_positive_int("patch_size", kwargs["patch_size"]) != 2:
        raise ValueError(f"patch_size must be 2 (MONAI's SwinUNETR decoder undoes a stride-2 patch embedding; its skip "
                         f"connections disagree in size with another), got {kwargs['patch_size']}")
    if "window_size" in kwargs:
        kwargs["window_size"] = check_int_or_sequence("window_size", kwargs["window_size"], spatial_dims)
    feature_size = check_positive_int("feature_size", kwargs.get("feature_size", 24))
    if feature_size % 12:
        raise ValueError(f"feature_size must be a multiple of 12, got {feature_size}")
    for name in ("depths", "num_heads"):
        if name in kwargs:
            kwargs[name] = check_int_sequence(name, kwargs[name], length=_SWIN_STAGES, what="one per Swin stage")
    heads = kwargs.get("num_heads", ())
    for i, h in enumerate(heads):
        if (feature_size * 2**i) % h:
            raise ValueError(f"num_heads[{i}]={h} must divide the {feature_size * 2**i} channels of Swin stage {i} "
                             f"(feature_size * 2**{i}), got num_heads={heads}")
    checked = {k: kwargs.pop(k) for k in ("feature_size", "depths", "num_heads", "window_size", "patch_size")
               if k in kwargs}
    return _construct(_monai_nets().SwinUNETR, kwargs, in_channels=in_channels, out_channels=out_channels,
                      spatial_dims=spatial_dims, **checked)


def _construct(cls: type[nn.Module], passed: dict[str, Any], *args: Any, **fixed: Any) -> nn.Module:
    """``cls(*args, **fixed, **passed)``, a MONAI network; an argument MONAI refuses (its messages name the value,
    e.g. "Unsupported option 'FOO'", not the argument) is named among the ``passed`` ones, the arguments the
    caller gave beyond those checked here."""
    try:
        return cls(*args, **fixed, **passed)
    except (TypeError, ValueError, KeyError) as err:
        given = ", ".join(f"{k}={v!r}" for k, v in passed.items()) or "none"
        message = " ".join(str(err).split())
        error = type(err) if isinstance(err, (TypeError, ValueError)) else ValueError
        raise error(f"MONAI's {cls.__name__} refused its arguments (given beyond longiseg's checks: {given}): "
                    f"{message}") from err


class ChannelStackedNet(nn.Module):
    """Timepoints stacked as channels into a single-image backbone, followed by dual 1x1 heads.

    Args:
        backbone: network mapping ``(B, T*C, *S)`` to features ``(B, feature_channels, *S)``.
        feature_channels: channels of the backbone's output.
        in_channels: image channels per timepoint ``C``.
        num_timepoints: ``T``, fixed at construction.
        out_channels: logits per head ``K``.
        spatial_dims: 2 (``(B, T, C, H, W)``) or 3 (``(B, T, C, D, H, W)``).
        divisor: the backbone's total downsampling; every spatial size must be a multiple of it (int or one
            per dim).

    Shapes:
        input ``(B, T, C, *S)`` with ``B >= 1``; if the backbone has instance norms (MONAI's default), one
        spatial size at least twice its divisor (2 voxels at the bottleneck, e.g. 64x32 for ``dynunet_2d``);
        output baseline ``(B, K, *S)``, progression ``(B, T-1, K, *S)``. Inputs are checked by
        :func:`~longiseg.networks.inputs.check_model_input`.

    Raises:
        ValueError: at forward, if ``T`` differs from ``num_timepoints``.
    """

    def __init__(
        self,
        backbone: nn.Module,
        feature_channels: int,
        in_channels: int,
        num_timepoints: int,
        out_channels: int = 1,
        spatial_dims: int = 3,
        divisor: int | Sequence[int] = 1,
    ) -> None:
        super().__init__()
        self.in_channels = check_positive_int("in_channels", in_channels)
        self.num_timepoints = check_timepoints("num_timepoints", num_timepoints)
        self.spatial_dims = spatial_dims
        self.backbone = backbone
        self.spatial_size_rule = SpatialSizeRule.of_backbone(spatial_dims, divisor, backbone)
        self.heads = FusedDualHead(feature_channels, num_timepoints=num_timepoints, out_channels=out_channels,
                                   spatial_dims=spatial_dims)

    def forward(self, x: torch.Tensor) -> LongitudinalOutput:
        """Segment ``(B, T, C, *S)`` into baseline ``(B, K, *S)`` and progression ``(B, T-1, K, *S)`` logits."""
        check_model_input(x, self.spatial_dims, self.in_channels, num_timepoints=self.num_timepoints,
                          size_rule=self.spatial_size_rule, dtype=parameter_dtype(self),
                          device=parameter_device(self), training_samples=x.shape[0] if self.training else None)
        return self.heads(self.backbone(rearrange(x, "b t c ... -> b (t c) ..."))).traceable()


def cross_sectional_targets(baseline: torch.Tensor, progression: torch.Tensor) -> torch.Tensor:
    """Full lesion masks per timepoint from the longitudinal annotations.

    Args:
        baseline: binary ``(B, K, *S)`` baseline mask.
        progression: binary ``(B, T-1, K, *S)`` new/enlarging-lesion masks of follow-ups ``1..T-1``.

    Returns:
        float ``(B, T, K, *S)``: timepoint ``t`` is ``baseline | progression[1] | ... | progression[t]``.
    """
    check_tensor("baseline", baseline)
    check_tensor("progression", progression)
    check_ndim("progression", progression, baseline.ndim + 1, "(B, T-1, K, *S)")
    if progression.shape[:1] + progression.shape[2:] != baseline.shape:
        raise ValueError(
            f"progression (B, T-1, K, *S) must match baseline (B, K, *S), got {tuple(progression.shape)} "
            f"and {tuple(baseline.shape)}"
        )
    check_binary("baseline", baseline)
    check_binary("progression", progression)
    masks = torch.cat([baseline.unsqueeze(1), progression.to(baseline.dtype)], dim=1).float()
    return torch.cummax(masks, dim=1).values


def _autocast_off(device: torch.device) -> contextlib.AbstractContextManager[Any]:
    """A context with autocast disabled on ``device`` (a no-op where autocast does not exist, e.g. ``meta``)."""
    available = getattr(torch.amp, "is_autocast_available", lambda kind: kind in ("cpu", "cuda"))
    return torch.autocast(device.type, enabled=False) if available(device.type) else contextlib.nullcontext()


class CrossSectionalNet(nn.Module):
    """One shared single-timepoint network; progression by subtracting consecutive probabilities.

    Args:
        backbone: network ``(N, C, *S) -> (N, K, *S)`` giving full-lesion logits of one timepoint.
        in_channels: image channels per timepoint ``C``.
        spatial_dims: 2 or 3.
        divisor: the backbone's total downsampling; every spatial size must be a multiple of it.
        eps: probabilities are clamped to ``[eps, 1 - eps]`` before ``torch.logit``; a float in ``(0, 0.5)``.

    Shapes:
        input ``(B, T, C, *S)`` with any ``T >= 2`` (``num_timepoints`` is ``None``), sizes as for
        :class:`ChannelStackedNet`; output baseline logits ``(B, K, *S)`` (timepoint 0) and progression logits
        ``(B, T-1, K, *S)`` of ``clamp(p_t - p_{t-1}, 0, 1)``. The subtraction, clamp and logit run in
        ``float32`` (autocast off; ``1 - eps`` is ``1`` in half precision), and the progression logits are
        returned in the backbone's dtype, finite (``|logit| <= log((1 - eps) / eps)``).
    """

    def __init__(
        self,
        backbone: nn.Module,
        in_channels: int,
        spatial_dims: int = 3,
        divisor: int | Sequence[int] = 1,
        eps: float = 1e-6,
    ) -> None:
        super().__init__()
        self.in_channels = check_positive_int("in_channels", in_channels)
        self.num_timepoints = None  # one backbone per timepoint: any T >= 2
        eps = check_positive_float("eps", eps)
        if not eps < 0.5:
            raise ValueError(f"eps must lie in (0, 0.5), got {eps}")
        self.spatial_dims = spatial_dims
        self.eps = eps
        self.backbone = backbone
        self.spatial_size_rule = SpatialSizeRule.of_backbone(spatial_dims, divisor, backbone)

    def timepoint_logits(self, x: torch.Tensor) -> torch.Tensor:
        """Full-lesion logits of every timepoint: ``(B, T, C, *S) -> (B, T, K, *S)`` (the training output)."""
        check_model_input(x, self.spatial_dims, self.in_channels, size_rule=self.spatial_size_rule,
                          dtype=parameter_dtype(self), device=parameter_device(self),
                          training_samples=x.shape[0] * x.shape[1] if self.training else None)
        b, t = x.shape[:2]
        return self.backbone(x.flatten(0, 1)).unflatten(0, (b, t))

    def forward(self, x: torch.Tensor, training_output: bool = False) -> LongitudinalOutput:
        """Segment ``(B, T, C, *S)`` into baseline ``(B, K, *S)`` and progression ``(B, T-1, K, *S)`` logits.

        Args:
            x: images ``(B, T, C, *S)``.
            training_output: return what the model is trained on instead, the full-lesion logits of every
                timepoint: ``LongitudinalOutput(baseline=l_0 (B, K, *S), progression=l_1..l_{T-1} (B, T-1, K, *S))``,
                whose targets :meth:`training_targets` gives (the :class:`~longiseg.engine.Trainer` uses both).
        """
        logits = self.timepoint_logits(x)
        if check_bool("training_output", training_output):
            return LongitudinalOutput(baseline=logits[:, 0], progression=logits[:, 1:]).traceable()
        with _autocast_off(logits.device):  # in half precision 1 - eps rounds to 1: infinite logits
            probs = torch.sigmoid(logits.to(torch.promote_types(logits.dtype, torch.float32)))
            progression = torch.logit((probs[:, 1:] - probs[:, :-1]).clamp(0.0, 1.0), eps=self.eps)
        return LongitudinalOutput(baseline=logits[:, 0], progression=progression.to(logits.dtype)).traceable()

    def training_targets(self, baseline: torch.Tensor, progression: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The targets of ``forward(x, training_output=True)``: the full lesion masks of every timepoint.

        Args:
            baseline: binary ``(B, K, *S)`` baseline mask.
            progression: binary ``(B, T-1, K, *S)`` new/enlarging-lesion masks.

        Returns:
            float ``(B, K, *S)`` (the baseline mask) and ``(B, T-1, K, *S)`` (follow-up ``t``:
            ``baseline | progression_1 | ... | progression_t``; see :func:`cross_sectional_targets`).
        """
        full = cross_sectional_targets(baseline, progression)
        return full[:, 0], full[:, 1:]


# ----------------------------------------------------------------------------------------- registry


def _check_names(kwargs: dict[str, Any], net: str, own: tuple[str, ...] = ()) -> None:
    """Refuse a keyword that neither the factory (``in_channels``, ``num_timepoints``, ``out_channels``,
    ``spatial_dims`` and ``own``) nor MONAI's network ``net`` takes, listing every valid one."""
    valid = {"in_channels", "num_timepoints", "out_channels", "spatial_dims", *own,
             *keyword_parameters(getattr(_monai_nets(), net))}
    check_keywords(net, kwargs, valid)


def _pop_common(kwargs: dict[str, Any], default_in: int) -> tuple[int, int, int]:
    in_channels = check_positive_int("in_channels", kwargs.pop("in_channels", default_in))
    num_timepoints = check_timepoints("num_timepoints", kwargs.pop("num_timepoints", 2))
    out_channels = check_positive_int("out_channels", kwargs.pop("out_channels", 1))
    return in_channels, num_timepoints, out_channels


def _pop_filters(kwargs: dict[str, Any], spatial_dims: int, size: str) -> tuple[int, ...]:
    return check_widths("filters", kwargs.pop("filters", UNET_WIDTHS[f"{spatial_dims}d"][size]),
                        minimum_len=DYNUNET_MIN_LEVELS)


def _build_dynunet(spatial_dims: int, size: str, default_in: int, /, **kwargs: Any) -> ChannelStackedNet:
    _check_names(kwargs, "DynUNet")
    pop_fixed_spatial_dims(kwargs, spatial_dims, "dynunet_[23]d*")
    in_channels, num_timepoints, out_channels = _pop_common(kwargs, default_in)
    filters = _pop_filters(kwargs, spatial_dims, size)
    net, divisor = make_dynunet(spatial_dims, in_channels * num_timepoints, 1, filters, **kwargs)
    return ChannelStackedNet(_strip_output_block(net, "output_block"), filters[0], in_channels, num_timepoints,
                             out_channels, spatial_dims, divisor)


def _build_dynunet_cs(size: str, default_in: int, /, **kwargs: Any) -> CrossSectionalNet:
    _check_names(kwargs, "DynUNet", own=("eps",))
    pop_fixed_spatial_dims(kwargs, 3, "dynunet_cs*")
    # num_timepoints is checked and accepted (the training workflow passes it to every model) but has no
    # effect: any T works, and the model's spec records num_timepoints=None.
    in_channels, _, out_channels = _pop_common(kwargs, default_in)
    eps = kwargs.pop("eps", 1e-6)
    filters = _pop_filters(kwargs, 3, size)
    net, divisor = make_dynunet(3, in_channels, out_channels, filters, **kwargs)
    return CrossSectionalNet(net, in_channels, spatial_dims=3, divisor=divisor, eps=eps)


def _build_swin(size: str, default_in: int, /, **kwargs: Any) -> ChannelStackedNet:
    _check_names(kwargs, "SwinUNETR")
    pop_fixed_spatial_dims(kwargs, 3, "swin_unetr*")
    in_channels, num_timepoints, out_channels = _pop_common(kwargs, default_in)
    settings = {**SWIN_UNETR_CONFIGS[size], **kwargs}
    net = make_swin_unetr(in_channels * num_timepoints, 1, spatial_dims=3, **settings)
    return ChannelStackedNet(_strip_output_block(net, "out"), settings["feature_size"], in_channels,
                             num_timepoints, out_channels, spatial_dims=3, divisor=32)


@register_model(dim="2.5D", tags=("cnn", "monai", "early-fusion"))
def dynunet_2d(**kwargs: Any) -> ChannelStackedNet:
    """2.5D DynUNet (MONAI): timepoints as channels, dual convolutional heads (filters as _ms)."""
    return _build_dynunet(2, "ms", 2, **kwargs)


@register_model(dim="2.5D", tags=("cnn", "monai", "early-fusion"))
def dynunet_2d_ms(**kwargs: Any) -> ChannelStackedNet:
    """2.5D DynUNet sized for MS (~9M parameters)."""
    return _build_dynunet(2, "ms", 2, **kwargs)


@register_model(dim="2.5D", tags=("cnn", "monai", "early-fusion"))
def dynunet_2d_glioma(**kwargs: Any) -> ChannelStackedNet:
    """2.5D DynUNet sized for glioma (~16M parameters)."""
    return _build_dynunet(2, "glioma", 4, **kwargs)


@register_model(dim="3D", tags=("cnn", "monai", "early-fusion"))
def dynunet_3d(**kwargs: Any) -> ChannelStackedNet:
    """3D DynUNet (MONAI): timepoints as channels, dual convolutional heads (filters as _ms)."""
    return _build_dynunet(3, "ms", 2, **kwargs)


@register_model(dim="3D", tags=("cnn", "monai", "early-fusion"))
def dynunet_3d_ms(**kwargs: Any) -> ChannelStackedNet:
    """3D DynUNet sized for MS (~15M parameters)."""
    return _build_dynunet(3, "ms", 2, **kwargs)


@register_model(dim="3D", tags=("cnn", "monai", "early-fusion"))
def dynunet_3d_glioma(**kwargs: Any) -> ChannelStackedNet:
    """3D DynUNet sized for glioma (~25M parameters)."""
    return _build_dynunet(3, "glioma", 4, **kwargs)


@register_model(dim="3D", tags=("cnn", "monai", "cross-sectional"))
def dynunet_cs(**kwargs: Any) -> CrossSectionalNet:
    """3D cross-sectional DynUNet: each timepoint segmented alone, progression by subtraction (as _ms)."""
    return _build_dynunet_cs("ms", 2, **kwargs)


@register_model(dim="3D", tags=("cnn", "monai", "cross-sectional"))
def dynunet_cs_ms(**kwargs: Any) -> CrossSectionalNet:
    """3D cross-sectional DynUNet sized for MS (~15M parameters)."""
    return _build_dynunet_cs("ms", 2, **kwargs)


@register_model(dim="3D", tags=("cnn", "monai", "cross-sectional"))
def dynunet_cs_glioma(**kwargs: Any) -> CrossSectionalNet:
    """3D cross-sectional DynUNet sized for glioma (~25M parameters)."""
    return _build_dynunet_cs("glioma", 4, **kwargs)


@register_model(dim="3D", tags=("transformer", "monai", "early-fusion"))
def swin_unetr_3d(**kwargs: Any) -> ChannelStackedNet:
    """3D SwinUNETR (MONAI): timepoints as channels, dual convolutional heads (settings as _ms)."""
    return _build_swin("ms", 2, **kwargs)


@register_model(dim="3D", tags=("transformer", "monai", "early-fusion"))
def swin_unetr_3d_ms(**kwargs: Any) -> ChannelStackedNet:
    """3D SwinUNETR sized for MS (~15M parameters)."""
    return _build_swin("ms", 2, **kwargs)


@register_model(dim="3D", tags=("transformer", "monai", "early-fusion"))
def swin_unetr_3d_glioma(**kwargs: Any) -> ChannelStackedNet:
    """3D SwinUNETR sized for glioma (~24M parameters)."""
    return _build_swin("glioma", 4, **kwargs)
