//! The KMS engine: the policy core ([`crate::policy`]) put behind durable
//! storage (a [`KeyStore`], key material sealed under the root key), crypto and the
//! audit log. Every public operation is audited; a success that cannot be
//! audited is turned into a failure and its changes are not committed.
//!
//! State changes (keys, grants, escrows, recoveries) run in one store write
//! transaction that stays open while the audit record is written, so a
//! decision, its durable effect (e.g. a grant's use counter) and its audit
//! record go together. Write transactions are serialised by an async mutex,
//! so a task waiting for the writer never blocks a runtime thread that the
//! current writer needs to finish its audit.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, RwLock};

use serde::{Serialize, de::DeserializeOwned};

use crate::audit::{AuditLog, KeyAudit};
use crate::crypto;
use crate::envelope::Envelope;
use crate::error::{KmsError, Result};
use crate::escrow::{self, EscrowPackage};
use crate::policy::{
    self, AccountId, Caller, GrantRecord, GrantTerms, KeyKind, KeyRecord, KeyVersion, Operation,
    RecoveryRecord,
};
use crate::secret::{Key32, SecretBytes};
use crate::store::{KeyStore, RedbKeyStore, StoreWrite, Table};

const ROOT_CHECK: &str = "root-check";
const ROOT_CHECK_PLAINTEXT: &[u8] = b"yilian-kms root key check v1";

/// The audit `actor` for operations the KMS performs on its own (end-of-life
/// shredding), rather than on behalf of a caller.
pub const KMS_ACTOR: AccountId = [0u8; 32];

/// The source of "now" in milliseconds since the Unix epoch, injected so
/// grant expiry is tested without sleeping.
pub type Clock = Arc<dyn Fn() -> u64 + Send + Sync>;

pub fn system_clock() -> Clock {
    Arc::new(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0)
    })
}

/// What a caller learns about a key.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct KeyInfo {
    pub key_id: String,
    pub owner: AccountId,
    pub kind: String,
    pub latest_version: u32,
    pub min_decryption_version: u32,
    pub grant_only: bool,
    pub destroyed: bool,
}

impl From<&KeyRecord> for KeyInfo {
    fn from(k: &KeyRecord) -> Self {
        KeyInfo {
            key_id: k.key_id.clone(),
            owner: k.owner,
            kind: k.kind.as_str().to_owned(),
            latest_version: k.latest(),
            min_decryption_version: k.min_decryption_version,
            grant_only: k.grant_only,
            destroyed: k.destroyed,
        }
    }
}

/// A fresh data key: the plaintext for the caller's immediate use and the
/// same key wrapped under the master key for storage next to the data.
#[derive(Debug)]
pub struct DataKey {
    pub plaintext: Key32,
    pub wrapped: Vec<u8>,
    pub key_version: u32,
}

/// A ZK-friendly key: two BN254 scalar-field elements (32-byte little-endian
/// canonical encodings) and the Poseidon commitment to them.
#[derive(Debug)]
pub struct ZkKey {
    pub elements: SecretBytes,
    pub commitment: [u8; 32],
}

struct CachedKey {
    record: KeyRecord,
    /// Material per version (index = version - 1); empty once shredded.
    material: Vec<SecretBytes>,
}

struct Inner<A, S> {
    store: S,
    root: Key32,
    keys: RwLock<HashMap<String, Arc<CachedKey>>>,
    writer: tokio::sync::Mutex<()>,
    audit: A,
    clock: Clock,
}

/// A handle to an unsealed KMS. Cheap to clone.
pub struct Kms<A, S = RedbKeyStore> {
    inner: Arc<Inner<A, S>>,
}

impl<A, S> Clone for Kms<A, S> {
    fn clone(&self) -> Self {
        Kms {
            inner: self.inner.clone(),
        }
    }
}

fn encode<T: Serialize>(v: &T) -> Vec<u8> {
    postcard::to_stdvec(v).expect("records always serialise")
}

fn decode<T: DeserializeOwned>(what: &str, bytes: &[u8]) -> Result<T> {
    postcard::from_bytes(bytes).map_err(|e| KmsError::Corrupt(format!("{what}: {e}")))
}

fn at_rest_aad(key_id: &str, version: u32) -> Vec<u8> {
    let mut aad = b"yilian-kms/at-rest/v1".to_vec();
    aad.extend_from_slice(&version.to_be_bytes());
    aad.extend_from_slice(key_id.as_bytes());
    aad
}

fn request_hash(parts: &[&[u8]]) -> [u8; 32] {
    crypto::sha256(parts)
}

fn random_id(prefix: &str) -> Result<String> {
    Ok(format!("{prefix}-{}", hex::encode(crypto::random::<16>()?)))
}

/// The parts of an audit record known before the outcome.
struct AuditBase {
    owner: AccountId,
    actor: AccountId,
    operation: &'static str,
    key_id: String,
    key_version: Option<u32>,
    grant_id: Option<String>,
    request_hash: [u8; 32],
}

impl AuditBase {
    fn with(self, outcome: &str, version: Option<u32>) -> KeyAudit {
        KeyAudit {
            owner: self.owner,
            actor: self.actor,
            operation: self.operation.to_owned(),
            key_id: self.key_id,
            key_version: version.or(self.key_version),
            grant_id: self.grant_id,
            outcome: outcome.to_owned(),
            request_hash: self.request_hash,
        }
    }
}

/// A decided operation: its result, the version it touched and the write
/// transaction holding its effects (committed only after the audit).
struct Decided<T, W> {
    value: T,
    version: Option<u32>,
    txn: Option<W>,
}

impl<T, W> Decided<T, W> {
    fn read(value: T, version: Option<u32>) -> Self {
        Decided {
            value,
            version,
            txn: None,
        }
    }
}

impl<A: AuditLog> Kms<A> {
    /// Opens (or creates) the redb store at `path` with the unsealed root
    /// key. A root key other than the one the store was created with is
    /// refused.
    pub fn open(path: &Path, root: Key32, audit: A, clock: Clock) -> Result<Kms<A>> {
        Kms::with_store(RedbKeyStore::open(path)?, root, audit, clock)
    }
}

impl<A: AuditLog, S: KeyStore> Kms<A, S> {
    /// The KMS on `store`, unsealed with `root`; a root key other than the
    /// one the store was first used with is refused.
    pub fn with_store(store: S, root: Key32, audit: A, clock: Clock) -> Result<Kms<A, S>> {
        match store.get(Table::Meta, ROOT_CHECK)? {
            Some(sealed) => {
                let pt = crypto::open_random_nonce(&root, b"root-check", &sealed)
                    .map_err(|_| KmsError::WrongRootKey)?;
                if pt.expose() != ROOT_CHECK_PLAINTEXT {
                    return Err(KmsError::WrongRootKey);
                }
            }
            None => {
                let sealed = crypto::seal_random_nonce(&root, b"root-check", ROOT_CHECK_PLAINTEXT)?;
                let mut txn = store.write()?;
                txn.put(Table::Meta, ROOT_CHECK, &sealed)?;
                txn.commit()?;
            }
        }
        let mut keys = HashMap::new();
        for (_, v) in store.scan(Table::Keys)? {
            let record: KeyRecord = decode("key record", &v)?;
            let cached = Self::unseal_record(&root, record)?;
            keys.insert(cached.record.key_id.clone(), Arc::new(cached));
        }
        Ok(Kms {
            inner: Arc::new(Inner {
                store,
                root,
                keys: RwLock::new(keys),
                writer: tokio::sync::Mutex::new(()),
                audit,
                clock,
            }),
        })
    }

    fn unseal_record(root: &Key32, record: KeyRecord) -> Result<CachedKey> {
        let mut material = Vec::with_capacity(record.versions.len());
        if !record.destroyed {
            for v in &record.versions {
                let m = crypto::open_random_nonce(
                    root,
                    &at_rest_aad(&record.key_id, v.version),
                    &v.sealed,
                )
                .map_err(|_| {
                    KmsError::Corrupt(format!(
                        "key `{}` v{} does not unseal",
                        record.key_id, v.version
                    ))
                })?;
                material.push(m);
            }
        }
        Ok(CachedKey { record, material })
    }

    pub fn now_ms(&self) -> u64 {
        (self.inner.clock)()
    }

    pub fn audit_log(&self) -> &A {
        &self.inner.audit
    }

    /// A page of the caller's verified audit trail: the recorded operations
    /// on the keys it owns (or on one of them).
    pub fn audit_trail(
        &self,
        caller: &Caller,
        key_id: Option<&str>,
        page: crate::audit::Page,
    ) -> Result<crate::audit::TrailPage> {
        if let Some(k) = key_id {
            self.cached(k)?.record.check_owner(caller)?;
        }
        self.inner.audit.trail(&caller.account, key_id, page)
    }

    fn cached(&self, key_id: &str) -> Result<Arc<CachedKey>> {
        self.inner
            .keys
            .read()
            .expect("key cache lock")
            .get(key_id)
            .cloned()
            .ok_or_else(|| KmsError::UnknownKey(key_id.to_owned()))
    }

    fn owner_of(&self, key_id: &str) -> Option<AccountId> {
        self.inner
            .keys
            .read()
            .expect("key cache lock")
            .get(key_id)
            .map(|k| k.record.owner)
    }

    /// One use of a key, possibly through a grant: a grant's use count is
    /// decided under the writer lock (so concurrent uses of a one-use grant
    /// serialise), and a grant-only key whose last grant this use ended is
    /// shredded once the lock is released.
    async fn use_key<T>(
        &self,
        base: AuditBase,
        key_id: &str,
        grant_id: Option<&str>,
        decide: impl FnOnce() -> Result<Decided<T, S::Write>>,
    ) -> Result<T> {
        let writer = match grant_id {
            Some(_) => Some(self.inner.writer.lock().await),
            None => None,
        };
        let out = self.finish(base, decide()).await?;
        if writer.is_some() {
            drop(writer);
            self.shred_if_dead(key_id).await?;
        }
        Ok(out)
    }

    /// Records the outcome. A success becomes a failure if it cannot be
    /// audited, and its write transaction is then dropped (aborted).
    ///
    /// The order is audit, then commit, then release, on purpose:
    ///
    /// * Nothing leaves the KMS (a plaintext, a data key, a recovered key)
    ///   and no state change becomes durable before its audit record is
    ///   durable on the ledger. Committing first would let a crash or an
    ///   audit failure leave a durable change (a created key, a spent grant
    ///   use) that no audit record explains.
    /// * A failure after the audit (commit error, crash, the caller's request
    ///   dropped) leaves the store as it was before the operation: the write
    ///   transaction is aborted, the key cache is only updated after the
    ///   commit, and nothing was released. The trail then holds an "ok" record
    ///   for an operation without effect, which over-reports and never hides:
    ///   a grant use recorded but not counted was also never delivered, so
    ///   the reader can still spend it once. A commit error is followed by a
    ///   "not-committed" record with the same request hash so the trail says
    ///   so (a crash cannot add one).
    async fn finish<T>(&self, base: AuditBase, decided: Result<Decided<T, S::Write>>) -> Result<T> {
        match decided {
            Ok(d) => {
                let operation = base.operation;
                let entry = base.with("ok", d.version);
                let retraction = KeyAudit {
                    outcome: "not-committed".to_owned(),
                    ..entry.clone()
                };
                let started = std::time::Instant::now();
                self.inner.audit.record(entry).await?;
                metrics::histogram!("yilian_kms_audit_seconds").record(started.elapsed());
                metrics::counter!("yilian_kms_operations_total", "operation" => operation, "outcome" => "ok")
                    .increment(1);
                if let Some(txn) = d.txn
                    && let Err(e) = txn.commit()
                {
                    if let Err(audit_err) = self.inner.audit.record(retraction).await {
                        tracing::warn!(error = %audit_err, "failed commit could not be audited");
                    }
                    return Err(e);
                }
                Ok(d.value)
            }
            Err(e) => {
                metrics::counter!(
                    "yilian_kms_operations_total",
                    "operation" => base.operation,
                    "outcome" => e.reason()
                )
                .increment(1);
                let entry = base.with(e.reason(), None);
                if let Err(audit_err) = self.inner.audit.record(entry).await {
                    tracing::warn!(reason = e.reason(), error = %audit_err, "refusal could not be audited");
                }
                Err(e)
            }
        }
    }

    fn base(
        &self,
        caller: &Caller,
        operation: &'static str,
        key_id: &str,
        grant_id: Option<&str>,
        hash: [u8; 32],
    ) -> AuditBase {
        AuditBase {
            owner: self.owner_of(key_id).unwrap_or(caller.account),
            actor: caller.account,
            operation,
            key_id: key_id.to_owned(),
            key_version: None,
            grant_id: grant_id.map(str::to_owned),
            request_hash: hash,
        }
    }

    fn seal_version(
        &self,
        key_id: &str,
        version: u32,
        material: &SecretBytes,
    ) -> Result<KeyVersion> {
        Ok(KeyVersion {
            version,
            sealed: crypto::seal_random_nonce(
                &self.inner.root,
                &at_rest_aad(key_id, version),
                material.expose(),
            )?,
            created_ms: self.now_ms(),
        })
    }

    /// A write transaction, durable when its commit returns (see
    /// [`crate::store::RedbWrite`] for why never less).
    fn begin_write(&self) -> Result<S::Write> {
        self.inner.store.write()
    }

    fn put<T: Serialize>(txn: &mut S::Write, table: Table, id: &str, v: &T) -> Result<()> {
        txn.put(table, id, &encode(v))
    }

    /// Removes `key_id`'s recoveries that have not completed.
    fn void_open_recoveries(txn: &mut S::Write, key_id: &str) -> Result<()> {
        for (id, v) in txn.scan(Table::Recoveries)? {
            let rec: RecoveryRecord = decode(Table::Recoveries.name(), &v)?;
            if rec.key_id == key_id && !rec.completed {
                txn.remove(Table::Recoveries, &id)?;
            }
        }
        Ok(())
    }

    fn get<T: DeserializeOwned>(txn: &S::Write, table: Table, id: &str) -> Result<Option<T>> {
        txn.get(table, id)?
            .map(|v| decode(table.name(), &v))
            .transpose()
    }

    fn read<T: DeserializeOwned>(&self, table: Table, id: &str) -> Result<Option<T>> {
        self.inner
            .store
            .get(table, id)?
            .map(|v| decode(table.name(), &v))
            .transpose()
    }

    fn install(&self, cached: CachedKey) {
        self.inner
            .keys
            .write()
            .expect("key cache lock")
            .insert(cached.record.key_id.clone(), Arc::new(cached));
    }

    // ---------------------------------------------------------------- keys

    /// Creates a master key named `key_id` owned by the caller.
    pub async fn create_key(
        &self,
        caller: &Caller,
        key_id: &str,
        kind: KeyKind,
        grant_only: bool,
    ) -> Result<KeyInfo> {
        let hash = request_hash(&[
            b"create-key",
            key_id.as_bytes(),
            kind.as_str().as_bytes(),
            &[grant_only as u8],
        ]);
        let base = self.base(caller, "create-key", key_id, None, hash);
        let _w = self.inner.writer.lock().await;
        let decided = (|| {
            policy::check_owner_role(caller, "create keys")?;
            policy::check_key_name(key_id)?;
            if self.owner_of(key_id).is_some() {
                return Err(KmsError::KeyExists(key_id.to_owned()));
            }
            let material = new_material(kind)?;
            let record = KeyRecord {
                key_id: key_id.to_owned(),
                owner: caller.account,
                kind,
                versions: vec![self.seal_version(key_id, 1, &material)?],
                min_decryption_version: 1,
                grant_only,
                destroyed: false,
                created_ms: self.now_ms(),
            };
            let mut txn = self.begin_write()?;
            Self::put(&mut txn, Table::Keys, key_id, &record)?;
            Ok(Decided {
                value: CachedKey {
                    record,
                    material: vec![material],
                },
                version: Some(1),
                txn: Some(txn),
            })
        })();
        let cached = self.finish(base, decided).await?;
        let info = KeyInfo::from(&cached.record);
        self.install(cached);
        Ok(info)
    }

    pub fn key_info(&self, caller: &Caller, key_id: &str) -> Result<KeyInfo> {
        let k = self.cached(key_id)?;
        if k.record.owner != caller.account && !caller.role.is_read_only() {
            return Err(KmsError::NotOwner(key_id.to_owned()));
        }
        Ok(KeyInfo::from(&k.record))
    }

    /// Adds a version; new encryptions use it, older versions still decrypt.
    pub async fn rotate(&self, caller: &Caller, key_id: &str) -> Result<KeyInfo> {
        let base = self.base(
            caller,
            "rotate",
            key_id,
            None,
            request_hash(&[b"rotate", key_id.as_bytes()]),
        );
        let _w = self.inner.writer.lock().await;
        let decided = (|| {
            policy::check_owner_role(caller, "rotate keys")?;
            let k = self.cached(key_id)?;
            k.record.check_owner(caller)?;
            k.record.check_alive()?;
            let version = k.record.latest() + 1;
            let material = new_material(k.record.kind)?;
            let mut record = k.record.clone();
            record
                .versions
                .push(self.seal_version(key_id, version, &material)?);
            let mut all = k.material.clone();
            all.push(material);
            let mut txn = self.begin_write()?;
            Self::put(&mut txn, Table::Keys, key_id, &record)?;
            Ok(Decided {
                value: CachedKey {
                    record,
                    material: all,
                },
                version: Some(version),
                txn: Some(txn),
            })
        })();
        let cached = self.finish(base, decided).await?;
        let info = KeyInfo::from(&cached.record);
        self.install(cached);
        Ok(info)
    }

    /// Retires every version below `min_version`: their ciphertexts no longer decrypt.
    pub async fn set_min_decryption_version(
        &self,
        caller: &Caller,
        key_id: &str,
        min_version: u32,
    ) -> Result<KeyInfo> {
        let hash = request_hash(&[
            b"set-min-version",
            key_id.as_bytes(),
            &min_version.to_be_bytes(),
        ]);
        let base = self.base(caller, "set-min-decryption-version", key_id, None, hash);
        let _w = self.inner.writer.lock().await;
        let decided = (|| {
            policy::check_owner_role(caller, "retire key versions")?;
            let k = self.cached(key_id)?;
            k.record.check_owner(caller)?;
            k.record.check_alive()?;
            k.record.check_min_version(min_version)?;
            let mut record = k.record.clone();
            record.min_decryption_version = min_version;
            let mut txn = self.begin_write()?;
            Self::put(&mut txn, Table::Keys, key_id, &record)?;
            Ok(Decided {
                value: CachedKey {
                    record,
                    material: k.material.clone(),
                },
                version: Some(min_version),
                txn: Some(txn),
            })
        })();
        let cached = self.finish(base, decided).await?;
        let info = KeyInfo::from(&cached.record);
        self.install(cached);
        Ok(info)
    }

    /// Checks that the caller may perform `op` on `key_id`: as its owner, or
    /// through a grant whose use is then counted in a write transaction
    /// returned for the caller to commit after the audit.
    fn authorize(
        &self,
        caller: &Caller,
        key: &CachedKey,
        op: Operation,
        context: &[u8],
        grant_id: Option<&str>,
    ) -> Result<Option<S::Write>> {
        policy::check_key_user_role(caller, "use keys")?;
        key.record.check_alive()?;
        if key.record.kind != KeyKind::Aes256Gcm {
            return Err(KmsError::WrongKeyKind {
                key_id: key.record.key_id.clone(),
                kind: key.record.kind.as_str(),
            });
        }
        let Some(grant_id) = grant_id else {
            key.record.check_owner(caller)?;
            return Ok(None);
        };
        let mut txn = self.begin_write()?;
        let grant: GrantRecord = Self::get(&txn, Table::Grants, grant_id)?
            .ok_or_else(|| KmsError::UnknownGrant(grant_id.to_owned()))?;
        let used = grant.decide_use(caller, &key.record.key_id, op, context, self.now_ms())?;
        Self::put(&mut txn, Table::Grants, grant_id, &used)?;
        Ok(Some(txn))
    }

    /// A fresh data key from the OS random source, returned in plaintext
    /// and wrapped under the newest version of the master key.
    pub async fn generate_data_key(
        &self,
        caller: &Caller,
        key_id: &str,
        context: &[u8],
        grant_id: Option<&str>,
    ) -> Result<DataKey> {
        let hash = request_hash(&[b"generate-data-key", key_id.as_bytes(), context]);
        let base = self.base(caller, "generate-data-key", key_id, grant_id, hash);
        self.use_key(base, key_id, grant_id, || {
            let k = self.cached(key_id)?;
            let txn = self.authorize(caller, &k, Operation::GenerateDataKey, context, grant_id)?;
            let version = k.record.latest();
            let plaintext = crypto::random_key()?;
            let wrapped = Envelope::seal(
                &master(&k, version)?,
                key_id,
                version,
                &k.record.owner,
                context,
                plaintext.expose(),
            )?
            .encode();
            Ok(Decided {
                value: DataKey {
                    plaintext,
                    wrapped,
                    key_version: version,
                },
                version: Some(version),
                txn,
            })
        })
        .await
    }

    /// Encrypts a small payload under the newest version of the master key.
    pub async fn encrypt(
        &self,
        caller: &Caller,
        key_id: &str,
        plaintext: &[u8],
        context: &[u8],
        grant_id: Option<&str>,
    ) -> Result<Vec<u8>> {
        let hash = request_hash(&[
            b"encrypt",
            key_id.as_bytes(),
            context,
            &crypto::sha256(&[plaintext]),
        ]);
        let base = self.base(caller, "encrypt", key_id, grant_id, hash);
        self.use_key(base, key_id, grant_id, || {
            let k = self.cached(key_id)?;
            let txn = self.authorize(caller, &k, Operation::Encrypt, context, grant_id)?;
            let version = k.record.latest();
            let env = Envelope::seal(
                &master(&k, version)?,
                key_id,
                version,
                &k.record.owner,
                context,
                plaintext,
            )?;
            Ok(Decided {
                value: env.encode(),
                version: Some(version),
                txn,
            })
        })
        .await
    }

    /// Decrypts (or unwraps a data key from) an envelope, for the key's owner
    /// or a reader holding a grant.
    pub async fn decrypt(
        &self,
        caller: &Caller,
        envelope: &[u8],
        context: &[u8],
        grant_id: Option<&str>,
    ) -> Result<SecretBytes> {
        self.open_envelope(caller, envelope, context, grant_id, Operation::Decrypt)
            .await
    }

    /// Opens an envelope for the node's own ZK prover, which uses the key in
    /// memory and never returns it. A grant of [`Operation::Prove`] lets a
    /// verifier have questions answered about a record without ever being
    /// able to decrypt its key: the KMS's gRPC `Decrypt` asks for
    /// [`Operation::Decrypt`].
    pub async fn open_to_prove(
        &self,
        caller: &Caller,
        envelope: &[u8],
        context: &[u8],
        grant_id: Option<&str>,
    ) -> Result<SecretBytes> {
        self.open_envelope(caller, envelope, context, grant_id, Operation::Prove)
            .await
    }

    async fn open_envelope(
        &self,
        caller: &Caller,
        envelope: &[u8],
        context: &[u8],
        grant_id: Option<&str>,
        op: Operation,
    ) -> Result<SecretBytes> {
        let parsed = Envelope::decode(envelope);
        let key_id = parsed
            .as_ref()
            .map(|e| e.key_id.clone())
            .unwrap_or_default();
        let hash = request_hash(&[
            op.as_str().as_bytes(),
            &crypto::sha256(&[envelope]),
            context,
        ]);
        let mut base = self.base(caller, op.as_str(), &key_id, grant_id, hash);
        base.key_version = parsed.as_ref().ok().map(|e| e.key_version);
        self.use_key(base, &key_id, grant_id, || {
            let env = parsed?;
            let k = self.cached(&env.key_id)?;
            // Authenticate before counting a grant use, so a tampered
            // envelope costs the reader nothing.
            k.record.check_decryptable(env.key_version)?;
            let pt = env.open(&master(&k, env.key_version)?, &k.record.owner, context);
            let txn = self.authorize(caller, &k, op, context, grant_id)?;
            Ok(Decided {
                value: pt?,
                version: Some(env.key_version),
                txn,
            })
        })
        .await
    }

    /// Re-encrypts an envelope under the newest version of its key (owner only).
    pub async fn rewrap(
        &self,
        caller: &Caller,
        envelope: &[u8],
        context: &[u8],
    ) -> Result<Vec<u8>> {
        let parsed = Envelope::decode(envelope);
        let key_id = parsed
            .as_ref()
            .map(|e| e.key_id.clone())
            .unwrap_or_default();
        let hash = request_hash(&[b"rewrap", &crypto::sha256(&[envelope]), context]);
        let base = self.base(caller, "rewrap", &key_id, None, hash);
        let decided = (|| {
            let env = parsed?;
            let k = self.cached(&env.key_id)?;
            policy::check_key_user_role(caller, "use keys")?;
            k.record.check_owner(caller)?;
            k.record.check_decryptable(env.key_version)?;
            let pt = env.open(&master(&k, env.key_version)?, &k.record.owner, context)?;
            let version = k.record.latest();
            let fresh = Envelope::seal(
                &master(&k, version)?,
                &env.key_id,
                version,
                &k.record.owner,
                context,
                pt.expose(),
            )?;
            Ok(Decided::read(fresh.encode(), Some(version)))
        })();
        self.finish(base, decided).await
    }

    // -------------------------------------------------------------- grants

    /// The owner grants `terms.reader` constrained use of a key.
    pub async fn grant(
        &self,
        caller: &Caller,
        key_id: &str,
        terms: GrantTerms,
    ) -> Result<GrantRecord> {
        let hash = request_hash(&[
            b"grant",
            key_id.as_bytes(),
            &terms.reader,
            &terms.not_before_ms.to_be_bytes(),
            &terms.not_after_ms.to_be_bytes(),
            &terms.max_uses.to_be_bytes(),
        ]);
        let base = self.base(caller, "grant", key_id, None, hash);
        let _w = self.inner.writer.lock().await;
        let decided = (|| {
            policy::check_owner_role(caller, "grant keys")?;
            let k = self.cached(key_id)?;
            k.record.check_owner(caller)?;
            k.record.check_alive()?;
            terms.validate()?;
            policy::check_reader(
                &terms.reader,
                self.inner.audit.admission(&terms.reader).as_ref(),
                (self.inner.clock)(),
            )?;
            let grant = GrantRecord {
                grant_id: random_id("g")?,
                key_id: key_id.to_owned(),
                owner: caller.account,
                reader: terms.reader,
                not_before_ms: terms.not_before_ms,
                not_after_ms: terms.not_after_ms,
                max_uses: terms.max_uses,
                uses: 0,
                operations: terms.operations.clone(),
                required_context: terms.required_context.clone(),
                revoked: false,
            };
            let mut txn = self.begin_write()?;
            Self::put(&mut txn, Table::Grants, &grant.grant_id, &grant)?;
            Ok(Decided {
                value: grant,
                version: None,
                txn: Some(txn),
            })
        })();
        // The grant id only exists once decided; record it in the audit.
        let mut base = base;
        if let Ok(d) = &decided {
            base.grant_id = Some(d.value.grant_id.clone());
        }
        self.finish(base, decided).await
    }

    pub async fn revoke_grant(&self, caller: &Caller, grant_id: &str) -> Result<GrantRecord> {
        let existing: Option<GrantRecord> = self.read(Table::Grants, grant_id)?;
        let key_id = existing
            .as_ref()
            .map(|g| g.key_id.clone())
            .unwrap_or_default();
        let base = self.base(
            caller,
            "revoke-grant",
            &key_id,
            Some(grant_id),
            request_hash(&[b"revoke-grant", grant_id.as_bytes()]),
        );
        let guard = self.inner.writer.lock().await;
        let decided = (|| {
            policy::check_owner_role(caller, "revoke grants")?;
            let mut txn = self.begin_write()?;
            let mut g: GrantRecord = Self::get(&txn, Table::Grants, grant_id)?
                .ok_or_else(|| KmsError::UnknownGrant(grant_id.to_owned()))?;
            if g.owner != caller.account {
                return Err(KmsError::NotOwner(g.key_id.clone()));
            }
            if g.revoked {
                return Err(KmsError::GrantRevoked(grant_id.to_owned()));
            }
            g.revoked = true;
            Self::put(&mut txn, Table::Grants, grant_id, &g)?;
            Ok(Decided {
                value: g,
                version: None,
                txn: Some(txn),
            })
        })();
        let out = self.finish(base, decided).await?;
        drop(guard);
        self.shred_if_dead(&key_id).await?;
        Ok(out)
    }

    pub fn grants_for_key(&self, key_id: &str) -> Result<Vec<GrantRecord>> {
        let mut out = Vec::new();
        for (_, v) in self.inner.store.scan(Table::Grants)? {
            let g: GrantRecord = decode("grant", &v)?;
            if g.key_id == key_id {
                out.push(g);
            }
        }
        Ok(out)
    }

    pub fn grant_record(&self, grant_id: &str) -> Result<GrantRecord> {
        self.read(Table::Grants, grant_id)?
            .ok_or_else(|| KmsError::UnknownGrant(grant_id.to_owned()))
    }

    /// Crypto-shreds a grant-only key whose grants can no longer be used:
    /// its material is erased from the store and memory, and that is
    /// audited. Returns whether the key was destroyed.
    pub async fn shred_if_dead(&self, key_id: &str) -> Result<bool> {
        let Ok(k) = self.cached(key_id) else {
            return Ok(false);
        };
        if !k.record.grant_only || k.record.destroyed {
            return Ok(false);
        }
        let _w = self.inner.writer.lock().await;
        let grants = self.grants_for_key(key_id)?;
        if !policy::grant_only_key_is_dead(&k.record, &grants, self.now_ms()) {
            return Ok(false);
        }
        let base = AuditBase {
            owner: k.record.owner,
            actor: KMS_ACTOR,
            operation: "destroy",
            key_id: key_id.to_owned(),
            key_version: Some(k.record.latest()),
            grant_id: None,
            request_hash: request_hash(&[b"destroy", key_id.as_bytes()]),
        };
        let decided = (|| {
            let mut record = k.record.clone();
            record.destroyed = true;
            for v in &mut record.versions {
                v.sealed.clear();
            }
            let mut txn = self.begin_write()?;
            Self::put(&mut txn, Table::Keys, key_id, &record)?;
            txn.remove(Table::Escrows, key_id)?;
            Ok(Decided {
                value: record,
                version: None,
                txn: Some(txn),
            })
        })();
        let record = self.finish(base, decided).await?;
        // Dropping the last Arc of the old entry zeroizes its material.
        self.install(CachedKey {
            record,
            material: Vec::new(),
        });
        Ok(true)
    }

    /// Shreds every grant-only key that has reached end of life (run
    /// periodically by the node). Returns the destroyed key ids.
    pub async fn sweep(&self) -> Result<Vec<String>> {
        let ids: Vec<String> = self
            .inner
            .keys
            .read()
            .expect("key cache lock")
            .values()
            .filter(|k| k.record.grant_only && !k.record.destroyed)
            .map(|k| k.record.key_id.clone())
            .collect();
        let mut destroyed = Vec::new();
        for id in ids {
            if self.shred_if_dead(&id).await? {
                destroyed.push(id);
            }
        }
        Ok(destroyed)
    }

    // -------------------------------------------------------------- escrow

    /// Escrows the newest version of a key to `trustees`, `threshold` of whom can recover it.
    ///
    /// Every trustee must be an admitted, current identity with the trustee
    /// role. A key that is already escrowed keeps its escrow unless
    /// `replace` asks for the new one explicitly (audited as
    /// `replace-escrow`); the checks above make sure the new set can recover.
    pub async fn escrow(
        &self,
        caller: &Caller,
        key_id: &str,
        trustees: &[AccountId],
        threshold: usize,
        replace: bool,
    ) -> Result<EscrowPackage> {
        let mut hash_parts: Vec<&[u8]> = vec![b"escrow", key_id.as_bytes()];
        let t_bytes = (threshold as u32).to_be_bytes();
        hash_parts.push(&t_bytes);
        for t in trustees {
            hash_parts.push(t);
        }
        let operation = if replace { "replace-escrow" } else { "escrow" };
        let base = self.base(caller, operation, key_id, None, request_hash(&hash_parts));
        let _w = self.inner.writer.lock().await;
        let decided = (|| {
            policy::check_owner_role(caller, "escrow keys")?;
            let k = self.cached(key_id)?;
            k.record.check_owner(caller)?;
            k.record.check_alive()?;
            let now = (self.inner.clock)();
            for t in trustees {
                policy::check_trustee(t, self.inner.audit.admission(t).as_ref(), now)?;
            }
            let existing: Option<EscrowPackage> = self.read(Table::Escrows, key_id)?;
            if existing.is_some() && !replace {
                return Err(KmsError::EscrowExists(key_id.to_owned()));
            }
            if existing.is_none() && replace {
                return Err(KmsError::UnknownEscrow(key_id.to_owned()));
            }
            let version = k.record.latest();
            let pkg = EscrowPackage::create(
                key_id,
                &k.record.owner,
                version,
                &k.material[version as usize - 1],
                trustees,
                threshold,
            )?;
            let mut txn = self.begin_write()?;
            if existing.is_some() {
                // Approvals of open recoveries were checked against the old
                // shares and could never combine under the new package.
                Self::void_open_recoveries(&mut txn, key_id)?;
            }
            Self::put(&mut txn, Table::Escrows, key_id, &pkg)?;
            Ok(Decided {
                value: pkg,
                version: Some(version),
                txn: Some(txn),
            })
        })();
        self.finish(base, decided).await
    }

    /// The escrow package, for its owner and its trustees (who check their shares with it).
    pub fn escrow_package(&self, caller: &Caller, key_id: &str) -> Result<EscrowPackage> {
        let pkg: EscrowPackage = self
            .read(Table::Escrows, key_id)?
            .ok_or_else(|| KmsError::UnknownEscrow(key_id.to_owned()))?;
        if pkg.owner != caller.account && pkg.trustee_index(&caller.account).is_none() {
            return Err(KmsError::NotTrustee(hex::encode(caller.account)));
        }
        Ok(pkg)
    }

    /// Opens a recovery of `key_id` for `recipient`; the owner or a trustee may open one.
    pub async fn start_recovery(
        &self,
        caller: &Caller,
        key_id: &str,
        recipient: AccountId,
    ) -> Result<RecoveryRecord> {
        let base = self.base(
            caller,
            "start-recovery",
            key_id,
            None,
            request_hash(&[b"start-recovery", key_id.as_bytes(), &recipient]),
        );
        let _w = self.inner.writer.lock().await;
        let decided = (|| {
            policy::check_key_user_role(caller, "start recoveries")?;
            let pkg: EscrowPackage = self
                .read(Table::Escrows, key_id)?
                .ok_or_else(|| KmsError::UnknownEscrow(key_id.to_owned()))?;
            if pkg.owner != caller.account && pkg.trustee_index(&caller.account).is_none() {
                return Err(KmsError::NotTrustee(hex::encode(caller.account)));
            }
            let admission = self.inner.audit.admission(&recipient);
            policy::check_reader(&recipient, admission.as_ref(), (self.inner.clock)())?;
            // Read-only roles never touch key material, recovered keys included.
            if let Some(a) = admission.filter(|a| a.role.is_read_only()) {
                return Err(KmsError::WrongRole {
                    role: a.role.to_string(),
                    action: "receive recovered keys",
                });
            }
            let rec = RecoveryRecord {
                recovery_id: random_id("r")?,
                key_id: key_id.to_owned(),
                recipient,
                nonce: crypto::random::<32>()?,
                approvals: Vec::new(),
                completed: false,
            };
            let mut txn = self.begin_write()?;
            Self::put(&mut txn, Table::Recoveries, &rec.recovery_id, &rec)?;
            Ok(Decided {
                value: rec,
                version: Some(pkg.key_version),
                txn: Some(txn),
            })
        })();
        self.finish(base, decided).await
    }

    pub fn recovery(&self, recovery_id: &str) -> Result<RecoveryRecord> {
        self.read(Table::Recoveries, recovery_id)?
            .ok_or_else(|| KmsError::UnknownRecovery(recovery_id.to_owned()))
    }

    /// A recovery as `caller` may see it: its recipient, the key's owner
    /// and the escrow's own trustees (who need its nonce to sign). A
    /// trustee of other escrows is refused.
    pub fn recovery_for(&self, caller: &Caller, recovery_id: &str) -> Result<RecoveryRecord> {
        let rec = self.recovery(recovery_id)?;
        if rec.recipient == caller.account || self.escrow_package(caller, &rec.key_id).is_ok() {
            Ok(rec)
        } else {
            Err(KmsError::NotRecipient(rec.recovery_id))
        }
    }

    /// A trustee approves a recovery with its share and a signature over
    /// (recovery id, key id, recipient, nonce, share hash). Returns the
    /// number of approvals so far.
    pub async fn approve_recovery(
        &self,
        caller: &Caller,
        recovery_id: &str,
        share: &[u8],
        signature: &[u8],
    ) -> Result<usize> {
        let key_id = self
            .recovery(recovery_id)
            .map(|r| r.key_id)
            .unwrap_or_default();
        let hash = request_hash(&[b"approve-recovery", recovery_id.as_bytes(), signature]);
        let base = self.base(caller, "approve-recovery", &key_id, None, hash);
        let _w = self.inner.writer.lock().await;
        let decided = (|| {
            policy::check_trustee_role(caller)?;
            let mut txn = self.begin_write()?;
            let mut rec: RecoveryRecord = Self::get(&txn, Table::Recoveries, recovery_id)?
                .ok_or_else(|| KmsError::UnknownRecovery(recovery_id.to_owned()))?;
            let pkg: EscrowPackage = Self::get(&txn, Table::Escrows, &rec.key_id)?
                .ok_or_else(|| KmsError::UnknownEscrow(rec.key_id.clone()))?;
            if pkg.trustee_index(&caller.account).is_none() {
                return Err(KmsError::NotTrustee(hex::encode(caller.account)));
            }
            rec.check_new_approval(&caller.account)?;
            escrow::verify_approval(
                &caller.account,
                signature,
                recovery_id,
                &rec.key_id,
                &rec.recipient,
                &rec.nonce,
                share,
            )?;
            pkg.verify_share(share)?;
            let sealed =
                crypto::seal_random_nonce(&self.inner.root, recovery_id.as_bytes(), share)?;
            rec.approvals.push((caller.account, sealed));
            let n = rec.approvals.len();
            Self::put(&mut txn, Table::Recoveries, recovery_id, &rec)?;
            Ok(Decided {
                value: n,
                version: Some(pkg.key_version),
                txn: Some(txn),
            })
        })();
        self.finish(base, decided).await
    }

    /// Releases the recovered key to the recipient named by the recovery,
    /// once enough trustees approved.
    pub async fn recover(&self, caller: &Caller, recovery_id: &str) -> Result<SecretBytes> {
        let key_id = self
            .recovery(recovery_id)
            .map(|r| r.key_id)
            .unwrap_or_default();
        let base = self.base(
            caller,
            "recover",
            &key_id,
            None,
            request_hash(&[b"recover", recovery_id.as_bytes()]),
        );
        let _w = self.inner.writer.lock().await;
        let decided = (|| {
            policy::check_key_user_role(caller, "receive recovered keys")?;
            let mut txn = self.begin_write()?;
            let mut rec: RecoveryRecord = Self::get(&txn, Table::Recoveries, recovery_id)?
                .ok_or_else(|| KmsError::UnknownRecovery(recovery_id.to_owned()))?;
            if rec.recipient != caller.account {
                return Err(KmsError::NotRecipient(recovery_id.to_owned()));
            }
            if rec.completed {
                return Err(KmsError::RecoveryCompleted(recovery_id.to_owned()));
            }
            let pkg: EscrowPackage = Self::get(&txn, Table::Escrows, &rec.key_id)?
                .ok_or_else(|| KmsError::UnknownEscrow(rec.key_id.clone()))?;
            if rec.approvals.len() < pkg.threshold as usize {
                return Err(KmsError::RecoveryIncomplete {
                    recovery_id: recovery_id.to_owned(),
                    approvals: rec.approvals.len(),
                    threshold: pkg.threshold as usize,
                });
            }
            let shares = rec
                .approvals
                .iter()
                .map(|(_, sealed)| {
                    crypto::open_random_nonce(&self.inner.root, recovery_id.as_bytes(), sealed)
                })
                .collect::<Result<Vec<_>>>()?;
            let refs: Vec<&[u8]> = shares.iter().map(|s| s.expose()).collect();
            let key = pkg.recover(&refs)?;
            rec.completed = true;
            // The shares have done their job; do not keep them.
            rec.approvals.clear();
            Self::put(&mut txn, Table::Recoveries, recovery_id, &rec)?;
            Ok(Decided {
                value: key,
                version: Some(pkg.key_version),
                txn: Some(txn),
            })
        })();
        self.finish(base, decided).await
    }

    // ------------------------------------------------------------- ZK keys

    /// The owner reads a BN254 key's elements and its Poseidon commitment
    /// (the commitment is what gets anchored on the ledger).
    pub async fn zk_key(&self, caller: &Caller, key_id: &str) -> Result<ZkKey> {
        let base = self.base(
            caller,
            "zk-key",
            key_id,
            None,
            request_hash(&[b"zk-key", key_id.as_bytes()]),
        );
        let decided = (|| {
            let k = self.cached(key_id)?;
            policy::check_key_user_role(caller, "use keys")?;
            k.record.check_owner(caller)?;
            k.record.check_alive()?;
            if k.record.kind != KeyKind::Bn254Poseidon {
                return Err(KmsError::WrongKeyKind {
                    key_id: key_id.to_owned(),
                    kind: k.record.kind.as_str(),
                });
            }
            let version = k.record.latest();
            let elements = k.material[version as usize - 1].clone();
            let commitment = crate::zk::commitment(elements.expose())?;
            Ok(Decided::read(
                ZkKey {
                    elements,
                    commitment,
                },
                Some(version),
            ))
        })();
        self.finish(base, decided).await
    }
}

fn master(k: &CachedKey, version: u32) -> Result<Key32> {
    let m = k
        .material
        .get(version as usize - 1)
        .ok_or_else(|| KmsError::UnknownVersion {
            key_id: k.record.key_id.clone(),
            version,
        })?;
    Key32::from_slice(m.expose())
        .ok_or_else(|| KmsError::Corrupt("AES key material is not 32 bytes".into()))
}

fn new_material(kind: KeyKind) -> Result<SecretBytes> {
    match kind {
        KeyKind::Aes256Gcm => Ok(crypto::random_key()?.into()),
        KeyKind::Bn254Poseidon => crate::zk::random_elements(),
    }
}
