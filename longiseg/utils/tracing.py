"""Graph capture (``torch.export`` and ``torch.compile``, i.e. dynamo): whether it records the current call, and
functions it must not trace.

Code that must run otherwise while traced asks :func:`is_exporting`/:func:`is_compiling` (the selective scan: no
``out=`` operations in an exported program, no numba kernel on fake tensors, no dispatch on values dynamo cannot
see). :func:`outside_compiled_graphs` and :func:`constant_under_compile` mark functions for dynamo without
importing it: ``import longiseg`` does not pay for torch's compiler.
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from typing import Any, TypeVar, cast

import torch

__all__ = ["is_exporting", "is_compiling", "outside_compiled_graphs", "prepare_compiled_graph_breaks",
           "constant_under_compile"]

_F = TypeVar("_F", bound=Callable[..., Any])


def is_exporting() -> bool:
    """Whether ``torch.export`` records the call (on fake tensors: the values are not there)."""
    return bool(torch.compiler.is_exporting())


def is_compiling() -> bool:
    """Whether dynamo (``torch.compile``, ``torch.export``) traces the call; inside a ``torch.compiler.disable``
    region it does not, and the call runs eagerly."""
    return bool(torch.compiler.is_compiling())


def outside_compiled_graphs(fn: _F) -> _F:
    """``fn`` run eagerly where ``torch.compile`` would trace it (``torch.compiler.disable``): the compiled graph
    breaks at the call, and ``fn`` with everything it calls runs as in eager mode.

    ``torch.compiler.disable`` imports ``torch._dynamo`` (over a second, a cache folder and an environment variable),
    which ``import longiseg`` should not cost a process that never compiles. The disabled function is made here
    when dynamo is already loaded, else by :func:`prepare_compiled_graph_breaks` (which building a
    :class:`~longiseg.ssm.Mamba` calls, and building SegMaST loads dynamo through timm), else at the first call
    once dynamo is loaded; before, nothing can be compiling and ``fn`` runs as it is. Made inside a compiled
    region, it costs dynamo one more graph break, logged with advice that does not apply.
    """
    disabled: list[Callable[..., Any]] = []

    def prepare() -> None:
        if not disabled:
            disabled.append(torch.compiler.disable(fn))

    @functools.wraps(fn)
    def call(*args: Any, **kwargs: Any) -> Any:
        if not disabled:
            if "torch._dynamo" not in sys.modules:  # no torch.compile or torch.export has run in this process
                return fn(*args, **kwargs)
            prepare()
        return disabled[0](*args, **kwargs)

    _PENDING.append(prepare)
    if "torch._dynamo" in sys.modules:  # a module imported after the compiler: made now, as a decorator would
        prepare()
    return cast(_F, call)


#: What makes each :func:`outside_compiled_graphs` function's disabled twin.
_PENDING: list[Callable[[], None]] = []


def prepare_compiled_graph_breaks() -> None:
    """Make every :func:`outside_compiled_graphs` function's ``torch.compiler.disable`` twin now if torch's compiler
    is loaded (building a model that uses timm loads it): outside any compiled region, as a decorator would have.
    Repeated calls make nothing twice."""
    if "torch._dynamo" in sys.modules:
        for prepare in _PENDING:
            prepare()


def constant_under_compile(fn: _F) -> _F:
    """``fn`` with its result taken as a constant by ``torch.compile`` (``torch.compiler.assume_constant_result``:
    dynamo calls it while tracing instead of tracing into it), marked without importing ``torch._dynamo``: the
    mark is the attribute that ``assume_constant_result`` sets (the test suite checks that they agree)."""
    fn._dynamo_marked_constant = True  # type: ignore[attr-defined]
    return fn
