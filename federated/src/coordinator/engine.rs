//! The coordinator, sans IO: every task, evaluation and agent session, in
//! the style of `quinn-proto`. A driver feeds it [`Input`]s (a connection
//! opened, a message arrived, a connection closed, the clock moved, the
//! ledger acknowledged a round) and carries out the [`Command`]s it returns
//! (send, close, persist, record on the ledger), in order: a `Persist`
//! comes before the sends of the same step, so nothing is told to an agent
//! before the state that says it is durable.
//!
//! Sessions are keyed by connection, not by agent: an agent that reconnects
//! gets a new session, its old connection is closed, and the old one's late
//! close never evicts the new one.
//!
//! Closed rounds are owed to the ledger in each task's persisted state
//! ([`crate::RoundMachine::unrecorded`]) until the driver reports them
//! recorded; the engine asks again at every tick, and after a restart, and
//! their transaction ids are deterministic, so a replay is a duplicate.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::sync::Arc;

use yilian_identity::{Principal, Role};

use crate::protocol::{ChunkAssembler, Message, RewardProof, WeightsPurpose};
use crate::round::{Scored, ScoringJob};
use crate::{
    AgentId, DataSchema, Effect, EvaluationEffect, EvaluationMachine, FlError, RoundMachine,
    RoundRecord, Update,
};

/// A connection, as the driver numbers them.
pub type ConnId = u64;

/// What happened, for [`Engine::handle`].
#[derive(Debug)]
pub enum Input {
    /// A connection completed its mutual-TLS handshake as `principal`.
    Connected { conn: ConnId, principal: Principal },
    /// A frame arrived on it.
    Message { conn: ConnId, message: Message },
    /// It ended (closed by the peer, failed, or after a [`Command::Close`]).
    Closed { conn: ConnId },
    /// The clock moved; deadlines are checked.
    Tick,
    /// Every ledger entry of a closed round was acknowledged, with the
    /// rewards' inclusion proofs (participants' order), or one failed.
    Recorded {
        task_id: String,
        round: u32,
        proofs: Option<Vec<Option<RewardProof>>>,
    },
    /// A [`Command::Compute`] finished.
    Computed { task_id: String, result: Scored },
}

/// What goes to an agent: a message, or a model sent in chunks by the
/// writer from one shared copy.
#[derive(Clone, Debug)]
pub enum Outgoing {
    Message(Box<Message>),
    /// A `WeightsHeader` and its `WeightsChunk`s.
    Weights {
        purpose: WeightsPurpose,
        round: u32,
        weights: Arc<Vec<f32>>,
    },
    /// An `EvaluationStart` and the ONNX file's `ModelChunk`s.
    Onnx {
        task_id: String,
        model: Arc<Vec<u8>>,
    },
}

impl Outgoing {
    /// The frames it becomes, made one at a time as the writer goes.
    pub fn messages(&self) -> Box<dyn Iterator<Item = Message> + Send + '_> {
        use crate::protocol::{CHUNK_VALUES, model_chunk_count, model_chunks};
        match self {
            Outgoing::Message(m) => Box::new(std::iter::once((**m).clone())),
            Outgoing::Weights {
                purpose,
                round,
                weights,
            } => {
                let header = Message::WeightsHeader {
                    purpose: *purpose,
                    round: *round,
                    values: weights.len() as u64,
                    chunks: weights.len().div_ceil(CHUNK_VALUES) as u32,
                };
                let round = *round;
                Box::new(std::iter::once(header).chain(
                    weights.chunks(CHUNK_VALUES).enumerate().map(move |(i, c)| {
                        Message::WeightsChunk {
                            round,
                            index: i as u32,
                            values: c.to_vec(),
                        }
                    }),
                ))
            }
            Outgoing::Onnx { task_id, model } => Box::new(
                std::iter::once(Message::EvaluationStart {
                    task_id: task_id.clone(),
                    bytes: model.len() as u64,
                    chunks: model_chunk_count(model.len()),
                })
                .chain(model_chunks(model)),
            ),
        }
    }
}

/// Which state to write.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Durable {
    Task(String),
    Evaluation(String),
}

/// What the driver must do, in order.
#[derive(Debug)]
pub enum Command {
    Send {
        conn: ConnId,
        out: Outgoing,
    },
    /// Tell the peer why (a `Refused`), then close the connection.
    Close {
        conn: ConnId,
        reason: String,
    },
    /// Write this state ([`Engine::task`] / [`Engine::evaluation`]) to the store.
    Persist(Durable),
    /// Write a closed round's contributions, rewards and privacy spent to
    /// the ledger; answer with [`Input::Recorded`].
    Record {
        task_id: String,
        record: RoundRecord,
        /// The task's DP delta, when it spends privacy.
        delta: Option<f64>,
    },
    /// Run this closing round's scoring (aggregation, GTG-Shapley,
    /// evaluations) away from the engine; answer with [`Input::Computed`].
    Compute {
        task_id: String,
        job: Box<ScoringJob>,
    },
    /// Some task's status changed (for watchers).
    Changed,
}

/// An evaluation and the ONNX file it sends out.
pub struct EvaluationTask {
    pub machine: EvaluationMachine,
    pub model: Arc<Vec<u8>>,
}

struct Hello {
    schema: DataSchema,
    samples: u64,
}

struct Session {
    agent: AgentId,
    role: Role,
    hello: Option<Hello>,
    task: Option<String>,
    /// An update's weights being reassembled, then held until its `UpdateDone`.
    assembler: Option<ChunkAssembler>,
    weights: Option<(u32, Vec<f32>)>,
}

/// Every task, evaluation and session of a coordinator.
#[derive(Default)]
pub struct Engine {
    tasks: BTreeMap<String, RoundMachine>,
    evaluations: BTreeMap<String, EvaluationTask>,
    sessions: HashMap<ConnId, Session>,
    /// Each agent's newest connection.
    current: HashMap<AgentId, ConnId>,
    /// Closed rounds whose ledger writes are under way.
    recording: BTreeSet<(String, u32)>,
}

/// Commands of one step, persists first.
#[derive(Default)]
struct Step {
    persist: Vec<Durable>,
    rest: Vec<Command>,
}

impl Step {
    fn persist(&mut self, d: Durable) {
        if !self.persist.contains(&d) {
            self.persist.push(d);
        }
    }
    fn send(&mut self, conn: ConnId, message: Message) {
        self.rest.push(Command::Send {
            conn,
            out: Outgoing::Message(Box::new(message)),
        });
    }
    fn finish(self) -> Vec<Command> {
        let changed = !self.persist.is_empty();
        let mut out: Vec<Command> = self.persist.into_iter().map(Command::Persist).collect();
        out.extend(self.rest);
        if changed {
            out.push(Command::Changed);
        }
        out
    }
}

impl Engine {
    /// An engine over restored tasks and evaluations.
    pub fn new(
        mut tasks: BTreeMap<String, RoundMachine>,
        evaluations: BTreeMap<String, EvaluationTask>,
    ) -> Self {
        for m in tasks.values_mut() {
            m.offload_scoring();
        }
        Engine {
            tasks,
            evaluations,
            ..Engine::default()
        }
    }

    /// What a restarted driver must do first: score again the rounds that
    /// were being scored when it stopped.
    pub fn resume(&self) -> Vec<Command> {
        self.tasks
            .iter()
            .filter_map(|(id, m)| {
                m.pending_scoring().map(|job| Command::Compute {
                    task_id: id.clone(),
                    job: Box::new(job),
                })
            })
            .collect()
    }

    pub fn task(&self, id: &str) -> Option<&RoundMachine> {
        self.tasks.get(id)
    }

    pub fn evaluation(&self, id: &str) -> Option<&EvaluationTask> {
        self.evaluations.get(id)
    }

    pub fn task_exists(&self, id: &str) -> bool {
        self.tasks.contains_key(id) || self.evaluations.contains_key(id)
    }

    /// Open agent sessions.
    pub fn sessions(&self) -> usize {
        self.sessions.len()
    }

    /// Adds a checked training task and offers it to idle agents.
    pub fn add_task(&mut self, mut machine: RoundMachine) -> Result<Vec<Command>, FlError> {
        machine.offload_scoring();
        let id = machine.state().task.id.clone();
        if self.task_exists(&id) {
            return Err(FlError::TaskExists(id));
        }
        self.tasks.insert(id.clone(), machine);
        let mut step = Step::default();
        step.persist(Durable::Task(id));
        self.offer_to_idle(&mut step);
        Ok(step.finish())
    }

    /// Adds a checked evaluation and offers it to idle agents.
    pub fn add_evaluation(&mut self, eval: EvaluationTask) -> Result<Vec<Command>, FlError> {
        let id = eval.machine.state().task.id.clone();
        if self.task_exists(&id) {
            return Err(FlError::TaskExists(id));
        }
        self.evaluations.insert(id.clone(), eval);
        let mut step = Step::default();
        step.persist(Durable::Evaluation(id));
        self.offer_to_idle(&mut step);
        Ok(step.finish())
    }

    /// Takes one input at time `now_ms`.
    pub fn handle(&mut self, input: Input, now_ms: u64) -> Vec<Command> {
        let mut step = Step::default();
        match input {
            Input::Connected { conn, principal } => {
                if let Some(old) = self.current.insert(principal.public_key, conn) {
                    // The agent is back on a new connection: the old one goes,
                    // and its session's place in a task passes to the new one.
                    if self.sessions.remove(&old).is_some() {
                        step.rest.push(Command::Close {
                            conn: old,
                            reason: "replaced by a newer connection of the same agent".into(),
                        });
                    }
                }
                self.sessions.insert(
                    conn,
                    Session {
                        agent: principal.public_key,
                        role: principal.role,
                        hello: None,
                        task: None,
                        assembler: None,
                        weights: None,
                    },
                );
            }
            Input::Message { conn, message } => {
                if let Err(e) = self.message(conn, message, now_ms, &mut step) {
                    step.rest.push(Command::Close {
                        conn,
                        reason: e.to_string(),
                    });
                    self.gone(conn, now_ms, &mut step);
                }
            }
            Input::Closed { conn } => self.gone(conn, now_ms, &mut step),
            Input::Tick => self.tick(now_ms, &mut step),
            Input::Computed { task_id, result } => {
                let effects = self
                    .tasks
                    .get_mut(&task_id)
                    .map(|m| m.scored(result, now_ms))
                    .unwrap_or_default();
                self.effects(&task_id, effects, now_ms, &mut step);
            }
            Input::Recorded {
                task_id,
                round,
                proofs,
            } => self.recorded(&task_id, round, proofs, &mut step),
        }
        step.finish()
    }

    /// A connection's session ends; if it was the agent's newest, the agent
    /// leaves its task.
    fn gone(&mut self, conn: ConnId, now_ms: u64, step: &mut Step) {
        let Some(s) = self.sessions.remove(&conn) else {
            return;
        };
        if self.current.get(&s.agent) != Some(&conn) {
            return;
        }
        self.current.remove(&s.agent);
        match s.task {
            Some(task) if self.evaluations.contains_key(&task) => {
                let effects = self
                    .evaluations
                    .get_mut(&task)
                    .map(|e| e.machine.leave(s.agent, now_ms))
                    .unwrap_or_default();
                self.evaluation_effects(&task, effects, now_ms, step);
            }
            Some(task) => {
                let effects = self
                    .tasks
                    .get_mut(&task)
                    .map(|m| m.leave(s.agent, now_ms))
                    .unwrap_or_default();
                self.effects(&task, effects, now_ms, step);
            }
            None => {}
        }
    }

    fn tick(&mut self, now_ms: u64, step: &mut Step) {
        let ids: Vec<String> = self.tasks.keys().cloned().collect();
        for id in ids {
            let effects = match self.tasks.get_mut(&id) {
                Some(m) => m.tick(now_ms),
                None => continue,
            };
            // A tick that did nothing changed nothing: skip the write.
            if !effects.is_empty() {
                self.effects(&id, effects, now_ms, step);
            }
        }
        let ids: Vec<String> = self.evaluations.keys().cloned().collect();
        for id in ids {
            let effects = match self.evaluations.get_mut(&id) {
                Some(e) => e.machine.tick(now_ms),
                None => continue,
            };
            if !effects.is_empty() {
                self.evaluation_effects(&id, effects, now_ms, step);
            }
        }
        // Rounds still owed to the ledger (a failed write, or a restart).
        for (id, m) in &self.tasks {
            for record in m.unrecorded() {
                if self.recording.insert((id.clone(), record.round)) {
                    step.rest.push(Command::Record {
                        task_id: id.clone(),
                        delta: m.state().task.privacy.as_ref().map(|p| p.delta),
                        record,
                    });
                }
            }
        }
    }

    fn recorded(
        &mut self,
        task_id: &str,
        round: u32,
        proofs: Option<Vec<Option<RewardProof>>>,
        step: &mut Step,
    ) {
        self.recording.remove(&(task_id.to_owned(), round));
        // A failed write stays owed and is asked for again at a tick.
        let (Some(proofs), Some(m)) = (proofs, self.tasks.get_mut(task_id)) else {
            return;
        };
        let Some(record) = m.state().history.iter().find(|r| r.round == round).cloned() else {
            return;
        };
        m.mark_recorded(round);
        // The end of the task goes out after its last round's results.
        let done = m.is_done() && m.unrecorded().is_empty();
        step.persist(Durable::Task(task_id.to_owned()));
        for (k, agent) in record.participants.iter().enumerate() {
            if let Some(&conn) = self.current.get(agent) {
                step.send(
                    conn,
                    Message::RoundResult {
                        round,
                        accuracy: record.accuracy,
                        contribution: record.contributions[k],
                        reward: record.rewards[k],
                        proof: proofs.get(k).cloned().flatten(),
                    },
                );
            }
        }
        if done {
            self.task_done(task_id, step);
        }
    }

    fn task_done(&self, task_id: &str, step: &mut Step) {
        for (&conn, s) in &self.sessions {
            if s.task.as_deref() == Some(task_id) {
                step.send(
                    conn,
                    Message::TaskDone {
                        task_id: task_id.to_owned(),
                    },
                );
            }
        }
    }

    fn message(
        &mut self,
        conn: ConnId,
        message: Message,
        now_ms: u64,
        step: &mut Step,
    ) -> Result<(), FlError> {
        let session = self.sessions.get_mut(&conn).ok_or(FlError::NoSession)?;
        let agent = session.agent;
        if let Message::Hello { schema, samples } = message {
            match session.role {
                Role::Device => {}
                Role::Engineer | Role::Member => return Err(FlError::UseControlPlane),
                role => {
                    return Err(FlError::WrongRole {
                        role: role.to_string(),
                        action: "take part in federated learning",
                    });
                }
            }
            if session.hello.is_some() {
                return Err(FlError::Unexpected("a second hello"));
            }
            session.hello = Some(Hello { schema, samples });
            self.offer(conn, step);
            return Ok(());
        }
        let Some(hello) = &session.hello else {
            return Err(FlError::Unexpected("a message before hello"));
        };
        let (schema, samples, joined) = (hello.schema.clone(), hello.samples, session.task.clone());
        match message {
            Message::TaskAccept { task_id } if self.evaluations.contains_key(&task_id) => {
                let effects = match self.evaluations.get_mut(&task_id) {
                    Some(e) => e.machine.recruit(agent, &schema, samples, now_ms)?,
                    None => Vec::new(),
                };
                session.task = Some(task_id.clone());
                self.evaluation_effects(&task_id, effects, now_ms, step);
            }
            Message::TaskAccept { task_id } => {
                let Some(machine) = self.tasks.get_mut(&task_id) else {
                    return Err(FlError::NoSuchTask(task_id));
                };
                machine.recruit(agent, &schema)?;
                session.task = Some(task_id.clone());
                // After a restart or a reconnection the agent may be owed the model.
                let mut effects = machine.resend_to(agent);
                effects.extend(machine.tick(now_ms));
                self.effects(&task_id, effects, now_ms, step);
            }
            Message::TaskDecline { task_id, reason } => {
                tracing::info!(task_id, reason, "agent declined");
                // A joined agent declining sits out the open round.
                if joined.as_deref() == Some(task_id.as_str())
                    && let Some(machine) = self.tasks.get_mut(&task_id)
                {
                    let effects = machine.sit_out(agent, now_ms);
                    self.effects(&task_id, effects, now_ms, step);
                }
            }
            Message::EvaluationReport { task_id, counts } => {
                if joined.as_deref() != Some(task_id.as_str()) {
                    return Err(FlError::NotJoined(task_id));
                }
                let effects = self
                    .evaluations
                    .get_mut(&task_id)
                    .map(|e| e.machine.submit(agent, counts, now_ms))
                    .unwrap_or_default();
                self.evaluation_effects(&task_id, effects, now_ms, step);
            }
            Message::WeightsHeader {
                purpose: WeightsPurpose::Update,
                round,
                values,
                chunks,
            } => {
                let max = joined
                    .as_ref()
                    .and_then(|t| self.tasks.get(t))
                    .map_or(0, RoundMachine::param_count);
                // An oversized update is refused before any of it is buffered.
                session.assembler = Some(ChunkAssembler::new(round, values, chunks, max)?);
            }
            Message::WeightsChunk {
                round,
                index,
                values,
            } => {
                let asm = session
                    .assembler
                    .as_mut()
                    .ok_or(FlError::BadChunk { index, total: 0 })?;
                if let Some(w) = asm.push(round, index, values)? {
                    session.weights = Some((round, w));
                    session.assembler = None;
                }
            }
            Message::UpdateDone {
                round,
                samples,
                loss,
            } => {
                let (Some(task), Some((wround, w))) = (joined, session.weights.take()) else {
                    return Err(FlError::Unexpected("an update's end before its weights"));
                };
                if wround != round {
                    return Err(FlError::Unexpected("an update's end for another round"));
                }
                let update = Update {
                    weights: w,
                    samples,
                    loss,
                };
                let effects = self
                    .tasks
                    .get_mut(&task)
                    .map(|m| m.submit(agent, round, update, now_ms))
                    .unwrap_or_default();
                self.effects(&task, effects, now_ms, step);
            }
            Message::SecAggFromAgent { task_id, message } => {
                if joined.as_deref() != Some(task_id.as_str()) {
                    return Err(FlError::NotJoined(task_id));
                }
                let effects = self
                    .tasks
                    .get_mut(&task_id)
                    .map(|m| m.secagg(agent, message, now_ms))
                    .unwrap_or_default();
                self.effects(&task_id, effects, now_ms, step);
            }
            _ => return Err(FlError::Unexpected("this message from an agent")),
        }
        Ok(())
    }

    fn offer_to_idle(&self, step: &mut Step) {
        let idle: Vec<ConnId> = self
            .sessions
            .iter()
            .filter(|(_, s)| s.hello.is_some() && s.task.is_none())
            .map(|(&c, _)| c)
            .collect();
        for conn in idle {
            self.offer(conn, step);
        }
    }

    /// Offers the agent the first unfinished training task its data fits,
    /// or failing that the first such evaluation.
    fn offer(&self, conn: ConnId, step: &mut Step) {
        let Some(hello) = self.sessions.get(&conn).and_then(|s| s.hello.as_ref()) else {
            return;
        };
        let training: Vec<&RoundMachine> = self.tasks.values().filter(|m| !m.is_done()).collect();
        let evaluating: Vec<&EvaluationMachine> = self
            .evaluations
            .values()
            .map(|e| &e.machine)
            .filter(|m| !m.is_done())
            .collect();
        let fits = |schema: &DataSchema| hello.schema.check_against(schema);
        let offer = training
            .iter()
            .find(|m| fits(&m.state().task.schema).is_ok())
            .map(|m| {
                let t = &m.state().task;
                Message::TaskOffer {
                    task_id: t.id.clone(),
                    model: t.model.clone(),
                    schema: t.schema.clone(),
                    rounds: t.rounds,
                    local_epochs: t.local_epochs,
                    params: m.param_count() as u64,
                }
            })
            .or_else(|| {
                evaluating
                    .iter()
                    .map(|m| m.state())
                    .find(|e| fits(&e.task.schema).is_ok())
                    .map(|e| Message::EvaluationOffer {
                        task_id: e.task.id.clone(),
                        schema: e.task.schema.clone(),
                        output: e.task.output,
                        model_bytes: e.model_bytes,
                        params: e.params,
                        model_sha256: e.model_sha256,
                    })
            });
        let message = match offer {
            Some(m) => m,
            // Open tasks, none of which this data fits: say why rather than
            // leave the agent waiting.
            None => match training
                .first()
                .map(|m| &m.state().task.schema)
                .or(evaluating.first().map(|m| &m.state().task.schema))
                .map(fits)
            {
                Some(Err(e)) => Message::Refused {
                    reason: format!("no open task fits your data: {e}"),
                },
                _ => return,
            },
        };
        step.send(conn, message);
    }

    /// Carries out a training task's effects: messages to agents, ledger
    /// writes of closed rounds; the task's state is then persisted.
    fn effects(&mut self, task_id: &str, effects: Vec<Effect>, now_ms: u64, step: &mut Step) {
        let mut global: Option<(u32, Arc<Vec<f32>>)> = None;
        let mut queue: VecDeque<Effect> = effects.into();
        while let Some(effect) = queue.pop_front() {
            let Some(machine) = self.tasks.get_mut(task_id) else {
                return;
            };
            match effect {
                Effect::SendModel {
                    agent,
                    round,
                    config,
                } => match self.current.get(&agent) {
                    Some(&conn) => {
                        step.send(
                            conn,
                            Message::RoundStart {
                                task_id: task_id.to_owned(),
                                round,
                                config,
                            },
                        );
                        // One copy of the model for every agent of the round.
                        let weights = match &global {
                            Some((r, w)) if *r == round => w.clone(),
                            _ => {
                                let w = Arc::new(machine.global().to_vec());
                                global = Some((round, w.clone()));
                                w
                            }
                        };
                        step.rest.push(Command::Send {
                            conn,
                            out: Outgoing::Weights {
                                purpose: WeightsPurpose::Global,
                                round,
                                weights,
                            },
                        });
                    }
                    None => queue.extend(machine.leave(agent, now_ms)),
                },
                Effect::Rejected { agent, reason } => {
                    if let (Some(&conn), Some(round)) =
                        (self.current.get(&agent), machine.current_round())
                    {
                        step.send(conn, Message::UpdateRejected { round, reason });
                    }
                }
                Effect::RoundClosed(record) => {
                    if self.recording.insert((task_id.to_owned(), record.round)) {
                        step.rest.push(Command::Record {
                            task_id: task_id.to_owned(),
                            delta: machine.state().task.privacy.as_ref().map(|p| p.delta),
                            record,
                        });
                    }
                }
                Effect::SecAgg { agent, message } => match self.current.get(&agent) {
                    Some(&conn) => step.send(
                        conn,
                        Message::SecAggToAgent {
                            task_id: task_id.to_owned(),
                            message,
                        },
                    ),
                    None => queue.extend(machine.leave(agent, now_ms)),
                },
                Effect::RoundAbandoned { round, received } => {
                    tracing::warn!(task_id, round, received, "round abandoned: too few updates");
                }
                Effect::Score(job) => step.rest.push(Command::Compute {
                    task_id: task_id.to_owned(),
                    job,
                }),
                // While rounds are owed to the ledger (a round that just
                // closed among them), the end of the task goes out with the
                // last one's results.
                Effect::Finished | Effect::Expired if !machine.state().unrecorded.is_empty() => {}
                Effect::Finished | Effect::Expired => self.task_done(task_id, step),
            }
        }
        step.persist(Durable::Task(task_id.to_owned()));
    }

    /// Carries out an evaluation's effects; its state is then persisted.
    fn evaluation_effects(
        &mut self,
        task_id: &str,
        effects: Vec<EvaluationEffect>,
        now_ms: u64,
        step: &mut Step,
    ) {
        let mut queue: VecDeque<EvaluationEffect> = effects.into();
        let mut done = false;
        while let Some(effect) = queue.pop_front() {
            let Some(eval) = self.evaluations.get_mut(task_id) else {
                return;
            };
            match effect {
                EvaluationEffect::SendModel { agent } => match self.current.get(&agent) {
                    Some(&conn) => step.rest.push(Command::Send {
                        conn,
                        out: Outgoing::Onnx {
                            task_id: task_id.to_owned(),
                            model: eval.model.clone(),
                        },
                    }),
                    None => queue.extend(eval.machine.leave(agent, now_ms)),
                },
                EvaluationEffect::Rejected { agent, reason } => {
                    tracing::info!(task_id, agent = hex::encode(&agent[..4]), %reason, "evaluation report refused");
                    if let Some(&conn) = self.current.get(&agent) {
                        step.send(conn, Message::UpdateRejected { round: 0, reason });
                    }
                }
                EvaluationEffect::Evaluated(result) => {
                    tracing::info!(
                        task_id,
                        participants = result.participants.len(),
                        samples = result.samples,
                        accuracy = result.accuracy,
                        "evaluation closed"
                    );
                    done = true;
                }
                EvaluationEffect::Abandoned { attempt, received } => {
                    tracing::warn!(
                        task_id,
                        attempt,
                        received,
                        "evaluation attempt abandoned: too few reports"
                    );
                }
                EvaluationEffect::Expired => done = true,
            }
        }
        if done {
            self.task_done(task_id, step);
        }
        step.persist(Durable::Evaluation(task_id.to_owned()));
    }
}
