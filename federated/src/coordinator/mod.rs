//! The coordinator service: the sans-IO [`Engine`] behind QUIC with mutual
//! TLS from the admission authority, persisted in redb and writing
//! contributions, rewards and privacy spent to the ledger.
//!
//! One bidirectional stream per connection carries length-prefixed
//! [`Message`] frames. Devices (role `device`) send `Hello` and take part in
//! tasks whose schema matches their data. Everything else is refused at the
//! first message: engineers submit tasks, follow them and download models
//! over gRPC ([`ControlPlane`], served by the node).
//!
//! The driver is thin. One thread owns the engine and the store: it takes
//! events from a bounded queue (frames from connection tasks, ticks, ledger
//! acknowledgements, the control plane's submissions and reads), hands them
//! to the engine, and carries out its commands in order. Round completion
//! (aggregation, contribution scoring, evaluation) therefore runs off the
//! async runtime, and no lock is shared with it. Each connection has a
//! bounded queue of outgoing items; models travel as one shared copy that
//! the connection's writer cuts into frames, and an agent that lets its
//! queue fill is disconnected rather than buffered for. A state that cannot
//! be persisted stops the coordinator: nothing after it is acknowledged,
//! and a restart resumes from the last write.
//!
//! Evaluation tasks run beside training tasks: their ONNX model is kept in
//! the task's directory (checked against its hash on restart), their state
//! in its own redb table, and an agent is offered one only when no training
//! task fits its data.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use quinn::crypto::rustls::QuicServerConfig;
use sha2::{Digest, Sha256};
use tokio::sync::{mpsc, oneshot, watch};
use yilian_identity::{Identity, Principal, tls::RevocationList};
use yilian_ledger::{Ledger, Payload, Transaction};
use yilian_models::{Dataset, LabelColumn};

use crate::protocol::{ALPN, Message, RewardProof};
use crate::wire::frame_or_reset;
pub use crate::wire::{UNENCODABLE, next_message, spawn_writer};
use crate::{
    AgentId, EvaluationMachine, EvaluationState, FlError, RoundMachine, RoundRecord, Store,
    TaskSpec,
};

mod control;
pub mod engine;
pub use control::{ControlPlane, MAX_TASK_UPLOAD_BYTES, TrainingSubmission};
pub use engine::{Command, ConnId, Durable, Engine, EvaluationTask, Input, Outgoing};

/// How often deadlines are checked.
const TICK: Duration = Duration::from_millis(100);
/// Largest ONNX model an engineer may submit for evaluation. The
/// coordinator holds it in memory, once, and every agent's writer reads
/// that copy; agents apply their own, usually smaller, limit.
pub const MAX_EVALUATION_MODEL_BYTES: usize = 256 << 20;
/// Items queued to one connection before it counts as too slow. A model is
/// one item, however large.
const CONNECTION_QUEUE: usize = 64;

/// How many QUIC connections the coordinator holds, handshakes included:
/// one over is refused at once (QUIC `CONNECTION_REFUSED`), before any
/// cryptography. Each agent holds one session, so this is the devices
/// one node can serve at a time.
pub const MAX_CONNECTIONS: usize = 16384;
/// A connection whose handshake has not finished by then is dropped, well
/// before the 60 s idle timeout would.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Events queued to the engine; connection readers wait when it is full.
const ENGINE_QUEUE: usize = 4096;

/// Where a submission's outcome goes.
type Reply = oneshot::Sender<Result<(), FlError>>;

/// A read of the engine's state, run on its thread.
type Query = Box<dyn FnOnce(&Engine) + Send>;

/// What the engine thread is told.
enum Event {
    Connected {
        conn: ConnId,
        principal: Principal,
        outbox: mpsc::Sender<Outgoing>,
    },
    Input(Input),
    /// A connection failed to decode or carry a frame: tell it why, close it.
    Failed {
        conn: ConnId,
        reason: String,
    },
    /// Holds a task id for a submission being anchored, with the task's
    /// file (validation set or ONNX model) written under it.
    Reserve {
        id: String,
        file: (&'static str, Arc<Vec<u8>>),
        reply: Reply,
    },
    /// The submission was refused after all: the id and its files go.
    Release {
        id: String,
    },
    AddTask {
        machine: Box<RoundMachine>,
        reply: Reply,
    },
    AddEvaluation {
        eval: EvaluationTask,
        reply: Reply,
    },
    Query(Query),
}

/// What the coordinator's async side and its control plane share.
struct Shared {
    events: mpsc::Sender<Event>,
    identity: Identity,
    ledger: Option<Ledger>,
    /// Bumped whenever a task's state changed; watchers wait on it.
    changed: watch::Sender<()>,
}

impl Shared {
    async fn send(&self, event: Event) -> Result<(), FlError> {
        self.events.send(event).await.map_err(|_| FlError::Stopped)
    }

    /// Runs `read` on the engine's thread and returns what it returned.
    async fn query<T: Send + 'static>(
        &self,
        read: impl FnOnce(&Engine) -> T + Send + 'static,
    ) -> Result<T, FlError> {
        let (tx, rx) = oneshot::channel();
        self.send(Event::Query(Box::new(move |e| {
            let _ = tx.send(read(e));
        })))
        .await?;
        rx.await.map_err(|_| FlError::Stopped)
    }
}

/// A running coordinator.
pub struct Coordinator {
    endpoint: quinn::Endpoint,
    shared: Arc<Shared>,
}

/// Reads the round histories (accuracy, loss, epsilon, contributions) of the
/// tasks this coordinator runs; cheap to clone.
#[derive(Clone)]
pub struct Histories {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for Histories {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Histories").finish_non_exhaustive()
    }
}

impl Histories {
    /// The closed rounds of `task_id`, if this coordinator runs it.
    pub async fn of(&self, task_id: &str) -> Option<Vec<RoundRecord>> {
        let id = task_id.to_owned();
        self.shared
            .query(move |e| e.task(&id).map(|m| m.state().history.clone()))
            .await
            .ok()
            .flatten()
    }
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
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

fn server_config(
    identity: &Identity,
    revoked: RevocationList,
) -> Result<quinn::ServerConfig, FlError> {
    let mut tls = yilian_identity::tls::server_config(identity, revoked)
        .map_err(|e| FlError::Tls(e.to_string()))?;
    tls.alpn_protocols = vec![ALPN.to_vec()];
    let crypto = QuicServerConfig::try_from(tls).map_err(|e| FlError::Tls(e.to_string()))?;
    let mut server = quinn::ServerConfig::with_crypto(Arc::new(crypto));
    let mut transport = quinn::TransportConfig::default();
    transport.max_idle_timeout(Some(
        quinn::IdleTimeout::try_from(Duration::from_secs(60))
            .expect("60 s is a valid idle timeout"),
    ));
    transport.keep_alive_interval(Some(Duration::from_secs(5)));
    server.transport_config(Arc::new(transport));
    Ok(server)
}

impl Coordinator {
    pub async fn serve(
        addr: SocketAddr,
        identity: Identity,
        revoked: RevocationList,
        ledger: Option<Ledger>,
        data_dir: &Path,
    ) -> Result<Coordinator, FlError> {
        Self::serve_within(addr, identity, revoked, ledger, data_dir, MAX_CONNECTIONS).await
    }

    /// [`Coordinator::serve`], holding at most `max_connections` QUIC
    /// connections.
    pub async fn serve_within(
        addr: SocketAddr,
        identity: Identity,
        revoked: RevocationList,
        ledger: Option<Ledger>,
        data_dir: &Path,
        max_connections: usize,
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
        let endpoint = quinn::Endpoint::server(server_config(&identity, revoked.clone())?, addr)?;
        let (events, rx) = mpsc::channel(ENGINE_QUEUE);
        let shared = Arc::new(Shared {
            events,
            identity,
            ledger,
            changed: watch::Sender::new(()),
        });
        let driver = Driver {
            engine: Engine::new(tasks, evaluations),
            store,
            data_dir: data_dir.to_owned(),
            conns: HashMap::new(),
            reserved: Default::default(),
            shared: Arc::downgrade(&shared),
            changed: shared.changed.clone(),
            ledger: shared.ledger.clone(),
            identity: shared.identity.clone(),
            runtime: tokio::runtime::Handle::current(),
            endpoint: endpoint.clone(),
        };
        std::thread::Builder::new()
            .name("fl-engine".into())
            .spawn(move || driver.run(rx))?;
        let accept = endpoint.clone();
        let weak = Arc::downgrade(&shared);
        tokio::spawn(async move {
            let ids = AtomicU64::new(1);
            while let Some(incoming) = accept.accept().await {
                if accept.open_connections() >= max_connections {
                    tracing::warn!(
                        remote = %incoming.remote_address(),
                        max_connections,
                        "QUIC connection refused: the coordinator holds its most"
                    );
                    incoming.refuse();
                    continue;
                }
                let Some(s) = weak.upgrade() else { break };
                let conn = ids.fetch_add(1, Ordering::Relaxed);
                let events = s.events.clone();
                drop(s);
                let revoked = revoked.clone();
                tokio::spawn(async move {
                    if let Err(e) = connection(conn, events, incoming, revoked).await {
                        tracing::debug!(conn, "connection ended: {e}");
                    }
                });
            }
        });
        let weak = Arc::downgrade(&shared);
        tokio::spawn(async move {
            let mut interval = tokio::time::interval(TICK);
            loop {
                interval.tick().await;
                let Some(s) = weak.upgrade() else { break };
                if s.send(Event::Input(Input::Tick)).await.is_err() {
                    break;
                }
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
        req: TrainingSubmission,
    ) -> Result<crate::pb::SubmitTaskResponse, FlError> {
        control::submit_task(&self.shared, req).await
    }

    /// The closed rounds of a task so far.
    pub async fn history(&self, task_id: &str) -> Option<Vec<RoundRecord>> {
        self.histories().of(task_id).await
    }

    /// A handle that reads tasks' round histories, for the node's explorer.
    pub fn histories(&self) -> Histories {
        Histories {
            shared: self.shared.clone(),
        }
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

/// Events handled before one group commit.
const MAX_BATCH: usize = 1024;

/// One group commit's worth of events: their commands, and the answers and
/// reads that wait for it.
#[derive(Default)]
struct Batch {
    events: usize,
    commands: Vec<Command>,
    replies: Vec<(Reply, Result<(), FlError>)>,
    reads: Vec<Query>,
}

impl Batch {
    /// Each state to write once, first; then everything else in order.
    fn ordered(&mut self) -> Vec<Command> {
        let mut persist: Vec<Command> = Vec::new();
        let mut rest = Vec::new();
        for c in self.commands.drain(..) {
            match c {
                Command::Persist(d) => {
                    if !persist
                        .iter()
                        .any(|p| matches!(p, Command::Persist(q) if *q == d))
                    {
                        persist.push(Command::Persist(d));
                    }
                }
                Command::Changed if rest.iter().any(|r| matches!(r, Command::Changed)) => {}
                other => rest.push(other),
            }
        }
        persist.extend(rest);
        persist
    }
}

/// The engine thread: owns the engine and the store, and carries out commands.
struct Driver {
    engine: Engine,
    store: Store,
    data_dir: PathBuf,
    conns: HashMap<ConnId, mpsc::Sender<Outgoing>>,
    /// Task ids held by submissions being anchored on the ledger.
    reserved: std::collections::BTreeSet<String>,
    /// Weak: the thread ends once the coordinator and its control plane are gone.
    shared: std::sync::Weak<Shared>,
    changed: watch::Sender<()>,
    ledger: Option<Ledger>,
    identity: Identity,
    runtime: tokio::runtime::Handle,
    endpoint: quinn::Endpoint,
}

impl Driver {
    fn run(mut self, rx: mpsc::Receiver<Event>) {
        self.serve(rx);
        // Watchers look once more and find the coordinator stopped.
        self.changed.send_replace(());
        // Dropping the queues lets every writer finish; the store closes here.
    }

    fn serve(&mut self, mut rx: mpsc::Receiver<Event>) {
        let resumed = self.engine.resume();
        if let Err(e) = self.execute(resumed) {
            tracing::error!("coordinator stopping: {e}");
            return;
        }
        while let Some(first) = rx.blocking_recv() {
            if self.shared.strong_count() == 0 {
                break;
            }
            // Group commit: every event already queued is handled, then each
            // changed state is written once, before anything the batch says
            // goes out, and only then are submissions answered and reads run.
            let mut batch = Batch::default();
            self.event(first, &mut batch);
            while batch.events < MAX_BATCH {
                match rx.try_recv() {
                    Ok(event) => self.event(event, &mut batch),
                    Err(_) => break,
                }
            }
            let commands = batch.ordered();
            if let Err(e) = self.execute(commands) {
                for (reply, _) in batch.replies {
                    let _ = reply.send(Err(FlError::Store(format!("not persisted: {e}"))));
                }
                tracing::error!("coordinator stopping: {e}; a restart resumes from the last write");
                self.endpoint.close(1u32.into(), b"coordinator failed");
                break;
            }
            for (reply, result) in batch.replies {
                let _ = reply.send(result);
            }
            for read in batch.reads {
                read(&self.engine);
            }
        }
    }

    fn event(&mut self, event: Event, batch: &mut Batch) {
        let now = now_ms();
        batch.events += 1;
        match event {
            Event::Connected {
                conn,
                principal,
                outbox,
            } => {
                self.conns.insert(conn, outbox);
                let commands = self
                    .engine
                    .handle(Input::Connected { conn, principal }, now);
                batch.commands.extend(commands);
            }
            Event::Input(input) => {
                if let Input::Closed { conn } = &input {
                    // Its writer finishes once the queue's sender is gone.
                    self.conns.remove(conn);
                }
                batch.commands.extend(self.engine.handle(input, now));
            }
            Event::Failed { conn, reason } => {
                // Close tells the peer why, then drops the connection's queue.
                batch.commands.push(Command::Close { conn, reason });
                let commands = self.engine.handle(Input::Closed { conn }, now);
                batch.commands.extend(commands);
            }
            Event::Reserve { id, file, reply } => {
                let _ = reply.send(self.reserve(id, file));
            }
            Event::Release { id } => {
                self.reserved.remove(&id);
                let _ = std::fs::remove_dir_all(task_dir(&self.data_dir, &id));
            }
            Event::AddTask { machine, reply } => {
                let result = self.add_task(*machine);
                let result = result.map(|commands| batch.commands.extend(commands));
                batch.replies.push((reply, result));
            }
            Event::AddEvaluation { eval, reply } => {
                let result = self.add_evaluation(eval);
                let result = result.map(|commands| batch.commands.extend(commands));
                batch.replies.push((reply, result));
            }
            Event::Query(read) => batch.reads.push(read),
        }
    }

    /// Writes the task's validation set, then its state; refused before
    /// either if the id is taken, and the directory removed if a write fails.
    /// Refused if the id is taken or held; the directory goes if the write fails.
    fn reserve(
        &mut self,
        id: String,
        (name, bytes): (&'static str, Arc<Vec<u8>>),
    ) -> Result<(), FlError> {
        if self.engine.task_exists(&id) || self.reserved.contains(&id) {
            return Err(FlError::TaskExists(id));
        }
        let dir = task_dir(&self.data_dir, &id);
        let written =
            std::fs::create_dir_all(&dir).and_then(|()| std::fs::write(dir.join(name), &*bytes));
        if let Err(e) = written {
            let _ = std::fs::remove_dir_all(&dir);
            return Err(e.into());
        }
        self.reserved.insert(id);
        Ok(())
    }

    /// A reserved task, anchored: its state is persisted with the batch.
    fn add_task(&mut self, machine: RoundMachine) -> Result<Vec<Command>, FlError> {
        let id = machine.state().task.id.clone();
        if !self.reserved.remove(&id) {
            return Err(FlError::TaskExists(id));
        }
        self.engine.add_task(machine)
    }

    fn add_evaluation(&mut self, eval: EvaluationTask) -> Result<Vec<Command>, FlError> {
        let id = eval.machine.state().task.id.clone();
        if !self.reserved.remove(&id) {
            return Err(FlError::TaskExists(id));
        }
        self.engine.add_evaluation(eval)
    }

    /// Carries out commands in order, and the inputs they feed back.
    fn execute(&mut self, commands: Vec<Command>) -> Result<(), FlError> {
        let mut queue: VecDeque<Command> = commands.into();
        while let Some(command) = queue.pop_front() {
            match command {
                Command::Send { conn, out } => {
                    let Some(outbox) = self.conns.get(&conn) else {
                        continue;
                    };
                    if let Err(e) = outbox.try_send(out) {
                        // Too slow, or gone: the agent leaves rather than
                        // have its queue grow.
                        if matches!(e, mpsc::error::TrySendError::Full(_)) {
                            tracing::info!(conn, "agent too slow to read its queue: disconnected");
                        }
                        self.conns.remove(&conn);
                        queue.extend(self.engine.handle(Input::Closed { conn }, now_ms()));
                    }
                }
                Command::Close { conn, reason } => {
                    if let Some(outbox) = self.conns.remove(&conn) {
                        // Dropping the sender after this lets the writer finish.
                        let _ = outbox
                            .try_send(Outgoing::Message(Box::new(Message::Refused { reason })));
                    }
                }
                Command::Persist(d) => self.persist(&d)?,
                Command::Record {
                    task_id,
                    record,
                    delta,
                } => match (&self.ledger, self.shared.upgrade()) {
                    (Some(ledger), Some(shared)) => {
                        let (ledger, identity) = (ledger.clone(), self.identity.clone());
                        self.runtime.spawn(async move {
                            let proofs =
                                record_round(&ledger, &identity, &task_id, &record, delta).await;
                            let _ = shared
                                .send(Event::Input(Input::Recorded {
                                    task_id,
                                    round: record.round,
                                    proofs,
                                }))
                                .await;
                        });
                    }
                    // Stopping: the round stays owed, for the next start.
                    (Some(_), None) => {}
                    (None, _) => queue.extend(self.engine.handle(
                        Input::Recorded {
                            task_id,
                            round: record.round,
                            proofs: Some(vec![None; record.participants.len()]),
                        },
                        now_ms(),
                    )),
                },
                Command::Compute { task_id, job } => {
                    // Stopping: the round stays closing, and is scored again at the next start.
                    let Some(shared) = self.shared.upgrade() else {
                        continue;
                    };
                    self.runtime.spawn(async move {
                        match tokio::task::spawn_blocking(move || job.run()).await {
                            Ok(result) => {
                                let input = Input::Computed { task_id, result };
                                let _ = shared.send(Event::Input(input)).await;
                            }
                            Err(e) => tracing::error!(task_id, "scoring failed: {e}"),
                        }
                    });
                }
                Command::Changed => {
                    self.changed.send_replace(());
                }
            }
        }
        Ok(())
    }

    fn persist(&mut self, d: &Durable) -> Result<(), FlError> {
        match d {
            Durable::Task(id) => match self.engine.task(id) {
                Some(m) => self.store.save(m.state()),
                None => Ok(()),
            },
            Durable::Evaluation(id) => match self.engine.evaluation(id) {
                Some(e) => self.store.save_evaluation(e.machine.state()),
                None => Ok(()),
            },
        }
    }
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
    let h = Sha256::digest([task.as_bytes(), &round.to_le_bytes(), agent, &[kind]].concat());
    Transaction {
        version: yilian_ledger::tx::TX_VERSION,
        nonce: u64::from_le_bytes(h[..8].try_into().unwrap_or([0; 8])),
        timestamp_ms: at_ms,
        payload,
    }
}

/// Writes a round's privacy spent, contributions and rewards to the
/// ledger. The rewards' inclusion proofs (participants' order) once every
/// entry was acknowledged; `None` if any was not, to be tried again.
async fn record_round(
    ledger: &Ledger,
    identity: &Identity,
    task_id: &str,
    record: &RoundRecord,
    delta: Option<f64>,
) -> Option<Vec<Option<RewardProof>>> {
    let key = identity.signing_key();
    let at = record.closed_at_ms;
    let mut written = true;
    let mut proofs = vec![None; record.participants.len()];
    if let (Some(epsilon), Some(delta)) = (record.epsilon, delta) {
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
        if let Err(e) = ledger.submit(spent.sign(key)).await {
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
        if let Err(e) = ledger.submit(contribution.sign(key)).await {
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
        match ledger.submit(reward.sign(key)).await {
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
    if written {
        // Once per round: a round whose entries are retried counts when they land.
        metrics::counter!("yilian_fl_rounds_total").increment(1);
        metrics::gauge!("yilian_fl_participants").set(record.participants.len() as f64);
        metrics::counter!("yilian_fl_participants_total")
            .increment(record.participants.len() as u64);
        metrics::counter!("yilian_fl_dropouts_total").increment(record.missing.len() as u64);
        metrics::counter!("yilian_fl_rejected_total").increment(record.rejected.len() as u64);
    }
    written.then_some(proofs)
}

/// Writes a connection's queue, cutting models into frames as it goes;
/// once the engine drops the queue, finishes the stream and lets the peer
/// read it before the connection closes.
async fn write_queue(
    conn: quinn::Connection,
    mut send: quinn::SendStream,
    mut rx: mpsc::Receiver<Outgoing>,
) {
    'queue: while let Some(out) = rx.recv().await {
        for m in out.messages() {
            let Some(frame) = frame_or_reset(&mut send, &m) else {
                return;
            };
            if send.write_all(&frame).await.is_err() {
                break 'queue;
            }
        }
    }
    let _ = send.finish();
    let _ = tokio::time::timeout(Duration::from_secs(2), conn.closed()).await;
    conn.close(0u32.into(), b"done");
}

/// QUIC application error code for a connection closed because its peer's
/// certificate was revoked after the handshake.
pub const REVOKED: u32 = 0x52;

/// Closes `conn` as soon as `principal`'s certificate is revoked; ends with
/// the connection.
async fn close_when_revoked(
    conn: quinn::Connection,
    principal: Principal,
    revoked: RevocationList,
) {
    let mut changes = revoked.changes();
    loop {
        if revoked.is_revoked(&principal.serial) {
            tracing::warn!(%principal, "closing the QUIC connection of a revoked certificate");
            conn.close(REVOKED.into(), b"certificate revoked");
            return;
        }
        tokio::select! {
            _ = conn.closed() => return,
            r = changes.changed() => if r.is_err() { return },
        }
    }
}

async fn connection(
    id: ConnId,
    events: mpsc::Sender<Event>,
    incoming: quinn::Incoming,
    revoked: RevocationList,
) -> Result<(), FlError> {
    let conn = tokio::time::timeout(HANDSHAKE_TIMEOUT, incoming)
        .await
        .map_err(|_| quinn::ConnectionError::TimedOut)??;
    let principal = peer_principal(&conn).ok_or(FlError::NoClientCertificate)?;
    tokio::spawn(close_when_revoked(conn.clone(), principal.clone(), revoked));
    let (send, mut recv) = conn.accept_bi().await?;
    let (tx, rx) = mpsc::channel(CONNECTION_QUEUE);
    tokio::spawn(write_queue(conn.clone(), send, rx));
    let tell = |e: Event| async { events.send(e).await.map_err(|_| FlError::Stopped) };
    tell(Event::Connected {
        conn: id,
        principal,
        outbox: tx,
    })
    .await?;
    loop {
        match next_message(&mut recv).await {
            Ok(Some(message)) => {
                tell(Event::Input(Input::Message { conn: id, message })).await?;
            }
            Ok(None) => {
                tell(Event::Input(Input::Closed { conn: id })).await?;
                return Ok(());
            }
            Err(e) => {
                let reason = e.to_string();
                tell(Event::Failed { conn: id, reason }).await?;
                return Err(e);
            }
        }
    }
}
