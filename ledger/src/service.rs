//! The ledger's gRPC service (see `proto/ledger.proto`) and a typed client.

use std::pin::Pin;

use futures::Stream;
use tonic::{Request, Response, Status};

use crate::LedgerError;
use crate::bundle::{BUNDLE_VERSION, ConsistencyBundle, InclusionBundle};
use crate::head::SignedTreeHead;
use crate::merkle::{ConsistencyProof, Hash, InclusionProof};
use crate::store::{Ledger, Receipt};
use crate::tx::{AccountId, SignedTransaction};

/// Generated protobuf types and service stubs.
pub mod pb {
    tonic::include_proto!("yilian.ledger.v1");

    /// `ledger.proto` and `consortium.proto` as a `FileDescriptorSet`, for gRPC reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("ledger_descriptor");
}

pub use pb::ledger_client::LedgerClient as RawLedgerClient;
pub use pb::ledger_server::LedgerServer;

/// Serves a [`Ledger`]; every caller has already passed mutual TLS.
#[derive(Clone, Debug)]
pub struct LedgerService {
    ledger: Ledger,
}

impl LedgerService {
    pub fn new(ledger: Ledger) -> Self {
        LedgerService { ledger }
    }

    pub fn into_server(self) -> LedgerServer<Self> {
        LedgerServer::new(self)
    }
}

impl From<&SignedTreeHead> for pb::TreeHead {
    fn from(h: &SignedTreeHead) -> Self {
        pb::TreeHead {
            tree_size: h.tree_size,
            root_hash: h.root_hash.to_vec(),
            timestamp_ms: h.timestamp_ms,
            log_key: h.log_key.to_vec(),
            signature: h.signature.to_vec(),
            cosigned: String::new(),
            stale: false,
            cosigners: Vec::new(),
        }
    }
}

impl TryFrom<pb::TreeHead> for SignedTreeHead {
    type Error = LedgerError;
    fn try_from(h: pb::TreeHead) -> Result<Self, LedgerError> {
        Ok(SignedTreeHead {
            tree_size: h.tree_size,
            root_hash: fixed(&h.root_hash, "root_hash")?,
            timestamp_ms: h.timestamp_ms,
            log_key: fixed(&h.log_key, "log_key")?,
            signature: fixed(&h.signature, "signature")?,
        })
    }
}

fn fixed<const N: usize>(v: &[u8], what: &str) -> Result<[u8; N], LedgerError> {
    v.try_into()
        .map_err(|_| LedgerError::Malformed(format!("{what} must be {N} bytes, got {}", v.len())))
}

fn hashes(path: Vec<Vec<u8>>) -> Result<Vec<Hash>, LedgerError> {
    path.iter().map(|h| fixed(h, "proof hash")).collect()
}

type EntryStream = Pin<Box<dyn Stream<Item = Result<pb::Entry, Status>> + Send>>;

#[tonic::async_trait]
impl pb::ledger_server::Ledger for LedgerService {
    async fn submit(
        &self,
        req: Request<pb::SubmitRequest>,
    ) -> Result<Response<pb::SubmitResponse>, Status> {
        let caller = yilian_identity::grpc::caller(&req)?;
        let tx = SignedTransaction::decode(&req.into_inner().transaction)?;
        let kind = tx.tx.payload.kind();
        let receipt = self.ledger.submit(tx).await.inspect_err(|e| {
            tracing::info!(%caller, kind, error = %e, "transaction refused");
        })?;
        tracing::debug!(%caller, kind, index = receipt.index, "transaction appended");
        Ok(Response::new(pb::SubmitResponse {
            index: receipt.index,
            tx_id: receipt.tx_id.to_vec(),
            tree_head: Some((&receipt.tree_head).into()),
            duplicate: receipt.duplicate,
        }))
    }

    async fn get_entry(
        &self,
        req: Request<pb::GetEntryRequest>,
    ) -> Result<Response<pb::Entry>, Status> {
        let index = req.into_inner().index;
        let transaction = self.ledger.entry_bytes(index)?;
        Ok(Response::new(pb::Entry { index, transaction }))
    }

    async fn get_tree_head(
        &self,
        _req: Request<pb::GetTreeHeadRequest>,
    ) -> Result<Response<pb::TreeHead>, Status> {
        let mut head: pb::TreeHead = (&self.ledger.tree_head()).into();
        head.cosigned = self
            .ledger
            .cosigned_head()
            .map(|c| c.to_note())
            .unwrap_or_default();
        head.stale = self.ledger.is_stale();
        head.cosigners = self
            .ledger
            .cosigners()
            .into_iter()
            .map(|c| pb::Cosigner {
                name: c.name,
                key: c.key.to_vec(),
            })
            .collect();
        Ok(Response::new(head))
    }

    async fn get_consortium(
        &self,
        _req: Request<pb::GetConsortiumRequest>,
    ) -> Result<Response<pb::Consortium>, Status> {
        let status = self.ledger.status();
        let members = self
            .ledger
            .consortium()
            .into_iter()
            .map(|(k, m)| pb::consortium::Member {
                key: k.to_vec(),
                org: m.org,
                name: m.name,
                addr: m.addr,
                raft_id: m.raft_id,
            })
            .collect();
        let proposals = self
            .ledger
            .proposals()
            .into_iter()
            .map(|(id, p)| pb::consortium::Proposal {
                id: id.to_vec(),
                change: serde_json::to_string(&p.change).expect("serialises"),
                approvals: p.approvals.iter().map(|a| a.to_vec()).collect(),
                decided: p.decided,
            })
            .collect();
        let (leader_raft_id, leader_addr) = status.leader.unwrap_or_default();
        Ok(Response::new(pb::Consortium {
            members,
            proposals,
            leader_raft_id,
            leader_addr,
            term: status.term,
        }))
    }

    async fn get_inclusion_proof(
        &self,
        req: Request<pb::GetInclusionProofRequest>,
    ) -> Result<Response<pb::InclusionProof>, Status> {
        let r = req.into_inner();
        let head = self.ledger.tree_head();
        let size = if r.tree_size == 0 {
            head.tree_size
        } else {
            r.tree_size
        };
        let proof = self.ledger.inclusion_proof(r.index, size)?;
        let entry = self.ledger.entry_bytes(r.index)?;
        Ok(Response::new(pb::InclusionProof {
            index: proof.index,
            tree_size: proof.tree_size,
            path: proof.path.iter().map(|h| h.to_vec()).collect(),
            entry,
            tree_head: (size == head.tree_size).then(|| (&head).into()),
        }))
    }

    async fn get_consistency_proof(
        &self,
        req: Request<pb::GetConsistencyProofRequest>,
    ) -> Result<Response<pb::ConsistencyProof>, Status> {
        let r = req.into_inner();
        let head = self.ledger.tree_head();
        let new = if r.new_size == 0 {
            head.tree_size
        } else {
            r.new_size
        };
        let proof = self.ledger.consistency_proof(r.old_size, new)?;
        Ok(Response::new(pb::ConsistencyProof {
            old_size: proof.old_size,
            new_size: proof.new_size,
            path: proof.path.iter().map(|h| h.to_vec()).collect(),
            new_head: (new == head.tree_size).then(|| (&head).into()),
        }))
    }

    async fn get_balance(
        &self,
        req: Request<pb::GetBalanceRequest>,
    ) -> Result<Response<pb::Balance>, Status> {
        let account: AccountId = fixed(&req.into_inner().account, "account")?;
        Ok(Response::new(pb::Balance {
            amount: self.ledger.balance(&account),
        }))
    }

    type StreamEntriesStream = EntryStream;

    async fn stream_entries(
        &self,
        req: Request<pb::StreamEntriesRequest>,
    ) -> Result<Response<EntryStream>, Status> {
        let mut next = req.into_inner().from_index;
        let ledger = self.ledger.clone();
        // Subscribe before reading the backlog so nothing committed in between is missed.
        let mut live = ledger.subscribe();
        let (tx, rx) = tokio::sync::mpsc::channel(256);
        tokio::spawn(async move {
            loop {
                // Catch up from storage (also after falling behind the live feed).
                loop {
                    let batch = match ledger.entries(next, next + 1024) {
                        Ok(b) => b,
                        Err(e) => {
                            let _ = tx.send(Err(e.into())).await;
                            return;
                        }
                    };
                    if batch.is_empty() {
                        break;
                    }
                    for (index, entry) in batch {
                        let msg = pb::Entry {
                            index,
                            transaction: entry.encode(),
                        };
                        if tx.send(Ok(msg)).await.is_err() {
                            return;
                        }
                        next = index + 1;
                    }
                }
                loop {
                    match live.recv().await {
                        Ok((index, _)) if index < next => continue,
                        Ok((index, entry)) if index == next => {
                            let msg = pb::Entry {
                                index,
                                transaction: entry.encode(),
                            };
                            if tx.send(Ok(msg)).await.is_err() {
                                return;
                            }
                            next += 1;
                        }
                        Ok(_) | Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => break,
                        Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
                    }
                }
            }
        });
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }
}

/// A member's answer to "what is the head": its own signed head, the newest
/// checkpoint a quorum cosigned, and the cosigners it lists.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct CosignedHead {
    /// The C2SP checkpoint; `checkpoint_note` in files is its signed-note text.
    pub checkpoint: Option<crate::checkpoint::Checkpoint>,
    pub cosigners: Vec<crate::checkpoint::Cosigner>,
    pub stale: bool,
    pub member_head: SignedTreeHead,
}

/// A typed client over a mutual-TLS channel (see `yilian_identity::grpc::connect`).
#[derive(Clone, Debug)]
pub struct LedgerClient {
    raw: RawLedgerClient<tonic::transport::Channel>,
}

impl LedgerClient {
    pub fn new(channel: tonic::transport::Channel) -> Self {
        LedgerClient {
            raw: RawLedgerClient::new(channel),
        }
    }

    pub fn raw(&mut self) -> &mut RawLedgerClient<tonic::transport::Channel> {
        &mut self.raw
    }

    pub async fn submit(&mut self, tx: &SignedTransaction) -> Result<Receipt, Status> {
        let r = self
            .raw
            .submit(pb::SubmitRequest {
                transaction: tx.encode(),
            })
            .await?
            .into_inner();
        let head = r
            .tree_head
            .ok_or_else(|| Status::internal("response without a tree head"))?;
        Ok(Receipt {
            index: r.index,
            tx_id: fixed(&r.tx_id, "tx_id")?,
            tree_head: head.try_into()?,
            duplicate: r.duplicate,
        })
    }

    /// The consortium's members, leader and proposals, as the answering member knows them.
    pub async fn consortium(&mut self) -> Result<pb::Consortium, Status> {
        Ok(self
            .raw
            .get_consortium(pb::GetConsortiumRequest {})
            .await?
            .into_inner())
    }

    /// The answering member's head with the newest cosigned checkpoint,
    /// the cosigners it lists, and whether it may be behind.
    pub async fn cosigned_head(&mut self) -> Result<CosignedHead, Status> {
        let h = self
            .raw
            .get_tree_head(pb::GetTreeHeadRequest {})
            .await?
            .into_inner();
        let cosigners = h
            .cosigners
            .iter()
            .map(|c| {
                Ok(crate::checkpoint::Cosigner {
                    name: c.name.clone(),
                    key: fixed(&c.key, "cosigner key")?,
                })
            })
            .collect::<Result<Vec<_>, LedgerError>>()?;
        let checkpoint = if h.cosigned.is_empty() {
            None
        } else {
            Some(crate::checkpoint::Checkpoint::from_note(
                &h.cosigned,
                &cosigners,
            )?)
        };
        let stale = h.stale;
        Ok(CosignedHead {
            checkpoint,
            cosigners,
            stale,
            member_head: h.try_into()?,
        })
    }

    pub async fn tree_head(&mut self) -> Result<SignedTreeHead, Status> {
        let h = self
            .raw
            .get_tree_head(pb::GetTreeHeadRequest {})
            .await?
            .into_inner();
        Ok(h.try_into()?)
    }

    pub async fn entry(&mut self, index: u64) -> Result<SignedTransaction, Status> {
        let e = self
            .raw
            .get_entry(pb::GetEntryRequest { index })
            .await?
            .into_inner();
        Ok(SignedTransaction::decode(&e.transaction)?)
    }

    pub async fn balance(&mut self, account: &AccountId) -> Result<u64, Status> {
        Ok(self
            .raw
            .get_balance(pb::GetBalanceRequest {
                account: account.to_vec(),
            })
            .await?
            .into_inner()
            .amount)
    }

    /// An offline-verifiable bundle proving entry `index` under the newest
    /// cosigned checkpoint (waiting briefly for one that covers the entry).
    pub async fn inclusion_bundle(&mut self, index: u64) -> Result<InclusionBundle, Status> {
        let mut cosigned = self.cosigned_head().await?;
        for _ in 0..40 {
            if cosigned
                .checkpoint
                .as_ref()
                .is_some_and(|c| c.body.size > index)
            {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            cosigned = self.cosigned_head().await?;
        }
        let checkpoint = cosigned
            .checkpoint
            .filter(|c| c.body.size > index)
            .ok_or_else(|| {
                Status::unavailable(format!(
                    "no cosigned head covers entry {index} yet; retry in a moment"
                ))
            })?;
        let p = self
            .raw
            .get_inclusion_proof(pb::GetInclusionProofRequest {
                index,
                tree_size: checkpoint.body.size,
            })
            .await?
            .into_inner();
        let head = cosigned.member_head;
        let transaction = SignedTransaction::decode(&p.entry).ok();
        Ok(InclusionBundle {
            version: BUNDLE_VERSION,
            entry: p.entry,
            transaction,
            proof: InclusionProof {
                index: p.index,
                tree_size: p.tree_size,
                path: hashes(p.path)?,
            },
            tree_head: head,
            checkpoint: Some(checkpoint),
        })
    }

    /// An offline-verifiable bundle proving the old cosigned head's log is a
    /// prefix of the newest cosigned one.
    pub async fn consistency_bundle(
        &mut self,
        old: &CosignedHead,
    ) -> Result<ConsistencyBundle, Status> {
        let old_cp = old.checkpoint.clone().ok_or_else(|| {
            Status::invalid_argument("the old head file has no cosigned checkpoint")
        })?;
        let new = self.cosigned_head().await?;
        let new_cp = new
            .checkpoint
            .ok_or_else(|| Status::unavailable("no cosigned head yet; retry in a moment"))?;
        let p = self
            .raw
            .get_consistency_proof(pb::GetConsistencyProofRequest {
                old_size: old_cp.body.size,
                new_size: new_cp.body.size,
            })
            .await?
            .into_inner();
        let old_head = old.member_head.clone();
        let new_head = new.member_head;
        Ok(ConsistencyBundle {
            version: BUNDLE_VERSION,
            old_head,
            new_head,
            old_checkpoint: Some(old_cp),
            new_checkpoint: Some(new_cp),
            proof: ConsistencyProof {
                old_size: p.old_size,
                new_size: p.new_size,
                path: hashes(p.path)?,
            },
        })
    }
}
