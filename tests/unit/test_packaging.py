"""The build's requirements and the package's metadata stay in step with the code."""

from __future__ import annotations

import re
import tomllib

from sidecar import __version__
from tests.harness import ROOT


def _names(requirements: list[str]) -> set[str]:
    return {re.split(r"[<>=!~;\[ ]", requirement, maxsplit=1)[0].lower() for requirement in requirements}


def test_the_build_can_see_every_runtime_dependency() -> None:
    # mypyc type-checks the request path following its imports into the whole package: a dependency missing from
    # the isolated build environment fails the type check, and the install falls back to plain Python
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    missing = _names(project["project"]["dependencies"]) - _names(project["build-system"]["requires"])
    assert not missing, f"add to [build-system] requires: {sorted(missing)}"


def test_the_version_has_one_source() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert "version" not in project["project"] and "version" in project["project"]["dynamic"]
    assert project["tool"]["setuptools"]["dynamic"]["version"] == {"attr": "sidecar.__version__"}
    assert re.fullmatch(r"\d+\.\d+\.\d+", __version__)
