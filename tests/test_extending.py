"""Extending longiseg with one's own model: registry edge cases, the model contract, checkpoints of registered
models loaded where their module is not imported or their factory changed, and spec round trips."""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn

from longiseg import ModelSpec, build_model, list_models, load_model, model_info, register_model
from longiseg.engine.checkpoint import load_checkpoint, save_checkpoint
from longiseg.registry import is_model, unregister_model


class _Net(nn.Module):
    """A tiny network recording its arguments."""

    def __init__(self, in_channels: int = 1, num_timepoints: int = 2, width: int = 2, **extra) -> None:
        super().__init__()
        self.in_channels, self.num_timepoints, self.extra = in_channels, num_timepoints, extra
        self.conv = nn.Conv2d(in_channels * num_timepoints, width, 1)


@pytest.fixture
def registered():
    """``registered(factory, name=...)`` registers a model for the test and unregisters it afterwards."""
    names: list[str] = []

    def add(factory, **kwargs):
        register_model(factory, **kwargs)
        names.append(kwargs.get("name", getattr(factory, "__name__", None)))
        return factory

    yield add
    for name in names:
        if is_model(name):
            unregister_model(name)


def test_load_model_names_the_module_to_import_when_the_model_is_not_registered(registered, tmp_path: Path):
    def zz_ext_net(in_channels=1, num_timepoints=2, width=2):
        return _Net(in_channels, num_timepoints, width)

    registered(zz_ext_net)
    save_checkpoint(tmp_path / "a.pt", model=build_model("zz_ext_net", width=3))
    assert load_checkpoint(tmp_path / "a.pt")["model_module"] == __name__
    assert load_model(tmp_path / "a.pt").conv.out_channels == 3
    unregister_model("zz_ext_net")  # as in a fresh process that did not import the module
    with pytest.raises(ValueError, match=rf"holds the model 'zz_ext_net', which is not registered in this process: "
                                         rf"it was registered by the module '{__name__}': `import {__name__}` first"):
        load_model(tmp_path / "a.pt")
    zz_ext_net.__module__ = "__main__"  # registered by a script: nothing to import
    registered(zz_ext_net)
    save_checkpoint(tmp_path / "b.pt", model=build_model("zz_ext_net"))
    unregister_model("zz_ext_net")
    with pytest.raises(ValueError, match=r"registered in a script run as __main__: move the model into a module"):
        load_model(tmp_path / "b.pt")


def test_only_the_arguments_a_registration_names_as_run_time_choices_are_left_out_of_a_rebuild(
        registered, tmp_path: Path, caplog: pytest.LogCaptureFixture):
    """Checkpoints dropped every model's argument named 'mamba_backend' (SegMaST's name for its scan backend): a
    plugin model whose own argument has that name came back without it, silently. The registration says which
    arguments are run-time choices (runtime_kwargs)."""
    def zz_variant_net(in_channels=1, num_timepoints=2, mamba_backend=None, kernel=None):
        return _Net(in_channels, num_timepoints, mamba_backend=mamba_backend, kernel=kernel)

    registered(zz_variant_net, runtime_kwargs=("kernel",))
    save_checkpoint(tmp_path / "a.pt", model=build_model("zz_variant_net", mamba_backend="variant-b", kernel="fast"))
    with caplog.at_level("INFO", logger="longiseg"):
        model = load_model(tmp_path / "a.pt")
    assert model.extra == {"mamba_backend": "variant-b", "kernel": None}
    assert model.spec.kwargs == {"mamba_backend": "variant-b"}
    assert "records kernel='fast' of its training, a run-time choice" in caplog.text
    assert model_info("zz_variant_net").runtime_kwargs == ("kernel",)
    assert model_info("segmast").runtime_kwargs == ("mamba_backend",)
    with pytest.raises(TypeError, match="runtime_kwargs must be argument names"):
        register_model(zz_variant_net, name="zz_other", runtime_kwargs=(1,))
    with pytest.raises(TypeError, match=r"runtime_kwargs must be argument names \(a sequence of str\) or None"):
        register_model(zz_variant_net, name="zz_other", runtime_kwargs=3)


def test_a_segmast_variant_registered_by_a_user_runs_on_the_machine_that_loads_it(registered, tmp_path: Path):
    """A registration that names no run-time arguments takes the default (the scan backend): a functools.partial of
    segmast trained with the cuda backend must load on a CPU with this machine's backend."""
    import functools

    from longiseg.networks.nets.segmast import segmast

    registered(functools.partial(segmast, widths=[8, 16, 16, 32], depths=[1, 1, 1, 1], decoder_dim=16, d_state=4),
               name="zz_my_segmast")
    model = build_model("zz_my_segmast", mamba_backend="reference")
    save_checkpoint(tmp_path / "a.pt", model=model)
    loaded = load_model(tmp_path / "a.pt")
    assert "mamba_backend" not in loaded.spec.kwargs
    assert loaded(torch.randn(1, 2, 2, 32, 32)).baseline.shape == (1, 1, 32, 32)


def test_checkpoint_of_a_factory_whose_signature_changed(registered, tmp_path: Path):
    def zz_sig_net(in_channels=1, num_timepoints=2, width=2):
        return _Net(in_channels, num_timepoints, width)

    def with_required(in_channels=1, num_timepoints=2, width=2, *, depth):
        return _Net(in_channels, num_timepoints, width)

    def without_width(in_channels=1, num_timepoints=2):
        return _Net(in_channels, num_timepoints)

    registered(zz_sig_net)
    save_checkpoint(tmp_path / "a.pt", model=build_model("zz_sig_net", width=2))
    for changed, match in ((with_required, r"missing a required argument: 'depth'"),
                           (without_width, r"unexpected keyword argument 'width'")):
        unregister_model("zz_sig_net")
        registered(changed, name="zz_sig_net")
        with pytest.raises(ValueError, match=r"model 'zz_sig_net' cannot be rebuilt with its recorded arguments "
                                             r"\{'width': 2\}: .*" + match + r".*factory's arguments change"):
            load_model(tmp_path / "a.pt")


def test_build_model_checks_the_factory_arguments_and_result(registered):
    def zz_args(in_channels=1, num_timepoints=2, name="x"):
        return _Net(in_channels, num_timepoints, extra_name=name)

    registered(zz_args)
    with pytest.raises(TypeError, match=r"build_model\('zz_args'\): got an unexpected keyword argument 'widht' "
                                        r"\(the factory .*zz_args takes \['in_channels', 'num_timepoints', 'name'\]"):
        build_model("zz_args", widht=3)
    assert build_model("zz_args", name="y").extra == {"extra_name": "y"}  # a factory may take a `name` argument
    registered(lambda **kw: "not a module", name="zz_str")
    with pytest.raises(TypeError, match=r"factory .* of model 'zz_str' returned str, not an nn.Module"):
        build_model("zz_str")

    def zz_boom(**kwargs):
        raise RuntimeError("boom")

    registered(zz_boom)
    with pytest.raises(RuntimeError, match="boom") as info:
        build_model("zz_boom", width=2)
    if sys.version_info >= (3, 11):
        assert "of model 'zz_boom', arguments {'width': 2}" in "".join(info.value.__notes__)


def test_registration_refuses_odd_names_and_says_how_to_replace(registered):
    def zz_fine(**kwargs):
        return nn.Identity()

    for bad in ("with space", "a*b", "seg?", "[ab]", "x/y", " lead", "-x", ".hidden"):
        with pytest.raises(ValueError, match=r"must start with a letter, digit or '_' and hold only letters, digits, "
                                             r"'_', '.' and '-'"):
            register_model(zz_fine, name=bad)
    with pytest.raises(ValueError, match=r"model name '<lambda>' must start .* pass name="):
        register_model(lambda **kw: nn.Identity())
    with pytest.raises(TypeError, match="register_model: name must be a str, got int"):
        register_model(zz_fine, name=3)
    with pytest.raises(TypeError, match="description must be a str"):
        register_model(zz_fine, description=3)
    registered(zz_fine, name="zz_Fine-1.0", tags="cnn")
    assert model_info("zz_Fine-1.0").tags == ("cnn",) and list_models("zz_Fine-1.0") == ["zz_Fine-1.0"]
    with pytest.raises(ValueError, match=rf"already registered \(by {__name__}\..*zz_fine\).*"
                                         r"unregister_model\('zz_Fine-1.0'\) first to replace it"):
        register_model(zz_fine, name="zz_Fine-1.0")


def test_list_models_and_unknown_names_messages():
    with pytest.raises(TypeError, match="list_models: pattern must be a str or strings"):
        list_models(None)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="list_models: dim must be one of"):
        list_models(dim="4D")
    with pytest.raises(ValueError, match=r"Unknown model name 'zz_mine'.*registered when that module is imported"):
        build_model("zz_mine")


def test_spec_settings_are_plain_data_and_checkpoints_load_back(registered, tmp_path: Path):
    def zz_rt(**kwargs):
        return _Net(**kwargs)

    registered(zz_rt)
    model = build_model("zz_rt", in_channels=np.int64(1), width=2,
                        sizes=(8, np.int64(16)), nested={"a": (1, 2), "b": [np.int16(3)]})
    spec = model.spec.replace(inference={"patch_size": (32, np.int64(32)), "threshold": np.float32(0.25)},
                              preprocessing={"clip": np.float64(1.5)}, tuning={"cases": np.array([1, 2])})
    assert spec.inference == {"patch_size": (32, 32), "threshold": 0.25} and type(spec.inference["threshold"]) is float
    assert spec.tuning == {"cases": [1, 2]}
    model.spec = spec
    save_checkpoint(tmp_path / "a.pt", model=model, extra={"n": np.int64(2), "t": torch.ones(2)},
                    history=[{"loss": np.float64(0.5)}], trainer_config={"lr": np.float32(0.5)})
    loaded = load_model(tmp_path / "a.pt")
    assert loaded.spec == spec and loaded.spec.kwargs["sizes"] == (8, 16) and loaded.extra == {
        "sizes": (8, 16), "nested": {"a": (1, 2), "b": [3]}}
    ckpt = load_checkpoint(tmp_path / "a.pt")
    assert ckpt["extra"]["n"] == 2 and torch.equal(ckpt["extra"]["t"], torch.ones(2))
    assert ckpt["history"] == [{"loss": 0.5}] and ckpt["trainer_config"] == {"lr": 0.5}
    with pytest.raises(TypeError, match=r"ModelSpec.inference\['root'\] must be plain data .*PosixPath "
                                        r"\(give a path as a str\)"):
        spec.replace(inference={"root": Path("/tmp")})
    with pytest.raises(TypeError, match="ModelSpec.tuning must be a mapping"):
        spec.replace(tuning=0.5)


def test_save_checkpoint_refuses_what_load_model_could_not_read(registered, tmp_path: Path):
    def zz_save(**kwargs):
        return _Net(**kwargs)

    registered(zz_save)
    model = build_model("zz_save")
    with pytest.raises(ValueError, match=r"model_name 'other' is not the name in the model's spec, 'zz_save'"):
        save_checkpoint(tmp_path / "a.pt", model=model, model_name="other")
    with pytest.raises(TypeError, match=r"save_checkpoint extra\['f'\] must be plain data"):
        save_checkpoint(tmp_path / "a.pt", model=model, extra={"f": print})

    @dataclasses.dataclass(frozen=True)
    class AuthoredSpec(ModelSpec):
        author: str = "me"
        __hash__ = None  # type: ignore[assignment]

    model.spec = AuthoredSpec(name="zz_save")
    with pytest.raises(ValueError, match=r"spec \(AuthoredSpec\) would not load back as a ModelSpec: unknown "
                                         r"model spec field\(s\) \['author'\].*extra="):
        save_checkpoint(tmp_path / "a.pt", model=model)
    model.spec = {"name": "zz_save"}
    with pytest.raises(TypeError, match="model.spec must be a ModelSpec"):
        save_checkpoint(tmp_path / "a.pt", model=model)
    assert not (tmp_path / "a.pt").exists()


def test_the_command_line_imports_a_users_module_that_registers_models(tmp_path: Path, monkeypatch,
                                                                      capsys) -> None:
    """``longiseg --import MODULE`` registers a user's models without a launcher script; the module is looked up in
    the current folder first; a missing module (or one it imports) is one error line."""
    from longiseg.cli import main

    name = "cli_imported_tiny_net"
    (tmp_path / "cli_user_models.py").write_text(
        "from longiseg import register_model\n"
        "from longiseg.networks.blocks.heads import TimepointHeads\n"
        f"@register_model(name={name!r}, dim='2.5D')\n"
        "def factory(in_channels: int = 2):\n"
        "    '''A user's model.'''\n"
        "    return TimepointHeads(in_channels, 1, spatial_dims=2)\n"
    )
    (tmp_path / "cli_broken_models.py").write_text("import cli_missing_dependency\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", list(sys.path))
    try:
        assert main(["--import", "cli_user_models", "models", "cli_imported*", "--no-params"]) == 0
        assert name in capsys.readouterr().out
        assert main(["--import", "cli_no_such_module", "models"]) == 2
        assert "--import cli_no_such_module: no module named 'cli_no_such_module'" in capsys.readouterr().err
        assert main(["--import", "cli_broken_models", "models"]) == 2
        err = capsys.readouterr().err
        assert "--import cli_broken_models" in err and "cli_missing_dependency" in err
    finally:
        if is_model(name):
            unregister_model(name)
        for module in ("cli_user_models", "cli_broken_models"):
            sys.modules.pop(module, None)


def test_import_names_the_option_for_what_is_no_module_name(capsys) -> None:
    # --import "" said "Empty module name" and --import ../x "the 'package' argument is required"
    from longiseg.cli import main

    for bad in ("", "../x", "./x"):
        assert main(["--import", bad, "models", "--no-params"]) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("longiseg models: error: --import takes a module name such as my_models"), err
