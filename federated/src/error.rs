use crate::AgentId;

/// Everything the federated layer refuses or fails at.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FlError {
    #[error("data schema mismatch on {field}: the task needs {task}, the agent has {agent}")]
    SchemaMismatch {
        field: &'static str,
        task: String,
        agent: String,
    },
    #[error("task exceeds the agent's policy: {limit} is {asked}, the policy allows {allowed}")]
    PolicyExceeded {
        limit: &'static str,
        asked: u64,
        allowed: u64,
    },
    #[error(
        "task {task} is not in the policy's tasks ({listed}); policy.tasks in the agent's configuration lists them"
    )]
    TaskNotListed { task: String, listed: String },
    #[error(
        "format {0} is not a model format; ask for MODEL_FORMAT_SAFETENSORS (0) or MODEL_FORMAT_ONNX (1)"
    )]
    UnknownFormat(i32),
    #[error("invalid task: {0}")]
    InvalidTask(&'static str),
    #[error("update from {} rejected: {reason}", hex::encode(&agent[..4]))]
    UpdateRejected {
        agent: AgentId,
        reason: RejectReason,
    },
    #[error("agent {} is not recruited to this task", hex::encode(&agent[..4]))]
    UnknownAgent { agent: AgentId },
    #[error("protocol version {found} is not supported (this build speaks {supported})")]
    ProtocolVersion { found: u16, supported: u16 },
    #[error("frame of {size} bytes exceeds the limit of {limit}")]
    FrameTooLarge { size: usize, limit: usize },
    #[error("malformed message: {0}")]
    Malformed(#[from] postcard::Error),
    #[error("weight chunk {index} of {total} out of order or out of range")]
    BadChunk { index: u32, total: u32 },
    #[error("task {0} not found")]
    NoSuchTask(String),
    #[error("a task with id `{0}` already exists; give the task file another `id`")]
    TaskExists(String),
    #[error("task {0} is an evaluation: it has no global model or rounds")]
    NotTraining(String),
    #[error("role `{role}` may not {action}; use an engineer or member identity")]
    WrongRole { role: String, action: &'static str },
    #[error("validation_csv: {0}; send a CSV with a header that has the schema's label column")]
    Validation(yilian_models::ModelError),
    #[error(
        "a submission starts with its header (the task file and the sizes of what follows), then only chunks"
    )]
    HeaderFirst,
    #[error("{field}: {size} is over the limit of {limit} bytes")]
    UploadTooLarge {
        field: &'static str,
        size: usize,
        limit: usize,
    },
    #[error(
        "{field} announced {announced} bytes, {received} arrived; send exactly the announced size"
    )]
    UploadSizeMismatch {
        field: &'static str,
        announced: usize,
        received: usize,
    },
    #[error("the task was not anchored on the ledger, nothing was stored; submit it again: {0}")]
    Ledger(#[from] yilian_ledger::LedgerError),
    #[error("the coordinator has stopped")]
    Stopped,
    #[error("TLS configuration: {0}")]
    Tls(String),
    #[error("the peer presented no client certificate")]
    NoClientCertificate,
    #[error("connection: {0}")]
    Connection(#[from] quinn::ConnectionError),
    #[error("cannot connect: {0}")]
    Connect(#[from] quinn::ConnectError),
    #[error("the connection closed")]
    ConnectionClosed,
    #[error("refused by the coordinator: {0}")]
    Refused(String),
    #[error("the evaluation model is not the one offered")]
    ModelNotOffered,
    #[error("reward proof: {0}")]
    BadRewardProof(String),
    /// The device owner's schedule ended the session.
    #[error("{0}")]
    Paused(#[from] crate::schedule::Pause),
    #[error("{0}")]
    Schedule(#[from] crate::schedule::BadSchedule),
    #[error("a worker thread failed: {0}")]
    Worker(String),
    #[error("reading a frame: {0}")]
    Read(#[from] quinn::ReadError),
    #[error("the stream ended inside a frame")]
    TruncatedFrame,
    #[error("no session for this connection")]
    NoSession,
    #[error(
        "engineers submit and follow tasks over the node's gRPC API (`yilian task --node`), not QUIC"
    )]
    UseControlPlane,
    #[error("unexpected {0}")]
    Unexpected(&'static str),
    #[error("a message for task {0}, which this agent has not joined")]
    NotJoined(String),
    #[error("the stored ONNX model of evaluation {0} does not match its recorded hash")]
    ModelFileChanged(String),
    #[error("model: {0}")]
    Model(#[from] yilian_models::ModelError),
    #[error("task file: {0}")]
    TaskFile(#[from] toml::de::Error),
    #[error(
        "round {round} failed: {survivors} agents remained, secure aggregation needs {threshold}; nothing was aggregated"
    )]
    TooFewSurvivors {
        round: u32,
        survivors: usize,
        threshold: usize,
    },
    #[error(
        "round {round} failed: only {shares} valid shares of {}'s secret arrived, {threshold} are needed; nothing was aggregated", hex::encode(&owner[..4])
    )]
    Unrecoverable {
        round: u32,
        owner: AgentId,
        shares: usize,
        threshold: usize,
    },
    #[error("store: {0}")]
    Store(String),
    #[error("I/O: {0}")]
    Io(#[from] std::io::Error),
    /// The node refused a control-plane call; its message says what to change.
    #[cfg(feature = "coordinator")]
    #[error("{}", .0.message())]
    Rpc(Box<tonic::Status>),
    #[error("cannot read {}: {cause}", path.display())]
    File {
        path: std::path::PathBuf,
        cause: std::io::Error,
    },
    #[error("{} is not a valid task file: {cause}", path.display())]
    BadTaskFile {
        path: std::path::PathBuf,
        cause: Box<FlError>,
    },
    #[error("cannot use the identity in {}: {cause}", path.display())]
    Identity {
        path: std::path::PathBuf,
        cause: yilian_identity::IdentityError,
    },
    #[error("--weights: an evaluation task takes no initial weights; drop the flag")]
    WeightsForEvaluation,
    #[error("the node closed the stream before task {0} ended; watch it again")]
    WatchEnded(String),
    #[error("the model arrived damaged ({0}); download it again")]
    ModelDamaged(&'static str),
}

/// Why an update does not count.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize, thiserror::Error)]
pub enum RejectReason {
    #[error("it is for round {got}, the current round is {current}")]
    WrongRound { got: u32, current: u32 },
    #[error("the agent was not selected for this round")]
    NotSelected,
    #[error("the agent's update for this round was already counted")]
    Duplicate,
    #[error("it has {got} weights, the model has {expected}")]
    WrongShape { got: usize, expected: usize },
    #[error("it holds a non-finite value")]
    NonFinite,
    #[error("it claims {0} training samples")]
    BadSampleCount(u64),
    #[error("no round is open")]
    NoOpenRound,
    // Evaluation reports (appended: the wire encoding of the variants above stays).
    #[error("its confusion matrix is {rows}x{cols}, the model has {expected} classes")]
    MatrixShape {
        rows: usize,
        cols: usize,
        expected: usize,
    },
    #[error("its confusion counts add up to {counted}, it claims {samples} samples")]
    CountsDoNotAddUp { counted: u64, samples: u64 },
    #[error("it reports {reported} samples, the agent declared {declared}")]
    SamplesDiffer { reported: u64, declared: u64 },
    #[error("it counts examples of class {class}, outside the task's schema")]
    ClassOutsideSchema { class: usize },
    #[error("its summed loss is negative, not finite or above the bound for {samples} samples")]
    ImpossibleLoss { samples: u64 },
    // Secure aggregation (appended, as above).
    #[error("it belongs to the {got} step, the round is at the {expected} step")]
    WrongStep {
        got: crate::secagg::Step,
        expected: crate::secagg::Step,
    },
    #[error("it names {} as its sender", hex::encode(&claimed[..4]))]
    ImpersonatedSender { claimed: AgentId },
    #[error("it involves {}, which is not its neighbour in this round", hex::encode(&agent[..4]))]
    NotNeighbour { agent: AgentId },
    #[error("its share commitments do not decode or do not match the threshold")]
    BadCommitments,
    #[error("{} sent a public key of low order", hex::encode(&agent[..4]))]
    LowOrderKey { agent: AgentId },
    #[error("it carries {got} shares, its neighbours in the round are {expected}")]
    SharesIncomplete { got: usize, expected: usize },
    #[error("its share of {}'s secret does not match that agent's commitments", hex::encode(&owner[..4]))]
    ForgedShare { owner: AgentId },
    #[error("only {got} neighbours took part, {needed} are needed to recover this agent's secrets")]
    TooFewNeighbours { got: usize, needed: usize },
    #[error("the coordinator listed {got} survivors, the threshold is {needed}")]
    TooFewSurvivors { got: usize, needed: usize },
    #[error("secure aggregation is off for this task")]
    NotSecure,
    #[error("secure aggregation is on for this task: send masked input, not a plain update")]
    PlainUpdate,
    // Buffered aggregation (appended, as above).
    #[error(
        "{staleness} models were made since the one it trained from; the task takes at most {max}"
    )]
    Stale { staleness: u32, max: u32 },
    #[error("its survivor list does not match the round's cohort")]
    BadSurvivorList,
}

#[cfg(feature = "coordinator")]
impl From<FlError> for tonic::Status {
    fn from(e: FlError) -> tonic::Status {
        use tonic::Code;
        let code = match &e {
            FlError::SchemaMismatch { .. }
            | FlError::PolicyExceeded { .. }
            | FlError::TaskNotListed { .. }
            | FlError::UnknownFormat(_)
            | FlError::InvalidTask(_)
            | FlError::UpdateRejected { .. }
            | FlError::ProtocolVersion { .. }
            | FlError::FrameTooLarge { .. }
            | FlError::Malformed(_)
            | FlError::BadChunk { .. }
            | FlError::Model(_)
            | FlError::TaskFile(_)
            | FlError::Validation(_)
            | FlError::HeaderFirst
            | FlError::UploadTooLarge { .. }
            | FlError::UploadSizeMismatch { .. }
            | FlError::TruncatedFrame
            | FlError::Schedule(_)
            | FlError::Unexpected(_) => Code::InvalidArgument,
            FlError::UnknownAgent { .. }
            | FlError::WrongRole { .. }
            | FlError::UseControlPlane
            | FlError::NotJoined(_)
            | FlError::NoClientCertificate => Code::PermissionDenied,
            FlError::NoSuchTask(_) => Code::NotFound,
            FlError::TaskExists(_) => Code::AlreadyExists,
            FlError::NotTraining(_)
            | FlError::TooFewSurvivors { .. }
            | FlError::Unrecoverable { .. } => Code::FailedPrecondition,
            // The ledger's refusal keeps the ledger's code: a quorum lost is
            // UNAVAILABLE, a refused signer is not.
            FlError::Ledger(l) => tonic::Status::from(l.clone()).code(),
            FlError::Stopped
            | FlError::Connection(_)
            | FlError::Connect(_)
            | FlError::ConnectionClosed
            | FlError::Read(_)
            | FlError::NoSession => Code::Unavailable,
            FlError::Refused(_)
            | FlError::ModelNotOffered
            | FlError::BadRewardProof(_)
            | FlError::Paused(_) => Code::FailedPrecondition,
            FlError::ModelFileChanged(_)
            | FlError::Store(_)
            | FlError::Io(_)
            | FlError::Tls(_)
            | FlError::Worker(_) => Code::Internal,
            // A refusal passed on keeps the node's code.
            FlError::Rpc(s) => s.code(),
            FlError::File { .. }
            | FlError::BadTaskFile { .. }
            | FlError::Identity { .. }
            | FlError::WeightsForEvaluation
            | FlError::ModelDamaged(_) => Code::InvalidArgument,
            FlError::WatchEnded(_) => Code::Unavailable,
        };
        tonic::Status::new(code, e.to_string())
    }
}

#[cfg(feature = "coordinator")]
macro_rules! store_err {
    ($($t:ty),*) => {$(
        impl From<$t> for FlError {
            fn from(e: $t) -> Self {
                FlError::Store(e.to_string())
            }
        }
    )*};
}
#[cfg(feature = "coordinator")]
store_err!(
    redb::Error,
    redb::DatabaseError,
    redb::TransactionError,
    redb::TableError,
    redb::StorageError,
    redb::CommitError
);

#[cfg(test)]
mod tests {
    use super::*;
    use yilian_ledger::LedgerError;

    #[test]
    fn a_ledger_refusal_keeps_the_ledgers_code() {
        let code = |l| tonic::Status::from(FlError::Ledger(l)).code();
        assert_eq!(
            code(LedgerError::NoQuorum { millis: 5 }),
            tonic::Code::Unavailable
        );
        assert_eq!(
            code(LedgerError::SignerRevoked),
            tonic::Code::Unauthenticated
        );
        assert_eq!(
            code(LedgerError::InsufficientBalance {
                balance: 1,
                amount: 2
            }),
            tonic::Code::FailedPrecondition
        );
    }
}
