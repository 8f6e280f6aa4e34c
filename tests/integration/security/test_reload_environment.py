"""``POST /reload?dry_run=true`` with a body: the document is read without the sidecar's environment, so a caller
who may post one (a loopback user, without admin.token_file) cannot make the diff or the problems print what that
environment holds (cloud credentials, tokens the configuration never names)."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from tests.harness import SidecarProcess, assert_error, http, run_cli
from tests.integration.security.secrets import new_token

# every place a value can come back: a changed value in the diff, a problem's "(got ...)", a list entry, a key
PROBES = {
    "node": {"name": "${LEAKED}"},
    "services": [{"name": "${LEAKED}", "port": 3000, "tags": ["${LEAKED}", "x-${LEAKED}"]},
                 {"name": "pay", "port": "${LEAKED}"}],
    "policies": {"*": {"timeout": "${LEAKED}"}},
    "logging": {"level": "${LEAKED:-info}"},
    "telemetry": {"tracing": {"endpoint": "http://${LEAKED}@collector:4318"}},
}


@pytest.fixture
def sidecar(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[SidecarProcess, str]]:
    secret = "sk-" + new_token()
    monkeypatch.setenv("LEAKED", secret)   # in the sidecar's environment, named by none of its files
    process = SidecarProcess(tmp_path, {}).start()
    yield process, secret
    process.terminate()


def test_a_posted_document_is_not_expanded_against_the_sidecars_environment(
        sidecar: tuple[SidecarProcess, str]) -> None:
    process, secret = sidecar
    refused = http("POST", process.admin + "/reload?dry_run=true", yaml.safe_dump(PROBES).encode())
    error = assert_error(refused, 400, "INVALID_ARGUMENT")
    assert secret not in refused.body.decode()
    problems = error["details"]["problems"]
    for path in ("node.name", "services[0].name", "services[0].tags[1]", "services[1].port",
                 "policies.*.timeout", "logging.level", "telemetry.tracing.endpoint"):
        assert any(p.startswith(f"{path}: ${{LEAKED}} is not expanded here") for p in problems), (path, problems)

    # each probe alone, as JSON too, and with curl as an operator would send it: never the value
    for key, value in PROBES.items():
        for body in (yaml.safe_dump({key: value}), json.dumps({key: value})):
            shown = subprocess.run(["curl", "-sS", "--max-time", "10", "-X", "POST", "--data-binary", body,
                                    process.admin + "/reload?dry_run=true"], capture_output=True, text=True,
                                   timeout=20)
            assert shown.returncode == 0 and "INVALID_ARGUMENT" in shown.stdout, shown
            assert secret not in shown.stdout + shown.stderr, key
    assert secret not in process.log_text()


def test_a_literal_dollar_still_reads_as_one(sidecar: tuple[SidecarProcess, str]) -> None:
    process, secret = sidecar
    body = yaml.safe_dump({"services": [{"name": "pay", "port": 3000, "tags": ["$${LEAKED}"]}]})
    answer = http("POST", process.admin + "/reload?dry_run=true", body.encode())
    assert answer.status == 200, answer
    assert secret not in answer.body.decode()
    assert '"${LEAKED}"' in json.dumps(answer.json()["changes"])   # the text itself, not the variable


def test_the_cli_expands_a_file_from_its_own_environment(sidecar: tuple[SidecarProcess, str],
                                                         tmp_path: Path) -> None:
    process, secret = sidecar
    candidate = tmp_path / "candidate.yaml"
    candidate.write_text(yaml.safe_dump({**process.config, "services": [
        {"name": "pay", "port": 3000, "tags": ["${TEAM}", "$$literal"]}]}))
    shown = run_cli("reload", "--dry-run", str(candidate), "--admin", process.admin, env={"TEAM": "blue"})
    assert shown.returncode == 0, shown
    assert '"tags": ["blue", "$literal"]' in shown.stdout or '["blue","$literal"]' in shown.stdout, shown.stdout
    assert secret not in shown.stdout + shown.stderr
