//! Buffered asynchronous aggregation (FedBuff, Nguyen et al., AISTATS
//! 2022) in the round machine, sans IO; the task file's
//! `aggregation = { buffered = { size = K, max_staleness = S } }`.
//!
//! Up to `agents_per_round` agents train at once. Each is sent the newest
//! global model, with its version (the number of models made so far) as
//! the "round". Its update is refused if `S` or more models were made since
//! that version, and otherwise enters the buffer as its change from the
//! model it started from, weighted by `1/sqrt(1 + staleness)`. Every `K`
//! updates the buffer's sample-weighted mean change, through the task's
//! strategy, makes the next global model: one closed round, scored by
//! GTG-Shapley over the buffer's updates and paid like a synchronous one.
//! An agent counts at most once per buffer and is sent the new model once
//! the buffer it is in has been applied. When every recruited agent's
//! update is in the buffer and nobody else trains, the buffer is applied as
//! it is, so a task whose agents left does not wait forever.
//!
//! Under secure aggregation each buffer is one SecAgg+ cohort: `K` idle
//! agents start together from one model, mask their changes, and the
//! coordinator learns only the cohort's sum, which it applies with the
//! cohort's staleness once it is revealed. Several cohorts may be in
//! flight at once (`agents_per_round / K`).

use std::collections::{BTreeMap, BTreeSet};

use rand::seq::SliceRandom;
use rand::{SeedableRng, rngs::StdRng};
use serde::{Deserialize, Serialize};

use crate::aggregate::{Update, validate};
use crate::contribution::{GtgConfig, gtg_shapley};
use crate::round::{Closing, Effect, Phase, RoundMachine, group_sums, secagg_effects};
use crate::secagg::{Encoding, FromAgent};
use crate::secure_round::SecureRound;
use crate::task::Aggregation;
use crate::{AgentId, RejectReason};

/// Members of a cohort that left the task.
fn absent(secure: &SecureRound, recruited: &BTreeSet<AgentId>) -> BTreeSet<AgentId> {
    secure
        .members()
        .into_iter()
        .filter(|a| !recruited.contains(a))
        .collect()
}

/// FedBuff's staleness weight.
pub fn staleness_weight(staleness: u32) -> f64 {
    1.0 / (1.0 + f64::from(staleness)).sqrt()
}

/// An update in the buffer: its change from the model it started from.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Buffered {
    pub agent: AgentId,
    pub version: u32,
    pub samples: u64,
    pub delta: Vec<f32>,
}

/// A secure cohort in flight: the version its members started from.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Cohort {
    pub version: u32,
    pub secure: SecureRound,
}

/// Where a buffered task is.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct BufferState {
    /// Agents training now, with the version they were sent and when they
    /// must have answered.
    pub training: BTreeMap<AgentId, (u32, u64)>,
    pub buffer: Vec<Buffered>,
    pub rejected: Vec<(AgentId, RejectReason)>,
    /// The models agents in training started from, by version (changes are
    /// measured against them).
    pub models: BTreeMap<u32, Vec<f32>>,
    /// Under secure aggregation: cohorts in flight, in start order.
    pub cohorts: Vec<Cohort>,
    /// Cohorts started so far (separates their SecAgg sessions).
    pub cohorts_started: u32,
}

impl RoundMachine {
    fn buffer_params(&self) -> (usize, u32) {
        match self.state.task.aggregation {
            Aggregation::Buffered {
                size,
                max_staleness,
            } => (size, max_staleness),
            Aggregation::Synchronous => (usize::MAX, 0),
        }
    }

    /// The buffered phase begins: the first agents are sent the model.
    pub(crate) fn start_buffered(&mut self, now_ms: u64) -> Vec<Effect> {
        let mut b = BufferState::default();
        b.models
            .insert(self.state.next_round, self.state.global.clone());
        self.state.phase = Phase::Buffered(b);
        self.assign(now_ms)
    }

    fn buffer_state(&mut self) -> Option<&mut BufferState> {
        match &mut self.state.phase {
            Phase::Buffered(b) => Some(b),
            _ => None,
        }
    }

    /// Sends the newest model to idle agents until `agents_per_round` train.
    fn assign(&mut self, now_ms: u64) -> Vec<Effect> {
        let version = self.state.next_round;
        let (size, _) = self.buffer_params();
        let secure = self.state.task.secure_aggregation;
        let (limit, timeout) = (
            self.state.task.agents_per_round,
            self.state.task.round_timeout_ms,
        );
        let recruited = self.state.recruited.clone();
        let task = self.state.task.clone();
        let params = self.params;
        let global = self.state.global.clone();
        let Some(b) = self.buffer_state() else {
            return Vec::new();
        };
        let busy: BTreeSet<AgentId> = b
            .training
            .keys()
            .copied()
            .chain(b.buffer.iter().map(|u| u.agent))
            .collect();
        let mut idle: Vec<AgentId> = recruited.difference(&busy).copied().collect();
        idle.shuffle(&mut StdRng::seed_from_u64(
            u64::from(version) << 32 | b.training.len() as u64,
        ));
        let free = limit.saturating_sub(b.training.len());
        let mut chosen: Vec<AgentId> = idle.into_iter().take(free).collect();
        let mut effects = Vec::new();
        if secure {
            // Whole cohorts only: a cohort's members start together.
            chosen.truncate(chosen.len() / size * size);
            chosen.sort_unstable();
            for members in chosen.chunks(size) {
                let (sr, out) =
                    SecureRound::start(&task, version, b.cohorts_started, members, params, now_ms);
                b.cohorts_started += 1;
                b.cohorts.push(Cohort {
                    version,
                    secure: sr,
                });
                effects.extend(secagg_effects(out));
            }
        }
        if chosen.is_empty() {
            return effects;
        }
        b.models.entry(version).or_insert(global);
        for agent in chosen {
            b.training
                .insert(agent, (version, now_ms.saturating_add(timeout)));
            effects.push(Effect::SendModel {
                agent,
                round: version,
                config: task.train_config(version, &agent),
            });
        }
        effects
    }

    /// A plain update of a buffered task.
    pub(crate) fn submit_buffered(
        &mut self,
        agent: AgentId,
        round: u32,
        update: Update,
        now_ms: u64,
    ) -> Vec<Effect> {
        let version = self.state.next_round;
        let (size, max_staleness) = self.buffer_params();
        let (params, secure) = (self.params, self.state.task.secure_aggregation);
        let privacy_clip = self
            .state
            .task
            .privacy
            .as_ref()
            .map(|_| self.state.task.secagg.clip);
        let Some(b) = self.buffer_state() else {
            return vec![Effect::Rejected {
                agent,
                reason: RejectReason::NoOpenRound,
            }];
        };
        let verdict = match b.training.get(&agent) {
            _ if secure => Err(RejectReason::PlainUpdate),
            _ if b.buffer.iter().any(|u| u.agent == agent) => Err(RejectReason::Duplicate),
            _ if round > version => Err(RejectReason::WrongRound {
                got: round,
                current: version,
            }),
            _ if version - round > max_staleness => Err(RejectReason::Stale {
                staleness: version - round,
                max: max_staleness,
            }),
            None => Err(RejectReason::NotSelected),
            // Only the model last sent counts (after a restart, the newest).
            Some(&(sent, _)) if round != sent => Err(RejectReason::WrongRound {
                got: round,
                current: sent,
            }),
            Some(_) => validate(&update, params),
        };
        let mut effects = Vec::new();
        match verdict {
            Ok(()) => {
                b.training.remove(&agent);
                let base = b
                    .models
                    .get(&round)
                    .expect("the model an agent in training was sent is kept");
                let w = staleness_weight(version - round) as f32;
                let delta: Vec<f32> = match privacy_clip {
                    // Under DP each change is clipped, as in DP-FedAvg.
                    Some(clip) => Encoding::new(clip, 0.0, 1)
                        .clipped_delta(base, &update.weights)
                        .into_iter()
                        .map(|d| d as f32 * w)
                        .collect(),
                    None => update
                        .weights
                        .iter()
                        .zip(base)
                        .map(|(u, g)| (u - g) * w)
                        .collect(),
                };
                b.buffer.push(Buffered {
                    agent,
                    version: round,
                    samples: update.samples,
                    delta,
                });
                if b.buffer.len() >= size {
                    effects.extend(self.flush_if_allowed(now_ms));
                }
            }
            Err(reason) => {
                // A bad update ends the agent's turn and is on record; a
                // repeat or a message out of turn changes nothing.
                if !matches!(
                    reason,
                    RejectReason::Duplicate
                        | RejectReason::NotSelected
                        | RejectReason::PlainUpdate
                        | RejectReason::WrongRound { .. }
                ) {
                    b.training.remove(&agent);
                    b.rejected.push((agent, reason.clone()));
                }
                effects.push(Effect::Rejected { agent, reason });
            }
        }
        effects.extend(self.advance_buffered(now_ms));
        effects
    }

    /// A secure-aggregation message of a buffered task, for its agent's cohort.
    pub(crate) fn secagg_buffered(
        &mut self,
        agent: AgentId,
        message: FromAgent,
        now_ms: u64,
    ) -> Vec<Effect> {
        let recruited = self.state.recruited.clone();
        let Some(b) = self.buffer_state() else {
            return vec![Effect::Rejected {
                agent,
                reason: RejectReason::NoOpenRound,
            }];
        };
        let Some(cohort) = b.cohorts.iter_mut().find(|c| c.secure.includes(&agent)) else {
            return vec![Effect::Rejected {
                agent,
                reason: RejectReason::NotSelected,
            }];
        };
        let gone = absent(&cohort.secure, &recruited);
        let mut effects: Vec<Effect> = match cohort.secure.handle(&agent, message, now_ms, &gone) {
            Ok(out) => secagg_effects(out).collect(),
            Err(reason) => vec![Effect::Rejected { agent, reason }],
        };
        effects.extend(self.advance_buffered(now_ms));
        effects
    }

    /// Deadlines, finished cohorts, the privacy budget and the task's end;
    /// then idle agents are sent the model.
    pub(crate) fn advance_buffered(&mut self, now_ms: u64) -> Vec<Effect> {
        let mut effects = Vec::new();
        let (_, max_staleness) = self.buffer_params();
        let secure = self.state.task.secure_aggregation;
        let recruited = self.state.recruited.clone();
        loop {
            let version = self.state.next_round;
            let Some(b) = self.buffer_state() else {
                return effects;
            };
            if !secure {
                // Agents past their deadline, or gone, train no more.
                b.training
                    .retain(|a, (_, until)| now_ms < *until && recruited.contains(a));
                let stuck = !b.buffer.is_empty()
                    && b.training.is_empty()
                    && recruited
                        .iter()
                        .all(|a| b.buffer.iter().any(|u| u.agent == *a));
                if stuck {
                    effects.extend(self.flush_if_allowed(now_ms));
                    continue;
                }
            }
            for c in &mut b.cohorts {
                let gone = absent(&c.secure, &recruited);
                effects.extend(secagg_effects(c.secure.tick(now_ms, &gone)));
            }
            // A cohort too stale to apply is dropped with its members' work.
            let (fresh, stale): (Vec<Cohort>, Vec<Cohort>) = std::mem::take(&mut b.cohorts)
                .into_iter()
                .partition(|c| version - c.version <= max_staleness);
            b.cohorts = fresh;
            for a in stale.iter().flat_map(|c| c.secure.members()) {
                b.training.remove(&a);
            }
            let Some(i) = b.cohorts.iter().position(|c| c.secure.is_over()) else {
                break;
            };
            let cohort = b.cohorts.remove(i);
            for a in cohort.secure.members() {
                b.training.remove(&a);
            }
            if !self.may_apply() {
                break;
            }
            effects.extend(self.apply_cohort(cohort, now_ms));
            if self.is_done() {
                return effects;
            }
        }
        if !self.may_apply() {
            self.state.phase = Phase::Finished;
            effects.push(Effect::Finished);
            return effects;
        }
        if self.state.task.deadline_ms.is_some_and(|d| now_ms >= d) {
            self.state.phase = Phase::Expired;
            effects.push(Effect::Expired);
            return effects;
        }
        effects.extend(self.assign(now_ms));
        effects
    }

    /// Whether another buffer may make a model: rounds are left, and it
    /// would not take epsilon past the budget.
    fn may_apply(&self) -> bool {
        if self.state.next_round >= self.state.task.rounds {
            return false;
        }
        let Some(p) = &self.state.task.privacy else {
            return true;
        };
        let (size, _) = self.buffer_params();
        let q = size as f64 / self.state.recruited.len().max(size) as f64;
        self.state
            .accountant
            .epsilon_after(q, p.noise_multiplier, 1, p.delta)
            <= p.epsilon_budget
    }

    /// Applies the buffer, or ends the task if no more buffers may be.
    fn flush_if_allowed(&mut self, now_ms: u64) -> Vec<Effect> {
        if self.may_apply() {
            return self.flush(now_ms);
        }
        self.state.phase = Phase::Finished;
        vec![Effect::Finished]
    }

    /// Makes the next global model from the buffer.
    fn flush(&mut self, now_ms: u64) -> Vec<Effect> {
        let Some(b) = self.buffer_state() else {
            return Vec::new();
        };
        let mut buffer = std::mem::take(&mut b.buffer);
        let rejected = std::mem::take(&mut b.rejected);
        buffer.sort_by_key(|u| u.agent);
        let round = self.state.next_round;
        let dp = self.state.task.privacy.clone();
        let mean_of = |members: &[usize], buffer: &[Buffered], global: &[f32]| -> Vec<f32> {
            if members.is_empty() {
                return global.to_vec();
            }
            // Equal weights under DP (the noise is calibrated to them).
            let weight = |u: &Buffered| if dp.is_some() { 1.0 } else { u.samples as f64 };
            let total: f64 = members.iter().map(|&i| weight(&buffer[i])).sum();
            let mut out: Vec<f64> = global.iter().map(|g| f64::from(*g)).collect();
            for &i in members {
                let k = weight(&buffer[i]) / total.max(f64::MIN_POSITIVE);
                for (o, d) in out.iter_mut().zip(&buffer[i].delta) {
                    *o += k * f64::from(*d);
                }
            }
            out.into_iter().map(|x| x as f32).collect()
        };
        let all: Vec<usize> = (0..buffer.len()).collect();
        let mut candidate = mean_of(&all, &buffer, &self.state.global);
        if let Some(p) = &dp {
            self.add_central_noise(&mut candidate, p.noise_multiplier, buffer.len());
        }
        let estimate = gtg_shapley(
            buffer.len(),
            |c| {
                yilian_models::evaluate(
                    &self.state.task.model,
                    &mean_of(c, &buffer, &self.state.global),
                    &self.validation,
                )
                .map(|m| m.accuracy)
                .unwrap_or(0.0)
            },
            GtgConfig {
                seed: u64::from(round),
                ..self.gtg
            },
        );
        let participants: Vec<AgentId> = buffer.iter().map(|u| u.agent).collect();
        let record = self.conclude(
            Closing {
                round,
                selected: participants.clone(),
                participants,
                rejected,
                contributions: estimate.values,
                evaluations: estimate.evaluations,
                failures: Vec::new(),
                now_ms,
            },
            candidate,
        );
        self.after_flush();
        vec![Effect::RoundClosed(record)]
    }

    /// Applies a revealed cohort sum, weighted by the cohort's staleness.
    fn apply_cohort(&mut self, cohort: Cohort, now_ms: u64) -> Vec<Effect> {
        let round = self.state.next_round;
        let w = staleness_weight(round - cohort.version);
        let (mut sums, failures) =
            group_sums(cohort.secure, "the cohort closed before the group finished");
        if sums.is_empty() {
            for f in &failures {
                tracing::warn!(round, "buffered secure cohort failed: {f}");
            }
            let mut effects = vec![Effect::RoundAbandoned { round, received: 0 }];
            self.state.attempts += 1;
            if self.state.attempts >= crate::round::MAX_ATTEMPTS {
                self.state.phase = Phase::Expired;
                effects.push(Effect::Expired);
            }
            return effects;
        }
        for (_, sum) in &mut sums {
            for x in sum.iter_mut() {
                *x *= w;
            }
        }
        let score = self.score_groups(&sums);
        let record = self.conclude(
            Closing {
                round,
                selected: score.participants.clone(),
                participants: score.participants,
                rejected: Vec::new(),
                contributions: score.contributions,
                evaluations: score.evaluations,
                failures,
                now_ms,
            },
            score.candidate,
        );
        self.after_flush();
        vec![Effect::RoundClosed(record)]
    }

    /// Keeps the models agents may still answer for, and the new one.
    fn after_flush(&mut self) {
        let (_, max_staleness) = self.buffer_params();
        let (version, global) = (self.state.next_round, self.state.global.clone());
        if let Some(b) = self.buffer_state() {
            let oldest = version.saturating_sub(max_staleness);
            b.models.retain(|v, _| *v >= oldest);
            b.models.insert(version, global);
            b.training.retain(|_, (v, _)| *v >= oldest);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn staleness_weights_follow_fedbuff() {
        assert_eq!(staleness_weight(0), 1.0);
        assert!((staleness_weight(3) - 0.5).abs() < 1e-12);
        assert!(staleness_weight(8) < staleness_weight(7));
    }
}
