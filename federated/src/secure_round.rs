//! A training round under secure aggregation, sans IO.
//!
//! The round's cohort is split into random groups of at least
//! `secagg.min_group` agents (at most [`crate::contribution::MAX_GROUPS`]),
//! and each group runs its own SecAgg+ instance ([`crate::secagg`]). The coordinator learns each
//! group's sum of clipped (and, under DP, noised) model changes, and nothing
//! finer. The global update is the mean over every surviving agent.
//!
//! **Contributions without single updates.** Group sums are what can be
//! scored: the exact Shapley value of each group, with the accuracy of
//! "global + mean change of these groups" on the validation set as the
//! utility, is split equally among the group's survivors. Groups are drawn
//! afresh each round, so over rounds an agent's rewards follow the groups it
//! helped or hurt. What this reveals to the coordinator: each group's sum,
//! so a group's mean change over at least `min_group` agents, and which
//! agents were in it. A larger `min_group` hides more and resolves less.

use std::collections::BTreeSet;

use rand::SeedableRng;
use rand_chacha::ChaCha20Rng;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::contribution::random_groups;
use crate::secagg::{Encoding, FromAgent, Server, Setup, Step, ToAgent, graph};
use crate::{AgentId, RejectReason, TaskSpec};

/// What a group's aggregation came to.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum GroupOutcome {
    /// The survivors and the decoded sum of their vectors.
    Sum {
        survivors: Vec<AgentId>,
        sum: Vec<f64>,
    },
    /// Why nothing was aggregated.
    Failed(String),
}

/// One group's aggregation.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Group {
    pub server: Server,
    pub encoding: Encoding,
    /// When the current step closes with whoever answered.
    pub deadline_ms: u64,
    pub outcome: Option<GroupOutcome>,
}

/// Every group of a round.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SecureRound {
    pub groups: Vec<Group>,
    step_timeout_ms: u64,
}

/// Messages for agents.
pub type Outbox = Vec<(AgentId, ToAgent)>;

impl SecureRound {
    /// Splits `selected` into groups and sends each agent its setup.
    pub fn start(
        task: &TaskSpec,
        round: u32,
        attempt: u32,
        selected: &[AgentId],
        dim: usize,
        now_ms: u64,
    ) -> (SecureRound, Outbox) {
        let task_hash = task.hash();
        let seed: [u8; 32] =
            Sha256::digest([&task_hash[..], &round.to_be_bytes(), &attempt.to_be_bytes()].concat())
                .into();
        let members = random_groups(
            selected.to_vec(),
            task.secagg.min_group,
            &mut ChaCha20Rng::from_seed(seed),
        );
        // Each agent's share of the round's noise, so the sum over the
        // whole cohort carries noise_multiplier · clip.
        let noise_sd = task.privacy.as_ref().map_or(0.0, |p| {
            p.noise_multiplier * f64::from(task.secagg.clip) / (selected.len() as f64).sqrt()
        });
        let mut out = Vec::new();
        let groups = members
            .into_iter()
            .enumerate()
            .map(|(g, mut cohort)| {
                cohort.sort_unstable();
                let degree = graph::default_degree(cohort.len());
                let threshold = threshold(task.secagg.threshold, degree);
                let mut graph_seed = seed;
                graph_seed[31] ^= g as u8;
                let setup = Setup {
                    task: task_hash,
                    round,
                    cohort: cohort.clone(),
                    degree,
                    threshold,
                    graph_seed,
                    dim,
                };
                let encoding = Encoding::new(task.secagg.clip, noise_sd, cohort.len());
                for a in &cohort {
                    out.push((
                        *a,
                        ToAgent::Setup {
                            setup: setup.clone(),
                            encoding,
                        },
                    ));
                }
                Group {
                    server: Server::new(setup),
                    encoding,
                    deadline_ms: now_ms.saturating_add(task.round_timeout_ms),
                    outcome: None,
                }
            })
            .collect();
        (
            SecureRound {
                groups,
                step_timeout_ms: task.round_timeout_ms,
            },
            out,
        )
    }

    fn group_of(&self, agent: &AgentId) -> Option<usize> {
        self.groups
            .iter()
            .position(|g| g.server.setup().x_of(agent).is_some())
    }

    /// One message from `agent`, whose identity the transport proved.
    pub fn handle(
        &mut self,
        agent: &AgentId,
        message: FromAgent,
        now_ms: u64,
        gone: &BTreeSet<AgentId>,
    ) -> Result<Outbox, RejectReason> {
        let g = self.group_of(agent).ok_or(RejectReason::NotSelected)?;
        let group = &mut self.groups[g];
        if group.outcome.is_some() {
            return Err(RejectReason::WrongStep {
                got: step_of(&message),
                expected: Step::Done,
            });
        }
        match message {
            FromAgent::Advert(a) => group.server.advert(agent, a)?,
            FromAgent::Shares(s) => group.server.shares(agent, s)?,
            FromAgent::Input(m) => group.server.masked_input(agent, m)?,
            FromAgent::Reveal(r) => group.server.reveal(agent, r)?,
        }
        Ok(advance(group, now_ms, gone, self.step_timeout_ms))
    }

    /// The clock moved: close the steps whose time is up.
    pub fn tick(&mut self, now_ms: u64, gone: &BTreeSet<AgentId>) -> Outbox {
        let timeout = self.step_timeout_ms;
        self.groups
            .iter_mut()
            .flat_map(|g| advance(g, now_ms, gone, timeout))
            .collect()
    }

    /// Whether `agent` is in one of the round's groups.
    pub fn includes(&self, agent: &AgentId) -> bool {
        self.group_of(agent).is_some()
    }

    /// Every agent of every group.
    pub fn members(&self) -> Vec<AgentId> {
        self.groups
            .iter()
            .flat_map(|g| g.server.setup().cohort.iter().copied())
            .collect()
    }

    pub fn is_over(&self) -> bool {
        self.groups.iter().all(|g| g.outcome.is_some())
    }

    /// The earliest step deadline still pending.
    pub fn next_deadline(&self) -> Option<u64> {
        self.groups
            .iter()
            .filter(|g| g.outcome.is_none())
            .map(|g| g.deadline_ms)
            .min()
    }
}

/// Shares that recover an agent's secrets: `fraction` of its `degree`
/// neighbours, rounded up, at least one. Groups have at least three agents
/// (the task check), so `degree >= 2`.
pub fn threshold(fraction: f64, degree: usize) -> usize {
    ((fraction * degree as f64).ceil() as usize).clamp(1, degree.max(1))
}

fn step_of(m: &FromAgent) -> Step {
    match m {
        FromAgent::Advert(_) => Step::Keys,
        FromAgent::Shares(_) => Step::Shares,
        FromAgent::Input(_) => Step::Input,
        FromAgent::Reveal(_) => Step::Reveal,
    }
}

/// Closes the group's steps while nobody is left to wait for or time is up.
fn advance(g: &mut Group, now_ms: u64, gone: &BTreeSet<AgentId>, timeout: u64) -> Outbox {
    let mut out = Vec::new();
    while g.outcome.is_none() {
        let waiting = g.server.waiting_for();
        if waiting.iter().any(|a| !gone.contains(a)) && now_ms < g.deadline_ms {
            break;
        }
        g.deadline_ms = now_ms.saturating_add(timeout);
        let closed = match g.server.step() {
            Step::Keys => g.server.close_keys().map(|m| {
                out.extend(m.into_iter().map(|(a, k)| (a, ToAgent::Keys(k))));
            }),
            Step::Shares => g.server.close_shares().map(|m| {
                out.extend(m.into_iter().map(|(a, s)| (a, ToAgent::Shares(s))));
            }),
            Step::Input => {
                let cohort = g.server.setup().cohort.clone();
                g.server.close_inputs().map(|u| {
                    let to = u.survivors(&cohort).expect("made from this cohort");
                    out.extend(to.into_iter().map(|a| (a, ToAgent::Unmask(u.clone()))));
                })
            }
            Step::Reveal | Step::Done => g.server.finish().map(|o| {
                g.outcome = Some(GroupOutcome::Sum {
                    sum: g.encoding.quantiser().decode_sum(&o.sum),
                    survivors: o.survivors,
                });
            }),
        };
        if let Err(e) = closed {
            g.outcome = Some(GroupOutcome::Failed(e.to_string()));
        }
    }
    out
}
