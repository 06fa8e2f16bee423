"""The examples/ folder: configs load and name registered models with the paper's settings, scripts parse,
the shell helpers pick the right config, and the Python helpers convert and summarise tiny cohorts."""

from __future__ import annotations

import importlib.util
import json
import py_compile
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
    texts = [p.read_text() for p in [*SHELL, *CONFIGS, EXAMPLES / "README.md"]]
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


@pytest.mark.parametrize("path", PYTHON, ids=lambda p: p.name)
def test_python_script_compiles(path: Path) -> None:
    py_compile.compile(str(path), doraise=True)


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
