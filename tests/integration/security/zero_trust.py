"""Helpers for the zero-trust tests: a mesh of real `sidecar run` processes over mTLS, and raw HTTP/1.1 clients that
send request targets exactly as written (urllib and curl would tidy them first)."""

from __future__ import annotations

import json
import ssl
from dataclasses import dataclass
from http.client import HTTPConnection, HTTPSConnection
from typing import Any

from tests.harness import Response, SidecarProcess, http, wait_for


def node_config(name: str, tls: dict[str, str], services: list[dict[str, Any]], join: list[str],
                **extra: Any) -> dict[str, Any]:
    return {"node": {"name": name, "cluster": "zero-trust"}, "tls": tls, "services": services,
            "gossip": {"profile": "local", "join": join}, "logging": {"format": "json"}, **extra}


def knows(process: SidecarProcess, service: str) -> bool:
    return bool(http("GET", f"{process.api}/v1/catalog/{service}", timeout=2).json())


def raw(address: str, method: str, target: str, headers: dict[str, str] | None = None, body: bytes | None = None,
        context: ssl.SSLContext | None = None, timeout: float = 10.0) -> Response:
    """One request with ``target`` sent byte for byte (http.client checks only for control characters)."""
    host, port = address.rsplit(":", 1)
    conn: HTTPConnection
    if context is None:
        conn = HTTPConnection(host, int(port), timeout=timeout)
    else:
        conn = HTTPSConnection(host, int(port), timeout=timeout, context=context)
    try:
        conn.putrequest(method, target, skip_host=True, skip_accept_encoding=True)
        for name, value in (headers or {}).items():
            conn.putheader(name, value)
        if body is not None:
            conn.putheader("Content-Length", str(len(body)))
        conn.endheaders(body)
        response = conn.getresponse()
        return Response(response.status, {k.lower(): v for k, v in response.getheaders()}, response.read())
    finally:
        conn.close()


def client_context(tls: dict[str, str]) -> ssl.SSLContext:
    """A member's mTLS client context, as a process holding that member's certificate and key would build it."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.load_verify_locations(tls["ca"])
    context.load_cert_chain(tls["cert"], tls["key"])
    context.check_hostname = False  # the inbound proves a SPIFFE ID, not a host name
    return context


def message(sender: str, payload: Any, kind: str = "order") -> bytes:
    """A ServiceMessage as a sidecar would deliver it, claiming ``sender``."""
    return json.dumps({"id": f"forged-{sender}-{payload}", "service": sender, "timestamp": 1_700_000_000_000,
                       "type": kind, "payload": payload, "metadata": {}}).encode()


@dataclass
class Listeners:
    outbound: str
    inbound: str


def listeners(process: SidecarProcess) -> Listeners:
    return Listeners(process.listeners["outbound"], process.listeners["inbound"])


def wait_reachable(process: SidecarProcess, service: str, path: str = "/", timeout: float = 30.0) -> None:
    wait_for(lambda: knows(process, service), timeout, what=f"{process.name} knows {service}")
    wait_for(lambda: raw(process.listeners["outbound"], "GET", path, {"Host": service}).status == 200, timeout,
             what=f"{service}{path} answers through {process.name}'s outbound")


__all__ = ["Listeners", "client_context", "knows", "listeners", "message", "node_config", "raw",
           "wait_reachable"]
