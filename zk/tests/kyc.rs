//! End-to-end over Groth16: register, prove (true and false), verify against
//! the anchor, files, snarkjs JSON, batches, and every tampering refused.

use std::sync::OnceLock;

use ark_bn254::{Bn254, Fr};
use ark_ff::{UniformRand, Zero};
use ark_groth16::{PreparedVerifyingKey, ProvingKey, VerifyingKey};
use proptest::prelude::*;

use yilian_circuits::kyc::{self, KycPublic};
use yilian_circuits::set::SortedSet;
use yilian_zk::keys;
use yilian_zk::prover::{self, KycProof};
use yilian_zk::query::{self, Predicate};
use yilian_zk::record::{CipherKey, EncryptedRecord, FieldValue, Record};
use yilian_zk::{ZkError, snarkjs, verifier};

struct Keys {
    pk: ProvingKey<Bn254>,
    vk: VerifyingKey<Bn254>,
    pvk: PreparedVerifyingKey<Bn254>,
}

fn keys() -> &'static Keys {
    static KEYS: OnceLock<Keys> = OnceLock::new();
    KEYS.get_or_init(|| {
        let (pk, vk) = keys::setup(yilian_zk::Shape::F8, &mut keys::os_rng()).unwrap();
        let pvk = keys::prepare(&vk);
        Keys { pk, vk, pvk }
    })
}

fn customer() -> Record {
    Record {
        fields: vec![
            (
                "id_number".into(),
                FieldValue::Identifier("310101199001011234".into()),
            ),
            ("birth_date".into(), FieldValue::Integer(19_900_101)),
            ("income".into(), FieldValue::Integer(120_000)),
            ("credit_score".into(), FieldValue::Integer(720)),
            ("name".into(), FieldValue::Identifier("Li Wei".into())),
        ],
    }
}

fn sanctions() -> SortedSet {
    let members: Vec<Fr> = (0..64)
        .map(|i| kyc::identifier(&format!("sanctioned-{i}")))
        .collect();
    SortedSet::build(&members).unwrap()
}

struct Holder {
    record: EncryptedRecord,
    key: CipherKey,
}

fn holder(record_id: &str, nonce: u128) -> Holder {
    let mut rng = ark_std::test_rng();
    let key = CipherKey::new([Fr::rand(&mut rng), Fr::rand(&mut rng)]);
    let record = EncryptedRecord::encrypt(record_id, &customer(), &key, nonce).unwrap();
    Holder { record, key }
}

fn kyc_predicates(income: u64, set: &SortedSet) -> Vec<Predicate> {
    vec![
        Predicate::Eq {
            field: "id_number".into(),
            value: FieldValue::Identifier("310101199001011234".into()),
        },
        Predicate::Lte {
            field: "birth_date".into(),
            value: 20_071_125,
        },
        Predicate::Gte {
            field: "income".into(),
            value: income,
        },
        Predicate::Nin {
            field: "id_number".into(),
            root: set.root(),
        },
    ]
}

fn prove(h: &Holder, predicates: &[Predicate], set: &SortedSet) -> KycProof {
    let q = query::compile(&h.record, predicates).unwrap();
    prover::prove(
        &keys().pk,
        &h.record,
        &h.key,
        &q,
        Some(set),
        &mut keys::os_rng(),
    )
    .unwrap()
}

#[test]
fn answers_true_and_false_verify_against_the_anchor_and_tampering_is_refused() {
    let set = sanctions();
    let h = holder("customer-1", 7);
    let anchor = h.record.anchor().unwrap();
    let yes = prove(&h, &kyc_predicates(100_000, &set), &set);
    let no = prove(&h, &kyc_predicates(150_000, &set), &set);
    assert!(
        verifier::verify_against_anchor(&keys().pvk, &yes.proof, &yes.public, &anchor).unwrap()
    );
    assert!(!verifier::verify_against_anchor(&keys().pvk, &no.proof, &no.public, &anchor).unwrap());

    // Every public input altered: refused.
    let inputs = yes.public.to_inputs();
    for i in 0..inputs.len() {
        let mut altered = inputs.clone();
        altered[i] += Fr::from(1u64);
        assert!(
            matches!(
                verifier::verify_inputs(&keys().pvk, &yes.proof, &altered),
                Err(ZkError::InvalidProof)
            ),
            "altered input {i} accepted"
        );
    }
    // The result bit flipped through the typed API.
    let mut flipped = yes.public;
    flipped.result = false;
    assert!(matches!(
        verifier::verify(&keys().pvk, &yes.proof, &flipped),
        Err(ZkError::InvalidProof)
    ));
    // Replayed against another record's anchor (same data, other id/nonce).
    let other = holder("customer-2", 8);
    assert!(matches!(
        verifier::verify_against_anchor(
            &keys().pvk,
            &yes.proof,
            &yes.public,
            &other.record.anchor().unwrap()
        ),
        Err(ZkError::AnchorMismatch)
    ));
    // Re-labelled as the other record: the proof does not follow.
    let mut relabelled = yes.public;
    relabelled.record_binding = other.record.binding();
    relabelled.ciphertext_hash = other.record.ciphertext_hash().unwrap();
    relabelled.key_commitment = other.record.key_commitment;
    assert!(verifier::verify(&keys().pvk, &yes.proof, &relabelled).is_err());
    // A proof point altered.
    let mut bad = yes.proof.clone();
    bad.a = (bad.a + bad.a).into();
    assert!(verifier::verify(&keys().pvk, &bad, &yes.public).is_err());
    // Anchor fields altered.
    let mut a2 = anchor.clone();
    a2.ciphertext_hash[0] ^= 1;
    assert!(matches!(
        verifier::check_anchor(&yes.public, &a2),
        Err(ZkError::AnchorMismatch)
    ));
    let mut a3 = anchor.clone();
    a3.key_commitment[5] ^= 1;
    assert!(matches!(
        verifier::check_anchor(&yes.public, &a3),
        Err(ZkError::AnchorMismatch)
    ));

    // Files and snarkjs JSON round-trip and still verify.
    let dir = tempfile::tempdir().unwrap();
    let vk_path = dir.path().join("kyc.vk");
    keys::write_key(&vk_path, &keys().vk).unwrap();
    let vk2 = keys::read_verifying_key(&vk_path).unwrap();
    assert_eq!(keys::vk_hash(&vk2), keys::vk_hash(&keys().vk));
    let vk_json = serde_json::to_string(&snarkjs::export_vk(&keys().vk)).unwrap();
    let proof_json = serde_json::to_string(&snarkjs::export_proof(&yes.proof)).unwrap();
    let public_json =
        serde_json::to_string(&snarkjs::export_public(&yes.public.to_inputs())).unwrap();
    let vk3 = snarkjs::import_vk(&serde_json::from_str(&vk_json).unwrap()).unwrap();
    assert_eq!(vk3, keys().vk);
    let proof3 = snarkjs::import_proof(&serde_json::from_str(&proof_json).unwrap()).unwrap();
    let public3 =
        snarkjs::import_public(&serde_json::from_str::<Vec<String>>(&public_json).unwrap())
            .unwrap();
    assert_eq!(public3.len(), kyc::PUBLIC_INPUTS);
    let typed = KycPublic::from_inputs(&public3).unwrap();
    assert!(verifier::verify(&keys::prepare(&vk3), &proof3, &typed).unwrap());

    // Batch: all valid passes; one altered input fails the batch.
    let batch = vec![
        (yes.proof.clone(), yes.public.to_inputs()),
        (no.proof.clone(), no.public.to_inputs()),
        (yes.proof.clone(), yes.public.to_inputs()),
    ];
    verifier::batch_verify(&keys().pvk, &batch, &mut keys::os_rng()).unwrap();
    let mut bad_batch = batch.clone();
    bad_batch[1].1[23] = Fr::from(1u64);
    assert!(matches!(
        verifier::batch_verify(&keys().pvk, &bad_batch, &mut keys::os_rng()),
        Err(ZkError::InvalidProof)
    ));
    let mut swapped = batch.clone();
    swapped[0].1 = no.public.to_inputs();
    assert!(verifier::batch_verify(&keys().pvk, &swapped, &mut keys::os_rng()).is_err());
}

#[test]
fn the_prepared_prover_proves_what_stock_arkworks_proves_under_the_same_key() {
    let set = sanctions();
    let h = holder("customer-p", 9);
    let prepared = prover::Prover::new(keys().pk.clone(), yilian_zk::Shape::F8).unwrap();
    for (income, answer) in [(100_000, true), (150_000, false)] {
        let predicates = kyc_predicates(income, &set);
        let q = query::compile(&h.record, &predicates).unwrap();
        let p = prepared
            .prove(&h.record, &h.key, &q, Some(&set), &mut keys::os_rng())
            .unwrap();
        assert_eq!(
            verifier::verify(&keys().pvk, &p.proof, &p.public).unwrap(),
            answer
        );
        assert_eq!(p.public, prove(&h, &predicates, &set).public);
        // Its proof is bound to its inputs like any other.
        let mut other = p.public;
        other.nonce += 1;
        assert!(verifier::verify(&keys().pvk, &p.proof, &other).is_err());
    }
    // A key of another statement is refused before any proof.
    assert!(matches!(
        prover::Prover::new(keys().pk.clone(), yilian_zk::Shape::F16),
        Err(ZkError::Groth16(_))
    ));
}

#[test]
fn prover_refuses_false_claims_wrong_keys_and_wrong_sets() {
    let set = sanctions();
    let h = holder("customer-3", 9);
    let q = query::compile(&h.record, &kyc_predicates(150_000, &set)).unwrap();
    let mut rng = keys::os_rng();
    assert!(matches!(
        prover::prove_claim(
            &keys().pk,
            &h.record,
            &h.key,
            &q,
            Some(&set),
            true,
            &mut rng
        ),
        Err(ZkError::FalseClaim)
    ));
    let wrong = CipherKey::new([Fr::from(1u64), Fr::from(2u64)]);
    assert!(matches!(
        prover::prove(&keys().pk, &h.record, &wrong, &q, Some(&set), &mut rng),
        Err(ZkError::AnchorMismatch)
    ));
    let other_set = SortedSet::build(&[Fr::from(5u64)]).unwrap();
    assert!(matches!(
        prover::prove(
            &keys().pk,
            &h.record,
            &h.key,
            &q,
            Some(&other_set),
            &mut rng
        ),
        Err(ZkError::SetRootMismatch)
    ));
    assert!(matches!(
        prover::prove(&keys().pk, &h.record, &h.key, &q, None, &mut rng),
        Err(ZkError::SetNotProvided)
    ));
    // A tampered ciphertext no longer decrypts.
    let mut tampered = h.record.clone();
    tampered.ciphertext[2] += Fr::from(1u64);
    assert!(prover::prove(&keys().pk, &tampered, &h.key, &q, Some(&set), &mut rng).is_err());
    // Range predicates on identifiers and unknown fields are refused.
    assert!(matches!(
        query::compile(
            &h.record,
            &[Predicate::Gte {
                field: "name".into(),
                value: 1
            }]
        ),
        Err(ZkError::NotAnInteger(_))
    ));
    assert!(matches!(
        query::compile(
            &h.record,
            &[Predicate::Gte {
                field: "age".into(),
                value: 1
            }]
        ),
        Err(ZkError::UnknownField(_))
    ));
    // Membership of a sanctioned customer is proven true.
    let listed_id = "sanctioned-3";
    let listed = Record {
        fields: vec![("id_number".into(), FieldValue::Identifier(listed_id.into()))],
    };
    let rec = EncryptedRecord::encrypt("customer-4", &listed, &h.key, 10).unwrap();
    let q = query::compile(
        &rec,
        &[Predicate::In {
            field: "id_number".into(),
            root: set.root(),
        }],
    )
    .unwrap();
    let p = prover::prove(&keys().pk, &rec, &h.key, &q, Some(&set), &mut rng).unwrap();
    assert!(
        verifier::verify_against_anchor(&keys().pvk, &p.proof, &p.public, &rec.anchor().unwrap())
            .unwrap()
    );
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]
    #[test]
    fn decoders_refuse_garbage_without_panicking(s in "\\PC{0,80}", n in any::<u64>()) {
        let _ = snarkjs::import_public(std::slice::from_ref(&s));
        let p = snarkjs::ProofJson {
            pi_a: [s.clone(), n.to_string(), "1".into()],
            pi_b: [[s.clone(), "0".into()], ["1".into(), "2".into()], ["1".into(), "0".into()]],
            pi_c: [n.to_string(), s.clone(), "1".into()],
            protocol: "groth16".into(),
            curve: "bn128".into(),
        };
        prop_assert!(snarkjs::import_proof(&p).is_err());
        prop_assert!(KycPublic::from_inputs(&[Fr::from(n)]).is_err());
        // Non-canonical decimals (leading zeros, values >= p) are refused.
        let padded = format!("0{}", n);
        prop_assert!(snarkjs::import_public(&[padded]).is_err());
    }

    #[test]
    fn public_inputs_round_trip(record in any::<u64>(), nonce in any::<u128>(), result in any::<bool>()) {
        let q = kyc::Query::new(&[kyc::Comparison { field: 2, op: kyc::CmpOp::Gte, a: Fr::from(record), b: Fr::zero() }], None).unwrap();
        let public = KycPublic {
            record_binding: kyc::identifier("r"),
            ciphertext_hash: Fr::from(record),
            key_commitment: Fr::from(nonce),
            nonce,
            query: q,
            result,
        };
        let text = snarkjs::export_public(&public.to_inputs());
        prop_assert_eq!(KycPublic::from_inputs(&snarkjs::import_public(&text).unwrap()).unwrap(), public);
    }
}

/// A record of `n` fields: the customer's, then accounts, with a balance
/// and a loan last.
fn wide_customer(n: usize) -> Record {
    let mut r = customer();
    while r.fields.len() < n - 2 {
        let i = r.fields.len();
        r.fields.push((
            format!("account_{i}"),
            FieldValue::Integer(1_000 * i as u64),
        ));
    }
    r.fields
        .push(("balance".into(), FieldValue::Integer(80_000)));
    r.fields.push(("loan".into(), FieldValue::Integer(50_000)));
    r
}

#[test]
fn wider_records_take_larger_statements_and_answer_or_and_field_comparisons() {
    let set = sanctions();
    let mut rng = keys::os_rng();
    for (n, shape) in [(12, yilian_zk::Shape::F16), (32, yilian_zk::Shape::F32)] {
        let customer = wide_customer(n);
        assert_eq!(customer.shape().unwrap(), shape);
        let key = CipherKey::new([Fr::rand(&mut rng), Fr::rand(&mut rng)]);
        let record = EncryptedRecord::encrypt("wide-1", &customer, &key, 9).unwrap();
        assert_eq!(record.shape().unwrap(), shape);
        let (pk, vk) = keys::setup(shape, &mut rng).unwrap();
        let pvk = keys::prepare(&vk);
        let gte = |field: &str, value| Predicate::Gte {
            field: field.into(),
            value,
        };
        let last_account = format!("account_{}", n - 3);
        let predicates = vec![
            Predicate::Any {
                any: vec![gte("income", 150_000), gte(&last_account, 1)],
            },
            Predicate::GteField {
                field: "balance".into(),
                other: "loan".into(),
            },
            Predicate::Nin {
                field: "id_number".into(),
                root: set.root(),
            },
        ];
        let q = query::compile(&record, &predicates).unwrap();
        let p = prover::prove(&pk, &record, &key, &q, Some(&set), &mut rng).unwrap();
        assert!(p.public.result);
        let anchor = record.anchor().unwrap();
        assert!(verifier::verify_against_anchor(&pvk, &p.proof, &p.public, &anchor).unwrap());
        // The false answer is proven too.
        let lower = vec![Predicate::LtField {
            field: "balance".into(),
            other: "loan".into(),
        }];
        let q2 = query::compile(&record, &lower).unwrap();
        let p2 = prover::prove(&pk, &record, &key, &q2, None, &mut rng).unwrap();
        assert!(!verifier::verify_against_anchor(&pvk, &p2.proof, &p2.public, &anchor).unwrap());
        // Another answer, query, or record anchor: refused.
        let mut lie = p.public;
        lie.result = false;
        assert!(matches!(
            verifier::verify(&pvk, &p.proof, &lie),
            Err(ZkError::InvalidProof)
        ));
        let mut other_query = p.public;
        other_query.query.clauses[2] = 0; // balance >= loan joins the OR
        assert!(verifier::verify(&pvk, &p.proof, &other_query).is_err());
        let other = EncryptedRecord::encrypt("wide-2", &customer, &key, 9).unwrap();
        assert!(
            verifier::verify_against_anchor(&pvk, &p.proof, &p.public, &other.anchor().unwrap())
                .is_err()
        );
        // The 8-field statement's key does not verify it.
        assert!(verifier::verify(&keys().pvk, &p.proof, &p.public).is_err());
        // A record too wide for any statement is refused before encryption.
        let too_wide = wide_customer(33);
        assert!(matches!(
            EncryptedRecord::encrypt("wide-3", &too_wide, &key, 9),
            Err(ZkError::TooManyFields(33))
        ));
    }
}
