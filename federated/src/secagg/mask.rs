//! Keys, key agreement and mask expansion.
//!
//! - X25519 (RFC 7748) for both of an agent's key pairs: one encrypts the
//!   shares it sends a neighbour, the other agrees the pairwise mask seed.
//! - HKDF-SHA256 (RFC 5869) turns each agreed secret into a key bound to the
//!   task, the round, the purpose and both agents.
//! - ChaCha20 (`rand_chacha`) expands a seed into a mask of `u32`s.
//! - AES-256-GCM seals shares; its key is unique per round and direction,
//!   so one fixed nonce per key is safe.

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use curve25519_dalek::montgomery::MontgomeryPoint;
use curve25519_dalek::scalar::Scalar;
use hkdf::Hkdf;
use rand::{CryptoRng, RngCore, SeedableRng};
use rand_chacha::ChaCha20Rng;
use sha2::Sha256;
use zeroize::{Zeroize, Zeroizing};

use crate::AgentId;

/// A secret scalar: an X25519 secret key or a self-mask seed. Zeroized on
/// drop; its `Debug` prints nothing of it.
#[derive(Clone)]
pub struct SecretScalar(Scalar);

impl SecretScalar {
    pub fn random(rng: &mut impl CryptoRng) -> Self {
        SecretScalar(super::shamir::random_scalar(rng))
    }

    pub(crate) fn from_scalar(s: Scalar) -> Self {
        SecretScalar(s)
    }

    pub(crate) fn scalar(&self) -> &Scalar {
        &self.0
    }

    /// The X25519 public key of this scalar's bytes as a secret key.
    pub fn public(&self) -> [u8; 32] {
        MontgomeryPoint::mul_base_clamped(self.0.to_bytes()).to_bytes()
    }

    /// X25519 with `public`; `None` for a low-order point (all-zero output,
    /// RFC 7748 §6.1), which no honest agent sends.
    pub fn agree(&self, public: &[u8; 32]) -> Option<Zeroizing<[u8; 32]>> {
        let shared = Zeroizing::new(MontgomeryPoint(*public).mul_clamped(self.0.to_bytes()).0);
        (*shared != [0u8; 32]).then_some(shared)
    }
}

impl Drop for SecretScalar {
    fn drop(&mut self) {
        self.0.zeroize();
    }
}

impl std::fmt::Debug for SecretScalar {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SecretScalar(..)")
    }
}

/// What every derived key is bound to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Context {
    pub task: [u8; 32],
    pub round: u32,
}

impl Context {
    fn derive(&self, ikm: &[u8], label: &[u8], a: &AgentId, b: &AgentId) -> Zeroizing<[u8; 32]> {
        let mut salt = [0u8; 36];
        salt[..32].copy_from_slice(&self.task);
        salt[32..].copy_from_slice(&self.round.to_be_bytes());
        let mut okm = Zeroizing::new([0u8; 32]);
        Hkdf::<Sha256>::new(Some(&salt), ikm)
            .expand_multi_info(&[b"yilian-secagg/v1/", label, a, b], &mut *okm)
            .expect("32 bytes is a valid HKDF-SHA256 output length");
        okm
    }

    /// The AEAD key for shares sent from `from` to `to`.
    pub fn share_key(&self, shared: &[u8; 32], from: &AgentId, to: &AgentId) -> ShareKey {
        ShareKey(self.derive(shared, b"share", from, to))
    }

    /// The seed of the mask `from` and `to` add with opposite signs.
    pub fn pair_seed(&self, shared: &[u8; 32], a: &AgentId, b: &AgentId) -> Zeroizing<[u8; 32]> {
        let (lo, hi) = if a < b { (a, b) } else { (b, a) };
        self.derive(shared, b"pair-mask", lo, hi)
    }

    /// The seed of an agent's self-mask.
    pub fn self_seed(&self, seed: &SecretScalar, agent: &AgentId) -> Zeroizing<[u8; 32]> {
        self.derive(&seed.0.to_bytes(), b"self-mask", agent, agent)
    }

    /// Associated data of a share message.
    pub fn share_aad(&self, from: &AgentId, to: &AgentId) -> Vec<u8> {
        [&self.task[..], &self.round.to_be_bytes(), from, to].concat()
    }
}

/// Adds `sign · PRG(seed)` to `acc`, modulo 2^32.
pub fn add_mask(acc: &mut [u32], seed: &[u8; 32], negate: bool) {
    let mut prg = ChaCha20Rng::from_seed(*seed);
    for a in acc.iter_mut() {
        let m = prg.next_u32();
        *a = if negate {
            a.wrapping_sub(m)
        } else {
            a.wrapping_add(m)
        };
    }
}

/// An AES-256-GCM key for one direction of one pair in one round.
pub struct ShareKey(Zeroizing<[u8; 32]>);

impl ShareKey {
    fn cipher(&self) -> Aes256Gcm {
        Aes256Gcm::new((&*self.0).into())
    }

    pub fn seal(&self, aad: &[u8], plaintext: &[u8]) -> Vec<u8> {
        self.cipher()
            .encrypt(
                &Nonce::from([0u8; 12]),
                Payload {
                    msg: plaintext,
                    aad,
                },
            )
            .expect("AES-GCM encryption of in-memory buffers cannot fail")
    }

    pub fn open(&self, aad: &[u8], ciphertext: &[u8]) -> Option<Zeroizing<Vec<u8>>> {
        self.cipher()
            .decrypt(
                &Nonce::from([0u8; 12]),
                Payload {
                    msg: ciphertext,
                    aad,
                },
            )
            .ok()
            .map(Zeroizing::new)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h32(s: &str) -> [u8; 32] {
        hex::decode(s).unwrap().try_into().unwrap()
    }

    /// RFC 7748 §5.2, first test vector, and §6.1's Alice and Bob.
    #[test]
    fn x25519_matches_rfc7748() {
        let k = h32("a546e36bf0527c9d3b16154b82465edd62144c0ac1fc5a18506a2244ba449ac4");
        let u = h32("e6db6867583030db3594c1a424b15f7c726624ec26b3353b10a903a6d0ab1c4c");
        assert_eq!(
            hex::encode(MontgomeryPoint(u).mul_clamped(k).0),
            "c3da55379de9c6908e94ea4df28d084f32eccf03491c71f754b4075577a28552"
        );
        let alice = h32("77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a");
        let bob = h32("5dab087e624a8a4b79e17f8b83800ee66f3bb1292618b6fd1c2f8b27ff88e0eb");
        assert_eq!(
            hex::encode(MontgomeryPoint::mul_base_clamped(alice).0),
            "8520f0098930a754748b7ddcb43ef75a0dbf3a0d26381af4eba4a98eaa9b4e6a"
        );
        let bob_pub = MontgomeryPoint::mul_base_clamped(bob);
        assert_eq!(
            hex::encode(bob_pub.0),
            "de9edb7d7b7dc1b4d35b61c2ece435373f8343c85b78674dadfc7e146f882b4f"
        );
        assert_eq!(
            hex::encode(bob_pub.mul_clamped(alice).0),
            "4a5d9d5ba4ce2de1728e3bf480350f25e07e21c947d19e3376f09b3c1e161742"
        );
    }

    #[test]
    fn low_order_points_are_refused() {
        let mut rng = rand::rng();
        let s = SecretScalar::random(&mut rng);
        assert!(s.agree(&[0u8; 32]).is_none());
        let mut one = [0u8; 32];
        one[0] = 1;
        assert!(s.agree(&one).is_none());
    }

    #[test]
    fn both_ends_derive_one_pair_mask_and_opposite_signs_cancel() {
        let mut rng = rand::rng();
        let (a, b) = (
            SecretScalar::random(&mut rng),
            SecretScalar::random(&mut rng),
        );
        let ctx = Context {
            task: [9; 32],
            round: 4,
        };
        let (ida, idb) = ([1u8; 32], [2u8; 32]);
        let sa = ctx.pair_seed(&a.agree(&b.public()).unwrap(), &ida, &idb);
        let sb = ctx.pair_seed(&b.agree(&a.public()).unwrap(), &idb, &ida);
        assert_eq!(*sa, *sb);
        let mut acc = vec![5u32; 100];
        add_mask(&mut acc, &sa, false);
        assert_ne!(acc, vec![5u32; 100]);
        add_mask(&mut acc, &sb, true);
        assert_eq!(acc, vec![5u32; 100]);
        let other = Context { round: 5, ..ctx };
        assert_ne!(
            *other.pair_seed(&a.agree(&b.public()).unwrap(), &ida, &idb),
            *sa
        );
    }

    #[test]
    fn a_share_opens_only_with_its_key_and_data() {
        let ctx = Context {
            task: [1; 32],
            round: 0,
        };
        let key = ctx.share_key(&[7; 32], &[1; 32], &[2; 32]);
        let aad = ctx.share_aad(&[1; 32], &[2; 32]);
        let ct = key.seal(&aad, b"share");
        assert_eq!(key.open(&aad, &ct).unwrap().as_slice(), b"share");
        assert!(key.open(&ctx.share_aad(&[2; 32], &[1; 32]), &ct).is_none());
        let reverse = ctx.share_key(&[7; 32], &[2; 32], &[1; 32]);
        assert!(reverse.open(&aad, &ct).is_none());
    }

    #[test]
    fn secrets_do_not_print() {
        let s = SecretScalar::random(&mut rand::rng());
        assert_eq!(format!("{s:?}"), "SecretScalar(..)");
    }
}
