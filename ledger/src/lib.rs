//! Yilian's verifiable ledger: an append-only log of typed, signed
//! transactions (admissions and revocations, key operations, record anchors,
//! federated contributions and rewards), hashed into an RFC 6962/9162 Merkle
//! tree with signed tree heads, inclusion and consistency proofs anyone can
//! check offline, and reward balances per account.
//!
//! The cores are sans-IO: [`merkle`] (the tree and proof algorithms) and
//! [`state`] (what each transaction may do given the history). [`store`]
//! puts them behind redb with group commit; [`service`] serves them over
//! gRPC; [`bundle`] is the offline proof file format.
#![forbid(unsafe_code)]

pub mod bundle;
pub mod head;
mod hexbytes;
pub mod merkle;
pub mod service;
pub mod state;
pub mod store;
pub mod tx;

pub use head::SignedTreeHead;
pub use merkle::{ConsistencyProof, Hash, InclusionProof, ProofError};
pub use state::{Decision, LedgerState, Member};
pub use store::{Ledger, OwnTransaction, Receipt};
pub use tx::{AccountId, Payload, SignedTransaction, Transaction, TxId};
pub use yilian_identity::Role;

/// Every way a ledger operation can be refused.
#[derive(Clone, Debug, thiserror::Error)]
pub enum LedgerError {
    #[error("malformed transaction: {0}")]
    Malformed(String),
    #[error("unsupported transaction version {0}")]
    UnsupportedVersion(u16),
    #[error("bad signature")]
    BadSignature,
    #[error("bad tree head signature")]
    BadTreeHead,
    #[error("tree head is signed by a key other than the trusted log key")]
    UntrustedLogKey,
    #[error("signer {0} is not an admitted identity")]
    UnknownSigner(String),
    #[error("signer has been revoked")]
    SignerRevoked,
    #[error("signer's admission has expired")]
    SignerExpired,
    #[error("role `{role}` may not write `{action}` transactions")]
    RoleNotAllowed { role: Role, action: &'static str },
    #[error("only the admission authority may do this")]
    NotAuthority,
    #[error("identity is already admitted")]
    AlreadyAdmitted,
    #[error("identity is already revoked")]
    AlreadyRevoked,
    #[error("account {0} is not an admitted identity")]
    UnknownAccount(String),
    #[error("insufficient balance: {balance} available, {amount} requested")]
    InsufficientBalance { balance: u64, amount: u64 },
    #[error("balance would overflow")]
    BalanceOverflow,
    #[error("the log has no genesis entry yet")]
    NoGenesis,
    #[error("genesis must be the first entry, and only once")]
    GenesisMisplaced,
    #[error("entry {index} not found (log size {size})")]
    EntryNotFound { index: u64, size: u64 },
    #[error(transparent)]
    Proof(#[from] ProofError),
    #[error("the proof's entry does not match the entry given")]
    EntryMismatch,
    #[error("storage: {0}")]
    Storage(String),
    #[error("ledger store is corrupt: {0}")]
    Corrupt(String),
    #[error("the ledger is closed")]
    Closed,
}

impl LedgerError {
    /// A stable, low-cardinality label for metrics.
    pub fn reason(&self) -> &'static str {
        match self {
            LedgerError::Malformed(_) => "malformed",
            LedgerError::UnsupportedVersion(_) => "version",
            LedgerError::BadSignature | LedgerError::BadTreeHead => "signature",
            LedgerError::UntrustedLogKey => "log-key",
            LedgerError::UnknownSigner(_) => "unknown-signer",
            LedgerError::SignerRevoked => "revoked",
            LedgerError::SignerExpired => "expired",
            LedgerError::RoleNotAllowed { .. } | LedgerError::NotAuthority => "role",
            LedgerError::AlreadyAdmitted | LedgerError::AlreadyRevoked => "duplicate",
            LedgerError::UnknownAccount(_) => "unknown-account",
            LedgerError::InsufficientBalance { .. } | LedgerError::BalanceOverflow => "balance",
            LedgerError::NoGenesis | LedgerError::GenesisMisplaced => "genesis",
            LedgerError::EntryNotFound { .. } => "not-found",
            LedgerError::Proof(_) | LedgerError::EntryMismatch => "proof",
            LedgerError::Storage(_) | LedgerError::Corrupt(_) | LedgerError::Closed => "storage",
        }
    }
}

impl From<LedgerError> for tonic::Status {
    fn from(e: LedgerError) -> tonic::Status {
        use tonic::Code;
        let code = match &e {
            LedgerError::Malformed(_) | LedgerError::UnsupportedVersion(_) => Code::InvalidArgument,
            LedgerError::BadSignature
            | LedgerError::BadTreeHead
            | LedgerError::UntrustedLogKey
            | LedgerError::UnknownSigner(_)
            | LedgerError::SignerRevoked
            | LedgerError::SignerExpired => Code::Unauthenticated,
            LedgerError::RoleNotAllowed { .. } | LedgerError::NotAuthority => {
                Code::PermissionDenied
            }
            LedgerError::AlreadyAdmitted | LedgerError::AlreadyRevoked => Code::AlreadyExists,
            LedgerError::UnknownAccount(_)
            | LedgerError::InsufficientBalance { .. }
            | LedgerError::BalanceOverflow
            | LedgerError::NoGenesis
            | LedgerError::GenesisMisplaced => Code::FailedPrecondition,
            LedgerError::EntryNotFound { .. } => Code::NotFound,
            LedgerError::Proof(ProofError::IndexOutOfRange { .. })
            | LedgerError::Proof(ProofError::SizeOutOfRange { .. })
            | LedgerError::Proof(ProofError::SizesReversed { .. }) => Code::OutOfRange,
            LedgerError::Proof(_) | LedgerError::EntryMismatch => Code::InvalidArgument,
            LedgerError::Storage(_) | LedgerError::Corrupt(_) => Code::Internal,
            LedgerError::Closed => Code::Unavailable,
        };
        tonic::Status::new(code, e.to_string())
    }
}

pub type Result<T, E = LedgerError> = std::result::Result<T, E>;
