"""Pieces the local HTTP surfaces' access rules share (``sidecar.admin.auth``, ``sidecar.api.guard``): loopback
addresses, ``Host`` headers, bearer tokens. Pure functions."""

from __future__ import annotations

import functools
import hmac
import ipaddress

from sidecar.errors import PermissionDenied, Unauthenticated


# asked for every request of the app API and the admin port, with the same few addresses: parsing one costs more
# than the rest of the access rule
@functools.lru_cache(maxsize=256)
def is_loopback(host: str | None) -> bool:
    """Whether a peer address is this host's loopback (127.0.0.0/8, ::1, or ::ffff:127.x.y.z)."""
    if not host:
        return False
    try:
        address = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped.is_loopback
    return address.is_loopback


def is_ip_literal(host: str) -> bool:
    try:
        ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return False
    return True


def host_of(authority: str) -> str | None:
    """The host part of a ``Host`` header (``name``, ``name:port``, ``[v6]:port``), lower case, without a
    trailing dot; None when it is not one."""
    text = authority.strip().lower()
    if text.startswith("["):
        end = text.find("]")
        if end < 0 or (text[end + 1:] and not text[end + 1:].startswith(":")):
            return None
        host, port = text[1:end], text[end + 2:]
    else:
        host, _, port = text.partition(":")
        if ":" in port:
            return None  # an IPv6 literal without brackets
    if port and not port.isdigit():
        return None
    return host.rstrip(".") or None


def rebinding_refusal(host: str | None, local_address: str | None, surface: str) -> PermissionDenied | None:
    """A refusal for a request that came in over loopback naming a host by a DNS name other than ``localhost``.

    A page in a browser on this host can make its own name resolve to 127.0.0.1 (DNS rebinding) and then read
    a loopback listener as its own origin; the browser still sends that name as ``Host``. Curl, apps, probes and
    Prometheus name a loopback listener by ``localhost`` or an IP address. A connection on another address came
    from the network, which reaches the listener anyway. ``surface`` names the listener in the message.
    """
    if not is_loopback(local_address):
        return None
    name = host_of(host) if host else None
    if name is not None and (name == "localhost" or is_ip_literal(name)):
        return None
    shown = (host or "")[:100]
    return PermissionDenied(f"the {surface} serves requests for localhost or an IP address only (Host {shown!r});"
                            " a page that rebinds a DNS name to this host is refused", {"host": shown})


def bearer_refusal(token: str, authorization: str | None, setting: str) -> Unauthenticated | None:
    """None when ``authorization`` is ``Bearer TOKEN`` with ``token`` (compared in constant time), else the
    refusal; ``setting`` names the config key that holds the token (``admin.token_file``)."""
    scheme, _, given = (authorization or "").strip().partition(" ")
    if scheme.lower() != "bearer" or not given.strip():
        return Unauthenticated(f"this endpoint needs Authorization: Bearer TOKEN ({setting} is set)")
    if not hmac.compare_digest(given.strip().encode(), token.encode()):
        return Unauthenticated(f"the token is wrong (the content of {setting} is expected)")
    return None


__all__ = ["bearer_refusal", "host_of", "is_ip_literal", "is_loopback", "rebinding_refusal"]
