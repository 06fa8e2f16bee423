"""The package's layering (docs/architecture.md): no import cycle, imports only go down, a light ``import longiseg``.

The graph is built from the source with ``ast``: one node per module of ``longiseg``, one edge per
``import``/``from ... import`` executed when the module is imported (module level, including ``try``/``if``
bodies and class bodies, excluding ``if TYPE_CHECKING:`` blocks and imports inside functions, which run
later). ``from package import name`` points at ``package.name`` when that is a module, else at ``package``,
as in import-linter; importing a submodule is not counted as importing its parent package. That graph must
be acyclic; the layering rule (imports only go down the table of docs/architecture.md) holds for every import,
including those inside functions.
"""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "longiseg"

#: Rank of each top-level part of the package (``longiseg.<part>``; ``""`` is the package's ``__init__``).
#: A module may import its own part and parts of a *lower* rank, never a part of its own or a higher rank.
LAYERS: dict[str, int] = {
    "_version": 0, "utils": 0,
    "spec": 1,
    "registry": 2,
    "ssm": 3, "data": 3,
    "networks": 4,
    "losses": 5, "metrics": 5, "inferers": 5, "bridges": 5, "registration": 5,
    "engine": 6, "tuning": 6, "reports": 6,
    "workflows": 7,
    "cli": 8,
    "": 9,
    "__main__": 10,
}

#: Imported only where used (optional or slow to import): ``import longiseg`` must not import them.
# torch._dynamo: torch.compiler.disable at import cost over a second, a cache folder and TORCHINDUCTOR_CACHE_DIR
LAZY_MODULES = ("cc3d", "matplotlib", "monai", "nibabel", "nilearn", "numba", "SimpleITK", "timm", "torchvision",
                "torch._dynamo")


def _modules() -> dict[str, tuple[Path, bool]]:
    """Dotted module name -> (file, is a package ``__init__``)."""
    mods = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = list(path.relative_to(ROOT).with_suffix("").parts)
        is_package = parts[-1] == "__init__"
        if is_package:
            parts = parts[:-1]
        mods[".".join(parts)] = (path, is_package)
    return mods


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _import_time_imports(body: list[ast.stmt]) -> list[ast.Import | ast.ImportFrom]:
    """The import statements that run when a module body runs (not in functions or TYPE_CHECKING blocks)."""
    found: list[ast.Import | ast.ImportFrom] = []
    for node in body:
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            found.append(node)
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            continue
        elif isinstance(node, ast.If):
            if not _is_type_checking(node.test):
                found += _import_time_imports(node.body)
            found += _import_time_imports(node.orelse)
        else:  # try/with/for/while/class/match bodies run at import time
            for field in ("body", "orelse", "finalbody"):
                found += _import_time_imports(getattr(node, field, []))
            for handler in getattr(node, "handlers", []):
                found += _import_time_imports(handler.body)
            for case in getattr(node, "cases", []):
                found += _import_time_imports(case.body)
    return found


def _targets(node: ast.Import | ast.ImportFrom, module: str, is_package: bool, mods: dict) -> set[str]:
    """The ``longiseg`` modules one import statement imports."""

    def owner(name: str) -> str | None:  # the longest prefix of ``name`` that is a module of the package
        parts = name.split(".")
        while parts and ".".join(parts) not in mods:
            parts.pop()
        return ".".join(parts) or None

    if isinstance(node, ast.Import):
        return {m for m in (owner(a.name) for a in node.names) if m}
    if node.level:
        base = module.split(".") if is_package else module.split(".")[:-1]
        base = base[: len(base) - node.level + 1]
        source = ".".join(base + ([node.module] if node.module else []))
    else:
        source = node.module or ""
    out = set()
    for alias in node.names:
        sub = f"{source}.{alias.name}"
        target = sub if sub in mods else owner(source)
        if target:
            out.add(target)
    return out


def import_graph() -> dict[str, set[str]]:
    """Module -> the ``longiseg`` modules it imports at import time."""
    mods = _modules()
    graph = {}
    for module, (path, is_package) in mods.items():
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        edges: set[str] = set()
        for node in _import_time_imports(tree.body):
            edges |= _targets(node, module, is_package, mods)
        graph[module] = edges - {module}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle ``[a, b, ..., a]`` of ``graph``, or ``None`` (iterative depth-first search)."""
    state: dict[str, int] = {}  # 1: on the current path, 2: finished
    for start in sorted(graph):
        if start in state:
            continue
        path, stack = [start], [iter(sorted(graph[start]))]
        state[start] = 1
        while stack:
            nxt = next(stack[-1], None)
            if nxt is None:
                state[path.pop()] = 2
                stack.pop()
            elif state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            elif nxt not in state:
                state[nxt] = 1
                path.append(nxt)
                stack.append(iter(sorted(graph.get(nxt, ()))))
    return None


def part(module: str) -> str:
    """``longiseg.networks.nets.segmast`` -> ``networks``; the package itself -> ``""``."""
    return module.split(".")[1] if "." in module else ""


def test_graph_reader_sees_imports() -> None:
    graph = import_graph()
    assert "longiseg.registry" in graph["longiseg.networks.nets.segmast"]
    assert "longiseg.networks.nets" in graph["longiseg"]
    assert "longiseg.networks.nets" not in graph["longiseg.registry"]


def test_find_cycle_reports_the_cycle() -> None:
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set(), "c": {"a", "b"}}) is None


def test_no_import_cycle() -> None:
    cycle = find_cycle(import_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


def test_every_part_has_a_layer() -> None:
    parts = {part(m) for m in import_graph()}
    unknown, gone = sorted(parts - set(LAYERS)), sorted(set(LAYERS) - parts)
    assert not unknown, f"add {unknown} to LAYERS here and to the table in docs/architecture.md"
    assert not gone, f"remove {gone} from LAYERS here and from the table in docs/architecture.md"


def test_imports_only_go_down_the_layers() -> None:
    wrong = [
        f"{module} ({part(module) or 'longiseg'}, rank {LAYERS[part(module)]}) imports {target} "
        f"({part(target) or 'longiseg'}, rank {LAYERS[part(target)]})"
        for module, targets in sorted(import_graph().items())
        for target in sorted(targets)
        if part(target) != part(module) and LAYERS[part(target)] >= LAYERS[part(module)]
    ]
    assert not wrong, "imports against the layering of docs/architecture.md:\n" + "\n".join(wrong)


def test_imports_inside_functions_also_go_down() -> None:
    """A lazy import is still an import: e.g. the registry may not import the models even inside a function."""
    mods = _modules()
    wrong = []
    for module, (path, is_package) in sorted(mods.items()):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                wrong += [
                    f"{path.relative_to(ROOT)}:{node.lineno} imports {target}"
                    for target in sorted(_targets(node, module, is_package, mods))
                    if part(target) != part(module) and LAYERS[part(target)] >= LAYERS[part(module)]
                ]
    assert not wrong, "imports against the layering of docs/architecture.md:\n" + "\n".join(wrong)


def test_import_longiseg_is_light_and_fills_the_registry() -> None:
    code = (
        "import sys, longiseg\n"
        f"print(sorted(m for m in {LAZY_MODULES!r} if m in sys.modules))\n"
        "print('segmast_ms' in longiseg.list_models(), 'dynunet_3d' in longiseg.list_models())\n"
    )
    run = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    imported, registered = run.stdout.strip().splitlines()
    assert imported == "[]", f"import longiseg imported {imported}; import them where they are used"
    assert registered == "True True", "import longiseg must register the built-in models"


def test_constant_under_compile_sets_the_mark_torch_sets() -> None:
    """constant_under_compile marks without importing torch._dynamo; the mark must stay the one torch's
    assume_constant_result sets (else torch.compile would trace into a cached import again)."""
    import torch

    from longiseg.utils.tracing import constant_under_compile

    def ours() -> bool:
        return True

    def theirs() -> bool:
        return True

    assert vars(constant_under_compile(ours)) == vars(torch.compiler.assume_constant_result(theirs))


def test_outside_compiled_graphs_runs_eagerly_under_compile() -> None:
    import torch

    from longiseg.utils.tracing import is_compiling, outside_compiled_graphs

    seen = []

    @outside_compiled_graphs
    def double(x: torch.Tensor) -> torch.Tensor:
        seen.append(is_compiling())
        for _ in range(2):  # a loop dynamo would unroll
            x = x * 2
        return x

    x = torch.arange(4.0, requires_grad=True)
    assert torch.equal(double(x), x * 4)
    import torch._dynamo  # loaded, as building a model loads it (timm), and build_model then makes the wrappers

    from longiseg.utils.tracing import prepare_compiled_graph_breaks

    prepare_compiled_graph_breaks()
    explained = torch._dynamo.explain(lambda v: double(v + 1) - 1)(x.detach())
    reasons = [str(b.reason) for b in explained.break_reasons]
    assert reasons and not [r for r in reasons if "was called inside a compiled region" in r], reasons
    seen.clear()
    compiled = torch.compile(lambda v: double(v + 1) - 1, backend="eager")
    y = compiled(x)
    y.sum().backward()
    assert torch.equal(y, (x + 1) * 4 - 1) and torch.equal(x.grad, torch.full((4,), 4.0))
    assert seen == [False]  # inside, dynamo does not trace
    assert double.__name__ == "double"


def test_docs_table_states_the_layers() -> None:
    """The table in docs/architecture.md ("How the package is layered") is the rule enforced here."""
    text = (ROOT / "docs" / "architecture.md").read_text(encoding="utf-8")
    section = text.split("## How the package is layered", 1)[1].split("\n## ", 1)[0]
    documented = {}
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 3 and cells[0].isdigit():
            for name in re.findall(r"`([^`]+)`", cells[1]):
                documented["" if name == "longiseg" else name] = int(cells[0])
    assert documented == LAYERS
