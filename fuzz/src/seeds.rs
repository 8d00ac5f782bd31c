//! Valid inputs for every target, built from the real encoders with fixed
//! keys, times and nonces, so that they are the same bytes on every run.
//! They are the committed corpus (`corpus/<target>/ok-*`); the replay test
//! checks that each is still accepted, which keeps the targets reaching past
//! their first length check.

use ark_ec::AffineRepr;
use openraft::{CommittedLeaderId, Entry, EntryPayload, LogId, SnapshotMeta, Vote};
use yilian_federated::protocol::{Message, WeightsPurpose, encode, model_chunks, weight_messages};
use yilian_ledger::bundle::{BUNDLE_VERSION, ConsistencyBundle, InclusionBundle};
use yilian_ledger::checkpoint::{Checkpoint, CheckpointBody, Cosignature};
use yilian_ledger::consensus::Batch;
use yilian_ledger::merkle::{MerkleTree, leaf_hash};
use yilian_ledger::raft::LedgerRaft;
use yilian_ledger::{Payload, SignedTransaction, SignedTreeHead, Transaction};
use yilian_models::ModelSpec;

use crate::KEYS;

/// One seed: the target, a file name, the bytes.
pub type Seed = (&'static str, String, Vec<u8>);

const ORIGIN: &str = "fuzz.example/log";
const T0: u64 = 1_780_000_000_000;

pub fn all() -> Vec<Seed> {
    let mut out = Vec::new();
    let mut add = |target: &'static str, name: &str, bytes: Vec<u8>| {
        out.push((target, format!("ok-{name}"), bytes));
    };
    let txs = entries();
    for (i, tx) in txs.iter().enumerate() {
        add("ledger_tx", &format!("entry-{i}"), tx.encode());
    }
    let (inclusion, consistency, cp) = proofs(&txs);
    add("checkpoint", "cosigned", cp.to_note().into_bytes());
    add("inclusion_bundle", "entry-2", json(&inclusion));
    add("consistency_bundle", "3-to-5", json(&consistency));
    for (name, bytes) in raft_messages(&txs) {
        add("raft_message", name, bytes);
    }
    for (name, bytes) in quic_streams() {
        add("quic_frames", name, bytes);
    }
    add("kms_envelope", "aes-gcm", envelope());
    for (name, text) in [
        (
            "digits-task",
            include_str!("../../federated/examples/digits-task.toml"),
        ),
        (
            "digits-private",
            include_str!("../../federated/examples/digits-private.toml"),
        ),
        (
            "digits-buffered",
            include_str!("../../federated/examples/digits-buffered.toml"),
        ),
        (
            "digits-eval",
            include_str!("../../federated/examples/digits-eval.toml"),
        ),
    ] {
        add("task_toml", name, text.as_bytes().to_vec());
    }
    for (name, spec) in models() {
        add("model_spec", name, json(&spec));
    }
    let spec = ModelSpec::mlp(4, 3, 2);
    let weights = spec.init_weights(1).expect("small model");
    add(
        "safetensors",
        "mlp",
        yilian_models::to_safetensors_bytes(&spec, &weights).expect("encodes"),
    );
    add("csv_rows", "last", b"\x001,2,3\n4,5.5,0\n-1,0,1\n".to_vec());
    add(
        "csv_rows",
        "named",
        b"\x02a,label,b\n1,0,2\n3,1,4\n".to_vec(),
    );
    add("csv_rows", "first", b"\x810,1,2\n9,3,4\n".to_vec());
    for (name, bytes) in snarkjs() {
        add("snarkjs_json", name, bytes);
    }
    add("ptau", "power-1", ptau_file());
    for (name, bytes) in records() {
        add("zk_record", name, bytes);
    }
    out
}

fn json<T: serde::Serialize>(v: &T) -> Vec<u8> {
    serde_json::to_vec_pretty(v).expect("serialises")
}

fn entries() -> Vec<SignedTransaction> {
    let payloads = [
        Payload::Genesis {
            network: "fuzz".into(),
            authority: KEYS.log_key(),
        },
        Payload::Note {
            topic: "fuzz".into(),
            body: "a note".into(),
        },
        Payload::Transfer {
            to: [9; 32],
            amount: 12,
        },
        Payload::Revoke {
            public_key: [3; 32],
            reason: "key compromise".into(),
        },
        Payload::Note {
            topic: "t".into(),
            body: String::new(),
        },
    ];
    payloads
        .into_iter()
        .enumerate()
        .map(|(i, payload)| {
            let mut tx = Transaction::new(payload);
            tx.nonce = i as u64;
            tx.timestamp_ms = T0 + i as u64;
            tx.sign(&KEYS.log)
        })
        .collect()
}

fn cosign(body: &CheckpointBody) -> Checkpoint {
    Checkpoint {
        body: body.clone(),
        cosignatures: KEYS
            .members
            .iter()
            .map(|(name, key)| Cosignature::sign(body, name, key, T0 / 1000))
            .collect(),
    }
}

fn proofs(txs: &[SignedTransaction]) -> (InclusionBundle, ConsistencyBundle, Checkpoint) {
    let mut tree = MerkleTree::new();
    for tx in txs {
        tree.push(leaf_hash(&tx.encode()));
    }
    let head = |size: u64| {
        let root = tree.root_at(size).expect("in range");
        let sth = SignedTreeHead::sign(size, root, T0, &KEYS.log);
        let cp = cosign(&CheckpointBody {
            origin: ORIGIN.into(),
            size,
            root,
        });
        (sth, cp)
    };
    let (old_head, old_cp) = head(3);
    let (new_head, new_cp) = head(5);
    let inclusion = InclusionBundle {
        version: BUNDLE_VERSION,
        entry: txs[2].encode(),
        transaction: Some(txs[2].clone()),
        proof: tree.inclusion_proof(2, 5).expect("in range"),
        tree_head: new_head.clone(),
        checkpoint: Some(new_cp.clone()),
    };
    let consistency = ConsistencyBundle {
        version: BUNDLE_VERSION,
        old_head,
        new_head,
        proof: tree.consistency_proof(3, 5).expect("in range"),
        old_checkpoint: Some(old_cp),
        new_checkpoint: Some(new_cp.clone()),
    };
    (inclusion, consistency, new_cp)
}

fn raft_messages(txs: &[SignedTransaction]) -> Vec<(&'static str, Vec<u8>)> {
    let vote = Vote::new_committed(2, 1);
    let log_id = |index| LogId::new(CommittedLeaderId::new(2, 1), index);
    let append = openraft::raft::AppendEntriesRequest::<LedgerRaft> {
        vote,
        prev_log_id: Some(log_id(4)),
        entries: vec![
            Entry {
                log_id: log_id(5),
                payload: EntryPayload::Normal(Batch {
                    timestamp_ms: T0,
                    txs: txs.iter().map(|t| t.encode()).collect(),
                }),
            },
            Entry {
                log_id: log_id(6),
                payload: EntryPayload::Blank,
            },
        ],
        leader_commit: Some(log_id(4)),
    };
    let vote_req = openraft::raft::VoteRequest::<u64>::new(Vote::new(3, 2), Some(log_id(6)));
    let snapshot = openraft::raft::InstallSnapshotRequest::<LedgerRaft> {
        vote,
        meta: SnapshotMeta {
            last_log_id: Some(log_id(6)),
            last_membership: Default::default(),
            snapshot_id: "2-1-6".into(),
        },
        offset: 0,
        data: b"snapshot bytes".to_vec(),
        done: true,
    };
    let framed = |kind: u8, body: Vec<u8>| [vec![kind], body].concat();
    vec![
        (
            "append",
            framed(0, postcard::to_stdvec(&append).expect("encodes")),
        ),
        (
            "vote",
            framed(1, postcard::to_stdvec(&vote_req).expect("encodes")),
        ),
        (
            "snapshot",
            framed(2, postcard::to_stdvec(&snapshot).expect("encodes")),
        ),
    ]
}

fn quic_streams() -> Vec<(&'static str, Vec<u8>)> {
    let stream = |piece: u8, messages: Vec<Message>| {
        let mut out = vec![piece];
        for m in &messages {
            out.extend(encode(m).expect("small message"));
        }
        out
    };
    let weights: Vec<f32> = (0..40).map(|i| i as f32 / 7.0).collect();
    vec![
        (
            "weights",
            stream(13, weight_messages(WeightsPurpose::Update, 3, &weights)),
        ),
        (
            "handshake",
            stream(
                255,
                vec![
                    Message::TaskAccept {
                        task_id: "digits".into(),
                    },
                    Message::TaskDecline {
                        task_id: "digits".into(),
                        reason: "schema".into(),
                    },
                ],
            ),
        ),
        (
            "model",
            stream(64, model_chunks(&[1, 2, 3, 4, 5]).collect()),
        ),
    ]
}

fn envelope() -> Vec<u8> {
    yilian_kms::envelope::Envelope {
        key_id: "key-1".into(),
        key_version: 1,
        nonce: [5; 12],
        ciphertext: vec![0xab; 33],
    }
    .encode()
}

fn models() -> Vec<(&'static str, ModelSpec)> {
    vec![
        ("logistic", ModelSpec::logistic_regression(30, 2)),
        ("mlp", ModelSpec::mlp(64, 16, 10)),
        ("cnn", ModelSpec::small_cnn(8, 10)),
    ]
}

fn snarkjs() -> Vec<(&'static str, Vec<u8>)> {
    use ark_bn254::{Fr, G1Affine, G2Affine};
    use yilian_zk::snarkjs::{export_proof, export_public, export_vk};
    let g1 = G1Affine::generator();
    let g2 = G2Affine::generator();
    let vk = ark_groth16::VerifyingKey::<ark_bn254::Bn254> {
        alpha_g1: g1,
        beta_g2: g2,
        gamma_g2: g2,
        delta_g2: g2,
        gamma_abc_g1: vec![g1, g1, g1],
    };
    let proof = ark_groth16::Proof::<ark_bn254::Bn254> {
        a: g1,
        b: g2,
        c: g1,
    };
    vec![
        ("vk", json(&export_vk(&vk))),
        ("proof", json(&export_proof(&proof))),
        (
            "public",
            json(&export_public(&[Fr::from(1u64), Fr::from(2u64)])),
        ),
    ]
}

/// A power-1 `.ptau` file in snarkjs' layout, every point a generator (τ = α
/// = β = 1), with coordinates in Montgomery form as the reader takes them.
fn ptau_file() -> Vec<u8> {
    use ark_bn254::{Fq, G1Affine, G2Affine};
    use ark_ff::{BigInteger, PrimeField};
    let fq = |x: Fq| -> Vec<u8> { x.0.0.iter().flat_map(|l| l.to_le_bytes()).collect() };
    let g1 = |n: usize| -> Vec<u8> {
        let p = G1Affine::generator();
        [fq(p.x), fq(p.y)].concat().repeat(n)
    };
    let g2 = |n: usize| -> Vec<u8> {
        let p = G2Affine::generator();
        [fq(p.x.c0), fq(p.x.c1), fq(p.y.c0), fq(p.y.c1)]
            .concat()
            .repeat(n)
    };
    let mut header = 32u32.to_le_bytes().to_vec();
    header.extend(Fq::MODULUS.to_bytes_le());
    header.extend(1u32.to_le_bytes()); // power
    header.extend(1u32.to_le_bytes()); // ceremony power
    let sections = [
        (1u32, header),
        (2, g1(3)),
        (3, g2(2)),
        (4, g1(2)),
        (5, g1(2)),
        (6, g2(1)),
    ];
    let mut out = b"ptau".to_vec();
    out.extend(1u32.to_le_bytes());
    out.extend((sections.len() as u32).to_le_bytes());
    for (kind, data) in sections {
        out.extend(kind.to_le_bytes());
        out.extend((data.len() as u64).to_le_bytes());
        out.extend(data);
    }
    out
}

fn records() -> Vec<(&'static str, Vec<u8>)> {
    use yilian_zk::record::{CipherKey, EncryptedRecord, FieldValue, Record};
    let record = Record {
        fields: vec![
            ("birth_date".into(), FieldValue::Integer(19_800_101)),
            ("income".into(), FieldValue::Integer(52_000)),
            ("country".into(), FieldValue::Identifier("CH".into())),
        ],
    };
    let key = CipherKey::new([ark_bn254::Fr::from(11u64), ark_bn254::Fr::from(13u64)]);
    let enc = EncryptedRecord::encrypt("rec-1", &record, &key, 7).expect("encrypts");
    vec![("plain", json(&record)), ("encrypted", json(&enc))]
}
