//! The `yilian` subcommands that talk to a node's services as one admitted
//! identity: `kms` (keys, grants, escrow, audit), `zk` (records, consent,
//! queries, the setup ceremony) and `task` (federated tasks). They live in the binary, so the service
//! crates keep typed errors and no command-line types in their APIs.

pub mod kms;
pub mod progress;
pub mod task;
pub mod zk;
