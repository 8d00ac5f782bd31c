//! Interoperability checked by the reference tools, not by our own importer:
//! `snarkjs groth16 verify` accepts an exported proof, public inputs and
//! verifying key, and refuses a tampered public input; the generated
//! Solidity verifier, compiled by solc and run in an in-memory EVM with the
//! BN254 precompiles, gives the same answers.
//!
//! The tools are pinned in `tools/interop/package-lock.json`. `.ci/run`
//! installs them with `npm ci`; run alone, this test installs them the same
//! way when `node_modules` was not installed from that lock file.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

use ark_bn254::Fr;
use ark_ff::UniformRand;
use sha2::Digest;

use yilian_zk::keys;
use yilian_zk::prover::{self, KycProof};
use yilian_zk::query::{self, Predicate};
use yilian_zk::record::{CipherKey, EncryptedRecord, FieldValue, Record};
use yilian_zk::{KYC_STATEMENT, snarkjs, solidity};

fn tools() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tools/interop");
        // Installed from this lock file, or installed again.
        let lock = std::fs::read(dir.join("package-lock.json")).expect("the lock file");
        let stamp = dir.join("node_modules/.yilian-lock");
        let digest = hex::encode(sha2::Sha256::digest(&lock));
        if std::fs::read_to_string(&stamp).ok().as_deref() != Some(digest.as_str()) {
            let out = Command::new("npm")
                .args(["ci", "--no-audit", "--no-fund"])
                .current_dir(&dir)
                .output()
                .expect("npm is on the machine (Node.js and npm are required)");
            assert!(
                out.status.success(),
                "npm ci in {} failed; run it there by hand to see why:\n{}",
                dir.display(),
                String::from_utf8_lossy(&out.stderr)
            );
            std::fs::write(&stamp, &digest).unwrap();
        }
        dir
    })
}

fn node(args: &[&Path]) -> Output {
    Command::new("node")
        .args(args)
        .current_dir(tools())
        .output()
        .expect("node runs")
}

fn snarkjs_verify(vk: &Path, public: &Path, proof: &Path) -> Output {
    let cli = tools().join("node_modules/snarkjs/build/cli.cjs");
    node(&[
        &cli,
        Path::new("groth16"),
        Path::new("verify"),
        vk,
        public,
        proof,
    ])
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn write_json(path: &Path, value: &impl serde::Serialize) {
    std::fs::write(path, serde_json::to_string_pretty(value).unwrap()).unwrap();
}

fn proof() -> (ark_groth16::VerifyingKey<ark_bn254::Bn254>, KycProof) {
    let (pk, vk) = keys::setup(yilian_zk::Shape::F8, &mut keys::os_rng()).unwrap();
    let record = Record {
        fields: vec![
            ("income".into(), FieldValue::Integer(120_000)),
            ("country".into(), FieldValue::Identifier("CN".into())),
        ],
    };
    let mut rng = ark_std::test_rng();
    let key = CipherKey::new([Fr::rand(&mut rng), Fr::rand(&mut rng)]);
    let enc = EncryptedRecord::encrypt("customer-1", &record, &key, 42).unwrap();
    let predicates = vec![
        Predicate::Gte {
            field: "income".into(),
            value: 100_000,
        },
        Predicate::Eq {
            field: "country".into(),
            value: FieldValue::Identifier("CN".into()),
        },
    ];
    let q = query::compile(&enc, &predicates).unwrap();
    let p = prover::prove(&pk, &enc, &key, &q, None, &mut keys::os_rng()).unwrap();
    assert!(p.public.result);
    (vk, p)
}

#[test]
fn snarkjs_and_the_solidity_verifier_accept_our_proofs_and_refuse_a_tampered_input() {
    let dir = tempfile::tempdir().unwrap();
    let (vk, p) = proof();
    let inputs = p.public.to_inputs();
    let vk_path = dir.path().join("verification_key.json");
    let proof_path = dir.path().join("proof.json");
    let public_path = dir.path().join("public.json");
    write_json(&vk_path, &snarkjs::export_vk(&vk));
    write_json(&proof_path, &snarkjs::export_proof(&p.proof));
    write_json(&public_path, &snarkjs::export_public(&inputs));

    let ok = snarkjs_verify(&vk_path, &public_path, &proof_path);
    assert!(ok.status.success(), "snarkjs refused: {}", text(&ok));
    assert!(text(&ok).contains("OK"), "{}", text(&ok));

    // The result bit is the last public input: claim the opposite answer.
    let mut forged = inputs.clone();
    let last = forged.len() - 1;
    forged[last] = Fr::from(1u64) - forged[last];
    let forged_path = dir.path().join("forged.json");
    write_json(&forged_path, &snarkjs::export_public(&forged));
    let bad = snarkjs_verify(&vk_path, &forged_path, &proof_path);
    assert!(!bad.status.success(), "snarkjs accepted: {}", text(&bad));
    assert!(text(&bad).contains("Invalid proof"), "{}", text(&bad));

    // The same answers from the Solidity verifier on the EVM.
    let sol = dir.path().join("Verifier.sol");
    let hash = hex::encode(keys::vk_hash(&vk));
    std::fs::write(
        &sol,
        solidity::verifier(&vk, "YilianKycVerifier", KYC_STATEMENT, &hash),
    )
    .unwrap();
    let evm = |inputs: &[Fr], name: &str| {
        let call = dir.path().join(name);
        write_json(&call, &solidity::calldata(&p.proof, inputs));
        let script = tools().join("evm-verify.mjs");
        let out = node(&[&script, &sol, Path::new("YilianKycVerifier"), &call]);
        assert!(out.status.success(), "the EVM run failed: {}", text(&out));
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    assert!(evm(&inputs, "call.json").starts_with("true"));
    assert!(evm(&forged, "forged-call.json").starts_with("false"));
}

/// Knows x with x·x·x = y, y public.
#[derive(Clone)]
struct Cube(Option<Fr>);

impl ark_relations::gr1cs::ConstraintSynthesizer<Fr> for Cube {
    fn generate_constraints(
        self,
        cs: ark_relations::gr1cs::ConstraintSystemRef<Fr>,
    ) -> Result<(), ark_relations::gr1cs::SynthesisError> {
        use ark_r1cs_std::{alloc::AllocVar, eq::EqGadget, fields::fp::FpVar};
        use ark_relations::gr1cs::SynthesisError::AssignmentMissing;
        let y = FpVar::new_input(cs.clone(), || {
            self.0.map(|x| x * x * x).ok_or(AssignmentMissing)
        })?;
        let x = FpVar::new_witness(cs, || self.0.ok_or(AssignmentMissing))?;
        (&x * &x * &x).enforce_equal(&y)
    }
}

#[test]
fn phase_1_can_come_from_a_snarkjs_powers_of_tau_file() {
    use ark_snark::SNARK;
    use yilian_zk::ceremony::{derive::Qap, transcript};
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let cli = tools().join("node_modules/snarkjs/build/cli.cjs");
    let (p0, p1) = (d.join("pot0.ptau"), d.join("pot1.ptau"));
    for args in [
        vec![
            cli.as_os_str(),
            "powersoftau".as_ref(),
            "new".as_ref(),
            "bn128".as_ref(),
            "4".as_ref(),
            p0.as_os_str(),
        ],
        vec![
            cli.as_os_str(),
            "powersoftau".as_ref(),
            "contribute".as_ref(),
            p0.as_os_str(),
            p1.as_os_str(),
            "--name=one".as_ref(),
            "-e=some entropy".as_ref(),
        ],
    ] {
        let out = Command::new("node").args(&args).output().unwrap();
        assert!(out.status.success(), "snarkjs: {}", text(&out));
    }
    let ptau = std::fs::read(&p1).unwrap();
    let mut rng = keys::os_rng();
    let cube = Qap::of(Cube(None)).unwrap();

    // A damaged file is refused, and starts nothing.
    let bad_dir = d.join("bad");
    let mut damaged = ptau.clone();
    let mid = damaged.len() / 3;
    damaged[mid] ^= 0x40;
    assert!(transcript::import_ptau(&bad_dir, &damaged, &cube, &mut rng).is_err());
    assert!(!bad_dir.join("phase2").exists());
    assert!(transcript::import_ptau(&bad_dir, b"not a ptau", &cube, &mut rng).is_err());

    let cer = d.join("cer");
    transcript::import_ptau(&cer, &ptau, &cube, &mut rng).unwrap();
    let step = transcript::contribute(&cer, &mut rng).unwrap();
    assert_eq!((step.phase, step.index), (2, 1));
    let (pk, steps) = transcript::verify(&cer, &cube, &mut rng).unwrap();
    assert_eq!(steps, [step]);
    let x = Fr::from(3u64);
    let proof =
        ark_groth16::Groth16::<ark_bn254::Bn254>::prove(&pk, Cube(Some(x)), &mut rng).unwrap();
    assert!(
        ark_groth16::Groth16::<ark_bn254::Bn254>::verify(&pk.vk, &[x * x * x], &proof).unwrap()
    );
}
