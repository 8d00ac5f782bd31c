//! The standard KYC statement (8-field record, one `eq`, two ranges, one
//! set predicate in a 2^16-member set): constraint counts, setup, proving,
//! verifying (single, and per proof in a batch of 64 against one-by-one in
//! the same run), and proof size. Then, per statement (8, 16 and 32
//! fields), a query with an OR, a comparison of two fields and the set
//! test: constraints, proving and verifying, as ratios to the 8-field
//! statement; the consent check a query pays before proving, as a ratio to
//! proving; and the members' ceremony for the 8-field statement (each
//! contribution, the derivation, each verification), as ratios to the
//! single-party setup. Proving is read against stock arkworks: a chain of
//! Poseidon permutations through ark-crypto-primitives' sponge gadget with
//! as many constraints, proved in the same run; batch verification against
//! its floor, one Miller loop per proof. Prints the machine's load and
//! synced-write latency first and the load last, and writes every figure
//! to `target/bench/kyc.jsonl`. Prints figures; asserts nothing on time.
//!
//! Run: `cargo bench -p yilian-zk --bench kyc` (about four minutes on 2 cores).

use std::time::{Duration, Instant};

use ark_bn254::Fr;
use ark_r1cs_std::{alloc::AllocVar, fields::fp::FpVar};
use ark_relations::gr1cs::{ConstraintSynthesizer, ConstraintSystem};
use ark_serialize::CanonicalSerialize;

use yilian_circuits::{kyc, poseidon, set::SortedSet};
use yilian_testkit::Report;
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
    let mut report = Report::start("kyc");
    println!(
        "field arithmetic: {}",
        if cfg!(all(target_feature = "bmi2", target_feature = "adx")) {
            "arkworks' assembly (built for bmi2 and adx)"
        } else {
            "portable Rust (built without bmi2 and adx)"
        }
    );
    let tmp = tempfile::tempdir().unwrap();
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
    let median_prove = median(prove_times);
    let prepared = prover::Prover::new(pk.clone(), kyc::Shape::F8).unwrap();
    let prepared_times: Vec<Duration> = (0..5)
        .map(|_| {
            let t = Instant::now();
            prepared
                .prove(&enc, &key, &q, Some(&set), &mut rng)
                .unwrap();
            t.elapsed()
        })
        .collect();
    let prepared_ms = ms(median(prepared_times));
    let stock = stock_arkworks_prove_ms(cs.num_constraints(), &mut rng);
    let chain = format!("stock arkworks Poseidon chain of {} constraints", stock.0);
    report.figure(
        "kyc8 prove as stock arkworks does, median of 5 (with native decryption and witness)",
        ms(median_prove),
        "ms",
        &chain,
        stock.1,
    );
    report.figure(
        "kyc8 prove from the statement's prepared matrices (the node's prover), median of 5",
        prepared_ms,
        "ms",
        &chain,
        stock.1,
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
    let miller = miller_loop_ms();
    report.figure(
        "verify one proof",
        ms(one_by_one) / 64.0,
        "ms",
        "one Miller loop",
        miller,
    );
    report.figure(
        "verify per proof in a batch of 64",
        ms(batched) / 64.0,
        "ms",
        "one Miller loop (the batch's floor)",
        miller,
    );

    statements(&set, &mut rng, &mut report);
    consent_check(ms(median_prove), &mut report);
    grant_use(ms(median_prove), &mut report);
    ceremony(tmp.path(), &mut report);
    report.finish();
}

/// One Miller loop of BN254, the G2 point's preparation included (a
/// proof's B is a fresh G2 point), median of 50 (ms): what each proof of a
/// batch costs at least.
fn miller_loop_ms() -> f64 {
    use ark_bn254::{Bn254, G1Affine, G2Affine};
    use ark_ec::{AffineRepr, pairing::Pairing};
    let (p, q) = (G1Affine::generator(), G2Affine::generator());
    let times: Vec<Duration> = (0..50)
        .map(|_| {
            let t = Instant::now();
            let _ = std::hint::black_box(Bn254::multi_miller_loop([p], [q]));
            t.elapsed()
        })
        .collect();
    ms(median(times))
}

/// Stock arkworks' proving at about `constraints` constraints: a chain of
/// Poseidon permutations (BN254, t = 3, 8 full and 57 partial rounds)
/// through ark-crypto-primitives' sponge gadget, median of 5 proofs (ms).
/// Returns the chain's constraint count too.
fn stock_arkworks_prove_ms(
    constraints: usize,
    rng: &mut ark_std::rand::rngs::StdRng,
) -> (usize, f64) {
    use ark_bn254::Bn254;
    use ark_crypto_primitives::sponge::constraints::CryptographicSpongeVar;
    use ark_crypto_primitives::sponge::poseidon::constraints::PoseidonSpongeVar;
    use ark_crypto_primitives::sponge::poseidon::{PoseidonConfig, find_poseidon_ark_and_mds};
    use ark_groth16::Groth16;
    use ark_r1cs_std::{GR1CSVar, eq::EqGadget};
    use ark_relations::gr1cs::{ConstraintSystemRef, SynthesisError};
    use ark_snark::SNARK;

    #[derive(Clone)]
    struct Chain {
        config: PoseidonConfig<Fr>,
        links: usize,
        seed: Option<Fr>,
    }
    impl ConstraintSynthesizer<Fr> for Chain {
        fn generate_constraints(self, cs: ConstraintSystemRef<Fr>) -> Result<(), SynthesisError> {
            let mut x = FpVar::new_witness(cs.clone(), || {
                self.seed.ok_or(SynthesisError::AssignmentMissing)
            })?;
            for _ in 0..self.links {
                let mut sponge = PoseidonSpongeVar::new(cs.clone(), &self.config);
                sponge.absorb(&x)?;
                x = sponge.squeeze_field_elements(1)?.remove(0);
            }
            FpVar::new_input(cs, || x.value())?.enforce_equal(&x)
        }
    }
    let (ark, mds) = find_poseidon_ark_and_mds::<Fr>(254, 2, 8, 57, 0);
    let config = PoseidonConfig::new(8, 57, 5, mds, ark, 2, 1);
    let count = |links| {
        let cs = ConstraintSystem::<Fr>::new_ref();
        let c = Chain {
            config: config.clone(),
            links,
            seed: Some(Fr::from(7u64)),
        };
        c.generate_constraints(cs.clone()).unwrap();
        assert!(cs.is_satisfied().unwrap());
        cs.num_constraints()
    };
    let per_link = count(2) - count(1);
    let links = (constraints.saturating_sub(count(0)) / per_link).max(1);
    let chain = Chain {
        config: config.clone(),
        links,
        seed: None,
    };
    let (pk, _) = Groth16::<Bn254>::circuit_specific_setup(chain.clone(), rng).unwrap();
    let times: Vec<Duration> = (0..5)
        .map(|_| {
            let c = Chain {
                seed: Some(Fr::from(7u64)),
                ..chain.clone()
            };
            let t = Instant::now();
            Groth16::<Bn254>::prove(&pk, c, rng).unwrap();
            t.elapsed()
        })
        .collect();
    (count(links), ms(median(times)))
}

fn wide_record(n: usize) -> Record {
    let mut fields = vec![
        (
            "id_number".to_owned(),
            FieldValue::Identifier("310101199001011234".into()),
        ),
        ("income".to_owned(), FieldValue::Integer(120_000)),
        ("credit_score".to_owned(), FieldValue::Integer(720)),
    ];
    while fields.len() < n - 2 {
        let i = fields.len();
        fields.push((
            format!("account_{i}"),
            FieldValue::Integer(1_000 * i as u64),
        ));
    }
    fields.push(("balance".into(), FieldValue::Integer(80_000)));
    fields.push(("loan".into(), FieldValue::Integer(50_000)));
    Record { fields }
}

/// Per statement: (income >= 150000 or the last account >= 1) and
/// balance >= loan and not sanctioned.
fn statements(set: &SortedSet, rng: &mut ark_std::rand::rngs::StdRng, report: &mut Report) {
    use yilian_zk::Shape;
    println!(
        "statement | fields | constraints | setup ms | prove ms | verify ms | prove / kyc8 | verify / kyc8"
    );
    let mut base: Option<(f64, f64)> = None;
    for shape in Shape::ALL {
        let n = shape.fields();
        let key = CipherKey::new([Fr::from(0x1234_5678u64), Fr::from(n as u64)]);
        let enc = EncryptedRecord::encrypt("wide", &wide_record(n), &key, 3).unwrap();
        let preds = vec![
            Predicate::Any {
                any: vec![
                    Predicate::Gte {
                        field: "income".into(),
                        value: 150_000,
                    },
                    Predicate::Gte {
                        field: format!("account_{}", n - 3),
                        value: 1,
                    },
                ],
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
        let q = query::compile(&enc, &preds).unwrap();
        let cs = ConstraintSystem::<Fr>::new_ref();
        prover::instance(&enc, &key, &q, Some(set))
            .unwrap()
            .generate_constraints(cs.clone())
            .unwrap();
        assert!(cs.is_satisfied().unwrap());
        let t = Instant::now();
        let (pk, vk) = keys::setup(shape, rng).unwrap();
        let setup = ms(t.elapsed());
        let pvk = keys::prepare(&vk);
        let mut proves = Vec::new();
        let mut proof = None;
        for _ in 0..3 {
            let t = Instant::now();
            proof = Some(prover::prove(&pk, &enc, &key, &q, Some(set), rng).unwrap());
            proves.push(t.elapsed());
        }
        let proof = proof.unwrap();
        let mut verifies = Vec::new();
        for _ in 0..20 {
            let t = Instant::now();
            assert!(verifier::verify(&pvk, &proof.proof, &proof.public).unwrap());
            verifies.push(t.elapsed());
        }
        let (p, v) = (ms(median(proves)), ms(median(verifies)));
        let (bp, bv) = *base.get_or_insert((p, v));
        report.record(
            &format!("{} prove", shape.statement()),
            p,
            "ms",
            "kyc8 prove",
            bp,
        );
        report.record(
            &format!("{} verify", shape.statement()),
            v,
            "ms",
            "kyc8 verify",
            bv,
        );
        println!(
            "{} | {n} | {} | {setup:.0} | {p:.1} | {v:.2} | {:.2} | {:.2}",
            shape.statement(),
            cs.num_constraints(),
            p / bp,
            v / bv
        );
    }
}

/// The consent decision a query pays before proving (grant terms, the
/// predicates allowed, the disclosure budget), sans-IO. The KMS's counting
/// of the use is one audited KMS operation on top, which the KMS bench
/// measures (an audited Decrypt under a grant).
fn consent_check(prove_ms: f64, report: &mut Report) {
    use std::collections::BTreeMap;
    use yilian_zk::consent::{self, QueryGrant};
    let allowed: Vec<Predicate> = (0..16)
        .map(|i| Predicate::Gte {
            field: format!("f{}", i % 8),
            value: i,
        })
        .collect();
    let grant = QueryGrant {
        grant_id: "g".into(),
        record_id: "r".into(),
        holder: [1; 32],
        verifier: [2; 32],
        allowed: allowed.clone(),
        budget: BTreeMap::new(),
        countersignature: None,
    };
    let asked = vec![Predicate::Any {
        any: allowed[..3].to_vec(),
    }];
    let disclosed = BTreeMap::new();
    let rounds = 100_000;
    let t = Instant::now();
    for _ in 0..rounds {
        consent::check_grant(Some(&grant), "g", "r", &[2; 32]).unwrap();
        std::hint::black_box(consent::admit(&grant, "r", &[2; 32], &asked, &disclosed).unwrap());
    }
    let us = t.elapsed().as_secs_f64() * 1e6 / rounds as f64;
    report.figure(
        "consent check (grant of 16 predicates, an OR of 3 asked)",
        us / 1e3,
        "ms",
        "one kyc8 proof",
        prove_ms,
    );
}

/// The KMS's part of a query's consent: opening the sealed record key
/// under the verifier's grant, which counts the use durably and audits it
/// on the (local, single-member) ledger before the key is released. The
/// disclosure record the node keeps besides is one more synced write.
fn grant_use(prove_ms: f64, report: &mut Report) {
    use yilian_identity::Role;
    use yilian_kms::{Caller, GrantTerms, KeyKind, Operation};
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let net = yilian_testkit::Network::new("bench").await;
        let ids = net
            .admit_all(&[("holder", Role::DataHolder), ("bank", Role::Verifier)])
            .await;
        let key = net.node.signing_key().clone();
        let (node, _) =
            yilian_kms::service::with_key_file(net.dir.path(), net.ledger.clone(), key).unwrap();
        let kms = node.kms().await.unwrap();
        let holder = Caller::from(ids[0].principal());
        kms.create_key(&holder, "wrap", KeyKind::Aes256Gcm, false)
            .await
            .unwrap();
        let sealed = kms
            .encrypt(&holder, "wrap", &[7u8; 64], b"record", None)
            .await
            .unwrap();
        let uses = 50;
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis() as u64;
        let bank = Caller {
            account: ids[1].principal().public_key,
            role: Role::Verifier,
        };
        let grant = kms
            .grant(
                &holder,
                "wrap",
                GrantTerms {
                    reader: bank.account,
                    not_before_ms: now,
                    not_after_ms: now + 3_600_000,
                    max_uses: uses,
                    operations: vec![Operation::Prove],
                    required_context: Some(b"record".to_vec()),
                },
            )
            .await
            .unwrap();
        let mut times = Vec::new();
        for _ in 0..uses {
            let t = Instant::now();
            kms.open_to_prove(&bank, &sealed, b"record", Some(&grant.grant_id))
                .await
                .unwrap();
            times.push(t.elapsed());
        }
        report.figure(
            &format!("grant use (KMS: check, durable count, ledger audit; median of {uses})"),
            ms(median(times)),
            "ms",
            "one kyc8 proof",
            prove_ms,
        );
    });
}

/// The members' ceremony for the 8-field statement, one contribution per
/// phase, through the transcript on disk as members run it.
fn ceremony(dir: &std::path::Path, report: &mut Report) {
    use yilian_zk::Shape;
    use yilian_zk::ceremony::{derive::Qap, transcript};
    let mut rng = keys::os_rng();
    let t = Instant::now();
    keys::setup(Shape::F8, &mut rng).unwrap();
    let single = t.elapsed();
    let d = dir.join("ceremony");
    let qap = Qap::statement(Shape::F8).unwrap();
    let n = transcript::init(&d, &qap).unwrap();
    let mut time = |what: &str, f: &mut dyn FnMut()| {
        let t = Instant::now();
        f();
        let e = t.elapsed();
        report.figure(
            &format!("ceremony {what}"),
            e.as_secs_f64(),
            "s",
            "the single-party setup",
            single.as_secs_f64(),
        );
        e
    };
    println!("ceremony of kyc8-v2: {n}-point domain");
    let c1 = time("phase-1 contribution", &mut || {
        transcript::contribute(&d, &mut rng).unwrap();
    });
    time("finish phase 1 (derive the initial key)", &mut || {
        transcript::finish_phase1(&d, &qap).unwrap();
    });
    let c2 = time("phase-2 contribution", &mut || {
        transcript::contribute(&d, &mut rng).unwrap();
    });
    let v = time("transcript verification (1 + 1 contributions)", &mut || {
        transcript::verify(&d, &qap, &mut rng).unwrap();
    });
    println!(
        "ceremony: contributions {:.1} s + {:.1} s; verifying the transcript costs {:.2}x contributing to it",
        c1.as_secs_f64(),
        c2.as_secs_f64(),
        v.as_secs_f64() / (c1 + c2).as_secs_f64()
    );
}
