"""`sidecar validate`, `sidecar run` start-up, readiness, bad configs and graceful SIGTERM, as real processes."""

from __future__ import annotations

import socket
import time
from pathlib import Path

from sidecar.config.crosscheck import show
from tests.harness import SidecarProcess, http, run_cli, wait_for


def test_validate_accepts_the_example_config() -> None:
    result = run_cli("validate", "config/sidecar.yaml")
    assert result.returncode == 0, result.stderr
    assert "valid" in result.stdout


def test_validate_prints_every_problem_and_exits_2(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("node: {name: a, clustr: x}\ndns: {ttl: 5x}\nservices: [{name: a, port: 0}, {name: a, port: 1}]\n"
                    "tls: {ca: missing-ca.pem, cert: missing.pem, key: missing-key.pem}\n")
    result = run_cli("validate", str(path))
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert "node.clustr: unknown key; did you mean 'cluster'? (got \"x\")" in lines
    assert 'dns.ttl: must be a duration like 250ms, 5s, 1m, 24h or a number of seconds (got "5x")' in lines
    assert "services[0].port: must be a port in [1, 65535] (got 0)" in lines
    assert 'services[1].name: duplicate service name, also services[0] (got "a")' in lines
    assert 'tls.ca: file does not exist or cannot be read (got "missing-ca.pem")' in lines
    assert len(lines) == 7, lines
    assert "Traceback" not in result.stderr


def test_run_with_a_bad_config_exits_2_with_the_same_messages(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("gossip: {profile: lab}\n")
    result = run_cli("run", "-c", str(path))
    assert result.returncode == 2
    assert result.stderr.strip() == 'gossip.profile: must be one of lan, wan, local (got "lab")'


def test_run_with_a_missing_file_exits_2(tmp_path: Path) -> None:
    result = run_cli("run", "-c", str(tmp_path / "nope.yaml"))
    assert result.returncode == 2
    assert "cannot read the file" in result.stderr and "Traceback" not in result.stderr


def test_bad_usage_exits_2() -> None:
    assert run_cli("frobnicate").returncode == 2
    assert run_cli("validate").returncode == 2


def test_keys_generate_prints_a_32_byte_key() -> None:
    import base64
    result = run_cli("keys", "generate")
    assert result.returncode == 0
    assert len(base64.b64decode(result.stdout.strip(), validate=True)) == 32


def test_port_zero_listeners_are_reported_on_ready(start_sidecar) -> None:  # type: ignore[no-untyped-def]
    sidecar = start_sidecar()
    body = http("GET", sidecar.admin + "/ready").json()
    assert body["status"] == "ready"
    listeners = body["listeners"]
    assert listeners["admin"] == sidecar.listeners["admin"]
    assert listeners["api"] == sidecar.listeners["api"]
    for address in listeners.values():
        host, port = address.rsplit(":", 1)
        assert host == "127.0.0.1" and int(port) > 0
    assert http("GET", sidecar.admin + "/healthz").json() == {"status": "ok"}


def test_sigterm_drains_and_exits_0(start_sidecar) -> None:  # type: ignore[no-untyped-def]
    sidecar = start_sidecar({"services": [{"name": "pay", "port": 3000}]})
    started = time.monotonic()
    assert sidecar.terminate() == 0
    assert time.monotonic() - started < 10
    text = sidecar.log_text()
    assert "shutting down signal=SIGTERM" in text
    assert text.index("draining") < text.index("sidecar stopped")
    assert "Traceback" not in text


def test_sigint_also_exits_0(start_sidecar) -> None:  # type: ignore[no-untyped-def]
    import signal
    sidecar = start_sidecar()
    assert sidecar.proc is not None
    sidecar.proc.send_signal(signal.SIGINT)
    assert sidecar.proc.wait(15) == 0


def test_sigterm_with_an_open_event_stream_still_exits_promptly(start_sidecar) -> None:  # type: ignore[no-untyped-def]
    sidecar = start_sidecar()
    host, port = sidecar.listeners["api"].rsplit(":", 1)
    stream = socket.create_connection((host, int(port)), timeout=5)
    stream.sendall(b"GET /v1/events HTTP/1.1\r\nHost: localhost\r\n\r\n")
    assert b"200 OK" in stream.recv(4096)
    started = time.monotonic()
    assert sidecar.terminate() == 0
    assert time.monotonic() - started < 5
    stream.close()


def test_a_port_in_use_fails_with_one_line_and_exit_1(tmp_path: Path) -> None:
    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen(1)
    port = busy.getsockname()[1]
    try:
        process = SidecarProcess(tmp_path, {"admin": {"listen": f"127.0.0.1:{port}"}})
        process.start(wait_ready=False)
        assert process.proc is not None
        assert process.proc.wait(15) == 1
        wait_for(lambda: any("admin.listen: cannot listen on" in line for line in process.lines), 5)
        assert "Traceback" not in process.log_text()
    finally:
        busy.close()


def test_an_access_log_path_that_cannot_be_opened_fails_start_with_the_key_and_exit_2(tmp_path: Path) -> None:
    path = tmp_path / "missing-dir" / "access.log"
    process = SidecarProcess(tmp_path, {"telemetry": {"access_log": {"enabled": True, "path": str(path)}}})
    process.start(wait_ready=False)
    assert process.proc is not None
    assert process.proc.wait(15) == 2
    wait_for(lambda: any("telemetry.access_log.path: cannot open for appending: No such file or directory "
                         f"(got {show(str(path))})" in line for line in process.lines), 5)
    assert "Traceback" not in process.log_text()


def test_logs_can_be_json(start_sidecar) -> None:  # type: ignore[no-untyped-def]
    import json
    sidecar = start_sidecar({"logging": {"format": "json"}, "services": [{"name": "pay", "port": 3000}]})
    # the harness finds listeners in text logs only; with JSON it finds them through the entries
    line = sidecar.wait_log(r'"msg":"service registered"')
    entry = json.loads(line)
    assert entry["level"] == "info" and entry["service"] == "pay" and entry["logger"] == "sidecar.registry"
