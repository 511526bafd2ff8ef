//! The Raft log and vote on redb (`DATA/raft/log.redb`).
//!
//! Tables: `entries`: log index (u64) -> bincode `Entry`; `state`: `vote`, `committed`,
//! `last_purged` -> bincode values.
//!
//! Every write goes through one writer thread, in the order it was asked for: writes queued
//! while it commits share its next transaction (one fsync for all of them). An append returns
//! as soon as it is queued and reports its flush through openraft's `LogFlushed` callback; a
//! vote, a truncation or a purge returns once it is durable. The appended entries are readable at
//! once from memory ([`Tail`]): the leader sends them to followers while its own flush is in
//! flight, as etcd does (openraft is patched to not await a leader's flush, see
//! `vendor/openraft/BULWARK.md`).
//!
//! Invariants:
//! - an append, a vote, a truncation or a purge is fsynced (redb `Durability::Immediate`) before
//!   openraft is told it happened: the flush callback of an append fires only after its
//!   transaction committed, so openraft counts an entry as held by this member only once it is
//!   on disk. The committed index is not (openraft may lose it): it is kept in memory and written
//!   by the next of those transactions;
//! - writes reach the disk in the order they were made (one thread, one queue);
//! - entries are contiguous from `last_purged + 1` to the last index;
//! - the in-memory tail holds every appended entry not yet flushed, and some flushed ones,
//!   contiguous, ending at the last one; it loses entries before redb does (truncation, purge),
//!   so a read sees what a read of redb would once the queue is written.

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::ops::{Bound, RangeBounds};
use std::path::Path;
use std::sync::{mpsc, Arc, Mutex};

use openraft::storage::{LogFlushed, RaftLogStorage};
use openraft::{
    AnyError, Entry, LogId, LogState, OptionalSend, RaftLogReader, StorageError, StorageIOError,
    Vote,
};
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition, WriteTransaction};

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

/// The newest entries, contiguous and ending at the last one, with their encoded sizes: every
/// entry not yet flushed, and as many flushed ones as the bounds allow.
#[derive(Default)]
struct Tail {
    entries: BTreeMap<u64, (Entry<TypeConfig>, usize)>,
    bytes: usize,
    /// Entries up to this index are durable in redb (the bounds may drop only those).
    flushed: u64,
}

impl Tail {
    /// Adds entries just appended; they follow the last one (anything else starts over).
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
        self.trim();
    }

    /// Drops the oldest flushed entries beyond the bounds (never the last one, never one that is
    /// not yet durable: redb could not answer for it).
    fn trim(&mut self) {
        while self.entries.len() > TAIL_ENTRIES
            || (self.bytes > TAIL_BYTES && self.entries.len() > 1)
        {
            match self.entries.first_key_value() {
                Some((&index, _)) if index <= self.flushed => {}
                _ => break,
            }
            if let Some((_, (_, size))) = self.entries.pop_first() {
                self.bytes -= size;
            }
        }
    }

    /// Records that the append ending at `last` is durable, unless that entry was truncated
    /// meanwhile (its successor is then a later append, not yet flushed).
    fn mark_flushed(&mut self, last: LogId<NodeId>) {
        if self.entries.get(&last.index).map(|(entry, _)| entry.log_id) == Some(last) {
            self.flushed = self.flushed.max(last.index);
            self.trim();
        }
    }

    /// Forgets entries from `index` on.
    fn truncate(&mut self, index: u64) {
        for (_, (_, size)) in self.entries.split_off(&index) {
            self.bytes -= size;
        }
        self.flushed = self.flushed.min(index.saturating_sub(1));
    }

    /// The tail's first index, and the entries of the range from there on.
    fn held_part(
        &self,
        start: Bound<u64>,
        end: Bound<u64>,
    ) -> Option<(u64, Vec<Entry<TypeConfig>>)> {
        let (&first, _) = self.entries.first_key_value()?;
        let start = match start {
            Bound::Included(index) => index.max(first),
            Bound::Excluded(index) => index.saturating_add(1).max(first),
            Bound::Unbounded => first,
        };
        let empty = match end {
            Bound::Included(index) => index < start,
            Bound::Excluded(index) => index <= start,
            Bound::Unbounded => false,
        };
        if empty {
            return Some((first, Vec::new()));
        }
        Some((
            first,
            self.entries
                .range((Bound::Included(start), end))
                .map(|(_, (entry, _))| entry.clone())
                .collect(),
        ))
    }

    /// Forgets entries up to `index`, inclusive.
    fn purge(&mut self, index: u64) {
        let kept = self.entries.split_off(&index.saturating_add(1));
        for (_, size) in self.entries.values() {
            self.bytes -= size;
        }
        self.entries = kept;
    }
}

/// A write for the writer thread: applied to its transaction, in queue order.
type WriteFn = Box<dyn FnOnce(&WriteTransaction) -> Result<(), redb::Error> + Send>;

/// Who hears that a queued write is durable (or failed).
enum Answer {
    /// openraft, for an append (its last log id).
    Flushed(LogFlushed<TypeConfig>, LogId<NodeId>),
    /// A caller waiting for a vote, truncation or purge.
    Done(tokio::sync::oneshot::Sender<Result<(), String>>),
}

struct Job {
    write: WriteFn,
    answer: Answer,
}

/// At most this many queued writes share one transaction.
const MAX_JOBS_PER_COMMIT: usize = 256;

/// The writer thread: commits (fsyncs) what is queued, in order, several writes to a
/// transaction when they queued up meanwhile, then answers each. Ends when every [`LogStore`]
/// handle is gone and the queue is written.
fn write_queued(
    db: Arc<Database>,
    jobs: mpsc::Receiver<Job>,
    tail: Arc<Mutex<Tail>>,
    committed: Arc<Mutex<Option<Vec<u8>>>>,
) {
    while let Ok(first) = jobs.recv() {
        let mut batch = vec![first];
        while batch.len() < MAX_JOBS_PER_COMMIT {
            match jobs.try_recv() {
                Ok(job) => batch.push(job),
                Err(_) => break,
            }
        }
        let committed = committed.lock().unwrap_or_else(|e| e.into_inner()).take();
        let (writes, answers): (Vec<WriteFn>, Vec<Answer>) =
            batch.into_iter().map(|job| (job.write, job.answer)).unzip();
        let result = (|| {
            let txn = db.begin_write()?;
            for write in writes {
                write(&txn)?;
            }
            if let Some(committed) = committed {
                txn.open_table(STATE)?
                    .insert(COMMITTED, committed.as_slice())?;
            }
            txn.commit()?;
            Ok::<_, redb::Error>(())
        })();
        let result = result.map_err(|e| e.to_string());
        if result.is_ok() {
            let mut tail = tail.lock().unwrap_or_else(|e| e.into_inner());
            for answer in &answers {
                if let Answer::Flushed(_, last) = answer {
                    tail.mark_flushed(*last);
                }
            }
        }
        for answer in answers {
            match answer {
                // Only a durable append is reported as flushed.
                Answer::Flushed(callback, _) => {
                    callback.log_io_completed(result.clone().map_err(std::io::Error::other))
                }
                Answer::Done(done) => {
                    let _ = done.send(result.clone());
                }
            }
        }
    }
}

/// The log store; cheap to clone (the reader openraft asks for is a clone).
#[derive(Clone)]
pub struct LogStore {
    db: Arc<Database>,
    tail: Arc<Mutex<Tail>>,
    /// The newest committed log id openraft saved (encoded), not yet written.
    committed: Arc<Mutex<Option<Vec<u8>>>>,
    /// The writer thread's queue.
    jobs: mpsc::Sender<Job>,
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
        let db = Arc::new(db);
        let tail: Arc<Mutex<Tail>> = Arc::default();
        let committed: Arc<Mutex<Option<Vec<u8>>>> = Arc::default();
        let (jobs, queued) = mpsc::channel();
        let writer = {
            let (db, tail, committed) = (db.clone(), tail.clone(), committed.clone());
            move || write_queued(db, queued, tail, committed)
        };
        std::thread::Builder::new()
            .name("raft-log-writer".into())
            .spawn(writer)
            .map_err(|e| redb::Error::Io(std::io::Error::other(e)))?;
        Ok(LogStore {
            db,
            tail,
            committed,
            jobs,
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

    fn queue(&self, write: WriteFn, answer: Answer) -> StoreResult<()> {
        self.jobs
            .send(Job { write, answer })
            .map_err(|_| write_error(std::io::Error::other("the raft log writer has stopped")))
    }

    /// Queues `write` and waits until it is durable (the committed log id saved since the last
    /// write goes with it).
    async fn write<F>(&self, write: F) -> StoreResult<()>
    where
        F: FnOnce(&WriteTransaction) -> Result<(), redb::Error> + Send + 'static,
    {
        let (done, durable) = tokio::sync::oneshot::channel();
        self.queue(Box::new(write), Answer::Done(done))?;
        durable
            .await
            .map_err(|_| write_error(std::io::Error::other("the raft log writer has stopped")))?
            .map_err(|e| write_error(std::io::Error::other(e)))
    }

    async fn write_state<T: serde::Serialize>(
        &self,
        name: &'static str,
        value: &T,
    ) -> StoreResult<()> {
        let bytes = bincode::serialize(value).map_err(write_error)?;
        self.write(move |txn| {
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
        // What the tail has of the range is authoritative (it may not be durable yet); redb has
        // everything before the tail's first entry.
        let (end, newest) = match self.tail().held_part(bounds.0, bounds.1) {
            Some((first, newest)) => {
                let starts_in_tail = match bounds.0 {
                    Bound::Included(index) => index >= first,
                    Bound::Excluded(index) => index.saturating_add(1) >= first,
                    Bound::Unbounded => false,
                };
                if starts_in_tail {
                    return Ok(newest);
                }
                let end = match bounds.1 {
                    Bound::Included(index) if index < first => Bound::Included(index),
                    Bound::Excluded(index) if index <= first => Bound::Excluded(index),
                    _ => Bound::Excluded(first),
                };
                (end, newest)
            }
            None => (bounds.1, Vec::new()),
        };
        let db = self.db.clone();
        let start = bounds.0;
        let mut entries = tokio::task::spawn_blocking(move || {
            let txn = db.begin_read().map_err(read_error)?;
            let table = txn.open_table(ENTRIES).map_err(read_error)?;
            let mut entries = Vec::new();
            for row in table.range::<u64>((start, end)).map_err(read_error)? {
                let (_, bytes) = row.map_err(read_error)?;
                entries.push(bincode::deserialize(bytes.value()).map_err(read_error)?);
            }
            Ok::<Vec<Entry<TypeConfig>>, StorageError<NodeId>>(entries)
        })
        .await
        .map_err(read_error)??;
        entries.extend(newest);
        Ok(entries)
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> StoreResult<LogState<TypeConfig>> {
        let last_purged: Option<LogId<NodeId>> = self.read_state(LAST_PURGED)?;
        // Called at start, before anything is appended: redb has the whole log.
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
        self.write_state(VOTE, vote).await.map_err(|e| match e {
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
            let size = bytes.len();
            encoded.push((entry.log_id.index, bytes));
            appended.push((entry, size));
        }
        let Some(last) = appended.last().map(|(entry, _)| entry.log_id) else {
            callback.log_io_completed(Ok(()));
            return Ok(());
        };
        // Readable at once (openraft's contract for `append`), durable when the callback says.
        self.tail().extend(appended);
        self.queue(
            Box::new(move |txn| {
                let mut table = txn.open_table(ENTRIES)?;
                for (index, bytes) in &encoded {
                    table.insert(*index, bytes.as_slice())?;
                }
                Ok(())
            }),
            Answer::Flushed(callback, last),
        )
    }

    async fn truncate(&mut self, log_id: LogId<NodeId>) -> StoreResult<()> {
        // Forgotten in memory first: no reader gets an entry the log no longer has.
        self.tail().truncate(log_id.index);
        self.write(move |txn| {
            let mut table = txn.open_table(ENTRIES)?;
            table.retain_in(log_id.index.., |_, _| false)?;
            Ok(())
        })
        .await
    }

    async fn purge(&mut self, log_id: LogId<NodeId>) -> StoreResult<()> {
        let bytes = bincode::serialize(&log_id).map_err(write_error)?;
        self.tail().purge(log_id.index);
        self.write(move |txn| {
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
    use openraft::storage::RaftLogStorageExt;
    use openraft::{CommittedLeaderId, EntryPayload, RaftLogReader};

    use super::*;

    fn entry_of(term: u64, index: u64) -> Entry<TypeConfig> {
        Entry {
            log_id: LogId::new(CommittedLeaderId::new(term, 1), index),
            payload: EntryPayload::Blank,
        }
    }

    fn entry(index: u64) -> (Entry<TypeConfig>, usize) {
        (entry_of(1, index), 10)
    }

    fn indexes(entries: &[Entry<TypeConfig>]) -> Vec<u64> {
        entries.iter().map(|e| e.log_id.index).collect()
    }

    fn held_part(tail: &Tail, start: Bound<u64>, end: Bound<u64>) -> Option<(u64, Vec<u64>)> {
        tail.held_part(start, end)
            .map(|(first, entries)| (first, indexes(&entries)))
    }

    #[test]
    fn the_tail_answers_the_part_of_a_range_it_holds() {
        let mut tail = Tail::default();
        tail.extend((5..=9).map(entry).collect());
        assert_eq!(
            held_part(&tail, Bound::Included(6), Bound::Excluded(9)),
            Some((5, vec![6, 7, 8]))
        );
        assert_eq!(
            held_part(&tail, Bound::Included(2), Bound::Unbounded),
            Some((5, vec![5, 6, 7, 8, 9]))
        );
        assert_eq!(
            held_part(&tail, Bound::Included(2), Bound::Excluded(4)),
            Some((5, vec![]))
        );
        assert_eq!(
            held_part(&tail, Bound::Included(9), Bound::Excluded(9)),
            Some((5, vec![]))
        );

        tail.truncate(8);
        assert_eq!(
            held_part(&tail, Bound::Included(5), Bound::Unbounded),
            Some((5, vec![5, 6, 7]))
        );
        tail.purge(6);
        assert_eq!(
            held_part(&tail, Bound::Included(5), Bound::Unbounded),
            Some((7, vec![7]))
        );
        assert_eq!(tail.bytes, 10);

        // A gap starts the tail over: it never answers across entries it did not see.
        tail.extend(vec![entry(12)]);
        assert_eq!(
            held_part(&tail, Bound::Included(7), Bound::Unbounded),
            Some((12, vec![12]))
        );
        assert_eq!(tail.bytes, 10);
    }

    #[test]
    fn the_tail_is_bounded_but_keeps_what_is_not_flushed() {
        let mut tail = Tail::default();
        let count = TAIL_ENTRIES as u64 + 10;
        tail.extend((1..=count).map(entry).collect());
        // Nothing is durable yet: nothing may go.
        assert_eq!(tail.entries.len(), count as usize);
        tail.mark_flushed(entry_of(1, count).log_id);
        assert_eq!(tail.entries.len(), TAIL_ENTRIES);
        assert_eq!(tail.bytes, TAIL_ENTRIES * 10);

        let mut big = Tail::default();
        big.extend(vec![
            (entry_of(1, 1), TAIL_BYTES),
            (entry_of(1, 2), TAIL_BYTES),
        ]);
        assert_eq!(big.entries.len(), 2);
        big.mark_flushed(entry_of(1, 2).log_id);
        assert_eq!(
            held_part(&big, Bound::Included(1), Bound::Unbounded),
            Some((2, vec![2]))
        );
    }

    #[test]
    fn a_flush_of_truncated_entries_marks_nothing() {
        let mut tail = Tail::default();
        tail.extend((1..=5).map(entry).collect());
        tail.truncate(4);
        tail.extend(vec![(entry_of(2, 4), 10)]);
        // The writer reports the first append (up to 1-5) after the truncation: entry 4 is now
        // another one, not yet durable.
        tail.mark_flushed(entry_of(1, 5).log_id);
        assert_eq!(tail.flushed, 0);
        tail.mark_flushed(entry_of(2, 4).log_id);
        assert_eq!(tail.flushed, 4);
    }

    #[tokio::test]
    async fn reads_join_the_disk_and_the_tail_and_every_write_is_durable_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log.redb");
        {
            let mut log = LogStore::open(&path).unwrap();
            log.blocking_append((1..=3).map(|i| entry_of(1, i)))
                .await
                .unwrap();
            // Only 2 and 3 stay in memory: 1 must come from redb.
            log.tail().purge(1);
            log.blocking_append((4..=6).map(|i| entry_of(1, i)))
                .await
                .unwrap();
            let mut reader = log.get_log_reader().await;
            assert_eq!(
                indexes(&reader.try_get_log_entries(1..7).await.unwrap()),
                vec![1, 2, 3, 4, 5, 6]
            );
            assert_eq!(
                indexes(&reader.try_get_log_entries(3..=4).await.unwrap()),
                vec![3, 4]
            );
            log.truncate(entry_of(1, 5).log_id).await.unwrap();
            log.blocking_append([entry_of(2, 5)]).await.unwrap();
            log.purge(entry_of(1, 2).log_id).await.unwrap();
            assert_eq!(
                indexes(&reader.try_get_log_entries(0..).await.unwrap()),
                vec![3, 4, 5]
            );
            log.save_vote(&Vote::new(2, 1)).await.unwrap();
        }
        // The writer thread lets go of the file once the last handle is gone.
        let mut attempts = 0;
        let mut reopened = loop {
            match LogStore::open(&path) {
                Ok(log) => break log,
                Err(error) if attempts == 500 => panic!("the log stays open: {error}"),
                Err(_) => {
                    attempts += 1;
                    tokio::time::sleep(std::time::Duration::from_millis(10)).await
                }
            }
        };
        let state = reopened.get_log_state().await.unwrap();
        assert_eq!(state.last_purged_log_id, Some(entry_of(1, 2).log_id));
        assert_eq!(state.last_log_id, Some(entry_of(2, 5).log_id));
        assert_eq!(reopened.read_vote().await.unwrap(), Some(Vote::new(2, 1)));
        assert_eq!(
            indexes(&reopened.try_get_log_entries(0..).await.unwrap()),
            vec![3, 4, 5]
        );
    }
}
