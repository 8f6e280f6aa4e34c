"""The modules of `sidecar` import one another without cycles.

Every `import` and `from ... import` in every module counts, wherever it stands: at module level, under
`if TYPE_CHECKING:`, inside a function body. A type-only or deferred import still ties two modules together;
a cycle among them means neither can be read, tested or compiled apart from the other. Importing a submodule
does not count as importing its package's `__init__` (Python loads the package first, but that is not a
dependency the submodule's code has).
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "sidecar"

# Groups of modules whose cycles among themselves are not yet taken apart (none today). A cycle passes only when
# all its modules lie in one group, so no new cycle can appear elsewhere.
KNOWN_CYCLE_GROUPS: tuple[frozenset[str], ...] = ()


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def imported(name: str, path: Path, known: set[str]) -> Iterator[str]:
    """The sidecar modules that module `name` (at `path`) imports, anywhere in its body."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield from _resolve(alias.name, known)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            for alias in node.names:
                submodule = f"{base}.{alias.name}"
                yield from _resolve(submodule if submodule in known else base, known)


def _resolve(dotted: str, known: set[str]) -> Iterator[str]:
    """The longest known module that `dotted` names (`import a.b.c` loads a.b.c, or a.b if c is an attribute)."""
    parts = dotted.split(".")
    while parts:
        candidate = ".".join(parts)
        if candidate in known:
            yield candidate
            return
        parts.pop()


def import_graph() -> dict[str, set[str]]:
    found = modules()
    known = set(found)
    return {name: {m for m in imported(name, path, known) if m != name} for name, path in found.items()}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One shortest cycle through each strongly connected component of more than one module."""
    return [cycle for _, cycle in cycles_by_component(graph)]


def cycles_by_component(graph: dict[str, set[str]]) -> list[tuple[set[str], list[str]]]:
    """The strongly connected components with more than one module (Tarjan), each with one cycle through it."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[set[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = set()
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.add(w)
                if w == v:
                    break
            if len(component) > 1:
                components.append(component)

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return [(c, _one_cycle(graph, c)) for c in components]


def _one_cycle(graph: dict[str, set[str]], component: set[str]) -> list[str]:
    """A shortest path from the component's first module back to itself, staying inside the component."""
    start = min(component)
    paths = {start: [start]}
    frontier = [start]
    while frontier:
        nxt = []
        for v in frontier:
            for w in sorted(graph[v] & component):
                if w == start:
                    return [*paths[v], start]
                if w not in paths:
                    paths[w] = [*paths[v], w]
                    nxt.append(w)
        frontier = nxt
    raise AssertionError(f"{sorted(component)} is not strongly connected")


def test_the_graph_sees_type_checking_and_deferred_imports() -> None:
    graph = import_graph()
    assert "sidecar.proxy.http1" in graph["sidecar.proxy.downstream"]  # module level
    assert "sidecar.overload.guard" in graph["sidecar.proxy.server"]  # under `if TYPE_CHECKING:`
    assert "sidecar.proxy.tracecontext" in graph["sidecar.proxy.exchange"]  # `from sidecar.proxy import module`


def test_the_cycle_finder_reports_each_cycle_once_with_its_path() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a", "d"}, "d": set(), "e": {"f"}, "f": {"e"}}
    assert sorted(cycles(graph)) == [["a", "b", "c", "a"], ["e", "f", "e"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_sidecar_modules_import_each_other_without_cycles() -> None:
    new = [f"{' -> '.join(cycle)}  (all of: {', '.join(sorted(component))})"
           for component, cycle in cycles_by_component(import_graph())
           if not any(component <= group for group in KNOWN_CYCLE_GROUPS)]
    assert not new, "import cycles among sidecar modules:\n" + "\n".join(new)


def test_the_proxy_engine_does_not_import_telemetry() -> None:
    """The engine sits below telemetry: trace-context parsing both need is in sidecar.proxy.tracecontext."""
    graph = import_graph()
    upward = sorted(f"{name} -> {dep}" for name, deps in graph.items() if name.startswith("sidecar.proxy")
                    for dep in deps if dep.startswith("sidecar.telemetry"))
    assert not upward
