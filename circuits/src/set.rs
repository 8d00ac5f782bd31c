//! Sets as sorted Poseidon Merkle trees, with one path proving either
//! membership or non-membership.
//!
//! Design (an indexed Merkle tree, built once and static): members are
//! shifted by one (`u = m + 1`, so 0 can be a sentinel), sorted, and stored
//! as leaves `Poseidon(u_i, u_{i+1})` linking each member to its successor;
//! a sentinel leaf `Poseidon(0, u_0)` comes first and the last member links
//! to `2^248`. Every value `v` in range has exactly one "low leaf" with
//! `low <= v + 1 < next`, and `v` is a member exactly when `low == v + 1`.
//! Empty leaves are 0 (no known preimage). Members must be below
//! `2^248 - 1`; identifiers are hashed to 248 bits for that reason.

use ark_bn254::Fr;
use ark_ff::{PrimeField, Zero};
use ark_r1cs_std::{
    boolean::Boolean,
    fields::{FieldVar, fp::FpVar},
};
use ark_relations::gr1cs::SynthesisError;

use crate::CircuitError;
use crate::poseidon::{self, PoseidonParams};

/// Values in a set are below `2^SET_VALUE_BITS`.
pub const SET_VALUE_BITS: usize = 248;
/// Depth of every set tree: 2^20 leaves, so sets up to 2^20 - 1 members.
pub const SET_DEPTH: usize = 20;

fn upper_sentinel<F: PrimeField>() -> F {
    F::from(2u64).pow([SET_VALUE_BITS as u64])
}

/// The proof that a value's low leaf is in the tree.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LowLeafPath {
    pub low: Fr,
    pub next: Fr,
    /// Leaf index bits, least significant (leaf level) first.
    pub index_bits: Vec<bool>,
    pub siblings: Vec<Fr>,
}

impl LowLeafPath {
    /// A placeholder for an unused set predicate (satisfies the gadget's
    /// range checks; the root check is switched off).
    pub fn unused() -> Self {
        Self {
            low: Fr::zero(),
            next: Fr::zero(),
            index_bits: vec![false; SET_DEPTH],
            siblings: vec![Fr::zero(); SET_DEPTH],
        }
    }

    /// Recomputes the root (native twin of [`root_gadget`]).
    pub fn root(&self) -> Fr {
        let mut cur = poseidon::hash(&[self.low, self.next]);
        for (bit, sib) in self.index_bits.iter().zip(&self.siblings) {
            cur = if *bit {
                poseidon::hash(&[*sib, cur])
            } else {
                poseidon::hash(&[cur, *sib])
            };
        }
        cur
    }
}

/// A sorted Poseidon Merkle set (sparse: only non-empty subtrees hashed).
#[derive(Clone, Debug)]
pub struct SortedSet {
    /// Shifted members `u = m + 1`, ascending, sentinel 0 first.
    lows: Vec<Fr>,
    /// `levels[0]` are the leaves; `levels[SET_DEPTH]` is `[root]`.
    levels: Vec<Vec<Fr>>,
    zeros: Vec<Fr>,
}

impl SortedSet {
    /// Builds the tree. Members must be distinct and below `2^248 - 1`.
    pub fn build(members: &[Fr]) -> Result<Self, CircuitError> {
        let mut shifted = Vec::with_capacity(members.len() + 1);
        shifted.push(Fr::zero());
        for m in members {
            let u = *m + Fr::from(1u64);
            if u.is_zero() || u.into_bigint() >= upper_sentinel::<Fr>().into_bigint() {
                return Err(CircuitError::SetValueOutOfRange);
            }
            shifted.push(u);
        }
        shifted[1..].sort_by_key(|u| u.into_bigint());
        if shifted.windows(2).any(|w| w[0] == w[1]) {
            return Err(CircuitError::DuplicateSetMember);
        }
        if shifted.len() > 1 << SET_DEPTH {
            return Err(CircuitError::SetTooLarge(members.len()));
        }
        let mut zeros = vec![Fr::zero()];
        for i in 0..SET_DEPTH {
            zeros.push(poseidon::hash(&[zeros[i], zeros[i]]));
        }
        let leaves: Vec<Fr> = shifted
            .iter()
            .enumerate()
            .map(|(i, u)| {
                let next = shifted.get(i + 1).copied().unwrap_or_else(upper_sentinel);
                poseidon::hash(&[*u, next])
            })
            .collect();
        let mut levels = vec![leaves];
        for depth in 0..SET_DEPTH {
            let below = &levels[depth];
            let above = below
                .chunks(2)
                .map(|pair| {
                    poseidon::hash(&[pair[0], pair.get(1).copied().unwrap_or(zeros[depth])])
                })
                .collect();
            levels.push(above);
        }
        Ok(Self {
            lows: shifted,
            levels,
            zeros,
        })
    }

    pub fn root(&self) -> Fr {
        self.levels[SET_DEPTH][0]
    }

    pub fn len(&self) -> usize {
        self.lows.len() - 1
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn contains(&self, value: Fr) -> bool {
        let u = value + Fr::from(1u64);
        self.lows[1..]
            .binary_search_by_key(&u.into_bigint(), |x| x.into_bigint())
            .is_ok()
    }

    /// The low-leaf path for `value` (below `2^248 - 1`).
    pub fn path(&self, value: Fr) -> Result<LowLeafPath, CircuitError> {
        let u = value + Fr::from(1u64);
        if u.is_zero() || u.into_bigint() >= upper_sentinel::<Fr>().into_bigint() {
            return Err(CircuitError::SetValueOutOfRange);
        }
        let index = self
            .lows
            .partition_point(|x| x.into_bigint() <= u.into_bigint())
            - 1;
        let mut index_bits = Vec::with_capacity(SET_DEPTH);
        let mut siblings = Vec::with_capacity(SET_DEPTH);
        let mut i = index;
        for depth in 0..SET_DEPTH {
            index_bits.push(i & 1 == 1);
            siblings.push(
                self.levels[depth]
                    .get(i ^ 1)
                    .copied()
                    .unwrap_or(self.zeros[depth]),
            );
            i >>= 1;
        }
        Ok(LowLeafPath {
            low: self.lows[index],
            next: self
                .lows
                .get(index + 1)
                .copied()
                .unwrap_or_else(upper_sentinel),
            index_bits,
            siblings,
        })
    }
}

/// Recomputes the root from a leaf and its path: one Poseidon(2) and one
/// constraint for the left/right swap per level.
pub fn root_gadget<F: PrimeField>(
    params: &PoseidonParams<F>,
    leaf: FpVar<F>,
    index_bits: &[Boolean<F>],
    siblings: &[FpVar<F>],
) -> Result<FpVar<F>, SynthesisError> {
    let mut cur = leaf;
    for (bit, sib) in index_bits.iter().zip(siblings) {
        // left = cur + bit * (sib - cur); right = cur + sib - left.
        let left = &cur + FpVar::from(bit.clone()) * (sib - &cur);
        let right = &cur + sib - &left;
        cur = poseidon::constraints::hash(params, &[left, right])?;
    }
    Ok(cur)
}

/// The sentinel bound for the gadget.
pub fn upper_sentinel_var<F: PrimeField>() -> FpVar<F> {
    FpVar::constant(upper_sentinel())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn membership_and_non_membership_paths() {
        let members: Vec<Fr> = [5u64, 9, 1, 0, 1000].iter().map(|&x| Fr::from(x)).collect();
        let set = SortedSet::build(&members).unwrap();
        for v in 0u64..1100 {
            let path = set.path(Fr::from(v)).unwrap();
            assert_eq!(path.root(), set.root());
            let u = Fr::from(v + 1);
            assert!(
                path.low.into_bigint() <= u.into_bigint()
                    && u.into_bigint() < path.next.into_bigint()
            );
            assert_eq!(path.low == u, [5, 9, 1, 0, 1000].contains(&v));
            assert_eq!(set.contains(Fr::from(v)), path.low == u);
        }
    }

    #[test]
    fn bad_sets_are_refused() {
        assert_eq!(
            SortedSet::build(&[Fr::from(3u64), Fr::from(3u64)]).unwrap_err(),
            CircuitError::DuplicateSetMember
        );
        assert_eq!(
            SortedSet::build(&[-Fr::from(1u64)]).unwrap_err(),
            CircuitError::SetValueOutOfRange
        );
    }
}
