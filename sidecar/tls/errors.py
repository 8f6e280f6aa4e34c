"""Errors of the identity layer, named for their cause; each message says what to do about it."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from sidecar.tls.reasons import RefusalReason


class TlsError(Exception):
    """Base of every error of the mTLS identity layer."""


class CertificateError(TlsError):
    """A certificate or key could not be made, read or used; the message names the file and the fix."""


class SpiffeIdError(TlsError, ValueError):
    """A text is not a valid SPIFFE ID (``spiffe://TRUST_DOMAIN/service/NAME``)."""


class PeerRefused(TlsError):
    """A peer was refused during or right after the TLS handshake; ``reason`` says why, for a person."""

    def __init__(self, reason: RefusalReason) -> None:
        super().__init__(reason.message)
        self.reason = reason


class IssuerError(CertificateError):
    """``tls.issuer`` could not produce a usable certificate (CA key unusable, command failed or wrote
    nothing valid); the current certificate keeps serving and the attempt is retried."""


def read_tls_file(path: str | os.PathLike[str], what: str) -> bytes:
    """The bytes of a certificate or key file, or :class:`CertificateError` naming the cause (missing, permission)."""
    try:
        return Path(path).read_bytes()
    except FileNotFoundError:
        raise CertificateError(f"{what} file {path} does not exist") from None
    except PermissionError:
        raise CertificateError(f"{what} file {path} is not readable by this user") from None
    except OSError as exc:
        raise CertificateError(f"cannot read {what} file {path}: {exc.strerror}") from None
