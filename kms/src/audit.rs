//! The audit trail. Every KMS operation, allowed or refused, is recorded
//! through [`AuditLog`]; an operation that would succeed but cannot be
//! recorded fails instead (fail closed). [`LedgerAudit`] writes each record
//! as a `KeyAudit` transaction signed by the node identity on the Yilian
//! ledger (whose writer batches concurrent submissions into one durable
//! commit), and lets an owner list and verify every use of their keys.

use std::future::Future;

use ed25519_dalek::SigningKey;
use serde::{Deserialize, Serialize};
use yilian_ledger::bundle::{BUNDLE_VERSION, InclusionBundle};
use yilian_ledger::{Ledger, OwnTransaction, Payload, SignedTransaction, Transaction};

use crate::error::{KmsError, Result};
use crate::policy::{AccountId, Admission};

/// One audited operation. Contains identifiers and a request hash, never key
/// material or plaintext.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyAudit {
    pub owner: AccountId,
    pub actor: AccountId,
    pub operation: String,
    pub key_id: String,
    pub key_version: Option<u32>,
    pub grant_id: Option<String>,
    /// "ok" or the refusal's reason label.
    pub outcome: String,
    pub request_hash: [u8; 32],
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AuditReceipt {
    /// Position of the record in the audit log (the ledger index).
    pub index: u64,
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
    /// Records per page when the caller names no limit.
    pub const DEFAULT_LIMIT: usize = 256;
    /// The most records one page holds, whatever the caller asks: each is
    /// proven and verified before it is returned.
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

/// Audit on the Yilian ledger, signed by the node's identity.
#[derive(Clone)]
pub struct LedgerAudit {
    ledger: Ledger,
    node_key: SigningKey,
}

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

/// A verified audit entry: the record, its ledger index and the proof bundle.
#[derive(Clone, Debug)]
pub struct VerifiedAudit {
    pub index: u64,
    pub entry: KeyAudit,
    pub bundle: InclusionBundle,
}

impl LedgerAudit {
    pub fn new(ledger: Ledger, node_key: SigningKey) -> Self {
        LedgerAudit { ledger, node_key }
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
            let Some(entry) = key_audit_of(&stx) else {
                continue;
            };
            if &entry.owner != owner || key_id.is_some_and(|k| k != entry.key_id) {
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
            out.push(VerifiedAudit {
                index,
                entry,
                bundle,
            });
        }
        Ok(TrailPage { entries: out, next })
    }
}

/// The KMS record carried by a ledger transaction, if it is one.
pub fn key_audit_of(stx: &SignedTransaction) -> Option<KeyAudit> {
    match &stx.tx.payload {
        Payload::KeyAudit {
            owner,
            actor,
            operation,
            key_id,
            key_version,
            grant_id,
            outcome,
            request_hash,
        } => Some(KeyAudit {
            owner: *owner,
            actor: *actor,
            operation: operation.clone(),
            key_id: key_id.clone(),
            key_version: *key_version,
            grant_id: grant_id.clone(),
            outcome: outcome.clone(),
            request_hash: *request_hash,
        }),
        _ => None,
    }
}

impl AuditLog for LedgerAudit {
    async fn record(&self, a: KeyAudit) -> Result<AuditReceipt> {
        // Signed here (on the request's own runtime thread, in parallel with
        // other requests) and submitted as our own, so the ledger's serial
        // writer neither re-encodes, re-hashes nor re-verifies it.
        let tx = OwnTransaction::sign(
            Transaction::new(Payload::KeyAudit {
                owner: a.owner,
                actor: a.actor,
                operation: a.operation,
                key_id: a.key_id,
                key_version: a.key_version,
                grant_id: a.grant_id,
                outcome: a.outcome,
                request_hash: a.request_hash,
            }),
            &self.node_key,
        );
        let receipt = self
            .ledger
            .submit_own(tx)
            .await
            .map_err(|e| KmsError::AuditFailed(e.to_string()))?;
        Ok(AuditReceipt {
            index: receipt.index,
        })
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
