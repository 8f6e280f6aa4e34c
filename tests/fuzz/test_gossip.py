"""Gossip packets and stream frames, plaintext and encrypted: the envelope and decoder raise only their own
errors, and the core counts refusals without raising."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from sidecar.gossip.envelope import Envelope
from sidecar.gossip.keyring import Keyring
from sidecar.gossip.messages import MessageType, compound_to_wire
from tests.fuzz.strategies import fuzz_settings, inputs, mutated
from tests.fuzz.targets import FUZZ_CLUSTER, FUZZ_KEY, gossip_encrypted, gossip_plain

PLAIN = Envelope(FUZZ_CLUSTER)
SEALED = Envelope(FUZZ_CLUSTER, Keyring([FUZZ_KEY]))

# a message type byte then noise: every decoder gets bodies of every length
_BODIES = st.builds(lambda kind, rest: bytes([kind]) + rest,
                    st.sampled_from([int(t) for t in MessageType]), st.binary(max_size=300))


@fuzz_settings(400)
@given(inputs("gossip_plain"))
def test_plaintext_packets(data: bytes) -> None:
    gossip_plain(data)


@fuzz_settings(400)
@given(_BODIES)
def test_plaintext_well_enveloped_bodies(body: bytes) -> None:
    # past the envelope, straight into the decoders
    gossip_plain(PLAIN.seal(body))


@fuzz_settings(150)
@given(st.lists(_BODIES, min_size=2, max_size=5))
def test_compounds_of_noise(bodies: list[bytes]) -> None:
    gossip_plain(PLAIN.seal(compound_to_wire([b for b in bodies if b[0] != MessageType.COMPOUND] or [b"\x01"] * 2)))


@fuzz_settings(300)
@given(inputs("gossip_encrypted"))
def test_encrypted_packets(data: bytes) -> None:
    gossip_encrypted(data)


@fuzz_settings(300)
@given(_BODIES)
def test_encrypted_well_sealed_bodies(body: bytes) -> None:
    # an authenticated member sending garbage: decryption passes, decoding must refuse
    gossip_encrypted(SEALED.seal(body))


@fuzz_settings(100)
@given(mutated("gossip_plain"))
def test_plaintext_packets_at_an_encrypting_member(data: bytes) -> None:
    gossip_encrypted(data)
