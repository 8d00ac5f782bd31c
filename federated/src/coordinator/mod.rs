//! The coordinator service: the round state machines of every task behind
//! QUIC with mutual TLS from the admission authority, persisted in redb and
//! writing contributions and rewards to the ledger.
//!
//! One bidirectional stream per connection carries length-prefixed
//! [`Message`] frames. Devices (role `device`) send `Hello` and take part in
//! tasks whose schema matches their data. Everything else is refused at the
//! first message: engineers submit tasks, follow them and download models
//! over gRPC ([`ControlPlane`], served by the node).
//!
//! Evaluation tasks run beside training tasks: their ONNX model is kept in
//! the task's directory (checked against its hash on restart), their state
//! in its own redb table, and an agent is offered one only when no training
//! task fits its data.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use quinn::crypto::rustls::QuicServerConfig;
use sha2::{Digest, Sha256};
use tokio::sync::mpsc;
use yilian_identity::{Identity, Principal, Role, tls::RevocationList};
use yilian_ledger::{Ledger, Payload, Transaction};
use yilian_models::{Dataset, LabelColumn};

use crate::protocol::{
    ALPN, ChunkAssembler, MAX_FRAME, Message, RewardProof, WeightsPurpose, decode_body, encode,
    model_chunk_count, model_chunks, weight_messages,
};
mod control;
pub use control::ControlPlane;

use crate::{
    AgentId, Effect, EvaluationEffect, EvaluationMachine, EvaluationResult, EvaluationState,
    FlError, RoundMachine, RoundRecord, Store, TaskSpec, Update,
};

/// How often deadlines are checked.
const TICK: Duration = Duration::from_millis(100);
/// Largest ONNX model an engineer may submit for evaluation. The
/// coordinator holds it in memory and queues a copy per selected agent, so
/// it is bounded; agents apply their own, usually smaller, limit.
pub const MAX_EVALUATION_MODEL_BYTES: usize = 256 << 20;

type Outbox = mpsc::UnboundedSender<Message>;

struct AgentLink {
    outbox: Outbox,
    schema: crate::DataSchema,
    /// Examples the agent declared in its `Hello`; its evaluation report must agree.
    samples: u64,
    task: Option<String>,
}

/// An evaluation and the ONNX file it sends out.
struct EvaluationTask {
    machine: EvaluationMachine,
    model: Arc<Vec<u8>>,
}

struct Inner {
    store: Store,
    tasks: BTreeMap<String, RoundMachine>,
    evaluations: BTreeMap<String, EvaluationTask>,
    agents: HashMap<AgentId, AgentLink>,
    /// Closed rounds being written to the ledger right now.
    recording: BTreeSet<(String, u32)>,
    /// Bumped whenever a task's state may have changed; watchers wait on it.
    changed: tokio::sync::watch::Sender<()>,
}

impl Inner {
    fn task_exists(&self, id: &str) -> bool {
        self.tasks.contains_key(id) || self.evaluations.contains_key(id)
    }
}

struct Shared {
    inner: Mutex<Inner>,
    identity: Identity,
    ledger: Option<Ledger>,
    data_dir: PathBuf,
}

/// A running coordinator.
pub struct Coordinator {
    endpoint: quinn::Endpoint,
    shared: Arc<Shared>,
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

fn lock(shared: &Shared) -> MutexGuard<'_, Inner> {
    // A panic while holding the lock leaves state that was saved before it; carry on.
    shared.inner.lock().unwrap_or_else(|p| p.into_inner())
}

fn task_dir(data_dir: &Path, task_id: &str) -> PathBuf {
    data_dir.join("tasks").join(hex::encode(task_id.as_bytes()))
}

fn load_validation(data_dir: &Path, task: &TaskSpec) -> Result<Dataset, FlError> {
    Ok(Dataset::from_csv_path(
        &task_dir(data_dir, &task.id).join("validation.csv"),
        &LabelColumn::Name(task.schema.label_column.clone()),
        Some(task.schema.classes),
    )?)
}

fn model_path(data_dir: &Path, task_id: &str) -> PathBuf {
    task_dir(data_dir, task_id).join("model.onnx")
}

/// The stored ONNX file of an evaluation, refused if it is not the one the
/// evaluation was created with.
fn load_model(data_dir: &Path, state: &EvaluationState) -> Result<Arc<Vec<u8>>, FlError> {
    let bytes = std::fs::read(model_path(data_dir, &state.task.id))?;
    if Sha256::digest(&bytes)[..] != state.model_sha256 {
        return Err(FlError::ModelFileChanged(state.task.id.clone()));
    }
    Ok(Arc::new(bytes))
}

/// The authenticated peer of a QUIC connection.
pub fn peer_principal(conn: &quinn::Connection) -> Option<Principal> {
    let certs = conn
        .peer_identity()?
        .downcast::<Vec<rustls::pki_types::CertificateDer<'static>>>()
        .ok()?;
    yilian_identity::tls::principal_from_cert(certs.first()?).ok()
}

impl Coordinator {
    /// Binds `addr`, reloads every stored task from `data_dir` and starts
    /// serving. Agents and engineers must hold certificates of `identity`'s
    /// network; `ledger`, if given, receives contributions and rewards signed
    /// by `identity` (which must be a member).
    pub async fn serve(
        addr: SocketAddr,
        identity: Identity,
        revoked: RevocationList,
        ledger: Option<Ledger>,
        data_dir: &Path,
    ) -> Result<Coordinator, FlError> {
        std::fs::create_dir_all(data_dir)?;
        let store = Store::open(&data_dir.join("coordinator.redb"))?;
        let mut tasks = BTreeMap::new();
        for id in store.task_ids()? {
            if let Some(state) = store.load(&id)? {
                let validation = load_validation(data_dir, &state.task)?;
                tasks.insert(id, RoundMachine::restore(state, validation)?);
            }
        }
        let mut evaluations = BTreeMap::new();
        for id in store.evaluation_ids()? {
            if let Some(state) = store.load_evaluation(&id)? {
                let model = load_model(data_dir, &state)?;
                let machine = EvaluationMachine::restore(state)?;
                evaluations.insert(id, EvaluationTask { machine, model });
            }
        }
        let mut tls = yilian_identity::tls::server_config(&identity, revoked)
            .map_err(|e| FlError::Transport(e.to_string()))?;
        tls.alpn_protocols = vec![ALPN.to_vec()];
        let crypto =
            QuicServerConfig::try_from(tls).map_err(|e| FlError::Transport(e.to_string()))?;
        let mut server = quinn::ServerConfig::with_crypto(Arc::new(crypto));
        let mut transport = quinn::TransportConfig::default();
        transport.max_idle_timeout(Some(
            Duration::from_secs(60)
                .try_into()
                .map_err(|_| FlError::Transport("idle timeout".into()))?,
        ));
        transport.keep_alive_interval(Some(Duration::from_secs(5)));
        server.transport_config(Arc::new(transport));
        let endpoint = quinn::Endpoint::server(server, addr)?;
        let shared = Arc::new(Shared {
            inner: Mutex::new(Inner {
                store,
                tasks,
                evaluations,
                agents: HashMap::new(),
                recording: BTreeSet::new(),
                changed: tokio::sync::watch::Sender::new(()),
            }),
            identity,
            ledger,
            data_dir: data_dir.to_owned(),
        });
        let accept = endpoint.clone();
        let s = shared.clone();
        tokio::spawn(async move {
            while let Some(incoming) = accept.accept().await {
                let s = s.clone();
                tokio::spawn(async move {
                    if let Err(e) = handle_connection(s, incoming).await {
                        tracing::debug!("connection ended: {e}");
                    }
                });
            }
        });
        let s = shared.clone();
        tokio::spawn(async move {
            let mut interval = tokio::time::interval(TICK);
            loop {
                interval.tick().await;
                if Arc::strong_count(&s) == 1 {
                    break;
                }
                {
                    let mut inner = lock(&s);
                    let ids: Vec<String> = inner.tasks.keys().cloned().collect();
                    for id in ids {
                        let effects = match inner.tasks.get_mut(&id) {
                            Some(m) => m.tick(now_ms()),
                            None => continue,
                        };
                        process(&mut inner, &id, effects);
                    }
                    let ids: Vec<String> = inner.evaluations.keys().cloned().collect();
                    for id in ids {
                        let effects = match inner.evaluations.get_mut(&id) {
                            Some(e) => e.machine.tick(now_ms()),
                            None => continue,
                        };
                        // A tick that did nothing changed nothing: skip the write.
                        if !effects.is_empty() {
                            process_evaluation(&mut inner, &id, effects);
                        }
                    }
                }
                // Rounds closed by the tick, and any whose ledger writes
                // failed before (or before a restart), are written now.
                record_pending(&s).await;
            }
        });
        Ok(Coordinator { endpoint, shared })
    }

    pub fn local_addr(&self) -> Result<SocketAddr, FlError> {
        Ok(self.endpoint.local_addr()?)
    }

    /// The engineer's gRPC control plane of this coordinator, for a router.
    pub fn control(&self) -> ControlPlane {
        ControlPlane::new(&self.shared)
    }

    /// Submits a training task in-process, as the control plane's
    /// `SubmitTask` does.
    pub async fn submit(
        &self,
        req: crate::pb::SubmitTaskRequest,
    ) -> Result<crate::pb::SubmitTaskResponse, FlError> {
        control::submit_task(&self.shared, req).await
    }

    /// The closed rounds of a task so far.
    pub fn history(&self, task_id: &str) -> Option<Vec<RoundRecord>> {
        lock(&self.shared)
            .tasks
            .get(task_id)
            .map(|m| m.state().history.clone())
    }

    pub fn is_done(&self, task_id: &str) -> bool {
        let inner = lock(&self.shared);
        inner.tasks.get(task_id).is_some_and(RoundMachine::is_done)
            || inner
                .evaluations
                .get(task_id)
                .is_some_and(|e| e.machine.is_done())
    }

    /// An evaluation's aggregate, once it closed.
    pub fn evaluation_result(&self, task_id: &str) -> Option<EvaluationResult> {
        lock(&self.shared)
            .evaluations
            .get(task_id)
            .and_then(|e| e.machine.result().cloned())
    }

    /// Stops accepting connections and closes the open ones.
    pub fn shutdown(&self) {
        self.endpoint
            .close(0u32.into(), b"coordinator shutting down");
    }
}

impl Drop for Coordinator {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// Applies effects of a task's machine: messages to agents, persistence.
/// Returns the rounds it closed; the caller then writes pending rounds to
/// the ledger outside the lock.
fn process(inner: &mut Inner, task_id: &str, effects: Vec<Effect>) -> Vec<(String, RoundRecord)> {
    let mut closed = Vec::new();
    let mut queue: std::collections::VecDeque<Effect> = effects.into();
    while let Some(effect) = queue.pop_front() {
        let Some(machine) = inner.tasks.get_mut(task_id) else {
            return closed;
        };
        match effect {
            Effect::SendModel {
                agent,
                round,
                config,
            } => {
                let sent = inner.agents.get(&agent).is_some_and(|link| {
                    let mut ok = link
                        .outbox
                        .send(Message::RoundStart {
                            task_id: task_id.to_owned(),
                            round,
                            config,
                        })
                        .is_ok();
                    for m in weight_messages(WeightsPurpose::Global, round, machine.global()) {
                        ok &= link.outbox.send(m).is_ok();
                    }
                    ok
                });
                if !sent {
                    queue.extend(machine.leave(agent, now_ms()));
                }
            }
            Effect::Rejected { agent, reason } => {
                if let (Some(link), Some(round)) =
                    (inner.agents.get(&agent), machine.current_round())
                {
                    let _ = link.outbox.send(Message::UpdateRejected { round, reason });
                }
            }
            Effect::RoundClosed(record) => closed.push((task_id.to_owned(), record)),
            Effect::SecAgg { agent, message } => {
                let sent = inner.agents.get(&agent).is_some_and(|link| {
                    link.outbox
                        .send(Message::SecAggToAgent {
                            task_id: task_id.to_owned(),
                            message,
                        })
                        .is_ok()
                });
                if !sent {
                    queue.extend(machine.leave(agent, now_ms()));
                }
            }
            Effect::RoundAbandoned { round, received } => {
                tracing::warn!(task_id, round, received, "round abandoned: too few updates");
            }
            // With a round just closed, its results go out first (record_round
            // then says the task is done); otherwise say so now.
            Effect::Finished | Effect::Expired if !closed.is_empty() => {}
            Effect::Finished | Effect::Expired => {
                for link in inner
                    .agents
                    .values()
                    .filter(|l| l.task.as_deref() == Some(task_id))
                {
                    let _ = link.outbox.send(Message::TaskDone {
                        task_id: task_id.to_owned(),
                    });
                }
            }
        }
    }
    if let Some(machine) = inner.tasks.get(task_id)
        && let Err(e) = inner.store.save(machine.state())
    {
        tracing::error!(task_id, "cannot persist task state: {e}");
    }
    inner.changed.send_replace(());
    closed
}

/// Applies effects of an evaluation's machine: the model to agents,
/// refusals, the end of the task; then persists its state.
fn process_evaluation(inner: &mut Inner, task_id: &str, effects: Vec<EvaluationEffect>) {
    let mut queue: std::collections::VecDeque<EvaluationEffect> = effects.into();
    let mut done = false;
    while let Some(effect) = queue.pop_front() {
        let Some(eval) = inner.evaluations.get_mut(task_id) else {
            return;
        };
        match effect {
            EvaluationEffect::SendModel { agent } => {
                let sent = inner.agents.get(&agent).is_some_and(|link| {
                    let mut ok = link
                        .outbox
                        .send(Message::EvaluationStart {
                            task_id: task_id.to_owned(),
                            bytes: eval.model.len() as u64,
                            chunks: model_chunk_count(eval.model.len()),
                        })
                        .is_ok();
                    for m in model_chunks(&eval.model) {
                        ok &= link.outbox.send(m).is_ok();
                    }
                    ok
                });
                if !sent {
                    queue.extend(eval.machine.leave(agent, now_ms()));
                }
            }
            EvaluationEffect::Rejected { agent, reason } => {
                tracing::info!(task_id, agent = hex::encode(&agent[..4]), %reason, "evaluation report refused");
                if let Some(link) = inner.agents.get(&agent) {
                    let _ = link
                        .outbox
                        .send(Message::UpdateRejected { round: 0, reason });
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
        for link in inner
            .agents
            .values()
            .filter(|l| l.task.as_deref() == Some(task_id))
        {
            let _ = link.outbox.send(Message::TaskDone {
                task_id: task_id.to_owned(),
            });
        }
    }
    if let Some(eval) = inner.evaluations.get(task_id)
        && let Err(e) = inner.store.save_evaluation(eval.machine.state())
    {
        tracing::error!(task_id, "cannot persist evaluation state: {e}");
    }
    inner.changed.send_replace(());
}

/// A deterministic transaction, so that replaying a round after a crash
/// produces the same transaction id and the ledger acknowledges it once.
fn round_tx(
    payload: Payload,
    task: &str,
    round: u32,
    agent: &AgentId,
    kind: u8,
    at_ms: u64,
) -> Transaction {
    use sha2::{Digest, Sha256};
    let h = Sha256::digest([task.as_bytes(), &round.to_le_bytes(), agent, &[kind]].concat());
    Transaction {
        version: yilian_ledger::tx::TX_VERSION,
        nonce: u64::from_le_bytes(h[..8].try_into().unwrap_or([0; 8])),
        timestamp_ms: at_ms,
        payload,
    }
}

/// Writes every closed round still unrecorded to the ledger, and marks
/// those whose entries were all acknowledged. A round that failed stays
/// unrecorded and is tried again on the next tick (and after a restart).
async fn record_pending(shared: &Shared) {
    let pending: Vec<(String, RoundRecord)> = {
        let mut inner = lock(shared);
        let mut out = Vec::new();
        for (id, m) in &inner.tasks {
            for r in m.unrecorded() {
                if !inner.recording.contains(&(id.clone(), r.round)) {
                    out.push((id.clone(), r));
                }
            }
        }
        for (id, r) in &out {
            inner.recording.insert((id.clone(), r.round));
        }
        out
    };
    for (task_id, record) in pending {
        let written = record_round(shared, &task_id, &record).await;
        let mut inner = lock(shared);
        inner.recording.remove(&(task_id.clone(), record.round));
        if !written {
            continue;
        }
        let Inner { tasks, store, .. } = &mut *inner;
        if let Some(m) = tasks.get_mut(&task_id) {
            m.mark_recorded(record.round);
            if let Err(e) = store.save(m.state()) {
                // The round stays unrecorded in the store: replayed as duplicates.
                tracing::error!(task_id, "cannot persist a recorded round: {e}");
            }
        }
    }
}

/// Writes a round's contributions, rewards and privacy spent to the ledger
/// and tells the participants their result; whether every entry was
/// acknowledged.
async fn record_round(shared: &Shared, task_id: &str, record: &RoundRecord) -> bool {
    let mut written = true;
    let mut proofs = vec![None; record.participants.len()];
    if let Some(ledger) = &shared.ledger {
        let at = record.closed_at_ms;
        let delta = lock(shared)
            .tasks
            .get(task_id)
            .and_then(|m| m.state().task.privacy.as_ref().map(|p| p.delta));
        if let (Some(epsilon), Some(delta)) = (record.epsilon, delta) {
            // Deterministic id: a replay after a crash is a duplicate, not a second entry.
            let spent = round_tx(
                Payload::PrivacySpent {
                    task_id: task_id.to_owned(),
                    round: record.round,
                    epsilon,
                    delta,
                },
                task_id,
                record.round,
                &[0; 32],
                2,
                at,
            );
            if let Err(e) = ledger
                .submit(spent.sign(shared.identity.signing_key()))
                .await
            {
                tracing::error!(task_id, "privacy spent not recorded, will retry: {e}");
                written = false;
            }
        }
        for (k, agent) in record.participants.iter().enumerate() {
            let contribution = round_tx(
                Payload::Contribution {
                    task_id: task_id.to_owned(),
                    round: record.round,
                    agent: *agent,
                    score: record.contributions[k],
                },
                task_id,
                record.round,
                agent,
                0,
                at,
            );
            if let Err(e) = ledger
                .submit(contribution.sign(shared.identity.signing_key()))
                .await
            {
                tracing::error!(task_id, "contribution not recorded, will retry: {e}");
                written = false;
            }
            if record.rewards[k] == 0 {
                continue;
            }
            let reward = round_tx(
                Payload::Reward {
                    task_id: task_id.to_owned(),
                    round: record.round,
                    account: *agent,
                    amount: record.rewards[k],
                },
                task_id,
                record.round,
                agent,
                1,
                at,
            );
            match ledger
                .submit(reward.sign(shared.identity.signing_key()))
                .await
            {
                Ok(receipt) => {
                    let head = receipt.tree_head.clone();
                    let proof = ledger
                        .inclusion_proof(receipt.index, head.tree_size)
                        .and_then(|inclusion| {
                            Ok(RewardProof {
                                index: receipt.index,
                                entry: ledger.entry_bytes(receipt.index)?,
                                inclusion,
                                head,
                            })
                        });
                    match proof {
                        Ok(p) => proofs[k] = Some(p),
                        Err(e) => tracing::error!(task_id, "no inclusion proof for a reward: {e}"),
                    }
                }
                Err(e) => {
                    tracing::error!(task_id, "reward not recorded, will retry: {e}");
                    written = false;
                }
            }
        }
    }
    let inner = lock(shared);
    for (k, agent) in record.participants.iter().enumerate() {
        if let Some(link) = inner.agents.get(agent) {
            let _ = link.outbox.send(Message::RoundResult {
                round: record.round,
                accuracy: record.accuracy,
                contribution: record.contributions[k],
                reward: record.rewards[k],
                proof: proofs[k].clone(),
            });
        }
    }
    if inner.tasks.get(task_id).is_some_and(RoundMachine::is_done) {
        for link in inner
            .agents
            .values()
            .filter(|l| l.task.as_deref() == Some(task_id))
        {
            let _ = link.outbox.send(Message::TaskDone {
                task_id: task_id.to_owned(),
            });
        }
    }
    written
}

async fn read_message(recv: &mut quinn::RecvStream) -> Result<Option<Message>, FlError> {
    let mut len = [0u8; 4];
    match recv.read_exact(&mut len).await {
        Ok(()) => {}
        Err(quinn::ReadExactError::FinishedEarly(0)) => return Ok(None),
        Err(e) => return Err(FlError::Transport(e.to_string())),
    }
    let len = u32::from_be_bytes(len) as usize;
    if len > MAX_FRAME {
        return Err(FlError::FrameTooLarge {
            size: len,
            limit: MAX_FRAME,
        });
    }
    let mut body = vec![0u8; len];
    recv.read_exact(&mut body)
        .await
        .map_err(|e| FlError::Transport(e.to_string()))?;
    decode_body(&body).map(Some)
}

/// Reads messages from a stream (shared by the coordinator and the agent).
pub async fn next_message(recv: &mut quinn::RecvStream) -> Result<Option<Message>, FlError> {
    read_message(recv).await
}

/// Spawns a writer draining `rx` into `send`.
pub fn spawn_writer(mut send: quinn::SendStream, mut rx: mpsc::UnboundedReceiver<Message>) {
    tokio::spawn(async move {
        while let Some(m) = rx.recv().await {
            let Ok(frame) = encode(&m) else { continue };
            if send.write_all(&frame).await.is_err() {
                break;
            }
        }
        let _ = send.finish();
    });
}

async fn handle_connection(shared: Arc<Shared>, incoming: quinn::Incoming) -> Result<(), FlError> {
    let conn = incoming
        .await
        .map_err(|e| FlError::Transport(e.to_string()))?;
    let principal =
        peer_principal(&conn).ok_or(FlError::Transport("no client certificate".into()))?;
    let (send, mut recv) = conn
        .accept_bi()
        .await
        .map_err(|e| FlError::Transport(e.to_string()))?;
    let (tx, rx) = mpsc::unbounded_channel();
    spawn_writer(send, rx);
    let Some(first) = read_message(&mut recv).await? else {
        return Ok(());
    };
    let result = match (principal.role, first) {
        (Role::Device, Message::Hello { schema, samples }) => {
            agent_session(&shared, &principal, schema, samples, tx.clone(), &mut recv).await
        }
        (Role::Engineer | Role::Member, _) => Err(FlError::Transport(
            "engineers submit and follow tasks over the node's gRPC API (`yilian task --node`), not QUIC".into(),
        )),
        (role, _) => Err(FlError::Transport(format!(
            "role `{role}` may not use the federated service"
        ))),
    };
    if let Err(e) = &result {
        let _ = tx.send(Message::Refused {
            reason: e.to_string(),
        });
    }
    drop(tx);
    // Let the writer flush before the connection goes.
    let _ = tokio::time::timeout(Duration::from_secs(2), conn.closed()).await;
    result
}

async fn agent_session(
    shared: &Arc<Shared>,
    principal: &Principal,
    schema: crate::DataSchema,
    samples: u64,
    outbox: Outbox,
    recv: &mut quinn::RecvStream,
) -> Result<(), FlError> {
    let agent = principal.public_key;
    {
        let mut inner = lock(shared);
        inner.agents.insert(
            agent,
            AgentLink {
                outbox: outbox.clone(),
                schema: schema.clone(),
                samples,
                task: None,
            },
        );
        offer_task(&mut inner, agent);
    }
    let result = agent_loop(shared, agent, recv).await;
    let records = {
        let mut inner = lock(shared);
        let task = inner.agents.remove(&agent).and_then(|l| l.task);
        match task {
            Some(task) if inner.evaluations.contains_key(&task) => {
                let effects = inner
                    .evaluations
                    .get_mut(&task)
                    .map(|e| e.machine.leave(agent, now_ms()))
                    .unwrap_or_default();
                process_evaluation(&mut inner, &task, effects);
                Vec::new()
            }
            Some(task) => {
                let effects = inner
                    .tasks
                    .get_mut(&task)
                    .map(|m| m.leave(agent, now_ms()))
                    .unwrap_or_default();
                process(&mut inner, &task, effects)
            }
            None => Vec::new(),
        }
    };
    if !records.is_empty() {
        record_pending(shared).await;
    }
    result
}

/// Offers the agent the first unfinished training task its data fits, or
/// failing that the first such evaluation.
fn offer_task(inner: &mut Inner, agent: AgentId) {
    let Some(link) = inner.agents.get(&agent) else {
        return;
    };
    if link.task.is_some() {
        return;
    }
    let training: Vec<&RoundMachine> = inner.tasks.values().filter(|m| !m.is_done()).collect();
    let evaluating: Vec<&EvaluationState> = inner
        .evaluations
        .values()
        .filter(|e| !e.machine.is_done())
        .map(|e| e.machine.state())
        .collect();
    let fits = |schema: &crate::DataSchema| link.schema.check_against(schema);
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
            .or(evaluating.first().map(|e| &e.task.schema))
            .map(fits)
        {
            Some(Err(e)) => Message::Refused {
                reason: format!("no open task fits your data: {e}"),
            },
            _ => return,
        },
    };
    let _ = link.outbox.send(message);
}

async fn agent_loop(
    shared: &Arc<Shared>,
    agent: AgentId,
    recv: &mut quinn::RecvStream,
) -> Result<(), FlError> {
    let mut assembler: Option<ChunkAssembler> = None;
    let mut weights: Option<(u32, Vec<f32>)> = None;
    while let Some(message) = read_message(recv).await? {
        let records = {
            let mut inner = lock(shared);
            let task = inner.agents.get(&agent).and_then(|l| l.task.clone());
            match message {
                Message::TaskAccept { task_id } if inner.evaluations.contains_key(&task_id) => {
                    let Some((schema, samples)) = inner
                        .agents
                        .get(&agent)
                        .map(|l| (l.schema.clone(), l.samples))
                    else {
                        return Err(FlError::NoSuchTask(task_id));
                    };
                    let effects = match inner.evaluations.get_mut(&task_id) {
                        Some(e) => e.machine.recruit(agent, &schema, samples, now_ms())?,
                        None => Vec::new(),
                    };
                    if let Some(l) = inner.agents.get_mut(&agent) {
                        l.task = Some(task_id.clone());
                    }
                    process_evaluation(&mut inner, &task_id, effects);
                    Vec::new()
                }
                Message::EvaluationReport { task_id, counts } => {
                    if task.as_deref() != Some(task_id.as_str()) {
                        return Err(FlError::Transport(format!(
                            "a report for task {task_id}, which this agent has not joined"
                        )));
                    }
                    let effects = inner
                        .evaluations
                        .get_mut(&task_id)
                        .map(|e| e.machine.submit(agent, counts, now_ms()))
                        .unwrap_or_default();
                    process_evaluation(&mut inner, &task_id, effects);
                    Vec::new()
                }
                Message::TaskAccept { task_id } => {
                    let schema = inner.agents.get(&agent).map(|l| l.schema.clone());
                    let (Some(machine), Some(schema)) = (inner.tasks.get_mut(&task_id), schema)
                    else {
                        return Err(FlError::NoSuchTask(task_id));
                    };
                    machine.recruit(agent, &schema)?;
                    // After a coordinator restart the agent may be owed the model.
                    let mut effects: Vec<Effect> = machine
                        .resend_effects()
                        .into_iter()
                        .filter(|e| matches!(e, Effect::SendModel { agent: a, .. } if *a == agent))
                        .collect();
                    effects.extend(machine.tick(now_ms()));
                    if let Some(l) = inner.agents.get_mut(&agent) {
                        l.task = Some(task_id.clone());
                    }
                    process(&mut inner, &task_id, effects)
                }
                Message::TaskDecline { task_id, reason } => {
                    tracing::info!(task_id, reason, "agent declined");
                    Vec::new()
                }
                Message::WeightsHeader {
                    purpose: WeightsPurpose::Update,
                    round,
                    values,
                    chunks,
                } => {
                    let max = task
                        .as_ref()
                        .and_then(|t| inner.tasks.get(t))
                        .map_or(0, RoundMachine::param_count);
                    // An oversized update is refused before any of it is buffered.
                    assembler = Some(ChunkAssembler::new(round, values, chunks, max)?);
                    Vec::new()
                }
                Message::WeightsChunk {
                    round,
                    index,
                    values,
                } => {
                    let asm = assembler
                        .as_mut()
                        .ok_or(FlError::BadChunk { index, total: 0 })?;
                    if let Some(w) = asm.push(round, index, values)? {
                        weights = Some((round, w));
                        assembler = None;
                    }
                    Vec::new()
                }
                Message::UpdateDone {
                    round,
                    samples,
                    loss,
                } => {
                    let (Some(task), Some((wround, w))) = (task, weights.take()) else {
                        return Err(FlError::BadChunk { index: 0, total: 0 });
                    };
                    if wround != round {
                        return Err(FlError::BadChunk { index: 0, total: 0 });
                    }
                    let update = Update {
                        weights: w,
                        samples,
                        loss,
                    };
                    let effects = inner
                        .tasks
                        .get_mut(&task)
                        .map(|m| m.submit(agent, round, update, now_ms()))
                        .unwrap_or_default();
                    process(&mut inner, &task, effects)
                }
                Message::SecAggFromAgent {
                    task_id: for_task,
                    message,
                } => {
                    let Some(task) = task.filter(|t| *t == for_task) else {
                        return Err(FlError::NoSuchTask(for_task));
                    };
                    let effects = inner
                        .tasks
                        .get_mut(&task)
                        .map(|m| m.secagg(agent, message, now_ms()))
                        .unwrap_or_default();
                    process(&mut inner, &task, effects)
                }
                other => {
                    return Err(FlError::Transport(format!(
                        "unexpected message from an agent: {}",
                        kind(&other)
                    )));
                }
            }
        };
        if !records.is_empty() {
            record_pending(shared).await;
        }
    }
    Ok(())
}

fn kind(m: &Message) -> &'static str {
    match m {
        Message::Hello { .. } => "hello",
        Message::ModelChunk { .. } => "model-chunk",
        Message::EvaluationReport { .. } => "evaluation-report",
        _ => "other",
    }
}
