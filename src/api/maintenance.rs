//! etcd's `Maintenance` service: what `etcdctl endpoint status|health|alarm` need. Calls that
//! belong to later capabilities (defragment, hashes, snapshots) answer
//! `Unimplemented` with a clear message.

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

pub(super) fn unsupported<T>(what: &'static str) -> Result<Response<T>, Status> {
    Err(ApiError::Unsupported(what).into())
}

#[tonic::async_trait]
impl Maintenance for MaintenanceService {
    async fn alarm(
        &self,
        request: Request<AlarmRequest>,
    ) -> Result<Response<AlarmResponse>, Status> {
        let action = AlarmAction::try_from(request.get_ref().action).unwrap_or(AlarmAction::Get);
        if action == AlarmAction::Activate {
            return unsupported("raising alarms");
        }
        // No alarm is ever raised yet, so listing and disarming both find none.
        Ok(Response::new(AlarmResponse {
            header: self.0.header(self.0.current_revision()?),
            alarms: Vec::new(),
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
        unsupported("Defragment")
    }

    async fn hash(&self, _request: Request<HashRequest>) -> Result<Response<HashResponse>, Status> {
        unsupported("Hash")
    }

    async fn hash_kv(
        &self,
        _request: Request<HashKvRequest>,
    ) -> Result<Response<HashKvResponse>, Status> {
        unsupported("HashKV")
    }

    type SnapshotStream =
        Pin<Box<dyn Stream<Item = Result<SnapshotResponse, Status>> + Send + 'static>>;

    async fn snapshot(
        &self,
        _request: Request<SnapshotRequest>,
    ) -> Result<Response<Self::SnapshotStream>, Status> {
        unsupported("Snapshot")
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
