"""Training engine: the :class:`Trainer`, its configuration, optimizer, LR schedule, seeding, checkpoints and DDP helpers."""

from __future__ import annotations

from longiseg.engine.checkpoint import (
    CHECKPOINT_FORMAT_VERSION,
    build_model_from_checkpoint,
    capture_rng_state,
    load_checkpoint,
    load_model,
    load_model_weights,
    restore_rng_state,
    save_checkpoint,
    unwrap_model,
    update_spec,
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
from longiseg.engine.optim import build_optimizer, param_groups_weight_decay
from longiseg.engine.schedulers import WarmupCosineSchedule, build_warmup_cosine_scheduler
from longiseg.engine.seeding import epoch_seed, seed_epoch, seed_everything
from longiseg.engine.trainer import FitResult, Trainer

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
    "load_model",
    "load_model_weights",
    "param_groups_weight_decay",
    "read_config_file",
    "restore_rng_state",
    "save_checkpoint",
    "save_config",
    "seed_epoch",
    "seed_everything",
    "unwrap_model",
    "update_spec",
]
