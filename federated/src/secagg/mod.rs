//! Secure aggregation: SecAgg+ (Bell, Bonawitz, Gascón, Lepoint, Raykova,
//! "Secure Single-Server Aggregation with (Poly)Logarithmic Overhead",
//! CCS 2020), on the semi-honest protocol of Bonawitz et al. (CCS 2017, §4),
//! sans IO.
//!
//! The coordinator learns the sum of the surviving agents' vectors and
//! nothing else about any one of them. Four steps, each one message from
//! every agent still in the round ([`Step`]):
//!
//! 1. **Keys.** Each agent sends two X25519 public keys and Feldman
//!    commitments to two polynomials sharing its self-mask seed `b` and its
//!    mask key `s` ([`KeyAdvert`]). The coordinator relays each agent its
//!    neighbours' keys on the round's sparse graph ([`graph`]).
//! 2. **Shares.** Each agent sends each neighbour, sealed under their
//!    agreed key, its shares of `b` and `s` ([`SealedShare`]); the
//!    coordinator only routes them.
//! 3. **Input.** Each agent sends `y = x + PRG(b) + Σ ±PRG(s_uv)` over its
//!    neighbours `v` that sent shares, modulo 2^32 ([`MaskedInput`]); `x` is
//!    its clipped, quantised vector ([`quant`]). Pairwise masks cancel in
//!    the sum between survivors.
//! 4. **Reveal.** Told who survived ([`Unmask`]), each agent reveals, for
//!    each neighbour, its share of `b` if that neighbour survived and of `s`
//!    if it dropped, never both ([`Reveal`]). The coordinator checks every
//!    share against its commitments, removes the self-masks of survivors and
//!    the pairwise masks of the dropped, and reads the sum.
//!
//! What this trusts: the coordinator is honest-but-curious (it follows the
//! protocol; the malicious-server variant would add a signed consistency
//! round so it cannot tell different agents different survivor sets), and
//! fewer than `threshold` of any agent's neighbours collude with it. Agent
//! identities come from the mutual-TLS connection, so an agent cannot speak
//! for another; every message names its sender and the coordinator refuses
//! one that names someone else.

pub mod client;
pub mod graph;
pub mod mask;
pub mod participant;
pub mod quant;
pub mod server;
pub mod shamir;

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use crate::{AgentId, RejectReason};
pub use client::Client;
pub use participant::Participant;
pub use server::{Outcome, Server};
pub use shamir::Commitments;

/// Bytes of a sealed share: two 32-byte scalars and the GCM tag.
pub const SEALED_SHARE_LEN: usize = 64 + 16;

/// Where a round of secure aggregation is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Step {
    Keys,
    Shares,
    Input,
    Reveal,
    Done,
}

impl std::fmt::Display for Step {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Step::Keys => "key advertisement",
            Step::Shares => "share exchange",
            Step::Input => "masked input",
            Step::Reveal => "unmasking",
            Step::Done => "finished",
        })
    }
}

/// What every party of one round agrees on before it starts.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Setup {
    /// The task's hash; with the round it binds every key and message.
    pub task: [u8; 32],
    pub round: u32,
    /// The sampled agents, sorted; an agent's share index is its position + 1.
    pub cohort: Vec<AgentId>,
    pub degree: usize,
    /// Shares needed to reconstruct a secret, and survivors needed to sum.
    pub threshold: usize,
    pub graph_seed: [u8; 32],
    /// Length of every input vector.
    pub dim: usize,
}

impl Setup {
    pub fn context(&self) -> mask::Context {
        mask::Context {
            task: self.task,
            round: self.round,
        }
    }

    /// The share index of `agent`, if it is in the cohort.
    pub fn x_of(&self, agent: &AgentId) -> Option<u64> {
        self.cohort.binary_search(agent).ok().map(|i| i as u64 + 1)
    }

    pub fn graph(&self) -> BTreeMap<AgentId, BTreeSet<AgentId>> {
        graph::neighbours(&self.cohort, self.degree, self.graph_seed)
    }
}

/// Step 1, agent to coordinator.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyAdvert {
    pub round: u32,
    pub from: AgentId,
    pub keys: PublicKeys,
    pub seed_commitments: Commitments,
    pub mask_commitments: Commitments,
}

/// An agent's two public keys, as relayed to its neighbours.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PublicKeys {
    pub owner: AgentId,
    /// Agrees the keys that seal shares.
    pub cipher: [u8; 32],
    /// Agrees the pairwise mask seeds.
    pub mask: [u8; 32],
}

/// Step 2, one agent's shares for one neighbour, which only that neighbour opens.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SealedShare {
    pub round: u32,
    pub from: AgentId,
    pub to: AgentId,
    pub ciphertext: Vec<u8>,
}

/// Step 3, agent to coordinator.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MaskedInput {
    pub round: u32,
    pub from: AgentId,
    /// Masked words are uniform, so a varint would spend five bytes on most
    /// of them: they travel as four little-endian bytes each.
    #[serde(with = "words")]
    pub values: Vec<u32>,
}

/// `Vec<u32>` as one byte string of little-endian words.
mod words {
    use serde::{Deserializer, Serializer, de::Error as _};

    pub fn serialize<S: Serializer>(values: &[u32], s: S) -> Result<S::Ok, S::Error> {
        let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        s.serialize_bytes(&bytes)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u32>, D::Error> {
        let bytes = yilian_ledger::hexbytes::byte_string(d)?;
        if bytes.len() % 4 != 0 {
            return Err(D::Error::custom(
                "masked input is not a whole number of 32-bit words",
            ));
        }
        Ok(bytes
            .chunks_exact(4)
            .map(|w| u32::from_le_bytes([w[0], w[1], w[2], w[3]]))
            .collect())
    }
}

/// Step 4, coordinator to each survivor: who sent masked input, as one
/// bit per member of the sorted cohort (the Setup lists it already).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Unmask {
    pub round: u32,
    survivors: Vec<u8>,
}

impl Unmask {
    pub fn new(round: u32, cohort: &[AgentId], survivors: &BTreeSet<AgentId>) -> Self {
        let mut bits = vec![0u8; cohort.len().div_ceil(8)];
        for (i, a) in cohort.iter().enumerate() {
            if survivors.contains(a) {
                bits[i / 8] |= 1 << (i % 8);
            }
        }
        Unmask {
            round,
            survivors: bits,
        }
    }

    /// The survivors among `cohort`; refused unless the bits are exactly
    /// the cohort's.
    pub fn survivors(&self, cohort: &[AgentId]) -> Result<Vec<AgentId>, RejectReason> {
        if self.survivors.len() != cohort.len().div_ceil(8) {
            return Err(RejectReason::BadSurvivorList);
        }
        // Bits past the cohort's last member must be clear.
        let used = cohort.len() % 8;
        if used != 0 && self.survivors.last().is_some_and(|b| b >> used != 0) {
            return Err(RejectReason::BadSurvivorList);
        }
        Ok(cohort
            .iter()
            .enumerate()
            .filter(|(i, _)| self.survivors[i / 8] >> (i % 8) & 1 == 1)
            .map(|(_, a)| *a)
            .collect())
    }
}

/// Step 4, agent to coordinator: `(owner, share)` pairs, self-mask seed
/// shares of surviving neighbours and mask-key shares of dropped ones.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reveal {
    pub round: u32,
    pub from: AgentId,
    pub seeds: Vec<(AgentId, [u8; 32])>,
    pub masks: Vec<(AgentId, [u8; 32])>,
}

/// What the coordinator sends an agent during a secure round.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum ToAgent {
    /// Train, then join this round's aggregation with this encoding.
    Setup {
        setup: Setup,
        encoding: Encoding,
    },
    Keys(Vec<PublicKeys>),
    Shares(Vec<SealedShare>),
    Unmask(Unmask),
}

/// What an agent sends the coordinator during a secure round.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum FromAgent {
    Advert(KeyAdvert),
    Shares(Vec<SealedShare>),
    Input(MaskedInput),
    Reveal(Reveal),
}

/// How an agent turns its trained model into the vector it masks: the
/// change to the global model, clipped to `clip` in L2 norm, plus its share
/// of the round's Gaussian noise, saturated to `range` and quantised for
/// sums of up to `group` agents.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Encoding {
    pub clip: f32,
    /// Standard deviation of the noise each agent adds per coordinate.
    pub noise_sd: f64,
    pub range: f64,
    pub group: usize,
}

impl Encoding {
    pub fn new(clip: f32, noise_sd: f64, group: usize) -> Self {
        Encoding {
            clip,
            noise_sd,
            // Six standard deviations of noise beyond the clip are all but never cut.
            range: f64::from(clip) + 6.0 * noise_sd,
            group,
        }
    }

    pub fn quantiser(&self) -> quant::Quantiser {
        quant::Quantiser::new(self.range, self.group)
    }

    /// The clipped change from `global` to `trained`, before noise.
    pub fn clipped_delta(&self, global: &[f32], trained: &[f32]) -> Vec<f64> {
        let delta: Vec<f64> = trained
            .iter()
            .zip(global)
            .map(|(t, g)| f64::from(*t) - f64::from(*g))
            .collect();
        let norm = delta.iter().map(|d| d * d).sum::<f64>().sqrt();
        let k = if norm > f64::from(self.clip) {
            f64::from(self.clip) / norm
        } else {
            1.0
        };
        delta.into_iter().map(|d| d * k).collect()
    }

    /// What the agent masks.
    pub fn encode(&self, global: &[f32], trained: &[f32], rng: &mut impl rand::Rng) -> Vec<u32> {
        use rand_distr::{Distribution, Normal};
        let noise = Normal::new(0.0, self.noise_sd.max(0.0)).expect("a finite, non-negative sd");
        let noisy: Vec<f32> = self
            .clipped_delta(global, trained)
            .into_iter()
            .map(|d| {
                let n = if self.noise_sd > 0.0 {
                    noise.sample(rng)
                } else {
                    0.0
                };
                (d + n) as f32
            })
            .collect();
        self.quantiser().encode(&noisy)
    }
}

#[cfg(test)]
mod tests;
