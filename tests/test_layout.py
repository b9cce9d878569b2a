"""The house rules of src/bertkit, read from the source: imports point one way (no circle between
modules, counting imports inside functions too) and no module is over 400 lines."""

from __future__ import annotations

import ast
from pathlib import Path

from conftest import REPO

PACKAGE = REPO / "src" / "bertkit"
MAX_LINES = 400


def module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph(root: Path = PACKAGE) -> dict[str, set[str]]:
    """module -> the bertkit modules it imports anywhere in its file (top level or inside a
    function). `from bertkit.x import y` counts as importing bertkit.x.y when that is a module, else
    bertkit.x. A module's own package (`bertkit.tasks` for `bertkit.tasks.pretrain`) and the root
    package (BertkitError) are left out: importing them is not an arrow between layers."""
    files = {module_name(p, root): p for p in root.rglob("*.py")}

    def known(name: str) -> str | None:
        while name and name not in files:
            name = name.rpartition(".")[0]
        return name or None

    graph: dict[str, set[str]] = {}
    for name, path in files.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        targets: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                candidates = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    up = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join(up + ([base] if base else []))
                candidates = [base] + [f"{base}.{a.name}" for a in node.names]
            else:
                continue
            for c in candidates:
                target = known(c)
                if target and target != name and target != "bertkit" and not name.startswith(target + "."):
                    targets.add(target)
        graph[name] = targets
    return graph


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan), each sorted."""
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


def test_the_graph_sees_imports_inside_functions(tmp_path):
    """The checker itself: a circle closed by an import inside a function is found and named."""
    pkg = tmp_path / "bertkit"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "sub" / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from bertkit.sub import b\n")
    (pkg / "sub" / "b.py").write_text("def f():\n    from bertkit import c\n")
    (pkg / "c.py").write_text("from .a import x\n")
    graph = import_graph(pkg)
    assert graph["bertkit.sub.b"] == {"bertkit.c"}
    assert circles(graph) == [["bertkit.a", "bertkit.c", "bertkit.sub.b"]]
    (pkg / "c.py").write_text("import os\n")
    assert circles(import_graph(pkg)) == []


def test_no_import_circles():
    found = circles(import_graph())
    assert not found, "import circles: " + "; ".join(" <-> ".join(c) for c in found)


def test_no_module_over_400_lines():
    long = {str(p.relative_to(PACKAGE)): n for p in PACKAGE.rglob("*.py")
            if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert not long, f"split these where their sections are: {long}"
