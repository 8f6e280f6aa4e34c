"""The ServiceMessage (the product's data model) and the bodies apps send to the messaging API."""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from typing import Any

from sidecar.errors import InvalidArgument
from sidecar.jsonbody import json_body

_TOPIC = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,199}$")
_SPACE = re.compile(r"[ \t\n\r]*")   # JSON's whitespace
MAX_MESSAGE = 1 << 20  # one message's JSON; the API refuses larger bodies anyway (sidecar.web.MAX_BODY)
# messages of one bulk publish, as the bulk delivery's maxMessages (config.model.MAX_BULK_MESSAGES); the API's body
# limit (sidecar.web.MAX_BODY) bounds its bytes
MAX_BULK_PUBLISH = 1000
# the fields of a ServiceMessage's JSON as :meth:`ServiceMessage.to_bytes` writes them, in its order
_FIELDS = ("id", "service", "timestamp", "type", "payload")
_FIELDS_METADATA = (*_FIELDS, "metadata")
_ENCODER = json.JSONEncoder(separators=(",", ":"))
_DECODER = json.JSONDecoder()


def check_topic(topic: str) -> str:
    """``topic`` when it is a valid topic name, else InvalidArgument saying the rule."""
    if not _TOPIC.match(topic):
        raise InvalidArgument(f"topic must be letters, digits, '.', '_' and '-', 1 to 200 characters (got {topic!r})",
                              {"field": "topic", "topic": topic})
    return topic


def new_message_id() -> str:
    """A random (version 4) UUID as text, as ``str(uuid.uuid4())`` gives, without building a UUID object."""
    raw = bytearray(os.urandom(16))
    raw[6] = (raw[6] & 0x0F) | 0x40   # version 4
    raw[8] = (raw[8] & 0x3F) | 0x80   # RFC 4122 variant
    h = raw.hex()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def encode_message(message_id: str, sender: str, timestamp: int, body: MessageBody, raw: bytes | None) -> bytes:
    """The ServiceMessage ``{id, service, timestamp, type, payload, metadata?}`` as stored and delivered. With
    ``raw``, the app's own JSON of ``body`` (an object of type, payload and metadata, already parsed into ``body``),
    its members follow ``id``, ``service`` and ``timestamp`` as they are, not encoded again: the same JSON value.
    ``raw`` is taken only when it is one line of UTF-8 (no NUL, which any other encoding of ``{`` has, and no line
    break: a stored message is one line) from ``{`` to ``}``; else, or when it names ``metadata`` null (which
    the message leaves out), the message is encoded from ``body``."""
    if raw is not None and raw[:1] == b"{" and raw[-1:] == b"}" and len(raw) > 2 and b"\x00" not in raw \
            and b"\n" not in raw and b"\r" not in raw and (body.metadata is not None or b'"metadata"' not in raw):
        head = f'{{"id":{json.dumps(message_id)},"service":{json.dumps(sender)},"timestamp":{int(timestamp)},'
        return head.encode() + raw[1:]
    return ServiceMessage(message_id, sender, timestamp, body.type, body.payload, body.metadata).to_bytes()


@dataclass(frozen=True, slots=True)
class MessageBody:
    """What an app sends: ``{type, payload, metadata?}``."""

    type: str
    payload: Any
    metadata: dict[str, Any] | None = None

    @classmethod
    def from_json(cls, body: dict[str, Any]) -> MessageBody:
        """Validate a request body; InvalidArgument names the field at fault."""
        unknown = sorted(set(body) - {"type", "payload", "metadata"})
        if unknown:
            raise InvalidArgument(f"unknown field {unknown[0]!r}; a message has type, payload and metadata",
                                  {"field": unknown[0]})
        kind = body.get("type")
        if not isinstance(kind, str) or not kind:
            raise InvalidArgument("type is required and must be a non-empty string", {"field": "type"})
        if "payload" not in body:
            raise InvalidArgument("payload is required (any JSON value, null included)", {"field": "payload"})
        metadata = body.get("metadata")
        if metadata is not None and not isinstance(metadata, dict):
            raise InvalidArgument(f"metadata must be a JSON object (got {type(metadata).__name__})",
                                  {"field": "metadata"})
        return cls(kind, body["payload"], metadata)


# one entry of a bulk publish: its body, and its own JSON as the app sent it when that could be cut from the array
BulkEntry = tuple[MessageBody, bytes | None]


def bulk_from_bytes(raw: bytes) -> list[BulkEntry]:
    """A bulk publish's body: a JSON array of 1 to MAX_BULK_PUBLISH message bodies ``{type, payload, metadata?}``,
    each validated as a single publish's. InvalidArgument names the first entry at fault (``[3].type: ...``), so an
    array is taken whole or not at all. Each entry keeps its own bytes when the body is UTF-8 (for
    :func:`encode_message`, which decides whether they can be stored as they are)."""
    entries = _entries(raw)
    if entries is None:   # not cut: parsed whole, which also says what is wrong with it
        items = json_body(raw, "a JSON array of messages")
        if not isinstance(items, list):
            raise InvalidArgument(f"request body must be a JSON array of messages (got {type(items).__name__})")
        entries = [(item, None) for item in items]
    if not 1 <= len(entries) <= MAX_BULK_PUBLISH:
        count = f"more than {MAX_BULK_PUBLISH}" if len(entries) > MAX_BULK_PUBLISH else "0"
        raise InvalidArgument(f"a bulk publish has 1 to {MAX_BULK_PUBLISH} messages (got {count})",
                              {"maxMessages": MAX_BULK_PUBLISH})
    return [(_bulk_entry(index, item), part) for index, (item, part) in enumerate(entries)]


def _entries(raw: bytes) -> list[tuple[Any, bytes | None]] | None:
    """The entries of a JSON array in UTF-8, each with its own bytes, parsed once; None when ``raw`` is not one
    (:func:`bulk_from_bytes` then parses it whole) or has more than MAX_BULK_PUBLISH entries (the rest is not
    read: the array is refused)."""
    if raw[:1] != b"[":
        return None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        return None
    ascii = raw.isascii()   # then a character's index is its byte's
    out: list[tuple[Any, bytes | None]] = []
    at = _skip_space(text, 1)
    if text.startswith("]", at):
        return out if _skip_space(text, at + 1) == len(text) else None
    while len(out) <= MAX_BULK_PUBLISH:
        try:
            item, end = _DECODER.raw_decode(text, at)
        except (ValueError, RecursionError):
            return None
        out.append((item, raw[at:end] if ascii else text[at:end].encode()))
        at = _skip_space(text, end)
        if text.startswith(",", at):
            at = _skip_space(text, at + 1)
        elif text.startswith("]", at) and _skip_space(text, at + 1) == len(text):
            return out
        else:
            return None
    return out


def _skip_space(text: str, at: int) -> int:
    """The index of the first character at or after ``at`` that is not JSON whitespace."""
    space = _SPACE.match(text, at)
    return space.end() if space is not None else at


def _bulk_entry(index: int, item: Any) -> MessageBody:
    """Entry ``index`` of a bulk publish as a MessageBody; InvalidArgument prefixed with where it is."""
    if not isinstance(item, dict):
        raise InvalidArgument(f"[{index}]: a message is a JSON object {{type, payload, metadata?}} "
                              f"(got {type(item).__name__})", {"index": index, "field": f"[{index}]"})
    try:
        return MessageBody.from_json(item)
    except InvalidArgument as e:
        field = e.details.get("field")
        where = f"[{index}].{field}" if field else f"[{index}]"
        raise InvalidArgument(f"{where}: {e.message}", {**e.details, "index": index, "field": where}) from None


@dataclass(frozen=True, slots=True)
class ServiceMessage:
    """``{id, service, timestamp, type, payload, metadata}``; ``service`` is the sender, ``timestamp`` epoch ms."""

    id: str
    service: str
    timestamp: int
    type: str
    payload: Any
    metadata: dict[str, Any] | None = None

    @classmethod
    def new(cls, sender: str, body: MessageBody, now_ms: int, message_id: str | None = None) -> ServiceMessage:
        return cls(message_id or new_message_id(), sender, now_ms, body.type, body.payload, body.metadata)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"id": self.id, "service": self.service, "timestamp": self.timestamp,
                               "type": self.type, "payload": self.payload}
        if self.metadata is not None:
            out["metadata"] = self.metadata
        return out

    def to_bytes(self) -> bytes:
        return json.dumps(self.to_json(), separators=(",", ":")).encode()

    @classmethod
    def from_json(cls, data: Any) -> ServiceMessage:
        """Inverse of :meth:`to_json`; ValueError when ``data`` is not a ServiceMessage."""
        if not isinstance(data, dict):
            raise ValueError("a ServiceMessage is a JSON object")
        try:
            metadata = data.get("metadata")
            message = cls(str(data["id"]), str(data["service"]), int(data["timestamp"]), str(data["type"]),
                          data.get("payload"), metadata if isinstance(metadata, dict) else None)
        except (KeyError, TypeError, ValueError, OverflowError) as e:  # int() of "x", NaN or Infinity
            raise ValueError(f"not a ServiceMessage: {type(e).__name__}: {e}") from None
        return message

    @classmethod
    def from_bytes(cls, raw: bytes) -> ServiceMessage:
        try:
            data = json.loads(raw)
        except RecursionError:
            raise ValueError("not JSON: nested too deeply") from None
        except ValueError as e:  # JSONDecodeError, UnicodeDecodeError, an integer of more than 4300 digits
            raise ValueError(f"not JSON: {e}") from None
        return cls.from_json(data)


# one message of a batch from another sidecar: its id, its sender, and its JSON as the app gets it
Received = tuple[str, str, bytes]


def batch_from_bytes(raw: bytes) -> list[Received]:
    """A batch (a non-empty JSON array of ServiceMessages) as its messages (id, sender, JSON), each with the JSON
    :meth:`ServiceMessage.to_bytes` writes for it. A batch in that form (what a sidecar sends: the bodies it stored,
    joined) keeps its bytes: the array is parsed once and each message's own bytes are cut from it; any other is
    decoded and encoded again, message by message. ValueError when ``raw`` is not such a batch."""
    try:
        kept = _kept(raw)
        if kept is not None:
            return kept
        items = json.loads(raw)
    except RecursionError:
        raise ValueError("not JSON: nested too deeply") from None
    except ValueError as e:  # JSONDecodeError, UnicodeDecodeError, an integer of more than 4300 digits
        raise ValueError(f"not JSON: {e}") from None
    if not isinstance(items, list) or not items:
        raise ValueError("a batch is a non-empty JSON array of ServiceMessages")
    out = []
    for item in items:
        message = ServiceMessage.from_json(item)
        out.append((message.id, message.service, message.to_bytes()))
    return out


def _kept(raw: bytes) -> list[Received] | None:
    """:func:`batch_from_bytes` of a batch already in the form it writes, else None (then the slow way decides)."""
    if not raw.startswith(b"[{") or not raw.isascii():   # ASCII: a character's index is its byte's
        return None
    text = raw.decode("ascii")
    objects: list[Any] = []
    out: list[Received] = []
    start = 1
    while True:
        try:
            item, end = _DECODER.raw_decode(text, start)
        except ValueError:
            return None
        if type(item) is not dict or not _canonical(item):
            return None
        objects.append(item)
        out.append((item["id"], item["service"], raw[start:end]))
        if end >= len(text) or text[end] != ",":
            break
        start = end + 1
    # cut at the array's own commas: the whole written again the same proves every piece is as written
    if _ENCODER.encode(objects) != text:
        return None
    return out


def _canonical(item: dict[str, Any]) -> bool:
    """Whether a parsed message is a ServiceMessage that :meth:`ServiceMessage.to_bytes` writes as it came."""
    fields = tuple(item)
    if fields != _FIELDS and not (fields == _FIELDS_METADATA and type(item["metadata"]) is dict):
        return False
    return (type(item["id"]) is str and type(item["service"]) is str and type(item["timestamp"]) is int
            and type(item["type"]) is str)
