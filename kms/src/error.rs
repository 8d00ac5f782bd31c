//! Every way a KMS operation can be refused. Messages name keys, grants and
//! identities, never key material.

use crate::policy::Operation;

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum KmsError {
    #[error("unknown key `{0}`")]
    UnknownKey(String),
    #[error("key `{0}` already exists")]
    KeyExists(String),
    #[error("key name `{0}` is invalid (1-128 characters of [A-Za-z0-9._:-])")]
    BadKeyName(String),
    #[error("caller is not the owner of key `{0}`")]
    NotOwner(String),
    #[error("role `{role}` may not {action}")]
    WrongRole { role: String, action: &'static str },
    #[error("key `{key_id}` has no version {version}")]
    UnknownVersion { key_id: String, version: u32 },
    #[error("key `{key_id}` version {version} is retired (minimum decryption version is {min})")]
    VersionRetired {
        key_id: String,
        version: u32,
        min: u32,
    },
    #[error("minimum decryption version {requested} is out of range 1..={latest}")]
    BadMinVersion { requested: u32, latest: u32 },
    #[error("key `{0}` has been destroyed")]
    KeyDestroyed(String),
    #[error("key `{key_id}` is a {kind} key; this operation needs an AES-256-GCM key")]
    WrongKeyKind { key_id: String, kind: &'static str },
    #[error("envelope is malformed: {0}")]
    MalformedEnvelope(&'static str),
    #[error("unsupported envelope version {0}")]
    UnsupportedEnvelopeVersion(u8),
    #[error("unsupported algorithm {0}")]
    UnsupportedAlgorithm(u8),
    #[error("envelope was sealed for key `{found}`, not `{expected}`")]
    EnvelopeKeyMismatch { expected: String, found: String },
    #[error("decryption failed: ciphertext, envelope, owner or context does not authenticate")]
    AuthenticationFailed,
    #[error("payload too large: {len} bytes, at most {max}")]
    PayloadTooLarge { len: usize, max: usize },
    #[error("unknown grant `{0}`")]
    UnknownGrant(String),
    #[error("grant `{0}` is not for this caller")]
    NotGrantee(String),
    #[error("grant `{grant_id}` is not valid before {not_before_ms} (now {now_ms})")]
    GrantNotYetValid {
        grant_id: String,
        not_before_ms: u64,
        now_ms: u64,
    },
    #[error("grant `{grant_id}` expired at {not_after_ms} (now {now_ms})")]
    GrantExpired {
        grant_id: String,
        not_after_ms: u64,
        now_ms: u64,
    },
    #[error("grant `{grant_id}` is exhausted: {max_uses} of {max_uses} uses spent")]
    GrantExhausted { grant_id: String, max_uses: u32 },
    #[error("grant `{0}` has been revoked")]
    GrantRevoked(String),
    #[error("grant `{grant_id}` does not allow `{operation}`")]
    OperationNotGranted {
        grant_id: String,
        operation: Operation,
    },
    #[error("grant `{0}` requires a different context")]
    WrongContext(String),
    #[error("grant is malformed: {0}")]
    BadGrant(&'static str),
    #[error("unknown escrow for key `{0}`")]
    UnknownEscrow(String),
    #[error(
        "bad escrow parameters: threshold {threshold} of {trustees} trustees (need {least} <= t <= n <= 255, distinct trustees)"
    )]
    BadEscrowParameters {
        threshold: usize,
        trustees: usize,
        /// The smallest threshold allowed: 2 for an escrow (one trustee
        /// alone must not recover), 1 for the unseal shares.
        least: usize,
    },
    #[error("unknown recovery `{0}`")]
    UnknownRecovery(String),
    #[error("identity {0} is not a trustee of this escrow")]
    NotTrustee(String),
    #[error(
        "trustee {account} is {}; name identities admitted with the trustee role",
        role.as_ref().map_or("not an admitted identity".to_owned(), |r| format!("admitted as {r}, not as a trustee"))
    )]
    TrusteeNotAdmitted {
        account: String,
        role: Option<String>,
    },
    #[error("identity {0} was never admitted to this network; name an admitted identity's key")]
    NotAdmitted(String),
    #[error("identity {0} has been revoked")]
    IdentityRevoked(String),
    #[error("identity {0}'s admission has expired")]
    IdentityExpired(String),
    #[error(
        "key `{0}` is already escrowed; replacing its escrow must be asked for explicitly (--replace)"
    )]
    EscrowExists(String),
    #[error("trustee {0} has already approved this recovery")]
    DuplicateApproval(String),
    #[error("approval signature does not verify for this recovery")]
    BadApprovalSignature,
    #[error("share is malformed or does not match the escrow's commitments")]
    MalformedShare,
    #[error("recovery `{recovery_id}` has {approvals} of {threshold} approvals")]
    RecoveryIncomplete {
        recovery_id: String,
        approvals: usize,
        threshold: usize,
    },
    #[error("recovery `{0}` names a different recipient")]
    NotRecipient(String),
    #[error("recovery `{0}` was already completed")]
    RecoveryCompleted(String),
    #[error("escrowed key does not authenticate after recombination")]
    EscrowCorrupt,
    #[error("sealed: the KMS has not been unsealed")]
    Sealed,
    #[error("unseal share is malformed or does not belong to this KMS")]
    BadUnsealShare,
    #[error("unseal share {0} was already given")]
    DuplicateUnsealShare(u8),
    #[error(
        "the root key does not open this KMS's store: give the unseal shares (or key file) made for this node"
    )]
    WrongRootKey,
    #[error("audit could not be written, operation refused: {0}")]
    AuditFailed(String),
    /// The node refused a call; its message says what to change.
    #[error("{}", .0.message())]
    Rpc(Box<tonic::Status>),
    #[error(transparent)]
    Connect(#[from] yilian_identity::IdentityError),
    /// The node answered with something this client cannot read.
    #[error("the node's reply is malformed: {0}")]
    BadReply(&'static str),
    /// An audit record the node served does not match what the ledger proves.
    #[error("audit entry {index} does not verify against the ledger: {reason}")]
    AuditNotProven { index: u64, reason: String },
    #[error("storage: {0}")]
    Storage(String),
    #[error("stored record is corrupt: {0}")]
    Corrupt(String),
    #[error("operating system random source failed")]
    Random,
    #[error("bad request: {0}")]
    BadRequest(String),
}

pub type Result<T, E = KmsError> = std::result::Result<T, E>;

impl KmsError {
    /// A stable, low-cardinality label used as the audit outcome and in metrics.
    pub fn reason(&self) -> &'static str {
        use KmsError::*;
        match self {
            UnknownKey(_)
            | UnknownVersion { .. }
            | UnknownGrant(_)
            | UnknownEscrow(_)
            | UnknownRecovery(_) => "not-found",
            KeyExists(_) => "exists",
            BadKeyName(_)
            | BadMinVersion { .. }
            | BadGrant(_)
            | BadEscrowParameters { .. }
            | BadRequest(_)
            | PayloadTooLarge { .. } => "bad-request",
            NotOwner(_) | WrongRole { .. } | NotGrantee(_) | NotTrustee(_) | NotRecipient(_) => {
                "denied"
            }
            TrusteeNotAdmitted { .. } => "trustee-not-admitted",
            NotAdmitted(_) => "not-admitted",
            IdentityRevoked(_) => "identity-revoked",
            IdentityExpired(_) => "identity-expired",
            EscrowExists(_) => "escrow-exists",
            VersionRetired { .. } => "retired",
            KeyDestroyed(_) => "destroyed",
            WrongKeyKind { .. } => "wrong-kind",
            MalformedEnvelope(_)
            | UnsupportedEnvelopeVersion(_)
            | UnsupportedAlgorithm(_)
            | EnvelopeKeyMismatch { .. } => "malformed-envelope",
            AuthenticationFailed => "tampered",
            GrantNotYetValid { .. } => "grant-not-yet-valid",
            GrantExpired { .. } => "grant-expired",
            GrantExhausted { .. } => "grant-exhausted",
            GrantRevoked(_) => "grant-revoked",
            OperationNotGranted { .. } => "operation-not-granted",
            WrongContext(_) => "wrong-context",
            DuplicateApproval(_) => "duplicate-approval",
            BadApprovalSignature => "bad-signature",
            MalformedShare => "malformed-share",
            RecoveryIncomplete { .. } => "incomplete",
            RecoveryCompleted(_) => "completed",
            EscrowCorrupt => "escrow-corrupt",
            Sealed => "sealed",
            BadUnsealShare | DuplicateUnsealShare(_) | WrongRootKey => "unseal",
            AuditFailed(_) => "audit-failed",
            Storage(_) | Corrupt(_) | Random => "internal",
            Rpc(_) | Connect(_) | BadReply(_) | AuditNotProven { .. } => "client",
        }
    }
}

impl From<KmsError> for tonic::Status {
    fn from(e: KmsError) -> tonic::Status {
        use KmsError::*;
        use tonic::Code;
        let code = match &e {
            UnknownKey(_)
            | UnknownVersion { .. }
            | UnknownGrant(_)
            | UnknownEscrow(_)
            | UnknownRecovery(_) => Code::NotFound,
            KeyExists(_) => Code::AlreadyExists,
            NotOwner(_) | WrongRole { .. } | NotGrantee(_) | NotTrustee(_) | NotRecipient(_) => {
                Code::PermissionDenied
            }
            BadKeyName(_)
            | BadMinVersion { .. }
            | BadGrant(_)
            | BadEscrowParameters { .. }
            | BadRequest(_)
            | PayloadTooLarge { .. }
            | MalformedEnvelope(_)
            | UnsupportedEnvelopeVersion(_)
            | UnsupportedAlgorithm(_)
            | EnvelopeKeyMismatch { .. }
            | AuthenticationFailed
            | WrongKeyKind { .. }
            | MalformedShare
            | BadApprovalSignature
            | BadUnsealShare => Code::InvalidArgument,
            VersionRetired { .. }
            | KeyDestroyed(_)
            | GrantNotYetValid { .. }
            | GrantExpired { .. }
            | GrantExhausted { .. }
            | GrantRevoked(_)
            | OperationNotGranted { .. }
            | WrongContext(_)
            | DuplicateApproval(_)
            | RecoveryIncomplete { .. }
            | RecoveryCompleted(_)
            | DuplicateUnsealShare(_)
            | TrusteeNotAdmitted { .. }
            | NotAdmitted(_)
            | IdentityRevoked(_)
            | IdentityExpired(_)
            // Unseal shares of another KMS: the caller's to fix, not ours.
            | WrongRootKey => Code::FailedPrecondition,
            EscrowExists(_) => Code::AlreadyExists,
            Sealed | AuditFailed(_) => Code::Unavailable,
            EscrowCorrupt | Storage(_) | Corrupt(_) | Random => Code::Internal,
            Rpc(s) => s.code(),
            Connect(_) => Code::Unavailable,
            BadReply(_) | AuditNotProven { .. } => Code::DataLoss,
        };
        tonic::Status::new(code, e.to_string())
    }
}

impl From<tonic::Status> for KmsError {
    fn from(s: tonic::Status) -> Self {
        KmsError::Rpc(Box::new(s))
    }
}

impl From<redb::Error> for KmsError {
    fn from(e: redb::Error) -> Self {
        KmsError::Storage(e.to_string())
    }
}
macro_rules! redb_err {
    ($($t:ty),*) => {$(
        impl From<$t> for KmsError {
            fn from(e: $t) -> Self { KmsError::Storage(e.to_string()) }
        }
    )*};
}
redb_err!(
    redb::DatabaseError,
    redb::TransactionError,
    redb::TableError,
    redb::StorageError,
    redb::CommitError
);
