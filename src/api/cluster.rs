//! etcd's `Cluster` service over Raft membership: list, add (as learner, promoted when it has
//! joined and caught up unless added as a learner on purpose), remove, promote, update.
//!
//! A member added here has no certificate yet; it becomes real when a node runs `bulwark join`
//! with the same peer address, which adopts the entry. Removing a member also puts its
//! certificate on the replicated deny list, so every member refuses it from then on.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use openraft::ChangeMembers;
use tonic::{Request, Response, Status};

use super::error::ApiError;
use super::ApiContext;
use crate::identities;
use crate::mvcc::CommandResponse;
use crate::proto::etcdserverpb::cluster_server::Cluster;
use crate::proto::etcdserverpb::*;
use crate::raft::{MemberNode, NodeId, RaftStatus};

/// How long the denial of a removed leader's certificates may wait for the next leader.
const DENY_AFTER_LEADER_REMOVAL: std::time::Duration = std::time::Duration::from_secs(30);

pub struct ClusterService(pub(super) Arc<ApiContext>);

fn members(status: &RaftStatus) -> Vec<Member> {
    status
        .members
        .iter()
        .map(|(id, node, is_learner)| Member {
            id: *id,
            name: node.name.clone(),
            peer_ur_ls: vec![format!("https://{}", node.peer_addr)],
            client_ur_ls: if node.client_url.is_empty() {
                Vec::new()
            } else {
                vec![node.client_url.clone()]
            },
            is_learner: *is_learner,
        })
        .collect()
}

/// `https://HOST:PORT` (or `http://`, as etcdctl users often type) -> `HOST:PORT`.
fn peer_addr_of(url: &str) -> Result<String, ApiError> {
    let address = url
        .strip_prefix("https://")
        .or_else(|| url.strip_prefix("http://"))
        .unwrap_or(url)
        .trim_end_matches('/');
    match address.rsplit_once(':') {
        Some((host, port)) if !host.is_empty() && port.parse::<u16>().is_ok() => {
            Ok(address.to_string())
        }
        _ => Err(ApiError::BadPeerUrl(url.to_string())),
    }
}

impl ClusterService {
    fn find(&self, id: NodeId) -> Result<(MemberNode, bool), ApiError> {
        self.0
            .consensus
            .status()
            .members
            .into_iter()
            .find(|(member, _, _)| *member == id)
            .map(|(_, node, learner)| (node, learner))
            .ok_or(ApiError::MemberNotFound)
    }

    fn header(&self) -> Option<ResponseHeader> {
        // etcd's membership responses carry no revision.
        self.0.header(0)
    }

    /// Denies every certificate member `id` was issued: the one it joined with and each
    /// renewal, each until it expires (the one it joined with for ever if the registry does not
    /// know it).
    async fn deny_member_certificates(&self, id: NodeId, node: &MemberNode) -> Result<(), Status> {
        let mut denials: Vec<(String, i64)> = identities::member_certificates(&self.0.store, id)
            .map_err(ApiError::from)?
            .into_iter()
            .map(|issued| (issued.serial, issued.not_after))
            .collect();
        if !node.cert_serial.is_empty() && !denials.iter().any(|(s, _)| *s == node.cert_serial) {
            denials.push((node.cert_serial.clone(), 0));
        }
        let reason = format!("member {} removed", node.name);
        for (serial, not_after) in denials {
            match self
                .0
                .propose(identities::deny(&serial, &reason, not_after))
                .await?
            {
                CommandResponse::SettingStored => {}
                other => return Err(Status::internal(format!("unexpected {other:?}"))),
            }
        }
        Ok(())
    }
}

#[tonic::async_trait]
impl Cluster for ClusterService {
    async fn member_add(
        &self,
        request: Request<MemberAddRequest>,
    ) -> Result<Response<MemberAddResponse>, Status> {
        let request = request.into_inner();
        let url = request
            .peer_ur_ls
            .first()
            .ok_or_else(|| ApiError::BadPeerUrl(String::new()))?;
        let peer_addr = peer_addr_of(url)?;
        let status = self.0.consensus.status();
        if status
            .members
            .iter()
            .any(|(_, node, _)| node.peer_addr == peer_addr)
        {
            return Err(ApiError::PeerUrlExists.into());
        }
        let id = crate::server::random_member_id();
        let node = MemberNode {
            name: String::new(),
            peer_addr: peer_addr.clone(),
            client_url: String::new(),
            promote: !request.is_learner,
            cert_serial: String::new(),
        };
        self.0
            .consensus
            .change_membership(ChangeMembers::AddNodes(BTreeMap::from([(id, node)])), true)
            .await
            .map_err(ApiError::from)?;
        let status = self.0.consensus.status();
        Ok(Response::new(MemberAddResponse {
            header: self.header(),
            member: Some(Member {
                id,
                name: String::new(),
                peer_ur_ls: vec![format!("https://{peer_addr}")],
                client_ur_ls: Vec::new(),
                is_learner: true,
            }),
            members: members(&status),
        }))
    }

    async fn member_remove(
        &self,
        request: Request<MemberRemoveRequest>,
    ) -> Result<Response<MemberRemoveResponse>, Status> {
        let id = request.into_inner().id;
        let (node, is_learner) = self.find(id)?;
        let ids = BTreeSet::from([id]);
        let changes = if is_learner {
            ChangeMembers::RemoveNodes(ids)
        } else {
            ChangeMembers::RemoveVoters(ids)
        };
        // Deny first: from the moment it is out, nothing it presents may be accepted. Except
        // the leader: denied first, it would be cut off by the followers before it could commit
        // its own removal; it is removed (and steps down) first, then denied through the next
        // leader, as etcd answers only once the configuration change is applied.
        let removing_the_leader = self.0.consensus.status().leader == Some(id);
        if !removing_the_leader {
            self.deny_member_certificates(id, &node).await?;
        }
        self.0
            .consensus
            .change_membership(changes, true)
            .await
            .map_err(ApiError::from)?;
        if removing_the_leader {
            // The next leader needs an election first: wait it out (bounded).
            let deadline = tokio::time::Instant::now() + DENY_AFTER_LEADER_REMOVAL;
            loop {
                match self.deny_member_certificates(id, &node).await {
                    Ok(()) => break,
                    Err(status)
                        if status.code() == tonic::Code::Unavailable
                            && tokio::time::Instant::now() < deadline =>
                    {
                        tokio::time::sleep(std::time::Duration::from_millis(200)).await
                    }
                    Err(status) => return Err(status),
                }
            }
        }
        Ok(Response::new(MemberRemoveResponse {
            header: self.header(),
            members: members(&self.0.consensus.status()),
        }))
    }

    async fn member_update(
        &self,
        request: Request<MemberUpdateRequest>,
    ) -> Result<Response<MemberUpdateResponse>, Status> {
        let request = request.into_inner();
        let (mut node, _) = self.find(request.id)?;
        let url = request
            .peer_ur_ls
            .first()
            .ok_or_else(|| ApiError::BadPeerUrl(String::new()))?;
        node.peer_addr = peer_addr_of(url)?;
        self.0
            .consensus
            .change_membership(
                ChangeMembers::SetNodes(BTreeMap::from([(request.id, node)])),
                true,
            )
            .await
            .map_err(ApiError::from)?;
        Ok(Response::new(MemberUpdateResponse {
            header: self.header(),
            members: members(&self.0.consensus.status()),
        }))
    }

    async fn member_list(
        &self,
        request: Request<MemberListRequest>,
    ) -> Result<Response<MemberListResponse>, Status> {
        if request.get_ref().linearizable {
            self.0.read_barrier().await?;
        }
        Ok(Response::new(MemberListResponse {
            header: self.header(),
            members: members(&self.0.consensus.status()),
        }))
    }

    async fn member_promote(
        &self,
        request: Request<MemberPromoteRequest>,
    ) -> Result<Response<MemberPromoteResponse>, Status> {
        let id = request.into_inner().id;
        let (_, is_learner) = self.find(id)?;
        if !is_learner {
            return Err(ApiError::NotALearner.into());
        }
        if self.0.consensus.is_leader() && !self.0.consensus.caught_up(id) {
            return Err(ApiError::LearnerNotReady.into());
        }
        self.0
            .consensus
            .change_membership(ChangeMembers::AddVoterIds(BTreeSet::from([id])), true)
            .await
            .map_err(ApiError::from)?;
        Ok(Response::new(MemberPromoteResponse {
            header: self.header(),
            members: members(&self.0.consensus.status()),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peer_urls_become_addresses() {
        assert_eq!(
            peer_addr_of("https://127.0.0.1:2380").unwrap(),
            "127.0.0.1:2380"
        );
        assert_eq!(peer_addr_of("http://node-3:2380/").unwrap(), "node-3:2380");
        assert!(peer_addr_of("https://nohost").is_err());
        assert!(peer_addr_of("").is_err());
    }
}
