"""Config transactions: ``POST /reload``, SIGHUP, ``POST /config/rollback`` and the canary, as one driver.

    reloader = Reloader(process, clock)          # records the starting configuration as version 1
    await reloader.reload()                      # re-read the files: validate, diff, apply all or nothing, record
    await reloader.reload(dry_run=True, text=yaml_text)   # the diff against a given document, nothing applied
    await reloader.rollback(3)                   # the configuration of version 3, applied the same way
    await reloader.close()                       # stops a canary watch

Theory of operation
-------------------
A reload is a transaction. The new configuration is loaded and validated (every problem listed, as
``sidecar validate`` prints them), compared with the running one (:mod:`sidecar.config.diff`), and then either
applied as a whole or refused as a whole: one change that needs a restart (a listener address, the node name,
gossip or TLS settings...) refuses the reload with the reason for each such change, and nothing is applied.
Envoy refuses a listener update that changes the address in the same way; a half-applied file would leave the
running process matching neither the old file nor the new one. The live parts are applied by the process
(:meth:`Reloadable.apply_config`: :mod:`sidecar.ops.apply`), which opens new listeners first so that the one step
that can fail (a port in use) fails before anything changed.

Applied reloads become versions (:mod:`.reload_history`). With a canary window (``reload.canary_window`` or
``?canary=30s``) the error ratio after the reload is compared, at intervals, with the ratio over the same length
of time before it (:mod:`.reload_canary`); past ``reload.canary_max_error_rate`` above it, the previous
configuration is applied again and recorded as a version of source ``canary``. The files on disk are not
touched: the next reload reads them again. Reloads, rollbacks and the canary's rollback hold one lock, so they
never interleave; a reload during a canary window ends the watch (``superseded``).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, Protocol

from sidecar.clock import Clock
from sidecar.config.diff import Change, Plan, diff
from sidecar.config.model import Config
from sidecar.config.values import Duration
from sidecar.errors import ConfigError, FailedPrecondition, InvalidArgument, NotFound, SidecarError
from sidecar.log import fields
from sidecar.ops.reload_canary import CanaryVerdict, Counts, check_interval, judge
from sidecar.ops.reload_history import CanaryState, History, Version

log = logging.getLogger("sidecar.reload")


class Reloadable(Protocol):
    """What the reloader needs from the running sidecar (``sidecar.ops.apply.ConfigApplier``)."""

    config: Config

    def read_config(self, text: str | None = None) -> Config:
        """The configuration files again (``text``: one document instead, never expanded against the process's
        environment: ``sidecar.config.load.load_sent``); raises ConfigError."""

    async def apply_config(self, new: Config, plan: Plan) -> tuple[str, ...]:
        """Apply the plan's live parts, all or none: raise a SidecarError (nothing changed) or return the parts."""

    def request_counts(self) -> Counts:
        """(requests, errors) since start, as telemetry counts them."""

    def recent_counts(self, seconds: float) -> Counts:
        """(requests, errors) of the requests that started in the last ``seconds``."""


def invalid(error: ConfigError) -> InvalidArgument:
    problems = error.problems
    count = len(problems)
    return InvalidArgument(f"the new configuration is invalid ({count} problem{'s' if count != 1 else ''}); the "
                           f"running configuration is unchanged: {'; '.join(problems)}", {"problems": problems})


class Reloader:
    def __init__(self, process: Reloadable, clock: Clock) -> None:
        self.process = process
        self.clock = clock
        self.history = History(process.config.reload.history)
        self.history.record("start", process.config, (), self._now_ms())
        self._lock = asyncio.Lock()
        self._watch: asyncio.Task[None] | None = None

    def _now_ms(self) -> int:
        return int(self.clock.wall() * 1000)

    # ------------------------------------------------------------------------------------ requests

    async def reload(self, *, dry_run: bool = False, text: str | None = None, canary: float | None = None,
                     source: str = "reload") -> dict[str, Any]:
        """Re-read the files (or ``text``, with ``dry_run`` only) and apply them. ``canary``: seconds to watch
        (0: none); None takes ``reload.canary_window`` of the new configuration."""
        if text is not None and not dry_run:
            raise InvalidArgument("a body is only read with dry_run=true: a reload reads the configuration files")
        async with self._lock:
            try:
                new = self.process.read_config(text)
            except ConfigError as e:
                if not dry_run:
                    for problem in e.problems:
                        log.warning("reload refused: the configuration is invalid",
                                    extra=fields(source=source, problem=problem))
                raise invalid(e) from None
            plan = Plan(diff(self.process.config, new))
            if dry_run:
                return self._dry_run(plan)
            window = float(new.reload.canary_window or 0.0) if canary is None else canary
            return await self._transaction(new, plan, source, None, window)

    async def rollback(self, number: int) -> dict[str, Any]:
        async with self._lock:
            version = self.history.get(number)
            if version is None:
                kept = self.history.numbers()
                raise NotFound(f"no version {number} in the history (kept: {', '.join(map(str, kept))}; "
                               f"reload.history is {self.history.limit})", {"version": number, "kept": kept})
            plan = Plan(diff(self.process.config, version.config))
            return await self._transaction(version.config, plan, "rollback", number, 0.0)

    def history_json(self) -> dict[str, Any]:
        return self.history.to_json()

    async def close(self) -> None:
        await self._end_watch("stopped")

    # ------------------------------------------------------------------------------------ the transaction

    def _dry_run(self, plan: Plan) -> dict[str, Any]:
        out: dict[str, Any] = {"dryRun": True, "changes": [c.to_json() for c in plan.changes],
                               "wouldApply": list(plan.parts), "refused": plan.refused}
        current = self.history.current
        out["version"] = None if current is None else current.number
        if plan.refused:
            out["reason"] = plan.refusal()
        return out

    async def _transaction(self, new: Config, plan: Plan, source: str, restores: int | None,
                           window: float) -> dict[str, Any]:
        """Under the lock: log the diff, refuse or apply as a whole, record the version, start the canary."""
        for change in plan.changes:
            log.info("config change", extra=fields(source=source, change=change.to_text(),
                                                   applies="live" if change.live else "needs restart"))
        if plan.refused:
            log.warning("reload refused: it needs a restart", extra=fields(
                source=source, paths=",".join(c.path for c in plan.restart)))
            raise FailedPrecondition(plan.refusal(), {"needsRestart": [c.to_json() for c in plan.restart],
                                                      "changes": [c.to_json() for c in plan.changes]})
        current = self.history.current
        if not plan.changes:
            log.info("configuration reloaded: no changes", extra=fields(source=source))
            return {"version": None if current is None else current.number, "source": source, "applied": [],
                    "changes": [], "canary": None}
        await self._end_watch("superseded")
        baseline = self.process.recent_counts(window) if window > 0 else Counts(0, 0)
        started = self.process.request_counts()
        previous = self.process.config
        try:
            applied = await self.process.apply_config(new, plan)
        except SidecarError as e:
            log.warning("reload failed; nothing changed", extra=fields(source=source, reason=e.message))
            raise
        version = self.history.record(source, new, plan.changes, self._now_ms(), applied, restores)
        self.history.resize(new.reload.history)
        if window > 0:
            version.canary = CanaryState(window, new.reload.canary_max_error_rate, baseline.as_tuple())
            prior = current.number if current is not None else None
            self._watch = asyncio.create_task(self._watch_canary(version, previous, prior, started),
                                              name=f"canary:{version.number}")
        log.info("configuration reloaded", extra=fields(version=version.number, source=source,
                                                        applied=",".join(applied) or "nothing",
                                                        changes=len(plan.changes),
                                                        canary=f"{window:g}s" if window > 0 else "off"))
        return {"version": version.number, "source": source, "applied": list(applied), "restores": restores,
                "changes": [c.to_json() for c in plan.changes],
                "canary": None if version.canary is None else version.canary.to_json()}

    # ------------------------------------------------------------------------------------ the canary

    async def _end_watch(self, state: str) -> None:
        task, self._watch = self._watch, None
        if task is None or task.done():
            return
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        current = self.history.current
        if current is not None and current.canary is not None and current.canary.state == "watching":
            current.canary.state = state
            log.info("canary ended before its window", extra=fields(version=current.number, state=state))

    async def _watch_canary(self, version: Version, previous: Config, prior: int | None, started: Counts) -> None:
        state = version.canary
        assert state is not None
        baseline = Counts(*state.baseline)
        end = self.clock.monotonic() + state.window
        interval = check_interval(state.window)
        while True:
            await self.clock.sleep(max(0.0, min(interval, end - self.clock.monotonic())))
            observed = self.process.request_counts() - started
            state.observed = observed.as_tuple()
            verdict, why = judge(baseline, observed, state.max_error_rate)
            if verdict is CanaryVerdict.ROLL_BACK:
                await self._canary_rollback(version, previous, prior, why)
                return
            if self.clock.monotonic() >= end:
                state.state, state.reason = "passed", why
                log.info("canary passed", extra=fields(version=version.number, verdict=why))
                return

    async def _canary_rollback(self, version: Version, previous: Config, prior: int | None, why: str) -> None:
        state = version.canary
        assert state is not None
        async with self._lock:
            if state.state != "watching" or self.history.current is not version:
                return
            self._watch = None   # this task: a reload waiting for the lock must not cancel it
            log.warning("canary failed: rolling back", extra=fields(version=version.number, verdict=why,
                                                                  restores=prior))
            try:
                await self._transaction(previous, Plan(diff(self.process.config, previous)), "canary", prior, 0.0)
            except SidecarError as e:
                state.state, state.reason = "rollback-failed", f"{why}; the rollback failed: {e.message}"
                log.error("canary rollback failed", extra=fields(version=version.number, reason=e.message))
                return
            state.state, state.reason = "rolled-back", why


def parse_canary(text: str | None) -> float | None:
    """``?canary=``: absent → None (the configuration decides), ``off`` or ``0`` → 0, else a duration."""
    if text is None:
        return None
    if text.strip().lower() in ("off", "false", "no", "0"):
        return 0.0
    try:
        seconds = float(Duration.from_text(text))
    except (TypeError, ValueError):
        raise InvalidArgument(f"canary must be a duration like 30s or 2m, or off (got {text!r})",
                              {"canary": text}) from None
    if seconds <= 0:
        raise InvalidArgument(f"canary must be greater than 0, or off (got {text!r})", {"canary": text})
    return seconds


__all__ = ["Change", "Reloadable", "Reloader", "invalid", "parse_canary"]
