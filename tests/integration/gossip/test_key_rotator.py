"""The rotation driver with fetched keys: ``rotate_command`` run by a real shell, gossip nodes on real loopback
sockets in one event loop; a command that fails holds the rotation up without harming membership."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import re
import sys
from pathlib import Path

import pytest

from sidecar.gossip import GossipNode, generate_key
from sidecar.gossip.keyring import decode_key, fingerprint
from sidecar.gossip.rotation import KeyRotationCore, Phase
from sidecar.gossip.rotator import KeyFetchFailed, KeyRotator, run_key_command
from tests.harness import wait_for_async
from tests.integration.gossip.test_nodes import alive_names, node, run

EVERY = 2.0
# prints a key that depends only on the epoch (and a secret in a file), as a vault read of "key N" would
COMMAND = (f"{sys.executable} -c \"import base64, hashlib, os; "
           "secret = open(os.environ['SECRET_FILE'], 'rb').read(); "
           "print(base64.b64encode(hashlib.sha256(secret + os.environ['SIDECAR_GOSSIP_EPOCH'].encode())"
           ".digest()).decode())\"")


def expected_key(secret: bytes, epoch: int) -> bytes:
    return hashlib.sha256(secret + str(epoch).encode()).digest()


@pytest.fixture
def secret_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> bytes:
    secret = b"vault-secret"
    (tmp_path / "secret").write_bytes(secret)
    monkeypatch.setenv("SECRET_FILE", str(tmp_path / "secret"))
    return secret


@pytest.mark.parametrize(("command", "error"), [
    ("exit 3", "exited with status 3"),
    ("echo not-a-key", "printed an unusable key"),
    ("echo one two", "must print one base64 key (got 2 words)"),
    ("true", "must print one base64 key (got 0 words)"),
    ("sleep 5", "did not finish within 0.3s"),
    ("echo 'vault is sealed' >&2; exit 1", "exited with status 1: vault is sealed"),
])
def test_a_command_that_gives_no_key_fails_with_the_reason(command: str, error: str) -> None:
    with pytest.raises(KeyFetchFailed, match=re.escape(error)):
        asyncio.run(run_key_command(command, 7, "it", EVERY, timeout=0.3))


def test_the_command_gets_the_epoch_and_its_key_is_decoded(secret_file: bytes) -> None:
    key = asyncio.run(run_key_command(COMMAND, 41, "it", EVERY))
    assert key == expected_key(secret_file, 41)
    echo = asyncio.run(run_key_command('echo "$SIDECAR_GOSSIP_CLUSTER" >&2; test "$SIDECAR_GOSSIP_EPOCH" = 9 && '
                                       f"echo {base64.b64encode(bytes(16)).decode()}", 9, "it", EVERY))
    assert echo == bytes(16)


def rotators(nodes: list[GossipNode], root: str, command: str, joined: bool = True) -> list[KeyRotator]:
    return [KeyRotator(n, KeyRotationCore(EVERY, [decode_key(root)]), cluster="it", command=command,
                          base_meta=lambda: b'{"inbound":1}', ready=lambda: joined) for n in nodes]


def test_three_nodes_rotate_fetched_keys_twice(secret_file: bytes) -> None:
    asyncio.run(asyncio.wait_for(three_nodes_rotate(secret_file), 60))


async def three_nodes_rotate(secret_file: bytes) -> None:
    root = generate_key()
    nodes = [node(f"node-{i}", keys=[root]) for i in range(3)]
    rots = rotators(nodes, root, COMMAND)
    for r in rots:
        await r.prepare()
    for n in nodes:
        n.set_meta(rots[nodes.index(n)].meta())
        await n.start()
    for n in nodes[1:]:
        assert await n.join([nodes[0].address]) == 1  # type: ignore[list-item]
    tasks = [asyncio.create_task(r.run()) for r in rots]
    try:
        await wait_for_async(lambda: all(alive_names(x) == {y.name for y in nodes} for x in nodes), 10,
                             what="convergence")
        first = rots[0].status()["epoch"]
        for epoch in (first + 1, first + 2):
            want = fingerprint(expected_key(secret_file, epoch))

            def done(want: str = want) -> bool:
                return all(fingerprint(decode_key(n.list_keys()[0])) == want and len(n.list_keys()) == 2
                           and r.status()["phase"] == "steady" for n, r in zip(nodes, rots, strict=True))

            await wait_for_async(done, EVERY * 3 + 5,
                                 what=f"every node on the key of epoch {epoch}, the old one removed")
            assert all(alive_names(x) == {y.name for y in nodes} for x in nodes)
        assert all(r.counters["key_rotations"] >= 2 and r.counters["key_fetch_failures"] == 0 for r in rots)
        assert nodes[0].counters()["key_rotations"] == rots[0].counters["key_rotations"]  # to /metrics
        reports = rots[0].status()["members"]
        assert set(reports) == {"node-1", "node-2"} and all(isinstance(v, list) and v for v in reports.values())
    finally:
        for t in tasks:
            t.cancel()
        for n in nodes:
            await n.stop()


@run
async def test_a_failing_command_holds_the_rotation_and_says_why() -> None:
    root = generate_key()
    nodes = [node(f"node-{i}", keys=[root]) for i in range(2)]
    rots = rotators(nodes, root, "echo 'vault is sealed' >&2; exit 1")
    for r, n in zip(rots, nodes, strict=True):
        await r.prepare(timeout=2)
        n.set_meta(r.meta())
        await n.start()
    assert await nodes[1].join([nodes[0].address]) == 1  # type: ignore[list-item]
    tasks = [asyncio.create_task(r.run()) for r in rots]
    try:
        await wait_for_async(lambda: rots[0].core.status.phase is Phase.FETCHING, 5, what="fetching")
        await wait_for_async(lambda: rots[0].counters["key_fetch_failures"] >= 2, 10, what="retries")
        status = rots[0].status()
        assert "vault is sealed" in status["fetchError"] and status["target"] is None
        assert [decode_key(k) for k in nodes[0].list_keys()] == [decode_key(root)]  # nothing switched
        assert all(alive_names(x) == {"node-0", "node-1"} for x in nodes)
    finally:
        for t in tasks:
            t.cancel()
        for n in nodes:
            await n.stop()
