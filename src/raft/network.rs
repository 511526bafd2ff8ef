//! Outgoing peer traffic: openraft's RPCs, forwarded writes and read-index requests, as gRPC
//! over mutual TLS with this member's certificate. The server side is [`super::peer_service`].

use std::time::Duration;

use openraft::error::{
    InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, Unreachable,
};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::sync::Arc;

use tonic::transport::{Channel, Endpoint};

use super::{Applied, MemberNode, NodeId, TypeConfig};
use crate::pki::{self, PkiError};
use crate::proto::bulwarkpb::peer_client::PeerClient;
use crate::proto::bulwarkpb::{
    propose_outcome, CampaignRequest, ProposeBatchRequest, ProposeOutcome, RaftPayload,
    ReadIndexRequest,
};

const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

/// A gRPC channel to `address` (HOST:PORT) over TLS with exactly the rustls configuration given
/// (Bulwark's own verifiers, not tonic's defaults). Connects on first use, reconnects as needed.
pub fn tls_channel(address: &str, tls: Arc<rustls::ClientConfig>) -> Channel {
    let connector = tokio_rustls::TlsConnector::from(tls);
    let address = address.to_string();
    let endpoint = Endpoint::from_shared(format!("http://{address}"))
        .expect("HOST:PORT makes a valid URI")
        .connect_timeout(CONNECT_TIMEOUT);
    endpoint.connect_with_connector_lazy(tower::service_fn(move |_| {
        let connector = connector.clone();
        let address = address.clone();
        async move {
            let tcp = tokio::net::TcpStream::connect(&address).await?;
            tcp.set_nodelay(true)?;
            let name = pki::server_name_of(&address).map_err(std::io::Error::other)?;
            let stream = connector.connect(name, tcp).await?;
            Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(stream))
        }
    }))
}

/// How this member reaches its peers: the cluster CA and its own member certificate, and one
/// multiplexed channel per peer address, reused by every caller (a new TLS connection per RPC
/// would cost several round trips each time). When the member certificate is renewed, new
/// channels are made, so connections present the new certificate from then on (a CA rotation
/// retires the old root only once none is needed); calls in flight finish on the old ones.
#[derive(Clone)]
pub struct PeerTls {
    tls: Arc<rustls::ClientConfig>,
    identity: Arc<pki::LiveIdentity>,
    /// The identity's generation the channels were made with, and the channels.
    channels: Arc<std::sync::Mutex<(u64, std::collections::HashMap<String, Channel>)>>,
}

impl PeerTls {
    pub fn new(
        trust: &Arc<pki::LiveTrust>,
        identity: &Arc<pki::LiveIdentity>,
    ) -> Result<Self, PkiError> {
        Ok(PeerTls {
            tls: pki::client_tls_config(trust, identity)?,
            identity: identity.clone(),
            channels: Arc::new(std::sync::Mutex::new((
                identity.generation(),
                Default::default(),
            ))),
        })
    }

    /// The certificate the member at `peer_addr` (HOST:PORT) presents now.
    pub async fn presented_identity(&self, peer_addr: &str) -> Result<pki::PeerIdentity, String> {
        pki::presented_identity(peer_addr, self.tls.clone(), CONNECT_TIMEOUT).await
    }

    /// A client for the member at `peer_addr` (HOST:PORT); connects on first use and
    /// reconnects by itself when the connection breaks.
    pub fn client(&self, peer_addr: &str) -> Result<PeerClient<Channel>, tonic::transport::Error> {
        let mut channels = self.channels.lock().expect("peer channels lock");
        let generation = self.identity.generation();
        if channels.0 != generation {
            *channels = (generation, Default::default());
        }
        let channel = channels
            .1
            .entry(peer_addr.to_string())
            .or_insert_with(|| tls_channel(peer_addr, self.tls.clone()))
            .clone();
        Ok(PeerClient::new(channel).max_decoding_message_size(usize::MAX))
    }
}

/// openraft's network factory: one [`PeerConnection`] per target member.
#[derive(Clone)]
pub struct PeerNetwork {
    pub tls: PeerTls,
}

impl RaftNetworkFactory<TypeConfig> for PeerNetwork {
    type Network = PeerConnection;

    async fn new_client(&mut self, target: NodeId, node: &MemberNode) -> PeerConnection {
        PeerConnection {
            target,
            tls: self.tls.clone(),
            peer_addr: node.peer_addr.clone(),
        }
    }
}

pub struct PeerConnection {
    target: NodeId,
    /// The channel is looked up per call, so a renewed certificate is used without openraft
    /// having to make a new connection object.
    tls: PeerTls,
    peer_addr: String,
}

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct TransportError(String);

/// One of the peer client's raft calls, as a plain function.
type RaftMethod = for<'a> fn(
    &'a mut PeerClient<Channel>,
    tonic::Request<RaftPayload>,
) -> futures::future::BoxFuture<
    'a,
    Result<tonic::Response<RaftPayload>, tonic::Status>,
>;

impl PeerConnection {
    /// Sends one openraft RPC: bincode request out, bincode `Result<Response, RaftError<E>>` back.
    async fn call<Req, Resp, E>(
        &mut self,
        method: RaftMethod,
        request: &Req,
        option: &RPCOption,
    ) -> Result<Resp, RPCError<NodeId, MemberNode, RaftError<NodeId, E>>>
    where
        Req: Serialize,
        Resp: DeserializeOwned,
        E: std::error::Error + DeserializeOwned,
    {
        let mut client = self.tls.client(&self.peer_addr).map_err(|error| {
            RPCError::Unreachable(Unreachable::new(&TransportError(error.to_string())))
        })?;
        let payload =
            bincode::serialize(request).map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        let mut grpc_request = tonic::Request::new(RaftPayload { bincode: payload });
        grpc_request.set_timeout(option.hard_ttl());
        let response = method(&mut client, grpc_request).await.map_err(|status| {
            let error = TransportError(format!("{}: {}", status.code(), status.message()));
            match status.code() {
                tonic::Code::Unavailable | tonic::Code::DeadlineExceeded => {
                    RPCError::Unreachable(Unreachable::new(&error))
                }
                _ => RPCError::Network(NetworkError::new(&error)),
            }
        })?;
        let result: Result<Resp, RaftError<NodeId, E>> =
            bincode::deserialize(&response.into_inner().bincode)
                .map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        result.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
    }
}

impl RaftNetwork<TypeConfig> for PeerConnection {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RPCError<NodeId, MemberNode, RaftError<NodeId>>>
    {
        self.call(
            |client, request| Box::pin(client.append_entries(request)),
            &rpc,
            &option,
        )
        .await
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<
        InstallSnapshotResponse<NodeId>,
        RPCError<NodeId, MemberNode, RaftError<NodeId, InstallSnapshotError>>,
    > {
        self.call(
            |client, request| Box::pin(client.install_snapshot(request)),
            &rpc,
            &option,
        )
        .await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RPCError<NodeId, MemberNode, RaftError<NodeId>>> {
        self.call(
            |client, request| Box::pin(client.vote(request)),
            &rpc,
            &option,
        )
        .await
    }
}

/// One call to the member at `address`, bounded by `timeout` on both ends: the request's
/// grpc-timeout binds the callee, and the same deadline here ends a call to a member gone silent
/// without a reset, which would otherwise wait for as long as TCP takes to give up.
async fn call_peer<M, R, Call, Answer>(
    tls: &PeerTls,
    address: &str,
    message: M,
    timeout: Duration,
    call: Call,
) -> Result<R, tonic::Status>
where
    Call: FnOnce(PeerClient<Channel>, tonic::Request<M>) -> Answer,
    Answer: std::future::Future<Output = Result<tonic::Response<R>, tonic::Status>>,
{
    let client = tls
        .client(address)
        .map_err(|e| tonic::Status::unavailable(e.to_string()))?;
    let mut request = tonic::Request::new(message);
    request.set_timeout(timeout);
    match tokio::time::timeout(timeout, call(client, request)).await {
        Ok(answer) => Ok(answer?.into_inner()),
        Err(_) => Err(tonic::Status::unavailable("etcdserver: request timed out")),
    }
}

/// Forwards encoded commands to the leader in one call; returns each one's outcome (applied on
/// the leader, or the status the leader answered for it), in order.
pub async fn forward_proposals(
    tls: &PeerTls,
    leader: &MemberNode,
    commands: Vec<Vec<u8>>,
    timeout: Duration,
) -> Result<Vec<Result<Applied, tonic::Status>>, tonic::Status> {
    let request = ProposeBatchRequest { commands };
    let answer = call_peer(
        tls,
        &leader.peer_addr,
        request,
        timeout,
        |mut client, request| async move { client.propose_batch(request).await },
    )
    .await?;
    Ok(answer.outcomes.into_iter().map(outcome_result).collect())
}

/// A forwarded command's outcome as the leader's own answer would have been.
fn outcome_result(outcome: ProposeOutcome) -> Result<Applied, tonic::Status> {
    match outcome.outcome {
        Some(propose_outcome::Outcome::Applied(applied)) => Ok(Applied {
            index: applied.index,
            result: applied.result,
        }),
        Some(propose_outcome::Outcome::Failure(failure)) => Err(tonic::Status::new(
            tonic::Code::from(failure.code),
            failure.message,
        )),
        None => Err(tonic::Status::internal(
            "the leader answered a forwarded command with nothing",
        )),
    }
}

/// Asks the leader for the index a linearizable read must wait for.
pub async fn fetch_read_index(
    tls: &PeerTls,
    leader: &MemberNode,
    timeout: Duration,
) -> Result<u64, tonic::Status> {
    let request = ReadIndexRequest {};
    let answer = call_peer(
        tls,
        &leader.peer_addr,
        request,
        timeout,
        |mut client, request| async move { client.read_index(request).await },
    )
    .await?;
    Ok(answer.index)
}

/// Hands a membership change to the leader.
pub async fn forward_membership_change(
    tls: &PeerTls,
    leader: &MemberNode,
    changes: Vec<u8>,
    timeout: Duration,
) -> Result<(), tonic::Status> {
    let request = RaftPayload { bincode: changes };
    call_peer(
        tls,
        &leader.peer_addr,
        request,
        timeout,
        |mut client, request| async move { client.change_membership(request).await },
    )
    .await?;
    Ok(())
}

/// Asks `target` to start an election now (leadership transfer).
pub async fn request_campaign(
    tls: &PeerTls,
    target: &MemberNode,
    timeout: Duration,
) -> Result<(), tonic::Status> {
    let request = CampaignRequest {};
    call_peer(
        tls,
        &target.peer_addr,
        request,
        timeout,
        |mut client, request| async move { client.campaign(request).await },
    )
    .await?;
    Ok(())
}
