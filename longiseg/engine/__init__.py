"""Training engine: the :class:`Trainer`, its configuration, LR schedule, checkpoints and DDP helpers."""

from __future__ import annotations

from longiseg.engine.checkpoint import (
    CHECKPOINT_FORMAT_VERSION,
    build_model_from_checkpoint,
    capture_rng_state,
    load_checkpoint,
    restore_rng_state,
    save_checkpoint,
    unwrap_model,
)
from longiseg.engine.config import (
    ConfigBase,
    ConfigError,
    TrainerConfig,
    apply_overrides,
    config_from_dict,
    config_to_dict,
    load_config,
    read_config_file,
    save_config,
)
from longiseg.engine.distributed import (
    DistributedContext,
    all_reduce_mean,
    barrier,
    cleanup,
    init_distributed,
    is_main_process,
)
from longiseg.engine.schedulers import WarmupCosineSchedule, build_warmup_cosine_scheduler
from longiseg.engine.trainer import (
    FitResult,
    Trainer,
    build_optimizer,
    epoch_seed,
    param_groups_weight_decay,
    seed_everything,
)

__all__ = [
    "CHECKPOINT_FORMAT_VERSION",
    "ConfigBase",
    "ConfigError",
    "DistributedContext",
    "FitResult",
    "Trainer",
    "TrainerConfig",
    "WarmupCosineSchedule",
    "all_reduce_mean",
    "apply_overrides",
    "barrier",
    "build_model_from_checkpoint",
    "build_optimizer",
    "build_warmup_cosine_scheduler",
    "capture_rng_state",
    "cleanup",
    "config_from_dict",
    "config_to_dict",
    "epoch_seed",
    "init_distributed",
    "is_main_process",
    "load_checkpoint",
    "load_config",
    "param_groups_weight_decay",
    "read_config_file",
    "restore_rng_state",
    "save_checkpoint",
    "save_config",
    "seed_everything",
    "unwrap_model",
]
