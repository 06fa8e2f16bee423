"""Shared utilities: input validation, logging, atomic I/O."""

from longiseg.utils.io import (
    atomic_directory,
    atomic_path,
    atomic_torch_save,
    atomic_write,
    atomic_write_json,
    csv_text,
)
from longiseg.utils.logging import get_logger, log_once
from longiseg.utils.nifti import atomic_save_nifti
from longiseg.utils.validation import (
    check_binary,
    check_finite,
    check_ndim,
    check_positive_int,
    check_probability,
    check_same_shape,
    check_tensor,
    check_timepoints,
    debug_checks,
    debug_checks_enabled,
)

__all__ = [
    "atomic_directory",
    "atomic_path",
    "atomic_save_nifti",
    "atomic_torch_save",
    "atomic_write",
    "atomic_write_json",
    "csv_text",
    "get_logger",
    "log_once",
    "check_binary",
    "check_finite",
    "check_ndim",
    "check_positive_int",
    "check_probability",
    "check_same_shape",
    "check_tensor",
    "check_timepoints",
    "debug_checks",
    "debug_checks_enabled",
]
