"""Tiny model, synthetic longitudinal data and a training script shared by the engine tests.

Run as a script (``python tests/test_engine_toys.py --out DIR ...``) it trains the tiny model on CPU; the
resume-after-kill and DDP tests launch it in subprocesses (``torchrun`` for DDP).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
from pathlib import Path

import torch
import torch.nn as nn
from torch.utils.data import Dataset

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from longiseg.networks.output import LongitudinalOutput  # noqa: E402


class TinyLongiNet(nn.Module):
    """Two convolutions over the timepoints stacked as channels, with two heads.

    Maps ``(B, T, C, H, W)`` (or ``(B, T, C, D, H, W)`` with ``spatial_dims=3``) to a
    :class:`LongitudinalOutput` with ``baseline (B, 1, *S)`` and ``progression (B, T-1, 1, *S)``.
    Has a norm layer, a ``no_weight_decay()`` name and a parameter flagged ``_no_weight_decay`` so the
    optimizer grouping can be checked.
    """

    def __init__(self, in_channels: int = 1, num_timepoints: int = 2, width: int = 8, spatial_dims: int = 2):
        super().__init__()
        conv = nn.Conv2d if spatial_dims == 2 else nn.Conv3d
        self.t = num_timepoints
        self.conv1 = conv(in_channels * num_timepoints, width, 3, padding=1)
        self.norm = nn.GroupNorm(2, width)
        self.conv2 = conv(width, num_timepoints, 1)
        self.temperature = nn.Parameter(torch.ones(1, num_timepoints))
        self.gain = nn.Parameter(torch.ones(2, 1))  # 2-D: decayed unless listed in no_weight_decay()
        self.A_log = nn.Parameter(torch.zeros(2, 2))
        self.A_log._no_weight_decay = True  # type: ignore[attr-defined]

    def no_weight_decay(self) -> set[str]:
        return {"gain"}

    def forward(self, images: torch.Tensor) -> LongitudinalOutput:
        b, t = images.shape[:2]
        x = images.flatten(1, 2)
        x = torch.relu(self.norm(self.conv1(x)))
        scale = (self.temperature * self.gain.mean() * torch.exp(self.A_log).mean()).reshape(
            1, t, *([1] * (x.ndim - 2)))
        y = self.conv2(x) * scale
        return LongitudinalOutput(baseline=y[:, :1], progression=y[:, 1:].unsqueeze(2))


class SyntheticLongiData(Dataset):
    """Deterministic toy cohort: bright square lesions; half the samples gain a new lesion at follow-up.

    Item ``i`` is ``{"images": (T, 1, H, W), "baseline": (1, H, W), "progression": (T-1, 1, H, W),
    "has_progression": bool, "index": int}``. A random horizontal flip drawn from torch's global RNG
    exercises the trainer's per-epoch reseeding. ``record`` collects the indices that were loaded.
    """

    def __init__(self, n: int = 16, size: int = 16, timepoints: int = 2, seed: int = 0, augment: bool = True):
        self.n, self.size, self.t, self.seed, self.augment = n, size, timepoints, seed, augment
        self.record: list[int] = []

    def __len__(self) -> int:
        return self.n

    def labels(self) -> list[int]:
        return [int(i % 2 == 0) for i in range(self.n)]

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        self.record.append(int(i))
        g = torch.Generator().manual_seed(self.seed * 10007 + i)
        s = self.size
        base = torch.zeros(1, s, s)
        r, c = torch.randint(2, s - 6, (2,), generator=g).tolist()
        base[0, r:r + 4, c:c + 4] = 1
        prog = torch.zeros(self.t - 1, 1, s, s)
        if i % 2 == 0:
            r2, c2 = torch.randint(2, s - 5, (2,), generator=g).tolist()
            prog[:, 0, r2:r2 + 3, c2:c2 + 3] = 1
            prog = prog * (1 - base)
        images = torch.randn(self.t, 1, s, s, generator=g) * 0.3
        images[:, 0] += base[0] * 2
        images[1:] += prog * 2
        if self.augment and torch.rand(()) < 0.5:
            images, base, prog = images.flip(-1), base.flip(-1), prog.flip(-1)
        return {"images": images, "baseline": base, "progression": prog,
                "has_progression": torch.tensor(bool(prog.any())), "index": torch.tensor(i)}


def test_tiny_model_shapes() -> None:
    net = TinyLongiNet(num_timepoints=3)
    out = net(torch.randn(2, 3, 1, 8, 8))
    assert out.baseline.shape == (2, 1, 8, 8)
    assert out.progression.shape == (2, 2, 1, 8, 8)
    net3d = TinyLongiNet(spatial_dims=3)
    out3d = net3d(torch.randn(1, 2, 1, 4, 8, 8))
    assert out3d.progression.shape == (1, 1, 1, 4, 8, 8)


def test_synthetic_data_is_deterministic_per_index() -> None:
    ds = SyntheticLongiData(n=4, augment=False)
    a, b = ds[1], ds[1]
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert ds[0]["has_progression"] and not ds[1]["has_progression"]
    assert ds[0]["progression"].shape == (1, 1, 16, 16)
    assert ds.record == [1, 1, 0, 1, 0]


# ----------------------------------------------------------------------------------------------------
# Script entry point used by the subprocess tests
# ----------------------------------------------------------------------------------------------------


def _main() -> None:
    from longiseg.engine import Trainer, TrainerConfig, seed_everything
    from longiseg.losses import ImbalanceAwareLoss

    p = argparse.ArgumentParser()
    p.add_argument("--out", required=True)
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--kill-after", type=int, default=0, help="SIGKILL itself after this epoch's checkpoint")
    p.add_argument("--resume", action="store_true")
    p.add_argument("--record", default="", help="folder for per-rank indices and final parameters")
    p.add_argument("--num-samples", type=int, default=16)
    p.add_argument("--batch-size", type=int, default=4)
    args = p.parse_args()

    torch.set_num_threads(1)
    seed_everything(0)
    model = TinyLongiNet()
    data = SyntheticLongiData(n=args.num_samples)
    cfg = TrainerConfig(max_epochs=args.epochs, batch_size=args.batch_size, lr=1e-2, min_lr=1e-4,
                        warmup_epochs=1, output_dir=args.out, progress_bar=False, tensorboard=False,
                        monitor="train_loss", monitor_mode="min", patience=None)
    per_epoch: list[list[int]] = []

    def record_epoch(trainer: Trainer, row: dict) -> None:
        per_epoch.append(list(data.record))
        data.record.clear()

    def kill(trainer: Trainer, row: dict) -> None:
        if args.kill_after and row["epoch"] == args.kill_after:
            os.kill(os.getpid(), signal.SIGKILL)

    writes: list[str] = []
    if args.record:  # count every file write of the trainer on this rank
        from longiseg.engine import trainer as trainer_module

        def counting(fn, what):
            def wrapper(*a, **kw):
                writes.append(what)
                return fn(*a, **kw)
            return wrapper

        trainer_module.save_checkpoint = counting(trainer_module.save_checkpoint, "checkpoint")
        trainer_module.atomic_write = counting(trainer_module.atomic_write, "csv")
        trainer_module._CsvLog.append = counting(trainer_module._CsvLog.append, "csv-row")
        TrainerConfig.save = counting(TrainerConfig.save, "config")

    trainer = Trainer(model, data, cfg, loss_fn=ImbalanceAwareLoss(), model_name=None, callbacks=[record_epoch, kill])
    trainer.fit(resume=args.resume)
    if args.record:
        rank = trainer.ctx.rank
        Path(args.record).mkdir(parents=True, exist_ok=True)
        torch.save({"params": {k: v.detach().clone() for k, v in model.state_dict().items()}},
                   Path(args.record) / f"rank{rank}.pt")
        info = {"indices": per_epoch, "writes": writes, "world_size": trainer.ctx.world_size,
                "backend": trainer.ctx.backend}
        (Path(args.record) / f"rank{rank}.json").write_text(json.dumps(info))
    from longiseg.engine import cleanup

    cleanup()


if __name__ == "__main__":
    _main()
