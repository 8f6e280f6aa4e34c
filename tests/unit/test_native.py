"""The compiled request path: built where a compiler is, and a stale build is noticed."""

from __future__ import annotations

import os
import shutil
import sysconfig
from pathlib import Path

import pytest

from sidecar import native


def test_the_request_path_is_compiled_where_it_can_be() -> None:
    # make (and pip install) compile it with mypyc when gcc and the Python headers are there; a silent fallback to
    # plain Python would pass every other test at a third more CPU per request
    headers = Path(sysconfig.get_paths()["include"]) / "Python.h"
    if os.environ.get("SIDECAR_PURE_PYTHON") == "1" or shutil.which("gcc") is None or not headers.exists():
        pytest.skip("no C toolchain (or SIDECAR_PURE_PYTHON=1): the request path runs as plain Python here")
    assert native.compiled()


def _touch(path: Path, mtime: float) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"")
    os.utime(path, (mtime, mtime))


def test_a_source_edited_after_the_build_is_stale(tmp_path: Path) -> None:
    package = tmp_path / "sidecar"
    _touch(tmp_path / "setup.py", 1000.0)                     # a checkout
    suffix = ".cpython-311-x86_64-linux-gnu.so"
    _touch(package / f"_native__mypyc{suffix}", 2000.0)      # the build
    _touch(package / "proxy" / f"http1{suffix}", 1000.0)     # a shim a rebuild left alone
    _touch(package / "proxy" / "http1.py", 1500.0)           # older than the build: fine
    _touch(package / "proxy" / f"pool{suffix}", 1000.0)
    _touch(package / "proxy" / "pool.py", 2500.0)            # edited after it
    _touch(package / "app.py", 3000.0)                       # not compiled: never stale
    assert native.stale_modules(package) == ["sidecar/proxy/pool.py"]


def test_nothing_is_stale_without_a_build_or_outside_a_checkout(tmp_path: Path) -> None:
    package = tmp_path / "sidecar"
    _touch(package / "proxy" / "pool.py", 2500.0)
    assert native.stale_modules(package) == []
    # an installed package: the installer sets the files' times as it likes, and nothing is rebuilt there
    _touch(package / "_native__mypyc.cpython-311-x86_64-linux-gnu.so", 2000.0)
    _touch(package / "proxy" / "pool.cpython-311-x86_64-linux-gnu.so", 2000.0)
    assert native.stale_modules(package) == []
