//! `yilian kms ...`: the command line of the KMS. Talks to a node over
//! mutual TLS as the identity given; `init-unseal` runs locally.

use std::io::Write;
use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use clap::{Args, Subcommand};
use yilian_identity::Identity;

use yilian_kms::client::Client;
use yilian_kms::policy::AccountId;
use yilian_kms::service::pb;

#[derive(Args, Debug, Clone)]
pub struct Conn {
    /// Node address (host:port).
    #[arg(long, env = "YILIAN_NODE", default_value = "127.0.0.1:7400")]
    pub node: String,
    /// Identity directory to connect with (cert.pem, key.pem, ledger-key.pem, ca.pem).
    #[arg(long, env = "YILIAN_IDENTITY")]
    pub identity: PathBuf,
}

impl Conn {
    async fn client(&self) -> Result<(Client, Identity)> {
        let id = Identity::load(&self.identity)?;
        Ok((Client::connect(&self.node, &id).await?, id))
    }

    /// A mutual-TLS channel to the node as this identity, for the node's
    /// other services (the ZK API, the ledger).
    pub async fn channel(&self) -> Result<(tonic::transport::Channel, Identity)> {
        let id = Identity::load(&self.identity)
            .with_context(|| format!("--identity {}", self.identity.display()))?;
        let channel = yilian_identity::grpc::connect(&self.node, &id)
            .await
            .with_context(|| format!("--node {}", self.node))?;
        Ok((channel, id))
    }
}

/// Where a payload comes from: literal text, hex, or a file.
#[derive(Args, Debug, Clone)]
pub struct Input {
    /// Payload as UTF-8 text.
    #[arg(long, conflicts_with_all = ["hex", "file"])]
    pub text: Option<String>,
    /// Payload as hex.
    #[arg(long, conflicts_with = "file")]
    pub hex: Option<String>,
    /// Payload from a file.
    #[arg(long = "in")]
    pub file: Option<PathBuf>,
}

impl Input {
    fn read(&self) -> Result<Vec<u8>> {
        match (&self.text, &self.hex, &self.file) {
            (Some(t), _, _) => Ok(t.as_bytes().to_vec()),
            (_, Some(h), _) => hex::decode(h.trim()).context("--hex is not hex"),
            (_, _, Some(f)) => std::fs::read(f).with_context(|| format!("reading {}", f.display())),
            _ => bail!("give the payload with --text, --hex or --in"),
        }
    }
}

/// An account given as 32-byte hex or as an identity directory.
pub fn account(s: &str) -> Result<AccountId> {
    if let Ok(bytes) = hex::decode(s)
        && let Ok(a) = <[u8; 32]>::try_from(bytes.as_slice())
    {
        return Ok(a);
    }
    let id = Identity::load(std::path::Path::new(s)).with_context(|| {
        format!("`{s}` is neither a 32-byte hex public key nor an identity directory")
    })?;
    Ok(id.principal().public_key)
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

fn print_json(v: &serde_json::Value) {
    println!(
        "{}",
        serde_json::to_string_pretty(v).expect("JSON values print")
    );
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Create a master key owned by this identity.
    CreateKey {
        #[command(flatten)]
        conn: Conn,
        key_id: String,
        /// A BN254 key for the ZK capability's Poseidon cipher instead of AES-256-GCM.
        #[arg(long)]
        zk: bool,
        /// Destroy the key when its last grant ends (e.g. a door key).
        #[arg(long)]
        grant_only: bool,
    },
    /// A fresh data key: printed in plaintext (hex) and wrapped (hex envelope).
    GenerateDataKey {
        #[command(flatten)]
        conn: Conn,
        key_id: String,
        #[arg(long, default_value = "")]
        context: String,
        #[arg(long)]
        grant: Option<String>,
    },
    /// Encrypt a small payload; prints the envelope as hex (or writes it with --out).
    Encrypt {
        #[command(flatten)]
        conn: Conn,
        key_id: String,
        #[command(flatten)]
        input: Input,
        #[arg(long, default_value = "")]
        context: String,
        #[arg(long)]
        grant: Option<String>,
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Decrypt an envelope (or unwrap a data key); writes the plaintext to stdout or --out.
    Decrypt {
        #[command(flatten)]
        conn: Conn,
        #[command(flatten)]
        input: Input,
        #[arg(long, default_value = "")]
        context: String,
        #[arg(long)]
        grant: Option<String>,
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Add a key version; new encryptions use it.
    Rotate {
        #[command(flatten)]
        conn: Conn,
        key_id: String,
    },
    /// Move an envelope to the newest key version; prints the new envelope as hex.
    Rewrap {
        #[command(flatten)]
        conn: Conn,
        #[command(flatten)]
        input: Input,
        #[arg(long, default_value = "")]
        context: String,
    },
    /// Retire key versions below a minimum: their ciphertexts stop decrypting.
    Retire {
        #[command(flatten)]
        conn: Conn,
        key_id: String,
        #[arg(long)]
        min_version: u32,
    },
    /// Escrow a key to trustees (hex keys or identity directories), t of whom can recover it.
    Escrow {
        #[command(flatten)]
        conn: Conn,
        key_id: String,
        #[arg(long = "trustee", required = true)]
        trustees: Vec<String>,
        #[arg(long)]
        threshold: u32,
        /// Replace the key's existing escrow with this one (audited).
        #[arg(long)]
        replace: bool,
    },
    /// Open a recovery of an escrowed key for a recipient.
    StartRecovery {
        #[command(flatten)]
        conn: Conn,
        key_id: String,
        #[arg(long)]
        recipient: String,
    },
    /// As a trustee: check your share against the commitments, sign and approve.
    ApproveRecovery {
        #[command(flatten)]
        conn: Conn,
        recovery_id: String,
    },
    /// As the recipient: receive the recovered key (hex).
    Recover {
        #[command(flatten)]
        conn: Conn,
        recovery_id: String,
    },
    /// Grant a reader constrained use of a key.
    Grant {
        #[command(flatten)]
        conn: Conn,
        key_id: String,
        #[arg(long)]
        reader: String,
        /// Valid from (ms since the epoch; default now).
        #[arg(long)]
        not_before_ms: Option<u64>,
        /// Valid until (ms since the epoch); or use --for-secs.
        #[arg(long, conflicts_with = "for_secs")]
        not_after_ms: Option<u64>,
        #[arg(long)]
        for_secs: Option<u64>,
        /// 0 = unlimited, 1 = burn after reading.
        #[arg(long, default_value_t = 0)]
        max_uses: u32,
        /// encrypt, decrypt, generate-data-key (repeatable).
        #[arg(long = "op", default_values_t = ["decrypt".to_string()])]
        operations: Vec<String>,
        /// The context every use must present.
        #[arg(long)]
        context: Option<String>,
    },
    /// Revoke a grant.
    RevokeGrant {
        #[command(flatten)]
        conn: Conn,
        grant_id: String,
    },
    /// List and verify (inclusion proofs) every audited operation on your keys.
    Audit {
        #[command(flatten)]
        conn: Conn,
        key_id: Option<String>,
        /// Trusted ledger log key (hex); default: the key in the returned tree head.
        #[arg(long)]
        log_key: Option<String>,
    },
    /// Print a BN254 key's Poseidon commitment (and, with --reveal, its elements).
    ZkKey {
        #[command(flatten)]
        conn: Conn,
        key_id: String,
        #[arg(long)]
        reveal: bool,
    },
    /// Give one operator unseal share to a sealed node.
    Unseal {
        #[command(flatten)]
        conn: Conn,
        share: String,
    },
    /// Create a new root key split into operator shares (local; for a fresh KMS store).
    InitUnseal {
        #[arg(long)]
        threshold: usize,
        #[arg(long)]
        shares: usize,
    },
}

fn write_out(out: &Option<PathBuf>, bytes: &[u8], as_hex: bool) -> Result<()> {
    match out {
        Some(p) => std::fs::write(p, bytes).with_context(|| format!("writing {}", p.display())),
        None if as_hex => {
            println!("{}", hex::encode(bytes));
            Ok(())
        }
        None => {
            std::io::stdout().write_all(bytes)?;
            Ok(())
        }
    }
}

fn key_info_json(k: &pb::KeyInfo) -> serde_json::Value {
    serde_json::json!({
        "key_id": k.key_id, "owner": hex::encode(&k.owner), "kind": k.kind,
        "latest_version": k.latest_version, "min_decryption_version": k.min_decryption_version,
        "grant_only": k.grant_only, "destroyed": k.destroyed,
    })
}

fn grant_json(g: &pb::GrantInfo) -> serde_json::Value {
    serde_json::json!({
        "grant_id": g.grant_id, "key_id": g.key_id, "reader": hex::encode(&g.reader),
        "not_before_ms": g.not_before_ms, "not_after_ms": g.not_after_ms,
        "max_uses": g.max_uses, "uses": g.uses, "operations": g.operations, "revoked": g.revoked,
    })
}

/// Input that may be hex text in a file as well as raw bytes (envelopes).
fn envelope_bytes(input: &Input) -> Result<Vec<u8>> {
    let raw = input.read()?;
    if input.file.is_some()
        && let Ok(text) = std::str::from_utf8(&raw)
        && let Ok(bytes) = hex::decode(text.trim())
    {
        return Ok(bytes);
    }
    Ok(raw)
}

impl Command {
    pub async fn run(self) -> Result<()> {
        match self {
            Command::CreateKey {
                conn,
                key_id,
                zk,
                grant_only,
            } => {
                let (mut c, _) = conn.client().await?;
                print_json(&key_info_json(
                    &c.create_key(&key_id, zk, grant_only).await?,
                ));
            }
            Command::GenerateDataKey {
                conn,
                key_id,
                context,
                grant,
            } => {
                let (mut c, _) = conn.client().await?;
                let dk = c
                    .generate_data_key(&key_id, context.as_bytes(), grant.as_deref())
                    .await?;
                print_json(&serde_json::json!({
                    "plaintext": hex::encode(&dk.plaintext), "wrapped": hex::encode(&dk.wrapped), "key_version": dk.key_version,
                }));
            }
            Command::Encrypt {
                conn,
                key_id,
                input,
                context,
                grant,
                out,
            } => {
                let (mut c, _) = conn.client().await?;
                let env = c
                    .encrypt(
                        &key_id,
                        &input.read()?,
                        context.as_bytes(),
                        grant.as_deref(),
                    )
                    .await?;
                write_out(&out, &env, true)?;
            }
            Command::Decrypt {
                conn,
                input,
                context,
                grant,
                out,
            } => {
                let (mut c, _) = conn.client().await?;
                let pt = c
                    .decrypt(
                        &envelope_bytes(&input)?,
                        context.as_bytes(),
                        grant.as_deref(),
                    )
                    .await?;
                write_out(&out, pt.expose(), false)?;
            }
            Command::Rotate { conn, key_id } => {
                let (mut c, _) = conn.client().await?;
                print_json(&key_info_json(
                    &c.raw.rotate(pb::KeyRef { key_id }).await?.into_inner(),
                ));
            }
            Command::Rewrap {
                conn,
                input,
                context,
            } => {
                let (mut c, _) = conn.client().await?;
                let r = c
                    .raw
                    .rewrap(pb::RewrapRequest {
                        envelope: envelope_bytes(&input)?,
                        context: context.into_bytes(),
                    })
                    .await?
                    .into_inner();
                println!("{}", hex::encode(r.envelope));
            }
            Command::Retire {
                conn,
                key_id,
                min_version,
            } => {
                let (mut c, _) = conn.client().await?;
                let k = c
                    .raw
                    .set_min_decryption_version(pb::SetMinDecryptionVersionRequest {
                        key_id,
                        min_version,
                    })
                    .await?
                    .into_inner();
                print_json(&key_info_json(&k));
            }
            Command::Escrow {
                conn,
                key_id,
                trustees,
                threshold,
                replace,
            } => {
                let (mut c, _) = conn.client().await?;
                let t = trustees
                    .iter()
                    .map(|s| account(s))
                    .collect::<Result<Vec<_>>>()?;
                let pkg = c.escrow(&key_id, &t, threshold, replace).await?;
                print_json(&serde_json::json!({
                    "key_id": pkg.key_id, "key_version": pkg.key_version, "threshold": pkg.threshold,
                    "trustees": pkg.trustees.iter().map(hex::encode).collect::<Vec<_>>(),
                    "commitments": pkg.commitments.iter().map(hex::encode).collect::<Vec<_>>(),
                }));
            }
            Command::StartRecovery {
                conn,
                key_id,
                recipient,
            } => {
                let (mut c, _) = conn.client().await?;
                let r = c
                    .raw
                    .start_recovery(pb::StartRecoveryRequest {
                        key_id,
                        recipient: account(&recipient)?.to_vec(),
                    })
                    .await?
                    .into_inner();
                print_json(
                    &serde_json::json!({"recovery_id": r.recovery_id, "key_id": r.key_id, "recipient": hex::encode(&r.recipient)}),
                );
            }
            Command::ApproveRecovery { conn, recovery_id } => {
                let (mut c, id) = conn.client().await?;
                let n = c.approve_recovery(&id, &recovery_id).await?;
                println!("approved: {n} approval(s) so far");
            }
            Command::Recover { conn, recovery_id } => {
                let (mut c, _) = conn.client().await?;
                let mut k = c
                    .raw
                    .recover(pb::RecoveryRef { recovery_id })
                    .await?
                    .into_inner();
                let k = yilian_kms::secret::SecretBytes::new(std::mem::take(&mut k.key));
                println!("{}", hex::encode(k.expose()));
            }
            Command::Grant {
                conn,
                key_id,
                reader,
                not_before_ms,
                not_after_ms,
                for_secs,
                max_uses,
                operations,
                context,
            } => {
                let (mut c, _) = conn.client().await?;
                let nb = not_before_ms.unwrap_or_else(now_ms);
                let na = match (not_after_ms, for_secs) {
                    (Some(t), _) => t,
                    (None, Some(s)) => nb.saturating_add(s.saturating_mul(1000)),
                    (None, None) => bail!("give --not-after-ms or --for-secs"),
                };
                let g = c
                    .raw
                    .grant(pb::GrantRequest {
                        key_id,
                        reader: account(&reader)?.to_vec(),
                        not_before_ms: nb,
                        not_after_ms: na,
                        max_uses,
                        operations,
                        required_context: context.map(String::into_bytes),
                    })
                    .await?
                    .into_inner();
                print_json(&grant_json(&g));
            }
            Command::RevokeGrant { conn, grant_id } => {
                let (mut c, _) = conn.client().await?;
                print_json(&grant_json(
                    &c.raw
                        .revoke_grant(pb::GrantRef { grant_id })
                        .await?
                        .into_inner(),
                ));
            }
            Command::Audit {
                conn,
                key_id,
                log_key,
            } => {
                let (mut c, _) = conn.client().await?;
                let trusted = log_key.as_deref().map(account).transpose()?;
                let entries = c
                    .verified_audit(key_id.as_deref(), trusted.as_ref())
                    .await?;
                for e in &entries {
                    println!(
                        "#{:<6} {:<26} {:<22} key={} v={} grant={} actor={}",
                        e.index,
                        e.operation,
                        e.outcome,
                        e.key_id,
                        e.key_version
                            .map(|v| v.to_string())
                            .unwrap_or_else(|| "-".into()),
                        e.grant_id.as_deref().unwrap_or("-"),
                        &hex::encode(&e.actor)[..16],
                    );
                }
                println!("{} entries, every inclusion proof verified", entries.len());
            }
            Command::ZkKey {
                conn,
                key_id,
                reveal,
            } => {
                let (mut c, _) = conn.client().await?;
                let mut z = c.raw.zk_key(pb::KeyRef { key_id }).await?.into_inner();
                let elements =
                    yilian_kms::secret::SecretBytes::new(std::mem::take(&mut z.elements));
                let mut v = serde_json::json!({"commitment": hex::encode(&z.commitment)});
                if reveal {
                    v["elements"] = hex::encode(elements.expose()).into();
                }
                print_json(&v);
            }
            Command::Unseal { conn, share } => {
                let (mut c, _) = conn.client().await?;
                let r = c
                    .raw
                    .unseal(pb::UnsealRequest { share })
                    .await?
                    .into_inner();
                if r.sealed {
                    println!(
                        "still sealed: {} of {} shares given",
                        r.shares_given, r.threshold
                    );
                } else {
                    println!("unsealed");
                }
            }
            Command::InitUnseal { threshold, shares } => {
                let (_root, shares) = yilian_kms::seal::split_root_key(threshold, shares)?;
                println!(
                    "Give each operator one share; any {threshold} unseal the node. Shown once."
                );
                for s in shares {
                    println!("{}", s.expose());
                }
            }
        }
        Ok(())
    }
}
