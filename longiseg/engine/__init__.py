"""Training engine: trainer, configs, distributed helpers."""
