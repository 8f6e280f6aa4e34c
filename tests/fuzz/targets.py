"""Fuzz targets: one function per parser that reads outside input, bytes in, nothing out.

Each target runs the parser the way the sidecar does and lets through only what the parser may raise for
bad input (its own error type); anything else escapes, and the calling test fails with the input. The
same targets serve the corpus replay (``test_corpus.py``) and the hypothesis searches (``test_fuzz_*.py``).

Contracts, one per target name (the name is also the corpus directory, ``corpus/<name>/``):

* ``config_yaml``     read_yaml on a file of these bytes, then config_from_raw: ConfigError only
* ``gossip_plain``    a plaintext member's packet and stream paths: PacketRefused / GossipDecodeError only,
                      and GossipCore.on_packet / on_stream never raise
* ``gossip_encrypted`` the same for a member with a keyring (the corpus is sealed under FUZZ_KEY)
* ``dns_query``       the DNS server's handle() over UDP and TCP: bytes, a Forward or None, never an exception;
                      the answerer: Reply, Forward or Drop
* ``http_request``    RequestReader.feed, whole and byte by byte: RemoteProtocolError only
* ``http_response``   ResponseReader.feed (and the head's headers): RemoteProtocolError only
* ``message_json``    a messaging request body as the API reads it, then MessageBody.from_json:
                      InvalidArgument only; ServiceMessage.from_bytes: ValueError only
* ``catalog_state``   decode_claims: SyncDecodeError only
* ``http2_codec``     one direction of an HTTP/2 connection through sidecar.http2's frames and HPACK and through
                      hyperframe and hpack (``replay.py``): H2FrameError / HeaderBlockError only, and equal results
                      where both accept; the seeds are real clients' traffic (``test_captures.py`` records it)
* ``http2_listener``  a listener's HTTP/2 connection (H2Downstream, each stream an exchange) after a valid preface:
                      data_received never raises, at most SETTINGS_MAX_CONCURRENT_STREAMS exchanges at once, and
                      the connection's end releases every stream (no sockets: a fake transport, and the
                      exchange tests' pool, whose requests wait for ever)
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sidecar.catalog.model import CatalogSnapshot, HealthStatus, NodeInfo, ServiceMetadata
from sidecar.catalog.sync import SyncDecodeError, decode_claims
from sidecar.config.load import config_from_raw, read_yaml
from sidecar.config.model import GOSSIP_PROFILES, DnsConfig
from sidecar.dns.answerer import DnsReply, Drop, Forward, Transport, Zone
from sidecar.dns.server import DnsServer
from sidecar.dns.wire import question_key
from sidecar.errors import ConfigError, InvalidArgument, NotFound
from sidecar.gossip.core import GossipCore
from sidecar.gossip.envelope import Envelope, PacketRefused
from sidecar.gossip.errors import GossipDecodeError
from sidecar.gossip.keyring import Keyring
from sidecar.gossip.messages import packet_from_wire
from sidecar.http2.connection import H2Connection
from sidecar.http2.limits import H2Limits
from sidecar.http2.preface import PREFACE
from sidecar.messaging.envelope import MessageBody, ServiceMessage
from sidecar.proxy import HttpProxy
from sidecar.proxy.h2down import H2Downstream
from sidecar.proxy.http1 import RemoteProtocolError, RequestHead, ResponseHead
from sidecar.proxy.http1read import RequestReader, ResponseReader
from sidecar.proxy.paths import normalize_target
from sidecar.proxy.target import ConnectionInfo, Target
from sidecar.web import read_json_object
from tests.fuzz.replay import replay
from tests.unit.proxy.test_exchange import FakePool, FakePools, FakeTransport

CORPUS = Path(__file__).parent / "corpus"
FUZZ_CLUSTER = "fuzz"
# a fixed test key (never used outside tests): the encrypted corpus is sealed under it
FUZZ_KEY = "ZnV6ei1rZXktMDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY="

_TMP = Path(tempfile.mkdtemp(prefix="sidecar-fuzz-"))


# ----------------------------------------------------------------------------------------- config


def config_yaml(data: bytes) -> None:
    path = _TMP / f"config-{os.getpid()}.yaml"
    path.write_bytes(data)
    try:
        raw = read_yaml(str(path))
        config_from_raw(raw, {})
    except ConfigError:
        pass


def config_document(raw: Any) -> None:
    """A document already parsed (what hypothesis builds): config_from_raw takes any mapping."""
    with contextlib.suppress(ConfigError):
        config_from_raw(raw, {"PORT": "8080", "NAME": "fuzz"})


# ----------------------------------------------------------------------------------------- gossip


def _core(keyring: Keyring | None) -> GossipCore:
    return GossipCore("fuzz-a", ("127.0.0.1", 7946), GOSSIP_PROFILES["lan"], now=0.0, cluster=FUZZ_CLUSTER,
                      keyring=keyring, rng=random.Random(1))


def _gossip(data: bytes, keyring: Keyring | None) -> None:
    envelope = Envelope(FUZZ_CLUSTER, keyring)
    with contextlib.suppress(PacketRefused, GossipDecodeError):
        packet_from_wire(envelope.open(data))
    # the core catches every refusal itself and only counts it; a fresh core per input keeps runs independent
    core = _core(keyring)
    core.on_packet(("127.0.0.1", 7947), data, 1.0)
    core.on_stream(("127.0.0.1", 7947), data, 1.0)
    core.on_tick(2.0)


def gossip_plain(data: bytes) -> None:
    _gossip(data, None)


def gossip_encrypted(data: bytes) -> None:
    _gossip(data, Keyring([FUZZ_KEY]))


# -------------------------------------------------------------------------------------------- dns


def dns_snapshot() -> CatalogSnapshot:
    nodes = {"n1": NodeInfo("n1", "10.0.0.1", 15006), "n2": NodeInfo("n2", "fd00::2", 15006),
             "n3": NodeInfo("n3", "10.0.0.3", 15006)}
    instances = (
        ServiceMetadata("web-1", "web", "1", "127.0.0.1", 8080, tags=("blue",), node="n1"),
        ServiceMetadata("web-2", "web", "1", "127.0.0.1", 8080, node="n2"),
        ServiceMetadata("web-3", "web", "1", "127.0.0.1", 8080, status=HealthStatus.DEGRADED, node="n3"),
    )
    return CatalogSnapshot(version=1, nodes=nodes, instances=instances)


_SNAPSHOT = dns_snapshot()
_DNS_SERVER = DnsServer(DnsConfig(), lambda: _SNAPSHOT)
_ZONE = Zone(_SNAPSHOT, _DNS_SERVER.settings)


def dns_query(data: bytes) -> None:
    for tcp in (False, True):
        reply = _DNS_SERVER.handle(data, "127.0.0.1", tcp)
        assert reply is None or isinstance(reply, bytes | Forward), type(reply)
        outcome = _ZONE.answer(data, Transport.TCP if tcp else Transport.UDP)
        assert isinstance(outcome, DnsReply | Forward | Drop), type(outcome)
    key = question_key(data)
    assert key is None or (isinstance(key, tuple) and 12 < key[1] <= len(data))


# ------------------------------------------------------------------------------------------- http


class _RequestSink:
    def __init__(self) -> None:
        self.heads: list[RequestHead] = []

    def on_request_head(self, head: RequestHead) -> None:
        self.heads.append(head)
        # what the router reads of every head
        _ = (head.path, head.has_body, head.host, list(head.headers), head.to_bytes())
        # what authorization matches and the app gets is the canonical path: a fixed point, inside the root
        if head.target[:1] == b"/":
            assert normalize_target(head.target) == head.target, head.target
            assert b".." not in head.path.encode("latin-1").split(b"/"), head.target

    def on_request_body(self, data: bytes) -> None:
        pass

    def on_request_end(self, trailers: list[tuple[bytes, bytes]] | None) -> None:
        pass


class _ResponseSink:
    def __init__(self) -> None:
        self.heads: list[ResponseHead] = []

    def on_response_interim(self, head: ResponseHead) -> None:
        self.heads.append(head)

    def on_response_head(self, head: ResponseHead) -> None:
        self.heads.append(head)
        _ = (list(head.headers), head.close_delimited, head.to_bytes(False, False), head.to_bytes(True, True))

    def on_response_body(self, data: bytes) -> None:
        pass

    def on_response_end(self, trailers: list[tuple[bytes, bytes]] | None) -> None:
        _ = trailers


def _feed(feed: Callable[[bytes], int | None], data: bytes, step: int) -> None:
    try:
        for i in range(0, len(data), step):
            if feed(data[i : i + step]) is not None:
                return  # an upgrade: the rest is not HTTP
    except RemoteProtocolError:
        pass


def http_request(data: bytes) -> None:
    for step in (max(1, len(data)), 7, 1):
        _feed(RequestReader(_RequestSink()).feed, data, step)


def http_response(data: bytes) -> None:
    for step in (max(1, len(data)), 7, 1):
        for head_request in (False, True):
            reader = ResponseReader(_ResponseSink())
            reader.expect(head_request)
            _feed(reader.feed, data, step)


# ------------------------------------------------------------------------------------------ HTTP/2


def http2_codec(data: bytes) -> None:
    replay(data, strict=False)


def http2_frames(data: bytes) -> None:
    """Both sides of the HTTP/2 core, whole and in pieces: receive_data never raises, its input buffer never
    holds more than one frame, and it never tracks more streams than it advertised."""
    limits = H2Limits(max_concurrent_streams=4)
    cases = [(H2Connection(client_side=False, limits=limits), data)]
    if data.startswith(PREFACE):  # the client side reads the server's frames: no preface
        client = H2Connection(client_side=True, limits=limits)
        client.start_request([(b":method", b"GET"), (b":scheme", b"http"), (b":path", b"/"), (b":authority", b"a")])
        cases.append((client, data[len(PREFACE):]))
    for core, stream in cases:
        for step in (max(1, len(stream)), 13):
            for i in range(0, len(stream), step):
                core.receive_data(stream[i:i + step], float(i))
                core.data_to_send()
                assert len(core._inbuf) < 9 + limits.max_frame_size + step
                assert core.open_streams <= limits.max_concurrent_streams


class _Transport(FakeTransport):
    """The exchange tests' transport, which the listener's connection may also take over."""

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        pass


_HELD = Target(("127.0.0.1", 9))
_LISTENER_LOOP = asyncio.new_event_loop()   # never run: timers are scheduled and dropped, nothing awaits


def _listener_route(head: RequestHead, conn: ConnectionInfo) -> Target:
    """Requests for /held wait for an upstream for ever; the others are answered 404 by the listener."""
    if head.target.startswith(b"/held"):
        return _HELD
    raise NotFound(f"no service {head.host}")


def http2_listener(data: bytes) -> None:
    """``data`` after the client preface and an empty SETTINGS, to a listener's HTTP/2 connection, whole and
    in pieces of 13 bytes."""
    settings = b"\x00\x00\x00\x04\x00\x00\x00\x00\x00"
    for step in (max(1, len(data)), 13):
        proxy = HttpProxy(_listener_route, name="fuzz", pools=FakePools(FakePool()), h2c=True)  # type: ignore[arg-type]
        transport = _Transport()
        conn = H2Downstream(proxy, _LISTENER_LOOP, transport, ConnectionInfo("fuzz", ("127.0.0.1", 1),
                                                                             ("127.0.0.1", 2), None))
        limit = conn.core.limits.max_concurrent_streams
        conn.data_received(PREFACE + settings)
        for i in range(0, len(data), step):
            conn.data_received(data[i:i + step])
            assert len(conn.streams) <= limit
            assert len(conn.core._inbuf) < 9 + conn.core.limits.max_frame_size + step
        if conn.core.closed:
            assert transport.closed or conn.closed
        conn.connection_lost(None)
        assert not conn.streams and not proxy.connections


# -------------------------------------------------------------------------------------- messaging


class _Body:
    """Enough of a request for read_json_object."""

    def __init__(self, raw: bytes) -> None:
        self.raw = raw

    async def read(self) -> bytes:
        return self.raw


async def _message(data: bytes) -> None:
    try:
        body = await read_json_object(_Body(data))  # type: ignore[arg-type]
        MessageBody.from_json(body)
    except InvalidArgument:
        pass


def message_json(data: bytes) -> None:
    coroutine = _message(data)
    try:
        coroutine.send(None)  # nothing in it awaits anything real: it finishes in one step
    except StopIteration:
        pass
    else:
        raise AssertionError("read_json_object suspended")
    with contextlib.suppress(ValueError):
        ServiceMessage.from_bytes(data)


# ---------------------------------------------------------------------------------------- catalog


def catalog_state(data: bytes) -> None:
    with contextlib.suppress(SyncDecodeError):
        decode_claims(data)


TARGETS: dict[str, Callable[[bytes], None]] = {
    "config_yaml": config_yaml,
    "gossip_plain": gossip_plain,
    "gossip_encrypted": gossip_encrypted,
    "dns_query": dns_query,
    "http_request": http_request,
    "http_response": http_response,
    "http2_frames": http2_frames,
    "http2_codec": http2_codec,
    "http2_listener": http2_listener,
    "message_json": message_json,
    "catalog_state": catalog_state,
}


def corpus_files(target: str) -> list[Path]:
    directory = CORPUS / target
    return sorted(p for p in directory.iterdir() if p.is_file()) if directory.is_dir() else []


def corpus(target: str) -> list[bytes]:
    return [p.read_bytes() for p in corpus_files(target)]


__all__ = ["CORPUS", "FUZZ_CLUSTER", "FUZZ_KEY", "TARGETS", "config_document", "corpus", "corpus_files"]
