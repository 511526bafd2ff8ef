//! Online defragmentation: the store is copied, table by table, from one read transaction into a
//! fresh redb file beside it, while reads and writes go on against the old file. Writes applied
//! meanwhile are journaled (their commands, in order) and replayed onto the copy; then, with
//! writers held for just that replay, the copy is renamed over the old file and becomes the
//! store's database. Readers that began on the old file finish on it.
//!
//! Invariants:
//! - the copy equals the old database at the instant of the switch: the read transaction and
//!   the start of the journal are taken under the writer lock, so every write is either in the
//!   copy or in the journal, and applying is deterministic;
//! - the switch happens only after the copy is durable, and by one rename, so a crash at any
//!   point leaves either the old file or the complete new one at the store's path (a leftover
//!   `*.defrag` file is removed when the store opens);
//! - a snapshot install or a cluster reset during the copy interrupts the defragmentation (the
//!   copy would be of contents that no longer exist) instead of being lost.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use redb::{Database, Key, ReadTransaction, ReadableDatabase, TableDefinition, Value};

use super::{
    apply_commands, MvccError, Store, BY_REVISION, CONSENSUS, HISTORY, LATEST, LEASES, LEASE_KEYS,
    META, SETTINGS,
};

/// Writes applied while a defragmentation copies the store.
pub(super) enum Journal {
    Off,
    Recording(Vec<Journaled>),
    /// The store was replaced wholesale during the copy.
    Interrupted,
}

pub(super) struct Journaled {
    commands: Vec<Vec<u8>>,
    consensus: Vec<u8>,
}

impl Journal {
    pub(super) fn record(&mut self, commands: &[&[u8]], consensus: &[u8]) {
        if let Journal::Recording(journal) = self {
            journal.push(Journaled {
                commands: commands.iter().map(|command| command.to_vec()).collect(),
                consensus: consensus.to_vec(),
            });
        }
    }

    pub(super) fn interrupt(&mut self) {
        if !matches!(self, Journal::Off) {
            *self = Journal::Interrupted;
        }
    }
}

/// What a defragmentation did, for logs.
#[derive(Debug, Clone, Copy)]
pub struct DefragmentReport {
    pub size_before: u64,
    pub size_after: u64,
    /// Writes applied during the copy and replayed onto it.
    pub replayed_batches: usize,
}

fn copy_path(path: &Path) -> PathBuf {
    path.with_extension("defrag")
}

/// Removes the copy a crashed defragmentation left behind.
pub(super) fn remove_leftover(path: &Path) -> Result<(), MvccError> {
    Ok(crate::pki::remove_if_present(&copy_path(path))?)
}

impl Store {
    /// Rewrites the database file compactly without stopping reads or writes (see the module
    /// documentation). Writers wait only while the writes made during the copy are replayed.
    pub fn defragment(&self) -> Result<DefragmentReport, MvccError> {
        let _one_at_a_time = self.defragmenting.lock().unwrap_or_else(|e| e.into_inner());
        let size_before = self.file_size();
        let copy = copy_path(&self.path);
        remove_leftover(&self.path)?;
        let source = self.start_journal()?;
        let switched = self.copy_and_switch(source, &copy);
        if switched.is_err() {
            self.writer().journal = Journal::Off;
            let _ = std::fs::remove_file(&copy);
        }
        let replayed_batches = switched?;
        Ok(DefragmentReport {
            size_before,
            size_after: self.file_size(),
            replayed_batches,
        })
    }

    /// Starts journaling writes, and returns the read the copy is made from: everything
    /// applied is either in it or in the journal.
    fn start_journal(&self) -> Result<ReadTransaction, MvccError> {
        let mut writer = self.settled_writer()?;
        writer.journal = Journal::Recording(Vec::new());
        Ok(self.db().begin_read()?)
    }

    fn copy_and_switch(&self, source: ReadTransaction, copy: &Path) -> Result<usize, MvccError> {
        let target = super::open_database(copy)?;
        copy_table(&source, &target, LATEST)?;
        copy_table(&source, &target, HISTORY)?;
        copy_table(&source, &target, BY_REVISION)?;
        copy_table(&source, &target, META)?;
        copy_table(&source, &target, CONSENSUS)?;
        copy_table(&source, &target, SETTINGS)?;
        copy_table(&source, &target, LEASES)?;
        copy_table(&source, &target, LEASE_KEYS)?;
        drop(source);

        // The batch open on the old file is committed there: its applies are in the journal too,
        // and the next apply must begin its transaction on the copy.
        let mut writer = self.settled_writer()?;
        let journal = match std::mem::replace(&mut writer.journal, Journal::Off) {
            Journal::Recording(journal) => journal,
            Journal::Interrupted | Journal::Off => return Err(MvccError::DefragmentInterrupted),
        };
        // Durable (redb's default) before it replaces anything.
        let replay = target.begin_write()?;
        for batch in &journal {
            let commands: Vec<&[u8]> = batch.commands.iter().map(Vec::as_slice).collect();
            apply_commands(&replay, &commands, &batch.consensus)?;
        }
        replay.commit()?;
        std::fs::rename(copy, &self.path)?;
        // The copy is the store's file from the rename on: switch to it even if the directory
        // sync fails, or later writes would go to the unlinked old file.
        *self.db.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(target);
        writer.last_flush = Instant::now();
        crate::pki::sync_parent(&self.path)?;
        Ok(journal.len())
    }
}

/// Copies every row of `table` from `source` into a new table of `target`, in one non-durable
/// transaction (the caller makes the copy durable at the end).
fn copy_table<K: Key + 'static, V: Value + 'static>(
    source: &ReadTransaction,
    target: &Database,
    table: TableDefinition<K, V>,
) -> Result<(), MvccError> {
    let from = source.open_table(table)?;
    let mut txn = target.begin_write()?;
    txn.set_durability(redb::Durability::None)
        .map_err(|e| MvccError::Storage(e.into()))?;
    {
        let mut to = txn.open_table(table)?;
        for row in redb::ReadableTable::iter(&from)? {
            let (key, value) = row?;
            to.insert(key.value(), value.value())?;
        }
    }
    txn.commit()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicBool, Ordering};

    use super::*;
    use crate::mvcc::encode_command;
    use crate::proto::bulwarkpb::command::Kind;
    use crate::proto::etcdserverpb::{CompactionRequest, DeleteRangeRequest, PutRequest};

    fn put(key: String, value: Vec<u8>) -> Vec<u8> {
        encode_command(Kind::Put(PutRequest {
            key: key.into_bytes(),
            value,
            ..Default::default()
        }))
    }

    /// Everything the store holds, in the snapshot format (every table, the position too).
    fn contents(store: &Store) -> Vec<u8> {
        let mut bytes = Vec::new();
        store.write_snapshot(&mut bytes).unwrap();
        bytes
    }

    fn apply(store: &Store, command: Vec<u8>, index: u64) {
        let results = store.apply(&[&command], &index.to_be_bytes()).unwrap();
        assert!(results[0].is_ok(), "{:?}", results[0]);
    }

    #[test]
    fn defragmenting_keeps_every_row_and_gives_back_the_space_of_deleted_data() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("mvcc.redb");
        let store = Store::open(&path).unwrap();
        let mut index = 0;
        for i in 0..2_000 {
            index += 1;
            apply(&store, put(format!("k{i:05}"), vec![b'x'; 1024]), index);
        }
        index += 1;
        apply(
            &store,
            encode_command(Kind::DeleteRange(DeleteRangeRequest {
                key: b"k".to_vec(),
                range_end: b"l".to_vec(),
                ..Default::default()
            })),
            index,
        );
        let revision = store.status().unwrap().current_revision;
        index += 1;
        apply(
            &store,
            encode_command(Kind::Compaction(CompactionRequest {
                revision,
                physical: true,
            })),
            index,
        );
        apply(&store, put("kept".into(), b"v".to_vec()), index + 1);
        store.flush().unwrap();
        let before = contents(&store);

        let report = store.defragment().unwrap();

        assert_eq!(
            contents(&store),
            before,
            "defragmenting changed the contents"
        );
        assert!(
            report.size_after < report.size_before,
            "no space given back: {report:?}"
        );
        assert!(!copy_path(&path).exists(), "the copy is left behind");
        drop(store);
        let reopened = Store::open(&path).unwrap();
        assert_eq!(
            contents(&reopened),
            before,
            "the defragmented file is not the store"
        );
    }

    #[test]
    fn writes_during_a_defragmentation_are_kept_and_the_result_equals_a_store_never_defragmented() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(Store::open(&dir.path().join("defragmented.redb")).unwrap());
        let reference = Store::open(&dir.path().join("reference.redb")).unwrap();
        let commands: Vec<Vec<u8>> = (0..3_000)
            .map(|i| put(format!("k{:04}", i % 700), format!("v{i}").into_bytes()))
            .collect();
        for (index, command) in commands[..1_000].iter().enumerate() {
            apply(&store, command.clone(), index as u64);
        }

        // Writes keep going while defragmentations run, until both are done.
        let writing = Arc::new(AtomicBool::new(true));
        let writer = {
            let (store, writing, commands) = (store.clone(), writing.clone(), commands.clone());
            std::thread::spawn(move || {
                for (index, command) in commands.iter().enumerate().skip(1_000) {
                    apply(&store, command.clone(), index as u64);
                }
                writing.store(false, Ordering::SeqCst);
            })
        };
        let mut replayed = 0;
        let mut defragmentations = 0;
        while writing.load(Ordering::SeqCst) || defragmentations == 0 {
            replayed += store.defragment().unwrap().replayed_batches;
            defragmentations += 1;
        }
        writer.join().unwrap();
        eprintln!("{defragmentations} defragmentations replayed {replayed} batches");

        for (index, command) in commands.iter().enumerate() {
            apply(&reference, command.clone(), index as u64);
        }
        assert_eq!(contents(&store), contents(&reference));
    }

    #[test]
    fn a_snapshot_restored_during_the_copy_interrupts_the_defragmentation() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("mvcc.redb")).unwrap();
        apply(&store, put("a".into(), b"1".to_vec()), 1);
        let snapshot = contents(&store);
        apply(&store, put("b".into(), b"2".to_vec()), 2);

        // The first half of `defragment`, then a restore, then the switch.
        let source = store.start_journal().unwrap();
        store.restore_snapshot(snapshot.as_slice()).unwrap();
        let copy = copy_path(&store.path);
        assert!(matches!(
            store.copy_and_switch(source, &copy),
            Err(MvccError::DefragmentInterrupted)
        ));
        assert_eq!(
            contents(&store),
            snapshot,
            "the restored snapshot was undone"
        );
    }
}
