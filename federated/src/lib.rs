//! Federated learning for Yilian.
//!
//! Device owners' agents train on their own data and send only model
//! updates; the coordinator runs rounds, combines updates, evaluates the
//! global model on its validation set, scores each agent's contribution and
//! splits the reward budget by it. In a federated evaluation agents instead
//! run an engineer's ONNX model on their data and send only counts, which
//! the coordinator adds up into accuracy, mean loss and a confusion matrix.
//!
//! - [`task`]: what an engineer submits, the data schema agents must match,
//!   what an agent's policy allows;
//! - [`round`]: the sans-IO round state machine ([`RoundMachine`]);
//! - [`buffered`]: FedBuff, buffered asynchronous aggregation, in that machine;
//! - [`evaluation`]: the sans-IO evaluation state machine ([`EvaluationMachine`]);
//! - [`aggregate`]: update validation, FedAvg / FedProx / FedAdam, coordinate
//!   median, trimmed mean, Krum;
//! - [`contribution`]: GTG-Shapley (documented there), exact Shapley, reward split;
//! - [`dp`]: the RDP accountant for client-level DP (subsampled Gaussian);
//! - [`protocol`]: the versioned wire messages, framing and weight chunks;
//! - [`secagg`]: SecAgg+ secure aggregation, sans IO (agent and coordinator sides);
//! - [`secure_round`]: a training round under secure aggregation, in groups;
//! - [`store`]: the redb store that lets a killed coordinator resume;
//! - [`sim`]: in-process drivers with local agents, of the round machine
//!   and of the whole coordinator engine ([`sim::Network`]), for tests;
//! - [`coordinator`]: the sans-IO coordinator engine
//!   ([`coordinator::Engine`]: tasks, evaluations, sessions) and its QUIC
//!   driver with mutual TLS; it also serves the engineer's gRPC control
//!   plane ([`coordinator::ControlPlane`], [`pb`]);
//! - [`agent`]: the device's side, sans IO ([`agent::AgentMachine`]), and
//!   its QUIC driver, over [`wire`].
//!
//! A device agent needs only the round logic, the protocol and the agent;
//! the `coordinator` feature (on by default) adds the coordinator, its
//! store, its control plane, the simulation drivers and the control-plane client
//! ([`client`]),
//! and with them redb, tonic and the ledger's node. `yilian-agent` builds
//! without it.

pub mod agent;
pub mod aggregate;
pub mod buffered;
#[cfg(feature = "coordinator")]
pub mod client;
pub mod contribution;
#[cfg(feature = "coordinator")]
pub mod coordinator;
pub mod dp;
mod error;
pub mod evaluation;
pub mod protocol;
pub mod round;
pub mod secagg;
pub mod secure_round;
/// The gRPC control plane's messages (`proto/federated.proto`).
#[cfg(feature = "coordinator")]
pub mod pb {
    tonic::include_proto!("yilian.federated.v1");

    /// `federated.proto` as a `FileDescriptorSet`, for gRPC reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] =
        tonic::include_file_descriptor_set!("federated_descriptor");
}
pub mod schedule;
#[cfg(feature = "coordinator")]
pub mod sim;
#[cfg(feature = "coordinator")]
pub mod store;
pub mod task;
pub mod wire;

pub use aggregate::Update;
pub use error::{FlError, RejectReason};
pub use evaluation::{
    EvaluationEffect, EvaluationMachine, EvaluationPhase, EvaluationResult, EvaluationState,
};
pub use round::{AgentId, Effect, Phase, RoundMachine, RoundRecord, TaskState};
#[cfg(feature = "coordinator")]
pub use store::Store;
pub use task::{
    AgentPolicy, Aggregation, DataSchema, EvaluationSpec, Privacy, Robust, SecAggSettings,
    Strategy, TaskFile, TaskKind, TaskSpec,
};
