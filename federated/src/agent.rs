//! The device side of the protocol: connect with an admitted certificate,
//! accept only tasks that fit the local data and policy, train locally,
//! send only model updates. For an evaluation, download the engineer's ONNX
//! model (within the policy's size limits), run it with tract on the local
//! data and send only counts. The `yilian-agent` binary wraps this with a
//! command line and progress display.
//!
//! [`AgentMachine`] is the protocol, sans IO; [`run`] drives it over QUIC,
//! training and running ONNX models on blocking threads.

use std::net::SocketAddr;
use std::sync::Arc;

use quinn::crypto::rustls::QuicClientConfig;
use sha2::{Digest, Sha256};
use tokio::sync::mpsc;
use yilian_identity::Identity;
use yilian_models::{Dataset, ModelSpec, OnnxModel, OutputKind, TrainConfig};

use crate::protocol::{
    ALPN, ChunkAssembler, Message, RewardProof, WeightsPurpose, weight_messages,
};
use crate::schedule::{DailyBytes, Pause, Readings};
use crate::wire::{next_message, spawn_writer};
use crate::{AgentId, AgentPolicy, DataSchema, FlError, RejectReason};

/// What the agent reports as it goes.
#[derive(Clone, Debug, PartialEq)]
pub enum AgentEvent {
    Joined {
        task_id: String,
        rounds: u32,
    },
    Declined {
        task_id: String,
        reason: String,
    },
    Training {
        round: u32,
    },
    Sent {
        round: u32,
        samples: u64,
        loss: f32,
    },
    Rejected {
        round: u32,
        reason: RejectReason,
    },
    RoundResult {
        round: u32,
        accuracy: f64,
        contribution: f64,
        reward: u64,
        /// Ledger index of the reward, if its inclusion proof verified.
        ledger_index: Option<u64>,
        /// The proof, when it verified, for the owner to check again.
        proof: Option<Box<RewardProof>>,
    },
    /// The owner's schedule kept the device from training this round.
    Paused {
        round: u32,
        reason: Pause,
    },
    /// Bytes this session has sent and received so far (QUIC datagrams,
    /// handshakes included).
    Traffic {
        sent: u64,
        received: u64,
    },
    Done {
        task_id: String,
    },
    /// Joined an evaluation.
    Evaluating {
        task_id: String,
    },
    /// Sent an evaluation's counts; `correct` of `samples` stays visible
    /// to the device owner, as it is their own data.
    Reported {
        task_id: String,
        samples: u64,
        correct: u64,
    },
}

/// An evaluation the agent accepted: what it agreed to download and run.
struct EvaluationJob {
    task_id: String,
    output: OutputKind,
    model_bytes: u64,
    model_sha256: [u8; 32],
}

/// A reward the agent earned.
#[derive(Clone, Debug, PartialEq)]
pub struct EarnedReward {
    pub task_id: String,
    pub round: u32,
    pub amount: u64,
    pub contribution: f64,
    /// Ledger index of the reward transaction, present only if the agent
    /// verified its inclusion proof under a signed tree head.
    pub ledger_index: Option<u64>,
}

/// Where and how to join.
pub struct AgentConfig {
    pub node: SocketAddr,
    /// The name the coordinator's certificate carries (`localhost` by default).
    pub server_name: String,
    pub data: Dataset,
    pub label_column: String,
    pub policy: AgentPolicy,
    /// Stop after the first task finishes.
    pub single_task: bool,
    /// Bytes earlier sessions moved, for the daily budget.
    pub earlier_today: DailyBytes,
}

/// A QUIC client endpoint presenting `identity`.
pub fn client_endpoint(identity: &Identity) -> Result<quinn::Endpoint, FlError> {
    let mut tls =
        yilian_identity::tls::client_config(identity).map_err(|e| FlError::Tls(e.to_string()))?;
    tls.alpn_protocols = vec![ALPN.to_vec()];
    let crypto = QuicClientConfig::try_from(tls).map_err(|e| FlError::Tls(e.to_string()))?;
    let mut endpoint = quinn::Endpoint::client(SocketAddr::from(([0, 0, 0, 0], 0)))?;
    endpoint.set_default_client_config(quinn::ClientConfig::new(Arc::new(crypto)));
    Ok(endpoint)
}

/// Messages an agent queues for its connection before a send waits.
pub const OUTBOX: usize = 64;

/// Opens a connection and its message stream.
pub async fn connect(
    endpoint: &quinn::Endpoint,
    node: SocketAddr,
    server_name: &str,
) -> Result<(quinn::Connection, mpsc::Sender<Message>, quinn::RecvStream), FlError> {
    let conn = endpoint.connect(node, server_name)?.await?;
    let (send, recv) = conn.open_bi().await?;
    // Bounded: a sender waits for the stream (QUIC flow control) instead of
    // queueing a whole model's chunks in memory.
    let (tx, rx) = mpsc::channel(OUTBOX);
    spawn_writer(send, rx);
    Ok((conn, tx, recv))
}

/// What an [`AgentMachine`]'s driver must do, in order.
#[derive(Debug)]
pub enum Action {
    Send(Message),
    /// Train `spec` from `global` on the local data, then hand the outcome
    /// to [`AgentMachine::trained`].
    Train {
        round: u32,
        spec: ModelSpec,
        global: Vec<f32>,
        config: TrainConfig,
    },
    /// Load the ONNX `model`, check it against the policy, run it on the
    /// local data, then hand the counts to [`AgentMachine::evaluated`].
    Evaluate {
        model: Vec<u8>,
        output: OutputKind,
    },
    Event(AgentEvent),
    /// The task is done and the agent takes only one: stop.
    Stop,
}

/// The device's side of the protocol, sans IO: messages from the
/// coordinator in, messages to send and local work to do out. The QUIC
/// agent drives it; the training and ONNX runs are the driver's to place.
pub struct AgentMachine {
    me: AgentId,
    schema: DataSchema,
    policy: AgentPolicy,
    single_task: bool,
    task: Option<(String, ModelSpec)>,
    round_cfg: Option<(u32, TrainConfig)>,
    assembler: Option<ChunkAssembler>,
    /// The model being trained from (a secure round encodes the change).
    training_from: Option<(u32, Vec<f32>)>,
    evaluation: Option<EvaluationJob>,
    model_assembler: Option<ChunkAssembler<u8>>,
    secure: crate::secagg::Participant,
    rewards: Vec<EarnedReward>,
}

impl AgentMachine {
    /// An agent holding `samples` rows of `schema`; the hello to send first.
    pub fn new(
        me: AgentId,
        schema: DataSchema,
        samples: u64,
        policy: AgentPolicy,
        single_task: bool,
    ) -> (Self, Vec<Action>) {
        let hello = Message::Hello {
            schema: schema.clone(),
            samples,
        };
        let machine = AgentMachine {
            me,
            schema,
            policy,
            single_task,
            task: None,
            round_cfg: None,
            assembler: None,
            training_from: None,
            evaluation: None,
            model_assembler: None,
            secure: crate::secagg::Participant::new(),
            rewards: Vec::new(),
        };
        (machine, vec![Action::Send(hello)])
    }

    /// Rewards earned so far.
    pub fn rewards(&self) -> &[EarnedReward] {
        &self.rewards
    }

    /// A message from the coordinator.
    pub fn handle(&mut self, message: Message) -> Result<Vec<Action>, FlError> {
        let mut out = Vec::new();
        match message {
            Message::TaskOffer {
                task_id,
                model,
                schema: wanted,
                rounds,
                local_epochs,
                params,
            } => {
                let verdict = self
                    .policy
                    .admits_task(&task_id)
                    .and_then(|()| self.schema.check_against(&wanted))
                    .and_then(|()| self.policy.admits(local_epochs, params));
                match verdict {
                    Ok(()) => {
                        out.push(Action::Send(Message::TaskAccept {
                            task_id: task_id.clone(),
                        }));
                        out.push(Action::Event(AgentEvent::Joined {
                            task_id: task_id.clone(),
                            rounds,
                        }));
                        self.task = Some((task_id, model));
                    }
                    Err(e) => out.extend(decline(task_id, &e)),
                }
            }
            Message::RoundStart { round, config, .. } => {
                self.policy.admits(config.epochs, 0)?;
                self.round_cfg = Some((round, config));
            }
            Message::WeightsHeader {
                purpose: WeightsPurpose::Global,
                round,
                values,
                chunks,
            } => {
                let max = self.policy.max_params as usize;
                self.assembler = Some(ChunkAssembler::new(round, values, chunks, max)?);
            }
            Message::WeightsChunk {
                round,
                index,
                values,
            } => {
                let asm = self
                    .assembler
                    .as_mut()
                    .ok_or(FlError::BadChunk { index, total: 0 })?;
                let Some(global) = asm.push(round, index, values)? else {
                    return Ok(out);
                };
                self.assembler = None;
                let (Some((_, spec)), Some((cfg_round, config))) =
                    (&self.task, self.round_cfg.clone())
                else {
                    return Err(FlError::BadChunk { index, total: 0 });
                };
                if cfg_round != round {
                    return Err(FlError::BadChunk { index, total: 0 });
                }
                out.push(Action::Event(AgentEvent::Training { round }));
                self.training_from = Some((round, global.clone()));
                out.push(Action::Train {
                    round,
                    spec: spec.clone(),
                    global,
                    config,
                });
            }
            Message::SecAggToAgent { task_id, message } => {
                let me = self.me;
                let reply = self
                    .secure
                    .handle(message)
                    .map_err(|reason| FlError::UpdateRejected { agent: me, reason })?;
                if let Some(message) = reply {
                    out.push(Action::Send(Message::SecAggFromAgent { task_id, message }));
                }
            }
            Message::UpdateRejected { round, reason } => {
                out.push(Action::Event(AgentEvent::Rejected { round, reason }));
            }
            Message::RoundResult {
                round,
                accuracy,
                contribution,
                reward,
                proof,
            } => {
                let proof = match (&self.task, proof) {
                    (Some((task_id, _)), Some(p)) => match p.verify(task_id, round, &self.me) {
                        Ok(amount) if amount == reward => Some(p),
                        Ok(_) => None,
                        Err(e) => {
                            tracing::warn!("reward proof for round {round} failed: {e}");
                            None
                        }
                    },
                    _ => None,
                };
                let ledger_index = proof.as_ref().map(|p| p.index);
                if let Some((task_id, _)) = &self.task
                    && reward > 0
                {
                    self.rewards.push(EarnedReward {
                        task_id: task_id.clone(),
                        round,
                        amount: reward,
                        contribution,
                        ledger_index,
                    });
                }
                out.push(Action::Event(AgentEvent::RoundResult {
                    round,
                    accuracy,
                    contribution,
                    reward,
                    ledger_index,
                    proof: proof.map(Box::new),
                }));
            }
            Message::EvaluationOffer {
                task_id,
                schema: wanted,
                output,
                model_bytes,
                params,
                model_sha256,
            } => {
                let verdict = self
                    .policy
                    .admits_task(&task_id)
                    .and_then(|()| self.schema.check_against(&wanted))
                    .and_then(|()| self.policy.admits_onnx(model_bytes, params));
                match verdict {
                    Ok(()) => {
                        out.push(Action::Send(Message::TaskAccept {
                            task_id: task_id.clone(),
                        }));
                        out.push(Action::Event(AgentEvent::Evaluating {
                            task_id: task_id.clone(),
                        }));
                        self.evaluation = Some(EvaluationJob {
                            task_id,
                            output,
                            model_bytes,
                            model_sha256,
                        });
                    }
                    Err(e) => out.extend(decline(task_id, &e)),
                }
            }
            Message::EvaluationStart {
                task_id,
                bytes,
                chunks,
            } => {
                let job = self
                    .evaluation
                    .as_ref()
                    .filter(|j| j.task_id == task_id)
                    .ok_or_else(|| FlError::NoSuchTask(task_id.clone()))?;
                // The model must be the size offered; the policy caps what is buffered.
                if bytes != job.model_bytes {
                    return Err(FlError::BadChunk {
                        index: 0,
                        total: chunks,
                    });
                }
                let max = usize::try_from(self.policy.max_model_bytes).unwrap_or(usize::MAX);
                self.model_assembler = Some(ChunkAssembler::for_model(bytes, chunks, max)?);
            }
            Message::ModelChunk { index, bytes } => {
                let asm = self
                    .model_assembler
                    .as_mut()
                    .ok_or(FlError::BadChunk { index, total: 0 })?;
                let Some(model) = asm.push(0, index, bytes)? else {
                    return Ok(out);
                };
                self.model_assembler = None;
                let Some(job) = &self.evaluation else {
                    return Err(FlError::BadChunk { index, total: 0 });
                };
                if Sha256::digest(&model)[..] != job.model_sha256 {
                    return Err(FlError::ModelNotOffered);
                }
                out.push(Action::Evaluate {
                    model,
                    output: job.output,
                });
            }
            Message::TaskDone { task_id } => {
                out.push(Action::Event(AgentEvent::Done { task_id }));
                self.task = None;
                self.evaluation = None;
                if self.single_task {
                    out.push(Action::Stop);
                }
            }
            Message::Refused { reason } => return Err(FlError::Refused(reason)),
            _ => {}
        }
        Ok(out)
    }

    /// Local training of `round` finished: its update (masked under secure
    /// aggregation) to send.
    pub fn trained(
        &mut self,
        round: u32,
        trained: yilian_models::TrainOutcome,
        rng: &mut impl rand::CryptoRng,
    ) -> Result<Vec<Action>, FlError> {
        let mut out = Vec::new();
        let (samples, loss) = (trained.samples as u64, trained.loss);
        let start = self
            .training_from
            .take()
            .filter(|(r, _)| *r == round)
            .map(|(_, w)| w)
            .ok_or(FlError::Unexpected(
                "a trained model for a round not started",
            ))?;
        if self.secure.is_secure(round) {
            // Under secure aggregation the model leaves only masked.
            let me = self.me;
            let advert = self
                .secure
                .trained(me, round, &start, &trained.weights, rng)
                .map_err(|reason| FlError::UpdateRejected { agent: me, reason })?;
            if let (Some(message), Some((task_id, _))) = (advert, &self.task) {
                out.push(Action::Send(Message::SecAggFromAgent {
                    task_id: task_id.clone(),
                    message,
                }));
            }
        } else {
            out.extend(
                weight_messages(WeightsPurpose::Update, round, &trained.weights)
                    .into_iter()
                    .map(Action::Send),
            );
            out.push(Action::Send(Message::UpdateDone {
                round,
                samples,
                loss,
            }));
        }
        out.push(Action::Event(AgentEvent::Sent {
            round,
            samples,
            loss,
        }));
        Ok(out)
    }

    /// The owner's schedule keeps the device out of `round`: it forgets
    /// the round's model and tells the coordinator why, so the round goes
    /// on without it.
    pub fn sit_out(&mut self, round: u32, reason: Pause) -> Vec<Action> {
        self.training_from = None;
        let mut out = vec![Action::Event(AgentEvent::Paused {
            round,
            reason: reason.clone(),
        })];
        if let Some((task_id, _)) = &self.task {
            out.push(Action::Send(Message::TaskDecline {
                task_id: task_id.clone(),
                reason: reason.to_string(),
            }));
        }
        out
    }

    /// The evaluation's counts: the report to send.
    pub fn evaluated(&mut self, counts: yilian_models::EvalCounts) -> Result<Vec<Action>, FlError> {
        let job = self
            .evaluation
            .as_ref()
            .ok_or(FlError::Unexpected("counts with no evaluation joined"))?;
        let (samples, correct) = (counts.samples, counts.correct());
        Ok(vec![
            Action::Send(Message::EvaluationReport {
                task_id: job.task_id.clone(),
                counts,
            }),
            Action::Event(AgentEvent::Reported {
                task_id: job.task_id.clone(),
                samples,
                correct,
            }),
        ])
    }
}

fn decline(task_id: String, e: &FlError) -> Vec<Action> {
    vec![
        Action::Event(AgentEvent::Declined {
            task_id: task_id.clone(),
            reason: e.to_string(),
        }),
        Action::Send(Message::TaskDecline {
            task_id,
            reason: e.to_string(),
        }),
    ]
}

/// What the schedule needs now: the clock, the load and today's bytes
/// (earlier sessions' and this connection's).
fn readings(earlier: DailyBytes, conn: &quinn::Connection) -> Readings {
    let unix_secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let (sent, received) = traffic(conn);
    Readings {
        unix_secs,
        load_per_core: load_per_core(),
        bytes_today: earlier.on(unix_secs).bytes + sent + received,
    }
}

/// Bytes this connection sent and received, as UDP datagrams.
fn traffic(conn: &quinn::Connection) -> (u64, u64) {
    let s = conn.stats();
    (s.udp_tx.bytes, s.udp_rx.bytes)
}

/// The 1-minute load average per core (Linux `/proc/loadavg`).
fn load_per_core() -> Option<f64> {
    let text = std::fs::read_to_string("/proc/loadavg").ok()?;
    let load: f64 = text.split_whitespace().next()?.parse().ok()?;
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    Some(load / cores as f64)
}

/// Takes part in tasks until the connection ends (or, with `single_task`,
/// until the first task is done), within the owner's schedule: a round
/// outside it is sat out, and a spent byte budget ends the session with
/// [`FlError::Paused`]. Returns the rewards earned.
pub async fn run(
    identity: &Identity,
    cfg: AgentConfig,
    mut on_event: impl FnMut(AgentEvent),
) -> Result<Vec<EarnedReward>, FlError> {
    let schedule = cfg.policy.schedule.clone();
    schedule.check()?;
    let endpoint = client_endpoint(identity)?;
    let (conn, tx, mut recv) = connect(&endpoint, cfg.node, &cfg.server_name).await?;
    let schema = DataSchema {
        features: cfg.data.n_features,
        label_column: cfg.label_column.clone(),
        classes: cfg.data.classes,
    };
    let (mut machine, first) = AgentMachine::new(
        identity.principal().public_key,
        schema,
        cfg.data.len() as u64,
        cfg.policy.clone(),
        cfg.single_task,
    );
    let data = Arc::new(cfg.data);
    let earlier = cfg.earlier_today;
    let mut actions: std::collections::VecDeque<Action> = first.into();
    let outcome = 'session: loop {
        while let Some(action) = actions.pop_front() {
            match action {
                Action::Send(m) => {
                    if tx.send(m).await.is_err() {
                        break 'session Err(FlError::ConnectionClosed);
                    }
                }
                Action::Event(e) => {
                    let counts =
                        matches!(e, AgentEvent::Sent { .. } | AgentEvent::RoundResult { .. });
                    on_event(e);
                    if counts {
                        let (sent, received) = traffic(&conn);
                        on_event(AgentEvent::Traffic { sent, received });
                    }
                }
                Action::Stop => break 'session Ok(()),
                Action::Train {
                    round,
                    spec,
                    global,
                    config,
                } => {
                    if let Err(pause) = schedule.may_train(&readings(earlier, &conn)) {
                        if matches!(pause, Pause::ByteBudget { .. }) {
                            break 'session Err(pause.into());
                        }
                        actions.extend(machine.sit_out(round, pause));
                        continue;
                    }
                    let data = data.clone();
                    let started = std::time::Instant::now();
                    let trained = tokio::task::spawn_blocking(move || {
                        yilian_models::train(&spec, &global, &data, &config)
                    })
                    .await
                    .map_err(|e| FlError::Worker(e.to_string()))?;
                    let trained = match trained {
                        Ok(t) => t,
                        Err(e) => break 'session Err(e.into()),
                    };
                    // Keep to the CPU share: rest before sending, so the
                    // next round cannot start training at once.
                    tokio::time::sleep(schedule.rest_after(started.elapsed())).await;
                    match machine.trained(round, trained, &mut rand::rng()) {
                        Ok(next) => actions.extend(next),
                        Err(e) => break 'session Err(e),
                    }
                }
                Action::Evaluate { model, output } => {
                    let (data, policy) = (data.clone(), cfg.policy.clone());
                    let counts = tokio::task::spawn_blocking(move || {
                        let onnx = OnnxModel::from_bytes(model)?;
                        // The offer's parameter count was the coordinator's word; check it.
                        policy.admits_onnx(onnx.byte_len() as u64, onnx.param_count())?;
                        Ok::<_, FlError>(onnx.evaluate_counts(&data, output)?)
                    })
                    .await
                    .map_err(|e| FlError::Worker(e.to_string()))?;
                    match counts.and_then(|c| machine.evaluated(c)) {
                        Ok(next) => actions.extend(next),
                        Err(e) => break 'session Err(e),
                    }
                }
            }
        }
        // Every message counts against the budget, not only training.
        if let Err(pause) = schedule.within_budget(readings(earlier, &conn).bytes_today) {
            break 'session Err(pause.into());
        }
        match next_message(&mut recv).await {
            Ok(Some(message)) => match machine.handle(message) {
                Ok(next) => actions.extend(next),
                Err(e) => break 'session Err(e),
            },
            Ok(None) => break Ok(()),
            Err(e) => break Err(e),
        }
    };
    let (sent, received) = traffic(&conn);
    on_event(AgentEvent::Traffic { sent, received });
    drop(tx);
    let reason: &[u8] = match &outcome {
        Err(FlError::Paused(_)) => b"the owner's byte budget is spent",
        _ => b"done",
    };
    conn.close(0u32.into(), reason);
    endpoint.wait_idle().await;
    outcome.map(|()| machine.rewards)
}
