"""AES-GCM keyring and the envelope: wrong key, wrong cluster, plaintext and rotation."""

from __future__ import annotations

import base64
import contextlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sidecar.gossip.envelope import Envelope, GossipRefusal, PacketRefused
from sidecar.gossip.errors import KeyringError
from sidecar.gossip.keyring import OVERHEAD, DecryptionFailed, Keyring, decode_key, generate_key

K16, K24, K32 = b"a" * 16, b"b" * 24, b"c" * 32


def test_generate_key_is_base64_of_32_random_bytes() -> None:
    a, b = generate_key(), generate_key()
    assert len(base64.b64decode(a)) == 32
    assert a != b


@pytest.mark.parametrize("key", [K16, K24, K32, base64.b64encode(K32).decode()])
def test_every_aes_size_encrypts_and_decrypts(key: bytes | str) -> None:
    ring = Keyring([key])
    sealed = ring.encrypt(b"hello", b"aad")
    assert sealed[0] == 1 and len(sealed) == len(b"hello") + OVERHEAD
    assert ring.decrypt(sealed, b"aad") == b"hello"


@pytest.mark.parametrize("key", [b"short", b"x" * 33, "not base64!", base64.b64encode(b"x" * 20).decode()])
def test_bad_keys_are_refused(key: bytes | str) -> None:
    with pytest.raises(KeyringError):
        decode_key(key)


def test_wrong_key_and_wrong_associated_data_fail() -> None:
    sealed = Keyring([K16]).encrypt(b"hello", b"prod")
    with pytest.raises(DecryptionFailed):
        Keyring([K32]).decrypt(sealed, b"prod")
    with pytest.raises(DecryptionFailed):
        Keyring([K16]).decrypt(sealed, b"staging")
    with pytest.raises(DecryptionFailed):
        Keyring([K16]).decrypt(sealed[:-1] + bytes([sealed[-1] ^ 1]), b"prod")


def test_rotation_install_use_remove() -> None:
    old, new = Keyring([K16]), Keyring([K16])
    new.install(K32)
    assert new.keys() == [K16, K32]
    assert old.decrypt(new.encrypt(b"m", b""), b"") == b"m"  # still written with the old key
    new.use(K32)
    assert new.primary == K32
    with pytest.raises(DecryptionFailed):
        old.decrypt(new.encrypt(b"m", b""), b"")
    assert new.decrypt(old.encrypt(b"m", b""), b"") == b"m"  # still reads the old key
    new.remove(K16)
    assert new.keys() == [K32]
    with pytest.raises(DecryptionFailed):
        new.decrypt(old.encrypt(b"m", b""), b"")


def test_keyring_rules() -> None:
    ring = Keyring([K16])
    ring.install(K16)
    assert ring.keys() == [K16]
    with pytest.raises(KeyringError, match="primary"):
        ring.remove(K16)
    with pytest.raises(KeyringError, match="not installed"):
        ring.use(K32)
    with pytest.raises(KeyringError, match="not installed"):
        ring.remove(K32)
    with pytest.raises(KeyringError):
        Keyring([])


class TestEnvelope:
    def test_plaintext_round_trip_carries_the_cluster_name(self) -> None:
        env = Envelope("prod")
        packet = env.seal(b"payload")
        assert b"prod" in packet
        assert env.open(packet) == b"payload"

    def test_encrypted_round_trip_hides_the_payload(self) -> None:
        env = Envelope("prod", Keyring([K32]))
        packet = env.seal(b"payload")
        assert b"payload" not in packet
        assert env.open(packet) == b"payload"

    @pytest.mark.parametrize(("sender", "receiver", "reason"), [
        (Envelope("staging"), Envelope("prod"), GossipRefusal.CLUSTER),
        (Envelope("prod2"), Envelope("prod"), GossipRefusal.CLUSTER),
        (Envelope("staging", Keyring([K32])), Envelope("prod", Keyring([K32])), GossipRefusal.CLUSTER),
        (Envelope("prod", Keyring([K16])), Envelope("prod", Keyring([K32])), GossipRefusal.KEY),
        (Envelope("prod"), Envelope("prod", Keyring([K32])), GossipRefusal.PLAINTEXT),
        (Envelope("prod", Keyring([K32])), Envelope("prod"), GossipRefusal.ENCRYPTED),
    ])
    def test_refusals(self, sender: Envelope, receiver: Envelope, reason: GossipRefusal) -> None:
        with pytest.raises(PacketRefused) as info:
            receiver.open(sender.seal(b"payload"))
        assert info.value.reason is reason

    def test_a_forged_cluster_header_fails_authentication(self) -> None:
        # the header is the associated data: relabelling a staging packet as prod breaks the tag
        staging, prod = Envelope("staging", Keyring([K32])), Envelope("prod", Keyring([K32]))
        packet = staging.seal(b"payload")
        forged = bytes((0x5C, 4)) + b"prod" + packet[2 + len(b"staging"):]
        with pytest.raises(PacketRefused) as info:
            prod.open(forged)
        assert info.value.reason is GossipRefusal.KEY

    @given(st.binary(max_size=200))
    def test_garbage_is_refused_never_raised_otherwise(self, data: bytes) -> None:
        for env in (Envelope("prod"), Envelope("prod", Keyring([K16]))):
            with contextlib.suppress(PacketRefused):
                env.open(data)

    def test_cluster_names_are_bounded(self) -> None:
        with pytest.raises(ValueError, match="over 64"):
            Envelope("x" * 65)
