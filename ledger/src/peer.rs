//! The consortium peer service (see `proto/consortium.proto`): Raft RPCs,
//! forwarded writes, the cosigning round and evidence, served only to
//! member-role certificates of consortium members. Also the two background
//! loops a member runs: the leader's cosigning round, and the reconciler
//! that makes Raft's voters match the membership approved on the ledger.

use std::collections::BTreeMap;
use std::time::Duration;

use tonic::{Request, Response, Status};
use yilian_identity::Role;

use crate::checkpoint::Checkpoint;
use crate::raft::{PeerConnector, Rpc};
use crate::store::{Ledger, Receipt};
use crate::tx::SignedTransaction;
use crate::{LedgerError, Result};

/// Generated protobuf types and service stubs.
pub mod pb {
    tonic::include_proto!("yilian.consortium.v1");
}

pub use pb::consortium_server::ConsortiumServer;

/// Serves one member's side of the consortium protocol.
#[derive(Clone, Debug)]
pub struct ConsortiumService {
    ledger: Ledger,
}

impl ConsortiumService {
    pub fn new(ledger: Ledger) -> Self {
        ConsortiumService { ledger }
    }

    pub fn into_server(self) -> ConsortiumServer<Self> {
        // Raft batches of MAX_BATCH transactions exceed tonic's 4 MiB default.
        ConsortiumServer::new(self)
            .max_decoding_message_size(256 << 20)
            .max_encoding_message_size(256 << 20)
    }

    async fn raft(
        &self,
        rpc: Rpc,
        req: Request<pb::RaftMessage>,
    ) -> Result<Response<pb::RaftMessage>, Status> {
        self.admit(&req)?;
        let payload = self
            .ledger
            .consensus()
            .handle(rpc, &req.into_inner().payload)
            .await?;
        Ok(Response::new(pb::RaftMessage { payload }))
    }

    /// Only member-role certificates of consortium members are peers. A
    /// member with no consortium yet (a fresh node waiting to be added)
    /// accepts any member-role certificate: it has nothing to protect yet,
    /// and whatever it receives it re-validates.
    fn admit<T>(&self, req: &Request<T>) -> Result<(), Status> {
        let caller = yilian_identity::grpc::caller(req)?;
        if caller.role != Role::Member {
            return Err(Status::permission_denied(format!(
                "{caller} has role `{}`; only member nodes are peers",
                caller.role
            )));
        }
        let consortium = self.ledger.consortium();
        if !consortium.is_empty() && !consortium.contains_key(&caller.public_key) {
            return Err(LedgerError::NotConsortiumMember(caller.to_string()).into());
        }
        Ok(())
    }
}

#[tonic::async_trait]
impl pb::consortium_server::Consortium for ConsortiumService {
    async fn append_entries(
        &self,
        req: Request<pb::RaftMessage>,
    ) -> Result<Response<pb::RaftMessage>, Status> {
        self.raft(Rpc::Append, req).await
    }

    async fn vote(
        &self,
        req: Request<pb::RaftMessage>,
    ) -> Result<Response<pb::RaftMessage>, Status> {
        self.raft(Rpc::Vote, req).await
    }

    async fn install_snapshot(
        &self,
        req: Request<pb::RaftMessage>,
    ) -> Result<Response<pb::RaftMessage>, Status> {
        self.raft(Rpc::Snapshot, req).await
    }

    async fn forward(
        &self,
        req: Request<pb::ForwardRequest>,
    ) -> Result<Response<pb::ForwardResponse>, Status> {
        self.admit(&req)?;
        let txs = req.into_inner().transactions;
        let futs = txs.into_iter().map(|bytes| {
            let ledger = self.ledger.clone();
            async move {
                let tx = SignedTransaction::decode(&bytes)?;
                ledger.submit_forwarded(tx).await
            }
        });
        let outcomes: Vec<Result<Receipt>> = futures::future::join_all(futs).await;
        Ok(Response::new(pb::ForwardResponse {
            outcomes: outcomes
                .iter()
                .map(|o| postcard::to_stdvec(o).expect("outcomes serialise"))
                .collect(),
        }))
    }

    async fn cosign(
        &self,
        req: Request<pb::CosignRequest>,
    ) -> Result<Response<pb::CosignResponse>, Status> {
        self.admit(&req)?;
        let r = req.into_inner();
        let members = self.ledger.cosigners();
        let offered = Checkpoint::from_note(&r.note, &members)?;
        let size = offered.body.size;
        // Answer only once this member has applied (and so validated) the log that far.
        if !self
            .ledger
            .wait_for_size(size, Duration::from_secs(2))
            .await
        {
            return Err(Status::unavailable(format!(
                "this member has applied {} entries, not yet {size}",
                self.ledger.len()
            )));
        }
        let shared = self.ledger.shared().clone();
        let mut inner = shared.inner.write().expect("ledger lock poisoned");
        let me = shared.my_name(&inner);
        let inner = &mut *inner;
        if !r.cosigned.is_empty()
            && let Ok(cp) = Checkpoint::from_note(&r.cosigned, &members)
        {
            inner.witness.offer_checkpoint(&cp, &members, &inner.tree);
        }
        for c in offered.cosignatures {
            let _ = inner.witness.offer(&offered.body, c, &members, &inner.tree);
        }
        let own = inner.tree.root_at(size).map_err(LedgerError::from)?;
        if own != offered.body.root {
            return Err(Status::failed_precondition(format!(
                "this member's log has root {} at size {size}, not {}; kept as evidence",
                hex::encode(own),
                hex::encode(offered.body.root)
            )));
        }
        let c = inner
            .witness
            .cosign(
                &inner.tree,
                size,
                &me,
                shared.signing_key(),
                crate::tx::now_ms() / 1000,
            )
            .ok_or_else(|| {
                Status::failed_precondition(
                    "this member no longer cosigns: its own log changed under a head it signed",
                )
            })?;
        inner.witness.recount(&members);
        Ok(Response::new(pb::CosignResponse {
            cosignature: c.line(),
        }))
    }

    async fn evidence(
        &self,
        req: Request<pb::EvidenceRequest>,
    ) -> Result<Response<pb::EvidenceResponse>, Status> {
        // Evidence is for anyone admitted, auditors first.
        yilian_identity::grpc::caller(&req)?;
        Ok(Response::new(pb::EvidenceResponse {
            evidence: serde_json::to_string(&self.ledger.evidence()).expect("serialises"),
        }))
    }
}

fn client(
    connector: &dyn PeerConnector,
    addr: &str,
) -> Result<pb::consortium_client::ConsortiumClient<tonic::transport::Channel>> {
    Ok(
        pb::consortium_client::ConsortiumClient::new(connector.channel(&connector.route(addr))?)
            .max_decoding_message_size(256 << 20)
            .max_encoding_message_size(256 << 20),
    )
}

fn unavailable(s: Status) -> LedgerError {
    LedgerError::NotLeader {
        leader: s
            .metadata()
            .get(crate::LEADER_HINT)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned),
    }
}

/// Sends writes to the leader at `addr`; one outcome per transaction.
pub(crate) async fn forward(
    connector: &dyn PeerConnector,
    addr: &str,
    txs: Vec<Vec<u8>>,
) -> Result<Vec<Result<Receipt>>> {
    let mut c = client(connector, addr)?;
    let mut req = Request::new(pb::ForwardRequest { transactions: txs });
    req.set_timeout(Duration::from_secs(15));
    let r = c.forward(req).await.map_err(unavailable)?.into_inner();
    r.outcomes
        .iter()
        .map(|b| {
            postcard::from_bytes::<Result<Receipt>>(b)
                .map_err(|e| LedgerError::PeerMessage(format!("forwarded outcome: {e}")))
        })
        .collect()
}

/// The leader's cosigning round: whenever the log grew, offer its
/// cosignature of the newest checkpoint to every member and collect theirs.
pub(crate) async fn cosign_loop(ledger: Ledger) {
    let mut size = ledger.shared().size_watch();
    loop {
        let _ = tokio::time::timeout(Duration::from_millis(250), size.changed()).await;
        if !ledger.status().is_leader {
            continue;
        }
        let Some(connector) = ledger.connector().cloned() else {
            return;
        };
        let (offer, cosigned, peers, members) = {
            let shared = ledger.shared();
            let mut inner = shared.inner.write().expect("ledger lock poisoned");
            let size = inner.tree.len();
            let me = shared.my_name(&inner);
            let members = shared.cosigners(&inner);
            let r = &mut *inner;
            let Some(mine) = r.witness.cosign(
                &r.tree,
                size,
                &me,
                shared.signing_key(),
                crate::tx::now_ms() / 1000,
            ) else {
                continue;
            };
            let have = r
                .witness
                .cosignatures_at(size)
                .map(|c| c.cosignatures.len())
                .unwrap_or(0);
            // Every member already cosigned this size: nothing to ask.
            if size == 0 || have >= members.len() {
                continue;
            }
            let body = crate::checkpoint::CheckpointBody {
                origin: r.witness.origin().to_owned(),
                size,
                root: r.tree.root_at(size).expect("own size"),
            };
            let offer = Checkpoint {
                body,
                cosignatures: vec![mine],
            };
            let peers: Vec<String> = r
                .state
                .consortium()
                .iter()
                .filter(|(k, _)| **k != shared.signing_key().verifying_key().to_bytes())
                .map(|(_, m)| m.addr.clone())
                .collect();
            let cosigned = r.witness.trusted().map(|c| c.to_note()).unwrap_or_default();
            (offer, cosigned, peers, members)
        };
        let note = offer.to_note();
        let calls = peers.iter().map(|addr| {
            let connector = connector.clone();
            let req = pb::CosignRequest {
                note: note.clone(),
                cosigned: cosigned.clone(),
            };
            async move {
                let mut c = client(&*connector, addr).ok()?;
                let mut req = Request::new(req);
                req.set_timeout(Duration::from_secs(3));
                let line = c.cosign(req).await.ok()?.into_inner().cosignature;
                Some(line)
            }
        });
        let lines: Vec<Option<String>> = futures::future::join_all(calls).await;
        let shared = ledger.shared();
        let mut inner = shared.inner.write().expect("ledger lock poisoned");
        let r = &mut *inner;
        for line in lines.into_iter().flatten() {
            let note = format!("{}\n{line}\n", offer.body.text());
            let Ok(cp) = Checkpoint::from_note(&note, &members) else {
                continue;
            };
            for c in cp.cosignatures {
                let _ = r.witness.offer(&cp.body, c, &members, &r.tree);
            }
        }
    }
}

/// Makes Raft's voters the consortium approved on the ledger, on the leader.
pub(crate) async fn reconcile_loop(ledger: Ledger) {
    loop {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let status = ledger.status();
        if !status.is_leader {
            continue;
        }
        let consortium = ledger.consortium();
        if consortium.is_empty() {
            continue;
        }
        let desired: BTreeMap<u64, String> = consortium
            .values()
            .map(|m| (m.raft_id, m.addr.clone()))
            .collect();
        if desired == status.voters {
            continue;
        }
        let consensus = ledger.consensus().clone();
        match crate::consensus::Consensus::reconfigure(&*consensus, desired.clone()).await {
            Ok(()) => {
                tracing::info!(voters = ?desired.keys(), "consortium membership applied to Raft")
            }
            Err(e) => tracing::warn!(error = %e, "consortium membership change not applied yet"),
        }
    }
}

/// Reaches peers over mutual TLS with this node's identity, one lazily
/// connected channel per address; `routes` lets a test send a peer's
/// traffic through a proxy it controls.
pub struct IdentityConnector {
    identity: yilian_identity::Identity,
    routes: BTreeMap<String, String>,
    revoked: yilian_identity::tls::RevocationList,
    channels: std::sync::Mutex<BTreeMap<String, tonic::transport::Channel>>,
}

impl IdentityConnector {
    /// Dials as `identity`, through `routes`, refusing peers in `revoked`
    /// and cutting a live connection to one once it is revoked.
    pub fn new(
        identity: yilian_identity::Identity,
        routes: BTreeMap<String, String>,
        revoked: yilian_identity::tls::RevocationList,
    ) -> Self {
        IdentityConnector {
            identity,
            routes,
            revoked,
            channels: Default::default(),
        }
    }
}

impl PeerConnector for IdentityConnector {
    fn channel(&self, addr: &str) -> Result<tonic::transport::Channel> {
        let mut channels = self.channels.lock().expect("lock");
        if let Some(c) = channels.get(addr) {
            return Ok(c.clone());
        }
        let c = yilian_identity::grpc::connect_lazy_watched(addr, &self.identity, &self.revoked)
            .map_err(|e| LedgerError::Consensus(format!("peer {addr}: {e}")))?;
        channels.insert(addr.to_owned(), c.clone());
        Ok(c)
    }

    fn route(&self, addr: &str) -> String {
        self.routes
            .get(addr)
            .cloned()
            .unwrap_or_else(|| addr.to_owned())
    }
}
