"""The stored ServiceMessage: built around the app's own JSON when that is safe, encoded otherwise; either way the
same JSON value as the message encoded from its parts."""

from __future__ import annotations

import json
import uuid

import pytest

from sidecar.messaging.envelope import MessageBody, ServiceMessage, encode_message, new_message_id

ID = "6f1c2d3e-4a5b-4c6d-8e7f-8091a2b3c4d5"


def expected(raw: bytes) -> dict[str, object]:
    body = MessageBody.from_json(json.loads(raw))
    return ServiceMessage(ID, "checkout", 1700000000000, body.type, body.payload, body.metadata).to_json()


@pytest.mark.parametrize("raw, kept", [
    (b'{"type": "created", "payload": {"n": 1, "s": "\\u00e9\\"}"}}', True),
    (b'{"payload":[1,2.5,null,true],"type":"t","metadata":{"k":"v"}}', True),
    (b'{"type":"t","payload":"caf\xc3\xa9"}', True),                   # UTF-8 as sent
    (b'{"type":"t","payload":1,"metadata":null}', False),             # null metadata is left out of a message
    (b'{"type":"t",\n"payload":1}', False),                            # a line break: a stored message is one line
    (b' {"type":"t","payload":1}', False),                             # not from { to }
    ('{"type":"t","payload":1}'.encode("utf-16-le"), False),          # not UTF-8
    ('\ufeff{"type":"t","payload":1}'.encode("utf-8"), False),        # a byte-order mark
])
def test_a_stored_message_is_the_same_json_whether_the_apps_bytes_are_kept_or_not(raw: bytes, kept: bool) -> None:
    body = MessageBody.from_json(json.loads(raw))
    stored = encode_message(ID, "checkout", 1700000000000, body, raw)
    assert json.loads(stored) == expected(raw)
    assert stored.endswith(raw[1:]) is kept
    assert b"\n" not in stored and ServiceMessage.from_bytes(stored).id == ID


def test_message_ids_are_random_version_4_uuids() -> None:
    ids = {new_message_id() for _ in range(2000)}
    assert len(ids) == 2000
    for text in list(ids)[:200]:
        parsed = uuid.UUID(text)
        assert parsed.version == 4 and parsed.variant == uuid.RFC_4122 and str(parsed) == text
