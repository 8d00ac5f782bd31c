//! A second driver of the coordinator [`Engine`]: the same engine the QUIC
//! driver runs, with simulated agents in this process instead of
//! connections, each running the same [`AgentMachine`] as the QUIC agent.
//! Every message goes through both as it would over the wire (hello,
//! offer, model chunks, updates or SecAgg+ steps, results); training goes
//! through the simulated agent's behaviour, scoring jobs run inline, and
//! ledger writes are acknowledged at once.

use std::collections::VecDeque;

use rand::{SeedableRng, rngs::StdRng};
use yilian_identity::{Principal, Role};

use super::{Behaviour, SimAgent};
use crate::agent::{Action, AgentEvent, AgentMachine};
use crate::coordinator::{Command, ConnId, Engine, Input};
use crate::protocol::Message;
use crate::secagg::ToAgent;
use crate::{AgentPolicy, FlError, RoundMachine, RoundRecord};

/// One simulated agent's end of its connection: the agent's own protocol
/// machine, with the simulated agent's data and behaviour for training.
struct Link {
    agent: SimAgent,
    machine: AgentMachine,
    conn: ConnId,
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
            let (machine, hello) = AgentMachine::new(
                agent.id,
                agent.schema(&label),
                agent.data.len() as u64,
                AgentPolicy::default(),
                true,
            );
            for action in hello {
                if let Action::Send(message) = action {
                    queue.extend(engine.handle(Input::Message { conn, message }, 0));
                }
            }
            links.push(Link {
                agent,
                machine,
                conn,
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

    /// A message reaches agent `conn`, whose agent machine answers through
    /// the engine.
    fn deliver(&mut self, conn: ConnId, message: Message) -> Result<(), FlError> {
        let Some(i) = self.links.iter().position(|l| l.conn == conn && !l.closed) else {
            return Ok(());
        };
        if let (
            Message::SecAggToAgent {
                message: ToAgent::Unmask(u),
                ..
            },
            Behaviour::DropsAfterMasking(r),
        ) = (&message, self.links[i].agent.behaviour)
            && u.round == r
        {
            self.close(i);
            return Ok(());
        }
        let actions = self.links[i].machine.handle(message)?;
        self.act(i, actions)
    }

    /// The agent at `i` goes away.
    fn close(&mut self, i: usize) {
        self.links[i].closed = true;
        let conn = self.links[i].conn;
        self.input(Input::Closed { conn });
    }

    /// Carries out agent `i`'s actions; training goes through its behaviour.
    fn act(&mut self, i: usize, actions: Vec<Action>) -> Result<(), FlError> {
        let conn = self.links[i].conn;
        for action in actions {
            match action {
                Action::Send(message) => self.input(Input::Message { conn, message }),
                Action::Train {
                    round,
                    spec,
                    global,
                    config,
                } => {
                    let link = &mut self.links[i];
                    let Some(update) = link.agent.respond_to(&spec, &global, round, &config)?
                    else {
                        if matches!(link.agent.behaviour, Behaviour::DropsAt(_)) {
                            self.close(i);
                        }
                        return Ok(());
                    };
                    let outcome = yilian_models::TrainOutcome {
                        weights: update.weights,
                        samples: update.samples as usize,
                        steps: 0,
                        loss: update.loss,
                    };
                    let mut rng = StdRng::seed_from_u64(self.now_ms ^ u64::from(link.agent.id[0]));
                    let next = link.machine.trained(round, outcome, &mut rng)?;
                    self.act(i, next)?;
                }
                Action::Event(AgentEvent::Rejected { .. }) => self.links[i].agent.rejections += 1,
                Action::Evaluate { .. } => {
                    return Err(FlError::Unexpected(
                        "an evaluation in the training simulation",
                    ));
                }
                Action::Event(_) | Action::Stop => {}
            }
        }
        Ok(())
    }
}
