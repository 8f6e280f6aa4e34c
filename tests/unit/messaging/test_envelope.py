"""The stored ServiceMessage: built around the app's own JSON when that is safe, encoded otherwise; either way the
same JSON value as the message encoded from its parts. A bulk publish's body: its entries validated as single
publishes' bodies, each with its own bytes, or refused whole with the entry at fault named."""

from __future__ import annotations

import json
import uuid

import pytest

from sidecar.errors import InvalidArgument
from sidecar.messaging.envelope import MessageBody, ServiceMessage, bulk_from_bytes, encode_message, new_message_id

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


# ------------------------------------------------------------------------------------------ bulk publish

ENTRY = {"type": "t", "payload": 1}


@pytest.mark.parametrize("raw", [
    b'[{"type":"t","payload":1},{"type":"u","payload":{"k":[1,2]},"metadata":{"m":"v"}}]',
    b' [ {"type": "t", "payload": 1} ,\n\t{"type": "u", "payload": "caf\xc3\xa9"} ] \n',   # whitespace, UTF-8
    b'[{"payload":null,"type":"t","metadata":null}]',
    '[{"type":"t","payload":"\u00e9"}]'.encode("utf-16"),                                 # not UTF-8: parsed whole
])
def test_a_bulk_is_its_entries_each_as_a_single_publishs_body(raw: bytes) -> None:
    items = json.loads(raw)
    entries = bulk_from_bytes(raw)
    assert [body for body, _ in entries] == [MessageBody.from_json(item) for item in items]
    for (body, part), item in zip(entries, items, strict=True):
        if part is not None:   # an entry's own bytes are its JSON as sent
            assert json.loads(part) == item and part.startswith(b"{") and part.endswith(b"}")
            assert part in raw
        stored = encode_message(ID, "checkout", 1700000000000, body, part)
        assert json.loads(stored) == ServiceMessage(ID, "checkout", 1700000000000, body.type, body.payload,
                                                    body.metadata).to_json()


def test_a_compact_bulks_entries_are_stored_as_the_app_sent_them() -> None:
    parts = [b'{"type":"t","payload":%d}' % n for n in range(3)]
    entries = bulk_from_bytes(b"[" + b",".join(parts) + b"]")
    assert [part for _, part in entries] == parts
    assert encode_message(ID, "checkout", 1, *entries[0]).endswith(parts[0][1:])


@pytest.mark.parametrize("raw, message", [
    (b"", "request body is empty"),
    (b'{"type": "t", "payload": 1}', "request body must be a JSON array of messages (got dict)"),
    (b"[]", "a bulk publish has 1 to 1000 messages (got 0)"),
    (b" [ ] ", "a bulk publish has 1 to 1000 messages (got 0)"),
    (json.dumps([ENTRY] * 1001).encode(), "a bulk publish has 1 to 1000 messages (got more than 1000)"),
    (b'[{"type":"t","payload":1},]', "request body is not valid JSON"),
    (b'[{"type":"t","payload":1}] []', "request body is not valid JSON"),
    (b"[" * 100_000, "request body is not valid JSON"),
    (b'[{"type":"t","payload":1}, 5]', "[1]: a message is a JSON object {type, payload, metadata?} (got int)"),
    (b'[{"type":"t","payload":1}, {"type":"t","payload":1}, {"type":"t","payload":1}, {"payload":1}]',
     "[3].type: type is required"),
    (b'[{"type":"t"}]', "[0].payload: payload is required"),
    (b'[{"type":"t","payload":1,"metadata":[]}]', "[0].metadata: metadata must be a JSON object (got list)"),
    (b'[{"type":"t","payload":1,"extra":1}]', "[0].extra: unknown field 'extra'"),
])
def test_a_bad_bulk_is_refused_whole_naming_what_is_wrong(raw: bytes, message: str) -> None:
    with pytest.raises(InvalidArgument) as refused:
        bulk_from_bytes(raw)
    assert refused.value.message.startswith(message), refused.value.message


def test_a_bulk_of_the_most_entries_is_taken() -> None:
    assert len(bulk_from_bytes(json.dumps([ENTRY] * 1000).encode())) == 1000
