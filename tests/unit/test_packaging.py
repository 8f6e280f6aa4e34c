"""The build's requirements and the package's metadata stay in step with the code."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path

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


def test_an_in_place_build_that_must_compile_fails_instead_of_falling_back(tmp_path: Path) -> None:
    """`make native` sets SIDECAR_REQUIRE_NATIVE=1: a build that cannot compile stops with the reason, where a user's
    `pip install` would fall back to Python (in place, the fallback would leave the previous library loaded)."""
    env = {**os.environ, "SIDECAR_PURE_PYTHON": "1", "SIDECAR_REQUIRE_NATIVE": "1"}
    done = subprocess.run([sys.executable, str(ROOT / "setup.py"), "--quiet", "build_ext", "--build-lib",
                           str(tmp_path)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode != 0
    assert "SIDECAR_REQUIRE_NATIVE=1 wants the compiled request path" in done.stderr
