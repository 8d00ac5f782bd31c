//! The ledger's state machine, sans-IO: which transactions are allowed given
//! everything before them, and what they change (admitted identities,
//! revocations, balances, seen transaction ids).

use std::collections::{BTreeMap, BTreeSet, HashMap};

use serde::{Deserialize, Serialize};
use yilian_identity::Role;
use yilian_identity::tls::RevocationList;

use crate::LedgerError;
use crate::tx::{AccountId, MembershipChange, Payload, SignedTransaction, TxId};

/// An identity as the ledger knows it from its admission.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Member {
    pub org: String,
    pub role: Role,
    pub name: String,
    #[serde(with = "hex::serde")]
    pub serial: Vec<u8>,
    pub not_after_ms: u64,
    pub revoked: bool,
}

/// A node that replicates the ledger and cosigns its heads.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConsortiumMember {
    pub org: String,
    pub name: String,
    /// Where the other members reach it (gRPC, mutual TLS).
    pub addr: String,
    /// Its Raft node id ([`raft_id`]).
    pub raft_id: u64,
}

/// A member node's Raft id: the first 8 bytes of its key, so a node knows
/// its id before it has any of the ledger.
pub fn raft_id(node: &AccountId) -> u64 {
    u64::from_be_bytes(node[..8].try_into().expect("8 bytes"))
}

/// A membership proposal still gathering approvals (or decided).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MembershipProposal {
    pub change: MembershipChange,
    pub approvals: BTreeSet<AccountId>,
    pub decided: bool,
}

/// What accepting a transaction amounts to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decision {
    /// New: append it at the next index.
    Append,
    /// Already in the log at this index: acknowledge it again, append nothing.
    Duplicate(u64),
}

/// Everything the log's history implies.
#[derive(Debug, Default)]
pub struct LedgerState {
    network: Option<String>,
    authority: Option<AccountId>,
    members: HashMap<AccountId, Member>,
    balances: HashMap<AccountId, u64>,
    seen: HashMap<TxId, u64>,
    size: u64,
    consortium: BTreeMap<AccountId, ConsortiumMember>,
    proposals: HashMap<TxId, MembershipProposal>,
    /// Shared with TLS servers so a revocation refuses the next handshake.
    revocations: RevocationList,
}

impl LedgerState {
    pub fn new(revocations: RevocationList) -> Self {
        LedgerState {
            revocations,
            ..Default::default()
        }
    }

    /// Decides whether `tx` (whose signature was already checked) may be
    /// appended at the current size, at time `now_ms`. Changes nothing.
    pub fn check(
        &self,
        tx: &SignedTransaction,
        id: &TxId,
        now_ms: u64,
    ) -> Result<Decision, LedgerError> {
        if let Some(&index) = self.seen.get(id) {
            return Ok(Decision::Duplicate(index));
        }
        tx.tx.payload.check_sizes()?;
        match &tx.tx.payload {
            Payload::Genesis { authority, .. } => {
                if self.size != 0 {
                    return Err(LedgerError::GenesisMisplaced);
                }
                if &tx.signer != authority {
                    return Err(LedgerError::NotAuthority);
                }
                return Ok(Decision::Append);
            }
            _ if self.authority.is_none() => return Err(LedgerError::NoGenesis),
            Payload::Admit { public_key, .. } => {
                self.require_authority(tx)?;
                if self.members.contains_key(public_key) {
                    return Err(LedgerError::AlreadyAdmitted);
                }
                return Ok(Decision::Append);
            }
            Payload::Revoke { public_key, .. } => {
                self.require_authority(tx)?;
                return match self.members.get(public_key) {
                    None => Err(LedgerError::UnknownAccount(hex::encode(public_key))),
                    Some(m) if m.revoked => Err(LedgerError::AlreadyRevoked),
                    Some(_) => Ok(Decision::Append),
                };
            }
            _ => {}
        }
        let member = self.active_member(&tx.signer, now_ms)?;
        let allowed = tx.tx.payload.allowed_roles();
        if !allowed.contains(&member.role) {
            return Err(LedgerError::RoleNotAllowed {
                role: member.role,
                action: tx.tx.payload.kind().into(),
            });
        }
        match &tx.tx.payload {
            Payload::Transfer { to, amount } => {
                if !self.members.contains_key(to) {
                    return Err(LedgerError::UnknownAccount(hex::encode(to)));
                }
                let balance = self.balance(&tx.signer);
                if balance < *amount {
                    return Err(LedgerError::InsufficientBalance {
                        balance,
                        amount: *amount,
                    });
                }
            }
            Payload::Reward {
                account, amount, ..
            } => {
                if !self.members.contains_key(account) {
                    return Err(LedgerError::UnknownAccount(hex::encode(account)));
                }
                if self.balance(account).checked_add(*amount).is_none() {
                    return Err(LedgerError::BalanceOverflow);
                }
            }
            Payload::Contribution { score, .. } if !score.is_finite() => {
                return Err(LedgerError::Malformed(
                    "contribution score is not finite".into(),
                ));
            }
            Payload::PrivacySpent { epsilon, delta, .. }
                if !(epsilon.is_finite() && *epsilon >= 0.0 && *delta > 0.0 && *delta < 1.0) =>
            {
                return Err(LedgerError::Malformed(
                    "privacy-spent needs a finite epsilon >= 0 and a delta in (0, 1)".into(),
                ));
            }
            Payload::MemberProposal { change } => self.check_proposal(tx, change)?,
            Payload::MemberApproval { proposal } => {
                let p = self
                    .proposals
                    .get(proposal)
                    .ok_or_else(|| LedgerError::UnknownProposal(hex::encode(proposal)))?;
                self.require_consortium(&tx.signer)?;
                if p.decided {
                    return Err(LedgerError::ProposalDecided(hex::encode(proposal)));
                }
                if p.approvals.contains(&tx.signer) {
                    return Err(LedgerError::AlreadyApproved(hex::encode(proposal)));
                }
            }
            _ => {}
        }
        Ok(Decision::Append)
    }

    fn require_consortium(&self, who: &AccountId) -> Result<(), LedgerError> {
        if !self.consortium.contains_key(who) {
            return Err(LedgerError::NotConsortiumMember(self.describe(who)));
        }
        Ok(())
    }

    fn describe(&self, who: &AccountId) -> String {
        match self.members.get(who) {
            Some(m) => format!("{}/{}", m.org, m.name),
            None => hex::encode(who),
        }
    }

    fn check_proposal(
        &self,
        tx: &SignedTransaction,
        change: &MembershipChange,
    ) -> Result<(), LedgerError> {
        match change {
            MembershipChange::Add { node, addr } => {
                // The first member joins by proposing itself; after that only members propose.
                if !(self.consortium.is_empty() && *node == tx.signer) {
                    self.require_consortium(&tx.signer)?;
                }
                let m = self
                    .members
                    .get(node)
                    .ok_or_else(|| LedgerError::UnknownAccount(hex::encode(node)))?;
                if m.revoked {
                    return Err(LedgerError::SignerRevoked);
                }
                if m.role != Role::Member {
                    return Err(LedgerError::RoleNotAllowed {
                        role: m.role,
                        action: "consortium membership".into(),
                    });
                }
                if self.consortium.contains_key(node) {
                    return Err(LedgerError::AlreadyConsortiumMember(self.describe(node)));
                }
                if addr.parse::<std::net::SocketAddr>().is_err() && !addr.contains(':') {
                    return Err(LedgerError::Malformed(format!(
                        "member address `{addr}` is not host:port"
                    )));
                }
            }
            MembershipChange::Remove { node } => {
                self.require_consortium(&tx.signer)?;
                self.require_consortium(node)?;
                if self.consortium.len() == 1 {
                    return Err(LedgerError::LastMember);
                }
            }
        }
        Ok(())
    }

    /// Counts `proposal`'s approvals by current members; a majority applies it.
    fn decide(&mut self, proposal: &TxId) {
        let Some(p) = self.proposals.get(proposal) else {
            return;
        };
        if p.decided {
            return;
        }
        let votes = p
            .approvals
            .iter()
            .filter(|a| self.consortium.contains_key(*a))
            .count();
        let bootstrap = self.consortium.is_empty();
        if !bootstrap && votes < crate::checkpoint::majority(self.consortium.len()) {
            return;
        }
        let change = p.change.clone();
        match change {
            MembershipChange::Add { node, addr } => {
                let (org, name) = self
                    .members
                    .get(&node)
                    .map(|m| (m.org.clone(), m.name.clone()))
                    .unwrap_or_default();
                self.consortium.insert(
                    node,
                    ConsortiumMember {
                        org,
                        name,
                        addr,
                        raft_id: raft_id(&node),
                    },
                );
            }
            MembershipChange::Remove { node } => {
                self.consortium.remove(&node);
            }
        }
        if let Some(p) = self.proposals.get_mut(proposal) {
            p.decided = true;
        }
    }

    fn require_authority(&self, tx: &SignedTransaction) -> Result<(), LedgerError> {
        if Some(tx.signer) != self.authority {
            return Err(LedgerError::NotAuthority);
        }
        Ok(())
    }

    fn active_member(&self, account: &AccountId, now_ms: u64) -> Result<&Member, LedgerError> {
        let m = self
            .members
            .get(account)
            .ok_or_else(|| LedgerError::UnknownSigner(hex::encode(account)))?;
        if m.revoked {
            return Err(LedgerError::SignerRevoked);
        }
        if m.not_after_ms < now_ms {
            return Err(LedgerError::SignerExpired);
        }
        Ok(m)
    }

    /// Applies a transaction that [`Self::check`] appended, at index `self.len()`.
    pub fn apply(&mut self, tx: &SignedTransaction, id: TxId) {
        match &tx.tx.payload {
            Payload::Genesis { network, authority } => {
                self.network = Some(network.clone());
                self.authority = Some(*authority);
            }
            Payload::Admit {
                org,
                role,
                name,
                public_key,
                serial,
                not_after_ms,
            } => {
                self.members.insert(
                    *public_key,
                    Member {
                        org: org.clone(),
                        role: *role,
                        name: name.clone(),
                        serial: serial.clone(),
                        not_after_ms: *not_after_ms,
                        revoked: false,
                    },
                );
            }
            Payload::Revoke { public_key, .. } => {
                if let Some(m) = self.members.get_mut(public_key) {
                    m.revoked = true;
                    self.revocations.revoke(&m.serial);
                }
            }
            Payload::Transfer { to, amount } => {
                // check() guaranteed the balance; saturating keeps replay of a
                // (corrupt) history from ever wrapping around.
                let from = self.balances.entry(tx.signer).or_default();
                *from = from.saturating_sub(*amount);
                let to = self.balances.entry(*to).or_default();
                *to = to.saturating_add(*amount);
            }
            Payload::Reward {
                account, amount, ..
            } => {
                let b = self.balances.entry(*account).or_default();
                *b = b.saturating_add(*amount);
            }
            Payload::MemberProposal { change } => {
                self.proposals.insert(
                    id,
                    MembershipProposal {
                        change: change.clone(),
                        approvals: BTreeSet::from([tx.signer]),
                        decided: false,
                    },
                );
                self.decide(&id);
            }
            Payload::MemberApproval { proposal } => {
                if let Some(p) = self.proposals.get_mut(proposal) {
                    p.approvals.insert(tx.signer);
                }
                self.decide(proposal);
            }
            _ => {}
        }
        self.seen.insert(id, self.size);
        self.size += 1;
    }

    pub fn len(&self) -> u64 {
        self.size
    }
    pub fn is_empty(&self) -> bool {
        self.size == 0
    }
    pub fn network(&self) -> Option<&str> {
        self.network.as_deref()
    }
    pub fn authority(&self) -> Option<AccountId> {
        self.authority
    }
    pub fn balance(&self, account: &AccountId) -> u64 {
        self.balances.get(account).copied().unwrap_or(0)
    }
    pub fn member(&self, account: &AccountId) -> Option<&Member> {
        self.members.get(account)
    }
    pub fn members(&self) -> impl Iterator<Item = (&AccountId, &Member)> {
        self.members.iter()
    }
    pub fn index_of(&self, id: &TxId) -> Option<u64> {
        self.seen.get(id).copied()
    }
    pub fn revocations(&self) -> &RevocationList {
        &self.revocations
    }
    /// The member nodes that replicate and cosign the ledger.
    pub fn consortium(&self) -> &BTreeMap<AccountId, ConsortiumMember> {
        &self.consortium
    }
    pub fn proposal(&self, id: &TxId) -> Option<&MembershipProposal> {
        self.proposals.get(id)
    }
    pub fn proposals(&self) -> impl Iterator<Item = (&TxId, &MembershipProposal)> {
        self.proposals.iter()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tx::Transaction;
    use ed25519_dalek::SigningKey;

    const NOW: u64 = 1_000_000;

    struct Net {
        state: LedgerState,
        authority: SigningKey,
    }

    fn key(seed: u8) -> SigningKey {
        SigningKey::from_bytes(&[seed; 32])
    }

    impl Net {
        fn new() -> Net {
            let authority = key(0);
            let mut n = Net {
                state: LedgerState::default(),
                authority,
            };
            let g = Payload::Genesis {
                network: "test".into(),
                authority: n.authority.verifying_key().to_bytes(),
            };
            n.submit(&n.authority.clone(), g).unwrap();
            n
        }
        fn submit(&mut self, by: &SigningKey, p: Payload) -> Result<Decision, LedgerError> {
            let tx = Transaction::new(p).sign(by);
            tx.verify_signature()?;
            let id = tx.id();
            let d = self.state.check(&tx, &id, NOW)?;
            if d == Decision::Append {
                self.state.apply(&tx, id);
            }
            Ok(d)
        }
        fn admit(&mut self, who: &SigningKey, role: Role) {
            let p = Payload::Admit {
                org: "o".into(),
                role,
                name: "n".into(),
                public_key: who.verifying_key().to_bytes(),
                serial: vec![who.to_bytes()[0]],
                not_after_ms: NOW * 2,
            };
            let a = self.authority.clone();
            self.submit(&a, p).unwrap();
        }
    }

    fn acct(k: &SigningKey) -> AccountId {
        k.verifying_key().to_bytes()
    }

    #[test]
    fn only_the_authority_admits_and_revokes() {
        let mut n = Net::new();
        let m = key(1);
        n.admit(&m, Role::Member);
        let p = Payload::Admit {
            org: "o".into(),
            role: Role::Member,
            name: "x".into(),
            public_key: acct(&key(2)),
            serial: vec![2],
            not_after_ms: NOW * 2,
        };
        let before = n.state.len();
        assert!(matches!(n.submit(&m, p), Err(LedgerError::NotAuthority)));
        assert!(matches!(
            n.submit(
                &m,
                Payload::Revoke {
                    public_key: acct(&m),
                    reason: "x".into()
                }
            ),
            Err(LedgerError::NotAuthority)
        ));
        assert_eq!(n.state.len(), before);
    }

    #[test]
    fn roles_limit_what_an_identity_may_write() {
        let mut n = Net::new();
        let (member, verifier, auditor) = (key(1), key(2), key(3));
        n.admit(&member, Role::Member);
        n.admit(&verifier, Role::Verifier);
        n.admit(&auditor, Role::Auditor);
        let reward = |to: &SigningKey| Payload::Reward {
            task_id: "t".into(),
            round: 1,
            account: acct(to),
            amount: 5,
        };
        assert!(matches!(
            n.submit(&verifier, reward(&verifier)),
            Err(LedgerError::RoleNotAllowed {
                role: Role::Verifier,
                action
            }) if action == "reward"
        ));
        assert!(matches!(
            n.submit(
                &auditor,
                Payload::Note {
                    topic: "a".into(),
                    body: "b".into()
                }
            ),
            Err(LedgerError::RoleNotAllowed {
                role: Role::Auditor,
                ..
            })
        ));
        assert_eq!(n.state.balance(&acct(&verifier)), 0);
        n.submit(&member, reward(&verifier)).unwrap();
        assert_eq!(n.state.balance(&acct(&verifier)), 5);
    }

    #[test]
    fn a_field_over_its_limit_is_refused_by_name_and_changes_nothing() {
        use crate::tx::limits::*;
        let mut n = Net::new();
        let member = key(1);
        n.admit(&member, Role::Member);
        let before = (n.state.len(), n.state.balance(&acct(&member)));
        // The 130 KB note a new user once got accepted.
        let big = Payload::Note {
            topic: "kyc".into(),
            body: "x".repeat(130_000),
        };
        let err = n.submit(&member, big).unwrap_err();
        assert!(
            matches!(
                &err,
                LedgerError::FieldTooLong {
                    field,
                    len: 130_000,
                    max: MAX_NOTE_BYTES
                } if field == "note.body"
            ),
            "{err:?}"
        );
        assert_eq!(
            err.to_string(),
            "`note.body` is 130000 bytes, more than the 4096 a ledger entry allows; shorten it, or keep the document off the ledger and record its hash"
        );
        let long_topic = Payload::Note {
            topic: "t".repeat(MAX_LABEL_BYTES + 1),
            body: String::new(),
        };
        assert!(matches!(
            n.submit(&member, long_topic),
            Err(LedgerError::FieldTooLong { field, .. }) if field == "note.topic"
        ));
        let long_serial = Payload::Admit {
            org: "o".into(),
            role: Role::Device,
            name: "d".into(),
            public_key: acct(&key(9)),
            serial: vec![1; MAX_SERIAL_BYTES + 1],
            not_after_ms: NOW * 2,
        };
        let a = n.authority.clone();
        assert!(matches!(
            n.submit(&a, long_serial),
            Err(LedgerError::FieldTooLong { field, .. }) if field == "admit.serial"
        ));
        assert!(n.state.member(&acct(&key(9))).is_none());
        assert_eq!((n.state.len(), n.state.balance(&acct(&member))), before);
        // At the limit is fine.
        let at_limit = Payload::Note {
            topic: "t".repeat(MAX_LABEL_BYTES),
            body: "x".repeat(MAX_NOTE_BYTES),
        };
        assert_eq!(n.submit(&member, at_limit).unwrap(), Decision::Append);
        assert_eq!(n.state.len(), before.0 + 1);
    }

    #[test]
    fn audit_batches_are_bounded_and_a_bad_one_changes_nothing() {
        use crate::tx::KeyAuditRecord;
        use crate::tx::limits::{MAX_AUDIT_RECORDS, MAX_LABEL_BYTES};
        let mut n = Net::new();
        let node = key(1);
        n.admit(&node, Role::Member);
        let record = |key_id: &str| KeyAuditRecord {
            owner: [7; 32],
            actor: [8; 32],
            operation: "decrypt".into(),
            key_id: key_id.into(),
            key_version: Some(1),
            grant_id: None,
            outcome: "ok".into(),
            request_hash: [0; 32],
        };
        let len = n.state.len();
        let batch = |records| Payload::KeyAudits { records };
        let refusals = [
            (
                batch(vec![]),
                "malformed transaction: a key-audits entry holds no record; send at least one",
            ),
            (
                batch(vec![record("k"); MAX_AUDIT_RECORDS + 1]),
                "a key-audits entry holds 65 records, more than the 64 one entry allows; split them over several entries",
            ),
            (
                batch(vec![record("k"), record(&"k".repeat(MAX_LABEL_BYTES + 1))]),
                "`key-audits.key_id` is 257 bytes, more than the 256 a ledger entry allows; shorten it, or keep the document off the ledger and record its hash",
            ),
            (
                batch(vec![
                    record(&"k".repeat(MAX_LABEL_BYTES));
                    MAX_AUDIT_RECORDS
                ]),
                "`key-audits.records` is 16960 bytes, more than the 16384 a ledger entry allows; shorten it, or keep the document off the ledger and record its hash",
            ),
        ];
        for (p, message) in refusals {
            let err = n.submit(&node, p).unwrap_err();
            assert_eq!(err.to_string(), message);
            assert_eq!(n.state.len(), len, "nothing was appended");
        }
        // A device may not write the KMS's audit.
        let device = key(2);
        n.admit(&device, Role::Device);
        let len = n.state.len();
        assert!(matches!(
            n.submit(&device, batch(vec![record("k")])),
            Err(LedgerError::RoleNotAllowed { .. })
        ));
        assert_eq!(n.state.len(), len);
        let full = batch(vec![record("k"); MAX_AUDIT_RECORDS]);
        assert_eq!(n.submit(&node, full.clone()).unwrap(), Decision::Append);
        // Index rows: the owner, and owner and key, once each however many records.
        let mut by_key = [7u8; 32].to_vec();
        by_key.push(b'k');
        assert_eq!(
            full.index_keys(),
            vec![
                ("key-audit", vec![]),
                ("key-audit", [7u8; 32].to_vec()),
                ("key-audit", by_key)
            ]
        );
        assert_eq!(full.key_audit_records().unwrap().len(), MAX_AUDIT_RECORDS);
    }

    #[test]
    fn privacy_spent_needs_a_real_epsilon_and_delta_and_changes_nothing_otherwise() {
        let mut n = Net::new();
        let member = key(1);
        n.admit(&member, Role::Member);
        let len = n.state.len();
        for (epsilon, delta) in [(f64::NAN, 1e-5), (-1.0, 1e-5), (1.0, 0.0), (1.0, 1.0)] {
            let err = n
                .submit(
                    &member,
                    Payload::PrivacySpent {
                        task_id: "t".into(),
                        round: 0,
                        epsilon,
                        delta,
                    },
                )
                .unwrap_err();
            assert!(
                matches!(&err, LedgerError::Malformed(m) if m.starts_with("privacy-spent needs")),
                "{err}"
            );
            assert_eq!(n.state.len(), len);
        }
        n.submit(
            &member,
            Payload::PrivacySpent {
                task_id: "t".into(),
                round: 0,
                epsilon: 1.5,
                delta: 1e-5,
            },
        )
        .unwrap();
        assert_eq!(n.state.len(), len + 1);
    }

    #[test]
    fn balances_never_go_negative_and_rewards_are_idempotent() {
        let mut n = Net::new();
        let (member, dev, other) = (key(1), key(2), key(3));
        n.admit(&member, Role::Member);
        n.admit(&dev, Role::Device);
        n.admit(&other, Role::Device);
        let reward = Transaction::new(Payload::Reward {
            task_id: "t".into(),
            round: 1,
            account: acct(&dev),
            amount: 10,
        })
        .sign(&member);
        let id = reward.id();
        assert_eq!(n.state.check(&reward, &id, NOW).unwrap(), Decision::Append);
        let index = n.state.len();
        n.state.apply(&reward, id);
        // The same transaction again is acknowledged, not applied.
        assert_eq!(
            n.state.check(&reward, &id, NOW).unwrap(),
            Decision::Duplicate(index)
        );
        assert_eq!(n.state.balance(&acct(&dev)), 10);
        let err = n
            .submit(
                &dev,
                Payload::Transfer {
                    to: acct(&other),
                    amount: 11,
                },
            )
            .unwrap_err();
        assert!(matches!(
            err,
            LedgerError::InsufficientBalance {
                balance: 10,
                amount: 11
            }
        ));
        n.submit(
            &dev,
            Payload::Transfer {
                to: acct(&other),
                amount: 10,
            },
        )
        .unwrap();
        assert_eq!(
            (n.state.balance(&acct(&dev)), n.state.balance(&acct(&other))),
            (0, 10)
        );
    }

    #[test]
    fn revoked_unknown_and_expired_signers_are_refused() {
        let mut n = Net::new();
        let (m, stranger) = (key(1), key(9));
        n.admit(&m, Role::Member);
        let note = || Payload::Note {
            topic: "a".into(),
            body: "b".into(),
        };
        assert!(matches!(
            n.submit(&stranger, note()),
            Err(LedgerError::UnknownSigner(_))
        ));
        let tx = Transaction::new(note()).sign(&m);
        assert!(matches!(
            n.state.check(&tx, &tx.id(), NOW * 3),
            Err(LedgerError::SignerExpired)
        ));
        let a = n.authority.clone();
        n.submit(
            &a,
            Payload::Revoke {
                public_key: acct(&m),
                reason: "lost".into(),
            },
        )
        .unwrap();
        assert!(n.state.revocations().is_revoked(&[m.to_bytes()[0]]));
        assert!(matches!(
            n.submit(&m, note()),
            Err(LedgerError::SignerRevoked)
        ));
    }

    #[test]
    fn genesis_comes_first_and_only_once() {
        let mut fresh = LedgerState::default();
        let m = key(1);
        let tx = Transaction::new(Payload::Note {
            topic: "a".into(),
            body: "b".into(),
        })
        .sign(&m);
        assert!(matches!(
            fresh.check(&tx, &tx.id(), NOW),
            Err(LedgerError::NoGenesis)
        ));
        let mut n = Net::new();
        let a = n.authority.clone();
        let g = Payload::Genesis {
            network: "again".into(),
            authority: acct(&a),
        };
        assert!(matches!(
            n.submit(&a, g),
            Err(LedgerError::GenesisMisplaced)
        ));
        let _ = &mut fresh;
    }

    #[test]
    fn members_join_and_leave_only_by_majority() {
        use crate::tx::MembershipChange;
        let mut n = Net::new();
        let (a, b, c, d, verifier) = (key(1), key(2), key(3), key(4), key(5));
        for k in [&a, &b, &c, &d] {
            n.admit(k, Role::Member);
        }
        n.admit(&verifier, Role::Verifier);
        let add = |k: &SigningKey| Payload::MemberProposal {
            change: MembershipChange::Add {
                node: acct(k),
                addr: "127.0.0.1:1".into(),
            },
        };
        // Only the first member may propose itself; afterwards only members propose.
        assert!(matches!(
            n.submit(&b, add(&a)),
            Err(LedgerError::NotConsortiumMember(_))
        ));
        n.submit(&a, add(&a)).unwrap();
        assert_eq!(n.state.consortium().len(), 1);
        // One of one is a majority.
        n.submit(&a, add(&b)).unwrap();
        assert_eq!(n.state.consortium().len(), 2);
        // One of two is not: c waits for b.
        let p = Transaction::new(add(&c)).sign(&a);
        let pid = p.id();
        n.state.check(&p, &pid, NOW).unwrap();
        n.state.apply(&p, pid);
        assert_eq!(n.state.consortium().len(), 2);
        let size = n.state.len();
        for (who, err) in [
            (&a, "already approved"),
            (&verifier, "may not write"),
            (&d, "not a consortium member"),
        ] {
            let e = n
                .submit(who, Payload::MemberApproval { proposal: pid })
                .unwrap_err();
            assert!(e.to_string().contains(err), "{e}");
        }
        assert!(matches!(
            n.submit(&a, Payload::MemberApproval { proposal: [7; 32] }),
            Err(LedgerError::UnknownProposal(_))
        ));
        assert_eq!(n.state.len(), size, "refusals change nothing");
        n.submit(&b, Payload::MemberApproval { proposal: pid })
            .unwrap();
        assert_eq!(n.state.consortium().len(), 3);
        assert!(n.state.proposal(&pid).unwrap().decided);
        assert!(matches!(
            n.submit(&c, Payload::MemberApproval { proposal: pid }),
            Err(LedgerError::ProposalDecided(_))
        ));
        // Non-member roles and members twice are refused.
        assert!(matches!(
            n.submit(&a, add(&verifier)),
            Err(LedgerError::RoleNotAllowed { .. })
        ));
        assert!(matches!(
            n.submit(&a, add(&b)),
            Err(LedgerError::AlreadyConsortiumMember(_))
        ));
        // Removal: two of three needed.
        n.submit(
            &c,
            Payload::MemberProposal {
                change: MembershipChange::Remove { node: acct(&a) },
            },
        )
        .unwrap();
        assert_eq!(n.state.consortium().len(), 3);
        let rid = n
            .state
            .proposals()
            .find(|(_, p)| !p.decided)
            .map(|(k, _)| *k)
            .unwrap();
        n.submit(&b, Payload::MemberApproval { proposal: rid })
            .unwrap();
        assert_eq!(n.state.consortium().len(), 2);
        assert!(!n.state.consortium().contains_key(&acct(&a)));
    }
}
