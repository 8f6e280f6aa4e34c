"""No secret reaches the logs. Real processes at debug level with gossip encryption, an admin token and mTLS
do what an operator does (traffic, a key rotation through the admin port, reloads good and bad, refused calls
with wrong tokens), and a third renews its certificate and rotates its gossip key by itself; then every line
they wrote is searched for every secret in every form (base64, hex, PEM lines, the private scalar).
Fingerprints may appear, and must: they are how an operator follows a rotation."""

from __future__ import annotations

import json
import signal
from pathlib import Path
from typing import Any

import yaml

from sidecar.gossip.keyring import fingerprint as key_fingerprint
from sidecar.tls import certs
from tests.harness import FakeApp, SidecarProcess, assert_error, http, make_certs, members_by_state, wait_for
from tests.integration.security.secrets import Secrets, new_gossip_key, new_token


def rewrite(process: SidecarProcess, change: dict[str, Any]) -> str:
    """Write a changed config file for ``process``; return the old text, to put back."""
    old = process.config_path.read_text()
    data = yaml.safe_load(old)
    for section, values in change.items():
        data[section] = {**data.get(section, {}), **values} if isinstance(values, dict) else values
    process.config_path.write_text(yaml.safe_dump(data))
    return old


def test_an_operators_day_leaves_no_secret_in_the_logs(tmp_path: Path, start_sidecar) -> None:  # type: ignore[no-untyped-def]
    secrets = Secrets()
    pki = make_certs(tmp_path / "certs", ["checkout", "payment-service"])
    token = new_token()
    (tmp_path / "token").write_text(token + "\n")
    first, second, bad = new_gossip_key(), new_gossip_key(), new_gossip_key()
    short_key = new_token()[:20]   # not a key: the error about it must not quote it either
    wrong_tokens = [new_token(), token[:-1], token + "0", token.upper()]
    check_credential = new_token()
    secrets.add_text("admin token", token)
    for i, wrong in enumerate(wrong_tokens):
        secrets.add_text(f"wrong token {i}", wrong)
    for name, key in (("first key", first), ("second key", second), ("rejected key", bad)):
        secrets.add_gossip_key(name, key)
    secrets.add_text("short key", short_key)
    secrets.add_text("check credential", check_credential)
    for name in ("checkout", "payment-service"):
        secrets.add_private_key(f"{name} tls key", Path(pki[name]["key"]))
    secrets.add_private_key("CA key", tmp_path / "certs" / "ca-key.pem")

    common = {"logging": {"level": "debug"}, "admin": {"token_file": str(tmp_path / "token")},
              "gossip": {"encrypt_keys": [first]}}
    good = {"Authorization": f"Bearer {token}"}
    with FakeApp("payment") as app:
        a = start_sidecar({**common, "node": {"name": "node-a", "cluster": "sec"}, "tls": pki["checkout"]},
                          name="node-a")
        b = start_sidecar({**common, "node": {"name": "node-b", "cluster": "sec"}, "tls": pki["payment-service"],
                           "gossip": {**common["gossip"], "join": [a.listeners["gossip"]]},
                           "services": [{"name": "payment-service", "port": app.port, "check": {
                               "http": f"http://probe:{check_credential}@127.0.0.1:{app.port}/health",
                               "interval": "200ms", "timeout": "200ms"}}]}, name="node-b")
        nodes = (a, b)
        wait_for(lambda: all(members_by_state(n, good) == {"node-a": "alive", "node-b": "alive"} for n in nodes), 20,
                 what="both members alive")

        def call() -> int:
            return http("GET", f"http://{a.listeners['outbound']}/pay", headers={"Host": "payment-service"}).status
        wait_for(lambda: call() == 200, 15, what="a request across mTLS")

        # refused: no token, wrong tokens, the right token under the wrong scheme
        for headers in [{}, *({"Authorization": f"Bearer {w}"} for w in wrong_tokens), {"Authorization": token}]:
            for node in nodes:
                refused = http("POST", node.admin + "/keys/install", {"key": second}, headers)
                assert_error(refused, 401, "UNAUTHENTICATED")
                secrets.assert_absent(refused.body, "a refusal")

        # a gossip key rotation on every node, as memberlist does it: install, use, remove
        for action, key in (("install", second), ("use", second), ("remove", first)):
            for node in nodes:
                response = http("POST", node.admin + f"/keys/{action}", {"key": key}, good)
                assert response.status == 200, response
                secrets.assert_absent(response.body, f"/keys/{action}")
        assert http("GET", a.admin + "/keys", headers=good).json()["keys"] == [key_fingerprint(second)]
        rejected = http("POST", a.admin + "/keys/install", {"key": short_key}, good)
        assert_error(rejected, 400, "INVALID_ARGUMENT")
        secrets.assert_absent(rejected.body, "a refused key")
        wait_for(lambda: call() == 200, 15, what="traffic after the rotation")
        assert members_by_state(b, good) == {"node-a": "alive", "node-b": "alive"}

        # reloads: a good one, then a file with a key in the wrong shape (POST /reload and SIGHUP both refuse it)
        assert http("POST", a.admin + "/reload", headers=good).status == 200
        original = rewrite(a, {"gossip": {"encrypt_keys": bad}})
        broken = http("POST", a.admin + "/reload", headers=good)
        assert_error(broken, 400, "INVALID_ARGUMENT")
        secrets.assert_absent(broken.body, "a refused reload")
        assert a.proc is not None
        a.proc.send_signal(signal.SIGHUP)
        a.wait_log("SIGHUP reload not applied")
        a.config_path.write_text(original)
        assert http("POST", a.admin + "/logging?level=debug", headers=good).status == 200

        for node in nodes:
            assert node.terminate() == 0
    log = "\n".join(a.lines + b.lines)
    # the day happened, and was logged (a test that logged nothing would prove nothing)
    assert any(" debug " in line and "check result" in line for line in log.splitlines())
    assert "admin request refused" in log and "gossip keyring changed" in log
    assert key_fingerprint(second) in log
    secrets.assert_absent(log, "the logs of node-a and node-b")


def test_renewal_and_automatic_key_rotation_leave_no_secret_in_the_logs(tmp_path: Path) -> None:
    secrets = Secrets()
    directory = tmp_path / "certs"
    certs.init_ca(directory, "mesh.local")
    # a 30 s certificate backdated 5 minutes is past its renewal point at once: renewed right at start
    paths = certs.issue("web", directory, "30s")
    epoch_key, credential = new_gossip_key(), new_token()
    secrets.add_gossip_key("configured key", configured := new_gossip_key())
    secrets.add_gossip_key("epoch key", epoch_key)
    secrets.add_text("rotate credential", credential)
    secrets.add_private_key("CA key", directory / "ca-key.pem")
    secrets.add_private_key("first tls key", paths.key)
    process = SidecarProcess(tmp_path, {
        "logging": {"level": "debug", "format": "json"},
        "gossip": {"encrypt_keys": [configured], "rotate_every": "24h",
                   "rotate_command": f"ROTATE_TOKEN={credential} sh -c 'echo {epoch_key}'"},
        "tls": {"ca": str(directory / "ca.pem"), "cert": str(paths.cert), "key": str(paths.key),
                "issuer": {"ca_key": str(directory / "ca-key.pem"), "ttl": "1h"}},
    }).start()
    try:
        wait_for(lambda: http("GET", process.admin + "/tls").json()["renewal"]["results"]["success"] >= 1, 20,
                 what="the certificate renewed")
        wait_for(lambda: http("GET", process.admin + "/keys").json()["primary"] == key_fingerprint(epoch_key), 20,
                 what="the epoch's key fetched and in use")
    finally:
        assert process.terminate() == 0
    secrets.add_private_key("renewed tls key", paths.key)
    assert certs.load_certificate(paths.cert).not_valid_after_utc.timestamp() - \
        certs.load_certificate(paths.cert).not_valid_before_utc.timestamp() > 3000  # the 1 h one
    lines = [json.loads(line) for line in process.lines if line.startswith("{")]
    assert any(entry["level"] == "debug" for entry in lines)
    secrets.assert_absent(process.log_text(), "the log of a renewing, rotating sidecar")
