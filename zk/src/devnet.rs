//! The devnet's ZK act: a data holder registers a customer record; an
//! institution checks the customer's ID number, age >= 18, income >= a
//! threshold and sanctions-list non-membership, each as its own proven
//! query, and prints what it learned (four booleans, nothing else).

use std::io::Write;

use ark_bn254::Fr;
use ark_std::UniformRand;

use yilian_circuits::{kyc, set::SortedSet};

use crate::query::{self, Predicate};
use crate::record::{CipherKey, EncryptedRecord, FieldValue, Record, RecordAnchor};
use crate::{Result, keys, prover, verifier};

/// What the act anchors (for the caller to put on the ledger) and learned.
#[derive(Clone, Debug)]
pub struct ActOutcome {
    pub record_anchor: RecordAnchor,
    pub vk_hash: [u8; 32],
    pub answers: Vec<(String, bool)>,
}

/// Runs the act, printing to `out`. `key` is the KMS-issued ZK key (its two
/// elements); `None` draws a fresh one for a standalone demo.
pub fn act(out: &mut impl Write, key: Option<CipherKey>) -> Result<ActOutcome> {
    let mut rng = keys::os_rng();
    let key = key.unwrap_or_else(|| CipherKey::new([Fr::rand(&mut rng), Fr::rand(&mut rng)]));
    writeln!(
        out,
        "[zk] single-party Groth16 setup of {} (development only)",
        crate::KYC_STATEMENT
    )?;
    let (pk, vk) = keys::setup(&mut rng)?;
    let pvk = keys::prepare(&vk);
    let vk_hash = keys::vk_hash(&vk);
    writeln!(out, "[zk] verifying key hash {}", hex::encode(vk_hash))?;

    let customer = Record {
        fields: vec![
            (
                "id_number".into(),
                FieldValue::Identifier("310101199001011234".into()),
            ),
            ("birth_date".into(), FieldValue::Integer(19_900_101)),
            ("income".into(), FieldValue::Integer(120_000)),
            ("credit_score".into(), FieldValue::Integer(720)),
        ],
    };
    let record =
        EncryptedRecord::encrypt("customer-0001", &customer, &key, rand::random::<u128>())?;
    let anchor = record.anchor()?;
    writeln!(
        out,
        "[zk] data holder registered customer-0001: ciphertext hash {}",
        hex::encode(anchor.ciphertext_hash)
    )?;

    let sanctions: Vec<Fr> = (0..1024)
        .map(|i| kyc::identifier(&format!("SANCTIONED-{i:05}")))
        .collect();
    let set = SortedSet::build(&sanctions)?;
    let questions = [
        (
            "ID number is 310101199001011234",
            Predicate::Eq {
                field: "id_number".into(),
                value: FieldValue::Identifier("310101199001011234".into()),
            },
        ),
        (
            "age >= 18 (born on or before 2007-11-25)",
            Predicate::Lte {
                field: "birth_date".into(),
                value: 20_071_125,
            },
        ),
        (
            "income >= 150000",
            Predicate::Gte {
                field: "income".into(),
                value: 150_000,
            },
        ),
        (
            "not on the sanctions list (1024 entries)",
            Predicate::Nin {
                field: "id_number".into(),
                root: set.root(),
            },
        ),
    ];
    let mut answers = Vec::new();
    for (text, predicate) in questions {
        let q = query::compile(&record, std::slice::from_ref(&predicate))?;
        let proof = prover::prove(&pk, &record, &key, &q, Some(&set), &mut rng)?;
        // The institution sees only the proof and public inputs, and checks
        // them against the anchored ciphertext hash and key commitment.
        let answer = verifier::verify_against_anchor(&pvk, &proof.proof, &proof.public, &anchor)?;
        writeln!(
            out,
            "[zk] institution learned: {text}: {answer} (proof verified)"
        )?;
        answers.push((text.to_owned(), answer));
    }
    Ok(ActOutcome {
        record_anchor: anchor,
        vk_hash,
        answers,
    })
}
