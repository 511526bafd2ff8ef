//! etcd's `Lock` service (`v3lockpb`), the recipe etcd's server uses (see [`super::recipes`]):
//! the lock is the key `NAME/<lease id>` attached to the caller's lease, granted in arrival order;
//! a holder that dies loses the lock when its lease runs out.

use std::sync::Arc;

use tonic::{Request, Response, Status};

use super::error::ApiError;
use super::recipes::Queue;
use super::ApiContext;
use crate::mvcc::CommandResponse;
use crate::proto::bulwarkpb::command;
use crate::proto::etcdserverpb::DeleteRangeRequest;
use crate::proto::v3lockpb::lock_server::Lock;
use crate::proto::v3lockpb::{LockRequest, LockResponse, UnlockRequest, UnlockResponse};

pub struct LockService(pub(super) Arc<ApiContext>);

#[tonic::async_trait]
impl Lock for LockService {
    async fn lock(&self, request: Request<LockRequest>) -> Result<Response<LockResponse>, Status> {
        let request = request.into_inner();
        if request.name.is_empty() {
            return Err(ApiError::EmptyKey.into());
        }
        let queue = Queue::new(&request.name, request.lease);
        let claim = queue.claim(&self.0, b"").await?;
        queue.wait_for_turn(&self.0, claim.create_revision).await?;
        let revision = self.0.current_revision()?;
        Ok(Response::new(LockResponse {
            header: self.0.header(revision),
            key: queue.key,
        }))
    }

    async fn unlock(
        &self,
        request: Request<UnlockRequest>,
    ) -> Result<Response<UnlockResponse>, Status> {
        let key = request.into_inner().key;
        let delete = DeleteRangeRequest {
            key,
            range_end: Vec::new(),
            prev_kv: false,
        };
        let CommandResponse::DeleteRange(mut response) =
            self.0.propose(command::Kind::DeleteRange(delete)).await?
        else {
            return Err(Status::internal("a delete answered something else"));
        };
        self.0.complete(&mut response.header);
        Ok(Response::new(UnlockResponse {
            header: response.header,
        }))
    }
}
