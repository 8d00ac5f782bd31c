//! The admission authority: one per network, the root every connection checks.

use std::path::Path;
use std::time::{Duration, SystemTime};

use ed25519_dalek::SigningKey;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType, SerialNumber,
};
use rustls_pki_types::CertificateDer;

use crate::{
    CA_FILE, Identity, IdentityError, Result, Role, TLS_KEY, ledger_key, pem, pem_secret, read,
    read_cert,
};

const CA_KEY_FILE: &str = "ca-key.pem";
const CA_LEDGER_KEY_FILE: &str = "ca-ledger-key.pem";

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

/// The network's admission authority: a self-signed ECDSA P-256 CA whose
/// certificate also carries its ed25519 ledger key ([`crate::ledger_key`]).
pub struct Authority {
    key: KeyPair,
    ledger_key: SigningKey,
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
        let key = KeyPair::generate_for(TLS_KEY)?;
        let ledger_key = ledger_key::generate();
        let mut params = CertificateParams::default();
        params
            .custom_extensions
            .push(ledger_key::extension(&ledger_key.verifying_key()));
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
            ledger_key,
            cert: cert.der().clone(),
            network: network.to_owned(),
        })
    }

    /// Saves `ca.pem` and the private `ca-key.pem` and `ca-ledger-key.pem` into `dir`.
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
        crate::write_private(&dir.join(CA_KEY_FILE), key_pem.as_bytes())?;
        let ledger_pem = pem_secret("PRIVATE KEY", &ledger_key::to_pkcs8(&self.ledger_key));
        crate::write_private(&dir.join(CA_LEDGER_KEY_FILE), ledger_pem.as_bytes())
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
        let ledger_path = dir.join(CA_LEDGER_KEY_FILE);
        let ledger_key = ledger_key::from_pem(&read(&ledger_path)?, &ledger_path)?;
        if ledger_key::from_certificate(&parsed)? != ledger_key.verifying_key().to_bytes() {
            return Err(IdentityError::KeyMismatch(ledger_path));
        }
        let network = parsed
            .subject()
            .iter_organization()
            .next()
            .and_then(|o| o.as_str().ok())
            .unwrap_or_default()
            .to_owned();
        Ok(Authority {
            key,
            ledger_key,
            cert,
            network,
        })
    }

    pub fn network(&self) -> &str {
        &self.network
    }

    pub fn certificate(&self) -> &CertificateDer<'static> {
        &self.cert
    }

    /// The authority's ed25519 ledger key, which signs admissions and revocations.
    pub fn signing_key(&self) -> SigningKey {
        self.ledger_key.clone()
    }

    /// Issues a certificate and key for `req`.
    pub fn admit(&self, req: &AdmissionRequest) -> Result<Identity> {
        if req.org.is_empty() || req.name.is_empty() {
            return Err(IdentityError::NotAnIdentity(
                "organisation and name must not be empty",
            ));
        }
        let key = KeyPair::generate_for(TLS_KEY)?;
        let ledger_key = ledger_key::generate();
        let mut params = CertificateParams::default();
        params
            .custom_extensions
            .push(ledger_key::extension(&ledger_key.verifying_key()));
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
            ledger_key,
            [
                Path::new("<issued TLS key>"),
                Path::new("<issued ledger key>"),
            ],
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

    #[test]
    fn a_ledger_key_that_its_certificate_does_not_carry_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let ca = Authority::create("testnet").unwrap();
        for name in ["a", "b"] {
            ca.admit(&AdmissionRequest::new("o", Role::Device, name))
                .unwrap()
                .save(&dir.path().join(name))
                .unwrap();
        }
        let a_ledger = dir.path().join("a").join(crate::LEDGER_KEY_FILE);
        std::fs::copy(dir.path().join("b").join(crate::LEDGER_KEY_FILE), &a_ledger).unwrap();
        let err = Identity::load(&dir.path().join("a")).unwrap_err();
        assert!(
            matches!(&err, IdentityError::KeyMismatch(p) if *p == a_ledger),
            "{err}"
        );

        // The authority's own ledger key is checked the same way.
        let other = Authority::create("testnet").unwrap();
        ca.save(&dir.path().join("ca")).unwrap();
        other.save(&dir.path().join("other")).unwrap();
        let ca_ledger = dir.path().join("ca").join(CA_LEDGER_KEY_FILE);
        std::fs::copy(
            dir.path().join("other").join(CA_LEDGER_KEY_FILE),
            &ca_ledger,
        )
        .unwrap();
        let err = Authority::load(&dir.path().join("ca")).unwrap_err();
        assert!(
            matches!(&err, IdentityError::KeyMismatch(p) if *p == ca_ledger),
            "{err}"
        );
    }

    #[test]
    fn keys_are_written_as_plain_pkcs8_and_tls_uses_p256() {
        use rustls_pki_types::PrivatePkcs8KeyDer;
        use rustls_pki_types::pem::PemObject;
        let dir = tempfile::tempdir().unwrap();
        let ca = Authority::create("testnet").unwrap();
        let id = ca
            .admit(&AdmissionRequest::new("o", Role::Device, "a"))
            .unwrap();
        id.save(dir.path()).unwrap();
        for file in [crate::KEY_FILE, crate::LEDGER_KEY_FILE] {
            let pem = std::fs::read(dir.path().join(file)).unwrap();
            let der = PrivatePkcs8KeyDer::from_pem_slice(&pem).unwrap();
            // SEQUENCE, then INTEGER 0: version 1, the one OpenSSL 3.0 and
            // Python's `cryptography` accept (RFC 5958 §2).
            let der = der.secret_pkcs8_der();
            let version_at = if der[1] & 0x80 != 0 {
                2 + (der[1] & 0x7f) as usize
            } else {
                2
            };
            assert_eq!(
                der[version_at..version_at + 3],
                [0x02, 0x01, 0x00],
                "{file}"
            );
        }
        let (_, cert) = x509_parser::parse_x509_certificate(id.certificate()).unwrap();
        assert_eq!(
            cert.public_key().algorithm.algorithm,
            x509_parser::oid_registry::OID_KEY_TYPE_EC_PUBLIC_KEY
        );
        assert_eq!(
            cert.signature_algorithm.algorithm,
            x509_parser::oid_registry::OID_SIG_ECDSA_WITH_SHA256
        );
    }

    #[test]
    fn a_certificate_without_a_ledger_key_is_not_an_identity() {
        let key = KeyPair::generate_for(crate::TLS_KEY).unwrap();
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::OrganizationName, "o");
        dn.push(DnType::OrganizationalUnitName, "device");
        dn.push(DnType::CommonName, "old");
        params.distinguished_name = dn;
        let cert = params.self_signed(&key).unwrap();
        let err = crate::tls::principal_from_cert(cert.der()).unwrap_err();
        assert!(err.to_string().contains("no ledger key extension"), "{err}");
    }
}
