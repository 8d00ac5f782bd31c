//! The ZK service's durable state (`zk.redb`): registered records with the
//! cipher keys that prove about them, and registered sets.
//!
//! Keys sit in their own table so a record read for its public parts never
//! copies key material. They are stored as the holder gave them (the redb
//! file must be protected like the KMS's); in-memory copies are zeroized.

use std::path::Path;

use ark_bn254::Fr;
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use crate::record::{CipherKey, EncryptedRecord};
use crate::{Result, ZkError, fr_from_bytes, fr_to_bytes};

/// Record id -> [`StoredRecord`] as JSON.
const RECORDS: TableDefinition<'_, &str, &[u8]> = TableDefinition::new("records");
/// Record id -> the 64-byte cipher key.
const RECORD_KEYS: TableDefinition<'_, &str, &[u8]> = TableDefinition::new("record-keys");
/// Set root -> members, 32-byte little-endian each, concatenated.
const SETS: TableDefinition<'_, &[u8; 32], &[u8]> = TableDefinition::new("sets");

/// A registered record: who holds it and which ledger anchor it matched.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct StoredRecord {
    #[serde(with = "hex::serde")]
    pub holder: [u8; 32],
    pub anchor_index: u64,
    pub record: EncryptedRecord,
}

pub(crate) struct Store {
    db: Database,
}

fn key_bytes(key: &CipherKey) -> Zeroizing<Vec<u8>> {
    let mut out = Zeroizing::new(Vec::with_capacity(64));
    for e in key.elements() {
        out.extend_from_slice(Zeroizing::new(fr_to_bytes(e)).as_slice());
    }
    out
}

impl Store {
    pub fn open(path: &Path) -> Result<Store> {
        let db = Database::create(path)?;
        let txn = db.begin_write()?;
        txn.open_table(RECORDS)?;
        txn.open_table(RECORD_KEYS)?;
        txn.open_table(SETS)?;
        txn.commit()?;
        Ok(Store { db })
    }

    /// The record and its key, if registered.
    pub fn record(&self, record_id: &str) -> Result<Option<(StoredRecord, CipherKey)>> {
        let rtx = self.db.begin_read()?;
        let Some(value) = rtx.open_table(RECORDS)?.get(record_id)? else {
            return Ok(None);
        };
        let stored: StoredRecord = serde_json::from_slice(value.value())
            .map_err(|e| ZkError::Corrupt(format!("record {record_id:?}: {e}")))?;
        let keys = rtx.open_table(RECORD_KEYS)?;
        let key = keys
            .get(record_id)?
            .ok_or_else(|| ZkError::Corrupt(format!("record {record_id:?} has no key")))?;
        let bytes = Zeroizing::new(key.value().to_vec());
        let key = CipherKey::from_kms_bytes(&bytes)
            .map_err(|_| ZkError::Corrupt(format!("key of record {record_id:?}")))?;
        Ok(Some((stored, key)))
    }

    /// Stores (or replaces) a record and its key in one transaction; refuses
    /// a record id registered by another holder. Returns true on replacement.
    pub fn put_record(&self, stored: &StoredRecord, key: &CipherKey) -> Result<bool> {
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
        txn.open_table(RECORDS)?.insert(id, json.as_slice())?;
        txn.open_table(RECORD_KEYS)?
            .insert(id, key_bytes(key).as_slice())?;
        txn.commit()?;
        Ok(previous.is_some())
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
