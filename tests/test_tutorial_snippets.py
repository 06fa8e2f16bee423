"""Every Python snippet of the tutorials runs: the ```python blocks of each page are executed in order, in one
namespace, in an empty folder (with ``examples/`` available), and the printed shapes are checked."""

from __future__ import annotations

import contextlib
import io
import os
import re
from pathlib import Path

import pytest

import longiseg

ROOT = Path(__file__).resolve().parents[1]
TUTORIALS = ROOT / "docs" / "tutorials"
_BLOCK = re.compile(r"^```python\n(.*?)^```", re.S | re.M)


def python_blocks(page: str) -> list[str]:
    """The ```python blocks of a tutorial page, in order."""
    blocks = _BLOCK.findall((TUTORIALS / page).read_text(encoding="utf-8"))
    assert blocks, f"{page} has no python snippet"
    return blocks


def run_page(page: str, workdir: Path) -> tuple[dict, str]:
    """Execute a page's snippets in ``workdir``; returns the namespace and everything they printed."""
    (workdir / "examples").symlink_to(ROOT / "examples")
    namespace: dict = {"__name__": f"tutorial_{page.replace('-', '_').removesuffix('.md')}"}
    out = io.StringIO()
    cwd = os.getcwd()
    os.chdir(workdir)
    try:
        with contextlib.redirect_stdout(out):
            for i, block in enumerate(python_blocks(page)):
                exec(compile(block, f"{page}[python block {i}]", "exec"), namespace)  # noqa: S102
    finally:
        os.chdir(cwd)
    return namespace, out.getvalue()


def test_own_data(tmp_path: Path) -> None:
    ns, printed = run_page("own-data.md", tmp_path)
    assert (tmp_path / "my_cohort" / "manifest.json").is_file()
    assert "3 of 6 cases progress" in printed
    assert "'t1_t2.nii.gz'" in printed
    cfg = ns["cfg"]
    assert cfg.data.root == "data/my_ms/train" and cfg.data.crop_size == 96
    assert (tmp_path / "my_ms.yaml").is_file()
    from longiseg.workflows import ExperimentConfig

    assert ExperimentConfig.from_file(tmp_path / "my_ms.yaml") == cfg


def test_add_model(tmp_path: Path) -> None:
    try:
        ns, printed = run_page("add-model.md", tmp_path)
        assert "['tiny_fusion_net']" in printed
        out = ns["out"]
        assert tuple(out.baseline.shape) == (4, 1, 32, 32)
        assert tuple(out.progression.shape) == (4, 2, 1, 32, 32)
        assert ns["baseline_prob"].shape == (24, 40, 36)
        assert ns["progression_prob"].shape == (2, 24, 40, 36)
        assert longiseg.model_info("tiny_fusion_net").dim == "2.5D"
        with pytest.raises(ValueError, match="images must be"):
            ns["model"](ns["torch"].randn(4, 2, 2, 32, 32))
    finally:
        if longiseg.is_model("tiny_fusion_net"):
            longiseg.registry.unregister_model("tiny_fusion_net")


def test_mast_block(tmp_path: Path) -> None:
    ns, printed = run_page("mast-block.md", tmp_path)
    assert tuple(ns["out"].progression.shape) == (2, 1, 1, 32, 32)
    assert tuple(ns["mixed"].shape) == (1, 2, 4, 6, 6, 16)
    assert printed.splitlines()[-2].strip() == "True"          # gradients reach the Mamba projections


def test_evaluate(tmp_path: Path) -> None:
    ns, printed = run_page("evaluate.md", tmp_path)
    a, b = ns["a"], ns["b"]
    assert a.table.summary("dice", kind="NP").mean == 1.0       # nothing predicted for stable follow-ups
    assert b.table.summary("dice", kind="NP").mean < 1.0        # speckles on stable follow-ups
    assert b.table.summary("dice", kind="B").mean == 1.0
    assert {"table.txt", "summary.csv", "per_case.csv", "boxplot.png"} <= set(
        p.name for p in (tmp_path / "reports" / "ab").iterdir())
    assert "model_a" in ns["text"] and "model_b" in ns["text"]


def test_raw_to_report(tmp_path: Path) -> None:
    import nibabel as nib
    import numpy as np

    _, printed = run_page("raw-to-report.md", tmp_path)
    assert printed.count("follow-up rescanned on a grid of (232, 188, 66)") == 2
    for case in ("demo-000", "demo-001"):
        follow = nib.load(str(tmp_path / "raw" / case / "t1_flair.nii.gz"))
        base = nib.load(str(tmp_path / "raw" / case / "t0_flair.nii.gz"))
        assert np.allclose(follow.header.get_zooms(), (1.0, 1.0, 3.0)) and base.shape == (98, 116, 94)
