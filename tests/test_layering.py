"""The library's rooms stand on each other in one direction: no import circle among the modules
of ``avsslib`` and no library module that imports the command line (``avsslib.cli``).

Imports are read with ``ast`` from the source (module level and inside functions alike: a lazy
import is still a dependency), so nothing is executed. Imports under ``if TYPE_CHECKING:`` are
for annotations only and never run; they are left out.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "avsslib"

#: modules allowed to import ``avsslib.cli``: the ``python -m avsslib`` entry point only
CLI_IMPORTERS_ALLOWED = {"avsslib.__main__"}

#: the ground floor (DESIGN.md): imports nothing of avsslib but these
GROUND_FLOOR = {"avsslib.errors": set(), "avsslib.paths": set(), "avsslib.fs": {"avsslib.errors"}}


def _modules(package: Path) -> dict[str, Path]:
    out = {}
    for path in package.rglob("*.py"):
        parts = list(path.relative_to(package.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def _is_type_checking(node: ast.AST) -> bool:
    test = getattr(node, "test", None)
    return isinstance(node, ast.If) and (
        (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING")
        or (isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")
    )


def _runtime_nodes(tree: ast.AST) -> list[ast.AST]:
    """Every node of ``tree`` except those under ``if TYPE_CHECKING:``."""
    out, todo = [], [tree]
    while todo:
        node = todo.pop()
        out.append(node)
        if _is_type_checking(node):
            todo.extend(getattr(node, "orelse", []))
            continue
        todo.extend(ast.iter_child_nodes(node))
    return out


def import_graph(package: Path = PACKAGE) -> dict[str, set[str]]:
    """``{module: modules of the package it imports}`` (``from a import b`` counts as module
    ``a.b`` when that is a module, else ``a``)."""
    modules = _modules(package)

    def resolve(name: str) -> str | None:
        while name and name not in modules:
            name = name.rpartition(".")[0]
        return name or None

    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        found: set[str | None] = set()
        for node in _runtime_nodes(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                found |= {resolve(a.name) for a in node.names if a.name.startswith("avsslib")}
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
                    base = base[: len(base) - node.level + 1]
                    source = ".".join(base + ([node.module] if node.module else []))
                else:
                    source = node.module or ""
                if source.split(".")[0] != "avsslib":
                    continue
                for alias in node.names:
                    full = f"{source}.{alias.name}"
                    found.add(full if full in modules else resolve(source))
        graph[name] = {m for m in found if m is not None and m != name}
    return graph


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_no_import_circle_in_the_library():
    assert circles(import_graph()) == []


def test_no_library_module_imports_the_command_line():
    graph = import_graph()
    offenders = sorted(
        m
        for m, deps in graph.items()
        if not m.startswith("avsslib.cli")
        and m not in CLI_IMPORTERS_ALLOWED
        and any(d == "avsslib.cli" or d.startswith("avsslib.cli.") for d in deps)
    )
    assert offenders == []


def test_ground_floor_imports_nothing_above_it():
    graph = import_graph()
    for module, allowed in GROUND_FLOOR.items():
        assert graph[module] <= allowed, f"{module} imports {sorted(graph[module] - allowed)}"


def test_the_checks_see_a_circle_and_a_cli_import(tmp_path):
    """The walker itself: a two-module circle through a lazy import, and a relative import."""
    pkg = tmp_path / "avsslib"
    (pkg / "cli").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "cli" / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from avsslib import b\n")
    (pkg / "b.py").write_text("def f():\n    from .a import x\n")
    (pkg / "c.py").write_text("from avsslib.cli import main\n")
    (pkg / "d.py").write_text(
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from avsslib import a\n"
    )
    graph = import_graph(pkg)
    assert circles(graph) == [["avsslib.a", "avsslib.b"]]
    assert graph["avsslib.c"] == {"avsslib.cli"}
    assert graph["avsslib.d"] == set()  # annotations only
