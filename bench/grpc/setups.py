"""The servers of the gRPC benchmark, on loopback with free ports and files in a temporary folder.

Backends: an h2c app (prior knowledge, small POSTs answered 200; the h2load load) and the gRPC test service
tests.grpcapps.server (the grpcio unary load). Each setup is a ``Target``: where each load sends, with
which :authority, and the pids whose CPU counts as the setup's cost."""

from __future__ import annotations

import socket
import ssl
import subprocess
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.proxy.__main__ import HAPROXY_HEAD, free_port, process
from bench.proxy.mesh import sidecar, sidecar_config, wait_catalog
from tests.grpcapps.launch import spawn

GRPC_SERVICE = "bench-grpc"
H2_SERVICE = "bench-h2"
CALLER = "checkout"


@dataclass(frozen=True, slots=True)
class Target:
    grpc_port: int
    h2_port: int
    pids: list[int]
    # the :authority each load sends (None: the client's default, host:port)
    grpc_authority: str | None = None
    h2_authority: str | None = None


@dataclass(frozen=True, slots=True)
class Backends:
    grpc: int
    h2: int


# ------------------------------------------------------------------------------------------ backends


def h2c_app(stack: ExitStack, folder: Path) -> tuple[int, int]:
    """An h2c app (prior knowledge) that reads each request whole, then answers 200 "ok\\n": HAProxy answering
    by itself, one thread. Its port and pid.

    It reads the body before answering on purpose: nginx's ``return 200`` answers before the body has
    arrived and resets the stream (RST_STREAM NO_ERROR, as RFC 9113 8.1 allows), which a proxy in front
    may report as a failed request."""
    port = free_port()
    conf = folder / "h2c-app.cfg"
    conf.write_text(f"""{HAPROXY_HEAD}
    option http-buffer-request
frontend app
    bind 127.0.0.1:{port} proto h2
    http-request return status 200 content-type text/plain string "ok\\n"
""")
    proc = stack.enter_context(process(["haproxy", "-db", "-f", str(conf)], "h2c app", port))
    return port, proc.pid


def grpc_app(stack: ExitStack, workers: int) -> int:
    app = spawn("tests.grpcapps.server", "--port", "0", "--instance", "bench", "--workers", str(workers))
    stack.callback(app.stop)
    return app.port


# ------------------------------------------------------------------------------------------ HAProxy


def haproxy_h2_pair(stack: ExitStack, folder: Path, backends: Backends,
                    certs: dict[str, Path]) -> tuple[Target, int]:
    """client -h2c-> HAProxy outer -h2 over mTLS (ALPN h2)-> HAProxy inner -h2c-> backend, chosen by
    :authority as the sidecar chooses a service. Each hop stamps the HTTP version it received on the
    response (x-outer-http, x-inner-http) so a probe proves h2 was spoken on every leg. Returns the target
    and the inner HAProxy's (mTLS) port."""
    inner, inner_pid = _haproxy(stack, folder, "haproxy-h2-inner",
                                f"bind 127.0.0.1:{{port}} ssl crt {certs['bundle']} ca-file {certs['ca']} "
                                "verify required alpn h2",
                                "inner", [f"server grpc 127.0.0.1:{backends.grpc} proto h2",
                                          f"server h2 127.0.0.1:{backends.h2} proto h2"])
    # proto h2 as well as alpn h2: a connection known to be h2 before its handshake ends takes new streams at
    # once; with ALPN alone HAProxy opened a connection per stream under a burst (500 TLS connections for
    # 50x10 h2load streams, and failed requests)
    server_tls = (f"ssl crt {certs['bundle']} ca-file {certs['ca']} verify required sni str(localhost) "
                  "alpn h2 proto h2")
    outer, outer_pid = _haproxy(stack, folder, "haproxy-h2-outer", "bind 127.0.0.1:{port} proto h2", "outer",
                                [f"server grpc 127.0.0.1:{inner} {server_tls}",
                                 f"server h2 127.0.0.1:{inner} {server_tls}"])
    return Target(outer, outer, [outer_pid, inner_pid], GRPC_SERVICE, H2_SERVICE), inner


def _haproxy(stack: ExitStack, folder: Path, name: str, bind: str, hop: str,
             servers: list[str]) -> tuple[int, int]:
    port = free_port()
    grpc_server, h2_server = servers
    conf = folder / f"{name}.cfg"
    conf.write_text(f"""{HAPROXY_HEAD}
frontend f
    {bind.format(port=port)}
    http-request set-header x-request-id %[uuid] if !{{ req.hdr(x-request-id) -m found }}
    http-response set-header x-{hop}-http %[fc_http_major]
    use_backend grpc if {{ req.hdr(host) -m str {GRPC_SERVICE} }}
    default_backend h2
backend grpc
    {grpc_server}
backend h2
    {h2_server}
""")
    proc = stack.enter_context(process(["haproxy", "-db", "-f", str(conf)], name, port))
    return port, proc.pid


def negotiated_alpn(port: int, certs: dict[str, Path]) -> str | None:
    """The protocol a TLS listener picks when offered h2 and http/1.1, with the bench's client certificate."""
    context = ssl.create_default_context(cafile=str(certs["ca"]))
    context.load_cert_chain(str(certs["cert"]), str(certs["key"]))
    context.set_alpn_protocols(["h2", "http/1.1"])
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw, \
            context.wrap_socket(raw, server_hostname="localhost") as tls:
        return tls.selected_alpn_protocol()


# ------------------------------------------------------------------------------------------ sidecars


def sidecar_pair(stack: ExitStack, folder: Path, backends: Backends,
                 certs: dict[str, dict[str, str]]) -> Target:
    """Two `sidecar run` processes as bench.proxy.mesh starts them: B hosts both backends as services, the gRPC
    one with ``protocol: grpc``, the h2c one with ``protocol: http2`` (h2c to the app for both), A is the
    caller; the loads go to A's outbound listener with the service's name as :authority. Raises RuntimeError,
    with the sidecar's own words, when it cannot start."""
    tls_b = {**certs[GRPC_SERVICE], "identities": [{"service": H2_SERVICE, "cert": certs[H2_SERVICE]["cert"],
                                                    "key": certs[H2_SERVICE]["key"]}]}
    b = sidecar_config(folder, "grpc-b", tls_b, [
        {"name": GRPC_SERVICE, "port": backends.grpc, "protocol": "grpc"},
        # h2c but not gRPC (protocol http2): checked by TCP, a gRPC health check would fail on it
        {"name": H2_SERVICE, "port": backends.h2, "protocol": "http2", "check": {"tcp": True}}], [])
    b_proc = _start(stack, folder, b)
    a = sidecar_config(folder, "grpc-a", certs[CALLER], [], [b["gossip"]["listen"]])
    a_proc = _start(stack, folder, a)
    for service in (GRPC_SERVICE, H2_SERVICE):
        try:
            wait_catalog(a, a_proc, folder, service)
        except RuntimeError as e:
            raise RuntimeError(f"{e}; {_log_tail(folder, 'grpc-b')}") from None
    port = int(a["outbound"]["listen"].rsplit(":", 1)[1])
    return Target(port, port, [a_proc.pid, b_proc.pid], GRPC_SERVICE, H2_SERVICE)


def _start(stack: ExitStack, folder: Path, config: dict[str, Any]) -> subprocess.Popen[bytes]:
    name = str(config["node"]["name"])
    try:
        return stack.enter_context(sidecar(folder, config))
    except RuntimeError:
        raise RuntimeError(f"sidecar {name} did not start: {_log_tail(folder, name)}") from None


def _log_tail(folder: Path, name: str) -> str:
    path = folder / f"{name}.log"
    lines = path.read_text(errors="replace").strip().splitlines() if path.exists() else []
    return " | ".join(lines[-3:]) or "no log"
