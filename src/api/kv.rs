//! etcd's `KV` service: Range, Put, DeleteRange, Txn, Compact.

use std::sync::Arc;

use tonic::{Request, Response, Status};

use super::error::ApiError;
use super::{validate, ApiContext};
use crate::mvcc::CommandResponse;
use crate::proto::bulwarkpb::command::Kind;
use crate::proto::etcdserverpb::kv_server::Kv;
use crate::proto::etcdserverpb::{
    CompactionRequest, CompactionResponse, DeleteRangeRequest, DeleteRangeResponse, PutRequest,
    PutResponse, RangeRequest, RangeResponse, TxnRequest, TxnResponse,
};

pub struct KvService(pub(super) Arc<ApiContext>);

/// The write path answered a command with a response of another kind: a bug, not bad input.
fn mismatched(response: CommandResponse) -> Status {
    Status::internal(format!("write path answered {response:?}"))
}

#[tonic::async_trait]
impl Kv for KvService {
    async fn range(
        &self,
        request: Request<RangeRequest>,
    ) -> Result<Response<RangeResponse>, Status> {
        let req = request.into_inner();
        validate::check_range(&req)?;
        if !req.serializable {
            self.0.read_barrier().await?;
        }
        let mut response = self.0.store.range(&req).map_err(ApiError::from)?;
        self.0.complete(&mut response.header);
        Ok(Response::new(response))
    }

    async fn put(&self, request: Request<PutRequest>) -> Result<Response<PutResponse>, Status> {
        let req = request.into_inner();
        validate::check_put(&req)?;
        match self.0.propose(Kind::Put(req)).await? {
            CommandResponse::Put(mut response) => {
                self.0.complete(&mut response.header);
                Ok(Response::new(response))
            }
            other => Err(mismatched(other)),
        }
    }

    async fn delete_range(
        &self,
        request: Request<DeleteRangeRequest>,
    ) -> Result<Response<DeleteRangeResponse>, Status> {
        let req = request.into_inner();
        validate::check_delete(&req)?;
        match self.0.propose(Kind::DeleteRange(req)).await? {
            CommandResponse::DeleteRange(mut response) => {
                self.0.complete(&mut response.header);
                Ok(Response::new(response))
            }
            other => Err(mismatched(other)),
        }
    }

    async fn txn(&self, request: Request<TxnRequest>) -> Result<Response<TxnResponse>, Status> {
        let req = request.into_inner();
        validate::check_txn(&req, self.0.limits.max_txn_ops)?;
        match self.0.propose(Kind::Txn(req)).await? {
            CommandResponse::Txn(mut response) => {
                self.0.complete(&mut response.header);
                Ok(Response::new(response))
            }
            other => Err(mismatched(other)),
        }
    }

    async fn compact(
        &self,
        request: Request<CompactionRequest>,
    ) -> Result<Response<CompactionResponse>, Status> {
        let req = request.into_inner();
        // Compaction is applied synchronously, so `physical` is always honoured.
        match self.0.propose(Kind::Compaction(req)).await? {
            CommandResponse::Compaction(mut response) => {
                self.0.complete(&mut response.header);
                Ok(Response::new(response))
            }
            other => Err(mismatched(other)),
        }
    }
}
