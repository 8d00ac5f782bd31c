"""BN254 point encodings (arkworks' compressed form) offline: known answers
for the generators, round trips, and every malformed input refused with
Groth16Error. The pairing check itself runs on the node's real proofs in
test_node.py."""

import random

import pytest
from py_ecc.optimized_bn128 import FQ2, G1, G2, b2, eq, is_inf, multiply, neg

from yilian import groth16

# arkworks: G1Affine::generator() and G2Affine::generator(), compressed.
G1_COMPRESSED = "01" + "00" * 31
G2_COMPRESSED = (
    "edf692d95cbdde46ddda5ef7d422436779445c5e66006a42761e1f12efde0018"
    "c212f3aeb785e49712e7a9353349aaf1255dfb31b7bf60723a480d9293938e19"
)


def test_the_generators_encode_as_arkworks_does():
    assert groth16.compress_g1(G1).hex() == G1_COMPRESSED
    assert groth16.compress_g2(G2).hex() == G2_COMPRESSED


def test_points_and_their_negatives_round_trip():
    rng = random.Random(7)
    for k in [1, 2, groth16.R - 1] + [rng.randrange(1, groth16.R) for _ in range(8)]:
        for p in (multiply(G1, k), neg(multiply(G1, k))):
            assert eq(groth16.g1(groth16.compress_g1(p)), p)
        for q in (multiply(G2, k), neg(multiply(G2, k))):
            assert eq(groth16.g2(groth16.compress_g2(q)), q)
    assert is_inf(groth16.g1(bytes(31) + b"\x40"))
    assert is_inf(groth16.g2(bytes(63) + b"\x40"))


def test_malformed_points_are_refused_by_name():
    p_bytes = groth16.P.to_bytes(32, "little")
    cases = [
        (groth16.g1, bytes(31), "31 bytes"),
        (groth16.g1, p_bytes, "field modulus"),
        (groth16.g1, bytes(31) + b"\xc0", "both flag bits"),
        (groth16.g1, b"\x01" + bytes(30) + b"\x40", "non-zero x"),
        (groth16.g2, bytes(64)[:-1], "63 bytes"),
        (groth16.g2, bytes(32) + p_bytes, "field modulus"),
        (groth16.fr, groth16.R.to_bytes(32, "little"), "group order"),
    ]
    # x = 0 is not on y^2 = x^3 + 3 (3 is not a square mod p).
    cases.append((groth16.g1, bytes(32), "not on the curve"))
    for decode, raw, why in cases:
        with pytest.raises(groth16.Groth16Error, match=why):
            decode(raw)


def test_a_twist_point_outside_the_subgroup_is_refused():
    for k in range(1, 50):
        x = FQ2([k, 1])
        y = groth16._sqrt_fp2(x * x * x + b2)
        if y is not None:
            point = (x, y, FQ2.one())
            assert not is_inf(multiply(point, groth16.R))
            with pytest.raises(groth16.Groth16Error, match="subgroup"):
                groth16.g2(groth16.compress_g2(point))
            return
    pytest.fail("no point on the twist with a small x")


def test_random_bytes_decode_to_curve_points_or_are_refused():
    rng = random.Random(11)
    for _ in range(300):
        raw = bytes(rng.randrange(256) for _ in range(32))
        try:
            p = groth16.g1(raw)
        except groth16.Groth16Error:
            continue
        assert groth16.compress_g1(p) == raw
    for _ in range(40):
        raw = bytes(rng.randrange(256) for _ in range(64))
        try:
            groth16.g2(raw)
        except groth16.Groth16Error:
            continue
