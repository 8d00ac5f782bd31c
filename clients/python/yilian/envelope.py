"""The KMS envelope, version 1 (docs/envelope.md), sealed and opened with `cryptography`."""

import os
import struct
from dataclasses import dataclass

from cryptography.hazmat.primitives.ciphers.aead import AESGCM

VERSION = 0x01
AES_256_GCM = 0x01
NONCE_LEN = 12
MAX_KEY_ID_LEN = 128


class EnvelopeError(ValueError):
    """An envelope that is malformed or does not open."""


@dataclass(frozen=True)
class Envelope:
    key_id: str
    key_version: int
    nonce: bytes
    ciphertext: bytes

    def header(self) -> bytes:
        key_id = self.key_id.encode()
        return (
            bytes([VERSION, AES_256_GCM])
            + struct.pack(">I", self.key_version)
            + bytes([len(key_id)])
            + key_id
            + self.nonce
        )

    def encode(self) -> bytes:
        return self.header() + self.ciphertext

    @staticmethod
    def decode(data: bytes) -> "Envelope":
        if len(data) < 7:
            raise EnvelopeError(f"an envelope is at least 7 bytes, this one is {len(data)}")
        if data[0] != VERSION:
            raise EnvelopeError(f"envelope version {data[0]} is not 1; upgrade the client")
        if data[1] != AES_256_GCM:
            raise EnvelopeError(f"envelope algorithm {data[1]} is not AES-256-GCM (1)")
        (key_version,) = struct.unpack(">I", data[2:6])
        n = data[6]
        if not 1 <= n <= MAX_KEY_ID_LEN:
            raise EnvelopeError(f"key id length {n} is outside 1..=128")
        if len(data) < 7 + n + NONCE_LEN + 16:
            raise EnvelopeError("the envelope ends before its nonce and tag")
        try:
            key_id = data[7 : 7 + n].decode()
        except UnicodeDecodeError as e:
            raise EnvelopeError("the key id is not UTF-8") from e
        return Envelope(
            key_id=key_id,
            key_version=key_version,
            nonce=data[7 + n : 7 + n + NONCE_LEN],
            ciphertext=data[7 + n + NONCE_LEN :],
        )

    def open(self, key: bytes, owner: bytes, context: bytes = b"") -> bytes:
        """The plaintext, if `key`, the owner's 32-byte ledger key and the context match."""
        try:
            return AESGCM(key).decrypt(self.nonce, self.ciphertext, self.header() + owner + context)
        except Exception as e:  # cryptography raises InvalidTag without a message
            raise EnvelopeError(
                "the envelope does not open with this key, owner and context"
            ) from e


def seal(key: bytes, key_id: str, key_version: int, owner: bytes, context: bytes, plaintext: bytes) -> Envelope:
    """Encrypts locally, e.g. under a data key from `GenerateDataKey`."""
    env = Envelope(key_id, key_version, os.urandom(NONCE_LEN), b"")
    ct = AESGCM(key).encrypt(env.nonce, plaintext, env.header() + owner + context)
    return Envelope(key_id, key_version, env.nonce, ct)
