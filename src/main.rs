//! `yilian`: the node and the command line of a Yilian network.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use yilian::network::{self, NetworkDir, Recorder};
use yilian::node::{self, NodeConfig, NodeOverrides};
use yilian_identity::ca::AdmissionRequest;
use yilian_identity::{Identity, Role};
use yilian_ledger::bundle::{ConsistencyBundle, InclusionBundle};
use yilian_ledger::service::LedgerClient;
use yilian_ledger::{Payload, Transaction};

#[derive(Parser)]
#[command(
    name = "yilian",
    version,
    about = "Yilian: a permissioned network with an admission authority, a verifiable ledger, \
             a KMS, zero-knowledge verification and federated learning.",
    long_about = "Yilian: a permissioned network with an admission authority, a verifiable ledger, \
                  a KMS, zero-knowledge verification and federated learning.\n\n\
                  New here? `yilian devnet` runs a whole local network and shows each capability.\n\
                  To run your own: `yilian admin init-network --data DIR`, then \
                  `yilian node --config DIR/node.toml`, then admit identities with \
                  `yilian admin admit --data DIR --node 127.0.0.1:7400 ...`."
)]
struct Cli {
    /// Log filter (e.g. info, yilian=debug); also RUST_LOG. Default: warn (devnet: error).
    #[arg(long, global = true, env = "YILIAN_LOG")]
    log: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a whole local network doing real work, print what happened, exit.
    Devnet {
        /// Keep the network's files in this directory (default: a temporary one).
        #[arg(long)]
        dir: Option<PathBuf>,
        /// After the acts, keep the member nodes and their explorer pages up until ctrl-c.
        #[arg(long)]
        keep_running: bool,
    },
    /// Admission authority: create a network, admit and revoke identities.
    #[command(subcommand)]
    Admin(AdminCommand),
    /// Run a node: serves the ledger over gRPC with mutual TLS.
    Node {
        /// TOML configuration (keys: data_dir, listen, metrics, identity).
        #[arg(long, env = "YILIAN_CONFIG")]
        config: Option<PathBuf>,
        #[command(flatten)]
        overrides: NodeOverrides,
    },
    /// Read the ledger, fetch proofs, and verify them offline.
    #[command(subcommand)]
    Ledger(LedgerCommand),
    /// Key management: master and data keys, envelopes, rotation, escrow, grants, audit.
    #[command(subcommand)]
    Kms(yilian::cli::kms::Command),
    /// Zero-knowledge checks on encrypted records: setup, register, prove, verify.
    #[command(subcommand)]
    Zk(yilian::cli::zk::Command),
    /// Federated learning, for ML engineers: submit a task, follow it, download the model.
    /// Devices run the agent: `cargo run --release -p yilian-node-agent -- --help`.
    #[command(subcommand)]
    Task(yilian::cli::task::TaskCommand),
    /// Appends entries to a ledger and prints each index once it is durable (crash tests).
    #[command(hide = true)]
    AppendStream {
        #[arg(long)]
        data: PathBuf,
        #[arg(long)]
        count: u64,
    },
}

#[derive(Subcommand)]
enum AdminCommand {
    /// Create the admission authority, the node's identity and the ledger in a directory.
    InitNetwork {
        #[arg(long, env = "YILIAN_DATA_DIR", default_value = "yilian-data")]
        data: PathBuf,
        #[arg(long, default_value = "yilian")]
        network: String,
        /// Address the node will listen on (written to node.toml).
        #[arg(long, default_value = "127.0.0.1:7400")]
        listen: String,
    },
    /// Issue a certificate to an organisation's node, device or client and record it on the ledger.
    Admit {
        #[arg(long, env = "YILIAN_DATA_DIR", default_value = "yilian-data")]
        data: PathBuf,
        /// Organisation name (certificate O).
        #[arg(long)]
        org: String,
        /// member, trustee, data-holder, verifier, engineer, device, regulator or auditor.
        #[arg(long)]
        role: Role,
        /// Name of the node, device or person (certificate CN); also the identity's folder name.
        #[arg(long)]
        name: String,
        /// Days the certificate is valid.
        #[arg(long, default_value_t = 365)]
        days: u64,
        /// Host names or IPs a server identity answers on.
        #[arg(long = "host", default_values_t = ["localhost".to_string(), "127.0.0.1".to_string()])]
        hosts: Vec<String>,
        /// Record through a running node at this address instead of the local ledger file.
        #[arg(long)]
        node: Option<String>,
    },
    /// Revoke an identity: recorded on the ledger and refused at every TLS handshake.
    Revoke {
        #[arg(long, env = "YILIAN_DATA_DIR", default_value = "yilian-data")]
        data: PathBuf,
        #[arg(long)]
        name: String,
        #[arg(long, default_value = "revoked by the admission authority")]
        reason: String,
        #[arg(long)]
        node: Option<String>,
    },
    /// Propose another organisation's node as a consortium member. It joins
    /// once a majority of the current members approved (`yilian admin approve`).
    AddMember {
        #[command(flatten)]
        conn: MemberConn,
        /// The organisation the node belongs to (checked against its certificate).
        #[arg(long)]
        org: String,
        /// The node's certificate (member role), as its organisation sent it.
        #[arg(long)]
        cert: PathBuf,
        /// The address the other members dial for the new node.
        #[arg(long)]
        node: String,
    },
    /// Propose removing a member node; it leaves once a majority approved.
    RemoveMember {
        #[command(flatten)]
        conn: MemberConn,
        #[arg(long)]
        org: String,
        /// The node's name (certificate CN).
        #[arg(long)]
        name: String,
    },
    /// Approve a membership proposal, as this member.
    Approve {
        #[command(flatten)]
        conn: MemberConn,
        /// The proposal id (hex), as `add-member`, `remove-member` or `members` printed it.
        proposal: String,
    },
    /// List the consortium's members, its leader and open proposals.
    Members {
        #[command(flatten)]
        conn: MemberConn,
    },
}

/// A member's voice in the consortium: its node identity signs, through a running member.
#[derive(clap::Args)]
struct MemberConn {
    /// This member's network directory; its node identity signs.
    #[arg(long, env = "YILIAN_DATA_DIR", default_value = "yilian-data")]
    data: PathBuf,
    /// Sign with this identity directory instead of the data directory's node identity.
    #[arg(long)]
    identity: Option<PathBuf>,
    /// Any running member node (writes reach the leader from there).
    #[arg(long, default_value = "127.0.0.1:7400")]
    via: String,
}

impl MemberConn {
    async fn connect(&self) -> Result<(LedgerClient, Identity)> {
        let path = self
            .identity
            .clone()
            .unwrap_or_else(|| NetworkDir::new(&self.data).identity(network::NODE_IDENTITY));
        let id = Identity::load(&path)
            .with_context(|| format!("cannot load the member identity {}", path.display()))?;
        let ch = yilian_identity::grpc::connect(&self.via, &id).await?;
        Ok((LedgerClient::new(ch), id))
    }
}

#[derive(clap::Args)]
struct Conn {
    /// Node address (host:port).
    #[arg(long, env = "YILIAN_NODE", default_value = "127.0.0.1:7400")]
    node: String,
    /// Identity directory to connect with (cert.pem, key.pem, ledger-key.pem, ca.pem).
    #[arg(long, env = "YILIAN_IDENTITY")]
    identity: PathBuf,
}

impl Conn {
    async fn client(&self) -> Result<(LedgerClient, Identity)> {
        let id = Identity::load(&self.identity)?;
        let ch = yilian_identity::grpc::connect(&self.node, &id).await?;
        Ok((LedgerClient::new(ch), id))
    }
}

#[derive(Subcommand)]
enum LedgerCommand {
    /// Print (and optionally save) the current signed tree head.
    Head {
        #[command(flatten)]
        conn: Conn,
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Print one entry.
    Get {
        #[command(flatten)]
        conn: Conn,
        #[arg(long)]
        index: u64,
    },
    /// Fetch an inclusion proof for an entry into a file for offline verification.
    Prove {
        #[command(flatten)]
        conn: Conn,
        #[arg(long)]
        index: u64,
        #[arg(long)]
        out: PathBuf,
    },
    /// Fetch a consistency proof from an earlier saved head to the current one.
    Consistency {
        #[command(flatten)]
        conn: Conn,
        /// A head saved earlier with `yilian ledger head --out`.
        #[arg(long)]
        old: PathBuf,
        #[arg(long)]
        out: PathBuf,
    },
    /// Write a note to the ledger, signed by your identity.
    Note {
        #[command(flatten)]
        conn: Conn,
        #[arg(long)]
        topic: String,
        #[arg(long)]
        body: String,
    },
    /// Show an account's reward balance (default: your own).
    Balance {
        #[command(flatten)]
        conn: Conn,
        /// Account (hex public key).
        #[arg(long)]
        account: Option<String>,
    },
    /// Verify a proof file offline, against the consortium's cosigners.
    Verify {
        /// A head file saved with `yilian ledger head --out`: its cosigners
        /// (the members listed on the ledger) are the ones you trust.
        #[arg(long)]
        head: PathBuf,
        /// Distinct member cosignatures a head needs (default: a majority of the members).
        #[arg(long)]
        min_cosigners: Option<usize>,
        /// An inclusion proof file from `yilian ledger prove`.
        #[arg(long, conflicts_with = "consistency")]
        inclusion: Option<PathBuf>,
        /// A consistency proof file from `yilian ledger consistency`.
        #[arg(long)]
        consistency: Option<PathBuf>,
    },
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let quiet = matches!(cli.command, Command::Devnet { .. });
    let filter = std::env::var("RUST_LOG")
        .ok()
        .or(cli.log.clone())
        .unwrap_or_else(|| if quiet { "error" } else { "warn" }.to_owned());
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
        .with_writer(std::io::stderr)
        .init();
    let rt = tokio::runtime::Runtime::new().expect("tokio runtime");
    match rt.block_on(run(cli.command)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", cli_message(&e));
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run(cmd: Command) -> Result<()> {
    match cmd {
        Command::Devnet { dir, keep_running } => yilian::devnet::run(dir, keep_running).await,
        Command::Admin(a) => admin(a).await,
        Command::Node { config, overrides } => {
            let cfg = NodeConfig::load(config.as_deref(), &overrides)?;
            let running = node::start(&cfg).await?;
            println!("node serving on {} (ctrl-c to stop)", running.addr);
            running.wait().await
        }
        Command::Ledger(l) => ledger(l).await,
        Command::Kms(k) => k.run().await,
        Command::Zk(z) => z.run().await,
        Command::Task(t) => t.run().await,
        Command::AppendStream { data, count } => append_stream(data, count).await,
    }
}

async fn admin(cmd: AdminCommand) -> Result<()> {
    match cmd {
        AdminCommand::InitNetwork {
            data,
            network,
            listen,
        } => {
            let dir = NetworkDir::new(&data);
            network::init_network(&dir, &network, &listen).await?;
            println!(
                "network `{network}` created in {}\n  authority: {}\n  node identity: {}\n  config: {}\nnext: yilian node --config {}",
                data.display(),
                dir.authority().display(),
                dir.identity(network::NODE_IDENTITY).display(),
                dir.config().display(),
                dir.config().display()
            );
            Ok(())
        }
        AdminCommand::Admit {
            data,
            org,
            role,
            name,
            days,
            hosts,
            node,
        } => {
            let dir = NetworkDir::new(&data);
            let mut req = AdmissionRequest::new(org, role, name);
            req.not_after =
                std::time::SystemTime::now() + std::time::Duration::from_secs(days * 86_400);
            req.hosts = hosts;
            let local;
            let mut rec = match node {
                Some(addr) => Recorder::Node(operator_client(&dir, &addr).await?),
                None => {
                    local = dir.open_ledger()?;
                    Recorder::Local(&local)
                }
            };
            let (id, receipt) = network::admit(&dir, &req, &mut rec).await?;
            println!(
                "admitted {} as entry {}; identity in {}",
                id.principal(),
                receipt.index,
                dir.identity(&id.principal().name).display()
            );
            Ok(())
        }
        AdminCommand::Revoke {
            data,
            name,
            reason,
            node,
        } => {
            let dir = NetworkDir::new(&data);
            let local;
            let mut rec = match node {
                Some(addr) => Recorder::Node(operator_client(&dir, &addr).await?),
                None => {
                    local = dir.open_ledger()?;
                    Recorder::Local(&local)
                }
            };
            let receipt = network::revoke(&dir, &name, &reason, &mut rec).await?;
            println!("revoked `{name}` as entry {}", receipt.index);
            Ok(())
        }
        AdminCommand::AddMember {
            conn,
            org,
            cert,
            node,
        } => {
            let p = yilian_identity::principal_of_cert_file(&cert)
                .with_context(|| format!("cannot read the node certificate {}", cert.display()))?;
            if p.org != org {
                anyhow::bail!(
                    "{} is a certificate of organisation `{}`, not `{org}`; pass the node's own certificate",
                    cert.display(),
                    p.org
                );
            }
            let (mut c, id) = conn.connect().await?;
            let change = yilian_ledger::tx::MembershipChange::Add {
                node: p.public_key,
                addr: node.clone(),
            };
            let tx = network::member_proposal(change, id.signing_key());
            let r = c.submit(&tx).await.map_err(status)?;
            report_proposal(&mut c, &r.tx_id, &format!("add {org}/{} at {node}", p.name)).await
        }
        AdminCommand::RemoveMember { conn, org, name } => {
            let (mut c, id) = conn.connect().await?;
            let cons = c.consortium().await.map_err(status)?;
            let m = cons
                .members
                .iter()
                .find(|m| m.org == org && m.name == name)
                .with_context(|| {
                    format!(
                        "`{org}/{name}` is not a consortium member (see `yilian admin members`)"
                    )
                })?;
            let node: [u8; 32] = m.key.as_slice().try_into().context("member key")?;
            let change = yilian_ledger::tx::MembershipChange::Remove { node };
            let tx = network::member_proposal(change, id.signing_key());
            let r = c.submit(&tx).await.map_err(status)?;
            report_proposal(&mut c, &r.tx_id, &format!("remove {org}/{name}")).await
        }
        AdminCommand::Approve { conn, proposal } => {
            let mut id = [0u8; 32];
            hex::decode_to_slice(proposal.trim(), &mut id).context(
                "the proposal id must be 64 hex digits, as `yilian admin members` prints it",
            )?;
            let (mut c, me) = conn.connect().await?;
            let tx = network::member_approval(id, me.signing_key());
            c.submit(&tx).await.map_err(status)?;
            report_proposal(&mut c, &id, "approved").await
        }
        AdminCommand::Members { conn } => {
            let (mut c, _) = conn.connect().await?;
            let cons = c.consortium().await.map_err(status)?;
            println!("term {}, leader {}", cons.term, cons.leader_addr);
            for m in &cons.members {
                let lead = if m.raft_id == cons.leader_raft_id {
                    " (leader)"
                } else {
                    ""
                };
                println!(
                    "member {}/{} at {}{lead}  key {}",
                    m.org,
                    m.name,
                    m.addr,
                    hex::encode(&m.key)
                );
            }
            for p in cons.proposals.iter().filter(|p| !p.decided) {
                println!(
                    "open proposal {}: {} ({} approvals)",
                    hex::encode(&p.id),
                    p.change,
                    p.approvals.len()
                );
            }
            Ok(())
        }
    }
}

/// Prints where a membership proposal stands after a write.
async fn report_proposal(c: &mut LedgerClient, id: &[u8; 32], what: &str) -> Result<()> {
    let cons = c.consortium().await.map_err(status)?;
    let p = cons.proposals.iter().find(|p| p.id == id);
    let n = cons.members.len();
    match p {
        Some(p) if p.decided => println!(
            "proposal {} ({what}) has taken effect: the consortium now has {n} members",
            hex::encode(id)
        ),
        Some(p) => println!(
            "proposal {} ({what}): {} of {n} members approved, {} needed; the others run `yilian admin approve {}`",
            hex::encode(id),
            p.approvals.len(),
            n / 2 + 1,
            hex::encode(id)
        ),
        None => println!("proposal {} ({what}) recorded", hex::encode(id)),
    }
    Ok(())
}

async fn operator_client(dir: &NetworkDir, addr: &str) -> Result<LedgerClient> {
    let op = dir.load_identity(network::OPERATOR_IDENTITY)?;
    Ok(LedgerClient::new(
        yilian_identity::grpc::connect(addr, &op).await?,
    ))
}

/// How any failure reads on the command line: a node's refusal as its gRPC
/// code and message (the code says whether retrying can help), anything else
/// with its chain of causes.
fn cli_message(e: &anyhow::Error) -> String {
    let context: Vec<String> = e
        .chain()
        .take_while(|c| c.downcast_ref::<tonic::Status>().is_none())
        .map(ToString::to_string)
        .collect();
    match e.chain().find_map(|c| c.downcast_ref::<tonic::Status>()) {
        Some(s) => {
            let refusal = match std::error::Error::source(s) {
                Some(src) if s.message().is_empty() || s.code() == tonic::Code::Unavailable => {
                    yilian_identity::grpc::error_chain(src)
                }
                _ => s.message().to_owned(),
            };
            let mut parts = context;
            parts.push(format!("refused ({:?}): {refusal}", s.code()));
            parts.join(": ")
        }
        None => format!("{e:#}"),
    }
}

fn status(s: tonic::Status) -> anyhow::Error {
    anyhow::anyhow!("{:?}: {}", s.code(), s.message())
}

async fn ledger(cmd: LedgerCommand) -> Result<()> {
    match cmd {
        LedgerCommand::Head { conn, out } => {
            let (mut c, _) = conn.client().await?;
            let head = c.cosigned_head().await.map_err(status)?;
            match &head.checkpoint {
                Some(cp) => print!("{}", cp.to_note()),
                None => println!("(no cosigned head yet)"),
            }
            if head.stale {
                println!(
                    "STALE: this member has not heard from a quorum recently; the head may be behind"
                );
            }
            if let Some(out) = out {
                network::write_json(&out, &head)?;
            }
            Ok(())
        }
        LedgerCommand::Get { conn, index } => {
            let (mut c, _) = conn.client().await?;
            let e = c.entry(index).await.map_err(status)?;
            println!("{}", serde_json::to_string_pretty(&e)?);
            Ok(())
        }
        LedgerCommand::Prove { conn, index, out } => {
            let (mut c, _) = conn.client().await?;
            let bundle = c.inclusion_bundle(index).await.map_err(status)?;
            network::write_json(&out, &bundle)?;
            println!(
                "inclusion proof of entry {index} under tree size {} written to {}",
                bundle.tree_head.tree_size,
                out.display()
            );
            Ok(())
        }
        LedgerCommand::Consistency { conn, old, out } => {
            let (mut c, _) = conn.client().await?;
            let old: yilian_ledger::service::CosignedHead = network::read_json(&old)?;
            let bundle = c.consistency_bundle(&old).await.map_err(status)?;
            network::write_json(&out, &bundle)?;
            println!(
                "consistency proof {} -> {} written to {}",
                bundle.old_head.tree_size,
                bundle.new_head.tree_size,
                out.display()
            );
            Ok(())
        }
        LedgerCommand::Note { conn, topic, body } => {
            let (mut c, id) = conn.client().await?;
            let tx = Transaction::new(Payload::Note { topic, body }).sign(id.signing_key());
            let r = c.submit(&tx).await.map_err(status)?;
            println!(
                "note recorded as entry {} (tree size {})",
                r.index, r.tree_head.tree_size
            );
            Ok(())
        }
        LedgerCommand::Balance { conn, account } => {
            let (mut c, id) = conn.client().await?;
            let account = match account {
                Some(h) => {
                    let mut a = [0u8; 32];
                    hex::decode_to_slice(&h, &mut a).context("--account must be 64 hex digits")?;
                    a
                }
                None => id.principal().public_key,
            };
            println!("{}", c.balance(&account).await.map_err(status)?);
            Ok(())
        }
        LedgerCommand::Verify {
            head,
            min_cosigners,
            inclusion,
            consistency,
        } => {
            let trusted: yilian_ledger::service::CosignedHead = network::read_json(&head)?;
            let members = &trusted.cosigners;
            let min =
                min_cosigners.unwrap_or_else(|| yilian_ledger::checkpoint::majority(members.len()));
            if min == 0 {
                anyhow::bail!("--min-cosigners must be at least 1");
            }
            let cp = trusted
                .checkpoint
                .as_ref()
                .with_context(|| format!("{} holds no cosigned checkpoint", head.display()))?;
            cp.verify(members, min)
                .with_context(|| format!("the head in {} is REFUSED", head.display()))?;
            if let Some(p) = inclusion {
                let b: InclusionBundle = network::read_json(&p)?;
                let (tx, who) = b
                    .verify_against_trusted(&cp.body, members, min)
                    .with_context(|| format!("inclusion proof {} REFUSED", p.display()))?;
                println!(
                    "OK: entry {} ({}) is in the log of size {} with root {}, cosigned by {} ({} needed): {}",
                    b.proof.index,
                    tx.tx.payload.kind(),
                    b.proof.tree_size,
                    hex::encode(
                        b.checkpoint
                            .as_ref()
                            .map(|c| c.body.root)
                            .unwrap_or_default()
                    ),
                    who.len(),
                    min,
                    who.join(", ")
                );
            } else if let Some(p) = consistency {
                let b: ConsistencyBundle = network::read_json(&p)?;
                let end = b
                    .verify_from_trusted(&cp.body, members, min)
                    .with_context(|| {
                        format!(
                            "consistency proof {} REFUSED; fetch one from the head in {} with `yilian ledger consistency --old {}`",
                            p.display(),
                            head.display(),
                            head.display()
                        )
                    })?;
                let (old, new) = (b.proof.old_size, b.proof.new_size);
                let root = |c: &Option<yilian_ledger::checkpoint::Checkpoint>| {
                    hex::encode(c.as_ref().map(|c| c.body.root).unwrap_or_default())
                };
                match end {
                    yilian_ledger::bundle::TrustedEnd::Old => println!(
                        "OK: the trusted log of size {old} (root {}) is a prefix of the log of size {new} (root {}), cosigned by at least {min} members",
                        root(&b.old_checkpoint),
                        root(&b.new_checkpoint)
                    ),
                    yilian_ledger::bundle::TrustedEnd::New => println!(
                        "OK: the log of size {old} (root {}) is a prefix of the trusted log of size {new} (root {}), cosigned by at least {min} members",
                        root(&b.old_checkpoint),
                        root(&b.new_checkpoint)
                    ),
                }
            } else {
                anyhow::bail!("nothing to verify: give --inclusion FILE or --consistency FILE");
            }
            Ok(())
        }
    }
}

/// Appends `count` notes as fast as group commit allows, printing each
/// index as soon as it is acknowledged (durable). Used by the crash test.
async fn append_stream(data: PathBuf, count: u64) -> Result<()> {
    use std::io::Write as _;
    let dir = NetworkDir::new(&data);
    let ledger = dir.open_ledger()?;
    let member = dir.load_identity(network::OPERATOR_IDENTITY)?;
    let (tx, mut rx) = tokio::sync::mpsc::channel(1024);
    for i in 0..count {
        let ledger = ledger.clone();
        let key = member.signing_key().clone();
        let tx = tx.clone();
        tokio::spawn(async move {
            let note = Payload::Note {
                topic: "stress".into(),
                body: i.to_string(),
            };
            let r = ledger.submit(Transaction::new(note).sign(&key)).await;
            let _ = tx.send(r).await;
        });
        if i % 256 == 255 {
            tokio::task::yield_now().await;
        }
    }
    drop(tx);
    let mut out = std::io::stdout().lock();
    while let Some(r) = rx.recv().await {
        writeln!(out, "acked {}", r?.index)?;
        out.flush()?;
    }
    Ok(())
}
