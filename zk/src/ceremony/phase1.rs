//! Phase 1, powers of tau (BGM17 section 6): an accumulator of
//! `τ^i·G1` (i < 2n-1), `τ^i·G2`, `ατ^i·G1`, `βτ^i·G1` (i < n) and `β·G2`,
//! for circuits whose QAP domain has at most n points. Each contributor
//! multiplies τ, α and β by fresh secrets.

use ark_bn254::{Fr, G1Affine, G1Projective, G2Affine, G2Projective};
use ark_ec::{AffineRepr, CurveGroup};
use ark_ff::One;
use ark_serialize::{CanonicalDeserialize, CanonicalSerialize};
use zeroize::Zeroize;

use super::{CeremonyError, Knowledge, Scale, combine, g1, g2, same_ratio, scale_each_g1, secret};
use crate::RandomSource;

#[derive(Clone, Debug, PartialEq, Eq, CanonicalSerialize, CanonicalDeserialize)]
pub struct Accumulator {
    pub tau_g1: Vec<G1Affine>,
    pub tau_g2: Vec<G2Affine>,
    pub alpha_tau_g1: Vec<G1Affine>,
    pub beta_tau_g1: Vec<G1Affine>,
    pub beta_g2: G2Affine,
}

/// What a contributor publishes beside the new accumulator.
#[derive(Clone, Debug, PartialEq, Eq, CanonicalSerialize, CanonicalDeserialize)]
pub struct Contribution {
    pub tau: Knowledge,
    pub alpha: Knowledge,
    pub beta: Knowledge,
}

fn powers(x: Fr, n: usize, start: Fr) -> Vec<Fr> {
    let mut out = Vec::with_capacity(n);
    let mut p = start;
    for _ in 0..n {
        out.push(p);
        p *= x;
    }
    out
}

impl Accumulator {
    /// The starting accumulator for domains of up to `n` points: every
    /// secret 1, so every element a generator. Anyone recomputes it.
    pub fn new(n: usize) -> Accumulator {
        Accumulator {
            tau_g1: vec![g1(); 2 * n - 1],
            tau_g2: vec![g2(); n],
            alpha_tau_g1: vec![g1(); n],
            beta_tau_g1: vec![g1(); n],
            beta_g2: g2(),
        }
    }

    /// Domain points it serves.
    pub fn size(&self) -> usize {
        self.tau_g2.len()
    }

    fn scaled(&self, tau: Fr, alpha: Fr, beta: Fr) -> Accumulator {
        use rayon::prelude::*;
        let n = self.size();
        let t = powers(tau, 2 * n - 1, Fr::one());
        let g2: Vec<G2Projective> = self
            .tau_g2
            .par_iter()
            .zip(t[..n].par_iter())
            .map(|(p, s)| p.into_group().scale(s))
            .collect();
        Accumulator {
            tau_g1: scale_each_g1(&self.tau_g1, &t),
            tau_g2: G2Projective::normalize_batch(&g2),
            alpha_tau_g1: scale_each_g1(&self.alpha_tau_g1, &powers(tau, n, alpha)),
            beta_tau_g1: scale_each_g1(&self.beta_tau_g1, &powers(tau, n, beta)),
            beta_g2: (self.beta_g2 * beta).into_affine(),
        }
    }

    /// An accumulator of known secrets: for agreement tests with arkworks'
    /// own single-party setup, never for keys anyone relies on.
    #[doc(hidden)]
    pub fn from_secrets(n: usize, tau: Fr, alpha: Fr, beta: Fr) -> Accumulator {
        Accumulator::new(n).scaled(tau, alpha, beta)
    }

    /// Multiplies τ, α and β by fresh secrets, dropped (zeroized) on return.
    /// `transcript` is the transcript hash of `self`.
    pub fn contribute(
        &self,
        transcript: &[u8; 32],
        rng: &mut dyn RandomSource,
    ) -> (Accumulator, Contribution) {
        let (mut t, mut a, mut b) = (secret(rng), secret(rng), secret(rng));
        let next = super::pool().install(|| self.scaled(t, a, b));
        let proof = Contribution {
            tau: Knowledge::prove(&t, &self.tau_g1[1], &next.tau_g1[1], transcript, rng),
            alpha: Knowledge::prove(
                &a,
                &self.alpha_tau_g1[0],
                &next.alpha_tau_g1[0],
                transcript,
                rng,
            ),
            beta: Knowledge::prove(
                &b,
                &self.beta_tau_g1[0],
                &next.beta_tau_g1[0],
                transcript,
                rng,
            ),
        };
        t.zeroize();
        a.zeroize();
        b.zeroize();
        (next, proof)
    }

    /// Checks that this accumulator is well formed: every element a power
    /// of the same τ (times α, β where it should be), in both groups.
    pub fn check_shape(
        &self,
        index: usize,
        rng: &mut dyn RandomSource,
    ) -> Result<(), CeremonyError> {
        let n = self.size();
        let bad = |what| CeremonyError::BadUpdate { index, what };
        if n < 2
            || self.tau_g1.len() != 2 * n - 1
            || self.alpha_tau_g1.len() != n
            || self.beta_tau_g1.len() != n
        {
            return Err(CeremonyError::Shape {
                index,
                what: "the accumulator",
            });
        }
        if self.tau_g1[0] != g1() || self.tau_g2[0] != g2() {
            return Err(bad("the first power"));
        }
        if self.tau_g1[1].is_zero()
            || self.alpha_tau_g1[0].is_zero()
            || self.beta_tau_g1[0].is_zero()
        {
            return Err(bad("a secret of zero"));
        }
        let tau2 = self.tau_g2[1];
        if !same_ratio(g1(), self.tau_g1[1], g2(), tau2) {
            return Err(bad("tau in G2"));
        }
        if !same_ratio(g1(), self.beta_tau_g1[0], g2(), self.beta_g2) {
            return Err(bad("beta in G2"));
        }
        // Consecutive elements differ by τ.
        for (what, v) in [
            ("the powers of tau in G1", &self.tau_g1),
            ("alpha times the powers of tau", &self.alpha_tau_g1),
            ("beta times the powers of tau", &self.beta_tau_g1),
        ] {
            let (x, y): (G1Projective, G1Projective) = combine(&v[..v.len() - 1], &v[1..], rng);
            if !same_ratio(x.into_affine(), y.into_affine(), g2(), tau2) {
                return Err(bad(what));
            }
        }
        let (x, y): (G2Projective, G2Projective) =
            combine(&self.tau_g2[..n - 1], &self.tau_g2[1..], rng);
        if !same_ratio(g1(), self.tau_g1[1], x.into_affine(), y.into_affine()) {
            return Err(bad("the powers of tau in G2"));
        }
        Ok(())
    }

    /// Checks that `after` is `self` with τ, α and β multiplied by secrets
    /// its contributor knows, and that it is well formed.
    pub fn verify(
        &self,
        after: &Accumulator,
        proof: &Contribution,
        transcript: &[u8; 32],
        index: usize,
        rng: &mut dyn RandomSource,
    ) -> Result<(), CeremonyError> {
        if after.size() != self.size() {
            return Err(CeremonyError::Shape {
                index,
                what: "the accumulator",
            });
        }
        after.check_shape(index, rng)?;
        for (what, k, b, a) in [
            ("tau", &proof.tau, &self.tau_g1[1], &after.tau_g1[1]),
            (
                "alpha",
                &proof.alpha,
                &self.alpha_tau_g1[0],
                &after.alpha_tau_g1[0],
            ),
            (
                "beta",
                &proof.beta,
                &self.beta_tau_g1[0],
                &after.beta_tau_g1[0],
            ),
        ] {
            if !k.verify(b, a, transcript) {
                return Err(CeremonyError::BadKnowledge { index, what });
            }
        }
        Ok(())
    }
}
