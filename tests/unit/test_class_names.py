"""No two modules of `sidecar` define a top-level class of the same name.

One name, one thing: a reader who meets ``Decision`` or ``Limits`` should not have to check which module it came
from to know what it is. Read from the source (ast, no import), private classes included.
"""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "sidecar"

# Collisions tolerated for now, each with the rename that removes it (not a place to add new ones). Empty: the list
# only shrinks, and a name that comes back fails the first test.
KNOWN_COLLISIONS: dict[str, frozenset[str]] = {}


def top_level_classes() -> dict[str, set[str]]:
    """Each top-level class name, with the modules (paths from the repository root) defining it."""
    found: dict[str, set[str]] = defaultdict(set)
    for path in sorted(PACKAGE.rglob("*.py")):
        for node in ast.parse(path.read_text(), str(path)).body:
            if isinstance(node, ast.ClassDef):
                found[node.name].add(path.relative_to(PACKAGE.parent).as_posix())
    return found


def collisions(found: dict[str, set[str]]) -> dict[str, set[str]]:
    return {name: modules for name, modules in found.items() if len(modules) > 1}


def test_no_class_name_is_defined_by_two_modules() -> None:
    unexpected = {name: sorted(modules) for name, modules in collisions(top_level_classes()).items()
                  if KNOWN_COLLISIONS.get(name) != modules}
    assert not unexpected, f"one class name for different things in different modules: {unexpected}"


def test_known_collisions_are_still_there() -> None:
    """A collision removed by its rename must leave the list too, so the list only shrinks."""
    found = collisions(top_level_classes())
    gone = sorted(name for name, modules in KNOWN_COLLISIONS.items() if found.get(name) != modules)
    assert not gone, f"these names no longer collide; remove them from KNOWN_COLLISIONS: {gone}"


def test_collisions_finds_a_duplicate() -> None:
    assert collisions({"Limits": {"a.py", "b.py"}, "Cap": {"a.py"}}) == {"Limits": {"a.py", "b.py"}}
