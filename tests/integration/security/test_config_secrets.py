"""Nothing the admin port shows carries a secret: every read route of a running sidecar configured with every
kind of secret is fetched, and the raw bytes are searched for each secret in each form it could take."""

from __future__ import annotations

import http.client
import json
import time
from pathlib import Path
from typing import Any

from sidecar.gossip.keyring import fingerprint as key_fingerprint
from tests.harness import make_certs
from tests.integration.security.inproc import running
from tests.integration.security.secrets import Secrets, new_gossip_key, new_token

READ_METHODS = {"GET"}


def fetch(base: str, path: str, limit: float = 3.0, token: str | None = None) -> tuple[int, bytes]:
    """Status and body; a stream (Server-Sent Events) is read for ``limit`` seconds, then closed. ``token``: the
    admin token, sent as a bearer token."""
    host, port = base.removeprefix("http://").rsplit(":", 1)
    conn = http.client.HTTPConnection(host, int(port), timeout=limit)
    try:
        conn.request("GET", path, headers={"Authorization": f"Bearer {token}"} if token else {})
        response = conn.getresponse()
        if not response.getheader("content-type", "").startswith("text/event-stream"):
            return response.status, response.read()
        body = b""
        deadline = time.monotonic() + limit
        while time.monotonic() < deadline:
            try:
                chunk = response.read1(65536)
            except TimeoutError:
                break
            if not chunk:
                break
            body += chunk
        return response.status, body
    finally:
        conn.close()


def secret_config(tmp: Path) -> tuple[dict[str, Any], Secrets]:
    """A config holding every kind of secret the sidecar takes, and the secrets to search for."""
    found = Secrets()
    pki = make_certs(tmp / "certs", ["web"])["web"]
    token = new_token()
    (tmp / "token").write_text(token + "\n")
    keys = [new_gossip_key(), new_gossip_key()]
    epoch_key = new_gossip_key()
    credentials = {name: new_token() for name in ("rotate", "issuer", "issuer-password", "otlp", "check", "query")}
    config = {
        "admin": {"token_file": str(tmp / "token")},
        "gossip": {"encrypt_keys": keys, "rotate_every": "24h",
                   "rotate_command": f"ROTATE_TOKEN={credentials['rotate']} sh -c 'echo {epoch_key}'"},
        "tls": {**pki, "issuer": {"command": f"ISSUER_TOKEN={credentials['issuer']} /bin/false"
                                             f" --password {credentials['issuer-password']}"}},
        "telemetry": {"tracing": {"exporter": "none",
                                  "endpoint": f"http://otel:{credentials['otlp']}@127.0.0.1:9/?k={credentials['query']}"}},
        "services": [{"name": "web", "port": 9, "check": {"http": f"http://probe:{credentials['check']}@127.0.0.1:9/h",
                                                           "interval": "1s"}}],
    }
    found.add_text("admin token", token)
    for i, key in enumerate([*keys, epoch_key]):
        found.add_gossip_key(f"gossip key {i}", key)
    for name, value in credentials.items():
        found.add_text(f"{name} credential", value)
    found.add_private_key("tls key", Path(pki["key"]))
    found.add_private_key("CA key", tmp / "certs" / "ca-key.pem")
    return config, found


def test_no_read_route_shows_a_secret(tmp_path: Path) -> None:
    config, secrets = secret_config(tmp_path)
    with running(tmp_path, config) as sidecar:
        admin = sidecar.admin
        reads = sorted({path for method, path in sidecar.routes() if method in READ_METHODS and "{" not in path})
        expected = {"/config", "/gossip", "/keys", "/metrics", "/members", "/catalog", "/clusters", "/", "/tls"}
        assert expected <= set(reads), reads
        bodies: dict[str, bytes] = {}
        token = Path(config["admin"]["token_file"]).read_text().strip()   # what each route shows to its holder
        for path in reads:
            status, body = fetch(admin, path, token=token)
            bodies[path] = body
            secrets.assert_absent(body, f"GET {path} ({status})")

        shown = json.loads(bodies["/config"])
        assert shown["gossip"]["encrypt_keys"] == ["<redacted>", "<redacted>"]
        assert shown["gossip"]["rotate_command"] == "sh <redacted>"
        assert shown["tls"]["issuer"]["command"] == "/bin/false <redacted>"
        assert shown["telemetry"]["tracing"]["endpoint"] == "http://<redacted>@127.0.0.1:9/?<redacted>"
        assert shown["services"][0]["check"]["http"] == "http://<redacted>@127.0.0.1:9/h"
        assert shown["admin"]["token_file"] == config["admin"]["token_file"]  # a path, not the token
        # keys are shown by fingerprint, which is what an operator compares between nodes
        fingerprints = json.loads(bodies["/keys"])["keys"]
        assert key_fingerprint(config["gossip"]["encrypt_keys"][0]) in fingerprints
