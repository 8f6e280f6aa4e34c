"""Every fuzzing finding, as the error it must now be (the inputs are also in the corpus as ``finding-*``)."""

from __future__ import annotations

import json
import zlib
from pathlib import Path

import pytest

from sidecar.catalog.model import ServiceMetadata
from sidecar.catalog.sync import SyncDecodeError, decode_claims
from sidecar.config.load import read_yaml
from sidecar.errors import ConfigError, InvalidArgument
from sidecar.messaging.delivery import _status_field
from sidecar.messaging.envelope import ServiceMessage
from tests.fuzz.targets import message_json

DEEP = b"[" * 3000 + b"]" * 3000  # deeper than the interpreter's recursion limit (1000)


def _state_with_port(port: str) -> bytes:
    instance = json.dumps(ServiceMetadata("w", "web", "1", "127.0.0.1", 8080, node="n1").to_json())
    return zlib.compress(b'[2, [["n1", "c", "web", 1, [' + instance.replace('"port": 8080', f'"port": {port}').encode()
                         + b'], [], "", "", ""]]]')


# catalog claims from peers: RecursionError and OverflowError escaped the decoder, and a peer could make
# the replication handler raise on every push-pull
@pytest.mark.parametrize("data", [zlib.compress(b"[2, " + DEEP + b"]"), _state_with_port("Infinity")],
                         ids=["nested-deep", "port-infinity"])
def test_catalog_state_findings_are_decode_errors(data: bytes) -> None:
    with pytest.raises(SyncDecodeError, match="malformed catalog claim"):
        decode_claims(data)


# YAML: a non-UTF-8 file raised UnicodeDecodeError, deep nesting RecursionError, and a list as a key
# TypeError, each a traceback from `sidecar validate` instead of a one-line problem
@pytest.mark.parametrize(("text", "problem"), [
    (b"node: {name: \xff\xfe}\n", "not UTF-8 text"),
    (b"node: " + b"[" * 5000 + b"\n", "nested too deeply"),
    (b"? [a, b]\n: c\n", "a key must be a scalar"),
], ids=["not-utf8", "nested-deep", "unhashable-key"])
def test_yaml_findings_are_config_errors(tmp_path: Path, text: bytes, problem: str) -> None:
    path = tmp_path / "bad.yaml"
    path.write_bytes(text)
    with pytest.raises(ConfigError) as caught:
        read_yaml(str(path))
    assert len(caught.value.problems) == 1 and problem in caught.value.problems[0]
    assert caught.value.problems[0].startswith(str(path))


# request bodies at the API: deep nesting (RecursionError) and a 5000-digit integer (ValueError, not a
# JSONDecodeError) escaped read_json_object, and the API answered 500 INTERNAL instead of 400
@pytest.mark.parametrize("body", [b'{"type": "t", "payload": ' + DEEP + b"}",
                                  b'{"type": "t", "payload": ' + b"9" * 5000 + b"}"],
                         ids=["nested-deep", "huge-int"])
def test_message_body_findings_are_invalid_argument(body: bytes) -> None:
    message_json(body)  # would raise anything but InvalidArgument
    from sidecar.web import read_json_object

    class Body:
        async def read(self) -> bytes:
            return body

    coroutine = read_json_object(Body())  # type: ignore[arg-type]
    with pytest.raises(InvalidArgument, match="not valid JSON"):
        coroutine.send(None)


# ServiceMessage from a sidecar's stream (the Python client): int(Infinity) raised OverflowError
@pytest.mark.parametrize("raw", [b'{"id": "1", "service": "a", "timestamp": Infinity, "type": "t"}',
                                 b'{"id": "1", "service": "a", "timestamp": NaN, "type": "t"}', DEEP],
                         ids=["timestamp-infinity", "timestamp-nan", "nested-deep"])
def test_service_message_findings_are_value_errors(raw: bytes) -> None:
    with pytest.raises(ValueError, match="not"):
        ServiceMessage.from_bytes(raw)


# a subscriber app's answer: deep nesting raised RecursionError out of the delivery's verdict
def test_a_deeply_nested_delivery_answer_has_no_verdict() -> None:
    assert _status_field(b'{"status": ' + DEEP + b"}") is None
    assert _status_field(b'{"status": "drop"}') == "DROP"


# the proxy forwarded an HTTP/1.0 request framed by Transfer-Encoding (RFC 9112 6.1: faulty framing), which
# the aiohttp listeners refuse; found by the abuse corpus at the outbound listener
def test_transfer_encoding_on_http10_is_refused_by_the_proxy() -> None:
    from sidecar.proxy.http1 import MalformedRequest
    from sidecar.proxy.http1read import RequestReader
    from tests.fuzz.targets import _RequestSink

    sink = _RequestSink()
    with pytest.raises(MalformedRequest, match=r"HTTP/1\.0"):
        RequestReader(sink).feed(b"POST / HTTP/1.0\r\nHost: web\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n")
    assert sink.heads == []
