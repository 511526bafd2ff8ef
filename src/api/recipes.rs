//! The queue recipe behind locks and elections (etcd's `concurrency` package, run on the
//! server): each contender owns the key `NAME/<lease id>` attached to its lease; contenders are
//! ordered by the keys' create revisions; the first is the holder (or leader). A contender waits
//! until every key created before its own is gone — released, resigned, or deleted when its lease
//! expired.

use tonic::Status;

use super::error::ApiError;
use super::ApiContext;
use crate::mvcc::keys::prefix_end;
use crate::mvcc::CommandResponse;
use crate::proto::bulwarkpb::command;
use crate::proto::etcdserverpb::compare::{CompareResult, CompareTarget, TargetUnion};
use crate::proto::etcdserverpb::range_request::{SortOrder, SortTarget};
use crate::proto::etcdserverpb::{
    request_op, response_op, Compare, PutRequest, RangeRequest, RequestOp, TxnRequest,
};
use crate::proto::mvccpb::KeyValue;

pub struct Queue {
    pub prefix: Vec<u8>,
    pub key: Vec<u8>,
    pub lease: i64,
}

/// What claiming a place produced.
pub struct Claim {
    pub create_revision: i64,
    /// The key already existed (the same lease claimed before); its value was left alone.
    pub existed: bool,
}

impl Queue {
    pub fn new(name: &[u8], lease: i64) -> Self {
        let mut prefix = name.to_vec();
        prefix.push(b'/');
        let mut key = prefix.clone();
        key.extend_from_slice(format!("{lease:x}").as_bytes());
        Queue { prefix, key, lease }
    }

    /// Creates this contender's key with `value` unless it exists, in one txn.
    pub async fn claim(&self, context: &ApiContext, value: &[u8]) -> Result<Claim, Status> {
        let get = RequestOp {
            request: Some(request_op::Request::RequestRange(RangeRequest {
                key: self.key.clone(),
                ..Default::default()
            })),
        };
        let txn = TxnRequest {
            compare: vec![Compare {
                result: CompareResult::Equal as i32,
                target: CompareTarget::Create as i32,
                key: self.key.clone(),
                target_union: Some(TargetUnion::CreateRevision(0)),
                range_end: Vec::new(),
            }],
            success: vec![
                RequestOp {
                    request: Some(request_op::Request::RequestPut(PutRequest {
                        key: self.key.clone(),
                        value: value.to_vec(),
                        lease: self.lease,
                        ..Default::default()
                    })),
                },
                get.clone(),
            ],
            failure: vec![get],
        };
        let CommandResponse::Txn(response) = context.propose(command::Kind::Txn(txn)).await? else {
            return Err(Status::internal("a txn answered something else"));
        };
        let existed = !response.succeeded;
        let create_revision = response
            .responses
            .into_iter()
            .find_map(|op| match op.response {
                Some(response_op::Response::ResponseRange(range)) => {
                    range.kvs.first().map(|kv| kv.create_revision)
                }
                _ => None,
            })
            .ok_or_else(|| Status::internal("the queue key vanished as it was created"))?;
        Ok(Claim {
            create_revision,
            existed,
        })
    }

    /// Waits until no key under the prefix was created before `create_revision`. Fails if this
    /// contender's own key disappears meanwhile (its lease ended).
    pub async fn wait_for_turn(
        &self,
        context: &ApiContext,
        create_revision: i64,
    ) -> Result<(), Status> {
        let mut committed = context.store.subscribe();
        context.read_barrier().await?;
        loop {
            let mine = context
                .store
                .range(&RangeRequest {
                    key: self.key.clone(),
                    count_only: true,
                    ..Default::default()
                })
                .map_err(ApiError::from)?;
            if mine.count == 0 {
                return Err(Status::not_found(
                    "etcdserver: requested lease not found (it ended while waiting)",
                ));
            }
            let earlier = context
                .store
                .range(&RangeRequest {
                    key: self.prefix.clone(),
                    range_end: prefix_end(&self.prefix),
                    max_create_revision: create_revision - 1,
                    limit: 1,
                    keys_only: true,
                    ..Default::default()
                })
                .map_err(ApiError::from)?;
            if earlier.kvs.is_empty() {
                return Ok(());
            }
            // Something changed (a release, an expiry): look again. The caller's deadline, or
            // its disconnect, ends the wait.
            if committed.changed().await.is_err() {
                return Err(ApiError::Stopped.into());
            }
        }
    }
}

/// The first contender under `prefix` (the holder or leader), if any.
pub fn first_in_line(context: &ApiContext, prefix: &[u8]) -> Result<Option<KeyValue>, Status> {
    let first = context
        .store
        .range(&RangeRequest {
            key: prefix.to_vec(),
            range_end: prefix_end(prefix),
            sort_order: SortOrder::Ascend as i32,
            sort_target: SortTarget::Create as i32,
            limit: 1,
            ..Default::default()
        })
        .map_err(ApiError::from)?;
    Ok(first.kvs.into_iter().next())
}
