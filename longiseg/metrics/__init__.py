"""Voxel and lesion-level metrics, aggregation and reports.

Conventions and sources are documented in ``docs/metrics.md``.
"""

from __future__ import annotations

from longiseg.metrics.aggregate import (
    PAPER_COLUMNS,
    MetricSummary,
    ResultsTable,
    TTestResult,
    paired_ttest,
    significance_stars,
)
from longiseg.metrics.consistency import PersistingLesions, persisting_lesions, pooled_false_progression_rate
from longiseg.metrics.evaluate import EvaluationResult, evaluate_folder, write_report
from longiseg.metrics.evolution import (
    CHANGE_KINDS,
    CaseEvolution,
    FollowupEvolution,
    LesionChange,
    evolution_folder,
    lesion_evolution,
    write_evolution_tables,
)
from longiseg.metrics.lesion import (
    MATCHING_RULES,
    LesionDetection,
    LesionLabels,
    LesionMatch,
    LesionOverlaps,
    detection_scores,
    label_lesions,
    lesion_detection,
    lesion_f1,
    lesion_overlaps,
    lesion_ppv,
    lesion_recall,
    match_lesions,
    remove_small_lesions,
)
from longiseg.metrics.longitudinal import (
    disease_activity_assessment,
    disease_activity_correct,
    evaluate_longitudinal_case,
    evaluate_mask_pair,
    has_progression,
    np_score,
    progression_kind,
)
from longiseg.metrics.protocol import PROTOCOLS, EvaluationProtocol, get_protocol
from longiseg.metrics.report import box_plot, format_paper_table, paper_table_rows, write_csv, write_json
from longiseg.metrics.stratified import SizeBins, stratified_lesion_metrics, tertile_bins
from longiseg.metrics.voxel import confusion_counts, dice, hausdorff_distance, hd95, ppv, sensitivity

__all__ = [
    "PAPER_COLUMNS",
    "MetricSummary",
    "ResultsTable",
    "TTestResult",
    "paired_ttest",
    "significance_stars",
    "PersistingLesions",
    "persisting_lesions",
    "pooled_false_progression_rate",
    "EvaluationResult",
    "evaluate_folder",
    "write_report",
    "CHANGE_KINDS",
    "CaseEvolution",
    "FollowupEvolution",
    "LesionChange",
    "evolution_folder",
    "lesion_evolution",
    "write_evolution_tables",
    "MATCHING_RULES",
    "LesionDetection",
    "LesionLabels",
    "LesionMatch",
    "LesionOverlaps",
    "detection_scores",
    "label_lesions",
    "lesion_detection",
    "lesion_f1",
    "lesion_overlaps",
    "lesion_ppv",
    "lesion_recall",
    "match_lesions",
    "remove_small_lesions",
    "disease_activity_assessment",
    "disease_activity_correct",
    "evaluate_longitudinal_case",
    "evaluate_mask_pair",
    "has_progression",
    "np_score",
    "progression_kind",
    "PROTOCOLS",
    "EvaluationProtocol",
    "get_protocol",
    "box_plot",
    "format_paper_table",
    "paper_table_rows",
    "write_csv",
    "write_json",
    "SizeBins",
    "stratified_lesion_metrics",
    "tertile_bins",
    "confusion_counts",
    "dice",
    "hausdorff_distance",
    "hd95",
    "ppv",
    "sensitivity",
]
