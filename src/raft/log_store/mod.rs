//! The Raft log and vote: a dedicated write-ahead log in `DATA/raft/log/`, kept by the `raft-log`
//! crate (by openraft's author; the Raft log of Databend's meta-service).
//!
//! `raft-log` writes records (append, vote, commit, truncate, purge) into chunk files with a
//! CRC32 each, through one flush thread: the writes queued while it syncs share its next
//! `fdatasync`. On open it replays the chunks and cuts a torn record at the tail. It keeps an
//! index of every entry it holds and a bounded cache of their payloads, so the entries just
//! appended are readable at once (replication and apply read back what was just appended).
//!
//! This module is the adapter between openraft's storage traits and `raft-log`, and the
//! one-time move of a log written by earlier versions in `raft/log.redb` ([`legacy`]).
//!
//! Invariants:
//! - an append, a vote, a truncation or a purge is fsynced before openraft is told it happened:
//!   the flush callback of an append fires only after the `fdatasync` that covers it, so
//!   openraft counts an entry as held by this member only once it is on disk (the leader sends
//!   its entries to followers meanwhile, as etcd does: `vendor/openraft/BULWARK.md`). The
//!   committed index is not (openraft may lose it): it is written with the next of those;
//! - writes reach the disk in the order they were made (one log, one flush thread);
//! - entries are contiguous from `purged + 1` to the last index (`raft-log` refuses anything
//!   else: a gap, a reversed vote, a truncation of committed entries).

mod legacy;

use std::fmt::Debug;
use std::io;
use std::ops::{Bound, RangeBounds};
use std::path::Path;
use std::sync::{Arc, RwLock};

use bincode::Options;
use openraft::storage::{LogFlushed, RaftLogStorage};
use openraft::{
    AnyError, Entry, EntryPayload, LogId, LogState, OptionalSend, RaftLogReader, StorageError,
    StorageIOError, Vote,
};
use raft_log::api::raft_log_writer::RaftLogWriter;
use raft_log::{RaftLog, Types};
use serde::de::DeserializeOwned;
use serde::Serialize;

use super::{NodeId, TypeConfig};
use crate::pki::sync_parent;

/// A chunk file is closed and a new one started past this size; a purge frees whole chunks, so
/// this bounds the log's disk use beyond the purge point.
const CHUNK_BYTES: usize = 8 * 1024 * 1024;
/// The payload cache keeps at most this many bytes of flushed entries...
const CACHE_BYTES: usize = 8 * 1024 * 1024;
/// ...and at most this many entries (enough for replication to a follower a little behind).
/// Besides, every entry of the open chunk stays cached until that chunk is closed and synced:
/// [`CHUNK_BYTES`] bounds that too.
const CACHE_ENTRIES: usize = 1024;
/// The buffer each chunk is replayed through when the log opens.
const READ_BUFFER_BYTES: usize = 1024 * 1024;
/// How long the flush thread waits, after taking a write, for more to share its `fdatasync`.
/// Without a wait it syncs each queued write on its own; `raft-log`'s default (1 ms) would add
/// most of a millisecond to every lone write.
const FLUSH_BATCH_WAIT: std::time::Duration = std::time::Duration::from_micros(20);
/// No value is stored larger than this. An entry holds at most a batch of 2 MiB plus one
/// command, and a command at most `--max-request-bytes` (at most
/// [`MAX_REQUEST_BYTES_LIMIT`](crate::api::MAX_REQUEST_BYTES_LIMIT)).
const MAX_VALUE_BYTES: usize = 256 * 1024 * 1024;
/// What a payload may weigh ([`raft_log::Types::payload_size`]) and still fit below
/// [`MAX_VALUE_BYTES`] once encoded (a length per command).
const MAX_PAYLOAD_SIZE: u64 = (MAX_VALUE_BYTES / 2) as u64;

#[derive(Debug, thiserror::Error)]
pub enum LogStoreError {
    #[error("{path}: {source}", path = .0.display(), source = .1)]
    Io(std::path::PathBuf, io::Error),
    #[error("moving the log out of {path}: {1}", path = .0.display())]
    Legacy(std::path::PathBuf, String),
}

type StoreResult<T> = Result<T, StorageError<NodeId>>;

fn read_error(error: impl std::error::Error + 'static) -> StorageError<NodeId> {
    StorageIOError::read_logs(AnyError::new(&error)).into()
}

fn write_error(error: impl std::error::Error + 'static) -> StorageError<NodeId> {
    StorageIOError::write_logs(AnyError::new(&error)).into()
}

/// A value stored in the log: its length (u32, little-endian), the CRC32 of those four bytes,
/// then the value as bincode (the encoding the redb log used).
///
/// The framing is what lets a replay tell a torn tail from corruption. `raft-log`'s records
/// carry no length and their CRC32 is checked after the value is decoded, and a record that
/// ends early (`UnexpectedEof`) is taken for a write cut short by a crash and cut off with
/// everything after it. A value's own lengths (bincode's) are not checked by anything before the
/// decode uses them, so a flipped bit in one could read past the end and silently drop fsynced
/// records, a vote among them. With the frame, a damaged length fails its checksum
/// (`InvalidData`: the log refuses to open), and only a frame that really ends early reads as
/// torn.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Bincoded<T>(pub T);

fn bincode_options() -> impl Options {
    // `bincode::serialize`'s encoding.
    bincode::DefaultOptions::new()
        .with_fixint_encoding()
        .allow_trailing_bytes()
}

/// Refuses entries over the log's limit before anything is written: `raft-log` writes a
/// record's log id before it encodes the payload, so a payload refused midway would leave half a
/// record behind. (The request size limit keeps every entry far below this.)
fn check_sizes(
    entries: &[(<LogTypes as Types>::LogId, <LogTypes as Types>::LogPayload)],
) -> io::Result<()> {
    match entries
        .iter()
        .find(|(_, payload)| LogTypes::payload_size(payload) > MAX_PAYLOAD_SIZE)
    {
        Some((log_id, payload)) => Err(invalid(format!(
            "entry {} of {} bytes is over the log's limit",
            log_id.0,
            LogTypes::payload_size(payload)
        ))),
        None => Ok(()),
    }
}

fn invalid(message: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, message)
}

impl<T: Serialize> raft_log::codeq::Encode for Bincoded<T> {
    fn encode<W: io::Write>(&self, mut w: W) -> Result<usize, io::Error> {
        let body = bincode_options()
            .serialize(&self.0)
            .map_err(|e| invalid(format!("a log value does not encode: {e}")))?;
        if body.len() > MAX_VALUE_BYTES {
            return Err(invalid(format!(
                "a log value of {} bytes is over the limit of {MAX_VALUE_BYTES}",
                body.len()
            )));
        }
        let length = (body.len() as u32).to_le_bytes();
        w.write_all(&length)?;
        w.write_all(&crc32fast::hash(&length).to_le_bytes())?;
        w.write_all(&body)?;
        Ok(8 + body.len())
    }
}

impl<T: DeserializeOwned> raft_log::codeq::Decode for Bincoded<T> {
    fn decode<R: io::Read>(mut r: R) -> Result<Self, io::Error> {
        use io::Read;
        let mut header = [0u8; 8];
        r.read_exact(&mut header)?;
        let (length, checksum) = header.split_at(4);
        if crc32fast::hash(length).to_le_bytes() != checksum {
            return Err(invalid("a log value's length fails its checksum".into()));
        }
        let length = u32::from_le_bytes(length.try_into().expect("4 bytes")) as usize;
        if length > MAX_VALUE_BYTES {
            return Err(invalid(format!("a log value claims {length} bytes")));
        }
        // Read as it comes rather than allocated up front: a tail cut short ends the read early.
        let mut body = Vec::new();
        r.take(length as u64).read_to_end(&mut body)?;
        if body.len() < length {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        // The frame is whole: a value that does not decode is damaged, never torn (bincode
        // reports running out of bytes as `UnexpectedEof`, which would read as a torn tail).
        bincode_options()
            .deserialize(&body)
            .map(Bincoded)
            .map_err(|e| invalid(format!("a log value does not decode: {e}")))
    }
}

/// Who hears that a flush is durable (or failed); called on `raft-log`'s flush thread.
pub enum Durable {
    /// openraft, for an append.
    Flushed(LogFlushed<TypeConfig>),
    /// A caller waiting for a vote, truncation or purge.
    Done(tokio::sync::oneshot::Sender<io::Result<()>>),
}

impl raft_log::Callback for Durable {
    fn send(self, result: io::Result<()>) {
        match self {
            Durable::Flushed(flushed) => flushed.log_io_completed(result),
            Durable::Done(done) => {
                let _ = done.send(result);
            }
        }
    }
}

/// The types `raft-log` stores: openraft's log id, payload and vote as bincode.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct LogTypes;

impl raft_log::Types for LogTypes {
    type LogId = Bincoded<LogId<NodeId>>;
    type LogPayload = Bincoded<EntryPayload<TypeConfig>>;
    type Vote = Bincoded<Vote<NodeId>>;
    type Callback = Durable;
    type UserData = Bincoded<()>;

    fn log_index(log_id: &Self::LogId) -> u64 {
        log_id.0.index
    }

    fn payload_size(payload: &Self::LogPayload) -> u64 {
        match &payload.0 {
            EntryPayload::Normal(request) => request
                .commands
                .iter()
                .map(|command| command.len() as u64 + 8)
                .sum(),
            EntryPayload::Membership(_) => 256,
            EntryPayload::Blank => 0,
        }
    }
}

type Log = RaftLog<LogTypes>;

fn config(dir: &Path) -> raft_log::Config {
    let mut config = raft_log::Config::new(dir.display());
    config.log_cache_capacity = Some(CACHE_BYTES);
    config.log_cache_max_items = Some(CACHE_ENTRIES);
    config.wal.chunk_max_size = Some(CHUNK_BYTES);
    config.wal.flush_batch_wait = Some(FLUSH_BATCH_WAIT);
    config.wal.truncate_incomplete_record = Some(true);
    // The replay on open reads each chunk through a buffer this large (the default is 64 MiB).
    config.wal.read_buffer_size = Some(READ_BUFFER_BYTES);
    config
}

fn open_log(dir: &Path, config: raft_log::Config) -> Result<Log, LogStoreError> {
    // The directory's name is durable before anything in it is acknowledged (synced on every
    // open: a crash right after creating it would otherwise leave it unsynced for good).
    std::fs::create_dir_all(dir)
        .and_then(|()| sync_parent(dir))
        .map_err(|e| LogStoreError::Io(dir.to_path_buf(), e))?;
    let log = Log::open(Arc::new(config)).map_err(|e| LogStoreError::Io(dir.to_path_buf(), e))?;
    // The replay cached the payloads of the last two chunks; only what is not yet evictable
    // (the open chunk's) needs to stay.
    log.drain_cache_evictable();
    Ok(log)
}

fn poisoned() -> io::Error {
    io::Error::other("the raft log is unusable: a write to it panicked midway")
}

/// The log store; cheap to clone (the reader openraft asks for is a clone).
#[derive(Clone)]
pub struct LogStore {
    log: Arc<RwLock<Log>>,
}

impl LogStore {
    /// Opens the log in `dir`, first moving into it a log an earlier version left in `legacy`
    /// (`raft/log.redb`), if there is one.
    pub fn open(dir: &Path, legacy: &Path) -> Result<Self, LogStoreError> {
        Self::open_with(dir, legacy, config(dir))
    }

    fn open_with(
        dir: &Path,
        legacy: &Path,
        config: raft_log::Config,
    ) -> Result<Self, LogStoreError> {
        legacy::move_into(legacy, dir)?;
        Ok(LogStore {
            log: Arc::new(RwLock::new(open_log(dir, config)?)),
        })
    }

    // A poisoned lock means a write panicked midway: what the log holds in memory may no longer
    // match what it wrote, so every later use is a storage error (openraft stops the member).

    fn log(&self) -> io::Result<std::sync::RwLockReadGuard<'_, Log>> {
        self.log.read().map_err(|_| poisoned())
    }

    fn log_mut(&self) -> io::Result<std::sync::RwLockWriteGuard<'_, Log>> {
        self.log.write().map_err(|_| poisoned())
    }

    /// Makes one change to the log and waits until it is durable (with whatever was written
    /// before it, the committed log id included).
    async fn write_durably(
        &self,
        change: impl FnOnce(&mut Log) -> io::Result<()>,
    ) -> io::Result<()> {
        let (done, durable) = tokio::sync::oneshot::channel();
        {
            let mut log = self.log_mut()?;
            change(&mut log)?;
            log.flush(true, Some(Durable::Done(done)))?;
        }
        durable
            .await
            .map_err(|_| io::Error::other("the raft log's flush thread has stopped"))?
    }
}

/// The indexes `[from, to)` of a range of log indexes.
fn index_span(range: &impl RangeBounds<u64>) -> (u64, u64) {
    let from = match range.start_bound() {
        Bound::Included(&index) => index,
        Bound::Excluded(&index) => index.saturating_add(1),
        Bound::Unbounded => 0,
    };
    let to = match range.end_bound() {
        Bound::Included(&index) => index.saturating_add(1),
        Bound::Excluded(&index) => index,
        Bound::Unbounded => u64::MAX,
    };
    (from, to.max(from))
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> StoreResult<Vec<Entry<TypeConfig>>> {
        let (from, to) = index_span(&range);
        // Mostly served from the payload cache; older entries are read from their chunk file.
        self.log()
            .map_err(read_error)?
            .read(from, to)
            .map(|entry| {
                let (log_id, payload) = entry.map_err(read_error)?;
                Ok(Entry {
                    log_id: log_id.0,
                    payload: payload.0,
                })
            })
            .collect()
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> StoreResult<LogState<TypeConfig>> {
        let log = self.log().map_err(read_error)?;
        let state = log.log_state();
        let last_purged = state.purged().map(|id| id.0);
        Ok(LogState {
            last_purged_log_id: last_purged,
            // A purge past the last entry (a snapshot installed) makes it the last one too.
            last_log_id: state.last().map(|id| id.0).or(last_purged),
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<NodeId>) -> StoreResult<()> {
        let vote = Bincoded(*vote);
        self.write_durably(|log| log.save_vote(vote).map(drop))
            .await
            .map_err(|e| StorageIOError::write_vote(AnyError::new(&e)).into())
    }

    async fn read_vote(&mut self) -> StoreResult<Option<Vote<NodeId>>> {
        let log = self.log().map_err(read_error)?;
        Ok(log.log_state().vote().map(|vote| vote.0))
    }

    async fn save_committed(&mut self, committed: Option<LogId<NodeId>>) -> StoreResult<()> {
        // openraft allows the committed index to be lost (it is re-learnt from the leader, and a
        // restart starts from the state machine's own position when that is further); it only
        // spares re-applying on restart. So it costs no flush of its own: it is written with
        // the next append (or vote, truncation, purge). `raft-log` refuses a committed log id
        // behind the one it has or past its last entry (a snapshot's, before the purge that
        // follows its install): those are skipped, not errors.
        let Some(committed) = committed.map(Bincoded) else {
            return Ok(());
        };
        let mut log = self.log_mut().map_err(write_error)?;
        let state = log.log_state();
        if Some(&committed) > state.committed() && Some(&committed) <= state.last() {
            log.commit(committed).map_err(write_error)?;
        }
        Ok(())
    }

    async fn read_committed(&mut self) -> StoreResult<Option<LogId<NodeId>>> {
        let log = self.log().map_err(read_error)?;
        Ok(log.log_state().committed().map(|id| id.0))
    }

    async fn append<I>(&mut self, entries: I, callback: LogFlushed<TypeConfig>) -> StoreResult<()>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let entries: Vec<_> = entries
            .into_iter()
            .map(|entry| (Bincoded(entry.log_id), Bincoded(entry.payload)))
            .collect();
        check_sizes(&entries).map_err(write_error)?;
        // Readable at once (openraft's contract for `append`), durable when the callback says.
        let mut log = self.log_mut().map_err(write_error)?;
        log.append(entries).map_err(write_error)?;
        log.flush(true, Some(Durable::Flushed(callback)))
            .map_err(write_error)
    }

    async fn truncate(&mut self, log_id: LogId<NodeId>) -> StoreResult<()> {
        self.write_durably(|log| log.truncate(log_id.index).map(drop))
            .await
            .map_err(write_error)
    }

    async fn purge(&mut self, log_id: LogId<NodeId>) -> StoreResult<()> {
        // `raft-log` deletes a chunk file only once the purge record covering it is synced.
        self.write_durably(|log| log.purge(Bincoded(log_id)).map(drop))
            .await
            .map_err(write_error)
    }
}

#[cfg(test)]
mod tests {
    use openraft::storage::RaftLogStorageExt;
    use openraft::{CommittedLeaderId, RaftLogReader};

    use super::*;
    use crate::raft::Request;

    pub(super) fn entry_of(term: u64, index: u64) -> Entry<TypeConfig> {
        Entry {
            log_id: LogId::new(CommittedLeaderId::new(term, 1), index),
            payload: EntryPayload::Normal(Request {
                commands: vec![format!("command {index}").into_bytes()],
            }),
        }
    }

    pub(super) fn indexes(entries: &[Entry<TypeConfig>]) -> Vec<u64> {
        entries.iter().map(|e| e.log_id.index).collect()
    }

    /// A temporary directory, and where the log and an old redb log go in it.
    pub(super) fn log_paths() -> (tempfile::TempDir, std::path::PathBuf, std::path::PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let (path, legacy) = (dir.path().join("log"), dir.path().join("log.redb"));
        (dir, path, legacy)
    }

    /// Opens the log in `dir` again (dropping a store joins its flush thread and unlocks the
    /// directory).
    pub(super) async fn reopen(dir: &Path, legacy: &Path) -> LogStore {
        reopen_with(dir, legacy, config(dir)).await
    }

    async fn reopen_with(dir: &Path, legacy: &Path, config: raft_log::Config) -> LogStore {
        LogStore::open_with(dir, legacy, config).expect("the log opens")
    }

    /// Checks what `log` says it holds: the log ids of its purge point, last entry and committed
    /// entry, and its vote.
    pub(super) async fn assert_state(
        log: &mut LogStore,
        [purged, last, committed]: [Entry<TypeConfig>; 3],
        vote: Vote<NodeId>,
    ) {
        let state = log.get_log_state().await.unwrap();
        assert_eq!(state.last_purged_log_id, Some(purged.log_id));
        assert_eq!(state.last_log_id, Some(last.log_id));
        assert_eq!(log.read_committed().await.unwrap(), Some(committed.log_id));
        assert_eq!(log.read_vote().await.unwrap(), Some(vote));
    }

    #[test]
    fn index_spans_are_half_open() {
        assert_eq!(index_span(&(3..7)), (3, 7));
        assert_eq!(index_span(&(3..=7)), (3, 8));
        assert_eq!(index_span(&(3..)), (3, u64::MAX));
        assert_eq!(index_span(&(..7)), (0, 7));
        assert_eq!(
            index_span(&(Bound::Included(7), Bound::Excluded(3))),
            (7, 7)
        );
        assert_eq!(
            index_span(&(Bound::Excluded(3), Bound::Excluded(5))),
            (4, 5)
        );
    }

    #[test]
    fn a_record_cut_short_reads_as_unexpected_eof() {
        use raft_log::codeq::{Decode, Encode};
        let entry = entry_of(2, 9);
        let mut bytes = Vec::new();
        Bincoded(entry.payload.clone()).encode(&mut bytes).unwrap();
        let cut = &bytes[..bytes.len() - 3];
        let error = Bincoded::<EntryPayload<TypeConfig>>::decode(cut).unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::UnexpectedEof);
        let whole = Bincoded::<EntryPayload<TypeConfig>>::decode(&bytes[..]).unwrap();
        assert!(matches!(whole.0, EntryPayload::Normal(r) if r.commands == [b"command 9"]));
    }

    #[test]
    fn a_damaged_frame_is_corruption_and_a_short_one_is_torn() {
        use raft_log::codeq::{Decode, Encode};
        let mut frame = Vec::new();
        Bincoded(entry_of(2, 9).payload).encode(&mut frame).unwrap();
        let decode = |bytes: &[u8]| Bincoded::<EntryPayload<TypeConfig>>::decode(bytes);
        for damaged_byte in [0, 3, 4, 7] {
            let mut damaged = frame.clone();
            damaged[damaged_byte] ^= 0x40;
            let error = decode(&damaged).unwrap_err();
            assert_eq!(
                error.kind(),
                io::ErrorKind::InvalidData,
                "byte {damaged_byte}"
            );
        }
        for cut in [3, 8, frame.len() - 1] {
            let error = decode(&frame[..cut]).unwrap_err();
            assert_eq!(error.kind(), io::ErrorKind::UnexpectedEof, "cut at {cut}");
        }
    }

    #[tokio::test]
    async fn a_log_with_a_damaged_length_refuses_to_open_rather_than_drop_records() {
        use raft_log::codeq::Encode;
        let (_dir, path, legacy) = log_paths();
        {
            let mut log = reopen(&path, &legacy).await;
            log.blocking_append((1..=20).map(|i| entry_of(1, i)))
                .await
                .unwrap();
            log.save_vote(&Vote::new(2, 1)).await.unwrap();
        }
        let mut frame = Vec::new();
        Bincoded(entry_of(1, 10).payload)
            .encode(&mut frame)
            .unwrap();
        let chunk = std::fs::read_dir(&path)
            .unwrap()
            .map(|entry| entry.unwrap().path())
            .find(|file| file.extension().is_some_and(|ext| ext == "wal"))
            .unwrap();
        let bytes = std::fs::read(&chunk).unwrap();
        let at = bytes
            .windows(frame.len())
            .position(|window| window == frame)
            .unwrap();
        for (what, offset) in [
            ("the length of entry 10's value", 2),
            // Past the frame's header (8 bytes), the entry's variant (4) and its command count
            // (8): the length of its one command, which would read past the value's end.
            ("the length of entry 10's command", 8 + 4 + 8 + 1),
        ] {
            let mut damaged = bytes.clone();
            damaged[at + offset] ^= 0x01;
            std::fs::write(&chunk, &damaged).unwrap();
            assert!(
                LogStore::open(&path, &legacy).is_err(),
                "the log opened with {what} damaged"
            );
        }
    }

    #[tokio::test]
    async fn every_write_is_readable_at_once_and_durable_across_a_reopen() {
        let (_dir, path, legacy) = log_paths();
        {
            let mut log = LogStore::open(&path, &legacy).unwrap();
            log.blocking_append((1..=6).map(|i| entry_of(1, i)))
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
            log.save_committed(Some(entry_of(1, 3).log_id))
                .await
                .unwrap();
            log.truncate(entry_of(1, 5).log_id).await.unwrap();
            log.blocking_append([entry_of(2, 5)]).await.unwrap();
            log.purge(entry_of(1, 2).log_id).await.unwrap();
            assert_eq!(
                indexes(&reader.try_get_log_entries(0..).await.unwrap()),
                vec![3, 4, 5]
            );
            log.save_vote(&Vote::new(2, 1)).await.unwrap();
            // Skipped, not refused: behind the saved one, and past the last entry.
            log.save_committed(Some(entry_of(1, 1).log_id))
                .await
                .unwrap();
            log.save_committed(Some(entry_of(2, 9).log_id))
                .await
                .unwrap();
        }
        let mut reopened = reopen(&path, &legacy).await;
        assert_state(
            &mut reopened,
            [entry_of(1, 2), entry_of(2, 5), entry_of(1, 3)],
            Vote::new(2, 1),
        )
        .await;
        let entries = reopened.try_get_log_entries(0..).await.unwrap();
        assert_eq!(indexes(&entries), vec![3, 4, 5]);
        assert_eq!(entries[2].log_id, entry_of(2, 5).log_id);
    }

    #[tokio::test]
    async fn a_purge_past_the_last_entry_moves_the_log_on() {
        // What installing a snapshot does: the log starts again after the snapshot's last entry.
        let (_dir, path, legacy) = log_paths();
        let mut log = LogStore::open(&path, &legacy).unwrap();
        log.blocking_append((1..=3).map(|i| entry_of(1, i)))
            .await
            .unwrap();
        log.purge(entry_of(2, 10).log_id).await.unwrap();
        let state = log.get_log_state().await.unwrap();
        assert_eq!(state.last_purged_log_id, Some(entry_of(2, 10).log_id));
        assert_eq!(state.last_log_id, Some(entry_of(2, 10).log_id));
        log.blocking_append([entry_of(2, 11)]).await.unwrap();
        assert_eq!(
            indexes(&log.try_get_log_entries(0..).await.unwrap()),
            vec![11]
        );
    }

    #[tokio::test]
    async fn entries_re_appended_after_a_truncation_stay_readable_while_their_chunk_is_open() {
        // Raft allows this history: a follower holds a deposed leader's uncommitted term-3
        // entries; the next leader's log has term-2 entries at those indexes, so the follower
        // truncates and appends log ids lower than the ones a closed chunk ends with.
        let (_dir, path, legacy) = log_paths();
        let mut small = config(&path);
        small.wal.chunk_max_records = Some(20);
        small.log_cache_max_items = Some(2);
        let mut log = reopen_with(&path, &legacy, small.clone()).await;
        log.blocking_append((1..=10).map(|i| entry_of(1, i)))
            .await
            .unwrap();
        log.save_committed(Some(entry_of(1, 10).log_id))
            .await
            .unwrap();
        log.blocking_append((11..=18).map(|i| entry_of(3, i)))
            .await
            .unwrap();
        assert!(!log.log().unwrap().stat().closed_chunks.is_empty());
        log.truncate(entry_of(3, 11).log_id).await.unwrap();
        log.blocking_append((11..=16).map(|i| entry_of(2, i)))
            .await
            .unwrap();
        let read_back = |mut log: LogStore| async move {
            let entries = log.try_get_log_entries(11..17).await.unwrap();
            assert_eq!(indexes(&entries), (11..=16).collect::<Vec<_>>());
            assert!(entries.iter().all(|e| e.log_id.leader_id.term == 2));
        };
        read_back(log).await;
        read_back(reopen_with(&path, &legacy, small).await).await;
    }

    #[tokio::test]
    async fn entries_older_than_the_cache_are_read_from_their_chunk() {
        let (_dir, path, legacy) = log_paths();
        // Small chunks and cache: most entries end up in closed chunks, out of the cache.
        let mut small = config(&path);
        small.wal.chunk_max_size = Some(16 * 1024);
        small.log_cache_capacity = Some(4 * 1024);
        small.log_cache_max_items = Some(16);
        let count = 1000;
        let mut log = reopen_with(&path, &legacy, small.clone()).await;
        log.blocking_append((1..=count).map(|i| entry_of(1, i)))
            .await
            .unwrap();
        let read_all = |mut log: LogStore| async move {
            let entries = log.try_get_log_entries(1..=count).await.unwrap();
            assert_eq!(indexes(&entries), (1..=count).collect::<Vec<_>>());
            assert!(
                matches!(&entries[0].payload, EntryPayload::Normal(r) if r.commands == [b"command 1"])
            );
            let stat = log.log().unwrap().stat();
            assert!(stat.closed_chunks.len() > 2, "{stat}");
            assert!(stat.payload_cache_miss > 0, "{stat}");
            // Eviction is lazy (on the next insert past the bounds), but it happens.
            assert!(stat.payload_cache_item_count < count, "{stat}");
        };
        read_all(log).await;
        // Reopened, the log replays every chunk, and the cache keeps to its bound again.
        read_all(reopen_with(&path, &legacy, small).await).await;
    }
}
