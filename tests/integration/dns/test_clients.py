"""The responder as real clients see it: dig, kdig and dnspython's resolver, over UDP and TCP."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import dns.message
import dns.query
import dns.resolver
import pytest

from sidecar.dns.server import DnsServer

Running = Any  # conftest.Running: the server, its address and the clients (fixtures are not imported)
StartServer = Callable[..., Any]


def via_dig(running: Running, name: str, rdtype: str, *extra: str) -> Any:
    return running.dig(name, rdtype, *extra)


def via_kdig(running: Running, name: str, rdtype: str, *extra: str) -> Any:
    return running.kdig(name, rdtype, *extra)


def via_dnspython(running: Running, name: str, rdtype: str, *extra: str) -> Any:
    return running.from_message(running.message(name, rdtype, tcp="+tcp" in extra))


CLIENTS = {"dig": via_dig, "kdig": via_kdig, "dnspython": via_dnspython}


@pytest.fixture
def running(dns_server: StartServer) -> Running:
    return dns_server()


class Asker:
    """One client asking the running server: ``ask(name, type, *client options)``."""

    def __init__(self, client: str, running: Running) -> None:
        self.client = client
        self.running = running

    def __call__(self, name: str, rdtype: str = "A", *extra: str) -> Any:
        return CLIENTS[self.client](self.running, name, rdtype, *extra)


@pytest.fixture(params=sorted(CLIENTS))
def ask(request: pytest.FixtureRequest, running: Running) -> Asker:
    return Asker(request.param, running)


SOA = "ns.mesh. hostmaster.mesh. 1 3600 600 86400 5"


def test_a_healthy_first_then_degraded(ask: Asker) -> None:
    result = ask("web.service.mesh", "A")
    assert result.status == "NOERROR" and "aa" in result.flags
    addresses = result.rdata()
    assert sorted(addresses[:2]) == ["10.0.0.1", "10.0.0.2"] and addresses[2] == "10.0.0.3"
    assert {r[1] for r in result.answer} == {5}


def test_aaaa(ask: Asker) -> None:
    assert ask("api.service.mesh", "AAAA").rdata() == ["fd00::6"]


def test_srv_with_additionals(ask: Asker) -> None:
    for name in ("_web._tcp.service.mesh", "web.service.mesh"):
        result = ask(name, "SRV")
        assert result.status == "NOERROR"
        assert sorted(result.rdata(rdtype="SRV")) == [
            "1 1 15001 n1.node.mesh.", "1 1 15002 n2.node.mesh.", "2 1 15003 n3.node.mesh.",
        ]
        additional = {(r[0].lower(), r[3]) for r in result.additional if r[2] == "A"}
        assert additional == {("n1.node.mesh.", "10.0.0.1"), ("n2.node.mesh.", "10.0.0.2"),
                              ("n3.node.mesh.", "10.0.0.3")}
    result = ask("_api._tcp.service.mesh", "SRV")
    assert [r[3] for r in result.additional if r[2] == "AAAA"] == ["fd00::6"]


def test_tag_filter(ask: Asker) -> None:
    assert sorted(ask("blue.web.service.mesh", "A").rdata()) == ["10.0.0.1", "10.0.0.3"]
    assert ask("green.web.service.mesh", "A").rdata() == ["10.0.0.2"]
    assert ask("purple.web.service.mesh", "A").status == "NXDOMAIN"


def test_node_names(ask: Asker) -> None:
    assert ask("n2.node.mesh", "A").rdata() == ["10.0.0.2"]
    assert ask("n6.node.mesh", "AAAA").rdata() == ["fd00::6"]
    assert ask("n9.node.mesh", "A").status == "NXDOMAIN"


def test_nxdomain_with_soa(ask: Asker) -> None:
    result = ask("nope.service.mesh", "A")
    assert result.status == "NXDOMAIN" and result.answer == []
    assert [(r[0], r[1], r[2], r[3]) for r in result.authority] == [("mesh.", 5, "SOA", SOA)]


def test_nodata_with_soa(ask: Asker) -> None:
    result = ask("web.service.mesh", "AAAA")
    assert result.status == "NOERROR" and result.answer == []
    assert [r[3] for r in result.authority if r[2] == "SOA"] == [SOA]


def test_case_is_echoed(ask: Asker) -> None:
    result = ask("WeB.SeRvIcE.MeSh", "A")
    assert result.status == "NOERROR" and len(result.answer) == 3
    # kdig lower-cases names before sending them, so its question comes back lower-case
    sent = "web.service.mesh." if ask.client == "kdig" else "WeB.SeRvIcE.MeSh."
    assert {r[0] for r in result.answer} == {sent}
    assert ask("web.service.mesh", "A").answer[0][0] == "web.service.mesh."  # the cache keeps no one's case


def test_over_tcp(ask: Asker) -> None:
    result = ask("web.service.mesh", "A", "+tcp")
    assert result.status == "NOERROR" and len(result.answer) == 3


def test_outside_the_domain_without_upstreams_is_refused(ask: Asker) -> None:
    assert ask("example.com", "A").status == "REFUSED"


# ------------------------------------------------------------------------- truncation, then TCP


def test_dig_truncated_then_tcp(running: Running) -> None:
    truncated = running.dig("big.service.mesh", "A", "+ignore", "+bufsize=1232")
    assert "tc" in truncated.flags and truncated.answer == []
    result = running.dig("big.service.mesh", "A", "+bufsize=1232")
    assert "Truncated, retrying in TCP mode" in result.text
    assert len(result.answer) == 100 and "tc" not in result.flags
    # a buffer big enough: no truncation at all
    result = running.dig("big.service.mesh", "A", "+bufsize=4096")
    assert "Truncated" not in result.text and len(result.answer) == 100


def test_kdig_truncated_then_tcp(running: Running) -> None:
    truncated = running.kdig("big.service.mesh", "A", "+ignore")  # kdig sends no EDNS: 512 bytes
    assert "tc" in truncated.flags and truncated.answer == []
    result = running.kdig("big.service.mesh", "A")
    assert len(result.answer) == 100 and "tc" not in result.flags
    assert "(TCP)" in result.text


def test_dnspython_truncated_then_tcp(running: Running) -> None:
    query = dns.message.make_query("big.service.mesh", "A")
    udp = dns.query.udp(query, running.host, timeout=3, port=running.port)
    assert udp.flags & dns.flags.TC and udp.answer == []
    tcp = dns.query.tcp(query, running.host, timeout=3, port=running.port)
    assert len(tcp.answer[0]) == 100
    resolver = dns.resolver.Resolver(configure=False)
    resolver.nameservers = [running.host]
    resolver.port = running.port
    resolver.lifetime = 3
    answer = resolver.resolve("big.service.mesh", "A")  # the resolver retries over TCP on its own
    assert len(answer) == 100


def test_dnspython_resolver(running: Running) -> None:
    resolver = dns.resolver.Resolver(configure=False)
    resolver.nameservers = [running.host]
    resolver.port = running.port
    resolver.lifetime = 3
    assert sorted(r.address for r in resolver.resolve("web.service.mesh", "A")) == [
        "10.0.0.1", "10.0.0.2", "10.0.0.3",
    ]
    srv = resolver.resolve("_web._tcp.service.mesh", "SRV")
    assert sorted((r.priority, r.port, r.target.to_text()) for r in srv) == [
        (1, 15001, "n1.node.mesh."), (1, 15002, "n2.node.mesh."), (2, 15003, "n3.node.mesh."),
    ]
    with pytest.raises(dns.resolver.NXDOMAIN):
        resolver.resolve("nope.service.mesh", "A")
    with pytest.raises(dns.resolver.NoAnswer):
        resolver.resolve("web.service.mesh", "AAAA")


def test_kdig_several_queries_on_one_tcp_connection(running: Running) -> None:
    out = running.kdig("+tcp", "+keepopen", "web.service.mesh", "A", "n1.node.mesh", "A", "nope.service.mesh", "A")
    assert out.text.count("status: NOERROR") == 2 and out.text.count("status: NXDOMAIN") == 1
    server: DnsServer = running.server
    assert server.counters.tcp_connections == 1
