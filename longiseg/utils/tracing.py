"""Whether a graph capture records the current call: ``torch.export`` and ``torch.compile`` (dynamo).

Code that must run otherwise while traced asks these (the selective scan: no ``out=`` operations in an exported
program, no numba kernel on fake tensors, no dispatch on values dynamo cannot see). Torch versions without these
queries never trace this way: both answer ``False``.
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from typing import Any, TypeVar, cast

import torch

__all__ = ["is_exporting", "is_compiling", "outside_compiled_graphs", "constant_under_compile"]

_F = TypeVar("_F", bound=Callable[..., Any])


def is_exporting() -> bool:
    """Whether ``torch.export`` records the call (on fake tensors: the values are not there)."""
    return bool(getattr(torch.compiler, "is_exporting", lambda: False)())


def is_compiling() -> bool:
    """Whether dynamo (``torch.compile``, ``torch.export``) traces the call; inside a ``torch.compiler.disable``
    region it does not, and the call runs eagerly."""
    return bool(getattr(torch.compiler, "is_compiling", lambda: False)())


def outside_compiled_graphs(fn: _F) -> _F:
    """``fn`` run eagerly where ``torch.compile`` would trace it (``torch.compiler.disable``): the compiled graph
    breaks at the call, and ``fn`` with everything it calls runs as in eager mode.

    ``torch.compiler.disable`` imports ``torch._dynamo`` (over a second, a cache folder and an environment variable),
    which ``import longiseg`` should not cost a process that never compiles: the disabled function is made at the
    first call once dynamo is loaded; before, nothing can be compiling and ``fn`` runs as it is.
    """
    disabled: Callable[..., Any] | None = None

    @functools.wraps(fn)
    def call(*args: Any, **kwargs: Any) -> Any:
        nonlocal disabled
        if disabled is None:
            if "torch._dynamo" not in sys.modules:  # no torch.compile or torch.export has run in this process
                return fn(*args, **kwargs)
            disabled = torch.compiler.disable(fn)
        return disabled(*args, **kwargs)

    return cast(_F, call)


def constant_under_compile(fn: _F) -> _F:
    """``fn`` with its result taken as a constant by ``torch.compile`` (``torch.compiler.assume_constant_result``:
    dynamo calls it while tracing instead of tracing into it), marked without importing ``torch._dynamo``: the
    mark is the attribute that ``assume_constant_result`` sets (the test suite checks that they agree)."""
    fn._dynamo_marked_constant = True  # type: ignore[attr-defined]
    return fn
