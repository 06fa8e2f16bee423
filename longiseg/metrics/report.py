"""Reports: the paper-style comparison table, CSV/JSON files (written atomically), a box-plot figure and
:func:`report_folder`, which writes a report folder as a whole."""

from __future__ import annotations

import contextlib
import fnmatch
import math
import os
import shutil
import tempfile
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
from longiseg.utils.io import (
    PathLike,
    WrittenMeanwhile,
    atomic_directory,
    atomic_save_figure,
    atomic_write,
    atomic_write_json,
    csv_text,
    remove_stale_temporaries,
    temporary_prefix,
)
from longiseg.utils.plotting import plain_text
from longiseg.utils.validation import check_positive_int, check_sequence

__all__ = [
    "format_summary",
    "paper_table_rows",
    "format_paper_table",
    "write_csv",
    "write_json",
    "box_plot",
    "report_folder",
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


# --------------------------------------------------------------------------- report folders
_STAGE = ".longiseg-report"  # name of a staging folder made inside the report folder (see report_folder)


def _matches(rel: str, patterns: Sequence[str]) -> bool:
    """Whether the ``/``-separated relative path ``rel`` matches a pattern, component by component."""
    parts = rel.split("/")
    for pat in patterns:
        pat_parts = pat.split("/")
        if len(pat_parts) == len(parts) and all(fnmatch.fnmatchcase(a, b) for a, b in zip(parts, pat_parts)):
            return True
    return False


def _entries(root: Path) -> tuple[list[str], list[str], list[str]]:
    """``(files, folders, others)`` under ``root`` as ``/``-separated relative paths; symbolic links (never
    followed) and special files are ``others``."""
    files: list[str] = []
    folders: list[str] = []
    others: list[str] = []
    stack = [("", root)]
    while stack:
        prefix, folder = stack.pop()
        with os.scandir(folder) as it:
            for e in it:
                rel = prefix + e.name
                if e.is_symlink():
                    others.append(rel)
                elif e.is_dir():
                    folders.append(rel)
                    stack.append((rel + "/", Path(e.path)))
                elif e.is_file():
                    files.append(rel)
                else:
                    others.append(rel)
    return sorted(files), sorted(folders), sorted(others)


def _only_report(out: Path, patterns: Sequence[str]) -> bool:
    """Whether ``out`` holds nothing but files matching ``patterns`` and the folders those name."""
    files, folders, others = _entries(out)
    report_dirs = {"/".join(p.split("/")[:i]) for p in patterns for i in range(1, p.count("/") + 1)}
    return not others and set(folders) <= report_dirs and all(_matches(f, patterns) for f in files)


def _writable(folder: Path) -> bool:
    return folder.is_dir() and os.access(folder, os.W_OK | os.X_OK)


@contextlib.contextmanager
def report_folder(out: PathLike, patterns: Sequence[str], *, overwrite: bool = True) -> Iterator[Path]:
    """Write a report folder as a whole: yield an empty staging folder to write every file of the report
    into; on success ``out`` holds this report's files and no file of an earlier report.

    ``patterns`` are the relative paths (``fnmatch`` patterns per ``/``-separated component, e.g.
    ``"summary.json"``, ``"figures/*_volume.png"``) of every file a report of this kind may hold: they decide
    what is "ours" in ``out``.

    * ``out`` missing, or holding nothing but files matching ``patterns`` (an earlier report): it is replaced
      as a whole (:func:`~longiseg.utils.io.atomic_directory`), so readers see the old report or the new one,
      never a mix.
    * ``out`` also holding anything else (the user pointed the report at a folder with other content), or
      being a symbolic link or the working directory (or above it): nothing but report files is touched. The new files are moved in (each
      by one rename), then the files matching ``patterns`` that this report did not write are removed, and
      report sub-folders left empty.

    Deciding whether an existing report may be replaced is the caller's: ``overwrite`` (default) replaces it.
    With ``overwrite=False`` a report file in ``out`` raises ``FileExistsError`` before anything is written,
    and so does a report that another process writes into ``out`` while this one is being written (two runs
    started into the same new folder): the other's report stays, it is not silently replaced. On an
    exception ``out`` is left as it was and the staging folder is removed.

    Raises:
        NotADirectoryError: ``out`` exists and is not a folder.
        FileExistsError: ``overwrite`` is ``False`` and ``out`` holds a report file, or another process wrote
            into ``out`` meanwhile.
        PermissionError: (before the block runs) ``out`` cannot be replaced as a whole
            (:func:`~longiseg.utils.io.check_replaceable`), or, written file by file, a folder of ``out`` that
            holds report files is not writable.
        ValueError: the report wrote a file no pattern names (nothing is moved into ``out``).
    """
    out = Path(os.path.abspath(out))
    if out.exists() and not out.is_dir():
        raise NotADirectoryError(f"{out} exists and is not a folder")
    if not overwrite:
        _refuse_report(out, patterns, f"{out} already holds a report")
    fresh = not out.exists()  # a new folder: created without replacing anything
    meanwhile = f"{out} was written by another process while this report was being written"
    inside = out.is_dir() and not _writable(out.parent)  # may write into out but not beside it: stage inside
    cwd = Path(os.path.abspath(Path.cwd()))
    if not inside and not out.is_symlink() and not cwd.is_relative_to(out) and (
            fresh or _only_report(out, patterns)):
        try:
            with atomic_directory(out, overwrite=overwrite or not fresh) as stage:  # replaced as a whole
                yield stage
                _check_report_files(stage, patterns)
                if not overwrite:  # no report may have appeared meanwhile (atomic_directory checks again)
                    _refuse_report(out, patterns, meanwhile)
        except WrittenMeanwhile as err:  # a new folder that another process created meanwhile
            if overwrite:
                raise
            raise FileExistsError(f"{meanwhile}; not replacing it: pass overwrite=True (--overwrite) to replace "
                                  "it") from err
        return
    _check_report_folders_writable(out, patterns)  # before the report is written, not when it is moved in
    # staged inside out when only out is writable, or when out is a link (beside the link may be another file
    # system than the folder it names: the files could not be renamed into it); else beside it
    staged = out / _STAGE if inside or out.is_symlink() else out
    remove_stale_temporaries(staged)
    stage = Path(tempfile.mkdtemp(prefix=temporary_prefix(staged), suffix=".tmp", dir=staged.parent))
    try:
        yield stage
        new = _check_report_files(stage, patterns)
        if not overwrite:
            _refuse_report(out, patterns, meanwhile)
        _merge_report(stage, out, new, patterns)
    finally:
        shutil.rmtree(stage, ignore_errors=True)


def _check_report_folders_writable(out: Path, patterns: Sequence[str]) -> None:
    """Raise ``PermissionError`` when a report written into the existing folder ``out`` file by file could not be
    completed: ``out`` or a folder of it where report files are (a ``figures/`` of an earlier report made
    read-only) is not writable. Folders of other content are not the report's to check."""
    if not out.is_dir():
        return
    files, folders, _ = _entries(out)
    parents = [p.rsplit("/", 1)[0] for p in patterns if "/" in p]  # e.g. "figures" of "figures/*.png"
    ours = {out, *((out / f).parent for f in files if _matches(f, patterns)),
            *(out / d for d in folders if _matches(d, parents))}
    for folder in sorted(ours, key=lambda p: len(p.parts)):
        if not os.access(folder, os.W_OK | os.X_OK):
            raise PermissionError(f"cannot write the report into {out}: {folder} is not writable (report files go "
                                  "there); nothing was changed")


def _refuse_report(out: Path, patterns: Sequence[str], what: str) -> None:
    """Raise ``FileExistsError`` (``what``, the files, ``--overwrite``) when the folder ``out`` holds report
    files."""
    if not out.is_dir():
        return
    found = [f for f in _entries(out)[0] if _matches(f, patterns)]
    if found:
        raise FileExistsError(f"{what} ({', '.join(found[:3])}{', ...' if len(found) > 3 else ''}); not replacing "
                              "it: pass overwrite=True (--overwrite) to replace it")


def _check_report_files(stage: Path, patterns: Sequence[str]) -> list[str]:
    """The files written into ``stage`` (relative paths), each named by one of ``patterns``."""
    new, _, odd = _entries(stage)
    unknown = odd + [f for f in new if not _matches(f, patterns)]
    if unknown:
        raise ValueError(f"report files {unknown} are not among the report's files {list(patterns)}")
    return new


def _merge_report(stage: Path, out: Path, new: Sequence[str], patterns: Sequence[str]) -> None:
    """Move the staged files ``new`` into ``out``, then remove the report files there that ``new`` lacks."""
    for rel in new:
        dest = out / rel
        if dest.is_dir() and not dest.is_symlink():
            raise IsADirectoryError(f"{dest} is a folder; the report would write a file there")
    for rel in new:
        dest = out / rel
        dest.parent.mkdir(parents=True, exist_ok=True)
        remove_stale_temporaries(dest)  # leftovers of a killed writer of an earlier version
        os.replace(stage / rel, dest)
    kept = set(new)
    emptied: set[Path] = set()
    old, _, _ = _entries(out)
    for rel in old:
        if rel not in kept and _matches(rel, patterns):
            (out / rel).unlink()
            emptied.update(p for p in (out / rel).parents if p != out and out in p.parents)
    for folder in sorted(emptied, key=lambda p: len(p.parts), reverse=True):
        with contextlib.suppress(OSError):  # left in place when it holds anything else
            folder.rmdir()
