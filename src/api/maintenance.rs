//! etcd's `Maintenance` service: status, alarms, hashes, snapshots, leadership transfer, and
//! defragmentation (online here: reads and writes go on during it, see `mvcc::defrag`).
//! Downgrade answers `Unimplemented` with a clear message.

use std::pin::Pin;
use std::sync::Arc;

use futures::Stream;
use tonic::{Request, Response, Status};

use super::error::ApiError;
use super::{ApiContext, ETCD_VERSION};
use crate::proto::etcdserverpb::alarm_request::AlarmAction;
use crate::proto::etcdserverpb::maintenance_server::Maintenance;
use crate::proto::etcdserverpb::*;

pub struct MaintenanceService(pub(super) Arc<ApiContext>);

/// Bytes per `Snapshot` response message.
const SNAPSHOT_CHUNK: usize = 64 * 1024;

/// Feeds written bytes to a CRC-32.
struct Crc32Writer(crc32fast::Hasher);

impl std::io::Write for Crc32Writer {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.update(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

pub(super) fn unsupported<T>(what: &'static str) -> Result<Response<T>, Status> {
    Err(ApiError::Unsupported(what).into())
}

#[tonic::async_trait]
impl Maintenance for MaintenanceService {
    async fn alarm(
        &self,
        request: Request<AlarmRequest>,
    ) -> Result<Response<AlarmResponse>, Status> {
        let request = request.into_inner();
        let action = AlarmAction::try_from(request.action).unwrap_or(AlarmAction::Get);
        let kind = AlarmType::try_from(request.alarm).unwrap_or(AlarmType::None);
        let listed = |context: &ApiContext| -> Result<Vec<AlarmMember>, ApiError> {
            Ok(context
                .store
                .settings_with_prefix(super::ALARM_PREFIX)?
                .into_iter()
                .filter_map(|(name, _)| {
                    let rest = name.strip_prefix(super::ALARM_PREFIX)?;
                    let (alarm, member) = rest.split_once('/')?;
                    Some(AlarmMember {
                        member_id: u64::from_str_radix(member, 16).ok()?,
                        alarm: AlarmType::from_str_name(alarm)? as i32,
                    })
                })
                .collect())
        };
        let before = listed(&self.0)?;
        match action {
            AlarmAction::Get => {}
            AlarmAction::Activate | AlarmAction::Deactivate => {
                if kind == AlarmType::None {
                    return Err(Status::invalid_argument("an alarm type is required"));
                }
                let value = if action == AlarmAction::Activate {
                    kind.as_str_name().as_bytes().to_vec()
                } else {
                    Vec::new() // an empty value removes the alarm
                };
                let setting = crate::proto::bulwarkpb::Setting {
                    name: format!(
                        "{}{}/{:016x}",
                        super::ALARM_PREFIX,
                        kind.as_str_name(),
                        request.member_id
                    ),
                    value,
                    ..Default::default()
                };
                self.0
                    .propose(crate::proto::bulwarkpb::command::Kind::SetSetting(setting))
                    .await?;
            }
        }
        // etcd answers a change with the alarms it touched, a GET with all of them.
        let alarms = match action {
            AlarmAction::Get => before,
            _ => vec![AlarmMember {
                member_id: request.member_id,
                alarm: kind as i32,
            }],
        };
        Ok(Response::new(AlarmResponse {
            header: self.0.header(self.0.current_revision()?),
            alarms,
        }))
    }

    async fn status(
        &self,
        _request: Request<StatusRequest>,
    ) -> Result<Response<StatusResponse>, Status> {
        let status = self.0.store.status().map_err(ApiError::from)?;
        let raft = self.0.consensus.status();
        let db_size = self.0.store.file_size() as i64;
        Ok(Response::new(StatusResponse {
            header: self.0.header(status.current_revision),
            version: ETCD_VERSION.to_string(),
            db_size,
            leader: raft.leader.unwrap_or(0),
            raft_index: raft.last_log_index,
            raft_term: raft.term,
            raft_applied_index: raft.applied_index,
            errors: Vec::new(),
            db_size_in_use: db_size,
            is_learner: raft.is_learner,
        }))
    }

    async fn defragment(
        &self,
        _request: Request<DefragmentRequest>,
    ) -> Result<Response<DefragmentResponse>, Status> {
        let store = self.0.store.clone();
        let report = tokio::task::spawn_blocking(move || store.defragment())
            .await
            .map_err(|e| Status::internal(e.to_string()))?
            .map_err(ApiError::Mvcc)?;
        tracing::info!(
            size_before = report.size_before,
            size_after = report.size_after,
            replayed_batches = report.replayed_batches,
            "defragmented the store"
        );
        let revision = self
            .0
            .store
            .status()
            .map_err(ApiError::Mvcc)?
            .current_revision;
        Ok(Response::new(DefragmentResponse {
            header: self.0.header(revision),
        }))
    }

    async fn hash(&self, _request: Request<HashRequest>) -> Result<Response<HashResponse>, Status> {
        let store = self.0.store.clone();
        let hash = tokio::task::spawn_blocking(move || {
            let mut hasher = Crc32Writer(crc32fast::Hasher::new());
            store
                .write_snapshot(&mut hasher)
                .map(|_| hasher.0.finalize())
        })
        .await
        .map_err(|e| Status::internal(e.to_string()))?
        .map_err(|e| Status::internal(e.to_string()))?;
        Ok(Response::new(HashResponse {
            header: self.0.header(self.0.current_revision()?),
            hash,
        }))
    }

    async fn hash_kv(
        &self,
        request: Request<HashKvRequest>,
    ) -> Result<Response<HashKvResponse>, Status> {
        let (hash, compact_revision, hash_revision) = self
            .0
            .store
            .hash_kv(request.get_ref().revision)
            .map_err(ApiError::from)?;
        Ok(Response::new(HashKvResponse {
            header: self.0.header(self.0.current_revision()?),
            hash,
            compact_revision,
            hash_revision,
        }))
    }

    type SnapshotStream =
        Pin<Box<dyn Stream<Item = Result<SnapshotResponse, Status>> + Send + 'static>>;

    async fn snapshot(
        &self,
        _request: Request<SnapshotRequest>,
    ) -> Result<Response<Self::SnapshotStream>, Status> {
        // One consistent read of the whole store (but the join tokens and the CA rotation
        // record: a backup is not where secrets belong), then sent in chunks; the format ends
        // with its own sha256 (see `mvcc::snapshot`), which `bulwark snapshot restore` checks.
        let store = self.0.store.clone();
        let bytes = tokio::task::spawn_blocking(move || {
            let mut bytes = Vec::new();
            store.write_backup(&mut bytes).map(|_| bytes)
        })
        .await
        .map_err(|e| Status::internal(e.to_string()))?
        .map_err(|e| Status::internal(e.to_string()))?;
        let header = self.0.header(self.0.current_revision()?);
        let total = bytes.len();
        let chunks: Vec<Result<SnapshotResponse, Status>> = bytes
            .chunks(SNAPSHOT_CHUNK)
            .scan(0usize, |sent, chunk| {
                *sent += chunk.len();
                Some(Ok(SnapshotResponse {
                    header,
                    remaining_bytes: (total - *sent) as u64,
                    blob: chunk.to_vec(),
                    version: ETCD_VERSION.to_string(),
                }))
            })
            .collect();
        Ok(Response::new(Box::pin(futures::stream::iter(chunks))))
    }

    async fn move_leader(
        &self,
        request: Request<MoveLeaderRequest>,
    ) -> Result<Response<MoveLeaderResponse>, Status> {
        let target = request.into_inner().target_id;
        self.0
            .consensus
            .transfer_leadership(target)
            .await
            .map_err(ApiError::from)?;
        Ok(Response::new(MoveLeaderResponse {
            header: self.0.header(self.0.current_revision()?),
        }))
    }

    async fn downgrade(
        &self,
        _request: Request<DowngradeRequest>,
    ) -> Result<Response<DowngradeResponse>, Status> {
        unsupported("Downgrade")
    }
}
