"""Thin helpers over :mod:`torch.distributed` for runs launched with ``torchrun``.

``torchrun`` sets ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT`` for every
process; :func:`init_distributed` reads them and initialises the default process group (``nccl`` on
CUDA, ``gloo`` otherwise). Without those variables (a plain ``python train.py``) it returns a
single-process context and every helper here degrades to a no-op, so the same training script runs
unchanged on one CPU, one GPU, or many GPUs on many nodes::

    torchrun --standalone --nproc_per_node 4 train.py
"""

from __future__ import annotations

import datetime
import os
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist

from longiseg.utils.device import resolve_device
from longiseg.utils.validation import check_instance, check_positive_float

__all__ = [
    "DistributedContext",
    "init_distributed",
    "launch_rank",
    "is_distributed",
    "get_rank",
    "get_world_size",
    "is_main_process",
    "barrier",
    "all_reduce_mean",
    "broadcast_object",
    "cleanup",
]


@dataclass(frozen=True)
class DistributedContext:
    """Where this process sits in a (possibly single-process) run.

    Attributes:
        rank: global rank in ``[0, world_size)``.
        world_size: number of processes.
        local_rank: rank on this node (selects the GPU).
        device: the device this process trains on.
        backend: ``"nccl"``, ``"gloo"`` or ``None`` when not distributed.
    """

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    backend: str | None = None

    @property
    def is_distributed(self) -> bool:
        """Whether a process group with more than one process is active."""
        return self.backend is not None and self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Whether this is rank 0 (the process that logs and writes checkpoints)."""
        return self.rank == 0


def _env_int(name: str, default: int) -> int:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        return int(raw)
    except ValueError as err:
        raise ValueError(f"environment variable {name} must be an integer, got {raw!r}") from err


def init_distributed(
    backend: str | None = None,
    *,
    device: str = "auto",
    timeout_s: float = 1800.0,
) -> DistributedContext:
    """Initialise ``torch.distributed`` from the ``torchrun`` environment, or return a single-process context.

    Args:
        backend: ``"nccl"`` or ``"gloo"``; default ``nccl`` when CUDA is available, else ``gloo``.
        device: ``"auto"`` (``cuda:LOCAL_RANK`` when CUDA is available, else CPU) or an explicit device.
        timeout_s: collective timeout in seconds.

    Returns:
        The :class:`DistributedContext` of this process. Calling it again after initialisation returns the
        context of the existing process group.

    Raises:
        ValueError: for malformed ``RANK``/``WORLD_SIZE``/``LOCAL_RANK`` values, an unknown backend or a
            device this machine does not have; ``timeout_s`` not a finite number of seconds > 0.
        TypeError: ``timeout_s`` is not a number.
    """
    timeout_s = check_positive_float("timeout_s", timeout_s)
    world_size = _env_int("WORLD_SIZE", 1)
    rank = _env_int("RANK", 0)
    local_rank = _env_int("LOCAL_RANK", 0)
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"invalid torchrun environment: RANK={rank}, WORLD_SIZE={world_size}")
    if device == "auto":
        dev = torch.device(f"cuda:{local_rank}") if torch.cuda.is_available() else torch.device("cpu")
    else:
        dev = resolve_device(device, name="trainer.device")
        if dev.type == "cuda" and dev.index is None:
            dev = torch.device("cuda", local_rank)
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    if world_size == 1 and not dist.is_initialized():
        return DistributedContext(rank=0, world_size=1, local_rank=local_rank, device=dev, backend=None)
    if backend is None:
        backend = "nccl" if dev.type == "cuda" else "gloo"
    if backend not in ("nccl", "gloo", "mpi"):
        raise ValueError(f"backend must be 'nccl', 'gloo' or 'mpi', got {backend!r}")
    if not dist.is_initialized():
        dist.init_process_group(backend=backend, timeout=datetime.timedelta(seconds=timeout_s))
    return DistributedContext(rank=dist.get_rank(), world_size=dist.get_world_size(), local_rank=local_rank,
                              device=dev, backend=dist.get_backend())


def launch_rank() -> int:
    """The global rank ``torchrun`` gives this process (``RANK``; 0 when it was not launched by torchrun), readable
    before :func:`init_distributed`, e.g. to choose what a process logs.

    Raises:
        ValueError: ``RANK`` is not an integer.
    """
    return _env_int("RANK", 0)


def is_distributed() -> bool:
    """Whether a default process group with more than one process is initialised."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def get_rank() -> int:
    """Global rank (0 when not distributed)."""
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def get_world_size() -> int:
    """Number of processes (1 when not distributed)."""
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def is_main_process() -> bool:
    """Whether this process is rank 0 (always true when not distributed)."""
    return get_rank() == 0


def barrier() -> None:
    """Wait for every process (no-op when not distributed)."""
    if is_distributed():
        dist.barrier()


def _collective_device() -> torch.device:
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def all_reduce_mean(metrics: Mapping[str, float]) -> dict[str, float]:
    """Average a dict of scalar metrics over all processes (identity when not distributed).

    Every process must pass the same keys. Values are reduced in float64 so the result is identical on
    every rank.

    Args:
        metrics: ``{name: value}`` with Python numbers or 0-dim tensors.

    Returns:
        ``{name: mean over ranks}`` as Python floats.

    Raises:
        TypeError: if ``metrics`` is not a mapping, a name is not a string, or a value is not a number or
            0-dim tensor.
    """
    check_instance("metrics", metrics, Mapping, "a mapping {name: value}")
    for k in metrics:
        check_instance(f"metrics key {k!r}", k, str, "a str")
    keys = sorted(metrics)
    values = []
    for k in keys:
        v = metrics[k]
        if isinstance(v, torch.Tensor):
            if v.numel() != 1:
                raise TypeError(f"all_reduce_mean: metric {k!r} must be a scalar, got shape {tuple(v.shape)}")
            v = v.item()
        if not isinstance(v, (int, float, np.integer, np.floating)) or isinstance(v, bool):
            raise TypeError(f"all_reduce_mean: metric {k!r} must be a number, got {type(v).__name__}")
        values.append(float(v))
    if not is_distributed() or not keys:
        return dict(zip(keys, values))
    buf = torch.tensor(values, dtype=torch.float64, device=_collective_device())
    dist.all_reduce(buf, op=dist.ReduceOp.SUM)
    buf /= dist.get_world_size()
    return dict(zip(keys, buf.cpu().tolist()))


def broadcast_object(obj: object, src: int = 0) -> object:
    """Send a picklable object from rank ``src`` to every process (identity when not distributed)."""
    if not is_distributed():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def cleanup() -> None:
    """Destroy the default process group if one is initialised."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
