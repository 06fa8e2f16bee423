"""MkDocs hook: the docstrings cross-reference with reST roles (``:func:`build_model```), which mkdocstrings'
Google style leaves as text (":func:" before the name). After the build, each role becomes its name in code,
linked to the API reference where the name identifies one documented object (by its full path, or by a dotted
tail that only one documented object ends with); a reST literal-block marker (``::`` ending a paragraph) becomes
one colon.
"""

from __future__ import annotations

import html
import os
import re
from pathlib import Path
from typing import Any

_ROLE = re.compile(r":(?:func|class|meth|attr|data|mod|exc|obj):<code>(~?)([^<]+)</code>")
_ANCHOR = re.compile(r'id="(longiseg(?:\.[A-Za-z0-9_]+)+)"')


def _targets(api_page: Path) -> tuple[set[str], dict[str, set[str]]]:
    """The documented objects' paths on the API page, and for every dotted tail the paths ending with it."""
    paths = set(_ANCHOR.findall(api_page.read_text(encoding="utf-8"))) if api_page.is_file() else set()
    by_tail: dict[str, set[str]] = {}
    for path in paths:
        parts = path.split(".")
        for i in range(1, len(parts)):
            by_tail.setdefault(".".join(parts[i:]), set()).add(path)
    return paths, by_tail


def on_post_build(config: Any, **kwargs: Any) -> None:
    site = Path(config["site_dir"])
    api_page = site / "api" / "index.html"
    paths, by_tail = _targets(api_page)

    def render(page: Path, match: re.Match) -> str:
        name = html.unescape(match.group(2)).removesuffix("()")
        shown = name.rsplit(".", 1)[-1] if match.group(1) else name
        found = {name} if name in paths else by_tail.get(name, set())
        code = f"<code>{html.escape(shown)}</code>"
        if len(found) != 1:
            return code
        where = "" if page == api_page else os.path.relpath(api_page, page.parent).replace(os.sep, "/")
        return f'<a href="{where}#{next(iter(found))}">{code}</a>'

    for page in site.rglob("*.html"):
        text = page.read_text(encoding="utf-8")
        new = _ROLE.sub(lambda m, page=page: render(page, m), text).replace("::</p>", ":</p>")
        if new != text:
            page.write_text(new, encoding="utf-8")
