//! Where the KMS keeps its records: a [`KeyStore`] of named tables of
//! postcard bytes, with all-or-nothing write transactions that are durable
//! when their commit returns. The engine ([`crate::kms`]) keeps a write
//! transaction open while the operation's audit record reaches the ledger
//! and commits it only afterwards, so a store must let a transaction be
//! held across an `await` and dropped to abort.
//!
//! [`RedbKeyStore`] is the node's store; [`MemKeyStore`] keeps everything
//! in memory, for tools and tests that need no disk. [`conformance`] is the
//! suite any implementation must pass, run below against both (as openraft
//! tests its storage implementations).

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, Mutex};

use redb::{Database, Durability, ReadableDatabase, ReadableTable, TableDefinition};

use crate::error::{KmsError, Result};

/// The tables of the KMS store; each maps an id to one encoded record.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[non_exhaustive]
pub enum Table {
    /// The sealed root-key check.
    Meta,
    /// Key records, with each version's material sealed under the root key.
    Keys,
    Grants,
    Escrows,
    Recoveries,
}

impl Table {
    pub const ALL: [Table; 5] = [
        Table::Meta,
        Table::Keys,
        Table::Grants,
        Table::Escrows,
        Table::Recoveries,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Table::Meta => "meta",
            Table::Keys => "keys",
            Table::Grants => "grants",
            Table::Escrows => "escrows",
            Table::Recoveries => "recoveries",
        }
    }
}

/// A durable, transactional home for the KMS's records.
pub trait KeyStore: Send + Sync + 'static {
    type Write: StoreWrite;

    /// Starts a write transaction. The engine runs one at a time.
    fn write(&self) -> Result<Self::Write>;

    /// The committed value of `id` in `table`.
    fn get(&self, table: Table, id: &str) -> Result<Option<Vec<u8>>>;

    /// Every committed row of `table`, in ascending order of id.
    fn scan(&self, table: Table) -> Result<Vec<(String, Vec<u8>)>>;
}

/// A write transaction: it sees its own changes, nobody else sees them
/// before [`StoreWrite::commit`], and dropping it discards them all.
pub trait StoreWrite: Send + 'static {
    fn get(&self, table: Table, id: &str) -> Result<Option<Vec<u8>>>;

    /// Every row of `table` as this transaction sees it, in ascending order of id.
    fn scan(&self, table: Table) -> Result<Vec<(String, Vec<u8>)>>;

    fn put(&mut self, table: Table, id: &str, value: &[u8]) -> Result<()>;

    /// Removes `id`; returns whether it was there.
    fn remove(&mut self, table: Table, id: &str) -> Result<bool>;

    /// Makes every change visible at once, and durable (synced) before it returns.
    fn commit(self) -> Result<()>;
}

fn definition(table: Table) -> TableDefinition<'static, &'static str, &'static [u8]> {
    TableDefinition::new(table.name())
}

/// The node's store: one redb file, every commit synced.
pub struct RedbKeyStore {
    db: Database,
}

impl RedbKeyStore {
    /// Opens (or creates) the store file at `path`, with all its tables.
    pub fn open(path: &Path) -> Result<Self> {
        let db = Database::create(path)?;
        let txn = db.begin_write()?;
        for t in Table::ALL {
            txn.open_table(definition(t))?;
        }
        txn.commit()?;
        Ok(RedbKeyStore { db })
    }
}

/// A redb write transaction with immediate durability.
///
/// Every KMS write must be durable when its commit returns: a grant use that
/// released key material must survive a restart (or the grant could be
/// spent again), and key versions are the only copy of the material. Redb's
/// `Durability::None` would defer that to a later commit, so it is never
/// used here.
pub struct RedbWrite(redb::WriteTransaction);

impl KeyStore for RedbKeyStore {
    type Write = RedbWrite;

    fn write(&self) -> Result<RedbWrite> {
        let mut txn = self.db.begin_write()?;
        txn.set_durability(Durability::Immediate)
            .map_err(|e| KmsError::Storage(e.to_string()))?;
        Ok(RedbWrite(txn))
    }

    fn get(&self, table: Table, id: &str) -> Result<Option<Vec<u8>>> {
        let r = self.db.begin_read()?;
        let t = r.open_table(definition(table))?;
        Ok(t.get(id)?.map(|v| v.value().to_vec()))
    }

    fn scan(&self, table: Table) -> Result<Vec<(String, Vec<u8>)>> {
        let r = self.db.begin_read()?;
        let t = r.open_table(definition(table))?;
        collect(t.iter()?)
    }
}

fn collect<'a>(
    rows: impl Iterator<
        Item = std::result::Result<
            (
                redb::AccessGuard<'a, &'static str>,
                redb::AccessGuard<'a, &'static [u8]>,
            ),
            redb::StorageError,
        >,
    >,
) -> Result<Vec<(String, Vec<u8>)>> {
    rows.map(|row| {
        let (k, v) = row?;
        Ok((k.value().to_owned(), v.value().to_vec()))
    })
    .collect()
}

impl StoreWrite for RedbWrite {
    fn get(&self, table: Table, id: &str) -> Result<Option<Vec<u8>>> {
        let t = self.0.open_table(definition(table))?;
        Ok(t.get(id)?.map(|v| v.value().to_vec()))
    }

    fn scan(&self, table: Table) -> Result<Vec<(String, Vec<u8>)>> {
        let t = self.0.open_table(definition(table))?;
        collect(t.iter()?)
    }

    fn put(&mut self, table: Table, id: &str, value: &[u8]) -> Result<()> {
        self.0.open_table(definition(table))?.insert(id, value)?;
        Ok(())
    }

    fn remove(&mut self, table: Table, id: &str) -> Result<bool> {
        Ok(self.0.open_table(definition(table))?.remove(id)?.is_some())
    }

    fn commit(self) -> Result<()> {
        Ok(self.0.commit()?)
    }
}

type Rows = BTreeMap<(Table, String), Vec<u8>>;

/// Everything in memory and lost with the process: for tools and tests
/// without a disk. A write works on a copy of all rows, which its commit
/// puts in place.
#[derive(Clone, Default)]
pub struct MemKeyStore {
    rows: Arc<Mutex<Arc<Rows>>>,
}

pub struct MemWrite {
    store: Arc<Mutex<Arc<Rows>>>,
    rows: Rows,
}

fn table_rows(rows: &Rows, table: Table) -> Vec<(String, Vec<u8>)> {
    rows.iter()
        .filter(|((t, _), _)| *t == table)
        .map(|((_, id), v)| (id.clone(), v.clone()))
        .collect()
}

impl MemKeyStore {
    fn snapshot(&self) -> Arc<Rows> {
        self.rows.lock().expect("store lock").clone()
    }
}

impl KeyStore for MemKeyStore {
    type Write = MemWrite;

    fn write(&self) -> Result<MemWrite> {
        Ok(MemWrite {
            store: self.rows.clone(),
            rows: (*self.snapshot()).clone(),
        })
    }

    fn get(&self, table: Table, id: &str) -> Result<Option<Vec<u8>>> {
        Ok(self.snapshot().get(&(table, id.to_owned())).cloned())
    }

    fn scan(&self, table: Table) -> Result<Vec<(String, Vec<u8>)>> {
        Ok(table_rows(&self.snapshot(), table))
    }
}

impl StoreWrite for MemWrite {
    fn get(&self, table: Table, id: &str) -> Result<Option<Vec<u8>>> {
        Ok(self.rows.get(&(table, id.to_owned())).cloned())
    }

    fn scan(&self, table: Table) -> Result<Vec<(String, Vec<u8>)>> {
        Ok(table_rows(&self.rows, table))
    }

    fn put(&mut self, table: Table, id: &str, value: &[u8]) -> Result<()> {
        self.rows.insert((table, id.to_owned()), value.to_vec());
        Ok(())
    }

    fn remove(&mut self, table: Table, id: &str) -> Result<bool> {
        Ok(self.rows.remove(&(table, id.to_owned())).is_some())
    }

    fn commit(self) -> Result<()> {
        *self.store.lock().expect("store lock") = Arc::new(self.rows);
        Ok(())
    }
}

/// The behaviour every [`KeyStore`] must have. Each check panics with what
/// went wrong; an implementation's tests call [`conformance::run`] with a
/// function that makes an empty store, and [`conformance::durability`]
/// with one that opens the same persistent store again each time.
pub mod conformance {
    use super::*;

    fn rows(pairs: &[(&str, &[u8])]) -> Vec<(String, Vec<u8>)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_vec()))
            .collect()
    }

    /// Runs every check that needs only a fresh, empty store.
    pub fn run<S: KeyStore>(fresh: impl Fn() -> S) {
        starts_empty(&fresh());
        commit_makes_all_changes_visible_at_once(&fresh());
        a_dropped_write_changes_nothing(&fresh());
        a_write_sees_its_own_changes(&fresh());
        tables_are_separate(&fresh());
        scans_are_ordered_by_id(&fresh());
        remove_says_whether_the_row_was_there(&fresh());
    }

    pub fn starts_empty<S: KeyStore>(s: &S) {
        for t in Table::ALL {
            assert_eq!(s.get(t, "x").unwrap(), None, "{t:?} of a new store");
            assert!(s.scan(t).unwrap().is_empty(), "{t:?} of a new store");
        }
    }

    pub fn commit_makes_all_changes_visible_at_once<S: KeyStore>(s: &S) {
        let mut w = s.write().unwrap();
        w.put(Table::Keys, "k", b"key").unwrap();
        w.put(Table::Grants, "g", b"grant").unwrap();
        assert_eq!(s.get(Table::Keys, "k").unwrap(), None, "seen before commit");
        assert!(
            s.scan(Table::Grants).unwrap().is_empty(),
            "seen before commit"
        );
        w.commit().unwrap();
        assert_eq!(
            s.get(Table::Keys, "k").unwrap().as_deref(),
            Some(&b"key"[..])
        );
        assert_eq!(s.scan(Table::Grants).unwrap(), rows(&[("g", b"grant")]));
        let mut w = s.write().unwrap();
        w.put(Table::Keys, "k", b"key v2").unwrap();
        w.commit().unwrap();
        assert_eq!(
            s.get(Table::Keys, "k").unwrap().as_deref(),
            Some(&b"key v2"[..]),
            "an overwrite"
        );
    }

    pub fn a_dropped_write_changes_nothing<S: KeyStore>(s: &S) {
        let mut w = s.write().unwrap();
        w.put(Table::Grants, "g", b"unused").unwrap();
        w.put(Table::Escrows, "e", b"package").unwrap();
        w.commit().unwrap();
        let mut w = s.write().unwrap();
        w.put(Table::Grants, "g", b"used once").unwrap();
        w.put(Table::Keys, "new", b"k").unwrap();
        assert!(w.remove(Table::Escrows, "e").unwrap());
        drop(w);
        assert_eq!(
            s.get(Table::Grants, "g").unwrap().as_deref(),
            Some(&b"unused"[..])
        );
        assert_eq!(s.get(Table::Keys, "new").unwrap(), None);
        assert_eq!(s.scan(Table::Escrows).unwrap(), rows(&[("e", b"package")]));
        // The store still takes writes after an abort.
        let mut w = s.write().unwrap();
        w.put(Table::Keys, "after", b"k").unwrap();
        w.commit().unwrap();
        assert!(s.get(Table::Keys, "after").unwrap().is_some());
    }

    pub fn a_write_sees_its_own_changes<S: KeyStore>(s: &S) {
        let mut w = s.write().unwrap();
        w.put(Table::Recoveries, "r1", b"open").unwrap();
        w.put(Table::Recoveries, "r2", b"open").unwrap();
        assert_eq!(
            w.get(Table::Recoveries, "r1").unwrap().as_deref(),
            Some(&b"open"[..])
        );
        assert!(w.remove(Table::Recoveries, "r1").unwrap());
        assert_eq!(w.get(Table::Recoveries, "r1").unwrap(), None);
        assert_eq!(w.scan(Table::Recoveries).unwrap(), rows(&[("r2", b"open")]));
        w.commit().unwrap();
        assert_eq!(s.scan(Table::Recoveries).unwrap(), rows(&[("r2", b"open")]));
    }

    pub fn tables_are_separate<S: KeyStore>(s: &S) {
        let mut w = s.write().unwrap();
        for t in Table::ALL {
            w.put(t, "same-id", t.name().as_bytes()).unwrap();
        }
        w.commit().unwrap();
        for t in Table::ALL {
            assert_eq!(
                s.get(t, "same-id").unwrap().as_deref(),
                Some(t.name().as_bytes())
            );
            assert_eq!(s.scan(t).unwrap().len(), 1, "{t:?}");
        }
    }

    pub fn scans_are_ordered_by_id<S: KeyStore>(s: &S) {
        let mut w = s.write().unwrap();
        for id in ["b", "a", "c:1", "c", "A"] {
            w.put(Table::Grants, id, id.as_bytes()).unwrap();
        }
        let ids = |r: Vec<(String, Vec<u8>)>| r.into_iter().map(|(k, _)| k).collect::<Vec<_>>();
        let want = ["A", "a", "b", "c", "c:1"];
        assert_eq!(ids(w.scan(Table::Grants).unwrap()), want);
        w.commit().unwrap();
        assert_eq!(ids(s.scan(Table::Grants).unwrap()), want);
    }

    pub fn remove_says_whether_the_row_was_there<S: KeyStore>(s: &S) {
        let mut w = s.write().unwrap();
        w.put(Table::Escrows, "e", b"p").unwrap();
        w.commit().unwrap();
        let mut w = s.write().unwrap();
        assert!(w.remove(Table::Escrows, "e").unwrap());
        assert!(!w.remove(Table::Escrows, "e").unwrap());
        assert!(!w.remove(Table::Escrows, "never").unwrap());
        w.commit().unwrap();
        assert_eq!(s.get(Table::Escrows, "e").unwrap(), None);
    }

    /// Committed rows survive reopening; a write dropped before its commit
    /// leaves nothing behind. `open` must open the same store every time.
    pub fn durability<S: KeyStore>(open: impl Fn() -> S) {
        {
            let s = open();
            let mut w = s.write().unwrap();
            w.put(Table::Keys, "k", b"material").unwrap();
            w.put(Table::Grants, "g", b"1 use").unwrap();
            w.commit().unwrap();
            let mut w = s.write().unwrap();
            w.put(Table::Grants, "g", b"0 uses").unwrap();
            w.put(Table::Keys, "lost", b"x").unwrap();
            drop(w);
        }
        let s = open();
        assert_eq!(
            s.get(Table::Keys, "k").unwrap().as_deref(),
            Some(&b"material"[..])
        );
        assert_eq!(
            s.get(Table::Grants, "g").unwrap().as_deref(),
            Some(&b"1 use"[..])
        );
        assert_eq!(s.get(Table::Keys, "lost").unwrap(), None);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redb_store_conforms() {
        let dir = tempfile::tempdir().unwrap();
        let n = std::sync::atomic::AtomicU32::new(0);
        conformance::run(|| {
            let i = n.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            RedbKeyStore::open(&dir.path().join(format!("kms-{i}.redb"))).unwrap()
        });
        let path = dir.path().join("durable.redb");
        conformance::durability(|| RedbKeyStore::open(&path).unwrap());
    }

    #[test]
    fn memory_store_conforms() {
        conformance::run(MemKeyStore::default);
    }
}
