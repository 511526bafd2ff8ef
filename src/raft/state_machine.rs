//! The Raft state machine: the MVCC store, plus the last applied log id and membership, which
//! are stored in the same redb transaction as the data they describe (the store's `consensus`
//! position). Snapshots are a consistent read of the whole store, kept on disk by
//! [`SnapshotFiles`] and handed to openraft as open files.
//!
//! Invariants:
//! - `applied_state` after a restart is exactly the position of the last committed apply;
//! - a snapshot's metadata is the position recorded *inside* the snapshot, so they agree;
//! - the newest snapshot is kept on disk so a restarted member can still send it to a lagging
//!   follower after its log was purged, and it only moves forward (`snapshot_files`).

use std::io::{Seek, SeekFrom};
use std::path::PathBuf;
use std::sync::Arc;

use openraft::storage::RaftStateMachine;
use openraft::{
    AnyError, Entry, EntryPayload, LogId, OptionalSend, RaftSnapshotBuilder, Snapshot,
    SnapshotMeta, StorageError, StorageIOError, StoredMembership,
};
use serde::{Deserialize, Serialize};

use super::snapshot_files::SnapshotFiles;
use super::{MemberNode, NodeId, Reply, TypeConfig};
use crate::mvcc::{encode_result, Store};

type StoreResult<T> = Result<T, StorageError<NodeId>>;

fn read_error(error: impl std::error::Error + 'static) -> StorageError<NodeId> {
    StorageIOError::read_state_machine(AnyError::new(&error)).into()
}

fn write_error(error: impl std::error::Error + 'static) -> StorageError<NodeId> {
    StorageIOError::write_state_machine(AnyError::new(&error)).into()
}

fn snapshot_error(error: impl std::error::Error + 'static) -> StorageError<NodeId> {
    StorageIOError::write_snapshot(None, AnyError::new(&error)).into()
}

/// What the state machine stores with its data.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct Position {
    last_applied: Option<LogId<NodeId>>,
    membership: StoredMembership<NodeId, MemberNode>,
}

fn read_position(bytes: Option<Vec<u8>>) -> StoreResult<Position> {
    match bytes {
        Some(bytes) => bincode::deserialize(&bytes).map_err(read_error),
        None => Ok(Position::default()),
    }
}

#[derive(Clone)]
pub struct StateMachine {
    store: Arc<Store>,
    snapshot_files: SnapshotFiles,
    /// The data file the last `begin_receiving_snapshot` made, until it is installed or the next
    /// one begins (the worker's state machine only).
    receiving: Option<PathBuf>,
    /// The position as the last apply left it, so that an apply needs no read of the store
    /// (which would commit the store's open batch every time). `None`: read it from the store.
    position: Option<Position>,
}

impl StateMachine {
    /// `snapshot_dir` holds the kept snapshot; `legacy_snapshot` (earlier versions' single
    /// file) is removed.
    pub fn new(
        store: Arc<Store>,
        snapshot_dir: PathBuf,
        legacy_snapshot: &std::path::Path,
    ) -> std::io::Result<Self> {
        let legacy = [
            legacy_snapshot.to_path_buf(),
            crate::pki::pending(legacy_snapshot),
        ];
        Ok(StateMachine {
            store,
            snapshot_files: SnapshotFiles::open(snapshot_dir, &legacy)?,
            receiving: None,
            position: None,
        })
    }
}

/// Snapshot data as openraft takes it: the data file, open, at its start.
fn snapshot_data(file: std::fs::File) -> Box<tokio::fs::File> {
    Box::new(tokio::fs::File::from_std(file))
}

impl RaftSnapshotBuilder<TypeConfig> for StateMachine {
    async fn build_snapshot(&mut self) -> StoreResult<Snapshot<TypeConfig>> {
        let store = self.store.clone();
        let files = self.snapshot_files.clone();
        let (meta, data) = tokio::task::spawn_blocking(move || {
            let path = files.new_data_path();
            let position = SnapshotFiles::write_data(&path, |out| {
                store.write_snapshot(out).map_err(std::io::Error::other)
            })
            .map_err(snapshot_error)?;
            let position = read_position(position)?;
            let snapshot_id = match &position.last_applied {
                Some(log_id) => format!(
                    "{}-{}-{}",
                    log_id.leader_id,
                    log_id.index,
                    rand::random::<u32>()
                ),
                None => format!("empty-{}", rand::random::<u32>()),
            };
            let meta = SnapshotMeta {
                last_log_id: position.last_applied,
                last_membership: position.membership,
                snapshot_id,
            };
            // Open before it may be dropped: not kept when a newer snapshot was installed
            // meanwhile (openraft then drops this one too, as older than the one it has).
            let data = std::fs::File::open(&path).map_err(snapshot_error)?;
            files.keep(&meta, &path).map_err(snapshot_error)?;
            Ok::<_, StorageError<NodeId>>((meta, data))
        })
        .await
        .map_err(snapshot_error)??;
        Ok(Snapshot {
            meta,
            snapshot: snapshot_data(data),
        })
    }
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotBuilder = StateMachine;

    async fn applied_state(
        &mut self,
    ) -> StoreResult<(Option<LogId<NodeId>>, StoredMembership<NodeId, MemberNode>)> {
        let position = read_position(self.store.consensus_state().map_err(read_error)?)?;
        self.position = Some(position.clone());
        Ok((position.last_applied, position.membership))
    }

    async fn apply<I>(&mut self, entries: I) -> StoreResult<Vec<Reply>>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut position = match self.position.take() {
            Some(position) => position,
            None => read_position(self.store.consensus_state().map_err(read_error)?)?,
        };
        // For each entry, how many commands it carries (and so how many results it gets).
        let mut commands_per_entry = Vec::new();
        let mut commands = Vec::new();
        for entry in entries {
            position.last_applied = Some(entry.log_id);
            match entry.payload {
                EntryPayload::Normal(request) => {
                    commands_per_entry.push(request.commands.len());
                    commands.extend(request.commands);
                }
                EntryPayload::Membership(membership) => {
                    position.membership = StoredMembership::new(Some(entry.log_id), membership);
                    commands_per_entry.push(0);
                }
                EntryPayload::Blank => commands_per_entry.push(0),
            }
        }
        if commands_per_entry.is_empty() {
            self.position = Some(position);
            return Ok(Vec::new());
        }
        let encoded_position = bincode::serialize(&position).map_err(write_error)?;
        let store = self.store.clone();
        let results = tokio::task::spawn_blocking(move || {
            let slices: Vec<&[u8]> = commands.iter().map(Vec::as_slice).collect();
            store.apply(&slices, &encoded_position)
        })
        .await
        .map_err(write_error)?
        .map_err(write_error)?;
        self.position = Some(position);
        let mut results = results.iter().map(encode_result);
        Ok(commands_per_entry
            .into_iter()
            .map(|count| Reply {
                results: results.by_ref().take(count).collect(),
            })
            .collect())
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn begin_receiving_snapshot(&mut self) -> StoreResult<Box<tokio::fs::File>> {
        let files = self.snapshot_files.clone();
        // A transfer begun before and not installed (abandoned, or skipped by openraft as not
        // newer) leaves a file as large as the store: dropped now. An install still reading it
        // holds it open, and keeps a copy (`SnapshotFiles::adopt_received`).
        let abandoned = self.receiving.take();
        let (path, file) = tokio::task::spawn_blocking(move || {
            if let Some(abandoned) = abandoned {
                crate::pki::remove_if_present(&abandoned)?;
            }
            let path = files.new_data_path();
            let file = crate::pki::create_private_file(&path)?;
            Ok::<_, std::io::Error>((path, file))
        })
        .await
        .map_err(snapshot_error)?
        .map_err(snapshot_error)?;
        self.receiving = Some(path);
        Ok(snapshot_data(file))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta<NodeId, MemberNode>,
        snapshot: Box<tokio::fs::File>,
    ) -> StoreResult<()> {
        self.position = None;
        let mut received = snapshot.into_std().await;
        // Usually the file the last `begin_receiving_snapshot` made, but not always: openraft
        // can begin receiving another snapshot (a new leader's) before it installs this one.
        let begun = self.receiving.take();
        let store = self.store.clone();
        let files = self.snapshot_files.clone();
        let meta = meta.clone();
        tokio::task::spawn_blocking(move || {
            let path = files
                .adopt_received(&mut received, begun)
                .map_err(snapshot_error)?;
            received.seek(SeekFrom::Start(0)).map_err(snapshot_error)?;
            store
                .restore_snapshot(std::io::BufReader::new(received))
                .map_err(snapshot_error)?;
            files.keep(&meta, &path).map_err(snapshot_error)
        })
        .await
        .map_err(snapshot_error)??;
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> StoreResult<Option<Snapshot<TypeConfig>>> {
        let files = self.snapshot_files.clone();
        let current = tokio::task::spawn_blocking(move || files.open_current())
            .await
            .map_err(read_error)?
            .map_err(read_error)?;
        Ok(current.map(|(current, data)| Snapshot {
            meta: current.meta,
            snapshot: snapshot_data(data),
        }))
    }
}

#[cfg(test)]
mod tests {
    use openraft::{CommittedLeaderId, Membership};

    use super::*;
    use crate::mvcc::{decode_result, encode_command, CommandResponse};
    use crate::proto::bulwarkpb::command::Kind;
    use crate::proto::etcdserverpb::PutRequest;
    use crate::raft::Request;

    fn put(key: &str) -> Vec<u8> {
        encode_command(Kind::Put(PutRequest {
            key: key.into(),
            value: b"v".to_vec(),
            ..Default::default()
        }))
    }

    fn entry(index: u64, payload: EntryPayload<TypeConfig>) -> Entry<TypeConfig> {
        Entry {
            log_id: LogId::new(CommittedLeaderId::new(1, 1), index),
            payload,
        }
    }

    fn revision_of(result: &[u8]) -> i64 {
        match decode_result(result).unwrap() {
            CommandResponse::Put(put) => put.header.unwrap().revision,
            other => panic!("not a put: {other:?}"),
        }
    }

    #[tokio::test]
    async fn each_command_of_a_batched_entry_gets_its_own_result_and_revision() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(Store::open(&dir.path().join("mvcc.redb")).unwrap());
        let mut machine = open_machine(dir.path(), store.clone());
        let membership = Membership::new(vec![std::collections::BTreeSet::from([1])], None);
        let replies = machine
            .apply([
                entry(
                    1,
                    EntryPayload::Normal(Request {
                        commands: vec![put("a"), put("b")],
                    }),
                ),
                entry(2, EntryPayload::Membership(membership)),
                entry(3, EntryPayload::Blank),
                entry(
                    4,
                    EntryPayload::Normal(Request {
                        commands: vec![put("c")],
                    }),
                ),
            ])
            .await
            .unwrap();

        let revisions: Vec<Vec<i64>> = replies
            .iter()
            .map(|reply| reply.results.iter().map(|r| revision_of(r)).collect())
            .collect();
        assert_eq!(revisions, vec![vec![2, 3], vec![], vec![], vec![4]]);
        let (applied, _) = machine.applied_state().await.unwrap();
        assert_eq!(applied.map(|id| id.index), Some(4));
    }

    /// A state machine in `dir` holding puts of keys `1..=count`, one entry each, and its
    /// snapshot of them.
    async fn machine_with_puts(
        dir: &std::path::Path,
        count: u64,
    ) -> (StateMachine, Snapshot<TypeConfig>) {
        let store = Arc::new(Store::open(&dir.join("mvcc.redb")).unwrap());
        let mut machine = open_machine(dir, store);
        let entries = (1..=count).map(|index| {
            entry(
                index,
                EntryPayload::Normal(Request {
                    commands: vec![put(&index.to_string())],
                }),
            )
        });
        machine.apply(entries.collect::<Vec<_>>()).await.unwrap();
        let snapshot = machine
            .get_snapshot_builder()
            .await
            .build_snapshot()
            .await
            .unwrap();
        (machine, snapshot)
    }

    fn open_machine(dir: &std::path::Path, store: Arc<Store>) -> StateMachine {
        StateMachine::new(store, dir.join("snapshot"), &dir.join("snapshot.bin")).unwrap()
    }

    fn kept_index(machine: &StateMachine) -> Option<u64> {
        let current = machine.snapshot_files.current();
        current
            .and_then(|current| current.meta.last_log_id)
            .map(|log_id| log_id.index)
    }

    /// The names in the snapshot directory, sorted.
    fn snapshot_dir_names(dir: &std::path::Path) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(dir.join("snapshot"))
            .unwrap()
            .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    async fn read_all(mut data: Box<tokio::fs::File>) -> Vec<u8> {
        let mut bytes = Vec::new();
        tokio::io::AsyncReadExt::read_to_end(&mut data, &mut bytes)
            .await
            .unwrap();
        bytes
    }

    /// The kept snapshot's data, as `get_current_snapshot` serves it.
    async fn kept_bytes(machine: &mut StateMachine) -> Vec<u8> {
        let current = machine.get_current_snapshot().await.unwrap();
        read_all(current.expect("a kept snapshot").snapshot).await
    }

    /// Writes `bytes` into a file being received, then, when `last`, ends it as openraft's
    /// chunked transport does.
    async fn write_chunk(receiving: &mut tokio::fs::File, bytes: &[u8], last: bool) {
        tokio::io::AsyncWriteExt::write_all(receiving, bytes)
            .await
            .unwrap();
        if last {
            tokio::io::AsyncWriteExt::shutdown(receiving).await.unwrap();
        }
    }

    /// A follower receives `snapshot` as openraft's chunked transport does: into the file
    /// `begin_receiving_snapshot` gives, then installed.
    async fn receive(follower: &mut StateMachine, snapshot: Snapshot<TypeConfig>) {
        let bytes = read_all(snapshot.snapshot).await;
        let mut receiving = follower.begin_receiving_snapshot().await.unwrap();
        write_chunk(&mut receiving, &bytes, true).await;
        follower
            .install_snapshot(&snapshot.meta, receiving)
            .await
            .unwrap();
    }

    /// Only `current` and the one data file it names are left in the snapshot directory.
    #[track_caller]
    fn assert_only_the_kept_files(dir: &std::path::Path) {
        let names = snapshot_dir_names(dir);
        assert_eq!(names.len(), 2, "{names:?}");
    }

    #[tokio::test]
    async fn a_snapshot_goes_to_a_private_file_and_restores_the_same_store_elsewhere() {
        let leader_dir = tempfile::tempdir().unwrap();
        let (mut leader, built) = machine_with_puts(leader_dir.path(), 10).await;
        assert_eq!(built.meta.last_log_id.map(|id| id.index), Some(10));
        assert_eq!(kept_index(&leader), Some(10));
        // `current` and one data file, both only the member's to read (join tokens).
        assert_only_the_kept_files(leader_dir.path());
        for name in &snapshot_dir_names(leader_dir.path()) {
            let path = leader_dir.path().join("snapshot").join(name);
            let mode = std::fs::metadata(&path).unwrap().permissions();
            assert_eq!(
                std::os::unix::fs::PermissionsExt::mode(&mode) & 0o777,
                0o600,
                "{name}"
            );
        }

        let current = leader.get_current_snapshot().await.unwrap().unwrap();
        assert_eq!(current.meta, built.meta);
        let follower_dir = tempfile::tempdir().unwrap();
        let follower_store = Arc::new(Store::open(&follower_dir.path().join("mvcc.redb")).unwrap());
        let mut follower = open_machine(follower_dir.path(), follower_store.clone());
        receive(&mut follower, current).await;
        assert_eq!(kept_index(&follower), Some(10));
        let (applied, _) = follower.applied_state().await.unwrap();
        assert_eq!(applied.map(|id| id.index), Some(10));
        assert_eq!(
            follower_store.hash_kv(0).unwrap(),
            leader.store.hash_kv(0).unwrap()
        );
        // Received and kept: the received file is the kept one, nothing else is left.
        assert_only_the_kept_files(follower_dir.path());
        assert_eq!(
            kept_bytes(&mut follower).await,
            kept_bytes(&mut leader).await
        );
    }

    /// openraft can begin receiving a new leader's snapshot before it installs the one it
    /// received last: each install must keep the data it was given, not the file begun last.
    #[tokio::test]
    async fn a_snapshot_installed_after_another_transfer_began_keeps_its_own_data() {
        let (first_dir, second_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let (mut first_leader, _) = machine_with_puts(first_dir.path(), 10).await;
        let (mut second_leader, _) = machine_with_puts(second_dir.path(), 20).await;
        let first = first_leader.get_current_snapshot().await.unwrap().unwrap();
        let second = second_leader.get_current_snapshot().await.unwrap().unwrap();
        let (first_meta, second_meta) = (first.meta.clone(), second.meta.clone());
        let first_bytes = read_all(first.snapshot).await;
        let second_bytes = read_all(second.snapshot).await;
        let follower_dir = tempfile::tempdir().unwrap();
        let store = Arc::new(Store::open(&follower_dir.path().join("mvcc.redb")).unwrap());
        let mut follower = open_machine(follower_dir.path(), store);

        let mut receiving_first = follower.begin_receiving_snapshot().await.unwrap();
        write_chunk(&mut receiving_first, &first_bytes, true).await;
        let mut receiving_second = follower.begin_receiving_snapshot().await.unwrap();
        write_chunk(&mut receiving_second, &second_bytes[..100], false).await;
        follower
            .install_snapshot(&first_meta, receiving_first)
            .await
            .unwrap();
        assert_eq!(kept_index(&follower), Some(10));
        assert_eq!(kept_bytes(&mut follower).await, first_bytes);

        write_chunk(&mut receiving_second, &second_bytes[100..], true).await;
        follower
            .install_snapshot(&second_meta, receiving_second)
            .await
            .unwrap();
        assert_eq!(kept_index(&follower), Some(20));
        assert_eq!(kept_bytes(&mut follower).await, second_bytes);
        let (applied, _) = follower.applied_state().await.unwrap();
        assert_eq!(applied.map(|id| id.index), Some(20));
        assert_only_the_kept_files(follower_dir.path());
    }

    /// The failure this guards against: a member cut off from the leader started building a
    /// snapshot, installed a newer one from the leader meanwhile (purging its log up to it), and
    /// then both saves wrote the same pending file: one failed, which stopped Raft on that
    /// member, and an older build could have replaced the newer snapshot.
    #[tokio::test]
    async fn a_snapshot_built_from_an_older_state_never_replaces_a_newer_one() {
        let leader_dir = tempfile::tempdir().unwrap();
        let (_, newer) = machine_with_puts(leader_dir.path(), 10).await;
        let follower_dir = tempfile::tempdir().unwrap();
        let (mut follower, older) = machine_with_puts(follower_dir.path(), 3).await;
        let builder = follower.get_snapshot_builder().await;
        let older_bytes = read_all(older.snapshot).await;

        receive(&mut follower, newer).await;
        assert_eq!(kept_index(&follower), Some(10));
        // The build that read the store before the install finishes after it.
        let late = builder.snapshot_files.new_data_path();
        SnapshotFiles::write_data(&late, |out| std::io::Write::write_all(out, &older_bytes))
            .unwrap();
        assert!(!builder.snapshot_files.keep(&older.meta, &late).unwrap());
        assert!(!late.exists(), "a snapshot not kept leaves no file");
        assert_eq!(kept_index(&follower), Some(10));
        let current = follower.get_current_snapshot().await.unwrap().unwrap();
        assert_eq!(current.meta.last_log_id.map(|id| id.index), Some(10));

        // After a restart too, from the files alone.
        let store = follower.store.clone();
        drop((follower, builder));
        let restarted = open_machine(follower_dir.path(), store);
        assert_eq!(kept_index(&restarted), Some(10));
        let late = restarted.snapshot_files.new_data_path();
        SnapshotFiles::write_data(&late, |out| std::io::Write::write_all(out, &older_bytes))
            .unwrap();
        assert!(!restarted.snapshot_files.keep(&older.meta, &late).unwrap());
        assert_eq!(kept_index(&restarted), Some(10));
    }

    #[tokio::test]
    async fn overlapping_snapshot_saves_all_succeed_and_the_newest_is_kept() {
        let dir = tempfile::tempdir().unwrap();
        let (machine, snapshot) = machine_with_puts(dir.path(), 3).await;
        let bytes = read_all(snapshot.snapshot).await;
        let saves: Vec<(SnapshotMeta<NodeId, MemberNode>, PathBuf)> = (4..=11)
            .map(|index| {
                let mut meta = snapshot.meta.clone();
                meta.last_log_id = Some(LogId::new(CommittedLeaderId::new(1, 1), index));
                let path = machine.snapshot_files.new_data_path();
                SnapshotFiles::write_data(&path, |out| std::io::Write::write_all(out, &bytes))
                    .unwrap();
                (meta, path)
            })
            .collect();
        std::thread::scope(|scope| {
            for (meta, path) in &saves {
                let files = machine.snapshot_files.clone();
                scope.spawn(move || files.keep(meta, path).unwrap());
            }
        });
        assert_eq!(kept_index(&machine), Some(11));
        assert_only_the_kept_files(dir.path());
    }

    #[tokio::test]
    async fn a_start_removes_unnamed_data_files_and_the_old_single_file_snapshot() {
        let dir = tempfile::tempdir().unwrap();
        let (machine, _) = machine_with_puts(dir.path(), 3).await;
        let kept = snapshot_dir_names(dir.path());
        let stray = machine.snapshot_files.new_data_path();
        std::fs::write(&stray, b"a build a crash interrupted").unwrap();
        std::fs::write(dir.path().join("snapshot.bin"), b"an earlier version's").unwrap();
        std::fs::write(dir.path().join("snapshot.bin.pending"), b"half").unwrap();

        std::fs::write(dir.path().join("snapshot/current.pending"), b"half").unwrap();
        std::fs::create_dir(dir.path().join("snapshot/not-ours")).unwrap();

        // An earlier version's snapshot is there: written after `current`, which is older.
        let restarted = open_machine(dir.path(), machine.store.clone());
        let mut left = kept.clone();
        left.push("not-ours".to_string());
        left.retain(|name| name != "current" && !name.ends_with(".data"));
        assert_eq!(snapshot_dir_names(dir.path()), left);
        assert!(!dir.path().join("snapshot.bin").exists());
        assert!(!dir.path().join("snapshot.bin.pending").exists());
        assert_eq!(kept_index(&restarted), None);

        // Without it, `current` and its data file stay.
        let built = restarted
            .clone()
            .get_snapshot_builder()
            .await
            .build_snapshot()
            .await
            .unwrap();
        assert_eq!(built.meta.last_log_id.map(|id| id.index), Some(3));
        let kept = snapshot_dir_names(dir.path());
        let again = open_machine(dir.path(), machine.store.clone());
        assert_eq!(snapshot_dir_names(dir.path()), kept);
        assert_eq!(kept_index(&again), Some(3));

        // A `current` naming a data file that is gone is no snapshot.
        let data_file = again.snapshot_files.current().unwrap().data_file;
        std::fs::remove_file(dir.path().join("snapshot").join(data_file)).unwrap();
        let without_data = open_machine(dir.path(), machine.store.clone());
        assert_eq!(kept_index(&without_data), None);
        assert!(without_data
            .clone()
            .get_current_snapshot()
            .await
            .unwrap()
            .is_none());
    }
}
