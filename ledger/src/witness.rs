//! A member node as a transparency-log witness, sans-IO: when it may
//! cosign a head, how it collects the other members' cosignatures into the
//! newest head a client can trust, and the evidence it keeps when something
//! does not add up.
//!
//! A member cosigns a checkpoint only if it has applied every entry up to
//! that size itself (so it validated them: signature, role, balance rules),
//! the root is the one its own tree has at that size, and that tree is
//! consistent with every checkpoint it cosigned before. Cosignatures from
//! other members for a root its own log does not have, and two different
//! roots cosigned by one member for one size, are kept as evidence and
//! never counted.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::checkpoint::{Checkpoint, CheckpointBody, Cosignature, Cosigner, majority};
use crate::merkle::{Hash, MerkleTree};
use crate::tx::AccountId;

/// How many recent sizes' cosignatures are kept while a quorum gathers.
const RECENT: usize = 512;
/// Most evidence records kept (the first ones are the ones that matter).
const MAX_EVIDENCE: usize = 1024;

/// Something a member found wrong, kept and served (`Evidence` RPC).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum Evidence {
    /// A committed entry that failed validation here.
    InvalidEntry {
        raft_index: u64,
        position: usize,
        reason: String,
    },
    /// A member cosigned a root this member's own log does not have at that size.
    ForeignRoot {
        member: String,
        size: u64,
        #[serde(with = "crate::hexbytes")]
        cosigned_root: Hash,
        #[serde(with = "crate::hexbytes")]
        own_root: Hash,
        cosignature: Cosignature,
    },
    /// One member cosigned two different roots for one size.
    Equivocation {
        member: String,
        size: u64,
        first: (String, Cosignature),
        second: (String, Cosignature),
    },
    /// This member's own log no longer matches a head it cosigned (a damaged store).
    OwnLogChanged {
        size: u64,
        #[serde(with = "crate::hexbytes")]
        cosigned_root: Hash,
    },
}

/// What became of a cosignature offered to [`Witness::offer`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Offered {
    /// Counted towards its size.
    Counted,
    /// Already had it.
    Known,
    /// For a size this member has not applied yet.
    Ahead,
    /// Not from a consortium member, or does not verify: ignored.
    Refused(crate::LedgerError),
    /// Kept as evidence, not counted.
    Evidence,
}

/// The witness state of one member node.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Witness {
    origin: String,
    /// The newest checkpoint this member cosigned.
    last_signed: Option<CheckpointBody>,
    /// Set once this member's own log stopped matching what it cosigned.
    halted: bool,
    /// Cosignatures per size, keyed by cosigner name.
    #[serde(skip)]
    recent: BTreeMap<u64, (Hash, BTreeMap<String, Cosignature>)>,
    /// The newest checkpoint with a quorum of cosignatures.
    trusted: Option<Checkpoint>,
    evidence: Vec<Evidence>,
}

impl Witness {
    pub fn new(origin: &str) -> Self {
        Witness {
            origin: origin.to_owned(),
            ..Default::default()
        }
    }

    /// Takes the network's name as the log's origin, until the first cosignature.
    pub fn adopt_origin(&mut self, network: &str) {
        if self.last_signed.is_none() && self.origin != network {
            self.origin = network.to_owned();
        }
    }

    pub fn origin(&self) -> &str {
        &self.origin
    }

    /// Checks, after a restart, that the log read from disk still holds
    /// every checkpoint this member cosigned. If not, it never cosigns again
    /// (until its store is rebuilt) and says why.
    pub fn check_own_log(&mut self, tree: &MerkleTree) -> Result<(), Box<Evidence>> {
        let Some(last) = &self.last_signed else {
            return Ok(());
        };
        let ok = last.size <= tree.len() && tree.root_at(last.size).ok() == Some(last.root);
        if ok {
            return Ok(());
        }
        let e = Evidence::OwnLogChanged {
            size: last.size,
            cosigned_root: last.root,
        };
        self.halted = true;
        self.record(e.clone());
        Err(Box::new(e))
    }

    pub fn is_halted(&self) -> bool {
        self.halted
    }

    /// Cosigns the checkpoint of `tree` at `size` (which this member has
    /// applied), if the witness rules allow it.
    pub fn cosign(
        &mut self,
        tree: &MerkleTree,
        size: u64,
        me: &str,
        key: &ed25519_dalek::SigningKey,
        now_secs: u64,
    ) -> Option<Cosignature> {
        if self.halted || size > tree.len() {
            return None;
        }
        if let Some(last) = &self.last_signed
            && tree.root_at(last.size.min(tree.len())).ok() != Some(last.root)
        {
            // Our own tree changed under a head we signed: never sign again.
            let _ = self.check_own_log(tree);
            return None;
        }
        let root = tree.root_at(size).ok()?;
        let body = CheckpointBody {
            origin: self.origin.clone(),
            size,
            root,
        };
        if let Some((_, (r, sigs))) = self.recent.get_key_value(&size)
            && *r == root
            && let Some(c) = sigs.get(me)
        {
            return Some(c.clone());
        }
        let c = Cosignature::sign(&body, me, key, now_secs);
        if self.last_signed.as_ref().is_none_or(|l| l.size <= size) {
            self.last_signed = Some(body);
        }
        let entry = self
            .recent
            .entry(size)
            .or_insert_with(|| (root, BTreeMap::new()));
        entry.1.insert(me.to_owned(), c.clone());
        self.trim();
        Some(c)
    }

    /// Takes another member's cosignature. `members` are the consortium's
    /// cosigners as this member's ledger lists them; `tree` is its own log.
    pub fn offer(
        &mut self,
        body: &CheckpointBody,
        c: Cosignature,
        members: &[Cosigner],
        tree: &MerkleTree,
    ) -> Offered {
        if body.origin != self.origin {
            return Offered::Refused(crate::LedgerError::PeerMessage(format!(
                "checkpoint of log `{}`, this is `{}`",
                body.origin, self.origin
            )));
        }
        if !members.iter().any(|m| m.key == c.key && m.name == c.name) {
            return Offered::Refused(crate::LedgerError::NotConsortiumMember(c.name.clone()));
        }
        if let Err(e) = c.verify(body) {
            return Offered::Refused(e);
        }
        // The same member, the same size, another root: equivocation.
        if let Some((root, sigs)) = self.recent.get(&body.size)
            && let Some(prev) = sigs.get(&c.name)
            && *root != body.root
        {
            let e = Evidence::Equivocation {
                member: c.name.clone(),
                size: body.size,
                first: (hex::encode(root), prev.clone()),
                second: (hex::encode(body.root), c),
            };
            self.record(e);
            return Offered::Evidence;
        }
        if body.size > tree.len() {
            return Offered::Ahead;
        }
        let own = tree
            .root_at(body.size)
            .expect("size checked against the tree");
        if own != body.root {
            self.record(Evidence::ForeignRoot {
                member: c.name.clone(),
                size: body.size,
                cosigned_root: body.root,
                own_root: own,
                cosignature: c,
            });
            return Offered::Evidence;
        }
        let entry = self
            .recent
            .entry(body.size)
            .or_insert_with(|| (own, BTreeMap::new()));
        if entry.1.contains_key(&c.name) {
            return Offered::Known;
        }
        entry.1.insert(c.name.clone(), c);
        self.promote(body.size, members);
        self.trim();
        Offered::Counted
    }

    /// Takes a whole cosigned checkpoint (e.g. the leader's newest), counting
    /// each of its cosignatures as [`Self::offer`] would.
    pub fn offer_checkpoint(&mut self, cp: &Checkpoint, members: &[Cosigner], tree: &MerkleTree) {
        for c in &cp.cosignatures {
            let _ = self.offer(&cp.body, c.clone(), members, tree);
        }
    }

    /// Counts the cosignatures held for `size` among `members`, making it
    /// the trusted checkpoint if it is a quorum's and newer.
    pub fn promote(&mut self, size: u64, members: &[Cosigner]) {
        let Some((root, sigs)) = self.recent.get(&size) else {
            return;
        };
        let counted: Vec<Cosignature> = sigs
            .values()
            .filter(|c| members.iter().any(|m| m.key == c.key))
            .cloned()
            .collect();
        let better = self.trusted.as_ref().is_none_or(|t| {
            t.body.size < size || (t.body.size == size && t.cosignatures.len() <= counted.len())
        });
        if better && counted.len() >= majority(members.len()) {
            self.trusted = Some(Checkpoint {
                body: CheckpointBody {
                    origin: self.origin.clone(),
                    size,
                    root: *root,
                },
                cosignatures: counted,
            });
        }
    }

    /// Re-counts after the membership changed (a member joined or left).
    pub fn recount(&mut self, members: &[Cosigner]) {
        let sizes: Vec<u64> = self.recent.keys().copied().collect();
        for s in sizes {
            self.promote(s, members);
        }
    }

    /// The newest checkpoint with a quorum of member cosignatures.
    pub fn trusted(&self) -> Option<&Checkpoint> {
        self.trusted.as_ref()
    }

    /// What this member and others cosigned for `size`, if it is recent.
    pub fn cosignatures_at(&self, size: u64) -> Option<Checkpoint> {
        self.recent.get(&size).map(|(root, sigs)| Checkpoint {
            body: CheckpointBody {
                origin: self.origin.clone(),
                size,
                root: *root,
            },
            cosignatures: sigs.values().cloned().collect(),
        })
    }

    /// The newest size this member cosigned itself.
    pub fn last_signed(&self) -> Option<&CheckpointBody> {
        self.last_signed.as_ref()
    }

    pub fn record(&mut self, e: Evidence) {
        tracing::error!(evidence = ?e, "ALARM: ledger evidence recorded");
        metrics::counter!("yilian_ledger_evidence_total").increment(1);
        if self.evidence.len() < MAX_EVIDENCE && !self.evidence.contains(&e) {
            self.evidence.push(e);
        }
    }

    pub fn evidence(&self) -> &[Evidence] {
        &self.evidence
    }

    fn trim(&mut self) {
        while self.recent.len() > RECENT {
            self.recent.pop_first();
        }
    }
}

/// A consortium member's name as it appears on cosignature lines.
pub fn cosigner_name(network: &str, org: &str, name: &str) -> String {
    format!("{network}/{org}/{name}")
}

/// The cosigners a ledger's consortium listing implies.
pub fn cosigners<'a>(
    network: &str,
    members: impl IntoIterator<Item = (&'a AccountId, &'a crate::state::ConsortiumMember)>,
) -> Vec<Cosigner> {
    members
        .into_iter()
        .map(|(k, m)| Cosigner {
            name: cosigner_name(network, &m.org, &m.name),
            key: *k,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::merkle::leaf_hash;
    use ed25519_dalek::SigningKey;

    fn tree(n: u64, salt: u8) -> MerkleTree {
        let mut t = MerkleTree::new();
        for i in 0..n {
            t.push(leaf_hash(&[salt, i as u8]));
        }
        t
    }

    fn member(i: u8) -> (SigningKey, Cosigner) {
        let k = SigningKey::from_bytes(&[i; 32]);
        let c = Cosigner {
            name: format!("net/org{i}/node"),
            key: k.verifying_key().to_bytes(),
        };
        (k, c)
    }

    fn body(t: &MerkleTree, size: u64) -> CheckpointBody {
        CheckpointBody {
            origin: "net".into(),
            size,
            root: t.root_at(size).unwrap(),
        }
    }

    #[test]
    fn a_quorum_of_matching_cosignatures_makes_a_trusted_head() {
        let t = tree(10, 0);
        let ms: Vec<_> = (1..=3).map(member).collect();
        let cosigners: Vec<Cosigner> = ms.iter().map(|m| m.1.clone()).collect();
        let mut w = Witness::new("net");
        let own = w.cosign(&t, 10, &ms[0].1.name, &ms[0].0, 1).unwrap();
        assert_eq!(w.offer(&body(&t, 10), own, &cosigners, &t), Offered::Known);
        assert!(w.trusted().is_none(), "one of three is not a majority");
        let theirs = Cosignature::sign(&body(&t, 10), &ms[1].1.name, &ms[1].0, 2);
        assert_eq!(
            w.offer(&body(&t, 10), theirs, &cosigners, &t),
            Offered::Counted
        );
        let trusted = w.trusted().unwrap();
        assert_eq!(trusted.body.size, 10);
        assert_eq!(trusted.verify(&cosigners, 2).unwrap().len(), 2);
    }

    #[test]
    fn counting_the_newly_cosigned_size_alone_trusts_what_a_recount_would() {
        // A member alone: its own cosignature is the quorum. What the store
        // does after each batch (promote the new size) and after a
        // membership change (recount all) agree on the trusted head.
        let (k, me) = member(1);
        let members = vec![me.clone()];
        let (mut one, mut all) = (Witness::new("net"), Witness::new("net"));
        for size in 1..=20 {
            let t = tree(size, 0);
            one.cosign(&t, size, &me.name, &k, size).unwrap();
            all.cosign(&t, size, &me.name, &k, size).unwrap();
            one.promote(size, &members);
            all.recount(&members);
            assert_eq!(one.trusted(), all.trusted());
            assert_eq!(one.trusted().unwrap().body.size, size);
        }
        // A second member joins: only a recount sees that one of two is no
        // longer a majority for the newest size.
        let members = vec![me.clone(), member(2).1];
        let t = tree(21, 0);
        one.cosign(&t, 21, &me.name, &k, 21).unwrap();
        one.recount(&members);
        assert_eq!(one.trusted().unwrap().body.size, 20);
    }

    #[test]
    fn a_root_this_log_does_not_have_is_evidence_and_never_counted() {
        let mine = tree(10, 0);
        let forked = tree(10, 1);
        let ms: Vec<_> = (1..=3).map(member).collect();
        let cosigners: Vec<Cosigner> = ms.iter().map(|m| m.1.clone()).collect();
        let mut w = Witness::new("net");
        let c = Cosignature::sign(&body(&forked, 10), &ms[1].1.name, &ms[1].0, 2);
        assert_eq!(
            w.offer(&body(&forked, 10), c, &cosigners, &mine),
            Offered::Evidence
        );
        assert!(matches!(
            w.evidence()[0],
            Evidence::ForeignRoot { size: 10, .. }
        ));
        assert!(w.trusted().is_none());
    }

    #[test]
    fn two_roots_from_one_member_for_one_size_are_equivocation() {
        let mine = tree(10, 0);
        let forked = tree(10, 1);
        let ms: Vec<_> = (1..=3).map(member).collect();
        let cosigners: Vec<Cosigner> = ms.iter().map(|m| m.1.clone()).collect();
        let mut w = Witness::new("net");
        let good = Cosignature::sign(&body(&mine, 10), &ms[1].1.name, &ms[1].0, 2);
        assert_eq!(
            w.offer(&body(&mine, 10), good, &cosigners, &mine),
            Offered::Counted
        );
        let bad = Cosignature::sign(&body(&forked, 10), &ms[1].1.name, &ms[1].0, 3);
        assert_eq!(
            w.offer(&body(&forked, 10), bad, &cosigners, &mine),
            Offered::Evidence
        );
        assert!(matches!(
            w.evidence()[0],
            Evidence::Equivocation { size: 10, .. }
        ));
    }

    #[test]
    fn strangers_and_forgeries_change_nothing() {
        let t = tree(4, 0);
        let ms: Vec<_> = (1..=3).map(member).collect();
        let cosigners: Vec<Cosigner> = ms.iter().map(|m| m.1.clone()).collect();
        let mut w = Witness::new("net");
        let (sk, stranger) = member(9);
        let c = Cosignature::sign(&body(&t, 4), &stranger.name, &sk, 1);
        assert!(matches!(
            w.offer(&body(&t, 4), c, &cosigners, &t),
            Offered::Refused(crate::LedgerError::NotConsortiumMember(_))
        ));
        let mut forged = Cosignature::sign(&body(&t, 4), &ms[1].1.name, &ms[1].0, 1);
        forged.signature[0] ^= 1;
        assert!(matches!(
            w.offer(&body(&t, 4), forged, &cosigners, &t),
            Offered::Refused(crate::LedgerError::BadCosignature { .. })
        ));
        assert!(w.cosignatures_at(4).is_none());
        assert!(w.evidence().is_empty());
    }

    #[test]
    fn a_member_whose_log_changed_under_its_signature_stops_signing() {
        let t = tree(8, 0);
        let (k, me) = member(1);
        let mut w = Witness::new("net");
        w.cosign(&t, 8, &me.name, &k, 1).unwrap();
        let damaged = tree(8, 7);
        assert!(w.check_own_log(&damaged).is_err());
        assert!(w.is_halted());
        assert!(w.cosign(&damaged, 8, &me.name, &k, 2).is_none());
        assert!(matches!(
            w.evidence()[0],
            Evidence::OwnLogChanged { size: 8, .. }
        ));
    }
}
