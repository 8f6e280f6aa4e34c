"""Running an operator's command by the shell (``tls.issuer.command``, ``gossip.rotate_command``): in its own
process group, so that at a timeout or when the sidecar stops, the shell and everything it started are killed."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from dataclasses import dataclass


class CommandTimedOut(Exception):
    """The command ran past its time and was killed, with its children."""


@dataclass(frozen=True, slots=True)
class Finished:
    returncode: int   # negative: killed by that signal
    stdout: bytes
    stderr: bytes     # empty when stderr was merged into stdout

    def how(self) -> str:
        """``exited with status 3`` or ``was killed by signal 9``, for messages."""
        code = self.returncode
        return f"was killed by signal {-code}" if code < 0 else f"exited with status {code}"


async def run_shell(command: str, env: dict[str, str], timeout: float, *, merge_stderr: bool = False) -> Finished:
    """Run ``command`` with ``env``; OSError when it cannot start, :class:`CommandTimedOut` after ``timeout``."""
    process = await asyncio.create_subprocess_shell(
        command, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT if merge_stderr else asyncio.subprocess.PIPE, env=env,
        start_new_session=True)
    try:
        out, err = await asyncio.wait_for(process.communicate(), timeout)
    except BaseException as e:   # the timeout, or cancelled because the sidecar stops
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(process.pid, signal.SIGKILL)   # start_new_session made the group
        with contextlib.suppress(Exception):
            await process.wait()
        if isinstance(e, TimeoutError):
            raise CommandTimedOut(f"did not finish within {timeout:g}s and was killed") from None
        raise
    assert process.returncode is not None
    return Finished(process.returncode, out or b"", err or b"")
