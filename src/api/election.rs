//! etcd's `Election` service (`v3electionpb`) on the queue recipe ([`super::recipes`]): the
//! leader is the contender whose key was created first; its value is what it proclaimed.

use std::sync::Arc;

use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use super::error::ApiError;
use super::recipes::{first_in_line, Queue};
use super::ApiContext;
use crate::mvcc::CommandResponse;
use crate::proto::bulwarkpb::command;
use crate::proto::etcdserverpb::compare::{CompareResult, CompareTarget, TargetUnion};
use crate::proto::etcdserverpb::{
    request_op, Compare, DeleteRangeRequest, PutRequest, RequestOp, TxnRequest,
};
use crate::proto::v3electionpb::election_server::Election;
use crate::proto::v3electionpb::*;

pub struct ElectionService(pub(super) Arc<ApiContext>);

fn not_leader() -> Status {
    Status::failed_precondition("etcdserver: election: not leader")
}

fn prefix_of(name: &[u8]) -> Vec<u8> {
    let mut prefix = name.to_vec();
    prefix.push(b'/');
    prefix
}

impl ElectionService {
    /// A txn that runs `then` only while `leader` still holds its key (same create revision).
    async fn as_leader(&self, leader: &LeaderKey, then: RequestOp) -> Result<(), Status> {
        let txn = TxnRequest {
            compare: vec![Compare {
                result: CompareResult::Equal as i32,
                target: CompareTarget::Create as i32,
                key: leader.key.clone(),
                target_union: Some(TargetUnion::CreateRevision(leader.rev)),
                range_end: Vec::new(),
            }],
            success: vec![then],
            failure: vec![],
        };
        match self.0.propose(command::Kind::Txn(txn)).await? {
            CommandResponse::Txn(response) if response.succeeded => Ok(()),
            CommandResponse::Txn(_) => Err(not_leader()),
            other => Err(Status::internal(format!("unexpected {other:?}"))),
        }
    }
}

#[tonic::async_trait]
impl Election for ElectionService {
    async fn campaign(
        &self,
        request: Request<CampaignRequest>,
    ) -> Result<Response<CampaignResponse>, Status> {
        let request = request.into_inner();
        if request.name.is_empty() {
            return Err(ApiError::EmptyKey.into());
        }
        let queue = Queue::new(&request.name, request.lease);
        let claim = queue.claim(&self.0, &request.value).await?;
        let leader = LeaderKey {
            name: request.name.clone(),
            key: queue.key.clone(),
            rev: claim.create_revision,
            lease: request.lease,
        };
        if claim.existed {
            // Campaigning again with the same lease: proclaim the new value, as etcd does.
            let put = PutRequest {
                key: queue.key.clone(),
                value: request.value.clone(),
                lease: request.lease,
                ..Default::default()
            };
            self.as_leader(
                &leader,
                RequestOp {
                    request: Some(request_op::Request::RequestPut(put)),
                },
            )
            .await?;
        }
        queue.wait_for_turn(&self.0, claim.create_revision).await?;
        Ok(Response::new(CampaignResponse {
            header: self.0.header(self.0.current_revision()?),
            leader: Some(leader),
        }))
    }

    async fn proclaim(
        &self,
        request: Request<ProclaimRequest>,
    ) -> Result<Response<ProclaimResponse>, Status> {
        let request = request.into_inner();
        let leader = request.leader.ok_or_else(not_leader)?;
        let put = PutRequest {
            key: leader.key.clone(),
            value: request.value,
            ignore_lease: true,
            ..Default::default()
        };
        self.as_leader(
            &leader,
            RequestOp {
                request: Some(request_op::Request::RequestPut(put)),
            },
        )
        .await?;
        Ok(Response::new(ProclaimResponse {
            header: self.0.header(self.0.current_revision()?),
        }))
    }

    async fn leader(
        &self,
        request: Request<LeaderRequest>,
    ) -> Result<Response<LeaderResponse>, Status> {
        self.0.read_barrier().await?;
        let kv = first_in_line(&self.0, &prefix_of(&request.get_ref().name))?
            .ok_or_else(|| Status::not_found("etcdserver: election: no leader"))?;
        Ok(Response::new(LeaderResponse {
            header: self.0.header(self.0.current_revision()?),
            kv: Some(kv),
        }))
    }

    type ObserveStream = ReceiverStream<Result<LeaderResponse, Status>>;

    async fn observe(
        &self,
        request: Request<LeaderRequest>,
    ) -> Result<Response<Self::ObserveStream>, Status> {
        let prefix = prefix_of(&request.get_ref().name);
        let context = self.0.clone();
        let (responses, stream) = mpsc::channel(16);
        tokio::spawn(async move {
            let mut committed = context.store.subscribe();
            // The leader's key and the revision its value was last set at, as last sent.
            let mut last_sent: Option<(Vec<u8>, i64)> = None;
            loop {
                let leader = match first_in_line(&context, &prefix) {
                    Ok(leader) => leader,
                    Err(status) => {
                        let _ = responses.send(Err(status)).await;
                        return;
                    }
                };
                if let Some(kv) = leader {
                    let seen = (kv.key.clone(), kv.mod_revision);
                    if last_sent.as_ref() != Some(&seen) {
                        let revision = context.current_revision().unwrap_or_default();
                        let response = LeaderResponse {
                            header: context.header(revision),
                            kv: Some(kv),
                        };
                        if responses.send(Ok(response)).await.is_err() {
                            return;
                        }
                        last_sent = Some(seen);
                    }
                }
                tokio::select! {
                    changed = committed.changed() => if changed.is_err() { return },
                    _ = responses.closed() => return,
                }
            }
        });
        Ok(Response::new(ReceiverStream::new(stream)))
    }

    async fn resign(
        &self,
        request: Request<ResignRequest>,
    ) -> Result<Response<ResignResponse>, Status> {
        let leader = request.into_inner().leader.ok_or_else(not_leader)?;
        let delete = DeleteRangeRequest {
            key: leader.key.clone(),
            range_end: Vec::new(),
            prev_kv: false,
        };
        // Resigning a leadership already lost is not an error, as in etcd.
        match self
            .as_leader(
                &leader,
                RequestOp {
                    request: Some(request_op::Request::RequestDeleteRange(delete)),
                },
            )
            .await
        {
            Ok(()) => {}
            Err(status) if status.code() == tonic::Code::FailedPrecondition => {}
            Err(status) => return Err(status),
        }
        Ok(Response::new(ResignResponse {
            header: self.0.header(self.0.current_revision()?),
        }))
    }
}
