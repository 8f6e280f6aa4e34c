"""The app's lifecycle next to its sidecar: held until ready, stopped before the outbound closes, and the
sidecar exiting with a batch job's exit code."""

from __future__ import annotations

import signal
import sys
from pathlib import Path

from tests.harness import SidecarProcess, assert_error, http, make_certs, run_cli, wait_for


def test_a_batch_job_runs_once_ready_and_its_exit_code_is_the_sidecars(tmp_path: Path) -> None:
    marker = tmp_path / "seen"
    job = f"import os,urllib.request; urllib.request.urlopen('http://'+os.environ['SIDECAR_ADMIN']+'/ready'); " \
          f"open({str(marker)!r},'w').write(os.environ['SIDECAR_OUTBOUND']); raise SystemExit(7)"
    process = SidecarProcess(tmp_path, {}, extra_args=["--", sys.executable, "-c", job])
    process.start(wait_ready=False)
    assert process.proc is not None
    assert process.proc.wait(30) == 7
    assert marker.read_text().startswith("127.0.0.1:")  # the app was told where its outbound listener is
    text = process.log_text()
    assert text.index("sidecar ready") < text.index("app started") < text.index("sidecar stopped")


def test_sigterm_stops_inbound_then_the_app_then_the_rest(tmp_path: Path) -> None:
    app = "import signal,sys,time; signal.signal(signal.SIGTERM, lambda *a: (print('APP-GOT-' + 'TERM', flush=True), " \
          "sys.exit(0))); print('APP-' + 'READY', flush=True); time.sleep(60)"
    process = SidecarProcess(tmp_path, {}, extra_args=["--", sys.executable, "-c", app])
    process.start(wait_ready=False)
    process.wait_log("^APP-READY$", timeout=20)
    assert process.proc is not None
    process.proc.send_signal(signal.SIGTERM)
    assert process.proc.wait(30) == 0
    wait_for(lambda: "sidecar stopped" in process.log_text(), timeout=5)
    lines = process.lines
    order = [next(i for i, line in enumerate(lines) if pattern in line)
             for pattern in ("draining", "APP-GOT-TERM", "app stopped exit_code=0", "sidecar stopped")]
    assert order == sorted(order), lines


def test_the_app_waits_while_the_mesh_is_not_joined(tmp_path: Path) -> None:
    # join a port nobody listens on: readiness stays 503, so the app must not start
    marker = tmp_path / "started"
    process = SidecarProcess(tmp_path, {"gossip": {"join": ["127.0.0.1:9"]}, "logging": {"level": "debug"}},
                             extra_args=["--", sys.executable, "-c", f"open({str(marker)!r},'w')"])
    process.start(wait_ready=False)
    # the sidecar's own word, twenty times over about two seconds, that it held the app back
    wait_for(lambda: sum("holding the app until the sidecar is ready" in line for line in process.lines) >= 20,
             timeout=20, what="the sidecar holding the app back")
    assert not marker.exists()
    assert process.terminate() == 0
    assert not marker.exists()


def test_wait_ready(start_sidecar) -> None:  # type: ignore[no-untyped-def]
    sidecar = start_sidecar()
    assert run_cli("wait-ready", "--admin", sidecar.admin, "--timeout", "5").returncode == 0
    failed = run_cli("wait-ready", "--admin", "http://127.0.0.1:9", "--timeout", "1")
    assert failed.returncode == 1 and "not ready after 1s" in failed.stderr


def test_an_app_that_cannot_start_fails_with_one_line(tmp_path: Path) -> None:
    process = SidecarProcess(tmp_path, {}, extra_args=["--", "/nonexistent/app"])
    process.start(wait_ready=False)
    assert process.proc is not None
    assert process.proc.wait(30) == 1
    wait_for(lambda: "cannot start the app '/nonexistent/app'" in process.log_text(), timeout=5)
    assert "Traceback" not in process.log_text()


def test_before_it_has_joined_an_unknown_service_is_unavailable_not_missing(tmp_path: Path) -> None:
    # a restarting sidecar's catalog is empty until it joins: "no such service" would be a lie, and a 404 is not
    # retried by clients; 503 says "not yet"
    certs = make_certs(tmp_path / "certs", ["client"])
    process = SidecarProcess(tmp_path, {"gossip": {"join": ["127.0.0.1:9"]}, "tls": certs["client"]})
    process.start(wait_ready=False)
    wait_for(lambda: "outbound" in process.listeners, timeout=20)
    reply = http("GET", f"http://{process.listeners['outbound']}/x", headers={"Host": "payments"})
    error = assert_error(reply, 503, "UNAVAILABLE")
    assert error["details"]["reason"] == "not-joined", error
    assert process.terminate() == 0


def test_once_joined_an_unknown_service_is_not_found(start_sidecar, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    certs = make_certs(tmp_path / "certs", ["client"])
    seed = start_sidecar({"tls": certs["client"]}, name="seed")
    joined = start_sidecar({"tls": certs["client"], "gossip": {"join": [seed.listeners["gossip"]]}}, name="joined")
    reply = http("GET", f"http://{joined.listeners['outbound']}/x", headers={"Host": "payments"})
    assert_error(reply, 404, "NOT_FOUND")
