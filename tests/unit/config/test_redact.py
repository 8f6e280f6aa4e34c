"""Secrets in the configuration are never shown whole: on /config (config_to_raw) nor in config errors."""

from __future__ import annotations

import json

import pytest

from sidecar.config.load import config_from_raw, config_to_raw
from sidecar.config.redact import program_only, url_without_credentials
from sidecar.errors import ConfigError

KEY = "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY="


@pytest.mark.parametrize(("command", "shown"), [
    ("vault read -field=key secret/gossip", "vault <redacted>"),
    ("VAULT_TOKEN=s.hunter2 vault read -field=key secret/gossip", "vault <redacted>"),
    ("/usr/local/bin/renew-cert", "/usr/local/bin/renew-cert"),
    ("A=1 B=2", "<redacted>"),
    ("curl -u admin:hunter2 'https://ca/sign", "<redacted>"),  # unbalanced quote: no telling where it ends
])
def test_a_command_shows_its_program_only(command: str, shown: str) -> None:
    assert program_only(command) == shown


@pytest.mark.parametrize(("url", "shown"), [
    ("http://collector:4318", "http://collector:4318"),
    ("http://user:hunter2@collector:4318/base", "http://<redacted>@collector:4318/base"),
    ("https://ghp_token1234@collector", "https://<redacted>@collector"),
    ("http://collector:4318/v1?api_key=hunter2", "http://collector:4318/v1?<redacted>"),
    ("/health", "/health"),
    ("http://[::1]:8080/health", "http://[::1]:8080/health"),
])
def test_a_url_shows_no_credentials(url: str, shown: str) -> None:
    assert url_without_credentials(url) == shown


def test_config_to_raw_redacts_every_secret(tmp_path) -> None:  # type: ignore[no-untyped-def]
    ca_key = tmp_path / "ca-key.pem"
    ca_key.write_text("-----BEGIN PRIVATE KEY-----\nnot really\n-----END PRIVATE KEY-----\n")
    for name in ("ca.pem", "node.pem", "node-key.pem"):
        (tmp_path / name).write_text("x")
    raw = {
        "gossip": {"encrypt_keys": [KEY], "rotate_every": "24h",
                   "rotate_command": "VAULT_TOKEN=s.rot4te vault read -field=key x"},
        "tls": {"ca": str(tmp_path / "ca.pem"), "cert": str(tmp_path / "node.pem"),
                "key": str(tmp_path / "node-key.pem"),
                "issuer": {"command": "step ca certificate --password-file=/run/pw --token s.issu3r"}},
        "telemetry": {"tracing": {"exporter": "otlp", "endpoint": "http://otel:tr4ce@collector:4318"}},
        "services": [{"name": "pay", "port": 3000, "check": {"http": "http://probe:ch3ck@127.0.0.1:3000/health"}}],
    }
    shown = config_to_raw(config_from_raw(raw))
    text = json.dumps(shown)
    for secret in (KEY, "s.rot4te", "key x", "s.issu3r", "/run/pw", "tr4ce", "ch3ck"):
        assert secret not in text, secret
    assert shown["gossip"]["encrypt_keys"] == ["<redacted>"]
    assert shown["gossip"]["rotate_command"] == "vault <redacted>"
    assert shown["tls"]["issuer"]["command"] == "step <redacted>"
    assert shown["telemetry"]["tracing"]["endpoint"] == "http://<redacted>@collector:4318"
    assert shown["services"][0]["check"]["http"] == "http://<redacted>@127.0.0.1:3000/health"
    # paths of key files are not secrets (their contents are, and are never read into the config)
    assert shown["tls"]["key"] == str(tmp_path / "node-key.pem")
    # the unredacted form is still there for the process itself (reload compares it)
    assert config_to_raw(config_from_raw(raw), redact=False)["gossip"]["rotate_command"].startswith("VAULT_TOKEN=")


@pytest.mark.parametrize("raw", [
    {"gossip": {"encrypt_keys": KEY}},                              # a string, not a list
    {"gossip": {"encrypt_keys": [KEY, {"k": KEY}]}},                # an entry that is not a string
    {"gossip": {"rotate_command": ["sh", "-c", f"echo {KEY}"]}},    # a list, not a string
    {"telemetry": {"tracing": {"endpoint": [f"http://u:{KEY}@h"]}}},
    # a cross-check between keys (rotate_command needs rotate_every) that quotes the command
    {"gossip": {"encrypt_keys": [KEY], "rotate_command": f"KEY={KEY} vault read x"}},
])
def test_config_errors_never_echo_a_secret(raw: dict) -> None:  # type: ignore[type-arg]
    with pytest.raises(ConfigError) as caught:
        config_from_raw(raw)
    text = "\n".join(caught.value.problems)
    assert KEY not in text and "(got <redacted>)" in text, text
