"""Whether a graph capture records the current call: ``torch.export`` and ``torch.compile`` (dynamo).

Code that must run otherwise while traced asks these (the selective scan: no ``out=`` operations in an exported
program, no numba kernel on fake tensors, no dispatch on values dynamo cannot see). Torch versions without these
queries never trace this way: both answer ``False``.
"""

from __future__ import annotations

import torch

__all__ = ["is_exporting", "is_compiling"]


def is_exporting() -> bool:
    """Whether ``torch.export`` records the call (on fake tensors: the values are not there)."""
    return bool(getattr(torch.compiler, "is_exporting", lambda: False)())


def is_compiling() -> bool:
    """Whether dynamo (``torch.compile``, ``torch.export``) traces the call; inside a ``torch.compiler.disable``
    region it does not, and the call runs eagerly."""
    return bool(getattr(torch.compiler, "is_compiling", lambda: False)())
