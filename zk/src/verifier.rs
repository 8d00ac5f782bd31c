//! Verification: single proofs, batches, and the check against the ledger's
//! record anchor.

use ark_bn254::{Bn254, Fr, G1Affine, G1Projective};
use ark_ec::{AffineRepr, CurveGroup, VariableBaseMSM, pairing::Pairing};
use ark_ff::{PrimeField, Zero};
use ark_groth16::{Groth16, PreparedVerifyingKey, Proof};
use ark_std::rand::RngCore;

use yilian_circuits::kyc::{KycPublic, identifier};

use crate::record::RecordAnchor;
use crate::{Result, ZkError, fr_to_bytes};

/// Verifies one proof for raw public inputs.
pub fn verify_inputs(
    pvk: &PreparedVerifyingKey<Bn254>,
    proof: &Proof<Bn254>,
    inputs: &[Fr],
) -> Result<()> {
    if inputs.len() + 1 != pvk.vk.gamma_abc_g1.len() {
        return Err(ZkError::Malformed {
            what: "public inputs",
            detail: format!("{} inputs", inputs.len()),
        });
    }
    match Groth16::<Bn254>::verify_proof(pvk, proof, inputs) {
        Ok(true) => Ok(()),
        Ok(false) => Err(ZkError::InvalidProof),
        Err(e) => Err(ZkError::Groth16(e.to_string())),
    }
}

/// Verifies a KYC proof and returns the answer it proves.
pub fn verify(
    pvk: &PreparedVerifyingKey<Bn254>,
    proof: &Proof<Bn254>,
    public: &KycPublic,
) -> Result<bool> {
    verify_inputs(pvk, proof, &public.to_inputs())?;
    Ok(public.result)
}

/// Checks that the public inputs name the anchored record, ciphertext and
/// key (a proof about another record or ciphertext is refused here).
pub fn check_anchor(public: &KycPublic, anchor: &RecordAnchor) -> Result<()> {
    let same = public.record_binding == identifier(&anchor.record_id)
        && fr_to_bytes(&public.ciphertext_hash) == anchor.ciphertext_hash
        && fr_to_bytes(&public.key_commitment) == anchor.key_commitment;
    if same {
        Ok(())
    } else {
        Err(ZkError::AnchorMismatch)
    }
}

/// Verifies a proof against the anchor and returns the proven answer.
pub fn verify_against_anchor(
    pvk: &PreparedVerifyingKey<Bn254>,
    proof: &Proof<Bn254>,
    public: &KycPublic,
    anchor: &RecordAnchor,
) -> Result<bool> {
    check_anchor(public, anchor)?;
    verify(pvk, proof, public)
}

/// Verifies many proofs for one verifying key at once: with random 128-bit
/// `r_i`, checks
///
/// ```text
/// prod e(r_i A_i, B_i) * e(sum r_i X_i, -gamma) * e(sum r_i C_i, -delta) * e(-(sum r_i) alpha, beta) = 1
/// ```
///
/// in one multi-Miller loop and one final exponentiation, where the input
/// commitments `sum r_i X_i` collapse into a single MSM over the key's
/// `gamma_abc` points. A batch with any invalid proof fails except with
/// probability about 2^-128.
pub fn batch_verify(
    pvk: &PreparedVerifyingKey<Bn254>,
    batch: &[(Proof<Bn254>, Vec<Fr>)],
    rng: &mut dyn RngCore,
) -> Result<()> {
    let vk = &pvk.vk;
    if batch.is_empty() {
        return Ok(());
    }
    if batch
        .iter()
        .any(|(_, inputs)| inputs.len() + 1 != vk.gamma_abc_g1.len())
    {
        return Err(ZkError::Malformed {
            what: "public inputs",
            detail: "wrong count in batch".into(),
        });
    }
    let r: Vec<Fr> = batch
        .iter()
        .map(|_| {
            let mut bytes = [0u8; 16];
            rng.fill_bytes(&mut bytes);
            Fr::from(u128::from_le_bytes(bytes))
        })
        .collect();
    let r_sum: Fr = r.iter().sum();
    // Coefficient of gamma_abc[j]: sum_i r_i * x_ij (x_i0 = 1).
    let mut coeffs = vec![Fr::zero(); vk.gamma_abc_g1.len()];
    coeffs[0] = r_sum;
    for ((_, inputs), ri) in batch.iter().zip(&r) {
        for (c, x) in coeffs[1..].iter_mut().zip(inputs) {
            *c += *ri * x;
        }
    }
    let inputs_acc = G1Projective::msm(&vk.gamma_abc_g1, &coeffs).expect("lengths match");
    let cs: Vec<G1Affine> = batch.iter().map(|(p, _)| p.c).collect();
    let c_acc = G1Projective::msm(&cs, &r).expect("lengths match");
    let alpha_acc = vk.alpha_g1.into_group() * (-r_sum);

    let mut g1: Vec<<Bn254 as Pairing>::G1Prepared> = Vec::with_capacity(batch.len() + 3);
    let mut g2: Vec<<Bn254 as Pairing>::G2Prepared> = Vec::with_capacity(batch.len() + 3);
    let scaled_a: Vec<G1Projective> = batch
        .iter()
        .zip(&r)
        .map(|((p, _), ri)| p.a.mul_bigint(ri.into_bigint()))
        .collect();
    for (a, (p, _)) in G1Projective::normalize_batch(&scaled_a)
        .into_iter()
        .zip(batch)
    {
        g1.push(a.into());
        g2.push(p.b.into());
    }
    let tail = G1Projective::normalize_batch(&[inputs_acc, c_acc, alpha_acc]);
    g1.extend(tail.into_iter().map(Into::into));
    g2.push(pvk.gamma_g2_neg_pc.clone());
    g2.push(pvk.delta_g2_neg_pc.clone());
    g2.push(vk.beta_g2.into());
    let product = Bn254::multi_miller_loop(g1, g2);
    match Bn254::final_exponentiation(product) {
        Some(out) if out.is_zero() => Ok(()),
        _ => Err(ZkError::InvalidProof),
    }
}
