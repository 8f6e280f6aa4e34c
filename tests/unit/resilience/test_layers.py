"""The resilience modules import one another one way only (type-only imports included): the pure cores at the
bottom, then the retry rules, the per-cluster state, the per-request Call and the views, and policy.py
composing them on top."""

from __future__ import annotations

import ast
from graphlib import CycleError, TopologicalSorter
from pathlib import Path

import sidecar.resilience

PACKAGE = "sidecar.resilience"
FOLDER = Path(sidecar.resilience.__file__).parent


def imports_of(path: Path) -> set[str]:
    """The sibling modules ``path`` imports, anywhere in the file (``if TYPE_CHECKING:`` blocks too)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module is not None and node.level == 0:
            if node.module == PACKAGE:   # from sidecar.resilience import deadline
                found |= {alias.name for alias in node.names if (FOLDER / f"{alias.name}.py").exists()}
            elif node.module.startswith(PACKAGE + "."):
                found.add(node.module.removeprefix(PACKAGE + ".").split(".")[0])
        elif isinstance(node, ast.ImportFrom) and node.level == 1:
            found |= {node.module.split(".")[0]} if node.module else {alias.name for alias in node.names}
        elif isinstance(node, ast.Import):
            found |= {a.name.removeprefix(PACKAGE + ".").split(".")[0] for a in node.names
                      if a.name.startswith(PACKAGE + ".")}
    return found


def graph() -> dict[str, set[str]]:
    return {path.stem: imports_of(path) for path in FOLDER.glob("*.py") if path.stem != "__init__"}


def test_no_module_imports_back() -> None:
    try:
        order = list(TopologicalSorter(graph()).static_order())
    except CycleError as e:
        raise AssertionError(f"import cycle among the resilience modules: {e.args[1]}") from None
    position = {name: i for i, name in enumerate(order)}
    for lower, upper in [("rules", "cluster"), ("cluster", "retry"), ("cluster", "views"),
                         ("retry", "policy"), ("views", "policy")]:
        assert position[lower] < position[upper], (lower, upper, order)


def test_policy_composes_and_the_parts_do_not_reach_up() -> None:
    g = graph()
    assert {"cluster", "retry", "rules", "views"} <= g["policy"]
    assert all("policy" not in imported for name, imported in g.items() if name != "policy")
    assert "retry" not in g["cluster"] and "views" not in g["cluster"]
