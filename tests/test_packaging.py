"""The source distribution holds every tracked file its test suite, benchmarks, examples and docs need: it shipped
the test modules without conftest.py and the helpers they import, so its tests failed at collection."""

from __future__ import annotations

import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _tracked() -> list[str]:
    if shutil.which("git") is None or not (ROOT / ".git").exists():
        pytest.skip("needs a git checkout to list the tracked files")
    out = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True).stdout
    return [p for p in out.decode().split("\0") if p and (ROOT / p).is_file()]


def test_the_sdist_holds_every_tracked_file(tmp_path: Path) -> None:
    pytest.importorskip("setuptools.build_meta")
    tracked = _tracked()
    src = tmp_path / "src"
    for rel in tracked:  # a copy: building writes an egg-info folder beside the sources
        (src / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / rel, src / rel)
    code = "import sys; from setuptools import build_meta; print(build_meta.build_sdist(sys.argv[1]))"
    done = subprocess.run([sys.executable, "-c", code, str(tmp_path / "dist")], cwd=src, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    name = done.stdout.strip().splitlines()[-1]
    with tarfile.open(tmp_path / "dist" / name) as tar:
        members = {m.name.split("/", 1)[1] for m in tar.getmembers() if m.isfile() and "/" in m.name}
    missing = sorted(p for p in tracked if p not in members and p != ".gitignore")
    assert not missing, missing[:20]
    assert not [m for m in members if "__pycache__" in m or m.endswith((".pyc", ".pyo"))]
