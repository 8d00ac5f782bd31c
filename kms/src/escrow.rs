//! Threshold escrow of a key to n trustees, t of whom can recover it.
//!
//! A fresh random Ristretto scalar `s` is split by Shamir with Feldman
//! commitments (`vsss-rs`), so each trustee can check its share against the
//! public commitments. The escrowed key is wrapped under
//! `KEK = SHA-256("yilian-kms/escrow-kek/v1" || s)`, and each share is sealed
//! to its trustee's ed25519 identity ([`crate::crypto::seal_to`]). The package
//! is self-contained: t trustees can recover the key offline with this
//! module alone. Fewer than t shares say nothing about `s`, hence nothing
//! about the key.

use curve25519_dalek::ristretto::{CompressedRistretto, RistrettoPoint};
use curve25519_dalek::scalar::Scalar;
use ed25519_dalek::{Signature, SigningKey, Verifier, VerifyingKey};
use getrandom::{SysRng, rand_core::UnwrapErr};
use serde::{Deserialize, Serialize};
use vsss_rs::{
    DefaultShare, FeldmanVerifierSet, IdentifierPrimeField, ReadableShareSet, ShareVerifierGroup,
};
use zeroize::Zeroizing;

use crate::crypto;
use crate::error::{KmsError, Result};
use crate::secret::{Key32, SecretBytes};

type Share = DefaultShare<IdentifierPrimeField<Scalar>, IdentifierPrimeField<Scalar>>;
type Commitment = ShareVerifierGroup<RistrettoPoint>;

pub const SHARE_LEN: usize = 64;

/// What is stored for an escrow and handed to trustees.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct EscrowPackage {
    pub key_id: String,
    pub owner: [u8; 32],
    pub key_version: u32,
    pub threshold: u32,
    /// Trustee ed25519 public keys; share i belongs to trustee i.
    pub trustees: Vec<[u8; 32]>,
    /// Feldman commitments: generator first, then g^{a_j} for each coefficient.
    pub commitments: Vec<[u8; 32]>,
    /// Share i sealed to trustee i.
    pub sealed_shares: Vec<Vec<u8>>,
    /// The key material, wrapped under the KEK derived from the secret.
    pub wrapped_key: Vec<u8>,
}

/// A trustee's decrypted share: identifier (32) || value (32), both canonical scalars.
#[derive(Clone, Debug)]
pub struct TrusteeShare(pub SecretBytes);

fn share_context(key_id: &str, owner: &[u8; 32], version: u32) -> Vec<u8> {
    let mut c = b"yilian-kms/escrow-share/v1".to_vec();
    c.extend_from_slice(owner);
    c.extend_from_slice(&version.to_be_bytes());
    c.extend_from_slice(key_id.as_bytes());
    c
}

fn kek_from_secret(s: &Scalar) -> Key32 {
    let bytes = Zeroizing::new(s.to_bytes());
    Key32::from_bytes(crypto::sha256(&[b"yilian-kms/escrow-kek/v1", &*bytes]))
}

fn encode_share(share: &Share) -> SecretBytes {
    let mut out = Vec::with_capacity(SHARE_LEN);
    out.extend_from_slice(&share.identifier.0.to_bytes());
    out.extend_from_slice(&share.value.0.to_bytes());
    SecretBytes::new(out)
}

fn decode_share(bytes: &[u8]) -> Result<Share> {
    if bytes.len() != SHARE_LEN {
        return Err(KmsError::MalformedShare);
    }
    let scalar = |b: &[u8]| -> Result<Scalar> {
        let arr: [u8; 32] = b.try_into().expect("32 bytes");
        Option::from(Scalar::from_canonical_bytes(arr)).ok_or(KmsError::MalformedShare)
    };
    let id = scalar(&bytes[..32])?;
    let value = scalar(&bytes[32..])?;
    if id == Scalar::ZERO {
        return Err(KmsError::MalformedShare);
    }
    Ok(Share {
        identifier: IdentifierPrimeField(id),
        value: IdentifierPrimeField(value),
    })
}

fn decode_commitments(c: &[[u8; 32]]) -> Result<Vec<Commitment>> {
    c.iter()
        .map(|b| {
            CompressedRistretto(*b)
                .decompress()
                .map(vsss_rs::ValueGroup)
                .ok_or_else(|| {
                    KmsError::Corrupt("escrow commitment is not a Ristretto point".into())
                })
        })
        .collect()
}

impl EscrowPackage {
    /// Splits `key` among `trustees` with threshold `threshold`.
    pub fn create(
        key_id: &str,
        owner: &[u8; 32],
        key_version: u32,
        key: &SecretBytes,
        trustees: &[[u8; 32]],
        threshold: usize,
    ) -> Result<EscrowPackage> {
        let n = trustees.len();
        let mut distinct = trustees.to_vec();
        distinct.sort();
        distinct.dedup();
        if threshold < 2 || threshold > n || n > 255 || distinct.len() != n {
            return Err(KmsError::BadEscrowParameters {
                threshold,
                trustees: n,
                least: 2,
            });
        }
        for t in trustees {
            VerifyingKey::from_bytes(t).map_err(|_| {
                KmsError::BadRequest(format!("trustee {} is not an ed25519 key", hex::encode(t)))
            })?;
        }
        let wide = Zeroizing::new(crypto::random::<64>()?);
        let s = Scalar::from_bytes_mod_order_wide(&wide);
        let (shares, commitments) = vsss_rs::feldman::split_secret::<Share, Commitment>(
            threshold,
            n,
            &IdentifierPrimeField(s),
            None,
            UnwrapErr(SysRng),
        )
        .map_err(|e| KmsError::BadRequest(format!("secret sharing: {e}")))?;
        let kek = kek_from_secret(&s);
        let ctx = share_context(key_id, owner, key_version);
        let wrapped_key = crypto::seal_random_nonce(&kek, &ctx, key.expose())?;
        let sealed_shares = shares
            .iter()
            .zip(trustees)
            .map(|(sh, t)| crypto::seal_to(t, &ctx, encode_share(sh).expose()))
            .collect::<Result<Vec<_>>>()?;
        Ok(EscrowPackage {
            key_id: key_id.to_owned(),
            owner: *owner,
            key_version,
            threshold: threshold as u32,
            trustees: trustees.to_vec(),
            commitments: commitments
                .iter()
                .map(|c| c.0.compress().to_bytes())
                .collect(),
            sealed_shares,
            wrapped_key,
        })
    }

    fn context(&self) -> Vec<u8> {
        share_context(&self.key_id, &self.owner, self.key_version)
    }

    pub fn trustee_index(&self, trustee: &[u8; 32]) -> Option<usize> {
        self.trustees.iter().position(|t| t == trustee)
    }

    /// A trustee opens and checks its share against the Feldman commitments.
    pub fn open_share(&self, trustee: &SigningKey) -> Result<TrusteeShare> {
        let me = trustee.verifying_key().to_bytes();
        let i = self
            .trustee_index(&me)
            .ok_or_else(|| KmsError::NotTrustee(hex::encode(me)))?;
        let share = crypto::open_from(trustee, &self.context(), &self.sealed_shares[i])
            .map_err(|_| KmsError::MalformedShare)?;
        self.verify_share(share.expose())?;
        Ok(TrusteeShare(share))
    }

    /// Checks a share against the commitments (Feldman verification).
    pub fn verify_share(&self, share: &[u8]) -> Result<()> {
        let share = decode_share(share)?;
        let commitments = decode_commitments(&self.commitments)?;
        commitments
            .verify_share(&share)
            .map_err(|_| KmsError::MalformedShare)
    }

    /// Recombines at least `threshold` verified shares and unwraps the key.
    pub fn recover(&self, shares: &[&[u8]]) -> Result<SecretBytes> {
        if shares.len() < self.threshold as usize {
            return Err(KmsError::RecoveryIncomplete {
                recovery_id: String::new(),
                approvals: shares.len(),
                threshold: self.threshold as usize,
            });
        }
        let commitments = decode_commitments(&self.commitments)?;
        let mut decoded = Vec::with_capacity(shares.len());
        for s in shares {
            let share = decode_share(s)?;
            commitments
                .verify_share(&share)
                .map_err(|_| KmsError::MalformedShare)?;
            decoded.push(share);
        }
        let secret = decoded.combine().map_err(|_| KmsError::MalformedShare)?;
        let kek = kek_from_secret(&secret.0);
        crypto::open_random_nonce(&kek, &self.context(), &self.wrapped_key)
            .map_err(|_| KmsError::EscrowCorrupt)
    }
}

/// The message a trustee signs to approve a recovery. The share's hash is
/// bound in so an approval cannot be replayed with another share.
pub fn approval_message(
    recovery_id: &str,
    key_id: &str,
    recipient: &[u8; 32],
    nonce: &[u8; 32],
    share: &[u8],
) -> Vec<u8> {
    let mut m = b"yilian-kms/recovery-approval/v1".to_vec();
    m.extend_from_slice(&crypto::sha256(&[
        recovery_id.as_bytes(),
        key_id.as_bytes(),
        recipient,
        nonce,
        &crypto::sha256(&[share]),
    ]));
    m
}

pub fn sign_approval(
    trustee: &SigningKey,
    recovery_id: &str,
    key_id: &str,
    recipient: &[u8; 32],
    nonce: &[u8; 32],
    share: &[u8],
) -> [u8; 64] {
    use ed25519_dalek::Signer;
    trustee
        .sign(&approval_message(
            recovery_id,
            key_id,
            recipient,
            nonce,
            share,
        ))
        .to_bytes()
}

pub fn verify_approval(
    trustee: &[u8; 32],
    signature: &[u8],
    recovery_id: &str,
    key_id: &str,
    recipient: &[u8; 32],
    nonce: &[u8; 32],
    share: &[u8],
) -> Result<()> {
    let vk = VerifyingKey::from_bytes(trustee).map_err(|_| KmsError::BadApprovalSignature)?;
    let sig = Signature::from_slice(signature).map_err(|_| KmsError::BadApprovalSignature)?;
    vk.verify(
        &approval_message(recovery_id, key_id, recipient, nonce, share),
        &sig,
    )
    .map_err(|_| KmsError::BadApprovalSignature)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn trustees(n: usize) -> Vec<SigningKey> {
        (0..n)
            .map(|_| SigningKey::from_bytes(&crypto::random::<32>().unwrap()))
            .collect()
    }

    #[test]
    fn two_of_three_recovers_and_one_does_not() {
        let ts = trustees(3);
        let pubs: Vec<[u8; 32]> = ts.iter().map(|t| t.verifying_key().to_bytes()).collect();
        let key = SecretBytes::new(crypto::random::<32>().unwrap().to_vec());
        let pkg = EscrowPackage::create("k", &[9; 32], 1, &key, &pubs, 2).unwrap();
        let shares: Vec<TrusteeShare> = ts.iter().map(|t| pkg.open_share(t).unwrap()).collect();
        for pair in [(0, 1), (0, 2), (1, 2)] {
            let got = pkg
                .recover(&[shares[pair.0].0.expose(), shares[pair.1].0.expose()])
                .unwrap();
            assert_eq!(got.expose(), key.expose());
        }
        assert!(matches!(
            pkg.recover(&[shares[0].0.expose()]),
            Err(KmsError::RecoveryIncomplete { .. })
        ));
        // A share altered by one bit fails Feldman verification.
        let mut bad = shares[0].0.expose().to_vec();
        bad[40] ^= 1;
        assert!(matches!(
            pkg.verify_share(&bad),
            Err(KmsError::MalformedShare)
        ));
        assert!(matches!(
            pkg.recover(&[&bad, shares[1].0.expose()]),
            Err(KmsError::MalformedShare)
        ));
        assert!(matches!(
            pkg.verify_share(&bad[..10]),
            Err(KmsError::MalformedShare)
        ));
        // Someone else cannot open a share.
        let outsider = &trustees(1)[0];
        assert!(matches!(
            pkg.open_share(outsider),
            Err(KmsError::NotTrustee(_))
        ));
    }

    #[test]
    fn bad_parameters_are_refused() {
        let ts = trustees(3);
        let pubs: Vec<[u8; 32]> = ts.iter().map(|t| t.verifying_key().to_bytes()).collect();
        let key = SecretBytes::new(vec![1; 32]);
        for (p, t) in [
            (pubs.clone(), 1),
            (pubs.clone(), 4),
            (vec![pubs[0], pubs[0], pubs[1]], 2),
        ] {
            assert!(matches!(
                EscrowPackage::create("k", &[0; 32], 1, &key, &p, t),
                Err(KmsError::BadEscrowParameters { .. })
            ));
        }
    }

    #[test]
    fn approvals_bind_every_field() {
        let t = &trustees(1)[0];
        let me = t.verifying_key().to_bytes();
        let sig = sign_approval(t, "r1", "k", &[1; 32], &[2; 32], b"share");
        verify_approval(&me, &sig, "r1", "k", &[1; 32], &[2; 32], b"share").unwrap();
        assert!(verify_approval(&me, &sig, "r2", "k", &[1; 32], &[2; 32], b"share").is_err());
        assert!(verify_approval(&me, &sig, "r1", "k", &[3; 32], &[2; 32], b"share").is_err());
        assert!(verify_approval(&me, &sig, "r1", "k", &[1; 32], &[4; 32], b"share").is_err());
        assert!(verify_approval(&me, &sig, "r1", "k", &[1; 32], &[2; 32], b"other").is_err());
        assert!(verify_approval(&me, &sig[..10], "r1", "k", &[1; 32], &[2; 32], b"share").is_err());
    }
}
