"""The ServiceMessage (the product's data model) and the bodies apps send to the messaging API."""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from typing import Any

from sidecar.errors import InvalidArgument

_TOPIC = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,199}$")
MAX_MESSAGE = 1 << 20  # one message's JSON; the API refuses larger bodies anyway (sidecar.web.MAX_BODY)


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
