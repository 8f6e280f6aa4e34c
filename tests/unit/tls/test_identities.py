"""Several identities in one store: the SNI names, the selector, and what loading refuses (real files, no sockets)."""

from __future__ import annotations

from pathlib import Path

import pytest

from sidecar.config.model import TlsConfig, TlsIdentityConfig
from sidecar.tls.context import service_of_server_name, service_server_name
from sidecar.tls.errors import CertificateError
from sidecar.tls.reloader import IdentityStore
from tests.unit.tls.pki import Pki, make_pki


@pytest.mark.parametrize(("name", "service"), [
    (service_server_name("pay", "10.0.0.1", 15006), "pay"),
    (service_server_name("Pay", "::1", 1), "pay"),
    (service_server_name("pay", "node-b.example.com", 443), "pay"),
    ("p15006.10-0-0-1.sidecar.invalid", None),          # a node-level name: no service
    ("pay.svc.sidecar.invalid", None),                   # no peer part
    ("pay.svc.pX.10.sidecar.invalid", None),
    ("pay.svc.p1.h.example.org", None),                  # not ours
    ("", None), (None, None),
])
def test_which_service_a_server_name_asks_for(name: str | None, service: str | None) -> None:
    assert service_of_server_name(name) == service


def test_every_service_has_its_own_peer_name() -> None:
    assert service_server_name("pay", "10.0.0.1", 1) != service_server_name("inv", "10.0.0.1", 1)
    assert service_server_name("pay", "10.0.0.1", 1) != service_server_name("pay", "10.0.0.1", 2)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    pki = make_pki(tmp_path_factory.mktemp("pki"))
    for name in ("pay", "inv", "ops"):
        pki.leaf(name)
    return pki


def config(pki: Pki, first: str, *more: tuple[str, str]) -> TlsConfig:
    d = pki.directory
    return TlsConfig("mesh.local", str(pki.ca_path), str(d / f"{first}.pem"), str(d / f"{first}-key.pem"),
                     identities=[TlsIdentityConfig(service, str(d / f"{cert}.pem"), str(d / f"{cert}-key.pem"))
                                 for service, cert in more])


def test_one_identity_per_hosted_service_first_one_first(pki: Pki) -> None:
    store = IdentityStore.load(config(pki, "pay", ("inv", "inv"), ("ops", "ops")))
    assert list(store.hosted) == ["pay", "inv", "ops"]
    assert list(store.signing_identities()) == ["pay", "inv", "ops"]
    assert store.identity.service == "pay"
    assert {s["service"] for s in store.status()["identities"]} == {"pay", "inv", "ops"}
    # every server context selects among all of them
    assert all(held.server_context.sni_callback is not None for held in store.hosted.values())


@pytest.mark.parametrize(("more", "words"), [
    ((("inv", "ops"),),
     r"tls.identities\[0\].cert: .*ops.pem names spiffe://mesh.local/service/ops, not the service inv"),
    ((("inv", "inv"), ("inv", "inv")), r"tls.identities\[1\].service: inv has a certificate already"),
    ((("pay", "pay"),), r"tls.identities\[0\].service: pay has a certificate already"),
])
def test_identities_that_do_not_name_their_service_are_refused(pki: Pki, more: tuple[tuple[str, str], ...],
                                                               words: str) -> None:
    with pytest.raises(CertificateError, match=words):
        IdentityStore.load(config(pki, "pay", *more))


def test_a_rotated_certificate_must_name_the_same_service(pki: Pki, tmp_path: Path) -> None:
    import shutil
    for name in ("inv.pem", "inv-key.pem"):
        shutil.copy(pki.directory / name, tmp_path / name)
    d = pki.directory
    store = IdentityStore.load(TlsConfig("mesh.local", str(pki.ca_path), str(d / "pay.pem"), str(d / "pay-key.pem"),
                                         identities=[TlsIdentityConfig("inv", str(tmp_path / "inv.pem"),
                                                                       str(tmp_path / "inv-key.pem"))]))
    inv = store.hosted["inv"]
    serial = inv.identity.serial
    for name in ("ops.pem", "ops-key.pem"):   # another service's certificate written over inv's files
        shutil.copy(d / name, tmp_path / name.replace("ops", "inv"))
    store.poll_all()
    assert inv.identity.serial == serial and inv.identity.service == "inv"
    assert inv.last_error is not None and "another service's certificate needs a restart" in inv.last_error
