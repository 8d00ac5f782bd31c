//! Fuzz targets: one function per decoder that reads bytes from outside the
//! process, from a peer, a device, a file a user hands the CLI or a proof an
//! auditor is sent.
//!
//! Each target decodes its input the way the node does and, when the input
//! is accepted, checks what must then hold: the value re-encodes to itself
//! (one byte string per ledger entry), a re-parse gives the same value, and
//! every check that follows decoding answers instead of panicking. A panic is
//! a finding.
//!
//! The same functions run in two places:
//! - `cargo test -p yilian-fuzz` replays `corpus/<target>/` and a proptest of
//!   arbitrary and mutated inputs through each, on the stable toolchain, with
//!   an allocation bound (`tests/replay.rs`);
//! - `libfuzzer/` wraps each for coverage-guided runs with cargo-fuzz (see
//!   its README).

pub mod seeds;

use std::sync::LazyLock;

use ed25519_dalek::SigningKey;
use yilian_ledger::bundle::{ConsistencyBundle, InclusionBundle};
use yilian_ledger::checkpoint::{Checkpoint, CheckpointBody, Cosigner};
use yilian_ledger::raft::{RaftRequest, Rpc, decode_request};
use yilian_ledger::{AccountId, SignedTransaction};

/// What a target made of its input.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    Accepted,
    Refused,
}

impl<T, E> From<Result<T, E>> for Outcome {
    fn from(r: Result<T, E>) -> Self {
        if r.is_ok() {
            Outcome::Accepted
        } else {
            Outcome::Refused
        }
    }
}

/// A named decoder under test.
pub struct Target {
    pub name: &'static str,
    pub run: fn(&[u8]) -> Outcome,
}

/// Every target; `corpus/<name>/` holds each one's inputs.
pub const TARGETS: &[Target] = &[
    Target {
        name: "ledger_tx",
        run: ledger_tx,
    },
    Target {
        name: "checkpoint",
        run: checkpoint,
    },
    Target {
        name: "inclusion_bundle",
        run: inclusion_bundle,
    },
    Target {
        name: "consistency_bundle",
        run: consistency_bundle,
    },
    Target {
        name: "raft_message",
        run: raft_message,
    },
    Target {
        name: "quic_frames",
        run: quic_frames,
    },
    Target {
        name: "kms_envelope",
        run: kms_envelope,
    },
    Target {
        name: "task_toml",
        run: task_toml,
    },
    Target {
        name: "model_spec",
        run: model_spec,
    },
    Target {
        name: "safetensors",
        run: safetensors,
    },
    Target {
        name: "csv_rows",
        run: csv_rows,
    },
    Target {
        name: "snarkjs_json",
        run: snarkjs_json,
    },
    Target {
        name: "ptau",
        run: ptau,
    },
    Target {
        name: "zk_record",
        run: zk_record,
    },
];

/// Looks a target up by name (for the cargo-fuzz wrappers).
pub fn target(name: &str) -> &'static Target {
    TARGETS
        .iter()
        .find(|t| t.name == name)
        .unwrap_or_else(|| panic!("no fuzz target {name}"))
}

/// The fixed log and cosigner keys the seeds are signed with, so that a
/// mutated seed reaches the checks behind signature verification.
pub struct Keys {
    pub log: SigningKey,
    pub members: Vec<(String, SigningKey)>,
}

pub static KEYS: LazyLock<Keys> = LazyLock::new(|| Keys {
    log: SigningKey::from_bytes(&[7; 32]),
    members: (1..=3u8)
        .map(|i| {
            (
                format!("fuzz.example/org{i}/node"),
                SigningKey::from_bytes(&[i; 32]),
            )
        })
        .collect(),
});

impl Keys {
    pub fn log_key(&self) -> AccountId {
        self.log.verifying_key().to_bytes()
    }

    pub fn cosigners(&self) -> Vec<Cosigner> {
        self.members
            .iter()
            .map(|(name, k)| Cosigner {
                name: name.clone(),
                key: k.verifying_key().to_bytes(),
            })
            .collect()
    }
}

/// A ledger entry as a peer forwards it or a proof file carries it.
pub fn ledger_tx(data: &[u8]) -> Outcome {
    let Ok(tx) = SignedTransaction::decode(data) else {
        return Outcome::Refused;
    };
    assert_eq!(tx.encode(), data, "an entry has one encoding");
    let _ = tx.id();
    let _ = tx.tx.payload.index_keys();
    tx.verify_signature().into()
}

/// A C2SP signed note with cosignatures, as `ledger verify --head` reads it.
pub fn checkpoint(data: &[u8]) -> Outcome {
    let Ok(note) = std::str::from_utf8(data) else {
        return Outcome::Refused;
    };
    let cosigners = KEYS.cosigners();
    let Ok(cp) = Checkpoint::from_note(note, &cosigners) else {
        return Outcome::Refused;
    };
    let again = Checkpoint::from_note(&cp.to_note(), &cosigners).expect("a written note parses");
    assert_eq!(again, cp, "a checkpoint survives writing and parsing");
    cp.verify(&cosigners, 1).into()
}

/// An offline inclusion proof file, checked by log key and by cosigners.
pub fn inclusion_bundle(data: &[u8]) -> Outcome {
    let Ok(bundle) = serde_json::from_slice::<InclusionBundle>(data) else {
        return Outcome::Refused;
    };
    let by_log = bundle.verify(&KEYS.log_key());
    let by_members = bundle.verify_cosigned(&KEYS.cosigners(), 2);
    if let (Ok(a), Ok((b, _))) = (&by_log, &by_members) {
        assert_eq!(a, b, "both checks prove the same entry");
    }
    by_log.or(by_members.map(|(tx, _)| tx)).into()
}

/// An offline consistency proof file, checked from a trusted head too.
pub fn consistency_bundle(data: &[u8]) -> Outcome {
    let Ok(bundle) = serde_json::from_slice::<ConsistencyBundle>(data) else {
        return Outcome::Refused;
    };
    let by_log = bundle.verify(&KEYS.log_key());
    let cosigners = KEYS.cosigners();
    let by_members = bundle.verify_cosigned(&cosigners, 2);
    if let Some(old) = &bundle.old_checkpoint {
        let trusted: &CheckpointBody = &old.body;
        let from_trusted = bundle.verify_from_trusted(trusted, &cosigners, 2);
        assert_eq!(
            from_trusted.is_ok(),
            by_members.is_ok(),
            "a proof from its own old end is as good as the proof"
        );
    }
    by_log.or(by_members).into()
}

/// A peer's Raft request: the first byte picks the RPC, the rest is its body.
/// Appended batches' entries are decoded as the state machine will.
pub fn raft_message(data: &[u8]) -> Outcome {
    let Some((&kind, body)) = data.split_first() else {
        return Outcome::Refused;
    };
    let rpc = match kind % 3 {
        0 => Rpc::Append,
        1 => Rpc::Vote,
        _ => Rpc::Snapshot,
    };
    match decode_request(rpc, body) {
        Ok(RaftRequest::Append(req)) => {
            for entry in &req.entries {
                if let openraft::EntryPayload::Normal(batch) = &entry.payload {
                    for tx in &batch.txs {
                        ledger_tx(tx);
                    }
                }
            }
            Outcome::Accepted
        }
        Ok(_) => Outcome::Accepted,
        Err(_) => Outcome::Refused,
    }
}

/// A QUIC stream's bytes, pushed in pieces as they arrive: the first byte
/// sets the piece size, so that the fuzzer explores frame boundaries too.
pub fn quic_frames(data: &[u8]) -> Outcome {
    use yilian_federated::protocol::{FrameDecoder, decode_body, encode};
    let Some((&piece, stream)) = data.split_first() else {
        return Outcome::Refused;
    };
    let mut decoder = FrameDecoder::default();
    let mut accepted = false;
    for chunk in stream.chunks(usize::from(piece).max(1)) {
        decoder.push(chunk);
        loop {
            match decoder.next_message() {
                Ok(Some(m)) => {
                    // Compared as bytes: a weights chunk may carry NaN.
                    if let Ok(frame) = encode(&m) {
                        let again = decode_body(&frame[4..]).expect("an encoded message decodes");
                        assert!(
                            encode(&again).is_ok_and(|f| f == frame),
                            "a message survives encoding"
                        );
                    }
                    accepted = true;
                }
                Ok(None) => break,
                Err(_) => return Outcome::Refused,
            }
        }
    }
    if accepted {
        Outcome::Accepted
    } else {
        Outcome::Refused
    }
}

/// A KMS envelope (ciphertext with its key id and version).
pub fn kms_envelope(data: &[u8]) -> Outcome {
    let Ok(env) = yilian_kms::envelope::Envelope::decode(data) else {
        return Outcome::Refused;
    };
    assert_eq!(env.encode(), data, "an envelope has one encoding");
    Outcome::Accepted
}

/// An engineer's task file, training or evaluation.
pub fn task_toml(data: &[u8]) -> Outcome {
    let Ok(text) = std::str::from_utf8(data) else {
        return Outcome::Refused;
    };
    let Ok(task) = yilian_federated::task::TaskFile::from_toml(text) else {
        return Outcome::Refused;
    };
    if let yilian_federated::task::TaskFile::Training(spec) = &task {
        spec.model
            .param_count()
            .expect("a checked task's model has a size");
    }
    Outcome::Accepted
}

/// A model spec as JSON (task offers and safetensors metadata carry one).
pub fn model_spec(data: &[u8]) -> Outcome {
    let Ok(spec) = serde_json::from_slice::<yilian_models::ModelSpec>(data) else {
        return Outcome::Refused;
    };
    let shapes = spec.shapes();
    let params = spec.param_count();
    let outputs = spec.outputs();
    assert_eq!(
        shapes.is_ok(),
        params.is_ok(),
        "a spec's shapes and parameters are checked alike"
    );
    if outputs.is_ok() {
        assert!(shapes.is_ok(), "a spec with outputs has shapes");
    }
    params.into()
}

/// Model weights in safetensors, with the spec in their metadata.
pub fn safetensors(data: &[u8]) -> Outcome {
    use yilian_models::{from_safetensors_bytes, to_safetensors_bytes};
    let Ok((spec, weights)) = from_safetensors_bytes(data, None) else {
        return Outcome::Refused;
    };
    let bytes = to_safetensors_bytes(&spec, &weights).expect("decoded weights encode");
    let (spec2, weights2) = from_safetensors_bytes(&bytes, None).expect("encoded weights decode");
    assert_eq!(spec2, spec);
    assert_eq!(
        weights2.iter().map(|w| w.to_bits()).collect::<Vec<_>>(),
        weights.iter().map(|w| w.to_bits()).collect::<Vec<_>>()
    );
    Outcome::Accepted
}

/// A device's training CSV: the first byte picks header and label column.
pub fn csv_rows(data: &[u8]) -> Outcome {
    use yilian_models::{Dataset, LabelColumn};
    let Some((&mode, body)) = data.split_first() else {
        return Outcome::Refused;
    };
    let label = match mode % 3 {
        0 => LabelColumn::Last,
        1 => LabelColumn::Index(0),
        _ => LabelColumn::Name("label".into()),
    };
    let classes = (mode & 0x80 != 0).then_some(10);
    let Ok(ds) = Dataset::from_csv_reader(body, mode % 3 == 2 || mode & 0x40 != 0, &label, classes)
    else {
        return Outcome::Refused;
    };
    for i in 0..ds.len() {
        assert!(ds.row(i).iter().all(|v| v.is_finite()), "rows are finite");
    }
    let _ = ds.class_counts();
    Outcome::Accepted
}

/// snarkjs JSON: a verification key, a proof or public inputs.
pub fn snarkjs_json(data: &[u8]) -> Outcome {
    use yilian_zk::snarkjs::{
        ProofJson, VerificationKeyJson, export_proof, export_public, export_vk, import_proof,
        import_public, import_vk,
    };
    if let Ok(j) = serde_json::from_slice::<VerificationKeyJson>(data) {
        let Ok(vk) = import_vk(&j) else {
            return Outcome::Refused;
        };
        let again = import_vk(&export_vk(&vk)).expect("an exported key imports");
        assert_eq!(again, vk);
        return Outcome::Accepted;
    }
    if let Ok(j) = serde_json::from_slice::<ProofJson>(data) {
        let Ok(p) = import_proof(&j) else {
            return Outcome::Refused;
        };
        assert_eq!(import_proof(&export_proof(&p)).expect("re-imports"), p);
        return Outcome::Accepted;
    }
    if let Ok(j) = serde_json::from_slice::<Vec<String>>(data) {
        let Ok(inputs) = import_public(&j) else {
            return Outcome::Refused;
        };
        assert_eq!(
            import_public(&export_public(&inputs)).expect("re-imports"),
            inputs
        );
        return Outcome::Accepted;
    }
    Outcome::Refused
}

/// A powers-of-tau file, as a ceremony imports it.
pub fn ptau(data: &[u8]) -> Outcome {
    use ark_std::rand::SeedableRng;
    let Ok(acc) = yilian_zk::ceremony::ptau::read(data) else {
        return Outcome::Refused;
    };
    let mut rng = ark_std::rand::rngs::StdRng::seed_from_u64(0);
    acc.check_shape(0, &mut rng).into()
}

/// A customer record, plain or encrypted, as JSON.
pub fn zk_record(data: &[u8]) -> Outcome {
    use yilian_zk::record::{EncryptedRecord, Record};
    if let Ok(r) = serde_json::from_slice::<Record>(data) {
        return r.encode().into();
    }
    if let Ok(r) = serde_json::from_slice::<EncryptedRecord>(data) {
        let again: EncryptedRecord =
            serde_json::from_str(&serde_json::to_string(&r).expect("serialises"))
                .expect("re-parses");
        assert_eq!(again, r);
        return Outcome::Accepted;
    }
    Outcome::Refused
}
