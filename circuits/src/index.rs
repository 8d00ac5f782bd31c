//! Selecting by an index that is a circuit variable (a public input): a
//! one-hot decomposition and the selection it drives. The native twin of
//! `select(values, one_hot(i, n))` is `values[i]` for `i < n`.

use ark_ff::PrimeField;
use ark_r1cs_std::{
    GR1CSVar,
    alloc::AllocVar,
    boolean::Boolean,
    eq::EqGadget,
    fields::{FieldVar, fp::FpVar},
};
use ark_relations::gr1cs::SynthesisError;

/// Witness bits `b_i = [selector == i]` for `i < n`, constrained one-hot and
/// to recompose to `selector`: unsatisfiable when `selector >= n`.
pub fn one_hot<F: PrimeField>(
    selector: &FpVar<F>,
    n: usize,
) -> Result<Vec<Boolean<F>>, SynthesisError> {
    let cs = selector.cs();
    let value = selector.value();
    let bits = (0..n)
        .map(|i| Boolean::new_witness(cs.clone(), || value.map(|v| v == F::from(i as u64))))
        .collect::<Result<Vec<_>, _>>()?;
    let count: FpVar<F> = bits.iter().map(|b| FpVar::from(b.clone())).sum();
    count.enforce_equal(&FpVar::one())?;
    let index: FpVar<F> = bits
        .iter()
        .enumerate()
        .map(|(i, b)| FpVar::from(b.clone()) * F::from(i as u64))
        .sum();
    index.enforce_equal(selector)?;
    Ok(bits)
}

/// `Σ one_hot[i] · values[i]`: one constraint per value.
pub fn select<F: PrimeField>(
    values: &[FpVar<F>],
    one_hot: &[Boolean<F>],
) -> Result<FpVar<F>, SynthesisError> {
    let mut acc = FpVar::zero();
    for (b, m) in one_hot.iter().zip(values) {
        acc += b.select(m, &FpVar::zero())?;
    }
    Ok(acc)
}

#[cfg(test)]
mod tests {
    use super::*;
    use ark_bn254::Fr;
    use ark_relations::gr1cs::ConstraintSystem;
    use proptest::prelude::*;

    fn run(values: &[u64], index: u64) -> (bool, Option<Fr>) {
        let cs = ConstraintSystem::<Fr>::new_ref();
        let vars: Vec<FpVar<Fr>> = values
            .iter()
            .map(|v| FpVar::new_witness(cs.clone(), || Ok(Fr::from(*v))).unwrap())
            .collect();
        let i = FpVar::new_input(cs.clone(), || Ok(Fr::from(index))).unwrap();
        let oh = one_hot(&i, values.len()).unwrap();
        let v = select(&vars, &oh).unwrap();
        (cs.is_satisfied().unwrap(), v.value().ok())
    }

    proptest! {
        #[test]
        fn selection_agrees_with_indexing(values in proptest::collection::vec(any::<u64>(), 1..40), index in 0u64..48) {
            let (ok, v) = run(&values, index);
            match values.get(index as usize) {
                Some(x) => {
                    prop_assert!(ok);
                    prop_assert_eq!(v, Some(Fr::from(*x)));
                }
                None => prop_assert!(!ok, "an index past the end must not satisfy"),
            }
        }
    }
}
