"""End-to-end workflows built from the library's parts: experiment configs, training, prediction, the demo."""

from longiseg.workflows.config import DataConfig, ExperimentConfig, InferenceConfig, LossConfig, ModelConfig

__all__ = ["DataConfig", "ExperimentConfig", "InferenceConfig", "LossConfig", "ModelConfig"]
