"""The bank's checks offline: the ledger's anchor entries decoded from their
postcard bytes (every truncation refused as a ZkCheckError), and the
question read back from public inputs compared with the one asked."""

import random

import pytest

from yilian import zk


def varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def lp(b: bytes) -> bytes:
    return varint(len(b)) + b


def record_anchor(record_id="c1", signer=b"\x05" * 32) -> bytes:
    tx = varint(1) + varint(2**63 + 5) + varint(1_796_000_000_000) + varint(6)
    tx += lp(record_id.encode()) + lp(b"\x01" * 32) + lp(b"\x02" * 32)
    return tx + lp(signer) + lp(b"\x09" * 64)


def test_a_record_anchor_decodes_and_every_damage_is_refused():
    entry = record_anchor()
    fields, signer = zk._anchor(entry, zk._Postcard.RECORD_ANCHOR, "entry 3")
    assert fields == ("c1", b"\x01" * 32, b"\x02" * 32) and signer == b"\x05" * 32
    with pytest.raises(zk.ZkCheckError, match="entry 3: entry kind 6"):
        zk._anchor(entry, zk._Postcard.VERIFYING_KEY_ANCHOR, "entry 3")
    with pytest.raises(zk.ZkCheckError, match="bytes after"):
        zk._anchor(entry + b"\x00", zk._Postcard.RECORD_ANCHOR, "entry 3")
    for n in range(len(entry)):
        with pytest.raises(zk.ZkCheckError):
            zk._anchor(entry[:n], zk._Postcard.RECORD_ANCHOR, "entry 3")
    rng = random.Random(3)
    for _ in range(500):
        damaged = bytearray(entry)
        damaged[rng.randrange(len(damaged))] = rng.randrange(256)
        try:
            zk._anchor(bytes(damaged), zk._Postcard.RECORD_ANCHOR, "entry 3")
        except zk.ZkCheckError:
            pass


def inputs_for(slots, clauses, set_slot=(0, 0)) -> list[int]:
    """Public inputs in the circuit's layout for comparison `slots`."""
    x = [11, 12, 13, 7]
    for i in range(4):
        field, op, a, b = slots[i] if i < len(slots) else (0, 0, 0, 0)
        x += [field, op, a, b]
    x += [0, set_slot[0], set_slot[1]]
    x.append(sum(c << (3 * i) for i, c in enumerate(clauses)))
    return x + [1]


def test_the_proven_question_must_be_the_one_asked():
    # income >= 100000 AND (score > 700 OR age between 18 and 65)
    asked = [
        zk.Predicate("income", "gte", 100000),
        zk.Predicate("score", "gt", 700, any_of=1),
        zk.Predicate("age", "between", 18, high=65, any_of=1),
    ]
    proven = inputs_for([(1, 6, 100000, 0), (2, 5, 700, 0), (3, 7, 18, 65)], [0, 1, 1, 0, 0])
    assert zk.proven_formula(proven) == zk.asked_formula(asked)
    # The same atoms, all ANDed, are another question.
    anded = inputs_for([(1, 6, 100000, 0), (2, 5, 700, 0), (3, 7, 18, 65)], [0, 1, 2, 0, 0])
    assert zk.proven_formula(anded) != zk.asked_formula(asked)
    # Another constant is another question.
    other = inputs_for([(1, 6, 100001, 0), (2, 5, 700, 0), (3, 7, 18, 65)], [0, 1, 1, 0, 0])
    assert zk.proven_formula(other) != zk.asked_formula(asked)
    # A clause index past the slots is malformed.
    with pytest.raises(zk.ZkCheckError, match="clause layout"):
        zk.proven_formula(inputs_for([(1, 6, 1, 0)], [5, 0, 0, 0, 0]))
    # Identifiers compare by their field element.
    ident = zk.Predicate("id_number", "eq", "F-0001")
    assert zk.proven_formula(inputs_for([(0, 1, zk.identifier("F-0001"), 0)], [0] * 5)) == zk.asked_formula([ident])
