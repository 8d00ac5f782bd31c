use crate::AgentId;

/// Everything the federated layer refuses or fails at.
#[derive(Debug, thiserror::Error)]
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
    #[error("the stored ONNX model of evaluation {0} does not match its recorded hash")]
    ModelFileChanged(String),
    #[error("model: {0}")]
    Model(#[from] yilian_models::ModelError),
    #[error("task file: {0}")]
    TaskFile(#[from] toml::de::Error),
    #[error("transport: {0}")]
    Transport(String),
    #[error("store: {0}")]
    Store(String),
    #[error("I/O: {0}")]
    Io(#[from] std::io::Error),
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
}

macro_rules! store_err {
    ($($t:ty),*) => {$(
        impl From<$t> for FlError {
            fn from(e: $t) -> Self {
                FlError::Store(e.to_string())
            }
        }
    )*};
}
store_err!(
    redb::Error,
    redb::DatabaseError,
    redb::TransactionError,
    redb::TableError,
    redb::StorageError,
    redb::CommitError
);
