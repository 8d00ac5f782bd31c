//! Tree heads as C2SP checkpoints with Ed25519 cosignatures, sans-IO.
//!
//! A checkpoint (<https://c2sp.org/tlog-checkpoint>) is a signed note
//! (<https://c2sp.org/signed-note>) whose body is three lines: the log's
//! origin, the tree size in decimal and the root hash in base64. Each member
//! node adds a `tlog-cosignature` line (<https://c2sp.org/tlog-cosignature>,
//! "cosignature/v1", key type 0x04) once it has applied and validated every
//! entry up to that size itself. There is no separate log key: the consortium
//! has no single operator, so a head is trusted on the cosignatures of K
//! distinct members alone. `docs/checkpoint.md` describes the format.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use ed25519_dalek::{Signature, Signer, SigningKey, Verifier, VerifyingKey};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::LedgerError;
use crate::merkle::Hash;
use crate::tx::AccountId;

/// The signature-line prefix of a signed note: an em dash and a space.
const SIG_PREFIX: &str = "\u{2014} ";
/// Signature type of a timestamped Ed25519 cosignature (tlog-cosignature §Format).
const COSIGNATURE_TYPE: u8 = 0x04;
/// Most signature lines a checkpoint may carry (signed-note allows up to 100).
pub const MAX_SIGNATURES: usize = 100;

/// The three body lines of a checkpoint.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckpointBody {
    pub origin: String,
    pub size: u64,
    #[serde(with = "crate::hexbytes")]
    pub root: Hash,
}

impl CheckpointBody {
    /// The note text, with its final newline (what cosignatures sign).
    pub fn text(&self) -> String {
        format!(
            "{}\n{}\n{}\n",
            self.origin,
            self.size,
            B64.encode(self.root)
        )
    }

    /// Refuses a head that cannot belong to the same history as `trusted`:
    /// another log's origin, or the trusted size with another root.
    pub fn check_agrees_with(&self, trusted: &CheckpointBody) -> crate::Result<()> {
        if self.origin != trusted.origin {
            return Err(crate::LedgerError::OtherLog {
                trusted: trusted.origin.clone(),
                found: self.origin.clone(),
            });
        }
        if self.size == trusted.size && self.root != trusted.root {
            return Err(crate::LedgerError::ForkedHeads { size: self.size });
        }
        Ok(())
    }
}

/// One member's cosignature: `timestamp` is seconds since the epoch.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cosignature {
    /// The cosigner's key name (`<network>/<org>/<node>`).
    pub name: String,
    #[serde(with = "crate::hexbytes")]
    pub key: AccountId,
    pub timestamp: u64,
    #[serde(with = "crate::hexbytes")]
    pub signature: [u8; 64],
}

/// `SHA-256(name || "\n" || 0x04 || key)[:4]` (tlog-cosignature §Format).
pub fn key_id(name: &str, key: &AccountId) -> [u8; 4] {
    let mut h = Sha256::new();
    h.update(name.as_bytes());
    h.update(b"\n");
    h.update([COSIGNATURE_TYPE]);
    h.update(key);
    let d = h.finalize();
    [d[0], d[1], d[2], d[3]]
}

fn signed_message(body: &CheckpointBody, timestamp: u64) -> Vec<u8> {
    format!("cosignature/v1\ntime {timestamp}\n{}", body.text()).into_bytes()
}

impl Cosignature {
    pub fn sign(body: &CheckpointBody, name: &str, key: &SigningKey, timestamp: u64) -> Self {
        Cosignature {
            name: name.to_owned(),
            key: key.verifying_key().to_bytes(),
            timestamp,
            signature: key.sign(&signed_message(body, timestamp)).to_bytes(),
        }
    }

    pub fn verify(&self, body: &CheckpointBody) -> Result<(), LedgerError> {
        let key = VerifyingKey::from_bytes(&self.key).map_err(|_| LedgerError::BadCosignature {
            cosigner: self.name.clone(),
        })?;
        key.verify(
            &signed_message(body, self.timestamp),
            &Signature::from_bytes(&self.signature),
        )
        .map_err(|_| LedgerError::BadCosignature {
            cosigner: self.name.clone(),
        })
    }

    /// The note signature line, without its newline.
    pub fn line(&self) -> String {
        let mut blob = key_id(&self.name, &self.key).to_vec();
        blob.extend_from_slice(&self.timestamp.to_be_bytes());
        blob.extend_from_slice(&self.signature);
        format!("{SIG_PREFIX}{} {}", self.name, B64.encode(blob))
    }
}

/// A checkpoint with the cosignatures collected for it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Checkpoint {
    pub body: CheckpointBody,
    pub cosignatures: Vec<Cosignature>,
}

/// A cosigner a verifier trusts: the name it signs under and its key.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cosigner {
    pub name: String,
    #[serde(with = "crate::hexbytes")]
    pub key: AccountId,
}

impl Checkpoint {
    /// The signed note: body, blank line, one line per cosignature.
    pub fn to_note(&self) -> String {
        let mut out = self.body.text();
        out.push('\n');
        for c in &self.cosignatures {
            out.push_str(&c.line());
            out.push('\n');
        }
        out
    }

    /// Parses a signed note. Signature lines whose key is not among
    /// `cosigners` are kept out (signed-note §Verification: unknown keys are
    /// ignored); a known name whose key id or signature is wrong is an error.
    pub fn from_note(note: &str, cosigners: &[Cosigner]) -> Result<Checkpoint, LedgerError> {
        let bad = |why: &str| LedgerError::Malformed(format!("checkpoint: {why}"));
        let (text, sigs) = note
            .split_once("\n\n")
            .ok_or_else(|| bad("no blank line between the body and its signatures"))?;
        let mut lines = text.split('\n');
        let origin = lines
            .next()
            .filter(|l| !l.is_empty())
            .ok_or_else(|| bad("no origin line"))?;
        let size_line = lines.next().ok_or_else(|| bad("no size line"))?;
        if size_line.is_empty()
            || (size_line.len() > 1 && size_line.starts_with('0'))
            || !size_line.bytes().all(|b| b.is_ascii_digit())
        {
            return Err(bad(
                "the size line is not a decimal number without leading zeroes",
            ));
        }
        let size: u64 = size_line
            .parse()
            .map_err(|_| bad("the size does not fit 64 bits"))?;
        let root_b64 = lines.next().ok_or_else(|| bad("no root hash line"))?;
        let root: Hash = B64
            .decode(root_b64)
            .ok()
            .and_then(|v| v.try_into().ok())
            .ok_or_else(|| bad("the root hash line is not 32 bytes of base64"))?;
        if lines.next().is_some() {
            return Err(bad("extension lines are not used by this log"));
        }
        let body = CheckpointBody {
            origin: origin.to_owned(),
            size,
            root,
        };
        if !sigs.ends_with('\n') {
            return Err(bad("the note does not end with a newline"));
        }
        let mut cosignatures = Vec::new();
        for line in sigs[..sigs.len() - 1].split('\n') {
            if cosignatures.len() >= MAX_SIGNATURES {
                return Err(bad("too many signature lines"));
            }
            let rest = line
                .strip_prefix(SIG_PREFIX)
                .ok_or_else(|| bad("a signature line does not start with an em dash"))?;
            let (name, blob) = rest
                .rsplit_once(' ')
                .ok_or_else(|| bad("a signature line has no signature"))?;
            let blob = B64
                .decode(blob)
                .map_err(|_| bad("a signature is not base64"))?;
            let Some(known) = cosigners.iter().find(|c| c.name == name) else {
                continue;
            };
            if blob.len() != 4 + 8 + 64 || blob[..4] != key_id(name, &known.key) {
                // Another key type or key under a known name: not ours to judge.
                continue;
            }
            let c = Cosignature {
                name: name.to_owned(),
                key: known.key,
                timestamp: u64::from_be_bytes(blob[4..12].try_into().expect("8 bytes")),
                signature: blob[12..].try_into().expect("64 bytes"),
            };
            c.verify(&body)?;
            cosignatures.push(c);
        }
        Ok(Checkpoint { body, cosignatures })
    }

    /// Accepts the checkpoint only with valid cosignatures from at least
    /// `min` distinct members of `cosigners`; returns who signed.
    pub fn verify(&self, cosigners: &[Cosigner], min: usize) -> Result<Vec<String>, LedgerError> {
        let mut signed: Vec<String> = Vec::new();
        for c in &self.cosignatures {
            let Some(known) = cosigners.iter().find(|k| k.key == c.key) else {
                continue;
            };
            if known.name != c.name || signed.contains(&known.name) {
                continue;
            }
            c.verify(&self.body)?;
            signed.push(known.name.clone());
        }
        if signed.len() < min {
            return Err(LedgerError::TooFewCosignatures {
                got: signed.len(),
                need: min,
            });
        }
        Ok(signed)
    }
}

/// The default quorum of cosigners: a strict majority.
pub fn majority(n: usize) -> usize {
    n / 2 + 1
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn key(seed: u8) -> SigningKey {
        SigningKey::from_bytes(&[seed; 32])
    }

    fn body() -> CheckpointBody {
        CheckpointBody {
            origin: "example.com/behind-the-sofa".into(),
            size: 20852163,
            root: B64
                .decode("CsUYapGGPo4dkMgIAUqom/Xajj7h2fB2MPA3j2jxq2I=")
                .unwrap()
                .try_into()
                .unwrap(),
        }
    }

    fn members(n: u8) -> (Vec<SigningKey>, Vec<Cosigner>) {
        let keys: Vec<SigningKey> = (1..=n).map(key).collect();
        let c = keys
            .iter()
            .enumerate()
            .map(|(i, k)| Cosigner {
                name: format!("net/org{i}/node"),
                key: k.verifying_key().to_bytes(),
            })
            .collect();
        (keys, c)
    }

    #[test]
    fn a_head_of_another_log_or_a_forked_root_is_refused() {
        let trusted = body();
        // Larger, smaller or equal, with the trusted root: no conflict seen.
        for size in [trusted.size - 1, trusted.size + 1] {
            let other_size = CheckpointBody { size, ..body() };
            other_size.check_agrees_with(&trusted).unwrap();
        }
        trusted.check_agrees_with(&trusted).unwrap();
        let fork = CheckpointBody {
            root: [7; 32],
            ..body()
        };
        let e = fork.check_agrees_with(&trusted).unwrap_err();
        assert!(matches!(e, LedgerError::ForkedHeads { size: 20852163 }));
        assert_eq!(
            e.to_string(),
            "two cosigned heads of size 20852163 have different roots"
        );
        // A different root at another size is for a consistency proof to judge.
        CheckpointBody {
            size: trusted.size + 1,
            ..fork.clone()
        }
        .check_agrees_with(&trusted)
        .unwrap();
        let other = CheckpointBody {
            origin: "example.com/other-log".into(),
            ..body()
        };
        let e = other.check_agrees_with(&trusted).unwrap_err();
        assert!(matches!(e, LedgerError::OtherLog { .. }));
        assert_eq!(
            e.to_string(),
            "the proof is for the log `example.com/other-log`, not the trusted log `example.com/behind-the-sofa`"
        );
    }

    #[test]
    fn the_body_is_the_c2sp_example_text() {
        // The example checkpoint of c2sp.org/tlog-checkpoint.
        assert_eq!(
            body().text(),
            "example.com/behind-the-sofa\n20852163\nCsUYapGGPo4dkMgIAUqom/Xajj7h2fB2MPA3j2jxq2I=\n"
        );
    }

    #[test]
    fn the_cosigned_message_is_the_c2sp_one() {
        // tlog-cosignature §"Ed25519 signed message", its example verbatim.
        assert_eq!(
            String::from_utf8(signed_message(&body(), 1679315147)).unwrap(),
            "cosignature/v1\ntime 1679315147\nexample.com/behind-the-sofa\n20852163\n\
             CsUYapGGPo4dkMgIAUqom/Xajj7h2fB2MPA3j2jxq2I=\n"
        );
    }

    /// The example body cosigned by `n` members at `timestamp`.
    fn cosigned_by(n: u8, timestamp: u64) -> (Checkpoint, Vec<Cosigner>) {
        let (keys, cosigners) = members(n);
        let b = body();
        let cp = Checkpoint {
            body: b.clone(),
            cosignatures: keys
                .iter()
                .zip(&cosigners)
                .map(|(k, c)| Cosignature::sign(&b, &c.name, k, timestamp))
                .collect(),
        };
        (cp, cosigners)
    }

    #[test]
    fn notes_round_trip_and_count_distinct_members() {
        let (cp, cosigners) = cosigned_by(3, 1_700_000_000);
        let note = cp.to_note();
        let back = Checkpoint::from_note(&note, &cosigners).unwrap();
        assert_eq!(back, cp);
        assert_eq!(back.verify(&cosigners, 3).unwrap().len(), 3);
        assert!(matches!(
            back.verify(&cosigners[..1], 2),
            Err(LedgerError::TooFewCosignatures { got: 1, need: 2 })
        ));
        // The same member twice counts once.
        let mut twice = cp.clone();
        twice.cosignatures = vec![cp.cosignatures[0].clone(), cp.cosignatures[0].clone()];
        assert!(matches!(
            twice.verify(&cosigners, 2),
            Err(LedgerError::TooFewCosignatures { got: 1, need: 2 })
        ));
    }

    #[test]
    fn the_python_client_s_vector_is_this_note() {
        // Made with the Python client (`cryptography`'s Ed25519); the same
        // file is its known answer, so the two implementations agree.
        let v: serde_json::Value = serde_json::from_str(include_str!(
            "../../clients/python/tests/vectors/checkpoint.json"
        ))
        .unwrap();
        let (cp, cosigners) = cosigned_by(3, 1679315147);
        assert_eq!(v["timestamp"], 1679315147);
        assert_eq!(cp.to_note(), v["note"].as_str().unwrap());
        for (c, j) in cosigners.iter().zip(v["cosigners"].as_array().unwrap()) {
            assert_eq!(j["name"], c.name.as_str());
            assert_eq!(j["key"], hex::encode(c.key));
        }
    }

    #[test]
    fn a_forged_cosignature_is_refused_by_name() {
        let (keys, cosigners) = members(2);
        let b = body();
        let mut c = Cosignature::sign(&b, &cosigners[0].name, &keys[0], 5);
        c.signature[10] ^= 1;
        let cp = Checkpoint {
            body: b.clone(),
            cosignatures: vec![c],
        };
        let err = Checkpoint::from_note(&cp.to_note(), &cosigners).unwrap_err();
        assert!(
            matches!(&err, LedgerError::BadCosignature { cosigner } if cosigner == "net/org0/node")
        );
        // Signed by another key under a member's name: ignored, not counted.
        let imposter = Cosignature::sign(&b, &cosigners[1].name, &key(99), 5);
        let cp = Checkpoint {
            body: b,
            cosignatures: vec![imposter],
        };
        let parsed = Checkpoint::from_note(&cp.to_note(), &cosigners).unwrap();
        assert!(parsed.cosignatures.is_empty());
        assert!(cp.verify(&cosigners, 1).is_err());
    }

    #[test]
    fn a_cosignature_binds_size_and_root() {
        let (keys, cosigners) = members(1);
        let b = body();
        let c = Cosignature::sign(&b, &cosigners[0].name, &keys[0], 5);
        let mut other = b.clone();
        other.size += 1;
        assert!(c.verify(&other).is_err());
        other = b;
        other.root[0] ^= 1;
        assert!(c.verify(&other).is_err());
    }

    proptest! {
        #[test]
        fn parsing_arbitrary_notes_never_panics(s in "\\PC{0,200}") {
            let (_, cosigners) = members(2);
            let _ = Checkpoint::from_note(&s, &cosigners);
        }

        #[test]
        fn any_changed_byte_of_a_note_is_refused_or_loses_its_cosignature(pos in 0usize..400, bit in 0u8..8) {
            let (keys, cosigners) = members(1);
            let b = body();
            let cp = Checkpoint { body: b.clone(), cosignatures: vec![Cosignature::sign(&b, &cosigners[0].name, &keys[0], 7)] };
            let mut note = cp.to_note().into_bytes();
            let pos = pos % note.len();
            note[pos] ^= 1 << bit;
            if let Ok(s) = String::from_utf8(note)
                && let Ok(back) = Checkpoint::from_note(&s, &cosigners)
            {
                // Whatever still parses carries no valid cosignature for another head.
                prop_assert!(back == cp || back.verify(&cosigners, 1).is_err());
            }
        }
    }
}
