"""Bridge to the optional CUDA kernels of ``mamba-ssm`` (selective scan) and ``causal-conv1d``.

Both packages are optional (``pip install longiseg[cuda]``). Imports are attempted lazily and cached; every
failure is kept so that forcing the CUDA backend reports *why* it is unavailable instead of silently running
another implementation.
"""

from __future__ import annotations

import functools
import importlib
from collections.abc import Callable

import torch

from longiseg.ssm.inputs import prepare_scan_inputs

__all__ = [
    "cuda_scan_available",
    "require_cuda_scan",
    "selective_scan_cuda",
    "load_causal_conv1d",
    "clear_kernel_cache",
]

_SCAN_MODULE = "mamba_ssm.ops.selective_scan_interface"
_CONV_MODULE = "causal_conv1d"


@functools.cache
def _load(module: str, attr: str) -> tuple[Callable[..., object] | None, str]:
    """Import ``module.attr``; return ``(fn, "")`` or ``(None, reason)``."""
    try:
        mod = importlib.import_module(module)
    except Exception as err:  # ImportError, or a broken CUDA extension raising OSError/RuntimeError
        return None, f"importing {module} failed: {type(err).__name__}: {err}"
    fn = getattr(mod, attr, None)
    if not callable(fn):
        return None, f"{module} has no callable {attr}"
    return fn, ""


def clear_kernel_cache() -> None:
    """Forget cached import results (after installing a package, or in tests that fake one)."""
    _load.cache_clear()


def _scan_kernel() -> tuple[Callable[..., object] | None, str]:
    return _load(_SCAN_MODULE, "selective_scan_fn")


def cuda_scan_available() -> bool:
    """Whether mamba-ssm's ``selective_scan_fn`` imports and a CUDA device is present."""
    return torch.cuda.is_available() and _scan_kernel()[0] is not None


def require_cuda_scan(device: torch.device, source: str = "backend argument") -> None:
    """Raise ``RuntimeError`` explaining why the ``cuda`` backend cannot run tensors on ``device``."""
    fn, reason = _scan_kernel()
    if fn is None:
        raise RuntimeError(
            f"selective-scan backend 'cuda' was requested by the {source} but mamba-ssm is unavailable ({reason}); "
            "install longiseg[cuda] or choose backend 'chunked'"
        )
    if device.type != "cuda":
        raise RuntimeError(
            f"selective-scan backend 'cuda' was requested by the {source} but the tensors are on {device}; "
            "move them to a CUDA device or choose backend 'chunked'"
        )


def selective_scan_cuda(
    u: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None = None,
    z: torch.Tensor | None = None,
    delta_bias: torch.Tensor | None = None,
    delta_softplus: bool = False,
    return_last_state: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Run mamba-ssm's fused kernel (same arguments and shapes as :func:`longiseg.ssm.selective_scan`).

    Arguments are cast to the dtypes the kernel accepts: ``u``, ``delta``, ``z`` and input-dependent ``B``/``C``
    in ``u``'s dtype (float32/float16/bfloat16), ``A``, ``D``, ``delta_bias`` and input-independent
    ``(D, N)`` ``B``/``C`` in float32. Note that mamba-ssm's backward ignores the gradient of ``last_state``.

    Raises:
        RuntimeError: mamba-ssm is not importable or the tensors are not on CUDA.
        TypeError: any float64 argument (the kernel has no float64 path; use another backend), checked before
            the device.
    """
    prepare_scan_inputs(u, delta, A, B, C, D, z, delta_bias, delta_softplus, return_last_state)
    # every argument, not only u: a float64 delta, A, B or C was cast to u's dtype and computed in float32,
    # where the other backends accumulate in float64 (checked before the device, so the message is the same
    # on every machine)
    named = {"u": u, "delta": delta, "A": A, "B": B, "C": C, "D": D, "z": z, "delta_bias": delta_bias}
    doubles = [name for name, t in named.items() if t is not None and t.dtype == torch.float64]
    if doubles or u.dtype not in (torch.float32, torch.float16, torch.bfloat16):
        what = f"{', '.join(doubles)} float64" if doubles else f"u has dtype {u.dtype}"
        raise TypeError(f"{what}: mamba-ssm's CUDA kernel supports float32/float16/bfloat16 only (use backend "
                        "'chunked', 'numba', 'triton' or 'reference' for float64)")
    require_cuda_scan(u.device)
    fn, _ = _scan_kernel()
    assert fn is not None  # guarded by require_cuda_scan
    itype = u.dtype

    def bc(x: torch.Tensor) -> torch.Tensor:
        return x.float() if x.ndim == 2 else x.to(itype)

    return fn(  # type: ignore[return-value]
        u,
        delta.to(itype),
        A.float(),
        bc(B),
        bc(C),
        D=None if D is None else D.float(),
        z=None if z is None else z.to(itype),
        delta_bias=None if delta_bias is None else delta_bias.float(),
        delta_softplus=delta_softplus,
        return_last_state=return_last_state,
    )


def load_causal_conv1d() -> Callable[..., torch.Tensor] | None:
    """Return ``causal_conv1d.causal_conv1d_fn`` when importable, else ``None``."""
    fn, _ = _load(_CONV_MODULE, "causal_conv1d_fn")
    return fn  # type: ignore[return-value]
