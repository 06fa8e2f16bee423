"""Markdown (pipe) tables, so that a benchmark's output can be pasted into ``docs/benchmarks.md``."""

from __future__ import annotations

import math
from collections.abc import Sequence

__all__ = ["format_table", "format_bytes"]


def format_table(columns: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A markdown table; floats get 3 significant digits, ``None`` prints as ``-``.

    Raises:
        ValueError: when a row does not have ``len(columns)`` cells.
    """
    def cell(v: object) -> str:
        if v is None:
            return "-"
        if isinstance(v, float):
            return "nan" if math.isnan(v) else f"{v:.3g}"
        return str(v)

    body = [[cell(v) for v in row] for row in rows]
    for i, row in enumerate(body):
        if len(row) != len(columns):
            raise ValueError(f"rows[{i}] has {len(row)} cells, expected {len(columns)} (one per column)")
    widths = [max([len(c)] + [len(r[j]) for r in body]) for j, c in enumerate(columns)]
    lines = ["| " + " | ".join(c.ljust(w) for c, w in zip(columns, widths)) + " |"]
    lines.append("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    lines += ["| " + " | ".join(v.rjust(w) for v, w in zip(r, widths)) + " |" for r in body]
    return "\n".join(lines)


def format_bytes(n: float | None) -> str:
    """Bytes as MiB with 3 significant digits (``"-"`` for ``None``)."""
    return "-" if n is None else f"{n / 2**20:.3g}"
