"""Start a test app as a subprocess that prints ``PORT <n>`` once listening (tests.grpcapps.server,
tests.grpcapps.h2app), with a deadline on the start and a kill at the end."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
START_TIMEOUT = 20.0


@dataclass
class Spawned:
    process: subprocess.Popen[bytes]
    port: int

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    def stop(self) -> None:
        """SIGTERM, then SIGKILL if it lingers."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(5)


def spawn(module: str, *args: str) -> Spawned:
    return spawn_all({module: (module, list(args))})[module]


def spawn_all(apps: dict[str, tuple[str, list[str]]]) -> dict[str, Spawned]:
    """Start every app at once (name -> module and arguments), then wait for each one's port: the
    interpreters start in parallel. On a failure, every app started is killed."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    processes = {name: subprocess.Popen([sys.executable, "-m", module, *args], cwd=ROOT, stdin=subprocess.DEVNULL,
                                        stdout=subprocess.PIPE, env=env) for name, (module, args) in apps.items()}
    started: dict[str, Spawned] = {}
    try:
        for name, process in processes.items():
            started[name] = Spawned(process, _read_port(name, process))
    except BaseException:
        for process in processes.values():
            process.kill()
            process.wait(5)
        raise
    return started


def _read_port(name: str, process: subprocess.Popen[bytes]) -> int:
    assert process.stdout is not None
    # readline blocks until the app prints or dies; the timer bounds a hung start
    timer = threading.Timer(START_TIMEOUT, process.kill)
    timer.start()
    try:
        line = process.stdout.readline()
    finally:
        timer.cancel()
    if not line.startswith(b"PORT "):
        raise RuntimeError(f"{name} did not start within {START_TIMEOUT}s: {line!r}")
    return int(line.split()[1])
