"""Selective-scan dispatcher: one entry point, several backends with identical semantics."""

from __future__ import annotations

import os
from collections.abc import Callable

import torch

from longiseg.utils.logging import get_logger, log_once
from longiseg.utils.tracing import is_compiling, is_exporting

__all__ = ["selective_scan", "resolve_backend", "environment_backend", "log_backend", "check_backend", "BACKENDS",
           "ENV_VAR"]

ENV_VAR = "LONGISEG_SCAN_BACKEND"
BACKENDS = ("auto", "reference", "chunked", "numba", "triton", "cuda")
_LOGGER = get_logger("longiseg.ssm")


def check_backend(name: str, backend: object) -> str | None:
    """Return ``backend`` if it is ``None`` (resolved at run time) or one of :data:`BACKENDS`.

    Raises:
        ValueError: naming ``name`` and the valid backends otherwise.
    """
    if backend is not None and (not isinstance(backend, str) or backend not in BACKENDS):
        raise ValueError(f"{name} must be None or one of {BACKENDS}, got {backend!r}")
    return backend


def _backend_fn(name: str) -> Callable[..., torch.Tensor | tuple[torch.Tensor, torch.Tensor]]:
    if name == "reference":
        from longiseg.ssm.reference import selective_scan_reference

        return selective_scan_reference
    if name == "chunked":
        from longiseg.ssm.chunked import selective_scan_chunked

        return selective_scan_chunked
    if name == "numba":
        from longiseg.ssm.cpu_kernel import selective_scan_cpu

        return selective_scan_cpu
    if name == "triton":
        from longiseg.ssm.triton_kernel import selective_scan_triton

        return selective_scan_triton
    from longiseg.ssm.cuda import selective_scan_cuda

    return selective_scan_cuda


def environment_backend() -> str:
    """The backend ``LONGISEG_SCAN_BACKEND`` names, blanks stripped and lower-cased (``"auto"`` when it is unset or
    blank); whether it runs depends on the device, which :func:`resolve_backend` checks.

    Raises:
        ValueError: the variable names no backend of :data:`BACKENDS` (the message shows it as written).
    """
    given = os.environ.get(ENV_VAR, "auto")
    backend = given.strip().lower() or "auto"
    if backend not in BACKENDS:
        raise ValueError(f"unknown selective-scan backend {given!r} from the environment variable {ENV_VAR}; "
                         f"expected one of {BACKENDS}")
    return backend


def resolve_backend(backend: str | None, device: torch.device | str) -> str:
    """Pick the backend name for tensors on ``device``.

    Args:
        backend: ``"auto"``, ``"reference"``, ``"chunked"``, ``"numba"``, ``"triton"``, ``"cuda"`` or ``None``
            (read the ``LONGISEG_SCAN_BACKEND`` environment variable, default ``"auto"``).
        device: device of the scan inputs: a ``torch.device`` or a device string such as ``"cpu"`` or
            ``"cuda:0"``.

    Returns:
        The concrete backend: ``auto`` becomes ``chunked`` while ``torch.export`` traces the call (the other fast
        backends run kernels outside PyTorch, which it cannot record), else ``cuda`` when mamba-ssm's kernels are
        importable and the tensors are on CUDA, else ``triton`` (our Triton kernels) when Triton is importable and
        the tensors are on CUDA, ``numba`` (the compiled CPU kernel) when numba is importable and the tensors are on
        the CPU, else ``chunked`` (logged once with the reason on CUDA). All backends compute the same function
        (tested against ``reference`` in float64).

    Raises:
        ValueError: unknown backend name (the argument is matched exactly; the environment variable after
            stripping blanks and lower-casing) or device string.
        TypeError: ``backend`` is not a string or ``None``; ``device`` is neither a ``torch.device`` nor a string.
        RuntimeError: ``cuda`` forced but mamba-ssm is not importable or the tensors are not on CUDA; ``numba``
            forced but numba is not importable, the tensors are not on the CPU or ``torch.export`` traces the
            call; ``triton`` forced but Triton is not importable or the tensors are on the CPU without
            ``TRITON_INTERPRET=1``.
    """
    from longiseg.ssm import cpu_kernel
    from longiseg.ssm import cuda as cuda_bridge

    if isinstance(device, str):
        try:
            device = torch.device(device)
        except (RuntimeError, ValueError):
            raise ValueError(
                f"device must be a torch.device or a device string such as 'cpu' or 'cuda:0', got {device!r}"
            ) from None
    if not isinstance(device, torch.device):
        raise TypeError(
            f"device must be a torch.device or a device string such as 'cpu' or 'cuda:0', "
            f"got {type(device).__name__}"
        )
    source = "backend argument"
    if backend is None:
        backend = environment_backend()
        source = f"environment variable {ENV_VAR}"
    if not isinstance(backend, str):
        raise TypeError(f"backend must be a backend name (one of {BACKENDS}) or None, got {type(backend).__name__}")
    if backend not in BACKENDS:
        raise ValueError(  # the value as the user wrote it ('None', not 'none')
            f"unknown selective-scan backend {backend!r} from the {source}; expected one of {BACKENDS}"
        )
    if backend == "auto":
        if is_exporting():
            return "chunked"
        if device.type == "cuda" and cuda_bridge.cuda_scan_available():
            return "cuda"
        if device.type == "cuda":
            from longiseg.ssm import triton_kernel

            if triton_kernel.triton_scan_available():
                return "triton"
            log_once(
                _LOGGER,
                "scan-auto-no-triton",
                "selective scan: neither mamba-ssm nor Triton is importable "
                f"({triton_kernel.triton_unavailable_reason()}); CUDA tensors use the chunked PyTorch scan",
            )
        if device.type == "cpu" and cpu_kernel.cpu_kernel_available():
            return "numba"
        return "chunked"
    if backend == "cuda":
        cuda_bridge.require_cuda_scan(device, source)
    if backend == "triton":
        from longiseg.ssm import triton_kernel

        triton_kernel.require_triton_scan(device, source)
    if backend == "numba":
        cpu_kernel.require_cpu_kernel(source)
        if device.type != "cpu":
            raise RuntimeError(
                f"selective-scan backend 'numba' requested by the {source} runs on the CPU only, "
                f"but the tensors are on {device}"
            )
        if is_exporting():
            raise RuntimeError(
                f"selective-scan backend 'numba' requested by the {source} cannot be exported (its compiled "
                "kernels run outside PyTorch): export with the 'chunked' or 'reference' backend"
            )
    return backend


def log_backend(name: str, device: torch.device) -> None:
    """Log (once per backend and device type, at INFO) which selective-scan backend runs; not while
    ``torch.compile`` traces the call (logging there would split its graph)."""
    if is_compiling():
        return
    log_once(_LOGGER, f"scan-backend-{name}-{device.type}", f"selective scan backend: {name} ({device.type})")


def selective_scan(
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
    backend: str | None = None,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Selective scan with mamba-ssm's ``selective_scan_fn`` semantics, on the chosen backend.

    For every batch ``b``, channel ``d`` and state ``n``::

        delta' = softplus(delta + delta_bias) if delta_softplus else delta + delta_bias
        h_t    = exp(delta'_t A[d, n]) h_{t-1} + delta'_t B_t[n] u_t          (h_{-1} = 0)
        y_t    = sum_n C_t[n] h_t[n] + D[d] u_t
        out_t  = y_t * silu(z_t)                                            (if z is given)

    Accumulation is in float32 (float64 if any of u, delta, A, B, C is float64); ``out`` has ``u``'s dtype.

    Args:
        u: input ``(B, D, L)``.
        delta: time steps ``(B, D, L)``.
        A: real state matrix ``(D, N)`` (normally negative); complex ``A`` raises ``TypeError``.
        B: input matrix ``(B, N, L)``, grouped ``(B, G, N, L)`` with ``D % G == 0`` (channel ``d`` uses group
            ``d // (D // G)``), or input-independent ``(D, N)``.
        C: output matrix, same layouts as ``B``.
        D: skip weights ``(D,)`` or ``None``.
        z: gate ``(B, D, L)`` or ``None``.
        delta_bias: ``(D,)`` added to ``delta`` or ``None``.
        delta_softplus: apply softplus to the biased ``delta``.
        return_last_state: also return the final state ``(B, D, N)``.
        backend: ``"auto"``, ``"reference"``, ``"chunked"``, ``"numba"``, ``"triton"``, ``"cuda"`` or ``None``
            (environment variable ``LONGISEG_SCAN_BACKEND``, default ``auto``).

    Returns:
        ``out`` ``(B, D, L)``, or ``(out, last_state)`` when ``return_last_state``.
    """
    if not isinstance(u, torch.Tensor):
        raise TypeError(f"u must be a torch.Tensor, got {type(u).__name__}")
    name = resolve_backend(backend, u.device)
    log_backend(name, u.device)
    fn = _backend_fn(name)
    return fn(
        u,
        delta,
        A,
        B,
        C,
        D=D,
        z=z,
        delta_bias=delta_bias,
        delta_softplus=delta_softplus,
        return_last_state=return_last_state,
    )
