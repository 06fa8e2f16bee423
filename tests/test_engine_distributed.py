"""Distributed helpers: single-process fallbacks, env errors, and a real 2-process gloo DDP run."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from longiseg.engine.distributed import (
    DistributedContext,
    all_reduce_mean,
    barrier,
    broadcast_object,
    cleanup,
    get_rank,
    get_world_size,
    init_distributed,
    is_distributed,
    is_main_process,
)

ROOT = Path(__file__).resolve().parents[1]
TOYS = Path(__file__).with_name("test_engine_toys.py")
_ENV = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


@pytest.fixture
def clean_env(monkeypatch):
    for k in _ENV:
        monkeypatch.delenv(k, raising=False)
    return monkeypatch


def test_single_process_fallbacks(clean_env) -> None:
    ctx = init_distributed(device="cpu")
    assert ctx == DistributedContext(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"), backend=None)
    assert ctx.is_main and not ctx.is_distributed
    assert (get_rank(), get_world_size(), is_main_process(), is_distributed()) == (0, 1, True, False)
    barrier()
    cleanup()
    assert broadcast_object({"a": 1}) == {"a": 1}
    assert all_reduce_mean({"loss": torch.tensor(2.5), "n": 3}) == {"loss": 2.5, "n": 3.0}


def test_env_and_metric_errors(clean_env) -> None:
    clean_env.setenv("WORLD_SIZE", "two")
    with pytest.raises(ValueError, match="WORLD_SIZE must be an integer"):
        init_distributed(device="cpu")
    clean_env.setenv("WORLD_SIZE", "2")
    clean_env.setenv("RANK", "2")
    with pytest.raises(ValueError, match="RANK=2, WORLD_SIZE=2"):
        init_distributed(device="cpu")
    with pytest.raises(TypeError, match="'x' must be a scalar"):
        all_reduce_mean({"x": torch.ones(2)})
    with pytest.raises(TypeError, match="'x' must be a number"):
        all_reduce_mean({"x": "high"})


def test_ddp_two_gloo_processes(tmp_path) -> None:
    """torchrun with 2 CPU processes: disjoint data per rank, identical weights, rank-0-only writes."""
    out, rec = tmp_path / "run", tmp_path / "record"
    env = {k: v for k, v in os.environ.items() if k not in _ENV}
    env.update(PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           str(TOYS), "--out", str(out), "--record", str(rec), "--epochs", "2", "--num-samples", "16", "--batch-size", "2"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    info = [json.loads((rec / f"rank{r}.json").read_text(encoding="utf-8")) for r in (0, 1)]
    assert [i["world_size"] for i in info] == [2, 2] and info[0]["backend"] == "gloo"
    for epoch in range(2):
        seen0, seen1 = set(info[0]["indices"][epoch]), set(info[1]["indices"][epoch])
        assert len(seen0) == len(seen1) == 8
        assert not seen0 & seen1, f"epoch {epoch}: ranks overlap on {seen0 & seen1}"
    assert info[0]["indices"][0] != info[0]["indices"][1]  # reshuffled per epoch
    p0 = torch.load(rec / "rank0.pt", weights_only=True)["params"]
    p1 = torch.load(rec / "rank1.pt", weights_only=True)["params"]
    # exact: both ranks apply the same all-reduced gradient, and with two ranks a + b == b + a bit for bit
    assert all(torch.equal(p0[k], p1[k]) for k in p0)
    assert info[1]["writes"] == [] and "checkpoint" in info[0]["writes"] and "csv-row" in info[0]["writes"]
    assert sorted(p.name for p in out.iterdir()) == ["best.pt", "last.pt", "metrics.csv", "trainer_config.yaml"]
    ckpt = torch.load(out / "last.pt", weights_only=True)
    assert ckpt["epoch"] == 2 and ckpt["global_step"] == 2 * 4  # 16 samples / 2 ranks / batch 2
    assert all(torch.equal(ckpt["model"][k], p0[k]) for k in p0)


def test_under_torchrun_only_rank_0_shows_the_runs_log(tmp_path) -> None:
    # every rank printed every INFO line (and "finished: ..."), though the docs say rank 0 reports
    import subprocess
    import sys

    code = ("import logging, io, contextlib; from longiseg.cli import main; out = io.StringIO()\n"
            "with contextlib.redirect_stdout(out): main(['models', '--no-params'])\n"
            "print(logging.getLogger('longiseg').level)")  # (the root logger stays at WARNING on every rank)
    levels = {}
    for rank in ("0", "1"):
        env = {k: v for k, v in os.environ.items() if k not in _ENV}
        done = subprocess.run([sys.executable, "-c", code], env={**env, "RANK": rank}, capture_output=True,
                              text=True, timeout=120, cwd=tmp_path)
        assert done.returncode == 0, done.stderr
        levels[rank] = int(done.stdout.split()[-1])
    assert levels == {"0": logging.INFO, "1": logging.WARNING}
