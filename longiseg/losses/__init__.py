"""Losses: per-sample Dice-Focal and the imbalance-aware loss accumulation."""
