//! A network's data directory: the admission authority, issued identities,
//! the node's ledger and configuration, and the admin operations on them.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, bail};
use yilian_identity::ca::{AdmissionRequest, Authority};
use yilian_identity::{Identity, Principal, Role};
use yilian_ledger::service::LedgerClient;
use yilian_ledger::tx::MembershipChange;
use yilian_ledger::{Ledger, Payload, Receipt, SignedTransaction, Transaction};

/// Name of the node's own identity inside a network directory.
pub const NODE_IDENTITY: &str = "node";
/// Name of the identity the CLI uses to reach a running node.
pub const OPERATOR_IDENTITY: &str = "operator";

/// Paths inside a network data directory.
#[derive(Clone, Debug)]
pub struct NetworkDir {
    pub root: PathBuf,
}

impl NetworkDir {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        NetworkDir { root: root.into() }
    }
    pub fn authority(&self) -> PathBuf {
        self.root.join("authority")
    }
    pub fn identity(&self, name: &str) -> PathBuf {
        self.root.join("identities").join(name)
    }
    pub fn ledger(&self) -> PathBuf {
        self.root.join("ledger.redb")
    }
    pub fn config(&self) -> PathBuf {
        self.root.join("node.toml")
    }

    pub fn load_authority(&self) -> Result<Authority> {
        Authority::load(&self.authority()).with_context(|| {
            format!(
                "no admission authority in {} (run `yilian admin init-network` first)",
                self.root.display()
            )
        })
    }

    pub fn load_identity(&self, name: &str) -> Result<Identity> {
        Identity::load(&self.identity(name))
            .with_context(|| format!("cannot load identity `{name}`"))
    }

    /// Opens the node's ledger directly (only while no node is running on it).
    pub fn open_ledger(&self) -> Result<Ledger> {
        let node = self.load_identity(NODE_IDENTITY)?;
        Ledger::open(&self.ledger(), node.signing_key().clone()).map_err(|e| {
            if e.to_string().contains("already open") {
                anyhow::anyhow!(
                    "the ledger {} is in use by a running node; pass --node ADDR to go through it",
                    self.ledger().display()
                )
            } else {
                anyhow::Error::new(e).context("cannot open the ledger")
            }
        })
    }
}

/// Creates an authority, the node and operator identities, the ledger's
/// genesis and their admissions, and a `node.toml`.
pub async fn init_network(dir: &NetworkDir, network: &str, listen: &str) -> Result<()> {
    if dir.authority().join("ca.pem").exists() {
        bail!("{} already holds a network", dir.root.display());
    }
    let authority = Authority::create(network)?;
    authority.save(&dir.authority())?;
    let node = authority.admit(&AdmissionRequest::new(network, Role::Member, NODE_IDENTITY))?;
    node.save(&dir.identity(NODE_IDENTITY))?;
    let operator = authority.admit(&AdmissionRequest::new(
        network,
        Role::Member,
        OPERATOR_IDENTITY,
    ))?;
    operator.save(&dir.identity(OPERATOR_IDENTITY))?;
    let ledger = Ledger::open(&dir.ledger(), node.signing_key().clone())?;
    let key = authority.signing_key();
    let genesis = Payload::Genesis {
        network: network.to_owned(),
        authority: key.verifying_key().to_bytes(),
    };
    ledger.submit(Transaction::new(genesis).sign(&key)).await?;
    for id in [&node, &operator] {
        ledger
            .submit(admission_tx(&authority, id.principal(), far_future()))
            .await?;
    }
    // The first member joins the consortium by proposing itself.
    ledger
        .submit(member_proposal(
            MembershipChange::Add {
                node: node.principal().public_key,
                addr: listen.to_owned(),
            },
            node.signing_key(),
        ))
        .await?;
    // Absolute paths, so the node can be started from any directory.
    let root = std::fs::canonicalize(&dir.root)?;
    let config = format!(
        "# Yilian node configuration (flags and YILIAN_* environment variables override it)\n\
         data_dir = {:?}\nlisten = {:?}\nfederated = {:?}\nmetrics = \"127.0.0.1:9464\"\nidentity = {:?}\n\n\
         # This member among the consortium's nodes: the address the others dial for it,\n\
         # and theirs (members are added with `yilian admin add-member`).\n\
         [cluster]\nadvertise = {:?}\npeers = []\n\n\
         # The read-only explorer web page; it has no login, so keep it on this machine\n\
         # or behind a proxy that authenticates.\n\
         [explorer]\nlisten = \"127.0.0.1:7480\"\n",
        root.display().to_string(),
        listen,
        federated_addr(listen),
        root.join("identities")
            .join(NODE_IDENTITY)
            .display()
            .to_string(),
        listen,
    );
    std::fs::write(dir.config(), config)?;
    Ok(())
}

/// The federated (QUIC) address next to a gRPC one: same host, next port.
fn federated_addr(listen: &str) -> String {
    match listen.parse::<std::net::SocketAddr>() {
        Ok(mut a) if a.port() != 0 => {
            a.set_port(a.port().wrapping_add(1));
            a.to_string()
        }
        Ok(a) => a.to_string(),
        Err(_) => "127.0.0.1:7401".into(),
    }
}

fn far_future() -> u64 {
    u64::MAX
}

fn millis(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .unwrap_or(Duration::ZERO)
        .as_millis() as u64
}

/// The ledger transaction recording an admission, signed by the authority.
pub fn admission_tx(authority: &Authority, p: &Principal, not_after_ms: u64) -> SignedTransaction {
    Transaction::new(Payload::admission(p, not_after_ms)).sign(&authority.signing_key())
}

/// Where an admin operation is recorded: the local store, or a running node.
pub enum Recorder<'a> {
    Local(&'a Ledger),
    Node(LedgerClient),
}

impl Recorder<'_> {
    pub async fn record(&mut self, tx: SignedTransaction) -> Result<Receipt> {
        match self {
            Recorder::Local(l) => Ok(l.submit(tx).await?),
            Recorder::Node(c) => Ok(c
                .submit(&tx)
                .await
                .map_err(|s| anyhow::anyhow!("{}: {}", s.code(), s.message()))?),
        }
    }
}

/// Issues an identity and records its admission.
pub async fn admit(
    dir: &NetworkDir,
    req: &AdmissionRequest,
    recorder: &mut Recorder<'_>,
) -> Result<(Identity, Receipt)> {
    let authority = dir.load_authority()?;
    let out = dir.identity(&req.name);
    if out.join("cert.pem").exists() {
        bail!(
            "an identity named `{}` already exists in {}",
            req.name,
            out.display()
        );
    }
    let id = authority.admit(req)?;
    let receipt = recorder
        .record(admission_tx(
            &authority,
            id.principal(),
            millis(req.not_after),
        ))
        .await?;
    id.save(&out)?;
    Ok((id, receipt))
}

/// Revokes the identity named `name`: recorded on the ledger, refused by TLS from then on.
pub async fn revoke(
    dir: &NetworkDir,
    name: &str,
    reason: &str,
    recorder: &mut Recorder<'_>,
) -> Result<Receipt> {
    let authority = dir.load_authority()?;
    let id = dir.load_identity(name)?;
    let tx = Transaction::new(Payload::Revoke {
        public_key: id.principal().public_key,
        reason: reason.to_owned(),
    })
    .sign(&authority.signing_key());
    recorder.record(tx).await
}

/// A membership proposal signed by a member node's key.
pub fn member_proposal(
    change: MembershipChange,
    key: &ed25519_dalek::SigningKey,
) -> SignedTransaction {
    Transaction::new(Payload::MemberProposal { change }).sign(key)
}

/// A member node's approval of a membership proposal.
pub fn member_approval(proposal: [u8; 32], key: &ed25519_dalek::SigningKey) -> SignedTransaction {
    Transaction::new(Payload::MemberApproval { proposal }).sign(key)
}

/// Reads a JSON file with a clear message on failure.
pub fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T> {
    let bytes = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    serde_json::from_slice(&bytes)
        .with_context(|| format!("{} is not a valid file of this kind", path.display()))
}

pub fn write_json<T: serde::Serialize>(path: &Path, v: &T) -> Result<()> {
    std::fs::write(path, serde_json::to_vec_pretty(v)?)
        .with_context(|| format!("cannot write {}", path.display()))
}
