"""The HTTP/2 connection core the proxy runs, chosen once at import by the environment variable
``SIDECAR_H2_CORE``: ``own`` (the default) for ``sidecar.http2.core``, compiled with mypyc; ``h2`` for
``sidecar.http2.connection_h2``, over python-hyper's ``h2`` (installed with the dev extras, not by default).
Both have the same interface and events; tests/fuzz/test_http2_cores.py feeds them the same bytes.
"""

from __future__ import annotations

import os
from typing import Final

CORE: Final = os.environ.get("SIDECAR_H2_CORE", "own")
if CORE not in ("own", "h2"):
    raise ImportError(f"SIDECAR_H2_CORE: must be own or h2 (got {CORE})")

if CORE != "h2":
    from sidecar.http2.core import H2Connection as H2Connection
else:
    try:
        from sidecar.http2.connection_h2 import HyperH2Connection as H2Connection  # type: ignore[assignment]
    except ModuleNotFoundError as e:
        raise ImportError(f"SIDECAR_H2_CORE=h2 needs python-hyper's h2 (pip install 'h2>=4.1'): {e}") from e

from sidecar.http2.core import H2UsageError as H2UsageError  # noqa: E402

__all__ = ["CORE", "H2Connection", "H2UsageError"]
