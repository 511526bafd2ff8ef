//! Consensus: every change to the store is proposed as a [`Command`](crate::proto::bulwarkpb::Command),
//! replicated through openraft to a quorum's durable logs, and applied in log order by the state
//! machine ([`Store::apply`](crate::mvcc::Store::apply)). A single member is a one-voter group on
//! the same path.
//!
//! Layout: [`log_store`] (log and vote in a write-ahead log), [`state_machine`] (the MVCC store
//! plus its position, snapshots), [`network`] (outgoing peer gRPC over mTLS), [`peer_service`]
//! (incoming). [`Consensus`] is the handle the API uses: propose a write, or wait until a read is
//! linearizable.
//!
//! Invariants:
//! - a write is answered only after its entry is fsynced on a quorum and applied locally;
//! - a write sent to a follower is forwarded to the leader, never applied out of log order;
//! - a linearizable read waits until this member has applied everything the leader had committed
//!   when the read arrived (openraft's read index, confirmed by a quorum heartbeat).

// openraft's `StorageError` and `RPCError` are large by design; every storage and network
// function here returns them.
#![allow(clippy::result_large_err)]

pub mod batch;
mod batching;
mod forward;
pub mod log_store;
pub mod network;
pub mod peer_service;
mod read_index;
mod snapshot_files;
pub mod state_machine;
#[cfg(test)]
mod storage_suite;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use openraft::error::{ChangeMembershipError, ClientWriteError, ForwardToLeader, RaftError};
use openraft::{Config, Raft, ServerState};
use serde::{Deserialize, Serialize};

use crate::mvcc::{decode_result, encode_command, CommandResponse, MvccError, Store};
use crate::proto::bulwarkpb::command;
use batch::WriteFailure;
use network::{PeerNetwork, PeerTls};

pub type NodeId = u64;

/// What membership records about a member: how to reach it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberNode {
    pub name: String,
    /// HOST:PORT of the peer listener.
    pub peer_addr: String,
    /// https://HOST:PORT of the client listener.
    pub client_url: String,
    /// Joined with a token: the leader promotes it to voter once it has caught up. Learners
    /// added on purpose (`member add --learner`) stay learners.
    #[serde(default)]
    pub promote: bool,
    /// Serial (hex) of the member certificate it joined with: denied when it is removed.
    #[serde(default)]
    pub cert_serial: String,
}

impl std::fmt::Display for MemberNode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}@{}", self.name, self.peer_addr)
    }
}

/// A log entry's application data: encoded `bulwarkpb.Command`s, applied in order, each as its
/// own command (several when concurrent writes were batched into one entry, see [`batch`]).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Request {
    #[serde(with = "byte_strings")]
    pub commands: Vec<Vec<u8>>,
}

impl std::fmt::Display for Request {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} command(s)", self.commands.len())
    }
}

/// A command applied: the log index of its entry and its encoded `bulwarkpb.CommandResult`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Applied {
    pub index: u64,
    pub result: Vec<u8>,
}

/// What applying an entry produced: one encoded `bulwarkpb.CommandResult` per command of its
/// [`Request`] (none for entries that carry no command).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Reply {
    #[serde(with = "byte_strings")]
    pub results: Vec<Vec<u8>>,
}

/// A list of byte strings as serde byte strings: bincode writes each as its length and one copy
/// of its bytes (the same encoding as a sequence of `u8`, so stored logs still read), where the
/// derived form walks every byte as its own value.
mod byte_strings {
    use serde::{Deserialize, Deserializer, Serializer};
    use serde_bytes::{ByteBuf, Bytes};

    pub fn serialize<S: Serializer>(strings: &[Vec<u8>], serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_seq(strings.iter().map(|bytes| Bytes::new(bytes)))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<Vec<Vec<u8>>, D::Error> {
        let strings = Vec::<ByteBuf>::deserialize(deserializer)?;
        Ok(strings.into_iter().map(ByteBuf::into_vec).collect())
    }
}

openraft::declare_raft_types!(
    pub TypeConfig:
        D = Request,
        R = Reply,
        NodeId = NodeId,
        Node = MemberNode,
        // The data file itself (`state_machine`): a snapshot is never held in memory whole.
        SnapshotData = tokio::fs::File,
);

/// How long a client request may wait for consensus before answering `request timed out`.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(7);
/// How long a follower keeps looking for a reachable leader before answering `no leader`.
const FORWARD_WAIT: Duration = Duration::from_secs(5);
/// A learner this close to the leader's log is caught up enough to vote.
const PROMOTE_LAG: u64 = 16;
/// How long to wait for a leader to appear before answering `no leader`.
const LEADER_WAIT: Duration = Duration::from_secs(3);

#[derive(Debug, thiserror::Error)]
pub enum ProposeError {
    /// The command was applied and rejected (e.g. a compacted revision).
    #[error(transparent)]
    Rejected(MvccError),
    #[error("no leader")]
    NoLeader,
    #[error("request timed out")]
    Timeout,
    #[error("leader changed")]
    LeaderChanged,
    #[error("the member has stopped")]
    Stopped,
    #[error("peer: {0}")]
    Peer(String),
    /// A membership change openraft refused (e.g. another one in progress).
    #[error("membership change refused: {0}")]
    Membership(String),
    #[error("not leader")]
    NotLeader,
    #[error("bad leader transferee")]
    BadTransferee,
}

/// Timings for openraft; defaults suit a LAN, tests may shorten them.
#[derive(Debug, Clone)]
pub struct RaftTimings {
    pub heartbeat_ms: u64,
    pub election_min_ms: u64,
    pub election_max_ms: u64,
    /// Build a snapshot (and purge the log behind it) after this many applied entries.
    pub snapshot_every: u64,
}

impl Default for RaftTimings {
    fn default() -> Self {
        RaftTimings {
            heartbeat_ms: 150,
            election_min_ms: 1000,
            election_max_ms: 2000,
            snapshot_every: 10_000,
        }
    }
}

/// openraft's AppendEntries timeout: half the minimum election timeout, and never less than the
/// heartbeat interval.
fn rpc_timeout_ms(timings: &RaftTimings) -> u64 {
    (timings.election_min_ms / 2).max(timings.heartbeat_ms)
}

/// The running consensus of this member.
pub struct Consensus {
    pub raft: Raft<TypeConfig>,
    pub id: NodeId,
    pub store: Arc<Store>,
    batcher: batch::ProposalBatcher,
    forwarder: forward::ForwardBatcher,
    reads: read_index::ReadIndexBatcher,
    tls: PeerTls,
    timings: RaftTimings,
}

impl Consensus {
    pub async fn start(
        id: NodeId,
        store: Arc<Store>,
        log: log_store::LogStore,
        snapshot_dir: std::path::PathBuf,
        legacy_snapshot: &std::path::Path,
        tls: PeerTls,
        timings: &RaftTimings,
    ) -> Result<Self, ProposeError> {
        let config = Config {
            cluster_name: "bulwark".into(),
            // openraft 0.9 also uses this as every AppendEntries' timeout, so a link whose
            // round trip (plus the follower's fsync) exceeds it would never get an entry
            // acknowledged. It is set as long as the election timeout allows; the heartbeat
            // cadence users asked for comes from `send_heartbeats`.
            heartbeat_interval: rpc_timeout_ms(timings),
            election_timeout_min: timings.election_min_ms,
            election_timeout_max: timings.election_max_ms,
            snapshot_policy: openraft::SnapshotPolicy::LogsSinceLast(timings.snapshot_every),
            max_in_snapshot_log_to_keep: 1000.min(timings.snapshot_every),
            install_snapshot_timeout: 10_000,
            ..Default::default()
        }
        .validate()
        .map_err(|e| ProposeError::Peer(e.to_string()))?;
        let state_machine =
            state_machine::StateMachine::new(store.clone(), snapshot_dir, legacy_snapshot)
                .map_err(|e| ProposeError::Peer(format!("snapshot directory: {e}")))?;
        let network = PeerNetwork { tls: tls.clone() };
        let raft = Raft::new(id, Arc::new(config), network, log, state_machine)
            .await
            .map_err(|e| ProposeError::Peer(e.to_string()))?;
        Ok(Consensus {
            batcher: batch::ProposalBatcher::start(raft.clone(), REQUEST_TIMEOUT),
            forwarder: forward::ForwardBatcher::start(tls.clone(), REQUEST_TIMEOUT),
            reads: read_index::ReadIndexBatcher::start(raft.clone()),
            raft,
            id,
            store,
            tls,
            timings: timings.clone(),
        })
    }

    /// Makes this member the single voter of a new cluster, unless it already has state.
    pub async fn bootstrap(&self, node: MemberNode) -> Result<(), ProposeError> {
        if self
            .raft
            .is_initialized()
            .await
            .map_err(|_| ProposeError::Stopped)?
        {
            return Ok(());
        }
        let members = BTreeMap::from([(self.id, node)]);
        match self.raft.initialize(members).await {
            Ok(()) => Ok(()),
            Err(RaftError::APIError(_)) => Ok(()), // initialized meanwhile: nothing to do
            Err(RaftError::Fatal(e)) => Err(ProposeError::Peer(e.to_string())),
        }
    }

    /// Proposes a command and waits until it is committed and applied, wherever the leader is.
    pub async fn propose(&self, kind: command::Kind) -> Result<CommandResponse, ProposeError> {
        let applied = self.propose_encoded(encode_command(kind), true).await?;
        decode_result(&applied.result).map_err(ProposeError::Rejected)
    }

    /// Proposes an encoded command; returns its encoded result once it is applied on this member
    /// (as etcd answers: a client then reads its own write here, even a serializable read,
    /// unless this member is more than the request timeout behind). A follower forwards it to
    /// the leader when `may_forward` (a forwarded proposal is never forwarded again).
    pub async fn propose_encoded(
        &self,
        command: Vec<u8>,
        may_forward: bool,
    ) -> Result<Applied, ProposeError> {
        let started = tokio::time::Instant::now();
        // Ok((applied, forwarded)): forwarded when the leader applied it for this follower.
        let attempt = async {
            let deadline = tokio::time::Instant::now() + LEADER_WAIT;
            let forward_deadline = tokio::time::Instant::now() + FORWARD_WAIT;
            loop {
                match self.batcher.write(command.clone()).await {
                    Ok(applied) => return Ok((applied, false)),
                    Err(WriteFailure::Raft(RaftError::APIError(
                        ClientWriteError::ForwardToLeader(forward),
                    ))) => {
                        match self.leader_node(&forward) {
                            Some(leader) if may_forward => {
                                match self.forwarder.forward(leader, command.clone()).await {
                                    Ok(applied) => return Ok((applied, true)),
                                    // The leader it knew is gone (or has none yet): the write
                                    // never reached a leader, so waiting for the next one is
                                    // safe.
                                    Err(status) if never_delivered(&status) => {
                                        if tokio::time::Instant::now() >= forward_deadline {
                                            return Err(ProposeError::NoLeader);
                                        }
                                        tokio::time::sleep(Duration::from_millis(100)).await;
                                    }
                                    Err(status) => return Err(status_to_error(status)),
                                }
                            }
                            Some(_) => return Err(ProposeError::LeaderChanged),
                            None if tokio::time::Instant::now() < deadline => {
                                tokio::time::sleep(Duration::from_millis(50)).await;
                            }
                            None => return Err(ProposeError::NoLeader),
                        }
                    }
                    // Appended while this member led, then deleted by a newer leader: it may
                    // still be committed by a member that holds it, so it is not proposed
                    // again (that could apply it twice). The client learns the outcome is
                    // unknown, as etcd answers a write lost in a leader change.
                    Err(WriteFailure::Raft(RaftError::APIError(
                        ClientWriteError::LogTruncated(_),
                    ))) => return Err(ProposeError::LeaderChanged),
                    Err(WriteFailure::Raft(RaftError::APIError(
                        ClientWriteError::ChangeMembershipError(e),
                    ))) => return Err(ProposeError::Peer(e.to_string())),
                    Err(WriteFailure::Raft(RaftError::Fatal(_))) => {
                        return Err(ProposeError::Stopped)
                    }
                    Err(WriteFailure::TimedOut) => return Err(ProposeError::Timeout),
                }
            }
        };
        let (applied, forwarded) = tokio::time::timeout(REQUEST_TIMEOUT, attempt)
            .await
            .unwrap_or(Err(ProposeError::Timeout))?;
        if forwarded {
            // Answer once this member applied it too, within what is left of the request's
            // time. A follower further behind than that still answers the success it knows of:
            // the write is committed, and a timeout would only make the client write it again.
            let left = REQUEST_TIMEOUT.saturating_sub(started.elapsed());
            if let Err(error) = self.applied_here(applied.index, left).await {
                tracing::warn!(
                    index = applied.index,
                    %error,
                    "answering a forwarded write before this member applied it"
                );
            }
        }
        Ok(applied)
    }

    /// The leader this member knows of, when it is another member.
    fn another_leader(&self) -> ForwardToLeader<NodeId, MemberNode> {
        let leader = self
            .raft
            .metrics()
            .borrow()
            .current_leader
            .filter(|leader| *leader != self.id);
        ForwardToLeader {
            leader_id: leader,
            leader_node: None,
        }
    }

    fn leader_node(&self, forward: &ForwardToLeader<NodeId, MemberNode>) -> Option<MemberNode> {
        if let Some(node) = &forward.leader_node {
            return Some(node.clone());
        }
        let leader = forward.leader_id?;
        let metrics = self.raft.metrics().borrow().clone();
        metrics
            .membership_config
            .membership()
            .get_node(&leader)
            .cloned()
    }

    /// On the leader: the log index a linearizable read must see applied (confirmed by a quorum).
    pub async fn leader_read_index(&self) -> Result<u64, ProposeError> {
        self.reads.read_index().await
    }

    /// Waits until a read on this member is linearizable: everything committed before the call
    /// is applied here.
    pub async fn read_barrier(&self) -> Result<(), ProposeError> {
        let deadline = tokio::time::Instant::now() + LEADER_WAIT;
        let forward_deadline = tokio::time::Instant::now() + FORWARD_WAIT;
        let index = loop {
            match self.leader_read_index().await {
                Ok(index) => break index,
                Err(ProposeError::LeaderChanged) => {}
                Err(other) => return Err(other),
            }
            match self.leader_node(&self.another_leader()) {
                Some(node) => {
                    match network::fetch_read_index(&self.tls, &node, REQUEST_TIMEOUT).await {
                        Ok(index) => break index,
                        // Reads are safe to retry: look for the next leader.
                        Err(status)
                            if never_delivered(&status)
                                && tokio::time::Instant::now() < forward_deadline =>
                        {
                            tokio::time::sleep(Duration::from_millis(100)).await
                        }
                        Err(status) if never_delivered(&status) => {
                            return Err(ProposeError::NoLeader)
                        }
                        Err(status) => return Err(status_to_error(status)),
                    }
                }
                None if tokio::time::Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(50)).await
                }
                None => return Err(ProposeError::NoLeader),
            }
        };
        self.applied_here(index, REQUEST_TIMEOUT).await
    }

    /// Waits (at most `within`) until this member has applied the log up to `index`.
    async fn applied_here(&self, index: u64, within: Duration) -> Result<(), ProposeError> {
        let mut metrics = self.raft.metrics();
        // `wait_for` looks at the metrics in place: openraft's own `Wait` clones them on every
        // change, for every waiter.
        let applied = metrics.wait_for(|m| m.last_applied.is_some_and(|id| id.index >= index));
        let outcome = match tokio::time::timeout(within, applied).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(_)) => Err(ProposeError::Stopped),
            Err(_) => Err(ProposeError::Timeout),
        };
        outcome
    }

    /// The certificate the member at `peer_addr` presents on its peer port right now.
    pub async fn presented_identity(
        &self,
        peer_addr: &str,
    ) -> Result<crate::pki::PeerIdentity, String> {
        self.tls.presented_identity(peer_addr).await
    }

    /// The current Raft term, for response headers (cheap: no copy of the metrics).
    pub fn term(&self) -> u64 {
        self.raft.metrics().borrow().current_term
    }

    /// Every member's client URL (`https://HOST:PORT`), for clients to connect to.
    pub fn client_urls(&self) -> Vec<String> {
        self.status()
            .members
            .into_iter()
            .map(|(_, node, _)| node.client_url)
            .filter(|url| !url.is_empty())
            .collect()
    }

    /// A summary for `Status` and `MemberList`.
    pub fn status(&self) -> RaftStatus {
        let metrics = self.raft.metrics().borrow().clone();
        let membership = metrics.membership_config.membership();
        RaftStatus {
            term: metrics.current_term,
            leader: metrics.current_leader,
            last_log_index: metrics.last_log_index.unwrap_or(0),
            applied_index: metrics.last_applied.map_or(0, |id| id.index),
            is_learner: metrics.state == ServerState::Learner,
            members: membership
                .nodes()
                .map(|(id, node)| {
                    let learner = !membership.voter_ids().any(|voter| voter == *id);
                    (*id, node.clone(), learner)
                })
                .collect(),
        }
    }

    /// Adds a learner (on the leader); it starts receiving the log at once.
    /// Waits out a membership change still in progress (e.g. a joiner's promotion) instead of
    /// failing.
    pub async fn add_learner(&self, id: NodeId, node: MemberNode) -> Result<(), ProposeError> {
        let deadline = tokio::time::Instant::now() + REQUEST_TIMEOUT;
        loop {
            match self.raft.add_learner(id, node.clone(), false).await {
                Ok(_) => return Ok(()),
                Err(RaftError::APIError(
                    ClientWriteError::ForwardToLeader(_) | ClientWriteError::LogTruncated(_),
                )) => return Err(ProposeError::LeaderChanged),
                Err(RaftError::APIError(ClientWriteError::ChangeMembershipError(
                    ChangeMembershipError::InProgress(_),
                ))) if tokio::time::Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(100)).await
                }
                Err(RaftError::APIError(e)) => return Err(ProposeError::Membership(e.to_string())),
                Err(RaftError::Fatal(_)) => return Err(ProposeError::Stopped),
            }
        }
    }

    /// Changes membership through the leader (forwarded when this member is not it, unless
    /// `forwarded` says it already was).
    pub async fn change_membership(
        &self,
        changes: openraft::ChangeMembers<NodeId, MemberNode>,
        may_forward: bool,
    ) -> Result<(), ProposeError> {
        let attempt = async {
            let mut result = self.raft.change_membership(changes.clone(), false).await;
            // Another change still in progress (a joiner's promotion, say): wait it out.
            while let Err(RaftError::APIError(ClientWriteError::ChangeMembershipError(
                ChangeMembershipError::InProgress(_),
            ))) = result
            {
                tokio::time::sleep(Duration::from_millis(100)).await;
                result = self.raft.change_membership(changes.clone(), false).await;
            }
            // A change whose entry a newer leader deleted goes to that leader, unlike a write:
            // changes are set operations on the membership, so applying one twice is harmless,
            // and giving it up could leave the cluster in the joint configuration of its first
            // step.
            let forward = match result {
                Ok(_) => return Ok(()),
                Err(RaftError::APIError(
                    ClientWriteError::ForwardToLeader(forward)
                    | ClientWriteError::LogTruncated(forward),
                )) => forward,
                Err(RaftError::APIError(ClientWriteError::ChangeMembershipError(e))) => {
                    return Err(ProposeError::Membership(e.to_string()))
                }
                Err(RaftError::Fatal(_)) => return Err(ProposeError::Stopped),
            };
            match self.leader_node(&forward) {
                Some(leader) if may_forward => {
                    let encoded = bincode::serialize(&changes)
                        .map_err(|e| ProposeError::Peer(e.to_string()))?;
                    network::forward_membership_change(&self.tls, &leader, encoded, REQUEST_TIMEOUT)
                        .await
                        .map_err(status_to_error)
                }
                Some(_) => Err(ProposeError::LeaderChanged),
                None => Err(ProposeError::NoLeader),
            }
        };
        tokio::time::timeout(REQUEST_TIMEOUT, attempt)
            .await
            .unwrap_or(Err(ProposeError::Timeout))
    }

    /// Hands leadership to voter `target` (etcd's MoveLeader). openraft 0.9 has no transfer
    /// call, so: stop heartbeats, wait until the followers' leader lease (the maximum election
    /// timeout) has run out, and have the target campaign at once; the others would wait a further
    /// random election timeout, so it is first. Heartbeats resume whatever happens. Concurrent
    /// writes keep the lease alive, so a transfer under load may time out, like etcd's.
    pub async fn transfer_leadership(&self, target: NodeId) -> Result<(), ProposeError> {
        if !self.is_leader() {
            return Err(ProposeError::NotLeader);
        }
        if target == self.id {
            return Ok(());
        }
        let status = self.status();
        let node = match status.members.iter().find(|(id, _, _)| *id == target) {
            Some((_, node, false)) => node.clone(),
            _ => return Err(ProposeError::BadTransferee),
        };
        if !self.caught_up(target) {
            return Err(ProposeError::BadTransferee);
        }
        let lease = Duration::from_millis(self.timings.election_max_ms);
        self.raft.runtime_config().heartbeat(false);
        let transfer = async {
            tokio::time::sleep(lease + Duration::from_millis(self.timings.heartbeat_ms)).await;
            network::request_campaign(&self.tls, &node, REQUEST_TIMEOUT)
                .await
                .map_err(status_to_error)?;
            self.raft
                .wait(Some(lease * 2))
                .metrics(
                    |metrics| metrics.current_leader == Some(target),
                    "leadership transferred",
                )
                .await
                .map(|_| ())
                .map_err(|_| ProposeError::Timeout)
        };
        let result = transfer.await;
        self.raft.runtime_config().heartbeat(true);
        result
    }

    pub fn timings(&self) -> &RaftTimings {
        &self.timings
    }

    /// A peer client for the current leader, when this member is not it and knows who is.
    pub fn leader_client(
        &self,
    ) -> Option<crate::proto::bulwarkpb::peer_client::PeerClient<tonic::transport::Channel>> {
        if self.is_leader() {
            return None;
        }
        let address = self.leader_peer_addr()?;
        self.tls.client(&address).ok()
    }

    /// While this member leads, sends heartbeats every `--heartbeat-interval` (openraft's own
    /// interval is stretched to serve as the RPC timeout). Runs until the member stops.
    pub async fn send_heartbeats(self: Arc<Self>) {
        let mut ticker =
            tokio::time::interval(Duration::from_millis(self.timings.heartbeat_ms.max(1)));
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticker.tick().await;
            if self.is_leader() && self.raft.trigger().heartbeat().await.is_err() {
                return;
            }
        }
    }

    /// The peer address of the current leader, if known.
    pub fn leader_peer_addr(&self) -> Option<String> {
        let metrics = self.raft.metrics().borrow().clone();
        let leader = metrics.current_leader?;
        metrics
            .membership_config
            .membership()
            .get_node(&leader)
            .map(|node| node.peer_addr.clone())
    }

    /// On the leader: whether member `id`'s log is within `PROMOTE_LAG` of the leader's.
    pub fn caught_up(&self, id: NodeId) -> bool {
        let metrics = self.raft.metrics().borrow().clone();
        matched_index(&metrics, id) + PROMOTE_LAG >= metrics.last_log_index.unwrap_or(0)
    }

    pub fn is_leader(&self) -> bool {
        self.raft.metrics().borrow().current_leader == Some(self.id)
    }

    /// While this member leads, promotes every learner that joined to become a voter once its
    /// log is within `PROMOTE_LAG` entries of the leader's. Runs until the member stops.
    pub async fn promote_caught_up_learners(self: Arc<Self>) {
        let mut ticker = tokio::time::interval(Duration::from_millis(500));
        loop {
            ticker.tick().await;
            let metrics = self.raft.metrics().borrow().clone();
            if metrics.current_leader != Some(self.id) {
                continue;
            }
            let membership = metrics.membership_config.membership();
            let last_index = metrics.last_log_index.unwrap_or(0);
            let ready: std::collections::BTreeSet<NodeId> = membership
                .learner_ids()
                .filter(|id| membership.get_node(id).is_some_and(|node| node.promote))
                .filter(|id| matched_index(&metrics, *id) + PROMOTE_LAG >= last_index)
                .collect();
            if ready.is_empty() {
                continue;
            }
            tracing::info!(?ready, "promoting caught-up learners to voters");
            if let Err(error) = self
                .raft
                .change_membership(openraft::ChangeMembers::AddVoterIds(ready), false)
                .await
            {
                tracing::warn!(%error, "promoting learners failed; will retry");
            }
        }
    }

    pub async fn shutdown(&self) {
        let _ = self.raft.shutdown().await;
    }

    /// Resolves when consensus has stopped by itself (openraft stops at a storage error it
    /// cannot go on from), with the reason. The member cannot take part in the cluster any more,
    /// so the server ends; a restart recovers from what is on disk.
    pub async fn stopped(&self) -> String {
        let mut metrics = self.raft.metrics();
        let fatal = metrics
            .wait_for(|metrics| metrics.running_state.is_err())
            .await
            .ok()
            .and_then(|metrics| metrics.running_state.clone().err());
        // None: the core's task ended without saying why (a panic).
        fatal.map_or_else(|| "consensus ended".to_string(), |fatal| fatal.to_string())
    }
}

#[derive(Debug, Clone)]
pub struct RaftStatus {
    pub term: u64,
    pub leader: Option<NodeId>,
    pub last_log_index: u64,
    pub applied_index: u64,
    pub is_learner: bool,
    /// (id, node, is_learner) for every member.
    pub members: Vec<(NodeId, MemberNode, bool)>,
}

/// How far the leader knows member `id`'s log to match its own (0 when unknown).
fn matched_index(metrics: &openraft::RaftMetrics<NodeId, MemberNode>, id: NodeId) -> u64 {
    metrics
        .replication
        .as_ref()
        .and_then(|progress| progress.get(&id).cloned().flatten())
        .map_or(0, |log_id| log_id.index)
}

/// Whether a failed forward certainly never reached a leader: the connection was refused, or
/// the member asked had no leader itself. (A timeout or a dropped answer may have been applied,
/// and is not retried.)
fn never_delivered(status: &tonic::Status) -> bool {
    let message = status.message();
    message.contains("Connection refused")
        || message.contains("tcp connect error")
        || message.ends_with("no leader")
}

/// Maps a peer's gRPC answer back to the error the leader reported.
fn status_to_error(status: tonic::Status) -> ProposeError {
    let message = status.message();
    if message.ends_with("no leader") {
        ProposeError::NoLeader
    } else if message.ends_with("request timed out") {
        ProposeError::Timeout
    } else if message.ends_with("leader changed") {
        ProposeError::LeaderChanged
    } else if status.code() == tonic::Code::FailedPrecondition {
        ProposeError::Membership(message.to_string())
    } else {
        ProposeError::Peer(format!("{}: {message}", status.code()))
    }
}

#[cfg(test)]
mod tests {
    use super::{Reply, Request};

    /// Logs written before commands were encoded as byte strings must still read: bincode gives
    /// a byte string and a sequence of `u8` the same bytes.
    #[test]
    fn commands_encode_as_a_list_of_u8_sequences_did() {
        let commands = vec![b"first".to_vec(), Vec::new(), vec![0, 255, 7]];
        let as_sequences = bincode::serialize(&commands).unwrap();
        let request = Request {
            commands: commands.clone(),
        };
        assert_eq!(bincode::serialize(&request).unwrap(), as_sequences);
        let read: Request = bincode::deserialize(&as_sequences).unwrap();
        assert_eq!(read.commands, commands);
        let reply: Reply = bincode::deserialize(&as_sequences).unwrap();
        assert_eq!(reply.results, commands);
    }
}
