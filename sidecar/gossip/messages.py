"""Gossip messages and their wire form: ``to_wire``/``from_wire`` pairs, big-endian, no dependency.

Every message is one type byte followed by fixed-width integers and length-prefixed fields:
``str8`` is a byte of length then UTF-8 text (names, hosts, keys: at most 255 bytes), ``bytes16`` and
``bytes32`` carry opaque payloads (metadata, user data, push-pull user state).

    PING           seq:u32 node:str8                       node = the name the prober means to reach
    INDIRECT_PING  seq:u32 flags:u8 node:str8 host:str8 port:u16          flags bit 0: send a nack
    ACK / NACK     seq:u32
    SUSPECT / DEAD incarnation:u32 node:str8 sender:str8                  dead with node == sender: left
    ALIVE          incarnation:u32 port:u16 node:str8 host:str8 meta:bytes16
    PUSH_PULL      flags:u8 count:u32 {incarnation:u32 port:u16 state:u8 name:str8 host:str8 meta:bytes16}
                   user_state:bytes32                                     flags bit 0: join
    USER           version:u64 origin:str8 key:str8 data:bytes16
    COMPOUND       count:u8 {length:u16} {part}                           parts are single messages

Decoding anything malformed raises :class:`GossipDecodeError` and nothing else.
"""

from __future__ import annotations

import enum
import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from sidecar.gossip.errors import GossipDecodeError, GossipMessageTooLarge
from sidecar.gossip.state import MemberState


class MessageType(enum.IntEnum):
    PING = 1
    INDIRECT_PING = 2
    ACK = 3
    NACK = 4
    SUSPECT = 5
    ALIVE = 6
    DEAD = 7
    PUSH_PULL = 8
    COMPOUND = 9
    USER = 10


@dataclass(frozen=True, slots=True)
class Ping:
    seq: int
    node: str  # the member the prober means to reach; a restarted process under another name ignores it


@dataclass(frozen=True, slots=True)
class IndirectPing:
    seq: int
    node: str
    host: str
    port: int
    nack: bool = True  # Lifeguard: answer with a nack when the target stays silent


@dataclass(frozen=True, slots=True)
class ProbeAck:
    seq: int


@dataclass(frozen=True, slots=True)
class ProbeNack:
    seq: int


@dataclass(frozen=True, slots=True)
class Suspect:
    incarnation: int
    node: str
    sender: str


@dataclass(frozen=True, slots=True)
class Alive:
    incarnation: int
    node: str
    host: str
    port: int
    meta: bytes = b""


@dataclass(frozen=True, slots=True)
class Dead:
    incarnation: int
    node: str
    sender: str  # == node when the member leaves by itself

    @property
    def is_leave(self) -> bool:
        return self.node == self.sender


@dataclass(frozen=True, slots=True)
class PushNodeState:
    name: str
    host: str
    port: int
    meta: bytes
    incarnation: int
    state: MemberState


@dataclass(frozen=True, slots=True)
class PushPull:
    join: bool
    states: tuple[PushNodeState, ...]
    user_state: bytes = b""


@dataclass(frozen=True, slots=True)
class UserMsg:
    origin: str
    key: str
    version: int
    data: bytes


Message = Ping | IndirectPing | ProbeAck | ProbeNack | Suspect | Alive | Dead | PushPull | UserMsg

MAX_META = 512  # bytes of per-member metadata: it rides in every alive message and push-pull entry

_STATE_CODE = {MemberState.ALIVE: 0, MemberState.SUSPECT: 1, MemberState.DEAD: 2, MemberState.LEFT: 3}
_CODE_STATE = {code: state for state, code in _STATE_CODE.items()}

_SEQ = struct.Struct(">BI")
_INC = struct.Struct(">BI")
_ALIVE = struct.Struct(">BIH")
_IND = struct.Struct(">BIB")
_USER = struct.Struct(">BQ")
_PP = struct.Struct(">BBI")
_PP_ENTRY = struct.Struct(">IHB")
_U8 = struct.Struct(">B")
_U16 = struct.Struct(">H")
_U32 = struct.Struct(">I")


def _str8(text: str) -> bytes:
    raw = text.encode()
    if len(raw) > 255:
        raise GossipMessageTooLarge(f"name {text[:20]!r}...", len(raw), 255)
    return _U8.pack(len(raw)) + raw


def _bytes16(data: bytes) -> bytes:
    if len(data) > 0xFFFF:
        raise GossipMessageTooLarge("payload", len(data), 0xFFFF)
    return _U16.pack(len(data)) + data


def to_wire(msg: Message) -> bytes:
    """The wire form of one message (a compound is built with :func:`compound_to_wire`)."""
    if isinstance(msg, Ping):
        return _SEQ.pack(MessageType.PING, msg.seq) + _str8(msg.node)
    if isinstance(msg, ProbeAck):
        return _SEQ.pack(MessageType.ACK, msg.seq)
    if isinstance(msg, Alive):
        return (_ALIVE.pack(MessageType.ALIVE, msg.incarnation, msg.port) + _str8(msg.node) + _str8(msg.host)
                + _bytes16(msg.meta))
    if isinstance(msg, Suspect):
        return _INC.pack(MessageType.SUSPECT, msg.incarnation) + _str8(msg.node) + _str8(msg.sender)
    if isinstance(msg, Dead):
        return _INC.pack(MessageType.DEAD, msg.incarnation) + _str8(msg.node) + _str8(msg.sender)
    if isinstance(msg, UserMsg):
        return _USER.pack(MessageType.USER, msg.version) + _str8(msg.origin) + _str8(msg.key) + _bytes16(msg.data)
    if isinstance(msg, IndirectPing):
        return (_IND.pack(MessageType.INDIRECT_PING, msg.seq, 1 if msg.nack else 0) + _str8(msg.node)
                + _str8(msg.host) + _U16.pack(msg.port))
    if isinstance(msg, ProbeNack):
        return _SEQ.pack(MessageType.NACK, msg.seq)
    if isinstance(msg, PushPull):
        parts = [_PP.pack(MessageType.PUSH_PULL, 1 if msg.join else 0, len(msg.states))]
        for s in msg.states:
            parts.append(_PP_ENTRY.pack(s.incarnation, s.port, _STATE_CODE[s.state]))
            parts.append(_str8(s.name))
            parts.append(_str8(s.host))
            parts.append(_bytes16(s.meta))
        parts.append(_U32.pack(len(msg.user_state)))
        parts.append(msg.user_state)
        return b"".join(parts)
    raise TypeError(f"not a gossip message: {type(msg).__name__}")


def compound_to_wire(parts: Sequence[bytes]) -> bytes:
    """Several encoded messages in one packet; a single part is sent as itself."""
    if len(parts) == 1:
        return parts[0]
    if not parts or len(parts) > 255:
        raise ValueError(f"a compound message holds 2 to 255 parts (got {len(parts)})")
    head = bytearray((MessageType.COMPOUND, len(parts)))
    for part in parts:
        head += _U16.pack(len(part))
    return bytes(head) + b"".join(parts)


COMPOUND_HEADER = 2  # type and count
COMPOUND_PER_PART = 2  # the length of each part


# ------------------------------------------------------------------------------------------ decoding


class _FieldReader:
    __slots__ = ("data", "pos")

    def __init__(self, data: bytes, pos: int) -> None:
        self.data = data
        self.pos = pos

    def str8(self) -> str:
        data, pos = self.data, self.pos
        if pos >= len(data):
            raise GossipDecodeError("truncated text field")
        end = pos + 1 + data[pos]
        if end > len(data):
            raise GossipDecodeError("truncated text field")
        self.pos = end
        return data[pos + 1 : end].decode()

    def blob(self, size: struct.Struct) -> bytes:
        data, pos = self.data, self.pos
        (length,) = size.unpack_from(data, pos)
        start = pos + size.size
        end = start + length
        if end > len(data):
            raise GossipDecodeError("truncated payload field")
        self.pos = end
        return data[start:end]

    def u16(self) -> int:
        (value,) = _U16.unpack_from(self.data, self.pos)
        self.pos += 2
        return int(value)

    def done(self) -> None:
        if self.pos != len(self.data):
            raise GossipDecodeError(f"{len(self.data) - self.pos} unexpected bytes after the message")


def _ping(data: bytes) -> Message:
    _, seq = _SEQ.unpack_from(data, 0)
    r = _FieldReader(data, _SEQ.size)
    msg = Ping(seq, r.str8())
    r.done()
    return msg


def _ack(data: bytes) -> Message:
    if len(data) != _SEQ.size:
        raise GossipDecodeError("an ack is 5 bytes")
    return ProbeAck(_SEQ.unpack_from(data, 0)[1])


def _nack(data: bytes) -> Message:
    if len(data) != _SEQ.size:
        raise GossipDecodeError("a nack is 5 bytes")
    return ProbeNack(_SEQ.unpack_from(data, 0)[1])


def _indirect(data: bytes) -> Message:
    _, seq, flags = _IND.unpack_from(data, 0)
    r = _FieldReader(data, _IND.size)
    node, host = r.str8(), r.str8()
    msg = IndirectPing(seq, node, host, r.u16(), bool(flags & 1))
    r.done()
    return msg


def _suspect(data: bytes) -> Message:
    _, inc = _INC.unpack_from(data, 0)
    r = _FieldReader(data, _INC.size)
    msg = Suspect(inc, r.str8(), r.str8())
    r.done()
    return msg


def _dead(data: bytes) -> Message:
    _, inc = _INC.unpack_from(data, 0)
    r = _FieldReader(data, _INC.size)
    msg = Dead(inc, r.str8(), r.str8())
    r.done()
    return msg


def _alive(data: bytes) -> Message:
    _, inc, port = _ALIVE.unpack_from(data, 0)
    r = _FieldReader(data, _ALIVE.size)
    node, host = r.str8(), r.str8()
    meta = r.blob(_U16)
    r.done()
    if len(meta) > MAX_META:
        raise GossipDecodeError(f"metadata of {len(meta)} bytes is over {MAX_META}")
    return Alive(inc, node, host, port, meta)


def _user(data: bytes) -> Message:
    _, version = _USER.unpack_from(data, 0)
    r = _FieldReader(data, _USER.size)
    origin, key = r.str8(), r.str8()
    msg = UserMsg(origin, key, version, r.blob(_U16))
    r.done()
    return msg


def _push_pull(data: bytes) -> Message:
    _, flags, count = _PP.unpack_from(data, 0)
    # each entry takes at least 11 bytes: refuse absurd counts before allocating anything
    if count * 11 > len(data):
        raise GossipDecodeError(f"push-pull claims {count} members in {len(data)} bytes")
    r = _FieldReader(data, _PP.size)
    states = []
    for _ in range(count):
        inc, port, code = _PP_ENTRY.unpack_from(data, r.pos)
        r.pos += _PP_ENTRY.size
        state = _CODE_STATE.get(code)
        if state is None:
            raise GossipDecodeError(f"unknown member state {code}")
        name, host = r.str8(), r.str8()
        meta = r.blob(_U16)
        states.append(PushNodeState(name, host, port, meta, inc, state))
    user_state = r.blob(_U32)
    r.done()
    return PushPull(bool(flags & 1), tuple(states), user_state)


_DECODERS: dict[int, Callable[[bytes], Message]] = {
    MessageType.PING: _ping,
    MessageType.INDIRECT_PING: _indirect,
    MessageType.ACK: _ack,
    MessageType.NACK: _nack,
    MessageType.SUSPECT: _suspect,
    MessageType.ALIVE: _alive,
    MessageType.DEAD: _dead,
    MessageType.PUSH_PULL: _push_pull,
    MessageType.USER: _user,
}


# Gossip delivers the same bytes many times (every member passes each broadcast on several times), and
# messages are immutable: recently decoded small messages are reused instead of decoded again.
_CACHE_SIZE = 8192
_CACHE_MAX_BYTES = 1500
_cache: dict[bytes, Message] = {}


def from_wire(data: bytes) -> Message:
    """One message from its wire form; raises GossipDecodeError on anything malformed."""
    cached = _cache.get(data)
    if cached is not None:
        return cached
    if not data:
        raise GossipDecodeError("empty message")
    decoder = _DECODERS.get(data[0])
    if decoder is None:
        raise GossipDecodeError(f"unknown message type {data[0]}")
    try:
        msg = decoder(data)
    except GossipDecodeError:
        raise
    except (struct.error, UnicodeDecodeError, IndexError, ValueError) as exc:
        raise GossipDecodeError(f"malformed {MessageType(data[0]).name.lower()} message: {exc}") from None
    if len(data) <= _CACHE_MAX_BYTES:
        if len(_cache) >= _CACHE_SIZE:
            _cache.clear()
        _cache[data] = msg
    return msg


def split_packet(data: bytes) -> list[bytes]:
    """The messages of a packet: the parts of a compound, or the packet itself."""
    if not data:
        raise GossipDecodeError("empty packet")
    if data[0] != MessageType.COMPOUND:
        return [data]
    if len(data) < 2:
        raise GossipDecodeError("truncated compound header")
    count = data[1]
    pos = 2 + 2 * count
    if count == 0 or pos > len(data):
        raise GossipDecodeError("truncated compound header")
    parts = []
    for i in range(count):
        length = (data[2 + 2 * i] << 8) | data[3 + 2 * i]
        end = pos + length
        if end > len(data):
            raise GossipDecodeError("truncated compound part")
        part = data[pos:end]
        if not part or part[0] == MessageType.COMPOUND:
            raise GossipDecodeError("empty or nested compound part")
        parts.append(part)
        pos = end
    if pos != len(data):
        raise GossipDecodeError("unexpected bytes after the compound parts")
    return parts


def packet_from_wire(data: bytes) -> list[Message]:
    """Every message of a packet, compound or not."""
    return [from_wire(part) for part in split_packet(data)]
