"""Random bytes on every TCP and UDP port of a real process (admin, api, outbound, inbound, dns udp+tcp,
gossip udp+tcp): the process survives, and a normal request on each listener works afterwards."""

from __future__ import annotations

import random
import socket
import struct
import time

import pytest

from tests.integration.abuse.conftest import Target

TCP = ["admin", "api", "outbound", "inbound", "dns", "gossip"]
UDP = ["dns", "gossip"]
CONNECTIONS = 40   # per TCP listener
DATAGRAMS = 400    # per UDP listener


def noise(rng: random.Random) -> bytes:
    """Pure noise, or noise that starts like the listener's protocol so it gets past the first byte."""
    size = rng.choice([1, 2, 5, 17, 100, 1500, 9000, 70000])
    body = rng.randbytes(size)
    prefix = rng.choice([b"", b"GET / HTTP/1.1\r\n", b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03",
                         struct.pack(">I", size), struct.pack(">I", 0xFFFFFFFF), b"\x5c\x07default\x00"])
    return prefix + body


def blast_tcp(address: tuple[str, int], rng: random.Random) -> int:
    sent = 0
    for i in range(CONNECTIONS):
        with socket.create_connection(address, timeout=2) as sock:
            try:
                sock.sendall(noise(rng))
                sent += 1
                if i % 3 == 0:  # some close with a reset instead of a FIN
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                elif i % 3 == 1:
                    sock.settimeout(0.05)
                    sock.recv(65536)
            except (ConnectionResetError, BrokenPipeError, TimeoutError):
                pass
    return sent


@pytest.mark.parametrize("listener", TCP)
def test_random_bytes_on_a_tcp_port(target: Target, listener: str) -> None:
    rng = random.Random(f"tcp-{listener}")
    assert blast_tcp(target.address(listener), rng) > CONNECTIONS // 2
    target.check_all()


@pytest.mark.parametrize("listener", UDP)
def test_random_datagrams_on_a_udp_port(target: Target, listener: str) -> None:
    rng = random.Random(f"udp-{listener}")
    address = target.address(listener)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        for i in range(DATAGRAMS):
            size = rng.choice([0, 1, 11, 12, 13, 40, 512, 1400, 8000])
            data = rng.randbytes(size)
            if listener == "dns" and i % 2 and size >= 12:
                data = data[:2] + b"\x01\x00\x00\x01" + data[6:]  # a query header: the body gets parsed
            sock.sendto(data, address)
            if i % 50 == 0:
                time.sleep(0.001)  # do not simply overflow the receive buffer: make it read the noise
    target.check_all()


def test_noise_while_normal_clients_keep_being_served(target: Target) -> None:
    """Other clients are unaffected: normal requests between bursts on every port stay fast."""
    rng = random.Random("mixed")
    slowest = 0.0
    for listener in TCP:
        blast_tcp(target.address(listener), rng)
        slowest = max(slowest, *target.check_all().values())
    assert target.alive
    assert slowest < 1.0, slowest


def test_the_noise_left_no_traceback_in_the_log(target: Target) -> None:
    for listener in TCP:
        blast_tcp(target.address(listener), random.Random(f"log-{listener}"))
    target.check_all()
    log = target.process.log_text()
    assert "Traceback" not in log and " error " not in log, log[-3000:]
