"""Aggregation of per-case metrics: per case -> per patient -> mean (SD) over patients; paired t-tests.

TDW (section 3.2) averages every metric over a patient's scans first and then over patients, so patients
with many scans do not dominate. The SD over patients uses ``ddof=0`` (``numpy.std``), which reproduces the
SDs of SegMaST Table 1 (e.g. NP Dice 0.600 (0.490) over 25 patients scored 0 or 1). Undefined values (NaN,
e.g. HD95 with one empty mask) are left out of the means (``nanmean``) and counted in ``n_nan``.
DAA is pooled over follow-up scans, as in SegMaST ("percentage of correctly classified follow-up scans").
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np
from scipy import stats

from longiseg.metrics.longitudinal import CASE_KINDS
from longiseg.utils.validation import check_instance, check_positive_int, check_probability, check_sequence

__all__ = [
    "PAPER_COLUMNS",
    "POOLED_COLUMNS",
    "MetricSummary",
    "TTestResult",
    "ResultsTable",
    "paired_ttest",
    "significance_stars",
]

# (metric, kind) pairs of SegMaST Table 1, in order; "daa" is the DAA percentage. The last column is ours:
# "persisting_fp" is the share of persisting (unchanged) baseline lesions that the progression masks flag as
# new, pooled over all follow-ups (longiseg.metrics.consistency), in percent.
PAPER_COLUMNS: tuple[tuple[str, str], ...] = (
    ("dice", "B"),
    ("dice", "P"),
    ("dice", "NP"),
    ("lesion_f1", "B"),
    ("lesion_f1", "P"),
    ("lesion_ppv", "B"),
    ("lesion_ppv", "P"),
    ("daa", "all"),
    ("persisting_fp", "all"),
)
#: Columns summarised as one pooled percentage over follow-ups rather than mean (SD) over patients.
POOLED_COLUMNS = ("daa", "persisting_fp")


class MetricSummary(NamedTuple):
    """Mean and SD (``ddof=0``) over patients of one metric, with the counts behind it."""

    mean: float
    sd: float
    n_patients: int
    n_cases: int
    n_nan: int


class TTestResult(NamedTuple):
    """Paired t-test of model A against model B on the same units (patients or cases)."""

    statistic: float
    pvalue: float
    n: int
    mean_difference: float


def _as_float(v: Any) -> float:
    if v is None:
        return float("nan")
    return float(v)


@dataclass
class ResultsTable:
    """Per-case result rows of one model (one row per evaluated mask: baseline or a follow-up).

    Each row is a dict with at least ``case_id``, ``patient_id``, ``target``, ``timepoint``, ``kind``
    (``"B"``, ``"P"``, ``"NP"``) and metric columns such as ``dice`` or ``lesion_f1``.

    Attributes:
        rows: the row dicts.
        model: model name used in reports.

    Raises:
        TypeError: ``rows`` is not a sequence of dicts (mappings) or ``model`` is not a string.
        ValueError: a row lacks ``case_id``, ``patient_id`` or ``kind``.
    """

    rows: list[dict[str, Any]]
    model: str = "model"

    def __post_init__(self) -> None:
        check_sequence("rows", self.rows, Mapping, "a dict (one per row)")
        check_instance("model", self.model, str, "a str")
        for i, r in enumerate(self.rows):
            missing = {"case_id", "patient_id", "kind"} - set(r)
            if missing:
                raise ValueError(f"row {i} lacks the columns {sorted(missing)}")

    def __len__(self) -> int:
        return len(self.rows)

    @property
    def columns(self) -> list[str]:
        """Column names in first-seen order."""
        seen: dict[str, None] = {}
        for r in self.rows:
            seen.update(dict.fromkeys(r))
        return list(seen)

    def select(
        self,
        *,
        kind: str | Iterable[str] | None = None,
        target: str | None = None,
        timepoint: int | None = None,
    ) -> ResultsTable:
        """Rows of the given kind(s) (``"B"``, ``"P"``, ``"NP"``), target and/or timepoint.

        Raises:
            TypeError: ``target`` is not a str, ``timepoint`` not an int (``True`` would select timepoint 1).
            ValueError: a kind other than ``"B"``, ``"P"``, ``"NP"`` (a misspelt ``"np"`` would select nothing);
                a negative ``timepoint``.
        """
        if target is not None and not isinstance(target, str):
            raise TypeError(f"target must be a str (e.g. 'baseline', 'progression_t1') or None, got "
                            f"{type(target).__name__}")
        if timepoint is not None:
            timepoint = check_positive_int("timepoint", timepoint, minimum=0)
        if kind is not None and not isinstance(kind, (str, Iterable)):  # 1: "'int' object is not iterable"
            raise TypeError(f"kind must be a str (B, P, NP), an iterable of them or None, got {type(kind).__name__}")
        kinds = None if kind is None else ({kind} if isinstance(kind, str) else set(kind))
        unknown = sorted(map(str, (kinds or set()) - set(CASE_KINDS)))
        if unknown:
            raise ValueError(f"kind must be among {CASE_KINDS}, got {unknown}")
        out = [
            r
            for r in self.rows
            if (kinds is None or r["kind"] in kinds)
            and (target is None or r.get("target") == target)
            and (timepoint is None or r.get("timepoint") == timepoint)
        ]
        return ResultsTable(out, self.model)

    def values(self, metric: str) -> np.ndarray:
        """``(N,)`` float values of a metric column (NaN where missing)."""
        if self.rows and metric not in self.columns:
            raise ValueError(f"unknown metric {metric!r}; columns are {self.columns}")
        return np.array([_as_float(r.get(metric)) for r in self.rows], dtype=np.float64)

    def patient_means(self, metric: str) -> dict[str, float]:
        """Mean of ``metric`` over each patient's rows (``nanmean``; NaN if all of them are NaN)."""
        vals = self.values(metric)
        groups: dict[str, list[float]] = {}
        for r, v in zip(self.rows, vals):
            groups.setdefault(str(r["patient_id"]), []).append(float(v))
        out = {}
        for pid, vs in groups.items():
            a = np.asarray(vs)
            out[pid] = float(np.mean(a[~np.isnan(a)])) if np.any(~np.isnan(a)) else float("nan")
        return out

    def summary(self, metric: str, kind: str | Iterable[str] | None = None) -> MetricSummary:
        """Mean (SD, ``ddof=0``) over patients of the per-patient means of ``metric`` (rows of ``kind``)."""
        sub = self if kind is None else self.select(kind=kind)
        vals = sub.values(metric) if sub.rows else np.empty(0)
        pm = np.array(list(sub.patient_means(metric).values())) if sub.rows else np.empty(0)
        pm = pm[~np.isnan(pm)]
        mean = float(pm.mean()) if pm.size else float("nan")
        sd = float(pm.std()) if pm.size else float("nan")
        return MetricSummary(mean, sd, int(pm.size), len(sub), int(np.isnan(vals).sum()))

    def daa(self) -> float:
        """Disease Activity Assessment in percent over all follow-up rows (NaN if there are none).

        Rows whose ``daa_correct`` is missing or ``None`` (baseline rows) are left out.

        Raises:
            ValueError: a ``daa_correct`` that is not a bool (``numpy.bool_`` too) or the number 0 or 1, such as
                the string ``"False"`` or NaN (naming the row).
        """
        flags = []
        for i, r in enumerate(self.rows):
            v = r.get("daa_correct")
            if v is None:
                continue
            if not isinstance(v, (bool, np.bool_)) and not (
                    isinstance(v, (int, float, np.integer, np.floating)) and v in (0, 1)):
                raise ValueError(f"row {i} (case {r['case_id']!r}): column 'daa_correct' must be a bool (or 0/1), "
                                 f"got {type(v).__name__} {v!r}")
            flags.append(bool(v))
        return float(100.0 * np.mean(flags)) if flags else float("nan")

    def persisting_false_progression(self) -> float:
        """Persisting baseline lesions flagged as progression, in percent of all persisting lesions of all
        follow-up rows (pooled; NaN when no lesion persists or the rows lack the columns)."""
        fu = [r for r in self.rows if r.get("persisting_lesions") is not None]
        total = sum(int(r["persisting_lesions"]) for r in fu)
        return 100.0 * sum(int(r["persisting_flagged"]) for r in fu) / total if total else float("nan")

    def paper_summary(self, columns: Sequence[tuple[str, str]] = PAPER_COLUMNS) -> dict[str, MetricSummary]:
        """Summaries keyed ``"metric/kind"`` for the paper table columns (DAA and the persisting-lesion
        false-progression rate as pooled percentages with SD NaN).

        Columns absent from the rows give NaN summaries (shown as ``-`` in reports).
        """
        out: dict[str, MetricSummary] = {}
        for metric, kind in columns:
            if metric in POOLED_COLUMNS:
                fu = self.select(kind=("P", "NP"))
                value = self.daa() if metric == "daa" else self.persisting_false_progression()
                out[f"{metric}/{kind}"] = MetricSummary(
                    value, float("nan"), len({r["patient_id"] for r in fu.rows}), len(fu), 0
                )
            elif self.rows and metric not in self.columns:
                out[f"{metric}/{kind}"] = MetricSummary(float("nan"), float("nan"), 0, 0, 0)
            else:
                out[f"{metric}/{kind}"] = self.summary(metric, kind)
        return out

    @staticmethod
    def concat(tables: Sequence[ResultsTable], model: str | None = None) -> ResultsTable:
        """Rows of several tables in one (model name of the first unless given).

        Raises:
            TypeError: ``tables`` is not a sequence of :class:`ResultsTable`, or ``model`` is not a str.
            ValueError: ``tables`` is empty.
        """
        tables = check_sequence("tables", tables, ResultsTable, "a ResultsTable")
        if not tables:
            raise ValueError("tables must hold at least one ResultsTable")
        if model is not None:
            check_instance("model", model, str, "a str")
        return ResultsTable([r for t in tables for r in t.rows], tables[0].model if model is None else model)


def _values_by_case(name: str, table: ResultsTable, metric: str) -> dict[tuple[Any, Any], float]:
    """``metric`` of each row of ``table`` keyed by ``(case_id, target)``, the units of a case-level test; a key
    of two rows raises (one would silently replace the other)."""
    out: dict[tuple[Any, Any], float] = {}
    for r, v in zip(table.rows, table.values(metric)):
        key = (r["case_id"], r.get("target"))
        if key in out:
            raise ValueError(
                f"{name} has more than one row of case {key[0]!r} and target {key[1]!r}: level='case' pairs one row "
                "per (case_id, target); give each row its own target, select one kind, or use level='patient'")
        out[key] = v
    return out


def paired_ttest(
    a: ResultsTable,
    b: ResultsTable,
    metric: str,
    *,
    kind: str | Iterable[str] | None = None,
    level: str = "patient",
) -> TTestResult:
    """Paired two-sided t-test (``scipy.stats.ttest_rel``) of ``metric`` between two models.

    Args:
        a: results of model A.
        b: results of model B on the same cases.
        metric: metric column.
        kind: restrict to rows of this kind (``"B"``, ``"P"``, ``"NP"``).
        level: ``"patient"`` pairs per-patient means, ``"case"`` pairs rows by ``(case_id, target)`` (one row
            per key in each table).

    Returns:
        :class:`TTestResult`; ``mean_difference`` is mean(A - B). Units where either value is NaN are
        dropped; statistic and p are NaN with fewer than two pairs or when the differences A - B do not vary
        (identical values, or a constant shift: the test is undefined there).

    Raises:
        TypeError: ``a`` or ``b`` is not a :class:`ResultsTable`.
        ValueError: ``level`` is neither ``"patient"`` nor ``"case"``, the tables hold different patients
            (cases), or with ``level="case"`` a table has two rows of one ``(case_id, target)``.
    """
    check_instance("a", a, ResultsTable, "a ResultsTable")
    check_instance("b", b, ResultsTable, "a ResultsTable")
    if level not in ("patient", "case"):
        raise ValueError(f"level must be 'patient' or 'case', got {level!r}")
    sa = a if kind is None else a.select(kind=kind)
    sb = b if kind is None else b.select(kind=kind)
    if level == "patient":
        ma, mb = sa.patient_means(metric), sb.patient_means(metric)
    else:
        ma, mb = _values_by_case("a", sa, metric), _values_by_case("b", sb, metric)
    if set(ma) != set(mb):
        diff = sorted(map(str, set(ma) ^ set(mb)))[:5]
        raise ValueError(f"paired_ttest needs the same {level}s in both tables; they differ in e.g. {diff}")
    keys = sorted(ma, key=str)
    xa = np.array([ma[k] for k in keys], dtype=np.float64)
    xb = np.array([mb[k] for k in keys], dtype=np.float64)
    ok = ~(np.isnan(xa) | np.isnan(xb))
    xa, xb = xa[ok], xb[ok]
    n = int(xa.size)
    diff = xa - xb
    mean_diff = float(np.mean(diff)) if n else float("nan")
    if n < 2 or float(np.ptp(diff)) <= 1e-12 * max(1.0, float(np.max(np.abs(diff)))):
        # the differences do not vary (up to rounding): the t statistic is undefined (scipy would return
        # +-inf or a rounding artefact with a precision-loss warning), so no test result
        return TTestResult(float("nan"), float("nan"), n, mean_diff)
    res = stats.ttest_rel(xa, xb)
    return TTestResult(float(res.statistic), float(res.pvalue), n, mean_diff)


def significance_stars(pvalue: float | None, levels: Mapping[float, str] | None = None) -> str:
    """``"**"`` for p < 0.01, ``"*"`` for p < 0.05, else ``""`` (SegMaST table marks); NaN or None give ``""``.

    Args:
        pvalue: the p-value, in ``[0, 1]``, NaN or ``None`` (no test).
        levels: ``{threshold: mark}`` with thresholds in ``[0, 1]``; the mark of the smallest threshold above
            ``pvalue`` is returned.

    Raises:
        TypeError: ``pvalue`` is not a number or ``None``, or ``levels`` is not a mapping of numbers to strings.
        ValueError: ``pvalue`` or a threshold outside ``[0, 1]``.
    """
    if levels is None:
        lv = {0.01: "**", 0.05: "*"}
    else:
        check_instance("levels", levels, Mapping, "a mapping {threshold: mark}")
        lv = {check_probability("levels threshold", k): check_instance(f"levels[{k!r}]", v, str, "a str")
              for k, v in levels.items()}
    if pvalue is None or (isinstance(pvalue, (float, np.floating)) and math.isnan(pvalue)):
        return ""
    pvalue = check_probability("pvalue", pvalue)
    for thr in sorted(lv):
        if pvalue < thr:
            return lv[thr]
    return ""
