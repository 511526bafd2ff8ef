//! The Raft log and vote on redb (`DATA/raft/log.redb`).
//!
//! Tables: `entries`: log index (u64) -> bincode `Entry`; `state`: `vote`, `committed`,
//! `last_purged` -> bincode values.
//!
//! The newest entries are also kept in memory ([`Tail`]), so that replication and apply, which
//! read back what was just appended, do not go to redb on a blocking thread for them.
//!
//! Invariants:
//! - an append, a vote, a truncation or a purge is fsynced (redb `Durability::Immediate`) before
//!   openraft is told it happened: an acknowledged entry is on disk. The committed index is not
//!   (openraft may lose it): it is kept in memory and written by the next of those transactions;
//! - entries are contiguous from `last_purged + 1` to the last index;
//! - the in-memory tail holds only entries that are durable in redb, contiguous, ending at the
//!   last one; it loses entries before redb does (truncation, purge), so a read served from it
//!   sees what a read of redb would.

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::ops::{Bound, RangeBounds};
use std::path::Path;
use std::sync::{Arc, Mutex};

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
/// The in-memory tail keeps at most this many encoded bytes of the newest entries...
const TAIL_BYTES: usize = 8 * 1024 * 1024;
/// ...and at most this many entries (enough for replication to a follower a little behind).
const TAIL_ENTRIES: usize = 1024;

type StoreResult<T> = Result<T, StorageError<NodeId>>;

fn read_error(error: impl std::error::Error + 'static) -> StorageError<NodeId> {
    StorageIOError::read_logs(AnyError::new(&error)).into()
}

fn write_error(error: impl std::error::Error + 'static) -> StorageError<NodeId> {
    StorageIOError::write_logs(AnyError::new(&error)).into()
}

/// The newest durable entries, contiguous and ending at the last one, with their encoded sizes.
#[derive(Default)]
struct Tail {
    entries: BTreeMap<u64, (Entry<TypeConfig>, usize)>,
    bytes: usize,
}

impl Tail {
    /// Adds entries just made durable; they follow the last one (anything else starts over).
    fn extend(&mut self, appended: Vec<(Entry<TypeConfig>, usize)>) {
        for (entry, size) in appended {
            let index = entry.log_id.index;
            let follows = match self.entries.last_key_value() {
                Some((last, _)) => *last + 1 == index,
                None => true,
            };
            if !follows {
                self.entries.clear();
                self.bytes = 0;
            }
            self.bytes += size;
            self.entries.insert(index, (entry, size));
        }
        while self.entries.len() > TAIL_ENTRIES
            || (self.bytes > TAIL_BYTES && self.entries.len() > 1)
        {
            if let Some((_, (_, size))) = self.entries.pop_first() {
                self.bytes -= size;
            }
        }
    }

    /// Forgets entries from `index` on.
    fn truncate(&mut self, index: u64) {
        for (_, (_, size)) in self.entries.split_off(&index) {
            self.bytes -= size;
        }
    }

    /// Forgets entries up to `index`, inclusive.
    fn purge(&mut self, index: u64) {
        let kept = self.entries.split_off(&index.saturating_add(1));
        for (_, size) in self.entries.values() {
            self.bytes -= size;
        }
        self.entries = kept;
    }

    /// The entries of `range`, if the tail holds every one of them.
    fn get(&self, start: Bound<u64>, end: Bound<u64>) -> Option<Vec<Entry<TypeConfig>>> {
        let (&first, _) = self.entries.first_key_value()?;
        let start = match start {
            Bound::Included(index) => index,
            Bound::Excluded(index) => index.checked_add(1)?,
            Bound::Unbounded => 0,
        };
        if start < first {
            return None;
        }
        // The tail ends at the log's last entry, so an open end is covered; a closed one must
        // not reach past it (the caller then gets what redb has, or an error, as before).
        let (&last, _) = self.entries.last_key_value()?;
        let end_inclusive = match end {
            Bound::Included(index) => Some(index),
            Bound::Excluded(index) => index.checked_sub(1),
            Bound::Unbounded => None,
        };
        match end_inclusive {
            Some(end) if end > last => return None,
            Some(end) if end < start => return Some(Vec::new()),
            _ => {}
        }
        Some(
            self.entries
                .range((Bound::Included(start), end))
                .map(|(_, (entry, _))| entry.clone())
                .collect(),
        )
    }
}

/// The log store; cheap to clone (the reader openraft asks for is a clone).
#[derive(Clone)]
pub struct LogStore {
    db: Arc<Database>,
    tail: Arc<Mutex<Tail>>,
    /// The newest committed log id openraft saved (encoded), not yet written.
    committed: Arc<Mutex<Option<Vec<u8>>>>,
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
        Ok(LogStore {
            db: Arc::new(db),
            tail: Arc::default(),
            committed: Arc::default(),
        })
    }

    fn tail(&self) -> std::sync::MutexGuard<'_, Tail> {
        self.tail.lock().unwrap_or_else(|e| e.into_inner())
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
    /// `durability` says otherwise). The committed log id saved since the last one goes with it.
    async fn write<F>(&self, durability: Durability, write: F) -> StoreResult<()>
    where
        F: FnOnce(&redb::WriteTransaction) -> Result<(), redb::Error> + Send + 'static,
    {
        let db = self.db.clone();
        let committed = self
            .committed
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        tokio::task::spawn_blocking(move || {
            let mut txn = db.begin_write()?;
            txn.set_durability(durability)?;
            write(&txn)?;
            if let Some(committed) = committed {
                txn.open_table(STATE)?
                    .insert(COMMITTED, committed.as_slice())?;
            }
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
        let bounds = (range.start_bound().cloned(), range.end_bound().cloned());
        if let Some(entries) = self.tail().get(bounds.0, bounds.1) {
            return Ok(entries);
        }
        let db = self.db.clone();
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
        // openraft allows the committed index to be lost (it is re-learnt from the leader, and a
        // restart starts from the state machine's own position when that is further); it only
        // spares re-applying on restart. So it costs no transaction of its own on the commit
        // path: it rides along with the next append (or vote, truncation, purge), and is written
        // only if that one commits.
        let bytes = bincode::serialize(&committed).map_err(write_error)?;
        *self.committed.lock().unwrap_or_else(|e| e.into_inner()) = Some(bytes);
        Ok(())
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
        let mut appended = Vec::new();
        for entry in entries {
            let bytes = bincode::serialize(&entry).map_err(write_error)?;
            encoded.push((entry.log_id.index, bytes));
            appended.push(entry);
        }
        let sizes: Vec<usize> = encoded.iter().map(|(_, bytes)| bytes.len()).collect();
        let result = self
            .write(Durability::Immediate, move |txn| {
                let mut table = txn.open_table(ENTRIES)?;
                for (index, bytes) in &encoded {
                    table.insert(*index, bytes.as_slice())?;
                }
                Ok(())
            })
            .await;
        if result.is_ok() {
            // Durable now: readers may have them from memory.
            self.tail()
                .extend(appended.into_iter().zip(sizes).collect());
        }
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
        // Forgotten in memory first: no reader gets an entry redb no longer has.
        self.tail().truncate(log_id.index);
        self.write(Durability::Immediate, move |txn| {
            let mut table = txn.open_table(ENTRIES)?;
            table.retain_in(log_id.index.., |_, _| false)?;
            Ok(())
        })
        .await
    }

    async fn purge(&mut self, log_id: LogId<NodeId>) -> StoreResult<()> {
        let bytes = bincode::serialize(&log_id).map_err(write_error)?;
        self.tail().purge(log_id.index);
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

#[cfg(test)]
mod tests {
    use openraft::{CommittedLeaderId, EntryPayload};

    use super::*;

    fn entry(index: u64) -> (Entry<TypeConfig>, usize) {
        let entry = Entry {
            log_id: LogId::new(CommittedLeaderId::new(1, 1), index),
            payload: EntryPayload::Blank,
        };
        (entry, 10)
    }

    fn indexes(entries: Option<Vec<Entry<TypeConfig>>>) -> Option<Vec<u64>> {
        entries.map(|entries| entries.iter().map(|e| e.log_id.index).collect())
    }

    #[test]
    fn the_tail_answers_only_ranges_it_holds_entirely() {
        let mut tail = Tail::default();
        tail.extend((5..=9).map(entry).collect());
        let get = |tail: &Tail, start, end| indexes(tail.get(start, end));
        assert_eq!(
            get(&tail, Bound::Included(6), Bound::Excluded(9)),
            Some(vec![6, 7, 8])
        );
        assert_eq!(
            get(&tail, Bound::Included(7), Bound::Unbounded),
            Some(vec![7, 8, 9])
        );
        assert_eq!(get(&tail, Bound::Included(4), Bound::Excluded(6)), None);
        assert_eq!(get(&tail, Bound::Included(8), Bound::Included(10)), None);
        assert_eq!(
            get(&tail, Bound::Included(9), Bound::Excluded(9)),
            Some(vec![])
        );

        tail.truncate(8);
        assert_eq!(
            get(&tail, Bound::Included(5), Bound::Unbounded),
            Some(vec![5, 6, 7])
        );
        assert_eq!(get(&tail, Bound::Included(7), Bound::Included(8)), None);
        tail.purge(6);
        assert_eq!(get(&tail, Bound::Included(6), Bound::Included(7)), None);
        assert_eq!(
            get(&tail, Bound::Included(7), Bound::Unbounded),
            Some(vec![7])
        );
        assert_eq!(tail.bytes, 10);

        // A gap starts the tail over: it never answers across entries it did not see.
        tail.extend(vec![entry(12)]);
        assert_eq!(get(&tail, Bound::Included(7), Bound::Unbounded), None);
        assert_eq!(
            get(&tail, Bound::Included(12), Bound::Unbounded),
            Some(vec![12])
        );
        assert_eq!(tail.bytes, 10);
    }

    #[test]
    fn the_tail_is_bounded() {
        let mut tail = Tail::default();
        tail.extend((1..=(TAIL_ENTRIES as u64 + 10)).map(entry).collect());
        assert_eq!(tail.entries.len(), TAIL_ENTRIES);
        assert_eq!(tail.bytes, TAIL_ENTRIES * 10);
        let mut big = Tail::default();
        big.extend(vec![(entry(1).0, TAIL_BYTES), (entry(2).0, TAIL_BYTES)]);
        assert_eq!(
            indexes(big.get(Bound::Included(2), Bound::Unbounded)),
            Some(vec![2])
        );
        assert_eq!(
            big.get(Bound::Included(1), Bound::Unbounded)
                .map(|e| e.len()),
            None
        );
    }
}
