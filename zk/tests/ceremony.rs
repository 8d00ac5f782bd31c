//! The multi-party setup: the key derived in the exponent from a phase-1
//! accumulator agrees exactly with arkworks' own generator run with the same
//! secrets; a three-party ceremony's key proves and verifies with the
//! standard arkworks prover; and a contribution that was not computed from
//! the one before, or whose proof of knowledge is another's, is refused.

use ark_bn254::{Bn254, Fr};
use ark_ec::PrimeGroup;
use ark_ff::{Field, One};
use ark_groth16::Groth16;
use ark_poly::{EvaluationDomain, Radix2EvaluationDomain};
use ark_r1cs_std::alloc::AllocVar;
use ark_r1cs_std::eq::EqGadget;
use ark_r1cs_std::fields::fp::FpVar;
use ark_relations::gr1cs::{ConstraintSynthesizer, ConstraintSystemRef, SynthesisError};
use ark_snark::SNARK;
use ark_std::rand::SeedableRng;
use ark_std::rand::rngs::StdRng;

use yilian_zk::ceremony::derive::Qap;
use yilian_zk::ceremony::phase1::Accumulator;
use yilian_zk::ceremony::{CeremonyError, derive, phase2, transcript_hash};

/// Knows x with x^5 + x = y (y public), and a second public input z = y + 1.
#[derive(Clone)]
struct Demo {
    x: Option<Fr>,
}

impl ConstraintSynthesizer<Fr> for Demo {
    fn generate_constraints(self, cs: ConstraintSystemRef<Fr>) -> Result<(), SynthesisError> {
        let value = |f: fn(Fr) -> Fr| self.x.map(f).ok_or(SynthesisError::AssignmentMissing);
        let y = FpVar::new_input(cs.clone(), || value(|x| x.pow([5]) + x))?;
        let z = FpVar::new_input(cs.clone(), || value(|x| x.pow([5]) + x + Fr::one()))?;
        let x = FpVar::new_witness(cs, || value(|x| x))?;
        let x2 = &x * &x;
        let x4 = &x2 * &x2;
        (&x4 * &x + &x).enforce_equal(&y)?;
        (y + Fr::one()).enforce_equal(&z)
    }
}

fn public(x: Fr) -> Vec<Fr> {
    let y = x.pow([5]) + x;
    vec![y, y + Fr::one()]
}

#[test]
fn the_derived_key_is_arkworks_own_for_the_same_secrets() {
    let n = Qap::of(Demo { x: None }).unwrap().domain_size();
    let (alpha, beta) = (Fr::from(11u64), Fr::from(13u64));
    // arkworks draws τ from its rng first: draw it the same way.
    let domain = Radix2EvaluationDomain::<Fr>::new(n).unwrap();
    let tau = domain.sample_element_outside_domain(&mut StdRng::seed_from_u64(9));
    let ours = derive::initial_key(
        &Accumulator::from_secrets(n, tau, alpha, beta),
        &Qap::of(Demo { x: None }).unwrap(),
    )
    .unwrap();
    let g1 = ark_bn254::G1Projective::generator();
    let g2 = ark_bn254::G2Projective::generator();
    let theirs = Groth16::<Bn254>::generate_parameters_with_qap(
        Demo { x: None },
        alpha,
        beta,
        Fr::one(),
        Fr::one(),
        g1,
        g2,
        &mut StdRng::seed_from_u64(9),
    )
    .unwrap();
    assert_eq!(ours, theirs);
}

#[test]
fn a_three_party_ceremony_gives_a_key_that_proves_and_tampering_is_refused() {
    let mut rng = StdRng::seed_from_u64(3);
    let n = Qap::of(Demo { x: None }).unwrap().domain_size();

    // Phase 1 among three members, each checked by everyone after.
    let mut accs = vec![Accumulator::new(n)];
    let mut hashes = vec![transcript_hash(&[0; 32], &accs[0])];
    let mut proofs = Vec::new();
    for _ in 0..3 {
        let (next, proof) = accs
            .last()
            .unwrap()
            .contribute(hashes.last().unwrap(), &mut rng);
        hashes.push(transcript_hash(hashes.last().unwrap(), &next));
        accs.push(next);
        proofs.push(proof);
    }
    for i in 0..3 {
        accs[i]
            .verify(&accs[i + 1], &proofs[i], &hashes[i], i + 1, &mut rng)
            .unwrap();
    }
    // Replayed elsewhere, or applied to another accumulator: refused.
    assert!(matches!(
        accs[1].verify(&accs[2], &proofs[1], &hashes[0], 2, &mut rng),
        Err(CeremonyError::BadKnowledge { index: 2, .. })
    ));
    assert!(matches!(
        accs[0].verify(&accs[2], &proofs[1], &hashes[1], 2, &mut rng),
        Err(CeremonyError::BadKnowledge { .. })
    ));
    // A broken power of tau is caught by the batched pairing checks.
    let mut broken = accs[3].clone();
    broken.tau_g1[5] = broken.tau_g1[4];
    assert!(matches!(
        accs[2].verify(&broken, &proofs[2], &hashes[2], 3, &mut rng),
        Err(CeremonyError::BadUpdate { index: 3, .. })
    ));
    let mut broken = accs[3].clone();
    broken.alpha_tau_g1[2] = broken.tau_g1[2];
    assert!(
        accs[2]
            .verify(&broken, &proofs[2], &hashes[2], 3, &mut rng)
            .is_err()
    );

    // Phase 2 on the derived key, which a verifier checks without deriving it.
    let demo = Qap::of(Demo { x: None }).unwrap();
    let mut pks = vec![derive::initial_key(&accs[3], &demo).unwrap()];
    derive::check_initial_key(&accs[3], &demo, &pks[0], &mut rng).unwrap();
    type Tamper = fn(&mut ark_groth16::ProvingKey<Bn254>);
    let tamper: [(&str, Tamper); 6] = [
        ("A query", |k| k.a_query.swap(1, 2)),
        ("B query in G1", |k| k.b_g1_query[1] = k.b_g1_query[0]),
        ("B query in G2", |k| k.b_g2_query.swap(0, 2)),
        ("IC or L query", |k| k.l_query[0] = k.vk.gamma_abc_g1[0]),
        ("H query", |k| k.h_query.swap(0, 1)),
        ("alpha, beta", |k| k.beta_g1 = k.vk.alpha_g1),
    ];
    for (what, f) in tamper {
        let mut k = pks[0].clone();
        f(&mut k);
        let e = derive::check_initial_key(&accs[3], &demo, &k, &mut rng).unwrap_err();
        assert!(e.to_string().contains(what), "{what}: {e}");
    }
    assert!(phase2::is_fresh(&pks[0]));
    let mut h2 = vec![transcript_hash(&hashes[3], &pks[0])];
    let mut contributions = Vec::new();
    for _ in 0..3 {
        let (next, c) = phase2::contribute(pks.last().unwrap(), h2.last().unwrap(), &mut rng);
        h2.push(transcript_hash(h2.last().unwrap(), &next));
        pks.push(next);
        contributions.push(c);
    }
    for i in 0..3 {
        phase2::verify(
            &pks[i],
            &pks[i + 1],
            &contributions[i],
            &h2[i],
            i + 1,
            &mut rng,
        )
        .unwrap();
    }
    let mut broken = pks[3].clone();
    broken.l_query[0] = broken.h_query[0];
    assert!(matches!(
        phase2::verify(&pks[2], &broken, &contributions[2], &h2[2], 3, &mut rng),
        Err(CeremonyError::BadUpdate { index: 3, .. })
    ));
    let mut broken = pks[3].clone();
    broken.a_query.swap(0, 1);
    assert!(matches!(
        phase2::verify(&pks[2], &broken, &contributions[2], &h2[2], 3, &mut rng),
        Err(CeremonyError::Changed { index: 3, .. })
    ));

    // The final key proves with the standard prover, and verifies.
    let pk = pks.pop().unwrap();
    let pvk = Groth16::<Bn254>::process_vk(&pk.vk).unwrap();
    let x = Fr::from(3u64);
    let proof = Groth16::<Bn254>::prove(&pk, Demo { x: Some(x) }, &mut rng).unwrap();
    assert!(Groth16::<Bn254>::verify_with_processed_vk(&pvk, &public(x), &proof).unwrap());
    let mut wrong = public(x);
    wrong[0] += Fr::one();
    assert!(!Groth16::<Bn254>::verify_with_processed_vk(&pvk, &wrong, &proof).unwrap());
}

#[test]
fn a_transcript_on_disk_verifies_from_its_start_and_a_replaced_file_is_refused() {
    use yilian_zk::ceremony::transcript;
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let mut rng = StdRng::seed_from_u64(5);
    let demo = Qap::of(Demo { x: None }).unwrap();
    transcript::init(d, &demo).unwrap();
    assert!(transcript::init(d, &demo).is_err(), "only once");
    assert!(
        transcript::finish_phase1(d, &demo).is_err(),
        "phase 1 needs a contribution"
    );
    let mut steps = Vec::new();
    for _ in 0..2 {
        steps.push(transcript::contribute(d, &mut rng).unwrap());
    }
    transcript::finish_phase1(d, &demo).unwrap();
    for _ in 0..2 {
        steps.push(transcript::contribute(d, &mut rng).unwrap());
    }
    let (pk, verified) = transcript::verify(d, &demo, &mut rng).unwrap();
    assert_eq!(verified, steps, "the hashes each contributor anchored");
    assert_eq!(
        steps.iter().map(|s| (s.phase, s.index)).collect::<Vec<_>>(),
        [(1, 1), (1, 2), (2, 1), (2, 2)]
    );
    let x = Fr::from(2u64);
    let proof = Groth16::<Bn254>::prove(&pk, Demo { x: Some(x) }, &mut rng).unwrap();
    assert!(Groth16::<Bn254>::verify(&pk.vk, &public(x), &proof).unwrap());

    // A contribution replaced by a fresh one over the same predecessor
    // verifies alone but breaks the chain after it.
    let p1 = d.join("phase1");
    std::fs::copy(p1.join("0001.bin"), p1.join("0002.bin")).unwrap();
    let e = transcript::verify(d, &demo, &mut rng).unwrap_err();
    assert!(e.to_string().contains("contribution 2"), "{e}");
}

#[test]
#[ignore = "timing probe on the KYC statement: cargo test -p yilian-zk --test ceremony -- --ignored --nocapture"]
fn kyc_ceremony_timing() {
    use std::time::Instant;
    let mut rng = StdRng::seed_from_u64(3);
    let t = Instant::now();
    let kyc = Qap::statement(yilian_zk::Shape::F8).unwrap();
    eprintln!("synthesis {:?}", t.elapsed());
    let n = kyc.domain_size();
    let acc = Accumulator::new(n);
    let h = transcript_hash(&[0; 32], &acc);
    let t = Instant::now();
    let (next, proof) = acc.contribute(&h, &mut rng);
    eprintln!("{n}-point domain: phase-1 contribution {:?}", t.elapsed());
    let t = Instant::now();
    acc.verify(&next, &proof, &h, 1, &mut rng).unwrap();
    eprintln!("phase-1 verification {:?}", t.elapsed());
    let t = Instant::now();
    let pk = derive::initial_key(&next, &kyc).unwrap();
    eprintln!("derivation {:?}", t.elapsed());
    let t = Instant::now();
    derive::check_initial_key(&next, &kyc, &pk, &mut rng).unwrap();
    eprintln!("derivation checked {:?}", t.elapsed());
}
