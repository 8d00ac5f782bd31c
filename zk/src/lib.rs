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
//! Trusted setup: [`keys::setup`] is a single-party setup. Whoever ran it
//! knows the toxic waste and can forge proofs, so it is for development and
//! tests only. Production needs a multi-party ceremony (a powers-of-tau
//! phase 1 such as the Perpetual Powers of Tau, then a circuit-specific
//! phase 2 with contributions from several independent organisations, e.g.
//! snarkjs `zkey contribute` with a random beacon), publication of the
//! transcript, and the resulting verifying key's hash anchored on the
//! ledger; the proof stays sound if any one contributor destroyed its share.

#![forbid(unsafe_code)]

pub mod cli;
pub mod devnet;
pub mod keys;
pub mod prover;
pub mod query;
pub mod record;
pub mod snarkjs;
pub mod verifier;

pub use yilian_circuits::kyc::{KycPublic, PUBLIC_INPUTS};

/// The statement name under which verifying keys are anchored.
pub const KYC_STATEMENT: &str = "kyc-v1";

/// Errors of the ZK crate.
#[derive(Debug, thiserror::Error)]
pub enum ZkError {
    #[error(transparent)]
    Circuit(#[from] yilian_circuits::CircuitError),
    #[error("record has {0} fields, at most 8 fit the statement")]
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
}

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
