//! The coordinator's round state machine, sans IO.
//!
//! It takes events (an agent recruited or gone, an update arrived, the clock
//! moved) and returns effects (send the model to these agents, this update
//! was rejected, this round closed with these contributions and rewards).
//! The network driver and the tests feed it; its whole state is plain data
//! ([`TaskState`]) that the driver persists after every event, so a restarted
//! coordinator continues exactly where it stopped and an update that was
//! counted before a crash is refused as a duplicate after it.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use rand::seq::SliceRandom;
use rand::{SeedableRng, rngs::StdRng};
use serde::{Deserialize, Serialize};
use yilian_models::{Dataset, ModelSpec, TrainConfig};

use crate::aggregate::{ServerState, Update, apply_strategy, combine, validate};
use crate::contribution::{GtgConfig, group_shapley, gtg_shapley, split_reward};
use crate::dp::RdpAccountant;
use crate::secagg::{Encoding, FromAgent, ToAgent};
use crate::secure_round::{GroupOutcome, Outbox, SecureRound};
use crate::{DataSchema, FlError, RejectReason, TaskSpec};

/// An agent is known by the ed25519 ledger key its certificate carries, which is also
/// its ledger account.
pub type AgentId = [u8; 32];

/// Consecutive failed attempts at one round after which the task gives up.
pub const MAX_ATTEMPTS: u32 = 8;

/// What happened in one closed round.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RoundRecord {
    pub round: u32,
    /// Agents whose update counted, in id order.
    pub participants: Vec<AgentId>,
    /// Selected agents that sent nothing usable before the round closed.
    pub missing: Vec<AgentId>,
    pub rejected: Vec<(AgentId, RejectReason)>,
    pub accuracy: f64,
    pub loss: f64,
    /// GTG-Shapley contribution of each participant (same order).
    pub contributions: Vec<f64>,
    /// Reward units of each participant (same order); they add up to the round's budget share.
    pub rewards: Vec<u64>,
    /// Coalitions evaluated to estimate the contributions.
    pub evaluations: usize,
    /// When the round closed (the clock the machine was given).
    pub closed_at_ms: u64,
    /// Epsilon spent by the task up to and including this round, under DP.
    #[serde(default)]
    pub epsilon: Option<f64>,
    /// Secure-aggregation groups that aggregated nothing, and why.
    #[serde(default)]
    pub failures: Vec<String>,
}

/// Where the task is.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Phase {
    /// Waiting for enough agents (or for the next round to start).
    Waiting,
    Training {
        round: u32,
        attempt: u32,
        selected: Vec<AgentId>,
        deadline_ms: u64,
        received: BTreeMap<AgentId, Update>,
        dropped: BTreeSet<AgentId>,
        rejected: Vec<(AgentId, RejectReason)>,
        /// The groups' aggregations, under secure aggregation.
        #[serde(default)]
        secure: Option<SecureRound>,
    },
    Finished,
    /// The task deadline passed before every round ran.
    Expired,
    /// A buffered task (FedBuff) between its start and its end.
    Buffered(crate::buffered::BufferState),
}

/// Everything the coordinator must remember about a task.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TaskState {
    pub task: TaskSpec,
    pub global: Vec<f32>,
    pub server: ServerState,
    pub recruited: BTreeSet<AgentId>,
    pub phase: Phase,
    pub next_round: u32,
    pub attempts: u32,
    pub history: Vec<RoundRecord>,
    /// Privacy spent so far, under DP.
    #[serde(default)]
    pub accountant: RdpAccountant,
    /// Closed rounds whose ledger entries (contributions, rewards, privacy
    /// spent) are not all acknowledged yet. Saved with the round that
    /// closed, so a restarted coordinator replays them; their transactions
    /// have deterministic ids, so a replay of a written one is a duplicate.
    #[serde(default)]
    pub unrecorded: BTreeSet<u32>,
    /// The round whose updates are being scored off the driver's thread
    /// ([`Effect::Score`]); it takes no more input until [`RoundMachine::scored`].
    #[serde(default)]
    pub scoring: Option<u32>,
}

/// What the driver must do.
#[derive(Clone, Debug, PartialEq)]
pub enum Effect {
    /// Send the current global model and this configuration to the agent.
    SendModel {
        agent: AgentId,
        round: u32,
        config: TrainConfig,
    },
    /// Tell the agent its update did not count (and why).
    Rejected {
        agent: AgentId,
        reason: RejectReason,
    },
    /// A round closed: record contributions and rewards (the ledger).
    RoundClosed(RoundRecord),
    /// Too few updates arrived; the round will be re-run with a new sample.
    RoundAbandoned {
        round: u32,
        received: usize,
    },
    /// A secure-aggregation message for the agent.
    SecAgg {
        agent: AgentId,
        message: ToAgent,
    },
    /// Score a closing round's updates (aggregation, GTG-Shapley, the
    /// coalitions' evaluations), anywhere, and hand the result to
    /// [`RoundMachine::scored`]. Only with [`RoundMachine::offload_scoring`].
    Score(Box<ScoringJob>),
    Finished,
    Expired,
}

/// The state machine around a [`TaskState`] and the validation set.
pub struct RoundMachine {
    pub(crate) state: TaskState,
    pub(crate) validation: Arc<Dataset>,
    pub(crate) params: usize,
    pub(crate) gtg: GtgConfig,
    /// Closing rounds are scored by whoever runs [`Effect::Score`].
    offload: bool,
}

impl RoundMachine {
    /// Starts a task from its initial weights.
    pub fn new(task: TaskSpec, initial: Vec<f32>, validation: Dataset) -> Result<Self, FlError> {
        task.check()?;
        let state = TaskState {
            global: initial,
            server: ServerState::default(),
            recruited: BTreeSet::new(),
            phase: Phase::Waiting,
            next_round: 0,
            attempts: 0,
            history: Vec::new(),
            accountant: RdpAccountant::new(),
            unrecorded: BTreeSet::new(),
            scoring: None,
            task,
        };
        Self::restore(state, validation)
    }

    /// Continues from a persisted state.
    pub fn restore(state: TaskState, validation: Dataset) -> Result<Self, FlError> {
        let params = state.task.model.param_count()?;
        if state.global.len() != params {
            return Err(FlError::Model(yilian_models::ModelError::WeightCount {
                expected: params,
                found: state.global.len(),
            }));
        }
        let schema = DataSchema {
            features: validation.n_features,
            label_column: state.task.schema.label_column.clone(),
            classes: validation.classes,
        };
        schema.check_against(&state.task.schema)?;
        Ok(Self {
            state,
            validation: Arc::new(validation),
            params,
            gtg: GtgConfig::default(),
            offload: false,
        })
    }

    pub fn state(&self) -> &TaskState {
        &self.state
    }

    /// From now on a closing plain round is handed out as [`Effect::Score`]
    /// instead of being scored inside the call that closed it.
    pub fn offload_scoring(&mut self) {
        self.offload = true;
    }

    /// The scoring a restarted driver must run again: the round was closing
    /// when the state was last written.
    pub fn pending_scoring(&self) -> Option<ScoringJob> {
        self.state.scoring.and_then(|_| self.scoring_job())
    }

    /// The result of a [`ScoringJob`]: the round closes with it. A result
    /// for a round not being scored (a job from before a restart) is dropped.
    pub fn scored(&mut self, result: Scored, now_ms: u64) -> Vec<Effect> {
        if self.state.scoring != Some(result.round) {
            return Vec::new();
        }
        self.state.scoring = None;
        let mut effects = vec![Effect::RoundClosed(self.close_scored(result, now_ms))];
        effects.extend(self.advance(now_ms));
        effects
    }

    pub fn spec(&self) -> &ModelSpec {
        &self.state.task.model
    }

    pub fn global(&self) -> &[f32] {
        &self.state.global
    }

    pub fn param_count(&self) -> usize {
        self.params
    }

    pub fn is_done(&self) -> bool {
        matches!(self.state.phase, Phase::Finished | Phase::Expired)
    }

    /// Closed rounds still to be written to the ledger.
    pub fn unrecorded(&self) -> Vec<RoundRecord> {
        self.state
            .history
            .iter()
            .filter(|r| self.state.unrecorded.contains(&r.round))
            .cloned()
            .collect()
    }

    /// Every ledger entry of `round` is acknowledged.
    pub fn mark_recorded(&mut self, round: u32) {
        self.state.unrecorded.remove(&round);
    }

    /// The open round, if any (for a buffered task, the newest model's version).
    pub fn current_round(&self) -> Option<u32> {
        match &self.state.phase {
            Phase::Training { round, .. } => Some(*round),
            Phase::Buffered(_) => Some(self.state.next_round),
            _ => None,
        }
    }

    /// The model an agent sent `round` trains from: the global model, or
    /// for a buffered task the version it was sent, while it may still count.
    pub fn model_for(&self, round: u32) -> &[f32] {
        match &self.state.phase {
            Phase::Buffered(b) => b.models.get(&round).map_or(&self.state.global, |m| m),
            _ => &self.state.global,
        }
    }

    /// When the machine next has something to do without any input.
    pub fn next_deadline(&self) -> Option<u64> {
        match &self.state.phase {
            Phase::Training { deadline_ms, .. } => Some(*deadline_ms),
            Phase::Buffered(b) => b
                .training
                .values()
                .map(|(_, until)| *until)
                .chain(b.cohorts.iter().filter_map(|c| c.secure.next_deadline()))
                .min(),
            _ => None,
        }
    }

    /// For an agent back on a new connection: the model again, if it is
    /// owed one; for a buffered task, the newest, which its update must
    /// then come from. Nothing changes for any other agent.
    pub fn resend_to(&mut self, agent: AgentId) -> Vec<Effect> {
        if let Phase::Buffered(b) = &mut self.state.phase {
            let version = self.state.next_round;
            let Some((sent, _)) = b.training.get_mut(&agent) else {
                return Vec::new();
            };
            if self.state.task.secure_aggregation {
                return Vec::new();
            }
            *sent = version;
            b.models
                .entry(version)
                .or_insert_with(|| self.state.global.clone());
            return vec![Effect::SendModel {
                agent,
                round: version,
                config: self.state.task.train_config(version, &agent),
            }];
        }
        self.resend_effects()
            .into_iter()
            .filter(|e| matches!(e, Effect::SendModel { agent: a, .. } if *a == agent))
            .collect()
    }

    /// For a driver that restarted mid-round: the model must go again to
    /// every selected agent whose update has not been counted. A buffered
    /// task's agents in training are sent the newest model, which is then
    /// the one their update must come from.
    pub fn resend_effects(&mut self) -> Vec<Effect> {
        if let Phase::Buffered(b) = &self.state.phase {
            let training: Vec<AgentId> = b.training.keys().copied().collect();
            return training
                .into_iter()
                .flat_map(|a| self.resend_to(a))
                .collect();
        }
        match &self.state.phase {
            Phase::Training {
                round,
                selected,
                received,
                dropped,
                ..
            } => selected
                .iter()
                .filter(|a| !received.contains_key(*a) && !dropped.contains(*a))
                .map(|&agent| Effect::SendModel {
                    agent,
                    round: *round,
                    config: self.state.task.train_config(*round, &agent),
                })
                .collect(),
            _ => Vec::new(),
        }
    }

    /// Admits an agent whose data matches the task's schema.
    pub fn recruit(&mut self, agent: AgentId, schema: &DataSchema) -> Result<(), FlError> {
        schema.check_against(&self.state.task.schema)?;
        self.state.recruited.insert(agent);
        Ok(())
    }

    /// An agent disconnected or withdrew.
    pub fn leave(&mut self, agent: AgentId, now_ms: u64) -> Vec<Effect> {
        self.state.recruited.remove(&agent);
        if let Phase::Training {
            selected,
            received,
            dropped,
            secure,
            ..
        } = &mut self.state.phase
            && selected.contains(&agent)
            && (secure.is_some() || !received.contains_key(&agent))
        {
            dropped.insert(agent);
        }
        self.advance(now_ms)
    }

    /// A recruited agent sits out the open round (its owner's schedule
    /// keeps it from training): the round stops waiting for it, and it
    /// stays recruited for later rounds.
    pub fn sit_out(&mut self, agent: AgentId, now_ms: u64) -> Vec<Effect> {
        if let Phase::Training {
            selected,
            received,
            dropped,
            ..
        } = &mut self.state.phase
            && selected.contains(&agent)
            && !received.contains_key(&agent)
        {
            dropped.insert(agent);
        }
        self.advance(now_ms)
    }

    /// The clock moved: start a round, or close one whose deadline passed.
    pub fn tick(&mut self, now_ms: u64) -> Vec<Effect> {
        self.advance(now_ms)
    }

    /// An agent's trained model for `round`.
    pub fn submit(
        &mut self,
        agent: AgentId,
        round: u32,
        update: Update,
        now_ms: u64,
    ) -> Vec<Effect> {
        if matches!(self.state.phase, Phase::Buffered(_)) {
            return self.submit_buffered(agent, round, update, now_ms);
        }
        if self.state.scoring.is_some() {
            // The round closed; its updates are being scored.
            return vec![Effect::Rejected {
                agent,
                reason: RejectReason::NoOpenRound,
            }];
        }
        let params = self.params;
        let verdict = match &mut self.state.phase {
            Phase::Training {
                round: current,
                selected,
                received,
                rejected,
                dropped,
                secure,
                ..
            } => {
                let verdict = if secure.is_some() {
                    Err(RejectReason::PlainUpdate)
                } else if round != *current {
                    Err(RejectReason::WrongRound {
                        got: round,
                        current: *current,
                    })
                } else if !selected.contains(&agent) || dropped.contains(&agent) {
                    Err(RejectReason::NotSelected)
                } else if received.contains_key(&agent) {
                    Err(RejectReason::Duplicate)
                } else {
                    validate(&update, params)
                };
                match &verdict {
                    Ok(()) => {
                        received.insert(agent, update);
                    }
                    // A repeat of a counted update is harmless; anything else is on record.
                    Err(RejectReason::Duplicate | RejectReason::WrongRound { .. }) => {}
                    Err(reason) => rejected.push((agent, reason.clone())),
                }
                verdict
            }
            _ => Err(RejectReason::NoOpenRound),
        };
        let mut effects = match verdict {
            Ok(()) => Vec::new(),
            Err(reason) => vec![Effect::Rejected { agent, reason }],
        };
        effects.extend(self.advance(now_ms));
        effects
    }

    /// A secure-aggregation message from `agent`, whose identity the transport proved.
    pub fn secagg(&mut self, agent: AgentId, message: FromAgent, now_ms: u64) -> Vec<Effect> {
        if matches!(self.state.phase, Phase::Buffered(_)) {
            return self.secagg_buffered(agent, message, now_ms);
        }
        let verdict = match &mut self.state.phase {
            Phase::Training {
                secure: Some(sr),
                dropped,
                rejected,
                deadline_ms,
                ..
            } => {
                let r = sr.handle(&agent, message, now_ms, dropped);
                if let Some(d) = sr.next_deadline() {
                    *deadline_ms = d;
                }
                if let Err(reason) = &r
                    && !matches!(reason, RejectReason::Duplicate)
                {
                    rejected.push((agent, reason.clone()));
                }
                r
            }
            Phase::Training { .. } => Err(RejectReason::NotSecure),
            _ => Err(RejectReason::NoOpenRound),
        };
        let mut effects = match verdict {
            Ok(out) => secagg_effects(out).collect(),
            Err(reason) => vec![Effect::Rejected { agent, reason }],
        };
        effects.extend(self.advance(now_ms));
        effects
    }

    fn advance(&mut self, now_ms: u64) -> Vec<Effect> {
        if matches!(self.state.phase, Phase::Buffered(_)) {
            return self.advance_buffered(now_ms);
        }
        if self.state.scoring.is_some() {
            return Vec::new();
        }
        let mut effects = Vec::new();
        loop {
            if let Phase::Training {
                secure: Some(sr),
                dropped,
                deadline_ms,
                ..
            } = &mut self.state.phase
            {
                effects.extend(secagg_effects(sr.tick(now_ms, dropped)));
                if let Some(d) = sr.next_deadline() {
                    *deadline_ms = d;
                }
                if !sr.is_over() {
                    return effects;
                }
                match self.close_secure_round(now_ms) {
                    Ok(record) => effects.push(Effect::RoundClosed(record)),
                    Err((round, failures)) => {
                        for f in failures {
                            tracing::warn!(round, "secure aggregation failed: {f}");
                        }
                        effects.push(Effect::RoundAbandoned { round, received: 0 });
                        self.state.attempts += 1;
                        if self.state.attempts >= MAX_ATTEMPTS {
                            self.state.phase = Phase::Expired;
                            effects.push(Effect::Expired);
                            return effects;
                        }
                    }
                }
                continue;
            }
            match &self.state.phase {
                Phase::Finished | Phase::Expired | Phase::Buffered(_) => return effects,
                Phase::Waiting => {
                    if self.state.next_round >= self.state.task.rounds {
                        self.state.phase = Phase::Finished;
                        effects.push(Effect::Finished);
                        return effects;
                    }
                    if self.state.task.deadline_ms.is_some_and(|d| now_ms >= d) {
                        self.state.phase = Phase::Expired;
                        effects.push(Effect::Expired);
                        return effects;
                    }
                    if self.state.recruited.len() < self.state.task.min_agents {
                        return effects;
                    }
                    if self.state.task.aggregation != crate::task::Aggregation::Synchronous {
                        effects.extend(self.start_buffered(now_ms));
                        return effects;
                    }
                    effects.extend(self.start_round(now_ms));
                    return effects;
                }
                Phase::Training {
                    round,
                    selected,
                    deadline_ms,
                    received,
                    dropped,
                    ..
                } => {
                    let outstanding = selected
                        .iter()
                        .filter(|a| !received.contains_key(*a) && !dropped.contains(*a))
                        .count();
                    let (round, got) = (*round, received.len());
                    let enough = got >= self.state.task.min_agents;
                    let over = outstanding == 0 || now_ms >= *deadline_ms;
                    if !over {
                        return effects;
                    }
                    if enough && self.offload {
                        if let Some(job) = self.scoring_job() {
                            self.state.scoring = Some(round);
                            effects.push(Effect::Score(Box::new(job)));
                        }
                        return effects;
                    }
                    if enough {
                        let record = self.close_round(now_ms);
                        effects.push(Effect::RoundClosed(record));
                    } else {
                        effects.push(Effect::RoundAbandoned {
                            round,
                            received: got,
                        });
                        self.state.attempts += 1;
                        self.state.phase = Phase::Waiting;
                        if self.state.attempts >= MAX_ATTEMPTS {
                            self.state.phase = Phase::Expired;
                            effects.push(Effect::Expired);
                            return effects;
                        }
                    }
                }
            }
        }
    }

    fn start_round(&mut self, now_ms: u64) -> Vec<Effect> {
        let round = self.state.next_round;
        let attempt = self.state.attempts;
        let mut pool: Vec<AgentId> = self.state.recruited.iter().copied().collect();
        let seed = u64::from(round) << 32 | u64::from(attempt);
        let task_seed =
            u64::from_le_bytes(self.state.task.hash()[..8].try_into().unwrap_or([0; 8]));
        pool.shuffle(&mut StdRng::seed_from_u64(seed ^ task_seed));
        pool.truncate(self.state.task.agents_per_round);
        pool.sort_unstable();
        if let Some(p) = &self.state.task.privacy {
            let q = self.sampling_rate(pool.len());
            let next = self
                .state
                .accountant
                .epsilon_after(q, p.noise_multiplier, 1, p.delta);
            if next > p.epsilon_budget {
                // Stop before the budget would be exceeded.
                self.state.phase = Phase::Finished;
                return vec![Effect::Finished];
            }
        }
        let mut effects: Vec<Effect> = pool
            .iter()
            .map(|&agent| Effect::SendModel {
                agent,
                round,
                config: self.state.task.train_config(round, &agent),
            })
            .collect();
        // The setup goes first, so an agent knows before it trains that its
        // model must leave it only masked.
        let secure = self.state.task.secure_aggregation.then(|| {
            let (sr, out) =
                SecureRound::start(&self.state.task, round, attempt, &pool, self.params, now_ms);
            let sends = std::mem::take(&mut effects);
            effects.extend(secagg_effects(out));
            effects.extend(sends);
            sr
        });
        self.state.phase = Phase::Training {
            round,
            attempt,
            selected: pool,
            deadline_ms: now_ms.saturating_add(self.state.task.round_timeout_ms),
            received: BTreeMap::new(),
            dropped: BTreeSet::new(),
            rejected: Vec::new(),
            secure,
        };
        effects
    }

    /// What scoring the open plain round needs, from its updates as received.
    fn scoring_job(&self) -> Option<ScoringJob> {
        let Phase::Training {
            round,
            received,
            secure: None,
            ..
        } = &self.state.phase
        else {
            return None;
        };
        Some(ScoringJob {
            round: *round,
            model: self.state.task.model.clone(),
            robust: self.state.task.robust,
            global: self.state.global.clone(),
            updates: received.values().cloned().collect(),
            validation: self.validation.clone(),
            gtg: GtgConfig {
                seed: u64::from(*round),
                ..self.gtg
            },
            dp: self
                .state
                .task
                .privacy
                .as_ref()
                .map(|p| (p.noise_multiplier, self.state.task.secagg.clip)),
        })
    }

    fn close_round(&mut self, now_ms: u64) -> RoundRecord {
        let job = self
            .scoring_job()
            .expect("close_round is only called on a plain round");
        self.close_scored(job.run(), now_ms)
    }

    /// Closes the open plain round with its scoring.
    fn close_scored(&mut self, scored: Scored, now_ms: u64) -> RoundRecord {
        let Phase::Training {
            round,
            selected,
            received,
            rejected,
            ..
        } = std::mem::replace(&mut self.state.phase, Phase::Waiting)
        else {
            unreachable!("a round is scored only while training")
        };
        debug_assert_eq!(round, scored.round);
        self.conclude(
            Closing {
                round,
                selected,
                participants: received.keys().copied().collect(),
                rejected,
                contributions: scored.contributions,
                evaluations: scored.evaluations,
                failures: Vec::new(),
                now_ms,
            },
            scored.candidate,
        )
    }

    /// The fraction of recruited agents a round of `selected` samples.
    fn sampling_rate(&self, selected: usize) -> f64 {
        let pool = self.state.recruited.len().max(selected).max(1);
        selected as f64 / pool as f64
    }

    /// Records one round under DP; the task's epsilon so far.
    fn spend_privacy(&mut self, selected: usize) -> Option<f64> {
        let p = self.state.task.privacy.clone()?;
        let q = self.sampling_rate(selected);
        self.state
            .accountant
            .compose_subsampled_gaussian(q, p.noise_multiplier, 1);
        Some(self.state.accountant.epsilon(p.delta))
    }

    /// Adds the central DP noise of `n` clipped changes' mean to `candidate`:
    /// Gaussian of `noise_multiplier · clip` on their sum.
    pub(crate) fn add_central_noise(&self, candidate: &mut [f32], noise_multiplier: f64, n: usize) {
        use rand_distr::{Distribution, Normal};
        let sd = noise_multiplier * f64::from(self.state.task.secagg.clip);
        let noise = Normal::new(0.0, sd).expect("a finite, non-negative sd");
        let mut rng = rand::rng();
        for c in candidate.iter_mut() {
            *c = (f64::from(*c) + noise.sample(&mut rng) / n.max(1) as f64) as f32;
        }
    }

    /// The global model plus the mean change of `groups` (indices into `sums`).
    pub(crate) fn with_groups(
        &self,
        sums: &[(Vec<AgentId>, Vec<f64>)],
        groups: &[usize],
    ) -> Vec<f32> {
        let n: usize = groups.iter().map(|&g| sums[g].0.len()).sum();
        if n == 0 {
            return self.state.global.clone();
        }
        let mut out: Vec<f64> = self.state.global.iter().map(|g| f64::from(*g)).collect();
        for &g in groups {
            for (o, s) in out.iter_mut().zip(&sums[g].1) {
                *o += s / n as f64;
            }
        }
        out.into_iter().map(|x| x as f32).collect()
    }

    /// Closes a secure round from its groups' sums; the failures if none aggregated.
    fn close_secure_round(&mut self, now_ms: u64) -> Result<RoundRecord, (u32, Vec<String>)> {
        let Phase::Training {
            round,
            selected,
            rejected,
            secure: Some(sr),
            ..
        } = std::mem::replace(&mut self.state.phase, Phase::Waiting)
        else {
            unreachable!("close_secure_round is only called on a secure round")
        };
        let (sums, failures) = group_sums(sr, "the round closed before the group finished");
        if sums.is_empty() {
            return Err((round, failures));
        }
        let score = self.score_groups(&sums);
        Ok(self.conclude(
            Closing {
                round,
                selected,
                participants: score.participants,
                rejected,
                contributions: score.contributions,
                evaluations: score.evaluations,
                failures,
                now_ms,
            },
            score.candidate,
        ))
    }

    /// Scores group sums: the mean change of all of them, and group Shapley
    /// values split among each group's members.
    pub(crate) fn score_groups(&self, sums: &[GroupSum]) -> GroupScore {
        let all: Vec<usize> = (0..sums.len()).collect();
        let candidate = self.with_groups(sums, &all);
        let mut participants: Vec<AgentId> = sums.iter().flat_map(|(m, _)| m.clone()).collect();
        participants.sort_unstable();
        let groups: Vec<Vec<usize>> = sums
            .iter()
            .map(|(m, _)| {
                m.iter()
                    .map(|a| participants.binary_search(a).expect("a participant"))
                    .collect()
            })
            .collect();
        let contributions = group_shapley(&groups, participants.len(), |c| {
            yilian_models::evaluate(
                &self.state.task.model,
                &self.with_groups(sums, c),
                &self.validation,
            )
            .map(|m| m.accuracy)
            .unwrap_or(0.0)
        });
        GroupScore {
            participants,
            candidate,
            contributions,
            evaluations: 1 << sums.len(),
        }
    }

    /// Applies the strategy to `candidate`, evaluates, splits the round's
    /// reward by contribution, spends privacy, and records the round (owed
    /// to the ledger until the driver marks it recorded).
    pub(crate) fn conclude(&mut self, c: Closing, candidate: Vec<f32>) -> RoundRecord {
        let global = apply_strategy(
            self.state.task.strategy,
            &mut self.state.server,
            &self.state.global,
            candidate,
        );
        let metrics = yilian_models::evaluate(&self.state.task.model, &global, &self.validation);
        let (accuracy, loss) = metrics.map_or((0.0, f64::INFINITY), |m| (m.accuracy, m.loss));
        self.state.global = global;
        let rewards = split_reward(self.state.task.round_budget(c.round), &c.contributions);
        let epsilon = self.spend_privacy(c.selected.len());
        let record = RoundRecord {
            round: c.round,
            missing: c
                .selected
                .iter()
                .filter(|a| c.participants.binary_search(a).is_err())
                .copied()
                .collect(),
            participants: c.participants,
            rejected: c.rejected,
            accuracy,
            loss,
            contributions: c.contributions,
            rewards,
            evaluations: c.evaluations,
            closed_at_ms: c.now_ms,
            epsilon,
            failures: c.failures,
        };
        self.state.history.push(record.clone());
        self.state.unrecorded.insert(c.round);
        self.state.next_round = c.round + 1;
        self.state.attempts = 0;
        record
    }
}

/// The coordinator's secure-aggregation messages as effects.
pub(crate) fn secagg_effects(out: Outbox) -> impl Iterator<Item = Effect> {
    out.into_iter()
        .map(|(agent, message)| Effect::SecAgg { agent, message })
}

/// A group's survivors and the sum of their vectors.
pub(crate) type GroupSum = (Vec<AgentId>, Vec<f64>);

/// Group sums scored ([`RoundMachine::score_groups`]).
pub(crate) struct GroupScore {
    /// In id order.
    pub participants: Vec<AgentId>,
    pub candidate: Vec<f32>,
    pub contributions: Vec<f64>,
    pub evaluations: usize,
}

/// The survivors and sums of a secure round's groups that aggregated, and
/// why the others did not (`unfinished` for those still running).
pub(crate) fn group_sums(sr: SecureRound, unfinished: &str) -> (Vec<GroupSum>, Vec<String>) {
    let mut sums = Vec::new();
    let mut failures = Vec::new();
    for g in sr.groups {
        match g.outcome {
            Some(GroupOutcome::Sum { survivors, sum }) => sums.push((survivors, sum)),
            Some(GroupOutcome::Failed(why)) => failures.push(why),
            None => failures.push(unfinished.to_owned()),
        }
    }
    (sums, failures)
}

/// What a closing round hands to [`RoundMachine::conclude`].
pub(crate) struct Closing {
    pub round: u32,
    pub selected: Vec<AgentId>,
    /// In id order.
    pub participants: Vec<AgentId>,
    pub rejected: Vec<(AgentId, RejectReason)>,
    pub contributions: Vec<f64>,
    pub evaluations: usize,
    pub failures: Vec<String>,
    pub now_ms: u64,
}

/// Scoring a closing plain round, self-contained so that a driver may run
/// it on any thread: the candidate model (the robust rule, or DP-FedAvg's
/// clipped, noised mean) and each update's GTG-Shapley contribution.
#[derive(Clone, Debug, PartialEq)]
pub struct ScoringJob {
    pub round: u32,
    model: ModelSpec,
    robust: crate::Robust,
    global: Vec<f32>,
    /// In agent id order, as the participants.
    updates: Vec<Update>,
    validation: Arc<Dataset>,
    gtg: GtgConfig,
    /// Noise multiplier and clip, under DP.
    dp: Option<(f64, f32)>,
}

/// What a [`ScoringJob`] found.
#[derive(Clone, Debug, PartialEq)]
pub struct Scored {
    pub round: u32,
    candidate: Vec<f32>,
    contributions: Vec<f64>,
    evaluations: usize,
}

impl ScoringJob {
    pub fn run(self) -> Scored {
        let updates: Vec<&Update> = self.updates.iter().collect();
        let candidate = match self.dp {
            None => combine(&updates, self.robust),
            Some((z, clip)) => central_dp_mean(&self.global, &updates, z, clip),
        };
        let utility = |coalition: &[usize]| {
            let weights = if coalition.is_empty() {
                self.global.clone()
            } else {
                let members: Vec<&Update> = coalition.iter().map(|&i| updates[i]).collect();
                combine(&members, self.robust)
            };
            yilian_models::evaluate(&self.model, &weights, &self.validation)
                .map(|m| m.accuracy)
                // A coalition whose model cannot even be evaluated adds nothing.
                .unwrap_or(0.0)
        };
        let estimate = gtg_shapley(updates.len(), utility, self.gtg);
        Scored {
            round: self.round,
            candidate,
            contributions: estimate.values,
            evaluations: estimate.evaluations,
        }
    }
}

/// DP-FedAvg without secure aggregation: clipped changes averaged with
/// equal weights, and Gaussian noise of `noise_multiplier · clip` on their
/// sum, added here.
fn central_dp_mean(
    global: &[f32],
    updates: &[&Update],
    noise_multiplier: f64,
    clip: f32,
) -> Vec<f32> {
    use rand_distr::{Distribution, Normal};
    let enc = Encoding::new(clip, 0.0, updates.len());
    let mut sum = vec![0f64; global.len()];
    for u in updates {
        for (s, d) in sum.iter_mut().zip(enc.clipped_delta(global, &u.weights)) {
            *s += d;
        }
    }
    let sd = noise_multiplier * f64::from(clip);
    let noise = Normal::new(0.0, sd).expect("a finite, non-negative sd");
    let mut rng = rand::rng();
    let n = updates.len() as f64;
    global
        .iter()
        .zip(sum)
        .map(|(g, s)| (f64::from(*g) + (s + noise.sample(&mut rng)) / n) as f32)
        .collect()
}
