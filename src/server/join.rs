//! Joining a cluster with a token, swarm-style.
//!
//! Joiner ([`join`]): fetch the CA certificate from any member without trusting it; pin it against
//! the token's digest (a mismatch aborts); generate a key and send a CSR with the token's secret;
//! write the signed certificate into a new data directory. The private key never leaves the
//! joiner. The new member then starts serving and the leader replicates the log to it.
//!
//! Cluster ([`JoinService`], on the peer port): a member that is not the leader redirects to it;
//! the leader checks the secret against the replicated token, signs the CSR, and adds the node as
//! a learner marked for promotion (`Consensus::promote_caught_up_learners`).

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use openraft::ChangeMembers;
use tonic::{Request, Response, Status};

use super::datadir::{create_private_dir, format_id, DataDir, MemberConfig};
use super::{host_of, random_id, write_private, write_public, ServerError, ADMIN_NAME};
use crate::identities::{self, IssuedCertificate};
use crate::mvcc::Store;
use crate::pki::{self, Authority, JoinToken};
use crate::proto::bulwarkpb::join_client::JoinClient;
use crate::proto::bulwarkpb::join_server::Join;
use crate::proto::bulwarkpb::{
    FetchCaRequest, FetchCaResponse, JoinRequest, JoinResponse, LoginRequest, LoginResponse,
};
use crate::raft::network::tls_channel;
use crate::raft::{Consensus, MemberNode};

/// How many times a joiner follows "ask the leader" redirects.
const MAX_REDIRECTS: usize = 3;
const JOIN_TIMEOUT: Duration = Duration::from_secs(30);

pub struct JoinService {
    pub consensus: Arc<Consensus>,
    pub store: Arc<Store>,
    pub ca: Arc<Authority>,
}

#[tonic::async_trait]
impl Join for JoinService {
    async fn fetch_ca(
        &self,
        _request: Request<FetchCaRequest>,
    ) -> Result<Response<FetchCaResponse>, Status> {
        // Every trusted root: during a CA rotation, tokens pin the old one and the joiner picks
        // it out (`fetch_pinned_ca`).
        Ok(Response::new(FetchCaResponse {
            ca_cert_pem: self.ca.roots_pem(),
        }))
    }

    async fn login(
        &self,
        request: Request<LoginRequest>,
    ) -> Result<Response<LoginResponse>, Status> {
        let request = request.into_inner();
        // Linearizable: a token rotated a moment ago must already be refused here.
        self.consensus.read_barrier().await?;
        self.check_token("client", &request.token_secret, &request.name)?;
        if request.name == ADMIN_NAME {
            return Err(Status::permission_denied(format!(
                "{ADMIN_NAME:?} is the admin identity: a client token cannot obtain it"
            )));
        }
        let issuer = identities::rotation::issuer(&self.store, &self.ca)
            .map_err(crate::api::admin::rotation_status)?;
        let client_cert_pem = identities::issue_client(
            &self.consensus,
            &issuer,
            &request.name,
            &request.csr_pem,
            identities::CLIENT_CERT_TTL,
        )
        .await?;
        Ok(Response::new(LoginResponse {
            client_cert_pem,
            ca_cert_pem: self.ca.roots_pem(),
            client_urls: self.consensus.client_urls(),
        }))
    }

    async fn join(&self, request: Request<JoinRequest>) -> Result<Response<JoinResponse>, Status> {
        let request = request.into_inner();
        if !self.consensus.is_leader() {
            let leader = self
                .consensus
                .leader_peer_addr()
                .ok_or_else(|| Status::unavailable("etcdserver: no leader"))?;
            return Ok(Response::new(JoinResponse {
                leader_peer_addr: leader,
                ..Default::default()
            }));
        }
        self.check_token("manager", &request.token_secret, &request.name)?;
        if request.name.is_empty() {
            return Err(Status::invalid_argument("a member name is required"));
        }
        let bad_address = |e: ServerError| Status::invalid_argument(e.to_string());
        let hosts = vec![
            host_of(&request.peer_addr).map_err(bad_address)?,
            host_of(&request.client_addr).map_err(bad_address)?,
        ];
        let ttl = identities::member_cert_ttl(&self.store)
            .map_err(|e| Status::internal(e.to_string()))?;
        let issuer = self.ca.issuer();
        let member_cert_pem = issuer
            .sign_member_csr(&request.csr_pem, &request.name, &hosts, ttl)
            .map_err(|e| Status::invalid_argument(format!("certificate request refused: {e}")))?;
        let mut issued = IssuedCertificate::of_pem(&member_cert_pem)
            .map_err(|e| Status::internal(e.to_string()))?;
        let mut node = MemberNode {
            name: request.name.clone(),
            peer_addr: request.peer_addr.clone(),
            client_url: format!("https://{}", request.client_addr),
            promote: true,
            cert_serial: issued.serial.clone(),
        };
        // A member pre-registered with `member add` at this peer address is adopted, keeping
        // its id and its learner-or-voter intent.
        let status = self.consensus.status();
        let registered = status
            .members
            .iter()
            .find(|(_, existing, _)| existing.peer_addr == request.peer_addr);
        let adopted = match registered {
            Some((id, existing, _)) if existing.name.is_empty() => Some((*id, existing.promote)),
            Some(_) => {
                return Err(Status::failed_precondition(
                    "etcdserver: Peer URLs already exists",
                ))
            }
            None => None,
        };
        // Recorded (with its member) before anything else, so removing the member denies it.
        issued.member_id = adopted.map_or_else(random_id, |(id, _)| id);
        self.consensus.propose(issued.record()).await?;
        let member_id = match adopted {
            Some((id, promote)) => {
                node.promote = promote;
                self.consensus
                    .change_membership(ChangeMembers::SetNodes(BTreeMap::from([(id, node)])), false)
                    .await?;
                id
            }
            None => {
                self.consensus.add_learner(issued.member_id, node).await?;
                issued.member_id
            }
        };
        tracing::info!(name = %request.name, member = %format_id(member_id), "admitted a member as learner");
        Ok(Response::new(JoinResponse {
            leader_peer_addr: String::new(),
            member_id,
            cluster_id: issuer.cluster_id(),
            member_cert_pem,
            ca_cert_pem: self.ca.roots_pem(),
            ca_key_pem: issuer.key_pem().to_string(),
        }))
    }
}

impl JoinService {
    /// Refuses `secret` unless it is the current join token of `role`.
    fn check_token(&self, role: &str, secret: &str, name: &str) -> Result<(), Status> {
        let setting = identities::token_setting(role).expect("a token role");
        let stored = identities::join_token(&self.store, &setting)
            .map_err(|e| Status::internal(e.to_string()))?
            .ok_or_else(|| Status::unavailable(format!("the cluster has no {role} token yet")))?;
        if stored.secret_matches(secret) {
            Ok(())
        } else {
            tracing::warn!(%name, %role, "refused a wrong or rotated join token");
            Err(Status::permission_denied(
                "invalid join token: it is wrong or was rotated",
            ))
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum JoinError {
    #[error(transparent)]
    Token(#[from] pki::PkiError),
    #[error("cannot reach {0}: {1}")]
    Unreachable(String, String),
    #[error("the CA certificate served by {0} does not match the token's digest: refusing to join (wrong cluster, or someone in the middle)")]
    CaMismatch(String),
    #[error("refused by {0}: {1}")]
    Refused(String, String),
    #[error("too many redirects while looking for the leader")]
    Redirects,
    #[error(transparent)]
    Local(#[from] ServerError),
}

/// Fetches the cluster's roots from `peer` over a connection that trusts nothing yet, and keeps
/// only the one `token` pins (the digest in the token); nothing else it sent is trusted.
pub async fn fetch_pinned_ca(peer: &str, token: &JoinToken) -> Result<String, JoinError> {
    let unreachable = |e: Status| JoinError::Unreachable(peer.to_string(), e.message().to_string());
    let mut anonymous = JoinClient::new(tls_channel(peer, pki::unverified_client_tls_config()));
    let ca_cert_pem = tokio::time::timeout(JOIN_TIMEOUT, anonymous.fetch_ca(FetchCaRequest {}))
        .await
        .map_err(|_| JoinError::Unreachable(peer.to_string(), "timed out".into()))?
        .map_err(unreachable)?
        .into_inner()
        .ca_cert_pem;
    token
        .pinned_root(&ca_cert_pem)
        .ok_or_else(|| JoinError::CaMismatch(peer.to_string()))
}

/// A client identity obtained with `login`.
pub struct LoggedIn {
    pub cert_pem: String,
    pub ca_cert_pem: String,
    pub key_pem: String,
    /// The members' client URLs.
    pub client_urls: Vec<String>,
}

/// Gets a client identity named `name` from the cluster `peer` belongs to with the client join
/// token: pins the CA, makes a key here (it never leaves) and has its CSR signed.
pub async fn login(token: &str, peer: &str, name: &str) -> Result<LoggedIn, JoinError> {
    let token = JoinToken::parse(token)?;
    let ca_cert_pem = fetch_pinned_ca(peer, &token).await?;
    let (csr_pem, key_pem) = pki::certificate_request(name)?;
    let verified = pki::anonymous_client_tls_config(&ca_cert_pem)?;
    let mut client = JoinClient::new(tls_channel(peer, verified));
    let request = LoginRequest {
        token_secret: token.secret.clone(),
        csr_pem,
        name: name.to_string(),
    };
    let response = tokio::time::timeout(JOIN_TIMEOUT, client.login(request))
        .await
        .map_err(|_| JoinError::Unreachable(peer.to_string(), "timed out".into()))?
        .map_err(|status| match status.code() {
            tonic::Code::Unavailable => {
                JoinError::Unreachable(peer.to_string(), status.message().to_string())
            }
            _ => JoinError::Refused(peer.to_string(), status.message().to_string()),
        })?
        .into_inner();
    if !token.pins(&response.ca_cert_pem) {
        return Err(JoinError::CaMismatch(peer.to_string()));
    }
    Ok(LoggedIn {
        cert_pem: response.client_cert_pem,
        ca_cert_pem: response.ca_cert_pem,
        key_pem,
        client_urls: response.client_urls,
    })
}

pub struct JoinOptions {
    pub name: String,
    pub addresses: super::Addresses,
}

/// Joins the cluster `peer` belongs to and writes a new member's data directory in `dir`.
pub async fn join(
    dir: &Path,
    token: &str,
    peer: &str,
    options: &JoinOptions,
) -> Result<DataDir, JoinError> {
    let data = DataDir::new(dir);
    if data.holds_member() {
        return Err(ServerError::AlreadyMember(data.root().to_path_buf()).into());
    }
    if !data.is_empty_or_missing()? {
        return Err(ServerError::NotEmpty(data.root().to_path_buf()).into());
    }
    let token = JoinToken::parse(token)?;
    options.addresses.hosts()?;

    // 1. The CA, fetched without trusting it, then pinned.
    let ca_cert_pem = fetch_pinned_ca(peer, &token).await?;

    // 2. A key that stays here, and a CSR for it.
    let (csr_pem, key_pem) = pki::certificate_request(&options.name)?;
    let verified = pki::anonymous_client_tls_config(&ca_cert_pem)?;
    let mut target = peer.to_string();
    let mut admitted = None;
    for _ in 0..=MAX_REDIRECTS {
        let mut client = JoinClient::new(tls_channel(&target, verified.clone()));
        let request = JoinRequest {
            token_secret: token.secret.clone(),
            csr_pem: csr_pem.clone(),
            name: options.name.clone(),
            peer_addr: options.addresses.peer().to_string(),
            client_addr: options.addresses.client().to_string(),
        };
        let response = tokio::time::timeout(JOIN_TIMEOUT, client.join(request))
            .await
            .map_err(|_| JoinError::Unreachable(target.clone(), "timed out".into()))?
            .map_err(|status| match status.code() {
                tonic::Code::Unavailable => {
                    JoinError::Unreachable(target.clone(), status.message().to_string())
                }
                _ => JoinError::Refused(target.clone(), status.message().to_string()),
            })?
            .into_inner();
        if response.leader_peer_addr.is_empty() {
            admitted = Some(response);
            break;
        }
        target = response.leader_peer_addr;
    }
    let admitted = admitted.ok_or(JoinError::Redirects)?;
    // The pinned CA is the one that signed us: refuse anything else.
    if !token.pins(&admitted.ca_cert_pem) {
        return Err(JoinError::CaMismatch(target));
    }

    // 3. The new member's directory; member.toml last.
    create_private_dir(data.root())?;
    create_private_dir(&data.pki())?;
    create_private_dir(&data.state())?;
    create_private_dir(&data.raft())?;
    write_public(&data.ca_cert(), &admitted.ca_cert_pem)?;
    write_private(&data.ca_key(), &admitted.ca_key_pem)?;
    write_public(&data.member_cert(), &admitted.member_cert_pem)?;
    write_private(&data.member_key(), &key_pem)?;
    for dir in [data.pki(), data.root().to_path_buf()] {
        super::datadir::sync_dir(&dir)?;
    }
    data.write_config(&MemberConfig {
        name: options.name.clone(),
        cluster_id: format_id(admitted.cluster_id),
        member_id: format_id(admitted.member_id),
        listen_client: options.addresses.listen_client.clone(),
        listen_peer: options.addresses.listen_peer.clone(),
        advertise_client: options.addresses.advertise_client.clone(),
        advertise_peer: options.addresses.advertise_peer.clone(),
        bootstrap: false,
    })?;
    Ok(data)
}
