//! The data holder's prover: decrypts its own record, evaluates the query,
//! and proves the answer, true or false.

use ark_bn254::{Bn254, Fr};
use ark_groth16::{Groth16, Proof, ProvingKey};
use ark_snark::SNARK;

use yilian_circuits::kyc::{KycCircuit, KycPublic, KycWitness, Query, SetOp};
use yilian_circuits::set::{LowLeafPath, SortedSet};

use crate::record::{CipherKey, EncryptedRecord};
use crate::{Result, ZkError};

/// A proof with the public inputs it proves.
#[derive(Clone, Debug, PartialEq)]
pub struct KycProof {
    pub proof: Proof<Bn254>,
    pub public: KycPublic,
}

/// Builds the statement instance for `query` on `record` (decrypting and
/// evaluating natively first, so a bad key or a missing set is a clear error
/// rather than an invalid proof).
pub fn instance(
    record: &EncryptedRecord,
    key: &CipherKey,
    query: &Query,
    set: Option<&SortedSet>,
) -> Result<KycCircuit> {
    if key.commitment() != record.key_commitment {
        return Err(ZkError::AnchorMismatch);
    }
    let plain = record.decrypt(key)?;
    let set_path = if query.set.op == SetOp::None {
        LowLeafPath::unused()
    } else {
        let set = set.ok_or(ZkError::SetNotProvided)?;
        if set.root() != query.set.root {
            return Err(ZkError::SetRootMismatch);
        }
        set.path(plain[query.set.field as usize])?
    };
    let result = query.evaluate(&plain, Some(&set_path))?;
    let public = KycPublic {
        record_binding: record.binding(),
        ciphertext_hash: record.ciphertext_hash()?,
        key_commitment: record.key_commitment,
        nonce: record.nonce,
        query: *query,
        result,
    };
    Ok(KycCircuit {
        shape: record.shape()?,
        public,
        witness: KycWitness {
            ciphertext: record.ciphertext.clone(),
            key: *key.elements(),
            set_path,
        },
    })
}

/// Proves the query's answer on the record, whichever it is.
pub fn prove(
    pk: &ProvingKey<Bn254>,
    record: &EncryptedRecord,
    key: &CipherKey,
    query: &Query,
    set: Option<&SortedSet>,
    mut rng: &mut dyn crate::RandomSource,
) -> Result<KycProof> {
    let circuit = instance(record, key, query, set)?;
    let public = circuit.public;
    let proof = Groth16::<Bn254>::prove(pk, circuit, &mut rng)
        .map_err(|e| ZkError::Groth16(e.to_string()))?;
    Ok(KycProof { proof, public })
}

/// Proves a claimed answer, refusing when the claim is false.
pub fn prove_claim(
    pk: &ProvingKey<Bn254>,
    record: &EncryptedRecord,
    key: &CipherKey,
    query: &Query,
    set: Option<&SortedSet>,
    claimed: bool,
    mut rng: &mut dyn crate::RandomSource,
) -> Result<KycProof> {
    let circuit = instance(record, key, query, set)?;
    if circuit.public.result != claimed {
        return Err(ZkError::FalseClaim);
    }
    let public = circuit.public;
    let proof = Groth16::<Bn254>::prove(pk, circuit, &mut rng)
        .map_err(|e| ZkError::Groth16(e.to_string()))?;
    Ok(KycProof { proof, public })
}

/// The public inputs as field elements (snarkjs' `public.json` order).
pub fn public_inputs(public: &KycPublic) -> Vec<Fr> {
    public.to_inputs()
}
