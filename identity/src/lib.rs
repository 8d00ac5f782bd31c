//! Admission ("pan-permission") for a Yilian network.
//!
//! An admission authority ([`ca::Authority`]) issues X.509 certificates to the
//! nodes, devices and clients of admitted organisations. The certificate is the
//! identity: its subject carries the organisation (`O`), the role (`OU`) and the
//! name (`CN`). Its TLS key is ECDSA P-256 in plain PKCS#8, which every
//! common TLS stack offers; the ed25519 key that signs the holder's ledger
//! transactions is bound into the same certificate by the authority
//! ([`ledger_key`]), so "who connected" and "who signed" cannot drift apart.
//!
//! [`tls`] builds rustls configurations that require and check these
//! certificates on every connection (gRPC and QUIC alike) and refuse revoked
//! ones; [`grpc`] wires them into tonic servers and channels.
#![forbid(unsafe_code)]

pub mod ca;
#[cfg(feature = "grpc")]
pub mod grpc;
pub mod ledger_key;
pub mod tls;

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use ed25519_dalek::SigningKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use serde::{Deserialize, Serialize};

/// Everything that can go wrong while admitting, loading or checking an identity.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    #[error("unknown role `{0}` (expected one of: {roles})", roles = Role::ALL_NAMES)]
    UnknownRole(String),
    #[error("certificate does not carry a Yilian identity: {0}")]
    NotAnIdentity(&'static str),
    #[error("malformed certificate: {0}")]
    MalformedCertificate(String),
    #[error("malformed key in {path}: {reason}")]
    MalformedKey { path: PathBuf, reason: String },
    #[error("the private key in {0} does not match its certificate")]
    KeyMismatch(PathBuf),
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("certificate issuance failed: {0}")]
    Issue(#[from] rcgen::Error),
    #[error("TLS configuration: {0}")]
    Tls(#[from] rustls::Error),
    #[error("invalid address `{0}`")]
    Address(String),
    #[error("connection to {addr} failed: {reason}")]
    Connect { addr: String, reason: String },
}

pub type Result<T, E = IdentityError> = std::result::Result<T, E>;

/// What an admitted identity may do; carried in its certificate's `OU`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Role {
    /// A trust-chain member: runs a node, manages keys, coordinates tasks.
    Member,
    /// Holds escrowed key shares and approves recoveries.
    Trustee,
    /// Keeps customers' encrypted records and answers verification queries.
    DataHolder,
    /// A financial institution asking verification queries.
    Verifier,
    /// An ML engineer submitting models and tasks.
    Engineer,
    /// A device running the agent.
    Device,
    /// Reads the ledger and checks proofs.
    Regulator,
    /// Reads the ledger and checks proofs.
    Auditor,
}

impl Role {
    pub const ALL: [Role; 8] = [
        Role::Member,
        Role::Trustee,
        Role::DataHolder,
        Role::Verifier,
        Role::Engineer,
        Role::Device,
        Role::Regulator,
        Role::Auditor,
    ];
    const ALL_NAMES: &'static str =
        "member, trustee, data-holder, verifier, engineer, device, regulator, auditor";

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Member => "member",
            Role::Trustee => "trustee",
            Role::DataHolder => "data-holder",
            Role::Verifier => "verifier",
            Role::Engineer => "engineer",
            Role::Device => "device",
            Role::Regulator => "regulator",
            Role::Auditor => "auditor",
        }
    }

    /// Read-only roles observe the ledger but never write to it.
    pub fn is_read_only(self) -> bool {
        matches!(self, Role::Regulator | Role::Auditor)
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Role {
    type Err = IdentityError;
    fn from_str(s: &str) -> Result<Self> {
        Role::ALL
            .into_iter()
            .find(|r| r.as_str() == s)
            .ok_or_else(|| IdentityError::UnknownRole(s.to_owned()))
    }
}

/// Who is on the other end of a connection, as its certificate says.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Principal {
    pub org: String,
    pub role: Role,
    pub name: String,
    /// The ed25519 ledger key the certificate carries, which signs ledger transactions.
    #[serde(with = "hex::serde")]
    pub public_key: [u8; 32],
    /// The certificate's serial number, the handle for revocation.
    #[serde(with = "hex::serde")]
    pub serial: Vec<u8>,
}

impl fmt::Display for Principal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{} ({})", self.org, self.name, self.role)
    }
}

/// File names inside an identity directory.
pub const CERT_FILE: &str = "cert.pem";
/// The TLS key (ECDSA P-256, PKCS#8 version 1), which OpenSSL, gRPC and Go load as is.
pub const KEY_FILE: &str = "key.pem";
/// The ed25519 ledger key (PKCS#8 version 1).
pub const LEDGER_KEY_FILE: &str = "ledger-key.pem";
pub const CA_FILE: &str = "ca.pem";

/// The TLS key algorithm of every certificate the authority issues.
pub(crate) const TLS_KEY: &rcgen::SignatureAlgorithm = &rcgen::PKCS_ECDSA_P256_SHA256;

/// A local identity: certificate, its TLS and ledger keys, and the network's CA certificate.
pub struct Identity {
    principal: Principal,
    cert: CertificateDer<'static>,
    ca: CertificateDer<'static>,
    tls_key: zeroize::Zeroizing<Vec<u8>>,
    signing_key: SigningKey,
}

impl fmt::Debug for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The key stays out of logs; the principal is public.
        f.debug_struct("Identity")
            .field("principal", &self.principal)
            .finish_non_exhaustive()
    }
}

impl Clone for Identity {
    fn clone(&self) -> Self {
        Identity {
            principal: self.principal.clone(),
            cert: self.cert.clone(),
            ca: self.ca.clone(),
            tls_key: self.tls_key.clone(),
            signing_key: self.signing_key.clone(),
        }
    }
}

impl Identity {
    /// Loads `cert.pem`, `key.pem`, `ledger-key.pem` and `ca.pem` from `dir`.
    pub fn load(dir: &Path) -> Result<Identity> {
        let cert = read_cert(&dir.join(CERT_FILE))?;
        let ca = read_cert(&dir.join(CA_FILE))?;
        let key_path = dir.join(KEY_FILE);
        let key_pem = zeroize::Zeroizing::new(read(&key_path)?);
        let key = PrivatePkcs8KeyDer::from_pem_slice(&key_pem).map_err(|e| {
            IdentityError::MalformedKey {
                path: key_path.clone(),
                reason: e.to_string(),
            }
        })?;
        let ledger_path = dir.join(LEDGER_KEY_FILE);
        let ledger_pem = zeroize::Zeroizing::new(read(&ledger_path)?);
        let signing_key = ledger_key::from_pem(&ledger_pem, &ledger_path)?;
        Identity::from_parts(
            cert,
            ca,
            key.secret_pkcs8_der().to_vec(),
            signing_key,
            [&key_path, &ledger_path],
        )
    }

    /// Checks that the TLS key is the certificate's and the ledger key the one it carries.
    pub(crate) fn from_parts(
        cert: CertificateDer<'static>,
        ca: CertificateDer<'static>,
        tls_key: Vec<u8>,
        signing_key: SigningKey,
        [tls_key_origin, ledger_key_origin]: [&Path; 2],
    ) -> Result<Identity> {
        let tls_key = zeroize::Zeroizing::new(tls_key);
        let malformed = |reason: String| IdentityError::MalformedKey {
            path: tls_key_origin.to_owned(),
            reason,
        };
        let pair =
            rcgen::KeyPair::try_from(tls_key.as_slice()).map_err(|e| malformed(e.to_string()))?;
        let (_, parsed) = x509_parser::parse_x509_certificate(&cert)
            .map_err(|e| IdentityError::MalformedCertificate(e.to_string()))?;
        if parsed.public_key().subject_public_key.data.as_ref() != pair.public_key_raw() {
            return Err(IdentityError::KeyMismatch(tls_key_origin.to_owned()));
        }
        let principal = tls::principal_from_cert(&cert)?;
        if signing_key.verifying_key().to_bytes() != principal.public_key {
            return Err(IdentityError::KeyMismatch(ledger_key_origin.to_owned()));
        }
        Ok(Identity {
            principal,
            cert,
            ca,
            tls_key,
            signing_key,
        })
    }

    /// Writes the identity to `dir` (created if missing); the key file is private to its owner.
    pub fn save(&self, dir: &Path) -> Result<()> {
        std::fs::create_dir_all(dir).map_err(|source| IdentityError::Write {
            path: dir.to_owned(),
            source,
        })?;
        write(
            &dir.join(CERT_FILE),
            pem("CERTIFICATE", &self.cert).as_bytes(),
        )?;
        write(&dir.join(CA_FILE), pem("CERTIFICATE", &self.ca).as_bytes())?;
        let key_pem = pem_secret("PRIVATE KEY", &self.tls_key);
        write_private(&dir.join(KEY_FILE), key_pem.as_bytes())?;
        let ledger_pem = pem_secret("PRIVATE KEY", &ledger_key::to_pkcs8(&self.signing_key));
        write_private(&dir.join(LEDGER_KEY_FILE), ledger_pem.as_bytes())
    }

    pub fn principal(&self) -> &Principal {
        &self.principal
    }
    pub fn signing_key(&self) -> &SigningKey {
        &self.signing_key
    }
    pub fn certificate(&self) -> &CertificateDer<'static> {
        &self.cert
    }
    pub fn ca_certificate(&self) -> &CertificateDer<'static> {
        &self.ca
    }
    /// The TLS key, for rustls (which zeroizes its copy when done with it).
    pub(crate) fn private_key(&self) -> PrivateKeyDer<'static> {
        PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(self.tls_key.to_vec()))
    }
}

pub(crate) fn pem(label: &str, der: &[u8]) -> String {
    use base64::Engine as _;
    // Wiped when dropped, since `der` may be a private key.
    let b64 = zeroize::Zeroizing::new(base64::engine::general_purpose::STANDARD.encode(der));
    let mut out = format!("-----BEGIN {label}-----\n");
    for chunk in b64.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(chunk).expect("base64 is ASCII"));
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

/// [`pem`] for a secret: the base64 text is wiped when dropped.
pub(crate) fn pem_secret(label: &str, der: &[u8]) -> zeroize::Zeroizing<String> {
    zeroize::Zeroizing::new(pem(label, der))
}

pub(crate) fn read(path: &Path) -> Result<Vec<u8>> {
    std::fs::read(path).map_err(|source| IdentityError::Read {
        path: path.to_owned(),
        source,
    })
}

/// The principal of a certificate file (PEM), e.g. a new member's, to propose it.
pub fn principal_of_cert_file(path: &Path) -> Result<Principal> {
    crate::tls::principal_from_cert(&read_cert(path)?)
}

pub(crate) fn read_cert(path: &Path) -> Result<CertificateDer<'static>> {
    let bytes = read(path)?;
    CertificateDer::from_pem_slice(&bytes)
        .map_err(|e| IdentityError::MalformedCertificate(format!("{}: {e}", path.display())))
}

pub(crate) fn write(path: &Path, bytes: &[u8]) -> Result<()> {
    std::fs::write(path, bytes).map_err(|source| IdentityError::Write {
        path: path.to_owned(),
        source,
    })
}

pub(crate) fn write_private(path: &Path, bytes: &[u8]) -> Result<()> {
    use std::io::Write as _;
    #[cfg(unix)]
    use std::os::unix::fs::OpenOptionsExt as _;
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    opts.mode(0o600);
    let res = opts.open(path).and_then(|mut f| {
        f.write_all(bytes)?;
        f.sync_all()
    });
    res.map_err(|source| IdentityError::Write {
        path: path.to_owned(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_round_trip_through_their_names() {
        for r in Role::ALL {
            assert_eq!(r.as_str().parse::<Role>().unwrap(), r);
            assert_eq!(
                serde_json::to_string(&r).unwrap(),
                format!("\"{}\"", r.as_str())
            );
        }
        let err = "admin".parse::<Role>().unwrap_err();
        assert!(err.to_string().contains("unknown role `admin`"));
    }
}
