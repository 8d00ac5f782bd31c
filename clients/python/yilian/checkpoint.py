"""Tree heads as the consortium's members cosign them: C2SP checkpoints
(signed notes) with `cosignature/v1` Ed25519 lines, parsed and checked in
pure Python the way `yilian ledger verify` checks them (docs/checkpoint.md).

A head is trusted on the cosignatures of K distinct members alone; there is
no log key, because the consortium has no single operator.
"""

import base64
import binascii
import hashlib
from dataclasses import dataclass
from typing import Sequence

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

#: A signed note's signature lines start with an em dash and a space.
SIG_PREFIX = "\u2014 "
#: Signature type of a timestamped Ed25519 cosignature (tlog-cosignature, Format).
COSIGNATURE_TYPE = 0x04
#: Most signature lines a note may carry (signed-note allows up to 100).
MAX_SIGNATURES = 100


class CheckpointError(ValueError):
    """A checkpoint that is malformed, carries a forged cosignature, or too few."""


@dataclass(frozen=True)
class Cosigner:
    """A member a verifier trusts: the name it signs under and its Ed25519 key."""

    name: str
    key: bytes


@dataclass(frozen=True)
class Checkpoint:
    """A head cosigned by `signers`, each a distinct trusted member."""

    origin: str
    size: int
    root: bytes
    signers: tuple[str, ...]

    def body(self) -> bytes:
        return body_text(self.origin, self.size, self.root)


def majority(n: int) -> int:
    """The default quorum of cosigners: a strict majority of `n` members."""
    return n // 2 + 1


def key_id(name: str, key: bytes) -> bytes:
    """`SHA-256(name || "\\n" || 0x04 || key)[:4]` (tlog-cosignature, Format)."""
    return hashlib.sha256(name.encode() + b"\n" + bytes([COSIGNATURE_TYPE]) + key).digest()[:4]


def body_text(origin: str, size: int, root: bytes) -> bytes:
    """The three body lines with their newlines: what every cosignature covers."""
    return f"{origin}\n{size}\n{base64.b64encode(root).decode()}\n".encode()


def signed_message(body: bytes, timestamp: int) -> bytes:
    return b"cosignature/v1\ntime %d\n" % timestamp + body


def _parse_body(text: str) -> tuple[str, int, bytes]:
    lines = text.split("\n")
    if not lines[0]:
        raise CheckpointError("checkpoint: no origin line")
    if len(lines) < 3:
        raise CheckpointError("checkpoint: the body needs an origin, a size and a root hash line")
    if len(lines) > 3:
        raise CheckpointError("checkpoint: extension lines are not used by this log")
    size_line = lines[1]
    if not size_line or not size_line.isascii() or not size_line.isdigit() or (
        len(size_line) > 1 and size_line[0] == "0"
    ):
        raise CheckpointError("checkpoint: the size line is not a decimal number without leading zeroes")
    size = int(size_line)
    if size >= 1 << 64:
        raise CheckpointError("checkpoint: the size does not fit 64 bits")
    try:
        root = base64.b64decode(lines[2], validate=True)
    except (binascii.Error, ValueError):
        root = b""
    if len(root) != 32:
        raise CheckpointError("checkpoint: the root hash line is not 32 bytes of base64")
    return lines[0], size, root


def verify(note: str, cosigners: Sequence[Cosigner], min_cosigners: int | None = None) -> Checkpoint:
    """The checkpoint in `note`, once valid cosignatures of at least
    `min_cosigners` (default: a majority) distinct members of `cosigners`
    are found in it.

    As in signed-note's verification, a line under a name not in
    `cosigners`, or with another key id (another key type or key under a
    known name), is ignored; a known key whose signature does not verify is
    refused outright, since it means the note was altered or forged."""
    need = majority(len(cosigners)) if min_cosigners is None else min_cosigners
    if need < 1:
        raise CheckpointError("min_cosigners must be at least 1")
    text, sep, sigs = note.partition("\n\n")
    if not sep:
        raise CheckpointError("checkpoint: no blank line between the body and its signatures")
    origin, size, root = _parse_body(text)
    body = body_text(origin, size, root)
    if not sigs.endswith("\n"):
        raise CheckpointError("checkpoint: the note does not end with a newline")
    by_name = {c.name: c for c in cosigners}
    signers: list[str] = []
    for n, line in enumerate(sigs[:-1].split("\n")):
        if n >= MAX_SIGNATURES:
            raise CheckpointError("checkpoint: too many signature lines")
        if not line.startswith(SIG_PREFIX):
            raise CheckpointError("checkpoint: a signature line does not start with an em dash")
        name, space, blob_b64 = line[len(SIG_PREFIX):].rpartition(" ")
        if not space:
            raise CheckpointError("checkpoint: a signature line has no signature")
        try:
            blob = base64.b64decode(blob_b64, validate=True)
        except (binascii.Error, ValueError):
            raise CheckpointError("checkpoint: a signature is not base64") from None
        known = by_name.get(name)
        if known is None or len(blob) != 4 + 8 + 64 or blob[:4] != key_id(name, known.key):
            continue
        timestamp = int.from_bytes(blob[4:12], "big")
        try:
            Ed25519PublicKey.from_public_bytes(known.key).verify(blob[12:], signed_message(body, timestamp))
        except (InvalidSignature, ValueError):
            raise CheckpointError(f"the cosignature of {name} does not verify") from None
        if name not in signers:
            signers.append(name)
    if len(signers) < need:
        raise CheckpointError(
            f"the checkpoint of size {size} has valid cosignatures from {len(signers)} trusted "
            f"member(s), and {need} are needed"
        )
    return Checkpoint(origin, size, root, tuple(signers))
