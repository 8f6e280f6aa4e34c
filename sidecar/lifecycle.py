"""The app's lifecycle next to its sidecar (``sidecar run -c FILE -- APP ARGS...``).

The sidecar starts first and holds the app back until it is ready (listening and, when ``gossip.join`` is
set, joined), so the app's first outbound call finds a working mesh. On SIGTERM the sidecar closes its
inbound listener first (peers fail over), then stops the app (SIGTERM, then SIGKILL after a grace period)
while the outbound still carries the app's last calls, and only then closes the rest. When the app exits
by itself (a batch job), the sidecar drains, leaves, and exits with the app's exit code.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
from collections.abc import Mapping

from sidecar.log import fields

log = logging.getLogger("sidecar.lifecycle")


class WrappedApp:
    def __init__(self, command: list[str], extra_env: Mapping[str, str]) -> None:
        self.command = command
        self.extra_env = dict(extra_env)
        self.process: asyncio.subprocess.Process | None = None
        self.exit_code: int | None = None
        self._exited: asyncio.Task[int] | None = None

    async def start(self) -> None:
        """Raise OSError (with the command named) when it cannot be started."""
        try:
            self.process = await asyncio.create_subprocess_exec(*self.command, env={**os.environ, **self.extra_env})
        except OSError as e:
            raise OSError(f"cannot start the app {self.command[0]!r}: {e.strerror or e}") from None
        self._exited = asyncio.create_task(self.process.wait(), name="app")
        log.info("app started", extra=fields(pid=self.process.pid, command=" ".join(self.command)))

    @property
    def exited(self) -> asyncio.Task[int]:
        assert self._exited is not None, "the app was not started"
        return self._exited

    async def stop(self, grace: float) -> None:
        """SIGTERM, wait up to ``grace`` seconds, then SIGKILL."""
        if self.process is None or self._exited is None:
            return
        if not self._exited.done():
            with contextlib.suppress(ProcessLookupError):
                self.process.send_signal(signal.SIGTERM)
            done, _ = await asyncio.wait({self._exited}, timeout=grace)
            if not done:
                log.warning("app did not stop within the grace period; killing it", extra=fields(grace=f"{grace}s"))
                with contextlib.suppress(ProcessLookupError):
                    self.process.kill()
                await self._exited
        self.exit_code = self._exited.result()
        log.info("app stopped", extra=fields(exit_code=self.exit_code))
