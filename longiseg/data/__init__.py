"""Longitudinal data: case model, NIfTI layout and adapters, preprocessing, 2.5D sampling, augmentation, demo cohort."""

from longiseg.data.adapters import msseg2_cases, ucsf_altpd_cases
from longiseg.data.case import PLANES, LongitudinalCase, plane_axes
from longiseg.data.dataset import CaseCache, SliceDataset, VolumePatchDataset
from longiseg.data.demo_cohort import DemoCohortConfig, generate_demo_case, generate_demo_cohort
from longiseg.data.loading import (
    CaseSource,
    Manifest,
    ManifestEntry,
    MaskSpec,
    check_same_grid,
    find_cases,
    find_mask_cases,
    load_case,
    load_cases,
    manifest_from_cases,
    prediction_complete,
    read_manifest,
    read_mask,
    read_prediction,
    read_volume,
    save_case,
    save_prediction,
    validate_cases,
    write_manifest,
)
from longiseg.data.preprocessing import (
    CropBox,
    crop_to_foreground,
    joint_foreground_bbox,
    preprocess_case,
    zscore_normalize,
)
from longiseg.data.sampling import CrossViewSampler, VolumePatchSampler, build_sampling_index, sample_center
from longiseg.data.split import split_by_patient, write_test_split
from longiseg.data.transforms import LongitudinalAugment, TimepointVariation

__all__ = [
    "PLANES",
    "LongitudinalCase",
    "plane_axes",
    "CaseSource",
    "MaskSpec",
    "Manifest",
    "ManifestEntry",
    "find_cases",
    "find_mask_cases",
    "load_case",
    "load_cases",
    "validate_cases",
    "save_case",
    "read_mask",
    "read_volume",
    "check_same_grid",
    "prediction_complete",
    "read_prediction",
    "save_prediction",
    "read_manifest",
    "write_manifest",
    "manifest_from_cases",
    "msseg2_cases",
    "ucsf_altpd_cases",
    "CropBox",
    "zscore_normalize",
    "joint_foreground_bbox",
    "crop_to_foreground",
    "preprocess_case",
    "CrossViewSampler",
    "VolumePatchSampler",
    "build_sampling_index",
    "sample_center",
    "LongitudinalAugment",
    "TimepointVariation",
    "SliceDataset",
    "VolumePatchDataset",
    "CaseCache",
    "DemoCohortConfig",
    "generate_demo_case",
    "generate_demo_cohort",
    "split_by_patient",
    "write_test_split",
]
