//! The coordinator's side of a SecAgg+ round, sans IO. It routes keys and
//! sealed shares, keeps a running sum of masked inputs, checks revealed
//! shares against their commitments, and removes the masks. Its whole
//! state is plain data the driver persists: public keys, commitments,
//! sealed shares, the masked sum and revealed shares. None of it is an
//! agent's input or lets one be recovered: a survivor's pairwise masks stay
//! unknown to it, and a dropped agent's input was never sent.

use std::collections::{BTreeMap, BTreeSet};

use curve25519_dalek::montgomery::MontgomeryPoint;
use curve25519_dalek::scalar::Scalar;
use serde::{Deserialize, Serialize};

use super::mask::{SecretScalar, add_mask};
use super::{
    KeyAdvert, MaskedInput, PublicKeys, Reveal, SEALED_SHARE_LEN, SealedShare, Setup, Step, Unmask,
    shamir,
};
use crate::{AgentId, FlError, RejectReason};

/// The result of a round: the sum of the survivors' vectors.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Outcome {
    pub survivors: Vec<AgentId>,
    /// Agents that shared keys but sent no input, whose masks were removed.
    pub dropped: Vec<AgentId>,
    pub sum: Vec<u32>,
}

/// One round's coordinator state.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Server {
    setup: Setup,
    step: Step,
    adverts: BTreeMap<AgentId, KeyAdvert>,
    /// Sealed shares by sender, kept until they are routed.
    shares: BTreeMap<AgentId, Vec<SealedShare>>,
    /// Agents whose shares were routed (U2).
    shared: BTreeSet<AgentId>,
    /// Agents whose masked input is in the sum (U3).
    survivors: BTreeSet<AgentId>,
    masked_sum: Vec<u32>,
    revealed: BTreeSet<AgentId>,
    /// Checked shares by owner: (holder's x, share).
    seed_shares: BTreeMap<AgentId, Vec<(u64, [u8; 32])>>,
    mask_shares: BTreeMap<AgentId, Vec<(u64, [u8; 32])>>,
    /// The round's graph, derived from the setup once per process.
    #[serde(skip)]
    graph: GraphCache,
}

/// A cache of what the setup determines: never part of the state, so it
/// takes no part in equality either.
#[derive(Clone, Debug, Default)]
struct GraphCache(std::sync::OnceLock<BTreeMap<AgentId, BTreeSet<AgentId>>>);

impl PartialEq for GraphCache {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

impl Server {
    pub fn new(setup: Setup) -> Self {
        Server {
            masked_sum: vec![0; setup.dim],
            setup,
            step: Step::Keys,
            adverts: BTreeMap::new(),
            shares: BTreeMap::new(),
            shared: BTreeSet::new(),
            survivors: BTreeSet::new(),
            revealed: BTreeSet::new(),
            seed_shares: BTreeMap::new(),
            mask_shares: BTreeMap::new(),
            graph: GraphCache::default(),
        }
    }

    pub fn setup(&self) -> &Setup {
        &self.setup
    }

    pub fn step(&self) -> Step {
        self.step
    }

    /// Agents the current step still waits for.
    pub fn waiting_for(&self) -> BTreeSet<AgentId> {
        let (all, done): (BTreeSet<AgentId>, BTreeSet<AgentId>) = match self.step {
            Step::Keys => (
                self.setup.cohort.iter().copied().collect(),
                self.adverts.keys().copied().collect(),
            ),
            Step::Shares => (
                self.adverts.keys().copied().collect(),
                self.shares.keys().copied().collect(),
            ),
            Step::Input => (self.shared.clone(), self.survivors.clone()),
            Step::Reveal => (self.survivors.clone(), self.revealed.clone()),
            Step::Done => return BTreeSet::new(),
        };
        all.difference(&done).copied().collect()
    }

    fn check(
        &self,
        sender: &AgentId,
        from: &AgentId,
        round: u32,
        step: Step,
    ) -> Result<(), RejectReason> {
        if self.step != step {
            return Err(RejectReason::WrongStep {
                got: step,
                expected: self.step,
            });
        }
        if round != self.setup.round {
            return Err(RejectReason::WrongRound {
                got: round,
                current: self.setup.round,
            });
        }
        if from != sender {
            return Err(RejectReason::ImpersonatedSender { claimed: *from });
        }
        Ok(())
    }

    fn fail(&self, survivors: usize) -> FlError {
        FlError::TooFewSurvivors {
            round: self.setup.round,
            survivors,
            threshold: self.setup.threshold,
        }
    }

    fn graph(&self) -> &BTreeMap<AgentId, BTreeSet<AgentId>> {
        self.graph.0.get_or_init(|| self.setup.graph())
    }

    fn neighbours_of(&self, a: &AgentId) -> BTreeSet<AgentId> {
        self.graph().get(a).cloned().unwrap_or_default()
    }

    /// Step 1 from `sender`, the identity its connection proved.
    pub fn advert(&mut self, sender: &AgentId, a: KeyAdvert) -> Result<(), RejectReason> {
        self.check(sender, &a.from, a.round, Step::Keys)?;
        if self.setup.x_of(sender).is_none() {
            return Err(RejectReason::NotSelected);
        }
        if a.keys.owner != a.from {
            return Err(RejectReason::ImpersonatedSender {
                claimed: a.keys.owner,
            });
        }
        if self.adverts.contains_key(sender) {
            return Err(RejectReason::Duplicate);
        }
        // Clamping clears the cofactor, so only a low-order point maps to zero.
        let low_order = |k: &[u8; 32]| MontgomeryPoint(*k).mul_clamped([0x55; 32]).0 == [0u8; 32];
        if low_order(&a.keys.cipher) || low_order(&a.keys.mask) {
            return Err(RejectReason::LowOrderKey { agent: a.from });
        }
        let t = self.setup.threshold;
        if a.seed_commitments.checker(t).is_none() || a.mask_commitments.checker(t).is_none() {
            return Err(RejectReason::BadCommitments);
        }
        self.adverts.insert(*sender, a);
        Ok(())
    }

    /// Ends step 1: each advertiser gets its advertising neighbours' keys.
    pub fn close_keys(&mut self) -> Result<BTreeMap<AgentId, Vec<PublicKeys>>, FlError> {
        if self.adverts.len() < self.setup.threshold {
            return Err(self.fail(self.adverts.len()));
        }
        let graph = self.graph();
        let out = self
            .adverts
            .keys()
            .map(|a| {
                let keys = graph[a]
                    .iter()
                    .filter_map(|n| self.adverts.get(n).map(|ad| ad.keys))
                    .collect();
                (*a, keys)
            })
            .collect();
        self.step = Step::Shares;
        Ok(out)
    }

    /// Step 2 from `sender`: one sealed share for each advertising neighbour.
    pub fn shares(
        &mut self,
        sender: &AgentId,
        shares: Vec<SealedShare>,
    ) -> Result<(), RejectReason> {
        if self.step != Step::Shares {
            return Err(RejectReason::WrongStep {
                got: Step::Shares,
                expected: self.step,
            });
        }
        if !self.adverts.contains_key(sender) {
            return Err(RejectReason::NotSelected);
        }
        if self.shares.contains_key(sender) {
            return Err(RejectReason::Duplicate);
        }
        let expected: BTreeSet<AgentId> = self
            .neighbours_of(sender)
            .into_iter()
            .filter(|n| self.adverts.contains_key(n))
            .collect();
        let mut seen = BTreeSet::new();
        for s in &shares {
            self.check(sender, &s.from, s.round, Step::Shares)?;
            if !expected.contains(&s.to) {
                return Err(RejectReason::NotNeighbour { agent: s.to });
            }
            if !seen.insert(s.to) {
                return Err(RejectReason::Duplicate);
            }
            if s.ciphertext.len() != SEALED_SHARE_LEN {
                return Err(RejectReason::WrongShape {
                    got: s.ciphertext.len(),
                    expected: SEALED_SHARE_LEN,
                });
            }
        }
        if seen.len() != expected.len() {
            return Err(RejectReason::SharesIncomplete {
                got: seen.len(),
                expected: expected.len(),
            });
        }
        self.shares.insert(*sender, shares);
        Ok(())
    }

    /// Ends step 2: each sharer gets the shares its sharing neighbours sealed to it.
    pub fn close_shares(&mut self) -> Result<BTreeMap<AgentId, Vec<SealedShare>>, FlError> {
        if self.shares.len() < self.setup.threshold {
            return Err(self.fail(self.shares.len()));
        }
        self.shared = self.shares.keys().copied().collect();
        let mut out: BTreeMap<AgentId, Vec<SealedShare>> =
            self.shared.iter().map(|a| (*a, Vec::new())).collect();
        for s in std::mem::take(&mut self.shares).into_values().flatten() {
            if let Some(v) = out.get_mut(&s.to) {
                v.push(s);
            }
        }
        self.step = Step::Input;
        Ok(out)
    }

    /// Step 3 from `sender`: added to the masked sum.
    pub fn masked_input(&mut self, sender: &AgentId, m: MaskedInput) -> Result<(), RejectReason> {
        self.check(sender, &m.from, m.round, Step::Input)?;
        if !self.shared.contains(sender) {
            return Err(RejectReason::NotSelected);
        }
        if self.survivors.contains(sender) {
            return Err(RejectReason::Duplicate);
        }
        if m.values.len() != self.setup.dim {
            return Err(RejectReason::WrongShape {
                got: m.values.len(),
                expected: self.setup.dim,
            });
        }
        for (s, v) in self.masked_sum.iter_mut().zip(&m.values) {
            *s = s.wrapping_add(*v);
        }
        self.survivors.insert(*sender);
        Ok(())
    }

    /// Ends step 3: the survivor list every survivor is sent.
    pub fn close_inputs(&mut self) -> Result<Unmask, FlError> {
        if self.survivors.len() < self.setup.threshold {
            return Err(self.fail(self.survivors.len()));
        }
        self.step = Step::Reveal;
        Ok(Unmask::new(
            self.setup.round,
            &self.setup.cohort,
            &self.survivors,
        ))
    }

    /// Step 4 from `sender`: every share is checked before any is kept.
    pub fn reveal(&mut self, sender: &AgentId, r: Reveal) -> Result<(), RejectReason> {
        self.check(sender, &r.from, r.round, Step::Reveal)?;
        if !self.survivors.contains(sender) {
            return Err(RejectReason::NotSelected);
        }
        if self.revealed.contains(sender) {
            return Err(RejectReason::Duplicate);
        }
        let x = self
            .setup
            .x_of(sender)
            .expect("survivors are in the cohort");
        let neighbours = self.neighbours_of(sender);
        let t = self.setup.threshold;
        let mut owners = BTreeSet::new();
        for (list, want_survivor) in [(&r.seeds, true), (&r.masks, false)] {
            for (owner, y) in list {
                let ok_owner = neighbours.contains(owner)
                    && self.shared.contains(owner)
                    && self.survivors.contains(owner) == want_survivor;
                if !ok_owner {
                    return Err(RejectReason::NotNeighbour { agent: *owner });
                }
                if !owners.insert(*owner) {
                    return Err(RejectReason::Duplicate);
                }
                let ad = &self.adverts[owner];
                let c = if want_survivor {
                    &ad.seed_commitments
                } else {
                    &ad.mask_commitments
                };
                let y = Scalar::from_canonical_bytes(*y).into_option();
                let checker = c.checker(t).expect("checked at advertisement");
                if !y.is_some_and(|y| checker.check(x, &y)) {
                    return Err(RejectReason::ForgedShare { owner: *owner });
                }
            }
        }
        for (owner, y) in r.seeds {
            self.seed_shares.entry(owner).or_default().push((x, y));
        }
        for (owner, y) in r.masks {
            self.mask_shares.entry(owner).or_default().push((x, y));
        }
        self.revealed.insert(*sender);
        Ok(())
    }

    fn missing(&self) -> Option<(AgentId, usize)> {
        let t = self.setup.threshold;
        let count =
            |m: &BTreeMap<AgentId, Vec<(u64, [u8; 32])>>, a: &AgentId| m.get(a).map_or(0, Vec::len);
        self.survivors
            .iter()
            .map(|a| (*a, count(&self.seed_shares, a)))
            .chain(
                self.shared
                    .difference(&self.survivors)
                    .map(|a| (*a, count(&self.mask_shares, a))),
            )
            .find(|(_, n)| *n < t)
    }

    /// Ends the round: removes the masks and returns the survivors' sum.
    pub fn finish(&mut self) -> Result<Outcome, FlError> {
        if self.step != Step::Reveal {
            return Err(FlError::InvalidTask(
                "secure aggregation finished out of order",
            ));
        }
        if self.revealed.len() < self.setup.threshold {
            return Err(self.fail(self.revealed.len()));
        }
        if let Some((owner, shares)) = self.missing() {
            return Err(FlError::Unrecoverable {
                round: self.setup.round,
                owner,
                shares,
                threshold: self.setup.threshold,
            });
        }
        let t = self.setup.threshold;
        let ctx = self.setup.context();
        let secret = |shares: &[(u64, [u8; 32])]| {
            let pts: Vec<(u64, Scalar)> = shares[..t]
                .iter()
                .map(|(x, y)| {
                    let y = Scalar::from_canonical_bytes(*y)
                        .into_option()
                        .expect("checked when revealed");
                    (*x, y)
                })
                .collect();
            SecretScalar::from_scalar(shamir::reconstruct(&pts))
        };
        let mut sum = self.masked_sum.clone();
        for a in &self.survivors {
            let seed = secret(&self.seed_shares[a]);
            add_mask(&mut sum, &ctx.self_seed(&seed, a), true);
        }
        let graph = self.graph();
        let dropped: Vec<AgentId> = self.shared.difference(&self.survivors).copied().collect();
        for v in &dropped {
            let key = secret(&self.mask_shares[v]);
            debug_assert_eq!(key.public(), self.adverts[v].keys.mask);
            for w in graph[v].intersection(&self.survivors) {
                let shared = key
                    .agree(&self.adverts[w].keys.mask)
                    .expect("low-order keys are refused at advertisement");
                add_mask(&mut sum, &ctx.pair_seed(&shared, w, v), w < v);
            }
        }
        self.step = Step::Done;
        Ok(Outcome {
            survivors: self.survivors.iter().copied().collect(),
            dropped,
            sum,
        })
    }
}
