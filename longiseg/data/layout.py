"""The library's on-disk folder layout for longitudinal cases and predictions.

One folder per case (one patient's registered series of ``T`` timepoints)::

    ROOT/
      manifest.json              # optional; see below (manifest.csv is accepted too)
      CASE_ID/
        t0_flair.nii.gz          # image of timepoint 0 (baseline), one file per modality
        t0_t2.nii.gz
        t1_flair.nii.gz          # timepoint 1 (first follow-up) ...
        t1_t2.nii.gz
        baseline_mask.nii.gz     # binary lesion mask at baseline (timepoint 0)
        progression_t1.nii.gz    # binary new/enlarging-lesion mask of follow-up 1 (empty if stable)
        brain_mask.nii.gz        # optional binary brain mask

All volumes of a case share shape and affine (registered and resampled beforehand). ``manifest.json``
holds ``{"modalities": [...], "cases": [{"case_id", "patient_id", "num_timepoints", "progression"}]}``.

A prediction folder written by ``longiseg predict`` mirrors it::

    OUT/CASE_ID/baseline_mask.nii.gz, progression_t1.nii.gz        # post-processed binary masks
    OUT/CASE_ID/baseline_prob.nii.gz, progression_t1_prob.nii.gz   # averaged probabilities
    OUT/CASE_ID/baseline_entropy.nii.gz, progression_t1_entropy.nii.gz

so ``longiseg evaluate OUT ROOT`` pairs files by case folder and file name.
"""

from __future__ import annotations

import re
from pathlib import Path

__all__ = [
    "MANIFEST_JSON",
    "MANIFEST_CSV",
    "BASELINE_MASK",
    "BRAIN_MASK",
    "image_filename",
    "progression_filename",
    "prediction_filenames",
    "parse_image_filename",
]

MANIFEST_JSON = "manifest.json"
MANIFEST_CSV = "manifest.csv"
BASELINE_MASK = "baseline_mask.nii.gz"
BRAIN_MASK = "brain_mask.nii.gz"

_IMAGE_RE = re.compile(r"^t(\d+)_([A-Za-z0-9\-]+)\.nii(\.gz)?$")


def image_filename(timepoint: int, modality: str) -> str:
    """File name of one timepoint's modality, e.g. ``image_filename(1, "flair") == "t1_flair.nii.gz"``."""
    if timepoint < 0:
        raise ValueError(f"timepoint must be >= 0, got {timepoint}")
    if not re.fullmatch(r"[A-Za-z0-9\-]+", modality):
        raise ValueError(f"modality must be alphanumeric (dashes allowed), got {modality!r}")
    return f"t{timepoint}_{modality.lower()}.nii.gz"


def progression_filename(followup: int, suffix: str = "") -> str:
    """File name of the progression mask of follow-up ``followup`` (1-based), e.g. ``progression_t1.nii.gz``.

    ``suffix`` (``"_prob"``, ``"_entropy"``) names the probability or entropy map of a prediction.
    """
    if followup < 1:
        raise ValueError(f"followup must be >= 1 (timepoint 0 is the baseline), got {followup}")
    return f"progression_t{followup}{suffix}.nii.gz"


def prediction_filenames(num_timepoints: int) -> dict[str, list[str]]:
    """All files that a prediction of a ``T``-timepoint case writes, grouped by kind."""
    fus = range(1, num_timepoints)
    return {
        "mask": [BASELINE_MASK] + [progression_filename(i) for i in fus],
        "prob": ["baseline_prob.nii.gz"] + [progression_filename(i, "_prob") for i in fus],
        "entropy": ["baseline_entropy.nii.gz"] + [progression_filename(i, "_entropy") for i in fus],
    }


def parse_image_filename(name: str | Path) -> tuple[int, str] | None:
    """``"t1_flair.nii.gz" -> (1, "flair")``; ``None`` for files that are not images."""
    m = _IMAGE_RE.match(Path(name).name)
    if m is None:
        return None
    return int(m.group(1)), m.group(2).lower()
