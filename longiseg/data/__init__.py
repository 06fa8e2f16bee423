"""Longitudinal data: case model, NIfTI layout and adapters, preprocessing, 2.5D sampling, augmentation, demo cohort."""
