"""Cosigned checkpoints, offline: the vector the Rust ledger also makes
(vectors/checkpoint.json), the quorum, and refusals of altered notes."""

import base64
import json
import pathlib
import random

import pytest

from yilian import checkpoint
from yilian.checkpoint import CheckpointError, Cosigner

VECTOR = json.loads((pathlib.Path(__file__).parent / "vectors" / "checkpoint.json").read_text())
COSIGNERS = [Cosigner(c["name"], bytes.fromhex(c["key"])) for c in VECTOR["cosigners"]]
NOTE = VECTOR["note"]


def test_the_vector_verifies_with_its_three_members():
    cp = checkpoint.verify(NOTE, COSIGNERS)
    assert (cp.origin, cp.size) == ("example.com/behind-the-sofa", 20852163)
    assert cp.root == base64.b64decode("CsUYapGGPo4dkMgIAUqom/Xajj7h2fB2MPA3j2jxq2I=")
    assert cp.signers == ("net/org0/node", "net/org1/node", "net/org2/node")
    # The c2sp.org/tlog-checkpoint example body, verbatim.
    assert cp.body() == NOTE.split("\n\n")[0].encode() + b"\n"


def test_the_quorum_counts_distinct_trusted_members():
    assert checkpoint.verify(NOTE, COSIGNERS, 3).signers
    with pytest.raises(CheckpointError, match="from 1 trusted member.*2 are needed"):
        checkpoint.verify(NOTE, COSIGNERS[:1], 2)
    # Lines under names the verifier does not trust are ignored, not refused.
    assert checkpoint.verify(NOTE, COSIGNERS[1:], 2).signers == ("net/org1/node", "net/org2/node")
    # The same member's line twice counts once.
    body, _, sigs = NOTE.partition("\n\n")
    first = sigs.split("\n")[0]
    twice = body + "\n\n" + first + "\n" + first + "\n"
    with pytest.raises(CheckpointError, match="from 1 trusted member"):
        checkpoint.verify(twice, COSIGNERS, 2)
    with pytest.raises(CheckpointError, match="at least 1"):
        checkpoint.verify(NOTE, COSIGNERS, 0)


def test_a_member_name_with_another_key_is_not_counted():
    imposter = [Cosigner(COSIGNERS[0].name, bytes(32))] + COSIGNERS[1:]
    assert checkpoint.verify(NOTE, imposter, 2).signers == ("net/org1/node", "net/org2/node")
    with pytest.raises(CheckpointError, match="from 2 trusted"):
        checkpoint.verify(NOTE, imposter, 3)


def test_a_forged_cosignature_is_refused_by_name():
    body, _, sigs = NOTE.partition("\n\n")
    lines = sigs[:-1].split("\n")
    name, blob = lines[1][2:].rsplit(" ", 1)
    raw = bytearray(base64.b64decode(blob))
    raw[20] ^= 1
    lines[1] = f"\u2014 {name} {base64.b64encode(bytes(raw)).decode()}"
    with pytest.raises(CheckpointError, match="cosignature of net/org1/node does not verify"):
        checkpoint.verify(body + "\n\n" + "\n".join(lines) + "\n", COSIGNERS, 1)
    # Another size or root under the same lines: every signature fails.
    for changed in (NOTE.replace("20852163", "20852164"), NOTE.replace("CsUY", "CsUZ")):
        with pytest.raises(CheckpointError):
            checkpoint.verify(changed, COSIGNERS, 1)


@pytest.mark.parametrize(
    "note, message",
    [
        ("example\n1\n" + "A" * 43 + "=\n", "no blank line"),
        ("\n1\nAAAA\n\n", "no origin line"),
        ("o\n01\n" + base64.b64encode(bytes(32)).decode() + "\n\n", "leading zeroes"),
        ("o\n-1\n" + base64.b64encode(bytes(32)).decode() + "\n\n", "decimal number"),
        ("o\n" + str(1 << 64) + "\n" + base64.b64encode(bytes(32)).decode() + "\n\n", "64 bits"),
        ("o\n1\nAAAA\n\n", "32 bytes of base64"),
        ("o\n1\n" + base64.b64encode(bytes(32)).decode() + "\next\n\n", "extension lines"),
        ("o\n1\n" + base64.b64encode(bytes(32)).decode() + "\n\n- a b\n", "em dash"),
        ("o\n1\n" + base64.b64encode(bytes(32)).decode() + "\n\n\u2014 nameonly\n", "no signature"),
        ("o\n1\n" + base64.b64encode(bytes(32)).decode() + "\n\n\u2014 a !!\n", "not base64"),
        (NOTE[:-1], "end with a newline"),
    ],
)
def test_malformed_notes_are_refused_by_what_is_wrong(note, message):
    with pytest.raises(CheckpointError, match=message):
        checkpoint.verify(note, COSIGNERS, 1)


def test_too_many_signature_lines_are_refused():
    body, _, sigs = NOTE.partition("\n\n")
    line = sigs.split("\n")[0]
    with pytest.raises(CheckpointError, match="too many signature lines"):
        checkpoint.verify(body + "\n\n" + (line + "\n") * 101, COSIGNERS, 1)


def test_any_changed_byte_is_refused_or_loses_its_cosignatures():
    rng = random.Random(7)
    raw = NOTE.encode()
    for _ in range(500):
        b = bytearray(raw)
        b[rng.randrange(len(b))] ^= 1 << rng.randrange(8)
        try:
            text = b.decode()
        except UnicodeDecodeError:
            continue
        try:
            cp = checkpoint.verify(text, COSIGNERS, 3)
        except CheckpointError:
            continue
        # Whatever still verifies with all three is the same head.
        assert (cp.origin, cp.size, cp.root) == ("example.com/behind-the-sofa", 20852163, checkpoint.verify(NOTE, COSIGNERS).root)
