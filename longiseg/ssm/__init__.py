"""Selective state-space models: the selective-scan op (reference, chunked, CUDA) and the Mamba module."""
