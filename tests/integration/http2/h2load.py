"""h2load (Debian nghttp2-client) run to the end, every request counted."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

SUMMARY = re.compile(r"requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded, (\d+) failed")


def h2load_all_2xx(url: str, body: Path, authority: str, *, requests: int = 3000, clients: int = 4,
                   streams: int = 10, timeout: float = 180.0) -> str:
    """POST ``body`` ``requests`` times over ``clients`` h2c connections of ``streams`` streams each; every one
    must be answered 2xx. Returns h2load's report."""
    out = subprocess.run(["h2load", "-n", str(requests), "-c", str(clients), "-m", str(streams), "-d", str(body),
                          "-H", f":authority: {authority}", url],
                         capture_output=True, timeout=timeout, check=True, text=True).stdout
    done = SUMMARY.search(out)
    assert done is not None, out
    n = str(requests)
    assert done.groups() == (n, n, n, n, "0"), out
    assert f"status codes: {n} 2xx" in out, out
    return out
