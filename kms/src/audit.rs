//! The audit trail. Every KMS operation, allowed or refused, is recorded
//! through [`AuditLog`]; an operation that would succeed but cannot be
//! recorded fails instead (fail closed). [`LedgerAudit`] writes the records
//! to the Yilian ledger as `KeyAudits` transactions signed by the node
//! identity, and lets an owner list and verify every use of their keys.
//!
//! Records are batched the way the ledger batches transactions: while an
//! audit entry is being committed ([`IN_FLIGHT`]), the operations that
//! finish meanwhile queue, and the next entry carries all of them (up to
//! the ledger's `MAX_AUDIT_RECORDS`) under one signature. Under load an
//! operation's audit then costs a share of one entry (one signature, one
//! Merkle leaf, one verification on every member) instead of a whole one,
//! and each is still released only once its entry is durable.

use std::future::Future;
use std::sync::{Arc, OnceLock};

use ed25519_dalek::SigningKey;
use tokio::sync::{Semaphore, mpsc, oneshot};
use yilian_ledger::bundle::{BUNDLE_VERSION, InclusionBundle};
use yilian_ledger::tx::limits::{MAX_AUDIT_RECORDS, MAX_AUDIT_TEXT_BYTES};
use yilian_ledger::{Ledger, OwnTransaction, Payload, SignedTransaction, Transaction};

use crate::error::{KmsError, Result};
use crate::policy::{AccountId, Admission};

/// One audited operation: identifiers and a request hash, never key
/// material or plaintext. The ledger's own record type, so what the KMS
/// records is what every member stores.
pub use yilian_ledger::KeyAuditRecord as KeyAudit;

/// Audit entries being committed at once; while they are, the next one
/// fills. One, as in classic group commit: measured on 2 cores with 64
/// clients (`benches/kms_grpc.rs`), one in flight gave about 29 records an
/// entry and 1.5x the throughput of four in flight (9 records an entry),
/// because each ledger commit costs the same however many records it holds.
pub const IN_FLIGHT: usize = 1;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AuditReceipt {
    /// The ledger index of the entry holding the record.
    pub index: u64,
    /// The record's place among that entry's records.
    pub position: u32,
}

/// Where audit records go. Implementations must make the record durable
/// before returning `Ok`.
pub trait AuditLog: Send + Sync + 'static {
    fn record(&self, entry: KeyAudit) -> impl Future<Output = Result<AuditReceipt>> + Send;

    /// A page of the records about `owner`'s keys (optionally one key),
    /// each verified, from ledger index `page.from` on.
    fn trail(&self, owner: &AccountId, key_id: Option<&str>, page: Page) -> Result<TrailPage>;

    /// How `account` stands on the network the audit is kept on (the
    /// ledger's admissions and revocations); `None` if it was never admitted.
    fn admission(&self, account: &AccountId) -> Option<Admission>;
}

/// Where a page of an audit trail starts and how long it may be.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Page {
    pub from: u64,
    pub limit: usize,
}

impl Page {
    /// Ledger entries per page when the caller names no limit. A page
    /// holds every record of its entries that the trail asks for, so a
    /// page of batched entries can hold more records than entries.
    pub const DEFAULT_LIMIT: usize = 256;
    /// The most entries one page holds, whatever the caller asks: each is
    /// proven and verified before its records are returned.
    pub const MAX_LIMIT: usize = 1024;

    /// A page from `from`, `limit` 0 meaning the default.
    pub fn new(from: u64, limit: u32) -> Page {
        let limit = match limit as usize {
            0 => Self::DEFAULT_LIMIT,
            n => n.min(Self::MAX_LIMIT),
        };
        Page { from, limit }
    }
}

/// One page of a verified trail and where the next one starts, if any.
#[derive(Clone, Debug, Default)]
pub struct TrailPage {
    pub entries: Vec<VerifiedAudit>,
    pub next: Option<u64>,
}

/// Audit on the Yilian ledger, signed by the node's identity, in batches.
#[derive(Clone)]
pub struct LedgerAudit {
    ledger: Ledger,
    node_key: SigningKey,
    in_flight: usize,
    /// The batcher's queue, started by the first record (on its runtime).
    queue: Arc<OnceLock<mpsc::Sender<Queued>>>,
}

type Queued = (KeyAudit, oneshot::Sender<Result<AuditReceipt>>);

impl std::fmt::Debug for LedgerAudit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LedgerAudit")
            .field(
                "node",
                &hex::encode(self.node_key.verifying_key().as_bytes()),
            )
            .finish()
    }
}

/// A verified audit record: the record, where it is on the ledger (the
/// entry's index and its place among the entry's records) and the proof
/// bundle of that entry.
#[derive(Clone, Debug)]
pub struct VerifiedAudit {
    pub index: u64,
    pub position: u32,
    pub entry: KeyAudit,
    pub bundle: InclusionBundle,
}

impl LedgerAudit {
    pub fn new(ledger: Ledger, node_key: SigningKey) -> Self {
        Self::with_in_flight(ledger, node_key, IN_FLIGHT)
    }

    /// With at most `in_flight` audit entries committing at once (at least one).
    pub fn with_in_flight(ledger: Ledger, node_key: SigningKey, in_flight: usize) -> Self {
        LedgerAudit {
            ledger,
            node_key,
            in_flight: in_flight.max(1),
            queue: Arc::default(),
        }
    }

    fn queue(&self) -> &mpsc::Sender<Queued> {
        self.queue.get_or_init(|| {
            let (tx, rx) = mpsc::channel(MAX_AUDIT_RECORDS * self.in_flight * 4);
            let (ledger, key) = (self.ledger.clone(), self.node_key.clone());
            tokio::spawn(batch_records(ledger, key, self.in_flight, rx));
            tx
        })
    }

    pub fn ledger(&self) -> &Ledger {
        &self.ledger
    }

    /// Every audit record about `owner`'s keys (optionally one key), each
    /// checked by an inclusion proof against the current signed tree head.
    fn verified_trail(
        &self,
        owner: &AccountId,
        key_id: Option<&str>,
        page: Page,
    ) -> Result<TrailPage> {
        let head = self.ledger.tree_head();
        // The ledger's index by owner (and key), not a scan of the log.
        let mut lookup = owner.to_vec();
        if let Some(k) = key_id {
            lookup.extend_from_slice(k.as_bytes());
        }
        // One more than the page, to learn where the next page starts.
        let mut indexes = self
            .ledger
            .indexed("key-audit", &lookup, page.from, page.limit + 1)
            .map_err(|e| KmsError::Storage(e.to_string()))?;
        indexes.retain(|i| *i < head.tree_size);
        let next = (indexes.len() > page.limit).then(|| indexes[page.limit]);
        indexes.truncate(page.limit);
        let mut out = Vec::new();
        for index in indexes {
            let stx = self
                .ledger
                .entry(index)
                .map_err(|e| KmsError::Storage(e.to_string()))?;
            let mine: Vec<(u32, KeyAudit)> = key_audits_of(&stx)
                .into_iter()
                .zip(0u32..)
                .filter(|(r, _)| &r.owner == owner && key_id.is_none_or(|k| k == r.key_id))
                .map(|(r, i)| (i, r))
                .collect();
            if mine.is_empty() {
                continue;
            }
            let bundle = InclusionBundle {
                version: BUNDLE_VERSION,
                entry: stx.encode(),
                transaction: None,
                proof: self
                    .ledger
                    .inclusion_proof(index, head.tree_size)
                    .map_err(|e| KmsError::Storage(e.to_string()))?,
                tree_head: head.clone(),
                checkpoint: None,
            };
            let checked = bundle.verify(&head.log_key).map_err(|e| {
                KmsError::Corrupt(format!("audit entry {index} fails verification: {e}"))
            })?;
            if checked != stx {
                return Err(KmsError::Corrupt(format!(
                    "audit entry {index} differs from its proof"
                )));
            }
            for (position, entry) in mine {
                out.push(VerifiedAudit {
                    index,
                    position,
                    entry,
                    bundle: bundle.clone(),
                });
            }
        }
        Ok(TrailPage { entries: out, next })
    }
}

/// The KMS records a ledger transaction carries, in order (none if it is
/// not an audit entry).
pub fn key_audits_of(stx: &SignedTransaction) -> Vec<KeyAudit> {
    stx.tx.payload.key_audit_records().unwrap_or_default()
}

/// The batcher: takes whatever is queued once an in-flight slot is free,
/// so a busy ledger makes the next entry bigger rather than adding one.
async fn batch_records(
    ledger: Ledger,
    key: SigningKey,
    in_flight: usize,
    mut rx: mpsc::Receiver<Queued>,
) {
    let in_flight = Arc::new(Semaphore::new(in_flight));
    let mut carried: Option<Queued> = None;
    loop {
        let first = match carried.take() {
            Some(q) => q,
            None => match rx.recv().await {
                Some(q) => q,
                None => return,
            },
        };
        let permit = in_flight
            .clone()
            .acquire_owned()
            .await
            .expect("the semaphore lives with the batcher");
        let mut text = first.0.text_bytes();
        let mut batch = vec![first];
        while batch.len() < MAX_AUDIT_RECORDS {
            let Ok(q) = rx.try_recv() else { break };
            text += q.0.text_bytes();
            if text > MAX_AUDIT_TEXT_BYTES {
                carried = Some(q);
                break;
            }
            batch.push(q);
        }
        let (ledger, key) = (ledger.clone(), key.clone());
        tokio::spawn(async move {
            let _permit = permit;
            let (records, waiters): (Vec<KeyAudit>, Vec<_>) = batch.into_iter().unzip();
            // Submitted as our own: the ledger's writer neither re-encodes,
            // re-hashes nor re-verifies what this node just signed.
            let tx = OwnTransaction::sign(Transaction::new(Payload::KeyAudits { records }), &key);
            match ledger.submit_own(tx).await {
                Ok(r) => {
                    for (waiter, position) in waiters.into_iter().zip(0u32..) {
                        let _ = waiter.send(Ok(AuditReceipt {
                            index: r.index,
                            position,
                        }));
                    }
                }
                Err(e) => {
                    for waiter in waiters {
                        let _ = waiter.send(Err(KmsError::AuditFailed(e.to_string())));
                    }
                }
            }
        });
    }
}

impl AuditLog for LedgerAudit {
    async fn record(&self, a: KeyAudit) -> Result<AuditReceipt> {
        // A record the ledger would refuse is refused alone, before it can
        // fail the batch it would share with other operations.
        a.check_sizes("key-audits")
            .map_err(|e| KmsError::AuditFailed(e.to_string()))?;
        let (tx, rx) = oneshot::channel();
        self.queue()
            .send((a, tx))
            .await
            .map_err(|_| KmsError::AuditFailed("the audit batcher stopped".into()))?;
        rx.await
            .map_err(|_| KmsError::AuditFailed("the audit batcher stopped".into()))?
    }

    fn trail(&self, owner: &AccountId, key_id: Option<&str>, page: Page) -> Result<TrailPage> {
        self.verified_trail(owner, key_id, page)
    }

    fn admission(&self, account: &AccountId) -> Option<Admission> {
        self.ledger.member(account).map(|m| Admission {
            role: m.role,
            revoked: m.revoked,
            not_after_ms: m.not_after_ms,
        })
    }
}
