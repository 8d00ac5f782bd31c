//! Phase 2, circuit-specific (BGM17 section 7): each contributor multiplies
//! δ by a fresh secret δ', so `δ·G1`, `δ·G2` are multiplied by δ' and the
//! H and L queries (which carry 1/δ) divided by it. Nothing else changes.

use ark_bn254::{Bn254, G1Affine, G1Projective, G2Affine};
use ark_ec::{AffineRepr, CurveGroup};
use ark_ff::Field;
use ark_groth16::ProvingKey;
use ark_serialize::{CanonicalDeserialize, CanonicalSerialize};

use super::{CeremonyError, Knowledge, combine, same_ratio, scale_each_g1, secret};
use crate::RandomSource;

/// What a contributor publishes beside the new key.
#[derive(Clone, Debug, PartialEq, Eq, CanonicalSerialize, CanonicalDeserialize)]
pub struct Contribution {
    pub delta: Knowledge,
}

/// Multiplies δ by a fresh secret, which is dropped (zeroized) on return.
/// `transcript` is the transcript hash of `pk`.
pub fn contribute(
    pk: &ProvingKey<Bn254>,
    transcript: &[u8; 32],
    rng: &mut dyn RandomSource,
) -> (ProvingKey<Bn254>, Contribution) {
    let mut d = secret(rng);
    let mut d_inv = d.inverse().expect("secrets are never zero");
    let mut next = pk.clone();
    next.delta_g1 = (pk.delta_g1 * d).into_affine();
    next.vk.delta_g2 = (pk.vk.delta_g2 * d).into_affine();
    next.h_query = scale_each_g1(&pk.h_query, &vec![d_inv; pk.h_query.len()]);
    next.l_query = scale_each_g1(&pk.l_query, &vec![d_inv; pk.l_query.len()]);
    let delta = Knowledge::prove(&d, &pk.delta_g1, &next.delta_g1, transcript, rng);
    zeroize::Zeroize::zeroize(&mut d);
    zeroize::Zeroize::zeroize(&mut d_inv);
    (next, Contribution { delta })
}

/// Checks that `after` is `before` with δ multiplied by a secret its
/// contributor knows. `index` names the contribution in errors.
pub fn verify(
    before: &ProvingKey<Bn254>,
    after: &ProvingKey<Bn254>,
    contribution: &Contribution,
    transcript: &[u8; 32],
    index: usize,
    rng: &mut dyn RandomSource,
) -> Result<(), CeremonyError> {
    let changed = |what| CeremonyError::Changed { index, what };
    let bad = |what| CeremonyError::BadUpdate { index, what };
    let vk = (&before.vk, &after.vk);
    if vk.0.alpha_g1 != vk.1.alpha_g1
        || vk.0.beta_g2 != vk.1.beta_g2
        || vk.0.gamma_g2 != vk.1.gamma_g2
        || vk.0.gamma_abc_g1 != vk.1.gamma_abc_g1
    {
        return Err(changed("the verifying key apart from delta"));
    }
    if before.beta_g1 != after.beta_g1
        || before.a_query != after.a_query
        || before.b_g1_query != after.b_g1_query
        || before.b_g2_query != after.b_g2_query
    {
        return Err(changed("the A or B query"));
    }
    if before.h_query.len() != after.h_query.len() || before.l_query.len() != after.l_query.len() {
        return Err(CeremonyError::Shape {
            index,
            what: "the H or L query",
        });
    }
    if after.delta_g1.is_zero() {
        return Err(bad("delta"));
    }
    if !contribution
        .delta
        .verify(&before.delta_g1, &after.delta_g1, transcript)
    {
        return Err(CeremonyError::BadKnowledge {
            index,
            what: "delta",
        });
    }
    if !same_ratio(
        before.delta_g1,
        after.delta_g1,
        before.vk.delta_g2,
        after.vk.delta_g2,
    ) {
        return Err(bad("delta in G2"));
    }
    // after = before / δ': e(after, δ_after) = e(before, δ_before).
    for (what, b, a) in [
        ("the H query", &before.h_query, &after.h_query),
        ("the L query", &before.l_query, &after.l_query),
    ] {
        let (sb, sa): (G1Projective, G1Projective) = combine(b, a, rng);
        if !ratio_inverse(
            sa.into_affine(),
            sb.into_affine(),
            before.vk.delta_g2,
            after.vk.delta_g2,
        ) {
            return Err(bad(what));
        }
    }
    Ok(())
}

/// Whether `a · δ_after = b · δ_before` in the exponent.
fn ratio_inverse(a: G1Affine, b: G1Affine, delta_before: G2Affine, delta_after: G2Affine) -> bool {
    same_ratio(b, a, delta_after, delta_before)
}

/// The δ contributions are the only difference: a fresh key has δ = 1.
pub fn is_fresh(pk: &ProvingKey<Bn254>) -> bool {
    pk.delta_g1 == super::g1() && pk.vk.delta_g2 == super::g2()
}
