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
    data: Vec<u8>,
}

#[derive(Clone)]
pub struct StateMachine {
    store: Arc<Store>,
    snapshot_path: PathBuf,
}

impl StateMachine {
    pub fn new(store: Arc<Store>, snapshot_path: PathBuf) -> Self {
        StateMachine {
            store,
            snapshot_path,
        }
    }

    fn save_snapshot(&self, snapshot: &StoredSnapshot) -> StoreResult<()> {
        let bytes = bincode::serialize(snapshot).map_err(snapshot_error)?;
        let temporary = self.snapshot_path.with_extension("tmp");
        std::fs::write(&temporary, &bytes)
            .and_then(|_| std::fs::File::open(&temporary)?.sync_all())
            .and_then(|_| std::fs::rename(&temporary, &self.snapshot_path))
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
        Ok((position.last_applied, position.membership))
    }

    async fn apply<I>(&mut self, entries: I) -> StoreResult<Vec<Reply>>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut position = read_position(self.store.consensus_state().map_err(read_error)?)?;
        // For each entry, whether it carries a command (and so gets the next result).
        let mut is_command = Vec::new();
        let mut commands = Vec::new();
        for entry in entries {
            position.last_applied = Some(entry.log_id);
            match entry.payload {
                EntryPayload::Normal(request) => {
                    commands.push(request.0);
                    is_command.push(true);
                }
                EntryPayload::Membership(membership) => {
                    position.membership = StoredMembership::new(Some(entry.log_id), membership);
                    is_command.push(false);
                }
                EntryPayload::Blank => is_command.push(false),
            }
        }
        if is_command.is_empty() {
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
        let mut results = results.into_iter();
        Ok(is_command
            .into_iter()
            .map(|command| match command {
                true => Reply(encode_result(
                    &results.next().expect("one result per command"),
                )),
                false => Reply(Vec::new()),
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
