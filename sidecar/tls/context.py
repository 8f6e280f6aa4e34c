"""SSL contexts for the data plane: the inbound server and the outbound client, both mutually authenticated.

Theory of operation
-------------------
*Who checks what.* OpenSSL verifies the chain (``CERT_REQUIRED`` against ``tls.ca``, both directions): the
cryptographic part stays in the library that every TLS deployment trusts. Hostname checking is off, because a
sidecar's identity is not a host name but the SPIFFE ID in its URI SAN; :func:`verify_peer` checks that right
after the handshake (exactly one SPIFFE ID, in our trust domain, of the expected service when dialing, and the
dates again, since a resumed session can outlive its certificate). A connection is used only after both.

*Why the reasons are precise.* OpenSSL refuses a bad certificate before Python can look at it, and its error
carries only a code ("certificate has expired"). To say *when* it expired, or *which* CA signed it, the server
context records two handshake messages as they pass, through CPython's message callback: the ClientHello (for
the offered protocol version) and the peer's Certificate message (for its leaf). The evidence is attached to
the handshake's exception (``exc.sidecar_evidence``) and :func:`sidecar.tls.reasons.classify` turns both into
"client certificate expired at 2026-05-01T12:00:00Z". The callback is CPython's private ``_msg_callback``; it
costs a Python call per TLS record, so once a handshake succeeds the connection is moved to a twin context
without the callback (``SSLObject.context = twin``, which also drops OpenSSL's per-connection callback):
application data never pays for it. Where the callback does not exist, the reasons fall back to what
OpenSSL's codes say. Nothing about *acceptance* depends on this machinery: it only names refusals.

*Which certificate answers.* A sidecar holds one certificate per service it hosts. A caller dialing an
instance of service S sends the SNI :func:`service_server_name` (S and the peer's address); the inbound's
:func:`sni_selector` moves the handshake to S's context, or refuses it (``unrecognized_name``) when it holds no
certificate for S; a name without a service gets the first identity. The client's handshake itself then
requires S's SPIFFE ID in the server's certificate (:class:`WrongServiceError` otherwise), so no byte reaches a
server that cannot prove it is S, whoever dials with this context.

*Session reuse.* Servers issue TLS 1.3 session tickets (and TLS 1.2 tickets). The client context keeps one
resumable session per server name in a :class:`SessionCache`, keyed by the ``server_hostname`` given when
dialing, so reconnections to the same (service, peer) resume (one round trip, no certificate signatures). A server
sends one ticket per handshake (:data:`TICKETS_PER_HANDSHAKE`), not OpenSSL's two: a client end keeps only the
latest ticket's session and the cache one per peer, so a second ticket is only work for both ends.

*What a connection carries.* ALPN says it: a client offers :data:`ALPN_H2` for HTTP/2 between sidecars,
:data:`ALPN_HTTP` for HTTP/1.1, or :data:`ALPN_TCP_TUNNEL` for a raw byte tunnel (a ``protocol: tcp`` upstream);
the server context accepts all three (h2 before http/1.1 when a client offers both, as RFC 9113 section 3.2 has
it), and a client that offers none (``openssl s_client``) is treated as HTTP/1.1. ALPN is per context in Python,
so each kind is dialed with a context of its own (``IdentityStore.client_context``, ``h2_context``,
``tunnel_context``), each with its own session cache.
"""

from __future__ import annotations

import contextlib
import os
import ssl
import time
import weakref
from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping
from typing import Any

from sidecar.tls import reasons
from sidecar.tls.errors import CertificateError, PeerRefused, SpiffeIdError
from sidecar.tls.identity import PeerIdentity, SpiffeId, identity_of_der, load_der, spiffe_ids
from sidecar.tls.reasons import HandshakeEvidence

# Mozilla's "intermediate" TLS 1.2 suites (ECDHE only: no DH parameters are loaded); TLS 1.3 suites are
# OpenSSL's defaults, all three of which Mozilla lists
MOZILLA_INTERMEDIATE_TLS12 = ":".join(
    [
        "ECDHE-ECDSA-AES128-GCM-SHA256",
        "ECDHE-RSA-AES128-GCM-SHA256",
        "ECDHE-ECDSA-AES256-GCM-SHA384",
        "ECDHE-RSA-AES256-GCM-SHA384",
        "ECDHE-ECDSA-CHACHA20-POLY1305",
        "ECDHE-RSA-CHACHA20-POLY1305",
    ]
)
# the key exchange group of both contexts. Mozilla's "intermediate" allows X25519, P-256 and P-384; OpenSSL's
# defaults add X448, P-521 and finite-field groups, which the profile says to refuse. Python 3.11 can set one
# group only (set_ecdh_curve), and P-256 is the one: it is the curve of the certificates `sidecar certs` makes,
# and in TLS 1.2 OpenSSL also wants the certificate's curve among the groups both sides configured. Client and
# server use the same group, so a sidecar's key share is always the one its peer takes (no HelloRetryRequest).
KEY_EXCHANGE_GROUP = "prime256v1"
# TLS 1.3 tickets a server sends after a full handshake. OpenSSL sends two, for clients that open parallel
# connections with single-use tickets; ours keep one session per peer (SessionCache) and reuse it, and a client end
# holds only its latest ticket's session: the second one costs both ends its encryption and parsing (~5% of a full
# handshake's CPU, bench figures in docs/performance.md) and buys nothing
TICKETS_PER_HANDSHAKE = 1
# the attribute on a handshake exception that carries what was seen of the handshake
EVIDENCE_ATTRIBUTE = "sidecar_evidence"
_HAS_MSG_CALLBACK = hasattr(ssl.SSLContext, "_msg_callback")
# ALPN protocol ids (RFC 7301) of the kinds of connection between sidecars
ALPN_H2 = "h2"
ALPN_HTTP = "http/1.1"
ALPN_TCP_TUNNEL = "sidecar-tcp/1"
# what the inbound selects from a client's offer, in order: the server's preference wins (it only picks offers)
SERVER_ALPN = (ALPN_TCP_TUNNEL, ALPN_H2, ALPN_HTTP)


def server_alpn(h2: bool) -> tuple[str, ...]:
    """What the inbound selects: without ``h2`` (``inbound.http2.enabled: false``) callers speak HTTP/1.1, as to a
    sidecar that has no HTTP/2."""
    return SERVER_ALPN if h2 else tuple(p for p in SERVER_ALPN if p != ALPN_H2)


class MeshContext(ssl.SSLContext):
    """An SSLContext that knows its role, its session cache and its quiet twin (see the module's doc)."""

    role: str = "peer"  # what the *other* side is: "client" for a server context, "server" for a client one
    twin: MeshContext | None = None
    sessions: SessionCache | None = None


# ------------------------------------------------------------------------------------------ builders


def server_context(ca: str | os.PathLike[str], cert: str | os.PathLike[str], key: str | os.PathLike[str],
                   *, diagnose: bool = True, alpn: tuple[str, ...] = SERVER_ALPN) -> MeshContext:
    """The inbound listener's context: TLS 1.2+, a client certificate required and verified against ``ca``;
    ``alpn`` the protocols it selects, in its order of preference."""
    context = _base(MeshContext(ssl.PROTOCOL_TLS_SERVER), ca, cert, key)
    context.role = "client"
    context.sslobject_class = ServerSSLObject
    context.set_alpn_protocols(list(alpn))
    context.num_tickets = TICKETS_PER_HANDSHAKE
    if diagnose and _HAS_MSG_CALLBACK:
        context.twin = _base(MeshContext(ssl.PROTOCOL_TLS_SERVER), ca, cert, key)
        context.twin.role = "client"
        context.twin.num_tickets = TICKETS_PER_HANDSHAKE
        context._msg_callback = _record_evidence  # type: ignore[attr-defined]
    return context


def client_context(ca: str | os.PathLike[str], cert: str | os.PathLike[str], key: str | os.PathLike[str],
                   *, sessions: SessionCache | None = None, alpn: tuple[str, ...] = (ALPN_HTTP,)) -> MeshContext:
    """The outbound dialer's context: our certificate offered, the server's chain verified against ``ca``;
    the server's SPIFFE ID is checked after the handshake with :func:`verify_peer`. ``alpn`` is what its
    connections carry (:data:`ALPN_HTTP`, :data:`ALPN_H2` or :data:`ALPN_TCP_TUNNEL`)."""
    context = _base(MeshContext(ssl.PROTOCOL_TLS_CLIENT), ca, cert, key)
    context.role = "server"
    context.set_alpn_protocols(list(alpn))
    context.sessions = sessions if sessions is not None else SessionCache()
    context.sslobject_class = ClientSSLObject
    return context


def _base(context: MeshContext, ca: str | os.PathLike[str], cert: str | os.PathLike[str],
          key: str | os.PathLike[str]) -> MeshContext:
    context.minimum_version = ssl.TLSVersion.TLSv1_2  # 1.3 is preferred: OpenSSL picks the highest shared
    context.set_ciphers(MOZILLA_INTERMEDIATE_TLS12)
    context.set_ecdh_curve(KEY_EXCHANGE_GROUP)
    context.options |= ssl.OP_NO_COMPRESSION | ssl.OP_NO_RENEGOTIATION
    context.options &= ~ssl.OP_NO_TICKET  # session tickets on: reconnections resume
    context.check_hostname = False  # identity is the SPIFFE URI SAN, checked by verify_peer
    context.verify_mode = ssl.CERT_REQUIRED
    load_ca(context, ca)
    load_identity(context, cert, key)
    return context


def load_ca(context: ssl.SSLContext, ca: str | os.PathLike[str] | None = None, *, cadata: str | None = None) -> None:
    """Trust the CA certificates of ``ca`` (a PEM file) or ``cadata`` (PEM text); they are added to the store."""
    try:
        if cadata is not None:
            context.load_verify_locations(cadata=cadata)
        else:
            context.load_verify_locations(cafile=os.fspath(ca) if ca is not None else None)
    except FileNotFoundError:
        raise CertificateError(f"CA file {ca} does not exist (tls.ca); run `sidecar certs init`") from None
    except PermissionError:
        raise CertificateError(f"CA file {ca} is not readable by this user (tls.ca)") from None
    except (ssl.SSLError, ValueError) as exc:
        raise CertificateError(f"CA file {ca or 'data'} holds no usable PEM certificate (tls.ca): {exc}") from None


def load_identity(context: ssl.SSLContext, cert: str | os.PathLike[str], key: str | os.PathLike[str]) -> None:
    """Load our certificate and key (affects new handshakes only)."""
    try:
        context.load_cert_chain(os.fspath(cert), os.fspath(key))
    except FileNotFoundError as exc:
        raise CertificateError(f"{exc.filename or cert} does not exist (tls.cert / tls.key)") from None
    except PermissionError:
        raise CertificateError(f"{cert} or {key} is not readable by this user (tls.cert / tls.key)") from None
    except ssl.SSLError as exc:
        if (exc.reason or "").upper() == "KEY_VALUES_MISMATCH":
            raise CertificateError(f"{key} is not the private key of {cert}: issue them together") from None
        raise CertificateError(f"{cert} / {key}: not a PEM certificate and key ({exc.reason or exc})") from None


# ------------------------------------------------------------------------------------------ verifying


def verify_peer(ssl_object: ssl.SSLObject | ssl.SSLSocket, trust_domain: str, expected_service: str | None = None,
                *, now: float | None = None) -> PeerIdentity:
    """The peer's identity after a completed handshake, or :class:`PeerRefused` with a reason for a person.

    ``expected_service`` is set when dialing: the server must be that service. ``now`` is epoch seconds.
    """
    role = getattr(ssl_object.context, "role", "peer")
    der = ssl_object.getpeercert(binary_form=True)
    if not der:
        raise PeerRefused(reasons.no_certificate())
    when = time.time() if now is None else now
    return identity_of_der(der, trust_domain, when, role=role, expected_service=expected_service)


def refusal_of(exc: BaseException, role: str = "client", trust_domain: str = "") -> reasons.RefusalReason:
    """The reason for a failed handshake, using the evidence the server context captured, if any."""
    if isinstance(exc, PeerRefused):
        return exc.reason
    if isinstance(exc, WrongServiceError):
        return exc.refusal
    evidence = getattr(exc, EVIDENCE_ATTRIBUTE, None)
    if not isinstance(evidence, HandshakeEvidence):
        evidence = reasons.NO_EVIDENCE
    return reasons.classify(exc, evidence, role=role, trust_domain=trust_domain)


# ------------------------------------------------------------------------------------------ evidence


def _record_evidence(conn: Any, direction: str, version: Any, content_type: Any, msg_type: Any, data: bytes) -> None:
    # runs inside OpenSSL's handshake: it must never raise (CPython would fail the handshake with it)
    try:
        if direction != "read" or content_type != ssl._TLSContentType.HANDSHAKE:  # type: ignore[attr-defined]
            return
        if msg_type == ssl._TLSMessageType.CLIENT_HELLO:  # type: ignore[attr-defined]
            conn.sidecar_offered = reasons.offered_version(bytes(data))
        elif msg_type == ssl._TLSMessageType.CERTIFICATE:  # type: ignore[attr-defined]
            conn.sidecar_peer_der = reasons.leaf_of_certificate_message(
                bytes(data), tls13=version == ssl.TLSVersion.TLSv1_3
            )
    except Exception:  # evidence is best effort; acceptance never depends on it
        pass


class PeerCertificate(Mapping[str, Any]):
    """The verified peer certificate in ``getpeercert()``'s decoded form, decoded from the connection when first
    read.

    The event loop asks every TLS connection for that form when its handshake completes and keeps the answer for
    the connection's life (``get_extra_info("peercert")``): decoded at once, it is ~27 Python objects (1.7 KiB) a
    connection that the data plane never reads (identity is checked on the DER, :func:`verify_peer`). Holds only
    the C connection object, which the ``SSLObject`` holds anyway."""

    __slots__ = ("_connection", "_decoded")

    def __init__(self, connection: Any) -> None:
        self._connection: Any = connection
        self._decoded: dict[str, Any] | None = None

    def _fields(self) -> dict[str, Any]:
        if self._decoded is None:
            self._decoded = self._connection.getpeercert(False) or {}
            self._connection = None
        return self._decoded

    def __getitem__(self, key: str) -> Any:
        return self._fields()[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._fields())

    def __len__(self) -> int:
        return len(self._fields())

    def __repr__(self) -> str:
        return repr(self._fields())


class _DirectSSLObject(ssl.SSLObject):
    """``read``, ``write`` and ``pending`` bound straight to the C object. The event loop calls them for every TLS
    record, and ``ssl.SSLObject``'s own methods are Python functions that only forward to it: a Python frame per
    call, about 6% of a sidecar's CPU under load. The C methods take the same arguments and raise the same
    errors. ``getpeercert()`` answers a :class:`PeerCertificate` (decoded when read) rather than a dict."""

    def getpeercert(self, binary_form: bool = False) -> Any:
        inner = self.__dict__["_sslobj"]
        if binary_form or self.context.verify_mode == ssl.CERT_NONE:
            return inner.getpeercert(binary_form)
        # raises ValueError before the handshake, as ssl's does; None when the peer sent no certificate
        return PeerCertificate(inner) if inner.getpeercert(True) is not None else None

    @classmethod
    def _create(cls, *args: Any, **kwargs: Any) -> Any:
        obj = super()._create(*args, **kwargs)  # type: ignore[misc]  # CPython's constructor for wrap_bio
        inner = obj.__dict__.get("_sslobj")
        if inner is not None:
            obj.read, obj.write, obj.pending = inner.read, inner.write, inner.pending
        return obj


class ServerSSLObject(_DirectSSLObject):
    """Attaches the captured evidence to a failed handshake's exception; after a good handshake, moves the
    connection to the quiet twin context so application data does not pay for the message callback."""

    def do_handshake(self) -> None:
        try:
            super().do_handshake()
        except (ssl.SSLWantReadError, ssl.SSLWantWriteError):
            raise
        except ssl.SSLError as exc:
            setattr(exc, EVIDENCE_ATTRIBUTE, HandshakeEvidence(
                self.__dict__.get("sidecar_peer_der"), self.__dict__.get("sidecar_offered"),
                self.__dict__.get("sidecar_unknown_service"),
            ))
            raise
        twin = getattr(self.context, "twin", None)
        if twin is not None:
            self.context = twin
        self.__dict__.pop("sidecar_peer_der", None)   # evidence names refusals only: an accepted peer needs none
        self.__dict__.pop("sidecar_offered", None)


class ClientSSLObject(_DirectSSLObject):
    """Offers the cached session for its peer (``server_hostname``) and gives its own back to the cache."""

    _sidecar_started = False

    def do_handshake(self) -> None:
        cache = getattr(self.context, "sessions", None)
        if cache is not None and not self._sidecar_started and self.server_hostname:
            self._sidecar_started = True
            session = cache.lookup(self.server_hostname)
            if session is not None:
                try:
                    self.session = session
                except (ValueError, ssl.SSLError):  # from another context (the CA changed): start afresh
                    cache.forget(self.server_hostname)
        super().do_handshake()
        if cache is not None and self.server_hostname:
            cache.connected(self.server_hostname, self)
        wanted = service_of_server_name(self.server_hostname)
        if wanted is not None:
            _require_service(self, wanted)

    def unwrap(self) -> None:
        cache = getattr(self.context, "sessions", None)
        if cache is not None and self.server_hostname:
            cache.keep(self.server_hostname, self)
        super().unwrap()


class WrongServiceError(ssl.SSLError):
    """The server answered a dial for one service with another service's certificate (an impostor or a
    misrouting): raised by the handshake itself, so no byte is written on such a connection."""

    sidecar_identity = True

    def __init__(self, refusal: reasons.RefusalReason) -> None:
        super().__init__(refusal.message)
        self.refusal = refusal


def _require_service(ssl_object: ssl.SSLObject, service: str) -> None:
    """Every dial whose SNI names a service (:func:`service_server_name`) requires that service's SPIFFE ID in
    the server's certificate, whoever dials (the data plane checks the rest of the identity after)."""
    der = ssl_object.getpeercert(binary_form=True)
    try:
        ids = spiffe_ids(load_der(der)) if der else []
    except PeerRefused:
        ids = []
    named = None
    if len(ids) == 1:
        with contextlib.suppress(SpiffeIdError):
            named = SpiffeId.from_text(ids[0]).service
    if named is None or named.lower() != service:
        shown = ids[0] if len(ids) == 1 else f"{len(ids)} SPIFFE IDs"
        raise WrongServiceError(reasons.wrong_service("server", shown, service))


# ------------------------------------------------------------------------------------------ sessions


class SessionCache:
    """One resumable TLS session per peer, least recently used dropped first.

    A TLS 1.3 session becomes resumable only when the server's ticket arrives, after the handshake; so the
    cache remembers the peer's latest live connection and takes its session when the next connection to
    that peer starts (or when a connection shuts down), not at handshake time.
    """

    def __init__(self, max_peers: int = 4096) -> None:
        self._max = max_peers
        self._sessions: OrderedDict[str, ssl.SSLSession] = OrderedDict()
        self._live: dict[str, weakref.ref[ssl.SSLObject]] = {}
        self.resumed = 0
        self.full = 0

    def lookup(self, peer: str) -> ssl.SSLSession | None:
        ref = self._live.get(peer)
        live = ref() if ref is not None else None
        if live is not None:
            self.keep(peer, live)
        session = self._sessions.get(peer)
        if session is not None:
            self._sessions.move_to_end(peer)
        return session

    def connected(self, peer: str, ssl_object: ssl.SSLObject) -> None:
        if ssl_object.session_reused:
            self.resumed += 1
        else:
            self.full += 1
        self._live[peer] = weakref.ref(ssl_object)

    def keep(self, peer: str, ssl_object: ssl.SSLObject) -> None:
        try:
            session = ssl_object.session
        except (ValueError, ssl.SSLError):
            return
        if session is None or not session.has_ticket:
            return
        self._sessions[peer] = session
        self._sessions.move_to_end(peer)
        while len(self._sessions) > self._max:
            dropped, _ = self._sessions.popitem(last=False)
            self._live.pop(dropped, None)

    def forget(self, peer: str | None = None) -> None:
        """Drop one peer's session, or all (after a CA change)."""
        if peer is None:
            self._sessions.clear()
            self._live.clear()
        else:
            self._sessions.pop(peer, None)
            self._live.pop(peer, None)

    def __len__(self) -> int:
        return len(self._sessions)


def peer_server_name(host: str, port: int) -> str:
    """A DNS-shaped name unique to one peer address, for ``server_hostname`` (the session cache's key).

    An IP address alone would not tell apart two sidecars on one host, and Python sends no SNI for IPs.
    A peer's inbound answers this name (no service in it) with its first identity.
    """
    label = host.strip("[]").replace(":", "-").replace("%", "-")
    return f"p{port}.{label}{SERVER_NAME_SUFFIX}"


SERVER_NAME_SUFFIX = ".sidecar.invalid"
_SERVICE_MARK = "svc"


def service_server_name(service: str, host: str, port: int) -> str:
    """The SNI that asks the sidecar at ``host:port`` for ``service``'s identity: ``SERVICE.svc.pPORT.HOST...``.

    The inbound picks the certificate of that service by it (:func:`service_of_server_name`); the peer part
    keeps the session cache per (service, peer). Service names are DNS labels (config and API check it).
    """
    return f"{service.lower()}.{_SERVICE_MARK}.{peer_server_name(host, port)}"


def service_of_server_name(server_name: str | None) -> str | None:
    """The service a :func:`service_server_name` asks for (lower case); None for any other name or none."""
    if not server_name or not server_name.lower().endswith(SERVER_NAME_SUFFIX):
        return None
    labels = server_name.lower().split(".")
    if len(labels) >= 6 and labels[1] == _SERVICE_MARK and labels[2][:1] == "p" and labels[2][1:].isdigit():
        return labels[0]
    return None


def sni_selector(contexts: Callable[[str], MeshContext | None]) -> Callable[[ssl.SSLObject, str | None,
                                                                             ssl.SSLContext], int | None]:
    """An ``sni_callback`` that moves a handshake to the context of the service its SNI names.

    ``contexts(service)`` is that service's current server context, None when this sidecar does not host it:
    the handshake then fails with ``unrecognized_name`` (no certificate of ours is the one the caller wants).
    A name that asks for no service (none sent, ``openssl s_client``, a node-level dial) keeps the context the
    listener started with: the first identity. The chosen service is kept on the connection as
    ``sidecar_service``; the inbound forwards its requests to that service's app only.
    """

    def select(ssl_object: ssl.SSLObject, server_name: str | None, _: ssl.SSLContext) -> int | None:
        service = service_of_server_name(server_name)
        if service is None:
            return None
        chosen = contexts(service)
        if chosen is None:
            ssl_object.sidecar_unknown_service = service  # type: ignore[attr-defined]  # the refusal's reason
            return ssl.ALERT_DESCRIPTION_UNRECOGNIZED_NAME
        if chosen is not ssl_object.context:
            ssl_object.context = chosen
        ssl_object.sidecar_service = service  # type: ignore[attr-defined]
        return None

    return select


def selected_service(ssl_object: object) -> str | None:
    """The service the caller's SNI named on an inbound connection (lower case), None when it named none."""
    value = getattr(ssl_object, "sidecar_service", None)
    return value if isinstance(value, str) else None

