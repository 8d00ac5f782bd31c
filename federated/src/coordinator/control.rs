//! The engineer's control plane over gRPC (`proto/federated.proto`):
//! submit a task, follow it, download its model. The node serves it beside
//! its other APIs, with mutual TLS; only engineers and members may call it.
//! Agents keep the QUIC protocol.
//!
//! A submission is checked whole (task file, validation set, initial
//! weights or ONNX model) and anchored on the ledger before anything is
//! stored, so a refused one leaves no trace.

use std::pin::Pin;
use std::sync::{Arc, Weak};

use futures::Stream;
use sha2::{Digest, Sha256};
use tonic::{Request, Response, Status, Streaming};
use yilian_identity::{Principal, Role};
use yilian_ledger::{Payload, Transaction};
use yilian_models::{Dataset, LabelColumn, OnnxModel};

use super::{
    EvaluationTask, Inner, MAX_EVALUATION_MODEL_BYTES, Shared, lock, offer_task, task_dir,
};
use crate::pb;
use crate::{
    AgentId, EvaluationMachine, EvaluationPhase, EvaluationResult, FlError, Phase, RoundMachine,
    RoundRecord, TaskFile,
};

/// Bytes per [`pb::DownloadChunk`].
const DOWNLOAD_CHUNK: usize = 1 << 20;

/// The tonic service; [`super::Coordinator::control`] makes one.
#[derive(Clone)]
pub struct ControlPlane {
    // Weak: a dropped coordinator stops, whoever still serves its API.
    shared: Weak<Shared>,
}

impl ControlPlane {
    pub(super) fn new(shared: &Arc<Shared>) -> Self {
        ControlPlane {
            shared: Arc::downgrade(shared),
        }
    }

    /// For the node's router.
    pub fn into_server(self) -> pb::federated_server::FederatedServer<Self> {
        // An evaluation model travels in chunks, so the default 4 MiB holds.
        pb::federated_server::FederatedServer::new(self)
    }

    fn shared(&self) -> Result<Arc<Shared>, FlError> {
        self.shared.upgrade().ok_or(FlError::Stopped)
    }
}

fn engineer<T>(req: &Request<T>, action: &'static str) -> Result<Principal, Status> {
    let caller = yilian_identity::grpc::caller(req)?;
    match caller.role {
        Role::Engineer | Role::Member => Ok(caller),
        role => Err(FlError::WrongRole {
            role: role.to_string(),
            action,
        }
        .into()),
    }
}

/// Anchors a task on the ledger (when the coordinator has one) and returns
/// the entry's index, 0 without a ledger.
async fn anchor(shared: &Shared, payload: Payload) -> Result<u64, FlError> {
    let Some(ledger) = &shared.ledger else {
        return Ok(0);
    };
    let tx = Transaction::new(payload).sign(shared.identity.signing_key());
    Ok(ledger.submit(tx).await?.index)
}

/// Stores an accepted task's validation set under the lock, so two
/// submissions of one id cannot both land; undone if the state cannot be saved.
fn store_training(
    shared: &Shared,
    machine: RoundMachine,
    validation_csv: &[u8],
) -> Result<(), FlError> {
    let mut inner = lock(shared);
    let id = machine.state().task.id.clone();
    if inner.task_exists(&id) {
        return Err(FlError::TaskExists(id));
    }
    let dir = task_dir(&shared.data_dir, &id);
    let saved = std::fs::create_dir_all(&dir)
        .and_then(|()| std::fs::write(dir.join("validation.csv"), validation_csv))
        .map_err(FlError::from)
        .and_then(|()| inner.store.save(machine.state()));
    if let Err(e) = saved {
        let _ = std::fs::remove_dir_all(&dir);
        return Err(e);
    }
    inner.tasks.insert(id, machine);
    offer_to_idle(&mut inner);
    Ok(())
}

fn offer_to_idle(inner: &mut Inner) {
    let idle: Vec<AgentId> = inner.agents.keys().copied().collect();
    for agent in idle {
        offer_task(inner, agent);
    }
    inner.changed.send_replace(());
}

pub(super) async fn submit_task(
    shared: &Shared,
    req: pb::SubmitTaskRequest,
) -> Result<pb::SubmitTaskResponse, FlError> {
    let TaskFile::Training(task) = TaskFile::from_toml(&req.task_toml)? else {
        return Err(FlError::InvalidTask(
            "an evaluation task goes to SubmitEvaluation (`yilian task submit` does this), with its ONNX model",
        ));
    };
    let task = *task;
    if lock(shared).task_exists(&task.id) {
        return Err(FlError::TaskExists(task.id));
    }
    let validation = Dataset::from_csv_reader(
        req.validation_csv.as_slice(),
        true,
        &LabelColumn::Name(task.schema.label_column.clone()),
        Some(task.schema.classes),
    )
    .map_err(FlError::Validation)?;
    let initial = if req.initial_weights.is_empty() {
        task.model.init_weights(task.init_seed)?
    } else {
        yilian_models::from_safetensors_bytes(&req.initial_weights, Some(&task.model))?.1
    };
    let machine = RoundMachine::new(task.clone(), initial, validation)?;
    let params = machine.param_count() as u64;
    let ledger_index = anchor(
        shared,
        Payload::TaskSubmitted {
            task_id: task.id.clone(),
            spec_hash: task.hash(),
            reward_budget: task.reward_budget,
        },
    )
    .await?;
    store_training(shared, machine, &req.validation_csv)?;
    tracing::info!(task_id = task.id, params, "training task accepted");
    Ok(pb::SubmitTaskResponse {
        task_id: task.id,
        params,
        ledger_index,
    })
}

async fn submit_evaluation(
    shared: &Shared,
    mut parts: Streaming<pb::SubmitEvaluationRequest>,
) -> Result<pb::SubmitTaskResponse, Status> {
    use pb::submit_evaluation_request::Part;
    let header = match parts.message().await? {
        Some(pb::SubmitEvaluationRequest {
            part: Some(Part::Header(h)),
        }) => h,
        _ => return Err(FlError::EvaluationHeaderFirst.into()),
    };
    let TaskFile::Evaluation(task) = TaskFile::from_toml(&header.task_toml)? else {
        return Err(FlError::InvalidTask(
            "a training task goes to SubmitTask, with its validation set, not an ONNX model",
        )
        .into());
    };
    if lock(shared).task_exists(&task.id) {
        return Err(FlError::TaskExists(task.id).into());
    }
    let announced = header.model_bytes as usize;
    if announced > MAX_EVALUATION_MODEL_BYTES {
        return Err(FlError::ModelTooLarge {
            size: announced,
            limit: MAX_EVALUATION_MODEL_BYTES,
        }
        .into());
    }
    // Refuses an oversized model as it arrives, before buffering more than announced.
    let mut model = Vec::with_capacity(announced);
    while let Some(part) = parts.message().await? {
        let Some(Part::ModelChunk(chunk)) = part.part else {
            return Err(FlError::EvaluationHeaderFirst.into());
        };
        if model.len() + chunk.len() > announced {
            return Err(FlError::ModelSizeMismatch {
                announced,
                received: model.len() + chunk.len(),
            }
            .into());
        }
        model.extend_from_slice(&chunk);
    }
    if model.len() != announced {
        return Err(FlError::ModelSizeMismatch {
            announced,
            received: model.len(),
        }
        .into());
    }
    // tract parses and test-runs the graph: CPU work, off the async threads.
    let onnx = tokio::task::spawn_blocking(move || OnnxModel::from_bytes(model))
        .await
        .map_err(|e| Status::internal(e.to_string()))?
        .map_err(FlError::from)?;
    let machine = EvaluationMachine::new(task.clone(), &onnx)?;
    let params = machine.state().params;
    let ledger_index = anchor(
        shared,
        Payload::TaskSubmitted {
            task_id: task.id.clone(),
            spec_hash: task.hash(&machine.state().model_sha256),
            reward_budget: 0,
        },
    )
    .await?;
    {
        let mut inner = lock(shared);
        if inner.task_exists(&task.id) {
            return Err(FlError::TaskExists(task.id).into());
        }
        let dir = task_dir(&shared.data_dir, &task.id);
        let saved = std::fs::create_dir_all(&dir)
            .and_then(|()| {
                std::fs::write(super::model_path(&shared.data_dir, &task.id), onnx.bytes())
            })
            .map_err(FlError::from)
            .and_then(|()| inner.store.save_evaluation(machine.state()));
        if let Err(e) = saved {
            let _ = std::fs::remove_dir_all(&dir);
            return Err(e.into());
        }
        let model = Arc::new(onnx.bytes().to_vec());
        inner
            .evaluations
            .insert(task.id.clone(), EvaluationTask { machine, model });
        offer_to_idle(&mut inner);
    }
    tracing::info!(task_id = task.id, params, "evaluation task accepted");
    Ok(pb::SubmitTaskResponse {
        task_id: task.id,
        params,
        ledger_index,
    })
}

fn agents(ids: &[AgentId]) -> Vec<Vec<u8>> {
    ids.iter().map(|a| a.to_vec()).collect()
}

impl From<&RoundRecord> for pb::Round {
    fn from(r: &RoundRecord) -> Self {
        pb::Round {
            round: r.round,
            accuracy: r.accuracy,
            loss: r.loss,
            participants: r
                .participants
                .iter()
                .enumerate()
                .map(|(k, a)| pb::Contribution {
                    agent: a.to_vec(),
                    contribution: r.contributions.get(k).copied().unwrap_or_default(),
                    reward: r.rewards.get(k).copied().unwrap_or_default(),
                })
                .collect(),
            missing: agents(&r.missing),
            rejected: r
                .rejected
                .iter()
                .map(|(a, why)| pb::Rejection {
                    agent: a.to_vec(),
                    reason: why.to_string(),
                })
                .collect(),
            evaluations: r.evaluations as u64,
            closed_at_ms: r.closed_at_ms,
            epsilon: r.epsilon,
            failures: r.failures.clone(),
        }
    }
}

impl From<&EvaluationResult> for pb::EvaluationResult {
    fn from(r: &EvaluationResult) -> Self {
        pb::EvaluationResult {
            participants: agents(&r.participants),
            missing: agents(&r.missing),
            samples: r.samples,
            accuracy: r.accuracy,
            loss: r.loss,
            confusion: r
                .confusion
                .iter()
                .map(|row| pb::ConfusionRow {
                    predicted: row.clone(),
                })
                .collect(),
            closed_at_ms: r.closed_at_ms,
        }
    }
}

fn training_status(m: &RoundMachine) -> pb::TrainingStatus {
    let s = m.state();
    let (phase, current_round, selected, received) = match &s.phase {
        Phase::Waiting => (pb::TaskPhase::Waiting, 0, 0, 0),
        Phase::Training {
            round,
            selected,
            received,
            ..
        } => (
            pb::TaskPhase::Running,
            *round,
            selected.len() as u32,
            received.len() as u32,
        ),
        Phase::Finished if s.task.privacy.is_some() && s.history.len() < s.task.rounds as usize => {
            (pb::TaskPhase::BudgetSpent, 0, 0, 0)
        }
        Phase::Finished => (pb::TaskPhase::Finished, 0, 0, 0),
        Phase::Expired => (pb::TaskPhase::Expired, 0, 0, 0),
    };
    pb::TrainingStatus {
        phase: phase.into(),
        rounds: s.task.rounds,
        current_round,
        selected,
        received,
        history: s.history.iter().map(pb::Round::from).collect(),
        secure_aggregation: s.task.secure_aggregation,
        privacy: s.task.privacy.as_ref().map(|p| pb::Privacy {
            epsilon_spent: s
                .history
                .iter()
                .rev()
                .find_map(|r| r.epsilon)
                .unwrap_or(0.0),
            epsilon_budget: p.epsilon_budget,
            delta: p.delta,
            noise_multiplier: p.noise_multiplier,
        }),
        reward_budget: s.task.reward_budget,
        rewards_paid: s.history.iter().flat_map(|r| &r.rewards).sum(),
    }
}

fn evaluation_status(e: &EvaluationTask) -> pb::EvaluationStatus {
    let s = e.machine.state();
    let (phase, selected, received) = match &s.phase {
        EvaluationPhase::Waiting => (pb::TaskPhase::Waiting, 0, 0),
        EvaluationPhase::Collecting {
            selected, received, ..
        } => (
            pb::TaskPhase::Running,
            selected.len() as u32,
            received.len() as u32,
        ),
        EvaluationPhase::Done(_) => (pb::TaskPhase::Finished, 0, 0),
        EvaluationPhase::Expired => (pb::TaskPhase::Expired, 0, 0),
    };
    pb::EvaluationStatus {
        phase: phase.into(),
        joined: s.recruited.len() as u32,
        min_agents: s.task.min_agents as u32,
        selected,
        received,
        result: e.machine.result().map(pb::EvaluationResult::from),
    }
}

fn task_status(inner: &Inner, task_id: &str) -> Result<pb::TaskStatusResponse, FlError> {
    use pb::task_status_response::Kind;
    let kind = if let Some(m) = inner.tasks.get(task_id) {
        Kind::Training(training_status(m))
    } else if let Some(e) = inner.evaluations.get(task_id) {
        Kind::Evaluation(evaluation_status(e))
    } else {
        return Err(FlError::NoSuchTask(task_id.to_owned()));
    };
    Ok(pb::TaskStatusResponse {
        task_id: task_id.to_owned(),
        kind: Some(kind),
    })
}

/// What a watcher has been told so far; [`Watch::events`] says what is new.
#[derive(Default)]
struct Watch {
    closed: usize,
    started: Option<u32>,
}

impl Watch {
    /// The events between what was told and `s`, and whether the task ended.
    /// Every round is told started before closed, even one that opened and
    /// closed between two looks.
    fn events(&mut self, s: &pb::TrainingStatus) -> (Vec<pb::TaskEvent>, bool) {
        use pb::task_event::Event;
        let mut out = Vec::new();
        let mut start = |round: u32, selected: u32, out: &mut Vec<pb::TaskEvent>| {
            if self.started.is_none_or(|r| r < round) {
                self.started = Some(round);
                out.push(pb::TaskEvent {
                    event: Some(Event::Started(pb::RoundStarted { round, selected })),
                });
            }
        };
        for r in &s.history[self.closed.min(s.history.len())..] {
            let selected = r.participants.len() + r.missing.len() + r.rejected.len();
            start(r.round, selected as u32, &mut out);
            out.push(pb::TaskEvent {
                event: Some(Event::Closed(r.clone())),
            });
        }
        self.closed = s.history.len();
        let phase = s.phase();
        if phase == pb::TaskPhase::Running {
            start(s.current_round, s.selected, &mut out);
        }
        let ended = matches!(
            phase,
            pb::TaskPhase::Finished | pb::TaskPhase::Expired | pb::TaskPhase::BudgetSpent
        );
        if ended {
            out.push(pb::TaskEvent {
                event: Some(Event::Ended(pb::TaskEnded {
                    phase: phase.into(),
                    rounds_closed: s.history.len() as u32,
                })),
            });
        }
        (out, ended)
    }
}

type EventStream = Pin<Box<dyn Stream<Item = Result<pb::TaskEvent, Status>> + Send>>;
type ChunkStream = Pin<Box<dyn Stream<Item = Result<pb::DownloadChunk, Status>> + Send>>;

fn watch(shared: &Arc<Shared>, task_id: String) -> Result<EventStream, FlError> {
    let mut changed = {
        let inner = lock(shared);
        if !inner.tasks.contains_key(&task_id) {
            return Err(match inner.evaluations.contains_key(&task_id) {
                true => FlError::NotTraining(task_id),
                false => FlError::NoSuchTask(task_id),
            });
        }
        inner.changed.subscribe()
    };
    let shared = Arc::downgrade(shared);
    let (tx, rx) = tokio::sync::mpsc::channel(16);
    tokio::spawn(async move {
        let mut told = Watch::default();
        loop {
            // Marks the current version seen before reading, so a change
            // after the read wakes the next wait.
            changed.borrow_and_update();
            let status = {
                let Some(shared) = shared.upgrade() else {
                    let _ = tx.send(Err(FlError::Stopped.into())).await;
                    return;
                };
                let inner = lock(&shared);
                inner.tasks.get(&task_id).map(training_status)
            };
            let Some(status) = status else { return };
            let (events, ended) = told.events(&status);
            for e in events {
                if tx.send(Ok(e)).await.is_err() {
                    return; // the watcher went away
                }
            }
            if ended || changed.changed().await.is_err() {
                return;
            }
        }
    });
    Ok(Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx)))
}

fn download(inner: &Inner, req: &pb::DownloadRequest) -> Result<ChunkStream, FlError> {
    let m = inner.tasks.get(&req.task_id).ok_or_else(|| {
        match inner.evaluations.contains_key(&req.task_id) {
            true => FlError::NotTraining(req.task_id.clone()),
            false => FlError::NoSuchTask(req.task_id.clone()),
        }
    })?;
    let bytes = match req.format() {
        pb::ModelFormat::Safetensors => yilian_models::to_safetensors_bytes(m.spec(), m.global())?,
        pb::ModelFormat::Onnx => yilian_models::to_onnx(m.spec(), m.global())?,
    };
    let sha256 = Sha256::digest(&bytes).to_vec();
    let rounds = m.state().history.len() as u32;
    let total_bytes = bytes.len() as u64;
    let chunks: Vec<Result<pb::DownloadChunk, Status>> = bytes
        .chunks(DOWNLOAD_CHUNK)
        .enumerate()
        .map(|(i, data)| {
            Ok(match i {
                0 => pb::DownloadChunk {
                    rounds,
                    total_bytes,
                    sha256: sha256.clone(),
                    data: data.to_vec(),
                },
                _ => pb::DownloadChunk {
                    data: data.to_vec(),
                    ..Default::default()
                },
            })
        })
        .collect();
    Ok(Box::pin(tokio_stream::iter(chunks)))
}

#[tonic::async_trait]
impl pb::federated_server::Federated for ControlPlane {
    async fn submit_task(
        &self,
        req: Request<pb::SubmitTaskRequest>,
    ) -> Result<Response<pb::SubmitTaskResponse>, Status> {
        engineer(&req, "submit a task")?;
        let shared = self.shared()?;
        Ok(Response::new(submit_task(&shared, req.into_inner()).await?))
    }

    async fn submit_evaluation(
        &self,
        req: Request<Streaming<pb::SubmitEvaluationRequest>>,
    ) -> Result<Response<pb::SubmitTaskResponse>, Status> {
        engineer(&req, "submit an evaluation")?;
        let shared = self.shared()?;
        Ok(Response::new(
            submit_evaluation(&shared, req.into_inner()).await?,
        ))
    }

    async fn task_status(
        &self,
        req: Request<pb::TaskStatusRequest>,
    ) -> Result<Response<pb::TaskStatusResponse>, Status> {
        engineer(&req, "read a task's status")?;
        let shared = self.shared()?;
        let inner = lock(&shared);
        Ok(Response::new(task_status(&inner, &req.get_ref().task_id)?))
    }

    type WatchTaskStream = EventStream;

    async fn watch_task(
        &self,
        req: Request<pb::WatchTaskRequest>,
    ) -> Result<Response<EventStream>, Status> {
        engineer(&req, "watch a task")?;
        let shared = self.shared()?;
        Ok(Response::new(watch(&shared, req.into_inner().task_id)?))
    }

    type DownloadStream = ChunkStream;

    async fn download(
        &self,
        req: Request<pb::DownloadRequest>,
    ) -> Result<Response<ChunkStream>, Status> {
        engineer(&req, "download a model")?;
        let shared = self.shared()?;
        let inner = lock(&shared);
        Ok(Response::new(download(&inner, req.get_ref())?))
    }
}
