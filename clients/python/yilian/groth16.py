"""Groth16 over BN254, checked in Python: arkworks' compressed point and
field encodings (what the node's ZK API sends), snarkjs' verification key
JSON, and the pairing check itself (py_ecc's optimized BN254 pairing).

Points are decoded with every check arkworks makes on deserialising: a
canonical coordinate below p, the flag bits, the curve equation, and for G2
membership of the prime-order subgroup.
"""

import hashlib
import json
import struct

from py_ecc.optimized_bn128 import (
    FQ,
    FQ2,
    FQ12,
    add,
    b,
    b2,
    curve_order,
    field_modulus,
    final_exponentiate,
    is_inf,
    is_on_curve,
    multiply,
    neg,
    normalize,
)
from py_ecc.optimized_bn128.optimized_pairing import cast_point_to_fq12, miller_loop, twist

P = field_modulus
R = curve_order
# arkworks SWFlags, in the top bits of a compressed point's last byte.
_Y_NEGATIVE, _INFINITY = 0x80, 0x40
G1_BYTES, G2_BYTES = 32, 64


class Groth16Error(ValueError):
    """Bytes that are not a point, a field element or a key of the expected kind."""


def _fp(raw: bytes, what: str) -> int:
    x = int.from_bytes(raw, "little")
    if x >= P:
        raise Groth16Error(f"{what}: a coordinate at or above the field modulus")
    return x


def fr(raw: bytes, what: str = "public input") -> int:
    """A canonical 32-byte little-endian scalar (arkworks' Fr encoding)."""
    if len(raw) != 32:
        raise Groth16Error(f"{what}: {len(raw)} bytes, not 32")
    x = int.from_bytes(raw, "little")
    if x >= R:
        raise Groth16Error(f"{what}: not below the group order")
    return x


def _sqrt_fp(a: int) -> int | None:
    # p = 3 (mod 4): a^((p+1)/4) is a root whenever one exists.
    y = pow(a, (P + 1) // 4, P)
    return y if y * y % P == a % P else None


def _sqrt_fp2(a: FQ2) -> FQ2 | None:
    # Adj and Rodriguez-Henriquez, "Square root computation over even
    # extension fields", algorithm 9 (q = 3 mod 4).
    a1 = a ** ((P - 3) // 4)
    alpha = a1 * a1 * a
    x0 = a1 * a
    if alpha == FQ2([P - 1, 0]):
        x = FQ2([0, 1]) * x0
    else:
        x = (alpha + FQ2.one()) ** ((P - 1) // 2) * x0
    return x if x * x == a else None


def _fp_negative(y: int) -> bool:
    # arkworks: y is "negative" when y > -y as canonical integers.
    return y > (P - y) % P


def _fp2_negative(y: FQ2) -> bool:
    # Quadratic extension elements compare c1 first, then c0.
    c0, c1 = (int(c) for c in y.coeffs)
    n0, n1 = (P - c0) % P, (P - c1) % P
    return (c1, c0) > (n1, n0)


def g1(raw: bytes, what: str = "G1 point"):
    """A compressed G1 point (x little-endian, flags in the last byte)."""
    if len(raw) != G1_BYTES:
        raise Groth16Error(f"{what}: {len(raw)} bytes, not {G1_BYTES}")
    flags = raw[-1] & 0xC0
    x = _fp(raw[:-1] + bytes([raw[-1] & 0x3F]), what)
    if flags == _INFINITY | _Y_NEGATIVE:
        raise Groth16Error(f"{what}: both flag bits set")
    if flags & _INFINITY:
        if x != 0:
            raise Groth16Error(f"{what}: the point at infinity with a non-zero x")
        return (FQ.one(), FQ.one(), FQ.zero())
    y = _sqrt_fp((x * x * x + 3) % P)
    if y is None:
        raise Groth16Error(f"{what}: x is not on the curve")
    if _fp_negative(y) != bool(flags & _Y_NEGATIVE):
        y = P - y
    return (FQ(x), FQ(y), FQ.one())


def g2(raw: bytes, what: str = "G2 point"):
    """A compressed G2 point (x.c0 then x.c1, flags in x.c1's last byte),
    which must lie in the prime-order subgroup."""
    if len(raw) != G2_BYTES:
        raise Groth16Error(f"{what}: {len(raw)} bytes, not {G2_BYTES}")
    flags = raw[-1] & 0xC0
    c0 = _fp(raw[:32], what)
    c1 = _fp(raw[32:-1] + bytes([raw[-1] & 0x3F]), what)
    if flags == _INFINITY | _Y_NEGATIVE:
        raise Groth16Error(f"{what}: both flag bits set")
    if flags & _INFINITY:
        if c0 or c1:
            raise Groth16Error(f"{what}: the point at infinity with a non-zero x")
        return (FQ2.one(), FQ2.one(), FQ2.zero())
    x = FQ2([c0, c1])
    y = _sqrt_fp2(x * x * x + b2)
    if y is None:
        raise Groth16Error(f"{what}: x is not on the curve")
    if _fp2_negative(y) != bool(flags & _Y_NEGATIVE):
        y = -y
    point = (x, y, FQ2.one())
    if not is_inf(multiply(point, R)):
        raise Groth16Error(f"{what}: not in the prime-order subgroup")
    return point


def compress_g1(point) -> bytes:
    if is_inf(point):
        return bytes(31) + bytes([_INFINITY])
    x, y = (int(c) for c in normalize(point))
    out = bytearray(x.to_bytes(32, "little"))
    if _fp_negative(y):
        out[-1] |= _Y_NEGATIVE
    return bytes(out)


def compress_g2(point) -> bytes:
    if is_inf(point):
        return bytes(63) + bytes([_INFINITY])
    x, y = normalize(point)
    c0, c1 = (int(c) for c in x.coeffs)
    out = bytearray(c0.to_bytes(32, "little") + c1.to_bytes(32, "little"))
    if _fp2_negative(y):
        out[-1] |= _Y_NEGATIVE
    return bytes(out)


class VerifyingKey:
    """A Groth16 verifying key: alpha in G1, beta, gamma and delta in G2, and
    one G1 point per public input plus one (`ic`)."""

    def __init__(self, alpha, beta, gamma, delta, ic):
        self.alpha, self.beta, self.gamma, self.delta, self.ic = alpha, beta, gamma, delta, ic

    @classmethod
    def from_snarkjs(cls, text: str) -> "VerifyingKey":
        """From snarkjs' verification_key.json (decimal, z = 1, G2 as [c0, c1])."""
        try:
            j = json.loads(text)
            if j.get("protocol") != "groth16" or j.get("curve") != "bn128":
                raise Groth16Error("verification key: not a groth16 key on bn128")

            def p1(v, what):
                x, y, z = (int(c) for c in v)
                pt = (FQ(x), FQ(y), FQ(z))
                if not is_on_curve(pt, b):
                    raise Groth16Error(f"verification key: {what} is not on the curve")
                return pt

            def p2(v, what):
                (x0, x1), (y0, y1), (z0, z1) = ((int(a), int(c)) for a, c in v)
                pt = (FQ2([x0, x1]), FQ2([y0, y1]), FQ2([z0, z1]))
                if not is_on_curve(pt, b2) or not is_inf(multiply(pt, R)):
                    raise Groth16Error(f"verification key: {what} is not in G2")
                return pt

            return cls(
                p1(j["vk_alpha_1"], "vk_alpha_1"),
                p2(j["vk_beta_2"], "vk_beta_2"),
                p2(j["vk_gamma_2"], "vk_gamma_2"),
                p2(j["vk_delta_2"], "vk_delta_2"),
                [p1(v, f"IC[{i}]") for i, v in enumerate(j["IC"])],
            )
        except Groth16Error:
            raise
        except (KeyError, TypeError, ValueError) as e:
            raise Groth16Error(f"verification key: {e}") from e

    def compressed(self) -> bytes:
        """arkworks' compressed encoding, whose SHA-256 the ledger anchors."""
        return (
            compress_g1(self.alpha)
            + compress_g2(self.beta)
            + compress_g2(self.gamma)
            + compress_g2(self.delta)
            + struct.pack("<Q", len(self.ic))
            + b"".join(compress_g1(p) for p in self.ic)
        )

    def hash(self) -> bytes:
        return hashlib.sha256(self.compressed()).digest()


def proof(raw: bytes):
    """A compressed Groth16 proof: A in G1, B in G2, C in G1."""
    if len(raw) != 2 * G1_BYTES + G2_BYTES:
        raise Groth16Error(f"proof: {len(raw)} bytes, not {2 * G1_BYTES + G2_BYTES}")
    return (
        g1(raw[:32], "proof A"),
        g2(raw[32:96], "proof B"),
        g1(raw[96:], "proof C"),
    )


def verify(vk: VerifyingKey, proof_points, inputs: list[int]) -> bool:
    """Whether e(A, B) = e(alpha, beta) e(vk_x, gamma) e(C, delta), with
    vk_x = IC[0] + sum inputs[i] IC[i+1]: four Miller loops, one final
    exponentiation."""
    if len(inputs) + 1 != len(vk.ic):
        raise Groth16Error(f"{len(inputs)} public inputs for a key that takes {len(vk.ic) - 1}")
    a, b_, c = proof_points
    vk_x = vk.ic[0]
    for x, base in zip(inputs, vk.ic[1:]):
        if x:
            vk_x = add(vk_x, multiply(base, x))

    def ml(q, p):
        if is_inf(q) or is_inf(p):
            return FQ12.one()
        return miller_loop(twist(q), cast_point_to_fq12(p), final_exponentiate=False)

    f = ml(b_, neg(a)) * ml(vk.beta, vk.alpha) * ml(vk.gamma, vk_x) * ml(vk.delta, c)
    return final_exponentiate(f) == FQ12.one()


__all__ = [
    "Groth16Error", "VerifyingKey", "compress_g1", "compress_g2", "fr", "g1", "g2", "proof", "verify",
]
