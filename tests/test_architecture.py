"""The shape of the code, checked from its source: who may import whom.

The graph is built with ``ast`` from every ``import`` in ``engine/`` and ``gui/``, those
inside functions included (an import dodged into a function is still a dependency). The
method registry finds its methods by scanning its package, so it counts as importing
each of them.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("engine", "gui")
QT_MODULES = ("PySide6", "PyQt5", "PyQt6", "shiboken6", "pyqtgraph", "superqt", "qtpy")


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _sources() -> dict[str, Path]:
    return {_module_name(path): path for package in PACKAGES for path in (ROOT / package).rglob("*.py")}


def _imports(name: str, path: Path, known: set[str]) -> set[str]:
    """Every module ``name`` imports: our own resolved to a file's module, others by top name."""
    is_package = path.name == "__init__.py"
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = name.split(".") if is_package else name.split(".")[:-1]
                base = base[: len(base) - (node.level - 1)]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            # `from package import module` imports the module; `from module import name` the module.
            targets = [f"{module}.{alias.name}" if f"{module}.{alias.name}" in known else module for alias in node.names]
        else:
            continue
        for target in targets:
            if target.split(".")[0] in PACKAGES:
                while target not in known and "." in target:
                    target = target.rsplit(".", 1)[0]
            else:
                target = target.split(".")[0]
            found.add(target)
    found.discard(name)
    return found


def _method_modules(sources: dict[str, Path]) -> set[str]:
    return {name for name, path in sources.items()
            if name.startswith("engine.methods.") and "SPEC = MethodSpec(" in path.read_text()}


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    sources = _sources()
    known = set(sources)
    edges = {name: _imports(name, path, known) for name, path in sources.items()}
    edges["engine.methods"] |= _method_modules(sources)  # the registry scans its package
    return edges


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of two or more modules (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []
    counter = [0]

    def visit(node: str) -> None:
        index[node] = low[node] = counter[0]
        counter[0] += 1
        stack.append(node)
        on_stack.add(node)
        for neighbour in graph.get(node, ()):
            if neighbour not in graph:
                continue
            if neighbour not in index:
                visit(neighbour)
                low[node] = min(low[node], low[neighbour])
            elif neighbour in on_stack:
                low[node] = min(low[node], index[neighbour])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                components.append(sorted(component))

    import sys

    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(max(limit, 10_000))
    try:
        for node in sorted(graph):
            if node not in index:
                visit(node)
    finally:
        sys.setrecursionlimit(limit)
    return components


def test_the_graph_sees_imports_inside_functions(graph):
    # engine.app.cli imports most of what it runs inside its functions, so that --help is quick.
    assert "engine.methods" in graph["engine.app.cli"]
    assert "engine.methods.saliency" in graph["engine.methods"]


def test_no_import_cycles(graph):
    cycles = _cycles(graph)
    assert not cycles, "import cycles:\n" + "\n".join(" <-> ".join(c) for c in cycles)


def test_the_engine_never_imports_qt_or_the_window(graph):
    offenders = {name: sorted(deps & (set(QT_MODULES) | {n for n in graph if n.startswith("gui")}))
                 for name, deps in graph.items() if name.startswith("engine")}
    offenders = {name: deps for name, deps in offenders.items() if deps}
    assert not offenders, offenders


def test_methods_never_import_the_command_line_or_the_session(graph):
    offenders = {name: sorted(dep for dep in deps if dep.startswith(("engine.app", "gui")))
                 for name, deps in graph.items() if name.startswith("engine.methods")}
    offenders = {name: deps for name, deps in offenders.items() if deps}
    assert not offenders, offenders
