"""Self-renewal of our certificate (tls.issuer) with real files, a real IdentityStore and real shell commands:
the local CA key, `sidecar certs issue` and openssl as commands, and every way a command can fail."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import shlex
import stat
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from cryptography import x509

from sidecar.config.model import TlsConfig, TlsIssuerConfig
from sidecar.config.values import Duration
from sidecar.tls import certs
from sidecar.tls.errors import CertificateError, IssuerError
from sidecar.tls.issuers import ShellCommand, WantedIdentity
from sidecar.tls.reload import RotationPolicy
from sidecar.tls.reloader import IdentityStore
from sidecar.tls.renewer import Renewer
from tests.harness import wait_for, wait_for_async
from tests.integration.tls.test_refusals import run
from tests.unit.tls.pki import Pki, make_pki

ALPHA = "spiffe://mesh.local/service/alpha"
FAST = RotationPolicy(poll_interval=0.05, settle=1.0)


def tls_config(pki: Pki, *, ca_key: bool = False, command: str | None = None, ttl: float = 30.0) -> TlsConfig:
    d = pki.directory
    issuer = None  # no tls.issuer: another tool renews the files
    if ca_key or command is not None:
        issuer = TlsIssuerConfig(ca_key=str(d / "ca-key.pem") if ca_key else None, command=command,
                                 ttl=Duration(ttl))
    return TlsConfig("mesh.local", str(d / "ca.pem"), str(d / "alpha.pem"), str(d / "alpha-key.pem"), issuer)


def renewer_for(pki: Pki, **kwargs: object) -> tuple[Renewer, IdentityStore]:
    config = tls_config(pki, **kwargs)  # type: ignore[arg-type]
    store = IdentityStore.load(config, policy=FAST)
    renewer = Renewer.from_config(config, store)
    assert renewer is not None
    return renewer, store


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    pki = make_pki(tmp_path / "pki")
    pki.leaf("alpha", 30.0, dns_names=["alpha.internal"], ip_addresses=["127.0.0.1"])
    return pki


def serial_of(path: Path) -> int:
    return int(certs.load_certificate(path).serial_number)


class Captured(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def __enter__(self) -> Captured:
        logger = logging.getLogger("sidecar.tls")
        logger.addHandler(self)
        self._level = logger.level
        logger.setLevel(logging.DEBUG)
        return self

    def __exit__(self, *exc: object) -> None:
        logger = logging.getLogger("sidecar.tls")
        logger.removeHandler(self)
        logger.setLevel(self._level)

    def messages(self, level: int = logging.DEBUG) -> list[str]:
        return [r.getMessage() for r in self.records if r.levelno >= level]


# ------------------------------------------------------------------------------------------ the local CA key


def test_local_ca_key_renews_the_same_identity_and_names(pki: Pki) -> None:
    renewer, store = renewer_for(pki, ca_key=True)
    old = store.identity
    new = run(renewer.renew_once())
    assert new.spiffe_id == ALPHA and new.serial != old.serial
    assert store.identity.serial == new.serial == serial_of(pki.directory / "alpha.pem")
    leaf = certs.load_certificate(pki.directory / "alpha.pem")
    san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["alpha.internal"]
    assert [str(ip) for ip in san.get_values_for_type(x509.IPAddress)] == ["127.0.0.1"]
    lifetime = leaf.not_valid_after_utc - dt.datetime.now(dt.UTC)
    assert dt.timedelta(seconds=25) < lifetime <= dt.timedelta(seconds=30)  # tls.issuer.ttl
    assert stat.S_IMODE((pki.directory / "alpha-key.pem").stat().st_mode) == 0o600
    assert certs.key_matches(leaf, certs.load_private_key(pki.directory / "alpha-key.pem"))
    assert not [p for p in pki.directory.iterdir() if p.name.startswith(".")]  # no temporary files left
    assert store.rotations == 1


def run_renewer_until(renewer: Renewer, done: Callable[[], bool]) -> Captured:
    """Run the renewal loop until ``done()`` (failing the test after 10 s); returns what it logged."""

    async def main() -> None:
        task = asyncio.create_task(renewer.run())
        try:
            await wait_for_async(done, 10.0, what="the renewal loop to reach its goal")
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    with Captured() as logs:
        run(main())
    return logs


def test_the_loop_renews_a_certificate_found_past_its_renewal_point(pki: Pki) -> None:
    renewer, store = renewer_for(pki, ca_key=True)  # 30 s, backdated 5 min: already past 70%
    old = store.identity.serial

    logs = run_renewer_until(renewer, lambda: renewer.results["success"] >= 1)
    assert renewer.results == {"success": 1, "failure": 0}
    assert store.identity.serial != old
    renewed = [r for r in logs.records if r.getMessage() == "renewed our certificate"]
    assert len(renewed) == 1 and renewed[0].levelno == logging.INFO
    field = renewed[0].fields  # type: ignore[attr-defined]
    assert field["spiffe_id"] == ALPHA and field["serial"] == f"{old:x}->{store.identity.serial:x}"
    status = renewer.status()
    # the new certificate (backdated too) is due at 70% of the 30 s it had left when we got it
    assert 15 < status["next_renewal_in_seconds"] <= 21
    assert status["issuer"] == "ca_key" and status["consecutive_failures"] == 0


def test_a_ca_of_another_trust_domain_is_refused_at_start(pki: Pki, tmp_path: Path) -> None:
    other = make_pki(tmp_path / "other", "other.example")
    config = tls_config(pki)
    config = TlsConfig(config.trust_domain, config.ca, config.cert, config.key,
                       TlsIssuerConfig(ca_key=str(other.directory / "ca-key.pem"),
                                       ca_cert=str(other.directory / "ca.pem")))
    store = IdentityStore.load(config, policy=FAST)
    with pytest.raises(IssuerError) as error:
        Renewer.from_config(config, store)
    assert str(error.value) == (f"tls.issuer.ca_key: the CA in {other.directory / 'ca.pem'} serves trust domain"
                                " other.example, not ours (mesh.local, tls.trust_domain)")
    mismatched = TlsConfig(config.trust_domain, config.ca, config.cert, config.key,
                           TlsIssuerConfig(ca_key=str(other.directory / "ca-key.pem")))
    with pytest.raises(IssuerError, match=r"is not the key of .*ca\.pem: the two files belong to different CAs"):
        Renewer.from_config(mismatched, store)


# ------------------------------------------------------------------------------------------ commands


def sidecar_certs_issue(pki: Pki) -> str:
    """`sidecar certs issue` writes SERVICE.pem next to the CA: link the CA into the private staging directory."""
    ca = shlex.quote(str(pki.directory))
    return (f'd=$(dirname "$SIDECAR_CERT") && ln -s {ca}/ca.pem {ca}/ca-key.pem "$d"/'
            f' && {shlex.quote(sys.executable)} -m sidecar certs issue "$SIDECAR_SERVICE" --dir "$d"'
            ' --ttl "$SIDECAR_TTL_SECONDS"s'
            ' && mv "$d/$SIDECAR_SERVICE.pem" "$SIDECAR_CERT" && mv "$d/$SIDECAR_SERVICE-key.pem" "$SIDECAR_KEY"')


def openssl_issue(pki: Pki) -> str:
    ca = shlex.quote(str(pki.directory))
    return ('set -e; d=$(dirname "$SIDECAR_CERT");'
            ' openssl ecparam -name prime256v1 -genkey -noout | openssl pkcs8 -topk8 -nocrypt -out "$SIDECAR_KEY";'
            ' openssl req -new -key "$SIDECAR_KEY" -subj "/CN=$SIDECAR_SERVICE" -out "$d/csr.pem";'
            ' printf "subjectAltName=URI:%s\\nextendedKeyUsage=serverAuth,clientAuth\\n" "$SIDECAR_SPIFFE_ID"'
            ' > "$d/ext.cnf";'
            f' openssl x509 -req -in "$d/csr.pem" -CA {ca}/ca.pem -CAkey {ca}/ca-key.pem -set_serial 0x$(openssl'
            ' rand -hex 16) -days 1 -extfile "$d/ext.cnf" -out "$SIDECAR_CERT" 2>&1')


@pytest.mark.parametrize("make_command", [sidecar_certs_issue, openssl_issue], ids=["sidecar-certs", "openssl"])
def test_a_command_renews(pki: Pki, make_command: object) -> None:
    renewer, store = renewer_for(pki, command=make_command(pki))  # type: ignore[operator]
    old = store.identity.serial
    new = run(renewer.renew_once(), timeout=30)
    assert new.serial != old and new.spiffe_id == ALPHA
    assert serial_of(pki.directory / "alpha.pem") == new.serial == store.identity.serial
    assert stat.S_IMODE((pki.directory / "alpha-key.pem").stat().st_mode) == 0o600
    assert not [p for p in pki.directory.iterdir() if p.name.startswith(".sidecar-renew-")]


def test_the_command_gets_its_environment(pki: Pki, tmp_path: Path) -> None:
    seen = tmp_path / "env.txt"
    command = (f'env | grep ^SIDECAR_ | sort > {shlex.quote(str(seen))}; test -d "$(dirname "$SIDECAR_CERT")"'
               ' && ls -ld "$(dirname "$SIDECAR_CERT")" | cut -c1-10 >> ' + shlex.quote(str(seen)) + '; exit 1')
    renewer, _ = renewer_for(pki, command=command, ttl=90.0)
    with pytest.raises(IssuerError, match=r"exited with status 1 \(no output\)"):
        run(renewer.renew_once())
    lines = seen.read_text().splitlines()
    env = dict(line.split("=", 1) for line in lines if "=" in line)
    assert env["SIDECAR_SPIFFE_ID"] == ALPHA and env["SIDECAR_SERVICE"] == "alpha"
    assert env["SIDECAR_TTL_SECONDS"] == "90" and env["SIDECAR_CA"] == str(pki.directory / "ca.pem")
    assert Path(env["SIDECAR_CERT"]).name == "cert.pem" and Path(env["SIDECAR_KEY"]).name == "key.pem"
    assert Path(env["SIDECAR_CERT"]).parent.parent == pki.directory
    assert lines[-1] == "drwx------"  # the staging directory is private
    assert not Path(env["SIDECAR_CERT"]).parent.exists()  # and removed after the attempt


def failing_commands(pki: Pki, tmp_path: Path) -> dict[str, tuple[str, str]]:
    """command → the error it must produce; each leaves tls.cert and tls.key as they were."""
    beta = certs.write_issued(certs.issue_from(pki.ca, "beta", 3600), tmp_path / "beta", "beta")
    stranger_pki = make_pki(tmp_path / "stranger")
    stranger = stranger_pki.leaf("alpha")
    other_key = tmp_path / "other-key.pem"
    certs.write_file(other_key, certs.issue_from(pki.ca, "alpha", 3600).key_pem, 0o600)

    def copy(cert: Path, key: Path) -> str:
        return f'cp {shlex.quote(str(cert))} "$SIDECAR_CERT" && cp {shlex.quote(str(key))} "$SIDECAR_KEY"'

    good_cert = certs.write_issued(certs.issue_from(pki.ca, "alpha", 3600), tmp_path / "good", "alpha").cert
    return {
        "exit status": ('echo "CA unreachable: connection refused" >&2; exit 3',
                        "tls.issuer.command exited with status 3: CA unreachable: connection refused"),
        "killed": ("kill -9 $$", "tls.issuer.command was killed by signal 9 (no output)"),
        "nothing written": ("true", "tls.issuer.command exited 0 but wrote no certificate to $SIDECAR_CERT"),
        "no key": (f'cp {shlex.quote(str(good_cert))} "$SIDECAR_CERT"',
                   "tls.issuer.command exited 0 but wrote no key to $SIDECAR_KEY"),
        "garbage": ('echo hello > "$SIDECAR_CERT"; echo world > "$SIDECAR_KEY"',
                    "the certificate from tls.issuer.command holds no PEM certificate (tls.cert)"),
        "another identity": (copy(beta.cert, beta.key),
                             "tls.issuer.command made a certificate for spiffe://mesh.local/service/beta, not for"
                             f" our {ALPHA}: a renewal must keep the identity"),
        "another CA": (copy(stranger.cert, stranger.key),
                       f"the certificate from tls.issuer.command is not signed by the CA in {pki.ca_path}"),
        "mismatched key": (copy(good_cert, other_key),
                           "the key from tls.issuer.command is not the private key of the certificate from"
                           " tls.issuer.command"),
        "key in output": ('cat "$SIDECAR_CA" ' + shlex.quote(str(other_key)) + "; exit 2",
                          "tls.issuer.command exited with status 2 (output not shown: it holds a private key)"),
    }


CASES = ["exit status", "killed", "nothing written", "no key", "garbage", "another identity", "another CA",
         "mismatched key", "key in output"]


@pytest.mark.parametrize("case", CASES)
def test_a_failing_command_keeps_the_old_certificate(pki: Pki, tmp_path: Path, case: str) -> None:
    command, message = failing_commands(pki, tmp_path)[case]
    renewer, store = renewer_for(pki, command=command)
    before = {p: (pki.directory / p).read_bytes() for p in ("alpha.pem", "alpha-key.pem")}
    old = store.identity.serial
    with pytest.raises(CertificateError) as error:  # IssuerError, or the store's own check (CertificateError)
        run(renewer.renew_once())
    assert str(error.value) == message
    assert store.identity.serial == old and store.rotations == 0
    assert {p: (pki.directory / p).read_bytes() for p in before} == before
    assert not [p for p in pki.directory.iterdir() if p.name.startswith(".sidecar-renew-")]


def test_a_failed_attempt_is_logged_with_its_reason_counted_and_retried(pki: Pki) -> None:
    command = 'echo "CA unreachable: connection refused" >&2; exit 3'
    renewer, store = renewer_for(pki, command=command)
    old = store.identity.serial

    logs = run_renewer_until(renewer, lambda: renewer.results["failure"] >= 2)
    assert renewer.results["failure"] >= 2 and renewer.results["success"] == 0
    failed = [m for m in logs.messages(logging.WARNING) if m.startswith("certificate renewal failed")]
    assert failed[0].startswith("certificate renewal failed: tls.issuer.command exited with status 3: CA"
                                " unreachable: connection refused. The current certificate keeps serving until")
    assert "; try 2 in 1.0s" in failed[0] and "; try 3 in " in failed[1]
    assert store.identity.serial == old
    assert renewer.status()["last_error"] == ("tls.issuer.command exited with status 3: CA unreachable:"
                                              " connection refused")


def test_a_hung_command_is_killed_with_its_children(pki: Pki, tmp_path: Path) -> None:
    pid_file = tmp_path / "child.pid"
    issuer = ShellCommand(f"sleep 60 & echo $! > {shlex.quote(str(pid_file))}; wait", pki.ca_path, tmp_path)
    wanted = WantedIdentity(ALPHA, "alpha", 30.0)
    started = time.monotonic()
    with pytest.raises(IssuerError, match=r"^tls.issuer.command did not finish within 0.5s and was killed$"):
        run(issuer.obtain(wanted, 0.5))
    assert time.monotonic() - started < 5
    child = int(pid_file.read_text())

    def gone() -> bool:
        try:
            state = Path(f"/proc/{child}/stat").read_text().split()[2]
        except OSError:
            return True
        return state == "Z"  # killed; its new parent has not reaped it yet

    wait_for(gone, 5.0, 0.02, what="the command's child to end with it")


def test_a_certificate_replaced_by_another_tool_is_rescheduled(pki: Pki) -> None:
    renewer, store = renewer_for(pki, ca_key=True)
    certs.issue("alpha", pki.directory, "1h")
    store.poll()
    now = time.time()
    renewer._notice_replacement(now)
    assert renewer.core.due == pytest.approx(now + 0.7 * 3600, abs=5)



def test_expiry_warnings_point_at_the_issuer_when_there_is_one(pki: Pki) -> None:
    with Captured() as logs:
        IdentityStore.load(tls_config(pki, ca_key=True), policy=FAST)
        IdentityStore.load(tls_config(pki), policy=FAST)  # no tls.issuer: another tool renews the files
    with_issuer, without = [m for m in logs.messages(logging.WARNING) if m.startswith("our certificate expires")]
    assert with_issuer.endswith("seconds; tls.issuer renews it and logs why if it cannot: then fix tls.issuer,"
                                " or write new files to tls.cert and tls.key (picked up without a restart)")
    assert without.endswith("seconds; issue a new one (`sidecar certs issue`): it is picked up without a restart")
