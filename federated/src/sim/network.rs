//! A second driver of the coordinator [`Engine`]: the same engine the QUIC
//! driver runs, with simulated agents in this process instead of
//! connections. Every message goes through the engine as it would over the
//! wire (hello, offer, model chunks, updates or SecAgg+ steps, results),
//! scoring jobs run inline, and ledger writes are acknowledged at once.

use std::collections::VecDeque;

use rand::{SeedableRng, rngs::StdRng};
use yilian_identity::{Principal, Role};
use yilian_models::TrainConfig;

use super::{Behaviour, SimAgent};
use crate::coordinator::{Command, ConnId, Engine, Input, Outgoing};
use crate::protocol::{ChunkAssembler, Message, WeightsPurpose};
use crate::{FlError, RoundMachine, RoundRecord};

/// One simulated agent's end of its connection.
struct Link {
    agent: SimAgent,
    conn: ConnId,
    task: Option<String>,
    round: Option<(u32, TrainConfig)>,
    assembler: Option<ChunkAssembler>,
    closed: bool,
}

/// The engine, its agents, and a logical clock.
pub struct Network {
    pub engine: Engine,
    links: Vec<Link>,
    pub now_ms: u64,
    task_id: String,
    queue: VecDeque<Command>,
    /// Closed rounds, as the engine recorded them.
    pub records: Vec<RoundRecord>,
}

impl Network {
    /// Adds the task to a fresh engine and connects every agent. Agents
    /// are recruited up front, as [`super::Simulation`] does, so that the
    /// first round samples from all of them, not from the first to join.
    pub fn new(mut machine: RoundMachine, agents: Vec<SimAgent>) -> Result<Self, FlError> {
        let task_id = machine.state().task.id.clone();
        let label = machine.state().task.schema.label_column.clone();
        for a in &agents {
            machine.recruit(a.id, &a.schema(&label))?;
        }
        let mut engine = Engine::default();
        let mut queue: VecDeque<Command> = engine.add_task(machine)?.into();
        let mut links = Vec::new();
        for (i, agent) in agents.into_iter().enumerate() {
            let conn = i as ConnId + 1;
            let principal = Principal {
                org: "sim".into(),
                role: Role::Device,
                name: format!("agent-{i}"),
                public_key: agent.id,
                serial: vec![i as u8],
            };
            queue.extend(engine.handle(Input::Connected { conn, principal }, 0));
            let hello = Message::Hello {
                schema: agent.schema(&label),
                samples: agent.data.len() as u64,
            };
            queue.extend(engine.handle(
                Input::Message {
                    conn,
                    message: hello,
                },
                0,
            ));
            links.push(Link {
                agent,
                conn,
                task: None,
                round: None,
                assembler: None,
                closed: false,
            });
        }
        Ok(Network {
            engine,
            links,
            now_ms: 0,
            task_id,
            queue,
            records: Vec::new(),
        })
    }

    /// Runs until the task is done and every round is recorded.
    pub fn run(&mut self) -> Result<(), FlError> {
        loop {
            while let Some(command) = self.queue.pop_front() {
                self.execute(command)?;
            }
            let Some(m) = self.engine.task(&self.task_id) else {
                return Err(FlError::NoSuchTask(self.task_id.clone()));
            };
            if m.is_done() && m.unrecorded().is_empty() {
                return Ok(());
            }
            // Nothing moves until the next deadline.
            match m.next_deadline() {
                Some(d) if d > self.now_ms => self.now_ms = d,
                _ => return Err(FlError::InvalidTask("not enough agents to start a round")),
            }
            let tick = self.engine.handle(Input::Tick, self.now_ms);
            self.queue.extend(tick);
        }
    }

    fn input(&mut self, input: Input) {
        self.now_ms += 1;
        let commands = self.engine.handle(input, self.now_ms);
        self.queue.extend(commands);
    }

    fn execute(&mut self, command: Command) -> Result<(), FlError> {
        match command {
            Command::Send { conn, out } => {
                for message in out.messages() {
                    self.deliver(conn, message)?;
                }
            }
            Command::Close { conn, reason } => {
                if let Some(l) = self.links.iter_mut().find(|l| l.conn == conn) {
                    l.closed = true;
                }
                tracing::info!(conn, reason, "simulated connection closed");
            }
            Command::Persist(_) | Command::Changed => {}
            Command::Record {
                task_id, record, ..
            } => {
                let (round, n) = (record.round, record.participants.len());
                self.records.push(record);
                self.input(Input::Recorded {
                    task_id,
                    round,
                    proofs: Some(vec![None; n]),
                });
            }
            Command::Compute { task_id, job } => {
                let result = job.run();
                self.input(Input::Computed { task_id, result });
            }
        }
        Ok(())
    }

    /// A message reaches agent `conn`, which answers through the engine.
    fn deliver(&mut self, conn: ConnId, message: Message) -> Result<(), FlError> {
        let Some(i) = self.links.iter().position(|l| l.conn == conn && !l.closed) else {
            return Ok(());
        };
        let link = &mut self.links[i];
        let reply: Vec<Message> = match message {
            Message::TaskOffer { task_id, .. } => {
                link.task = Some(task_id.clone());
                vec![Message::TaskAccept { task_id }]
            }
            Message::RoundStart { round, config, .. } => {
                link.round = Some((round, config));
                Vec::new()
            }
            Message::WeightsHeader {
                purpose: WeightsPurpose::Global,
                round,
                values,
                chunks,
            } => {
                link.assembler = Some(ChunkAssembler::new(round, values, chunks, usize::MAX)?);
                Vec::new()
            }
            Message::WeightsChunk {
                round,
                index,
                values,
            } => {
                let asm = link
                    .assembler
                    .as_mut()
                    .ok_or(FlError::BadChunk { index, total: 0 })?;
                let Some(global) = asm.push(round, index, values)? else {
                    return Ok(());
                };
                link.assembler = None;
                return self.trained(i, round, global);
            }
            Message::SecAggToAgent { task_id, message } => {
                let a = &mut link.agent;
                if let (crate::secagg::ToAgent::Unmask(u), Behaviour::DropsAfterMasking(r)) =
                    (&message, a.behaviour)
                    && u.round == r
                {
                    link.closed = true;
                    self.input(Input::Closed { conn });
                    return Ok(());
                }
                let agent = a.id;
                match a
                    .secure
                    .handle(message)
                    .map_err(|reason| FlError::UpdateRejected { agent, reason })?
                {
                    Some(message) => vec![Message::SecAggFromAgent { task_id, message }],
                    None => Vec::new(),
                }
            }
            Message::UpdateRejected { .. } => {
                link.agent.rejections += 1;
                Vec::new()
            }
            _ => Vec::new(),
        };
        for message in reply {
            self.input(Input::Message { conn, message });
        }
        Ok(())
    }

    /// Agent `i` has the model of `round`: it trains (or misbehaves) and sends.
    fn trained(&mut self, i: usize, round: u32, global: Vec<f32>) -> Result<(), FlError> {
        let Some(spec) = self.engine.task(&self.task_id).map(|m| m.spec().clone()) else {
            return Ok(());
        };
        let link = &mut self.links[i];
        let Some((r, config)) = link.round.clone().filter(|(r, _)| *r == round) else {
            return Err(FlError::Unexpected("a model before its round start"));
        };
        let conn = link.conn;
        let update = link.agent.respond_to(&spec, &global, r, &config)?;
        let Some(update) = update else {
            if matches!(link.agent.behaviour, Behaviour::DropsAt(_)) {
                link.closed = true;
                self.input(Input::Closed { conn });
            }
            return Ok(());
        };
        let agent = link.agent.id;
        if link.agent.secure.is_secure(round) {
            let mut rng = StdRng::seed_from_u64(self.now_ms ^ u64::from(agent[0]));
            let advert = link
                .agent
                .secure
                .trained(agent, round, &global, &update.weights, &mut rng)
                .map_err(|reason| FlError::UpdateRejected { agent, reason })?;
            let task_id = link.task.clone().unwrap_or_default();
            if let Some(message) = advert {
                self.input(Input::Message {
                    conn,
                    message: Message::SecAggFromAgent { task_id, message },
                });
            }
            return Ok(());
        }
        let out = Outgoing::Weights {
            purpose: WeightsPurpose::Update,
            round,
            weights: std::sync::Arc::new(update.weights),
        };
        for message in out.messages() {
            self.input(Input::Message { conn, message });
        }
        self.input(Input::Message {
            conn,
            message: Message::UpdateDone {
                round,
                samples: update.samples,
                loss: update.loss,
            },
        });
        Ok(())
    }
}
