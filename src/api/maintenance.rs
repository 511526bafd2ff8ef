//! etcd's `Maintenance` and `Cluster` services: what `etcdctl endpoint status|health` and
//! `etcdctl member list` need. Calls that belong to later capabilities (defragment, hashes,
//! snapshots, membership changes) answer `Unimplemented` with a clear message.

use std::pin::Pin;
use std::sync::Arc;

use futures::Stream;
use tonic::{Request, Response, Status};

use super::error::ApiError;
use super::{ApiContext, ETCD_VERSION};
use crate::proto::etcdserverpb::alarm_request::AlarmAction;
use crate::proto::etcdserverpb::cluster_server::Cluster;
use crate::proto::etcdserverpb::maintenance_server::Maintenance;
use crate::proto::etcdserverpb::*;

pub struct MaintenanceService(pub(super) Arc<ApiContext>);
pub struct ClusterService(pub(super) Arc<ApiContext>);

fn unsupported<T>(what: &'static str) -> Result<Response<T>, Status> {
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
        _request: Request<MoveLeaderRequest>,
    ) -> Result<Response<MoveLeaderResponse>, Status> {
        unsupported("MoveLeader")
    }

    async fn downgrade(
        &self,
        _request: Request<DowngradeRequest>,
    ) -> Result<Response<DowngradeResponse>, Status> {
        unsupported("Downgrade")
    }
}

#[tonic::async_trait]
impl Cluster for ClusterService {
    async fn member_add(
        &self,
        _request: Request<MemberAddRequest>,
    ) -> Result<Response<MemberAddResponse>, Status> {
        unsupported("MemberAdd")
    }

    async fn member_remove(
        &self,
        _request: Request<MemberRemoveRequest>,
    ) -> Result<Response<MemberRemoveResponse>, Status> {
        unsupported("MemberRemove")
    }

    async fn member_update(
        &self,
        _request: Request<MemberUpdateRequest>,
    ) -> Result<Response<MemberUpdateResponse>, Status> {
        unsupported("MemberUpdate")
    }

    async fn member_list(
        &self,
        _request: Request<MemberListRequest>,
    ) -> Result<Response<MemberListResponse>, Status> {
        let members = self
            .0
            .consensus
            .status()
            .members
            .into_iter()
            .map(|(id, node, is_learner)| Member {
                id,
                name: node.name,
                peer_ur_ls: vec![format!("https://{}", node.peer_addr)],
                client_ur_ls: vec![node.client_url],
                is_learner,
            })
            .collect();
        Ok(Response::new(MemberListResponse {
            // etcd's member list header carries no revision.
            header: self.0.header(0),
            members,
        }))
    }

    async fn member_promote(
        &self,
        _request: Request<MemberPromoteRequest>,
    ) -> Result<Response<MemberPromoteResponse>, Status> {
        unsupported("MemberPromote")
    }
}
