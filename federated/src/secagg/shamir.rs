//! Shamir secret sharing with Feldman commitments over the Ristretto group.
//!
//! An agent shares its self-mask seed and its mask key with its neighbours;
//! the coordinator later reconstructs one of the two from any `t` shares.
//! Feldman's commitments `C_j = a_j·B` to the polynomial's coefficients let
//! the coordinator check each revealed share on its own (`y·B = Σ C_j x^j`),
//! so a forged share is caught and named instead of silently corrupting the
//! reconstruction. They reveal `secret·B`, which is hiding under discrete
//! log; the masks come from the secret through a PRG, never from `secret·B`.

use curve25519_dalek::constants::RISTRETTO_BASEPOINT_TABLE;
use curve25519_dalek::ristretto::{CompressedRistretto, RistrettoPoint};
use curve25519_dalek::scalar::Scalar;
use curve25519_dalek::traits::VartimeMultiscalarMul;
use rand::CryptoRng;
use serde::{Deserialize, Serialize};
use zeroize::Zeroize;

/// A uniformly random scalar, from 64 bytes reduced mod ℓ.
pub fn random_scalar(rng: &mut impl CryptoRng) -> Scalar {
    let mut wide = [0u8; 64];
    rng.fill_bytes(&mut wide);
    let s = Scalar::from_bytes_mod_order_wide(&wide);
    wide.zeroize();
    s
}

/// The public commitments to one shared polynomial, lowest degree first.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Commitments(pub Vec<[u8; 32]>);

/// Decompressed commitments, ready to check shares against.
pub struct Checker(Vec<RistrettoPoint>);

impl Commitments {
    /// `None` when a point does not decode or the threshold is not `t`.
    pub fn checker(&self, t: usize) -> Option<Checker> {
        if self.0.len() != t {
            return None;
        }
        self.0
            .iter()
            .map(|c| CompressedRistretto(*c).decompress())
            .collect::<Option<Vec<_>>>()
            .map(Checker)
    }
}

impl Checker {
    /// Whether `y` is the polynomial's value at `x`.
    pub fn check(&self, x: u64, y: &Scalar) -> bool {
        let x = Scalar::from(x);
        let mut powers = Vec::with_capacity(self.0.len());
        let mut p = Scalar::ONE;
        for _ in 0..self.0.len() {
            powers.push(p);
            p *= x;
        }
        RistrettoPoint::vartime_multiscalar_mul(&powers, &self.0) == y * RISTRETTO_BASEPOINT_TABLE
    }
}

/// Splits `secret` into one share for each of `xs` (distinct, non-zero),
/// any `t` of which recover it.
pub fn deal(
    secret: &Scalar,
    t: usize,
    xs: &[u64],
    rng: &mut impl CryptoRng,
) -> (Vec<Scalar>, Commitments) {
    debug_assert!(t >= 1 && xs.iter().all(|&x| x != 0));
    let mut coeffs = Vec::with_capacity(t);
    coeffs.push(*secret);
    for _ in 1..t {
        coeffs.push(random_scalar(rng));
    }
    let commitments = Commitments(
        coeffs
            .iter()
            .map(|a| (a * RISTRETTO_BASEPOINT_TABLE).compress().to_bytes())
            .collect(),
    );
    let shares = xs
        .iter()
        .map(|&x| {
            let x = Scalar::from(x);
            // Horner, highest coefficient first.
            coeffs.iter().rev().fold(Scalar::ZERO, |acc, a| acc * x + a)
        })
        .collect();
    coeffs.zeroize();
    (shares, commitments)
}

/// Lagrange interpolation at zero from `(x, y)` pairs with distinct `x`.
pub fn reconstruct(shares: &[(u64, Scalar)]) -> Scalar {
    let mut secret = Scalar::ZERO;
    for (i, (xi, yi)) in shares.iter().enumerate() {
        let xi = Scalar::from(*xi);
        let mut num = Scalar::ONE;
        let mut den = Scalar::ONE;
        for (j, (xj, _)) in shares.iter().enumerate() {
            if i != j {
                let xj = Scalar::from(*xj);
                num *= xj;
                den *= xj - xi;
            }
        }
        secret += yi * num * den.invert();
    }
    secret
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    proptest! {
        #[test]
        fn any_t_shares_recover_and_fewer_do_not(seed: u64, t in 1usize..8, extra in 0usize..6, pick: u64) {
            let mut rng = StdRng::seed_from_u64(seed);
            let secret = random_scalar(&mut rng);
            let n = t + extra;
            let xs: Vec<u64> = (1..=n as u64).collect();
            let (shares, commitments) = deal(&secret, t, &xs, &mut rng);
            let checker = commitments.checker(t).unwrap();
            for (x, y) in xs.iter().zip(&shares) {
                prop_assert!(checker.check(*x, y));
            }
            // A rotating choice of t shares.
            let start = (pick as usize) % n;
            let chosen: Vec<(u64, Scalar)> = (0..t).map(|k| {
                let i = (start + k) % n;
                (xs[i], shares[i])
            }).collect();
            prop_assert_eq!(reconstruct(&chosen), secret);
            if t > 1 {
                prop_assert_ne!(reconstruct(&chosen[..t - 1]), secret);
            }
        }

        #[test]
        fn a_changed_share_fails_its_check(seed: u64, t in 2usize..6, delta in 1u64..) {
            let mut rng = StdRng::seed_from_u64(seed);
            let secret = random_scalar(&mut rng);
            let (shares, commitments) = deal(&secret, t, &[1, 2, 3, 4, 5, 6], &mut rng);
            let checker = commitments.checker(t).unwrap();
            prop_assert!(!checker.check(2, &(shares[1] + Scalar::from(delta))));
            prop_assert!(!checker.check(3, &shares[1]));
        }

        #[test]
        fn commitment_decoding_never_panics(bytes: Vec<[u8; 32]>, t in 0usize..5) {
            let _ = Commitments(bytes).checker(t);
        }
    }

    #[test]
    fn commitments_of_the_wrong_length_are_refused() {
        let mut rng = StdRng::seed_from_u64(1);
        let (_, c) = deal(&Scalar::ONE, 3, &[1, 2, 3], &mut rng);
        assert!(c.checker(3).is_some());
        assert!(c.checker(2).is_none());
    }
}
