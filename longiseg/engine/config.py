"""The trainer's configuration, :class:`TrainerConfig`.

The mechanism every config shares (``from_dict``, files, dotted overrides, :class:`ConfigError`) lives in
:mod:`longiseg.utils.config` and is re-exported here.

Example:
    >>> cfg = TrainerConfig(max_epochs=10)
    >>> cfg = apply_overrides(cfg, ["lr=3e-4", "amp=none"])
    >>> cfg.lr
    0.0003
"""

from __future__ import annotations

import dataclasses
import math
import multiprocessing

from longiseg.utils.config import (
    ConfigBase,
    ConfigError,
    apply_overrides,
    config_from_dict,
    config_to_dict,
    load_config,
    parse_override,
    read_config_file,
    require,
    require_seed,
    save_config,
)
from longiseg.utils.io import expand_home

__all__ = [
    "ConfigError",
    "ConfigBase",
    "TrainerConfig",
    "AMP_CHOICES",
    "config_from_dict",
    "config_to_dict",
    "load_config",
    "read_config_file",
    "save_config",
    "apply_overrides",
    "parse_override",
]

AMP_CHOICES = ("auto", "bf16", "fp16", "none")
#: The smallest normal float32 (``torch.finfo(torch.float32).tiny``): the least ``eps`` the optimizer can add.
_FLOAT32_TINY = 2.0 ** -126


@dataclasses.dataclass
class TrainerConfig(ConfigBase):
    """Hyper-parameters of :class:`longiseg.engine.Trainer` (defaults follow the SegMaST paper).

    Attributes:
        max_epochs: number of epochs (the cosine schedule ends after the last one).
        batch_size: batch size per process, used only when the trainer builds the DataLoader itself.
        steps_per_epoch: optimizer steps per epoch; ``None`` uses ``len(train_loader)``; when set, each
            epoch stops after this many batches (needed for loaders without ``len``).
        lr: peak learning rate of AdamW.
        min_lr: learning rate reached at the end of the cosine decay.
        weight_decay: AdamW weight decay (not applied to norms, biases and ``no_weight_decay`` params).
        betas: AdamW betas.
        eps: AdamW epsilon, at least ``2**-126`` (the smallest normal float32; a smaller one is subnormal or 0 there).
        warmup_epochs: epochs of linear warm-up (per-step) before the cosine decay.
        grad_clip_norm: max global L2 norm of the gradients; ``None`` disables clipping.
        amp: mixed precision on CUDA: ``"auto"`` (bf16 if supported, else fp16), ``"bf16"``, ``"fp16"``
            (with a GradScaler) or ``"none"``. AMP is never used on CPU.
        seed: base seed; the trainer reseeds python/numpy/torch at each epoch from ``(seed, epoch, rank)``.
        deterministic: request deterministic kernels (``torch.use_deterministic_algorithms``, no cuDNN
            benchmarking) while :meth:`~longiseg.engine.Trainer.fit` runs; the process's settings are restored
            when it returns.
        monitor: metric used for ``best.pt`` and early stopping; validation metrics are prefixed ``val_``
            (``validate_fn`` returning ``{"dice": ...}`` gives ``val_dice``), training ones ``train_``.
        monitor_mode: ``"max"`` or ``"min"``.
        patience: validations without improvement before stopping; ``None`` disables early stopping.
        min_delta: minimum change that counts as an improvement.
        val_every: validate every this many epochs.
        output_dir: folder for ``last.pt``, ``best.pt``, ``metrics.csv``, ``trainer_config.yaml`` and TensorBoard.
        num_workers: DataLoader workers, used only when the trainer builds the DataLoader itself.
        worker_start_method: how those workers start (``multiprocessing_context``): ``None`` for the platform's
            default (``fork`` on Linux up to Python 3.13, which Python 3.12+ warns about in a process with
            threads), ``"fork"``, ``"forkserver"`` or ``"spawn"`` (the dataset must then be picklable). The
            weights do not depend on it.
        progress_bar: show a tqdm progress bar (main process only).
        tensorboard: also log to TensorBoard when ``torch.utils.tensorboard`` can be imported.
        log_every_n_steps: refresh interval of the progress-bar loss.
        ddp_find_unused_parameters: passed to ``DistributedDataParallel``.
        device: ``"auto"`` (CUDA if available, the local rank's GPU under DDP), or e.g. ``"cpu"``, ``"cuda:1"``.
    """

    max_epochs: int = 500
    batch_size: int = 32
    steps_per_epoch: int | None = None
    lr: float = 1e-4
    min_lr: float = 1e-6
    weight_decay: float = 0.05
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    warmup_epochs: int = 40
    grad_clip_norm: float | None = 1.0
    amp: str = "auto"
    seed: int = 0
    deterministic: bool = True
    monitor: str = "val_dice"
    monitor_mode: str = "max"
    patience: int | None = 50
    min_delta: float = 0.0
    val_every: int = 1
    output_dir: str = "runs/train"
    num_workers: int = 0
    worker_start_method: str | None = None
    progress_bar: bool = True
    tensorboard: bool = True
    log_every_n_steps: int = 10
    ddp_find_unused_parameters: bool = False
    device: str = "auto"

    def __post_init__(self) -> None:
        def need(cond: bool, msg: str) -> None:
            require(cond, "TrainerConfig", msg)

        self.coerce_fields()  # TrainerConfig(max_epochs=2.5) is refused as the file value 2.5 is
        self.output_dir = expand_home(self.output_dir)  # "~/runs" is the user's folder, not a folder named "~"

        need(self.max_epochs >= 1, f"max_epochs must be >= 1, got {self.max_epochs}")
        need(self.batch_size >= 1, f"batch_size must be >= 1, got {self.batch_size}")
        need(self.steps_per_epoch is None or self.steps_per_epoch >= 1,
             f"steps_per_epoch must be >= 1 or None, got {self.steps_per_epoch}")
        # finite: an inf lr, weight decay or eps would only show as a non-finite loss after the run started
        need(0 < self.lr < math.inf, f"lr must be > 0 and finite, got {self.lr}")
        need(0 <= self.min_lr <= self.lr, f"min_lr must be in [0, lr={self.lr}], got {self.min_lr}")
        need(0 <= self.weight_decay < math.inf, f"weight_decay must be >= 0 and finite, got {self.weight_decay}")
        need(len(self.betas) == 2 and all(0 <= b < 1 for b in self.betas),
             f"betas must be two values in [0, 1), got {self.betas}")
        # the optimizer adds eps to float32 state: a smaller eps is subnormal there (0 where subnormals are flushed,
        # as on GPUs) or 0, and 0 / 0 where a gradient is 0
        need(_FLOAT32_TINY <= self.eps < math.inf,
             f"eps must be finite and >= {_FLOAT32_TINY:.3g} (the smallest normal float32; a smaller one is "
             f"subnormal or 0 there), got {self.eps}")
        need(self.warmup_epochs >= 0, f"warmup_epochs must be >= 0, got {self.warmup_epochs}")
        need(self.grad_clip_norm is None or 0 < self.grad_clip_norm < math.inf,
             f"grad_clip_norm must be > 0 and finite, or None (no clipping), got {self.grad_clip_norm}")
        require_seed(self.seed, "TrainerConfig", "seed (trainer.seed)")
        need(self.amp in AMP_CHOICES, f"amp must be one of {AMP_CHOICES}, got {self.amp!r}")
        need(self.monitor_mode in ("max", "min"), f"monitor_mode must be 'max' or 'min', got {self.monitor_mode!r}")
        # best.pt was the epoch of the highest training loss: the default mode is the Dice's
        need(not ("loss" in str(self.monitor) and self.monitor_mode == "max"),
             f"monitor {self.monitor!r} is a loss (lower is better): set monitor_mode to 'min' (trainer.monitor_mode)")
        need(bool(self.monitor), "monitor must be a non-empty metric name")
        need(self.patience is None or self.patience >= 1, f"patience must be >= 1 or None, got {self.patience}")
        need(0 <= self.min_delta < math.inf, f"min_delta must be >= 0 and finite, got {self.min_delta}")
        need(self.val_every >= 1, f"val_every must be >= 1, got {self.val_every}")
        need(self.num_workers >= 0, f"num_workers must be >= 0, got {self.num_workers}")
        methods = multiprocessing.get_all_start_methods()
        need(self.worker_start_method is None or self.worker_start_method in methods,
             f"worker_start_method must be None (the platform's default) or one of {methods} on this platform, "
             f"got {self.worker_start_method!r}")
        need(self.log_every_n_steps >= 1, f"log_every_n_steps must be >= 1, got {self.log_every_n_steps}")
        need(bool(self.output_dir), "output_dir must be a non-empty path")
        self.betas = tuple(float(b) for b in self.betas)  # type: ignore[assignment]
