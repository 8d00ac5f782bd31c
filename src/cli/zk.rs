//! `yilian zk ...`: file-based setup, registration, proving, verifying and
//! export, and, against a node over mutual TLS, query grants and questions
//! asked under them. Proofs and public inputs are written in snarkjs' JSON
//! formats.

use std::path::{Path, PathBuf};

use anyhow::Context;
use ark_bn254::Fr;
use clap::Subcommand;

use yilian_circuits::{kyc, set::SortedSet};

use yilian_zk::Shape;
use yilian_zk::record::{CipherKey, EncryptedRecord, Record};
use yilian_zk::service::{ZkClient, pb};
use yilian_zk::{consent, keys, prover, query, snarkjs, verifier};

use super::kms::{Conn, account};

async fn zk_client(conn: &Conn) -> anyhow::Result<ZkClient<tonic::transport::Channel>> {
    let (channel, _) = conn.channel().await?;
    Ok(ZkClient::new(channel).max_decoding_message_size(yilian_zk::service::MAX_MESSAGE_BYTES))
}

fn budget(s: &str) -> anyhow::Result<(String, u32)> {
    let (field, k) = s
        .split_once('=')
        .with_context(|| format!("--budget {s:?}: write FIELD=K, e.g. income=2"))?;
    let k = k
        .parse()
        .with_context(|| format!("--budget {s:?}: K must be a whole number"))?;
    Ok((field.to_owned(), k))
}

fn grpc(e: tonic::Status) -> anyhow::Error {
    anyhow::anyhow!("{:?}: {}", e.code(), e.message())
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Let a verifier ask about one of your records (as its data holder, on
    /// the customer's behalf): the predicates allowed, the number of uses
    /// (one: burn after reading), the time window and the disclosure budget.
    Grant {
        #[command(flatten)]
        conn: Conn,
        #[arg(long = "record")]
        record_id: String,
        /// The verifier: 32-byte hex public key or identity directory.
        #[arg(long)]
        verifier: String,
        #[command(flatten)]
        terms: GrantTerms,
        /// The customer's countersigned terms (from `yilian zk consent`),
        /// needed for a record with a customer; they replace the terms flags.
        #[arg(long)]
        consent: Option<PathBuf>,
    },
    /// Countersign a grant's terms as the record's customer, where the
    /// customer has an identity; writes the file the holder passes to
    /// `yilian zk grant --consent`. Offline: only your key signs.
    Consent {
        /// The customer's identity directory.
        #[arg(long)]
        identity: PathBuf,
        #[arg(long = "record")]
        record_id: String,
        /// The verifier: 32-byte hex public key or identity directory.
        #[arg(long)]
        verifier: String,
        #[command(flatten)]
        terms: GrantTerms,
        #[arg(long, default_value = "consent.json")]
        out: PathBuf,
    },
    /// Anchor an encrypted record (from `register-record`) on the ledger and
    /// register it with a node, as its data holder. The node keeps the key
    /// only sealed under your KMS master key `--wrap-key`.
    Register {
        #[command(flatten)]
        conn: Conn,
        #[arg(long)]
        record: PathBuf,
        /// The KMS ZK key: 64 bytes as hex.
        #[arg(long)]
        key_file: PathBuf,
        /// An AES-256-GCM master key of yours in the node's KMS.
        #[arg(long)]
        wrap_key: String,
        /// The record's customer, if it has an identity (its hex key or
        /// identity directory): every grant then needs its countersignature.
        #[arg(long)]
        customer: Option<String>,
    },
    /// The multi-party setup ceremony of the KYC statement among the
    /// consortium's members.
    #[command(subcommand)]
    Ceremony(CeremonyCommand),
    /// End one of your query grants now.
    RevokeGrant {
        #[command(flatten)]
        conn: Conn,
        #[arg(long)]
        grant: String,
    },
    /// Ask a record's node a question under a grant (as the verifier); the
    /// proof is checked here against the verifying key and the record anchor
    /// on the ledger, and that it states the question asked (operators,
    /// constants and clauses; field positions are the holder's), then
    /// written to `--out` with its public inputs.
    Ask {
        #[command(flatten)]
        conn: Conn,
        #[arg(long)]
        grant: String,
        #[arg(long = "record")]
        record_id: String,
        /// Predicates JSON (ANDed), each one the grant allows.
        #[arg(long)]
        query: PathBuf,
        /// Directory for `proof.json`, `public.json` and `verification_key.json`.
        #[arg(long, default_value = ".")]
        out: PathBuf,
    },
    /// Generate the KYC statement's proving and verifying keys by a
    /// single-party setup: whoever runs it can forge proofs. Development
    /// only; `yilian zk ceremony` is the multi-party setup.
    Setup {
        #[arg(long, default_value = ".")]
        out: PathBuf,
        /// The statement: kyc8-v2, kyc16-v2 or kyc32-v2 (records of up to 8,
        /// 16 or 32 fields).
        #[arg(long, default_value = yilian_zk::KYC_STATEMENT, value_parser = parse_statement)]
        statement: Shape,
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
    /// Export a verifying key (binary or snarkjs JSON) as a Solidity
    /// verifier contract that checks proofs with the EVM's BN254 precompiles.
    ExportSolidity {
        #[arg(long)]
        vk: PathBuf,
        /// The statement: kyc8-v2, kyc16-v2 or kyc32-v2 (records of up to 8,
        /// 16 or 32 fields).
        #[arg(long, default_value = yilian_zk::KYC_STATEMENT, value_parser = parse_statement)]
        statement: Shape,

        #[arg(long, default_value = "YilianKycVerifier")]
        contract: String,
        #[arg(long, default_value = "Verifier.sol")]
        out: PathBuf,
    },
}

/// A grant's terms on the command line.
#[derive(Debug, clap::Args)]
pub struct GrantTerms {
    /// Predicates JSON, each allowed exactly:
    /// `[{"op": "gte", "field": "income", "value": 100000}, ...]`.
    #[arg(long)]
    allow: Option<PathBuf>,
    /// Uses allowed.
    #[arg(long, default_value_t = 1)]
    uses: u32,
    /// How long the grant lasts from now, in seconds.
    #[arg(long, default_value_t = 86_400)]
    valid_for: u64,
    /// Distinct constants the verifier may learn about a field
    /// (default 2), as FIELD=K; repeatable.
    #[arg(long, value_parser = budget)]
    budget: Vec<(String, u32)>,
}

impl GrantTerms {
    fn consent(self, record_id: String, verifier: [u8; 32]) -> anyhow::Result<consent::Consent> {
        let allow = self
            .allow
            .context("--allow: give the predicates JSON the grant allows")?;
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)?
            .as_millis() as u64;
        let allowed: Vec<query::Predicate> = read_json(&allow)?;
        // Signed as the node will rebuild them from the wire (an OR inside
        // an OR is flattened there).
        let allowed = yilian_zk::service::predicates_from_pb(
            &yilian_zk::service::predicates_to_pb(&allowed),
        )?;
        Ok(consent::Consent {
            consent_id: format!("c-{}", hex::encode(rand::random::<[u8; 16]>())),
            record_id,
            verifier,
            allowed,
            max_uses: self.uses,
            not_before_ms: now,
            not_after_ms: now.saturating_add(self.valid_for.saturating_mul(1000)),
            budget: self.budget.into_iter().collect(),
        })
    }
}

/// A customer's consent file: the terms and the customer's signature.
#[derive(serde::Serialize, serde::Deserialize)]
struct ConsentFile {
    terms: consent::Consent,
    countersignature: consent::Countersignature,
}

#[derive(Debug, Subcommand)]
pub enum CeremonyCommand {
    /// Start a ceremony in a directory: phase 1 (powers of tau) sized to the
    /// KYC statement's QAP domain, among the members; or, with `--ptau`,
    /// phase 1 from a public snarkjs/Hermez powers-of-tau file, so that the
    /// members run phase 2 only.
    Init {
        #[arg(long)]
        dir: PathBuf,
        #[arg(long)]
        ptau: Option<PathBuf>,
        /// The statement: kyc8-v2, kyc16-v2 or kyc32-v2 (records of up to 8,
        /// 16 or 32 fields).
        #[arg(long, default_value = yilian_zk::KYC_STATEMENT, value_parser = parse_statement)]
        statement: Shape,
    },
    /// Contribute to the current phase as a member, with fresh secrets that
    /// are forgotten at once, and anchor the transcript hash on the ledger.
    Contribute {
        #[command(flatten)]
        conn: Conn,
        #[arg(long)]
        dir: PathBuf,
        /// The statement: kyc8-v2, kyc16-v2 or kyc32-v2 (records of up to 8,
        /// 16 or 32 fields).
        #[arg(long, default_value = yilian_zk::KYC_STATEMENT, value_parser = parse_statement)]
        statement: Shape,
    },
    /// End phase 1: derive the statement's initial phase-2 key from it.
    FinishPhase1 {
        #[arg(long)]
        dir: PathBuf,
        /// The statement: kyc8-v2, kyc16-v2 or kyc32-v2 (records of up to 8,
        /// 16 or 32 fields).
        #[arg(long, default_value = yilian_zk::KYC_STATEMENT, value_parser = parse_statement)]
        statement: Shape,
    },
    /// Verify the whole transcript from its start, and, given a node, that
    /// every contribution is anchored on the ledger by a member; writes the
    /// resulting keys to `--out` (<statement>.pk, <statement>.vk,
    /// verification_key.json).
    Verify {
        #[arg(long)]
        dir: PathBuf,
        /// The statement: kyc8-v2, kyc16-v2 or kyc32-v2 (records of up to 8,
        /// 16 or 32 fields).
        #[arg(long, default_value = yilian_zk::KYC_STATEMENT, value_parser = parse_statement)]
        statement: Shape,

        #[arg(long)]
        out: Option<PathBuf>,
        #[arg(long)]
        node: Option<String>,
        #[arg(long)]
        identity: Option<PathBuf>,
    },
}

fn parse_statement(name: &str) -> Result<Shape, String> {
    Shape::for_statement(name)
        .ok_or_else(|| format!("give kyc8-v2, kyc16-v2 or kyc32-v2, not {name:?}"))
}

fn anchor_file(dir: &Path, step: &yilian_zk::ceremony::transcript::Step) -> PathBuf {
    dir.join(format!("phase{}", step.phase))
        .join(format!("{:04}.anchor", step.index))
}

/// Adds `member`'s contribution to the ceremony in `dir` (fresh secrets,
/// forgotten at once) and anchors its transcript hash on the ledger over
/// `channel`; returns the step and the anchoring entry's index, which is
/// also kept beside the contribution (`NNNN.anchor`).
pub async fn contribute_anchored(
    dir: &Path,
    statement: Shape,
    channel: tonic::transport::Channel,
    member: &yilian_identity::Identity,
) -> anyhow::Result<(yilian_zk::ceremony::transcript::Step, u64)> {
    let working = super::progress::working(
        "contributing (checking the transcript, then adding your randomness)",
    );
    let step = tokio::task::spawn_blocking({
        let dir = dir.to_owned();
        move || yilian_zk::ceremony::transcript::contribute(&dir, &mut keys::os_rng())
    })
    .await??;
    drop(working);
    let submitted = yilian_ledger::service::LedgerClient::new(channel)
        .submit(
            &yilian_ledger::Transaction::new(yilian_ledger::Payload::CeremonyContribution {
                statement: statement.statement().into(),
                phase: step.phase,
                index: step.index,
                hash: step.hash,
            })
            .sign(member.signing_key()),
        )
        .await;
    let receipt = match submitted {
        Ok(r) => r,
        Err(e) => {
            // An unanchored contribution would be built on and then refused
            // by every node: it is taken back, and the member may try again.
            yilian_zk::ceremony::transcript::withdraw(dir, &step)?;
            return Err(grpc(e));
        }
    };
    std::fs::write(anchor_file(dir, &step), receipt.index.to_string())?;
    Ok((step, receipt.index))
}

impl CeremonyCommand {
    async fn run(self) -> anyhow::Result<()> {
        use yilian_zk::ceremony::derive::Qap;
        use yilian_zk::ceremony::transcript;
        match self {
            CeremonyCommand::Init {
                dir,
                ptau: Some(ptau),
                statement,
            } => {
                let bytes = std::fs::read(&ptau)
                    .with_context(|| format!("reading --ptau {}", ptau.display()))?;
                let d = dir.clone();
                let _working = super::progress::working(format!("importing {}", ptau.display()));
                let digest = tokio::task::spawn_blocking(move || {
                    transcript::import_ptau(
                        &d,
                        &bytes,
                        &Qap::statement(statement)?,
                        &mut keys::os_rng(),
                    )
                })
                .await?
                .with_context(|| format!("--ptau {}", ptau.display()))?;
                println!(
                    "phase 1 taken from {} (SHA-256 {}: compare it with the public ceremony's); phase 2 starts in {}",
                    ptau.display(),
                    hex::encode(digest),
                    dir.display()
                );
            }
            CeremonyCommand::Init {
                dir,
                ptau: None,
                statement,
            } => {
                let n = transcript::init(&dir, &Qap::statement(statement)?)?;
                println!(
                    "ceremony for {} started in {}: {n}-point domain",
                    statement.statement(),
                    dir.display()
                );
            }
            CeremonyCommand::Contribute {
                conn,
                dir,
                statement,
            } => {
                let (channel, id) = conn.channel().await?;
                let (step, index) = contribute_anchored(&dir, statement, channel, &id).await?;
                println!(
                    "phase {} contribution {}: transcript hash {}, anchored at ledger entry {index}",
                    step.phase,
                    step.index,
                    hex::encode(step.hash),
                );
            }
            CeremonyCommand::FinishPhase1 { dir, statement } => {
                let d = dir.clone();
                let working = super::progress::working("deriving the statement's phase-2 key");
                tokio::task::spawn_blocking(move || {
                    transcript::finish_phase1(&d, &Qap::statement(statement)?)
                })
                .await??;
                drop(working);
                println!(
                    "phase 1 finished; phase 2 starts from the derived key in {}",
                    dir.display()
                );
            }
            CeremonyCommand::Verify {
                dir,
                statement,
                out,
                node,
                identity,
            } => {
                let d = dir.clone();
                let working =
                    super::progress::working("verifying every contribution of the transcript");
                let (pk, steps) = tokio::task::spawn_blocking(move || {
                    transcript::verify(&d, &Qap::statement(statement)?, &mut keys::os_rng())
                })
                .await??;
                drop(working);
                if let (Some(node), Some(identity)) = (node, identity) {
                    let conn = Conn { node, identity };
                    let (channel, _) = conn.channel().await?;
                    let mut ledger = yilian_ledger::service::LedgerClient::new(channel);
                    for step in &steps {
                        let path = anchor_file(&dir, step);
                        let index: u64 = std::fs::read_to_string(&path)
                            .with_context(|| format!("{}: no anchor recorded", path.display()))?
                            .trim()
                            .parse()
                            .with_context(|| format!("{}: not a ledger index", path.display()))?;
                        let entry = ledger.entry(index).await.map_err(grpc)?;
                        let expected = yilian_ledger::Payload::CeremonyContribution {
                            statement: statement.statement().into(),
                            phase: step.phase,
                            index: step.index,
                            hash: step.hash,
                        };
                        anyhow::ensure!(
                            entry.tx.payload == expected,
                            "phase {} contribution {}: ledger entry {index} does not anchor its hash",
                            step.phase,
                            step.index
                        );
                        println!(
                            "phase {} contribution {}: anchored at entry {index} by member {}",
                            step.phase,
                            step.index,
                            hex::encode(entry.signer)
                        );
                    }
                }
                let vk_hash = keys::vk_hash(&pk.vk);
                if let Some(out) = out {
                    std::fs::create_dir_all(&out)?;
                    let name = statement.statement();
                    keys::write_key(&out.join(format!("{name}.pk")), &pk)?;
                    keys::write_key(&out.join(format!("{name}.vk")), &pk.vk)?;
                    write_json(
                        &out.join("verification_key.json"),
                        &snarkjs::export_vk(&pk.vk),
                    )?;
                }
                if let Some(d) = transcript::imported_digest(&dir)? {
                    println!(
                        "phase 1 from a .ptau file with SHA-256 {}: compare it with the public ceremony's",
                        hex::encode(d)
                    );
                }
                println!(
                    "transcript verified: {} contributions; verifying key hash {}",
                    steps.len(),
                    hex::encode(vk_hash)
                );
            }
        }
        Ok(())
    }
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
            Command::Grant {
                conn,
                record_id,
                verifier,
                terms,
                consent,
            } => {
                let verifier = account(&verifier).context("--verifier")?;
                let (terms, signature) = match consent {
                    Some(path) => {
                        let file: ConsentFile = read_json(&path)?;
                        anyhow::ensure!(
                            file.terms.record_id == record_id && file.terms.verifier == verifier,
                            "{}: the customer consented for another record or verifier than --record and --verifier",
                            path.display()
                        );
                        (file.terms, file.countersignature.signature)
                    }
                    None => (terms.consent(record_id, verifier)?, Vec::new()),
                };
                let r = zk_client(&conn)
                    .await?
                    .grant(pb::GrantRequest {
                        record_id: terms.record_id,
                        verifier: verifier.to_vec(),
                        allowed: yilian_zk::service::predicates_to_pb(&terms.allowed),
                        max_uses: Some(terms.max_uses),
                        not_before_ms: terms.not_before_ms,
                        not_after_ms: terms.not_after_ms,
                        budget: terms.budget.into_iter().collect(),
                        customer_signature: signature,
                        consent_id: terms.consent_id,
                    })
                    .await
                    .map_err(grpc)?
                    .into_inner();
                println!("grant {}", r.grant_id);
                println!(
                    "recorded at ledger entry {}, terms {}",
                    r.ledger_index,
                    hex::encode(r.terms_hash)
                );
            }
            Command::Consent {
                identity,
                record_id,
                verifier,
                terms,
                out,
            } => {
                let me = yilian_identity::Identity::load(&identity)
                    .with_context(|| format!("--identity {}", identity.display()))?;
                let verifier = account(&verifier).context("--verifier")?;
                let terms = terms.consent(record_id, verifier)?;
                let countersignature = terms.sign(me.signing_key());
                write_json(
                    &out,
                    &ConsentFile {
                        terms,
                        countersignature,
                    },
                )?;
                println!(
                    "wrote {}: give it to the record's holder (yilian zk grant --consent)",
                    out.display()
                );
            }
            Command::Register {
                conn,
                record,
                key_file,
                wrap_key,
                customer,
            } => {
                let customer = customer
                    .map(|c| account(&c).context("--customer"))
                    .transpose()?
                    .map_or_else(Vec::new, |c| c.to_vec());
                let enc: EncryptedRecord = read_json(&record)?;
                let text = zeroize::Zeroizing::new(
                    std::fs::read_to_string(&key_file)
                        .with_context(|| format!("reading {}", key_file.display()))?,
                );
                let key = hex::decode(text.trim())
                    .with_context(|| format!("{}: not hex", key_file.display()))?;
                let (channel, id) = conn.channel().await?;
                let anchor = enc.anchor()?;
                let anchored = yilian_ledger::service::LedgerClient::new(channel.clone())
                    .submit(
                        &yilian_ledger::Transaction::new(yilian_ledger::Payload::RecordAnchor {
                            record_id: anchor.record_id,
                            ciphertext_hash: anchor.ciphertext_hash,
                            key_commitment: anchor.key_commitment,
                        })
                        .sign(id.signing_key()),
                    )
                    .await
                    .map_err(grpc)?;
                println!("anchored at ledger entry {}", anchored.index);
                let r = ZkClient::new(channel)
                    .register_record(pb::RegisterRecordRequest {
                        record: Some((&enc).into()),
                        key,
                        wrap_key_id: wrap_key,
                        customer,
                    })
                    .await
                    .map_err(grpc)?
                    .into_inner();
                println!(
                    "registered {} (anchor at ledger entry {}{})",
                    r.record_id,
                    r.anchor_index,
                    if r.replaced { ", replacing" } else { "" }
                );
            }
            Command::Ceremony(c) => c.run().await?,
            Command::RevokeGrant { conn, grant } => {
                let r = zk_client(&conn)
                    .await?
                    .revoke_grant(pb::RevokeGrantRequest { grant_id: grant })
                    .await
                    .map_err(grpc)?
                    .into_inner();
                println!("revoked {} after {} uses", r.grant_id, r.uses);
            }
            Command::Ask {
                conn,
                grant,
                record_id,
                query: query_file,
                out,
            } => {
                let predicates: Vec<query::Predicate> = read_json(&query_file)?;
                let (channel, _) = conn.channel().await?;
                let mut client = ZkClient::new(channel.clone())
                    .max_decoding_message_size(yilian_zk::service::MAX_MESSAGE_BYTES);
                let r = client
                    .query(pb::QueryRequest {
                        record_id: record_id.clone(),
                        predicates: yilian_zk::service::predicates_to_pb(&predicates),
                        grant_id: grant,
                    })
                    .await
                    .map_err(grpc)?
                    .into_inner();
                let wire = r.proof.as_ref().context("the node sent no proof")?;
                let vk = client
                    .verifying_key(pb::VerifyingKeyRequest {
                        statement: wire.statement.clone(),
                    })
                    .await
                    .map_err(grpc)?
                    .into_inner();
                let proof = yilian_zk::service::proof_from_pb(wire)?;
                // Believed only against what the ledger says: the verifying
                // key its anchor names, and the record's anchor by its holder.
                let mut ledger = yilian_ledger::service::LedgerClient::new(channel);
                match ledger
                    .entry(vk.anchor_index)
                    .await
                    .map_err(grpc)?
                    .tx
                    .payload
                {
                    yilian_ledger::Payload::VerifyingKeyAnchor { vk_hash, .. }
                        if vk_hash.as_slice() == vk.vk_hash.as_slice() => {}
                    _ => anyhow::bail!(
                        "the node's verifying key is not the one its ledger entry {} anchors",
                        vk.anchor_index
                    ),
                }
                let entry = ledger.entry(r.anchor_index).await.map_err(grpc)?;
                let anchor = match entry.tx.payload {
                    yilian_ledger::Payload::RecordAnchor {
                        record_id: id,
                        ciphertext_hash,
                        key_commitment,
                    } if id == record_id && entry.signer.as_slice() == r.holder.as_slice() => {
                        yilian_zk::record::RecordAnchor {
                            record_id: id,
                            ciphertext_hash,
                            key_commitment,
                        }
                    }
                    _ => anyhow::bail!(
                        "ledger entry {} is not the holder's anchor of {record_id}",
                        r.anchor_index
                    ),
                };
                let vk: ark_groth16::VerifyingKey<ark_bn254::Bn254> =
                    keys::from_bytes("verifying key", &vk.verifying_key)?;
                let answer = verifier::verify_against_anchor(
                    &keys::prepare(&vk),
                    &proof.proof,
                    &proof.public,
                    &anchor,
                )?;
                anyhow::ensure!(
                    query::states(&predicates, &proof.public.query),
                    "the node proved another question than {}: its public inputs state other operators, constants or clauses",
                    query_file.display()
                );
                std::fs::create_dir_all(&out)?;
                write_json(
                    &out.join("proof.json"),
                    &snarkjs::export_proof(&proof.proof),
                )?;
                write_json(
                    &out.join("public.json"),
                    &snarkjs::export_public(&proof.public.to_inputs()),
                )?;
                write_json(&out.join("verification_key.json"), &snarkjs::export_vk(&vk))?;
                println!("answer: {answer} (proof verified against the ledger's anchors)");
            }
            Command::Setup { out, statement } => {
                std::fs::create_dir_all(&out)?;
                let working = super::progress::working("generating the proving and verifying keys");
                let (pk, vk) = keys::setup(statement, &mut keys::os_rng())?;
                drop(working);
                keys::write_key(&out.join("kyc.pk"), &pk)?;
                keys::write_key(&out.join("kyc.vk"), &vk)?;
                write_json(&out.join("verification_key.json"), &snarkjs::export_vk(&vk))?;
                println!(
                    "statement {}: vk hash {}",
                    statement.statement(),
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
            Command::ExportSolidity {
                vk,
                statement,
                contract,
                out,
            } => {
                let ident = contract
                    .chars()
                    .next()
                    .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
                    && contract
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || c == '_');
                anyhow::ensure!(
                    ident,
                    "--contract {contract:?}: give a Solidity identifier (letters, digits and _, not starting with a digit)"
                );
                let vk = load_vk(&vk)?;
                let hash = hex::encode(keys::vk_hash(&vk));
                let source =
                    yilian_zk::solidity::verifier(&vk, &contract, statement.statement(), &hash);
                std::fs::write(&out, source)
                    .with_context(|| format!("writing {}", out.display()))?;
                println!("wrote {} (verifying key {hash})", out.display());
            }
        }
        Ok(())
    }
}
