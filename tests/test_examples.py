"""The examples/ folder: configs load and name registered models with the paper's settings, scripts parse,
the shell helpers pick the right config, and the Python helpers convert and summarise tiny cohorts."""

from __future__ import annotations

import argparse
import importlib.util
import json
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

import longiseg
from longiseg.workflows.config import ExperimentConfig

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
CONFIGS = sorted((EXAMPLES / "configs").glob("*.yaml"))
SHELL = sorted(EXAMPLES.glob("*.sh"))
PYTHON = sorted(EXAMPLES.glob("*.py"))

# dataset prefix -> (crop size, modalities, minimum lesion volume in mm^3): SegMaST paper, section 3
PAPER = {
    "ms_inhouse": (128, ["flair", "t2"], 27.0),
    "msseg2": (80, ["flair"], 27.0),
    "ucsf_altpd": (160, ["flair", "t1", "t1ce", "t2"], 50.0),
}


def _load_module(name: str):  # noqa: ANN202
    spec = importlib.util.spec_from_file_location(f"examples_{name}", EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_examples_exist() -> None:
    assert len(CONFIGS) == 6
    assert {p.name for p in SHELL} >= {"common.sh", "compare_models.sh", "ablation_loss_strategy.sh",
                                       "ablation_patch_size.sh", "three_timepoints.sh"}
    assert {p.name for p in PYTHON} >= {"convert_datasets.py", "followup_table.py"}
    assert (EXAMPLES / "README.md").is_file()


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_config_loads_with_paper_settings(path: Path) -> None:
    cfg = ExperimentConfig.from_file(path)
    assert longiseg.is_model(cfg.model.name), cfg.model.name
    dataset, family = path.stem.rsplit("_", 1)
    assert longiseg.model_info(cfg.model.name).dim == {"2.5d": "2.5D", "3d": "3D"}[family]
    crop, modalities, min_mm3 = PAPER[dataset]
    assert cfg.data.crop_size == crop and cfg.inference.patch_size == crop
    assert cfg.data.modalities == modalities
    assert cfg.inference.min_lesion_mm3 == min_mm3
    assert cfg.inference.overlap == 0.5
    assert cfg.loss.strategy == "partial"
    t = cfg.trainer
    assert (t.lr, t.weight_decay, t.warmup_epochs) == (1e-4, 0.05, 40)
    assert (t.batch_size, t.max_epochs) == ((32, 500) if family == "2.5d" else (8, 1000))
    assert t.patience is not None
    assert cfg.data.root == f"data/{dataset}/train"


def test_config_overrides_as_documented() -> None:
    cfg = ExperimentConfig.from_file(EXAMPLES / "configs" / "ms_inhouse_2.5d.yaml",
                                     ["model.name=segformer_ms", "loss.strategy=whole", "data.crop_size=64"])
    assert (cfg.model.name, cfg.loss.strategy, cfg.data.crop_size) == ("segformer_ms", "whole", 64)


def _model_names(text: str) -> set[str]:
    names = set()
    for match in re.finditer(r'(?:default_models|MODEL:-)[="]*([a-z0-9_ ]+)', text):
        names.update(match.group(1).split())
    for match in re.finditer(r"model\.name=([a-z0-9_]+)", text):
        names.add(match.group(1))
    return names


def test_every_model_named_in_examples_is_registered() -> None:
    texts = [p.read_text(encoding="utf-8") for p in [*SHELL, *CONFIGS, EXAMPLES / "README.md"]]
    names = set().union(*(_model_names(t) for t in texts))
    names.discard("name")  # the placeholder in "model.name=NAME"
    assert {"segmast_ms", "segformer_ms", "dynunet_2d_ms", "swin_unetr_3d_glioma", "dynunet_cs_ms"} <= names
    unknown = sorted(n for n in names if n.islower() and not longiseg.is_model(n))
    assert not unknown, f"example files name unregistered models: {unknown}"


@pytest.mark.skipif(shutil.which("bash") is None, reason="bash not installed")
@pytest.mark.parametrize("path", SHELL, ids=lambda p: p.name)
def test_shell_script_parses(path: Path) -> None:
    res = subprocess.run(["bash", "-n", str(path)], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr


@pytest.mark.skipif(shutil.which("bash") is None, reason="bash not installed")
@pytest.mark.parametrize("path", [p for p in SHELL if p.name != "common.sh"], ids=lambda p: p.name)
def test_shell_script_help_and_argument_errors(path: Path, tmp_path: Path) -> None:
    # --help was taken for a dataset named "--help" (a missing-folder error), and extra arguments were ignored
    env = {"PATH": "/usr/bin:/bin", "DATA_ROOT": str(tmp_path), "RUNS": str(tmp_path / "runs")}
    res = subprocess.run(["bash", str(path), "--help"], capture_output=True, text=True, env=env)
    assert res.returncode == 0 and res.stdout.splitlines()[0].startswith("SegMaST paper"), res
    assert "Usage:" in res.stdout and "#" not in res.stdout.split("Usage:")[0] and not res.stderr
    for args, message in ((["--bogus"], "unknown option '--bogus'"), (["a", "b"], "expected at most one argument")):
        res = subprocess.run(["bash", str(path), *args], capture_output=True, text=True, env=env)
        assert res.returncode == 2 and message in res.stderr and len(res.stderr.splitlines()) == 1, res
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("path", PYTHON, ids=lambda p: p.name)
def test_python_script_compiles(path: Path) -> None:
    compile(path.read_text(encoding="utf-8"), str(path), "exec")  # SyntaxError otherwise; writes no .pyc


@pytest.mark.skipif(shutil.which("bash") is None, reason="bash not installed")
def test_common_helpers(tmp_path: Path) -> None:
    stub = tmp_path / "fake_python"  # stands in for the registry lookup of model_dim
    stub.write_text('#!/usr/bin/env bash\n[[ "$3" == *3d* ]] && echo 3D || echo 2.5D\n')
    stub.chmod(0o755)
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "last.pt").write_text("")
    script = f"""
        source "{EXAMPLES / 'common.sh'}"
        config_for msseg2 swin_unetr_3d_ms
        config_for ucsf_altpd segmast_glioma
        echo "[$(size_overrides msseg2 swin_unetr_3d_ms)]"
        echo "[$(size_overrides msseg2 segmast_ms)]"
        echo "[$(size_overrides ms_inhouse dynunet_2d_ms)]"
        best_checkpoint "{tmp_path / 'run'}"
        require_dir "{tmp_path / 'missing'}" test
    """
    res = subprocess.run(["bash", "-c", script], capture_output=True, text=True,
                         env={"PATH": "/usr/bin:/bin", "PYTHON": str(stub)})
    lines = res.stdout.splitlines()
    assert lines[0].endswith("configs/msseg2_3d.yaml")
    assert lines[1].endswith("configs/ucsf_altpd_2.5d.yaml")
    assert lines[2:5] == ["[data.crop_size=96 inference.patch_size=96]", "[]", "[]"]
    assert lines[5].endswith("run/last.pt")
    assert res.returncode == 2 and "examples/README.md" in res.stderr


def _tiny_cohort(root: Path, n: int = 6) -> None:
    from longiseg.data import LongitudinalCase, save_case

    rng = np.random.default_rng(0)
    for i in range(n):
        prog = np.zeros((1, 6, 6, 6), np.uint8)
        if i % 2 == 0:
            prog[0, 2:4, 2:4, 2:4] = 1
        base = np.zeros((6, 6, 6), np.uint8)
        base[1, 1, 1] = 1
        case = LongitudinalCase(images=rng.normal(size=(2, 1, 6, 6, 6)).astype(np.float32), baseline_mask=base,
                                progression_masks=prog, affine=np.eye(4), spacing=(1.0, 1.0, 1.0),
                                modalities=("flair",), case_id=f"case{i}")
        save_case(case, root)


def test_convert_layout_split(tmp_path: Path) -> None:
    convert = _load_module("convert_datasets")
    _tiny_cohort(tmp_path / "src")
    assert convert.main(["layout", str(tmp_path / "src"), str(tmp_path / "out"), "--test-fraction", "0.34"]) == 0
    from longiseg.data import read_manifest

    train = read_manifest(tmp_path / "out" / "train" / "manifest.json")
    test = read_manifest(tmp_path / "out" / "test" / "manifest.json")
    ids_train = {e.case_id for e in train.cases}
    ids_test = {e.case_id for e in test.cases}
    assert not ids_train & ids_test and len(ids_train | ids_test) == 6
    assert {e.progression for e in test.cases} == {True, False}  # stratified by progression
    assert (tmp_path / "out" / "test" / sorted(ids_test)[0] / "progression_t1.nii.gz").is_file()


def test_convert_explicit_ids_and_errors(tmp_path: Path) -> None:
    convert = _load_module("convert_datasets")
    from longiseg.data import find_cases

    _tiny_cohort(tmp_path / "src", n=4)
    sources = find_cases(tmp_path / "src")
    train, test = convert.split_cases(sources, test_fraction=0.5, seed=0, test_ids=["case1"])
    assert [s.case_id for s in test] == ["case1"] and len(train) == 3
    with pytest.raises(ValueError, match="case9"):
        convert.split_cases(sources, test_fraction=0.5, seed=0, test_ids=["case9"])
    subset = convert.select_cases(sources, 2, seed=0)
    assert len(subset) == 2 and subset == convert.select_cases(sources, 2, seed=0)
    with pytest.raises(ValueError, match="max_cases"):
        convert.select_cases(sources, 0, seed=0)


def test_convert_names_what_it_was_given_wrong(tmp_path: Path, capsys, monkeypatch) -> None:
    """``overwrite="no"`` replaced OUT and ``drop_stable_test="no"`` dropped stable test cases (truthy strings);
    a case id given twice was blamed on --test-fraction; an iterator of sources was used up by the first check
    (then "puts all 0 patients into the test split"); SIGTERM left the temporary OUT behind."""
    import dataclasses
    import signal

    convert = _load_module("convert_datasets")
    from longiseg.data import find_cases

    _tiny_cohort(tmp_path / "src")
    sources = find_cases(tmp_path / "src")
    for flag in ("overwrite", "drop_stable_test"):
        with pytest.raises(TypeError, match=f"{flag} must be a bool"):
            convert.convert(sources, tmp_path / "out", **{flag: "no"})
    with pytest.raises(TypeError, match="sources must hold CaseSource objects .* got str 'case0'"):
        convert.convert(["case0"], tmp_path / "out")
    twice = [*sources, dataclasses.replace(sources[0], patient_id="other")]
    with pytest.raises(ValueError, match="case id 'case0' appears more than once"):
        convert.split_cases(twice, test_fraction=0.34, seed=0)
    convert.convert(iter(sources), tmp_path / "out", test_fraction=0.34)
    assert len(find_cases(tmp_path / "out" / "train")) + len(find_cases(tmp_path / "out" / "test")) == 6
    capsys.readouterr()

    def terminated(argv: object) -> int:
        signal.raise_signal(signal.SIGTERM)  # handled before raise_signal returns
        return 0

    monkeypatch.setattr(convert, "main", terminated)
    assert convert.cli([]) == 143
    assert capsys.readouterr().err.endswith(": terminated\n")
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL


def test_followup_summaries_split_by_followup() -> None:
    followup = _load_module("followup_table")
    from longiseg.metrics import EvaluationResult, ResultsTable, get_protocol

    rows = []
    for pid, (fu1, fu2) in {"a": ("P", "NP"), "b": ("NP", "P")}.items():
        rows.append({"case_id": pid, "patient_id": pid, "target": "baseline", "timepoint": 0, "kind": "B",
                     "dice": 0.5, "lesion_f1": 0.4})
        for t, kind in ((1, fu1), (2, fu2)):
            rows.append({"case_id": pid, "patient_id": pid, "target": f"progression_t{t}", "timepoint": t,
                         "kind": kind, "dice": 0.1 * t if kind == "P" else 1.0, "lesion_f1": 0.2 * t})
    result = EvaluationResult(ResultsTable(rows, "m"), {}, get_protocol("segmast"))
    summaries = {(m, c): s for m, c, s in followup.followup_summaries(result)}
    assert summaries[("dice", "FU1 P")].mean == pytest.approx(0.1)
    assert summaries[("dice", "FU2 P")].mean == pytest.approx(0.2)
    assert summaries[("dice", "FU2 NP")].mean == pytest.approx(1.0)
    assert ("lesion_f1", "FU1 NP") not in summaries
    text = followup.format_followup_table(list(followup.followup_summaries(result)))
    assert "FU2 P" in text and text.splitlines()[2].rstrip().endswith("-")


def test_convert_parser_options() -> None:
    convert = _load_module("convert_datasets")
    parser = convert.build_parser()
    args = parser.parse_args(["ucsf", "src", "out", "--difference", "growth", "--max-cases", "200"])
    assert (args.dataset, args.difference, args.max_cases, args.test_fraction) == ("ucsf", "growth", 200, 0.2)
    args = parser.parse_args(["msseg2", "src", "out", "--drop-stable-test", "--test-ids", "013", "016"])
    assert args.drop_stable_test and args.test_ids == ["013", "016"]
    with pytest.raises(SystemExit):
        parser.parse_args(["ucsf", "src", "out", "--difference", "bogus"])


def test_new_vs_old_ablation_variants_and_table(tmp_path: Path) -> None:
    from longiseg.workflows.demo import DemoConfig, demo_experiment

    ablation = _load_module("ablation_new_vs_old")
    cfg = DemoConfig(output_dir=str(tmp_path))
    base = demo_experiment(cfg, "SegMaST", tmp_path / "train", tmp_path / "run")
    label, overrides = ablation.VARIANTS["both"]
    both = base.with_overrides(overrides)
    assert label == "SegMaST" and base.with_overrides(ablation.VARIANTS["paper"][1]) == base
    assert (both.data.persisting_share, both.loss.keep_hard_negatives, both.data.augment_independent_timepoints) \
        == (0.3, True, True)
    assert base.with_overrides(ablation.VARIANTS["dw"][1]).model.kwargs["difference_weighting"] is True
    assert ablation.VARIANTS["segformer"][0] == "SegFormer"
    assert list(ablation.RULES) == ["head", "outside"] and ablation.RULES["outside"]  # the default rule last
    for seed, f1 in ((0, 0.5), (1, 0.7)):
        record = {f"{rule}/{kind}/{key}": 0.25 for rule in ablation.RULES for kind in ablation.THRESHOLDS
                  for key, _ in ablation.COLUMNS}
        record |= {key: 0.1 for key, _ in ablation.RELIANCE_COLUMNS}
        record |= {"outside/tuned/lesion_f1/P": f1, "seed": seed, "outside/threshold": 0.4, "head/threshold": 0.6}
        (tmp_path / "runs" / "hardneg" / f"seed{seed}").mkdir(parents=True)
        (tmp_path / "runs" / "hardneg" / f"seed{seed}" / ablation.RESULT_FILE).write_text(json.dumps(record))
    lines = ablation.ablation_table(tmp_path).splitlines()
    assert len(lines) == 4 and lines[2].startswith("| hardneg | outside | 0,1 | 0.40/0.40 | ")
    assert "0.600 (0.141)" in lines[2] and "0.600" not in lines[3]  # mean (SD, ddof=1) of 0.5 and 0.7
    assert lines[3].startswith("| hardneg | head | 0,1 | 0.60/0.60 | ")
    assert ablation.ablation_table(tmp_path, "fixed").splitlines()[2].startswith("| hardneg | outside | 0,1 | 0.50 | ")


def _usage_error(err: str) -> str:
    """The one error line of argparse's usage error (after the usage lines), checked to be the only one."""
    assert "Traceback" not in err
    errors = [line for line in err.splitlines() if ": error: " in line]
    assert len(errors) == 1 and err.strip().endswith(errors[0]), err
    return errors[0]


def _fake_tools(tmp_path: Path, dataset: str = "ds", python_fails: bool = False) -> dict[str, str]:
    """Environment running the example scripts with a fake ``longiseg`` and ``python`` that log their arguments
    to ``tmp_path/log`` (the fake python answers model_dim from the name, or fails like one without longiseg)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    log = tmp_path / "log"
    (bin_dir / "longiseg").write_text(f'#!/usr/bin/env bash\necho "longiseg $*" >> "{log}"\n')
    dim = ('echo "error: python cannot import longiseg" >&2; exit 1' if python_fails
           else '[[ "$3" == *3d* ]] && echo 3D || echo 2.5D')
    (bin_dir / "python").write_text(
        f'#!/usr/bin/env bash\nif [[ "$1" == -c ]]; then {dim}; exit; fi\necho "python $*" >> "{log}"\n')
    for tool in bin_dir.iterdir():
        tool.chmod(0o755)
    for split in ("train", "test"):
        (tmp_path / "data" / dataset / split).mkdir(parents=True)
    return {"PATH": f"{bin_dir}:/usr/bin:/bin", "DATA_ROOT": str(tmp_path / "data"), "RUNS": str(tmp_path / "runs")}


def _run_example(script: str, env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(EXAMPLES / script), *args], capture_output=True, text=True, env=env,
                          timeout=60)


@pytest.mark.skipif(shutil.which("bash") is None, reason="bash not installed")
@pytest.mark.parametrize("script", ["compare_models.sh", "ablation_loss_strategy.sh", "ablation_patch_size.sh"])
def test_scripts_stop_when_the_model_lookup_fails(tmp_path: Path, script: str) -> None:
    # a failure inside $(config_for ...) stopped nothing: the script trained with the wrong config and exited 0
    env = _fake_tools(tmp_path, "ms_inhouse", python_fails=True)
    res = _run_example(script, env, "ms_inhouse")
    assert res.returncode != 0
    assert res.stderr.count("error:") == 1 and "cannot import longiseg" in res.stderr
    assert not (tmp_path / "log").exists() or "train" not in (tmp_path / "log").read_text(encoding="utf-8")


@pytest.mark.skipif(shutil.which("bash") is None, reason="bash not installed")
def test_scripts_name_runs_by_model_and_rewrite_their_reports(tmp_path: Path) -> None:
    env = _fake_tools(tmp_path)
    runs = tmp_path / "runs" / "ds"
    for script, extra in (("ablation_loss_strategy.sh", {}), ("ablation_patch_size.sh", {"SIZES": "64 128 96"}),
                          ("three_timepoints.sh", {"MODEL": "segformer_ms"})):
        res = _run_example(script, {**env, **extra}, "ds")
        assert res.returncode == 0, res.stderr
    log = (tmp_path / "log").read_text(encoding="utf-8").splitlines()
    evaluates = [line for line in log if line.startswith("longiseg evaluate")]
    assert len(evaluates) == 2 and all(line.endswith("--overwrite") for line in evaluates)
    loss = [f"{runs}/predictions/segmast_ms_loss_{s}" for s in ("partial", "whole", "none")]
    assert evaluates[0].split()[2:5] == loss
    patch = [f"{runs}/predictions/segmast_ms_patch_{s}" for s in (128, 96, 64)]  # largest first: the reference
    assert evaluates[1].split()[2:5] == patch
    assert f"--output {runs}/segformer_ms " in next(line for line in log if "train" in line and "segformer" in line)
    assert any(line.startswith(f"python {EXAMPLES}/followup_table.py {runs}/predictions/segformer_ms ")
               for line in log)
    res = _run_example("ablation_patch_size.sh", {**env, "SIZES": "64 0"}, "ds")
    assert res.returncode == 2 and "SIZES must be positive whole numbers" in res.stderr


@pytest.mark.skipif(shutil.which("bash") is None, reason="bash not installed")
def test_compare_models_rerun_with_extra_predictions(tmp_path: Path) -> None:
    env = _fake_tools(tmp_path, "msseg2")
    res = _run_example("compare_models.sh", {**env, "MODELS": "segmast_ms dynunet_3d_ms",
                                             "EXTRA_PREDICTIONS": "nnunet_preds"}, "msseg2")
    assert res.returncode == 0, res.stderr
    evaluate = (tmp_path / "log").read_text(encoding="utf-8").splitlines()[-1].split()
    runs = tmp_path / "runs" / "msseg2"
    assert evaluate[2:] == [f"{runs}/predictions/segmast_ms", f"{runs}/predictions/dynunet_3d_ms", "nnunet_preds",
                            f"{tmp_path}/data/msseg2/test", "--out", f"{runs}/report", "--overwrite"]


@pytest.mark.parametrize(("args", "message"), [
    (["--jobs", "0"], "argument --jobs: must be >= 1"),
    (["--epochs", "0"], "argument --epochs"),
    (["--num-patients", "4"], "argument --num-patients/--num-test: num_patients must be an int >= 6"),
    (["--num-patients", "8", "--num-test", "6"], "num_test must be in"),
    (["--cohort-set", "bogus=1"], "argument --cohort-set: Unknown config key 'bogus'"),
    (["--seeds", "-1"], "seeds must be >= 0"),
])
def test_new_vs_old_ablation_refuses_bad_arguments_before_writing(tmp_path: Path, capsys, args, message) -> None:
    ablation = _load_module("ablation_new_vs_old")
    with pytest.raises(SystemExit) as exc:
        ablation.main([str(tmp_path / "out"), *args])
    assert exc.value.code == 2
    assert message in _usage_error(capsys.readouterr().err)
    assert not (tmp_path / "out").exists()


def test_new_vs_old_ablation_refuses_other_settings_on_rerun(tmp_path: Path, capsys) -> None:
    # a rerun with other settings printed the old results and exited 0
    ablation = _load_module("ablation_new_vs_old")
    out = tmp_path / "out"
    out.mkdir()
    defaults = ablation.settings_of(argparse.Namespace(num_patients=32, num_test=10, cohort_seed=0, cohort_set=[],
                                                       register=False, epochs=4, steps=8))
    (out / ablation.SETTINGS_FILE).write_text(json.dumps(defaults))
    assert ablation.settings_conflict(out, defaults) is None
    for args, named in ((["--epochs", "5", "--steps", "8"], "--epochs 4 -> 5"),
                        (["--epochs", "4", "--steps", "8", "--num-patients", "20"], "--num-patients 32 -> 20"),
                        (["--epochs", "4", "--steps", "9"], "--steps 8 -> 9")):
        with pytest.raises(SystemExit) as exc:
            ablation.main([str(out), *args])
        err = capsys.readouterr().err
        assert exc.value.code == 2 and named in err and "start afresh" in err
    assert json.loads((out / ablation.SETTINGS_FILE).read_text(encoding="utf-8")) == defaults  # left as it was
    legacy = tmp_path / "legacy"  # made before settings.json: the settings are unknown
    (legacy / "test").mkdir(parents=True)
    assert "no settings.json" in ablation.settings_conflict(legacy, defaults)


def test_new_vs_old_ablation_whose_cohort_cannot_be_split_can_be_rerun_with_other_settings(tmp_path: Path,
                                                                                          capsys) -> None:
    # settings.json was written before the cohort: the corrected rerun was refused as "made with other settings"
    ablation = _load_module("ablation_new_vs_old")
    out = tmp_path / "out"
    impossible = ["--num-patients", "8", "--num-test", "2", "--cohort-set", "spacing=4", "progression_fraction=0"]
    with pytest.raises(SystemExit) as exc:
        ablation.main([str(out), *impossible, "--epochs", "1", "--steps", "1"])
    assert exc.value.code == 2 and "progressing" in capsys.readouterr().err
    assert not (out / ablation.SETTINGS_FILE).exists()
    fixed = ablation.settings_of(argparse.Namespace(num_patients=8, num_test=2, cohort_seed=0,
                                                    cohort_set=["spacing=4"], register=False, epochs=1, steps=1))
    assert ablation.settings_conflict(out, fixed) is None


@pytest.mark.parametrize(("args", "message"), [
    (["layout", "{tmp}/missing", "{tmp}/out"], "SOURCE .*missing is not a folder"),
    (["layout", "{tmp}/src", "{tmp}/out", "--test-fraction", "1.5"], r"test_fraction \(--test-fraction\) must be in"),
    (["layout", "{tmp}/src", "{tmp}/out", "--test-ids", "nope"], r"\['nope'\] not found"),
    (["layout", "{tmp}/src", "{tmp}/out", "--max-cases", "0"], r"max_cases \(--max-cases\) must be an integer >= 1"),
    (["layout", "{tmp}/src", "{tmp}/src2"], "already exists and is not empty; pass --overwrite"),
])
def test_convert_refuses_bad_arguments_in_one_line(tmp_path: Path, capsys, args, message) -> None:
    convert = _load_module("convert_datasets")
    _tiny_cohort(tmp_path / "src", n=4)
    (tmp_path / "src2").mkdir()
    (tmp_path / "src2" / "keep.txt").write_text("x")
    with pytest.raises(SystemExit) as exc:
        convert.cli([a.format(tmp=tmp_path) for a in args])  # the script's entry: main's errors as one line
    assert exc.value.code == 2 and re.search(message, _usage_error(capsys.readouterr().err))
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(("args", "message"), [
    (["{tmp}", "{tmp}", "--out", "{tmp}/r", "--protocol", "foo"], "argument --protocol: invalid choice: 'foo'"),
    (["{tmp}/nope", "{tmp}", "--out", "{tmp}/r"], "argument pred_dir: .*nope is not a folder"),
    (["{tmp}", "{tmp}/nope", "--out", "{tmp}/r"], "argument gt_dir: .*nope is not a folder"),
])
def test_followup_table_refuses_bad_arguments_in_one_line(tmp_path: Path, capsys, args, message) -> None:
    followup = _load_module("followup_table")
    with pytest.raises(SystemExit) as exc:
        followup.main([a.format(tmp=tmp_path) for a in args])
    assert exc.value.code == 2 and re.search(message, _usage_error(capsys.readouterr().err))


@pytest.mark.skipif(shutil.which("bash") is None, reason="bash not installed")
def test_an_extra_setting_does_not_replace_what_a_script_varies(tmp_path: Path) -> None:
    # EXTRA was appended after the script's own keys: the documented tiny EXTRA (data.crop_size=32) trained every
    # run of ablation_patch_size.sh at 32, under the names of the sizes it did not use
    env = _fake_tools(tmp_path)
    res = _run_example("ablation_patch_size.sh", {**env, "SIZES": "40 64",
                                                  "EXTRA": "trainer.max_epochs=1 data.crop_size=32"}, "ds")
    assert res.returncode == 0, res.stderr
    trains = [line.split() for line in (tmp_path / "log").read_text(encoding="utf-8").splitlines()
              if line.startswith("longiseg train")]
    assert len(trains) == 2
    for size, args in zip((64, 40), trains, strict=True):
        crops = [a for a in args if a.startswith("data.crop_size=")]
        assert crops[-1] == f"data.crop_size={size}" and "trainer.max_epochs=1" in args  # the last value wins
