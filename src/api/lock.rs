//! etcd's `Lock` service (`v3lockpb`), the same recipe etcd's server uses: the lock is the key
//! `NAME/<lease id>` attached to the caller's lease; the holder is whoever owns the key with the
//! lowest create revision under `NAME/`. A waiter waits until every key created before its own
//! is gone (released, or its lease expired), so locks are granted in arrival order and a holder
//! that dies loses the lock when its lease runs out.

use std::sync::Arc;

use tonic::{Request, Response, Status};

use super::error::ApiError;
use super::ApiContext;
use crate::mvcc::keys::prefix_end;
use crate::mvcc::CommandResponse;
use crate::proto::bulwarkpb::command;
use crate::proto::etcdserverpb::compare::{CompareResult, CompareTarget, TargetUnion};
use crate::proto::etcdserverpb::range_request::{SortOrder, SortTarget};
use crate::proto::etcdserverpb::{
    request_op, response_op, Compare, DeleteRangeRequest, PutRequest, RangeRequest, RequestOp,
    TxnRequest,
};
use crate::proto::v3lockpb::lock_server::Lock;
use crate::proto::v3lockpb::{LockRequest, LockResponse, UnlockRequest, UnlockResponse};

pub struct LockService(pub(super) Arc<ApiContext>);

impl LockService {
    /// Creates `key` with `lease` unless it exists; returns its create revision.
    async fn claim(&self, key: &[u8], lease: i64) -> Result<i64, Status> {
        let get = RequestOp {
            request: Some(request_op::Request::RequestRange(RangeRequest {
                key: key.to_vec(),
                ..Default::default()
            })),
        };
        let txn = TxnRequest {
            compare: vec![Compare {
                result: CompareResult::Equal as i32,
                target: CompareTarget::Create as i32,
                key: key.to_vec(),
                target_union: Some(TargetUnion::CreateRevision(0)),
                range_end: Vec::new(),
            }],
            success: vec![
                RequestOp {
                    request: Some(request_op::Request::RequestPut(PutRequest {
                        key: key.to_vec(),
                        lease,
                        ..Default::default()
                    })),
                },
                get.clone(),
            ],
            failure: vec![get],
        };
        let CommandResponse::Txn(response) = self.0.propose(command::Kind::Txn(txn)).await? else {
            return Err(Status::internal("a txn answered something else"));
        };
        let range = response
            .responses
            .into_iter()
            .find_map(|op| match op.response {
                Some(response_op::Response::ResponseRange(range)) => Some(range),
                _ => None,
            });
        range
            .and_then(|range| range.kvs.first().map(|kv| kv.create_revision))
            .ok_or_else(|| Status::internal("the lock key vanished as it was created"))
    }

    /// Whether `key` still exists, and the newest key under `prefix` created before `revision`.
    fn blockers(&self, key: &[u8], prefix: &[u8], revision: i64) -> Result<(bool, bool), Status> {
        let mine = self
            .0
            .store
            .range(&RangeRequest {
                key: key.to_vec(),
                count_only: true,
                ..Default::default()
            })
            .map_err(ApiError::from)?;
        let earlier = self
            .0
            .store
            .range(&RangeRequest {
                key: prefix.to_vec(),
                range_end: prefix_end(prefix),
                max_create_revision: revision - 1,
                sort_order: SortOrder::Descend as i32,
                sort_target: SortTarget::Create as i32,
                limit: 1,
                keys_only: true,
                ..Default::default()
            })
            .map_err(ApiError::from)?;
        Ok((mine.count > 0, !earlier.kvs.is_empty()))
    }
}

#[tonic::async_trait]
impl Lock for LockService {
    async fn lock(&self, request: Request<LockRequest>) -> Result<Response<LockResponse>, Status> {
        let request = request.into_inner();
        if request.name.is_empty() {
            return Err(ApiError::EmptyKey.into());
        }
        let mut prefix = request.name.clone();
        prefix.push(b'/');
        let mut key = prefix.clone();
        key.extend_from_slice(format!("{:x}", request.lease).as_bytes());
        let revision = self.claim(&key, request.lease).await?;

        let mut committed = self.0.store.subscribe();
        self.0
            .consensus
            .read_barrier()
            .await
            .map_err(ApiError::from)?;
        loop {
            let (held, blocked) = self.blockers(&key, &prefix, revision)?;
            if !held {
                return Err(Status::failed_precondition(
                    "etcdserver: requested lease not found (the lock's lease ended while waiting)",
                ));
            }
            if !blocked {
                break;
            }
            // Something changed (a release, an expiry): look again. The caller's deadline, or
            // its disconnect, ends the wait.
            if committed.changed().await.is_err() {
                return Err(ApiError::Stopped.into());
            }
        }
        let revision = self.0.current_revision()?;
        Ok(Response::new(LockResponse {
            header: self.0.header(revision),
            key,
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
