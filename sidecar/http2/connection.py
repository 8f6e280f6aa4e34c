"""The HTTP/2 connection core the proxy runs, chosen once at import by the environment variable
``SIDECAR_H2_CORE``: ``own`` (the default) for ``sidecar.http2.core``, compiled with mypyc; ``h2`` for
``sidecar.http2.connection_h2``, over python-hyper's ``h2`` (installed with the dev extras, not by default).
Both have the same interface (:class:`H2Core`) and events; tests/fuzz/test_http2_cores.py feeds them the same bytes.
The proxy's compiled modules make their cores with :func:`new_connection` and call them through :class:`H2Core`,
so the choice made here holds for them too (mypyc would otherwise bind them to the compiled class).
"""

from __future__ import annotations

import os
from typing import Final, Protocol

from sidecar.http2.events import Event, Headers
from sidecar.http2.limits import H2Limits

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


class H2Core(Protocol):
    """What the proxy uses of a connection core (``sidecar.http2.core`` documents each call)."""

    counters: dict[str, int]
    closed: bool
    settings_received: bool

    def receive_data(self, data: bytes, now: float) -> list[Event]: ...

    def data_to_send(self) -> bytes: ...

    def start_request(self, headers: Headers, end_stream: bool = False) -> int: ...

    def can_open(self) -> bool: ...

    def send_headers(self, stream_id: int, headers: Headers, end_stream: bool = False) -> None: ...

    def send_data(self, stream_id: int, data: bytes, end_stream: bool = False) -> bool: ...

    def send_trailers(self, stream_id: int, headers: Headers) -> None: ...

    def end_stream(self, stream_id: int) -> None: ...

    def buffered(self, stream_id: int) -> int: ...

    def acknowledge(self, stream_id: int, flow_length: int) -> None: ...

    def reset(self, stream_id: int, error_code: int = ...) -> None: ...

    def ping(self, opaque: bytes) -> None: ...

    def goaway(self, error_code: int = ..., last_stream_id: int | None = None) -> None: ...

    @property
    def open_streams(self) -> int: ...

    def peer_max_streams(self) -> int: ...


def new_connection(*, client_side: bool, limits: H2Limits | None = None, check_outbound: bool = True) -> H2Core:
    """A connection core of the kind ``SIDECAR_H2_CORE`` chose."""
    return H2Connection(client_side=client_side, limits=limits, check_outbound=check_outbound)


__all__ = ["CORE", "H2Connection", "H2Core", "H2UsageError", "new_connection"]
