//! The admission authority: one per network, the root every connection checks.

use std::path::Path;
use std::time::{Duration, SystemTime};

use ed25519_dalek::SigningKey;
use ed25519_dalek::pkcs8::DecodePrivateKey;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType, SerialNumber,
};
use rustls_pki_types::CertificateDer;

use crate::{CA_FILE, Identity, IdentityError, Result, Role, pem, read, read_cert};

const CA_KEY_FILE: &str = "ca-key.pem";

/// What an organisation asks the authority for.
#[derive(Clone, Debug)]
pub struct AdmissionRequest {
    pub org: String,
    pub role: Role,
    pub name: String,
    pub not_before: SystemTime,
    pub not_after: SystemTime,
    /// Host names and IP addresses a server identity answers on.
    pub hosts: Vec<String>,
}

impl AdmissionRequest {
    /// A request valid from now for a year, reachable as `localhost`/`127.0.0.1`.
    pub fn new(org: impl Into<String>, role: Role, name: impl Into<String>) -> Self {
        let now = SystemTime::now();
        AdmissionRequest {
            org: org.into(),
            role,
            name: name.into(),
            // A minute of slack so clocks a little behind still accept it.
            not_before: now - Duration::from_secs(60),
            not_after: now + Duration::from_secs(365 * 24 * 3600),
            hosts: vec!["localhost".into(), "127.0.0.1".into()],
        }
    }
}

/// The network's admission authority: a self-signed ed25519 CA.
pub struct Authority {
    key: KeyPair,
    cert: CertificateDer<'static>,
    network: String,
}

impl std::fmt::Debug for Authority {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authority")
            .field("network", &self.network)
            .finish_non_exhaustive()
    }
}

impl Authority {
    /// Creates a new authority for `network`, valid for ten years.
    pub fn create(network: &str) -> Result<Authority> {
        let key = KeyPair::generate_for(&rcgen::PKCS_ED25519)?;
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, format!("{network} admission authority"));
        dn.push(DnType::OrganizationName, network);
        params.distinguished_name = dn;
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let now = SystemTime::now();
        params.not_before = (now - Duration::from_secs(60)).into();
        params.not_after = (now + Duration::from_secs(10 * 365 * 24 * 3600)).into();
        params.serial_number = Some(random_serial());
        let cert = params.self_signed(&key)?;
        Ok(Authority {
            key,
            cert: cert.der().clone(),
            network: network.to_owned(),
        })
    }

    /// Saves `ca.pem` and the private `ca-key.pem` into `dir`.
    pub fn save(&self, dir: &Path) -> Result<()> {
        std::fs::create_dir_all(dir).map_err(|source| IdentityError::Write {
            path: dir.to_owned(),
            source,
        })?;
        crate::write(
            &dir.join(CA_FILE),
            pem("CERTIFICATE", &self.cert).as_bytes(),
        )?;
        let key_pem = zeroize::Zeroizing::new(self.key.serialize_pem());
        crate::write_private(&dir.join(CA_KEY_FILE), key_pem.as_bytes())
    }

    /// Loads an authority saved by [`Authority::save`].
    pub fn load(dir: &Path) -> Result<Authority> {
        let cert = read_cert(&dir.join(CA_FILE))?;
        let key_path = dir.join(CA_KEY_FILE);
        let key_pem = zeroize::Zeroizing::new(read(&key_path)?);
        let key_pem = std::str::from_utf8(&key_pem).map_err(|e| IdentityError::MalformedKey {
            path: key_path.clone(),
            reason: e.to_string(),
        })?;
        let key = KeyPair::from_pem(key_pem).map_err(|e| IdentityError::MalformedKey {
            path: key_path.clone(),
            reason: e.to_string(),
        })?;
        let (_, parsed) = x509_parser::parse_x509_certificate(&cert)
            .map_err(|e| IdentityError::MalformedCertificate(e.to_string()))?;
        if parsed.public_key().subject_public_key.data.as_ref() != key.public_key_raw() {
            return Err(IdentityError::KeyMismatch(key_path));
        }
        let network = parsed
            .subject()
            .iter_organization()
            .next()
            .and_then(|o| o.as_str().ok())
            .unwrap_or_default()
            .to_owned();
        Ok(Authority { key, cert, network })
    }

    pub fn network(&self) -> &str {
        &self.network
    }

    pub fn certificate(&self) -> &CertificateDer<'static> {
        &self.cert
    }

    /// The authority's ed25519 key, which also signs admissions and revocations on the ledger.
    pub fn signing_key(&self) -> SigningKey {
        SigningKey::from_pkcs8_der(self.key.serialized_der())
            .expect("rcgen generated a valid ed25519 PKCS#8 key")
    }

    /// Issues a certificate and key for `req`.
    pub fn admit(&self, req: &AdmissionRequest) -> Result<Identity> {
        if req.org.is_empty() || req.name.is_empty() {
            return Err(IdentityError::NotAnIdentity(
                "organisation and name must not be empty",
            ));
        }
        let key = KeyPair::generate_for(&rcgen::PKCS_ED25519)?;
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::OrganizationName, req.org.as_str());
        dn.push(DnType::OrganizationalUnitName, req.role.as_str());
        dn.push(DnType::CommonName, req.name.as_str());
        params.distinguished_name = dn;
        params.subject_alt_names = req
            .hosts
            .iter()
            .map(|h| match h.parse::<std::net::IpAddr>() {
                Ok(ip) => Ok(SanType::IpAddress(ip)),
                Err(_) => Ok(SanType::DnsName(h.clone().try_into()?)),
            })
            .collect::<Result<Vec<_>, rcgen::Error>>()?;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.not_before = req.not_before.into();
        params.not_after = req.not_after.into();
        params.serial_number = Some(random_serial());
        params.use_authority_key_identifier_extension = true;
        let issuer = Issuer::from_ca_cert_der(&self.cert, &self.key)?;
        let cert = params.signed_by(&key, &issuer)?;
        Identity::from_parts(
            cert.der().clone(),
            self.cert.clone(),
            key.serialize_der(),
            Path::new("<issued>"),
        )
    }
}

fn random_serial() -> SerialNumber {
    let mut bytes: [u8; 16] = rand::random();
    // Positive and without a leading zero byte, as DER INTEGER wants.
    bytes[0] = (bytes[0] & 0x7f) | 0x40;
    SerialNumber::from_slice(&bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn admitted_identity_carries_org_role_name_and_key() {
        let ca = Authority::create("testnet").unwrap();
        let id = ca
            .admit(&AdmissionRequest::new("bank-a", Role::Verifier, "alice"))
            .unwrap();
        let p = id.principal();
        assert_eq!(
            (p.org.as_str(), p.role, p.name.as_str()),
            ("bank-a", Role::Verifier, "alice")
        );
        assert_eq!(p.public_key, id.signing_key().verifying_key().to_bytes());
        assert_eq!(p.serial.len(), 16);
    }

    #[test]
    fn authority_and_identity_survive_a_save_and_load() {
        let dir = tempfile::tempdir().unwrap();
        let ca = Authority::create("testnet").unwrap();
        ca.save(dir.path()).unwrap();
        let loaded = Authority::load(dir.path()).unwrap();
        assert_eq!(loaded.network(), "testnet");
        assert_eq!(
            loaded.signing_key().verifying_key(),
            ca.signing_key().verifying_key()
        );
        let id = loaded
            .admit(&AdmissionRequest::new("org", Role::Device, "phone-1"))
            .unwrap();
        let idir = dir.path().join("phone-1");
        id.save(&idir).unwrap();
        let back = Identity::load(&idir).unwrap();
        assert_eq!(back.principal(), id.principal());
    }

    #[test]
    fn a_key_that_does_not_match_its_certificate_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let ca = Authority::create("testnet").unwrap();
        let a = ca
            .admit(&AdmissionRequest::new("o", Role::Device, "a"))
            .unwrap();
        let b = ca
            .admit(&AdmissionRequest::new("o", Role::Device, "b"))
            .unwrap();
        a.save(&dir.path().join("a")).unwrap();
        b.save(&dir.path().join("b")).unwrap();
        std::fs::copy(
            dir.path().join("b").join(crate::KEY_FILE),
            dir.path().join("a").join(crate::KEY_FILE),
        )
        .unwrap();
        let err = Identity::load(&dir.path().join("a")).unwrap_err();
        assert!(matches!(err, IdentityError::KeyMismatch(_)), "{err}");
    }
}
