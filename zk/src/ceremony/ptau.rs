//! Reading a phase-1 accumulator from a snarkjs / Hermez powers-of-tau file
//! (`.ptau`), for users who take phase 1 from a public ceremony.
//!
//! The format (snarkjs `src/powersoftau_new.js`, iden3 `binfileutils`):
//! the magic `ptau`, a u32 version, a u32 section count, then sections of
//! (u32 type, u64 size, data), little-endian. Section 1 is the header
//! (u32 n8 = 32, the base field prime in n8 bytes, u32 power, u32 ceremony
//! power); sections 2 to 6 hold τ^i·G1 (2·2^power − 1 points), τ^i·G2,
//! ατ^i·G1, βτ^i·G1 (2^power each) and β·G2, as uncompressed affine
//! coordinates in Montgomery form, little-endian: arkworks' own
//! representation of BN254's base field. Other sections (the contributions,
//! a prepared file's Lagrange bases) are not read: the accumulator's shape
//! is checked by [`Accumulator::check_shape`], and its history is the
//! public ceremony's to show (`snarkjs powersoftau verify`).

use ark_bn254::{Fq, Fq2, G1Affine, G2Affine};
use ark_ff::{BigInt, BigInteger, PrimeField};

use super::phase1::Accumulator;

/// Why a `.ptau` file is refused: what is wrong, and where.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PtauError {
    #[error("not a powers-of-tau file (no `ptau` magic)")]
    NotPtau,
    #[error("ptau version {0}; version 1 is read")]
    Version(u32),
    #[error("the file ends inside {0}")]
    Truncated(&'static str),
    #[error("section {0} is missing")]
    MissingSection(u32),
    #[error("the header is not for BN254 (bn128): {0}")]
    OtherCurve(&'static str),
    #[error("power {0} is out of range (1 to 28)")]
    Power(u32),
    #[error("section {section} has {have} bytes, {need} expected for power {power}")]
    SectionSize {
        section: u32,
        have: u64,
        need: u64,
        power: u32,
    },
    #[error("point {index} of section {section} is not a valid curve point")]
    BadPoint { section: u32, index: usize },
}

fn u32_at(b: &[u8], at: usize, what: &'static str) -> Result<u32, PtauError> {
    b.get(at..at + 4)
        .map(|s| u32::from_le_bytes(s.try_into().expect("4 bytes")))
        .ok_or(PtauError::Truncated(what))
}

fn fq(b: &[u8]) -> Option<Fq> {
    let mut limbs = [0u64; 4];
    for (l, c) in limbs.iter_mut().zip(b.chunks_exact(8)) {
        *l = u64::from_le_bytes(c.try_into().expect("8 bytes"));
    }
    // Montgomery form, as arkworks keeps it: below the modulus, or refused.
    let repr = BigInt::new(limbs);
    (repr < Fq::MODULUS).then(|| Fq::new_unchecked(repr))
}

fn g1s(data: &[u8], section: u32) -> Result<Vec<G1Affine>, PtauError> {
    data.chunks_exact(64)
        .enumerate()
        .map(|(index, c)| {
            let p = fq(&c[..32])
                .zip(fq(&c[32..]))
                .map(|(x, y)| G1Affine::new_unchecked(x, y));
            match p {
                Some(p) if p.is_on_curve() && p.is_in_correct_subgroup_assuming_on_curve() => Ok(p),
                _ => Err(PtauError::BadPoint { section, index }),
            }
        })
        .collect()
}

fn g2s(data: &[u8], section: u32) -> Result<Vec<G2Affine>, PtauError> {
    use rayon::prelude::*;
    data.par_chunks_exact(128)
        .enumerate()
        .map(|(index, c)| {
            let coords: Option<Vec<Fq>> = c.chunks_exact(32).map(fq).collect();
            let p =
                coords.map(|v| G2Affine::new_unchecked(Fq2::new(v[0], v[1]), Fq2::new(v[2], v[3])));
            match p {
                Some(p) if p.is_on_curve() && p.is_in_correct_subgroup_assuming_on_curve() => Ok(p),
                _ => Err(PtauError::BadPoint { section, index }),
            }
        })
        .collect()
}

/// Reads the accumulator from a `.ptau` file's bytes. Its shape is not
/// checked here: call [`Accumulator::check_shape`].
pub fn read(bytes: &[u8]) -> Result<Accumulator, PtauError> {
    if bytes.get(..4) != Some(b"ptau".as_slice()) {
        return Err(PtauError::NotPtau);
    }
    let version = u32_at(bytes, 4, "the preamble")?;
    if version != 1 {
        return Err(PtauError::Version(version));
    }
    let count = u32_at(bytes, 8, "the preamble")?;
    let mut sections: [Option<&[u8]>; 7] = [None; 7];
    let mut at = 12usize;
    for _ in 0..count {
        let kind = u32_at(bytes, at, "a section header")?;
        let size = bytes
            .get(at + 4..at + 12)
            .map(|s| u64::from_le_bytes(s.try_into().expect("8 bytes")))
            .ok_or(PtauError::Truncated("a section header"))?;
        let start = at + 12;
        let end = usize::try_from(size)
            .ok()
            .and_then(|s| start.checked_add(s))
            .filter(|e| *e <= bytes.len())
            .ok_or(PtauError::Truncated("a section"))?;
        if let Some(slot) = sections.get_mut(kind as usize) {
            *slot = Some(&bytes[start..end]);
        }
        at = end;
    }
    let section = |k: u32| sections[k as usize].ok_or(PtauError::MissingSection(k));
    let header = section(1)?;
    if u32_at(header, 0, "the header")? != 32 {
        return Err(PtauError::OtherCurve("field elements are not 32 bytes"));
    }
    let prime = header
        .get(4..36)
        .ok_or(PtauError::Truncated("the header"))?;
    if prime != Fq::MODULUS.to_bytes_le().as_slice() {
        return Err(PtauError::OtherCurve("another base field prime"));
    }
    let power = u32_at(header, 36, "the header")?;
    if !(1..=28).contains(&power) {
        return Err(PtauError::Power(power));
    }
    let n = 1u64 << power;
    let sized = |k: u32, points: u64, width: u64| -> Result<&[u8], PtauError> {
        let data = section(k)?;
        if data.len() as u64 != points * width {
            return Err(PtauError::SectionSize {
                section: k,
                have: data.len() as u64,
                need: points * width,
                power,
            });
        }
        Ok(data)
    };
    Ok(Accumulator {
        tau_g1: g1s(sized(2, 2 * n - 1, 64)?, 2)?,
        tau_g2: g2s(sized(3, n, 128)?, 3)?,
        alpha_tau_g1: g1s(sized(4, n, 64)?, 4)?,
        beta_tau_g1: g1s(sized(5, n, 64)?, 5)?,
        beta_g2: g2s(sized(6, 1, 128)?, 6)?[0],
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// Whatever the bytes, the reader answers without panicking.
        #[test]
        fn garbage_is_refused_without_panicking(mut bytes in proptest::collection::vec(any::<u8>(), 0..512), magic in any::<bool>()) {
            if magic && bytes.len() >= 12 {
                bytes[..4].copy_from_slice(b"ptau");
                bytes[4..8].copy_from_slice(&1u32.to_le_bytes());
            }
            prop_assert!(read(&bytes).is_err());
        }
    }
}
