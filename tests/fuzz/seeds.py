"""The seed corpus: valid inputs of every parser, the known-hostile shapes, and every finding.

The files under ``corpus/<target>/`` are kept in the repository and replayed by ``test_corpus.py``; this
module is how they were made, so a seed can be read here as well as in its file. Regenerate with
``.venv/bin/python -m tests.fuzz.seeds`` (it rewrites the files named here and leaves others alone).
Findings of fuzzing runs are added as ``finding-*`` files with the input that failed.
"""

from __future__ import annotations

import json
import zlib
from collections.abc import Callable
from pathlib import Path

import dns.edns
import dns.flags
import dns.message
import dns.opcode
import dns.rdatatype

from sidecar.catalog.model import ServiceMetadata, Subscription
from sidecar.catalog.sync import Claim, encode_claims
from sidecar.gossip.envelope import Envelope
from sidecar.gossip.keyring import Keyring
from sidecar.gossip.messages import (
    Alive,
    Dead,
    IndirectPing,
    Message,
    Ping,
    ProbeAck,
    ProbeNack,
    PushNodeState,
    PushPull,
    Suspect,
    UserMsg,
    compound_to_wire,
    to_wire,
)
from sidecar.gossip.state import MemberState
from tests.fuzz.targets import CORPUS, FUZZ_CLUSTER, FUZZ_KEY

ROOT = Path(__file__).resolve().parents[2]
POST = b"POST / HTTP/1.1\r\nHost: web\r\n"
OK = b"HTTP/1.1 200 OK\r\n"


def config_seeds() -> dict[str, bytes]:
    example = (ROOT / "config" / "sidecar.yaml").read_bytes()
    return {
        "example.yaml": example,
        "empty.yaml": b"",
        "minimal.yaml": b"node: {name: a}\n",
        "services.yaml": b"services:\n  - {name: web, port: 8080, check: {ttl: 15s}}\n  - {name: api, port: ${PORT}}\n",
        "policies.yaml": (b'policies:\n  "*": {timeout: 2s, circuit_breaker: {max_connections: 5}}\n'
                          b"  web: {retries: {attempts: 0}, load_balancer: round_robin}\n"),
        "authorization.yaml": b"authorization: {default: deny, rules: [{to: web, from: [api], methods: [GET]}]}\n",
        "subscriptions.yaml": b"subscriptions: [{topic: orders, path: /events}]\nmessaging: {max_attempts: 3}\n",
        "gossip-keys.yaml": b"gossip: {encrypt_keys: [" + FUZZ_KEY.encode() + b", not-base64!], profile: wan}\n",
        "top-level-list.yaml": b"- a\n- b\n",
        "top-level-scalar.yaml": b"42\n",
        "duplicate-key.yaml": b"node: {name: a}\nnode: {name: b}\n",
        "bad-indent.yaml": b"node:\n  name: a\n cluster: b\n",
        "tab.yaml": b"node:\n\tname: a\n",
        "unknown-keys.yaml": b"nod: {nmae: a}\nadmin: {lisen: x}\n",
        "wrong-types.yaml": b"admin: [1, 2]\ndns: {ttl: {a: 1}, upstreams: 5}\nservices: {name: x}\n",
        "aliases.yaml": b"a: &a [x, x, x, x]\nb: &b [*a, *a, *a, *a]\nc: &c [*b, *b, *b, *b]\nnode: {name: *c}\n",
        "python-tag.yaml": b"node: !!python/object/apply:os.system ['true']\n",
        "binary-tag.yaml": b"node: {name: !!binary aGVsbG8=}\n",
        "interpolation.yaml": b"node: {name: '${NAME:-x}', cluster: ${UNSET}}\napi: {listen: '$${x}'}\n",
        "huge-numbers.yaml": b"services: [{name: a, port: 1e999}, {name: b, port: 99999999999999999999999}]\n",
        "special-floats.yaml": b"dns: {ttl: .nan, rate_limit: {qps: -.inf}}\n",
        "unhashable-key.yaml": b"? [a, b]\n: c\n",
        "null-keys.yaml": b"~: 1\nnode: ~\n",
        "bom.yaml": b"\xef\xbb\xbfnode: {name: a}\n",
        "nested-deep.yaml": b"node: " + b"[" * 200 + b"]" * 200 + b"\n",
        "finding-not-utf8.yaml": b"node: {name: \xff\xfe}\n",
        "finding-nested-very-deep.yaml": b"node: " + b"[" * 5000 + b"\n",
    }


def _gossip_messages() -> list[tuple[str, Message]]:
    return [
        ("ping", Ping(7, "fuzz-a")),
        ("indirect-ping", IndirectPing(8, "fuzz-c", "127.0.0.1", 7948, True)),
        ("ack", ProbeAck(7)),
        ("nack", ProbeNack(8)),
        ("suspect", Suspect(3, "fuzz-c", "fuzz-b")),
        ("alive", Alive(2, "fuzz-b", "127.0.0.1", 7947, b'{"inbound":15006}')),
        ("dead", Dead(4, "fuzz-c", "fuzz-b")),
        ("user", UserMsg("fuzz-b", "catalog", 12, b"\x78\x9c\x03\x00\x00\x00\x00\x01")),
        ("push-pull", PushPull(False, (PushNodeState("fuzz-b", "127.0.0.1", 7947, b"", 2, MemberState.ALIVE),),
                               b"state")),
    ]


def gossip_seeds(keyring: Keyring | None) -> dict[str, bytes]:
    envelope = Envelope(FUZZ_CLUSTER, keyring)
    other = Envelope("other", keyring)
    seeds: dict[str, bytes] = {}
    wires = []
    for name, msg in _gossip_messages():
        wire = to_wire(msg)
        wires.append(wire)
        seeds[f"{name}.bin"] = envelope.seal(wire)
    seeds["compound.bin"] = envelope.seal(compound_to_wire(wires[:4]))
    seeds["other-cluster.bin"] = other.seal(to_wire(Ping(1, "")))
    seeds["truncated-compound.bin"] = envelope.seal(compound_to_wire(wires[:3])[:-3])
    seeds["empty.bin"] = b""
    seeds["header-only.bin"] = envelope.seal(b"")[: 2 + len(FUZZ_CLUSTER)]
    if keyring is None:
        seeds["encrypted-to-plain.bin"] = Envelope(FUZZ_CLUSTER, Keyring([FUZZ_KEY])).seal(wires[0])
        seeds["unknown-type.bin"] = envelope.seal(b"\xee\x00\x01")
        seeds["nested-compound.bin"] = envelope.seal(b"\x08\x01\x00\x03\x08\x00\x00")
        seeds["push-pull-huge-count.bin"] = envelope.seal(to_wire(_gossip_messages()[-1][1])[:2] + b"\xff\xff\xff")
    else:
        seeds["plain-to-encrypted.bin"] = Envelope(FUZZ_CLUSTER).seal(wires[0])
        seeds["other-key.bin"] = Envelope(FUZZ_CLUSTER, Keyring([b"k" * 32])).seal(wires[0])
        seeds["bad-version.bin"] = envelope.seal(wires[0])[:1 + 1 + len(FUZZ_CLUSTER)] + b"\x09" + b"\x00" * 40
    return seeds


def dns_seeds() -> dict[str, bytes]:
    def query(name: str, rdtype: str, **options: object) -> bytes:
        message = dns.message.make_query(name, rdtype, **options)  # type: ignore[arg-type]
        message.id = 4242
        return message.to_wire()

    cookie = dns.edns.GenericOption(dns.edns.COOKIE, b"\x01" * 8)
    notify = dns.message.make_query("mesh", "SOA")
    notify.id = 4243
    notify.set_opcode(dns.opcode.NOTIFY)
    response = dns.message.make_query("web.service.mesh", "A")
    response.id = 4244
    response.flags |= dns.flags.QR
    two = dns.message.make_query("web.service.mesh", "A")
    two.id = 4245
    two.question.append(two.question[0])
    plain = query("web.service.mesh", "A")
    return {
        "a.bin": plain,
        "aaaa.bin": query("web.service.mesh", "AAAA"),
        "srv.bin": query("_web._tcp.service.mesh", "SRV", use_edns=0, payload=1232),
        "tag.bin": query("blue.web.service.mesh", "A"),
        "node.bin": query("n1.node.mesh", "A"),
        "soa.bin": query("mesh", "SOA"),
        "any.bin": query("web.service.mesh", "ANY"),
        "nxdomain.bin": query("nope.service.mesh", "A"),
        "outside.bin": query("example.com", "A"),
        "axfr.bin": query("mesh", "AXFR"),
        "opt-question.bin": query("web.service.mesh", "OPT"),
        "dnssec.bin": query("web.service.mesh", "A", want_dnssec=True),
        "cookie.bin": query("web.service.mesh", "A", use_edns=0, options=[cookie]),
        "edns-version-1.bin": query("web.service.mesh", "A", use_edns=1),
        "chaos-class.bin": query("web.service.mesh", "A", rdclass="CH"),
        "notify.bin": notify.to_wire(),
        "response.bin": response.to_wire(),
        "two-questions.bin": two.to_wire(),
        "short-header.bin": plain[:11],
        "header-only.bin": plain[:12],
        "cut-question.bin": plain[:20],
        "trailing-junk.bin": plain + b"\x00\x01",
        "pointer-loop.bin": plain[:12] + b"\xc0\x0c\x00\x01\x00\x01",
        "label-64.bin": plain[:12] + b"\x40" + b"a" * 64 + b"\x00\x00\x01\x00\x01",
        "long-name.bin": plain[:12] + (b"\x3f" + b"a" * 63) * 4 + b"\x00\x00\x01\x00\x01",
        "opt-bad-rdlength.bin": query("web.service.mesh", "A", use_edns=0)[:-2] + b"\xff\xff",
        "counts-lie.bin": plain[:4] + b"\xff\xff\xff\xff\xff\xff\xff\xff" + plain[12:],
    }


def http_request_seeds() -> dict[str, bytes]:
    return {
        "get.http": b"GET /pay?x=1 HTTP/1.1\r\nHost: web\r\nAccept: */*\r\n\r\n",
        "post-cl.http": b"POST /pay HTTP/1.1\r\nHost: web\r\nContent-Length: 5\r\n\r\nhello",
        "post-chunked.http": POST + b"Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
        "chunk-trailers.http": (POST + b"Transfer-Encoding: chunked\r\n\r\n"
                                b"5;ext=1\r\nhello\r\n0\r\nX-Trailer: 1\r\n\r\n"),
        "pipelined.http": b"GET /a HTTP/1.1\r\nHost: web\r\n\r\nGET /b HTTP/1.1\r\nHost: web\r\n\r\n",
        "absolute-form.http": b"GET http://web.service.mesh/pay?x HTTP/1.1\r\nHost: other\r\n\r\n",
        "absolute-no-authority.http": b"GET http:///pay HTTP/1.1\r\nHost: web\r\n\r\n",
        "absolute-userinfo.http": b"GET http://user@web/ HTTP/1.1\r\nHost: web\r\n\r\n",
        "options-star.http": b"OPTIONS * HTTP/1.1\r\nHost: web\r\n\r\n",
        "http10-no-host.http": b"GET / HTTP/1.0\r\n\r\n",
        "connect.http": b"CONNECT web:443 HTTP/1.1\r\nHost: web:443\r\n\r\n",
        "websocket.http": (b"GET /ws HTTP/1.1\r\nHost: web\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"
                           b"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n\x81\x00"),
        "connection-named.http": b"GET / HTTP/1.1\r\nHost: web\r\nConnection: x-a, close\r\nX-A: 1\r\n\r\n",
        "te-tab-is-whitespace.http": POST + b"Transfer-Encoding:\tchunked\r\n\r\n0\r\n\r\n",  # OWS may be a tab
        # the smuggling corpus (smuggle-*): every one must be refused
        "smuggle-cl-te.http": (POST + b"Content-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n"
                               b"0\r\n\r\nGET /admin HTTP/1.1\r\nHost: web\r\n\r\n"),
        "smuggle-te-cl.http": POST + b"Transfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n0\r\n\r\n",
        "smuggle-duplicate-cl.http": POST + b"Content-Length: 3\r\nContent-Length: 4\r\n\r\nabcd",
        "smuggle-cl-list.http": POST + b"Content-Length: 3, 3\r\n\r\nabc",
        "smuggle-cl-sign.http": POST + b"Content-Length: +3\r\n\r\nabc",
        "smuggle-te-space.http": POST + b"Transfer-Encoding : chunked\r\n\r\n0\r\n\r\n",
        "smuggle-te-xchunked.http": POST + b"Transfer-Encoding: xchunked\r\n\r\n0\r\n\r\n",
        "smuggle-te-identity-chunked.http": (POST + b"Transfer-Encoding: identity, chunked\r\n\r\n"
                                             b"0\r\n\r\n"),
        "smuggle-te-chunked-identity.http": (POST + b"Transfer-Encoding: chunked, identity\r\n\r\n"
                                             b"0\r\n\r\n"),
        "smuggle-te-twice.http": (POST + b"Transfer-Encoding: chunked\r\n"
                                  b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n"),
        "smuggle-te-vertical-tab.http": POST + b"Transfer-Encoding:\x0bchunked\r\n\r\n0\r\n\r\n",
        "smuggle-te-http10.http": b"POST / HTTP/1.0\r\nHost: web\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        "smuggle-obs-fold.http": b"GET / HTTP/1.1\r\nHost: web\r\nX-A: 1\r\n  folded\r\n\r\n",
        "smuggle-obs-fold-te.http": POST + b"Transfer-Encoding:\r\n chunked\r\n\r\n0\r\n\r\n",
        "smuggle-bare-lf.http": b"GET / HTTP/1.1\nHost: web\n\n",
        "smuggle-bare-lf-header.http": b"GET / HTTP/1.1\r\nHost: web\nX-A: 1\r\n\r\n",
        "smuggle-bare-cr.http": b"GET / HTTP/1.1\r\nHost: web\rX-A: 1\r\n\r\n",
        "smuggle-chunk-size-hex-overflow.http": (POST + b"Transfer-Encoding: chunked\r\n\r\n"
                                                 b"fffffffffffffffff1\r\nx\r\n0\r\n\r\n"),
        "smuggle-chunk-size-negative.http": (POST + b"Transfer-Encoding: chunked\r\n\r\n"
                                             b"-1\r\nx\r\n0\r\n\r\n"),
        "smuggle-chunk-size-space.http": (POST + b"Transfer-Encoding: chunked\r\n\r\n"
                                          b"1 1\r\nx\r\n0\r\n\r\n"),
        "smuggle-chunk-size-0x.http": (POST + b"Transfer-Encoding: chunked\r\n\r\n"
                                       b"0x1\r\nx\r\n0\r\n\r\n"),
        "smuggle-chunk-no-crlf.http": (POST + b"Transfer-Encoding: chunked\r\n\r\n"
                                       b"1\r\nxx0\r\n\r\n"),
        "smuggle-two-hosts.http": b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
        "smuggle-no-host.http": b"GET / HTTP/1.1\r\n\r\n",
        "smuggle-space-before-colon.http": b"GET / HTTP/1.1\r\nHost : web\r\n\r\n",
        "smuggle-nul-in-value.http": b"GET / HTTP/1.1\r\nHost: web\r\nX-A: a\x00b\r\n\r\n",
        "http2-version.http": b"GET / HTTP/2.0\r\nHost: web\r\n\r\n",
        "http09.http": b"GET /\r\n\r\n",
        "h2-preface.http": b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
        "tls-hello.http": bytes.fromhex("16030100a5010000a10303") + b"\x00" * 40,
        "bad-target.http": b"GET pay HTTP/1.1\r\nHost: web\r\n\r\n",
        "many-headers.http": b"GET / HTTP/1.1\r\nHost: web\r\n" + b"X-A: 1\r\n" * 150 + b"\r\n",
        "long-header.http": b"GET / HTTP/1.1\r\nHost: web\r\nX-Long: " + b"a" * 70000 + b"\r\n\r\n",
        "long-target.http": b"GET /" + b"a" * 70000 + b" HTTP/1.1\r\nHost: web\r\n\r\n",
        "unterminated-header.http": b"GET / HTTP/1.1\r\nHost: web\r\nX-Endless: " + b"a" * 70000,
    }


def http_response_seeds() -> dict[str, bytes]:
    return {
        "200-cl.http": OK + b"Content-Type: text/plain\r\nContent-Length: 5\r\n\r\nhello",
        "200-chunked.http": OK + b"Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
        "200-close-delimited.http": OK + b"Connection: close\r\n\r\nhello until close",
        "http10.http": b"HTTP/1.0 200 OK\r\n\r\nbody",
        "204.http": b"HTTP/1.1 204 No Content\r\n\r\n",
        "304-with-cl.http": b"HTTP/1.1 304 Not Modified\r\nContent-Length: 100\r\n\r\n",
        "100-then-200.http": b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
        "103-then-200.http": b"HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n" + OK + b"Content-Length: 0\r\n\r\n",
        "101.http": b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n\x81\x00",
        "two-responses.http": OK + b"Content-Length: 1\r\n\r\naHTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\nb",
        "no-reason.http": b"HTTP/1.1 200 \r\nContent-Length: 0\r\n\r\n",
        "connection-named.http": OK + b"Connection: x-b\r\nX-B: 1\r\nContent-Length: 0\r\n\r\n",
        "leading-crlf.http": b"\r\nHTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n",
        "smuggle-cl-te.http": OK + b"Content-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        "smuggle-duplicate-cl.http": OK + b"Content-Length: 3\r\nContent-Length: 4\r\n\r\nabcd",
        "smuggle-te-gzip.http": OK + b"Transfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n",
        "smuggle-te-identity.http": OK + b"Transfer-Encoding: identity\r\n\r\nabc",
        "smuggle-obs-fold.http": OK + b"X-A: 1\r\n folded\r\nContent-Length: 0\r\n\r\n",
        "smuggle-bare-lf.http": b"HTTP/1.1 200 OK\nContent-Length: 0\n\n",
        "bad-chunk-size.http": OK + b"Transfer-Encoding: chunked\r\n\r\nzz\r\nx\r\n0\r\n\r\n",
        "bad-status.http": b"HTTP/1.1 2000 OK\r\nContent-Length: 0\r\n\r\n",
        "status-letters.http": b"HTTP/1.1 abc OK\r\nContent-Length: 0\r\n\r\n",
        "not-http.http": b"SSH-2.0-OpenSSH_9.0\r\n",
        "huge-cl.http": OK + b"Content-Length: 99999999999999999999999\r\n\r\n",
        "long-head.http": OK + b"X-Long: " + b"a" * 70000 + b"\r\nContent-Length: 0\r\n\r\n",
        "many-headers.http": OK + b"" + b"X-A: 1\r\n" * 150 + b"Content-Length: 0\r\n\r\n",
    }


def message_seeds() -> dict[str, bytes]:
    return {
        "valid.json": b'{"type": "payment_process", "payload": {"amount": 100}}',
        "with-metadata.json": b'{"type": "t", "payload": null, "metadata": {"traceparent": "00-x"}}',
        "service-message.json": (b'{"id": "1", "service": "a", "timestamp": 1, "type": "t", "payload": [1],'
                                 b' "metadata": {}}'),
        "missing-type.json": b'{"payload": 1}',
        "empty-type.json": b'{"type": "", "payload": 1}',
        "missing-payload.json": b'{"type": "t"}',
        "bad-metadata.json": b'{"type": "t", "payload": 1, "metadata": [1]}',
        "unknown-field.json": b'{"type": "t", "payload": 1, "extra": 2}',
        "array.json": b"[1, 2, 3]",
        "string.json": b'"x"',
        "empty.json": b"",
        "not-json.json": b"{type: t}",
        "not-utf8.json": b'{"type": "\xff", "payload": 1}',
        "utf16.json": '{"type": "t", "payload": 1}'.encode("utf-16"),
        "nan-infinity.json": b'{"type": "t", "payload": [NaN, Infinity, -Infinity], "timestamp": Infinity}',
        "huge-int.json": b'{"type": "t", "payload": ' + b"9" * 5000 + b"}",
        "lone-surrogate.json": b'{"type": "\\ud800", "payload": 1}',
        "duplicate-keys.json": b'{"type": "a", "type": "b", "payload": 1}',
        "finding-nested-deep.json": b'{"type": "t", "payload": ' + b"[" * 3000 + b"]" * 3000 + b"}",
        "finding-timestamp-infinity.json": b'{"id": "1", "service": "a", "timestamp": Infinity, "type": "t"}',
    }


def _state(node: str, **fields: object) -> list[object]:
    instance = dict(ServiceMetadata("web-1", "web", "1", "127.0.0.1", 8080, node=node).to_json())
    instance.update(fields)
    return [node, 1, [instance]]


def catalog_seeds() -> dict[str, bytes]:
    def doc(value: object) -> bytes:
        return zlib.compress(json.dumps(value).encode())

    instance = ServiceMetadata("web-1", "web", "1", "127.0.0.1", 8080, tags=("blue",), node="n1")
    return {
        "one-node.bin": encode_claims([Claim("n1", "c", "web", 17, (instance,), (), b"f" * 32, b"s", b"der")]),
        "subscriptions.bin": encode_claims([Claim("n1", "c", "web", 18, (instance,),
                                                  (Subscription("web", "orders", "/e"),))]),
        "empty.bin": encode_claims([]),
        "not-zlib.bin": b"not zlib at all",
        "truncated-zlib.bin": encode_claims([Claim("n1", "c", "web", 17, (instance,))])[:-4],
        "wrong-format.bin": doc([2, []]),
        "not-a-list.bin": doc({"a": 1}),
        "bad-state.bin": doc([1, [["n1", "v", []]]]),
        "bad-instance.bin": doc([1, [["n1", 1, [{"id": "x"}]]]]),
        "bad-status.bin": doc([1, [_state("n1", status="sleepy")]]),
        "bad-port.bin": doc([1, [_state("n1", port="eighty")]]),
        "bad-subscription.bin": doc([1, [["n1", 1, [], [["a", "b"]]]]]),
        "instance-not-object.bin": doc([1, [["n1", 1, [[1, 2]]]]]),
        "tags-not-list.bin": doc([1, [_state("n1", tags=5)]]),
        "huge-int-text.bin": zlib.compress(b'[1, [["n1", ' + b"9" * 5000 + b", []]]]"),
        "bomb.bin": zlib.compress(b"[" + b" " * (5 << 20) + b"]", 9),
        "finding-port-infinity.bin": zlib.compress(json.dumps([1, [_state("n1")]]).replace(
            b'"port": 8080'.decode(), '"port": Infinity').encode()),
        "finding-port-nan.bin": zlib.compress(json.dumps([1, [_state("n1")]]).replace(
            b'"port": 8080'.decode(), '"port": NaN').encode()),
        "finding-nested-deep.bin": zlib.compress(b"[1, " + b"[" * 3000 + b"]" * 3000 + b"]"),
    }


def http2_seeds() -> dict[str, bytes]:
    """A client's side of HTTP/2 connections (preface first), well-behaved and hostile."""
    from tests.unit.http2.peer import REQUEST, RawPeer

    def conn(*parts: bytes) -> bytes:
        return b"".join(parts)

    p = RawPeer()
    seeds = {
        "preface-only.h2": p.preface(),
        "get.h2": conn(p.preface(), p.headers(1, end_stream=True)),
        "grpc-unary.h2": conn(p.preface(), p.headers(1), p.data(1, b"\x00\x00\x00\x00\x02hi", end_stream=True)),
        "trailers.h2": conn(p.preface(), p.headers(1), p.data(1, b"body"),
                            p.headers(1, [(b"grpc-status", b"0")], end_stream=True)),
        "two-streams.h2": conn(p.preface(), p.headers(1), p.headers(3, end_stream=True),
                               p.data(1, b"x", end_stream=True)),
        "continuation.h2": conn(p.preface(), p.headers(1, block=p.block()[:3], end_headers=False),
                                p.continuation(1, p.block()[3:], end_headers=True)),
        "rapid-reset.h2": conn(p.preface(), *(p.headers(s) + p.rst(s) for s in range(1, 40, 2))),
        "ping-settings.h2": conn(p.preface(), p.ping(), p.settings(), p.window_update(0, 1000)),
        "goaway.h2": conn(p.preface(), p.headers(1), p.goaway(1)),
        "window-overflow.h2": conn(p.preface(), p.window_update(0, 2**31 - 1)),
        "closed-stream-data.h2": conn(p.preface(), p.headers(1, end_stream=True), p.data(1, b"late"),
                                      p.data(1, b"late")),
        "big-header.h2": conn(p.preface(), p.headers(1, [*REQUEST, (b"x-big", b"v" * 9000)])),
        "bad-preface.h2": b"PRI * HTTP/2.0\r\n\r\nXX\r\n\r\n" + p.settings(),
    }
    return seeds


def http2_listener_seeds() -> dict[str, bytes]:
    """Frames a client sends a listener after its preface and SETTINGS: requests that wait for an upstream
    (/held, body still coming), requests answered at once (404), and the hostile shapes."""
    from tests.unit.http2.peer import RawPeer

    held = [(b":method", b"POST"), (b":scheme", b"http"), (b":path", b"/held"), (b":authority", b"web")]
    grpc = [(b":method", b"POST"), (b":scheme", b"http"), (b":path", b"/held/pkg.S/M"), (b":authority", b"web"),
            (b"content-type", b"application/grpc"), (b"te", b"trailers")]
    missing = [(b":method", b"GET"), (b":scheme", b"http"), (b":path", b"/x"), (b":authority", b"nowhere")]

    def seed(build: Callable[[RawPeer], list[bytes]]) -> bytes:
        return b"".join(build(RawPeer()))   # a new HPACK encoder each: the listener's decoder starts empty

    return {
        "held-with-body.h2": seed(lambda p: [p.headers(1, held), p.data(1, b"body"), p.data(1, b"", end_stream=True)]),
        "held-then-reset.h2": seed(lambda p: [p.headers(1, held), p.data(1, b"x" * 100), p.rst(1)]),
        "not-found.h2": seed(lambda p: [p.headers(1, missing, end_stream=True)]),
        "not-found-with-body.h2": seed(lambda p: [p.headers(1, missing), p.data(1, b"late", end_stream=True)]),
        "grpc-trailers.h2": seed(lambda p: [p.headers(1, grpc), p.data(1, b"\x00\x00\x00\x00\x01x"),
                                            p.headers(1, [(b"x-trailer", b"1")], end_stream=True)]),
        "many-held.h2": seed(lambda p: [p.headers(s, held) for s in range(1, 20, 2)]),
        "past-the-limit.h2": seed(lambda p: [p.headers(s, held) for s in range(1, 2 * 104, 2)]),
        "rapid-reset.h2": seed(lambda p: [p.headers(s, held) + p.rst(s) for s in range(1, 60, 2)]),
        "window-updates.h2": seed(lambda p: [p.headers(1, missing, end_stream=True), p.window_update(1, 1000),
                                             p.window_update(0, 1 << 20)]),
        "goaway-then-more.h2": seed(lambda p: [p.headers(1, held), p.goaway(1), p.headers(3, missing)]),
        "continuation.h2": seed(lambda p: [p.headers(1, block=p.block(held)[:2], end_headers=False),
                                           p.continuation(1, p.block(held)[2:], end_headers=True)]),
        "bad-header.h2": seed(lambda p: [p.headers(1, [(b":method", b"GET"), (b":path", b"")], end_stream=True)]),
    }


def all_seeds() -> dict[str, dict[str, bytes]]:
    return {
        "config_yaml": config_seeds(),
        "gossip_plain": gossip_seeds(None),
        "gossip_encrypted": gossip_seeds(Keyring([FUZZ_KEY])),
        "dns_query": dns_seeds(),
        "http_request": http_request_seeds(),
        "http_response": http_response_seeds(),
        "http2_frames": http2_seeds(),
        "http2_listener": http2_listener_seeds(),
        "message_json": message_seeds(),
        "catalog_state": catalog_seeds(),
    }


def write_corpus(root: Path = CORPUS) -> int:
    count = 0
    for target, seeds in all_seeds().items():
        directory = root / target
        directory.mkdir(parents=True, exist_ok=True)
        for name, data in seeds.items():
            (directory / name).write_bytes(data)
            count += 1
    return count


if __name__ == "__main__":
    print(f"wrote {write_corpus()} seed files under {CORPUS}")
