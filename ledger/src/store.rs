//! The durable log: redb storage around the sans-IO [`LedgerState`] and
//! [`MerkleTree`], with group commit.
//!
//! One writer thread owns appends. Submitters queue transactions; the writer
//! drains whatever is queued (up to [`MAX_BATCH`]), checks signatures in
//! parallel, runs the state machine, writes the accepted entries and the new
//! signed tree head in one redb transaction and fsyncs once, and only then
//! acknowledges. An acknowledged entry is therefore on disk, and a crash
//! loses at most unacknowledged ones.
//!
//! The writer is the one serial stage, so work that does not depend on the
//! log's order (entry encoding, transaction id, Merkle leaf hash) is done by
//! the submitter before queueing, and transactions this process signed
//! itself ([`OwnTransaction`], e.g. the KMS's audit records) skip signature
//! verification: their signature was made here a moment ago.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use ed25519_dalek::SigningKey;
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use tokio::sync::{broadcast, mpsc, oneshot};
use yilian_identity::tls::RevocationList;

use crate::head::SignedTreeHead;
use crate::merkle::{ConsistencyProof, Hash, InclusionProof, MerkleTree, leaf_hash};
use crate::state::{Decision, LedgerState, Member};
use crate::tx::{AccountId, SignedTransaction, Transaction, TxId, now_ms};
use crate::{LedgerError, Result};

const ENTRIES: TableDefinition<'_, u64, &[u8]> = TableDefinition::new("entries");
const META: TableDefinition<'_, &str, &[u8]> = TableDefinition::new("meta");
const HEAD_KEY: &str = "head";

/// Most transactions one commit carries.
pub const MAX_BATCH: usize = 8192;

/// What a submitter gets back once its transaction is durable.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Receipt {
    pub index: u64,
    pub tx_id: TxId,
    /// The head that first included the entry (or the current one, for a duplicate).
    pub tree_head: SignedTreeHead,
    /// True when the transaction was already in the log (idempotent resubmission).
    pub duplicate: bool,
}

struct Inner {
    state: LedgerState,
    tree: MerkleTree,
    head: SignedTreeHead,
}

/// A transaction with the order-independent work for its entry done.
struct Prepared {
    tx: SignedTransaction,
    id: TxId,
    bytes: Vec<u8>,
    leaf: Hash,
}

impl Prepared {
    fn new(tx: SignedTransaction, id: TxId) -> Self {
        let bytes = tx.encode();
        let leaf = leaf_hash(&bytes);
        Prepared {
            tx,
            id,
            bytes,
            leaf,
        }
    }
}

/// A transaction signed in this process by a key it holds. It can only be
/// made by signing, so its signature is valid by construction and the
/// writer does not check it again; the ledger state still checks that the
/// signer is an active member allowed to write it.
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
    reply: oneshot::Sender<Result<Receipt>>,
}

/// A cloneable handle to an open ledger. When the last handle drops, the
/// writer drains its queue and stops, and the database file is released.
#[derive(Clone)]
pub struct Ledger {
    db: Arc<Database>,
    inner: Arc<RwLock<Inner>>,
    writer: Arc<WriterHandle>,
    entries: broadcast::Sender<(u64, Arc<SignedTransaction>)>,
    failed: Arc<AtomicBool>,
    commits: Arc<AtomicU64>,
    path: Arc<PathBuf>,
}

struct WriterHandle {
    queue: Option<mpsc::Sender<Pending>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl WriterHandle {
    fn queue(&self) -> &mpsc::Sender<Pending> {
        self.queue.as_ref().expect("queue lives until drop")
    }
}

impl Drop for WriterHandle {
    fn drop(&mut self) {
        // Closing the queue ends the writer after its current batch; joining
        // means a reopen right after this returns finds the file unlocked.
        self.queue.take();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl std::fmt::Debug for Ledger {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ledger")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

impl Ledger {
    /// Opens (or creates) the ledger at `path`, replaying and checking every
    /// entry against the last signed head. `log_key` signs new tree heads.
    pub fn open(path: &Path, log_key: SigningKey) -> Result<Ledger> {
        Self::open_with(path, log_key, RevocationList::default())
    }

    /// As [`Ledger::open`], sharing `revocations` with TLS servers.
    pub fn open_with(
        path: &Path,
        log_key: SigningKey,
        revocations: RevocationList,
    ) -> Result<Ledger> {
        let db = Database::create(path).map_err(storage)?;
        let mut state = LedgerState::new(revocations);
        let mut tree = MerkleTree::new();
        let stored_head;
        {
            let rtx = db.begin_read().map_err(storage)?;
            let stored = match rtx.open_table(META) {
                Ok(meta) => meta
                    .get(HEAD_KEY)
                    .map_err(storage)?
                    .map(|v| postcard::from_bytes::<SignedTreeHead>(v.value()))
                    .transpose()
                    .map_err(|e| LedgerError::Corrupt(format!("stored tree head: {e}")))?,
                Err(redb::TableError::TableDoesNotExist(_)) => None,
                Err(e) => return Err(storage(e)),
            };
            match rtx.open_table(ENTRIES) {
                Ok(entries) => {
                    for (expected, item) in entries.iter().map_err(storage)?.enumerate() {
                        let (k, v) = item.map_err(storage)?;
                        if k.value() != expected as u64 {
                            return Err(LedgerError::Corrupt(format!(
                                "entry {} missing",
                                expected
                            )));
                        }
                        let bytes = v.value();
                        let tx = SignedTransaction::decode(bytes)
                            .map_err(|e| LedgerError::Corrupt(format!("entry {expected}: {e}")))?;
                        // Replay trusts the signatures checked at append time;
                        // the Merkle root against the signed head catches tampering.
                        let id = tx.id();
                        state.apply(&tx, id);
                        tree.push(leaf_hash(bytes));
                    }
                }
                Err(redb::TableError::TableDoesNotExist(_)) => {}
                Err(e) => return Err(storage(e)),
            }
            stored_head = stored;
        }
        let head = match stored_head {
            Some(h) => {
                h.verify()
                    .map_err(|_| LedgerError::Corrupt("stored tree head signature".into()))?;
                if h.tree_size != tree.len() || h.root_hash != tree.root() {
                    return Err(LedgerError::Corrupt(format!(
                        "entries (size {}) do not match the signed head (size {})",
                        tree.len(),
                        h.tree_size
                    )));
                }
                if h.log_key != log_key.verifying_key().to_bytes() {
                    // Re-sign under this node's key; the history is unchanged.
                    SignedTreeHead::sign(h.tree_size, h.root_hash, now_ms(), &log_key)
                } else {
                    h
                }
            }
            None if tree.is_empty() => SignedTreeHead::sign(0, tree.root(), now_ms(), &log_key),
            None => return Err(LedgerError::Corrupt("entries without a signed head".into())),
        };
        let db = Arc::new(db);
        let inner = Arc::new(RwLock::new(Inner { state, tree, head }));
        let (queue, rx) = mpsc::channel(MAX_BATCH * 2);
        let (entries, _) = broadcast::channel(4096);
        let failed = Arc::new(AtomicBool::new(false));
        let commits = Arc::new(AtomicU64::new(0));
        let writer = Writer {
            db: db.clone(),
            inner: inner.clone(),
            rx,
            entries: entries.clone(),
            log_key,
            failed: failed.clone(),
            commits: commits.clone(),
        };
        let thread = std::thread::Builder::new()
            .name("ledger-writer".into())
            .spawn(move || writer.run())
            .map_err(|e| LedgerError::Storage(e.to_string()))?;
        Ok(Ledger {
            db,
            inner,
            writer: Arc::new(WriterHandle {
                queue: Some(queue),
                thread: Some(thread),
            }),
            entries,
            failed,
            commits,
            path: Arc::new(path.to_owned()),
        })
    }

    /// Appends `tx` durably (group-committed with concurrent submissions).
    pub async fn submit(&self, tx: SignedTransaction) -> Result<Receipt> {
        let id = tx.id();
        self.enqueue(Prepared::new(tx, id), false).await
    }

    /// As [`Ledger::submit`] for a transaction signed in this process: its
    /// signature is not checked again.
    pub async fn submit_own(&self, tx: OwnTransaction) -> Result<Receipt> {
        self.enqueue(tx.0, true).await
    }

    async fn enqueue(&self, entry: Prepared, verified: bool) -> Result<Receipt> {
        let (reply, rx) = oneshot::channel();
        self.writer
            .queue()
            .send(Pending {
                entry,
                verified,
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
        self.writer
            .queue()
            .blocking_send(Pending {
                entry: Prepared::new(tx, id),
                verified: false,
                reply,
            })
            .map_err(|_| LedgerError::Closed)?;
        rx.blocking_recv().map_err(|_| LedgerError::Closed)?
    }

    /// Durable commits (one fsync each) since this ledger was opened; with
    /// [`Ledger::len`] it shows how many entries a commit carries.
    pub fn commits(&self) -> u64 {
        self.commits.load(Ordering::Relaxed)
    }

    pub fn tree_head(&self) -> SignedTreeHead {
        self.read().head.clone()
    }

    pub fn len(&self) -> u64 {
        self.read().tree.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The raw bytes of entry `index` (what the Merkle leaf hashes).
    pub fn entry_bytes(&self, index: u64) -> Result<Vec<u8>> {
        let size = self.len();
        if index >= size {
            return Err(LedgerError::EntryNotFound { index, size });
        }
        let rtx = self.db.begin_read().map_err(storage)?;
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
        let rtx = self.db.begin_read().map_err(storage)?;
        let table = rtx.open_table(ENTRIES).map_err(storage)?;
        table
            .range(from..to)
            .map_err(storage)?
            .map(|item| {
                let (k, v) = item.map_err(storage)?;
                Ok((k.value(), SignedTransaction::decode(v.value())?))
            })
            .collect()
    }

    pub fn inclusion_proof(&self, index: u64, tree_size: u64) -> Result<InclusionProof> {
        Ok(self.read().tree.inclusion_proof(index, tree_size)?)
    }

    pub fn consistency_proof(&self, old_size: u64, new_size: u64) -> Result<ConsistencyProof> {
        Ok(self.read().tree.consistency_proof(old_size, new_size)?)
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

    /// New entries as they are committed (a lagging subscriber should catch up with [`Self::entries`]).
    pub fn subscribe(&self) -> broadcast::Receiver<(u64, Arc<SignedTransaction>)> {
        self.entries.subscribe()
    }

    /// True once a commit failed: the node must restart (replaying from disk).
    pub fn has_failed(&self) -> bool {
        self.failed.load(Ordering::SeqCst)
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Inner> {
        self.inner.read().expect("ledger lock poisoned")
    }
}

struct Writer {
    db: Arc<Database>,
    inner: Arc<RwLock<Inner>>,
    rx: mpsc::Receiver<Pending>,
    entries: broadcast::Sender<(u64, Arc<SignedTransaction>)>,
    log_key: SigningKey,
    failed: Arc<AtomicBool>,
    commits: Arc<AtomicU64>,
}

impl Writer {
    fn run(mut self) {
        let mut batch = Vec::with_capacity(MAX_BATCH);
        while let Some(first) = self.rx.blocking_recv() {
            batch.push(first);
            while batch.len() < MAX_BATCH {
                match self.rx.try_recv() {
                    Ok(p) => batch.push(p),
                    Err(_) => break,
                }
            }
            if self.failed.load(Ordering::SeqCst) {
                for p in batch.drain(..) {
                    let _ = p.reply.send(Err(LedgerError::Closed));
                }
                continue;
            }
            self.commit(&mut batch);
        }
    }

    fn commit(&mut self, batch: &mut Vec<Pending>) {
        // Only signatures not made in this process are checked (in one
        // batch verification).
        let unverified: Vec<usize> = (0..batch.len()).filter(|&i| !batch[i].verified).collect();
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
        let now = now_ms();
        let mut inner = self.inner.write().expect("ledger lock poisoned");
        let start = inner.tree.len();
        let mut outcomes: Vec<Result<(u64, bool)>> = Vec::with_capacity(batch.len());
        let mut appended: Vec<(u64, usize)> = Vec::new();
        for (i, (p, sig)) in batch.iter().zip(sigs).enumerate() {
            let e = &p.entry;
            let outcome = sig.and_then(|()| inner.state.check(&e.tx, &e.id, now));
            outcomes.push(match outcome {
                Ok(Decision::Append) => {
                    let index = inner.state.len();
                    inner.state.apply(&e.tx, e.id);
                    inner.tree.push(e.leaf);
                    appended.push((index, i));
                    Ok((index, false))
                }
                Ok(Decision::Duplicate(index)) => Ok((index, true)),
                Err(e) => Err(e),
            });
        }
        if !appended.is_empty() {
            let head =
                SignedTreeHead::sign(inner.tree.len(), inner.tree.root(), now, &self.log_key);
            let write = || -> Result<()> {
                let wtx = self.db.begin_write().map_err(storage)?;
                {
                    let mut table = wtx.open_table(ENTRIES).map_err(storage)?;
                    for &(index, i) in &appended {
                        table
                            .insert(index, batch[i].entry.bytes.as_slice())
                            .map_err(storage)?;
                    }
                    let mut meta = wtx.open_table(META).map_err(storage)?;
                    let head_bytes = postcard::to_stdvec(&head).expect("heads serialise");
                    meta.insert(HEAD_KEY, head_bytes.as_slice())
                        .map_err(storage)?;
                }
                wtx.commit().map_err(storage)
            };
            if let Err(e) = write() {
                // Memory is now ahead of disk: stop accepting, refuse everyone
                // in this batch; a restart replays the durable prefix.
                tracing::error!(error = %e, "ledger commit failed; refusing further appends");
                self.failed.store(true, Ordering::SeqCst);
                for p in batch.drain(..) {
                    let _ = p.reply.send(Err(e.clone()));
                }
                return;
            }
            inner.head = head;
            self.commits.fetch_add(1, Ordering::Relaxed);
            metrics::counter!("yilian_ledger_appended_total").increment(appended.len() as u64);
            metrics::counter!("yilian_ledger_commits_total").increment(1);
            metrics::gauge!("yilian_ledger_size").set(inner.tree.len() as f64);
        }
        let head = inner.head.clone();
        drop(inner);
        debug_assert!(start + appended.len() as u64 == head.tree_size);
        for (p, outcome) in batch.drain(..).zip(outcomes) {
            let id = p.entry.id;
            let reply = outcome.map(|(index, duplicate)| {
                if !duplicate && self.entries.receiver_count() > 0 {
                    let _ = self.entries.send((index, Arc::new(p.entry.tx)));
                }
                Receipt {
                    index,
                    tx_id: id,
                    tree_head: head.clone(),
                    duplicate,
                }
            });
            if let Err(e) = &reply {
                metrics::counter!("yilian_ledger_rejected_total", "reason" => e.reason())
                    .increment(1);
            }
            let _ = p.reply.send(reply);
        }
    }
}

fn storage(e: impl std::fmt::Display) -> LedgerError {
    LedgerError::Storage(e.to_string())
}
