"""HTTP/2 abuse at a real ``sidecar run``'s two HTTP/2 listeners: the outbound (h2c with prior knowledge: any local
process) and the inbound (h2 over mTLS, ALPN ``h2``, with a member's certificate: the attacker is a member).

Each abuse must be refused with the right GOAWAY or RST_STREAM code and counted
(``sidecar_http2_protections_total{listener, protection}`` on /metrics), while a well-behaved client on another
connection of the same listener keeps getting its answers within a deadline, the process stays up and its memory
stays bounded. The attacker's frames come from :mod:`tests.h2attack`.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator

import pytest
from hyperframe.frame import Frame

from tests.h2attack import FLOODS, PROTOCOL_ERROR, REFUSED_STREAM, Bystander, Flood, rss_kib
from tests.h2client import RawH2, body_of, ended, get, goaway, goaway_codes, member_context, post, resets
from tests.harness import FakeApp, http
from tests.integration.abuse.conftest import Target, start_target

LISTENERS = ["outbound", "inbound"]
# an answer on loopback takes milliseconds; under a flood on another connection, never more than this
DEADLINE = 3.0
# what a flood may leave behind in the process's RSS (allocator slack, a grown buffer pool): loose, but far below
# what keeping the flood's frames or streams would cost
RSS_GROWTH_KIB = 48 * 1024
MAX_STREAMS = 100   # the listeners' SETTINGS_MAX_CONCURRENT_STREAMS (sidecar.http2.limits.H2Limits)


@pytest.fixture(scope="module")
def target(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Target]:
    """The abuse suite's sidecar, with the overload guard's loop-lag threshold at 2 s instead of 500 ms: a flood
    costs the loop tens of milliseconds on an idle machine (a rapid reset sets up and tears down a thousand
    streams before its GOAWAY), several times that on a loaded shared one, and at 500 ms the guard would shed
    the bystander's requests by design. A flood that stalled the loop for seconds still fails the test."""
    tmp = tmp_path_factory.mktemp("abuse-h2")
    with FakeApp("web") as app:
        started = start_target(tmp, app, {"overload": {"max_loop_lag": "2s"}})
        try:
            yield started
        finally:
            started.process.kill()


def connect(target: Target, listener: str, preface: bool = True) -> RawH2:
    """A raw HTTP/2 client on the listener: h2c on the outbound; h2 over mTLS on the inbound with the member
    certificate of service "client"."""
    pki = target.tmp / "certs"
    if listener == "outbound":
        return RawH2(target.address("outbound"), preface=preface)
    client = RawH2(target.address("inbound"), tls=member_context(
        {"ca": str(pki / "ca.pem"), "cert": str(pki / "client.pem"), "key": str(pki / "client-key.pem")}, ["h2"]),
                       preface=preface)
    if client.alpn != "h2":
        client.close()
        pytest.skip("the inbound listener does not offer ALPN h2 yet (it comes with the inbound HTTP/2 commit, "
                    "branch h2peer: 'inbound: ...')")
    return client


def protections(target: Target) -> dict[tuple[str, str], float]:
    text = http("GET", target.process.admin + "/metrics", timeout=5).body.decode()
    found = re.findall(r'^sidecar_http2_protections_total\{listener="([^"]+)",protection="([^"]+)"\} (\S+)$', text,
                       re.MULTILINE)
    return {(listener, protection): float(n) for listener, protection, n in found}


def counted(target: Target, listener: str, protection: str) -> float:
    return protections(target).get((listener, protection), 0.0)


@pytest.fixture
def bystander(target: Target, request: pytest.FixtureRequest) -> Iterator[Callable[[str], Bystander]]:
    """Start a well-behaved client on the listener named; it is stopped and checked at the end."""
    started: list[Bystander] = []

    def start(listener: str) -> Bystander:
        connect(target, listener).close()   # skips the test here, not in the bystander's thread
        b = Bystander(lambda: connect(target, listener), get(b"/bystander", b"web"), deadline=DEADLINE)
        started.append(b.__enter__())
        b.wait_answers(3)   # warm: HTTP/2 loaded, pools dialed
        return b

    yield start
    for b in started:
        b.__exit__(None, None, None)
        b.check()
    assert target.alive


def attacked(target: Target, listener: str, flood: Flood) -> list[Frame]:
    attacker = connect(target, listener)
    try:
        attacker.send_quietly(flood.build(attacker.peer, get(b"/flood", b"web")))
        return attacker.read_until(goaway, timeout=30)
    finally:
        attacker.close()


# ------------------------------------------------------------------------------------------ the floods


@pytest.mark.parametrize("flood", FLOODS, ids=[f.name for f in FLOODS])
@pytest.mark.parametrize("listener", LISTENERS)
def test_a_flood_ends_only_its_own_connection_with_the_right_code_and_is_counted(
        target: Target, bystander: Callable[[str], Bystander], listener: str, flood: Flood) -> None:
    watcher = bystander(listener)
    before, rss_before = counted(target, listener, flood.counter), rss_kib(target.process.proc.pid)  # type: ignore[union-attr]
    got = attacked(target, listener, flood)
    assert goaway_codes(got) == [flood.goaway], got[-5:]
    watcher.wait_answers(3, timeout=DEADLINE * 3)   # answered after the attack too, on its connection
    assert counted(target, listener, flood.counter) >= before + 1
    growth = rss_kib(target.process.proc.pid) - rss_before  # type: ignore[union-attr]
    assert growth < RSS_GROWTH_KIB, f"RSS grew by {growth} KiB"
    target.check_all()


# ------------------------------------------------------------------------------------------ streams past the limit


@pytest.mark.parametrize("listener", LISTENERS)
def test_streams_past_max_concurrent_streams_are_refused_and_the_rest_served(
        target: Target, bystander: Callable[[str], Bystander], listener: str) -> None:
    watcher = bystander(listener)
    before = counted(target, listener, "refused_streams")
    client = connect(target, listener)
    try:
        request = [*post(b"/held", b"web"), (b"content-length", b"1")]
        block = client.peer.block(request)
        opened = list(range(1, 2 * MAX_STREAMS, 2))          # each waits for its one body byte
        extra = list(range(2 * MAX_STREAMS + 1, 2 * MAX_STREAMS + 11, 2))
        client.send(b"".join(client.peer.headers(s, block=block) for s in opened + extra))
        got = client.read_until(lambda got: set(extra) <= set(resets(got)), timeout=20)
        assert resets(got) == dict.fromkeys(extra, REFUSED_STREAM), resets(got)
        client.send(b"".join(client.peer.data(s, b"x", end_stream=True) for s in opened))
        client.read_until(lambda got: {f.stream_id for f in got if ended(f.stream_id)([f])} >= set(opened), timeout=30)
        assert {s: client.statuses.get(s) for s in opened} == dict.fromkeys(opened, 200), \
            [body_of(client.received, s) for s in opened if client.statuses.get(s) != 200][:2]
        assert not goaway(client.received)
    finally:
        client.close()
    assert counted(target, listener, "refused_streams") >= before + len(extra)
    watcher.check()


# ------------------------------------------------------------------------------------------ the preface


def test_a_bad_preface_at_the_outbound_is_read_as_http1_and_refused(target: Target,
                                                                  bystander: Callable[[str], Bystander]) -> None:
    watcher = bystander("outbound")
    client = connect(target, "outbound", preface=False)
    try:
        client.send(b"PRI * HTTP/2.0\r\n\r\nXX\r\n\r\n")
        client.sock.settimeout(DEADLINE)
        assert client.sock.recv(65536).startswith(b"HTTP/1.1 400")
    finally:
        client.close()
    watcher.wait_answers(2)


def test_a_bad_preface_at_the_inbound_gets_goaway_protocol_error(target: Target,
                                                                bystander: Callable[[str], Bystander]) -> None:
    watcher = bystander("inbound")
    before = counted(target, "inbound", "bad_preface")
    client = connect(target, "inbound", preface=False)
    try:
        client.send(b"GET / HTTP/1.1\r\nHost: web\r\n\r\n")   # HTTP/1.1 after choosing h2 by ALPN
        got = client.read_until(goaway, timeout=DEADLINE)
    finally:
        client.close()
    assert goaway_codes(got) == [PROTOCOL_ERROR]
    assert counted(target, "inbound", "bad_preface") == before + 1
    watcher.wait_answers(2)
