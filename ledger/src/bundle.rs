//! Offline proof files: JSON a regulator or auditor verifies with nothing but
//! the file and a trusted tree head (`yilian ledger verify`).

use serde::{Deserialize, Serialize};

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
}

/// A consistency proof between two signed heads of the same log.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ConsistencyBundle {
    pub version: u32,
    pub old_head: SignedTreeHead,
    pub new_head: SignedTreeHead,
    pub proof: ConsistencyProof,
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
