//! Offline proof files: JSON a regulator or auditor verifies with nothing but
//! the file and a trusted tree head (`yilian ledger verify`).

use serde::{Deserialize, Serialize};

use crate::checkpoint::{Checkpoint, CheckpointBody, Cosigner};
use crate::head::SignedTreeHead;
use crate::merkle::{self, ConsistencyProof, InclusionProof, leaf_hash};
use crate::tx::{AccountId, SignedTransaction};
use crate::{LedgerError, Result};

/// Format version of the proof files below.
pub const BUNDLE_VERSION: u32 = 1;

/// An entry, its inclusion proof and the signed head it is proven against.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct InclusionBundle {
    pub version: u32,
    /// The entry's exact bytes, hex-encoded (the Merkle leaf is over these).
    #[serde(with = "hex::serde")]
    pub entry: Vec<u8>,
    /// The decoded entry, for people; verification uses `entry` only.
    pub transaction: Option<SignedTransaction>,
    pub proof: InclusionProof,
    pub tree_head: SignedTreeHead,
    /// The head a quorum of consortium members cosigned, which the proof is against.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checkpoint: Option<Checkpoint>,
}

/// A consistency proof between two signed heads of the same log.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ConsistencyBundle {
    pub version: u32,
    pub old_head: SignedTreeHead,
    pub new_head: SignedTreeHead,
    pub proof: ConsistencyProof,
    /// The cosigned checkpoints of the two sizes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub old_checkpoint: Option<Checkpoint>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub new_checkpoint: Option<Checkpoint>,
}

impl InclusionBundle {
    /// Checks that the entry is in the log under `tree_head`, signed by `log_key`.
    pub fn verify(&self, log_key: &AccountId) -> Result<SignedTransaction> {
        if self.version != BUNDLE_VERSION {
            return Err(LedgerError::Malformed(format!(
                "unsupported bundle version {}",
                self.version
            )));
        }
        self.tree_head.verify_by(log_key)?;
        if self.proof.tree_size != self.tree_head.tree_size {
            return Err(LedgerError::Malformed(
                "proof and tree head are for different sizes".into(),
            ));
        }
        let tx = SignedTransaction::decode(&self.entry)?;
        if let Some(shown) = &self.transaction
            && shown != &tx
        {
            return Err(LedgerError::EntryMismatch);
        }
        merkle::verify_inclusion(
            &leaf_hash(&self.entry),
            &self.proof,
            &self.tree_head.root_hash,
        )?;
        Ok(tx)
    }
}

impl InclusionBundle {
    /// Checks that the entry is in the log under the bundle's checkpoint,
    /// cosigned by at least `min` distinct members of `cosigners`.
    pub fn verify_cosigned(
        &self,
        cosigners: &[Cosigner],
        min: usize,
    ) -> Result<(SignedTransaction, Vec<String>)> {
        let cp = self.checkpoint.as_ref().ok_or_else(|| {
            LedgerError::Malformed("the proof carries no cosigned checkpoint".into())
        })?;
        let who = cp.verify(cosigners, min)?;
        if self.proof.tree_size != cp.body.size {
            return Err(LedgerError::Malformed(
                "proof and checkpoint are for different sizes".into(),
            ));
        }
        let tx = SignedTransaction::decode(&self.entry)?;
        if let Some(shown) = &self.transaction
            && shown != &tx
        {
            return Err(LedgerError::EntryMismatch);
        }
        merkle::verify_inclusion(&leaf_hash(&self.entry), &self.proof, &cp.body.root)?;
        Ok((tx, who))
    }

    /// [`Self::verify_cosigned`], refusing a checkpoint of the trusted
    /// head's size with another root (members equivocated).
    pub fn verify_against_trusted(
        &self,
        trusted: &CheckpointBody,
        cosigners: &[Cosigner],
        min: usize,
    ) -> Result<(SignedTransaction, Vec<String>)> {
        let verified = self.verify_cosigned(cosigners, min)?;
        let cp = &self.checkpoint.as_ref().expect("verified").body;
        cp.check_agrees_with(trusted)?;
        Ok(verified)
    }
}

impl ConsistencyBundle {
    /// Checks that the old checkpoint's log is a prefix of the new one's,
    /// each cosigned by at least `min` distinct members of `cosigners`.
    pub fn verify_cosigned(&self, cosigners: &[Cosigner], min: usize) -> Result<()> {
        let (Some(old), Some(new)) = (&self.old_checkpoint, &self.new_checkpoint) else {
            return Err(LedgerError::Malformed(
                "the proof carries no cosigned checkpoints".into(),
            ));
        };
        old.verify(cosigners, min)?;
        new.verify(cosigners, min)?;
        if self.proof.old_size != old.body.size || self.proof.new_size != new.body.size {
            return Err(LedgerError::Malformed(
                "proof sizes do not match the checkpoints".into(),
            ));
        }
        merkle::verify_consistency(&self.proof, &old.body.root, &new.body.root)?;
        Ok(())
    }

    /// [`Self::verify_cosigned`], and one end of the proof must be the head
    /// the verifier already trusts: otherwise the proof, valid or not, says
    /// nothing about it. Returns which end it is.
    pub fn verify_from_trusted(
        &self,
        trusted: &CheckpointBody,
        cosigners: &[Cosigner],
        min: usize,
    ) -> Result<TrustedEnd> {
        self.verify_cosigned(cosigners, min)?;
        let (old, new) = (
            &self.old_checkpoint.as_ref().expect("verified").body,
            &self.new_checkpoint.as_ref().expect("verified").body,
        );
        old.check_agrees_with(trusted)?;
        new.check_agrees_with(trusted)?;
        if old == trusted {
            Ok(TrustedEnd::Old)
        } else if new == trusted {
            Ok(TrustedEnd::New)
        } else {
            Err(LedgerError::ProofMissesTrustedHead {
                trusted: trusted.size,
                old: old.size,
                new: new.size,
            })
        }
    }
}

/// Which end of a consistency proof is the head the verifier trusts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TrustedEnd {
    /// The trusted head's log is a prefix of the proof's newer head.
    Old,
    /// The proof's older head is a prefix of the trusted head's log.
    New,
}

impl ConsistencyBundle {
    /// Checks that `old_head`'s log is a prefix of `new_head`'s, both signed by `log_key`.
    pub fn verify(&self, log_key: &AccountId) -> Result<()> {
        if self.version != BUNDLE_VERSION {
            return Err(LedgerError::Malformed(format!(
                "unsupported bundle version {}",
                self.version
            )));
        }
        self.old_head.verify_by(log_key)?;
        self.new_head.verify_by(log_key)?;
        if self.proof.old_size != self.old_head.tree_size
            || self.proof.new_size != self.new_head.tree_size
        {
            return Err(LedgerError::Malformed(
                "proof sizes do not match the heads".into(),
            ));
        }
        merkle::verify_consistency(
            &self.proof,
            &self.old_head.root_hash,
            &self.new_head.root_hash,
        )?;
        Ok(())
    }
}
