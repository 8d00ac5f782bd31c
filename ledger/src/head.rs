//! Signed tree heads: the log's commitment to its size and root at a time.

use ed25519_dalek::{Signature, Signer, SigningKey, Verifier, VerifyingKey};
use serde::{Deserialize, Serialize};

use crate::LedgerError;
use crate::merkle::Hash;
use crate::tx::AccountId;

const HEAD_CONTEXT: &[u8] = b"yilian/ledger/tree-head/v1\0";

/// The log's size and root, signed by the log's key.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignedTreeHead {
    pub tree_size: u64,
    #[serde(with = "crate::hexbytes")]
    pub root_hash: Hash,
    pub timestamp_ms: u64,
    #[serde(with = "crate::hexbytes")]
    pub log_key: AccountId,
    #[serde(with = "crate::hexbytes")]
    pub signature: [u8; 64],
}

impl SignedTreeHead {
    pub fn sign(tree_size: u64, root_hash: Hash, timestamp_ms: u64, key: &SigningKey) -> Self {
        let log_key = key.verifying_key().to_bytes();
        let msg = message(tree_size, &root_hash, timestamp_ms, &log_key);
        SignedTreeHead {
            tree_size,
            root_hash,
            timestamp_ms,
            log_key,
            signature: key.sign(&msg).to_bytes(),
        }
    }

    /// Checks the signature against the key the head names; callers that
    /// trust a specific log compare `log_key` with it ([`Self::verify_by`]).
    pub fn verify(&self) -> Result<(), LedgerError> {
        let key = VerifyingKey::from_bytes(&self.log_key).map_err(|_| LedgerError::BadSignature)?;
        let msg = message(
            self.tree_size,
            &self.root_hash,
            self.timestamp_ms,
            &self.log_key,
        );
        key.verify(&msg, &Signature::from_bytes(&self.signature))
            .map_err(|_| LedgerError::BadTreeHead)
    }

    /// Checks the signature and that it is by the trusted `log_key`.
    pub fn verify_by(&self, log_key: &AccountId) -> Result<(), LedgerError> {
        if &self.log_key != log_key {
            return Err(LedgerError::UntrustedLogKey);
        }
        self.verify()
    }
}

fn message(size: u64, root: &Hash, ts: u64, key: &AccountId) -> Vec<u8> {
    let mut m = HEAD_CONTEXT.to_vec();
    m.extend_from_slice(key);
    m.extend_from_slice(&size.to_be_bytes());
    m.extend_from_slice(root);
    m.extend_from_slice(&ts.to_be_bytes());
    m
}
