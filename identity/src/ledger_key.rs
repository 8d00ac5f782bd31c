//! How an identity's ed25519 ledger key is bound to its TLS certificate.
//!
//! TLS uses ECDSA P-256 keys in plain PKCS#8, because that is what OpenSSL,
//! BoringSSL (gRPC's C core), Go and Java all offer in a handshake; ed25519
//! is not. Ledger transactions stay signed with ed25519. The admission
//! authority puts the ledger key into the certificate it signs, as a
//! non-critical extension whose value is the key's `SubjectPublicKeyInfo`
//! (RFC 8410 §4), so "who connected" and "who signed" are one identity.
//! `docs/identity.md` shows how to read it with OpenSSL.

use ed25519_dalek::SigningKey;
use ed25519_dalek::pkcs8::DecodePrivateKey;
use rcgen::CustomExtension;
use x509_parser::certificate::X509Certificate;

use crate::{IdentityError, Result};

/// The extension's OID, `2.25.6125913829687986273`: a random number under
/// the UUID arc (X.667), so it needs no registration and collides with no
/// one's. It is a 63-bit number rather than a full 128-bit UUID because
/// rcgen takes OID arcs as `u64`.
pub const OID: [u64; 3] = [2, 25, 6_125_913_829_687_986_273];
/// The same OID in dotted form, for documentation and error messages.
pub const OID_DOTTED: &str = "2.25.6125913829687986273";

/// RFC 8410 §4: `SEQUENCE { SEQUENCE { OID 1.3.101.112 } BIT STRING (32 bytes) }`.
const SPKI_PREFIX: [u8; 12] = [
    0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00,
];
/// RFC 8410 §7, a version-1 `OneAsymmetricKey` without the public key, which
/// OpenSSL 3.0 and Python's `cryptography` read (they refuse version 2).
const PKCS8_PREFIX: [u8; 16] = [
    0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04, 0x20,
];

/// A fresh ledger key from the operating system's generator.
pub(crate) fn generate() -> SigningKey {
    let seed = zeroize::Zeroizing::new(rand::random::<[u8; 32]>());
    SigningKey::from_bytes(&seed)
}

/// The certificate extension carrying `key`.
pub(crate) fn extension(key: &ed25519_dalek::VerifyingKey) -> CustomExtension {
    let mut spki = SPKI_PREFIX.to_vec();
    spki.extend_from_slice(key.as_bytes());
    CustomExtension::from_oid_content(&OID, spki)
}

/// The ledger key a certificate carries, if it carries exactly one.
pub(crate) fn from_certificate(cert: &X509Certificate<'_>) -> Result<[u8; 32]> {
    let mut found = cert.extensions().iter().filter(|e| {
        e.oid
            .iter()
            .is_some_and(|arcs| arcs.eq(OID.iter().copied()))
    });
    let ext = found.next().ok_or(IdentityError::NotAnIdentity(
        "no ledger key extension (2.25.6125913829687986273); certificates from before \
         ECDSA TLS keys must be issued again with `yilian admin admit`",
    ))?;
    if found.next().is_some() {
        return Err(IdentityError::NotAnIdentity("two ledger key extensions"));
    }
    ext.value
        .strip_prefix(&SPKI_PREFIX)
        .and_then(|k| <[u8; 32]>::try_from(k).ok())
        .ok_or(IdentityError::NotAnIdentity(
            "the ledger key extension is not an ed25519 SubjectPublicKeyInfo",
        ))
}

/// `key` as PKCS#8 (version 1) DER.
pub(crate) fn to_pkcs8(key: &SigningKey) -> zeroize::Zeroizing<Vec<u8>> {
    let mut der = zeroize::Zeroizing::new(Vec::with_capacity(48));
    der.extend_from_slice(&PKCS8_PREFIX);
    der.extend_from_slice(key.as_bytes());
    der
}

/// Reads an ed25519 PKCS#8 key (version 1 or 2) from PEM.
pub(crate) fn from_pem(pem: &[u8], path: &std::path::Path) -> Result<SigningKey> {
    use rustls_pki_types::PrivatePkcs8KeyDer;
    use rustls_pki_types::pem::PemObject;
    let malformed = |reason: String| IdentityError::MalformedKey {
        path: path.to_owned(),
        reason,
    };
    let der = PrivatePkcs8KeyDer::from_pem_slice(pem).map_err(|e| malformed(e.to_string()))?;
    SigningKey::from_pkcs8_der(der.secret_pkcs8_der()).map_err(|e| malformed(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_pkcs8_encoding_is_rfc_8410s_example() {
        // RFC 8410 §10.3, the example private key.
        let der = hex::decode(
            "302e020100300506032b657004220420\
             d4ee72dbf913584ad5b6d8f1f769f8ad3afe7c28cbf1d4fbe097a88f44755842",
        )
        .unwrap();
        let key = SigningKey::from_pkcs8_der(&der).unwrap();
        assert_eq!(to_pkcs8(&key).as_slice(), der.as_slice());
    }

    #[test]
    fn the_spki_prefix_is_rfc_8410s_example() {
        // RFC 8410 §10.1, the example public key.
        let der = hex::decode(
            "302a300506032b6570032100\
             19bf44096984cdfe8541bac167dc3b96c85086aa30b6b6cb0c5c38ad703166e1",
        )
        .unwrap();
        assert_eq!(der[..12], SPKI_PREFIX);
    }
}
