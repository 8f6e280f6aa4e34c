"""Dialing: the only place the proxy opens a connection to an upstream.

Identity: a Target's ``verify`` runs once on each new TLS connection, inside :func:`dial` (so pooled HTTP
connections and TCP relay tunnels alike), before the connection is used or pooled; a refusal closes it and
fails the attempt as :class:`ConnectFailure`. Requests on a pooled connection pay nothing for it.

TLS session reuse: ``loop.create_connection`` has no parameter for an ``ssl.SSLSession``, but both
uvloop and asyncio create the TLS object by calling ``sslcontext.wrap_bio(...)`` from Python while the
connection is being made. :func:`_enable_session_reuse` gives the context (once) an instance-level
``wrap_bio`` that adds ``session=`` from a context variable, which the dialing task sets to the session
of the last connection of the same pool. A session the server does not accept only costs a full
handshake. The session is taken when a connection is released, after TLS 1.3 tickets have arrived.
"""

from __future__ import annotations

import asyncio
import contextvars
import errno
import logging
import ssl
from collections.abc import Callable
from typing import Any, TypeVar

from sidecar.proxy.failures import ConnectFailure
from sidecar.proxy.target import Target

# dial refusals are logged under the pool's name, the logger operators and the tests select them by
log = logging.getLogger("sidecar.proxy.pool")

_session_to_offer: contextvars.ContextVar[ssl.SSLSession | None] = contextvars.ContextVar(
    "sidecar_proxy_tls_session", default=None)


def _enable_session_reuse(context: ssl.SSLContext) -> None:
    if getattr(context, "_sidecar_session_reuse", False):
        return
    original = context.wrap_bio

    def wrap_bio(incoming: ssl.MemoryBIO, outgoing: ssl.MemoryBIO, server_side: bool = False,
                 server_hostname: str | bytes | None = None, session: ssl.SSLSession | None = None) -> ssl.SSLObject:
        if session is None and not server_side:
            session = _session_to_offer.get()
        return original(incoming, outgoing, server_side=server_side, server_hostname=server_hostname,
                        session=session)

    context.wrap_bio = wrap_bio  # type: ignore[method-assign]  # the documented hook above
    context._sidecar_session_reuse = True  # type: ignore[attr-defined]


_P = TypeVar("_P", bound=asyncio.BaseProtocol)


async def dial(target: Target, factory: Callable[[], _P], timeout: float,
               session: ssl.SSLSession | None = None) -> tuple[asyncio.Transport, _P]:
    """Connect to ``target`` (TLS when it has a context, offering ``session``); raises ConnectFailure."""
    host, port = target.address
    kwargs: dict[str, Any] = {}
    if target.ssl is not None:
        _enable_session_reuse(target.ssl)
        _session_to_offer.set(session)
        kwargs = {"ssl": target.ssl, "server_hostname": target.server_hostname or host}
    loop = asyncio.get_running_loop()
    try:
        async with asyncio.timeout(timeout):
            transport, protocol = await loop.create_connection(factory, host, port, **kwargs)
    except (OSError, TimeoutError, ssl.SSLError) as e:
        raise connect_failure(target.authority, e, timeout) from e
    finally:
        _session_to_offer.set(None)
    if target.verify is not None:
        _verify_peer(target, transport)
    return transport, protocol


def _verify_peer(target: Target, transport: asyncio.Transport) -> None:
    """Run the target's identity check on a new TLS connection; refuse (close, ConnectFailure) if it raises."""
    assert target.verify is not None
    ssl_object = transport.get_extra_info("ssl_object")
    try:
        if ssl_object is None:
            raise ValueError("the connection is not TLS, so the peer cannot be identified")
        target.verify(ssl_object)
    except Exception as e:
        transport.abort()
        reason = f"peer identity refused: {e}"
        # a peer that answers with the wrong identity is a misrouting or an impostor: worth a warning each time
        log.warning("refused upstream %s: %s", target.authority, reason)
        raise ConnectFailure(target.authority, reason, {"tls": True, "identity": "refused"}) from e


def connect_failure(address: str, e: BaseException, timeout: float) -> ConnectFailure:
    if isinstance(e, TimeoutError):
        return ConnectFailure(address, f"no connection within {timeout:.3f}s")
    if isinstance(e, ssl.SSLError) and getattr(e, "sidecar_identity", False):
        # the handshake refused a server with another service's certificate (sidecar.tls.context)
        reason = f"peer identity refused: {e}"
        log.warning("refused upstream %s: %s", address, reason)
        return ConnectFailure(address, reason, {"tls": True, "identity": "refused"})
    if isinstance(e, ssl.SSLError):
        return ConnectFailure(address, f"TLS handshake failed: {e.reason or e}", {"tls": True})
    if isinstance(e, ConnectionRefusedError):
        return ConnectFailure(address, "connection refused")
    if isinstance(e, OSError):
        reason = e.strerror or errno.errorcode.get(e.errno or 0, str(e))
        return ConnectFailure(address, reason)
    if isinstance(e, asyncio.CancelledError):
        return ConnectFailure(address, "dial cancelled")
    return ConnectFailure(address, f"{type(e).__name__}: {e}")
