//! Federated evaluation, sans IO: the coordinator's state machine for a
//! task that scores an engineer's ONNX model on agents' private data.
//!
//! Like [`crate::RoundMachine`] it takes events (an agent recruited or gone,
//! a report arrived, the clock moved) and returns effects, and its whole
//! state ([`EvaluationState`]) is plain data the driver persists after every
//! event. An evaluation is a single round: up to `agents` agents get the
//! model (late joiners are taken while places are free), each sends back
//! [`EvalCounts`], and once every place reported — or at the timeout with at
//! least `min_agents` reports — the counts are added up into one
//! [`EvaluationResult`]. The per-agent counts are then dropped from the
//! state; only their sum is kept.
//!
//! A report is checked before it counts: a square matrix with one row per
//! model output, no examples of classes outside the schema, counts adding up
//! to the sample count, that sample count equal to what the agent declared
//! when it joined, and a summed loss between 0 and
//! `samples * MAX_SAMPLE_LOSS`. A report that fails any check is refused and
//! leaves the state exactly as it was.
//!
//! Evaluation earns no reward (see [`EvaluationSpec`]).

use std::collections::{BTreeMap, BTreeSet};

use rand::seq::SliceRandom;
use rand::{SeedableRng, rngs::StdRng};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use yilian_models::{EvalCounts, MAX_SAMPLE_LOSS, OnnxModel};

use crate::round::MAX_ATTEMPTS;
use crate::task::EvaluationSpec;
use crate::{AgentId, DataSchema, FlError, RejectReason};

/// The aggregate an evaluation produces: sums over the participants' data.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EvaluationResult {
    /// Agents whose counts are in the sums, in id order.
    pub participants: Vec<AgentId>,
    /// Agents that had a place but sent nothing usable.
    pub missing: Vec<AgentId>,
    pub samples: u64,
    /// Correct predictions over samples.
    pub accuracy: f64,
    /// Summed cross-entropy over samples.
    pub loss: f64,
    /// `confusion[true][predicted]`, summed over participants.
    pub confusion: Vec<Vec<u64>>,
    pub closed_at_ms: u64,
}

/// Where an evaluation is.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum EvaluationPhase {
    /// Waiting for `min_agents` agents.
    Waiting,
    Collecting {
        attempt: u32,
        /// Agents given the model, in the order they got it.
        selected: Vec<AgentId>,
        deadline_ms: u64,
        received: BTreeMap<AgentId, EvalCounts>,
        /// Selected agents that left without reporting.
        dropped: BTreeSet<AgentId>,
    },
    Done(EvaluationResult),
    /// The deadline passed, or every attempt ended with too few reports.
    Expired,
}

/// Everything the coordinator must remember about an evaluation.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EvaluationState {
    pub task: EvaluationSpec,
    pub model_sha256: [u8; 32],
    pub model_bytes: u64,
    pub params: u64,
    /// The model's outputs: the side of every confusion matrix.
    pub classes: usize,
    /// Recruited agents and the sample counts they declared.
    pub recruited: BTreeMap<AgentId, u64>,
    pub phase: EvaluationPhase,
    pub attempts: u32,
}

/// What the driver must do.
#[derive(Clone, Debug, PartialEq)]
pub enum EvaluationEffect {
    /// Send the ONNX model to the agent and ask for its counts.
    SendModel {
        agent: AgentId,
    },
    /// Tell the agent its report did not count (and why).
    Rejected {
        agent: AgentId,
        reason: RejectReason,
    },
    /// The evaluation closed with this aggregate.
    Evaluated(EvaluationResult),
    /// Too few reports by the timeout; another attempt follows.
    Abandoned {
        attempt: u32,
        received: usize,
    },
    Expired,
}

/// The state machine around an [`EvaluationState`].
pub struct EvaluationMachine {
    state: EvaluationState,
}

/// Checks a report against the model's class count, the task's schema and
/// the sample count the agent declared.
pub fn check_report(
    counts: &EvalCounts,
    classes: usize,
    schema_classes: usize,
    declared: u64,
) -> Result<(), RejectReason> {
    let rows = counts.confusion.len();
    if let Some(bad) = counts
        .confusion
        .iter()
        .find(|r| r.len() != classes)
        .map(Vec::len)
        .or((rows != classes).then_some(classes))
    {
        return Err(RejectReason::MatrixShape {
            rows,
            cols: bad,
            expected: classes,
        });
    }
    if counts.samples == 0 {
        return Err(RejectReason::BadSampleCount(0));
    }
    if counts.samples != declared {
        return Err(RejectReason::SamplesDiffer {
            reported: counts.samples,
            declared,
        });
    }
    if let Some(class) =
        (schema_classes..classes).find(|&c| counts.confusion[c].iter().any(|&n| n > 0))
    {
        return Err(RejectReason::ClassOutsideSchema { class });
    }
    // Saturating: a report that overflows u64 cannot add up to its samples.
    let counted = counts
        .confusion
        .iter()
        .flatten()
        .fold(0u64, |a, &n| a.saturating_add(n));
    if counted != counts.samples {
        return Err(RejectReason::CountsDoNotAddUp {
            counted,
            samples: counts.samples,
        });
    }
    // The bound allows for rounding in the agent's f64 sum.
    let bound = counts.samples as f64 * MAX_SAMPLE_LOSS * (1.0 + 1e-9);
    if !counts.loss_sum.is_finite() || counts.loss_sum < 0.0 || counts.loss_sum > bound {
        return Err(RejectReason::ImpossibleLoss {
            samples: counts.samples,
        });
    }
    Ok(())
}

impl EvaluationMachine {
    /// Starts an evaluation of `model`, which must fit the task's schema.
    pub fn new(task: EvaluationSpec, model: &OnnxModel) -> Result<Self, FlError> {
        task.check()?;
        task.check_model(model)?;
        Ok(Self {
            state: EvaluationState {
                task,
                model_sha256: Sha256::digest(model.bytes()).into(),
                model_bytes: model.byte_len() as u64,
                params: model.param_count(),
                classes: model.outputs(),
                recruited: BTreeMap::new(),
                phase: EvaluationPhase::Waiting,
                attempts: 0,
            },
        })
    }

    /// Continues from a persisted state.
    pub fn restore(state: EvaluationState) -> Result<Self, FlError> {
        state.task.check()?;
        Ok(Self { state })
    }

    pub fn state(&self) -> &EvaluationState {
        &self.state
    }

    pub fn id(&self) -> &str {
        &self.state.task.id
    }

    pub fn is_done(&self) -> bool {
        matches!(
            self.state.phase,
            EvaluationPhase::Done(_) | EvaluationPhase::Expired
        )
    }

    pub fn result(&self) -> Option<&EvaluationResult> {
        match &self.state.phase {
            EvaluationPhase::Done(r) => Some(r),
            _ => None,
        }
    }

    /// Admits an agent whose data matches the schema and which declared
    /// `samples` examples. An agent that already holds a place and has not
    /// reported (it reconnected, or the coordinator restarted) gets the
    /// model again.
    pub fn recruit(
        &mut self,
        agent: AgentId,
        schema: &DataSchema,
        samples: u64,
        now_ms: u64,
    ) -> Result<Vec<EvaluationEffect>, FlError> {
        schema.check_against(&self.state.task.schema)?;
        if samples == 0 {
            return Err(FlError::UpdateRejected {
                agent,
                reason: RejectReason::BadSampleCount(0),
            });
        }
        self.state.recruited.insert(agent, samples);
        let places = self.state.task.agents;
        let mut effects = Vec::new();
        if let EvaluationPhase::Collecting {
            selected,
            received,
            dropped,
            ..
        } = &mut self.state.phase
            && !received.contains_key(&agent)
        {
            if selected.contains(&agent) {
                dropped.remove(&agent);
                effects.push(EvaluationEffect::SendModel { agent });
            } else if selected.len() < places {
                selected.push(agent);
                effects.push(EvaluationEffect::SendModel { agent });
            }
        }
        effects.extend(self.advance(now_ms));
        Ok(effects)
    }

    /// An agent disconnected or withdrew.
    pub fn leave(&mut self, agent: AgentId, now_ms: u64) -> Vec<EvaluationEffect> {
        self.state.recruited.remove(&agent);
        if let EvaluationPhase::Collecting {
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

    /// The clock moved: start collecting, or close at the timeout.
    pub fn tick(&mut self, now_ms: u64) -> Vec<EvaluationEffect> {
        self.advance(now_ms)
    }

    /// An agent's counts. Refused reports change nothing.
    pub fn submit(
        &mut self,
        agent: AgentId,
        counts: EvalCounts,
        now_ms: u64,
    ) -> Vec<EvaluationEffect> {
        let (classes, schema_classes) = (self.state.classes, self.state.task.schema.classes);
        let declared = self.state.recruited.get(&agent).copied();
        let verdict = match &mut self.state.phase {
            EvaluationPhase::Collecting {
                selected,
                received,
                dropped,
                ..
            } => {
                let verdict = if !selected.contains(&agent) || dropped.contains(&agent) {
                    Err(RejectReason::NotSelected)
                } else if received.contains_key(&agent) {
                    Err(RejectReason::Duplicate)
                } else {
                    check_report(&counts, classes, schema_classes, declared.unwrap_or(0))
                };
                if verdict.is_ok() {
                    received.insert(agent, counts);
                }
                verdict
            }
            _ => Err(RejectReason::NoOpenRound),
        };
        match verdict {
            Ok(()) => self.advance(now_ms),
            // Nothing changed, so nothing can have become due either.
            Err(reason) => vec![EvaluationEffect::Rejected { agent, reason }],
        }
    }

    fn advance(&mut self, now_ms: u64) -> Vec<EvaluationEffect> {
        let task = &self.state.task;
        let expired = task.deadline_ms.is_some_and(|d| now_ms >= d);
        let mut effects = Vec::new();
        match &self.state.phase {
            EvaluationPhase::Done(_) | EvaluationPhase::Expired => {}
            EvaluationPhase::Waiting if expired => {
                self.state.phase = EvaluationPhase::Expired;
                effects.push(EvaluationEffect::Expired);
            }
            EvaluationPhase::Waiting => {
                if self.state.recruited.len() >= task.min_agents {
                    effects.extend(self.start(now_ms));
                }
            }
            EvaluationPhase::Collecting {
                attempt,
                selected,
                deadline_ms,
                received,
                dropped,
            } => {
                let outstanding = selected
                    .iter()
                    .filter(|a| !received.contains_key(*a) && !dropped.contains(*a))
                    .count();
                let full = selected.len() >= task.agents;
                let over = (full && outstanding == 0) || now_ms >= *deadline_ms || expired;
                if !over {
                    return effects;
                }
                if received.len() >= task.min_agents {
                    let result = self.close(now_ms);
                    effects.push(EvaluationEffect::Evaluated(result));
                } else {
                    effects.push(EvaluationEffect::Abandoned {
                        attempt: *attempt,
                        received: received.len(),
                    });
                    self.state.attempts += 1;
                    self.state.phase = EvaluationPhase::Waiting;
                    if self.state.attempts >= MAX_ATTEMPTS || expired {
                        self.state.phase = EvaluationPhase::Expired;
                        effects.push(EvaluationEffect::Expired);
                    } else {
                        effects.extend(self.advance(now_ms));
                    }
                }
            }
        }
        effects
    }

    fn start(&mut self, now_ms: u64) -> Vec<EvaluationEffect> {
        let attempt = self.state.attempts;
        let mut pool: Vec<AgentId> = self.state.recruited.keys().copied().collect();
        // A seeded shuffle, so that which agents evaluate is reproducible
        // from the task and attempt, not decided by the map's key order.
        let seed = u64::from_le_bytes(self.state.model_sha256[..8].try_into().unwrap_or([0; 8]));
        pool.shuffle(&mut StdRng::seed_from_u64(seed ^ u64::from(attempt)));
        pool.truncate(self.state.task.agents);
        pool.sort_unstable();
        let effects = pool
            .iter()
            .map(|&agent| EvaluationEffect::SendModel { agent })
            .collect();
        let timeout = now_ms.saturating_add(self.state.task.timeout_ms);
        self.state.phase = EvaluationPhase::Collecting {
            attempt,
            selected: pool,
            deadline_ms: self
                .state
                .task
                .deadline_ms
                .map_or(timeout, |d| d.min(timeout)),
            received: BTreeMap::new(),
            dropped: BTreeSet::new(),
        };
        effects
    }

    fn close(&mut self, now_ms: u64) -> EvaluationResult {
        let EvaluationPhase::Collecting {
            selected, received, ..
        } = std::mem::replace(&mut self.state.phase, EvaluationPhase::Waiting)
        else {
            unreachable!("close is only called while collecting")
        };
        let mut sum = EvalCounts::zero(self.state.classes);
        for counts in received.values() {
            sum.add(counts);
        }
        let mut missing: Vec<AgentId> = selected
            .into_iter()
            .filter(|a| !received.contains_key(a))
            .collect();
        missing.sort_unstable();
        let result = EvaluationResult {
            participants: received.keys().copied().collect(),
            missing,
            samples: sum.samples,
            accuracy: sum.accuracy(),
            loss: sum.mean_loss(),
            confusion: sum.confusion,
            closed_at_ms: now_ms,
        };
        self.state.phase = EvaluationPhase::Done(result.clone());
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counts(confusion: Vec<Vec<u64>>, loss_sum: f64) -> EvalCounts {
        EvalCounts {
            samples: confusion.iter().flatten().sum(),
            loss_sum,
            confusion,
        }
    }

    #[test]
    fn reports_are_checked_for_shape_sums_samples_classes_and_loss() {
        let good = counts(vec![vec![3, 1, 0], vec![0, 2, 0], vec![0, 0, 0]], 2.0);
        assert_eq!(check_report(&good, 3, 2, 6), Ok(()));
        let short = counts(vec![vec![3, 1, 0], vec![0, 2, 0]], 2.0);
        assert_eq!(
            check_report(&short, 3, 2, 6),
            Err(RejectReason::MatrixShape {
                rows: 2,
                cols: 3,
                expected: 3
            })
        );
        let ragged = counts(vec![vec![3, 1, 0], vec![0, 2], vec![0, 0, 0]], 2.0);
        assert!(matches!(
            check_report(&ragged, 3, 2, 5),
            Err(RejectReason::MatrixShape { cols: 2, .. })
        ));
        let mut lying = good.clone();
        lying.samples = 7;
        assert_eq!(
            check_report(&lying, 3, 2, 7),
            Err(RejectReason::CountsDoNotAddUp {
                counted: 6,
                samples: 7
            })
        );
        assert_eq!(
            check_report(&good, 3, 2, 9),
            Err(RejectReason::SamplesDiffer {
                reported: 6,
                declared: 9
            })
        );
        let outside = counts(vec![vec![3, 1, 0], vec![0, 2, 0], vec![0, 0, 1]], 2.0);
        assert_eq!(
            check_report(&outside, 3, 2, 7),
            Err(RejectReason::ClassOutsideSchema { class: 2 })
        );
        for loss in [-1.0, f64::NAN, f64::INFINITY, 6.0 * MAX_SAMPLE_LOSS + 1.0] {
            assert_eq!(
                check_report(&counts(good.confusion.clone(), loss), 3, 2, 6),
                Err(RejectReason::ImpossibleLoss { samples: 6 })
            );
        }
        let overflow = EvalCounts {
            samples: 5,
            loss_sum: 0.0,
            confusion: vec![vec![u64::MAX, 6], vec![0, 0]],
        };
        assert!(matches!(
            check_report(&overflow, 2, 2, 5),
            Err(RejectReason::CountsDoNotAddUp { .. })
        ));
        assert_eq!(
            check_report(&EvalCounts::zero(2), 2, 2, 0),
            Err(RejectReason::BadSampleCount(0))
        );
    }
}
