"""TrainerConfig and the generic config helpers: round trips, overrides, clear errors."""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import pytest

from longiseg.engine.config import (
    ConfigBase,
    ConfigError,
    TrainerConfig,
    apply_overrides,
    config_from_dict,
    config_to_dict,
    load_config,
    parse_override,
    read_config_file,
    save_config,
)


@dataclasses.dataclass
class _ModelSection(ConfigBase):
    name: str = "segmast"
    widths: tuple[int, ...] = (32, 64)
    dropout: float | None = None


@dataclasses.dataclass
class _RootConfig(ConfigBase):
    model: _ModelSection = dataclasses.field(default_factory=_ModelSection)
    trainer: TrainerConfig = dataclasses.field(default_factory=TrainerConfig)
    tags: list[str] = dataclasses.field(default_factory=list)


def test_defaults_follow_the_paper() -> None:
    cfg = TrainerConfig()
    assert (cfg.lr, cfg.weight_decay, cfg.warmup_epochs) == (1e-4, 0.05, 40)


@pytest.mark.parametrize("suffix", [".yaml", ".yml", ".json"])
def test_round_trip_file(tmp_path, suffix) -> None:
    cfg = TrainerConfig(max_epochs=7, lr=3e-4, betas=(0.8, 0.95), grad_clip_norm=None, amp="bf16",
                        patience=None, output_dir="runs/x")
    path = save_config(cfg, tmp_path / f"cfg{suffix}")
    assert load_config(TrainerConfig, path) == cfg
    assert TrainerConfig.from_file(path) == cfg
    if suffix == ".json":
        assert json.loads(path.read_text(encoding="utf-8"))["betas"] == [0.8, 0.95]


def test_round_trip_nested(tmp_path) -> None:
    cfg = _RootConfig(model=_ModelSection(widths=(8, 16, 24), dropout=0.1),
                      trainer=TrainerConfig(max_epochs=3), tags=["a", "b"])
    for name in ("root.yaml", "root.json"):
        assert _RootConfig.from_file(cfg.save(tmp_path / name)) == cfg
    assert config_from_dict(_RootConfig, config_to_dict(cfg)) == cfg


def test_overrides_convert_types() -> None:
    cfg = apply_overrides(TrainerConfig(), ["lr=1e-3", "max_epochs=12", "grad_clip_norm=null",
                                            "deterministic=false", "betas=[0.5, 0.6]", "patience=3"])
    assert cfg.lr == 1e-3 and isinstance(cfg.lr, float)
    assert cfg.max_epochs == 12 and cfg.grad_clip_norm is None and cfg.deterministic is False
    assert cfg.betas == (0.5, 0.6) and cfg.patience == 3
    root = _RootConfig().with_overrides(["trainer.max_epochs=5", "model.widths=4,8", "model.dropout=0.2"])
    assert root.trainer.max_epochs == 5 and root.model.widths == (4, 8) and root.model.dropout == 0.2
    assert TrainerConfig().max_epochs == 500  # the original is untouched


def test_overrides_reach_into_free_form_mappings() -> None:
    from longiseg.workflows.config import ExperimentConfig, ModelConfig

    cfg = ExperimentConfig(model=ModelConfig(name="segmast", kwargs={"widths": [8, 16]}))
    new = cfg.with_overrides(["model.kwargs.difference_weighting=true", "model.kwargs.extra.depth=2"])
    assert new.model.kwargs == {"widths": [8, 16], "difference_weighting": True, "extra": {"depth": 2}}
    assert cfg.model.kwargs == {"widths": [8, 16]}  # the original is untouched
    with pytest.raises(ValueError, match="'widths' of 'model.kwargs' is not a mapping"):
        cfg.with_overrides(["model.kwargs.widths.x=1"])
    with pytest.raises(ValueError, match="'trainer.lr' is not a nested config section"):
        cfg.with_overrides(["trainer.lr.x=1"])


def test_an_empty_section_of_a_file_means_its_defaults(tmp_path) -> None:
    # "data:" with every key commented out is null: an override (longiseg train --data) reported "override
    # 'data.root=...': 'data' is not a nested config section", blaming a setting the user never typed
    from longiseg.workflows.config import ExperimentConfig

    path = tmp_path / "exp.yaml"
    path.write_text("model: {name: segmast}\ndata:\n  # root: /data/cohort\ntrainer:\n  max_epochs: 1\n")
    cfg = ExperimentConfig.from_file(path, ["data.root=/x"])
    assert cfg.data.root == "/x" and cfg.trainer.max_epochs == 1
    assert ExperimentConfig.from_file(path).data == ExperimentConfig().data
    path.write_text("trainer: 5\n")  # the file is at fault, and named so
    with pytest.raises(ConfigError, match=r"config key 'trainer': expected a mapping for TrainerConfig, got 5 "
                                          r"\(override 'trainer.lr=1e-3' sets a key in it\)"):
        ExperimentConfig.from_file(path, ["trainer.lr=1e-3"])
    with pytest.raises(ConfigError, match="config key 'trainer': expected a mapping for TrainerConfig, got 5$"):
        ExperimentConfig.from_file(path)
    path.write_text("trainer: {max_epochs: 3}\n")  # only a file's empty section: trainer=null resets nothing
    for make in (lambda: ExperimentConfig.from_file(path, ["trainer=null"]),
                 lambda: ExperimentConfig.from_dict({"trainer": None})):
        with pytest.raises(ConfigError, match="config key 'trainer': expected a mapping for TrainerConfig, got None"):
            make()


def test_load_with_overrides(tmp_path) -> None:
    path = tmp_path / "t.yaml"
    path.write_text("max_epochs: 10\nlr: 2.0e-4\n")
    cfg = load_config(TrainerConfig, path, ["max_epochs=20"])
    assert (cfg.max_epochs, cfg.lr) == (20, 2e-4)


def test_overrides_replace_a_files_invalid_value_before_it_is_checked(tmp_path: Path,
                                                                       capsys: pytest.CaptureFixture[str]) -> None:
    """An empty trainer.output_dir in the file was refused although --output (an override) replaced it; a file that
    leaves a section out takes an override into it."""
    from longiseg.cli import main

    path = tmp_path / "t.yaml"
    path.write_text('trainer:\n  output_dir: ""\n')
    with pytest.raises(ConfigError, match="output_dir must be a non-empty path"):
        load_config(_RootConfig, path)
    assert load_config(_RootConfig, path, ["trainer.output_dir=runs/a"]).trainer.output_dir == "runs/a"
    (tmp_path / "empty.yaml").write_text("tags: []\n")
    assert load_config(_RootConfig, tmp_path / "empty.yaml", ["trainer.max_epochs=3"]).trainer.max_epochs == 3
    with pytest.raises(ConfigError, match=r"'trainer\.max_epoch'.*trainer\.max_epochs"):
        load_config(_RootConfig, tmp_path / "empty.yaml", ["trainer.max_epoch=3"])
    # the command line: --output replaces the file's empty folder (the run then fails for want of data, later)
    assert main(["train", str(path), "--output", str(tmp_path / "run"), "--data", str(tmp_path / "none")]) == 2
    err = capsys.readouterr().err
    assert "output_dir" not in err and "none" in err, err


def test_unknown_key_names_key_and_valid_keys(tmp_path) -> None:
    with pytest.raises(ConfigError, match=r"'lrr'.*Did you mean 'lr'.*Valid keys: .*weight_decay"):
        config_from_dict(TrainerConfig, {"lrr": 1e-3})
    with pytest.raises(ConfigError, match=r"'trainer\.max_epoch'.*trainer\.max_epochs"):
        apply_overrides(_RootConfig(), ["trainer.max_epoch=3"])
    with pytest.raises(ConfigError, match=r"'bogus'.*Valid keys: model, trainer, tags"):
        apply_overrides(_RootConfig(), ["bogus=1"])
    path = tmp_path / "bad.json"
    path.write_text(json.dumps({"trainer": {"nope": 1}}))
    with pytest.raises(ConfigError, match=r"'trainer\.nope'"):
        load_config(_RootConfig, path)


def test_bad_values_and_files(tmp_path) -> None:
    with pytest.raises(ConfigError, match="'max_epochs'.*int"):
        apply_overrides(TrainerConfig(), ["max_epochs=ten"])
    with pytest.raises(ConfigError, match="lr must be > 0"):
        TrainerConfig(lr=0.0)
    with pytest.raises(ConfigError, match="amp must be one of"):
        apply_overrides(TrainerConfig(), ["amp=float8"])
    with pytest.raises(ConfigError, match="monitor_mode"):
        TrainerConfig(monitor_mode="up")
    with pytest.raises(ConfigError, match="'betas'.*2 values"):
        config_from_dict(TrainerConfig, {"betas": [0.9]})
    with pytest.raises(ConfigError, match="key=value"):
        parse_override("lr")
    with pytest.raises(ConfigError, match="not a nested config section"):
        apply_overrides(_RootConfig(), ["tags.x=1"])
    with pytest.raises(ConfigError, match="unsupported suffix"):
        save_config(TrainerConfig(), tmp_path / "cfg.toml")
    with pytest.raises(FileNotFoundError, match="config file not found"):
        load_config(TrainerConfig, tmp_path / "missing.yaml")
    (tmp_path / "list.yaml").write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="top level must be a mapping"):
        read_config_file(tmp_path / "list.yaml")
    with pytest.raises(TypeError, match="dataclass"):
        config_from_dict(dict, {})
    with pytest.raises(TypeError, match="sequence of 'key=value'"):
        apply_overrides(TrainerConfig(), "lr=1")  # type: ignore[arg-type]


def test_empty_file_gives_defaults(tmp_path) -> None:
    (tmp_path / "empty.yaml").write_text("")
    assert load_config(TrainerConfig, tmp_path / "empty.yaml") == TrainerConfig()


def _all_config_classes() -> list[type]:
    from longiseg.data.demo_cohort import DemoCohortConfig
    from longiseg.metrics.protocol import EvaluationProtocol
    from longiseg.networks.nets.segmast import SegMaSTConfig
    from longiseg.workflows.config import (
        DataConfig,
        ExperimentConfig,
        InferenceConfig,
        LossConfig,
        ModelConfig,
    )
    from longiseg.workflows.demo import DemoConfig

    return [TrainerConfig, ModelConfig, DataConfig, LossConfig, InferenceConfig, ExperimentConfig, SegMaSTConfig,
            DemoConfig, DemoCohortConfig, EvaluationProtocol]


def test_every_config_class_uses_the_one_mechanism(tmp_path) -> None:
    for cls in _all_config_classes():
        assert issubclass(cls, ConfigBase), cls
        cfg = cls()
        assert repr(cls.from_dict(json.loads(json.dumps(cfg.to_dict())))) == repr(cfg)  # NaN-safe comparison
        assert repr(cls.from_file(cfg.save(tmp_path / f"{cls.__name__}.yaml"))) == repr(cfg)
        with pytest.raises(ConfigError, match=rf"Unknown config key 'bogus_key' for {cls.__name__}\."):
            cls.from_dict({"bogus_key": 1})
        numeric = next((f.name for f in dataclasses.fields(cls) if f.type in ("int", "float", int, float)), None)
        if numeric is not None:
            with pytest.raises(ConfigError, match=rf"config key '{numeric}': expected an? (int|float)"):
                cls.from_dict({numeric: "many"})
            # built directly, the same check (2.5 epochs were accepted, None reached a comparison)
            for bad in ("many", None, True):
                with pytest.raises(ConfigError, match=rf"{cls.__name__}: config key '{numeric}': expected an? "
                                                      r"(int|float)"):
                    cls(**{numeric: bad})
            if type(getattr(cfg, numeric)) is int:
                with pytest.raises(ConfigError, match=rf"config key '{numeric}': expected an int, got 2\.5"):
                    cls(**{numeric: 2.5})


def test_keyword_overrides_are_converted_and_validated() -> None:
    from longiseg.data.demo_cohort import DemoCohortConfig
    from longiseg.metrics.protocol import EvaluationProtocol
    from longiseg.networks.nets.segmast import SegMaSTConfig

    assert EvaluationProtocol().with_overrides(iou_threshold="0.3").iou_threshold == 0.3
    assert SegMaSTConfig().replace(widths=[8, 16, 16, 32]).widths == (8, 16, 16, 32)
    assert DemoCohortConfig().with_overrides(["num_patients=4"], seed=3).num_patients == 4
    with pytest.raises(ConfigError, match=r"EvaluationProtocol: iou_threshold must lie in \[0, 1\)"):
        EvaluationProtocol().with_overrides(iou_threshold=1.5)
    with pytest.raises(ConfigError, match="Did you mean 'num_patients'"):
        DemoCohortConfig().with_overrides(num_patient=4)


def test_paths_starting_with_a_tilde_name_the_home_folder(tmp_path, monkeypatch) -> None:
    """``output_dir: ~/runs/exp1`` in a YAML file is the user's folder, not a folder named "~" in the working
    directory (a later ``rm -rf ~`` there would be a disaster)."""
    from longiseg.workflows.config import DataConfig

    monkeypatch.setenv("HOME", str(tmp_path))
    assert TrainerConfig(output_dir="~/runs/exp1").output_dir == str(tmp_path / "runs" / "exp1")
    data = DataConfig(root="~/cohort", val_root="~/val")
    assert (data.root, data.val_root) == (str(tmp_path / "cohort"), str(tmp_path / "val"))
    assert DataConfig(root="cohort/~x").root == "cohort/~x" and DataConfig(root="c").val_root is None


def test_command_line_paths_expand_a_leading_tilde(tmp_path, monkeypatch) -> None:
    """``--output=~/x`` (and a quoted ``'~/x'``) reach the command unexpanded: train and predict wrote into a
    folder named "~" in the working directory, and inputs given so "did not exist"."""
    from longiseg.cli import build_parser

    monkeypatch.setenv("HOME", str(tmp_path))
    parser = build_parser()
    home = str(tmp_path)
    commands = {
        "train": (["train", "~/c.yaml", "--data=~/d", "--output=~/r"], ("config", "data", "output")),
        "tune": (["tune", "~/r", "--checkpoint=~/r/best.pt", "--data=~/v"], ("run", "checkpoint", "data")),
        "cohort": (["cohort", "~/c"], ("output",)),
        "predict": (["predict", "--checkpoint=~/b.pt", "--input=~/i", "--output=~/o", "--config=~/c.yaml",
                     "--native=~/reg"], ("checkpoint", "input", "output", "config", "native")),
        "evaluate": (["evaluate", "~/p", "~/g", "--out=~/e"], ("out",)),
        "demo": (["demo", "--output=~/demo"], ("output",)),
        "lesions": (["lesions", "~/m", "--out=~/l", "--images=~/i"], ("masks", "out", "images")),
        "register": (["register", "~/raw", "~/reg"], ("raw", "out")),
    }
    for argv, names in commands.values():
        args = parser.parse_args(argv)
        for name in names:
            assert str(getattr(args, name)).startswith(home + os.sep), (argv, name, getattr(args, name))
    assert all(f.startswith(home + os.sep) for f in parser.parse_args(["evaluate", "~/p", "~/g"]).folders)


def test_repeated_set_flags_accumulate() -> None:
    # the second --set replaced the first: `--set trainer.max_epochs=0 --set trainer.output_dir=x` trained
    from longiseg.cli import build_parser

    parser = build_parser()
    for argv in (["train", "c.yaml"], ["predict", "--checkpoint", "c.pt", "--input", "i", "--output", "o"],
                 ["cohort", "out"]):
        args = parser.parse_args([*argv, "--set", "a=1", "b=2", "--set", "c=3"])
        assert args.overrides == ["a=1", "b=2", "c=3"], argv


def test_a_section_given_whole_changes_only_the_keys_it_names(tmp_path) -> None:
    from longiseg.workflows.config import ExperimentConfig

    base = ExperimentConfig().with_overrides(["trainer.output_dir=out/base", "trainer.max_epochs=7"])
    for changed in (base.with_overrides(["trainer={lr: 0.5}"]), base.with_overrides(trainer={"lr": 0.5})):
        assert changed.trainer.lr == 0.5
        assert changed.trainer.output_dir == "out/base" and changed.trainer.max_epochs == 7  # were reset
    # a config object still replaces the section; a free-form mapping is replaced, not merged
    assert base.with_overrides(trainer=TrainerConfig()).trainer.max_epochs == TrainerConfig().max_epochs
    kw = base.with_overrides(["model.kwargs={a: 1}"]).with_overrides(["model={kwargs: {b: 2}}"]).model.kwargs
    assert kw == {"b": 2}


@pytest.mark.parametrize("raw, expected", [
    ("2024-01-01", "2024-01-01"), ("123", "123"), ("yes", "yes"), ("runs/exp #2", "runs/exp #2"),
    ("'quoted #1'", "quoted #1"), (" spaced ", "spaced"),
])
def test_a_text_field_takes_the_text_as_given(raw: str, expected: str) -> None:
    from longiseg.workflows.config import ExperimentConfig

    assert ExperimentConfig().with_overrides([f"trainer.output_dir={raw}"]).trainer.output_dir == expected


def test_none_is_text_for_a_field_that_must_hold_text_and_null_for_an_optional_one() -> None:
    # loss.strategy=none (the "none" strategy, as examples/ablation_loss_strategy.sh passes it) became None and
    # was refused as "expected a string, got None"
    from longiseg.workflows.config import ExperimentConfig

    cfg = ExperimentConfig().with_overrides(["loss.strategy=none", "data.val_root=none"])
    assert cfg.loss.strategy == "none" and cfg.data.val_root is None
    assert ExperimentConfig().with_overrides(["data.val_root=null"]).data.val_root is None


def test_config_values_that_cannot_be_saved_or_built_are_refused_or_converted(tmp_path) -> None:
    import numpy as np

    from longiseg.workflows.config import DataConfig, ExperimentConfig, ModelConfig

    with pytest.raises(ConfigError, match="data.modalities"):  # escaped as a YAML error (exit 1, "--debug")
        ExperimentConfig().with_overrides(["data.modalities=[flair, t2"])
    model = ModelConfig(kwargs={"d_state": np.int64(8), "widths": np.array([1, 2])})
    assert model.kwargs == {"d_state": 8, "widths": [1, 2]} and type(model.kwargs["d_state"]) is int
    ExperimentConfig(model=model).save(tmp_path / "e.yaml")  # a RepresenterError before
    assert ExperimentConfig.from_file(tmp_path / "e.yaml").model == model
    with pytest.raises(ConfigError, match="samples_per_epoch.*between 1 and"):  # hung building a 1e21-item list
        DataConfig(samples_per_epoch=10**21)


def test_yaml_merge_keys_are_read_and_a_folder_is_named(tmp_path) -> None:
    # the duplicate-key check constructed the `<<` key and failed: "could not determine a constructor for the tag"
    path = tmp_path / "c.yaml"
    path.write_text("base: &b\n  max_epochs: 3\n  lr: 0.1\ntrainer:\n  <<: *b\n  lr: 0.2\n")
    assert read_config_file(path)["trainer"] == {"max_epochs": 3, "lr": 0.2}
    path.write_text("trainer:\n  <<: {lr: 0.1}\n  max_epochs: 3\n  max_epochs: 4\n")
    with pytest.raises(ConfigError, match="'max_epochs' is given twice"):
        read_config_file(path)
    (tmp_path / "d.yaml").mkdir()
    with pytest.raises(IsADirectoryError, match="is a folder"):
        read_config_file(tmp_path / "d.yaml")


def test_exponent_floats_without_a_dot_are_floats_in_files_and_overrides(tmp_path: Path) -> None:
    # PyYAML (YAML 1.1) read 1e-2 as the text '1e-2': typed fields converted it, but model.kwargs passed it to the
    # factory as text, and SegFormer refused `drop_path_rate: 1e-2` ("must be a float, got str")
    import yaml

    from longiseg import build_model
    from longiseg.workflows.config import ExperimentConfig

    path = tmp_path / "exp.yaml"
    path.write_text("model:\n  name: segformer_ms\n  kwargs: {drop_path_rate: 1e-2, decoder_dropout: 5E-2}\n"
                    "trainer: {lr: 3e-4}\n", encoding="utf-8")
    cfg = ExperimentConfig.from_file(path, ["model.kwargs.attn_dropout=+2e-2"])
    assert cfg.model.kwargs == {"drop_path_rate": 0.01, "decoder_dropout": 0.05, "attn_dropout": 0.02}
    assert all(type(v) is float for v in cfg.model.kwargs.values()) and cfg.trainer.lr == 3e-4
    build_model(cfg.model.name, **cfg.model.kwargs)  # refused before
    assert parse_override("x=1e5") == (["x"], 100000.0) and parse_override("x=1e5x") == (["x"], "1e5x")
    assert read_config_file(path)["model"]["kwargs"]["drop_path_rate"] == 0.01
    assert yaml.safe_load("1e-2") == "1e-2"  # PyYAML's own loader is left as it is
