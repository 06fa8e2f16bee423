"""Figures drawn off-screen without pyplot, so that drawing one leaves the caller's matplotlib as it was.

``matplotlib.use("Agg")`` plus ``pyplot`` would switch the backend of the whole process: in a notebook, the
inline plots of the rest of the session. A :class:`matplotlib.figure.Figure` built directly belongs to no
backend's window manager; ``savefig`` renders it with Agg and nothing needs closing.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

from longiseg.utils.validation import check_array, check_bool, check_positive_int

__all__ = ["subplots", "plain_text", "require_matplotlib"]


def require_matplotlib(what: str, without: str | None = None) -> None:
    """Refuse figures without matplotlib before any work (not after minutes of it, or once per case).

    Args:
        what: what needs it, for the message (``"the registration QC figures"``).
        without: how to go on without figures (``"pass --no-figures"``); ``None`` where there is no way.

    Raises:
        ImportError: matplotlib cannot be imported, naming ``what`` and ``without``, and either the extra that
            installs it (not installed) or the import's own error (installed but broken: a missing dependency, a
            NumPy it was not built for), which reinstalling it would not be asked to fix otherwise.
    """
    try:
        import matplotlib  # noqa: F401
    except ImportError as err:
        missing = getattr(err, "name", None) or ""
        otherwise = f", or {without}" if without else ""
        if isinstance(err, ModuleNotFoundError) and missing.partition(".")[0] == "matplotlib":
            raise ImportError(f"matplotlib is needed for {what}: pip install 'longiseg[demo]' (or matplotlib)"
                              f"{otherwise}") from err
        raise ImportError(f"matplotlib is needed for {what} but fails to import ({type(err).__name__}: {err}): "
                          f"repair it (pip install --force-reinstall matplotlib){otherwise}") from err


@contextlib.contextmanager
def plain_text() -> Iterator[None]:
    """Draw the texts created inside as written: matplotlib reads text between two ``$`` as a formula, so a case
    id or model name holding ``$`` (which case ids may) raised (``a$^$b``) or came out as math (``cost$5 vs $6``
    as an italic ``cost5vs6``). Also a decorator (``@plain_text()``) of a function that draws a figure; none of
    the library's figures uses math text.
    """
    require_matplotlib("longiseg's figures")
    import matplotlib

    with matplotlib.rc_context({"text.parse_math": False}):
        yield


def subplots(nrows: int = 1, ncols: int = 1, *, figsize: tuple[float, float] | None = None,
             facecolor: Any = None, squeeze: bool = True) -> tuple[Any, Any]:
    """A figure and a grid of axes, as ``matplotlib.pyplot.subplots`` returns them, without pyplot.

    Args:
        nrows: rows of axes.
        ncols: columns of axes.
        figsize: ``(width, height)`` in inches (matplotlib's default when ``None``).
        facecolor: figure background (matplotlib's default when ``None``).
        squeeze: drop the grid's dimensions of size one (``pyplot.subplots``' rule).

    Returns:
        ``(figure, axes)``: a :class:`matplotlib.figure.Figure` and one ``Axes``, a 1D or a ``(nrows, ncols)``
        array of them.
    """
    require_matplotlib("longiseg's figures")
    from matplotlib.colors import is_color_like
    from matplotlib.figure import Figure

    nrows, ncols = check_positive_int("nrows", nrows), check_positive_int("ncols", ncols)
    squeeze = check_bool("squeeze", squeeze)
    if figsize is not None:
        figsize = tuple(check_array("figsize", figsize, "(2,)", positive=True).tolist())
    if facecolor is not None and not is_color_like(facecolor):
        raise ValueError(f"facecolor must be a matplotlib colour (a name, '#rrggbb', an RGB(A) tuple), "
                         f"got {facecolor!r}")
    fig = Figure(figsize=figsize, facecolor=facecolor)
    return fig, fig.subplots(nrows, ncols, squeeze=squeeze)
