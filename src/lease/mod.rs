//! Lease expiry, decided by the leader.
//!
//! Which leases exist, their granted TTLs and attached keys are replicated state (the MVCC
//! store). When each one expires is not: only the leader keeps deadlines, in memory, and ends an
//! expired lease by proposing a `LeaseRevoke` through Raft, which deletes the attached keys in one
//! revision on every member. A new leader starts every lease's clock afresh at its full TTL (as
//! etcd does), so no lease expires merely because the leader changed. Followers forward
//! keep-alives and remaining-TTL queries to the leader.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

use crate::mvcc::{LeaseInfo, MvccError, Store};
use crate::proto::bulwarkpb::{command, LeaseAnswer, LeaseQuery, LeaseRevoke};
use crate::raft::{Consensus, ProposeError};

/// How often the leader looks for expired leases.
const EXPIRY_TICK: Duration = Duration::from_millis(250);
/// How long a keep-alive of an expired lease waits for its revoke before answering `request
/// timed out` (the revoke needs a quorum).
const REVOKE_WAIT: Duration = Duration::from_secs(5);

pub struct Lessor {
    consensus: Arc<Consensus>,
    store: Arc<Store>,
    /// Lease id -> when it expires; only meaningful while this member leads.
    deadlines: Mutex<HashMap<i64, Instant>>,
}

/// What a lease query found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LeaseState {
    Unknown,
    /// Seconds: the granted TTL after a keep-alive, or what is left for a remaining query.
    Live(i64),
}

impl Lessor {
    pub fn new(consensus: Arc<Consensus>, store: Arc<Store>) -> Arc<Self> {
        Arc::new(Lessor {
            consensus,
            store,
            deadlines: Mutex::new(HashMap::new()),
        })
    }

    /// Expires leases while this member leads; runs until the member stops.
    pub async fn run(self: Arc<Self>) {
        let mut ticker = tokio::time::interval(EXPIRY_TICK);
        loop {
            ticker.tick().await;
            if !self.consensus.is_leader() {
                self.deadlines.lock().expect("deadlines lock").clear();
                continue;
            }
            let expired = match self.expired() {
                Ok(expired) => expired,
                Err(error) => {
                    tracing::error!(%error, "reading leases failed");
                    continue;
                }
            };
            for id in expired {
                let revoke = command::Kind::LeaseRevoke(LeaseRevoke { id });
                match self.consensus.propose(revoke).await {
                    Ok(_) | Err(ProposeError::Rejected(MvccError::LeaseNotFound)) => {
                        tracing::info!(lease = format!("{id:016x}"), "lease expired");
                        self.deadlines.lock().expect("deadlines lock").remove(&id);
                    }
                    // Not leader any more, or no quorum: the next leader will decide.
                    Err(error) => tracing::warn!(%error, "revoking an expired lease failed"),
                }
            }
        }
    }

    /// Syncs the deadlines with the replicated leases (a lease this leader has not seen yet
    /// starts its full TTL now) and returns those past their deadline.
    fn expired(&self) -> Result<Vec<i64>, MvccError> {
        let leases = self.store.leases()?;
        let now = Instant::now();
        let mut deadlines = self.deadlines.lock().expect("deadlines lock");
        let live: HashMap<i64, i64> = leases.into_iter().collect();
        deadlines.retain(|id, _| live.contains_key(id));
        for (id, ttl) in &live {
            deadlines
                .entry(*id)
                .or_insert_with(|| now + Duration::from_secs(*ttl as u64));
        }
        Ok(deadlines
            .iter()
            .filter(|(_, deadline)| **deadline <= now)
            .map(|(id, _)| *id)
            .collect())
    }

    /// Starts a lease's clock when its grant has been applied here, if this member leads (etcd
    /// starts it at the grant; otherwise the leader starts it when it first sees the lease).
    pub fn start_clock(&self, id: i64, ttl: i64) {
        if self.consensus.is_leader() {
            self.deadlines
                .lock()
                .expect("deadlines lock")
                .entry(id)
                .or_insert_with(|| Instant::now() + Duration::from_secs(ttl as u64));
        }
    }

    /// Renews lease `id` for its full TTL, on the leader wherever it is.
    pub async fn keep_alive(&self, id: i64) -> Result<LeaseState, ProposeError> {
        match self.consensus.leader_client() {
            Some(mut leader) => answer(leader.lease_keep_alive(LeaseQuery { id }).await),
            None => self.keep_alive_here(id).await,
        }
    }

    /// The leader's side of a keep-alive. A lease past its deadline is not renewed: its revoke
    /// is due or already in consensus, so (as etcd's `Renew`) this waits for the revoke and
    /// answers "not found", never a TTL the revoke would then contradict.
    pub async fn keep_alive_here(&self, id: i64) -> Result<LeaseState, ProposeError> {
        let give_up = Instant::now() + REVOKE_WAIT;
        loop {
            if !self.consensus.is_leader() {
                return Err(ProposeError::NoLeader);
            }
            let Some(LeaseInfo { ttl, .. }) =
                self.store.lease(id).map_err(ProposeError::Rejected)?
            else {
                return Ok(LeaseState::Unknown);
            };
            let now = Instant::now();
            {
                let mut deadlines = self.deadlines.lock().expect("deadlines lock");
                let expired = deadlines.get(&id).is_some_and(|deadline| *deadline <= now);
                if !expired {
                    deadlines.insert(id, now + Duration::from_secs(ttl as u64));
                    return Ok(LeaseState::Live(ttl));
                }
            }
            if now >= give_up {
                return Err(ProposeError::Timeout);
            }
            tokio::time::sleep(EXPIRY_TICK / 5).await;
        }
    }

    /// Seconds left on lease `id`, from the leader wherever it is.
    pub async fn remaining(&self, id: i64) -> Result<LeaseState, ProposeError> {
        match self.consensus.leader_client() {
            Some(mut leader) => answer(leader.lease_remaining(LeaseQuery { id }).await),
            None => self.remaining_here(id),
        }
    }

    /// The leader's side of a remaining-TTL query.
    pub fn remaining_here(&self, id: i64) -> Result<LeaseState, ProposeError> {
        if !self.consensus.is_leader() {
            return Err(ProposeError::NoLeader);
        }
        let Some(LeaseInfo { ttl, .. }) = self.store.lease(id).map_err(ProposeError::Rejected)?
        else {
            return Ok(LeaseState::Unknown);
        };
        let now = Instant::now();
        let deadline = *self
            .deadlines
            .lock()
            .expect("deadlines lock")
            .entry(id)
            .or_insert_with(|| now + Duration::from_secs(ttl as u64));
        // Whole seconds, truncated, as etcd reports them (599 right after a grant of 600).
        let left = deadline.saturating_duration_since(now);
        Ok(LeaseState::Live(left.as_secs() as i64))
    }
}

/// The leader's answer to a forwarded lease query.
fn answer(
    response: Result<tonic::Response<LeaseAnswer>, tonic::Status>,
) -> Result<LeaseState, ProposeError> {
    let answer = response
        .map_err(|status| ProposeError::Peer(status.message().to_string()))?
        .into_inner();
    Ok(match answer.found {
        true => LeaseState::Live(answer.ttl),
        false => LeaseState::Unknown,
    })
}
