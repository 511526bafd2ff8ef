//! Read-index batching, as etcd's linearizable read loop does it.
//!
//! A linearizable read needs the leader to confirm its leadership with a quorum after the read
//! arrived; openraft's `ensure_linearizable` sends a heartbeat to every voter for each call.
//! Under concurrent reads that is one round of peer RPCs per read. Here one task confirms for
//! everyone: reads that arrive while a confirmation is in flight wait for the next one, which
//! starts after they arrived, so each read still gets a confirmation (and a commit index) taken
//! after it was asked for. A lone read goes out at once, with no added wait.

use std::time::Duration;

use openraft::error::{CheckIsLeaderError, RaftError};
use openraft::Raft;
use tokio::sync::{mpsc, oneshot};

use super::{ProposeError, TypeConfig, LEADER_WAIT, REQUEST_TIMEOUT};

/// What a confirmation answers: the index a read must see applied, or why there is none.
/// (`ProposeError` is not `Clone`; these are the outcomes a confirmation can have.)
#[derive(Debug, Clone, Copy)]
enum Outcome {
    ReadIndex(u64),
    LeaderChanged,
    NoLeader,
    Stopped,
    Timeout,
}

impl From<Outcome> for Result<u64, ProposeError> {
    fn from(outcome: Outcome) -> Self {
        match outcome {
            Outcome::ReadIndex(index) => Ok(index),
            Outcome::LeaderChanged => Err(ProposeError::LeaderChanged),
            Outcome::NoLeader => Err(ProposeError::NoLeader),
            Outcome::Stopped => Err(ProposeError::Stopped),
            Outcome::Timeout => Err(ProposeError::Timeout),
        }
    }
}

type Waiter = oneshot::Sender<Outcome>;

/// The queue in front of the leader's read-index confirmation.
pub struct ReadIndexBatcher {
    requests: mpsc::UnboundedSender<Waiter>,
}

impl ReadIndexBatcher {
    /// Starts the confirming task; it ends when the batcher is dropped.
    pub fn start(raft: Raft<TypeConfig>) -> Self {
        let (requests, queue) = mpsc::unbounded_channel();
        tokio::spawn(confirm_loop(raft, queue));
        ReadIndexBatcher { requests }
    }

    /// The index a linearizable read on the leader must see applied, from a leadership
    /// confirmation that started after this call.
    pub async fn read_index(&self) -> Result<u64, ProposeError> {
        let (answer, answered) = oneshot::channel();
        self.requests
            .send(answer)
            .map_err(|_| ProposeError::Stopped)?;
        answered
            .await
            .map_or(Err(ProposeError::Stopped), Result::from)
    }
}

async fn confirm_loop(raft: Raft<TypeConfig>, mut queue: mpsc::UnboundedReceiver<Waiter>) {
    while let Some(first) = queue.recv().await {
        // Everyone who asked before this confirmation starts shares it.
        let mut waiters = vec![first];
        while let Ok(next) = queue.try_recv() {
            waiters.push(next);
        }
        let outcome = confirm(&raft).await;
        for waiter in waiters {
            let _ = waiter.send(outcome);
        }
    }
}

/// One leadership confirmation with a quorum; retried within [`LEADER_WAIT`] when too few
/// voters answered in time (slow links, a busy follower), since confirming again is harmless.
async fn confirm(raft: &Raft<TypeConfig>) -> Outcome {
    let check = async {
        let deadline = tokio::time::Instant::now() + LEADER_WAIT;
        loop {
            // Only the confirmation: each reader then waits for its own member to have applied
            // the index, so a slow apply never holds up the next confirmation.
            match raft.get_read_log_id().await {
                Ok((read_log_id, _applied)) => {
                    return Outcome::ReadIndex(read_log_id.map_or(0, |id| id.index))
                }
                Err(RaftError::APIError(CheckIsLeaderError::ForwardToLeader(_))) => {
                    return Outcome::LeaderChanged
                }
                Err(RaftError::APIError(CheckIsLeaderError::QuorumNotEnough(_)))
                    if tokio::time::Instant::now() < deadline =>
                {
                    tokio::time::sleep(Duration::ZERO).await
                }
                Err(RaftError::APIError(CheckIsLeaderError::QuorumNotEnough(_))) => {
                    return Outcome::NoLeader
                }
                Err(RaftError::Fatal(_)) => return Outcome::Stopped,
            }
        }
    };
    tokio::time::timeout(REQUEST_TIMEOUT, check)
        .await
        .unwrap_or(Outcome::Timeout)
}
