"""RequestStats and ConnectionInfo as the engine and the data plane hand them over, for the telemetry tests."""

from __future__ import annotations

import dataclasses
import datetime as dt
from typing import Any

from sidecar.mesh.local_apps import LocalApp
from sidecar.mesh.router import Endpoint
from sidecar.proxy.target import ConnectionInfo, RequestStats
from sidecar.tls.identity import PeerIdentity

TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
CALLER_SPAN = "00f067aa0ba902b7"
HOP_SPAN = "b7ad6b7169203331"


def endpoint(service: str = "payment-service") -> Endpoint:
    from sidecar.catalog.model import HealthStatus
    return Endpoint(service, f"{service}-1", "node-b", ("127.0.0.1", 15007), HealthStatus.HEALTHY)


def local_app(service: str = "payment-service") -> LocalApp:
    from sidecar.catalog.model import HealthStatus
    return LocalApp(service, f"{service}-1", HealthStatus.HEALTHY)


def stats(*, method: str = "POST", host: str = "payment-service", target: bytes = b"/pay?x=1", status: int = 200,
          error: str | None = None, started: float = 100.0, head: float | None = 100.010, ended: float = 100.025,
          attempts: int = 1, upstream: str | None = "127.0.0.1:15007", tag: Any = None,
          parent: str | None = CALLER_SPAN, request_bytes: int = 11, response_bytes: int = 22,
          **extra: Any) -> RequestStats:
    base = RequestStats(method, host, target, status, error, request_bytes, response_bytes, started, head, ended,
                        attempts, upstream, tag if tag is not None else endpoint(), "req-1", TRACE, HOP_SPAN, parent)
    return dataclasses.replace(base, **extra) if extra else base


def bare_conn(peername: Any = ("127.0.0.9", 40123)) -> ConnectionInfo:
    """An inbound connection whose caller is not (yet) known."""
    return ConnectionInfo("inbound", peername, ("127.0.0.1", 15006), None)


def caller_conn(service: str = "checkout", peername: Any = ("127.0.0.9", 40123)) -> ConnectionInfo:
    conn = bare_conn(peername)
    conn.data["caller"] = PeerIdentity(f"spiffe://mesh.local/service/{service}", service, "mesh.local",
                                       dt.datetime(2030, 1, 1, tzinfo=dt.UTC), 7)
    return conn
