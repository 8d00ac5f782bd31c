"""docs/envelope.md's test vector, made by the Rust KMS, opened with `cryptography`."""

import pytest

from yilian import envelope

VECTOR = bytes.fromhex(
    "01010000000308646f6f722d3330316465666768696a6b6c6d6e6f"
    "3a74b10b59d866afa7f066d3785682c02a6864fa5cd0a377"
)
KEY = bytes(range(32))
OWNER = bytes([7]) * 32


def test_the_documented_vector_opens():
    env = envelope.Envelope.decode(VECTOR)
    assert (env.key_id, env.key_version) == ("door-301", 3)
    assert env.open(KEY, OWNER, b"stay-42") == b"room 101"
    assert env.encode() == VECTOR


def test_any_other_owner_context_or_byte_is_refused():
    env = envelope.Envelope.decode(VECTOR)
    with pytest.raises(envelope.EnvelopeError):
        env.open(KEY, bytes(32), b"stay-42")
    with pytest.raises(envelope.EnvelopeError):
        env.open(KEY, OWNER, b"stay-43")
    for i in range(len(VECTOR)):
        flipped = bytearray(VECTOR)
        flipped[i] ^= 1
        with pytest.raises(envelope.EnvelopeError):
            envelope.Envelope.decode(bytes(flipped)).open(KEY, OWNER, b"stay-42")


def test_malformed_headers_name_the_field():
    with pytest.raises(envelope.EnvelopeError, match="version 2"):
        envelope.Envelope.decode(b"\x02" + VECTOR[1:])
    with pytest.raises(envelope.EnvelopeError, match="algorithm 9"):
        envelope.Envelope.decode(VECTOR[:1] + b"\x09" + VECTOR[2:])
    with pytest.raises(envelope.EnvelopeError, match="key id length 0"):
        envelope.Envelope.decode(VECTOR[:6] + b"\x00" + VECTOR[7:])
    with pytest.raises(envelope.EnvelopeError, match="before its nonce"):
        envelope.Envelope.decode(VECTOR[:20])


def test_a_local_seal_opens():
    env = envelope.seal(KEY, "k", 1, OWNER, b"ctx", b"hello")
    assert envelope.Envelope.decode(env.encode()).open(KEY, OWNER, b"ctx") == b"hello"
