"""The documentation site builds with ``mkdocs build --strict`` (no broken links, every API page renders)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.skipif(shutil.which("mkdocs") is None and not (Path(sys.executable).parent / "mkdocs").exists(),
                    reason="mkdocs is not installed (pip install longiseg[docs])")
def test_mkdocs_build_strict(tmp_path: Path) -> None:
    pytest.importorskip("mkdocstrings")
    proc = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
        cwd=ROOT, capture_output=True, text=True, timeout=600,
        env={"NO_MKDOCS_2_WARNING": "1", "PATH": str(Path(sys.executable).parent) + ":/usr/bin:/bin"},
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert (tmp_path / "site" / "index.html").is_file()
    assert (tmp_path / "site" / "api" / "index.html").is_file()


def test_every_docs_page_is_in_the_nav() -> None:
    import yaml

    class _Loader(yaml.SafeLoader):
        pass

    _Loader.add_multi_constructor("tag:yaml.org,2002:python/name:", lambda loader, suffix, node: None)
    nav = yaml.load((ROOT / "mkdocs.yml").read_text(encoding="utf-8"), Loader=_Loader)["nav"]

    def pages(node):  # noqa: ANN001, ANN202
        if isinstance(node, str):
            yield node
        elif isinstance(node, dict):
            for v in node.values():
                yield from pages(v)
        elif isinstance(node, list):
            for v in node:
                yield from pages(v)

    listed = set(pages(nav))
    on_disk = {str(p.relative_to(ROOT / "docs")) for p in (ROOT / "docs").rglob("*.md")}
    assert on_disk <= listed, f"pages missing from the nav: {sorted(on_disk - listed)}"


def test_the_api_index_links_every_rendered_module() -> None:
    # longiseg.networks.inputs was rendered on the API page but missing from the index that claims to link
    # every public module
    import re

    pages = [p.read_text(encoding="utf-8") for p in (ROOT / "docs").rglob("*.md")]
    rendered = {m for text in pages for m in re.findall(r"^::: (longiseg[\w.]*)", text, flags=re.M)}
    index = (ROOT / "docs" / "api.md").read_text(encoding="utf-8").split("## Index", 1)[1]
    linked = set(re.findall(r"\[`(longiseg[\w.]*)`\]\[\1\]", index))
    assert rendered and rendered <= linked, f"rendered but not in the API index: {sorted(rendered - linked)}"


def test_the_data_pages_readers_are_importable_from_longiseg_data() -> None:
    """docs/data.md says every name of its table of readers and writers is importable from longiseg.data;
    case_grid and case_voxel_size were not."""
    import re

    import longiseg.data

    text = (Path(__file__).parents[1] / "docs" / "data.md").read_text(encoding="utf-8")
    table = text[text.index("| what | function | used by |"):]
    table = table[:table.index("\n\n")]
    functions = {m for row in table.splitlines()[2:] for m in re.findall(r"`(?:[a-z_]+\.)?([a-z_][a-z_0-9]*)[(`]",
                                                                          row.split("|")[2])}
    assert {"case_grid", "case_voxel_size", "read_mask_case", "load_case"} <= functions
    assert [f for f in sorted(functions) if not hasattr(longiseg.data, f)] == []
