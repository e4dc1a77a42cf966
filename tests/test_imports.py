"""curate's modules import one another without circles (parsed with ``ast``, nothing imported).

Every ``import`` counts, at module level or inside a function, so a lazy import cannot hide a
circle; only ``if TYPE_CHECKING:`` blocks are skipped, since they never run.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = "curate"


def module_files(root: Path = ROOT) -> dict[str, Path]:
    """Module name → file, for every ``.py`` file of the package (``pkg/__init__.py`` is ``pkg``)."""
    found = {}
    for path in sorted((root / PACKAGE).rglob("*.py")):
        parts = path.relative_to(root).with_suffix("").parts
        found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def _runtime_nodes(tree: ast.AST) -> list[ast.AST]:
    """Every node of ``tree`` except those under ``if TYPE_CHECKING:``."""
    nodes, todo = [], [tree]
    while todo:
        node = todo.pop()
        nodes.append(node)
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            todo.extend(node.orelse)
            continue
        todo.extend(ast.iter_child_nodes(node))
    return nodes


def imported_names(module: str, path: Path) -> set[str]:
    """Dotted names ``module`` imports (``from a import b`` gives ``a.b``, relative ones resolved)."""
    package = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
    names = set()
    for node in _runtime_nodes(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join([*package[: len(package) - node.level + 1], *([base] if base else [])])
            names |= {f"{base}.{alias.name}" for alias in node.names}
    return names


def import_graph(files: dict[str, Path]) -> dict[str, set[str]]:
    """Module → the package's modules it imports (a name resolves to its longest module prefix)."""

    def resolve(name: str) -> str | None:
        while name and name not in files:
            name = name.rpartition(".")[0]
        return name or None

    graph = {}
    for module, path in files.items():
        targets = {resolve(name) for name in imported_names(module, path) if name.split(".")[0] == PACKAGE}
        graph[module] = {t for t in targets if t and t != module}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import circle as a path ``[a, b, ..., a]``, or None (iterative depth-first search)."""
    done: set[str] = set()
    for start in sorted(graph):
        if start in done:
            continue
        path, stack = [start], [iter(sorted(graph[start]))]
        while stack:
            nxt = next(stack[-1], None)
            if nxt is None:
                done.add(path.pop())
                stack.pop()
            elif nxt in path:
                return [*path[path.index(nxt) :], nxt]
            elif nxt not in done:
                path.append(nxt)
                stack.append(iter(sorted(graph[nxt])))
    return None


def test_finds_a_circle_through_a_function_level_import(tmp_path: Path) -> None:
    """The checker itself: a lazy import closing a circle is found; a TYPE_CHECKING one is not."""
    pkg = tmp_path / PACKAGE / "sub"
    pkg.mkdir(parents=True)
    (tmp_path / PACKAGE / "__init__.py").write_text("")
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from curate.sub import b\n")
    (pkg / "b.py").write_text("def f():\n    from . import c\n")
    (pkg / "c.py").write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from curate.sub.a import x\n")
    files = module_files(tmp_path)
    assert find_cycle(import_graph(files)) is None
    (pkg / "c.py").write_text("import curate.sub.a\n")
    assert find_cycle(import_graph(files)) == ["curate.sub.a", "curate.sub.b", "curate.sub.c", "curate.sub.a"]


def test_no_import_circles() -> None:
    files = module_files()
    graph = import_graph(files)
    assert {"curate.cli", "curate.run", "curate.report.html"} <= set(graph)
    assert "curate.train.cli_eval" in graph["curate.cli"]
    assert find_cycle(graph) is None, " -> ".join(find_cycle(graph) or [])
