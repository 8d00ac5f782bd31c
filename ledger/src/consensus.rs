//! What the ledger needs from a consensus engine, and nothing more: order
//! batches of transactions among the members, say who leads, and change who
//! the members are. [`crate::raft`] implements it on openraft; a BFT engine
//! could implement it later without the ledger's users noticing.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::head::SignedTreeHead;
use crate::{LedgerError, Result};

/// A batch of transactions the leader proposes: the unit of replication and
/// of group commit. `timestamp_ms` is the leader's clock, the one time every
/// member checks expiry against, so that all of them decide alike.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Batch {
    pub timestamp_ms: u64,
    /// SignedTransactions in their canonical encoding.
    pub txs: Vec<Vec<u8>>,
}

/// What a transaction of an applied batch came to: its index and whether
/// it was already in the log, or why it was refused.
pub type Outcome = std::result::Result<(u64, bool), LedgerError>;

/// A committed and applied batch's results, in the batch's order.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Applied {
    pub outcomes: Vec<Outcome>,
    /// This member's signed head right after the batch.
    pub head: SignedTreeHead,
}

/// Where this member stands in the consensus.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Status {
    pub id: u64,
    pub is_leader: bool,
    /// The leader's id and peer address, if one is known.
    pub leader: Option<(u64, String)>,
    pub term: u64,
    /// Milliseconds since this member last heard from a leader (or, on the
    /// leader, since a quorum last acknowledged it); `None` if never.
    pub last_contact_ms: Option<u64>,
    /// The voting members by id, with their peer addresses.
    pub voters: BTreeMap<u64, String>,
    /// Why the engine stopped for good (its storage failed), once it has.
    pub halted: Option<String>,
}

impl Status {
    /// True when this member may be behind: it has not heard from a quorum recently.
    pub fn is_stale(&self, after_ms: u64) -> bool {
        self.last_contact_ms.is_none_or(|ms| ms > after_ms)
    }
}

/// A consensus engine ordering [`Batch`]es.
#[tonic::async_trait]
pub trait Consensus: Send + Sync + 'static {
    /// Replicates `batch` to a quorum and returns once this member applied
    /// it. Only the leader may propose; others get [`LedgerError::NotLeader`].
    async fn propose(&self, batch: Batch) -> Result<Applied>;

    fn status(&self) -> Status;

    /// Waits until this member knows a leader, up to `within`.
    async fn wait_for_leader(&self, within: std::time::Duration) -> Option<(u64, String)>;

    /// Makes the voters exactly `voters` (id to peer address), through
    /// joint consensus. Only the leader can; others return `NotLeader`.
    async fn reconfigure(&self, voters: BTreeMap<u64, String>) -> Result<()>;

    async fn shutdown(&self);
}
