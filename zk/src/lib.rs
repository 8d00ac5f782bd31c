//! Yilian's ZK verification capability: the record and query model, the
//! Poseidon-cipher encryption of customer records, Groth16 (BN254) setup,
//! proving and verifying of the KYC statement of [`yilian_circuits::kyc`],
//! batch verification, key files, and snarkjs-compatible JSON export.
//!
//! A data holder encrypts a [`record::Record`] under a KMS-issued key
//! ([`record::CipherKey`]) and anchors the ciphertext hash and key
//! commitment ([`record::RecordAnchor`]). A verifier names predicates
//! ([`query::Predicate`]); the holder proves the answer ([`prover::prove`]),
//! true or false; anyone checks it against the anchor and the verifying key
//! ([`verifier`]), alone or in batches.
//!
//! On a node ([`service`]) a verifier is answered only under the holder's
//! query grant, within a disclosure budget ([`consent`]); record keys are
//! stored only sealed under the holder's KMS master key. Proofs and keys
//! export as snarkjs JSON ([`snarkjs`]) and as a Solidity verifier
//! ([`solidity`]), both checked by the reference tools in tests.
//!
//! Trusted setup: [`ceremony`] is the members' multi-party setup (phase 1
//! among them or from a public `.ptau`, then phase 2), each contribution
//! proven and anchored on the ledger; the key is sound if any one
//! contributor per phase destroyed its secrets. [`keys::setup`] is a
//! single-party setup whose runner can forge proofs: for development and
//! tests only (a node uses it only with `--insecure-dev-setup`).

#![forbid(unsafe_code)]

pub mod ceremony;
pub mod consent;
pub mod keys;
pub mod prover;
pub mod query;
pub mod record;
pub mod service;
pub mod snarkjs;
pub mod solidity;
mod store;
pub mod verifier;

pub use yilian_circuits::kyc::{KycPublic, PUBLIC_INPUTS, Shape};

/// A cryptographic random source, object-safe. The crate's proving, setup
/// and ceremony functions take `&mut dyn RandomSource` instead of a type
/// parameter, so that they are compiled here, optimised, rather than
/// instantiated anew in each caller: a caller's unoptimised debug build
/// (the CLI, the devnet, other crates' tests) ran them many times slower.
pub trait RandomSource: ark_std::rand::RngCore + ark_std::rand::CryptoRng {}

impl<R: ark_std::rand::RngCore + ark_std::rand::CryptoRng + ?Sized> RandomSource for R {}

impl From<ark_relations::gr1cs::SynthesisError> for ZkError {
    fn from(e: ark_relations::gr1cs::SynthesisError) -> ZkError {
        ZkError::Groth16(e.to_string())
    }
}

/// The statement of records of up to 8 fields, the default where a
/// statement is not named; [`Shape::statement`] names the others.
pub const KYC_STATEMENT: &str = "kyc8-v2";

/// Errors of the ZK crate.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ZkError {
    #[error(transparent)]
    Circuit(#[from] yilian_circuits::CircuitError),
    #[error("record has {0} fields, at most 32 fit the statement")]
    TooManyFields(usize),
    #[error("record has no field named {0:?}")]
    UnknownField(String),
    #[error("field {0:?} is an identifier; only eq and ne apply to it")]
    NotAnInteger(String),
    #[error("the set predicate's members are needed to prove it")]
    SetNotProvided,
    #[error("the query asks about a set whose root differs from the set provided")]
    SetRootMismatch,
    #[error("the claim is false for this record; refusing to prove it")]
    FalseClaim,
    #[error("nonce must be below 2^128")]
    NonceOutOfRange,
    #[error("proof does not verify")]
    InvalidProof,
    #[error("proof was made for another record, ciphertext or key than the anchor")]
    AnchorMismatch,
    #[error("verifying key hash differs from the one in force")]
    VerifyingKeyMismatch,
    #[error("malformed {what}: {detail}")]
    Malformed { what: &'static str, detail: String },
    #[error("groth16: {0}")]
    Groth16(String),
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
    #[error("role `{role}` may not {action}")]
    WrongRole { role: String, action: &'static str },
    #[error("unknown record `{0}`")]
    UnknownRecord(String),
    #[error("record `{0}` is registered by another data holder")]
    NotRecordHolder(String),
    #[error("no set with root {0} is registered; the data holder must register it first")]
    UnknownSet(String),
    #[error("unknown statement `{0}` (the statements are kyc8-v2, kyc16-v2 and kyc32-v2)")]
    UnknownStatement(String),
    #[error("record `{record_id}` is not anchored on the ledger as registered: {detail}")]
    NotAnchored { record_id: String, detail: String },
    #[error("bad request: {0}")]
    BadRequest(String),
    #[error("ledger: {0}")]
    Ledger(#[from] yilian_ledger::LedgerError),
    /// Sealing or unsealing a record key in the node's KMS.
    #[error("kms: {0}")]
    Kms(#[from] yilian_kms::KmsError),
    #[error(
        "record `{0}` has no sealed key (it was registered before keys were sealed at rest); its holder must register it again"
    )]
    RecordKeyMissing(String),
    #[error(
        "no ceremony transcript in {}: copy the members' ceremony directory there (after `yilian zk ceremony finish-phase1` and phase-2 contributions), or start the node with --insecure-dev-setup for development",
        .0.display()
    )]
    NoKeys(std::path::PathBuf),
    /// A transcript step no member anchored: the node does not use it.
    #[error(
        "{}: phase {phase} contribution {index} is not anchored on the ledger by a member; use the transcript whose contributions the members anchored with `yilian zk ceremony contribute`",
        dir.display()
    )]
    CeremonyNotAnchored {
        dir: std::path::PathBuf,
        phase: u8,
        index: u32,
    },
    /// A phase that fewer distinct admitted members contributed to than
    /// the node requires (a key one member made alone could be forged).
    #[error(
        "{}: phase {phase} has contributions from {have} distinct admitted members, at least {need} must contribute",
        dir.display()
    )]
    CeremonyTooFewMembers {
        dir: std::path::PathBuf,
        phase: u8,
        have: usize,
        need: usize,
    },
    #[error("powers-of-tau file: {0}")]
    Ptau(#[from] ceremony::ptau::PtauError),
    /// A setup ceremony's contribution or transcript that does not verify.
    #[error("ceremony: {0}")]
    Ceremony(#[from] ceremony::CeremonyError),
    /// A query or grant the consent rules refuse.
    #[error("refused: {0}")]
    Refused(#[from] consent::Refusal),
    /// The KMS refused a query's grant: unknown, another verifier's, not
    /// yet valid, expired, used up or revoked.
    #[error("refused: {0}")]
    GrantRefused(yilian_kms::KmsError),
    #[error("storage: {0}")]
    Storage(String),
    #[error("stored data is corrupt: {0}")]
    Corrupt(String),
}

impl From<ZkError> for tonic::Status {
    fn from(e: ZkError) -> tonic::Status {
        use ZkError::*;
        use tonic::Code;
        use yilian_circuits::CircuitError as C;
        let message = e.to_string();
        let code = match e {
            WrongRole { .. } | NotRecordHolder(_) | Refused(_) | GrantRefused(_) => {
                Code::PermissionDenied
            }
            UnknownRecord(_) | UnknownStatement(_) => Code::NotFound,
            TooManyFields(_)
            | UnknownField(_)
            | NotAnInteger(_)
            | NonceOutOfRange
            | Malformed { .. }
            | Ptau(_)
            | BadRequest(_)
            | InvalidProof => Code::InvalidArgument,
            Circuit(c) => match c {
                // A set the holder holds does not answer for this value.
                C::MissingSetPath => Code::FailedPrecondition,
                C::UnsupportedWidth(_) => Code::Internal,
                _ => Code::InvalidArgument,
            },
            SetNotProvided
            | SetRootMismatch
            | UnknownSet(_)
            | FalseClaim
            | AnchorMismatch
            | VerifyingKeyMismatch
            | NotAnchored { .. }
            | RecordKeyMissing(_)
            | NoKeys(_)
            | CeremonyNotAnchored { .. }
            | CeremonyTooFewMembers { .. }
            | Ceremony(_) => Code::FailedPrecondition,
            // The ledger's and the KMS's own mappings: a refused anchor keeps
            // its code, a sealed KMS is Unavailable, a wrapping key the holder
            // does not own is PermissionDenied.
            Ledger(l) => return tonic::Status::from(l),
            Kms(k) => return tonic::Status::from(k),
            Groth16(_) | Io(_) | Storage(_) | Corrupt(_) => Code::Internal,
        };
        metrics::counter!("yilian_zk_refusals_total", "code" => format!("{code:?}")).increment(1);
        tonic::Status::new(code, message)
    }
}

macro_rules! redb_err {
    ($($t:ty),*) => {$(
        impl From<$t> for ZkError {
            fn from(e: $t) -> Self { ZkError::Storage(e.to_string()) }
        }
    )*};
}
redb_err!(
    redb::Error,
    redb::DatabaseError,
    redb::TransactionError,
    redb::TableError,
    redb::StorageError,
    redb::CommitError
);

pub type Result<T, E = ZkError> = std::result::Result<T, E>;

/// A field element as the 32-byte little-endian encoding the ledger and the
/// KMS use for anchors.
pub fn fr_to_bytes(x: &ark_bn254::Fr) -> [u8; 32] {
    use ark_ff::{BigInteger, PrimeField};
    x.into_bigint()
        .to_bytes_le()
        .try_into()
        .expect("BN254 Fr encodes in 32 bytes")
}

/// Parses a canonical 32-byte little-endian field element.
pub fn fr_from_bytes(bytes: &[u8; 32]) -> Result<ark_bn254::Fr> {
    use ark_ff::{BigInteger, PrimeField};
    let x = ark_bn254::Fr::from_le_bytes_mod_order(bytes);
    if x.into_bigint().to_bytes_le() != bytes {
        return Err(ZkError::Malformed {
            what: "field element",
            detail: "not canonical".into(),
        });
    }
    Ok(x)
}
