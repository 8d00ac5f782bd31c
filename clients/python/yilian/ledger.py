"""The auditor's view: signed tree heads, and inclusion and consistency proofs
checked in pure Python against them."""

import struct
from dataclasses import dataclass

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from . import merkle
from ._pb import ledger_pb2, ledger_pb2_grpc

HEAD_CONTEXT = b"yilian/ledger/tree-head/v1\x00"


class HeadError(ValueError):
    """A tree head whose signature does not verify or whose signer is not trusted."""


@dataclass(frozen=True)
class Head:
    size: int
    root: bytes
    timestamp_ms: int
    log_key: bytes
    #: The newest C2SP checkpoint a quorum of members cosigned (docs/checkpoint.md).
    cosigned: str

    def signed_message(self) -> bytes:
        return (
            HEAD_CONTEXT
            + self.log_key
            + struct.pack(">Q", self.size)
            + self.root
            + struct.pack(">Q", self.timestamp_ms)
        )


def verified_head(pb: ledger_pb2.TreeHead, trusted: set[bytes] | None = None) -> Head:
    """The head, once its ed25519 signature verifies (and its signer is in `trusted`, if given)."""
    head = Head(pb.tree_size, pb.root_hash, pb.timestamp_ms, pb.log_key, pb.cosigned)
    if trusted is not None and head.log_key not in trusted:
        raise HeadError(f"the head is signed by {head.log_key.hex()}, which is not a trusted member key")
    try:
        Ed25519PublicKey.from_public_bytes(head.log_key).verify(pb.signature, head.signed_message())
    except (InvalidSignature, ValueError) as e:
        raise HeadError("the tree head's signature does not verify") from e
    return head


class Auditor:
    """Reads the ledger and checks every answer before returning it."""

    def __init__(self, channel, trusted: set[bytes] | None = None):
        self._stub = ledger_pb2_grpc.LedgerStub(channel)
        self._trusted = trusted

    def head(self) -> Head:
        return verified_head(self._stub.GetTreeHead(ledger_pb2.GetTreeHeadRequest()), self._trusted)

    def entry(self, index: int, head: Head) -> bytes:
        """Entry `index`, proven included in `head`."""
        proof = self._stub.GetInclusionProof(
            ledger_pb2.GetInclusionProofRequest(index=index, tree_size=head.size)
        )
        merkle.verify_inclusion(index, head.size, merkle.leaf_hash(proof.entry), list(proof.path), head.root)
        return proof.entry

    def consistent(self, old: Head, new: Head) -> None:
        """Raises merkle.ProofError unless `new` extends `old`."""
        proof = self._stub.GetConsistencyProof(
            ledger_pb2.GetConsistencyProofRequest(old_size=old.size, new_size=new.size)
        )
        merkle.verify_consistency(old.size, new.size, old.root, new.root, list(proof.path))
