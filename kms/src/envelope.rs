//! The versioned envelope format (documented in `docs/envelope.md`): a header
//! naming key id, key version, algorithm and nonce, followed by AES-256-GCM
//! ciphertext and tag. The associated data binds the header, the key owner
//! and a caller-supplied context, so a ciphertext moved to another key, owner
//! or context does not decrypt.

use crate::crypto::{self, NONCE_LEN, TAG_LEN};
use crate::error::{KmsError, Result};
use crate::secret::{Key32, SecretBytes};

pub const VERSION_1: u8 = 1;
pub const ALG_AES_256_GCM: u8 = 1;
pub const MAX_KEY_ID_LEN: usize = 128;
/// `Encrypt` is for small payloads (keys, tokens, records); bulk data is
/// encrypted locally under a data key.
pub const MAX_PLAINTEXT: usize = 64 * 1024;

/// A parsed envelope. `header` is the exact header bytes, kept for the AAD.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Envelope {
    pub key_id: String,
    pub key_version: u32,
    pub nonce: [u8; NONCE_LEN],
    pub ciphertext: Vec<u8>,
}

impl Envelope {
    fn header(&self) -> Vec<u8> {
        let mut h = Vec::with_capacity(7 + self.key_id.len() + NONCE_LEN);
        h.push(VERSION_1);
        h.push(ALG_AES_256_GCM);
        h.extend_from_slice(&self.key_version.to_be_bytes());
        h.push(self.key_id.len() as u8);
        h.extend_from_slice(self.key_id.as_bytes());
        h.extend_from_slice(&self.nonce);
        h
    }

    /// The associated data: header || owner (32 bytes) || context.
    pub fn aad(&self, owner: &[u8; 32], context: &[u8]) -> Vec<u8> {
        let mut aad = self.header();
        aad.extend_from_slice(owner);
        aad.extend_from_slice(context);
        aad
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut out = self.header();
        out.extend_from_slice(&self.ciphertext);
        out
    }

    pub fn decode(bytes: &[u8]) -> Result<Envelope> {
        let version = *bytes.first().ok_or(KmsError::MalformedEnvelope("empty"))?;
        if version != VERSION_1 {
            return Err(KmsError::UnsupportedEnvelopeVersion(version));
        }
        let alg = *bytes
            .get(1)
            .ok_or(KmsError::MalformedEnvelope("truncated header"))?;
        if alg != ALG_AES_256_GCM {
            return Err(KmsError::UnsupportedAlgorithm(alg));
        }
        let key_version = u32::from_be_bytes(
            bytes
                .get(2..6)
                .ok_or(KmsError::MalformedEnvelope("truncated header"))?
                .try_into()
                .expect("4 bytes"),
        );
        if key_version == 0 {
            return Err(KmsError::MalformedEnvelope("key version 0"));
        }
        let id_len = *bytes
            .get(6)
            .ok_or(KmsError::MalformedEnvelope("truncated header"))? as usize;
        if id_len == 0 || id_len > MAX_KEY_ID_LEN {
            return Err(KmsError::MalformedEnvelope("key id length"));
        }
        let id_end = 7 + id_len;
        let key_id = std::str::from_utf8(
            bytes
                .get(7..id_end)
                .ok_or(KmsError::MalformedEnvelope("truncated key id"))?,
        )
        .map_err(|_| KmsError::MalformedEnvelope("key id is not UTF-8"))?
        .to_owned();
        let nonce: [u8; NONCE_LEN] = bytes
            .get(id_end..id_end + NONCE_LEN)
            .ok_or(KmsError::MalformedEnvelope("truncated nonce"))?
            .try_into()
            .expect("12 bytes");
        let ciphertext = bytes[id_end + NONCE_LEN..].to_vec();
        if ciphertext.len() < TAG_LEN {
            return Err(KmsError::MalformedEnvelope(
                "ciphertext shorter than the tag",
            ));
        }
        Ok(Envelope {
            key_id,
            key_version,
            nonce,
            ciphertext,
        })
    }

    /// Encrypts under one version of a master key.
    pub fn seal(
        key: &Key32,
        key_id: &str,
        key_version: u32,
        owner: &[u8; 32],
        context: &[u8],
        plaintext: &[u8],
    ) -> Result<Envelope> {
        if plaintext.len() > MAX_PLAINTEXT {
            return Err(KmsError::PayloadTooLarge {
                len: plaintext.len(),
                max: MAX_PLAINTEXT,
            });
        }
        if key_id.is_empty() || key_id.len() > MAX_KEY_ID_LEN {
            return Err(KmsError::BadKeyName(key_id.to_owned()));
        }
        let mut env = Envelope {
            key_id: key_id.to_owned(),
            key_version,
            nonce: crypto::random::<NONCE_LEN>()?,
            ciphertext: Vec::new(),
        };
        let aad = env.aad(owner, context);
        env.ciphertext = crypto::seal(key, &env.nonce, &aad, plaintext);
        Ok(env)
    }

    pub fn open(&self, key: &Key32, owner: &[u8; 32], context: &[u8]) -> Result<SecretBytes> {
        crypto::open(
            key,
            &self.nonce,
            &self.aad(owner, context),
            &self.ciphertext,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn round_trip_and_bindings() {
        let k = crypto::random_key().unwrap();
        let owner = [7u8; 32];
        let env = Envelope::seal(&k, "door-301", 3, &owner, b"stay-42", b"secret").unwrap();
        let bytes = env.encode();
        let back = Envelope::decode(&bytes).unwrap();
        assert_eq!(back, env);
        assert_eq!(
            back.open(&k, &owner, b"stay-42").unwrap().expose(),
            b"secret"
        );
        assert!(matches!(
            back.open(&k, &owner, b"stay-43"),
            Err(KmsError::AuthenticationFailed)
        ));
        assert!(matches!(
            back.open(&k, &[8u8; 32], b"stay-42"),
            Err(KmsError::AuthenticationFailed)
        ));
        // Every single-bit flip anywhere in the envelope is detected.
        for i in 0..bytes.len() {
            let mut t = bytes.clone();
            t[i] ^= 0x01;
            let ok = Envelope::decode(&t).and_then(|e| e.open(&k, &owner, b"stay-42"));
            assert!(ok.is_err(), "flip at byte {i} went unnoticed");
        }
    }

    #[test]
    fn a_standard_aes_gcm_decrypts_with_the_documented_layout() {
        // Decrypt by following docs/envelope.md by hand, with aes-gcm directly.
        use aes_gcm::aead::{Aead, KeyInit, Payload};
        let k = crypto::random_key().unwrap();
        let owner = [1u8; 32];
        let bytes = Envelope::seal(&k, "k1", 1, &owner, b"ctx", b"hi")
            .unwrap()
            .encode();
        let id_len = bytes[6] as usize;
        let header_end = 7 + id_len + 12;
        let nonce = &bytes[7 + id_len..header_end];
        let mut aad = bytes[..header_end].to_vec();
        aad.extend_from_slice(&owner);
        aad.extend_from_slice(b"ctx");
        let c = aes_gcm::Aes256Gcm::new(k.expose().into());
        let nonce: [u8; 12] = nonce.try_into().unwrap();
        let pt = c
            .decrypt(
                &nonce.into(),
                Payload {
                    msg: &bytes[header_end..],
                    aad: &aad,
                },
            )
            .unwrap();
        assert_eq!(pt, b"hi");
    }

    /// The test vector of docs/envelope.md, which the Python client's test
    /// (`clients/python/tests/test_envelope.py`) opens with `cryptography`.
    #[test]
    fn the_documented_test_vector() {
        let key = Key32::from_bytes(std::array::from_fn(|i| i as u8));
        let mut env = Envelope {
            key_id: "door-301".into(),
            key_version: 3,
            nonce: std::array::from_fn(|i| 100 + i as u8),
            ciphertext: Vec::new(),
        };
        let aad = env.aad(&[7; 32], b"stay-42");
        env.ciphertext = crypto::seal(&key, &env.nonce, &aad, b"room 101");
        assert_eq!(
            hex::encode(env.encode()),
            "01010000000308646f6f722d3330316465666768696a6b6c6d6e6f\
             3a74b10b59d866afa7f066d3785682c02a6864fa5cd0a377"
        );
        assert_eq!(
            env.open(&key, &[7; 32], b"stay-42").unwrap().expose(),
            b"room 101"
        );
    }

    #[test]
    fn precise_errors_for_malformed_headers() {
        assert!(matches!(
            Envelope::decode(&[]),
            Err(KmsError::MalformedEnvelope(_))
        ));
        assert!(matches!(
            Envelope::decode(&[2, 1]),
            Err(KmsError::UnsupportedEnvelopeVersion(2))
        ));
        assert!(matches!(
            Envelope::decode(&[1, 9]),
            Err(KmsError::UnsupportedAlgorithm(9))
        ));
        assert!(matches!(
            Envelope::decode(&[1, 1, 0, 0, 0, 1, 0]),
            Err(KmsError::MalformedEnvelope("key id length"))
        ));
        let too_big = vec![0u8; MAX_PLAINTEXT + 1];
        let k = crypto::random_key().unwrap();
        assert!(matches!(
            Envelope::seal(&k, "k", 1, &[0; 32], b"", &too_big),
            Err(KmsError::PayloadTooLarge { .. })
        ));
    }

    proptest! {
        #[test]
        fn decode_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
            let _ = Envelope::decode(&bytes);
        }

        #[test]
        fn decode_inverts_encode(id in "[a-z0-9-]{1,40}", v in 1u32.., ct in proptest::collection::vec(any::<u8>(), 16..100), nonce in any::<[u8; 12]>()) {
            let env = Envelope { key_id: id, key_version: v, nonce, ciphertext: ct };
            prop_assert_eq!(Envelope::decode(&env.encode()).unwrap(), env);
        }
    }
}
