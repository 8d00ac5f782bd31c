//! The ZK service's durable state (`zk.redb`): registered records with the
//! cipher keys that prove about them, and registered sets.
//!
//! Record keys are never stored in plaintext: each is a KMS envelope, sealed
//! under a master key of its holder's (see [`crate::service`]), so the file
//! alone decrypts nothing; the KMS's root key, which t of n operators
//! unseal, is needed too. The envelopes sit in their own table so a record
//! read for its public parts never copies one. The file is mode 0600.

use std::collections::BTreeMap;
use std::path::Path;

use crate::consent::{Disclosed, QueryGrant};
use crate::record::EncryptedRecord;
use crate::{Result, ZkError, fr_from_bytes, fr_to_bytes};
use ark_bn254::Fr;
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};

/// Record id -> [`StoredRecord`] as JSON.
const RECORDS: TableDefinition<'_, &str, &[u8]> = TableDefinition::new("records");
/// Record id -> the KMS envelope of its 64-byte cipher key.
const SEALED_KEYS: TableDefinition<'_, &str, &[u8]> = TableDefinition::new("sealed-record-keys");
/// Where earlier versions kept cipher keys in plaintext; dropped on open.
const PLAINTEXT_KEYS: TableDefinition<'_, &str, &[u8]> = TableDefinition::new("record-keys");
/// Grant id -> [`QueryGrant`] as JSON.
const GRANTS: TableDefinition<'_, &str, &[u8]> = TableDefinition::new("query-grants");
/// (record id, verifier, field) -> the constants disclosed, JSON.
const DISCLOSED: TableDefinition<'_, (&str, &[u8; 32], &str), &[u8]> =
    TableDefinition::new("disclosed");
/// Digests of the customer consents grants were issued under: each once.
const USED_CONSENTS: TableDefinition<'_, &[u8; 32], ()> = TableDefinition::new("used-consents");
/// Set root -> members, 32-byte little-endian each, concatenated.
const SETS: TableDefinition<'_, &[u8; 32], &[u8]> = TableDefinition::new("sets");

/// A registered record: who holds it and which ledger anchor it matched.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct StoredRecord {
    #[serde(with = "hex::serde")]
    pub holder: [u8; 32],
    pub anchor_index: u64,
    pub record: EncryptedRecord,
    /// The customer whose countersignature every grant needs, if any.
    #[serde(default, with = "customer_hex")]
    pub customer: Option<[u8; 32]>,
}

mod customer_hex {
    use serde::{Deserialize, Deserializer, Serializer};
    pub fn serialize<S: Serializer>(c: &Option<[u8; 32]>, s: S) -> Result<S::Ok, S::Error> {
        match c {
            Some(c) => s.serialize_some(&hex::encode(c)),
            None => s.serialize_none(),
        }
    }
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<[u8; 32]>, D::Error> {
        Option::<String>::deserialize(d)?
            .map(|h| {
                let mut out = [0u8; 32];
                hex::decode_to_slice(h, &mut out).map_err(serde::de::Error::custom)?;
                Ok(out)
            })
            .transpose()
    }
}

/// A record's customer stays with it: re-registering may not drop or
/// change it (the customer's say over its record is not the holder's).
pub(crate) fn keeps_customer(previous: &StoredRecord, customer: Option<[u8; 32]>) -> Result<()> {
    match previous.customer {
        Some(c) if Some(c) != customer => Err(ZkError::BadRequest(format!(
            "customer: record `{}` belongs to customer {}; register it again with the same customer",
            previous.record.record_id,
            hex::encode(c)
        ))),
        _ => Ok(()),
    }
}

pub(crate) struct Store {
    db: Database,
}

impl Store {
    pub fn open(path: &Path) -> Result<Store> {
        if !path.exists() {
            // Owner-only from its first byte, not from a chmod after.
            use std::os::unix::fs::OpenOptionsExt;
            std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(path)?;
        }
        let db = Database::create(path)?;
        restrict(path)?;
        let txn = db.begin_write()?;
        txn.open_table(RECORDS)?;
        txn.open_table(SEALED_KEYS)?;
        txn.open_table(SETS)?;
        txn.open_table(GRANTS)?;
        txn.open_table(DISCLOSED)?;
        let dropped = {
            use redb::ReadableTableMetadata;
            txn.open_table(PLAINTEXT_KEYS)?.len()?
        };
        txn.delete_table(PLAINTEXT_KEYS)?;
        txn.commit()?;
        if dropped > 0 {
            // Deleting frees the pages without wiping them: the keys stay in
            // this file (and its backups) until overwritten.
            tracing::warn!(
                dropped,
                "dropped record keys an earlier version stored in plaintext: treat them as exposed; their holders must re-encrypt, re-anchor and register those records again"
            );
        }
        Ok(Store { db })
    }

    /// The record and its sealed key, if registered.
    pub fn record(&self, record_id: &str) -> Result<Option<(StoredRecord, Vec<u8>)>> {
        let rtx = self.db.begin_read()?;
        let Some(value) = rtx.open_table(RECORDS)?.get(record_id)? else {
            return Ok(None);
        };
        let stored: StoredRecord = serde_json::from_slice(value.value())
            .map_err(|e| ZkError::Corrupt(format!("record {record_id:?}: {e}")))?;
        let sealed = rtx
            .open_table(SEALED_KEYS)?
            .get(record_id)?
            .ok_or_else(|| ZkError::RecordKeyMissing(record_id.to_owned()))?
            .value()
            .to_vec();
        Ok(Some((stored, sealed)))
    }

    /// Stores (or replaces) a record and its sealed key in one transaction;
    /// refuses a record id registered by another holder. Returns true on
    /// replacement.
    pub fn put_record(&self, stored: &StoredRecord, sealed_key: &[u8]) -> Result<bool> {
        let id = stored.record.record_id.as_str();
        let json = serde_json::to_vec(stored).expect("records serialise");
        let txn = self.db.begin_write()?;
        let previous = {
            let records = txn.open_table(RECORDS)?;
            match records.get(id)? {
                Some(v) => Some(
                    serde_json::from_slice::<StoredRecord>(v.value())
                        .map_err(|e| ZkError::Corrupt(format!("record {id:?}: {e}")))?,
                ),
                None => None,
            }
        };
        if let Some(p) = &previous
            && p.holder != stored.holder
        {
            txn.abort()?;
            return Err(ZkError::NotRecordHolder(id.to_owned()));
        }
        if let Some(Err(e)) = previous
            .as_ref()
            .map(|p| keeps_customer(p, stored.customer))
        {
            txn.abort()?;
            return Err(e);
        }
        txn.open_table(RECORDS)?.insert(id, json.as_slice())?;
        txn.open_table(SEALED_KEYS)?.insert(id, sealed_key)?;
        txn.commit()?;
        Ok(previous.is_some())
    }

    pub fn put_grant(&self, grant: &QueryGrant) -> Result<()> {
        let json = serde_json::to_vec(grant).expect("grants serialise");
        let txn = self.db.begin_write()?;
        txn.open_table(GRANTS)?
            .insert(grant.grant_id.as_str(), json.as_slice())?;
        txn.commit()?;
        Ok(())
    }

    /// Marks a customer consent used, durably; false if it already was.
    pub fn claim_consent(&self, digest: &[u8; 32]) -> Result<bool> {
        let txn = self.db.begin_write()?;
        let fresh = txn.open_table(USED_CONSENTS)?.insert(digest, ())?.is_none();
        if fresh {
            txn.commit()?;
        }
        Ok(fresh)
    }

    pub fn grant(&self, grant_id: &str) -> Result<Option<QueryGrant>> {
        let rtx = self.db.begin_read()?;
        let Some(v) = rtx.open_table(GRANTS)?.get(grant_id)? else {
            return Ok(None);
        };
        serde_json::from_slice(v.value())
            .map(Some)
            .map_err(|e| ZkError::Corrupt(format!("grant {grant_id:?}: {e}")))
    }

    /// What `verifier` has learned about each field of the record so far.
    pub fn disclosed(
        &self,
        record_id: &str,
        verifier: &[u8; 32],
    ) -> Result<BTreeMap<String, Disclosed>> {
        let rtx = self.db.begin_read()?;
        let table = rtx.open_table(DISCLOSED)?;
        let mut out = BTreeMap::new();
        for row in table.range((record_id, verifier, "")..)? {
            let (k, v) = row?;
            let (r, who, field) = k.value();
            if r != record_id || who != verifier {
                break;
            }
            let set: Disclosed = serde_json::from_slice(v.value()).map_err(|e| {
                ZkError::Corrupt(format!("disclosure of {record_id:?} {field:?}: {e}"))
            })?;
            out.insert(field.to_owned(), set);
        }
        Ok(out)
    }

    /// Replaces the disclosure of the given fields if nothing changed it
    /// since `before` was read; returns false (and writes nothing) if it
    /// did, so the caller decides again. Durable before it returns.
    pub fn swap_disclosed(
        &self,
        record_id: &str,
        verifier: &[u8; 32],
        before: &BTreeMap<String, Disclosed>,
        after: &BTreeMap<String, Disclosed>,
    ) -> Result<bool> {
        let txn = self.db.begin_write()?;
        {
            let mut table = txn.open_table(DISCLOSED)?;
            for (field, set) in after {
                let key = (record_id, verifier, field.as_str());
                let current: Disclosed = match table.get(key)? {
                    Some(v) => serde_json::from_slice(v.value()).map_err(|e| {
                        ZkError::Corrupt(format!("disclosure of {record_id:?} {field:?}: {e}"))
                    })?,
                    None => Disclosed::new(),
                };
                if before.get(field).cloned().unwrap_or_default() != current {
                    drop(table);
                    txn.abort()?;
                    return Ok(false);
                }
                let json = serde_json::to_vec(set).expect("sets serialise");
                table.insert(key, json.as_slice())?;
            }
        }
        txn.commit()?;
        Ok(true)
    }

    pub fn set_members(&self, root: &[u8; 32]) -> Result<Option<Vec<Fr>>> {
        let rtx = self.db.begin_read()?;
        let Some(value) = rtx.open_table(SETS)?.get(root)? else {
            return Ok(None);
        };
        let bytes = value.value();
        if bytes.len() % 32 != 0 {
            return Err(ZkError::Corrupt(format!("set {}", hex::encode(root))));
        }
        bytes
            .chunks_exact(32)
            .map(|c| {
                fr_from_bytes(c.try_into().expect("32-byte chunk"))
                    .map_err(|_| ZkError::Corrupt(format!("set {}", hex::encode(root))))
            })
            .collect::<Result<Vec<_>>>()
            .map(Some)
    }

    pub fn put_set(&self, root: &[u8; 32], members: &[Fr]) -> Result<()> {
        let mut bytes = Vec::with_capacity(members.len() * 32);
        for m in members {
            bytes.extend_from_slice(&fr_to_bytes(m));
        }
        let txn = self.db.begin_write()?;
        txn.open_table(SETS)?.insert(root, bytes.as_slice())?;
        txn.commit()?;
        Ok(())
    }
}

/// Owner read and write only: the file holds which records exist and whom
/// they belong to, and sealed keys.
fn restrict(path: &Path) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    Ok(())
}
