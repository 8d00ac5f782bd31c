//! Typed, versioned, signed transactions: the entries of the log.

use ed25519_dalek::{Signature, Signer, SigningKey, Verifier, VerifyingKey};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use yilian_identity::Role;

use crate::LedgerError;

/// An account is an admitted identity's ed25519 public key.
pub type AccountId = [u8; 32];

/// A transaction's id: SHA-256 over its signer and body, so resubmitting the
/// same transaction is recognised (idempotency) and never applied twice.
pub type TxId = [u8; 32];

/// The transaction format this build writes; older versions are still read.
pub const TX_VERSION: u16 = 1;

const SIGNING_CONTEXT: &[u8] = b"yilian/ledger/tx/v1\0";

/// Byte limits on a payload's variable-length fields, which every member
/// enforces before it appends an entry (`docs/limits.md`). Every member
/// stores, replicates and serves every entry forever, so one writer must not
/// be able to make that cost megabytes; a large document belongs off the
/// ledger, anchored by its hash. With every field bounded, the largest
/// entry (a note) stays under 5 KiB.
pub mod limits {
    /// Names and identifiers: network, org, name, topic, key, grant,
    /// record, task, statement, operation, peer address.
    pub const MAX_LABEL_BYTES: usize = 256;
    /// Short free text: a revocation's reason, an audit or query outcome.
    pub const MAX_TEXT_BYTES: usize = 1024;
    /// A note's body.
    pub const MAX_NOTE_BYTES: usize = 4096;
    /// A certificate serial: RFC 5280 section 4.1.2.2 allows at most 20 octets.
    pub const MAX_SERIAL_BYTES: usize = 20;
    /// KMS records one `KeyAudits` entry carries.
    pub const MAX_AUDIT_RECORDS: usize = 64;
    /// The text (operation, key, grant and outcome) of one `KeyAudits`
    /// entry's records together, so that a batch stays near a note's size.
    pub const MAX_AUDIT_TEXT_BYTES: usize = 16 * 1024;
}

/// One KMS operation as the audit records it: who did what to which key
/// and grant, and the result. Identifiers and a request hash only, never
/// key material or plaintext.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyAuditRecord {
    #[serde(with = "crate::hexbytes")]
    pub owner: AccountId,
    #[serde(with = "crate::hexbytes")]
    pub actor: AccountId,
    pub operation: String,
    pub key_id: String,
    pub key_version: Option<u32>,
    pub grant_id: Option<String>,
    /// "ok" or the refusal's reason label.
    pub outcome: String,
    #[serde(with = "crate::hexbytes")]
    pub request_hash: [u8; 32],
}

impl KeyAuditRecord {
    /// Its variable-length text, as [`limits::MAX_AUDIT_TEXT_BYTES`] counts it.
    pub fn text_bytes(&self) -> usize {
        self.operation.len()
            + self.key_id.len()
            + self.grant_id.as_ref().map_or(0, String::len)
            + self.outcome.len()
    }

    /// Refuses a field longer than its limit, naming it as `field` under `kind`.
    pub fn check_sizes(&self, kind: &str) -> Result<(), LedgerError> {
        use limits::*;
        let g = self.grant_id.as_deref().unwrap_or("");
        let fields = [
            ("operation", self.operation.len(), MAX_LABEL_BYTES),
            ("key_id", self.key_id.len(), MAX_LABEL_BYTES),
            ("grant_id", g.len(), MAX_LABEL_BYTES),
            ("outcome", self.outcome.len(), MAX_TEXT_BYTES),
        ];
        match fields.iter().find(|(_, len, max)| len > max) {
            Some(&(field, len, max)) => Err(LedgerError::FieldTooLong {
                field: format!("{kind}.{field}").into(),
                len,
                max,
            }),
            None => Ok(()),
        }
    }
}

/// What happened. New variants are only ever appended, so old entries decode.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Payload {
    /// First entry of every log: names the network and its admission authority.
    Genesis {
        network: String,
        #[serde(with = "crate::hexbytes")]
        authority: AccountId,
    },
    /// The authority admitted an identity (its certificate's key, org, role and serial).
    Admit {
        org: String,
        role: Role,
        name: String,
        #[serde(with = "crate::hexbytes")]
        public_key: AccountId,
        #[serde(with = "hex::serde")]
        serial: Vec<u8>,
        not_after_ms: u64,
    },
    /// The authority revoked an identity; its certificate is refused from now on.
    Revoke {
        #[serde(with = "crate::hexbytes")]
        public_key: AccountId,
        reason: String,
    },
    /// Moves reward balance from the signer to `to`; never makes a balance negative.
    Transfer {
        #[serde(with = "crate::hexbytes")]
        to: AccountId,
        amount: u64,
    },
    /// A free-form statement by an identity (a record of an off-ledger event).
    Note { topic: String, body: String },
    /// A KMS operation: who did what to which key and grant, and the result.
    KeyAudit {
        #[serde(with = "crate::hexbytes")]
        owner: AccountId,
        #[serde(with = "crate::hexbytes")]
        actor: AccountId,
        operation: String,
        key_id: String,
        key_version: Option<u32>,
        grant_id: Option<String>,
        outcome: String,
        #[serde(with = "crate::hexbytes")]
        request_hash: [u8; 32],
    },
    /// A data holder anchors an encrypted record for zero-knowledge queries.
    RecordAnchor {
        record_id: String,
        #[serde(with = "crate::hexbytes")]
        ciphertext_hash: [u8; 32],
        #[serde(with = "crate::hexbytes")]
        key_commitment: [u8; 32],
    },
    /// The verifying key in force for a ZK statement.
    VerifyingKeyAnchor {
        statement: String,
        #[serde(with = "crate::hexbytes")]
        vk_hash: [u8; 32],
    },
    /// An engineer's federated task, with the reward budget it may spend.
    TaskSubmitted {
        task_id: String,
        #[serde(with = "crate::hexbytes")]
        spec_hash: [u8; 32],
        reward_budget: u64,
    },
    /// An agent's measured contribution to a round.
    Contribution {
        task_id: String,
        round: u32,
        #[serde(with = "crate::hexbytes")]
        agent: AccountId,
        score: f64,
    },
    /// Credits `amount` to `account` for a round of a task.
    Reward {
        task_id: String,
        round: u32,
        #[serde(with = "crate::hexbytes")]
        account: AccountId,
        amount: u64,
    },
    /// A consortium member asks to add or remove a member node. It takes
    /// effect once a majority of the current members approved it (the
    /// proposer's own approval included).
    MemberProposal { change: MembershipChange },
    /// A consortium member approves a proposal (the id of its transaction).
    MemberApproval {
        #[serde(with = "crate::hexbytes")]
        proposal: TxId,
    },
    /// A differentially private task's privacy spent so far: epsilon at
    /// `delta` after `round` (0-based) closed, for every agent of the task.
    PrivacySpent {
        task_id: String,
        round: u32,
        epsilon: f64,
        delta: f64,
    },
    /// A data holder let a verifier ask about one of its records, on the
    /// customer's behalf: the KMS grant that counts the uses (its creation,
    /// uses and revocation are `KeyAudit` entries), and the hash of the
    /// terms (allowed predicates, disclosure budget) the node enforces.
    QueryGrant {
        grant_id: String,
        record_id: String,
        #[serde(with = "crate::hexbytes")]
        holder: AccountId,
        #[serde(with = "crate::hexbytes")]
        verifier: AccountId,
        #[serde(with = "crate::hexbytes")]
        terms_hash: [u8; 32],
    },
    /// A verifier's ZK query on a record: `answered`, or `refused: <reason>`.
    ZkQuery {
        record_id: String,
        grant_id: Option<String>,
        #[serde(with = "crate::hexbytes")]
        verifier: AccountId,
        #[serde(with = "crate::hexbytes")]
        predicates_hash: [u8; 32],
        outcome: String,
    },
    /// A member's contribution to a statement's setup ceremony: the
    /// transcript hash after it (phase 1, powers of tau; phase 2, delta).
    CeremonyContribution {
        statement: String,
        phase: u8,
        index: u32,
        #[serde(with = "crate::hexbytes")]
        hash: [u8; 32],
    },
    /// KMS operations audited together: every operation a node's KMS
    /// finished while its previous audit entry was being committed, under
    /// one signature (what the KMS writes; `KeyAudit` is the older form of
    /// one record alone, still read).
    KeyAudits { records: Vec<KeyAuditRecord> },
}

/// A change to the set of member nodes that replicate and cosign the ledger.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum MembershipChange {
    /// Adds an admitted member-role node, reachable for peers at `addr`.
    Add {
        #[serde(with = "crate::hexbytes")]
        node: AccountId,
        addr: String,
    },
    Remove {
        #[serde(with = "crate::hexbytes")]
        node: AccountId,
    },
}

impl Payload {
    /// The entry recording `p`'s admission by the authority, valid until
    /// `not_after_ms`.
    pub fn admission(p: &yilian_identity::Principal, not_after_ms: u64) -> Payload {
        Payload::Admit {
            org: p.org.clone(),
            role: p.role,
            name: p.name.clone(),
            public_key: p.public_key,
            serial: p.serial.clone(),
            not_after_ms,
        }
    }

    /// A short name for logs, metrics and error messages.
    pub fn kind(&self) -> &'static str {
        match self {
            Payload::Genesis { .. } => "genesis",
            Payload::Admit { .. } => "admit",
            Payload::Revoke { .. } => "revoke",
            Payload::Transfer { .. } => "transfer",
            Payload::Note { .. } => "note",
            Payload::KeyAudit { .. } | Payload::KeyAudits { .. } => "key-audit",
            Payload::RecordAnchor { .. } => "record-anchor",
            Payload::VerifyingKeyAnchor { .. } => "verifying-key-anchor",
            Payload::TaskSubmitted { .. } => "task-submitted",
            Payload::Contribution { .. } => "contribution",
            Payload::Reward { .. } => "reward",
            Payload::MemberProposal { .. } => "member-proposal",
            Payload::MemberApproval { .. } => "member-approval",
            Payload::PrivacySpent { .. } => "privacy-spent",
            Payload::QueryGrant { .. } => "query-grant",
            Payload::ZkQuery { .. } => "zk-query",
            Payload::CeremonyContribution { .. } => "ceremony-contribution",
        }
    }

    /// The index rows of an entry: `(kind, key)` pairs a reader looks up
    /// instead of scanning the log. Every entry has its kind with an empty
    /// key; some kinds add keys of their own.
    pub fn index_keys(&self) -> Vec<(&'static str, Vec<u8>)> {
        let mut rows = vec![(self.kind(), Vec::new())];
        rows.extend(self.own_index_keys());
        rows
    }

    fn own_index_keys(&self) -> Vec<(&'static str, Vec<u8>)> {
        match self {
            Payload::KeyAudit { owner, key_id, .. } => audit_index_keys([(owner, key_id)]),
            Payload::KeyAudits { records } => {
                audit_index_keys(records.iter().map(|r| (&r.owner, &r.key_id)))
            }
            Payload::RecordAnchor { record_id, .. } => {
                vec![("record-anchor", record_id.as_bytes().to_vec())]
            }
            Payload::VerifyingKeyAnchor { statement, .. } => {
                vec![("verifying-key-anchor", statement.as_bytes().to_vec())]
            }
            Payload::Reward { account, .. } => vec![("reward", account.to_vec())],
            Payload::Transfer { to, .. } => vec![("transfer", to.to_vec())],
            Payload::Contribution { task_id, .. }
            | Payload::TaskSubmitted { task_id, .. }
            | Payload::PrivacySpent { task_id, .. } => {
                vec![(self.kind(), task_id.as_bytes().to_vec())]
            }
            Payload::QueryGrant { record_id, .. } | Payload::ZkQuery { record_id, .. } => {
                vec![(self.kind(), record_id.as_bytes().to_vec())]
            }
            Payload::CeremonyContribution { statement, .. } => {
                vec![(self.kind(), statement.as_bytes().to_vec())]
            }
            _ => Vec::new(),
        }
    }

    /// The KMS records of a `KeyAudit` or `KeyAudits` entry, in order.
    pub fn key_audit_records(&self) -> Option<Vec<KeyAuditRecord>> {
        match self {
            Payload::KeyAudit {
                owner,
                actor,
                operation,
                key_id,
                key_version,
                grant_id,
                outcome,
                request_hash,
            } => Some(vec![KeyAuditRecord {
                owner: *owner,
                actor: *actor,
                operation: operation.clone(),
                key_id: key_id.clone(),
                key_version: *key_version,
                grant_id: grant_id.clone(),
                outcome: outcome.clone(),
                request_hash: *request_hash,
            }]),
            Payload::KeyAudits { records } => Some(records.clone()),
            _ => None,
        }
    }

    /// Refuses a payload with a field longer than its limit in [`limits`],
    /// naming the field as `kind.field`.
    pub fn check_sizes(&self) -> Result<(), LedgerError> {
        use limits::*;
        match self {
            Payload::KeyAudits { records } => return check_audit_batch(records),
            Payload::KeyAudit { .. } => {
                return self
                    .key_audit_records()
                    .iter()
                    .flatten()
                    .try_for_each(|r| r.check_sizes("key-audit"));
            }
            _ => {}
        }
        let label = |f, s: &str| (f, s.len(), MAX_LABEL_BYTES);
        let text = |f, s: &str| (f, s.len(), MAX_TEXT_BYTES);
        let opt = |f, s: &Option<String>| label(f, s.as_deref().unwrap_or(""));
        let fields: &[(&'static str, usize, usize)] = match self {
            Payload::Genesis { network, .. } => &[label("genesis.network", network)],
            Payload::Admit {
                org, name, serial, ..
            } => &[
                label("admit.org", org),
                label("admit.name", name),
                ("admit.serial", serial.len(), MAX_SERIAL_BYTES),
            ],
            Payload::Revoke { reason, .. } => &[text("revoke.reason", reason)],
            Payload::Transfer { .. }
            | Payload::MemberApproval { .. }
            | Payload::MemberProposal {
                change: MembershipChange::Remove { .. },
            } => &[],
            Payload::Note { topic, body } => &[
                label("note.topic", topic),
                ("note.body", body.len(), MAX_NOTE_BYTES),
            ],
            Payload::RecordAnchor { record_id, .. } => {
                &[label("record-anchor.record_id", record_id)]
            }
            Payload::VerifyingKeyAnchor { statement, .. } => {
                &[label("verifying-key-anchor.statement", statement)]
            }
            Payload::TaskSubmitted { task_id, .. } => &[label("task-submitted.task_id", task_id)],
            Payload::Contribution { task_id, .. } => &[label("contribution.task_id", task_id)],
            Payload::Reward { task_id, .. } => &[label("reward.task_id", task_id)],
            Payload::MemberProposal {
                change: MembershipChange::Add { addr, .. },
            } => &[label("member-proposal.addr", addr)],
            Payload::PrivacySpent { task_id, .. } => &[label("privacy-spent.task_id", task_id)],
            Payload::QueryGrant {
                grant_id,
                record_id,
                ..
            } => &[
                label("query-grant.grant_id", grant_id),
                label("query-grant.record_id", record_id),
            ],
            Payload::ZkQuery {
                record_id,
                grant_id,
                outcome,
                ..
            } => &[
                label("zk-query.record_id", record_id),
                opt("zk-query.grant_id", grant_id),
                text("zk-query.outcome", outcome),
            ],
            Payload::CeremonyContribution { statement, .. } => {
                &[label("ceremony-contribution.statement", statement)]
            }
            Payload::KeyAudit { .. } | Payload::KeyAudits { .. } => &[],
        };
        match fields.iter().find(|(_, len, max)| len > max) {
            Some(&(field, len, max)) => Err(LedgerError::FieldTooLong {
                field: field.into(),
                len,
                max,
            }),
            None => Ok(()),
        }
    }

    /// Which admitted roles may sign this payload (the authority-only ones return none).
    pub fn allowed_roles(&self) -> &'static [Role] {
        use Role::*;
        match self {
            Payload::Genesis { .. } | Payload::Admit { .. } | Payload::Revoke { .. } => &[],
            Payload::Transfer { .. } | Payload::Note { .. } => {
                &[Member, Trustee, DataHolder, Verifier, Engineer, Device]
            }
            Payload::KeyAudit { .. } | Payload::KeyAudits { .. } => &[Member, Trustee],
            Payload::RecordAnchor { .. } | Payload::VerifyingKeyAnchor { .. } => {
                &[Member, DataHolder]
            }
            Payload::TaskSubmitted { .. } => &[Member, Engineer],
            Payload::Contribution { .. }
            | Payload::Reward { .. }
            | Payload::PrivacySpent { .. } => &[Member],
            Payload::MemberProposal { .. } | Payload::MemberApproval { .. } => &[Member],
            // The node that enforces the grant records it and each query.
            Payload::QueryGrant { .. } | Payload::ZkQuery { .. } => &[Member],
            // Only consortium members contribute to setups.
            Payload::CeremonyContribution { .. } => &[Member],
        }
    }
}

/// The index rows of audit records: by owner, and by owner and key, each
/// once however many records share it.
fn audit_index_keys<'a>(
    records: impl IntoIterator<Item = (&'a AccountId, &'a String)>,
) -> Vec<(&'static str, Vec<u8>)> {
    let mut rows = Vec::new();
    for (owner, key_id) in records {
        let mut k = owner.to_vec();
        k.extend_from_slice(key_id.as_bytes());
        for row in [("key-audit", owner.to_vec()), ("key-audit", k)] {
            if !rows.contains(&row) {
                rows.push(row);
            }
        }
    }
    rows
}

/// A `KeyAudits` entry holds 1 to [`limits::MAX_AUDIT_RECORDS`] records,
/// each within the field limits, and at most
/// [`limits::MAX_AUDIT_TEXT_BYTES`] of text in all.
fn check_audit_batch(records: &[KeyAuditRecord]) -> Result<(), LedgerError> {
    use limits::*;
    if records.is_empty() {
        return Err(LedgerError::Malformed(
            "a key-audits entry holds no record; send at least one".into(),
        ));
    }
    if records.len() > MAX_AUDIT_RECORDS {
        return Err(LedgerError::TooManyRecords {
            len: records.len(),
            max: MAX_AUDIT_RECORDS,
        });
    }
    for r in records {
        r.check_sizes("key-audits")?;
    }
    let text: usize = records.iter().map(KeyAuditRecord::text_bytes).sum();
    if text > MAX_AUDIT_TEXT_BYTES {
        return Err(LedgerError::FieldTooLong {
            field: "key-audits.records".into(),
            len: text,
            max: MAX_AUDIT_TEXT_BYTES,
        });
    }
    Ok(())
}

/// The signed body.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Transaction {
    pub version: u16,
    /// Distinguishes otherwise identical transactions (two equal rewards).
    pub nonce: u64,
    pub timestamp_ms: u64,
    pub payload: Payload,
}

impl Transaction {
    /// A current-version transaction stamped now, with a random nonce.
    pub fn new(payload: Payload) -> Self {
        Transaction {
            version: TX_VERSION,
            nonce: rand::random(),
            timestamp_ms: now_ms(),
            payload,
        }
    }

    pub fn sign(self, key: &SigningKey) -> SignedTransaction {
        SignedTransaction::sign(self, key)
    }
}

/// A transaction with its signer's key and signature; the bytes of a log entry.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SignedTransaction {
    pub tx: Transaction,
    #[serde(with = "crate::hexbytes")]
    pub signer: AccountId,
    #[serde(with = "crate::hexbytes")]
    pub signature: [u8; 64],
}

impl SignedTransaction {
    pub fn sign(tx: Transaction, key: &SigningKey) -> Self {
        Self::sign_with_id(tx, key).0
    }

    /// Signs and returns the id too, serialising the signed bytes once for both.
    pub fn sign_with_id(tx: Transaction, key: &SigningKey) -> (Self, TxId) {
        let signer = key.verifying_key().to_bytes();
        let bytes = signing_bytes(&tx, &signer);
        let signature = key.sign(&bytes).to_bytes();
        let id = id_of_signing_bytes(&bytes);
        (
            SignedTransaction {
                tx,
                signer,
                signature,
            },
            id,
        )
    }

    /// Checks the signature; role and state checks are the ledger state's.
    pub fn verify_signature(&self) -> Result<(), LedgerError> {
        let key = VerifyingKey::from_bytes(&self.signer).map_err(|_| LedgerError::BadSignature)?;
        key.verify(
            &signing_bytes(&self.tx, &self.signer),
            &Signature::from_bytes(&self.signature),
        )
        .map_err(|_| LedgerError::BadSignature)
    }

    /// Checks many signatures at once: ed25519 batch verification (one
    /// multiscalar multiplication per chunk, on all cores), falling back to
    /// one-by-one only for a chunk that holds a bad signature, so each
    /// transaction still gets its own verdict.
    pub fn verify_signatures(txs: &[&SignedTransaction]) -> Vec<Result<(), LedgerError>> {
        use rayon::prelude::*;
        use std::collections::HashMap;
        const CHUNK: usize = 64;
        // A batch usually comes from few signers (the node's own audit
        // records, one client's stream): decompress each key once.
        let mut keys: HashMap<AccountId, Option<VerifyingKey>> = HashMap::new();
        for t in txs {
            keys.entry(t.signer)
                .or_insert_with(|| VerifyingKey::from_bytes(&t.signer).ok());
        }
        let verify_chunk = |chunk: &[&SignedTransaction]| -> Vec<Result<(), LedgerError>> {
            let parsed: Option<Vec<(Vec<u8>, Signature, VerifyingKey)>> = chunk
                .iter()
                .map(|t| {
                    let key = keys.get(&t.signer).copied().flatten()?;
                    Some((
                        signing_bytes(&t.tx, &t.signer),
                        Signature::from_bytes(&t.signature),
                        key,
                    ))
                })
                .collect();
            let batch_ok = parsed.as_ref().is_some_and(|p| {
                let msgs: Vec<&[u8]> = p.iter().map(|(m, _, _)| m.as_slice()).collect();
                let sigs: Vec<Signature> = p.iter().map(|(_, s, _)| *s).collect();
                let keys: Vec<VerifyingKey> = p.iter().map(|(_, _, k)| *k).collect();
                ed25519_dalek::verify_batch(&msgs, &sigs, &keys).is_ok()
            });
            if batch_ok {
                vec![Ok(()); chunk.len()]
            } else {
                chunk.iter().map(|t| t.verify_signature()).collect()
            }
        };
        // One chunk gains nothing from the pool, and handing it over (and
        // the pool's idle spinning afterwards) costs the serial writer more
        // than the verification itself on a small machine.
        if txs.len() <= CHUNK {
            return verify_chunk(txs);
        }
        txs.par_chunks(CHUNK)
            .flat_map_iter(|chunk| verify_chunk(chunk).into_iter())
            .collect()
    }

    pub fn id(&self) -> TxId {
        id_of_signing_bytes(&signing_bytes(&self.tx, &self.signer))
    }

    /// The canonical entry bytes (postcard), which the Merkle leaf hashes.
    pub fn encode(&self) -> Vec<u8> {
        postcard::to_stdvec(self).expect("transactions always serialise")
    }

    /// Decodes entry bytes, refusing trailing bytes, unknown versions and
    /// any encoding but the canonical one.
    pub fn decode(bytes: &[u8]) -> Result<Self, LedgerError> {
        let (tx, rest): (SignedTransaction, _) =
            postcard::take_from_bytes(bytes).map_err(|e| LedgerError::Malformed(e.to_string()))?;
        if !rest.is_empty() {
            return Err(LedgerError::Malformed(format!(
                "{} trailing bytes after the transaction",
                rest.len()
            )));
        }
        if tx.tx.version == 0 || tx.tx.version > TX_VERSION {
            return Err(LedgerError::UnsupportedVersion(tx.tx.version));
        }
        // postcard reads overlong varints (51 as `b3 00`): refuse them, so
        // that an entry has one byte string and one Merkle leaf (found by
        // fuzzing, `fuzz/corpus/ledger_tx/bad-overlong-varint`).
        if tx.encode() != bytes {
            return Err(LedgerError::Malformed(
                "the transaction is not in its canonical encoding (an overlong integer); encode it with postcard".into(),
            ));
        }
        Ok(tx)
    }
}

fn id_of_signing_bytes(bytes: &[u8]) -> TxId {
    let mut h = Sha256::new();
    h.update(b"yilian/ledger/txid/v1\0");
    h.update(bytes);
    h.finalize().into()
}

fn signing_bytes(tx: &Transaction, signer: &AccountId) -> Vec<u8> {
    let mut out = SIGNING_CONTEXT.to_vec();
    out.extend_from_slice(signer);
    postcard::to_io(tx, &mut out).expect("writing to a Vec cannot fail");
    out
}

pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn key(seed: u8) -> SigningKey {
        SigningKey::from_bytes(&[seed; 32])
    }

    #[test]
    fn signed_transactions_round_trip_and_verify() {
        let t = Transaction::new(Payload::Note {
            topic: "t".into(),
            body: "b".into(),
        })
        .sign(&key(1));
        let back = SignedTransaction::decode(&t.encode()).unwrap();
        assert_eq!(back, t);
        back.verify_signature().unwrap();
        assert_eq!(back.id(), t.id());
    }

    #[test]
    fn any_change_to_a_signed_transaction_breaks_its_signature() {
        let t = Transaction::new(Payload::Transfer {
            to: [9; 32],
            amount: 5,
        })
        .sign(&key(1));
        let mut amount = t.clone();
        amount.tx.payload = Payload::Transfer {
            to: [9; 32],
            amount: 6,
        };
        assert!(matches!(
            amount.verify_signature(),
            Err(LedgerError::BadSignature)
        ));
        let mut signer = t.clone();
        signer.signer = key(2).verifying_key().to_bytes();
        assert!(matches!(
            signer.verify_signature(),
            Err(LedgerError::BadSignature)
        ));
        let mut nonce = t;
        nonce.tx.nonce ^= 1;
        assert!(matches!(
            nonce.verify_signature(),
            Err(LedgerError::BadSignature)
        ));
    }

    #[test]
    fn batch_verification_singles_out_the_bad_signature() {
        let mut txs: Vec<SignedTransaction> = (0..150u64)
            .map(|i| {
                Transaction::new(Payload::Note {
                    topic: "t".into(),
                    body: i.to_string(),
                })
                .sign(&key((i % 5) as u8))
            })
            .collect();
        txs[77].signature[3] ^= 1;
        txs[140].signer = [0xff; 32];
        let refs: Vec<&SignedTransaction> = txs.iter().collect();
        let verdicts = SignedTransaction::verify_signatures(&refs);
        for (i, v) in verdicts.iter().enumerate() {
            assert_eq!(v.is_err(), i == 77 || i == 140, "transaction {i}");
        }
    }

    #[test]
    fn unknown_versions_and_trailing_bytes_are_refused() {
        let mut t = Transaction::new(Payload::Note {
            topic: "t".into(),
            body: "b".into(),
        });
        t.version = 7;
        let s = t.sign(&key(1));
        assert!(matches!(
            SignedTransaction::decode(&s.encode()),
            Err(LedgerError::UnsupportedVersion(7))
        ));
        let mut ok = Transaction::new(Payload::Note {
            topic: "t".into(),
            body: "b".into(),
        })
        .sign(&key(1))
        .encode();
        ok.push(0);
        assert!(matches!(
            SignedTransaction::decode(&ok),
            Err(LedgerError::Malformed(_))
        ));
    }

    #[test]
    fn an_overlong_integer_is_refused() {
        let mut t = Transaction::new(Payload::Note {
            topic: "t".into(),
            body: "b".into(),
        });
        t.nonce = 51;
        let bytes = t.sign(&key(1)).encode();
        // version 1, then the nonce: 51 is one byte, `b3 00` its overlong twin.
        assert_eq!(&bytes[..2], &[1, 51]);
        let overlong = [&[1u8, 0xb3, 0x00][..], &bytes[2..]].concat();
        assert!(matches!(
            SignedTransaction::decode(&overlong),
            Err(LedgerError::Malformed(m)) if m.contains("canonical")
        ));
        assert!(SignedTransaction::decode(&bytes).is_ok());
    }

    proptest! {
        #[test]
        fn decoding_arbitrary_bytes_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
            let _ = SignedTransaction::decode(&bytes);
        }

        #[test]
        fn truncated_entries_are_refused(cut in 0usize..1000) {
            let enc = Transaction::new(Payload::Reward {
                task_id: "task".into(), round: 3, account: [4; 32], amount: 10,
            }).sign(&key(3)).encode();
            let cut = cut % enc.len();
            prop_assert!(SignedTransaction::decode(&enc[..cut]).is_err());
        }
    }
}
