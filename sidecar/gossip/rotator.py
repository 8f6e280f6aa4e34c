"""The asyncio driver of automatic gossip key rotation around a :class:`KeyRotationCore`.

It ticks the core at every epoch boundary, whenever membership changes and at least once a second; carries
out what the core says on the node's keyring (logging fingerprints only, never keys); runs ``rotate_command``
when keys are fetched rather than derived; and advertises the keys held in the node's gossip metadata, so
every member's view of the others converges as fast as an alive message spreads.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Callable
from typing import Any

from sidecar.clock import SYSTEM_CLOCK, Clock
from sidecar.config.model import Config
from sidecar.gossip.errors import GossipError, GossipMessageTooLarge, KeyringError
from sidecar.gossip.keyring import decode_key, fingerprint, key_text
from sidecar.gossip.node import GossipNode
from sidecar.gossip.outputs import (
    Event,
    MemberAlive,
    MemberDead,
    MemberJoined,
    MemberLeft,
    MemberSuspect,
    MemberUpdated,
    SyncCompleted,
)
from sidecar.gossip.rotation import (
    Command,
    Fetch,
    Install,
    KeyRotationCore,
    Peer,
    Phase,
    Remove,
    Use,
    decode_report,
    derive_key,
    encode_report,
    epoch_of,
    with_report,
)
from sidecar.log import fields
from sidecar.shell import CommandTimedOut, run_shell

log = logging.getLogger("sidecar.gossip.rotation")

COMMAND_TIMEOUT = 30.0   # seconds for rotate_command (a vault read); it is killed after
MAX_TICK = 1.0           # the core is ticked at least this often (peers' reports arrive between ticks)
PREPARE_TIMEOUT = 10.0   # at start, how long fetching the epoch's keys may hold up joining
STALL_WARNING = 300.0    # a phase that should take a few gossip rounds is logged as held up after this
_STEPS = 8               # commands applied per tick at most: install → use → remove is three
_WAKE_ON = (MemberJoined, MemberUpdated, MemberAlive, MemberSuspect, MemberDead, MemberLeft, SyncCompleted)


class KeyFetchFailed(GossipError):
    """rotate_command did not print a key: it failed, timed out, or printed something that is not one."""


async def run_key_command(command: str, epoch: int, cluster: str, every: float,
                          timeout: float = COMMAND_TIMEOUT) -> bytes:
    """Run ``command`` (by the shell) for ``epoch`` and return the key it prints; never logs its output."""
    env = {**os.environ, "SIDECAR_GOSSIP_EPOCH": str(epoch), "SIDECAR_GOSSIP_CLUSTER": cluster,
           "SIDECAR_GOSSIP_ROTATE_EVERY": f"{every:g}", "SIDECAR_GOSSIP_EPOCH_START": f"{epoch * every:.0f}"}
    try:
        done = await run_shell(command, env, timeout)
    except OSError as e:
        raise KeyFetchFailed(f"rotate_command could not start: {e.strerror or e}") from None
    except CommandTimedOut:
        raise KeyFetchFailed(f"rotate_command did not finish within {timeout:g}s") from None
    if done.returncode != 0:
        last = done.stderr.decode(errors="replace").strip().splitlines()[-1:] or [""]
        raise KeyFetchFailed(f"rotate_command {done.how()}: {last[0][:200]}")
    out = done.stdout
    lines = out.decode(errors="replace").split()
    if len(lines) != 1:
        raise KeyFetchFailed(f"rotate_command must print one base64 key (got {len(lines)} words)")
    try:
        return decode_key(lines[0])
    except KeyringError as e:
        raise KeyFetchFailed(f"rotate_command printed an unusable key: {e}") from None


class KeyRotator:
    """Rotates one node's gossip keys; ``run()`` until cancelled. ``prepare()`` once before the node starts."""

    def __init__(self, gossip: GossipNode, core: KeyRotationCore, *, cluster: str, command: str | None,
                    base_meta: Callable[[], bytes], ready: Callable[[], bool], clock: Clock = SYSTEM_CLOCK,
                    command_timeout: float = COMMAND_TIMEOUT) -> None:
        self.gossip = gossip
        self.core = core
        self.cluster = cluster
        self.command = command
        self.command_timeout = command_timeout
        self._base_meta = base_meta
        self._ready = ready
        self._clock = clock
        self.counters = {"key_rotations": 0, "keys_installed": 0, "keys_removed": 0, "key_fetch_failures": 0}
        self.last_rotated_ms: int | None = None
        self._wake = asyncio.Event()
        self._fetches: set[asyncio.Task[None]] = set()
        self._advertised: list[str] | None = None
        self._phase: Phase | None = None
        self._warned_epoch: int | None = None
        self._phase_since = clock.wall()
        gossip.counter_sources.append(lambda: dict(self.counters))
        gossip.subscribe(self._on_event)

    @classmethod
    def from_config(cls, config: Config, gossip: GossipNode, *, base_meta: Callable[[], bytes],
                    ready: Callable[[], bool], clock: Clock = SYSTEM_CLOCK) -> KeyRotator | None:
        """The rotator ``gossip.rotate_every`` asks for, or None when rotation is off."""
        g = config.gossip
        if g.rotate_every is None or not g.encrypt_keys:
            return None
        configured = [decode_key(k) for k in g.encrypt_keys]
        root, cluster = configured[0], config.node.cluster
        derive = None if g.rotate_command else (lambda epoch: derive_key(root, cluster, epoch))
        core = KeyRotationCore(float(g.rotate_every), configured, derive=derive)
        return cls(gossip, core, cluster=cluster, command=g.rotate_command, base_meta=base_meta, ready=ready,
                   clock=clock)

    # ------------------------------------------------------------------------------------ lifecycle

    def meta(self) -> bytes:
        """The node's metadata: the base (inbound port) and the fingerprints of the keys held."""
        return with_report(self._base_meta(), self._report())

    async def prepare(self, timeout: float = PREPARE_TIMEOUT) -> None:
        """Obtain and install the previous and current epochs' keys, so the node reads the cluster at once."""
        deadline = self._clock.monotonic() + timeout
        self.step()
        while self._fetches and self._clock.monotonic() < deadline:
            await asyncio.wait(set(self._fetches), timeout=max(0.0, deadline - self._clock.monotonic()))
            self.step()

    async def run(self) -> None:
        try:
            while True:
                try:
                    self.step()
                except Exception:  # a bug here must not end rotation for good, nor the process
                    log.exception("gossip key rotation step failed")
                now = self._clock.wall()
                delay = min(MAX_TICK, max(0.0, self.core.next_boundary(now) - now) + 0.005)
                self._wake.clear()
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(delay):
                        await self._wake.wait()
        finally:
            for task in self._fetches:
                task.cancel()

    def wake(self) -> None:
        """Tick soon (after a manual keyring change)."""
        self._wake.set()

    # ----------------------------------------------------------------------------------------- a tick

    def step(self) -> None:
        for _ in range(_STEPS):
            now = self._clock.wall()
            commands = self.core.on_tick(now, self._ring(), self._peers(), self._ready())
            for command in commands:
                self._apply(command, now)
            if not any(not isinstance(c, Fetch) for c in commands):
                break
        self._observe(self._clock.wall())
        self._advertise()

    def _apply(self, command: Command, now: float) -> None:
        fp = fingerprint(command.key) if not isinstance(command, Fetch) else ""
        try:
            if isinstance(command, Fetch):
                self._start_fetch(command.epoch)
            elif isinstance(command, Install):
                self.gossip.install_key(key_text(command.key))
                self.counters["keys_installed"] += 1
                log.info("gossip key installed", extra=fields(epoch=command.epoch, key=fp))
            elif isinstance(command, Use):
                self.gossip.use_key(key_text(command.key))
                self.counters["key_rotations"] += 1
                self.last_rotated_ms = int(now * 1000)
                log.info("gossip key now primary", extra=fields(epoch=command.epoch, key=fp,
                                                                previous=fingerprint(command.previous),
                                                                members=command.members))
            elif isinstance(command, Remove):
                self.gossip.remove_key(key_text(command.key))
                self.counters["keys_removed"] += 1
                log.info("gossip key removed", extra=fields(epoch=command.epoch, key=fp, reason=command.reason))
        except KeyringError as e:  # a manual /keys change raced us; the next tick sees the keyring as it is
            log.warning("gossip key rotation step refused", extra=fields(step=type(command).__name__.lower(),
                                                                         key=fp, error=str(e)))

    def _observe(self, now: float) -> None:
        status = self.core.status
        if status.phase != self._phase:
            log.debug("gossip key rotation", extra=fields(phase=status.phase.value, epoch=status.epoch,
                                                          target=status.target or "-"))
            self._phase, self._phase_since = status.phase, now
        stalled = status.phase in (Phase.WAITING_FOR_HOLDERS, Phase.WAITING_FOR_SWITCH, Phase.FETCHING)
        held_up = now - self._phase_since > min(self.core.every / 2, STALL_WARNING)
        if stalled and held_up and self._warned_epoch != status.epoch:
            self._warned_epoch = status.epoch
            log.warning("gossip key rotation is held up", extra=fields(
                phase=status.phase.value, epoch=status.epoch, waiting_for=",".join(status.waiting_for) or "-",
                error=self.core.fetch_error or "-"))

    def _advertise(self) -> None:
        report = self._report()
        if report == self._advertised:
            return
        self._advertised = report
        try:
            self.gossip.set_meta(with_report(self._base_meta(), report))
        except GossipMessageTooLarge:
            # other metadata left too little room: the primary and the newest keys still tell enough
            log.warning("gossip metadata is too large for every key fingerprint; advertising 3",
                        extra=fields(keys=len(report)))
            self.gossip.set_meta(with_report(self._base_meta(), report[:3]))

    # ------------------------------------------------------------------------------------ fetching

    def _start_fetch(self, epoch: int) -> None:
        task = asyncio.create_task(self._fetch(epoch), name=f"gossip-key-fetch-{epoch}")
        self._fetches.add(task)
        task.add_done_callback(self._fetches.discard)

    async def _fetch(self, epoch: int) -> None:
        assert self.command is not None
        try:
            key = await run_key_command(self.command, epoch, self.cluster, self.core.every, self.command_timeout)
        except KeyFetchFailed as e:
            self.counters["key_fetch_failures"] += 1
            self.core.key_failed(epoch, self._clock.wall(), str(e))
            log.warning("gossip key fetch failed", extra=fields(epoch=epoch, error=str(e)))
        else:
            self.core.key_ready(epoch, key)
            log.info("gossip key fetched", extra=fields(epoch=epoch, key=fingerprint(key)))
        self._wake.set()

    # ----------------------------------------------------------------------------------- what is seen

    def _ring(self) -> list[bytes]:
        return [decode_key(k) for k in self.gossip.list_keys()]

    def _peers(self) -> list[Peer]:
        return [Peer(m.name, m.state.value in ("alive", "suspect"), decode_report(m.meta))
                for m in self.gossip.members() if m.name != self.gossip.name]

    def _report(self) -> list[str]:
        ring = self._ring()
        epochs = {k: self.core.epoch_of_key(k) for k in ring}
        newest_first = sorted((k for k in ring if epochs[k] is not None), key=lambda k: epochs[k] or 0, reverse=True)
        return encode_report(ring, newest_first)

    def _on_event(self, event: Event) -> None:
        if isinstance(event, _WAKE_ON):
            self._wake.set()

    # -------------------------------------------------------------------------------------- status

    def status(self) -> dict[str, Any]:
        """For ``GET /keys``: the phase, the epoch's key by fingerprint, who holds the rotation up, and what
        every member reports (null: a member that reports nothing)."""
        now = self._clock.wall()
        s = self.core.status
        return {
            "every": f"{self.core.every:g}s", "source": "command" if self.command else "derived",
            "epoch": epoch_of(now, self.core.every), "nextEpochAt": int(self.core.next_boundary(now) * 1000),
            "phase": s.phase.value, "target": s.target, "targetEpoch": s.target_epoch,
            "waitingFor": list(s.waiting_for), "rotations": self.counters["key_rotations"],
            "lastRotatedAt": self.last_rotated_ms, "fetchError": self.core.fetch_error,
            "members": {p.name: (list(p.keys) if p.keys is not None else None)
                        for p in sorted(self._peers(), key=lambda p: p.name) if p.live},
        }
