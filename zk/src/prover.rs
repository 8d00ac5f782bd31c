//! The data holder's prover: decrypts its own record, evaluates the query,
//! and proves the answer, true or false.

use ark_bn254::{Bn254, Fr};
use ark_ff::UniformRand;
use ark_groth16::{Groth16, Proof, ProvingKey};
use ark_relations::gr1cs::{
    ConstraintSynthesizer, ConstraintSystem, ConstraintSystemRef, OptimizationGoal,
    R1CS_PREDICATE_LABEL, SynthesisError, SynthesisMode,
};
use ark_relations::utils::matrix::Matrix;
use ark_snark::SNARK;

use yilian_circuits::kyc::{KycCircuit, KycPublic, KycWitness, Query, SetOp, Shape};
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
    let proof = Groth16::<Bn254>::prove(pk, circuit, &mut rng)?;
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
    let proof = Groth16::<Bn254>::prove(pk, circuit, &mut rng)?;
    Ok(KycProof { proof, public })
}

/// A statement's R1CS, synthesised once in setup mode: the constraint
/// matrices and sizes that [`Prover`] proves from and the ceremony's
/// [`crate::ceremony::derive::Qap`] derives its key from.
pub struct Statement {
    pub(crate) matrices: Vec<Matrix<Fr>>,
    pub(crate) num_instance: usize,
    pub(crate) num_witness: usize,
    pub(crate) num_constraints: usize,
}

impl Statement {
    /// The only generic step: the circuit's own synthesis. Everything after
    /// it is compiled here, optimised, whatever the caller's build.
    pub fn of<C: ConstraintSynthesizer<Fr>>(circuit: C) -> Result<Statement, SynthesisError> {
        let cs = ConstraintSystem::new_ref();
        cs.set_optimization_goal(OptimizationGoal::Constraints);
        cs.set_mode(SynthesisMode::Setup);
        circuit.generate_constraints(cs.clone())?;
        Statement::from_setup(cs)
    }

    /// The KYC statement of records of `shape`.
    pub fn kyc(shape: Shape) -> Result<Statement, SynthesisError> {
        Statement::of(KycCircuit::blank(shape))
    }

    fn from_setup(cs: ConstraintSystemRef<Fr>) -> Result<Statement, SynthesisError> {
        cs.finalize();
        let matrices = cs
            .to_matrices()?
            .remove(R1CS_PREDICATE_LABEL)
            .ok_or(SynthesisError::PredicateNotFound)?;
        Ok(Statement {
            matrices,
            num_instance: cs.num_instance_variables(),
            num_witness: cs.num_witness_variables(),
            num_constraints: cs.num_constraints(),
        })
    }
}

/// A statement ready to prove: its proving key and its [`Statement`], so
/// that each proof only computes its witness. Stock arkworks builds the
/// matrices again for every proof ([`prove`] does so); the proof is the
/// same kind either way, checked by the same verifying key.
pub struct Prover {
    pk: ProvingKey<Bn254>,
    shape: Shape,
    statement: std::sync::Arc<Statement>,
}

impl Prover {
    pub fn new(pk: ProvingKey<Bn254>, shape: Shape) -> Result<Prover> {
        let statement = Statement::kyc(shape)?;
        Prover::with_statement(pk, shape, statement.into())
    }

    /// A prover of `shape` from its statement synthesised already
    /// ([`Statement::kyc`]).
    pub fn with_statement(
        pk: ProvingKey<Bn254>,
        shape: Shape,
        statement: std::sync::Arc<Statement>,
    ) -> Result<Prover> {
        if pk.a_query.len() != statement.num_instance + statement.num_witness {
            return Err(ZkError::Groth16(format!(
                "the proving key is not {}'s",
                shape.statement()
            )));
        }
        Ok(Prover {
            pk,
            shape,
            statement,
        })
    }

    /// Proves the query's answer on the record, whichever it is.
    pub fn prove(
        &self,
        record: &EncryptedRecord,
        key: &CipherKey,
        query: &Query,
        set: Option<&SortedSet>,
        rng: &mut dyn crate::RandomSource,
    ) -> Result<KycProof> {
        let circuit = instance(record, key, query, set)?;
        if circuit.shape != self.shape {
            return Err(ZkError::Groth16(format!(
                "the record fits {}, this prover is {}'s",
                circuit.shape.statement(),
                self.shape.statement()
            )));
        }
        let public = circuit.public;
        // The witness alone: no constraint is kept, only the assignment.
        let cs = ConstraintSystem::new_ref();
        cs.set_optimization_goal(OptimizationGoal::Constraints);
        cs.set_mode(SynthesisMode::Prove {
            construct_matrices: false,
            generate_lc_assignments: false,
        });
        circuit.generate_constraints(cs.clone())?;
        cs.finalize();
        let full: Vec<Fr> = [cs.instance_assignment()?, cs.witness_assignment()?].concat();
        let (r, s) = (Fr::rand(rng), Fr::rand(rng));
        let st = &self.statement;
        let proof = Groth16::<Bn254>::create_proof_with_reduction_and_matrices(
            &self.pk,
            r,
            s,
            &st.matrices,
            st.num_instance,
            st.num_constraints,
            &full,
        )?;
        Ok(KycProof { proof, public })
    }
}

/// The public inputs as field elements (snarkjs' `public.json` order).
pub fn public_inputs(public: &KycPublic) -> Vec<Fr> {
    public.to_inputs()
}
