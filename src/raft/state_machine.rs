//! The Raft state machine: the MVCC store, plus the last applied log id and membership, which
//! are stored in the same redb transaction as the data they describe (the store's `consensus`
//! position). Snapshots are a consistent read of the whole store.
//!
//! Invariants:
//! - `applied_state` after a restart is exactly the position of the last committed apply;
//! - a snapshot's metadata is the position recorded *inside* the snapshot, so they agree;
//! - the newest snapshot is kept on disk (`DATA/state/snapshot.*`) so a restarted member can
//!   still send it to a lagging follower after its log was purged;
//! - the kept snapshot only ever moves forward: a snapshot built from an older state (a builder
//!   runs beside the worker that installs the leader's snapshots) never replaces a newer one.

use std::io::Cursor;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use openraft::storage::RaftStateMachine;
use openraft::{
    AnyError, Entry, EntryPayload, LogId, OptionalSend, RaftSnapshotBuilder, Snapshot,
    SnapshotMeta, StorageError, StorageIOError, StoredMembership,
};
use serde::{Deserialize, Serialize};

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

#[derive(Serialize, Deserialize)]
struct StoredSnapshot {
    meta: SnapshotMeta<NodeId, MemberNode>,
    #[serde(with = "serde_bytes")]
    data: Vec<u8>,
}

/// The start of a [`StoredSnapshot`]: reading it reads the metadata and not the data.
#[derive(Deserialize)]
struct StoredSnapshotMeta {
    meta: SnapshotMeta<NodeId, MemberNode>,
}

/// What a state machine and its snapshot builders know of the kept snapshot file.
enum KeptSnapshot {
    /// Not looked at since the member started.
    Unread,
    /// The last log id of the snapshot in the file (`None`: no file, or an empty snapshot).
    Covers(Option<LogId<NodeId>>),
}

/// The kept snapshot file, shared by a state machine and every snapshot builder cloned from it.
/// openraft runs a build beside the worker that installs snapshots sent by the leader, so two
/// saves can overlap: they take turns (both write the same pending file, which each would delete
/// under the other), and a build that finishes after a newer snapshot was installed leaves the
/// newer one in place (the log is already purged up to it).
#[derive(Clone)]
struct SnapshotFile {
    path: PathBuf,
    kept: Arc<Mutex<KeptSnapshot>>,
}

impl SnapshotFile {
    /// Replaces the kept snapshot, durably, unless the kept one is at least as new (then
    /// returns false): the log is purged behind the snapshot next, so after a crash the file
    /// must hold this snapshot, not the one before. Written as it is serialized (a whole second
    /// copy in memory would double the peak of a large store's snapshot). Blocking: file I/O
    /// and fsyncs, and a wait for an overlapping save.
    fn save(&self, snapshot: &StoredSnapshot) -> StoreResult<bool> {
        let mut kept = self
            .kept
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let kept_covers = match *kept {
            KeptSnapshot::Covers(last_log_id) => last_log_id,
            KeptSnapshot::Unread => self.read_meta()?.and_then(|meta| meta.last_log_id),
        };
        // An equal one holds the same state (a build can read the store just after an install
        // restored it): either copy serves.
        if kept_covers.is_some() && kept_covers >= snapshot.meta.last_log_id {
            *kept = KeptSnapshot::Covers(kept_covers);
            return Ok(false);
        }
        // Private: unlike a backup, a Raft snapshot holds the cluster's secrets (join tokens).
        crate::pki::replace_file_with(&self.path, true, |file| {
            let mut out = std::io::BufWriter::new(file);
            bincode::serialize_into(&mut out, snapshot).map_err(std::io::Error::other)?;
            std::io::Write::flush(&mut out)
        })
        .map_err(snapshot_error)?;
        *kept = KeptSnapshot::Covers(snapshot.meta.last_log_id);
        Ok(true)
    }

    /// The kept snapshot's metadata, read without its data.
    fn read_meta(&self) -> StoreResult<Option<SnapshotMeta<NodeId, MemberNode>>> {
        match std::fs::File::open(&self.path) {
            Ok(file) => {
                let header: StoredSnapshotMeta =
                    bincode::deserialize_from(std::io::BufReader::new(file)).map_err(read_error)?;
                Ok(Some(header.meta))
            }
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(error) => Err(read_error(error)),
        }
    }

    fn load(&self) -> StoreResult<Option<StoredSnapshot>> {
        match std::fs::read(&self.path) {
            Ok(bytes) => Ok(Some(bincode::deserialize(&bytes).map_err(read_error)?)),
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(error) => Err(read_error(error)),
        }
    }
}

#[derive(Clone)]
pub struct StateMachine {
    store: Arc<Store>,
    snapshot_file: SnapshotFile,
    /// The position as the last apply left it, so that an apply needs no read of the store
    /// (which would commit the store's open batch every time). `None`: read it from the store.
    position: Option<Position>,
}

impl StateMachine {
    pub fn new(store: Arc<Store>, snapshot_path: PathBuf) -> Self {
        StateMachine {
            store,
            snapshot_file: SnapshotFile {
                path: snapshot_path,
                kept: Arc::new(Mutex::new(KeptSnapshot::Unread)),
            },
            position: None,
        }
    }

    /// [`SnapshotFile::save`] off the async workers; gives the snapshot back.
    async fn save_snapshot(&self, snapshot: StoredSnapshot) -> StoreResult<StoredSnapshot> {
        let file = self.snapshot_file.clone();
        tokio::task::spawn_blocking(move || file.save(&snapshot).map(|_| snapshot))
            .await
            .map_err(snapshot_error)?
    }
}

impl RaftSnapshotBuilder<TypeConfig> for StateMachine {
    async fn build_snapshot(&mut self) -> StoreResult<Snapshot<TypeConfig>> {
        let store = self.store.clone();
        let (data, position) = tokio::task::spawn_blocking(move || {
            let mut data = Vec::new();
            let position = store.write_snapshot(&mut data)?;
            Ok::<_, crate::mvcc::SnapshotError>((data, position))
        })
        .await
        .map_err(snapshot_error)?
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
        let stored = StoredSnapshot {
            meta: SnapshotMeta {
                last_log_id: position.last_applied,
                last_membership: position.membership,
                snapshot_id,
            },
            data,
        };
        // Not saved when a newer snapshot was installed meanwhile; openraft then drops this one
        // too, as older than the snapshot it already has.
        let stored = self.save_snapshot(stored).await?;
        Ok(Snapshot {
            meta: stored.meta,
            snapshot: Box::new(Cursor::new(stored.data)),
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

    async fn begin_receiving_snapshot(&mut self) -> StoreResult<Box<Cursor<Vec<u8>>>> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta<NodeId, MemberNode>,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> StoreResult<()> {
        self.position = None;
        let data = snapshot.into_inner();
        let store = self.store.clone();
        let restored = data.clone();
        tokio::task::spawn_blocking(move || store.restore_snapshot(restored.as_slice()))
            .await
            .map_err(snapshot_error)?
            .map_err(snapshot_error)?;
        self.save_snapshot(StoredSnapshot {
            meta: meta.clone(),
            data,
        })
        .await?;
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> StoreResult<Option<Snapshot<TypeConfig>>> {
        let file = self.snapshot_file.clone();
        let stored = tokio::task::spawn_blocking(move || file.load())
            .await
            .map_err(read_error)??;
        Ok(stored.map(|stored| Snapshot {
            meta: stored.meta,
            snapshot: Box::new(Cursor::new(stored.data)),
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
        let mut machine = StateMachine::new(store.clone(), dir.path().join("snapshot.bin"));
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

    /// A state machine holding puts of keys `0..count`, one entry each, and its snapshot of them.
    async fn machine_with_puts(
        dir: &std::path::Path,
        count: u64,
    ) -> (StateMachine, Snapshot<TypeConfig>) {
        let store = Arc::new(Store::open(&dir.join("mvcc.redb")).unwrap());
        let mut machine = StateMachine::new(store, dir.join("snapshot.bin"));
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

    fn kept_index(machine: &StateMachine) -> Option<u64> {
        let meta = machine
            .snapshot_file
            .read_meta()
            .unwrap()
            .expect("a kept snapshot");
        meta.last_log_id.map(|log_id| log_id.index)
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
        let older = StoredSnapshot {
            meta: older.meta,
            data: older.snapshot.into_inner(),
        };

        follower
            .install_snapshot(&newer.meta, newer.snapshot)
            .await
            .unwrap();
        assert_eq!(kept_index(&follower), Some(10));
        let mode = std::fs::metadata(&follower.snapshot_file.path)
            .unwrap()
            .permissions();
        assert_eq!(
            std::os::unix::fs::PermissionsExt::mode(&mode) & 0o777,
            0o600,
            "the snapshot holds the join tokens"
        );
        // The build that read the store before the install finishes after it.
        assert!(!builder.snapshot_file.save(&older).unwrap());
        assert_eq!(kept_index(&follower), Some(10));
        let current = follower.get_current_snapshot().await.unwrap().unwrap();
        assert_eq!(current.meta.last_log_id.map(|id| id.index), Some(10));

        // After a restart too, from the file alone.
        let store = follower.store.clone();
        drop((follower, builder));
        let restarted = StateMachine::new(store, follower_dir.path().join("snapshot.bin"));
        assert!(!restarted.snapshot_file.save(&older).unwrap());
        assert_eq!(kept_index(&restarted), Some(10));
    }

    #[tokio::test]
    async fn overlapping_snapshot_saves_all_succeed_and_the_newest_is_kept() {
        let dir = tempfile::tempdir().unwrap();
        let (machine, snapshot) = machine_with_puts(dir.path(), 3).await;
        let data = snapshot.snapshot.into_inner();
        let saves: Vec<StoredSnapshot> = (4..=11)
            .map(|index| {
                let mut meta = snapshot.meta.clone();
                meta.last_log_id = Some(LogId::new(CommittedLeaderId::new(1, 1), index));
                StoredSnapshot {
                    meta,
                    data: data.clone(),
                }
            })
            .collect();
        std::thread::scope(|scope| {
            for save in &saves {
                let saver = machine.clone();
                scope.spawn(move || saver.snapshot_file.save(save).unwrap());
            }
        });
        assert_eq!(kept_index(&machine), Some(11));
    }
}
