"""Evaluate a folder of predicted cases against a reference folder in the library layout.

Both folders hold one sub-folder per case (see :mod:`longiseg.data.layout`); ``CASE/baseline_mask.nii.gz``
and ``CASE/progression_t{i}.nii.gz`` are paired by case folder and file name. The data layer lists the
reference cases (:func:`~longiseg.data.cohort.find_mask_cases`: the reference manifest, read exactly as
training reads it, gives cases, patient ids and timepoints; without one every case is its own patient) and
reads the masks of a reference case as ``longiseg lesions`` reads them
(:func:`~longiseg.data.loading.read_mask_case`: all on one grid, and a progression flag of the manifest
agreeing with the masks, with the message training gives), then every predicted mask
(:func:`~longiseg.data.predictions.read_prediction`), which must lie on its reference's grid. The voxel size is
the reference affine's (:func:`~longiseg.data.volumes.nifti_spacing`, which refuses a file whose header voxel
sizes disagree with its affine).

Command line: ``longiseg evaluate PRED_DIR [PRED_DIR ...] GT_DIR --out REPORT_DIR [--protocol segmast|tdw]``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from longiseg.data.cohort import find_mask_cases
from longiseg.data.layout import BASELINE_MASK, find_nifti, prediction_filenames
from longiseg.data.loading import read_mask_case
from longiseg.data.predictions import read_prediction
from longiseg.data.volumes import check_same_grid
from longiseg.metrics.aggregate import PAPER_COLUMNS, ResultsTable
from longiseg.metrics.lesion import LesionDetection
from longiseg.metrics.longitudinal import evaluate_longitudinal_case
from longiseg.metrics.protocol import EvaluationProtocol, get_protocol
from longiseg.metrics.report import (
    box_plot,
    format_paper_table,
    paper_table_rows,
    write_csv,
    write_json,
)
from longiseg.metrics.stratified import SizeBins, check_bins, stratified_lesion_metrics
from longiseg.utils.io import PathLike, atomic_write, check_output_folder, check_separate_folders
from longiseg.utils.logging import get_logger
from longiseg.utils.plotting import require_matplotlib
from longiseg.utils.report_folder import report_folder
from longiseg.utils.validation import check_bool, check_nonnegative_float, check_path

__all__ = [
    "REPORT_FILES",
    "AFFINE_ATOL_MM",
    "EvaluationResult",
    "evaluate_folder",
    "write_report",
]


#: Files :func:`write_report` writes (``stratified.csv`` only when there are enough lesions): the only
#: files of a report folder it replaces or removes.
REPORT_FILES = ("per_case.csv", "summary.csv", "stratified.csv", "summary.json", "table.txt", "boxplot.png")
#: Largest difference (mm, per affine entry) between a prediction's and its reference's voxel-to-world
#: matrix that still counts as the same grid (NIfTI stores affines in float32).
AFFINE_ATOL_MM = 1e-3
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
        gt_dir: reference folder: a cohort folder with masks (images optional), optionally with a manifest
            for patient ids (see :func:`~longiseg.data.cohort.find_mask_cases`).
        protocol: ``"segmast"``, ``"tdw"`` or an :class:`EvaluationProtocol`.
        model: model name for reports (default: the name of ``pred_dir``).
        output_dir: if given, write the report there (see :func:`write_report`); a folder apart from
            ``pred_dir`` and ``gt_dir`` (neither of them, inside or holding one).
        progress: show a tqdm progress bar.
        affine_atol: largest per-entry difference of prediction and reference affines (mm), a finite
            number ``>= 0``.

    Returns:
        :class:`EvaluationResult` with one row per baseline and follow-up mask.

    Raises:
        TypeError: ``affine_atol`` is not a number, ``progress`` not a bool.
        NotADirectoryError / PermissionError: ``output_dir`` cannot become a writable folder.
        ValueError: ``output_dir`` overlaps an input folder, ``affine_atol`` negative or not finite, a missing
            folder or prediction, an unreadable or
            non-binary mask, a malformed reference manifest, a reference manifest's progression flag that the
            reference's progression masks contradict, masks of one case on different grids ("lies on
            another grid"), a file whose header voxel sizes disagree with its affine, or a prediction whose shape
            or affine differs from its reference (naming case and file).
        FileNotFoundError: the reference folder holds no case, or a reference case lacks a mask.
    """
    from tqdm.auto import tqdm

    prot = get_protocol(protocol)
    pred_dir, gt_dir = check_path("pred_dir", pred_dir), check_path("gt_dir", gt_dir)
    affine_atol = check_nonnegative_float("affine_atol", affine_atol)
    if not pred_dir.is_dir():
        raise ValueError(f"pred_dir {pred_dir} is not a folder")
    if not gt_dir.is_dir():
        raise ValueError(f"gt_dir {gt_dir} is not a folder")
    progress = check_bool("progress", progress)
    if output_dir is not None:  # before any work; a report inside an input folder is read back as a case
        output_dir = check_output_folder(output_dir, "output_dir")
        check_separate_folders(output_dir, "output_dir", {"pred_dir": pred_dir, "gt_dir": gt_dir})
    cases = find_mask_cases(gt_dir)
    names: dict[str, list[str]] = {}
    for e in cases:
        assert e.num_timepoints is not None  # find_mask_cases counts it where the manifest leaves it out
        names[e.case_id] = prediction_filenames(e.num_timepoints)["mask"]
    missing = [f"{c}/{n}" for c, ns in names.items() for n in ns if find_nifti(pred_dir / c, n) is None]
    if missing:
        raise ValueError(f"pred_dir {pred_dir} lacks {len(missing)} prediction file(s), e.g. {missing[:5]}")
    _note_unscored(pred_dir, gt_dir, names)
    rows: list[dict[str, Any]] = []
    dets: dict[tuple[str, str], LesionDetection] = {}
    for entry in tqdm(cases, desc="evaluate", disable=not progress):
        case_id, num_t = entry.case_id, int(entry.num_timepoints or 0)
        # the reference case is read as longiseg lesions reads a case (all its masks on one grid, header and
        # affine agreeing on the voxel size, the manifest's progression flag agreeing with the masks, as training
        # checks it); each prediction must then lie on that grid
        gt_masks, gaff, spacing = read_mask_case(gt_dir, entry, what=f"case {case_id!r}: reference mask")
        gts = list(gt_masks)
        # the predicted case is read as longiseg lesions reads it too (its masks on one grid: a follow-up's mask
        # 5e-4 mm off its baseline's was scored here and refused there), then compared with the reference's grid
        pred_masks, paff, _ = read_prediction(pred_dir, case_id, num_t, "mask", what=f"case {case_id!r}: prediction")
        name = names[case_id][0]
        pred_path = find_nifti(pred_dir / case_id, name) or pred_dir / case_id / name
        ref_path = find_nifti(gt_dir / case_id, name) or gt_dir / case_id / name
        check_same_grid((pred_path, pred_masks.shape[1:], paff), (ref_path, gt_masks.shape[1:], gaff),
                        what=f"case {case_id!r}: prediction", atol=affine_atol,
                        hint="predict on the reference images or resample the prediction onto the reference grid")
        preds = list(pred_masks)
        case_rows, case_dets = evaluate_longitudinal_case(
            preds[0],
            gts[0],
            preds[1:],
            gts[1:],
            spacing,
            prot,
            case_id=case_id,
            patient_id=entry.patient_id,
        )
        rows.extend(case_rows)
        dets.update({(case_id, r["target"]): d for r, d in zip(case_rows, case_dets)})
    result = EvaluationResult(ResultsTable(rows, model or pred_dir.name), dets, prot)
    if output_dir is not None:
        write_report(result, output_dir)
    return result


def _note_unscored(pred_dir: Path, gt_dir: Path, cases: Mapping[str, Sequence[str]]) -> None:
    """Warn about what a score of ``pred_dir`` silently leaves out or takes for granted: predicted cases that
    the reference lacks (not evaluated), predicted follow-ups beyond the reference's, and ``pred_dir`` being
    ``gt_dir`` (every score perfect by construction)."""
    if pred_dir.resolve() == gt_dir.resolve():
        _log.warning("the prediction folder %s is the reference folder itself: every score is perfect by "
                     "construction", pred_dir)
    extra = sorted(d.name for d in pred_dir.iterdir()
                   if d.is_dir() and d.name not in cases and find_nifti(d, BASELINE_MASK) is not None)
    if extra:
        _log.warning("%d case(s) of %s are not in the reference %s and are not evaluated: %s%s", len(extra),
                     pred_dir, gt_dir, ", ".join(extra[:5]), ", ..." if len(extra) > 5 else "")
    longer = [c for c, ns in cases.items()
              if find_nifti(pred_dir / c, prediction_filenames(len(ns) + 1)["mask"][-1]) is not None]
    if longer:
        _log.warning("%d case(s) of %s have more follow-ups than the reference, which are not evaluated: %s%s",
                     len(longer), pred_dir, ", ".join(longer[:5]), ", ..." if len(longer) > 5 else "")


def write_report(
    results: EvaluationResult | Sequence[EvaluationResult],
    output_dir: PathLike,
    *,
    reference: str | None = None,
    progression_bins: SizeBins | Sequence[float] | str = "tertiles",
    baseline_bins: SizeBins | Sequence[float] | str = "tertiles",
    overwrite: bool = True,
    figures: bool = True,
) -> str:
    """Write ``per_case.csv``, ``summary.csv``, ``summary.json``, ``table.txt``, ``boxplot.png`` and the
    size-stratified ``stratified.csv`` for one or several models; return the printed table text.

    The folder is written as a whole (:func:`~longiseg.utils.report_folder.report_folder`): afterwards it holds
    this report's files and none of an earlier report's (``REPORT_FILES``; ``stratified.csv`` is absent
    when there are too few lesions for it), and files that are not report files are left alone. An
    interruption leaves the earlier report as it was.

    Args:
        results: one or several :class:`EvaluationResult` (distinct model names), of one protocol.
        output_dir: destination folder (created; an earlier report in it is replaced).
        reference: model the others are t-tested against (default: the first when several).
        progression_bins: size bins of follow-up lesions (SegMaST Table 4 right uses ``(43, 113)``).
        baseline_bins: size bins of baseline lesions (tertiles, as SegMaST Table 4 left).
        overwrite: replace a report that ``output_dir`` holds (default); ``False`` (``longiseg evaluate``
            without ``--overwrite``): refuse it, also one that another process writes there meanwhile.
        figures: also write ``boxplot.png`` (needs matplotlib, checked before anything is written); ``False``
            (``longiseg evaluate --no-figures``): the tables only.

    Raises:
        FileExistsError: ``overwrite`` is ``False`` and ``output_dir`` holds a report, or another process wrote
            one there while this one was being written.
        TypeError: ``progression_bins`` or ``baseline_bins`` of none of the kinds of
            :func:`~longiseg.metrics.stratified.check_bins`.
        ValueError: no results, results computed under different protocols, or bad ``progression_bins`` or
            ``baseline_bins`` (checked before anything is written).
        ImportError: ``figures`` without matplotlib (before anything is written).
    """
    bins_of = {"baseline": check_bins("baseline_bins", baseline_bins),
               "progression": check_bins("progression_bins", progression_bins)}
    if check_bool("figures", figures):
        require_matplotlib("the box plot (boxplot.png)", "pass figures=False (--no-figures) for the tables only")
    res = [results] if isinstance(results, EvaluationResult) else list(results)
    if not res:
        raise ValueError("write_report needs at least one EvaluationResult")
    other = next((r for r in res if r.protocol != res[0].protocol), None)
    if other is not None:  # one table, t-tests and summary.json's "protocol" describe one protocol
        raise ValueError(f"results were computed under different protocols ({res[0].model!r}: "
                         f"{res[0].protocol.name!r}, {other.model!r}: {other.protocol.name!r}); evaluate every "
                         "model under one protocol to compare them")
    tables = [r.table for r in res]
    if reference is None and len(res) > 1:
        reference = res[0].model
    text = format_paper_table(tables, reference=reference)
    summary_rows = paper_table_rows(tables, reference=reference)
    strat_rows: list[dict[str, Any]] = []
    for r in res:
        for target, bins in bins_of.items():
            try:
                strat_rows += [
                    {"model": r.model, "target": target, **row} for row in r.stratified(target, bins)
                ]
            except ValueError as err:  # too few or too uniform lesions for tertiles (the bins are checked)
                if bins != "tertiles":
                    raise
                _log.info("no size-stratified %s analysis for %s: %s", target, r.model, err)
    # the report is written as a whole: an earlier report's files (e.g. a stratified.csv this run has no
    # data for) never stay beside this one's
    with report_folder(output_dir, REPORT_FILES, overwrite=overwrite) as out:
        write_csv(out / "per_case.csv", [{"model": t.model, **r} for t in tables for r in t.rows])
        write_csv(out / "summary.csv", summary_rows)
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
        if figures:
            box_plot(tables, out / "boxplot.png")
    return text
