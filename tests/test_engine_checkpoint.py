"""Checkpoints: full round trip, RNG states, atomicity, registry rebuild, clear errors."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch
from test_engine_toys import TinyLongiNet

from longiseg.engine.checkpoint import (
    build_model_from_checkpoint,
    capture_rng_state,
    load_checkpoint,
    load_model,
    restore_rng_state,
    save_checkpoint,
    unwrap_model,
)
from longiseg.engine.schedulers import build_warmup_cosine_scheduler
from longiseg.registry import build_model, register_model, unregister_model


class _StatefulSampler:
    def __init__(self) -> None:
        self.epoch = 0

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "seed": 3}

    def load_state_dict(self, state: dict) -> None:
        self.epoch = state["epoch"]


def _trained_objects():
    model = TinyLongiNet()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    sched = build_warmup_cosine_scheduler(opt, warmup_epochs=1, max_epochs=3, steps_per_epoch=2)
    out = model(torch.randn(2, 2, 1, 8, 8))
    (out.baseline.mean() + out.progression.mean()).backward()
    opt.step()
    sched.step()
    return model, opt, sched


def test_round_trip_restores_everything(tmp_path) -> None:
    model, opt, sched = _trained_objects()
    sampler = _StatefulSampler()
    sampler.epoch = 5
    path = save_checkpoint(tmp_path / "ck.pt", model=model, optimizer=opt, scheduler=sched, sampler=sampler,
                           epoch=2, global_step=7, best_metric=0.5, early_stopping_counter=1,
                           model_name="tiny", model_kwargs={"width": 8}, history=[{"epoch": 1}],
                           extra={"note": "x"})
    model2 = TinyLongiNet()
    opt2 = torch.optim.AdamW(model2.parameters(), lr=1e-3)
    sched2 = build_warmup_cosine_scheduler(opt2, warmup_epochs=1, max_epochs=3, steps_per_epoch=2)
    sampler2 = _StatefulSampler()
    ckpt = load_checkpoint(path, model=model2, optimizer=opt2, scheduler=sched2, sampler=sampler2)
    for a, b in zip(model.state_dict().values(), model2.state_dict().values()):
        assert torch.equal(a, b)
    assert torch.equal(opt.state_dict()["state"][0]["exp_avg"], opt2.state_dict()["state"][0]["exp_avg"])
    assert sched2.last_epoch == sched.last_epoch == 1
    assert sampler2.epoch == 5
    assert (ckpt["epoch"], ckpt["global_step"], ckpt["best_metric"], ckpt["early_stopping_counter"]) == (2, 7, 0.5, 1)
    assert ckpt["model_name"] == "tiny" and ckpt["model_kwargs"] == {"width": 8}
    assert ckpt["history"] == [{"epoch": 1}] and ckpt["extra"] == {"note": "x"}


def test_a_checkpoint_read_once_loads_without_reading_the_file_again(tmp_path) -> None:
    model, opt, sched = _trained_objects()
    path = save_checkpoint(tmp_path / "ck.pt", model=model, optimizer=opt, scheduler=sched, epoch=1, global_step=2)
    ckpt = load_checkpoint(path)  # read only, as longiseg train does for its checks
    path.unlink()  # the states come from the dict: the file is not needed any more
    model2 = TinyLongiNet()
    opt2 = torch.optim.AdamW(model2.parameters(), lr=1e-3)
    again = load_checkpoint(path, model=model2, optimizer=opt2, checkpoint=ckpt)
    assert again is ckpt
    for a, b in zip(model.state_dict().values(), model2.state_dict().values()):
        assert torch.equal(a, b)
    assert torch.equal(opt.state_dict()["state"][0]["exp_avg"], opt2.state_dict()["state"][0]["exp_avg"])
    with pytest.raises(ValueError, match="not a longiseg checkpoint"):
        load_checkpoint(path, model=model2, checkpoint={"model": {}})
    with pytest.raises(TypeError, match="checkpoint must be the dict"):
        load_checkpoint(path, model=model2, checkpoint=[ckpt])


def test_ddp_prefix_is_stripped(tmp_path) -> None:
    model = TinyLongiNet()
    wrapped = torch.nn.DataParallel(model)
    assert unwrap_model(wrapped) is model
    path = save_checkpoint(tmp_path / "ck.pt", model=wrapped)
    assert not any(k.startswith("module.") for k in torch.load(path, weights_only=True)["model"])
    with pytest.raises(TypeError, match="nn.Module"):
        unwrap_model("model")  # type: ignore[arg-type]


def test_rng_state_round_trip() -> None:
    state = capture_rng_state()
    expected = (random.random(), np.random.rand(), torch.rand(3))
    random.random(), np.random.rand(), torch.rand(5)  # advance
    restore_rng_state(state)
    got = (random.random(), np.random.rand(), torch.rand(3))
    assert got[0] == expected[0] and got[1] == expected[1] and torch.equal(got[2], expected[2])
    with pytest.raises(ValueError, match="lacks"):
        restore_rng_state({"python": state["python"]})


def test_checkpoint_loads_with_weights_only_and_restores_rng(tmp_path) -> None:
    model, opt, sched = _trained_objects()
    path = save_checkpoint(tmp_path / "ck.pt", model=model, optimizer=opt, scheduler=sched)
    expected = torch.rand(4)
    torch.rand(10)
    load_checkpoint(path, restore_rng=True)  # weights_only=True by default
    assert torch.equal(torch.rand(4), expected)


def test_failed_save_leaves_old_checkpoint_intact(tmp_path, monkeypatch) -> None:
    model, opt, sched = _trained_objects()
    path = save_checkpoint(tmp_path / "last.pt", model=model, epoch=1)
    before = path.read_bytes()
    real_save = torch.save

    def crashing_save(obj, f, *args, **kwargs):  # writes half a file, then dies
        real_save(obj, f, *args, **kwargs)
        with open(f, "r+b") as fh:
            fh.truncate(100)
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", crashing_save)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(path, model=model, epoch=2)
    monkeypatch.undo()
    assert path.read_bytes() == before
    assert load_checkpoint(path)["epoch"] == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pt"]  # no temporary file left


def test_build_model_from_checkpoint(tmp_path) -> None:
    register_model(lambda **kw: TinyLongiNet(**kw), name="_engine_test_tiny", dim="2.5D")
    try:
        model = TinyLongiNet(width=4)
        path = save_checkpoint(tmp_path / "ck.pt", model=model, model_name="_engine_test_tiny",
                               model_kwargs={"width": 4})
        rebuilt = build_model_from_checkpoint(path)
        assert not rebuilt.training
        assert torch.equal(rebuilt.conv1.weight, model.conv1.weight)
    finally:
        unregister_model("_engine_test_tiny")
    nameless = save_checkpoint(tmp_path / "n.pt", model=model)
    with pytest.raises(ValueError, match="no model_name"):
        build_model_from_checkpoint(nameless)


def test_load_errors(tmp_path) -> None:
    with pytest.raises(FileNotFoundError, match="checkpoint not found"):
        load_checkpoint(tmp_path / "missing.pt")
    torch.save({"weights": torch.zeros(1)}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="not a longiseg checkpoint"):
        load_checkpoint(tmp_path / "other.pt")
    with pytest.raises(ValueError, match="epoch and global_step"):
        save_checkpoint(tmp_path / "x.pt", model=TinyLongiNet(), epoch=-1)


@pytest.mark.parametrize("name, kwargs", [
    ("longi_unet_dw_2d", {"features": np.array([4, 8, 8]), "in_channels": np.int64(2)}),
    ("segmast", {"in_channels": np.int64(1), "widths": np.array([8, 8, 8, 8]), "depths": (np.int64(1),) * 4,
                 "decoder_dim": np.int64(8), "mlp_ratio": np.float64(2.0), "bidirectional": np.bool_(True)}),
    ("segformer", {"in_channels": np.int64(2), "widths": np.array([8, 8, 8, 8]), "depths": [1, 1, 1, 1],
                   "num_heads": [1, 1, 1, 1], "decoder_dim": 8, "num_timepoints": np.int64(2)}),
])
def test_models_built_with_numpy_arguments_save_and_load(tmp_path, name, kwargs) -> None:
    """NumPy values are stored as plain Python data: load_model (weights_only=True) reads the file back."""
    model = build_model(name, **kwargs)
    for i, model_kwargs in enumerate((None, kwargs)):  # from the spec, or the caller's NumPy values
        path = save_checkpoint(tmp_path / f"m{i}.pt", model=model, model_kwargs=model_kwargs)
        loaded = load_model(path)
        assert loaded.spec == model.spec
        assert torch.load(path, weights_only=True)["model_kwargs"] == model.spec.kwargs
        for (key, a), b in zip(model.state_dict().items(), loaded.state_dict().values()):
            assert torch.equal(a, b), key


def test_refused_objects_message_names_a_reader_that_takes_weights_only(tmp_path) -> None:
    model = TinyLongiNet()
    save_checkpoint(tmp_path / "ok.pt", model=model)
    payload = torch.load(tmp_path / "ok.pt", weights_only=True)
    payload["extra"] = {"seed": np.int64(3)}  # written by hand, not by save_checkpoint
    torch.save(payload, tmp_path / "numpy.pt")
    with pytest.raises(ValueError, match=r"refuses.*load_checkpoint\(path, weights_only=False\)") as err:
        load_model(tmp_path / "numpy.pt")
    assert "load it with weights_only=False" not in str(err.value)
    assert load_checkpoint(tmp_path / "numpy.pt", weights_only=False)["extra"]["seed"] == 3
