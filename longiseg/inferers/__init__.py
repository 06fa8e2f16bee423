"""Inference: tri-planar 2.5D and 3D sliding windows, post-processing, uncertainty."""
