//! [`Consensus`] on openraft: the Raft log and the state machine live in the
//! ledger's own redb file, and peers talk gRPC over mutual TLS
//! ([`crate::peer`]).
//!
//! One Raft entry is one [`Batch`] (a group commit), so the Raft log grows
//! by batches, not by transactions. A log append is one redb transaction
//! with `Durability::Immediate` (one fsync), acknowledged to openraft only
//! after it. Applying writes the ledger's entries with `Durability::None`:
//! the next log append's fsync makes them durable, and until then a crash
//! only rolls the state machine back to a point openraft re-applies from.

// openraft's storage traits fix the error type (StorageError, ~224 bytes).
#![allow(clippy::result_large_err)]

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Debug;
use std::io::Cursor;
use std::ops::RangeBounds;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use openraft::error::{
    ClientWriteError, InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError,
    Unreachable,
};
use openraft::network::RPCOption;
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use openraft::storage::{LogFlushed, RaftLogStorage, RaftStateMachine};
use openraft::{
    BasicNode, Entry, LogId, LogState, RaftLogReader, RaftNetwork, RaftNetworkFactory,
    RaftSnapshotBuilder, Snapshot, SnapshotMeta, StorageError, StorageIOError, StoredMembership,
    Vote,
};
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};

use crate::consensus::{Applied, Batch, Consensus, Status};
use crate::store::Shared;
use crate::{LedgerError, Result};

openraft::declare_raft_types!(
    /// The ledger's Raft types: a log entry carries a [`Batch`].
    pub LedgerRaft:
        D = Batch,
        R = Applied,
        NodeId = u64,
        Node = BasicNode,
        Entry = Entry<LedgerRaft>,
        SnapshotData = Cursor<Vec<u8>>,
        AsyncRuntime = openraft::TokioRuntime,
);

pub type NodeId = u64;
type SErr = StorageError<NodeId>;

pub(crate) const RAFT_LOG: TableDefinition<'_, u64, &[u8]> = TableDefinition::new("raft_log");
pub(crate) const RAFT_META: TableDefinition<'_, &str, &[u8]> = TableDefinition::new("raft_meta");
const VOTE: &str = "vote";
const COMMITTED: &str = "committed";
const PURGED: &str = "purged";

fn enc<T: serde::Serialize>(v: &T) -> Vec<u8> {
    postcard::to_stdvec(v).expect("raft types serialise")
}

fn dec<T: serde::de::DeserializeOwned>(b: &[u8]) -> std::result::Result<T, postcard::Error> {
    postcard::from_bytes(b)
}

fn read_err(e: impl std::fmt::Display) -> SErr {
    StorageIOError::read_logs(openraft::AnyError::error(e.to_string())).into()
}
fn write_err(e: impl std::fmt::Display) -> SErr {
    StorageIOError::write_logs(openraft::AnyError::error(e.to_string())).into()
}

/// Runs blocking redb work off the async runtime.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> std::result::Result<T, SErr> + Send + 'static,
) -> std::result::Result<T, SErr> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| write_err(format!("storage task: {e}")))?
}

/// The Raft log, in the `raft_log` and `raft_meta` tables of the ledger file.
#[derive(Clone)]
pub struct LogStore {
    db: Arc<Database>,
}

impl LogStore {
    pub(crate) fn new(db: Arc<Database>) -> Self {
        LogStore { db }
    }

    fn meta<T: serde::de::DeserializeOwned>(
        &self,
        key: &str,
    ) -> std::result::Result<Option<T>, SErr> {
        let rtx = self.db.begin_read().map_err(read_err)?;
        let table = match rtx.open_table(RAFT_META) {
            Ok(t) => t,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(None),
            Err(e) => return Err(read_err(e)),
        };
        table
            .get(key)
            .map_err(read_err)?
            .map(|v| dec(v.value()).map_err(read_err))
            .transpose()
    }

    fn put_meta(&self, key: &str, bytes: &[u8], durable: bool) -> std::result::Result<(), SErr> {
        let mut wtx = self.db.begin_write().map_err(write_err)?;
        if !durable {
            wtx.set_durability(redb::Durability::None)
                .map_err(write_err)?;
        }
        {
            let mut t = wtx.open_table(RAFT_META).map_err(write_err)?;
            t.insert(key, bytes).map_err(write_err)?;
        }
        wtx.commit().map_err(write_err)
    }
}

impl RaftLogReader<LedgerRaft> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + Send>(
        &mut self,
        range: RB,
    ) -> std::result::Result<Vec<Entry<LedgerRaft>>, SErr> {
        let db = self.db.clone();
        let start = range.start_bound().cloned();
        let end = range.end_bound().cloned();
        blocking(move || {
            let rtx = db.begin_read().map_err(read_err)?;
            let table = match rtx.open_table(RAFT_LOG) {
                Ok(t) => t,
                Err(redb::TableError::TableDoesNotExist(_)) => return Ok(Vec::new()),
                Err(e) => return Err(read_err(e)),
            };
            table
                .range::<u64>((start, end))
                .map_err(read_err)?
                .map(|item| {
                    let (_, v) = item.map_err(read_err)?;
                    dec(v.value()).map_err(read_err)
                })
                .collect()
        })
        .await
    }
}

impl RaftLogStorage<LedgerRaft> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> std::result::Result<LogState<LedgerRaft>, SErr> {
        let purged: Option<LogId<NodeId>> = self.meta(PURGED)?;
        let rtx = self.db.begin_read().map_err(read_err)?;
        let last = match rtx.open_table(RAFT_LOG) {
            Ok(t) => t
                .last()
                .map_err(read_err)?
                .map(|(_, v)| dec::<Entry<LedgerRaft>>(v.value()).map_err(read_err))
                .transpose()?
                .map(|e| e.log_id),
            Err(redb::TableError::TableDoesNotExist(_)) => None,
            Err(e) => return Err(read_err(e)),
        };
        Ok(LogState {
            last_purged_log_id: purged,
            last_log_id: last.or(purged),
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<NodeId>) -> std::result::Result<(), SErr> {
        let s = self.clone();
        let bytes = enc(vote);
        blocking(move || s.put_meta(VOTE, &bytes, true)).await
    }

    async fn read_vote(&mut self) -> std::result::Result<Option<Vote<NodeId>>, SErr> {
        self.meta(VOTE)
    }

    async fn save_committed(
        &mut self,
        committed: Option<LogId<NodeId>>,
    ) -> std::result::Result<(), SErr> {
        // Not needed for safety (a restarted member learns it again), so it
        // rides on the next durable commit.
        let s = self.clone();
        let bytes = enc(&committed);
        blocking(move || s.put_meta(COMMITTED, &bytes, false)).await
    }

    async fn read_committed(&mut self) -> std::result::Result<Option<LogId<NodeId>>, SErr> {
        Ok(self.meta::<Option<LogId<NodeId>>>(COMMITTED)?.flatten())
    }

    async fn append<I>(
        &mut self,
        entries: I,
        callback: LogFlushed<LedgerRaft>,
    ) -> std::result::Result<(), SErr>
    where
        I: IntoIterator<Item = Entry<LedgerRaft>> + Send,
        I::IntoIter: Send,
    {
        let rows: Vec<(u64, Vec<u8>)> = entries
            .into_iter()
            .map(|e| (e.log_id.index, enc(&e)))
            .collect();
        let db = self.db.clone();
        // The fsync happens on a blocking thread; openraft goes on and is
        // told when the entries are durable.
        tokio::task::spawn_blocking(move || {
            let r = (|| -> std::result::Result<(), redb::Error> {
                let wtx = db.begin_write()?;
                {
                    let mut t = wtx.open_table(RAFT_LOG)?;
                    for (i, b) in &rows {
                        t.insert(*i, b.as_slice())?;
                    }
                }
                wtx.commit()?;
                Ok(())
            })();
            callback.log_io_completed(r.map_err(std::io::Error::other));
        });
        Ok(())
    }

    async fn truncate(&mut self, log_id: LogId<NodeId>) -> std::result::Result<(), SErr> {
        let db = self.db.clone();
        blocking(move || {
            let wtx = db.begin_write().map_err(write_err)?;
            {
                let mut t = wtx.open_table(RAFT_LOG).map_err(write_err)?;
                t.retain_in(log_id.index.., |_, _| false)
                    .map_err(write_err)?;
            }
            wtx.commit().map_err(write_err)
        })
        .await
    }

    async fn purge(&mut self, log_id: LogId<NodeId>) -> std::result::Result<(), SErr> {
        let db = self.db.clone();
        blocking(move || {
            let wtx = db.begin_write().map_err(write_err)?;
            {
                let mut meta = wtx.open_table(RAFT_META).map_err(write_err)?;
                meta.insert(PURGED, enc(&Some(log_id)).as_slice())
                    .map_err(write_err)?;
                let mut t = wtx.open_table(RAFT_LOG).map_err(write_err)?;
                t.retain_in(..=log_id.index, |_, _| false)
                    .map_err(write_err)?;
            }
            wtx.commit().map_err(write_err)
        })
        .await
    }
}

/// The state machine: the ledger itself (the store's shared replica).
#[derive(Clone)]
pub struct StateMachine {
    pub(crate) shared: Arc<Shared>,
}

/// A snapshot: every ledger entry up to the applied position, re-applied
/// and re-validated by whoever installs it.
#[derive(serde::Serialize, serde::Deserialize)]
struct SnapshotData {
    entries: Vec<Vec<u8>>,
}

impl RaftSnapshotBuilder<LedgerRaft> for StateMachine {
    async fn build_snapshot(&mut self) -> std::result::Result<Snapshot<LedgerRaft>, SErr> {
        let shared = self.shared.clone();
        blocking(move || {
            let (applied, membership, size) = shared.applied_position();
            let entries = shared
                .entry_range_bytes(0, size)
                .map_err(|e| StorageIOError::read_state_machine(openraft::AnyError::error(e)))?;
            let data = enc(&SnapshotData { entries });
            let meta = SnapshotMeta {
                last_log_id: applied,
                last_membership: membership,
                snapshot_id: format!("{}-{size}", applied.map(|l| l.index).unwrap_or_default()),
            };
            Ok(Snapshot {
                meta,
                snapshot: Box::new(Cursor::new(data)),
            })
        })
        .await
    }
}

impl RaftStateMachine<LedgerRaft> for StateMachine {
    type SnapshotBuilder = StateMachine;

    async fn applied_state(
        &mut self,
    ) -> std::result::Result<(Option<LogId<NodeId>>, StoredMembership<NodeId, BasicNode>), SErr>
    {
        let (applied, membership, _) = self.shared.applied_position();
        Ok((applied, membership))
    }

    async fn apply<I>(&mut self, entries: I) -> std::result::Result<Vec<Applied>, SErr>
    where
        I: IntoIterator<Item = Entry<LedgerRaft>> + Send,
        I::IntoIter: Send,
    {
        let entries: Vec<Entry<LedgerRaft>> = entries.into_iter().collect();
        let shared = self.shared.clone();
        blocking(move || {
            shared.apply_entries(entries).map_err(|e| {
                StorageIOError::write_state_machine(openraft::AnyError::error(e)).into()
            })
        })
        .await
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn begin_receiving_snapshot(
        &mut self,
    ) -> std::result::Result<Box<Cursor<Vec<u8>>>, SErr> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta<NodeId, BasicNode>,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> std::result::Result<(), SErr> {
        let data: SnapshotData = dec(snapshot.get_ref()).map_err(|e| {
            StorageIOError::read_snapshot(Some(meta.signature()), openraft::AnyError::error(e))
        })?;
        let shared = self.shared.clone();
        let meta = meta.clone();
        blocking(move || {
            shared
                .install(data.entries, meta.last_log_id, meta.last_membership.clone())
                .map_err(|e| {
                    StorageIOError::write_snapshot(
                        Some(meta.signature()),
                        openraft::AnyError::error(e),
                    )
                    .into()
                })
        })
        .await
    }

    async fn get_current_snapshot(
        &mut self,
    ) -> std::result::Result<Option<Snapshot<LedgerRaft>>, SErr> {
        // Built on demand: the ledger's entries are the snapshot.
        Ok(Some(self.build_snapshot().await?))
    }
}

/// How a member reaches its peers: a client for the consortium service.
pub trait PeerConnector: Send + Sync + 'static {
    /// A lazily connecting channel to `addr`.
    fn channel(&self, addr: &str) -> Result<tonic::transport::Channel>;
    /// The address to dial for `addr` (a test may route peers through a proxy).
    fn route(&self, addr: &str) -> String {
        addr.to_owned()
    }
}

/// Creates a [`PeerClient`] per target.
#[derive(Clone)]
pub struct Network {
    connector: Option<Arc<dyn PeerConnector>>,
}

impl RaftNetworkFactory<LedgerRaft> for Network {
    type Network = PeerClient;

    async fn new_client(&mut self, target: NodeId, node: &BasicNode) -> PeerClient {
        let client = self
            .connector
            .as_ref()
            .ok_or_else(|| LedgerError::Consensus("this ledger has no peers".into()))
            .and_then(|c| c.channel(&c.route(&node.addr)))
            .map(crate::peer::pb::consortium_client::ConsortiumClient::new);
        PeerClient { target, client }
    }
}

/// One peer, as openraft's network sees it.
pub struct PeerClient {
    target: NodeId,
    client: Result<crate::peer::pb::consortium_client::ConsortiumClient<tonic::transport::Channel>>,
}

/// Which of openraft's RPCs a peer message carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Rpc {
    Append,
    Vote,
    Snapshot,
}

type RpcErr<E = openraft::error::Infallible> = RPCError<NodeId, BasicNode, RaftError<NodeId, E>>;

impl PeerClient {
    async fn call<Req, Resp, E>(
        &mut self,
        rpc: Rpc,
        req: &Req,
        timeout: Duration,
    ) -> std::result::Result<Resp, RpcErr<E>>
    where
        Req: serde::Serialize,
        Resp: serde::de::DeserializeOwned,
        E: std::error::Error + serde::de::DeserializeOwned,
    {
        let client = match &mut self.client {
            Ok(c) => c,
            Err(e) => return Err(RPCError::Unreachable(Unreachable::new(&e.clone()))),
        };
        let mut request = tonic::Request::new(crate::peer::pb::RaftMessage { payload: enc(req) });
        request.set_timeout(timeout);
        let resp = match rpc {
            Rpc::Append => client.append_entries(request).await,
            Rpc::Vote => client.vote(request).await,
            Rpc::Snapshot => client.install_snapshot(request).await,
        };
        let resp = match resp {
            Ok(r) => r.into_inner(),
            Err(s) if s.code() == tonic::Code::Unavailable => {
                return Err(RPCError::Unreachable(Unreachable::new(&s)));
            }
            Err(s) => return Err(RPCError::Network(NetworkError::new(&s))),
        };
        let decoded: std::result::Result<Resp, RaftError<NodeId, E>> =
            dec(&resp.payload).map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        decoded.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
    }
}

impl RaftNetwork<LedgerRaft> for PeerClient {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<LedgerRaft>,
        option: RPCOption,
    ) -> std::result::Result<AppendEntriesResponse<NodeId>, RpcErr> {
        self.call(Rpc::Append, &rpc, option.hard_ttl()).await
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<LedgerRaft>,
        option: RPCOption,
    ) -> std::result::Result<InstallSnapshotResponse<NodeId>, RpcErr<InstallSnapshotError>> {
        self.call(Rpc::Snapshot, &rpc, option.hard_ttl()).await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> std::result::Result<VoteResponse<NodeId>, RpcErr> {
        self.call(Rpc::Vote, &rpc, option.hard_ttl()).await
    }
}

/// Timing of the consortium's Raft.
#[derive(Clone, Debug)]
pub struct Timing {
    pub heartbeat_ms: u64,
    pub election_min_ms: u64,
    pub election_max_ms: u64,
}

impl Default for Timing {
    fn default() -> Self {
        Timing {
            heartbeat_ms: 150,
            election_min_ms: 600,
            election_max_ms: 1200,
        }
    }
}

/// The ledger's consensus on openraft.
pub struct RaftConsensus {
    pub(crate) raft: openraft::Raft<LedgerRaft>,
    id: NodeId,
    /// Millis since the epoch at which a leader last reached this member.
    contact: AtomicU64,
    timing: Timing,
}

impl RaftConsensus {
    pub(crate) async fn start(
        id: NodeId,
        shared: Arc<Shared>,
        connector: Option<Arc<dyn PeerConnector>>,
        timing: Timing,
    ) -> Result<RaftConsensus> {
        let config = openraft::Config {
            cluster_name: "yilian-ledger".into(),
            heartbeat_interval: timing.heartbeat_ms,
            election_timeout_min: timing.election_min_ms,
            election_timeout_max: timing.election_max_ms,
            // The ledger's entries are the snapshot; the Raft log is kept
            // whole, so a joining member catches up by log transfer.
            snapshot_policy: openraft::SnapshotPolicy::Never,
            max_payload_entries: 64,
            ..Default::default()
        }
        .validate()
        .map_err(|e| LedgerError::Consensus(e.to_string()))?;
        let log = LogStore::new(shared.db.clone());
        let sm = StateMachine { shared };
        let raft = openraft::Raft::new(id, Arc::new(config), Network { connector }, log, sm)
            .await
            .map_err(|e| LedgerError::Consensus(e.to_string()))?;
        Ok(RaftConsensus {
            raft,
            id,
            contact: AtomicU64::new(0),
            timing,
        })
    }

    /// Makes a fresh log a one-member cluster of this node, and when this
    /// node is the only voter, elects it at once rather than after a timeout.
    pub(crate) async fn bootstrap(&self, addr: &str) -> Result<()> {
        let fatal = |e: openraft::error::Fatal<NodeId>| LedgerError::Consensus(e.to_string());
        if !self.raft.is_initialized().await.map_err(fatal)? {
            let members = BTreeMap::from([(
                self.id,
                BasicNode {
                    addr: addr.to_owned(),
                },
            )]);
            self.raft
                .initialize(members)
                .await
                .map_err(|e| LedgerError::Consensus(e.to_string()))?;
        }
        let voters = self.status().voters;
        if voters.len() == 1 && voters.contains_key(&self.id) {
            self.raft.trigger().elect().await.map_err(fatal)?;
            self.wait_for_leader(Duration::from_secs(10)).await;
        }
        Ok(())
    }

    pub fn timing(&self) -> &Timing {
        &self.timing
    }

    /// Notes that the current leader reached this member.
    pub(crate) fn touch(&self) {
        self.contact.store(crate::tx::now_ms(), Ordering::Relaxed);
    }

    fn leader_of(&self, m: &openraft::RaftMetrics<NodeId, BasicNode>) -> Option<(u64, String)> {
        let id = m.current_leader?;
        let addr = m
            .membership_config
            .membership()
            .get_node(&id)
            .map(|n| n.addr.clone())
            .unwrap_or_default();
        Some((id, addr))
    }

    fn not_leader(&self) -> LedgerError {
        let m = self.raft.metrics().borrow().clone();
        LedgerError::NotLeader {
            leader: self.leader_of(&m).map(|(_, a)| a),
        }
    }
}

fn write_error(e: RaftError<NodeId, ClientWriteError<NodeId, BasicNode>>) -> LedgerError {
    match e {
        RaftError::APIError(ClientWriteError::ForwardToLeader(f)) => LedgerError::NotLeader {
            leader: f.leader_node.map(|n| n.addr),
        },
        RaftError::APIError(ClientWriteError::ChangeMembershipError(c)) => {
            LedgerError::Consensus(c.to_string())
        }
        RaftError::Fatal(f) => LedgerError::Halted {
            cause: f.to_string(),
        },
    }
}

#[tonic::async_trait]
impl Consensus for RaftConsensus {
    async fn propose(&self, batch: Batch) -> Result<Applied> {
        if !self.status().is_leader {
            return Err(self.not_leader());
        }
        // A leader cut off from its quorum waits forever in openraft; the
        // ledger answers Unavailable instead.
        let limit = Duration::from_millis(self.timing.election_max_ms * 4);
        match tokio::time::timeout(limit, self.raft.client_write(batch)).await {
            Ok(Ok(r)) => Ok(r.data),
            Ok(Err(e)) => Err(write_error(e)),
            Err(_) => Err(LedgerError::NoQuorum {
                millis: limit.as_millis() as u64,
            }),
        }
    }

    fn status(&self) -> Status {
        let m = self.raft.metrics().borrow().clone();
        let is_leader = m.current_leader == Some(self.id);
        let now = crate::tx::now_ms();
        let last_contact_ms = if is_leader {
            m.millis_since_quorum_ack
        } else {
            match self.contact.load(Ordering::Relaxed) {
                0 => None,
                t => Some(now.saturating_sub(t)),
            }
        };
        let voters: BTreeMap<u64, String> = m
            .membership_config
            .membership()
            .voter_ids()
            .map(|id| {
                let addr = m
                    .membership_config
                    .membership()
                    .get_node(&id)
                    .map(|n| n.addr.clone())
                    .unwrap_or_default();
                (id, addr)
            })
            .collect();
        Status {
            id: self.id,
            is_leader,
            leader: self.leader_of(&m),
            term: m.current_term,
            last_contact_ms,
            voters,
            halted: m.running_state.as_ref().err().map(|f| f.to_string()),
        }
    }

    async fn wait_for_leader(&self, within: Duration) -> Option<(u64, String)> {
        let mut rx = self.raft.metrics();
        let deadline = tokio::time::Instant::now() + within;
        loop {
            {
                let m = rx.borrow_and_update().clone();
                if let Some(l) = self.leader_of(&m) {
                    return Some(l);
                }
            }
            if tokio::time::timeout_at(deadline, rx.changed())
                .await
                .is_err()
            {
                return None;
            }
        }
    }

    async fn reconfigure(&self, voters: BTreeMap<u64, String>) -> Result<()> {
        let status = self.status();
        if !status.is_leader {
            return Err(self.not_leader());
        }
        let m = self.raft.metrics().borrow().clone();
        let known: BTreeMap<u64, String> = m
            .membership_config
            .membership()
            .nodes()
            .map(|(id, n)| (*id, n.addr.clone()))
            .collect();
        for (id, addr) in &voters {
            if !known.contains_key(id) {
                // Blocks until the learner has caught up with the log.
                self.raft
                    .add_learner(*id, BasicNode { addr: addr.clone() }, true)
                    .await
                    .map_err(write_error)?;
            }
        }
        let moved: BTreeMap<u64, BasicNode> = voters
            .iter()
            .filter(|(id, addr)| known.get(id).is_some_and(|k| k != *addr))
            .map(|(id, addr)| (*id, BasicNode { addr: addr.clone() }))
            .collect();
        if !moved.is_empty() {
            self.raft
                .change_membership(openraft::ChangeMembers::SetNodes(moved), true)
                .await
                .map_err(write_error)?;
        }
        let ids: BTreeSet<u64> = voters.keys().copied().collect();
        if ids != status.voters.keys().copied().collect::<BTreeSet<u64>>() {
            // Joint consensus: openraft commits the joint configuration, then the new one.
            self.raft
                .change_membership(openraft::ChangeMembers::ReplaceAllVoters(ids), false)
                .await
                .map_err(write_error)?;
        }
        Ok(())
    }

    async fn shutdown(&self) {
        let _ = self.raft.shutdown().await;
    }
}

/// A peer's Raft request as decoded off the wire, before Raft sees it.
#[derive(Debug)]
pub enum RaftRequest {
    Append(openraft::raft::AppendEntriesRequest<LedgerRaft>),
    Vote(openraft::raft::VoteRequest<NodeId>),
    Snapshot(openraft::raft::InstallSnapshotRequest<LedgerRaft>),
}

/// Decodes a peer's request: the one decoder between a peer's bytes and
/// openraft, fuzzed in `fuzz/`.
pub fn decode_request(rpc: Rpc, payload: &[u8]) -> Result<RaftRequest> {
    Ok(match rpc {
        Rpc::Append => RaftRequest::Append(dec(payload).map_err(peer_msg)?),
        Rpc::Vote => RaftRequest::Vote(dec(payload).map_err(peer_msg)?),
        Rpc::Snapshot => RaftRequest::Snapshot(dec(payload).map_err(peer_msg)?),
    })
}

/// The peer side of openraft's RPCs: decode, hand to Raft, encode.
impl RaftConsensus {
    pub(crate) async fn handle(&self, rpc: Rpc, payload: &[u8]) -> Result<Vec<u8>> {
        Ok(match decode_request(rpc, payload)? {
            RaftRequest::Append(req) => {
                let r = self.raft.append_entries(req).await;
                if r.is_ok() {
                    self.touch();
                }
                enc(&r)
            }
            RaftRequest::Vote(req) => enc(&self.raft.vote(req).await),
            RaftRequest::Snapshot(req) => {
                let r = self.raft.install_snapshot(req).await;
                if r.is_ok() {
                    self.touch();
                }
                enc(&r)
            }
        })
    }
}

fn peer_msg(e: postcard::Error) -> LedgerError {
    LedgerError::PeerMessage(format!("undecodable Raft message: {e}"))
}
