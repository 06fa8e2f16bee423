"""Reusable network blocks (MaST, Difference Weighting, patch embedding, decoders, heads)."""
