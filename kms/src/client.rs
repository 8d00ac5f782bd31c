//! A typed client for the KMS gRPC service, used by the CLI, the devnet act
//! and the benchmark. The trustee side of a recovery (opening and checking
//! one's share, signing the approval) runs here, on the trustee's machine.

use tonic::transport::Channel;
use yilian_identity::Identity;

use crate::error::{KmsError, Result};
use crate::escrow::{self, EscrowPackage};
use crate::policy::AccountId;
use crate::secret::SecretBytes;
use crate::service::{KmsClient, pb};

/// A connection to a node's KMS as one identity.
#[derive(Clone)]
pub struct Client {
    pub raw: KmsClient<Channel>,
}

impl Client {
    pub async fn connect(addr: &str, id: &Identity) -> Result<Client> {
        let ch = yilian_identity::grpc::connect(addr, id).await?;
        Ok(Client {
            raw: KmsClient::new(ch),
        })
    }

    pub fn from_channel(ch: Channel) -> Client {
        Client {
            raw: KmsClient::new(ch),
        }
    }

    pub async fn create_key(
        &mut self,
        key_id: &str,
        zk: bool,
        grant_only: bool,
    ) -> Result<pb::KeyInfo, tonic::Status> {
        let kind = if zk {
            pb::KeyKind::Bn254Poseidon
        } else {
            pb::KeyKind::Aes256Gcm
        };
        Ok(self
            .raw
            .create_key(pb::CreateKeyRequest {
                key_id: key_id.into(),
                kind: kind as i32,
                grant_only,
            })
            .await?
            .into_inner())
    }

    pub async fn generate_data_key(
        &mut self,
        key_id: &str,
        context: &[u8],
        grant_id: Option<&str>,
    ) -> Result<pb::GenerateDataKeyResponse, tonic::Status> {
        Ok(self
            .raw
            .generate_data_key(pb::GenerateDataKeyRequest {
                key_id: key_id.into(),
                context: context.to_vec(),
                grant_id: grant_id.unwrap_or_default().into(),
            })
            .await?
            .into_inner())
    }

    pub async fn encrypt(
        &mut self,
        key_id: &str,
        pt: &[u8],
        context: &[u8],
        grant_id: Option<&str>,
    ) -> Result<Vec<u8>, tonic::Status> {
        Ok(self
            .raw
            .encrypt(pb::EncryptRequest {
                key_id: key_id.into(),
                plaintext: pt.to_vec(),
                context: context.to_vec(),
                grant_id: grant_id.unwrap_or_default().into(),
            })
            .await?
            .into_inner()
            .envelope)
    }

    pub async fn decrypt(
        &mut self,
        envelope: &[u8],
        context: &[u8],
        grant_id: Option<&str>,
    ) -> Result<SecretBytes, tonic::Status> {
        let mut r = self
            .raw
            .decrypt(pb::DecryptRequest {
                envelope: envelope.to_vec(),
                context: context.to_vec(),
                grant_id: grant_id.unwrap_or_default().into(),
            })
            .await?
            .into_inner();
        Ok(SecretBytes::new(std::mem::take(&mut r.plaintext)))
    }

    pub async fn escrow(
        &mut self,
        key_id: &str,
        trustees: &[AccountId],
        threshold: u32,
        replace: bool,
    ) -> Result<EscrowPackage> {
        let r = self
            .raw
            .escrow(pb::EscrowRequest {
                key_id: key_id.into(),
                trustees: trustees.iter().map(|t| t.to_vec()).collect(),
                threshold,
                replace,
            })
            .await?
            .into_inner();
        serde_json::from_slice(&r.package_json).map_err(|_| KmsError::BadReply("escrow package"))
    }

    /// The trustee side of a recovery: fetch the recovery and the escrow
    /// package, open and verify our share, sign the approval, submit it.
    pub async fn approve_recovery(&mut self, trustee: &Identity, recovery_id: &str) -> Result<u32> {
        let rec = self
            .raw
            .get_recovery(pb::RecoveryRef {
                recovery_id: recovery_id.into(),
            })
            .await?
            .into_inner();
        let pkg: EscrowPackage = serde_json::from_slice(
            &self
                .raw
                .get_escrow(pb::KeyRef {
                    key_id: rec.key_id.clone(),
                })
                .await?
                .into_inner()
                .package_json,
        )
        .map_err(|_| KmsError::BadReply("escrow package"))?;
        let share = pkg.open_share(trustee.signing_key())?;
        let recipient: AccountId = rec
            .recipient
            .as_slice()
            .try_into()
            .map_err(|_| KmsError::BadReply("recovery recipient"))?;
        let nonce: [u8; 32] = rec
            .nonce
            .as_slice()
            .try_into()
            .map_err(|_| KmsError::BadReply("recovery nonce"))?;
        if rec.key_id != pkg.key_id {
            return Err(KmsError::BadReply(
                "the recovery and the escrow name different keys",
            ));
        }
        let signature = escrow::sign_approval(
            trustee.signing_key(),
            recovery_id,
            &rec.key_id,
            &recipient,
            &nonce,
            share.0.expose(),
        );
        let r = self
            .raw
            .approve_recovery(pb::ApproveRecoveryRequest {
                recovery_id: recovery_id.into(),
                share: share.0.expose().to_vec(),
                signature: signature.to_vec(),
            })
            .await?
            .into_inner();
        Ok(r.approvals)
    }

    /// The caller's audit trail, each entry's inclusion bundle verified
    /// against the signed tree head it carries (and `log_key` if given).
    pub async fn verified_audit(
        &mut self,
        key_id: Option<&str>,
        log_key: Option<&AccountId>,
    ) -> Result<Vec<pb::AuditEntry>> {
        let mut entries = Vec::new();
        let mut from = Some(0);
        while let Some(from_index) = from {
            let page = self
                .raw
                .audit(pb::AuditRequest {
                    key_id: key_id.unwrap_or_default().into(),
                    from_index,
                    limit: 0,
                })
                .await?
                .into_inner();
            if page.next_index.is_some_and(|n| n <= from_index) {
                return Err(KmsError::BadReply("the audit paging does not advance"));
            }
            entries.extend(page.entries);
            from = page.next_index;
        }
        for e in &entries {
            let not_proven = |reason: String| KmsError::AuditNotProven {
                index: e.index,
                reason,
            };
            let bundle: yilian_ledger::bundle::InclusionBundle =
                serde_json::from_slice(&e.inclusion_bundle_json)
                    .map_err(|err| not_proven(format!("its inclusion bundle: {err}")))?;
            let trusted = log_key.copied().unwrap_or(bundle.tree_head.log_key);
            let tx = bundle
                .verify(&trusted)
                .map_err(|err| not_proven(err.to_string()))?;
            let records = crate::audit::key_audits_of(&tx);
            if records.is_empty() {
                return Err(not_proven("the proven entry is not a key audit".into()));
            }
            let a = records.get(e.position as usize).ok_or_else(|| {
                not_proven(format!(
                    "the proven entry holds {} records, none at position {}",
                    records.len(),
                    e.position
                ))
            })?;
            if a.operation != e.operation
                || a.outcome != e.outcome
                || a.key_id != e.key_id
                || a.actor.as_slice() != e.actor.as_slice()
                || a.request_hash.as_slice() != e.request_hash.as_slice()
                || a.grant_id != e.grant_id
                || a.key_version != e.key_version
            {
                return Err(not_proven(
                    "the record differs from the proven ledger entry".into(),
                ));
            }
        }
        Ok(entries)
    }
}
