"""Who may change the sidecar through the admin port: a pure rule, request facts in, a refusal or None out.

Theory of operation
-------------------
*Reads are open.* GET, HEAD and OPTIONS change nothing and show no secret (``/config`` redacts), and the
kubelet's probes and Prometheus must reach them without credentials.

*Every other method is a mutation*, whatever its path: the rule runs before routing, so a POST route that any
part adds later (``/deadletters/replay``, ``/config/rollback``) is guarded without having to opt in, and a
caller without the right to mutate learns nothing about which routes exist.

*With ``admin.token_file``* a mutation needs ``Authorization: Bearer TOKEN`` with the file's content, compared
in constant time; anything else is 401 UNAUTHENTICATED, from any address.

*Without it* the port trusts whoever can reach it, as Envoy's admin port and Consul without ACLs do, but only
on this host: mutations are accepted from loopback peers (the chart's preStop hook, ``sidecar`` commands, an
operator's curl on the node) and refused from anywhere else with 403 PERMISSION_DENIED naming the fix. A
loopback admin port is still reachable from a web page in the operator's browser (a cross-site form POST, or a
DNS-rebinding page): browsers mark those requests with an ``Origin`` header, which curl, the CLI and probes
never send, so without a token a mutation carrying ``Origin`` is refused too. A token is not replayable by a
page (it cannot set ``Authorization`` on a cross-site request without a CORS preflight we never answer).

The given token and the expected one are never logged or echoed; refusals say only what was missing.
"""

from __future__ import annotations

import hmac
import ipaddress

from sidecar.errors import PermissionDenied, SidecarError, Unauthenticated

# methods that change nothing (RFC 9110 "safe methods", TRACE aside: aiohttp has no handler for it)
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


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


def check_request(method: str, token: str | None, authorization: str | None, peer: str | None,
                  origin: str | None) -> SidecarError | None:
    """The refusal for one admin request, or None when it may proceed.

    ``token`` is admin.token_file's content (None: no token configured); ``authorization`` and ``origin`` are
    the request's headers (None when absent); ``peer`` is the client's IP address as the socket reports it.
    """
    if method.upper() in SAFE_METHODS:
        return None
    if token is not None:
        scheme, _, given = (authorization or "").strip().partition(" ")
        if scheme.lower() != "bearer" or not given.strip():
            return Unauthenticated("this endpoint needs Authorization: Bearer TOKEN (admin.token_file is set)")
        if not hmac.compare_digest(given.strip().encode(), token.encode()):
            return Unauthenticated("the admin token is wrong")
        return None
    if not is_loopback(peer):
        return PermissionDenied("without admin.token_file, the admin port accepts changes from this host's"
                                " loopback only; set admin.token_file to allow them from elsewhere",
                                {"peer": peer or "unknown"})
    if origin is not None:
        return PermissionDenied("without admin.token_file, the admin port refuses changes from web pages"
                                " (the request has an Origin header); use curl or the sidecar command,"
                                " or set admin.token_file")
    return None


def exposure_warning(listen_host: str, token: str | None) -> str | None:
    """What to tell the operator at start when the admin port listens beyond loopback, or None."""
    if token is not None or is_loopback(listen_host) or listen_host == "localhost":
        return None
    return (f"the admin port listens on {listen_host} without admin.token_file: reads are open to the network;"
            " changes are accepted from loopback only")


__all__ = ["SAFE_METHODS", "check_request", "exposure_warning", "is_loopback"]
