"""The tunnel header: the line ``sidecar-tcp/1 SERVICE [TAG]\\n`` a tunnel between sidecars starts with, naming the
service its bytes are for.

The caller's sidecar writes it (a ``protocol: tcp`` upstream, ALPN ``sidecar-tcp/1``); the peer's inbound listener
reads it, then relays the rest of the connection to that service's app as it is.
"""

from __future__ import annotations

from typing import Final

from sidecar.mesh.naming import ServiceName

TUNNEL_MAGIC: Final = b"sidecar-tcp/1"
# a service name and a tag are DNS labels: a header line longer than this is not ours
MAX_TUNNEL_HEADER: Final = 256


class TunnelHeaderError(ValueError):
    """The first line of a tunnel is not ``sidecar-tcp/1 SERVICE [TAG]``."""


def encode_tunnel_header(name: ServiceName) -> bytes:
    """The line a tunnel starts with, naming the service (and tag) its bytes are for."""
    tag = b"" if name.tag is None else b" " + name.tag.encode("ascii")
    return TUNNEL_MAGIC + b" " + name.service.encode("ascii") + tag + b"\n"


def decode_tunnel_header(buffer: bytes) -> tuple[ServiceName, bytes] | None:
    """``(name, rest)`` once ``buffer`` holds the whole header line, None while it may still come;
    :class:`TunnelHeaderError` when it is not a tunnel header."""
    end = buffer.find(b"\n")
    if end < 0:
        if len(buffer) > MAX_TUNNEL_HEADER:
            raise TunnelHeaderError(f"no tunnel header line within {MAX_TUNNEL_HEADER} bytes")
        return None
    if end > MAX_TUNNEL_HEADER:
        raise TunnelHeaderError(f"tunnel header line longer than {MAX_TUNNEL_HEADER} bytes")
    words = buffer[:end].rstrip(b"\r").split(b" ")
    if len(words) not in (2, 3) or words[0] != TUNNEL_MAGIC or not all(words[1:]):
        raise TunnelHeaderError(f"not a tunnel header: {buffer[:min(end, 64)]!r}")
    try:
        service = words[1].decode("ascii").lower()
        tag = words[2].decode("ascii").lower() if len(words) == 3 else None
    except UnicodeDecodeError:
        raise TunnelHeaderError("tunnel header is not ASCII") from None
    return ServiceName(service, tag), buffer[end + 1:]
