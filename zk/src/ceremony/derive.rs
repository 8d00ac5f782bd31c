//! From a phase-1 accumulator and a circuit to the initial phase-2 proving
//! key (δ = γ = 1), deterministically: arkworks' `LibsnarkReduction` and
//! `generate_parameters_with_qap`, computed in the exponent.
//!
//! The QAP domain D has N = |D| ≥ constraints + public inputs points. The
//! Lagrange basis `L_i(τ)·G` is the inverse DFT of the powers `τ^j·G`
//! (`L_i(X) = 1/N Σ_j ω^{-ij} X^j`), computed over the group. Then, for
//! each variable j, `a_j(τ) = Σ_i A_ij L_i(τ)` (plus `L_{m+j}(τ)` for the
//! public inputs, the reduction's extra constraints), likewise b and c;
//! `H_i = τ^i (τ^N - 1)·G1` for i < N - 1.

use ark_bn254::{Bn254, Fr, G1Projective, G2Projective};
use ark_ec::{AffineRepr, CurveGroup, VariableBaseMSM};
use ark_ff::{Field, One, Zero};
use ark_groth16::{ProvingKey, VerifyingKey};
use ark_poly::{EvaluationDomain, Radix2EvaluationDomain};
use ark_relations::gr1cs::ConstraintSynthesizer;
use rayon::prelude::*;

use super::phase1::Accumulator;
use super::{CeremonyError, Scale};
use crate::RandomSource;
use crate::prover::Statement;

/// In-place radix-2 DFT over a group with root `omega` (Cooley–Tukey,
/// decimation in time, bit-reversed input order).
fn dft<G: Scale>(a: &mut [G], omega: Fr) {
    let n = a.len();
    assert!(n.is_power_of_two());
    let bits = n.trailing_zeros();
    for i in 0..n {
        let j = i.reverse_bits() >> (usize::BITS - bits);
        if i < j {
            a.swap(i, j);
        }
    }
    let mut len = 2;
    while len <= n {
        let w = omega.pow([(n / len) as u64]);
        let twiddles: Vec<Fr> = std::iter::successors(Some(Fr::ONE), |t| Some(*t * w))
            .take(len / 2)
            .collect();
        // Parallel across butterflies, not only chunks: the last stages
        // have one or two chunks.
        a.par_chunks_mut(len).for_each(|chunk| {
            let (lo, hi) = chunk.split_at_mut(len / 2);
            lo.par_iter_mut()
                .zip(hi.par_iter_mut())
                .zip(twiddles.par_iter())
                .with_min_len(64)
                .for_each(|((x, y), t)| {
                    // One butterfly in every chunk has twiddle 1: n of the
                    // (n/2)·log n scalar multiplications are saved.
                    let v = if t.is_one() { *y } else { y.scale(t) };
                    *y = *x - v;
                    *x += v;
                });
        });
        len *= 2;
    }
}

/// `[L_i(τ)·G]` from `[τ^j·G]`, j < N.
fn lagrange<G: Scale>(powers: &[G::Affine], domain: &Radix2EvaluationDomain<Fr>) -> Vec<G::Affine> {
    let mut a: Vec<G> = powers.iter().map(|p| (*p).into()).collect();
    dft(&mut a, domain.group_gen_inv);
    let inv = domain.size_inv;
    a.par_iter_mut().for_each(|p| *p = p.scale(&inv));
    G::normalize_batch(&a)
}

/// `Σ coeff · bases[i]` over a variable's terms. Most terms of a circuit's
/// matrices have coefficient 1 and most variables few terms: those are
/// added, the rest multiplied, and only long lists go to an MSM.
fn combination<G>(terms: &[(Fr, usize)], bases: &[G::Affine]) -> G
where
    G: Scale + VariableBaseMSM<MulBase = <G as CurveGroup>::Affine>,
{
    let (ones, others): (Vec<_>, Vec<_>) = terms.iter().partition(|(c, _)| c.is_one());
    let mut sum = G::zero();
    for &(_, i) in ones {
        sum += bases[i];
    }
    if others.len() <= 16 {
        for &(c, i) in others {
            sum += G::from(bases[i]).scale(&c);
        }
    } else {
        let points: Vec<G::Affine> = others.iter().map(|(_, i)| bases[*i]).collect();
        let scalars: Vec<Fr> = others.iter().map(|(c, _)| *c).collect();
        sum += G::msm_unchecked(&points, &scalars);
    }
    sum
}

/// The initial phase-2 key for a circuit from the accumulator (δ = 1).
pub fn initial_key(acc: &Accumulator, qap: &Qap) -> Result<ProvingKey<Bn254>, CeremonyError> {
    super::pool().install(|| initial_key_here(acc, qap))
}

/// A circuit's QAP shape, synthesised once: per variable, its terms in A
/// (with the reduction's extra public-input points), B and C, as
/// (coefficient, point).
pub struct Qap {
    num_instance: usize,
    num_vars: usize,
    domain: Radix2EvaluationDomain<Fr>,
    terms: [Vec<Vec<(Fr, usize)>>; 3],
}

impl Qap {
    /// The QAP of any circuit ([`Statement::of`]).
    pub fn of<C: ConstraintSynthesizer<Fr>>(circuit: C) -> Result<Qap, CeremonyError> {
        Qap::from_statement(&Statement::of(circuit).map_err(circuit_error)?)
    }

    /// The KYC statement of records of `shape`.
    pub fn statement(shape: crate::Shape) -> Result<Qap, CeremonyError> {
        Qap::from_statement(&Statement::kyc(shape).map_err(circuit_error)?)
    }

    /// The QAP domain's size: how many points phase 1 must cover.
    pub fn domain_size(&self) -> usize {
        self.domain.size()
    }

    fn covered_by(&self, acc: &Accumulator) -> Result<(), CeremonyError> {
        if acc.size() < self.domain.size() {
            return Err(CeremonyError::TooSmall {
                have: acc.size(),
                need: self.domain.size(),
            });
        }
        Ok(())
    }

    /// The QAP of a statement synthesised already.
    pub fn from_statement(st: &Statement) -> Result<Qap, CeremonyError> {
        let (m, num_instance) = (st.num_constraints, st.num_instance);
        let num_vars = num_instance + st.num_witness;
        let domain = Radix2EvaluationDomain::<Fr>::new(m + num_instance)
            .ok_or_else(|| CeremonyError::Circuit("too many constraints for BN254".into()))?;
        let mut terms: [Vec<Vec<(Fr, usize)>>; 3] =
            std::array::from_fn(|_| vec![Vec::new(); num_vars]);
        for (k, matrix) in st.matrices.iter().take(3).enumerate() {
            for (i, row) in matrix.iter().enumerate() {
                for &(coeff, var) in row {
                    terms[k][var].push((coeff, i));
                }
            }
        }
        // The reduction's extra constraints put public input j at point m + j of A.
        for (j, t) in terms[0].iter_mut().enumerate().take(num_instance) {
            t.push((Fr::ONE, m + j));
        }
        Ok(Qap {
            num_instance,
            num_vars,
            domain,
            terms,
        })
    }
}

fn circuit_error(e: ark_relations::gr1cs::SynthesisError) -> CeremonyError {
    CeremonyError::Circuit(e.to_string())
}

fn initial_key_here(acc: &Accumulator, q: &Qap) -> Result<ProvingKey<Bn254>, CeremonyError> {
    q.covered_by(acc)?;
    let Qap {
        num_instance,
        num_vars,
        domain,
        terms: by_var,
    } = q;
    let (num_instance, num_vars, n) = (*num_instance, *num_vars, domain.size());
    let l1 = lagrange::<G1Projective>(&acc.tau_g1[..n], domain);
    let l2 = lagrange::<G2Projective>(&acc.tau_g2[..n], domain);
    let la = lagrange::<G1Projective>(&acc.alpha_tau_g1[..n], domain);
    let lb = lagrange::<G1Projective>(&acc.beta_tau_g1[..n], domain);
    let [a_terms, b_terms, c_terms] = by_var;
    let a_query: Vec<G1Projective> = a_terms
        .par_iter()
        .map(|t| combination::<G1Projective>(t, &l1))
        .collect();
    let b_g1: Vec<G1Projective> = b_terms
        .par_iter()
        .map(|t| combination::<G1Projective>(t, &l1))
        .collect();
    let b_g2: Vec<G2Projective> = b_terms
        .par_iter()
        .map(|t| combination::<G2Projective>(t, &l2))
        .collect();
    // β·a_j + α·b_j + c_j, in the exponent.
    let abc: Vec<G1Projective> = (0..num_vars)
        .into_par_iter()
        .map(|j| {
            combination::<G1Projective>(&a_terms[j], &lb)
                + combination::<G1Projective>(&b_terms[j], &la)
                + combination::<G1Projective>(&c_terms[j], &l1)
        })
        .collect();
    let abc = G1Projective::normalize_batch(&abc);
    let h = h_query(acc, n);
    let g1 = super::g1();
    let g2 = super::g2();
    Ok(ProvingKey {
        vk: VerifyingKey {
            alpha_g1: acc.alpha_tau_g1[0],
            beta_g2: acc.beta_g2,
            gamma_g2: g2,
            delta_g2: g2,
            gamma_abc_g1: abc[..num_instance].to_vec(),
        },
        beta_g1: acc.beta_tau_g1[0],
        delta_g1: g1,
        a_query: G1Projective::normalize_batch(&a_query),
        b_g1_query: G1Projective::normalize_batch(&b_g1),
        b_g2_query: G2Projective::normalize_batch(&b_g2),
        h_query: h,
        l_query: abc[num_instance..].to_vec(),
    })
}

/// `τ^i (τ^N - 1)·G1` for i < N - 1.
fn h_query(acc: &Accumulator, n: usize) -> Vec<ark_bn254::G1Affine> {
    let h: Vec<G1Projective> = (0..n - 1)
        .into_par_iter()
        .map(|i| acc.tau_g1[i + n].into_group() - acc.tau_g1[i])
        .collect();
    G1Projective::normalize_batch(&h)
}

/// Checks that `pk` is [`initial_key`] of the accumulator and circuit
/// without computing it: for random ρ over the variables, each query's
/// combination `Σ ρ_j q_j` must equal the same combination of the QAP's
/// polynomials evaluated at τ, which is an MSM over the powers of tau with
/// the coefficients of `Σ_i (Σ_j ρ_j M_ij) L_i(X)` (a field inverse FFT). A
/// wrong key passes with probability about 1/|Fr| (Schwartz–Zippel). MSMs
/// instead of group FFTs: seconds instead of minutes.
pub fn check_initial_key(
    acc: &Accumulator,
    qap: &Qap,
    pk: &ProvingKey<Bn254>,
    rng: &mut dyn RandomSource,
) -> Result<(), CeremonyError> {
    let rho_seed: [u8; 32] = {
        let mut s = [0u8; 32];
        rng.fill_bytes(&mut s);
        s
    };
    super::pool().install(|| check_here(acc, qap, pk, rho_seed))
}

fn check_here(
    acc: &Accumulator,
    q: &Qap,
    pk: &ProvingKey<Bn254>,
    rho_seed: [u8; 32],
) -> Result<(), CeremonyError> {
    use ark_ff::UniformRand;
    use ark_std::rand::SeedableRng;
    let bad = |what| CeremonyError::BadUpdate { index: 0, what };
    q.covered_by(acc)?;
    let n = q.domain.size();
    let (g1, g2) = (super::g1(), super::g2());
    if pk.a_query.len() != q.num_vars
        || pk.b_g1_query.len() != q.num_vars
        || pk.b_g2_query.len() != q.num_vars
        || pk.vk.gamma_abc_g1.len() != q.num_instance
        || pk.l_query.len() != q.num_vars - q.num_instance
        || pk.h_query.len() != n - 1
    {
        return Err(CeremonyError::Shape {
            index: 0,
            what: "the derived key",
        });
    }
    if pk.vk.alpha_g1 != acc.alpha_tau_g1[0]
        || pk.beta_g1 != acc.beta_tau_g1[0]
        || pk.vk.beta_g2 != acc.beta_g2
        || pk.vk.gamma_g2 != g2
        || pk.vk.delta_g2 != g2
        || pk.delta_g1 != g1
    {
        return Err(bad("the derived key's alpha, beta, gamma or delta"));
    }
    if pk.h_query != h_query(acc, n) {
        return Err(bad("the derived key's H query"));
    }
    let mut rng = ark_std::rand::rngs::StdRng::from_seed(rho_seed);
    let rho: Vec<Fr> = (0..q.num_vars).map(|_| Fr::rand(&mut rng)).collect();
    // Per matrix, Σ_j ρ_j M_ij at each point i, then as coefficients.
    let coeffs: Vec<Vec<Fr>> = q
        .terms
        .iter()
        .map(|by_var| {
            let mut u = vec![Fr::zero(); n];
            for (j, terms) in by_var.iter().enumerate() {
                for &(c, i) in terms {
                    u[i] += rho[j] * c;
                }
            }
            q.domain.ifft(&u)
        })
        .collect();
    let [ca, cb, cc] = [&coeffs[0], &coeffs[1], &coeffs[2]];
    let g1_msm = |bases: &[ark_bn254::G1Affine], s: &[Fr]| G1Projective::msm_unchecked(bases, s);
    let tau1 = &acc.tau_g1[..n];
    if g1_msm(&pk.a_query, &rho) != g1_msm(tau1, ca) {
        return Err(bad("the derived key's A query"));
    }
    if g1_msm(&pk.b_g1_query, &rho) != g1_msm(tau1, cb) {
        return Err(bad("the derived key's B query in G1"));
    }
    if G2Projective::msm_unchecked(&pk.b_g2_query, &rho)
        != G2Projective::msm_unchecked(&acc.tau_g2[..n], cb)
    {
        return Err(bad("the derived key's B query in G2"));
    }
    let abc: Vec<ark_bn254::G1Affine> = pk
        .vk
        .gamma_abc_g1
        .iter()
        .chain(&pk.l_query)
        .copied()
        .collect();
    let expected =
        g1_msm(&acc.beta_tau_g1[..n], ca) + g1_msm(&acc.alpha_tau_g1[..n], cb) + g1_msm(tau1, cc);
    if g1_msm(&abc, &rho) != expected {
        return Err(bad("the derived key's IC or L query"));
    }
    Ok(())
}
