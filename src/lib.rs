//! The `yilian` binary's wiring: a network's data directory and admin
//! operations ([`network`]), the node process ([`node`]), the local
//! demonstration network ([`devnet`]) and the client commands ([`cli`]).
//! The capabilities live in their crates.

pub mod cli;
pub mod devnet;
pub mod explorer;
pub mod network;
pub mod node;
