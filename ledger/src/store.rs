//! The durable, replicated log: redb storage around the sans-IO
//! [`LedgerState`], [`MerkleTree`] and [`Witness`], ordered by a
//! [`Consensus`] engine (openraft, [`crate::raft`]).
//!
//! Submitters queue transactions; one proposer task on the leader drains
//! whatever is queued (up to [`MAX_BATCH`]), checks signatures and the state
//! rules, and proposes the batch as one Raft entry. The entry is fsynced on
//! a quorum before it commits; every member then applies it itself,
//! re-checking every signature and rule against its own copy, and only then
//! is the submitter acknowledged. A write sent to a follower is forwarded
//! to the leader.
//!
//! The state a batch is checked against at apply time is the authoritative
//! one: the leader's pre-check only keeps refused transactions out of the
//! Raft log. Two transactions racing for one balance are therefore decided
//! the same way on every member.

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use ed25519_dalek::SigningKey;
use openraft::{BasicNode, Entry, EntryPayload, LogId, StoredMembership};
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};
use tokio::sync::{Semaphore, broadcast, mpsc, oneshot, watch};
use yilian_identity::tls::RevocationList;

use crate::checkpoint::{Checkpoint, Cosigner};
use crate::consensus::{Applied, Batch, Consensus, Outcome};
use crate::head::SignedTreeHead;
use crate::merkle::{ConsistencyProof, Hash, InclusionProof, MerkleTree, leaf_hash};
use crate::raft::{LedgerRaft, PeerConnector, RaftConsensus, Timing};
use crate::state::{ConsortiumMember, Decision, LedgerState, Member, raft_id};
use crate::tx::{AccountId, SignedTransaction, Transaction, TxId, now_ms};
use crate::witness::{Evidence, Witness, cosigner_name};
use crate::{LedgerError, Result};

pub(crate) const ENTRIES: TableDefinition<'_, u64, &[u8]> = TableDefinition::new("entries");
const META: TableDefinition<'_, &str, &[u8]> = TableDefinition::new("meta");
/// Entries by payload kind and key (see [`crate::tx::Payload::index_keys`]),
/// written with the entries they point at.
const INDEX: TableDefinition<'_, (&str, &[u8], u64), ()> = TableDefinition::new("index");
const HEAD_KEY: &str = "head";
const APPLIED_KEY: &str = "applied";
const WITNESS_KEY: &str = "witness";

/// Most transactions one commit carries.
pub const MAX_BATCH: usize = 8192;
/// Batches in flight on the leader at once (pipelining the Raft log).
const IN_FLIGHT: usize = 4;

/// What a submitter gets back once its transaction is durable on a quorum.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Receipt {
    pub index: u64,
    pub tx_id: TxId,
    /// The head that first included the entry (or the current one, for a duplicate).
    pub tree_head: SignedTreeHead,
    /// True when the transaction was already in the log (idempotent resubmission).
    pub duplicate: bool,
}

/// A transaction with the order-independent work for its entry done.
struct Prepared {
    tx: SignedTransaction,
    id: TxId,
    bytes: Vec<u8>,
}

impl Prepared {
    fn new(tx: SignedTransaction, id: TxId) -> Self {
        let bytes = tx.encode();
        Prepared { tx, id, bytes }
    }
}

/// A transaction signed in this process by a key it holds. It can only be
/// made by signing, so its signature is valid by construction and the
/// leader does not check it again; every member still checks the rules, and
/// the other members check the signature too.
pub struct OwnTransaction(Prepared);

impl OwnTransaction {
    pub fn sign(tx: Transaction, key: &SigningKey) -> Self {
        let (stx, id) = SignedTransaction::sign_with_id(tx, key);
        OwnTransaction(Prepared::new(stx, id))
    }

    pub fn id(&self) -> TxId {
        self.0.id
    }

    pub fn transaction(&self) -> &SignedTransaction {
        &self.0.tx
    }
}

struct Pending {
    entry: Prepared,
    /// False until the signature has been checked (or was made here).
    verified: bool,
    /// Came from another member: never forward it again.
    forwarded: bool,
    reply: oneshot::Sender<Result<Receipt>>,
}

/// This member's copy of the ledger, as applied.
pub(crate) struct Replica {
    pub state: LedgerState,
    pub tree: MerkleTree,
    /// This member's own signed head of what it applied.
    pub head: SignedTreeHead,
    pub applied: Option<LogId<u64>>,
    pub membership: StoredMembership<u64, BasicNode>,
    pub witness: Witness,
}

#[derive(Serialize, Deserialize)]
struct AppliedMeta {
    applied: Option<LogId<u64>>,
    membership: StoredMembership<u64, BasicNode>,
}

/// Who this member is, for cosignatures.
#[derive(Clone, Debug)]
pub struct MemberName {
    pub org: String,
    pub name: String,
}

/// Everything the state machine, the proposer and the readers share.
pub(crate) struct Shared {
    pub db: Arc<Database>,
    pub inner: RwLock<Replica>,
    entries: broadcast::Sender<(u64, Arc<SignedTransaction>)>,
    key: SigningKey,
    me: MemberName,
    /// Transactions the leader checked itself before proposing them.
    preverified: Mutex<HashSet<TxId>>,
    size: watch::Sender<u64>,
    /// Why applying committed entries failed, once it has: the member
    /// takes no more writes until restarted (replaying from disk).
    failed: std::sync::OnceLock<String>,
    commits: AtomicU64,
    /// Test-only: apply a committed entry that fails validation anyway.
    accept_invalid: bool,
}

impl Shared {
    pub(crate) fn applied_position(
        &self,
    ) -> (Option<LogId<u64>>, StoredMembership<u64, BasicNode>, u64) {
        let r = self.read();
        (r.applied, r.membership.clone(), r.tree.len())
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Replica> {
        self.inner.read().expect("ledger lock poisoned")
    }

    pub(crate) fn signing_key(&self) -> &SigningKey {
        &self.key
    }

    pub(crate) fn size_watch(&self) -> watch::Receiver<u64> {
        self.size.subscribe()
    }

    pub(crate) fn entry_range_bytes(&self, from: u64, to: u64) -> Result<Vec<Vec<u8>>> {
        let rtx = self.db.begin_read().map_err(storage)?;
        let table = match rtx.open_table(ENTRIES) {
            Ok(t) => t,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(Vec::new()),
            Err(e) => return Err(storage(e)),
        };
        table
            .range(from..to)
            .map_err(storage)?
            .map(|item| Ok(item.map_err(storage)?.1.value().to_vec()))
            .collect()
    }

    /// The consortium's cosigners as this member's ledger lists them; a
    /// ledger without a consortium yet is its own single member.
    pub(crate) fn cosigners(&self, r: &Replica) -> Vec<Cosigner> {
        let network = r.state.network().unwrap_or("yilian");
        if r.state.consortium().is_empty() {
            return vec![Cosigner {
                name: self.my_name(r),
                key: self.key.verifying_key().to_bytes(),
            }];
        }
        crate::witness::cosigners(network, r.state.consortium().iter())
    }

    /// This member's cosigner name: its organisation and name as the ledger
    /// admitted them (so it does not depend on how the ledger was opened),
    /// else as configured.
    pub(crate) fn my_name(&self, r: &Replica) -> String {
        let me = self.key.verifying_key().to_bytes();
        let (org, name) = match (r.state.consortium().get(&me), r.state.member(&me)) {
            (Some(c), _) => (c.org.as_str(), c.name.as_str()),
            (None, Some(m)) => (m.org.as_str(), m.name.as_str()),
            (None, None) => (self.me.org.as_str(), self.me.name.as_str()),
        };
        cosigner_name(r.state.network().unwrap_or("yilian"), org, name)
    }

    /// Cosigns the tree as applied (and so checked) by this member, if the
    /// witness rules allow, and counts that size towards the trusted
    /// checkpoint. Every recent size is recounted only when the applied
    /// entries changed the consortium (`members_before`): recounting all of
    /// them after every batch cost more than the rest of a small batch's apply.
    fn cosign_applied(&self, r: &mut Replica, now_ms: u64, members_before: &[Cosigner]) {
        let size = r.tree.len();
        let me = self.my_name(r);
        let members = self.cosigners(r);
        let Replica { tree, witness, .. } = r;
        if size > 0
            && witness
                .cosign(tree, size, &me, &self.key, now_ms / 1000)
                .is_some()
        {
            if members.as_slice() == members_before {
                witness.promote(size, &members);
            } else {
                witness.recount(&members);
            }
        }
    }

    /// Applies committed Raft entries: the state machine.
    pub(crate) fn apply_entries(
        &self,
        entries: Vec<Entry<LedgerRaft>>,
    ) -> std::result::Result<Vec<Applied>, String> {
        let mut inner = self.inner.write().expect("ledger lock poisoned");
        let start = inner.tree.len();
        let members_before = self.cosigners(&inner);
        let mut rows: Vec<(u64, Vec<u8>)> = Vec::new();
        let mut fresh: Vec<(u64, SignedTransaction)> = Vec::new();
        // One result per Raft entry, as openraft expects; only batches have outcomes.
        let mut results: Vec<Vec<Outcome>> = Vec::with_capacity(entries.len());
        for e in entries {
            results.push(match &e.payload {
                EntryPayload::Blank => Vec::new(),
                EntryPayload::Membership(m) => {
                    inner.membership = StoredMembership::new(Some(e.log_id), m.clone());
                    Vec::new()
                }
                EntryPayload::Normal(batch) => {
                    self.apply_batch(&mut inner, batch, e.log_id.index, &mut rows, &mut fresh)
                }
            });
            inner.applied = Some(e.log_id);
        }
        let now = now_ms();
        if inner.tree.len() != start || inner.head.tree_size != inner.tree.len() {
            inner.head = SignedTreeHead::sign(inner.tree.len(), inner.tree.root(), now, &self.key);
        }
        // Cosign what this member has now applied and checked.
        if let Some(n) = inner.state.network().map(str::to_owned) {
            inner.witness.adopt_origin(&n);
        }
        self.cosign_applied(&mut inner, now, &members_before);
        let write = || -> std::result::Result<(), redb::Error> {
            let mut wtx = self.db.begin_write()?;
            // Durable with the next Raft log append; a crash before that
            // re-applies from the Raft log.
            wtx.set_durability(redb::Durability::None)
                .map_err(|e| redb::Error::Corrupted(e.to_string()))?;
            {
                let mut table = wtx.open_table(ENTRIES)?;
                for (i, b) in &rows {
                    table.insert(*i, b.as_slice())?;
                }
                let mut index = wtx.open_table(INDEX)?;
                for (i, tx) in &fresh {
                    index_entry(&mut index, *i, tx)?;
                }
                let mut meta = wtx.open_table(META)?;
                meta.insert(
                    HEAD_KEY,
                    postcard::to_stdvec(&inner.head)
                        .expect("heads serialise")
                        .as_slice(),
                )?;
                let am = AppliedMeta {
                    applied: inner.applied,
                    membership: inner.membership.clone(),
                };
                meta.insert(
                    APPLIED_KEY,
                    postcard::to_stdvec(&am).expect("serialises").as_slice(),
                )?;
                meta.insert(
                    WITNESS_KEY,
                    serde_json::to_vec(&inner.witness)
                        .expect("serialises")
                        .as_slice(),
                )?;
            }
            wtx.commit()?;
            Ok(())
        };
        let started = std::time::Instant::now();
        let written = write();
        // The durable apply (redb commit, fsync included) of one batch.
        metrics::histogram!("yilian_ledger_commit_seconds").record(started.elapsed());
        if let Err(e) = written {
            tracing::error!(error = %e, "ledger apply failed; the member must restart");
            let _ = self.failed.set(format!("applying committed entries: {e}"));
            return Err(e.to_string());
        }
        let head = inner.head.clone();
        let size = inner.tree.len();
        drop(inner);
        self.commits.fetch_add(1, Ordering::Relaxed);
        if size != start {
            metrics::counter!("yilian_ledger_appended_total").increment(size - start);
            metrics::gauge!("yilian_ledger_size").set(size as f64);
        }
        metrics::counter!("yilian_ledger_commits_total").increment(1);
        if self.entries.receiver_count() > 0 {
            for (i, tx) in fresh {
                let _ = self.entries.send((i, Arc::new(tx)));
            }
        }
        self.size.send_replace(size);
        Ok(results
            .into_iter()
            .map(|outcomes| Applied {
                outcomes,
                head: head.clone(),
            })
            .collect())
    }

    fn apply_batch(
        &self,
        r: &mut Replica,
        batch: &Batch,
        raft_index: u64,
        rows: &mut Vec<(u64, Vec<u8>)>,
        fresh: &mut Vec<(u64, SignedTransaction)>,
    ) -> Vec<Outcome> {
        let decoded: Vec<Result<(SignedTransaction, TxId)>> = batch
            .txs
            .iter()
            .map(|b| {
                SignedTransaction::decode(b).map(|t| {
                    let id = t.id();
                    (t, id)
                })
            })
            .collect();
        // Signatures the leader (this process) checked are not checked again.
        let mut sigs: Vec<Result<()>> = vec![Ok(()); decoded.len()];
        {
            let mut pre = self.preverified.lock().expect("lock");
            let unchecked: Vec<usize> = decoded
                .iter()
                .enumerate()
                .filter(|(_, d)| d.as_ref().is_ok_and(|(_, id)| !pre.remove(id)))
                .map(|(i, _)| i)
                .collect();
            drop(pre);
            if !unchecked.is_empty() {
                let refs: Vec<&SignedTransaction> = unchecked
                    .iter()
                    .map(|&i| &decoded[i].as_ref().expect("filtered").0)
                    .collect();
                for (i, v) in unchecked
                    .iter()
                    .zip(SignedTransaction::verify_signatures(&refs))
                {
                    sigs[*i] = v;
                }
            }
        }
        let mut outcomes = Vec::with_capacity(decoded.len());
        for (pos, (d, sig)) in decoded.into_iter().zip(sigs).enumerate() {
            let (tx, id) = match d {
                Ok(x) => x,
                Err(e) => {
                    r.witness.record(Evidence::InvalidEntry {
                        raft_index,
                        position: pos,
                        reason: e.to_string(),
                    });
                    outcomes.push(Err(e));
                    continue;
                }
            };
            if let Err(e) = sig {
                // An honest leader never proposes a bad signature.
                r.witness.record(Evidence::InvalidEntry {
                    raft_index,
                    position: pos,
                    reason: e.to_string(),
                });
                if !self.accept_invalid {
                    outcomes.push(Err(e));
                    continue;
                }
            }
            let decision = r.state.check(&tx, &id, batch.timestamp_ms);
            outcomes.push(match decision {
                Ok(Decision::Append) => {
                    let index = r.state.len();
                    r.state.apply(&tx, id);
                    r.tree.push(leaf_hash(&batch.txs[pos]));
                    rows.push((index, batch.txs[pos].clone()));
                    fresh.push((index, tx));
                    Ok((index, false))
                }
                Ok(Decision::Duplicate(index)) => Ok((index, true)),
                Err(e) => {
                    metrics::counter!("yilian_ledger_rejected_total", "reason" => e.reason())
                        .increment(1);
                    Err(e)
                }
            });
        }
        outcomes
    }

    /// Replaces this member's ledger with a snapshot's entries, re-validating them.
    pub(crate) fn install(
        &self,
        entries: Vec<Vec<u8>>,
        applied: Option<LogId<u64>>,
        membership: StoredMembership<u64, BasicNode>,
    ) -> std::result::Result<(), String> {
        let mut inner = self.inner.write().expect("ledger lock poisoned");
        let revocations = inner.state.revocations().clone();
        let mut state = LedgerState::new(revocations);
        let mut tree = MerkleTree::new();
        let mut txs = Vec::with_capacity(entries.len());
        for (i, b) in entries.iter().enumerate() {
            let tx =
                SignedTransaction::decode(b).map_err(|e| format!("snapshot entry {i}: {e}"))?;
            tx.verify_signature()
                .map_err(|e| format!("snapshot entry {i}: {e}"))?;
            let id = tx.id();
            match state.check(&tx, &id, tx.tx.timestamp_ms) {
                Ok(Decision::Append) => state.apply(&tx, id),
                other => return Err(format!("snapshot entry {i} is not valid: {other:?}")),
            }
            tree.push(leaf_hash(b));
            txs.push(tx);
        }
        let wtx = self.db.begin_write().map_err(|e| e.to_string())?;
        {
            let mut t = wtx.open_table(ENTRIES).map_err(|e| e.to_string())?;
            t.retain(|_, _| false).map_err(|e| e.to_string())?;
            let mut index = wtx.open_table(INDEX).map_err(|e| e.to_string())?;
            index.retain(|_, _| false).map_err(|e| e.to_string())?;
            for (i, (b, tx)) in entries.iter().zip(&txs).enumerate() {
                t.insert(i as u64, b.as_slice())
                    .map_err(|e| e.to_string())?;
                index_entry(&mut index, i as u64, tx).map_err(|e| e.to_string())?;
            }
        }
        let head = SignedTreeHead::sign(tree.len(), tree.root(), now_ms(), &self.key);
        {
            let mut meta = wtx.open_table(META).map_err(|e| e.to_string())?;
            meta.insert(
                HEAD_KEY,
                postcard::to_stdvec(&head).expect("serialises").as_slice(),
            )
            .map_err(|e| e.to_string())?;
            let am = AppliedMeta {
                applied,
                membership: membership.clone(),
            };
            meta.insert(
                APPLIED_KEY,
                postcard::to_stdvec(&am).expect("serialises").as_slice(),
            )
            .map_err(|e| e.to_string())?;
        }
        wtx.commit().map_err(|e| e.to_string())?;
        inner.state = state;
        inner.tree = tree;
        inner.head = head;
        inner.applied = applied;
        inner.membership = membership;
        let size = inner.tree.len();
        drop(inner);
        self.size.send_replace(size);
        Ok(())
    }
}

/// How a ledger takes part in the consortium.
#[derive(Clone)]
pub struct ClusterOptions {
    /// This member's name, for its cosignature lines.
    pub me: MemberName,
    /// This member's peer address (what the others dial).
    pub addr: String,
    /// Make a fresh log a one-member cluster of this node (the network's first member).
    pub bootstrap: bool,
    /// How to reach peers; `None` for a ledger with no peers.
    pub connector: Option<Arc<dyn PeerConnector>>,
    pub timing: Timing,
    /// Test-only fault: apply committed entries that fail validation.
    pub accept_invalid: bool,
}

impl ClusterOptions {
    /// A ledger on its own: a consortium of this one node.
    pub fn single(me: MemberName) -> Self {
        ClusterOptions {
            me,
            addr: String::new(),
            bootstrap: true,
            connector: None,
            timing: Timing::default(),
            accept_invalid: false,
        }
    }
}

/// A cloneable handle to an open ledger. When the last handle drops, the
/// consensus stops and the database file is released.
#[derive(Clone)]
pub struct Ledger {
    shared: Arc<Shared>,
    runtime: Arc<Runtime>,
    queue: mpsc::Sender<Pending>,
    path: Arc<PathBuf>,
}

/// The ledger's own runtime (consensus, proposer, peers), independent of
/// the caller's, so a ledger opens and closes from any context.
struct Runtime {
    rt: Option<tokio::runtime::Runtime>,
    db: Arc<Database>,
    consensus: Arc<RaftConsensus>,
    connector: Option<Arc<dyn PeerConnector>>,
}

impl Drop for Runtime {
    fn drop(&mut self) {
        let Some(rt) = self.rt.take() else { return };
        let consensus = self.consensus.clone();
        let db = self.db.clone();
        // Joining means a reopen right after this returns finds the file unlocked.
        let t = std::thread::spawn(move || {
            let c = &consensus;
            rt.block_on(async move {
                let _ = tokio::time::timeout(Duration::from_secs(5), c.shutdown()).await;
            });
            drop(consensus);
            rt.shutdown_timeout(Duration::from_secs(2));
            // Applied entries ride on the next durable commit; on a clean
            // close that is this one, so a reopen does not re-apply them.
            if let Ok(wtx) = db.begin_write() {
                if let Ok(mut meta) = wtx.open_table(META) {
                    let _ = meta.insert("closed_ms", now_ms().to_be_bytes().as_slice());
                }
                let _ = wtx.commit();
            }
        });
        let _ = t.join();
    }
}

impl std::fmt::Debug for Ledger {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ledger")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

/// Runs `f` on a fresh thread and waits: `block_on` must not run inside the caller's runtime.
fn on_thread<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    std::thread::spawn(f)
        .join()
        .expect("ledger start-up thread")
}

impl Ledger {
    /// Opens (or creates) the ledger at `path` as a single-member network,
    /// replaying and checking every entry against the last signed head.
    /// `log_key` signs tree heads and cosignatures.
    pub fn open(path: &Path, log_key: SigningKey) -> Result<Ledger> {
        Self::open_with(path, log_key, RevocationList::default())
    }

    /// As [`Ledger::open`], sharing `revocations` with TLS servers.
    pub fn open_with(
        path: &Path,
        log_key: SigningKey,
        revocations: RevocationList,
    ) -> Result<Ledger> {
        let me = MemberName {
            org: "local".into(),
            name: hex::encode(&log_key.verifying_key().to_bytes()[..4]),
        };
        Self::open_member(path, log_key, revocations, ClusterOptions::single(me))
    }

    /// Opens the ledger at `path` as one member of a consortium.
    pub fn open_member(
        path: &Path,
        log_key: SigningKey,
        revocations: RevocationList,
        opts: ClusterOptions,
    ) -> Result<Ledger> {
        let db = Database::create(path).map_err(|e| {
            let msg = e.to_string();
            if msg.contains("already open") || msg.contains("locked") {
                LedgerError::Storage(format!("{}: {msg}", path.display()))
            } else {
                storage(e)
            }
        })?;
        let replica = load(&db, &log_key, revocations)?;
        ensure_index(&db)?;
        let (entries, _) = broadcast::channel(4096);
        let size = replica.tree.len();
        let shared = Arc::new(Shared {
            db: Arc::new(db),
            inner: RwLock::new(replica),
            entries,
            key: log_key.clone(),
            me: opts.me.clone(),
            preverified: Mutex::new(HashSet::new()),
            size: watch::channel(size).0,
            failed: std::sync::OnceLock::new(),
            commits: AtomicU64::new(0),
            accept_invalid: opts.accept_invalid,
        });
        // Cosign what was replayed (and so checked) under this member's
        // current name, so the head served from the start is its own, and
        // count every recent size anew (no members before).
        shared.cosign_applied(
            &mut shared.inner.write().expect("ledger lock poisoned"),
            now_ms(),
            &[],
        );
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("ledger")
            .enable_all()
            .build()
            .map_err(|e| LedgerError::Storage(e.to_string()))?;
        let id = raft_id(&log_key.verifying_key().to_bytes());
        let handle = rt.handle().clone();
        let (sh, connector, timing) = (shared.clone(), opts.connector.clone(), opts.timing.clone());
        let bootstrap = opts.bootstrap.then(|| opts.addr.clone());
        let consensus = on_thread(move || {
            handle.block_on(async move {
                let c = RaftConsensus::start(id, sh, connector, timing).await?;
                if let Some(addr) = bootstrap {
                    c.bootstrap(&addr).await?;
                }
                Ok::<_, LedgerError>(Arc::new(c))
            })
        })?;
        let (queue, rx) = mpsc::channel(MAX_BATCH * 2);
        let ledger = Ledger {
            shared: shared.clone(),
            runtime: Arc::new(Runtime {
                rt: Some(rt),
                db: shared.db.clone(),
                consensus: consensus.clone(),
                connector: opts.connector.clone(),
            }),
            queue,
            path: Arc::new(path.to_owned()),
        };
        let proposer = Proposer {
            shared,
            consensus,
            connector: opts.connector.clone(),
            rx,
            in_flight: Arc::new(Semaphore::new(IN_FLIGHT)),
        };
        ledger.spawn(proposer.run());
        if opts.connector.is_some() {
            ledger.spawn(crate::peer::cosign_loop(ledger.clone()));
            ledger.spawn(crate::peer::reconcile_loop(ledger.clone()));
        }
        Ok(ledger)
    }

    pub(crate) fn spawn<F: std::future::Future<Output = ()> + Send + 'static>(&self, f: F) {
        if let Some(rt) = &self.runtime.rt {
            // The loop holds only a weak interest: it ends with the runtime.
            rt.spawn(f);
        }
    }

    pub(crate) fn shared(&self) -> &Arc<Shared> {
        &self.shared
    }

    pub(crate) fn consensus(&self) -> &Arc<RaftConsensus> {
        &self.runtime.consensus
    }

    pub(crate) fn connector(&self) -> Option<&Arc<dyn PeerConnector>> {
        self.runtime.connector.as_ref()
    }

    /// Leaves the consensus now (the other members elect a new leader), even
    /// while other handles to this ledger are still alive.
    pub async fn shutdown(&self) {
        crate::consensus::Consensus::shutdown(&**self.consensus()).await;
    }

    /// Where this member stands in the consensus.
    pub fn status(&self) -> crate::consensus::Status {
        self.consensus().status()
    }

    /// Appends `tx` durably (group-committed with concurrent submissions,
    /// on a quorum of members).
    pub async fn submit(&self, tx: SignedTransaction) -> Result<Receipt> {
        let id = tx.id();
        self.enqueue(Prepared::new(tx, id), false, false).await
    }

    /// As [`Ledger::submit`] for a transaction signed in this process: its
    /// signature is not checked again by this member.
    pub async fn submit_own(&self, tx: OwnTransaction) -> Result<Receipt> {
        self.enqueue(tx.0, true, false).await
    }

    /// A write another member forwarded: it is never forwarded again.
    pub(crate) async fn submit_forwarded(&self, tx: SignedTransaction) -> Result<Receipt> {
        let id = tx.id();
        self.enqueue(Prepared::new(tx, id), false, true).await
    }

    async fn enqueue(&self, entry: Prepared, verified: bool, forwarded: bool) -> Result<Receipt> {
        let (reply, rx) = oneshot::channel();
        self.queue
            .send(Pending {
                entry,
                verified,
                forwarded,
                reply,
            })
            .await
            .map_err(|_| LedgerError::Closed)?;
        rx.await.map_err(|_| LedgerError::Closed)?
    }

    /// As [`Ledger::submit`], from a thread outside any async runtime.
    pub fn submit_blocking(&self, tx: SignedTransaction) -> Result<Receipt> {
        let (reply, rx) = oneshot::channel();
        let id = tx.id();
        self.queue
            .blocking_send(Pending {
                entry: Prepared::new(tx, id),
                verified: false,
                forwarded: false,
                reply,
            })
            .map_err(|_| LedgerError::Closed)?;
        rx.blocking_recv().map_err(|_| LedgerError::Closed)?
    }

    /// Applied batches (state-machine commits) since this ledger was opened;
    /// with [`Ledger::len`] it shows how many entries a commit carries.
    pub fn commits(&self) -> u64 {
        self.shared.commits.load(Ordering::Relaxed)
    }

    /// This member's own signed head of what it has applied.
    pub fn tree_head(&self) -> SignedTreeHead {
        self.read().head.clone()
    }

    /// The newest head a quorum of members cosigned.
    pub fn cosigned_head(&self) -> Option<Checkpoint> {
        self.read().witness.trusted().cloned()
    }

    /// Every cosignature this member holds for `size` (recent sizes only).
    pub fn cosignatures_at(&self, size: u64) -> Option<Checkpoint> {
        self.read().witness.cosignatures_at(size)
    }

    /// The consortium's cosigners as this member's ledger lists them.
    pub fn cosigners(&self) -> Vec<Cosigner> {
        let r = self.read();
        self.shared.cosigners(&r)
    }

    /// The evidence this member recorded (invalid entries, forks, equivocation).
    pub fn evidence(&self) -> Vec<Evidence> {
        self.read().witness.evidence().to_vec()
    }

    /// The member nodes that replicate and cosign the ledger.
    pub fn consortium(&self) -> BTreeMap<AccountId, ConsortiumMember> {
        self.read().state.consortium().clone()
    }

    /// Every membership proposal on the ledger.
    pub fn proposals(&self) -> Vec<(TxId, crate::state::MembershipProposal)> {
        self.read()
            .state
            .proposals()
            .map(|(k, p)| (*k, p.clone()))
            .collect()
    }

    /// True when this member has not heard from a quorum within two
    /// election timeouts: it may be behind the network.
    pub fn is_stale(&self) -> bool {
        if self.runtime.connector.is_none() {
            return false;
        }
        let c = self.consensus();
        c.status().is_stale(c.timing().election_max_ms * 2)
    }

    pub fn len(&self) -> u64 {
        self.read().tree.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Waits until this member has applied at least `size` entries, up to `within`.
    pub async fn wait_for_size(&self, size: u64, within: Duration) -> bool {
        let mut rx = self.shared.size.subscribe();
        tokio::time::timeout(within, rx.wait_for(|s| *s >= size))
            .await
            .is_ok_and(|r| r.is_ok())
    }

    /// The raw bytes of entry `index` (what the Merkle leaf hashes).
    pub fn entry_bytes(&self, index: u64) -> Result<Vec<u8>> {
        let size = self.len();
        if index >= size {
            return Err(LedgerError::EntryNotFound { index, size });
        }
        let rtx = self.shared.db.begin_read().map_err(storage)?;
        let table = rtx.open_table(ENTRIES).map_err(storage)?;
        let v = table
            .get(index)
            .map_err(storage)?
            .ok_or(LedgerError::EntryNotFound { index, size })?;
        Ok(v.value().to_vec())
    }

    pub fn entry(&self, index: u64) -> Result<SignedTransaction> {
        SignedTransaction::decode(&self.entry_bytes(index)?)
    }

    /// Entries `from..to` (clamped to the log's size), in order.
    pub fn entries(&self, from: u64, to: u64) -> Result<Vec<(u64, SignedTransaction)>> {
        let to = to.min(self.len());
        if from >= to {
            return Ok(Vec::new());
        }
        let bytes = self.shared.entry_range_bytes(from, to)?;
        bytes
            .iter()
            .enumerate()
            .map(|(i, b)| Ok((from + i as u64, SignedTransaction::decode(b)?)))
            .collect()
    }

    pub fn inclusion_proof(&self, index: u64, tree_size: u64) -> Result<InclusionProof> {
        Ok(self.read().tree.inclusion_proof(index, tree_size)?)
    }

    pub fn consistency_proof(&self, old_size: u64, new_size: u64) -> Result<ConsistencyProof> {
        Ok(self.read().tree.consistency_proof(old_size, new_size)?)
    }

    /// The root of this member's tree at `size`.
    pub fn root_at(&self, size: u64) -> Result<Hash> {
        Ok(self.read().tree.root_at(size)?)
    }

    /// The indexes of entries of payload `kind` with index `key` (empty: every
    /// entry of that kind), from `from` on, in order, up to `limit` of them.
    /// An index read, not a scan of the log.
    pub fn indexed(&self, kind: &str, key: &[u8], from: u64, limit: usize) -> Result<Vec<u64>> {
        let size = self.len();
        let rtx = self.shared.db.begin_read().map_err(storage)?;
        let table = match rtx.open_table(INDEX) {
            Ok(t) => t,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(Vec::new()),
            Err(e) => return Err(storage(e)),
        };
        let mut out = Vec::new();
        for item in table
            .range((kind, key, from)..=(kind, key, u64::MAX))
            .map_err(storage)?
        {
            let (k, _) = item.map_err(storage)?;
            let index = k.value().2;
            // Rows of entries applied but not yet visible to readers are skipped.
            if index >= size || out.len() >= limit {
                break;
            }
            out.push(index);
        }
        Ok(out)
    }

    /// Where a transaction id sits in the log, if it does.
    pub fn index_of(&self, id: &TxId) -> Option<u64> {
        self.read().state.index_of(id)
    }

    pub fn balance(&self, account: &AccountId) -> u64 {
        self.read().state.balance(account)
    }

    pub fn member(&self, account: &AccountId) -> Option<Member> {
        self.read().state.member(account).cloned()
    }

    pub fn members(&self) -> Vec<(AccountId, Member)> {
        self.read()
            .state
            .members()
            .map(|(k, m)| (*k, m.clone()))
            .collect()
    }

    pub fn network(&self) -> Option<String> {
        self.read().state.network().map(str::to_owned)
    }

    pub fn authority(&self) -> Option<AccountId> {
        self.read().state.authority()
    }

    pub fn revocations(&self) -> RevocationList {
        self.read().state.revocations().clone()
    }

    /// New entries as they are applied (a lagging subscriber should catch up with [`Self::entries`]).
    pub fn subscribe(&self) -> broadcast::Receiver<(u64, Arc<SignedTransaction>)> {
        self.shared.entries.subscribe()
    }

    /// Why this member stopped taking writes, once it has: its storage
    /// failed (a full or failing disk) under the log or the state machine.
    /// Everything acknowledged is durable; the node must be restarted once
    /// the disk is mended, and replays from it.
    pub fn halted(&self) -> Option<String> {
        halted(&self.shared, self.consensus())
    }

    pub(crate) fn read(&self) -> std::sync::RwLockReadGuard<'_, Replica> {
        self.shared.read()
    }
}

/// Reads and checks the stored ledger: every entry replayed, the Merkle
/// root compared with the stored signed head and with every head this
/// member cosigned.
/// Why this member takes no more writes: its state machine or its
/// consensus engine hit a storage failure.
fn halted(shared: &Shared, consensus: &RaftConsensus) -> Option<String> {
    shared
        .failed
        .get()
        .cloned()
        .or_else(|| crate::consensus::Consensus::status(consensus).halted)
}

fn load(db: &Database, log_key: &SigningKey, revocations: RevocationList) -> Result<Replica> {
    let mut state = LedgerState::new(revocations);
    let mut tree = MerkleTree::new();
    let rtx = db.begin_read().map_err(storage)?;
    let meta = match rtx.open_table(META) {
        Ok(m) => Some(m),
        Err(redb::TableError::TableDoesNotExist(_)) => None,
        Err(e) => return Err(storage(e)),
    };
    let get = |k: &str| -> Result<Option<Vec<u8>>> {
        match &meta {
            Some(m) => Ok(m.get(k).map_err(storage)?.map(|v| v.value().to_vec())),
            None => Ok(None),
        }
    };
    let stored_head = get(HEAD_KEY)?
        .map(|v| postcard::from_bytes::<SignedTreeHead>(&v))
        .transpose()
        .map_err(|e| LedgerError::Corrupt(format!("stored tree head: {e}")))?;
    let applied: Option<AppliedMeta> = get(APPLIED_KEY)?
        .map(|v| postcard::from_bytes(&v))
        .transpose()
        .map_err(|e| LedgerError::Corrupt(format!("stored raft position: {e}")))?;
    let mut witness: Option<Witness> = get(WITNESS_KEY)?
        .map(|v| serde_json::from_slice(&v))
        .transpose()
        .map_err(|e| LedgerError::Corrupt(format!("stored witness state: {e}")))?;
    match rtx.open_table(ENTRIES) {
        Ok(entries) => {
            for (expected, item) in entries.iter().map_err(storage)?.enumerate() {
                let (k, v) = item.map_err(storage)?;
                if k.value() != expected as u64 {
                    return Err(LedgerError::Corrupt(format!("entry {expected} missing")));
                }
                let bytes = v.value();
                let tx = SignedTransaction::decode(bytes)
                    .map_err(|e| LedgerError::Corrupt(format!("entry {expected}: {e}")))?;
                // Replay trusts the checks made at apply time; the Merkle
                // root against the signed head catches tampering.
                let id = tx.id();
                state.apply(&tx, id);
                tree.push(leaf_hash(bytes));
            }
        }
        Err(redb::TableError::TableDoesNotExist(_)) => {}
        Err(e) => return Err(storage(e)),
    }
    let head = match stored_head {
        Some(h) => {
            h.verify()
                .map_err(|_| LedgerError::Corrupt("stored tree head signature".into()))?;
            if h.tree_size != tree.len() || h.root_hash != tree.root() {
                return Err(LedgerError::Corrupt(format!(
                    "entries (size {}, root {}) do not match the signed head (size {}, root {}); \
                     restore this member's ledger.redb from a backup or remove it to re-sync from the other members",
                    tree.len(),
                    hex::encode(tree.root()),
                    h.tree_size,
                    hex::encode(h.root_hash)
                )));
            }
            if h.log_key != log_key.verifying_key().to_bytes() {
                // Re-sign under this node's key; the history is unchanged.
                SignedTreeHead::sign(h.tree_size, h.root_hash, now_ms(), log_key)
            } else {
                h
            }
        }
        None if tree.is_empty() => SignedTreeHead::sign(0, tree.root(), now_ms(), log_key),
        None => return Err(LedgerError::Corrupt("entries without a signed head".into())),
    };
    let origin = state.network().unwrap_or("yilian").to_owned();
    let mut witness = witness.take().unwrap_or_else(|| Witness::new(&origin));
    if witness.check_own_log(&tree).is_err() {
        return Err(LedgerError::Corrupt(
            "the log no longer holds a head this member cosigned".into(),
        ));
    }
    let (applied, membership) = match applied {
        Some(a) => (a.applied, a.membership),
        None => (None, StoredMembership::default()),
    };
    Ok(Replica {
        state,
        tree,
        head,
        applied,
        membership,
        witness,
    })
}

/// Builds the payload index of a ledger written before it existed.
fn ensure_index(db: &Database) -> Result<()> {
    let rtx = db.begin_read().map_err(storage)?;
    match rtx.open_table(INDEX) {
        Ok(_) => return Ok(()),
        Err(redb::TableError::TableDoesNotExist(_)) => {}
        Err(e) => return Err(storage(e)),
    }
    let entries = match rtx.open_table(ENTRIES) {
        Ok(t) => t,
        Err(redb::TableError::TableDoesNotExist(_)) => return Ok(()),
        Err(e) => return Err(storage(e)),
    };
    let wtx = db.begin_write().map_err(storage)?;
    {
        let mut index = wtx.open_table(INDEX).map_err(storage)?;
        for item in entries.iter().map_err(storage)? {
            let (k, v) = item.map_err(storage)?;
            let tx = SignedTransaction::decode(v.value())?;
            index_entry(&mut index, k.value(), &tx).map_err(storage)?;
        }
    }
    wtx.commit().map_err(storage)
}

/// Writes entry `index`'s rows of the payload index.
fn index_entry(
    table: &mut redb::Table<'_, (&'static str, &'static [u8], u64), ()>,
    index: u64,
    tx: &SignedTransaction,
) -> std::result::Result<(), redb::StorageError> {
    for (kind, key) in tx.tx.payload.index_keys() {
        table.insert((kind, key.as_slice(), index), ())?;
    }
    Ok(())
}

/// The leader's batching stage.
struct Proposer {
    shared: Arc<Shared>,
    consensus: Arc<RaftConsensus>,
    connector: Option<Arc<dyn PeerConnector>>,
    rx: mpsc::Receiver<Pending>,
    in_flight: Arc<Semaphore>,
}

impl Proposer {
    async fn run(mut self) {
        let mut batch = Vec::with_capacity(MAX_BATCH);
        while let Some(first) = self.rx.recv().await {
            // Wait for a free slot before draining, so a busy pipeline
            // makes the next batch bigger rather than adding one more.
            let permit = self
                .in_flight
                .clone()
                .acquire_owned()
                .await
                .expect("semaphore lives with the proposer");
            batch.push(first);
            while batch.len() < MAX_BATCH {
                match self.rx.try_recv() {
                    Ok(p) => batch.push(p),
                    Err(_) => break,
                }
            }
            if let Some(cause) = halted(&self.shared, &self.consensus) {
                for p in batch.drain(..) {
                    let _ = p.reply.send(Err(LedgerError::Halted {
                        cause: cause.clone(),
                    }));
                }
                continue;
            }
            let mut status = crate::consensus::Consensus::status(&*self.consensus);
            if status.leader.is_none() {
                // Mid-election: wait for its outcome rather than refuse.
                let wait = Duration::from_millis(consensus_timing_ms(&self.consensus) * 3);
                self.consensus.wait_for_leader(wait).await;
                status = crate::consensus::Consensus::status(&*self.consensus);
            }
            let taken: Vec<Pending> = std::mem::take(&mut batch);
            if status.is_leader {
                self.propose(taken, permit).await;
            } else {
                drop(permit);
                self.forward(taken).await;
            }
        }
    }

    async fn propose(&self, batch: Vec<Pending>, permit: tokio::sync::OwnedSemaphorePermit) {
        let shared = self.shared.clone();
        let consensus = self.consensus.clone();
        tokio::spawn(async move {
            let _permit = permit;
            // Signatures first, off the async threads. The test-only faulty
            // leader skips them, as a buggy or malicious one would.
            let faulty = shared.accept_invalid;
            let (batch, sigs) = tokio::task::spawn_blocking(move || {
                let unverified: Vec<usize> = (0..batch.len())
                    .filter(|&i| !batch[i].verified && !faulty)
                    .collect();
                let mut sigs: Vec<Result<()>> = vec![Ok(()); batch.len()];
                if !unverified.is_empty() {
                    let refs: Vec<&SignedTransaction> =
                        unverified.iter().map(|&i| &batch[i].entry.tx).collect();
                    for (i, v) in unverified
                        .iter()
                        .zip(SignedTransaction::verify_signatures(&refs))
                    {
                        sigs[*i] = v;
                    }
                }
                (batch, sigs)
            })
            .await
            .expect("signature check");
            // Then a pre-check against the applied state, to keep plainly
            // refused transactions out of the Raft log.
            let now = now_ms();
            let mut proposed: Vec<Pending> = Vec::with_capacity(batch.len());
            {
                let r = shared.read();
                let mut pre = shared.preverified.lock().expect("lock");
                let mut in_batch: HashSet<TxId> = HashSet::new();
                for (p, sig) in batch.into_iter().zip(sigs) {
                    let verdict = sig.and_then(|()| r.state.check(&p.entry.tx, &p.entry.id, now));
                    match verdict {
                        Ok(Decision::Duplicate(index)) => {
                            let _ = p.reply.send(Ok(Receipt {
                                index,
                                tx_id: p.entry.id,
                                tree_head: r.head.clone(),
                                duplicate: true,
                            }));
                        }
                        Ok(Decision::Append) if in_batch.insert(p.entry.id) => {
                            pre.insert(p.entry.id);
                            proposed.push(p);
                        }
                        Ok(Decision::Append) => proposed.push(p),
                        Err(e) => {
                            metrics::counter!("yilian_ledger_rejected_total", "reason" => e.reason())
                                .increment(1);
                            let _ = p.reply.send(Err(e));
                        }
                    }
                }
            }
            if proposed.is_empty() {
                return;
            }
            let txs: Vec<Vec<u8>> = proposed.iter().map(|p| p.entry.bytes.clone()).collect();
            let result = consensus
                .propose(Batch {
                    timestamp_ms: now,
                    txs,
                })
                .await;
            match result {
                Ok(applied) => {
                    for (p, o) in proposed.into_iter().zip(applied.outcomes) {
                        let reply = o.map(|(index, duplicate)| Receipt {
                            index,
                            tx_id: p.entry.id,
                            tree_head: applied.head.clone(),
                            duplicate,
                        });
                        let _ = p.reply.send(reply);
                    }
                }
                Err(e) => {
                    let mut pre = shared.preverified.lock().expect("lock");
                    for p in proposed {
                        pre.remove(&p.entry.id);
                        let _ = p.reply.send(Err(e.clone()));
                    }
                }
            }
        });
    }

    /// Sends a follower's writes to the leader, then waits until this
    /// member has applied them too, so a client reads its own write here.
    async fn forward(&self, batch: Vec<Pending>) {
        let (mine, theirs): (Vec<Pending>, Vec<Pending>) =
            batch.into_iter().partition(|p| !p.forwarded);
        let status = crate::consensus::Consensus::status(&*self.consensus);
        for p in theirs {
            let _ = p.reply.send(Err(LedgerError::NotLeader {
                leader: status.leader.as_ref().map(|(_, a)| a.clone()),
            }));
        }
        if mine.is_empty() {
            return;
        }
        let consensus = self.consensus.clone();
        let connector = self.connector.clone();
        let shared = self.shared.clone();
        tokio::spawn(async move {
            let wait = Duration::from_millis(consensus_timing_ms(&consensus) * 3);
            let leader = match crate::consensus::Consensus::status(&*consensus).leader {
                Some(l) => Some(l),
                None => consensus.wait_for_leader(wait).await,
            };
            let (leader, connector) = match (leader, connector) {
                (Some((id, addr)), Some(c)) if id != consensus_id(&consensus) => (addr, c),
                (Some((id, _)), _) if id == consensus_id(&consensus) => {
                    // We became the leader meanwhile: the caller retries.
                    for p in mine {
                        let _ = p.reply.send(Err(LedgerError::NotLeader { leader: None }));
                    }
                    return;
                }
                (l, _) => {
                    for p in mine {
                        let _ = p.reply.send(Err(LedgerError::NotLeader {
                            leader: l.as_ref().map(|(_, a)| a.clone()),
                        }));
                    }
                    return;
                }
            };
            let txs: Vec<Vec<u8>> = mine.iter().map(|p| p.entry.bytes.clone()).collect();
            let outcomes = crate::peer::forward(&*connector, &leader, txs).await;
            let outcomes = match outcomes {
                Ok(o) if o.len() == mine.len() => o,
                Ok(_) => {
                    let e = LedgerError::PeerMessage("leader answered a different count".into());
                    vec![Err(e); mine.len()]
                }
                Err(e) => vec![Err(e); mine.len()],
            };
            let newest = outcomes
                .iter()
                .filter_map(|o| o.as_ref().ok().map(|r| r.index + 1))
                .max()
                .unwrap_or(0);
            let mut size = shared.size.subscribe();
            let _ = tokio::time::timeout(wait, size.wait_for(|s| *s >= newest)).await;
            for (p, o) in mine.into_iter().zip(outcomes) {
                let _ = p.reply.send(o);
            }
        });
    }
}

fn consensus_timing_ms(c: &RaftConsensus) -> u64 {
    c.timing().election_max_ms
}

fn consensus_id(c: &RaftConsensus) -> u64 {
    crate::consensus::Consensus::status(c).id
}

fn storage(e: impl std::fmt::Display) -> LedgerError {
    LedgerError::Storage(e.to_string())
}
