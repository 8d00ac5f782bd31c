//! A ceremony's transcript on disk, and its verification from the start.
//!
//! ```text
//! <dir>/phase1/0000.bin          the starting accumulator (recomputed and compared)
//! <dir>/phase1/NNNN.bin, .proof  contribution N
//!   or, from a public phase 1:
//! <dir>/phase1/imported.ptau     the snarkjs/Hermez file itself, re-read by every
//!                                verification (its SHA-256 is what to compare
//!                                with the public ceremony's)
//! <dir>/phase2/0000.bin          the derived key (recomputed and compared)
//! <dir>/phase2/NNNN.bin, .proof  contribution N
//! ```
//!
//! Each state's transcript hash chains from the one before
//! ([`super::transcript_hash`]); the hash of contribution N is what its
//! contributor anchors on the ledger (`CeremonyContribution`).

use std::path::{Path, PathBuf};

use ark_bn254::Bn254;
use ark_groth16::ProvingKey;
use ark_serialize::{CanonicalDeserialize, CanonicalSerialize};

use super::derive::{self, Qap};
use super::phase1::{self, Accumulator};
use super::{CeremonyError, phase2, transcript_hash, transcript_hash_encoded};
use crate::RandomSource;
use crate::{Result, ZkError};

/// One contribution as the ledger anchors it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Step {
    pub phase: u8,
    pub index: u32,
    pub hash: [u8; 32],
}

fn file(dir: &Path, phase: u8, index: u32, ext: &str) -> PathBuf {
    dir.join(format!("phase{phase}"))
        .join(format!("{index:04}.{ext}"))
}

fn read<T: CanonicalDeserialize>(path: &Path) -> Result<T> {
    let bytes = std::fs::read(path)?;
    T::deserialize_compressed(bytes.as_slice()).map_err(|e| ZkError::Malformed {
        what: "ceremony file",
        detail: format!("{}: {e}", path.display()),
    })
}

fn write<T: CanonicalSerialize>(path: &Path, value: &T) -> Result<()> {
    std::fs::create_dir_all(path.parent().expect("files are in a phase directory"))?;
    let mut bytes = Vec::new();
    value
        .serialize_compressed(&mut bytes)
        .expect("serialising to memory cannot fail");
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, bytes)?;
    std::fs::rename(&tmp, path)?;
    Ok(())
}

fn count(dir: &Path, phase: u8) -> u32 {
    (1..)
        .take_while(|i| file(dir, phase, *i, "bin").exists())
        .count() as u32
}

fn ceremony(e: CeremonyError) -> ZkError {
    ZkError::Ceremony(e)
}

/// Starts a ceremony for a circuit in `dir`: phase 1 sized to its domain.
pub fn init(dir: &Path, qap: &Qap) -> Result<usize> {
    if file(dir, 1, 0, "bin").exists() || imported(dir).exists() {
        return Err(ZkError::BadRequest(format!(
            "{}: a ceremony is already there; contribute to it or choose another directory",
            dir.display()
        )));
    }
    let n = qap.domain_size();
    write(&file(dir, 1, 0, "bin"), &Accumulator::new(n))?;
    Ok(n)
}

fn imported(dir: &Path) -> PathBuf {
    dir.join("phase1").join("imported.ptau")
}

/// The accumulator of an imported `.ptau`, checked, and the file's SHA-256.
fn read_imported(dir: &Path, rng: &mut dyn RandomSource) -> Result<(Accumulator, [u8; 32])> {
    use sha2::Digest;
    let bytes = std::fs::read(imported(dir))?;
    let acc = super::ptau::read(&bytes)?;
    acc.check_shape(0, rng).map_err(ceremony)?;
    Ok((acc, sha2::Sha256::digest(&bytes).into()))
}

/// The SHA-256 of the `.ptau` file phase 1 was taken from, if it was.
pub fn imported_digest(dir: &Path) -> Result<Option<[u8; 32]>> {
    use sha2::Digest;
    if !imported(dir).exists() {
        return Ok(None);
    }
    Ok(Some(
        sha2::Sha256::digest(std::fs::read(imported(dir))?).into(),
    ))
}

/// Starts a ceremony from a public phase 1 (a snarkjs/Hermez `.ptau`
/// file): its accumulator must be well formed and cover the circuit; phase
/// 2 then starts from the key derived from it. Returns the file's SHA-256.
pub fn import_ptau(
    dir: &Path,
    ptau: &[u8],
    qap: &Qap,
    rng: &mut dyn RandomSource,
) -> Result<[u8; 32]> {
    use sha2::Digest;
    if file(dir, 1, 0, "bin").exists() || imported(dir).exists() {
        return Err(ZkError::BadRequest(format!(
            "{}: a ceremony is already there; choose another directory",
            dir.display()
        )));
    }
    let acc = super::ptau::read(ptau)?;
    acc.check_shape(0, rng).map_err(ceremony)?;
    let pk = derive::initial_key(&acc, qap).map_err(ceremony)?;
    let digest: [u8; 32] = sha2::Sha256::digest(ptau).into();
    std::fs::create_dir_all(dir.join("phase1"))?;
    std::fs::write(imported(dir), ptau)?;
    write(&file(dir, 2, 0, "bin"), &pk)?;
    Ok(digest)
}

/// The accumulator phase 2 starts from, and the transcript hash after it.
fn phase1_result(
    dir: &Path,
    n: Option<usize>,
    steps: &mut Vec<Step>,
    rng: &mut dyn RandomSource,
) -> Result<(Accumulator, [u8; 32])> {
    if imported(dir).exists() {
        let (acc, digest) = read_imported(dir, rng)?;
        let h = transcript_hash(&digest, &acc);
        return Ok((acc, h));
    }
    let n1 = count(dir, 1);
    if n1 == 0 {
        return Err(ZkError::BadRequest(format!(
            "{}: phase 1 needs at least one contribution",
            dir.display()
        )));
    }
    let mut acc: Accumulator = read(&file(dir, 1, 0, "bin"))?;
    if let Some(n) = n
        && acc != Accumulator::new(n)
    {
        return Err(ceremony(CeremonyError::BadUpdate {
            index: 0,
            what: "the starting accumulator",
        }));
    }
    let mut h = transcript_hash(&[0; 32], &acc);
    for i in 1..=n1 {
        let next: Accumulator = read(&file(dir, 1, i, "bin"))?;
        let proof: phase1::Contribution = read(&file(dir, 1, i, "proof"))?;
        acc.verify(&next, &proof, &h, i as usize, rng)
            .map_err(ceremony)?;
        h = transcript_hash(&h, &next);
        steps.push(Step {
            phase: 1,
            index: i,
            hash: h,
        });
        acc = next;
    }
    Ok((acc, h))
}

/// Adds a contribution to the current phase, after checking the state it
/// builds on. Returns the step to anchor.
pub fn contribute(dir: &Path, rng: &mut dyn RandomSource) -> Result<Step> {
    let (phase, last) = match count_phase2(dir) {
        Some(k) => (2u8, k),
        None => (1u8, count(dir, 1)),
    };
    let hashes = hashes_so_far(dir, phase, last)?;
    let previous = *hashes.last().expect("state 0 is always hashed");
    let index = last + 1;
    let hash = if phase == 1 {
        let acc: Accumulator = read(&file(dir, 1, last, "bin"))?;
        let (next, proof) = acc.contribute(&previous, rng);
        write(&file(dir, 1, index, "bin"), &next)?;
        write(&file(dir, 1, index, "proof"), &proof)?;
        transcript_hash(&previous, &next)
    } else {
        let pk: ProvingKey<Bn254> = read(&file(dir, 2, last, "bin"))?;
        let (next, proof) = phase2::contribute(&pk, &previous, rng);
        write(&file(dir, 2, index, "bin"), &next)?;
        write(&file(dir, 2, index, "proof"), &proof)?;
        transcript_hash(&previous, &next)
    };
    Ok(Step { phase, index, hash })
}

/// Removes contribution `step`, which must be the last one of its phase
/// (one whose anchoring failed).
pub fn withdraw(dir: &Path, step: &Step) -> Result<()> {
    let last = if step.phase == 2 {
        count_phase2(dir)
    } else {
        Some(count(dir, 1))
    };
    if last != Some(step.index) || (step.phase == 1 && phase2_started(dir)) {
        return Err(ZkError::BadRequest(format!(
            "{}: phase {} contribution {} is not the last one",
            dir.display(),
            step.phase,
            step.index
        )));
    }
    // The .bin first: it is what makes a contribution count.
    for ext in ["bin", "proof"] {
        std::fs::remove_file(file(dir, step.phase, step.index, ext))?;
    }
    Ok(())
}

fn count_phase2(dir: &Path) -> Option<u32> {
    phase2_started(dir).then(|| count(dir, 2))
}

/// Whether phase 1 is finished (phase 2's starting key is there).
pub fn phase2_started(dir: &Path) -> bool {
    file(dir, 2, 0, "bin").exists()
}

/// The transcript hash of every state up to `last` of `phase`, hashed from
/// the files' bytes, not decoded or verified ([`verify`] does that): what a
/// contribution chains from, and what to look for anchored.
fn hashes_so_far(dir: &Path, phase: u8, last: u32) -> Result<Vec<[u8; 32]>> {
    let mut out = Vec::new();
    let mut h = if imported(dir).exists() {
        use sha2::Digest;
        let bytes = std::fs::read(imported(dir))?;
        let acc = super::ptau::read(&bytes)?;
        let digest: [u8; 32] = sha2::Sha256::digest(&bytes).into();
        transcript_hash(&digest, &acc)
    } else {
        let p1 = if phase == 1 { last } else { count(dir, 1) };
        let mut h = [0u8; 32];
        for i in 0..=p1 {
            h = transcript_hash_encoded(&h, &std::fs::read(file(dir, 1, i, "bin"))?);
            if phase == 1 {
                out.push(h);
            }
        }
        h
    };
    if phase == 2 {
        for i in 0..=last {
            h = transcript_hash_encoded(&h, &std::fs::read(file(dir, 2, i, "bin"))?);
            out.push(h);
        }
    }
    Ok(out)
}

/// Every contribution in `dir` as its contributor anchored it, from the
/// files as they are (not verified: [`verify`] does that, and returns the
/// same steps for a transcript that verifies).
pub fn steps(dir: &Path) -> Result<Vec<Step>> {
    let mut out = Vec::new();
    if !imported(dir).exists() {
        let n1 = count(dir, 1);
        let hashes = hashes_so_far(dir, 1, n1)?;
        out.extend((1..=n1).map(|i| Step {
            phase: 1,
            index: i,
            hash: hashes[i as usize],
        }));
    }
    if let Some(n2) = count_phase2(dir) {
        let hashes = hashes_so_far(dir, 2, n2)?;
        out.extend((1..=n2).map(|i| Step {
            phase: 2,
            index: i,
            hash: hashes[i as usize],
        }));
    }
    Ok(out)
}

/// The key at the end of phase 2 as it is on disk, not verified.
pub fn last_key(dir: &Path) -> Result<ProvingKey<Bn254>> {
    let n2 = count_phase2(dir).ok_or_else(|| {
        ZkError::BadRequest(format!("{}: phase 1 is not finished", dir.display()))
    })?;
    read(&file(dir, 2, n2, "bin"))
}

/// Ends phase 1: derives the initial phase-2 key for the circuit.
pub fn finish_phase1(dir: &Path, qap: &Qap) -> Result<()> {
    if count_phase2(dir).is_some() {
        return Err(ZkError::BadRequest(format!(
            "{}: phase 1 is already finished",
            dir.display()
        )));
    }
    let last = count(dir, 1);
    if last == 0 {
        return Err(ZkError::BadRequest(format!(
            "{}: phase 1 has no contribution yet; at least one member must contribute",
            dir.display()
        )));
    }
    let acc: Accumulator = read(&file(dir, 1, last, "bin"))?;
    let pk = derive::initial_key(&acc, qap).map_err(ceremony)?;
    write(&file(dir, 2, 0, "bin"), &pk)
}

/// Verifies the whole transcript for the circuit from its start, recomputing
/// the starting accumulator and checking the derived key
/// ([`derive::check_initial_key`]). Returns the final key and
/// every contribution's step, for the caller to find anchored.
pub fn verify(
    dir: &Path,
    qap: &Qap,
    rng: &mut dyn RandomSource,
) -> Result<(ProvingKey<Bn254>, Vec<Step>)> {
    let n2 = count_phase2(dir).ok_or_else(|| {
        ZkError::BadRequest(format!("{}: phase 1 is not finished", dir.display()))
    })?;
    if n2 == 0 {
        return Err(ZkError::BadRequest(format!(
            "{}: phase 2 needs at least one contribution",
            dir.display()
        )));
    }
    let mut steps = Vec::new();
    let n = qap.domain_size();
    let (acc, mut h) = phase1_result(dir, Some(n), &mut steps, rng)?;
    let mut pk: ProvingKey<Bn254> = read(&file(dir, 2, 0, "bin"))?;
    derive::check_initial_key(&acc, qap, &pk, rng).map_err(ceremony)?;
    h = transcript_hash(&h, &pk);
    for i in 1..=n2 {
        let next: ProvingKey<Bn254> = read(&file(dir, 2, i, "bin"))?;
        let proof: phase2::Contribution = read(&file(dir, 2, i, "proof"))?;
        phase2::verify(&pk, &next, &proof, &h, i as usize, rng).map_err(ceremony)?;
        h = transcript_hash(&h, &next);
        steps.push(Step {
            phase: 2,
            index: i,
            hash: h,
        });
        pk = next;
    }
    Ok((pk, steps))
}
