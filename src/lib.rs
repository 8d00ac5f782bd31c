//! The `yilian` binary's wiring: a network's data directory and admin
//! operations ([`network`]), the node process ([`node`]) and the local
//! demonstration network ([`devnet`]). The capabilities live in their crates.

pub mod devnet;
pub mod network;
pub mod node;
