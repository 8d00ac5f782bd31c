//! Key generation and key files (arkworks canonical serialization,
//! compressed, checked on load).

use std::path::Path;

use ark_bn254::Bn254;
use ark_groth16::{Groth16, PreparedVerifyingKey, ProvingKey, VerifyingKey};
use ark_serialize::{CanonicalDeserialize, CanonicalSerialize};
use ark_snark::SNARK;
use ark_std::rand::{SeedableRng, rngs::StdRng};
use sha2::{Digest, Sha256};

use yilian_circuits::kyc::{KycCircuit, Shape};

use crate::{Result, ZkError};

/// A CSPRNG for arkworks (which uses rand 0.8), seeded from the OS.
pub fn os_rng() -> StdRng {
    StdRng::from_seed(rand::random())
}

/// Single-party Groth16 setup for the KYC statement of one shape. For
/// development only: see the crate documentation for what a production
/// ceremony needs.
pub fn setup(
    shape: Shape,
    mut rng: &mut dyn crate::RandomSource,
) -> Result<(ProvingKey<Bn254>, VerifyingKey<Bn254>)> {
    Ok(Groth16::<Bn254>::circuit_specific_setup(
        KycCircuit::blank(shape),
        &mut rng,
    )?)
}

pub fn prepare(vk: &VerifyingKey<Bn254>) -> PreparedVerifyingKey<Bn254> {
    ark_groth16::prepare_verifying_key(vk)
}

/// SHA-256 of the compressed verifying key: what the ledger anchors.
pub fn vk_hash(vk: &VerifyingKey<Bn254>) -> [u8; 32] {
    let mut bytes = Vec::new();
    vk.serialize_compressed(&mut bytes)
        .expect("serializing to memory cannot fail");
    Sha256::digest(&bytes).into()
}

pub fn to_bytes<T: CanonicalSerialize>(value: &T) -> Vec<u8> {
    let mut bytes = Vec::new();
    value
        .serialize_compressed(&mut bytes)
        .expect("serializing to memory cannot fail");
    bytes
}

pub fn from_bytes<T: CanonicalDeserialize>(what: &'static str, bytes: &[u8]) -> Result<T> {
    T::deserialize_compressed(bytes).map_err(|e| ZkError::Malformed {
        what,
        detail: e.to_string(),
    })
}

pub fn write_key<T: CanonicalSerialize>(path: &Path, key: &T) -> Result<()> {
    Ok(std::fs::write(path, to_bytes(key))?)
}

pub fn read_proving_key(path: &Path) -> Result<ProvingKey<Bn254>> {
    from_bytes("proving key", &std::fs::read(path)?)
}

pub fn read_verifying_key(path: &Path) -> Result<VerifyingKey<Bn254>> {
    from_bytes("verifying key", &std::fs::read(path)?)
}
