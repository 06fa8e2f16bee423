"""Voxel and lesion-level metrics, aggregation and reports."""
