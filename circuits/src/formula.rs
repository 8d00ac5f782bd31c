//! How a statement combines its predicate slots: conjunctive normal form.
//! Each active slot belongs to one clause, named by its index; a clause
//! holds when any of its slots holds, and the formula when every clause
//! does (a clause with no active slot is vacuous). AND of all predicates
//! puts each slot in a clause of its own; OR of all puts them in one.
//!
//! The clause indices of `n` slots are one public input,
//! `Σ c_i · 8^i` ([`pack`]), so an OR costs the verifier nothing more.

use ark_ff::PrimeField;
use ark_r1cs_std::{
    GR1CSVar,
    alloc::AllocVar,
    boolean::Boolean,
    eq::EqGadget,
    fields::{FieldVar, fp::FpVar},
};
use ark_relations::gr1cs::SynthesisError;

use crate::index::one_hot;

/// Bits per packed clause index: up to 8 slots.
pub const CLAUSE_BITS: usize = 3;

/// Packs clause indices, each below `2^CLAUSE_BITS`.
pub fn pack(clauses: &[u8]) -> u64 {
    clauses
        .iter()
        .rev()
        .fold(0, |acc, c| (acc << CLAUSE_BITS) | u64::from(*c))
}

/// Unpacks `n` clause indices; `None` when any is `>= n` or bits are left.
pub fn unpack(packed: u64, n: usize) -> Option<Vec<u8>> {
    let out: Vec<u8> = (0..n)
        .map(|i| ((packed >> (CLAUSE_BITS * i)) & 0b111) as u8)
        .collect();
    (packed >> (CLAUSE_BITS * n) == 0 && out.iter().all(|c| (*c as usize) < n)).then_some(out)
}

/// The native twin: whether the formula holds.
pub fn evaluate(active: &[bool], holds: &[bool], clauses: &[u8]) -> bool {
    (0..active.len()).all(|j| {
        let mut members = (0..active.len()).filter(|&i| active[i] && clauses[i] as usize == j);
        let mut any = false;
        let sat = members.any(|i| {
            any = true;
            holds[i]
        });
        sat || !any
    })
}

/// The formula in R1CS. `packed` must be the packed clause indices; an
/// index `>= n`, or a non-zero index on an inactive slot, is unsatisfiable
/// (so no public input is slack).
pub fn evaluate_gadget<F: PrimeField>(
    active: &[Boolean<F>],
    holds: &[Boolean<F>],
    packed: &FpVar<F>,
) -> Result<Boolean<F>, SynthesisError> {
    let n = active.len();
    assert_eq!(holds.len(), n, "one result per slot");
    let cs = packed.cs();
    let value = packed.value();
    let bits = (0..CLAUSE_BITS * n)
        .map(|k| {
            Boolean::new_witness(cs.clone(), || {
                value.map(|v| {
                    let limb = v.into_bigint().as_ref()[0];
                    (limb >> k) & 1 == 1
                })
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    Boolean::le_bits_to_fp(&bits)?.enforce_equal(packed)?;
    let mut membership = Vec::with_capacity(n);
    for (i, slot) in bits.chunks(CLAUSE_BITS).enumerate() {
        let index = Boolean::le_bits_to_fp(slot)?;
        (FpVar::from(!active[i].clone()) * &index).enforce_equal(&FpVar::zero())?;
        let oh = one_hot(&index, n)?;
        membership.push(
            oh.iter()
                .map(|b| b & &active[i])
                .collect::<Vec<Boolean<F>>>(),
        );
    }
    let mut all = Boolean::TRUE;
    for j in 0..n {
        let members: Vec<Boolean<F>> = membership.iter().map(|m| m[j].clone()).collect();
        let sat: Vec<Boolean<F>> = members.iter().zip(holds).map(|(m, h)| m & h).collect();
        let ok = !Boolean::kary_or(&members)? | Boolean::kary_or(&sat)?;
        all &= ok;
    }
    Ok(all)
}

#[cfg(test)]
mod tests {
    use super::*;
    use ark_bn254::Fr;
    use ark_relations::gr1cs::ConstraintSystem;
    use proptest::prelude::*;

    fn gadget(active: &[bool], holds: &[bool], packed: u64) -> (bool, Option<bool>) {
        let cs = ConstraintSystem::<Fr>::new_ref();
        let w = |b: bool| Boolean::new_witness(cs.clone(), || Ok(b)).unwrap();
        let a: Vec<_> = active.iter().map(|b| w(*b)).collect();
        let h: Vec<_> = holds.iter().map(|b| w(*b)).collect();
        let p = FpVar::new_input(cs.clone(), || Ok(Fr::from(packed))).unwrap();
        let r = evaluate_gadget(&a, &h, &p).unwrap();
        (cs.is_satisfied().unwrap(), r.value().ok())
    }

    #[test]
    fn and_or_and_mixed_formulas() {
        // (s0 or s1) and s2; s3, s4 inactive.
        let active = [true, true, true, false, false];
        let clauses = [0, 0, 2, 0, 0];
        for (holds, expected) in [
            ([false, true, true, true, true], true),
            ([false, false, true, true, true], false),
            ([true, false, false, true, true], false),
        ] {
            assert_eq!(evaluate(&active, &holds, &clauses), expected);
            assert_eq!(
                gadget(&active, &holds, pack(&clauses)),
                (true, Some(expected))
            );
        }
        // Nothing active: vacuously true.
        assert!(evaluate(&[false; 5], &[false; 5], &[0; 5]));
    }

    proptest! {
        #[test]
        fn gadget_agrees_with_its_native_twin(
            active in proptest::array::uniform5(any::<bool>()),
            holds in proptest::array::uniform5(any::<bool>()),
            packed in 0u64..(1 << 16),
        ) {
            let (ok, r) = gadget(&active, &holds, packed);
            let canonical = unpack(packed, 5)
                .filter(|c| c.iter().zip(&active).all(|(c, a)| *a || *c == 0));
            match canonical {
                Some(c) => {
                    prop_assert!(ok);
                    prop_assert_eq!(r, Some(evaluate(&active, &holds, &c)));
                    prop_assert_eq!(pack(&c), packed);
                }
                None => prop_assert!(!ok, "a malformed clause input must not satisfy"),
            }
        }
    }
}
