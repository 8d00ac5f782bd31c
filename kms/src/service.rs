//! The KMS over gRPC (`proto/kms.proto`). The caller is the identity of the
//! mutual-TLS client certificate ([`yilian_identity::grpc::caller`]); the node
//! starts sealed unless opened with a key file, and answers `Sealed` until
//! operators have given enough unseal shares.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tonic::{Request, Response, Status};
use yilian_identity::Role;

use crate::LedgerAudit;
use crate::audit::AuditLog;
use crate::error::{KmsError, Result};
use crate::kms::{Clock, KeyInfo, Kms};
use crate::policy::{
    AccountId, Caller, GrantRecord, GrantTerms, KeyKind, Operation, RecoveryRecord,
};
use crate::seal::Unsealer;
use crate::secret::Key32;

pub mod pb {
    tonic::include_proto!("yilian.kms.v1");

    /// `kms.proto` as a `FileDescriptorSet`, for gRPC reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("kms_descriptor");

    /// The messages that carry key material, plaintext or shares (listed
    /// in build.rs, which leaves their Debug out): their secret fields
    /// print as lengths only and are zeroized when the message is dropped.
    /// The transport's own encode and decode buffers are not covered.
    macro_rules! secret_messages {
        ($($msg:ident { $($field:ident),+ }),+ $(,)?) => {$(
            impl std::fmt::Debug for $msg {
                fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                    let mut d = f.debug_struct(stringify!($msg));
                    $(d.field(stringify!($field), &format_args!("<redacted, {} bytes>", self.$field.len()));)+
                    d.finish_non_exhaustive()
                }
            }
            impl Drop for $msg {
                fn drop(&mut self) {
                    $(zeroize::Zeroize::zeroize(&mut self.$field);)+
                }
            }
        )+};
    }
    secret_messages!(
        GenerateDataKeyResponse { plaintext },
        EncryptRequest { plaintext },
        DecryptResponse { plaintext },
        RecoverResponse { key },
        ZkKeyResponse { elements },
        UnsealRequest { share },
        ApproveRecoveryRequest { share },
    );
}

pub use pb::kms_client::KmsClient;
pub use pb::kms_server::KmsServer;

enum NodeState<A> {
    Sealed { unsealer: Unsealer },
    Unsealed(Kms<A>),
}

/// The KMS as a node runs it: sealed until unsealed, then serving.
pub struct KmsNode<A> {
    path: PathBuf,
    audit: A,
    clock: Clock,
    state: tokio::sync::RwLock<NodeState<A>>,
    /// Whether the store is still sealed, for the node's health service.
    sealed: tokio::sync::watch::Sender<bool>,
}

/// Progress of unsealing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UnsealProgress {
    pub sealed: bool,
    pub shares_given: usize,
    pub threshold: Option<usize>,
}

impl<A: AuditLog + Clone> KmsNode<A> {
    /// A sealed node over the store at `path`; unseal with operator shares.
    pub fn sealed(path: PathBuf, audit: A, clock: Clock) -> Arc<Self> {
        Arc::new(KmsNode {
            path,
            audit,
            clock,
            state: tokio::sync::RwLock::new(NodeState::Sealed {
                unsealer: Unsealer::new(),
            }),
            sealed: tokio::sync::watch::Sender::new(true),
        })
    }

    /// True while sealed; changes once, when operators unseal it.
    pub fn sealed_changes(&self) -> tokio::sync::watch::Receiver<bool> {
        self.sealed.subscribe()
    }

    /// An unsealed node (devnet key file, or a root key from elsewhere).
    pub fn unsealed(path: PathBuf, root: Key32, audit: A, clock: Clock) -> Result<Arc<Self>> {
        let kms = Kms::open(&path, root, audit.clone(), clock.clone())?;
        Ok(Arc::new(KmsNode {
            path,
            audit,
            clock,
            state: tokio::sync::RwLock::new(NodeState::Unsealed(kms)),
            sealed: tokio::sync::watch::Sender::new(false),
        }))
    }

    /// Adds one operator share; opens the store when the threshold is reached.
    /// A share set that yields the wrong root key is refused and forgotten.
    pub async fn unseal(&self, share: &str) -> Result<UnsealProgress> {
        let mut state = self.state.write().await;
        let NodeState::Sealed { unsealer } = &mut *state else {
            return Ok(UnsealProgress {
                sealed: false,
                shares_given: 0,
                threshold: None,
            });
        };
        match unsealer.add(share)? {
            None => {
                let (given, t) = unsealer.progress();
                Ok(UnsealProgress {
                    sealed: true,
                    shares_given: given,
                    threshold: t,
                })
            }
            Some(root) => {
                let (given, t) = unsealer.progress();
                match Kms::open(&self.path, root, self.audit.clone(), self.clock.clone()) {
                    Ok(kms) => {
                        *state = NodeState::Unsealed(kms);
                        self.sealed.send_replace(false);
                        tracing::info!("KMS unsealed");
                        Ok(UnsealProgress {
                            sealed: false,
                            shares_given: given,
                            threshold: t,
                        })
                    }
                    Err(e) => {
                        *state = NodeState::Sealed {
                            unsealer: Unsealer::new(),
                        };
                        Err(e)
                    }
                }
            }
        }
    }

    /// Seals the node again, as `vault operator seal` does in an emergency:
    /// the opened store and its root key are dropped from memory (operations
    /// already running finish), and every operation is refused with
    /// [`KmsError::Sealed`] until operators unseal it.
    pub async fn seal(&self) {
        *self.state.write().await = NodeState::Sealed {
            unsealer: Unsealer::new(),
        };
        tracing::warn!("KMS sealed");
    }

    pub async fn kms(&self) -> Result<Kms<A>> {
        match &*self.state.read().await {
            NodeState::Unsealed(k) => Ok(k.clone()),
            NodeState::Sealed { .. } => Err(KmsError::Sealed),
        }
    }

    /// Crypto-shreds grant-only keys at end of life every `every`.
    pub fn spawn_sweeper(self: &Arc<Self>, every: Duration) -> tokio::task::JoinHandle<()> {
        let node = self.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            loop {
                tick.tick().await;
                if let Ok(kms) = node.kms().await
                    && let Err(e) = kms.sweep().await
                {
                    tracing::warn!(error = %e, "KMS sweep failed");
                }
            }
        })
    }
}

/// The tonic service. Add `KmsService::new(node).into_server()` to the node's router.
pub struct KmsService<A> {
    node: Arc<KmsNode<A>>,
}

impl<A: AuditLog + Clone> KmsService<A> {
    pub fn new(node: Arc<KmsNode<A>>) -> Self {
        KmsService { node }
    }

    pub fn into_server(self) -> KmsServer<Self> {
        KmsServer::new(self)
    }
}

/// The production wiring: ledger audit signed by the node identity.
pub type LedgerKmsService = KmsService<LedgerAudit>;
pub type LedgerKmsNode = KmsNode<LedgerAudit>;
pub type LedgerKmsServer = KmsServer<KmsService<LedgerAudit>>;

fn caller<T>(req: &Request<T>) -> std::result::Result<Caller, Status> {
    Ok(Caller::from(&yilian_identity::grpc::caller(req)?))
}

fn account(bytes: &[u8], what: &str) -> std::result::Result<AccountId, Status> {
    bytes.try_into().map_err(|_| {
        Status::invalid_argument(format!("{what} must be a 32-byte ed25519 public key"))
    })
}

fn grant_id(s: &str) -> Option<&str> {
    (!s.is_empty()).then_some(s)
}

impl From<KeyInfo> for pb::KeyInfo {
    fn from(k: KeyInfo) -> Self {
        pb::KeyInfo {
            key_id: k.key_id,
            owner: k.owner.to_vec(),
            kind: k.kind,
            latest_version: k.latest_version,
            min_decryption_version: k.min_decryption_version,
            grant_only: k.grant_only,
            destroyed: k.destroyed,
        }
    }
}

impl From<GrantRecord> for pb::GrantInfo {
    fn from(g: GrantRecord) -> Self {
        pb::GrantInfo {
            grant_id: g.grant_id,
            key_id: g.key_id,
            owner: g.owner.to_vec(),
            reader: g.reader.to_vec(),
            not_before_ms: g.not_before_ms,
            not_after_ms: g.not_after_ms,
            max_uses: g.max_uses,
            uses: g.uses,
            operations: g.operations.iter().map(|o| o.as_str().to_owned()).collect(),
            required_context: g.required_context,
            revoked: g.revoked,
        }
    }
}

impl From<RecoveryRecord> for pb::Recovery {
    fn from(r: RecoveryRecord) -> Self {
        pb::Recovery {
            recovery_id: r.recovery_id,
            key_id: r.key_id,
            recipient: r.recipient.to_vec(),
            nonce: r.nonce.to_vec(),
            approvals: r.approvals.len() as u32,
            completed: r.completed,
        }
    }
}

fn package(p: &crate::escrow::EscrowPackage) -> pb::EscrowPackage {
    pb::EscrowPackage {
        package_json: serde_json::to_vec(p).expect("escrow packages serialise"),
    }
}

type R<T> = std::result::Result<Response<T>, Status>;

#[tonic::async_trait]
impl<A: AuditLog + Clone> pb::kms_server::Kms for KmsService<A> {
    async fn create_key(&self, req: Request<pb::CreateKeyRequest>) -> R<pb::KeyInfo> {
        let c = caller(&req)?;
        let r = req.into_inner();
        let kind = match pb::KeyKind::try_from(r.kind) {
            Ok(pb::KeyKind::Aes256Gcm) => KeyKind::Aes256Gcm,
            Ok(pb::KeyKind::Bn254Poseidon) => KeyKind::Bn254Poseidon,
            Err(_) => return Err(Status::invalid_argument("unknown key kind")),
        };
        let kms = self.node.kms().await?;
        Ok(Response::new(
            kms.create_key(&c, &r.key_id, kind, r.grant_only)
                .await?
                .into(),
        ))
    }

    async fn get_key(&self, req: Request<pb::KeyRef>) -> R<pb::KeyInfo> {
        let c = caller(&req)?;
        let kms = self.node.kms().await?;
        Ok(Response::new(
            kms.key_info(&c, &req.get_ref().key_id)?.into(),
        ))
    }

    async fn generate_data_key(
        &self,
        req: Request<pb::GenerateDataKeyRequest>,
    ) -> R<pb::GenerateDataKeyResponse> {
        let c = caller(&req)?;
        let r = req.into_inner();
        let kms = self.node.kms().await?;
        let dk = kms
            .generate_data_key(&c, &r.key_id, &r.context, grant_id(&r.grant_id))
            .await?;
        Ok(Response::new(pb::GenerateDataKeyResponse {
            plaintext: dk.plaintext.expose().to_vec(),
            wrapped: dk.wrapped,
            key_version: dk.key_version,
        }))
    }

    async fn encrypt(&self, req: Request<pb::EncryptRequest>) -> R<pb::EncryptResponse> {
        let c = caller(&req)?;
        let r = req.into_inner();
        let kms = self.node.kms().await?;
        let envelope = kms
            .encrypt(
                &c,
                &r.key_id,
                &r.plaintext,
                &r.context,
                grant_id(&r.grant_id),
            )
            .await?;
        Ok(Response::new(pb::EncryptResponse { envelope }))
    }

    async fn decrypt(&self, req: Request<pb::DecryptRequest>) -> R<pb::DecryptResponse> {
        let c = caller(&req)?;
        let r = req.into_inner();
        let kms = self.node.kms().await?;
        let pt = kms
            .decrypt(&c, &r.envelope, &r.context, grant_id(&r.grant_id))
            .await?;
        Ok(Response::new(pb::DecryptResponse {
            plaintext: pt.into_vec(),
        }))
    }

    async fn rotate(&self, req: Request<pb::KeyRef>) -> R<pb::KeyInfo> {
        let c = caller(&req)?;
        let kms = self.node.kms().await?;
        Ok(Response::new(
            kms.rotate(&c, &req.get_ref().key_id).await?.into(),
        ))
    }

    async fn rewrap(&self, req: Request<pb::RewrapRequest>) -> R<pb::RewrapResponse> {
        let c = caller(&req)?;
        let r = req.into_inner();
        let kms = self.node.kms().await?;
        Ok(Response::new(pb::RewrapResponse {
            envelope: kms.rewrap(&c, &r.envelope, &r.context).await?,
        }))
    }

    async fn set_min_decryption_version(
        &self,
        req: Request<pb::SetMinDecryptionVersionRequest>,
    ) -> R<pb::KeyInfo> {
        let c = caller(&req)?;
        let r = req.into_inner();
        let kms = self.node.kms().await?;
        Ok(Response::new(
            kms.set_min_decryption_version(&c, &r.key_id, r.min_version)
                .await?
                .into(),
        ))
    }

    async fn grant(&self, req: Request<pb::GrantRequest>) -> R<pb::GrantInfo> {
        let c = caller(&req)?;
        let r = req.into_inner();
        let operations = r
            .operations
            .iter()
            .map(|o| o.parse::<Operation>())
            .collect::<Result<Vec<_>>>()?;
        let terms = GrantTerms {
            reader: account(&r.reader, "reader")?,
            not_before_ms: r.not_before_ms,
            not_after_ms: r.not_after_ms,
            max_uses: r.max_uses,
            operations,
            required_context: r.required_context,
        };
        let kms = self.node.kms().await?;
        Ok(Response::new(kms.grant(&c, &r.key_id, terms).await?.into()))
    }

    async fn revoke_grant(&self, req: Request<pb::GrantRef>) -> R<pb::GrantInfo> {
        let c = caller(&req)?;
        let kms = self.node.kms().await?;
        Ok(Response::new(
            kms.revoke_grant(&c, &req.get_ref().grant_id).await?.into(),
        ))
    }

    async fn escrow(&self, req: Request<pb::EscrowRequest>) -> R<pb::EscrowPackage> {
        let c = caller(&req)?;
        let r = req.into_inner();
        let trustees = r
            .trustees
            .iter()
            .map(|t| account(t, "trustee"))
            .collect::<std::result::Result<Vec<_>, _>>()?;
        let kms = self.node.kms().await?;
        let pkg = kms
            .escrow(&c, &r.key_id, &trustees, r.threshold as usize, r.replace)
            .await?;
        Ok(Response::new(package(&pkg)))
    }

    async fn get_escrow(&self, req: Request<pb::KeyRef>) -> R<pb::EscrowPackage> {
        let c = caller(&req)?;
        let kms = self.node.kms().await?;
        Ok(Response::new(package(
            &kms.escrow_package(&c, &req.get_ref().key_id)?,
        )))
    }

    async fn start_recovery(&self, req: Request<pb::StartRecoveryRequest>) -> R<pb::Recovery> {
        let c = caller(&req)?;
        let r = req.into_inner();
        let recipient = account(&r.recipient, "recipient")?;
        let kms = self.node.kms().await?;
        Ok(Response::new(
            kms.start_recovery(&c, &r.key_id, recipient).await?.into(),
        ))
    }

    async fn get_recovery(&self, req: Request<pb::RecoveryRef>) -> R<pb::Recovery> {
        let c = caller(&req)?;
        let kms = self.node.kms().await?;
        let rec = kms.recovery_for(&c, &req.get_ref().recovery_id)?;
        Ok(Response::new(rec.into()))
    }

    async fn approve_recovery(
        &self,
        req: Request<pb::ApproveRecoveryRequest>,
    ) -> R<pb::ApproveRecoveryResponse> {
        let c = caller(&req)?;
        let r = req.into_inner();
        let kms = self.node.kms().await?;
        let n = kms
            .approve_recovery(&c, &r.recovery_id, &r.share, &r.signature)
            .await?;
        Ok(Response::new(pb::ApproveRecoveryResponse {
            approvals: n as u32,
        }))
    }

    async fn recover(&self, req: Request<pb::RecoveryRef>) -> R<pb::RecoverResponse> {
        let c = caller(&req)?;
        let kms = self.node.kms().await?;
        let key = kms.recover(&c, &req.get_ref().recovery_id).await?;
        Ok(Response::new(pb::RecoverResponse {
            key: key.into_vec(),
        }))
    }

    async fn zk_key(&self, req: Request<pb::KeyRef>) -> R<pb::ZkKeyResponse> {
        let c = caller(&req)?;
        let kms = self.node.kms().await?;
        let z = kms.zk_key(&c, &req.get_ref().key_id).await?;
        Ok(Response::new(pb::ZkKeyResponse {
            elements: z.elements.into_vec(),
            commitment: z.commitment.to_vec(),
        }))
    }

    async fn audit(&self, req: Request<pb::AuditRequest>) -> R<pb::AuditResponse> {
        let c = caller(&req)?;
        let r = req.into_inner();
        let kms = self.node.kms().await?;
        let page = kms.audit_trail(
            &c,
            grant_id(&r.key_id),
            crate::audit::Page::new(r.from_index, r.limit),
        )?;
        Ok(Response::new(pb::AuditResponse {
            next_index: page.next,
            entries: page
                .entries
                .into_iter()
                .map(|a| pb::AuditEntry {
                    index: a.index,
                    position: a.position,
                    actor: a.entry.actor.to_vec(),
                    operation: a.entry.operation,
                    key_id: a.entry.key_id,
                    key_version: a.entry.key_version,
                    grant_id: a.entry.grant_id,
                    outcome: a.entry.outcome,
                    request_hash: a.entry.request_hash.to_vec(),
                    inclusion_bundle_json: serde_json::to_vec(&a.bundle)
                        .expect("bundles serialise"),
                })
                .collect(),
        }))
    }

    async fn unseal(&self, req: Request<pb::UnsealRequest>) -> R<pb::UnsealResponse> {
        let c = caller(&req)?;
        if c.role != Role::Member {
            return Err(KmsError::WrongRole {
                role: c.role.to_string(),
                action: "unseal the KMS",
            }
            .into());
        }
        let p = self.node.unseal(&req.get_ref().share).await?;
        Ok(Response::new(pb::UnsealResponse {
            sealed: p.sealed,
            shares_given: p.shares_given as u32,
            threshold: p.threshold.unwrap_or(0) as u32,
        }))
    }
}

/// The node's KMS with a devnet root key file (created on first use) in
/// `data_dir`, audited on `ledger` as the node identity. Returns the node
/// (for the sweeper) and the server to add to the tonic router.
pub fn with_key_file(
    data_dir: &std::path::Path,
    ledger: yilian_ledger::Ledger,
    node_key: ed25519_dalek::SigningKey,
) -> Result<(Arc<LedgerKmsNode>, LedgerKmsServer)> {
    let root = crate::seal::create_key_file(&data_dir.join("kms-root.key"))?;
    let node = KmsNode::unsealed(
        data_dir.join("kms.redb"),
        root,
        LedgerAudit::new(ledger, node_key),
        crate::kms::system_clock(),
    )?;
    Ok((node.clone(), KmsService::new(node).into_server()))
}

/// The node's KMS starting sealed; operators unseal it with `yilian kms unseal`.
pub fn sealed(
    data_dir: &std::path::Path,
    ledger: yilian_ledger::Ledger,
    node_key: ed25519_dalek::SigningKey,
) -> (Arc<LedgerKmsNode>, LedgerKmsServer) {
    let node = KmsNode::sealed(
        data_dir.join("kms.redb"),
        LedgerAudit::new(ledger, node_key),
        crate::kms::system_clock(),
    );
    (node.clone(), KmsService::new(node).into_server())
}
