"""Blocking clients for the mesh tests: curl (the real client the issue asks for) and small raw ones."""

from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

CURL = shutil.which("curl")
needs_curl = pytest.mark.skipif(CURL is None, reason="curl (Debian package curl) is not installed")


@dataclass
class Reply:
    status: int
    headers: dict[str, str]
    body: bytes
    size: int = 0          # body bytes downloaded

    def json(self) -> Any:
        return json.loads(self.body)

    @property
    def seen_headers(self) -> dict[str, list[str]]:
        """For /headers replies: the headers the app received, by lower-case name."""
        out: dict[str, list[str]] = {}
        for name, value in self.json()["headers"]:
            out.setdefault(name.lower(), []).append(value)
        return out

    @property
    def error(self) -> dict[str, Any]:
        error: dict[str, Any] = self.json()["error"]
        return error

    def __repr__(self) -> str:
        return f"<Reply {self.status} {self.body[:300]!r}>"


def curl(*args: str, timeout: float = 20.0, keep_body: bool = True) -> Reply:
    """Run curl with ``args`` (a URL and options); the status, headers (last response) and body (or only its
    size, when not ``keep_body``)."""
    assert CURL is not None
    with tempfile.TemporaryDirectory(prefix="mesh-curl-") as folder:
        head, body = Path(folder) / "head", Path(folder) / "body"
        sink = str(body) if keep_body else "/dev/null"
        out = subprocess.run([CURL, "-sS", "-D", str(head), "-o", sink, "-w", "%{http_code} %{size_download}",
                              *args], capture_output=True, timeout=timeout)
        assert out.returncode == 0, f"curl failed ({out.returncode}): {out.stderr.decode()}"
        headers: dict[str, str] = {}
        for line in head.read_bytes().decode("latin-1").split("\r\n"):
            if line.startswith("HTTP/"):
                headers = {}  # keep the last response's (after a 100 Continue)
            elif ":" in line:
                name, _, value = line.partition(":")
                headers[name.strip().lower()] = value.strip()
        status, size = out.stdout.decode().split()
        return Reply(int(status), headers, body.read_bytes() if body.exists() else b"", int(size))
