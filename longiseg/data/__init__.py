"""Longitudinal data: case model, NIfTI layout and adapters, preprocessing, 2.5D sampling, augmentation, demo cohort."""

from longiseg.data.adapters import msseg2_cases, ucsf_altpd_cases
from longiseg.data.case import PLANES, LongitudinalCase, affine_spacing, plane_axes
from longiseg.data.cohort import find_cases, find_mask_cases
from longiseg.data.crops import CrossViewSampler, VolumePatchSampler, build_sampling_index, sample_center
from longiseg.data.dataset import CaseCache, SliceDataset, VolumePatchDataset
from longiseg.data.demo_cohort import DemoCohortConfig, generate_demo_case, generate_demo_cohort
from longiseg.data.loading import (
    case_grid,
    case_voxel_size,
    check_progression_flag,
    load_case,
    load_cases,
    read_mask_case,
    save_case,
    validate_cases,
)
from longiseg.data.manifest import Manifest, ManifestEntry, manifest_from_cases, read_manifest, write_manifest
from longiseg.data.predictions import (
    case_spatial_header,
    prediction_complete,
    read_prediction,
    save_prediction,
)
from longiseg.data.preprocessing import (
    CropBox,
    crop_to_foreground,
    joint_foreground_bbox,
    preprocess_case,
    zscore_normalize,
)
from longiseg.data.samplers import BalancedBatchSampler
from longiseg.data.sources import CaseSource, MaskSpec
from longiseg.data.split import split_by_patient, write_test_split
from longiseg.data.transforms import LongitudinalAugment, TimepointVariation
from longiseg.data.volumes import check_same_grid, nifti_spacing, read_mask, read_volume

__all__ = [
    "PLANES",
    "affine_spacing",
    "LongitudinalCase",
    "plane_axes",
    "CaseSource",
    "MaskSpec",
    "Manifest",
    "ManifestEntry",
    "find_cases",
    "find_mask_cases",
    "load_case",
    "read_mask_case",
    "check_progression_flag",
    "case_voxel_size",
    "case_grid",
    "load_cases",
    "validate_cases",
    "save_case",
    "read_mask",
    "read_volume",
    "nifti_spacing",
    "check_same_grid",
    "prediction_complete",
    "read_prediction",
    "save_prediction",
    "case_spatial_header",
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
    "BalancedBatchSampler",
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
