//! The multi-party Groth16 setup ceremony, sans-IO: every step is a pure
//! function from the previous state (and, to contribute, a random source)
//! to the next, so that anyone can re-run the whole transcript's checks.
//!
//! Two phases, as in Bowe, Gabizon and Miers, "Scalable Multi-party
//! Computation for zk-SNARK Parameters in the Random Beacon Model" (BGM17):
//!
//! 1. [`phase1`]: powers of tau. Each contributor multiplies the secrets
//!    τ, α, β of the [`phase1::Accumulator`] by fresh ones of its own and
//!    proves, with a Schnorr proof of knowledge bound to the transcript, that
//!    it knows what it multiplied by; pairing checks (batched with random
//!    linear combinations) show the result is well formed.
//! 2. [`derive`] turns the final accumulator and a circuit into an initial
//!    Groth16 proving key with δ = 1, deterministically, computing
//!    arkworks' QAP (`LibsnarkReduction`) in the exponent, so that anyone
//!    can recompute it and the standard arkworks prover uses it.
//! 3. [`phase2`]: each contributor multiplies δ by a fresh secret, with the
//!    same kind of proof.
//!
//! The key is sound if any one contributor of each phase destroyed its
//! secrets. [`transcript_hash`] chains every state: the hash of a
//! contribution commits to all before it, and is what the ledger anchors.

pub mod derive;
pub mod phase1;
pub mod phase2;
pub mod ptau;
pub mod transcript;

use crate::RandomSource;
use ark_bn254::{Bn254, Fr, G1Affine, G1Projective, G2Affine};
use ark_ec::pairing::Pairing;
use ark_ec::{AffineRepr, CurveGroup, PrimeGroup, VariableBaseMSM};
use ark_ff::{PrimeField, UniformRand, Zero};
use ark_serialize::{CanonicalDeserialize, CanonicalSerialize};
use sha2::{Digest, Sha256};

/// Why a contribution or a transcript is refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CeremonyError {
    #[error("contribution {index}: {what} is not computed from the previous state")]
    BadUpdate { index: usize, what: &'static str },
    #[error("contribution {index}: the proof of knowledge of its {what} secret does not verify")]
    BadKnowledge { index: usize, what: &'static str },
    #[error("contribution {index}: {what} changed, which this phase may not change")]
    Changed { index: usize, what: &'static str },
    #[error("contribution {index}: {what} has the wrong length")]
    Shape { index: usize, what: &'static str },
    #[error("the accumulator holds powers for {have} constraints; the circuit needs {need}")]
    TooSmall { have: usize, need: usize },
    #[error("the circuit cannot be synthesised: {0}")]
    Circuit(String),
}

/// `H(previous ‖ state)`: the transcript hash after a state, each state's
/// canonical compressed encoding. The first state chains from zero.
pub fn transcript_hash<T: CanonicalSerialize>(previous: &[u8; 32], state: &T) -> [u8; 32] {
    let mut bytes = Vec::new();
    state
        .serialize_compressed(&mut bytes)
        .expect("serialising to memory cannot fail");
    transcript_hash_encoded(previous, &bytes)
}

/// [`transcript_hash`] of a state already in its canonical encoding (a
/// transcript file), without decoding it.
pub fn transcript_hash_encoded(previous: &[u8; 32], encoded: &[u8]) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(b"yilian/ceremony/v1\0");
    h.update(previous);
    h.update(encoded);
    h.finalize().into()
}

/// A Schnorr proof of knowledge of `x` with `after = x · before` in G1, bound
/// to the transcript so it cannot be replayed in another ceremony or place.
#[derive(Clone, Debug, PartialEq, Eq, CanonicalSerialize, CanonicalDeserialize)]
pub struct Knowledge {
    commitment: G1Affine,
    response: Fr,
}

fn challenge(context: &[u8; 32], before: &G1Affine, after: &G1Affine, r: &G1Affine) -> Fr {
    let mut bytes = Vec::new();
    for p in [before, after, r] {
        p.serialize_compressed(&mut bytes).expect("to memory");
    }
    // 512 bits reduced: no bias worth the name.
    let wide: Vec<u8> = [0u8, 1]
        .iter()
        .flat_map(|i| {
            Sha256::new()
                .chain_update(b"yilian/ceremony/knowledge/v1\0")
                .chain_update([*i])
                .chain_update(context)
                .chain_update(&bytes)
                .finalize()
        })
        .collect();
    Fr::from_le_bytes_mod_order(&wide)
}

impl Knowledge {
    pub fn prove(
        x: &Fr,
        before: &G1Affine,
        after: &G1Affine,
        context: &[u8; 32],
        rng: &mut dyn RandomSource,
    ) -> Knowledge {
        let k = Fr::rand(rng);
        let commitment = (*before * k).into_affine();
        let c = challenge(context, before, after, &commitment);
        Knowledge {
            commitment,
            response: k + c * x,
        }
    }

    pub fn verify(&self, before: &G1Affine, after: &G1Affine, context: &[u8; 32]) -> bool {
        let c = challenge(context, before, after, &self.commitment);
        *before * self.response == self.commitment.into_group() + *after * c
    }
}

/// Whether `b1 / a1 = b2 / a2` in the exponent: e(a1, b2) = e(b1, a2).
pub(crate) fn same_ratio(a1: G1Affine, b1: G1Affine, a2: G2Affine, b2: G2Affine) -> bool {
    Bn254::multi_pairing([a1, (-b1.into_group()).into_affine()], [b2, a2]).is_zero()
}

/// Random linear combinations `(Σ ρᵢ xs[i], Σ ρᵢ ys[i])`, which pass
/// [`same_ratio`] for a random ρ only if (overwhelmingly) every pair does.
pub(crate) fn combine<G: VariableBaseMSM<ScalarField = Fr>>(
    xs: &[G::MulBase],
    ys: &[G::MulBase],
    rng: &mut dyn RandomSource,
) -> (G, G) {
    let rho: Vec<Fr> = (0..xs.len()).map(|_| Fr::rand(rng)).collect();
    (G::msm_unchecked(xs, &rho), G::msm_unchecked(ys, &rho))
}

/// A fresh secret: never zero, so a contribution cannot erase the others.
pub(crate) fn secret(rng: &mut dyn RandomSource) -> Fr {
    loop {
        let x = Fr::rand(rng);
        if !x.is_zero() {
            return x;
        }
    }
}

/// `points[i] · scalars[i]`, in parallel, normalised together.
pub(crate) fn scale_each_g1(points: &[G1Affine], scalars: &[Fr]) -> Vec<G1Affine> {
    use rayon::prelude::*;
    let p: Vec<G1Projective> = points
        .par_iter()
        .zip(scalars.par_iter())
        .map(|(p, s)| *p * s)
        .collect();
    G1Projective::normalize_batch(&p)
}

/// Scalar multiplication by the fastest method each group has: arkworks
/// uses the GLV endomorphism for BN254's G1 but not for its G2.
pub(crate) trait Scale: PrimeGroup<ScalarField = Fr> + CurveGroup + Send + Sync {
    fn scale(self, s: &Fr) -> Self;
}

// The concrete types: coherence cannot tell the `G1Projective` and
// `G2Projective` aliases (projections through `BnConfig`) apart.
impl Scale for ark_ec::short_weierstrass::Projective<ark_bn254::g1::Config> {
    fn scale(self, s: &Fr) -> Self {
        self * s
    }
}

impl Scale for ark_ec::short_weierstrass::Projective<ark_bn254::g2::Config> {
    fn scale(self, s: &Fr) -> Self {
        use ark_ec::scalar_mul::glv::GLVConfig;
        ark_bn254::g2::Config::glv_mul_projective(self, *s)
    }
}

/// The ceremony's thread pool: arkworks' MSMs inside rayon jobs that steal
/// other jobs nest deeply, past the default 2 MiB stacks.
pub(crate) fn pool() -> &'static rayon::ThreadPool {
    static POOL: std::sync::OnceLock<rayon::ThreadPool> = std::sync::OnceLock::new();
    POOL.get_or_init(|| {
        rayon::ThreadPoolBuilder::new()
            .thread_name(|i| format!("ceremony-{i}"))
            .stack_size(64 << 20)
            .build()
            .expect("threads start")
    })
}

pub(crate) fn g1() -> G1Affine {
    ark_bn254::G1Projective::generator().into_affine()
}

pub(crate) fn g2() -> G2Affine {
    ark_bn254::G2Projective::generator().into_affine()
}

#[cfg(test)]
mod tests {
    use super::*;
    use ark_std::rand::SeedableRng;

    #[test]
    fn knowledge_proofs_bind_the_secret_and_the_context() {
        let mut rng = ark_std::rand::rngs::StdRng::seed_from_u64(1);
        let before = (g1() * Fr::from(5u64)).into_affine();
        let x = secret(&mut rng);
        let after = (before * x).into_affine();
        let ctx = [7; 32];
        let k = Knowledge::prove(&x, &before, &after, &ctx, &mut rng);
        assert!(k.verify(&before, &after, &ctx));
        assert!(!k.verify(&before, &after, &[8; 32]), "another transcript");
        let other = (before * (x + Fr::from(1u64))).into_affine();
        assert!(!k.verify(&before, &other, &ctx), "another result");
        let wrong = Knowledge::prove(&(x + Fr::from(1u64)), &before, &after, &ctx, &mut rng);
        assert!(!wrong.verify(&before, &after, &ctx), "without the secret");
    }
}
