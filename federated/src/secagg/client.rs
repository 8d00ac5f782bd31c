//! The agent's side of a SecAgg+ round, sans IO: each step takes what the
//! coordinator relayed and returns the agent's next message.

use std::collections::{BTreeMap, BTreeSet};

use curve25519_dalek::scalar::Scalar;
use rand::CryptoRng;
use zeroize::Zeroizing;

use super::mask::SecretScalar;
use super::{
    KeyAdvert, MaskedInput, PublicKeys, Reveal, SEALED_SHARE_LEN, SealedShare, Setup, Step, Unmask,
    shamir,
};
use crate::{AgentId, RejectReason};

/// One agent's state for one round. Its secrets never leave it except as
/// shares sealed to neighbours; dropping it zeroizes them.
pub struct Client {
    setup: Setup,
    me: AgentId,
    neighbours: BTreeSet<AgentId>,
    cipher: SecretScalar,
    mask: SecretScalar,
    seed: SecretScalar,
    step: Step,
    /// Shares dealt for each neighbour: (of the seed, of the mask key).
    dealt: BTreeMap<AgentId, (SecretScalar, SecretScalar)>,
    /// Neighbours that advertised keys, and the secrets agreed with each.
    agreed: BTreeMap<AgentId, Agreed>,
    /// Neighbours' shares this agent holds.
    held: BTreeMap<AgentId, (SecretScalar, SecretScalar)>,
    /// Neighbours that sent shares: the pairwise masks this agent adds.
    senders: BTreeSet<AgentId>,
}

/// The X25519 secrets agreed with one neighbour, once per round.
struct Agreed {
    /// Keys the shares sealed between the two.
    cipher: Zeroizing<[u8; 32]>,
    /// Seeds their pairwise mask.
    mask: Zeroizing<[u8; 32]>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("round", &self.setup.round)
            .field("step", &self.step)
            .finish_non_exhaustive()
    }
}

impl Client {
    /// Joins the round: fresh keys and seed, shares dealt, step 1's message.
    pub fn new(
        setup: Setup,
        me: AgentId,
        rng: &mut impl CryptoRng,
    ) -> Result<(Client, KeyAdvert), RejectReason> {
        let neighbours = setup.graph().remove(&me).ok_or(RejectReason::NotSelected)?;
        let t = setup.threshold;
        if neighbours.len() < t {
            return Err(RejectReason::TooFewNeighbours {
                got: neighbours.len(),
                needed: t,
            });
        }
        let xs: Vec<u64> = neighbours
            .iter()
            .map(|n| setup.x_of(n).expect("neighbours are in the cohort"))
            .collect();
        let (cipher, mask, seed) = (
            SecretScalar::random(rng),
            SecretScalar::random(rng),
            SecretScalar::random(rng),
        );
        let (seed_shares, seed_commitments) = shamir::deal(seed.scalar(), t, &xs, rng);
        let (mask_shares, mask_commitments) = shamir::deal(mask.scalar(), t, &xs, rng);
        let dealt = neighbours
            .iter()
            .zip(seed_shares.into_iter().zip(mask_shares))
            .map(|(n, (s, m))| {
                (
                    *n,
                    (SecretScalar::from_scalar(s), SecretScalar::from_scalar(m)),
                )
            })
            .collect();
        let advert = KeyAdvert {
            round: setup.round,
            from: me,
            keys: PublicKeys {
                owner: me,
                cipher: cipher.public(),
                mask: mask.public(),
            },
            seed_commitments,
            mask_commitments,
        };
        let client = Client {
            setup,
            me,
            neighbours,
            cipher,
            mask,
            seed,
            step: Step::Shares,
            dealt,
            agreed: BTreeMap::new(),
            held: BTreeMap::new(),
            senders: BTreeSet::new(),
        };
        Ok((client, advert))
    }

    fn expect(&self, step: Step) -> Result<(), RejectReason> {
        if self.step == step {
            Ok(())
        } else {
            Err(RejectReason::WrongStep {
                got: step,
                expected: self.step,
            })
        }
    }

    /// Step 2: seals this agent's shares to each neighbour that advertised.
    pub fn share_keys(&mut self, keys: &[PublicKeys]) -> Result<Vec<SealedShare>, RejectReason> {
        self.expect(Step::Shares)?;
        let mut got = BTreeMap::new();
        for k in keys {
            if !self.neighbours.contains(&k.owner) {
                return Err(RejectReason::NotNeighbour { agent: k.owner });
            }
            if got.insert(k.owner, *k).is_some() {
                return Err(RejectReason::Duplicate);
            }
        }
        if got.len() < self.setup.threshold {
            return Err(RejectReason::TooFewNeighbours {
                got: got.len(),
                needed: self.setup.threshold,
            });
        }
        let ctx = self.setup.context();
        let mut agreed = BTreeMap::new();
        for (owner, k) in &got {
            let low = RejectReason::LowOrderKey { agent: *owner };
            let cipher = self.cipher.agree(&k.cipher).ok_or(low.clone())?;
            let mask = self.mask.agree(&k.mask).ok_or(low)?;
            agreed.insert(*owner, Agreed { cipher, mask });
        }
        let mut out = Vec::with_capacity(agreed.len());
        for (owner, Agreed { cipher: shared, .. }) in &agreed {
            let (s, m) = &self.dealt[owner];
            let mut plain = Zeroizing::new([0u8; 64]);
            plain[..32].copy_from_slice(&s.scalar().to_bytes());
            plain[32..].copy_from_slice(&m.scalar().to_bytes());
            out.push(SealedShare {
                round: self.setup.round,
                from: self.me,
                to: *owner,
                ciphertext: ctx
                    .share_key(shared, &self.me, owner)
                    .seal(&ctx.share_aad(&self.me, owner), &*plain),
            });
        }
        self.agreed = agreed;
        self.dealt.clear();
        self.step = Step::Input;
        Ok(out)
    }

    /// Step 3: opens the neighbours' shares and masks `input`.
    ///
    /// A share that does not open is not held (this agent cannot help
    /// recover that neighbour), but the pairwise mask with its sender is
    /// still added: the coordinator counts the sender as having shared.
    pub fn masked_input(
        &mut self,
        shares: &[SealedShare],
        input: &[u32],
    ) -> Result<MaskedInput, RejectReason> {
        self.expect(Step::Input)?;
        if input.len() != self.setup.dim {
            return Err(RejectReason::WrongShape {
                got: input.len(),
                expected: self.setup.dim,
            });
        }
        let ctx = self.setup.context();
        let mut senders = BTreeSet::new();
        let mut held = BTreeMap::new();
        for s in shares {
            if s.round != self.setup.round {
                return Err(RejectReason::WrongRound {
                    got: s.round,
                    current: self.setup.round,
                });
            }
            if s.to != self.me {
                return Err(RejectReason::NotNeighbour { agent: s.to });
            }
            let Some(Agreed { cipher: shared, .. }) = self.agreed.get(&s.from) else {
                return Err(RejectReason::NotNeighbour { agent: s.from });
            };
            if !senders.insert(s.from) {
                return Err(RejectReason::Duplicate);
            }
            if s.ciphertext.len() != SEALED_SHARE_LEN {
                continue;
            }
            let opened = ctx
                .share_key(shared, &s.from, &self.me)
                .open(&ctx.share_aad(&s.from, &self.me), &s.ciphertext);
            let Some(plain) = opened else { continue };
            let scalar = |b: &[u8]| {
                Scalar::from_canonical_bytes(b.try_into().expect("32 bytes"))
                    .into_option()
                    .map(SecretScalar::from_scalar)
            };
            if let (Some(sd), Some(mk)) = (scalar(&plain[..32]), scalar(&plain[32..])) {
                held.insert(s.from, (sd, mk));
            }
        }
        let mut values = input.to_vec();
        super::mask::add_mask(&mut values, &ctx.self_seed(&self.seed, &self.me), false);
        for v in &senders {
            let shared = &self.agreed[v].mask;
            // The lower id adds the mask, the higher subtracts it.
            super::mask::add_mask(
                &mut values,
                &ctx.pair_seed(shared, &self.me, v),
                self.me > *v,
            );
        }
        self.senders = senders;
        self.held = held;
        self.step = Step::Reveal;
        Ok(MaskedInput {
            round: self.setup.round,
            from: self.me,
            values,
        })
    }

    /// Step 4: reveals, for each neighbour, the one share the survivor list calls for.
    pub fn reveal(&mut self, unmask: &Unmask) -> Result<Reveal, RejectReason> {
        self.expect(Step::Reveal)?;
        if unmask.round != self.setup.round {
            return Err(RejectReason::WrongRound {
                got: unmask.round,
                current: self.setup.round,
            });
        }
        let survivors: BTreeSet<AgentId> =
            unmask.survivors(&self.setup.cohort)?.into_iter().collect();
        if survivors.len() < self.setup.threshold {
            return Err(RejectReason::TooFewSurvivors {
                got: survivors.len(),
                needed: self.setup.threshold,
            });
        }
        if !survivors.contains(&self.me) {
            return Err(RejectReason::NotSelected);
        }
        if let Some(a) = survivors.iter().find(|a| self.setup.x_of(a).is_none()) {
            return Err(RejectReason::NotNeighbour { agent: *a });
        }
        let mut seeds = Vec::new();
        let mut masks = Vec::new();
        for (owner, (sd, mk)) in &self.held {
            if survivors.contains(owner) {
                seeds.push((*owner, sd.scalar().to_bytes()));
            } else {
                masks.push((*owner, mk.scalar().to_bytes()));
            }
        }
        self.held.clear();
        self.step = Step::Done;
        Ok(Reveal {
            round: self.setup.round,
            from: self.me,
            seeds,
            masks,
        })
    }
}
