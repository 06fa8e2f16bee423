"""Mamba block with mamba-ssm's parameter layout, running on any device.

Parameter names, shapes and initialisation match ``mamba_ssm.modules.mamba_simple.Mamba``
(``in_proj``, ``conv1d``, ``x_proj``, ``dt_proj``, ``A_log``, ``D``, ``out_proj``), so a state_dict trained
with mamba-ssm loads unchanged. The selective scan goes through :func:`longiseg.ssm.selective_scan`
(mamba-ssm's kernel on CUDA when installed, the compiled numba kernel on the CPU when installed, the chunked
PyTorch scan elsewhere); the causal depthwise convolution uses ``causal-conv1d`` on CUDA when installed, else
``F.conv1d``. With the numba backend the whole block runs channel-last ``(B, L, d_inner)`` (the layout of its
linear layers), which saves five transposing copies per call, and everything between the two projections
(the causal convolution with its SiLU, :mod:`longiseg.ssm.causal_conv`; ``x_proj``, ``dt_proj`` and the scan) is
one autograd node, :func:`~longiseg.ssm.mamba_inner.mamba_inner_cpu`; the function is the same (tested).
"""

from __future__ import annotations

import math
import os

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import parametrize

from longiseg.ssm.causal_conv import causal_conv1d_silu_reference
from longiseg.ssm.cuda import load_causal_conv1d
from longiseg.ssm.selective_scan import ENV_VAR, check_backend, log_backend, resolve_backend, selective_scan
from longiseg.utils.device import factory_device
from longiseg.utils.tracing import prepare_compiled_graph_breaks
from longiseg.utils.validation import (
    check_bool,
    check_matches_parameters,
    check_nonnegative_float,
    check_positive_float,
    check_positive_int,
    checks_sizes,
)

__all__ = ["Mamba", "check_scan_backend"]

#: Submodules whose parameters the block reads without calling them (as mamba-ssm's fused kernel does).
_WEIGHT_HOLDERS: tuple[tuple[str, type[nn.Module]], ...] = (
    ("in_proj", nn.Linear), ("conv1d", nn.Conv1d), ("x_proj", nn.Linear), ("dt_proj", nn.Linear))


def _scan_precision(p: torch.Tensor) -> torch.Tensor:
    """``A_log``, ``D`` and the time-step bias as the scan takes them: float32 as in mamba-ssm (which upcasts them
    in half-precision blocks), float64 kept (a float32 round trip would cost a float64 block 8 of its digits)."""
    return p if p.dtype == torch.float64 else p.float()


class Mamba(nn.Module):
    """Selective state-space block (Mamba-1) mapping ``(B, L, d_model) -> (B, L, d_model)``.

    Args:
        d_model: model width.
        d_state: SSM state size ``N``.
        d_conv: causal depthwise convolution width.
        expand: inner width factor, ``d_inner = expand * d_model``.
        dt_rank: rank of the time-step projection, ``"auto"`` = ``ceil(d_model / 16)``.
        dt_min: lower end of the range of the initial time steps (log-uniform).
        dt_max: upper end of that range.
        dt_init: ``"random"`` (uniform) or ``"constant"`` init of ``dt_proj.weight``.
        dt_scale: scale of the ``dt_proj.weight`` init.
        dt_init_floor: lower clamp of the initial time steps (a finite number >= 0).
        conv_bias: bias in the depthwise convolution.
        bias: bias in ``in_proj`` and ``out_proj``.
        use_fast_path: accepted for compatibility with mamba-ssm, where ``False`` runs the same function
            unfused; here the backend decides how the block runs (the same function either way).
        layer_idx: optional layer index, an int >= 0 (kept for compatibility with mamba-ssm).
        device: factory argument for the parameters.
        dtype: factory argument for the parameters (``A_log`` and ``D`` stay float32 as in mamba-ssm).
        backend: selective-scan backend (``None`` = environment variable / auto, see
            :func:`longiseg.ssm.selective_scan`).
    """

    def __init__(
        self,
        d_model: int,
        d_state: int = 16,
        d_conv: int = 4,
        expand: float = 2,
        dt_rank: int | str = "auto",
        dt_min: float = 0.001,
        dt_max: float = 0.1,
        dt_init: str = "random",
        dt_scale: float = 1.0,
        dt_init_floor: float = 1e-4,
        conv_bias: bool = True,
        bias: bool = False,
        use_fast_path: bool = True,
        layer_idx: int | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
        backend: str | None = None,
    ) -> None:
        super().__init__()
        prepare_compiled_graph_breaks()  # where torch's compiler is loaded: made now, not while traced
        d_model, d_state, d_conv = (check_positive_int(n, v) for n, v in (
            ("d_model", d_model), ("d_state", d_state), ("d_conv", d_conv)))
        expand = check_positive_float("expand", expand)
        conv_bias, bias = check_bool("conv_bias", conv_bias), check_bool("bias", bias)
        check_bool("use_fast_path", use_fast_path)
        if int(expand * d_model) < 1:
            raise ValueError(f"expand * d_model must be at least 1 inner channel, got {expand} * {d_model}")
        if dt_rank != "auto":
            dt_rank = check_positive_int("dt_rank (or 'auto')", dt_rank)
        if dt_init not in ("random", "constant"):
            raise ValueError(f"dt_init must be 'random' or 'constant', got {dt_init!r}")
        dt_min, dt_max = check_positive_float("dt_min", dt_min), check_positive_float("dt_max", dt_max)
        if dt_min > dt_max:
            raise ValueError(f"need dt_min <= dt_max, got dt_min={dt_min}, dt_max={dt_max}")
        dt_scale = check_positive_float("dt_scale", dt_scale)
        dt_init_floor = check_nonnegative_float("dt_init_floor", dt_init_floor)
        check_backend("backend", backend)
        if layer_idx is not None:
            try:
                layer_idx = check_positive_int("layer_idx", layer_idx, minimum=0)  # (a NumPy int as an int)
            except (TypeError, ValueError) as err:
                raise type(err)(f"layer_idx must be None or an int >= 0, got {layer_idx!r}") from None
        if dtype is not None and (not isinstance(dtype, torch.dtype) or not dtype.is_floating_point):
            raise TypeError(f"dtype must be None or a floating torch.dtype such as torch.float32, got {dtype!r}")
        factory = {"device": factory_device(device), "dtype": dtype}
        self.d_model = d_model
        self.d_state = d_state
        self.d_conv = d_conv
        self.expand = expand
        self.d_inner = int(expand * d_model)
        self.dt_rank = math.ceil(d_model / 16) if dt_rank == "auto" else int(dt_rank)
        self.layer_idx = layer_idx
        self.backend = backend

        self.in_proj = nn.Linear(d_model, self.d_inner * 2, bias=bias, **factory)
        self.conv1d = nn.Conv1d(
            self.d_inner,
            self.d_inner,
            kernel_size=d_conv,
            groups=self.d_inner,
            padding=d_conv - 1,
            bias=conv_bias,
            **factory,
        )
        self.act = nn.SiLU()  # mamba-ssm's module layout; the convolution helpers apply the SiLU
        self.x_proj = nn.Linear(self.d_inner, self.dt_rank + 2 * d_state, bias=False, **factory)
        self.dt_proj = nn.Linear(self.dt_rank, self.d_inner, bias=True, **factory)

        # dt_proj weight: variance-preserving init; bias: inverse softplus of log-uniform dt in [dt_min, dt_max].
        dt_init_std = self.dt_rank**-0.5 * dt_scale
        if dt_init == "constant":
            nn.init.constant_(self.dt_proj.weight, dt_init_std)
        else:
            nn.init.uniform_(self.dt_proj.weight, -dt_init_std, dt_init_std)
        dt = torch.exp(
            torch.rand(self.d_inner, **factory) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min)
        ).clamp(min=dt_init_floor)
        inv_dt = dt + torch.log(-torch.expm1(-dt))
        with torch.no_grad():
            self.dt_proj.bias.copy_(inv_dt)
        self.dt_proj.bias._no_reinit = True  # type: ignore[attr-defined]

        # S4D-real init: A = -(1..N) per channel, stored as log in float32.
        A = torch.arange(1, d_state + 1, dtype=torch.float32, device=device).repeat(self.d_inner, 1)
        self.A_log = nn.Parameter(torch.log(A))
        self.A_log._no_weight_decay = True  # type: ignore[attr-defined]
        self.D = nn.Parameter(torch.ones(self.d_inner, device=device))
        self.D._no_weight_decay = True  # type: ignore[attr-defined]
        self.out_proj = nn.Linear(self.d_inner, d_model, bias=bias, **factory)

    def _conv(self, x: torch.Tensor) -> torch.Tensor:
        """Causal depthwise conv + SiLU on ``(B, d_inner, L)``."""
        w = self.conv1d.weight[:, 0, :]  # (d_inner, d_conv)
        if x.is_cuda:
            conv_fn = load_causal_conv1d()
            if conv_fn is not None:
                return conv_fn(x, w, self.conv1d.bias, activation="silu")
        return causal_conv1d_silu_reference(x.transpose(1, 2), w, self.conv1d.bias).transpose(1, 2)

    def _time_steps(self, dt: torch.Tensor) -> torch.Tensor:
        """Raw time steps ``(B, L, dt_rank) -> (B, L, d_inner)`` (``dt_proj`` without its bias, which the scan adds).

        ``dt`` is a column slice of ``x_proj``'s output; it is made contiguous first because the weight gradient
        ``grad^T @ dt`` of a ``dt_rank``-column strided slice runs 10x slower in MKL (measured: 2.0 against
        0.16 ms at 8192 tokens, ``d_inner`` 64, ``dt_rank`` 2) than on a contiguous copy of it.
        """
        return F.linear(dt.contiguous(), self.dt_proj.weight)

    def forward(self, hidden_states: torch.Tensor, inference_params: None = None, *,
                reverse: bool = False) -> torch.Tensor:
        """Apply the block (called as mamba-ssm's ``Mamba.forward(hidden_states, inference_params=None)``).

        Args:
            hidden_states: ``(B, L, d_model)``.
            inference_params: mamba-ssm's step-by-step decoding cache; only ``None`` (this block scans whole
                sequences; decoding one token at a time is not implemented).
            reverse: scan right-to-left with the same weights (equal to ``flip(Mamba(flip(x)))`` along ``L``;
                the causal convolution is then causal in the reverse direction too). Keyword only.

        Returns:
            ``(B, L, d_model)``.

        Raises:
            NotImplementedError: ``inference_params`` is not ``None``.
            TypeError, ValueError: a bad ``hidden_states`` (not a tensor, shape, another dtype than the block's
                outside autocast, or float64 under it: autocast never casts float64) or ``reverse``.
        """
        if inference_params is not None:
            raise NotImplementedError("inference_params: step-by-step decoding with mamba-ssm's inference cache is "
                                      "not implemented; call the block on whole sequences (inference_params=None)")
        if not isinstance(hidden_states, torch.Tensor):
            raise TypeError(f"hidden_states must be a torch.Tensor, got {type(hidden_states).__name__}")
        sizes = checks_sizes()  # False while torch.jit.trace records: the sizes are traced tensors
        if hidden_states.ndim != 3 or (sizes and hidden_states.shape[-1] != self.d_model):
            raise ValueError(
                f"hidden_states must have shape (batch, seqlen, d_model={self.d_model}), "
                f"got {tuple(hidden_states.shape)}"
            )
        if sizes and hidden_states.shape[1] < 1:
            raise ValueError(f"hidden_states must have seqlen >= 1, got shape {tuple(hidden_states.shape)}")
        check_bool("reverse", reverse)
        self._check_weight_holders()
        weight = self.in_proj.weight
        check_matches_parameters("hidden_states", hidden_states, dtype=weight.dtype, device=weight.device,
                                 module="block")
        if reverse:
            hidden_states = hidden_states.flip(1)
        backend = resolve_backend(self.backend, hidden_states.device)  # once per call, passed on below
        if backend == "numba":
            out = self._forward_channels_last(hidden_states)
            return out.flip(1) if reverse else out
        xz = F.linear(hidden_states, self.in_proj.weight, self.in_proj.bias).transpose(
            1, 2
        )  # (B, 2*d_inner, L)
        x, z = xz.chunk(2, dim=1)
        x = self._conv(x.contiguous())
        x_dbl = F.linear(x.transpose(1, 2), self.x_proj.weight)  # (B, L, dt_rank + 2N)
        dt, Bm, Cm = torch.split(x_dbl, [self.dt_rank, self.d_state, self.d_state], dim=-1)
        delta = self._time_steps(dt).transpose(1, 2)  # (B, d_inner, L); bias goes in the scan
        A = -torch.exp(_scan_precision(self.A_log))
        y = selective_scan(
            x,
            delta.contiguous(),
            A,
            Bm.transpose(1, 2).contiguous(),
            Cm.transpose(1, 2).contiguous(),
            _scan_precision(self.D),
            z=z.contiguous(),
            delta_bias=_scan_precision(self.dt_proj.bias),
            delta_softplus=True,
            backend=backend,
        )
        assert isinstance(y, torch.Tensor)
        out = self.out_proj(y.transpose(1, 2))
        if reverse:
            out = out.flip(1)
        return out

    def _check_weight_holders(self) -> None:
        """Raise ``TypeError`` when ``in_proj``, ``conv1d``, ``x_proj`` or ``dt_proj`` was replaced by another
        module (a LoRA wrapper, a quantized layer): every backend reads their parameters, as mamba-ssm's fused
        kernel does, and never calls them, so a replacement would be silently ignored."""
        for name, kind in _WEIGHT_HOLDERS:
            module = getattr(self, name)
            # exactly the class (a subclass may keep its weight in another form, as 8-bit layers do), or one whose
            # weight torch.nn.utils.parametrize computes (what .weight reads)
            if not (type(module) is kind or (isinstance(module, kind) and parametrize.is_parametrized(module))):
                found = f"{type(module).__module__}.{type(module).__qualname__}"
                raise TypeError(f"Mamba.{name} must be a torch.nn.{kind.__name__}, got {found}: the block reads its "
                                "weight and never calls it (as mamba-ssm's fused kernel does), so a wrapper or a "
                                "quantized layer there would be ignored; adapt out_proj, or the weights themselves")
        if self.x_proj.bias is not None:  # mamba-ssm's has none, and the fused paths read the weight only
            raise TypeError("Mamba.x_proj must have no bias (as mamba-ssm's), got a Linear with one")

    def _forward_channels_last(self, hidden_states: torch.Tensor) -> torch.Tensor:
        """The block with the numba scan, channel-last throughout: ``(B, L, d_model) -> (B, L, d_model)``.

        Float32 and float64 blocks run their inside (convolution, ``x_proj``, ``dt_proj``, scan) as one autograd
        node (:func:`~longiseg.ssm.mamba_inner.mamba_inner_cpu`); other dtypes (e.g. bfloat16 under autocast)
        as separate operations with the same function."""
        from longiseg.ssm.cpu_kernel import selective_scan_cpu_channels_last
        from longiseg.ssm.mamba_inner import mamba_inner_cpu

        log_backend("numba", hidden_states.device)
        xz = F.linear(hidden_states, self.in_proj.weight, self.in_proj.bias)  # (B, L, 2*d_inner)
        w = self.conv1d.weight[:, 0, :]  # (d_inner, d_conv)
        inner = (w, self.conv1d.bias, self.x_proj.weight, self.dt_proj.weight, self.dt_proj.bias, self.A_log, self.D)
        if xz.dtype in (torch.float32, torch.float64) and all(p is None or p.dtype == xz.dtype for p in inner):
            return self.out_proj(mamba_inner_cpu(xz, *inner))
        x, z = xz.chunk(2, dim=-1)
        x = causal_conv1d_silu_reference(x, w, self.conv1d.bias)
        x_dbl = F.linear(x, self.x_proj.weight)  # (B, L, dt_rank + 2N)
        dt, Bm, Cm = torch.split(x_dbl, [self.dt_rank, self.d_state, self.d_state], dim=-1)
        delta = self._time_steps(dt)  # (B, L, d_inner); bias goes in the scan
        y = selective_scan_cpu_channels_last(
            x,
            delta,
            -torch.exp(_scan_precision(self.A_log)),
            Bm,
            Cm,
            _scan_precision(self.D),
            z=z,
            delta_bias=_scan_precision(self.dt_proj.bias),
            delta_softplus=True,
        )
        return self.out_proj(y)

    def extra_repr(self) -> str:
        return (
            f"d_model={self.d_model}, d_inner={self.d_inner}, d_state={self.d_state}, d_conv={self.d_conv}, "
            f"dt_rank={self.dt_rank}, backend={self.backend}"
        )


def check_scan_backend(model: nn.Module, device: torch.device | str) -> None:
    """Refuse, before any work, a selective-scan backend forced by ``LONGISEG_SCAN_BACKEND`` that cannot run the
    :class:`Mamba` blocks of ``model`` on ``device`` (an unknown name, ``cuda``/``triton`` without their kernels,
    ``numba`` on a GPU): a setting of the user, raised as ``ValueError``, not at the first forward. Nothing when
    the variable is unset or ``model`` has no Mamba block.

    Raises:
        ValueError: naming the backend and why it cannot run (from :func:`~longiseg.ssm.resolve_backend`).
    """
    if ENV_VAR not in os.environ or not any(isinstance(m, Mamba) for m in model.modules()):
        return
    try:
        resolve_backend(None, device)
    except (RuntimeError, ImportError) as err:
        raise ValueError(str(err)) from None
