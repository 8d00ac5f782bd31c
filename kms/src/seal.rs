//! The root key and unsealing. Key material at rest is encrypted under a
//! root key that is never stored: a node starts sealed and is unsealed
//! either by t of n operator shares (Shamir over the Ristretto scalar field,
//! as Vault's unseal) or, on `devnet`, by a key file.

use std::path::Path;

use curve25519_dalek::scalar::Scalar;
use getrandom::{SysRng, rand_core::UnwrapErr};
use vsss_rs::{DefaultShare, IdentifierPrimeField, ReadableShareSet};
use zeroize::Zeroizing;

use crate::crypto;
use crate::error::{KmsError, Result};
use crate::secret::{Key32, UnsealShare};

type Share = DefaultShare<IdentifierPrimeField<Scalar>, IdentifierPrimeField<Scalar>>;

const SHARE_PREFIX: &str = "yilian-unseal-v1";

fn root_from_secret(s: &Scalar) -> Key32 {
    let bytes = Zeroizing::new(s.to_bytes());
    Key32::from_bytes(crypto::sha256(&[b"yilian-kms/root/v1", &*bytes]))
}

/// Creates a new root key and splits it into `n` operator shares, any
/// `threshold` of which unseal. Shares are text: `yilian-unseal-v1:<t>:<hex>`.
pub fn split_root_key(threshold: usize, n: usize) -> Result<(Key32, Vec<UnsealShare>)> {
    if threshold < 1 || threshold > n || n > 255 {
        return Err(KmsError::BadEscrowParameters {
            threshold,
            trustees: n,
            least: 1,
        });
    }
    let wide = Zeroizing::new(crypto::random::<64>()?);
    let s = Scalar::from_bytes_mod_order_wide(&wide);
    let shares = if threshold == 1 {
        // Shamir needs t >= 2; with t = 1 every operator holds the secret itself.
        (1..=n as u64)
            .map(|i| Share {
                identifier: IdentifierPrimeField(Scalar::from(i)),
                value: IdentifierPrimeField(s),
            })
            .collect()
    } else {
        vsss_rs::shamir::split_secret::<Share>(
            threshold,
            n,
            &IdentifierPrimeField(s),
            UnwrapErr(SysRng),
        )
        .map_err(|e| KmsError::BadRequest(format!("secret sharing: {e}")))?
    };
    let text = shares
        .iter()
        .map(|sh| {
            let mut raw = Zeroizing::new(sh.identifier.0.to_bytes().to_vec());
            raw.extend_from_slice(&sh.value.0.to_bytes());
            UnsealShare::new(format!("{SHARE_PREFIX}:{threshold}:{}", hex::encode(&*raw)))
        })
        .collect();
    Ok((root_from_secret(&s), text))
}

/// Collects operator shares until the threshold is reached.
#[derive(Default)]
pub struct Unsealer {
    threshold: Option<usize>,
    shares: Vec<Share>,
}

impl std::fmt::Debug for Unsealer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Unsealer({} of {:?} shares)",
            self.shares.len(),
            self.threshold
        )
    }
}

impl Drop for Unsealer {
    fn drop(&mut self) {
        use zeroize::Zeroize;
        for s in &mut self.shares {
            s.value.0.zeroize();
        }
    }
}

impl Unsealer {
    pub fn new() -> Self {
        Self::default()
    }

    /// (shares given, shares needed once known).
    pub fn progress(&self) -> (usize, Option<usize>) {
        (self.shares.len(), self.threshold)
    }

    /// Adds a share; returns the root key once enough shares are in. A
    /// malformed or duplicate share is refused and changes nothing.
    pub fn add(&mut self, text: &str) -> Result<Option<Key32>> {
        let mut parts = text.trim().splitn(3, ':');
        let (Some(prefix), Some(t), Some(hexed)) = (parts.next(), parts.next(), parts.next())
        else {
            return Err(KmsError::BadUnsealShare);
        };
        if prefix != SHARE_PREFIX {
            return Err(KmsError::BadUnsealShare);
        }
        let t: usize = t.parse().map_err(|_| KmsError::BadUnsealShare)?;
        if t == 0 || self.threshold.is_some_and(|have| have != t) {
            return Err(KmsError::BadUnsealShare);
        }
        let raw = Zeroizing::new(hex::decode(hexed).map_err(|_| KmsError::BadUnsealShare)?);
        if raw.len() != 64 {
            return Err(KmsError::BadUnsealShare);
        }
        let scalar = |b: &[u8]| -> Result<Scalar> {
            let arr: [u8; 32] = b.try_into().expect("32 bytes");
            Option::from(Scalar::from_canonical_bytes(arr)).ok_or(KmsError::BadUnsealShare)
        };
        let id = scalar(&raw[..32])?;
        let value = scalar(&raw[32..])?;
        if id == Scalar::ZERO {
            return Err(KmsError::BadUnsealShare);
        }
        if self.shares.iter().any(|s| s.identifier.0 == id) {
            let n = id.to_bytes()[0];
            return Err(KmsError::DuplicateUnsealShare(n));
        }
        self.threshold = Some(t);
        self.shares.push(Share {
            identifier: IdentifierPrimeField(id),
            value: IdentifierPrimeField(value),
        });
        if self.shares.len() < t {
            return Ok(None);
        }
        let secret = if t == 1 {
            self.shares[0].value
        } else {
            self.shares
                .combine()
                .map_err(|_| KmsError::BadUnsealShare)?
        };
        Ok(Some(root_from_secret(&secret.0)))
    }
}

/// Reads a devnet root key file (64 hex characters).
pub fn read_key_file(path: &Path) -> Result<Key32> {
    let text = Zeroizing::new(
        std::fs::read_to_string(path)
            .map_err(|e| KmsError::Storage(format!("reading root key file: {}", e.kind())))?,
    );
    let raw = Zeroizing::new(hex::decode(text.trim()).map_err(|_| KmsError::WrongRootKey)?);
    Key32::from_slice(&raw).ok_or(KmsError::WrongRootKey)
}

/// Creates a devnet root key file (mode 0600) unless one exists; returns the key.
pub fn create_key_file(path: &Path) -> Result<Key32> {
    if path.exists() {
        return read_key_file(path);
    }
    let key = crypto::random_key()?;
    let text = Zeroizing::new(hex::encode(key.expose()));
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    use std::io::Write;
    let mut f = opts
        .open(path)
        .map_err(|e| KmsError::Storage(format!("creating root key file: {}", e.kind())))?;
    f.write_all(text.as_bytes())
        .map_err(|e| KmsError::Storage(format!("writing root key file: {}", e.kind())))?;
    Ok(key)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_unseal_parameters_say_what_is_allowed() {
        let e = split_root_key(0, 3).map(|_| ()).unwrap_err();
        assert_eq!(
            e.to_string(),
            "bad escrow parameters: threshold 0 of 3 trustees (need 1 <= t <= n <= 255, distinct trustees)"
        );
        assert!(split_root_key(4, 3).is_err());
        assert!(split_root_key(1, 1).is_ok());
    }

    #[test]
    fn three_of_five_unseal() {
        let (root, shares) = split_root_key(3, 5).unwrap();
        let mut u = Unsealer::new();
        assert!(u.add(shares[4].expose()).unwrap().is_none());
        assert!(matches!(
            u.add(shares[4].expose()),
            Err(KmsError::DuplicateUnsealShare(_))
        ));
        assert!(matches!(
            u.add("yilian-unseal-v1:3:zz"),
            Err(KmsError::BadUnsealShare)
        ));
        assert!(matches!(u.add("nonsense"), Err(KmsError::BadUnsealShare)));
        assert!(u.add(shares[1].expose()).unwrap().is_none());
        assert_eq!(u.progress(), (2, Some(3)));
        let got = u.add(shares[2].expose()).unwrap().unwrap();
        assert_eq!(got.expose(), root.expose());
        // A share never prints through Debug.
        let shown = format!("{:?}", shares[0]);
        assert_eq!(shown, "UnsealShare(<redacted>)");
        assert!(!shown.contains(&shares[0].expose()[20..]));
    }

    #[test]
    fn key_file_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("root.key");
        let k = create_key_file(&p).unwrap();
        assert_eq!(read_key_file(&p).unwrap().expose(), k.expose());
        assert_eq!(create_key_file(&p).unwrap().expose(), k.expose());
    }
}
