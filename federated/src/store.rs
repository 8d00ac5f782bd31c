//! Durable coordinator state in redb: one record per task, rewritten in one
//! transaction after every event, so a coordinator killed at any point
//! reopens to a state in which every counted update is counted once.
//! Evaluations live in their own table, so training records keep their layout.

use std::path::Path;

use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use serde::{Serialize, de::DeserializeOwned};

use crate::{EvaluationState, FlError, TaskState};

const TASKS: TableDefinition<'_, &str, &[u8]> = TableDefinition::new("fl_tasks");
const EVALUATIONS: TableDefinition<'_, &str, &[u8]> = TableDefinition::new("fl_evaluations");
/// Persisted record layout version (first two bytes, little-endian).
// 2: secure aggregation, DP, ledger outbox and buffered aggregation in the task state.
const STATE_VERSION: u16 = 2;

/// The coordinator's task store.
pub struct Store {
    db: Database,
}

impl Store {
    /// Opens (or creates) the store at `path`.
    pub fn open(path: &Path) -> Result<Self, FlError> {
        let db = Database::create(path)?;
        let txn = db.begin_write()?;
        txn.open_table(TASKS)?;
        txn.open_table(EVALUATIONS)?;
        txn.commit()?;
        Ok(Self { db })
    }

    /// Saves a task's state, replacing the previous one atomically.
    pub fn save(&self, state: &TaskState) -> Result<(), FlError> {
        self.put(TASKS, &state.task.id, state)
    }

    pub fn load(&self, task_id: &str) -> Result<Option<TaskState>, FlError> {
        self.get(TASKS, task_id)
    }

    /// Ids of every stored training task.
    pub fn task_ids(&self) -> Result<Vec<String>, FlError> {
        self.ids(TASKS)
    }

    /// Saves an evaluation's state, replacing the previous one atomically.
    pub fn save_evaluation(&self, state: &EvaluationState) -> Result<(), FlError> {
        self.put(EVALUATIONS, &state.task.id, state)
    }

    pub fn load_evaluation(&self, task_id: &str) -> Result<Option<EvaluationState>, FlError> {
        self.get(EVALUATIONS, task_id)
    }

    /// Ids of every stored evaluation.
    pub fn evaluation_ids(&self) -> Result<Vec<String>, FlError> {
        self.ids(EVALUATIONS)
    }

    fn put<T: Serialize>(
        &self,
        table: TableDefinition<'_, &str, &[u8]>,
        id: &str,
        state: &T,
    ) -> Result<(), FlError> {
        let mut bytes = STATE_VERSION.to_le_bytes().to_vec();
        bytes.extend(postcard::to_stdvec(state)?);
        let txn = self.db.begin_write()?;
        {
            let mut table = txn.open_table(table)?;
            table.insert(id, bytes.as_slice())?;
        }
        txn.commit()?;
        Ok(())
    }

    fn get<T: DeserializeOwned>(
        &self,
        table: TableDefinition<'_, &str, &[u8]>,
        id: &str,
    ) -> Result<Option<T>, FlError> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(table)?;
        let Some(guard) = table.get(id)? else {
            return Ok(None);
        };
        decode(guard.value()).map(Some)
    }

    fn ids(&self, table: TableDefinition<'_, &str, &[u8]>) -> Result<Vec<String>, FlError> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(table)?;
        let mut ids = Vec::new();
        for entry in table.iter()? {
            ids.push(entry?.0.value().to_owned());
        }
        Ok(ids)
    }
}

fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, FlError> {
    let (version, body) = bytes
        .split_at_checked(2)
        .ok_or(FlError::Store("truncated task record".into()))?;
    let version = u16::from_le_bytes([version[0], version[1]]);
    if version != STATE_VERSION {
        return Err(FlError::Store(format!(
            "task record version {version} is not supported"
        )));
    }
    Ok(postcard::from_bytes(body)?)
}
