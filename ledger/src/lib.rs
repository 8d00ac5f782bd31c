//! Yilian's verifiable ledger: an append-only log of typed, signed
//! transactions (admissions and revocations, key operations, record anchors,
//! federated contributions and rewards), hashed into an RFC 6962/9162 Merkle
//! tree with signed tree heads, inclusion and consistency proofs anyone can
//! check offline, and reward balances per account.
//!
//! The ledger is shared by the consortium's member nodes: [`raft`] replicates
//! it on openraft behind the small [`consensus`] trait, every member
//! validates every entry itself, and a head is trusted only as a C2SP
//! [`checkpoint`] cosigned by a majority of members under the [`witness`]
//! rules.
//!
//! The cores are sans-IO: [`merkle`] (the tree and proof algorithms),
//! [`state`] (what each transaction may do given the history, membership
//! included), [`witness`] and [`checkpoint`]. [`store`] puts them behind
//! redb and consensus with group commit; [`service`] serves clients and
//! [`peer`] the other members over gRPC; [`bundle`] is the offline proof
//! file format.
//!
//! The `node` feature (on by default) is the member node: [`store`],
//! [`raft`], [`consensus`], [`service`] and [`peer`], with redb, openraft
//! and tonic. Without it the crate is what a verifier or device needs to
//! check entries, heads and proofs offline.
#![forbid(unsafe_code)]

pub mod bundle;
pub mod checkpoint;
#[cfg(feature = "node")]
pub mod consensus;
pub mod head;
pub mod hexbytes;
pub mod merkle;
#[cfg(feature = "node")]
pub mod peer;
#[cfg(feature = "node")]
pub mod raft;
#[cfg(feature = "node")]
pub mod service;
pub mod state;
#[cfg(feature = "node")]
pub mod store;
pub mod tx;
pub mod witness;

pub use head::SignedTreeHead;
pub use merkle::{ConsistencyProof, Hash, InclusionProof, ProofError};
pub use state::{Decision, LedgerState, Member};
#[cfg(feature = "node")]
pub use store::{Ledger, OwnTransaction, Receipt};
pub use tx::{AccountId, KeyAuditRecord, Payload, SignedTransaction, Transaction, TxId};
pub use yilian_identity::Role;

/// Every way a ledger operation can be refused. It travels between member
/// nodes (a forwarded write's refusal), hence serde.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error, serde::Serialize, serde::Deserialize)]
#[non_exhaustive]
pub enum LedgerError {
    #[error("malformed transaction: {0}")]
    Malformed(String),
    /// A payload field over its limit in [`tx::limits`].
    #[error(
        "`{field}` is {len} bytes, more than the {max} a ledger entry allows; shorten it, or keep the document off the ledger and record its hash"
    )]
    FieldTooLong {
        field: std::borrow::Cow<'static, str>,
        len: usize,
        max: usize,
    },
    /// A `KeyAudits` entry over [`tx::limits::MAX_AUDIT_RECORDS`].
    #[error(
        "a key-audits entry holds {len} records, more than the {max} one entry allows; split them over several entries"
    )]
    TooManyRecords { len: usize, max: usize },
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
    RoleNotAllowed {
        role: Role,
        action: std::borrow::Cow<'static, str>,
    },
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
    #[error("this node is not the leader{}", leader.as_ref().map(|l| format!("; the leader is {l}")).unwrap_or_else(|| "; no leader is reachable now".into()))]
    NotLeader { leader: Option<String> },
    #[error("no quorum of members answered within {millis} ms; retry when the network heals")]
    NoQuorum { millis: u64 },
    #[error("consensus: {0}")]
    Consensus(String),
    /// This member's storage failed (a full or failing disk): it takes no
    /// more writes until its operator mends the disk and restarts it.
    /// Nothing it acknowledged is lost; another member may take the write.
    #[error(
        "this member stopped taking writes ({cause}); its operator must free or repair its disk and restart it"
    )]
    Halted { cause: String },
    #[error("cosignature by `{cosigner}` does not verify")]
    BadCosignature { cosigner: String },
    #[error("the head has {got} valid member cosignatures, {need} are required")]
    TooFewCosignatures { got: usize, need: usize },
    #[error("{0} is not a consortium member")]
    NotConsortiumMember(String),
    #[error("{0} is already a consortium member")]
    AlreadyConsortiumMember(String),
    #[error("membership proposal {0} is not on the ledger")]
    UnknownProposal(String),
    #[error("membership proposal {0} has already taken effect")]
    ProposalDecided(String),
    #[error("this member has already approved proposal {0}")]
    AlreadyApproved(String),
    #[error("the last consortium member cannot be removed")]
    LastMember,
    #[error("peer message: {0}")]
    PeerMessage(String),
    /// A consistency proof whose ends are both other than the head the
    /// verifier trusts proves nothing about that head.
    #[error(
        "the proof runs from size {old} to size {new} and neither end is the trusted head of size {trusted}"
    )]
    ProofMissesTrustedHead { trusted: u64, old: u64, new: u64 },
    /// Two heads cosigned by a quorum for one size with different roots:
    /// evidence that members equivocated.
    #[error("two cosigned heads of size {size} have different roots")]
    ForkedHeads { size: u64 },
    #[error("the proof is for the log `{found}`, not the trusted log `{trusted}`")]
    OtherLog { trusted: String, found: String },
}

impl LedgerError {
    /// A stable, low-cardinality label for metrics.
    pub fn reason(&self) -> &'static str {
        match self {
            LedgerError::Malformed(_) => "malformed",
            LedgerError::FieldTooLong { .. } | LedgerError::TooManyRecords { .. } => "too-long",
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
            LedgerError::Proof(_)
            | LedgerError::EntryMismatch
            | LedgerError::ProofMissesTrustedHead { .. }
            | LedgerError::OtherLog { .. } => "proof",
            LedgerError::ForkedHeads { .. } => "equivocation",
            LedgerError::Storage(_) | LedgerError::Corrupt(_) | LedgerError::Closed => "storage",
            LedgerError::NotLeader { .. } | LedgerError::NoQuorum { .. } => "unavailable",
            LedgerError::Consensus(_) => "consensus",
            LedgerError::Halted { .. } => "halted",
            LedgerError::BadCosignature { .. } | LedgerError::TooFewCosignatures { .. } => {
                "cosignature"
            }
            LedgerError::NotConsortiumMember(_)
            | LedgerError::AlreadyConsortiumMember(_)
            | LedgerError::UnknownProposal(_)
            | LedgerError::ProposalDecided(_)
            | LedgerError::AlreadyApproved(_)
            | LedgerError::LastMember => "membership",
            LedgerError::PeerMessage(_) => "peer-message",
        }
    }
}

#[cfg(feature = "node")]
impl From<LedgerError> for tonic::Status {
    fn from(e: LedgerError) -> tonic::Status {
        use tonic::Code;
        let code = match &e {
            LedgerError::Malformed(_)
            | LedgerError::FieldTooLong { .. }
            | LedgerError::TooManyRecords { .. }
            | LedgerError::UnsupportedVersion(_) => Code::InvalidArgument,
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
            LedgerError::Proof(_)
            | LedgerError::EntryMismatch
            | LedgerError::ProofMissesTrustedHead { .. }
            | LedgerError::OtherLog { .. } => Code::InvalidArgument,
            LedgerError::ForkedHeads { .. } => Code::DataLoss,
            LedgerError::Storage(_) | LedgerError::Corrupt(_) | LedgerError::Consensus(_) => {
                Code::Internal
            }
            LedgerError::Closed
            | LedgerError::NotLeader { .. }
            | LedgerError::NoQuorum { .. }
            | LedgerError::Halted { .. } => Code::Unavailable,
            LedgerError::BadCosignature { .. } | LedgerError::PeerMessage(_) => {
                Code::InvalidArgument
            }
            LedgerError::TooFewCosignatures { .. }
            | LedgerError::UnknownProposal(_)
            | LedgerError::ProposalDecided(_)
            | LedgerError::LastMember => Code::FailedPrecondition,
            LedgerError::AlreadyConsortiumMember(_) | LedgerError::AlreadyApproved(_) => {
                Code::AlreadyExists
            }
            LedgerError::NotConsortiumMember(_) => Code::PermissionDenied,
        };
        let mut status = tonic::Status::new(code, e.to_string());
        // The client library follows this to the leader (see service::LedgerClient).
        if let LedgerError::NotLeader { leader: Some(l) } = &e
            && let Ok(v) = l.parse()
        {
            status.metadata_mut().insert(LEADER_HINT, v);
        }
        status
    }
}

/// gRPC metadata key carrying the leader's address on an `Unavailable` refusal.
pub const LEADER_HINT: &str = "yilian-leader";

pub type Result<T, E = LedgerError> = std::result::Result<T, E>;
