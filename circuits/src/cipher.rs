//! The Poseidon cipher (Khovratovich, "Encryption with Poseidon") as zk-kit's
//! `poseidon-cipher` implements it: a width-4 Poseidon sponge keyed by two
//! field elements, state `(0, k0, k1, nonce + len * 2^128)`, three elements
//! absorbed per block, and a final squeeze that is the authentication tag.
//! The message is padded with zeros to a multiple of 3, so `l` elements
//! encrypt to `3 * ceil(l / 3) + 1` elements.

use ark_bn254::Fr;
use ark_ff::{PrimeField, Zero};
use ark_r1cs_std::{
    eq::EqGadget,
    fields::{FieldVar, fp::FpVar},
};
use ark_relations::gr1cs::SynthesisError;

use crate::CircuitError;
use crate::poseidon::{self, PoseidonParams};

/// Nonces are below 2^128 so that `nonce + len * 2^128` cannot collide.
pub const NONCE_BITS: usize = 128;

fn two_128<F: PrimeField>() -> F {
    let two_64 = F::from(1u128 << 64);
    two_64 * two_64
}

fn initial_state<F: PrimeField>(key: &[F; 2], nonce: u128, len: usize) -> [F; 4] {
    [
        F::zero(),
        key[0],
        key[1],
        F::from(nonce) + F::from(len as u64) * two_128::<F>(),
    ]
}

/// The ciphertext length of a `len`-element message.
pub fn ciphertext_len(len: usize) -> usize {
    padded_len(len) + 1
}

fn padded_len(len: usize) -> usize {
    len.div_ceil(3) * 3
}

/// Encrypts `message` under `key` and `nonce` (native, BN254).
pub fn encrypt(message: &[Fr], key: &[Fr; 2], nonce: u128) -> Vec<Fr> {
    let params = poseidon::bn254_params(4);
    let mut padded = message.to_vec();
    padded.resize(padded_len(message.len()), Fr::zero());
    let mut state = initial_state(key, nonce, message.len());
    let mut out = Vec::with_capacity(padded.len() + 1);
    for block in padded.chunks(3) {
        params.permute(&mut state);
        for (s, m) in state[1..].iter_mut().zip(block) {
            *s += m;
            out.push(*s);
        }
    }
    params.permute(&mut state);
    out.push(state[1]);
    out
}

/// Decrypts and authenticates a ciphertext of a `len`-element message.
pub fn decrypt(
    ciphertext: &[Fr],
    key: &[Fr; 2],
    nonce: u128,
    len: usize,
) -> Result<Vec<Fr>, CircuitError> {
    let params = poseidon::bn254_params(4);
    let body = padded_len(len);
    if ciphertext.len() != body + 1 {
        return Err(CircuitError::CiphertextLength {
            expected: body + 1,
            got: ciphertext.len(),
        });
    }
    let mut state = initial_state(key, nonce, len);
    let mut message = Vec::with_capacity(body);
    for block in ciphertext[..body].chunks(3) {
        params.permute(&mut state);
        for (s, c) in state[1..].iter_mut().zip(block) {
            message.push(*c - *s);
            *s = *c;
        }
    }
    params.permute(&mut state);
    if state[1] != ciphertext[body] {
        return Err(CircuitError::Authentication);
    }
    if message[len..].iter().any(|m| !m.is_zero()) {
        return Err(CircuitError::Authentication);
    }
    message.truncate(len);
    Ok(message)
}

/// R1CS decryption: returns the `len` plaintext elements and enforces the
/// tag and the zero padding. The nonce variable must be range-checked to
/// [`NONCE_BITS`] by the caller (the statement does it once).
pub fn decrypt_gadget<F: PrimeField>(
    params: &PoseidonParams<F>,
    ciphertext: &[FpVar<F>],
    key: &[FpVar<F>; 2],
    nonce: &FpVar<F>,
    len: usize,
) -> Result<Vec<FpVar<F>>, SynthesisError> {
    let body = padded_len(len);
    assert_eq!(
        ciphertext.len(),
        body + 1,
        "ciphertext length is fixed by the statement"
    );
    let domain = nonce + FpVar::constant(F::from(len as u64) * two_128::<F>());
    let mut state = vec![FpVar::zero(), key[0].clone(), key[1].clone(), domain];
    let mut message = Vec::with_capacity(body);
    for block in ciphertext[..body].chunks(3) {
        poseidon::constraints::permute(params, &mut state)?;
        for (s, c) in state[1..].iter_mut().zip(block) {
            message.push(c - &*s);
            *s = c.clone();
        }
    }
    poseidon::constraints::permute(params, &mut state)?;
    state[1].enforce_equal(&ciphertext[body])?;
    for m in &message[len..] {
        m.enforce_equal(&FpVar::zero())?;
    }
    message.truncate(len);
    Ok(message)
}

#[cfg(test)]
mod tests {
    use super::*;
    use ark_r1cs_std::{GR1CSVar, alloc::AllocVar};
    use ark_relations::gr1cs::ConstraintSystem;
    use ark_std::UniformRand;

    #[test]
    fn roundtrip_tamper_and_gadget_twin() {
        let mut rng = ark_std::test_rng();
        for len in [1usize, 3, 4, 8] {
            let msg: Vec<Fr> = (0..len).map(|_| Fr::rand(&mut rng)).collect();
            let key = [Fr::rand(&mut rng), Fr::rand(&mut rng)];
            let nonce = 0x1234_5678_9abc_def0_u128 << 60;
            let ct = encrypt(&msg, &key, nonce);
            assert_eq!(ct.len(), padded_len(len) + 1);
            assert_eq!(decrypt(&ct, &key, nonce, len).unwrap(), msg);
            assert_eq!(
                decrypt(&ct, &[key[1], key[0]], nonce, len),
                Err(CircuitError::Authentication)
            );
            assert_eq!(
                decrypt(&ct, &key, nonce + 1, len),
                Err(CircuitError::Authentication)
            );
            for i in 0..ct.len() {
                let mut bad = ct.clone();
                bad[i] += Fr::from(1u64);
                assert!(
                    decrypt(&bad, &key, nonce, len).is_err(),
                    "tampered element {i}"
                );
            }

            let cs = ConstraintSystem::<Fr>::new_ref();
            let c: Vec<FpVar<Fr>> = ct
                .iter()
                .map(|x| FpVar::new_witness(cs.clone(), || Ok(*x)).unwrap())
                .collect();
            let k = [
                FpVar::new_witness(cs.clone(), || Ok(key[0])).unwrap(),
                FpVar::new_witness(cs.clone(), || Ok(key[1])).unwrap(),
            ];
            let n = FpVar::new_witness(cs.clone(), || Ok(Fr::from(nonce))).unwrap();
            let out = decrypt_gadget(poseidon::bn254_params(4), &c, &k, &n, len).unwrap();
            assert_eq!(
                out.iter().map(|v| v.value().unwrap()).collect::<Vec<_>>(),
                msg
            );
            assert!(cs.is_satisfied().unwrap());

            let cs = ConstraintSystem::<Fr>::new_ref();
            let c: Vec<FpVar<Fr>> = ct
                .iter()
                .map(|x| FpVar::new_witness(cs.clone(), || Ok(*x)).unwrap())
                .collect();
            let k = [
                FpVar::new_witness(cs.clone(), || Ok(key[0] + Fr::from(1u64))).unwrap(),
                FpVar::new_witness(cs.clone(), || Ok(key[1])).unwrap(),
            ];
            let n = FpVar::new_witness(cs.clone(), || Ok(Fr::from(nonce))).unwrap();
            decrypt_gadget(poseidon::bn254_params(4), &c, &k, &n, len).unwrap();
            assert!(!cs.is_satisfied().unwrap(), "wrong key must not satisfy");
        }
    }
}
