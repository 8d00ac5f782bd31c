//! Yilian's key management service.
//!
//! Trust-chain members create named master keys (AES-256-GCM key-encryption
//! keys, or BN254 keys for the ZK capability's Poseidon cipher), generate data
//! keys wrapped under them (envelope encryption, format in
//! `docs/envelope.md`), rotate and retire versions, escrow keys t-of-n to
//! trustees with verifiable (Feldman) shares, and grant readers time-bound,
//! use-bound, context-bound access ("grey disclosure"; a grant-only key is
//! crypto-shredded when its last grant ends). Every operation is recorded on
//! the ledger; a success that cannot be recorded fails.
//!
//! Layers: [`policy`] is the sans-IO core (records and decisions, time
//! injected); [`crypto`], [`envelope`], [`escrow`], [`zk`] and [`seal`] are
//! the cryptography; [`kms`] puts them behind a [`store::KeyStore`] (redb on
//! a node; a conformance suite for any other) and the [`audit::AuditLog`];
//! [`service`] serves it over gRPC with mutual TLS.
#![forbid(unsafe_code)]

pub mod audit;
pub mod client;
pub mod crypto;
pub mod envelope;
pub mod error;
pub mod escrow;
pub mod kms;
pub mod policy;
pub mod seal;
pub mod secret;
pub mod service;
pub mod store;
pub mod zk;

pub use audit::{AuditLog, AuditReceipt, KeyAudit, LedgerAudit};
pub use error::{KmsError, Result};
pub use kms::{Clock, DataKey, KeyInfo, Kms, system_clock};
pub use policy::{Caller, GrantRecord, GrantTerms, KeyKind, Operation};
pub use secret::{Key32, SecretBytes};
pub use store::{KeyStore, MemKeyStore, RedbKeyStore};
