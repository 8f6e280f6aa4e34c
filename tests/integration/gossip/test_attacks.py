"""Attacks on a real ``sidecar run`` process's gossip port, over loopback, by someone who is not a member
(no gossip key) or who holds the key; each is refused and the process keeps its place in the cluster.

Forged packets are built with the project's own encoder and envelope (sealed with the key when the
cluster has one), sent from their own loopback addresses (127.0.0.x), so that the legitimate members,
on 127.0.0.1, do not share the attacker's per-host budgets.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from sidecar.clock import SYSTEM_CLOCK
from sidecar.gossip.admission import UNCONFIRMED_FLOOR, UNCONFIRMED_PER_SOURCE
from sidecar.gossip.envelope import Envelope
from sidecar.gossip.incarnation import INCARNATION_MAX, incarnation_ceiling
from sidecar.gossip.keyring import Keyring
from sidecar.gossip.messages import Alive, Dead, Message, Suspect, UserMsg, compound_to_wire, to_wire
from sidecar.gossip.seen import USER_SEEN_FLOOR
from sidecar.gossip.streamgate import MAX_ACK_FRAME, StreamLimits
from sidecar.gossip.transport import exchange
from tests.harness import SidecarProcess, http, wait_for
from tests.integration.security.inproc import running

CLUSTER = "attacked"
KEY = "Z29zc2lwLWF0dGFjay10ZXN0LWtleS0wMTIzNDU2Nzg="  # a fixed test key, used nowhere else
MiB = 1024 * 1024


def hostport(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    return host.strip("[]"), int(port)


def gossip_address(process: SidecarProcess) -> tuple[str, int]:
    return hostport(process.listeners["gossip"])


def gossip_view(process: SidecarProcess) -> dict[str, Any]:
    response = http("GET", process.admin + "/gossip", timeout=5)
    assert response.status == 200, response
    return dict(response.json())


def counter(process: SidecarProcess, name: str) -> int:
    return int(gossip_view(process)["counters"][name])


def members(process: SidecarProcess) -> dict[str, dict[str, Any]]:
    return {m["name"]: m for m in http("GET", process.admin + "/members", timeout=5).json()}


def rss_bytes(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS in /proc/PID/status")


def config(keys: list[str], **gossip: Any) -> dict[str, Any]:
    return {"node": {"cluster": CLUSTER}, "gossip": {"encrypt_keys": keys, **gossip}}


class Forger:
    """UDP packets sealed as a member would seal them, sent from a loopback address of its own."""

    def __init__(self, keys: list[str], source: str = "127.0.0.9") -> None:
        self.envelope = Envelope(CLUSTER, Keyring(keys) if keys else None)
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind((source, 0))

    def send(self, to: tuple[str, int], *messages: Message) -> None:
        self.sock.sendto(self.envelope.seal(compound_to_wire([to_wire(m) for m in messages])), to)

    def send_many(self, target: SidecarProcess, messages: list[Message], per_packet: int = 30) -> None:
        """Compound packets of ``per_packet`` messages, 20 at a time, each batch received by ``target``
        before the next is sent (so no packet is lost to a full socket buffer)."""
        to = gossip_address(target)
        received = counter(target, "packets_in")
        for start in range(0, len(messages), 20 * per_packet):
            batch = messages[start:start + 20 * per_packet]
            for i in range(0, len(batch), per_packet):
                self.send(to, *batch[i:i + per_packet])
                received += 1
            wait_for(lambda n=received: counter(target, "packets_in") >= n, 30,  # type: ignore[misc]
                     what=f"{target.name} received the packets")

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def started() -> Iterator[list[SidecarProcess]]:
    processes: list[SidecarProcess] = []
    yield processes
    for p in processes:
        p.kill()


def pair(tmp: Path, keys: list[str], started: list[SidecarProcess]) -> tuple[SidecarProcess, SidecarProcess]:
    a = SidecarProcess(tmp, config(keys), name="node-a").start()
    started.append(a)
    b = SidecarProcess(tmp, config(keys, join=[f"127.0.0.1:{gossip_address(a)[1]}"]), name="node-b").start()
    started.append(b)
    for x, other in ((a, "node-b"), (b, "node-a")):
        wait_for(lambda x=x, other=other: members(x).get(other, {}).get("state") == "alive", 20,
                 what=f"{x.name} sees {other} alive")
    return a, b


# ------------------------------------------------------------------------------------------ incarnations


@pytest.mark.parametrize("keys", [[], [KEY]], ids=["no-key", "key-holder"])
def test_a_forged_accusation_at_the_top_incarnation_removes_nobody(tmp_path: Path, keys: list[str],
                                                                  started: list[SidecarProcess]) -> None:
    a, b = pair(tmp_path, keys, started)
    forger = Forger(keys)
    try:
        top = [Suspect(INCARNATION_MAX, "node-b", "node-a"), Dead(INCARNATION_MAX, "node-b", "node-a"),
               Alive(INCARNATION_MAX, "node-b", *gossip_address(b))]
        for target in (a, b):
            forger.send(gossip_address(target), *top)
        # then an accusation just under the ceiling: it is accepted, and refuted, so node-b's incarnation
        # passes it (it cannot once it has been pushed to the top)
        accused = incarnation_ceiling(time.time()) - 5
        for target in (a, b):
            forger.send(gossip_address(target), Suspect(accused, "node-b", "node-a"))

        def refuted() -> bool:
            view = members(a)["node-b"]
            return bool(view["state"] == "alive" and accused < view["incarnation"] < INCARNATION_MAX)

        wait_for(refuted, 20, what="node-a to see node-b alive, refuting the accusation")
    finally:
        forger.close()
    for target in (a, b):
        assert counter(target, "refused_incarnation") >= 3
    assert http("GET", b.admin + "/ready").status == 200
    assert "struct.error" not in b.log_text() and "Traceback" not in b.log_text()


# -------------------------------------------------------------------------------------------- TCP streams


def flood_stream(target: tuple[str, int], source: str, declared: int, send: int, hold: float) -> None:
    """Declare a frame of ``declared`` bytes and send up to ``send`` of them, then keep the connection ``hold``."""
    try:
        with socket.create_connection(target, timeout=5, source_address=(source, 0)) as sock:
            sock.sendall(struct.pack(">I", declared))
            chunk = b"\x5c" * (256 * 1024)
            sent = 0
            while sent < send:
                sock.sendall(chunk[: min(len(chunk), send - sent)])
                sent += len(chunk)
            deadline = time.monotonic() + hold
            sock.settimeout(0.2)
            while time.monotonic() < deadline:
                try:
                    if not sock.recv(1):
                        return
                except TimeoutError:
                    continue
    except OSError:
        return  # refused or cut off: the point


def test_huge_and_many_gossip_streams_cannot_exhaust_memory(tmp_path: Path, started: list[SidecarProcess]) -> None:
    # the lan profile: a frame may take 10s to arrive, as by default
    a = SidecarProcess(tmp_path, config([KEY], profile="lan"), name="node-a").start()
    started.append(a)
    assert a.proc is not None
    target = gossip_address(a)
    base = rss_bytes(a.proc.pid)
    peak = [base]
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            peak[0] = max(peak[0], rss_bytes(a.proc.pid))  # type: ignore[union-attr]
            time.sleep(0.02)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    # from other loopback hosts: 30 connections each declaring a 32 MiB frame and sending all of it but the
    # last byte, and 20 from one host declaring 1 MiB (under the frame limit of a small cluster) that send
    # most of it; all then stall
    attackers = [threading.Thread(target=flood_stream,
                                  args=(target, f"127.0.0.{2 + i % 3}", 32 * MiB, 32 * MiB - 1, 3.0))
                 for i in range(30)]
    attackers += [threading.Thread(target=flood_stream, args=(target, "127.0.0.5", MiB, MiB - 4096, 3.0))
                  for i in range(20)]
    for t in attackers:
        t.start()
    try:
        # meanwhile a real member joins through the attacked one, with a push-pull over TCP
        b = SidecarProcess(tmp_path, config([KEY], join=[f"127.0.0.1:{target[1]}"]), name="node-b").start()
        started.append(b)
        wait_for(lambda: members(a).get("node-b", {}).get("state") == "alive", 20, what="node-b joined node-a")
        for t in attackers:
            t.join(60)
        assert not any(t.is_alive() for t in attackers)
    finally:
        stop.set()
        sampler.join(5)
    grown = peak[0] - base
    print(f"RSS {base / MiB:.0f} MiB before, peak {peak[0] / MiB:.0f} MiB under the stream flood")
    assert grown < 120 * MiB, f"RSS grew by {grown / MiB:.0f} MiB under the stream flood"
    refused = gossip_view(a)["refused"]
    assert refused["stream_frame_size"] >= 30, refused
    assert refused["stream_count"] >= 20 - StreamLimits().max_streams_per_host, refused
    assert http("GET", a.admin + "/ready").status == 200


# ---------------------------------------------------------------------------------------- forged members


def test_forged_alive_floods_fill_no_more_than_the_unconfirmed_caps(tmp_path: Path,
                                                                   started: list[SidecarProcess]) -> None:
    a = SidecarProcess(tmp_path, config([]), name="node-a").start()
    started.append(a)
    target = gossip_address(a)

    def fakes() -> int:
        return sum(1 for name in members(a) if name.startswith("fake-"))

    one = Forger([], source="127.0.0.9")
    flood: list[Message] = [Alive(1, f"fake-{i}", "127.0.0.10", 20000 + i) for i in range(5000)]
    try:
        one.send_many(a, flood)
    finally:
        one.close()
    assert fakes() <= UNCONFIRMED_PER_SOURCE
    assert counter(a, "refused_member") >= len(flood) - UNCONFIRMED_PER_SOURCE
    # from many sockets: the total of unconfirmed members is capped too
    sources = [Forger([], source=f"127.0.1.{i + 1}") for i in range(12)]
    try:
        for n, forger in enumerate(sources):
            forger.send_many(a, [Alive(1, f"fake-{n}-{i}", "127.0.0.10", 30000 + i)
                                 for i in range(UNCONFIRMED_PER_SOURCE)])
    finally:
        for forger in sources:
            forger.close()
    assert fakes() <= UNCONFIRMED_FLOOR
    assert gossip_view(a)["counters"]["unconfirmed_members"] <= UNCONFIRMED_FLOOR
    # a real member still joins, and is confirmed by answering a probe
    b = SidecarProcess(tmp_path, config([], join=[f"127.0.0.1:{target[1]}"]), name="node-b").start()
    started.append(b)
    wait_for(lambda: members(a).get("node-b", {}).get("state") == "alive", 20, what="node-b joined node-a")


def test_user_messages_from_new_origins_keep_a_bounded_record(tmp_path: Path, started: list[SidecarProcess]) -> None:
    a = SidecarProcess(tmp_path, config([]), name="node-a").start()
    started.append(a)
    assert a.proc is not None
    forger = Forger([], source="127.0.0.11")
    sent = 100_000
    base = rss_bytes(a.proc.pid)
    try:
        forger.send_many(a, [UserMsg(f"origin-{i}", "k", 1, b"x" * 16) for i in range(sent)])
    finally:
        forger.close()
    grown = rss_bytes(a.proc.pid) - base
    print(f"RSS grew by {grown / MiB:.0f} MiB after {sent} user messages from new origins")
    assert grown < 25 * MiB
    counters = gossip_view(a)["counters"]
    assert counters["user_seen_entries"] <= USER_SEEN_FLOOR
    assert counters["user_seen_evicted"] >= sent - USER_SEEN_FLOOR


# ----------------------------------------------------------------------------------- cannot refute: /ready


class FarFutureClock:
    """The real clock, but its wall time is past 2156: the incarnation ceiling is the wire's maximum."""

    def monotonic(self) -> float:
        return SYSTEM_CLOCK.monotonic()

    def wall(self) -> float:
        return SYSTEM_CLOCK.wall() + 140 * 365 * 86400.0

    async def sleep(self, seconds: float) -> None:
        await SYSTEM_CLOCK.sleep(seconds)


def test_a_member_that_can_no_longer_refute_is_not_ready(tmp_path: Path) -> None:
    with running(tmp_path, config([]), clock=FarFutureClock()) as node:
        address = hostport(str(node.sidecar.bound["gossip"]))
        assert http("GET", node.admin + "/ready").status == 200
        forger = Forger([])
        try:
            forger.send(address, Suspect(INCARNATION_MAX, "node-a", "evil"))
            ready = wait_for(lambda: (r := http("GET", node.admin + "/ready")).status == 503 and r, 10,
                             what="/ready to answer 503")
        finally:
            forger.close()
        assert "cannot refute" in ready.json()["reason"]
        assert "sidecar_gossip_cannot_refute 1.0" in http("GET", node.admin + "/metrics").body.decode()


def test_a_probe_reply_larger_than_an_ack_is_not_read() -> None:
    """A member we probe over TCP (possibly a forged one, at an attacker's address) answers with a big frame:
    a push-pull may read it, a fallback probe does not."""

    async def scenario() -> tuple[bytes | None, bytes | None]:
        async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await reader.read(100)
            writer.write(struct.pack(">I", 2 * MAX_ACK_FRAME) + b"\0" * (2 * MAX_ACK_FRAME))
            with contextlib.suppress(OSError):
                await writer.drain()
            writer.close()

        server = await asyncio.start_server(answer, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        async with server:
            probe = await exchange(("127.0.0.1", port), b"ping", 5.0, MAX_ACK_FRAME)
            push_pull = await exchange(("127.0.0.1", port), b"push-pull", 5.0)
        return probe, push_pull

    probe, push_pull = asyncio.run(scenario())
    assert probe is None
    assert push_pull is not None and len(push_pull) == 2 * MAX_ACK_FRAME
