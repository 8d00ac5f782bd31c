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
pub mod quant;
pub mod server;
pub mod shamir;

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use crate::AgentId;
pub use client::Client;
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
    pub values: Vec<u32>,
}

/// Step 4, coordinator to each survivor: who sent masked input.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Unmask {
    pub round: u32,
    pub survivors: Vec<AgentId>,
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

#[cfg(test)]
mod tests;
