"""Reports: the paper-style comparison table, CSV/JSON files (written atomically) and a box-plot figure (a report
folder is written as a whole by :func:`longiseg.utils.report_folder.report_folder`)."""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from longiseg.metrics.aggregate import (
    PAPER_COLUMNS,
    POOLED_COLUMNS,
    MetricSummary,
    ResultsTable,
    paired_ttest,
    significance_stars,
)
from longiseg.utils.io import PathLike, atomic_save_figure, atomic_write, atomic_write_json, csv_text
from longiseg.utils.plotting import plain_text
from longiseg.utils.validation import check_positive_int, check_sequence

__all__ = [
    "format_summary",
    "paper_table_rows",
    "format_paper_table",
    "write_csv",
    "write_json",
    "box_plot",
]

_HEADERS = {
    "dice": "Dice",
    "lesion_f1": "Lesion-F1",
    "lesion_ppv": "PPV",
    "daa": "DAA (%)",
    "persisting_fp": "Old-as-new (%)",
    "hd95": "HD95",
    "voxel_ppv": "Voxel PPV",
    "lesion_recall": "Lesion recall",
    "voxel_sensitivity": "Sensitivity",
}


def _as_tables(
    tables: ResultsTable | Sequence[ResultsTable] | Mapping[str, ResultsTable],
) -> list[ResultsTable]:
    if isinstance(tables, ResultsTable):
        return [tables]
    if isinstance(tables, Mapping):
        return [ResultsTable(t.rows, name) for name, t in tables.items()]
    if isinstance(tables, (str, bytes)) or not isinstance(tables, Iterable):  # None: "not iterable", no name
        raise TypeError("tables must be a ResultsTable, a non-empty sequence of them or a name -> table mapping, "
                        f"got {type(tables).__name__}")
    out = list(tables)
    if not out or not all(isinstance(t, ResultsTable) for t in out):
        raise TypeError(
            "tables must be a ResultsTable, a non-empty sequence of them or a name -> table mapping"
        )
    names = [t.model for t in out]
    if len(set(names)) != len(names):
        raise ValueError(f"model names must be unique, got {names}")
    return out


def format_summary(s: MetricSummary, metric: str, stars: str = "", digits: int = 3) -> str:
    """``"0.617** (0.148)"`` for a metric, ``"64.4%"`` for the pooled percentages (DAA, old-as-new), ``"-"``
    when undefined; ``digits`` (an int >= 0) after the decimal point."""
    check_positive_int("digits", digits, 0)  # -1 or 1.5 failed in the format specification
    if math.isnan(s.mean):
        return "-"
    if metric in POOLED_COLUMNS:
        return f"{s.mean:.1f}%"
    sd = "" if math.isnan(s.sd) else f" ({s.sd:.{digits}f})"
    return f"{s.mean:.{digits}f}{stars}{sd}"


def paper_table_rows(
    tables: ResultsTable | Sequence[ResultsTable] | Mapping[str, ResultsTable],
    *,
    reference: str | None = None,
    columns: Sequence[tuple[str, str]] = PAPER_COLUMNS,
) -> list[dict[str, Any]]:
    """One dict per model: ``model``, then per column ``"metric/kind"`` the mean, SD and the p-value of a
    paired t-test (per patient) against the ``reference`` model (NaN for the reference itself, DAA, and a column
    absent from either table's rows, whose summary is NaN too)."""
    tabs = _as_tables(tables)
    ref = None
    if reference is not None:
        by_name = {t.model: t for t in tabs}
        if reference not in by_name:
            raise ValueError(f"reference model {reference!r} not among {sorted(by_name)}")
        ref = by_name[reference]
    out = []
    for t in tabs:
        summ = t.paper_summary(columns)
        row: dict[str, Any] = {"model": t.model}
        for metric, kind in columns:
            key = f"{metric}/{kind}"
            p = float("nan")
            compared = ref is not None and t is not ref and metric not in POOLED_COLUMNS
            if compared and _has(t, metric) and _has(ref, metric):
                p = paired_ttest(t, ref, metric, kind=kind).pvalue
            s = summ[key]
            row.update(
                {f"{key}/mean": s.mean, f"{key}/sd": s.sd, f"{key}/n_patients": s.n_patients, f"{key}/p": p}
            )
        out.append(row)
    return out


def _has(table: ResultsTable, metric: str) -> bool:
    """Whether ``table`` has a ``metric`` column (an empty table has every column, each without values)."""
    return not table.rows or metric in table.columns


def format_paper_table(
    tables: ResultsTable | Sequence[ResultsTable] | Mapping[str, ResultsTable],
    *,
    reference: str | None = None,
    columns: Sequence[tuple[str, str]] = PAPER_COLUMNS,
    digits: int = 3,
) -> str:
    """Plain-text table in the layout of SegMaST Table 1: model rows; B/P/NP Dice, lesion F1, PPV, DAA.

    Values are mean (SD) over patients; ``*``/``**`` mark p < 0.05 / 0.01 of a paired t-test against
    ``reference`` (when given).
    """
    rows = paper_table_rows(tables, reference=reference, columns=columns)
    header = ["Model"] + [_HEADERS[m] if m in POOLED_COLUMNS else f"{_HEADERS.get(m, m)} {k}" for m, k in columns]
    body = []
    for r in rows:
        cells = [str(r["model"])]
        for metric, kind in columns:
            key = f"{metric}/{kind}"
            s = MetricSummary(r[f"{key}/mean"], r[f"{key}/sd"], r[f"{key}/n_patients"], 0, 0)
            cells.append(format_summary(s, metric, significance_stars(r[f"{key}/p"]), digits))
        body.append(cells)
    widths = [max(len(line[i]) for line in [header] + body) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(line, widths)).rstrip() for line in [header] + body]
    lines.insert(1, "  ".join("-" * w for w in widths))
    if reference is not None:
        lines.append(f"* p < 0.05, ** p < 0.01: paired t-test (per patient) against {reference}")
    return "\n".join(lines)


def write_csv(
    path: PathLike, rows: Sequence[Mapping[str, Any]] | ResultsTable, *, overwrite: bool = True
) -> Path:
    """Write row dicts (or a :class:`ResultsTable`'s rows) as CSV atomically; NaN becomes an empty cell.

    Raises:
        TypeError: ``rows`` is neither a :class:`ResultsTable` nor a sequence of dicts (mappings), or
            ``overwrite`` is not a bool.
        FileExistsError: ``path`` exists and ``overwrite`` is ``False``.
    """
    if isinstance(rows, Iterator):  # a generator of rows
        rows = list(rows)
    if isinstance(rows, ResultsTable):
        data = rows.rows
    else:
        data = check_sequence("rows", rows, Mapping, "a dict (one per row)")
    text = csv_text(data)
    return atomic_write(path, lambda fh: fh.write(text), overwrite=overwrite)


def _json_safe(obj: Any) -> Any:
    if isinstance(obj, Mapping):
        return {str(k): _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_safe(v) for v in obj]
    if isinstance(obj, (float, np.floating)):
        f = float(obj)
        if math.isinf(f):  # strict JSON has no infinity (json wrote Infinity); float("inf") reads the string back
            return "inf" if f > 0 else "-inf"
        return None if math.isnan(f) else f
    if isinstance(obj, np.generic):
        return obj.item()
    return obj


def write_json(path: PathLike, obj: Any, *, overwrite: bool = True) -> Path:
    """Write ``obj`` as strict JSON atomically: NaN written as ``null``, infinities as the strings ``"inf"`` and
    ``"-inf"`` (which ``float()`` and :class:`~longiseg.metrics.protocol.EvaluationProtocol` read back)."""
    return atomic_write_json(path, _json_safe(obj), overwrite=overwrite)


@plain_text()  # names with '$' drawn as written, not as math
def box_plot(
    tables: ResultsTable | Sequence[ResultsTable] | Mapping[str, ResultsTable],
    path: PathLike,
    *,
    metrics: Sequence[tuple[str, str]] = (
        ("dice", "B"),
        ("dice", "P"),
        ("lesion_f1", "B"),
        ("lesion_f1", "P"),
    ),
    title: str | None = None,
) -> Path:
    """Box plots (PNG) of per-patient values: one panel per ``(metric, kind)``, one box per model."""
    from longiseg.utils.plotting import subplots

    tabs = _as_tables(tables)
    if not metrics:
        raise ValueError("metrics must name at least one (metric, kind) pair")
    fig, axes = subplots(1, len(metrics), figsize=(3.2 * len(metrics) + 0.6, 3.8), squeeze=False)
    for ax, (metric, kind) in zip(axes[0], metrics):
        data = []
        for t in tabs:
            sub = t.select(kind=kind)
            vals = np.array(list(sub.patient_means(metric).values())) if sub.rows else np.empty(0)
            data.append(vals[~np.isnan(vals)])
        ax.boxplot(data, showmeans=True)
        ax.set_xticks(range(1, len(tabs) + 1), [t.model for t in tabs], rotation=30, ha="right")
        ax.set_title(f"{_HEADERS.get(metric, metric)} ({kind})")
        ax.grid(axis="y", alpha=0.3)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    atomic_save_figure(fig, path, dpi=120)
    return Path(path)


def __getattr__(name: str) -> Any:
    """``report_folder`` lived here until 0.3.27; it is :mod:`longiseg.utils.report_folder`'s."""
    if name == "report_folder":
        import warnings

        from longiseg.utils import report_folder as module

        warnings.warn("longiseg.metrics.report.report_folder moved to longiseg.utils.report_folder.report_folder "
                      "(0.3.28)", DeprecationWarning, stacklevel=2)
        return module.report_folder
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
