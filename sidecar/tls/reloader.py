"""Certificate rotation without restart, and warnings before expiry.

Theory of operation
-------------------
A pure core (:class:`~sidecar.tls.reload.ReloadCore`, in :mod:`sidecar.tls.reload`) is fed what the files
hold now (a digest of each) and the time; it answers with commands: ``Reload`` the identity (cert + key)
and/or the trust (CA), or ``Warn``. This module is its asyncio driver: :class:`IdentityStore` reads the
files, runs the commands and reports back.

* Files are compared by content digest, not mtime: a rewrite within one mtime tick is still seen, and a
  ``touch`` alone reloads nothing.
* A new pair is validated before anything live is touched: the key must match the certificate, the
  certificate must be signed by the CA and name one SPIFFE ID of our trust domain, and must not be expired.
  ``sidecar certs issue`` writes the key, then the certificate, so a poll can fall in between and see a
  mismatched pair: that content is marked failed and not retried until a file changes again, the current
  identity keeps serving, and a warning is written only if the bad state lasts ``settle`` seconds.
* The bytes that were validated are the bytes loaded (from memory, via memfd), so a file changing between
  the check and the load cannot slip in unchecked.
* Every change builds new contexts and swaps them into the store: a new server context has new session
  ticket keys, so no client resumes a session that carries the old certificate (resumption does not
  present certificates again), and a new client context cannot offer sessions made with our old one.
  Take ``store.server_context``/``client_context`` per connection. Holders of the old contexts (a listener
  given one at start) still get the change: ``load_cert_chain`` on them changes what *new* handshakes
  present, and the new CA is added to their trust store (a store only grows). Established connections
  keep their keys and go on.
* Expiry: a warning when less than ``warn_fraction`` of the certificate's lifetime remains (the last fifth:
  4.8 h of a 24 h certificate, 73 days of a year's), again every ``repeat_every``, and an error once expired.
  A fixed "less than 24 h" rule would warn for the whole life of the default 24 h certificate.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import hashlib
import logging
import os
import socket
import ssl
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from sidecar.clock import SYSTEM_CLOCK, Clock
from sidecar.config.model import TlsConfig, TlsIdentityConfig
from sidecar.tls import context, signatures
from sidecar.tls.context import MeshContext, SessionCache
from sidecar.tls.der import Certificate, DerError, pem_blocks, pem_certificates, pem_ec_private_key
from sidecar.tls.errors import CertificateError, PeerRefused, read_tls_file
from sidecar.tls.handshake import Handler, MtlsServer, RefusalLog, accept_socket, connect_stream, serve
from sidecar.tls.identity import PeerIdentity, identity_of
from sidecar.tls.reload import (
    RENEWED_BY_ISSUER,
    Command,
    FileDigests,
    MaterialChange,
    ReloadCore,
    RotationPolicy,
    Warn,
)
from sidecar.tls.renewal import lifetime_start

if TYPE_CHECKING:
    from sidecar.tls.primitives import SigningKey

log = logging.getLogger("sidecar.tls")
P = TypeVar("P", bound=asyncio.BaseProtocol)
SniCallback = Callable[[ssl.SSLObject, str | None, ssl.SSLContext], int | None]


# ------------------------------------------------------------------------------------------ reading files


@dataclass(frozen=True, slots=True)
class TlsPaths:
    ca: Path
    cert: Path
    key: Path

    @classmethod
    def from_config(cls, config: TlsConfig) -> TlsPaths:
        return cls(Path(config.ca), Path(config.cert), Path(config.key))


@dataclass(frozen=True, slots=True)
class Bundle:
    """The bytes of the three files, read once; what is validated is what is loaded."""

    ca: bytes | None
    cert: bytes | None
    key: bytes | None

    @property
    def snapshot(self) -> FileDigests:
        return FileDigests(_digest(self.ca), _digest(self.cert), _digest(self.key))

    def __repr__(self) -> str:  # never show the key
        return f"Bundle(snapshot={self.snapshot})"


def read_bundle(paths: TlsPaths) -> Bundle:
    return Bundle(_read_or_none(paths.ca), _read_or_none(paths.cert), _read_or_none(paths.key))


def _read_or_none(path: Path) -> bytes | None:
    try:
        return path.read_bytes()
    except OSError:
        return None


def _digest(data: bytes | None) -> str | None:
    return hashlib.sha256(data).hexdigest() if data is not None else None


@dataclass(frozen=True, slots=True)
class Checked:
    leaf: Certificate
    identity: PeerIdentity
    key: SigningKey = field(repr=False)
    cas: tuple[Certificate, ...] = ()


def validate(bundle: Bundle, paths: TlsPaths, trust_domain: str, now: float) -> Checked:
    """Check a bundle before it goes live; :class:`CertificateError` says what is wrong, by file."""
    if bundle.ca is None or bundle.cert is None or bundle.key is None:
        missing = [str(p) for p, b in ((paths.ca, bundle.ca), (paths.cert, bundle.cert), (paths.key, bundle.key))
                   if b is None]
        raise CertificateError(f"cannot read {', '.join(missing)}")
    cas = _certificates(bundle.ca, paths.ca, "tls.ca")
    leaf = _certificates(bundle.cert, paths.cert, "tls.cert")[0]
    try:
        key = signatures.private_key(pem_ec_private_key(bundle.key))
    except ValueError as exc:   # DerError, UnusableKey (a key OpenSSL refuses)
        raise CertificateError(f"{paths.key} holds no unencrypted PEM EC private key (tls.key): {exc}") from None
    if not signatures.key_matches(leaf, key):
        raise CertificateError(f"{paths.key} is not the private key of {paths.cert}")
    if not any(signatures.signed_by(leaf, ca) for ca in cas):
        raise CertificateError(f"{paths.cert} is not signed by the CA in {paths.ca}")
    try:
        identity = identity_of(leaf, trust_domain, now, role="our")
    except PeerRefused as exc:
        raise CertificateError(f"{paths.cert}: {exc.reason.message}") from None
    return Checked(leaf, identity, key, tuple(cas))


def _certificates(pem: bytes, path: Path, key: str) -> list[Certificate]:
    try:
        if not pem_blocks(pem, "CERTIFICATE"):
            raise CertificateError(f"{path} holds no PEM certificate ({key})")
        return pem_certificates(pem)
    except DerError as exc:
        raise CertificateError(f"{path} holds a certificate that cannot be read ({key}): {exc}") from None


@contextlib.contextmanager
def _as_files(*blobs: bytes) -> Iterator[list[str]]:
    """Paths that read back ``blobs``, for APIs that want file names: memfds where Linux has them (the key
    never touches a disk), else 0600 files in a private temporary directory."""
    if hasattr(os, "memfd_create") and os.path.isdir("/proc/self/fd"):
        fds = [os.memfd_create("sidecar-tls", getattr(os, "MFD_CLOEXEC", 0)) for _ in blobs]
        try:
            for fd, blob in zip(fds, blobs, strict=True):
                os.write(fd, blob)
            yield [f"/proc/self/fd/{fd}" for fd in fds]
        finally:
            for fd in fds:
                os.close(fd)
        return
    import tempfile  # with shutil and the compression modules it loads (~0.5 MiB): only where memfds are not
    with tempfile.TemporaryDirectory(prefix="sidecar-tls-") as folder:
        names = []
        for i, blob in enumerate(blobs):
            name = os.path.join(folder, f"{i}.pem")
            fd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as handle:
                handle.write(blob)
            names.append(name)
        yield names


# ------------------------------------------------------------------------------------------ the store


@dataclass(frozen=True, slots=True)
class TlsMaterial:
    """The live TLS state: contexts to use for new connections, and who we are."""

    server_context: MeshContext
    client_context: MeshContext
    identity: PeerIdentity  # our own
    not_before: dt.datetime
    snapshot: FileDigests
    # the client context for raw TCP tunnels (ALPN sidecar-tcp/1), with its own session cache
    tunnel_context: MeshContext | None = None
    # the client context for HTTP/2 to peers (ALPN h2, then http/1.1), with its own session cache
    h2_context: MeshContext | None = None
    # our certificate itself: its other SANs are kept when it is renewed (sidecar.tls.renewer)
    leaf: Certificate | None = None
    # its private key: signs this node's catalog statement about the service (sidecar.catalog.signing)
    key: SigningKey | None = field(default=None, repr=False)
    # the trust anchors of tls.ca as loaded with it
    cas: tuple[Certificate, ...] = ()


class IdentityStore:
    """Our mTLS identity: current contexts, our PeerIdentity and expiry, rotation from the files.

    Build it with :meth:`load` (raises :class:`CertificateError` with a message per file); run
    :meth:`watch` as a task; take ``server_context``/``client_context`` for each new connection.
    ``on_rotate(material)`` is called after every successful reload.
    """

    def __init__(self, paths: TlsPaths, trust_domain: str, material: TlsMaterial, *, clock: Clock,
                 policy: RotationPolicy, diagnose: bool,
                 on_rotate: Callable[[TlsMaterial], None] | None,
                 server_alpn: tuple[str, ...] = context.SERVER_ALPN) -> None:
        self.paths = paths
        self.server_alpn = server_alpn
        self.trust_domain = trust_domain
        self.material = material
        self.clock = clock
        self.policy = policy
        self.on_rotate = on_rotate
        self.refusals = RefusalLog()
        sessions = material.client_context.sessions
        self.sessions = sessions if sessions is not None else SessionCache()
        self.rotations = 0
        self.last_error: str | None = None
        self._diagnose = diagnose
        start, end = material.not_before.timestamp(), material.identity.not_after.timestamp()
        self.core = ReloadCore(material.snapshot, start, end, policy)
        # every identity this sidecar holds, by service (lower case), this one included: one SVID per hosted
        # service (SPEC: Identity); the inbound picks one by SNI, the catalog signs with each
        self.hosted: dict[str, IdentityStore] = {material.identity.service.lower(): self}
        self._select: SniCallback | None = None

    @classmethod
    def load(cls, paths: TlsPaths | TlsConfig, trust_domain: str | None = None, *, clock: Clock = SYSTEM_CLOCK,
             policy: RotationPolicy | None = None, diagnose: bool = True,
             on_rotate: Callable[[TlsMaterial], None] | None = None,
             server_alpn: tuple[str, ...] = context.SERVER_ALPN) -> IdentityStore:
        """The identity of ``tls.cert``/``tls.key``; with a :class:`TlsConfig`, one more per ``tls.identities``
        entry (each must name its service), all in ``hosted``. ``server_alpn``: what the inbound selects
        (every hosted identity's server context alike: the SNI callback moves a handshake between them)."""
        identities: tuple[TlsIdentityConfig, ...] = ()
        if isinstance(paths, TlsConfig):
            identities = tuple(paths.identities)
            trust_domain = trust_domain or paths.trust_domain
            if paths.issuer is not None:  # the sidecar renews its own certificate (sidecar.tls.renewer)
                policy = replace(policy or RotationPolicy(), remedy=RENEWED_BY_ISSUER)
            paths = TlsPaths.from_config(paths)
        if trust_domain is None:
            raise CertificateError("no trust domain given (tls.trust_domain)")
        bundle = read_bundle(paths)
        for path, blob in ((paths.ca, bundle.ca), (paths.cert, bundle.cert), (paths.key, bundle.key)):
            if blob is None:
                read_tls_file(path, "TLS")  # raises with the precise cause (missing, permission)
        checked = validate(bundle, paths, trust_domain, clock.wall())
        material = _build(bundle, checked, diagnose, SessionCache(), server_alpn=server_alpn)
        store = cls(paths, trust_domain, material, clock=clock, policy=policy or RotationPolicy(),
                    diagnose=diagnose, on_rotate=on_rotate, server_alpn=server_alpn)
        for command in store.core.on_loaded(material.snapshot, material.not_before.timestamp(),
                                            checked.identity.not_after.timestamp(), clock.wall()):
            store._run(command, bundle)
        for index, extra in enumerate(identities):
            where = f"tls.identities[{index}]"
            other = cls.load(TlsPaths(paths.ca, Path(extra.cert), Path(extra.key)), trust_domain, clock=clock,
                             policy=policy, diagnose=diagnose, server_alpn=server_alpn)
            named = other.identity.service
            if named != extra.service:
                raise CertificateError(f"{where}.cert: {extra.cert} names {other.identity.spiffe_id}, not the service"
                                       f" {extra.service}; issue it with `sidecar certs issue {extra.service}`")
            if named.lower() in store.hosted:
                raise CertificateError(f"{where}.service: {named} has a certificate already (tls.cert or an"
                                       " earlier entry); one SVID per service")
            other.refusals = store.refusals
            store.hosted[named.lower()] = other
        store._share_hosted()
        return store

    def _share_hosted(self) -> None:
        """Every identity's server contexts select by SNI among all of them (new contexts after a rotation
        too: ``_build`` sets the callback)."""
        hosted = self.hosted

        def contexts(service: str) -> MeshContext | None:
            found = hosted.get(service)
            return found.server_context if found is not None else None

        select = context.sni_selector(contexts)
        for store in hosted.values():
            store.hosted = hosted
            store._select = select
            store.material.server_context.sni_callback = select

    # -------------------------------------------------------------------------------- what others use

    @property
    def server_context(self) -> MeshContext:
        return self.material.server_context

    @property
    def client_context(self) -> MeshContext:
        return self.material.client_context

    @property
    def tunnel_context(self) -> MeshContext:
        """The client context for raw TCP tunnels to peer sidecars (offers ALPN ``sidecar-tcp/1``)."""
        tunnel = self.material.tunnel_context
        assert tunnel is not None  # _build always makes one
        return tunnel

    @property
    def h2_context(self) -> MeshContext:
        """The client context for HTTP/2 to peer sidecars (offers ALPN ``h2``, then ``http/1.1``)."""
        h2 = self.material.h2_context
        assert h2 is not None  # _build always makes one
        return h2

    @property
    def identity(self) -> PeerIdentity:
        return self.material.identity

    def signing_identities(self) -> dict[str, tuple[bytes, SigningKey]]:
        """Every hosted identity's current certificate (DER) and key, by service, this one first: what the
        node's catalog claims are signed with (sidecar.catalog.signing)."""
        out: dict[str, tuple[bytes, SigningKey]] = {}
        for store in self.hosted.values():
            material = store.material
            if material.leaf is not None and material.key is not None:
                out[material.identity.service] = (material.leaf.der,
                                                  material.key)
        return out

    def on_any_rotation(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` after a successful reload of any hosted identity (besides each one's on_rotate)."""
        for store in self.hosted.values():
            previous = store.on_rotate

            def both(material: TlsMaterial, previous: Callable[[TlsMaterial], None] | None = previous) -> None:
                if previous is not None:
                    previous(material)
                callback()

            store.on_rotate = both

    def verify_peer(
        self, ssl_object: ssl.SSLObject | ssl.SSLSocket, expected_service: str | None = None
    ) -> PeerIdentity:
        return context.verify_peer(ssl_object, self.trust_domain, expected_service, now=self.clock.wall())

    async def serve(self, handler: Handler, host: str, port: int, timeout: float = 10.0) -> MtlsServer:
        """An mTLS stream server on the current server context (see :class:`handshake.MtlsServer`)."""
        return await serve(handler, host, port, lambda: self.server_context, self.trust_domain,
                           refusals=self.refusals, timeout=timeout, clock=self.clock)

    async def accept(self, sock: socket.socket, protocol_factory: Callable[[], P], timeout: float = 10.0
                     ) -> tuple[asyncio.Transport, P, PeerIdentity]:
        """TLS on one accepted socket, for protocol-level listeners (see :func:`handshake.accept_socket`)."""
        return await accept_socket(sock, protocol_factory, self.server_context, self.trust_domain,
                                   refusals=self.refusals, timeout=timeout, clock=self.clock)

    async def connect(self, host: str, port: int, expected_service: str | None = None, timeout: float = 10.0
                      ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter, PeerIdentity]:
        return await connect_stream(host, port, self.client_context, self.trust_domain, expected_service,
                                    refusals=self.refusals, timeout=timeout, clock=self.clock)

    def status(self) -> dict[str, Any]:
        """For the admin port."""
        ident = self.identity
        now = self.clock.wall()
        return {
            "spiffe_id": ident.spiffe_id,
            "serial": ident.serial_hex,
            "not_after": ident.not_after.strftime("%Y-%m-%dT%H:%M:%SZ"),
            "expires_in_seconds": round(ident.not_after.timestamp() - now, 3),
            "expiry": self.core.expiry.value,
            "rotations": self.rotations,
            "last_error": self.last_error,
            "sessions": {"cached": len(self.sessions), "resumed": self.sessions.resumed, "full": self.sessions.full},
            "refusals": self.refusals.snapshot(),
            "identities": [{"service": store.identity.service, "spiffe_id": store.identity.spiffe_id,
                            "serial": store.identity.serial_hex,
                            "not_after": store.identity.not_after.strftime("%Y-%m-%dT%H:%M:%SZ"),
                            "expiry": store.core.expiry.value, "last_error": store.last_error}
                           for store in self.hosted.values()],
        }

    # -------------------------------------------------------------------------------- rotation

    def poll(self) -> list[Command]:
        """Read the files once and act on them; returns what was decided (for tests and logs)."""
        bundle = read_bundle(self.paths)
        commands = self.core.on_poll(bundle.snapshot, self.clock.wall())
        for command in commands:
            self._run(command, bundle)
        return commands

    def poll_all(self) -> list[Command]:
        """:meth:`poll` for every hosted identity (each has its own files and rotation)."""
        out: list[Command] = []
        for store in list(self.hosted.values()):
            out += store.poll()
        return out

    async def watch(self, interval: float | None = None) -> None:
        """Poll every identity until cancelled. A failing poll is logged and the next one tried: serving never
        stops."""
        every = interval if interval is not None else self.policy.poll_interval
        while True:
            for store in list(self.hosted.values()):
                try:
                    store.poll()
                except Exception:
                    log.exception("certificate check of %s failed; will try again in %.1fs",
                                  store.identity.service, every)
            await self.clock.sleep(every)

    def _run(self, command: Command, bundle: Bundle) -> None:
        if isinstance(command, Warn):
            log.log(command.level, "%s", command.message)
            return
        now = self.clock.wall()
        old = self.identity
        try:
            checked = validate(bundle, self.paths, self.trust_domain, now)
            if checked.identity.service != old.service:
                # the inbound picks this identity by the service's name and the catalog signs that service's
                # claims with it: which service an identity is does not change while the sidecar runs
                raise CertificateError(f"{self.paths.cert} now names {checked.identity.spiffe_id}, not"
                                       f" {old.spiffe_id}: another service's certificate needs a restart")
            self._apply(command.change, bundle, checked)
        except (CertificateError, ssl.SSLError, OSError) as exc:
            self.last_error = str(exc)
            log.info("new certificate files not loaded yet: %s", exc)
            for follow in self.core.on_failed(command.snapshot, str(exc), now):
                self._run(follow, bundle)
            return
        self.last_error = None
        self.rotations += 1
        log.warning("reloaded %s: %s serial %s -> %s, valid until %s",
                    "the CA and certificate" if MaterialChange.TRUST in command.change else "the certificate",
                    checked.identity.spiffe_id, old.serial_hex, checked.identity.serial_hex,
                    checked.identity.not_after.strftime("%Y-%m-%dT%H:%M:%SZ"))
        # a certificate that arrives now lives from now: its issuer's backdating is not lifetime (a renewed
        # 30 s certificate backdated 5 min is not "expiring" the moment it is loaded; see sidecar.tls.renewal)
        start = lifetime_start(checked.leaf.not_valid_before_utc.timestamp(), now, obtained=True)
        for follow in self.core.on_loaded(command.snapshot, start, checked.identity.not_after.timestamp(), now):
            self._run(follow, bundle)
        if self.on_rotate is not None:
            self.on_rotate(self.material)

    def _apply(self, change: MaterialChange, bundle: Bundle, checked: Checked) -> None:
        assert bundle.ca is not None and bundle.cert is not None and bundle.key is not None
        old = self.material
        # New contexts for every change: a new server context has new session-ticket keys, so clients cannot
        # resume a session made with the old certificate (resumption carries the old identity along), and
        # a new client context cannot resume sessions that presented our old certificate.
        new = _build(bundle, checked, self._diagnose, self.sessions, self._select, self.server_alpn)
        # Holders of the old contexts (a listener given one at start) get the change too: new handshakes on
        # them present the new certificate; a trust store only grows, so the new CA is added to the old one.
        with _as_files(bundle.cert, bundle.key) as (cert_path, key_path):
            for ctx in (old.server_context, old.server_context.twin, old.client_context, old.tunnel_context,
                        old.h2_context):
                if ctx is None:
                    continue
                if MaterialChange.IDENTITY in change:
                    context.load_identity(ctx, cert_path, key_path)
                if MaterialChange.TRUST in change:
                    context.load_ca(ctx, cadata=bundle.ca.decode("ascii", "replace"))
        self.sessions.forget()
        self.material = new


def _build(bundle: Bundle, checked: Checked, diagnose: bool, sessions: SessionCache,
           select: SniCallback | None = None, server_alpn: tuple[str, ...] = context.SERVER_ALPN) -> TlsMaterial:
    assert bundle.ca is not None and bundle.cert is not None and bundle.key is not None
    with _as_files(bundle.ca, bundle.cert, bundle.key) as (ca_path, cert_path, key_path):
        server = context.server_context(ca_path, cert_path, key_path, diagnose=diagnose, alpn=server_alpn)
        client = context.client_context(ca_path, cert_path, key_path, sessions=sessions)
        # its own cache: a session belongs to the context that made it
        tunnel = context.client_context(ca_path, cert_path, key_path, sessions=SessionCache(),
                                        alpn=(context.ALPN_TCP_TUNNEL,))
        h2 = context.client_context(ca_path, cert_path, key_path, sessions=SessionCache(),
                                    alpn=(context.ALPN_H2, context.ALPN_HTTP))
    if select is not None:
        server.sni_callback = select
    return TlsMaterial(server, client, checked.identity, checked.leaf.not_valid_before_utc, bundle.snapshot, tunnel,
                       h2, checked.leaf, checked.key, checked.cas)
