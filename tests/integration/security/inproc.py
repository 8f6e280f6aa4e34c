"""A whole sidecar (``sidecar.app.Sidecar``, every part the process wires) started in this process on a test
event loop, with real sockets: the tests can list the routes its admin port really serves, then call them over
HTTP like any client."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

from sidecar.app import Sidecar
from sidecar.clock import SYSTEM_CLOCK, Clock
from sidecar.config.load import deep_merge, load
from sidecar.httpd import App
from tests.loops import LoopThread

LOOPBACK_LISTENERS: dict[str, Any] = {
    "admin": {"listen": "127.0.0.1:0"}, "api": {"listen": "127.0.0.1:0"}, "outbound": {"listen": "127.0.0.1:0"},
    "inbound": {"listen": "127.0.0.1:0"}, "dns": {"listen": "127.0.0.1:0"},
    "gossip": {"listen": "127.0.0.1:0", "profile": "local"},
}


class Running:
    def __init__(self, sidecar: Sidecar, loop: LoopThread, config_path: Path) -> None:
        self.sidecar = sidecar
        self.loop = loop
        self.config_path = config_path

    @property
    def admin(self) -> str:
        return f"http://{self.sidecar.bound['admin']}"

    def admin_app(self) -> App:
        return next(site.app for site in self.sidecar.sites if site.name == "admin")

    def routes(self) -> list[tuple[str, str]]:
        """(method, path pattern) of every route the admin port serves (a GET route answers HEAD too)."""
        return self.admin_app().router.routes()


@contextlib.contextmanager
def running(tmp: Path, config: dict[str, Any], name: str = "node-a", clock: Clock = SYSTEM_CLOCK) -> Iterator[Running]:
    merged = deep_merge({"node": {"name": name, "data_dir": str(tmp / f"data-{name}")}, **LOOPBACK_LISTENERS},
                       config)
    path = tmp / f"{name}.yaml"
    path.write_text(yaml.safe_dump(merged))
    loop = LoopThread(timeout=30)
    sidecar: Sidecar | None = None
    try:
        async def start() -> Sidecar:
            made = Sidecar(load([str(path)]), [str(path)], clock=clock)
            await made.start()
            return made
        sidecar = loop.run(start())
        yield Running(sidecar, loop, path)
    finally:
        if sidecar is not None:
            loop.run(sidecar.shutdown(), timeout=40)
        loop.close()
