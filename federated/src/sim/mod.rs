//! An in-process driver: the real round state machine, real local training
//! on real data, agents as plain values with scripted behaviour (honest,
//! dropping out, straggling, malicious, malformed) and a logical clock.
//! Tests and benchmarks use it; the QUIC driver runs the same machine over
//! the network. [`Network`] is the same with the whole coordinator engine
//! in between: a second driver of [`crate::coordinator::Engine`].

use std::collections::VecDeque;

pub mod network;
pub use network::Network;

use rand::{Rng, SeedableRng, rngs::StdRng};
use yilian_models::{Dataset, TrainConfig};

use crate::secagg::{FromAgent, Participant, ToAgent};
use crate::{AgentId, DataSchema, Effect, FlError, RoundMachine, RoundRecord, Store, Update};

/// How a simulated agent behaves.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Behaviour {
    Honest,
    /// Takes the model of this round, then disconnects.
    DropsAt(u32),
    /// Never answers.
    Straggler,
    /// Trains honestly, then multiplies its change to the model by this factor.
    Scaled(f32),
    /// Sends random weights of the right shape.
    Random,
    /// Sends one weight too many.
    WrongShape,
    /// Sends a NaN among its weights.
    NotFinite,
    /// Under secure aggregation: sends its masked input in this round, then
    /// disconnects before revealing its shares.
    DropsAfterMasking(u32),
}

pub struct SimAgent {
    pub id: AgentId,
    pub data: Dataset,
    pub behaviour: Behaviour,
    /// Rejections received.
    pub rejections: usize,
    /// Its part in secure rounds.
    secure: Participant,
}

impl SimAgent {
    pub fn new(index: u32, data: Dataset, behaviour: Behaviour) -> Self {
        let mut id = [0u8; 32];
        id[..4].copy_from_slice(&index.to_be_bytes());
        id[4] = 0xA6;
        Self {
            id,
            data,
            behaviour,
            rejections: 0,
            secure: Participant::new(),
        }
    }

    pub fn schema(&self, label_column: &str) -> DataSchema {
        DataSchema {
            features: self.data.n_features,
            label_column: label_column.to_owned(),
            classes: self.data.classes,
        }
    }

    /// What this agent sends back for `round`, or `None` if it sends nothing.
    fn respond(
        &self,
        machine: &RoundMachine,
        round: u32,
        config: &TrainConfig,
    ) -> Result<Option<Update>, FlError> {
        self.respond_to(machine.spec(), machine.model_for(round), round, config)
    }

    /// What this agent sends for `round`, given the model it was sent.
    fn respond_to(
        &self,
        spec: &yilian_models::ModelSpec,
        global: &[f32],
        round: u32,
        config: &TrainConfig,
    ) -> Result<Option<Update>, FlError> {
        let honest = || -> Result<Update, FlError> {
            let out = yilian_models::train(spec, global, &self.data, config)?;
            Ok(Update {
                weights: out.weights,
                samples: out.samples as u64,
                loss: out.loss,
            })
        };
        Ok(match self.behaviour {
            Behaviour::Honest | Behaviour::DropsAfterMasking(_) => Some(honest()?),
            Behaviour::DropsAt(r) if r == round => None,
            Behaviour::DropsAt(_) => Some(honest()?),
            Behaviour::Straggler => None,
            Behaviour::Scaled(k) => {
                let mut u = honest()?;
                for (w, g) in u.weights.iter_mut().zip(global) {
                    *w = g + k * (*w - g);
                }
                Some(u)
            }
            Behaviour::Random => {
                let mut rng = StdRng::seed_from_u64(u64::from(round));
                Some(Update {
                    weights: global.iter().map(|_| rng.random_range(-5.0..5.0)).collect(),
                    samples: self.data.len() as u64,
                    loss: 1.0,
                })
            }
            Behaviour::WrongShape => {
                let mut u = honest()?;
                u.weights.push(0.0);
                Some(u)
            }
            Behaviour::NotFinite => {
                let mut u = honest()?;
                u.weights[0] = f32::NAN;
                Some(u)
            }
        })
    }
}

/// The coordinator and its agents in one process.
pub struct Simulation {
    pub machine: RoundMachine,
    pub agents: Vec<SimAgent>,
    pub store: Option<Store>,
    pub now_ms: u64,
    queue: VecDeque<Effect>,
}

impl Simulation {
    /// Recruits every agent (schema mismatches are returned as errors).
    pub fn new(
        machine: RoundMachine,
        agents: Vec<SimAgent>,
        store: Option<Store>,
    ) -> Result<Self, FlError> {
        let mut sim = Self {
            machine,
            agents,
            store,
            now_ms: 0,
            queue: VecDeque::new(),
        };
        let label = sim.machine.state().task.schema.label_column.clone();
        for a in &sim.agents {
            let schema = a.schema(&label);
            if !sim.machine.state().recruited.contains(&a.id) {
                sim.machine.recruit(a.id, &schema)?;
            }
        }
        // A resumed machine may be mid-round: agents that have not answered
        // get the model again.
        sim.queue.extend(sim.machine.resend_effects());
        sim.persist()?;
        Ok(sim)
    }

    fn persist(&self) -> Result<(), FlError> {
        if let Some(store) = &self.store {
            store.save(self.machine.state())?;
        }
        Ok(())
    }

    /// Delivers one update as if it came from `agent`.
    pub fn deliver(&mut self, agent: AgentId, round: u32, update: Update) -> Result<(), FlError> {
        let effects = self.machine.submit(agent, round, update, self.now_ms);
        self.persist()?;
        self.queue.extend(effects);
        Ok(())
    }

    /// Processes queued effects until the task finishes or `stop` says so
    /// (checked after every closed round). Calls `on_round` for each record.
    pub fn run_until(
        &mut self,
        mut on_round: impl FnMut(&RoundRecord),
        mut stop: impl FnMut(&Simulation) -> bool,
    ) -> Result<(), FlError> {
        loop {
            if self.queue.is_empty() {
                if self.machine.is_done() {
                    return Ok(());
                }
                let effects = self.machine.tick(self.now_ms);
                self.persist()?;
                if effects.is_empty() {
                    // Nothing moves until the next deadline.
                    match self.machine.next_deadline() {
                        Some(d) if d > self.now_ms => self.now_ms = d,
                        _ => {
                            return Err(FlError::InvalidTask("not enough agents to start a round"));
                        }
                    }
                }
                self.queue.extend(effects);
                continue;
            }
            let Some(effect) = self.queue.pop_front() else {
                continue;
            };
            match effect {
                Effect::SendModel {
                    agent,
                    round,
                    config,
                } => {
                    let Some(idx) = self.agents.iter().position(|a| a.id == agent) else {
                        continue;
                    };
                    self.now_ms += 1;
                    let secure = self.agents[idx].secure.is_secure(round);
                    match self.agents[idx].respond(&self.machine, round, &config)? {
                        Some(update) if secure => {
                            let mut rng = StdRng::seed_from_u64(self.now_ms ^ u64::from(agent[0]));
                            let global = self.machine.model_for(round).to_vec();
                            let advert = self.agents[idx]
                                .secure
                                .trained(agent, round, &global, &update.weights, &mut rng)
                                .map_err(|reason| FlError::UpdateRejected { agent, reason })?;
                            if let Some(m) = advert {
                                self.answer(agent, m)?;
                            }
                        }
                        Some(update) => self.deliver(agent, round, update)?,
                        None if matches!(self.agents[idx].behaviour, Behaviour::DropsAt(_)) => {
                            let effects = self.machine.leave(agent, self.now_ms);
                            self.persist()?;
                            self.queue.extend(effects);
                        }
                        None => {}
                    }
                }
                Effect::Rejected { agent, .. } => {
                    if let Some(a) = self.agents.iter_mut().find(|a| a.id == agent) {
                        a.rejections += 1;
                    }
                }
                Effect::RoundClosed(record) => {
                    on_round(&record);
                    if stop(self) {
                        return Ok(());
                    }
                }
                Effect::SecAgg { agent, message } => self.secure_step(agent, message)?,
                Effect::Score(job) => {
                    let effects = self.machine.scored(job.run(), self.now_ms);
                    self.persist()?;
                    self.queue.extend(effects);
                }
                Effect::RoundAbandoned { .. } | Effect::Finished | Effect::Expired => {}
            }
        }
    }

    /// One secure-aggregation message to a simulated agent, and its answer.
    fn secure_step(&mut self, agent: AgentId, message: ToAgent) -> Result<(), FlError> {
        let Some(idx) = self.agents.iter().position(|a| a.id == agent) else {
            return Ok(());
        };
        let a = &mut self.agents[idx];
        if let (ToAgent::Unmask(u), Behaviour::DropsAfterMasking(r)) = (&message, a.behaviour)
            && u.round == r
        {
            let effects = self.machine.leave(agent, self.now_ms);
            self.persist()?;
            self.queue.extend(effects);
            return Ok(());
        }
        let reply = a
            .secure
            .handle(message)
            .map_err(|reason| FlError::UpdateRejected { agent, reason })?;
        match reply {
            Some(m) => self.answer(agent, m),
            None => Ok(()),
        }
    }

    fn answer(&mut self, agent: AgentId, message: FromAgent) -> Result<(), FlError> {
        self.now_ms += 1;
        let effects = self.machine.secagg(agent, message, self.now_ms);
        self.persist()?;
        self.queue.extend(effects);
        Ok(())
    }

    pub fn run(&mut self, on_round: impl FnMut(&RoundRecord)) -> Result<(), FlError> {
        self.run_until(on_round, |_| false)
    }
}
