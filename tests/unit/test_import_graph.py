"""No import cycles between the project's modules (function-level and TYPE_CHECKING imports count): a
cycle means a piece cannot be read, tested or changed without the other. Shared errors and types live in
leaf modules; collaborators are passed in."""
from __future__ import annotations

import ast
import functools
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = {
    "lookalike": ROOT / "lookalike",
    "lookalike_gateway": ROOT / "services/gateway/lookalike_gateway",
    "lookalike_search": ROOT / "services/search/lookalike_search",
    "lookalike_embedder": ROOT / "services/embedder/lookalike_embedder",
}


@functools.cache
def modules() -> dict[str, Path]:
    """Dotted module name -> file, for every hand-written module (generated stubs left out)."""
    found = {}
    for package, root in PACKAGES.items():
        for path in root.rglob("*.py"):
            if "_pb2" in path.name:
                continue
            parts = [part for part in path.relative_to(root).with_suffix("").parts if part != "__init__"]
            found[".".join([package, *parts])] = path
    return found


def import_graph(found: dict[str, Path]) -> dict[str, set[str]]:
    """module -> the project modules it imports anywhere in its body."""
    graph: dict[str, set[str]] = {name: set() for name in found}
    for name, path in found.items():
        package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = (".".join(package[:len(package) - node.level + 1] + ([node.module] if node.module else []))
                        if node.level else node.module or "")
                targets = [base] + [f"{base}.{alias.name}" for alias in node.names]
            else:
                continue
            graph[name].update(t for t in targets if t in found and t != name)
    return graph


@functools.cache
def project_graph() -> dict[str, set[str]]:
    return import_graph(modules())


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = 0
    for start in graph:
        if start in index:
            continue
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = counter
        counter += 1
        stack.append(start)
        on_stack.add(start)
        while work:
            node, edges = work[-1]
            for nxt in edges:
                if nxt not in index:
                    index[nxt] = low[nxt] = counter
                    counter += 1
                    stack.append(nxt)
                    on_stack.add(nxt)
                    work.append((nxt, iter(sorted(graph[nxt]))))
                    break
                if nxt in on_stack:
                    low[node] = min(low[node], index[nxt])
            else:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[node])
                if low[node] == index[node]:
                    component = []
                    while True:
                        member = stack.pop()
                        on_stack.discard(member)
                        component.append(member)
                        if member == node:
                            break
                    if len(component) > 1:
                        found.append(sorted(component))
    return found


def test_the_cycle_finder_finds_a_function_level_cycle(tmp_path):
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert cycles(graph) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


@pytest.mark.parametrize("package", sorted(PACKAGES))
def test_no_import_cycle(package):
    graph = project_graph()
    within = [c for c in cycles(graph) if any(m == package or m.startswith(package + ".") for m in c)]
    assert within == [], "import cycles (function-level imports count): " + "; ".join(" <-> ".join(c) for c in within)
