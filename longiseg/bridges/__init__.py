"""Bridges to other frameworks (nnU-Net v2 raw datasets and the 4-class baseline/progression labels)."""

from longiseg.bridges.nnunet import (
    FOUR_CLASS_LABELS,
    NnUNetCase,
    check_nnunet_raw_dataset,
    convert_longiseg_dataset,
    four_class_to_masks,
    import_nnunet_predictions,
    masks_to_four_class,
    nnunet_dataset_name,
    write_nnunet_dataset,
)

__all__ = [
    "FOUR_CLASS_LABELS",
    "NnUNetCase",
    "check_nnunet_raw_dataset",
    "convert_longiseg_dataset",
    "four_class_to_masks",
    "import_nnunet_predictions",
    "masks_to_four_class",
    "nnunet_dataset_name",
    "write_nnunet_dataset",
]
