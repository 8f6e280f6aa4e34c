"""The asyncio driver of one gossip member: sockets and time around a :class:`GossipCore`.

It only feeds the core (packets, TCP frames, ticks at the core's next deadline) and carries out what the
core returns: UDP sends, TCP exchanges, and events handed to subscribers and the ``events`` queue.

Joining resolves every name to all its A/AAAA records (a Kubernetes headless Service), push-pulls with
each address, and retries with exponential back-off until one exchange succeeds.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import random
import socket
from collections.abc import Callable, Sequence
from typing import Any

from sidecar.clock import SYSTEM_CLOCK, Clock
from sidecar.config.model import Config, GossipTuning
from sidecar.config.values import HostPort
from sidecar.gossip.core import GossipCore
from sidecar.gossip.errors import KeyringError
from sidecar.gossip.keyring import Keyring, key_text
from sidecar.gossip.outputs import Event, OpenStream, Output, SendUdp, StreamPurpose, SyncCompleted
from sidecar.gossip.reconnect import Reconnects
from sidecar.gossip.state import Address, MemberView
from sidecar.gossip.streamgate import MAX_ACK_FRAME, MAX_FRAME, StreamGate, StreamLimits, frame_limit
from sidecar.gossip.transport import UdpEndpoint, exchange, open_listeners

log = logging.getLogger(__name__)

EventCallback = Callable[[Event], None]

JOIN_BACKOFF_BASE = 1.0  # seconds before the first retry of a failed join
JOIN_BACKOFF_MAX = 30.0  # retries settle at one per push-pull interval of the LAN profile


class GossipNode:
    """One sidecar's gossip member.

    ``local_state`` is called for every push-pull (on join and every push-pull interval) and must return
    the user state to send; the partner's arrives as a ``RemoteState`` event. Events (membership changes,
    ``UserMessage``, ``RemoteState``, ``SyncCompleted``) go to every subscriber, synchronously, and to the
    ``events`` queue (the oldest are dropped when nobody drains it).
    """

    def __init__(
        self,
        name: str,
        tuning: GossipTuning,
        listen: HostPort,
        *,
        advertise: HostPort | None = None,
        cluster: str = "default",
        keys: Sequence[str] = (),
        meta: bytes = b"",
        local_state: Callable[[], bytes] | None = None,
        clock: Clock = SYSTEM_CLOCK,
        rng: random.Random | None = None,
        events_max: int = 10_000,
        reconnect_interval: float | None = None,
        reconnect_timeout: float = 86400.0,
        stream_limits: StreamLimits | None = None,
    ) -> None:
        self.name = name
        self.tuning = tuning
        self.listen = listen
        self.cluster = cluster
        self._advertise = advertise
        self._keyring = Keyring(list(keys)) if keys else None
        self._meta = meta
        self._local_state = local_state
        self._clock = clock
        self._rng = rng if rng is not None else random.Random()
        self.events: asyncio.Queue[Event] = asyncio.Queue(maxsize=events_max)
        self.events_dropped = 0
        self._subscribers: list[EventCallback] = []
        # more counters for ``counters()`` (and so /metrics and /gossip), e.g. the key rotation's
        self.counter_sources: list[Callable[[], dict[str, int]]] = []
        self._core: GossipCore | None = None
        self._udp: UdpEndpoint | None = None
        self._server: asyncio.Server | None = None
        self._runner: asyncio.Task[None] | None = None
        self._joiner: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[list[Output]]] = set()
        self._wake = asyncio.Event()
        self._joined = asyncio.Event()
        self.bound: HostPort | None = None
        self.address: HostPort | None = None
        # failed members are called back (a partition outlasting dead_reap_time still heals); by default one
        # attempt per push-pull interval, for a day after the failure (Serf's reconnect_timeout)
        interval = reconnect_interval if reconnect_interval is not None else float(tuning.push_pull_interval)
        self.reconnects = Reconnects(interval, reconnect_timeout, self._rng)
        self._join_addresses: list[HostPort] = []
        self._reconnector: asyncio.Task[None] | None = None
        self.streams = StreamGate(stream_limits)
        self._stuck_logged = False

    @classmethod
    def from_config(cls, config: Config, *, meta: bytes = b"", local_state: Callable[[], bytes] | None = None,
                    clock: Clock = SYSTEM_CLOCK) -> GossipNode:
        g = config.gossip
        return cls(config.node.name, g.tuning(), g.listen, advertise=g.advertise, cluster=config.node.cluster,
                   keys=g.encrypt_keys, meta=meta, local_state=local_state, clock=clock,
                   reconnect_interval=float(g.reconnect_interval) if g.reconnect_interval is not None else None,
                   reconnect_timeout=float(g.reconnect_timeout))

    # ------------------------------------------------------------------------------------- lifecycle

    async def start(self) -> HostPort:
        """Bind UDP and TCP on ``listen`` (the same port for both) and start the protocol; returns the bound address."""
        udp, server = await open_listeners(self.listen.host, self.listen.port, self._on_datagram,
                                           self._on_stream, self.tuning.tcp_timeout, self.streams,
                                           self._frame_limit)
        self._udp, self._server = udp, server
        bound_port = udp.bound[1]
        self.bound = HostPort(self.listen.host, bound_port)
        self.address = self._advertised(bound_port)
        self._core = GossipCore(
            self.name, (self.address.host, self.address.port), self.tuning, now=self._clock.monotonic(),
            cluster=self.cluster, keyring=self._keyring, meta=self._meta, local_state=self._local_state,
            rng=self._rng, user_version_start=int(self._clock.wall() * 1_000_000),
            wall_offset=self._clock.wall() - self._clock.monotonic())
        self._runner = asyncio.create_task(self._run(), name=f"gossip-{self.name}")
        self._reconnector = asyncio.create_task(self._reconnect_forever(), name=f"gossip-reconnect-{self.name}")
        log.info("gossip %s listening on %s, advertising %s", self.name, self.bound, self.address)
        warning = self.exposure_warning()
        if warning is not None:
            log.warning("%s", warning)
        return self.bound

    def exposure_warning(self) -> str | None:
        """What to tell the operator when gossip is plaintext beyond loopback, or None."""
        return exposure_warning(self.listen.host, bool(self._keyring is not None))

    @property
    def problem(self) -> str | None:
        """Why this member cannot keep its place in the cluster (it cannot refute), or None."""
        return self._core.stuck if self._core is not None else None

    async def join(self, addresses: Sequence[HostPort]) -> int:
        """One attempt: push-pull with every address of every name; returns how many succeeded.

        Joining only ourselves (the first member of a cluster) counts as joined with 0 exchanges.
        """
        core = self._require_core()
        resolved = await resolve_all(addresses)
        others = [a for a in resolved if a != core.address and not self._is_self(a)]
        if not others:
            if addresses:
                self._joined.set()
            return 0
        outputs = core.join(others, self._clock.monotonic())
        tasks = self._carry_out(outputs)
        ok = 0
        for result in await asyncio.gather(*tasks, return_exceptions=True):
            if isinstance(result, BaseException):
                continue
            ok += sum(1 for o in result if isinstance(o, SyncCompleted) and o.join and o.ok)
        if ok:
            self._joined.set()
        return ok

    def start_joining(self, addresses: Sequence[HostPort]) -> None:
        """Join in the background, retrying with exponential back-off until one exchange succeeds."""
        self._join_addresses = list(addresses)
        if not addresses:
            self._joined.set()
            return
        if self._joiner is None or self._joiner.done():
            self._joiner = asyncio.create_task(self._join_forever(list(addresses)), name=f"gossip-join-{self.name}")

    @property
    def joined(self) -> bool:
        return self._joined.is_set()

    async def wait_joined(self, timeout: float | None) -> bool:
        """True once joined; False when ``timeout`` (seconds; None: no limit) passed first."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._joined.wait(), timeout)
        return self._joined.is_set()

    async def leave(self, timeout: float) -> bool:
        """Tell the cluster we leave and wait (at most ``timeout``) until the message went out its full count."""
        core = self._require_core()
        self._carry_out(core.leave(self._clock.monotonic()))
        self._wake.set()
        deadline = self._clock.monotonic() + timeout
        for _ in range(int(timeout / 0.01) + 2):
            if core.leave_done or self._clock.monotonic() >= deadline:
                break
            await asyncio.sleep(0.01)
        return core.leave_done

    async def stop(self, timeout: float = 2.0) -> None:
        """Close the sockets, then cancel what is still running (waiting at most ``timeout``)."""
        if self._server is not None:
            self._server.close()
        if self._udp is not None:
            self._udp.close()
        tasks: list[asyncio.Task[Any]] = [t for t in (self._joiner, self._runner, self._reconnector)
                                          if t is not None]
        tasks.extend(self._tasks)
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=timeout)
        if self._server is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._server.wait_closed(), timeout)
        self._runner = self._joiner = self._reconnector = None

    # ------------------------------------------------------------------------------------ what it knows

    def members(self) -> list[MemberView]:
        return self._core.members() if self._core is not None else []

    def member(self, name: str) -> MemberView | None:
        return self._core.member(name) if self._core is not None else None

    @property
    def incarnation(self) -> int:
        return self._require_core().incarnation

    @property
    def health_score(self) -> int:
        return self._require_core().health_score

    def counters(self) -> dict[str, int]:
        """Everything counted so far: packets and bytes in/out, probes, suspicions, refusals by reason..."""
        out = self._core.counters.snapshot() if self._core is not None else {}
        out["events_dropped"] = self.events_dropped
        out["udp_send_errors"] = self._udp.send_errors if self._udp is not None else 0
        out["members_alive"] = sum(1 for m in self.members() if m.state == "alive")
        out["health_score"] = self._core.health_score if self._core is not None else 0
        out["unconfirmed_members"] = self._core.unconfirmed_members if self._core is not None else 0
        out["user_seen_entries"] = self._core.user_seen_entries if self._core is not None else 0
        out["user_seen_evicted"] = self._core.user_seen_evicted if self._core is not None else 0
        out["plaintext_exposed"] = int(self.exposure_warning() is not None)
        out["cannot_refute"] = int(self.problem is not None)
        out.update(self.streams.snapshot())
        for source in self.counter_sources:
            out.update(source())
        return out

    def subscribe(self, callback: EventCallback) -> Callable[[], None]:
        """Call ``callback(event)`` for every event from now on; returns the unsubscribe function."""
        self._subscribers.append(callback)

        def unsubscribe() -> None:
            with contextlib.suppress(ValueError):
                self._subscribers.remove(callback)

        return unsubscribe

    # --------------------------------------------------------------------------------- what it says

    def broadcast_user(self, key: str, data: bytes) -> None:
        """Gossip ``data`` to all members (a ``UserMessage`` there); a newer one with the same key replaces it."""
        self._require_core().broadcast_user(key, data)
        self._wake.set()

    def set_meta(self, meta: bytes) -> None:
        """Replace our metadata (at most 512 bytes) and gossip it."""
        self._meta = meta
        if self._core is not None:
            self._core.set_meta(meta)
            self._carry_out([])
            self._wake.set()

    # ------------------------------------------------------------------------------------------ keys

    def list_keys(self) -> list[str]:
        """The installed keys, base64, the primary (encrypting) one first."""
        return [key_text(k) for k in self._ring().keys()]  # noqa: SIM118

    def install_key(self, key: str) -> None:
        self._ring().install(key)

    def use_key(self, key: str) -> None:
        self._ring().use(key)

    def remove_key(self, key: str) -> None:
        self._ring().remove(key)

    def _ring(self) -> Keyring:
        if self._keyring is None:
            raise KeyringError("gossip encryption is not enabled (gossip.encrypt_keys is empty)")
        return self._keyring

    # -------------------------------------------------------------------------------------- plumbing

    def _frame_limit(self) -> int:
        return frame_limit(self._core.known_members if self._core is not None else 1)

    def _log_stuck(self, reason: str) -> None:
        if not self._stuck_logged:
            self._stuck_logged = True
            log.error("gossip %s %s; peers will hold this member dead; /ready answers 503", self.name, reason)

    def _require_core(self) -> GossipCore:
        if self._core is None:
            raise RuntimeError("the gossip node is not started")
        return self._core

    def _advertised(self, bound_port: int) -> HostPort:
        if self._advertise is not None:
            return HostPort(self._advertise.host, self._advertise.port or bound_port)
        host = self.listen.host
        if host in ("0.0.0.0", "::", ""):
            host = default_route_host(ipv6=host == "::")
        return HostPort(host, bound_port)

    def _is_self(self, address: Address) -> bool:
        return self.bound is not None and address[1] == self.bound.port and _is_local_ip(address[0])

    async def _run(self) -> None:
        core = self._require_core()
        clock = self._clock
        while True:
            self._carry_out(core.on_tick(clock.monotonic()))
            delay = core.next_deadline() - clock.monotonic()
            self._wake.clear()
            # asyncio.timeout, not wait_for: on 3.11 wait_for can swallow a cancel that races a wake-up,
            # and a loop woken often would then never stop
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(min(max(delay, 0.0), 1.0)):
                    await self._wake.wait()

    def _on_datagram(self, data: bytes, src: Address) -> None:
        core = self._core
        if core is None:
            return
        self._carry_out(core.on_packet(src, data, self._clock.monotonic()))
        self._wake.set()

    async def _on_stream(self, src: Address, data: bytes) -> bytes | None:
        core = self._require_core()
        reply, outputs = core.on_stream(src, data, self._clock.monotonic())
        self._carry_out(outputs)
        self._wake.set()
        return reply

    def _carry_out(self, outputs: list[Output]) -> list[asyncio.Task[list[Output]]]:
        started: list[asyncio.Task[list[Output]]] = []
        if self._core is not None and self._core.stuck is not None:
            self._log_stuck(self._core.stuck)
        for out in outputs:
            if isinstance(out, SendUdp):
                if self._udp is not None:
                    self._udp.sendto(out.data, out.address)
            elif isinstance(out, OpenStream):
                task = asyncio.create_task(self._exchange(out))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)
                started.append(task)
            else:
                self._emit(out)
        return started

    async def _exchange(self, cmd: OpenStream) -> list[Output]:
        core = self._require_core()
        limit = MAX_ACK_FRAME if cmd.purpose is StreamPurpose.PING else MAX_FRAME
        reply = await exchange(cmd.address, cmd.data, cmd.deadline - self._clock.monotonic(), limit)
        outputs = core.on_stream_reply(cmd.token, reply, self._clock.monotonic())
        self._carry_out(outputs)
        self._wake.set()
        return outputs

    def _emit(self, event: Event) -> None:
        self.reconnects.on_event(event, self._clock.monotonic())
        for callback in list(self._subscribers):
            try:
                callback(event)
            except Exception:  # a subscriber's bug must not stop the protocol
                log.exception("gossip event subscriber failed on %s", type(event).__name__)
        if self.events.full():
            with contextlib.suppress(asyncio.QueueEmpty):
                self.events.get_nowait()
            self.events_dropped += 1
        self.events.put_nowait(event)

    async def _join_forever(self, addresses: list[HostPort]) -> None:
        delay = JOIN_BACKOFF_BASE
        while not self._joined.is_set():
            try:
                joined = await self.join(addresses)
            except OSError as exc:
                log.warning("gossip join failed: %s", exc)
                joined = 0
            if joined or self._joined.is_set():
                log.info("gossip %s joined through %d member(s)", self.name, joined)
                return
            log.info("gossip %s could not join %s yet; retrying in %.1fs", self.name,
                     ", ".join(str(a) for a in addresses), delay)
            await self._clock.sleep(delay * (0.5 + self._rng.random()))
            delay = min(delay * 2, JOIN_BACKOFF_MAX)


    async def _reconnect_forever(self) -> None:
        """Every reconnect interval: a push-pull join to one failed member; when alone, to the join addresses."""
        while True:
            await self._clock.sleep(self.reconnects.interval)
            address = self.reconnects.due(self._clock.monotonic())
            alone = not any(m.state == "alive" and m.name != self.name for m in self.members())
            targets = [HostPort(*address)] if address is not None else []
            if alone and self._join_addresses and self._joined.is_set():
                targets.extend(self._join_addresses)
            if not targets:
                continue
            try:
                merged = await self.join(targets)
            except OSError as exc:
                merged = 0
                log.debug("gossip reconnect to %s failed: %s", ", ".join(map(str, targets)), exc)
            if merged:
                log.info("gossip %s reconnected through %s", self.name, ", ".join(map(str, targets)))


async def resolve_all(addresses: Sequence[HostPort]) -> list[Address]:
    """Every A/AAAA record of every name (IP literals as they are), without duplicates, in order."""
    loop = asyncio.get_running_loop()
    out: list[Address] = []
    for hp in addresses:
        try:
            ipaddress.ip_address(hp.host)
        except ValueError:
            try:
                infos = await loop.getaddrinfo(hp.host, hp.port, type=socket.SOCK_DGRAM)
            except OSError as exc:
                log.warning("gossip join: cannot resolve %s: %s", hp.host, exc)
                continue
            candidates = [(str(info[4][0]), hp.port) for info in infos]
        else:
            candidates = [(hp.host, hp.port)]
        for candidate in candidates:
            if candidate not in out:
                out.append(candidate)
    return out


def default_route_host(ipv6: bool = False) -> str:
    """The address of the interface holding the default route; loopback when there is none.

    Connecting a UDP socket sends nothing; it only asks the kernel which source address it would use.
    """
    family, probe, fallback = ((socket.AF_INET6, "2001:db8::1", "::1") if ipv6
                               else (socket.AF_INET, "192.0.2.1", "127.0.0.1"))
    try:
        with socket.socket(family, socket.SOCK_DGRAM) as s:
            s.connect((probe, 9))
            return str(s.getsockname()[0])
    except OSError:
        return fallback


def exposure_warning(listen_host: str, encrypted: bool) -> str | None:
    """The warning for gossip in plaintext on a non-loopback address, or None."""
    if encrypted or _is_loopback_host(listen_host):
        return None
    return (f"gossip listens on {listen_host} WITHOUT ENCRYPTION: anyone who can reach it can join the cluster, "
            "add, suspect or declare dead any member, and read and change the service catalog; "
            "set gossip.encrypt_keys (sidecar keys generate) or listen on loopback only")


def _is_loopback_host(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _is_local_ip(host: str) -> bool:
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return False
    return ip.is_loopback or ip.is_unspecified
