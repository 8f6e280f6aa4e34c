"""Secrets made fresh for each test, and every form in which one could leak: a grep that knows what to look for."""

from __future__ import annotations

import base64
import re
import secrets
from dataclasses import dataclass, field
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from sidecar.gossip.keyring import generate_key


def new_token() -> str:
    return "adm-" + secrets.token_hex(16)


def new_gossip_key() -> str:
    return generate_key()


@dataclass
class Secrets:
    """name → the texts that must never appear (each at least 16 characters, so no false match by chance)."""

    forms: dict[str, set[str]] = field(default_factory=dict)

    def add(self, name: str, *texts: str) -> None:
        self.forms.setdefault(name, set()).update(t for t in texts if len(t) >= 16)

    def add_text(self, name: str, text: str) -> None:
        """A token, a password, a credential in a command: as given, and as JSON would escape it."""
        self.add(name, text, text.replace('"', '\\"'))

    def add_gossip_key(self, name: str, key: str) -> None:
        """A base64 AES key: the base64 text, its bytes in hex (either case), urlsafe base64, Python's repr."""
        raw = base64.b64decode(key)
        self.add(name, key, key.rstrip("="), raw.hex(), raw.hex().upper(), base64.urlsafe_b64encode(raw).decode(),
                 repr(raw)[2:-1])

    def add_private_key(self, name: str, pem_path: Path) -> None:
        """A PEM private key: every base64 line of the PEM, the DER in hex, and the private scalar in hex."""
        pem = pem_path.read_text()
        lines = [line for line in pem.splitlines() if line and not line.startswith("-----")]
        self.add(name, *lines)
        key = serialization.load_pem_private_key(pem.encode(), password=None)
        der = key.private_bytes(serialization.Encoding.DER, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
        self.add(name, der.hex(), base64.b64encode(der).decode()[:64])
        if isinstance(key, ec.EllipticCurvePrivateKey):
            scalar = key.private_numbers().private_value
            self.add(name, f"{scalar:x}", f"{scalar:064x}", str(scalar))

    def found_in(self, text: str | bytes) -> list[str]:
        """Which secrets appear in ``text`` (by name, with the form that matched, shortened)."""
        haystack = text.decode("utf-8", "replace") if isinstance(text, bytes) else text
        folded = re.sub(r"\s+", "", haystack)  # a PEM or key split over lines or wrapped by a formatter
        hits = []
        for name, forms in self.forms.items():
            for form in sorted(forms):
                if form in haystack or form in folded:
                    hits.append(f"{name} ({form[:12]}...)")
                    break
        return hits

    def assert_absent(self, text: str | bytes, where: str) -> None:
        hits = self.found_in(text)
        assert not hits, f"secrets found in {where}: {hits}"
