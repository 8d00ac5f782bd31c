//! ZK-friendly keys: two BN254 scalar-field elements for the Poseidon cipher
//! of the ZK capability, and the Poseidon commitment to them.

use ark_bn254::Fr;
use ark_ff::{BigInteger, PrimeField};
use zeroize::Zeroizing;

use crate::crypto;
use crate::error::{KmsError, Result};
use crate::secret::SecretBytes;

pub const ELEMENTS_LEN: usize = 64;

/// Two uniformly random field elements (reduced from 512 random bits each),
/// as 32-byte little-endian canonical encodings.
pub fn random_elements() -> Result<SecretBytes> {
    let mut out = Vec::with_capacity(ELEMENTS_LEN);
    for _ in 0..2 {
        let wide = Zeroizing::new(crypto::random::<64>()?);
        let f = Fr::from_le_bytes_mod_order(&*wide);
        out.extend_from_slice(&Zeroizing::new(f.into_bigint().to_bytes_le()));
    }
    Ok(SecretBytes::new(out))
}

/// Parses the two elements, refusing non-canonical encodings.
pub fn elements(bytes: &[u8]) -> Result<[Fr; 2]> {
    if bytes.len() != ELEMENTS_LEN {
        return Err(KmsError::Corrupt("ZK key is not 64 bytes".into()));
    }
    let parse = |b: &[u8]| {
        let f = Fr::from_le_bytes_mod_order(b);
        if f.into_bigint().to_bytes_le() != b {
            return Err(KmsError::Corrupt("ZK key element is not canonical".into()));
        }
        Ok(f)
    };
    Ok([parse(&bytes[..32])?, parse(&bytes[32..])?])
}

/// Poseidon(k0, k1), as the 32-byte little-endian encoding of the field element.
pub fn commitment(bytes: &[u8]) -> Result<[u8; 32]> {
    let [k0, k1] = elements(bytes)?;
    let c = yilian_circuits::poseidon::hash(&[k0, k1]);
    let le = c.into_bigint().to_bytes_le();
    Ok(le.try_into().expect("BN254 Fr encodes in 32 bytes"))
}
