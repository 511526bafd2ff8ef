//! The Raft state machine: the MVCC store, plus the last applied log id and membership, which
//! are stored in the same redb transaction as the data they describe (the store's `consensus`
//! position). Snapshots are a consistent read of the whole store.
//!
//! Invariants:
//! - `applied_state` after a restart is exactly the position of the last committed apply;
//! - a snapshot's metadata is the position recorded *inside* the snapshot, so they agree;
//! - the newest snapshot is kept on disk (`DATA/state/snapshot.*`) so a restarted member can
//!   still send it to a lagging follower after its log was purged.

use std::io::Cursor;
use std::path::PathBuf;
use std::sync::Arc;

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

#[derive(Clone)]
pub struct StateMachine {
    store: Arc<Store>,
    snapshot_path: PathBuf,
    /// The position as the last apply left it, so that an apply needs no read of the store
    /// (which would commit the store's open batch every time). `None`: read it from the store.
    position: Option<Position>,
}

impl StateMachine {
    pub fn new(store: Arc<Store>, snapshot_path: PathBuf) -> Self {
        StateMachine {
            store,
            snapshot_path,
            position: None,
        }
    }

    /// Replaces the kept snapshot, durably: the log is purged behind it next, so after a crash
    /// the file must hold this snapshot, not the one before. Written as it is serialized (a
    /// whole second copy in memory would double the peak of a large store's snapshot).
    fn save_snapshot(&self, snapshot: &StoredSnapshot) -> StoreResult<()> {
        crate::pki::replace_file_with(&self.snapshot_path, false, |file| {
            let mut out = std::io::BufWriter::new(file);
            bincode::serialize_into(&mut out, snapshot).map_err(std::io::Error::other)?;
            std::io::Write::flush(&mut out)
        })
        .map_err(snapshot_error)
    }

    fn load_snapshot(&self) -> StoreResult<Option<StoredSnapshot>> {
        match std::fs::read(&self.snapshot_path) {
            Ok(bytes) => Ok(Some(bincode::deserialize(&bytes).map_err(read_error)?)),
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(error) => Err(read_error(error)),
        }
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
        self.save_snapshot(&stored)?;
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
        self.save_snapshot(&StoredSnapshot {
            meta: meta.clone(),
            data,
        })
    }

    async fn get_current_snapshot(&mut self) -> StoreResult<Option<Snapshot<TypeConfig>>> {
        Ok(self.load_snapshot()?.map(|stored| Snapshot {
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
}
