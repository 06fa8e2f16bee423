"""Evaluate a folder of predicted cases against a reference folder in the library layout.

Both folders hold one sub-folder per case (see :mod:`longiseg.data.layout`); ``CASE/baseline_mask.nii.gz``
and ``CASE/progression_t{i}.nii.gz`` are paired by case folder and file name. Voxel spacing comes from the
reference NIfTI header. Patient ids come from the reference ``manifest.json`` (or ``manifest.csv``) when
present, else each case is its own patient.

Command line (wired as ``longiseg evaluate`` by the CLI)::

    python -m longiseg.metrics.evaluate PRED_DIR GT_DIR --out REPORT_DIR [--protocol segmast|tdw]
"""

from __future__ import annotations

import csv
import json
import os
import re
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from longiseg.data.layout import BASELINE_MASK, MANIFEST_CSV, MANIFEST_JSON, progression_filename
from longiseg.metrics.aggregate import PAPER_COLUMNS, ResultsTable
from longiseg.metrics.lesion import LesionDetection
from longiseg.metrics.longitudinal import evaluate_longitudinal_case
from longiseg.metrics.protocol import EvaluationProtocol, get_protocol
from longiseg.metrics.report import box_plot, format_paper_table, paper_table_rows, write_csv, write_json
from longiseg.metrics.stratified import SizeBins, stratified_lesion_metrics
from longiseg.utils.io import atomic_write, load_nifti
from longiseg.utils.logging import get_logger

__all__ = [
    "REPORT_FILES",
    "AFFINE_ATOL_MM",
    "EvaluationResult",
    "load_mask",
    "read_patient_ids",
    "list_cases",
    "evaluate_folder",
    "write_report",
    "main",
]

PathLike = str | os.PathLike

#: Files :func:`write_report` writes (``stratified.csv`` only when there are enough lesions).
REPORT_FILES = ("per_case.csv", "summary.csv", "stratified.csv", "summary.json", "table.txt", "boxplot.png")
#: Largest difference (mm, per affine entry) between a prediction's and its reference's voxel-to-world
#: matrix that still counts as the same grid (NIfTI stores affines in float32).
AFFINE_ATOL_MM = 1e-3
_PROG_RE = re.compile(r"^progression_t(\d+)\.nii(\.gz)?$")
_log = get_logger("longiseg.metrics")


@dataclass
class EvaluationResult:
    """Results of one model on one folder.

    Attributes:
        table: per-case rows (:class:`~longiseg.metrics.aggregate.ResultsTable`).
        detections: lesion records keyed by ``(case_id, target)``, for size-stratified analysis.
        protocol: the protocol used.
    """

    table: ResultsTable
    detections: dict[tuple[str, str], LesionDetection] = field(default_factory=dict)
    protocol: EvaluationProtocol = field(default_factory=EvaluationProtocol)

    @property
    def model(self) -> str:
        """Model name."""
        return self.table.model

    def stratified(
        self, target: str = "baseline", bins: SizeBins | Sequence[float] | str = "tertiles"
    ) -> list[dict[str, Any]]:
        """Size-stratified lesion F1/Dice over all cases for ``"baseline"`` or ``"progression"`` targets."""
        if target not in ("baseline", "progression"):
            raise ValueError(f"target must be 'baseline' or 'progression', got {target!r}")
        dets = [d for (_, t), d in self.detections.items() if t.startswith(target)]
        return stratified_lesion_metrics(dets, bins)


def load_mask(path: PathLike) -> tuple[np.ndarray, tuple[float, ...], np.ndarray]:
    """Load a 3D NIfTI mask.

    Returns:
        The array ``(D, H, W)`` (index order of the file), its spacing in mm and its ``(4, 4)`` affine.

    Raises:
        ValueError: naming the file when it is unreadable or not a single 3D volume.
    """
    img = load_nifti(path, what="mask")
    data = np.asanyarray(img.dataobj)
    if data.ndim == 4 and data.shape[3] == 1:
        data = data[..., 0]
    if data.ndim != 3:
        raise ValueError(f"{path} must hold a 3D mask (D, H, W), got shape {data.shape}")
    spacing = tuple(float(z) for z in img.header.get_zooms()[:3])
    return data, spacing, np.asarray(img.affine, dtype=np.float64)


def read_patient_ids(root: PathLike) -> dict[str, str]:
    """``case_id -> patient_id`` from ``ROOT/manifest.json`` or ``ROOT/manifest.csv`` (empty if neither)."""
    root = Path(root)
    pairs: list[tuple[Any, Any]] = []
    if (root / MANIFEST_JSON).is_file():
        with open(root / MANIFEST_JSON) as fh:
            manifest = json.load(fh)
        cases = manifest.get("cases", []) if isinstance(manifest, dict) else []
        pairs = [(c.get("case_id"), c.get("patient_id")) for c in cases if isinstance(c, dict)]
    elif (root / MANIFEST_CSV).is_file():
        with open(root / MANIFEST_CSV, newline="") as fh:
            pairs = [(r.get("case_id"), r.get("patient_id")) for r in csv.DictReader(fh)]
    return {str(c): str(p) for c, p in pairs if c is not None and p not in (None, "")}


def list_cases(gt_dir: PathLike) -> dict[str, list[int]]:
    """Cases of a reference folder (sub-folders with a baseline mask) and their follow-up indices."""
    gt_dir = Path(gt_dir)
    if not gt_dir.is_dir():
        raise ValueError(f"gt_dir {gt_dir} is not a folder")
    cases: dict[str, list[int]] = {}
    for d in sorted(p for p in gt_dir.iterdir() if p.is_dir()):
        if not (d / BASELINE_MASK).is_file():
            continue
        fus = sorted(int(m.group(1)) for f in d.iterdir() if (m := _PROG_RE.match(f.name)))
        if fus != list(range(1, len(fus) + 1)):
            raise ValueError(
                f"case {d.name}: progression masks must be numbered 1..n without gaps, got {fus}"
            )
        cases[d.name] = fus
    if not cases:
        raise ValueError(f"gt_dir {gt_dir} holds no case folder with a {BASELINE_MASK}")
    return cases


def evaluate_folder(
    pred_dir: PathLike,
    gt_dir: PathLike,
    *,
    protocol: str | EvaluationProtocol = "segmast",
    model: str | None = None,
    output_dir: PathLike | None = None,
    progress: bool = True,
    affine_atol: float = AFFINE_ATOL_MM,
) -> EvaluationResult:
    """Evaluate every case of ``gt_dir`` against the same-named case folder of ``pred_dir``.

    Args:
        pred_dir: prediction folder (``CASE/baseline_mask.nii.gz``, ``CASE/progression_t{i}.nii.gz``).
        gt_dir: reference folder in the same layout, optionally with ``manifest.json`` for patient ids.
        protocol: ``"segmast"``, ``"tdw"`` or an :class:`EvaluationProtocol`.
        model: model name for reports (default: the name of ``pred_dir``).
        output_dir: if given, write the report there (see :func:`write_report`).
        progress: show a tqdm progress bar.
        affine_atol: largest per-entry difference of prediction and reference affines (mm).

    Returns:
        :class:`EvaluationResult` with one row per baseline and follow-up mask.

    Raises:
        ValueError: a missing folder or prediction, an unreadable file, or a prediction whose shape or affine
            differs from its reference (naming the case and file).
    """
    from tqdm.auto import tqdm

    prot = get_protocol(protocol)
    pred_dir, gt_dir = Path(pred_dir), Path(gt_dir)
    if not pred_dir.is_dir():
        raise ValueError(f"pred_dir {pred_dir} is not a folder")
    cases = list_cases(gt_dir)
    patients = read_patient_ids(gt_dir)
    missing = [
        f"{c}/{f}"
        for c, fus in cases.items()
        for f in [BASELINE_MASK] + [progression_filename(i) for i in fus]
        if not (pred_dir / c / f).is_file()
    ]
    if missing:
        raise ValueError(f"pred_dir {pred_dir} lacks {len(missing)} prediction file(s), e.g. {missing[:5]}")
    rows: list[dict[str, Any]] = []
    dets: dict[tuple[str, str], LesionDetection] = {}
    for case_id, fus in tqdm(cases.items(), desc="evaluate", disable=not progress):
        names = [BASELINE_MASK] + [progression_filename(i) for i in fus]
        gts, preds, spacing = [], [], None
        for name in names:
            g, sp, gaff = load_mask(gt_dir / case_id / name)
            p, psp, paff = load_mask(pred_dir / case_id / name)
            if p.shape != g.shape:
                raise ValueError(f"case {case_id}: prediction {pred_dir / case_id / name} has shape {p.shape}, "
                                 f"the reference {g.shape}")
            shift = float(np.abs(paff - gaff).max())
            if shift > affine_atol:
                raise ValueError(
                    f"case {case_id}: prediction {pred_dir / case_id / name} lies on another grid than its "
                    f"reference (affines differ by up to {shift:.3g} mm, tolerance {affine_atol:g}); predict on "
                    "the reference images or resample the prediction onto the reference grid")
            if not np.allclose(psp, sp, rtol=1e-3):
                _log.warning(
                    "%s/%s: prediction spacing %s differs from reference %s; using the reference",
                    case_id,
                    name,
                    psp,
                    sp,
                )
            spacing = sp if spacing is None else spacing
            gts.append(g)
            preds.append(p)
        case_rows, case_dets = evaluate_longitudinal_case(
            preds[0],
            gts[0],
            preds[1:],
            gts[1:],
            spacing,
            prot,
            case_id=case_id,
            patient_id=patients.get(case_id, case_id),
        )
        rows.extend(case_rows)
        dets.update({(case_id, r["target"]): d for r, d in zip(case_rows, case_dets)})
    result = EvaluationResult(ResultsTable(rows, model or pred_dir.name), dets, prot)
    if output_dir is not None:
        write_report(result, output_dir)
    return result


def write_report(
    results: EvaluationResult | Sequence[EvaluationResult],
    output_dir: PathLike,
    *,
    reference: str | None = None,
    progression_bins: SizeBins | Sequence[float] | str = "tertiles",
    baseline_bins: SizeBins | Sequence[float] | str = "tertiles",
) -> str:
    """Write ``per_case.csv``, ``summary.csv``, ``summary.json``, ``table.txt``, ``boxplot.png`` and the
    size-stratified ``stratified.csv`` for one or several models; return the printed table text.

    Args:
        results: one or several :class:`EvaluationResult` (distinct model names).
        output_dir: destination folder (created).
        reference: model the others are t-tested against (default: the first when several).
        progression_bins: size bins of follow-up lesions (SegMaST Table 4 right uses ``(43, 113)``).
        baseline_bins: size bins of baseline lesions (tertiles, as SegMaST Table 4 left).
    """
    res = [results] if isinstance(results, EvaluationResult) else list(results)
    if not res:
        raise ValueError("write_report needs at least one EvaluationResult")
    tables = [r.table for r in res]
    if reference is None and len(res) > 1:
        reference = res[0].model
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    text = format_paper_table(tables, reference=reference)
    write_csv(out / "per_case.csv", [{"model": t.model, **r} for t in tables for r in t.rows])
    summary_rows = paper_table_rows(tables, reference=reference)
    write_csv(out / "summary.csv", summary_rows)
    strat_rows: list[dict[str, Any]] = []
    for r in res:
        for target, bins in (("baseline", baseline_bins), ("progression", progression_bins)):
            try:
                strat_rows += [
                    {"model": r.model, "target": target, **row} for row in r.stratified(target, bins)
                ]
            except ValueError as err:  # too few lesions for tertiles
                _log.info("no size-stratified %s analysis for %s: %s", target, r.model, err)
    if strat_rows:
        write_csv(out / "stratified.csv", strat_rows)
    write_json(
        out / "summary.json",
        {
            "protocol": res[0].protocol.to_dict(),
            "reference": reference,
            "columns": [f"{m}/{k}" for m, k in PAPER_COLUMNS],
            "models": summary_rows,
            "stratified": strat_rows,
        },
    )
    atomic_write(out / "table.txt", lambda fh: fh.write(text + "\n"))
    box_plot(tables, out / "boxplot.png")
    return text


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m longiseg.metrics.evaluate ...``: the same as ``longiseg evaluate ...``."""
    from longiseg.cli import main as cli_main

    return cli_main(["evaluate", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
