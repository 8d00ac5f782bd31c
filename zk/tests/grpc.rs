//! The ZK API over gRPC with mutual-TLS identities from a real admission
//! authority and a real ledger: holders register anchored records and
//! sets, verifiers get proven answers (true and false) that anyone admitted
//! can check, under the holder's grants and disclosure budget; every refusal
//! carries a precise status and changes nothing but the ledger's record of
//! it (a ZkQuery entry, or the KMS's audit).

use std::path::Path;
use std::sync::{Arc, OnceLock};
use std::time::Instant;

use ark_bn254::Fr;
use ark_ff::UniformRand;
use tonic::Code;
use tonic::service::Routes;
use tonic::transport::Channel;
use yilian_identity::{Identity, Role};
use yilian_kms::service::LedgerKmsNode;
use yilian_kms::{Caller, KeyKind};
use yilian_ledger::{Ledger, Payload, Transaction};
use yilian_testkit::Network;
use yilian_zk::query::Predicate;
use yilian_zk::record::{CipherKey, EncryptedRecord, FieldValue, Record};
use yilian_zk::service::{self, KeySource, ZkClient, ZkService, pb};
use yilian_zk::{KYC_STATEMENT, fr_to_bytes, keys, verifier};

const NAMES: &[(&str, Role)] = &[
    ("node", Role::Member),
    ("holder", Role::DataHolder),
    ("other-holder", Role::DataHolder),
    ("verifier", Role::Verifier),
    ("auditor", Role::Auditor),
    ("customer", Role::Device),
];
const NODE: usize = 0;
const HOLDER: usize = 1;
const OTHER_HOLDER: usize = 2;
const VERIFIER: usize = 3;
const AUDITOR: usize = 4;
const CUSTOMER: usize = 5;

/// One single-party setup for the whole test binary (it takes seconds);
/// each node gets a copy of the key files, as if it had made them before.
fn shared_keys() -> &'static Path {
    static DIR: OnceLock<tempfile::TempDir> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let (pk, vk) = keys::setup(yilian_zk::Shape::F8, &mut keys::os_rng()).unwrap();
        keys::write_key(&dir.path().join(format!("{KYC_STATEMENT}.pk")), &pk).unwrap();
        keys::write_key(&dir.path().join(format!("{KYC_STATEMENT}.vk")), &vk).unwrap();
        dir
    })
    .path()
}

/// The AES-256-GCM master key each holder seals its record keys under
/// (KMS key names are global).
fn wrap_key(who: usize) -> String {
    format!("record-keys-{}", NAMES[who].0)
}

struct Net {
    net: Network,
    ids: Vec<Identity>,
    ledger: Ledger,
    addr: String,
    service: ZkService,
    kms: Arc<LedgerKmsNode>,
    authority: ed25519_dalek::SigningKey,
}

impl Net {
    fn dir(&self) -> &Path {
        self.net.dir.path()
    }

    async fn client(&self, who: usize) -> ZkClient<Channel> {
        let channel = yilian_identity::grpc::connect(&self.addr, &self.ids[who])
            .await
            .unwrap();
        ZkClient::new(channel).max_decoding_message_size(service::MAX_MESSAGE_BYTES)
    }
}

/// A ledger with genesis and every identity admitted, and a node serving
/// the ZK API over mutual TLS; `with_keys` gives it the shared key files.
async fn net(with_keys: bool) -> Net {
    let net = Network::new("zk-test").await;
    let mut ids = vec![net.load("node")];
    ids.extend(net.admit_all(&NAMES[1..]).await);
    let (dir, ledger) = (net.dir.path(), net.ledger.clone());
    if with_keys {
        let key_dir = dir.join("zk");
        std::fs::create_dir_all(&key_dir).unwrap();
        for ext in ["pk", "vk"] {
            let name = format!("{KYC_STATEMENT}.{ext}");
            std::fs::copy(shared_keys().join(&name), key_dir.join(&name)).unwrap();
        }
    }
    let (kms, _) =
        yilian_kms::service::with_key_file(dir, ledger.clone(), ids[NODE].signing_key().clone())
            .unwrap();
    for who in [HOLDER, OTHER_HOLDER] {
        kms.kms()
            .await
            .unwrap()
            .create_key(
                &Caller::from(ids[who].principal()),
                &wrap_key(who),
                KeyKind::Aes256Gcm,
                false,
            )
            .await
            .unwrap();
    }
    // The shared development keys are loaded; without them the node makes
    // its own (the first-use test).
    let service = ZkService::open(
        dir,
        ledger.clone(),
        &ids[NODE],
        kms.clone(),
        KeySource::InsecureDevSetup,
    )
    .unwrap();
    let routes = Routes::new(service.clone().into_server());
    let addr = yilian_testkit::serve(&ids[NODE], Default::default(), routes).await;
    let authority = net.authority();
    Net {
        net,
        ids,
        ledger,
        addr,
        service,
        kms,
        authority,
    }
}

fn customer(id_number: &str) -> Record {
    Record {
        fields: vec![
            ("id_number".into(), FieldValue::Identifier(id_number.into())),
            ("birth_date".into(), FieldValue::Integer(19_900_101)),
            ("income".into(), FieldValue::Integer(120_000)),
            ("credit_score".into(), FieldValue::Integer(720)),
        ],
    }
}

/// A fresh cipher key as the KMS's `ZkKey` would issue it.
fn zk_key() -> CipherKey {
    let mut rng = keys::os_rng();
    CipherKey::new([Fr::rand(&mut rng), Fr::rand(&mut rng)])
}

fn key_bytes(key: &CipherKey) -> Vec<u8> {
    key.to_kms_bytes().to_vec()
}

fn encrypt(record_id: &str, id_number: &str, key: &CipherKey) -> EncryptedRecord {
    EncryptedRecord::encrypt(record_id, &customer(id_number), key, rand::random::<u128>()).unwrap()
}

/// The holder anchors its record on the ledger (as `yilian ledger submit`
/// would); returns the entry index.
async fn anchor(net: &Net, who: usize, record: &EncryptedRecord) -> u64 {
    let a = record.anchor().unwrap();
    net.ledger
        .submit(
            Transaction::new(Payload::RecordAnchor {
                record_id: a.record_id,
                ciphertext_hash: a.ciphertext_hash,
                key_commitment: a.key_commitment,
            })
            .sign(net.ids[who].signing_key()),
        )
        .await
        .unwrap()
        .index
}

fn register_request(record: &EncryptedRecord, key: &[u8]) -> pb::RegisterRecordRequest {
    pb::RegisterRecordRequest {
        record: Some(record.into()),
        key: key.to_vec(),
        wrap_key_id: wrap_key(HOLDER),
        customer: Vec::new(),
    }
}

/// Anchors and registers a record by the holder; returns it and its key.
async fn registered(net: &Net, record_id: &str, id_number: &str) -> (EncryptedRecord, CipherKey) {
    let key = zk_key();
    let record = encrypt(record_id, id_number, &key);
    let index = anchor(net, HOLDER, &record).await;
    let r = net
        .client(HOLDER)
        .await
        .register_record(register_request(&record, &key_bytes(&key)))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.anchor_index, index);
    assert!(!r.replaced);
    (record, key)
}

/// A query under no grant (refused, unless refused for something else first).
fn query(record_id: &str, predicates: &[Predicate]) -> pb::QueryRequest {
    pb::QueryRequest {
        record_id: record_id.into(),
        predicates: service::predicates_to_pb(predicates),
        grant_id: String::new(),
    }
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

/// The holder's grant to the verifier for exactly `allowed`, `uses` times,
/// for an hour, with the budget raised to fit them.
fn grant_request(record_id: &str, net: &Net, allowed: &[Predicate], uses: u32) -> pb::GrantRequest {
    pb::GrantRequest {
        record_id: record_id.into(),
        verifier: net.ids[VERIFIER].principal().public_key.to_vec(),
        allowed: service::predicates_to_pb(allowed),
        max_uses: Some(uses),
        not_before_ms: 0,
        not_after_ms: now_ms() + 3_600_000,
        budget: allowed
            .iter()
            .map(|p| (p.fields()[0].to_owned(), 16))
            .collect(),
        customer_signature: Vec::new(),
        consent_id: "c-1".into(),
    }
}

/// Whether the node lacks the record: its holder's grant on it is NotFound.
async fn not_stored(net: &Net, record_id: &str) -> bool {
    let income = Predicate::Gte {
        field: "income".into(),
        value: 1,
    };
    let r = net
        .client(HOLDER)
        .await
        .grant(grant_request(record_id, net, &[income], 1))
        .await;
    matches!(r, Err(e) if e.code() == Code::NotFound)
}

/// A query under a fresh one-use grant from the holder for exactly these predicates.
async fn granted_query(net: &Net, record_id: &str, predicates: &[Predicate]) -> pb::QueryRequest {
    let g = net
        .client(HOLDER)
        .await
        .grant(grant_request(record_id, net, predicates, 1))
        .await
        .unwrap()
        .into_inner();
    pb::QueryRequest {
        grant_id: g.grant_id,
        ..query(record_id, predicates)
    }
}

fn verify_request(p: &pb::Proof) -> pb::VerifyRequest {
    pb::VerifyRequest {
        statement: p.statement.clone(),
        proof: p.proof.clone(),
        public_inputs: p.public_inputs.clone(),
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verifiers_get_proven_answers_true_and_false_that_anyone_admitted_can_check() {
    let net = net(true).await;
    let (record, _key) = registered(&net, "customer-0001", "310101199001011234").await;
    let mut verifier_client = net.client(VERIFIER).await;

    // The verifying key is anchored on the ledger by the node.
    let vk = verifier_client
        .verifying_key(pb::VerifyingKeyRequest::default())
        .await
        .unwrap()
        .into_inner();
    let entry = net.ledger.entry(vk.anchor_index).unwrap();
    assert_eq!(entry.signer, net.ids[NODE].principal().public_key);
    assert_eq!(
        entry.tx.payload,
        Payload::VerifyingKeyAnchor {
            statement: KYC_STATEMENT.into(),
            vk_hash: vk.vk_hash.as_slice().try_into().unwrap(),
        }
    );
    let vk_parsed: ark_groth16::VerifyingKey<ark_bn254::Bn254> =
        keys::from_bytes("vk", &vk.verifying_key).unwrap();
    assert_eq!(keys::vk_hash(&vk_parsed).to_vec(), vk.vk_hash);
    assert!(vk.snarkjs_json.contains("\"protocol\""));

    let started = Instant::now();
    let yes = verifier_client
        .query(
            granted_query(
                &net,
                "customer-0001",
                &[Predicate::Eq {
                    field: "id_number".into(),
                    value: FieldValue::Identifier("310101199001011234".into()),
                }],
            )
            .await,
        )
        .await
        .unwrap()
        .into_inner();
    eprintln!("eq query proved in {:?}", started.elapsed());
    assert!(yes.answer);
    assert_eq!(yes.holder, net.ids[HOLDER].principal().public_key.to_vec());
    let started = Instant::now();
    let no = verifier_client
        .query(
            granted_query(
                &net,
                "customer-0001",
                &[
                    Predicate::Between {
                        field: "income".into(),
                        low: 150_000,
                        high: 1_000_000,
                    },
                    Predicate::Lte {
                        field: "birth_date".into(),
                        value: 20_071_125,
                    },
                ],
            )
            .await,
        )
        .await
        .unwrap()
        .into_inner();
    eprintln!("range query proved in {:?}", started.elapsed());
    assert!(!no.answer, "income 120000 is not in [150000, 1000000]");
    let yes_proof = yes.proof.unwrap();
    let no_proof = no.proof.unwrap();
    assert_eq!(yes_proof.vk_hash, vk.vk_hash);

    // Anyone admitted checks them on the node, against the ledger's anchor.
    let mut auditor = net.client(AUDITOR).await;
    for (p, answer) in [(&yes_proof, true), (&no_proof, false)] {
        let v = auditor
            .verify(verify_request(p))
            .await
            .unwrap()
            .into_inner();
        assert!(v.valid, "{}", v.reason);
        assert_eq!(v.answer, answer);
        assert_eq!(v.record_id, "customer-0001");
        assert_eq!(v.anchor_index, yes.anchor_index);
        assert_eq!(v.holder, net.ids[HOLDER].principal().public_key.to_vec());
        // ... with the verifying key given explicitly, and restricted to the holder.
        let v = auditor
            .verify(pb::VerifyRequest {
                verifying_key: vk.verifying_key.clone(),
                holder: net.ids[HOLDER].principal().public_key.to_vec(),
                ..verify_request(p)
            })
            .await
            .unwrap()
            .into_inner();
        assert!(v.valid && v.answer == answer, "{}", v.reason);
        // ... and offline, with nothing but the verifying key and the anchor.
        let proof = service::proof_from_pb(p).unwrap();
        let got = verifier::verify_against_anchor(
            &keys::prepare(&vk_parsed),
            &proof.proof,
            &proof.public,
            &record.anchor().unwrap(),
        )
        .unwrap();
        assert_eq!(got, answer);
    }

    // Another holder's anchors do not vouch for this proof.
    let v = auditor
        .verify(pb::VerifyRequest {
            holder: net.ids[OTHER_HOLDER].principal().public_key.to_vec(),
            ..verify_request(&yes_proof)
        })
        .await
        .unwrap()
        .into_inner();
    assert!(!v.valid);
    assert!(v.reason.contains("no record anchor"), "{}", v.reason);

    // Tampering is caught: the flipped answer, another ciphertext, another
    // query's proof, proof bytes that are not a proof.
    let invalid = |reason: &str, v: pb::VerifyResponse| {
        assert!(!v.valid, "tampered proof accepted");
        assert!(
            v.reason.contains(reason),
            "reason {:?} lacks {reason:?}",
            v.reason
        );
    };
    let mut flipped = verify_request(&no_proof);
    flipped.public_inputs[yilian_zk::PUBLIC_INPUTS - 1] = fr_to_bytes(&Fr::from(1u64)).to_vec();
    invalid(
        "does not verify",
        auditor.verify(flipped).await.unwrap().into_inner(),
    );
    let mut other_ciphertext = verify_request(&yes_proof);
    other_ciphertext.public_inputs[1] = fr_to_bytes(&Fr::from(7u64)).to_vec();
    invalid(
        "another ciphertext",
        auditor.verify(other_ciphertext).await.unwrap().into_inner(),
    );
    let swapped = pb::VerifyRequest {
        proof: no_proof.proof.clone(),
        ..verify_request(&yes_proof)
    };
    invalid(
        "does not verify",
        auditor.verify(swapped).await.unwrap().into_inner(),
    );
    let mut garbage = verify_request(&yes_proof);
    garbage.proof[5] ^= 0x40;
    let v = auditor.verify(garbage).await.unwrap().into_inner();
    assert!(!v.valid);
    let mut short = verify_request(&yes_proof);
    short.public_inputs.pop();
    invalid(
        "public inputs",
        auditor.verify(short).await.unwrap().into_inner(),
    );

    // A verifying key nobody anchored is not trusted, whatever it verifies.
    let (_, rogue_vk) = keys::setup(yilian_zk::Shape::F8, &mut keys::os_rng()).unwrap();
    let v = auditor
        .verify(pb::VerifyRequest {
            verifying_key: keys::to_bytes(&rogue_vk),
            ..verify_request(&yes_proof)
        })
        .await
        .unwrap()
        .into_inner();
    invalid("not anchored", v);

    // Request errors are statuses, not answers.
    let e = auditor
        .verify(pb::VerifyRequest {
            statement: "kyc-v9".into(),
            ..verify_request(&yes_proof)
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::NotFound, "{e:?}");
    let e = auditor
        .verify(pb::VerifyRequest {
            verifying_key: vec![1, 2, 3],
            ..verify_request(&yes_proof)
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_role_does_only_its_part_and_refusals_change_nothing() {
    let net = net(true).await;
    let (record, key) = registered(&net, "customer-0002", "110101198001010011").await;
    let size = net.ledger.len();

    // A verifier cannot register records or sets.
    let mut verifier_client = net.client(VERIFIER).await;
    let other = encrypt("customer-x", "1", &key);
    let e = verifier_client
        .register_record(register_request(&other, &key_bytes(&key)))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");
    assert!(
        not_stored(&net, "customer-x").await,
        "the refused record was not stored"
    );
    let e = verifier_client
        .register_set(pb::RegisterSetRequest {
            identifiers: vec!["a".into(), "b".into()],
            elements: vec![],
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");
    let root = yilian_circuits::set::SortedSet::build(&[
        yilian_circuits::kyc::identifier("a"),
        yilian_circuits::kyc::identifier("b"),
    ])
    .unwrap()
    .root();
    let e = verifier_client
        .query(
            granted_query(
                &net,
                "customer-0002",
                &[Predicate::In {
                    field: "id_number".into(),
                    root,
                }],
            )
            .await,
        )
        .await
        .unwrap_err();
    assert_eq!(
        e.code(),
        Code::FailedPrecondition,
        "the refused set was not stored: {e:?}"
    );

    // Holders and auditors cannot ask queries.
    let q = query(
        "customer-0002",
        &[Predicate::Gte {
            field: "income".into(),
            value: 1,
        }],
    );
    for who in [HOLDER, AUDITOR, NODE] {
        let e = net.client(who).await.query(q.clone()).await.unwrap_err();
        assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");
        assert!(e.message().contains("may not ask ZK queries"), "{e:?}");
    }

    // Another holder cannot take over a record id, even with its own anchor.
    let theirs = zk_key();
    let hijack = encrypt("customer-0002", "999", &theirs);
    anchor(&net, OTHER_HOLDER, &hijack).await;
    let mut req = register_request(&hijack, &key_bytes(&theirs));
    req.wrap_key_id = wrap_key(OTHER_HOLDER);
    let e = net
        .client(OTHER_HOLDER)
        .await
        .register_record(req)
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");
    assert!(e.message().contains("another data holder"), "{e:?}");
    // The holder's registration is untouched: registering again replaces
    // its own record, still matched with its original anchor.
    let r = net
        .client(HOLDER)
        .await
        .register_record(register_request(&record, &key_bytes(&key)))
        .await
        .unwrap()
        .into_inner();
    assert!(r.replaced);
    // registered() added the anchor and the KMS's audit of sealing the key.
    assert_eq!(r.anchor_index, size - 2);
    assert_eq!(
        net.ledger.len(),
        size + 4,
        "only the other holder's anchor, the audit of sealing the key again, and the grant the set question was asked under (its KMS audit and QueryGrant)"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_unanchored_and_malformed_requests_get_precise_statuses_and_change_nothing() {
    let net = net(true).await;
    let mut holder = net.client(HOLDER).await;
    let mut verifier_client = net.client(VERIFIER).await;
    let income = |value| Predicate::Gte {
        field: "income".into(),
        value,
    };

    // A verifier without a grant learns nothing, not even whether a record
    // exists; its holder learns that it does not.
    let e = verifier_client
        .query(query("nobody", &[income(1)]))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");
    let e = holder
        .grant(grant_request("nobody", &net, &[income(1)], 1))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::NotFound, "{e:?}");
    assert!(e.message().contains("nobody"));

    // Not on the ledger; on the ledger but for another ciphertext; anchored
    // by someone else.
    let key = zk_key();
    let record = encrypt("customer-0003", "120101197001010022", &key);
    let e = holder
        .register_record(register_request(&record, &key_bytes(&key)))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition, "{e:?}");
    assert!(e.message().contains("no RecordAnchor"), "{e:?}");
    anchor(&net, OTHER_HOLDER, &record).await;
    let e = holder
        .register_record(register_request(&record, &key_bytes(&key)))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition, "{e:?}");
    let anchored_then_reencrypted = encrypt("customer-0003", "120101197001010022", &key);
    anchor(&net, HOLDER, &anchored_then_reencrypted).await;
    let e = holder
        .register_record(register_request(&record, &key_bytes(&key)))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition, "{e:?}");
    assert!(e.message().contains("another ciphertext"), "{e:?}");

    // Malformed registrations.
    let size = net.ledger.len();
    let wrong_key = zk_key();
    let mut short_ciphertext: pb::EncryptedRecord = (&anchored_then_reencrypted).into();
    short_ciphertext.ciphertext.pop();
    let mut bad_nonce: pb::EncryptedRecord = (&anchored_then_reencrypted).into();
    bad_nonce.nonce = vec![1; 17];
    let mut duplicate_field: pb::EncryptedRecord = (&anchored_then_reencrypted).into();
    duplicate_field.schema[1].name = "id_number".into();
    let good = key_bytes(&key);
    let cases: Vec<(&str, pb::RegisterRecordRequest)> = vec![
        (
            "key of another commitment",
            register_request(&anchored_then_reencrypted, &key_bytes(&wrong_key)),
        ),
        (
            "key of 63 bytes",
            register_request(&anchored_then_reencrypted, &good[..63]),
        ),
        (
            "key elements out of range",
            register_request(&anchored_then_reencrypted, &[0xff; 64]),
        ),
        (
            "no record",
            pb::RegisterRecordRequest {
                record: None,
                key: good.clone(),
                wrap_key_id: wrap_key(HOLDER),
                customer: Vec::new(),
            },
        ),
        (
            "short ciphertext",
            pb::RegisterRecordRequest {
                record: Some(short_ciphertext),
                key: good.clone(),
                wrap_key_id: wrap_key(HOLDER),
                customer: Vec::new(),
            },
        ),
        (
            "17-byte nonce",
            pb::RegisterRecordRequest {
                record: Some(bad_nonce),
                key: good.clone(),
                wrap_key_id: wrap_key(HOLDER),
                customer: Vec::new(),
            },
        ),
        (
            "duplicate field",
            pb::RegisterRecordRequest {
                record: Some(duplicate_field),
                key: good.clone(),
                wrap_key_id: wrap_key(HOLDER),
                customer: Vec::new(),
            },
        ),
    ];
    for (what, req) in cases {
        let e = holder.register_record(req).await.unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument, "{what}: {e:?}");
    }
    // None of it was stored.
    assert!(not_stored(&net, "customer-0003").await);

    // Malformed queries on a registered record.
    let (_record, _key) = registered(&net, "customer-0004", "130101196001010033").await;
    let size_after = net.ledger.len();
    assert_eq!(
        size_after,
        size + 2,
        "its anchor and the audit of sealing its key"
    );
    let pred = |field: &str, op: pb::Op, value: Option<pb::predicate::Value>, high| pb::Predicate {
        field: field.into(),
        op: op as i32,
        value,
        high,
        any_of: 0,
    };
    use pb::predicate::Value;
    let fine = pred("income", pb::Op::Gte, Some(Value::Integer(1)), None);
    let cases: Vec<(&str, Vec<pb::Predicate>)> = vec![
        ("no predicates", vec![]),
        (
            "unknown field",
            vec![pred("salary", pb::Op::Gte, Some(Value::Integer(1)), None)],
        ),
        (
            "ordering on an identifier",
            vec![pred("id_number", pb::Op::Lt, Some(Value::Integer(1)), None)],
        ),
        (
            "identifier constant on an integer field",
            vec![pred(
                "income",
                pb::Op::Eq,
                Some(Value::Identifier("x".into())),
                None,
            )],
        ),
        (
            "missing op",
            vec![pred(
                "income",
                pb::Op::Unspecified,
                Some(Value::Integer(1)),
                None,
            )],
        ),
        (
            "unknown op",
            vec![pb::Predicate {
                op: 42,
                ..fine.clone()
            }],
        ),
        (
            "missing constant",
            vec![pred("income", pb::Op::Gt, None, None)],
        ),
        (
            "between without high",
            vec![pred(
                "income",
                pb::Op::Between,
                Some(Value::Integer(1)),
                None,
            )],
        ),
        (
            "between upside down",
            vec![pred(
                "income",
                pb::Op::Between,
                Some(Value::Integer(10)),
                Some(9),
            )],
        ),
        (
            "high bound on gte",
            vec![pred(
                "income",
                pb::Op::Gte,
                Some(Value::Integer(1)),
                Some(2),
            )],
        ),
        ("five comparisons", vec![fine.clone(); 5]),
        (
            "five comparisons in one OR",
            vec![
                pb::Predicate {
                    any_of: 1,
                    ..fine.clone()
                };
                5
            ],
        ),
        (
            "ordering against an identifier field",
            vec![pred(
                "income",
                pb::Op::Lt,
                Some(Value::OtherField("id_number".into())),
                None,
            )],
        ),
        (
            "against an unknown field",
            vec![pred(
                "income",
                pb::Op::Gte,
                Some(Value::OtherField("salary".into())),
                None,
            )],
        ),
        (
            "between against a field",
            vec![pred(
                "income",
                pb::Op::Between,
                Some(Value::OtherField("credit_score".into())),
                Some(5),
            )],
        ),
        (
            "set test against a field",
            vec![pred(
                "id_number",
                pb::Op::In,
                Some(Value::OtherField("name".into())),
                None,
            )],
        ),
        (
            "set root out of range",
            vec![pred(
                "id_number",
                pb::Op::In,
                Some(Value::Root(vec![0xff; 32])),
                None,
            )],
        ),
        (
            "set root of 31 bytes",
            vec![pred(
                "id_number",
                pb::Op::Nin,
                Some(Value::Root(vec![1; 31])),
                None,
            )],
        ),
        (
            "two set predicates",
            vec![
                pred(
                    "id_number",
                    pb::Op::In,
                    Some(Value::Root(vec![1; 32])),
                    None,
                ),
                pred(
                    "id_number",
                    pb::Op::Nin,
                    Some(Value::Root(vec![1; 32])),
                    None,
                ),
            ],
        ),
    ];
    // Under a grant, so that they reach the record's schema.
    let granted = granted_query(&net, "customer-0004", &[income(1)]).await;
    for (what, predicates) in cases {
        let e = verifier_client
            .query(pb::QueryRequest {
                record_id: "customer-0004".into(),
                predicates,
                grant_id: granted.grant_id.clone(),
            })
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument, "{what}: {e:?}");
    }
    // A set the holder never registered.
    let e = verifier_client
        .query(pb::QueryRequest {
            record_id: "customer-0004".into(),
            predicates: vec![pred(
                "id_number",
                pb::Op::In,
                Some(Value::Root(vec![1; 32])),
                None,
            )],
            grant_id: granted.grant_id.clone(),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition, "{e:?}");
    assert!(e.message().contains("register it first"), "{e:?}");

    // Malformed sets.
    let e = holder
        .register_set(pb::RegisterSetRequest {
            identifiers: vec!["a".into(), "a".into()],
            elements: vec![],
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
    let e = holder
        .register_set(pb::RegisterSetRequest {
            identifiers: vec![],
            elements: vec![vec![0xff; 32]],
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");

    // Nothing above wrote to the ledger but the grant the malformed queries
    // were asked under (its KMS audit and its QueryGrant): every refusal
    // came before consent was counted and before proving.
    assert_eq!(net.ledger.len(), size_after + 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_are_made_on_first_use_anchored_once_and_reloaded_after_restart() {
    let net = net(false).await;
    let key_dir = net.dir().join("zk");
    assert!(!key_dir.join(format!("{KYC_STATEMENT}.pk")).exists());
    let size = net.ledger.len();
    let started = Instant::now();
    let vk_hash = net
        .service
        .prepare_keys(yilian_zk::Shape::F8)
        .await
        .unwrap();
    eprintln!("single-party setup on first use: {:?}", started.elapsed());
    assert!(key_dir.join(format!("{KYC_STATEMENT}.pk")).exists());
    assert_eq!(net.ledger.len(), size + 1);
    assert_eq!(
        net.ledger.entry(size).unwrap().tx.payload,
        Payload::VerifyingKeyAnchor {
            statement: KYC_STATEMENT.into(),
            vk_hash,
        }
    );
    // Asked again over the wire: the same key, not anchored again.
    let vk = net
        .client(AUDITOR)
        .await
        .verifying_key(pb::VerifyingKeyRequest {
            statement: KYC_STATEMENT.into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(vk.vk_hash, vk_hash.to_vec());
    assert_eq!(vk.anchor_index, size);

    // Another service over the same files (as after a restart; a second
    // store file, since the first is still open) loads them and finds its
    // anchor on the ledger.
    let data = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(data.path().join("zk")).unwrap();
    for ext in ["pk", "vk"] {
        let name = format!("{KYC_STATEMENT}.{ext}");
        std::fs::copy(key_dir.join(&name), data.path().join("zk").join(&name)).unwrap();
    }
    let again = ZkService::open(
        data.path(),
        net.ledger.clone(),
        &net.ids[NODE],
        net.kms.clone(),
        KeySource::InsecureDevSetup,
    )
    .unwrap();
    assert_eq!(
        again.prepare_keys(yilian_zk::Shape::F8).await.unwrap(),
        vk_hash
    );
    assert_eq!(net.ledger.len(), size + 1, "no second anchor");

    // Without --insecure-dev-setup, a node makes no keys and does not take
    // key files: it says where the ceremony's transcript goes.
    let empty = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(empty.path().join("zk")).unwrap();
    for ext in ["pk", "vk"] {
        let name = format!("{KYC_STATEMENT}.{ext}");
        std::fs::copy(key_dir.join(&name), empty.path().join("zk").join(&name)).unwrap();
    }
    let none = ZkService::open(
        empty.path(),
        net.ledger.clone(),
        &net.ids[NODE],
        net.kms.clone(),
        KeySource::Ceremony(empty.path().join("zk").join("ceremony")),
    )
    .unwrap();
    let e = none.prepare_keys(yilian_zk::Shape::F8).await.unwrap_err();
    assert!(matches!(e, yilian_zk::ZkError::NoKeys(_)), "{e}");
    assert!(e.to_string().contains("ceremony directory"), "{e}");
    assert_eq!(net.ledger.len(), size + 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn record_keys_are_sealed_at_rest_and_a_sealed_kms_proves_nothing() {
    use std::os::unix::fs::PermissionsExt;
    let net = net(true).await;
    let (record, key) = registered(&net, "customer-0005", "140101195001010044").await;
    let mut verifier_client = net.client(VERIFIER).await;
    let income = [Predicate::Gte {
        field: "income".into(),
        value: 1,
    }];
    let ask = granted_query(&net, "customer-0005", &income).await;
    assert!(
        verifier_client
            .query(ask)
            .await
            .unwrap()
            .into_inner()
            .answer
    );

    // The store is owner-only and its bytes hold neither key element.
    let store = net.dir().join("zk.redb");
    let mode = std::fs::metadata(&store).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "zk.redb is mode {mode:o}");
    let raw = std::fs::read(&store).unwrap();
    for element in key.elements() {
        let bytes = fr_to_bytes(element);
        assert!(
            !raw.windows(32).any(|w| w == bytes),
            "a key element is in zk.redb in plaintext"
        );
    }

    // Sealing under a key the holder does not own, or under no key, is
    // refused and stores nothing.
    let fresh = zk_key();
    let other = encrypt("customer-0006", "150101194001010055", &fresh);
    anchor(&net, HOLDER, &other).await;
    let mut holder = net.client(HOLDER).await;
    for (wrap, code) in [
        (wrap_key(OTHER_HOLDER), Code::PermissionDenied),
        ("no-such-key".to_owned(), Code::NotFound),
        (String::new(), Code::InvalidArgument),
    ] {
        let mut req = register_request(&other, &key_bytes(&fresh));
        req.wrap_key_id = wrap.clone();
        let e = holder.register_record(req).await.unwrap_err();
        assert_eq!(e.code(), code, "{wrap:?}: {e:?}");
    }
    assert!(not_stored(&net, "customer-0006").await);

    // With the KMS sealed the node can neither open a key (no proof) nor
    // seal one (no registration).
    let ask = granted_query(&net, "customer-0005", &income).await;
    net.kms.seal().await;
    let e = verifier_client.query(ask.clone()).await.unwrap_err();
    assert_eq!(e.code(), Code::Unavailable, "{e:?}");
    assert!(e.message().contains("sealed"), "{e:?}");
    let mut req = register_request(&record, &key_bytes(&key));
    req.wrap_key_id = wrap_key(HOLDER);
    let e = holder.register_record(req).await.unwrap_err();
    assert_eq!(e.code(), Code::Unavailable, "{e:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queries_need_the_holders_grant_and_a_binary_search_is_stopped_by_the_budget() {
    let net = net(true).await;
    registered(&net, "customer-0010", "160101193001010066").await;
    net.service
        .prepare_keys(yilian_zk::Shape::F8)
        .await
        .unwrap();
    let r = "customer-0010";
    let score = |value| Predicate::Gte {
        field: "credit_score".into(),
        value,
    };
    let income = |value| Predicate::Gte {
        field: "income".into(),
        value,
    };
    let mut verifier = net.client(VERIFIER).await;
    let mut holder = net.client(HOLDER).await;
    let under = |grant_id: &str, p: Predicate| pb::QueryRequest {
        grant_id: grant_id.into(),
        ..query(r, &[p])
    };
    let last_outcome = || match net.ledger.entry(net.ledger.len() - 1).unwrap().tx.payload {
        Payload::ZkQuery { outcome, .. } => outcome,
        other => panic!("the last entry is {other:?}"),
    };

    // No grant: refused with the reason, no proof, and the refusal recorded.
    let size = net.ledger.len();
    let e = verifier
        .query(query(r, &[income(100_000)]))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");
    assert!(e.message().contains("no grant"), "{e:?}");
    assert_eq!(net.ledger.len(), size + 1);
    assert_eq!(last_outcome(), "refused: no-grant");

    // A grant is one use by default (burn after reading), recorded on the ledger.
    let mut req = grant_request(r, &net, &[income(100_000)], 1);
    req.max_uses = None;
    req.budget.clear();
    let g = holder.grant(req).await.unwrap().into_inner();
    match net.ledger.entry(g.ledger_index).unwrap().tx.payload {
        Payload::QueryGrant {
            grant_id,
            record_id,
            terms_hash,
            ..
        } => {
            assert_eq!(
                (grant_id.as_str(), record_id.as_str()),
                (g.grant_id.as_str(), r)
            );
            assert_eq!(terms_hash.to_vec(), g.terms_hash);
        }
        other => panic!("{other:?}"),
    }
    let yes = verifier
        .query(under(&g.grant_id, income(100_000)))
        .await
        .unwrap();
    assert!(yes.into_inner().answer);
    assert_eq!(last_outcome(), "answered");
    let e = verifier
        .query(under(&g.grant_id, income(100_000)))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");
    assert!(last_outcome().starts_with("refused"));

    // Only the predicates the grant names.
    let g = holder
        .grant(grant_request(r, &net, &[income(100_000)], 5))
        .await
        .unwrap()
        .into_inner();
    let e = verifier
        .query(under(&g.grant_id, income(90_000)))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");
    assert!(e.message().contains("does not allow"), "{e:?}");

    // Binary search on the credit score: two grants each within the default
    // budget of 2, issued before anything was asked; the third distinct
    // threshold is refused when asked, whatever grant it comes under.
    let grant = |allowed: Vec<Predicate>| {
        let mut req = grant_request(r, &net, &allowed, 5);
        req.budget.clear();
        req
    };
    let a = holder
        .grant(grant(vec![score(600), score(700)]))
        .await
        .unwrap()
        .into_inner();
    let b = holder
        .grant(grant(vec![score(650)]))
        .await
        .unwrap()
        .into_inner();
    for t in [700, 600, 700] {
        assert!(verifier.query(under(&a.grant_id, score(t))).await.is_ok());
    }
    let e = verifier
        .query(under(&b.grant_id, score(650)))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");
    assert!(e.message().contains("disclosure budget of 2"), "{e:?}");
    // And now a grant for a third threshold is refused when issued.
    let size = net.ledger.len();
    let e = holder.grant(grant(vec![score(680)])).await.unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");
    assert!(e.message().contains("3 distinct constants"), "{e:?}");
    // Nor may one grant allow more than the budget, on a fresh field.
    let e = holder
        .grant(grant(vec![income(1), income(2), income(3)]))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");
    assert_eq!(net.ledger.len(), size, "refused grants record nothing");

    // Revoked, and not yet valid.
    let g = holder
        .grant(grant_request(r, &net, &[income(100_000)], 5))
        .await
        .unwrap()
        .into_inner();
    let revoked = holder
        .revoke_grant(pb::RevokeGrantRequest {
            grant_id: g.grant_id.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(revoked.uses, 0);
    let e = verifier
        .query(under(&g.grant_id, income(100_000)))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");
    assert!(e.message().contains("revoked"), "{e:?}");
    let mut later = grant_request(r, &net, &[income(100_000)], 5);
    later.not_before_ms = now_ms() + 1_800_000;
    let later = holder.grant(later).await.unwrap().into_inner();
    let e = verifier
        .query(under(&later.grant_id, income(100_000)))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");

    // A verifier whose admission has expired cannot use a grant: refused.
    let lapsed = ed25519_dalek::SigningKey::from_bytes(&[42; 32]);
    net.ledger
        .submit(
            Transaction::new(Payload::Admit {
                org: "org".into(),
                role: Role::Verifier,
                name: "lapsed".into(),
                public_key: lapsed.verifying_key().to_bytes(),
                serial: vec![42],
                not_after_ms: 1,
            })
            .sign(&net.authority),
        )
        .await
        .unwrap();

    // Bad grants are refused with what to fix, and record nothing.
    let size = net.ledger.len();
    let mut cases: Vec<(&str, pb::GrantRequest, Code)> = Vec::new();
    let mut zero = grant_request(r, &net, &[income(1)], 1);
    zero.max_uses = Some(0);
    cases.push(("max_uses", zero, Code::InvalidArgument));
    let mut ended = grant_request(r, &net, &[income(1)], 1);
    ended.not_after_ms = 1;
    cases.push(("not_after_ms", ended, Code::InvalidArgument));
    let mut nobody = grant_request(r, &net, &[income(1)], 1);
    nobody.verifier = net.ids[AUDITOR].principal().public_key.to_vec();
    cases.push((
        "not a current admitted verifier",
        nobody,
        Code::InvalidArgument,
    ));
    let mut expired = grant_request(r, &net, &[income(1)], 1);
    expired.verifier = lapsed.verifying_key().to_bytes().to_vec();
    cases.push((
        "not a current admitted verifier",
        expired,
        Code::InvalidArgument,
    ));
    let mut none = grant_request(r, &net, &[income(1)], 1);
    none.allowed.clear();
    cases.push(("allowed", none, Code::InvalidArgument));
    let unknown_field = grant_request(
        r,
        &net,
        &[Predicate::Gte {
            field: "salary".into(),
            value: 1,
        }],
        1,
    );
    cases.push(("salary", unknown_field, Code::InvalidArgument));
    cases.push((
        "unknown record",
        grant_request("nobody", &net, &[income(1)], 1),
        Code::NotFound,
    ));
    for (what, req, code) in cases {
        let e = holder.grant(req).await.unwrap_err();
        assert_eq!(e.code(), code, "{what}: {e:?}");
        assert!(e.message().contains(what), "{what}: {e:?}");
    }
    // Another holder may not grant on this record, nor revoke its grants.
    let mut other = net.client(OTHER_HOLDER).await;
    let e = other
        .grant(grant_request(r, &net, &[income(1)], 1))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");
    let e = other
        .revoke_grant(pb::RevokeGrantRequest {
            grant_id: later.grant_id.clone(),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");
    assert_eq!(
        net.ledger.len(),
        size + 1,
        "only the KMS audit of the refused revocation"
    );

    // Two copies of a question with a new constant, at once, under a grant
    // of one use: one is answered, and its constant stays counted although
    // the other's refusal gives its reservation back.
    let born = |value| Predicate::Lte {
        field: "birth_date".into(),
        value,
    };
    let mut one_use = grant_request(r, &net, &[born(20_000_101)], 1);
    one_use.budget.clear();
    let once = holder.grant(one_use).await.unwrap().into_inner();
    let mut again = net.client(VERIFIER).await;
    let (a, b) = tokio::join!(
        verifier.query(under(&once.grant_id, born(20_000_101))),
        again.query(under(&once.grant_id, born(20_000_101))),
    );
    assert_eq!(u8::from(a.is_ok()) + u8::from(b.is_ok()), 1);
    let e = holder
        .grant(grant(vec![born(19_800_101), born(19_700_101)]))
        .await
        .unwrap_err();
    assert!(e.message().contains("3 distinct constants"), "{e:?}");
}

/// 2^16 members: building the set (about 2^17 Poseidon hashes) and one
/// membership and one non-membership proof.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_set_of_65536_members_proves_membership_and_non_membership() {
    let net = net(true).await;
    let members: Vec<String> = (0..1u32 << 16)
        .map(|i| format!("SANCTIONED-{i:06}"))
        .collect();
    let started = Instant::now();
    let set = net
        .client(HOLDER)
        .await
        .register_set(pb::RegisterSetRequest {
            identifiers: members,
            elements: vec![],
        })
        .await
        .unwrap()
        .into_inner();
    eprintln!(
        "registered a set of 2^16 members in {:?}",
        started.elapsed()
    );
    assert_eq!(set.members, 1 << 16);
    let root = yilian_zk::fr_from_bytes(set.root.as_slice().try_into().unwrap()).unwrap();

    registered(&net, "listed", "SANCTIONED-031337").await;
    registered(&net, "clean", "310101199001011234").await;
    let mut verifier_client = net.client(VERIFIER).await;
    let mut auditor = net.client(AUDITOR).await;
    for (record_id, predicate) in [
        (
            "listed",
            Predicate::In {
                field: "id_number".into(),
                root,
            },
        ),
        (
            "clean",
            Predicate::Nin {
                field: "id_number".into(),
                root,
            },
        ),
    ] {
        let started = Instant::now();
        let r = verifier_client
            .query(granted_query(&net, record_id, std::slice::from_ref(&predicate)).await)
            .await
            .unwrap()
            .into_inner();
        eprintln!("{record_id}: proved in {:?}", started.elapsed());
        assert!(r.answer, "{record_id}");
        let v = auditor
            .verify(verify_request(&r.proof.unwrap()))
            .await
            .unwrap()
            .into_inner();
        assert!(v.valid && v.answer, "{}", v.reason);
        assert_eq!(v.record_id, record_id);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_takes_keys_only_from_a_ceremony_whose_contributions_are_all_anchored_and_verify() {
    use yilian_zk::ZkError;
    use yilian_zk::ceremony::derive::Qap;
    use yilian_zk::ceremony::transcript::{self, Step};
    let net = net(true).await;
    let ceremonies = net.dir().join("ceremony");
    let dir = ceremonies.join(KYC_STATEMENT);
    transcript::init(&dir, &Qap::statement(yilian_zk::Shape::F8).unwrap()).unwrap();
    let p1 = transcript::contribute(&dir, &mut keys::os_rng()).unwrap();
    // Phase 2 starts from a key not derived from phase 1 (the single-party
    // one, whose maker can forge): only verifying the transcript shows it.
    std::fs::create_dir_all(dir.join("phase2")).unwrap();
    std::fs::copy(
        shared_keys().join(format!("{KYC_STATEMENT}.pk")),
        dir.join("phase2").join("0000.bin"),
    )
    .unwrap();
    let p2 = transcript::contribute(&dir, &mut keys::os_rng()).unwrap();
    assert_eq!(transcript::steps(&dir).unwrap(), vec![p1, p2]);

    let data = tempfile::tempdir().unwrap();
    let node = ZkService::open(
        data.path(),
        net.ledger.clone(),
        &net.ids[NODE],
        net.kms.clone(),
        KeySource::Ceremony(ceremonies),
    )
    .unwrap();
    let anchor = |step: Step| {
        let ledger = net.ledger.clone();
        let key = net.ids[NODE].signing_key().clone();
        async move {
            ledger
                .submit(
                    Transaction::new(Payload::CeremonyContribution {
                        statement: KYC_STATEMENT.into(),
                        phase: step.phase,
                        index: step.index,
                        hash: step.hash,
                    })
                    .sign(&key),
                )
                .await
                .unwrap();
        }
    };
    let not_anchored = |e: ZkError, phase: u8, index: u32| match e {
        ZkError::CeremonyNotAnchored {
            phase: p, index: i, ..
        } => assert_eq!((p, i), (phase, index)),
        e => panic!("expected phase {phase} contribution {index} unanchored, got {e}"),
    };
    let size = net.ledger.len();
    not_anchored(
        node.prepare_keys(yilian_zk::Shape::F8).await.unwrap_err(),
        1,
        1,
    );
    // An anchor of another hash at the same place does not vouch for it.
    let mut other = p1;
    other.hash[0] ^= 1;
    anchor(other).await;
    not_anchored(
        node.prepare_keys(yilian_zk::Shape::F8).await.unwrap_err(),
        1,
        1,
    );
    anchor(p1).await;
    not_anchored(
        node.prepare_keys(yilian_zk::Shape::F8).await.unwrap_err(),
        2,
        1,
    );
    // Every step anchored, but the transcript does not verify: no key.
    anchor(p2).await;
    let e = node.prepare_keys(yilian_zk::Shape::F8).await.unwrap_err();
    assert!(matches!(e, ZkError::Ceremony(_)), "{e}");
    assert_eq!(tonic::Status::from(e).code(), Code::FailedPrecondition);
    // Only the test's anchors were written: no verifying key was anchored.
    assert_eq!(net.ledger.len(), size + 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_record_with_a_customer_is_granted_only_with_the_customers_countersignature() {
    use yilian_zk::consent::Consent;
    let net = net(true).await;
    let key = zk_key();
    let record = encrypt("customer-0009", "110101197001010099", &key);
    anchor(&net, HOLDER, &record).await;
    let mut holder = net.client(HOLDER).await;
    let customer = net.ids[CUSTOMER].principal().public_key;
    // Only an admitted device identity may be a record's customer.
    let with_customer = |c: [u8; 32]| {
        let mut r = register_request(&record, &key_bytes(&key));
        r.customer = c.to_vec();
        r
    };
    let e = holder
        .register_record(with_customer(net.ids[VERIFIER].principal().public_key))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
    assert!(
        e.message().contains("not an admitted device identity"),
        "{e:?}"
    );
    holder
        .register_record(with_customer(customer))
        .await
        .unwrap();

    let allowed = [Predicate::Gte {
        field: "income".into(),
        value: 100_000,
    }];
    let request = grant_request("customer-0009", &net, &allowed, 1);
    let terms = Consent {
        consent_id: request.consent_id.clone(),
        record_id: request.record_id.clone(),
        verifier: net.ids[VERIFIER].principal().public_key,
        allowed: allowed.to_vec(),
        max_uses: 1,
        not_before_ms: request.not_before_ms,
        not_after_ms: request.not_after_ms,
        budget: request.budget.clone().into_iter().collect(),
    };
    let signed = terms.sign(net.ids[CUSTOMER].signing_key()).signature;
    let size = net.ledger.len();
    for (what, req, reason) in [
        (
            "unsigned",
            request.clone(),
            "needs the customer's countersignature",
        ),
        (
            "signed by another identity",
            pb::GrantRequest {
                customer_signature: terms.sign(net.ids[VERIFIER].signing_key()).signature,
                ..request.clone()
            },
            "is not record `customer-0009`'s customer's signature",
        ),
        (
            "signed for one use, asked for two",
            pb::GrantRequest {
                max_uses: Some(2),
                customer_signature: signed.clone(),
                ..request.clone()
            },
            "must sign exactly the terms",
        ),
        (
            "a garbled signature",
            pb::GrantRequest {
                customer_signature: signed[..63].to_vec(),
                ..request.clone()
            },
            "is not record `customer-0009`'s customer's signature",
        ),
    ] {
        let e = holder.grant(req).await.unwrap_err();
        assert_eq!(e.code(), Code::PermissionDenied, "{what}: {e:?}");
        assert!(e.message().contains(reason), "{what}: {e:?}");
    }
    assert_eq!(net.ledger.len(), size, "refused grants change nothing");

    let signed_request = pb::GrantRequest {
        customer_signature: signed,
        ..request
    };
    let g = holder
        .grant(signed_request.clone())
        .await
        .unwrap()
        .into_inner();
    // One consent, one grant: the holder cannot replay it for more.
    let size = net.ledger.len();
    let e = holder.grant(signed_request).await.unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");
    assert!(e.message().contains("already used"), "{e:?}");
    assert_eq!(net.ledger.len(), size);
    let mut q = query("customer-0009", &allowed);
    q.grant_id = g.grant_id;
    let r = net
        .client(VERIFIER)
        .await
        .query(q)
        .await
        .unwrap()
        .into_inner();
    assert!(r.answer);

    // The holder cannot drop the customer by registering the record again.
    let e = holder
        .register_record(register_request(&record, &key_bytes(&key)))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
    assert!(e.message().contains("belongs to customer"), "{e:?}");
}
