//! etcd's `Lease` service. Grants and revokes go through consensus like any write; keep-alives
//! and remaining TTLs are the leader's (see [`crate::lease`]).

use std::sync::Arc;

use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use super::error::ApiError;
use super::ApiContext;
use crate::lease::LeaseState;
use crate::mvcc::CommandResponse;
use crate::proto::bulwarkpb::{command, LeaseGrant, LeaseRevoke};
use crate::proto::etcdserverpb::lease_server::Lease;
use crate::proto::etcdserverpb::*;

/// etcd's upper bound on a lease TTL, in seconds.
pub const MAX_LEASE_TTL: i64 = 9_000_000_000;

pub struct LeaseService(pub(super) Arc<ApiContext>);

impl LeaseService {
    /// etcd's minimum TTL: a lease must outlive a leader election, so shorter ones are raised.
    fn min_ttl(&self) -> i64 {
        let election_ms = self.0.consensus.timings().election_max_ms as i64;
        ((election_ms * 3 / 2) + 999) / 1000
    }
}

#[tonic::async_trait]
impl Lease for LeaseService {
    async fn lease_grant(
        &self,
        request: Request<LeaseGrantRequest>,
    ) -> Result<Response<LeaseGrantResponse>, Status> {
        let request = request.into_inner();
        if request.ttl > MAX_LEASE_TTL {
            return Err(ApiError::LeaseTtlTooLarge.into());
        }
        let ttl = request.ttl.max(self.min_ttl());
        let id = if request.id != 0 {
            request.id
        } else {
            // A positive id nobody holds (etcd never hands out negative ones).
            loop {
                let id = (rand::random::<u64>() >> 1) as i64;
                if id != 0 && self.0.store.lease(id).map_err(ApiError::from)?.is_none() {
                    break id;
                }
            }
        };
        match self
            .0
            .propose(command::Kind::LeaseGrant(LeaseGrant { id, ttl }))
            .await?
        {
            CommandResponse::LeaseGrant(mut response) => {
                self.0.lessor.start_clock(id, ttl);
                self.0.complete(&mut response.header);
                Ok(Response::new(response))
            }
            other => Err(Status::internal(format!("write path answered {other:?}"))),
        }
    }

    async fn lease_revoke(
        &self,
        request: Request<LeaseRevokeRequest>,
    ) -> Result<Response<LeaseRevokeResponse>, Status> {
        let id = request.into_inner().id;
        match self
            .0
            .propose(command::Kind::LeaseRevoke(LeaseRevoke { id }))
            .await?
        {
            CommandResponse::LeaseRevoke(mut response) => {
                self.0.complete(&mut response.header);
                Ok(Response::new(response))
            }
            other => Err(Status::internal(format!("write path answered {other:?}"))),
        }
    }

    type LeaseKeepAliveStream = ReceiverStream<Result<LeaseKeepAliveResponse, Status>>;

    async fn lease_keep_alive(
        &self,
        request: Request<Streaming<LeaseKeepAliveRequest>>,
    ) -> Result<Response<Self::LeaseKeepAliveStream>, Status> {
        let mut requests = request.into_inner();
        let (responses, stream) = mpsc::channel(16);
        let context = self.0.clone();
        tokio::spawn(async move {
            while let Ok(Some(request)) = requests.message().await {
                let answer = match context.lessor.keep_alive(request.id).await {
                    Ok(state) => {
                        let revision = context.current_revision().unwrap_or_default();
                        Ok(LeaseKeepAliveResponse {
                            header: context.header(revision),
                            id: request.id,
                            // An unknown or expired lease answers TTL 0, as etcd does.
                            ttl: match state {
                                LeaseState::Live(ttl) => ttl,
                                LeaseState::Unknown => 0,
                            },
                        })
                    }
                    Err(error) => Err(Status::from(ApiError::from(error))),
                };
                let failed = answer.is_err();
                if responses.send(answer).await.is_err() || failed {
                    return;
                }
            }
        });
        Ok(Response::new(ReceiverStream::new(stream)))
    }

    async fn lease_time_to_live(
        &self,
        request: Request<LeaseTimeToLiveRequest>,
    ) -> Result<Response<LeaseTimeToLiveResponse>, Status> {
        let request = request.into_inner();
        let remaining = self
            .0
            .lessor
            .remaining(request.id)
            .await
            .map_err(ApiError::from)?;
        let revision = self.0.current_revision()?;
        let lease = self.0.store.lease(request.id).map_err(ApiError::from)?;
        let response = match (remaining, lease) {
            (LeaseState::Live(ttl), Some(lease)) => LeaseTimeToLiveResponse {
                header: self.0.header(revision),
                id: request.id,
                ttl,
                granted_ttl: lease.ttl,
                keys: if request.keys { lease.keys } else { Vec::new() },
            },
            // Unknown or already expired: etcd answers TTL -1.
            _ => LeaseTimeToLiveResponse {
                header: self.0.header(revision),
                id: request.id,
                ttl: -1,
                granted_ttl: 0,
                keys: Vec::new(),
            },
        };
        Ok(Response::new(response))
    }

    async fn lease_leases(
        &self,
        _request: Request<LeaseLeasesRequest>,
    ) -> Result<Response<LeaseLeasesResponse>, Status> {
        let leases = self.0.store.leases().map_err(ApiError::from)?;
        Ok(Response::new(LeaseLeasesResponse {
            header: self.0.header(self.0.current_revision()?),
            leases: leases
                .into_iter()
                .map(|(id, _)| LeaseStatus { id })
                .collect(),
        }))
    }
}
