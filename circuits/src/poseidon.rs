//! Poseidon with the circomlib parameters (BN254: x^5 S-box, 8 full rounds,
//! widths t = 2..=6), so hashes equal circomlib's, iden3's and zk-kit's.
//!
//! The round constants and MDS matrices are not copied from circomlib: they
//! are regenerated with the Grain LFSR exactly as the Poseidon reference
//! script (`generate_parameters_grain.sage`) that circomlib used does, and
//! the known-answer tests below pin them to circomlib's outputs. The same
//! generator serves any prime field, which keeps the gadget generic.
//!
//! `hash` is the native function; [`PoseidonGadget`](crate::poseidon::gadget)
//! is its R1CS twin.

use std::sync::OnceLock;

use ark_bn254::Fr;
use ark_ff::{BigInteger, Field, PrimeField};

use crate::CircuitError;

/// Partial rounds per width t = 2..=6 (circomlib's `N_ROUNDS_P`).
const PARTIAL_ROUNDS: [usize; 5] = [56, 57, 56, 60, 60];
/// Full rounds for every width.
pub const FULL_ROUNDS: usize = 8;
/// Smallest and largest supported state widths.
pub const MIN_WIDTH: usize = 2;
pub const MAX_WIDTH: usize = 6;

/// Round constants and MDS matrix for one state width.
#[derive(Clone, Debug)]
pub struct PoseidonParams<F: PrimeField> {
    pub width: usize,
    pub full_rounds: usize,
    pub partial_rounds: usize,
    /// `(full_rounds + partial_rounds) * width` constants, round-major.
    pub round_constants: Vec<F>,
    /// `mds[i][j]`: new state[i] = sum_j mds[i][j] * state[j].
    pub mds: Vec<Vec<F>>,
}

/// The self-shrinking Grain LFSR of the Poseidon reference.
struct Grain {
    bits: std::collections::VecDeque<bool>,
}

impl Grain {
    fn new(field_bits: u64, width: u64, full: u64, partial: u64) -> Self {
        let mut bits = std::collections::VecDeque::with_capacity(80);
        let mut push = |value: u64, n: u32| {
            for i in (0..n).rev() {
                bits.push_back((value >> i) & 1 == 1);
            }
        };
        push(1, 2); // prime field
        push(0, 4); // x^alpha S-box
        push(field_bits, 12);
        push(width, 12);
        push(full, 10);
        push(partial, 10);
        push((1 << 30) - 1, 30);
        let mut grain = Self { bits };
        for _ in 0..160 {
            grain.step();
        }
        grain
    }

    fn step(&mut self) -> bool {
        let b = &self.bits;
        let new = b[62] ^ b[51] ^ b[38] ^ b[23] ^ b[13] ^ b[0];
        self.bits.pop_front();
        self.bits.push_back(new);
        new
    }

    /// One output bit: pairs (a, b) yield b when a = 1, and nothing otherwise.
    fn next_bit(&mut self) -> bool {
        loop {
            let keep = self.step();
            let bit = self.step();
            if keep {
                return bit;
            }
        }
    }

    fn next_int(&mut self, n: usize) -> Vec<bool> {
        (0..n).map(|_| self.next_bit()).collect()
    }
}

fn from_bits_be<F: PrimeField>(bits: &[bool]) -> (F, bool) {
    let big = F::BigInt::from_bits_be(bits);
    let below_modulus = big < F::MODULUS;
    (
        F::from_bigint(big).unwrap_or_else(|| F::from_be_bytes_mod_order(&big.to_bytes_be())),
        below_modulus,
    )
}

impl<F: PrimeField> PoseidonParams<F> {
    /// Generates the parameters for state width `width` (2..=6).
    pub fn generate(width: usize) -> Result<Self, CircuitError> {
        if !(MIN_WIDTH..=MAX_WIDTH).contains(&width) {
            return Err(CircuitError::UnsupportedWidth(width));
        }
        let partial = PARTIAL_ROUNDS[width - MIN_WIDTH];
        let n = F::MODULUS_BIT_SIZE as usize;
        let mut grain = Grain::new(n as u64, width as u64, FULL_ROUNDS as u64, partial as u64);
        let count = (FULL_ROUNDS + partial) * width;
        let mut round_constants = Vec::with_capacity(count);
        while round_constants.len() < count {
            // Rejection sampling: the reference redraws values >= p.
            let (f, ok) = from_bits_be::<F>(&grain.next_int(n));
            if ok {
                round_constants.push(f);
            }
        }
        // Cauchy matrix 1/(x_i + y_j) from 2t distinct draws, reduced mod p.
        let mds = loop {
            let draws: Vec<F> = (0..2 * width)
                .map(|_| from_bits_be::<F>(&grain.next_int(n)).0)
                .collect();
            let distinct = draws
                .iter()
                .enumerate()
                .all(|(i, a)| draws[i + 1..].iter().all(|b| a != b));
            if !distinct {
                continue;
            }
            let (xs, ys) = draws.split_at(width);
            let m: Option<Vec<Vec<F>>> = xs
                .iter()
                .map(|x| ys.iter().map(|y| (*x + y).inverse()).collect())
                .collect();
            if let Some(m) = m {
                break m;
            }
        };
        Ok(Self {
            width,
            full_rounds: FULL_ROUNDS,
            partial_rounds: partial,
            round_constants,
            mds,
        })
    }

    fn is_full_round(&self, round: usize) -> bool {
        let half = self.full_rounds / 2;
        round < half || round >= half + self.partial_rounds
    }

    /// The Poseidon permutation on a state of `self.width` elements.
    pub fn permute(&self, state: &mut [F]) {
        assert_eq!(state.len(), self.width, "state width mismatch");
        let t = self.width;
        let mut next = vec![F::zero(); t];
        for round in 0..self.full_rounds + self.partial_rounds {
            for (s, c) in state
                .iter_mut()
                .zip(&self.round_constants[round * t..(round + 1) * t])
            {
                *s += c;
            }
            if self.is_full_round(round) {
                state.iter_mut().for_each(|s| *s = pow5(*s));
            } else {
                state[0] = pow5(state[0]);
            }
            for (i, n) in next.iter_mut().enumerate() {
                *n = self.mds[i]
                    .iter()
                    .zip(state.iter())
                    .map(|(m, s)| *m * s)
                    .sum();
            }
            state.copy_from_slice(&next);
        }
    }

    /// circomlib's `Poseidon(n)`: state `[0, inputs...]`, output `state[0]`.
    pub fn hash(&self, inputs: &[F]) -> F {
        assert_eq!(
            inputs.len() + 1,
            self.width,
            "input count must be width - 1"
        );
        let mut state = Vec::with_capacity(self.width);
        state.push(F::zero());
        state.extend_from_slice(inputs);
        self.permute(&mut state);
        state[0]
    }
}

fn pow5<F: Field>(x: F) -> F {
    let x2 = x.square();
    x2.square() * x
}

/// The BN254 parameters for width `t`, generated once per process.
pub fn bn254_params(width: usize) -> &'static PoseidonParams<Fr> {
    static PARAMS: [OnceLock<PoseidonParams<Fr>>; MAX_WIDTH - MIN_WIDTH + 1] =
        [const { OnceLock::new() }; MAX_WIDTH - MIN_WIDTH + 1];
    assert!(
        (MIN_WIDTH..=MAX_WIDTH).contains(&width),
        "unsupported Poseidon width {width}"
    );
    PARAMS[width - MIN_WIDTH]
        .get_or_init(|| PoseidonParams::generate(width).expect("width checked above"))
}

/// circomlib's `poseidon(inputs)` over BN254 for 1..=5 inputs.
///
/// # Panics
/// On an empty input or more than 5 inputs: the arity is a property of the
/// caller's construction, never of untrusted data.
pub fn hash(inputs: &[Fr]) -> Fr {
    assert!(
        (1..MAX_WIDTH).contains(&inputs.len()),
        "Poseidon takes 1..={} inputs, got {}",
        MAX_WIDTH - 1,
        inputs.len()
    );
    bn254_params(inputs.len() + 1).hash(inputs)
}

/// A hash of any number of elements as a tree of 4-ary Poseidon hashes:
/// each level hashes consecutive groups of 4 (the last group may be
/// shorter), until one element is left. Eight-field records' ciphertext
/// hashes keep the shape they had: `P(P(x0..x3), P(x4..x7), P(x8..x11))`.
///
/// # Panics
/// On fewer than two elements (the arity is fixed by the caller's shape).
pub fn tree_hash(elements: &[Fr]) -> Fr {
    assert!(
        elements.len() >= 2,
        "a tree hash of {} elements",
        elements.len()
    );
    let mut level = elements.to_vec();
    while level.len() > 1 {
        level = level.chunks(4).map(hash).collect();
    }
    level[0]
}

/// The circomlib permutation of a BN254 state of width 2..=6 (zk-kit's
/// `poseidonPerm`), used by the Poseidon cipher.
pub fn permute(state: &mut [Fr]) {
    bn254_params(state.len()).permute(state);
}

/// The R1CS twin of the permutation and hash: 3 constraints per S-box
/// (x^2, x^4, x^5); round constants and the MDS mix are linear
/// combinations, so a width-3 permutation costs 3 * (8 * 3 + 57) = 243.
pub mod constraints {
    use ark_ff::PrimeField;
    use ark_r1cs_std::fields::{FieldVar, fp::FpVar};
    use ark_relations::gr1cs::SynthesisError;

    use super::PoseidonParams;

    fn pow5<F: PrimeField>(x: &FpVar<F>) -> Result<FpVar<F>, SynthesisError> {
        let x2 = x.square()?;
        let x4 = x2.square()?;
        Ok(x4 * x)
    }

    /// Permutes `state` in place.
    pub fn permute<F: PrimeField>(
        params: &PoseidonParams<F>,
        state: &mut [FpVar<F>],
    ) -> Result<(), SynthesisError> {
        assert_eq!(state.len(), params.width, "state width mismatch");
        let t = params.width;
        for round in 0..params.full_rounds + params.partial_rounds {
            for (s, c) in state
                .iter_mut()
                .zip(&params.round_constants[round * t..(round + 1) * t])
            {
                *s += *c;
            }
            if params.is_full_round(round) {
                for s in state.iter_mut() {
                    *s = pow5(s)?;
                }
            } else {
                state[0] = pow5(&state[0])?;
            }
            let mixed: Vec<FpVar<F>> = params
                .mds
                .iter()
                .map(|row| row.iter().zip(state.iter()).map(|(m, s)| s * *m).sum())
                .collect();
            state.clone_from_slice(&mixed);
        }
        Ok(())
    }

    /// [`super::tree_hash`] in R1CS, over BN254.
    pub fn tree_hash(
        elements: &[FpVar<ark_bn254::Fr>],
    ) -> Result<FpVar<ark_bn254::Fr>, SynthesisError> {
        assert!(
            elements.len() >= 2,
            "a tree hash of {} elements",
            elements.len()
        );
        let mut level = elements.to_vec();
        while level.len() > 1 {
            level = level
                .chunks(4)
                .map(|c| hash(super::bn254_params(c.len() + 1), c))
                .collect::<Result<_, _>>()?;
        }
        Ok(level.swap_remove(0))
    }

    /// circomlib's `Poseidon(n)` in R1CS.
    pub fn hash<F: PrimeField>(
        params: &PoseidonParams<F>,
        inputs: &[FpVar<F>],
    ) -> Result<FpVar<F>, SynthesisError> {
        assert_eq!(
            inputs.len() + 1,
            params.width,
            "input count must be width - 1"
        );
        let mut state = Vec::with_capacity(params.width);
        state.push(FpVar::zero());
        state.extend_from_slice(inputs);
        permute(params, &mut state)?;
        Ok(state.swap_remove(0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::str::FromStr;

    fn fr(s: &str) -> Fr {
        if let Some(hex) = s.strip_prefix("0x") {
            Fr::from_be_bytes_mod_order(&hex::decode(hex).unwrap())
        } else {
            Fr::from_str(s).unwrap()
        }
    }

    fn ints(v: &[u64]) -> Vec<Fr> {
        v.iter().map(|&x| Fr::from(x)).collect()
    }

    #[test]
    fn first_round_constant_matches_circomlib() {
        assert_eq!(
            bn254_params(3).round_constants[0],
            fr("0x0ee9a592ba9a9518d05986d656f40c2114c4993c11bb29938d21d47304cd8e6e")
        );
    }

    #[test]
    fn gadget_agrees_with_native_on_random_inputs() {
        use ark_r1cs_std::{GR1CSVar, alloc::AllocVar, fields::fp::FpVar};
        use ark_relations::gr1cs::ConstraintSystem;
        use ark_std::UniformRand;
        let mut rng = ark_std::test_rng();
        for width in MIN_WIDTH..=MAX_WIDTH {
            for _ in 0..3 {
                let inputs: Vec<Fr> = (0..width - 1).map(|_| Fr::rand(&mut rng)).collect();
                let cs = ConstraintSystem::<Fr>::new_ref();
                let vars: Vec<FpVar<Fr>> = inputs
                    .iter()
                    .map(|x| FpVar::new_witness(cs.clone(), || Ok(*x)).unwrap())
                    .collect();
                let out = constraints::hash(bn254_params(width), &vars).unwrap();
                assert_eq!(out.value().unwrap(), hash(&inputs));
                assert!(cs.is_satisfied().unwrap());
                let sboxes = FULL_ROUNDS * width + PARTIAL_ROUNDS[width - MIN_WIDTH];
                // The capacity element starts as the constant 0, so the
                // first S-box on it is free.
                assert_eq!(cs.num_constraints(), 3 * sboxes - 3, "width {width}");
            }
        }
        // Poseidon(2) (t = 3) costs 240 constraints, as in circom.
        assert_eq!(3 * (FULL_ROUNDS * 3 + PARTIAL_ROUNDS[1]) - 3, 240);
    }

    #[test]
    fn circomlib_known_answers() {
        assert_eq!(
            hash(&ints(&[1, 2])),
            fr("0x115cc0f5e7d690413df64c6b9662e9cf2a3617f2743245519e19607a4417189a")
        );
        // circomlibjs test vectors for widths 2 and 5.
        assert_eq!(
            hash(&ints(&[1])),
            fr("0x29176100eaa962bdc1fe6c654d6a3c130e96a4d1168b33848b897dc502820133")
        );
        assert_eq!(
            hash(&ints(&[1, 2, 3, 4])),
            fr("0x299c867db6c1fdd79dcefa40e4510b9837e60ebb1ce0663dbaa525df65250465")
        );
    }

    #[test]
    fn tree_hash_gadget_agrees_with_its_native_twin() {
        use ark_r1cs_std::{GR1CSVar, alloc::AllocVar, fields::fp::FpVar};
        use ark_relations::gr1cs::ConstraintSystem;
        for n in [2usize, 4, 5, 12, 21, 36] {
            let xs: Vec<Fr> = (0..n as u64).map(|i| Fr::from(i * 7 + 1)).collect();
            let cs = ConstraintSystem::<Fr>::new_ref();
            let vars: Vec<FpVar<Fr>> = xs
                .iter()
                .map(|x| FpVar::new_witness(cs.clone(), || Ok(*x)).unwrap())
                .collect();
            let h = constraints::tree_hash(&vars).unwrap();
            assert_eq!(h.value().unwrap(), tree_hash(&xs), "{n} elements");
            assert!(cs.is_satisfied().unwrap());
        }
        // Twelve elements: the three-group shape of an eight-field record.
        let xs: Vec<Fr> = (0..12u64).map(Fr::from).collect();
        assert_eq!(
            tree_hash(&xs),
            hash(&[hash(&xs[0..4]), hash(&xs[4..8]), hash(&xs[8..12])])
        );
    }
}
