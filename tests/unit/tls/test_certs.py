"""certs: the CA, leaves, files and the two CLI commands."""

from __future__ import annotations

import datetime as dt
import os
import ssl
import stat
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID

from sidecar.cli import certs as certs_cli
from sidecar.tls import certs
from sidecar.tls.errors import CertificateError
from sidecar.tls.identity import spiffe_ids


def test_init_ca_writes_a_constrained_ca(tmp_path: Path) -> None:
    paths = certs.init_ca(tmp_path / "c", "mesh.local")
    assert paths == certs.CertPaths(tmp_path / "c" / "ca.pem", tmp_path / "c" / "ca-key.pem")
    assert stat.S_IMODE(os.stat(paths.key).st_mode) == 0o600
    ca = certs.load_certificate(paths.cert)
    bc = ca.extensions.get_extension_for_class(x509.BasicConstraints)
    assert bc.critical and bc.value.ca
    ku = ca.extensions.get_extension_for_class(x509.KeyUsage).value
    assert ku.key_cert_sign and ku.crl_sign
    nc = ca.extensions.get_extension_for_class(x509.NameConstraints)
    assert nc.critical and nc.value.permitted_subtrees == [x509.UniformResourceIdentifier("mesh.local")]
    assert spiffe_ids(certs.parsed(ca)) == ["spiffe://mesh.local"]
    assert certs.CertificateAuthority.load(tmp_path / "c").trust_domain == "mesh.local"


def test_init_ca_never_replaces_an_existing_ca(tmp_path: Path) -> None:
    certs.init_ca(tmp_path, "mesh.local")
    before = (tmp_path / "ca.pem").read_bytes()
    with pytest.raises(CertificateError, match="already exists"):
        certs.init_ca(tmp_path, "mesh.local")
    assert (tmp_path / "ca.pem").read_bytes() == before


def test_issue_writes_a_spiffe_leaf(tmp_path: Path) -> None:
    now = dt.datetime(2030, 1, 1, tzinfo=dt.UTC)
    certs.init_ca(tmp_path, "mesh.local", now=now)
    paths = certs.issue("payment-service", tmp_path, "24h", dns_names=["payment-service.service.mesh"], now=now)
    assert paths.cert.name == "payment-service.pem" and paths.key.name == "payment-service-key.pem"
    assert stat.S_IMODE(os.stat(paths.key).st_mode) == 0o600
    leaf = certs.load_certificate(paths.cert)
    assert spiffe_ids(certs.parsed(leaf)) == ["spiffe://mesh.local/service/payment-service"]
    eku = leaf.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
    assert leaf.not_valid_before_utc == now - certs.CLOCK_SKEW
    assert leaf.not_valid_after_utc == now + dt.timedelta(hours=24)
    ca = certs.load_certificate(tmp_path / "ca.pem")
    leaf.verify_directly_issued_by(ca)
    assert paths.cert.read_bytes().count(b"BEGIN CERTIFICATE") == 1  # the leaf only
    # OpenSSL agrees: the pair loads, and the chain verifies against ca.pem
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(paths.cert, paths.key)


def test_key_material_is_never_shown(tmp_path: Path) -> None:
    ca = certs.make_ca("mesh.local")
    issued = certs.issue_from(ca, "a")
    assert b"PRIVATE KEY" in issued.key_pem
    assert "PRIVATE" not in repr(issued) and "spiffe://mesh.local/service/a" in repr(issued)


@pytest.mark.parametrize(
    ("service", "ttl", "words"),
    [
        ("bad name", "1h", "cannot be part of a SPIFFE ID"),
        ("ok", "soon", "must be a duration"),
        ("ok", "0s", "greater than 0"),
        ("ok", "20y", "runs past the CA's expiry"),
    ],
)
def test_issue_errors_say_what_to_do(tmp_path: Path, service: str, ttl: str, words: str) -> None:
    certs.init_ca(tmp_path, "mesh.local", ttl="1h" if words.startswith("runs") else certs.DEFAULT_CA_TTL)
    with pytest.raises(CertificateError, match=words):
        certs.issue(service, tmp_path, ttl if not words.startswith("runs") else "2h")


def test_missing_ca_and_mismatched_files(tmp_path: Path) -> None:
    with pytest.raises(CertificateError, match="does not exist"):
        certs.issue("a", tmp_path)
    certs.init_ca(tmp_path / "one", "mesh.local")
    certs.init_ca(tmp_path / "two", "mesh.local")
    with pytest.raises(CertificateError, match="different CAs"):
        certs.CertificateAuthority.from_files(tmp_path / "one" / "ca.pem", tmp_path / "two" / "ca-key.pem")
    (tmp_path / "junk.pem").write_text("hello")
    with pytest.raises(CertificateError, match="no PEM certificate"):
        certs.load_certificate(tmp_path / "junk.pem")
    with pytest.raises(CertificateError, match="no unencrypted PEM private key"):
        certs.load_private_key(tmp_path / "junk.pem")


def test_bad_trust_domain(tmp_path: Path) -> None:
    with pytest.raises(CertificateError, match="trust domain"):
        certs.init_ca(tmp_path, "Mesh Local")


def test_cmd_certs_init_and_issue(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    d = str(tmp_path / "certs")
    assert certs_cli.cmd_certs_init(d, "mesh.local") == 0
    out = capsys.readouterr().out
    assert f"wrote {d}/ca.pem" in out and f"wrote {d}/ca-key.pem" in out
    assert certs_cli.cmd_certs_init(d, "mesh.local") == 1  # exists
    assert "already exists" in capsys.readouterr().err
    assert certs_cli.cmd_certs_init(d, "BAD DOMAIN") == 2
    assert certs_cli.cmd_certs_issue("web", d, "1h") == 0
    out = capsys.readouterr().out
    assert "spiffe://mesh.local/service/web" in out and f"wrote {d}/web.pem" in out and "BEGIN" not in out
    assert certs_cli.cmd_certs_issue("web", d, "later") == 2
    assert certs_cli.cmd_certs_issue("bad/name", d, "1h") == 2
    assert certs_cli.cmd_certs_issue("web", str(tmp_path / "nowhere"), "1h") == 1
    err = capsys.readouterr().err
    assert "must be a duration" in err and "run `sidecar certs init`" in err
