//! The device side of the protocol: connect with an admitted certificate,
//! accept only tasks that fit the local data and policy, train locally,
//! send only model updates. For an evaluation, download the engineer's ONNX
//! model (within the policy's size limits), run it with tract on the local
//! data and send only counts. The `yilian-agent` binary wraps this with a
//! command line and progress display.

use std::net::SocketAddr;
use std::sync::Arc;

use quinn::crypto::rustls::QuicClientConfig;
use sha2::{Digest, Sha256};
use tokio::sync::mpsc;
use yilian_identity::Identity;
use yilian_models::{Dataset, ModelSpec, OnnxModel, OutputKind, TrainConfig};

use crate::coordinator::{next_message, spawn_writer};
use crate::protocol::{ALPN, ChunkAssembler, Message, WeightsPurpose, weight_messages};
use crate::{AgentPolicy, DataSchema, FlError, RejectReason};

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

/// Opens a connection and its message stream.
pub async fn connect(
    endpoint: &quinn::Endpoint,
    node: SocketAddr,
    server_name: &str,
) -> Result<
    (
        quinn::Connection,
        mpsc::UnboundedSender<Message>,
        quinn::RecvStream,
    ),
    FlError,
> {
    let conn = endpoint.connect(node, server_name)?.await?;
    let (send, recv) = conn.open_bi().await?;
    let (tx, rx) = mpsc::unbounded_channel();
    spawn_writer(send, rx);
    Ok((conn, tx, recv))
}

/// Takes part in tasks until the connection ends (or, with `single_task`,
/// until the first task is done). Returns the rewards earned.
pub async fn run(
    identity: &Identity,
    cfg: AgentConfig,
    mut on_event: impl FnMut(AgentEvent),
) -> Result<Vec<EarnedReward>, FlError> {
    let endpoint = client_endpoint(identity)?;
    let (conn, tx, mut recv) = connect(&endpoint, cfg.node, &cfg.server_name).await?;
    let schema = DataSchema {
        features: cfg.data.n_features,
        label_column: cfg.label_column.clone(),
        classes: cfg.data.classes,
    };
    let send = |m: Message| tx.send(m).map_err(|_| FlError::ConnectionClosed);
    send(Message::Hello {
        schema: schema.clone(),
        samples: cfg.data.len() as u64,
    })?;
    let data = Arc::new(cfg.data);
    let mut task: Option<(String, ModelSpec)> = None;
    let mut round_cfg: Option<(u32, TrainConfig)> = None;
    let mut assembler: Option<ChunkAssembler> = None;
    let mut evaluation: Option<EvaluationJob> = None;
    let mut model_assembler: Option<ChunkAssembler<u8>> = None;
    let mut rewards = Vec::new();
    let mut secure = crate::secagg::Participant::new();
    let me = identity.principal().public_key;
    while let Some(message) = next_message(&mut recv).await? {
        match message {
            Message::TaskOffer {
                task_id,
                model,
                schema: wanted,
                rounds,
                local_epochs,
                params,
            } => {
                let verdict = schema
                    .check_against(&wanted)
                    .and_then(|()| cfg.policy.admits(local_epochs, params));
                match verdict {
                    Ok(()) => {
                        send(Message::TaskAccept {
                            task_id: task_id.clone(),
                        })?;
                        on_event(AgentEvent::Joined {
                            task_id: task_id.clone(),
                            rounds,
                        });
                        task = Some((task_id, model));
                    }
                    Err(e) => {
                        on_event(AgentEvent::Declined {
                            task_id: task_id.clone(),
                            reason: e.to_string(),
                        });
                        send(Message::TaskDecline {
                            task_id,
                            reason: e.to_string(),
                        })?;
                    }
                }
            }
            Message::RoundStart { round, config, .. } => {
                cfg.policy.admits(config.epochs, 0)?;
                round_cfg = Some((round, config));
            }
            Message::WeightsHeader {
                purpose: WeightsPurpose::Global,
                round,
                values,
                chunks,
            } => {
                let max = cfg.policy.max_params as usize;
                assembler = Some(ChunkAssembler::new(round, values, chunks, max)?);
            }
            Message::WeightsChunk {
                round,
                index,
                values,
            } => {
                let asm = assembler
                    .as_mut()
                    .ok_or(FlError::BadChunk { index, total: 0 })?;
                let Some(global) = asm.push(round, index, values)? else {
                    continue;
                };
                assembler = None;
                let (Some((_, spec)), Some((cfg_round, config))) = (&task, round_cfg.clone())
                else {
                    return Err(FlError::BadChunk { index, total: 0 });
                };
                if cfg_round != round {
                    return Err(FlError::BadChunk { index, total: 0 });
                }
                on_event(AgentEvent::Training { round });
                let (spec, data) = (spec.clone(), data.clone());
                let start = global.clone();
                let out = tokio::task::spawn_blocking(move || {
                    yilian_models::train(&spec, &global, &data, &config)
                })
                .await
                .map_err(|e| FlError::Worker(e.to_string()))??;
                if secure.is_secure(round) {
                    // Under secure aggregation the model leaves only masked.
                    let advert = secure
                        .trained(me, round, &start, &out.weights, &mut rand::rng())
                        .map_err(|reason| FlError::UpdateRejected { agent: me, reason })?;
                    if let (Some(message), Some((task_id, _))) = (advert, &task) {
                        send(Message::SecAggFromAgent {
                            task_id: task_id.clone(),
                            message,
                        })?;
                    }
                    on_event(AgentEvent::Sent {
                        round,
                        samples: out.samples as u64,
                        loss: out.loss,
                    });
                    continue;
                }
                for m in weight_messages(WeightsPurpose::Update, round, &out.weights) {
                    send(m)?;
                }
                send(Message::UpdateDone {
                    round,
                    samples: out.samples as u64,
                    loss: out.loss,
                })?;
                on_event(AgentEvent::Sent {
                    round,
                    samples: out.samples as u64,
                    loss: out.loss,
                });
            }
            Message::SecAggToAgent { task_id, message } => {
                let reply = secure
                    .handle(message)
                    .map_err(|reason| FlError::UpdateRejected { agent: me, reason })?;
                if let Some(message) = reply {
                    send(Message::SecAggFromAgent { task_id, message })?;
                }
            }
            Message::UpdateRejected { round, reason } => {
                on_event(AgentEvent::Rejected { round, reason })
            }
            Message::RoundResult {
                round,
                accuracy,
                contribution,
                reward,
                proof,
            } => {
                let account = identity.principal().public_key;
                let ledger_index = match (&task, proof) {
                    (Some((task_id, _)), Some(p)) => match p.verify(task_id, round, &account) {
                        Ok(amount) if amount == reward => Some(p.index),
                        Ok(_) => None,
                        Err(e) => {
                            tracing::warn!("reward proof for round {round} failed: {e}");
                            None
                        }
                    },
                    _ => None,
                };
                if let Some((task_id, _)) = &task
                    && reward > 0
                {
                    rewards.push(EarnedReward {
                        task_id: task_id.clone(),
                        round,
                        amount: reward,
                        contribution,
                        ledger_index,
                    });
                }
                on_event(AgentEvent::RoundResult {
                    round,
                    accuracy,
                    contribution,
                    reward,
                    ledger_index,
                });
            }
            Message::EvaluationOffer {
                task_id,
                schema: wanted,
                output,
                model_bytes,
                params,
                model_sha256,
            } => {
                let verdict = schema
                    .check_against(&wanted)
                    .and_then(|()| cfg.policy.admits_onnx(model_bytes, params));
                match verdict {
                    Ok(()) => {
                        send(Message::TaskAccept {
                            task_id: task_id.clone(),
                        })?;
                        on_event(AgentEvent::Evaluating {
                            task_id: task_id.clone(),
                        });
                        evaluation = Some(EvaluationJob {
                            task_id,
                            output,
                            model_bytes,
                            model_sha256,
                        });
                    }
                    Err(e) => {
                        on_event(AgentEvent::Declined {
                            task_id: task_id.clone(),
                            reason: e.to_string(),
                        });
                        send(Message::TaskDecline {
                            task_id,
                            reason: e.to_string(),
                        })?;
                    }
                }
            }
            Message::EvaluationStart {
                task_id,
                bytes,
                chunks,
            } => {
                let job = evaluation
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
                let max = usize::try_from(cfg.policy.max_model_bytes).unwrap_or(usize::MAX);
                model_assembler = Some(ChunkAssembler::for_model(bytes, chunks, max)?);
            }
            Message::ModelChunk { index, bytes } => {
                let asm = model_assembler
                    .as_mut()
                    .ok_or(FlError::BadChunk { index, total: 0 })?;
                let Some(model) = asm.push(0, index, bytes)? else {
                    continue;
                };
                model_assembler = None;
                let Some(job) = &evaluation else {
                    return Err(FlError::BadChunk { index, total: 0 });
                };
                if Sha256::digest(&model)[..] != job.model_sha256 {
                    return Err(FlError::ModelNotOffered);
                }
                let (data, output, policy) = (data.clone(), job.output, cfg.policy.clone());
                let counts = tokio::task::spawn_blocking(move || {
                    let onnx = OnnxModel::from_bytes(model)?;
                    // The offer's parameter count was the coordinator's word; check it.
                    policy.admits_onnx(onnx.byte_len() as u64, onnx.param_count())?;
                    Ok::<_, FlError>(onnx.evaluate_counts(&data, output)?)
                })
                .await
                .map_err(|e| FlError::Worker(e.to_string()))??;
                let (samples, correct) = (counts.samples, counts.correct());
                send(Message::EvaluationReport {
                    task_id: job.task_id.clone(),
                    counts,
                })?;
                on_event(AgentEvent::Reported {
                    task_id: job.task_id.clone(),
                    samples,
                    correct,
                });
            }
            Message::TaskDone { task_id } => {
                on_event(AgentEvent::Done { task_id });
                task = None;
                evaluation = None;
                if cfg.single_task {
                    break;
                }
            }
            Message::Refused { reason } => {
                return Err(FlError::Refused(reason));
            }
            _ => {}
        }
    }
    drop(tx);
    conn.close(0u32.into(), b"done");
    endpoint.wait_idle().await;
    Ok(rewards)
}
