//! The engineer's control plane over gRPC (`proto/federated.proto`):
//! submit a task, follow it, download its model. The node serves it beside
//! its other APIs, with mutual TLS; only engineers and members may call it.
//! Agents keep the QUIC protocol.
//!
//! A submission is checked whole (task file, validation set, initial
//! weights or ONNX model) before anything is written. Its id is then held
//! and its file written, it is anchored on the ledger, and only then is the
//! task added; a refused anchor releases the id and the file, so a refused
//! submission leaves no trace.

use std::pin::Pin;
use std::sync::{Arc, Weak};

use futures::Stream;
use sha2::{Digest, Sha256};
use tonic::{Request, Response, Status, Streaming};
use yilian_identity::{Principal, Role};
use yilian_ledger::{Payload, Transaction};
use yilian_models::{Dataset, LabelColumn, OnnxModel};

use super::{Engine, EvaluationTask, Event, MAX_EVALUATION_MODEL_BYTES, Shared};
use crate::pb;
use crate::{
    AgentId, EvaluationMachine, EvaluationPhase, EvaluationResult, FlError, Phase, RoundMachine,
    RoundRecord, TaskFile, TaskSpec,
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

/// Takes a checked task in: holds its id with its file written, anchors it
/// on the ledger (releasing the id and the file if the ledger refuses), then
/// adds it with `add`. The anchor's ledger index.
async fn accept(
    shared: &Shared,
    id: &str,
    file: (&'static str, Arc<Vec<u8>>),
    payload: Payload,
    add: impl FnOnce(super::Reply) -> Event,
) -> Result<u64, FlError> {
    let (reply, reserved) = tokio::sync::oneshot::channel();
    shared
        .send(Event::Reserve {
            id: id.to_owned(),
            file,
            reply,
        })
        .await?;
    reserved.await.map_err(|_| FlError::Stopped)??;
    let index = match anchor(shared, payload).await {
        Ok(index) => index,
        Err(e) => {
            let _ = shared.send(Event::Release { id: id.to_owned() }).await;
            return Err(e);
        }
    };
    let (reply, added) = tokio::sync::oneshot::channel();
    shared.send(add(reply)).await?;
    added.await.map_err(|_| FlError::Stopped)??;
    Ok(index)
}

/// Whether a task has the id, asked of the engine.
async fn exists(shared: &Shared, id: &str) -> Result<bool, FlError> {
    let id = id.to_owned();
    shared.query(move |e| e.task_exists(&id)).await
}

/// Largest validation set or initial weights file a training task may
/// bring: the coordinator holds both in memory.
pub const MAX_TASK_UPLOAD_BYTES: usize = 256 << 20;

/// A training task as it arrived, whole.
pub struct TrainingSubmission {
    /// The task file.
    pub task_toml: String,
    /// CSV with a header, the schema's label column among its columns.
    pub validation_csv: Vec<u8>,
    /// safetensors; empty means the task's seeded initialisation.
    pub initial_weights: Vec<u8>,
}

/// Bytes of an announced size arriving in chunks: more than announced is
/// refused as it arrives, before it is buffered.
struct Upload {
    field: &'static str,
    announced: usize,
    bytes: Vec<u8>,
}

impl Upload {
    fn new(field: &'static str, announced: u64, limit: usize) -> Result<Upload, FlError> {
        let announced = usize::try_from(announced).unwrap_or(usize::MAX);
        if announced > limit {
            return Err(FlError::UploadTooLarge {
                field,
                size: announced,
                limit,
            });
        }
        Ok(Upload {
            field,
            announced,
            // Grown as bytes arrive: a header alone reserves little.
            bytes: Vec::with_capacity(announced.min(4 << 20)),
        })
    }

    fn push(&mut self, chunk: &[u8]) -> Result<(), FlError> {
        if self.bytes.len() + chunk.len() > self.announced {
            return Err(self.mismatch(self.bytes.len() + chunk.len()));
        }
        self.bytes.extend_from_slice(chunk);
        Ok(())
    }

    fn finish(self) -> Result<Vec<u8>, FlError> {
        if self.bytes.len() != self.announced {
            return Err(self.mismatch(self.bytes.len()));
        }
        Ok(self.bytes)
    }

    fn mismatch(&self, received: usize) -> FlError {
        FlError::UploadSizeMismatch {
            field: self.field,
            announced: self.announced,
            received,
        }
    }
}

const NOT_EVALUATION: &str = "an evaluation task goes to SubmitEvaluation (`yilian task submit` does this), with its ONNX model";

/// The training task in a task file.
fn training_task(toml: &str) -> Result<TaskSpec, FlError> {
    match TaskFile::from_toml(toml)? {
        TaskFile::Training(task) => Ok(*task),
        TaskFile::Evaluation(_) => Err(FlError::InvalidTask(NOT_EVALUATION)),
    }
}

/// A training task's parts, the header first, gathered whole: the task,
/// its validation set and its initial weights.
async fn receive_task(
    shared: &Shared,
    mut parts: Streaming<pb::SubmitTaskRequest>,
) -> Result<(TaskSpec, Vec<u8>, Vec<u8>), Status> {
    use pb::submit_task_request::Part;
    let Some(pb::SubmitTaskRequest {
        part: Some(Part::Header(header)),
    }) = parts.message().await?
    else {
        return Err(FlError::HeaderFirst.into());
    };
    let task = training_task(&header.task_toml)?;
    // Before anything is buffered; the reservation in `accept` decides.
    if exists(shared, &task.id).await? {
        return Err(FlError::TaskExists(task.id).into());
    }
    let mut validation = Upload::new(
        "validation_bytes",
        header.validation_bytes,
        MAX_TASK_UPLOAD_BYTES,
    )?;
    let mut weights = Upload::new("weights_bytes", header.weights_bytes, MAX_TASK_UPLOAD_BYTES)?;
    while let Some(part) = parts.message().await? {
        match part.part {
            Some(Part::ValidationChunk(c)) => validation.push(&c)?,
            Some(Part::WeightsChunk(c)) => weights.push(&c)?,
            _ => return Err(FlError::HeaderFirst.into()),
        }
    }
    Ok((task, validation.finish()?, weights.finish()?))
}

pub(super) async fn submit_task(
    shared: &Shared,
    req: TrainingSubmission,
) -> Result<pb::SubmitTaskResponse, FlError> {
    let task = training_task(&req.task_toml)?;
    add_training(shared, task, req.validation_csv, req.initial_weights).await
}

/// Checks a training task with its files, anchors it and hands it to the engine.
async fn add_training(
    shared: &Shared,
    task: TaskSpec,
    validation_csv: Vec<u8>,
    initial_weights: Vec<u8>,
) -> Result<pb::SubmitTaskResponse, FlError> {
    let validation = Dataset::from_csv_reader(
        validation_csv.as_slice(),
        true,
        &LabelColumn::Name(task.schema.label_column.clone()),
        Some(task.schema.classes),
    )
    .map_err(FlError::Validation)?;
    let initial = if initial_weights.is_empty() {
        task.model.init_weights(task.init_seed)?
    } else {
        yilian_models::from_safetensors_bytes(&initial_weights, Some(&task.model))?.1
    };
    let machine = RoundMachine::new(task.clone(), initial, validation)?;
    let params = machine.param_count() as u64;
    let payload = Payload::TaskSubmitted {
        task_id: task.id.clone(),
        spec_hash: task.hash(),
        reward_budget: task.reward_budget,
    };
    let file = ("validation.csv", Arc::new(validation_csv));
    let ledger_index = accept(shared, &task.id, file, payload, |reply| Event::AddTask {
        machine: Box::new(machine),
        reply,
    })
    .await?;
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
        _ => return Err(FlError::HeaderFirst.into()),
    };
    let TaskFile::Evaluation(task) = TaskFile::from_toml(&header.task_toml)? else {
        return Err(FlError::InvalidTask(
            "a training task goes to SubmitTask, with its validation set, not an ONNX model",
        )
        .into());
    };
    // Before the model's bytes are buffered; the reservation below decides.
    if exists(shared, &task.id).await? {
        return Err(FlError::TaskExists(task.id).into());
    }
    let mut model = Upload::new(
        "model_bytes",
        header.model_bytes,
        MAX_EVALUATION_MODEL_BYTES,
    )?;
    while let Some(part) = parts.message().await? {
        let Some(Part::ModelChunk(chunk)) = part.part else {
            return Err(FlError::HeaderFirst.into());
        };
        model.push(&chunk)?;
    }
    let model = model.finish()?;
    // tract parses and test-runs the graph: CPU work, off the async threads.
    let onnx = tokio::task::spawn_blocking(move || OnnxModel::from_bytes(model))
        .await
        .map_err(|e| Status::internal(e.to_string()))?
        .map_err(FlError::from)?;
    let machine = EvaluationMachine::new(task.clone(), &onnx)?;
    let params = machine.state().params;
    let model = Arc::new(onnx.bytes().to_vec());
    let payload = Payload::TaskSubmitted {
        task_id: task.id.clone(),
        spec_hash: task.hash(&machine.state().model_sha256),
        reward_budget: 0,
    };
    let file = ("model.onnx", model.clone());
    let ledger_index = accept(shared, &task.id, file, payload, |reply| {
        Event::AddEvaluation {
            eval: EvaluationTask { machine, model },
            reply,
        }
    })
    .await
    .map_err(Status::from)?;
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

/// Closed rounds in one page of a training status, at most.
pub const HISTORY_PAGE_ROUNDS: usize = 256;
/// Encoded bytes of closed rounds in one page, about: a page ends after
/// the round that reaches it (one round is at most `agents_per_round`
/// contributions, a few hundred KiB under the task caps).
pub const HISTORY_PAGE_BYTES: usize = 1 << 20;

/// The status with one page of closed rounds from position `from` on (a
/// watcher has the ones before), and where the next page starts.
fn status_from(m: &RoundMachine, from: usize) -> pb::TrainingStatus {
    let s = m.state();
    let (history, next_round) = history_page(&s.history, from);
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
        Phase::Buffered(b) => (
            pb::TaskPhase::Running,
            s.next_round,
            b.training.len() as u32,
            b.buffer.len() as u32,
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
        history,
        next_round,
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

fn task_status(
    engine: &Engine,
    task_id: &str,
    from: usize,
) -> Result<pb::TaskStatusResponse, FlError> {
    use pb::task_status_response::Kind;
    let kind = if let Some(m) = engine.task(task_id) {
        Kind::Training(status_from(m, from))
    } else if let Some(e) = engine.evaluation(task_id) {
        Kind::Evaluation(evaluation_status(e))
    } else {
        return Err(FlError::NoSuchTask(task_id.to_owned()));
    };
    Ok(pb::TaskStatusResponse {
        task_id: task_id.to_owned(),
        kind: Some(kind),
    })
}

/// The closed rounds from `from` on that fit a page, and the position
/// after them if more remain.
fn history_page(
    history: &[crate::round::RoundRecord],
    from: usize,
) -> (Vec<pb::Round>, Option<u32>) {
    use prost::Message as _;
    let mut page = Vec::new();
    let mut bytes = 0;
    for r in history.iter().skip(from) {
        if page.len() == HISTORY_PAGE_ROUNDS || bytes >= HISTORY_PAGE_BYTES {
            let next = (from + page.len()) as u32;
            return (page, Some(next));
        }
        let r = pb::Round::from(r);
        bytes += r.encoded_len();
        page.push(r);
    }
    (page, None)
}

/// What a watcher has been told so far; [`Watch::events`] says what is new.
#[derive(Default)]
struct Watch {
    closed: usize,
    started: Option<u32>,
}

impl Watch {
    /// The events between what was told and `s` (whose history starts at
    /// the first round not told), and whether the task ended. Every round is
    /// told started before closed, even one that opened and closed between
    /// two looks.
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
        for r in &s.history {
            let selected = r.participants.len() + r.missing.len() + r.rejected.len();
            start(r.round, selected as u32, &mut out);
            out.push(pb::TaskEvent {
                event: Some(Event::Closed(r.clone())),
            });
        }
        self.closed += s.history.len();
        if s.next_round.is_some() {
            // More closed rounds to tell first.
            return (out, false);
        }
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
                    rounds_closed: self.closed as u32,
                })),
            });
        }
        (out, ended)
    }
}

type EventStream = Pin<Box<dyn Stream<Item = Result<pb::TaskEvent, Status>> + Send>>;
type ChunkStream = Pin<Box<dyn Stream<Item = Result<pb::DownloadChunk, Status>> + Send>>;

/// Why a training-only request names `task_id`: an evaluation, or nothing.
fn not_training(engine: &Engine, task_id: &str) -> FlError {
    match engine.evaluation(task_id) {
        Some(_) => FlError::NotTraining(task_id.to_owned()),
        None => FlError::NoSuchTask(task_id.to_owned()),
    }
}

/// A training task's status, with its closed rounds from index `from` on.
async fn training(
    shared: &Shared,
    task_id: &str,
    from: usize,
) -> Result<pb::TrainingStatus, FlError> {
    let id = task_id.to_owned();
    shared
        .query(move |e| {
            e.task(&id)
                .map(|m| status_from(m, from))
                .ok_or_else(|| not_training(e, &id))
        })
        .await?
}

async fn watch(shared: &Arc<Shared>, task_id: String) -> Result<EventStream, FlError> {
    let mut changed = shared.changed.subscribe();
    let first = training(shared, &task_id, 0).await?;
    let shared = Arc::downgrade(shared);
    let (tx, rx) = tokio::sync::mpsc::channel(16);
    tokio::spawn(async move {
        let mut told = Watch::default();
        let mut status = first;
        loop {
            let (events, ended) = told.events(&status);
            for e in events {
                if tx.send(Ok(e)).await.is_err() {
                    return; // the watcher went away
                }
            }
            if ended {
                return;
            }
            // A partial page: the next one is read at once.
            if status.next_round.is_none() {
                if changed.changed().await.is_err() {
                    return;
                }
                // Marks this version seen before reading, so a change after
                // the read wakes the next wait.
                changed.borrow_and_update();
            }
            let Some(shared) = shared.upgrade() else {
                let _ = tx.send(Err(FlError::Stopped.into())).await;
                return;
            };
            status = match training(&shared, &task_id, told.closed).await {
                Ok(s) => s,
                Err(e) => {
                    let _ = tx.send(Err(e.into())).await;
                    return;
                }
            };
        }
    });
    Ok(Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx)))
}

async fn download(shared: &Shared, req: pb::DownloadRequest) -> Result<ChunkStream, FlError> {
    let id = req.task_id.clone();
    let (spec, weights, rounds) = shared
        .query(move |e| {
            e.task(&id)
                .map(|m| {
                    (
                        m.spec().clone(),
                        m.global().to_vec(),
                        m.state().history.len() as u32,
                    )
                })
                .ok_or_else(|| not_training(e, &id))
        })
        .await??;
    // `req.format()` would read an unknown number as the default format.
    let format =
        pb::ModelFormat::try_from(req.format).map_err(|_| FlError::UnknownFormat(req.format))?;
    let bytes = match format {
        pb::ModelFormat::Safetensors => yilian_models::to_safetensors_bytes(&spec, &weights)?,
        pb::ModelFormat::Onnx => yilian_models::to_onnx(&spec, &weights)?,
    };
    let sha256 = Sha256::digest(&bytes).to_vec();
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
        req: Request<Streaming<pb::SubmitTaskRequest>>,
    ) -> Result<Response<pb::SubmitTaskResponse>, Status> {
        engineer(&req, "submit a task")?;
        let shared = self.shared()?;
        let (task, validation_csv, initial_weights) =
            receive_task(&shared, req.into_inner()).await?;
        Ok(Response::new(
            add_training(&shared, task, validation_csv, initial_weights).await?,
        ))
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
        let req = req.into_inner();
        let (id, from) = (req.task_id, req.from_round as usize);
        let status = shared.query(move |e| task_status(e, &id, from)).await??;
        Ok(Response::new(status))
    }

    type WatchTaskStream = EventStream;

    async fn watch_task(
        &self,
        req: Request<pb::WatchTaskRequest>,
    ) -> Result<Response<EventStream>, Status> {
        engineer(&req, "watch a task")?;
        let shared = self.shared()?;
        Ok(Response::new(
            watch(&shared, req.into_inner().task_id).await?,
        ))
    }

    type DownloadStream = ChunkStream;

    async fn download(
        &self,
        req: Request<pb::DownloadRequest>,
    ) -> Result<Response<ChunkStream>, Status> {
        engineer(&req, "download a model")?;
        let shared = self.shared()?;
        Ok(Response::new(download(&shared, req.into_inner()).await?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::round::RoundRecord;
    use prost::Message as _;

    fn record(round: u32, agents: usize) -> RoundRecord {
        let ids: Vec<[u8; 32]> = (0..agents)
            .map(|i| {
                let mut id = [0u8; 32];
                id[..8].copy_from_slice(&(i as u64).to_le_bytes());
                id
            })
            .collect();
        RoundRecord {
            round,
            contributions: vec![0.5; agents],
            rewards: vec![1; agents],
            participants: ids,
            missing: Vec::new(),
            rejected: Vec::new(),
            accuracy: 0.9,
            loss: 0.1,
            evaluations: 0,
            closed_at_ms: 0,
            epsilon: None,
            failures: Vec::new(),
        }
    }

    #[test]
    fn history_comes_in_pages_of_rounds_and_of_bytes() {
        let history: Vec<RoundRecord> = (0..300).map(|r| record(r, 2)).collect();
        let (page, next) = history_page(&history, 0);
        assert_eq!((page.len(), next), (HISTORY_PAGE_ROUNDS, Some(256)));
        let (page, next) = history_page(&history, 256);
        assert_eq!((page.len(), next), (44, None));
        assert_eq!(page[0].round, 256);
        assert_eq!(history_page(&history, 300), (Vec::new(), None));
        assert_eq!(history_page(&history, 10_000), (Vec::new(), None));

        // Big rounds: the page ends after the one that reaches the bytes.
        let big: Vec<RoundRecord> = (0..10).map(|r| record(r, 10_000)).collect();
        let one = pb::Round::from(&big[0]).encoded_len();
        let (page, next) = history_page(&big, 0);
        let fit = HISTORY_PAGE_BYTES.div_ceil(one);
        assert_eq!((page.len(), next), (fit, Some(fit as u32)));
        let mut from = 0;
        let mut rounds = Vec::new();
        loop {
            let (page, next) = history_page(&big, from);
            rounds.extend(page.iter().map(|r| r.round));
            match next {
                Some(n) => from = n as usize,
                None => break,
            }
        }
        assert_eq!(rounds, (0..10).collect::<Vec<_>>());
    }

    #[test]
    fn a_watcher_is_told_the_end_only_after_the_last_page() {
        let status = |history: Vec<pb::Round>, next_round| pb::TrainingStatus {
            phase: pb::TaskPhase::Finished.into(),
            history,
            next_round,
            ..Default::default()
        };
        let rounds: Vec<pb::Round> = (0..3).map(|r| pb::Round::from(&record(r, 1))).collect();
        let mut w = Watch::default();
        let (events, ended) = w.events(&status(rounds[..2].to_vec(), Some(2)));
        assert!(!ended);
        assert_eq!(events.len(), 4, "started and closed for each of two rounds");
        let (events, ended) = w.events(&status(rounds[2..].to_vec(), None));
        assert!(ended);
        assert!(matches!(
            events.last().unwrap().event,
            Some(pb::task_event::Event::Ended(pb::TaskEnded {
                rounds_closed: 3,
                ..
            }))
        ));
    }
}
