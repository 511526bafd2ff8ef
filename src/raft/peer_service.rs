//! The peer port's gRPC service: openraft's RPCs from other members, writes forwarded by
//! followers, and read-index requests. Only member certificates are accepted (checked on every
//! call, on top of the TLS handshake's CA check).

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

use openraft::raft::{AppendEntriesRequest, InstallSnapshotRequest, VoteRequest};
use tonic::{Request, Response, Status};

use super::{Consensus, NodeId, TypeConfig};
use crate::pki::{self, Role};
use crate::proto::bulwarkpb::peer_server::Peer;
use crate::proto::bulwarkpb::{
    propose_outcome, CampaignRequest, CampaignResponse, ChangeMembershipResponse, LeaseAnswer,
    LeaseQuery, ProposeApplied, ProposeBatchRequest, ProposeBatchResponse, ProposeFailure,
    ProposeOutcome, RaftPayload, ReadIndexRequest, ReadIndexResponse,
};

pub struct PeerService {
    consensus: Arc<Consensus>,
    lessor: Arc<crate::lease::Lessor>,
    /// Leaf certificates (DER) already found to be member certificates: parsing one on every
    /// call was 1.6% of a member's CPU under load (a few peers, so a handful of entries).
    member_leaves: Mutex<HashSet<Vec<u8>>>,
}

/// Bound on [`PeerService::member_leaves`]: more distinct member certificates than this (many
/// renewals in a long life) start the set afresh.
const REMEMBERED_MEMBER_LEAVES: usize = 64;

fn lease_answer(state: crate::lease::LeaseState) -> LeaseAnswer {
    match state {
        crate::lease::LeaseState::Live(ttl) => LeaseAnswer { found: true, ttl },
        crate::lease::LeaseState::Unknown => LeaseAnswer {
            found: false,
            ttl: 0,
        },
    }
}

impl PeerService {
    pub fn new(consensus: Arc<Consensus>, lessor: Arc<crate::lease::Lessor>) -> PeerService {
        PeerService {
            consensus,
            lessor,
            member_leaves: Mutex::default(),
        }
    }

    /// Refuses callers whose verified certificate is not a member certificate. (Denied
    /// certificates never get this far: the listener refuses and closes them.)
    fn require_member<T>(&self, request: &Request<T>) -> Result<(), Status> {
        let certs = request
            .peer_certs()
            .ok_or_else(|| Status::unauthenticated("a member certificate is required"))?;
        let leaf = certs
            .first()
            .ok_or_else(|| Status::unauthenticated("a member certificate is required"))?;
        let remembered = || self.member_leaves.lock().unwrap_or_else(|e| e.into_inner());
        if remembered().contains(leaf.as_ref()) {
            return Ok(());
        }
        let identity = pki::identity_of(leaf.as_ref())
            .map_err(|e| Status::unauthenticated(format!("unreadable certificate: {e}")))?;
        if identity.role != Role::Member {
            return Err(Status::permission_denied(
                "only member certificates may use the peer port",
            ));
        }
        let mut remembered = remembered();
        if remembered.len() >= REMEMBERED_MEMBER_LEAVES {
            remembered.clear();
        }
        remembered.insert(leaf.as_ref().to_vec());
        Ok(())
    }
}

fn decode<T: serde::de::DeserializeOwned>(payload: &RaftPayload) -> Result<T, Status> {
    bincode::deserialize(&payload.bincode)
        .map_err(|e| Status::invalid_argument(format!("undecodable raft message: {e}")))
}

fn encode<T: serde::Serialize>(value: &T) -> Result<Response<RaftPayload>, Status> {
    let bincode = bincode::serialize(value).map_err(|e| Status::internal(e.to_string()))?;
    Ok(Response::new(RaftPayload { bincode }))
}

#[tonic::async_trait]
impl Peer for PeerService {
    async fn append_entries(
        &self,
        request: Request<RaftPayload>,
    ) -> Result<Response<RaftPayload>, Status> {
        self.require_member(&request)?;
        let rpc: AppendEntriesRequest<TypeConfig> = decode(request.get_ref())?;
        encode(&self.consensus.raft.append_entries(rpc).await)
    }

    async fn vote(&self, request: Request<RaftPayload>) -> Result<Response<RaftPayload>, Status> {
        self.require_member(&request)?;
        let rpc: VoteRequest<NodeId> = decode(request.get_ref())?;
        encode(&self.consensus.raft.vote(rpc).await)
    }

    async fn install_snapshot(
        &self,
        request: Request<RaftPayload>,
    ) -> Result<Response<RaftPayload>, Status> {
        self.require_member(&request)?;
        let rpc: InstallSnapshotRequest<TypeConfig> = decode(request.get_ref())?;
        encode(&self.consensus.raft.install_snapshot(rpc).await)
    }

    async fn propose_batch(
        &self,
        request: Request<ProposeBatchRequest>,
    ) -> Result<Response<ProposeBatchResponse>, Status> {
        self.require_member(&request)?;
        // Polled in order, so the commands join the leader's proposal queue in the order sent.
        let proposals = request
            .into_inner()
            .commands
            .into_iter()
            .map(|command| self.consensus.propose_encoded(command, false));
        let outcomes = futures::future::join_all(proposals)
            .await
            .into_iter()
            .map(|outcome| ProposeOutcome {
                outcome: Some(match outcome {
                    Ok(applied) => propose_outcome::Outcome::Applied(ProposeApplied {
                        index: applied.index,
                        result: applied.result,
                    }),
                    Err(error) => {
                        let status = Status::from(error);
                        propose_outcome::Outcome::Failure(ProposeFailure {
                            code: status.code() as i32,
                            message: status.message().to_string(),
                        })
                    }
                }),
            })
            .collect();
        Ok(Response::new(ProposeBatchResponse { outcomes }))
    }

    async fn change_membership(
        &self,
        request: Request<RaftPayload>,
    ) -> Result<Response<ChangeMembershipResponse>, Status> {
        self.require_member(&request)?;
        let changes = decode(request.get_ref())?;
        self.consensus.change_membership(changes, false).await?;
        Ok(Response::new(ChangeMembershipResponse {}))
    }

    async fn lease_keep_alive(
        &self,
        request: Request<LeaseQuery>,
    ) -> Result<Response<LeaseAnswer>, Status> {
        self.require_member(&request)?;
        Ok(Response::new(lease_answer(
            self.lessor.keep_alive_here(request.get_ref().id).await?,
        )))
    }

    async fn lease_remaining(
        &self,
        request: Request<LeaseQuery>,
    ) -> Result<Response<LeaseAnswer>, Status> {
        self.require_member(&request)?;
        Ok(Response::new(lease_answer(
            self.lessor.remaining_here(request.get_ref().id)?,
        )))
    }

    async fn campaign(
        &self,
        request: Request<CampaignRequest>,
    ) -> Result<Response<CampaignResponse>, Status> {
        self.require_member(&request)?;
        self.consensus
            .raft
            .trigger()
            .elect()
            .await
            .map_err(|e| Status::unavailable(e.to_string()))?;
        Ok(Response::new(CampaignResponse {}))
    }

    async fn read_index(
        &self,
        request: Request<ReadIndexRequest>,
    ) -> Result<Response<ReadIndexResponse>, Status> {
        self.require_member(&request)?;
        let index = self.consensus.leader_read_index().await?;
        Ok(Response::new(ReadIndexResponse { index }))
    }
}
