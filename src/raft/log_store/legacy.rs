//! The one-time move of a Raft log written by earlier versions, in redb (`raft/log.redb`:
//! table `entries`, log index -> bincode `Entry`; table `state`, `vote` / `committed` /
//! `last_purged` -> bincode values), into the write-ahead log in `raft/log/`.
//!
//! Crash-safe: the new log is written whole in a directory beside its final place, synced, then
//! renamed into place (one atomic step), and only then is `log.redb` removed. A crash before the
//! rename leaves the old log to move again; one after it, an old file the next start removes.

use std::path::{Path, PathBuf};

use openraft::{Entry, LogId, Vote};
use raft_log::api::raft_log_writer::RaftLogWriter;
use redb::{ReadableDatabase, ReadableTable, TableDefinition};

use super::{check_sizes, config, open_log, Bincoded, LogStoreError};
use crate::pki::sync_parent;
use crate::raft::{NodeId, TypeConfig};

const ENTRIES: TableDefinition<u64, &[u8]> = TableDefinition::new("entries");
const STATE: TableDefinition<&str, &[u8]> = TableDefinition::new("state");

/// Entries are handed to the flush thread and synced every this many entries or bytes, so
/// moving a long log takes bounded memory (once synced, the payloads of closed chunks may leave
/// the cache: it holds about a chunk besides its own bounds).
const ENTRIES_PER_FLUSH: usize = 1024;
const BYTES_PER_FLUSH: usize = 16 * 1024 * 1024;

/// Moves the log in `old` (a redb file) into the log directory `new`, if `old` exists; removes
/// `old` when `new` already exists (the move finished, but not its clean-up).
pub(super) fn move_into(old: &Path, new: &Path) -> Result<(), LogStoreError> {
    let failed =
        |error: &dyn std::fmt::Display| LogStoreError::Legacy(old.into(), error.to_string());
    if !old.exists() {
        return Ok(());
    }
    if !new.exists() {
        let staging = staging_dir(new);
        if staging.exists() {
            std::fs::remove_dir_all(&staging).map_err(|e| failed(&e))?;
        }
        copy_log(old, &staging).map_err(|e| failed(&e))?;
        // The chunk files' names are durable before the directory takes its final name.
        std::fs::File::open(&staging)
            .and_then(|dir| dir.sync_all())
            .map_err(|e| failed(&e))?;
        std::fs::rename(&staging, new).map_err(|e| failed(&e))?;
        sync_parent(new).map_err(|e| failed(&e))?;
        tracing::info!(from = %old.display(), to = %new.display(), "moved the Raft log");
    }
    std::fs::remove_file(old).map_err(|e| failed(&e))?;
    sync_parent(old).map_err(|e| failed(&e))
}

fn staging_dir(new: &Path) -> PathBuf {
    let mut name = new.file_name().unwrap_or_default().to_os_string();
    name.push(".moving");
    new.with_file_name(name)
}

#[derive(Debug, thiserror::Error)]
enum MoveError {
    #[error(transparent)]
    Redb(#[from] redb::Error),
    #[error(transparent)]
    Io(#[from] std::io::Error),
    #[error(transparent)]
    Decode(#[from] bincode::Error),
    #[error(transparent)]
    Open(#[from] LogStoreError),
}

impl From<redb::TransactionError> for MoveError {
    fn from(error: redb::TransactionError) -> Self {
        MoveError::Redb(error.into())
    }
}

impl From<redb::TableError> for MoveError {
    fn from(error: redb::TableError) -> Self {
        MoveError::Redb(error.into())
    }
}

impl From<redb::StorageError> for MoveError {
    fn from(error: redb::StorageError) -> Self {
        MoveError::Redb(error.into())
    }
}

fn read_state<T: serde::de::DeserializeOwned>(
    table: &redb::ReadOnlyTable<&str, &[u8]>,
    name: &str,
) -> Result<Option<T>, MoveError> {
    match table.get(name)? {
        Some(bytes) => Ok(Some(bincode::deserialize(bytes.value())?)),
        None => Ok(None),
    }
}

/// Writes everything the redb log at `old` holds into a new log in `dir`, durably.
fn copy_log(old: &Path, dir: &Path) -> Result<(), MoveError> {
    let db = redb::Database::open(old).map_err(redb::Error::from)?;
    let txn = db.begin_read()?;
    let state = txn.open_table(STATE)?;
    let vote: Option<Vote<NodeId>> = read_state(&state, "vote")?;
    let committed: Option<Option<LogId<NodeId>>> = read_state(&state, "committed")?;
    let last_purged: Option<LogId<NodeId>> = read_state(&state, "last_purged")?;

    let mut log = open_log(dir, config(dir))?;
    if let Some(vote) = vote {
        log.save_vote(Bincoded(vote))?;
    }
    if let Some(last_purged) = last_purged {
        log.purge(Bincoded(last_purged))?;
    }
    let entries = txn.open_table(ENTRIES)?;
    let (mut batch, mut batch_bytes) = (Vec::new(), 0);
    for row in entries.iter()? {
        let (_, bytes) = row?;
        batch_bytes += bytes.value().len();
        let entry: Entry<TypeConfig> = bincode::deserialize(bytes.value())?;
        batch.push((Bincoded(entry.log_id), Bincoded(entry.payload)));
        if batch.len() == ENTRIES_PER_FLUSH || batch_bytes >= BYTES_PER_FLUSH {
            check_sizes(&batch)?;
            log.append(std::mem::take(&mut batch))?;
            batch_bytes = 0;
            log.flush(true, None)?;
            log.wait_worker_idle()?;
        }
    }
    check_sizes(&batch)?;
    log.append(batch)?;
    if let Some(committed) = committed.flatten().map(Bincoded) {
        if Some(&committed) <= log.log_state().last() {
            log.commit(committed)?;
        }
    }
    log.flush(true, None)?;
    log.wait_worker_idle()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use openraft::storage::RaftLogStorage;
    use openraft::RaftLogReader;

    use super::super::tests::{assert_state, entry_of, indexes, log_paths, reopen};
    use super::*;

    /// Writes a log as the redb log store of earlier versions did.
    fn write_redb_log(path: &Path, entries: &[Entry<TypeConfig>]) {
        let db = redb::Database::create(path).unwrap();
        let txn = db.begin_write().unwrap();
        {
            let mut table = txn.open_table(ENTRIES).unwrap();
            for entry in entries {
                let bytes = bincode::serialize(entry).unwrap();
                table.insert(entry.log_id.index, bytes.as_slice()).unwrap();
            }
            let mut state = txn.open_table(STATE).unwrap();
            let vote = bincode::serialize(&Vote::<NodeId>::new(3, 2)).unwrap();
            state.insert("vote", vote.as_slice()).unwrap();
            let purged = bincode::serialize(&entry_of(1, 4).log_id).unwrap();
            state.insert("last_purged", purged.as_slice()).unwrap();
            let committed = bincode::serialize(&Some(entry_of(2, 7).log_id)).unwrap();
            state.insert("committed", committed.as_slice()).unwrap();
        }
        txn.commit().unwrap();
    }

    #[tokio::test]
    async fn a_redb_log_moves_into_the_new_log_once() {
        let (_dir, path, legacy) = log_paths();
        let entries: Vec<_> = (5..=8).map(|i| entry_of(2, i)).collect();
        write_redb_log(&legacy, &entries);
        // A move cut short earlier left a half-written directory: it is started over.
        std::fs::create_dir(staging_dir(&path)).unwrap();
        std::fs::write(staging_dir(&path).join("junk"), b"half").unwrap();

        {
            let mut log = reopen(&path, &legacy).await;
            assert!(!legacy.exists());
            assert!(!staging_dir(&path).exists());
            assert_state(
                &mut log,
                [entry_of(1, 4), entry_of(2, 8), entry_of(2, 7)],
                Vote::new(3, 2),
            )
            .await;
            let moved = log.try_get_log_entries(0..).await.unwrap();
            assert_eq!(indexes(&moved), vec![5, 6, 7, 8]);
            assert_eq!(
                format!("{:?}", moved[3].payload),
                format!("{:?}", entries[3].payload)
            );
        }

        // A stale old file beside a finished move (removal cut short) is removed, not moved
        // again over the newer log.
        write_redb_log(&legacy, &[entry_of(1, 5)]);
        let mut log = reopen(&path, &legacy).await;
        assert!(!legacy.exists());
        assert_eq!(
            log.get_log_state().await.unwrap().last_log_id,
            Some(entry_of(2, 8).log_id)
        );
    }
}
