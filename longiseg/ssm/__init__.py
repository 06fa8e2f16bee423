"""Selective state-space models: the selective-scan op (reference, chunked, numba, Triton, CUDA), Mamba."""

from __future__ import annotations

from longiseg.ssm.chunked import selective_scan_chunked
from longiseg.ssm.cuda import cuda_scan_available
from longiseg.ssm.mamba import Mamba, check_scan_backend
from longiseg.ssm.reference import selective_scan_reference
from longiseg.ssm.selective_scan import (
    BACKENDS,
    ENV_VAR,
    environment_backend,
    resolve_backend,
    selective_scan,
)

__all__ = [
    "Mamba",
    "check_scan_backend",
    "selective_scan",
    "selective_scan_reference",
    "selective_scan_chunked",
    "resolve_backend",
    "environment_backend",
    "cuda_scan_available",
    "BACKENDS",
    "ENV_VAR",
]
