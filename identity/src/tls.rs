//! rustls configurations for mutual TLS between admitted identities.
//!
//! Both sides present certificates from the network's admission authority.
//! The server side additionally refuses certificates whose serial is revoked
//! or whose subject does not name a known role, so a handshake that completes
//! always has a [`Principal`] on the other end.

use std::collections::HashSet;
use std::sync::{Arc, RwLock};

use rustls::client::danger::HandshakeSignatureValid;
use rustls::crypto::CryptoProvider;
use rustls::server::WebPkiClientVerifier;
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, DistinguishedName, RootCertStore,
    ServerConfig, SignatureScheme,
};
use rustls_pki_types::{CertificateDer, UnixTime};

use crate::{Identity, IdentityError, Principal, Result, Role};

/// Serials of revoked certificates, shared between the ledger (which records
/// revocations) and every TLS server (which refuses them at the handshake
/// and cuts the connections they already have: [`RevocationList::changes`]).
#[derive(Clone, Debug)]
pub struct RevocationList(Arc<Revocations>);

#[derive(Debug)]
struct Revocations {
    serials: RwLock<HashSet<Vec<u8>>>,
    /// How many revocations there have been; live connections watch it.
    count: tokio::sync::watch::Sender<u64>,
}

impl Default for RevocationList {
    fn default() -> Self {
        RevocationList(Arc::new(Revocations {
            serials: RwLock::default(),
            count: tokio::sync::watch::Sender::new(0),
        }))
    }
}

impl RevocationList {
    pub fn revoke(&self, serial: &[u8]) {
        let fresh = self
            .0
            .serials
            .write()
            .expect("revocation list lock")
            .insert(serial.to_vec());
        if fresh {
            self.0.count.send_modify(|c| *c += 1);
        }
    }
    pub fn is_revoked(&self, serial: &[u8]) -> bool {
        self.0
            .serials
            .read()
            .expect("revocation list lock")
            .contains(serial)
    }
    /// Wakes on every new revocation, so a connection can check whether
    /// its own peer is the one revoked and close.
    pub fn changes(&self) -> tokio::sync::watch::Receiver<u64> {
        self.0.count.subscribe()
    }
    pub fn len(&self) -> usize {
        self.0.serials.read().expect("revocation list lock").len()
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn roots(id: &Identity) -> Result<Arc<RootCertStore>> {
    let mut roots = RootCertStore::empty();
    roots.add(id.ca_certificate().clone())?;
    Ok(Arc::new(roots))
}

/// Server side: requires a client certificate from the network's authority,
/// refuses revoked serials and certificates without a Yilian role. TLS 1.3
/// only, so the same configuration serves QUIC.
pub fn server_config(id: &Identity, revoked: RevocationList) -> Result<ServerConfig> {
    let inner = WebPkiClientVerifier::builder_with_provider(roots(id)?, provider())
        .build()
        .map_err(|e| IdentityError::Tls(rustls::Error::General(e.to_string())))?;
    let verifier = Arc::new(AdmittedClientVerifier { inner, revoked });
    let cfg = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(verifier)
        .with_single_cert(vec![id.certificate().clone()], id.private_key())?;
    Ok(cfg)
}

/// Client side: trusts only the network's authority and presents `id`.
pub fn client_config(id: &Identity) -> Result<ClientConfig> {
    let cfg = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_root_certificates(roots(id)?)
        .with_client_auth_cert(vec![id.certificate().clone()], id.private_key())?;
    Ok(cfg)
}

/// Reads the Yilian identity (organisation, role, name, key, serial) out of a certificate.
pub fn principal_from_cert(der: &CertificateDer<'_>) -> Result<Principal> {
    let (_, cert) = x509_parser::parse_x509_certificate(der)
        .map_err(|e| IdentityError::MalformedCertificate(e.to_string()))?;
    let subject = cert.subject();
    let one = |it: Option<&x509_parser::x509::AttributeTypeAndValue<'_>>, what| {
        it.and_then(|a| a.as_str().ok())
            .map(str::to_owned)
            .ok_or(IdentityError::NotAnIdentity(what))
    };
    let org = one(subject.iter_organization().next(), "no organisation (O)")?;
    let role: Role = one(subject.iter_organizational_unit().next(), "no role (OU)")?.parse()?;
    let name = one(subject.iter_common_name().next(), "no name (CN)")?;
    let public_key = crate::ledger_key::from_certificate(&cert)?;
    Ok(Principal {
        org,
        role,
        name,
        public_key,
        serial: cert.raw_serial().to_vec(),
    })
}

/// WebPKI chain validation (signature, validity period, key usage) plus the
/// two checks that make a certificate an admission: a role, and not revoked.
#[derive(Debug)]
struct AdmittedClientVerifier {
    inner: Arc<dyn ClientCertVerifier>,
    revoked: RevocationList,
}

impl ClientCertVerifier for AdmittedClientVerifier {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.inner.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        self.inner
            .verify_client_cert(end_entity, intermediates, now)
            .inspect_err(|e| refused(refusal_reason(e)))?;
        let principal = principal_from_cert(end_entity).map_err(|e| {
            tracing::warn!(error = %e, "refused a certificate without a Yilian identity");
            refused("no-identity");
            rustls::Error::InvalidCertificate(CertificateError::ApplicationVerificationFailure)
        })?;
        if self.revoked.is_revoked(&principal.serial) {
            tracing::warn!(%principal, "refused a revoked certificate");
            refused("revoked");
            return Err(rustls::Error::InvalidCertificate(CertificateError::Revoked));
        }
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// Counts a client certificate refused at the handshake, by reason.
pub(crate) fn refused(reason: &'static str) {
    metrics::counter!("yilian_tls_refusals_total", "reason" => reason).increment(1);
}

fn refusal_reason(e: &rustls::Error) -> &'static str {
    match e {
        rustls::Error::InvalidCertificate(c) => match c {
            CertificateError::UnknownIssuer => "unknown-ca",
            CertificateError::Expired | CertificateError::ExpiredContext { .. } => "expired",
            CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. } => {
                "not-yet-valid"
            }
            CertificateError::BadSignature => "bad-signature",
            CertificateError::InvalidPurpose | CertificateError::InvalidPurposeContext { .. } => {
                "wrong-key-usage"
            }
            _ => "invalid-certificate",
        },
        _ => "other",
    }
}
