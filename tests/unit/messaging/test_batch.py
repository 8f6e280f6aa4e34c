"""A batch from another sidecar, read by the receiver: each message keeps the JSON the app has always got
(:meth:`ServiceMessage.to_bytes`), whether the batch came as a sidecar writes it (then its bytes are kept) or not
(then each message is decoded and encoded again)."""

from __future__ import annotations

import json

import pytest

from sidecar.messaging.courier import _message_id
from sidecar.messaging.envelope import MessageBody, ServiceMessage, batch_from_bytes


def _messages() -> list[ServiceMessage]:
    payloads = [1, None, "héllo\nworld", {"n": [1.5, -0.0, 1e300, True]}, [{"a": {"b": "\u2028"}}]]
    return [ServiceMessage.new("pub", MessageBody("t", p, {"traceparent": "00-ab"} if i % 2 else None),
                               1_700_000_000_000 + i) for i, p in enumerate(payloads)]


def test_a_batch_as_a_sidecar_writes_it_keeps_each_message_s_own_bytes() -> None:
    messages = _messages()
    raw = b"[" + b",".join(m.to_bytes() for m in messages) + b"]"
    got = batch_from_bytes(raw)
    assert got == [(m.id, "pub", m.to_bytes()) for m in messages]


@pytest.mark.parametrize("raw", [
    b'[ {"id":"a","service":"pub","timestamp":1,"type":"t","payload":1}]',                    # whitespace
    b'[{"service":"pub","id":"a","timestamp":1,"type":"t","payload":1}]',                     # field order
    b'[{"id":"a","service":"pub","timestamp":1,"type":"t","payload":1,"extra":2}]',           # a field too many
    b'[{"id":"a","service":"pub","timestamp":1,"type":"t","payload":1,"metadata":null}]',     # metadata null
    b'[{"id":"a","service":"pub","timestamp":1.0,"type":"t","payload":1}]',                   # a float timestamp
    b'[{"id":"a","service":"pub","timestamp":1,"type":"t","payload":1.50}]',                  # a number spelt long
    b'[{"id":"a","service":"pub","timestamp":1,"type":"t","payload":"\\u0041"}]',             # an escape not needed
    '[{"id":"a","service":"pub","timestamp":1,"type":"t","payload":"é"}]'.encode(),           # not ASCII
])
def test_any_other_batch_gets_each_message_encoded_as_before(raw: bytes) -> None:
    expected = [ServiceMessage.from_json(item).to_bytes() for item in json.loads(raw)]
    assert [body for _, _, body in batch_from_bytes(raw)] == expected


@pytest.mark.parametrize("raw", [b"", b"[]", b"{}", b"[1]", b'[{"id":"a"}]', b"\xff",
                                 b'[{"id":"a","service":"pub","timestamp":1,"type":"t","payload":1}',
                                 b'[{"id":"a","service":"pub","timestamp":1,"type":"t","payload":1}]x',
                                 b'[{"id":"a","service":"pub","timestamp":"x","type":"t","payload":1}]',
                                 b"[" * 100_000])
def test_what_is_not_a_batch_of_service_messages_is_refused(raw: bytes) -> None:
    with pytest.raises(ValueError):
        batch_from_bytes(raw)


@pytest.mark.parametrize("body", [
    *(ServiceMessage.new("pub", MessageBody("t", 1), 1, i).to_bytes()
      for i in ("9b4d7c1e-2f7a-4c1e-9d0b-1a2b3c4d5e6f", 'a"b', "a\\b", "é", "x")),
    b'{"id":"x', b'{"idx":1}', b'{"id":"a\\u0041"}', b'{"id":"\xff"}', b'{"id":7}', b"[]", b"",
])
def test_a_stored_message_s_id_is_read_as_its_json_says(body: bytes) -> None:
    try:
        doc = json.loads(body)
        expected = doc["id"] if isinstance(doc, dict) and isinstance(doc.get("id"), str) else ""
    except ValueError:
        expected = ""
    assert _message_id(body) == expected
