"""The auditor's view: signed tree heads, and inclusion and consistency proofs
checked in pure Python against them."""

import struct
from dataclasses import dataclass

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from . import checkpoint, merkle
from ._pb import ledger_pb2, ledger_pb2_grpc
from .checkpoint import Checkpoint, CheckpointError, Cosigner

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
    """Reads the ledger and checks every answer before returning it.

    `head()` is the answering member's own signed head (checked against
    `trusted` keys, if given). `cosigned_head()` is the head the consortium
    stands behind: valid cosignatures of at least `min_cosigners` (default:
    a majority) distinct members of `cosigners`. Without `cosigners`, the
    ones the first answer lists are kept and used from then on, as
    `yilian ledger head --out` keeps them in its file; pass them to trust
    no member's word at all."""

    def __init__(
        self,
        channel,
        trusted: set[bytes] | None = None,
        cosigners: list[Cosigner] | None = None,
        min_cosigners: int | None = None,
    ):
        self._stub = ledger_pb2_grpc.LedgerStub(channel)
        self._trusted = trusted
        self._cosigners = list(cosigners) if cosigners is not None else None
        self._min = min_cosigners
        self._last: Checkpoint | None = None

    def head(self) -> Head:
        return verified_head(self._stub.GetTreeHead(ledger_pb2.GetTreeHeadRequest()), self._trusted)

    @property
    def cosigners(self) -> list[Cosigner] | None:
        """The members whose cosignatures count, once known."""
        return None if self._cosigners is None else list(self._cosigners)

    def cosigned_head(self) -> Checkpoint:
        """The newest head a quorum of members cosigned, checked as
        `yilian ledger verify` checks one. It must also extend (or be a
        prefix of) the cosigned head this auditor returned before: a
        consistency proof is fetched and checked, and a fork is refused."""
        pb = self._stub.GetTreeHead(ledger_pb2.GetTreeHeadRequest())
        if self._cosigners is None:
            self._cosigners = [Cosigner(c.name, bytes(c.key)) for c in pb.cosigners]
        if not pb.cosigned:
            raise CheckpointError("the member serves no cosigned head yet; ask again once a quorum has cosigned one")
        head = checkpoint.verify(pb.cosigned, self._cosigners, self._min)
        last = self._last
        if last is not None:
            if head.origin != last.origin:
                raise CheckpointError(f"the head is of log {head.origin!r}, not of {last.origin!r}")
            if head.size == last.size and head.root != last.root:
                raise CheckpointError(f"two cosigned heads of size {head.size} have different roots: the log forked")
            if head.size > last.size:
                self.consistent(last, head)
            elif head.size < last.size:
                self.consistent(head, last)
                return last
        self._last = head
        return head

    def entry(self, index: int, head: Head | Checkpoint) -> bytes:
        """Entry `index`, proven included in `head`."""
        proof = self._stub.GetInclusionProof(
            ledger_pb2.GetInclusionProofRequest(index=index, tree_size=head.size)
        )
        merkle.verify_inclusion(index, head.size, merkle.leaf_hash(proof.entry), list(proof.path), head.root)
        return proof.entry

    def consistent(self, old: Head | Checkpoint, new: Head | Checkpoint) -> None:
        """Raises merkle.ProofError unless `new` extends `old`."""
        proof = self._stub.GetConsistencyProof(
            ledger_pb2.GetConsistencyProofRequest(old_size=old.size, new_size=new.size)
        )
        merkle.verify_consistency(old.size, new.size, old.root, new.root, list(proof.path))
