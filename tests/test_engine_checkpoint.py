"""Checkpoints: full round trip, RNG states, atomicity, registry rebuild, clear errors."""

from __future__ import annotations

import logging
import os
import random
import re
import stat
from pathlib import Path

import numpy as np
import pytest
import torch
from test_engine_toys import TinyLongiNet

from longiseg.engine.checkpoint import (
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
from longiseg.engine.schedulers import build_warmup_cosine_scheduler
from longiseg.registry import build_model, register_model, unregister_model
from longiseg.ssm import ENV_VAR, Mamba


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
    import errno

    import longiseg.utils.io as io_module

    def disk_full(fd: int) -> None:  # the temporary file holds the bytes written so far, then the disk is full
        os.ftruncate(fd, 100)
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(io_module.os, "fsync", disk_full)
    with pytest.raises(OSError, match="No space left on device") as err:
        save_checkpoint(path, model=model, epoch=2)
    assert err.value.errno == errno.ENOSPC  # an OSError the command line reports in one line
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
        # the random initial weights it replaces drew from the caller's stream (a seeded script drew other numbers
        # after loading a model)
        torch.manual_seed(0)
        expected = torch.rand(3)
        torch.manual_seed(0)
        build_model_from_checkpoint(path)
        assert torch.equal(torch.rand(3), expected)
    finally:
        unregister_model("_engine_test_tiny")
    nameless = save_checkpoint(tmp_path / "n.pt", model=model)
    with pytest.raises(ValueError, match="no model_name"):
        build_model_from_checkpoint(nameless)


def test_a_model_registered_by_another_module_than_the_checkpoints_is_named(tmp_path, caplog) -> None:
    """A model of the checkpoint's name registered by another module (another package that reuses the name) was
    loaded without a word; built-in models moving between longiseg's own modules are not warned about."""
    register_model(lambda **kw: TinyLongiNet(**kw), name="_engine_test_tiny", dim="2.5D")
    try:
        path = save_checkpoint(tmp_path / "ck.pt", model=TinyLongiNet(width=4), model_name="_engine_test_tiny",
                               model_kwargs={"width": 4})
        payload = torch.load(path, weights_only=True)
        for recorded, warned in (("their_package.models", True), (payload["model_module"], False), (None, False)):
            torch.save({**payload, "model_module": recorded}, path)
            caplog.clear()
            with caplog.at_level(logging.WARNING, logger="longiseg.engine.checkpoint"):
                build_model_from_checkpoint(path)
            said = [r.getMessage() for r in caplog.records if "is this the same model" in r.getMessage()]
            assert bool(said) is warned, (recorded, said)
            assert not warned or "by the module 'their_package.models' when it was saved" in said[0]
    finally:
        unregister_model("_engine_test_tiny")

def test_load_errors(tmp_path) -> None:
    with pytest.raises(FileNotFoundError, match="checkpoint not found"):
        load_checkpoint(tmp_path / "missing.pt")
    (tmp_path / "run.pt").mkdir()  # said "not found" of a path that exists
    with pytest.raises(IsADirectoryError, match="run.pt is a folder, not a checkpoint file"):
        load_checkpoint(tmp_path / "run.pt")
    (tmp_path / "notes.pt").write_text("epoch 3: best so far\n")
    with pytest.raises(ValueError, match="is not a readable checkpoint"):
        load_checkpoint(tmp_path / "notes.pt")

    class Payload:  # a pickle that would run os.getcwd on loading
        def __reduce__(self):
            return (os.getcwd, ())

    torch.save({"model": Payload()}, tmp_path / "evil.pt")
    with pytest.raises(ValueError, match=r"holds objects \(\S*getcwd\) that torch.load\(weights_only=True\) refuses"):
        load_checkpoint(tmp_path / "evil.pt")
    torch.save({"weights": torch.zeros(1)}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="not a longiseg checkpoint"):
        load_checkpoint(tmp_path / "other.pt")
    with pytest.raises(ValueError, match="epoch must be >= 0, got -1"):
        save_checkpoint(tmp_path / "x.pt", model=TinyLongiNet(), epoch=-1)


@pytest.mark.parametrize(("kwargs", "error", "match"), [
    # None / "abc" failed with a bare "'<' not supported", inf with an OverflowError; 1.5 was saved as 1
    ({"epoch": None}, TypeError, "epoch must be an int"),
    ({"epoch": 1.5}, TypeError, "epoch must be an int"),
    ({"global_step": float("inf")}, TypeError, "global_step must be an int"),
    ({"early_stopping_counter": -2}, ValueError, "early_stopping_counter must be >= 0"),
    ({"best_metric": "abc"}, TypeError, "best_metric must be a number or None"),
    ({"model_kwargs": 5}, TypeError, "model_kwargs must be a mapping or None"),
])
def test_save_checkpoint_names_a_bad_record(kwargs: dict, error: type, match: str, tmp_path: Path) -> None:
    with pytest.raises(error, match=match):
        save_checkpoint(tmp_path / "x.pt", model=TinyLongiNet(), **kwargs)
    assert not (tmp_path / "x.pt").exists()


@pytest.mark.parametrize(("map_location", "error", "match"), [
    ("gpu0", ValueError, "map_location 'gpu0' is not a device"),  # reported as a corrupt checkpoint
    (1, TypeError, "map_location must be a device"),
])
def test_a_bad_map_location_is_named_not_taken_for_a_corrupt_file(map_location: object, error: type, match: str,
                                                                    tmp_path: Path) -> None:
    save_checkpoint(tmp_path / "x.pt", model=TinyLongiNet())
    with pytest.raises(error, match=match):
        load_checkpoint(tmp_path / "x.pt", map_location=map_location)
    assert load_checkpoint(tmp_path / "x.pt", map_location=torch.device("cpu"))["epoch"] == 0
    assert load_checkpoint(tmp_path / "x.pt", map_location=lambda storage, loc: storage)["epoch"] == 0


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


TINY_SEGMAST = {"widths": [8, 16, 16, 32], "depths": [1, 1, 1, 1], "decoder_dim": 16, "d_state": 4}


def test_the_recorded_scan_backend_is_left_to_the_machine_that_loads(tmp_path, caplog, monkeypatch) -> None:
    """A model trained with mamba-ssm's kernel records mamba_backend='cuda'; rebuilt, it runs anywhere."""
    trained = build_model("segmast", **TINY_SEGMAST, mamba_backend="cuda")
    path = save_checkpoint(tmp_path / "gpu.pt", model=trained)
    assert torch.load(path, weights_only=True)["model_kwargs"]["mamba_backend"] == "cuda"
    monkeypatch.setenv(ENV_VAR, "chunked")
    with caplog.at_level(logging.INFO, logger="longiseg.engine.checkpoint"):
        for model in (load_model(path), build_model_from_checkpoint(path)):
            assert all(m.backend is None for m in model.modules() if isinstance(m, Mamba))  # run-time selection
            assert "mamba_backend" not in model.spec.kwargs
            with torch.no_grad():
                model(torch.zeros(1, 2, 2, 32, 32))  # the environment variable's backend, on the CPU
            for (key, a), b in zip(trained.state_dict().items(), model.state_dict().values()):
                assert torch.equal(a, b), key
    notes = [r.getMessage() for r in caplog.records if "selective-scan backend" in r.getMessage()]
    assert len(notes) == 2 and all("'cuda'" in n and str(path) in n and ENV_VAR in n for n in notes)
    chosen = build_model_from_checkpoint(path, mamba_backend="reference")  # an explicit argument still wins
    assert all(m.backend == "reference" for m in chosen.modules() if isinstance(m, Mamba))
    # ... and keeps the trained spec (modalities, inference settings): a backend computes the same function;
    # the spec was dropped, and longiseg predict then said the model was not trained with longiseg train
    trained.spec = trained.spec.replace(modalities=("flair", "t2"), inference={"patch_size": 32})
    path = save_checkpoint(tmp_path / "spec.pt", model=trained)
    chosen = build_model_from_checkpoint(path, mamba_backend="reference")
    assert chosen.spec.modalities == ("flair", "t2") and chosen.spec.inference == {"patch_size": 32}
    assert chosen.spec.kwargs["mamba_backend"] == "reference"
    assert build_model_from_checkpoint(path, decoder_dropout=0.1).spec.inference == {}  # other arguments: its own spec


def test_plain_state_dicts_are_named_and_wrapped_keys_load(tmp_path) -> None:
    model = TinyLongiNet()
    torch.save(model.state_dict(), tmp_path / "sd.pt")
    for reader in (load_model, build_model_from_checkpoint, load_checkpoint):
        with pytest.raises(ValueError, match=r"sd.pt is a plain state_dict .*build_model\(name, \*\*kwargs\).*"
                                             r"load_model_weights"):
            reader(tmp_path / "sd.pt")
    compiled = {f"_orig_mod.{k}": v for k, v in model.state_dict().items()}
    for weights in (torch.nn.DataParallel(model).state_dict(), compiled,
                    {f"module.{k}": v for k, v in compiled.items()}):
        fresh = TinyLongiNet()
        load_model_weights(fresh, weights)
        for (key, a), b in zip(model.state_dict().items(), fresh.state_dict().values()):
            assert torch.equal(a, b), key
    other = {**torch.nn.DataParallel(model).state_dict(), "module.extra.weight": torch.zeros(1)}
    with pytest.raises(ValueError, match="unexpected key"):  # not all of them the model's own: no guessing
        load_model_weights(TinyLongiNet(), other)
    payload = torch.load(save_checkpoint(tmp_path / "ck.pt", model=model), weights_only=True)
    payload["model"] = torch.nn.DataParallel(model).state_dict()  # a checkpoint saved from the wrapper
    fresh = TinyLongiNet()
    load_checkpoint(tmp_path / "ck.pt", model=fresh, checkpoint=payload)
    assert torch.equal(fresh.conv1.weight, model.conv1.weight)


@pytest.mark.parametrize(("edit", "match"), [
    ({"format_version": "1"}, r"'format_version' must be an int, got '1' \(str\)"),
    ({"format_version": True}, r"'format_version' must be an int, got True \(bool\)"),
    ({"model": None}, r"'model' must be a state_dict"),
    ({"model_kwargs": None}, r"'model_kwargs' must be a mapping"),
    ({"spec": ["x"]}, r"'spec' must be a model spec \(a mapping\) or None, got \['x'\] \(list\)"),
    ({"model_name": 3}, r"'model_name' must be a registry name or None"),
    ({"model_name": "segformer"}, r"holds model 'segformer' but its spec names 'segmast'"),
])
def test_hand_edited_checkpoints_are_named(tmp_path, edit, match) -> None:
    path = save_checkpoint(tmp_path / "ck.pt", model=build_model("segmast", **TINY_SEGMAST))
    payload = torch.load(path, weights_only=True)
    torch.save({**payload, **edit}, tmp_path / "edited.pt")
    for reader in (load_model, load_checkpoint):
        with pytest.raises(ValueError, match=f"edited.pt: .*{match}"):
            reader(tmp_path / "edited.pt")


def test_update_spec_keeps_the_file_mode_and_refuses_write_protected_files(tmp_path) -> None:
    model = build_model("segmast", **TINY_SEGMAST)
    path = save_checkpoint(tmp_path / "ck.pt", model=model)
    tuned = model.spec.replace(inference={"threshold": 0.4})
    old_umask = os.umask(0o022)  # a new file would be 0644
    try:
        path.chmod(0o600)  # a private checkpoint stays private
        update_spec(path, tuned)
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        assert load_model(path).spec == tuned
        path.chmod(0o444)
        before = path.read_bytes()
        with pytest.raises(ValueError, match=r"ck.pt is write-protected .*copy .*chmod u\+w"):
            update_spec(path, model.spec)
        assert path.read_bytes() == before and stat.S_IMODE(path.stat().st_mode) == 0o444
    finally:
        os.umask(old_umask)


@pytest.mark.parametrize(("edit", "match"), [
    ({"dim": "3D", "input_layout": None}, r"the spec gives dim '3D', but the model has '2\.5D'"),
    ({"in_channels": 5}, r"the spec gives in_channels 5, but the model has 2"),
    ({"kwargs": {**TINY_SEGMAST, "in_channels": 2, "widths": [16, 16, 16, 32]}}, r"do not fit"),
    ({"format_version": None}, r"its model spec cannot be read: the model spec's format_version must be an int "
                               r">= 1, got None"),
    ({"format_version": 1.9}, r"format_version must be an int >= 1, got 1\.9"),
    ({"version": 5}, r"version must be the str of a longiseg version, got 5"),
    ({"kwargs": "x"}, r"cannot be read: ModelSpec\.kwargs must be a mapping"),
    ({"foo": 1}, r"cannot be read: unknown model spec field\(s\) \['foo'\]"),
    # [None, 3] became the channel names ('None', '3'); 5 raised "'int' object is not iterable"
    ({"modalities": [None, 3]}, r"cannot be read: ModelSpec\.modalities must be a sequence of channel names"),
    ({"modalities": 5}, r"cannot be read: ModelSpec\.modalities must be a sequence of channel names .*got 5"),
])
def test_a_spec_that_does_not_describe_the_weights_is_refused_naming_the_file(tmp_path, edit, match) -> None:
    """load_model attached the stored spec to the model its arguments rebuilt without comparing them: an edited
    spec described a 3D model with 5 channels on a 2.5D network of 2, and downstream tools trust the spec."""
    model = build_model("segmast", **TINY_SEGMAST, in_channels=2, num_timepoints=2)
    path = save_checkpoint(tmp_path / "ck.pt", model=model)
    payload = torch.load(path, weights_only=True)
    torch.save({**payload, "spec": {**payload["spec"], **edit}}, tmp_path / "edited.pt")
    with pytest.raises(ValueError, match=f"edited.pt.*{match}"):
        load_model(tmp_path / "edited.pt")
    assert load_model(path).spec == model.spec  # the file as written


@pytest.mark.parametrize("field", ["kwargs", "dim"])
def test_a_spec_without_the_fields_that_rebuild_the_model_is_refused(tmp_path, field) -> None:
    """A spec without kwargs rebuilt the model with the factory's defaults (e.g. another activation: same weight
    shapes, other outputs) without a word, though model_kwargs recorded the arguments."""
    model = build_model("segmast", **TINY_SEGMAST, in_channels=2, num_timepoints=2)
    payload = torch.load(save_checkpoint(tmp_path / "ck.pt", model=model), weights_only=True)
    del payload["spec"][field]
    torch.save(payload, tmp_path / "edited.pt")
    with pytest.raises(ValueError, match=rf"edited.pt: its model spec lacks \['{field}'\], which every spec longiseg "
                                         r"writes holds \(was the file edited\?\)"):
        load_model(tmp_path / "edited.pt")


def test_numpy_numbers_in_training_states_load_with_weights_only(tmp_path) -> None:
    """AdamW(lr=np.float64), StepLR(gamma=np.float64) or a NumPy RNG state were pickled as NumPy objects, which
    torch.load(weights_only=True) refuses: load_model and load_checkpoint could not read the file."""
    model = build_model("segmast", **TINY_SEGMAST, in_channels=2, num_timepoints=2)
    opt = torch.optim.AdamW(model.parameters(), lr=np.logspace(-4, -2, 3)[1])
    sched = torch.optim.lr_scheduler.StepLR(opt, 2, gamma=np.float64(0.5))
    np_state = np.random.RandomState(3).get_state()
    path = save_checkpoint(tmp_path / "ck.pt", model=model, optimizer=opt, scheduler=sched,
                           rng_state={"numpy": np_state})
    ckpt = load_checkpoint(path, model=build_model("segmast", **TINY_SEGMAST, in_channels=2, num_timepoints=2))
    assert type(ckpt["optimizer"]["param_groups"][0]["lr"]) is float
    assert ckpt["optimizer"]["param_groups"][0]["lr"] == opt.param_groups[0]["lr"]
    assert ckpt["scheduler"]["gamma"] == 0.5 and np.array_equal(ckpt["rng"]["numpy"][1], np_state[1])
    assert load_model(path).spec == model.spec
    with pytest.raises(TypeError, match=r"save_checkpoint rng_state\['x'\] must be plain data"):
        save_checkpoint(tmp_path / "bad.pt", model=model, rng_state={"x": object()})
    assert not (tmp_path / "bad.pt").exists()


def test_checkpoints_rebuild_the_model_their_spec_records(tmp_path, caplog) -> None:
    """Until 0.3.20 a Trainer given model_kwargs recorded them as given, e.g. part of the arguments the model was
    built with: such a file rebuilds the model of its spec (which it loaded before), and says so."""
    torch.manual_seed(0)
    model = build_model("longi_unet_dw_2d", features=(4, 8, 16), in_channels=2, num_timepoints=2).eval()
    payload = torch.load(save_checkpoint(tmp_path / "a.pt", model=model), weights_only=True)
    torch.save({**payload, "model_kwargs": {"in_channels": 2}}, tmp_path / "old.pt")  # as 0.3.19 could write it
    with caplog.at_level("INFO", logger="longiseg.engine.checkpoint"):
        loaded = load_model(tmp_path / "old.pt")
    assert "records model_kwargs {'in_channels': 2} and the spec's arguments" in caplog.text
    assert loaded.spec == model.spec
    x = torch.randn(1, 2, 2, 32, 32)
    assert torch.equal(loaded(x).progression, model(x).progression)


def test_a_spec_changed_by_hand_or_other_arguments_are_refused_when_saving(tmp_path) -> None:
    from longiseg.engine.checkpoint import save_checkpoint as save
    from longiseg.engine.checkpoint import update_spec

    torch.manual_seed(0)
    model = build_model("longi_unet_dw_2d", features=(4, 8, 16), in_channels=3)
    # a contradicting argument, or one the model was not built with: the file would rebuild another model
    for given, named in (({**model.spec.kwargs, "in_channels": 2}, "['in_channels']"), ({"prior": "baseline"},
                                                                                      "['prior']")):
        with pytest.raises(ValueError, match=rf"save_checkpoint: model_kwargs .* contradict the arguments the model "
                                             rf"was built with .* in {re.escape(named)}"):
            save(tmp_path / "a.pt", model=model, model_kwargs=given)
    assert not (tmp_path / "a.pt").exists()
    # those that agree (all or some of them) are fine: the spec's are recorded
    save(tmp_path / "b.pt", model=model, model_kwargs={"in_channels": 3})
    assert torch.load(tmp_path / "b.pt", weights_only=True)["model_kwargs"] == model.spec.kwargs
    # a spec changed by hand is refused before anything is written, not when the file is loaded
    for change, named in (({"dim": "3D"}, "dim '3D'"), ({"in_channels": 2}, "in_channels 2")):
        changed = build_model("longi_unet_dw_2d", features=(4, 8, 16), in_channels=3)
        changed.spec = changed.spec.replace(**change)
        with pytest.raises(ValueError, match=rf"save_checkpoint: model\.spec: the spec gives {named}, but the model "
                                             r"has"):
            save(tmp_path / "c.pt", model=changed)
        assert not (tmp_path / "c.pt").exists()
    fixed = build_model("dynunet_2d", in_channels=1, num_timepoints=3)  # built for one number of timepoints
    fixed.spec = fixed.spec.replace(num_timepoints=2)
    with pytest.raises(ValueError, match=r"the spec gives num_timepoints 2, but the model has 3"):
        save(tmp_path / "d.pt", model=fixed)
    # update_spec (longiseg tune) changes the training's settings only
    before = (tmp_path / "b.pt").read_bytes()
    for change in ({"in_channels": 2}, {"kwargs": {"in_channels": 3, "features": [4, 8, 32]}}):
        with pytest.raises(ValueError, match=r"update_spec: checkpoint .*b\.pt: the spec gives (in_channels|kwargs)"):
            update_spec(tmp_path / "b.pt", model.spec.replace(**change))
    assert (tmp_path / "b.pt").read_bytes() == before
    update_spec(tmp_path / "b.pt", model.spec.replace(modalities=("flair", "t1", "t2"), crop_size=32))
    assert load_model(tmp_path / "b.pt").spec.modalities == ("flair", "t1", "t2")


def test_arguments_that_json_cannot_hold_still_compare(tmp_path) -> None:
    """Comparing arguments went through JSON, which refuses tuple keys of a user model's argument."""
    def tmp_tuple_keys(table: dict | None = None, in_channels: int = 1) -> torch.nn.Module:
        return TinyLongiNet()

    register_model(tmp_tuple_keys)

    try:
        model = build_model("tmp_tuple_keys", table={(0, 1): 2.0})
        path = save_checkpoint(tmp_path / "t.pt", model=model, model_kwargs={"table": {(0, 1): 2.0}})
        assert load_model(path).spec == model.spec
    finally:
        unregister_model("tmp_tuple_keys")


def test_a_model_not_built_by_build_model_is_named_as_such(tmp_path) -> None:
    path = save_checkpoint(tmp_path / "p.pt", model=torch.nn.Linear(2, 2))
    with pytest.raises(ValueError, match=r"p\.pt holds a model that was not built with longiseg\.build_model .*"
                                         r"load_checkpoint\(path, model=model\)"):
        load_model(path)
