//! The sans-IO policy core: the records the KMS keeps and the pure decisions
//! over them (who may do what, whether a grant may be used now, what a use
//! changes, when a grant-only key has reached end of life). Time comes in as
//! `now_ms`; nothing here touches storage, clocks or the network.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use yilian_identity::{Principal, Role};

use crate::error::{KmsError, Result};

pub type AccountId = [u8; 32];

/// The authenticated party making a request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Caller {
    pub account: AccountId,
    pub role: Role,
}

impl From<&Principal> for Caller {
    fn from(p: &Principal) -> Self {
        Caller {
            account: p.public_key,
            role: p.role,
        }
    }
}

/// Key operations a grant can allow, and the audit's operation names.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Operation {
    Encrypt,
    Decrypt,
    GenerateDataKey,
    /// Open an envelope inside the node's ZK prover only (the key is used
    /// to prove and never returned): what a ZK query grant allows.
    Prove,
}

impl Operation {
    pub fn as_str(self) -> &'static str {
        match self {
            Operation::Encrypt => "encrypt",
            Operation::Decrypt => "decrypt",
            Operation::GenerateDataKey => "generate-data-key",
            Operation::Prove => "prove",
        }
    }
}

impl fmt::Display for Operation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Operation {
    type Err = KmsError;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "encrypt" => Ok(Operation::Encrypt),
            "decrypt" => Ok(Operation::Decrypt),
            "generate-data-key" => Ok(Operation::GenerateDataKey),
            "prove" => Ok(Operation::Prove),
            _ => Err(KmsError::BadGrant("unknown operation")),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum KeyKind {
    /// AES-256-GCM key-encryption key.
    Aes256Gcm,
    /// Two BN254 scalar-field elements for the Poseidon cipher of the ZK capability.
    Bn254Poseidon,
}

impl KeyKind {
    pub fn as_str(self) -> &'static str {
        match self {
            KeyKind::Aes256Gcm => "aes-256-gcm",
            KeyKind::Bn254Poseidon => "bn254-poseidon",
        }
    }
}

/// One version of a master key; `sealed` is the material encrypted under the
/// root key, emptied when the key is crypto-shredded.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct KeyVersion {
    pub version: u32,
    pub sealed: Vec<u8>,
    pub created_ms: u64,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct KeyRecord {
    pub key_id: String,
    pub owner: AccountId,
    pub kind: KeyKind,
    pub versions: Vec<KeyVersion>,
    pub min_decryption_version: u32,
    /// A key that exists only to be granted (a door key): destroyed when its
    /// last grant ends.
    pub grant_only: bool,
    pub destroyed: bool,
    pub created_ms: u64,
}

impl KeyRecord {
    pub fn latest(&self) -> u32 {
        self.versions.last().map(|v| v.version).unwrap_or(0)
    }

    pub fn check_owner(&self, caller: &Caller) -> Result<()> {
        if caller.account != self.owner {
            return Err(KmsError::NotOwner(self.key_id.clone()));
        }
        Ok(())
    }

    pub fn check_alive(&self) -> Result<()> {
        if self.destroyed {
            return Err(KmsError::KeyDestroyed(self.key_id.clone()));
        }
        Ok(())
    }

    /// May ciphertexts under `version` still be decrypted?
    pub fn check_decryptable(&self, version: u32) -> Result<()> {
        self.check_alive()?;
        if version == 0 || version > self.latest() {
            return Err(KmsError::UnknownVersion {
                key_id: self.key_id.clone(),
                version,
            });
        }
        if version < self.min_decryption_version {
            return Err(KmsError::VersionRetired {
                key_id: self.key_id.clone(),
                version,
                min: self.min_decryption_version,
            });
        }
        Ok(())
    }

    pub fn check_min_version(&self, requested: u32) -> Result<()> {
        if requested == 0 || requested > self.latest() || requested < self.min_decryption_version {
            return Err(KmsError::BadMinVersion {
                requested,
                latest: self.latest(),
            });
        }
        Ok(())
    }
}

pub fn check_key_name(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= crate::envelope::MAX_KEY_ID_LEN
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._:-".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(KmsError::BadKeyName(name.to_owned()))
    }
}

/// Roles that may own keys (create, rotate, escrow, grant).
pub fn check_owner_role(caller: &Caller, action: &'static str) -> Result<()> {
    match caller.role {
        Role::Member | Role::DataHolder => Ok(()),
        r => Err(KmsError::WrongRole {
            role: r.to_string(),
            action,
        }),
    }
}

/// Where an identity stands on the network, as the ledger lists it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Admission {
    pub role: Role,
    pub revoked: bool,
    pub not_after_ms: u64,
}

impl Admission {
    fn check_current(&self, account: &AccountId, now_ms: u64) -> Result<()> {
        if self.revoked {
            return Err(KmsError::IdentityRevoked(hex::encode(account)));
        }
        if self.not_after_ms < now_ms {
            return Err(KmsError::IdentityExpired(hex::encode(account)));
        }
        Ok(())
    }
}

/// A grant's reader (or a recovery's recipient) must be an identity the
/// network admitted and has not revoked, whose admission has not expired:
/// a grant to anyone else could never be used, and accepting it silently
/// hides the mistake (a mistyped key, a certificate never issued).
pub fn check_reader(reader: &AccountId, admission: Option<&Admission>, now_ms: u64) -> Result<()> {
    admission
        .ok_or_else(|| KmsError::NotAdmitted(hex::encode(reader)))?
        .check_current(reader, now_ms)
}

/// Every trustee of an escrow must be admitted with the trustee role and
/// still current, or its share would be one that can never approve, and a
/// t-of-n escrow could silently be unrecoverable.
pub fn check_trustee(
    trustee: &AccountId,
    admission: Option<&Admission>,
    now_ms: u64,
) -> Result<()> {
    let Some(a) = admission else {
        return Err(KmsError::TrusteeNotAdmitted {
            account: hex::encode(trustee),
            role: None,
        });
    };
    if a.role != Role::Trustee {
        return Err(KmsError::TrusteeNotAdmitted {
            account: hex::encode(trustee),
            role: Some(a.role.to_string()),
        });
    }
    a.check_current(trustee, now_ms)
}

/// Only trustees approve recoveries.
pub fn check_trustee_role(caller: &Caller) -> Result<()> {
    match caller.role {
        Role::Trustee => Ok(()),
        r => Err(KmsError::WrongRole {
            role: r.to_string(),
            action: "approve recoveries",
        }),
    }
}

/// Read-only roles (auditors, regulators) never touch key material.
pub fn check_key_user_role(caller: &Caller, action: &'static str) -> Result<()> {
    if caller.role.is_read_only() {
        return Err(KmsError::WrongRole {
            role: caller.role.to_string(),
            action,
        });
    }
    Ok(())
}

/// A reader's permission to use a key, with its constraints and use counter.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct GrantRecord {
    pub grant_id: String,
    pub key_id: String,
    pub owner: AccountId,
    pub reader: AccountId,
    pub not_before_ms: u64,
    pub not_after_ms: u64,
    /// 0 = unlimited; 1 = burn after reading.
    pub max_uses: u32,
    pub uses: u32,
    pub operations: Vec<Operation>,
    /// When set, the request's context must equal it exactly.
    pub required_context: Option<Vec<u8>>,
    pub revoked: bool,
}

/// What the owner asks for when granting.
#[derive(Clone, Debug)]
pub struct GrantTerms {
    pub reader: AccountId,
    pub not_before_ms: u64,
    pub not_after_ms: u64,
    pub max_uses: u32,
    pub operations: Vec<Operation>,
    pub required_context: Option<Vec<u8>>,
}

impl GrantTerms {
    pub fn validate(&self) -> Result<()> {
        if self.not_after_ms <= self.not_before_ms {
            return Err(KmsError::BadGrant(
                "not-after must be later than not-before",
            ));
        }
        if self.operations.is_empty() {
            return Err(KmsError::BadGrant("no operations allowed"));
        }
        Ok(())
    }
}

impl GrantRecord {
    /// Why this grant cannot be used at `now_ms` regardless of the request, if it cannot.
    pub fn dead_reason(&self, now_ms: u64) -> Option<KmsError> {
        if self.revoked {
            return Some(KmsError::GrantRevoked(self.grant_id.clone()));
        }
        if now_ms >= self.not_after_ms {
            return Some(KmsError::GrantExpired {
                grant_id: self.grant_id.clone(),
                not_after_ms: self.not_after_ms,
                now_ms,
            });
        }
        if self.max_uses != 0 && self.uses >= self.max_uses {
            return Some(KmsError::GrantExhausted {
                grant_id: self.grant_id.clone(),
                max_uses: self.max_uses,
            });
        }
        None
    }

    /// Decides one use. On success returns the record with the use counted,
    /// to be written in the same transaction as the decision.
    pub fn decide_use(
        &self,
        caller: &Caller,
        key_id: &str,
        op: Operation,
        context: &[u8],
        now_ms: u64,
    ) -> Result<GrantRecord> {
        if self.reader != caller.account {
            return Err(KmsError::NotGrantee(self.grant_id.clone()));
        }
        if self.key_id != key_id {
            return Err(KmsError::BadGrant("grant is for another key"));
        }
        if let Some(e) = self.dead_reason(now_ms) {
            return Err(e);
        }
        if now_ms < self.not_before_ms {
            return Err(KmsError::GrantNotYetValid {
                grant_id: self.grant_id.clone(),
                not_before_ms: self.not_before_ms,
                now_ms,
            });
        }
        if !self.operations.contains(&op) {
            return Err(KmsError::OperationNotGranted {
                grant_id: self.grant_id.clone(),
                operation: op,
            });
        }
        if let Some(required) = &self.required_context
            && required.as_slice() != context
        {
            return Err(KmsError::WrongContext(self.grant_id.clone()));
        }
        let mut next = self.clone();
        next.uses += 1;
        Ok(next)
    }
}

/// A grant-only key reaches end of life when it has had grants and none can
/// be used again.
pub fn grant_only_key_is_dead(key: &KeyRecord, grants: &[GrantRecord], now_ms: u64) -> bool {
    key.grant_only
        && !key.destroyed
        && !grants.is_empty()
        && grants.iter().all(|g| g.dead_reason(now_ms).is_some())
}

/// An open recovery: who it releases the key to, and the approvals so far.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RecoveryRecord {
    pub recovery_id: String,
    pub key_id: String,
    pub recipient: AccountId,
    pub nonce: [u8; 32],
    /// (trustee, share sealed under the root key)
    pub approvals: Vec<(AccountId, Vec<u8>)>,
    pub completed: bool,
}

impl RecoveryRecord {
    pub fn check_new_approval(&self, trustee: &AccountId) -> Result<()> {
        if self.completed {
            return Err(KmsError::RecoveryCompleted(self.recovery_id.clone()));
        }
        if self.approvals.iter().any(|(t, _)| t == trustee) {
            return Err(KmsError::DuplicateApproval(hex::encode(trustee)));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn grant(max_uses: u32) -> GrantRecord {
        GrantRecord {
            grant_id: "g".into(),
            key_id: "door".into(),
            owner: [1; 32],
            reader: [2; 32],
            not_before_ms: 1_000,
            not_after_ms: 2_000,
            max_uses,
            uses: 0,
            operations: vec![Operation::Decrypt],
            required_context: Some(b"room-301".to_vec()),
            revoked: false,
        }
    }

    fn reader() -> Caller {
        Caller {
            account: [2; 32],
            role: Role::Device,
        }
    }

    #[test]
    fn grant_window_uses_and_constraints() {
        let g = grant(1);
        let used = g
            .decide_use(&reader(), "door", Operation::Decrypt, b"room-301", 1_500)
            .unwrap();
        assert_eq!(used.uses, 1);
        assert!(matches!(
            used.decide_use(&reader(), "door", Operation::Decrypt, b"room-301", 1_500),
            Err(KmsError::GrantExhausted { max_uses: 1, .. })
        ));
        assert!(matches!(
            g.decide_use(&reader(), "door", Operation::Decrypt, b"room-301", 999),
            Err(KmsError::GrantNotYetValid { .. })
        ));
        assert!(matches!(
            g.decide_use(&reader(), "door", Operation::Decrypt, b"room-301", 2_000),
            Err(KmsError::GrantExpired { .. })
        ));
        assert!(matches!(
            g.decide_use(&reader(), "door", Operation::Encrypt, b"room-301", 1_500),
            Err(KmsError::OperationNotGranted { .. })
        ));
        assert!(matches!(
            g.decide_use(&reader(), "door", Operation::Decrypt, b"room-302", 1_500),
            Err(KmsError::WrongContext(_))
        ));
        assert!(matches!(
            g.decide_use(&reader(), "other", Operation::Decrypt, b"room-301", 1_500),
            Err(KmsError::BadGrant(_))
        ));
        let stranger = Caller {
            account: [3; 32],
            role: Role::Device,
        };
        assert!(matches!(
            g.decide_use(&stranger, "door", Operation::Decrypt, b"room-301", 1_500),
            Err(KmsError::NotGrantee(_))
        ));
        let mut r = g.clone();
        r.revoked = true;
        assert!(matches!(
            r.decide_use(&reader(), "door", Operation::Decrypt, b"room-301", 1_500),
            Err(KmsError::GrantRevoked(_))
        ));
        // Unlimited grants keep counting.
        let mut u = grant(0);
        for _ in 0..5 {
            u = u
                .decide_use(&reader(), "door", Operation::Decrypt, b"room-301", 1_500)
                .unwrap();
        }
        assert_eq!(u.uses, 5);
    }

    #[test]
    fn end_of_life_of_grant_only_keys() {
        let key = KeyRecord {
            key_id: "door".into(),
            owner: [1; 32],
            kind: KeyKind::Aes256Gcm,
            versions: vec![],
            min_decryption_version: 1,
            grant_only: true,
            destroyed: false,
            created_ms: 0,
        };
        let g = grant(0);
        assert!(
            !grant_only_key_is_dead(&key, &[], 5_000),
            "no grants yet: not end of life"
        );
        assert!(!grant_only_key_is_dead(
            &key,
            std::slice::from_ref(&g),
            1_500
        ));
        assert!(grant_only_key_is_dead(
            &key,
            std::slice::from_ref(&g),
            2_000
        ));
        let mut not_grant_only = key.clone();
        not_grant_only.grant_only = false;
        assert!(!grant_only_key_is_dead(&not_grant_only, &[g], 2_000));
    }

    #[test]
    fn trustees_and_readers_must_stand_on_the_network() {
        let a = [7u8; 32];
        let adm = |role, revoked, not_after_ms| Admission {
            role,
            revoked,
            not_after_ms,
        };
        let now = 1_000;
        assert!(check_trustee(&a, Some(&adm(Role::Trustee, false, now)), now).is_ok());
        assert!(matches!(
            check_trustee(&a, None, now),
            Err(KmsError::TrusteeNotAdmitted { role: None, .. })
        ));
        assert!(matches!(
            check_trustee(&a, Some(&adm(Role::Member, false, now)), now),
            Err(KmsError::TrusteeNotAdmitted { role: Some(r), .. }) if r == "member"
        ));
        assert!(matches!(
            check_trustee(&a, Some(&adm(Role::Trustee, true, now)), now),
            Err(KmsError::IdentityRevoked(_))
        ));
        assert!(matches!(
            check_trustee(&a, Some(&adm(Role::Trustee, false, now - 1)), now),
            Err(KmsError::IdentityExpired(_))
        ));
        // A reader the ledger never admitted is refused like a revoked one.
        assert!(matches!(
            check_reader(&a, None, now),
            Err(KmsError::NotAdmitted(_))
        ));
        assert!(check_reader(&a, Some(&adm(Role::Verifier, false, now)), now).is_ok());
        assert!(matches!(
            check_reader(&a, Some(&adm(Role::Verifier, true, now)), now),
            Err(KmsError::IdentityRevoked(_))
        ));
        assert!(matches!(
            check_reader(&a, Some(&adm(Role::Verifier, false, now - 1)), now),
            Err(KmsError::IdentityExpired(_))
        ));
    }

    #[test]
    fn roles() {
        let c = |role| Caller {
            account: [0; 32],
            role,
        };
        assert!(check_owner_role(&c(Role::Member), "x").is_ok());
        assert!(matches!(
            check_owner_role(&c(Role::Trustee), "x"),
            Err(KmsError::WrongRole { .. })
        ));
        assert!(check_trustee_role(&c(Role::Trustee)).is_ok());
        assert!(check_trustee_role(&c(Role::Member)).is_err());
        assert!(check_key_user_role(&c(Role::Auditor), "x").is_err());
        assert!(check_key_name("door-301.v2:a_b").is_ok());
        assert!(check_key_name("").is_err());
        assert!(check_key_name("a/b").is_err());
    }
}
