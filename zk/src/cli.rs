//! `yilian zk ...`: file-based setup, registration, proving, verifying and
//! export. Proofs and public inputs are written in snarkjs' JSON formats.

use std::path::{Path, PathBuf};

use anyhow::Context;
use ark_bn254::Fr;
use clap::Subcommand;

use yilian_circuits::{kyc, set::SortedSet};

use crate::record::{CipherKey, EncryptedRecord, Record};
use crate::{keys, prover, query, snarkjs, verifier};

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Generate the KYC statement's proving and verifying keys (single-party
    /// setup: development only; production needs a multi-party ceremony).
    Setup {
        #[arg(long, default_value = ".")]
        out: PathBuf,
    },
    /// Encrypt a plaintext record (JSON) under a KMS ZK key and print its anchor.
    RegisterRecord {
        #[arg(long)]
        record_id: String,
        /// Plaintext record JSON: `{"fields": [["income", {"integer": 1}], ...]}`.
        #[arg(long)]
        record: PathBuf,
        /// The KMS ZK key: 64 bytes (two little-endian field elements) as hex.
        #[arg(long)]
        key_file: PathBuf,
        #[arg(long)]
        nonce: u128,
        #[arg(long)]
        out: PathBuf,
    },
    /// Print the Merkle root of a set (one identifier per line).
    SetRoot {
        #[arg(long)]
        set_file: PathBuf,
    },
    /// Prove a query's answer on an encrypted record (the holder's side).
    Query {
        #[arg(long)]
        proving_key: PathBuf,
        #[arg(long)]
        record: PathBuf,
        #[arg(long)]
        key_file: PathBuf,
        /// Predicates JSON: `[{"op": "gte", "field": "income", "value": 1}, ...]`.
        #[arg(long)]
        query: PathBuf,
        #[arg(long)]
        set_file: Option<PathBuf>,
        /// Directory for `proof.json` and `public.json`.
        #[arg(long, default_value = ".")]
        out: PathBuf,
    },
    /// Verify a proof offline from files; prints the proven answer.
    Verify {
        /// `verification_key.json` (snarkjs) or a binary key from `setup`.
        #[arg(long)]
        vk: PathBuf,
        #[arg(long)]
        proof: PathBuf,
        #[arg(long)]
        public: PathBuf,
        /// Optionally the encrypted record whose anchor the proof must match.
        #[arg(long)]
        record: Option<PathBuf>,
    },
    /// Export a binary verifying key as snarkjs `verification_key.json`.
    ExportSnarkjs {
        #[arg(long)]
        vk: PathBuf,
        #[arg(long, default_value = "verification_key.json")]
        out: PathBuf,
    },
}

fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> anyhow::Result<T> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))
}

fn write_json<T: serde::Serialize>(path: &Path, value: &T) -> anyhow::Result<()> {
    std::fs::write(path, serde_json::to_string_pretty(value)?)
        .with_context(|| format!("writing {}", path.display()))
}

fn read_key(path: &Path) -> anyhow::Result<CipherKey> {
    let text = zeroize::Zeroizing::new(std::fs::read_to_string(path)?);
    let bytes = zeroize::Zeroizing::new(hex::decode(text.trim()).context("key file is not hex")?);
    Ok(CipherKey::from_kms_bytes(&bytes)?)
}

/// Reads a set file: one identifier per line, hashed as record identifiers are.
pub fn read_set(path: &Path) -> anyhow::Result<SortedSet> {
    let text = std::fs::read_to_string(path)?;
    let members: Vec<Fr> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(kyc::identifier)
        .collect();
    Ok(SortedSet::build(&members)?)
}

fn load_vk(path: &Path) -> anyhow::Result<ark_groth16::VerifyingKey<ark_bn254::Bn254>> {
    let bytes = std::fs::read(path)?;
    match serde_json::from_slice::<snarkjs::VerificationKeyJson>(&bytes) {
        Ok(json) => Ok(snarkjs::import_vk(&json)?),
        Err(_) => Ok(keys::from_bytes("verifying key", &bytes)?),
    }
}

impl Command {
    /// Runs the command. Proving is CPU-bound and runs on the calling thread.
    pub async fn run(self) -> anyhow::Result<()> {
        match self {
            Command::Setup { out } => {
                std::fs::create_dir_all(&out)?;
                let (pk, vk) = keys::setup(&mut keys::os_rng())?;
                keys::write_key(&out.join("kyc.pk"), &pk)?;
                keys::write_key(&out.join("kyc.vk"), &vk)?;
                write_json(&out.join("verification_key.json"), &snarkjs::export_vk(&vk))?;
                println!(
                    "statement {}: vk hash {}",
                    crate::KYC_STATEMENT,
                    hex::encode(keys::vk_hash(&vk))
                );
                println!("single-party setup: for development only");
            }
            Command::RegisterRecord {
                record_id,
                record,
                key_file,
                nonce,
                out,
            } => {
                let plain: Record = read_json(&record)?;
                let key = read_key(&key_file)?;
                let enc = EncryptedRecord::encrypt(&record_id, &plain, &key, nonce)?;
                write_json(&out, &enc)?;
                let anchor = enc.anchor()?;
                println!("record {record_id}");
                println!("ciphertext hash {}", hex::encode(anchor.ciphertext_hash));
                println!("key commitment  {}", hex::encode(anchor.key_commitment));
            }
            Command::SetRoot { set_file } => {
                let set = read_set(&set_file)?;
                println!("{} members, root {}", set.len(), set.root());
            }
            Command::Query {
                proving_key,
                record,
                key_file,
                query: query_file,
                set_file,
                out,
            } => {
                let pk = keys::read_proving_key(&proving_key)?;
                let enc: EncryptedRecord = read_json(&record)?;
                let key = read_key(&key_file)?;
                let predicates: Vec<query::Predicate> = read_json(&query_file)?;
                let set = set_file.as_deref().map(read_set).transpose()?;
                let q = query::compile(&enc, &predicates)?;
                let p = prover::prove(&pk, &enc, &key, &q, set.as_ref(), &mut keys::os_rng())?;
                std::fs::create_dir_all(&out)?;
                write_json(&out.join("proof.json"), &snarkjs::export_proof(&p.proof))?;
                write_json(
                    &out.join("public.json"),
                    &snarkjs::export_public(&p.public.to_inputs()),
                )?;
                println!("proved: {}", p.public.result);
            }
            Command::Verify {
                vk,
                proof,
                public,
                record,
            } => {
                let vk = load_vk(&vk)?;
                let proof = snarkjs::import_proof(&read_json(&proof)?)?;
                let inputs = snarkjs::import_public(&read_json::<Vec<String>>(&public)?)?;
                let public = kyc::KycPublic::from_inputs(&inputs)?;
                let pvk = keys::prepare(&vk);
                let answer = match record {
                    Some(r) => {
                        let enc: EncryptedRecord = read_json(&r)?;
                        verifier::verify_against_anchor(&pvk, &proof, &public, &enc.anchor()?)?
                    }
                    None => verifier::verify(&pvk, &proof, &public)?,
                };
                println!("valid proof; the query is {answer}");
            }
            Command::ExportSnarkjs { vk, out } => {
                let vk = keys::read_verifying_key(&vk)?;
                write_json(&out, &snarkjs::export_vk(&vk))?;
                println!("wrote {}", out.display());
            }
        }
        Ok(())
    }
}
