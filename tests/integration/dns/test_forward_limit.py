"""Forwarding is rate-limited per client by default, on the wire: a real upstream on loopback, real queries
(dnspython, dig), the responder in-process on a fake clock and in a real ``sidecar run``.

A forwarded answer can be ~80 times its query; over UDP a source address can be forged, so an unlimited
forwarder reachable from outside reflects amplified floods. Over the limit the reply is an empty TC=1 one,
no larger than the query: a real client retries over TCP and gets its answer, a forger gains nothing. The
mesh's own names are never counted.
"""

from __future__ import annotations

import re
import socket
import time
from typing import Any

import dns.flags
import dns.message
import dns.query
import dns.rcode

from sidecar.clock import FakeClock
from sidecar.config.model import DnsForwardRateLimit
from tests.harness import http

DEFAULT = DnsForwardRateLimit()
WIDE = "wide.example.test"  # the fake upstream's 32-record TXT set: ~3.7 kB, whole over UDP
RECORDS = 32


def wide_query() -> dns.message.Message:
    return dns.message.make_query(WIDE, "TXT", use_edns=0, payload=4096)


def test_forwarding_over_udp_is_limited_per_client_by_default(dns_server: Any, upstream: Any) -> None:
    fake, port = upstream()
    clock = FakeClock()
    running = dns_server(upstreams=[("127.0.0.1", port)], clock=clock)
    for _ in range(DEFAULT.burst):
        answered = dns.query.udp(wide_query(), running.host, port=running.port, timeout=3)
        assert not answered.flags & dns.flags.TC and len(answered.answer[0]) == RECORDS
    query = wide_query()
    limited = dns.query.udp(query, running.host, port=running.port, timeout=3)
    assert limited.flags & dns.flags.TC and limited.flags & dns.flags.RA
    assert limited.id == query.id and limited.question == query.question and not limited.answer
    assert limited.rcode() == dns.rcode.NOERROR
    assert fake.udp_queries == DEFAULT.burst  # the limited query never reached the upstream
    # a real client takes the hint and gets its whole answer over TCP, which is not limited
    retried = running.dig(WIDE, "TXT", "+bufsize=4096")
    assert "Truncated, retrying in TCP mode" in retried.text
    assert retried.status == "NOERROR" and len(retried.answer) == RECORDS
    # the mesh's own names are not counted, however many
    for _ in range(3 * DEFAULT.burst):
        mesh = running.message("web.service.mesh")
        assert len(mesh.answer[0]) == 3 and not mesh.flags & dns.flags.TC
    # the bucket refills at qps
    clock.advance(1.0)
    for _ in range(int(DEFAULT.qps)):
        assert not dns.query.udp(wide_query(), running.host, port=running.port, timeout=3).flags & dns.flags.TC
    assert dns.query.udp(wide_query(), running.host, port=running.port, timeout=3).flags & dns.flags.TC
    assert running.server.counters.forward_limited == 3  # ours twice, dig's UDP try once
    assert running.server.counters.forwarded == DEFAULT.burst + 1 + int(DEFAULT.qps)


def test_a_sidecar_answers_a_flood_of_forwarded_queries_without_amplifying_it(  # type: ignore[no-untyped-def]
        start_sidecar, upstream: Any) -> None:
    fake, port = upstream()
    sidecar = start_sidecar({"dns": {"upstreams": [f"127.0.0.1:{port}"]},
                             "services": [{"name": "web", "port": 9000}]})
    host, dns_port = sidecar.listeners["dns"].rsplit(":", 1)
    address = (host, int(dns_port))
    queries, batch = 200, 20  # a batch of answers (~75 kB) fits a default socket receive buffer
    sent = received = full = limited = 0
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(5)
        start = time.monotonic()
        for _ in range(queries // batch):
            asked: dict[int, int] = {}
            while len(asked) < batch:
                data = wide_query().to_wire()
                if int.from_bytes(data[:2], "big") in asked:
                    continue  # one ID per query in flight
                asked[int.from_bytes(data[:2], "big")] = len(data)
                sock.sendto(data, address)
                sent += len(data)
            for _ in range(batch):
                reply = sock.recv(65535)
                received += len(reply)
                answer = dns.message.from_wire(reply)
                assert answer.id in asked
                if answer.flags & dns.flags.TC:
                    assert not answer.answer and len(reply) <= asked[answer.id]  # no amplification at all
                    limited += 1
                else:
                    assert len(answer.answer[0]) == RECORDS
                    full += 1
        elapsed = time.monotonic() - start
        # full answers only as fast as the bucket allows; everything else cost the sidecar no upstream query
        assert full <= DEFAULT.burst + DEFAULT.qps * elapsed + 1, (full, elapsed)
        assert limited == queries - full and limited > 0
        assert fake.udp_queries == full
        assert received <= sent + full * 4096
        metrics = http("GET", sidecar.admin + "/metrics").body.decode()
        assert re.search(rf"^sidecar_dns_forward_limited_total {limited}(\.0)?$", metrics, re.MULTILINE)
        # the same client asking the mesh's own names is not limited
        for _ in range(queries):
            query = dns.message.make_query("web.service.mesh", "A")
            sock.sendto(query.to_wire(), address)
            answer = dns.message.from_wire(sock.recv(65535))
            assert answer.id == query.id and answer.answer and not answer.flags & dns.flags.TC
