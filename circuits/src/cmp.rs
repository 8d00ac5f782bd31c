//! Comparisons on bounded integers. Every operand is range-checked to an
//! explicit bit width by bit decomposition, so an out-of-range value makes
//! the circuit unsatisfiable (it is rejected, never wrapped mod p).

use ark_ff::{BigInteger, PrimeField};
use ark_r1cs_std::{
    GR1CSVar,
    alloc::AllocVar,
    boolean::Boolean,
    eq::EqGadget,
    fields::{FieldVar, fp::FpVar},
};
use ark_relations::gr1cs::SynthesisError;

/// Whether `x < 2^bits` (native twin of [`enforce_bits`]).
pub fn fits_bits<F: PrimeField>(x: F, bits: usize) -> bool {
    x.into_bigint().num_bits() as usize <= bits
}

/// `x < y` for values below `2^bits` (native twin of [`is_less_than`]).
pub fn less_than<F: PrimeField>(x: F, y: F, bits: usize) -> Option<bool> {
    (fits_bits(x, bits) && fits_bits(y, bits)).then(|| x.into_bigint() < y.into_bigint())
}

/// Decomposes `x` into `bits` little-endian witness bits and enforces that
/// they recompose to `x`: `bits + 1` constraints, unsatisfiable when
/// `x >= 2^bits`.
pub fn enforce_bits<F: PrimeField>(
    x: &FpVar<F>,
    bits: usize,
) -> Result<Vec<Boolean<F>>, SynthesisError> {
    assert!(
        bits < F::MODULUS_BIT_SIZE as usize,
        "bit width must stay below the field size"
    );
    let cs = x.cs();
    let value = x.value().map(|v| v.into_bigint());
    let mut out = Vec::with_capacity(bits);
    let mut sum = FpVar::<F>::zero();
    let mut weight = F::one();
    for i in 0..bits {
        let b = Boolean::new_witness(cs.clone(), || value.map(|v| v.get_bit(i)))?;
        sum += FpVar::from(b.clone()) * weight;
        weight.double_in_place();
        out.push(b);
    }
    sum.enforce_equal(x)?;
    Ok(out)
}

/// `x < y` for `x, y` the caller has range-checked below `2^bits`:
/// `d = x + 2^bits - y` lies in `[1, 2^(bits+1))` and its top bit is set
/// exactly when `x >= y`.
pub fn is_less_than<F: PrimeField>(
    x: &FpVar<F>,
    y: &FpVar<F>,
    bits: usize,
) -> Result<Boolean<F>, SynthesisError> {
    let shift = F::from(2u64).pow([bits as u64]);
    let d = x + FpVar::constant(shift) - y;
    let d_bits = enforce_bits(&d, bits + 1)?;
    Ok(!d_bits[bits].clone())
}

#[cfg(test)]
mod tests {
    use super::*;
    use ark_bn254::Fr;
    use ark_relations::gr1cs::ConstraintSystem;
    use proptest::prelude::*;

    fn check(x: u128, y: u128, bits: usize) -> Option<(bool, bool)> {
        let cs = ConstraintSystem::<Fr>::new_ref();
        let xv = FpVar::new_witness(cs.clone(), || Ok(Fr::from(x))).unwrap();
        let yv = FpVar::new_witness(cs.clone(), || Ok(Fr::from(y))).unwrap();
        enforce_bits(&xv, bits).unwrap();
        enforce_bits(&yv, bits).unwrap();
        let lt = is_less_than(&xv, &yv, bits).unwrap();
        let sat = cs.is_satisfied().unwrap();
        sat.then(|| {
            (
                lt.value().unwrap(),
                less_than(Fr::from(x), Fr::from(y), bits).unwrap(),
            )
        })
    }

    proptest! {
        #[test]
        fn gadget_agrees_with_native(x in any::<u64>(), y in any::<u64>()) {
            let (gadget, native) = check(x as u128, y as u128, 64).expect("in range");
            prop_assert_eq!(gadget, native);
            prop_assert_eq!(native, x < y);
        }

        #[test]
        fn out_of_range_is_rejected(x in (1u128 << 64)..u128::MAX, y in any::<u64>()) {
            prop_assert!(check(x, y as u128, 64).is_none());
            prop_assert!(check(y as u128, x, 64).is_none());
            prop_assert_eq!(less_than(Fr::from(x), Fr::from(y), 64), None);
        }
    }

    #[test]
    fn edges() {
        assert_eq!(check(0, 0, 64), Some((false, false)));
        assert_eq!(
            check(u64::MAX as u128, u64::MAX as u128, 64),
            Some((false, false))
        );
        assert_eq!(check(0, u64::MAX as u128, 64), Some((true, true)));
        // A field element just below p (i.e. -1) must not pass as small.
        let cs = ConstraintSystem::<Fr>::new_ref();
        let xv = FpVar::new_witness(cs.clone(), || Ok(-Fr::from(1u64))).unwrap();
        enforce_bits(&xv, 64).unwrap();
        assert!(!cs.is_satisfied().unwrap());
    }
}
