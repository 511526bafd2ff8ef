//! The Raft log and vote on redb (`DATA/raft/log.redb`).
//!
//! Tables: `entries`: log index (u64) -> bincode `Entry`; `state`: `vote`, `committed`,
//! `last_purged` -> bincode values.
//!
//! Invariants:
//! - an append, a vote, a truncation or a purge is fsynced (redb `Durability::Immediate`) before
//!   openraft is told it happened: an acknowledged entry is on disk. The committed index is not
//!   (openraft may lose it), it is persisted by the next fsync;
//! - entries are contiguous from `last_purged + 1` to the last index.

use std::fmt::Debug;
use std::ops::RangeBounds;
use std::path::Path;
use std::sync::Arc;

use openraft::storage::{LogFlushed, RaftLogStorage};
use openraft::{
    AnyError, Entry, LogId, LogState, OptionalSend, RaftLogReader, StorageError, StorageIOError,
    Vote,
};
use redb::{Database, Durability, ReadableDatabase, ReadableTable, TableDefinition};

use super::{NodeId, TypeConfig};

const ENTRIES: TableDefinition<u64, &[u8]> = TableDefinition::new("entries");
const STATE: TableDefinition<&str, &[u8]> = TableDefinition::new("state");
const VOTE: &str = "vote";
const COMMITTED: &str = "committed";
const LAST_PURGED: &str = "last_purged";

/// redb's page cache for the log (its default is 1 GiB).
const LOG_CACHE_BYTES: usize = 32 * 1024 * 1024;

type StoreResult<T> = Result<T, StorageError<NodeId>>;

fn read_error(error: impl std::error::Error + 'static) -> StorageError<NodeId> {
    StorageIOError::read_logs(AnyError::new(&error)).into()
}

fn write_error(error: impl std::error::Error + 'static) -> StorageError<NodeId> {
    StorageIOError::write_logs(AnyError::new(&error)).into()
}

/// The log store; cheap to clone (the reader openraft asks for is a clone).
#[derive(Clone)]
pub struct LogStore {
    db: Arc<Database>,
}

impl LogStore {
    pub fn open(path: &Path) -> Result<Self, redb::Error> {
        // The log is read back mostly at its tail (replication) and on restart: a small cache.
        let db = Database::builder()
            .set_cache_size(LOG_CACHE_BYTES)
            .create(path)?;
        let txn = db.begin_write()?;
        txn.open_table(ENTRIES)?;
        txn.open_table(STATE)?;
        txn.commit()?;
        Ok(LogStore { db: Arc::new(db) })
    }

    fn read_state<T: serde::de::DeserializeOwned>(&self, name: &str) -> StoreResult<Option<T>> {
        let txn = self.db.begin_read().map_err(read_error)?;
        let table = txn.open_table(STATE).map_err(read_error)?;
        match table.get(name).map_err(read_error)? {
            Some(bytes) => Ok(Some(
                bincode::deserialize(bytes.value()).map_err(read_error)?,
            )),
            None => Ok(None),
        }
    }

    /// Runs `write` in one write transaction, off the async threads (it fsyncs unless
    /// `durability` says otherwise).
    async fn write<F>(&self, durability: Durability, write: F) -> StoreResult<()>
    where
        F: FnOnce(&redb::WriteTransaction) -> Result<(), redb::Error> + Send + 'static,
    {
        let db = self.db.clone();
        tokio::task::spawn_blocking(move || {
            let mut txn = db.begin_write()?;
            txn.set_durability(durability)?;
            write(&txn)?;
            txn.commit()?;
            Ok::<_, redb::Error>(())
        })
        .await
        .map_err(write_error)?
        .map_err(write_error)
    }

    async fn write_state<T: serde::Serialize>(
        &self,
        name: &'static str,
        value: &T,
        durability: Durability,
    ) -> StoreResult<()> {
        let bytes = bincode::serialize(value).map_err(write_error)?;
        self.write(durability, move |txn| {
            txn.open_table(STATE)?.insert(name, bytes.as_slice())?;
            Ok(())
        })
        .await
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> StoreResult<Vec<Entry<TypeConfig>>> {
        let db = self.db.clone();
        let bounds = (range.start_bound().cloned(), range.end_bound().cloned());
        tokio::task::spawn_blocking(move || {
            let txn = db.begin_read().map_err(read_error)?;
            let table = txn.open_table(ENTRIES).map_err(read_error)?;
            let mut entries = Vec::new();
            for row in table.range::<u64>(bounds).map_err(read_error)? {
                let (_, bytes) = row.map_err(read_error)?;
                entries.push(bincode::deserialize(bytes.value()).map_err(read_error)?);
            }
            Ok(entries)
        })
        .await
        .map_err(read_error)?
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> StoreResult<LogState<TypeConfig>> {
        let last_purged: Option<LogId<NodeId>> = self.read_state(LAST_PURGED)?;
        let txn = self.db.begin_read().map_err(read_error)?;
        let table = txn.open_table(ENTRIES).map_err(read_error)?;
        let last = match table.last().map_err(read_error)? {
            Some((_, bytes)) => {
                let entry: Entry<TypeConfig> =
                    bincode::deserialize(bytes.value()).map_err(read_error)?;
                Some(entry.log_id)
            }
            None => last_purged,
        };
        Ok(LogState {
            last_purged_log_id: last_purged,
            last_log_id: last,
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<NodeId>) -> StoreResult<()> {
        self.write_state(VOTE, vote, Durability::Immediate)
            .await
            .map_err(|e| match e {
                StorageError::IO { source } => {
                    StorageIOError::write_vote(AnyError::new(&source)).into()
                }
                other => other,
            })
    }

    async fn read_vote(&mut self) -> StoreResult<Option<Vote<NodeId>>> {
        self.read_state(VOTE)
    }

    async fn save_committed(&mut self, committed: Option<LogId<NodeId>>) -> StoreResult<()> {
        // openraft allows the committed index to be lost (it is re-learnt from the leader); it
        // only saves re-applying on restart, so it rides along with the next fsync.
        self.write_state(COMMITTED, &committed, Durability::None)
            .await
    }

    async fn read_committed(&mut self) -> StoreResult<Option<LogId<NodeId>>> {
        Ok(self
            .read_state::<Option<LogId<NodeId>>>(COMMITTED)?
            .flatten())
    }

    async fn append<I>(&mut self, entries: I, callback: LogFlushed<TypeConfig>) -> StoreResult<()>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut encoded = Vec::new();
        for entry in entries {
            encoded.push((
                entry.log_id.index,
                bincode::serialize(&entry).map_err(write_error)?,
            ));
        }
        let result = self
            .write(Durability::Immediate, move |txn| {
                let mut table = txn.open_table(ENTRIES)?;
                for (index, bytes) in &encoded {
                    table.insert(*index, bytes.as_slice())?;
                }
                Ok(())
            })
            .await;
        // Only a durable append is reported as flushed.
        callback.log_io_completed(
            result
                .as_ref()
                .map(|_| ())
                .map_err(|e| std::io::Error::other(e.to_string())),
        );
        result
    }

    async fn truncate(&mut self, log_id: LogId<NodeId>) -> StoreResult<()> {
        self.write(Durability::Immediate, move |txn| {
            let mut table = txn.open_table(ENTRIES)?;
            table.retain_in(log_id.index.., |_, _| false)?;
            Ok(())
        })
        .await
    }

    async fn purge(&mut self, log_id: LogId<NodeId>) -> StoreResult<()> {
        let bytes = bincode::serialize(&log_id).map_err(write_error)?;
        self.write(Durability::Immediate, move |txn| {
            txn.open_table(STATE)?
                .insert(LAST_PURGED, bytes.as_slice())?;
            let mut table = txn.open_table(ENTRIES)?;
            table.retain_in(..=log_id.index, |_, _| false)?;
            Ok(())
        })
        .await
    }
}
