"""The SDK against a real node, started by tests/node.rs
(`the_python_client_works_against_a_real_node`), which sets
YILIAN_NODE (its address) and YILIAN_IDENTITIES (the identity directories)."""

import os
import pathlib

import grpc
import pytest

import yilian
from yilian import merkle

NODE = os.environ.get("YILIAN_NODE")
pytestmark = pytest.mark.skipif(NODE is None, reason="needs a node: run tests/node.rs")


def identity(name):
    return yilian.Identity(pathlib.Path(os.environ["YILIAN_IDENTITIES"]) / name)


def test_an_identity_directory_loads_with_its_principal():
    holder = identity("holder")
    assert (holder.principal.org, holder.principal.role, holder.principal.name) == (
        "bank", "data-holder", "holder",
    )
    assert len(holder.principal.account) == 32


def test_a_directory_without_a_ledger_key_is_refused_by_file(tmp_path):
    src = pathlib.Path(os.environ["YILIAN_IDENTITIES"]) / "holder"
    for f in ("cert.pem", "key.pem", "ca.pem"):
        (tmp_path / f).write_bytes((src / f).read_bytes())
    with pytest.raises(yilian.IdentityError, match="ledger-key.pem"):
        yilian.Identity(tmp_path)


def test_the_key_owner_seals_locally_and_the_kms_unwraps():
    holder = identity("holder")
    with holder.channel(NODE) as ch:
        owner = yilian.KeyOwner(ch, holder.principal.account)
        assert owner.create_key("py-vault") == 1
        dk = owner.generate_data_key("py-vault", b"order-42")
        assert (dk.wrapped.key_id, dk.wrapped.key_version) == ("py-vault", 1)
        assert len(dk.plaintext) == 32
        sealed = owner.seal(dk, b"the customer's file", b"order-42")
        unwrapped = owner.unwrap(dk.wrapped, b"order-42")
        assert unwrapped == dk.plaintext
        assert owner.open(unwrapped, sealed, b"order-42") == b"the customer's file"
        with pytest.raises(yilian.EnvelopeError):
            owner.open(unwrapped, sealed, b"order-43")
        # The wrapped key is bound to its context too, by the KMS.
        with pytest.raises(grpc.RpcError) as refused:
            owner.unwrap(dk.wrapped, b"order-43")
        assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT, refused.value
        with pytest.raises(grpc.RpcError) as missing:
            owner.generate_data_key("no-such-key")
        assert missing.value.code() == grpc.StatusCode.NOT_FOUND, missing.value
        dk.wipe()
        assert dk.plaintext == bytearray(32)


def test_the_auditor_checks_heads_entries_and_consistency():
    auditor_id, holder = identity("auditor"), identity("holder")
    with auditor_id.channel(NODE) as ch, holder.channel(NODE) as hch:
        auditor = yilian.Auditor(ch)
        old = auditor.head()
        assert old.size >= 1
        genesis = auditor.entry(0, old)
        from yilian._pb import ledger_pb2, ledger_pb2_grpc

        stub = ledger_pb2_grpc.LedgerStub(ch)
        # The proven bytes are the log's entry 0 as the node stores it.
        assert stub.GetEntry(ledger_pb2.GetEntryRequest(index=0)).transaction == genesis
        # A KMS operation is audited on the ledger, so the log grows.
        yilian.KeyOwner(hch, holder.principal.account).create_key("py-audited")
        new = auditor.head()
        assert new.size > old.size
        auditor.consistent(old, new)
        for i in range(new.size):
            auditor.entry(i, new)

        # A head signed by a key the auditor does not trust is refused.
        with pytest.raises(yilian.HeadError, match="not a trusted member key"):
            yilian.Auditor(ch, trusted={bytes(32)}).head()
        # Proofs that do not lead to the signed root are refused.
        p = stub.GetInclusionProof(ledger_pb2.GetInclusionProofRequest(index=0, tree_size=new.size))
        path = list(p.path)
        path[0] = bytes([path[0][0] ^ 1]) + path[0][1:]
        with pytest.raises(merkle.ProofError):
            merkle.verify_inclusion(0, new.size, merkle.leaf_hash(p.entry), path, new.root)
        with pytest.raises(merkle.ProofError):
            merkle.verify_inclusion(0, new.size, merkle.leaf_hash(p.entry + b"x"), list(p.path), new.root)
        c = stub.GetConsistencyProof(ledger_pb2.GetConsistencyProofRequest(old_size=old.size, new_size=new.size))
        with pytest.raises(merkle.ProofError):
            merkle.verify_consistency(old.size, new.size, new.root, new.root, list(c.path))


def test_the_auditor_trusts_a_head_on_the_members_cosignatures():
    auditor_id, holder = identity("auditor"), identity("holder")
    with auditor_id.channel(NODE) as ch, holder.channel(NODE) as hch:
        auditor = yilian.Auditor(ch)
        first = auditor.cosigned_head()
        # This network has one member; its node cosigned under its certificate's name.
        assert [c.name for c in auditor.cosigners] == list(first.signers) and len(first.signers) == 1
        assert first.size >= 1
        for i in range(first.size):
            auditor.entry(i, first)
        # The node's own head and the cosigned one agree where they meet.
        own = auditor.head()
        assert own.size >= first.size
        if own.size == first.size:
            assert own.root == first.root
        yilian.KeyOwner(hch, holder.principal.account).create_key("py-cosigned")
        later = auditor.cosigned_head()
        assert later.size > first.size, "the audited operation was cosigned"
        # The member's key under another name, or another key: nothing counts.
        pinned = auditor.cosigners
        renamed = [yilian.Cosigner("other/org/node", pinned[0].key)]
        with pytest.raises(yilian.CheckpointError, match="from 0 trusted member"):
            yilian.Auditor(ch, cosigners=renamed).cosigned_head()
        stranger = [yilian.Cosigner(pinned[0].name, bytes(32))]
        with pytest.raises(yilian.CheckpointError, match="from 0 trusted member"):
            yilian.Auditor(ch, cosigners=stranger).cosigned_head()
        # Asking for more cosigners than the network has members is refused.
        with pytest.raises(yilian.CheckpointError, match="2 are needed"):
            yilian.Auditor(ch, cosigners=pinned, min_cosigners=2).cosigned_head()


def test_the_examples_run_as_documented(tmp_path):
    import subprocess
    import sys

    here = pathlib.Path(__file__).resolve().parent.parent
    ids = pathlib.Path(os.environ["YILIAN_IDENTITIES"])
    env = {**os.environ, "PYTHONPATH": str(here)}

    def run(*args):
        out = subprocess.run([sys.executable, *map(str, args)], capture_output=True, text=True, env=env)
        assert out.returncode == 0, out.stderr
        return out.stdout

    head = tmp_path / "head.json"
    first = run(here / "examples/auditor.py", NODE, ids / "auditor", head)
    assert "each included in the head" in first and "consistent" not in first
    notes = tmp_path / "notes.txt"
    notes.write_text("checked customer 42")
    assert "unwrapped and opened again" in run(here / "examples/key_owner.py", NODE, ids / "holder", "vault", notes)
    assert (tmp_path / "notes.txt.env").exists()
    second = run(here / "examples/auditor.py", NODE, ids / "auditor", head)
    assert "consistent with the earlier head" in second
    record, grant = os.environ["YILIAN_ZK_RECORD"], os.environ["YILIAN_ZK_EXAMPLE_GRANT"]
    asked = run(here / "examples/bank.py", NODE, ids / "bank", record, grant)
    assert "income >= 100000 is True; proof verified here" in asked, asked


def test_the_bank_asks_once_and_checks_the_answer_itself():
    from yilian import groth16
    from yilian._pb import zk_pb2

    record, grant = os.environ["YILIAN_ZK_RECORD"], os.environ["YILIAN_ZK_GRANT"]
    asked = [yilian.Predicate("income", "gte", 100000)]
    with identity("bank").channel(NODE) as ch:
        bank = yilian.Bank(ch)
        answer = bank.ask(record, grant, asked)
        assert answer.answer is True and answer.record_id == record
        good = answer.response

        def altered(change):
            r = zk_pb2.QueryResponse()
            r.CopyFrom(good)
            change(r)
            return r

        def flip_answer(r):
            r.answer = not r.answer

        def forge_a(r):
            r.proof.proof = groth16.compress_g1(groth16.g1(bytes([1]) + bytes(31))) + r.proof.proof[32:]

        def other_nonce(r):
            n = groth16.fr(r.proof.public_inputs[3]) + 1
            r.proof.public_inputs[3] = n.to_bytes(32, "little")

        for change, why in [
            (flip_answer, "not the answer the node gave"),
            (forge_a, "does not verify"),
            (other_nonce, "another record or ciphertext|does not verify"),
        ]:
            with pytest.raises(yilian.ZkCheckError, match=why):
                bank.check(altered(change), record, asked)
        with pytest.raises(yilian.ZkCheckError, match="another question"):
            bank.check(good, record, [yilian.Predicate("income", "gte", 200000)])
        with pytest.raises(yilian.ZkCheckError, match="anchor by its holder"):
            bank.check(good, "someone-else", asked)
        # The grant was for one use: burnt after reading.
        with pytest.raises(grpc.RpcError) as again:
            bank.ask(record, grant, asked)
        assert again.value.code() == grpc.StatusCode.PERMISSION_DENIED, again.value
