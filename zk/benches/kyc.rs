//! The standard KYC statement (8-field record, one `eq`, two ranges, one
//! set predicate in a 2^16-member set): constraint counts, setup, proving,
//! verifying (single, and per proof in a batch of 64 against one-by-one in
//! the same run), and proof size. Prints figures; asserts nothing on time.

use std::time::{Duration, Instant};

use ark_bn254::Fr;
use ark_r1cs_std::{alloc::AllocVar, fields::fp::FpVar};
use ark_relations::gr1cs::{ConstraintSynthesizer, ConstraintSystem};
use ark_serialize::CanonicalSerialize;

use yilian_circuits::{kyc, poseidon, set::SortedSet};
use yilian_zk::query::{self, Predicate};
use yilian_zk::record::{CipherKey, EncryptedRecord, FieldValue, Record};
use yilian_zk::{keys, prover, verifier};

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn main() {
    for width in 2..=6 {
        let cs = ConstraintSystem::<Fr>::new_ref();
        let mut state: Vec<FpVar<Fr>> = (0..width)
            .map(|i| FpVar::new_witness(cs.clone(), || Ok(Fr::from(i as u64))).unwrap())
            .collect();
        poseidon::constraints::permute(poseidon::bn254_params(width), &mut state).unwrap();
        println!(
            "poseidon permutation t={width}: {} constraints",
            cs.num_constraints()
        );
    }

    let t = Instant::now();
    let members: Vec<Fr> = (0..1u64 << 16)
        .map(|i| kyc::identifier(&format!("sanctioned-{i}")))
        .collect();
    let set = SortedSet::build(&members).unwrap();
    println!(
        "set of {} members (depth {}): built in {:.0} ms",
        set.len(),
        yilian_circuits::set::SET_DEPTH,
        ms(t.elapsed())
    );

    let record = Record {
        fields: vec![
            (
                "id_number".into(),
                FieldValue::Identifier("310101199001011234".into()),
            ),
            ("birth_date".into(), FieldValue::Integer(19_900_101)),
            ("income".into(), FieldValue::Integer(120_000)),
            ("credit_score".into(), FieldValue::Integer(720)),
            ("name".into(), FieldValue::Identifier("Li Wei".into())),
            (
                "phone".into(),
                FieldValue::Identifier("+86 138 0000 0000".into()),
            ),
            ("account_opened".into(), FieldValue::Integer(20_150_301)),
            ("risk_class".into(), FieldValue::Integer(2)),
        ],
    };
    let key = CipherKey::new([Fr::from(0x1234_5678u64), Fr::from(0x9abc_def0u64)]);
    let enc = EncryptedRecord::encrypt("customer-1", &record, &key, 1).unwrap();
    let preds = vec![
        Predicate::Eq {
            field: "id_number".into(),
            value: FieldValue::Identifier("310101199001011234".into()),
        },
        Predicate::Lte {
            field: "birth_date".into(),
            value: 20_071_125,
        },
        Predicate::Between {
            field: "credit_score".into(),
            low: 650,
            high: 850,
        },
        Predicate::Nin {
            field: "id_number".into(),
            root: set.root(),
        },
    ];
    let q = query::compile(&enc, &preds).unwrap();

    let circuit = prover::instance(&enc, &key, &q, Some(&set)).unwrap();
    let cs = ConstraintSystem::<Fr>::new_ref();
    circuit.generate_constraints(cs.clone()).unwrap();
    assert!(cs.is_satisfied().unwrap());
    println!(
        "KYC statement: {} constraints, {} public inputs",
        cs.num_constraints(),
        kyc::PUBLIC_INPUTS
    );

    let mut rng = keys::os_rng();
    let t = Instant::now();
    let (pk, vk) = keys::setup(kyc::Shape::F8, &mut rng).unwrap();
    println!(
        "setup: {:.0} ms (proving key {} bytes)",
        ms(t.elapsed()),
        pk.compressed_size()
    );
    let pvk = keys::prepare(&vk);

    let mut prove_times = Vec::new();
    let mut proofs = Vec::new();
    for _ in 0..5 {
        let t = Instant::now();
        let p = prover::prove(&pk, &enc, &key, &q, Some(&set), &mut rng).unwrap();
        prove_times.push(t.elapsed());
        proofs.push(p);
    }
    println!(
        "prove: median {:.1} ms over 5 (incl. native decrypt and witness)",
        ms(median(prove_times))
    );
    println!(
        "proof size: {} bytes compressed",
        proofs[0].proof.compressed_size()
    );

    let batch: Vec<_> = (0..64)
        .map(|i| {
            let p = &proofs[i % proofs.len()];
            (p.proof.clone(), p.public.to_inputs())
        })
        .collect();
    let t = Instant::now();
    for (proof, inputs) in &batch {
        verifier::verify_inputs(&pvk, proof, inputs).unwrap();
    }
    let one_by_one = t.elapsed();
    let mut batch_times = Vec::new();
    for _ in 0..5 {
        let t = Instant::now();
        verifier::batch_verify(&pvk, &batch, &mut rng).unwrap();
        batch_times.push(t.elapsed());
    }
    let batched = median(batch_times);
    println!(
        "verify single: {:.2} ms per proof (64 one by one: {:.1} ms)",
        ms(one_by_one) / 64.0,
        ms(one_by_one)
    );
    println!(
        "verify batch of 64: {:.1} ms, {:.3} ms per proof: {:.1}x the one-by-one throughput",
        ms(batched),
        ms(batched) / 64.0,
        one_by_one.as_secs_f64() / batched.as_secs_f64()
    );
}
