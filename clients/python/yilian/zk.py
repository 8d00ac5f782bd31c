"""The bank's view of the ZK API: a question about a customer's encrypted
record, asked under the grant the customer consented to, and its answer
checked here rather than taken from the node.

`Bank.ask` returns an `Answer` only after checking, in Python:

- the verifying key's compressed encoding hashes to the key the node names,
  and a `verifying-key-anchor` entry for that hash and statement is in the
  ledger (inclusion proven under the head a majority of members cosigned);
- the record's `record-anchor` entry is in the ledger too, signed by the
  holder the node names, and the proof's first public inputs are that
  anchor's record id, ciphertext hash and key commitment;
- the public inputs state the question that was asked (operators, constants
  and how they are ANDed and ORed; field positions are the node's) and the
  answer the node reports;
- the Groth16 proof verifies (`yilian.groth16`).
"""

import hashlib
from collections import Counter
from dataclasses import dataclass

from . import groth16
from ._pb import zk_pb2, zk_pb2_grpc
from .checkpoint import Checkpoint, Cosigner
from .ledger import Auditor

# The circuit's comparison op codes (CmpOp in circuits/src/kyc.rs).
_INTEGER_OPS = {"eq": 1, "ne": 2, "lt": 3, "lte": 4, "gt": 5, "gte": 6, "between": 7}
# The same comparisons with another field of the record (EqField = 8, ...).
_FIELD_OPS = {op: code + 7 for op, code in _INTEGER_OPS.items() if op != "between"}
_SET_OPS = {"in": 1, "nin": 2}
_COMPARISON_SLOTS, _SLOTS, _CLAUSE_BITS = 4, 5, 3
PUBLIC_INPUTS = 25


class ZkCheckError(ValueError):
    """The node's answer does not stand up: which check failed, and on what."""


def identifier(text: str) -> int:
    """A string as a field element, as the circuits map identifiers."""
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:31], "big") % groth16.R


@dataclass(frozen=True)
class Predicate:
    """One predicate of a question: `field op value` (`between` also takes
    `high`), `field op other_field`, or `field in/nin root` (a set's Merkle
    root). Predicates with the same non-zero `any_of` are ORed."""

    field: str
    op: str
    value: int | str | bytes | None = None
    high: int | None = None
    other_field: str | None = None
    any_of: int = 0

    def to_pb(self) -> zk_pb2.Predicate:
        p = zk_pb2.Predicate(field=self.field, op=zk_pb2.Op.Value(f"OP_{self.op.upper()}"), any_of=self.any_of)
        if self.other_field is not None:
            p.other_field = self.other_field
        elif self.op in _SET_OPS:
            p.root = bytes(self.value)
        elif isinstance(self.value, str):
            p.identifier = self.value
        else:
            p.integer = int(self.value)
        if self.high is not None:
            p.high = self.high
        return p

    def atom(self):
        """What the proof's public inputs say for this predicate."""
        if self.other_field is not None:
            return ("field", _FIELD_OPS[self.op])
        if self.op in _SET_OPS:
            return ("set", _SET_OPS[self.op], groth16.fr(bytes(self.value), "set root"))
        a = identifier(self.value) if isinstance(self.value, str) else int(self.value)
        return ("cmp", _INTEGER_OPS[self.op], a, self.high or 0)


def _formula(atoms_by_clause) -> Counter:
    return Counter(frozenset(Counter(a).items()) for a in atoms_by_clause if a)


def asked_formula(predicates: list[Predicate]) -> Counter:
    clauses, alone = {}, []
    for p in predicates:
        if p.any_of:
            clauses.setdefault(p.any_of, []).append(p.atom())
        else:
            alone.append([p.atom()])
    return _formula(list(clauses.values()) + alone)


def proven_formula(inputs: list[int]) -> Counter:
    """The question the public inputs state, in the circuit's layout: four
    comparison slots (field, op, a, b), one set slot (field, op, root), the
    packed clause of each slot, and the result."""
    slots = []
    for i in range(_COMPARISON_SLOTS):
        _field, op, a, b = inputs[4 + 4 * i: 8 + 4 * i]
        if op == 0:
            slots.append(None)
        elif op >= 8:
            slots.append(("field", op))
        else:
            slots.append(("cmp", op, a, b))
    set_op, root = inputs[21], inputs[22]
    slots.append(("set", set_op, root) if set_op else None)
    packed = inputs[23]
    clause = [(packed >> (_CLAUSE_BITS * i)) & 0b111 for i in range(_SLOTS)]
    if packed >> (_CLAUSE_BITS * _SLOTS) or any(c >= _SLOTS for c in clause):
        raise ZkCheckError("public inputs: the clause layout is malformed")
    groups = [[s for s, c in zip(slots, clause) if s is not None and c == j] for j in range(_SLOTS)]
    return _formula(groups)


@dataclass(frozen=True)
class Answer:
    answer: bool
    record_id: str
    #: The ledger entries the answer was checked against.
    anchor_index: int
    vk_anchor_index: int
    holder: bytes
    #: The members' cosigned head the anchors were proven under.
    head: Checkpoint
    #: The node's QueryResponse, proof and public inputs, for keeping.
    response: object


class _Postcard:
    """Reads the ledger's entry encoding (postcard: LEB128 varints,
    length-prefixed strings and bytes), as far as the anchors need."""

    # Payload variant indices, in ledger/src/tx.rs order.
    RECORD_ANCHOR, VERIFYING_KEY_ANCHOR = 6, 7

    def __init__(self, data: bytes, where: str):
        self.data, self.at, self.where = data, 0, where

    def fail(self, what: str):
        raise ZkCheckError(f"{self.where}: {what}")

    def varint(self) -> int:
        value = shift = 0
        while True:
            if self.at >= len(self.data) or shift > 63:
                self.fail("a truncated or overlong integer")
            byte = self.data[self.at]
            self.at += 1
            value |= (byte & 0x7F) << shift
            if not byte & 0x80:
                return value
            shift += 7

    def bytes_(self, n: int | None = None) -> bytes:
        length = self.varint()
        if n is not None and length != n:
            self.fail(f"a field of {length} bytes where {n} belong")
        if self.at + length > len(self.data):
            self.fail("truncated")
        out = self.data[self.at:self.at + length]
        self.at += length
        return out

    def string(self) -> str:
        try:
            return self.bytes_().decode()
        except UnicodeDecodeError:
            self.fail("a string that is not UTF-8")


def _anchor(entry: bytes, variant: int, where: str) -> tuple[tuple, bytes]:
    """The fields of an anchor entry, and its signer."""
    r = _Postcard(entry, where)
    r.varint(), r.varint(), r.varint()  # version, nonce, timestamp_ms
    kind = r.varint()
    if kind != variant:
        r.fail(f"entry kind {kind}, not the anchor the node named")
    if variant == _Postcard.RECORD_ANCHOR:
        fields = (r.string(), r.bytes_(32), r.bytes_(32))  # record id, ciphertext hash, key commitment
    else:
        fields = (r.string(), r.bytes_(32))  # statement, vk hash
    signer = r.bytes_(32)
    r.bytes_(64)  # the signature, which the Merkle inclusion already binds
    if r.at != len(entry):
        r.fail("bytes after the transaction")
    return fields, signer


class Bank:
    """A verifier (`--role verifier`) asking consented questions. The
    anchors an answer rests on are proven under the head a majority of the
    consortium's members cosigned (`Auditor.cosigned_head`; `cosigners` and
    `min_cosigners` as there), not under the answering node's word."""

    def __init__(self, channel, cosigners: list[Cosigner] | None = None, min_cosigners: int | None = None):
        self._zk = zk_pb2_grpc.ZkStub(channel)
        self._auditor = Auditor(channel, cosigners=cosigners, min_cosigners=min_cosigners)
        self._keys = {}

    def _entry(self, index: int, head: Checkpoint) -> bytes:
        if index >= head.size:
            raise ZkCheckError(
                f"ledger entry {index} is newer than the newest cosigned head (size {head.size}); "
                "ask again once the members have cosigned it"
            )
        return self._auditor.entry(index, head)

    def _verifying_key(self, statement: str, head: Checkpoint) -> tuple[groth16.VerifyingKey, bytes, int]:
        if statement not in self._keys:
            r = self._zk.VerifyingKey(zk_pb2.VerifyingKeyRequest(statement=statement))
            vk = groth16.VerifyingKey.from_snarkjs(r.snarkjs_json)
            if vk.compressed() != r.verifying_key or vk.hash() != r.vk_hash:
                raise ZkCheckError(f"verifying key for {statement}: its JSON and its bytes differ")
            self._keys[statement] = (vk, r.vk_hash, r.anchor_index)
        vk, vk_hash, index = self._keys[statement]
        (anchored_statement, anchored_hash), _ = _anchor(
            self._entry(index, head), _Postcard.VERIFYING_KEY_ANCHOR, f"ledger entry {index}"
        )
        if anchored_statement != statement or anchored_hash != vk_hash:
            raise ZkCheckError(f"ledger entry {index} anchors another verifying key than {statement}'s")
        return vk, vk_hash, index

    def ask(self, record_id: str, grant_id: str, predicates: list[Predicate]) -> Answer:
        """Asks under `grant_id`; raises grpc.RpcError when the node refuses
        (PermissionDenied past the grant's uses) and ZkCheckError when its
        answer does not check out."""
        r = self._zk.Query(
            zk_pb2.QueryRequest(record_id=record_id, grant_id=grant_id, predicates=[p.to_pb() for p in predicates])
        )
        return self.check(r, record_id, predicates)

    def check(self, r, record_id: str, predicates: list[Predicate]) -> Answer:
        head = self._auditor.cosigned_head()
        statement = r.proof.statement or "kyc8-v2"
        vk, vk_hash, vk_index = self._verifying_key(statement, head)
        if r.proof.vk_hash != vk_hash:
            raise ZkCheckError(f"the proof names another verifying key than {statement}'s anchored one")
        if len(r.proof.public_inputs) != PUBLIC_INPUTS:
            raise ZkCheckError(f"{len(r.proof.public_inputs)} public inputs, not {PUBLIC_INPUTS}")
        inputs = [groth16.fr(x, f"public input {i}") for i, x in enumerate(r.proof.public_inputs)]
        (anchored_id, ciphertext_hash, key_commitment), signer = _anchor(
            self._entry(r.anchor_index, head), _Postcard.RECORD_ANCHOR, f"ledger entry {r.anchor_index}"
        )
        if anchored_id != record_id or signer != r.holder:
            raise ZkCheckError(f"ledger entry {r.anchor_index} is not {record_id}'s anchor by its holder")
        bound = (
            identifier(record_id),
            int.from_bytes(ciphertext_hash, "little"),
            int.from_bytes(key_commitment, "little"),
        )
        if tuple(inputs[:3]) != bound:
            raise ZkCheckError(f"the proof is about another record or ciphertext than entry {r.anchor_index}")
        if proven_formula(inputs) != asked_formula(predicates):
            raise ZkCheckError("the proof answers another question than the one asked")
        if inputs[24] != int(r.answer):
            raise ZkCheckError("the proof's result is not the answer the node gave")
        if not groth16.verify(vk, groth16.proof(r.proof.proof), inputs):
            raise ZkCheckError("the Groth16 proof does not verify")
        return Answer(bool(r.answer), record_id, r.anchor_index, vk_index, r.holder, head, r)
